"""An LMCache-style serializer: one chunk of tokens, as LMCache keeps it in its
``[2, layers, tokens, hidden]`` layout (hidden = kv heads x head_dim, keys
then values), to kvtc bytes and back. No dependency on LMCache: this is the
shape of a storage tier's codec hook, with kvtc behind it.

    ser = KVTCSerializer(calibration, ratio=16)
    blob = ser.to_bytes(kv, pos0=chunk_start)       # kv: numpy or torch, f32/f16/bf16
    kv2 = ser.from_bytes(blob)                      # same shape and dtype
"""
from __future__ import annotations

from typing import Optional

from . import _tensors as T
from .codec import Calibration, compress, decompress, stream_info
from .errors import invalid


class KVTCSerializer:
    """Chunks of ``[2, layers, tokens, hidden]`` to .kvtc streams and back.

    Keys are post-RoPE; ``pos0`` is the position of the chunk's first token
    (kvtc undoes RoPE at the true positions, and the stream records them).
    """

    def __init__(self, calibration: Calibration, ratio: float = 16, *,
                 threads: Optional[int] = None) -> None:
        self.calibration = calibration
        self.ratio = ratio
        self.threads = threads
        s = calibration.shape
        self._heads, self._dim, self._layers = s.n_kv_head, s.head_dim, s.n_layer

    def _split(self, kv: T.Array):
        """Token-major [layers, tokens, heads, head_dim] views of keys and values."""
        shape = tuple(kv.shape)
        if len(shape) != 4 or shape[0] != 2 or shape[1] != self._layers or \
                shape[3] != self._heads * self._dim:
            raise invalid(f"kv chunk of shape {list(shape)}, expected [2, {self._layers}, "
                          f"tokens, {self._heads * self._dim}]")
        view = kv.reshape(2, self._layers, shape[2], self._heads, self._dim)
        return view[0], view[1]

    def to_bytes(self, kv: T.Array, pos0: int = 0) -> bytes:
        """One chunk to kvtc bytes; the chunk is read in place."""
        keys, values = self._split(kv)
        return compress(self.calibration, keys, values, ratio=self.ratio, layout="token",
                        pos0=pos0, threads=self.threads)

    def from_bytes(self, data: bytes, backend: str = "numpy") -> T.Array:
        """The chunk back, ``[2, layers, tokens, hidden]`` in the stream's dtype."""
        info = stream_info(data)
        shape = (2, self._layers, info.n_tokens, self._heads * self._dim)
        if backend == "torch":
            import torch
            dt = {v: k for k, v in T.torch_dtypes().items()}[info._dtype]
            kv = torch.empty(shape, dtype=dt)
        else:
            import numpy as np
            kv = np.empty(shape, T.NP_BY_CODE[info._dtype])
        keys, values = self._split(kv)
        decompress(self.calibration, data, layout="token", out=(keys, values),
                   threads=self.threads)
        return kv
