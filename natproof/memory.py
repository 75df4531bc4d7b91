"""Give freed memory back to the operating system between the pipeline's big steps."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None


def trim() -> None:
    """Return the C heap's free pages to the OS (glibc's malloc_trim; a no-op elsewhere).

    numpy's arrays, and polars columns made from them without a copy, live on the C heap; glibc keeps most of
    what they free (measured: about 90 MB after decoding 5M packets) unless asked to trim. polars' own
    allocator is told to return pages at once in natproof/__init__.py.
    """
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
