#!/usr/bin/env bash
# The rate-distortion curve of kvtc on the default model: relative error
# around the calibration mean (keys, values) and ΔNLL against the realized
# ratio at targets 8, 16, 24 and 32, on evaluation caches the calibration never
# saw (`kvtc eval --tasks nll`, the evaluation corpus). Prints a markdown table.
#   bash bench/rate_distortion.sh [KVTC] [CALIB]   (default build/kvtc, the
#   model's default calibration); RD_ARGS adds options of `kvtc eval`, e.g.
#   RD_ARGS="--contexts 2" for a quick look. About 10 minutes on 2 cores with
#   the defaults below (4 contexts of 2048 tokens, 256 scored after each).
set -euo pipefail
cd "$(dirname "$0")/.."
KVTC="${1:-build/kvtc}"
CALIB="${2:-}"
args=(--tasks nll --method exact,kvtc:8,kvtc:16,kvtc:24,kvtc:32 --contexts 4
      --context-tokens 2048 --continuation-tokens 256 --json)
[ -n "$CALIB" ] && args+=(-c "$CALIB")
# shellcheck disable=SC2206
args+=(${RD_ARGS:-})
echo "rate_distortion: $KVTC eval ${args[*]} (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
"$KVTC" eval "${args[@]}" | python3 -c '
import json, sys
rows = json.load(sys.stdin)
rows = rows if isinstance(rows, list) else [rows]
print("| method | realized ratio | key rel. error | value rel. error | ΔNLL |")
print("|---|---:|---:|---:|---:|")
for r in rows:
    if r.get("method") == "kvtc":
        print("| kvtc:%g | %.2f | %.4f | %.4f | %+.4f |" % (r["target_ratio"], r["ratio"],
              r["k_rel_error"], r["v_rel_error"], r["delta_nll"]))
'
