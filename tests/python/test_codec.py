"""Round trips through the Python API: errors under a bound, raw tokens
bit-exact, every layout and container giving the same stream, the decoders
agreeing with one another, append, stream info and calibration files."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import kvtc
from conftest import SHAPE, SINKS, TOKENS, WINDOW, random_cache, rel_error

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip_error_bound(calibration, dtype):
    k, v = random_cache(20, dtype=dtype)
    errors = []
    for ratio in (4, 8, 16):
        data = kvtc.compress(calibration, k, v, ratio=ratio)
        k2, v2 = kvtc.decompress(calibration, data)
        assert k2.dtype == np.dtype(dtype) and k2.shape == k.shape
        # sinks and window come back bit-exact
        for a, b in ((k, k2), (v, v2)):
            assert a[:, :, :SINKS].tobytes() == b[:, :, :SINKS].tobytes()
            assert a[:, :, -WINDOW:].tobytes() == b[:, :, -WINDOW:].tobytes()
        errors.append(max(rel_error(k, k2), rel_error(v, v2)))
    assert errors[-1] < 1e-3, errors  # measured ~6e-5 at 16x
    assert errors[0] < errors[-1], errors  # less compression, less error


def test_layouts_and_containers_same_stream(calibration):
    k, v = random_cache(21)
    ref = kvtc.compress(calibration, k, v)
    kt = np.ascontiguousarray(k.transpose(0, 2, 1, 3))
    vt = np.ascontiguousarray(v.transpose(0, 2, 1, 3))
    assert kvtc.compress(calibration, kt, vt, layout="token") == ref
    assert kvtc.compress(calibration, list(k), list(v)) == ref
    # a token-major view of a head-major buffer (strided, no copy) and padded pages
    assert kvtc.compress(calibration, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                         layout="token") == ref
    pages = np.zeros((2, SHAPE.n_layer, TOKENS + 5, SHAPE.n_kv_head, SHAPE.head_dim + 8),
                     np.float32)
    pages[0, :, :TOKENS, :, :SHAPE.head_dim] = kt
    pages[1, :, :TOKENS, :, :SHAPE.head_dim] = vt
    assert kvtc.compress(calibration, pages[0, :, :TOKENS, :, :SHAPE.head_dim],
                         pages[1, :, :TOKENS, :, :SHAPE.head_dim], layout="token") == ref
    # layers with different strides get one copy and still the same bytes
    mixed = [kt[0].transpose(1, 0, 2)] + list(k[1:])
    assert kvtc.compress(calibration, mixed, list(v)) == ref
    assert kvtc.compress(calibration, k, v, threads=1) == kvtc.compress(calibration, k, v,
                                                                        threads=4)


def test_decoders_agree(calibration):
    k, v = random_cache(22, dtype=np.float16)
    data = kvtc.compress(calibration, k, v, block_tokens=64)
    k2, v2 = kvtc.decompress(calibration, data)
    kt, vt = kvtc.decompress(calibration, data, layout="token")
    assert np.array_equal(kt.transpose(0, 2, 1, 3), k2)
    lk, lv = kvtc.decompress(calibration, data, stacked=False)
    assert len(lk) == SHAPE.n_layer and all(np.array_equal(a, b) for a, b in zip(lk, k2))
    # into an engine's padded pages
    pages = np.full((SHAPE.n_layer, TOKENS, SHAPE.n_kv_head, SHAPE.head_dim + 4), 7,
                    np.float16)
    vpages = pages.copy()
    kvtc.decompress(calibration, data, layout="token",
                    out=(pages[..., :SHAPE.head_dim], vpages[..., :SHAPE.head_dim]))
    assert np.array_equal(pages[..., :SHAPE.head_dim].transpose(0, 2, 1, 3), k2)
    assert np.all(pages[..., SHAPE.head_dim:] == 7)  # padding untouched
    seen = []
    for layer, lk1, lv1 in kvtc.decompress_layers(calibration, data, layout="token"):
        seen.append(layer)
        assert np.array_equal(lk1, kt[layer]) and np.array_equal(lv1, vt[layer])
    assert seen == list(range(SHAPE.n_layer))
    kept = list(kvtc.decompress_layers(calibration, data))  # arrays outlive the decoder
    assert all(np.array_equal(lk1, k2[i]) and np.array_equal(lv1, v2[i])
               for i, lk1, lv1 in kept)
    for layer, _, _ in kvtc.decompress_layers(calibration, data):
        break  # leaving early stops the decoder without hanging
    info = kvtc.stream_info(data)
    assert info.n_tokens == TOKENS and info.dtype == "float16" and info.n_blocks > 3
    assert info.calib_fingerprint == calibration.fingerprint
    first = 0
    for b in range(info.n_blocks):
        bk, bv, pos0 = kvtc.decompress_block(calibration, data, b)
        n = bk.shape[2]
        assert pos0 == first
        assert np.array_equal(bk, k2[:, :, first:first + n])
        assert np.array_equal(bv, v2[:, :, first:first + n])
        first += n
    assert first == TOKENS


def test_append(calibration):
    k, v = random_cache(23, tokens=TOKENS + 200)
    head = kvtc.compress(calibration, k[:, :, :TOKENS], v[:, :, :TOKENS])
    grown = kvtc.append(calibration, head, k[:, :, TOKENS:], v[:, :, TOKENS:])
    info = kvtc.stream_info(grown)
    assert info.n_tokens == TOKENS + 200
    k2, v2 = kvtc.decompress(calibration, grown)
    assert k2[:, :, -WINDOW:].tobytes() == k[:, :, -WINDOW:].tobytes()
    assert rel_error(k, k2) < 1e-3 and rel_error(v, v2) < 1e-3


def test_calibration_files(calibration, tmp_path):
    raw = calibration.to_bytes()
    again = kvtc.Calibration.from_bytes(raw)
    assert again.fingerprint == calibration.fingerprint and len(again.fingerprint) == 32
    calibration.write(tmp_path / "c.kvtcal")
    assert (tmp_path / "c.kvtcal").read_bytes() == raw
    read = kvtc.Calibration.read(tmp_path / "c.kvtcal")
    assert read.shape == SHAPE and read.sinks == SINKS and read.window == WINDOW
    kr, vr = read.ranks
    ev = read.eigenvalues("keys")
    assert ev.shape == (kr,) and np.all(np.diff(ev) <= 0) and ev[0] > 0
    assert read.eigenvalues("values").shape == (vr,)
    assert 0 < ev.sum() <= read.total_variance("keys") * 1.0001


def test_calibrator_progress_and_rows():
    stages = []
    cal = kvtc.Calibrator(SHAPE, sinks=SINKS, window=WINDOW,
                          progress=lambda stage, done, total: stages.append(stage))
    for seed in range(2):
        cal.add(*random_cache(seed))
    eligible = 2 * (TOKENS - SINKS - WINDOW)
    assert sum(cal.rows) + sum(cal.excluded) > 0 and cal.rows[0] <= eligible
    cal.finish()
    assert "eigen" in stages or "calibrate" in stages, stages


def test_torch_tensors(calibration):
    torch = pytest.importorskip("torch", reason="torch is not installed in this environment")
    k, v = random_cache(25)
    ref = kvtc.compress(calibration, k, v)
    tk, tv = torch.from_numpy(k), torch.from_numpy(v)
    assert kvtc.compress(calibration, tk, tv) == ref
    assert kvtc.compress(calibration, tk.transpose(1, 2), tv.transpose(1, 2),
                         layout="token") == ref
    bk, bv = tk.to(torch.bfloat16), tv.to(torch.bfloat16)
    nk = k.astype(ml_dtypes.bfloat16)
    assert kvtc.compress(calibration, bk, bv) == kvtc.compress(calibration, nk,
                                                               v.astype(ml_dtypes.bfloat16))
    k2, v2 = kvtc.decompress(calibration, ref, backend="torch")
    assert isinstance(k2, torch.Tensor)
    n2, _ = kvtc.decompress(calibration, ref)
    assert np.array_equal(k2.numpy(), n2)
