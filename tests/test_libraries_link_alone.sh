#!/usr/bin/env bash
# Every static library links on its own: each one, all of its objects forced in
# (--whole-archive), links into a program with only the libraries it declares
# beneath it. A symbol that lives only in a room above (a CLI helper used by
# eval, say) is an undefined reference here.
set -euo pipefail
build="${KVTC_BUILD_DIR:?KVTC_BUILD_DIR not set (run it through ctest)}"
cc="${CC:-cc}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
system_libs=$(pkg-config --libs libdeflate nettle openblas lapacke)
# a build made with sanitizers links their runtimes
sanitize=$(sed -n 's/^KVTC_SANITIZE:STRING=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
flags=()
[ -z "$sanitize" ] || flags+=("-fsanitize=$sanitize")
printf 'int main(void) { return 0; }\n' > "$tmp/main.c"
"$cc" "${flags[@]}" -c "$tmp/main.c" -o "$tmp/main.o"

# library: the libraries it declares, in link order (CMakeLists.txt)
declare -A below=(
  [kvtc]=""
  [kvtc_engine]="kvtc"
  [kvtc_app]="kvtc_engine kvtc"
  [kvtc_eval]="kvtc_app kvtc_engine kvtc"
  [kvtc_bench]="kvtc_eval kvtc_app kvtc_engine kvtc"
  [kvtc_server]="kvtc_app kvtc_engine kvtc"
)
declare -A extra_libs=([kvtc_eval]="$(pkg-config --libs libzstd)" [kvtc_bench]="$(pkg-config --libs libzstd libcurl)"
                      [kvtc_server]="$(pkg-config --libs libmicrohttpd hiredis)")
failed=0 checked=0
for lib in kvtc kvtc_engine kvtc_app kvtc_eval kvtc_bench kvtc_server; do
  archive="$build/lib$lib.a"
  if [ ! -f "$archive" ]; then
    echo "FAIL: $archive is missing (build the project first)"
    failed=$((failed + 1))
    continue
  fi
  deps=()
  for d in ${below[$lib]}; do deps+=("$build/lib$d.a"); done
  if ! "$cc" "${flags[@]}" -o "$tmp/$lib" "$tmp/main.o" -Wl,--whole-archive "$archive" \
       -Wl,--no-whole-archive "${deps[@]}" ${extra_libs[$lib]:-} $system_libs -lpthread -lm \
       2> "$tmp/$lib.log"; then
    echo "FAIL: lib$lib.a does not link on its own:"
    grep -m 5 "undefined reference" "$tmp/$lib.log" || head -n 5 "$tmp/$lib.log"
    failed=$((failed + 1))
  else
    echo "ok: lib$lib.a links with ${below[$lib]:-no other kvtc library}"
  fi
  checked=$((checked + 1))
done
echo "$((checked - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
