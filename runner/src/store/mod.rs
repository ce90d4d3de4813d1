//! The runner's state directory: the evidence log (`log`) and its schema
//! version (`schema`), its Merkle tree on disk (`tree`), the fold kept in it (`fold`), the fold of it the runner works from (`index`), the
//! check of the store against what the runner signed (`trust`) and
//! file-system helpers (`fs`).

pub mod check;
pub mod fold;
pub mod fs;
pub mod index;
pub mod log;
pub mod schema;
pub mod tree;
pub mod trust;
