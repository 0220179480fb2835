#!/usr/bin/env bash
# `make experiment`: the README's "Does growth pay?" headline tables, host by host, into
# benchmarks/results/ (5 seeds, 20 epochs, cosine learning rate; the seeds split over
# $JOBS processes, one per core). HOSTS picks the hosts (default: mlp cnn char); on the
# 2-core development machine the MLP's table takes about 12 minutes, the character
# model's 1 h 47 min (both measured) and the CNN's about 3 hours (README, "Does growth
# pay?").
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-2}
run() {
    echo "== python benchmarks/morphogenesis.py --seeds 5 --epochs 20 --jobs $jobs $*"
    .venv/bin/python benchmarks/morphogenesis.py --seeds 5 --epochs 20 --jobs "$jobs" "$@"
}
for host in ${HOSTS:-mlp cnn char}; do
    case "$host" in
        mlp) run --hosts mlp --name morphogenesis --arms static-small,esper,esper-late-slowdown,esper-plateau-only,random,schedule,static-final-size,esper-arch-static,gromo,learned,static-large ;;
        cnn) run --hosts cnn --name morphogenesis-cnn-cosine --arms static-small,esper,random,schedule,static-final-size,esper-arch-static,gromo,learned ;;
        char) run --hosts char --name morphogenesis-char --arms static-small,esper,random,schedule,static-final-size,esper-arch-static,esper-arch-restarts,gromo,learned,static-large ;;
        *) echo "HOSTS: unknown host '$host' (mlp, cnn, char)" >&2; exit 2 ;;
    esac
done
