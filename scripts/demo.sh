#!/usr/bin/env bash
# The demo: bring up the local stack (PostgreSQL, broker, object store, Urza, Tezzeret,
# Tamiyo, Nissa), show every server healthy and what each one serves, then run a short
# morphogenetic training run against it. `make down` stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

esper up
echo
esper status
echo
for service in urza tezzeret tamiyo nissa; do
  address=$(esper status --address "$service")
  echo "== $service at $address (grpcurl -plaintext $address list)"
  grpcurl -plaintext "$address" list
done
if esper train --help >/dev/null 2>&1; then
  echo
  echo "== a short training run on scikit-learn's digits, seeds grown by Tamiyo"
  esper train --task digits --epochs "${ESPER_DEMO_EPOCHS:-6}" --tamiyo "$(esper status --address tamiyo)"
fi
echo
echo "The stack keeps running: inspect it with grpcurl, psql, 'esper runs'; stop it with 'make down'."
