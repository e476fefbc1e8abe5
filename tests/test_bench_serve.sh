#!/usr/bin/env bash
# kvtc bench serve end to end on the default model: two real kvtc serve
# processes started by the bench (one with the RAM prompt cache, one without),
# concurrent multi-turn conversations over HTTP, turns alone, and a burst that
# overfills a queue of 1. The bench itself fails on a crash, a failed turn, a
# refusal other than 429 with a JSON error, or a burst reply other than the
# one its prompt gets alone; this checks what it reports.
set -euo pipefail
KVTC="${KVTC_BIN:?KVTC_BIN not set}"
model="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "test_bench_serve: skipped: the default model $model is absent (make test fetches it)"
  exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvtc-bench-serve-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# A small calibration made here: the default one takes minutes to build.
"$KVTC" calibrate --corpus --model "$model" --chunks 4 --chunk-tokens 512 --rank 256 \
  -o "$tmp/cal.kvtcal" >/dev/null 2>&1 || { echo "test_bench_serve: FAIL: calibrate"; exit 1; }
"$KVTC" bench serve -c "$tmp/cal.kvtcal" --conversations 3 --turns 2 --clients 3 --context 512 \
  --idle-ms 100 --max-tokens 4 --max-queue 1 --burst 6 --solo 1 --solo-tokens 8 --threads 2 \
  --json > "$tmp/r.json" || { echo "test_bench_serve: FAIL: kvtc bench serve"; exit 1; }
python3 - "$tmp/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def check(ok, what):
    if not ok:
        print("test_bench_serve: FAIL:", what, json.dumps(r, indent=1))
        sys.exit(1)
cold, resumed, alone = r["cold"], r["resumed"], r["alone"]
print(f"cold {cold['turns']} turns ({cold['mean_prompt_tokens']:.0f} tokens, "
      f"{cold['mean_cached_tokens']:.0f} cached), resumed {resumed['turns']} "
      f"({resumed['mean_prompt_tokens']:.0f}, {resumed['mean_cached_tokens']:.0f} cached); "
      f"burst {r['burst_ok']} right, {r['burst_refused_429']} refused, {r['burst_wrong']} wrong; "
      f"alone greedy agreement {alone['greedy_agreement']:.3f}")
check(cold["turns"] == 3 and resumed["turns"] == 3, "every turn answered once")
# the shared system prompt's whole blocks at most, on a first turn
check(cold["mean_cached_tokens"] < cold["mean_prompt_tokens"] / 2, "first turns mostly run")
check(resumed["mean_cached_tokens"] > 0.8 * resumed["mean_prompt_tokens"],
      "later turns restored from the prompt cache")
ram = [t for t in r["tiers"] if t["tier"] == "ram"]
check(len(ram) == 1 and ram[0]["hits"] >= 3 and ram[0]["entries"] >= 3, "ram tier hits and entries")
check(r["compressed_bytes_per_conversation"] < r["raw_fp16_bytes_per_conversation"] / 3,
      "compressed conversations smaller than raw")
check(r["burst_sent"] == 6 and r["burst_wrong"] == 0, "burst: nothing wrong")
check(r["burst_ok"] >= 1 and r["burst_refused_429"] >= 1 and
      r["burst_ok"] + r["burst_refused_429"] == 6, "burst: answered or refused with 429")
check(alone["turns"] == 1 and alone["mean_cached_tokens"] > 0, "a turn alone, resumed")
check(0 <= alone["greedy_agreement"] <= 1, "agreement measured")
PY
