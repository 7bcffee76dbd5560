#!/usr/bin/env bash
# One command: install everything the tests need (Python, Debian packages), lint, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
export CI="${CI:-true}"
# Each test has its own timeout (pyproject.toml); this bounds the whole run as well, so a hang that outlives
# them ends the run with pytest's summary (SIGINT) instead of running into the CI's limit.
SUITE_TIMEOUT="${SUITE_TIMEOUT:-2700}"
timeout --signal=INT --kill-after=120 "$SUITE_TIMEOUT" \
  .venv/bin/python -m pytest -q -p no:cacheprovider --tb=short --durations=12 "$@"
