#!/usr/bin/env bash
# CI: the newcomer's path. A fresh clone of this repository placed under a private (0700)
# directory — as root in CI — runs `make demo` (a short setting; ESPER_CI_DEMO_RUNS=2 runs
# it again after `make down`, the stack restarting on its kept state); each run must print
# the comparison and each seed's life, and write the plot. Everything is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${ESPER_CI_DEMO_EPOCHS:-1}"
base=$(mktemp -d)  # mode 0700: only its owner may enter
chmod 700 "$base"
clone="$base/esper"
cleanup() {
  (cd "$clone" 2>/dev/null && .venv/bin/esper down >/dev/null 2>&1) || true
  rm -rf "$base"
}
trap cleanup EXIT
git clone -q "$PWD" "$clone"

demo() {
  local log="$base/demo-$1.log"
  echo "ci demo ($1): make demo in $clone (ESPER_DEMO_EPOCHS=$EPOCHS)"
  if ! (cd "$clone" && ESPER_DEMO_EPOCHS="$EPOCHS" make demo) >"$log" 2>&1; then
    tail -60 "$log"
    echo "ci demo ($1): make demo failed" >&2
    return 1
  fi
  for expected in "final validation accuracy: A " "seeds (" "wrote demo.png" "demo finished in"; do
    if ! grep -qF "$expected" "$log"; then
      tail -60 "$log"
      echo "ci demo ($1): the output lacks '$expected'" >&2
      return 1
    fi
  done
  [ -s "$clone/demo.png" ] || { echo "ci demo ($1): no demo.png" >&2; return 1; }
  grep -F "demo finished in" "$log"
}

demo first
if [ "${ESPER_CI_DEMO_RUNS:-1}" -ge 2 ]; then
  (cd "$clone" && make down) >/dev/null
  demo "after make down"
fi
