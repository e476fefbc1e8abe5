#!/usr/bin/env bash
# `kvtc eval --journal`: a run killed midway (SIGKILL, nothing flushed on the
# way out) and run again resumes after its last finished context, and its
# results equal an uninterrupted run's in every number but the times. A
# damaged journal is refused naming the file and left alone; another run's
# journal is not used.
set -euo pipefail
model="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$model" ]; then
  echo "test_eval_resume: skipped: the default model $model is absent"
  exit 77
fi
if [ ! -r /usr/share/common-licenses/Apache-2.0 ]; then
  echo "test_eval_resume: skipped: calibration text /usr/share/common-licenses/Apache-2.0 is absent"
  exit 77
fi
kvtc="${KVTC_BIN:?KVTC_BIN not set}"
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "test_eval_resume: FAIL: $*"; exit 1; }

"$kvtc" calibrate --corpus --model "$model" --chunks 2 --chunk-tokens 384 --rank 128 \
  -o "$tmp/cal.kvtcal" > /dev/null
# 3 + 2 = 5 contexts
args=(eval --model "$model" -c "$tmp/cal.kvtcal" --method exact,kvtc:16,int4 --threads 1
      --tasks nll,passkey --contexts 3 --context-tokens 200 --continuation-tokens 16
      --haystacks 2 --facts 2 --haystack-tokens 200 --json)
"$kvtc" "${args[@]}" > "$tmp/whole.json"

# interrupted: killed as soon as the journal records a finished context
journal="$tmp/run.journal"
"$kvtc" "${args[@]}" --journal "$journal" > /dev/null 2>&1 &
pid=$!
for _ in $(seq 1 3000); do
  [ -s "$journal" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.01
done
kill -9 "$pid" 2>/dev/null || fail "the run ended before it could be interrupted"
wait "$pid" 2>/dev/null || true
pid=
[ -s "$journal" ] || fail "no journal after the first context"
cp "$journal" "$tmp/saved.journal"

if ! "$kvtc" "${args[@]}" --journal "$journal" > "$tmp/resumed.json" 2> "$tmp/resumed.err"; then
  cat "$tmp/resumed.err"
  fail "the resumed run failed"
fi
n=$(sed -n 's/^kvtc eval: resumed after \([0-9]*\) contexts from .*/\1/p' "$tmp/resumed.err")
[ -n "$n" ] && [ "$n" -ge 1 ] && [ "$n" -lt 5 ] ||
  { cat "$tmp/resumed.err"; fail "did not resume"; }
[ ! -e "$journal" ] || fail "the journal of a completed run was left behind"

python3 - "$tmp/whole.json" "$tmp/resumed.json" <<'PY'
import json, sys
whole, resumed = (json.load(open(p)) for p in sys.argv[1:3])
bad = []
for a, b in zip(whole, resumed):
    for k in a:
        if k not in ("seconds", "treat_seconds") and a[k] != b[k]:
            bad.append(f"{a['label']}.{k}: {a[k]} uninterrupted, {b[k]} resumed")
if len(whole) != len(resumed) or bad:
    print("\n".join(["test_eval_resume: FAIL: resumed results differ"] + bad))
    sys.exit(1)
print(f"test_eval_resume: {len(whole)} methods, every number equal to the uninterrupted run's")
PY
echo "test_eval_resume: resumed after $n of 5 contexts"

# another run's journal (another method list) is not used
cp "$tmp/saved.journal" "$journal"
if ! "$kvtc" "${args[@]/exact,kvtc:16,int4/exact}" --journal "$journal" > /dev/null \
  2> "$tmp/other.err"; then
  cat "$tmp/other.err"
  fail "the run with another run's journal failed"
fi
grep -q "another run's journal: started over" "$tmp/other.err" ||
  { cat "$tmp/other.err"; fail "another run's journal was used"; }
grep -q "resumed" "$tmp/other.err" && fail "resumed from another run's journal"

# a damaged journal: refused, named, left as it was
cp "$tmp/saved.journal" "$journal"
printf 'X' | dd of="$journal" bs=1 seek=40 conv=notrunc status=none
cp "$journal" "$tmp/damaged.journal"
if "$kvtc" "${args[@]}" --journal "$journal" > "$tmp/out.json" 2> "$tmp/damaged.err"; then
  fail "a damaged journal was accepted"
fi
[ "$(wc -l < "$tmp/damaged.err")" -eq 1 ] && grep -q "$journal: .*damaged" "$tmp/damaged.err" ||
  { cat "$tmp/damaged.err"; fail "no one-line error naming the damaged journal"; }
cmp -s "$journal" "$tmp/damaged.journal" || fail "the damaged journal was changed"
echo "test_eval_resume: damaged journal refused: $(cat "$tmp/damaged.err")"
