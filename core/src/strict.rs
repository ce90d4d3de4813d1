//! Strict Ed25519 verification for keys checked once, at load.
//!
//! `ed25519_dalek::VerifyingKey::verify_strict` rejects a small-order key
//! and a small-order `R`, and otherwise verifies as `verify` does
//! (cofactorless, `R` compared as bytes with the recomputed, canonical one).
//! To decide "small order" it decompresses `R` and multiplies both points by
//! the cofactor, and each such check compresses a point again — an inversion
//! each, a quarter of an approval's verification. A [`StrongKey`] is checked
//! not to be of small order once, when it is loaded; `R` is of small order
//! exactly when its bytes are the canonical encoding of one of the eight
//! points of order dividing 8 (an `R` encoded any other way never equals
//! the canonical recomputed `R`, so `verify` refuses it). Same acceptance as
//! `verify_strict`, shown by the tests below on the torsion points, mixed
//! keys and non-canonical encodings.
//!
//! The check itself runs on ed25519-dalek 3 (curve25519-dalek 5), whose
//! double-base multiplication uses AVX-512 IFMA where the CPU has it and
//! the build asked for it (`.cargo/config.toml`), AVX2 or portable code
//! otherwise — the same equation, compared against ed25519-dalek 2's
//! `verify_strict` by the tests below whichever code path runs.

use std::sync::OnceLock;

use ed25519_dalek::{Signature, SignatureError, VerifyingKey};

/// An Ed25519 key checked, when it was made, to be a valid point not of
/// small order: the proof [`StrongKey::verify_strict`] relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrongKey(ed25519_fast::VerifyingKey);

impl StrongKey {
    /// The key, if it is not of small order (a "weak" key, which verifies
    /// signatures on many messages).
    pub fn new(key: VerifyingKey) -> Option<Self> {
        if key.is_weak() {
            return None;
        }
        // The same 32 bytes, decompressed by the implementation that checks
        // (it accepts what ed25519-dalek 2 accepted: both decompress alike).
        ed25519_fast::VerifyingKey::from_bytes(key.as_bytes()).ok().map(Self)
    }

    /// The key from its 32 bytes, if a valid point not of small order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        VerifyingKey::from_bytes(bytes).ok().and_then(Self::new)
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// `verify_strict`'s verdict, without re-checking the key.
    ///
    /// # Errors
    /// If `R` is of small order or the signature does not verify.
    pub fn verify_strict(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        if small_order_encodings().contains(signature.r_bytes()) {
            return Err(SignatureError::new());
        }
        // `verify`: S canonical, then `R == [S]B - [k]A` compared as bytes.
        let signature = ed25519_fast::Signature::from_bytes(&signature.to_bytes());
        ed25519_fast::Verifier::verify(&self.0, message, &signature).map_err(|_| SignatureError::new())
    }
}

/// Signatures already found to verify, remembered by the SHA-256 of exactly
/// what was checked: the scheme, the key, the message and the signature,
/// each length-prefixed. Whether a signature verifies is a function of those
/// bytes alone, so a remembered "verifies" is the verdict a new check would
/// reach; failures are not remembered. Everything else an approval needs —
/// registry entry, revocation, validity window, binding, age — is checked
/// again every time.
///
/// The runner checks each approval when it arrives and again, with the
/// others, at the execution gate; with this, the gate does not repeat the
/// signature arithmetic for an approval it has already seen verify. Bounded
/// ([`crate::bounded::BoundedMap`]: emptied whole when full). Clones share
/// the memory.
#[derive(Clone)]
pub struct VerifiedSignatures(std::sync::Arc<crate::bounded::BoundedMap<[u8; 32], ()>>);

impl Default for VerifiedSignatures {
    fn default() -> Self {
        Self(std::sync::Arc::new(crate::bounded::BoundedMap::new(Self::CAPACITY)))
    }
}

impl VerifiedSignatures {
    /// How many verified signatures are remembered at most (32 bytes each).
    pub const CAPACITY: usize = 4096;

    /// `verify()`'s verdict on (`scheme`, `key`, `message`, `signature`):
    /// remembered if these exact bytes verified before, else `verify` is run
    /// and a success remembered.
    ///
    /// # Errors
    /// What `verify` returns.
    pub fn check<E>(
        &self,
        scheme: &str,
        key: &[u8],
        message: &[u8],
        signature: &[u8],
        verify: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        for part in [scheme.as_bytes(), key, message, signature] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let id: [u8; 32] = h.finalize().into();
        if self.0.contains(&id) {
            return Ok(());
        }
        verify()?;
        self.0.insert(id, ());
        Ok(())
    }

    /// How many are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for VerifiedSignatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifiedSignatures({} remembered)", self.len())
    }
}

/// The canonical encodings of the eight points of order dividing 8.
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: OnceLock<[[u8; 32]; 8]> = OnceLock::new();
    ENCODINGS.get_or_init(|| curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes()))
}

#[cfg(test)]
mod tests {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::edwards::EdwardsPoint;
    use curve25519_dalek::scalar::Scalar;
    use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
    use sha2::{Digest as _, Sha512};

    use super::*;

    /// A signature made by hand: `R = [r]B + T`, `S = r + H(R‖A‖M)·a`.
    fn forge(a: &Scalar, key: &EdwardsPoint, r: &Scalar, torsion: &EdwardsPoint, msg: &[u8]) -> Signature {
        let big_r = (ED25519_BASEPOINT_POINT * r + torsion).compress();
        let mut h = Sha512::new();
        h.update(big_r.as_bytes());
        h.update(key.compress().as_bytes());
        h.update(msg);
        let k = Scalar::from_hash(h);
        let s = r + k * a;
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(big_r.as_bytes());
        bytes[32..].copy_from_slice(s.as_bytes());
        Signature::from_bytes(&bytes)
    }

    #[test]
    fn the_same_verdict_as_verify_strict() {
        let msg = b"approve p-1";
        let sk = SigningKey::from_bytes(&[7; 32]);
        let strong = StrongKey::new(sk.verifying_key()).unwrap();
        let good = sk.sign(msg);
        assert!(strong.verify_strict(msg, &good).is_ok());
        assert!(strong.verify_strict(b"approve p-2", &good).is_err());

        // Weak keys are refused when made.
        for t in EIGHT_TORSION {
            assert!(StrongKey::from_bytes(&t.compress().to_bytes()).is_none());
        }

        // R of small order (a = 0 and r = 0: R = T itself), and R with a
        // torsion component, against a key with one: both checks agree.
        let a = Scalar::from_bytes_mod_order([3; 32]);
        let r = Scalar::from_bytes_mod_order([5; 32]);
        for (i, t) in EIGHT_TORSION.iter().enumerate() {
            for key_t in [EIGHT_TORSION[0], EIGHT_TORSION[(i + 3) % 8]] {
                let key = ED25519_BASEPOINT_POINT * a + key_t;
                let vk = VerifyingKey::from_bytes(&key.compress().to_bytes()).unwrap();
                let Some(strong) = StrongKey::new(vk) else { continue };
                for (sa, sr) in [(a, r), (a, Scalar::ZERO)] {
                    let sig = forge(&sa, &key, &sr, t, msg);
                    let expect = vk.verify_strict(msg, &sig).is_ok();
                    assert_eq!(
                        strong.verify_strict(msg, &sig).is_ok(),
                        expect,
                        "torsion {i}, r = 0: {}",
                        sr == Scalar::ZERO
                    );
                }
            }
        }
        // R = a small-order point exactly (r = 0, no base part): refused by both.
        for t in EIGHT_TORSION {
            let key = ED25519_BASEPOINT_POINT * a;
            let vk = VerifyingKey::from_bytes(&key.compress().to_bytes()).unwrap();
            let mut bytes = forge(&a, &key, &Scalar::ZERO, &t, msg).to_bytes();
            bytes[..32].copy_from_slice(t.compress().as_bytes());
            let sig = Signature::from_bytes(&bytes);
            assert!(vk.verify_strict(msg, &sig).is_err());
            assert!(StrongKey::new(vk).unwrap().verify_strict(msg, &sig).is_err());
            // The case the list is for: R the identity satisfies the
            // lenient equation, and only the small-order check refuses it.
            assert_eq!(vk.verify(msg, &sig).is_ok(), t == EIGHT_TORSION[0]);
        }
        // Non-canonical encodings of small-order points (y = p and p + 1,
        // that is 0 and 1, either sign), which dalek decompresses: both refuse.
        for (low, sign) in [(0xed, 0), (0xee, 0), (0xed, 0x80), (0xee, 0x80)] {
            let mut r = [0xff; 32];
            r[0] = low;
            r[31] = 0x7f | sign;
            let mut bytes = good.to_bytes();
            bytes[..32].copy_from_slice(&r);
            let sig = Signature::from_bytes(&bytes);
            assert!(sk.verifying_key().verify_strict(msg, &sig).is_err());
            assert!(strong.verify_strict(msg, &sig).is_err());
        }
    }

    #[test]
    fn the_same_verdict_on_honest_and_altered_signatures() {
        // Keys, messages, and each signature with one bit flipped anywhere
        // (R, S, or past S's canonical range), and S + l (non-canonical).
        // The group order l = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let lb: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        for seed in 0..8u8 {
            let sk = SigningKey::from_bytes(&[seed.wrapping_mul(37).wrapping_add(1); 32]);
            let (vk, strong) = (sk.verifying_key(), StrongKey::new(sk.verifying_key()).unwrap());
            let msg: Vec<u8> = (0..(seed as usize * 97)).map(|i| (i * 31 + seed as usize) as u8).collect();
            let sig = sk.sign(&msg);
            assert!(strong.verify_strict(&msg, &sig).is_ok());
            for bit in (0..512).step_by(7) {
                let mut bytes = sig.to_bytes();
                bytes[bit / 8] ^= 1 << (bit % 8);
                let altered = Signature::from_bytes(&bytes);
                assert_eq!(strong.verify_strict(&msg, &altered).is_ok(), vk.verify_strict(&msg, &altered).is_ok());
                assert!(strong.verify_strict(&msg, &altered).is_err(), "bit {bit}");
            }
            let s = Scalar::from_canonical_bytes(sig.s_bytes().to_owned()).unwrap();
            let mut wide = [0u8; 32];
            // S + l fits in 32 bytes (l < 2^253): the same point equation,
            // refused by both as non-canonical.
            let (mut carry, sb) = (0u16, s.to_bytes());
            for i in 0..32 {
                let v = u16::from(sb[i]) + u16::from(lb[i]) + carry;
                wide[i] = v as u8;
                carry = v >> 8;
            }
            assert_eq!(Scalar::from_bytes_mod_order(wide), s, "S + l is S modulo l");
            let mut bytes = sig.to_bytes();
            bytes[32..].copy_from_slice(&wide);
            let non_canonical = Signature::from_bytes(&bytes);
            assert!(vk.verify_strict(&msg, &non_canonical).is_err());
            assert!(strong.verify_strict(&msg, &non_canonical).is_err());
        }
    }

    /// The memo answers only for the exact bytes that verified: a change to
    /// any part, or moving a byte from one part to the next, runs the check;
    /// a failure is never remembered; it stays bounded, and what it dropped
    /// to stay so is checked again.
    #[test]
    fn only_the_exact_bytes_that_verified_are_remembered() {
        use std::cell::Cell;
        let memo = VerifiedSignatures::default();
        let runs = Cell::new(0);
        let ok = || {
            runs.set(runs.get() + 1);
            Ok::<(), ()>(())
        };
        memo.check("ed25519", b"key", b"message", b"sig", ok).unwrap();
        memo.check("ed25519", b"key", b"message", b"sig", ok).unwrap();
        assert_eq!(runs.get(), 1, "the same bytes are answered from memory");
        for (scheme, key, msg, sig) in [
            ("es256", &b"key"[..], &b"message"[..], &b"sig"[..]),
            ("ed25519", b"kez", b"message", b"sig"),
            ("ed25519", b"key", b"messagf", b"sig"),
            ("ed25519", b"key", b"message", b"sih"),
            ("ed25519", b"ke", b"ymessage", b"sig"),
            ("ed25519", b"key", b"messages", b"ig"),
        ] {
            let before = runs.get();
            memo.check(scheme, key, msg, sig, ok).unwrap();
            assert_eq!(runs.get(), before + 1, "{scheme} {key:?} {msg:?} {sig:?} must be checked");
        }
        let fails = Cell::new(0);
        let fail = || {
            fails.set(fails.get() + 1);
            Err::<(), &str>("does not verify")
        };
        assert!(memo.check("ed25519", b"other", b"m", b"s", fail).is_err());
        assert!(memo.check("ed25519", b"other", b"m", b"s", fail).is_err());
        assert_eq!(fails.get(), 2, "a failure is checked again every time");

        let before = memo.len();
        for i in 0..VerifiedSignatures::CAPACITY as u32 {
            memo.check("ed25519", &i.to_be_bytes(), b"m", b"s", || Ok::<(), ()>(())).unwrap();
        }
        assert!(memo.len() <= VerifiedSignatures::CAPACITY, "bounded");
        assert!(before > 0);
        let first = runs.get();
        memo.check("ed25519", b"key", b"message", b"sig", ok).unwrap();
        assert_eq!(runs.get(), first + 1, "the oldest entry was forgotten");
    }

    #[test]
    fn the_eight_encodings_are_distinct() {
        let mut e = small_order_encodings().to_vec();
        e.sort_unstable();
        e.dedup();
        assert_eq!(e.len(), 8);
    }
}
