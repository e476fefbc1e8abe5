#!/usr/bin/env bash
# Issue 13's round trips through the real llama.cpp (tests/test_llama_cpp.sh)
# on a Qwen2.5-Coder model: llama.cpp's qwen2 keys (NeoX RoPE, QKV bias) and
# 2 KV heads x 64. `make test` fetches the model (make model).
set -euo pipefail
kvtc="${KVTC_BIN:?KVTC_BIN not set}"
src="${KVTC_SOURCE_DIR:?KVTC_SOURCE_DIR not set}"
if ! model=$("$kvtc" fetch --no-download qwen2.5-coder-0.5b 2>/dev/null); then
  echo "skip: the qwen2.5-coder-0.5b model is absent from the cache folder" \
       "(make model, or kvtc fetch qwen2.5-coder-0.5b, fetches it)"
  exit 77
fi
KVTC_LLAMA_MODEL=$model exec bash "$src/tests/test_llama_cpp.sh"
