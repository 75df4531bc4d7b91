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
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from natproof.errors import OPTIONS, InputError, Said
from natproof.flowlogs.records import PROTOCOLS, FlowLog

if TYPE_CHECKING:
    from natproof.conntrack import ConntrackRecord

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


GIVE_GATEWAYS = Said("gateways=[parse_nat_gateway('PRIVATE=PUBLIC')]", f"{OPTIONS['gateways']} PRIVATE=PUBLIC")
"""How a NAT gateway is given: to join_nat_gateway and trace_public (``gateways``), and to natproof's commands."""


def parse_nat_gateway(text: str, where: str | None = None) -> NatGateway:
    """``PRIVATE=PUBLIC`` (or ``PRIVATE`` alone) into a NatGateway; InputError on anything else, starting with
    ``where`` (a fleet manifest's key and the text) or by default this call (``--nat-gateway 'TEXT'`` on the
    command line). Refused too: two addresses of different IP versions, and two given the wrong way round where
    that is certain (PUBLIC a VPC address, RFC 1918, 100.64/10 or ULA, which no Elastic IP is, and PRIVATE not one:
    a VPC may use other ranges for itself, so a non-VPC PRIVATE alone says nothing)."""
    head = Said(f"parse_nat_gateway({text!r})", f"{OPTIONS['gateways']} {text!r}") if where is None else where
    private, sep, public = text.strip().partition("=")
    out = []
    for what, value in (("private", private), ("public", public)):
        if not value and (what == "private" or sep):
            raise InputError(head, f": no {what} address (PRIVATE=PUBLIC, e.g. 10.0.0.220=203.0.113.20)")
        if value:
            try:
                out.append(str(ipaddress.ip_address(value.strip())))
            except ValueError:
                raise InputError(head, f": {value.strip()!r} is not an IP address "
                                 "(PRIVATE=PUBLIC, e.g. 10.0.0.220=203.0.113.20)") from None
        else:
            out.append(None)
    private, public = out
    if public is not None:
        if ipaddress.ip_address(private).version != ipaddress.ip_address(public).version:
            raise InputError(head, f": {private} and {public} are not of one IP version: a NAT gateway's private "
                             "address and its public one are of the same family (PRIVATE=PUBLIC, e.g. "
                             "10.0.0.220=203.0.113.20)")
        if in_vpc(public) and not in_vpc(private):
            # A VPC's own address (RFC 1918, 100.64/10, ULA) is never an Elastic IP; a VPC may use others, so only
            # both sides together say the two were given the wrong way round.
            raise InputError(head, f": looks swapped: {public} is a VPC (private) address, which no Elastic IP is, "
                             f"and {private} is not one; give PRIVATE=PUBLIC: {public}={private}")
    return NatGateway(private, public)  # type: ignore[arg-type]


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


def node_tuples_from_conntrack(record: ConntrackRecord | str | os.PathLike[str] | Iterable[str],
                               source: str | None = None) -> pl.DataFrame:
    """The node's side of each conntrack entry (``conntrack -L`` or ``-E`` output, any format natproof.conntrack
    reads): the reply tuple reversed, i.e. what left the node after its NAT. ``record`` is a ConntrackRecord
    (natproof.read_conntrack), a file's path, or its lines; each is read, and refused (InputError) when it holds no
    entry, as read_conntrack refuses a file. The events of one entry give its first and last time (NEW to DESTROY);
    a listing line carries no time (matched over the whole flow log). ``source`` names the record in each row's
    ``source`` (``NAME line N``; default: the record's path, ``conntrack`` for lines)."""
    rec = conntrack_record(record, source or "conntrack")
    name = rec.path if source is None else source
    rows: list[dict[str, Any]] = []
    live: dict[tuple, dict[str, Any]] = {}
    entries = rec.entries.filter(pl.col("proto").is_in(["tcp", "udp", "icmp"]))
    for e in entries.iter_rows(named=True):
        key = (e["proto"], e["orig_src"], e["orig_sport"], e["orig_dst"], e["orig_dport"], e["reply_dst"],
               e["reply_dport"])
        ts = e["ts_ns"]
        row = live.get(key)
        if row is None or (e["event"] == "NEW" and row["closed"]):
            icmp = e["proto"] == "icmp"  # the echo identifier stands in sport, dport is 0
            row = {"proto": e["proto"], "src": e["reply_dst"], "sport": e["reply_sport"] if icmp else e["reply_dport"],
                   "dst": e["reply_src"], "dport": 0 if icmp else e["reply_sport"], "first_ts_ns": ts,
                   "last_ts_ns": ts, "source": f"{name} line {e['line']}", "closed": False}
            live[key] = row
            rows.append(row)
        if ts is not None:
            row["first_ts_ns"] = ts if row["first_ts_ns"] is None else min(row["first_ts_ns"], ts)
            row["last_ts_ns"] = ts if row["last_ts_ns"] is None else max(row["last_ts_ns"], ts)
        row["closed"] = row["closed"] or e["event"] == "DESTROY"
    return node_tuples(sorted(rows, key=lambda r: (r["first_ts_ns"] or 0, r["source"])))


def conntrack_record(record: ConntrackRecord | str | os.PathLike[str] | Iterable[str],
                     name: str = "conntrack") -> ConntrackRecord:
    """A node's conntrack record as natproof.conntrack reads it, with its checks (no entry, a DOCTYPE, a damaged
    gzip file: InputError): a ConntrackRecord as it is, a path read with read_conntrack, lines parsed as a file of
    them called ``name``."""
    from natproof.conntrack import ConntrackRecord, parse_conntrack, read_conntrack

    if isinstance(record, ConntrackRecord):
        return record
    if isinstance(record, str | os.PathLike):
        return read_conntrack(record)
    return parse_conntrack("\n".join(record), name)


# ------------------------------------------------------------------------------------------- the records

IDLE_TIMEOUT_S = 350
"""AWS ("NAT gateway basics"): a connection through a NAT gateway idle for 350 seconds times out. Records of one
5-tuple further apart than this are two uses of it (two connections)."""


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
    """OK records with the columns the join reads; a format without interface-id puts every record on "-". A record
    with one of start and end takes it for both; one with neither (a format without them, or '-') is *undated*:
    null start_s and end_s, which no time rules out (see _overlaps)."""
    f = flowlog.flows()
    return f.select(
        pl.col("interface_id").fill_null("-"), "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
        pl.col("packets").fill_null(0), pl.col("bytes").fill_null(0),
        pl.coalesce("start_s", "end_s").alias("start_s"), pl.coalesce("end_s", "start_s").alias("end_s"),
        "pkt_srcaddr", "pkt_dstaddr", (pl.col("file") + ":" + pl.col("line_no").cast(pl.String)).alias("where"),
    )


def _overlaps(lo: pl.Expr, hi: pl.Expr, *, undated: bool = True) -> pl.Expr:
    """A record or use whose [start_s, end_s] meets [lo, hi] (null bounds: no limit). An undated one (null start_s
    and end_s) meets every window with ``undated``, none without."""
    dated = (lo.is_null() | (pl.col("end_s") >= lo)) & (hi.is_null() | (pl.col("start_s") <= hi))
    return pl.when(pl.col("start_s").is_null()).then(pl.lit(undated) | (lo.is_null() & hi.is_null())).otherwise(dated)


def _uses(records: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Records of one 5-tuple grouped into uses: a new use after IDLE_TIMEOUT_S without a record. Per use: packets,
    bytes, start_s, end_s and the records (file:line)."""
    # Sorted by tuple and time, a use starts where the tuple changes or after a gap: one pass, no window function.
    same = pl.all_horizontal(pl.col(k).eq_missing(pl.col(k).shift(1)) for k in keys)
    # Records without a time (null start_s, sorted first) cannot be told into uses: a tuple's are taken for one, apart
    # from its dated ones.
    undated = pl.col("start_s").is_null()
    new = (~same.fill_null(False) | (undated != undated.shift(1)).fill_null(True)
           | ((pl.col("start_s") - pl.col("end_s").shift(1)) > IDLE_TIMEOUT_S).fill_null(False))
    return (records.sort(*keys, "start_s").with_columns(new.cum_sum().alias("_use"))
            .group_by("_use", maintain_order=True)
            .agg(*(pl.col(k).first() for k in keys), pl.col("packets").sum(), pl.col("bytes").sum(),
                 pl.col("start_s").min(), pl.col("end_s").max(), pl.col("where").alias("records"))
            .drop("_use"))


def _meets(a_start: str, a_end: str, b_start: str, b_end: str) -> pl.Expr:
    """Two spans of time that overlap, or one of them undated (null): time does not rule them apart."""
    return ((pl.col(b_end) >= pl.col(a_start)) & (pl.col(b_start) <= pl.col(a_end))).fill_null(True)


def _with_replies(out: pl.DataFrame, back: pl.DataFrame, on: list[str], extra: pl.Expr | None = None) -> pl.DataFrame:
    """Each use of ``out`` with the counts of its reply use(s) in ``back`` (joined on ``on``, overlapping in time)."""
    back = back.rename({"packets": "reply_packets", "bytes": "reply_bytes", "start_s": "_rs", "end_s": "_re",
                        "records": "reply_records"})
    cond = _meets("start_s", "end_s", "_rs", "_re")
    if extra is not None:
        cond = cond & extra
    matched = (out.with_row_index("_row").join(back, on=on, how="inner").filter(cond)
               .group_by("_row").agg(pl.col("reply_packets").sum(), pl.col("reply_bytes").sum(),
                                     pl.col("reply_records").list.explode(keep_nulls=False, empty_as_null=False)))
    return (out.with_row_index("_row").join(matched, on="_row", how="left").drop("_row")
            .with_columns(pl.col("reply_records").fill_null(pl.lit([], pl.List(pl.String)))))


@dataclass(frozen=True)
class GatewaySides:
    """A NAT gateway interface's records as uses of each side (see the module docstring for which record is which).

    ``private``: the nodes' side, one row per use of a node tuple: interface_id, gateway_private, gateway_public,
    protocol, node, node_port, dst (pkt-dstaddr; null in the default format, which does not name it), dport,
    packets, bytes, start_s, end_s, records, and its reply's reply_packets, reply_bytes (null: no reply logged),
    reply_records. ``public``: the gateway's side, one row per use of a gateway port: interface_id,
    gateway_private, gateway_address (pkt-srcaddr: the gateway address the port belongs to), gateway_public,
    protocol, sport, dst, dport, the counts and records, and its reply's. ``interfaces``: gateway_interfaces.
    ``elsewhere``: records on other interfaces (protocol, srcaddr, srcport, dstport, start_s, end_s,
    interface_id)."""

    interfaces: pl.DataFrame
    private: pl.DataFrame
    public: pl.DataFrame
    elsewhere: pl.DataFrame


VPC_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                        "100.64.0.0/10", "fc00::/7"))
"""Addresses a VPC uses for itself (RFC 1918, RFC 6598, IPv6 ULA). Without pkt-* fields, a record between the gateway
and one of these is taken for its private side (a node), any other address for the internet."""


def in_vpc(address: str) -> bool:
    """Whether ``address`` is in VPC_NETWORKS (an unparsable one is not)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in VPC_NETWORKS if net.version == ip.version)


def gateway_sides(flowlog: FlowLog, gateways: Sequence[NatGateway]) -> GatewaySides:
    """Classify the gateways' interface records by side and direction, and group each side into uses. With the
    pkt-* fields the packet's own addresses say the side (AWS's NAT gateway example); without them (the default
    format) a VPC address (VPC_NETWORKS) is taken for a node and any other for the internet. Give every address of
    a gateway with secondary addresses (--nat-gateway for each): pkt-srcaddr names the one a port belongs to."""
    privates = [g.private for g in gateways]
    public_of = {g.private: g.public for g in gateways}
    ifaces = gateway_interfaces(flowlog, gateways)
    flows = _flows(flowlog)
    on_gw = flows.join(ifaces.select("interface_id", "gateway_private", "gateway_public"), on="interface_id")
    gw, src, dst = pl.col("gateway_private"), pl.col("srcaddr"), pl.col("dstaddr")
    psrc, pdst = pl.col("pkt_srcaddr"), pl.col("pkt_dstaddr")
    to_gw = (dst == gw) & (src != gw)
    from_gw = (src == gw) & (dst != gw)
    # Without pkt-* fields (the default format) "X -> gateway" is a node's egress or a far end's reply, and
    # "gateway -> X" the gateway's egress or a reply to a node: a VPC address (VPC_NETWORKS) is taken for a node.
    addresses = pl.concat([on_gw["srcaddr"], on_gw["dstaddr"]]).unique().drop_nulls().to_list()
    vpc = [a for a in addresses if in_vpc(a)]
    node_src, node_dst = src.is_in(vpc), dst.is_in(vpc)
    node_egress = on_gw.filter(to_gw & pl.when(pdst.is_null()).then(node_src).otherwise(~pdst.is_in(privates))).select(
        "interface_id", "gateway_private", "gateway_public", "protocol", src.alias("node"),
        pl.col("srcport").alias("node_port"), pdst.alias("dst"), pl.col("dstport").alias("dport"),
        "packets", "bytes", "start_s", "end_s", "where")
    node_reply = on_gw.filter(from_gw & pl.when(psrc.is_null()).then(node_dst).otherwise(~psrc.is_in(privates))).select(
        "interface_id", "protocol", dst.alias("node"), pl.col("dstport").alias("node_port"),
        psrc.alias("_remote"), pl.col("srcport").alias("dport"), "packets", "bytes", "start_s", "end_s", "where")
    keys = ["interface_id", "gateway_private", "gateway_public", "protocol", "node", "node_port", "dst", "dport"]
    private = _with_replies(
        _uses(node_egress, keys), _uses(node_reply, ["interface_id", "protocol", "node", "node_port", "_remote",
                                                     "dport"]),
        ["interface_id", "protocol", "node", "node_port", "dport"],
        pl.col("dst").is_null() | pl.col("_remote").is_null() | (pl.col("dst") == pl.col("_remote")))
    gw_egress = on_gw.filter(from_gw & pl.when(psrc.is_null()).then(~node_dst).otherwise(psrc.is_in(privates))).select(
        "interface_id", "gateway_private", pl.coalesce(psrc, src).alias("gateway_address"), "protocol",
        pl.col("srcport").alias("sport"), dst.alias("dst"), pl.col("dstport").alias("dport"), "packets", "bytes",
        "start_s", "end_s", "where")
    gw_reply = on_gw.filter(to_gw & pl.when(pdst.is_null()).then(~node_src).otherwise(pdst.is_in(privates))).select(
        "interface_id", pl.coalesce(pdst, dst).alias("gateway_address"), "protocol",
        pl.col("dstport").alias("sport"), src.alias("dst"), pl.col("srcport").alias("dport"), "packets", "bytes",
        "start_s", "end_s", "where")
    pkeys = ["interface_id", "gateway_address", "protocol", "sport", "dst", "dport"]
    public = _with_replies(_uses(gw_egress, ["gateway_private", *pkeys]), _uses(gw_reply, pkeys), pkeys)
    public = public.with_columns(pl.col("gateway_address").replace_strict(public_of, default=None,
                                                                          return_dtype=pl.String)
                                 .alias("gateway_public"))
    elsewhere = flows.join(ifaces.select("interface_id"), on="interface_id", how="anti").select(
        "protocol", "srcaddr", "srcport", "dstport", "start_s", "end_s", "interface_id")
    return GatewaySides(ifaces, private, public, elsewhere)


def _same_counts(a: str = "", b: str = "p_") -> pl.Expr:
    """Both directions' packets and bytes equal between two uses (a direction logged on one side only: not)."""
    def c(prefix: str, name: str) -> pl.Expr:
        return pl.col(f"{prefix}{name}")

    replies = ((c(a, "reply_packets").is_null() & c(b, "reply_packets").is_null())
               | ((c(a, "reply_packets") == c(b, "reply_packets")) & (c(a, "reply_bytes") == c(b, "reply_bytes"))))
    return replies.fill_null(False)


def _close_in_time(slack_s: int, a: str = "", b: str = "p_") -> pl.Expr:
    """Two uses of the same packets: their starts and ends each within ``slack_s`` (each record may lag). An undated
    use (null times) is close to any: time does not rule it out."""
    return (((pl.col(f"{a}start_s") - pl.col(f"{b}start_s")).abs() <= slack_s)
            & ((pl.col(f"{a}end_s") - pl.col(f"{b}end_s")).abs() <= slack_s)).fill_null(True)


_PUBLIC_COLS = ["interface_id", "gateway_private", "gateway_public", "gateway_address", "sport", "packets", "bytes",
                "reply_packets", "reply_bytes", "start_s", "end_s", "records"]
_NODE_COLS = ["packets", "bytes", "reply_packets", "reply_bytes", "start_s", "end_s", "records"]


def require_gateways(gateways: Sequence[NatGateway]) -> None:
    """InputError when ``gateways`` is empty: join_nat_gateway has no interface to join node tuples on. A caller
    that will join (who on a node tuple, a chain with a flow log) checks the gateways given or inferred
    (infer_gateways) with it before the work that makes the tuples, so that the refusal comes first."""
    if not gateways:
        raise InputError("no NAT gateway given: pass ", GIVE_GATEWAYS, " (aws ec2 describe-nat-gateways)")


def join_nat_gateway(node_tuples: pl.DataFrame, flowlog: FlowLog, gateways: Sequence[NatGateway], *,
                     lag_s: float = LAG_S, tolerance_s: float = TOLERANCE_S) -> pl.DataFrame:
    """For each node-side tuple (NODE_TUPLE_SCHEMA: the node's address:port -> destination, after the node's own
    NAT), the NAT gateway tuple(s) the flow log allows, with the evidence.

    The node side is the use(s) of the tuple on a gateway's interface (gateway_sides: srcaddr, srcport = the
    node's; dstport = the destination's; pkt-dstaddr the destination when the format has it) that overlap the
    tuple's time, from ``tolerance_s`` before its first packet to ``lag_s + tolerance_s`` after its last. A
    candidate is a use of a gateway port on the same interface to the same destination and protocol whose packets
    and bytes equal the node side's in each direction (the gateway forwards the same packets; a direction logged
    on one side only rules it out) and whose start and end are each within ``lag_s + tolerance_s`` of the node
    side's. Joins are on these keys, counts included: many connections to one destination do not multiply.

    Returns one row per node tuple, in its order: its columns, then ``evidence`` ("flow log, unique candidate",
    "flow log, ambiguous: N candidates" or "no candidate"), ``candidates`` (consistent candidates), ``why`` (one
    sentence), ``interface_id``, ``gateway_private``, ``gateway_public``, ``gateway_sport`` (set only for a unique
    candidate), ``node_side`` (struct: packets, bytes, reply_packets, reply_bytes, start_s, end_s, records as
    file:line), ``gateway_tuples`` (list of struct, the consistent candidates: interface_id, gateway_private,
    gateway_public, gateway_address, sport, the counts, start_s, end_s, records) and ``ruled_out`` (uses of gateway
    ports to the same destination in the window that the counts or times rule out).
    """
    missing = [c for c in NODE_TUPLE_SCHEMA if c not in node_tuples.columns]
    if missing:
        raise ValueError(f"node_tuples lacks {', '.join(missing)} (see NODE_TUPLE_SCHEMA)")
    require_gateways(gateways)
    slack = int(lag_s + tolerance_s) + 1
    n = node_tuples.select(
        "node_tuple", "src", "sport", "dst", "dport",
        pl.coalesce(pl.col("proto").replace_strict({v: k for k, v in PROTOCOLS.items()}, default=None,
                                                   return_dtype=pl.Int32),
                    pl.col("proto").cast(pl.Int32, strict=False)).alias("protocol"),
        (pl.col("first_ts_ns") // 10**9 - int(tolerance_s) - 1).alias("lo"),
        ((pl.col("last_ts_ns") + 10**9 - 1) // 10**9 + slack).alias("hi"),
    )
    sides = gateway_sides(flowlog, gateways)
    # The node side: uses of the node tuple on a gateway's interface, in its window.
    node = (sides.private.join(n, left_on=["protocol", "node", "node_port", "dport"],
                               right_on=["protocol", "src", "sport", "dport"])
            .filter(_overlaps(pl.col("lo"), pl.col("hi"))
                    & (pl.col("dst").is_null() | (pl.col("dst") == pl.col("dst_right"))))
            .drop("dst").rename({"dst_right": "dst"}))
    node = node.sort("node_tuple", "start_s").with_row_index("_side")
    # Candidates: joined on the interface, destination and counts (equal or no candidate), then checked in time.
    pub = sides.public.rename({c: f"p_{c}" for c in sides.public.columns})
    cands = (node.join(pub, left_on=["interface_id", "protocol", "dst", "dport", "packets", "bytes"],
                       right_on=["p_interface_id", "p_protocol", "p_dst", "p_dport", "p_packets", "p_bytes"])
             # the gateway's copy of the packets is no earlier than the node's first packet: in the node's window too
             .filter(_same_counts() & _close_in_time(slack)
                     & (pl.col("lo").is_null() | (pl.col("p_end_s") >= pl.col("lo"))).fill_null(True)
                     & (pl.col("hi").is_null() | (pl.col("p_start_s") <= pl.col("hi"))).fill_null(True)))
    cands = cands.with_columns(pl.col("interface_id").alias("p_interface_id"), pl.col("packets").alias("p_packets"),
                               pl.col("bytes").alias("p_bytes"))
    cand = pl.struct(*(pl.col(f"p_{c}").alias(c) for c in _PUBLIC_COLS[:-1]),
                     pl.concat_list("p_records", "p_reply_records").alias("records"))
    per_tuple = (cands.sort("node_tuple", "p_start_s", "p_sport").group_by("node_tuple")
                 .agg(cand.unique(maintain_order=True).alias("gateway_tuples")))
    first = (node.group_by("node_tuple", maintain_order=True)
             .agg(pl.col("interface_id").first(), pl.col("gateway_private").first(), pl.col("gateway_public").first(),
                  pl.struct(*_NODE_COLS[:-1], pl.concat_list("records", "reply_records").alias("records"))
                  .first().alias("node_side")))
    in_window = _count_overlapping(sides.public, n)
    elsewhere = (sides.elsewhere.join(n, left_on=["protocol", "srcaddr", "srcport", "dstport"],
                                      right_on=["protocol", "src", "sport", "dport"])
                 .filter(_overlaps(pl.col("lo"), pl.col("hi")))
                 .group_by("node_tuple").agg(pl.col("interface_id").unique().sort().alias("other_interfaces")))
    out = (node_tuples.join(first, on="node_tuple", how="left").join(per_tuple, on="node_tuple", how="left")
           .join(in_window, on="node_tuple", how="left").join(elsewhere, on="node_tuple", how="left")
           .sort("node_tuple")
           .with_columns(pl.col("gateway_tuples").fill_null([]), pl.col("in_window").fill_null(0)))
    out = out.with_columns(pl.col("gateway_tuples").list.len().cast(pl.UInt32).alias("candidates"))
    out = out.with_columns((pl.col("in_window").cast(pl.Int64) - pl.col("candidates")).clip(0).cast(pl.UInt32)
                           .alias("ruled_out"))
    gw_ifaces = sides.interfaces["interface_id"].unique().sort().to_list()
    out = out.with_columns(_evidence_expr(pl.col("candidates")).alias("evidence"),
                           _why_expr(gw_ifaces, lag_s, tolerance_s).alias("why"),
                           pl.when(pl.col("candidates") == 1)
                           .then(pl.col("gateway_tuples").list.first().struct.field("sport"))
                           .cast(pl.Int32).alias("gateway_sport"))
    return out.select(*NODE_TUPLE_SCHEMA, "evidence", "candidates", "why", "interface_id", "gateway_private",
                      "gateway_public", "gateway_sport", "node_side", "gateway_tuples", "ruled_out")


def _count_overlapping(public: pl.DataFrame, n: pl.DataFrame) -> pl.DataFrame:
    """Per node tuple: uses of gateway ports to its destination (protocol, address, port) that meet its window,
    counted from sorted starts and ends (uses started by its end minus those ended before its start), so that
    thousands of connections to one destination cost a sort, not a cross product."""
    keys = ["protocol", "dst", "dport"]
    lo = pl.col("lo").fill_null(-(2**62))
    hi = pl.col("hi").fill_null(2**62)
    q = n.select("node_tuple", *keys, lo.alias("lo"), hi.alias("hi"))
    # Undated uses (no start or end) are in every window: counted per destination, beside the dated ones.
    undated = public.filter(pl.col("start_s").is_null()).group_by(keys).len("undated")
    public = public.filter(pl.col("start_s").is_not_null())
    starts = (public.select(*keys, "start_s").sort(*keys, "start_s")
              .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(keys).alias("started")))
    ends = (public.select(*keys, "end_s").sort(*keys, "end_s")
            .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(keys).alias("ended")))
    a = q.sort(*keys, "hi").join_asof(starts, left_on="hi", right_on="start_s", by=keys, strategy="backward",
                                      check_sortedness=False)
    b = q.with_columns((pl.col("lo") - 1).alias("before")).sort(*keys, "before").join_asof(
        ends, left_on="before", right_on="end_s", by=keys, strategy="backward", check_sortedness=False)
    return (a.select("node_tuple", *keys, pl.col("started").fill_null(0))
            .join(b.select("node_tuple", pl.col("ended").fill_null(0)), on="node_tuple")
            .join(undated, on=keys, how="left", nulls_equal=True)
            .select("node_tuple", ((pl.col("started") - pl.col("ended")).clip(0)
                                   + pl.col("undated").fill_null(0)).alias("in_window")))


def _evidence_expr(candidates: pl.Expr) -> pl.Expr:
    """evidence_level as an expression."""
    return (pl.when(candidates == 0).then(pl.lit(EVIDENCE_NONE)).when(candidates == 1).then(pl.lit(EVIDENCE_UNIQUE))
            .otherwise(pl.format("flow log, ambiguous: {} candidates", candidates)))


def _address_expr(addr: str, port: str) -> pl.Expr:
    """format_address as an expression: 10.0.1.5:40000, [2001:db8::1]:443."""
    a, p = pl.col(addr), pl.col(port)
    return pl.when(a.str.contains(":", literal=True)).then(pl.format("[{}]:{}", a, p)).otherwise(
        pl.format("{}:{}", a, p))


def _why_expr(gw_ifaces: list[str], lag_s: float, tolerance_s: float) -> pl.Expr:
    """The one-sentence reason for each joined node tuple's evidence (column expressions, no loop per row)."""
    if not gw_ifaces:
        return pl.lit("no record carries a given NAT gateway's private address: the flow log is not of the gateway's "
                      "interface, or --nat-gateway names another gateway")
    tup = pl.format("{} {} -> {}", pl.col("proto"), _address_expr("src", "sport"), _address_expr("dst", "dport"))
    target = _address_expr("dst", "dport")
    ns = pl.col("node_side")
    span = (pl.when(pl.col("first_ts_ns").is_null()).then(pl.lit("at any time"))
            .when(ns.is_not_null() & ns.struct.field("start_s").is_null())
            .then(pl.lit("at any time (its records carry no start or end time)"))
            .otherwise(pl.lit(f"between {tolerance_s:g} s before its first packet and {lag_s + tolerance_s:g} s after "
                              "its last")))
    counts = pl.format("({} packets/{} bytes out, {}/{} back)", ns.struct.field("packets"), ns.struct.field("bytes"),
                       ns.struct.field("reply_packets").fill_null(0), ns.struct.field("reply_bytes").fill_null(0))
    ruled = pl.when(pl.col("ruled_out") > 0).then(
        pl.format("; {} other(s) to it ruled out by their counts", pl.col("ruled_out"))).otherwise(pl.lit(""))
    ports = pl.col("gateway_tuples").list.eval(pl.element().struct.field("sport").cast(pl.String)).list.join(", ")
    others = pl.col("other_interfaces").list.join(", ")
    return (
        pl.when(ns.is_null() & pl.col("other_interfaces").list.len().fill_null(0).gt(0))
        .then(pl.format("{} is only on interface(s) {}, which no given NAT gateway owns (gateway interfaces: {}): the "
                        "flow log of the node's own interface does not show the gateway's port; log the gateway's",
                        tup, others, pl.lit(", ".join(gw_ifaces))))
        .when(ns.is_null()).then(pl.format("no record of {} on the gateway's interface {}", tup, span))
        .when((pl.col("candidates") == 0) & (pl.col("ruled_out") == 0))
        .then(pl.format("the gateway's interface logged {} on its private side, but no public-side record to {} {}",
                        tup, target, span))
        .when(pl.col("candidates") == 0)
        .then(pl.format("{} public-side flow(s) to {} {}, none with the private side's counts {}",
                        pl.col("ruled_out"), target, span, counts))
        .when(pl.col("candidates") == 1)
        .then(pl.format("the only public-side flow to {} {} with the private side's counts {}{}", target, span, counts,
                        ruled))
        .otherwise(pl.format("{} public-side flows to {} {} have the private side's counts (gateway ports {}): the "
                             "records cannot tell which one carried {}", pl.col("candidates"), target, span, ports,
                             tup)))


# ---------------------------------------------------------------------------------- from the public tuple

ASKED_TIME = Said("at_ns", "--at")
"""A time asked about (trace_public's and who_via_gateway's ``at_ns``, who's --at)."""


UNDATED = "no record has a start or end time (its format has no start and end fields, or they read '-')"
"""What is said of a flow log none of whose records of traffic has a time (FlowLog.dated false)."""


def require_times(flowlog: FlowLog) -> None:
    """InputError (naming the files) when no record of traffic has a start or end time: a time asked about cannot be
    placed among them (a port is reused over time). Records without times are otherwise joined at any time."""
    if not flowlog.dated():
        raise InputError(f"{flowlog.named()}: {UNDATED}: ", ASKED_TIME, " cannot be placed among them; leave it out "
                         "to take the port's records at any time")


def undated_uses(flowlog: FlowLog, gateway: NatGateway, port: int) -> int:
    """Uses of ``gateway``'s ``port`` whose records have no start or end time: no time asked about can reach them."""
    public = gateway_sides(flowlog, [gateway]).public
    return public.filter((pl.col("gateway_address") == gateway.private) & (pl.col("sport") == port)
                         & pl.col("start_s").is_null()).height


def trace_public(flowlog: FlowLog, gateways: Sequence[NatGateway], address: str, port: int, *,
                 at_ns: int | None = None, window_s: float = 60.0, peer: tuple[str, int | None] | None = None,
                 lag_s: float = LAG_S, tolerance_s: float = TOLERANCE_S) -> pl.DataFrame:
    """From a gateway's public (or private) address and port, as an abuse report names it, to the node tuple(s).

    Finds the uses of that gateway port (within ``window_s`` of ``at_ns`` when given, widened by ``lag_s`` after
    and ``tolerance_s`` both ways: a use whose records have no start or end time is then left out, see undated_uses;
    without ``at_ns`` every use; to ``peer`` = (address, port or None) when given), then for each the uses of
    node tuples on the same interface to the same destination whose counts equal its own in each direction and
    whose times are within the records' lag (the same rule as join_nat_gateway, run backwards).

    One row per use of the port: interface_id, gateway_private, gateway_public, sport (the gateway's port),
    proto, dst, dport, packets, bytes, reply_packets, reply_bytes, start_s, end_s, records, then ``evidence``,
    ``candidates``, ``why`` and ``nodes`` (list of struct: src, sport, packets, bytes, reply_packets, reply_bytes,
    start_s, end_s, records) and ``others`` (node tuples to the destination near it that the counts rule out).
    Raises InputError when ``address`` is none of the gateways' addresses, and with ``at_ns`` when no record has a
    time (require_times).
    """
    gw = [g for g in gateways if address in (g.private, g.public)]
    if not gw:
        known = ", ".join(str(g) for g in gateways) or "none given"
        raise InputError(f"{address} is not a given NAT gateway's address (", GIVE_GATEWAYS, f"; given: {known})")
    if at_ns is not None:
        require_times(flowlog)
    sides = gateway_sides(flowlog, gateways)
    lo = hi = None
    if at_ns is not None:
        lo = at_ns // 10**9 - int(window_s + tolerance_s) - 1
        hi = at_ns // 10**9 + int(window_s + lag_s + tolerance_s) + 1
    pub = sides.public.filter(pl.col("gateway_address").is_in([g.private for g in gw]) & (pl.col("sport") == port)
                              & _overlaps(pl.lit(lo, pl.Int64), pl.lit(hi, pl.Int64), undated=False))
    if peer is not None:
        pub = pub.filter(pl.col("dst") == peer[0])
        if peer[1] is not None:
            pub = pub.filter(pl.col("dport") == peer[1])
    pub = pub.sort("start_s", "dst", "dport").with_row_index("_flow")
    slack = int(lag_s + tolerance_s) + 1
    priv = sides.private.rename({c: f"p_{c}" for c in sides.private.columns})
    near = (pub.join(priv, left_on=["interface_id", "protocol", "dport"], right_on=["p_interface_id", "p_protocol",
                                                                                   "p_dport"])
            .filter((pl.col("p_dst").is_null() | (pl.col("p_dst") == pl.col("dst")))
                    & (pl.col("p_node") != pl.col("dst")) & _close_in_time(slack)))
    same = ((pl.col("packets") == pl.col("p_packets")) & (pl.col("bytes") == pl.col("p_bytes")) & _same_counts())
    node = pl.struct(pl.col("p_node").alias("src"), pl.col("p_node_port").alias("sport"),
                     *(pl.col(f"p_{c}").alias(c) for c in _NODE_COLS[:-1]),
                     pl.concat_list("p_records", "p_reply_records").alias("records"))
    near = near.with_columns(same.fill_null(False).alias("_same")).sort("_flow", "p_start_s", "p_node", "p_node_port")
    lists = near.group_by("_flow").agg(node.filter(pl.col("_same")).alias("nodes"),
                                       node.filter(~pl.col("_same")).alias("others"))
    pub = pub.join(lists, on="_flow", how="left").sort("_flow")
    rows = []
    for p in pub.iter_rows(named=True):
        good, others = p["nodes"] or [], p["others"] or []
        evidence, why = _explain_public(p, good, others, lag_s + tolerance_s)
        rows.append({"interface_id": p["interface_id"], "gateway_private": p["gateway_private"],
                     "gateway_public": p["gateway_public"], "sport": port,
                     "proto": PROTOCOLS.get(p["protocol"], str(p["protocol"])), "dst": p["dst"], "dport": p["dport"],
                     "packets": p["packets"], "bytes": p["bytes"], "reply_packets": p["reply_packets"],
                     "reply_bytes": p["reply_bytes"], "start_s": p["start_s"], "end_s": p["end_s"],
                     "records": p["records"] + p["reply_records"], "evidence": evidence,
                     "candidates": len(good), "why": why, "nodes": good, "others": others})
    node_t = pl.Struct({"src": pl.String, "sport": pl.Int32, "packets": pl.Int64, "bytes": pl.Int64,
                        "reply_packets": pl.Int64, "reply_bytes": pl.Int64, "start_s": pl.Int64, "end_s": pl.Int64,
                        "records": pl.List(pl.String)})
    schema = {"interface_id": pl.String, "gateway_private": pl.String, "gateway_public": pl.String,
              "sport": pl.Int32, "proto": pl.String, "dst": pl.String, "dport": pl.Int32, "packets": pl.Int64,
              "bytes": pl.Int64, "reply_packets": pl.Int64, "reply_bytes": pl.Int64, "start_s": pl.Int64,
              "end_s": pl.Int64, "records": pl.List(pl.String), "evidence": pl.String, "candidates": pl.UInt32,
              "why": pl.String, "nodes": pl.List(node_t), "others": pl.List(node_t)}
    return pl.DataFrame(rows, schema=schema)


def _explain_public(p: dict[str, Any], good: list[dict[str, Any]], others: list[dict[str, Any]],
                    slack_s: float) -> tuple[str, str]:
    """(evidence, why) for one use of the asked gateway port."""
    from natproof.report.table import format_address

    target = format_address(p["dst"], p["dport"])
    near = (f"within {slack_s:g} s" if p["start_s"] is not None
            else "at any time (this flow's records carry no start or end time)")
    if not good and not others:
        of_it = " of this flow" if p["start_s"] is not None else ""
        why = (f"no private-side record to {target} on the gateway's interface {near}{of_it}: "
               "the node side was not logged (a flow log filtered to REJECT, or of another interface)")
    elif not good:
        why = (f"{len(others)} private-side flow(s) to {target} near it, none with its counts ({p['packets']} "
               f"packets/{p['bytes']} bytes out, {p['reply_packets'] or 0}/{p['reply_bytes'] or 0} back)")
    elif len(good) == 1:
        why = (f"the only private-side flow to {target} {near} with its counts"
               + (f"; {len(others)} other(s) ruled out by their counts" if others else ""))
    else:
        nodes = ", ".join(format_address(g["src"], g["sport"]) for g in good)
        why = (f"{len(good)} private-side flows to {target} {near} have its counts ({nodes}): the "
               "records cannot tell which node sent it")
    return evidence_level(len(good)), why
