#!/usr/bin/env bash
# The test suite: unit, property, vector, end-to-end and hostile tests.
# Installs what it needs (the wasm32-wasip2 target) first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
# The approval tests run the real ssh-keygen / ssh-agent; the evidence tests
# read the store with the stock sqlite3 tool and render the HTML report in
# headless Chromium (Debian's chromium package); the console tests drive it
# through chromedriver (chromium-driver) with a virtual passkey authenticator;
# the service unit `init` writes is checked with systemd-analyze (systemd);
# the NATS intake tests start a real nats-server (JetStream, on 127.0.0.1).
. scripts/lib.sh
need_packages ssh-keygen:openssh-client ssh-agent:openssh-client sqlite3:sqlite3 chromium:chromium \
  chromedriver:chromium-driver systemd-analyze:systemd nats-server:nats-server etcd:etcd-server etcdctl:etcd-client
if [ ! -d ../shared/vectors ]; then
  echo "error: ../shared/vectors (the published test vectors) is missing beside this checkout" >&2
  exit 1
fi
cargo test --locked --workspace "$@"
