//! # capsule-sdk: write Edge Runner remediation capsules
//!
//! A capsule is a WebAssembly component that an AI agent (or a person)
//! builds, signs and submits to an Edge Runner. The runner verifies the
//! signature, decides whether the change may run at all, and then calls your
//! three functions:
//!
//! 1. **`plan`** — look at the mounts (read-only) and say exactly what you
//!    would change: each file, create/modify/delete, its digest before and
//!    after, and why. Also report findings. Approvers sign this plan.
//! 2. **`apply`** — make exactly those changes. You write to a *staged copy*;
//!    the runner computes the real diff and commits it only if it equals the
//!    plan, and only if the files have not changed since `plan`.
//! 3. **`verify`** — after the commit, check the fix held. Saying
//!    `passed: false` (or returning an error) rolls the commit back.
//!
//! ## A complete capsule
//!
//! This capsule makes sure `motd.txt` in the mount `etc` says hello.
//!
//! ```no_run
//! use capsule_sdk::{Capsule, Ctx, Plan, PlanBuilder, Verification, export_capsule};
//!
//! struct Motd;
//!
//! const WANT: &str = "hello\n";
//!
//! impl Capsule for Motd {
//!     fn plan(ctx: &Ctx) -> Result<Plan, String> {
//!         let etc = ctx.mount("etc")?;
//!         let current = etc.read("motd.txt")?;
//!         let mut plan = PlanBuilder::new("make motd.txt say hello");
//!         match current {
//!             Some(bytes) if bytes == WANT.as_bytes() => {}
//!             Some(bytes) => plan.modify(&etc, "motd.txt", &bytes, WANT.as_bytes(), "motd must greet users"),
//!             None => plan.create(&etc, "motd.txt", WANT.as_bytes(), "motd is missing"),
//!         }
//!         Ok(plan.build())
//!     }
//!
//!     fn apply(ctx: &Ctx, _plan: &Plan) -> Result<(), String> {
//!         ctx.mount("etc")?.write("motd.txt", WANT.as_bytes())
//!     }
//!
//!     fn verify(ctx: &Ctx, _plan: &Plan) -> Result<Verification, String> {
//!         let ok = ctx.mount("etc")?.read("motd.txt")?.as_deref() == Some(WANT.as_bytes());
//!         Ok(Verification::new(ok, if ok { "motd says hello" } else { "motd is wrong" }))
//!     }
//! }
//!
//! export_capsule!(Motd);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`), write a `capsule.toml` manifest declaring the mount `etc` and the
//! interfaces the component imports (`edge-runner capsule inspect` lists
//! them), then `edge-runner capsule pack`, `capsule sign`, and submit.
//!
//! ## What you can and cannot do
//!
//! * Files: only under the mounts the operator granted, at the paths
//!   [`Ctx::mount`] gives you (`/mnt/<name>`). `plan` and `verify` see
//!   read-only mounts. Symlinks that lead outside a mount do not resolve.
//! * No network, no environment beyond what the manifest requested and the
//!   operator granted, bounded CPU, wall time, memory and output. Exceeding a
//!   limit traps your capsule and nothing is committed.
//! * Only regular files can be planned; the runner refuses a diff that
//!   touches symlinks or removes directories.
//!
//! The contract itself is `wit/capsule.wit` (package `edge-runner:capsule@0.1.0`).

use sha2::{Digest as _, Sha256};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "capsule",
        pub_export_macro: true,
        export_macro_name: "__export_capsule_raw",
        default_bindings_module: "capsule_sdk::bindings",
        generate_all,
    });
}

pub use bindings::edge_runner::capsule::host::Level;
pub use bindings::edge_runner::capsule::types::{
    Action, Change, Context, Fact, Finding, Mount as MountInfo, Phase, Plan, Severity, Verification,
};

/// Implement this for your capsule type and export it with [`export_capsule!`].
///
/// Errors are strings shown to operators and recorded in evidence: say what
/// failed and what to do about it.
pub trait Capsule {
    /// Inspect read-only mounts and propose changes and findings.
    fn plan(ctx: &Ctx) -> Result<Plan, String>;
    /// Make exactly the planned changes (to the staged copy).
    fn apply(ctx: &Ctx, plan: &Plan) -> Result<(), String>;
    /// Check the committed change held.
    fn verify(ctx: &Ctx, plan: &Plan) -> Result<Verification, String>;
}

impl<T: Capsule> bindings::Guest for T {
    fn plan(ctx: Context) -> Result<Plan, String> {
        T::plan(&Ctx(ctx))
    }
    fn apply(ctx: Context, plan: Plan) -> Result<(), String> {
        T::apply(&Ctx(ctx), &plan)
    }
    fn verify(ctx: Context, plan: Plan) -> Result<Verification, String> {
        T::verify(&Ctx(ctx), &plan)
    }
}

/// Export a type implementing [`Capsule`] as this component's implementation.
#[macro_export]
macro_rules! export_capsule {
    ($ty:ident) => {
        $crate::bindings::__export_capsule_raw!($ty with_types_in $crate::bindings);
    };
}

/// What the runner tells a capsule about the current run.
#[derive(Debug)]
pub struct Ctx(pub Context);

impl Ctx {
    /// Which step is running.
    pub fn phase(&self) -> Phase {
        self.0.phase
    }

    /// A parameter from the signed manifest.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.0
            .params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter that must be present.
    ///
    /// # Errors
    /// Names the missing parameter.
    pub fn require(&self, name: &str) -> Result<&str, String> {
        self.param(name).ok_or_else(|| {
            format!("missing parameter `{name}`: add it under [params] in capsule.toml")
        })
    }

    /// A granted mount by logical name.
    ///
    /// # Errors
    /// If the runner did not grant that mount.
    pub fn mount(&self, name: &str) -> Result<Mount, String> {
        self.0
            .mounts
            .iter()
            .find(|m| m.name == name)
            .map(|m| Mount {
                name: m.name.clone(),
                root: m.guest_path.clone(),
                writable: m.writable,
            })
            .ok_or_else(|| {
                format!(
                    "mount `{name}` is not granted; request it under [[mounts]] in capsule.toml"
                )
            })
    }
}

/// A granted mount: file helpers with paths relative to its root.
#[derive(Debug, Clone)]
pub struct Mount {
    name: String,
    root: String,
    writable: bool,
}

impl Mount {
    /// Logical name (as in the manifest and in plan changes).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether this phase may write.
    pub fn writable(&self) -> bool {
        self.writable
    }
    /// The guest path of a mount-relative path.
    pub fn path(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, rel)
        }
    }

    /// Read a file; `None` if it does not exist.
    ///
    /// # Errors
    /// Any other I/O error, naming the file.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        match std::fs::read(self.path(rel)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}/{rel}: {e}", self.name)),
        }
    }

    /// Write (create or replace) a file.
    ///
    /// # Errors
    /// Names the file; writing outside `apply` fails (mounts are read-only then).
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), String> {
        std::fs::write(self.path(rel), bytes)
            .map_err(|e| format!("cannot write {}/{rel}: {e}", self.name))
    }

    /// Delete a file.
    ///
    /// # Errors
    /// Names the file.
    pub fn remove(&self, rel: &str) -> Result<(), String> {
        std::fs::remove_file(self.path(rel))
            .map_err(|e| format!("cannot delete {}/{rel}: {e}", self.name))
    }

    /// Digest of a file (`sha256:<hex>`), `None` if absent.
    ///
    /// # Errors
    /// As [`Mount::read`].
    pub fn digest(&self, rel: &str) -> Result<Option<String>, String> {
        Ok(self.read(rel)?.map(|b| digest(&b)))
    }
}

/// `sha256:<64 lowercase hex>` of some bytes: the digest format plans use.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Builds a [`Plan`] with digests computed for you.
#[derive(Debug)]
pub struct PlanBuilder {
    plan: Plan,
}

impl PlanBuilder {
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            plan: Plan {
                summary: summary.into(),
                changes: Vec::new(),
                findings: Vec::new(),
                facts: Vec::new(),
            },
        }
    }

    /// Plan to create `rel` with `after`.
    pub fn create(&mut self, mount: &Mount, rel: &str, after: &[u8], why: &str) {
        self.change(mount, rel, Action::Create, None, Some(digest(after)), why);
    }

    /// Plan to replace `before` with `after` at `rel`.
    pub fn modify(&mut self, mount: &Mount, rel: &str, before: &[u8], after: &[u8], why: &str) {
        self.change(
            mount,
            rel,
            Action::Modify,
            Some(digest(before)),
            Some(digest(after)),
            why,
        );
    }

    /// Plan to delete `rel`, whose current content is `before`.
    pub fn delete(&mut self, mount: &Mount, rel: &str, before: &[u8], why: &str) {
        self.change(mount, rel, Action::Delete, Some(digest(before)), None, why);
    }

    /// Plan a change with explicit digests (for large files hashed incrementally).
    pub fn change(
        &mut self,
        mount: &Mount,
        rel: &str,
        action: Action,
        digest_before: Option<String>,
        digest_after: Option<String>,
        why: &str,
    ) {
        self.plan.changes.push(Change {
            mount: mount.name.clone(),
            path: rel.to_owned(),
            action,
            digest_before,
            digest_after,
            why: why.to_owned(),
        });
    }

    /// Add a finding.
    pub fn finding(
        &mut self,
        severity: Severity,
        code: &str,
        message: impl Into<String>,
        subject: Option<&str>,
    ) {
        self.plan.findings.push(Finding {
            severity,
            code: code.to_owned(),
            message: message.into(),
            subject: subject.map(str::to_owned),
        });
    }

    /// Record a fact for `verify` (it gets the plan back).
    pub fn fact(&mut self, key: &str, value: impl Into<String>) {
        self.plan.facts.push(Fact {
            key: key.to_owned(),
            value: value.into(),
        });
    }

    pub fn build(self) -> Plan {
        self.plan
    }
}

impl Plan {
    /// A fact recorded during `plan`.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.value.as_str())
    }
}

impl Verification {
    pub fn new(passed: bool, summary: impl Into<String>) -> Self {
        Self {
            passed,
            summary: summary.into(),
            findings: Vec::new(),
        }
    }
}

/// Log a line into the run's captured output (bounded by the runner).
pub fn log(level: Level, message: &str) {
    bindings::edge_runner::capsule::host::log(level, message);
}

/// Report a finding immediately (kept even if the capsule later traps).
pub fn report(finding: &Finding) {
    bindings::edge_runner::capsule::host::report(finding);
}
