#!/usr/bin/env bash
# The demo: bring up the local stack (PostgreSQL, broker, object store, Urza, Tezzeret,
# Tamiyo, Nissa), show every server healthy, then run a short morphogenetic training run
# against it: remote Tamiyo decides, Tezzeret compiles the kernels Tamiyo asks for, Urza
# serves them (digest-verified by the training process), Nissa records the run. Ends with
# the run's history from Nissa and a plot. `make down` stops everything.
#
# Settings (environment): ESPER_DEMO_EPOCHS (default 20), ESPER_DEMO_PLOT (default
# demo.png). Tamiyo runs with scripts/demo_heuristic.toml: its default thresholds suit
# long runs, the demo's stages are shortened so a seed's whole life fits in a few epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
EPOCHS="${ESPER_DEMO_EPOCHS:-20}"
PLOT="${ESPER_DEMO_PLOT:-demo.png}"
# Seconds to wait for Nissa to have ingested the run's last epoch.
NISSA_WAIT_S=30
began=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

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
step "training digits for $EPOCHS epochs; seeds grown by remote Tamiyo (run $RUN)"
echo "   esper train --task digits --epochs $EPOCHS --batch-size 32 --run-id $RUN \\"
echo "     --tamiyo $TAMIYO --urza $URZA --kafka $BROKER"
echo "   (Tamiyo asks Tezzeret to compile kernels for the run's slots when the session opens;"
echo "    germinations download them from Urza and verify their SHA-256 before use)"
esper train --task digits --epochs "$EPOCHS" --batch-size 32 --run-id "$RUN" \
  --tamiyo "$TAMIYO" --urza "$URZA" --kafka "$BROKER"

step "kernels Tezzeret compiled (esper tezzeret jobs) and Urza serves (esper catalog kernels)"
esper tezzeret jobs --limit 8
esper catalog kernels | head -12

step "the run in Nissa (esper runs show $RUN)"
for _ in $(seq "$NISSA_WAIT_S"); do
  if esper runs show "$RUN" 2>/dev/null | grep -Eq "^ +$EPOCHS +[0-9]+ "; then break; fi
  sleep 1
done
esper runs show "$RUN"

step "plot (esper runs plot $RUN -o $PLOT)"
esper runs plot "$RUN" -o "$PLOT"

cat <<EOF

== demo finished in $(( $(date +%s) - began )) s. The stack keeps running; look around:
  esper runs                                   # every run Nissa has seen
  esper runs show $RUN
  esper catalog list; esper catalog kernels    # Urza's blueprints and compiled kernels
  esper tezzeret jobs                          # Tezzeret's compile jobs
  esper oona tail esper.control.decisions      # live events on the bus
  grpcurl -plaintext $URZA list
  grpcurl -plaintext $TAMIYO grpc.health.v1.Health/Check
  psql $(esper status --address postgres)      # schemas urza, nissa; compile_jobs in public
Stop everything with 'make down' (state stays in .esper/ for the next 'esper up').
EOF
