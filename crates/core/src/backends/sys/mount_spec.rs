//! Mount specs: what may be written to `sys/mounts/NAME` — a bare backend type, or TOML/JSON
//! with `type` and `description` — parsed whole at close and checked as the bytes arrive.
//!
//! Owns: `parse_mount_spec`, `check_mount_spec_prefix`. Must never: mount anything.

use crate::error::{Error, Result};
use crate::secret::SecretBytes;
use serde::Deserialize;

/// What may be written to `sys/mounts/NAME`: a bare type, or TOML/JSON with type and description.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MountSpec {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) description: String,
}

pub(super) fn parse_mount_spec(data: &SecretBytes) -> Result<MountSpec> {
    let text = data
        .text()
        .ok_or_else(|| Error::invalid("mount spec is not UTF-8 text"))?;
    if text.is_empty() {
        return Err(Error::invalid("mount spec is empty: write a backend type"));
    }
    if text.starts_with('{') {
        return serde_json::from_str(text).map_err(|e| Error::invalid(format!("mount spec: {e}")));
    }
    if !text.contains('=') {
        return Ok(MountSpec {
            kind: text.to_string(),
            description: String::new(),
        });
    }
    toml::from_str(text).map_err(|e| Error::invalid(format!("mount spec: {}", e.message())))
}

/// Check the bytes of a mount spec that have arrived so far (it is applied whole at close):
/// refuse at once what can no longer become a valid spec — bytes that are not UTF-8, a bare
/// type that is complete (followed by a newline) and unknown or followed by more text, a key
/// other than `type` and `description`, an unknown type in a complete `type = "x"` line.
/// Anything else (an incomplete line, a JSON spec, a multi-line string) is decided at close.
pub(crate) fn check_mount_spec_prefix(data: &[u8]) -> Result<()> {
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        // A character cut at the end of this write: the rest may come with the next one.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(data.get(..e.valid_up_to()).unwrap_or_default()).unwrap_or("")
        }
        Err(_) => return Err(Error::invalid("mount spec is not UTF-8 text")),
    };
    let known = |kind: &str| crate::backends::KNOWN_TYPES.contains(&kind);
    let unknown = |kind: &str| {
        Error::invalid(format!(
            "mount spec: unknown backend type {kind:?} (known: {})",
            crate::backends::KNOWN_TYPES.join(", ")
        ))
    };
    if text.starts_with('{') {
        return Ok(());
    }
    let body = text.trim_start();
    if let Some((first, rest)) = body.split_once('\n') {
        let first = first.trim();
        if !first.contains('=') && !first.starts_with(['#', '[', '{']) {
            // A bare type (the whole spec is one word), or a line that is not TOML either way.
            if !known(first) {
                return Err(unknown(first));
            }
            if !rest.trim().is_empty() {
                return Err(Error::invalid(
                    "mount spec: a bare type is one word on one line; for a description \
                     write type = \"...\" and description = \"...\" lines",
                ));
            }
            return Ok(());
        }
    }
    let Some(end) = text.rfind('\n') else {
        return Ok(());
    };
    // The complete lines so far; if they do not parse on their own (a multi-line string may
    // be open), the whole spec is judged at close.
    let Ok(table) = text[..=end].parse::<toml::Table>() else {
        return Ok(());
    };
    for (key, value) in &table {
        match (key.as_str(), value) {
            ("type", toml::Value::String(kind)) if !known(kind.trim()) => {
                return Err(unknown(kind.trim()))
            }
            ("type" | "description", toml::Value::String(_)) => {}
            ("type" | "description", _) => {
                return Err(Error::invalid(format!(
                    "mount spec: {key} must be a string"
                )))
            }
            (other, _) => {
                return Err(Error::invalid(format!(
                    "mount spec: unknown key {other:?} (a mount spec has type and description)"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn mount_spec_forms() {
        let s = parse_mount_spec(&SecretBytes::from("generic\n".to_string())).expect("bare");
        assert_eq!(s.kind, "generic");
        let s = parse_mount_spec(&SecretBytes::from(
            "type = \"generic\"\ndescription = \"team A\"\n".to_string(),
        ))
        .expect("toml");
        assert_eq!(
            (s.kind.as_str(), s.description.as_str()),
            ("generic", "team A")
        );
        let s = parse_mount_spec(&SecretBytes::from(r#"{"type":"generic"}"#.to_string()))
            .expect("json");
        assert_eq!(s.kind, "generic");
        assert!(
            parse_mount_spec(&SecretBytes::from("type = \"x\"\nbogus = 1".to_string())).is_err()
        );
        assert!(parse_mount_spec(&SecretBytes::from("".to_string())).is_err());
    }

    #[test]
    fn mount_spec_prefixes() {
        let ok: &[&[u8]] = &[
            b"",
            b"gen",
            b"nosuchtype",
            b"generic\n",
            b"  generic\n\n",
            b"type = \"generic\"\n",
            b"type = \"generic\"\ndescription = \"team A\"\n",
            b"type = \"generic\"\ndescription = \"\"\"multi\nline",
            b"type = \"nosu",
            b"# a comment\n",
            b"{\"type\": \"nosuch",
            &"description = \"\u{e9}\"".as_bytes()[..16],
        ];
        for p in ok {
            assert!(
                check_mount_spec_prefix(p).is_ok(),
                "refused {:?}",
                String::from_utf8_lossy(p)
            );
        }
        let bad: &[&[u8]] = &[
            b"nosuchtype\n",
            b"generic\nmore",
            b"type = \"nosuchtype\"\n",
            b"type = \"generic\"\nbogus = 1\n",
            b"type = 3\n",
            b"\xff\xfe",
        ];
        for p in bad {
            let e = check_mount_spec_prefix(p).expect_err("accepted a bad prefix");
            assert_eq!(e.kind, ErrorKind::InvalidInput);
            assert!(e.message.starts_with("mount spec"), "{}", e.message);
        }
    }
}
