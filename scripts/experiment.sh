#!/usr/bin/env bash
# `make experiment`: the README's "Does growth pay?" headline tables, host by host, into
# benchmarks/results/ (5 seeds, 20 epochs, cosine learning rate; the seeds split over
# $JOBS processes, one per core). HOSTS picks the hosts (default: mlp cnn char); on the
# 2-core development machine the MLP's table takes about 12 minutes, the character
# model's about 2 h 15 min and the CNN's about 2 hours (both measured in pieces, two
# processes side by side: a CNN seed's arms ~50 min; README "Does growth pay?").
#
# A table too long for one sitting runs in pieces: PIECE=A-B runs seeds A..B only, into
# <table>-seedsA-B.{json,md,png}; once every seed has run, MERGE=1 puts the host's pieces
# together, seed by seed, into the table itself (replacing it).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-2}
results=${RESULTS_DIR:-benchmarks/results}  # another folder: tests
run() {
    echo "== python benchmarks/morphogenesis.py --epochs 20 --jobs $jobs --out-dir $results $*"
    .venv/bin/python benchmarks/morphogenesis.py --epochs 20 --jobs "$jobs" --out-dir "$results" "$@"
}
table() {  # host -> "name arms"
    case "$1" in
        mlp) echo "morphogenesis static-small,esper,esper-late-slowdown,esper-plateau-only,random,schedule,static-final-size,esper-arch-static,gromo,learned,static-large" ;;
        cnn) echo "morphogenesis-cnn-cosine static-small,esper,random,schedule,static-final-size,esper-arch-static,gromo,learned" ;;
        char) echo "morphogenesis-char static-small,esper,random,schedule,static-final-size,esper-arch-static,esper-arch-restarts,gromo,learned,static-large" ;;
        *) echo "HOSTS: unknown host '$1' (mlp, cnn, char)" >&2; return 2 ;;
    esac
}
merge_pieces() {  # name: every <name>-seedsA-B.json into <name>.json, the first as the base
    # (-seeds[0-9]*: a piece's name, not another table's such as <name>-seeds-only)
    local name=$1 pieces=("$results/$1"-seeds[0-9]*-[0-9]*.json)
    if [[ ! -e ${pieces[0]} ]]; then
        echo "MERGE=1: no pieces $results/$name-seedsA-B.json (run them with PIECE=A-B)" >&2
        return 2
    fi
    # Put together under a scratch name: a piece that does not merge leaves the table as it was.
    local scratch=$name.merging args=()
    cp "${pieces[0]}" "$results/$scratch.json"
    for piece in "${pieces[@]:1}"; do args+=(--merge "$piece"); done
    echo "== $name.json: ${pieces[*]}"
    if ! .venv/bin/python benchmarks/morphogenesis.py --out-dir "$results" --name "$scratch" \
            "${args[@]:---report-only}"; then
        rm -f "$results/$scratch".{json,md,png}
        return 2
    fi
    for ext in json md png; do mv "$results/$scratch.$ext" "$results/$name.$ext"; done
}
piece=${PIECE:-}
if [[ -n $piece && ! $piece =~ ^(0|[1-9][0-9]*)-(0|[1-9][0-9]*)$ ]]; then
    echo "PIECE: want A-B, the first and last seed (e.g. 0-1), got '$piece'" >&2; exit 2
fi
if [[ -n $piece ]] && (( BASH_REMATCH[1] > BASH_REMATCH[2] )); then
    echo "PIECE: the first seed comes first (got '$piece')" >&2; exit 2
fi
for host in ${HOSTS:-mlp cnn char}; do
    spec=$(table "$host")
    read -r name arms <<<"$spec"
    if [[ -n ${MERGE:-} ]]; then
        merge_pieces "$name"
    elif [[ -n $piece ]]; then
        first=${piece%-*} last=${piece#*-}
        run --seeds $((last - first + 1)) --first-seed "$first" --hosts "$host" \
            --name "$name-seeds$piece" --arms "$arms"
    else
        run --seeds 5 --hosts "$host" --name "$name" --arms "$arms"
    fi
done
