#!/usr/bin/env python3
"""Side by side: `edge-runner exec` of two or more builds, and `wasmtime run`.

    python3 scripts/exec-ab.py OLD_BINARY NEW_BINARY [...]

For comparing a change to `exec`'s cost, where the start-up bench
(`cargo bench -p edge-runner --bench startup`) measures one build: copy the
binary before and after the change aside, then run this. Each round runs
every binary's `exec` of the diagnostic capsule once, and `wasmtime run
--invoke 'plan(…)'` of the same precompiled component once, in one
interleaved loop, each round starting with the next of them in turn (this
machine is shared and noisy: only figures taken side by side compare; and a
command run straight after an `exec` runs faster, so none keeps one place). Prints the median wall time of each, its quartiles and
its ratio to `wasmtime run`.

Needs the homes the start-up bench builds (`target/bench-stores/`; run it
once, with `STARTUP_RUNS=100000` for the 1M-record store) and `wasmtime` on
`PATH`. `ROUNDS` (default 150), `HOME_DIR` (default the 1M-record home).
`SERVED=1` also times each build's `exec` handed to that build's `serve`
running on another copy of the home (`runner/src/intake/local.rs`), in the
same loop; the loop starts once each `serve` has finished the full evidence
check it runs in the background after a start.
`GOVERNED=1` runs every copy of the home under the example policy and
graph (the home's `policy/`, with its agent as the policy's signer and the
`certs` mount mapped to the graph's `tls-certs`) instead of the bench
home's `dangerous_run_without_policy`: what an operator runs, with a
decision and its documents in every run.
Each binary is copied to a fresh file before the loop (all alike), and runs
in its own copy of the home (so ~1.4 GB of scratch space per build at one
million records), and the
first round, untimed, lets each copy hash itself once (the runner caches its
executable's digest per file, four at most: compare four builds at most).
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "bench-stores")
HOME = os.environ.get("HOME_DIR", os.path.join(ROOT, "startup-100000"))
BASELINE_HOME = os.path.join(ROOT, "startup-0")
ROUNDS = int(os.environ.get("ROUNDS", "150"))
PLAN = (
    'plan({phase: plan, params: [("mount", "certs"), ("days", "30")], '
    'mounts: [{name: "certs", guest-path: "/mnt/certs", writable: false}]})'
)


def govern(home):
    """Rewrite a copy of a bench home's runner.toml to run under the example
    policy and graph, as an operator's runner does."""
    config = os.path.join(home, "runner.toml")
    text = open(config).read()
    pieces = [
        ("dangerous_run_without_policy = true\n", ""),
        ('[[signers]]\nname = "agent"\npublic_key = "agent.pub"\n',
         '[policy]\nfile = "policy/policy.toml"\ngraph = "policy/graph.toml"\n'),
        ('[mounts.certs]\npath = "certs"\n', '[mounts.certs]\npath = "certs"\nnode = "tls-certs"\n'),
    ]
    for old, new in pieces:
        if old not in text:
            sys.exit(f"GOVERNED=1: {config} has no {old!r} to replace; is it a start-up bench home?")
        text = text.replace(old, new)
    open(config, "w").write(text)
    key = open(os.path.join(home, "agent.pub")).read().strip()
    with open(os.path.join(home, "policy", "policy.toml"), "a") as policy:
        policy.write(
            f'\n[[signers]]\nname = "agent"\npublic_key = """{key}"""\nkinds = ["diagnostic", "remediation"]\n'
            'mounts = ["*"]\nwritable_mounts = ["certs"]\nrequire_tlog = false\n'
        )


def timed(cmd, cwd):
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main():
    binaries = [os.path.abspath(b) for b in sys.argv[1:]]
    if not binaries:
        sys.exit(__doc__)
    for d in (HOME, BASELINE_HOME):
        if not os.path.isfile(os.path.join(d, "capsule.edgecap")):
            sys.exit(f"{d} is not a start-up bench home: run `cargo bench -p edge-runner --bench startup` first")
    if not os.path.isfile(os.path.join(BASELINE_HOME, "component.cwasm")):
        sys.exit("no precompiled component beside the bench's empty store: run the start-up bench with wasmtime on PATH")
    # Each build, and `wasmtime`, runs from a copy made now, all alike: one
    # binary ran 0.5 ms slower from a file written an hour before than from
    # a fresh copy of it (how its pages sit in the page cache), which made
    # an older build, or the baseline, look slower than it was.
    scratch = tempfile.mkdtemp(prefix="exec-ab-")
    copies = {}
    for i, b in enumerate(binaries):
        copies[b] = os.path.join(scratch, f"{i}-{os.path.basename(b)}")
        shutil.copyfile(b, copies[b])
        os.chmod(copies[b], 0o755)
    baseline = os.path.join(scratch, "wasmtime")  # the same, for the baseline
    found = shutil.which("wasmtime")
    if found is None:
        sys.exit("no `wasmtime` on PATH: `cargo install wasmtime-cli --version 48.0.8 --locked`")
    shutil.copyfile(found, baseline)
    os.chmod(baseline, 0o755)
    # And each build runs in its own copy of the home: what one leaves in
    # the store's directory (a WAL file kept or deleted at its close, a
    # fold written) must not be what the other starts from.
    homes = {}
    for i, b in enumerate(binaries):
        homes[b] = os.path.join(scratch, f"home-{i}")
        subprocess.run(["cp", "-a", "--reflink=auto", HOME, homes[b]], check=True)
    served = {}
    servers = []
    if os.environ.get("SERVED") == "1":
        for i, b in enumerate(binaries):
            served[b] = os.path.join(scratch, f"served-{i}")
            subprocess.run(["cp", "-a", "--reflink=auto", HOME, served[b]], check=True)
    if os.environ.get("GOVERNED") == "1":
        for home in list(homes.values()) + list(served.values()):
            govern(home)
    os.sync()  # not written back during the loop, under its flushes
    for b, home in served.items():
        log = open(os.path.join(scratch, os.path.basename(home) + ".log"), "w+")
        servers.append((subprocess.Popen([copies[b], "serve", "--config", "runner.toml"], cwd=home,
                                         stdout=subprocess.DEVNULL, stderr=log), log))
    for _, log in servers:  # its background check would share the cores
        deadline = time.time() + 600
        while "full evidence check" not in open(log.name).read():
            if time.time() > deadline:
                sys.exit(f"serve did not finish its full check: see {log.name}")
            time.sleep(0.5)
    execs = {b: [] for b in binaries}
    handed = {b: [] for b in served}
    wasmtime = []
    run_exec = lambda b: timed([copies[b], "exec", "capsule.edgecap", "--config", "runner.toml"], homes[b])
    run_wasmtime = lambda: timed(
        [baseline, "run", "--allow-precompiled", "--dir", "certs::/mnt/certs", "--invoke", PLAN, "component.cwasm"],
        BASELINE_HOME,
    )
    run_handed = lambda b: timed([copies[b], "exec", "capsule.edgecap", "--config", "runner.toml"], served[b])
    for b in binaries:  # warm each binary's digest cache and the page cache
        run_exec(b)
    for b in served:
        run_handed(b)
    # Each round starts with the next one in turn, so that no command
    # always follows the same one (an A/A run of two copies of one build,
    # always in the same order, put the second 0.13 ms ahead: 400 rounds).
    runs = [(b, lambda b=b: execs[b].append(run_exec(b))) for b in binaries]
    runs += [(b, lambda b=b: handed[b].append(run_handed(b))) for b in served]
    runs.append(("wasmtime", lambda: wasmtime.append(run_wasmtime())))
    for i in range(ROUNDS):
        k = i % len(runs)
        for _, run in runs[k:] + runs[:k]:
            run()
    for server, _ in servers:
        server.terminate()
        server.wait()
    shutil.rmtree(scratch)
    w = statistics.median(wasmtime)
    governed = "under the example policy and graph" if os.environ.get("GOVERNED") == "1" else "as the home is configured"
    print(f"{ROUNDS} interleaved rounds, store {HOME}, {governed}")
    print(f"wasmtime run          median {w * 1e3:6.2f} ms")
    for b in binaries:
        m = statistics.median(execs[b])
        q = statistics.quantiles(execs[b], n=4)
        print(f"{b}\n  exec                median {m * 1e3:6.2f} ms  (q1 {q[0] * 1e3:.2f}, q3 {q[2] * 1e3:.2f})  {m / w:.2f}x")
        if b in handed:
            m = statistics.median(handed[b])
            q = statistics.quantiles(handed[b], n=4)
            print(f"  exec, handed over   median {m * 1e3:6.2f} ms  (q1 {q[0] * 1e3:.2f}, q3 {q[2] * 1e3:.2f})  {m / w:.2f}x")


if __name__ == "__main__":
    main()
