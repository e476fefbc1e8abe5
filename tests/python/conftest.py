"""Shared fixtures of the Python tests: random model-like caches, a calibration
fitted on them with the Python calibrator, the kvtc CLI, and safetensors files
written and read here by hand (independently of the library)."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Optional

import ml_dtypes
import numpy as np
import pytest

import kvtc

ROOT = Path(__file__).resolve().parents[2]
SHAPE = kvtc.ModelShape(n_layer=4, n_kv_head=2, head_dim=32, rope_style="neox",
                        rope_dims=16, rope_theta=10000.0)
SINKS, WINDOW, TOKENS = 4, 16, 600
ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(ml_dtypes.bfloat16): "BF16"}


def rope_neox(x: np.ndarray, pos0: int) -> np.ndarray:
    """Rotates keys [layers, heads, tokens, head_dim] by NeoX RoPE on the first
    rope_dims dims at positions pos0.., as a model stores them."""
    half = SHAPE.rope_dims // 2
    freq = SHAPE.rope_theta ** (-2.0 * np.arange(half) / SHAPE.rope_dims)
    ang = (pos0 + np.arange(x.shape[2]))[:, None] * freq[None, :]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    out = x.copy()
    a, b = x[..., :half], x[..., half:2 * half]
    out[..., :half] = a * cos - b * sin
    out[..., half:2 * half] = a * sin + b * cos
    return out


def random_cache(seed: int, tokens: int = TOKENS, dtype=np.float32, pos0: int = 0):
    """Keys and values [layers, heads, tokens, head_dim] with a low-rank
    structure shared by every seed (one "model"), the seed choosing the tokens;
    keys carry RoPE at positions pos0, pos0 + 1, ..."""
    p = SHAPE.n_layer * SHAPE.n_kv_head * SHAPE.head_dim
    basis = np.random.default_rng(1234).standard_normal((2, 16, p)).astype(np.float32)
    r = np.random.default_rng(seed)
    scale = np.linspace(3.0, 0.1, 16, dtype=np.float32)
    out = []
    for kind in range(2):
        z = r.standard_normal((tokens, 16)).astype(np.float32) * scale
        x = z @ basis[kind] + 0.05 * r.standard_normal((tokens, p)).astype(np.float32)
        x = x.reshape(tokens, SHAPE.n_layer, SHAPE.n_kv_head, SHAPE.head_dim)
        out.append(np.ascontiguousarray(x.transpose(1, 2, 0, 3)))
    return rope_neox(out[0], pos0).astype(dtype), out[1].astype(dtype)


@pytest.fixture(scope="session")
def calibration() -> kvtc.Calibration:
    cal = kvtc.Calibrator(SHAPE, sinks=SINKS, window=WINDOW)
    for seed in range(4):
        cal.add(*random_cache(seed))
    return cal.finish()


@pytest.fixture(scope="session")
def kvtc_bin() -> Path:
    path = Path(os.environ.get("KVTC_BIN", ROOT / "build" / "kvtc"))
    if not path.exists():
        pytest.skip(f"the kvtc CLI {path} is absent (build it: make build)")
    return path


def write_safetensors(path: Path, keys: np.ndarray, values: np.ndarray, pos0: int = 0,
                      model: str = "", meta: Optional[dict] = None) -> None:
    """The cache as kvtc's safetensors layout (include/kvtc.h), by hand; meta
    replaces the rope metadata of SHAPE."""
    header, blobs, offset = {}, [], 0
    for layer in range(keys.shape[0]):
        for name, arr in (("key", keys[layer]), ("value", values[layer])):
            blob = np.ascontiguousarray(arr).tobytes()
            header[f"layers.{layer}.{name}"] = {"dtype": ST_DTYPES[arr.dtype],
                                                "shape": list(arr.shape),
                                                "data_offsets": [offset, offset + len(blob)]}
            blobs.append(blob)
            offset += len(blob)
    rope = meta if meta is not None else {"rope_style": SHAPE.rope_style,
                                          "rope_dims": str(SHAPE.rope_dims),
                                          "rope_theta": repr(SHAPE.rope_theta)}
    header["__metadata__"] = {**rope, "pos0": str(pos0), "model": model}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path: Path):
    """(keys, values, metadata) of a kvtc safetensors file, by hand."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    by_name = {v: k for k, v in ST_DTYPES.items()}
    layers = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], by_name[t["dtype"]]).reshape(t["shape"])
        _, layer, kind = name.split(".")
        layers[(int(layer), kind)] = arr
    n_layer = 1 + max(layer for layer, _ in layers)
    keys = np.stack([layers[(i, "key")] for i in range(n_layer)])
    values = np.stack([layers[(i, "value")] for i in range(n_layer)])
    return keys, values, meta


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    """Squared error over the energy of ref around its per-feature mean, on the
    compressed tokens only (sinks and window are exact)."""
    a = ref[:, :, SINKS:-WINDOW].astype(np.float64)
    b = got[:, :, SINKS:-WINDOW].astype(np.float64)
    return float(np.sum((a - b) ** 2) / np.sum((a - a.mean(axis=2, keepdims=True)) ** 2))
