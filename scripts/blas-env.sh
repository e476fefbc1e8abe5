# Sourced by the demo, benchmark and evaluation scripts (not by the tests).
# Debian 12's OpenBLAS (0.3.21) does not recognise recent Xeons and falls back
# to its slowest kernels (Prescott, SSE3), 3-5x below what the CPU can do.
# Name a kernel set the CPU supports, unless the caller already chose one.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE=Haswell
  fi
fi
