"""Connections from legs and packet pairs: initiator, original and translated tuples, and each packet's fate."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import polars as pl
import polars.selectors as cs

from natproof.connections import EPHEMERAL_FROM
from natproof.decode import HEAD_DIGEST_BYTES
from natproof.match import Matches
from natproof.networks import PRIVATE_SPACE, address_bits, in_any
from natproof.verdicts import verdict_expr

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FATES = ("crossed", "leaked", "inside_only", "outside_only", "node_generated")
"""Packet fates (docs/model.md): every packet of a connection has exactly one."""

FATE = pl.Enum(list(FATES))

_RST = 0x04
_FIN, _SYN, _ACK = 0x01, 0x02, 0x10
_TUPLE = ("src", "sport", "dst", "dport")

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
"""kube-apiserver's default --service-cluster-ip-range."""
DEFAULT_NODEPORT_RANGE = (30000, 32767)
"""kube-apiserver's default --service-node-port-range."""


@dataclass(frozen=True)
class Services:
    """How to recognise Kubernetes Services: ClusterIPs by network, NodePorts by port range. A private address
    outside ``networks`` that the node DNATed on a connection a pod started counts as a ClusterIP too."""

    networks: tuple[Network, ...] = (ipaddress.ip_network(DEFAULT_SERVICE_CIDR),)
    nodeport_range: tuple[int, int] = DEFAULT_NODEPORT_RANGE
    node_ports: tuple[int, ...] = ()
    """NodePorts known outside the range (a Service dump's nodePorts: natproof.names)."""
    listed_node_ports: tuple[int, ...] | None = None
    """Every nodePort of a Service dump (natproof.names), or None without one: with a dump, a port in the range
    that no Service lists is still watched for connections from outside, but not named a NodePort (a helper's
    kernel variant: a port nothing DNATs, answered by the node's own RST)."""
    load_balancers: tuple[Network, ...] = ()
    """LoadBalancer ingress IPs (a Service dump's status.loadBalancer.ingress): kube-proxy DNATs them in
    KUBE-SERVICES as it does ClusterIPs, so a pod's call to one is a Service call like a ClusterIP's."""
    external_ips: tuple[Network, ...] = ()
    """A Service dump's spec.externalIPs: DNATed in KUBE-SERVICES the same way."""

    def is_node_port(self, port: pl.Expr) -> pl.Expr:
        """Whether a destination port is a NodePort: in the range, or one of ``node_ports``."""
        lo, hi = self.nodeport_range
        inside = port.is_between(lo, hi)
        return inside | port.is_in(list(self.node_ports)) if self.node_ports else inside


def in_networks(addrs: pl.Series, nets: Sequence[Network]) -> pl.Series:
    """Boolean per address (a String or Categorical series): in any of ``nets``; null addresses give False."""
    # Each distinct address judged once, by its bits (natproof.networks.address_bits), then joined back on the
    # series' own values (a Categorical by its codes): no string per row, and no Python parse per address (2 x 5M
    # synthetic, 32k addresses: the calls of a correlation 2.3 -> 0.2 s).
    if not nets:
        return pl.repeat(False, len(addrs), eager=True).alias(addrs.name)
    table = address_bits(addrs).select("a", in_any(nets).alias("f"))
    found = addrs.alias("a").to_frame().join(table, on="a", how="left", maintain_order="left", nulls_equal=False)
    return found["f"].fill_null(False).alias(addrs.name)


def private_to_outside(src: pl.Series, dst: pl.Series) -> pl.Series:
    """Boolean per row: ``src`` is in private space (natproof.networks.PRIVATE_SPACE: RFC 1918, RFC 6598, ULA) and
    ``dst`` is not. A flow so addressed that crossed the NAT unrewritten is a leak: the pod's own address left the
    node for a network that does not route it back (captures/wrong-subnet, captures/no-masquerade). A private
    destination is one a NAT leaves out by design (an SNAT exclusion: captures/eks-vpc-cni's 172.16.5.5), and a
    global source is routed, not hidden (tests/variants/lan-v6-routed, public-pods): neither leaks. Null addresses
    give False."""
    private = [space for space, _, _ in PRIVATE_SPACE]
    return (in_networks(src, private) & ~in_networks(dst, private) & src.is_not_null() & dst.is_not_null()).alias(
        "private_to_outside")


def on_one_link(src: pl.Series, dst: pl.Series, senders: pl.Series) -> pl.Series:
    """Boolean per row: ``src`` and ``dst`` are IPv6 addresses of one /64 (a subnet on one link: RFC 4291's
    64-bit interface identifiers, SLAAC; a router forwards between links, not within one) and ``dst`` sends on
    this capture (``senders``): two hosts of the capture's own link, which talk without a router (a LAN's global
    IPv6 /64 that the router routes, no NAT66: the printer's IPP, the unicast answer to an SSDP search). A destination
    that never sends here may stand behind a router (an L3 fabric's /64 spans several hosts), so it is not
    judged so."""
    bits = address_bits(pl.concat([src.cast(pl.String), dst.cast(pl.String)])).filter(pl.col("version") == 6)
    if bits.is_empty():
        return pl.repeat(False, len(src), eager=True)
    net = bits.select(pl.col("a").cast(pl.String), pl.col("hi").alias("net"))  # the top 64 bits: the /64
    rows = pl.DataFrame({"s": src.cast(pl.String), "d": dst.cast(pl.String)})
    rows = (rows.join(net.rename({"a": "s", "net": "sn"}), on="s", how="left", maintain_order="left")
            .join(net.rename({"a": "d", "net": "dn"}), on="d", how="left", maintain_order="left"))
    sends = pl.col("d").is_in(senders.cast(pl.String).drop_nulls().unique().implode())
    return rows.select(((pl.col("sn") == pl.col("dn")) & sends).fill_null(False)).to_series()


def _leg_tuple(conns: pl.DataFrame, prefix: str) -> list[pl.Expr]:
    return [pl.col(c).alias(f"{prefix}_{c}") for c in _TUPLE]


def _roots(n_in: int, in_pk: pl.DataFrame, in_conns: pl.DataFrame, self_pairs: pl.DataFrame) -> pl.Series:
    """For each inside leg, the leg whose packets it holds: itself, or for a leg that holds copies of an
    earlier leg's packets under another tuple (hairpin: DNAT back to the pod, masqueraded to the bridge
    address), that earlier leg. Legs are linked whichever copy came first: a hairpinned SYN is seen first
    under the original tuple, its SYN-ACK first under the translated one."""
    roots = pl.int_range(n_in, dtype=pl.UInt32, eager=True)
    if self_pairs.is_empty():
        return roots
    first = in_conns.sort("conn_id").select("first_ts_ns", "first_frame")
    links = pl.DataFrame([in_pk["conn_id"].gather(self_pairs["a_row"]).alias("x"),
                          in_pk["conn_id"].gather(self_pairs["b_row"]).alias("y")])
    t = first["first_ts_ns"]
    links = links.with_columns(t.gather(links["x"]).alias("tx"), t.gather(links["y"]).alias("ty"))
    x_first = pl.col("tx") <= pl.col("ty")
    links = links.select(pl.when(x_first).then("x").otherwise("y").alias("early"),
                         pl.when(x_first).then("y").otherwise("x").alias("late"))
    best = (links.group_by("late", "early").len().sort("len", "early", descending=[True, False])
            .unique("late", keep="first"))
    roots = roots.scatter(best["late"], best["early"])
    for _ in range(3):  # a chain of copies (veth, bridge, ...) collapses onto its first leg
        roots = roots.gather(roots)
    return roots


def node_addresses(df: pl.DataFrame) -> pl.Series:
    """The node's own addresses (String, distinct) as assembled connections show them (``df``: assemble's rows,
    with init_inside, rewrites, _cross_init, trans_src and orig_dst): the source MASQUERADE gave a pod's
    connection whose packets crossed, and the destination an outside client addressed that the node DNATed (a
    NodePort). Every connection adds its own, so the addresses of a whole capture are the union of its parts'."""
    dnat = pl.col("rewrites").list.contains("dst") | pl.col("rewrites").list.contains("dport")
    return pl.concat([
        df.filter(pl.col("init_inside") & pl.col("rewrites").list.contains("src")
                  & (pl.col("_cross_init") > 0))["trans_src"].cast(pl.String),
        df.filter(~pl.col("init_inside") & dnat)["orig_dst"].cast(pl.String),
    ]).drop_nulls().unique()


def _link(P: pl.DataFrame, roots: pl.Series, ins: pl.DataFrame, outs: pl.DataFrame, pair_columns: Sequence[str],
          pod_networks: Sequence[Network], offset: int) -> tuple[pl.DataFrame, ...]:
    """The cross pairs ``P`` (in_row, out_row, in_conn, out_conn, is_egress, is_icmp_error, in_frame, out_frame,
    dt_ns, ttl_delta, unique, ...) given to connections by ``roots`` (each inside leg's connection, by its anchor's
    conn_id). Returns (P, per_leg, owner, primary, side, kept): the pairs kept, with ``anchor``, sorted by
    connection then inside frame; per (anchor, outside leg) the pairs (_per_leg); each outside leg's owner
    (out_conn, owner); each connection's primary outside leg (anchor, primary_out, _primary_unchanged); whether
    its initiator is inside (anchor, init_inside); and the pairs kept in inside row order, ``pair_columns`` only."""
    P = P.with_columns(roots.gather(P["in_conn"]).alias("anchor"))
    per_leg = _per_leg(P, ins, outs)
    owner = (per_leg.sort(["out_conn", "n_init", "n", "first_out"], descending=[False, True, True, False])
             .unique("out_conn", keep="first").select("out_conn", pl.col("anchor").alias("owner")))
    # One outside leg belongs to one connection: a pair chosen among look-alikes (a key seen more than once:
    # replies with IP id 0 and one payload) that ties a connection's packet to a leg another connection owns is
    # not a crossing. Pairs on a unique key stand: two connections can truly share a leg (a broken NAT).
    paired = P.height
    P = P.join(owner, on="out_conn", how="left", maintain_order="left").filter(
        (pl.col("owner") == pl.col("anchor")) | pl.col("unique").fill_null(False)).drop("owner", "unique")
    if P.height != paired:  # else the same pairs: per_leg as it is (no two legs of a connection tie on first_out)
        per_leg = _per_leg(P, ins, outs)
    kept = P.select(c for c in pair_columns if c in P.columns and c != "ttl_delta").sort("in_row", "out_row")
    # From here the pairs by connection, each connection's in capture order: every per-connection aggregate below
    # then runs over contiguous slices (polars' sorted fast path: 2 x 5M real, the evidence and counts 0.6 -> 0.13
    # s for a sort of 0.45 s), and "first" means first in the inside capture. The joins below keep this order.
    # Both keys packed into one UInt64 (frame numbers are UInt32): a one-key sort (2 x 5M real: 0.45 -> 0.33 s).
    P = P.sort(pl.col("anchor").cast(pl.UInt64) * (1 << 32) + pl.col("in_frame").cast(pl.UInt64))
    # The connection's mapping is the outside leg that carried most of it under a rewritten tuple (the
    # initiator's packets first: conntrack fixes the mapping on them); a leg under the inside's own tuple is
    # primary only when there is no other (no NAT at all): packets conntrack marked INVALID, or sent after the
    # entry expired, leave untranslated inside an otherwise translated connection
    # (cases/idle-expiry-fin-leak), however many of them there are. Between legs that carried as much, the later
    # one: the mapping the connection ended under (a flow mapped anew after its entry expired: lab udp-remap; the
    # lab's truth takes the last conntrack entry alike).
    primary = (per_leg.sort(["anchor", "unchanged", "n_init", "n", "first_out"],
                                           descending=[False, False, True, True, True])
               .unique("anchor", keep="first").select("anchor", pl.col("out_conn").alias("primary_out"),
                                                      pl.col("unchanged").alias("_primary_unchanged")))

    # -- the initiator's side --------------------------------------------------------------------------------------
    # Which way did the initiator's packets cross? Routing costs a packet one TTL per hop (bridging none: see
    # FIELD-NOTES), so a copy with one TTL less is the later one, whatever the clocks say. Without a TTL step
    # (bridged, or a middlebox that resets TTL), time: a packet sent by the initiator crosses from its side, a
    # reply the other way, so the median time each direction took (outside minus inside clock) differs by twice
    # the NAT's latency in a sign independent of the clock offset. With one direction only, the addresses decide
    # where the pod network is known (DNAT towards a pod is inbound: NodePort, an ALG's expectation; anything else
    # from the inside is egress), else the estimated offset does.
    d = (pl.col("dt_ns") - offset)
    onward_ttl = pl.when(pl.col("is_egress")).then(-pl.col("ttl_delta")).otherwise(pl.col("ttl_delta")).sign()
    # The medians only where the TTL does not decide (most connections cross a routed NAT: 500k connections, 0.6
    # -> 0.2 s).
    crossed = P.filter(~pl.col("is_icmp_error")).with_columns(pl.col("anchor").set_sorted())
    side = crossed.group_by("anchor").agg(onward_ttl.sum().alias("ttl_vote"))
    undecided = side.filter(pl.col("ttl_vote") == 0)["anchor"]
    timed = crossed.filter(pl.col("anchor").is_in(undecided.implode())).group_by("anchor").agg(
        d.filter(pl.col("is_egress")).median().alias("d_e"), d.filter(~pl.col("is_egress")).median().alias("d_r"))
    side = side.join(timed, on="anchor", how="left")
    del crossed
    to_pod = ins.select(pl.col("conn_id").alias("anchor"), in_networks(ins["dst"], pod_networks).alias("_in_dst_pod"))
    side = side.join(to_pod, on="anchor", how="left").select(
        "anchor", pl.when(pl.col("ttl_vote") != 0).then(pl.col("ttl_vote") > 0)
        .when(pl.col("d_e").is_not_null() & pl.col("d_r").is_not_null()).then(pl.col("d_e") > pl.col("d_r"))
        .when(pl.lit(bool(pod_networks))).then(~pl.col("_in_dst_pod"))
        .when(pl.col("d_e").is_not_null()).then(pl.col("d_e") >= 0)
        .when(pl.col("d_r").is_not_null()).then(pl.col("d_r") < 0)
        .otherwise(True).alias("init_inside"))
    return P.drop("ttl_delta"), per_leg, owner, primary, side, kept


def _join_mappings(roots: pl.Series, link: tuple[pl.DataFrame, ...], ins: pl.DataFrame) -> pl.Series | None:
    """``roots`` (each inside leg's connection, by its anchor's conn_id) with the inside legs of one connection
    started outside given one anchor, or None when no two are (as a rule). ``link``: what _link made of
    ``roots``. Connections whose initiator is outside and whose primary outside leg, the initiator's own, is the
    same are one: conntrack tracks an original tuple as one entry at a time, so each is that flow's entry in turn,
    mapped anew after the one before expired while the flow idled (tests/variants/udp-idle-nodeport), as an
    outside leg is for a flow started inside (lab udp-remap). Their anchor is the inside leg that carried most of
    the initiator's packets, between legs that carried as much the later: the mapping the flow ended under, as
    _link's primary outside leg is (the lab's truth takes the last conntrack entry alike)."""
    _, per_leg, _, primary, side, _ = link
    started_outside = side.filter(~pl.col("init_inside")).select("anchor")
    if started_outside.is_empty():
        return None
    shared = (primary.join(started_outside, on="anchor").filter(pl.col("primary_out").is_not_null())
              .filter(pl.col("primary_out").is_duplicated()))
    if shared.is_empty():
        return None
    ranked = (shared.join(per_leg.select("anchor", pl.col("out_conn").alias("primary_out"), "n_init", "n"),
                          on=["anchor", "primary_out"])
              .join(ins.select(pl.col("conn_id").alias("anchor"), "first_ts_ns"), on="anchor")
              .sort(["primary_out", "n_init", "n", "first_ts_ns"], descending=[False, True, True, True]))
    top = ranked.unique("primary_out", keep="first").select("primary_out", pl.col("anchor").alias("to"))
    moves = ranked.join(top, on="primary_out").select("anchor", "to")
    lut = pl.int_range(roots.len(), dtype=pl.UInt32, eager=True).scatter(moves["anchor"], moves["to"])
    return lut.gather(roots)


def assemble(in_pk: pl.DataFrame, out_pk: pl.DataFrame, in_conns: pl.DataFrame, out_conns: pl.DataFrame,
             matches: Matches, *, pod_networks: Sequence[Network], services: Services,
             icmp: tuple[pl.DataFrame, pl.DataFrame] | None = None,
             evidence: MatchEvidence | None = None, inside_senders: Collection[str] | None = None,
             known_node_addresses: Collection[str] = (), inside_cut: pl.DataFrame | None = None,
             outside_cut: pl.DataFrame | None = None, left_out: pl.DataFrame | None = None,
             ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Build one row per connection, and each packet's fate.

    ``in_pk``/``out_pk`` hold every packet of a leg (conn_id, is_egress, is_icmp_error, tcp_flags, proto,
    frame_no, ts_ns; ``err_src`` too, or else ``icmp`` holds (row, err_src) of each side's ICMP errors);
    ``in_conns``/``out_conns`` one row per leg (conn_id 0.. in any order). A connection is anchored on its
    initiator's leg (docs/model.md): the pod's leg when it started inside, the outside leg when it started outside;
    either way it is keyed by an inside conn_id, its anchor leg, or for one started outside its primary inside leg
    (the mapping it ended under: _join_mappings). ``evidence``: what the match frames showed beyond the pairs
    (:func:`match_evidence`; None: nothing). ``inside_senders``: the addresses that send on the whole inside
    capture, when ``in_conns`` are part of it (natproof.spill); else read from ``in_conns``.
    ``known_node_addresses``: the node's addresses as other connections of the same captures show them
    (node_addresses of natproof.spill's other groups), beside those these connections show. ``inside_cut``: the
    inside capture's flows it holds only as frames a snaplen cut inside their TCP/UDP header (cut_flow_frame of
    CaptureInfo.cut_flows): an outside leg no inside leg paired with is read against them (_cut_legs);
    ``outside_cut`` the outside capture's, which a connection with no outside leg is read against (_cut_outside).
    ``left_out``: for one file of several interfaces, the flows it holds on interfaces left out of both points
    (natproof.points.left_out_flows): each connection's packets among them under its outside tuple are counted in
    ``left_out_replies`` / ``left_out_initiator`` with their ``left_out_interfaces`` (_left_out_counts), and replies
    that left there toward an initiator outside make ``reply_other_path``, not ``reply_dropped``.
    Returns (connections, in_pk, out_pk, pairs): the packet frames gain ``fate`` (FATE; null for outside packets
    of legs no connection owns) and ``anchor`` (the connection's key, that inside conn_id; null likewise);
    ``pairs`` are matches.pairs less the look-alikes dropped (a packet paired with a leg another connection owns).
    Connection columns: result.CONNECTION_SCHEMA, and internal ones (a leading underscore) the contract drops,
    among them ``_turned``: the anchor leg was turned round (_masquerade_read_as_dnat), its initiator the end
    in_conns calls ``dst`` (turned_sources).
    """
    offset = matches.clock_offset_ns
    n_in = in_conns.height
    ins = in_conns.sort("conn_id")
    outs = out_conns.sort("conn_id")
    copy_roots = _roots(n_in, in_pk, ins, matches.inside_self)
    # A leg that is no copy of another carries the connection under a tuple of its own (a mapping); a hairpin's
    # copies are no mapping: their packets are counted once, on the leg they copy.
    own_leg = copy_roots == pl.int_range(n_in, dtype=pl.UInt32, eager=True)

    # -- cross pairs, with the legs they link ------------------------------------------------------------------
    P = matches.pairs
    P = P.with_columns(
        in_pk["conn_id"].gather(P["in_row"]).alias("in_conn"),
        out_pk["conn_id"].gather(P["out_row"]).alias("out_conn"),
        in_pk["is_egress"].gather(P["in_row"]).alias("is_egress"),
        in_pk["is_icmp_error"].gather(P["in_row"]).alias("is_icmp_error"),
        in_pk["frame_no"].gather(P["in_row"]).alias("in_frame"),
        out_pk["frame_no"].gather(P["out_row"]).alias("out_frame"),
    )
    out_pk, outs = _orient_outside(P, out_pk, ins, outs, offset)
    roots = copy_roots
    link = _link(P, roots, ins, outs, matches.pairs.columns, pod_networks, offset)
    # A connection caught mid-flow whose packets read as a DNAT to the inside end, on a port no DNAT of a
    # Service uses, was the inside end's own, masqueraded on its way out: its legs are turned round and the
    # links made again (rare: only then twice).
    in_turn, out_turn = _masquerade_read_as_dnat(link, roots, in_pk, ins, outs, services)
    if in_turn.len():
        in_pk, ins = _turn_legs(in_pk, ins, in_turn)
        out_pk, outs = _turn_legs(out_pk, outs, out_turn)
        P = P.with_columns(in_pk["is_egress"].gather(P["in_row"]).alias("is_egress"))
        link = _link(P, roots, ins, outs, matches.pairs.columns, pod_networks, offset)
    # A connection is anchored on its initiator's leg (docs/model.md). A connection started outside whose packets
    # reached the pod under several tuples (its entry expired while the flow idled and the next packet was mapped
    # anew: tests/variants/udp-idle-nodeport) is one connection, as one started inside and mapped anew is one
    # (lab udp-remap): its inside legs are joined, and the links made again (rare: only then twice).
    joined = _join_mappings(roots, link, ins)
    if joined is not None:
        roots = joined
        link = _link(P, roots, ins, outs, matches.pairs.columns, pod_networks, offset)
    P, per_leg, owner, primary, side, kept = link
    del link

    # -- one row per connection: its anchor leg, primary outside leg and hairpin leg ---------------------------
    anchors = ins.with_columns(roots.alias("root"), pl.col("conn_id").is_in(in_turn.implode()).alias("_turned")
                               ).filter(pl.col("root") == pl.col("conn_id"))
    if joined is None:
        anchors = anchors.with_columns(pl.lit(1, pl.UInt32).alias("inside_tuples"))
    else:  # a connection of several inside legs: its span and its packets on each, copies aside
        legs_of = ins.with_columns(roots.alias("root")).filter(own_leg).group_by("root").agg(
            pl.col("first_ts_ns").min(), pl.col("last_ts_ns").max(), pl.col("first_frame").min(),
            *[pl.col(c).sum() for c in ("egress_packets", "reply_packets", "icmp_error_packets")],
            pl.len().cast(pl.UInt32).alias("inside_tuples"))
        anchors = anchors.drop(c for c in legs_of.columns if c in anchors.columns and c != "root").join(
            legs_of, on="root", how="left")
    self_legs = pl.DataFrame({"late": pl.int_range(n_in, dtype=pl.UInt32, eager=True), "root": roots}).filter(
        ~own_leg)
    hair = (self_legs.join(ins.select(pl.col("conn_id").alias("late"), "first_ts_ns"), on="late")
            .sort("root", "first_ts_ns").unique("root", keep="first")
            .join(ins.select(pl.col("conn_id").alias("late"), *_leg_tuple(ins, "h")), on="late")
            .select(pl.col("root").alias("conn_id"), "h_src", "h_sport", "h_dst", "h_dport"))
    # A hairpin's leg after the NAT is its second inside copy, also when packets of it left eth0 untranslated (its
    # entry expired: the FINs go out with the pod's address and the ClusterIP, a helper's kernel variant): an
    # outside leg under the inside's own tuple is then no primary leg, its packets leaked.
    df = (anchors.join(primary.rename({"anchor": "conn_id"}), on="conn_id", how="left")
          .join(hair.select("conn_id", pl.lit(True).alias("_hair")), on="conn_id", how="left")
          .with_columns(pl.when(pl.col("_hair").fill_null(False) & pl.col("_primary_unchanged").fill_null(False))
                        .then(None).otherwise(pl.col("primary_out")).alias("primary_out"))
          .drop("_hair", "_primary_unchanged")
          .join(side.rename({"anchor": "conn_id"}), on="conn_id", how="left")
          .join(outs.select(pl.col("conn_id").alias("primary_out"), *_leg_tuple(outs, "o"),
                            (pl.col("underlay") if "underlay" in outs.columns else pl.lit(None, pl.String))
                            .alias("o_underlay")),
                on="primary_out", how="left")
          .join(_outside_counts(per_leg, outs), on="conn_id", how="left")
          .join(hair, on="conn_id", how="left")
          .with_columns(pl.col("init_inside").fill_null(True)))
    df = _span_both_sides(df, per_leg, outs, offset)
    has_out = pl.col("o_src").is_not_null()
    has_hair = pl.col("h_src").is_not_null()
    init_in = pl.col("init_inside")
    df = df.with_columns(
        *[pl.when(init_in | ~has_out).then(pl.col(c)).otherwise(pl.col(f"o_{c}")).alias(f"orig_{c}") for c in _TUPLE],
        *[pl.when(init_in & has_out).then(pl.col(f"o_{c}")).when(init_in & has_hair).then(pl.col(f"h_{c}"))
          .when(init_in).then(None).otherwise(pl.col(c)).alias(f"trans_{c}") for c in _TUPLE],
    )
    # Which of the tuple's fields changed, as bits, then the list of their names from a table of the 16 lists (a
    # list built row by row took 0.6 s at 500k connections).
    changed = pl.sum_horizontal([
        (pl.col(f"orig_{c}") != pl.col(f"trans_{c}")).fill_null(False).cast(pl.UInt8) * (1 << i)
        for i, c in enumerate(_TUPLE)]).alias("_rw")
    names = pl.DataFrame({"_rw": pl.int_range(16, dtype=pl.UInt8, eager=True),
                          "rewrites": [[c for i, c in enumerate(_TUPLE) if m >> i & 1] for m in range(16)]},
                         schema={"_rw": pl.UInt8, "rewrites": pl.List(pl.String)})
    df = (df.with_columns(changed).join(names, on="_rw", how="left", maintain_order="left")
          .with_columns((pl.col("_rw") != 0).alias("rewritten")).drop("_rw"))
    conn_info = df.select("conn_id", "init_inside", "rewritten", "dst", "o_src").rename({"conn_id": "anchor"})

    # -- fates ---------------------------------------------------------------------------------------------------
    in_tuple = ins.select(pl.col("conn_id").alias("in_conn"), *_leg_tuple(ins, "i"))
    out_tuple = outs.select(pl.col("conn_id").alias("out_conn"), *_leg_tuple(outs, "x"))
    # Whether a pair crossed untranslated is a property of the two legs: decided once per pair of legs.
    same = pl.all_horizontal([pl.col(f"i_{c}") == pl.col(f"x_{c}") for c in _TUPLE])
    P = P.with_columns(_two("in_conn", "out_conn").alias("_lp"))
    leg_pairs = (P.select(pl.col("_lp").unique()).with_columns(*_split_two("_lp", "in_conn", "out_conn"))
                 .with_columns(pl.lit(roots).gather(pl.col("in_conn")).alias("anchor"))
                 .join(in_tuple, on="in_conn", how="left").join(out_tuple, on="out_conn", how="left")
                 .join(conn_info.select("anchor", "rewritten", "init_inside"), on="anchor", how="left")
                 .select("_lp", "rewritten", "init_inside", same.fill_null(False).alias("same")))
    P = P.join(leg_pairs, on="_lp", how="left", maintain_order="left").drop("_lp")
    P = P.with_columns(pl.when(pl.col("same") & pl.col("rewritten")).then(pl.lit("leaked")).otherwise(
        pl.lit("crossed")).cast(FATE).alias("fate")).drop("rewritten")
    S = matches.inside_self
    S = S.with_columns(in_pk["conn_id"].gather(S["a_row"]).alias("a_conn"),
                       in_pk["conn_id"].gather(S["b_row"]).alias("b_conn"))
    S = S.with_columns(roots.gather(S["a_conn"]).alias("anchor"))
    # The copy on the connection's own leg (not a copy leg) says which way the packet went.
    S = S.with_columns(pl.when(own_leg.gather(S["a_conn"])).then(pl.col("a_row")).otherwise(pl.col("b_row"))
                       .alias("pre_row"))
    S = S.with_columns(pl.when(pl.col("pre_row") == pl.col("a_row")).then(pl.col("b_row")).otherwise(pl.col("a_row"))
                       .alias("post_row"))
    S = S.with_columns(in_pk["is_egress"].gather(S["pre_row"]).alias("is_egress"),
                       in_pk["is_icmp_error"].gather(S["pre_row"]).alias("is_icmp_error"),
                       in_pk["frame_no"].gather(S["pre_row"]).alias("pre_frame"),
                       in_pk["frame_no"].gather(S["post_row"]).alias("post_frame"))

    n_out = out_pk.height
    in_fate = pl.repeat(None, in_pk.height, dtype=FATE, eager=True)
    in_fate = in_fate.scatter(P["in_row"], P["fate"]) if P.height else in_fate
    if S.height:
        crossed = pl.repeat("crossed", S.height, dtype=FATE, eager=True)
        in_fate = in_fate.scatter(S["a_row"], crossed).scatter(S["b_row"], crossed)
    out_fate = pl.repeat(None, n_out, dtype=FATE, eager=True)
    out_fate = out_fate.scatter(P["out_row"], P["fate"]) if P.height else out_fate
    crossed_init = pl.concat([P.filter(pl.col("is_egress")).select("anchor"),
                              S.filter(pl.col("is_egress")).select("anchor")])["anchor"].unique()

    in_pk = in_pk.with_columns(roots.gather(in_pk["conn_id"]).alias("anchor"), in_fate.alias("fate"))
    out_anchor = outs.select("conn_id").join(owner.rename({"out_conn": "conn_id"}), on="conn_id", how="left")
    out_anchor = out_anchor.sort("conn_id")["owner"]
    out_pk = out_pk.with_columns(out_anchor.gather(out_pk["conn_id"]).alias("anchor"), out_fate.alias("fate"))
    in_icmp, out_icmp = icmp if icmp is not None else (None, None)
    if outside_cut is not None and outside_cut.height:
        # A connection whose flow the outside capture holds only cut (_cut_flows_of) may have crossed: that no
        # copy of its packets pairs there is then no evidence that the far end never saw it, so its RSTs and
        # ICMP errors are the node's only on other evidence (an error's own source a node address).
        bare = ins.with_columns(roots.gather(ins["conn_id"]).alias("_root")).filter(
            (pl.col("_root") == pl.col("conn_id")) & ~pl.col("conn_id").is_in(crossed_init.implode())
            & pl.col("proto").is_in([6, 17]))
        bare = bare.join(conn_info.select(pl.col("anchor").alias("conn_id"), pl.col("init_inside")
                                          .alias("_far_is_dst")), on="conn_id", how="left")
        crossed_init = pl.concat([crossed_init, _cut_flows_of(bare, outside_cut, offset)["conn_id"]
                                  .cast(crossed_init.dtype)])
    in_pk = _unmatched_fates(in_pk, conn_info, crossed_init, pod_networks, inside=True, icmp=in_icmp)
    out_pk = _unmatched_fates(out_pk, conn_info, crossed_init, pod_networks, inside=False, icmp=out_icmp)

    # -- per-connection counts, latency, evidence ----------------------------------------------------------------
    reply = ~pl.col("is_egress") & ~pl.col("is_icmp_error")
    onward = pl.col("is_egress") == pl.col("init_inside")  # crossed inside -> outside
    lat_us = (pl.when(onward).then(pl.col("dt_ns") - offset).otherwise(offset - pl.col("dt_ns")) / 1000.0).filter(
        pl.col("method") == "exact")
    # Matched: the pairs of the connection's own inside legs (a hairpin's copies are counted as its own below). An
    # inside packet sent whole that the outside holds as segments (GSO/TSO, segmented before the outside capture)
    # pairs with each of them (natproof.match, method "bytes"): it crossed once, and is counted once (``_once``).
    P = P.join(primary, on="anchor", how="left", maintain_order="left").with_columns(
        (pl.col("out_conn") == pl.col("primary_out")).alias("_on_primary"), pl.col("anchor").set_sorted(),
        own_leg.gather(P["in_conn"]).alias("_own"),
        (pl.col("in_row").is_first_distinct() if (P["method"] == "bytes").any() else pl.lit(True)).alias("_once"))
    once = pl.col("_once")
    stats = P.group_by("anchor").agg(
        (pl.col("is_egress") & pl.col("_own") & once).sum().cast(pl.UInt32).alias("matched_egress"),
        (reply & pl.col("_own") & once).sum().cast(pl.UInt32).alias("matched_reply"),
        lat_us.median().round(3).alias("latency_median_us"),
        lat_us.max().round(3).alias("latency_max_us"),
        *[pl.col(f"{s}_frame").filter(cond & pl.col("_on_primary")).first().alias(f"evidence_{kind}_{name}_frame")
          for kind, cond in (("egress", pl.col("is_egress")), ("reply", reply), ("icmp_error", pl.col("is_icmp_error")))
          for s, name in (("in", "inside"), ("out", "outside"))],
        pl.col("out_conn").filter(~pl.col("same")).n_unique().cast(pl.UInt32).alias("outside_tuples"),
        # What crossed, counted here on the sorted pairs; the hairpin copies are added below.
        (pl.col("is_egress") & once).sum().cast(pl.UInt32).alias("_cross_init"),
        (reply & once).sum().cast(pl.UInt32).alias("_cross_reply"),
        ((pl.col("fate") == "crossed") & once).sum().cast(pl.UInt32).alias("fate_crossed"),
        ((pl.col("fate") == "leaked") & once).sum().cast(pl.UInt32).alias("fate_leaked"),
    )
    crossed_counts = ["_cross_init", "_cross_reply", "fate_crossed", "fate_leaked"]
    crossings = stats.select("anchor", *crossed_counts)
    stats = stats.drop(crossed_counts)
    # The shifts from the few packets whose numbers a middlebox changed, not a mode over every anchor's packets
    # (2x1M real: 0.3 s less).
    shifted = (pl.col("seq_delta") != 0) | (pl.col("ack_delta") != 0)

    def shift(n: str, egress: bool) -> pl.Expr:
        # The most common shift; between as common ones (an ALG's rewrites of +1 then +2 more bytes, as many packets
        # after each: tests/variants/ftp-eprt-random) the largest, the one after the last rewrite, not whichever
        # mode() lists first (it varied from run to run).
        modes = pl.col(f"{n}_delta").filter((pl.col("is_egress") == egress) & (pl.col(f"{n}_delta") != 0)).mode()
        top, bottom = modes.max(), modes.min()  # each deterministic, whatever order mode() lists them in
        return pl.when(top.abs() >= bottom.abs()).then(top).otherwise(bottom)

    shifts = P.filter(shifted).group_by("anchor").agg(
        *[shift(n, egress).alias(f"{who}_{n}_shift") for who, egress in (("init", True), ("reply", False))
          for n in ("seq", "ack")])
    stats = stats.join(shifts, on="anchor", how="left", maintain_order="left").select(
        *stats.columns[:-1], *shifts.columns[1:], stats.columns[-1])
    # Hairpin: the copies seen twice at the inside are its matched packets and its evidence.
    hair_stats = S.sort("pre_frame").group_by("anchor").agg(
        pl.col("is_egress").sum().cast(pl.UInt32).alias("_hair_egress"),
        reply.sum().cast(pl.UInt32).alias("_hair_reply"),
        *[pl.col(f).filter(cond).first().alias(f"_hair_{kind}_{f}")
          for kind, cond in (("egress", pl.col("is_egress")), ("reply", reply)) for f in ("pre_frame", "post_frame")],
    )
    stats = stats.join(hair_stats, on="anchor", how="full", coalesce=True).with_columns(
        (pl.col("matched_egress").fill_null(0) + pl.col("_hair_egress").fill_null(0)).alias("matched_egress"),
        (pl.col("matched_reply").fill_null(0) + pl.col("_hair_reply").fill_null(0)).alias("matched_reply"),
        *[pl.coalesce(f"evidence_{k}_inside_frame", f"_hair_{k}_pre_frame").alias(f"evidence_{k}_inside_frame")
          for k in ("egress", "reply")],
        *[pl.col(f"_hair_{k}_post_frame").alias(f"evidence_{k}_translated_frame") for k in ("egress", "reply")],
    ).drop(cs.starts_with("_hair_"))
    if S.height:  # every hairpin copy crossed
        hair = S.group_by("anchor").agg(pl.col("is_egress").sum().cast(pl.UInt32).alias("_h_init"),
                                        reply.sum().cast(pl.UInt32).alias("_h_reply"),
                                        pl.len().cast(pl.UInt32).alias("_h_crossed"))
        crossings = crossings.join(hair, on="anchor", how="full", coalesce=True).select(
            "anchor", *[(pl.col(c).fill_null(0) + pl.col(h).fill_null(0)).alias(c)
                        for c, h in (("_cross_init", "_h_init"), ("_cross_reply", "_h_reply"),
                                     ("fate_crossed", "_h_crossed"))],
            pl.col("fate_leaked").fill_null(0))
    # Packets that crossed are counted from the pairs; the few that did not, from the packet frames.
    alone = pl.col("anchor").is_not_null() & pl.col("fate").is_in(["inside_only", "outside_only", "node_generated"])
    rows = pl.concat([pk.filter(alone).select("anchor", "fate", "is_egress", "is_icmp_error", "_pre")
                      for pk in (in_pk, out_pk)])
    alive = reply & (pl.col("fate") != "node_generated")
    seen = rows.group_by("anchor").agg(
        *[(pl.col("fate") == f).sum().cast(pl.UInt32).alias(f"fate_{f}")
          for f in ("inside_only", "outside_only", "node_generated")],
        (alive & ~pl.col("_pre")).sum().cast(pl.UInt32).alias("_post_alone"),
        (alive & pl.col("_pre")).sum().cast(pl.UInt32).alias("_pre_alone"),
    )
    df = (df.rename({"conn_id": "anchor"})
          .join(stats, on="anchor", how="left").join(crossings, on="anchor", how="left")
          .join(seen, on="anchor", how="left").join(_acked_replies(in_pk, out_pk, evidence), on="anchor", how="left")
          .join(_payload_rewrites(in_pk, evidence), on="anchor", how="left"))
    df = df.join(_left_out_counts(df, left_out), on="anchor", how="left")
    counts = ["left_out_replies", "left_out_initiator",
              "matched_egress", "matched_reply", "outside_tuples", "fate_crossed", "fate_leaked", "fate_inside_only",
              "fate_outside_only", "fate_node_generated", "_cross_init", "_cross_reply", "_post_alone", "_pre_alone",
              "egress_outside", "reply_outside", "icmp_errors_outside", "_acked", "payload_rewrites"]
    df = df.with_columns([pl.col(c).fill_null(0) for c in counts])
    # A reply that crossed was seen on both sides of the NAT.
    df = df.with_columns((pl.col("_post_alone") + pl.col("_cross_reply")).alias("_post_reply"),
                         (pl.col("_pre_alone") + pl.col("_cross_reply")).alias("_pre_reply"))

    # -- services and verdicts -------------------------------------------------------------------------------------
    clusterip = in_networks(df["orig_dst"], services.networks)
    balancer = in_networks(df["orig_dst"], services.load_balancers)
    external = in_networks(df["orig_dst"], services.external_ips)
    dnat = pl.col("rewrites").list.contains("dst") | pl.col("rewrites").list.contains("dport")
    # A ClusterIP outside the configured Service network (EKS's 172.20.0.0/16, a custom range): a connection a
    # pod started to a private address no pod holds, whose destination the node rewrote (DNAT), on a port
    # below the NodePort range (a NodePort on a private node address is DNATed too).
    private = in_networks(df["orig_dst"], [space for space, _, _ in PRIVATE_SPACE])
    not_pod = ~in_networks(df["orig_dst"], pod_networks)
    node_port = services.is_node_port(pl.col("orig_dport"))
    seen_dnat = df.select(pl.col("init_inside") & dnat & ~node_port).to_series()
    # A LoadBalancer or external IP a Service dump names is DNATed in KUBE-SERVICES like a ClusterIP.
    df = df.with_columns((clusterip | balancer | external | (private & not_pod & seen_dnat)).alias("_clusterip"),
                         balancer.alias("_balancer"), external.alias("_external"))
    # The node's own addresses (node_addresses): a pod's connection to one of them is answered on the node (a
    # NodePort DNATed to a pod of this node, the node's own service): nothing of it crosses the uplink.
    node_addrs = node_addresses(df)
    if known_node_addresses:
        node_addrs = pl.concat([node_addrs, pl.Series(list(known_node_addresses), dtype=pl.String)]).unique()
    to_node = pl.col("init_inside") & pl.col("orig_dst").is_in(node_addrs.implode())
    df = df.with_columns(to_node.alias("_to_node"))
    nodeport = ~pl.col("_clusterip") & (dnat | pl.col("_to_node")) & node_port
    backend = pl.col("_clusterip") & dnat
    df = df.with_columns(
        pl.when(pl.col("_balancer")).then(pl.lit("LoadBalancer")).when(pl.col("_external")).then(pl.lit("ExternalIP"))
        .when(pl.col("_clusterip")).then(pl.lit("ClusterIP")).when(nodeport).then(pl.lit("NodePort"))
        .alias("service_type"),
    ).with_columns(
        pl.when(pl.col("service_type").is_not_null()).then(pl.col("orig_dst")).alias("service_ip"),
        pl.when(pl.col("service_type").is_not_null()).then(pl.col("orig_dport")).alias("service_port"),
        pl.when(backend | nodeport).then(pl.col("trans_dst")).alias("backend_ip"),
        pl.when(backend | nodeport).then(pl.col("trans_dport")).alias("backend_port"),
    )
    to_pods = in_networks(df["dst"], pod_networks)
    from_pods = in_networks(df["src"], pod_networks)
    df = df.with_columns(to_pods.alias("_to_pods"), from_pods.alias("_from_pods"))
    crossed_any = (pl.col("_cross_init") + pl.col("_cross_reply") + pl.col("fate_leaked")) > 0
    # Pod to pod is never NATed (the CNI's rules exclude the pod network: flannel's RETURN, Calico's natOutgoing
    # pools): a pod's connection to another pod is internal whether it stayed on the node or crossed unchanged to
    # another node (through the overlay, where the outside capture sees it inside VXLAN/Geneve/IP-in-IP, or
    # routed). One the node rewrote stays what the rewrite makes it.
    # A private destination a pod reached through an overlay tunnel, unchanged, is a pod on another node whatever
    # the inferred networks say (a CNI tunnels only its pod network: Calico's default 192.168.0.0/16 pool is wider
    # than the /24 inferred around a pod's own address).
    tunnelled = (pl.col("o_underlay").is_not_null()
                 & in_networks(df["dst"], [space for space, _, _ in PRIVATE_SPACE]).alias("_private"))
    pod_to_pod = (pl.col("_to_pods") | tunnelled) & pl.col("_from_pods") & ~pl.col("rewritten")
    answered_here = (pl.col("_clusterip") | pl.col("_to_node")) & (pl.col("_pre_reply") > 0)
    # Two hosts of one IPv6 /64 on the inside's own link (a home LAN whose global /64 the router routes without
    # NAT66, so the /64 is no pod network): nothing of theirs is for the router to forward.
    senders = (pl.Series(list(inside_senders), dtype=pl.String) if inside_senders is not None else
               pl.concat([ins.filter(pl.col("egress_packets") > 0)["src"].cast(pl.String),
                          ins.filter(pl.col("reply_packets") > 0)["dst"].cast(pl.String)]))
    df = df.with_columns(on_one_link(df["src"], df["dst"], senders).alias("_on_link"))
    internal = ~has_hair & ((~crossed_any & (pl.col("_to_pods") | answered_here | pl.col("_on_link")))
                            | pod_to_pod)
    evidence = df.select(internal.alias("internal"), pl.col("_cross_init").alias("cross_init"), "rewritten",
                         pl.col("_cross_reply").alias("cross_reply"), pl.col("_post_reply").alias("post_reply"),
                         pl.col("_pre_reply").alias("pre_reply"), pl.col("_acked").alias("acked"),
                         # On the outside, the initiator's side only for a connection started there.
                         pl.when(pl.col("init_inside")).then(0).otherwise(pl.col("left_out_replies"))
                         .alias("other_reply"))
    verdict = evidence.select(verdict_expr()).to_series()
    df = df.with_columns(verdict.alias("verdict"),
                         pl.when(init_in).then(pl.lit("inside")).otherwise(pl.lit("outside")).alias("initiator"))
    if outside_cut is not None and outside_cut.height:
        df = _cut_outside(df, ins, outside_cut, offset)
    # A connection that never reached the outside has no outside tuple, whatever else the outside holds.
    no_out = pl.col("verdict").is_in(["not_forwarded", "internal"]) & ~has_out
    df = df.with_columns(
        [pl.when(no_out).then(None).otherwise(pl.col(f"o_{c}")).alias(f"outside_{c}") for c in _TUPLE])
    legs = _legs(df, ins, outs, per_leg.select("anchor", "out_conn"), roots)
    df = df.join(legs, on="anchor", how="left")
    lost, out_pk = _lost_inbound(outs, out_pk, owner, services, pod_networks, offset)
    if lost.height:
        df = pl.concat([df, lost], how="diagonal_relaxed")
    if inside_cut is not None and inside_cut.height:
        taken = pl.concat([owner["out_conn"], lost.get_column("primary_out" if lost.height else "conn_id")
                           .cast(owner["out_conn"].dtype)])
        cut, out_pk = _cut_legs(outs, out_pk, taken, inside_cut, offset)
        if cut.height:
            df = pl.concat([df, cut], how="diagonal_relaxed")
    return df, in_pk.drop("_pre"), out_pk.drop("_pre"), kept


def _left_out_counts(df: pl.DataFrame, left_out: pl.DataFrame | None) -> pl.DataFrame:
    """(anchor, left_out_replies, left_out_initiator, left_out_interfaces): per connection with an outside leg, the
    packets a file of several interfaces holds on interfaces left out of both points (``left_out``:
    natproof.points.left_out_flows) under its outside tuple: replies (the tuple turned round) and the initiator's
    own, and the names of those interfaces (sorted). A connection started outside whose replies are there left the
    node toward the client by an uplink the outside point does not hold; one started inside got its replies in
    there, or sent its packets out there."""
    schema = {"anchor": df.schema["anchor"], "left_out_replies": pl.UInt32(), "left_out_initiator": pl.UInt32(),
              "left_out_interfaces": pl.List(pl.String())}
    if left_out is None or left_out.is_empty():
        return pl.DataFrame(schema=schema)
    legs = df.filter(pl.col("o_src").is_not_null()).select(
        "anchor", pl.col("proto").cast(pl.UInt8).alias("f_proto"),
        *[pl.col(f"o_{c}").cast(pl.String if c in ("src", "dst") else pl.UInt16).alias(c) for c in _TUPLE])
    flow = ["f_proto", "f_src", "f_sport", "f_dst", "f_dport"]
    ahead = legs.rename({c: f"f_{c}" for c in _TUPLE}).join(left_out, on=flow).with_columns(pl.lit(True).alias("_i"))
    back = (legs.rename({"src": "f_dst", "sport": "f_dport", "dst": "f_src", "dport": "f_sport"})
            .join(left_out, on=flow).with_columns(pl.lit(False).alias("_i")))
    both = pl.concat([ahead, back], how="diagonal")
    return both.group_by("anchor").agg(
        pl.col("packets").filter(~pl.col("_i")).sum().cast(pl.UInt32).alias("left_out_replies"),
        pl.col("packets").filter(pl.col("_i")).sum().cast(pl.UInt32).alias("left_out_initiator"),
        pl.col("interface").unique().sort().alias("left_out_interfaces")).cast(schema)


def acked_replies(match: pl.DataFrame, paired: pl.Series) -> pl.Series:
    """Rows (``row`` of a side's match frame, natproof.match.MATCH_COLUMNS) of TCP replies that paired with nothing
    on the other side and that the initiator acknowledged in the same leg: a packet of its, on this side, whose
    ack is exactly the reply's sequence number plus its length (SYN and FIN counted). ``paired``: this side's rows
    that paired. Such a reply did not cross the captured path, yet the initiator got it. Few rows are unpaired:
    only their legs' acks are looked at. Read before the match frames are let go (assemble has no TCP numbers)."""
    mask = pl.repeat(False, match.height, dtype=pl.Boolean, eager=True)
    if paired.len():
        mask = mask.scatter(paired, True)
    flags = pl.col("tcp_flags").cast(pl.Int64)
    alone = match.filter(~mask & (pl.col("proto") == 6) & ~pl.col("is_egress") & ~pl.col("is_icmp_error"))
    if alone.is_empty():
        return pl.Series("row", [], dtype=match.schema["row"])
    ends = alone.select("row", "conn_id", ((pl.col("tcp_seq").cast(pl.Int64) + pl.col("payload_len")
                                            + ((flags & _SYN) != 0).cast(pl.Int64)
                                            + ((flags & _FIN) != 0).cast(pl.Int64)) % (1 << 32)).alias("_end"))
    acks = (match.filter(pl.col("conn_id").is_in(ends["conn_id"].unique().implode()) & pl.col("is_egress")
                         & (pl.col("proto") == 6) & ((flags & _ACK) != 0))
            .select("conn_id", pl.col("tcp_ack").cast(pl.Int64).alias("_end")).unique())
    return ends.join(acks, on=["conn_id", "_end"], how="semi")["row"]


@dataclass(frozen=True)
class MatchEvidence:
    """What the match frames show beyond the pairs, read before they are let go (the packet frames assemble gets
    carry no TCP numbers or payload digests)."""

    acked: tuple[pl.Series, pl.Series]
    """Each side's rows of unpaired TCP replies the initiator acknowledged (acked_replies)."""
    rewritten: pl.Series
    """Inside rows of packets that crossed with their payload changed (rewritten_payloads)."""


def match_evidence(inside: pl.DataFrame, outside: pl.DataFrame, pairs: pl.DataFrame) -> MatchEvidence:
    """MatchEvidence of two sides' match frames (natproof.match.MATCH_COLUMNS) and their pairs (in_row, out_row)."""
    return MatchEvidence((acked_replies(inside, pairs["in_row"]), acked_replies(outside, pairs["out_row"])),
                         rewritten_payloads(inside, outside, pairs))


def rewritten_payloads(inside: pl.DataFrame, outside: pl.DataFrame, pairs: pl.DataFrame) -> pl.Series:
    """Rows (``row`` of the inside match frame) of packets that crossed with their payload changed: paired with a
    copy whose payload head (``head_digest``: its first natproof.decode.HEAD_DIGEST_BYTES bytes) differs, both
    carrying a payload and each head digested whole (``head_whole``: a snaplen that cut into it digests fewer bytes,
    so a capture cut short would read as every packet rewritten). NAT rewrites headers, never payloads; an ALG does
    (conntrack's FTP helper names the node for the pod in a PORT command, whether or not the length changes: a
    helper's kernel variant where it did not, so no sequence number moved). ICMP errors aside: the header they
    quote is translated.

    A pair by TCP byte range (method "bytes") that holds one packet's bytes in several (GRO merged segments on one
    side, GSO/TSO sent one large packet the other side holds as segments: the large packet pairs more than once)
    is compared only where the segment starts where the large packet does, and both digests cover as many bytes
    (a segment shorter than HEAD_DIGEST_BYTES digests fewer): the large one's head is that segment's head only.
    The bytes after the head no digest covers: a change there is not seen. A byte-range pair of one packet on each
    side (an ALG's rewrite that lengthened a segment) is compared as any other."""
    if pairs.is_empty():
        return pl.Series("row", [], dtype=inside.schema["row"])
    if "head_whole" not in inside.columns or "head_whole" not in outside.columns:
        return pl.Series("row", [], dtype=inside.schema["row"])
    if "method" in pairs.columns and (pairs["method"] == "bytes").any():
        pairs = pairs.filter(_same_heads(inside, outside, pairs))
    # Pairs come in inside row order: the inside side's columns are read in order, the outside's (in no order) only
    # for the pairs left, and its payload length for the few whose digests differ (2 x 5M synthetic: 0.52 -> s).
    i, o = pairs["in_row"], pairs["out_row"]
    carries = ((inside["payload_len"].gather(i) > 0) & ~inside["is_icmp_error"].gather(i)
               & inside["head_whole"].gather(i)).fill_null(False)
    i, o = i.filter(carries), o.filter(carries)
    differ = (inside["head_digest"].gather(i) != outside["head_digest"].gather(o)).fill_null(False)
    i, o = i.filter(differ), o.filter(differ)
    return i.filter(((outside["payload_len"].gather(o) > 0) & outside["head_whole"].gather(o)).fill_null(False)
                    ).alias("row")


def _same_heads(inside: pl.DataFrame, outside: pl.DataFrame, pairs: pl.DataFrame) -> pl.Series:
    """Per pair (in_row, out_row, method), whether its two head digests are of the same bytes (rewritten_payloads):
    every pair but one of a merge (method "bytes", a packet paired more than once) that starts past the large
    packet's start or digests a shorter head than it."""
    cut = pl.lit(HEAD_DIGEST_BYTES)
    i, o = pairs["in_row"], pairs["out_row"]
    heads = pairs.select("in_row", "out_row", "method").with_columns(
        inside["tcp_seq"].gather(i).alias("s_in"), outside["tcp_seq"].gather(o).alias("s_out"),
        inside["payload_len"].gather(i).alias("n_in"), outside["payload_len"].gather(o).alias("n_out"))
    merge = (pl.col("method") == "bytes") & ((pl.len().over("in_row") > 1) | (pl.len().over("out_row") > 1))
    alike = ((pl.col("s_in") == pl.col("s_out"))
             & (pl.min_horizontal("n_in", cut) == pl.min_horizontal("n_out", cut)))
    return heads.select((~merge | alike).fill_null(False)).to_series()


def _payload_rewrites(in_pk: pl.DataFrame, evidence: MatchEvidence | None) -> pl.DataFrame:
    """(anchor, payload_rewrites): per connection, its packets that crossed with their payload changed."""
    schema = {"anchor": in_pk.schema["anchor"], "payload_rewrites": pl.UInt32}
    if evidence is None or not evidence.rewritten.len():
        return pl.DataFrame(schema=schema)
    return (in_pk.select("anchor").gather(evidence.rewritten).filter(pl.col("anchor").is_not_null())
            .group_by("anchor").agg(pl.len().cast(pl.UInt32).alias("payload_rewrites")).cast(schema))


def _acked_replies(in_pk: pl.DataFrame, out_pk: pl.DataFrame, evidence: MatchEvidence | None) -> pl.DataFrame:
    """(anchor, _acked): per connection, its replies seen on the far side of the NAT only (not crossed, not made by
    the node) that the initiator acknowledged (:func:`acked_replies`): they reached it by a path the captures do
    not see (an inbound connection whose replies leave by an uplink the outside capture misses), not dropped."""
    frames = []
    for pk, rows in zip((in_pk, out_pk), evidence.acked if evidence else (), strict=False):
        if rows.len():
            frames.append(pk.select("anchor", "fate", "_pre").gather(rows))
    schema = {"anchor": in_pk.schema["anchor"], "_acked": pl.UInt32}
    if not frames:
        return pl.DataFrame(schema=schema)
    return (pl.concat(frames).filter(pl.col("anchor").is_not_null() & ~pl.col("_pre")
                                     & pl.col("fate").is_in(["inside_only", "outside_only"]))
            .group_by("anchor").agg(pl.len().cast(pl.UInt32).alias("_acked")).cast(schema))


def _lost_inbound(outs: pl.DataFrame, out_pk: pl.DataFrame, owner: pl.DataFrame, services: Services,
                  pod_networks: Sequence[Network], offset_ns: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Connections started outside towards a NodePort that never reached the inside: an outside leg no inside leg
    paired with, opened from outside the pod network to a port in the NodePort range. Other outside-only legs
    are the node's own traffic (or a capture of more than the NAT) and are no connection of this NAT.
    Returns (connection rows, out_pk with those legs' packets ``outside_only``); their times are put on the
    inside clock, as every connection's are."""
    legs = outs.join(owner.rename({"out_conn": "conn_id"}), on="conn_id", how="anti").filter(
        services.is_node_port(pl.col("dport")) & (pl.col("proto") != 1) & (pl.col("proto") != 58))
    if legs.is_empty():
        return legs.clear(), out_pk
    legs = legs.filter(~in_networks(legs["src"], pod_networks))
    if legs.is_empty():
        return legs.clear(), out_pk
    ids = legs["conn_id"]
    # What answered the client there came from the node itself, nothing having reached a pod: an ICMP error or a
    # RST (kube-proxy's REJECT of a NodePort without endpoints: ICMP port unreachable from the node's address, a
    # helper's kernel variant; the node's TCP for a port nothing DNATs).
    lost = pl.col("conn_id").is_in(ids.implode())
    made = ~pl.col("is_egress") & (pl.col("is_icmp_error") | ((pl.col("tcp_flags").fill_null(0) & 0x04) != 0))
    out_pk = out_pk.with_columns(pl.when(lost & made).then(pl.lit("node_generated", FATE))
                                 .when(lost).then(pl.lit("outside_only", FATE))
                                 .otherwise(pl.col("fate")).alias("fate"))
    # Answered otherwise (a SYN-ACK, data): the DNAT sent it to an endpoint the inside capture does not see (another
    # pod's veth: a helper's kernel variant), so it is not_captured, not not_forwarded.
    by_node = (out_pk.filter(lost).group_by("conn_id").agg(
        (pl.col("fate") == "node_generated").sum().cast(pl.UInt32).alias("_by_node"),
        (~pl.col("is_egress") & (pl.col("fate") != "node_generated")).sum().cast(pl.UInt32).alias("_answered")))
    legs = legs.join(by_node, on="conn_id", how="left").with_columns(pl.col("_by_node").fill_null(0),
                                                                     pl.col("_answered").fill_null(0))
    packets = pl.col("egress_packets") + pl.col("reply_packets") + pl.col("icmp_error_packets")
    listed = (pl.lit(True) if services.listed_node_ports is None
              else pl.col("dport").is_in(list(services.listed_node_ports)))
    rows = legs.select(
        pl.lit(None, pl.UInt32).alias("anchor"), pl.col("conn_id").alias("primary_out"), "proto",
        *[pl.lit(None, pl.String if c in ("src", "dst") else pl.UInt16).alias(c) for c in _TUPLE],
        *[(pl.col(c) - offset_ns).alias(c) for c in ("first_ts_ns", "last_ts_ns")],
        "first_frame", pl.lit(0, pl.UInt32).alias("egress_packets"), pl.lit(0, pl.UInt32).alias("reply_packets"),
        pl.lit(0, pl.UInt32).alias("icmp_error_packets"),
        pl.col("egress_packets").alias("egress_outside"), pl.col("reply_packets").alias("reply_outside"),
        pl.col("icmp_error_packets").alias("icmp_errors_outside"),
        *[pl.col(c).alias(f"outside_{c}") for c in _TUPLE], *[pl.col(c).alias(f"orig_{c}") for c in _TUPLE],
        pl.lit("outside").alias("initiator"),
        pl.when(pl.col("_answered") > 0).then(pl.lit("not_captured")).otherwise(pl.lit("not_forwarded"))
        .alias("verdict"),
        pl.lit([], pl.List(pl.String)).alias("rewrites"),
        (packets - pl.col("_by_node")).alias("fate_outside_only"), pl.col("_by_node").alias("fate_node_generated"),
        *[pl.when(listed).then(value).alias(name) for name, value in (
            ("service_type", pl.lit("NodePort")), ("service_ip", pl.col("dst")), ("service_port", pl.col("dport")))],
        pl.concat_list(pl.struct(pl.lit("outside").alias("observation_point"), *_TUPLE, "first_frame",
                                 packets.alias("packets"))).alias("legs"),
    )
    return rows, out_pk


CUT_FLOW_SCHEMA: dict[str, pl.DataType] = {
    "proto": pl.UInt8(), "src": pl.String(), "sport": pl.UInt16(), "dst": pl.String(), "dport": pl.UInt16(),
    "frames": pl.UInt32(), "first_ts_ns": pl.Int64(), "last_ts_ns": pl.Int64(), "first_frame": pl.UInt32()}
"""One row per flow and direction a capture holds only as frames cut inside their TCP/UDP header (truncated_l4)
with their ports captured: cut_flow_frame of CaptureInfo.cut_flows. Times in ns on that capture's clock."""

CUT_SLACK_NS = 1_000_000_000
"""How far outside a cut flow's span (1 s, correlate's default tolerance) an outside leg may lie and still be read
against it (_cut_legs): the clock offset's error."""


def cut_flow_frame(flows: dict[tuple[int, str, int, str, int], list[int]]) -> pl.DataFrame:
    """CaptureInfo.cut_flows as CUT_FLOW_SCHEMA rows."""
    rows = [(*flow, *seen) for flow, seen in flows.items()]
    return pl.DataFrame(rows, schema=CUT_FLOW_SCHEMA, orient="row")


def _cut_flows_of(legs: pl.DataFrame, cut: pl.DataFrame, shift_ns: int) -> pl.DataFrame:
    """(conn_id, other_capture_cut, other_capture_cut_shared, _from_inside) of ``legs`` (conn_id, proto and the
    tuple, first_ts_ns and last_ts_ns on their own capture's clock, ``shift_ns`` added to put them on the cut
    capture's; optionally ``_far_is_dst``, which end is the far one) that the other capture holds as cut flows
    (``cut``: CUT_FLOW_SCHEMA), within CUT_SLACK_NS of the leg's span:

    - by ports: a cut flow of the leg's protocol with an end, address and port, of the leg's own (the far end a
      MASQUERADE keeps, the client a DNAT keeps). Each such flow goes to one leg: the one that also has its other
      port, then the nearest in time. other_capture_cut_shared 0.
    - by hosts, for a leg no flow fits by ports: a flow whose ports were cut too (sport/dport null) with the leg's
      far end's address as one of its ends (``_far_is_dst`` given: that end only; else either). Its frames cannot
      be told apart between the legs it overlaps, so it goes to every one of them: it proves only that the other
      capture cut packets between those hosts then. other_capture_cut_shared: how many legs the most shared of
      its flows overlaps (itself included; more than the frames when too few frames for one each).

    other_capture_cut: the frames of a leg's cut flows; _from_inside: whether the end shared is the leg's
    destination (the leg's source is behind the NAT, its initiator)."""
    schema = {"conn_id": legs.schema["conn_id"], "other_capture_cut": pl.UInt32,
              "other_capture_cut_shared": pl.UInt32, "_from_inside": pl.Boolean}
    if legs.is_empty() or cut.is_empty():
        return pl.DataFrame(schema=schema)

    def span(c: pl.DataFrame) -> pl.DataFrame:
        return c.filter((pl.col("first_ts_ns") <= pl.col("_leg_last") + CUT_SLACK_NS)
                        & (pl.col("last_ts_ns") >= pl.col("_leg_first") - CUT_SLACK_NS))

    ends = pl.concat([cut.with_row_index("_flow").select("_flow", "proto", pl.col(a).alias("_end"), pl.col(p).alias(
        "_end_port"), pl.col(o).alias("_other_port"), "frames", "first_ts_ns", "last_ts_ns")
        for a, p, o in (("src", "sport", "dport"), ("dst", "dport", "sport"))])
    far = "_far_is_dst" in legs.columns
    cand = pl.concat([legs.select("conn_id", pl.col("proto").cast(pl.UInt8), pl.col(a).cast(pl.String).alias("_end"),
                                  pl.col(p).cast(pl.UInt16).alias("_end_port"),
                                  pl.col(o).cast(pl.UInt16).alias("_leg_other"),
                                  pl.lit(a == "dst").alias("_far_is_dst"),
                                  (pl.col("_far_is_dst") == (a == "dst") if far else pl.lit(True)).alias("_far"),
                                  (pl.col("first_ts_ns") + shift_ns).alias("_leg_first"),
                                  (pl.col("last_ts_ns") + shift_ns).alias("_leg_last"))
                      for a, p, o in (("src", "sport", "dport"), ("dst", "dport", "sport"))])
    by_ports = span(cand.join(ends.filter(pl.col("_end_port").is_not_null()), on=["proto", "_end", "_end_port"]))
    best = (by_ports.with_columns((pl.col("_other_port") != pl.col("_leg_other")).alias("_port_moved"),
                                  (pl.col("first_ts_ns") - pl.col("_leg_first")).abs().alias("_apart"))
            .sort("_flow", "_port_moved", "_apart", "conn_id").unique("_flow", keep="first"))
    ported = best.group_by("conn_id").agg(pl.col("frames").sum().cast(pl.UInt32).alias("other_capture_cut"),
                                          pl.lit(0, pl.UInt32).alias("other_capture_cut_shared"),
                                          pl.col("_far_is_dst").any().alias("_from_inside"))
    hosts = ends.filter(pl.col("_end_port").is_null()).drop("_end_port", "_other_port")
    if hosts.is_empty():
        return ported.select(list(schema)).cast(schema)
    by_hosts = span(cand.filter(pl.col("_far")).join(ported.select("conn_id"), on="conn_id", how="anti")
                    .join(hosts, on=["proto", "_end"]))
    by_hosts = by_hosts.unique(["_flow", "conn_id"]).with_columns(
        pl.col("conn_id").n_unique().over("_flow").cast(pl.UInt32).alias("_legs"))
    shared = by_hosts.group_by("conn_id").agg(pl.col("frames").sum().cast(pl.UInt32).alias("other_capture_cut"),
                                              pl.col("_legs").max().alias("other_capture_cut_shared"),
                                              pl.col("_far_is_dst").any().alias("_from_inside"))
    return pl.concat([ported.select(list(schema)).cast(schema), shared.select(list(schema)).cast(schema)])


def _cut_outside(df: pl.DataFrame, ins: pl.DataFrame, cut: pl.DataFrame, offset_ns: int) -> pl.DataFrame:
    """``df`` (assemble's connection rows, anchor and verdict set) with its connections that crossed nothing the
    outside capture shows (no outside leg, no pair, not internal) and whose anchor leg the outside capture holds
    only as frames a snaplen cut inside their TCP/UDP header (``cut``: CUT_FLOW_SCHEMA, the outside clock;
    _cut_flows_of, ``offset_ns`` outside minus inside) made not_captured, ``other_capture_cut`` its cut frames:
    they reached the outside capture's interface, which cut what would show how they crossed, so they are neither
    dropped (not_forwarded) nor answered unseen. Their packets stay inside_only: none paired."""
    open_ = df.filter(pl.col("o_src").is_null() & (pl.col("_cross_init") + pl.col("_cross_reply")
                                                     + pl.col("fate_leaked") == 0)
                      & pl.col("verdict").is_in(["not_forwarded", "not_captured", "no_reply", "reply_dropped",
                                                 "reply_other_path"]))["anchor"]
    legs = ins.filter(pl.col("conn_id").is_in(open_.implode()) & pl.col("proto").is_in([6, 17]))
    # Its far end: the destination of a connection started inside, else the client, its source.
    legs = legs.join(df.select(pl.col("anchor").alias("conn_id"), pl.col("init_inside").alias("_far_is_dst")),
                     on="conn_id", how="left")
    found = _cut_flows_of(legs, cut, offset_ns).select(pl.col("conn_id").alias("anchor"),
                                                       pl.col("other_capture_cut").alias("_cut"),
                                                       pl.col("other_capture_cut_shared").alias("_shared"))
    if found.is_empty():
        return df
    df = df.join(found, on="anchor", how="left", maintain_order="left")
    return df.with_columns(
        pl.when(pl.col("_cut").is_not_null()).then(pl.lit("not_captured")).otherwise(pl.col("verdict"))
        .alias("verdict"), pl.col("_cut").alias("other_capture_cut"),
        pl.col("_shared").alias("other_capture_cut_shared")).drop("_cut", "_shared")


def _cut_legs(outs: pl.DataFrame, out_pk: pl.DataFrame, taken: pl.Series, cut: pl.DataFrame,
              offset_ns: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Outside legs no connection took (``taken``: out_conn ids owned or _lost_inbound's) that the inside capture
    holds only as frames a snaplen cut inside their TCP/UDP header (``cut``: CUT_FLOW_SCHEMA, the inside clock;
    _cut_flows_of, the leg's span put on the inside clock: ``offset_ns`` is outside minus inside). Such a leg
    crossed the inside capture's interface, which cut what would show how (its TCP flags and numbers): verdict
    not_captured, ``other_capture_cut`` its cut frames, its packets ``outside_only``, as a leg seen while the
    inside capture was off is (_lost_inbound, natproof.kernel._unseen_outside_legs). Started at the leg's far
    end (only its source is a cut flow's end): started outside, its original tuple the leg's; else started
    inside, its pre-NAT tuple unread (orig_* null). Returns (connection rows, out_pk with those legs' packets
    outside_only); a leg no cut flow fits stays in none, the node's own traffic, as before."""
    legs = outs.join(pl.DataFrame({"conn_id": taken.cast(outs["conn_id"].dtype)}), on="conn_id", how="anti").filter(
        pl.col("proto").is_in([6, 17]))
    if legs.is_empty() or cut.is_empty():
        return legs.clear(), out_pk
    per_leg = _cut_flows_of(legs, cut, -offset_ns)
    if per_leg.is_empty():
        return legs.clear(), out_pk
    legs = legs.join(per_leg, on="conn_id")
    ids = legs["conn_id"]
    out_pk = out_pk.with_columns(pl.when(pl.col("conn_id").is_in(ids.implode())).then(pl.lit("outside_only", FATE))
                                 .otherwise(pl.col("fate")).alias("fate"))
    packets = pl.col("egress_packets") + pl.col("reply_packets") + pl.col("icmp_error_packets")
    inbound = ~pl.col("_from_inside")
    rows = legs.select(
        pl.lit(None, pl.UInt32).alias("anchor"), pl.col("conn_id").alias("primary_out"), "proto",
        *[pl.lit(None, pl.String if c in ("src", "dst") else pl.UInt16).alias(c) for c in _TUPLE],
        *[(pl.col(c) - offset_ns).alias(c) for c in ("first_ts_ns", "last_ts_ns")],
        "first_frame", *[pl.lit(0, pl.UInt32).alias(c) for c in ("egress_packets", "reply_packets",
                                                                  "icmp_error_packets")],
        pl.col("egress_packets").alias("egress_outside"), pl.col("reply_packets").alias("reply_outside"),
        pl.col("icmp_error_packets").alias("icmp_errors_outside"),
        pl.col("first_frame").alias("evidence_egress_outside_frame"),
        *[pl.col(c).alias(f"outside_{c}") for c in _TUPLE],
        *[pl.when(inbound).then(pl.col(c)).alias(f"orig_{c}") for c in _TUPLE],
        *[pl.when(~inbound).then(pl.col(c)).alias(f"trans_{c}") for c in _TUPLE],
        pl.when(inbound).then(pl.lit("outside")).otherwise(pl.lit("inside")).alias("initiator"),
        pl.lit("not_captured").alias("verdict"), pl.lit([], pl.List(pl.String)).alias("rewrites"),
        packets.alias("fate_outside_only"), pl.lit(1, pl.UInt32).alias("outside_tuples"), "other_capture_cut",
        "other_capture_cut_shared",
        pl.concat_list(pl.struct(pl.lit("outside").alias("observation_point"), *_TUPLE, "first_frame",
                                 packets.alias("packets"))).alias("legs"),
    )
    return rows, out_pk


def _span_both_sides(df: pl.DataFrame, per_leg: pl.DataFrame, outs: pl.DataFrame, offset_ns: int) -> pl.DataFrame:
    """``df`` (one row per connection: conn_id, its anchor; first_ts_ns and last_ts_ns of its inside legs) with the
    span widened to the outside legs its pairs link it to (``per_leg``, whose packets _outside_counts counts), their
    times put on the inside clock (``offset_ns``: outside minus inside clock): a connection's first_seen and
    last_seen cover every packet of it either capture holds. An outside capture started before the inside one
    holds a long connection's first packets (a helper's trial s07b: outside from T0+0.1 s, first_seen the inside's
    first packet at T0+1.05 s)."""
    spans = (per_leg.select("anchor", "out_conn")
             .join(outs.select(pl.col("conn_id").alias("out_conn"), "first_ts_ns", "last_ts_ns"), on="out_conn")
             .group_by("anchor").agg((pl.col("first_ts_ns").min() - offset_ns).alias("_out_first"),
                                     (pl.col("last_ts_ns").max() - offset_ns).alias("_out_last"))
             .rename({"anchor": "conn_id"}))
    return (df.join(spans, on="conn_id", how="left", maintain_order="left")
            .with_columns(pl.min_horizontal("first_ts_ns", "_out_first").alias("first_ts_ns"),
                          pl.max_horizontal("last_ts_ns", "_out_last").alias("last_ts_ns"))
            .drop("_out_first", "_out_last"))


def _outside_counts(per_leg: pl.DataFrame, outs: pl.DataFrame) -> pl.DataFrame:
    """(conn_id, egress_outside, reply_outside, icmp_errors_outside): per connection (conn_id: its anchor), the
    packets of every outside leg its pairs link it to (``per_leg``: _per_leg), not of its primary leg alone: a
    flow mapped anew after idling left under each of its outside tuples in turn (lab udp-remap), and its packets
    leaked under the inside's own tuple are on the outside too (cases/idle-expiry-fin-leak), as its matched
    counts say."""
    legs = per_leg.select("anchor", "out_conn").join(
        outs.select(pl.col("conn_id").alias("out_conn"), "egress_packets", "reply_packets", "icmp_error_packets"),
        on="out_conn", how="left")
    return legs.group_by("anchor").agg(
        pl.col("egress_packets").sum().alias("egress_outside"), pl.col("reply_packets").sum().alias("reply_outside"),
        pl.col("icmp_error_packets").sum().alias("icmp_errors_outside")).rename({"anchor": "conn_id"})


def _orient_outside(P: pl.DataFrame, out_pk: pl.DataFrame, ins: pl.DataFrame, outs: pl.DataFrame,
                    offset_ns: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(out_pk, outs) with each outside leg turned round where its pairs say it runs the other way from the inside
    leg they pair with: most of its paired packets are egress on one side and replies on the other. A leg's
    direction comes from who opened it (a SYN, an echo request), else from its first packet; an outside capture
    that missed the initiator's packets (they left by another link, or before it started) takes the first reply
    for the opening (a helper's variant of cases/asymmetric-reply: echo replies read as the pod's egress, the
    translated tuple printed backwards). Turned round only when the outside leg's direction was guessed and the
    inside leg's was seen, or both were guessed and the inside capture saw the flow first (``offset_ns``: outside
    minus inside clock): the leg that saw its start guessed better."""
    pairs = P.filter(~pl.col("is_icmp_error"))
    agree = pairs["is_egress"] == out_pk["is_egress"].gather(pairs["out_row"])
    if agree.all():  # every pair agrees (as a rule): no vote to count (2 x 5M real: a group-by of 10M pairs)
        return out_pk, outs
    votes = (pairs.select("in_conn", "out_conn", agree.alias("agree"))
             .group_by("out_conn").agg(pl.col("agree").sum().alias("agree"), pl.len().alias("n"),
                                       pl.col("in_conn").first()))
    seen_in = ins.select(pl.col("conn_id").alias("in_conn"), pl.col("origin_seen").alias("in_seen"),
                         pl.col("first_ts_ns").alias("in_first"))
    seen_out = outs.select(pl.col("conn_id").alias("out_conn"), pl.col("origin_seen").alias("out_seen"),
                           (pl.col("first_ts_ns") - offset_ns).alias("out_first"))
    in_seen, out_seen = pl.col("in_seen").fill_null(False), pl.col("out_seen").fill_null(False)
    turn = (votes.filter(pl.col("agree") * 2 < pl.col("n"))
            .join(seen_out, on="out_conn", how="left").join(seen_in, on="in_conn", how="left")
            .filter((in_seen & ~out_seen) | (~in_seen & ~out_seen & (pl.col("in_first") <= pl.col("out_first"))))
            ["out_conn"])
    if turn.is_empty():
        return out_pk, outs
    turned = pl.col("conn_id").is_in(turn.implode())
    outs = outs.with_columns(
        *[pl.when(turned).then(pl.col(b)).otherwise(pl.col(a)).alias(a)
          for a, b in (("src", "dst"), ("dst", "src"), ("sport", "dport"), ("dport", "sport"),
                       ("egress_packets", "reply_packets"), ("reply_packets", "egress_packets"))])
    out_pk = out_pk.with_columns(pl.when(turned & ~pl.col("is_icmp_error")).then(~pl.col("is_egress"))
                                 .otherwise(pl.col("is_egress")).alias("is_egress"))
    return out_pk, outs


def _masquerade_read_as_dnat(link: tuple[pl.DataFrame, ...], roots: pl.Series, in_pk: pl.DataFrame,
                             ins: pl.DataFrame, outs: pl.DataFrame, services: Services) -> tuple[pl.Series, pl.Series]:
    """(inside conn_ids, outside conn_ids) of the legs to turn round: connections read as started outside
    (``link``: what _link made of ``roots``) whose opening neither capture holds (no SYN: a direction guessed from
    the first packet, connections._answers_first), TCP or UDP, one inside leg, whose primary outside leg differs
    from it in the inside end's address alone, that end's port kept and a port a client is given (EPHEMERAL_FROM
    up), neither a NodePort (``services``: the range, the dump's nodePorts) nor a LoadBalancer or external IP;
    and either the inside end sent the first packet the inside capture holds (``in_pk``: the guess went against
    the order, on the ports alone) or the far end's port is a server's (below EPHEMERAL_FROM).

    Read forwards that is a DNAT of the node's address to the inside end on the same port, which no Service makes
    (a NodePort is in its range, a hostPort a server's port); read backwards it is MASQUERADE: the inside end's
    source rewritten to the node's address, its port kept (a helper's trial: a gRPC stream from
    10.244.0.10:33000 to :50051 caught mid-way, the pod's first segment taken for an answer to the server's; a
    UDP flow to :8443 whose server spoke first). Where the ports do not say (a NodePort, a port changed, below
    32768: a hostPort keeps its server's port; a client's port at both ends and the far end first: a home
    router's port forward of 51820, tests/variants/home-reply-first), the reading stays."""
    _, per_leg, owner, primary, side, _ = link
    none = pl.Series([], dtype=pl.UInt32)
    outside = side.filter(~pl.col("init_inside"))["anchor"]
    if outside.is_empty():
        return none, none
    single = roots.value_counts().filter(pl.col("count") == 1)[roots.name]
    leg = ins.select(pl.col("conn_id").alias("anchor"), "proto", "origin_seen", *_TUPLE)
    out = outs.select(pl.col("conn_id").alias("primary_out"), pl.col("origin_seen").alias("o_seen"),
                      *_leg_tuple(outs, "o"))
    lo, hi = services.nodeport_range
    listed = [*services.node_ports, *(services.listed_node_ports or ())]
    rows = (primary.filter(pl.col("anchor").is_in(outside.implode()) & pl.col("anchor").is_in(single.implode()))
            .join(leg, on="anchor").join(out, on="primary_out"))
    service = in_networks(rows["o_dst"].cast(pl.String), (*services.load_balancers, *services.external_ips))
    rows = rows.filter(
        ~pl.col("origin_seen") & ~pl.col("o_seen") & pl.col("proto").is_in([6, 17])
        & (pl.col("src") == pl.col("o_src")) & (pl.col("sport") == pl.col("o_sport"))
        & (pl.col("dport") == pl.col("o_dport")) & (pl.col("dst").cast(pl.String) != pl.col("o_dst").cast(pl.String))
        & (pl.col("dport") >= EPHEMERAL_FROM) & ~pl.col("dport").is_between(lo, hi) & ~pl.col("dport").is_in(listed)
        & ~service)
    if rows.is_empty():
        return none, none
    first = (in_pk.filter(pl.col("conn_id").is_in(rows["anchor"].implode()) & ~pl.col("is_icmp_error"))
             .group_by("conn_id").agg(pl.col("is_egress").sort_by("frame_no").first().alias("_far_first"))
             .rename({"conn_id": "anchor"}))
    rows = rows.join(first, on="anchor", how="left").filter(
        ~pl.col("_far_first").fill_null(True) | (pl.col("sport") < EPHEMERAL_FROM))
    # Every outside leg the connection owns turns with it; one whose opening was seen keeps the reading.
    linked = (per_leg.join(owner, on="out_conn").filter(pl.col("owner") == pl.col("anchor"))
              .filter(pl.col("anchor").is_in(rows["anchor"].implode()))
              .join(outs.select(pl.col("conn_id").alias("out_conn"), "origin_seen"), on="out_conn"))
    seen = linked.filter(pl.col("origin_seen"))["anchor"]
    rows = rows.filter(~pl.col("anchor").is_in(seen.implode()))
    linked = linked.filter(pl.col("anchor").is_in(rows["anchor"].implode()))
    return rows["anchor"].cast(pl.UInt32), linked["out_conn"].cast(pl.UInt32).unique()


def turned_sources(in_conns: pl.DataFrame, conns: pl.DataFrame) -> pl.DataFrame:
    """``in_conns`` (one row per inside leg: conn_id, src, dst) with the legs :func:`assemble` turned round read as
    it finally read them: ``src`` the end that started the leg, ``dst`` the other. ``conns``: assemble's connection
    rows (``_turned``, ``anchor``: the inside conn_id). natproof.networks.infer_pod_networks reads the sources: the
    pod of a masqueraded flow caught mid-flow is its leg's source only once the leg is turned (a helper's trial
    s16: 10.244.0.10 shown beside "pod networks none")."""
    if "_turned" not in conns.columns:
        return in_conns
    turned = conns.filter(pl.col("_turned").fill_null(False))["anchor"]
    if turned.is_empty():
        return in_conns
    flip = pl.col("conn_id").is_in(turned.implode())
    return in_conns.with_columns(pl.when(flip).then(pl.col("dst")).otherwise(pl.col("src")).alias("src"),
                                 pl.when(flip).then(pl.col("src")).otherwise(pl.col("dst")).alias("dst"))


def _turn_legs(pk: pl.DataFrame, conns: pl.DataFrame, turn: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(pk, conns) with the legs ``turn`` (conn_ids) turned round: their other end is the initiator, every packet's
    is_egress the other way (an ICMP error's too: it runs against the packet it quotes), and the leg's tuple and
    counts swapped, as natproof.connections would have made them had it seen that end open the flow."""
    turned = pl.col("conn_id").is_in(turn.implode())
    conns = conns.with_columns(
        *[pl.when(turned).then(pl.col(b)).otherwise(pl.col(a)).alias(a)
          for a, b in (("src", "dst"), ("dst", "src"), ("sport", "dport"), ("dport", "sport"),
                       ("egress_packets", "reply_packets"), ("reply_packets", "egress_packets"))])
    pk = pk.with_columns(pl.when(turned).then(~pl.col("is_egress")).otherwise(pl.col("is_egress")).alias("is_egress"))
    return pk, conns


def _two(hi: str, lo: str) -> pl.Expr:
    """Two UInt32 columns as one UInt64 key (``hi`` in the high half): polars groups, deduplicates and joins on
    one such key several times faster than on the two columns (2 x 5M pairs: 0.25-0.3 s -> 0.05-0.1 s each)."""
    return pl.col(hi).cast(pl.UInt64) * (1 << 32) + pl.col(lo).cast(pl.UInt64)


def _split_two(key: str, hi: str, lo: str) -> tuple[pl.Expr, pl.Expr]:
    """The two UInt32 columns of a _two key."""
    return ((pl.col(key) // (1 << 32)).cast(pl.UInt32).alias(hi),
            (pl.col(key) % (1 << 32)).cast(pl.UInt32).alias(lo))


def _per_leg(P: pl.DataFrame, ins: pl.DataFrame, outs: pl.DataFrame) -> pl.DataFrame:
    """Per (anchor, outside leg): pairs ``n``, pairs of the initiator's packets ``n_init``, the first outside frame,
    and whether the outside leg's tuple is the anchor leg's own (``unchanged``: nothing rewritten)."""
    # One 64-bit key, not two columns: with ``anchor`` sorted, polars' two-key group-by took twice as long.
    per_leg = (P.group_by(_two("anchor", "out_conn").alias("_leg"))
               .agg(pl.len().alias("n"), pl.col("is_egress").sum().alias("n_init"),
                    pl.col("out_frame").min().alias("first_out"))
               .select(*_split_two("_leg", "anchor", "out_conn"), "n", "n_init", "first_out"))
    unchanged = pl.all_horizontal([
        pl.col(c).cast(pl.String) == pl.col(f"x_{c}").cast(pl.String) for c in _TUPLE])
    return (per_leg.join(ins.select(pl.col("conn_id").alias("anchor"), *_TUPLE), on="anchor", how="left")
            .join(outs.select(pl.col("conn_id").alias("out_conn"), *_leg_tuple(outs, "x")), on="out_conn", how="left")
            .with_columns(unchanged.fill_null(False).alias("unchanged"))
            .select("anchor", "out_conn", "n", "n_init", "first_out", "unchanged"))


def _unmatched_fates(pk: pl.DataFrame, conn_info: pl.DataFrame, crossed_init: pl.Series,
                     pod_networks: Sequence[Network], *, inside: bool,
                     icmp: pl.DataFrame | None = None) -> pl.DataFrame:
    """Give each packet of a connection that paired with nothing its fate; add ``_pre`` (seen before the NAT in
    the initiator's direction: on the initiator's side of it).

    - A reply (or an RST or ICMP error towards the initiator) seen on the initiator's side that never crossed is
      ``node_generated`` when it is an RST or ICMP error and either nothing of the initiator's ever crossed (the
      far end never saw the connection, so it cannot have answered: a REJECT, kube-proxy's "no endpoints") or,
      for an ICMP error, its source is a node address (the bridge's in the pod network, or the translated
      source) rather than the far end (cases/reject-no-endpoints).
    - An RST or ICMP error in the initiator's direction seen only after the NAT was made by the node (the RST a
      node sends for a reply conntrack marked INVALID and did not reverse-translate: cases/oow-invalid-node-rst);
      so was an RST towards an outside initiator seen only outside (the node answering its packet, not DNATed).
    - Anything else is ``inside_only`` or ``outside_only``: dropped on the node, or carried by a path not captured.
    """
    # _pre for every packet, from two lookups by anchor (no join of the packet frame).
    info = conn_info.sort("anchor")
    n = int(info["anchor"].max()) + 1 if info.height else 0
    init_inside = pl.repeat(None, n, dtype=pl.Boolean, eager=True).scatter(info["anchor"], info["init_inside"])
    has_anchor = pk["anchor"].is_not_null()
    if has_anchor.any() and n:
        init = init_inside.gather(pk["anchor"].fill_null(0))
    else:  # no Python list of a None per packet (1M packets: 0.08 s)
        init = pl.repeat(None, pk.height, dtype=pl.Boolean, eager=True)
    pre = (init & (pk["conn_id"] == pk["anchor"])) if inside else ~init
    pk = pk.with_columns(pre.fill_null(False).alias("_pre"))
    # Only packets of a connection that paired with nothing need a fate decided here (a few, as a rule).
    todo = pk.with_row_index("_i").filter(pl.col("fate").is_null() & pl.col("anchor").is_not_null())
    if todo.is_empty():
        return pk
    todo = todo.join(info.select("anchor", "dst", "o_src"), on="anchor", how="left")
    if icmp is not None:  # the errors' own sources, kept apart from the packet frame
        todo = todo.join(icmp.select(pl.col("row").alias("_i"), "err_src"), on="_i", how="left")
    rst = ((pl.col("tcp_flags").fill_null(0) & _RST) != 0) & (pl.col("proto") == 6)
    err = pl.col("is_icmp_error")
    nothing_crossed = ~pl.col("anchor").is_in(crossed_init.implode())
    src_s = todo["err_src"].cast(pl.String)
    from_node = (in_networks(src_s, pod_networks) | (src_s == todo["o_src"].cast(pl.String)).fill_null(False)) & (
        src_s != todo["dst"].cast(pl.String)).fill_null(True)
    todo = todo.with_columns(from_node.alias("_err_from_node"))
    node = (
        (pl.col("_pre") & ~pl.col("is_egress") & (rst | err) & (nothing_crossed | (err & pl.col("_err_from_node"))))
        | (~pl.col("_pre") & pl.col("is_egress") & (rst | err))
    )
    if not inside:
        # Started outside (a NodePort), an RST towards the client seen only outside comes from the node's own
        # address with no pod packet behind it: the node's stack answering a client packet conntrack did not DNAT
        # (INVALID: out of window, or sent after the entry expired), delivered locally to a port nothing listens
        # on (a helper's kernel variant of the idle-expiry and oow kinds, inbound).
        node = node | (pl.col("_pre") & ~pl.col("is_egress") & rst)
    here = "inside_only" if inside else "outside_only"
    fates = todo.select(pl.when(node).then(pl.lit("node_generated")).otherwise(pl.lit(here)).cast(FATE))
    return pk.with_columns(pk["fate"].scatter(todo["_i"], fates.to_series()).alias("fate"))


def _legs(df: pl.DataFrame, ins: pl.DataFrame, outs: pl.DataFrame, out_links: pl.DataFrame,
          roots: pl.Series) -> pl.DataFrame:
    """``legs`` per connection: a list of {observation_point, src, sport, dst, dport, first_frame, packets,
    first_ts_ns}, in time order: its inside legs (the anchor and legs holding its copies) and the outside legs
    its packets paired with (``out_links``: each (anchor, out_conn) the pairs hold once)."""
    packets = pl.col("egress_packets") + pl.col("reply_packets") + pl.col("icmp_error_packets")
    def underlay(conns: pl.DataFrame) -> pl.Expr:
        return pl.col("underlay") if "underlay" in conns.columns else pl.lit(None, pl.String).alias("underlay")

    inside = ins.with_columns(roots.alias("anchor")).select(
        "anchor", pl.lit("inside").alias("observation_point"), *_TUPLE, "first_frame", packets.alias("packets"),
        underlay(ins), "first_ts_ns")
    outside = out_links.join(outs.rename({"conn_id": "out_conn"}), on="out_conn").select(
        "anchor", pl.lit("outside").alias("observation_point"), *_TUPLE, "first_frame", packets.alias("packets"),
        underlay(outs), "first_ts_ns")
    legs = pl.concat([inside, outside.cast(inside.schema)]).sort("anchor", "first_ts_ns", "observation_point")
    return legs.group_by("anchor", maintain_order=True).agg(
        pl.struct("observation_point", *_TUPLE, "first_frame", "packets", "underlay").alias("legs"))
