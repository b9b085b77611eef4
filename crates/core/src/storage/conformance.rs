//! The storage conformance suite: every `Storage` implementation must pass `run`.

use super::{Storage, WriteOp};

/// Exercise every method's contract. Panics (test failure) on the first violation.
pub fn run(s: &dyn Storage) {
    assert_eq!(s.get("missing").expect("get"), None);
    s.put("a/1", b"one").expect("put");
    s.put("a/2", b"two").expect("put");
    s.put("b/1", &[0, 255, 7]).expect("put binary");
    assert_eq!(s.get("a/1").expect("get"), Some(b"one".to_vec()));
    assert_eq!(s.get("b/1").expect("get"), Some(vec![0, 255, 7]));
    // overwrite
    s.put("a/1", b"uno").expect("overwrite");
    assert_eq!(s.get("a/1").expect("get"), Some(b"uno".to_vec()));
    // list is prefix-exact and ordered
    assert_eq!(s.list("a/").expect("list"), vec!["a/1", "a/2"]);
    assert_eq!(s.list("").expect("list").len(), 3);
    assert!(s.list("c/").expect("list").is_empty());
    assert!(s.has_prefix("a/").expect("has"));
    assert!(!s.has_prefix("a/3").expect("has"));
    assert!(!s.has_prefix("zz").expect("has"));
    // delete, idempotent
    s.delete("a/2").expect("delete");
    s.delete("a/2").expect("delete again");
    assert_eq!(s.get("a/2").expect("get"), None);
    // empty value is a value
    s.put("e", b"").expect("put empty");
    assert_eq!(s.get("e").expect("get"), Some(Vec::new()));
    // atomic batch
    s.apply(&[
        WriteOp::Put("m/x".into(), b"X".to_vec()),
        WriteOp::Delete("a/1".into()),
        WriteOp::Put("m/y".into(), b"Y".to_vec()),
    ])
    .expect("apply");
    assert_eq!(s.get("a/1").expect("get"), None);
    assert_eq!(s.list("m/").expect("list"), vec!["m/x", "m/y"]);
    // compare and swap
    assert!(s
        .compare_and_swap("c", None, Some(b"1"))
        .expect("cas create"));
    assert!(!s
        .compare_and_swap("c", None, Some(b"2"))
        .expect("cas stale"));
    assert!(!s
        .compare_and_swap("c", Some(b"0"), Some(b"2"))
        .expect("cas wrong"));
    assert!(s
        .compare_and_swap("c", Some(b"1"), Some(b"2"))
        .expect("cas ok"));
    assert_eq!(s.get("c").expect("get"), Some(b"2".to_vec()));
    assert!(s
        .compare_and_swap("c", Some(b"2"), None)
        .expect("cas delete"));
    assert_eq!(s.get("c").expect("get"), None);
    // large value
    let big = vec![0xA5u8; 1 << 20];
    s.put("big", &big).expect("put big");
    assert_eq!(s.get("big").expect("get").as_deref(), Some(big.as_slice()));
}
