#!/usr/bin/env bash
# Install webrtc-cast into ./.venv (Python packages from PyPI). With --test, also everything the test suite
# needs: the test extras, and the Debian packages for real peers (chromium, nginx, redis-server, iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ "$want_test" = 1 ]; then
  missing=()
  for pkg in chromium chromium-driver fonts-liberation nginx-light redis-server iproute2 nftables \
      gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
      gstreamer1.0-libav gstreamer1.0-nice python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 janus; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  # npm: machines of this kind ship it with their Node.js (whose package conflicts with Debian's npm)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  # janus is only for benchmarks/vs_janus.py, which starts it with its own config bound to 127.0.0.1. On a
  # machine with systemd the package enables its service with the stock /etc/janus config (all interfaces): off.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if [ "$(id -u)" = 0 ]; then systemctl disable --now janus.service >/dev/null 2>&1 || true
    else sudo systemctl disable --now janus.service >/dev/null 2>&1 || true; fi
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -qq --upgrade pip
if [ "$want_test" = 1 ]; then
  .venv/bin/python -m pip install -qq -e ".[test]"
else
  .venv/bin/python -m pip install -qq -e .
fi

# Front-end packages (hls.js for the /watch page's LL-HLS fallback) from npm into ./node_modules (gitignored,
# served at /static/vendor/hls.min.js). Needed by the pages and the browser tests; never committed.
if command -v npm >/dev/null 2>&1; then
  echo "== npm install (hls.js)"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund -q; else npm install --no-audit --no-fund -q; fi
elif [ "$want_test" = 1 ]; then
  echo "npm is missing: apt-get install -y npm (the LL-HLS browser tests need hls.js)" >&2
  exit 1
fi
