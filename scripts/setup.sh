#!/usr/bin/env bash
# Create .venv and install alignsmith with its pinned dependencies (CPU torch; no CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip==26.3
.venv/bin/python -m pip install -q -e ".[test]"
