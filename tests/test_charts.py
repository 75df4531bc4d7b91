"""Tests of natproof/report/charts.py: chart series against facts from the connections, and reproducible files."""

from __future__ import annotations

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
)
from natproof.result import CONNECTION_SCHEMA, CaptureSummary, Result
from natproof.testing.scenario import SCENARIOS, write_scenario

CAPTURES = Path(__file__).resolve().parent.parent / "captures"


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
    """Connections whose source address changed, straight from the rows (no polars expressions)."""
    return [r for r in result.connections.to_dicts()
            if r["outside_src"] is not None and r["outside_src"] != r["inside_src"]]


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
            inside_conn_id=i, outside_conn_id=i,
        )
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
    want = sorted((r["inside_sport"], r["outside_sport"]) for r in rewritten(result))
    assert sorted(data.select("inside_sport", "outside_sport").iter_rows()) == want
    kept = sum(1 for a, b in want if a == b)
    assert data["preserved"].sum() == kept
    assert round(kept / len(want), 6) == result.port_preserved_ratio()


def test_port_collision_facts(collision: Result) -> None:
    data = chart_data(collision)
    assert sorted(data["port_map"].select("inside_sport", "outside_sport").iter_rows()) == [
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
    assert data["outside_sport"].to_list() == [r["outside_sport"] for r in rows]
    assert data["pod"].to_list() == [r["inside_src"] for r in rows]
    assert data["t_s"].to_list() == pytest.approx([(r["first_ts_ns"] - t0) / 1e9 for r in rows], abs=1e-9)
    fig = port_timeline(result)
    assert fig is not None
    texts = " ".join(legend_texts(fig))
    for pod in {r["inside_src"] for r in rows}:
        assert pod in texts


def test_many_connections_three_pods_with_equal_shares(many: Result) -> None:
    data = chart_data(many)["port_timeline"]
    counts = dict(data.group_by("pod_group").len().iter_rows())
    rows = rewritten(many)
    assert counts == {pod: sum(1 for r in rows if r["inside_src"] == pod) for pod in {r["inside_src"] for r in rows}}
    assert sorted(counts) == ["10.244.0.10", "10.244.0.11", "10.244.0.12"]
    assert len(set(counts.values())) == 1  # each pod opened the same number of connections
    # Most ports are kept; with thousands of connections, pods sometimes pick the same port at once.
    share = sum(1 for r in rows if r["inside_sport"] == r["outside_sport"]) / len(rows)
    assert share > 0.9
    fig = port_map(many)
    assert fig is not None and f"{share:.0%} kept" in chart_title(fig)


def test_concurrency_peak_equals_brute_force_overlap(result: Result) -> None:
    data = chart_data(result)["concurrency"]
    groups: dict[tuple, list[dict]] = {}
    for r in rewritten(result):
        groups.setdefault((r["proto"], r["outside_src"], r["outside_dst"], r["outside_dport"]), []).append(r)
    peaks = {k: brute_force_peak([(r["first_ts_ns"], r["last_ts_ns"]) for r in v]) for k, v in groups.items()}
    drawn = data.unique("rank").sort("rank")
    assert drawn.height == min(len(groups), MAX_GROUPS)
    # The drawn groups are the busiest ones, and each one's curve tops out at the independent overlap count.
    assert drawn["peak"].to_list() == sorted(peaks.values(), reverse=True)[:MAX_GROUPS]
    for g in drawn.iter_rows(named=True):
        key = (g["proto"], g["outside_src"], g["outside_dst"], g["outside_dport"])
        members = groups[key]
        series = data.filter(pl.col("rank") == g["rank"])
        assert series["concurrent"].max() == peaks[key] == g["peak"]
        assert series.height == 2 * len(members) == 2 * g["connections"]
        assert series["concurrent"][-1] == 0 and series["concurrent"].min() >= 0
        assert series["t_s"].is_sorted()
        ports = [r["outside_sport"] for r in members]
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
        members = [r for r in conns if (r["outside_dst"], r["outside_dport"]) == (g["outside_dst"], g["outside_dport"])]
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
    assert list(figs) == list(CHARTS)
    for name, fig in figs.items():
        ax = fig.axes[0]
        assert chart_title(fig), name
        assert ax.get_xlabel() and ax.get_ylabel(), name
        assert legend_texts(fig), name
    assert "(s, inside clock)" in figs["port_timeline"].axes[0].get_xlabel()
    assert "µs" in figs["latency"].axes[0].get_xlabel()
    assert any("egress" in t for t in legend_texts(figs["latency"]))
    assert any("reply" in t for t in legend_texts(figs["latency"]))
    ports = [r["outside_sport"] for r in rewritten(many)]
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
    groups = data["pod_group"].unique().to_list()
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
    assert list(figs) == list(CHARTS)
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
    assert [p.name for p in first] == [f"{n}.{f}" for n in CHARTS for f in ("png", "svg")]
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
    assert [p.suffix for p in save_charts(collision, tmp_path, formats=("svg",))] == [".svg"] * len(CHARTS)
    with pytest.raises(ValueError, match="unknown chart format"):
        save_charts(collision, tmp_path, formats=("pdf",))
    assert save_charts(load("forwarding-off"), tmp_path / "none") == []
