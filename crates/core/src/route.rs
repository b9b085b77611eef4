//! Paths declared as data: pattern → route id, the operations it answers, its help line.
//!
//! Owns: `Pattern` ("roles/{name}", "config/root", "{*path}"), `Ops` (a small bitset of the
//! operations a path answers), `PathDecl` (one declared path, the way OpenBao's
//! `framework.Path` is: pattern, route, operations, help text) and `Router`, which a backend
//! builds once from its table of declarations and consults per request. The backend's `.help`
//! text (`Router::help`) and the static parts of its listings (`Router::literal_children`) are
//! derived from the same table. Must never: allocate for literal segments on the hot path or
//! accept empty segments.

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

    /// If `dir` is a folder on the way to this pattern, the next segment if it is literal.
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
                    // A one-segment capture on the way matches any name ("keys/{name}/info"
                    // under "keys/k").
                    Seg::Param if !part.is_empty() => {}
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

/// The operations a declared path answers: a small bitset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ops(u16);

impl Ops {
    pub const NONE: Ops = Ops(0);
    pub const READ: Ops = Ops(1);
    pub const WRITE: Ops = Ops(1 << 1);
    pub const LIST: Ops = Ops(1 << 2);
    pub const DELETE: Ops = Ops(1 << 3);
    pub const MKDIR: Ops = Ops(1 << 4);
    pub const RMDIR: Ops = Ops(1 << 5);
    pub const RENAME: Ops = Ops(1 << 6);
    /// An exchange file (write the input, read the output in the same open).
    pub const EXCHANGE: Ops = Ops(1 << 7);

    /// Both sets (usable in `const` tables, where `|` is not).
    pub const fn and(self, other: Ops) -> Ops {
        Ops(self.0 | other.0)
    }

    pub const fn contains(self, other: Ops) -> bool {
        self.0 & other.0 == other.0
    }

    /// The names of the operations in the set ("read, write").
    pub fn names(self) -> String {
        const NAMES: [(Ops, &str); 8] = [
            (Ops::READ, "read"),
            (Ops::WRITE, "write"),
            (Ops::LIST, "list"),
            (Ops::DELETE, "delete"),
            (Ops::MKDIR, "mkdir"),
            (Ops::RMDIR, "rmdir"),
            (Ops::RENAME, "rename"),
            (Ops::EXCHANGE, "exchange"),
        ];
        NAMES
            .iter()
            .filter(|(o, _)| self.contains(*o))
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::ops::BitOr for Ops {
    type Output = Ops;
    fn bitor(self, other: Ops) -> Ops {
        self.and(other)
    }
}

/// One declared path: its pattern, the route id it maps to, the operations it answers and its
/// help text (empty: not shown in `.help`). The help may run over several lines; each further
/// line is indented under the first. A path with `LIST` is a folder (shown as `NAME/`).
#[derive(Clone, Copy, Debug)]
pub struct PathDecl<R> {
    pub pattern: &'static str,
    pub route: R,
    pub ops: Ops,
    pub help: &'static str,
    /// How `.help` names the path, if not by its pattern (`creds/NAME.env`, `mkdir keys/NAME`).
    pub shown: Option<&'static str>,
}

impl<R> PathDecl<R> {
    pub const fn new(pattern: &'static str, route: R, ops: Ops, help: &'static str) -> Self {
        Self {
            pattern,
            route,
            ops,
            help,
            shown: None,
        }
    }

    /// Name the path `shown` in `.help`.
    pub const fn shown(mut self, shown: &'static str) -> Self {
        self.shown = Some(shown);
        self
    }

    /// The name `.help` gives the path: `shown`, else the pattern with `{x}`/`{*x}` as `X`
    /// and a `/` after a folder.
    fn label(&self) -> String {
        if let Some(s) = self.shown {
            return s.to_string();
        }
        let mut out = self
            .pattern
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => name.trim_start_matches('*').to_ascii_uppercase(),
                    None => seg.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        if self.ops.contains(Ops::LIST) && !out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// The column `.help` lines start their text at, at least.
const HELP_COLUMN: usize = 16;
/// Labels longer than this go on a line of their own.
const HELP_LABEL_MAX: usize = 17;

/// A table of declared paths, first match wins.
pub struct Router<R: Copy> {
    routes: Vec<(Pattern, PathDecl<R>)>,
}

impl<R: Copy> Router<R> {
    /// A router over bare `(pattern, route)` pairs: no operations, no help.
    pub fn new(table: &[(&'static str, R)]) -> Self {
        let decls: Vec<PathDecl<R>> = table
            .iter()
            .map(|(p, r)| PathDecl::new(p, *r, Ops::NONE, ""))
            .collect();
        Self::declare(&decls)
    }

    /// A router over a table of declared paths.
    pub fn declare(table: &[PathDecl<R>]) -> Self {
        Self {
            routes: table
                .iter()
                .map(|d| (Pattern::new(d.pattern), *d))
                .collect(),
        }
    }

    pub fn route<'p>(&self, path: &'p str) -> Option<(R, Vec<&'p str>)> {
        self.routes
            .iter()
            .find_map(|(p, d)| p.matches(path).map(|caps| (d.route, caps)))
    }

    /// The operations the first declaration matching `path` answers.
    pub fn ops(&self, path: &str) -> Option<Ops> {
        self.routes
            .iter()
            .find_map(|(p, d)| p.matches(path).map(|_| d.ops))
    }

    /// The literal names under folder `dir` that the patterns imply ("config" under ""), in
    /// table order: a folder if its own declaration answers `LIST` or a longer pattern goes
    /// through it.
    pub fn literal_children(&self, dir: &str) -> Vec<DirEntry> {
        let mut out: Vec<DirEntry> = Vec::new();
        for (p, d) in &self.routes {
            if let Some(mut e) = p.child_of(dir) {
                if d.ops.contains(Ops::LIST) {
                    e.kind = crate::backend::NodeKind::Dir;
                }
                if !out.iter().any(|o| o.name == e.name) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// The `.help` text: `intro`, then one entry per declared path with help (its label, then
    /// the help text in a column), then `notes` if any.
    pub fn help(&self, intro: &str, notes: &str) -> String {
        let labelled: Vec<(String, &str)> = self
            .routes
            .iter()
            .filter(|(_, d)| !d.help.is_empty())
            .map(|(_, d)| (d.label(), d.help))
            .collect();
        let column = labelled
            .iter()
            .map(|(l, _)| l.len())
            .filter(|n| *n <= HELP_LABEL_MAX)
            .max()
            .map_or(HELP_COLUMN, |n| (n + 2).max(HELP_COLUMN));
        let mut out = format!("{}\n\n", intro.trim_end());
        for (label, help) in labelled {
            let mut lines = help.lines();
            if label.len() + 2 > column {
                out.push_str(&format!("  {label}\n"));
            } else if let Some(first) = lines.next() {
                out.push_str(&format!("  {label:<w$}{first}\n", w = column));
            }
            for line in lines {
                out.push_str(&format!("  {:<w$}{line}\n", "", w = column));
            }
        }
        if !notes.trim().is_empty() {
            out.push_str(&format!("\n{}\n", notes.trim_end()));
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
        let k = Router::new(&[("keys/{name}/info", R::Cfg), ("keys/{name}/ctl", R::Cfg)]);
        let under = k.literal_children("keys/k");
        assert_eq!(under, vec![DirEntry::file("info"), DirEntry::file("ctl")]);
        assert!(k.literal_children("keys").is_empty());
        assert!(k.literal_children("other/k").is_empty());
    }

    #[test]
    fn declared_paths_give_ops_listings_and_help() {
        let r = Router::declare(&[
            PathDecl::new("", R::Root, Ops::LIST, ""),
            PathDecl::new("config", R::Cfg, Ops::LIST, ""),
            PathDecl::new("config/root", R::Cfg, Ops::WRITE, "write-only: the keys"),
            PathDecl::new(
                "roles/{name}",
                R::Role,
                Ops::READ.and(Ops::WRITE),
                "a role\nrm deletes it",
            ),
            PathDecl::new("creds/{name}", R::Any, Ops::READ, "one credential per open")
                .shown("creds/NAME.a-very-long-view"),
        ]);
        assert_eq!(r.ops("roles/x"), Some(Ops::READ | Ops::WRITE));
        assert_eq!(r.ops("nope"), None);
        assert_eq!((Ops::READ | Ops::EXCHANGE).names(), "read, exchange");
        assert_eq!(
            r.literal_children(""),
            vec![
                DirEntry::dir("config"),
                DirEntry::dir("roles"),
                DirEntry::dir("creds")
            ]
        );
        assert_eq!(r.literal_children("config"), vec![DirEntry::file("root")]);
        let help = r.help("intro.\n", "Notes.");
        assert_eq!(
            help,
            "intro.\n\n  config/root     write-only: the keys\n  roles/NAME      a role\n                  rm deletes it\n  creds/NAME.a-very-long-view\n                  one credential per open\n\nNotes.\n"
        );
    }
}
