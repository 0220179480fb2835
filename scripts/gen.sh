#!/usr/bin/env bash
# Regenerates gen/ from proto/: protobuf modules, gRPC stubs and mypy-protobuf typed stubs.
set -euo pipefail
# Usage: scripts/gen.sh [OUTDIR]   (default gen/)
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
OUT=${1:-gen}
rm -rf "$OUT/esper"
mkdir -p "$OUT"
"$PY" -m grpc_tools.protoc -I proto \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" --mypy_out="$OUT" \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" --mypy_grpc_out="$OUT" \
  --descriptor_set_out="$OUT/leyline_v1.binpb" --include_imports --include_source_info \
  proto/esper/leyline/v1/*.proto
mv "$OUT/leyline_v1.binpb" "$OUT/esper/leyline/v1/leyline_v1.binpb"
