"""Calibrations, the calibrator, and compression / decompression of KV caches."""
from __future__ import annotations

import ctypes as C
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple, Union

import numpy as np

from . import _native as N
from . import _tensors as T
from .errors import CancelledError, invalid

Progress = Optional[Callable[[str, int, int], None]]
PathLike = Union[str, "os.PathLike[str]"]

ROPE_STYLES = {"none": 0, "interleaved": 1, "neox": 2}
_KINDS = {"keys": 0, "values": 1}


def _threads(n: Optional[int]) -> int:
    return min(os.cpu_count() or 1, 64) if n is None else int(n)


@dataclass(frozen=True)
class ModelShape:
    """The KV geometry of a model and its rotary embedding, as kvtc_model_shape."""

    n_layer: int
    n_kv_head: int
    head_dim: int
    rope_style: str = "interleaved"  # "none" | "interleaved" | "neox"
    rope_dims: int = 0               # rotated dims per head; 0 = head_dim
    rope_theta: float = 10000.0
    rope_freq_scale: float = 1.0

    def _c(self) -> N.ModelShape:
        if self.rope_style not in ROPE_STYLES:
            raise invalid(f"rope_style {self.rope_style!r}: use one of {sorted(ROPE_STYLES)}")
        return N.ModelShape(self.n_layer, self.n_kv_head, self.head_dim,
                            ROPE_STYLES[self.rope_style], self.rope_dims, self.rope_theta,
                            self.rope_freq_scale)

    @staticmethod
    def _from_c(s: N.ModelShape) -> "ModelShape":
        style = {v: k for k, v in ROPE_STYLES.items()}.get(s.rope_style, str(s.rope_style))
        return ModelShape(s.n_layer, s.n_kv_head, s.head_dim, style, s.rope_dims, s.rope_theta,
                          s.rope_freq_scale)


class Calibration:
    """A model's calibration (.kvtcal): PCA basis, mean and bit-allocation table.

    Immutable and thread-safe: any number of threads may compress and
    decompress with one Calibration at once.
    """

    def __init__(self, handle: C.c_void_p) -> None:
        self._h = handle

    def __del__(self) -> None:
        h = getattr(self, "_h", None)
        if h:
            N.lib.kvtc_calibration_free(h)
            self._h = None

    @classmethod
    def read(cls, path: PathLike) -> "Calibration":
        """Loads a .kvtcal file; every checksum and the fingerprint are verified."""
        h = C.c_void_p()
        N.call("kvtc_calibration_read", os.fsencode(path), C.byref(h))
        return cls(h)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Calibration":
        """Loads a calibration from the bytes of a .kvtcal file."""
        h = C.c_void_p()
        data = bytes(data)
        N.call("kvtc_calibration_load", data, len(data), C.byref(h))
        return cls(h)

    def to_bytes(self) -> bytes:
        """The bytes of the .kvtcal file."""
        ptr, n = C.c_void_p(), C.c_size_t()
        N.call("kvtc_calibration_save", self._h, C.byref(ptr), C.byref(n))
        return N.take_buffer(ptr, n)

    def write(self, path: PathLike) -> None:
        """Writes the .kvtcal file atomically (never a partial file at path)."""
        N.call("kvtc_calibration_write", self._h, os.fsencode(path))

    @property
    def shape(self) -> ModelShape:
        return ModelShape._from_c(N.lib.kvtc_calibration_shape(self._h).contents)

    @property
    def sinks(self) -> int:
        """First tokens of a cache that are always stored raw."""
        return N.lib.kvtc_calibration_sinks(self._h)

    @property
    def window(self) -> int:
        """Last tokens of a cache that are always stored raw."""
        return N.lib.kvtc_calibration_window(self._h)

    @property
    def ranks(self) -> Tuple[int, int]:
        """Basis columns kept for (keys, values)."""
        return (N.lib.kvtc_calibration_rank(self._h, 0), N.lib.kvtc_calibration_rank(self._h, 1))

    @property
    def rows(self) -> Tuple[int, int]:
        """Token rows the (keys, values) covariances were fitted on."""
        return (N.lib.kvtc_calibration_rows(self._h, 0), N.lib.kvtc_calibration_rows(self._h, 1))

    @property
    def fingerprint(self) -> bytes:
        """The 32-byte SHA-256 that streams made with this calibration record."""
        return bytes(N.lib.kvtc_calibration_fingerprint(self._h)[:32])

    def eigenvalues(self, kind: str = "keys") -> np.ndarray:
        """Variance per basis column ("keys" or "values"), decreasing (a copy)."""
        k = _kind(kind)
        n = N.lib.kvtc_calibration_rank(self._h, k)
        ptr = N.lib.kvtc_calibration_eigenvalues(self._h, k)
        return np.ctypeslib.as_array(ptr, (n,)).copy() if n else np.empty(0, np.float32)

    def total_variance(self, kind: str = "keys") -> float:
        """Total variance over all features, for explained-variance curves."""
        return N.lib.kvtc_calibration_total_variance(self._h, _kind(kind))

    def __repr__(self) -> str:
        s = self.shape
        return (f"Calibration({s.n_layer}x{s.n_kv_head}x{s.head_dim}, ranks={self.ranks}, "
                f"sinks={self.sinks}, window={self.window}, {self.fingerprint[:6].hex()})")


def _kind(kind: str) -> int:
    if kind not in _KINDS:
        raise invalid(f"kind {kind!r}: use 'keys' or 'values'")
    return _KINDS[kind]


class Calibrator:
    """Fits a Calibration on caches streamed in one at a time.

    >>> cal = kvtc.Calibrator(shape, sinks=4, window=128)
    >>> cal.add(keys, values)      # as many caches as you have
    >>> calibration = cal.finish()
    """

    def __init__(self, shape: ModelShape, *, sinks: int = 4, window: int = 128, rank: int = 0,
                 heldout_every: int = 8, max_heldout: int = 4096,
                 threads: Optional[int] = None, progress: Progress = None) -> None:
        opt = N.CalibOptions()
        N.lib.kvtc_calib_options_default(C.byref(opt))
        opt.sinks, opt.window, opt.rank = sinks, window, rank
        opt.heldout_every, opt.max_heldout = heldout_every, max_heldout
        opt.n_threads = _threads(threads)
        self._progress = N.progress_callback(progress)  # alive as long as the calibrator
        opt.progress = self._progress
        self._shape = shape
        self._h = C.c_void_p()
        N.call("kvtc_calibrator_create", C.byref(shape._c()), C.byref(opt), C.byref(self._h))

    def __del__(self) -> None:
        h = getattr(self, "_h", None)
        if h:
            N.lib.kvtc_calibrator_free(h)
            self._h = None

    def add(self, keys: T.Tensors, values: T.Tensors, *, pos0: int = 0,
            layout: str = "head") -> None:
        """Streams one cache in (not kept). Keys post-RoPE, token t at position pos0 + t.

        Refuses a non-finite value with NumericError naming layer, head and token.
        """
        with T.Wrapped(self._shape._c(), keys, values, layout, pos0) as w:
            N.call("kvtc_calibrator_add", self._live(), w.handle)

    @property
    def rows(self) -> Tuple[int, int]:
        """Rows of (keys, values) in the statistics so far."""
        return (N.lib.kvtc_calibrator_rows(self._live(), 0),
                N.lib.kvtc_calibrator_rows(self._live(), 1))

    @property
    def excluded(self) -> Tuple[int, int]:
        """Tokens of (keys, values) left out as outliers."""
        return (N.lib.kvtc_calibrator_excluded(self._live(), 0),
                N.lib.kvtc_calibrator_excluded(self._live(), 1))

    def finish(self) -> Calibration:
        """The fitted calibration (mean, PCA basis, error table)."""
        h = C.c_void_p()
        N.call("kvtc_calibrator_finish", self._live(), C.byref(h))
        return Calibration(h)

    def _live(self) -> C.c_void_p:
        if not self._h:
            raise invalid("the calibrator was freed")
        return self._h


def _compress_options(ratio: float, k_ratio: Optional[float], v_ratio: Optional[float],
                      block_tokens: int, level: int, threads: Optional[int],
                      progress: C._CFuncPtr) -> N.CompressOptions:
    opt = N.CompressOptions()
    N.lib.kvtc_compress_options_default(C.byref(opt))
    opt.k_ratio = ratio if k_ratio is None else k_ratio
    opt.v_ratio = ratio if v_ratio is None else v_ratio
    opt.block_tokens, opt.deflate_level = block_tokens, level
    opt.n_threads = _threads(threads)
    opt.progress = progress
    return opt


def compress(calibration: Calibration, keys: T.Tensors, values: T.Tensors, ratio: float = 16,
             *, k_ratio: Optional[float] = None, v_ratio: Optional[float] = None,
             layout: str = "head", pos0: int = 0, block_tokens: int = 256, level: int = 6,
             model_name: str = "", threads: Optional[int] = None,
             progress: Progress = None) -> bytes:
    """Compresses one sequence's KV cache into a .kvtc stream.

    keys, values: numpy arrays or CPU torch tensors of float32, float16 or
    bfloat16; stacked [layers, heads, tokens, head_dim] (layout="head", as
    transformers holds them) or [layers, tokens, heads, head_dim]
    (layout="token", llama.cpp, vLLM, SGLang), or lists of per-layer 3-D
    arrays. Keys are post-RoPE; token t sits at position pos0 + t. The arrays
    are read in place (no copy unless layers have different strides).
    ratio is the target against fp16 for keys and values (k_ratio, v_ratio
    override it per kind). The GIL is released while the library works;
    output is the same bytes whatever `threads` is.
    """
    cb = N.progress_callback(progress)
    opt = _compress_options(ratio, k_ratio, v_ratio, block_tokens, level, threads, cb)
    with T.Wrapped(N.lib.kvtc_calibration_shape(calibration._h).contents, keys, values, layout,
                   pos0) as w:
        if model_name:
            N.call("kvtc_cache_set_model_name", w.handle, model_name.encode())
        ptr, n = C.c_void_p(), C.c_size_t()
        N.call("kvtc_compress", calibration._h, w.handle, C.byref(opt), C.byref(ptr),
               C.byref(n))
    return N.take_buffer(ptr, n)


def append(calibration: Calibration, data: bytes, keys: T.Tensors, values: T.Tensors, *,
           ratio: float = 16, k_ratio: Optional[float] = None, v_ratio: Optional[float] = None,
           layout: str = "head", block_tokens: int = 256, level: int = 6,
           threads: Optional[int] = None) -> bytes:
    """Extends a stream with the tokens that follow it, without re-encoding its old blocks.

    The new tokens start at the stream's pos0 + n_tokens.
    """
    info = stream_info(data)
    opt = _compress_options(ratio, k_ratio, v_ratio, block_tokens, level, threads,
                            N.PROGRESS_FN())
    data = bytes(data)
    with T.Wrapped(N.lib.kvtc_calibration_shape(calibration._h).contents, keys, values, layout,
                   info.pos0 + info.n_tokens) as w:
        ptr, n = C.c_void_p(), C.c_size_t()
        N.call("kvtc_append", calibration._h, data, len(data), w.handle, C.byref(opt),
               C.byref(ptr), C.byref(n))
    return N.take_buffer(ptr, n)


def _decompress_options(threads: Optional[int], max_output_bytes: int,
                        progress: C._CFuncPtr) -> N.DecompressOptions:
    opt = N.DecompressOptions()
    N.lib.kvtc_decompress_options_default(C.byref(opt))
    opt.n_threads = _threads(threads)
    opt.max_output_bytes = max_output_bytes
    opt.progress = progress
    return opt


def decompress(calibration: Calibration, data: bytes, *, layout: str = "head",
               stacked: bool = True, backend: str = "numpy",
               out: Optional[Tuple[T.Tensors, T.Tensors]] = None,
               threads: Optional[int] = None, max_output_bytes: int = 0,
               progress: Progress = None) -> Tuple[T.Tensors, T.Tensors]:
    """Restores (keys, values) of a stream, in the stream's dtype.

    New arrays are stacked [layers, heads, tokens, head_dim] (layout="head")
    or [layers, tokens, heads, head_dim] (layout="token"), numpy (bfloat16 as
    ml_dtypes.bfloat16) or torch (backend="torch"); stacked=False gives lists
    of per-layer views. out=(keys, values) restores into existing arrays of
    the right shape and dtype instead (an engine's pages, say). The decoder
    writes each value once, straight into place; the GIL is released.
    """
    info = stream_info(data)
    if out is None:
        keys, values = T.empty(info.shape._c(), info.n_tokens, info._dtype, layout, backend)
    else:
        keys, values = out
    cb = N.progress_callback(progress)
    opt = _decompress_options(threads, max_output_bytes, cb)
    data = bytes(data)
    with T.Wrapped(N.lib.kvtc_calibration_shape(calibration._h).contents, keys, values, layout,
                   info.pos0) as w:
        N.call("kvtc_decompress_into", calibration._h, data, len(data), C.byref(opt), w.handle)
    if out is None and not stacked:
        return [keys[i] for i in range(len(keys))], [values[i] for i in range(len(values))]
    return keys, values


def decompress_block(calibration: Calibration, data: bytes, block: int, *,
                     layout: str = "head", backend: str = "numpy",
                     threads: Optional[int] = None, max_output_bytes: int = 0
                     ) -> Tuple[T.Array, T.Array, int]:
    """Decodes one block alone: (keys, values, pos0 of its first token), stacked.

    StreamInfo.n_blocks says how many there are; block 0 and the last are the
    raw sinks and window when present.
    """
    opt = _decompress_options(threads, max_output_bytes, N.PROGRESS_FN())
    data = bytes(data)
    h = C.c_void_p()
    N.call("kvtc_decompress_block", calibration._h, data, len(data), block, C.byref(opt),
           C.byref(h))
    try:
        shape = N.lib.kvtc_calibration_shape(calibration._h).contents
        n = N.lib.kvtc_cache_tokens(h)
        info = stream_info(data)
        keys, values = T.empty(shape, n, info._dtype, layout, "numpy")
        for kind, dst in enumerate((keys, values)):
            for layer in range(shape.n_layer):
                src = T.from_c(N.lib.kvtc_cache_data_const(h, kind, layer), shape, n,
                               info._dtype)
                dst[layer] = src if layout == "head" else src.transpose(1, 0, 2)
        pos0 = N.lib.kvtc_cache_pos0(h)
    finally:
        N.lib.kvtc_cache_free(h)
    return T.to_backend(keys, backend), T.to_backend(values, backend), pos0


def decompress_layers(calibration: Calibration, data: bytes, *, layout: str = "head",
                      backend: str = "numpy", threads: Optional[int] = None,
                      max_output_bytes: int = 0) -> Iterator[Tuple[int, T.Array, T.Array]]:
    """Yields (layer, keys, values) as each layer is restored, layer 0 first.

    The shared coefficients are decoded once, then each layer is rebuilt in a
    worker thread while the caller uses the previous one (a model can start
    on layer 0). Per layer, arrays are [heads, tokens, head_dim] (layout="head")
    or [tokens, heads, head_dim] ("token"). Leaving the loop early stops the decoder.
    """
    if layout not in T.LAYOUTS:
        raise invalid(f"layout {layout!r}: use 'head' or 'token'")
    info = stream_info(data)
    shape = info.shape._c()
    data = bytes(data)
    handoff: "queue.Queue" = queue.Queue(maxsize=1)
    stop = threading.Event()
    failure: List[BaseException] = []

    def on_layer(_user, layer, key_ptr, value_ptr):
        pair = []
        for ptr in (key_ptr, value_ptr):
            src = T.from_c(ptr, shape, info.n_tokens, info._dtype)  # valid during the call only
            pair.append(np.array(src if layout == "head" else src.transpose(1, 0, 2),
                                 order="C", copy=True))
        while not stop.is_set():
            try:
                handoff.put((layer, pair[0], pair[1]), timeout=0.1)
                return 0
            except queue.Full:
                pass
        return 1

    callback = N.LAYER_FN(on_layer)
    opt = _decompress_options(threads, max_output_bytes, N.PROGRESS_FN())

    def run():
        try:
            N.call("kvtc_decompress_layers", calibration._h, data, len(data), C.byref(opt),
                   callback, None)
        except CancelledError:
            if not stop.is_set():
                failure.append(CancelledError(-11, "layer decoding was stopped"))
        except BaseException as e:  # handed to the consumer below
            failure.append(e)
        finally:
            handoff.put(None) if not stop.is_set() else None

    worker = threading.Thread(target=run, name="kvtc-layers", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is None:
                break
            layer, k, v = item
            yield layer, T.to_backend(k, backend), T.to_backend(v, backend)
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while worker.is_alive():
            try:
                handoff.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


@dataclass(frozen=True)
class StreamInfo:
    """What a .kvtc stream's header says (kvtc_stream_info)."""

    format_version: int
    shape: ModelShape
    dtype: str            # "float32" | "float16" | "bfloat16"
    pos0: int
    n_tokens: int
    sinks: int
    window: int
    compressed_tokens: int
    n_blocks: int
    block_tokens: int
    k_bits_per_token: int
    v_bits_per_token: int
    k_ratio: float
    v_ratio: float
    compressed_bytes: int
    raw_bytes: int
    total_bytes: int
    fp16_bytes: int
    compressed_fp16_bytes: int
    calib_fingerprint: bytes
    model_name: str
    _dtype: int = 0

    @property
    def ratio(self) -> float:
        """Realized ratio of the whole stream against fp16."""
        return self.fp16_bytes / self.total_bytes if self.total_bytes else 0.0


def stream_info(data: bytes) -> StreamInfo:
    """Parses and checks a stream's header (not its block payloads)."""
    data = bytes(data)
    s = N.StreamInfo()
    s.struct_size = C.sizeof(N.StreamInfo)
    N.call("kvtc_stream_info_get", data, len(data), C.byref(s))
    return StreamInfo(s.format_version, ModelShape._from_c(s.shape), T.DTYPE_NAMES[s.dtype],
                      s.pos0, s.n_tokens, s.sinks, s.window, s.compressed_tokens, s.n_blocks,
                      s.block_tokens, s.k_bits_per_token, s.v_bits_per_token, s.k_ratio,
                      s.v_ratio, s.compressed_bytes, s.raw_bytes, s.total_bytes, s.fp16_bytes,
                      s.compressed_fp16_bytes, bytes(s.calib_fingerprint),
                      s.model_name.decode("utf-8", "replace"), s.dtype)
