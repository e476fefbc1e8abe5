#!/usr/bin/env bash
# The accuracy harness end to end on the default model, kept small: a small
# calibration made here from calibration text (the default one takes minutes to
# build), then `kvtc eval` on tiny contexts with exact, kvtc and h2o. Checks the
# JSON: every required key, `exact` reproducing the run bit for bit, realized
# ratios on the one definition, accuracies as fractions.
set -euo pipefail
model="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "test_eval_small: skipped: the default model $model is absent"
  exit 77
fi
if ! command -v python3 >/dev/null; then
  echo "test_eval_small: skipped: python3 not found"
  exit 77
fi
calib_text=(/usr/share/common-licenses/Apache-2.0 /usr/include/stdio.h)
for f in "${calib_text[@]}"; do
  if [ ! -r "$f" ]; then
    echo "test_eval_small: skipped: calibration text $f is absent"
    exit 77
  fi
done
kvtc="${KVTC_BIN:?KVTC_BIN not set}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# calibration text only (app/corpus.h keeps it apart from the evaluation
# text): its first three chunks, the starts of Apache-2.0, stdio.h and the
# generated numbers
"$kvtc" calibrate --corpus --model "$model" --chunks 3 --chunk-tokens 384 --rank 256 \
  -o "$tmp/cal.kvtcal" > "$tmp/cal.txt"
grep -q "3 chunks, 1152 tokens" "$tmp/cal.txt" || { cat "$tmp/cal.txt"; exit 1; }

"$kvtc" eval --model "$model" -c "$tmp/cal.kvtcal" --method exact,kvtc:16,h2o:8,int4,tova:8 \
  --tasks nll,passkey,kv,code --contexts 2 --context-tokens 200 --continuation-tokens 16 \
  --haystacks 1 --facts 2 --haystack-tokens 200 --kv-contexts 1 --kv-tokens 200 \
  --kv-questions 2 --code-contexts 4 --code-tokens 300 --code-questions 2 --json > "$tmp/eval.json"

python3 - "$tmp/eval.json" <<'PY'
import json, math, sys
rows = {r["label"]: r for r in json.load(open(sys.argv[1]))}
failures = []
def check(ok, what):
    if not ok:
        failures.append(what)
need = ["method", "ratio", "target_ratio", "nll_exact", "nll", "delta_nll", "top1_agreement",
        "passkey_accuracy_exact", "passkey_accuracy"]
for label, r in rows.items():
    for k in need:
        check(k in r, f"{label}: key {k} missing")
    check(r["scored_tokens"] == 2 * 16, f"{label}: scored {r['scored_tokens']} tokens, not 32")
    check(r["passkey_cases"] == 2, f"{label}: {r['passkey_cases']} retrieval cases, not 2")
    check(r["kv_cases"] == 2 and r["kv_contexts"] == 1, f"{label}: {r['kv_cases']} key-value cases")
    # only excerpts with constant macros in their treated part ask (2 of the 4 here)
    check(r["code_contexts"] == 4 and 1 <= r["code_cases"] <= 8, f"{label}: {r['code_cases']} code cases")
    for k in ["passkey_accuracy", "passkey_accuracy_exact", "top1_agreement"]:
        check(0 <= r[k] <= 1, f"{label}: {k} {r[k]} is not a fraction")
    # the one ratio definition, from the bytes reported
    check(abs(r["ratio"] - r["fp16_bytes"] / r["stored_bytes"]) < 1e-9, f"{label}: ratio")
    check(math.isfinite(r["nll"]) and r["nll"] > 0, f"{label}: nll {r['nll']}")
e = rows["exact"]
check(e["bit_identical"] is True, "exact did not reproduce the uninterrupted run bit for bit")
check(e["delta_nll"] == 0 and e["top1_agreement"] == 1, "exact changed the scores")
check(e["passkey_accuracy"] == e["passkey_accuracy_exact"], "exact changed retrieval")
check(e["kv_accuracy"] == e["kv_accuracy_exact"], "exact changed key-value retrieval")
check(e["code_accuracy"] == e["code_accuracy_exact"], "exact changed the code answers")
check(len({r["code_cases"] for r in rows.values()}) == 1, "every method answers the same questions")
check(rows["tova:8"]["ratio"] >= 8, f"tova:8 realized {rows['tova:8']['ratio']}")
check(e["ratio"] == 1 and e["target_ratio"] is None, "exact ratio")
check(rows["kvtc:16"]["target_ratio"] == 16 and rows["kvtc:16"]["ratio"] > 4,
      f"kvtc:16 realized {rows['kvtc:16']['ratio']}")
check(rows["h2o:8"]["ratio"] >= 8, f"h2o:8 realized {rows['h2o:8']['ratio']}")
# the facts' tokens are measured apart: untouched by exact, changed by int4
check(e["k_fact_rel_error"] == 0 and e["v_fact_rel_error"] == 0, "exact changed the facts")
for k in ["k_fact_rel_error", "v_fact_rel_error"]:
    v = rows["int4"][k]
    check(v is not None and 0 < v < 1, f"int4 {k} {v}")
# int4 with an fp16 scale per 32 values: 16 / 4.5 exactly
check(abs(rows["int4"]["ratio"] - 16 / 4.5) < 1e-9, f"int4 realized {rows['int4']['ratio']}")
# fp16 contexts of this size: each treated token costs 2 kinds x 5760 features x 2 bytes
treated = 2 * (200 - 4 - 128)
for label, r in rows.items():
    check(r["fp16_bytes"] >= treated * 4 * 5760, f"{label}: fp16 bytes {r['fp16_bytes']}")
for f in failures:
    print("test_eval_small: FAIL:", f)
for label, r in rows.items():
    print(f"test_eval_small: {label}: ratio {r['ratio']:.2f}, delta_nll {r['delta_nll']:+.4f}, "
          f"top1 {r['top1_agreement']:.3f}, retrieval {r['passkey_accuracy']:.2f}")
sys.exit(1 if failures else 0)
PY
