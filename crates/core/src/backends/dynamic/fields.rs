//! The field parser of dynamic-secret config files (`config/root`, `config/lease`, ...):
//! `key=value` lines (blank lines and `#` comments skipped) or a JSON object of strings.
//!
//! Must never: echo a value in an error (values may be secrets).

use crate::error::{Error, Result};
use crate::secret::SecretBytes;
use zeroize::Zeroizing;

/// Parse `key=value` lines (blank lines and `#` comments skipped) or a JSON object of strings.
pub(crate) fn parse_fields(
    data: &SecretBytes,
    what: &str,
) -> Result<Vec<(String, Zeroizing<String>)>> {
    let text = std::str::from_utf8(data.expose())
        .map_err(|_| Error::invalid(format!("{what}: not UTF-8 text")))?
        .trim();
    let mut out = Vec::new();
    if text.starts_with('{') {
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| {
                Error::invalid(format!(
                    "{what}: invalid JSON at line {} column {}",
                    e.line(),
                    e.column()
                ))
            })?;
        for (k, v) in v {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Err(Error::invalid(format!("{what}: {k} must be a string"))),
            };
            out.push((k, Zeroizing::new(s)));
        }
        return Ok(out);
    }
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(Error::invalid(format!(
                "{what}: line {} is not key=value",
                i + 1
            )));
        };
        let v = v.trim().trim_matches('"');
        out.push((k.trim().to_string(), Zeroizing::new(v.to_string())));
    }
    Ok(out)
}
