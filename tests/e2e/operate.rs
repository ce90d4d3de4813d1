//! Running the runner for a year: who may read what, reload without a
//! restart (SIGHUP and `edge-runner reload`), probes.

use hyper::StatusCode;
use serde_json::Value;

use crate::server::{Server, capsule, rt, setup, show, sign, submit};

/// Every evidence record, from an export by the operator, verified in full.
async fn records(server: &Server, env: &crate::harness::Env) -> Vec<Value> {
    let mut alice = server.client(env, "approver");
    let r = alice.get("/v1/evidence/export").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
    let key = runner_key(env);
    let keys = edge_evidence::parse_keys(&key).unwrap();
    let v = edge_evidence::verify(&r.body, &keys, edge_evidence::Level::Full).unwrap();
    v.records.iter().map(|r| serde_json::to_value(r).unwrap()).collect()
}

/// The runner's verification key, read once (the config may be broken later).
fn runner_key(env: &crate::harness::Env) -> String {
    let path = env.path("runner.vkey");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return k;
    }
    let k = env.cli(&["evidence", "runner-key", "--config", "runner.toml"]).success().stdout();
    std::fs::write(path, &k).unwrap();
    k
}

#[test]
fn who_may_read_what_is_granted_per_identity_or_role() {
    let env = setup(64);
    // The intruder's certificate is valid and it is an agent too, but it
    // submitted nothing; it has no [server.access] grant.
    let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
    std::fs::write(
        env.path("runner.toml"),
        config.replace("agents = [\"", "agents = [\"spiffe://test.example/agent/intruder\", \""),
    )
    .unwrap();
    let server = Server::start(&env);
    let tier0 = capsule(&env, "none", false);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let v = submit(&mut agent, &tier0).await.json().unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        // The agent follows its own proposal…
        assert_eq!(show(&mut agent, &id).await["state"], "committed");
        let mine = agent.get("/v1/proposals").await.unwrap().json().unwrap();
        assert_eq!(mine["proposals"].as_array().unwrap().len(), 1);
        // …but may not download the evidence, read metrics or reload.
        for (method, path, grant) in [
            ("GET", "/v1/evidence/export", "evidence"),
            ("GET", "/v1/evidence/checkpoint", "evidence"),
            ("GET", "/metrics", "metrics"),
            ("POST", "/v1/reload", "reload"),
        ] {
            let r = if method == "GET" {
                agent.get(path).await.unwrap()
            } else {
                agent.post(path, Vec::new(), "application/json").await.unwrap()
            };
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
            assert!(r.error_message().contains(&format!("server.access.{grant}")), "{}", r.error_message());
        }
        // Another agent sees none of it: not in its list, and the proposal
        // is answered as unknown (its existence is not confirmed).
        let mut other = server.client(&env, "intruder");
        let theirs = other.get("/v1/proposals").await.unwrap().json().unwrap();
        assert!(theirs["proposals"].as_array().unwrap().is_empty(), "{theirs:#}");
        for path in [format!("/v1/proposals/{id}"), format!("/v1/proposals/{id}/document")] {
            let r = other.get(&path).await.unwrap();
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        }
        let r = other.post(&format!("/v1/proposals/{id}/approvals"), b"{}".to_vec(), "application/json").await;
        assert_eq!(r.unwrap().status, StatusCode::NOT_FOUND);
        // Health and readiness answer any valid certificate.
        assert_eq!(other.get("/healthz").await.unwrap().status, StatusCode::OK);
        // The operator (by role) reads everything.
        let mut alice = server.client(&env, "approver");
        let all = alice.get("/v1/proposals").await.unwrap().json().unwrap();
        assert_eq!(all["proposals"].as_array().unwrap().len(), 1);
        assert_eq!(alice.get("/metrics").await.unwrap().status, StatusCode::OK);
        assert!(!records(&server, &env).await.is_empty());
    });
}

#[test]
fn an_identity_not_granted_anything_sees_nothing() {
    let env = setup(64);
    let server = Server::start(&env);
    rt().block_on(async {
        // Valid certificate, not an agent, no grant.
        let mut c = server.client(&env, "intruder");
        let r = c.get("/v1/proposals").await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.error_message().contains("server.access.proposals"), "{}", r.error_message());
    });
}

#[test]
fn reload_applies_a_new_approver_without_a_restart_and_a_bad_one_changes_nothing() {
    let env = setup(64);
    let mut server = Server::start(&env);
    let tier2 = capsule(&env, "none", true);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let mut alice = server.client(&env, "approver");
        let v = submit(&mut agent, &tier2).await.json().unwrap();
        assert_eq!(v["state"], "awaiting-approval", "{v:#}");
        let id = v["id"].as_str().unwrap().to_owned();
        runner_key(&env);

        // Dave is not an approver yet: his approval is not kept.
        env.write_approvers(
            &[("alice", &["sre"]), ("carol", &["payments-owner"]), ("bob", &["sre"]), ("dave", &["sre"])],
            "",
        );
        // (On disk now, but not in force: the runner has not reloaded.)
        let dave = sign(&env, &mut alice, &id, "dave", "approve").await;
        let r = alice.post(&format!("/v1/proposals/{id}/approvals"), dave.clone(), "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.error_message());
        // The answer says what to do next, to someone who already edited the file.
        assert!(r.error_message().contains("edge-runner reload"), "{}", r.error_message());

        // The operator reloads: no restart, and it counts now.
        let r = alice.post("/v1/reload", Vec::new(), "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
        let v = r.json().unwrap();
        assert_eq!(v["applied"], true, "{v:#}");
        assert_ne!(v["old"]["registry"], v["new"]["registry"], "{v:#}");
        assert_eq!(v["old"]["policy"], v["new"]["policy"], "{v:#}");
        let r = alice.post(&format!("/v1/proposals/{id}/approvals"), dave, "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.error_message());
        let p = show(&mut alice, &id).await;
        assert_eq!(p["quorum"]["approvals"][0]["principal"], "dave@bank.example", "{p:#}");
        assert_eq!(p["quorum"]["approvals"][0]["counted"], true, "{p:#}");

        // A broken policy, by SIGHUP: refused, recorded, the server lives on
        // and decides with the policy it had.
        let good = std::fs::read_to_string(env.path("policy.toml")).unwrap();
        std::fs::write(env.path("policy.toml"), "version = 1\n[tiers.0]\napprovals = 3\n").unwrap();
        server.signal("HUP");
        let mut refused = None;
        for _ in 0..100 {
            let recs = records(&server, &env).await;
            refused = recs.into_iter().find(|r| r["event"]["type"] == "reload-refused");
            if refused.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let refused = refused.expect("a reload-refused record after SIGHUP");
        assert_eq!(refused["event"]["trigger"], "sighup");
        assert!(refused["event"]["error"].as_str().unwrap().contains("tiers.0.approvals"), "{refused:#}");
        assert!(server.alive(), "SIGHUP must not stop the server");
        assert_eq!(alice.get("/healthz").await.unwrap().status, StatusCode::OK);
        // Over the API the refusal is a 422 naming the cause.
        let r = alice.post("/v1/reload", Vec::new(), "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.json().unwrap()["error"].as_str().unwrap().contains("tiers.0.approvals"));
        std::fs::write(env.path("policy.toml"), good).unwrap();
        let reloads = records(&server, &env).await;
        let applied: Vec<&Value> = reloads.iter().filter(|r| r["event"]["type"] == "config-reloaded").collect();
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0]["run"], "runner");
        assert_eq!(applied[0]["event"]["trigger"], "api:spiffe://test.example/people/alice");
    });
    // The CLI says the same, and exits non-zero on a refusal.
    let tls = env.path("tls");
    let args = |cmd: &str| {
        vec![
            cmd.to_owned(),
            "--server".into(),
            server.url.clone(),
            "--ca".into(),
            tls.join("ca.pem").display().to_string(),
            "--cert".into(),
            tls.join("approver.pem").display().to_string(),
            "--key".into(),
            tls.join("approver.key").display().to_string(),
        ]
    };
    let a = args("reload");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let ok = env.cli(&a).success();
    assert!(ok.stdout().contains("reloaded"), "{}", ok.stdout());
    std::fs::write(env.path("graph.toml"), "not [ toml").unwrap();
    let bad = env.cli(&a);
    assert_eq!(bad.code(), 3, "{}", bad.stdout());
    assert!(bad.stdout().contains("REFUSED"), "{}", bad.stdout());
}

#[test]
fn sighup_while_the_runner_starts_does_not_end_it() {
    use std::io::BufRead as _;
    let env = setup(64);
    // A large graph makes the start long enough to be hit: read and
    // compiled with the config, then the log is opened.
    let mut graph = std::fs::read_to_string(env.path("graph.toml")).unwrap();
    for i in 0..5_000 {
        graph.push_str(&format!(
            "\n[[nodes]]\nid = \"svc-{i:05}\"\nkind = \"service\"\nowner = \"team\"\ncriticality = \"low\"\n"
        ));
    }
    std::fs::write(env.path("graph.toml"), graph).unwrap();
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--config", "runner.toml"])
        .current_dir(env.path(""))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    // Past the dynamic loader (before `main` nothing can catch a signal),
    // then a SIGHUP every 10 ms until the runner says it listens.
    std::thread::sleep(std::time::Duration::from_millis(30));
    let mut sent = 0;
    let line = loop {
        if let Ok(line) = rx.try_recv() {
            break line;
        }
        if child.try_wait().unwrap().is_some() {
            panic!("serve ended after {sent} SIGHUP(s) during its start");
        }
        assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        sent += 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // End of output without the line: the process is gone.
    assert!(!line.is_empty(), "serve ended after {sent} SIGHUP(s) during its start");
    assert!(sent >= 3, "the start was too quick to test ({sent} SIGHUPs sent)");
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("serve printed `{line}`")).to_owned();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "serve ended after {sent} SIGHUP(s)");
    let tls = env.path("tls");
    rt().block_on(async {
        let mut c = edge_runner::server::client::Client::new(
            &url,
            &tls.join("ca.pem"),
            &tls.join("agent.pem"),
            &tls.join("agent.key"),
        )
        .unwrap();
        assert_eq!(c.get("/healthz").await.unwrap().status, StatusCode::OK);
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_run_in_flight_keeps_the_policy_it_was_decided_with_across_a_reload() {
    let env = setup(64);
    let server = Server::start(&env);
    let url = server.url.clone();
    // A tier-0 run, held in its apply for 1.5 s.
    let slow = capsule(&env, "slow-apply", false);
    let submitter = crate::server::submit_until_apply_starts(&env, &url, &slow);
    // Meanwhile the policy changes: every write now needs one sre.
    let old_policy = std::fs::read_to_string(env.path("policy.toml")).unwrap();
    let old_digest = edge_core::Sha256Digest::of(old_policy.as_bytes()).to_string();
    std::fs::write(
        env.path("policy.toml"),
        format!("{old_policy}\n[[rules]]\nname = \"any-write\"\nwhen = {{ writes = true }}\ntier = 1\nreason = \"writes need one sre\"\n"),
    )
    .unwrap();
    rt().block_on(async {
        let mut alice = server.client(&env, "approver");
        let r = alice.post("/v1/reload", Vec::new(), "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
        assert_eq!(r.json().unwrap()["applied"], true);
    });
    // The run in flight ends as it was decided: tier 0, committed, under
    // the old policy, authorized without a human.
    let reply = submitter.join().unwrap().unwrap().json().unwrap();
    assert_eq!(reply["state"], "committed", "{reply:#}");
    assert_eq!(reply["tier"], 0);
    let run = reply["run"].as_str().unwrap().to_owned();
    rt().block_on(async {
        let recs = records(&server, &env).await;
        let of_run: Vec<&Value> = recs.iter().filter(|r| r["run"] == run.as_str()).collect();
        let decision = of_run.iter().find(|r| r["event"]["type"] == "decision").unwrap();
        assert_eq!(decision["event"]["decision"]["policy"], old_digest.as_str(), "{decision:#}");
        let authorized = of_run.iter().find(|r| r["event"]["type"] == "authorized").unwrap();
        assert_eq!(authorized["event"]["tier"], 0);
        // The reload is recorded before the run's commit.
        let reload = recs.iter().find(|r| r["event"]["type"] == "config-reloaded").unwrap();
        let committed = of_run.iter().find(|r| r["event"]["type"] == "committed").unwrap();
        assert!(reload["seq"].as_u64() < committed["seq"].as_u64(), "the reload happened while the run was in flight");
        // The next submission is decided under the new policy.
        std::fs::remove_file(env.path("data/ok.txt")).unwrap();
        let mut agent = server.client(&env, "agent");
        let v = submit(&mut agent, &capsule(&env, "none", false)).await.json().unwrap();
        assert_eq!(v["state"], "awaiting-approval", "{v:#}");
        assert_eq!(v["tier"], 1);
    });
}

#[test]
fn a_reload_applies_new_agents_and_read_grants_without_a_restart() {
    let env = setup(64);
    let server = Server::start(&env);
    let intruder = "spiffe://test.example/agent/intruder";
    rt().block_on(async {
        let mut other = server.client(&env, "intruder");
        let mut alice = server.client(&env, "approver");
        assert_eq!(other.get("/v1/evidence/export").await.unwrap().status, StatusCode::FORBIDDEN);
        let tier0 = capsule(&env, "none", false);
        assert_eq!(submit(&mut other, &tier0).await.status, StatusCode::FORBIDDEN, "not an agent yet");

        // The operator grants it the evidence and makes it an agent.
        let config = std::fs::read_to_string(env.path("runner.toml")).unwrap();
        let granted = config
            .replace(
                "access.evidence = [\"role:operators\"]",
                &format!("access.evidence = [\"role:operators\", \"{intruder}\"]"),
            )
            .replace("agents = [\"", &format!("agents = [\"{intruder}\", \""));
        assert_ne!(granted, config);
        std::fs::write(env.path("runner.toml"), granted).unwrap();
        // On disk, not in force yet.
        assert_eq!(other.get("/v1/evidence/export").await.unwrap().status, StatusCode::FORBIDDEN);
        let r = alice.post("/v1/reload", Vec::new(), "application/json").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
        let v = r.json().unwrap();
        assert_eq!(v["applied"], true, "{v:#}");
        assert!(v.get("restart_needed").is_none(), "agents and grants need no restart: {v:#}");
        assert_ne!(v["old"]["config"], v["new"]["config"], "the config digest names the change");
        assert_eq!(other.get("/v1/evidence/export").await.unwrap().status, StatusCode::OK);
        assert_eq!(submit(&mut other, &tier0).await.status, StatusCode::CREATED);

        // And taken away again.
        std::fs::write(env.path("runner.toml"), config).unwrap();
        let r = alice.post("/v1/reload", Vec::new(), "application/json").await.unwrap();
        assert_eq!(r.json().unwrap()["applied"], true);
        assert_eq!(other.get("/v1/evidence/export").await.unwrap().status, StatusCode::FORBIDDEN);
    });
}

#[test]
fn evidence_fetch_streams_the_export_to_a_file_that_appears_only_whole() {
    let env = setup(64);
    let server = Server::start(&env);
    let tier0 = capsule(&env, "none", false);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        assert_eq!(submit(&mut agent, &tier0).await.status, StatusCode::CREATED);
    });
    let tls = env.path("tls");
    let fetch = || {
        let (ca, cert, key) = (tls.join("ca.pem"), tls.join("approver.pem"), tls.join("approver.key"));
        let args = ["evidence", "fetch", "--server", &server.url, "--ca", ca.to_str().unwrap()];
        let args = [&args[..], &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap(), "-o", "got.bundle"]]
            .concat();
        env.cli(&args)
    };
    let ok = fetch().success();
    assert!(ok.stdout().contains("bytes to got.bundle"), "{}", ok.stdout());
    let verified = env.cli(&["evidence", "verify", "got.bundle", "--config", "runner.toml"]).success();
    assert!(verified.stdout().contains("verified (Full)"), "{}", verified.stdout());
    let whole = std::fs::read(env.path("got.bundle")).unwrap();

    // An artifact altered in the store: the export fails, the fetch says
    // why, and the bundle fetched before is untouched, with no partial file.
    let db = rusqlite::Connection::open(env.path("state/evidence/evidence.db")).unwrap();
    db.execute_batch("DROP TRIGGER artifacts_append_only_u").unwrap();
    db.execute(
        "UPDATE artifacts SET bytes = CAST('forged' AS BLOB) WHERE rowid = (SELECT max(rowid) FROM artifacts)",
        [],
    )
    .unwrap();
    drop(db);
    let failed = fetch();
    assert_ne!(failed.code(), 0);
    assert!(failed.stderr().contains("does not match its digest"), "{}", failed.stderr());
    assert_eq!(std::fs::read(env.path("got.bundle")).unwrap(), whole);
    assert!(!env.path(".got.bundle.partial").exists());
}

#[test]
fn a_runs_receipt_comes_from_the_store_on_request_and_proves_its_terminal_record() {
    use edge_core::merkle;
    use edge_core::note::{self, Checkpoint, TlogProof};
    let env = setup(64);
    let server = Server::start(&env);
    let tier0 = capsule(&env, "none", false);
    rt().block_on(async {
        let mut agent = server.client(&env, "agent");
        let answer = submit(&mut agent, &tier0).await.json().unwrap();
        let id = answer["id"].as_str().unwrap().to_owned();
        // More runs after it: the receipt asked for later names a newer checkpoint.
        for _ in 0..3 {
            assert_eq!(submit(&mut agent, &tier0).await.status, StatusCode::CREATED);
        }
        let r = agent.get(&format!("/v1/proposals/{id}/receipt")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.error_message());
        let later = TlogProof::parse(std::str::from_utf8(&r.body).unwrap()).unwrap();
        let first = TlogProof::parse(answer["receipt"].as_str().unwrap()).unwrap();
        assert_eq!(later.index, first.index, "the same terminal record");

        // It proves that record is in the tree the runner signed.
        let keys = edge_evidence::parse_keys(&runner_key(&env)).unwrap();
        let cp = Checkpoint::parse(&note::open(&later.checkpoint, &keys).unwrap().text).unwrap();
        assert!(cp.size > later.index);
        let was = Checkpoint::parse(&note::open(&first.checkpoint, &keys).unwrap().text).unwrap();
        assert!(cp.size > was.size, "made now, from the newest checkpoint ({} then, {} now)", was.size, cp.size);
        let mut alice = server.client(&env, "approver");
        let bundle = alice.get("/v1/evidence/export").await.unwrap().body;
        let line = std::str::from_utf8(&bundle).unwrap().lines().nth(2 + later.index as usize).unwrap().to_owned();
        let record: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["event"]["type"], "completed");
        assert_eq!(record["run"].as_str().map(edge_core::lifecycle::proposal_id), Some(id.clone()));
        let hashes: Vec<Vec<u8>> = later.hashes.iter().map(|h| h.to_vec()).collect();
        merkle::verify_inclusion(later.index, cp.size, &merkle::leaf_hash(line.as_bytes()), &hashes, &cp.root)
            .expect("the receipt proves the record");
        // A record that is not that one does not verify against it.
        let other = std::str::from_utf8(&bundle).unwrap().lines().nth(1 + later.index as usize).unwrap().to_owned();
        assert!(
            merkle::verify_inclusion(later.index, cp.size, &merkle::leaf_hash(other.as_bytes()), &hashes, &cp.root)
                .is_err()
        );

        // Unknown proposals have none; another agent may not ask for it.
        let none = agent.get("/v1/proposals/p-unknown/receipt").await.unwrap();
        assert_eq!(none.status, StatusCode::NOT_FOUND);
        let mut intruder = server.client(&env, "intruder");
        let r = intruder.get(&format!("/v1/proposals/{id}/receipt")).await.unwrap();
        assert!(matches!(r.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN), "{}", r.status);
    });
    // No receipt file per run is kept by the daemon.
    assert!(std::fs::read_dir(env.path("state/receipts")).map_or(true, |mut d| d.next().is_none()));
}
