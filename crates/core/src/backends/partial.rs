//! Checking a document while its bytes arrive (`Backend::check_partial`).
//!
//! Owns: telling an incomplete document (more bytes may come) from a broken one (no bytes can
//! mend it) for the formats backends accept: JSON (serde_json's error classification), TOML
//! (a parse error at the end of the complete lines is "more to come", anywhere else it is
//! broken), `key=value` lines (each complete line is final) and UTF-8 text (a character cut at
//! the end waits for the next write). Must never: store anything, or do unbounded work: a
//! check runs on every write(2) with the whole buffer so far, so past 4 KiB it only looks when
//! the buffer ends a line or closes a JSON value, and only while the buffer is at most
//! `CHECK_CAP` bytes (a larger document is judged whole at close, as before).

use crate::error::{Error, Result};

/// Documents larger than this are checked at close only.
pub(crate) const CHECK_CAP: usize = 64 * 1024;

/// Buffers up to this size are checked on every write.
const ALWAYS_BELOW: usize = 4 * 1024;

/// Is the buffer worth checking now: a small one always; a larger one (up to `CHECK_CAP`)
/// when it ends a line or a JSON value (the write that completes a line or a document is the
/// one that fails), so many small writes of a large document do not re-parse it each time.
pub(crate) fn worth_checking(data: &[u8]) -> bool {
    data.len() <= ALWAYS_BELOW
        || (data.len() <= CHECK_CAP && matches!(data.last(), Some(b'\n' | b'}' | b']')))
}

/// The text so far: a UTF-8 character cut at the end waits for the next write; any other
/// invalid byte is final.
pub(crate) fn text_so_far<'a>(data: &'a [u8], what: &str) -> Result<&'a str> {
    match std::str::from_utf8(data) {
        Ok(t) => Ok(t),
        Err(e) if e.error_len().is_none() => {
            Ok(std::str::from_utf8(data.get(..e.valid_up_to()).unwrap_or_default()).unwrap_or(""))
        }
        Err(_) => Err(Error::invalid(format!("{what}: not UTF-8 text"))),
    }
}

/// The complete lines of `text` (up to and including its last newline).
pub(crate) fn complete_lines(text: &str) -> &str {
    match text.rfind('\n') {
        Some(i) => text.get(..=i).unwrap_or(""),
        None => "",
    }
}

/// A JSON document so far: `Ok(true)` complete (one whole value), `Ok(false)` incomplete, an
/// error (with line and column) when no more bytes can make it valid.
pub(crate) fn json_complete(text: &str, what: &str) -> Result<bool> {
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => Ok(true),
        Err(e) if e.classify() == serde_json::error::Category::Eof => Ok(false),
        Err(e) => {
            // serde_json's text ends in " at line L column C": say where once.
            let (line, col) = (e.line(), e.column());
            let text = e.to_string();
            let why = text
                .strip_suffix(&format!(" at line {line} column {col}"))
                .unwrap_or(&text);
            Err(Error::invalid(format!(
                "{what}: invalid JSON at line {line} column {col}: {}",
                first_line(why)
            )))
        }
    }
}

/// The complete lines of a TOML document so far, if they parse (`None`: more bytes may still
/// mend them, e.g. an open multi-line array or string); an error (with line and column) when
/// the parse fails anywhere but at their end.
pub(crate) fn toml_complete_lines<'a>(text: &'a str, what: &str) -> Result<Option<&'a str>> {
    let lines = complete_lines(text);
    if lines.trim().is_empty() {
        return Ok(None);
    }
    match toml::from_str::<toml::Table>(lines) {
        Ok(_) => Ok(Some(lines)),
        Err(e) => match e.span() {
            Some(s) if s.start < lines.len() => {
                let (line, col) = line_col(lines, s.start);
                Err(Error::invalid(format!(
                    "{what}: invalid TOML at line {line} column {col}: {}",
                    first_line(e.message())
                )))
            }
            _ => Ok(None),
        },
    }
}

/// Check a TOML-or-JSON document (JSON when it starts with `{`) as it arrives: a JSON one with
/// `check` once it is complete; a TOML one with `check` on its complete lines whenever they
/// parse, where a missing field is "not yet" (a later line may bring it) and any other
/// refusal is final.
pub(crate) fn check_document(
    data: &[u8],
    what: &str,
    check: impl Fn(&str) -> Result<()>,
) -> Result<()> {
    let Some(text) = text_unless_json(data, what, &check)? else {
        return Ok(());
    };
    match toml_complete_lines(text, what)? {
        Some(lines) => match check(lines) {
            Err(e) if e.message.contains("missing field") => Ok(()),
            r => r,
        },
        None => Ok(()),
    }
}

/// The text so far when it is worth checking and not JSON (`None`: nothing to check now). A
/// JSON body is checked here, with `whole` once it is complete.
fn text_unless_json<'a>(
    data: &'a [u8],
    what: &str,
    whole: &impl Fn(&str) -> Result<()>,
) -> Result<Option<&'a str>> {
    if !worth_checking(data) {
        return Ok(None);
    }
    let text = text_so_far(data, what)?;
    if text.trim_start().starts_with('{') {
        if json_complete(text, what)? {
            whole(text)?;
        }
        return Ok(None);
    }
    Ok(Some(text))
}

/// Check `key=value` lines (blank lines and `#` comments skipped) or a JSON object as they
/// arrive: each complete line with `line` (key, value, 1-based line number); a JSON object
/// with `whole` once it is complete.
pub(crate) fn check_fields(
    data: &[u8],
    what: &str,
    line: impl Fn(&str, &str, usize) -> Result<()>,
    whole: impl Fn(&str) -> Result<()>,
) -> Result<()> {
    let Some(text) = text_unless_json(data, what, &whole)? else {
        return Ok(());
    };
    // Line numbers as the commit-time parser counts them (after leading blank space).
    let lines = complete_lines(text.trim_start());
    for (i, l) in lines.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            return Err(Error::invalid(format!(
                "{what}: line {} is not key=value",
                i + 1
            )));
        };
        line(k.trim(), v.trim().trim_matches('"'), i + 1)?;
    }
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

/// 1-based line and column (in characters) of byte offset `at` of `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_incomplete_vs_broken() {
        assert_eq!(json_complete("{\"a\": [1, ", "x").ok(), Some(false));
        assert_eq!(json_complete("  ", "x").ok(), Some(false));
        assert_eq!(json_complete("{\"a\": 1}\n", "x").ok(), Some(true));
        let e = json_complete("{not json", "x").err().map(|e| e.message);
        assert_eq!(
            e.as_deref(),
            Some("x: invalid JSON at line 1 column 2: key must be a string")
        );
        assert!(json_complete("{} x", "x").is_err());
    }

    #[test]
    fn toml_open_constructs_wait_broken_lines_fail() {
        for open in [
            "a = [\n",
            "a = [\n \"x\",\n",
            "a = \"\"\"abc\n",
            "a = '''x\n",
            "a = 1",
        ] {
            assert_eq!(toml_complete_lines(open, "x").ok(), Some(None), "{open:?}");
        }
        for broken in [
            "foo bar\n",
            "a = \"abc\n",
            "a = 1\nb\n",
            "[x\n",
            "a = 1\na = 2\n",
        ] {
            assert!(toml_complete_lines(broken, "x").is_err(), "{broken:?}");
        }
        let e = toml_complete_lines("a = 1\nb c\n", "x")
            .err()
            .map(|e| e.message);
        assert!(e.is_some_and(|m| m.contains("line 2 column 3")));
        assert_eq!(
            toml_complete_lines("a = 1\nb = [", "x").ok(),
            Some(Some("a = 1\n"))
        );
    }

    #[test]
    fn fields_lines_are_final_when_complete() {
        let ok = |_: &str, _: &str, _: usize| Ok(());
        let whole = |_: &str| Ok(());
        assert!(check_fields(b"a=1\nnoequals", "x", ok, whole).is_ok());
        assert!(check_fields(b"a=1\nnoequals\n", "x", ok, whole).is_err());
        assert!(check_fields(b"\xff\n", "x", ok, whole).is_err());
        // A character cut at the end of a write waits.
        assert!(check_fields(
            "a=\u{e9}".as_bytes().get(..3).unwrap_or_default(),
            "x",
            ok,
            whole
        )
        .is_ok());
        assert!(check_fields(b"{\"a\": 1", "x", ok, |_| Err(Error::invalid("no"))).is_ok());
        assert!(check_fields(b"{\"a\": 1}", "x", ok, |_| Err(Error::invalid("no"))).is_err());
    }
}
