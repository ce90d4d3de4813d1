//! Paths of the guest capsules, built by this crate's build script for
//! `wasm32-wasip2`. Tests use these instead of building guests themselves.

include!(concat!(env!("OUT_DIR"), "/programs.rs"));
