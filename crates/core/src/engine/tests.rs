//! The engine without FUSE: every generic and sys route, with a memory store.
use super::*;
use crate::storage::memory::MemoryStorage;

fn engine() -> (Arc<MemoryStorage>, Arc<Engine>) {
    let s = Arc::new(MemoryStorage::new());
    let e = Engine::new(
        s.clone(),
        EngineConfig {
            kdf: KdfParams::minimum(),
            ..EngineConfig::default()
        },
    );
    e.unseal(b"pass").expect("unseal");
    (s, e)
}

fn c() -> Caller {
    Caller::new(0, 0, 1)
}

fn names(e: &Engine, p: &str) -> Vec<String> {
    e.list(&c(), p)
        .expect("list")
        .into_iter()
        .map(|d| d.name)
        .collect()
}

fn kind(r: Result<impl Sized>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind)
}

#[test]
fn generic_write_read_list_delete() {
    let (_s, e) = engine();
    e.write(&c(), "secret/db-pass", SecretBytes::from_slice(b"s3cr3t"))
        .expect("write");
    assert_eq!(
        e.read(&c(), "secret/db-pass").expect("read").expose(),
        b"s3cr3t"
    );
    assert_eq!(e.stat(&c(), "secret/db-pass").expect("stat").size, 6);
    assert_eq!(names(&e, "secret"), vec![".help", "db-pass"]);
    e.delete(&c(), "secret/db-pass").expect("delete");
    assert_eq!(
        kind(e.read(&c(), "secret/db-pass")),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(e.delete(&c(), "secret/db-pass")),
        Some(ErrorKind::NotFound)
    );
}

#[test]
fn folders_implicit_and_explicit() {
    let (_s, e) = engine();
    e.write(&c(), "secret/app/db", SecretBytes::from_slice(b"1"))
        .expect("write");
    assert!(e.stat(&c(), "secret/app").expect("stat").is_dir());
    e.mkdir(&c(), "secret/empty").expect("mkdir");
    assert_eq!(
        kind(e.mkdir(&c(), "secret/empty")),
        Some(ErrorKind::AlreadyExists)
    );
    assert_eq!(names(&e, "secret"), vec![".help", "app", "empty"]);
    assert_eq!(kind(e.rmdir(&c(), "secret/app")), Some(ErrorKind::NotEmpty));
    e.rmdir(&c(), "secret/empty").expect("rmdir");
    assert_eq!(
        kind(e.stat(&c(), "secret/empty")),
        Some(ErrorKind::NotFound)
    );
    // a file and a folder never share a name
    assert_eq!(
        kind(e.write(&c(), "secret/app/db/x", SecretBytes::from_slice(b"1"))),
        Some(ErrorKind::NotADirectory)
    );
    assert_eq!(
        kind(e.write(&c(), "secret/app", SecretBytes::from_slice(b"1"))),
        Some(ErrorKind::IsADirectory)
    );
}

#[test]
fn bad_input_is_refused_and_nothing_stored() {
    let (_s, e) = engine();
    let big = SecretBytes::new(vec![0; (1 << 20) + 1]);
    assert_eq!(
        kind(e.write(&c(), "secret/big", big)),
        Some(ErrorKind::TooLarge)
    );
    assert_eq!(kind(e.stat(&c(), "secret/big")), Some(ErrorKind::NotFound));
    assert_eq!(
        kind(e.create(&c(), "secret/.hidden")),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        kind(e.mkdir(&c(), "secret/.d")),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        kind(e.write(&c(), "nosuch/x", SecretBytes::default())),
        Some(ErrorKind::NotFound)
    );
}

#[test]
fn rename_within_mount_and_across() {
    let (_s, e) = engine();
    e.write(&c(), "secret/a", SecretBytes::from_slice(b"A"))
        .expect("w");
    e.rename(&c(), "secret/a", "secret/b").expect("mv");
    assert_eq!(e.read(&c(), "secret/b").expect("r").expose(), b"A");
    assert_eq!(kind(e.read(&c(), "secret/a")), Some(ErrorKind::NotFound));
    e.write(&c(), "secret/d/x", SecretBytes::from_slice(b"X"))
        .expect("w");
    e.mkdir(&c(), "secret/d/sub").expect("mkdir");
    e.rename(&c(), "secret/d", "secret/e").expect("mv dir");
    assert_eq!(e.read(&c(), "secret/e/x").expect("r").expose(), b"X");
    assert!(e.stat(&c(), "secret/e/sub").expect("stat").is_dir());
    assert_eq!(kind(e.stat(&c(), "secret/d")), Some(ErrorKind::NotFound));
    e.mount("generic", "generic", "").expect("mount");
    assert_eq!(
        kind(e.rename(&c(), "secret/b", "generic/b")),
        Some(ErrorKind::CrossMount)
    );
}

#[test]
fn mounts_are_isolated_and_survive_remount() {
    let (_s, e) = engine();
    e.mount("generic", "generic", "team").expect("mount");
    assert_eq!(
        kind(e.mount("generic", "generic", "")),
        Some(ErrorKind::AlreadyExists)
    );
    assert_eq!(
        kind(e.mount("sys", "generic", "")),
        Some(ErrorKind::AlreadyExists)
    );
    assert_eq!(
        kind(e.mount("x", "nosuchtype", "")),
        Some(ErrorKind::InvalidInput)
    );
    e.write(&c(), "secret/foo", SecretBytes::from_slice(b"S"))
        .expect("w");
    e.write(&c(), "generic/foo", SecretBytes::from_slice(b"G"))
        .expect("w");
    assert_eq!(e.read(&c(), "secret/foo").expect("r").expose(), b"S");
    assert_eq!(e.read(&c(), "generic/foo").expect("r").expose(), b"G");
    e.rename(&c(), "sys/mounts/generic", "sys/mounts/other")
        .expect("remount");
    assert_eq!(e.read(&c(), "other/foo").expect("r").expose(), b"G");
    assert_eq!(kind(e.read(&c(), "generic/foo")), Some(ErrorKind::NotFound));
    e.delete(&c(), "sys/mounts/other").expect("unmount");
    // remounting the same path later starts empty: the data went with the unmount
    e.mount("other", "generic", "").expect("mount again");
    assert_eq!(kind(e.read(&c(), "other/foo")), Some(ErrorKind::NotFound));
}

#[test]
fn unmount_deletes_the_data_from_storage() {
    let (s, e) = engine();
    let before = s.dump().len();
    e.mount("tmp", "generic", "").expect("mount");
    for i in 0..10 {
        e.write(&c(), &format!("tmp/k{i}"), SecretBytes::from_slice(b"v"))
            .expect("w");
    }
    e.unmount("tmp").expect("unmount");
    // only the (rewritten) mount table remains
    assert_eq!(s.dump().len(), before);
}

#[test]
fn sys_files() {
    let (_s, e) = engine();
    let h = e.read(&c(), "sys/health").expect("health");
    let h = String::from_utf8_lossy(h.expose()).to_string();
    assert!(h.contains("\"sealed\": false"), "{h}");
    let t = e.read(&c(), "sys/mounts.table").expect("table");
    let t = String::from_utf8_lossy(t.expose()).to_string();
    assert!(t.starts_with("Path"), "{t}");
    assert!(t.contains("secret/") && t.contains("sys/"), "{t}");
    e.write(
        &c(),
        "sys/mounts/team-a",
        SecretBytes::from_slice(b"type = \"generic\"\ndescription = \"team A\"\n"),
    )
    .expect("mount via file");
    let m = e.read(&c(), "sys/mounts/team-a").expect("read");
    assert!(String::from_utf8_lossy(m.expose()).contains("team A"));
    assert_eq!(
        kind(e.create(&c(), "sys/mounts/team-a")),
        Some(ErrorKind::AlreadyExists)
    );
    assert_eq!(
        kind(e.read(&c(), "sys/seal")),
        Some(ErrorKind::PermissionDenied)
    );
    let help = e.read(&c(), "secret/.help").expect("help");
    assert!(String::from_utf8_lossy(help.expose()).contains("generic"));
    let root_help = e.read(&c(), ".help").expect("root help");
    assert!(String::from_utf8_lossy(root_help.expose()).contains("team-a/"));
}

#[test]
fn seal_hides_mounts_and_unseal_restores() {
    let (s, e) = engine();
    e.write(&c(), "secret/x", SecretBytes::from_slice(b"1"))
        .expect("w");
    e.write(&c(), "sys/seal", SecretBytes::from_slice(b"now"))
        .expect("seal");
    assert!(e.is_sealed());
    assert_eq!(names(&e, ""), vec![".help", "sys"]);
    assert_eq!(kind(e.read(&c(), "secret/x")), Some(ErrorKind::NotFound));
    assert!(e.read(&c(), "sys/health").is_ok());
    assert_eq!(
        kind(e.read(&c(), "sys/mounts.table")),
        Some(ErrorKind::NotFound)
    );
    assert!(e
        .write(&c(), "sys/unseal", SecretBytes::from_slice(b"wrong"))
        .is_err());
    assert!(e.is_sealed());
    e.write(&c(), "sys/unseal", SecretBytes::from_slice(b"pass\n"))
        .expect("unseal");
    assert_eq!(e.read(&c(), "secret/x").expect("r").expose(), b"1");
    // a fresh engine over the same storage sees the same mounts
    let e2 = Engine::new(
        s,
        EngineConfig {
            kdf: KdfParams::minimum(),
            ..EngineConfig::default()
        },
    );
    e2.unseal(b"pass").expect("unseal");
    assert_eq!(e2.read(&c(), "secret/x").expect("r").expose(), b"1");
}

#[test]
fn rotate_via_sys() {
    let (_s, e) = engine();
    e.write(&c(), "secret/x", SecretBytes::from_slice(b"1"))
        .expect("w");
    e.write(&c(), "sys/rotate", SecretBytes::from_slice(b"go"))
        .expect("rotate");
    assert_eq!(e.barrier().active_term().expect("term"), 2);
    assert_eq!(e.read(&c(), "secret/x").expect("r").expose(), b"1");
}
