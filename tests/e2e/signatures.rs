//! Nothing runs without a valid signature from a trusted signer.

use edge_core::container::CapsuleFile;

use crate::harness::Env;
use crate::hostile::assert_refused;

fn benign_manifest() -> String {
    Env::hostile_manifest("none", "")
}

#[test]
fn a_tampered_component_byte_is_refused() {
    let env = Env::new();
    let capsule = env.capsule("c", test_programs::HOSTILE, &benign_manifest(), Some("agent"));
    let mut bytes = std::fs::read(&capsule).unwrap();
    // Flip one byte well inside component.wasm (the second tar entry).
    let wasm = std::fs::read(test_programs::HOSTILE).unwrap();
    let start = bytes.windows(64).position(|w| w == &wasm[..64]).expect("component in archive");
    bytes[start + wasm.len() / 2] ^= 0x01;
    std::fs::write(&capsule, bytes).unwrap();
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "capsule.component_mismatch", &before);
    assert!(run.detail().contains("altered after packing"), "{}", run.detail());
}

#[test]
fn a_tampered_manifest_is_refused() {
    let env = Env::new();
    let capsule = env.capsule("c", test_programs::HOSTILE, &benign_manifest(), Some("agent"));
    let file = CapsuleFile::parse(&std::fs::read(&capsule).unwrap()).unwrap();
    // Change a parameter, keep everything canonical, keep the old signature.
    let mut m = file.manifest().clone();
    m.params.insert("attack".into(), "write-dotdot".into());
    let bundle = file.bundle().unwrap().to_vec();
    let tampered = CapsuleFile::new(m, file.component().to_vec()).unwrap().with_bundle(bundle);
    std::fs::write(&capsule, tampered.to_bytes()).unwrap();
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "signature.subject_mismatch", &before);
    assert!(run.detail().contains("manifest was changed after signing"), "{}", run.detail());
}

#[test]
fn an_unsigned_capsule_is_refused() {
    let env = Env::new();
    let capsule = env.capsule("c", test_programs::HOSTILE, &benign_manifest(), None);
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "signature.missing", &before);
    assert!(run.detail().contains("edge-runner capsule sign"), "names the next step: {}", run.detail());
}

#[test]
fn a_capsule_signed_by_an_untrusted_key_is_refused() {
    let env = Env::new();
    let capsule = env.capsule("c", test_programs::HOSTILE, &benign_manifest(), Some("other"));
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "signature.untrusted_signer", &before);
}

#[test]
fn garbage_is_refused_as_malformed() {
    let env = Env::new();
    std::fs::write(env.path("junk.capsule"), b"definitely not a capsule").unwrap();
    let before = env.host_files();
    let run = env.exec(&env.path("junk.capsule"));
    assert_refused(&env, &run, "capsule.malformed", &before);
}

#[test]
fn capsule_verify_and_inspect_report_the_signer_and_imports() {
    let env = Env::new();
    let capsule = env.capsule("c", test_programs::HOSTILE, &benign_manifest(), Some("agent"));
    let ok = env.cli(&["capsule", "verify", capsule.to_str().unwrap(), "--key", "keys/agent.pub"]).success();
    assert!(ok.stdout().contains("verified"), "{}", ok.stdout());
    let bad = env.cli(&["capsule", "verify", capsule.to_str().unwrap(), "--key", "keys/other.pub"]);
    assert_eq!(bad.code(), 3);
    assert!(bad.stdout().contains("signature.untrusted_signer"), "{}", bad.stdout());
    let inspect = env.cli(&["capsule", "inspect", capsule.to_str().unwrap(), "--json"]).success();
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout()).unwrap();
    assert_eq!(v["manifest"]["name"], "hostile");
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| { i.as_str().unwrap().starts_with("wasi:filesystem/types@0.2.") })
    );
    assert_eq!(v["undeclared_imports"].as_array().unwrap().len(), 0);
}
