"""kvtc: KV-cache transform coding (PCA, DP bit allocation, quantization, DEFLATE).

A thin binding over the C library libkvtc (include/kvtc.h); see docs/PYTHON.md.

    import kvtc
    cal = kvtc.Calibration.read("model.kvtcal")
    data = kvtc.compress(cal, keys, values, ratio=16)   # bytes
    keys2, values2 = kvtc.decompress(cal, data)
"""
from ._native import lib as _lib
from .codec import (Calibration, Calibrator, ModelShape, StreamInfo, append, compress,
                    decompress, decompress_block, decompress_layers, stream_info)
from .errors import (CancelledError, ChecksumError, Error, FileError, FormatError,
                     InvalidError, LimitError, MismatchError, NoMemoryError, NumericError,
                     TruncatedError, UnsupportedError, VersionError)

__version__ = "0.1.0"
library_version: str = _lib.kvtc_version().decode()

__all__ = ["Calibration", "Calibrator", "ModelShape", "StreamInfo", "append", "compress",
           "decompress", "decompress_block", "decompress_layers", "stream_info",
           "Error", "InvalidError", "NoMemoryError", "FileError", "FormatError",
           "TruncatedError", "ChecksumError", "VersionError", "MismatchError",
           "UnsupportedError", "NumericError", "CancelledError", "LimitError",
           "library_version"]
