"""Write a Result as json, ndjson, csv, parquet or conntrack lines; files are written atomically."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import orjson
import polars as pl

from natproof.errors import InputError
from natproof.result import SCHEMA, Result, connection_ndjson

FORMATS = ("table", "json", "ndjson", "csv", "parquet", "conntrack")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write through a temporary file in the target's folder, then rename: never a half-written file.

    A target that exists and is no regular file (``/dev/null``, a FIFO) is written in place: renaming over it
    would replace the device. A folder that does not exist is an InputError naming it."""
    target = Path(path)
    if target.exists() and not target.is_file():
        if target.is_dir():
            raise InputError(f"{target}: is a directory, not a file to write")
        with open(target, "wb") as fh:
            write(fh)
        return
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{target}: cannot write it, no such directory {parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            # mkstemp makes the file 0600; give it the mode any new file gets (0666 less the umask).
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(fh.fileno(), 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json(result: Result, schema: str = SCHEMA) -> str:
    return result.to_json(schema).decode()


def to_ndjson(result: Result, schema: str = SCHEMA) -> str:
    """One connection per line (for jq and log pipelines), as in the ``schema`` document."""
    if schema == SCHEMA:
        return connection_ndjson(result.connections).decode()
    conns = result.to_dict(schema)["connections"]
    return b"".join(orjson.dumps(c, option=orjson.OPT_APPEND_NEWLINE) for c in conns).decode()


def flat_frame(result: Result) -> pl.DataFrame:
    """The connections frame with SQL-friendly column names and first/last seen in epoch seconds (Parquet keeps
    ``rewrites`` and ``legs`` as lists)."""
    return result.connections.with_columns(
        (pl.col("first_ts_ns") / 1e9).alias("first_seen"), (pl.col("last_ts_ns") / 1e9).alias("last_seen"),
    )


def to_csv(result: Result) -> str:
    """One row per connection; ``rewrites`` joined by commas, a named result's pod candidates by ``|``, ``legs``
    left to JSON and Parquet."""
    frame = flat_frame(result).drop("first_ts_ns", "last_ts_ns", "legs")
    lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List) and c != "rewrites"]
    return frame.with_columns(pl.col("rewrites").list.join(","), *[pl.col(c).list.join("|") for c in lists]
                              ).write_csv()


def _tuple(src: str, dst: str, sport: int | None, dport: int | None, proto: str) -> str:
    if proto == "icmp":
        return f"src={src} dst={dst} type=8 code=0 id={sport}"
    return f"src={src} dst={dst} sport={sport} dport={dport}"


def conntrack_line(r: dict[str, Any]) -> str:
    """One connection row (CONNECTION_SCHEMA) in conntrack -L notation: the original tuple, then the reply tuple (the
    translated one reversed), as the kernel records a NAT mapping; no timeout (natproof cannot know it), and
    natproof's verdict as a trailing ``verdict=`` key, which conntrack parsers ignore."""
    numbers = {"tcp": 6, "udp": 17, "icmp": 1}
    proto = r["proto"]
    orig = _tuple(r["orig_src"], r["orig_dst"], r["orig_sport"], r["orig_dport"], proto)
    if r["trans_src"] is not None:
        if proto == "icmp":
            reply = f"src={r['trans_dst']} dst={r['trans_src']} type=0 code=0 id={r['trans_sport']}"
        else:
            reply = _tuple(r["trans_dst"], r["trans_src"], r["trans_dport"], r["trans_sport"], proto)
    else:
        reply = "src=- dst=- sport=- dport=-"
    unreplied = "" if (r["reply_inside"] or r["reply_outside"]) else " [UNREPLIED]"
    return f"{proto:<8} {numbers[proto]} - {orig}{unreplied} {reply} verdict={r['verdict']}"


def to_conntrack(result: Result) -> str:
    """conntrack -L notation, one line per connection (conntrack_line)."""
    lines = [conntrack_line(r) for r in result.connections.iter_rows(named=True)]
    return "\n".join(lines) + ("\n" if lines else "")


def render_bytes(result: Result, fmt: str, schema: str = SCHEMA) -> bytes:
    """The result in a file format, as bytes; ``schema`` picks the JSON document (json, ndjson)."""
    if fmt == "json":
        return result.to_json(schema)
    if fmt == "ndjson":
        return to_ndjson(result, schema).encode()
    if fmt == "csv":
        return to_csv(result).encode()
    if fmt == "conntrack":
        return to_conntrack(result).encode()
    if fmt == "parquet":
        buf = io.BytesIO()
        flat_frame(result).write_parquet(buf)
        return buf.getvalue()
    raise ValueError(f"unknown format {fmt!r}")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes atomically (see atomic_write)."""
    atomic_write(path, lambda fh: fh.write(data))


def write_result(result: Result, fmt: str, path: str | os.PathLike[str], schema: str = SCHEMA) -> None:
    if fmt == "json":  # in pieces (Result.json_parts): the document is never held whole
        atomic_write(path, lambda fh: write_parts(fh, result.json_parts(schema)))
        return
    write_bytes(path, render_bytes(result, fmt, schema))


def write_parts(fh: IO[bytes], parts: Iterable[bytes]) -> None:
    """Write each piece in turn."""
    for part in parts:
        fh.write(part)
