//! RFC 6962 / RFC 9162 Merkle trees: roots, inclusion and consistency
//! proofs, and their verification (a port of transparency-dev/merkle's
//! `proof/verify.go`, checked against its published test vectors).
//!
//! Leaf hash = SHA-256(0x00 ‖ leaf); node hash = SHA-256(0x01 ‖ left ‖ right);
//! the root of the empty tree is SHA-256("").
//!
//! Decision on "consistency from the empty tree": every tree is trivially
//! consistent with the empty one, so a proof from size 0 proves nothing; it is
//! refused (as the published vectors expect) and the log never issues one — an
//! export `--since` an empty checkpoint simply carries no consistency proof.

use sha2::{Digest as _, Sha256};

pub type Hash = [u8; 32];

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    #[error("index {index} is beyond the tree size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("leaf hash has {0} bytes, expected 32")]
    LeafHashSize(usize),
    #[error("proof has {got} hashes, expected {want}")]
    WrongProofSize { got: usize, want: usize },
    #[error("the proof leads to a different root")]
    RootMismatch,
    #[error("size2 ({size2}) is smaller than size1 ({size1})")]
    SizesReversed { size1: u64, size2: u64 },
    #[error("sizes are equal but the proof is not empty")]
    NonEmptyProofForEqualSizes,
    #[error("a consistency proof from the empty tree proves nothing")]
    FromEmptyTree,
    #[error("empty consistency proof for different sizes")]
    EmptyProof,
}

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The root over leaf hashes (RFC 6962 MTH), in O(n) with a stack.
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return empty_root();
    }
    // Fold complete subtrees left to right; a stack entry is (height, hash).
    let mut stack: Vec<(u32, Hash)> = Vec::with_capacity(64);
    for leaf in leaves {
        let mut cur = (0u32, *leaf);
        while let Some(&(h, left)) = stack.last() {
            if h != cur.0 {
                break;
            }
            stack.pop();
            cur = (h + 1, node_hash(&left, &cur.1));
        }
        stack.push(cur);
    }
    // Merge the remaining (decreasing-height) subtrees right to left.
    let mut acc = stack.pop().expect("non-empty").1;
    while let Some((_, left)) = stack.pop() {
        acc = node_hash(&left, &acc);
    }
    acc
}

/// The right border of a growing tree: O(log n) per append, root in O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    /// Complete subtrees, left to right, strictly decreasing heights.
    stack: Vec<(u32, Hash)>,
    size: u64,
}

impl CompactRange {
    /// Append a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_reporting(leaf, |_, _, _| {});
    }

    /// Append a leaf hash, calling `completed(level, index, hash)` for every
    /// subtree it completes, from the leaf itself (level 0) upwards: what a
    /// store of [`Subtrees`] must add for this leaf.
    pub fn push_reporting(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let index = self.size;
        let mut cur = (0u32, leaf);
        completed(0, index, &leaf);
        while let Some(&(h, left)) = self.stack.last() {
            if h != cur.0 {
                break;
            }
            self.stack.pop();
            cur = (h + 1, node_hash(&left, &cur.1));
            completed(cur.0, index >> cur.0, &cur.1);
        }
        self.stack.push(cur);
        self.size += 1;
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut acc)) = it.next() else { return empty_root() };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }

    /// The subtree hashes (left to right) that summarise the tree so far.
    pub fn hashes(&self) -> Vec<Hash> {
        self.stack.iter().map(|(_, h)| *h).collect()
    }

    /// Rebuild a range for a tree of `size` from its subtree hashes (as
    /// [`CompactRange::hashes`] gives them). None if they do not fit the size.
    pub fn from_hashes(size: u64, hashes: &[Hash]) -> Option<Self> {
        let heights: Vec<u32> = border(size).map(|(level, _)| level).collect();
        if heights.len() != hashes.len() {
            return None;
        }
        Some(Self { stack: heights.into_iter().zip(hashes.iter().copied()).collect(), size })
    }
}

/// Where the complete, aligned subtree hashes of an append-only tree come
/// from: level 0 = the leaf hashes, level k = blocks of 2^k leaves. Roots,
/// inclusion and consistency proofs and compact ranges for any size so far
/// cost O(log² n) lookups ([`root_of`], [`inclusion_proof_of`],
/// [`consistency_proof_of`], [`compact_of`]) whether the hashes are in
/// memory ([`MerkleStore`]) or in a database (the runner's evidence store
/// keeps them in a table beside its records, so nothing at start or per run
/// grows with the log).
pub trait Subtrees {
    /// Why a hash could not be read.
    type Error;
    /// Leaves in the tree.
    fn tree_size(&self) -> u64;
    /// The hash of complete subtree `index` at `level` (leaves
    /// `index << level .. (index + 1) << level`); callers only ask for
    /// subtrees within [`Subtrees::tree_size`].
    ///
    /// # Errors
    /// If the source cannot produce it.
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// A size or index beyond the tree, or a hash the source could not give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError<E> {
    #[error("tree size {size} beyond {leaves} leaves")]
    Beyond { size: u64, leaves: u64 },
    #[error(transparent)]
    Source(E),
}

fn largest_power_of_two_below_u64(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[a:b]) for `a < b <= leaves`.
fn range_of<S: Subtrees + ?Sized>(s: &S, a: u64, b: u64) -> Result<Hash, S::Error> {
    let n = b - a;
    if n.is_power_of_two() && a.is_multiple_of(n) {
        let k = n.trailing_zeros();
        return s.subtree(k, a >> k);
    }
    let k = largest_power_of_two_below_u64(n);
    Ok(node_hash(&range_of(s, a, a + k)?, &range_of(s, a + k, b)?))
}

fn within<S: Subtrees + ?Sized>(s: &S, size: u64) -> Result<(), TreeError<S::Error>> {
    let leaves = s.tree_size();
    if size > leaves { Err(TreeError::Beyond { size, leaves }) } else { Ok(()) }
}

/// The root of the first `size` leaves.
///
/// # Errors
/// If `size` is beyond the tree or a hash cannot be read.
pub fn root_of<S: Subtrees + ?Sized>(s: &S, size: u64) -> Result<Hash, TreeError<S::Error>> {
    within(s, size)?;
    if size == 0 { Ok(empty_root()) } else { range_of(s, 0, size).map_err(TreeError::Source) }
}

/// RFC 6962 `PATH(index, D[0:size])`.
///
/// # Errors
/// If `index >= size`, `size` is beyond the tree, or a hash cannot be read.
pub fn inclusion_proof_of<S: Subtrees + ?Sized>(
    s: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError<S::Error>> {
    fn path<S: Subtrees + ?Sized>(s: &S, m: u64, a: u64, b: u64, out: &mut Vec<Hash>) -> Result<(), S::Error> {
        if b - a <= 1 {
            return Ok(());
        }
        let k = largest_power_of_two_below_u64(b - a);
        if m < a + k {
            path(s, m, a, a + k, out)?;
            out.push(range_of(s, a + k, b)?);
        } else {
            path(s, m, a + k, b, out)?;
            out.push(range_of(s, a, a + k)?);
        }
        Ok(())
    }
    within(s, size)?;
    if index >= size {
        return Err(TreeError::Beyond { size: index + 1, leaves: size });
    }
    let mut out = Vec::new();
    path(s, index, 0, size, &mut out).map_err(TreeError::Source)?;
    Ok(out)
}

/// RFC 6962 `PROOF(m, D[0:size])`.
///
/// # Errors
/// If `size` is beyond the tree or a hash cannot be read.
pub fn consistency_proof_of<S: Subtrees + ?Sized>(s: &S, m: u64, size: u64) -> Result<Vec<Hash>, TreeError<S::Error>> {
    fn sub<S: Subtrees + ?Sized>(
        s: &S,
        m: u64,
        a: u64,
        b: u64,
        complete: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), S::Error> {
        if m == b {
            if !complete {
                out.push(range_of(s, a, b)?);
            }
            return Ok(());
        }
        let k = largest_power_of_two_below_u64(b - a);
        if m <= a + k {
            sub(s, m, a, a + k, complete, out)?;
            out.push(range_of(s, a + k, b)?);
        } else {
            sub(s, m, a + k, b, false, out)?;
            out.push(range_of(s, a, a + k)?);
        }
        Ok(())
    }
    within(s, size)?;
    let mut out = Vec::new();
    if m > 0 && m < size {
        sub(s, m, 0, size, true, &mut out).map_err(TreeError::Source)?;
    }
    Ok(out)
}

/// The compact range (right border) of the first `size` leaves.
///
/// # Errors
/// If `size` is beyond the tree or a hash cannot be read.
pub fn compact_of<S: Subtrees + ?Sized>(s: &S, size: u64) -> Result<CompactRange, TreeError<S::Error>> {
    within(s, size)?;
    let hashes = border(size)
        .map(|(level, index)| s.subtree(level, index))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TreeError::Source)?;
    Ok(CompactRange::from_hashes(size, &hashes).expect("one hash per set bit"))
}

/// Where the complete subtrees of the first `size` leaves' compact range
/// are, left to right: (level, index), one per set bit of `size` (the
/// subtrees [`CompactRange::hashes`] gives the hashes of).
pub fn border(size: u64) -> impl Iterator<Item = (u32, u64)> {
    let mut offset = 0u64;
    (0..64u32).rev().filter(move |k| size & (1 << k) != 0).map(move |k| {
        let at = (k, offset >> k);
        offset += 1 << k;
        at
    })
}

/// Every complete, aligned subtree hash of an append-only tree, in memory
/// (~2n hashes): the [`Subtrees`] the offline tools build from a log's
/// records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleStore {
    levels: Vec<Vec<Hash>>,
}

impl Subtrees for MerkleStore {
    type Error = std::convert::Infallible;
    fn tree_size(&self) -> u64 {
        self.size() as u64
    }
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        Ok(self.levels[level as usize][index as usize])
    }
}

fn infallible<T>(r: Result<T, TreeError<std::convert::Infallible>>) -> T {
    match r {
        Ok(v) => v,
        Err(TreeError::Beyond { size, leaves }) => panic!("tree size {size} beyond {leaves} leaves"),
        Err(TreeError::Source(e)) => match e {},
    }
}

impl MerkleStore {
    /// Append a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut k = 0;
        loop {
            if self.levels.len() == k {
                self.levels.push(Vec::new());
            }
            let level = &mut self.levels[k];
            level.push(h);
            let n = level.len();
            if !n.is_multiple_of(2) {
                return;
            }
            h = node_hash(&level[n - 2], &level[n - 1]);
            k += 1;
        }
    }

    /// Number of leaves.
    pub fn size(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// The leaf hashes.
    pub fn leaves(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// The root of the first `size` leaves.
    ///
    /// # Panics
    /// If `size` exceeds the number of leaves.
    pub fn root(&self, size: usize) -> Hash {
        infallible(root_of(self, size as u64))
    }

    /// RFC 6962 `PATH(index, D[0:size])`.
    ///
    /// # Panics
    /// If `index >= size` or `size` exceeds the number of leaves.
    pub fn inclusion_proof(&self, index: usize, size: usize) -> Vec<Hash> {
        infallible(inclusion_proof_of(self, index as u64, size as u64))
    }

    /// RFC 6962 `PROOF(m, D[0:size])`.
    ///
    /// # Panics
    /// If `size` exceeds the number of leaves.
    pub fn consistency_proof(&self, m: usize, size: usize) -> Vec<Hash> {
        infallible(consistency_proof_of(self, m as u64, size as u64))
    }

    /// The compact range (right border) of the first `size` leaves.
    ///
    /// # Panics
    /// If `size` exceeds the number of leaves.
    pub fn compact(&self, size: usize) -> CompactRange {
        infallible(compact_of(self, size as u64))
    }
}

fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// RFC 6962 PATH(index, leaves): the inclusion proof of one leaf.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    fn path(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
        let n = leaves.len();
        if n <= 1 {
            return;
        }
        let k = largest_power_of_two_below(n);
        if m < k {
            path(&leaves[..k], m, out);
            out.push(root(&leaves[k..]));
        } else {
            path(&leaves[k..], m - k, out);
            out.push(root(&leaves[..k]));
        }
    }
    let mut out = Vec::new();
    path(leaves, index, &mut out);
    out
}

/// RFC 6962 PROOF(m, leaves): the consistency proof from the first `m` leaves.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    fn sub(leaves: &[Hash], m: usize, complete: bool, out: &mut Vec<Hash>) {
        let n = leaves.len();
        if m == n {
            if !complete {
                out.push(root(leaves));
            }
            return;
        }
        let k = largest_power_of_two_below(n);
        if m <= k {
            sub(&leaves[..k], m, complete, out);
            out.push(root(&leaves[k..]));
        } else {
            sub(&leaves[k..], m - k, false, out);
            out.push(root(&leaves[..k]));
        }
    }
    let mut out = Vec::new();
    if m > 0 && m < leaves.len() {
        sub(leaves, m, true, &mut out);
    }
    out
}

fn inner_proof_size(index: u64, size: u64) -> usize {
    (64 - (index ^ (size - 1)).leading_zeros()) as usize
}

fn decomp_incl_proof(index: u64, size: u64) -> (usize, usize) {
    let inner = inner_proof_size(index, size);
    let border = (index >> inner).count_ones() as usize;
    (inner, border)
}

fn chain_inner(mut seed: Hash, proof: &[Vec<u8>], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        seed = if (index >> i) & 1 == 0 { node_hash(&seed, h) } else { node_hash(h, &seed) };
    }
    seed
}

fn chain_inner_right(mut seed: Hash, proof: &[Vec<u8>], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        if (index >> i) & 1 == 1 {
            seed = node_hash(h, &seed);
        }
    }
    seed
}

fn chain_border_right(mut seed: Hash, proof: &[Vec<u8>]) -> Hash {
    for h in proof {
        seed = node_hash(h, &seed);
    }
    seed
}

/// The root an inclusion proof leads to.
///
/// # Errors
/// Index beyond size, wrong leaf-hash length, wrong proof length.
pub fn root_from_inclusion_proof(index: u64, size: u64, leaf: &[u8], proof: &[Vec<u8>]) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size });
    }
    let leaf: Hash = leaf.try_into().map_err(|_| ProofError::LeafHashSize(leaf.len()))?;
    let (inner, border) = decomp_incl_proof(index, size);
    if proof.len() != inner + border {
        return Err(ProofError::WrongProofSize { got: proof.len(), want: inner + border });
    }
    let r = chain_inner(leaf, &proof[..inner], index);
    Ok(chain_border_right(r, &proof[inner..]))
}

/// Verify that `leaf` (a leaf hash) is at `index` in the tree of `size` with `root`.
///
/// # Errors
/// See [`ProofError`].
pub fn verify_inclusion(index: u64, size: u64, leaf: &[u8], proof: &[Vec<u8>], root: &[u8]) -> Result<(), ProofError> {
    let got = root_from_inclusion_proof(index, size, leaf, proof)?;
    if got.as_slice() != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verify that the tree of `size2` with `root2` extends the tree of `size1` with `root1`.
///
/// # Errors
/// See [`ProofError`].
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Vec<u8>],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::SizesReversed { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::FromEmptyTree);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::NonEmptyProofForEqualSizes);
        }
        return if root1 == root2 { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    if proof.is_empty() {
        return Err(ProofError::EmptyProof);
    }
    let (mut inner, border) = decomp_incl_proof(size1 - 1, size2);
    let shift = size1.trailing_zeros() as usize;
    inner -= shift;
    let (seed, start): (Vec<u8>, usize) =
        if size1 == 1u64 << shift { (root1.to_vec(), 0) } else { (proof[0].clone(), 1) };
    if proof.len() != start + inner + border {
        return Err(ProofError::WrongProofSize { got: proof.len(), want: start + inner + border });
    }
    let seed: Hash = seed.as_slice().try_into().map_err(|_| ProofError::RootMismatch)?;
    let proof = &proof[start..];
    let mask = (size1 - 1) >> shift;
    let h1 = chain_border_right(chain_inner_right(seed, &proof[..inner], mask), &proof[inner..]);
    if h1.as_slice() != root1 {
        return Err(ProofError::RootMismatch);
    }
    let h2 = chain_border_right(chain_inner(seed, &proof[..inner], mask), &proof[inner..]);
    if h2.as_slice() != root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use proptest::prelude::*;

    use super::*;

    fn vectors(kind: &str) -> Vec<(String, serde_json::Value)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<(String, serde_json::Value)>) {
            let entries = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("the published vectors must exist at {}: {e}", dir.display()));
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "json") {
                    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                    out.push((p.display().to_string(), v));
                }
            }
        }
        let dir = format!("{}/../../shared/vectors/merkle/{kind}", env!("CARGO_MANIFEST_DIR"));
        let mut out = Vec::new();
        walk(std::path::Path::new(&dir), &mut out);
        assert!(out.len() > 20, "too few vectors in {dir}");
        out
    }

    fn b64(v: &serde_json::Value) -> Vec<u8> {
        if v.is_null() { Vec::new() } else { B64.decode(v.as_str().unwrap()).unwrap() }
    }

    fn proof(v: &serde_json::Value) -> Vec<Vec<u8>> {
        v.as_array().map(|a| a.iter().map(b64).collect()).unwrap_or_default()
    }

    #[test]
    fn every_published_inclusion_vector() {
        for (name, v) in vectors("inclusion") {
            let r = verify_inclusion(
                v["leafIdx"].as_u64().unwrap(),
                v["treeSize"].as_u64().unwrap(),
                &b64(&v["leafHash"]),
                &proof(&v["proof"]),
                &b64(&v["root"]),
            );
            assert_eq!(r.is_err(), v["wantErr"].as_bool().unwrap(), "{name}: {r:?}");
        }
    }

    #[test]
    fn every_published_consistency_vector() {
        for (name, v) in vectors("consistency") {
            let r = verify_consistency(
                v["size1"].as_u64().unwrap(),
                v["size2"].as_u64().unwrap(),
                &proof(&v["proof"]),
                &b64(&v["root1"]),
                &b64(&v["root2"]),
            );
            assert_eq!(r.is_err(), v["wantErr"].as_bool().unwrap(), "{name}: {r:?}");
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("leaf {i}").as_bytes())).collect()
    }

    fn recursive_root(l: &[Hash]) -> Hash {
        match l.len() {
            0 => empty_root(),
            1 => l[0],
            n => {
                let k = largest_power_of_two_below(n);
                node_hash(&recursive_root(&l[..k]), &recursive_root(&l[k..]))
            }
        }
    }

    proptest! {
        /// append → prove → verify round trips, and the iterative root equals the definition.
        #[test]
        fn proofs_round_trip(n in 1usize..70, a in 0usize..70, b in 0usize..70) {
            let l = leaves(n);
            prop_assert_eq!(root(&l), recursive_root(&l));
            let mut range = CompactRange::default();
            for (i, leaf) in l.iter().enumerate() {
                range.push(*leaf);
                prop_assert_eq!(range.root(), root(&l[..=i]));
            }
            let again = CompactRange::from_hashes(n as u64, &range.hashes()).unwrap();
            prop_assert_eq!(again.root(), root(&l));
            let i = a % n;
            let p: Vec<Vec<u8>> = inclusion_proof(&l, i).into_iter().map(|h| h.to_vec()).collect();
            prop_assert!(verify_inclusion(i as u64, n as u64, &l[i], &p, &root(&l)).is_ok());
            if i + 1 < n {
                prop_assert!(verify_inclusion(i as u64 + 1, n as u64, &l[i], &p, &root(&l)).is_err());
            }
            let m = 1 + b % n;
            let c: Vec<Vec<u8>> = consistency_proof(&l, m).into_iter().map(|h| h.to_vec()).collect();
            prop_assert!(verify_consistency(m as u64, n as u64, &c, &root(&l[..m]), &root(&l)).is_ok());
            if m < n {
                let mut other = l.clone();
                other[0] = leaf_hash(b"rewritten history");
                prop_assert!(verify_consistency(m as u64, n as u64, &c, &root(&other[..m]), &root(&l)).is_err());
            }
        }

        /// The stored tree answers exactly what the slice definitions do, for
        /// every prefix size of a tree that kept growing.
        #[test]
        fn the_stored_tree_matches_the_definitions(n in 1usize..140, a in 0usize..140, b in 0usize..140) {
            let l = leaves(n);
            let mut store = MerkleStore::default();
            for leaf in &l {
                store.push(*leaf);
            }
            prop_assert_eq!(store.leaves(), &l[..]);
            let size = 1 + a % n;
            let prefix = &l[..size];
            prop_assert_eq!(store.root(size), root(prefix));
            prop_assert_eq!(store.root(0), empty_root());
            prop_assert_eq!(store.compact(size), {
                let mut r = CompactRange::default();
                for leaf in prefix { r.push(*leaf); }
                r
            });
            for i in 0..size {
                prop_assert_eq!(store.inclusion_proof(i, size), inclusion_proof(prefix, i));
            }
            let m = b % (size + 1);
            prop_assert_eq!(store.consistency_proof(m, size), consistency_proof(prefix, m));
        }

        /// A compact range reports exactly the subtrees a store of them
        /// needs, each once, as the leaves arrive: a tree persisted from
        /// those reports is the tree.
        #[test]
        fn a_growing_range_reports_every_complete_subtree_once(n in 1usize..140) {
            let l = leaves(n);
            let mut store = MerkleStore::default();
            let mut range = CompactRange::default();
            let mut reported = std::collections::BTreeMap::new();
            for leaf in &l {
                store.push(*leaf);
                range.push_reporting(*leaf, |level, index, hash| {
                    assert!(reported.insert((level, index), *hash).is_none(), "({level}, {index}) twice");
                });
            }
            let mut expected = std::collections::BTreeMap::new();
            for level in 0..8u32 {
                for index in 0..(n as u64 >> level) {
                    expected.insert((level, index), store.subtree(level, index).unwrap());
                }
            }
            prop_assert_eq!(reported, expected);
        }
    }
}
