//! Hostile input: every attack must end refused, with a clear error naming
//! the cause, a stable reason code in the evidence log, and no host file
//! changed.

use crate::harness::{Env, Run};

/// Run `attack`, assert it was refused for `reason`, recorded, and changed nothing.
fn refused(attack: &str, reason: &str) -> Run {
    refused_with(attack, reason, |m| m)
}

/// As [`refused`], with the manifest adjusted first.
fn refused_with(attack: &str, reason: &str, adjust: impl Fn(String) -> String) -> Run {
    let env = Env::new();
    let manifest = adjust(Env::hostile_manifest(attack, ""));
    let capsule = env.capsule(&format!("hostile-{attack}"), test_programs::HOSTILE, &manifest, Some("agent"));
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, reason, &before);
    run
}

pub fn assert_refused(env: &Env, run: &Run, reason: &str, before: &std::collections::BTreeMap<String, String>) {
    assert_eq!(run.outcome(), "refused", "report: {:#}\nstderr: {}", run.report, run.stderr);
    assert_eq!(run.reason(), reason, "detail: {}", run.detail());
    assert_eq!(run.code, 3, "exit code for a refusal");
    assert!(!run.detail().is_empty(), "a refusal must say why");
    assert_eq!(run.recorded_reason().as_deref(), Some(reason), "the refusal is in the evidence log");
    assert_eq!(run.events().last().map(String::as_str), Some("completed"), "the run ends in a terminal record");
    assert_eq!(&env.host_files(), before, "no host file may change");
    // The log on disk verifies and holds the same run.
    let log = env.evidence();
    assert!(log.as_array().unwrap().iter().any(|r| r["event"]["reason_code"] == reason));
}

#[test]
fn plan_naming_a_parent_directory_is_refused() {
    let run = refused("plan-dotdot", "plan.path_escape");
    assert!(run.detail().contains(".."), "{}", run.detail());
}

#[test]
fn plan_naming_an_absolute_path_is_refused() {
    let run = refused("plan-absolute", "plan.path_escape");
    assert!(run.detail().contains("absolute"), "{}", run.detail());
}

#[test]
fn reading_through_dotdot_is_blocked_by_the_sandbox() {
    let run = refused("read-dotdot", "capsule.error");
    assert!(run.detail().contains("escape blocked"), "{}", run.detail());
}

#[test]
fn reading_through_a_symlink_out_of_the_mount_is_blocked() {
    let run = refused("read-symlink", "capsule.error");
    assert!(run.detail().contains("escape blocked"), "{}", run.detail());
}

#[test]
fn writing_through_dotdot_is_blocked() {
    let run = refused("write-dotdot", "capsule.error");
    assert!(run.detail().contains("blocked"), "{}", run.detail());
}

#[test]
fn writing_an_absolute_host_path_is_blocked() {
    let run = refused("write-absolute", "capsule.error");
    assert!(run.detail().contains("blocked"), "{}", run.detail());
    assert!(!std::path::Path::new("/tmp/edge-runner-pwned.txt").exists());
}

#[test]
fn writing_through_a_symlink_out_of_the_mount_is_blocked() {
    let run = refused("write-symlink", "capsule.error");
    assert!(run.detail().contains("blocked"), "{}", run.detail());
}

#[test]
fn writing_to_a_read_only_mount_is_blocked() {
    let run = refused("write-readonly", "capsule.error");
    assert!(run.detail().contains("blocked"), "{}", run.detail());
}

#[test]
fn writing_during_plan_is_blocked() {
    let run = refused("write-in-plan", "capsule.error");
    assert!(run.detail().contains("write blocked"), "{}", run.detail());
}

#[test]
fn an_infinite_loop_hits_the_cpu_limit() {
    let run = refused("loop", "sandbox.cpu_limit");
    assert!(run.detail().contains("CPU budget"), "{}", run.detail());
}

#[test]
fn an_infinite_loop_in_apply_commits_nothing() {
    refused("apply-loop", "sandbox.cpu_limit");
}

#[test]
fn sleeping_forever_hits_the_wall_time_limit() {
    let run = refused("sleep", "sandbox.wall_time");
    assert!(run.detail().contains("wall-time"), "{}", run.detail());
}

#[test]
fn a_host_call_blocked_on_a_fifo_still_hits_the_wall_time_limit() {
    let env = Env::new();
    // Someone put a FIFO in a read-only mount; nobody will ever write to it,
    // so opening it blocks the thread doing the guest's file I/O.
    let fifo = env.path("ro/pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let started = std::time::Instant::now();
    let run = env.exec(&env.hostile("read-fifo"));
    let took = started.elapsed();
    assert_eq!(run.outcome(), "refused", "{:#}\n{}", run.report, run.stderr);
    assert_eq!(run.reason(), "sandbox.wall_time", "{}", run.detail());
    // wall_ms = 2500 (FAST_LIMITS) plus the grace for a blocked host call.
    assert!(took < std::time::Duration::from_secs(8), "the run took {took:?}");
    assert!(!env.path("data/ok.txt").exists());
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let run = refused("alloc", "sandbox.memory_limit");
    assert!(run.detail().contains("memory"), "{}", run.detail());
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    refused("recurse", "sandbox.stack_overflow");
}

#[test]
fn flooding_stdout_hits_the_output_limit() {
    let run = refused("flood-stdout", "sandbox.output_limit");
    assert!(run.detail().contains("output limit"), "{}", run.detail());
}

#[test]
fn flooding_the_host_log_hits_the_output_limit() {
    refused("flood-log", "sandbox.output_limit");
}

#[test]
fn a_huge_plan_hits_the_hostcall_limit() {
    // Enough memory to build the plan: the limit that must stop it is the
    // size of what it hands to the host.
    let run = refused_with("huge-plan", "sandbox.hostcall_limit", |m| {
        m.replace("memory_mib = 32", "memory_mib = 256")
            .replace("cpu_ms = 700", "cpu_ms = 20000")
            .replace("wall_ms = 2500", "wall_ms = 40000")
    });
    assert!(run.detail().contains("MiB"), "{}", run.detail());
}

#[test]
fn too_many_changes_is_refused() {
    let run = refused("many-changes", "plan.too_large");
    assert!(run.detail().contains("5000"), "{}", run.detail());
}

#[test]
fn a_change_outside_the_plan_is_not_committed() {
    let run = refused("outside-plan", "apply.outside_plan");
    assert!(run.detail().contains("extra.txt"), "{}", run.detail());
    assert!(run.events().contains(&"applied".to_owned()), "the real diff is recorded");
}

#[test]
fn content_other_than_planned_is_not_committed() {
    let run = refused("lie-digest", "apply.diff_mismatch");
    assert!(run.detail().contains("ok.txt"), "{}", run.detail());
}

#[test]
fn opening_a_socket_is_refused_before_it_runs() {
    let env = Env::new();
    // Declaring the socket imports does not help: the runner never grants them.
    let manifest = format!(
        "name = \"net\"\nversion = \"1\"\nkind = \"diagnostic\"\n{}\n",
        crate::harness::STD_IMPORTS.replace(
            "\"wasi:random/random\",",
            "\"wasi:random/random\", \"wasi:sockets/network\", \"wasi:sockets/instance-network\", \
             \"wasi:sockets/tcp\", \"wasi:sockets/tcp-create-socket\", \"wasi:sockets/udp\", \
             \"wasi:sockets/udp-create-socket\", \"wasi:sockets/ip-name-lookup\","
        )
    );
    let capsule = env.capsule("net", test_programs::HOSTILE_NET, &manifest, Some("agent"));
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "admission.import_not_granted", &before);
    assert!(run.detail().contains("wasi:sockets"), "{}", run.detail());
    assert!(!run.events().contains(&"planned".to_owned()), "it never ran");
}

#[test]
fn importing_an_undeclared_interface_is_refused_before_it_runs() {
    let env = Env::new();
    // `capsule pack` already refuses it; build the file with the library to
    // get past the packer, as an attacker would.
    let wasm = std::fs::read(test_programs::HOSTILE_IMPORT).unwrap();
    let manifest = edge_core::manifest::Manifest::from_authoring_toml(
        &format!("name = \"imp\"\nversion = \"1\"\nkind = \"diagnostic\"\n{}", crate::harness::STD_IMPORTS),
        edge_core::manifest::ComponentRef { sha256: edge_core::Sha256Digest::of(&wasm), size: wasm.len() as u64 },
    )
    .unwrap();
    let file = edge_core::container::CapsuleFile::new(manifest, wasm).unwrap();
    std::fs::write(env.path("imp.capsule"), file.to_bytes()).unwrap();
    env.cli(&["capsule", "sign", "--key", "keys/agent.key", "imp.capsule"]).success();
    let before = env.host_files();
    let run = env.exec(&env.path("imp.capsule"));
    assert_refused(&env, &run, "admission.undeclared_import", &before);
    assert!(run.detail().contains("attacker:exfil/channel"), "{}", run.detail());

    // And the packer refuses it up front, naming the import.
    let m = env.path("imp.toml");
    std::fs::write(
        &m,
        format!("name = \"imp\"\nversion = \"1\"\nkind = \"diagnostic\"\n{}", crate::harness::STD_IMPORTS),
    )
    .unwrap();
    let pack = env.cli(&[
        "capsule",
        "pack",
        "--manifest",
        "imp.toml",
        "--component",
        test_programs::HOSTILE_IMPORT,
        "-o",
        "x.capsule",
    ]);
    assert_eq!(pack.code(), 1);
    assert!(pack.stderr().contains("attacker:exfil/channel"), "{}", pack.stderr());
}

#[test]
fn a_limit_above_the_runner_ceiling_is_refused() {
    let env = Env::new();
    let manifest = Env::hostile_manifest("none", "").replace("memory_mib = 32", "memory_mib = 100000");
    let capsule = env.capsule("greedy", test_programs::HOSTILE, &manifest, Some("agent"));
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "admission.limit_above_ceiling", &before);
}

#[test]
fn write_access_to_a_read_only_mount_is_refused_at_admission() {
    let env = Env::new();
    let manifest = Env::hostile_manifest("none", "")
        .replace("[[mounts]]\nname = \"ro\"\nwritable = false", "[[mounts]]\nname = \"ro\"\nwritable = true");
    let capsule = env.capsule("rw", test_programs::HOSTILE, &manifest, Some("agent"));
    let before = env.host_files();
    let run = env.exec(&capsule);
    assert_refused(&env, &run, "admission.mount_read_only", &before);
}

#[test]
fn a_file_changed_after_plan_is_not_overwritten() {
    let env = Env::new();
    let capsule = env.hostile("slow-apply");
    let target = env.path("data/ok.txt");
    let staging = env.path("state/staging");
    // While apply runs (it sleeps 1.5 s), someone else creates the file the
    // plan creates: once the mount's staged copy exists, and after the copy
    // had time to finish (it is one small file), so the copy never sees it.
    let writer = std::thread::spawn(move || {
        for _ in 0..400 {
            let staged =
                std::fs::read_dir(&staging).into_iter().flatten().flatten().any(|run| run.path().join("data").exists());
            if staged {
                std::thread::sleep(std::time::Duration::from_millis(300));
                std::fs::write(&target, "written by someone else").unwrap();
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    });
    let run = env.exec(&capsule);
    assert!(writer.join().unwrap(), "apply never started");
    assert_eq!(run.outcome(), "refused", "{:#}", run.report);
    assert_eq!(run.reason(), "commit.precondition_failed", "{}", run.detail());
    assert!(run.detail().contains("re-plan"));
    assert_eq!(std::fs::read_to_string(env.path("data/ok.txt")).unwrap(), "written by someone else");
}
