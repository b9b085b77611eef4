//! Hygiene: secrets never reach the daemon's log, the audit log or the storage directory, in any
//! common encoding; the daemon is not dumpable and its memory is locked (or it says why not).
//!
//! Distinctive canaries travel every path a secret can take: generic values (written, read,
//! renamed, overwritten, deleted, refused as too large, written by the CLI), names of secrets,
//! the `sys/unseal` passphrase (and a wrong one), the aws `config/root` secret key (and a
//! malformed config holding one), the secret keys minted by `aws/creds/` (from moto), and the
//! input of `sys/audit-hash`; with seal, unseal, rotate and restarts in between. The daemon
//! logs at debug level. Then every canary is searched raw, as hex (lower and upper case) and as
//! base64 (standard and URL-safe alphabets, at each of the 3 byte alignments) in the daemon
//! log, the audit log and every file of the storage directory: 0 hits. Names of secrets are
//! searched in the storage directory only: paths are in the audit and daemon logs by design
//! (SECURITY.md), values never.
//!
//! `NOMADFS_HYGIENE_ROUNDS` (default 1; `scripts/stress` runs more) repeats the exercise with
//! fresh canaries before the one final search over everything the longer run left behind.

mod common;
#[path = "common/rel.rs"]
mod rel;

use common::moto::Moto;
use common::*;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A planted secret: a label for reports, its bytes, and where it must not appear.
struct Canary {
    label: String,
    bytes: Vec<u8>,
    /// Names may appear in the logs; only the store must not hold them.
    store_only: bool,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Canaries(Vec<Canary>);

impl Canaries {
    /// A new canary: `cnry` + label + 32 random hex digits (a valid file name, too).
    fn plant(&mut self, label: &str) -> String {
        let s = format!("cnry{label}{}", random_hex(16));
        self.0.push(Canary {
            label: label.to_string(),
            bytes: s.clone().into_bytes(),
            store_only: false,
        });
        s
    }
    fn plant_name(&mut self, label: &str) -> String {
        let s = self.plant(label);
        if let Some(c) = self.0.last_mut() {
            c.store_only = true;
        }
        s
    }
    /// A secret we did not choose (a minted credential).
    fn add(&mut self, label: &str, value: &str) {
        assert!(value.len() >= 8, "{label}: too short to search for");
        self.0.push(Canary {
            label: label.to_string(),
            bytes: value.as_bytes().to_vec(),
            store_only: false,
        });
    }
}

// ---- encodings ----

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64(data: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
        }
    }
    out
}

/// The part of the base64 of `c` that does not depend on what surrounds it, when `c` starts at
/// byte offset `off` (0..3) of a 3-byte group: characters wholly inside `c`'s bits.
fn b64_core(c: &[u8], off: usize, alphabet: &[u8; 64]) -> Vec<u8> {
    let mut padded = vec![0u8; off];
    padded.extend_from_slice(c);
    let enc = b64(&padded, alphabet);
    let start = (8 * off).div_ceil(6);
    let end = (8 * (off + c.len())) / 6;
    enc[start..end].to_vec()
}

/// (encoding name, needle) for every form searched.
fn encodings(c: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw".to_string(), c.to_vec()),
        (
            "hex".into(),
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "HEX".into(),
            c.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    for (name, alphabet) in [("base64", STD), ("base64url", URL)] {
        for off in 0..3 {
            let needle = b64_core(c, off, alphabet);
            if !out.iter().any(|(_, n)| *n == needle) {
                out.push((format!("{name}@{off}"), needle));
            }
        }
    }
    out
}

/// All needles found in `hay`: (canary index, encoding name). One pass over `hay` with an
/// 8-byte prefix index, so large store files are cheap to search.
fn search(hay: &[u8], needles: &[(usize, String, Vec<u8>)]) -> Vec<(usize, String)> {
    const P: usize = 8;
    let mut index: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, (_, _, n)) in needles.iter().enumerate() {
        assert!(n.len() >= P, "needle shorter than the index prefix");
        index.entry(&n[..P]).or_default().push(i);
    }
    let mut hits = Vec::new();
    if hay.len() < P {
        return hits;
    }
    for pos in 0..=hay.len() - P {
        if let Some(cands) = index.get(&hay[pos..pos + P]) {
            for &i in cands {
                let (c, enc, n) = &needles[i];
                if hay[pos..].starts_with(n) && !hits.contains(&(*c, enc.clone())) {
                    hits.push((*c, enc.clone()));
                }
            }
        }
    }
    hits
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

// ---- the exercise ----

const POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#;

/// One round of secrets through every path. `pass` is the store's passphrase.
fn round(d: &mut Daemon, m: &Moto, c: &mut Canaries, r: usize, pass: &str) {
    // Generic values: write, read, rename, overwrite, delete; names of secrets.
    let v1 = c.plant("val");
    let dir = c.plant_name("dirname");
    let file = c.plant_name("filename");
    std::fs::create_dir_all(d.p(&format!("secret/app{r}/{dir}"))).expect("mkdir");
    let body = format!("user=app\npassword={v1}\n");
    write_synced(d.p(&format!("secret/app{r}/{dir}/{file}")), body.as_bytes()).expect("write");
    assert_eq!(
        std::fs::read_to_string(d.p(&format!("secret/app{r}/{dir}/{file}"))).expect("read"),
        body
    );
    let moved = c.plant_name("movedname");
    std::fs::rename(
        d.p(&format!("secret/app{r}/{dir}/{file}")),
        d.p(&format!("secret/app{r}/{dir}/{moved}")),
    )
    .expect("rename");
    let v2 = c.plant("overwritten");
    let v3 = c.plant("newvalue");
    write_synced(d.p(&format!("secret/app{r}/ow")), v2.as_bytes()).expect("write");
    write_synced(d.p(&format!("secret/app{r}/ow")), v3.as_bytes()).expect("overwrite");
    let v4 = c.plant("deleted");
    write_synced(d.p(&format!("secret/app{r}/gone")), v4.as_bytes()).expect("write");
    std::fs::remove_file(d.p(&format!("secret/app{r}/gone"))).expect("rm");
    // A value over the size limit (1 MiB) is refused; its bytes go nowhere.
    let big = c.plant("toolarge");
    let huge = big.repeat((1 << 20) / big.len() + 2);
    let e = write_synced(d.p(&format!("secret/app{r}/big")), huge.as_bytes())
        .expect_err("over the limit");
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
    // The CLI's key=value path.
    let v5 = c.plant("cli");
    let o = std::process::Command::new(bin())
        .arg("--mount")
        .arg(&d.mnt)
        .args([
            "write",
            &format!("secret/app{r}/cli"),
            &format!("password={v5}"),
        ])
        .output()
        .expect("cli");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // sys/audit-hash: write a value, read its HMAC back. (Opening it O_RDWR before a first
    // write answers ENOENT: the open reads a snapshot, and there is no hash yet.)
    let h = c.plant("audithash");
    write_synced(d.p("sys/audit-hash"), h.as_bytes()).expect("write audit-hash");
    let hash = std::fs::read_to_string(d.p("sys/audit-hash")).expect("read audit-hash");
    assert!(hash.starts_with("hmac-sha256:"), "{hash}");

    // aws: a malformed root config holding a secret, then the real one; minted credentials.
    if r == 0 {
        std::fs::write(d.p("sys/mounts/aws"), "aws\n").expect("mount aws");
    }
    let bad = c.plant("badroot");
    let e = write_synced(
        d.p("aws/config/root"),
        format!("access_key=AKIDHYGIENE\nsecret_key={bad}\nthis line is broken {bad}\n").as_bytes(),
    )
    .expect_err("malformed config/root");
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let root = c.plant("rootsecret");
    write_synced(
        d.p("aws/config/root"),
        format!(
            "access_key=AKIDHYGIENE\nsecret_key={root}\nregion=us-east-1\nendpoint={}\n",
            m.endpoint
        )
        .as_bytes(),
    )
    .expect("config/root");
    write_synced(d.p("aws/roles/deploy"), POLICY.as_bytes()).expect("role");
    let creds = json(&std::fs::read(d.p("aws/creds/deploy")).expect("creds"));
    c.add(
        "minted-json",
        creds["secret_key"].as_str().expect("secret_key"),
    );
    let lease = creds["lease_id"].as_str().expect("lease_id").to_string();
    let env = std::fs::read_to_string(d.p("aws/creds/deploy.env")).expect("creds env");
    let minted_env = env
        .lines()
        .find_map(|l| l.strip_prefix("AWS_SECRET_ACCESS_KEY="))
        .expect("env secret");
    c.add("minted-env", minted_env);
    let process = json(&std::fs::read(d.p("aws/creds/deploy.process")).expect("creds process"));
    c.add(
        "minted-process",
        process["SecretAccessKey"]
            .as_str()
            .expect("SecretAccessKey"),
    );
    std::fs::remove_file(d.p(&format!("sys/leases/{lease}"))).expect("revoke one lease");

    // Seal, a wrong passphrase, the right one, rotate.
    d.sh_ok("echo x > sys/seal");
    let wrong = c.plant("wrongpass");
    let e = write_synced(d.p("sys/unseal"), wrong.as_bytes()).expect_err("wrong passphrase");
    assert!(e.raw_os_error().is_some(), "{e}");
    write_synced(d.p("sys/unseal"), pass.as_bytes()).expect("unseal");
    d.sh_ok("echo x > sys/rotate");

    // Restart: everything still there.
    d.restart();
    assert_eq!(
        std::fs::read_to_string(d.p(&format!("secret/app{r}/{dir}/{moved}"))).expect("read"),
        body
    );
    assert_eq!(
        std::fs::read_to_string(d.p(&format!("secret/app{r}/ow"))).expect("read"),
        v3
    );
    assert!(std::fs::read_to_string(d.p(&format!("secret/app{r}/cli")))
        .expect("read cli")
        .contains(&v5));
}

#[test]
fn no_secret_reaches_logs_audit_or_storage() {
    let rounds: usize = std::env::var("NOMADFS_HYGIENE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let m = Moto::start();
    let mut c = Canaries(Vec::new());
    // A store whose passphrase is a canary, initialised through sys/unseal; debug logging.
    let mut d = Daemon::start();
    d.stop();
    std::fs::remove_dir_all(d.store()).expect("remove store");
    std::fs::remove_file(d.audit()).expect("remove audit log");
    std::fs::remove_file(d.log()).expect("remove log");
    let pass = c.plant("passphrase");
    std::fs::write(d.dir.path().join("pass"), format!("{pass}\n")).expect("pass file");
    d.env = vec![("NOMADFS_LOG".into(), "debug".into())];
    d.spawn(false);
    write_synced(d.p("sys/unseal"), pass.as_bytes()).expect("initialise through sys/unseal");

    for r in 0..rounds {
        round(&mut d, &m, &mut c, r, &pass);
    }

    // Process hygiene, while it runs.
    let pid = d.child.as_ref().expect("daemon").id();
    let log = d.log_text();
    assert!(
        log.contains("hardened: not dumpable"),
        "no confirmation of PR_SET_DUMPABLE in the log"
    );
    assert!(!log.contains("hardening:"), "a hardening step failed");
    assert!(
        log.contains("DEBUG"),
        "the daemon did not log at debug level"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit")
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(core, ["0", "0"], "core files must be off (soft and hard)");
    let vmlck = rel::status_field(pid, "VmLck").expect("VmLck");
    let locked_kib: u64 = vmlck
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmLck number");
    if log.contains("memory locked") {
        assert!(locked_kib > 0, "the log says locked, VmLck is {vmlck}");
    } else {
        assert!(
            log.contains("memory NOT locked"),
            "neither mlock nor a warning in the log"
        );
    }
    println!("daemon {pid}: VmLck {vmlck}, core limit {core:?}, not dumpable (logged)");
    d.stop();

    // The search.
    let mut needles: Vec<(usize, String, Vec<u8>)> = Vec::new();
    let mut names_only: Vec<(usize, String, Vec<u8>)> = Vec::new();
    for (i, canary) in c.0.iter().enumerate() {
        for (enc, n) in encodings(&canary.bytes) {
            if canary.store_only {
                names_only.push((i, enc, n));
            } else {
                needles.push((i, enc, n));
            }
        }
    }
    let mut all = needles.clone();
    all.extend(names_only.iter().cloned());
    let mut targets = vec![(d.log(), needles.clone()), (d.audit(), needles.clone())];
    let store_files = files_under(&d.store());
    assert!(!store_files.is_empty(), "empty store directory");
    for f in &store_files {
        targets.push((f.clone(), all.clone()));
    }
    let mut failures = Vec::new();
    let mut bytes_searched = 0usize;
    for (file, needles) in &targets {
        let hay = std::fs::read(file).expect("read artifact");
        bytes_searched += hay.len();
        for (i, enc) in search(&hay, needles) {
            failures.push(format!(
                "{} ({enc}) found in {}",
                c.0[i].label,
                file.display()
            ));
        }
    }
    // The search itself can find things: the planted values are in the pass file.
    let pass_file = std::fs::read(d.dir.path().join("pass")).expect("pass");
    assert_eq!(
        search(&pass_file, &all).len(),
        1,
        "self-check of the search"
    );
    assert!(
        failures.is_empty(),
        "secrets leaked:\n{}",
        failures.join("\n")
    );
    println!(
        "hygiene: {rounds} round(s), {} canaries, {} needles (raw, hex, HEX, base64 and \
         base64url at 3 alignments, duplicates dropped) searched in {} files ({} bytes): 0 hits",
        c.0.len(),
        all.len(),
        targets.len(),
        bytes_searched
    );
}

#[test]
fn base64_cores_are_found_at_every_alignment() {
    let c = b"cnrytest0123456789abcdef";
    let needles: Vec<(usize, String, Vec<u8>)> =
        encodings(c).into_iter().map(|(e, n)| (0, e, n)).collect();
    for prefix in ["", "x", "xy", "xyz"] {
        let mut data = prefix.as_bytes().to_vec();
        data.extend_from_slice(c);
        data.extend_from_slice(b"tail");
        for alphabet in [STD, URL] {
            let hay = b64(&data, alphabet);
            assert!(
                !search(&hay, &needles).is_empty(),
                "not found after {prefix:?}"
            );
        }
        let hex: String = data.iter().map(|b| format!("{b:02X}")).collect();
        assert!(!search(hex.as_bytes(), &needles).is_empty());
    }
}
