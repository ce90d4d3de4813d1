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

/// `value` as canonical JSON written straight from its `Serialize` (None
/// where that writer gives up): for tests that it agrees with [`to_canonical_vec`].
#[doc(hidden)]
pub fn direct_canonical_vec<T: Serialize + ?Sized>(value: &T) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    crate::canonical_direct::write(value, &mut out).ok().map(|()| out)
}

/// Whether `bytes` is exactly `to_canonical_vec(value)`. Written straight
/// from `value` first (no `Value` in between: several times faster, for
/// checking every record of a log); when that does not match or gives up,
/// decided by [`to_canonical_vec`] itself.
///
/// # Errors
/// As [`to_canonical_vec`].
pub fn is_canonical_form_of<T: Serialize + ?Sized>(value: &T, bytes: &[u8]) -> Result<bool, CanonicalError> {
    thread_local! {
        /// The output of the last check, reused by the next (one per record of a log).
        static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let direct = |out: &mut Vec<u8>| {
        out.clear();
        let same = crate::canonical_direct::write(value, out).is_ok() && out == bytes;
        if out.capacity() > crate::canonical_direct::SPARE_BYTES {
            *out = Vec::new(); // a huge value's buffer is not kept
        }
        same
    };
    // (A check made while another is under way on this thread takes a
    // buffer of its own.)
    let same = OUT.with(|o| match o.try_borrow_mut() {
        Ok(mut out) => direct(&mut out),
        Err(_) => direct(&mut Vec::with_capacity(bytes.len())),
    });
    if same {
        return Ok(true);
    }
    Ok(to_canonical_vec(value)? == bytes)
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
                use std::io::Write as _;
                write!(out, "{n}").expect("writing to a Vec");
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
            keys.sort_by(|a, b| key_order(a, b));
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

/// Object keys in UTF-16 code unit order; for ASCII keys (nearly all)
/// that is byte order.
pub(crate) fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() { a.as_bytes().cmp(b.as_bytes()) } else { a.encode_utf16().cmp(b.encode_utf16()) }
}

pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Copy runs of bytes that need no escape in one go: every byte of a
    // multi-byte UTF-8 sequence is >= 0x80, so only ASCII bytes are escaped.
    // Eight bytes are looked at at once while none of them needs one.
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8)
            && !needs_escape(u64::from_le_bytes(word.try_into().expect("eight bytes")))
        {
            i += 8;
            continue;
        }
        let b = bytes[i];
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => &[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `w` is a control character, `"` or
/// `\` (exact: a byte >= 0x80 never matches; no borrow arises between
/// bytes unless one of them matches).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGH;
    (below(w, 0x20) | below(w ^ (ONES * u64::from(b'"')), 1) | below(w ^ (ONES * u64::from(b'\\')), 1)) != 0
}

const HEX: &[u8; 16] = b"0123456789abcdef";

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
    fn strings_escape_exactly_quote_backslash_and_control_characters() {
        let all: String = (0u8..0x80).map(char::from).chain("é😀\u{202e}".chars()).collect();
        let got = String::from_utf8(to_canonical_vec(&json!(all)).unwrap()).unwrap();
        let mut want = String::from("\"");
        for c in all.chars() {
            match c {
                '"' => want.push_str("\\\""),
                '\\' => want.push_str("\\\\"),
                '\u{08}' => want.push_str("\\b"),
                '\u{0c}' => want.push_str("\\f"),
                '\n' => want.push_str("\\n"),
                '\r' => want.push_str("\\r"),
                '\t' => want.push_str("\\t"),
                c if (c as u32) < 0x20 => want.push_str(&format!("\\u{:04x}", c as u32)),
                c => want.push(c),
            }
        }
        want.push('"');
        assert_eq!(got, want);
        // And it reads back as the same string.
        assert_eq!(serde_json::from_str::<String>(&got).unwrap(), all);
    }

    #[test]
    fn every_escape_at_every_offset_of_a_long_string() {
        let escape = |c: char| match c {
            '"' => "\\\"".to_owned(),
            '\\' => "\\\\".to_owned(),
            '\u{08}' => "\\b".to_owned(),
            '\u{0c}' => "\\f".to_owned(),
            '\n' => "\\n".to_owned(),
            '\r' => "\\r".to_owned(),
            '\t' => "\\t".to_owned(),
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        };
        let specials = (0u8..0x20).map(char::from).chain(['"', '\\', '!', '#', '[', ']', '\u{7f}', 'é', '\u{202e}']);
        for c in specials {
            for at in 0..20 {
                for len in [at + 1, at + 9, 24] {
                    let text: String = (0..len).map(|i| if i == at { c } else { 'a' }).collect();
                    let mut got = Vec::new();
                    write_string(&text, &mut got);
                    let want = format!("\"{}\"", text.chars().map(escape).collect::<String>());
                    assert_eq!(String::from_utf8(got).unwrap(), want, "{c:?} at {at} of {len}");
                }
            }
        }
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
        assert!(direct_canonical_vec(&json!({"x": 1.5})).is_none());
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "kebab-case")]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(i64, String),
        Struct { z_last: bool, a_first: Option<u32>, nested: Vec<Inner> },
    }

    #[derive(serde::Serialize)]
    #[serde(tag = "type", rename_all = "kebab-case")]
    enum Tagged {
        One { b: String, a: Vec<u64> },
        Two {},
    }

    #[derive(serde::Serialize)]
    struct Inner {
        zeta: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        alpha: serde_json::Value,
        map: std::collections::HashMap<String, i32>,
        shapes: Vec<Shape>,
        tagged: Vec<Tagged>,
    }

    fn inner(text: &'static str) -> Inner {
        Inner {
            zeta: text,
            skipped: None,
            alpha: json!({"\u{1F600}": [1, -2, null], "\u{E000}": {"k": "v\u{202e}\n"}, "A": true, "a": false}),
            map: [("b".to_owned(), 2), ("a".to_owned(), -1), ("é".to_owned(), 0)].into(),
            shapes: vec![],
            tagged: vec![Tagged::One { b: "x".into(), a: vec![u64::MAX, 0] }, Tagged::Two {}],
        }
    }

    #[test]
    fn the_direct_writer_writes_what_the_value_path_writes() {
        let mut deep = inner("quote \" backslash \\ tab \t \u{1} \u{7f} é");
        deep.shapes = vec![
            Shape::Unit,
            Shape::Newtype(7),
            Shape::Tuple(i64::MIN, "t".into()),
            Shape::Struct { z_last: true, a_first: None, nested: vec![inner("in"), inner("")] },
            Shape::Struct { z_last: false, a_first: Some(3), nested: vec![] },
        ];
        let direct = direct_canonical_vec(&deep).expect("written directly");
        assert_eq!(String::from_utf8(direct).unwrap(), String::from_utf8(to_canonical_vec(&deep).unwrap()).unwrap());
        assert!(is_canonical_form_of(&deep, &to_canonical_vec(&deep).unwrap()).unwrap());
        assert!(!is_canonical_form_of(&deep, &serde_json::to_vec(&deep).unwrap()).unwrap());
    }

    /// Keys the direct writer orders by their first eight bytes where it
    /// can: sharing those bytes, differing only past them, one a prefix of
    /// another (also by a NUL), non-ASCII ones (UTF-16 order, where U+10000
    /// sorts before U+FFFF), in every order they may come in.
    #[test]
    fn the_direct_writer_orders_keys_as_the_value_path_does() {
        let keys = [
            "abcdefgh",
            "abcdefgh0",
            "abcdefgh1",
            "abcdefg",
            "ab",
            "ab\u{0}",
            "ab\u{0}\u{0}",
            "",
            "\u{7f}",
            "é",
            "z",
            "\u{ffff}",
            "\u{10000}",
            "abcdefgé",
            "abcdefgz",
            "ABCDEFGH",
        ];
        // Members in an arbitrary order, as a struct's come.
        struct Unordered(Vec<&'static str>);
        impl Serialize for Unordered {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap as _;
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (i, k) in self.0.iter().enumerate() {
                    m.serialize_entry(k, &i)?;
                }
                m.end()
            }
        }
        for rotate in 0..keys.len() {
            let mut order: Vec<&'static str> = keys.to_vec();
            order.rotate_left(rotate);
            if rotate % 2 == 1 {
                order.reverse();
            }
            let u = Unordered(order);
            let direct = direct_canonical_vec(&u).expect("written directly");
            assert_eq!(String::from_utf8(direct).unwrap(), String::from_utf8(to_canonical_vec(&u).unwrap()).unwrap());
        }
        // A key twice: not written directly (the value path keeps the last).
        assert!(direct_canonical_vec(&Unordered(vec!["abcdefgh1", "b", "abcdefgh1"])).is_none());
    }

    #[test]
    fn where_the_direct_writer_gives_up_the_value_path_decides() {
        // Integer map keys: written as strings by the `Value` path; not directly.
        let m: std::collections::BTreeMap<u32, bool> = [(10, true), (9, false)].into();
        assert!(direct_canonical_vec(&m).is_none());
        let want = to_canonical_vec(&m).unwrap();
        assert_eq!(want, br#"{"10":true,"9":false}"#);
        assert!(is_canonical_form_of(&m, &want).unwrap());
        assert!(!is_canonical_form_of(&m, br#"{"9":false,"10":true}"#).unwrap());
    }
}
