#!/usr/bin/env bash
# Builds the real llama.cpp (CPU only) from the llama-cpp-python sdist on PyPI, which
# vendors llama.cpp's sources, plus our test driver tests/llama_cpp/seq_state_driver.c.
# Everything is cached in ~/.cache/kvtc/llama.cpp-<version>/, so a rerun is instant.
# Usage: scripts/build-llama-cpp.sh [--server]   (prints the cache folder on stdout)
set -euo pipefail
VERSION=0.3.36                       # llama-cpp-python; its vendor/llama.cpp is what we test
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}/llama.cpp-$VERSION"
src="$cache/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
want_server=0
[ "${1:-}" = "--server" ] && want_server=1
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9                              # concurrent test runs wait for one build

if [ ! -f "$src/CMakeLists.txt" ]; then
  tmp="$(mktemp -d "$cache/dl.XXXXXX")"
  python3 -m pip download -q --no-binary :all: --no-deps -d "$tmp" "llama-cpp-python==$VERSION" >&2
  mkdir -p "$tmp/src"
  tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp/src"
  rm -rf "$cache/src"
  mv "$tmp/src" "$cache/src"
  rm -rf "$tmp"
fi

bld="$cache/build"
if [ ! -f "$bld/CMakeCache.txt" ]; then
  cmake -S "$src" -B "$bld" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_OPENMP=OFF >&2
fi
jobs="${JOBS:-$(nproc)}"
[ -f "$bld/.llama-built" ] || { cmake --build "$bld" -j "$jobs" --target llama >&2 && touch "$bld/.llama-built"; }
if [ "$want_server" = 1 ] && [ ! -f "$bld/.server-built" ]; then
  cmake --build "$bld" -j "$jobs" --target llama-server >&2 && touch "$bld/.server-built"
fi

# The driver is ours and small: rebuilt whenever its source changes.
drv_src="$root/tests/llama_cpp/seq_state_driver.c"
drv_key="$(sha256sum "$drv_src" | cut -c1-16)"
drv="$cache/seq_state_driver-$drv_key"
if [ ! -x "$drv" ]; then
  libdir="$(dirname "$(find "$bld" -name 'libllama.so' | head -1)")"
  cc -std=c11 -O2 -Wall -Wextra -o "$drv.tmp" "$drv_src" -I"$src/include" -I"$src/ggml/include" \
    -L"$libdir" -lllama -lm -Wl,-rpath,"$libdir" >&2
  mv "$drv.tmp" "$drv"
fi
ln -sfn "$(basename "$drv")" "$cache/seq_state_driver"
echo "$cache"
