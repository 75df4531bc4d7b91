"""Hold a correlation against the kernel's own conntrack record: confirmed, contradicted, or absent and why."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Sequence

import polars as pl

from natproof.assemble import Services, in_networks
from natproof.connections import IdleTimeouts
from natproof.conntrack import ConntrackRecord, read_conntrack
from natproof.result import CONNECTION_SCHEMA, Result, unmatched_inside

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

KERNEL_STATES = ("confirmed", "contradicts", "absent")
"""A connection's ``kernel`` (null when no record was given):

confirmed: the record holds an entry, in time, with the connection's original tuple and, as its reply tuple, the
translated tuple reversed (conntrack's reply tuple is what the kernel expects back: source NAT shows in its
destination, destination NAT in its source). When no capture showed the translated tuple, an entry with the
original tuple confirms the connection and gives the translated tuple (``evidence_level`` kernel_record).
contradicts: entries in time have the original tuple but none has the captured mapping (a finding).
absent: no entry in time has the original tuple; ``kernel_reason`` says which of ABSENT_REASONS allows it."""

ABSENT_REASONS = {
    "dropped_before_confirmation":
        "nothing of it crossed the node: a packet dropped before conntrack confirms its entry (an unreplied SYN "
        "dropped in FORWARD, a REJECT, a port pool with no free port) leaves no entry and no event",
    "record_starts_after":
        "the event log starts after the connection began: its NEW event came before the listener",
    "record_ends_before": "the event log ends before the connection began",
    "snapshot_after_expiry":
        "a listing (conntrack -L, /proc/net/nf_conntrack) holds only the entries alive when it was taken: this "
        "one had closed or timed out by then",
    "not_recorded":
        "no entry although the event log covers its time: the listener lost events (ENOBUFS when its socket "
        "buffer fills: raise conntrack -E -b, or listen for NEW alone) or did not listen for its event types",
    "not_tracked":
        "pod-to-pod traffic on one bridge is bridged, not routed: conntrack sees it only when br_netfilter hands "
        "bridged frames to iptables (net.bridge.bridge-nf-call-iptables=1)",
}
"""Why a connection can be absent from the kernel's record, by ``kernel_reason``."""

EVIDENCE_LEVELS = {
    "packets": "the translated tuple is proven by packets: the same packets seen before and after the NAT",
    "kernel_record": "the translated tuple comes from the kernel's conntrack record alone (no capture showed the "
                     "leg after the NAT)",
}
"""``evidence_level`` values: what the connection's translated tuple rests on (null when it has none)."""

_KEY = ["proto", "orig_src", "orig_sport", "orig_dst", "orig_dport"]
_REPLY = ["reply_src", "reply_sport", "reply_dst", "reply_dport"]
_ICMP = ("icmp", "icmpv6")

FLOW_SCHEMA: dict[str, pl.DataType] = {
    "flow": pl.UInt32(),
    "line": pl.UInt32(),
    "kind": pl.String(),
    "proto": pl.String(),
    "orig_src": pl.String(), "orig_sport": pl.UInt16(), "orig_dst": pl.String(), "orig_dport": pl.UInt16(),
    "reply_src": pl.String(), "reply_sport": pl.UInt16(), "reply_dst": pl.String(), "reply_dport": pl.UInt16(),
    "zone": pl.UInt16(),
    "has_new": pl.Boolean(),
    "start_ts_ns": pl.Int64(),
    "end_ts_ns": pl.Int64(),
    "last_ts_ns": pl.Int64(),
    "state": pl.String(),
    "assured": pl.Boolean(),
    "replied": pl.Boolean(),
    "lines": pl.UInt32(),
}
"""One row per entry's life in the record (kernel_flows). proto: natproof's name (icmpv6 is icmp). kind: events or
listing. line: its NEW event's line, else its first line. start_ts_ns: its first event's stamp (null for a
listing); end_ts_ns: its DESTROY's stamp (null while it lived on); state, assured, replied: as last recorded
(replied: some line had no [UNREPLIED]). A listing line that repeats an entry the events leave alive is that
entry's (kernel_flows), not a row of its own."""


def kernel_flows(entries: pl.DataFrame) -> pl.DataFrame:
    """Entries (natproof.conntrack.ENTRY_SCHEMA) grouped into the lives of kernel entries (FLOW_SCHEMA).

    Events of one original tuple, in time order, are one entry until a DESTROY, a second NEW, or another reply
    tuple (an entry's reply tuple is fixed once conntrack confirms it) starts the next: conntrack ids are reused
    and identify nothing over time. Two listeners stamp events on their own, so an UPDATE may carry an earlier
    stamp than its NEW: a NEW after an UPDATE does not start a new entry. Every listing line is an entry, but one
    that repeats an entry the events leave alive (same tuples and zone, no DESTROY): that is the same entry, once,
    with the events' times (the listing was taken while it lived)."""
    e = entries.with_columns(
        pl.col("proto").replace({"icmpv6": "icmp"}),
        pl.col("zone").fill_null(0),
    )
    # By reply tuple too, before time: an entry's events stay together when another entry of the same original
    # tuple begins before the kernel reports the first one's DESTROY (an expired UDP entry is reaped when the next
    # datagram makes a new one: lab udp-remap's events read NEW a, NEW b, DESTROY a, UPDATE b).
    events = e.filter(pl.col("event").is_not_null()).sort([*_KEY, "zone", *_REPLY, "ts_ns", "line"],
                                                          nulls_last=True)
    first = pl.int_range(pl.len()) == 0
    changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in [*_KEY, "zone", *_REPLY]])
    prev = pl.col("event").shift(1)
    starts = first | changed | (prev == "DESTROY") | ((pl.col("event") == "NEW") & (prev == "NEW"))
    events = events.with_columns(starts.cum_sum().cast(pl.UInt32).alias("flow"))
    n_event_flows = int(events["flow"].max() or 0)  # type: ignore[arg-type]
    listing = e.filter(pl.col("event").is_null()).with_row_index("flow", offset=n_event_flows + 1)
    is_new = pl.col("event") == "NEW"
    ev = events.group_by("flow").agg(
        pl.col("line").filter(is_new).min().fill_null(pl.col("line").min()).alias("line"),
        pl.lit("events").alias("kind"),
        *[pl.col(c).first() for c in [*_KEY, *_REPLY, "zone"]],
        is_new.any().alias("has_new"),
        pl.col("ts_ns").min().alias("start_ts_ns"),
        pl.col("ts_ns").filter(pl.col("event") == "DESTROY").max().alias("end_ts_ns"),
        pl.col("ts_ns").max().alias("last_ts_ns"),
        # The state of its last UPDATE or DESTROY: a NEW listener may stamp the NEW after them.
        pl.col("state").filter(~is_new).drop_nulls().last().fill_null(pl.col("state").drop_nulls().first())
        .alias("state"),
        pl.col("assured").any().alias("assured"),
        (~pl.col("unreplied")).any().alias("replied"),
        pl.len().alias("lines"),
    )
    ls = listing.select(
        "flow", "line", pl.lit("listing").alias("kind"), *_KEY, *_REPLY, "zone", pl.lit(False).alias("has_new"),
        pl.lit(None, pl.Int64).alias("start_ts_ns"), pl.lit(None, pl.Int64).alias("end_ts_ns"),
        pl.lit(None, pl.Int64).alias("last_ts_ns"), "state", "assured", (~pl.col("unreplied")).alias("replied"),
        pl.lit(1).alias("lines"),
    )
    # A file with events and a listing (natproof lab's conntrack.log, a listing taken after the traffic) shows a live
    # entry twice: the listing line that repeats an entry the events leave alive (no DESTROY) is that entry, taken
    # once, as its events, which carry its time. Kept as a listing line, it was in time for any connection of its
    # tuple: two captures read a log of another day as confirming what one capture called absent (a helper's trial).
    same = [*_KEY, "zone", *_REPLY]
    alive = ev.filter(pl.col("end_ts_ns").is_null()).select(same).cast({"zone": pl.UInt16}).unique()
    ls = ls.cast({"zone": pl.UInt16}).join(alive, on=same, how="anti", nulls_equal=True)
    flows = pl.concat([ev.select(list(FLOW_SCHEMA)).cast(FLOW_SCHEMA), ls.select(list(FLOW_SCHEMA)).cast(FLOW_SCHEMA)])
    return flows.sort("flow")


def join_kernel(result: Result, record: ConntrackRecord | pl.DataFrame | str | os.PathLike[str], *,
                tolerance_s: float = 1.0) -> Result:
    """The result with every connection held against the kernel's record (a ConntrackRecord, its entries frame
    (natproof.conntrack.ENTRY_SCHEMA, e.g. filtered by a script), or a file to read):
    ``kernel`` (KERNEL_STATES), ``kernel_reason`` (ABSENT_REASONS), the entry it rests on (``kernel_line``, its
    state, flags and reply tuple), and the translated tuple filled from the entry where no capture showed it
    (``evidence_level`` kernel_record; ``rewrites`` and a Service's backend follow); a pod's call the entry DNATed
    to a pod while nothing of it crossed becomes internal, and ``unmatched_inside`` is counted again on those
    verdicts (natproof.result.unmatched_inside).

    "In time": an entry's life (its first event to its DESTROY; from before the log for an entry whose NEW is not
    in it) overlaps the connection's first to last packet, widened by ``tolerance_s`` (the stamps are the
    listener's receive times, up to ~1 ms late, on the node's clock; connections are timed on the inside
    capture's). Listings carry no time: an entry of one is in time for the last connection of its original tuple
    (the kernel keeps one entry per tuple: reopening a tuple replaces the earlier entry). Raises InputError for an
    unreadable record."""
    if isinstance(record, pl.DataFrame):
        record = ConntrackRecord.from_entries(record)
    rec = record if isinstance(record, ConntrackRecord) else read_conntrack(record)
    conns = result.connections
    tol = int(tolerance_s * 1e9) + (1_000_000_000 if any(k == "xml_events" for k in rec.formats) else 0)
    flows = kernel_flows(rec.entries)
    decided = _decide(conns, flows, rec, tol)
    conns = conns.drop([c for c in _KERNEL_COLUMNS if c in conns.columns]).join(decided, on="conn", how="left")
    conns = conns.with_columns((pl.col("trans_src").is_null() & (pl.col("kernel") == "confirmed")).alias("_filled"))
    filled = pl.col("_filled")
    icmp = pl.col("proto").is_in(_ICMP)
    conns = conns.with_columns(
        pl.when(filled).then(pl.col("kernel_reply_dst")).otherwise(pl.col("trans_src")).alias("trans_src"),
        pl.when(filled).then(pl.col("kernel_reply_src")).otherwise(pl.col("trans_dst")).alias("trans_dst"),
        pl.when(filled).then(pl.when(icmp).then(pl.col("kernel_reply_sport")).otherwise(pl.col("kernel_reply_dport")))
        .otherwise(pl.col("trans_sport")).alias("trans_sport"),
        pl.when(filled).then(pl.when(icmp).then(pl.lit(0, pl.UInt16)).otherwise(pl.col("kernel_reply_sport")))
        .otherwise(pl.col("trans_dport")).alias("trans_dport"),
        pl.when(filled).then(pl.lit("kernel_record")).otherwise(pl.col("evidence_level")).alias("evidence_level"),
    )
    rewrites = pl.concat_list([pl.when(pl.col(f"orig_{f}") != pl.col(f"trans_{f}")).then(pl.lit(f))
                               for f in ("src", "sport", "dst", "dport")]).list.drop_nulls()
    backend = filled & pl.col("service_type").is_not_null() & pl.col("backend_ip").is_null()
    # A pod's connection answered while nothing of it crossed, whose entry the kernel DNATed to a pod: answered on
    # the node (a LoadBalancer or external IP, a NodePort, served by a pod of this node), not a capture that missed
    # it: internal, as a ClusterIP served on the node is.
    pods = [ipaddress.ip_network(n) for n in result.pod_networks]
    to_pod = in_networks(conns["trans_dst"], pods) if pods else pl.repeat(False, conns.height, eager=True)
    served_here = (filled & (pl.col("verdict") == "not_captured") & (pl.col("initiator") == "inside")
                   & to_pod & (pl.col("trans_dst") != pl.col("orig_src")))
    conns = conns.with_columns(
        pl.when(served_here).then(pl.lit("internal")).otherwise(pl.col("verdict")).alias("verdict"),
        pl.when(filled).then(rewrites).otherwise(pl.col("rewrites")).alias("rewrites"),
        pl.when(backend).then(pl.col("trans_dst")).otherwise(pl.col("backend_ip")).alias("backend_ip"),
        pl.when(backend).then(pl.col("trans_dport")).otherwise(pl.col("backend_port")).alias("backend_port"),
    )
    conns = conns.select([pl.col(c).cast(t) for c, t in CONNECTION_SCHEMA.items()])
    # Counted again on the verdicts the record decided: a connection it made internal has no packets that should
    # have crossed (a helper's trial: "3 internal" beside "unmatched packets 26 inside", tests/variants/clusterip6).
    return dataclasses.replace(result, connections=conns, conntrack=rec,
                               unmatched_inside=unmatched_inside(result.inside_packets, conns))


_KERNEL_COLUMNS = ("kernel", "kernel_reason", "kernel_line", "kernel_state", "kernel_assured", "kernel_replied",
                   "kernel_reply_src", "kernel_reply_sport", "kernel_reply_dst", "kernel_reply_dport")


def _decide(conns: pl.DataFrame, flows: pl.DataFrame, rec: ConntrackRecord, tol: int) -> pl.DataFrame:
    """Per connection: the kernel columns (_KERNEL_COLUMNS), from its candidate entries."""
    # A listing holds each tuple's current entry only: when the tuple was used again, the entry is the last
    # connection's (an earlier one's was replaced when its tuple was reopened).
    latest = pl.col("first_ts_ns") == pl.col("first_ts_ns").max().over(_KEY)
    c = conns.select(
        "conn", "proto", "orig_src", "orig_sport", "orig_dst", "orig_dport", "first_ts_ns", "last_ts_ns",
        latest.alias("latest_of_tuple"),
        pl.col("trans_src").is_not_null().alias("has_trans"),
        pl.col("trans_dst").alias("exp_src"), pl.col("trans_src").alias("exp_dst"),
        # conntrack's reply tuple is the translated one reversed; ICMP's identifier stays in sport both ways.
        pl.when(pl.col("proto").is_in(_ICMP)).then(pl.col("trans_sport")).otherwise(pl.col("trans_dport"))
        .alias("exp_sport"),
        pl.when(pl.col("proto").is_in(_ICMP)).then(pl.lit(0, pl.UInt16)).otherwise(pl.col("trans_sport"))
        .alias("exp_dport"),
    )
    flows = flows.rename({"start_ts_ns": "flow_start", "end_ts_ns": "flow_end", "last_ts_ns": "flow_last"})
    ported = flows.filter(pl.col("orig_sport").is_not_null())
    # conntrack's XML prints no ICMP identifier: those entries are found by their addresses alone.
    portless = flows.filter(pl.col("orig_sport").is_null()).drop("orig_sport", "orig_dport")
    cand = pl.concat([
        c.join(ported, on=_KEY, how="inner"),
        c.join(portless, on=["proto", "orig_src", "orig_dst"], how="inner"),
    ], how="diagonal_relaxed")
    start, end = pl.col("flow_start"), pl.col("flow_end")
    start_ok = ~pl.col("has_new") | start.is_null() | (start <= pl.col("last_ts_ns") + tol)
    end_ok = end.is_null() | (end >= pl.col("first_ts_ns") - tol)
    match = ((pl.col("reply_src") == pl.col("exp_src")) & (pl.col("reply_dst") == pl.col("exp_dst"))
             & (pl.col("reply_sport").is_null() | (pl.col("reply_sport") == pl.col("exp_sport")))
             & (pl.col("reply_dport").is_null() | (pl.col("reply_dport") == pl.col("exp_dport")))).fill_null(False)
    listed = pl.col("kind") == "listing"
    in_time = pl.when(listed).then(pl.col("latest_of_tuple")).otherwise(start_ok & end_ok)
    cand = cand.with_columns(in_time.alias("in_time"), match.alias("match")).filter("in_time")
    distance = (start - pl.col("first_ts_ns")).abs()
    best = (cand.with_columns(distance.alias("distance"))
            .sort(["conn", "match", "distance", "line"], descending=[False, True, False, False], nulls_last=True)
            .group_by("conn", maintain_order=True).first())
    state = (pl.when(pl.col("match") | ~pl.col("has_trans")).then(pl.lit("confirmed"))
             .otherwise(pl.lit("contradicts")))
    found = best.select(
        "conn", state.alias("kernel"), pl.lit(None, pl.String).alias("kernel_reason"),
        pl.col("line").alias("kernel_line"), pl.col("state").alias("kernel_state"),
        pl.col("assured").alias("kernel_assured"), pl.col("replied").alias("kernel_replied"),
        *[pl.col(f"reply_{f}").alias(f"kernel_reply_{f}") for f in ("src", "sport", "dst", "dport")])
    missing = conns.filter(~pl.col("conn").is_in(found["conn"].implode()))
    first_ts, last_ts = rec.first_ts_ns, rec.last_ts_ns
    if rec.has_events and first_ts is not None:
        timed = (pl.when(pl.col("first_ts_ns") < first_ts).then(pl.lit("record_starts_after"))
                 .when(pl.col("first_ts_ns") > (last_ts or 0) + tol).then(pl.lit("record_ends_before"))
                 .otherwise(pl.lit("not_recorded")))
    elif rec.has_events:
        timed = pl.lit("not_recorded")
    else:
        timed = pl.lit("snapshot_after_expiry")
    dropped = (pl.col("verdict") == "not_forwarded") & (pl.col("fate_crossed") == 0) & (pl.col("fate_leaked") == 0)
    # Out of the log's sight first: a connection wholly before its first event says nothing of what the kernel did
    # with it (a helper's trial: a log of the next day called a dropped connection dropped_before_confirmation, a
    # claim that the log covered it). Not one after its last event: a listener started before the traffic, as it
    # should be, writes nothing for connections dropped before confirmation (lab forwarding-off: every event is
    # from before them).
    if rec.has_events and first_ts is not None:
        outside_log = pl.col("last_ts_ns") < first_ts - tol
    else:
        outside_log = pl.lit(False)
    reason = (pl.when(outside_log).then(timed)
              .when(dropped).then(pl.lit("dropped_before_confirmation"))
              .when((pl.col("verdict") == "internal") & pl.col("trans_src").is_null()).then(pl.lit("not_tracked"))
              .otherwise(timed))
    absent = missing.select(
        "conn", pl.lit("absent").alias("kernel"), reason.alias("kernel_reason"),
        *[pl.lit(None, CONNECTION_SCHEMA[k]).alias(k) for k in _KERNEL_COLUMNS[2:]])
    return pl.concat([found.cast({k: CONNECTION_SCHEMA[k] for k in found.columns if k != "conn"}),
                      absent.cast({k: CONNECTION_SCHEMA[k] for k in absent.columns if k != "conn"})])


_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                                   "fc00::/7"))
"""Where pods live when no pod network is given: RFC 1918, shared address space (RFC 6598) and ULA."""


def kernel_connections(record: ConntrackRecord, *, pod_networks: Sequence[Network] = (),
                       services: Services | None = None) -> pl.DataFrame:
    """Connections (CONNECTION_SCHEMA rows) from the kernel's record alone, with no capture: one per entry's life
    (kernel_flows) of TCP, UDP or ICMP, in order of its first event (listing entries, which carry no time, last; a
    listing line that repeats an entry the events hold is left out). See flow_rows for what each row holds;
    packet counts and fates are 0: no packet was seen."""
    rows = flow_rows(_record_flows(record), pod_networks=pod_networks, services=services)
    return contract_columns(rows)


def contract_columns(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` as CONNECTION_SCHEMA columns, null where a column is missing."""
    return rows.select([(pl.col(c) if c in rows.columns else pl.lit(None)).cast(t).alias(c)
                        for c, t in CONNECTION_SCHEMA.items()])


def _record_flows(record: ConntrackRecord) -> pl.DataFrame:
    """kernel_flows of TCP, UDP and ICMP, in time order (listing entries, untimed, last)."""
    flows = kernel_flows(record.entries).filter(pl.col("proto").is_in(["tcp", "udp", "icmp"]))
    return flows.sort(["start_ts_ns", "line"], nulls_last=True)


def flow_rows(flows: pl.DataFrame, *, pod_networks: Sequence[Network] = (),
              services: Services | None = None) -> pl.DataFrame:
    """One connection row (the CONNECTION_SCHEMA columns it can fill, plus ``replied`` and ``egress``) per kernel
    flow (FLOW_SCHEMA), numbered in order.

    original is the entry's original tuple, translated its reply tuple reversed (evidence_level kernel_record,
    kernel confirmed, kernel_line its NEW event or first line). first_ts_ns/last_ts_ns: its first event's stamp, and
    its DESTROY's (else its last event's); null for a listing. Initiator: an entry whose destination was rewritten
    while it was no ClusterIP was opened from outside (a NodePort, an ALG's expectation: DNAT to a pod); any other
    rewrite is egress (MASQUERADE, a ClusterIP's DNAT, hairpin); with nothing rewritten, the source's network
    decides (``pod_networks``; default private and ULA space). inside_* and outside_* follow (egress: inside =
    original). Verdicts come from the entry's flags: untranslated when nothing was rewritten (internal when the
    destination is in the pod networks; so is a ClusterIP DNATed to a pod with the source kept), else translated
    when the kernel saw a reply, no_reply when it stayed [UNREPLIED]. A destination in a Service network is a
    ClusterIP, one in the NodePort range addressed from outside a NodePort; its backend is the translated
    destination."""
    svc = services or Services()
    pods = tuple(pod_networks) or _PRIVATE
    icmp = pl.col("proto") == "icmp"
    rows = flows.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("conn"),
        "proto",
        *[pl.col(f"orig_{f}") for f in ("src", "sport", "dst", "dport")],
        pl.col("reply_dst").alias("trans_src"),
        pl.when(icmp).then(pl.col("reply_sport")).otherwise(pl.col("reply_dport")).alias("trans_sport"),
        pl.col("reply_src").alias("trans_dst"),
        pl.when(icmp).then(pl.lit(0, pl.UInt16)).otherwise(pl.col("reply_sport")).alias("trans_dport"),
        pl.col("start_ts_ns").alias("first_ts_ns"),
        pl.coalesce("end_ts_ns", "last_ts_ns").alias("last_ts_ns"),
        "replied", "has_new", pl.col("start_ts_ns").alias("flow_start"), pl.col("end_ts_ns").alias("flow_end"),
        pl.lit("confirmed").alias("kernel"), pl.col("line").alias("kernel_line"), pl.col("state").alias("kernel_state"),
        pl.col("assured").alias("kernel_assured"), pl.col("replied").alias("kernel_replied"),
        *[pl.col(f"reply_{f}").alias(f"kernel_reply_{f}") for f in ("src", "sport", "dst", "dport")],
    )
    rows = rows.with_columns(in_networks(rows["orig_src"], pods).alias("_from_pod"),
                             in_networks(rows["orig_dst"], pods).alias("_to_pod"),
                             in_networks(rows["orig_dst"], svc.load_balancers).alias("_balancer"),
                             in_networks(rows["orig_dst"], svc.external_ips).alias("_external"))
    rows = rows.with_columns((in_networks(rows["orig_dst"], svc.networks) | pl.col("_balancer")
                              | pl.col("_external")).alias("_clusterip"))
    rewrites = pl.concat_list([pl.when(pl.col(f"orig_{f}") != pl.col(f"trans_{f}")).then(pl.lit(f))
                               for f in ("src", "sport", "dst", "dport")]).list.drop_nulls()
    rows = rows.with_columns(rewrites.alias("rewrites"))
    dnat = pl.col("rewrites").list.contains("dst") | pl.col("rewrites").list.contains("dport")
    # A destination rewrite opened from a known pod network is the pod's own call (to a NodePort on a node address,
    # a LoadBalancer or external IP kube-proxy DNATs like a ClusterIP): the initiator is where the original source
    # is. Without pod networks (private space stands in) a private client of a NodePort stays inbound.
    from_pod = pl.col("_from_pod") if pod_networks else pl.lit(False)
    egress = (pl.when(pl.col("rewrites").list.len() == 0).then(pl.col("_from_pod"))
              .otherwise(~dnat | pl.col("_clusterip") | from_pod))
    rows = rows.with_columns(egress.alias("egress"))
    egress = pl.col("egress")
    lo, hi = svc.nodeport_range
    # Addressed from outside, or DNATed from a pod (a pod calling a NodePort on a node address).
    nodeport = ((~egress | (dnat & ~pl.col("_clusterip"))) & pl.col("orig_dport").is_between(lo, hi)
                & (pl.col("proto") != "icmp"))
    service = (pl.when(pl.col("_balancer")).then(pl.lit("LoadBalancer")).when(pl.col("_external"))
               .then(pl.lit("ExternalIP")).when(pl.col("_clusterip")).then(pl.lit("ClusterIP"))
               .when(nodeport).then(pl.lit("NodePort")))
    # A Service DNATed to a pod stays in the pod network (bridged, or routed with the source masqueraded to the
    # bridge address: a NodePort or LoadBalancer IP called from a pod); hairpin, DNATed back to the caller itself,
    # has both legs on the caller's own port and is NAT proper.
    hairpin = pl.col("trans_dst") == pl.col("orig_src")
    to_pod_endpoint = (egress & in_networks(rows["trans_dst"], pods)
                       & (~pl.col("rewrites").list.contains("src") | ~hairpin))
    return rows.with_columns(
        pl.when(pl.col("rewrites").list.len() == 0)
        .then(pl.when(pl.col("_to_pod")).then(pl.lit("internal")).otherwise(pl.lit("untranslated")))
        .when(to_pod_endpoint).then(pl.lit("internal"))
        .when(pl.col("replied")).then(pl.lit("translated")).otherwise(pl.lit("no_reply")).alias("verdict"),
        pl.when(egress).then(pl.lit("inside")).otherwise(pl.lit("outside")).alias("initiator"),
        *[pl.when(egress).then(pl.col(f"orig_{f}")).otherwise(pl.col(f"trans_{f}")).alias(f"inside_{f}")
          for f in ("src", "sport", "dst", "dport")],
        *[pl.when(egress).then(pl.col(f"trans_{f}")).otherwise(pl.col(f"orig_{f}")).alias(f"outside_{f}")
          for f in ("src", "sport", "dst", "dport")],
        service.alias("service_type"),
        pl.when(service.is_not_null()).then(pl.col("orig_dst")).alias("service_ip"),
        pl.when(service.is_not_null()).then(pl.col("orig_dport")).alias("service_port"),
        pl.when(service.is_not_null()).then(pl.col("trans_dst")).alias("backend_ip"),
        pl.when(service.is_not_null()).then(pl.col("trans_dport")).alias("backend_port"),
        pl.lit("kernel_record").alias("evidence_level"),
        pl.lit(False).alias("other_capture_off"),
        *[pl.lit(0, pl.UInt32).alias(c) for c, t in CONNECTION_SCHEMA.items() if t == pl.UInt32()
          and c not in ("conn", "kernel_line") and not c.startswith("evidence_") and not c.endswith("_conn_id")],
    ).drop("_from_pod", "_to_pod", "_clusterip", "_balancer", "_external")


SIDES = ("inside", "outside")


EVENT_LAG_NS = 10_000_000
"""How long after the packet that made it a conntrack event may be stamped (``conntrack -E -o timestamp`` stamps
an event when the listener reads it from netlink: 65 us in a lab run, more on a busy node)."""


def _leg_matches(legs: pl.DataFrame, rows: pl.DataFrame, tol: int) -> pl.DataFrame:
    """Each (leg, kernel row) pair where the leg's tuple (its initiator's view) is the row's original tuple
    (``seen`` "original": the capture saw the connection before the NAT) or its translated tuple ("translated":
    after it), in time. Legs: natproof.connections.group_connections' frame with proto as natproof names it."""
    tup = ["proto", "src", "sport", "dst", "dport"]
    out = []
    for seen in ("original", "translated"):
        p = "orig" if seen == "original" else "trans"
        right = rows.select("conn", "has_new", "flow_start", "flow_end", "egress",
                            *[pl.col(f"{p}_{f}" if f != "proto" else "proto").alias(f) for f in tup])
        out.append(legs.join(right, on=tup, how="inner").with_columns(pl.lit(seen).alias("seen")))
    pairs = pl.concat(out)
    start, end = pl.col("flow_start"), pl.col("flow_end")
    in_time = ((~pl.col("has_new") | start.is_null() | (start <= pl.col("last_ts_ns") + tol))
               & (end.is_null() | (end >= pl.col("first_ts_ns") - tol)))
    # Best first: the entry begun last within the leg's own life (a connection whose SYN was answered by a
    # RST and retried is tracked as several entries in turn, and the last one carried it), then the nearest.
    # An entry's NEW is stamped when the listener reads it, after the packet that made it: one made by the leg's
    # last packet (a UDP flow mapped anew by its last datagram: lab udp-remap, 65 us later) is within the leg
    # too, where the leg is the entry's original tuple (the sender's own view: no other socket's connection, and
    # the capture saw the packet that made it) and no later leg of that tuple began before it. Not by the
    # translated tuple: a port pool hands it to another pod's connection, whose first packet may be in no capture
    # (port-exhaustion's uplink: a SYN the NAT dropped after its entry was made).
    pairs = pairs.with_columns(
        pl.col("first_ts_ns").filter(pl.col("first_ts_ns") <= start).max().over("conn", "seen").alias("_maker"))
    made_here = (pl.col("_maker") == pl.col("first_ts_ns")).fill_null(False) & (pl.col("seen") == "original")
    within = pl.col("has_new") & (start.is_between(pl.col("first_ts_ns") - tol, pl.col("last_ts_ns"))
                                  | (start.is_between(pl.col("last_ts_ns"), pl.col("last_ts_ns") + EVENT_LAG_NS)
                                     & made_here))
    return (pairs.filter(in_time)
            .with_columns(within.fill_null(False).alias("within"),
                          (start - pl.col("first_ts_ns")).abs().alias("distance"))
            .sort(["conn_id", "within", "flow_start", "distance", "seen"],
                  descending=[False, True, True, False, False], nulls_last=True)
            .unique(["conn_id", "conn"], keep="first", maintain_order=True).drop("_maker"))


def which_side(legs: pl.DataFrame, record: ConntrackRecord, *, pod_networks: Sequence[Network] = (),
               services: Services | None = None, tolerance_s: float = 1.0) -> tuple[str, int, int]:
    """Which side of the NAT one capture was taken on, from the kernel's record: (side, inside votes, outside
    votes). A leg that is the original tuple of an egress entry (or the translated tuple of an inbound one) was seen
    on the pod side; the translated tuple of an egress entry (or the original of an inbound one) on the node's
    uplink. Entries that rewrote nothing say nothing. Ties go to "inside"."""
    rows = flow_rows(_record_flows(record), pod_networks=pod_networks, services=services)
    rows = rows.filter(pl.col("rewrites").list.len() > 0)
    pairs = _leg_matches(legs, rows, int(tolerance_s * 1e9))
    inside = pairs.filter((pl.col("seen") == "original") == pl.col("egress"))["conn_id"].n_unique()
    outside = pairs.filter((pl.col("seen") == "original") != pl.col("egress"))["conn_id"].n_unique()
    return ("inside" if inside >= outside else "outside"), inside, outside


def one_side_connections(legs: pl.DataFrame, side: str, record: ConntrackRecord, *,
                         pod_networks: Sequence[Network] = (), services: Services | None = None,
                         tolerance_s: float = 1.0, timeouts: IdleTimeouts | None = None) -> pl.DataFrame:
    """Connections (CONNECTION_SCHEMA rows, plus ``leg`` = the capture's conn_id) from ONE capture, taken on
    ``side`` of the NAT, and the kernel's record, which gives the other side's tuple (evidence_level
    kernel_record).

    Each leg (group_connections' frame, proto as natproof names it) is paired with the kernel entry, in time, whose
    original or translated tuple it is (see flow_rows for original, translated, initiator and Service). Times,
    packet counts, the first frame and the leg are the capture's; the tuple of the side not captured (in inside_*
    or outside_*, and in orig_* or trans_*) is the kernel's. Fates: every packet ``{side}_only``. Verdicts are the
    entry's (flow_rows), except that an egress connection whose entry saw a reply while the pod capture holds none
    is reply_dropped. A pod-side leg with no entry: internal when its destination is in the pod networks, else
    not_forwarded, kernel absent with the reason the record allows (other_capture_off when the record does not
    cover its time: then nothing is known of the node's side, and a leg the far end answered is not_captured). A
    leg on the uplink with no entry, within the record's events, is the node's own traffic (or untracked): not a
    connection; one wholly before the record's first event or after its last is out of its sight, and so of the
    pod side's: not_captured, other_capture_off (_unseen_outside_legs).

    A flow mapped anew after its entry expired while it idled is one connection, as with two captures
    (docs/model.md): conntrack tracks an original tuple as one entry at a time, so legs of the side after the NAT
    that are translated tuples of entries sharing an original tuple (and zone), in turn, each begun less than the
    protocol's idle timeout (``timeouts``, as group_connections splits a leg) after the one before ended (and, for
    TCP, not opened by a SYN of its own: a reused tuple), are that flow's mappings (_mapping_chains: the pod's
    legs of a UDP NodePort flow, tests/variants/udp-idle-nodeport; the uplink's of a pod's UDP socket, lab
    udp-remap). The connection is the mapping that carried most of the initiator's packets (the later on a tie):
    its translated tuple and kernel entry; its times, packets and legs are every mapping's, ``{side}_tuples``
    counts its legs on the captured side as two captures do (one, or each mapping), and ``mapped`` lists the other
    legs' ids."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    tol = int(tolerance_s * 1e9)
    flows = _record_flows(record)
    rows = flow_rows(flows, pod_networks=pod_networks, services=services).with_columns(flows["zone"])
    pairs = _leg_matches(legs, rows, tol)
    best = pairs.unique("conn_id", keep="first", maintain_order=True)
    # Two legs of one capture on one entry: a hairpin, seen before and after the NAT on the pod side (a helper
    # found each listed twice). The connection is the leg seen as the side sees its entries (the pod side: an
    # egress entry's original tuple, an inbound one's translated tuple; the uplink the other way round).
    # The other leg's packets are that connection's too (``folded``: its leg id).
    as_side = (pl.col("seen") == "original") == (pl.col("egress") == (side == "inside"))
    ranked = best.with_columns((~as_side).alias("_other_view")).sort("conn", "_other_view", maintain_order=True)
    kept = ranked.unique("conn", keep="first", maintain_order=True)
    folded = (ranked.join(kept.select("conn_id"), on="conn_id", how="anti")
              .select("conn", pl.col("conn_id").alias("folded")).unique("conn", keep="first"))
    best = kept.drop("_other_view").join(folded, on="conn", how="left").sort("conn_id")
    best = best.join(_mapping_chains(best, rows, side, tol, timeouts or IdleTimeouts()), on="conn_id", how="left")
    packets = pl.col("egress_packets") + pl.col("reply_packets") + pl.col("icmp_error_packets")
    leg_struct = pl.struct(
        pl.lit(side).alias("observation_point"), pl.col("leg_src").alias("src"), pl.col("leg_sport").alias("sport"),
        pl.col("leg_dst").alias("dst"), pl.col("leg_dport").alias("dport"), "first_frame",
        packets.alias("packets"), pl.col("leg_underlay").alias("underlay"))
    leg_cols = legs.select(pl.col("conn_id").alias("leg"), *[pl.col(f).alias(f"leg_{f}") for f in
                                                             ("src", "sport", "dst", "dport")],
                           pl.col("first_ts_ns").alias("leg_first"), pl.col("last_ts_ns").alias("leg_last"),
                           "egress_packets", "reply_packets", "icmp_error_packets", "first_frame",
                           _underlay(legs).alias("leg_underlay"))
    per_leg = (best.select(pl.col("conn_id").alias("leg"), pl.col("conn").alias("row"), "folded", "primary",
                           "mapping")
               .join(rows.rename({"conn": "row"}), on="row").join(leg_cols, on="leg"))
    # One row per connection: its primary leg's (entry, tuples, flags), with the packets, times and legs of all
    # its mappings (one leg but where a flow was mapped anew: _mapping_chains).
    summed = ("leg_first", "leg_last", "egress_packets", "reply_packets", "icmp_error_packets", "first_frame")
    chain = per_leg.sort("leg_first", "leg").group_by("primary", maintain_order=True).agg(
        pl.col("leg_first").min(), pl.col("leg_last").max(),
        *[pl.col(c).sum() for c in ("egress_packets", "reply_packets", "icmp_error_packets")],
        pl.col("first_frame").min(),
        leg_struct.alias("legs"),
        pl.col("leg").filter(pl.col("leg") != pl.col("primary")).alias("mapped"),
        pl.len().cast(pl.UInt32).alias("_mappings"),
        pl.col("replied").any().alias("_replied_any"),
        # A leaked or hairpin leg folded into any of its entries (the primary's first).
        pl.col("folded").sort_by(pl.col("leg") != pl.col("primary")).drop_nulls().first().alias("_folded"),
    )
    found = (per_leg.filter(pl.col("leg") == pl.col("primary")).drop(*summed, "folded")
             .join(chain, on="primary", how="left").rename({"_folded": "folded"}))
    found = found.with_columns(
        # Its legs on the captured side, as two captures count them (a hairpin's copy and a leaked leg aside): one,
        # or each mapping of a flow mapped anew.
        pl.col("_mappings").alias(f"{side}_tuples"),
        # A flow's later entry may have been answered where the one it ended under was not.
        pl.when((pl.col("verdict") == "no_reply") & pl.col("_replied_any")).then(pl.lit("translated"))
        .otherwise(pl.col("verdict")).alias("verdict"),
    ).drop("_mappings", "_replied_any")
    found = _with_earlier_mappings(found, pairs, best, rows, side)
    found = found.with_columns(
        pl.col("leg_first").alias("first_ts_ns"), pl.col("leg_last").alias("last_ts_ns"),
        pl.col("egress_packets").alias(f"egress_{side}"), pl.col("reply_packets").alias(f"reply_{side}"),
        pl.col("icmp_error_packets").alias(f"icmp_errors_{side}"), packets.alias(f"fate_{side}_only"),
        pl.col("first_frame").alias(f"evidence_egress_{side}_frame"), pl.col("leg").alias(f"{side}_conn_id"),
        pl.when((pl.lit(side) == "inside") & pl.col("egress") & (pl.col("verdict") == "translated")
                & (pl.col("reply_packets") == 0)).then(pl.lit("reply_dropped")).otherwise(pl.col("verdict"))
        .alias("verdict"),
    )
    parts = [found]
    if side == "inside":
        missing = legs.filter(~pl.col("conn_id").is_in(found["leg"].implode())
                              & ~pl.col("conn_id").is_in(found["folded"].drop_nulls().implode())
                              & ~pl.col("conn_id").is_in(found["mapped"].explode().drop_nulls().implode()))
        parts.append(_unrecorded_inside_legs(missing, record, pod_networks or _PRIVATE, tol))
    else:
        missing = legs.filter(~pl.col("conn_id").is_in(found["leg"].implode())
                              & ~pl.col("conn_id").is_in(found["folded"].drop_nulls().implode())
                              & ~pl.col("conn_id").is_in(found["mapped"].explode().drop_nulls().implode()))
        node = rows.filter(pl.col("egress") & pl.col("rewrites").list.contains("src"))["trans_src"]
        parts.append(_unseen_outside_legs(missing, record, node.cast(pl.String).unique(), tol))
    conns = pl.concat([contract_columns(p).with_columns(
        p["leg"].cast(pl.UInt32).alias("leg"),
        (p["folded"] if "folded" in p.columns else pl.repeat(None, p.height, dtype=pl.UInt32, eager=True))
        .cast(pl.UInt32).alias("folded"),
        (p["mapped"] if "mapped" in p.columns else pl.repeat([], p.height, dtype=pl.List(pl.UInt32), eager=True))
        .cast(pl.List(pl.UInt32)).alias("mapped")) for p in parts])
    conns = conns.sort(["first_ts_ns", "leg"]).with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("conn"))
    return conns


def _with_earlier_mappings(found: pl.DataFrame, pairs: pl.DataFrame, best: pl.DataFrame, rows: pl.DataFrame,
                           side: str) -> pl.DataFrame:
    """``found`` (one_side_connections' rows, ``leg`` its primary leg, ``row`` its entry) with every mapping of a
    flow mapped anew that the captured side cannot show: the leg is the original tuple of more than one entry
    begun within its life (``within``: conntrack holds one entry per original tuple and zone at a time, so they
    followed each other; lab udp-remap's pod side: one socket left as 203.0.113.2:46807, then 52490). Each entry's
    translated tuple becomes a leg at the other observation point, from the record: no frame, 0 packets; they are
    counted in ``{other}_tuples`` as two captures count them (flag multiple_*_tuples). Before, only the entry the
    flow ended under was kept, and `who` on the earlier port found no connection (README once listed it among
    what one capture cannot show; the record shows it)."""
    other = "outside" if side == "inside" else "inside"
    key = ["proto", "orig_src", "orig_sport", "orig_dst", "orig_dport", "zone"]
    taken = best.select(pl.col("conn_id").alias("_own"), pl.col("conn").alias("_taken"))
    primary = (found.select("leg", "row").join(rows.select(pl.col("conn").alias("row"), *key), on="row")
               .rename({k: f"_p_{k}" for k in key}))
    # Entries begun within a primary leg's life whose original tuple it is, of its entry's tuple and zone, that no
    # other leg is carried by.
    others = (pairs.filter(pl.col("within") & (pl.col("seen") == "original"))
              .select(pl.col("conn_id").alias("leg"), pl.col("conn").alias("entry"), "flow_start")
              .join(primary, on="leg")
              .join(rows.select(pl.col("conn").alias("entry"), *key, *[f"trans_{f}" for f in
                                                                        ("src", "sport", "dst", "dport")]),
                    on="entry")
              .filter(pl.all_horizontal([pl.col(k).eq_missing(pl.col(f"_p_{k}")) for k in key]))
              .join(taken, left_on="entry", right_on="_taken", how="left")
              .filter(pl.col("_own").is_null() | (pl.col("_own") == pl.col("leg"))))
    several = others.group_by("leg").agg(pl.len().alias("_n")).filter(pl.col("_n") > 1)
    if several.is_empty():
        return found
    kernel_legs = (others.join(several, on="leg").sort("leg", "flow_start", nulls_last=True)
                   .group_by("leg", maintain_order=True).agg(
                       pl.struct(pl.lit(other).alias("observation_point"),
                                 *[pl.col(f"trans_{f}").alias(f) for f in ("src", "sport", "dst", "dport")],
                                 pl.lit(None, pl.UInt32).alias("first_frame"), pl.lit(0, pl.UInt32).alias("packets"),
                                 pl.lit(None, pl.String).alias("underlay")).alias("_kernel_legs"),
                       pl.len().cast(pl.UInt32).alias("_n")))
    found = found.join(kernel_legs, on="leg", how="left")
    legs_type = found.schema["legs"]
    return found.with_columns(
        pl.when(pl.col("_n").is_not_null())
        .then(pl.concat_list("legs", pl.col("_kernel_legs").cast(legs_type))).otherwise(pl.col("legs")).alias("legs"),
        pl.col("_n").alias(f"{other}_tuples"),
    ).drop("_kernel_legs", "_n")


def _mapping_chains(best: pl.DataFrame, rows: pl.DataFrame, side: str, tol: int,
                    timeouts: IdleTimeouts) -> pl.DataFrame:
    """Each leg of ``best`` (one_side_connections' legs, each on its own kernel entry) with ``primary``: the leg of
    the connection it belongs to, and ``mapping``: whether it is a mapping of that connection (a translated tuple
    of its entry, seen on the side after the NAT). Legs that are mappings of entries with one original tuple (and
    zone), in time order, each beginning less than the protocol's idle timeout after the one before ended (TCP: not
    opened by a SYN of its own, a reused tuple's new connection), are one flow mapped anew after idling: conntrack
    tracks an original tuple as one entry at a time, so each entry followed the one before. Their primary is the
    leg that carried most of the initiator's packets, the later on a tie (the mapping the flow ended under, as
    natproof.assemble._join_mappings takes it). Every other leg is its own primary."""
    key = ["proto", "orig_src", "orig_sport", "orig_dst", "orig_dport", "zone"]
    # A leg seen as its entry's translated tuple, on the side that sees the entry's mappings (the uplink for
    # egress, the pod side for a connection started outside): one of the flow's mappings.
    mapping = (pl.col("seen") == "translated") & (pl.col("egress") == (side == "outside"))
    opened = pl.col("origin_seen") if "origin_seen" in best.columns else pl.lit(False)
    idle = (pl.when(pl.col("proto") == "tcp").then(pl.lit(int(timeouts.tcp_s * 1e9)))
            .when(pl.col("proto") == "udp").then(pl.lit(int(timeouts.udp_s * 1e9)))
            .otherwise(pl.lit(int(timeouts.icmp_s * 1e9))))
    m = (best.select("conn_id", "conn", "first_ts_ns", "last_ts_ns", "egress_packets", mapping.alias("mapping"),
                     opened.alias("_opened"))
         .join(rows.select("conn", *key), on="conn", how="left")
         .sort([*key, "first_ts_ns", "conn_id"], nulls_last=True))
    same_key = pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(1)) for c in key])
    follows = (same_key & pl.col("mapping") & pl.col("mapping").shift(1)
               & (pl.col("conn") != pl.col("conn").shift(1))
               & (pl.col("first_ts_ns") >= pl.col("last_ts_ns").shift(1) - tol)
               & (pl.col("first_ts_ns") - pl.col("last_ts_ns").shift(1) <= idle)
               & ~((pl.col("proto") == "tcp") & pl.col("_opened").fill_null(False)))
    m = m.with_columns((~follows.fill_null(False)).cum_sum().alias("_chain"))
    top = (m.sort(["_chain", "egress_packets", "first_ts_ns", "conn_id"], descending=[False, True, True, True])
           .unique("_chain", keep="first").select("_chain", pl.col("conn_id").alias("primary")))
    return m.join(top, on="_chain").select("conn_id", pl.col("primary").cast(pl.UInt32), "mapping")


def _underlay(legs: pl.DataFrame) -> pl.Expr:
    """A leg's underlay (natproof.correlate.leg_underlay), null where the legs carry none."""
    return pl.col("underlay") if "underlay" in legs.columns else pl.lit(None, pl.String)


def _unrecorded_inside_legs(legs: pl.DataFrame, record: ConntrackRecord, pods: Sequence[Network],
                            tol: int) -> pl.DataFrame:
    """Pod-side legs the record holds no entry for, as connection rows (see one_side_connections)."""
    first, last = record.first_ts_ns, record.last_ts_ns
    to_pod = in_networks(legs["dst"], pods)
    if record.has_events and first is not None:
        # Only a leg wholly before the first event, or after the last, is known to be out of the log's sight: the
        # listener may have run long before its first event (a dropped SYN makes none).
        reason = (pl.when(pl.col("last_ts_ns") < first - tol).then(pl.lit("record_starts_after"))
                  .when(pl.col("first_ts_ns") > (last or 0) + tol).then(pl.lit("record_ends_before"))
                  .otherwise(pl.lit("dropped_before_confirmation")))
    elif record.has_events:
        reason = pl.lit("dropped_before_confirmation")
    else:
        reason = pl.lit("snapshot_after_expiry")
    uncovered = reason.is_in(["record_starts_after", "record_ends_before"])
    return legs.with_columns(to_pod.alias("_to_pod")).select(
        pl.col("conn_id").alias("leg"), "proto", "first_ts_ns", "last_ts_ns",
        *[pl.col(f).alias(f"{p}_{f}") for p in ("inside", "orig") for f in ("src", "sport", "dst", "dport")],
        pl.lit("inside").alias("initiator"),
        # Wholly out of the record's sight, a leg with no entry is not_captured, answered or not: a record of another
        # time says nothing of whether the node forwarded it, and one capture shows no leg past the NAT (a trial: a
        # log of another day made an unanswered connection not_forwarded; _unseen_outside_legs is the mirror).
        pl.when(pl.col("_to_pod")).then(pl.lit("internal")).when(uncovered).then(pl.lit("not_captured"))
        .otherwise(pl.lit("not_forwarded")).alias("verdict"),
        pl.lit([], pl.List(pl.String)).alias("rewrites"),
        *_lone_leg_columns(legs, "inside"),
        (uncovered & ~pl.col("_to_pod")).alias("other_capture_off"),
        pl.lit("absent").alias("kernel"),
        pl.when(pl.col("_to_pod")).then(pl.lit("not_tracked")).otherwise(reason).alias("kernel_reason"),
    )


def _lone_leg_columns(legs: pl.DataFrame, side: str) -> list[pl.Expr]:
    """The connection columns of a leg seen on ``side`` alone with no kernel entry (_unrecorded_inside_legs,
    _unseen_outside_legs): its packets by direction, every one ``{side}_only``, none matched or seen on the other
    side, its first frame as evidence, and the leg as the connection's one leg."""
    other = "outside" if side == "inside" else "inside"
    packets = pl.col("egress_packets") + pl.col("reply_packets") + pl.col("icmp_error_packets")
    return [
        pl.col("egress_packets").alias(f"egress_{side}"), pl.col("reply_packets").alias(f"reply_{side}"),
        pl.col("icmp_error_packets").alias(f"icmp_errors_{side}"), packets.alias(f"fate_{side}_only"),
        pl.lit(1, pl.UInt32).alias(f"{side}_tuples"),
        *[pl.lit(0, pl.UInt32).alias(c) for c in (f"egress_{other}", f"reply_{other}", f"icmp_errors_{other}",
                                                  "matched_egress", "matched_reply", f"{other}_tuples", "fate_crossed",
                                                  "fate_leaked", f"fate_{other}_only", "fate_node_generated")],
        pl.col("first_frame").alias(f"evidence_egress_{side}_frame"), pl.col("conn_id").alias(f"{side}_conn_id"),
        pl.concat_list(pl.struct(pl.lit(side).alias("observation_point"), "src", "sport", "dst", "dport",
                                 "first_frame", packets.alias("packets"), _underlay(legs).alias("underlay")))
        .alias("legs"),
    ]


def _unseen_outside_legs(legs: pl.DataFrame, record: ConntrackRecord, node: pl.Series, tol: int) -> pl.DataFrame:
    """Uplink legs with no entry that lie wholly before the record's first event or after its last, as connection
    rows (see one_side_connections): verdict not_captured, other_capture_off, kernel absent (record_starts_after,
    record_ends_before), as two captures say of a leg seen on the outside only while the inside capture was off
    (natproof.assemble._lost_inbound's not_captured). Within the record's events a leg with no entry is the node's
    own traffic, as before; out of them the record cannot say whose it is, and dropping it lost every packet of an
    uplink capture given with a record of another day (a helper's trial: "0 connections", unmatched 0).

    ``node``: the node's addresses (the translated source of the record's SNATed entries, even of another time): a
    leg to one of them from elsewhere was opened from outside (its original tuple is the leg's), any other from
    the node's side (its pre-NAT tuple is unknown: orig_* null). Without events (a listing) nothing is out of
    sight: no rows."""
    first, last = record.first_ts_ns, record.last_ts_ns
    if not record.has_events or first is None or last is None:
        legs = legs.clear()
    else:
        legs = legs.filter((pl.col("last_ts_ns") < first - tol) | (pl.col("first_ts_ns") > last + tol))
    inbound = (pl.col("dst").cast(pl.String).is_in(node.implode())
               & ~pl.col("src").cast(pl.String).is_in(node.implode()))
    tup = ("src", "sport", "dst", "dport")
    return legs.with_columns(inbound.alias("_inbound")).select(
        pl.col("conn_id").alias("leg"), "proto", "first_ts_ns", "last_ts_ns",
        *[pl.col(f).alias(f"outside_{f}") for f in tup],
        *[pl.when(pl.col("_inbound")).then(pl.col(f)).alias(f"orig_{f}") for f in tup],
        *[pl.when(~pl.col("_inbound")).then(pl.col(f)).alias(f"trans_{f}") for f in tup],
        pl.when(pl.col("_inbound")).then(pl.lit("outside")).otherwise(pl.lit("inside")).alias("initiator"),
        pl.lit("not_captured").alias("verdict"),
        pl.lit([], pl.List(pl.String)).alias("rewrites"),
        *_lone_leg_columns(legs, "outside"),
        pl.lit(True).alias("other_capture_off"),
        pl.lit("absent").alias("kernel"),
        pl.when(pl.col("last_ts_ns") < first - tol).then(pl.lit("record_starts_after"))
        .otherwise(pl.lit("record_ends_before")).alias("kernel_reason"),
    )
