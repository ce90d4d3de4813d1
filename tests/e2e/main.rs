//! End-to-end tests: the real `edge-runner` binary, real capsules built for
//! wasm32-wasip2 by `test-programs`, real keys, real files.

mod approvals;
mod backup;
mod check;
mod cli;
mod console;
mod endpoints;
mod evidence;
mod examples;
mod handover;
mod harness;
mod hostile;
mod logs;
mod nats;
mod notify;
mod operate;
mod policy;
mod preview;
mod probes;
mod rotation;
mod server;
mod signatures;
mod sigstore;
mod spool;
mod trust;
mod webdriver;

/// Every guest program must be exercised by a test here.
#[test]
fn every_guest_program_has_a_test() {
    let sources: String = ["examples.rs", "hostile.rs", "policy.rs", "signatures.rs", "endpoints.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("{}/../tests/e2e/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap())
        .collect();
    for (name, _) in test_programs::ALL {
        let konst = name.to_uppercase().replace('-', "_");
        assert!(sources.contains(&format!("test_programs::{konst}")), "guest {name} has no end-to-end test");
    }
}
