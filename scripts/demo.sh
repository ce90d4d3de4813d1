#!/usr/bin/env bash
# The main job, end to end, with embedded defaults:
#   build the runner and the example capsules for wasm32-wasip2, create a
#   fresh runner home in ./demo (`edge-runner init`: identity key, config,
#   example policy and graph, development CA and certificates, SQLite store),
#   start the runner's mutual-TLS API, and walk the whole loop: an agent
#   submits, a tier-0 capsule runs through, a risky one waits, two approvers
#   approve with their SSH keys, it runs; then a fix made through a
#   service's API (a real etcd on 127.0.0.1): its exact request is shown,
#   approved, sent once and verified; and the evidence is exported and
#   verified offline. Safe to re-run: ./demo is recreated each time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

. scripts/lib.sh
step "toolchain"
# Approvers sign with OpenSSH keys; the tamper demonstration uses python3.
# The endpoint example calls a real etcd (Debian's etcd-server) on 127.0.0.1.
need_packages ssh-keygen:openssh-client python3:python3 etcd:etcd-server etcdctl:etcd-client
demo_build

HOME_DIR=demo
. scripts/demo-home.sh

step "a service to remediate through its API: etcd on 127.0.0.1 (temporary data directory)"
read -r ETCD_PORT ETCD_PEER < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
etcd --name demo --data-dir etcd-data --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER" \
  > etcd.log 2>&1 &
ETCD_PID=$!
trap 'kill $ETCD_PID 2>/dev/null || true' EXIT
ETCDCTL=(etcdctl --endpoints="http://127.0.0.1:$ETCD_PORT")
for _ in $(seq 1 100); do
  ETCDCTL_API=3 "${ETCDCTL[@]}" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
export ETCDCTL_API=3
"${ETCDCTL[@]}" put /config/checkout/max_connections 100 >/dev/null
echo "etcd at 127.0.0.1:$ETCD_PORT; /config/checkout/max_connections = $("${ETCDCTL[@]}" get --print-value-only /config/checkout/max_connections)"
# The endpoint by logical name: where it is, the only addresses it may
# reach, which requests only read, and the graph node it belongs to.
cat >> runner.toml <<EOT

[endpoints.etcd]
node = "payments-config"
url = "http://127.0.0.1:$ETCD_PORT"
methods = ["POST"]
read_requests = ["POST /v3/kv/range"]
connect = ["127.0.0.1"]
timeout = "5s"
EOT

step "inspect: what a capsule asks for, and what its component really imports"
"$ER" capsule inspect config-drift.capsule

step "start the runner: mutual-TLS API (TLS 1.3, client certificates required), SQLite evidence store"
"$ER" serve --config runner.toml > serve.out 2> serve.log &
SERVER_PID=$!
trap 'kill $SERVER_PID $ETCD_PID 2>/dev/null || true' EXIT
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

step "run 5: a fix through a service's API — etcd's checkout connection limit drifted (100, baseline 512)"
set +e
"$ER" submit etcd-drift.capsule "${AGENT[@]}"
code=$?
set -e
echo "exit code $code (5 = planned, waiting: the call reaches the revenue path's config, two approvals)"
echo "unchanged: $("${ETCDCTL[@]}" get --print-value-only /config/checkout/max_connections)"
PROPOSAL=$("$ER" proposals list --state awaiting-approval "${OPERATOR[@]}" | awk 'NR==2{print $1}')
step "what an approver reviews: the exact request that will leave, and the one that undoes it"
"$ER" proposals show "$PROPOSAL" "${OPERATOR[@]}"
"$ER" approve "$PROPOSAL" "${APPROVER[@]}" --principal alice@bank.example --ssh-key keys/alice --yes -o alice-etcd.json | tail -1
"$ER" approve "$PROPOSAL" "${APPROVER[@]}" --principal carol@bank.example --ssh-key keys/carol --yes -o carol-etcd.json | tail -1
"$ER" proposals watch "$PROPOSAL" "${OPERATOR[@]}" --timeout 60
echo "after:  $("${ETCDCTL[@]}" get --print-value-only /config/checkout/max_connections) (sent once, checked against the plan before it left, verified by reading it back)"

step "run 6: a capsule signed by a key the policy does not trust is refused"
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
kill $ETCD_PID 2>/dev/null || true
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
