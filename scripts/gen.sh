#!/usr/bin/env bash
# Regenerates gen/ from proto/: protobuf modules, gRPC stubs and mypy-protobuf typed stubs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
rm -rf gen/esper
mkdir -p gen
"$PY" -m grpc_tools.protoc -I proto \
  --python_out=gen --grpc_python_out=gen \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" --mypy_out=gen \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" --mypy_grpc_out=gen \
  --descriptor_set_out=gen/leyline_v1.binpb --include_imports --include_source_info \
  proto/esper/leyline/v1/*.proto
mv gen/leyline_v1.binpb gen/esper/leyline/v1/leyline_v1.binpb
