"""ctypes declarations of include/kvtc.h and the call wrapper that turns a
kvtc_status into an exception. Internal: the public API is in the package root.

ctypes (not a compiled extension) because the package then needs no Python
headers or compiler step of its own: it loads the same libkvtc.so that C
programs link, every C call releases the GIL, and one wheel serves every
Python 3 version.
"""
from __future__ import annotations

import ctypes as C
import os
from pathlib import Path

from . import errors

_HERE = Path(__file__).resolve().parent


def _load() -> C.CDLL:
    path = os.environ.get("KVTC_LIBRARY") or str(_HERE / "libkvtc.so")
    try:
        return C.CDLL(path)
    except OSError as e:  # the package was not built, or a system library is missing
        raise ImportError(f"kvtc: cannot load the C library {path}: {e}") from None


lib = _load()

# ---- structs (field for field as in kvtc.h) ---------------------------------

PROGRESS_FN = C.CFUNCTYPE(None, C.c_void_p, C.c_char_p, C.c_uint64, C.c_uint64)
LAYER_FN = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_uint32, C.c_void_p, C.c_void_p)


class Error(C.Structure):
    _fields_ = [("status", C.c_int), ("message", C.c_char * 256)]


class ModelShape(C.Structure):
    _fields_ = [("n_layer", C.c_uint32), ("n_kv_head", C.c_uint32), ("head_dim", C.c_uint32),
                ("rope_style", C.c_int), ("rope_dims", C.c_uint32), ("rope_theta", C.c_double),
                ("rope_freq_scale", C.c_double)]


class CalibOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("sinks", C.c_uint32), ("window", C.c_uint32),
                ("rank", C.c_uint32), ("heldout_every", C.c_uint32),
                ("max_heldout", C.c_uint32), ("n_threads", C.c_uint32),
                ("progress", PROGRESS_FN), ("progress_user", C.c_void_p)]


class CompressOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("k_ratio", C.c_double), ("v_ratio", C.c_double),
                ("block_tokens", C.c_uint32), ("n_threads", C.c_uint32),
                ("deflate_level", C.c_int), ("progress", PROGRESS_FN),
                ("progress_user", C.c_void_p), ("ratio_mode", C.c_int),
                ("bytes_per_token", C.c_double)]


class DecompressOptions(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("n_threads", C.c_uint32),
                ("progress", PROGRESS_FN), ("progress_user", C.c_void_p),
                ("max_output_bytes", C.c_uint64)]


class CacheLayout(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("head_stride", C.c_uint64),
                ("token_stride", C.c_uint64)]


class StreamInfo(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("format_version", C.c_uint32),
                ("shape", ModelShape), ("dtype", C.c_int), ("pos0", C.c_int64),
                ("n_tokens", C.c_uint32), ("sinks", C.c_uint32), ("window", C.c_uint32),
                ("compressed_tokens", C.c_uint32), ("n_blocks", C.c_uint32),
                ("block_tokens", C.c_uint32), ("k_bits_per_token", C.c_uint32),
                ("v_bits_per_token", C.c_uint32), ("k_ratio", C.c_double),
                ("v_ratio", C.c_double), ("compressed_bytes", C.c_uint64),
                ("raw_bytes", C.c_uint64), ("total_bytes", C.c_uint64),
                ("fp16_bytes", C.c_uint64), ("compressed_fp16_bytes", C.c_uint64),
                ("calib_fingerprint", C.c_uint8 * 32), ("model_name", C.c_char * 64)]


# ---- prototypes ---------------------------------------------------------------

_p, _s, _u32, _u64, _i64 = C.c_void_p, C.c_size_t, C.c_uint32, C.c_uint64, C.c_int64
_err = C.POINTER(Error)
_pp = C.POINTER(C.c_void_p)
_STATUS = {  # name: argument types; every one of these returns a kvtc_status
    "kvtc_cache_wrap": [C.POINTER(ModelShape), C.c_int, _u32, _i64, _pp, _pp,
                        C.POINTER(CacheLayout), _pp, _err],
    "kvtc_cache_set_model_name": [_p, C.c_char_p, _err],
    "kvtc_calibrator_create": [C.POINTER(ModelShape), C.POINTER(CalibOptions), _pp, _err],
    "kvtc_calibrator_add": [_p, _p, _err],
    "kvtc_calibrator_finish": [_p, _pp, _err],
    "kvtc_calibration_load": [C.c_char_p, _s, _pp, _err],
    "kvtc_calibration_read": [C.c_char_p, _pp, _err],
    "kvtc_calibration_save": [_p, _pp, C.POINTER(_s), _err],
    "kvtc_calibration_write": [_p, C.c_char_p, _err],
    "kvtc_compress": [_p, _p, C.POINTER(CompressOptions), _pp, C.POINTER(_s), _err],
    "kvtc_append": [_p, C.c_char_p, _s, _p, C.POINTER(CompressOptions), _pp, C.POINTER(_s),
                    _err],
    "kvtc_decompress_into": [_p, C.c_char_p, _s, C.POINTER(DecompressOptions), _p, _err],
    "kvtc_decompress_block": [_p, C.c_char_p, _s, _u32, C.POINTER(DecompressOptions), _pp,
                              _err],
    "kvtc_decompress_layers": [_p, C.c_char_p, _s, C.POINTER(DecompressOptions), LAYER_FN, _p,
                               _err],
    "kvtc_stream_info_get": [C.c_char_p, _s, C.POINTER(StreamInfo), _err],
}
for _name, _args in _STATUS.items():
    _f = getattr(lib, _name)
    _f.argtypes, _f.restype = _args, C.c_int

_OTHER = {  # name: (restype, argument types)
    "kvtc_version": (C.c_char_p, []),
    "kvtc_status_string": (C.c_char_p, [C.c_int]),
    "kvtc_buffer_free": (None, [_p]),
    "kvtc_cache_free": (None, [_p]),
    "kvtc_cache_tokens": (_u32, [_p]),
    "kvtc_cache_pos0": (_i64, [_p]),
    "kvtc_cache_data_const": (_p, [_p, C.c_int, _u32]),
    "kvtc_calib_options_default": (None, [C.POINTER(CalibOptions)]),
    "kvtc_compress_options_default": (None, [C.POINTER(CompressOptions)]),
    "kvtc_decompress_options_default": (None, [C.POINTER(DecompressOptions)]),
    "kvtc_calibrator_rows": (_u64, [_p, C.c_int]),
    "kvtc_calibrator_excluded": (_u64, [_p, C.c_int]),
    "kvtc_calibrator_free": (None, [_p]),
    "kvtc_calibration_free": (None, [_p]),
    "kvtc_calibration_shape": (C.POINTER(ModelShape), [_p]),
    "kvtc_calibration_sinks": (_u32, [_p]),
    "kvtc_calibration_window": (_u32, [_p]),
    "kvtc_calibration_rank": (_u32, [_p, C.c_int]),
    "kvtc_calibration_rows": (_u64, [_p, C.c_int]),
    "kvtc_calibration_eigenvalues": (C.POINTER(C.c_float), [_p, C.c_int]),
    "kvtc_calibration_total_variance": (C.c_double, [_p, C.c_int]),
    "kvtc_calibration_fingerprint": (C.POINTER(C.c_uint8), [_p]),
}
for _name, (_res, _args) in _OTHER.items():
    _f = getattr(lib, _name)
    _f.argtypes, _f.restype = _args, _res


def call(name: str, *args) -> None:
    """Calls a status-returning function; raises the errors subclass of a failure."""
    err = Error()
    status = getattr(lib, name)(*args, C.byref(err))
    if status != 0:
        message = err.message.decode("utf-8", "replace") or \
            lib.kvtc_status_string(status).decode()
        raise errors.for_status(status)(status, message)


def take_buffer(ptr: C.c_void_p, length: C.c_size_t) -> bytes:
    """The bytes of a library buffer, which is then freed."""
    try:
        return C.string_at(ptr, length.value) if length.value else b""
    finally:
        lib.kvtc_buffer_free(ptr)


def progress_callback(fn):
    """A C progress function calling fn(stage, done, total), or a NULL one."""
    if fn is None:
        return PROGRESS_FN()
    return PROGRESS_FN(lambda _user, stage, done, total: fn(stage.decode(), done, total))
