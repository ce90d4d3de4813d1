//! # edge-runner
//!
//! The runner and its command line. Pure checks live in `edge-core`; this
//! crate adds the I/O at the edges: config and key files, the wasmtime
//! sandbox, staging/commit/rollback on the host filesystem, the evidence log
//! on disk, and the CLI.

pub mod attest;
pub mod backstage;
pub mod backup;
pub mod check;
pub mod cli;
pub mod config;
pub mod console;
pub mod events;
pub mod export;
pub mod governance;
pub mod identity;
pub mod init;
pub mod intake;
pub mod keys;
pub mod logging;
pub mod notify;
pub mod pipeline;
pub mod pki;
pub mod policy_files;
pub mod rotate;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod ssh_agent;
pub mod staging;
pub mod store;

/// The cores this process may use (1 if it cannot tell): what the defaults
/// that scale with the host start from.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
