//! The CLI's output: the only place that prints to stdout (the getting-started guide's
//! `Key  Value` tables and `Success!` lines).
#![allow(clippy::print_stdout)]

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
