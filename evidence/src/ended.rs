//! The runs a full verification has seen end, by a keyed 128-bit hash of
//! their id (`runs::RunStream`): one per run of the bundle, so what this
//! holds grows with the log, and is kept small.
//!
//! A `HashSet<u128>` of a million runs held 36 MB (its capacity is the next
//! power of two above 8/7 of its entries, 17 bytes a slot) and 53 MB while
//! it grew (old and new tables at once). Here: 256 open-addressing tables
//! of bare hashes, chosen by a hash's top byte, each grown by half when it
//! is 7/8 full — 16 bytes a slot, 58–88% full, ~22 bytes a run — and a
//! growth holds only that one table twice. The hashes are keyed and
//! uniform, so they are their own position: nothing is hashed again.

/// Tables, by a hash's top byte.
const SHARDS: usize = 256;

/// A set of keyed 128-bit hashes. Zero marks an empty slot, so the hash
/// zero is stored as one (two ids then share a hash with probability
/// 2⁻¹²⁷ more than otherwise; a shared hash makes a run look ended).
#[derive(Debug)]
pub(crate) struct EndedRuns {
    shards: Vec<Shard>,
}

#[derive(Debug, Default, Clone)]
struct Shard {
    slots: Vec<u128>,
    len: usize,
}

impl Default for EndedRuns {
    fn default() -> Self {
        Self { shards: vec![Shard::default(); SHARDS] }
    }
}

impl EndedRuns {
    /// Add `hash`; false if it was there.
    pub fn insert(&mut self, hash: u128) -> bool {
        let hash = hash.max(1);
        let shard = &mut self.shards[(hash >> 120) as usize];
        if (shard.len + 1) * 8 > shard.slots.len() * 7 {
            shard.grow();
        }
        let at = shard.find(hash);
        if shard.slots[at] == hash {
            return false;
        }
        shard.slots[at] = hash;
        shard.len += 1;
        true
    }

    /// Whether `hash` was added.
    pub fn contains(&self, hash: u128) -> bool {
        let hash = hash.max(1);
        let shard = &self.shards[(hash >> 120) as usize];
        !shard.slots.is_empty() && shard.slots[shard.find(hash)] == hash
    }
}

impl Shard {
    /// The slot holding `hash`, or the empty one where it would go
    /// (linear probing from the slot the hash's low bits name; a table is
    /// never full, so the probe ends).
    fn find(&self, hash: u128) -> usize {
        let n = self.slots.len();
        // The low 64 bits scaled to the table (no division).
        let mut at = ((u128::from(hash as u64) * n as u128) >> 64) as usize;
        loop {
            let s = self.slots[at];
            if s == hash || s == 0 {
                return at;
            }
            at = if at + 1 == n { 0 } else { at + 1 };
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() + self.slots.len() / 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        for hash in old.into_iter().filter(|&h| h != 0) {
            let at = self.find(hash);
            self.slots[at] = hash;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// Exactly what a `HashSet` answers, across growths of every table,
    /// with hashes crowded into one table and its wrap-around, and zero.
    #[test]
    fn answers_as_a_hash_set_does() {
        let mut set = EndedRuns::default();
        let mut model = HashSet::new();
        let mut x = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834_u128;
        for i in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // One in four in table 0x7f, low bits near the top (wrap-around).
            let h = if i % 4 == 0 { (0x7f << 120) | (u128::MAX >> 8 & !0xffff_u128) | u128::from(i & 0xff) } else { x };
            assert_eq!(set.insert(h), model.insert(h.max(1)), "insert {h:#x}");
            if i % 3 == 0 {
                let probe = x.rotate_left(i);
                assert_eq!(set.contains(probe), model.contains(&probe.max(1)), "probe {probe:#x}");
            }
        }
        assert!(model.iter().all(|&h| set.contains(h)));
        assert!(!set.contains(2) && set.insert(0) && set.contains(1) && !set.insert(1));
        // No table over 7/8 full, none under half full once grown.
        for s in set.shards.iter().filter(|s| s.slots.len() > 16) {
            assert!(s.len * 8 <= s.slots.len() * 7 && s.len * 2 >= s.slots.len(), "{} of {}", s.len, s.slots.len());
        }
    }

    proptest! {
        #[test]
        fn any_sequence_of_inserts_and_lookups(ops in proptest::collection::vec((any::<bool>(), 0u128..64, any::<u8>()), 0..600)) {
            let mut set = EndedRuns::default();
            let mut model = HashSet::new();
            for (insert, low, table) in ops {
                // Few tables and few positions: probes collide and wrap.
                let h = (u128::from(table % 3) << 120) | (low << 60);
                if insert {
                    prop_assert_eq!(set.insert(h), model.insert(h.max(1)));
                } else {
                    prop_assert_eq!(set.contains(h), model.contains(&h.max(1)));
                }
            }
        }
    }
}
