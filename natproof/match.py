"""Pair packets across observation points (and within one) on fields NAT leaves unchanged, and time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from natproof.connections import select_in_slices
from natproof.decode import HEAD_DIGEST_BYTES

SNAP_OFFSET_NS = 100_000
"""Clock-offset estimates smaller than this (100 us) count as 0: captures taken on one host share a clock,
and a smaller estimate is within the asymmetry of the NAT's own latency (tens of us, see captures/)."""

ROUGH_TOLERANCE_NS = 600 * 10**9
"""How far apart clocks may be when no packet is unique enough to estimate the offset without time."""

PAIR_SCHEMA = {
    "in_row": pl.UInt32(), "out_row": pl.UInt32(), "dt_ns": pl.Int64(),
    "method": pl.Enum(["exact", "bytes", "ip_id", "tcp_partial", "datagram", "payload"]),
}
"""One matched packet: its row on each side, the time between (outside minus inside, raw clocks) and the pass."""

SELF_PAIR_SCHEMA = {"a_row": pl.UInt32(), "b_row": pl.UInt32(), "dt_ns": pl.Int64()}
"""The same packet seen twice at one observation point under two legs: ``a_row`` first, ``b_row`` after NAT."""

COPY_NS_WITHIN = 1_000_000
"""A weak datagram's two copies at one observation point (pair_within's loose pass) are at most this far apart
(1 ms, as natproof.points.COPY_NS: the bridge hands the DNATed datagram to the endpoint's veth in microseconds)."""

SELF_TOLERANCE_NS = 50_000_000
"""Two copies of a packet at one observation point (hairpin: the pod's own veth sees the packet leave and come
back translated, tens of us apart in captures/hairpin) are at most this far apart (50 ms)."""


SIGNATURE_COLUMNS = ("proto", "ip_id", "tcp_seq", "tcp_ack", "tcp_flags", "payload_len", "head_digest", "icmp_type",
                     "icmp_code", "icmp_seq", "inner_proto")
"""The decoded columns signature() reads."""


def signature() -> pl.Expr:
    """``sig``: a hash of the packet's own fields MASQUERADE never rewrites (see captures/basic): IP id, TCP
    seq/ack/flags, lengths, ICMP type/code/sequence and the head of the payload. Addresses, ports that may be
    remapped, ICMP identifiers and TTL are left out. Row by row, so it can be made batch by batch as a capture
    is decoded, and the columns it reads dropped."""
    # TCP needs no payload in its key (seq, ack and length pin a segment), so captures cut by different
    # snaplens still agree; an ICMP error's payload is the quoted header, which the kernel rewrites.
    head = pl.when(pl.col("inner_proto").is_not_null() | (pl.col("proto") == 6)).then(None).otherwise(
        pl.col("head_digest")).alias("head")
    return pl.struct(
        "proto", "ip_id", "tcp_seq", "tcp_ack", "tcp_flags", "payload_len", head, "icmp_type", "icmp_code",
        "icmp_seq", "inner_proto",
    ).hash(seed=0x7369).alias("sig")


def head_whole() -> pl.Expr:
    """``head_whole``: whether ``head_digest`` covers the payload's whole head (HEAD_DIGEST_BYTES, or all of a shorter
    payload), from ``payload_captured_len``. A snaplen that cut into it digests fewer bytes, which only another
    capture cut alike agrees with (the datagram pass, _pair_datagrams, pairs the rest)."""
    return (pl.col("payload_captured_len") >= pl.min_horizontal(pl.col("payload_len"), pl.lit(HEAD_DIGEST_BYTES))
            ).alias("head_whole")


def _weak() -> pl.Expr:
    """A datagram with no TCP numbers and IP id 0 (or none: IPv6): pinned by its length and payload head only,
    which packets of unrelated connections share (identical requests, empty replies)."""
    return (pl.col("proto") != 6) & (pl.col("ip_id").fill_null(0) == 0)


def _strong_key() -> pl.Expr:
    """The signature and the flow's protocol: no address, no port and no direction, since DNAT rewrites the far
    end, SNAT the near one, and a capture that starts mid-connection may take either end for the initiator.
    A weak datagram's key (see :func:`_weak`) keeps the far end, as pure SNAT does; Linux gives IPv4 UDP a
    non-zero IP id (cases/clusterip-dnat: DNS to a ClusterIP), so DNATed datagrams rarely need the next key."""
    return pl.when(_weak()).then(pl.struct("f_proto", "sig", "remote", "rport").hash(seed=0x6E62)).otherwise(
        pl.struct("f_proto", "sig").hash(seed=0x6E61))


def _loose_key() -> pl.Expr:
    """A weak datagram's key without the far end, where DNAT may have changed it: the second exact pass pairs what
    the first left over with it, on the inside only where the far end is one a DNAT may stand for or lead to
    (``dnat_end``: a ClusterIP or a pod) or one the outside capture never shows (match_sides)."""
    return pl.when(_weak()).then(pl.struct("f_proto", "sig").hash(seed=0x6E63))


def _payload_key() -> pl.Expr:
    """A fallback for middleboxes that randomise TCP sequence numbers: far end, payload length and the digest of
    the payload's head (its first 32 bytes: captures cut by different snaplens agree on it)."""
    return pl.when((pl.col("payload_len") > 0) & ~pl.col("is_icmp_error") & (pl.col("proto") == 6)).then(
        pl.struct("is_egress", "f_proto", "remote", "rport", "payload_len", "head_digest").hash(seed=0x7072)
    )


MATCH_COLUMNS = ("row", "ts_ns", "conn_id", "is_egress", "f_proto", "proto", "remote", "rport", "local", "lport",
                 "ip_id", "ttl", "tcp_seq", "tcp_ack", "tcp_flags", "payload_len", "head_digest", "head_whole",
                 "is_icmp_error", "icmp_type", "icmp_code", "icmp_seq",
                 "k_strong", "k_loose", "dnat_end", "where")
"""What match_sides reads of each side (from :func:`with_keys`). ``where``: the packet's interface of its file
(natproof.points.where_expr; 0 where the frame has none), which pair_within's loose pass reads."""

def with_keys(packets: pl.DataFrame) -> pl.DataFrame:
    """Add a row number and the strong match key (and the signature, if missing) to a capture's grouped packets.

    Keys are hashed a slice of rows at a time: hashing the whole frame at once holds a copy of every key
    column. They hash values, not dictionary codes, so keys made in different processes agree.
    """
    if "sig" not in packets.columns:
        packets = packets.with_columns(select_in_slices(packets, [signature()]).to_series())
    if "dnat_end" not in packets.columns:
        packets = packets.with_columns(pl.lit(True).alias("dnat_end"))
    if "where" not in packets.columns:
        where = (((pl.col("iface").cast(pl.Int64) * (1 << 32)) + (pl.col("ifindex").cast(pl.Int64) & 0xFFFFFFFF))
                 if {"iface", "ifindex"} <= set(packets.columns) else pl.lit(0, pl.Int64))
        packets = packets.with_columns(where.fill_null(0).alias("where"))
    if "head_whole" not in packets.columns and "payload_captured_len" in packets.columns:
        packets = packets.with_columns(head_whole())
    keys = select_in_slices(packets, [_strong_key().alias("k_strong"), _loose_key().alias("k_loose")])
    if keys["k_loose"].null_count() == keys.height:
        # No weak datagram to pair across DNAT (most captures): a column of the Null type holds no buffer.
        keys = keys.with_columns(pl.lit(None).alias("k_loose"))
    return packets.with_row_index("row").with_columns(keys)


def offset_from(dts: pl.DataFrame | pl.LazyFrame) -> int | None:
    """NTP-style offset from (dt, is_egress) rows, dt = outside time minus inside time; None if no rows. A
    LazyFrame (samples spilled to Parquet) is read one column's medians at a time."""
    return offset_and_way(dts)[0]


def offset_and_way(dts: pl.DataFrame | pl.LazyFrame) -> tuple[int | None, bool]:
    """offset_from, and whether it was taken from one direction's rows only: then the NAT's latency is in it (a
    packet crossing outward reaches the outside capture that much later, and no crossing inward cancels it), and
    latencies measured against it are not the NAT's (a trial: one-way UDP, 30 us across the node, read as 0). Not
    when it snaps to 0 (under SNAP_OFFSET_NS): the clocks are taken as one (captures/no-masquerade, one host), and
    each packet's time across the node is then measured on it."""
    med = dts.lazy().select(pl.col("dt").filter(pl.col("is_egress")).median().alias("e"),
                            pl.col("dt").filter(~pl.col("is_egress")).median().alias("r"),
                            pl.len().alias("n")).collect()
    if not med["n"][0]:
        return None, False
    med_e, med_r = med["e"][0], med["r"][0]
    meds = [float(m) for m in (med_e, med_r) if m is not None]  # type: ignore[arg-type]
    offset = int(round(sum(meds) / len(meds)))
    if abs(offset) < SNAP_OFFSET_NS:
        return 0, False
    return offset, len(meds) == 1


PART_ROWS = 1 << 20
"""Sides with more rows are joined by key in parts of about this many rows, each a set of whole keys: pairs form
only between equal keys, so the parts give what one join would, while holding a copy of one part at a time."""


def key_part_count(*heights: int) -> int:
    """How many parts of the key space _key_parts cuts sides of these heights (rows) into: one per PART_ROWS rows
    of the larger side."""
    return max(1, -(-max(heights, default=0) // PART_ROWS))


@dataclass
class KeyParts:
    """One side's rows as _key_parts yields them for that side, made ahead of matching (:func:`arrange_keys`):
    ``frames[p]`` holds part ``p`` of the key space's rows with a non-null ``key``, columns ``cols``, sorted by
    ``key`` (flagged so). Matching reads them once, letting go of each as it goes (:meth:`take`)."""

    key: str
    cols: tuple[str, ...]
    frames: list[pl.DataFrame]

    def fits(self, key: str, cols: Sequence[str], parts: int) -> bool:
        """Whether these parts are the ones _key_parts would make for ``key``, ``cols`` and ``parts`` parts."""
        return self.key == key and len(self.frames) == parts and set(cols) <= set(self.cols)

    def take(self) -> Iterator[pl.DataFrame]:
        """Each part in order, no longer held here once handed over: all of them held to the end of the exact
        pass were a second copy of the side's keys at matching's peak (2 x 5M synthetic: the exact pass's peak
        1.52 -> 1.45 GiB)."""
        while self.frames:
            yield self.frames.pop(0)


EXACT_COLUMNS = ("row", "k_strong", "ts_ns", "local", "lport", "remote", "rport", "is_egress")
"""The columns the exact pass reads of each side's parts of the ``k_strong`` key space (_offset_and_exact)."""


def arrange_keys(side: pl.DataFrame, parts: int) -> KeyParts:
    """``side``'s rows (from :func:`with_keys`) cut into ``parts`` parts of the ``k_strong`` key space and sorted,
    as the exact pass of :func:`match_sides` reads them (``inside_parts``). natproof.correlate makes the inside
    side's while the outside capture is still prepared in the other process (2 x 5M real: that process finishes
    ~1 s later, and this is ~0.5 s of matching's 2 s)."""
    return KeyParts("k_strong", EXACT_COLUMNS, list(_side_parts(side, "k_strong", list(EXACT_COLUMNS), parts)))


def _side_parts(df: pl.DataFrame, key: str, cols: list[str], parts: int) -> Iterator[pl.DataFrame]:
    """``df``'s rows with a non-null ``key``, ``cols`` only, a part of the key space at a time, each sorted by
    ``key``. A key is a 64-bit hash already (_strong_key, ...): a part is a range of its values. The rows are
    put in part order by one stable sort and a part's rows, gathered in capture order (a gather in key order is
    slow), are then sorted by key. (2 x 5M real: a hash and a filter of every row for each part, 1.2 s, then the
    splits' counts and joins on unsorted keys: match_sides 3.4 -> 2.8 s, the same pairs.)"""
    which = pl.col(key).cast(pl.UInt64) // pl.lit(-(-(1 << 64) // parts), dtype=pl.UInt64) if parts > 1 else pl.lit(0)
    part = df.select(pl.when(pl.col(key).is_not_null()).then(which).cast(pl.UInt32).alias("_part")).to_series()
    order = part.to_frame().select(pl.arg_sort_by("_part", maintain_order=True, nulls_last=True)).to_series()
    ends = [0, *np.cumsum(np.bincount(part.drop_nulls().to_numpy(), minlength=parts)).tolist()]
    del part
    df = df.select(cols)
    for p in range(parts):
        yield df.select(pl.all().gather(order.slice(ends[p], ends[p + 1] - ends[p]))).sort(key).with_columns(
            pl.col(key).set_sorted())


def _key_parts(inside: pl.DataFrame, outside: pl.DataFrame, key: str, cols: list[str],
               inside_parts: KeyParts | None = None) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """(inside, outside) rows with a non-null ``key``, ``cols`` only, a part of the key space at a time, each
    sorted by ``key`` (and flagged so: polars then counts and joins its keys on the sorted paths). The inside
    side's parts are taken from ``inside_parts`` when it holds them (:meth:`KeyParts.fits`)."""
    parts = key_part_count(inside.height, outside.height)
    if inside_parts is not None and inside_parts.fits(key, cols, parts):
        ins: Iterator[pl.DataFrame] = (f.select(cols) for f in inside_parts.take())
    else:
        if inside_parts is not None:
            inside_parts.frames.clear()  # cut for another part count: of no use, and not to be held meanwhile
        ins = _side_parts(inside, key, cols, parts)
    yield from zip(ins, _side_parts(outside, key, cols, parts), strict=True)


def estimate_clock_offset(inside: pl.DataFrame, outside: pl.DataFrame) -> int | None:
    """Outside clock minus inside clock, in ns, from packets whose strong key is unique on both sides.

    Egress packets cross the NAT inside to outside, replies the other way, so (as NTP does) the mean of
    the two directions' median differences cancels the NAT's latency. With one direction only, its
    median is taken as it is, the NAT's latency in it (offset_and_way). None when no key is unique on both sides.
    """
    return offset_from(offset_samples(inside, outside))


def offset_samples(inside: pl.DataFrame, outside: pl.DataFrame, *, by_rank: bool = False) -> pl.DataFrame:
    """The (dt, is_egress) rows :func:`estimate_clock_offset` (or, ``by_rank``, :func:`_offset_by_rank`) takes its
    medians of: dt is outside minus inside time of a key unique on both sides (the n-th copy of a key against the
    n-th). Rows of sides that hold every copy of their keys (a set of whole flows linked by key: natproof.spill)
    concatenate into the rows of the whole captures."""
    cols = ["k_strong", "ts_ns", "is_egress"]
    rank = pl.col("ts_ns").rank("ordinal").over("k_strong").alias("_n")
    dts = [pl.DataFrame(schema={"dt": pl.Int64, "is_egress": pl.Boolean})]
    for a, b in _key_parts(inside, outside, "k_strong", cols):
        if by_rank:
            a, b = a.with_columns(rank), b.with_columns(rank).drop("is_egress")
            j = a.join(b, on=["k_strong", "_n"], suffix="_out")
            dts.append(j.select((pl.col("ts_ns_out").cast(pl.Int64) - pl.col("ts_ns")).alias("dt"), "is_egress")
                       .filter(pl.col("dt").abs() <= ROUGH_TOLERANCE_NS))
        else:
            one = pl.len().over("k_strong") == 1
            pairs = a.filter(one).join(b.filter(one).drop("is_egress"), on="k_strong", suffix="_out")
            dts.append(pairs.select((pl.col("ts_ns_out") - pl.col("ts_ns")).cast(pl.Int64).alias("dt"), "is_egress"))
    return pl.concat(dts)


def _offset_by_rank(inside: pl.DataFrame, outside: pl.DataFrame) -> tuple[int | None, bool]:
    """Outside clock minus inside clock from the n-th copy of each strong key on one side against the n-th on
    the other (within ROUGH_TOLERANCE_NS of each other): for captures where no key is unique (identical
    datagrams, a replayed capture). Copies are seen in the same order on both sides of a NAT, and the median
    of the two directions shrugs off the copies one side missed. One row per packet, never a cross product. With
    whether it was taken from one direction only (offset_and_way)."""
    return offset_and_way(offset_samples(inside, outside, by_rank=True))


REWRITE_PENALTY_NS = 1_000_000
"""Among copies of an otherwise identical packet, a candidate whose tuple differs counts as this much (1 ms per
changed address or port) further away in time: MASQUERADE keeps the port unless the tuple clashes, DNAT keeps
the source, and no NAT at all keeps everything."""

MAX_CANDIDATES = 5_000_000
"""Above this many candidate pairs for duplicated keys, pairing falls back to nearest-in-time rounds."""


def _pair_by_key(inside: pl.DataFrame, outside: pl.DataFrame, key: str, offset_ns: int, tolerance_ns: int,
                 method: str) -> pl.DataFrame:
    """One-to-one pairs of rows with equal ``key``, nearest in time within the tolerance.

    A key seen once on each side pairs directly. Keys seen more than once (retransmissions, or identical
    packets with IP id 0 and the same payload from several pods) pair greedily by cost: time apart,
    plus REWRITE_PENALTY_NS for each address or port that changed.
    """
    found = [_pair_part(a, b, key, offset_ns, tolerance_ns)
             for a, b in _key_parts(inside, outside, key, ["row", key, "ts_ns", *_TUPLE])]
    return pl.concat(found).with_columns(pl.lit(method).alias("method")).cast(PAIR_SCHEMA)  # type: ignore[arg-type]


_TUPLE = ("local", "lport", "remote", "rport")


def _offset_and_exact(inside: pl.DataFrame, outside: pl.DataFrame, tolerance_ns: int,
                      inside_parts: KeyParts | None = None) -> tuple[int | None, pl.DataFrame | None, bool]:
    """estimate_clock_offset, then the exact pairs of ``k_strong`` as _pair_by_key gives them, in one pass over the
    parts of the key space: each part's join of the keys unique on both sides gives the offset's samples and,
    kept as (row, row_out, raw) beside the part's other rows, its exact pairs once the offset is known (a pass for
    each cost two joins of every key: 2x1M real 1.5 -> 1.1 s; 2x5M synthetic, all of match_sides 4.7 -> 3.3 s).
    (None, None, False) when no key is unique. Last, whether the offset was taken from one direction only
    (offset_and_way)."""
    key = "k_strong"
    raw = (pl.col("ts_ns_out") - pl.col("ts_ns")).cast(pl.Int64)
    dts, kept = [], []
    for a, b in _key_parts(inside, outside, key, list(EXACT_COLUMNS), inside_parts):
        a, b, once = _split_unique(a, b.drop("is_egress"), key)
        dts.append(once.select(raw.alias("dt"), "is_egress"))
        kept.append((a.drop("is_egress"), b, once.select("row", "row_out", raw.alias("raw"))))
        del once
    offset, one_way = offset_and_way(pl.concat(dts))
    if offset is None:
        return None, None, False
    found = [_pair_part(a, b, key, offset, tolerance_ns, unique=u) for a, b, u in kept]
    return (offset, pl.concat(found).with_columns(pl.lit("exact").alias("method")).cast(PAIR_SCHEMA),  # type: ignore[arg-type]
            one_way)


def _split_unique(a: pl.DataFrame, b: pl.DataFrame, key: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(``a``'s rows, ``b``'s rows, both with ``n``, of the keys not seen once on each side; the join of the rows
    of the keys that are, ``b``'s columns suffixed _out)."""
    n = pl.len().over(key).alias("n")
    a, b = a.with_columns(n), b.with_columns(n)
    a1, b1 = a.filter(pl.col("n") == 1), b.filter(pl.col("n") == 1)
    once = a1.join(b1, on=key, suffix="_out")
    return (pl.concat([a.filter(pl.col("n") != 1), a1.join(b1.select(key), on=key, how="anti")]),
            pl.concat([b.filter(pl.col("n") != 1), b1.join(a1.select(key), on=key, how="anti")]), once)


def _pair_part(a: pl.DataFrame, b: pl.DataFrame, key: str, offset_ns: int, tolerance_ns: int,
               unique: pl.DataFrame | None = None) -> pl.DataFrame:
    """_pair_by_key on one part of the key space.

    A key seen once on each side is one candidate pair. Duplicated keys (retransmissions, identical datagrams,
    a capture replayed in a loop) are joined within time buckets one tolerance wide, so copies further apart
    than the tolerance never meet: candidates grow with the copies close in time, not with the square of all
    copies. A candidate that is the only one of both its rows pairs directly; the rest are ranked by cost.
    ``unique``: the keys seen once on each side, already joined as (row, row_out, raw: outside minus inside
    time); ``a`` and ``b`` then hold only the other keys' rows, with their ``n`` (_offset_and_exact).
    """
    if unique is None:
        a, b, once = _split_unique(a, b, key)
        unique = once.select("row", "row_out", (pl.col("ts_ns_out") - pl.col("ts_ns")).alias("raw"))
    j = unique.with_columns((pl.col("raw") - offset_ns).alias("dt")).filter(pl.col("dt").abs() <= tolerance_ns)
    found = [j.select(pl.col("row").alias("in_row"), pl.col("row_out").alias("out_row"),
                      (pl.col("dt") + offset_ns).alias("dt_ns"), pl.lit(True).alias("unique"))]
    multi = _near_candidates(a, b, key, offset_ns, tolerance_ns)
    if multi is None:
        found.append(_pair_rounds(a, b, [key], offset_ns, tolerance_ns))
    elif not multi.is_empty():
        # A candidate that is the only one of its inside row and of its outside row needs no ranking.
        alone = (pl.len().over("row") == 1) & (pl.len().over("row_out") == 1)
        multi = multi.with_columns(alone.alias("_alone"))
        found.append(multi.filter("_alone").select(pl.col("row").alias("in_row"), pl.col("row_out").alias("out_row"),
                                                   (pl.col("dt") + offset_ns).alias("dt_ns")))
        multi = multi.filter(~pl.col("_alone"))
        cost = pl.col("dt").abs() + REWRITE_PENALTY_NS * pl.sum_horizontal(
            [(pl.col(c) != pl.col(f"{c}_out")).fill_null(True).cast(pl.Int64) for c in _TUPLE])
        found.append(_cheapest_first(multi.select("row", "row_out", "dt", cost.alias("cost")), offset_ns))
    return pl.concat([f.cast({"in_row": pl.UInt32, "out_row": pl.UInt32, "dt_ns": pl.Int64}) for f in found],
                     how="diagonal").with_columns(pl.col("unique").fill_null(False))


def _cheapest_first(candidates: pl.DataFrame, offset_ns: int) -> pl.DataFrame:
    """One-to-one pairs (in_row, out_row, dt_ns) from ``candidates`` (row, row_out, dt: outside minus inside time
    less ``offset_ns``, cost), taken greedily cheapest first (ties by row numbers): a row once taken is taken."""
    ranked = candidates.select("row", "row_out", "dt", "cost").sort("cost", "row", "row_out")
    taken_in: set[int] = set()
    taken_out: set[int] = set()
    rows: list[tuple[int, int, int]] = []
    for r_in, r_out, dt, _ in ranked.iter_rows():
        if r_in in taken_in or r_out in taken_out:
            continue
        taken_in.add(r_in)
        taken_out.add(r_out)
        rows.append((r_in, r_out, dt + offset_ns))
    return pl.DataFrame(rows, schema={"in_row": pl.UInt32, "out_row": pl.UInt32, "dt_ns": pl.Int64}, orient="row")


def _near_candidates(a: pl.DataFrame, b: pl.DataFrame, key: str, offset_ns: int,
                     tolerance_ns: int) -> pl.DataFrame | None:
    """Every (a row, b row) with equal ``key`` at most ``tolerance_ns`` apart (after ``offset_ns``), with ``dt``:
    a join on (key, time bucket) against each b row's bucket and its two neighbours, which holds every pair
    within one bucket width and none far apart. None, before any is made, when they would be more than
    MAX_CANDIDATES (then pairing goes by nearest-in-time rounds)."""
    width = max(int(tolerance_ns), 1)
    a = a.with_columns(((pl.col("ts_ns").cast(pl.Int64) + offset_ns) // width).alias("_bucket"))
    here = pl.col("ts_ns").cast(pl.Int64) // width
    b = b.with_columns(pl.concat_list(here - 1, here, here + 1).alias("_bucket")).explode("_bucket")
    by = [key, "_bucket"]
    size = a.group_by(by).len().join(b.group_by(by).len(), on=by).select(
        (pl.col("len").cast(pl.Int64) * pl.col("len_right")).sum()).item()
    if size and size > MAX_CANDIDATES:
        return None
    return a.join(b, on=by, suffix="_out").with_columns(
        (pl.col("ts_ns_out") - pl.col("ts_ns") - offset_ns).alias("dt"),
    ).filter(pl.col("dt").abs() <= tolerance_ns).drop("_bucket")


def _pair_rounds(inside: pl.DataFrame, outside: pl.DataFrame, by: list[str], offset_ns: int, tolerance_ns: int,
                 rounds: int = 4) -> pl.DataFrame:
    """``join_asof`` by ``by``, nearest in time; made one-to-one over a few rounds.

    ``join_asof`` is many-to-one (retransmissions on one side can all pick the same packet on the
    other), so after each round every outside row keeps only its nearest inside row, and the rest try
    again against the outside rows still free. ``dt_ns`` is outside minus inside time on the raw clocks.
    """
    empty = pl.DataFrame(schema={k: PAIR_SCHEMA[k] for k in ("in_row", "out_row", "dt_ns")})
    left = inside.filter(pl.col(by[0]).is_not_null()).select(
        pl.col("row").alias("in_row"), *by, (pl.col("ts_ns") + offset_ns).alias("t"),
    ).sort(*by, "t")
    right = outside.filter(pl.col(by[0]).is_not_null()).select(
        pl.col("row").alias("out_row"), *by, pl.col("ts_ns").alias("t_out"),
    ).sort(*by, "t_out")
    found: list[pl.DataFrame] = []
    for _ in range(rounds):
        if left.is_empty() or right.is_empty():
            break
        joined = left.join_asof(
            right, left_on="t", right_on="t_out", by=by, strategy="nearest",
            tolerance=tolerance_ns, check_sortedness=False,
        ).filter(pl.col("out_row").is_not_null())
        if joined.is_empty():
            break
        best = joined.with_columns((pl.col("t_out") - pl.col("t")).alias("resid")).sort(
            pl.col("resid").abs(), "in_row"
        ).unique("out_row", keep="first", maintain_order=True)
        # dt_ns as every pass gives it: outside minus inside time on the raw clocks.
        found.append(best.select("in_row", "out_row", (pl.col("resid") + offset_ns).alias("dt_ns")))
        left = left.join(best.select("in_row"), on="in_row", how="anti")
        right = right.join(best.select("out_row"), on="out_row", how="anti")
    return pl.concat(found).cast(empty.schema) if found else empty  # type: ignore[arg-type]


BYTES_ID_PENALTY_NS = 1_000_000
"""Among byte-range candidates, one whose IPv4 id does not follow from the merged packet's counts as this much (1 ms)
further away in time (_pair_by_bytes)."""


def _pair_by_bytes(small: pl.DataFrame, big: pl.DataFrame, offset_ns: int, tolerance_ns: int) -> pl.DataFrame:
    """Pair TCP data segments of ``small`` with a segment of ``big`` whose byte range contains them.

    GRO on the outside NIC merges segments (the outside capture holds one large packet, the inside one its
    segments); GSO/TSO hands the inside capture one large packet that the node segments in software before the
    outside capture sees it (an uplink without TSO). Only the byte ranges line up: every small segment pairs with
    the big one that holds its bytes, so one big packet pairs with many. A merge carries one ack (GRO merges only
    segments of one ack; GSO segments keep the large packet's), so segments of the same direction, legs and ack
    are searched, whatever the other direction's ACKs between them. Only legs already linked by exact pairs are
    searched (``link``, see :func:`_links`): the far end may be rewritten (DNAT), so alone it cannot say which legs
    belong together. Sequence numbers wrap: a big range across 2**32 holds the small ones after the wrap.

    Among candidates (a retransmitted segment, a big packet sent twice) the nearest in time is taken, an IPv4 one
    whose IP id does not follow from the big packet's BYTES_ID_PENALTY_NS further: software segmentation gives
    the k-th segment the big packet's id plus k, GRO merges only segments whose ids count up so (or, DF, stay
    equal), and the merged packet carries the first one's. IPv6 has no id: time alone. Each small segment takes
    one big packet, and a big packet one small segment per byte range.

    Returns (small_row, big_row, dt_ns) with dt taken as big minus small on the inside clock (``offset_ns`` is
    added to the inside side's times by the caller's choice of which frame is which).
    """
    empty = pl.DataFrame(schema={"small_row": pl.UInt32(), "big_row": pl.UInt32(), "dt_ns": pl.Int64()})
    by = ["is_egress", "link", "tcp_ack"]
    cols = ["row", *by, "payload_len", "ts_ns", "ip_id", pl.col("tcp_seq").cast(pl.Int64).alias("seq")]
    data = (pl.col("f_proto") == 6) & (pl.col("proto") == 6) & (pl.col("payload_len") > 0)
    s = small.filter(data).select(cols)
    b = big.filter(data).select(cols)
    if s.is_empty() or b.is_empty():
        return empty
    wraps = (pl.col("seq") + pl.col("payload_len")) > (1 << 32)
    b = pl.concat([b, b.filter(wraps).with_columns(pl.col("seq") - (1 << 32))])
    # The start of the nearest big range at or below each small segment's start; then every big packet of that
    # start (copies of one merge), each a candidate.
    starts = s.sort("seq").join_asof(b.select(*by, pl.col("seq"), pl.col("seq").alias("seq_b")).sort("seq"),
                                     on="seq", by=by, strategy="backward", check_sortedness=False)
    cand = starts.filter(pl.col("seq_b").is_not_null()).join(
        b.rename({"seq": "seq_b"}), on=[*by, "seq_b"], suffix="_b")
    dt = pl.col("ts_ns_b").cast(pl.Int64) - pl.col("ts_ns").cast(pl.Int64) - offset_ns
    cand = cand.with_columns(dt.alias("dt_ns")).filter(
        (pl.col("seq") + pl.col("payload_len") <= pl.col("seq_b") + pl.col("payload_len_b"))
        & (pl.col("dt_ns").abs() <= tolerance_ns))
    if cand.is_empty():
        return empty
    # The k-th segment of a merge of segments of gso bytes (all but the last that long): k = offset // gso.
    gso = pl.col("payload_len").max().over("row_b")
    k = (pl.col("seq") - pl.col("seq_b")) // gso
    step = (pl.col("ip_id").cast(pl.Int64) - pl.col("ip_id_b").cast(pl.Int64)) % (1 << 16)
    off = pl.col("ip_id").is_not_null() & pl.col("ip_id_b").is_not_null() & (step != k) & (step != 0)
    cand = cand.with_columns((pl.col("dt_ns").abs() + off.cast(pl.Int64) * BYTES_ID_PENALTY_NS).alias("cost"))
    best = (cand.sort("cost", "row", "row_b").unique("row", keep="first", maintain_order=True)
            .unique(["row_b", "seq", "payload_len"], keep="first", maintain_order=True))
    return best.select(pl.col("row").alias("small_row"), pl.col("row_b").alias("big_row"), "dt_ns").cast(
        empty.schema)  # type: ignore[arg-type]


_UNLINKED = 1 << 63


def _links(inside: pl.DataFrame, outside: pl.DataFrame, pairs: pl.DataFrame, in_left: pl.DataFrame,
           out_left: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``in_left`` and ``out_left`` with a ``link`` column (UInt64) saying which legs may hold the same packets.

    ``pairs`` index rows of the whole ``inside`` and ``outside``. An inside leg that paired links as itself
    (its conn_id); an outside leg as the inside leg it shares the most pairs with. A leg no exact pair links
    (a capture that starts in the middle of a bulk transfer, GRO merging every data segment) falls back to
    its far end, as pure SNAT keeps it: both sides hash it the same way, with the top bit set.
    """
    legs = pl.DataFrame([inside["conn_id"].gather(pairs["in_row"]).alias("in_conn"),
                         outside["conn_id"].gather(pairs["out_row"]).alias("out_conn")])
    best = (legs.group_by("out_conn", "in_conn").len().sort("len", "in_conn", descending=[True, False])
            .unique("out_conn", keep="first"))
    far_end = pl.struct("remote", "rport").hash(seed=0x6C6B) | _UNLINKED
    in_left = in_left.with_columns(pl.when(pl.col("conn_id").is_in(legs["in_conn"].unique().implode()))
                                   .then(pl.col("conn_id").cast(pl.UInt64)).otherwise(far_end).alias("link"))
    out_left = out_left.join(best.select(pl.col("out_conn").alias("conn_id"),
                                         pl.col("in_conn").cast(pl.UInt64).alias("_link")),
                             on="conn_id", how="left", maintain_order="left")
    out_left = out_left.with_columns(pl.coalesce("_link", far_end).alias("link")).drop("_link")
    return in_left, out_left


def _pair_by_ip_id(inside: pl.DataFrame, outside: pl.DataFrame, offset_ns: int,
                   tolerance_ns: int) -> pl.DataFrame:
    """Pair packets of linked legs on direction, IP id and TCP flags, nearest in time.

    An ALG rewrites the payload (conntrack's FTP helper rewrites PORT commands, changing their length) and then
    shifts every later sequence number of that direction (by the change in length, added up over rewrites), and
    the other direction's acks back (see cases/ftp-alg-active): the exact signature no longer agrees, the IP id
    still does. IP id 0 (DF packets of some stacks) is no key.
    """
    usable = (pl.col("link") < _UNLINKED) & pl.col("ip_id").is_not_null() & (pl.col("ip_id") != 0)
    cols = ["row", "ts_ns", "link", "is_egress", "ip_id", pl.col("tcp_flags").fill_null(0)]
    return _pair_rounds(inside.filter(usable).select(cols), outside.filter(usable).select(cols),
                        ["link", "is_egress", "ip_id", "tcp_flags"], offset_ns, tolerance_ns)


PARTIAL_KEYS = (("tcp_seq", "tcp_ack"), ("tcp_seq", "payload_len"), ("tcp_ack", "payload_len"))
"""After an ALG's payload rewrite one of a TCP segment's numbers still agrees across the NAT: the rewritten
segment keeps its seq and ack (its length changed), later segments of that direction keep their ack and length
(their seq moved), the other direction's keep their seq and length (their ack moved)."""


def _pair_tcp_partial(inside: pl.DataFrame, outside: pl.DataFrame, offset_ns: int,
                      tolerance_ns: int) -> pl.DataFrame:
    """Pair TCP segments of linked legs that agree on direction, flags and one of PARTIAL_KEYS, nearest in time:
    the ALG case where IP ids are 0 (DF segments of stacks that leave them unset)."""
    usable = (pl.col("link") < _UNLINKED) & (pl.col("proto") == 6) & (pl.col("f_proto") == 6)
    cols = ["row", "ts_ns", "link", "is_egress", "tcp_flags", "tcp_seq", "tcp_ack", "payload_len"]
    a, b = inside.filter(usable).select(cols), outside.filter(usable).select(cols)
    found = []
    for key in PARTIAL_KEYS:
        if a.is_empty() or b.is_empty():
            break
        got = _pair_rounds(a, b, ["link", "is_egress", "tcp_flags", *key], offset_ns, tolerance_ns)
        found.append(got)
        a = a.join(got.select(pl.col("in_row").alias("row")), on="row", how="anti")
        b = b.join(got.select(pl.col("out_row").alias("row")), on="row", how="anti")
    return pl.concat(found) if found else pl.DataFrame(schema={k: PAIR_SCHEMA[k] for k in ("in_row", "out_row",
                                                                                           "dt_ns")})


def _with_tcp_deltas(pairs: pl.DataFrame, inside: pl.DataFrame, outside: pl.DataFrame) -> pl.DataFrame:
    """``seq_delta`` and ``ack_delta`` of TCP pairs: outside minus inside, modulo 2**32 into [-2**31, 2**31)."""
    seq = inside.select(pl.col("row").alias("in_row"), "tcp_seq", "tcp_ack")
    seq_out = outside.select(pl.col("row").alias("out_row"), pl.col("tcp_seq").alias("seq_out"),
                             pl.col("tcp_ack").alias("ack_out"))
    wrap, half = 1 << 32, 1 << 31

    def delta(o: str, i: str) -> pl.Expr:
        return ((pl.col(o).cast(pl.Int64) - pl.col(i).cast(pl.Int64) + half) % wrap) - half

    return pairs.join(seq, on="in_row", how="left").join(seq_out, on="out_row", how="left").select(
        *pairs.columns, delta("seq_out", "tcp_seq").alias("seq_delta"), delta("ack_out", "tcp_ack").alias("ack_delta"))


def pair_within(side: pl.DataFrame, tolerance_ns: int = SELF_TOLERANCE_NS, *,
                outside: pl.DataFrame | None = None) -> pl.DataFrame:
    """Packets seen twice at one observation point under two legs (SELF_PAIR_SCHEMA).

    Hairpin NAT sends a pod's packet back to the pod's own veth, DNATed and masqueraded; a `tcpdump -i any`
    capture holds one copy per interface. Copies share the strong key; consecutive copies (in time) of one key
    in different legs, at most ``tolerance_ns`` apart, pair as (earlier, later). Copies in one leg
    (retransmissions, a bridge's duplicate) never pair, nor copies whose two ends' addresses are the same (no
    DNAT, no masquerade between them: two connections from one pod's ports to one Service whose first packets
    agree on every field the key holds, a helper's synthetic SYNs).

    A weak datagram (IPv6 UDP: no IP id) keeps its far end in the strong key, so its DNATed copy (a ClusterIP's
    datagram on the client's veth and on the veth of the endpoint pod on the node, one ``tcpdump -i any``) is
    paired on the loose key instead, more strictly: both far ends ones a DNAT may stand for or lead to
    (``dnat_end``, or an address ``outside``, the other capture, never shows: a Service address outside the known
    Service networks is virtual too, as _across_dnat reads it), the near end (address and port) the same, at most
    COPY_NS_WITHIN apart, on two interfaces of the point (``where``: the client's veth, the endpoint's), and each
    copy in one pair only (identical queries one socket sends to two servers at once, as musl's resolver does,
    are on one interface).
    """
    strong = _pair_within_strong(side, tolerance_ns)
    if ("k_loose" not in side.columns or side["k_loose"].dtype == pl.Null or "dnat_end" not in side.columns
            or "where" not in side.columns):
        return strong
    used = pl.concat([strong["a_row"], strong["b_row"]])
    virtual = pl.col("dnat_end").fill_null(False)
    if outside is not None and not outside.is_empty():
        shown = pl.concat([outside["remote"].unique().cast(pl.String), outside["local"].unique().cast(pl.String)])
        virtual = virtual | ~pl.col("remote").cast(pl.String).is_in(shown.unique().implode())
    df = (side.filter(pl.col("k_loose").is_not_null() & virtual & ~pl.col("row").is_in(used.implode()))
          .select("row", "k_loose", "ts_ns", "conn_id", "local", "lport", "remote", "rport", "where"))
    if df.height < 2:
        return strong
    df = df.sort("k_loose", "ts_ns", "row")
    nxt = df.select(
        pl.col("row").alias("a_row"), pl.col("row").shift(-1).alias("b_row"),
        (pl.col("ts_ns").shift(-1) - pl.col("ts_ns")).alias("dt_ns"),
        ((pl.col("k_loose").shift(-1) == pl.col("k_loose")) & (pl.col("conn_id").shift(-1) != pl.col("conn_id"))
         & (pl.col("where").shift(-1) != pl.col("where"))
         & (pl.col("local").shift(-1) == pl.col("local")) & (pl.col("lport").shift(-1) == pl.col("lport"))
         & ((pl.col("remote").shift(-1) != pl.col("remote")) | (pl.col("rport").shift(-1) != pl.col("rport"))))
        .fill_null(False).alias("ok"),
    ).filter(pl.col("ok") & (pl.col("dt_ns") <= min(tolerance_ns, COPY_NS_WITHIN))).drop("ok")
    loose, last_b = [], None
    for a, b, dt in nxt.iter_rows():  # each copy in one pair only: a row whose first is the last pair's second waits
        if a != last_b:
            loose.append((a, b, dt))
            last_b = b
    if not loose:
        return strong
    more = pl.DataFrame(loose, schema=SELF_PAIR_SCHEMA, orient="row")
    return pl.concat([strong, more])


def _pair_within_strong(side: pl.DataFrame, tolerance_ns: int) -> pl.DataFrame:
    """pair_within's pass on the strong key."""
    df = side.filter(pl.col("k_strong").is_not_null()).select("row", "k_strong", "ts_ns", "conn_id", "local",
                                                                "remote")
    if df.height < 2:
        return pl.DataFrame(schema=SELF_PAIR_SCHEMA)
    df = df.sort("k_strong", "ts_ns", "row")
    nxt = df.select(
        pl.col("row").alias("a_row"), pl.col("row").shift(-1).alias("b_row"),
        (pl.col("ts_ns").shift(-1) - pl.col("ts_ns")).alias("dt_ns"),
        ((pl.col("k_strong").shift(-1) == pl.col("k_strong")) & (pl.col("conn_id").shift(-1) != pl.col("conn_id"))
         & ((pl.col("local").shift(-1) != pl.col("local")) | (pl.col("remote").shift(-1) != pl.col("remote"))))
        .alias("ok"),
    )
    return nxt.filter(pl.col("ok") & (pl.col("dt_ns") <= tolerance_ns)).select(
        [pl.col(c).cast(t) for c, t in SELF_PAIR_SCHEMA.items()])


def _across_dnat(in_left: pl.DataFrame, outside: pl.DataFrame) -> pl.DataFrame:
    """The inside rows left over that may have crossed a DNAT: a weak datagram (``k_loose``) whose far end is one a
    DNAT may stand for or lead to (``dnat_end``: a ClusterIP in the Service networks, a pod), or one the outside
    capture never shows. A Service address is virtual: no packet to or from it leaves the node, whatever its prefix
    (an IPv6 cluster's ClusterIPs are often global: 2001:db8:96::/112 in tests/variants/clusterip6), while a
    destination a pod reached unchanged is on the outside too."""
    if in_left["k_loose"].dtype == pl.Null or in_left["k_loose"].null_count() == in_left.height:
        return in_left
    weak = in_left.filter(pl.col("k_loose").is_not_null())
    if "dnat_end" not in weak.columns:
        return in_left
    shown = pl.concat([outside["remote"].unique().cast(pl.String), outside["local"].unique().cast(pl.String)])
    keep = pl.col("dnat_end").fill_null(False) | ~pl.col("remote").cast(pl.String).is_in(shown.unique().implode())
    return weak.filter(keep)


def _without(df: pl.DataFrame, rows: pl.Series) -> pl.DataFrame:
    """``df`` less the rows whose ``row`` is one of ``rows`` (a mask by row number: no hash table of them)."""
    if rows.is_empty() or df.is_empty():
        return df
    taken = pl.repeat(False, int(max(df["row"].max(), rows.max())) + 1, eager=True)  # type: ignore[call-overload]
    return df.filter(~taken.scatter(rows, True).gather(df["row"]))


@dataclass(frozen=True)
class Matches:
    """Packet pairs across the two captures, and within the inside one."""

    pairs: pl.DataFrame
    """One row per matched inside packet (an inside packet GSO/TSO sent whole that the outside capture holds as
    segments: one row per segment, method "bytes"; every other inside packet pairs once): in_row, out_row, dt_ns
    (outside minus inside, raw clocks),
    method ("exact", "bytes", "ip_id", "tcp_partial", "datagram" or "payload"), seq_delta and ack_delta (TCP pairs
    of the ALG passes: how far the sequence space moved; null otherwise), unique (a strong key, seen once on
    each side; false: chosen among look-alikes, or on a weak key), ttl_delta (outside minus inside TTL)."""
    clock_offset_ns: int
    inside_self: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SELF_PAIR_SCHEMA))
    """Inside packets seen again at the inside under another leg (hairpin): SELF_PAIR_SCHEMA rows."""
    refused_lookalikes: int = 0
    """Pairs the payload pass found and refused (_causal_payload_pairs)."""
    offset_grounded: bool = True
    """Whether the clock offset rests on packets both captures hold, or was given (false: the payload pass's pairs
    were refused for that alone)."""
    offset_one_way: bool = False
    """Whether the clock offset was estimated (not given) from packets crossing in one direction only: the NAT's
    latency is in it and cannot be measured apart from it (offset_and_way)."""


def match_sides(inside: pl.DataFrame, outside: pl.DataFrame, *, clock_offset_ns: int | None = None,
                tolerance_ns: int = 1_000_000_000, inside_parts: KeyParts | None = None,
                offset_grounded: bool | None = None) -> Matches:
    """Match packets of ``inside`` to packets of ``outside`` (both from :func:`with_keys`).

    Passes, each on the rows still unmatched: exact invariant fields; TCP byte ranges (GRO/TSO) and then IP id
    (ALG payload rewrites), both within legs the exact pass linked; datagrams less their IP id or their cut
    payload head (:func:`_pair_datagrams`); payload digest (sequence-randomising middleboxes); and, among inside
    packets that crossed nowhere, copies of one packet under two legs (hairpin). ``inside_parts``: ``inside``
    already cut for the exact pass (:func:`arrange_keys`), used when its part count is the one both sides' heights
    give. ``offset_grounded``: whether the clock offset rests on packets both captures hold (natproof.spill knows it
    of the whole captures; by default: given, or some pass before the datagram one paired a packet), which the
    payload pass needs (_causal_payload_pairs), and the datagram pass to choose among cut datagrams.
    """
    exact, one_way = None, False
    if clock_offset_ns is None:
        offset, exact, one_way = _offset_and_exact(inside, outside, tolerance_ns, inside_parts)
    else:
        offset = clock_offset_ns
    if offset is None:
        # No key is unique on both sides (identical datagrams with IP id 0, a capture replayed in a loop):
        # estimate from the n-th copy of each key on one side against the n-th on the other, then pair.
        ranked, one_way = _offset_by_rank(inside, outside)
        offset = ranked or 0
    if exact is None:
        exact = _pair_by_key(inside, outside, "k_strong", offset, tolerance_ns, "exact")
    in_left = _without(inside, exact["in_row"])
    out_left = _without(outside, exact["out_row"])
    loose_in = _across_dnat(in_left, outside)
    if (loose_in["k_loose"].dtype != pl.Null and out_left["k_loose"].dtype != pl.Null
            and loose_in["k_loose"].null_count() < loose_in.height
            and out_left["k_loose"].null_count() < out_left.height):
        loose = _pair_by_key(loose_in, out_left, "k_loose", offset, tolerance_ns, "exact")
        exact = pl.concat([exact, loose])
        in_left = _without(in_left, loose["in_row"])
        out_left = _without(out_left, loose["out_row"])
    found = [exact]
    if not in_left.is_empty() and not out_left.is_empty():
        in_left, out_left = _links(inside, outside, exact, in_left, out_left)
        # Inside segments inside a larger outside one (GRO on eth0), then the reverse (GSO/TSO on the pod side,
        # segmented before eth0's tap): an inside packet then pairs with each of its outside segments.
        a = _pair_by_bytes(in_left, out_left, offset, tolerance_ns).select(
            pl.col("small_row").alias("in_row"), pl.col("big_row").alias("out_row"),
            (pl.col("dt_ns") + offset).alias("dt_ns"))
        b = _pair_by_bytes(out_left, in_left, -offset, tolerance_ns).select(
            pl.col("big_row").alias("in_row"), pl.col("small_row").alias("out_row"),
            (-pl.col("dt_ns") + offset).alias("dt_ns"))
        b = b.join(a.select("in_row"), on="in_row", how="anti").join(a.select("out_row"), on="out_row", how="anti")
        by_bytes = pl.concat([a, b]).with_columns(pl.lit("bytes").alias("method"))
        found.append(by_bytes)
        in_left = _without(in_left, by_bytes["in_row"])
        out_left = _without(out_left, by_bytes["out_row"])
        # Then the ALG passes: IP id, and TCP numbers of which one still agrees.
        for method, pass_ in (("ip_id", _pair_by_ip_id), ("tcp_partial", _pair_tcp_partial)):
            got = pass_(in_left, out_left, offset, tolerance_ns)
            found.append(_with_tcp_deltas(got, in_left, out_left).with_columns(pl.lit(method).alias("method")))
            in_left = _without(in_left, got["in_row"])
            out_left = _without(out_left, got["out_row"])
    grounded = (offset_grounded if offset_grounded is not None
                else clock_offset_ns is not None or any(not f.is_empty() for f in found))
    if "link" in in_left.columns and not in_left.is_empty() and not out_left.is_empty():
        # Datagrams whose IP id a NAT rewrote, or whose payload head a snaplen cut on one side only.
        got = _pair_datagrams(in_left, out_left, inside, offset, tolerance_ns, grounded).with_columns(
            pl.lit("datagram").alias("method"))
        found.append(got)
        in_left = _without(in_left, got["in_row"])
        out_left = _without(out_left, got["out_row"])
    by_payload = _pair_by_key(in_left.with_columns(_payload_key().alias("k_payload")),
                              out_left.with_columns(_payload_key().alias("k_payload")), "k_payload", offset,
                              tolerance_ns, "payload")
    by_payload, refused = _causal_payload_pairs(by_payload, inside, offset, grounded)
    found.append(by_payload)
    in_left = _without(in_left, by_payload["in_row"])
    schema = PAIR_SCHEMA | {"seq_delta": pl.Int32(), "ack_delta": pl.Int32(), "unique": pl.Boolean()}
    pairs = pl.concat([f.select([pl.col(c).cast(t) if c in f.columns else pl.lit(None, t).alias(c)
                                 for c, t in schema.items()]) for f in found]).sort("in_row", "out_row")
    # A routed crossing costs one TTL (bridged ones none): the sign says which way the packet went.
    ttl_delta = (outside["ttl"].gather(pairs["out_row"]).cast(pl.Int16)
                 - inside["ttl"].gather(pairs["in_row"]).cast(pl.Int16))
    pairs = pairs.with_columns(ttl_delta.clip(-127, 127).cast(pl.Int8).alias("ttl_delta"))
    # A key is strong when it holds a TCP segment's numbers or a non-zero IP id; a datagram with IP id 0 is
    # pinned by its length and payload head only, which two connections' replies can share.
    in_rows = pairs["in_row"]
    strong = (inside["proto"].gather(in_rows) == 6) | (inside["ip_id"].gather(in_rows).fill_null(0) != 0)
    pairs = pairs.with_columns((pl.col("unique").fill_null(False) & strong & (pl.col("method") == "exact"))
                               .alias("unique"))
    return Matches(pairs=pairs, clock_offset_ns=offset, inside_self=pair_within(in_left, outside=outside),
                   refused_lookalikes=refused, offset_grounded=grounded, offset_one_way=one_way)


PAYLOAD_SLACK_NS = 5_000_000
"""How far before its counterpart a packet paired on its payload alone may seem to cross (5 ms), or its
capture's span times DRIFT_PER_NS when longer: the error of a clock offset taken from other pairs, and the two
clocks' drift."""
DRIFT_PER_NS = 1e-4
"""Two capturing clocks drift apart by up to 100 ppm (unsynchronised quartz; NTP keeps them far closer)."""


def _causal_payload_pairs(pairs: pl.DataFrame, inside: pl.DataFrame, offset_ns: int,
                          grounded: bool) -> tuple[pl.DataFrame, int]:
    """The payload pass's pairs that can be one packet crossing the NAT, and how many were refused. A pair rests on
    the far end, the TCP payload's length and head only (IP id, TCP numbers and the near end all differ):
    identical requests of unrelated connections have them too (a trial: port-collision's uplink, moved onto
    basic's time, paired basic's HTTP exchanges, translated, each reply crossing 0.47 s before it was sent).

    ``grounded``: the clock offset rests on packets the other passes paired, or was given (--clock-offset). Each
    packet must then cross forward in time against it: an egress packet reach the outside capture after the inside
    one (outside minus inside time, less the offset, not below minus the slack), a reply the inside capture after
    the outside one. The slack: PAYLOAD_SLACK_NS, or DRIFT_PER_NS of the inside capture's span. Not grounded
    (nothing else paired: no packet of one capture is in the other), every pair is refused: payload heads alone
    cannot tell one path from alike traffic at another time, and a clock offset fitted to them would be fitted to
    whatever they are. The decision is each pair's alone, so a spilled run's groups (natproof.spill) make it as
    the whole captures do."""
    if pairs.is_empty():
        return pairs, 0
    if not grounded:
        return pairs.clear(), pairs.height
    egress = inside["is_egress"].gather(pairs["in_row"])
    late = pairs.select(pl.when(egress).then(pl.col("dt_ns") - offset_ns).otherwise(offset_ns - pl.col("dt_ns"))
                        >= -_causal_slack(inside)).to_series()
    return pairs.filter(late), int((~late).sum())


def _causal_slack(inside: pl.DataFrame) -> int:
    """How far before its counterpart (ns) a packet paired without its own key may seem to cross:
    PAYLOAD_SLACK_NS, or DRIFT_PER_NS of the inside capture's span when that is more."""
    ts = inside["ts_ns"]
    return max(PAYLOAD_SLACK_NS, int(((ts.max() or 0) - (ts.min() or 0)) * DRIFT_PER_NS))  # type: ignore[operator]


DATAGRAM_KEY = ("link", "is_egress", "proto", "payload_len", "icmp_type", "icmp_code", "icmp_seq")
"""What the datagram pass (_pair_datagrams) holds equal: the legs, the direction, and what neither a rewritten IP
id nor a snaplen changes (the length is the IP header's, not the captured one)."""


def _pair_datagrams(in_left: pl.DataFrame, out_left: pl.DataFrame, inside: pl.DataFrame, offset_ns: int,
                    tolerance_ns: int, grounded: bool) -> pl.DataFrame:
    """Pair datagrams (UDP, ICMP echo: neither TCP nor an ICMP error) the passes before left, in legs ``link``
    says belong together, agreeing on DATAGRAM_KEY, nearest in time (in_row, out_row, dt_ns), where either

    - a NAT gave them a new IP id (pf's ``scrub random-id``; Linux never does): only in legs linked by other pairs
      (the replies), their payload heads equal (or one cut, below);
    - a snaplen cut the payload head on one side (or on both, at different lengths): ``head_digest`` covers what
      was captured, so the two digests differ (``head_whole``); the IP ids are then equal, and legs linked by other
      pairs or, linked by none, at the same far end (_links).

    A datagram whose head both sides hold whole pairs here only with the same head, as in the exact pass: unrelated
    look-alikes pair no more loosely than there. Each pair must cross forward in time against the clock offset (the
    rule of _causal_payload_pairs, ``inside`` giving the slack). When nothing else grounds the offset (``grounded``
    false: a capture whose snaplen cut every TCP header, s08c of a trial, holds only the datagrams), a cut datagram
    pairs only with the one candidate there is, itself that one's only candidate. ``in_left`` and ``out_left``
    carry ``link`` (_links); sides without ``head_whole`` or the ICMP columns (frames made by hand) pair nothing
    here. More candidates than MAX_CANDIDATES (alike leftovers by the million) pair nothing either."""
    empty = pl.DataFrame(schema={k: PAIR_SCHEMA[k] for k in ("in_row", "out_row", "dt_ns")})
    need = {"head_whole", "icmp_type", "icmp_code", "icmp_seq"}
    if not need <= set(in_left.columns) or not need <= set(out_left.columns):
        return empty
    usable = (pl.col("proto") != 6) & (pl.col("f_proto") != 6) & ~pl.col("is_icmp_error").fill_null(False)
    cols = ["row", "ts_ns", "link", "is_egress", "ip_id", "head_digest", "head_whole",
            pl.struct(*DATAGRAM_KEY).hash(seed=0x6467).alias("k_dgram")]
    a, b = in_left.filter(usable).select(cols), out_left.filter(usable).select(cols)
    if a.is_empty() or b.is_empty():
        return empty
    cand = _near_candidates(a, b, "k_dgram", offset_ns, tolerance_ns)
    if cand is None or cand.is_empty():
        return empty
    linked = pl.col("link") < _UNLINKED
    cut = ~pl.col("head_whole").fill_null(True) | ~pl.col("head_whole_out").fill_null(True)
    same_head = pl.col("head_digest").eq_missing(pl.col("head_digest_out"))
    same_id = pl.col("ip_id").eq_missing(pl.col("ip_id_out"))
    forward = pl.when(pl.col("is_egress")).then(pl.col("dt")).otherwise(-pl.col("dt")) >= -_causal_slack(inside)
    cand = cand.filter((same_head | cut) & (same_id | linked) & forward)
    if not grounded:
        cand = cand.filter(cut & same_id & (pl.len().over("row") == 1) & (pl.len().over("row_out") == 1))
    return _cheapest_first(cand.with_columns(pl.col("dt").abs().alias("cost")), offset_ns)
