"""Exceptions: one class per kvtc_status, all under kvtc.Error.

Each carries the library's one-line message (``str(e)``) and its status code
(``e.status``). Classes also derive from the closest built-in exception, so
``except ValueError`` catches a bad argument or array as Python code expects.
"""
from __future__ import annotations


class Error(Exception):
    """A kvtc failure: ``status`` is the negative kvtc_status, ``message`` the library's text."""

    status: int = 0

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InvalidError(Error, ValueError):
    """KVTC_E_INVALID: a bad argument, option or array from the caller."""


class NoMemoryError(Error, MemoryError):
    """KVTC_E_NOMEM: an allocation failed."""


class FileError(Error, OSError):
    """KVTC_E_IO: open, read, write or rename failed."""


class FormatError(Error, ValueError):
    """KVTC_E_FORMAT: not a valid file of this kind."""


class TruncatedError(FormatError):
    """KVTC_E_TRUNCATED: the data ends before the format says it should."""


class ChecksumError(FormatError):
    """KVTC_E_CHECKSUM: a CRC-32 or fingerprint does not match (corrupt data)."""


class VersionError(FormatError):
    """KVTC_E_VERSION: written by a newer, incompatible format version."""


class MismatchError(Error, ValueError):
    """KVTC_E_MISMATCH: calibration, model shape or positions do not match."""


class UnsupportedError(Error, TypeError):
    """KVTC_E_UNSUPPORTED: valid but not supported (a dtype, a rope style, an array type)."""


class NumericError(Error, ValueError):
    """KVTC_E_NUMERIC: non-finite input where it is refused, or the eigensolver failed."""


class CancelledError(Error):
    """KVTC_E_CANCELLED: a callback asked to stop."""


class LimitError(Error):
    """KVTC_E_LIMIT: the result would exceed a limit the caller set."""


_BY_STATUS = {-1: InvalidError, -2: NoMemoryError, -3: FileError, -4: FormatError,
              -5: TruncatedError, -6: ChecksumError, -7: VersionError, -8: MismatchError,
              -9: UnsupportedError, -10: NumericError, -11: CancelledError, -12: LimitError}


def for_status(status: int) -> type[Error]:
    """The exception class of a kvtc_status (Error itself for an unknown one)."""
    return _BY_STATUS.get(status, Error)


def invalid(message: str) -> InvalidError:
    """A KVTC_E_INVALID raised by the binding itself, before the library is called."""
    return InvalidError(-1, message)


def unsupported(message: str) -> UnsupportedError:
    """A KVTC_E_UNSUPPORTED raised by the binding itself."""
    return UnsupportedError(-9, message)
