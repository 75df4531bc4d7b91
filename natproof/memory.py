"""Memory: ``--memory-limit`` sizes and their default, where a correlation past it spills (``--spill-dir``), and
giving freed memory back to the operating system between the pipeline's big steps. Light to import: the command
line reads its options with it before polars loads."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import stat
import tempfile

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
    ``--spill-dir``), checked before any capture is read, as a str. InputError (spill_dir_error: one line, the path
    and the problem) for an empty name (which tempfile would read as the current folder), a missing one, a file or
    a device, and a folder natproof cannot make its folder in (read-only, or /proc: tried, and the trial removed)."""
    where = os.fspath(path)
    if not where:
        raise spill_dir_error(where, "an empty name names no folder")
    try:
        mode = os.stat(where).st_mode
    except FileNotFoundError:
        raise spill_dir_error(where, "no such folder") from None
    except OSError as exc:
        raise spill_dir_error(where, f"cannot look at it ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(mode):
        kind = "a file, " if stat.S_ISREG(mode) else "a device, " if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else ""
        raise spill_dir_error(where, f"{kind}not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".natproof-check-", dir=where))
    except OSError as exc:
        raise spill_dir_error(where, f"cannot make a folder in it ({exc.strerror or exc})") from None
    return where


def spill_dir_error(where: str, problem: str) -> InputError:
    """What is wrong with a spill folder given (``spill_dir``, ``--spill-dir``): ``--spill-dir PATH: problem``."""
    return InputError(setting("spill_dir", where), f": {problem}")


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
