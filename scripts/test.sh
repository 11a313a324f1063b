#!/usr/bin/env bash
# Set up (if needed) and run the test suite, offline, single-threaded, everything on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the Space's browser test drives Debian's chromium (Playwright's own browser download needs the network)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "scripts/test.sh: chromium is missing (sudo apt-get install -y chromium); the browser test will fail" >&2
  fi
fi
export HF_HUB_DISABLE_TELEMETRY=1 HF_UPDATE_DOWNLOAD_COUNTS=0 GRADIO_ANALYTICS_ENABLED=False \
       OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest tests -q "$@"
