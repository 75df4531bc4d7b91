"""Join node-side tuples to a NAT gateway's flow log records, and walk back from the gateway's public tuple to nodes.

What AWS documents about a NAT gateway's network interface ("Flow log record examples", "Traffic through a NAT
gateway", https://docs.aws.amazon.com/vpc/latest/userguide/flow-logs-records-examples.html#flow-log-example-nat):
its flow log holds both halves of every connection it translates. For an instance 10.0.1.5 reaching 203.0.113.5
through a gateway whose interface has the private address 10.0.0.220 (fields ``srcaddr dstaddr pkt-srcaddr
pkt-dstaddr``)::

    10.0.1.5    10.0.0.220  10.0.1.5     203.0.113.5   private side, egress: dstaddr is the gateway, pkt-dstaddr the
                                                       destination
    10.0.0.220  203.0.113.5 10.0.0.220   203.0.113.5   public side, egress (the gateway's own source port)
    203.0.113.5 10.0.0.220  203.0.113.5  10.0.0.220    public side, reply
    10.0.0.220  10.0.1.5    203.0.113.5  10.0.1.5      private side, reply: srcaddr is the gateway, pkt-srcaddr the
                                                       destination

The internet gateway then maps the gateway's private address to its Elastic IP one to one (AWS's blog "Attach
multiple IPs to a NAT Gateway"), which is the public address a far end logs; ``describe-nat-gateways`` lists both
(``NatGatewayAddresses[].PrivateIp`` / ``PublicIp``), given here as ``NatGateway(private, public)``.

Nothing in the records ties the two halves together: a private-side record carries the node's port, a public-side
record the gateway's port. They are linked here by what the gateway does not change: protocol, destination address
and port, time, and the packet and byte counts of each direction (the same packets cross both halves). Records
aggregate a flow over an interval of up to 1 or 10 minutes and their start/end may lag the packets by up to 60
seconds ("Available fields", https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html), so several
connections to one destination in one interval with the same counts cannot be told apart: the answer then says
"ambiguous" with how many candidates, never a single guess. Without ``pkt-dstaddr`` (the default format) a
private-side record does not name its destination at all, only its destination port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from natproof.errors import InputError
from natproof.flowlogs.records import PROTOCOLS, FlowLog

LAG_S = 60
"""AWS: a record's start and end are "up to 60 seconds after the packet was transmitted or received"."""
TOLERANCE_S = 2.0
"""Seconds of clock difference allowed between the node's captures or conntrack and AWS's records, on top of the
whole-second resolution of start/end."""

EVIDENCE_UNIQUE = "flow log, unique candidate"
EVIDENCE_NONE = "no candidate"
EVIDENCE_PACKETS = "packets"
"""Captures on both sides of a NAT (natproof correlate): the strongest link."""
EVIDENCE_KERNEL = "kernel record"
"""A conntrack entry of the NAT's own kernel."""


def evidence_ambiguous(n: int) -> str:
    """``flow log, ambiguous: N candidates``."""
    return f"flow log, ambiguous: {n} candidates"


def evidence_level(candidates: int) -> str:
    """The evidence a number of candidates consistent with the records amounts to (0: no candidate)."""
    if candidates == 0:
        return EVIDENCE_NONE
    return EVIDENCE_UNIQUE if candidates == 1 else evidence_ambiguous(candidates)


@dataclass(frozen=True)
class NatGateway:
    """One address of a NAT gateway, as ``aws ec2 describe-nat-gateways`` lists it."""

    private: str
    """The private IPv4 address of its network interface (the address its flow log records carry)."""
    public: str | None = None
    """Its Elastic IP (what the internet, and an abuse report, sees); None when not given."""

    def __str__(self) -> str:
        return f"{self.private}={self.public}" if self.public else self.private


def parse_nat_gateway(text: str) -> NatGateway:
    """``PRIVATE=PUBLIC`` (or ``PRIVATE`` alone) into a NatGateway; InputError on anything else."""
    private, sep, public = text.strip().partition("=")
    out = []
    for what, value in (("private", private), ("public", public)):
        if not value and (what == "private" or sep):
            raise InputError(f"--nat-gateway {text!r}: no {what} address "
                             "(PRIVATE=PUBLIC, e.g. 10.0.0.220=203.0.113.20)")
        if value:
            try:
                out.append(str(ipaddress.ip_address(value.strip())))
            except ValueError:
                raise InputError(f"--nat-gateway {text!r}: {value.strip()!r} is not an IP address "
                                 "(PRIVATE=PUBLIC, e.g. 10.0.0.220=203.0.113.20)") from None
        else:
            out.append(None)
    return NatGateway(out[0], out[1])  # type: ignore[arg-type]


NODE_TUPLE_SCHEMA: dict[str, pl.DataType] = {
    "node_tuple": pl.UInt32(), "proto": pl.String(), "src": pl.String(), "sport": pl.Int32(), "dst": pl.String(),
    "dport": pl.Int32(), "first_ts_ns": pl.Int64(), "last_ts_ns": pl.Int64(), "source": pl.String(),
}
"""A node's translated tuple (what left the node, as it reached the gateway): node address and port -> destination,
when it was seen (first/last packet, Unix ns; null: any time), and where it came from (a capture's connection, a
conntrack line). ``node_tuple`` numbers the rows from 0."""


def node_tuples(rows: Iterable[dict[str, Any] | Sequence[Any]]) -> pl.DataFrame:
    """A NODE_TUPLE_SCHEMA frame from dicts (keys of the schema; ``node_tuple`` optional) or tuples (proto, src,
    sport, dst, dport[, first_ts_ns[, last_ts_ns[, source]]]). ``proto`` is a name (tcp, udp, icmp) or number."""
    out = []
    names = [c for c in NODE_TUPLE_SCHEMA if c != "node_tuple"]
    for row in rows:
        d = dict(row) if isinstance(row, dict) else dict(zip(names, row, strict=False))
        proto = d.get("proto")
        if isinstance(proto, int):
            proto = PROTOCOLS.get(proto, str(proto))
        first = d.get("first_ts_ns")
        out.append({"proto": proto, "src": d["src"], "sport": d["sport"], "dst": d["dst"], "dport": d["dport"],
                    "first_ts_ns": first, "last_ts_ns": d.get("last_ts_ns", first), "source": d.get("source")})
    frame = pl.DataFrame(out, schema={c: t for c, t in NODE_TUPLE_SCHEMA.items() if c != "node_tuple"})
    return frame.with_row_index("node_tuple").select(NODE_TUPLE_SCHEMA.keys()).cast(NODE_TUPLE_SCHEMA)  # type: ignore[arg-type]


def node_tuples_from_result(result: Any) -> pl.DataFrame:
    """The node's side of every connection a correlation saw leave the node (initiator inside, a tuple after the
    NAT captured): its translated tuple, timed on the outside capture's clock (inside time + clock offset)."""
    off = int(round(result.clock_offset_s * 1e9))
    conns = result.connections.filter((pl.col("initiator") == "inside") & pl.col("trans_src").is_not_null())
    rows = [{"proto": r["proto"], "src": r["trans_src"], "sport": r["trans_sport"], "dst": r["trans_dst"],
             "dport": r["trans_dport"], "first_ts_ns": r["first_ts_ns"] + off, "last_ts_ns": r["last_ts_ns"] + off,
             "source": f"{result.outside.path} connection #{r['conn']}"} for r in conns.iter_rows(named=True)]
    return node_tuples(rows)


def node_tuples_from_conntrack(lines: Iterable[str], source: str = "conntrack") -> pl.DataFrame:
    """The node's side of each conntrack entry (``conntrack -L`` or ``-E -o timestamp`` lines): the reply tuple
    reversed, i.e. what left the node after its NAT. The events of one entry give its first and last time (NEW to
    DESTROY); a listing line carries no time (matched over the whole flow log). Lines that are no conntrack entry
    are passed over."""
    from natproof.lab.truth import parse_line

    rows: list[dict[str, Any]] = []
    live: dict[tuple, dict[str, Any]] = {}
    for no, line in enumerate(lines, 1):
        try:
            entry = parse_line(line)
        except ValueError:
            continue
        if entry is None or entry.proto not in ("tcp", "udp", "icmp"):
            continue
        o, r = entry.original, entry.reply
        key = (entry.proto, o.src, o.sport, o.dst, o.dport, r.dst, r.dport)
        ts = None if entry.ts is None else int(entry.ts * 1e9)
        row = live.get(key)
        if row is None or (entry.event == "NEW" and row["closed"]):
            icmp = entry.proto == "icmp"  # the echo identifier stands in sport, dport is 0
            row = {"proto": entry.proto, "src": r.dst, "sport": r.sport if icmp else r.dport, "dst": r.src,
                   "dport": 0 if icmp else r.sport, "first_ts_ns": ts, "last_ts_ns": ts,
                   "source": f"{source} line {no}", "closed": False}
            live[key] = row
            rows.append(row)
        if ts is not None:
            row["first_ts_ns"] = ts if row["first_ts_ns"] is None else min(row["first_ts_ns"], ts)
            row["last_ts_ns"] = ts if row["last_ts_ns"] is None else max(row["last_ts_ns"], ts)
        row["closed"] = row["closed"] or entry.event == "DESTROY"
    return node_tuples(sorted(rows, key=lambda r: (r["first_ts_ns"] or 0, r["source"])))


# ------------------------------------------------------------------------------------------- the records


def gateway_interfaces(flowlog: FlowLog, gateways: Sequence[NatGateway]) -> pl.DataFrame:
    """The network interfaces that belong to the given gateways: those whose records carry a gateway's private
    address as srcaddr or dstaddr (an interface's records always carry its own primary address there). Columns
    interface_id ("-" when the format has no interface-id), gateway_private, gateway_public, records."""
    privates = [g.private for g in gateways]
    public = {g.private: g.public for g in gateways}
    flows = _flows(flowlog)
    hits = pl.concat([
        flows.filter(pl.col("srcaddr").is_in(privates)).select("interface_id", pl.col("srcaddr").alias("gw")),
        flows.filter(pl.col("dstaddr").is_in(privates)).select("interface_id", pl.col("dstaddr").alias("gw")),
    ])
    out = hits.group_by("interface_id", "gw").len("records").sort("interface_id", "gw")
    return out.select("interface_id", pl.col("gw").alias("gateway_private"),
                      pl.col("gw").replace_strict(public, default=None, return_dtype=pl.String).alias("gateway_public"),
                      pl.col("records").cast(pl.UInt32))


def _flows(flowlog: FlowLog) -> pl.DataFrame:
    """OK records with the columns the join reads; a format without interface-id puts every record on "-"."""
    f = flowlog.flows()
    return f.select(
        pl.col("interface_id").fill_null("-"), "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
        pl.col("packets").fill_null(0), pl.col("bytes").fill_null(0), "start_s", "end_s", "pkt_srcaddr",
        "pkt_dstaddr", (pl.col("file") + ":" + pl.col("line_no").cast(pl.String)).alias("where"),
    )


def _overlaps(lo: pl.Expr, hi: pl.Expr) -> pl.Expr:
    """A record whose [start_s, end_s] meets [lo, hi] (null bounds: no limit)."""
    return (lo.is_null() | (pl.col("end_s") >= lo)) & (hi.is_null() | (pl.col("start_s") <= hi))


_SUMS = (pl.col("packets").sum().alias("packets"), pl.col("bytes").sum().alias("bytes"),
         pl.col("start_s").min().alias("start_s"), pl.col("end_s").max().alias("end_s"),
         pl.col("where").alias("records"))


def join_nat_gateway(node_tuples: pl.DataFrame, flowlog: FlowLog, gateways: Sequence[NatGateway], *,
                     lag_s: float = LAG_S, tolerance_s: float = TOLERANCE_S) -> pl.DataFrame:
    """For each node-side tuple (NODE_TUPLE_SCHEMA: the node's address:port -> destination, after the node's own
    NAT), the NAT gateway tuple(s) the flow log allows, with the evidence.

    Records are read on the gateways' interfaces (``gateway_interfaces``) that overlap the tuple's time, from
    ``tolerance_s`` before its first packet to ``lag_s + tolerance_s`` after its last. The node side is the
    private-side records of the tuple (srcaddr, srcport = the node's; dstport = the destination's; pkt-dstaddr the
    destination when the format has it) and their replies; a candidate is a public-side flow of the same interface
    (srcaddr the gateway, dstaddr:dstport the destination, same protocol) grouped by the gateway's source port. A
    candidate is consistent when its packets and bytes equal the node side's in each direction (the gateway
    forwards the same packets; a direction seen on one side only rules it out).

    Returns one row per node tuple, in its order: its columns, then ``evidence`` ("flow log, unique candidate",
    "flow log, ambiguous: N candidates" or "no candidate"), ``candidates`` (consistent candidates), ``why`` (one
    sentence), ``interface_id``, ``gateway_private``, ``gateway_public`` and ``gateway_sport`` (set only for a
    unique candidate), ``node_side`` (struct: packets, bytes, reply_packets, reply_bytes, records as file:line),
    ``gateway_tuples`` (list of struct, the consistent candidates: interface_id, gateway_private, gateway_public,
    sport, packets, bytes, reply_packets, reply_bytes, start_s, end_s, records) and ``others`` (public-side flows
    to the same destination in the window that the counts rule out).
    """
    missing = [c for c in NODE_TUPLE_SCHEMA if c not in node_tuples.columns]
    if missing:
        raise ValueError(f"node_tuples lacks {', '.join(missing)} (see NODE_TUPLE_SCHEMA)")
    if not gateways:
        raise InputError("no NAT gateway given: pass --nat-gateway PRIVATE=PUBLIC (aws ec2 describe-nat-gateways)")
    n = node_tuples.select(
        "node_tuple", "proto", "src", "sport", "dst", "dport",
        pl.coalesce(pl.col("proto").replace_strict({v: k for k, v in PROTOCOLS.items()}, default=None,
                                                   return_dtype=pl.Int32),
                    pl.col("proto").cast(pl.Int32, strict=False)).alias("protocol"),
        (pl.col("first_ts_ns") // 10**9 - int(tolerance_s) - 1).alias("lo"),
        ((pl.col("last_ts_ns") + 10**9 - 1) // 10**9 + int(lag_s + tolerance_s) + 1).alias("hi"),
    )
    ifaces = gateway_interfaces(flowlog, gateways)
    flows = _flows(flowlog)
    on_gw = flows.join(ifaces.select("interface_id", "gateway_private", "gateway_public"), on="interface_id")
    window = _overlaps(pl.col("lo"), pl.col("hi"))

    # The node side: private-side egress (the node's tuple, to the gateway) and its reply.
    egress = (on_gw.join(n, left_on=["protocol", "srcaddr", "srcport", "dstport"],
                         right_on=["protocol", "src", "sport", "dport"])
              .filter(window & (pl.col("srcaddr") != pl.col("gateway_private"))
                      & pl.when(pl.col("pkt_dstaddr").is_null())
                      .then((pl.col("dstaddr") == pl.col("gateway_private")) | (pl.col("dstaddr") == pl.col("dst")))
                      .otherwise(pl.col("pkt_dstaddr") == pl.col("dst")))
              .group_by("node_tuple", "interface_id", "gateway_private", "gateway_public").agg(*_SUMS))
    reply = (on_gw.join(n, left_on=["protocol", "dstaddr", "dstport", "srcport"],
                        right_on=["protocol", "src", "sport", "dport"])
             .filter(window & pl.when(pl.col("pkt_srcaddr").is_null())
                     .then((pl.col("srcaddr") == pl.col("gateway_private")) | (pl.col("srcaddr") == pl.col("dst")))
                     .otherwise(pl.col("pkt_srcaddr") == pl.col("dst")))
             .group_by("node_tuple", "interface_id").agg(pl.col("packets").sum().alias("reply_packets"),
                                                         pl.col("bytes").sum().alias("reply_bytes"),
                                                         pl.col("where").alias("reply_records")))
    node_side = egress.join(reply, on=["node_tuple", "interface_id"], how="left")

    # Candidates: public-side egress from the gateway to the destination, per gateway source port, and its reply.
    pub = (on_gw.join(n, left_on=["protocol", "dstaddr", "dstport"], right_on=["protocol", "dst", "dport"])
           .filter(window & (pl.col("srcaddr") == pl.col("gateway_private"))
                   & (pl.col("pkt_dstaddr").is_null() | (pl.col("pkt_dstaddr") == pl.col("dstaddr"))))
           .with_columns(pl.coalesce("pkt_srcaddr", "srcaddr").alias("gateway_address"))
           .group_by("node_tuple", "interface_id", "gateway_private", "gateway_public", "gateway_address",
                     pl.col("srcport").alias("sport")).agg(*_SUMS))
    pub_reply = (on_gw.join(n, left_on=["protocol", "srcaddr", "srcport"], right_on=["protocol", "dst", "dport"])
                 .filter(window & (pl.col("dstaddr") == pl.col("gateway_private"))
                         & (pl.col("pkt_srcaddr").is_null() | (pl.col("pkt_srcaddr") == pl.col("srcaddr"))))
                 .with_columns(pl.coalesce("pkt_dstaddr", "dstaddr").alias("gateway_address"))
                 .group_by("node_tuple", "interface_id", "gateway_address", pl.col("dstport").alias("sport"))
                 .agg(pl.col("packets").sum().alias("reply_packets"), pl.col("bytes").sum().alias("reply_bytes")))
    cands = pub.join(pub_reply, on=["node_tuple", "interface_id", "gateway_address", "sport"], how="left")
    cands = cands.join(node_side.select("node_tuple", "interface_id", pl.col("packets").alias("n_packets"),
                                        pl.col("bytes").alias("n_bytes"), pl.col("reply_packets").alias("n_rpackets"),
                                        pl.col("reply_bytes").alias("n_rbytes")),
                       on=["node_tuple", "interface_id"], how="left")
    same = (pl.col("packets") == pl.col("n_packets")) & (pl.col("bytes") == pl.col("n_bytes")) & (
        (pl.col("reply_packets").is_null() & pl.col("n_rpackets").is_null())
        | ((pl.col("reply_packets") == pl.col("n_rpackets")) & (pl.col("reply_bytes") == pl.col("n_rbytes"))))
    cands = cands.with_columns(same.fill_null(False).alias("consistent"))
    cand_struct = pl.struct("interface_id", "gateway_private", "gateway_public", pl.col("gateway_address"),
                            "sport", "packets", "bytes", "reply_packets", "reply_bytes", "start_s", "end_s",
                            "records")
    per_tuple = cands.sort("node_tuple", "start_s", "sport").group_by("node_tuple").agg(
        cand_struct.filter(pl.col("consistent")).alias("gateway_tuples"),
        cand_struct.filter(~pl.col("consistent")).alias("others"),
        pl.len().alias("public_flows"),
    )
    # Records of the node tuple on interfaces that are not a given gateway's: the wrong interface was logged.
    elsewhere = (flows.join(ifaces.select("interface_id"), on="interface_id", how="anti")
                 .join(n, left_on=["protocol", "srcaddr", "srcport", "dstport"],
                       right_on=["protocol", "src", "sport", "dport"]).filter(window)
                 .group_by("node_tuple").agg(pl.col("interface_id").unique().sort().alias("other_interfaces")))
    no_records = pl.lit([], pl.List(pl.String))
    node_struct = pl.struct("packets", "bytes", "reply_packets", "reply_bytes",
                            pl.concat_list(pl.col("records"), pl.col("reply_records").fill_null(no_records))
                            .alias("records"))
    node_first = (node_side.sort("node_tuple", "interface_id").group_by("node_tuple", maintain_order=True)
                  .agg(pl.col("interface_id").first(), pl.col("gateway_private").first(),
                       pl.col("gateway_public").first(), node_struct.first().alias("node_side"),
                       pl.len().alias("node_interfaces")))
    out = (node_tuples.join(node_first, on="node_tuple", how="left").join(per_tuple, on="node_tuple", how="left")
           .join(elsewhere, on="node_tuple", how="left").sort("node_tuple"))
    rows = []
    for r in out.iter_rows(named=True):
        rows.append(_explain(r, ifaces, lag_s, tolerance_s))
    explained = pl.DataFrame(rows, schema={"node_tuple": pl.UInt32, "evidence": pl.String, "candidates": pl.UInt32,
                                           "why": pl.String, "gateway_sport": pl.Int32})
    out = out.join(explained, on="node_tuple").with_columns(
        pl.col("gateway_tuples").fill_null([]), pl.col("others").fill_null([]))
    return out.select(*NODE_TUPLE_SCHEMA, "evidence", "candidates", "why", "interface_id", "gateway_private",
                      "gateway_public", "gateway_sport", "node_side", "gateway_tuples", "others")


def _explain(r: dict[str, Any], ifaces: pl.DataFrame, lag_s: float, tolerance_s: float) -> dict[str, Any]:
    """Evidence, candidate count and the reason, for one node tuple's joined row."""
    from natproof.report.table import format_address

    tup = f"{r['proto']} {format_address(r['src'], r['sport'])} -> {format_address(r['dst'], r['dport'])}"
    good = r["gateway_tuples"] or []
    others = r["others"] or []
    out = {"node_tuple": r["node_tuple"], "candidates": len(good), "evidence": evidence_level(len(good)),
           "gateway_sport": good[0]["sport"] if len(good) == 1 else None}
    span = (f"between {tolerance_s:g} s before its first packet and {lag_s + tolerance_s:g} s after its last"
            if r["first_ts_ns"] is not None else "at any time")
    if ifaces.is_empty():
        why = ("no record carries a given NAT gateway's private address: the flow log is not of the gateway's "
               "interface, or --nat-gateway names another gateway")
    elif r["node_side"] is None:
        if r["other_interfaces"]:
            why = (f"{tup} is only on interface(s) {', '.join(r['other_interfaces'])}, which no given NAT gateway "
                   f"owns (gateway interfaces: {', '.join(ifaces['interface_id'].unique().sort().to_list())}): the "
                   "flow log of the node's own interface does not show the gateway's port; log the gateway's")
        else:
            why = f"no record of {tup} on the gateway's interface {span}"
    elif not good and not others:
        why = (f"the gateway's interface logged {tup} on its private side, but no public-side record to "
               f"{format_address(r['dst'], r['dport'])} {span}")
    elif not good:
        ns = r["node_side"]
        why = (f"{len(others)} public-side flow(s) to {format_address(r['dst'], r['dport'])} {span}, none with the "
               f"private side's counts ({ns['packets']} packets/{ns['bytes']} bytes out, "
               f"{ns['reply_packets'] or 0}/{ns['reply_bytes'] or 0} back)")
    elif len(good) == 1:
        g = good[0]
        why = (f"the only public-side flow to {format_address(r['dst'], r['dport'])} {span} with the private side's "
               f"counts ({g['packets']} packets/{g['bytes']} bytes out, {g['reply_packets'] or 0}/"
               f"{g['reply_bytes'] or 0} back)" + (f"; {len(others)} other(s) to it ruled out by their counts"
                                                  if others else ""))
    else:
        ports = ", ".join(str(g["sport"]) for g in good)
        why = (f"{len(good)} public-side flows to {format_address(r['dst'], r['dport'])} {span} have the private "
               f"side's counts (gateway ports {ports}): the records cannot tell which one carried {tup}")
    out["why"] = why
    return out


# ---------------------------------------------------------------------------------- from the public tuple


def trace_public(flowlog: FlowLog, gateways: Sequence[NatGateway], address: str, port: int, *,
                 at_ns: int | None = None, window_s: float = 60.0, peer: tuple[str, int | None] | None = None,
                 lag_s: float = LAG_S, tolerance_s: float = TOLERANCE_S) -> pl.DataFrame:
    """From a gateway's public (or private) address and port, as an abuse report names it, to the node tuple(s).

    Finds the public-side flows from that address:port (within ``window_s`` of ``at_ns`` when given, widened by
    ``lag_s`` after and ``tolerance_s`` both ways; to ``peer`` = (address, port or None) when given), then for each
    the private-side flows of the same interface to the same destination whose counts equal its own in each
    direction (the same rule as join_nat_gateway, run backwards).

    One row per public-side flow: interface_id, gateway_private, gateway_public, sport (the gateway's port),
    proto, dst, dport, packets, bytes, reply_packets, reply_bytes, start_s, end_s, records, then ``evidence``,
    ``candidates``, ``why`` and ``nodes`` (list of struct: src, sport, packets, bytes, reply_packets, reply_bytes,
    start_s, end_s, records) and ``others`` (private-side flows to the destination the counts rule out).
    Raises InputError when ``address`` is none of the gateways' addresses.
    """
    gw = [g for g in gateways if address in (g.private, g.public)]
    if not gw:
        known = ", ".join(str(g) for g in gateways) or "none given"
        raise InputError(f"{address} is not a given NAT gateway's address (--nat-gateway PRIVATE=PUBLIC; given: "
                         f"{known})")
    ifaces = gateway_interfaces(flowlog, gw)
    flows = _flows(flowlog).join(ifaces.select("interface_id", "gateway_private", "gateway_public"),
                                 on="interface_id")
    lo = hi = None
    if at_ns is not None:
        lo = at_ns // 10**9 - int(window_s + tolerance_s) - 1
        hi = at_ns // 10**9 + int(window_s + lag_s + tolerance_s) + 1
    window = _overlaps(pl.lit(lo, pl.Int64), pl.lit(hi, pl.Int64))
    pub = flows.filter(window & (pl.col("srcaddr") == pl.col("gateway_private")) & (pl.col("srcport") == port)
                       & (pl.col("pkt_srcaddr").is_null() | (pl.col("pkt_srcaddr") == pl.col("srcaddr")))
                       & (pl.col("pkt_dstaddr").is_null() | (pl.col("pkt_dstaddr") == pl.col("dstaddr"))))
    if peer is not None:
        pub = pub.filter(pl.col("dstaddr") == peer[0])
        if peer[1] is not None:
            pub = pub.filter(pl.col("dstport") == peer[1])
    keys = ["interface_id", "gateway_private", "gateway_public", "protocol", "dstaddr", "dstport"]
    pub = pub.group_by(*keys).agg(*_SUMS)
    pub_reply = (flows.join(pub.select(keys), on=keys[:3] + ["protocol"])
                 .filter(window & (pl.col("srcaddr") == pl.col("dstaddr_right")) & (pl.col("srcport") ==
                                                                                    pl.col("dstport_right"))
                         & (pl.col("dstaddr") == pl.col("gateway_private")) & (pl.col("dstport") == port))
                 .group_by("interface_id", "protocol", pl.col("dstaddr_right").alias("dstaddr"),
                           pl.col("dstport_right").alias("dstport"))
                 .agg(pl.col("packets").sum().alias("reply_packets"), pl.col("bytes").sum().alias("reply_bytes")))
    pub = pub.join(pub_reply, on=["interface_id", "protocol", "dstaddr", "dstport"], how="left")
    rows = []
    for p in pub.sort("start_s", "dstaddr", "dstport").iter_rows(named=True):
        rows.append(p | _nodes_for(flows, p, lag_s, tolerance_s))
    schema = {"interface_id": pl.String, "gateway_private": pl.String, "gateway_public": pl.String,
              "sport": pl.Int32, "proto": pl.String, "dst": pl.String, "dport": pl.Int32, "packets": pl.Int64,
              "bytes": pl.Int64, "reply_packets": pl.Int64, "reply_bytes": pl.Int64, "start_s": pl.Int64,
              "end_s": pl.Int64, "records": pl.List(pl.String), "evidence": pl.String, "candidates": pl.UInt32,
              "why": pl.String}
    node = pl.Struct({"src": pl.String, "sport": pl.Int32, "packets": pl.Int64, "bytes": pl.Int64,
                      "reply_packets": pl.Int64, "reply_bytes": pl.Int64, "start_s": pl.Int64, "end_s": pl.Int64,
                      "records": pl.List(pl.String)})
    out = [{"interface_id": r["interface_id"], "gateway_private": r["gateway_private"],
            "gateway_public": r["gateway_public"], "sport": port, "proto": PROTOCOLS.get(r["protocol"],
                                                                                      str(r["protocol"])),
            "dst": r["dstaddr"], "dport": r["dstport"], "packets": r["packets"], "bytes": r["bytes"],
            "reply_packets": r["reply_packets"], "reply_bytes": r["reply_bytes"], "start_s": r["start_s"],
            "end_s": r["end_s"], "records": r["records"], "evidence": r["evidence"], "candidates": r["candidates"],
            "why": r["why"], "nodes": r["nodes"], "others": r["others"]} for r in rows]
    return pl.DataFrame(out, schema=schema | {"nodes": pl.List(node), "others": pl.List(node)})


def _nodes_for(flows: pl.DataFrame, p: dict[str, Any], lag_s: float, tolerance_s: float) -> dict[str, Any]:
    """The private-side flows one public-side flow may have come from, split by whether their counts agree."""
    from natproof.report.table import format_address

    lo = p["start_s"] - int(lag_s + tolerance_s) - 1
    hi = p["end_s"] + int(lag_s + tolerance_s) + 1
    same_iface = flows.filter((pl.col("interface_id") == p["interface_id"]) & (pl.col("protocol") == p["protocol"])
                              & _overlaps(pl.lit(lo), pl.lit(hi)))
    gw = p["gateway_private"]
    dst, dport = p["dstaddr"], p["dstport"]
    egress = (same_iface.filter((pl.col("dstport") == dport) & (pl.col("srcaddr") != gw) & (pl.col("srcaddr") != dst)
                                & pl.when(pl.col("pkt_dstaddr").is_null()).then(pl.col("dstaddr") == gw)
                                .otherwise(pl.col("pkt_dstaddr") == dst))
              .group_by(pl.col("srcaddr").alias("src"), pl.col("srcport").alias("sport")).agg(*_SUMS))
    reply = (same_iface.filter((pl.col("srcport") == dport) & (pl.col("srcaddr") == gw)
                               & pl.when(pl.col("pkt_srcaddr").is_null()).then(pl.lit(True))
                               .otherwise(pl.col("pkt_srcaddr") == dst))
             .group_by(pl.col("dstaddr").alias("src"), pl.col("dstport").alias("sport"))
             .agg(pl.col("packets").sum().alias("reply_packets"), pl.col("bytes").sum().alias("reply_bytes")))
    cands = egress.join(reply, on=["src", "sport"], how="left").sort("start_s", "src", "sport")
    same = (pl.col("packets") == p["packets"]) & (pl.col("bytes") == p["bytes"])
    if p["reply_packets"] is None:
        same = same & pl.col("reply_packets").is_null()
    else:
        same = same & (pl.col("reply_packets") == p["reply_packets"]) & (pl.col("reply_bytes") == p["reply_bytes"])
    cols = ["src", "sport", "packets", "bytes", "reply_packets", "reply_bytes", "start_s", "end_s", "records"]
    good = cands.filter(same.fill_null(False)).select(cols).to_dicts()
    others = cands.filter(~same.fill_null(False)).select(cols).to_dicts()
    target = format_address(dst, dport)
    if not good and not others:
        why = (f"no private-side record to {target} on the gateway's interface within {lag_s + tolerance_s:g} s of "
               "this flow: the node side was not logged (a flow log filtered to REJECT, or of another interface)")
    elif not good:
        why = (f"{len(others)} private-side flow(s) to {target} near it, none with its counts ({p['packets']} "
               f"packets/{p['bytes']} bytes out, {p['reply_packets'] or 0}/{p['reply_bytes'] or 0} back)")
    elif len(good) == 1:
        why = (f"the only private-side flow to {target} within {lag_s + tolerance_s:g} s with its counts"
               + (f"; {len(others)} other(s) ruled out by their counts" if others else ""))
    else:
        nodes = ", ".join(format_address(g["src"], g["sport"]) for g in good)
        why = (f"{len(good)} private-side flows to {target} within {lag_s + tolerance_s:g} s have its counts "
               f"({nodes}): the records cannot tell which node sent it")
    return {"nodes": good, "others": others, "candidates": len(good), "evidence": evidence_level(len(good)),
            "why": why}
