# Shared by demo.sh, demo-nats.sh and test.sh.

# need_packages CMD:PACKAGE ... — install the Debian packages whose command
# is missing (as root), or stop with the apt-get line to run.
need_packages() {
  local missing="" pair
  for pair in "$@"; do
    if ! command -v "${pair%%:*}" >/dev/null && [[ " $missing " != *" ${pair#*:} "* ]]; then
      missing="$missing ${pair#*:}"
    fi
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "error: missing$missing; install them (apt-get install$missing)" >&2
    exit 1
  fi
}

# step TEXT — a demo's section heading.
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# demo_build — the wasm32-wasip2 target, then the runner, the offline
# verifier and the example capsules; sets ER, EV and WASM (run from the
# checkout's root, with ROOT set to it).
demo_build() {
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
  fi
  step "build the runner, the offline verifier and the example capsules"
  cargo build --locked -p edge-runner -p edge-evidence
  cargo build --locked --target wasm32-wasip2 --profile guest -p config-drift -p cleanup -p cert-expiry -p etcd-drift
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  ER="$target/debug/edge-runner"
  EV="$target/debug/edge-verify"
  WASM="$target/wasm32-wasip2/guest"
}
