"""Files natproof writes: atomically (never a half-written file), and their targets checked before any work.

Free of polars: the command line checks an ``-o`` target with it before it loads the libraries.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from natproof.errors import InputError


def check_target(path: str | os.PathLike[str]) -> None:
    """The checks atomic_write makes before it writes, made before any work (a bad ``-o`` said at once, not after
    minutes of decoding): a directory, a folder that does not exist or takes no new file (/proc, a read-only
    mount) is an InputError naming the target. A target that exists and is no regular file (/dev/null) passes;
    so does standard output ("-")."""
    if os.fspath(path) == "-":
        return
    target = _target(path)
    if _in_place(target):
        return
    fd, tmp = _temporary(target)
    os.close(fd)
    os.unlink(tmp)


def _target(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if target.is_symlink():  # write the file the link names, as `>` does; renaming over it would replace the link
        target = target.resolve()
    return target


def _in_place(target: Path) -> bool:
    """Whether ``target`` is there and no regular file (/dev/null, a FIFO): written in place, not renamed over.
    InputError for a directory."""
    if target.exists() and not target.is_file():
        if target.is_dir():
            raise InputError(f"{target}: is a directory, not a file to write")
        return True
    return False


def _temporary(target: Path) -> tuple[int, str]:
    """A new temporary file beside ``target`` (fd, path); InputError naming the target when its folder is missing,
    is a file, or takes no new file (/proc, a read-only mount: said so, not "no such file")."""
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():  # tgt/file/x.json: the folder named is a file, not a missing folder
            raise InputError(f"{target}: cannot write it, {parent} is a file, not a folder")
        raise InputError(f"{target}: cannot write it, no such directory {parent}")
    try:
        return tempfile.mkstemp(prefix=f".{target.name}.", dir=parent)
    except OSError as exc:
        raise InputError(f"{target}: cannot write it, its folder {parent} takes no new file "
                         f"({exc.strerror or exc})") from None


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the target's folder, then rename: never a half-written file.

    A target that exists and is no regular file (``/dev/null``, a FIFO) is written in place: renaming over it
    would replace the device. A folder that does not exist, one natproof may not write in, a full disk: an
    InputError naming the target, and no file left behind (not even after Ctrl-C)."""
    target = _target(path)
    if _in_place(target):
        try:
            with open(target, "wb") as fh:
                write(fh)
        except OSError as exc:
            raise _cannot_write(target, exc) from None
        return
    fd, tmp_path = _temporary(target)
    tmp: str | None = tmp_path
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            # mkstemp makes the file 0600; give it the mode any new file gets (0666 less the umask).
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fh.fileno(), 0o666 & ~mask)
        os.replace(tmp_path, target)
    except BaseException as exc:
        # Remove the temporary file even if Ctrl-C comes again (polars may raise the one it saw a second time):
        # inline, not in a function, whose entry is where Python would raise it.
        while tmp is not None:
            try:
                os.unlink(tmp)
                tmp = None
            except FileNotFoundError:
                tmp = None
            except KeyboardInterrupt:
                continue
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            raise _cannot_write(target, exc) from None
        raise


def writable_folder(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """``path`` as a folder natproof can write in, made (with its parents) if missing: checked before any work or
    output, so a bad folder costs nothing written. InputError naming it otherwise (a file in the way, no
    permission, a path under a device or /proc)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{folder}: is there and is not a folder, so no {what} can be written there") \
            from None
    except OSError as exc:
        raise InputError(f"{folder}: cannot make the {what} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: cannot write in this {what} (permission denied)")
    return folder


def _cannot_write(target: Path, exc: OSError) -> InputError:
    return InputError(f"{target}: cannot write it ({exc.strerror or exc})")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes atomically (see atomic_write)."""
    atomic_write(path, lambda fh: fh.write(data))
