"""Tests of natproof/report/charts.py: chart series against facts from the connections, and reproducible files."""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from matplotlib.figure import Figure

import natproof
from natproof.report.charts import (
    CHARTS,
    MAX_GROUPS,
    MAX_PODS,
    OTHER_PODS,
    build_charts,
    chart_data,
    chart_title,
    concurrency,
    figure_bytes,
    latency,
    port_map,
    port_timeline,
    save_charts,
    service_backends,
)
from natproof.result import CONNECTION_SCHEMA, CaptureSummary, Result
from natproof.testing.scenario import SCENARIOS, write_scenario

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
CASES = Path(__file__).resolve().parent / "cases"
NO_SERVICE_CHARTS = [c for c in CHARTS if c != "service_backends"]
"""The charts of captures without a Service (no ClusterIP or NodePort connection)."""


def capture(name: str, side: str) -> Path:
    """captures/<name>/<side>.pcap, or its gzipped form (large captures are stored compressed)."""
    plain = CAPTURES / name / f"{side}.pcap"
    return plain if plain.exists() else plain.with_name(f"{side}.pcap.gz")


def load(name: str) -> Result:
    return natproof.correlate(capture(name, "inside"), capture(name, "outside"))


@pytest.fixture(scope="module")
def collision() -> Result:
    return load("port-collision")


@pytest.fixture(scope="module")
def many() -> Result:
    return load("many-connections")


@pytest.fixture(scope="module")
def random_fully(tmp_path_factory: pytest.TempPathFactory) -> Result:
    sc = SCENARIOS["random_fully"]
    out = tmp_path_factory.mktemp("random_fully")
    write_scenario(sc, out)
    return natproof.correlate(out / "inside.pcap", out / "outside.pcap", pod_cidr=sc.pod_cidr)


@pytest.fixture(params=["collision", "many", "random_fully"])
def result(request: pytest.FixtureRequest) -> Result:
    return request.getfixturevalue(request.param)


def rewritten(result: Result) -> list[dict]:
    """Connections whose source address the NAT changed (original against translated tuple, whichever side
    started them), straight from the rows (no polars expressions)."""
    return [r for r in result.connections.to_dicts()
            if r["trans_src"] is not None and r["trans_src"] != r["orig_src"]]


def synthetic_result(n: int, pods: int = 20, seed: int = 0) -> Result:
    """A Result-shaped object with n rewritten connections over 60 s (random ports) and two matched packets each."""
    rng = random.Random(seed)
    base = 1_700_000_000 * 10**9
    rows = []
    for i in range(n):
        first = base + rng.randrange(60 * 10**9)
        sport = rng.randrange(32768, 61000)
        kept = rng.random() < 0.3
        dst = ("198.51.100.10", 443) if i % 3 else ("192.0.2.20", 80)
        row = dict.fromkeys(CONNECTION_SCHEMA)
        row.update(
            proto="tcp", inside_src=f"10.244.{i % pods // 250}.{i % pods % 250 + 2}", inside_sport=sport,
            inside_dst=dst[0], inside_dport=dst[1], outside_src="203.0.113.2",
            outside_sport=sport if kept else rng.randrange(1024, 65536), outside_dst=dst[0], outside_dport=dst[1],
            verdict="translated", first_ts_ns=first, last_ts_ns=first + int(rng.expovariate(2.0) * 1e9),
            egress_inside=1, egress_outside=1, reply_outside=1, reply_inside=1, icmp_errors_outside=0,
            icmp_errors_inside=0, matched_egress=1, matched_reply=1, outside_tuples=1,
            evidence_egress_inside_frame=2 * i + 1, evidence_egress_outside_frame=2 * i + 1,
            evidence_reply_inside_frame=2 * i + 2, evidence_reply_outside_frame=2 * i + 2,
            inside_conn_id=i, outside_conn_id=i, initiator="inside",
            fate_crossed=4, fate_leaked=0, fate_inside_only=0, fate_outside_only=0, fate_node_generated=0,
        )
        for f in ("src", "sport", "dst", "dport"):  # egress: original = inside, translated = outside
            row[f"orig_{f}"], row[f"trans_{f}"] = row[f"inside_{f}"], row[f"outside_{f}"]
        row["rewrites"] = ["src"] if kept else ["src", "sport"]
        rows.append(row)
    rows.sort(key=lambda r: r["first_ts_ns"])
    for i, row in enumerate(rows):
        row["conn"] = i
    conns = pl.DataFrame(rows, schema=CONNECTION_SCHEMA, orient="row")
    lat = [rng.lognormvariate(2.0, 0.5) for _ in range(2 * n)]
    packets = pl.DataFrame({
        "frame_no": list(range(1, 2 * n + 1)),
        "conn_id": [i // 2 for i in range(2 * n)],
        "is_egress": [i % 2 == 0 for i in range(2 * n)],
        "is_icmp_error": [False] * (2 * n),
        "out_frame": list(range(1, 2 * n + 1)),
        "dt_ns": [int(x * 1000) if i % 2 == 0 else -int(x * 1000) for i, x in enumerate(lat)],
        "method": ["exact"] * (2 * n),
    }, schema_overrides={"frame_no": pl.UInt32, "out_frame": pl.UInt32, "conn_id": pl.Int64, "is_egress": pl.Boolean,
                         "is_icmp_error": pl.Boolean, "dt_ns": pl.Int64, "method": pl.String})
    cap = CaptureSummary(path="synthetic.pcap", format="pcap", link_type="EN10MB", records=2 * n, packets=2 * n,
                         first_ts_ns=base, last_ts_ns=base + 61 * 10**9, skipped={}, warnings=())
    return Result(inside=cap, outside=cap, clock_offset_s=0.0, pod_networks=("10.244.0.0/16",), connections=conns,
                  unmatched_inside=0, unmatched_outside=0, inside_packets=packets, outside_packets=packets)


def legend_texts(fig: Figure) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def brute_force_peak(intervals: list[tuple[int, int]]) -> int:
    """Most closed intervals [a, b] sharing one instant; a maximum is always reached at some interval's start."""
    return max(sum(1 for a, b in intervals if a <= t <= b) for t, _ in intervals)


# ------------------------------------------------------------------------------------------------- data


def test_port_map_points_are_exactly_the_rewritten_port_pairs(result: Result) -> None:
    data = chart_data(result)["port_map"]
    want = sorted((r["orig_sport"], r["trans_sport"]) for r in rewritten(result))
    assert sorted(data.select("orig_sport", "trans_sport").iter_rows()) == want
    kept = sum(1 for a, b in want if a == b)
    assert data["preserved"].sum() == kept
    assert round(kept / len(want), 6) == result.port_preserved_ratio()


def test_port_collision_facts(collision: Result) -> None:
    data = chart_data(collision)
    assert sorted(data["port_map"].select("orig_sport", "trans_sport").iter_rows()) == [
        (40000, 40000), (40000, 53585)]
    fig = port_map(collision)
    assert fig is not None and "50% kept" in chart_title(fig)
    assert any("port rewritten: 1 connection" in t for t in legend_texts(fig))
    # Two connections to the same server from the same port overlapped in time: 2 live mappings at once.
    conc = data["concurrency"]
    assert conc["peak"].unique().to_list() == [2]
    assert (conc["port_min"][0], conc["port_max"][0], conc["port_span"][0]) == (40000, 53585, 13586)


def test_port_timeline_series(result: Result) -> None:
    data = chart_data(result)["port_timeline"]
    rows = sorted(rewritten(result), key=lambda r: (r["first_ts_ns"], r["conn"]))
    t0 = min(r["first_ts_ns"] for r in result.connections.to_dicts())
    assert data["conn"].to_list() == [r["conn"] for r in rows]
    assert data["trans_sport"].to_list() == [r["trans_sport"] for r in rows]
    assert data["orig_src"].to_list() == [r["orig_src"] for r in rows]
    assert data["t_s"].to_list() == pytest.approx([(r["first_ts_ns"] - t0) / 1e9 for r in rows], abs=1e-9)
    fig = port_timeline(result)
    assert fig is not None
    texts = " ".join(legend_texts(fig))
    for pod in {r["orig_src"] for r in rows}:
        assert pod in texts


def test_many_connections_three_pods_with_equal_shares(many: Result) -> None:
    data = chart_data(many)["port_timeline"]
    counts = dict(data.group_by("source_group").len().iter_rows())
    rows = rewritten(many)
    assert counts == {pod: sum(1 for r in rows if r["orig_src"] == pod) for pod in {r["orig_src"] for r in rows}}
    assert sorted(counts) == ["10.244.0.10", "10.244.0.11", "10.244.0.12"]
    assert len(set(counts.values())) == 1  # each pod opened the same number of connections
    # Most ports are kept; with thousands of connections, pods sometimes pick the same port at once.
    share = sum(1 for r in rows if r["orig_sport"] == r["trans_sport"]) / len(rows)
    assert share > 0.9
    fig = port_map(many)
    assert fig is not None and f"{share:.0%} kept" in chart_title(fig)


def test_concurrency_peak_equals_brute_force_overlap(result: Result) -> None:
    data = chart_data(result)["concurrency"]
    groups: dict[tuple, list[dict]] = {}
    for r in rewritten(result):
        groups.setdefault((r["proto"], r["trans_src"], r["trans_dst"], r["trans_dport"]), []).append(r)
    peaks = {k: brute_force_peak([(r["first_ts_ns"], r["last_ts_ns"]) for r in v]) for k, v in groups.items()}
    drawn = data.unique("rank").sort("rank")
    assert drawn.height == min(len(groups), MAX_GROUPS)
    # The drawn groups are the busiest ones, and each one's curve tops out at the independent overlap count.
    assert drawn["peak"].to_list() == sorted(peaks.values(), reverse=True)[:MAX_GROUPS]
    for g in drawn.iter_rows(named=True):
        key = (g["proto"], g["trans_src"], g["trans_dst"], g["trans_dport"])
        members = groups[key]
        series = data.filter(pl.col("rank") == g["rank"])
        assert series["concurrent"].max() == peaks[key] == g["peak"]
        assert series.height == 2 * len(members) == 2 * g["connections"]
        assert series["concurrent"][-1] == 0 and series["concurrent"].min() >= 0
        assert series["t_s"].is_sorted()
        ports = [r["trans_sport"] for r in members]
        assert g["port_span"] == max(ports) - min(ports) + 1


@pytest.mark.skipif(not (CAPTURES / "port-exhaustion").is_dir(), reason="captures/port-exhaustion not recorded")
def test_full_port_pool_reaches_the_port_range_line() -> None:
    res = load("port-exhaustion")  # MASQUERADE --to-ports 40000-40003, more connections than ports at once
    data = chart_data(res)["concurrency"]
    g = data.unique("rank").row(0, named=True)
    members = rewritten(res)
    assert g["peak"] == brute_force_peak([(r["first_ts_ns"], r["last_ts_ns"]) for r in members])
    assert (g["port_min"], g["port_max"]) == (40000, 40003)
    assert g["peak"] == g["port_span"] == 4
    fig = concurrency(res, data)
    assert fig is not None and any("peak fills 100%" in t for t in legend_texts(fig))


def test_concurrency_on_overlapping_synthetic_intervals() -> None:
    res = synthetic_result(400, seed=3)
    data = chart_data(res)["concurrency"]
    conns = res.connections.to_dicts()
    for g in data.unique("rank").iter_rows(named=True):
        members = [r for r in conns if (r["trans_dst"], r["trans_dport"]) == (g["trans_dst"], g["trans_dport"])]
        assert g["peak"] == brute_force_peak([(r["first_ts_ns"], r["last_ts_ns"]) for r in members]) > 1


def test_latency_series_reproduce_the_connection_latency_columns(result: Result) -> None:
    data = chart_data(result)["latency"]
    pk = result.inside_packets.filter(pl.col("out_frame").is_not_null())
    assert pk["method"].unique().to_list() == ["exact"]  # every match in these captures is exact
    conns = result.connections
    assert data.filter(pl.col("direction") == "egress").height == conns["matched_egress"].sum()
    assert data.filter(pl.col("direction") == "reply").height == pk.filter(~pl.col("is_egress")).height
    per_conn: dict[int, list[float]] = {}
    for conn, lat in data.select("conn", "latency_us").iter_rows():
        per_conn.setdefault(conn, []).append(lat)
    for r in conns.to_dicts():
        if r["latency_median_us"] is None:
            assert r["conn"] not in per_conn
            continue
        # The connection columns are rounded to 3 decimals.
        assert statistics.median(per_conn[r["conn"]]) == pytest.approx(r["latency_median_us"], abs=6e-4)
        assert max(per_conn[r["conn"]]) == pytest.approx(r["latency_max_us"], abs=6e-4)
    # Crossing a node takes time: with the clocks aligned no packet arrives before it left.
    assert data["latency_us"].min() > 0


# ---------------------------------------------------------------------------------------------- figures


def test_figures_have_titles_axis_labels_and_legends(many: Result) -> None:
    figs = build_charts(many)
    assert list(figs) == NO_SERVICE_CHARTS
    for name, fig in figs.items():
        ax = fig.axes[0]
        assert chart_title(fig), name
        assert ax.get_xlabel() and ax.get_ylabel(), name
        assert legend_texts(fig), name
    assert "(s, inside clock)" in figs["port_timeline"].axes[0].get_xlabel()
    assert "µs" in figs["latency"].axes[0].get_xlabel()
    assert any("egress" in t for t in legend_texts(figs["latency"]))
    assert any("reply" in t for t in legend_texts(figs["latency"]))
    ports = [r["trans_sport"] for r in rewritten(many)]
    lo, hi = min(ports), max(ports)
    assert any(f"ports {lo}–{hi} in use: {hi - lo + 1} ports" in t for t in legend_texts(figs["concurrency"]))


def test_no_rewritten_connection_means_no_port_charts() -> None:
    res = load("no-masquerade")  # every connection left untranslated
    assert port_timeline(res) is None and port_map(res) is None and concurrency(res) is None
    assert latency(res) is not None  # the packets still crossed the node
    blocked = load("forwarding-off")  # nothing crossed at all
    assert build_charts(blocked) == {}


def test_other_pods_share_one_colour() -> None:
    res = synthetic_result(600, pods=25)
    data = chart_data(res)["port_timeline"]
    groups = data["source_group"].unique().to_list()
    assert len(groups) == MAX_PODS + 1 and OTHER_PODS in groups
    fig = port_timeline(res, data)
    assert fig is not None
    texts = legend_texts(fig)
    assert len(texts) == MAX_PODS + 1
    assert texts[-1].startswith(f"{OTHER_PODS} (15)")


def test_ten_thousand_connections_build_quickly_and_rasterize() -> None:
    res = synthetic_result(10_000)
    t = time.perf_counter()
    figs = build_charts(res)
    svgs = {name: figure_bytes(fig, "svg") for name, fig in figs.items()}
    elapsed = time.perf_counter() - t
    assert list(figs) == NO_SERVICE_CHARTS
    assert elapsed < 30, elapsed
    data = chart_data(res)
    assert data["port_map"].height == data["port_timeline"].height == 10_000
    assert data["latency"].height == 20_000
    # 10k points are drawn as one raster inside the SVG: no 10k vector markers.
    for name in ("port_timeline", "port_map"):
        assert b"<image" in svgs[name]
        assert len(svgs[name]) < 1_500_000


# ----------------------------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def chart_dirs(tmp_path_factory: pytest.TempPathFactory,
               collision: Result) -> Iterator[tuple[Path, list[Path], list[Path]]]:
    tmp_path = tmp_path_factory.mktemp("charts")
    first = save_charts(collision, tmp_path / "a" / "nested")
    second = save_charts(collision, tmp_path / "b")
    yield tmp_path, first, second


def test_save_charts_writes_png_and_svg_files(chart_dirs: tuple[Path, list[Path], list[Path]]) -> None:
    root, first, _ = chart_dirs
    assert [p.name for p in first] == [f"{n}.{f}" for n in NO_SERVICE_CHARTS for f in ("png", "svg")]
    for p in first:
        data = p.read_bytes()
        assert len(data) > 1000
        if p.suffix == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
            assert b"tIME" not in data  # no timestamp chunk
        else:
            assert data.startswith(b"<?xml") and b"<svg" in data and b"<dc:date>" not in data
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (root / "a" / "nested").iterdir()) == sorted(p.name for p in first)


def test_two_runs_give_byte_identical_files(chart_dirs: tuple[Path, list[Path], list[Path]]) -> None:
    _, first, second = chart_dirs
    for a, b in zip(first, second, strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), a.name


def test_save_charts_formats(tmp_path: Path, collision: Result) -> None:
    assert [p.suffix for p in save_charts(collision, tmp_path, formats=("svg",))] == [".svg"] * len(NO_SERVICE_CHARTS)
    with pytest.raises(ValueError, match="unknown chart format"):
        save_charts(collision, tmp_path, formats=("pdf",))
    assert save_charts(load("forwarding-off"), tmp_path / "none") == []


# ------------------------------------------------------------------------------------- Services, inbound SNAT


def truth(name: str) -> list[dict]:
    """The connections of captures/<name>/truth.json (what the kernel's conntrack recorded)."""
    return json.loads((CAPTURES / name / "truth.json").read_text())["connections"]


def truth_backends(conns: list[dict]) -> dict[tuple, dict[str | None, int]]:
    """{(type, VIP, port, proto): {"backend:port" or None: connections}} from truth connections."""
    out: dict[tuple, dict[str | None, int]] = {}
    for c in conns:
        svc = c.get("service")
        if not svc:
            continue
        b = svc["backend"]
        key = None if b is None else f"{b['address']}:{b['port']}"
        per = out.setdefault((svc["type"], svc["address"], svc["port"], c["proto"]), {})
        per[key] = per.get(key, 0) + 1
    return out


def drawn_backends(data: pl.DataFrame) -> dict[tuple, dict[str | None, int]]:
    out: dict[tuple, dict[str | None, int]] = {}
    for r in data.iter_rows(named=True):
        key = None if r["backend_ip"] is None else f"{r['backend_ip']}:{r['backend_port']}"
        out.setdefault((r["service_type"], r["service_ip"], r["service_port"], r["proto"]), {})[key] = r["connections"]
    return out


@pytest.mark.parametrize("name", ["clusterip", "nodeport", "hairpin"])
def test_service_backends_match_the_kernels_truth(name: str) -> None:
    res = load(name)
    data = chart_data(res)["service_backends"]
    want = truth_backends(truth(name))
    assert want and drawn_backends(data) == want
    for r in data.iter_rows(named=True):
        assert r["share"] == pytest.approx(r["connections"] / sum(want[(r["service_type"], r["service_ip"],
                                                                        r["service_port"], r["proto"])].values()))
    fig = service_backends(res, data)
    assert fig is not None
    n_conns = sum(sum(v.values()) for v in want.values())
    assert chart_title(fig).startswith(f"Backend chosen per Service ({len(want)} Service")
    assert f", {n_conns} connections)" in chart_title(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == data["backend"].to_list()
    assert [p.get_width() for p in ax.patches] == data["connections"].to_list()


def test_service_backends_spread_and_unseen_backend() -> None:
    res = synthetic_result(90, seed=5)
    rng = random.Random(7)
    choices = [("ClusterIP", "10.96.0.1", 443, ["10.244.1.5", "10.244.2.7", "10.244.3.9"], 8443),
               ("NodePort", "203.0.113.2", 30080, ["10.244.1.20", "10.244.2.21"], 8080),
               ("ClusterIP", "10.96.0.10", 53, [None], 53)]
    picks = []
    for i in range(res.connections.height):
        typ, ip, port, backends, bport = choices[i % 3]
        b = rng.choice(backends)
        picks.append((typ, ip, port, b, None if b is None else bport))
    conns = res.connections.with_columns(
        pl.Series("service_type", [p[0] for p in picks]), pl.Series("service_ip", [p[1] for p in picks]),
        pl.Series("service_port", [p[2] for p in picks], dtype=pl.UInt16),
        pl.Series("backend_ip", [p[3] for p in picks], dtype=pl.String),
        pl.Series("backend_port", [p[4] for p in picks], dtype=pl.UInt16))
    res = dataclasses.replace(res, connections=conns)
    data = chart_data(res)["service_backends"]
    want: dict[tuple, dict[str | None, int]] = {}
    for typ, ip, port, b, bport in picks:
        per = want.setdefault((typ, ip, port, "tcp"), {})
        key = None if b is None else f"{b}:{bport}"
        per[key] = per.get(key, 0) + 1
    assert drawn_backends(data) == want
    fig = service_backends(res, data)
    assert fig is not None
    assert "backend not seen" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert any("even share" in t for t in legend_texts(fig))
    # One dashed "even share" mark per Service with more than one backend, at connections / backends.
    marks = sorted(round(float(seg[0][0]), 6) for coll in fig.axes[0].collections for seg in coll.get_segments())
    assert marks == sorted(round(sum(v.values()) / len(v), 6) for v in want.values() if len(v) > 1)


def test_port_charts_take_inbound_masquerade_from_original_to_translated() -> None:
    res = load("nodeport")
    rows = truth("nodeport")
    # SNAT per the kernel: the source address changed between conntrack's original and translated tuples.
    snat = [c for c in rows if c["translated"] and c["translated"]["src"] != c["original"]["src"]]
    assert {c["initiator"] for c in snat} == {"inside", "outside"}  # inbound masqueraded ones are in
    assert all(c["service"]["port"] != 30081 for c in snat if c["service"])  # Local (DNAT only) is not
    data = chart_data(res)
    assert sorted(data["port_map"].select("orig_sport", "trans_sport").iter_rows()) == sorted(
        (c["original"]["sport"], c["translated"]["sport"]) for c in snat)
    assert sorted(data["port_timeline"].select("orig_src", "trans_src", "trans_sport").iter_rows()) == sorted(
        (c["original"]["src"], c["translated"]["src"], c["translated"]["sport"]) for c in snat)
    kept = sum(1 for c in snat if c["original"]["sport"] == c["translated"]["sport"])
    assert res.port_preserved_ratio() == round(kept / len(snat), 6)
    fig = port_map(res)
    assert fig is not None and f"{kept / len(snat):.0%} kept ({len(snat)} connections" in chart_title(fig)


def test_hairpin_masquerade_counts_as_source_rewritten() -> None:
    res = load("hairpin")  # both legs on the inside: no outside tuple, the source still rewritten
    snat = [c for c in truth("hairpin") if c["translated"] and c["translated"]["src"] != c["original"]["src"]]
    data = chart_data(res)["port_map"]
    assert sorted(data.select("orig_sport", "trans_sport").iter_rows()) == sorted(
        (c["original"]["sport"], c["translated"]["sport"]) for c in snat)
    assert any(c["outside"] is None for c in snat)


def test_save_charts_writes_the_service_chart_reproducibly(tmp_path: Path) -> None:
    res = load("clusterip")
    first = save_charts(res, tmp_path / "a")
    second = save_charts(res, tmp_path / "b")
    assert [p.name for p in first] == [f"{n}.{f}" for n in CHARTS for f in ("png", "svg")]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert not (set(build_charts(load("idle-expiry"))) & {"service_backends"})  # no Service, no chart
