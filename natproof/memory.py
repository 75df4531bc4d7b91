"""Memory: ``--memory-limit`` sizes and their default, where a correlation past it spills (``--spill-dir``), and
giving freed memory back to the operating system between the pipeline's big steps. Light to import: the command
line reads its options with it before polars loads."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os

from natproof.errors import InputError, setting


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


def parse_size(text: str) -> int:
    """``--memory-limit`` values: bytes, or a number with K, M, G or T (powers of 1024; "1.5G"). ValueError
    otherwise."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if t and t[-1] in "KMGT":
        scale, t = 1024 ** ("KMGT".index(t[-1]) + 1), t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"{text!r}: a size such as 512M, 2G or 1500000000") from None
    if not math.isfinite(value) or value * scale > 1 << 60:
        raise ValueError(f"{text!r}: a size such as 512M, 2G or 1500000000, below an exabyte")
    if not value * scale >= 1:
        raise ValueError(f"{text!r}: a size of one byte or more")
    return int(value * scale)


def check_spill_dir(path: str | os.PathLike[str]) -> str:
    """The folder a correlation past memory spills under (natproof.correlate's ``spill_dir``, the command line's
    ``--spill-dir``), checked before any capture is read, as a str: InputError for an empty name (which
    tempfile would read as the current folder)."""
    where = os.fspath(path)
    if not where:
        raise InputError(setting("spill_dir", where), ": an empty name names no folder")
    return where


def default_memory_limit() -> int | None:
    """Three quarters of the memory available now (MemAvailable in /proc/meminfo: free memory and what the page
    cache can give back), the default ``--memory-limit``; None where the kernel does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 * 3 // 4
    except OSError:
        pass
    return None
