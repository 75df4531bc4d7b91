"""Reading a TOML input file (a grading file, a fleet manifest) with one-line errors that name the file."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from natproof.errors import InputError


def read_toml(path: str | os.PathLike[str], what: str, *, noun: str = "file") -> dict[str, Any]:
    """The TOML document at ``path``. Raises InputError "PATH: no such NOUN", "PATH: is a directory, not WHAT",
    "PATH: cannot read it: ...", "PATH: not WHAT: not UTF-8 text" or "PATH: not WHAT: <the parser's message>"."""
    where = os.fspath(path)
    try:
        data = Path(where).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{where}: no such {noun}") from None
    except IsADirectoryError:
        raise InputError(f"{where}: is a directory, not {what}") from None
    except OSError as exc:
        raise InputError(f"{where}: cannot read it: {exc.strerror}") from None
    try:
        # A byte-order mark first (Windows editors save UTF-8 so) is no TOML statement; it is taken off rather than
        # read as "Invalid statement (at line 1, column 1)" (a new user's trial, a fleet manifest).
        return tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InputError(f"{where}: not {what}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where}: not {what}: {exc}") from None
