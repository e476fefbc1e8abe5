"""Python and the C CLI agree byte for byte: the same calibration from the
same caches, the same stream from the same cache, the same restored tensors."""
from __future__ import annotations

import subprocess

import ml_dtypes
import numpy as np
import pytest

import kvtc
from conftest import SINKS, WINDOW, random_cache, read_safetensors, write_safetensors


def run(*args) -> None:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_calibration_identical(tmp_path, kvtc_bin):
    files, cal = [], kvtc.Calibrator(kvtc.ModelShape(4, 2, 32, "neox", 16, 10000.0),
                                     sinks=SINKS, window=WINDOW)
    for seed in range(3):
        k, v = random_cache(seed)
        cal.add(k, v)
        files.append(tmp_path / f"c{seed}.safetensors")
        write_safetensors(files[-1], k, v)
    run(kvtc_bin, "calibrate", "-o", tmp_path / "cli.kvtcal", "--sinks", SINKS, "--window",
        WINDOW, *files)
    assert cal.finish().to_bytes() == (tmp_path / "cli.kvtcal").read_bytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("ratio", [8, 16])
def test_stream_identical(tmp_path, kvtc_bin, calibration, dtype, ratio):
    k, v = random_cache(50, dtype=dtype)
    write_safetensors(tmp_path / "in.safetensors", k, v, pos0=3, model="parity")
    calibration.write(tmp_path / "cal.kvtcal")
    run(kvtc_bin, "compress", "-c", tmp_path / "cal.kvtcal", "--ratio", ratio, "-o",
        tmp_path / "cli.kvtc", tmp_path / "in.safetensors")
    cli = (tmp_path / "cli.kvtc").read_bytes()
    # token-major input, one layer per array: still the CLI's bytes
    kt = [np.ascontiguousarray(x.transpose(1, 0, 2)) for x in k]
    vt = [np.ascontiguousarray(x.transpose(1, 0, 2)) for x in v]
    assert kvtc.compress(calibration, k, v, ratio=ratio, pos0=3, model_name="parity") == cli
    assert kvtc.compress(calibration, kt, vt, ratio=ratio, layout="token", pos0=3,
                         model_name="parity") == cli

    run(kvtc_bin, "decompress", "-c", tmp_path / "cal.kvtcal", "-o", tmp_path / "out.safetensors",
        tmp_path / "cli.kvtc")
    ck, cv, meta = read_safetensors(tmp_path / "out.safetensors")
    pk, pv = kvtc.decompress(calibration, cli)
    assert pk.dtype == np.dtype(dtype) and meta["pos0"] == "3" and meta["model"] == "parity"
    assert pk.tobytes() == ck.tobytes() and pv.tobytes() == cv.tobytes()
