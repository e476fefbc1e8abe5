#!/usr/bin/env bash
# The test suite under sanitizers:
#   1. build-asan, -DKVTC_SANITIZE=address,undefined: the WHOLE ctest suite
#      (AddressSanitizer + LeakSanitizer + UndefinedBehaviorSanitizer; any
#      report fails the test that triggered it);
#   2. build-tsan, -DKVTC_SANITIZE=thread: the tests that run threads
#      (test_concurrency, and test_determinism: the same bytes whatever the
#      thread count).
# Exits non-zero if either fails.
#
# Environment: CC (clang or gcc; default: the system's cc), ASAN_BUILD and
# TSAN_BUILD (build folders), TSAN_TESTS (test names for step 2), JOBS.
#
# OpenBLAS and LAPACK are not instrumented. OPENBLAS_NUM_THREADS=1 keeps them
# in the calling thread, so ThreadSanitizer sees every thread the library
# makes and nothing it cannot see into; no suppressions are used.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
asan_build=${ASAN_BUILD:-$root/build-asan}
tsan_build=${TSAN_BUILD:-$root/build-tsan}
default_tsan=test_concurrency
[ -f "$root/tests/test_determinism.c" ] && default_tsan+=" test_determinism"
tsan_tests=${TSAN_TESTS:-$default_tsan}
jobs=${JOBS:-$(nproc)}

export OPENBLAS_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

configure() { # BUILD SANITIZERS
  # shellcheck disable=SC2086 # CMAKE_FLAGS holds several flags
  cmake -S "$root" -B "$1" -DCMAKE_BUILD_TYPE=Release -DKVTC_SANITIZE="$2" ${CMAKE_FLAGS:-} >/dev/null
}

echo "== AddressSanitizer + UndefinedBehaviorSanitizer: the whole suite ($asan_build)"
configure "$asan_build" address,undefined
cmake --build "$asan_build" -j "$jobs" >/dev/null
asan_rc=0
(cd "$asan_build" && ctest --output-on-failure -j "$jobs") || asan_rc=$?

echo "== ThreadSanitizer: $tsan_tests ($tsan_build)"
configure "$tsan_build" thread
read -r -a tsan_targets <<<"$tsan_tests"
cmake --build "$tsan_build" -j "$jobs" --target "${tsan_targets[@]}" >/dev/null
regex="^($(IFS='|'; echo "${tsan_targets[*]}"))\$"
tsan_rc=0
(cd "$tsan_build" && ctest --output-on-failure -R "$regex") || tsan_rc=$?
if [ "$tsan_rc" -ne 0 ] && grep -qs "unexpected memory mapping" \
     "$tsan_build/Testing/Temporary/LastTest.log"; then
  # ThreadSanitizer (clang 14, gcc 12) cannot map its shadow under the high
  # ASLR entropy of recent kernels; run once more without ASLR.
  echo "ThreadSanitizer cannot map its shadow memory here; running again without ASLR"
  tsan_rc=0
  (cd "$tsan_build" && setarch "$(uname -m)" -R ctest --output-on-failure -R "$regex") ||
    tsan_rc=$?
fi

echo "sanitizers: asan+ubsan suite $([ $asan_rc -eq 0 ] && echo passed || echo FAILED)," \
     "tsan $([ $tsan_rc -eq 0 ] && echo passed || echo FAILED)"
[ "$asan_rc" -eq 0 ] && [ "$tsan_rc" -eq 0 ]
