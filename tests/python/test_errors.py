"""Bad input raises a clear exception of the right class, never crashes."""
from __future__ import annotations

import numpy as np
import pytest

import kvtc
from conftest import SHAPE, SINKS, WINDOW, random_cache


@pytest.fixture(scope="module")
def cache():
    return random_cache(30)


def test_wrong_shapes(calibration, cache):
    k, v = cache
    with pytest.raises(kvtc.InvalidError, match="3 layers, the calibration has 4"):
        kvtc.compress(calibration, k[:3], v[:3])
    with pytest.raises(kvtc.InvalidError, match=r"shape \[2, 600, 16\], expected \[2, 600, 32\]"):
        kvtc.compress(calibration, k[..., :16], v[..., :16])
    with pytest.raises(kvtc.InvalidError, match="expected .*4-D"):
        kvtc.compress(calibration, k[0], v[0])
    with pytest.raises(kvtc.InvalidError, match="values layer 0: shape"):
        kvtc.compress(calibration, k, v[:, :, :100])
    with pytest.raises(kvtc.InvalidError, match="token-major"):  # heads and tokens swapped
        kvtc.compress(calibration, k, v, layout="token")
    with pytest.raises(kvtc.InvalidError, match="layout 'rows'"):
        kvtc.compress(calibration, k, v, layout="rows")
    assert issubclass(kvtc.InvalidError, ValueError)


def test_wrong_dtypes_and_types(calibration, cache):
    k, v = cache
    with pytest.raises(kvtc.UnsupportedError, match="dtype float64"):
        kvtc.compress(calibration, k.astype(np.float64), v)
    with pytest.raises(kvtc.UnsupportedError, match="dtype int32"):
        kvtc.compress(calibration, k.astype(np.int32), v)
    with pytest.raises(kvtc.InvalidError, match="all must be one dtype"):
        kvtc.compress(calibration, k, v.astype(np.float16))
    with pytest.raises(kvtc.UnsupportedError, match="a str"):
        kvtc.compress(calibration, ["no"] * 4, v)


def test_non_contiguous_head_dim(calibration, cache):
    k, v = cache
    wide = np.repeat(k, 2, axis=3)[..., ::2]  # right shape, stride 2 in head_dim
    with pytest.raises(kvtc.InvalidError, match="head_dim is not contiguous"):
        kvtc.compress(calibration, wide, v)
    with pytest.raises(kvtc.InvalidError, match="negative strides"):
        kvtc.compress(calibration, k[:, :, ::-1], v)
    assert kvtc.compress(calibration, np.ascontiguousarray(wide), v) == \
        kvtc.compress(calibration, k, v)


def test_nan_refused_by_calibrator(cache):
    k, v = (x.copy() for x in cache)
    v[2, 1, 77, 3] = np.nan
    cal = kvtc.Calibrator(SHAPE, sinks=SINKS, window=WINDOW)
    with pytest.raises(kvtc.NumericError, match="non-finite value in layer 2, head 1, token 77"):
        cal.add(k, v)


def test_nan_refused_by_compress(calibration, cache):
    k, v = (x.copy() for x in cache)
    k[1, 0, 300, 5] = np.nan
    with pytest.raises(kvtc.NumericError, match="token 300 of the keys is not finite"):
        kvtc.compress(calibration, k, v)


def test_bad_streams(calibration, cache):
    k, v = cache
    data = kvtc.compress(calibration, k, v)
    with pytest.raises(kvtc.TruncatedError):
        kvtc.decompress(calibration, data[:-10])
    with pytest.raises(kvtc.FormatError):
        kvtc.decompress(calibration, b"not a kvtc stream at all" * 40)
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    with pytest.raises(kvtc.ChecksumError, match="CRC"):
        kvtc.decompress(calibration, bytes(corrupt))
    other = kvtc.Calibrator(SHAPE, sinks=SINKS, window=WINDOW)
    other.add(*random_cache(99))
    with pytest.raises(kvtc.MismatchError, match="made with calibration"):
        kvtc.decompress(other.finish(), data)
    with pytest.raises(kvtc.LimitError):
        kvtc.decompress(calibration, data, max_output_bytes=1000)
    wrong = np.zeros_like(k[:, :, :10]), np.zeros_like(v[:, :, :10])
    with pytest.raises(kvtc.MismatchError, match="stream holds 600 tokens"):
        kvtc.decompress(calibration, data, out=wrong)
    with pytest.raises(kvtc.FileError):
        kvtc.Calibration.read("/nonexistent/x.kvtcal")
    e = kvtc.Calibration
    with pytest.raises(kvtc.Error) as info:
        e.from_bytes(b"\0" * 64)
    assert info.value.status < 0 and str(info.value)


def test_bad_shape_options():
    with pytest.raises(kvtc.InvalidError, match="rope_dims 7 must be even"):
        kvtc.Calibrator(kvtc.ModelShape(2, 2, 16, "neox", 7, 10000.0))
    with pytest.raises(kvtc.InvalidError, match="rope_style"):
        kvtc.Calibrator(kvtc.ModelShape(2, 2, 16, "sideways"))
