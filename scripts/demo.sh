#!/usr/bin/env bash
# make demo: the main demo on the built-in default, no arguments. Fetches the
# default model if missing, builds its calibration from text on this machine
# on first use (cached afterwards), then holds a chat whose KV cache is stored
# compressed on disk between turns (see 'kvtc demo --help').
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
# Debian 12's OpenBLAS (0.3.21) does not recognise recent Xeons and falls back
# to its slowest (Prescott, SSE3) kernels, 4-5x below what the CPU can do;
# name a kernel set the CPU supports unless the caller chose one.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell
  fi
fi
if [ ! -x "$BUILD/kvtc" ]; then
  echo "demo: $BUILD/kvtc is missing; run 'make' first" >&2
  exit 1
fi
exec "$BUILD/kvtc" demo "$@"
