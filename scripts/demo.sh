#!/usr/bin/env bash
# The demo: bring up the local stack (PostgreSQL, broker, object store, Urza, Tezzeret,
# Tamiyo, Nissa), show every server healthy, then train a small CNN on Fashion-MNIST twice
# with the same seed and data order: once growing seeds decided by remote Tamiyo (kernels
# compiled by Tezzeret, served by Urza, digest-verified by the training process), once
# static. Nissa records both; the demo ends with the two side by side, each seed's life,
# and a plot. `make down` stops everything.
#
# Settings (environment): ESPER_DEMO_EPOCHS (default 8), ESPER_DEMO_PLOT (default
# demo.png), ESPER_DEMO_SEED (default 0). Tamiyo runs with scripts/demo_heuristic.toml: its
# default thresholds suit long runs; the demo's stages are shortened so a seed's whole
# life fits in a few epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
EPOCHS="${ESPER_DEMO_EPOCHS:-8}"
PLOT="${ESPER_DEMO_PLOT:-demo.png}"
SEED="${ESPER_DEMO_SEED:-0}"
# The narrow example CNN at this batch size: ~470 steps, ~15-20 s an epoch on 2 CPU cores.
BATCH_SIZE=128
# Seconds to wait for Nissa to have ingested a run's last epoch.
NISSA_WAIT_S=60
began=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

# Wait until Nissa shows the run's last epoch.
wait_for_run() {
  for _ in $(seq "$NISSA_WAIT_S"); do
    if esper runs show "$1" 2>/dev/null | grep -Eq "^ +$EPOCHS +[0-9]+ "; then return 0; fi
    sleep 1
  done
  echo "demo: Nissa has not recorded epoch $EPOCHS of run $1 after ${NISSA_WAIT_S} s" >&2
  return 1
}

if esper status 2>/dev/null | awk '$1 == "tamiyo" && $4 == "healthy" {found=1} END {exit !found}'; then
  echo "note: the stack is already running; Tamiyo keeps the settings it was started with"
  echo "      (run 'make down' first for the demo's short-run heuristic thresholds)."
fi
step "starting the local stack (esper up)"
ESPER_HEURISTIC_CONFIG="$PWD/scripts/demo_heuristic.toml" esper up
step "health (esper status)"
esper status
for service in urza tezzeret tamiyo nissa; do
  address=$(esper status --address "$service")
  echo "  $service at $address serves: $(grpcurl -plaintext "$address" list | grep '^esper' | tr '\n' ' ')"
done

TAMIYO=$(esper status --address tamiyo)
URZA=$(esper status --address urza)
BROKER=$(esper status --address broker)
RUN="demo-$(date +%Y%m%d-%H%M%S)"
STATIC="$RUN-static"
COMMON=(--task fashion-mnist --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" --seed "$SEED"
        --kafka "$BROKER")
step "training Fashion-MNIST for $EPOCHS epochs; seeds grown by remote Tamiyo (run $RUN)"
echo "   esper train ${COMMON[*]} --run-id $RUN --tamiyo $TAMIYO --urza $URZA"
echo "   (Tamiyo asks Tezzeret to compile kernels for the run's slots when the session opens;"
echo "    germinations download them from Urza and verify their SHA-256 before use)"
esper train "${COMMON[@]}" --run-id "$RUN" --tamiyo "$TAMIYO" --urza "$URZA"

step "the same host, seed and data order, trained static (run $STATIC)"
echo "   esper train ${COMMON[*]} --run-id $STATIC --static"
esper train "${COMMON[@]}" --run-id "$STATIC" --static

step "kernels Tezzeret compiled (esper tezzeret jobs) and Urza serves (esper catalog kernels)"
esper tezzeret jobs --limit 8
esper catalog kernels

wait_for_run "$RUN"
wait_for_run "$STATIC"
step "grown vs static, from Nissa (esper runs compare $RUN $STATIC)"
esper runs compare "$RUN" "$STATIC"

step "the grown run in Nissa: epochs, each seed's life, decisions (esper runs show $RUN)"
esper runs show "$RUN"

step "plot (esper runs plot $RUN --baseline $STATIC -o $PLOT)"
esper runs plot "$RUN" --baseline "$STATIC" -o "$PLOT"

cat <<MSG

== demo finished in $(( $(date +%s) - began )) s. The stack keeps running; look around:
  esper runs                                   # every run Nissa has seen
  esper runs show $RUN --transitions
  esper catalog list; esper catalog kernels    # Urza's blueprints and compiled kernels
  esper tezzeret jobs                          # Tezzeret's compile jobs
  esper oona tail esper.control.decisions      # live events on the bus
  grpcurl -plaintext $URZA list
  grpcurl -plaintext $TAMIYO grpc.health.v1.Health/Check
  psql $(esper status --address postgres)      # schemas urza, nissa; compile_jobs in public
Stop everything with 'make down' (state stays in .esper/ for the next 'esper up').
MSG
