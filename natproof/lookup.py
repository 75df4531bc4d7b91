"""Post-incident look-up: the connections an ADDR:PORT took part in (at a time), and the role it played in each."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from natproof.assemble import Services
from natproof.conntrack import ConntrackRecord
from natproof.contracts import epoch_seconds
from natproof.errors import InputError, Said, setting
from natproof.kernel import Network, kernel_connections, kernel_flows
from natproof.report.table import format_address
from natproof.result import Result, connection_dict

if TYPE_CHECKING:
    from natproof.names import Names


@dataclass(frozen=True)
class Answer:
    """Connections in which ADDR:PORT was an end of the original or the translated tuple, live at the asked time if
    one was given, each with the role(s) ADDR:PORT played in it."""

    query: str
    at_ns: int | None
    side: str | None
    """Where ADDR:PORT was seen: "inside" when some found connection's leg on the inside capture has it (a pod, a
    ClusterIP, the bridge address), else "outside" (the node's public tuple, a NodePort, a remote end); None when
    no connection has it."""
    connections: tuple[dict[str, Any], ...]
    """natproof.correlate/2 connection objects, plus "conn" (its index), "roles" (ROLES labels, in that order),
    "ends" (``ends_of``), and "leg_first_seen"/"leg_last_seen": when ADDR:PORT was the connection's tuple for part
    of its life only (a flow mapped anew after idling: leg_spans), the first and last time it was (epoch seconds,
    the connections' clock as first_seen's: the first packet of the first leg that holds it to the last packet of
    the last, or for a leg from the kernel's record its entry's events); null when it held every leg at its point
    (first_seen/last_seen are its times) or a leg's time cannot be known (a listing's entry). "mapping": in that
    case the legs that hold ADDR:PORT (each {"observation_point", "tuple": {src, sport, dst, dport}, "first_frame"},
    first_frame null for a leg from the kernel's record), else null: the connection's own tuples ("outside",
    "translated", "ends", "evidence") stay its primary mapping's, the one that carried most of the initiator's
    packets."""
    nearest: tuple[dict[str, Any], ...] = ()
    """When none was live at the time: the closest connection before and after it."""
    clock: str = "inside"
    """The capture whose clock ``at`` was given on (the connections' own times are on the inside clock; with one
    capture and the kernel's record, the only capture's: "outside" for the uplink's); "node" for an answer from the
    kernel's record alone (who_kernel): the event listener's clock."""
    clock_offset_s: float = 0.0
    """Outside clock minus inside clock (Result.clock_offset_s): add it to an inside time to read it outside."""

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "at": None if self.at_ns is None else epoch_seconds(self.at_ns),
                "clock": self.clock,
                "clock_offset_s": self.clock_offset_s, "side": self.side,
                "connections": list(self.connections), "nearest": list(self.nearest)}


ROLES = (("orig", "src", "original source"), ("trans", "src", "translated source"),
         ("orig", "dst", "original destination"), ("trans", "dst", "translated destination"))
"""The four ends a connection has (docs/model.md): each tuple's source and destination. An original destination
that is the connection's Service address:port is labelled "original destination (ClusterIP)" or "(NodePort)";
a translated destination that is its backend, "translated destination (backend)"."""


def roles_of(row: dict[str, Any], addr: str, port: int) -> list[str]:
    """The roles ADDR:PORT played in one connection row (empty when it is none of its ends)."""
    roles = []
    for tup, end, label in ROLES:
        if (row[f"{tup}_{end}"], row[f"{tup}_{'sport' if end == 'src' else 'dport'}"]) != (addr, port):
            continue
        if end == "dst" and tup == "orig" and row["service_type"] and (row["service_ip"], row["service_port"]) == (
                addr, port):
            label += f" ({row['service_type']})"
        elif end == "dst" and tup == "trans" and (row["backend_ip"], row["backend_port"]) == (addr, port):
            label += " (backend)"
        roles.append(label)
    if not roles:  # a leg under another tuple: a flow mapped anew after idling (udp-remap, udp-idle-nodeport)
        far = "inside" if row.get("initiator") == "outside" else "outside"
        for leg in row.get("legs") or []:
            for end, p in (("src", "sport"), ("dst", "dport")):
                side = "translated" if leg["observation_point"] == far else "original"
                label = f"{side} {'source' if end == 'src' else 'destination'} (another mapping)"
                if (leg[end], leg[p]) == (addr, port) and label not in roles:
                    roles.append(label)
    return roles


def _holds(addr: str, port: int, legs: bool) -> pl.Expr:
    """Whether a connection row holds ADDR:PORT as an end of one of ROLES' tuples or of one of its ``legs``: every
    row roles_of names a role in, and few others."""
    ends = [(pl.col(f"{tup}_{end}") == addr) & (pl.col(f"{tup}_{'sport' if end == 'src' else 'dport'}") == port)
            for tup, end, _ in ROLES]
    if legs:
        leg = pl.element().struct
        ends.append(pl.col("legs").list.eval(((leg.field("src") == addr) & (leg.field("sport") == port))
                                             | ((leg.field("dst") == addr) & (leg.field("dport") == port)))
                    .list.any())
    return pl.any_horizontal(ends).fill_null(False)


def ends_of(row: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Who is who in a connection: ``pod`` (the pod that opened it, or for one started outside the pod it reached),
    ``node`` (the tuple the node's NAT put its own address in: the translated source of an egress connection, the
    NodePort an inbound one was addressed to; None when nothing was rewritten there) and ``peer`` (the far end: the
    destination as it was reached, or the remote client). Each is {"address", "port"} or None."""

    def end(tup: str, which: str) -> dict[str, Any] | None:
        address = row[f"{tup}_{which}"]
        port = row[f"{tup}_sport" if which == "src" else f"{tup}_dport"]
        return None if address is None else {"address": address, "port": port}

    rewrites = set(row["rewrites"] or [])
    if row["initiator"] == "outside":
        node_end = rewrites & {"dst", "dport"} or row["service_type"] == "NodePort"
        ends = {"pod": end("trans", "dst"), "node": end("orig", "dst") if node_end else None,
                "peer": end("orig", "src")}
    else:
        ends = {"pod": end("orig", "src"), "node": end("trans", "src") if rewrites & {"src", "sport"} else None,
                "peer": end("trans", "dst") if row["trans_src"] is not None else end("orig", "dst")}
    if "pod" in row:
        _name_ends(row, ends)
    return ends


REWRITTEN_SOURCE = "translated source"
"""The role (ROLES; "... (another mapping)" too) of an address:port the NAT put in a connection's source: someone
stood behind it (:func:`behind`) unless it is its "original source" as well (nothing was rewritten)."""


def behind(conn: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Who stood behind a connection's translated source, the address:port its NAT put in the initiator's source
    (the README's ``who`` table): ``("pod", end)`` for a connection started inside (``ends_of``'s pod: a pod's
    egress behind the node's public port, a hairpin's pod behind the bridge address), ``("client", end)`` for one
    started outside (``ends_of``'s peer: a NodePort client masqueraded to the node's bridge address,
    externalTrafficPolicy: Cluster, captures/nodeport). ``conn``: a connection with ``initiator`` and ``ends``
    (``Answer.connections``, natproof.fleet's matches). None when that end is unknown. Whether the asked
    address:port was the translated source is the caller's question (its roles: :data:`REWRITTEN_SOURCE`); fleet-who
    once named the pod a NodePort reached as the one behind the masqueraded client (a new user's trial)."""
    if conn["initiator"] == "outside":
        return None if conn["ends"]["peer"] is None else ("client", conn["ends"]["peer"])
    return None if conn["ends"]["pod"] is None else ("pod", conn["ends"]["pod"])


def _name_ends(row: dict[str, Any], ends: dict[str, dict[str, Any] | None]) -> None:
    """A named row's pod names on its ends: ``name`` (namespace/name or None) and ``name_candidates`` (every pod
    that may have held a reused address then, or None). The peer is named when it is the backend the DNAT chose
    or the inside tuple's other end."""
    other = row["inside_src"] if row["initiator"] == "outside" else row["inside_dst"]
    peer = ends["peer"]
    peer_from = None
    if peer is not None and row.get("backend_ip") is not None and peer["address"] == row["backend_ip"]:
        peer_from = "backend_pod"
    elif peer is not None and peer["address"] == other:
        peer_from = "peer_pod"
    for key, col in (("pod", "pod"), ("peer", peer_from)):
        e = ends[key]
        if e is not None:
            e["name"] = row.get(col) if col else None
            e["name_candidates"] = row.get(f"{col}_candidates") if col else None


def name_roles(row: dict[str, Any], name: str) -> list[str]:
    """The roles the pod or Service ``name`` (namespace/name, or a bare name in any namespace) played in a named
    connection row: "pod", "peer pod", "Service", "backend pod"; "(ambiguous)" when it is one of the candidates
    for a reused address there."""

    def same(value: str | None) -> bool:
        return value is not None and (value == name or ("/" not in name and value.partition("/")[2] == name))

    roles = []
    for col, label in (("pod", "pod"), ("peer_pod", "peer pod"), ("service_name", "Service"),
                       ("backend_pod", "backend pod")):
        if same(row.get(col)):
            roles.append(label)
        elif any(same(c) for c in row.get(f"{col}_candidates") or []):
            roles.append(f"{label} (ambiguous)")
    return roles


def is_name(text: str) -> bool:
    """Whether a ``who`` query is a pod or Service name (namespace/name, or a bare name) rather than ADDR:PORT:
    Kubernetes names never hold a colon, and ADDR:PORT always does."""
    return ":" not in text and not text.startswith("[") and text.strip() != "" and not _looks_address(text)


NAMES_FROM = Said("a result named from kubectl JSON dumps (correlate's names=natproof.Names.load(...), or "
                  "Names.name_result)", "--pods and --services (kubectl JSON dumps)")
"""What names a ``who`` query's pods and Services, as a library caller and the command line give it (check_query)."""


def check_query(text: str, named: bool, names_from: Said = NAMES_FROM) -> bool:
    """Whether a ``who`` query is a name (True) or ADDR:PORT (False); InputError when it is neither, a name of an
    empty part (``kube-system/``, ``/web``, ``a/b/c``: a name is namespace/name or a bare name), or a name with
    nothing to name by (``named``: kubectl dumps given, or a ptcpdump capture), saying that a name needs
    ``names_from``."""
    if not is_name(text):
        parse_endpoint(text)
        return False
    parts = text.split("/")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        problem = ("more than one /" if len(parts) > 2
                   else "no namespace before the / and no name after it" if not any(p.strip() for p in parts)
                   else "no namespace before the /" if not parts[0].strip() else "no name after the /")
        raise InputError(f"{text!r} is not a pod or Service name ({problem}; give namespace/name, e.g. "
                         "kube-system/kube-dns, or a bare name, in any namespace) nor ADDR:PORT")
    if named:
        return True
    try:
        parse_endpoint(text)
    except InputError as exc:
        raise InputError(f"{exc}; a pod or Service name needs ", names_from) from None
    return False  # pragma: no cover - a name is never ADDR:PORT


def _looks_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


def parse_endpoint(text: str, where: str | None = None) -> tuple[str, int]:
    """ADDR:PORT or [V6]:PORT into (address, port); ``where`` (an option's name) starts the error message."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host.removeprefix("[").removesuffix("]")
    if not text.strip():
        problem = "nothing given"
    elif not sep:
        problem = "no port" if _is_address(text) else f"{text!r} is not an IP address, and there is no port"
    elif not host:
        problem = "no address"
    elif ":" in host and not bracketed:  # 2001:db8::1:443 is itself an address: which part is the port?
        problem = ("no port (an IPv6 address with a port goes in brackets)" if _is_address(text)
                   else "an IPv6 address with a port goes in brackets")
    elif not (port.isascii() and port.isdigit()):
        problem = f"port {port!r} is not a number"
    elif int(port) > 65535:
        problem = f"port {port} is out of range 0-65535"
    else:
        try:
            return str(ipaddress.ip_address(host)), int(port)
        except ValueError:
            problem = f"{host!r} is not an IP address"
    prefix = f"{where}: " if where else ""
    raise InputError(f"{prefix}{text!r} is not ADDR:PORT ({problem}; e.g. 203.0.113.5:38472 or [2001:db8::1]:443)")


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


_TIME_OF_DAY = re.compile(r"^(\d{1,2}:\d{2}(:\d{2}([.,]\d+)?)?)([zZ]|[+-]\d{2}(:?\d{2})?)?$")
"""HH:MM, HH:MM:SS or HH:MM:SS.ffffff, then an optional zone (Z, +02:00, +0200, +02): the time part of ISO-8601
alone."""

_FRACTION = re.compile(r"(?<=:\d\d)[.,](\d+)")
"""The fraction of a second after HH:MM:SS (ISO-8601 allows a comma)."""

_EPOCH = re.compile(r"^\d+(\.\d*)?$")

NS_DIGITS = 9
"""A capture's clock holds nanoseconds (pcapng's finest resolution): a TIME's fraction is read to its ninth digit,
exactly, and one of more digits is refused rather than cut."""

TIME_FORMS = ("epoch seconds, ISO-8601 such as 2026-11-24T14:02:10Z, or a time of day HH:MM[:SS[.ffffff]] on the "
              "captures' day; UTC unless a zone is given (Z, +02:00)")
"""The forms of TIME parse_time takes, as the errors and the options' help say them."""


def parse_time(text: str, day_of_ns: int | None = None) -> int:
    """Epoch seconds, ISO-8601 (no zone means UTC), or a time of day (the time part of ISO-8601: HH:MM, HH:MM:SS or
    HH:MM:SS.ffffff, UTC unless it ends in a zone) on the day of ``day_of_ns``; InputError names ``text`` as who's
    ``at`` (``--at``)."""
    at = setting("at", text, quoted=False)
    t = text.strip()
    fraction = _FRACTION.search(t) if not _EPOCH.match(t) else None
    digits = (t.partition(".")[2] if _EPOCH.match(t) else fraction.group(1) if fraction else "")
    if len(digits) > NS_DIGITS:
        raise InputError(at, f": {len(digits)} digits after the second's point; a capture's clock holds nanoseconds "
                             f"(at most {NS_DIGITS})")
    if _EPOCH.match(t):  # exactly, to the nanosecond (a float's 53 bits hold ~0.2 us of today's epoch seconds)
        whole, _, frac = t.partition(".")
        ns = int(whole) * 10**9 + int(frac.ljust(NS_DIGITS, "0") or 0)
        if ns >= 9_200_000_000 * 10**9:
            raise InputError(at, ": not a time a capture can hold (epoch seconds between 0 and 9.2e9)")
        return ns
    try:
        seconds = float(t)
    except ValueError:
        pass
    else:
        # A time a capture can hold: after 1970 and before 2262 (int64 nanoseconds), not NaN.
        if not 0 <= seconds < 9.2e9:
            raise InputError(at, ": not a time a capture can hold (epoch seconds between 0 and 9.2e9)")
        return int(round(seconds * 1e9))
    sub_us = 0
    if fraction is not None:  # fromisoformat keeps microseconds and drops the rest: the rest is added back
        sub_us = int(fraction.group(1).ljust(NS_DIGITS, "0")) % 1000
    if _TIME_OF_DAY.match(t):
        if day_of_ns is None:
            raise InputError(at, ": a time of day needs a capture to give the date")
        day = dt.datetime.fromtimestamp(day_of_ns / 1e9, dt.UTC).date()
        t = f"{day.isoformat()}T{t.zfill(len(t) + 1) if t.index(':') == 1 else t}"  # 6:06 is 06:06
    if t[-1:] in ("z", "Z"):
        t = t[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        raise InputError(at, f": not a time (use {TIME_FORMS})") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000 + sub_us


def who(result: Result, endpoint: str, at: str | None = None, window_s: float = 1.0,
        clock: str | None = None) -> Answer:
    """Find the connections ADDR:PORT took part in, as the original or translated tuple's source or destination:
    which pod was behind a public source port, where a pod's source port went, which pod a NodePort reached,
    which backend a ClusterIP chose. In a named result (natproof.names), ``endpoint`` may instead be a pod or
    Service name (namespace/name, or a bare name in any namespace): the connections it opened, reached or served.

    With ``at``, keep those live within ``window_s`` of that time (a connection is live from its first to its
    last packet; an ADDR:PORT that was the connection's tuple for part of its life only, a flow mapped anew after
    idling, counts within its own leg's life: leg_spans); if none is, ``nearest`` holds the closest one on each
    side of it. ``clock`` says which capture's clock ``at`` is on (None: the inside one): "outside" for times from
    a far end's logs or an abuse report (the node's uplink is the clock they share), converted with the estimated
    clock offset. A result of ONE capture and the kernel's record (natproof.correlate.correlate_one) has one
    clock, that capture's: ``at`` is read on it, and a time of day takes its date, whatever ``clock`` names
    (the answer's ``clock`` is the captured side; one_clock says it).
    """
    if clock not in (None, "inside", "outside"):
        raise InputError(setting("clock", clock, quoted=False), ": inside or outside")
    only = one_clock(result)
    clock = only or clock or "inside"
    offset_ns = 0 if only else int(round(result.clock_offset_s * 1e9))
    day = (result.inside if clock == "inside" else result.outside).first_ts_ns or None
    return _answer(result.connections, endpoint, at, window_s, clock, offset_ns, day, named=result.names is not None,
                   names=result.named_by, leg_span=_leg_span_of(result, result.conntrack, offset_ns))


def one_clock(result: Result) -> str | None:
    """The side of the only capture of a result made of one capture and the kernel's record (the other side's
    summary has format "none": natproof.correlate.correlate_one), whose clock every time of the answer is on (the
    record's, the node's, taken as the same clock: correlate_one's clock_offset_s is 0.0); None with two points."""
    captured = [side for side in ("inside", "outside") if getattr(result, side).format != "none"]
    return captured[0] if len(captured) == 1 else None


def who_kernel(record: ConntrackRecord, endpoint: str, at: str | None = None, window_s: float = 1.0, *,
               pod_networks: Sequence[Network] = (), services: Services | None = None,
               names: Names | None = None) -> Answer:
    """``who`` from the kernel's conntrack record alone, with no capture (natproof.kernel.kernel_connections): the
    entries whose original or reply tuple has ADDR:PORT, live at ``at`` (from the first event of the entry to its
    DESTROY, else its last event; the stamps are the event listener's clock, the node's). Entries of a listing
    carry no time: with ``at`` they are left out. Times are on the node's clock (``clock`` "node"). With ``names``
    (natproof.names.load_names: kubectl dumps), the entries are named as a result's connections are, and
    ``endpoint`` may be a pod's or Service's name."""
    conns = kernel_connections(record, pod_networks=pod_networks, services=services)
    if names is not None:
        conns = names.name_connections(conns)[0]
    if at is not None:
        conns = conns.filter(pl.col("first_ts_ns").is_not_null())
    return _answer(conns, endpoint, at, window_s, "node", 0, record.first_ts_ns, named=names is not None,
                   names=names, leg_span=_leg_span_of(None, record, 0))


LegSpan = Callable[[dict[str, Any], dict[str, Any]], tuple[int, int] | None]
"""(connection row, one of its legs) -> the leg's first and last time in ns on the connections' clock, or None
when it cannot be known."""


def _answer(connections: pl.DataFrame, endpoint: str, at: str | None, window_s: float, clock: str, offset_ns: int,
            day: int | None, *, named: bool = False, names: Names | None = None,
            leg_span: LegSpan | None = None) -> Answer:
    """The connections of ``connections`` (CONNECTION_SCHEMA) ADDR:PORT (or, ``named``, a pod's or Service's name)
    took part in, at ``at`` on ``clock``'s capture (``offset_ns``: outside minus inside clock, applied for
    "outside"). A name ``names`` (what named the connections) does not hold is an InputError (Names.check_name):
    it can match nothing, which is not the same as a pod with no connection."""
    by_name = check_query(endpoint, named)
    if by_name and names is not None:
        names.check_name(endpoint)
    addr, port = ("", 0) if by_name else parse_endpoint(endpoint)
    at_ns = None if at is None else parse_time(at, day) - (offset_ns if clock == "outside" else 0)
    if not by_name:  # only the rows that hold ADDR:PORT somewhere become Python objects (100k rows: 1.5 s)
        connections = connections.filter(_holds(addr, port, "legs" in connections.columns))
    rows = []
    for row in connections.iter_rows(named=True):
        roles = name_roles(row, endpoint) if by_name else roles_of(row, addr, port)
        if roles:
            rows.append(row | {"roles": roles})
    seen_at = {leg["observation_point"] for r in rows for leg in (r["legs"] or [])
               if (leg["src"], leg["sport"]) == (addr, port) or (leg["dst"], leg["dport"]) == (addr, port)}
    if not seen_at:  # no capture (the kernel's record alone): the side whose tuple holds it
        seen_at = {side for r in rows for side in ("inside", "outside")
                   if (addr, port) in ((r[f"{side}_src"], r[f"{side}_sport"]), (r[f"{side}_dst"], r[f"{side}_dport"]))}
    side = "inside" if "inside" in seen_at else "outside" if "outside" in seen_at else None
    if by_name:
        side = "inside" if rows else None  # pods live on the inside; a Service's address is reached from there
    nearest: list[dict[str, Any]] = []
    # Where ADDR:PORT was the connection's tuple for part of its life only, the legs that hold it say when.
    legs = {id(r): leg_spans(r, addr, port, leg_span) if not by_name and leg_span else None for r in rows}
    for r in rows:
        held = legs[id(r)]
        r["_leg_span"] = (min(a for a, _ in held), max(b for _, b in held)) if held else None
        r["_mapping"] = [leg for leg in r["legs"] or [] if _on(leg, addr, port)] if held else None
    if at_ns is not None:
        w = int(window_s * 1e9)
        spans = {id(r): legs[id(r)] or [(r["first_ts_ns"], r["last_ts_ns"])] for r in rows}
        live = [r for r in rows if any(a - w <= at_ns <= b + w for a, b in spans[id(r)])]
        if not live:
            last = {id(r): max(b for _, b in spans[id(r)]) for r in rows}
            first = {id(r): min(a for a, _ in spans[id(r)]) for r in rows}
            before = [r for r in rows if last[id(r)] < at_ns]
            after = [r for r in rows if first[id(r)] > at_ns]
            if before:
                nearest.append(max(before, key=lambda r: last[id(r)]))
            if after:
                nearest.append(min(after, key=lambda r: first[id(r)]))
        rows = live
    shown_at = None if at_ns is None else at_ns + (offset_ns if clock == "outside" else 0)
    return Answer(query=endpoint if by_name else format_address(addr, port), at_ns=shown_at, side=side, clock=clock,
                  clock_offset_s=round(offset_ns / 1e9, 9),
                  connections=tuple(_with_index(r) for r in rows), nearest=tuple(_with_index(r) for r in nearest))


def _on(leg: dict[str, Any], addr: str, port: int) -> bool:
    return (leg["src"], leg["sport"]) == (addr, port) or (leg["dst"], leg["dport"]) == (addr, port)


def leg_spans(row: dict[str, Any], addr: str, port: int, leg_span: LegSpan) -> list[tuple[int, int]] | None:
    """When ADDR:PORT was a connection's tuple for part of its life only (a flow mapped anew after idling: another
    leg at the same observation point has another tuple; roles "... (another mapping)", or the last mapping that
    is the connection's own translated tuple), the (first, last) ns of each leg that holds it: the port was used
    only then. None when it held every leg at its point (the connection's span is its own), or when a leg's span
    cannot be known (``leg_span`` None: a listing's entry, which has no time): the connection's span is kept."""
    legs = row.get("legs") or []
    held = [leg for leg in legs if _on(leg, addr, port)]
    points = {leg["observation_point"] for leg in held}
    if not held or all(_on(leg, addr, port) for leg in legs if leg["observation_point"] in points):
        return None
    spans = [leg_span(row, leg) for leg in held]
    return None if any(s is None for s in spans) else spans  # type: ignore[return-value]


def _leg_span_of(result: Result | None, record: ConntrackRecord | None, offset_ns: int) -> LegSpan:
    """A leg's span: a captured leg's (``first_frame`` set) from its packets in ``result`` (the leg is the conn_id
    of that frame in its point's packet table; outside times moved by ``offset_ns`` onto the inside clock); a leg
    from the kernel's record (``first_frame`` null) from ``record``'s entry of that tuple (natproof.kernel.
    kernel_flows: its first event to its DESTROY, else its last event; the node's clock) whose life meets the
    connection's; None when neither tells it (a listing's entry carries no time)."""
    flows: list[pl.DataFrame] = []

    def span(row: dict[str, Any], leg: dict[str, Any]) -> tuple[int, int] | None:
        point = leg["observation_point"]
        if leg["first_frame"] is not None:
            if result is None or point not in ("inside", "outside"):
                return None
            pk = result.packets(point)
            ids = pk.filter(pl.col("frame_no") == leg["first_frame"]).select("conn_id").collect()["conn_id"]
            if ids.is_empty() or ids[0] is None:
                return None
            got = (pk.filter(pl.col("conn_id") == ids[0])
                   .select(pl.col("ts_ns").min().alias("a"), pl.col("ts_ns").max().alias("b")).collect().row(0))
            if got[0] is None:
                return None
            shift = offset_ns if point == "outside" else 0
            return got[0] - shift, got[1] - shift
        if record is None:
            return None
        if not flows:
            flows.append(kernel_flows(record.entries))
        tup = (leg["src"], leg["sport"], leg["dst"], leg["dport"])
        f = flows[0].filter(pl.col("proto") == row["proto"], pl.col("start_ts_ns").is_not_null()).filter(
            pl.all_horizontal([pl.col(f"orig_{k}") == v for k, v in zip(("src", "sport", "dst", "dport"), tup,
                                                                        strict=True)])
            | pl.all_horizontal([pl.col(f"reply_{k}") == v for k, v in zip(("dst", "dport", "src", "sport"), tup,
                                                                         strict=True)]))
        ends = f.select("start_ts_ns", pl.coalesce("end_ts_ns", "last_ts_ns")).rows()
        first, last = row["first_ts_ns"], row["last_ts_ns"]
        meets = [(a, b) for a, b in ends if first is None or (a <= last + 10**9 and b >= first - 10**9)]
        return (min(a for a, _ in meets), max(b for _, b in meets)) if meets else None

    return span


def _with_index(row: dict[str, Any]) -> dict[str, Any]:
    leg = row.get("_leg_span")
    return {"conn": row["conn"]} | connection_dict(row) | {
        "roles": row["roles"], "ends": ends_of(row),
        "leg_first_seen": None if leg is None else epoch_seconds(leg[0]),
        "leg_last_seen": None if leg is None else epoch_seconds(leg[1]),
        "mapping": None if row.get("_mapping") is None else [
            {"observation_point": m["observation_point"],
             "tuple": {k: m[k] for k in ("src", "sport", "dst", "dport")}, "first_frame": m["first_frame"]}
            for m in row["_mapping"]]}
