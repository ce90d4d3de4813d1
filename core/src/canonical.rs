//! Canonical JSON (RFC 8785, JCS) for the documents whose digest matters:
//! manifests, plans, evidence records.
//!
//! Our documents contain only objects, arrays, strings, booleans, null and
//! integers, so JCS reduces to: object keys sorted by UTF-16 code units, no
//! insignificant whitespace, the minimal string escaping serde_json already
//! produces, and integers printed plainly. Floats are refused rather than
//! canonicalised, since their textual form is where implementations differ.

use serde::Serialize;
use serde_json::Value;

/// Why a value cannot be canonicalised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    /// The value could not be turned into JSON at all.
    #[error("cannot serialise to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    /// A floating-point number was found; canonical documents use integers only.
    #[error("floating-point number {0} in a canonical document; use an integer or a string")]
    Float(String),
}

/// Serialise `value` to canonical JSON bytes.
///
/// # Errors
/// [`CanonicalError::Float`] if the value contains a non-integer number.
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = serde_json::to_value(value).map_err(CanonicalError::Serialize)?;
    let mut out = Vec::with_capacity(256);
    write_value(&v, &mut out)?;
    Ok(out)
}

/// Whether `bytes` is exactly the canonical form of the JSON it holds.
pub fn is_canonical(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => {
            let mut out = Vec::with_capacity(bytes.len());
            write_value(&v, &mut out).is_ok() && out == bytes
        }
        Err(_) => false,
    }
}

fn write_value(v: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                return Err(CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            // RFC 8785 §3.2.3: sort by UTF-16 code units.
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(&map[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_strips_whitespace() {
        let v = json!({"b": 1, "a": [true, null, "x\ny"], "c": {"z": -3, "é": "\u{1}"}});
        let got = String::from_utf8(to_canonical_vec(&v).unwrap()).unwrap();
        assert_eq!(got, r#"{"a":[true,null,"x\ny"],"b":1,"c":{"z":-3,"é":"\u0001"}}"#);
        assert!(is_canonical(got.as_bytes()));
        assert!(!is_canonical(br#"{"b":1,"a":2}"#));
        assert!(!is_canonical(br#"{"a": 2}"#));
    }

    #[test]
    fn utf16_ordering() {
        // U+E000 sorts before U+1F600 in UTF-8 byte order but after it in UTF-16.
        let v = json!({"\u{1F600}": 1, "\u{E000}": 2});
        let got = String::from_utf8(to_canonical_vec(&v).unwrap()).unwrap();
        assert_eq!(got, "{\"\u{1F600}\":1,\"\u{E000}\":2}");
    }

    #[test]
    fn refuses_floats() {
        assert!(matches!(to_canonical_vec(&json!({"x": 1.5})), Err(CanonicalError::Float(_))));
    }
}
