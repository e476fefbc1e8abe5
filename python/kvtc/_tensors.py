"""Arrays in and out of the C library without copies: numpy arrays (bf16 as
ml_dtypes.bfloat16) and, when torch is importable, CPU torch tensors; stacked
[layers, ...] or one array per layer; head-major [heads, tokens, head_dim] or
token-major [tokens, heads, head_dim] per layer. Internal."""
from __future__ import annotations

import ctypes as C
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple, Union

import ml_dtypes
import numpy as np

from . import _native as N
from .errors import invalid, unsupported

LAYOUTS = ("head", "token")  # per layer: [heads, tokens, dim] | [tokens, heads, dim]
Array = Any  # numpy.ndarray or torch.Tensor
Tensors = Union[Array, Sequence[Array]]

_NP_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1,
              np.dtype(ml_dtypes.bfloat16): 2}
NP_BY_CODE = {code: dt for dt, code in _NP_DTYPES.items()}
DTYPE_NAMES = {0: "float32", 1: "float16", 2: "bfloat16"}


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def torch_dtypes() -> dict:
    import torch  # only when a tensor was given or asked for
    return {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@dataclass
class _Layer:
    ptr: int
    shape: Tuple[int, int, int]      # as the array has it
    strides: Tuple[int, int, int]    # elements
    dtype: int


def _layer_of(x: Array, what: str) -> _Layer:
    """Pointer, shape and element strides of one layer's 3-D array."""
    if _is_torch(x):
        if x.device.type != "cpu":
            raise unsupported(f"{what}: a torch tensor on {x.device}; kvtc takes CPU tensors")
        code = torch_dtypes().get(x.dtype)
        if code is None:
            raise unsupported(f"{what}: dtype {x.dtype}; kvtc takes float32, float16, bfloat16")
        shape, strides, ptr = tuple(x.shape), tuple(x.stride()), x.data_ptr()
    elif isinstance(x, np.ndarray):
        code = _NP_DTYPES.get(x.dtype)
        if code is None:
            raise unsupported(f"{what}: dtype {x.dtype}; kvtc takes float32, float16 and "
                              "bfloat16 (ml_dtypes.bfloat16)")
        if any(s % x.itemsize for s in x.strides):
            raise invalid(f"{what}: strides {x.strides} are not whole elements")
        shape = x.shape
        strides = tuple(s // x.itemsize for s in x.strides)
        ptr = x.__array_interface__["data"][0]
    else:
        raise unsupported(f"{what}: a {type(x).__name__}; kvtc takes numpy arrays or torch "
                          "tensors")
    if len(shape) != 3:
        raise invalid(f"{what}: {len(shape)}-D, a layer must be 3-D")
    if any(s < 0 for s in strides):
        raise invalid(f"{what}: negative strides {strides} are not supported")
    if shape[2] > 1 and strides[2] != 1:
        raise invalid(f"{what}: head_dim is not contiguous (stride {strides[2]} elements); "
                      "pass a contiguous copy (numpy.ascontiguousarray / tensor.contiguous())")
    return _Layer(ptr, tuple(shape), tuple(strides), code)


def _layers(x: Tensors, what: str) -> List[Array]:
    if isinstance(x, (list, tuple)):
        return list(x)
    ndim = x.dim() if _is_torch(x) else getattr(x, "ndim", None)
    if ndim != 4:
        raise invalid(f"{what}: expected [layers, ...] 4-D or a list of 3-D layers, "
                      f"got {ndim}-D")
    return [x[i] for i in range(x.shape[0])]


class Wrapped:
    """A kvtc_cache over caller arrays; keeps them alive while it lives."""

    def __init__(self, shape: N.ModelShape, keys: Tensors, values: Tensors, layout: str,
                 pos0: int) -> None:
        if layout not in LAYOUTS:
            raise invalid(f"layout {layout!r}: use 'head' ([heads, tokens, head_dim]) or "
                          "'token' ([tokens, heads, head_dim])")
        self.arrays = (_layers(keys, "keys"), _layers(values, "values"))
        n_layer = shape.n_layer
        for name, arrs in zip(("keys", "values"), self.arrays):
            if len(arrs) != n_layer:
                raise invalid(f"{name}: {len(arrs)} layers, the calibration has {n_layer}")
        layers = [[_layer_of(a, f"{name} layer {i}") for i, a in enumerate(arrs)]
                  for name, arrs in zip(("keys", "values"), self.arrays)]
        first = layers[0][0]
        heads_axis, tokens_axis = (0, 1) if layout == "head" else (1, 0)
        n_tokens = first.shape[tokens_axis]
        want = [0, 0, shape.head_dim]
        want[heads_axis], want[tokens_axis] = shape.n_kv_head, n_tokens
        for kind, name in enumerate(("keys", "values")):
            for i, lay in enumerate(layers[kind]):
                if lay.shape != tuple(want):
                    raise invalid(f"{name} layer {i}: shape {list(lay.shape)}, expected "
                                  f"{want} ({layout}-major: "
                                  f"{'[heads, tokens, head_dim]' if layout == 'head' else '[tokens, heads, head_dim]'})")
                if lay.dtype != first.dtype:
                    raise invalid(f"{name} layer {i}: {DTYPE_NAMES[lay.dtype]}, keys layer 0 "
                                  f"is {DTYPE_NAMES[first.dtype]}: all must be one dtype")
        # One set of strides serves every layer; arrays that differ get one copy.
        strides = {(lay.strides[heads_axis], lay.strides[tokens_axis])
                   for kind in layers for lay in kind}
        if len(strides) > 1:
            self.arrays = tuple([_contiguous(a) for a in arrs] for arrs in self.arrays)
            layers = [[_layer_of(a, "copy") for a in arrs] for arrs in self.arrays]
        hs, ts = (layers[0][0].strides[heads_axis], layers[0][0].strides[tokens_axis])
        self.n_tokens, self.dtype = n_tokens, first.dtype
        ptrs = [(C.c_void_p * n_layer)(*[lay.ptr for lay in kind]) for kind in layers]
        lay = N.CacheLayout(C.sizeof(N.CacheLayout), hs, ts)
        self.handle = C.c_void_p()
        N.call("kvtc_cache_wrap", C.byref(shape), first.dtype, n_tokens, pos0,
               C.cast(ptrs[0], N._pp), C.cast(ptrs[1], N._pp), C.byref(lay),
               C.byref(self.handle))

    def close(self) -> None:
        if self.handle:
            N.lib.kvtc_cache_free(self.handle)
            self.handle = C.c_void_p()

    def __enter__(self) -> "Wrapped":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _contiguous(a: Array) -> Array:
    return a.contiguous() if _is_torch(a) else np.ascontiguousarray(a)


def empty(shape: N.ModelShape, n_tokens: int, dtype: int, layout: str, backend: str
          ) -> Tuple[Array, Array]:
    """Stacked key and value arrays for a restored cache."""
    if layout not in LAYOUTS:
        raise invalid(f"layout {layout!r}: use 'head' or 'token'")
    per = ((shape.n_kv_head, n_tokens) if layout == "head" else (n_tokens, shape.n_kv_head))
    dims = (shape.n_layer, *per, shape.head_dim)
    if backend == "torch":
        import torch
        tdt = {v: k for k, v in torch_dtypes().items()}[dtype]
        return torch.empty(dims, dtype=tdt), torch.empty(dims, dtype=tdt)
    if backend != "numpy":
        raise invalid(f"backend {backend!r}: use 'numpy' or 'torch'")
    return np.empty(dims, NP_BY_CODE[dtype]), np.empty(dims, NP_BY_CODE[dtype])


def from_c(ptr: int, shape: N.ModelShape, n_tokens: int, dtype: int) -> np.ndarray:
    """A numpy view of one C layer [heads, tokens, head_dim] (valid while C keeps it)."""
    count = shape.n_kv_head * n_tokens * shape.head_dim
    dt = NP_BY_CODE[dtype]
    if count == 0:
        return np.empty((shape.n_kv_head, n_tokens, shape.head_dim), dt)
    buf = (C.c_char * (count * dt.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dt).reshape(shape.n_kv_head, n_tokens, shape.head_dim)


def to_backend(x: np.ndarray, backend: str) -> Array:
    """numpy -> torch without a copy where torch can share the memory."""
    if backend == "numpy":
        return x
    import torch
    if x.dtype == np.dtype(ml_dtypes.bfloat16):  # torch.from_numpy knows no bfloat16
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)

