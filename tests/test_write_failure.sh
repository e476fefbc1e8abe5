#!/usr/bin/env bash
# Write failures of the CLI: an output into a missing folder, under a path whose
# parent is a file, into a read-only folder, and onto a full disk must each end
# with a non-zero status and one line on stderr naming the output file, and
# leave nothing under the final name (an existing file there stays as it was)
# and no temporary file behind.
#
# The read-only and full-disk cases mount small tmpfs folders in a private
# mount namespace (unshare -m as root, unshare -rm otherwise); where that is
# not possible they are skipped with a message. As a non-root user the
# read-only case also runs on a chmod 555 folder.
set -u

fail=0
bad() { echo "test_write_failure: FAIL: $*"; fail=$((fail + 1)); }

# expect_write_failure LABEL OUT [OLD_CONTENT] -- COMMAND...
# Runs COMMAND, which writes OUT, and checks the failure is clean.
expect_write_failure() {
  local label=$1 out=$2 old=$3
  shift 4
  local errf rc lines
  errf=$(mktemp)
  "$@" >/dev/null 2>"$errf"
  rc=$?
  lines=$(wc -l <"$errf")
  if [ "$rc" -eq 0 ]; then
    bad "$label: exit status 0"
  elif [ "$rc" -ge 128 ]; then
    bad "$label: killed by signal $((rc - 128))"
  fi
  if [ "$lines" -ne 1 ]; then
    bad "$label: $lines lines on stderr, expected 1: $(head -c 400 "$errf")"
  elif ! grep -qF -- "$out" "$errf"; then
    bad "$label: the error does not name $out: $(cat "$errf")"
  fi
  if [ -n "$old" ]; then
    [ "$(cat "$out" 2>/dev/null)" = "$old" ] || bad "$label: the existing $out was changed"
  elif [ -e "$out" ]; then
    bad "$label: $out exists after the failure"
  fi
  if compgen -G "$(dirname "$out")/.kvtc-tmp.*" >/dev/null; then
    bad "$label: temporary files left: $(echo "$(dirname "$out")"/.kvtc-tmp.*)"
  fi
  echo "  $label: status $rc, stderr: $(head -n 1 "$errf")"
  rm -f "$errf"
}

# Every output-writing command, aimed at OUT.
each_command() { # LABEL DIR [OLD]
  local label=$1 dir=$2 old=${3:-}
  expect_write_failure "$label: calibrate" "$dir/out.kvtcal" "$old" -- \
    "$bin" calibrate --sinks 2 --window 8 -o "$dir/out.kvtcal" "$work/cache0.safetensors"
  expect_write_failure "$label: compress" "$dir/out.kvtc" "$old" -- \
    "$bin" compress -c "$work/calib.kvtcal" --ratio 4 -o "$dir/out.kvtc" "$work/cache2.safetensors"
  expect_write_failure "$label: decompress" "$dir/out.safetensors" "$old" -- \
    "$bin" decompress -c "$work/calib.kvtcal" -o "$dir/out.safetensors" "$work/good.kvtc"
}

# Inside a private mount namespace: a read-only tmpfs and a full one.
mounted_checks() {
  mkdir -p "$work/romnt" "$work/full"
  if mount -t tmpfs -o size=64k,ro tmpfs "$work/romnt" 2>/dev/null; then
    each_command "read-only mount" "$work/romnt"
  else
    echo "  read-only mount: skipped (cannot mount a tmpfs here)"
  fi
  if mount -t tmpfs -o size=64k tmpfs "$work/full" 2>/dev/null; then
    for f in out.kvtcal out.kvtc out.safetensors; do echo "old content" >"$work/full/$f"; done
    dd if=/dev/zero of="$work/full/filler" bs=4k 2>/dev/null # until the disk is full
    each_command "full disk, overwriting" "$work/full" "old content"
    rm -f "$work/full"/out.*
    dd if=/dev/zero of="$work/full/filler2" bs=1 2>/dev/null
    each_command "full disk" "$work/full"
  else
    echo "  full disk: skipped (cannot mount a tmpfs here)"
  fi
  return "$fail"
}

if [ "${1:-}" = "--mounted" ]; then
  bin=$2 work=$3
  mounted_checks
  exit $?
fi

bin=${KVTC_BIN:-}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "test_write_failure: skipped: KVTC_BIN (${bin:-unset}) is not an executable kvtc"
  exit 77
fi
command -v python3 >/dev/null || { echo "test_write_failure: skipped: no python3"; exit 77; }
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# Three small F16 caches (2 layers, 2 KV heads, head_dim 8, 48 tokens).
for n in 0 1 2; do
  python3 "$(dirname "$0")/support/gaussian_cache.py" "$work/cache$n.safetensors" 2 2 48 8 "$n" ||
    { echo "test_write_failure: FAIL: cannot write caches"; exit 1; }
done
if ! "$bin" calibrate --sinks 2 --window 8 -o "$work/calib.kvtcal" \
     "$work/cache0.safetensors" "$work/cache1.safetensors" >/dev/null ||
   ! "$bin" compress -c "$work/calib.kvtcal" --ratio 4 -o "$work/good.kvtc" \
     "$work/cache2.safetensors" >/dev/null; then
  echo "test_write_failure: FAIL: the CLI cannot make the inputs"
  exit 1
fi

each_command "missing folder" "$work/missing"
touch "$work/afile"
each_command "parent is a file" "$work/afile"
if [ "$(id -u)" -ne 0 ]; then
  mkdir "$work/ro" && chmod 555 "$work/ro"
  each_command "read-only folder" "$work/ro"
else
  echo "  read-only folder (chmod): skipped: root ignores permissions (the mount below covers it)"
fi

if [ "$(id -u)" -eq 0 ]; then userns=(unshare -m); else userns=(unshare -rm); fi
if "${userns[@]}" true 2>/dev/null; then
  "${userns[@]}" bash "$0" --mounted "$bin" "$work"
  fail=$((fail + $?))
else
  echo "  read-only mount and full disk: skipped: no private mount namespace (unshare) here"
fi

if [ "$fail" -ne 0 ]; then
  echo "test_write_failure: $fail failed checks"
  exit 1
fi
echo "test_write_failure: ok"
