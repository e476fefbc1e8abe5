#!/usr/bin/env bash
# Install smoke test: `cmake --install` the build folder ($KVTC_BUILD_DIR) into
# a temporary prefix, build tests/install/consumer.c against it twice (through
# find_package(kvtc) and through pkg-config) and run both; then run the
# installed kvtc from a folder outside the source tree with KVTC_SOURCE_DIR
# unset: capture, calibrate, compress, decompress and info on the shared
# stories260K model, and generate with the default model when it is in the
# cache folder (each skipped with a message when its model is absent).
set -u

build=${KVTC_BUILD_DIR:-}
if [ -z "$build" ] || [ ! -f "$build/CMakeCache.txt" ]; then
  echo "test_install: skipped: KVTC_BUILD_DIR does not name a configured build folder" \
    "(run it through ctest)"
  exit 77
fi
for tool in cmake pkg-config "${CC:-cc}"; do
  if ! command -v "$tool" >/dev/null; then
    echo "test_install: skipped: $tool not found"
    exit 77
  fi
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stories="${KVTC_SHARED_DIR:-$here/../../shared}/models/stories260K.bin"
work=$(mktemp -d "${TMPDIR:-/tmp}/kvtc-install-XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
failures=0
fail() {
  echo "test_install: FAIL: $*"
  failures=$((failures + 1))
}
# logged LOG COMMAND...: runs COMMAND with its output in $work/LOG, shown on failure.
logged() {
  local log=$work/$1
  shift
  "$@" >"$log" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    fail "$* (exit status $rc):"
    tail -n 30 "$log"
  fi
  return "$rc"
}
finish() {
  if [ "$failures" -ne 0 ]; then
    echo "test_install: $failures failure(s)"
    exit 1
  fi
  echo "test_install: ok"
  exit 0
}

# ---- install --------------------------------------------------------------------
logged install.log cmake --install "$build" --prefix "$prefix" || finish
for f in include/kvtc.h bin/kvtc; do
  [ -f "$prefix/$f" ] || fail "$prefix/$f is not installed"
done
pc=$(find "$prefix" -name kvtc.pc | head -n 1)
lib=$(find "$prefix" -name 'libkvtc.so' | head -n 1)
[ -n "$pc" ] || fail "no kvtc.pc under $prefix"
[ -n "$lib" ] || fail "no libkvtc.so under $prefix"
[ -n "$(find "$prefix" -name kvtcConfig.cmake)" ] || fail "no kvtcConfig.cmake under $prefix"
[ "$failures" -eq 0 ] || finish

# A library built with sanitizers needs consumers built with them too (their
# runtime must come first).
sanitize=$(sed -n 's/^KVTC_SANITIZE:STRING=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
san_flags=${sanitize:+-fsanitize=$sanitize}

# ---- the consumer through find_package(kvtc) ----------------------------------------
if logged cmake-configure.log cmake -S "$here/install" -B "$work/cmake-build" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_FLAGS="$san_flags" &&
  logged cmake-build.log cmake --build "$work/cmake-build"; then
  grep -q "^kvtc_DIR:PATH=$prefix/" "$work/cmake-build/CMakeCache.txt" ||
    fail "find_package(kvtc) found $(grep '^kvtc_DIR' "$work/cmake-build/CMakeCache.txt")," \
      "not the package under $prefix"
  ldd "$work/cmake-build/consumer" | grep -q "libkvtc.so.* => $prefix/" ||
    fail "the find_package consumer does not load the installed libkvtc.so:" \
      "$(ldd "$work/cmake-build/consumer" | grep libkvtc)"
  logged consumer-cmake.log "$work/cmake-build/consumer" && cat "$work/consumer-cmake.log"
fi

# ---- the consumer through pkg-config ----------------------------------------------
if flags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs kvtc); then
  # shellcheck disable=SC2086 # the flags are words
  logged cc.log "${CC:-cc}" -std=c11 -Wall -Wextra -Wpedantic -Werror $san_flags \
    "$here/install/consumer.c" $flags -o "$work/consumer-pc" &&
    logged consumer-pc.log env LD_LIBRARY_PATH="$(dirname "$lib")" "$work/consumer-pc" &&
    cat "$work/consumer-pc.log"
else
  fail "pkg-config --cflags --libs kvtc failed with PKG_CONFIG_PATH=$(dirname "$pc")"
fi

# ---- the installed kvtc, away from the source tree ----------------------------------
mkdir "$work/run"
installed() {
  (cd "$work/run" &&
    env -u KVTC_SOURCE_DIR -u KVTC_BUILD_DIR -u KVTC_BIN -u KVTC_SHARED_DIR "$prefix/bin/kvtc" "$@")
}
logged version.log installed --version
if [ -f "$stories" ]; then
  cp "$stories" "$work/run/stories260K.bin"
  for seed in 1 2 3; do
    logged capture.log installed capture --model stories260K.bin --sample 400 --seed "$seed" \
      -o "seq$seed.safetensors" || finish
  done
  logged calibrate.log installed calibrate -o cal.kvtcal seq1.safetensors seq2.safetensors &&
    logged compress.log installed compress -c cal.kvtcal --ratio 8 -o seq3.kvtc seq3.safetensors &&
    logged decompress.log installed decompress -c cal.kvtcal -o back.safetensors seq3.kvtc &&
    logged info.log installed info seq3.kvtc &&
    echo "test_install: the installed kvtc compressed and restored a stories260K cache"
else
  echo "test_install: $stories is absent: the installed kvtc's run on it is skipped"
fi
if installed fetch --no-download >/dev/null 2>"$work/fetch.log"; then
  if text=$(installed generate --prompt "The capital of France is" -n 4 2>"$work/generate.log"); then
    [ -n "$text" ] || fail "the installed kvtc generated nothing with the default model"
    echo "test_install: the installed kvtc generated with the default model: $text"
  else
    fail "the installed kvtc cannot generate with the default model: $(tail -n 1 "$work/generate.log")"
  fi
else
  echo "test_install: the default model is not in the cache folder ($(cat "$work/fetch.log")):" \
    "generating with it is skipped"
fi
finish
