"""Post-incident look-up: which pod was behind an outside ADDR:PORT at a time, or where an inside one went."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from natproof.errors import InputError
from natproof.report.table import format_address
from natproof.result import Result, connection_dict


@dataclass(frozen=True)
class Answer:
    """Connections whose outside (or inside) source was ADDR:PORT, live at the asked time if one was given."""

    query: str
    at_ns: int | None
    side: str
    """"outside" when ADDR:PORT was the translated source, "inside" when it was a pod's."""
    connections: tuple[dict[str, Any], ...]
    """natproof.correlate/1 connection objects, plus "conn" (its index)."""
    nearest: tuple[dict[str, Any], ...] = ()
    """When none was live at the time: the closest connection before and after it."""

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "at": None if self.at_ns is None else self.at_ns / 1e9, "side": self.side,
                "connections": list(self.connections), "nearest": list(self.nearest)}


def parse_endpoint(text: str) -> tuple[str, int]:
    """ADDR:PORT or [V6]:PORT into (address, port)."""
    host, sep, port = text.rpartition(":")
    try:
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError
        return str(ipaddress.ip_address(host.strip("[]"))), int(port)
    except ValueError:
        raise InputError(f"{text!r} is not ADDR:PORT (e.g. 203.0.113.5:38472 or [2001:db8::1]:443)") from None


_TIME_OF_DAY = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?$")


def parse_time(text: str, day_of_ns: int | None = None) -> int:
    """Epoch seconds, ISO-8601 (no zone means UTC), or a time of day (UTC) on the day of ``day_of_ns``."""
    t = text.strip()
    try:
        return int(round(float(t) * 1e9))
    except ValueError:
        pass
    if _TIME_OF_DAY.match(t):
        if day_of_ns is None:
            raise InputError(f"--at {text}: a time of day needs a capture to give the date")
        day = dt.datetime.fromtimestamp(day_of_ns / 1e9, dt.UTC).date()
        t = f"{day.isoformat()}T{t}"
    try:
        when = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--at {text}: not a time (use epoch seconds, ISO-8601 such as 2026-11-24T14:02:10Z, "
                         "or HH:MM:SS in UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def who(result: Result, endpoint: str, at: str | None = None, window_s: float = 1.0) -> Answer:
    """Find connections by outside source ADDR:PORT (which pod?) or by inside source (where did it go?).

    With ``at``, keep those live within ``window_s`` of that time (a connection is live from its first to its
    last packet); if none is, ``nearest`` holds the closest one on each side of it.
    """
    addr, port = parse_endpoint(endpoint)
    at_ns = None if at is None else parse_time(at, result.inside.first_ts_ns)
    df = result.connections
    outside = df.filter((df["outside_src"] == addr) & (df["outside_sport"] == port)
                        & (df["outside_src"] != df["inside_src"]))
    side = "outside"
    if outside.is_empty():
        outside = df.filter((df["inside_src"] == addr) & (df["inside_sport"] == port))
        side = "inside"
    rows = list(outside.iter_rows(named=True))
    nearest: list[dict[str, Any]] = []
    if at_ns is not None:
        w = int(window_s * 1e9)
        live = [r for r in rows if r["first_ts_ns"] - w <= at_ns <= r["last_ts_ns"] + w]
        if not live:
            before = [r for r in rows if r["last_ts_ns"] < at_ns]
            after = [r for r in rows if r["first_ts_ns"] > at_ns]
            if before:
                nearest.append(max(before, key=lambda r: r["last_ts_ns"]))
            if after:
                nearest.append(min(after, key=lambda r: r["first_ts_ns"]))
        rows = live
    return Answer(query=format_address(addr, port), at_ns=at_ns, side=side,
                  connections=tuple(_with_index(r) for r in rows), nearest=tuple(_with_index(r) for r in nearest))


def _with_index(row: dict[str, Any]) -> dict[str, Any]:
    return {"conn": row["conn"]} | connection_dict(row)
