#!/usr/bin/env bash
# One command: install, then run a node with a synthetic publisher; prints the viewer URL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/webrtc-cast demo --host 127.0.0.1 --port "${PORT:-8080}" --ice-host "${ICE_HOST:-127.0.0.1}" "$@"
