# A demo runner home, shared by demo.sh and demo-nats.sh: sourced from the
# checkout's root with ER (edge-runner), ROOT, WASM and HOME_DIR set, it
# makes ./$HOME_DIR (`edge-runner init`, sample mounts, the agent's and two
# approvers' keys, the policy trusting the agent) with the example capsules
# packed and signed in it, and leaves the shell in it.

step "a fresh runner home in ./$HOME_DIR (edge-runner init)"
rm -rf "$HOME_DIR"
"$ER" init "$HOME_DIR" --name edge-runner.demo.example.internal --listen 127.0.0.1:0
mkdir -p "$HOME_DIR/sample/logs/app"
cp -r examples/sample/config examples/sample/certs "$HOME_DIR/sample/"
cp examples/policy/cases.toml "$HOME_DIR/policy/cases.toml"
# Logs: two rotated logs from last month, one current, and a symlink that
# points outside the mount (cleanup must never follow it).
printf 'old\n' > $HOME_DIR/sample/logs/app/api-2026-10-01.log
printf 'older\n' > $HOME_DIR/sample/logs/app/api-2026-10-02.log
printf 'current\n' > $HOME_DIR/sample/logs/app/api.log
touch -d '30 days ago' $HOME_DIR/sample/logs/app/api-2026-10-01.log $HOME_DIR/sample/logs/app/api-2026-10-02.log
mkdir -p $HOME_DIR/elsewhere && printf 'not yours\n' > $HOME_DIR/elsewhere/keep.log
touch -d '90 days ago' $HOME_DIR/elsewhere/keep.log
ln -s "$ROOT/$HOME_DIR/elsewhere/keep.log" $HOME_DIR/sample/logs/elsewhere.log
# A certificate that expires in 12 days, beside the committed expired one.
if command -v openssl >/dev/null; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 12 \
    -subj /CN=api.payments.example.internal -keyout /dev/null -out $HOME_DIR/sample/certs/api.pem 2>/dev/null
fi
cd "$HOME_DIR"

# The directories capsules may be granted, each mapped to its system-graph node.
cat >> runner.toml <<'EOT'

[mounts.config]
path = "sample/config"
writable = true
node = "payments-config"

[mounts.logs]
path = "sample/logs"
writable = true
node = "log-volume"

[mounts.certs]
path = "sample/certs"
writable = false
node = "tls-certs"
EOT

step "keys: the agent's signing key (private key mode 0600)"
"$ER" keys generate --out keys/agent
"$ER" keys generate --out keys/intruder >/dev/null

step "approvers: two people with their own SSH keys, registered in allowed_signers"
for who in alice carol; do
  ssh-keygen -q -t ed25519 -N '' -C "$who" -f "keys/$who"
  echo "$who@bank.example $(cat keys/$who.pub)" >> approvers/allowed_signers
done
cat approvers/allowed_signers

step "policy: trust the agent's key, then check the policy against the system graph"
cat >> policy/policy.toml <<EOT

[[signers]]
name = "demo-agent"
public_key = """$(cat keys/agent.pub)"""
kinds = ["diagnostic", "remediation"]
mounts = ["*"]
writable_mounts = ["config", "logs"]
endpoints = ["etcd"]
EOT
"$ER" policy check --config runner.toml
"$ER" policy test policy/cases.toml --config runner.toml

step "pack and sign the capsules"
for c in config-drift cleanup cert-expiry etcd-drift; do
  "$ER" capsule pack --manifest "$ROOT/examples/capsules/$c/capsule.toml" \
    --component "$WASM/${c//-/_}.wasm" -o "$c.capsule" >/dev/null
  "$ER" capsule sign --key keys/agent.key "$c.capsule"
done

