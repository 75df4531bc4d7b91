"""Check a correlation against a grader's expectations: each one passes or fails, with its evidence."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from natproof.errors import InputError
from natproof.report.table import format_address
from natproof.result import Result
from natproof.verdicts import Verdict

EVIDENCE_LINES = 10


@dataclass(frozen=True)
class ExpectedConnection:
    """One connection a grader expects: its inside tuple, and optionally its outside tuple and verdict."""

    inside: str
    """ADDR:PORT of the pod side (ICMP: the echo identifier as port)."""
    outside: str | None = None
    verdict: str | None = None
    proto: str | None = None
    dst: str | None = None
    """ADDR:PORT of the far end, to tell apart two connections from one inside tuple."""


@dataclass(frozen=True)
class Expectations:
    """What must hold; None (or False, or 0) means not checked."""

    snat_ip: str | None = None
    """Every connection that left the node left with this source address."""
    all_verdict: str | None = None
    """Every connection that is not internal has this verdict."""
    port_preserved: bool = False
    """Every translated connection kept its source port."""
    min_connections: int = 0
    """At least this many connections that are not internal."""
    no_verdicts: tuple[str, ...] = ()
    """No connection has any of these verdicts."""
    connections: tuple[ExpectedConnection, ...] = field(default_factory=tuple)

    def is_empty(self) -> bool:
        return self == Expectations()


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    expected: Any
    actual: Any
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "expected": self.expected, "actual": self.actual,
                "evidence": list(self.evidence)}


def _verdict(value: str, where: str) -> str:
    if value not in {v.value for v in Verdict}:
        raise InputError(f"{where}: unknown verdict {value!r} (one of {', '.join(v.value for v in Verdict)})")
    return value


def _addr_port(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep:
            raise ValueError("no port")
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        raise InputError(f"{where}: {value!r} is not ADDR:PORT (e.g. 10.244.0.5:43210 or [2001:db8::1]:443)") \
            from None


def load_expectations(path: str | os.PathLike[str]) -> tuple[Expectations, str | None]:
    """Read an expectations file (TOML); returns the expectations and its pod_cidr (or None).

    ```
    pod_cidr = "10.244.0.0/16"
    snat_ip = "203.0.113.2"
    all = "translated"
    port_preserved = true
    min_connections = 3
    no_verdicts = ["untranslated"]
    [[connection]]
    inside = "10.244.0.10:40000"
    outside = "203.0.113.2:40000"
    verdict = "translated"
    ```
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{where}: not a TOML expectations file ({exc})") from None
    known = {"pod_cidr", "snat_ip", "all", "port_preserved", "min_connections", "no_verdicts", "connection"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    conn_keys = {f.name for f in fields(ExpectedConnection)}
    conns = []
    for i, c in enumerate(doc.get("connection", [])):
        bad = sorted(set(c) - conn_keys)
        if bad or "inside" not in c:
            raise InputError(f"{where}: [[connection]] {i + 1} needs 'inside' and only {', '.join(sorted(conn_keys))}")
        if c.get("verdict"):
            _verdict(c["verdict"], where)
        conns.append(ExpectedConnection(**c))
    exp = Expectations(
        snat_ip=doc.get("snat_ip"),
        all_verdict=_verdict(doc["all"], where) if "all" in doc else None,
        port_preserved=bool(doc.get("port_preserved", False)),
        min_connections=int(doc.get("min_connections", 0)),
        no_verdicts=tuple(_verdict(v, where) for v in doc.get("no_verdicts", [])),
        connections=tuple(conns),
    )
    return exp, doc.get("pod_cidr")


def _label(r: dict[str, Any]) -> str:
    out = format_address(r["outside_src"], r["outside_sport"])
    return (f"#{r['conn']} {r['proto']} {format_address(r['inside_src'], r['inside_sport'])} -> "
            f"{format_address(r['inside_dst'], r['inside_dport'])} as {out}: {r['verdict']}")


def _check(name: str, expected: Any, actual: Any, offenders: list[dict[str, Any]], passed: bool | None = None
           ) -> Check:
    ok = not offenders if passed is None else passed
    ev = [_label(r) for r in offenders[:EVIDENCE_LINES]]
    if len(offenders) > EVIDENCE_LINES:
        ev.append(f"... and {len(offenders) - EVIDENCE_LINES} more")
    return Check(name, ok, expected, actual, tuple(ev))


def verify(result: Result, exp: Expectations) -> list[Check]:
    """Evaluate every expectation that is set."""
    rows = list(result.connections.iter_rows(named=True))
    egress = [r for r in rows if r["verdict"] != "internal"]
    checks: list[Check] = []
    if exp.min_connections:
        checks.append(_check("min_connections", exp.min_connections, len(egress), [],
                             passed=len(egress) >= exp.min_connections))
    if exp.all_verdict:
        bad = [r for r in egress if r["verdict"] != exp.all_verdict]
        counts = {v: n for v, n in result.by_verdict().items() if n and v != "internal"}
        checks.append(_check(f"all {exp.all_verdict}", exp.all_verdict, counts, bad, passed=not bad and bool(egress)))
    if exp.no_verdicts:
        bad = [r for r in rows if r["verdict"] in exp.no_verdicts]
        checks.append(_check(f"no {', '.join(exp.no_verdicts)}", 0, len(bad), bad))
    if exp.snat_ip:
        left = [r for r in egress if r["outside_src"] is not None]
        bad = [r for r in left if r["outside_src"] != exp.snat_ip]
        seen = sorted({r["outside_src"] for r in left})
        checks.append(_check("snat_ip", exp.snat_ip, seen, bad, passed=not bad and bool(left)))
    if exp.port_preserved:
        # The set port_preserved_ratio counts: source address rewritten, original against translated tuple.
        translated = [r for r in egress if r["trans_src"] is not None and r["trans_src"] != r["orig_src"]]
        bad = [r for r in translated if r["trans_sport"] != r["orig_sport"]]
        checks.append(_check("port_preserved", 1.0, result.port_preserved_ratio(), bad,
                             passed=not bad and bool(translated)))
    for want in exp.connections:
        checks.append(_expect_connection(rows, want))
    return checks


def _expect_connection(rows: list[dict[str, Any]], want: ExpectedConnection) -> Check:
    src, sport = _addr_port(want.inside, "connection")
    cands = [r for r in rows if (r["inside_src"], r["inside_sport"]) == (src, sport)
             and (want.proto is None or r["proto"] == want.proto)
             and (want.dst is None or format_address(r["inside_dst"], r["inside_dport"]) == want.dst)]
    name = f"connection {want.inside}" + (f" -> {want.dst}" if want.dst else "")
    expected = {k: v for k, v in (("outside", want.outside), ("verdict", want.verdict)) if v}
    if not cands:
        return Check(name, False, expected or "present", "absent", ())
    problems = []
    for r in cands:
        got_out = None if r["outside_src"] is None else format_address(r["outside_src"], r["outside_sport"])
        if want.outside and got_out != format_address(*_addr_port(want.outside, "connection")):
            problems.append(r)
        elif want.verdict and r["verdict"] != want.verdict:
            problems.append(r)
    r = cands[0]
    actual = {"outside": None if r["outside_src"] is None else format_address(r["outside_src"], r["outside_sport"]),
              "verdict": r["verdict"]}
    return _check(name, expected or "present", actual, problems)
