"""NAT gateway port use from flow logs: ports live at once per (gateway address, destination), against AWS's limit.

AWS, "NAT gateway basics" (https://docs.aws.amazon.com/vpc/latest/userguide/nat-gateway-basics.html): "Each IPv4
address can support up to 55,000 simultaneous connections to each unique destination. A unique destination is
identified by a unique combination of destination IP address, the destination port, and protocol (TCP/UDP/ICMP)."
When a new connection finds no free port the gateway drops it and counts it in the CloudWatch metric
``ErrorPortAllocation`` ("Monitor NAT gateways with CloudWatch",
https://docs.aws.amazon.com/vpc/latest/userguide/vpc-nat-gateway-cloudwatch.html: "the number of times the NAT
gateway could not allocate a source port"). A connection idle for 350 seconds times out (same page as the limit).

From the public-side records of the gateway's interface (srcaddr the gateway, its own port in srcport), each
(gateway address, gateway port, destination, protocol) is one port in use, live from its first record's start to
its last record's end; records of one port closer than the idle timeout are one connection. That is a lower bound
of what the gateway holds (it keeps a port until the connection closes, or 350 s of silence), so a peak at the
limit in the records means the limit was reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from natproof.diagnose import Finding
from natproof.flowlogs.gateway import IDLE_TIMEOUT_S as IDLE_TIMEOUT_S  # re-exported: the port-use rule
from natproof.flowlogs.gateway import NatGateway, gateway_sides
from natproof.flowlogs.records import PROTOCOLS, FlowLog
from natproof.report.table import format_address

CONNECTIONS_PER_DESTINATION = 55_000
"""AWS: simultaneous connections each NAT gateway IPv4 address supports to one unique destination."""
NEAR_LIMIT = 0.9
"""A peak at this share of the limit or more is reported as a warning before it fails."""
MAX_GROUPS = 4
"""Destinations drawn in the chart, busiest first."""

GROUP_KEYS = ("gateway_address", "proto", "dst", "dport")


def infer_gateways(flowlog: FlowLog) -> list[NatGateway]:
    """Gateways whose interface the records show as intermediate: ``dstaddr`` the interface, ``pkt-dstaddr``
    elsewhere (the private side of a NAT gateway, "Traffic through a NAT gateway" in AWS's examples). Needs the
    pkt-* fields; their public addresses stay unknown (None)."""
    if not flowlog.has("pkt_dstaddr"):
        return []
    f = flowlog.flows().filter(pl.col("pkt_dstaddr").is_not_null() & (pl.col("pkt_dstaddr") != pl.col("dstaddr"))
                               & (pl.col("pkt_srcaddr") == pl.col("srcaddr")))
    return [NatGateway(a) for a in f["dstaddr"].unique().sort().to_list()]


def why_no_gateway(flowlog: FlowLog) -> str:
    """Why infer_gateways finds no gateway in ``flowlog``, as a clause for a message that asks for the addresses:
    ``none can be found in the flow log: ...``."""
    if not flowlog.has("pkt_dstaddr"):
        return ("none can be found in the flow log: its format has no pkt-dstaddr (the default format's case), which "
                "is how a NAT gateway's private side shows")
    return ("none found in the flow log: no record's pkt-dstaddr differs from its dstaddr, as on a NAT gateway's "
            "interface")


@dataclass(frozen=True)
class PortUsage:
    """Ports a NAT gateway had in use per destination over time, from its flow log."""

    groups: pl.DataFrame
    """One row per (gateway_address, proto, dst, dport), busiest first: gateway_public, interface_id, ports (distinct
    gateway ports seen), connections (port uses, split at IDLE_TIMEOUT_S of silence), peak (ports live at once),
    peak_start_s (Unix seconds the peak began), limit, share (peak / limit), label. peak, peak_start_s and share are
    null for a destination none of whose uses has a time (records without start and end: see ``notes``)."""
    series: pl.DataFrame
    """The MAX_GROUPS busiest groups over time: rank, label, GROUP_KEYS, ts_s (Unix seconds), t_s (seconds since the
    first public-side record), delta (+1 a port taken, -1 freed), concurrent (live after the event)."""
    limit: int = CONNECTIONS_PER_DESTINATION
    t0_s: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def findings(self) -> list[Finding]:
        """``nat_gateway_port_limit`` (error) for each destination whose peak reached the limit, a warning at
        NEAR_LIMIT of it; nothing otherwise."""
        out = []
        for g in self.groups.filter(pl.col("share") >= NEAR_LIMIT).iter_rows(named=True):
            reached = g["peak"] >= self.limit
            public = f" ({g['gateway_public']})" if g["gateway_public"] else ""
            where = (f"{g['proto']} {format_address(g['gateway_address'], None)}{public} -> "
                     f"{format_address(g['dst'], g['dport'])}")
            out.append(Finding(
                kind="nat_gateway_port_limit", severity="error" if reached else "warning",
                title=("NAT gateway port limit reached for one destination" if reached
                       else "NAT gateway near its port limit for one destination"),
                summary=(f"{where}: {g['peak']:,} ports in use at once (from {g['connections']:,} connections in the "
                         f"flow log), against AWS's {self.limit:,} simultaneous connections per gateway address to "
                         "one destination (address, port, protocol)"
                         + (": new connections there fail and count in ErrorPortAllocation." if reached else ".")),
                fix=("Spread the load: associate secondary IP addresses with the NAT gateway (aws ec2 "
                     "associate-nat-gateway-address; each adds 55,000 per destination), reuse connections (HTTP "
                     "keep-alive, pooling), or reach the destination another way (a VPC endpoint for AWS services); "
                     "watch ErrorPortAllocation and ActiveConnectionCount in CloudWatch."),
                evidence=(f"peak of {g['peak']:,} live at {g['peak_start_s']} (Unix seconds), gateway ports "
                          f"{g['ports']:,} distinct, interface {g['interface_id']}",),
                data={k: g[k] for k in ("gateway_address", "gateway_public", "proto", "dst", "dport", "peak",
                                        "peak_start_s", "ports", "connections", "limit", "share")},
            ))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "groups": self.groups.drop("label").to_dicts(),
                "findings": [f.to_dict() for f in self.findings()], "notes": list(self.notes)}


def port_usage(flowlog: FlowLog, gateways: Sequence[NatGateway] = (), *, hold_s: int = 0) -> PortUsage:
    """Ports in use per (gateway address, destination) from the public-side records of the gateways' interfaces.

    ``gateways`` defaults to those ``infer_gateways`` finds. ``hold_s`` extends each connection past its last record
    (e.g. IDLE_TIMEOUT_S for an upper estimate of what the gateway held); 0 counts packets' own span.
    """
    notes = []
    if not gateways:
        gateways = infer_gateways(flowlog)
        if gateways:
            notes.append("gateway addresses inferred from pkt-dstaddr: " + ", ".join(g.private for g in gateways))
    empty = PortUsage(pl.DataFrame(schema=_GROUP_SCHEMA), pl.DataFrame(schema=_SERIES_SCHEMA), notes=tuple(notes))
    if not gateways:
        return PortUsage(empty.groups, empty.series, notes=(f"no NAT gateway given, and {why_no_gateway(flowlog)} "
                                                            "(pass --nat-gateway PRIVATE=PUBLIC)",))
    # One connection per port use: records of one 5-tuple closer than the idle timeout are one connection.
    uses = gateway_sides(flowlog, gateways).public
    if uses.is_empty():
        return PortUsage(empty.groups, empty.series, notes=(*notes, "no public-side record on the gateways' "
                                                                    "interfaces"))
    conns = uses.select(
        "interface_id", "gateway_public", "gateway_address",
        pl.col("protocol").replace_strict(PROTOCOLS, default=None, return_dtype=pl.String)
        .fill_null(pl.col("protocol").cast(pl.String)).alias("proto"),
        "dst", "dport", "sport", "start_s", (pl.col("end_s") + hold_s).alias("end_s"))
    # A use without start or end (a format without them, or '-') holds a port at no known time: counted among the
    # ports and connections, never in how many were live at once.
    dated = conns.filter(pl.col("start_s").is_not_null())
    if undated := conns.height - dated.height:
        notes.append(f"gateway port uses whose records have no start or end time: {undated:,} of {conns.height:,}; "
                     + ("ports live at once are counted from the others" if dated.height else
                        "ports are counted per destination, not how many were live at once"))
    events = pl.concat([
        dated.select(*GROUP_KEYS, pl.col("start_s").alias("ts_s"), pl.lit(1, pl.Int32).alias("delta")),
        # a port is live through its end second; it is free the second after
        dated.select(*GROUP_KEYS, (pl.col("end_s") + 1).alias("ts_s"), pl.lit(-1, pl.Int32).alias("delta")),
    ]).sort(*GROUP_KEYS, "ts_s", "delta")
    events = events.with_columns(pl.col("delta").cum_sum().over(GROUP_KEYS).alias("concurrent"))
    peaks = (events.sort("concurrent", "ts_s", descending=[True, False]).group_by(GROUP_KEYS, maintain_order=True)
             .agg(pl.col("concurrent").first().alias("peak"), pl.col("ts_s").first().alias("peak_start_s")))
    limit = CONNECTIONS_PER_DESTINATION
    groups = (conns.group_by(GROUP_KEYS).agg(pl.col("gateway_public").first(), pl.col("interface_id").first(),
                                             pl.col("sport").n_unique().cast(pl.UInt32).alias("ports"),
                                             pl.len().cast(pl.UInt32).alias("connections"))
              .join(peaks, on=GROUP_KEYS, how="left")
              .with_columns(pl.col("peak").cast(pl.UInt32), pl.lit(limit, pl.UInt32).alias("limit"),
                            (pl.col("peak") / limit).alias("share"))
              .sort(["peak", "connections", *GROUP_KEYS], descending=[True, True, False, False, False, False],
                    nulls_last=True))
    groups = groups.with_columns(pl.struct(*GROUP_KEYS, "gateway_public").map_elements(
        lambda g: (f"{g['proto']} {g['gateway_address']}" + (f" ({g['gateway_public']})" if g["gateway_public"] else "")
                   + f" → {format_address(g['dst'], g['dport'])}"),
        return_dtype=pl.String).alias("label")).select(_GROUP_SCHEMA.keys())
    first = dated["start_s"].min()
    t0 = None if first is None else int(first)  # type: ignore[arg-type]
    top = (groups.filter(pl.col("peak").is_not_null()).head(MAX_GROUPS).with_row_index("rank")
           .select("rank", "label", *GROUP_KEYS))
    series = (events.join(top, on=list(GROUP_KEYS)).with_columns((pl.col("ts_s") - (t0 or 0)).alias("t_s"))
              .sort("rank", "ts_s").select(_SERIES_SCHEMA.keys()))
    return PortUsage(groups.cast(_GROUP_SCHEMA), series.cast(_SERIES_SCHEMA), limit, t0, tuple(notes))  # type: ignore[arg-type]


_GROUP_SCHEMA: dict[str, pl.DataType] = {
    "gateway_address": pl.String(), "gateway_public": pl.String(), "interface_id": pl.String(), "proto": pl.String(),
    "dst": pl.String(), "dport": pl.Int32(), "ports": pl.UInt32(), "connections": pl.UInt32(), "peak": pl.UInt32(),
    "peak_start_s": pl.Int64(), "limit": pl.UInt32(), "share": pl.Float64(), "label": pl.String(),
}
_SERIES_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.UInt32(), "label": pl.String(), "gateway_address": pl.String(), "proto": pl.String(),
    "dst": pl.String(), "dport": pl.Int32(), "ts_s": pl.Int64(), "t_s": pl.Int64(), "delta": pl.Int32(),
    "concurrent": pl.Int32(),
}


def port_usage_chart(usage: PortUsage):  # type: ignore[no-untyped-def]
    """A matplotlib Figure (never pyplot): ports live at once for the busiest destinations against the limit (a
    symlog axis when the peak is far below it); None when there is nothing to draw."""
    df = usage.series
    if df.is_empty():
        return None  # before matplotlib is loaded (about a second): nothing to draw needs none of it
    from matplotlib import ticker
    from matplotlib.figure import Figure

    from natproof.report.charts import FIGSIZE, STYLE, _pct, _style

    groups = usage.groups.filter(pl.col("peak").is_not_null()).head(MAX_GROUPS)  # the series' groups, by rank
    peak = int(groups["peak"].max())  # type: ignore[arg-type]
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    with _style():
        fig = Figure(figsize=FIGSIZE, layout="constrained")
        fig.suptitle(f"NAT gateway ports in use per destination vs AWS's limit of {usage.limit:,}",
                     fontsize=STYLE["axes.titlesize"], fontweight="bold")
        ax = fig.add_subplot()
        for rank, g in enumerate(groups.iter_rows(named=True)):
            sel = df.filter(pl.col("rank") == rank)
            t, live = sel["t_s"].to_numpy(), sel["concurrent"].to_numpy()
            colour = colours[rank % len(colours)]
            ax.fill_between(t, live, step="post", color=colour, alpha=0.2, lw=0)
            ax.step(t, live, where="post", color=colour, lw=1.6,
                    label=f"{g['label']}: peak {g['peak']:,} ({_pct(g['share'])} of the limit)")
        ax.axhline(usage.limit, color="#d62728", ls="--", lw=1.2,
                   label=f"{usage.limit:,} simultaneous connections per gateway address and destination (AWS)")
        if peak * 20 < usage.limit:
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylabel("ports live at once (log scale)")
            ax.set_ylim(0, usage.limit * 1.5)
        else:
            ax.set_ylabel("ports live at once")
            ax.set_ylim(0, max(peak, usage.limit) * 1.15)
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("time since the first public-side record (s, AWS clock)")
        fig.legend(loc="outside lower center", frameon=False, fontsize=8)
        return fig
