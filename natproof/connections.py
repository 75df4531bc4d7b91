"""Group one capture's packets into connections, as conntrack would see them."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import polars as pl

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


@dataclass(frozen=True)
class IdleTimeouts:
    """Silence after which a reused 5-tuple counts as a new connection, per protocol (seconds).

    The defaults follow conntrack's (nf_conntrack_proto_udp.c, nf_conntrack_udp_packet): a UDP entry answered and
    still active 2 s after it was made (``udp_stream_after_s``) is a stream, refreshed to
    nf_conntrack_udp_timeout_stream (``udp_s``, 120 s) by each packet; any other (unanswered, or answered within
    its first 2 s: a DNS or NTP exchange) to nf_conntrack_udp_timeout (``udp_unreplied_s``, 30 s), so its tuple's
    next datagram 40 s later makes a new entry (a trial: two pods' flows on one public port 40 s apart were read as
    one outside leg, a port clash, and ``who`` named both). ICMP 30 s. TCP splits on a new SYN instead, and on an
    hour of silence.
    """

    tcp_s: float = 3600.0
    udp_s: float = 120.0
    icmp_s: float = 30.0
    udp_unreplied_s: float = 30.0
    udp_stream_after_s: float = 2.0


TCP_ESTABLISHED_S = 432000.0
"""conntrack's default nf_conntrack_tcp_timeout_established (5 days). Not a grouping timeout: IdleTimeouts.tcp_s
splits a TCP flow on an hour of silence instead (a new SYN splits it anyway)."""

_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10


def flow_columns() -> list[pl.Expr]:
    """The flow a packet belongs to (f_proto, f_src, f_sport, f_dst, f_dport, is_icmp_error), from the decoded
    columns (src, dst, sport, dport, proto, inner_*); an ICMP error belongs to the flow it quotes, as a reply."""
    err = pl.col("inner_proto").is_not_null()
    return [
        pl.when(err).then(pl.col("inner_proto")).otherwise(pl.col("proto")).alias("f_proto"),
        pl.when(err).then(pl.col("inner_dst")).otherwise(pl.col("src")).alias("f_src"),
        pl.when(err).then(pl.col("inner_dport")).otherwise(pl.col("sport")).alias("f_sport"),
        pl.when(err).then(pl.col("inner_src")).otherwise(pl.col("dst")).alias("f_dst"),
        pl.when(err).then(pl.col("inner_sport")).otherwise(pl.col("dport")).alias("f_dport"),
        err.alias("is_icmp_error"),
    ]


NEVER_FORWARDED = (
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    ("broadcast", ("255.255.255.255/32",)),
    ("link_local", ("169.254.0.0/16", "fe80::/10")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
)
"""Destinations (or sources) no router forwards, so no NAT sees them (RFC 1112, RFC 919, RFC 3927/4291, RFC 1122
3.2.1.3 for 127/8). Besides these: directed broadcast (see split_never_forwarded) and a host's traffic to its own
address, which Linux sends through ``lo`` (its ``local`` routing table), counted as ``loopback``."""
_NEVER_FIRST_OCTETS = frozenset({"127", "169", "255", *(str(o) for o in range(224, 240))})
"""The first octets of the IPv4 networks in NEVER_FORWARDED: an address starting otherwise is in none of them."""
DHCP_PORTS = (67, 68, 546, 547)
"""DHCP and DHCPv6: link-local exchanges with the local server or relay."""


def split_never_forwarded(packets: pl.DataFrame, *, senders: Collection[str] | None = None,
                          directed: bool = True) -> tuple[pl.DataFrame, dict[str, int]]:
    """Packets (with the flow columns) less the traffic no router forwards: multicast, limited broadcast,
    link-local addresses, DHCP, loopback (127/8, ::1, and a packet to its own source address), and datagrams
    to an IPv4 directed broadcast (see directed_broadcasts: a destination that never sends anything in the
    capture, x.x.x.255 or the all-ones host of a prefix around the datagram's source, such as .127 on a /25
    LAN). Returns (kept, {reason: packets left out}) so that it is
    counted as skipped, never judged as a connection that failed (an SSDP multicast on a LAN is not a FORWARD
    drop: cases/lan-multicast). ``senders``: the addresses that send anything in the whole capture, when
    ``packets`` are part of it (natproof.spill); ``directed=False`` leaves directed broadcast for later, when a
    batch is read before the capture's senders are known."""
    import ipaddress

    nets = [(reason, [ipaddress.ip_network(n) for n in cidrs]) for reason, cidrs in NEVER_FORWARDED]
    addrs = pl.concat([packets["f_src"].drop_nulls().unique().cast(pl.String),
                       packets["f_dst"].drop_nulls().unique().cast(pl.String)]).unique().to_list()
    why: dict[str, str] = {}
    if senders is None:
        senders = set(packets["f_src"].drop_nulls().unique().cast(pl.String).to_list())
    to_bcast_addrs = directed_broadcasts(packets, senders) if directed else []
    for a in addrs:
        if ":" not in a and a[:a.find(".")] not in _NEVER_FIRST_OCTETS:
            continue  # an IPv4 address in none of NEVER_FORWARDED's networks (most): no parse (20k: 0.25 s)
        ip = ipaddress.ip_address(a)
        for reason, ns in nets:
            if any(ip.version == n.version and ip in n for n in ns):
                why[a] = reason
                break
    if not why:
        reason = pl.lit(None, pl.String)
    else:
        dst = pl.col("f_dst").cast(pl.String).replace_strict(why, default=None, return_dtype=pl.String)
        src = pl.col("f_src").cast(pl.String).replace_strict(why, default=None, return_dtype=pl.String)
        reason = pl.coalesce(dst, src)
    dhcp = (pl.col("f_proto") == 17) & (pl.col("f_sport").is_in(DHCP_PORTS) & pl.col("f_dport").is_in(DHCP_PORTS))
    to_self = (pl.col("f_src") == pl.col("f_dst")).fill_null(False)
    # TCP has no broadcast: a SYN to an x.x.x.255 host that never answers is a failure to report, not noise.
    to_bcast = ((pl.col("f_dst").cast(pl.String).is_in(to_bcast_addrs) & (pl.col("f_proto") != 6))
                if to_bcast_addrs else False)
    # What an address alone says (link-local, multicast, ...) comes before a directed broadcast, which needs the
    # whole capture's senders: read batch by batch past memory (natproof.spill), 169.254.255.255 is link-local
    # before any sender is known, so it is in memory too.
    reason = (pl.when(dhcp).then(pl.lit("dhcp")).when(to_self).then(pl.lit("loopback"))
              .when(reason.is_null() & to_bcast).then(pl.lit("broadcast")).otherwise(reason))
    tagged = packets.select(reason.alias("_why"))["_why"]
    if tagged.null_count() == tagged.len():
        return packets, {}
    counts = dict(tagged.drop_nulls().value_counts().iter_rows())
    return packets.filter(tagged.is_null()), counts


BROADCAST_PORTS = frozenset({7, 9, 137, 138, 520, 1947, 5678, 10001, 17500, 21027, 32412, 32414})
"""UDP ports of protocols that send to the subnet's broadcast address: echo and discard (Wake-on-LAN magic packets),
NetBIOS name and datagram service, RIP, Sentinel license discovery, MikroTik MNDP, Ubiquiti discovery, Dropbox LAN
sync, Syncthing, Plex GDM."""
UNICAST_PORTS = frozenset({53, 123})
"""DNS and NTP: a client may bind the service's own port, so a same-port datagram there is no sign of broadcast."""
_MIN_HOST_BITS = 3
"""The narrowest subnet whose all-ones host is taken for its broadcast address without its being x.x.x.255: a /29."""


def directed_broadcasts(packets: pl.DataFrame, senders: Collection[str]) -> list[str]:
    """The IPv4 destinations of ``packets``' datagrams that are a subnet's directed broadcast address, without
    knowing the subnet: a destination that never sends anything in the capture (``senders``: a host would, a
    broadcast address cannot) and, for TCP-less traffic,

    - x.x.x.255, as any /24 or wider subnet's broadcast; or
    - the all-ones host of a /8 to /29 prefix that holds the datagram's own source (192.168.1.127 from
      192.168.1.20: a /25 LAN; .63 a /26), reached by a datagram of the kind hosts broadcast: to a port
      BROADCAST_PORTS names, from the same port it goes to (NetBIOS 137 -> 137; not DNS or NTP), or from two
      or more sources of that prefix. One host's unanswered datagram to a LAN host that happens to be numbered
      .127 is none of these, and stays a datagram."""
    # The distinct flows first (on the columns as they are, Categorical codes): a string per packet is not needed.
    dgrams = packets.filter((pl.col("f_proto") != 6) & pl.col("f_dst").is_not_null()).select(
        "f_src", "f_dst", "f_sport", "f_dport").unique()
    if dgrams.is_empty():
        return []
    pairs = (dgrams.select(pl.col("f_src").cast(pl.String).alias("s"), pl.col("f_dst").cast(pl.String).alias("d"),
                           pl.col("f_sport").alias("sp"), pl.col("f_dport").alias("dp"))
             .filter(pl.col("d").str.contains(r"^\d+\.\d+\.\d+\.\d+$")
                     & ~pl.col("d").is_in(pl.Series(list(senders), dtype=pl.String).implode()))
             .unique())
    found: set[str] = set()
    styled: dict[str, set[str]] = {}
    for s, d, sp, dp in pairs.iter_rows():
        if d in found:
            continue
        if d.endswith(".255"):
            found.add(d)
            continue
        dst = _v4(d)
        src = _v4(s) if s is not None and "." in s else None
        if dst is None or src is None or src == 0:
            continue
        trailing = (dst ^ (dst + 1)).bit_length() - 1  # the widest host part the destination is all ones of
        if trailing < _MIN_HOST_BITS or max((src ^ dst).bit_length(), _MIN_HOST_BITS) > min(trailing, 24):
            continue  # not the all-ones host of a prefix (/8 to /29) that holds the source
        styled.setdefault(d, set()).add(s)
        if dp in BROADCAST_PORTS or (sp == dp and dp not in UNICAST_PORTS) or len(styled[d]) > 1:
            found.add(d)
    return sorted(found)


def _v4(addr: str) -> int | None:
    parts = addr.split(".")
    try:
        octets = [int(p) for p in parts]
    except ValueError:
        return None
    if len(octets) != 4 or any(not 0 <= o <= 255 for o in octets):
        return None
    return (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]


DUPLICATE_NS = 50_000
"""Two identical packets (same fields NAT never rewrites, same tuple, same TTL) at most this far apart (50 us) in
one capture are one packet seen twice: a bridge capture sees a bridged frame on two ports (FIELD-NOTES)."""


def drop_duplicates(packets: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Packets (with the flow columns and ``sig``) less exact copies of the packet just before them in the
    capture (within DUPLICATE_NS), and how many were dropped. A retransmission is never this close, and a
    copy under another tuple (NAT, hairpin) is no duplicate."""
    if packets.height < 2:
        return packets, 0
    same = pl.all_horizontal([(pl.col(c) == pl.col(c).shift(1)).fill_null(False)
                              for c in ("sig", "f_src", "f_sport", "f_dst", "f_dport", "ttl")])
    dup = packets.select(same & ((pl.col("ts_ns") - pl.col("ts_ns").shift(1)) <= DUPLICATE_NS)).to_series()
    n = int(dup.sum())
    return (packets.filter(~dup), n) if n else (packets, 0)


GROUP_COLUMNS = ("frame_no", "ts_ns", "f_proto", "f_src", "f_dst", "f_sport", "f_dport", "is_icmp_error", "tcp_seq",
                 "tcp_flags", "icmp_type")
"""The packet columns grouping reads (the flow columns are made from the decoded ones when missing)."""

ADDED_COLUMNS = ("conn_id", "is_egress", "remote", "rport", "local", "lport")
"""The columns group_connections adds to each packet, besides the flow columns."""


def _rank_lut(packets: pl.DataFrame) -> pl.Series:
    """Dictionary code -> rank of the address among the capture's distinct addresses in lexical order (UInt32).

    Sorting and grouping by integers is several times faster than by strings, and ranks order exactly as
    the text does, so connection numbering does not depend on the order addresses were first seen.
    """
    distinct = pl.concat([packets[c].drop_nulls().unique() for c in ("f_src", "f_dst")]).unique()
    if distinct.is_empty():
        return pl.Series([], dtype=pl.UInt32)
    order = distinct.cast(pl.String).arg_sort()
    codes = distinct.to_physical()
    lut = pl.repeat(None, int(codes.max()) + 1, dtype=pl.UInt32, eager=True)  # type: ignore[arg-type]
    return lut.scatter(codes.gather(order), pl.int_range(len(order), dtype=pl.UInt32, eager=True))


GROUP_PART_ROWS = 1 << 19
"""Captures with more packets are grouped in parts of about this many, each a set of whole flows: the sort and
the per-row work then hold a copy of one part at a time, not of the capture."""


def select_in_slices(df: pl.DataFrame, exprs: list[pl.Expr], rows: int = GROUP_PART_ROWS) -> pl.DataFrame:
    """df.select(exprs) a slice of rows at a time, for row-wise expressions whose inputs would be copied whole."""
    parts = [df.slice(o, rows).select(exprs) for o in range(0, df.height, rows)]
    return pl.concat(parts) if parts else df.clear().select(exprs)


def flow_hash() -> pl.Expr:
    """A packet's flow as one UInt64: the protocol and both ends, either way round (both directions of a flow,
    and an ICMP error about it, hash alike). Values, not dictionary codes: batches and processes agree."""
    one = pl.struct("f_src", "f_sport").hash(seed=0x666C)
    other = pl.struct(pl.col("f_dst").alias("f_src"), pl.col("f_dport").alias("f_sport")).hash(seed=0x666C)
    return pl.struct("f_proto", pl.min_horizontal(one, other).alias("lo"),
                     pl.max_horizontal(one, other).alias("hi")).hash(seed=0x7061)


def _flow_partition(packets: pl.DataFrame, lut: pl.Series, parts: int) -> pl.Series:
    """Which of ``parts`` parts each packet's flow falls in (null: no flow, a port missing); both directions of a
    flow, and an ICMP error about it, fall in one. From the addresses' ranks (``lut``: _rank_lut), not flow_hash's
    hashes of their text: the parts only split this capture's grouping, so they need not agree across captures or
    processes (2 x 5M real: 0.45-0.55 -> 0.2 s per side)."""
    ranks = packets.select(lut.gather(packets["f_src"].to_physical()).alias("_s"),
                           lut.gather(packets["f_dst"].to_physical()).alias("_d"), "f_proto", "f_sport", "f_dport")
    a = pl.col("_s").cast(pl.UInt64) * (1 << 16) + pl.col("f_sport").cast(pl.UInt64)
    b = pl.col("_d").cast(pl.UInt64) * (1 << 16) + pl.col("f_dport").cast(pl.UInt64)
    # Either end first, then mixed by two odd 64-bit constants (multiplication wraps): the high half spreads flows
    # evenly over the parts.
    mixed = (pl.min_horizontal(a, b) * 0x9E3779B97F4A7C15 + pl.max_horizontal(a, b) * 0xC2B2AE3D27D4EB4F
             + pl.col("f_proto").cast(pl.UInt64))
    return ranks.select(((mixed // (1 << 32)) % parts).cast(pl.UInt32).alias("part")).to_series()


def group_connections(packets: pl.DataFrame, timeouts: IdleTimeouts | None = None) -> tuple[pl.DataFrame,
                                                                                           pl.DataFrame]:
    """Assign connections to packets and return (packets, connections).

    The packets come back with the flow columns (see flow_columns(); made here unless the frame has them) and
    ADDED_COLUMNS: ``conn_id`` (0, 1, ... in no particular order), ``is_egress``, and the two ends as this
    packet sees them: ``local`` (the originator: the pod) with ``lport`` and ``remote`` with ``rport``.
    Packets that belong to no flow (no ports) are left out.

    A connection is a bidirectional 5-tuple (ICMP echo: addresses and identifier). The same 5-tuple used
    again later is a new connection when a SYN with a new initial sequence number starts it, or after
    the protocol's idle timeout. The originator is the sender of the SYN (or echo request), else of the
    first packet, unless that packet is by its kind an answer to one the capture missed (caught mid-way:
    see _answers_first): then its destination; its packets are ``egress``, the other direction's are replies.
    """
    t = timeouts or IdleTimeouts()
    if "f_src" not in packets.columns:
        packets = packets.with_columns(flow_columns())
    n = packets.height
    lut = _rank_lut(packets)
    parts = max(1, -(-n // GROUP_PART_ROWS))
    pieces: Iterable[tuple[pl.Series | None, pl.DataFrame]]
    if parts == 1:
        pieces = [(None, packets.select(GROUP_COLUMNS))]
    else:
        which = _flow_partition(packets, lut, parts)
        pieces = ((idx, packets.select(pl.col(GROUP_COLUMNS).gather(idx)))  # one part at a time
                  for idx in (which.eq(p).arg_true().cast(pl.UInt32) for p in range(parts)))
    # Each part's results go back to the packets' own rows (sorting or joining the packet frame would copy it),
    # all parts' at once: a scatter per part copied each whole column again (2 x 5M real: 0.55 s of 3.2).
    got_parts = []
    conns_parts = []
    first_id = 0
    for idx, piece in pieces:
        got, conns = _group_part(piece, lut, t)
        rows = got["_i"] if idx is None else idx.gather(got["_i"])
        got_parts.append(got.with_columns(rows.alias("_i"), pl.col("conn_id") + first_id))
        conns_parts.append(conns.with_columns(pl.col("conn_id") + first_id))
        first_id += conns.height
    del pieces
    got = pl.concat(got_parts)
    del got_parts
    # Where each packet's row is in ``got`` (null: a packet of no flow), then every column gathered by it: one
    # scatter of row numbers, not one of each column (a Categorical's scatter is slow: 0.6 -> 0.1 s at 5M).
    at = pl.repeat(None, n, dtype=pl.UInt32, eager=True).scatter(
        got["_i"], pl.int_range(got.height, dtype=pl.UInt32, eager=True))
    added = {c: got[c].gather(at) for c in ADDED_COLUMNS}
    del got, at
    conns = pl.concat(conns_parts).sort(["first_ts_ns", "conn_id"])
    out = packets.hstack(list(added.values()))
    if out["conn_id"].null_count():
        out = out.filter(pl.col("conn_id").is_not_null())
    dt = pl.col("ts_ns").diff()
    in_order = out.select(((dt > 0) | ((dt == 0) & (pl.col("frame_no").cast(pl.Int64).diff() > 0)))
                          .fill_null(True).all()).item()
    return (out if in_order else out.sort(["ts_ns", "frame_no"])), conns


def _packed_key(df: pl.DataFrame, lut: pl.Series) -> list[pl.Expr] | None:
    """The flow key (f_proto, k_a, k_ap, k_b, k_bp) as bit fields of one UInt64 ``_k`` when the address ranks
    fit (at most 4096 addresses), else of two (``_k``, ``_k2``), in the same order; None when a key column holds
    a null (the columns are then sorted as they are)."""
    if any(df[c].null_count() for c in ("f_proto", "k_a", "k_b")):
        return None
    bits = max(1, int(lut.max() or 0).bit_length())  # type: ignore[arg-type]

    def u(c: str) -> pl.Expr:
        return pl.col(c).cast(pl.UInt64)

    if 8 + 2 * bits + 32 <= 64:
        return [(u("f_proto") * (1 << (2 * bits + 32)) + u("k_a") * (1 << (bits + 32)) + u("k_ap") * (1 << (bits + 16))
                 + u("k_b") * (1 << 16) + u("k_bp")).alias("_k")]
    return [(u("f_proto") * (1 << 48) + u("k_a") * (1 << 16) + u("k_ap")).alias("_k"),
            (u("k_b") * (1 << 16) + u("k_bp")).alias("_k2")]


SYSTEM_PORTS = 1024
"""Ports below this are IANA's system ports, where services listen (53, 123, 443, ...)."""
EPHEMERAL_FROM = 32768
"""The lowest port common stacks give a client by default (Linux 32768-60999; Windows, macOS and IANA's dynamic
range 49152-65535): a datagram from a system port to one at or above this is a service answering its client."""


def _answers_first() -> pl.Expr:
    """Whether a connection whose opening was not seen (no SYN, no echo request) starts, in the capture, with an
    answer to a packet the capture missed (it started after the request, a helper's variant of
    cases/swapped-sides: a DNS reply first, read as a datagram from the internet DNATed to the LAN host, and
    "no reply"), judged by the first packet's own kind (the ``_first_*`` columns of _group_part's origin):
    - TCP: sent from the lower port to the higher one (the client's);
    - UDP: sent from a system port to an ephemeral one (EPHEMERAL_FROM): a service answering its client. Any
      other first datagram's sender stays the originator: an inbound one to a port-forwarded service
      (40000 -> 51820), NTP's 123 -> 123, an NFS client's reserved port to 2049;
    - ICMP: an echo reply."""
    sport, dport, proto = pl.col("_first_sport"), pl.col("_first_dport"), pl.col("_proto")
    tcp = (proto == 6) & (dport > sport)
    udp = (proto == 17) & (sport < SYSTEM_PORTS) & (dport >= EPHEMERAL_FROM)
    echo_reply = proto.is_in([1, 58]) & ~pl.col("_first_error") & pl.col("_first_icmp_type").is_in([0, 129])
    return (tcp | udp | echo_reply).fill_null(False)


def _udp_entries_expired(df: pl.DataFrame, t: IdleTimeouts) -> pl.DataFrame:
    """``df`` (_group_part's rows sorted by flow, then time: f_proto, f_src, f_sport, ts_ns, is_icmp_error, _same,
    _gap, and ``_new``: the row opens a connection) with ``_new`` also set where a UDP flow fell silent longer than
    ``t.udp_unreplied_s`` while its entry was no stream yet (IdleTimeouts: at the packet before the silence, no
    answer had come before it or the entry was not yet ``t.udp_stream_after_s`` old): conntrack's entry expired
    there, and the next datagram made a new one. Each split moves the next entry's start, so the rule is applied
    again until no split is added (once or twice). Only flows with such a silence are read."""
    short, stream = int(t.udp_unreplied_s * 1e9), int(t.udp_s * 1e9)
    if short >= stream:
        return df
    silent = ((pl.col("f_proto") == 17) & pl.col("_same") & ~pl.col("_new")
              & (pl.col("_gap") > short) & (pl.col("_gap") <= stream))
    if not df.select(silent.any()).item():
        return df
    rows = (df.with_row_index("_row").with_columns(silent.alias("_silent"))
            .filter(pl.col("_silent").any().over("_flow"))
            .select("_row", "_flow", "ts_ns", "f_src", "f_sport", "is_icmp_error", "_new", "_silent"))
    after = int(t.udp_stream_after_s * 1e9)
    while True:
        entry = pl.col("_new").cast(pl.UInt32).cum_sum()
        rows = rows.with_columns(entry.alias("_entry"))
        opener = [pl.col(c).first().over("_entry") for c in ("ts_ns", "f_src", "f_sport")]
        answer = (~pl.col("is_icmp_error") & ((pl.col("f_src") != opener[1]) | (pl.col("f_sport") != opener[2])))
        # Answers before each packet of its entry: conntrack sets SEEN_REPLY after the answer's own refresh.
        answered = (answer.cast(pl.UInt32).cum_sum().over("_entry") - answer.cast(pl.UInt32)) > 0
        stream_before = (answered.shift(1) & (pl.col("ts_ns").shift(1) > opener[0].shift(1) + after)).fill_null(False)
        split = rows.select(pl.col("_silent") & ~pl.col("_new") & ~stream_before).to_series()
        if not split.any():
            break
        rows = rows.with_columns(pl.col("_new") | split)
    return df.with_columns(df["_new"].scatter(rows["_row"], rows["_new"]))


def _group_part(packets: pl.DataFrame, lut: pl.Series, t: IdleTimeouts) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Group a set of whole flows: (ADDED_COLUMNS with ``_i``, the row in ``packets``; connections), conn_id from 0."""
    # The work happens on a narrow frame sorted by flow.
    df = packets.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_i"), *GROUP_COLUMNS)
    df = df.filter(pl.col("f_sport").is_not_null() & pl.col("f_dport").is_not_null())
    df = df.with_columns(lut.gather(df["f_src"].to_physical()).alias("_src_rank"),
                         lut.gather(df["f_dst"].to_physical()).alias("_dst_rank"))
    a_first = (pl.col("_src_rank") < pl.col("_dst_rank")) | (
        (pl.col("_src_rank") == pl.col("_dst_rank")) & (pl.col("f_sport") <= pl.col("f_dport"))
    )
    key = ["f_proto", "k_a", "k_ap", "k_b", "k_bp"]
    df = df.with_columns(
        pl.when(a_first).then(pl.col("_src_rank")).otherwise(pl.col("_dst_rank")).alias("k_a"),
        pl.when(a_first).then(pl.col("f_sport")).otherwise(pl.col("f_dport")).alias("k_ap"),
        pl.when(a_first).then(pl.col("_dst_rank")).otherwise(pl.col("_src_rank")).alias("k_b"),
        pl.when(a_first).then(pl.col("f_dport")).otherwise(pl.col("f_sport")).alias("k_bp"),
    ).drop("_src_rank", "_dst_rank")
    packed = _packed_key(df, lut)
    if packed is None:
        df = df.sort([*key, "ts_ns", "frame_no"])
    else:
        # The same order as sorting by the five key columns, then time and frame: the key packed into one or two
        # UInt64 (bit fields in the key's order), sorted stably after time and frame (2x1M real: 0.13 -> 0.04 s
        # per part).
        df = df.with_columns(packed).sort("ts_ns", "frame_no").sort(
            [e.meta.output_name() for e in packed], maintain_order=True)
        key = ["f_proto", *(e.meta.output_name() for e in packed)]
    # Sorted by flow, a flow's packets are one run of rows: compare each row with the one before it.
    same_flow = pl.all_horizontal([pl.col(k) == pl.col(k).shift(1) for k in key]).fill_null(False)
    is_syn = (pl.col("f_proto") == 6) & ~pl.col("is_icmp_error") & (
        (pl.col("tcp_flags").fill_null(0) & (_SYN | _ACK)) == _SYN
    )
    idle_ns = (
        pl.when(pl.col("f_proto") == 6).then(pl.lit(int(t.tcp_s * 1e9)))
        .when(pl.col("f_proto") == 17).then(pl.lit(int(t.udp_s * 1e9)))
        .otherwise(pl.lit(int(t.icmp_s * 1e9)))
    )
    # What closes a TCP connection for a later SYN with the same ISN: a FIN from either end, or an RST from the
    # end the SYN went to (refused, aborted). An RST from the SYN's own sender answers a challenge ACK (the
    # server still held the old connection in TIME_WAIT: captures/port-exhaustion), and the SYN retransmitted
    # after it is the same connect().
    flags = pl.col("tcp_flags").fill_null(0)
    syn_sender = pl.when(pl.col("_syn")).then(pl.col("f_src").to_physical()).forward_fill()
    closing = (pl.col("f_proto") == 6) & ~pl.col("is_icmp_error") & (
        ((flags & _FIN) != 0) | (((flags & _RST) != 0) & (pl.col("f_src").to_physical() != syn_sender).fill_null(True)))
    df = df.with_columns(same_flow.alias("_same"), is_syn.alias("_syn")).drop(
        [c for c in df.columns if c in ("k_a", "k_ap", "k_b", "k_bp", "_k", "_k2")]).with_columns(
        (~pl.col("_same")).cum_sum().alias("_flow"),
    ).with_columns(
        # The ISN of the flow's latest SYN before this packet (null if none yet).
        pl.when(pl.col("_syn")).then(pl.col("tcp_seq")).forward_fill().shift(1).alias("_prev_syn_seq"),
        pl.when(pl.col("_syn")).then(pl.col("_flow")).forward_fill().shift(1).alias("_prev_syn_flow"),
        # Whether the flow's latest SYN or FIN/RST before this packet was a FIN or RST (null if neither yet).
        pl.when(pl.col("_syn")).then(False).when(closing).then(True).forward_fill().shift(1).alias("_closed"),
        (pl.col("ts_ns") - pl.col("ts_ns").shift(1)).alias("_gap"),
    )
    prev = pl.when(pl.col("_prev_syn_flow") == pl.col("_flow")).then(pl.col("_prev_syn_seq"))
    # A SYN opens a new connection unless the tuple's previous SYN had the same ISN (a retransmission), and even
    # then once a FIN or RST closed it: conntrack lets a SYN reopen a closed entry (TIME_WAIT/CLOSE), and a
    # replayed capture (tcpreplay --loop) repeats the same ISN. Packets before a tuple's first SYN belong to an
    # earlier connection the capture caught mid-way.
    reopened = (pl.col("_prev_syn_flow") == pl.col("_flow")) & pl.col("_closed").fill_null(False)
    new_syn = pl.col("_syn") & pl.col("_same") & (prev.is_null() | (prev != pl.col("tcp_seq")) | reopened)
    new_conn = ~pl.col("_same") | (pl.col("_gap") > idle_ns) | new_syn
    df = _udp_entries_expired(df.with_columns(new_conn.fill_null(True).alias("_new")), t)
    df = df.with_columns(
        (pl.col("_new").cast(pl.UInt32).cum_sum() - 1).alias("conn_id"),
    ).drop("_same", "_flow", "_prev_syn_seq", "_prev_syn_flow", "_closed", "_gap", "tcp_seq", "tcp_flags", "_new")
    initiator = pl.col("_syn") | (pl.col("icmp_type").is_in([8, 128]) & ~pl.col("is_icmp_error"))
    origin = df.group_by("conn_id", maintain_order=True).agg(
        pl.col("f_src").filter(initiator).first().alias("_o_src"),
        pl.col("f_sport").filter(initiator).first().alias("_o_sport"),
        pl.col("f_src").first().alias("_first_src"),
        pl.col("f_sport").first().alias("_first_sport"),
        pl.col("f_dst").first().alias("_first_dst"),
        pl.col("f_dport").first().alias("_first_dport"),
        pl.col("f_proto").first().alias("_proto"),
        pl.col("icmp_type").first().alias("_first_icmp_type"),
        pl.col("is_icmp_error").first().alias("_first_error"),
    )
    # Whether the originator was seen opening it (a SYN, an echo request), not guessed from the first packet.
    origin_seen = origin["_o_src"].is_not_null().alias("origin_seen")
    # The first packet's sender is the originator, as conntrack takes it, unless that packet answers one the
    # capture missed (it started mid-way): then the originator is its destination.
    client_is_dst = _answers_first()
    origin = origin.select(
        pl.when(pl.col("_o_src").is_not_null()).then(pl.col("_o_src"))
        .when(client_is_dst).then(pl.col("_first_dst")).otherwise(pl.col("_first_src")).alias("o_src"),
        pl.when(pl.col("_o_src").is_not_null()).then(pl.col("_o_sport"))
        .when(client_is_dst).then(pl.col("_first_dport")).otherwise(pl.col("_first_sport")).alias("o_sport"),
    )
    # conn_id runs 0, 1, ... down the sorted rows, so a connection's origin is row conn_id of ``origin``.
    cid = df["conn_id"]
    df = df.with_columns(origin["o_src"].gather(cid), origin["o_sport"].gather(cid)).with_columns(
        ((pl.col("f_src") == pl.col("o_src")) & (pl.col("f_sport") == pl.col("o_sport"))).alias("is_egress")
    ).select(
        "_i", "ts_ns", "frame_no", "f_proto", "is_icmp_error", "conn_id", "is_egress",
        # The far end of the connection, as seen in this packet: NAT never rewrites it for egress SNAT.
        pl.when(pl.col("is_egress")).then(pl.col("f_dst")).otherwise(pl.col("f_src")).alias("remote"),
        pl.when(pl.col("is_egress")).then(pl.col("f_dport")).otherwise(pl.col("f_sport")).alias("rport"),
        pl.when(pl.col("is_egress")).then(pl.col("f_src")).otherwise(pl.col("f_dst")).alias("local"),
        pl.when(pl.col("is_egress")).then(pl.col("f_sport")).otherwise(pl.col("f_dport")).alias("lport"),
    )
    conns = df.group_by("conn_id", maintain_order=True).agg(
        pl.col("f_proto").first().alias("proto"),
        pl.col("local").first().alias("src"),
        pl.col("lport").first().alias("sport"),
        pl.col("remote").first().alias("dst"),
        pl.col("rport").first().alias("dport"),
        pl.col("ts_ns").min().alias("first_ts_ns"),
        pl.col("ts_ns").max().alias("last_ts_ns"),
        pl.col("is_egress").sum().cast(pl.UInt32).alias("egress_packets"),
        (~pl.col("is_egress") & ~pl.col("is_icmp_error")).sum().cast(pl.UInt32).alias("reply_packets"),
        # ICMP errors (port unreachable, ...) answer the flow but are RELATED packets to conntrack, not
        # replies: the entry stays [UNREPLIED] (see captures/udp).
        pl.col("is_icmp_error").sum().cast(pl.UInt32).alias("icmp_error_packets"),
        pl.col("frame_no").min().alias("first_frame"),
    ).with_columns(pl.col("src").cast(pl.String), pl.col("dst").cast(pl.String), origin_seen)
    return df.select("_i", *ADDED_COLUMNS), conns
