#!/usr/bin/env bash
# Create .venv if missing and install pyro-clip with the pinned test environment.
# Idempotent: a stamp keyed by pyproject.toml + constraints skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=".venv/.pyro-clip-$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "[setup] installing pyro-clip and its pinned dependencies (a few minutes the first time)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[test,notebooks,ray]"
    rm -f .venv/.pyro-clip-*
    touch "$stamp"
fi
