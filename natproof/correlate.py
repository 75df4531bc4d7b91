"""correlate(): read both captures, group, match, and judge every inside connection."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from natproof.capture import CaptureInfo
from natproof.connections import PROTO_NAMES, IdleTimeouts, flow_columns, group_connections
from natproof.errors import InputError
from natproof.match import MATCH_COLUMNS, match_sides, signature, with_keys
from natproof.memory import trim
from natproof.packets import decoder_flag, load_packets
from natproof.parallel import run_pair
from natproof.result import CONNECTION_SCHEMA, CaptureSummary, Result
from natproof.verdicts import classify

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ProgressFactory = Callable[[str, int], Callable[[int], None]]
"""Called as (label, total_bytes) for each capture; returns a callback advanced by records decoded."""

_PRIVATE_V4 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]
_ULA = ipaddress.ip_network("fc00::/7")


def parse_networks(cidrs: str | Sequence[str]) -> tuple[Network, ...]:
    """Parse one CIDR, a comma-separated list, or a sequence of CIDRs."""
    items = cidrs.split(",") if isinstance(cidrs, str) else list(cidrs)
    try:
        return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in items if c.strip())
    except ValueError as exc:
        raise InputError(f"invalid --pod-cidr: {exc}") from None


def infer_pod_networks(conns: pl.DataFrame) -> tuple[Network, ...]:
    """Guess the pod network from the inside capture: the /16 (IPv6: /48) around each private originator.

    Kubernetes nodes take a /24 of a cluster-wide /16 by default, so a /16 covers a node's pods and the
    pods they talk to on other nodes.
    """
    nets: set[Network] = set()
    for src in conns["src"].unique().to_list():
        addr = ipaddress.ip_address(src)
        if isinstance(addr, ipaddress.IPv4Address) and any(addr in n for n in _PRIVATE_V4):
            nets.add(ipaddress.ip_network(f"{src}/16", strict=False))
        elif isinstance(addr, ipaddress.IPv6Address) and addr in _ULA:
            nets.add(ipaddress.ip_network(f"{src}/48", strict=False))
    return tuple(sorted(nets, key=lambda n: (n.version, n.network_address)))


def _in_networks(addrs: pl.Series, nets: Sequence[Network]) -> pl.Series:
    lookup = {a: any(ipaddress.ip_address(a) in n for n in nets) for a in addrs.unique().to_list()}
    return addrs.replace_strict(lookup, return_dtype=pl.Boolean, default=False)


def _fmt_time(ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%H:%M:%S")


DECODE_COLUMNS = ("frame_no", "ts_ns", "proto", "src", "dst", "sport", "dport", "ip_id", "tcp_seq", "tcp_ack",
                  "tcp_flags", "payload_len", "head_digest", "icmp_type", "icmp_code", "icmp_seq",
                  "inner_proto", "inner_src", "inner_dst", "inner_sport", "inner_dport")
"""The packet columns correlate decodes: what grouping, the keys and matching read (see PACKET_SCHEMA)."""

FEATURE_COLUMNS = ("frame_no", "ts_ns", "proto", "tcp_seq", "tcp_ack", "tcp_flags", "icmp_type", "payload_len",
                   "head_digest")
"""Decoded columns kept as they are; the rest are read once into the flow columns and the signature."""


def packet_features(packets: pl.DataFrame) -> pl.DataFrame:
    """What correlate keeps of each decoded packet: FEATURE_COLUMNS, the flow (natproof.connections.flow_columns)
    and the match signature (natproof.match.signature). Row by row: applied to each decoded batch."""
    return packets.select(*FEATURE_COLUMNS, *flow_columns(), signature())


PACKET_COLUMNS = ("frame_no", "ts_ns", "proto", "tcp_flags", "conn_id", "is_egress", "is_icmp_error")
"""What a Result keeps of each packet (plus, inside, the match: out_frame, dt_ns, method)."""


@dataclass(frozen=True)
class _Side:
    info: CaptureInfo
    networks: tuple[Network, ...]


def _prepare_side(path: str | os.PathLike[str], progress: Callable[[int], None] | None, *, fast: bool | None,
                  timeouts: IdleTimeouts | None, inside: bool,
                  pod_cidr: str | Sequence[str] | None) -> tuple[_Side, dict[str, pl.DataFrame]]:
    """Decode, group and key one capture. Frames: packets (PACKET_COLUMNS), match (MATCH_COLUMNS of the packets
    that may have crossed the NAT: inside, not those of internal connections; ``row`` indexes packets) and
    connections (with ``internal``, inside). The inside side also settles the pod networks."""
    info, pk = load_packets(path, progress, fast=fast, columns=DECODE_COLUMNS, transform=packet_features)
    pk, conns = group_connections(pk, timeouts)
    nets: tuple[Network, ...] = ()
    if inside:
        nets = parse_networks(pod_cidr) if pod_cidr else infer_pod_networks(conns)
        conns = conns.with_columns(_in_networks(conns["dst"], nets).alias("internal"))
    trim()
    keyed = with_keys(pk)
    packets = keyed.select(PACKET_COLUMNS)
    match = keyed.select(MATCH_COLUMNS)
    del pk, keyed
    trim()
    if inside and conns["internal"].any():
        internal = conns.sort("conn_id")["internal"]  # conn_id runs 0, 1, ...: row conn_id is that connection
        match = match.filter(~internal.gather(packets["conn_id"]))
    return _Side(info, nets), {"packets": packets, "match": match, "connections": conns}


def correlate(
    inside: str | os.PathLike[str],
    outside: str | os.PathLike[str],
    *,
    pod_cidr: str | Sequence[str] | None = None,
    clock_offset_s: float | None = None,
    tolerance_s: float = 1.0,
    timeouts: IdleTimeouts | None = None,
    progress: ProgressFactory | None = None,
    decoder: str = "auto",
) -> Result:
    """Prove each inside connection's NAT mapping from an inside (pod side) and an outside capture.

    ``pod_cidr`` names the pod network (destinations in it are ``internal``); by default it is inferred
    from the inside capture. ``clock_offset_s`` (outside minus inside) is estimated when not given.
    Raises :class:`~natproof.errors.CaptureError` for an unusable file and
    :class:`~natproof.errors.InputError` for captures that cannot be used together.
    ``decoder`` picks the packet decoder: "auto" or "fast" (columnar), or "dpkt" (the reference); the
    result is the same.
    """
    fast = decoder_flag(decoder)
    if pod_cidr:
        parse_networks(pod_cidr)  # a bad --pod-cidr is an error before any capture is read
    cbs = [progress(f"{label}: {os.fspath(path)}", _size(path)) if progress else None
           for label, path in (("inside", inside), ("outside", outside))]
    # Each capture is prepared on its own (decode, group, key), the outside one in a second process when both
    # are large; then the two meet in matching.
    (ins, a), (outs, b) = run_pair(_prepare_side, [inside, outside], cbs, fast=fast, timeouts=timeouts,
                                   pod_cidr=pod_cidr, each=[{"inside": True}, {"inside": False}])
    in_pk, in_conns, in_match = a["packets"], a["connections"], a["match"]
    out_pk, out_conns, out_match = b["packets"], b["connections"], b["match"]
    nets = ins.networks

    offset_ns = None if clock_offset_s is None else int(round(clock_offset_s * 1e9))
    matches = match_sides(in_match, out_match, clock_offset_ns=offset_ns, tolerance_ns=int(tolerance_s * 1e9))
    if matches.pairs.is_empty() and not in_match.is_empty() and not out_match.is_empty():
        _check_overlap(ins.info.path, outs.info.path, in_match, out_match, matches.clock_offset_ns)
    unmatched_inside = in_match.height - matches.pairs.height  # the match frame leaves internal packets out
    del in_match, out_match

    pairs = matches.pairs
    in_rows, out_rows = pairs["in_row"], pairs["out_row"]
    pairs = pairs.with_columns(
        in_pk["conn_id"].gather(in_rows).alias("in_conn"), in_pk["is_egress"].gather(in_rows),
        in_pk["is_icmp_error"].gather(in_rows), in_pk["frame_no"].gather(in_rows).alias("in_frame"),
        out_pk["conn_id"].gather(out_rows).alias("out_conn"), out_pk["frame_no"].gather(out_rows).alias("out_frame"),
    )
    conns = _judge(in_conns, out_conns, pairs, matches.clock_offset_ns)
    matched_out = pairs["out_row"].n_unique()
    in_pk = in_pk.with_columns(
        _scatter(in_pk.height, in_rows, pairs["out_frame"]).alias("out_frame"),
        _scatter(in_pk.height, in_rows, pairs["dt_ns"]).alias("dt_ns"),
        _scatter(in_pk.height, in_rows, pairs["method"]).alias("method"),
    )
    return Result(
        inside=CaptureSummary.from_info(ins.info, in_pk.height),
        outside=CaptureSummary.from_info(outs.info, out_pk.height),
        clock_offset_s=round(matches.clock_offset_ns / 1e9, 9),
        pod_networks=tuple(str(n) for n in nets),
        connections=conns,
        unmatched_inside=unmatched_inside,
        unmatched_outside=out_pk.height - matched_out,
        inside_packets=in_pk,
        outside_packets=out_pk,
    )


def _scatter(n: int, rows: pl.Series, values: pl.Series) -> pl.Series:
    """A column of n nulls with ``values`` at ``rows``."""
    return pl.repeat(None, n, dtype=values.dtype, eager=True).scatter(rows, values)


def _size(path: str | os.PathLike[str]) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _check_overlap(in_path: str, out_path: str, in_pk: pl.DataFrame, out_pk: pl.DataFrame, offset: int) -> None:
    a0, a1 = in_pk["ts_ns"].min() + offset, in_pk["ts_ns"].max() + offset  # type: ignore[operator]
    b0, b1 = out_pk["ts_ns"].min(), out_pk["ts_ns"].max()
    if a1 < b0 or b1 < a0:  # type: ignore[operator]
        raise InputError(
            f"{in_path} and {out_path} do not overlap in time ({_fmt_time(a0)}-{_fmt_time(a1)} vs "
            f"{_fmt_time(b0)}-{_fmt_time(b1)} UTC); pass --clock-offset if the clocks differ"  # type: ignore[arg-type]
        )


def _judge(in_conns: pl.DataFrame, out_conns: pl.DataFrame, pairs: pl.DataFrame, offset_ns: int) -> pl.DataFrame:
    """Map each inside connection to the outside connection most of its packets matched, and classify it."""
    per_out = pairs.group_by("in_conn", "out_conn").agg(
        pl.len().alias("n"), pl.col("out_frame").min().alias("first_out")
    ).sort(["in_conn", "n", "first_out"], descending=[False, True, False])
    primary = per_out.group_by("in_conn", maintain_order=True).agg(
        pl.col("out_conn").first(), pl.col("out_conn").n_unique().alias("outside_tuples"),
    )
    # One pass over the pairs, with no copy of them: NAT latency (time to cross the node, egress inside->outside
    # and reply outside->inside, on one clock), counts, and evidence: the first matched pair of each kind
    # (in inside frame order), taken from the outside tuple the connection is mapped to (a connection that left
    # under two tuples must not cite the other one's frames).
    lut = _scatter((int(pairs["in_conn"].max()) + 1) if pairs.height else 0, primary["in_conn"], primary["out_conn"])
    if pairs.height and not pairs.select((pl.col("in_frame").diff().fill_null(0) >= 0).all()).item():
        pairs = pairs.sort("in_frame")
    pairs = pairs.with_columns((pl.col("out_conn") == lut.gather(pairs["in_conn"])).alias("_on_primary"))
    reply = ~pl.col("is_egress") & ~pl.col("is_icmp_error")
    lat_us = (pl.when(pl.col("is_egress")).then(pl.col("dt_ns") - offset_ns).otherwise(offset_ns - pl.col("dt_ns"))
              / 1000.0).filter(pl.col("method") == "exact")
    stats = pairs.group_by("in_conn").agg(
        pl.col("is_egress").sum().cast(pl.UInt32).alias("matched_egress"),
        reply.sum().cast(pl.UInt32).alias("matched_reply"),
        lat_us.median().round(3).alias("latency_median_us"),
        lat_us.max().round(3).alias("latency_max_us"),
        *[pl.col(f"{side}_frame").filter(cond & pl.col("_on_primary")).first().alias(f"evidence_{kind}_{name}_frame")
          for kind, cond in (("egress", pl.col("is_egress")), ("reply", reply), ("icmp_error", pl.col("is_icmp_error")))
          for side, name in (("in", "inside"), ("out", "outside"))],
    )
    oc = out_conns.select(
        pl.col("conn_id").alias("out_conn"),
        pl.col("src").alias("outside_src"), pl.col("sport").alias("outside_sport"),
        pl.col("dst").alias("outside_dst"), pl.col("dport").alias("outside_dport"),
        pl.col("egress_packets").alias("egress_outside"), pl.col("reply_packets").alias("reply_outside"),
        pl.col("icmp_error_packets").alias("icmp_errors_outside"),
    )
    df = (
        in_conns.rename({"conn_id": "in_conn"})
        .join(primary, on="in_conn", how="left")
        .join(oc, on="out_conn", how="left")
        .join(stats, on="in_conn", how="left")
        .sort(["first_ts_ns", "in_conn"])
    )
    verdicts = [
        classify(
            internal=r["internal"],
            egress_matched=r["matched_egress"] or 0,
            source_rewritten=r["outside_src"] is not None and r["outside_src"] != r["src"],
            reply_outside=r["reply_outside"] or 0,
            reply_inside=r["reply_packets"] or 0,
        ).value
        for r in df.select("internal", "matched_egress", "outside_src", "src", "reply_outside",
                           "reply_packets").iter_rows(named=True)
    ]
    out = df.with_columns(
        pl.Series("verdict", verdicts, dtype=pl.String),
        pl.col("proto").replace_strict(PROTO_NAMES, return_dtype=pl.String),
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("conn"),
        pl.col("outside_tuples").fill_null(0),
    ).rename({
        "src": "inside_src", "sport": "inside_sport", "dst": "inside_dst", "dport": "inside_dport",
        "egress_packets": "egress_inside", "reply_packets": "reply_inside",
        "icmp_error_packets": "icmp_errors_inside", "in_conn": "inside_conn_id", "out_conn": "outside_conn_id",
    })
    # A connection that never reached the outside has no outside tuple, whatever else the outside holds.
    no_out = pl.col("verdict").is_in(["not_forwarded", "internal"])
    out = out.with_columns(
        [pl.when(no_out).then(None).otherwise(pl.col(c)).alias(c)
         for c in ("outside_src", "outside_sport", "outside_dst", "outside_dport")]
        + [pl.when(no_out).then(0).otherwise(pl.col(c).fill_null(0)).alias(c)
           for c in ("egress_outside", "reply_outside", "icmp_errors_outside", "matched_egress", "matched_reply")]
    )
    return out.select([pl.col(c).cast(t) for c, t in CONNECTION_SCHEMA.items()])
