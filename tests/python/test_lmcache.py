"""The LMCache-style serializer: [2, layers, tokens, hidden] chunks to bytes
and back, the same stream as compressing the chunk's keys and values directly."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import kvtc
from conftest import SHAPE, random_cache
from kvtc.lmcache import KVTCSerializer


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_chunk_roundtrip(calibration, dtype):
    k, v = random_cache(60, tokens=256, dtype=dtype, pos0=512)
    hidden = SHAPE.n_kv_head * SHAPE.head_dim
    # LMCache's layout: [2, layers, tokens, heads * head_dim]
    kv = np.stack([k.transpose(0, 2, 1, 3).reshape(SHAPE.n_layer, 256, hidden),
                   v.transpose(0, 2, 1, 3).reshape(SHAPE.n_layer, 256, hidden)])
    ser = KVTCSerializer(calibration, ratio=16)
    blob = ser.to_bytes(kv, pos0=512)
    assert blob == kvtc.compress(calibration, k, v, ratio=16, pos0=512)
    assert kvtc.stream_info(blob).pos0 == 512
    back = ser.from_bytes(blob)
    assert back.shape == kv.shape and back.dtype == kv.dtype
    k2, v2 = kvtc.decompress(calibration, blob, layout="token")
    assert np.array_equal(back[0].reshape(k2.shape), k2)
    assert np.array_equal(back[1].reshape(v2.shape), v2)
    with pytest.raises(kvtc.InvalidError, match="expected \\[2, 4, tokens, 64\\]"):
        ser.to_bytes(kv[:, :3])
