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
//! The arithmetic is curve25519-dalek 5's (the equation of ed25519-dalek's
//! `verify`, written out here), whose double-base multiplication uses
//! AVX-512 IFMA where the CPU has it and the build asked for it
//! (`.cargo/config.toml`), AVX2 or portable code otherwise. A key that
//! checks again and again (an approver's, a trusted signer's) does it with
//! tables of its own and the base point's multiples instead ([`StrongKey`]):
//! the same point, summed from dalek's additions. Several
//! signatures checked together ([`verify_strict_many`]) share the one field
//! inversion each comparison needs (compressing the recomputed `R`): each
//! signature still gets its own equation and its own verdict, never a
//! combined one. The tests below compare every path against ed25519-dalek
//! 2's `verify_strict`, whichever code path the CPU takes.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use curve5::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve5::scalar::Scalar;
use curve5::traits::Identity as _;
use ed25519_dalek::{Signature, SignatureError, VerifyingKey};
use sha2::{Digest as _, Sha512};

use crate::comb::{self, Comb};

/// An Ed25519 key checked, when it was made, to be a valid point not of
/// small order: the proof [`StrongKey::verify_strict`] relies on.
///
/// A key that checks a second signature gets a table of its multiples
/// (`comb.rs`: 379 KB, ~0.6–1 ms to make; the base point's, made by the
/// first key to need it, ~10 ms once per process), shared by its clones,
/// and from then on checks with it: no doublings, ~61 point additions
/// instead of ~256 doublings and ~70 additions, ~0.6× the time of a check
/// without one (`benches/approval.rs`, AVX2, 2026-12-07). A key used
/// once — a capsule's, a bundle's — never pays for one. At most
/// [`StrongKey::MAX_TABLES`] exist in a process at a time; a key past that
/// checks without one. Either way the point compared with the signature's
/// `R` is the same.
#[derive(Clone)]
pub struct StrongKey {
    /// The 32 bytes as given (hashed into `k` as given, as `verify` does).
    bytes: [u8; 32],
    /// `-A`, decompressed once.
    minus_a: EdwardsPoint,
    /// The table of `-A`'s multiples, once made.
    table: Arc<KeyTable>,
}

/// How many signatures a key has checked, and the table made at the second.
#[derive(Default)]
struct KeyTable {
    checks: AtomicU32,
    /// `None` inside when [`StrongKey::MAX_TABLES`] were already held.
    made: OnceLock<Option<Comb>>,
}

/// The tables held in this process.
static TABLES: AtomicUsize = AtomicUsize::new(0);

impl Drop for KeyTable {
    fn drop(&mut self) {
        if let Some(Some(_)) = self.made.get() {
            TABLES.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl PartialEq for StrongKey {
    /// The same key: the same 32 bytes (the point follows from them).
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for StrongKey {}

impl std::fmt::Debug for StrongKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StrongKey({})", hex::encode(self.bytes))
    }
}

impl StrongKey {
    /// How many keys hold a table at once in a process (~24 MB at most).
    pub const MAX_TABLES: usize = 64;

    /// Bits of scalar per addition in a key's table: 37 additions, 2,368
    /// points (379 KB). 6 bits took 43 additions in 220 KB, 8 bits take 32
    /// in 655 KB: a 3-of-5 quorum from nothing took ~4% less at 7 bits
    /// than at 6, ~1% less again at 8 (`benches/approval.rs`, 2026-12-07,
    /// three rounds). The base point's own table, one per process, has 11.
    const WINDOW: u32 = 7;

    /// The key, if it is not of small order (a "weak" key, which verifies
    /// signatures on many messages).
    pub fn new(key: VerifyingKey) -> Option<Self> {
        if key.is_weak() {
            return None;
        }
        // The same 32 bytes, decompressed by the arithmetic that checks (it
        // accepts what ed25519-dalek 2 accepted: both decompress alike).
        let point = CompressedEdwardsY(*key.as_bytes()).decompress()?;
        Some(Self { bytes: *key.as_bytes(), minus_a: -point, table: Arc::default() })
    }

    /// The key from its 32 bytes, if a valid point not of small order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        VerifyingKey::from_bytes(bytes).ok().and_then(Self::new)
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Whether this key (or a clone) checks with a table of its multiples.
    pub fn has_table(&self) -> bool {
        matches!(self.table.made.get(), Some(Some(_)))
    }

    /// The table to check with: none at the first check, made at the
    /// second if fewer than [`Self::MAX_TABLES`] are held.
    fn table(&self) -> Option<&Comb> {
        if let Some(made) = self.table.made.get() {
            return made.as_ref();
        }
        if self.table.checks.fetch_add(1, Ordering::Relaxed) == 0 {
            return None;
        }
        self.table
            .made
            .get_or_init(|| {
                let claimed = TABLES
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < Self::MAX_TABLES).then_some(n + 1));
                claimed.is_ok().then(|| Comb::new(&self.minus_a, Self::WINDOW))
            })
            .as_ref()
    }

    /// `verify_strict`'s verdict, without re-checking the key.
    ///
    /// # Errors
    /// If `R` is of small order or the signature does not verify.
    pub fn verify_strict(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        let r = self.recompute_r(message, signature).ok_or_else(SignatureError::new)?;
        if r.compress().as_bytes() == signature.r_bytes() { Ok(()) } else { Err(SignatureError::new()) }
    }

    /// `[S]B - [k]A` with `k = SHA-512(R‖A‖M)`: the `R` a valid signature
    /// has, still to be compressed and compared as bytes with the
    /// signature's. `None` when refused before the arithmetic: `R` of small
    /// order, or `S` not canonical (`verify`'s own first check).
    fn recompute_r(&self, message: &[u8], signature: &Signature) -> Option<EdwardsPoint> {
        if small_order_encodings().contains(signature.r_bytes()) {
            return None;
        }
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))?;
        let mut h = Sha512::new();
        h.update(signature.r_bytes());
        h.update(self.bytes);
        h.update(message);
        let hash: [u8; 64] = h.finalize().into();
        let k = Scalar::from_bytes_mod_order_wide(&hash);
        Some(match self.table() {
            Some(table) => table.add_multiple(comb::basepoint().add_multiple(EdwardsPoint::identity(), &s), &k),
            None => EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &self.minus_a, &s),
        })
    }
}

/// [`StrongKey::verify_strict`]'s verdict on each of several signatures, in
/// order. Each gets its own equation; what is shared is the field
/// inversion of compressing the recomputed `R`s (one for all instead of
/// one each, ~2.3 µs saved per signature after the first on this machine).
pub fn verify_strict_many(checks: &[(&StrongKey, &[u8], &Signature)]) -> Vec<Result<(), SignatureError>> {
    let recomputed: Vec<Option<EdwardsPoint>> =
        checks.iter().map(|(key, message, signature)| key.recompute_r(message, signature)).collect();
    let points: Vec<EdwardsPoint> = recomputed.iter().flatten().copied().collect();
    let mut compressed = EdwardsPoint::compress_batch_alloc(&points).into_iter();
    checks
        .iter()
        .zip(&recomputed)
        .map(|((_, _, signature), r)| {
            // One compressed point per recomputed `R`, in the same order.
            let matches = r.is_some() && compressed.next().is_some_and(|c| c.as_bytes() == signature.r_bytes());
            if matches { Ok(()) } else { Err(SignatureError::new()) }
        })
        .collect()
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
        let id = Self::id(scheme, key, message, signature);
        if self.0.contains(&id) {
            return Ok(());
        }
        verify()?;
        self.0.insert(id, ());
        Ok(())
    }

    /// [`verify_strict_many`]'s verdicts, in order: a signature remembered
    /// passes; the others are checked together and their successes
    /// remembered (as [`Self::check`] with the scheme `ed25519`).
    pub fn check_ed25519(&self, checks: &[(&StrongKey, &[u8], &Signature)]) -> Vec<Result<(), SignatureError>> {
        let ids: Vec<[u8; 32]> = checks
            .iter()
            .map(|(key, message, signature)| Self::id("ed25519", key.as_bytes(), message, &signature.to_bytes()))
            .collect();
        let unknown: Vec<usize> = (0..checks.len()).filter(|&i| !self.0.contains(&ids[i])).collect();
        if unknown.is_empty() {
            return checks.iter().map(|_| Ok(())).collect();
        }
        let to_check: Vec<_> = unknown.iter().map(|&i| checks[i]).collect();
        let mut verdicts: Vec<Result<(), SignatureError>> = (0..checks.len()).map(|_| Ok(())).collect();
        for (&i, verdict) in unknown.iter().zip(verify_strict_many(&to_check)) {
            if verdict.is_ok() {
                self.0.insert(ids[i], ());
            }
            verdicts[i] = verdict;
        }
        verdicts
    }

    /// What a verdict is remembered by: the SHA-256 of the four parts, each
    /// length-prefixed.
    fn id(scheme: &str, key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
        use sha2::Sha256;
        let mut h = Sha256::new();
        for part in [scheme.as_bytes(), key, message, signature] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
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

    /// Held for reading while a test makes a table, for writing by the test
    /// that fills the process's allowance, so that neither starves the other.
    static ALLOWANCE: std::sync::RwLock<()> = std::sync::RwLock::new(());

    /// The key twice: one that checks without a table, one that checks with
    /// its table (as a key does from its second check on).
    fn both_ways(vk: VerifyingKey) -> Option<[StrongKey; 2]> {
        let plain = StrongKey::new(vk)?;
        plain.table.made.set(None).ok().expect("never made");
        let tabled = StrongKey::new(vk)?;
        tabled.table.checks.store(1, Ordering::Relaxed);
        let _guard = ALLOWANCE.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(tabled.table().is_some() && tabled.has_table() && !plain.has_table());
        Some([plain, tabled])
    }

    #[test]
    fn the_same_verdict_as_verify_strict() {
        let msg = b"approve p-1";
        let sk = SigningKey::from_bytes(&[7; 32]);
        let good = sk.sign(msg);
        for strong in both_ways(sk.verifying_key()).unwrap() {
            assert!(strong.verify_strict(msg, &good).is_ok());
            assert!(strong.verify_strict(b"approve p-2", &good).is_err());
        }

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
                let Some(keys) = both_ways(vk) else { continue };
                for (sa, sr) in [(a, r), (a, Scalar::ZERO)] {
                    let sig = forge(&sa, &key, &sr, t, msg);
                    let expect = vk.verify_strict(msg, &sig).is_ok();
                    for strong in &keys {
                        assert_eq!(
                            strong.verify_strict(msg, &sig).is_ok(),
                            expect,
                            "torsion {i}, r = 0: {}, table: {}",
                            sr == Scalar::ZERO,
                            strong.has_table()
                        );
                    }
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
            for strong in both_ways(vk).unwrap() {
                assert!(strong.verify_strict(msg, &sig).is_err());
            }
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
            for strong in both_ways(sk.verifying_key()).unwrap() {
                assert!(strong.verify_strict(msg, &sig).is_err());
            }
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
            let vk = sk.verifying_key();
            let keys = both_ways(vk).unwrap();
            let msg: Vec<u8> = (0..(seed as usize * 97)).map(|i| (i * 31 + seed as usize) as u8).collect();
            let sig = sk.sign(&msg);
            for (strong, bit) in keys.iter().flat_map(|k| (0..512).step_by(7).map(move |bit| (k, bit))) {
                assert!(strong.verify_strict(&msg, &sig).is_ok());
                let mut bytes = sig.to_bytes();
                bytes[bit / 8] ^= 1 << (bit % 8);
                let altered = Signature::from_bytes(&bytes);
                assert_eq!(strong.verify_strict(&msg, &altered).is_ok(), vk.verify_strict(&msg, &altered).is_ok());
                assert!(strong.verify_strict(&msg, &altered).is_err(), "bit {bit}, table: {}", strong.has_table());
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
            for strong in &keys {
                assert!(strong.verify_strict(&msg, &non_canonical).is_err());
            }
        }
    }

    /// Checked together, each signature gets the verdict it gets alone and
    /// `verify_strict` gives it, wherever it stands among the others —
    /// including next to ones refused before any arithmetic (`R` of small
    /// order, `S` not canonical), which have no recomputed `R` to compress.
    #[test]
    fn several_checked_together_get_each_its_own_verdict() {
        let a = Scalar::from_bytes_mod_order([3; 32]);
        let key = ED25519_BASEPOINT_POINT * a;
        let mixed = key + EIGHT_TORSION[3];
        let r = Scalar::from_bytes_mod_order([5; 32]);
        let msg = &b"approve p-1"[..];
        let sk = SigningKey::from_bytes(&[7; 32]);
        let good = sk.sign(msg);
        let mut flipped = good.to_bytes();
        flipped[40] ^= 4;
        let mut small_r = good.to_bytes();
        small_r[..32].copy_from_slice(EIGHT_TORSION[2].compress().as_bytes());
        let mut big_s = good.to_bytes();
        big_s[63] |= 0xf0;
        let honest = sk.verifying_key();
        let (vk_a, vk_mixed) = (
            VerifyingKey::from_bytes(&key.compress().to_bytes()).unwrap(),
            VerifyingKey::from_bytes(&mixed.compress().to_bytes()).unwrap(),
        );
        let cases: Vec<(VerifyingKey, &[u8], Signature)> = vec![
            (honest, msg, good),
            (honest, msg, Signature::from_bytes(&flipped)),
            (honest, msg, Signature::from_bytes(&small_r)),
            (honest, b"approve p-2", good),
            (honest, msg, Signature::from_bytes(&big_s)),
            (vk_a, msg, forge(&a, &key, &r, &EIGHT_TORSION[0], msg)),
            (vk_a, msg, forge(&a, &key, &r, &EIGHT_TORSION[5], msg)),
            (vk_mixed, msg, forge(&a, &mixed, &r, &EIGHT_TORSION[0], msg)),
            (vk_mixed, msg, forge(&a, &mixed, &r, &EIGHT_TORSION[1], msg)),
            (honest, msg, good),
        ];
        let expected: Vec<bool> = cases.iter().map(|(vk, m, sig)| vk.verify_strict(m, sig).is_ok()).collect();
        assert!(expected.iter().filter(|ok| **ok).count() >= 3, "some pass: {expected:?}");
        assert!(expected.iter().filter(|ok| !**ok).count() >= 5, "some fail: {expected:?}");
        // Half the keys check with a table, half without, taking turns.
        let strong: Vec<StrongKey> =
            cases.iter().enumerate().map(|(i, (vk, _, _))| both_ways(*vk).unwrap()[i % 2].clone()).collect();
        for shift in 0..cases.len() {
            let order: Vec<usize> = (0..cases.len()).map(|i| (i + shift) % cases.len()).collect();
            let checks: Vec<(&StrongKey, &[u8], &Signature)> =
                order.iter().map(|&i| (&strong[i], cases[i].1, &cases[i].2)).collect();
            let together: Vec<bool> = verify_strict_many(&checks).iter().map(Result::is_ok).collect();
            let want: Vec<bool> = order.iter().map(|&i| expected[i]).collect();
            assert_eq!(together, want, "rotated by {shift}");
            for &i in &order {
                assert_eq!(strong[i].verify_strict(cases[i].1, &cases[i].2).is_ok(), expected[i], "case {i} alone");
            }
            // Through the memory: the same verdicts, the passes remembered,
            // and asked again (now from memory for those) the same again.
            let memo = VerifiedSignatures::default();
            let first: Vec<bool> = memo.check_ed25519(&checks).iter().map(Result::is_ok).collect();
            assert_eq!(first, want);
            assert_eq!(memo.len(), 2, "the two distinct passes are remembered");
            let again: Vec<bool> = memo.check_ed25519(&checks).iter().map(Result::is_ok).collect();
            assert_eq!(again, want);
        }
        assert!(verify_strict_many(&[]).is_empty());
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

    /// A key gets its table at its second check, shared by its clones; no
    /// more than `MAX_TABLES` are held at once, a key past that checks
    /// without one and gets the same verdicts, and a table dropped makes
    /// room for another.
    #[test]
    fn tables_are_made_at_the_second_check_and_no_more_than_allowed() {
        let _all = ALLOWANCE.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let msg = b"approve p-1";
        let signer = |i: u32| {
            let mut seed = [1u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            SigningKey::from_bytes(&seed)
        };
        let first = signer(0);
        let key = StrongKey::new(first.verifying_key()).unwrap();
        let clone = key.clone();
        let good = first.sign(msg);
        assert!(key.verify_strict(msg, &good).is_ok());
        assert!(!key.has_table(), "none at the first check");
        assert!(clone.verify_strict(msg, &good).is_ok());
        assert!(key.has_table() && clone.has_table(), "made at the second, by either clone");
        let mut held = vec![key];
        let refused = (1..=StrongKey::MAX_TABLES as u32 + 1)
            .find_map(|i| {
                let sk = signer(i);
                let key = StrongKey::new(sk.verifying_key()).unwrap();
                let sig = sk.sign(msg);
                assert!(key.verify_strict(msg, &sig).is_ok() && key.verify_strict(msg, &sig).is_ok());
                if key.has_table() {
                    held.push(key);
                    None
                } else {
                    Some((key, sig))
                }
            })
            .expect("a key past the allowance gets no table");
        assert!(held.len() <= StrongKey::MAX_TABLES);
        assert!(TABLES.load(Ordering::Relaxed) <= StrongKey::MAX_TABLES);
        let (key, sig) = refused;
        assert!(key.verify_strict(msg, &sig).is_ok());
        assert!(key.verify_strict(b"approve p-2", &sig).is_err());
        assert!(!key.has_table(), "not made later either");
        drop(held);
        let sk = signer(1000);
        let key = StrongKey::new(sk.verifying_key()).unwrap();
        let sig = sk.sign(msg);
        assert!(key.verify_strict(msg, &sig).is_ok() && key.verify_strict(msg, &sig).is_ok());
        assert!(key.has_table(), "the dropped tables made room");
    }

    #[test]
    fn the_eight_encodings_are_distinct() {
        let mut e = small_order_encodings().to_vec();
        e.sort_unstable();
        e.dedup();
        assert_eq!(e.len(), 8);
    }
}
