//! The sigstore-conformance client protocol (`edge-runner sigstore
//! verify-bundle`), offline, against a real keyless bundle.

use crate::harness::Env;

const ID: &str = "https://github.com/prefix-dev/sigstore-example/.github/workflows/action.yaml@refs/heads/main";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn data(name: &str) -> String {
    format!("{}/tests/data/sigstore/{name}", test_programs::ROOT)
}

fn verify(env: &Env, id: &str, artifact: &str) -> crate::harness::Cli {
    env.cli(&[
        "sigstore",
        "verify-bundle",
        "--bundle",
        &data("conda-attestation.sigstore.json"),
        "--certificate-identity",
        id,
        "--certificate-oidc-issuer",
        ISSUER,
        "--trusted-root",
        &data("public-good.json"),
        artifact,
    ])
}

#[test]
fn verify_bundle_exits_zero_only_for_a_valid_bundle() {
    let env = Env::new();
    let artifact = data("signed-package-2.1.0-hb0f4dca_0.conda");
    let ok = verify(&env, ID, &artifact);
    assert_eq!(ok.code(), 0, "{}{}", ok.stdout(), ok.stderr());

    let digest = edge_core::Sha256Digest::of(&std::fs::read(&artifact).unwrap()).to_string();
    assert_eq!(verify(&env, ID, &digest).code(), 0, "the sha256:<hex> artifact form");

    let wrong_id = verify(&env, "https://github.com/evil/x/.github/workflows/a.yaml@refs/heads/main", &artifact);
    assert_eq!(wrong_id.code(), 1);
    assert!(wrong_id.stdout().contains("invalid bundle"), "{}", wrong_id.stdout());

    std::fs::write(env.path("other.bin"), b"not the signed artifact").unwrap();
    assert_eq!(verify(&env, ID, env.path("other.bin").to_str().unwrap()).code(), 1);
}
