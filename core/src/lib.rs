//! # edge-core: Edge Runner's pure checks
//!
//! Everything a reviewer must be able to audit and rebuild alone lives here:
//! the capsule manifest and file format, signature verification, grants,
//! plans and diffs, and evidence records. This crate does no I/O of its own:
//! functions take bytes, keys and configuration and return values or errors.
//! It depends on no WebAssembly runtime, async runtime or network client.
//!
//! ```text
//!  .capsule bytes ─► container::CapsuleFile::parse      (manifest pins component)
//!                 ─► signature::verify_capsule          → VerifiedCapsule
//!                 ─► admission::admit(imports, ceiling) → Admitted (+ Grant)
//!                 ─► authorize::authorize(decision)     → Authorized ──► sandbox
//!  guest plan     ─► plan::Plan::validate               → ValidPlan (digest)
//!  staged diff    ─► plan::check_diff / check_preconditions → commit allowed
//!  every step     ─► evidence::Record (hash-chained)
//! ```
//!
//! Each stage's checks return a *proof value* (`VerifiedCapsule`, `Admitted`,
//! `Authorized`, `ValidPlan`, `DiffMatchesPlan`, `PreconditionsHold`) that only
//! this crate can construct, so the runner cannot act without passing them.
//! Every error type maps to a stable `reason_code()` recorded in evidence.

pub mod admission;
pub mod approval;
pub mod authorize;
pub mod bounded;
pub mod calls;
pub mod canonical;
mod canonical_direct;
mod comb;
pub mod container;
pub mod digest;
pub mod dsse;
pub mod evidence;
pub mod graph;
pub mod lifecycle;
pub mod manifest;
pub mod merkle;
pub mod note;
pub mod outbound;
pub mod paths;
pub mod plan;
pub mod policy;
pub mod preview;
pub mod rotation;
pub mod signature;
pub mod snapshot;
pub mod strict;
pub mod text;
pub mod webhook;

pub use digest::Sha256Digest;
