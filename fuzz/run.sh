#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) into build-fuzz/, writes
# the seed corpora, and runs every target for a bounded time. Prints, per
# target, the executions and crashes; exits non-zero if any target crashed,
# leaked, timed out or ran out of memory. Every such input is copied into
# tests/data/regress/ so that tests/test_regressions.c replays it from then on.
#
# Environment: FUZZ_SECONDS (per target, default 60), FUZZ_TARGETS (names,
# default all), FUZZ_RSS_MB (default 2048), FUZZ_TIMEOUT (seconds per input,
# default 10), FUZZ_BUILD (default build-fuzz), FUZZ_JOBS (build jobs, default
# nproc), CC (default clang).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FUZZ_BUILD:-$root/build-fuzz}
seconds=${FUZZ_SECONDS:-60}
rss_mb=${FUZZ_RSS_MB:-2048}
per_input=${FUZZ_TIMEOUT:-10}
read -r -a targets <<<"${FUZZ_TARGETS:-kvtc_decode kvtcal_load safetensors gguf llama2c compress_roundtrip llama_state}"
regress=$root/tests/data/regress

# OpenBLAS is not instrumented and its threads only add noise here.
export OPENBLAS_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

cmake -S "$root/fuzz" -B "$build" -DCMAKE_C_COMPILER="${CC:-clang}" \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "${FUZZ_JOBS:-$(nproc)}" >/dev/null
rm -rf "$build/seeds"
"$build/make_seeds" "$build/seeds"

declare -A seed_dir=([kvtc_decode]=kvtc [kvtcal_load]=kvtcal [safetensors]=safetensors
                     [gguf]=gguf [llama2c]=llama2c [compress_roundtrip]=compress
                     [llama_state]=llama_state)
total_crashes=0
total_execs=0
for t in "${targets[@]}"; do
  [ -n "${seed_dir[$t]:-}" ] || { echo "fuzz: unknown target $t" >&2; exit 2; }
  corpus=$build/corpus/$t      # grows from run to run
  artifacts=$build/artifacts/$t
  log=$build/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$build/logs"
  rm -f "$artifacts"/*
  rc=0
  "$build/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$per_input" \
      -malloc_limit_mb="$rss_mb" -print_final_stats=1 -artifact_prefix="$artifacts/" \
      "$corpus" "$build/seeds/${seed_dir[$t]}" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  execs=${execs:-0}
  found=$(find "$artifacts" -type f | wc -l)
  if [ "$rc" -ne 0 ] && [ "$found" -eq 0 ]; then
    found=1 # died without leaving an artifact
  fi
  inputs=$(find "$corpus" -type f | wc -l)
  echo "fuzz_$t: $execs executions in ${seconds} s, $found crashes, corpus $inputs inputs"
  total_execs=$((total_execs + execs))
  total_crashes=$((total_crashes + found))
  if [ "$found" -ne 0 ]; then
    mkdir -p "$regress"
    for a in "$artifacts"/*; do
      [ -f "$a" ] || continue
      cp "$a" "$regress/$t-$(basename "$a")"
      echo "  $(basename "$a") -> tests/data/regress/$t-$(basename "$a")"
    done
    grep -E "ERROR|SUMMARY|invariant|runtime error" "$log" | head -n 5 | sed 's/^/  /'
    echo "  full log: $log"
  fi
done
echo "fuzz: ${#targets[@]} targets, $total_execs executions, $total_crashes crashes"
[ "$total_crashes" -eq 0 ]
