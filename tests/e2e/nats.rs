//! The NATS intake end to end against a real `nats-server` (Debian's, with
//! JetStream, on 127.0.0.1 with a temporary store), started by the test:
//! submissions and approvals pulled by a runner that only dials out,
//! hostile messages, NATS away at start and going away mid-run, a runner
//! killed at any point, and two runners on one NATS.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use edge_runner::intake::nats_client::NatsClient;
use serde_json::Value;

use crate::harness::{BIN, Env, Serve};
use crate::probes::get;
use crate::spool::diagnostic;

/// A `nats-server` with JetStream on 127.0.0.1; killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// TLS with client certificates required, from this development PKI
    /// (`crate::server::pki`): `server.pem`, `ca.pem`.
    tls: Option<std::path::PathBuf>,
    /// With `tls`: users by their certificate's subject (`verify_and_map`)
    /// and this `authorization { … }` block.
    auth: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nats {
    fn start() -> Nats {
        Self::start_with(None)
    }

    fn start_with(tls: Option<&std::path::Path>) -> Nats {
        Self::start_with_auth(tls, None)
    }

    fn start_with_auth(tls: Option<&std::path::Path>, auth: Option<String>) -> Nats {
        let mut n =
            Nats { child: None, port: free_port(), dir: tempfile::tempdir().unwrap(), tls: tls.map(Into::into), auth };
        n.up();
        n
    }

    /// Start (again) on the same port and store.
    fn up(&mut self) {
        let conf = self.dir.path().join("nats.conf");
        let tls = self.tls.as_ref().map_or_else(String::new, |d| {
            let verify = if self.auth.is_some() { "verify_and_map" } else { "verify" };
            format!(
                "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, {verify}: true }}\n{}\n",
                d.join("server.pem"),
                d.join("server.key"),
                d.join("ca.pem"),
                self.auth.as_deref().unwrap_or("")
            )
        });
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{}\nmax_payload: 4MB\njetstream {{ store_dir: {:?} }}\n{tls}",
                self.port,
                self.dir.path().join("js")
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed: apt-get install nats-server (the README's test command does)");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

/// A running `edge-runner serve` whose only intake is NATS, with probes.
struct Runner {
    serve: Serve,
    probes: String,
}

impl Runner {
    fn start(env: &Env) -> Runner {
        let serve = Serve::start(env, 2);
        let probes = serve.line(env, 0, "probes on ");
        serve.line(env, 1, "nats to ");
        Runner { serve, probes }
    }

    fn kill(self) {
        self.serve.kill();
    }

    fn ready(&self) -> (u16, String) {
        get(&self.probes, "/readyz")
    }

    /// Wait until `/readyz` answers `status`.
    fn wait_ready(&self, status: u16, secs: u64) -> String {
        let t = Instant::now();
        loop {
            let (s, body) = self.ready();
            if s == status {
                return body;
            }
            assert!(t.elapsed() < Duration::from_secs(secs), "readyz stayed {s}: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A runner home named `name` with only a NATS intake (and probes), and a
/// `certs` mount for the diagnostic.
fn nats_env(name: &str, nats: &Nats) -> Env {
    let env = Env::new();
    std::fs::create_dir_all(env.path("certs")).unwrap();
    env.write_config(&format!(
        "[mounts.certs]\npath = \"certs\"\nwritable = false\n\n[nats]\nurl = \"{}\"\nmax_message_mib = 1\nack_wait = \"2s\"\n\n\
         [probes]\nlisten = \"127.0.0.1:0\"\nmetrics = true\n",
        nats.url()
    ));
    let text = std::fs::read_to_string(env.path("runner.toml")).unwrap().replace("test-runner", name);
    std::fs::write(env.path("runner.toml"), text).unwrap();
    env
}

/// `runner.vkey` in the home: the runner's key, which NATS clients pin
/// (`--runner-key`).
fn runner_key(env: &Env) -> std::path::PathBuf {
    let vkey = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(env.path("runner.vkey"), &vkey).unwrap();
    env.path("runner.vkey")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn count(env: &Env, event: &str) -> usize {
    env.evidence().as_array().unwrap().iter().filter(|r| r["event"]["type"] == event).count()
}

/// Let the runner answer export requests through NATS (`nats.exports`).
fn exports_on(env: &Env) {
    let text = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    let text = text.replace("ack_wait = \"2s\"\n", "ack_wait = \"2s\"\nexports = true\nexport_bucket_mib = 64\n");
    std::fs::write(env.path("runner.toml"), text).unwrap();
}

/// `edge-runner evidence fetch` of runner `r1`'s log through NATS into `out`.
fn fetch_through(env: &Env, nats: &Nats, out: &str) -> crate::harness::Cli {
    let url = nats.url();
    env.cli(&["evidence", "fetch", "--nats", &url, "--runner", "r1", "--runner-key", "runner.vkey", "-o", out])
}

const WAIT: Duration = Duration::from_secs(60);

/// Wait until runner `r1`'s consumer has nothing pending or unacknowledged
/// (every message processed or terminated, none left to come back).
async fn drained(nats: &Nats, within: Duration) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut consumer: jetstream::consumer::PullConsumer =
        js.get_stream("edge_r1_in").await.unwrap().get_consumer("runner").await.unwrap();
    let t = Instant::now();
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return js;
        }
        assert!(t.elapsed() < within, "{info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn submissions_through_nats_are_answered_and_hostile_messages_refused_without_blocking_the_consumer() {
    let nats = Nats::start();
    let env = nats_env("r1", &nats);
    // Exports through the object store, for the reviewers this deployment lets publish on in.export.
    exports_on(&env);
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    let diag = diagnostic(&env);
    let sleeper = std::fs::read(env.capsule(
        "sleeper",
        test_programs::HOSTILE,
        &Env::hostile_manifest("sleep", ""),
        Some("agent"),
    ))
    .unwrap();
    let untrusted = std::fs::read(env.untrusted_capsule()).unwrap();
    rt().block_on(async {
        let c = NatsClient::plain(&nats.url(), "r1", &runner_key(&env)).await.unwrap();
        let mut events = c.events().await.unwrap();
        let a = c.request("submit", diag.clone(), WAIT).await.unwrap();
        assert_eq!(a["state"], "completed", "{a:#}");
        assert_eq!(a["admission"]["admitted"], true);
        assert!(a["receipt"].as_str().is_some_and(|r| !r.is_empty()), "{a:#}");
        // Hostile messages: each refused with a reason, and the next good
        // one still goes through.
        let refused = c.request("submit", untrusted, WAIT).await.unwrap();
        assert_eq!(refused["state"], "refused");
        assert_eq!(refused["refusal"]["reason_code"], "signature.untrusted_signer", "{refused:#}");
        // Proposal events come out too (a diagnostic that completes has
        // none; a refusal has one).
        let ev = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut events)).await.unwrap().unwrap();
        c.verify_event(&ev).expect("events are signed by the runner");
        let ev: Value = serde_json::from_slice(&ev.payload).unwrap();
        assert_eq!((&ev["proposal"], ev["kind"].as_str()), (&refused["id"], Some("refused")), "{ev:#}");
        let garbage = c.request("submit", b"\x1b[2Jnot a capsule".to_vec(), WAIT).await.unwrap();
        assert_eq!(garbage["state"], "refused", "{garbage:#}");
        let big = c.request("submit", vec![0u8; (1 << 20) + 10], WAIT).await.unwrap();
        assert_eq!(big["refused"]["reason_code"], "nats.too-large", "{big:#}");
        let bad = c.request("approve", b"{not json".to_vec(), WAIT).await.unwrap();
        assert_eq!(bad["refused"]["reason_code"], "approval.malformed", "{bad:#}");
        let odd = c.request("bogus", b"x".to_vec(), WAIT).await.unwrap();
        assert_eq!(odd["refused"]["reason_code"], "nats.unknown-subject", "{odd:#}");
        let again = c.request("submit", diag.clone(), WAIT).await.unwrap();
        assert_eq!(again["state"], "completed");
        // A run longer than the ack wait (2 s here): the runner says it is
        // still working, so it is not delivered again while it runs.
        let long = c.request("submit", sleeper, WAIT).await.unwrap();
        assert_eq!(long["refusal"]["reason_code"], "sandbox.wall_time", "{long:#}");

        // Nothing left pending or redelivered: refused messages were
        // terminated, not left to come back forever.
        drained(&nats, WAIT).await;
        // An export, through the object store, with the client's helper.
        let fetched = c.fetch_export(None, &env.path("nats.bundle")).await.unwrap();
        assert_eq!(fetched.bytes, std::fs::metadata(env.path("nats.bundle")).unwrap().len());
        assert_eq!(fetched.quoting_config, 0, "a store of this runner's records quotes no config file");
    });
    // Refused submissions and the malformed approval are recorded.
    assert_eq!(count(&env, "submission"), 4, "two good, the long one and the untrusted one: each once");
    assert_eq!(count(&env, "refused"), 3, "the untrusted, the unreadable and the long capsule");
    assert!(count(&env, "approval-refused") >= 1);
    // The CLI talks NATS too.
    let cli = env.cli(&[
        "submit",
        "spool-diag.capsule",
        "--nats",
        &nats.url(),
        "--runner",
        "r1",
        "--runner-key",
        "runner.vkey",
        "--wait",
        "60",
    ]);
    assert_eq!(cli.code(), 0, "{}{}", cli.stdout(), cli.stderr());
    assert!(cli.stdout().contains("state     completed"), "{}", cli.stdout());
    // And the CLI fetches an export the same way.
    let f = fetch_through(&env, &nats, "cli.bundle");
    assert_eq!(f.code(), 0, "{}{}", f.stdout(), f.stderr());
    drop(runner);
    let args = vec![env.path("cli.bundle").into_os_string(), "--key".into(), env.path("runner.vkey").into_os_string()];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(edge_evidence::cli::run(args, &mut out, &mut err, false), 0, "{}", String::from_utf8_lossy(&err));
    let args = vec![env.path("nats.bundle").into_os_string(), "--key".into(), env.path("runner.vkey").into_os_string()];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(edge_evidence::cli::run(args, &mut out, &mut err, false), 0, "{}", String::from_utf8_lossy(&err));
}

#[test]
fn a_fetch_through_nats_names_the_old_reload_refusals_that_quote_the_config_file() {
    let nats = Nats::start();
    let env = nats_env("r1", &nats);
    exports_on(&env);
    // An old-style refusal, as a runner before 2026-12-06 recorded it.
    let config = edge_runner::config::RunnerConfig::load(&env.path("runner.toml")).unwrap();
    let opened = edge_runner::pipeline::Runner::open(config).unwrap();
    let kept = opened.governance().digests();
    let old = "runner config runner.toml is invalid: TOML parse error at line 3, column 7\n   |\n3 | url = \
               \"https://hooks.example/T/old-secret-7c\n   |       ^\ninvalid basic string";
    let refused = edge_core::evidence::Event::ReloadRefused { trigger: "sighup".into(), error: old.into(), kept };
    opened.log.append("runner", refused).unwrap();
    drop(opened);
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    runner_key(&env);
    let f = fetch_through(&env, &nats, "old.bundle");
    assert_eq!(f.code(), 0, "{}{}", f.stdout(), f.stderr());
    let said = f.stdout();
    assert!(said.contains("note: 1 reload-refused record(s) in it, written by a runner before 2026-12-06"), "{said}");
    assert!(!said.contains("old-secret-7c"), "{said}");
    drop(runner);
}

#[test]
fn a_runner_killed_at_any_point_loses_no_message_and_runs_none_twice() {
    let nats = Nats::start();
    let env = nats_env("r1", &nats);
    // Streams made by a first start; then the messages wait for it.
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    let diag = diagnostic(&env);
    const N: usize = 100;
    rt().block_on(async {
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        runner.kill();
        for i in 0..N {
            let mut h = async_nats::HeaderMap::new();
            h.insert(async_nats::header::NATS_MESSAGE_ID, format!("m{i}").as_str());
            js.publish_with_headers("edge.r1.in.submit", h, diag.clone().into()).await.unwrap().await.unwrap();
        }
    });
    let mut killed_mid_work = 0;
    for delay in [100u64, 150, 200, 250, 300, 400, 500, 650, 800, 1000] {
        let runner = Runner::start(&env);
        std::thread::sleep(Duration::from_millis(delay));
        runner.kill();
        if count(&env, "submission") < N {
            killed_mid_work += 1;
        }
    }
    assert!(killed_mid_work > 1, "the kills came after the work was done");
    let runner = Runner::start(&env);
    rt().block_on(async {
        let js = drained(&nats, Duration::from_secs(120)).await;
        // Every message has its answer in the outbound stream.
        let out = js.get_stream("edge_r1_out").await.unwrap();
        for i in 0..N {
            let m = out.get_last_raw_message_by_subject(&format!("edge.r1.out.answer.m{i}")).await.unwrap();
            let a: Value = serde_json::from_slice(&m.payload).unwrap();
            assert!(matches!(a["state"].as_str(), Some("completed" | "failed")), "m{i}: {a:#}");
        }
    });
    drop(runner);
    assert_eq!(count(&env, "submission"), N, "a message ran twice (or was lost)");
    let log = std::fs::read_to_string(env.path("serve.log")).unwrap();
    // The window that matters was hit: killed after a run's submission
    // record was durable and before its message was acknowledged.
    let recognised = log.matches("answered from the log, not run again").count();
    assert!(recognised > 0, "no kill landed between a durable submission and its ack");
    env.cli(&["evidence", "check", "--config", "runner.toml", "--full"]).success();
}

#[test]
fn nats_away_at_start_or_mid_run_is_reported_and_nothing_is_lost() {
    let mut nats = Nats::start();
    nats.down();
    let env = nats_env("r1", &nats);
    // No NATS: the runner starts anyway and says why it is not ready.
    let runner = Runner::start(&env);
    let why = runner.wait_ready(503, 30);
    assert!(why.contains("nats"), "{why}");
    let (_, metrics) = get(&runner.probes, "/metrics");
    assert!(metrics.contains("edge_runner_intake_up{intake=\"nats\"} 0"), "{metrics}");
    nats.up();
    runner.wait_ready(200, 60);
    let diag = diagnostic(&env);
    rt().block_on(async {
        let c = NatsClient::plain(&nats.url(), "r1", &runner_key(&env)).await.unwrap();
        assert_eq!(c.request("submit", diag.clone(), WAIT).await.unwrap()["state"], "completed");
    });
    // Gone mid-run, then back (same store): reconnected, and a message
    // published while the runner was cut off is taken.
    nats.down();
    runner.wait_ready(503, 30);
    nats.up();
    rt().block_on(async {
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        js.publish("edge.r1.in.submit", diag.clone().into()).await.unwrap().await.unwrap();
    });
    runner.wait_ready(200, 60);
    let t = Instant::now();
    while count(&env, "submission") < 2 {
        assert!(t.elapsed() < WAIT, "the message published while away was not taken");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = get(&runner.probes, "/metrics");
    assert!(metrics.contains("edge_runner_intake_up{intake=\"nats\"} 1"), "{metrics}");
    assert!(metrics.contains("edge_runner_intake_messages_total{intake=\"nats\",result=\"processed\"}"), "{metrics}");
    drop(runner);
}

#[test]
fn forged_and_replayed_answers_are_refused_and_the_runners_own_answer_is_waited_for() {
    use futures_util::StreamExt as _;
    let nats = Nats::start();
    let env = nats_env("r1", &nats);
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    let diag = diagnostic(&env);
    let key = runner_key(&env);
    let runner = Some(runner);
    rt().block_on(async move {
        let mut runner = runner;
        let nc = async_nats::connect(nats.url()).await.unwrap();
        // A genuine answer as stored (headers and all), kept to replay.
        let mut seen = nc.subscribe("edge.r1.out.answer.*").await.unwrap();
        nc.flush().await.unwrap();
        let c = NatsClient::plain(&nats.url(), "r1", &key).await.unwrap();
        let first = c.request("submit", diag.clone(), WAIT).await.unwrap();
        assert_eq!(first["state"], "completed");
        let genuine = tokio::time::timeout(WAIT, seen.next()).await.unwrap().unwrap();
        // A client that names a reply token gets its answers under it
        // (`out.answer.alice.<id>`, where NATS permissions can keep other
        // clients out); nothing of it reaches `out.answer.*`.
        let mut alices = nc.subscribe("edge.r1.out.answer.alice.*").await.unwrap();
        nc.flush().await.unwrap();
        let alice = NatsClient::connect(&edge_runner::intake::nats_client::NatsArgs {
            nats: Some(nats.url()),
            runner: Some("r1".into()),
            nats_ca: None,
            nats_cert: None,
            nats_key: None,
            nats_creds: None,
            nats_prefix: "edge".into(),
            runner_key: Some(key.clone()),
            nats_reply: Some("alice".into()),
        })
        .await
        .unwrap();
        assert_eq!(alice.request("submit", diag.clone(), WAIT).await.unwrap()["state"], "completed");
        let hers = tokio::time::timeout(WAIT, alices.next()).await.unwrap().unwrap();
        assert!(hers.subject.as_str().starts_with("edge.r1.out.answer.alice."), "{}", hers.subject);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), seen.next()).await.is_err(),
            "alice's answer was published where every client reads"
        );
        // The forger sees each request's id on the inbound subjects (as an
        // agent allowed there would) and answers at once, before the
        // runner can: a bare "completed", and the genuine earlier answer
        // moved to this request's subject with its signature headers.
        let mut requests = nc.subscribe("edge.r1.in.>").await.unwrap();
        nc.flush().await.unwrap();
        let forger = {
            let nc = nc.clone();
            let js = jetstream::new(nc.clone());
            tokio::spawn(async move {
                while let Some(m) = requests.next().await {
                    let id = m.headers.as_ref().unwrap().get(async_nats::header::NATS_MESSAGE_ID).unwrap().to_string();
                    let subject = format!("edge.r1.out.answer.{id}");
                    let forged = br#"{"state":"completed","forged":true}"#.to_vec();
                    nc.publish(subject.clone(), forged.clone().into()).await.unwrap();
                    // With the headers the runner's answer would carry: the
                    // request it answers (the stream, when it was made, the
                    // sequence the request just got) and a signature that
                    // is not the runner's.
                    let mut stream = js.get_stream("edge_r1_in").await.unwrap();
                    let info = stream.info().await.unwrap();
                    let answers =
                        format!("edge_r1_in@{}:{}", info.created.unix_timestamp_nanos(), info.state.last_sequence);
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Edge-Runner-Answers", answers.as_str());
                    h.insert("Edge-Runner-Signature", format!("ed25519={}", "A".repeat(86) + "==").as_str());
                    nc.publish_with_headers(subject.clone(), h, forged.into()).await.unwrap();
                    let h = genuine.headers.clone().unwrap();
                    nc.publish_with_headers(subject, h, genuine.payload.clone()).await.unwrap();
                    nc.flush().await.unwrap();
                }
            })
        };
        // The client waits past both for the runner's own answer.
        let second = c.request("submit", diag.clone(), WAIT).await.unwrap();
        assert_eq!(second["state"], "completed", "{second:#}");
        assert!(second.get("forged").is_none(), "a forged answer was taken: {second:#}");
        assert_ne!(second["run"], first["run"], "the earlier answer was taken for this request");
        // With the runner gone, the forgeries are all that comes: no answer.
        drop(runner.take());
        let e = c.request("submit", diag.clone(), Duration::from_secs(3)).await.unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("no answer from runner `r1` yet"), "{e}");
        assert!(e.contains("was refused"), "{e}");
        forger.abort();
    });
}

/// Runner `r1`'s inbound stream made (again) by the NATS operator, with
/// `storage`, and a consumer that gives up on a message after one delivery.
fn made_beforehand(nats: &Nats, storage: async_nats::jetstream::stream::StorageType) {
    use async_nats::jetstream::{consumer, stream};
    rt().block_on(async {
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let _ = js.delete_stream("edge_r1_in").await;
        let s = js
            .create_stream(stream::Config {
                name: "edge_r1_in".into(),
                subjects: vec!["edge.r1.in.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage,
                ..Default::default()
            })
            .await
            .unwrap();
        s.create_consumer(consumer::pull::Config {
            durable_name: Some("runner".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_deliver: 1,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    });
}

#[test]
fn streams_and_consumers_made_beforehand_with_unsafe_settings_are_refused_not_used() {
    use async_nats::jetstream::stream;
    let nats = Nats::start();
    let env = nats_env("r1", &nats);
    // The hub's operator made them beforehand: the stream keeps requests
    // in memory only, and the consumer gives up on a message after one
    // delivery (a runner killed mid-run would lose it).
    made_beforehand(&nats, stream::StorageType::Memory);
    let runner = Runner::start(&env);
    // Not ready, and /readyz says why and what to do.
    let not_ready_for = |what: &str| {
        let t = Instant::now();
        loop {
            let (status, why) = runner.ready();
            if status == 503 && why.contains(what) {
                assert!(why.contains("Correct it (`nats stream edit`"), "{why}");
                break;
            }
            assert!(t.elapsed() < WAIT, "{status} {why}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    not_ready_for("the stream edge_r1_in cannot be used as it is: storage is memory");
    // The stream mended (file storage cannot be edited in: made again):
    // the consumer is next.
    made_beforehand(&nats, stream::StorageType::File);
    not_ready_for("the consumer runner on edge_r1_in cannot be used as it is: max_deliver is 1");
    // Deleted: the runner makes it as it needs it, and takes work.
    rt().block_on(async {
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        js.get_stream("edge_r1_in").await.unwrap().delete_consumer("runner").await.unwrap();
    });
    runner.wait_ready(200, 60);
    let diag = diagnostic(&env);
    rt().block_on(async {
        let c = NatsClient::plain(&nats.url(), "r1", &runner_key(&env)).await.unwrap();
        assert_eq!(c.request("submit", diag, WAIT).await.unwrap()["state"], "completed");
    });
    drop(runner);
}

#[test]
fn a_client_that_stopped_waiting_reads_its_answer_later() {
    let nats = Nats::start();
    let env = nats_env("r1", &nats);
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    runner_key(&env);
    diagnostic(&env);
    // The runner away: the request is stored, and its wait ends first.
    drop(runner);
    let url = nats.url();
    let to = ["--nats", url.as_str(), "--runner", "r1", "--runner-key", "runner.vkey"];
    let cli = env.cli(&[&["submit", "spool-diag.capsule", "--wait", "2"][..], &to[..]].concat());
    assert_ne!(cli.code(), 0, "{}", cli.stdout());
    let err = cli.stderr();
    let handle = err
        .split("Read it later with `edge-runner answer ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no handle in: {err}"))
        .to_owned();
    assert!(handle.contains("@edge_r1_in@"), "{handle}");
    let answer = |handle: &str, wait: &str| env.cli(&[&["answer", handle, "--wait", wait][..], &to[..]].concat());
    // Not answered yet: said so, with the same handle.
    let early = answer(&handle, "1");
    assert_ne!(early.code(), 0, "{}", early.stdout());
    assert!(early.stderr().contains(&format!("edge-runner answer {handle}")), "{}", early.stderr());
    // Back: the runner takes the stored request and answers it; the client
    // that waits again gets it, and so does one that comes after.
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    let later = answer(&handle, "60");
    assert_eq!(later.code(), 0, "{}{}", later.stdout(), later.stderr());
    assert!(later.stdout().contains("state     completed"), "{}", later.stdout());
    let again = answer(&handle, "0");
    assert_eq!(again.code(), 0, "{}{}", again.stdout(), again.stderr());
    // The same id with another request's sequence: that answer is not
    // this request's (it names the sequence it answers), so none is shown.
    let (id, seq) = handle.rsplit_once(':').unwrap();
    let other = format!("{id}:{}", seq.parse::<u64>().unwrap() + 1);
    let wrong = answer(&other, "1");
    assert_ne!(wrong.code(), 0, "{}", wrong.stdout());
    // Nor with the sequence of a stream made at another time (a stream made
    // again starts its sequence over).
    let (source, seq) = handle.rsplit_once(':').unwrap();
    let (stream, created) = source.rsplit_once('@').unwrap();
    let made_again = format!("{stream}@{}:{seq}", created.parse::<u128>().unwrap() + 1);
    let wrong = answer(&made_again, "1");
    assert_ne!(wrong.code(), 0, "{}", wrong.stdout());
    let bad = answer("../../etc", "0");
    assert!(bad.stderr().contains("is not a request handle"), "{}", bad.stderr());
    drop(runner);
    assert_eq!(count(&env, "submission"), 1);
}

#[test]
fn two_runners_on_one_nats_each_take_only_their_own_subjects() {
    let nats = Nats::start();
    let (a, b) = (nats_env("alpha", &nats), nats_env("beta", &nats));
    let (ra, rb) = (Runner::start(&a), Runner::start(&b));
    ra.wait_ready(200, 30);
    rb.wait_ready(200, 30);
    let diag = diagnostic(&a);
    rt().block_on(async {
        let c = NatsClient::plain(&nats.url(), "alpha", &runner_key(&a)).await.unwrap();
        for _ in 0..3 {
            assert_eq!(c.request("submit", diag.clone(), WAIT).await.unwrap()["state"], "completed");
        }
        // Exports are off unless configured: whoever may publish on
        // in.export would get the whole log.
        let e = c.request("export", Vec::new(), WAIT).await.unwrap();
        assert_eq!(e["refused"]["reason_code"], "nats.exports-off", "{e:#}");
    });
    drop((ra, rb));
    assert_eq!(count(&a, "submission"), 3);
    assert_eq!(count(&b, "submission"), 0, "beta took alpha's messages");
}

#[test]
fn approvers_sign_a_waiting_proposal_through_nats_and_it_runs_once_the_quorum_is_met() {
    let nats = Nats::start();
    let env = Env::new();
    env.write_policy_config("log-volume", &[("config", "payments-config", true)]);
    env.write_approvers(&[("alice", &["sre"]), ("carol", &["payments-owner"])], "");
    let mut config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    config.push_str(&format!(
        "\n[nats]\nurl = \"{}\"\nack_wait = \"2s\"\n\n[probes]\nlisten = \"127.0.0.1:0\"\n",
        nats.url()
    ));
    std::fs::write(env.path("runner.toml"), config).unwrap();
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    let key = runner_key(&env);
    env.capsule(
        "nats-tier2",
        test_programs::HOSTILE,
        &Env::hostile_manifest("none", "[[mounts]]\nname = \"config\"\nwritable = true\n"),
        Some("agent"),
    );
    let cli = env.cli(&[
        "submit",
        "nats-tier2.capsule",
        "--nats",
        &nats.url(),
        "--runner",
        "test-runner",
        "--runner-key",
        "runner.vkey",
        "--json",
    ]);
    assert_eq!(cli.code(), 5, "awaiting approval: {}{}", cli.stdout(), cli.stderr());
    let a: Value = serde_json::from_str(&cli.stdout()).unwrap();
    let id = a["id"].as_str().unwrap().to_owned();
    // The proposal's state reaches the outbound stream with its event.
    std::thread::sleep(Duration::from_millis(300));
    // Someone follows the proposal through NATS while the approvals come.
    let watcher = {
        let (dir, url, id) = (env.path(""), nats.url(), id.clone());
        std::thread::spawn(move || {
            Command::new(BIN)
                .args([
                    "proposals",
                    "watch",
                    &id,
                    "--nats",
                    &url,
                    "--runner",
                    "test-runner",
                    "--runner-key",
                    "runner.vkey",
                    "--timeout",
                    "60",
                ])
                .current_dir(dir)
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // `approve ID --nats …` as `who`, writing the approval to `out`.
    let url = nats.url();
    let approve = |who: &str, out: &str| {
        let (principal, key) = (format!("{who}@bank.example"), format!("keys/{who}"));
        let args = [
            "approve",
            &id,
            "--nats",
            &url,
            "--runner",
            "test-runner",
            "--runner-key",
            "runner.vkey",
            "--principal",
            &principal,
            "--ssh-key",
            &key,
            "--yes",
            "-o",
            out,
        ];
        env.cli(&args)
    };
    // Someone allowed to publish on the runner's outbound subjects puts
    // another waiting proposal's genuine document (and preview) where this
    // one's are read — bare, then with the runner's genuine signature
    // headers. Neither is the runner's document for this proposal (the
    // signature binds the subject), and nothing is signed.
    let other = env.cli(&[
        "submit",
        "nats-tier2.capsule",
        "--nats",
        &url,
        "--runner",
        "test-runner",
        "--runner-key",
        "runner.vkey",
        "--json",
    ]);
    assert_eq!(other.code(), 5, "{}{}", other.stdout(), other.stderr());
    let other: Value = serde_json::from_str(&other.stdout()).unwrap();
    let other = other["id"].as_str().unwrap().to_owned();
    assert_ne!(other, id);
    // What the runner published for a proposal, as stored (headers and all).
    let stored = |of: &str| {
        rt().block_on(async {
            let js = jetstream::new(async_nats::connect(&url).await.unwrap());
            let stream = js.get_stream("edge_test-runner_out").await.unwrap();
            let mut out = Vec::new();
            for kind in ["proposal", "preview"] {
                let subject = format!("edge.test-runner.out.{kind}.{of}");
                if let Ok(m) = stream.get_last_raw_message_by_subject(&subject).await {
                    out.push((kind, m.headers, m.payload));
                }
            }
            out
        })
    };
    // Publish those messages on proposal `target`'s subjects, with their headers or bare.
    let publish = |target: &str, messages: &[(&str, async_nats::HeaderMap, bytes::Bytes)], headers: bool| {
        rt().block_on(async {
            let js = jetstream::new(async_nats::connect(&url).await.unwrap());
            for (kind, h, body) in messages {
                let subject = format!("edge.test-runner.out.{kind}.{target}");
                let h = if headers { h.clone() } else { async_nats::HeaderMap::new() };
                js.publish_with_headers(subject, h, body.clone()).await.unwrap().await.unwrap();
            }
        })
    };
    let (genuine, swapped_in) = (stored(&id), stored(&other));
    assert_eq!(genuine.len(), 2, "a document and a preview");
    for (with_headers, why) in [(false, "the message is not signed"), (true, "the signature does not verify")] {
        publish(&id, &swapped_in, with_headers);
        let swapped = approve("alice", "swapped.json");
        assert_ne!(swapped.code(), 0, "{}", swapped.stdout());
        assert!(
            swapped.stderr().contains(&format!(
                "the proposal of {id} on edge.test-runner.out.proposal.{id} is not runner `test-runner`'s"
            )) && swapped.stderr().contains(why),
            "{}",
            swapped.stderr()
        );
        assert!(!env.path("swapped.json").exists(), "an approval was written for the swapped document");
    }
    assert_eq!(count(&env, "approval-accepted"), 0);
    // The genuine document back where it is read: the approvals go on.
    publish(&id, &genuine, true);
    let mut last = String::new();
    for who in ["alice", "carol"] {
        let c = approve(who, &format!("{who}.json"));
        assert_eq!(c.code(), 0, "{}{}", c.stdout(), c.stderr());
        last = c.stdout();
    }
    assert!(last.contains("the proposal ran: committed"), "{last}");
    // Carol's approval delivered again (her answer lost): answered as kept,
    // with the run it started and its state, and not run again.
    let again = rt().block_on(async {
        let c = NatsClient::plain(&url, "test-runner", &key).await.unwrap();
        c.request("approve", std::fs::read(env.path("carol.json")).unwrap(), WAIT).await.unwrap()
    });
    assert_eq!(again["state"], "committed", "{again:#}");
    assert!(again["run"].as_str().is_some_and(|r| r.starts_with("r-")), "{again:#}");
    assert!(again["receipt"].as_str().is_some_and(|r| !r.is_empty()), "{again:#}");
    assert!(again.get("records").is_none() && again.get("refused").is_none(), "{again:#}");
    let watched = watcher.join().unwrap();
    let text = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(watched.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&watched.stderr));
    assert!(text.contains("awaiting-approval") && text.contains("committed"), "{text}");
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "ok");
    // Nothing more is signed for it: it no longer waits.
    std::thread::sleep(Duration::from_millis(300));
    let c = approve("alice", "late.json");
    assert_ne!(c.code(), 0);
    assert!(c.stderr().contains("not awaiting approval"), "{}", c.stderr());
    drop(runner);
    assert_eq!(count(&env, "committed"), 1);
}

#[test]
fn with_nats_permissions_as_documented_a_client_reads_only_its_own_answers() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("certs")).unwrap();
    crate::server::pki(&env.path("tls"));
    // The grants docs/operations.md gives a client with reply token TOKEN
    // (users mapped from their certificates: the runner is `agent`).
    let client = |cn: &str, token: &str| {
        format!(
            r#"{{ user: "CN={cn}", permissions: {{
                publish: ["edge.test-runner.in.>", "$JS.API.STREAM.INFO.edge_test-runner_in",
                          "$JS.API.DIRECT.GET.edge_test-runner_out.edge.test-runner.out.answer.{token}.>"],
                subscribe: ["edge.test-runner.out.answer.{token}.*", "_INBOX_{token}.>"] }} }}"#
        )
    };
    let auth = format!(
        "authorization {{ users = [ {{ user: \"CN=agent\" }}, {}, {} ] }}",
        client("approver", "alice"),
        client("intruder", "mallory")
    );
    let nats = Nats::start_with_auth(Some(&env.path("tls")), Some(auth));
    env.write_config(&format!(
        "[mounts.certs]\npath = \"certs\"\nwritable = false\n\n[nats]\nurl = \"{}\"\nca = \"tls/ca.pem\"\n\
         cert = \"tls/agent.pem\"\nkey = \"tls/agent.key\"\nack_wait = \"2s\"\n\n[probes]\nlisten = \"127.0.0.1:0\"\n",
        nats.url()
    ));
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    diagnostic(&env);
    runner_key(&env);
    let url = nats.url();
    let as_user = |cert: &str, token: &str| {
        let (pem, key) = (format!("tls/{cert}.pem"), format!("tls/{cert}.key"));
        [
            "--nats",
            url.as_str(),
            "--runner",
            "test-runner",
            "--runner-key",
            "runner.vkey",
            "--nats-ca",
            "tls/ca.pem",
            "--nats-cert",
            &pem,
            "--nats-key",
            &key,
            "--nats-reply",
            token,
        ]
        .map(str::to_owned)
    };
    // Alice submits and reads her answer.
    let alice = as_user("approver", "alice");
    let args: Vec<&str> =
        ["submit", "spool-diag.capsule", "--wait", "60"].into_iter().chain(alice.iter().map(String::as_str)).collect();
    let ok = env.cli(&args);
    assert_eq!(ok.code(), 0, "{}{}", ok.stdout(), ok.stderr());
    assert!(ok.stdout().contains("state     completed"), "{}", ok.stdout());
    // Mallory, with her own certificate, claims alice's reply token: her
    // request is stored, but the answer is under alice's subjects, which
    // she may neither subscribe to nor get; nor can she read alice's
    // earlier answer by its handle.
    let mallory = as_user("intruder", "alice");
    let args: Vec<&str> =
        ["submit", "spool-diag.capsule", "--wait", "5"].into_iter().chain(mallory.iter().map(String::as_str)).collect();
    let denied = env.cli(&args);
    assert_ne!(denied.code(), 0, "{}", denied.stdout());
    assert!(!denied.stdout().contains("completed"), "{}", denied.stdout());
    let handle =
        denied.stderr().split("edge-runner answer ").nth(1).and_then(|r| r.split('`').next()).map(str::to_owned);
    // (The wait may end before a handle is printed: the confirmation of her
    // publish is a reply to her own inbox prefix, which she may not read.)
    if let Some(handle) = handle {
        let args: Vec<&str> =
            ["answer", handle.as_str(), "--wait", "2"].into_iter().chain(mallory.iter().map(String::as_str)).collect();
        let read = env.cli(&args);
        assert_ne!(read.code(), 0, "{}", read.stdout());
    }
    // With her own token she is served as anyone: the grants are right.
    let mallory = as_user("intruder", "mallory");
    let args: Vec<&str> = ["submit", "spool-diag.capsule", "--wait", "60"]
        .into_iter()
        .chain(mallory.iter().map(String::as_str))
        .collect();
    let own = env.cli(&args);
    assert_eq!(own.code(), 0, "{}{}", own.stdout(), own.stderr());
    drop(runner);
}

#[test]
fn the_runner_dials_out_over_tls_with_its_client_certificate_and_a_foreign_one_gets_nowhere() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("certs")).unwrap();
    crate::server::pki(&env.path("tls"));
    let nats = Nats::start_with(Some(&env.path("tls")));
    let config = |cert: &str| {
        env.write_config(&format!(
            "[mounts.certs]\npath = \"certs\"\nwritable = false\n\n[nats]\nurl = \"{}\"\nca = \"tls/ca.pem\"\n\
             cert = \"tls/{cert}.pem\"\nkey = \"tls/{cert}.key\"\nack_wait = \"2s\"\n\n[probes]\nlisten = \"127.0.0.1:0\"\n",
            nats.url()
        ));
    };
    config("agent");
    let runner = Runner::start(&env);
    runner.wait_ready(200, 30);
    diagnostic(&env);
    runner_key(&env);
    let tls_flags = ["--nats-ca", "tls/ca.pem", "--nats-cert", "tls/agent.pem", "--nats-key", "tls/agent.key"];
    let url = nats.url();
    let args = [
        "submit",
        "spool-diag.capsule",
        "--nats",
        &url,
        "--runner",
        "test-runner",
        "--runner-key",
        "runner.vkey",
        "--wait",
        "60",
    ];
    let ok = env.cli(&[&args[..], &tls_flags[..]].concat());
    assert_eq!(ok.code(), 0, "{}{}", ok.stdout(), ok.stderr());
    assert!(ok.stdout().contains("state     completed"), "{}", ok.stdout());
    // A client without a certificate is not let in by the server.
    let refused = env.cli(&[&args[..], &tls_flags[..2]].concat());
    assert_ne!(refused.code(), 0, "{}", refused.stdout());
    drop(runner);
    // A runner holding a certificate of another CA never connects: it runs
    // on, says so, and takes nothing.
    config("foreign");
    let runner = Runner::start(&env);
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = runner.ready();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nats"), "{body}");
    drop(runner);
    assert_eq!(count(&env, "submission"), 1);
}
