"""Check a correlation against a grader's expectations: each one passes or fails, with its evidence."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

import polars as pl

from natproof.assemble import private_to_outside
from natproof.errors import OPTIONS, InputError, Said, setting
from natproof.lookup import parse_endpoint
from natproof.networks import parse_networks
from natproof.report.table import format_address
from natproof.result import Result, flags_of
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
class ExpectedDnat:
    """A Service address:port whose every connection was DNATed (to one of ``backends`` when any are given)."""

    address: str
    port: int
    backends: tuple[tuple[str, int], ...] = ()
    """Allowed (address, port) translated destinations; empty means any other than the Service's own."""

    @property
    def name(self) -> str:
        target = f" -> {', '.join(format_address(*b) for b in self.backends)}" if self.backends else ""
        return f"dnat {format_address(self.address, self.port)}{target}"


def parse_dnat(text: str, where: str = "--expect-dnat") -> ExpectedDnat:
    """VIP:PORT[=BACKEND:PORT,BACKEND:PORT...] (the --expect-dnat form) into an ExpectedDnat."""
    service, sep, backends = text.partition("=")
    if sep and not all(b.strip() for b in backends.split(",")):
        raise InputError(f"{where}: {text!r} has an empty backend (VIP:PORT or VIP:PORT=BACKEND:PORT,BACKEND:PORT...)")
    return ExpectedDnat(*parse_endpoint(service.strip(), where),
                        backends=tuple(parse_endpoint(b.strip(), where) for b in backends.split(",")) if sep else ())


@dataclass(frozen=True)
class Expectations:
    """What must hold; None (or False, or 0) means not checked."""

    snat_ip: str | None = None
    """Every connection started inside that left the node left with this source address (:func:`left_the_node`:
    connections started outside, NodePort clients among them, are not judged)."""
    all_verdict: str | None = None
    """Every connection that is not internal has this verdict."""
    port_preserved: bool = False
    """Every translated connection kept its source port."""
    min_connections: int = 0
    """At least this many connections that are not internal."""
    no_verdicts: tuple[str, ...] = ()
    """No connection has any of these verdicts."""
    connections: tuple[ExpectedConnection, ...] = field(default_factory=tuple)
    dnat: tuple[ExpectedDnat, ...] = ()
    """Every connection to each of these Service addresses was DNATed (to an allowed backend); at least one was."""
    no_leak: bool = False
    """No pod's private address left the node untranslated: no connection started inside from a private source to
    a destination outside private space crossed untranslated, and no connection has leaked packets (fate leaked:
    crossed untranslated mid-connection). Global addresses crossing unchanged are routed, no leak."""

    def __post_init__(self) -> None:
        if self.snat_ip is not None:
            try:
                ipaddress.ip_address(self.snat_ip)
            except ValueError:
                raise InputError(setting("snat_ip"), f": {self.snat_ip!r} is not an IP address (e.g. 203.0.113.2)"
                                 ) from None

    def is_empty(self) -> bool:
        return self == Expectations()


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    expected: Any
    actual: Any
    evidence: tuple[str, ...] = ()
    held: int = 0
    """Of the ``of`` connections (or listed items) this expectation is about, how many satisfy it (partial credit
    in natproof.grade); min_connections counts connections up to its minimum."""
    of: int = 0

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
    no_leak = true
    [[dnat]]
    service = "10.96.0.1:443"
    backends = ["198.51.100.10:6443"]  # optional: any translated destination but the Service's own
    [[connection]]
    inside = "10.244.0.10:40000"
    outside = "203.0.113.2:40000"
    verdict = "translated"
    ```
    """
    from natproof.tomlfile import read_toml

    where = os.fspath(path)
    doc = read_toml(where, "a TOML expectations file")
    exp, cidr = expectations_from_dict(doc, where)
    if cidr is not None:
        if not isinstance(cidr, str):
            raise InputError(f"{where}: pod_cidr must be a CIDR in quotes")
        try:
            parse_networks(cidr)
        except InputError:  # named here, not as if it came from --pod-cidr
            raise InputError(f"{where}: pod_cidr {cidr!r} is not a CIDR (or comma-separated CIDRs)") from None
    return exp, cidr


EXPECTATION_KEYS = ("pod_cidr", "snat_ip", "all", "port_preserved", "min_connections", "no_verdicts", "connection",
                    "dnat", "no_leak")
"""The keys of an expectations file (and of each [[expect]] of a grading file, pod_cidr aside)."""


def expectations_from_dict(doc: dict[str, Any], where: str, known: tuple[str, ...] = EXPECTATION_KEYS
                           ) -> tuple[Expectations, str | None]:
    """An expectations file's table (as load_expectations reads it) into the expectations and its pod_cidr;
    ``where`` names it in errors, ``known`` the keys it may have."""
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    conn_keys = {f.name for f in fields(ExpectedConnection)}
    conns = []
    for key in ("connection", "dnat"):
        if not isinstance(doc.get(key, []), list):
            raise InputError(f"{where}: {key} must be a list of tables ([[{key}]])")
    for i, c in enumerate(doc.get("connection", [])):
        bad = sorted(set(c) - conn_keys) if isinstance(c, dict) else ["?"]
        if bad or "inside" not in c:
            raise InputError(f"{where}: [[connection]] {i + 1} needs 'inside' and only {', '.join(sorted(conn_keys))}")
        if c.get("verdict"):
            _verdict(c["verdict"], where)
        for key in ("inside", "outside", "dst"):
            if c.get(key) is not None:
                parse_endpoint(str(c[key]), f"{where}: [[connection]] {i + 1} {key}")
        conns.append(ExpectedConnection(**c))
    dnats = []
    for i, d in enumerate(doc.get("dnat", [])):
        spot = f"{where}: [[dnat]] {i + 1}"
        backends = d.get("backends", []) if isinstance(d, dict) else None
        if (not isinstance(d, dict) or sorted(set(d) - {"service", "backends"}) or not isinstance(d.get("service"), str)
                or not isinstance(backends, list) or not all(isinstance(b, str) for b in backends)):
            raise InputError(f"{spot} needs service = \"VIP:PORT\" and optionally backends = [\"ADDR:PORT\", ...]")
        dnats.append(ExpectedDnat(*parse_endpoint(d["service"], spot),
                                  backends=tuple(parse_endpoint(b, spot) for b in backends)))
    for key, kind, word in (("no_leak", bool, "true or false"), ("port_preserved", bool, "true or false"),
                            ("min_connections", int, "a whole number"), ("no_verdicts", list, "a list of verdicts"),
                            ("snat_ip", str, "an address in quotes"), ("all", str, "a verdict in quotes")):
        if key in doc and (not isinstance(doc[key], kind) or (kind is int and isinstance(doc[key], bool))):
            raise InputError(f"{where}: {key} must be {word}")
    if "snat_ip" in doc:  # named here, not as if it came from --expect-snat-ip
        try:
            ipaddress.ip_address(doc["snat_ip"])
        except ValueError:
            raise InputError(f"{where}: snat_ip {doc['snat_ip']!r} is not an IP address (e.g. 203.0.113.2)") from None
    if doc.get("min_connections", 1) < 1:
        # The file's key to both audiences; the command line is also told that its option refuses 0 alike.
        raise InputError(f"{where}: min_connections must be 1 or more",
                         Said("", f" (as {OPTIONS['min_connections']})"))
    exp = Expectations(
        snat_ip=doc.get("snat_ip"),
        all_verdict=_verdict(doc["all"], where) if "all" in doc else None,
        port_preserved=bool(doc.get("port_preserved", False)),
        min_connections=int(doc.get("min_connections", 0)),
        no_verdicts=tuple(_verdict(v, where) for v in doc.get("no_verdicts", [])),
        connections=tuple(conns),
        dnat=tuple(dnats),
        no_leak=doc.get("no_leak", False),
    )
    return exp, doc.get("pod_cidr")


def _label(r: dict[str, Any]) -> str:
    out = format_address(r["outside_src"], r["outside_sport"])
    return (f"#{r['conn']} {r['proto']} {format_address(r['inside_src'], r['inside_sport'])} -> "
            f"{format_address(r['inside_dst'], r['inside_dport'])} as {out}: {r['verdict']}")


def _check(name: str, expected: Any, actual: Any, offenders: list[dict[str, Any]], passed: bool | None = None,
           of: int = 0) -> Check:
    """``of``: how many connections the expectation is about (``offenders`` among them)."""
    ok = not offenders if passed is None else passed
    ev = [_label(r) for r in offenders[:EVIDENCE_LINES]]
    if len(offenders) > EVIDENCE_LINES:
        ev.append(f"... and {len(offenders) - EVIDENCE_LINES} more")
    return Check(name, ok, expected, actual, tuple(ev), held=of - len(offenders), of=of)


NO_CONNECTION = ("no connection to judge: natproof found none in the captures (correlate's summary gives the frames "
                 "skipped, by reason)")
"""The evidence of every expectation when the captures hold no connection: none holds for want of one."""


def verify(result: Result, exp: Expectations) -> list[Check]:
    """Evaluate every expectation that is set, in a fixed order; a Check each (for each [[dnat]] and [[connection]]
    one). With no connection at all, every one fails with :data:`NO_CONNECTION` first in its evidence and its
    ``actual`` null (min_connections' 0 and an absent dnat or connection aside): an
    expectation about connections (no_leak, no_verdicts) does not hold for want of any (a new user's trial: a capture
    whose every frame was cut short passed "2 of 2")."""
    rows = list(result.connections.iter_rows(named=True))
    egress = [r for r in rows if r["verdict"] != "internal"]
    checks: list[Check] = []
    if exp.min_connections:
        checks.append(replace(
            _check("min_connections", exp.min_connections, len(egress), [], passed=len(egress) >= exp.min_connections),
            held=min(len(egress), exp.min_connections), of=exp.min_connections))
    if exp.all_verdict:
        bad = [r for r in egress if r["verdict"] != exp.all_verdict]
        counts = {v: n for v, n in result.by_verdict().items() if n and v != "internal"}
        check = _check(f"all {exp.all_verdict}", exp.all_verdict, counts, bad, passed=not bad and bool(egress),
                       of=len(egress))
        if rows and not egress:
            check = replace(check, evidence=("no connection to judge: every one is internal (pod to pod)",))
        checks.append(check)
    if exp.no_verdicts:
        bad = [r for r in rows if r["verdict"] in exp.no_verdicts]
        checks.append(_check(f"no {', '.join(exp.no_verdicts)}", 0, len(bad), bad, of=len(rows)))
    if exp.snat_ip:
        left = left_the_node(egress)
        bad = [r for r in left if r["outside_src"] != exp.snat_ip]
        seen = sorted({r["outside_src"] for r in left})
        check = _check("snat_ip", exp.snat_ip, seen, bad, passed=not bad and bool(left), of=len(left))
        if rows and not left:
            inbound = sum(r["initiator"] == "outside" for r in egress)
            check = replace(check, evidence=(
                "no connection to judge: none started inside was seen leaving the node"
                + (f" ({inbound} started outside, not judged: their source on the outside is their client's)"
                   if inbound else ""),))
        checks.append(check)
    if exp.port_preserved:
        # The set port_preserved_ratio counts: source address rewritten, original against translated tuple.
        translated = [r for r in egress if r["trans_src"] is not None and r["trans_src"] != r["orig_src"]]
        bad = [r for r in translated if r["trans_sport"] != r["orig_sport"]]
        check = _check("port_preserved", 1.0, result.port_preserved_ratio(), bad, passed=not bad and bool(translated),
                       of=len(translated))
        if rows and not translated:
            check = replace(check, evidence=("no connection had its source rewritten, so port preservation cannot be "
                                             "judged",))
        checks.append(check)
    for want in exp.dnat:
        checks.append(_expect_dnat(rows, want))
    if exp.no_leak:
        checks.append(_expect_no_leak(result, rows))
    for want in exp.connections:
        checks.append(_expect_connection(rows, want))
    if not rows:
        # Nothing judged, nothing counted: ``actual`` null (as port_preserved's ratio of no connection), not a 0
        # that reads as the expected 0 on a failed line ("no_leak: expected 0, got 0", a new user's trial), nor an
        # empty {} or []. min_connections keeps its count, dnat and a connection "absent": true of no connection.
        checks = [replace(c, passed=False, held=0, evidence=(NO_CONNECTION, *c.evidence),
                          actual=c.actual if c.name in _COUNTED_WITHOUT_CONNECTIONS or c.actual == "absent" else None)
                  for c in checks]
    return checks


_COUNTED_WITHOUT_CONNECTIONS = ("min_connections",)
"""Checks whose ``actual`` still says something of captures with no connection (their count, 0)."""


def left_the_node(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The connections ``snat_ip`` judges, of ``rows`` (natproof.result.CONNECTION_SCHEMA rows as dicts): those
    started inside (``initiator`` "inside") that were seen leaving on the outside (``outside_src`` set), rewritten
    or not; the source each left with is its ``outside_src``. A connection started outside (a NodePort client, an FTP
    server's active data connection) did not leave: its ``outside_src`` is its client's address, and a client
    masqueraded on its way in (externalTrafficPolicy: Cluster) took the node's bridge address toward the pod (diagnose's
    nodeport_source_lost, ``who`` names the client behind it), not the address traffic leaves the node from. Counting
    those had a healthy NodePort node fail with its clients' addresses as "SNAT addresses" (a new user's trial)."""
    return [r for r in rows if r["initiator"] == "inside" and r["outside_src"] is not None]


def _frames(r: dict[str, Any]) -> str:
    """Where the connection's first initiator packet is, in each capture (frames as Wireshark numbers them)."""
    parts = [f"{op} frame {r[col]}" for op, col in (("inside", "evidence_egress_inside_frame"),
                                                     ("outside", "evidence_egress_outside_frame"),
                                                     ("inside", "evidence_egress_translated_frame"))
             if r[col] is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _limited(lines: list[str]) -> tuple[str, ...]:
    if len(lines) > EVIDENCE_LINES:
        lines = lines[:EVIDENCE_LINES] + [f"... and {len(lines) - EVIDENCE_LINES} more"]
    return tuple(lines)


def _expect_dnat(rows: list[dict[str, Any]], want: ExpectedDnat) -> Check:
    service = (want.address, want.port)
    conns = [r for r in rows if (r["orig_dst"], r["orig_dport"]) == service]
    expected: Any = [format_address(*b) for b in want.backends] or "DNAT"
    if not conns:
        return Check(want.name, False, expected, "absent",
                     (f"no connection to {format_address(*service)} in the captures",))
    reached: dict[str, int] = {}
    evidence = []
    for r in conns:
        head = (f"#{r['conn']} {r['proto']} {format_address(r['orig_src'], r['orig_sport'])} -> "
                f"{format_address(*service)}")
        if r["trans_dst"] is None:
            where, problem = "not captured after the NAT", "no leg after the NAT was captured: DNAT not proven"
        else:
            dst = (r["trans_dst"], r["trans_dport"])
            where = format_address(*dst)
            if dst == service:
                problem = f"reached {where} unchanged: not DNATed"
            elif want.backends and dst not in want.backends:
                problem = f"DNATed to {where}, not an allowed backend"
            else:
                problem = ""
        reached[where] = reached.get(where, 0) + 1
        if problem:
            evidence.append(f"{head}: {problem}{_frames(r)}")
    return Check(want.name, not evidence, expected, reached, _limited(evidence), held=len(conns) - len(evidence),
                 of=len(conns))


def _expect_no_leak(result: Result, rows: list[dict[str, Any]]) -> Check:
    """A pod's private address left the node untranslated: a connection started inside from a private source to a
    destination outside private space that crossed with nothing rewritten (verdict untranslated: natproof.assemble's
    private_to_outside, the leak diagnose names no_masquerade or wrong_source_subnet), or packets of any connection
    that crossed untranslated mid-connection (fate leaked, flag ``leak``: an expired or INVALID entry). ``actual``
    counts the packets that crossed so."""
    conns = result.connections
    exposed = set(conns.filter((pl.col("verdict") == "untranslated") & (pl.col("initiator") == "inside")
                               & private_to_outside(conns["orig_src"], conns["orig_dst"]))["conn"].to_list())
    leaky = [r for r in rows if r["fate_leaked"] or "leak" in flags_of(r) or r["conn"] in exposed]
    if not leaky:
        return Check("no_leak", True, 0, 0, held=len(rows), of=len(rows))
    # Only the leaked packets are collected (a few, against every packet of the captures).
    packets = result.packets("inside").filter(pl.col("fate") == "leaked").select(
        "anchor", "frame_no", "out_frame").collect()
    out_packets = result.packets("outside").filter(pl.col("fate") == "leaked").select("anchor", "frame_no").collect()
    evidence = []
    for r in leaky:
        head = (f"#{r['conn']} {r['proto']} {format_address(r['orig_src'], r['orig_sport'])} -> "
                f"{format_address(r['orig_dst'], r['orig_dport'])}")
        if r["conn"] in exposed:
            evidence.append(f"{head}: untranslated: {r['fate_crossed'] + r['fate_leaked']} packet(s) crossed carrying "
                            f"the private address {r['orig_src']}{_frames(r)}")
            continue
        mine = packets.filter(pl.col("anchor") == r["inside_conn_id"])
        out_frames = sorted(set(mine["out_frame"].drop_nulls().to_list())
                            | set(out_packets.filter(pl.col("anchor") == r["inside_conn_id"])["frame_no"].to_list()))
        plain = [leg for leg in (r["legs"] or []) if leg["observation_point"] == "outside"
                 and (leg["src"], leg["sport"]) in ((r["orig_src"], r["orig_sport"]), (r["orig_dst"], r["orig_dport"]))]
        carrying = "" if not plain else (f" as {format_address(plain[0]['src'], plain[0]['sport'])} -> "
                                         f"{format_address(plain[0]['dst'], plain[0]['dport'])}")
        evidence.append(
            f"{head}: {r['fate_leaked']} packet(s) crossed untranslated"
            f"{carrying} (inside frames {_frame_list(mine['frame_no'].to_list())}; "
            f"outside frames {_frame_list(out_frames)})")
    crossed = sum(r["fate_leaked"] + (r["fate_crossed"] if r["conn"] in exposed else 0) for r in leaky)
    return Check("no_leak", False, 0, crossed, _limited(evidence), held=len(rows) - len(leaky), of=len(rows))


def _frame_list(frames: list[int], shown: int = 8) -> str:
    if not frames:
        return "-"
    text = ", ".join(str(f) for f in frames[:shown])
    return text + (f" and {len(frames) - shown} more" if len(frames) > shown else "")


def _expect_connection(rows: list[dict[str, Any]], want: ExpectedConnection) -> Check:
    src, sport = _addr_port(want.inside, "connection")
    cands = [r for r in rows if (r["inside_src"], r["inside_sport"]) == (src, sport)
             and (want.proto is None or r["proto"] == want.proto)
             and (want.dst is None or format_address(r["inside_dst"], r["inside_dport"]) == want.dst)]
    name = f"connection {want.inside}" + (f" -> {want.dst}" if want.dst else "")
    expected = {k: v for k, v in (("outside", want.outside), ("verdict", want.verdict)) if v}
    if not cands:
        return Check(name, False, expected or "present", "absent", (), held=0, of=1)
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
    return _check(name, expected or "present", actual, problems, of=len(cands))
