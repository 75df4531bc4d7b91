"""NATs in a chain: captures at several observation points along a path (pod veth, node eth0, a NAT gateway's or
router's public side), each adjacent pair correlated on its own, connections followed through every hop.

A hop is natproof.correlate on two adjacent captures, with its own clock offset and its own verdicts. A
connection crosses from hop i to hop i+1 through the capture they share: hop i's outside leg and hop i+1's inside
leg are the same packets of that capture, told by the leg's first frame (a frame belongs to one leg; both hops
group the capture alike). Rows start at the first observation point that saw the connection: one that a
later point shows but no earlier one (another node's traffic through a shared gateway) starts there.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from natproof.errors import CapturesApart, InputError, Said
from natproof.result import TUPLE_FIELDS, Result
from natproof.verdicts import Verdict

SCHEMA = "natproof.chain/1"
CROSSED = frozenset({Verdict.TRANSLATED.value, Verdict.UNTRANSLATED.value, Verdict.INTERNAL.value})
"""Hop verdicts of a connection that crossed that hop both ways as it should."""


@dataclass
class Chain:
    """Connections followed through every hop of a chain of captures."""

    captures: tuple[str, ...]
    """The captures, from the pod outwards (observation point i is captures[i])."""
    hops: tuple[Result, ...]
    """hops[i]: natproof.correlate(captures[i], captures[i+1])."""
    connections: list[dict[str, Any]] = field(repr=False)
    """One per connection, as the contract's JSON object (see :meth:`to_dict`), in order of first packet at the
    first observation point that saw it."""

    def by_verdict(self) -> dict[str, int]:
        return dict(Counter(c["verdict"] for c in self.connections))

    def summary(self) -> dict[str, Any]:
        """{"connections", "by_verdict", "reached_last", "lost", "unsettled_at_last"}, counted from the rows so that
        it never says more than they do: ``reached_last`` the connections whose tuple at the last point is known
        (``translated`` not null), ``lost`` those with ``lost_at``, ``unsettled_at_last`` the numbers (``conn``) of
        those that reached the last capture but whose tuple at a flow log's NAT gateway past it the records do not
        settle (several candidates, or none: ``evidence_level`` says). The rest stopped where a hop called them
        internal (pod to pod on a node)."""
        return {"connections": len(self.connections), "by_verdict": self.by_verdict(),
                "reached_last": sum(c["translated"] is not None for c in self.connections),
                "lost": sum(c["lost_at"] is not None for c in self.connections),
                "unsettled_at_last": [c["conn"] for c in self.connections if _unsettled(c)]}

    def to_dict(self) -> dict[str, Any]:
        """The ``natproof.chain/1`` document: {"schema", "captures", "hops": [{"inside", "outside",
        "clock_offset_s", "connections", "by_verdict"}], "connections": [...], "summary"}. Each connection:
        {"conn", "proto", "initiator", "first_point", "hops": [{"observation_point", "capture", "tuple",
        "rewrites", "verdict", "hop_conn"}], "inside", "outside", "original", "translated", "rewrites", "nat",
        "verdict", "lost_at", "evidence_level"}: ``hops`` lists the connection's tuple at each observation point
        it reached (``rewrites``: what the hop before that point changed; ``verdict``: the verdict of the hop
        that leaves it, null at the last point), ``inside``/``outside`` the tuple at the first and last point it
        reached, ``lost_at`` the hop where it stopped ({"hop", "from", "to"}) or null when it reached the last
        capture, ``evidence_level`` what ``translated`` rests on ("packets"; past a flow log's NAT gateway its
        evidence: "flow log, unique candidate", "flow log, ambiguous: N candidates", "no candidate"). A flow
        log's point has capture "flow log", ``evidence``, ``candidates`` (the gateway tuples the records allow)
        and ``why``."""
        return {
            "schema": SCHEMA,
            "captures": list(self.captures),
            "hops": [{"hop": i, "inside": h.inside.path, "outside": h.outside.path,
                      "clock_offset_s": h.clock_offset_s, "connections": h.connections.height,
                      "by_verdict": {v: n for v, n in h.by_verdict().items() if n}}
                     for i, h in enumerate(self.hops)],
            "connections": self.connections,
            "summary": self.summary(),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"


def correlate_chain(captures: Sequence[str | os.PathLike[str]], *, correlate: Callable[..., Result] | None = None,
                    flow_log: Any = None, nat_gateways: Sequence[Any] = (), **options: Any) -> Chain:
    """Correlate each adjacent pair of ``captures`` (ordered from the pod outwards; at least three, or two with a
    flow log: two alone are natproof.correlate) and follow every connection through the chain. ``options`` go to
    each hop's natproof.correlate (pod_cidr, tolerance_s, services, decoder ...; clock offsets are estimated per
    hop).

    ``flow_log`` (natproof.flowlogs.FlowLog, with ``nat_gateways``: natproof.flowlogs.NatGateway; inferred from
    the records when empty) adds the NAT gateway past the last capture as one more observation point: each
    connection that reached the last capture is joined to the gateway's public side by
    natproof.flowlogs.join_nat_gateway (on the last capture's clock), with its evidence level; a unique
    candidate gives the point's tuple, an ambiguous one lists the candidates and leaves ``translated`` null.
    Raises what natproof.correlate raises for a hop, with the hop named; InputError for too few captures, a
    capture given twice, a file of several interfaces, or a flow log with no gateway given or found
    (natproof.flowlogs.gateway.require_gateways): these before any hop runs."""
    paths = [os.fspath(c) for c in captures]
    if len(paths) < (2 if flow_log is not None else 3):
        raise InputError(f"a chain needs at least three captures (or two and a flow log), got {len(paths)}")
    if len(set(paths)) != len(paths):
        twice = next(p for p in paths if paths.count(p) > 1)
        raise InputError(f"{twice}: given twice in the chain (each observation point is one capture)")
    if flow_log is not None:
        # The flow log's point needs a gateway to join on: given, or found in the records (pkt-dstaddr). Without
        # one the chain would be refused once every hop had run; it is refused before any.
        from natproof.flowlogs import infer_gateways
        from natproof.flowlogs.gateway import require_gateways

        nat_gateways = list(nat_gateways) or infer_gateways(flow_log)
        require_gateways(nat_gateways)
    if correlate is None:
        from natproof.correlate import correlate
    # Hops meet in the capture they share through its legs' frames: a file split into interfaces would be split
    # differently as one hop's outside and the next one's inside. Every file is checked before any hop runs: a hop
    # with such a file fails first on what its mix of interfaces looks like (one capture copied, two swapped).
    for path in paths:
        if _several_interfaces(path):
            raise InputError(f"{path}: {SEVERAL_INTERFACES}")
    hops = []
    for i in range(len(paths) - 1):
        try:
            hop = correlate(paths[i], paths[i + 1], **options)
        except InputError as exc:
            hint = " (a chain estimates each hop's clock offset: check that its captures overlap in time)" \
                if isinstance(exc, CapturesApart) else ""
            raise exc.reworded(f"hop {i} ({paths[i]} -> {paths[i + 1]}): ", hint) from None
        for cap in (hop.inside, hop.outside):  # one the framing above could not read (Unsupported)
            if cap.chosen in ("given", "chosen"):
                raise InputError(f"{cap.path}: {SEVERAL_INTERFACES}")
        hops.append(hop)
    connections = _follow(paths, hops)
    if flow_log is not None:
        _through_gateway(connections, hops, flow_log, nat_gateways, paths)
    return Chain(tuple(paths), tuple(hops), connections)


FLOW_LOG = Said("flow_log", "--flow-log")

SEVERAL_INTERFACES = ("a capture of several interfaces; a chain takes one interface per file (split it first, or "
                      "correlate it alone: natproof correlate FILE)")


def _several_interfaces(path: str) -> bool:
    """Whether a chain's file has frames on more than one interface (natproof.fastdecode.interfaces_used); not
    for what it cannot frame (no such file, not a capture, standard input): the hop that reads it says what is
    wrong. A pcap whose header's link type is not LINUX_SLL2 is told by the header alone (fastdecode.pcap_link_type):
    its frames are all on its one interface, and a gzip one is decompressed only by the hops that read it."""
    from natproof.capture import LINKTYPE_NAMES
    from natproof.errors import NatproofError
    from natproof.fastdecode import Unsupported, interfaces_used, pcap_link_type

    if path == "-":
        return False
    link = pcap_link_type(path)
    if link is not None and LINKTYPE_NAMES.get(link) != "LINUX_SLL2":
        return False
    try:
        return len(interfaces_used(path)) > 1
    except (NatproofError, Unsupported):
        return False


def _through_gateway(connections: list[dict[str, Any]], hops: Sequence[Result], flow_log: Any,
                     nat_gateways: Sequence[Any], paths: Sequence[str]) -> None:
    """Add the NAT gateway's public side (observation point ``len(paths)``) to each connection that reached the last
    capture, from the flow log (see correlate_chain; ``nat_gateways`` given or inferred, not empty); sets
    ``evidence_level`` on every connection. InputError when
    the last capture is already past the gateway (its connections leave from the gateway's public address): the
    flow log's point would be the same place again, and no record joins it."""
    from natproof.flowlogs import join_nat_gateway, node_tuples

    gateways = list(nat_gateways)
    point = len(paths)
    # First-capture seconds -> the last capture's clock: each hop's offset is its outside minus its inside.
    shift = sum(h.clock_offset_s for h in hops)
    reached = [c for c in connections if c["lost_at"] is None]
    if not reached:
        return
    publics = {g.public for g in gateways}
    past = sorted({c["translated"]["src"] for c in reached} & publics)
    if past:
        raise InputError(f"{paths[-1]}: already past the NAT gateway (its connections leave from {past[0]}, the "
                         "gateway's public address): the ", FLOW_LOG, " adds nothing after it; give the chain "
                         "without it, or without this capture")
    rows = []
    for c in reached:
        t = c["translated"]
        first = None if c["first_seen"] is None else round((c["first_seen"] + shift) * 1e9)
        last = None if c["last_seen"] is None else round((c["last_seen"] + shift) * 1e9)
        rows.append({"proto": c["proto"], "src": t["src"], "sport": t["sport"], "dst": t["dst"], "dport": t["dport"],
                     "first_ts_ns": first, "last_ts_ns": last, "source": f"chain connection #{c['conn']}"})
    joined = join_nat_gateway(node_tuples(rows), flow_log, gateways).to_dicts()
    for c, j in zip(reached, joined, strict=True):
        before = c["translated"]
        candidates = [{"src": g["gateway_public"] or g["gateway_private"], "sport": g["sport"],
                       "dst": before["dst"], "dport": before["dport"]} for g in j["gateway_tuples"] or []]
        unique = candidates[0] if len(candidates) == 1 else None
        c["hops"][-1]["verdict"] = None
        c["hops"].append({"observation_point": point, "capture": "flow log", "tuple": unique,
                          "rewrites": _diff(before, unique), "verdict": None, "hop_conn": None,
                          "evidence": j["evidence"], "candidates": candidates, "why": j["why"]})
        c["evidence_level"] = j["evidence"]
        if unique is not None:
            c["outside"] = c["translated"] = unique
            c["rewrites"] = _diff(c["inside"], unique)
            c["nat"] = [k for k, keys in (("SNAT", ("src", "sport")), ("DNAT", ("dst", "dport")))
                        if any(r in keys for r in c["rewrites"])]
        else:
            c["translated"] = None  # the flow log cannot say which (or any) gateway tuple it was


def _unsettled(c: dict[str, Any]) -> bool:
    """Whether a connection reached the last capture and a flow log's NAT gateway past it holds no one tuple for
    it (``translated`` null: the records allow several, or none)."""
    last = c["hops"][-1]
    return c["lost_at"] is None and last.get("evidence") is not None and last["tuple"] is None


def _legs_at(conns: pl.DataFrame, point: str) -> pl.DataFrame:
    """Per connection (``conn``): the first frame of its leg at ``point`` (inside or outside) under the tuple the
    connection gives for that point (its anchor leg inside, its primary leg outside)."""
    tup = [f"{point}_{f}" for f in TUPLE_FIELDS]
    legs = (conns.select("conn", *tup, "legs").explode("legs").unnest("legs")
            .filter((pl.col("observation_point") == point)
                    & pl.all_horizontal([pl.col(f) == pl.col(t) for f, t in zip(TUPLE_FIELDS, tup, strict=True)])))
    return legs.group_by("conn").agg(pl.col("first_frame").min().alias("frame"))


def _follow(paths: Sequence[str], hops: Sequence[Result]) -> list[dict[str, Any]]:
    """The chained connections (Chain.connections)."""
    # Each hop's connections as its JSON objects, with ``conn`` (the row of hop.connections).
    docs = [[{**c, "conn": j} for j, c in enumerate(h.to_dict()["connections"])] for h in hops]
    # Hop i's connection -> hop i+1's connection, through the frame their shared leg starts with.
    nxt: list[dict[int, int]] = []
    for i in range(len(hops) - 1):
        out = _legs_at(hops[i].connections, "outside")
        inn = _legs_at(hops[i + 1].connections, "inside").rename({"conn": "next"})
        pairs = out.join(inn, on="frame", how="inner")
        nxt.append(dict(zip(pairs["conn"].to_list(), pairs["next"].to_list(), strict=True)))
    reached = [set(m.values()) for m in nxt]
    rows: list[tuple[int, int, list[dict[str, Any]]]] = []  # (first point, hop-0-based start order, chain)
    for start, doc in enumerate(docs):
        for c in doc:
            if start and c["conn"] in reached[start - 1]:
                continue  # followed from an earlier hop
            chain = [c]
            hop = start
            while hop < len(nxt) and chain[-1]["conn"] in nxt[hop]:
                chain.append(docs[hop + 1][nxt[hop][chain[-1]["conn"]]])
                hop += 1
            rows.append((start, c["first_seen"] or 0.0, chain))
    rows.sort(key=lambda r: (r[1], r[0]))
    return [_connection(n, start, chain, paths, len(hops)) for n, (start, _, chain) in enumerate(rows)]


def _connection(n: int, start: int, chain: list[dict[str, Any]], paths: Sequence[str],
                n_hops: int) -> dict[str, Any]:
    """One chained connection: the hop connections ``chain`` (hop ``start`` onwards) as the contract's object."""
    first = chain[0]
    points = [{"observation_point": start, "capture": paths[start], "tuple": first["inside"], "rewrites": [],
               "verdict": first["verdict"], "hop_conn": first["conn"]}]
    last_hop = start + len(chain) - 1
    for k, c in enumerate(chain):
        if c["outside"] is None:
            break
        after = chain[k + 1] if k + 1 < len(chain) else None
        points.append({"observation_point": start + k + 1, "capture": paths[start + k + 1], "tuple": c["outside"],
                       "rewrites": _diff(c["inside"], c["outside"]),
                       "verdict": after["verdict"] if after else None,
                       "hop_conn": after["conn"] if after else None})
    reached_last = points[-1]["observation_point"] == n_hops
    lost_at = None
    # A connection a hop calls internal (pod to pod on the node) was never meant to cross it: not lost.
    stays = chain[-1]["outside"] is None and chain[-1]["verdict"] == Verdict.INTERNAL.value
    if not reached_last and not stays:
        hop = last_hop if chain[-1]["outside"] is None else last_hop + 1
        lost_at = {"hop": hop, "from": paths[hop], "to": paths[hop + 1]}
    original = first["original"] or first["inside"]
    final = points[-1]["tuple"]
    rewrites = _diff(first["inside"], final) if len(points) > 1 else []
    verdicts = [c["verdict"] for c in chain]
    if lost_at is not None:
        verdict = chain[lost_at["hop"] - start]["verdict"] if lost_at["hop"] - start < len(chain) else \
            Verdict.NOT_CAPTURED.value
    else:
        failing = [v for v in reversed(verdicts) if v not in CROSSED]
        if failing:
            verdict = failing[0]
        elif all(v == Verdict.INTERNAL.value for v in verdicts):
            verdict = Verdict.INTERNAL.value
        else:
            verdict = Verdict.TRANSLATED.value if rewrites else Verdict.UNTRANSLATED.value
    return {
        "conn": n,
        "proto": first["proto"],
        "initiator": first["initiator"],
        "first_point": start,
        "first_seen": first["first_seen"],
        "last_seen": max((c["last_seen"] for c in chain if c["last_seen"] is not None), default=None),
        "hops": points,
        "inside": first["inside"],
        "outside": final if len(points) > 1 else None,
        "original": original,
        "translated": final if reached_last else None,
        "rewrites": rewrites,
        "nat": [k for k, keys in (("SNAT", ("src", "sport")), ("DNAT", ("dst", "dport")))
                if any(r in keys for r in rewrites)],
        "verdict": verdict,
        "lost_at": lost_at,
        "evidence_level": "packets" if reached_last else None,
    }


def _diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    if a is None or b is None:
        return []
    return [f for f in TUPLE_FIELDS if a[f] != b[f]]


def _holds(c: dict[str, Any], address: str, port: int) -> bool:
    """Whether ``address``:``port`` is an end of a chained connection's tuple at any point it was seen at (a flow
    log's gateway point of several candidates has no tuple, and holds none)."""
    end = (address, port)
    return any(t is not None and end in ((t["src"], t["sport"]), (t["dst"], t["dport"]))
               for t in (h["tuple"] for h in c["hops"]))


def who_chain(chain: Chain, address: str, port: int, *, at_ns: int | None = None,
              window_s: float = 1.0) -> list[dict[str, Any]]:
    """The chained connections in which ``address``:``port`` is an end of the tuple at any observation point (a NAT
    gateway's or node's public source port, a pod's source, a destination), active within ``window_s`` seconds of
    ``at_ns`` (Unix ns on the first capture's clock; None: any time). Each answer is a Chain.connections object:
    its first point's source is who was behind it (the pod, when the chain starts at the pod's veth). When none
    is active then, nearest_chain gives the closest ones."""
    found = []
    for c in chain.connections:
        if not _holds(c, address, port):
            continue
        if at_ns is not None:
            at, w = at_ns / 1e9, window_s
            first, last = c["first_seen"], c["last_seen"] if c["last_seen"] is not None else c["first_seen"]
            if first is None or not first - w <= at <= last + w:
                continue
        found.append(c)
    return found


def nearest_chain(chain: Chain, address: str, port: int, at_ns: int) -> list[dict[str, Any]]:
    """The chained connections with ``address``:``port`` at some point that are nearest in time to ``at_ns`` (Unix
    ns, first capture's clock): the one that ended last before it and the one that began first after it (as
    natproof.lookup.who gives ``nearest``); empty when no connection holds that end at all."""
    at = at_ns / 1e9
    held = [c for c in chain.connections if _holds(c, address, port) and c["first_seen"] is not None]
    before = [c for c in held if (c["last_seen"] if c["last_seen"] is not None else c["first_seen"]) < at]
    after = [c for c in held if c["first_seen"] > at]
    out = []
    if before:
        out.append(max(before, key=lambda c: c["last_seen"] if c["last_seen"] is not None else c["first_seen"]))
    if after:
        out.append(min(after, key=lambda c: c["first_seen"]))
    return out
