"""The Hugging Face transformers round trip, the real thing: the default model
(SmolLM2-135M-Instruct) loaded from its GGUF file by transformers' GGUF loader
on CPU torch, a prompt's DynamicCache compressed at 16x with the model's
default kvtc calibration, restored into a new cache, and generation continued
from it. On 64 tokens of greedy decoding from the exact cache, the restored
cache picks the same top-1 token at >= 95% of positions (teacher-forced, as
`kvtc eval` counts it: one early near-tie would otherwise make every later
position differ); the held-out NLL moves by <= 0.03 nats/token; the stream is
the CLI's for the same cache, and the restored tensors are the CLI's, bit for bit.

Needs torch, transformers and gguf (tests/python/requirements-transformers.txt,
installed by tests/python/run.sh) and the model (make model)."""
from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import kvtc
from conftest import read_safetensors, write_safetensors

torch = pytest.importorskip("torch", reason="torch is not installed (requirements-transformers)")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
import kvtc.transformers as kt  # noqa: E402  (after the skips)

MODEL_DIR = Path(os.environ.get("KVTC_CACHE_DIR", Path.home() / ".cache" / "kvtc"))
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_TOKENS, HELDOUT_TOKENS, GREEDY_TOKENS = 640, 256, 64
# evaluation documents of the project's corpus (app/corpus.c), never calibrated on
TEXTS = ["/usr/share/common-licenses/GPL-3", "/usr/include/linux/fuse.h"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    if not (MODEL_DIR / MODEL_FILE).exists():
        pytest.skip(f"{MODEL_DIR / MODEL_FILE} is absent (make model)")
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE,
                                                              dtype=torch.float32)
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def calibration(kvtc_bin, model_and_tokenizer):
    """The model's default calibration, the one `kvtc eval` and `kvtc demo` use,
    as `kvtc fetch --calibration` finds it (or builds it, the first time on
    this machine: minutes)."""
    out = subprocess.run([str(kvtc_bin), "fetch", "--calibration", "--no-download"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()
    assert len(out) == 2 and Path(out[0]) == MODEL_DIR / MODEL_FILE, out
    return kvtc.Calibration.read(out[1])


def tokens_of(tok, path: str) -> torch.Tensor:
    ids = tok(Path(path).read_text(errors="replace"), return_tensors="pt").input_ids
    assert ids.shape[1] >= PROMPT_TOKENS + HELDOUT_TOKENS, path
    return ids[:, :PROMPT_TOKENS + HELDOUT_TOKENS]


@torch.no_grad()
def greedy(model, cache, last_id: torch.Tensor, n: int):
    """n tokens of greedy decoding after last_id (the cache grows)."""
    out, ids = [], last_id
    for _ in range(n):
        logits = model(ids, cache=cache, use_cache=True).logits[:, -1]
        ids = logits.argmax(-1, keepdim=True)
        out.append(int(ids))
    return out


@torch.no_grad()
def forced_argmax(model, cache, ids: torch.Tensor):
    """Top-1 token after each of ids (teacher forcing) and the mean NLL of ids[1:]."""
    logits = model(ids, cache=cache, use_cache=True).logits[0]
    nll = float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]))
    return logits.argmax(-1).tolist(), nll


@torch.no_grad()
def prompt_cache(model, ids):
    return model(ids, use_cache=True).cache


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip_16x(model_and_tokenizer, calibration, kvtc_bin, tmp_path, text):
    model, tok = model_and_tokenizer
    ids = tokens_of(tok, text)
    prompt, last, held = ids[:, :PROMPT_TOKENS - 1], ids[:, PROMPT_TOKENS - 1:PROMPT_TOKENS], \
        ids[:, PROMPT_TOKENS - 1:]

    cache = prompt_cache(model, prompt)
    data = kt.compress_cache(calibration, cache, ratio=16)
    info = kvtc.stream_info(data)
    assert info.n_tokens == PROMPT_TOKENS - 1 and info.compressed_tokens > 0
    print(f"{Path(text).name}: {info.n_tokens} tokens, {info.ratio:.2f}x vs fp16 "
          f"({info.compressed_fp16_bytes / info.compressed_bytes:.2f}x on the coded tokens)")

    # the CLI compresses the same cache (keys in GGUF order) to the same stream
    cal_path = tmp_path / "c.kvtcal"
    calibration.write(cal_path)
    exact_k, exact_v = kt.cache_tensors(cache)
    write_safetensors(tmp_path / "in.safetensors",
                      np.stack([k.numpy() for k in kt._reorder(exact_k, to_gguf=True)]),
                      np.stack([v.numpy() for v in exact_v]),
                      meta={"rope_style": "interleaved", "rope_theta": "100000"})
    subprocess.run([str(kvtc_bin), "compress", "-c", str(cal_path), "-r", "16", "-o",
                    str(tmp_path / "cli.kvtc"), str(tmp_path / "in.safetensors")], check=True,
                   capture_output=True)
    assert (tmp_path / "cli.kvtc").read_bytes() == data

    # the restored tensors are what the C CLI restores from the same stream
    keys, values = kt.restored_tensors(calibration, data)
    subprocess.run([str(kvtc_bin), "decompress", "-c", str(cal_path), "-o",
                    str(tmp_path / "r.safetensors"), str(tmp_path / "cli.kvtc")], check=True,
                   capture_output=True)
    ck, cv, _ = read_safetensors(tmp_path / "r.safetensors")
    gguf_keys = kt._reorder([k[0] for k in keys], to_gguf=True)
    for layer in range(len(keys)):
        assert gguf_keys[layer].numpy().tobytes() == ck[layer].tobytes(), layer
        assert values[layer][0].numpy().tobytes() == cv[layer].tobytes(), layer

    # greedy decoding from the exact cache; the restored cache's top-1 token at
    # each of those positions (teacher forcing, as kvtc eval's top-1 agreement)
    _, exact_nll = forced_argmax(model, copy.deepcopy(cache), held)
    exact = greedy(model, cache, last, GREEDY_TOKENS)
    forced = torch.tensor([[int(last)] + exact[:-1]])
    top1, _ = forced_argmax(model, kt.decompress_cache(calibration, data), forced)
    agree = float(np.mean(np.array(top1) == np.array(exact)))
    _, kvtc_nll = forced_argmax(model, kt.decompress_cache(calibration, data), held)
    d_nll = kvtc_nll - exact_nll
    free = greedy(model, kt.decompress_cache(calibration, data), last, GREEDY_TOKENS)
    same_prefix = next((i for i, (a, b) in enumerate(zip(exact, free)) if a != b), GREEDY_TOKENS)
    print(f"{Path(text).name}: top-1 agreement on the exact greedy continuation {agree:.3f}, "
          f"free-running greedy identical for {same_prefix}/{GREEDY_TOKENS} tokens, "
          f"held-out NLL {exact_nll:.4f} -> {kvtc_nll:.4f} (dNLL {d_nll:+.4f} nats/token)")
    assert agree >= 0.95
    assert d_nll <= 0.03


def test_key_order_conversion_is_exact():
    k = torch.randn(3, 5, 64)
    back = kt._reorder(kt._reorder([k], to_gguf=True), to_gguf=False)[0]
    assert torch.equal(back, k)
    g = kt._reorder([k], to_gguf=True)[0]
    assert torch.equal(g[..., 0::2], k[..., :32]) and torch.equal(g[..., 1::2], k[..., 32:])
