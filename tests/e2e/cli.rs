//! The command line as a user meets it: golden files of the main commands'
//! output (`tests/golden/edge-runner/`), client flags defaulting from the
//! environment, and the approve flags renamed for consistency.
//!
//! Golden files are compared exactly, after replacing what varies from run
//! to run (temporary paths, digests, ids, key ids, times, the version).
//! When a change of output is intended, rewrite them and review the diff:
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test -p edge-runner --test e2e cli::
//! git diff tests/golden/
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;

use crate::harness::{BIN, Env};
use crate::server::{Server, capsule, rt, setup, show};

const CLIENT_ENV: [&str; 4] = ["EDGE_RUNNER_SERVER", "EDGE_RUNNER_CA", "EDGE_RUNNER_CERT", "EDGE_RUNNER_KEY"];

/// Run the binary in `dir` with exactly `envs` for the client variables
/// (whatever the developer's shell has set is removed: help shows values).
fn run(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(dir).env_remove("EDGE_RUNNER_LOG");
    for v in CLIENT_ENV {
        c.env_remove(v);
    }
    c.envs(envs.iter().copied()).output().unwrap()
}

fn stdout_of(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Replace what varies between runs with a placeholder.
fn normalise(text: &str, home: &Path) -> String {
    let mut s = text.replace(&home.display().to_string(), "<home>");
    for (pattern, with) in [
        (r"sha256:[0-9a-f]{64}", "sha256:<digest>"),
        (r"\br-[0-9]+-[0-9a-f]{8}\b", "r-<id>"),
        (r"\bp-[0-9]+-[0-9a-f]{8}\b", "p-<id>"),
        (r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z\b", "<time>"),
        (r"\(\d+ bytes\)", "(<n> bytes)"),
        // The WASI release the guest toolchain links.
        (r"(wasi:[a-z-]+/[a-z-]+)@0\.2\.\d+", "$1@0.2.<n>"),
        // Records the runner writes for itself at start come and go
        // between releases; the order of a run's records still shows.
        (r"(?m)^  #\d+ +", "  #<seq> "),
        (r"^edge-runner \d+\.\d+\.\d+\n$", "edge-runner <version>\n"),
    ] {
        s = Regex::new(pattern).unwrap().replace_all(&s, with).into_owned();
    }
    s
}

/// Compare with `tests/golden/edge-runner/<name>`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    edge_evidence::cli_docs::golden(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/edge-runner").join(name),
        actual,
    );
}

#[test]
fn help_and_version_match_their_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    for (args, file) in [
        (&["--help"][..], "help.txt"),
        (&["--version"], "version.txt"),
        (&["approve", "--help"], "approve-help.txt"),
        (&["submit", "--help"], "submit-help.txt"),
        (&["capsule", "--help"], "capsule-help.txt"),
    ] {
        let out = stdout_of(&run(dir.path(), args, &[]));
        golden(file, &normalise(&out, dir.path()));
    }
    // Without a subcommand: usage on stderr, exit 2 (a usage error).
    let bare = run(dir.path(), &[], &[]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("Usage: edge-runner <COMMAND>"));
}

#[test]
fn init_inspect_and_exec_match_their_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = stdout_of(&run(dir.path(), &["init", "home", "--name", "golden.example/runner-1"], &[]));
    golden("init.txt", &normalise(&out, dir.path()));

    // The example config-drift capsule, signed by the test agent.
    let env = Env::new();
    std::fs::create_dir_all(env.path("config")).unwrap();
    env.write_config("[mounts.config]\npath = \"config\"\nwritable = true\n");
    std::fs::write(env.path("config/app.toml"), "[server]\nmax_connections = 100\n").unwrap();
    let drift = env.config_drift_capsule("drift", Some("agent"));
    let drift = drift.to_str().unwrap();
    let home = env.path("");
    let inspect = stdout_of(&run(&home, &["capsule", "inspect", drift], &[]));
    golden("capsule-inspect.txt", &normalise(&inspect, &home));
    let verify = stdout_of(&run(&home, &["capsule", "verify", drift, "--key", "keys/agent.pub"], &[]));
    golden("capsule-verify.txt", &normalise(&verify, &home));
    let exec = stdout_of(&run(&home, &["exec", drift, "--config", "runner.toml"], &[]));
    golden("exec.txt", &normalise(&exec, &home));
    // Signed by a key the runner does not trust: refused, exit 3.
    let untrusted = env.config_drift_capsule("untrusted", Some("other"));
    let refused = run(&home, &["exec", untrusted.to_str().unwrap(), "--config", "runner.toml"], &[]);
    assert_eq!(refused.status.code(), Some(3));
    golden("exec-refused.txt", &normalise(&String::from_utf8(refused.stdout).unwrap(), &home));
}

#[test]
fn client_flags_default_from_the_environment_and_a_flag_wins() {
    let env = setup(64);
    let server = Server::start(&env);
    let home = env.path("");
    let tls = |f: &str| format!("tls/{f}");
    let as_agent = [
        ("EDGE_RUNNER_SERVER", server.url.as_str()),
        ("EDGE_RUNNER_CA", "tls/ca.pem"),
        ("EDGE_RUNNER_CERT", "tls/agent.pem"),
        ("EDGE_RUNNER_KEY", "tls/agent.key"),
    ];

    // No client flag at all: everything from the environment.
    let tier0 = capsule(&env, "none", false);
    let submitted = run(&home, &["submit", tier0.to_str().unwrap(), "--json"], &as_agent);
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&submitted)).unwrap();
    assert_eq!(v["state"], "committed", "{v}");
    let listed = stdout_of(&run(&home, &["proposals", "list"], &as_agent));
    assert!(listed.contains(v["id"].as_str().unwrap()), "{listed}");

    // The environment is used (an expired certificate is refused at the
    // handshake) and a flag on the command line overrides it.
    let mut expired = as_agent;
    expired[2] = ("EDGE_RUNNER_CERT", "tls/expired.pem");
    expired[3] = ("EDGE_RUNNER_KEY", "tls/expired.key");
    let refused = run(&home, &["proposals", "list"], &expired);
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stdout));
    let (cert, key) = (tls("agent.pem"), tls("agent.key"));
    stdout_of(&run(&home, &["proposals", "list", "--cert", &cert, "--key", &key], &expired));
    // Help shows where each default comes from.
    let help = stdout_of(&run(&home, &["proposals", "list", "--help"], &as_agent));
    assert!(help.contains("[env: EDGE_RUNNER_SERVER=https://127.0.0.1:"), "{help}");

    // A tier-2 proposal, approved by two people with the runner in the
    // environment: one with the flags' old names (a warning), one with the new.
    std::fs::remove_file(env.path("data/ok.txt")).unwrap(); // written by the tier-0 run
    let tier2 = capsule(&env, "none", true);
    let waiting = run(&home, &["submit", tier2.to_str().unwrap(), "--json"], &as_agent);
    assert_eq!(waiting.status.code(), Some(5), "{}", String::from_utf8_lossy(&waiting.stderr));
    let v: serde_json::Value = serde_json::from_slice(&waiting.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let runner = [("EDGE_RUNNER_SERVER", server.url.as_str()), ("EDGE_RUNNER_CA", "tls/ca.pem")];

    // A document path with a runner in the environment is refused, not sent as an id.
    let doc = format!("state/proposals/{id}.json");
    let (acert, akey) = (tls("approver.pem"), tls("approver.key"));
    let sign = |who: &str, target: &str, tls_flags: [&str; 4]| {
        let principal = format!("{who}@bank.example");
        let (ssh, out) = (format!("keys/{who}"), format!("{who}.json"));
        let mut args = vec!["approve", target, "--principal", &principal, "--ssh-key", &ssh, "--yes", "-o", &out];
        args.extend(tls_flags);
        run(&home, &args, &runner)
    };
    let wrong = sign("alice", &doc, ["--cert", &acert, "--key", &akey]);
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("is a proposal document") && err.contains("unset EDGE_RUNNER_SERVER"), "{err}");
    assert!(!env.path("alice.json").exists());

    let alice = sign("alice", &id, ["--client-cert", &acert, "--client-key", &akey]);
    let warned = String::from_utf8_lossy(&alice.stderr);
    assert!(warned.contains("`approve --client-cert` is deprecated: use --cert"), "{warned}");
    assert!(warned.contains("`approve --client-key` is deprecated: use --key"), "{warned}");
    assert!(stdout_of(&alice).contains("posted to the runner: quorum 1 of 2 counted so far"));
    let carol = sign("carol", &id, ["--cert", &acert, "--key", &akey]);
    assert!(carol.stderr.is_empty(), "{}", String::from_utf8_lossy(&carol.stderr));
    assert!(stdout_of(&carol).contains("the proposal ran: committed"));
    rt().block_on(async {
        let mut c = server.client(&env, "approver");
        assert_eq!(show(&mut c, &id).await["state"], "committed");
    });
}

#[test]
fn an_old_approve_command_line_is_refused_before_anything_is_signed() {
    let env = Env::new();
    // `--key` was the SSH key; now it is the TLS client key. Without
    // --ssh-key or --agent nothing is fetched, shown or signed.
    let out =
        env.cli(&["approve", "p.json", "--principal", "alice@bank.example", "--key", "keys/alice", "-o", "a.json"]);
    assert_eq!(out.code(), 1);
    assert!(out.stdout().is_empty(), "{}", out.stdout());
    let err = out.stderr();
    assert!(err.contains("nothing to sign with: give --ssh-key") && err.contains("renamed --ssh-key"), "{err}");
    assert!(!env.path("a.json").exists());
    // With the old TLS names as well: both are now --key; the warning says why clap refuses.
    let out = env.cli(&[
        "approve",
        "p-1",
        "--client-key",
        "tls.key",
        "--key",
        "keys/alice",
        "--principal",
        "alice@bank.example",
        "-o",
        "a.json",
    ]);
    assert_eq!(out.code(), 2);
    let err = out.stderr();
    assert!(err.contains("the SSH key you sign with, formerly --key, is now --ssh-key"), "{err}");
    assert!(err.contains("cannot be used multiple times"), "{err}");
}

#[test]
fn completions_and_man_pages_come_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let bash = stdout_of(&run(dir.path(), &["completions", "bash"], &[]));
    assert!(bash.contains("complete -F _edge__runner"), "{bash}");
    for sub in ["approve", "submit", "proposals", "capsule", "completions", "man"] {
        assert!(bash.contains(&format!(" {sub} ")), "{sub}");
    }
    let fish = stdout_of(&run(dir.path(), &["completions", "fish"], &[]));
    assert!(fish.contains("complete -c edge-runner") && fish.contains("-l ssh-key"), "{fish}");
    let bad = run(dir.path(), &["completions", "tcsh"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("[possible values: bash, elvish, fish, powershell, zsh]"));

    let out = stdout_of(&run(dir.path(), &["man", "--out", "man1"], &[]));
    assert!(out.contains("wrote man1/edge-runner-proposals-watch.1"), "{out}");
    let page = std::fs::read_to_string(dir.path().join("man1/edge-runner-proposals-watch.1")).unwrap();
    assert!(page.contains("\\-\\-timeout") && page.contains("EDGE_RUNNER_KEY"), "{page}");
    // Each page is a valid man page (when man is installed to check).
    if Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let rendered = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(dir.path().join("man1/edge-runner-approve.1"))
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("--ssh-key") && text.contains("EDGE_RUNNER_CERT"), "{text}");
    }
}
