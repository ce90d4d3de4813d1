//! Build every guest crate for `wasm32-wasip2` with a nested cargo into
//! `target/guests`, and expose the `.wasm` paths as constants.
//!
//! The nested build uses its own target directory (so it does not wait on
//! the outer build's lock) and drops the outer build's wrappers and flags
//! (clippy-driver, coverage flags) that must not apply to guests.

use std::path::PathBuf;
use std::process::Command;

/// (crate name, constant name). Every guest must be listed here and have a test.
const GUESTS: &[(&str, &str)] = &[
    ("config-drift", "CONFIG_DRIFT"),
    ("cleanup", "CLEANUP"),
    ("cert-expiry", "CERT_EXPIRY"),
    ("hostile", "HOSTILE"),
    ("hostile-net", "HOSTILE_NET"),
    ("hostile-import", "HOSTILE_IMPORT"),
    ("hostile-http", "HOSTILE_HTTP"),
    ("etcd-drift", "ETCD_DRIFT"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let target_dir = root.join("target/guests");
    for dir in ["wit", "capsule-sdk", "examples/capsules", "tests/capsules"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    if std::env::var_os("CARGO_NET_OFFLINE").is_some_and(|v| v == "true") {
        cmd.arg("--offline");
    }
    for (name, _) in GUESTS {
        cmd.args(["-p", name]);
    }
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the guest capsules");
    if !status.success() {
        panic!(
            "building the guest capsules for wasm32-wasip2 failed (see above). \
             If the target is missing, run `rustup target add wasm32-wasip2`."
        );
    }
    let out_dir = target_dir.join("wasm32-wasip2/guest");
    let mut consts = String::new();
    let mut all = String::from("/// Every guest: (crate name, path).\npub const ALL: &[(&str, &str)] = &[\n");
    for (name, konst) in GUESTS {
        let file = out_dir.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(file.exists(), "guest {name} was not built at {}", file.display());
        consts.push_str(&format!(
            "/// `{name}` built for wasm32-wasip2.\npub const {konst}: &str = {:?};\n",
            file.display().to_string()
        ));
        all.push_str(&format!("    ({name:?}, {konst}),\n"));
    }
    all.push_str("];\n");
    consts.push_str(&format!("/// The workspace root.\npub const ROOT: &str = {:?};\n", root.display().to_string()));
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("programs.rs");
    std::fs::write(dest, consts + &all).unwrap();
}
