"""Charts of a Result's port allocation, mapping concurrency, NAT latency and Service backends (matplotlib Figures)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import polars as pl
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from natproof.report.export import writable_folder, write_bytes
from natproof.report.table import format_address
from natproof.result import Result

CHARTS = ("port_timeline", "port_map", "concurrency", "latency", "service_backends")
"""Chart names, in the order the report shows them; also the file stems save_charts writes."""
FORMATS = ("png", "svg")
FIGSIZE = (8.0, 4.5)
PNG_DPI = 150
MAX_PODS = 10
"""Initiators (pods, or clients outside for inbound connections) with a colour of their own in port_timeline; the
rest share the OTHER_PODS colour."""
OTHER_PODS = "others"
MAX_GROUPS = 4
"""(outside ip, destination, protocol) groups drawn in the concurrency chart, busiest first."""
STEP_LINE_MAX_EVENTS = 400
"""Concurrency curves with more start/end events than this are drawn as a shaded area without an outline."""
RASTERIZE_ABOVE = 2000
"""Scatter plots with more points than this are rasterized inside vector files (small, fast SVGs)."""

STYLE: dict[str, Any] = {
    "svg.hashsalt": "natproof",
    "svg.fonttype": "path",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 9,
    "legend.framealpha": 0.9,
}
"""rcParams every chart is built and saved with: fixed SVG ids (reproducible files) and a plain look."""

_POD_COLOURS = tuple(mpl.colormaps["tab10"].colors)  # type: ignore[attr-defined]
_OTHER_COLOUR = "#9a9a9a"
_KEPT_COLOUR, _REWRITTEN_COLOUR = "#1f77b4", "#d62728"
_EGRESS_COLOUR, _REPLY_COLOUR = "#1f77b4", "#ff7f0e"
_GROUP_KEYS = ["proto", "trans_src", "trans_dst", "trans_dport"]


@contextmanager
def _style() -> Iterator[None]:
    with mpl.rc_context(STYLE):
        yield


def _figure(title: str) -> tuple[Figure, Axes]:
    """A figure with one axes and its title above everything (legends placed outside included)."""
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    fig.suptitle(title, fontsize=STYLE["axes.titlesize"], fontweight="bold")
    return fig, fig.add_subplot()


def chart_title(fig: Figure) -> str:
    """The title a chart builder gave its figure."""
    return fig.get_suptitle()


def _pct(ratio: float) -> str:
    """50%, 100%; 0.4%, 99.7% or <0.1% when whole percent would round a partial share to 0% or 100%."""
    if 0 < ratio < 0.001:
        return "<0.1%"
    if 0.999 < ratio < 1:
        return ">99.9%"
    text = f"{ratio:.0%}"
    return f"{ratio:.1%}" if 0 < ratio < 1 and text in ("0%", "100%") else text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _marker_style(n: int) -> dict[str, Any]:
    """Marker size and transparency that keep n points readable (no solid blob at 10k points)."""
    if n <= 200:
        return {"s": 26, "alpha": 0.9, "linewidths": 0}
    if n <= RASTERIZE_ABOVE:
        return {"s": 10, "alpha": 0.6, "linewidths": 0}
    return {"s": 4, "alpha": 0.35, "linewidths": 0, "rasterized": True}


def _plain_ports(axis: Any) -> None:
    """Ticks at whole port numbers, printed plain (no 1e4 offset or scientific notation)."""
    axis.set_major_locator(ticker.MaxNLocator(nbins="auto", integer=True))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.0f}"))


def _opaque(legend: Legend) -> None:
    """Legend markers at full opacity, whatever transparency the plotted points use."""
    for handle in legend.legend_handles:
        if handle is not None:
            handle.set_alpha(1.0)


# ---------------------------------------------------------------------------------------------- data


def mapped_connections(result: Result) -> pl.DataFrame:
    """Connections whose source address the NAT rewrote, original against translated source whichever side
    started them (``Result.source_rewritten``, the set ``port_preserved_ratio`` counts); not DNAT-only ones."""
    return result.source_rewritten()


def _t0(result: Result) -> int:
    """The first packet of the first connection (inside clock): time zero of every chart."""
    t0 = result.connections["first_ts_ns"].min()
    return int(t0) if t0 is not None else 0  # type: ignore[arg-type]


def port_timeline_data(result: Result) -> pl.DataFrame:
    """One row per rewritten connection: when it started (s since the first connection), its initiator's address
    (``orig_src``: the pod, or the client outside for an inbound one) and the source it was given (``trans_*``).

    ``source_group`` is the initiator's address for the MAX_PODS busiest ones and OTHER_PODS for the rest.
    """
    m = mapped_connections(result)
    counts = m.group_by("orig_src").len().sort(["len", "orig_src"], descending=[True, False])
    own = counts["orig_src"].to_list()
    if len(own) > MAX_PODS:
        own = own[:MAX_PODS]
    return m.select(
        "conn", "proto", "initiator", "orig_src",
        pl.when(pl.col("orig_src").is_in(own)).then(pl.col("orig_src")).otherwise(pl.lit(OTHER_PODS))
        .alias("source_group"),
        ((pl.col("first_ts_ns") - _t0(result)) / 1e9).alias("t_s"),
        "trans_src", "trans_sport",
    )


def port_map_data(result: Result) -> pl.DataFrame:
    """One row per rewritten connection: original and translated source port, and whether the port was kept."""
    return mapped_connections(result).select(
        "conn", "proto", "initiator", "orig_src", "orig_sport", "trans_sport",
        (pl.col("orig_sport") == pl.col("trans_sport")).alias("preserved"),
    )


def concurrency_data(result: Result) -> pl.DataFrame:
    """Live mappings over time for the MAX_GROUPS busiest (proto, translated source ip, translated destination
    ip:port) groups: the tuples a source port is allocated against (the backend's, for a Service).

    A mapping is live from its connection's first to its last packet, both included (a start and an end at
    the same instant overlap). One row per start or end event, in time order, with the count after it;
    ``port_min``/``port_max``/``port_span`` are the outside source ports the group used.
    """
    m = mapped_connections(result)
    t0 = _t0(result)
    events = pl.concat([
        m.select(*_GROUP_KEYS, pl.col("first_ts_ns").alias("ts_ns"), pl.lit(1, pl.Int32).alias("delta")),
        m.select(*_GROUP_KEYS, pl.col("last_ts_ns").alias("ts_ns"), pl.lit(-1, pl.Int32).alias("delta")),
    ]).sort([*_GROUP_KEYS, "ts_ns", "delta"], descending=[False] * 5 + [True])
    events = events.with_row_index("seq").with_columns(
        pl.col("delta").cum_sum().over(_GROUP_KEYS).alias("concurrent"))
    groups = m.group_by(_GROUP_KEYS).agg(
        pl.len().alias("connections"),
        pl.col("trans_sport").min().alias("port_min"),
        pl.col("trans_sport").max().alias("port_max"),
    ).join(events.group_by(_GROUP_KEYS).agg(pl.col("concurrent").max().alias("peak")), on=_GROUP_KEYS)
    groups = groups.sort(["peak", "connections", *_GROUP_KEYS], descending=[True, True, False, False, False, False])
    groups = groups.head(MAX_GROUPS).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("rank"),
        (pl.col("port_max").cast(pl.Int64) - pl.col("port_min").cast(pl.Int64) + 1).alias("port_span"),
    )
    labels = [_group_label(*row) for row in groups.select(_GROUP_KEYS).iter_rows()]
    groups = groups.with_columns(pl.Series("group", labels, dtype=pl.String))
    return events.join(groups, on=_GROUP_KEYS, how="inner").sort("rank", "seq").select(
        "rank", "group", *_GROUP_KEYS,
        ((pl.col("ts_ns") - t0) / 1e9).alias("t_s"), "ts_ns", "delta", "concurrent",
        "connections", "peak", "port_min", "port_max", "port_span",
    )


def _group_label(proto: str, trans_src: str, dst: str, dport: int | None) -> str:
    target = format_address(dst, None if proto == "icmp" else dport)
    return f"{proto} {format_address(trans_src, None)} → {target}"


def latency_data(result: Result) -> pl.DataFrame:
    """NAT traversal latency of every packet matched by exact identity, per direction, in microseconds.

    egress: (dt_ns - offset_ns) / 1000; reply: (offset_ns - dt_ns) / 1000, with offset_ns the clock offset.
    ICMP errors cross the node outside-to-inside and count as reply, as in the connections' latency columns.
    A chart of every matched packet: the one reader that collects a row per packet of the whole capture, built
    lazily (Result.packets) so only these five columns of the exactly matched packets are ever collected. No rows
    when the offset was estimated from one direction's packets only (Result.clock_offset_one_way): the NAT's latency
    is in it, and what is left of each packet's is its error.
    """
    offset_ns = int(round(result.clock_offset_s * 1e9))
    pk = result.packets("inside")
    if "method" not in pk.collect_schema().names() or result.clock_offset_one_way:
        return pl.DataFrame(schema={"conn": pl.UInt32, "frame_no": pl.UInt32, "out_frame": pl.UInt32,
                                    "direction": pl.String, "latency_us": pl.Float64})
    ids = result.connections.lazy().select("conn", pl.col("inside_conn_id").alias("conn_id"))
    exact = pk.filter(pl.col("method") == "exact").select("frame_no", "conn_id", "out_frame", "is_egress", "dt_ns")
    return exact.join(ids, on="conn_id", how="left").sort("frame_no").select(
        "conn", "frame_no", "out_frame",
        pl.when(pl.col("is_egress")).then(pl.lit("egress")).otherwise(pl.lit("reply")).alias("direction"),
        (pl.when(pl.col("is_egress")).then(pl.col("dt_ns") - offset_ns).otherwise(offset_ns - pl.col("dt_ns"))
         / 1000.0).alias("latency_us"),
    ).collect()


def service_backends_data(result: Result) -> pl.DataFrame:
    """One row per (Service, backend) from ``Result.services()``: the backend chosen and for how many of the
    Service's connections. ``service`` labels the Service (type, VIP:port, proto), ``backend`` the backend
    (``backend not seen`` when no leg after the DNAT was captured), ``share`` its part of the Service's
    connections; rows in Service order, most used backend first."""
    rows = []
    for i, svc in enumerate(result.services()):
        label = f"{svc['type']} {format_address(svc['address'], svc['port'])}/{svc['proto']}"
        for b in svc["backends"]:
            rows.append({
                "service_rank": i, "service": label, "service_type": svc["type"], "service_ip": svc["address"],
                "service_port": svc["port"], "proto": svc["proto"], "service_connections": svc["connections"],
                "backend": ("backend not seen" if b["address"] is None else format_address(b["address"], b["port"])),
                "backend_ip": b["address"], "backend_port": b["port"], "connections": b["connections"],
                "share": b["connections"] / svc["connections"], "backends": len(svc["backends"]),
            })
    return pl.DataFrame(rows, schema={
        "service_rank": pl.UInt32, "service": pl.String, "service_type": pl.String, "service_ip": pl.String,
        "service_port": pl.UInt16, "proto": pl.String, "service_connections": pl.UInt32, "backend": pl.String,
        "backend_ip": pl.String, "backend_port": pl.UInt16, "connections": pl.UInt32, "share": pl.Float64,
        "backends": pl.UInt32})


_DATA: dict[str, Callable[[Result], pl.DataFrame]] = {
    "port_timeline": port_timeline_data,
    "port_map": port_map_data,
    "concurrency": concurrency_data,
    "latency": latency_data,
    "service_backends": service_backends_data,
}


def chart_data(result: Result) -> dict[str, pl.DataFrame]:
    """The exact series each chart is drawn from, by chart name (an empty frame: no chart)."""
    return {name: _DATA[name](result) for name in CHARTS}


# -------------------------------------------------------------------------------------------- charts


def port_timeline(result: Result, data: pl.DataFrame | None = None) -> Figure | None:
    """Translated source port of each rewritten connection against its start time, one colour per initiator."""
    df = port_timeline_data(result) if data is None else data
    if df.is_empty():
        return None
    counts = df.group_by("source_group").agg(pl.len(), pl.col("orig_src").n_unique().alias("pods"))
    order = [g for g in counts.sort(["len", "source_group"], descending=[True, False])["source_group"].to_list()
             if g != OTHER_PODS]
    if OTHER_PODS in counts["source_group"].to_list():
        order.append(OTHER_PODS)
    info = {g: (n, p) for g, n, p in counts.iter_rows()}
    with _style():
        fig, ax = _figure(f"Source ports handed out by the NAT ({df.height} connections)")
        style = _marker_style(df.height)
        for i, group in enumerate(order):
            sel = df.filter(pl.col("source_group") == group)
            n, pods = info[group]
            colour = _OTHER_COLOUR if group == OTHER_PODS else _POD_COLOURS[i % len(_POD_COLOURS)]
            label = f"{OTHER_PODS} ({pods}): {n}" if group == OTHER_PODS else f"{group}: {n}"
            ax.scatter(sel["t_s"].to_numpy(), sel["trans_sport"].to_numpy(), color=colour, label=label, **style)
        ax.set_xlabel("time since first connection (s, inside clock)")
        ax.set_ylabel("translated source port")
        lo, hi = int(df["trans_sport"].min()), int(df["trans_sport"].max())  # type: ignore[arg-type]
        if hi - lo < 20:  # a handful of ports: whole-number ticks just around them
            pad = max(1, (hi - lo) // 4)
            ax.set_ylim(lo - pad, hi + pad)
        _plain_ports(ax.yaxis)
        _opaque(fig.legend(title="initiator (original source address: a pod, or the client of an inbound "
                                 "connection): connections", loc="outside lower center",
                           ncols=min(len(order), 4), frameon=False))
        return fig


def port_map(result: Result, data: pl.DataFrame | None = None) -> Figure | None:
    """Original source port against the translated one; points on the diagonal kept their port."""
    df = port_map_data(result) if data is None else data
    if df.is_empty():
        return None
    kept = df.filter(pl.col("preserved"))
    ratio = kept.height / df.height  # over the same set as Result.port_preserved_ratio
    moved = df.filter(~pl.col("preserved"))
    ports = pl.concat([df["orig_sport"], df["trans_sport"]]).cast(pl.Int64)
    lo, hi = int(ports.min()), int(ports.max())  # type: ignore[arg-type]
    pad = max((hi - lo) * 0.05, 500)
    lo_lim, hi_lim = max(lo - pad, 0), hi + pad  # above 65535 too: a dot near the top stays whole
    with _style():
        fig, ax = _figure(f"Source port, original vs translated: {_pct(ratio)} kept "
                          f"({df.height} connections through SNAT)")
        ax.plot([lo_lim, hi_lim], [lo_lim, hi_lim], color="#555555", lw=1, ls="--", zorder=1,
                label="translated port = original port (kept)")
        # Each set is styled for its own size: a few rewritten ports among thousands kept stay visible.
        if kept.height:
            ax.scatter(kept["orig_sport"].to_numpy(), kept["trans_sport"].to_numpy(), color=_KEPT_COLOUR,
                       zorder=2, label=f"port kept: {_count(kept.height, 'connection')}",
                       **_marker_style(kept.height))
        if moved.height:
            ax.scatter(moved["orig_sport"].to_numpy(), moved["trans_sport"].to_numpy(), color=_REWRITTEN_COLOUR,
                       zorder=3, label=f"port rewritten: {_count(moved.height, 'connection')}",
                       **_marker_style(moved.height))
        ax.set_xlim(lo_lim, hi_lim)
        ax.set_ylim(lo_lim, hi_lim)
        ax.set_xlabel("original source port (as the initiator sent it)")
        ax.set_ylabel("translated source port (after SNAT)")
        _plain_ports(ax.xaxis)
        _plain_ports(ax.yaxis)
        _opaque(fig.legend(loc="outside lower center", ncols=3, frameon=False))
        return fig


def concurrency(result: Result, data: pl.DataFrame | None = None) -> Figure | None:
    """Mappings live at once per (proto, outside ip, destination) against the size of its port range in use."""
    df = concurrency_data(result) if data is None else data
    if df.is_empty():
        return None
    groups = df.unique("rank", keep="first", maintain_order=True).sort("rank")
    peak_max = int(groups["peak"].max())  # type: ignore[arg-type]
    span_max = int(groups["port_span"].max())  # type: ignore[arg-type]
    log = span_max > 20 * max(peak_max, 1)
    with _style():
        fig, ax = _figure("Concurrent NAT mappings vs size of the port range in use")
        for g in groups.iter_rows(named=True):
            sel = df.filter(pl.col("rank") == g["rank"])
            colour = _POD_COLOURS[g["rank"] % len(_POD_COLOURS)]
            t, live = sel["t_s"].to_numpy(), sel["concurrent"].to_numpy()
            label = f"{g['group']} ({_count(g['connections'], 'connection')}): peak {g['peak']} live"
            if sel.height <= STEP_LINE_MAX_EVENTS:
                ax.fill_between(t, live, step="post", color=colour, alpha=0.2, lw=0)
                ax.step(t, live, where="post", color=colour, lw=1.6, label=label)
            else:  # the count flips too often for a line to stay readable: the shaded area alone
                ax.fill_between(t, live, step="post", color=colour, alpha=0.5, lw=0, label=label)
            ax.axhline(g["port_span"], color=colour, ls="--", lw=1.2,
                       label=f"ports {g['port_min']}–{g['port_max']} in use: {g['port_span']} ports, "
                             f"peak fills {_pct(g['peak'] / g['port_span'])}")
        ax.set_xlabel("time since first connection (s, inside clock)")
        if log:
            ax.set_yscale("symlog", linthresh=1)
            ax.set_ylim(0, span_max * 2)
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_ylabel("mappings live at once / ports (log scale)")
        else:
            ax.set_ylim(0, max(span_max, peak_max) * 1.1)
            ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            ax.set_ylabel("mappings live at once / ports")
        fig.legend(title="solid or shaded: mappings live at once; dashed: size of the port range in use",
                   loc="outside lower center", frameon=False)
        return fig


def latency(result: Result, data: pl.DataFrame | None = None) -> Figure | None:
    """Histogram of the time packets took to cross the node, egress and reply, with their medians."""
    df = latency_data(result) if data is None else data
    df = df.filter(pl.col("latency_us").is_not_null())
    if df.is_empty():
        return None
    values = df["latency_us"].to_numpy()
    lo, hi = float(values.min()), float(values.max())
    log = lo > 0 and hi / lo > 20
    nbins = int(min(60, max(10, np.sqrt(len(values)))))
    if log:
        bins = np.geomspace(lo, hi, nbins + 1)
    elif hi > lo:
        bins = np.linspace(lo, hi, nbins + 1)
    else:
        bins = np.linspace(lo - 1, hi + 1, 11)
    with _style():
        fig, ax = _figure("NAT traversal latency (time a packet takes to cross the node)")
        for direction, colour, name in (("egress", _EGRESS_COLOUR, "egress, pod → outside"),
                                        ("reply", _REPLY_COLOUR, "reply, outside → pod")):
            v = df.filter(pl.col("direction") == direction)["latency_us"].to_numpy()
            if not len(v):
                continue
            med = float(np.median(v))
            tail = f"p99 {np.percentile(v, 99):.1f}" if len(v) >= 100 else f"max {v.max():.1f}"
            ax.hist(v, bins=bins, histtype="stepfilled", color=colour, alpha=0.3)
            ax.hist(v, bins=bins, histtype="step", color=colour, lw=1.4,
                    label=f"{name}: {_count(len(v), 'packet')}, median {med:.1f} µs, {tail} µs")
            ax.axvline(med, color=colour, ls="--", lw=1)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            few_decades = hi / lo <= 100
            ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}") if few_decades
                                         else ticker.NullFormatter())
        ax.set_xlabel("latency (µs" + (", log scale)" if log else ")"))
        ax.set_ylabel("packets")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        offset = f"clock offset {result.clock_offset_s:+.6f} s applied; dashed lines: medians"
        fig.legend(title=offset, loc="outside lower center", frameon=False)
        return fig


def service_backends(result: Result, data: pl.DataFrame | None = None) -> Figure | None:
    """Connections per backend for each Service: kube-proxy picks a backend at random per connection, so the
    spread is the point (an even share per backend is marked)."""
    df = service_backends_data(result) if data is None else data
    if df.is_empty():
        return None
    services = df.unique("service_rank", keep="first", maintain_order=True).sort("service_rank")
    n_bars = df.height
    height = min(max(FIGSIZE[1], 1.6 + 0.42 * n_bars + 0.25 * services.height), 40.0)
    with _style():
        fig = Figure(figsize=(FIGSIZE[0], height), layout="constrained")
        total = int(services["service_connections"].sum())
        fig.suptitle(f"Backend chosen per Service ({_count(services.height, 'Service')}, "
                     f"{_count(total, 'connection')})", fontsize=STYLE["axes.titlesize"], fontweight="bold")
        ax = fig.add_subplot()
        y, labels, ticks = 0.0, [], []
        xmax = int(df["connections"].max())  # type: ignore[arg-type]
        for svc in services.iter_rows(named=True):
            sel = df.filter(pl.col("service_rank") == svc["service_rank"])
            colour = _POD_COLOURS[svc["service_rank"] % len(_POD_COLOURS)]
            ys = []
            for b in sel.iter_rows(named=True):
                unseen = b["backend_ip"] is None
                ax.barh(y, b["connections"], height=0.7, color=_OTHER_COLOUR if unseen else colour,
                        hatch="//" if unseen else None, edgecolor="white" if not unseen else "#555555")
                ax.text(b["connections"], y, f" {b['connections']} ({_pct(b['share'])})", va="center",
                        fontsize=9)
                labels.append(b["backend"])
                ticks.append(y)
                ys.append(y)
                y += 1
            if svc["backends"] > 1:  # an even split among the backends seen, for the eye
                even = svc["service_connections"] / svc["backends"]
                ax.vlines(even, min(ys) - 0.45, max(ys) + 0.45, color="#333333", ls="--", lw=1)
            ax.text(0, min(ys) - 0.55, f"{svc['service']}: {_count(svc['service_connections'], 'connection')}",
                    fontsize=9.5, fontweight="bold", va="bottom", ha="left", color=colour)
            y += 0.9
        ax.set_yticks(ticks, labels)
        ax.set_ylim(y - 0.6, -1.0)
        ax.set_xlim(0, xmax * 1.25 + 0.5)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel("connections")
        ax.set_ylabel("backend (address:port after DNAT)")
        ax.grid(axis="y", visible=False)
        if int(services["backends"].max()) > 1:  # type: ignore[arg-type]
            fig.legend(handles=[Line2D([], [], color="#333333", ls="--", lw=1,
                                       label="even share among the backends seen (kube-proxy picks at random)")],
                       loc="outside lower center", frameon=False)
        else:
            fig.legend(handles=[Patch(facecolor="none", edgecolor="none",
                                      label="every Service had one backend in these captures: no spread to show")],
                       loc="outside lower center", frameon=False, handlelength=0, handletextpad=0)
        return fig


_BUILDERS: dict[str, Callable[[Result, pl.DataFrame | None], Figure | None]] = {
    "port_timeline": port_timeline,
    "port_map": port_map,
    "concurrency": concurrency,
    "latency": latency,
    "service_backends": service_backends,
}


def build_charts(result: Result) -> dict[str, Figure]:
    """Every chart there is data for, by name, in CHARTS order."""
    data = chart_data(result)
    figs = {name: _BUILDERS[name](result, data[name]) for name in CHARTS}
    return {name: fig for name, fig in figs.items() if fig is not None}


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """A figure as PNG or SVG bytes, reproducibly: fixed SVG ids and no date in the file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown chart format {fmt!r} (expected one of {', '.join(FORMATS)})")
    buf = io.BytesIO()
    title = chart_title(fig)
    with _style():
        if fmt == "svg":
            fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "natproof", "Title": title})
        else:
            fig.savefig(buf, format="png", dpi=PNG_DPI, metadata={"Software": "natproof", "Title": title})
    return buf.getvalue()


def save_charts(result: Result, outdir: str | os.PathLike[str],
                formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``<name>.<format>`` for every chart there is data for (atomically); returns the paths written."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown chart format {fmt!r} (expected one of {', '.join(FORMATS)})")
    out = writable_folder(outdir, "charts folder")
    written = []
    for name, fig in build_charts(result).items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            write_bytes(path, figure_bytes(fig, fmt))
            written.append(path)
    return written
