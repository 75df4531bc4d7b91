"""The abuse-report walk: from a NAT gateway's public address, port and time to the node, and on to the pod.

Each link of the chain says what proves it (docs/model.md): the gateway's public address to its private one is
the internet gateway's one-to-one mapping (``--nat-gateway``); the gateway's port to a node's tuple is the flow log
join (natproof.flowlogs.gateway: "flow log, unique candidate" or "ambiguous: N candidates"); the node's tuple to the
pod is a correlation of the node's captures ("packets"). A link that nothing given can prove is listed as missing,
with the evidence that would close it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from natproof.contracts import epoch_seconds
from natproof.flowlogs.gateway import (
    EVIDENCE_KERNEL,
    EVIDENCE_PACKETS,
    LAG_S,
    TOLERANCE_S,
    NatGateway,
    conntrack_record,
    trace_public,
    undated_uses,
)
from natproof.flowlogs.records import FlowLog
from natproof.report.table import format_address


@dataclass(frozen=True)
class Hop:
    """A connection's tuple at one observation point, and what ties it to the hop before it."""

    observation_point: str
    """Where it is seen: ``far end`` (the report), ``NAT gateway public side``, ``NAT gateway private side``,
    ``node eth0``, ``pod side``; with the file or interface it was read from in ``source``."""
    tuple: dict[str, Any]
    """{"proto", "src", "sport", "dst", "dport"} in the initiator's direction."""
    evidence: str | None
    """How it is tied to the previous hop: "--nat-gateway" (the given mapping), a flow log level, "packets";
    None for the first hop (the question itself)."""
    source: str = ""
    """The records or capture frames behind it (file:line, capture and connection)."""

    def to_dict(self) -> dict[str, Any]:
        return {"observation_point": self.observation_point, "tuple": self.tuple, "evidence": self.evidence,
                "source": self.source}


@dataclass(frozen=True)
class Missing:
    """A link of the chain nothing given proves."""

    link: str
    """``far end -> NAT gateway``, ``NAT gateway -> node`` or ``node -> pod``."""
    why: str
    close_with: str
    """The evidence that would close it."""

    def to_dict(self) -> dict[str, str]:
        return {"link": self.link, "why": self.why, "close_with": self.close_with}


@dataclass(frozen=True)
class Path:
    """One way the public tuple may lead to a pod: its hops, as far as the evidence goes, and what is missing."""

    hops: tuple[Hop, ...]
    missing: tuple[Missing, ...] = ()
    node: dict[str, Any] | None = None
    """{"address", "port"} of the node tuple, when the flow log gave one."""
    pod: dict[str, Any] | None = None
    """{"address", "port"} of the pod, when the node's captures gave it."""

    @property
    def evidence(self) -> str:
        """The weakest link's evidence: what the whole path is worth."""
        levels = [h.evidence for h in self.hops[1:] if h.evidence]
        weak = [e for e in levels if e.startswith("flow log")]
        return weak[0] if weak else (levels[-1] if levels else "none")

    def to_dict(self) -> dict[str, Any]:
        return {"evidence": self.evidence, "node": self.node, "pod": self.pod,
                "hops": [h.to_dict() for h in self.hops], "missing": [m.to_dict() for m in self.missing]}


@dataclass(frozen=True)
class GatewayAnswer:
    """Every path from one public tuple (at a time) through the gateway's flow log, and the flows behind them."""

    query: str
    at_ns: int | None
    window_s: float
    gateway: NatGateway
    paths: tuple[Path, ...]
    flows: pl.DataFrame = field(repr=False)
    """trace_public's frame: one row per public-side flow found."""
    missing: tuple[Missing, ...] = ()
    """Missing links before any path starts (no public-side flow found)."""

    @property
    def found(self) -> bool:
        """Whether any path reached a node tuple."""
        return any(p.node is not None for p in self.paths)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "natproof.who-gateway/1", "query": self.query,
                "at": None if self.at_ns is None else epoch_seconds(self.at_ns), "window_s": self.window_s,
                "nat_gateway": {"private": self.gateway.private, "public": self.gateway.public},
                "paths": [p.to_dict() for p in self.paths], "missing": [m.to_dict() for m in self.missing],
                "flows": self.flows.to_dicts()}


SAME_TUPLE = "same tuple (routed, nothing rewritten)"
"""The node's eth0 capture holds the very tuple the gateway's private side logged: no NAT between them."""


def cite(records: Sequence[str]) -> str:
    """file:line references, each file named once: ``flows.log:14,18; other.parquet:3``."""
    by_file: dict[str, list[str]] = {}
    for ref in records:
        path, _, line = ref.rpartition(":")
        by_file.setdefault(path, []).append(line)
    return "; ".join(f"{path}:{','.join(sorted(set(lines), key=int))}" for path, lines in by_file.items())


def frame(conn: dict[str, Any], side: str) -> int | None:
    """The first egress frame of a connection object on one capture (``inside_frame`` or ``outside_frame``)."""
    return (conn["evidence"]["egress"] or {}).get(side)


def _tup(proto: str, src: str, sport: int, dst: str, dport: int) -> dict[str, Any]:
    return {"proto": proto, "src": src, "sport": sport, "dst": dst, "dport": dport}


def who_via_gateway(flowlog: FlowLog, gateways: Sequence[NatGateway], address: str, port: int, *,
                    at_ns: int | None = None, window_s: float = 60.0, peer: tuple[str, int | None] | None = None,
                    result: Any = None, conntrack: Sequence[Any] = (), names: Any = None,
                    lag_s: float = LAG_S, tolerance_s: float = TOLERANCE_S) -> GatewayAnswer:
    """Walk from ``address:port`` (a gateway's public or private address, as a far end logged it, at ``at_ns``)
    through the flow log to node tuples, and on to the pod that opened each connection with ``result`` (a natproof
    Result of one node's captures: evidence "packets") or ``conntrack`` (nodes' conntrack records: each a
    ConntrackRecord, natproof.read_conntrack's, a path, or (name, lines) of ``conntrack -L`` or ``-E`` output, read
    and checked as read_conntrack reads a file: evidence "kernel record"). ``names`` (natproof.Names, from kubectl
    dumps) names the pods the records lead to, as a named ``result`` names its own. See trace_public for the
    flow-log step."""
    records = [conntrack_record(c[1], c[0]) if isinstance(c, tuple) else conntrack_record(c) for c in conntrack]
    entries = [(r.path, e) for r in records
               for e in r.entries.filter(pl.col("proto").is_in(["tcp", "udp", "icmp"])).iter_rows(named=True)]
    flows = trace_public(flowlog, gateways, address, port, at_ns=at_ns, window_s=window_s, peer=peer, lag_s=lag_s,
                         tolerance_s=tolerance_s)
    gw = next(g for g in gateways if address in (g.private, g.public))
    query = format_address(address, port)
    if flows.is_empty():
        span = "" if at_ns is None else f" within {window_s:g} s of the time asked (records may lag 60 s)"
        to = "" if peer is None else f" to {format_address(peer[0], peer[1])}"
        undated = 0 if at_ns is None else undated_uses(flowlog, gw, port)
        untimed = (f"; {undated} use(s) of the port have records without a start or end time, which no time asked "
                   "can reach (leave out --at to take them)" if undated else "")
        missing = Missing("far end -> NAT gateway",
                          f"no public-side record from {format_address(gw.private, port)}{to} on the gateway's "
                          f"interface{span}{untimed}",
                          "the flow log of the NAT gateway's network interface for that time (all of it: S3 files "
                          "are per 5 minutes); check --nat-gateway, --at and --window")
        return GatewayAnswer(query, at_ns, window_s, gw, (), flows, (missing,))
    paths = []
    for f in flows.iter_rows(named=True):
        public = gw.public or gw.private
        far_end = Hop("far end", _tup(f["proto"], public, port, f["dst"], f["dport"]), None,
                      "the question (an abuse report, a firewall log)")
        gw_pub = Hop(f"NAT gateway public side ({f['interface_id']})",
                     _tup(f["proto"], f["gateway_private"], port, f["dst"], f["dport"]),
                     "--nat-gateway" if gw.public else None, cite(f["records"]))
        if not f["nodes"]:
            paths.append(Path((far_end, gw_pub), (Missing(
                "NAT gateway -> node", f["why"],
                "a flow log of the gateway's interface with the private side's records (custom format with "
                "pkt-srcaddr and pkt-dstaddr) for that time, or the nodes' conntrack records or captures"),)))
            continue
        for node in f["nodes"]:
            gw_priv = Hop(f"NAT gateway private side ({f['interface_id']})",
                          _tup(f["proto"], node["src"], node["sport"], f["dst"], f["dport"]), f["evidence"],
                          cite(node["records"]))
            hops = [far_end, gw_pub, gw_priv]
            missing: list[Missing] = []
            pod = None
            kernel = _pods_from_conntrack(entries, node, f, lag_s, tolerance_s)
            for name, e in kernel:
                paths.append(Path((*hops, Hop(f"node conntrack ({name})",
                                              _tup(e["proto"], e["orig_src"], e["orig_sport"], e["orig_dst"],
                                                   e["orig_dport"]), EVIDENCE_KERNEL, f"{name}:{e['line']}")),
                                  (), {"address": node["src"], "port": node["sport"]},
                                  _kernel_pod(e, names, _first_ns(node))))
            if kernel and result is None:
                continue
            if result is None:
                missing.append(Missing(
                    "node -> pod", f"no capture or conntrack record of node {node['src']} given",
                    f"captures of node {node['src']}'s pod side (cni0 or the pod's veth) and eth0 over that time "
                    "(natproof who ADDR:PORT INSIDE OUTSIDE --flow-log ...), or its conntrack -E -o timestamp or -L "
                    "output (--conntrack FILE)"))
            else:
                found = _pods_for(result, node, f, lag_s, tolerance_s)
                if not found:
                    missing.append(Missing(
                        "node -> pod",
                        f"the captures ({result.inside.path}, {result.outside.path}) hold no connection that left as "
                        f"{format_address(node['src'], node['sport'])} -> {format_address(f['dst'], f['dport'])} "
                        "then: they are of another node, or were not running",
                        f"captures of node {node['src']}'s pod side and eth0 covering that time"))
                for c in found:
                    o, t = c["original"], c["translated"]
                    hops_c = [*hops,
                              Hop(f"node eth0 ({result.outside.path})", _tup(c["proto"], t["src"], t["sport"],
                                                                             t["dst"], t["dport"]),
                                  SAME_TUPLE, f"connection #{c['conn']}, frame {frame(c, 'outside_frame')}"),
                              Hop(f"pod side ({result.inside.path})", _tup(c["proto"], o["src"], o["sport"], o["dst"],
                                                                           o["dport"]), EVIDENCE_PACKETS,
                                  f"connection #{c['conn']}, frame {frame(c, 'inside_frame')}")]
                    pod = c["ends"]["pod"]
                    paths.append(Path(tuple(hops_c), tuple(missing), {"address": node["src"], "port": node["sport"]},
                                      pod))
                if found or kernel:
                    continue
            paths.append(Path(tuple(hops), tuple(missing), {"address": node["src"], "port": node["sport"]}, pod))
    return GatewayAnswer(query, at_ns, window_s, gw, tuple(paths), flows)


def _first_ns(node: dict[str, Any]) -> int | None:
    """A node tuple's first time in the flow log (epoch ns), its records' start (else end); None undated."""
    t = node.get("start_s") if node.get("start_s") is not None else node.get("end_s")
    return None if t is None else int(t * 1e9)


def _kernel_pod(entry: dict[str, Any], names: Any, ts_ns: int | None) -> dict[str, Any]:
    """The pod end of a conntrack entry's original tuple, named by ``names`` (natproof.Names) when given: ``name``
    and ``name_candidates`` as a named result's ends (natproof.lookup.pod_ends)."""
    pod: dict[str, Any] = {"address": entry["orig_src"], "port": entry["orig_sport"]}
    if names is not None:
        match = names.pod_at(entry["orig_src"], entry.get("ts_ns") or ts_ns)
        pod |= {"name": match.name, "name_candidates": list(match.candidates) or None}
    return pod


def _pods_from_conntrack(entries: list[tuple[str, dict[str, Any]]], node: dict[str, Any], flow: dict[str, Any],
                         lag_s: float, tolerance_s: float) -> list[tuple[str, dict[str, Any]]]:
    """Conntrack entries (record path, natproof.conntrack ENTRY_SCHEMA row) whose translated tuple (the reply
    reversed) is the node tuple to the flow's destination, one per connection (its first line), within the records'
    time when the entry and the records carry one."""
    lo, hi = _span(node, lag_s, tolerance_s)
    out, seen = [], set()
    for name, e in entries:
        if (e["proto"], e["reply_dst"], e["reply_dport"], e["reply_src"], e["reply_sport"]) != (
                flow["proto"], node["src"], node["sport"], flow["dst"], flow["dport"]):
            continue
        if e["ts_ns"] is not None and lo is not None and not lo <= e["ts_ns"] / 1e9 <= hi:
            continue
        key = (name, e["orig_src"], e["orig_sport"])
        if key not in seen:
            seen.add(key)
            out.append((name, e))
    return out


def _span(node: dict[str, Any], lag_s: float, tolerance_s: float, offset_s: float = 0.0
          ) -> tuple[float, float] | tuple[None, None]:
    """When the node side's packets may have been, on a clock ``offset_s`` ahead of the records' (their start/end
    lag the packets by up to ``lag_s``); (None, None) for records without a start or end time: any time."""
    if node["start_s"] is None:
        return None, None
    return node["start_s"] - lag_s - tolerance_s - 1 - offset_s, node["end_s"] + tolerance_s + 1 - offset_s


def _pods_for(result: Any, node: dict[str, Any], flow: dict[str, Any], lag_s: float,
              tolerance_s: float) -> list[dict[str, Any]]:
    """The connections of a correlation that left the node as ``node`` -> the flow's destination, in the time the
    records allow (their start/end lag the packets by up to ``lag_s``; the captures' clock on the outside)."""
    from natproof.lookup import who

    answer = who(result, format_address(node["src"], node["sport"]))
    lo, hi = _span(node, lag_s, tolerance_s, result.clock_offset_s)
    out = []
    for c in answer.connections:
        t = c.get("translated")
        if t is None or (t["src"], t["sport"], t["dst"], t["dport"]) != (node["src"], node["sport"], flow["dst"],
                                                                         flow["dport"]):
            continue
        if lo is not None and (c["last_seen"] < lo or c["first_seen"] > hi):
            continue
        out.append(c)
    return out
