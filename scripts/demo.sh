#!/usr/bin/env bash
# The main job, end to end, with embedded defaults:
#   build the runner and the example capsules for wasm32-wasip2, create a
#   fresh runner home in ./demo (`edge-runner init`: identity key, config,
#   example policy and graph, development CA and certificates, SQLite store),
#   start the runner's mutual-TLS API, and walk the whole loop: an agent
#   submits, a tier-0 capsule runs through, a risky one waits, two approvers
#   approve with their SSH keys, it runs, and the evidence is exported and
#   verified offline. Safe to re-run: ./demo is recreated each time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

. scripts/lib.sh
step "toolchain"
# Approvers sign with OpenSSH keys; the tamper demonstration uses python3.
need_packages ssh-keygen:openssh-client python3:python3
demo_build

HOME_DIR=demo
. scripts/demo-home.sh

step "inspect: what a capsule asks for, and what its component really imports"
"$ER" capsule inspect config-drift.capsule

step "start the runner: mutual-TLS API (TLS 1.3, client certificates required), SQLite evidence store"
"$ER" serve --config runner.toml > serve.out 2> serve.log &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "listening on" serve.out 2>/dev/null && break
  sleep 0.1
done
URL=$(sed -n 's/^listening on //p' serve.out)
echo "runner at $URL (pid $SERVER_PID)"
AGENT=(--server "$URL" --ca tls/ca.pem --cert tls/agent.pem --key tls/agent.key)
OPERATOR=(--server "$URL" --ca tls/ca.pem --cert tls/operator.pem --key tls/operator.key)

step "run 1: the agent submits the log cleanup (tier 0) — plan, staged apply, diff, commit, verify"
ls -l sample/logs sample/logs/app
"$ER" submit cleanup.capsule "${AGENT[@]}"
ls -l sample/logs sample/logs/app elsewhere

step "run 2: certificate expiry (diagnostic, tier 0) — findings only, nothing changes"
"$ER" submit cert-expiry.capsule "${AGENT[@]}"

step "run 3: config drift on the payments API — its blast radius reaches the revenue path"
"$ER" policy explain config-drift.capsule --config runner.toml || true
set +e
"$ER" submit config-drift.capsule "${AGENT[@]}"
code=$?
set -e
echo "exit code $code (5 = planned, waiting for two approvals)"
echo "unchanged: $(grep max_connections sample/config/app.toml)"
"$ER" proposals list --state awaiting-approval "${OPERATOR[@]}"
PROPOSAL=$("$ER" proposals list --state awaiting-approval "${OPERATOR[@]}" | awk 'NR==2{print $1}')
step "what an approver reviews: the staged result's real diff (previewed before anyone approves)"
"$ER" proposals show "$PROPOSAL" "${OPERATOR[@]}"

step "run 4: two approvers fetch the proposal over the API, review it and sign with their SSH keys"
APPROVER=(--server "$URL" --ca tls/ca.pem --cert tls/operator.pem --key tls/operator.key)
"$ER" approve "$PROPOSAL" "${APPROVER[@]}" --principal alice@bank.example --ssh-key keys/alice \
  --comment "matches INC-1042" --yes -o alice.json | tail -2
"$ER" approve "$PROPOSAL" "${APPROVER[@]}" --principal carol@bank.example --ssh-key keys/carol --yes -o carol.json | tail -2
"$ER" proposals watch "$PROPOSAL" "${OPERATOR[@]}" --timeout 60
echo "after:  $(grep max_connections sample/config/app.toml)"

step "run 5: a capsule signed by a key the policy does not trust is refused"
cp config-drift.capsule intruder.capsule
"$ER" capsule sign --key keys/intruder.key intruder.capsule >/dev/null
set +e
"$ER" submit intruder.capsule "${AGENT[@]}"
code=$?
set -e
echo "exit code $code (3 = refused)"

step "proposals on the runner"
"$ER" proposals list "${OPERATOR[@]}"

step "export the evidence over the API, and hand the reviewer the runner's public key"
"$ER" evidence fetch "${OPERATOR[@]}" -o evidence.bundle
"$ER" evidence runner-key --config runner.toml > runner.keys
cat runner.keys

step "stop the runner (SIGTERM: finishes what it is doing)"
kill -TERM $SERVER_PID
wait $SERVER_PID || true
trap - EXIT

step "a compliance reviewer verifies it offline with edge-verify (no wasmtime, tokio or network inside)"
"$EV" evidence.bundle --key runner.keys
"$EV" report evidence.bundle --key runner.keys --html report.html | head -48
echo "HTML report: demo/report.html (self-contained, no external resources)"

step "one run alone, with inclusion proofs (partial disclosure)"
# The fourth run: the approved config-drift fix (its approvals and quorum come along).
RUN=$(grep -o '"run":"r-[^"]*"' evidence.bundle | cut -d'"' -f4 | awk '!seen[$0]++' | sed -n 4p)
"$ER" evidence export --config runner.toml --run "$RUN" -o run.bundle
"$EV" run.bundle --key runner.keys

step "tampering is detected: one flipped byte in the middle of the bundle"
cp evidence.bundle tampered.bundle
python3 - <<'PY'
data = bytearray(open("tampered.bundle", "rb").read())
data[len(data) // 2] ^= 0x01
open("tampered.bundle", "wb").write(data)
PY
set +e
"$EV" tampered.bundle --key runner.keys
code=$?
set -e
echo "exit code $code (1 = verification failed)"

step "done"
echo "Everything above is in ./demo: runner.toml, tls/ (development CA), keys/, the capsules, sample/,"
echo "state/evidence/evidence.db (SQLite), evidence.bundle, runner.keys, report.html and edge-runner.service."
