#!/usr/bin/env bash
# Signals and limits during a real write through the CLI ($KVTC_BIN):
# - SIGTERM, SIGINT and SIGHUP while `kvtc decompress` is writing its output
#   (caught with its temporary file present, then frozen with SIGSTOP so the
#   signal lands mid-write): the process dies of that signal, no temporary file
#   is left, and nothing appears under the output name (an existing file there
#   keeps its content);
# - a stale temporary of a killed run (its pid no longer runs) is removed by
#   the next write into the folder, and a live run's is not;
# - a file size limit (ulimit -f) below the output's size: a clean one-line
#   failure, not a death by SIGXFSZ, and no temporary file left.
set -u
set -m # background jobs keep SIGINT (a non-interactive shell would ignore it for them)

bin=${KVTC_BIN:-}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "test_signals: skipped: KVTC_BIN (${bin:-unset}) is not an executable kvtc"
  exit 77
fi
command -v python3 >/dev/null || { echo "test_signals: skipped: no python3"; exit 77; }
fail=0
bad() { echo "test_signals: FAIL: $*"; fail=$((fail + 1)); }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A long F16 cache (2 layers, 2 KV heads, head_dim 8, 200000 tokens: 25.6 MB),
# a tile of 1000 random tokens repeated, so that its decompression takes a while.
python3 "$(dirname "$0")/support/gaussian_cache.py" "$work/big.safetensors" 2 2 200000 8 7 1000 ||
  { echo "test_signals: FAIL: cannot write the cache"; exit 1; }
if ! "$bin" calibrate --sinks 2 --window 8 -o "$work/calib.kvtcal" "$work/big.safetensors" >/dev/null ||
   ! "$bin" compress -c "$work/calib.kvtcal" --ratio 4 -o "$work/big.kvtc" "$work/big.safetensors" >/dev/null; then
  echo "test_signals: FAIL: the CLI cannot make the inputs"
  exit 1
fi

temporaries() { compgen -G "$1/.kvtc-tmp.*"; }

# interrupt SIGNAL DIR [OLD]: decompress into DIR/out.safetensors, deliver SIGNAL
# while the temporary file exists, and check what is left.
interrupt() {
  local sig=$1 dir=$2 old=${3:-} label="$1 during decompress${3:+ over an existing file}"
  local out="$dir/out.safetensors" pid caught=0 rc
  for attempt in 1 2 3; do
    "$bin" decompress --threads 1 -c "$work/calib.kvtcal" -o "$out" "$work/big.kvtc" \
      >/dev/null 2>"$work/err" 3>&- &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      if temporaries "$dir" >/dev/null; then
        kill -STOP "$pid" 2>/dev/null && caught=1
        break
      fi
    done
    if [ "$caught" -eq 1 ]; then
      temporaries "$dir" >/dev/null || bad "$label: no temporary file while writing"
      kill "-$sig" "$pid"
      kill -CONT "$pid"
      wait "$pid"
      rc=$?
      # job control may report the stop first; waiting again gives the death
      for _ in 1 2 3 4 5; do
        [ "$rc" -eq $((128 + $(kill -l STOP))) ] || break
        wait "$pid"
        rc=$?
      done
      break
    fi
    wait "$pid" # finished before it was seen writing: try again
    rm -f "$out"
    [ -n "$old" ] && echo "$old" >"$out"
  done
  if [ "$caught" -eq 0 ]; then
    bad "$label: never caught writing in 3 attempts"
    return
  fi
  local want=$((128 + $(kill -l "$sig")))
  [ "$rc" -eq "$want" ] || bad "$label: exit status $rc, expected $want (death by $sig): $(cat "$work/err")"
  if temporaries "$dir" >/dev/null; then
    bad "$label: temporary files left: $(temporaries "$dir")"
  fi
  if [ -n "$old" ]; then
    [ "$(cat "$out" 2>/dev/null)" = "$old" ] || bad "$label: the existing output was changed"
  elif [ -e "$out" ]; then
    bad "$label: $out exists after the interruption"
  fi
  echo "  $label: status $rc, nothing left behind"
}

for sig in TERM INT HUP; do
  mkdir -p "$work/$sig"
  interrupt "$sig" "$work/$sig"
done
echo "old content" >"$work/TERM/out.safetensors"
interrupt TERM "$work/TERM" "old content"

# Stale temporaries: one of a pid that no longer runs goes, one of a live pid stays.
sleep 0.01 &
dead=$!
wait "$dead"
mkdir -p "$work/stale"
echo partial >"$work/stale/.kvtc-tmp.$dead.abcdef"
echo partial >"$work/stale/.kvtc-tmp.$$.abcdef"
if "$bin" compress -c "$work/calib.kvtcal" --ratio 4 -o "$work/stale/out.kvtc" \
     "$work/big.safetensors" >/dev/null 2>"$work/err"; then
  [ -e "$work/stale/.kvtc-tmp.$dead.abcdef" ] && bad "stale temporary of dead pid $dead was not removed"
  [ -e "$work/stale/.kvtc-tmp.$$.abcdef" ] || bad "the temporary of a live pid ($$) was removed"
  echo "  stale temporary of a killed run: removed by the next write; a live run's kept"
else
  bad "compress into the folder with stale temporaries failed: $(cat "$work/err")"
fi

# A file size limit of 1 MiB, below the 25.6 MB output.
mkdir -p "$work/limit"
(ulimit -f 1024; exec "$bin" decompress -c "$work/calib.kvtcal" -o "$work/limit/out.safetensors" \
  "$work/big.kvtc") >/dev/null 2>"$work/err"
rc=$?
if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then
  bad "file size limit: exit status $rc, expected a clean failure: $(cat "$work/err")"
fi
lines=$(wc -l <"$work/err")
[ "$lines" -eq 1 ] || bad "file size limit: $lines lines on stderr: $(head -c 300 "$work/err")"
grep -qF "$work/limit/out.safetensors" "$work/err" || bad "file size limit: the error does not name the output: $(cat "$work/err")"
[ -e "$work/limit/out.safetensors" ] && bad "file size limit: the output exists"
temporaries "$work/limit" >/dev/null && bad "file size limit: temporary files left"
echo "  file size limit: status $rc, stderr: $(head -n 1 "$work/err")"

if [ "$fail" -ne 0 ]; then
  echo "test_signals: $fail failure(s)"
  exit 1
fi
echo "test_signals: ok"
