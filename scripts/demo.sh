#!/usr/bin/env bash
# make demo: the main demo on the built-in default, no arguments. Fetches the
# default model if missing, builds its calibration from text on this machine
# on first use (cached afterwards), then holds a chat whose KV cache is stored
# compressed on disk between turns (see 'kvtc demo --help').
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
if [ ! -x "$BUILD/kvtc" ]; then
  echo "demo: $BUILD/kvtc is missing; run 'make' first" >&2
  exit 1
fi
exec "$BUILD/kvtc" demo "$@"
