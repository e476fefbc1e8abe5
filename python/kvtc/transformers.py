"""Hugging Face transformers caches to kvtc streams and back (torch on CPU).

    data = kvtc.transformers.compress_cache(calibration, outputs.cache, ratio=16)
    cache = kvtc.transformers.decompress_cache(calibration, data)   # a DynamicCache
    model(next_ids, cache=cache)                                    # and generation goes on

RoPE convention. A model converted from GGUF by transformers' loader rotates
keys NeoX-style (pairs (x[i], x[i + d/2]), `rotate_half`): the loader undoes
llama.cpp's permutation of the Q and K weights, whose keys rotate interleaved
pairs (x[2i], x[2i + 1]). The two caches hold the same numbers in a different
order within each head. `rope="gguf"` (the default) puts keys back in the
GGUF order before compressing, and back again after, so that a calibration
made by kvtc for the GGUF file (interleaved, `kvtc calibrate`) serves the
transformers model and streams are interchangeable with the CLI's and any
llama.cpp-ordered engine's. `rope="neox"` leaves keys as they are, for a
calibration whose shape says "neox" (a Qwen2 model, or one calibrated on
transformers' own keys). Values are never reordered.

Batch size must be 1 (kvtc compresses one sequence's cache).
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from .codec import Calibration, compress, decompress

_ROPES = ("gguf", "neox")


def cache_tensors(cache: Any) -> Tuple[List[Any], List[Any]]:
    """Per-layer keys and values [heads, tokens, head_dim] of a transformers cache
    (DynamicCache of any recent version, or the legacy tuple of (k, v) pairs)."""
    if hasattr(cache, "layers"):  # transformers >= 4.54
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    elif hasattr(cache, "key_cache"):
        pairs = list(zip(cache.key_cache, cache.value_cache))
    else:
        pairs = [(k, v) for k, v in cache]
    keys, values = [], []
    for k, v in pairs:
        if k.shape[0] != 1:
            raise ValueError(f"cache batch size {k.shape[0]}; kvtc takes one sequence (1)")
        keys.append(k[0].detach())
        values.append(v[0].detach())
    return keys, values


def _reorder(keys: List[Any], to_gguf: bool) -> List[Any]:
    """NeoX-order keys (transformers) <-> interleaved-order keys (GGUF)."""
    import torch
    out = []
    for k in keys:
        d = k.shape[-1]
        if to_gguf:  # gguf[2i] = hf[i], gguf[2i + 1] = hf[i + d/2]
            out.append(torch.stack((k[..., : d // 2], k[..., d // 2:]), dim=-1).reshape(k.shape))
        else:
            pairs = k.reshape(*k.shape[:-1], d // 2, 2)
            out.append(torch.cat((pairs[..., 0], pairs[..., 1]), dim=-1))
    return out


def compress_cache(calibration: Calibration, cache: Any, ratio: float = 16, *,
                   rope: str = "gguf", pos0: int = 0, threads: Optional[int] = None,
                   **options: Any) -> bytes:
    """A transformers cache (batch 1) as a .kvtc stream; see the module doc for `rope`."""
    if rope not in _ROPES:
        raise ValueError(f"rope {rope!r}: use one of {_ROPES}")
    keys, values = cache_tensors(cache)
    if rope == "gguf":
        keys = _reorder(keys, to_gguf=True)  # the one copy; values are read in place
    return compress(calibration, keys, values, ratio=ratio, layout="head", pos0=pos0,
                    threads=threads, **options)


def restored_tensors(calibration: Calibration, data: bytes, *, rope: str = "gguf",
                     threads: Optional[int] = None) -> Tuple[List[Any], List[Any]]:
    """Per-layer torch keys and values [1, heads, tokens, head_dim] of a stream,
    keys in transformers' order."""
    if rope not in _ROPES:
        raise ValueError(f"rope {rope!r}: use one of {_ROPES}")
    keys, values = decompress(calibration, data, backend="torch", threads=threads)
    k_layers = [keys[i] for i in range(keys.shape[0])]
    if rope == "gguf":
        k_layers = _reorder(k_layers, to_gguf=False)
    return [k[None] for k in k_layers], [values[i][None] for i in range(values.shape[0])]


def decompress_cache(calibration: Calibration, data: bytes, *, rope: str = "gguf",
                     dtype: Any = None, threads: Optional[int] = None, config: Any = None) -> Any:
    """A new transformers DynamicCache holding the stream's cache (dtype: cast
    to this torch dtype, e.g. the model's, when given)."""
    from transformers import DynamicCache
    keys, values = restored_tensors(calibration, data, rope=rope, threads=threads)
    try:
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
    except TypeError:
        cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values)):
        if dtype is not None:
            k, v = k.to(dtype), v.to(dtype)
        cache.update(k, v, layer)
    return cache
