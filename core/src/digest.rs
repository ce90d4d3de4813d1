//! SHA-256 digests in the one textual form used everywhere: `sha256:<64 lowercase hex>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest. Displays and parses as `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        let text = self.text();
        std::str::from_utf8(&text[7..]).expect("hex is ASCII").to_owned()
    }

    /// `sha256:<64 lowercase hex>` as bytes on the stack (digests are
    /// formatted and compared by the million in a long log).
    #[must_use]
    pub fn text(&self) -> [u8; 71] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 71];
        out[..7].copy_from_slice(b"sha256:");
        for (i, b) in self.0.iter().enumerate() {
            out[7 + 2 * i] = HEX[usize::from(b >> 4)];
            out[8 + 2 * i] = HEX[usize::from(b & 15)];
        }
        out
    }

    /// Parse 64 lowercase hex characters (no prefix).
    pub fn from_hex(s: &str) -> Result<Self, DigestParseError> {
        /// Each byte's value as a lowercase hex digit, 0xff if it is none.
        const NIBBLE: [u8; 256] = {
            let mut t = [0xff; 256];
            let mut i = 0;
            while i < 16 {
                t[b"0123456789abcdef"[i] as usize] = i as u8;
                i += 1;
            }
            t
        };
        let bad = || DigestParseError(s.chars().take(80).collect());
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(bad());
        }
        // Every digit looked up, one test at the end (every record holds
        // several digests: this runs millions of times in a verification).
        let (mut out, mut invalid) = ([0u8; 32], 0u8);
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
            invalid |= hi | lo;
            *o = (hi << 4) | (lo & 15);
        }
        if invalid & 0xf0 != 0 {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

/// A string that is not `sha256:<64 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a digest of the form sha256:<64 lowercase hex>")]
pub struct DigestParseError(pub String);

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.text()).expect("ASCII"))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| DigestParseError(s.chars().take(80).collect()))?;
        Self::from_hex(hex)
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The text on the stack (`collect_str` would make a `String` of it).
        s.serialize_str(std::str::from_utf8(&self.text()).expect("ASCII"))
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Parses the text where the deserializer has it (no `String` made).
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Sha256Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a digest of the form sha256:<64 lowercase hex>")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Sha256Digest, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_known_value() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(d.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.to_string().parse::<Sha256Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "sha256:ba78",
            "sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ag",
        ] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad} accepted");
        }
        // Every ASCII character at the first, a middle and the last digit:
        // only lowercase hex digits are taken, each for its value.
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        for at in [0, 31, 63] {
            for c in (0u8..0x80).map(char::from) {
                let text: String = good.chars().enumerate().map(|(i, g)| if i == at { c } else { g }).collect();
                let parsed = Sha256Digest::from_hex(&text);
                match c.to_digit(16).filter(|_| !c.is_ascii_uppercase()) {
                    Some(v) => {
                        assert_eq!(parsed.unwrap().0[at / 2] >> (4 * (1 - at % 2)) & 15, v as u8, "{c:?} at {at}")
                    }
                    None => assert!(parsed.is_err(), "{c:?} at {at} accepted"),
                }
            }
        }
    }
}
