//! Fixed-base multiplication by a table of precomputed multiples, for the
//! signature checks of keys used again and again (`crate::strict`).
//!
//! `[s]P` for a scalar `s < ℓ < 2²⁵³` is written in signed radix-2ʷ digits
//! `s = Σ dᵢ·2ʷⁱ` with `-2ʷ⁻¹ ≤ dᵢ < 2ʷ⁻¹`, and summed from a table holding
//! `j·2ʷⁱ·P` for every window `i` and `1 ≤ j ≤ 2ʷ⁻¹` (a negative digit adds
//! the negated entry). That is one point addition per non-zero digit and no
//! doublings: ~37 additions for `w = 7`, ~24 for `w = 11`, against the ~256
//! doublings and ~70 additions of a double-base multiplication.
//!
//! The sum is the same integer multiple of `P` as curve25519-dalek's own
//! multiplications compute — for any point, torsion component included —
//! because the digits are an exact expansion of the scalar's integer value
//! (scalars are always reduced below `ℓ`). The additions are dalek's
//! (complete formulas). Variable time: for public scalars and points only.

use std::sync::OnceLock;

use curve5::constants::ED25519_BASEPOINT_POINT;
use curve5::edwards::EdwardsPoint;
use curve5::scalar::Scalar;

/// The bits the digits cover: a scalar's 253 and one for the last carry.
///
/// A scalar is below `ℓ < 2²⁵² + 2¹²⁵`, so from a bit `b > 125` on it holds
/// at most `2²⁵²⁻ᵇ`. The last window starts at `b ≥ 254 - w`, so its value
/// is at most `2ʷ⁻²`, plus one carried: below `2ʷ⁻¹` for `w ≥ 3`, a digit
/// that carries nothing out.
const DIGIT_BITS: u32 = 254;

/// A table of a point's multiples, `window` bits of scalar per addition.
pub(crate) struct Comb {
    window: u32,
    /// Window `i`'s entries `1·2ʷⁱ·P ..= 2ʷ⁻¹·2ʷⁱ·P`, window after window.
    multiples: Box<[EdwardsPoint]>,
}

impl Comb {
    /// The table for `point`: `⌈254/w⌉ · 2ʷ⁻¹` points of 160 bytes, made
    /// with as many additions.
    pub(crate) fn new(point: &EdwardsPoint, window: u32) -> Self {
        assert!((3..=12).contains(&window), "a window of 3 to 12 bits");
        let per_window = 1usize << (window - 1);
        let windows = DIGIT_BITS.div_ceil(window) as usize;
        let mut multiples = Vec::with_capacity(windows * per_window);
        let mut base = *point;
        for _ in 0..windows {
            let mut multiple = base;
            for _ in 0..per_window {
                multiples.push(multiple);
                multiple += base;
            }
            // The next window's base, 2ʷ times this one's: 2ʷ⁻¹·base is the
            // last entry pushed.
            base = multiples[multiples.len() - 1] + multiples[multiples.len() - 1];
        }
        Self { window, multiples: multiples.into_boxed_slice() }
    }

    /// `acc + [scalar]P`.
    pub(crate) fn add_multiple(&self, mut acc: EdwardsPoint, scalar: &Scalar) -> EdwardsPoint {
        let per_window = 1usize << (self.window - 1);
        for (i, digit) in signed_digits(scalar, self.window).enumerate() {
            let row = &self.multiples[i * per_window..][..per_window];
            match digit {
                0 => {}
                d if d > 0 => acc += row[d.unsigned_abs() as usize - 1],
                d => acc -= row[d.unsigned_abs() as usize - 1],
            }
        }
        acc
    }

    /// The table's size in bytes.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        std::mem::size_of_val::<[EdwardsPoint]>(&self.multiples)
    }
}

/// The base point's table (11-bit windows: 24 additions, 24,576 points,
/// 3.9 MB), made once per process, when first needed (~10 ms on this
/// machine, `benches/approval.rs`). Against 8-bit windows (32 additions,
/// 655 KB), a 3-of-5 quorum from nothing took ~9% less (2026-12-07).
pub(crate) fn basepoint() -> &'static Comb {
    static TABLE: OnceLock<Comb> = OnceLock::new();
    TABLE.get_or_init(|| Comb::new(&ED25519_BASEPOINT_POINT, 11))
}

/// `scalar`'s signed radix-2ʷ digits, least significant first: `⌈254/w⌉` of
/// them, each in `[-2ʷ⁻¹, 2ʷ⁻¹)`, with `Σ dᵢ·2ʷⁱ` the scalar's value.
/// A digit at or above `2ʷ⁻¹` is taken as `d - 2ʷ` and carries one into the
/// next window; the last carries nothing out ([`DIGIT_BITS`]).
fn signed_digits(scalar: &Scalar, window: u32) -> impl Iterator<Item = i32> {
    let bytes = scalar.to_bytes();
    debug_assert!(bytes[31] < 0x20, "a reduced scalar is below 2^253");
    let limbs: [u64; 4] = std::array::from_fn(|i| u64::from_le_bytes(bytes[8 * i..][..8].try_into().expect("8 bytes")));
    let bits_at = move |at: u32| -> u32 {
        // `window` bits from bit `at`, which may straddle two limbs.
        let (limb, shift) = ((at / 64) as usize, at % 64);
        let low = limbs[limb] >> shift;
        let high = if shift > 0 && limb + 1 < 4 { limbs[limb + 1] << (64 - shift) } else { 0 };
        ((low | high) & ((1u64 << window) - 1)) as u32
    };
    let half = 1i32 << (window - 1);
    let mut carry = 0;
    (0..DIGIT_BITS.div_ceil(window)).map(move |i| {
        let mut digit = bits_at(i * window) as i32 + carry;
        carry = i32::from(digit >= half);
        digit -= carry << window;
        digit
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve5::constants::EIGHT_TORSION;
    use curve5::traits::Identity;
    use proptest::prelude::*;

    /// Scalars at the edges of the digit expansion.
    fn edge_scalars() -> Vec<Scalar> {
        let ell_minus_one = -Scalar::ONE;
        let mut top = [0u8; 32];
        top[31] = 0x10; // 2^252, below ℓ
        let mut all_ones_low = [0xffu8; 32];
        all_ones_low[31] = 0x0f; // 2^252 - 1
        vec![
            Scalar::ZERO,
            Scalar::ONE,
            ell_minus_one,
            Scalar::from_canonical_bytes(top).unwrap(),
            Scalar::from_canonical_bytes(all_ones_low).unwrap(),
            Scalar::from(u64::MAX),
            Scalar::from(1u64 << 63),
        ]
    }

    /// A point with a torsion component, so that only the exact integer
    /// multiple (not one mod ℓ) gives dalek's answer.
    fn mixed_point(seed: u64) -> EdwardsPoint {
        EdwardsPoint::mul_base(&Scalar::from(seed.wrapping_mul(0x9e37_79b9) | 1)) + EIGHT_TORSION[(seed % 8) as usize]
    }

    #[test]
    fn digits_expand_the_scalar_exactly_for_every_window() {
        for window in 3..=12 {
            for s in edge_scalars() {
                let mut value = Scalar::ZERO;
                let mut weight = Scalar::ONE;
                let radix = Scalar::from(1u64 << window);
                let half = 1i32 << (window - 1);
                for d in signed_digits(&s, window) {
                    assert!((-half..half).contains(&d), "digit {d} for w={window}");
                    let magnitude = Scalar::from(d.unsigned_abs() as u64) * weight;
                    value += if d < 0 { -magnitude } else { magnitude };
                    weight *= radix;
                }
                assert_eq!(value, s, "w={window}");
            }
        }
    }

    #[test]
    fn multiples_equal_dalek_s_on_edge_scalars_and_torsion() {
        for window in [3, 5, 6, 7, 8, 11] {
            for seed in 0..8 {
                let point = mixed_point(seed);
                let comb = Comb::new(&point, window);
                for s in edge_scalars() {
                    assert_eq!(comb.add_multiple(EdwardsPoint::identity(), &s), s * point, "w={window} seed={seed}");
                }
            }
        }
        assert_eq!(basepoint().add_multiple(EdwardsPoint::identity(), &-Scalar::ONE), -ED25519_BASEPOINT_POINT);
        assert_eq!(basepoint().bytes(), 24 * 1024 * std::mem::size_of::<EdwardsPoint>());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn multiples_equal_dalek_s(wide in proptest::array::uniform32(any::<u8>()), seed: u64, window in 3u32..=8) {
            let s = Scalar::from_bytes_mod_order(wide);
            let point = mixed_point(seed);
            let comb = Comb::new(&point, window);
            prop_assert_eq!(comb.add_multiple(point, &s), point + s * point);
            prop_assert_eq!(basepoint().add_multiple(EdwardsPoint::identity(), &s), EdwardsPoint::mul_base(&s));
        }
    }
}
