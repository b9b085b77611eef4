//! `kernel_cache = true`: static values read through the kernel's page cache where every
//! admitted caller sees the same view, kept until the value changes and never served stale —
//! whatever changed it (a write or delete through the mount, a rename, a remount, a seal, a
//! restart). Off (the default) and on a mount where callers see different views, nothing
//! enters the page cache. Whether pages are cached is read with `fincore` (util-linux).

mod common;
use common::Daemon;
use std::process::Command;

/// bash helpers: `res FILE` prints the bytes of FILE in the page cache; `cached FILE` cats
/// FILE until some of it is cached (bounded: an asynchronous RELEASE of the last writer drops
/// the pages once more after the first read), failing if it never is.
const HELPERS: &str = r#"
res() { fincore -n -b -o RES "$1" | tr -d ' '; }
cached() { for _ in $(seq 50); do cat "$1" >/dev/null; [ "$(res "$1")" -gt 0 ] && return 0; done; echo "$1 never cached"; return 1; }
"#;

/// Run `script` in bash inside the mount; its stdout must end with `ok`.
fn all_pass(d: &Daemon, script: &str) {
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("{HELPERS}\n{script}"))
        .current_dir(&d.mnt)
        .output()
        .expect("bash");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.trim_end().ends_with("ok"),
        "stdout: {out}\nstderr: {}\nlog:\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
}

fn on() -> Daemon {
    Daemon::start_with("kernel_cache = true")
}

#[test]
fn writes_through_the_mount_are_seen_at_once() {
    let d = on();
    all_pass(
        &d,
        r#"
        printf v0 > secret/a || exit 1
        cached secret/a || exit 1
        [ "$(cat secret/a)" = v0 ] || { echo "first read"; exit 1; }
        for i in $(seq 150); do
            v="value-$i-$(head -c $(( (i * 37) % 300 )) /dev/zero | tr '\0' x)"
            printf %s "$v" > secret/a || { echo "write $i"; exit 1; }
            got=$(cat secret/a)
            [ "$got" = "$v" ] || { echo "stale at $i: ${got:0:40} (${#got} bytes, want ${#v})"; exit 1; }
            got=$(cat secret/a)
            [ "$got" = "$v" ] || { echo "stale second read at $i"; exit 1; }
            [ "$(stat -c %s secret/a)" = ${#v} ] || { echo "size at $i"; exit 1; }
        done
        # In place, without O_TRUNC, and appended.
        printf abcdef > secret/p && cached secret/p || exit 1
        printf XY | dd of=secret/p conv=notrunc status=none || exit 1
        [ "$(cat secret/p)" = XYcdef ] || { echo "in place: $(cat secret/p)"; exit 1; }
        printf gh >> secret/p || exit 1
        [ "$(cat secret/p)" = XYcdefgh ] || { echo "append: $(cat secret/p)"; exit 1; }
        truncate -s 3 secret/p || exit 1
        [ "$(cat secret/p)" = XYc ] || { echo "truncate: $(cat secret/p)"; exit 1; }
        # Deleted: gone at once, from the cache too.
        cached secret/a || exit 1
        rm secret/a || exit 1
        if out=$(cat secret/a 2>&1); then echo "read after rm: $out"; exit 1; fi
        case "$out" in *"No such file"*) ;; *) echo "rm: $out"; exit 1;; esac
        printf back > secret/a && [ "$(cat secret/a)" = back ] || { echo "recreate"; exit 1; }
        echo ok
        "#,
    );
}

#[test]
fn an_open_file_from_before_a_change_never_leaves_its_old_value_behind() {
    let d = on();
    // Python: an open file that reads (and so fills the page cache) after the value changed.
    let script = r#"
import os
def read(p):
    with open(p, 'rb') as f:
        return f.read()
def write(p, v):
    with open(p, 'wb') as f:
        f.write(v)
write('secret/c', b'old')
for _ in range(20):
    read('secret/c')
fd = os.open('secret/c', os.O_RDONLY)
assert os.pread(fd, 100, 0) == b'old'
for i in range(30):
    new = b'new value %d' % i
    write('secret/c', new)
    assert read('secret/c') == new, ('fresh open', i, read('secret/c'))
    # The open file keeps its snapshot (as with direct I/O)...
    assert os.pread(fd, 100, 0) == b'old', ('snapshot', i)
    # ...and what it read never reaches a later open.
    assert read('secret/c') == new, ('after the old read', i, read('secret/c'))
os.close(fd)
for _ in range(20):
    assert read('secret/c') == new, ('after close', read('secret/c'))
# An open made before a change, closed without reading.
fd = os.open('secret/c', os.O_RDONLY)
write('secret/c', b'last')
assert read('secret/c') == b'last'
os.close(fd)
assert read('secret/c') == b'last'
print('ok')
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(&d.mnt)
        .output()
        .expect("python3");
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok",
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
}

#[test]
fn values_changed_by_another_route_are_never_served_stale() {
    let mut d = on();
    all_pass(
        &d,
        r#"
        # Rename over a cached value.
        printf aaa > secret/a && printf bbbbb > secret/b || exit 1
        cached secret/a && cached secret/b || exit 1
        mv secret/b secret/a || exit 1
        [ "$(cat secret/a)" = bbbbb ] || { echo "rename: $(cat secret/a)"; exit 1; }
        [ ! -e secret/b ] || { echo "b still there"; exit 1; }
        # A folder renamed.
        mkdir -p secret/d && printf in-d > secret/d/x && cached secret/d/x || exit 1
        mv secret/d secret/e && [ "$(cat secret/e/x)" = in-d ] && [ ! -e secret/d/x ] || { echo "folder rename"; exit 1; }
        # Remounts: two mounts swap paths, each with its own x.
        echo generic > sys/mounts/A && echo generic > sys/mounts/B || exit 1
        for i in $(seq 10); do
            printf "A$i" > A/x && printf "B$i-longer" > B/x || exit 1
            cached A/x && cached B/x || exit 1
            mv sys/mounts/A sys/mounts/T && mv sys/mounts/B sys/mounts/A && mv sys/mounts/T sys/mounts/B || { echo "swap $i"; exit 1; }
            [ "$(cat A/x)" = "B$i-longer" ] || { echo "remount $i: A/x = $(cat A/x)"; exit 1; }
            [ "$(cat B/x)" = "A$i" ] || { echo "remount $i: B/x = $(cat B/x)"; exit 1; }
        done
        # Unmounted, then a new mount at the same path: not the old value.
        cached A/x || exit 1
        rm sys/mounts/A && echo generic > sys/mounts/A || exit 1
        if cat A/x 2>/dev/null; then echo "unmounted value served"; exit 1; fi
        # Sealed: nothing served from the cache; unsealed: the value again.
        printf sealed-value > secret/s && cached secret/s || exit 1
        echo x > sys/seal || exit 1
        if cat secret/s 2>/dev/null; then echo "read while sealed"; exit 1; fi
        echo ok
        "#,
    );
    d.sh_ok("printf '%s' 'correct horse battery staple' > sys/unseal");
    all_pass(
        &d,
        r#"
        [ "$(cat secret/s)" = sealed-value ] || { echo "after unseal: $(cat secret/s)"; exit 1; }
        cached secret/s || exit 1
        echo ok
        "#,
    );
    // A restart (a new FUSE mount) with a value changed in between through the new mount.
    d.restart();
    all_pass(
        &d,
        r#"
        [ "$(cat secret/s)" = sealed-value ] || { echo "after restart"; exit 1; }
        cached secret/s || exit 1
        printf changed > secret/s && [ "$(cat secret/s)" = changed ] || { echo "after restart write"; exit 1; }
        echo ok
        "#,
    );
}

#[test]
fn off_by_default_nothing_enters_the_page_cache() {
    let d = Daemon::start();
    all_pass(
        &d,
        r#"
        printf v0 > secret/a || exit 1
        for i in $(seq 20); do
            [ "$(cat secret/a)" = "v$((i-1))" ] || { echo "read $i"; exit 1; }
            [ "$(res secret/a)" = 0 ] || { echo "cached without kernel_cache"; exit 1; }
            printf "v$i" > secret/a || exit 1
        done
        echo ok
        "#,
    );
}

#[test]
fn different_views_never_use_the_cache() {
    // allow_other: any uid may enter, and uid 1001's policy shows it only secret/app/.
    let d = Daemon::start_with(
        r#"kernel_cache = true
allow_other = true
[[policy]]
name = "app"
uids = [1001]
rules = [ { path = "secret/app/*", capabilities = ["read", "list"] } ]
"#,
    );
    all_pass(
        &d,
        r#"
        mkdir -p secret/app && printf shared > secret/app/k && printf root-only > secret/r || exit 1
        for _ in $(seq 5); do cat secret/app/k secret/r >/dev/null || exit 1; done
        [ "$(res secret/app/k)" = 0 ] && [ "$(res secret/r)" = 0 ] || { echo "cached with different views"; exit 1; }
        echo ok
        "#,
    );
    let as_1001 = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=1001", "--regid=1001", "--clear-groups"])
            .args(args)
            .current_dir(&d.mnt)
            .output()
            .expect("setpriv")
    };
    let o = as_1001(&["cat", "secret/app/k"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "shared", "{o:?}");
    let o = as_1001(&["cat", "secret/r"]);
    assert!(!o.status.success() && o.stdout.is_empty(), "{o:?}");
    let o = as_1001(&["fincore", "-n", "-b", "-o", "RES", "secret/app/k"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0", "{o:?}");
    assert!(
        d.log_text().contains("kernel_cache = true has no effect"),
        "{}",
        d.log_text()
    );
}

/// Writers store values 1..=300 (in place with O_TRUNC, or written aside and renamed over the
/// value) while two readers read: a read opened after value i was committed never sees an
/// older one. In place, a read in flight when an O_TRUNC open arrives may see the value cut
/// short (the kernel sets the inode's size to 0 at that open: SECURITY.md); renamed, never.
fn readers_never_go_back(renamed: bool) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let d = on();
    let path = d.p("secret/n");
    let tmp = d.p("secret/n.new");
    std::fs::write(&path, b"0").expect("first");
    let committed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, committed, done) = (path.clone(), committed.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut reads, mut short) = (0u64, 0u64);
                while !done.load(Ordering::SeqCst) {
                    let before = committed.load(Ordering::SeqCst);
                    let got = std::fs::read_to_string(&path).expect("read");
                    let digits = got.trim_end_matches('x');
                    if digits.is_empty() && !renamed {
                        short += 1;
                        continue;
                    }
                    let n: u64 = digits.parse().unwrap_or_else(|e| panic!("{got:?}: {e}"));
                    assert!(n >= before, "read {n} after {before} was committed");
                    reads += 1;
                }
                (reads, short)
            })
        })
        .collect();
    for i in 1..=300u64 {
        // Values of changing length: a stale size would cut or pad them.
        let v = format!("{i}{}", "x".repeat((i % 7) as usize));
        if renamed {
            std::fs::write(&tmp, v).expect("write aside");
            std::fs::rename(&tmp, &path).expect("rename");
        } else {
            std::fs::write(&path, v).expect("write");
        }
        committed.store(i, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        let (reads, short) = r.join().expect("reader");
        eprintln!("renamed={renamed}: {reads} reads, {short} cut short");
        assert!(reads > 0);
    }
    assert_eq!(std::fs::read_to_string(&path).expect("last"), "300xxxxxx");
}

#[test]
fn an_open_after_a_renamed_value_never_reads_an_older_one() {
    readers_never_go_back(true);
}

#[test]
fn an_open_after_an_overwrite_never_reads_an_older_value() {
    readers_never_go_back(false);
}
