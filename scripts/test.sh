#!/usr/bin/env bash
# The test suite: unit, property, vector, end-to-end and hostile tests.
# Installs what it needs (the wasm32-wasip2 target) first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
# The approval tests run the real ssh-keygen / ssh-agent.
if ! command -v ssh-keygen >/dev/null || ! command -v ssh-agent >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-client
  else
    echo "error: ssh-keygen is missing; install openssh-client" >&2
    exit 1
  fi
fi
# The evidence tests read the store with the stock sqlite3 tool and render
# the HTML report in headless Chromium (Debian's chromium package).
missing=""
command -v sqlite3 >/dev/null || missing="$missing sqlite3"
command -v chromium >/dev/null || missing="$missing chromium"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "error: missing$missing; install them (apt-get install$missing)" >&2
    exit 1
  fi
fi
if [ ! -d ../shared/vectors ]; then
  echo "error: ../shared/vectors (the published test vectors) is missing beside this checkout" >&2
  exit 1
fi
cargo test --locked --workspace "$@"
