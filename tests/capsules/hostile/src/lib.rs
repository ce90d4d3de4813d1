//! A hostile capsule for the end-to-end tests. The parameter `attack`
//! selects what it tries; each attack must be stopped by the runner (or by
//! the sandbox, in which case the capsule reports the failure it got).
//!
//! It uses the mount `data` (writable during apply) and, for some attacks,
//! `ro` (always read-only).

use capsule_sdk::{Capsule, Ctx, Level, Plan, PlanBuilder, Verification, export_capsule, log};

struct Hostile;

fn attack(ctx: &Ctx) -> &str {
    ctx.param("attack").unwrap_or("none")
}

/// A harmless plan: create `ok.txt` with "ok".
fn benign(ctx: &Ctx) -> Result<PlanBuilder, String> {
    let data = ctx.mount("data")?;
    let mut p = PlanBuilder::new("create ok.txt");
    p.create(&data, "ok.txt", b"ok", "the test asks for it");
    Ok(p)
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(n + 1)) + 1)
}

impl Capsule for Hostile {
    fn plan(ctx: &Ctx) -> Result<Plan, String> {
        let data = ctx.mount("data")?;
        match attack(ctx) {
            "plan-dotdot" => {
                let mut p = PlanBuilder::new("escape");
                p.create(&data, "../outside.txt", b"pwned", "escape the mount");
                Ok(p.build())
            }
            "plan-absolute" => {
                let mut p = PlanBuilder::new("escape");
                p.create(&data, "/etc/passwd", b"pwned", "escape the mount");
                Ok(p.build())
            }
            "read-dotdot" => match std::fs::read("/mnt/data/../outside/secret.txt") {
                Ok(b) => Err(format!("ESCAPED: read {} bytes outside the mount", b.len())),
                Err(e) => Err(format!("escape blocked: {e}")),
            },
            "read-symlink" => match std::fs::read("/mnt/data/link/secret.txt") {
                Ok(b) => Err(format!("ESCAPED: read {} bytes through a symlink", b.len())),
                Err(e) => Err(format!("escape blocked: {e}")),
            },
            "write-in-plan" => match std::fs::write("/mnt/data/ok.txt", "sneaky") {
                Ok(()) => Err("ESCAPED: wrote during plan".into()),
                Err(e) => Err(format!("write blocked: {e}")),
            },
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            // A FIFO in a mount: opening it blocks the thread in the host
            // until a writer comes (none will).
            "read-fifo" => match std::fs::read("/mnt/ro/pipe") {
                Ok(b) => Err(format!("read {} bytes from the fifo", b.len())),
                Err(e) => Err(format!("fifo: {e}")),
            },
            "sleep" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            "alloc" => {
                let mut v: Vec<Vec<u8>> = Vec::new();
                loop {
                    v.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&v);
                }
            }
            "recurse" => Err(format!("{}", recurse(0))),
            "flood-stdout" => {
                let line = "x".repeat(1023);
                loop {
                    println!("{line}");
                }
            }
            "flood-log" => {
                let line = "y".repeat(4000);
                loop {
                    log(Level::Info, &line);
                }
            }
            "huge-plan" => {
                let mut p = PlanBuilder::new("huge");
                for i in 0..200_000 {
                    p.create(&data, &format!("f{i}"), b"x", "padding padding padding padding");
                }
                Ok(p.build())
            }
            "many-changes" => {
                let mut p = PlanBuilder::new("many");
                for i in 0..5_000 {
                    p.create(&data, &format!("f{i}"), b"x", "many");
                }
                Ok(p.build())
            }
            _ => Ok(benign(ctx)?.build()),
        }
    }

    fn apply(ctx: &Ctx, _plan: &Plan) -> Result<(), String> {
        let data = ctx.mount("data")?;
        let escape = |path: &str| match std::fs::write(path, "pwned") {
            Ok(()) => Err(format!("ESCAPED: wrote {path}")),
            Err(e) => Err(format!("write to {path} blocked: {e}")),
        };
        match attack(ctx) {
            "write-dotdot" => escape("/mnt/data/../outside/pwned.txt"),
            "write-absolute" => escape("/tmp/edge-runner-pwned.txt"),
            "write-symlink" => escape("/mnt/data/link/pwned.txt"),
            "write-readonly" => escape("/mnt/ro/pwned.txt"),
            "outside-plan" => {
                data.write("ok.txt", b"ok")?;
                data.write("extra.txt", b"not in the plan")
            }
            "lie-digest" => data.write("ok.txt", b"something else"),
            "slow-apply" => {
                std::thread::sleep(std::time::Duration::from_millis(1500));
                data.write("ok.txt", b"ok")
            }
            "apply-loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            _ => data.write("ok.txt", b"ok"),
        }
    }

    fn verify(ctx: &Ctx, _plan: &Plan) -> Result<Verification, String> {
        match attack(ctx) {
            "verify-fail" => Ok(Verification::new(false, "the fix did not hold (on purpose)")),
            "verify-trap" => panic!("verify panics"),
            _ => {
                let ok = ctx.mount("data")?.read("ok.txt")?.as_deref() == Some(&b"ok"[..]);
                Ok(Verification::new(ok, "ok.txt checked"))
            }
        }
    }
}

export_capsule!(Hostile);
