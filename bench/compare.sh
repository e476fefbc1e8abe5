#!/usr/bin/env bash
# bench/compare.sh [BASE]: 'kvtc bench ttft' of this build against BASE (a commit,
# default c100641, the codec before the tile kernels) built from git history,
# side by side in one run: ROUNDS rounds, each running both versions one after
# the other (the order alternating), medians over the rounds of each run's own
# median of REPEAT restores. Prints restore and decode times, decode MB/s of
# restored fp16 per core and each stage's time. The base build is cached in
# ~/.cache/kvtc/base-<commit>. Both use the default model and calibration.
# Environment: BUILD (default build), CONTEXT (4096), RATIO (16), ROUNDS (3),
# REPEAT (3), THREADS (all CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${1:-c100641}"
BUILD="${BUILD:-build}"
CONTEXT="${CONTEXT:-4096}"
RATIO="${RATIO:-16}"
ROUNDS="${ROUNDS:-3}"
REPEAT="${REPEAT:-3}"
THREADS="${THREADS:-$(nproc)}"
NEW="$BUILD/kvtc"
if [ ! -x "$NEW" ]; then
  echo "compare: $NEW is missing; run 'make' first" >&2
  exit 1
fi
rev="$(git rev-parse --short=12 "$BASE^{commit}")"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/kvtc/base-$rev"
OLD="$cache/build/kvtc"
if [ ! -f "$cache/built" ]; then
  echo "compare: building $rev into $cache (first use)" >&2
  rm -rf "$cache"
  mkdir -p "$cache/src"
  git archive "$rev" | tar -x -C "$cache/src"
  cmake -S "$cache/src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$cache/build" -j"$(nproc)" --target kvtc >/dev/null
  touch "$cache/built"
fi

# Each version's own default calibration: the base reads the model through a
# link in its cache folder, where a link to this build's calibration also
# lies; a base of the same recipe uses it, one of another builds its own
# there (removing only the link as stale), never touching this build's.
model="$("$NEW" fetch)"
calib="$("$NEW" fetch --calibration | tail -n 1)"
mkdir -p "$cache/model"
ln -sfn "$model" "$cache/model/$(basename "$model")"
ln -sfn "$calib" "$cache/model/$(basename "$calib")"
old_model=(--model "$cache/model/$(basename "$model")")

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
args=(bench ttft --context "$CONTEXT" --ratio "$RATIO" --repeat "$REPEAT" --threads "$THREADS" --json)
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
  for v in $order; do
    echo "compare: round $r/$ROUNDS, $v" >&2
    if [ "$v" = old ]; then
      "$OLD" "${args[@]}" "${old_model[@]}" > "$out/$v.$r.json"
    else
      "$NEW" "${args[@]}" > "$out/$v.$r.json"
    fi
  done
done

python3 - "$out" "$ROUNDS" "$rev" "$(git rev-parse --short HEAD)" "$THREADS" <<'PY'
import json, statistics, sys
out, rounds, base, head, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
runs = {v: [json.load(open(f"{out}/{v}.{r}.json")) for r in range(1, rounds + 1)] for v in ("old", "new")}
def med(v, *path):
    vals = []
    for j in runs[v]:
        x = j
        for p in path:
            x = x.get(p) if isinstance(x, dict) else None
        if x is not None:
            vals.append(x)
    return statistics.median(vals) if vals else None
j0 = runs["new"][0]
fp16_mb = j0["fp16_kb_per_token"] * 1024 * j0["context"] / 1e6
print(f"restore of {j0['context']} tokens at ratio {j0['ratio']:g}, {threads} threads: base {base} "
      f"against this build ({head}); median of {rounds} alternating rounds")
def fmt(x, f="{:.1f}"):
    return "-" if x is None else f.format(x)
def row(name, *path, f="{:.1f}"):
    o, n = med("old", *path), med("new", *path)
    sp = f"{o / n:.2f}x" if o and n else ""
    print(f"  {name:<34} {fmt(o, f):>10} {fmt(n, f):>10} {sp:>8}")
print(f"  {'':<34} {'base':>10} {'this':>10} {'speedup':>8}")
row("restore, read to 1 token (ms)", "restore_ms")
for st in ("read", "inflate", "dequantize", "inverse_projection", "rope_dtype", "import",
           "forward_1_token"):
    row(f"  {st} (ms)", "stages_ms", st)
o_dec = [fp16_mb / ((j["stages_ms"]["inflate"] + j["stages_ms"]["dequantize"] +
         j["stages_ms"]["inverse_projection"] + j["stages_ms"]["rope_dtype"]) / 1e3) / threads
         for j in runs["old"]]
n_dec = [j.get("decode_mb_s_per_core") for j in runs["new"]]
print(f"  {'decode MB/s of fp16 per core':<34} {statistics.median(o_dec):>10.1f} "
      f"{statistics.median(n_dec):>10.1f}")
print(f"  {'file ratio':<34} {med('old', 'file_ratio'):>10.2f} {med('new', 'file_ratio'):>10.2f}")
agree = lambda v: all(j["next_token_agrees"] for j in runs[v])
print(f"  {'next token same as recompute':<34} {'yes' if agree('old') else 'no':>10} "
      f"{'yes' if agree('new') else 'no':>10}")
print(f"  (kernels of this build: {j0.get('kernels', '?')}; base decode MB/s from its stages: "
      "inflate+dequantize+projection+RoPE/dtype)")
PY
