//! Who may do what: the policy evaluator.
//!
//! Owns: the policy document format (`PolicyDoc`, the `[[policy]]` tables of the config and the
//! live files under `sys/policies/`), its validation, the path and subject glob languages, name
//! resolution of `users`/`groups` at load time (`NameResolver`, `EtcFiles`), and the pure
//! decision functions `Policies::allowed`, `capabilities`, `may_see` and `is_admin`.
//!
//! Must never: do I/O on the request path (names are resolved once, when a `Policies` value is
//! built, through the resolver; deciding is pure computation over memory); read, hold or log a
//! secret value (it sees paths and caller identities only); know about FUSE, errnos or mode bits;
//! grant anything that no rule grants (a bug here must fail closed).
//!
//! # Evaluation
//!
//! * A caller with uid `u32::MAX` (the kernel's "no uid") is denied everything, always.
//! * Admins (`admins`; the config layer passes the daemon's own uid when `admins` is absent) may
//!   do everything, `deny` rules included.
//! * Otherwise the capabilities on a path are the union of the capabilities of every matching
//!   rule of every policy that applies to the caller; if any such matching rule says `deny`, the
//!   result is empty. Everything not granted is denied. There is no "most specific rule wins":
//!   grants add up, and one deny beats them all.
//! * A policy applies to a caller if ANY of its subject lists matches: `uids` holds the uid;
//!   `gids` holds the primary gid or a supplementary group; a name in `users` resolves to the
//!   uid; a name in `groups` resolves to the gid or a supplementary group; a `cgroups` glob
//!   matches `Caller::cgroup`; an `exes` entry matches `Caller::exe`. A policy with no subjects
//!   (or only unresolvable names) applies to nobody. Unknown names are not an error: they are
//!   logged once at load time and match nobody. Names come from `/etc/passwd` and `/etc/group`
//!   only (no NSS): directory-service accounts are selected by uid/gid.
//!
//! # Path patterns (rules)
//!
//! A rule's `path` is matched against a logical path such as `secret/app/db` (no leading slash).
//! A folder is addressed with a trailing slash: listing folder `secret/app` checks `list` on
//! `secret/app/`.
//!
//! * A trailing `*` is a prefix match on the rest of the string, across segments:
//!   `secret/app/*` matches `secret/app/`, `secret/app/x` and `secret/app/x/y` but not
//!   `secret/app`; `secret/ap*` matches `secret/app` and `secret/apex/y`. `*` alone matches
//!   everything.
//! * `+` as a whole segment matches exactly one non-empty segment: `secret/+/db` matches
//!   `secret/app/db`, not `secret/db` nor `secret/a/b/db`. `+` and `*` combine: `secret/+/*`.
//! * Anything else matches exactly (`secret/app/` matches only the folder address).
//!
//! Refused as malformed: an empty pattern, a leading `/`, an empty segment inside the pattern
//! (`a//b`), `.`/`..` segments, `*` anywhere but at the very end, `+` mixed with other characters
//! in a segment, and the shell/route characters `?`, `[`, `]`, `{`, `}` and NUL (so that a shell
//! habit never silently becomes a literal that matches nothing).
//!
//! # Subject globs (`cgroups`, `exes`)
//!
//! Must be absolute (start with `/`). `*` matches any run of characters except `/`, `**` any run
//! including `/`; everything else is literal (an `exes` entry without `*` is an exact path).
//! `?`, `[`, `]`, `***` and NUL are refused.
//!
//! # Visibility (`may_see`)
//!
//! Used to filter directory listings; it never grants access. A name is visible if the caller
//! has any capability on it (for a folder, on `path` or on its address `path/`), or, for a
//! folder, if some applicable non-deny rule could match something at or below `path/`. A name
//! is hidden if an applicable deny matches it, and a folder is hidden if one applicable deny
//! covers everything below it (`secret/*` covers folder `secret/app`). Denies that only together
//! cover a folder do not hide its name (reading below it is still denied).
//!
//! Size: over ~500 lines because the document format, the glob languages and the pure decision
//! functions are one evaluator (its tests are `policy_tests.rs`).

use crate::caller::Caller;
use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------------

/// One policy as written by the user: a name, who it applies to, and rules.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    #[serde(default)]
    pub uids: Vec<u32>,
    #[serde(default)]
    pub gids: Vec<u32>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, deserialize_with = "de_subject_globs")]
    pub cgroups: Vec<String>,
    #[serde(default, deserialize_with = "de_subject_globs")]
    pub exes: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
}

/// One rule: a path pattern and the capability names it grants (or `deny`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    #[serde(deserialize_with = "de_pattern")]
    pub path: String,
    #[serde(deserialize_with = "de_capabilities")]
    pub capabilities: Vec<String>,
}

/// The body of a live policy file: like `PolicyDoc`, but `name` is optional (the file name is
/// the name).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default, deserialize_with = "de_opt_name")]
    name: Option<String>,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    gids: Vec<u32>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default, deserialize_with = "de_subject_globs")]
    cgroups: Vec<String>,
    #[serde(default, deserialize_with = "de_subject_globs")]
    exes: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_name(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn de_opt_name<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    de_name(d).map(Some)
}

fn de_pattern<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let s = String::deserialize(d)?;
    PathPattern::parse(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn de_capabilities<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    parse_capabilities(&v).map_err(serde::de::Error::custom)?;
    Ok(v)
}

fn de_subject_globs<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for s in &v {
        SubjectGlob::parse(s).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}

/// A policy name: also a file name under `sys/policies/`.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!(
            "policy name {name:?} must be 1 to 128 characters long"
        ));
    }
    if name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "policy name {name:?} may hold only letters, digits, '-', '_' and '.' and must not start with '.'"
        ));
    }
    Ok(())
}

impl PolicyDoc {
    /// Parse a live policy file, TOML or JSON (a body starting with `{` is JSON). `name` is the
    /// file name; a `name` key in the body, if present, must equal it.
    pub fn parse(name: &str, text: &str) -> Result<PolicyDoc> {
        if text.trim_start().starts_with('{') {
            Self::parse_json(name, text)
        } else {
            Self::parse_toml(name, text)
        }
    }

    /// Parse a live policy file in TOML (the body of one `[[policy]]` table, without header).
    pub fn parse_toml(name: &str, text: &str) -> Result<PolicyDoc> {
        check_name(name).map_err(Error::invalid)?;
        let file: PolicyFile = toml::from_str(text)
            .map_err(|e| Error::invalid(format!("policy {name}: {}", e.to_string().trim_end())))?;
        Self::from_file(name, file)
    }

    /// Parse a live policy file in JSON (an object of the same shape).
    pub fn parse_json(name: &str, text: &str) -> Result<PolicyDoc> {
        check_name(name).map_err(Error::invalid)?;
        let file: PolicyFile = serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("policy {name}: {e}")))?;
        Self::from_file(name, file)
    }

    fn from_file(name: &str, f: PolicyFile) -> Result<PolicyDoc> {
        if let Some(n) = &f.name {
            if n != name {
                return Err(Error::invalid(format!(
                    "policy {name}: name = {n:?} does not match the file name"
                )));
            }
        }
        let doc = PolicyDoc {
            name: name.to_string(),
            uids: f.uids,
            gids: f.gids,
            users: f.users,
            groups: f.groups,
            cgroups: f.cgroups,
            exes: f.exes,
            rules: f.rules,
        };
        doc.validate()?;
        Ok(doc)
    }

    /// Check everything deserialization checks, and more (for documents built in code).
    pub fn validate(&self) -> Result<()> {
        self.compile_rules().map(|_| ())?;
        self.compile_subjects().map(|_| ())
    }

    fn err(&self, what: impl fmt::Display) -> Error {
        Error::invalid(format!("policy {}: {what}", self.name))
    }

    fn compile_rules(&self) -> Result<Vec<Rule>> {
        check_name(&self.name).map_err(Error::invalid)?;
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let ctx = |e: String| self.err(format!("rule {} ({:?}): {e}", i + 1, r.path));
                let pattern = PathPattern::parse(&r.path).map_err(ctx)?;
                let (caps, deny) = parse_capabilities(&r.capabilities).map_err(ctx)?;
                Ok(Rule {
                    pattern,
                    caps,
                    deny,
                })
            })
            .collect()
    }

    fn compile_subjects(&self) -> Result<(Vec<SubjectGlob>, Vec<SubjectGlob>)> {
        if self.uids.contains(&u32::MAX) || self.gids.contains(&u32::MAX) {
            return Err(self.err("uid/gid 4294967295 is not a valid subject"));
        }
        for n in self.users.iter().chain(&self.groups) {
            if n.is_empty() || n.contains([':', '\n', '\0']) {
                return Err(self.err(format!("{n:?} is not a valid user or group name")));
            }
        }
        let globs = |v: &[String]| {
            v.iter()
                .map(|s| SubjectGlob::parse(s).map_err(|e| self.err(e)))
                .collect::<Result<Vec<_>>>()
        };
        Ok((globs(&self.cgroups)?, globs(&self.exes)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------------------------

/// One thing a caller may do to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    Read,
    Create,
    Update,
    Delete,
    List,
    /// Control files under `sys/`.
    Sudo,
}

impl Capability {
    pub const ALL: [Capability; 6] = [
        Capability::Read,
        Capability::Create,
        Capability::Update,
        Capability::Delete,
        Capability::List,
        Capability::Sudo,
    ];

    /// The name used in policy documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Create => "create",
            Capability::Update => "update",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Sudo => "sudo",
        }
    }

    /// Parse a document name (`deny` is not a capability and gives `None`).
    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapSet(u8);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);
    pub const ALL: CapSet = CapSet(0b11_1111);

    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }
    pub fn insert(&mut self, cap: Capability) {
        self.0 |= cap.bit();
    }
    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Capability> for CapSet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut s = CapSet::EMPTY;
        for c in iter {
            s.insert(c);
        }
        s
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Capability::as_str).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// Capability names → (grants, deny). An empty list or an unknown name is refused.
fn parse_capabilities(names: &[String]) -> std::result::Result<(CapSet, bool), String> {
    if names.is_empty() {
        return Err("a rule must name at least one capability".into());
    }
    let mut caps = CapSet::EMPTY;
    let mut deny = false;
    for n in names {
        match (n.as_str(), Capability::from_name(n)) {
            ("deny", _) => deny = true,
            (_, Some(c)) => caps.insert(c),
            (_, None) => {
                return Err(format!(
                    "unknown capability {n:?} (expected read, create, update, delete, list, deny or sudo)"
                ))
            }
        }
    }
    Ok((caps, deny))
}

// ---------------------------------------------------------------------------------------------
// Path patterns
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// `+`: exactly one non-empty segment.
    Plus,
}

/// A parsed rule path. `segs` is never empty; with `glob`, the last segment is a `Lit` that the
/// rest of the path must start with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathPattern {
    segs: Vec<Seg>,
    glob: bool,
}

/// Split off the next segment of `rest`: `Some((seg, after_slash))` if `rest` holds a `/`.
fn next_seg(rest: &str) -> Option<(&str, &str)> {
    rest.split_once('/')
}

impl PathPattern {
    fn parse(p: &str) -> std::result::Result<PathPattern, String> {
        if p.is_empty() {
            return Err("empty path pattern".into());
        }
        if p.starts_with('/') {
            return Err(
                "a path pattern must not start with '/' (paths are relative to the mount root)"
                    .into(),
            );
        }
        if let Some(c) = p
            .chars()
            .find(|c| matches!(c, '?' | '[' | ']' | '{' | '}' | '\0'))
        {
            return Err(format!(
                "{c:?} is not allowed in a path pattern (only a trailing '*' and '+' segments are wildcards)"
            ));
        }
        let (body, glob) = match p.strip_suffix('*') {
            Some(b) => (b, true),
            None => (p, false),
        };
        if body.contains('*') {
            return Err("'*' is allowed only at the very end of a path pattern".into());
        }
        let parts: Vec<&str> = body.split('/').collect();
        let last = parts.len() - 1;
        let mut segs = Vec::with_capacity(parts.len());
        for (i, s) in parts.iter().enumerate() {
            if s.is_empty() && i != last {
                return Err("empty segment ('//') in path pattern".into());
            }
            if *s == "." || *s == ".." {
                return Err("'.' and '..' segments are not allowed in a path pattern".into());
            }
            if *s == "+" {
                if i == last && glob {
                    return Err("'+*' is not a pattern: write '+/*' or '+'".into());
                }
                segs.push(Seg::Plus);
            } else if s.contains('+') {
                return Err(format!("'+' must be a whole segment (got {s:?})"));
            } else {
                segs.push(Seg::Lit((*s).to_string()));
            }
        }
        Ok(PathPattern { segs, glob })
    }

    fn seg_ok(seg: &Seg, s: &str) -> bool {
        match seg {
            Seg::Lit(l) => l == s,
            Seg::Plus => !s.is_empty(),
        }
    }

    /// Does the pattern match `path`?
    fn matches(&self, path: &str) -> bool {
        let (last, init) = match self.segs.split_last() {
            Some(x) => x,
            None => return false,
        };
        let mut rest = path;
        for seg in init {
            match next_seg(rest) {
                Some((s, after)) if Self::seg_ok(seg, s) => rest = after,
                _ => return false,
            }
        }
        match (last, self.glob) {
            (Seg::Lit(l), true) => rest.starts_with(l.as_str()),
            (Seg::Lit(l), false) => rest == l,
            (Seg::Plus, _) => !rest.is_empty() && !rest.contains('/'),
        }
    }

    /// Could the pattern match some string that starts with `prefix`?
    fn may_extend(&self, prefix: &str) -> bool {
        let (last, init) = match self.segs.split_last() {
            Some(x) => x,
            None => return false,
        };
        let mut rest = prefix;
        for seg in init {
            match next_seg(rest) {
                Some((s, after)) => {
                    if !Self::seg_ok(seg, s) {
                        return false;
                    }
                    rest = after;
                }
                // The prefix ends inside this segment: it can be completed.
                None => {
                    return match seg {
                        Seg::Lit(l) => l.starts_with(rest),
                        Seg::Plus => true,
                    }
                }
            }
        }
        match (last, self.glob) {
            (Seg::Lit(l), true) => l.starts_with(rest) || rest.starts_with(l.as_str()),
            (Seg::Lit(l), false) => l.starts_with(rest),
            (Seg::Plus, _) => !rest.contains('/'),
        }
    }

    /// Does the pattern match every string that starts with `prefix`?
    fn covers(&self, prefix: &str) -> bool {
        if !self.glob {
            return false;
        }
        let (last, init) = match self.segs.split_last() {
            Some(x) => x,
            None => return false,
        };
        let mut rest = prefix;
        for seg in init {
            match next_seg(rest) {
                Some((s, after)) if Self::seg_ok(seg, s) => rest = after,
                _ => return false,
            }
        }
        match last {
            Seg::Lit(l) => rest.starts_with(l.as_str()),
            Seg::Plus => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subject globs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GTok {
    Byte(u8),
    /// `*`: any run without `/`.
    Star,
    /// `**`: any run.
    DStar,
}

/// A `cgroups`/`exes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SubjectGlob {
    toks: Vec<GTok>,
}

impl SubjectGlob {
    fn parse(g: &str) -> std::result::Result<SubjectGlob, String> {
        if g.is_empty() {
            return Err("empty cgroup/exe pattern".into());
        }
        if !g.starts_with('/') {
            return Err(format!("cgroup/exe pattern {g:?} must be an absolute path"));
        }
        if g.contains(['?', '[', ']', '\0']) {
            return Err(format!(
                "cgroup/exe pattern {g:?}: only '*' and '**' are wildcards ('?', '[', ']' are refused)"
            ));
        }
        if g.contains("***") {
            return Err(format!("cgroup/exe pattern {g:?}: '***' is not a pattern"));
        }
        let b = g.as_bytes();
        let mut toks = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'*' {
                if b.get(i + 1) == Some(&b'*') {
                    toks.push(GTok::DStar);
                    i += 2;
                } else {
                    toks.push(GTok::Star);
                    i += 1;
                }
            } else {
                toks.push(GTok::Byte(b[i]));
                i += 1;
            }
        }
        Ok(SubjectGlob { toks })
    }

    fn matches(&self, s: &str) -> bool {
        let s = s.as_bytes();
        if !self.toks.iter().any(|t| !matches!(t, GTok::Byte(_))) {
            return self.toks.len() == s.len()
                && self.toks.iter().zip(s).all(|(t, c)| *t == GTok::Byte(*c));
        }
        // cur[j]: the tokens so far match s[..j].
        let n = s.len();
        let mut cur = vec![false; n + 1];
        cur[0] = true;
        let mut next = vec![false; n + 1];
        for tok in &self.toks {
            next.iter_mut().for_each(|x| *x = false);
            match *tok {
                GTok::Byte(b) => {
                    for j in 0..n {
                        if cur[j] && s[j] == b {
                            next[j + 1] = true;
                        }
                    }
                }
                GTok::Star | GTok::DStar => {
                    let cross = *tok == GTok::DStar;
                    for j in 0..=n {
                        next[j] = cur[j] || (j > 0 && next[j - 1] && (cross || s[j - 1] != b'/'));
                    }
                }
            }
            std::mem::swap(&mut cur, &mut next);
        }
        cur[n]
    }
}

// ---------------------------------------------------------------------------------------------
// Name resolution
// ---------------------------------------------------------------------------------------------

/// Maps user and group names to ids. Consulted only while building a `Policies` value.
pub trait NameResolver {
    fn uid(&self, user: &str) -> Option<u32>;
    fn gid(&self, group: &str) -> Option<u32>;
}

/// Names from `/etc/passwd` and `/etc/group` (plain file parsing; no NSS, no libc).
#[derive(Debug, Clone, Default)]
pub struct EtcFiles {
    users: HashMap<String, u32>,
    groups: HashMap<String, u32>,
}

impl EtcFiles {
    /// Read a passwd-format and a group-format file.
    pub fn load(passwd: impl AsRef<Path>, group: impl AsRef<Path>) -> Result<EtcFiles> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| Error::io(format!("{}: {e}", p.display())))
        };
        Ok(EtcFiles::parse(
            &read(passwd.as_ref())?,
            &read(group.as_ref())?,
        ))
    }

    /// The system's `/etc/passwd` and `/etc/group`.
    pub fn system() -> Result<EtcFiles> {
        Self::load("/etc/passwd", "/etc/group")
    }

    /// Parse file contents. Comments, NIS `+`/`-` lines and malformed lines are skipped; for a
    /// name listed twice the first entry wins (as `getpwnam` does).
    pub fn parse(passwd: &str, group: &str) -> EtcFiles {
        fn table(text: &str) -> HashMap<String, u32> {
            let mut m = HashMap::new();
            for line in text.lines() {
                let line = line.trim_end_matches('\r');
                if line.is_empty() || line.starts_with(['#', '+', '-']) {
                    continue;
                }
                let mut f = line.split(':');
                let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                if name.is_empty() {
                    continue;
                }
                if let Ok(id) = id.trim().parse::<u32>() {
                    m.entry(name.to_string()).or_insert(id);
                }
            }
            m
        }
        EtcFiles {
            users: table(passwd),
            groups: table(group),
        }
    }
}

impl NameResolver for EtcFiles {
    fn uid(&self, user: &str) -> Option<u32> {
        self.users.get(user).copied()
    }
    fn gid(&self, group: &str) -> Option<u32> {
        self.groups.get(group).copied()
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled policies
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Rule {
    pattern: PathPattern,
    caps: CapSet,
    deny: bool,
}

#[derive(Debug)]
struct Compiled {
    doc: PolicyDoc,
    /// `uids` plus resolved `users`.
    uids: Vec<u32>,
    /// `gids` plus resolved `groups`.
    gids: Vec<u32>,
    cgroups: Vec<SubjectGlob>,
    exes: Vec<SubjectGlob>,
    rules: Vec<Rule>,
}

impl Compiled {
    fn new(doc: PolicyDoc, resolver: &dyn NameResolver) -> Result<Compiled> {
        let rules = doc.compile_rules()?;
        let (cgroups, exes) = doc.compile_subjects()?;
        let mut uids = doc.uids.clone();
        for u in &doc.users {
            match resolver.uid(u) {
                Some(id) if id != u32::MAX => uids.push(id),
                _ => tracing::warn!(
                    policy = %doc.name,
                    user = %u,
                    "unknown user in policy subjects; it matches nobody"
                ),
            }
        }
        let mut gids = doc.gids.clone();
        for g in &doc.groups {
            match resolver.gid(g) {
                Some(id) if id != u32::MAX => gids.push(id),
                _ => tracing::warn!(
                    policy = %doc.name,
                    group = %g,
                    "unknown group in policy subjects; it matches nobody"
                ),
            }
        }
        Ok(Compiled {
            doc,
            uids,
            gids,
            cgroups,
            exes,
            rules,
        })
    }

    fn applies(&self, c: &Caller) -> bool {
        self.uids.contains(&c.uid)
            || self.gids.contains(&c.gid)
            || c.groups.iter().any(|g| self.gids.contains(g))
            || c.cgroup
                .as_deref()
                .is_some_and(|cg| self.cgroups.iter().any(|g| g.matches(cg)))
            || c.exe
                .as_deref()
                .is_some_and(|e| self.exes.iter().any(|g| g.matches(e)))
    }
}

/// The set of policies in force plus the admin list: an immutable value, cheap to clone
/// (changes build a new value: `with_upserted`, `without`).
#[derive(Debug, Clone)]
pub struct Policies {
    admins: Arc<[u32]>,
    by_name: Arc<BTreeMap<String, Arc<Compiled>>>,
}

impl Policies {
    /// Compile `docs`. `admins` may do everything (the config layer passes the daemon's own uid
    /// when the config names none). `resolver` maps `users`/`groups` names, now and only now.
    pub fn new(
        docs: Vec<PolicyDoc>,
        admins: Vec<u32>,
        resolver: &dyn NameResolver,
    ) -> Result<Policies> {
        if admins.contains(&u32::MAX) {
            return Err(Error::invalid("admins: 4294967295 is not a valid uid"));
        }
        let mut by_name = BTreeMap::new();
        for doc in docs {
            let name = doc.name.clone();
            let compiled = Compiled::new(doc, resolver)?;
            if by_name.insert(name.clone(), Arc::new(compiled)).is_some() {
                return Err(Error::invalid(format!(
                    "policy {name}: defined more than once"
                )));
            }
        }
        Ok(Policies {
            admins: admins.into(),
            by_name: Arc::new(by_name),
        })
    }

    /// A copy with `doc` added, or replacing the policy of the same name.
    pub fn with_upserted(&self, doc: PolicyDoc, resolver: &dyn NameResolver) -> Result<Policies> {
        let compiled = Compiled::new(doc, resolver)?;
        let mut by_name = (*self.by_name).clone();
        by_name.insert(compiled.doc.name.clone(), Arc::new(compiled));
        Ok(Policies {
            admins: self.admins.clone(),
            by_name: Arc::new(by_name),
        })
    }

    /// A copy without the policy `name`; `None` if there is no such policy.
    pub fn without(&self, name: &str) -> Option<Policies> {
        if !self.by_name.contains_key(name) {
            return None;
        }
        let mut by_name = (*self.by_name).clone();
        by_name.remove(name);
        Some(Policies {
            admins: self.admins.clone(),
            by_name: Arc::new(by_name),
        })
    }

    /// Policy names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_name.keys().map(String::as_str)
    }

    /// The document of policy `name`.
    pub fn get(&self, name: &str) -> Option<&PolicyDoc> {
        self.by_name.get(name).map(|c| &c.doc)
    }

    pub fn admins(&self) -> &[u32] {
        &self.admins
    }

    /// Is this caller an admin (may do everything)?
    pub fn is_admin(&self, caller: &Caller) -> bool {
        self.is_admin_uid(caller.uid)
    }

    /// Admins are named by uid only (never by process facts).
    pub fn is_admin_uid(&self, uid: u32) -> bool {
        uid != u32::MAX && self.admins.contains(&uid)
    }

    fn applicable<'a>(&'a self, caller: &'a Caller) -> impl Iterator<Item = &'a Compiled> + 'a {
        self.by_name
            .values()
            .map(|c| &**c)
            .filter(move |c| c.applies(caller))
    }

    /// What this caller may do to `path` (a logical path; a folder address ends with `/`).
    pub fn capabilities(&self, caller: &Caller, path: &str) -> CapSet {
        if caller.uid == u32::MAX {
            return CapSet::EMPTY;
        }
        if self.is_admin(caller) {
            return CapSet::ALL;
        }
        let mut caps = CapSet::EMPTY;
        for p in self.applicable(caller) {
            for r in p.rules.iter().filter(|r| r.pattern.matches(path)) {
                if r.deny {
                    return CapSet::EMPTY;
                }
                caps = caps.union(r.caps);
            }
        }
        caps
    }

    /// May this caller do `cap` to `path`?
    pub fn allowed(&self, caller: &Caller, path: &str, cap: Capability) -> bool {
        self.capabilities(caller, path).contains(cap)
    }

    /// Should `path` appear in a directory listing shown to this caller? See the module doc.
    pub fn may_see(&self, caller: &Caller, path: &str, is_dir: bool) -> bool {
        if caller.uid == u32::MAX {
            return false;
        }
        if self.is_admin(caller) {
            return true;
        }
        if !is_dir {
            return !self.capabilities(caller, path).is_empty();
        }
        let below = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut reachable = false;
        for p in self.applicable(caller) {
            for r in &p.rules {
                if r.deny {
                    if r.pattern.matches(path) || r.pattern.covers(&below) {
                        return false;
                    }
                } else if !reachable && (r.pattern.matches(path) || r.pattern.may_extend(&below)) {
                    reachable = true;
                }
            }
        }
        reachable
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
