#!/usr/bin/env bash
# The same loop as demo.sh, outbound-only: the runner has no listening port
# at all. It dials out to a NATS server (here a local nats-server with
# JetStream, standing in for the leaf node at the enclave's edge) and pulls
# submissions and approvals from its own subjects; the agent and the
# approvers publish there. A tier-0 capsule runs through, a risky one waits,
# two approvers review what the runner published and sign, it runs, and the
# evidence, fetched through the JetStream object store, verifies offline.
# Safe to re-run: ./demo-nats is recreated each time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

. scripts/lib.sh
step "toolchain and nats-server (Debian's package)"
need_packages ssh-keygen:openssh-client nats-server:nats-server python3:python3
demo_build

HOME_DIR=demo-nats
. scripts/demo-home.sh

step "a NATS server with JetStream on 127.0.0.1 (in production: the leaf node the runner dials out to)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p nats
cat > nats/nats.conf <<EOT
listen: 127.0.0.1:$PORT
max_payload: 8MB
jetstream { store_dir: "$ROOT/$HOME_DIR/nats/store" }
EOT
nats-server -c nats/nats.conf > nats/nats.log 2>&1 &
NATS_PID=$!
trap 'kill $NATS_PID $SERVER_PID 2>/dev/null || true' EXIT
SERVER_PID=
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
NATS="nats://127.0.0.1:$PORT"
echo "nats-server at $NATS (pid $NATS_PID)"

step "runner.toml: no [server] (nothing listens), a [nats] intake instead"
python3 - <<'PY'
import re
text = open("runner.toml").read()
# Drop [server] and its sub-tables: this runner accepts no connections.
text = re.sub(r"(?ms)^\[server(\.[a-z]+)?\]\n.*?(?=^\[(?!server)|^# The approval console)", "", text)
open("runner.toml", "w").write(text)
PY
cat >> runner.toml <<EOT

[nats]
url = "$NATS"
subject = "demo-1"           # this runner's subjects: edge.demo-1.in.* / edge.demo-1.out.*
exports = true               # answer in.export (reviewers) with an export in the object store
EOT
sed -n '/^\[nats\]/,$p' runner.toml
"$ER" check --config runner.toml

step "start the runner: it dials out; no port is opened"
"$ER" serve --config runner.toml > serve.out 2> serve.log &
SERVER_PID=$!
for _ in $(seq 1 100); do
  grep -q "nats to" serve.out 2>/dev/null && break
  sleep 0.1
done
cat serve.out
echo "listening sockets of the runner (none but its outbound connection):"
ss -tanp 2>/dev/null | grep "pid=$SERVER_PID," | grep -c LISTEN || true
# Clients pin the runner's key: what comes back through NATS (answers,
# documents, events) counts only when signed by it.
"$ER" evidence runner-key --config runner.toml > runner.vkey
TO=(--nats "$NATS" --runner demo-1 --runner-key runner.vkey)
# The runner makes its streams once connected; the first publish waits for them.
for _ in $(seq 1 100); do
  grep -q "NATS intake pulling" serve.log 2>/dev/null && break
  sleep 0.1
done

step "run 1: the agent publishes the log cleanup (tier 0) and waits for the runner's answer"
"$ER" submit cleanup.capsule "${TO[@]}"

step "run 2: certificate expiry (diagnostic, tier 0)"
"$ER" submit cert-expiry.capsule "${TO[@]}"

step "run 3: config drift on the payments API waits for two approvals"
set +e
"$ER" submit config-drift.capsule "${TO[@]}" --json > drift.json
code=$?
set -e
echo "exit code $code (5 = planned, waiting for two approvals)"
PROPOSAL=$(python3 -c 'import json; print(json.load(open("drift.json"))["id"])')
echo "proposal $PROPOSAL; unchanged: $(grep max_connections sample/config/app.toml)"
sleep 0.5

step "run 4: two approvers read the document and preview the runner published, review and sign"
"$ER" approve "$PROPOSAL" "${TO[@]}" --principal alice@bank.example --ssh-key keys/alice \
  --comment "matches INC-1042" --yes -o alice.json | tail -3
"$ER" approve "$PROPOSAL" "${TO[@]}" --principal carol@bank.example --ssh-key keys/carol --yes -o carol.json | tail -3
echo "after:  $(grep max_connections sample/config/app.toml)"

step "the evidence comes back through NATS too: an export into the JetStream object store, fetched"
"$ER" evidence fetch "${TO[@]}" -o evidence.bundle

step "stop the runner and NATS"
kill -TERM $SERVER_PID
wait $SERVER_PID || true
kill $NATS_PID
wait $NATS_PID 2>/dev/null || true
trap - EXIT

step "a reviewer verifies the evidence offline"
"$ER" evidence runner-key --config runner.toml > runner.keys
"$EV" evidence.bundle --key runner.keys
"$EV" report evidence.bundle --key runner.keys | head -30

step "done"
echo "Everything above is in ./demo-nats: runner.toml (with [nats], without [server]), nats/, keys/,"
echo "the capsules, state/evidence/evidence.db, evidence.bundle and runner.keys."
