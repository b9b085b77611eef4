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
    // a conditional batch: all of it when the key is as expected, none of it otherwise
    let batch = |v: &[u8]| {
        vec![
            WriteOp::Put("k/meta".into(), v.to_vec()),
            WriteOp::Put("k/v2".into(), b"key2".to_vec()),
        ]
    };
    assert!(s.apply_if("k/meta", None, &batch(b"m1")).expect("create"));
    assert!(!s.apply_if("k/meta", None, &batch(b"m2")).expect("exists"));
    assert!(!s
        .apply_if(
            "k/meta",
            Some(b"stale"),
            &[
                WriteOp::Put("k/meta".into(), b"m3".to_vec()),
                WriteOp::Put("k/v3".into(), b"key3".to_vec()),
            ],
        )
        .expect("stale"));
    assert_eq!(s.get("k/meta").expect("get"), Some(b"m1".to_vec()));
    assert_eq!(
        s.get("k/v3").expect("get"),
        None,
        "nothing of a refused batch"
    );
    assert!(s
        .apply_if(
            "k/meta",
            Some(b"m1"),
            &[
                WriteOp::Delete("k/v2".into()),
                WriteOp::Delete("k/meta".into()),
            ],
        )
        .expect("delete"));
    assert!(s.list("k/").expect("list").is_empty());
    // direct children: a subtree comes once, as its folder; neighbours that merely share a
    // leading string ("t/b-x", "t/b0" beside "t/b/") are not skipped
    for k in [
        "t/a",
        "t/b/1",
        "t/b/2/deep",
        "t/b/2/deeper/x",
        "t/b-x",
        "t/b0",
        "t/c",
        "t/c/x",
    ] {
        s.put(k, b"v").expect("put tree");
    }
    assert_eq!(
        s.list_children("t/").expect("children"),
        vec!["t/a", "t/b-x", "t/b/", "t/b0", "t/c", "t/c/"]
    );
    assert_eq!(
        s.list_children("t/b/").expect("children"),
        vec!["t/b/1", "t/b/2/"]
    );
    assert_eq!(
        s.list_children("t/b/2/").expect("children"),
        vec!["t/b/2/deep", "t/b/2/deeper/"]
    );
    assert!(s.list_children("t/z/").expect("children").is_empty());
    assert!(s.list_children("t/b/1/").expect("children").is_empty());
    let top = s.list_children("").expect("children");
    assert!(top.contains(&"t/".to_string()) && top.contains(&"e".to_string()));
    assert!(!top.iter().any(|k| k.starts_with("t/") && k != "t/"));
    assert_eq!(top, collapse("", &s.list("").expect("list")));
    assert!(s.has_prefix("t/b/2/").expect("has"));
    assert!(!s.has_prefix("t/b/3").expect("has"));
    // large value
    let big = vec![0xA5u8; 1 << 20];
    s.put("big", &big).expect("put big");
    assert_eq!(s.get("big").expect("get").as_deref(), Some(big.as_slice()));
}

/// The direct children of `prefix` computed from the full listing (what `list_children` must
/// equal).
fn collapse(prefix: &str, keys: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in keys {
        let rest = &k[prefix.len()..];
        let entry = match rest.find('/') {
            Some(n) => k[..prefix.len() + n + 1].to_string(),
            None => k.clone(),
        };
        if out.last() != Some(&entry) {
            out.push(entry);
        }
    }
    out
}

/// Writers on many threads at once: every acknowledged write is there afterwards, batches keep
/// each `apply` atomic, and compare-and-swap stays a correct increment under a race.
pub fn run_concurrent(s: &dyn Storage) {
    const THREADS: usize = 16;
    const EACH: usize = 50;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                for i in 0..EACH {
                    s.put(&format!("cw/{t:02}/{i:03}"), format!("{t}.{i}").as_bytes())
                        .expect("concurrent put");
                    // a pair written together is seen together or not at all
                    s.apply(&[
                        WriteOp::Put(format!("cp/{t:02}/{i:03}/a"), b"A".to_vec()),
                        WriteOp::Put(format!("cp/{t:02}/{i:03}/b"), b"B".to_vec()),
                    ])
                    .expect("concurrent apply");
                    let a = s.get(&format!("cp/{t:02}/{i:03}/a")).expect("get");
                    let b = s.get(&format!("cp/{t:02}/{i:03}/b")).expect("get");
                    assert_eq!(
                        (a.as_deref(), b.as_deref()),
                        (Some(&b"A"[..]), Some(&b"B"[..]))
                    );
                }
            });
        }
    });
    let keys = s.list("cw/").expect("list");
    assert_eq!(keys.len(), THREADS * EACH);
    for t in 0..THREADS {
        for i in 0..EACH {
            assert_eq!(
                s.get(&format!("cw/{t:02}/{i:03}")).expect("get"),
                Some(format!("{t}.{i}").into_bytes())
            );
        }
    }
    assert_eq!(s.list("cp/").expect("list").len(), 2 * THREADS * EACH);
    assert_eq!(s.list_children("cp/").expect("children").len(), THREADS);

    // CAS race: every thread increments one counter by read + compare-and-swap, retrying on a
    // lost race; no increment may be lost or doubled.
    const RACERS: usize = 8;
    const INCREMENTS: usize = 40;
    let won = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..RACERS {
            scope.spawn(|| {
                for _ in 0..INCREMENTS {
                    loop {
                        let cur = s.get("counter").expect("get counter");
                        let n: usize = cur
                            .as_deref()
                            .map(|v| String::from_utf8_lossy(v).parse().expect("number"))
                            .unwrap_or(0);
                        let next = (n + 1).to_string();
                        if s.compare_and_swap("counter", cur.as_deref(), Some(next.as_bytes()))
                            .expect("cas")
                        {
                            won.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            break;
                        }
                    }
                }
            });
        }
    });
    assert_eq!(won.into_inner(), RACERS * INCREMENTS);
    assert_eq!(
        s.get("counter").expect("get"),
        Some((RACERS * INCREMENTS).to_string().into_bytes())
    );
    // many racers creating one key: exactly one wins
    let winners = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..RACERS {
            let winners = &winners;
            scope.spawn(move || {
                if s.compare_and_swap("once", None, Some(t.to_string().as_bytes()))
                    .expect("cas create")
                {
                    winners.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(winners.into_inner(), 1);
}
