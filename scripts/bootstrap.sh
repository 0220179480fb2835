#!/usr/bin/env bash
# Idempotent set-up of everything Esper needs on a fresh Debian machine: the apt packages
# (PostgreSQL server binaries, the Fashion-MNIST data set, docker-compose to validate deploy/,
# Node.js for clients/node/), a virtual environment in .venv,
# and the project installed editable with its dev tools. Re-running is cheap: each step is
# skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postgresql-15 dataset-fashion-mnist docker-compose)
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.esper-installed

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
# Node.js and npm for the Node client (clients/node/) and its tests; checked as commands,
# since a node from elsewhere (e.g. NodeSource's package, which bundles npm) serves as well.
command -v node >/dev/null && command -v npm >/dev/null || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "bootstrap: installing apt packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when the project's dependency list changed since the last install.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "bootstrap: installing esper and its dependencies into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch==2.13.0 resolves to the local CPU wheel (a bare `torch` would pull a CUDA build).
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e '.[dev]'
  touch "$STAMP"
fi
