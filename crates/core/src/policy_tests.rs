use super::*;
use crate::error::ErrorKind;
use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A resolver from fixed tables.
struct Names {
    users: HashMap<&'static str, u32>,
    groups: HashMap<&'static str, u32>,
}

impl NameResolver for Names {
    fn uid(&self, user: &str) -> Option<u32> {
        self.users.get(user).copied()
    }
    fn gid(&self, group: &str) -> Option<u32> {
        self.groups.get(group).copied()
    }
}

fn names() -> Names {
    Names {
        users: [("alice", 1002), ("bob", 1003)].into_iter().collect(),
        groups: [("ops", 50), ("wheel", 10)].into_iter().collect(),
    }
}

fn no_names() -> Names {
    Names {
        users: HashMap::new(),
        groups: HashMap::new(),
    }
}

#[derive(Deserialize, Debug)]
struct Cfg {
    policy: Vec<PolicyDoc>,
}

fn docs(toml_text: &str) -> Vec<PolicyDoc> {
    toml::from_str::<Cfg>(toml_text)
        .expect("test config")
        .policy
}

fn policies(toml_text: &str, admins: Vec<u32>) -> Policies {
    Policies::new(docs(toml_text), admins, &names()).expect("policies")
}

fn caller(uid: u32) -> Caller {
    Caller::new(uid, uid, 4242)
}

fn pat(p: &str) -> PathPattern {
    PathPattern::parse(p).expect("pattern")
}

fn invalid(r: Result<PolicyDoc>) -> String {
    let e = r.expect_err("should be refused");
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    e.message
}

// ---------------------------------------------------------------------------------------------
// Reference evaluator: deliberately naive and written differently from the real one.
// ---------------------------------------------------------------------------------------------

/// Path pattern by substitution: replace each `+` segment by the path's segment at the same
/// position, then compare as a string (prefix compare for a trailing `*`).
fn ref_path_match(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let path_segs: Vec<&str> = path.split('/').collect();
    let mut concrete: Vec<String> = Vec::new();
    for (i, seg) in pattern.split('/').enumerate() {
        if seg == "+" {
            match path_segs.get(i) {
                Some(s) if !s.is_empty() => concrete.push(s.to_string()),
                _ => return false,
            }
            // `+` as the last pattern segment must be the last path segment.
            if i == pattern.split('/').count() - 1 && path_segs.len() != i + 1 {
                return false;
            }
        } else {
            concrete.push(seg.to_string());
        }
    }
    let concrete = concrete.join("/");
    match concrete.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == concrete,
    }
}

/// Shell-ish glob by recursion on chars: `**` anything, `*` anything but `/`.
fn ref_subject_match(p: &[char], s: &[char]) -> bool {
    if p.len() >= 2 && p[0] == '*' && p[1] == '*' {
        return (0..=s.len()).any(|k| ref_subject_match(&p[2..], &s[k..]));
    }
    match p.first() {
        None => s.is_empty(),
        Some('*') => {
            for k in 0..=s.len() {
                if k > 0 && s[k - 1] == '/' {
                    break;
                }
                if ref_subject_match(&p[1..], &s[k..]) {
                    return true;
                }
            }
            false
        }
        Some(c) => s.first() == Some(c) && ref_subject_match(&p[1..], &s[1..]),
    }
}

fn ref_subject(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    ref_subject_match(&p, &s)
}

fn ref_applies(d: &PolicyDoc, c: &Caller, n: &Names) -> bool {
    let in_groups = |g: u32| c.gid == g || c.groups.contains(&g);
    d.uids.contains(&c.uid)
        || d.gids.iter().any(|g| in_groups(*g))
        || d.users.iter().any(|u| n.uid(u) == Some(c.uid))
        || d.groups.iter().any(|g| n.gid(g).is_some_and(in_groups))
        || d.cgroups
            .iter()
            .any(|g| c.cgroup.as_deref().is_some_and(|cg| ref_subject(g, cg)))
        || d.exes
            .iter()
            .any(|g| c.exe.as_deref().is_some_and(|e| ref_subject(g, e)))
}

fn ref_allowed(
    ds: &[PolicyDoc],
    admins: &[u32],
    n: &Names,
    c: &Caller,
    path: &str,
    cap: Capability,
) -> bool {
    if c.uid == u32::MAX {
        return false;
    }
    if admins.contains(&c.uid) {
        return true;
    }
    let mut matching: Vec<&RuleDoc> = Vec::new();
    for d in ds.iter().filter(|d| ref_applies(d, c, n)) {
        for r in &d.rules {
            if ref_path_match(&r.path, path) {
                matching.push(r);
            }
        }
    }
    if matching
        .iter()
        .any(|r| r.capabilities.iter().any(|x| x == "deny"))
    {
        return false;
    }
    matching
        .iter()
        .any(|r| r.capabilities.iter().any(|x| x == cap.as_str()))
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

const MATRIX: &str = r#"
[[policy]]
name  = "deploy"
uids  = [1001]
rules = [ { path = "aws/creds/deploy", capabilities = ["read"] },
          { path = "secret/app/*",     capabilities = ["read", "list"] } ]

[[policy]]
name   = "ops"
groups = ["ops"]
rules  = [ { path = "secret/+/config", capabilities = ["read", "update"] },
           { path = "secret/ops*",     capabilities = ["create", "read", "update", "delete", "list"] },
           { path = "sys/mounts",      capabilities = ["read", "sudo"] } ]

[[policy]]
name  = "alice"
users = ["alice"]
rules = [ { path = "secret/*",             capabilities = ["read", "list"] },
          { path = "secret/app/private/*", capabilities = ["deny"] } ]

[[policy]]
name    = "svc"
cgroups = ["/system.slice/app*.service"]
rules   = [ { path = "secret/app/db", capabilities = ["read"] },
            { path = "secret/app/",   capabilities = ["list"] } ]

[[policy]]
name  = "bin"
exes  = ["/usr/bin/app", "/opt/**/tool"]
rules = [ { path = "*",            capabilities = ["list"] },
          { path = "secret/+/+",   capabilities = ["read"] },
          { path = "secret/+/db",  capabilities = ["deny", "read"] } ]

[[policy]]
name  = "nobody"
rules = [ { path = "*", capabilities = ["read", "create", "update", "delete", "list", "sudo"] } ]

[[policy]]
name  = "ghost"
users = ["ghost"]
groups = ["ghosts"]
rules = [ { path = "*", capabilities = ["read"] } ]

[[policy]]
name  = "lockdown"
gids  = [2000]
rules = [ { path = "secret/*", capabilities = ["deny"] } ]
"#;

fn matrix_callers() -> Vec<Caller> {
    let with = |uid: u32, gid: u32, groups: &[u32], exe: Option<&str>, cg: Option<&str>| Caller {
        uid,
        gid,
        pid: 100 + (uid % 1000),
        groups: groups.to_vec(),
        exe: exe.map(str::to_string),
        cgroup: cg.map(str::to_string),
    };
    vec![
        with(1001, 1001, &[], None, None),
        with(1002, 100, &[50], None, None),
        with(1003, 50, &[], None, None),
        with(1004, 1004, &[], None, Some("/system.slice/app-web.service")),
        with(1005, 1005, &[], None, Some("/system.slice/app.service/sub")),
        with(1006, 1006, &[], Some("/usr/bin/app"), None),
        with(1007, 1007, &[], Some("/opt/x/y/tool"), None),
        with(1008, 1008, &[], Some("/usr/bin/app2"), None),
        with(0, 0, &[], None, None),
        with(u32::MAX, 1001, &[50], Some("/usr/bin/app"), None),
        with(1001, 1001, &[2000], None, None),
        with(
            1002,
            100,
            &[],
            Some("/usr/bin/app"),
            Some("/system.slice/app.service"),
        ),
        with(1010, 1010, &[], None, None),
    ]
}

const MATRIX_PATHS: &[&str] = &[
    "aws/creds/deploy",
    "aws/creds/other",
    "aws/creds/",
    "secret/app/db",
    "secret/app/",
    "secret/app",
    "secret/app/x/y",
    "secret/app/private/key",
    "secret/web/config",
    "secret/web/config/x",
    "secret/ops",
    "secret/opsx/a",
    "secret/",
    "sys/mounts",
    "other/x",
    "",
];

#[test]
fn matrix_matches_reference_evaluator() {
    let ds = docs(MATRIX);
    let admins = vec![0];
    let n = names();
    let ps = Policies::new(ds.clone(), admins.clone(), &n).expect("policies");
    let (mut cases, mut granted) = (0, 0);
    for c in matrix_callers() {
        for path in MATRIX_PATHS {
            for cap in Capability::ALL {
                let want = ref_allowed(&ds, &admins, &n, &c, path, cap);
                let got = ps.allowed(&c, path, cap);
                assert_eq!(
                    got, want,
                    "caller uid={} exe={:?} cgroup={:?} path={path:?} cap={cap}",
                    c.uid, c.exe, c.cgroup
                );
                assert_eq!(ps.capabilities(&c, path).contains(cap), want);
                cases += 1;
                granted += usize::from(want);
            }
        }
    }
    assert!(cases >= 200, "{cases} cases");
    // Not trivially all-deny or all-allow.
    assert!(
        granted > 100 && cases - granted > 300,
        "{granted} of {cases} granted"
    );
}

#[test]
fn random_path_patterns_match_reference() {
    let mut rng = Lcg(7);
    let mut checked = 0;
    for _ in 0..6000 {
        let p = rng.pattern(3);
        let Ok(compiled) = PathPattern::parse(&p) else {
            continue;
        };
        let path = rng.path();
        assert_eq!(
            compiled.matches(&path),
            ref_path_match(&p, &path),
            "pattern {p:?} path {path:?}"
        );
        checked += 1;
    }
    assert!(checked > 3000);
}

/// `may_extend` and `covers` against brute-force enumeration of extensions.
#[test]
fn random_prefix_questions_match_brute_force() {
    let exts = extensions(&['a', 'b', 'c', '/'], 6);
    let mut rng = Lcg(99);
    let mut checked = 0;
    for _ in 0..300 {
        let p = rng.pattern(2);
        let Ok(compiled) = PathPattern::parse(&p) else {
            continue;
        };
        let mut q = rng.path();
        if rng.next().is_multiple_of(2) && !q.is_empty() && !q.ends_with('/') {
            q.push('/');
        }
        let hits = exts
            .iter()
            .filter(|e| compiled.matches(&format!("{q}{e}")))
            .count();
        assert_eq!(compiled.may_extend(&q), hits > 0, "may_extend {p:?} {q:?}");
        assert_eq!(
            compiled.covers(&q),
            hits == exts.len(),
            "covers {p:?} {q:?}"
        );
        checked += 1;
    }
    assert!(checked > 150);
}

fn extensions(alphabet: &[char], max: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..max {
        let mut next = Vec::new();
        for s in &frontier {
            for c in alphabet {
                next.push(format!("{s}{c}"));
            }
        }
        all.extend(next.iter().cloned());
        frontier = next;
    }
    all
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() as usize) % xs.len()]
    }
    fn pattern(&mut self, max_segs: u64) -> String {
        if self.next().is_multiple_of(25) {
            return "*".into();
        }
        let n = 1 + self.next() % max_segs;
        let segs: Vec<&str> = (0..n).map(|_| self.pick(&["a", "b", "ab", "+"])).collect();
        let end = self.pick(&["", "*", "/", "/*"]);
        format!("{}{end}", segs.join("/"))
    }
    fn path(&mut self) -> String {
        let n = self.next() % 5;
        let segs: Vec<&str> = (0..n)
            .map(|_| self.pick(&["a", "b", "ab", "ba", "c", "abc"]))
            .collect();
        let mut p = segs.join("/");
        if n > 0 && self.next().is_multiple_of(3) {
            p.push('/');
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Glob semantics
// ---------------------------------------------------------------------------------------------

#[test]
fn trailing_star_is_a_prefix_match() {
    let p = pat("secret/app/*");
    for yes in ["secret/app/", "secret/app/x", "secret/app/x/y"] {
        assert!(p.matches(yes), "{yes}");
    }
    for no in [
        "secret/app",
        "secret/apps/x",
        "secret/",
        "other/secret/app/x",
    ] {
        assert!(!p.matches(no), "{no}");
    }
    let p = pat("secret/ap*");
    assert!(p.matches("secret/app") && p.matches("secret/apex/y") && p.matches("secret/ap"));
    assert!(!p.matches("secret/a"));
    let all = pat("*");
    for any in ["", "a", "secret/app/x/", "sys/seal"] {
        assert!(all.matches(any));
    }
}

#[test]
fn plus_is_exactly_one_segment() {
    let p = pat("secret/+/db");
    assert!(p.matches("secret/app/db"));
    for no in [
        "secret/db",
        "secret//db",
        "secret/a/b/db",
        "secret/app/db/x",
        "secret/app/db/",
    ] {
        assert!(!p.matches(no), "{no}");
    }
    let p = pat("secret/+");
    assert!(p.matches("secret/x"));
    assert!(!p.matches("secret/") && !p.matches("secret/x/") && !p.matches("secret/x/y"));
    let p = pat("secret/+/*");
    assert!(p.matches("secret/x/") && p.matches("secret/x/y/z"));
    assert!(!p.matches("secret/x"));
    let p = pat("+/+/");
    assert!(p.matches("a/b/") && !p.matches("a/b") && !p.matches("a/b/c"));
}

#[test]
fn exact_and_folder_addresses() {
    let p = pat("secret/app");
    assert!(p.matches("secret/app") && !p.matches("secret/app/") && !p.matches("secret/app/x"));
    let p = pat("secret/app/");
    assert!(p.matches("secret/app/") && !p.matches("secret/app"));
}

#[test]
fn subject_globs() {
    let g = SubjectGlob::parse("/system.slice/app*.service").expect("glob");
    assert!(g.matches("/system.slice/app.service"));
    assert!(g.matches("/system.slice/app-web.service"));
    assert!(!g.matches("/system.slice/app/x.service"));
    assert!(!g.matches("/system.slice/web.service"));
    let g = SubjectGlob::parse("/opt/**/tool").expect("glob");
    assert!(g.matches("/opt/a/b/tool") && g.matches("/opt//tool"));
    assert!(!g.matches("/opt/tool") && !g.matches("/opt/a/tool2"));
    let g = SubjectGlob::parse("/usr/bin/app").expect("glob");
    assert!(g.matches("/usr/bin/app") && !g.matches("/usr/bin/app2") && !g.matches("/usr/bin/ap"));
    let g = SubjectGlob::parse("/a/*").expect("glob");
    assert!(g.matches("/a/") && g.matches("/a/x") && !g.matches("/a/x/y"));
    for (p, s) in [
        ("/a/**", "/a/b/c"),
        ("/**/x*", "/q/xyz"),
        ("/*/*/c", "/a/b/c"),
        ("/*b*", "/abc"),
        ("/*b*", "/a/bc"),
        ("/é*", "/éé"),
    ] {
        let g = SubjectGlob::parse(p).expect("glob");
        assert_eq!(g.matches(s), ref_subject(p, s), "{p} {s}");
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

#[test]
fn deny_wins_over_everything() {
    let ps = policies(
        r#"
[[policy]]
name = "grant"
uids = [1001]
rules = [ { path = "*", capabilities = ["read", "create", "update", "delete", "list", "sudo"] } ]
[[policy]]
name = "block"
gids = [77]
rules = [ { path = "secret/app/private*", capabilities = ["deny"] },
          { path = "secret/app/both",     capabilities = ["read", "deny"] } ]
"#,
        vec![0],
    );
    let mut c = caller(1001);
    c.groups = vec![77];
    assert!(ps.allowed(&c, "secret/app/db", Capability::Read));
    assert!(ps.capabilities(&c, "secret/app/private/key").is_empty());
    assert!(ps.capabilities(&c, "secret/app/private").is_empty());
    assert!(ps.capabilities(&c, "secret/app/both").is_empty());
    // Without the group, the deny policy does not apply.
    assert_eq!(
        ps.capabilities(&caller(1001), "secret/app/private"),
        CapSet::ALL
    );
}

#[test]
fn grants_add_up_across_rules_and_policies() {
    let ps = policies(
        r#"
[[policy]]
name = "a"
uids = [5]
rules = [ { path = "secret/*", capabilities = ["read"] } ]
[[policy]]
name = "b"
users = ["alice"]
rules = [ { path = "secret/x", capabilities = ["update"] } ]
"#,
        vec![],
    );
    assert!(ps.capabilities(&caller(2000), "secret/x").is_empty());
    assert_eq!(
        ps.capabilities(&caller(5), "secret/x"),
        [Capability::Read].into_iter().collect()
    );
    assert_eq!(
        ps.capabilities(&caller(1002), "secret/x"),
        [Capability::Update].into_iter().collect()
    );
    let ps = policies(
        r#"
[[policy]]
name = "a"
uids = [1002]
rules = [ { path = "secret/*", capabilities = ["read"] } ]
[[policy]]
name = "b"
users = ["alice"]
rules = [ { path = "secret/x", capabilities = ["update"] } ]
"#,
        vec![],
    );
    let caps = ps.capabilities(&caller(1002), "secret/x");
    assert!(caps.contains(Capability::Read) && caps.contains(Capability::Update));
    assert!(!caps.contains(Capability::Delete));
    assert_eq!(caps.to_string(), "[read, update]");
}

#[test]
fn admins_may_do_everything_and_uid_max_nothing() {
    let text = r#"
[[policy]]
name = "deny"
uids = [0, 1000, 4294967294]
rules = [ { path = "*", capabilities = ["deny"] } ]
"#;
    let ps = policies(text, vec![1000]);
    let admin = caller(1000);
    assert!(ps.is_admin(&admin));
    for cap in Capability::ALL {
        assert!(ps.allowed(&admin, "sys/seal", cap));
    }
    assert!(ps.may_see(&admin, "secret", true));
    // uid 0 is not special unless listed.
    assert!(!ps.is_admin(&Caller::internal()));
    assert!(!ps.allowed(&Caller::internal(), "x", Capability::Read));
    // The "no uid" caller gets nothing, even with a matching grant via its groups.
    let ps = policies(
        r#"
[[policy]]
name = "g"
gids = [7]
rules = [ { path = "*", capabilities = ["read"] } ]
"#,
        vec![1000],
    );
    let mut nobody = caller(u32::MAX);
    nobody.gid = 7;
    assert!(!ps.is_admin(&nobody));
    assert!(ps.capabilities(&nobody, "x").is_empty());
    assert!(!ps.may_see(&nobody, "x", false));
    let mut member = caller(9);
    member.gid = 7;
    assert!(ps.allowed(&member, "x", Capability::Read));
    // u32::MAX may not be named as an admin or subject.
    assert!(Policies::new(vec![], vec![u32::MAX], &no_names()).is_err());
    let mut d = docs(text);
    d[0].uids.push(u32::MAX);
    assert!(Policies::new(d, vec![], &no_names()).is_err());
}

#[test]
fn subjects_any_list_matches() {
    let ps = policies(
        r#"
[[policy]]
name = "p"
gids = [300]
groups = ["ops"]
cgroups = ["/system.slice/app*.service"]
exes = ["/usr/bin/app"]
rules = [ { path = "x", capabilities = ["read"] } ]
[[policy]]
name = "empty"
rules = [ { path = "*", capabilities = ["read"] } ]
"#,
        vec![],
    );
    let ok = |c: &Caller| ps.allowed(c, "x", Capability::Read);
    let base = caller(2000);
    assert!(!ok(&base));
    assert!(
        !ps.allowed(&base, "y", Capability::Read),
        "empty policy applies to nobody"
    );
    let mut c = base.clone();
    c.gid = 300;
    assert!(ok(&c));
    let mut c = base.clone();
    c.groups = vec![1, 300];
    assert!(ok(&c));
    let mut c = base.clone();
    c.groups = vec![50]; // ops
    assert!(ok(&c));
    let mut c = base.clone();
    c.cgroup = Some("/system.slice/app-x.service".into());
    assert!(ok(&c));
    let mut c = base.clone();
    c.exe = Some("/usr/bin/app".into());
    assert!(ok(&c));
    c.exe = Some("/usr/bin/app (deleted)".into());
    assert!(!ok(&c));
}

#[test]
fn unknown_names_match_nobody() {
    let ps = policies(
        r#"
[[policy]]
name = "p"
users = ["nosuchuser"]
groups = ["nosuchgroup"]
rules = [ { path = "*", capabilities = ["read"] } ]
"#,
        vec![],
    );
    for uid in [0, 1, 1000, 65534] {
        assert!(!ps.allowed(&caller(uid), "x", Capability::Read));
    }
}

#[test]
fn may_see_filters_listings() {
    let ps = policies(
        r#"
[[policy]]
name = "deploy"
uids = [1001]
rules = [ { path = "aws/creds/deploy",   capabilities = ["read"] },
          { path = "secret/app/*",       capabilities = ["read", "list"] },
          { path = "secret/app/hidden*", capabilities = ["deny"] },
          { path = "secret/+/shared",    capabilities = ["read"] },
          { path = "secret/gone/*",      capabilities = ["deny"] },
          { path = "secret/exact",       capabilities = ["deny"] },
          { path = "kv/",                capabilities = ["list"] } ]
"#,
        vec![0],
    );
    let c = caller(1001);
    let see = |p: &str, dir: bool| ps.may_see(&c, p, dir);
    assert!(see("aws", true));
    assert!(see("aws/creds", true));
    assert!(see("aws/creds/deploy", false));
    assert!(!see("aws/creds/other", false));
    assert!(!see("aws/other", true));
    assert!(
        see("aws/creds/deploy", true),
        "a capability on the name itself"
    );
    assert!(!see("aws/creds/deployx", true));
    assert!(see("secret", true));
    assert!(see("secret/app", true));
    assert!(see("secret/app/db", false));
    assert!(see("secret/app/sub", true));
    assert!(!see("secret/app/hidden", true), "denied name");
    assert!(!see("secret/app/hidden/x", false));
    assert!(!see("secret/app/hiddenx", true), "covered by a deny");
    assert!(see("secret/other", true), "secret/+/shared may match below");
    assert!(!see("secret/other", false));
    assert!(see("secret/other/shared", false));
    assert!(
        !see("secret/gone", true),
        "secret/gone/* covers everything below"
    );
    assert!(!see("secret/gone/x", true));
    assert!(!see("secret/exact", true));
    assert!(see("kv", true), "list on the folder address");
    assert!(!see("kv/x", true));
    assert!(!see("other", true));
    assert!(see("", true), "the root holds visible things");
    // Admins see everything; strangers nothing.
    assert!(ps.may_see(&caller(0), "anything/at/all", false));
    assert!(!ps.may_see(&caller(7), "secret", true));
    assert!(!ps.may_see(&caller(7), "", true));
}

#[test]
fn may_see_with_plus_and_star_everything() {
    let ps = policies(
        r#"
[[policy]]
name = "p"
uids = [1]
rules = [ { path = "+/+/config", capabilities = ["read"] } ]
[[policy]]
name = "q"
uids = [2]
rules = [ { path = "*", capabilities = ["list"] }, { path = "sys/*", capabilities = ["deny"] } ]
"#,
        vec![],
    );
    let one = caller(1);
    assert!(ps.may_see(&one, "a", true) && ps.may_see(&one, "a/b", true));
    assert!(!ps.may_see(&one, "a/b/c", true));
    assert!(ps.may_see(&one, "a/b/config", false));
    let two = caller(2);
    assert!(ps.may_see(&two, "x/y", true) && ps.may_see(&two, "x/y", false));
    assert!(!ps.may_see(&two, "sys", true) && !ps.may_see(&two, "sys/seal", false));
}

// ---------------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------------

#[test]
fn parse_live_files_toml_and_json() {
    let toml_text = r#"
uids  = [1001]
users = ["deploy"]
rules = [ { path = "aws/creds/deploy", capabilities = ["read"] },
          { path = "secret/app/*",     capabilities = ["read", "list"] } ]
"#;
    let d = PolicyDoc::parse_toml("deploy", toml_text).expect("toml");
    assert_eq!(d.name, "deploy");
    assert_eq!(d.uids, vec![1001]);
    assert_eq!(d.rules.len(), 2);
    assert!(d.gids.is_empty() && d.cgroups.is_empty());
    let json = r#"{ "uids": [1001], "users": ["deploy"], "rules": [
        { "path": "aws/creds/deploy", "capabilities": ["read"] },
        { "path": "secret/app/*", "capabilities": ["read", "list"] } ] }"#;
    assert_eq!(PolicyDoc::parse_json("deploy", json).expect("json"), d);
    assert_eq!(PolicyDoc::parse("deploy", json).expect("json"), d);
    assert_eq!(PolicyDoc::parse("deploy", toml_text).expect("toml"), d);
    // A matching name key is fine, a different one is not.
    let named = format!("name = \"deploy\"\n{toml_text}");
    assert_eq!(PolicyDoc::parse_toml("deploy", &named).expect("named"), d);
    let m = invalid(PolicyDoc::parse_toml("other", &named));
    assert!(m.contains("does not match"), "{m}");
    // Round trip through serde.
    let back: PolicyDoc =
        serde_json::from_str(&serde_json::to_string(&d).expect("ser")).expect("de");
    assert_eq!(back, d);
    // An empty body is a valid policy that applies to nobody.
    let empty = PolicyDoc::parse_toml("empty", "").expect("empty");
    assert!(empty.rules.is_empty());
}

#[test]
fn config_tables_are_policy_docs() {
    let d = docs(MATRIX);
    assert_eq!(d.len(), 8);
    assert_eq!(d[3].cgroups, vec!["/system.slice/app*.service".to_string()]);
    let e = toml::from_str::<Cfg>("[[policy]]\nuids = [1]\n").expect_err("name required");
    assert!(e.to_string().contains("name"), "{e}");
}

#[test]
fn bad_documents_are_refused_with_line_info() {
    let cases: &[(&str, &str)] = &[
        ("uids = [1]\nrule = []\n", "rule"),
        (
            "uids = [1]\nrules = [ { path = \"a\", capabilities = [\"raed\"] } ]\n",
            "raed",
        ),
        (
            "rules = [ { path = \"a\", capabilities = [] } ]\n",
            "at least one",
        ),
        (
            "rules = [ { path = \"a\", capabilities = [\"read\"], extra = 1 } ]\n",
            "extra",
        ),
        (
            "rules = [ { path = \"\", capabilities = [\"read\"] } ]\n",
            "empty",
        ),
        (
            "rules = [ { path = \"/secret\", capabilities = [\"read\"] } ]\n",
            "'/'",
        ),
        (
            "rules = [ { path = \"a*b\", capabilities = [\"read\"] } ]\n",
            "end",
        ),
        (
            "rules = [ { path = \"*/x\", capabilities = [\"read\"] } ]\n",
            "end",
        ),
        (
            "rules = [ { path = \"a//b\", capabilities = [\"read\"] } ]\n",
            "empty segment",
        ),
        (
            "rules = [ { path = \"a/../b\", capabilities = [\"read\"] } ]\n",
            "..",
        ),
        (
            "rules = [ { path = \"a+/b\", capabilities = [\"read\"] } ]\n",
            "whole segment",
        ),
        (
            "rules = [ { path = \"a/+*\", capabilities = [\"read\"] } ]\n",
            "+*",
        ),
        (
            "rules = [ { path = \"a/b?\", capabilities = [\"read\"] } ]\n",
            "'?'",
        ),
        (
            "rules = [ { path = \"roles/{name}\", capabilities = [\"read\"] } ]\n",
            "'{'",
        ),
        ("cgroups = [\"system.slice/x\"]\n", "absolute"),
        ("cgroups = [\"\"]\n", "empty"),
        ("exes = [\"/usr/bin/[ab]\"]\n", "wildcards"),
        ("exes = [\"/usr/***\"]\n", "***"),
        ("uids = [-1]\n", "uids"),
        ("uids = \"1\"\n", "uids"),
        ("name = \"../x\"\n", "policy name"),
    ];
    for (text, needle) in cases {
        let m = invalid(PolicyDoc::parse_toml("p", text));
        assert!(m.contains(needle), "{text:?}: {m}");
        assert!(m.contains("line"), "{text:?}: no line info: {m}");
        assert!(m.starts_with("policy p:"), "{m}");
    }
    let m = invalid(PolicyDoc::parse_json(
        "p",
        "{\n \"rules\": [ { \"path\": \"a\", \"capabilities\": [\"nope\"] } ]\n}",
    ));
    assert!(m.contains("nope") && m.contains("line 2"), "{m}");
    let m = invalid(PolicyDoc::parse_json("p", "{ \"uidz\": [] }"));
    assert!(m.contains("uidz"), "{m}");
    // Bad file names.
    for bad in ["", ".hidden", "a/b", "a b"] {
        let m = invalid(PolicyDoc::parse_toml(bad, ""));
        assert!(m.contains("policy name"), "{m}");
    }
}

#[test]
fn documents_built_in_code_are_validated() {
    let good = PolicyDoc {
        name: "p".into(),
        uids: vec![1],
        gids: vec![],
        users: vec![],
        groups: vec![],
        cgroups: vec![],
        exes: vec![],
        rules: vec![RuleDoc {
            path: "a/*".into(),
            capabilities: vec!["read".into()],
        }],
    };
    assert!(good.validate().is_ok());
    let mut bad = good.clone();
    bad.rules[0].capabilities = vec!["write".into()];
    let e = Policies::new(vec![bad], vec![], &no_names()).expect_err("bad cap");
    assert!(
        e.message.contains("rule 1") && e.message.contains("write"),
        "{e}"
    );
    let mut bad = good.clone();
    bad.rules[0].path = "a/*/b".into();
    assert!(bad.validate().is_err());
    let mut bad = good.clone();
    bad.exes = vec!["relative".into()];
    assert!(bad.validate().is_err());
    let mut bad = good.clone();
    bad.users = vec!["a:b".into()];
    assert!(bad.validate().is_err());
    let e = Policies::new(vec![good.clone(), good], vec![], &no_names()).expect_err("dup");
    assert!(e.message.contains("more than once"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Live policies
// ---------------------------------------------------------------------------------------------

#[test]
fn upsert_and_remove_make_new_values() {
    let n = names();
    let ps = Policies::new(vec![], vec![0], &n).expect("empty");
    assert_eq!(ps.names().count(), 0);
    let d = PolicyDoc::parse_toml(
        "readers",
        "users = [\"bob\"]\nrules = [ { path = \"kv/*\", capabilities = [\"read\"] } ]\n",
    )
    .expect("doc");
    let ps2 = ps.with_upserted(d.clone(), &n).expect("upsert");
    let bob = caller(1003);
    assert!(ps2.allowed(&bob, "kv/x", Capability::Read));
    assert!(
        !ps.allowed(&bob, "kv/x", Capability::Read),
        "the old value is unchanged"
    );
    assert_eq!(ps2.names().collect::<Vec<_>>(), vec!["readers"]);
    assert_eq!(ps2.get("readers"), Some(&d));
    assert!(ps2.get("nope").is_none());
    // Replace.
    let mut d2 = d.clone();
    d2.rules[0].capabilities = vec!["list".into()];
    let ps3 = ps2.with_upserted(d2, &n).expect("replace");
    assert_eq!(ps3.names().count(), 1);
    assert!(!ps3.allowed(&bob, "kv/x", Capability::Read));
    assert!(ps3.allowed(&bob, "kv/x", Capability::List));
    // A bad doc leaves nothing changed.
    let mut bad = d.clone();
    bad.rules[0].path = String::new();
    assert!(ps3.with_upserted(bad, &n).is_err());
    // Remove.
    assert!(ps3.without("nope").is_none());
    let ps4 = ps3.without("readers").expect("removed");
    assert_eq!(ps4.names().count(), 0);
    assert!(!ps4.allowed(&bob, "kv/x", Capability::List));
    assert!(ps3.allowed(&bob, "kv/x", Capability::List));
    assert_eq!(ps4.admins(), &[0]);
}

// ---------------------------------------------------------------------------------------------
// /etc files
// ---------------------------------------------------------------------------------------------

#[test]
fn etc_files_resolve_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let group = dir.path().join("group");
    std::fs::write(
        &passwd,
        "# comment\nroot:x:0:0:root:/root:/bin/sh\ndeploy:x:1001:1001::/home/deploy:/bin/sh\n\
         broken line\nbad:x:notanumber:1::/:/bin/sh\n+nis::::::\ndeploy:x:9999:9999::/:/bin/sh\n\
         crlf:x:1005:1005::/:/bin/sh\r\n",
    )
    .expect("write passwd");
    std::fs::write(&group, "root:x:0:\nops:x:50:alice,bob\nwheel:x:10\n").expect("write group");
    let etc = EtcFiles::load(&passwd, &group).expect("load");
    assert_eq!(etc.uid("root"), Some(0));
    assert_eq!(etc.uid("deploy"), Some(1001), "first entry wins");
    assert_eq!(etc.uid("crlf"), Some(1005));
    assert_eq!(etc.uid("bad"), None);
    assert_eq!(etc.uid("broken line"), None);
    assert_eq!(etc.uid("+nis"), None);
    assert_eq!(etc.uid("ops"), None);
    assert_eq!(etc.gid("ops"), Some(50));
    assert_eq!(etc.gid("wheel"), Some(10));
    assert_eq!(etc.gid("deploy"), None);

    let ps = Policies::new(
        docs(
            r#"
[[policy]]
name = "deploy"
users = ["deploy"]
groups = ["wheel"]
rules = [ { path = "aws/creds/deploy", capabilities = ["read"] } ]
"#,
        ),
        vec![],
        &etc,
    )
    .expect("policies");
    assert!(ps.allowed(&caller(1001), "aws/creds/deploy", Capability::Read));
    let mut wheel = caller(2);
    wheel.groups = vec![10];
    assert!(ps.allowed(&wheel, "aws/creds/deploy", Capability::Read));
    assert!(!ps.allowed(&caller(9999), "aws/creds/deploy", Capability::Read));

    let e = EtcFiles::load(dir.path().join("missing"), &group).expect_err("missing");
    assert_eq!(e.kind, ErrorKind::Io);
}

#[test]
fn etc_files_system_loads() {
    // Every Linux system has these; root is uid 0 where present.
    if let Ok(etc) = EtcFiles::system() {
        if let Some(uid) = etc.uid("root") {
            assert_eq!(uid, 0);
        }
    }
}

#[test]
fn capset_basics() {
    let mut s = CapSet::EMPTY;
    assert!(s.is_empty());
    s.insert(Capability::Sudo);
    assert!(s.contains(Capability::Sudo) && !s.contains(Capability::Read));
    assert_eq!(CapSet::ALL.iter().count(), 6);
    for c in Capability::ALL {
        assert_eq!(Capability::from_name(c.as_str()), Some(c));
        assert!(CapSet::ALL.contains(c));
    }
    assert_eq!(Capability::from_name("deny"), None);
}
