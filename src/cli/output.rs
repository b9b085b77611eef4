//! The CLI's output: the only place that prints to stdout (the getting-started guide's
//! `Key  Value` tables and `Success!` lines). A closed stdout (`nomadfs read x | head -0`) ends
//! the output quietly instead of panicking.

use std::io::Write;

/// Raw bytes to stdout; the exit code (1 if stdout failed, e.g. a closed pipe).
pub fn bytes(b: &[u8]) -> i32 {
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
    let mut text = format!("{:<w$}    Value\n{:<w$}    -----\n", "Key", "---");
    for (k, v) in rows {
        text.push_str(&format!("{k:<w$}    {v}\n"));
    }
    raw(&text);
}

pub fn line(s: &str) {
    raw(&format!("{s}\n"));
}

pub fn raw(s: &str) {
    let _ = bytes(s.as_bytes());
}
