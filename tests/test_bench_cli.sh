#!/usr/bin/env bash
# The 'kvtc bench' and 'kvtc demo' command lines: help, usage errors, a short
# time-to-first-token run on the default model with a small calibration made
# here, and a short decode run, whose JSON must carry the documented keys
# (skipped, with exit 77 and the reason, only when the model is absent).
set -uo pipefail
KVTC="${KVTC_BIN:-./kvtc}"
fail=0
check() { # check WANT_STATUS DESCRIPTION CMD...
  local want="$1" what="$2"
  shift 2
  "$@" >/tmp/kvtc_bench_cli.$$ 2>&1
  local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, want $want"
    sed 's/^/  | /' /tmp/kvtc_bench_cli.$$
    fail=1
  fi
}
trap 'rm -f /tmp/kvtc_bench_cli.$$' EXIT

check 0 "bench --help" "$KVTC" bench --help
grep -q ttft /tmp/kvtc_bench_cli.$$ || { echo "FAIL: bench --help lists no ttft"; fail=1; }
for b in ttft codec prefill decode calibration memory serve; do
  check 0 "bench $b --help" "$KVTC" bench "$b" --help
done
check 0 "demo --help" "$KVTC" demo --help
check 2 "bench without a benchmark" "$KVTC" bench
check 2 "unknown benchmark" "$KVTC" bench nosuch
check 2 "context below the minimum" "$KVTC" bench ttft --context 10
check 2 "ratio not above 1" "$KVTC" bench ttft --ratio 1
check 2 "repeat 0" "$KVTC" bench ttft --repeat 0
check 2 "unknown option" "$KVTC" bench codec --frobnicate
check 2 "operand to ttft" "$KVTC" bench ttft extra
check 2 "operand to serve" "$KVTC" bench serve extra
check 2 "serve: --cold-url without --url" "$KVTC" bench serve --cold-url http://127.0.0.1:1
check 2 "serve: one turn" "$KVTC" bench serve --turns 1
check 2 "operand to demo" "$KVTC" demo extra

# The real thing on the default model, with a small calibration made here
# (the default one takes minutes to build): skipped, saying so, only when the
# model itself is absent.
model="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "test_bench_cli: the ttft run skipped: the default model $model is absent (make test fetches it)"
  [ "$fail" -eq 0 ] && exit 77
  exit "$fail"
fi
tmp=$(mktemp -d)
trap 'rm -f /tmp/kvtc_bench_cli.$$; rm -rf "$tmp"' EXIT
check 0 "calibrate --corpus (small)" "$KVTC" calibrate --corpus --model "$model" --chunks 2 \
  --chunk-tokens 256 --rank 64 -o "$tmp/small.kvtcal"
if ! "$KVTC" bench ttft --model "$model" -c "$tmp/small.kvtcal" --context 512 --repeat 1 \
     --threads 2 --json >/tmp/kvtc_bench_cli.$$ 2>&1; then
  echo "FAIL: bench ttft on the default model"
  sed 's/^/  | /' /tmp/kvtc_bench_cli.$$
  fail=1
else
  for key in context ratio recompute_ms restore_ms ttft_ratio restore_whole_ms stages_ms \
             next_token_agrees; do
    grep -q "\"$key\"" /tmp/kvtc_bench_cli.$$ || { echo "FAIL: ttft JSON lacks $key"; fail=1; }
  done
  grep -q '"context": *512' /tmp/kvtc_bench_cli.$$ || { echo "FAIL: context is not 512"; fail=1; }
fi
if ! "$KVTC" bench decode --model "$model" --context 200 --threads 2 --json \
     >/tmp/kvtc_bench_cli.$$ 2>&1; then
  echo "FAIL: bench decode on the default model"
  sed 's/^/  | /' /tmp/kvtc_bench_cli.$$
  fail=1
else
  for key in context steps peak_rss_mb threads ms_per_token tokens_per_s bytes_per_token \
             gb_per_s memory_bandwidth_gb_per_s; do
    grep -q "\"$key\"" /tmp/kvtc_bench_cli.$$ || { echo "FAIL: decode JSON lacks $key"; fail=1; }
  done
fi
exit $fail
