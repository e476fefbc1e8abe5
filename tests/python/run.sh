#!/usr/bin/env bash
# The Python package's tests (make test-python): a virtual environment under
# the build folder, `pip install` of this checkout (scikit-build-core builds
# libkvtc from these sources; downloads come from PyPI through pip's cache in
# ~/.cache/pip), then pytest over tests/python against the kvtc CLI of BUILD.
#
# Environment: BUILD (the CMake build folder with the kvtc CLI; default
# build), PYTHON (the interpreter the environment is made from; default
# python3), KVTC_TRANSFORMERS=0 (no torch/transformers: their test is skipped).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${BUILD:-$root/build}" && pwd)
venv=$build/python-venv
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q -r "$root/tests/python/requirements.txt"
# the transformers round trip's torch is several GB: KVTC_TRANSFORMERS=0 leaves it out
# (its test then reports itself skipped)
if [ "${KVTC_TRANSFORMERS:-1}" != 0 ]; then
  "$venv/bin/python" -m pip install -q -r "$root/tests/python/requirements-transformers.txt"
fi
"$venv/bin/python" -m pip install -q "$root"
# run from outside the checkout so that `import kvtc` is the installed package
cd "$build"
KVTC_BIN=${KVTC_BIN:-$build/kvtc} KVTC_SOURCE_DIR=$root \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/python" "$@"
