#!/usr/bin/env bash
# One command: install everything the tests need (Python, Debian packages), lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
export CI="${CI:-true}"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
