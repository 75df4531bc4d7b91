"""Write a Result as json, ndjson, csv, parquet or conntrack lines; files are written atomically."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import orjson
import polars as pl

from natproof.contracts import FORMATS  # noqa: F401 (named here before natproof.contracts)
from natproof.report.files import atomic_write, writable_folder, write_bytes  # noqa: F401 (named here first)
from natproof.result import SCHEMA, Result, connection_ndjson_parts, flags_expr, seconds_expr


def to_json(result: Result, schema: str = SCHEMA) -> str:
    return result.to_json(schema).decode()


def ndjson_parts(result: Result, schema: str = SCHEMA) -> Iterator[bytes]:
    """The connections one per line (for jq and log pipelines), as in the ``schema`` document, in pieces to write
    one after the other: for /2 written by polars a few thousand at a time (result.connection_ndjson_parts)."""
    if schema == SCHEMA:
        yield from connection_ndjson_parts(result.connections)
        return
    for c in result.to_dict(schema)["connections"]:
        yield orjson.dumps(c, option=orjson.OPT_APPEND_NEWLINE)


def to_ndjson(result: Result, schema: str = SCHEMA) -> str:
    """One connection per line (for jq and log pipelines), as in the ``schema`` document."""
    return b"".join(ndjson_parts(result, schema)).decode()


def flat_frame(result: Result) -> pl.DataFrame:
    """The connections frame with SQL-friendly column names, first/last seen in epoch seconds and the JSON forms'
    ``flags`` (natproof.result.flags_expr: a leak, a reply not reverse-translated, ... were in no column a CSV
    showed, a trial). Parquet keeps ``rewrites``, ``flags`` and ``legs`` as lists."""
    conns = result.connections
    return conns.with_columns(
        seconds_expr("first_ts_ns").alias("first_seen"), seconds_expr("last_ts_ns").alias("last_seen"),
        flags_expr("pod" in conns.columns).alias("flags"),
    )


def csv_frame(result: Result) -> pl.DataFrame:
    """The rows of the CSV form: ``rewrites`` and ``flags`` joined by commas, a named result's pod candidates by
    ``|``, ``legs`` left to JSON and Parquet."""
    frame = flat_frame(result).drop("first_ts_ns", "last_ts_ns", "legs")
    lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List) and c not in ("rewrites", "flags")]
    return frame.with_columns(pl.col("rewrites", "flags").list.join(","), *[pl.col(c).list.join("|") for c in lists])


def csv_bytes(result: Result) -> bytes:
    """One row per connection (csv_frame), written by polars straight to bytes (no str copy to encode again)."""
    buf = io.BytesIO()
    csv_frame(result).write_csv(buf)
    return buf.getvalue()


def to_csv(result: Result) -> str:
    """csv_bytes as text."""
    return csv_bytes(result).decode()


def _tuple(src: str, dst: str, sport: int | None, dport: int | None, proto: str) -> str:
    if proto == "icmp":
        return f"src={src} dst={dst} type=8 code=0 id={sport}"
    return f"src={src} dst={dst} sport={sport} dport={dport}"


def conntrack_line(r: dict[str, Any]) -> str:
    """One connection row (CONNECTION_SCHEMA) in conntrack -L notation: the original tuple, then the reply tuple (the
    translated one reversed), as the kernel records a NAT mapping; no timeout (natproof cannot know it), and
    natproof's verdict as a trailing ``verdict=`` key, which conntrack parsers ignore. (conntrack_lines does every
    row at once, the same text.)"""
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


def _text(col: str) -> pl.Expr:
    """A column as conntrack_line's f-string writes it: its text, ``None`` for a null."""
    return pl.col(col).cast(pl.String).fill_null("None")


def _tuple_expr(src: str, dst: str, sport: str, dport: str, icmp: tuple[int, str]) -> pl.Expr:
    """_tuple's text from columns; ``icmp``: the type and the identifier's column an ICMP echo tuple shows."""
    icmp_type, icmp_id = icmp
    echo = pl.format(f"src={{}} dst={{}} type={icmp_type} code=0 id={{}}", _text(src), _text(dst), _text(icmp_id))
    return (pl.when(pl.col("proto") == "icmp").then(echo)
            .otherwise(pl.format("src={} dst={} sport={} dport={}", _text(src), _text(dst), _text(sport),
                                 _text(dport))))


def conntrack_lines(connections: pl.DataFrame) -> pl.Series:
    """Every connection row (CONNECTION_SCHEMA) in conntrack -L notation (conntrack_line's text), built from the
    columns by polars: no Python per row. A protocol conntrack_line has no number for gets ``-``."""
    numbers = pl.col("proto").replace_strict({"tcp": "6", "udp": "17", "icmp": "1"}, default="-",
                                             return_dtype=pl.String)
    replied = (pl.col("reply_inside").fill_null(0) > 0) | (pl.col("reply_outside").fill_null(0) > 0)
    reply = (pl.when(pl.col("trans_src").is_null()).then(pl.lit("src=- dst=- sport=- dport=-"))
             .otherwise(_tuple_expr("trans_dst", "trans_src", "trans_dport", "trans_sport", (0, "trans_sport"))))
    line = pl.concat_str(
        pl.col("proto").str.pad_end(8), pl.lit(" "), numbers, pl.lit(" - "),
        _tuple_expr("orig_src", "orig_dst", "orig_sport", "orig_dport", (8, "orig_sport")),
        pl.when(replied).then(pl.lit("")).otherwise(pl.lit(" [UNREPLIED]")), pl.lit(" "), reply,
        pl.lit(" verdict="), _text("verdict"))
    return connections.select(line.alias("line")).to_series()


def conntrack_bytes(result: Result) -> bytes:
    """conntrack -L notation, one line per connection (conntrack_lines), each ending in a newline."""
    lines = conntrack_lines(result.connections)
    return b"" if lines.is_empty() else (lines.str.join("\n").item() + "\n").encode()


def to_conntrack(result: Result) -> str:
    """conntrack -L notation, one line per connection (conntrack_line)."""
    return conntrack_bytes(result).decode()


def parquet_bytes(result: Result) -> bytes:
    """flat_frame as a Parquet file."""
    buf = io.BytesIO()
    flat_frame(result).write_parquet(buf)
    return buf.getvalue()


def render_parts(result: Result, fmt: str, schema: str = SCHEMA) -> Iterator[bytes]:
    """The result in a file format as pieces to write one after the other, so that the largest forms (json,
    ndjson) are never held whole; ``schema`` picks the JSON document (json, ndjson). ValueError for an unknown
    format, at once."""
    makers: dict[str, Callable[[], Iterable[bytes]]] = {
        "json": lambda: result.json_parts(schema),
        "ndjson": lambda: ndjson_parts(result, schema),
        "csv": lambda: [csv_bytes(result)],
        "conntrack": lambda: [conntrack_bytes(result)],
        "parquet": lambda: [parquet_bytes(result)],
    }
    if fmt not in makers:
        raise ValueError(f"unknown format {fmt!r}")
    return iter(makers[fmt]())


def render_bytes(result: Result, fmt: str, schema: str = SCHEMA) -> bytes:
    """The result in a file format, as bytes (render_parts joined)."""
    return b"".join(render_parts(result, fmt, schema))


def write_result(result: Result, fmt: str, path: str | os.PathLike[str], schema: str = SCHEMA) -> None:
    """Write the result in a format to ``path`` atomically, in pieces (render_parts): json and ndjson are never
    held whole."""
    parts = render_parts(result, fmt, schema)
    atomic_write(path, lambda fh: write_parts(fh, parts))


def write_parts(fh: IO[bytes], parts: Iterable[bytes]) -> None:
    """Write each piece in turn."""
    for part in parts:
        fh.write(part)
