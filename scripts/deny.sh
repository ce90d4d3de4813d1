#!/usr/bin/env bash
# Supply chain: `cargo deny check` (advisories, licences, bans, sources; see
# deny.toml) for the workspace and for the fuzz targets' workspace.
#
# Advisories are read from the RustSec snapshot in ../shared (beside the
# checkout; nothing is fetched): its git bundle is cloned into a temporary
# db-path, under the directory name cargo-deny gives the default database
# URL, and a copy of deny.toml pointing there is used. `--offline` is *not*
# passed: it would also stop `cargo metadata` resolving platform-specific
# crates. Installs cargo-deny when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="$(cd .. && pwd)/shared/advisory-db.bundle"
if [ ! -f "$bundle" ]; then
  echo "error: $bundle (the RustSec advisory snapshot) is missing beside this checkout" >&2
  exit 1
fi
if ! command -v cargo-deny >/dev/null; then
  cargo install --locked cargo-deny
fi
db=$(mktemp -d)
trap 'rm -rf "$db"' EXIT
# 3157b0e258782691: cargo-deny's directory name for https://github.com/rustsec/advisory-db.
git -c init.defaultBranch=main clone -q "$bundle" "$db/advisory-db-3157b0e258782691"
echo "deny: advisory snapshot $(git -C "$db/advisory-db-3157b0e258782691" log -1 --format='%h %cs')"
awk -v db="$db" '{ print } /^\[advisories\]$/ {
  print "db-path = \"" db "\""
  print "db-urls = [\"https://github.com/rustsec/advisory-db\"]"
}' deny.toml >"$db/deny.toml"
grep -q '^db-path' "$db/deny.toml" || { echo "error: deny.toml has no [advisories] table" >&2; exit 1; }
for manifest in Cargo.toml fuzz/Cargo.toml; do
  echo "deny: $manifest"
  cargo deny --manifest-path "$manifest" --config "$db/deny.toml" check
done
