//! The CLI's output: the only place that prints to stdout (the getting-started guide's
//! `Key  Value` tables and `Success!` lines).
#![allow(clippy::print_stdout)]

/// Raw bytes to stdout; the exit code (1 if stdout failed, e.g. a closed pipe).
pub fn bytes(b: &[u8]) -> i32 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(b).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

pub fn kv_table(rows: &[(String, String)]) {
    let w = rows
        .iter()
        .map(|(k, _)| k.len())
        .chain([3])
        .max()
        .unwrap_or(3);
    println!("{:<w$}    Value", "Key");
    println!("{:<w$}    -----", "---");
    for (k, v) in rows {
        println!("{k:<w$}    {v}");
    }
}

pub fn line(s: &str) {
    println!("{s}");
}

pub fn raw(s: &str) {
    print!("{s}");
}
