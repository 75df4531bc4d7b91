"""Make the VPC Flow Log records AWS would write for a NAT gateway's interface, from captures of its two sides.

The records follow AWS's documented format and rules (natproof.flowlogs.records cites them):

- one record per flow per aggregation interval: a flow is the 5-tuple the interface sees (srcaddr, dstaddr,
  srcport, dstport, protocol; ICMP has ports 0) with its pkt-srcaddr/pkt-dstaddr; ``packets`` and ``bytes`` count
  its IP packets and their IP total lengths in the interval; ``start``/``end`` are the Unix seconds (floored) of its
  first and last packet in the interval, plus ``lag_s`` (AWS: up to 60 s late; 0 here unless asked);
- on the gateway's interface ("Traffic through a NAT gateway",
  https://docs.aws.amazon.com/vpc/latest/userguide/flow-logs-records-examples.html#flow-log-example-nat) a
  node's packet to the internet reads srcaddr = the node, dstaddr = the gateway's private address, pkt-dstaddr =
  the destination; the gateway's translated packet reads srcaddr = the gateway's private address, its own port,
  dstaddr = the destination; replies mirror these. The captured public side carries the Elastic IP, which AWS's
  internet gateway maps one to one to the gateway's private address: the records carry the private one, as AWS's
  do;
- tcp-flags is the OR of FIN 1, SYN 2, RST 4 and SYN-ACK 18 over the packets of the record (0 when none, and for
  UDP and ICMP); flow-direction is ingress or egress relative to the interface, traffic-path 8 (internet gateway) for
  what leaves towards the internet and 1 (within the VPC) for what leaves towards a node, ``-`` for ingress
  ("Available fields", https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html#flow-logs-fields);
- intervals are consecutive ``interval_s`` windows aligned on multiples of it in Unix time (AWS does not document
  their alignment); the lab's link noise (IPv6 router solicitations, IGMP, ARP) is left out, a VPC has none.

Writers give the S3 text delivery (a header line naming the fields, optionally gzip-compressed), the CloudWatch
Logs form (no header; with ``cloudwatch_timestamps`` each line led by an event timestamp, as an export shows it)
and the S3 Parquet delivery (columns named with underscores, typed as AWS's field table says, gzip-compressed).
"""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import os
from collections.abc import Sequence

import polars as pl

from natproof.flowlogs.records import DEFAULT_FORMAT, FIELDS, column_name
from natproof.packets import load_packets

INTERFACE_ID = "eni-0a1b2c3d4e5f60001"
ACCOUNT_ID = "123456789012"
VPC_ID = "vpc-0a1b2c3d4e5f60002"
SUBNET_ID = "subnet-0a1b2c3d4e5f60003"
REGION = "us-east-1"
AZ_ID = "use1-az1"

CUSTOM_FORMAT: tuple[str, ...] = (
    "version", "account-id", "interface-id", "instance-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
    "packets", "bytes", "start", "end", "pkt-srcaddr", "pkt-dstaddr", "tcp-flags", "type", "flow-direction",
    "traffic-path", "action", "log-status",
)
"""The custom format the lab writes: the default fields plus what tells a NAT gateway's two sides apart."""

_PARQUET_TYPES = {"INT_32": pl.Int32(), "INT_64": pl.Int64(), "STRING": pl.String()}


def records_from_captures(private_side: str | os.PathLike[str], public_side: str | os.PathLike[str], *,
                          gateway_private: str, gateway_public: str, vpc: str, interval_s: int = 60,
                          lag_s: int = 0, interface_id: str = INTERFACE_ID) -> pl.DataFrame:
    """The records a flow log of the gateway's interface would hold for the packets of the two captures.

    ``private_side`` is a capture of the gateway's link to the nodes (``vpc``: their subnet), ``public_side`` of its
    link to the internet, where it translates to ``gateway_public``. Returns RECORD_SCHEMA columns (without
    file/line_no), ordered by start, interface direction and tuple.
    """
    net = ipaddress.ip_network(vpc)
    sides = []
    for path, side in ((private_side, "private"), (public_side, "public")):
        _, pk = load_packets(path, columns=["ts_ns", "ip_version", "src", "dst", "proto", "sport", "dport", "ip_len",
                                            "tcp_flags"])
        pk = pk.filter((pl.col("ip_version") == 4) & pl.col("proto").is_in([1, 6, 17])).with_columns(
            pl.col("src").cast(pl.String), pl.col("dst").cast(pl.String))
        noise = [a for a in pk["dst"].unique().to_list() if _noise(a)]
        pk = pk.filter(~pl.col("dst").is_in(noise))
        sides.append(pk.with_columns(pl.lit(side).alias("side")))
    pk = pl.concat(sides)
    in_vpc = {a: ipaddress.ip_address(a) in net for a in set(pk["src"].to_list()) | set(pk["dst"].to_list())}
    src_vpc = pl.col("src").replace_strict(in_vpc, return_dtype=pl.Boolean)
    dst_vpc = pl.col("dst").replace_strict(in_vpc, return_dtype=pl.Boolean)
    priv, pub = pl.lit(gateway_private), pl.lit(gateway_public)
    private = pl.col("side") == "private"
    # Which way each packet crosses the interface, and the addresses AWS records for it.
    kind = (pl.when(private & src_vpc & ~dst_vpc).then(pl.lit("private_egress"))
            .when(private & ~src_vpc & dst_vpc).then(pl.lit("private_reply"))
            .when(~private & (pl.col("src") == pub)).then(pl.lit("public_egress"))
            .when(~private & (pl.col("dst") == pub)).then(pl.lit("public_reply")))
    pk = pk.with_columns(kind.alias("kind")).filter(pl.col("kind").is_not_null())
    pk = pk.with_columns(
        # The interface's own address stands where the packet's address is not one of its own.
        pl.when(pl.col("kind") == "private_reply").then(priv).when(pl.col("kind") == "public_egress").then(priv)
        .otherwise(pl.col("src")).alias("srcaddr"),
        pl.when(pl.col("kind") == "private_egress").then(priv).when(pl.col("kind") == "public_reply").then(priv)
        .otherwise(pl.col("dst")).alias("dstaddr"),
        pl.when(pl.col("src") == pub).then(priv).otherwise(pl.col("src")).alias("pkt_srcaddr"),
        pl.when(pl.col("dst") == pub).then(priv).otherwise(pl.col("dst")).alias("pkt_dstaddr"),
        pl.when(pl.col("proto") == 1).then(0).otherwise(pl.col("sport")).cast(pl.Int32).alias("srcport"),
        pl.when(pl.col("proto") == 1).then(0).otherwise(pl.col("dport")).cast(pl.Int32).alias("dstport"),
        pl.col("proto").cast(pl.Int32).alias("protocol"),
        (pl.col("ts_ns") // (interval_s * 10**9)).alias("window"),
        _aws_tcp_flags().alias("flags"),
    )
    keys = ["window", "kind", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "pkt_srcaddr", "pkt_dstaddr"]
    rec = pk.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("packets"), pl.col("ip_len").cast(pl.Int64).sum().alias("bytes"),
        (pl.col("ts_ns").min() // 10**9 + lag_s).alias("start_s"), (pl.col("ts_ns").max() // 10**9 + lag_s)
        .alias("end_s"), pl.col("flags").bitwise_or().alias("tcp_flags"))
    egress = pl.col("kind").is_in(["private_reply", "public_egress"])
    rec = rec.with_columns(
        pl.lit(ACCOUNT_ID).alias("account_id"), pl.lit(interface_id).alias("interface_id"),
        pl.lit(None, pl.String).alias("instance_id"), pl.lit(VPC_ID).alias("vpc_id"),
        pl.lit(SUBNET_ID).alias("subnet_id"), pl.lit(REGION).alias("region"), pl.lit(AZ_ID).alias("az_id"),
        pl.lit("IPv4").alias("type"), pl.lit("ACCEPT").alias("action"), pl.lit("OK").alias("log_status"),
        pl.when(egress).then(pl.lit("egress")).otherwise(pl.lit("ingress")).alias("flow_direction"),
        pl.when(pl.col("kind") == "public_egress").then(8).when(pl.col("kind") == "private_reply").then(1)
        .otherwise(None).cast(pl.Int32).alias("traffic_path"),
        pl.col("tcp_flags").cast(pl.Int32),
    )
    return rec.sort("start_s", "window", "kind", "srcaddr", "srcport", "dstaddr", "dstport").drop("window", "kind")


def _aws_tcp_flags() -> pl.Expr:
    """A TCP packet's flags as flow logs record them: FIN 1, SYN 2, RST 4, SYN-ACK 18 (ACK alone, PSH: 0)."""
    f = pl.col("tcp_flags").fill_null(0).cast(pl.Int32)
    syn, ack = (f & 2) != 0, (f & 16) != 0
    return ((f & 1) | (f & 4) | pl.when(syn & ack).then(18).when(syn).then(2).otherwise(0)).cast(pl.Int32)


def _noise(address: str) -> bool:
    """Multicast, broadcast and unspecified destinations: link chatter, not traffic a flow log would show."""
    ip = ipaddress.ip_address(address)
    return ip.is_multicast or ip.is_unspecified or address == "255.255.255.255"


def version_of(fields: Sequence[str]) -> int:
    """AWS: the version of a custom format is the highest version among its fields (2 for the default format)."""
    return max(FIELDS[f][0] for f in fields)


def record_lines(records: pl.DataFrame, fields: Sequence[str] = DEFAULT_FORMAT) -> list[str]:
    """Each record as a line of ``fields`` (AWS's names) separated by spaces, ``-`` for missing values."""
    version = version_of(fields)
    cols = []
    for f in fields:
        if f == "version":
            cols.append(pl.lit(str(version)))
        else:
            c = column_name(f)
            cols.append(pl.col(c).cast(pl.String).fill_null("-") if c in records.columns else pl.lit("-"))
    return records.select(pl.concat_str(cols, separator=" ").alias("line"))["line"].to_list()


def write_text(records: pl.DataFrame, path: str | os.PathLike[str], fields: Sequence[str] = DEFAULT_FORMAT, *,
               header: bool = True, compress: bool = False, cloudwatch_timestamps: bool = False) -> None:
    """A text flow log: S3's (a header line naming the fields, gzip when ``compress``) or CloudWatch Logs' (no
    header; with ``cloudwatch_timestamps`` each line led by its event's ISO-8601 timestamp, taken at the record's
    end)."""
    lines = record_lines(records, fields)
    if cloudwatch_timestamps:
        stamps = [dt.datetime.fromtimestamp(e, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                  for e in records["end_s"].to_list()]
        lines = [f"{s} {line}" for s, line in zip(stamps, lines, strict=True)]
    text = ("\n".join(([" ".join(fields)] if header else []) + lines) + "\n").encode()
    with open(path, "wb") as out:
        out.write(gzip.compress(text, mtime=0) if compress else text)


def write_parquet(records: pl.DataFrame, path: str | os.PathLike[str], fields: Sequence[str] = CUSTOM_FORMAT) -> None:
    """S3's Parquet delivery: one column per field, named with underscores and typed as AWS's table says
    (INT_32, INT_64, STRING), gzip-compressed."""
    version = version_of(fields)
    cols = []
    for f in fields:
        name = f.replace("-", "_")
        dtype = _PARQUET_TYPES[FIELDS[f][1]]
        c = column_name(f)
        value = pl.lit(version) if f == "version" else (pl.col(c) if c in records.columns else pl.lit(None))
        cols.append(value.cast(dtype).alias(name))
    records.select(cols).write_parquet(path, compression="gzip")


def busy_destination_records(connections: int, *, gateway_private: str, destination: str, dport: int = 443,
                             start_s: int = 1_800_000_000, ramp_s: int = 300, hold_s: int = 240,
                             interval_s: int = 60, interface_id: str = INTERFACE_ID) -> pl.DataFrame:
    """Public-side records of ``connections`` TCP connections from one gateway address to one destination: the
    k-th opens ``k * ramp_s / connections`` seconds after ``start_s``, sends one packet per second for ``hold_s``
    seconds, and takes gateway port 1024 + k (AWS's pool per destination is the ports of one address). One record
    per connection per ``interval_s`` window, as the aggregation rule makes them; for the port-use measure
    (natproof.flowlogs.ports), whose peak is then every connection open at once when ``hold_s`` > ``ramp_s``."""
    k = pl.int_range(0, connections, dtype=pl.Int64, eager=True)
    conns = pl.DataFrame({"k": k}).with_columns(
        (start_s + pl.col("k") * ramp_s // max(connections, 1)).alias("open_s"))
    conns = conns.with_columns((pl.col("open_s") + hold_s).alias("close_s"))
    # Split each connection at the interval boundaries it crosses: one record per window.
    first = pl.col("open_s") // interval_s
    last = pl.col("close_s") // interval_s
    rec = conns.with_columns(pl.int_ranges(first, last + 1).alias("w")).explode("w").with_columns(
        pl.max_horizontal(pl.col("open_s"), pl.col("w") * interval_s).alias("start_s"),
        pl.min_horizontal(pl.col("close_s"), pl.col("w") * interval_s + interval_s - 1).alias("end_s"))
    return rec.select(
        pl.lit(ACCOUNT_ID).alias("account_id"), pl.lit(interface_id).alias("interface_id"),
        pl.lit(gateway_private).alias("srcaddr"), pl.lit(destination).alias("dstaddr"),
        (1024 + pl.col("k")).cast(pl.Int32).alias("srcport"), pl.lit(dport, pl.Int32).alias("dstport"),
        pl.lit(6, pl.Int32).alias("protocol"), (pl.col("end_s") - pl.col("start_s") + 1).alias("packets"),
        ((pl.col("end_s") - pl.col("start_s") + 1) * 52).alias("bytes"), "start_s", "end_s",
        pl.lit(gateway_private).alias("pkt_srcaddr"), pl.lit(destination).alias("pkt_dstaddr"),
        pl.lit("ACCEPT").alias("action"), pl.lit("OK").alias("log_status"), pl.lit("egress").alias("flow_direction"),
        pl.lit(8, pl.Int32).alias("traffic_path"),
    ).sort("start_s", "srcport")
