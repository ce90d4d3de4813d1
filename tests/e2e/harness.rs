//! A throwaway runner home per test: keys made by the real CLI, real capsule
//! files packed and signed by the CLI, runs through the real binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_edge-runner");

/// Limits small enough that limit tests finish quickly.
pub const FAST_LIMITS: &str = "[limits]\nmemory_mib = 32\ncpu_ms = 700\nwall_ms = 2500\noutput_kib = 64\n";

/// Every interface the guests built with capsule-sdk may import.
pub const STD_IMPORTS: &str = r#"imports = [
  "edge-runner:capsule/host", "edge-runner:capsule/types",
  "wasi:cli/environment", "wasi:cli/exit", "wasi:cli/stderr", "wasi:cli/stdin", "wasi:cli/stdout",
  "wasi:cli/terminal-input", "wasi:cli/terminal-output", "wasi:cli/terminal-stderr",
  "wasi:cli/terminal-stdin", "wasi:cli/terminal-stdout",
  "wasi:clocks/monotonic-clock", "wasi:clocks/wall-clock",
  "wasi:filesystem/preopens", "wasi:filesystem/types",
  "wasi:io/error", "wasi:io/poll", "wasi:io/streams",
  "wasi:random/insecure", "wasi:random/insecure-seed", "wasi:random/random",
]
"#;

/// Write a private key as `serve` requires it: created with mode 0600.
pub fn write_key(path: &Path, pem: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(pem.as_bytes()).unwrap();
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

/// The result of `edge-runner exec --json`.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub report: Value,
    pub stderr: String,
}

impl Run {
    pub fn outcome(&self) -> &str {
        self.report["outcome"].as_str().unwrap_or("?")
    }
    pub fn reason(&self) -> &str {
        self.report["refusal"]["reason_code"].as_str().unwrap_or("-")
    }
    pub fn detail(&self) -> &str {
        self.report["refusal"]["detail"].as_str().unwrap_or("")
    }
    /// Event types of this run's evidence records, in order.
    pub fn events(&self) -> Vec<String> {
        self.report["records"]
            .as_array()
            .map(|a| a.iter().map(|r| r["event"]["type"].as_str().unwrap_or("?").to_owned()).collect())
            .unwrap_or_default()
    }
    /// This run's evidence events of one type, in order.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.report["records"]
            .as_array()
            .map(|a| a.iter().filter(|r| r["event"]["type"] == kind).map(|r| r["event"].clone()).collect())
            .unwrap_or_default()
    }

    /// The reason code of the run's `refused` evidence record, if any.
    pub fn recorded_reason(&self) -> Option<String> {
        self.report["records"].as_array()?.iter().find_map(|r| {
            (r["event"]["type"] == "refused").then(|| r["event"]["reason_code"].as_str().unwrap_or("").to_owned())
        })
    }
}

impl Env {
    /// A fresh home with a signing key (`keys/agent`), an untrusted key
    /// (`keys/other`), mounts `data` (writable) and `ro` (read-only), and a
    /// directory `outside` that no mount covers, reachable from `data/link`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env = Env { dir };
        for d in ["data", "ro", "outside", "keys"] {
            std::fs::create_dir_all(env.path(d)).unwrap();
        }
        std::fs::write(env.path("outside/secret.txt"), "top secret").unwrap();
        std::fs::write(env.path("ro/readonly.txt"), "do not touch").unwrap();
        std::fs::write(env.path("data/existing.txt"), "existing").unwrap();
        std::os::unix::fs::symlink(env.path("outside"), env.path("data/link")).unwrap();
        env.cli(&["keys", "generate", "--out", "keys/agent"]).success();
        env.cli(&["keys", "generate", "--out", "keys/other"]).success();
        env.write_config("");
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// runner.toml with mounts data/ro and a shared component cache, plus `extra`.
    pub fn write_config(&self, extra: &str) {
        let cache = Path::new(test_programs::ROOT).join("target/test-component-cache");
        let text = format!(
            "[runner]\nname = \"test-runner\"\nstate_dir = \"state\"\ncache_dir = {:?}\n\
             dangerous_run_without_policy = true\n\n\
             [[signers]]\nname = \"test-agent\"\npublic_key = \"keys/agent.pub\"\n\n\
             [mounts.data]\npath = \"data\"\nwritable = true\n\n[mounts.ro]\npath = \"ro\"\nwritable = false\n\n{extra}",
            cache.display().to_string()
        );
        std::fs::write(self.path("runner.toml"), text).unwrap();
    }

    /// Switch to a policy: the example policy and graph, the agent key as
    /// the policy's signer, mount `data` mapped to `data_node` and `ro` to
    /// `tls-certs`, plus `extra_mounts` (name, node, writable).
    pub fn write_policy_config(&self, data_node: &str, extra_mounts: &[(&str, &str, bool)]) {
        let root = std::path::Path::new(test_programs::ROOT);
        std::fs::copy(root.join("examples/policy/graph.toml"), self.path("graph.toml")).unwrap();
        let pem = std::fs::read_to_string(self.path("keys/agent.pub")).unwrap();
        let policy = format!(
            "{}\n[[signers]]\nname = \"test-agent\"\npublic_key = \"\"\"{pem}\"\"\"\nmounts = [\"*\"]\nendpoints = [\"*\"]\nwritable_mounts = [\"data\", \"logs\", \"ledger\", \"config\"]\n",
            std::fs::read_to_string(root.join("examples/policy/policy.toml")).unwrap()
        );
        std::fs::write(self.path("policy.toml"), policy).unwrap();
        let cache = root.join("target/test-component-cache");
        let mut text = format!(
            "[runner]\nname = \"test-runner\"\nstate_dir = \"state\"\ncache_dir = {:?}\n\n\
             [policy]\nfile = \"policy.toml\"\ngraph = \"graph.toml\"\n\n\
             [mounts.data]\npath = \"data\"\nwritable = true\nnode = \"{data_node}\"\n\n\
             [mounts.ro]\npath = \"ro\"\nwritable = false\nnode = \"tls-certs\"\n",
            cache.display().to_string()
        );
        for (name, node, writable) in extra_mounts {
            std::fs::create_dir_all(self.path(name)).unwrap();
            text.push_str(&format!("\n[mounts.{name}]\npath = \"{name}\"\nwritable = {writable}\nnode = \"{node}\"\n"));
        }
        std::fs::write(self.path("runner.toml"), text).unwrap();
    }

    /// Add approvers: an ssh-keygen key per principal (`keys/<name>`), an
    /// allowed_signers file and a roles file; append [approvers] to runner.toml.
    pub fn write_approvers(&self, people: &[(&str, &[&str])], extra_roles: &str) {
        let mut signers = String::new();
        let mut roles = String::from("[principals]\n");
        for (name, r) in people {
            let key = self.path(&format!("keys/{name}"));
            if !key.exists() {
                let st = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key.to_str().unwrap()])
                    .status()
                    .expect("ssh-keygen must be installed (openssh-client)");
                assert!(st.success());
            }
            let public = std::fs::read_to_string(self.path(&format!("keys/{name}.pub"))).unwrap();
            signers.push_str(&format!("{name}@bank.example {}", public));
            let list: Vec<String> = r.iter().map(|x| format!("\"{x}\"")).collect();
            roles.push_str(&format!("\"{name}@bank.example\" = [{}]\n", list.join(", ")));
        }
        roles.push_str(extra_roles);
        std::fs::write(self.path("allowed_signers"), signers).unwrap();
        std::fs::write(self.path("roles.toml"), roles).unwrap();
        let mut config = std::fs::read_to_string(self.path("runner.toml")).unwrap();
        if !config.contains("[approvers]") {
            config.push_str("\n[approvers]\nallowed_signers = \"allowed_signers\"\nroles = \"roles.toml\"\n");
            std::fs::write(self.path("runner.toml"), config).unwrap();
        }
    }

    /// Run the CLI with extra environment variables.
    pub fn cli_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Cli {
        let out =
            Command::new(BIN).args(args).envs(envs.iter().copied()).current_dir(self.dir.path()).output().unwrap();
        Cli(out)
    }

    /// `edge-runner exec --json` with approval files.
    pub fn exec_with(&self, capsule: &Path, approvals: &[&str]) -> Run {
        let mut args = vec![
            "exec".to_owned(),
            capsule.to_str().unwrap().to_owned(),
            "--config".into(),
            "runner.toml".into(),
            "--json".into(),
        ];
        for a in approvals {
            args.push("--approval".into());
            args.push((*a).to_owned());
        }
        let out = Command::new(BIN).args(&args).current_dir(self.dir.path()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("exec printed no report ({e}); stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr))
        });
        Run { code: out.status.code().unwrap_or(-1), report, stderr: String::from_utf8_lossy(&out.stderr).into() }
    }

    /// `edge-runner approve|reject DOC` as `<who>@bank.example` with `keys/<who>`, into `out`.
    pub fn sign_approval(&self, verb: &str, doc: &str, who: &str, out: &str) {
        let principal = format!("{who}@bank.example");
        let key = format!("keys/{who}");
        self.cli(&[verb, doc, "--principal", &principal, "--ssh-key", &key, "--yes", "-o", out]).success();
    }

    pub fn cli(&self, args: &[&str]) -> Cli {
        let out = Command::new(BIN).args(args).current_dir(self.dir.path()).output().unwrap();
        Cli(out)
    }

    /// Pack `wasm` with a manifest (TOML text) into `<name>.capsule`, signed with `key` unless None.
    pub fn capsule(&self, name: &str, wasm: &str, manifest: &str, key: Option<&str>) -> PathBuf {
        let m = self.path(&format!("{name}.toml"));
        std::fs::write(&m, manifest).unwrap();
        let out = format!("{name}.capsule");
        self.cli(&["capsule", "pack", "--manifest", m.to_str().unwrap(), "--component", wasm, "-o", &out]).success();
        if let Some(k) = key {
            self.cli(&["capsule", "sign", "--key", &format!("keys/{k}.key"), &out]).success();
        }
        self.path(&out)
    }

    /// The example config-drift capsule (`examples/capsules/config-drift`,
    /// its own manifest), signed by `keys/<key>.key` if a key is given.
    pub fn config_drift_capsule(&self, name: &str, key: Option<&str>) -> PathBuf {
        let manifest =
            std::fs::read_to_string(format!("{}/examples/capsules/config-drift/capsule.toml", test_programs::ROOT))
                .unwrap();
        self.capsule(name, test_programs::CONFIG_DRIFT, &manifest, key)
    }

    /// A harmless capsule signed by `keys/other`, a key no runner trusts.
    pub fn untrusted_capsule(&self) -> PathBuf {
        self.capsule("untrusted", test_programs::HOSTILE, &Self::hostile_manifest("none", ""), Some("other"))
    }

    /// A hostile-capsule manifest for `attack`.
    pub fn hostile_manifest(attack: &str, extra: &str) -> String {
        format!(
            "name = \"hostile\"\nversion = \"0.0.1\"\nkind = \"remediation\"\n{STD_IMPORTS}\n\
             [params]\nattack = \"{attack}\"\n\n[[mounts]]\nname = \"data\"\nwritable = true\n\n\
             [[mounts]]\nname = \"ro\"\nwritable = false\n\n[provenance]\nticket = \"TEST-1\"\n\n{FAST_LIMITS}\n{extra}"
        )
    }

    /// Pack and sign the hostile capsule for `attack`.
    pub fn hostile(&self, attack: &str) -> PathBuf {
        self.capsule(
            &format!("hostile-{attack}"),
            test_programs::HOSTILE,
            &Self::hostile_manifest(attack, ""),
            Some("agent"),
        )
    }

    pub fn exec(&self, capsule: &Path) -> Run {
        self.exec_with(capsule, &[])
    }

    /// Export the whole log and verify it offline with the runner's key
    /// (every check: signatures, decisions and quorums replayed, sent
    /// requests against the approved plan); what the verifier printed.
    pub fn verify_offline(&self) -> String {
        self.cli(&["evidence", "export", "--config", "runner.toml", "-o", "all.bundle"]).success();
        let vkey = self.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
        std::fs::write(self.path("runner.vkey"), &vkey).unwrap();
        let args =
            vec![self.path("all.bundle").into_os_string(), "--key".into(), self.path("runner.vkey").into_os_string()];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = edge_evidence::cli::run(args, &mut out, &mut err, false);
        assert_eq!(code, 0, "{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Every file under the home except the runner's own state: path → content.
    pub fn host_files(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }

    /// `exec` of `capsule` refused before anything ran: exit 1; its standard error.
    pub fn exec_refused(&self, capsule: &Path) -> String {
        let out = self.cli(&["exec", capsule.to_str().unwrap(), "--config", "runner.toml"]);
        let err = out.stderr();
        assert_eq!(out.code(), 1, "{err}");
        err
    }

    /// The whole evidence log, verified by the CLI.
    pub fn evidence(&self) -> Value {
        let out = self.cli(&["evidence", "show", "--config", "runner.toml", "--json"]).success();
        serde_json::from_slice(&out.0.stdout).unwrap()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == "state" || rel.ends_with(".capsule") || rel.starts_with("/tmp") {
            continue;
        }
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            out.insert(rel, format!("-> {}", std::fs::read_link(&p).unwrap().display()));
        } else if ft.is_dir() {
            out.insert(rel.clone(), "<dir>".into());
            walk(root, &p, out);
        } else {
            out.insert(rel, String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned());
        }
    }
}

pub struct Cli(pub Output);

impl Cli {
    pub fn success(self) -> Self {
        assert!(
            self.0.status.success(),
            "command failed: {}\nstdout:\n{}\nstderr:\n{}",
            self.0.status,
            String::from_utf8_lossy(&self.0.stdout),
            String::from_utf8_lossy(&self.0.stderr)
        );
        self
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
}

/// A running `edge-runner serve` (its standard error appended to
/// `serve.log` in the home); killed on drop.
pub struct Serve {
    pub child: std::process::Child,
    /// What it printed first (one line per listener or intake).
    pub lines: Vec<String>,
}

impl Serve {
    /// Start `serve` in `env` and read the first `n` lines it prints.
    pub fn start(env: &Env, n: usize) -> Serve {
        use std::io::BufRead as _;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(env.path("serve.log")).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config", "runner.toml"])
            .current_dir(env.path(""))
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..n {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            lines.push(line.trim().to_owned());
        }
        Serve { child, lines }
    }

    /// The `i`th line printed, which must start with `prefix`: the rest.
    pub fn line(&self, env: &Env, i: usize, prefix: &str) -> String {
        match self.lines.get(i).and_then(|l| l.strip_prefix(prefix)) {
            Some(rest) => rest.to_owned(),
            None => panic!(
                "serve printed {:?}: {}",
                self.lines,
                std::fs::read_to_string(env.path("serve.log")).unwrap_or_default()
            ),
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
