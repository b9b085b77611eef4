//! Path patterns → route ids.
//!
//! Owns: `Pattern` ("roles/{name}", "config/root", "{*path}") and `Router`, which a backend builds
//! once from a table of `(pattern, route)` and consults per request. Must never: allocate for
//! literal segments on the hot path or accept empty segments.

use crate::backend::DirEntry;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(&'static str),
    /// One segment, captured.
    Param,
    /// The rest of the path (one or more segments), captured.
    Rest,
}

#[derive(Debug, Clone)]
pub struct Pattern {
    segs: Vec<Seg>,
}

impl Pattern {
    /// Parse a pattern. `{x}` captures one segment, `{*x}` the rest (last only).
    pub fn new(pattern: &'static str) -> Self {
        let segs = if pattern.is_empty() {
            Vec::new()
        } else {
            pattern
                .split('/')
                .map(|s| {
                    if s.starts_with("{*") && s.ends_with('}') {
                        Seg::Rest
                    } else if s.starts_with('{') && s.ends_with('}') {
                        Seg::Param
                    } else {
                        Seg::Lit(s)
                    }
                })
                .collect()
        };
        Self { segs }
    }

    /// Match a relative path, returning the captured values in order.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let mut caps = Vec::new();
        if path.is_empty() {
            return self.segs.is_empty().then_some(caps);
        }
        let mut rest = path;
        for (i, seg) in self.segs.iter().enumerate() {
            if rest.is_empty() {
                return None;
            }
            if *seg == Seg::Rest {
                if i + 1 != self.segs.len() || rest.split('/').any(str::is_empty) {
                    return None;
                }
                caps.push(rest);
                return Some(caps);
            }
            let (head, tail) = match rest.find('/') {
                Some(n) => (&rest[..n], &rest[n + 1..]),
                None => (rest, ""),
            };
            if head.is_empty() || (tail.is_empty() && rest.ends_with('/')) {
                return None;
            }
            match seg {
                Seg::Lit(l) if *l == head => {}
                Seg::Lit(_) => return None,
                Seg::Param => caps.push(head),
                Seg::Rest => return None,
            }
            rest = tail;
        }
        rest.is_empty().then_some(caps)
    }

    /// If `dir` is a literal folder on the way to this pattern, the next literal segment.
    fn child_of(&self, dir: &str) -> Option<DirEntry> {
        let depth = if dir.is_empty() {
            0
        } else {
            dir.split('/').count()
        };
        if self.segs.len() <= depth {
            return None;
        }
        if !dir.is_empty() {
            for (seg, part) in self.segs.iter().zip(dir.split('/')) {
                match seg {
                    Seg::Lit(l) if *l == part => {}
                    _ => return None,
                }
            }
        }
        match &self.segs[depth] {
            Seg::Lit(l) if self.segs.len() == depth + 1 => Some(DirEntry::file(*l)),
            Seg::Lit(l) => Some(DirEntry::dir(*l)),
            _ => None,
        }
    }
}

/// A table of patterns, first match wins.
pub struct Router<R: Copy> {
    routes: Vec<(Pattern, R)>,
}

impl<R: Copy> Router<R> {
    pub fn new(table: &[(&'static str, R)]) -> Self {
        Self {
            routes: table.iter().map(|(p, r)| (Pattern::new(p), *r)).collect(),
        }
    }

    pub fn route<'p>(&self, path: &'p str) -> Option<(R, Vec<&'p str>)> {
        self.routes
            .iter()
            .find_map(|(p, r)| p.matches(path).map(|caps| (*r, caps)))
    }

    /// The literal names under folder `dir` that the patterns imply ("config" under "").
    pub fn literal_children(&self, dir: &str) -> Vec<DirEntry> {
        let mut out: Vec<DirEntry> = Vec::new();
        for (p, _) in &self.routes {
            if let Some(e) = p.child_of(dir) {
                if !out.iter().any(|o| o.name == e.name) {
                    out.push(e);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum R {
        Root,
        Role,
        Cfg,
        Any,
    }

    #[test]
    fn matches_literals_params_and_rest() {
        let r = Router::new(&[
            ("", R::Root),
            ("config/root", R::Cfg),
            ("roles/{name}", R::Role),
        ]);
        assert_eq!(r.route(""), Some((R::Root, vec![])));
        assert_eq!(r.route("config/root"), Some((R::Cfg, vec![])));
        assert_eq!(r.route("roles/deploy"), Some((R::Role, vec!["deploy"])));
        assert_eq!(r.route("roles/deploy/x"), None);
        assert_eq!(r.route("roles"), None);
        assert_eq!(r.route("roles/"), None);
        assert_eq!(r.route("config//root"), None);
        let any = Router::new(&[("{*path}", R::Any)]);
        assert_eq!(any.route("a/b/c"), Some((R::Any, vec!["a/b/c"])));
        assert_eq!(any.route("a//c"), None);
        assert_eq!(any.route(""), None);
    }

    #[test]
    fn literal_children_imply_folders() {
        let r = Router::new(&[
            ("config/root", R::Cfg),
            ("config/lease", R::Cfg),
            ("roles/{name}", R::Role),
        ]);
        let names: Vec<_> = r.literal_children("").into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["config", "roles"]);
        let cfg = r.literal_children("config");
        assert_eq!(cfg, vec![DirEntry::file("root"), DirEntry::file("lease")]);
        assert!(r.literal_children("roles").is_empty());
    }
}
