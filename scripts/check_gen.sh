#!/usr/bin/env bash
# Fails when gen/ is not exactly what `make gen` produces from proto/ (CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash scripts/gen.sh "$tmp" >/dev/null 2>&1
if ! diff -r -q "$tmp/esper" gen/esper -x __pycache__; then
  echo "gen/ is stale: run 'make gen' and commit the result" >&2
  exit 1
fi
echo "gen/ is fresh"
