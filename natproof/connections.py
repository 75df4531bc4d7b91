"""Group one capture's packets into connections, as conntrack would see them."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


@dataclass(frozen=True)
class IdleTimeouts:
    """Silence after which a reused 5-tuple counts as a new connection, per protocol (seconds).

    The defaults follow conntrack's: udp stream 120 s, icmp 30 s. TCP splits on a new SYN instead,
    and on an hour of silence.
    """

    tcp_s: float = 3600.0
    udp_s: float = 120.0
    icmp_s: float = 30.0


_SYN, _ACK = 0x02, 0x10


def _flow_columns() -> list[pl.Expr]:
    """The flow a packet belongs to; an ICMP error belongs to the flow it quotes, as a reply."""
    err = pl.col("inner_proto").is_not_null()
    return [
        pl.when(err).then(pl.col("inner_proto")).otherwise(pl.col("proto")).alias("f_proto"),
        pl.when(err).then(pl.col("inner_dst")).otherwise(pl.col("src")).alias("f_src"),
        pl.when(err).then(pl.col("inner_dport")).otherwise(pl.col("sport")).alias("f_sport"),
        pl.when(err).then(pl.col("inner_src")).otherwise(pl.col("dst")).alias("f_dst"),
        pl.when(err).then(pl.col("inner_sport")).otherwise(pl.col("dport")).alias("f_dport"),
        err.alias("is_icmp_error"),
    ]


def group_connections(packets: pl.DataFrame, timeouts: IdleTimeouts | None = None) -> tuple[pl.DataFrame,
                                                                                           pl.DataFrame]:
    """Assign ``conn_id`` and ``is_egress`` to every packet and return (packets, connections).

    A connection is a bidirectional 5-tuple (ICMP echo: addresses and identifier). The same 5-tuple used
    again later is a new connection when a SYN with a new initial sequence number starts it, or after
    the protocol's idle timeout. The originator is the sender of the SYN (or echo request), else of the
    first packet (for TCP caught mid-way: the end with the higher port); its packets are ``egress``,
    the other direction's are replies.
    """
    t = timeouts or IdleTimeouts()
    df = packets.with_columns(_flow_columns()).filter(pl.col("f_sport").is_not_null() & pl.col("f_dport").is_not_null())
    # The work happens on a narrow frame (sorting and joining the wide packet frame costs several copies of it);
    # its results join the packets again in their own order at the end.
    wide = df
    df = df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_i"), "f_proto", "f_src", "f_dst", "f_sport",
                   "f_dport", "is_icmp_error", "ts_ns", "frame_no", "tcp_flags", "tcp_seq", "icmp_type")
    # Addresses as their rank among the capture's sorted distinct addresses: sorting and grouping by integers
    # is several times faster than by strings, and ranks order (and compare) exactly as the strings do.
    ranks = pl.concat([df["f_src"], df["f_dst"]]).unique().sort().to_frame("_addr").with_row_index("_rank")
    df = df.join(ranks.rename({"_addr": "f_src", "_rank": "_src_rank"}), on="f_src", how="left",
                 maintain_order="left").join(ranks.rename({"_addr": "f_dst", "_rank": "_dst_rank"}), on="f_dst",
                                             how="left", maintain_order="left")
    a_first = (pl.col("_src_rank") < pl.col("_dst_rank")) | (
        (pl.col("_src_rank") == pl.col("_dst_rank")) & (pl.col("f_sport") <= pl.col("f_dport"))
    )
    df = df.with_columns(
        pl.when(a_first).then(pl.col("_src_rank")).otherwise(pl.col("_dst_rank")).alias("k_a"),
        pl.when(a_first).then(pl.col("f_sport")).otherwise(pl.col("f_dport")).alias("k_ap"),
        pl.when(a_first).then(pl.col("_dst_rank")).otherwise(pl.col("_src_rank")).alias("k_b"),
        pl.when(a_first).then(pl.col("f_dport")).otherwise(pl.col("f_sport")).alias("k_bp"),
    ).drop("_src_rank", "_dst_rank").sort(["f_proto", "k_a", "k_ap", "k_b", "k_bp", "ts_ns", "frame_no"])
    key = ["f_proto", "k_a", "k_ap", "k_b", "k_bp"]
    is_syn = (pl.col("f_proto") == 6) & ~pl.col("is_icmp_error") & (
        (pl.col("tcp_flags").fill_null(0) & (_SYN | _ACK)) == _SYN
    )
    idle_ns = (
        pl.when(pl.col("f_proto") == 6).then(pl.lit(int(t.tcp_s * 1e9)))
        .when(pl.col("f_proto") == 17).then(pl.lit(int(t.udp_s * 1e9)))
        .otherwise(pl.lit(int(t.icmp_s * 1e9)))
    )
    df = df.with_columns(
        is_syn.alias("_syn"),
        pl.when(is_syn).then(pl.col("tcp_seq")).otherwise(None).alias("_syn_seq"),
    ).with_columns(
        pl.col("_syn_seq").forward_fill().shift(1).over(key).alias("_prev_syn_seq"),
        (pl.col("ts_ns") - pl.col("ts_ns").shift(1).over(key)).alias("_gap"),
    )
    first_in_key = pl.col("_gap").is_null()
    prev = pl.col("_prev_syn_seq")
    # A SYN opens a new connection unless the tuple's previous SYN had the same ISN (a retransmission);
    # packets before a tuple's first SYN belong to an earlier connection the capture caught mid-way.
    new_syn = pl.col("_syn") & ~first_in_key & (prev.is_null() | (prev != pl.col("tcp_seq")))
    new_conn = first_in_key | (pl.col("_gap") > idle_ns) | new_syn
    df = df.with_columns(new_conn.fill_null(True).alias("_new"))
    df = df.with_columns((pl.col("_new").cast(pl.Int64).cum_sum() - 1).alias("conn_id"))
    initiator = pl.col("_syn") | (
        pl.col("icmp_type").is_in([8, 128]) & ~pl.col("is_icmp_error")
    )
    origin = df.group_by("conn_id").agg(
        pl.col("f_src").filter(initiator).first().alias("_o_src"),
        pl.col("f_sport").filter(initiator).first().alias("_o_sport"),
        pl.col("f_src").first().alias("_first_src"),
        pl.col("f_sport").first().alias("_first_sport"),
        pl.col("f_dst").first().alias("_first_dst"),
        pl.col("f_dport").first().alias("_first_dport"),
        pl.col("f_proto").first().alias("_proto"),
    )
    # The first packet's sender is the originator, as conntrack takes it; but a TCP connection seen
    # without its SYN (the capture started mid-way) is judged by ports: the client's is the higher one.
    client_is_dst = (pl.col("_proto") == 6) & (pl.col("_first_dport") > pl.col("_first_sport"))
    origin = origin.select(
        "conn_id",
        pl.when(pl.col("_o_src").is_not_null()).then(pl.col("_o_src"))
        .when(client_is_dst).then(pl.col("_first_dst")).otherwise(pl.col("_first_src")).alias("o_src"),
        pl.when(pl.col("_o_src").is_not_null()).then(pl.col("_o_sport"))
        .when(client_is_dst).then(pl.col("_first_dport")).otherwise(pl.col("_first_sport")).alias("o_sport"),
    )
    df = df.join(origin, on="conn_id", how="left").with_columns(
        ((pl.col("f_src") == pl.col("o_src")) & (pl.col("f_sport") == pl.col("o_sport"))).alias("is_egress")
    ).with_columns(
        # The far end of the connection, as seen in this packet: NAT never rewrites it for egress SNAT.
        pl.when(pl.col("is_egress")).then(pl.col("f_dst")).otherwise(pl.col("f_src")).alias("remote"),
        pl.when(pl.col("is_egress")).then(pl.col("f_dport")).otherwise(pl.col("f_sport")).alias("rport"),
        pl.when(pl.col("is_egress")).then(pl.col("f_src")).otherwise(pl.col("f_dst")).alias("local"),
        pl.when(pl.col("is_egress")).then(pl.col("f_sport")).otherwise(pl.col("f_dport")).alias("lport"),
    ).drop(["_syn", "_syn_seq", "_prev_syn_seq", "_gap", "_new", "k_a", "k_ap", "k_b", "k_bp",
            "o_src", "o_sport"])
    conns = df.group_by("conn_id").agg(
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
    ).sort(["first_ts_ns", "conn_id"])
    new = df.select("_i", "conn_id", "is_egress", "remote", "rport", "local", "lport").sort("_i").drop("_i")
    out = wide.hstack(new)
    dt = pl.col("ts_ns").diff()
    in_order = out.select(((dt > 0) | ((dt == 0) & (pl.col("frame_no").cast(pl.Int64).diff() > 0)))
                          .fill_null(True).all()).item()
    return (out if in_order else out.sort(["ts_ns", "frame_no"])), conns
