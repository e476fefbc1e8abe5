#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B end to end, small: calibrate on a few chunks of the
# calibration corpus, capture a cache of an evaluation text (disjoint from the
# corpus), compress it at 8x and 16x, check the realized ratios and errors,
# decompress it to a file, and check that the restored cache gives the same
# next token as the exact one. `make test` fetches the model (make model).
# About a minute on 2 cores.
set -euo pipefail
kvtc="${KVTC_BIN:?KVTC_BIN not set}"
if ! model=$("$kvtc" fetch --no-download qwen2.5-coder-0.5b 2>/dev/null); then
  echo "skip: the qwen2.5-coder-0.5b model is absent from the cache folder" \
       "(make model, or kvtc fetch qwen2.5-coder-0.5b, fetches it)"
  exit 77
fi
text=/usr/include/linux/perf_event.h # an evaluation document of app/corpus.c
if [ ! -f "$text" ]; then
  echo "skip: $text is absent (Debian package linux-libc-dev)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
threads=2
tokens=320
window=16 # raw recent tokens: small, so that the next token depends on coded ones

start=$SECONDS
"$kvtc" calibrate --corpus --model "$model" --chunks 4 --chunk-tokens 512 --window "$window" \
  --threads "$threads" -o "$tmp/cal.kvtcal"
echo "calibration: $((SECONDS - start)) s"
"$kvtc" capture --model "$model" --text "$text" --max-tokens "$tokens" --threads "$threads" \
  -o "$tmp/exact.safetensors"

check() { # ratio, max K error, max V error
  "$kvtc" stats -c "$tmp/cal.kvtcal" --ratio "$1" --threads "$threads" --json \
    "$tmp/exact.safetensors" > "$tmp/r$1.json"
  python3 - "$tmp/r$1.json" "$1" "$2" "$3" "$tokens" "$window" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
target, kmax, vmax = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
tokens, window = int(sys.argv[5]), int(sys.argv[6])
print(f"ratio {target:g}: realized {r['ratio']:.2f}x (file {r['file_ratio']:.2f}x), "
      f"K rel err {r['k_rel_error']:.4f} (<= {kmax}), V rel err {r['v_rel_error']:.4f} (<= {vmax}) around the mean; "
      f"over the raw energy K {r['k_rel_error_raw']:.4f}, V {r['v_rel_error_raw']:.4f}")
# the stored-bytes target is met within 3% (kvtc.h, KVTC_RATIO_STORED)
ok = abs(r["ratio"] / target - 1) <= 0.03 and r["k_rel_error"] <= kmax and r["v_rel_error"] <= vmax
ok = ok and r["tokens"] == tokens and r["compressed_tokens"] == tokens - 4 - window
sys.exit(0 if ok else 1)
PY
}
# Bounds on the error around the calibration mean (what kvtc eval reports).
# Measured (2 threads): 8x K 0.028, V 0.051; 16x K 0.065, V 0.108. Over the raw
# energy the keys read 70x better (0.0004, 0.0010): Qwen's keys carry a large
# mean (a few large channels), which the codec keeps exactly.
check 8 0.04 0.07
check 16 0.09 0.14

# The next token after the restored 16x cache is the exact cache's.
"$kvtc" compress -c "$tmp/cal.kvtcal" --ratio 16 --threads "$threads" \
  -o "$tmp/c16.kvtc" "$tmp/exact.safetensors"
"$kvtc" decompress -c "$tmp/cal.kvtcal" --threads "$threads" -o "$tmp/restored.safetensors" \
  "$tmp/c16.kvtc"
next() { # the greedy next token after the cache $1 and a newline, as text
  "$kvtc" generate --model "$model" --cache "$1" --prompt $'\n' -n 1 --threads "$threads" \
    2>/dev/null
}
want=$(next "$tmp/exact.safetensors")
got=$(next "$tmp/restored.safetensors")
echo "next token after the exact cache: $(printf %q "$want"); after the 16x one: $(printf %q "$got")"
[ -n "$want" ] || fail "no next token after the exact cache"
[ "$got" = "$want" ] || fail "the restored 16x cache gives another next token"
echo "total: $((SECONDS - start)) s"
