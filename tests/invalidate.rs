//! The kernel never shows what the daemon has removed: entries and attributes the kernel caches
//! (the default mount: one admin view, so static nodes get a non-zero TTL) are invalidated as
//! the daemon changes them — by unmount, remount, lease revocation, or a stored write.

mod common;
use common::moto::Moto;
use common::Daemon;

/// Run `script` in bash inside the mount; its stdout must be `ok`.
fn all_pass(d: &Daemon, script: &str) {
    let o = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(&d.mnt)
        .output()
        .expect("bash");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.trim_end() == "ok",
        "stdout: {out}\nstderr: {}\nlog:\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
}

#[test]
fn an_unmounted_folder_is_gone_at_once() {
    let d = Daemon::start();
    all_pass(
        &d,
        r#"
        fails=0
        for i in $(seq 100); do
            echo generic > sys/mounts/X || { echo "mount $i"; exit 1; }
            echo v > X/f || { echo "write $i"; exit 1; }
            [ -e X/f ] || { echo "X/f missing at $i"; exit 1; }
            rm sys/mounts/X || { echo "unmount $i"; exit 1; }
            [ ! -e X ] || fails=$((fails+1))
            [ ! -e X/f ] || fails=$((fails+1))
            [ ! -e sys/mounts/X ] || fails=$((fails+1))
        done
        [ $fails = 0 ] && echo ok || echo "$fails stale lookups"
        "#,
    );
}

#[test]
fn a_remounted_folder_moves_at_once() {
    let d = Daemon::start();
    all_pass(
        &d,
        r#"
        echo generic > sys/mounts/A && echo v > A/f || exit 1
        fails=0
        for i in $(seq 50); do
            [ -e A/f ] || { echo "A/f missing at $i"; exit 1; }
            mv sys/mounts/A sys/mounts/B || { echo "remount $i"; exit 1; }
            [ ! -e A ] || fails=$((fails+1))
            [ "$(cat B/f)" = v ] || fails=$((fails+1))
            mv sys/mounts/B sys/mounts/A || { echo "remount back $i"; exit 1; }
            [ ! -e B ] || fails=$((fails+1))
        done
        [ $fails = 0 ] && echo ok || echo "$fails stale lookups"
        "#,
    );
}

#[test]
fn a_new_size_is_seen_at_once() {
    let d = Daemon::start();
    all_pass(
        &d,
        r#"
        fails=0
        for i in $(seq 100); do
            v=$(head -c $i /dev/zero | tr '\0' x)
            printf %s "$v" > secret/s || exit 1
            [ "$(stat -c %s secret/s)" = $i ] || { echo "size $i: $(stat -c %s secret/s)"; fails=$((fails+1)); }
        done
        [ $fails = 0 ] && echo ok || echo "$fails stale sizes"
        "#,
    );
}

#[test]
fn revoked_leases_are_gone_at_once() {
    let m = Moto::start();
    let d = Daemon::start();
    std::fs::write(d.p("sys/mounts/aws"), "aws\n").expect("mount aws");
    std::fs::write(d.p("aws/config/root"), m.root_config()).expect("config/root");
    std::fs::write(
        d.p("aws/roles/deploy"),
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#,
    )
    .expect("role");
    all_pass(
        &d,
        r#"
        fails=0
        for i in $(seq 5); do
            cat aws/creds/deploy > /dev/null || { echo "issue $i"; exit 1; }
            [ -d sys/leases/aws/creds/deploy ] || { echo "no lease folder at $i"; exit 1; }
            ls sys/leases/aws/creds/deploy > /dev/null
            lease=$(ls sys/leases/aws/creds/deploy | head -n1)
            [ -e "sys/leases/aws/creds/deploy/$lease" ] || { echo "no lease at $i"; exit 1; }
            # Revoked by the core on its own (every lease of uid 0), not by an rm of the file.
            echo 0 > sys/revoke-uid || { echo "revoke $i"; exit 1; }
            [ ! -e "sys/leases/aws/creds/deploy/$lease" ] || { echo "lease $i"; fails=$((fails+1)); }
            # (Its emptied folder stays a while, by design, so that `rm -r` can finish.)
            ! ls sys/leases/aws/creds/deploy | grep -qx "$lease" || { echo "listed $i"; fails=$((fails+1)); }
        done
        [ $fails = 0 ] && echo ok || echo "$fails stale lookups"
        "#,
    );
}
