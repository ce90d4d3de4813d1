#!/usr/bin/env bash
# The test suite: unit, property, vector, end-to-end and hostile tests.
# Installs what it needs (the wasm32-wasip2 target) first.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if [ ! -d ../shared/vectors ]; then
  echo "error: ../shared/vectors (the published test vectors) is missing beside this checkout" >&2
  exit 1
fi
cargo test --locked --workspace "$@"
