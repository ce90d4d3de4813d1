//! The capability seam: everything a capsule can be given, in one table.
//!
//! Each [`Capability`] declares the WIT interfaces it links, what the
//! manifest must declare to get it, how that request is checked against the
//! config and the ceilings, how a phase's store is configured from the
//! grant, and what the evidence records of it. The linker is built from this
//! table and nothing else, and the interfaces an operator may list in
//! `grant.imports` are read from it ([`linkable_imports`]): the two cannot
//! disagree. An interface no entry names (sockets, …) cannot be linked
//! and cannot be granted.
//!
//! Adding a capability is one entry here, its manifest field and grant
//! check in `edge-core`'s admission, and its policy input (as endpoints
//! were: `http` below, `endpoints` in the manifest and the grant).

use anyhow::{Result, bail};
use edge_core::admission::Grant;
use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi::cli::WasiCli;
use wasmtime_wasi::clocks::WasiClocks;
use wasmtime_wasi::filesystem::WasiFilesystem;
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{HostState, Phase, PhaseInput, guest_path, quota, wit, wit_calls, wit_host};

/// One thing a capsule can be given.
pub struct Capability {
    /// A short name (docs, diagnostics).
    pub name: &'static str,
    /// The WIT interfaces it links (unversioned; admission checks versions).
    pub interfaces: &'static [&'static str],
    /// What the manifest must declare to be given it.
    pub manifest: &'static str,
    /// How the request is checked against the config and the ceilings.
    pub grant_check: &'static str,
    /// What the evidence records of it.
    pub records: &'static str,
    /// Add its interfaces to the linker.
    link: fn(&mut Linker<HostState>) -> wasmtime::Result<()>,
    /// Configure one phase's WASI context from the grant.
    configure: fn(&mut WasiCtxBuilder, &Grant, &PhaseInput<'_>, Phase) -> Result<()>,
}

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capability").field("name", &self.name).field("interfaces", &self.interfaces).finish()
    }
}

/// Everything a capsule can be given. Interfaces appear in one entry only.
pub static CAPABILITIES: &[Capability] = &[
    Capability {
        name: "streams",
        interfaces: &["wasi:io/error", "wasi:io/poll", "wasi:io/streams"],
        manifest: "the interfaces, in `imports`",
        grant_check: "`grant.imports` (the operator's ceiling) lists them",
        records: "the imports, in `admitted`",
        link: |l| wasmtime_wasi_io::add_to_linker_async(l),
        configure: nothing,
    },
    Capability {
        name: "clocks",
        interfaces: &["wasi:clocks/monotonic-clock", "wasi:clocks/wall-clock"],
        manifest: "the interfaces, in `imports`",
        grant_check: "`grant.imports` lists them",
        records: "the imports, in `admitted`",
        link: |l| {
            let clk = <HostState as wasmtime_wasi::clocks::WasiClocksView>::clocks;
            clocks::wall_clock::add_to_linker::<_, WasiClocks>(l, clk)?;
            clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(l, clk)
        },
        configure: nothing,
    },
    Capability {
        name: "random",
        interfaces: &["wasi:random/random", "wasi:random/insecure", "wasi:random/insecure-seed"],
        manifest: "the interfaces, in `imports`",
        grant_check: "`grant.imports` lists them; at most 1 MiB per call (`sandbox.hostcall_limit`)",
        records: "the imports, in `admitted`",
        link: |l| {
            random::random::add_to_linker::<_, WasiRandom>(l, |t| t.wasi.random())?;
            random::insecure::add_to_linker::<_, WasiRandom>(l, |t| t.wasi.random())?;
            random::insecure_seed::add_to_linker::<_, WasiRandom>(l, |t| t.wasi.random())
        },
        configure: |b, _, _, _| {
            b.max_random_size(super::MAX_RANDOM_BYTES);
            Ok(())
        },
    },
    Capability {
        name: "stdio",
        interfaces: &[
            "wasi:cli/exit",
            "wasi:cli/stdin",
            "wasi:cli/stdout",
            "wasi:cli/stderr",
            "wasi:cli/terminal-input",
            "wasi:cli/terminal-output",
            "wasi:cli/terminal-stdin",
            "wasi:cli/terminal-stdout",
            "wasi:cli/terminal-stderr",
        ],
        manifest: "the interfaces, in `imports`",
        grant_check: "`grant.imports` lists them; output is bounded by `limits.output_kib`",
        records: "stdout and stderr (redacted), as each phase's output artifact",
        link: |l| {
            let c = <HostState as wasmtime_wasi::cli::WasiCliView>::cli;
            cli::exit::add_to_linker::<_, WasiCli>(l, c)?;
            cli::stdin::add_to_linker::<_, WasiCli>(l, c)?;
            cli::stdout::add_to_linker::<_, WasiCli>(l, c)?;
            cli::stderr::add_to_linker::<_, WasiCli>(l, c)?;
            cli::terminal_input::add_to_linker::<_, WasiCli>(l, c)?;
            cli::terminal_output::add_to_linker::<_, WasiCli>(l, c)?;
            cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, c)?;
            cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, c)?;
            cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, c)
        },
        // The bounded pipes are set up by the phase (it reads them back).
        configure: nothing,
    },
    Capability {
        name: "env",
        interfaces: &["wasi:cli/environment"],
        manifest: "each variable's name, in `env`",
        grant_check: "each name is configured in the runner's `[env]` (edge-core `admission::admit`)",
        records: "the names, in the grant; values never (guest text is redacted of them)",
        link: |l| {
            let c = <HostState as wasmtime_wasi::cli::WasiCliView>::cli;
            cli::environment::add_to_linker::<_, WasiCli>(l, c)
        },
        configure: |b, grant, input, _| {
            for (k, v) in input.env {
                if !grant.env.contains(k) {
                    bail!("environment variable `{k}` is not in the grant");
                }
                b.env(k, v);
            }
            Ok(())
        },
    },
    Capability {
        name: "mounts",
        interfaces: &["wasi:filesystem/types", "wasi:filesystem/preopens"],
        manifest: "each mount, in `[[mounts]]`, with `writable` when it changes files",
        grant_check: "each mount is configured, and writable only where the config lets it be (admission)",
        records: "the mounts in the grant; the plan, the diff and the journal of every change",
        link: |l| {
            let fs = <HostState as wasmtime_wasi::filesystem::WasiFilesystemView>::filesystem;
            filesystem::preopens::add_to_linker::<_, WasiFilesystem>(l, fs)?;
            // File writes are charged against the phase's staging budget.
            filesystem::types::add_to_linker::<_, quota::QuotaFs>(l, |s: &mut HostState| quota::QuotaFsView {
                budget: s.write_budget.clone(),
                inner: wasmtime_wasi::filesystem::WasiFilesystemView::filesystem(s),
            })
        },
        configure: |b, grant, input, phase| {
            for m in input.mounts {
                // The grant is the authority: a mount it does not list, or
                // write access it does not give, is a runner bug and refuses
                // the phase.
                let Some(granted) = grant.mounts.iter().find(|g| g.name == m.name) else {
                    bail!("mount `{}` is not in the grant", m.name);
                };
                if m.writable && !granted.writable {
                    bail!("mount `{}` is granted read-only", m.name);
                }
                let perms = if m.writable && phase == Phase::Apply { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
                b.preopened_dir(&m.host_path, guest_path(&m.name), perms)
                    .map_err(|e| anyhow::anyhow!("cannot open mount `{}` at {}: {e}", m.name, m.host_path.display()))?;
            }
            Ok(())
        },
    },
    Capability {
        name: "host",
        interfaces: &["edge-runner:capsule/host", "edge-runner:capsule/types"],
        manifest: "the interfaces, in `imports`",
        grant_check: "`grant.imports` lists them; log lines and findings are bounded (`sandbox.hostcall_limit`)",
        records: "log lines and findings (redacted), as each phase's output artifact",
        link: |l| {
            wit_host::add_to_linker::<_, HasSelf<_>>(l, |s| s)?;
            wit::add_to_linker::<_, HasSelf<_>>(l, |s| s)
        },
        configure: nothing,
    },
    Capability {
        name: "http",
        interfaces: &["wasi:http/types", "wasi:http/outgoing-handler", "edge-runner:capsule/calls"],
        manifest: "each endpoint by logical name, in `endpoints`, and the interfaces, in `imports`",
        grant_check: "each endpoint is configured (`[endpoints.<name>]`); `wasi:http` only with an endpoint \
                      (admission); policy ceilings per tier (`allow_endpoints`); every request checked before it \
                      leaves (`sandbox::egress`)",
        records: "the endpoints in the grant; the planned calls in the plan; each request's intent (before it \
                  leaves), outcome or refusal; each compensation",
        link: |l| {
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(l)?;
            wit_calls::add_to_linker::<_, HasSelf<_>>(l, |s| s)
        },
        // The phase's gate is set up with the store (`sandbox::phase`).
        configure: nothing,
    },
];

fn nothing(_: &mut WasiCtxBuilder, _: &Grant, _: &PhaseInput<'_>, _: Phase) -> Result<()> {
    Ok(())
}

/// Every interface a runner can link (and an operator can grant).
pub fn linkable_imports() -> impl Iterator<Item = &'static str> {
    CAPABILITIES.iter().flat_map(|c| c.interfaces.iter().copied())
}

/// Whether `interface` (unversioned) can be linked.
pub fn is_linkable(interface: &str) -> bool {
    linkable_imports().any(|i| i == interface)
}

/// The linker: every capability's interfaces, and nothing else.
pub(super) fn linker(engine: &wasmtime::Engine) -> Result<Linker<HostState>> {
    let mut l = Linker::<HostState>::new(engine);
    for c in CAPABILITIES {
        (c.link)(&mut l).map_err(|e| anyhow::anyhow!("linking capability `{}`: {e:#}", c.name))?;
    }
    Ok(l)
}

/// Configure a phase's WASI context from the grant, capability by capability.
pub(super) fn configure(b: &mut WasiCtxBuilder, grant: &Grant, input: &PhaseInput<'_>, phase: Phase) -> Result<()> {
    for c in CAPABILITIES {
        (c.configure)(b, grant, input, phase)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The interfaces the `capsule` world imports, read from `wit/capsule.wit`.
    fn world_imports() -> BTreeSet<String> {
        let wit = include_str!("../../../wit/capsule.wit");
        let world = &wit[wit.find("world capsule").expect("the capsule world")..];
        let mut out = BTreeSet::new();
        for line in world.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("import ") else { continue };
            let name = rest.trim_end_matches(';');
            let name = name.split('@').next().expect("a name");
            out.insert(if name.contains(':') { name.to_owned() } else { format!("edge-runner:capsule/{name}") });
        }
        out
    }

    #[test]
    fn the_registry_links_exactly_the_capsule_world() {
        let listed: Vec<&str> = linkable_imports().collect();
        let unique: BTreeSet<String> = listed.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(unique.len(), listed.len(), "an interface is listed by two capabilities");
        let mut world = world_imports();
        // `types` comes in with `host` (it `use`s it).
        world.insert("edge-runner:capsule/types".into());
        assert_eq!(unique, world);
        assert!(!is_linkable("wasi:sockets/tcp") && !is_linkable("wasi:sockets/ip-name-lookup"));
        assert!(is_linkable("wasi:http/outgoing-handler"));
    }

    #[test]
    fn the_linker_builds_from_the_registry() {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&cfg).unwrap();
        linker(&engine).unwrap();
    }
}
