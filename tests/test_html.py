"""Tests of natproof/report/html.py: content, escaping, self-containment, and the page in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from test_charts import CASES, load, synthetic_result, truth

import natproof
import natproof.report.html as html_module
from natproof.diagnose import Finding
from natproof.report.html import (
    COLUMNS,
    EMBED_LEGS_MAX,
    PAGE_ROWS,
    render_html,
    sidecar_path,
    table_data,
    write_html,
)
from natproof.report.table import FATE_LABEL, format_address
from natproof.result import Result

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)")
EVIL = '<script>alert("pwned")</script>'


class Page(HTMLParser):
    """The mapping table's rows (attributes and cell texts), the charts and the scripts of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[tuple[dict[str, str | None], list[str]]] = []
        self.svgs: list[dict[str, str | None]] = []
        self.imgs: list[dict[str, str | None]] = []
        self.scripts: list[str] = []
        """The page's executable scripts (the table's JSON data block is ``data``)."""
        self.data = ""
        self.table_attrs: dict[str, str | None] = {}
        self.services: list[list[str]] = []
        """Cell texts of the Services table's rows."""
        self._in_table = self._in_body = self._in_script = self._in_services = self._in_data = False
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == "mappings":
            self._in_table, self.table_attrs = True, a
        elif tag == "table" and a.get("id") == "services-table":
            self._in_services = True
        elif self._in_services and tag == "tr":
            self.services.append([])
        elif self._in_services and tag == "td":
            self._cell = []
        elif tag == "tbody" and self._in_table:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append((a, []))
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "svg":
            self.svgs.append(a)
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "script" and a.get("type") == "application/json":
            self._in_data = True
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._in_services:
            if tag == "td" and self._cell is not None:
                self.services[-1].append("".join(self._cell))
                self._cell = None
            elif tag == "table":
                self._in_services = False
            return
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._in_table = False
        elif tag == "script":
            self._in_script = self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_script:
            self.scripts[-1] += data
        if self._in_data:
            self.data += data


@pytest.fixture(scope="module")
def collision() -> Result:
    return load("port-collision")


FINDINGS = [
    Finding("mapping_conflict", "warning", "Outside tuple <b>reused</b>",
            f"Someone wrote {EVIL} into a capture & it must stay text.",
            "Run `conntrack -L | grep '<40000>'` and compare.", connections=(1,),
            evidence=("#1 tcp 10.244.0.11:40000 -> 198.51.100.10:80 left as 203.0.113.2:53585 <frame 8>",),
            data={"x": 1}),
    Finding("healthy", "info", "NAT working as expected", "2 connections translated.", "Nothing to fix.",
            connections=(0, 1)),
]


@pytest.fixture(scope="module")
def page_text(collision: Result) -> str:
    return render_html(collision, FINDINGS)


def cell(name: str) -> int:
    return [c[0] for c in COLUMNS].index(name)


def test_every_connection_is_a_table_row_with_its_addresses(collision: Result, page_text: str) -> None:
    page = Page(page_text)
    conns = collision.connections.to_dicts()
    assert len(page.rows) == len(conns) == 2
    # Problem connections first: #1 is cited by a warning.
    assert [a["id"] for a, _ in page.rows] == ["c1", "c0"]
    for (attrs, cells), r in zip(page.rows, conns[::-1], strict=True):
        assert attrs["id"] == f"c{r['conn']}" and attrs["class"] == f"v-{r['verdict']}"
        assert len(cells) == len(COLUMNS)
        assert cells[cell("original")] == (f"{format_address(r['inside_src'], r['inside_sport'])} → "
                                           f"{format_address(r['inside_dst'], r['inside_dport'])}")
        assert cells[cell("translated")] == (f"{format_address(r['outside_src'], r['outside_sport'])} → "
                                             f"{format_address(r['outside_dst'], r['outside_dport'])}")
        assert cells[cell("initiator")] == "inside" and cells[cell("service")] == ""
        assert cells[cell("verdict")] == r["verdict"] == "translated"
        assert cells[cell("egress")] == f"{r['egress_inside']}/{r['egress_outside']}"
        assert cells[cell("egress_frames")] == (f"{r['evidence_egress_inside_frame']}/"
                                                f"{r['evidence_egress_outside_frame']}")
    assert [c[cell("translated")].split(" → ")[0] for _, c in page.rows] == ["203.0.113.2:53585",
                                                                               "203.0.113.2:40000"]


def test_title_summary_and_findings(collision: Result, page_text: str) -> None:
    title = re.search(r"<title>(.*?)</title>", page_text)
    assert title and "captures/port-collision/inside.pcap" in title.group(1)
    assert "captures/port-collision/outside.pcap" in title.group(1)
    assert "UTC (1.275 s)" in page_text  # the inside capture's time span
    assert "50.0% of 2 connection(s)" in page_text
    assert "+0.000000 s (outside clock minus inside clock)" in page_text
    assert 'data-filter="verdict:translated"' in page_text
    for f in FINDINGS:
        assert f'data-conns="{" ".join(map(str, f.connections))}"' in page_text
    assert "<code>conntrack -L | grep &#x27;&lt;40000&gt;&#x27;</code>" in page_text
    assert "&lt;frame 8&gt;" in page_text
    assert page_text.index("Outside tuple &lt;b&gt;reused&lt;/b&gt;") < page_text.index("NAT working as expected")


def test_a_finding_cites_runs_of_connections_as_ranges(collision: Result) -> None:
    many = Finding("healthy", "info", "t", "s", "f", connections=(9, 0, 1, 3, 4, 5, 7, 8))
    assert 'data-conns="0 1 3-5 7-9"' in render_html(collision, [many])  # three in a row or more: a range


def test_capture_text_is_escaped(collision: Result, page_text: str) -> None:
    assert EVIL not in page_text
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page_text
    assert "<b>reused</b>" not in page_text
    assert len(Page(page_text).scripts) == 1  # only the report's own script
    odd = dataclasses.replace(collision, inside=dataclasses.replace(collision.inside, path='/tmp/"x"<y>.pcap'))
    text = render_html(odd, [])
    assert '"x"<y>' not in text and "&quot;x&quot;&lt;y&gt;.pcap" in text
    assert "No diagnosis was given" in text


def test_self_contained(page_text: str) -> None:
    """(Also called on other pages.)"""
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", page_text, re.I)
    assert not re.search(r"url\(\s*[\"']?(?:https?:)?//", page_text, re.I)
    assert "@import" not in page_text and "<link" not in page_text
    page = Page(page_text)
    assert len(page.svgs) >= 4  # charts inline
    assert all(not (img.get("src") or "data:").startswith(("http", "//")) for img in page.imgs)
    # The CSP forbids any fetch and allows exactly the report's script.
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page_text)
    assert csp and "default-src 'none'" in csp.group(1)
    digest = base64.b64encode(hashlib.sha256(page.scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp.group(1)


def test_chart_ids_are_unique_across_inline_svgs(page_text: str) -> None:
    ids = re.findall(r'\bid="([^"]+)"', page_text)
    assert len(ids) == len(set(ids))
    for ref in set(re.findall(r'(?:href="#|url\(#)([^")]+)', page_text)):
        assert ref in ids, ref


def test_render_is_deterministic_and_write_is_atomic(collision: Result, page_text: str, tmp_path: Path) -> None:
    assert render_html(collision, FINDINGS) == page_text
    out = tmp_path / "report.html"
    write_html(collision, FINDINGS, out)
    assert out.read_text(encoding="utf-8") == page_text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_empty_result_renders() -> None:
    text = render_html(synthetic_result(0), [])
    assert "showing 0 of 0" in text and text.count("no data") == 4
    assert Page(text).rows == []


def test_ten_thousand_rows_are_column_data_and_a_first_page() -> None:
    res = synthetic_result(10_000)
    t = time.perf_counter()
    text = render_html(res, [])
    assert time.perf_counter() - t < 30
    page = Page(text)
    assert len(page.rows) == PAGE_ROWS and f"page 1 of {10_000 // PAGE_ROWS}" in text
    data = json.loads(page.data)
    assert len(data["kind"]) == 10_000 and "legs" in data  # up to EMBED_LEGS_MAX, every leg is in the page
    assert len(text) < 1_500_000  # was 12 MB as HTML rows


# ------------------------------------------------------------------------------------------- Chromium


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def report_file(collision: Result, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_html(collision, FINDINGS, path)
    return path


@needs_chromium
def test_chromium_runs_the_page(report_file: Path, tmp_path: Path, collision: Result) -> None:
    proc = chromium(tmp_path, "--dump-dom", report_file.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = Page(proc.stdout)
    assert len(page.rows) == collision.connections.height
    assert page.table_attrs.get("data-ready") == "true"  # the script ran under the page's CSP
    assert len([s for s in page.svgs if s.get("class") == "chart"]) == 4
    assert "alert(" not in "".join(page.scripts)


@needs_chromium
def test_chromium_sorts_and_filters(report_file: Path, tmp_path: Path) -> None:
    # Sorted by translated address:port: 40000 first, ascending (the problem connection no longer first).
    proc = chromium(tmp_path, "--dump-dom", report_file.as_uri() + "?sort=translated")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [a["id"] for a, _ in Page(proc.stdout).rows] == ["c0", "c1"]
    assert 'data-key="translated" data-type="text" aria-sort="ascending"' in proc.stdout
    url = report_file.as_uri() + "?sort=translated&order=desc&filter=10.244.0.10"
    proc = chromium(tmp_path, "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = Page(proc.stdout)
    # The filter leaves the other pod's row out of the page.
    assert [a["id"] for a, _ in page.rows] == ["c0"]
    assert 'id="shown" class="muted">showing 1 of 2<' in proc.stdout


@needs_chromium
def test_chromium_screenshot(report_file: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    proc = chromium(tmp_path, "--window-size=1400,2400", f"--screenshot={shot}", report_file.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


# ------------------------------------------------------------------- Services, initiator, fates and legs


def load_case(name: str) -> Result:
    return natproof.correlate(CASES / name / "inside.pcap", CASES / name / "outside.pcap")


def tup(t: dict | None) -> str:
    return "—" if t is None else f"{format_address(t['src'], t['sport'])} → {format_address(t['dst'], t['dport'])}"


@pytest.mark.parametrize("name", ["clusterip", "nodeport"])
def test_mapping_rows_and_services_match_the_kernels_truth(name: str) -> None:
    res = load(name)
    page = Page(render_html(res, []))
    want = {(c["proto"], tup(c["original"])): c for c in truth(name)}
    assert len(page.rows) == len(want) == res.connections.height
    for attrs, cells in page.rows:
        c = want[(cells[cell("proto")], cells[cell("original")])]
        assert cells[cell("translated")] == tup(c["translated"])
        assert cells[cell("initiator")] == ("outside (inbound)" if c["initiator"] == "outside" else "inside")
        assert attrs["data-initiator"] == c["initiator"]
        svc = c.get("service")
        if svc:
            b = svc["backend"]
            assert cells[cell("service")] == (f"{svc['type']} {format_address(svc['address'], svc['port'])} "
                                              f"→ {format_address(b['address'], b['port'])}")
            assert attrs["data-service"] == f"{format_address(svc['address'], svc['port'])}/{c['proto']}"
        else:
            assert cells[cell("service")] == "" and "data-service" not in attrs
    # The Services table: one row per Service with the backends and counts the kernel chose.
    per: dict[str, dict[str, int]] = {}
    for c in truth(name):
        if c.get("service"):
            s, b = c["service"], c["service"]["backend"]
            key = f"{format_address(s['address'], s['port'])}/{c['proto']}"
            backends = per.setdefault(key, {})
            backends[format_address(b["address"], b["port"])] = backends.get(format_address(b["address"], b["port"]),
                                                                             0) + 1
    got = {row[0]: row for row in page.services if row}  # (the header row has no td)
    assert set(got) == set(per)
    for key, backends in per.items():
        row = got[key]
        assert row[2] == str(sum(backends.values())) and row[3] == str(len(backends))
        for addr, n in backends.items():
            assert f"{addr}: {n} ({n / sum(backends.values()):.0%})" in row[4]
    types = {row[0]: row[1] for row in page.services if row}
    assert set(types.values()) == {"ClusterIP" if name == "clusterip" else "NodePort"}


def test_leaked_packets_are_visible_in_the_summary_and_the_row() -> None:
    res = load_case("idle-expiry-fin-leak")
    text = render_html(res, [])
    page = Page(text)
    fates = res.by_fate()
    # The case's truth (tests/cases/README.md): all 7 FINs of the idled connection left untranslated.
    assert fates["leaked"] == 7
    assert f'<span class="f-leaked">{fates["leaked"]} leaked</span>' in text
    for f, n in fates.items():
        assert f"{n} {FATE_LABEL[f]}" in text
    rows = {f"c{r['conn']}": r for r in res.connections.to_dicts()}
    assert len(page.rows) == len(rows)
    for attrs, cells in page.rows:
        r = rows[attrs["id"]]
        parts = [f"{r['fate_' + f]} {FATE_LABEL[f]}" for f in FATE_LABEL if r["fate_" + f]]
        assert cells[cell("fates")] == ", ".join(parts)
    leaky = [cells for attrs, cells in page.rows if rows[attrs["id"]]["fate_leaked"]]
    assert len(leaky) == 1 and "7 leaked" in leaky[0][cell("fates")]
    assert leaky[0] == page.rows[0][1]  # a leak is a problem: its row comes first


@pytest.mark.parametrize("name", ["clusterip", "nodeport"])
def test_every_leg_is_listed_under_its_connection(name: str) -> None:
    res = load(name)
    page = Page(render_html(res, []))
    conns = {f"c{i}": c for i, c in enumerate(res.to_dict()["connections"])}
    assert len(page.rows) == len(conns)
    for attrs, cells in page.rows:
        c, legs = conns[attrs["id"]], cells[cell("legs")]
        assert legs.startswith(str(len(c["legs"])))
        for leg in c["legs"]:
            t = leg["tuple"]
            assert (f"{leg['observation_point']} {tup(t)} · frame {leg['first_frame']} · {leg['packets']} packets"
                    in legs)
        assert {leg["observation_point"] for leg in c["legs"]} == {"inside", "outside"}


@needs_chromium
def test_chromium_filters_by_service_and_initiator(tmp_path: Path) -> None:
    for name, query, want in (
            ("clusterip", "service:10.96.0.1:443/tcp",
             lambda c: bool(c["service"]) and c["service"]["address"] == "10.96.0.1"),
            ("nodeport", "initiator:outside", lambda c: c["initiator"] == "outside")):
        res = load(name)
        path = tmp_path / f"{name}.html"
        write_html(res, [], path)
        proc = chromium(tmp_path, "--dump-dom", path.as_uri() + "?filter=" + query)
        assert proc.returncode == 0, proc.stderr[-2000:]
        page = Page(proc.stdout)
        shown = [a["id"] for a, _ in page.rows if "hidden" not in a]
        conns = res.to_dict()["connections"]
        expected = [f"c{i}" for i, c in enumerate(conns) if want(c)]
        assert shown == expected and expected
        assert len([s for s in page.svgs if s.get("class") == "chart"]) == 5  # the backend chart included


# ------------------------------------------------------------- the table as column data, and the report at scale


def with_underlay(result: Result) -> Result:
    """The result with its outside legs carried in VXLAN (as an overlay capture reads them)."""
    legs = pl.col("legs").list.eval(pl.element().struct.with_fields(
        pl.when(pl.field("observation_point") == "outside").then(pl.lit("vxlan 192.0.2.1 192.0.2.2 1"))
        .otherwise(pl.field("underlay")).alias("underlay")))
    return dataclasses.replace(result, connections=result.connections.with_columns(legs))


def page_rows(rows_html: str) -> list[tuple[dict[str, str | None], list[str]]]:
    return Page(f'<table id="mappings"><tbody>{rows_html}</tbody></table>').rows


def test_problem_connections_first_and_the_table_limit(collision: Result, monkeypatch: pytest.MonkeyPatch) -> None:
    data = table_data(collision, FINDINGS)
    assert data.problem == [False, True] and data.default_order() == [1, 0]  # #1: cited by a warning
    assert table_data(collision, FINDINGS[1:]).problem == [False, False]  # an info finding is no problem
    held = table_data(collision, FINDINGS, max_rows=1)
    assert held.conn == [1] and held.total == 2
    monkeypatch.setattr(html_module, "TABLE_ROWS_MAX", 1)
    text = render_html(collision, FINDINGS)
    assert "The table holds 1 of the 2 connections: the problem ones first" in text
    assert [a["id"] for a, _ in Page(text).rows] == ["c1"]
    assert json.loads(Page(text).data)["conn"] == [1]


def test_above_the_limit_legs_go_to_a_parquet_file_beside_the_page(collision: Result, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html_module, "EMBED_LEGS_MAX", 1)
    out = tmp_path / "incident.html"
    assert write_html(collision, FINDINGS, out) == sidecar_path(out) == tmp_path / "incident.connections.parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incident.connections.parquet", "incident.html"]
    side = pl.read_parquet(tmp_path / "incident.connections.parquet")
    assert side.height == 2 and side["legs"].list.len().to_list() == [2, 2]
    assert side.drop("first_seen", "last_seen", "flags").equals(collision.connections)
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert '<a href="incident.connections.parquet">' in text and "does not embed each connection's legs" in text
    assert "legs" not in json.loads(page.data)
    assert [c[cell("legs")] for _, c in page.rows] == ["2", "2"]  # the number of legs, not the legs
    test_self_contained(text)
    # Written by render_html alone, the page names no file it did not write.
    assert "natproof report writes them to a Parquet file" in render_html(collision, FINDINGS)
    # The same name again below the limit: the earlier sidecar goes, not to sit beside a page that is not its own.
    monkeypatch.setattr(html_module, "EMBED_LEGS_MAX", 100)
    assert write_html(collision, FINDINGS, out) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incident.html"]


@needs_chromium
def test_the_script_renders_each_row_as_python_does(collision: Result, tmp_path: Path) -> None:
    from natproof.check import capture_pair
    from natproof.names import Names

    nodeport = CAPTURES / "nodeport"
    named = natproof.correlate(*capture_pair(nodeport),
                               names=Names.load(nodeport / "pods.json", nodeport / "services.json"))
    kernel = load("forward-drop")
    kernel = natproof.join_kernel(kernel, natproof.read_conntrack(CAPTURES / "forward-drop" / "conntrack.log").entries)
    many = load("many-connections")
    cases = [(with_underlay(collision), FINDINGS, ""), (named, [], ""), (kernel, [], ""),
             (load_case("idle-expiry-fin-leak"), [], ""), (many, [], "?page=7&sort=translated&order=desc")]
    for i, (res, findings, query) in enumerate(cases):
        path = tmp_path / f"{i}.html"
        write_html(res, findings, path)
        proc = chromium(tmp_path, "--dump-dom", path.as_uri() + query)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = Page(proc.stdout)
        assert got.table_attrs.get("data-ready") == "true"
        if query:  # a later page of another order: the rows Python renders for the same connections
            want = page_rows("".join(table_data(res, findings).row_html(int(a["id"][1:])) for a, _ in got.rows))
            assert len(got.rows) == PAGE_ROWS and 'page 7 of 21' in proc.stdout
        else:  # the first page, as the file holds it
            want = Page(path.read_text(encoding="utf-8")).rows
        assert got.rows == want, i
        if i == 0:
            assert "(in VXLAN 192.0.2.1 → 192.0.2.2, VNI 1)" in got.rows[0][1][cell("legs")]


@needs_chromium
def test_chromium_filters_by_finding_and_reveals_a_cited_row(report_file: Path, tmp_path: Path) -> None:
    proc = chromium(tmp_path, "--dump-dom", report_file.as_uri() + "?filter=finding:0")
    assert [a["id"] for a, _ in Page(proc.stdout).rows] == ["c1"]
    # A link to a connection the filter hides clears the filter and marks the row.
    proc = chromium(tmp_path, "--dump-dom", report_file.as_uri() + "?filter=finding:0#c0")
    rows = Page(proc.stdout).rows
    assert [a["id"] for a, _ in rows] == ["c1", "c0"] and rows[1][0]["class"] == "v-translated target"


def repeated(result: Result, copies: int) -> Result:
    """A result's connections ``copies`` times, one copy after the other (numbered on, later in time, frame numbers
    on): a big result in a second, without a big capture."""
    conns = result.connections
    n, span = conns.height, conns["last_ts_ns"].max() - conns["first_ts_ns"].min() + 10**9  # type: ignore[operator]
    frames = [c for c in conns.columns if c.startswith("evidence_") and c.endswith("_frame")]
    top = max(conns[c].max() or 0 for c in frames)  # type: ignore[type-var]
    parts = [conns.with_columns(
        (pl.col("conn") + i * n).cast(pl.UInt32), pl.col("first_ts_ns") + i * span, pl.col("last_ts_ns") + i * span,
        *[(pl.col(c) + i * top).cast(pl.UInt32) for c in frames]) for i in range(copies)]
    return dataclasses.replace(result, connections=pl.concat(parts))


@pytest.fixture(scope="module")
def big_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """The report of 105,000 connections: the lab's many-connections pair (2,100) 50 times over."""
    res = repeated(load("many-connections"), 50)
    path = tmp_path_factory.mktemp("big") / "report.html"
    t = time.perf_counter()
    write_html(res, [Finding("healthy", "info", "NAT working as expected", "", "",
                             connections=tuple(range(res.connections.height)))], path)
    print(f"\nreport of {res.connections.height} connections written in {time.perf_counter() - t:.1f} s: "
          f"{path.stat().st_size / 1e6:.2f} MB, sidecar {sidecar_path(path).stat().st_size / 1e6:.2f} MB")
    return path, res


def test_a_report_of_100k_connections_is_small_and_links_the_rest(big_report: tuple[Path, Result]) -> None:
    path, res = big_report
    assert res.connections.height == 105_000 > EMBED_LEGS_MAX
    text = path.read_text(encoding="utf-8")
    assert len(text.encode()) < 10_000_000  # the bound; was 118 MB
    page = Page(text)
    assert len(page.rows) == PAGE_ROWS and 'id="pager">' in text and "page 1 of 1050" in text
    data = json.loads(page.data)
    assert len(data["kind"]) == 105_000 and "legs" not in data
    assert '<a href="report.connections.parquet">' in text
    side = pl.read_parquet(sidecar_path(path))
    assert side.height == 105_000 and side["legs"].list.len().min() == 2
    test_self_contained(text)


@needs_chromium
def test_chromium_renders_100k_connections_in_seconds(big_report: tuple[Path, Result], tmp_path: Path) -> None:
    path, _ = big_report
    for query, first in (("", "c0"), ("?sort=start&order=desc", "c104999"), ("#c77777", "c77700")):
        t = time.perf_counter()
        proc = chromium(tmp_path, "--dump-dom", path.as_uri() + query)
        seconds = time.perf_counter() - t
        assert proc.returncode == 0, proc.stderr[-2000:]
        page = Page(proc.stdout)
        print(f"\n105,000 connections{query and ', ' + query}: chromium --dump-dom {seconds:.2f} s, the page ready "
              f"{int(page.table_attrs.get('data-ready-ms') or 0) / 1000:.2f} s after it was asked for")
        assert page.table_attrs.get("data-ready") == "true"
        assert len(page.rows) == PAGE_ROWS and page.rows[0][0]["id"] == first
        assert re.search(r'<div class="pager" id="pager">.*?page-info">rows \d+–\d+ of 105000 · page \d+ of 1050<',
                         proc.stdout)
        assert seconds < 10  # the issue asks for 3 s; generous for a busy CI machine


def test_the_report_shows_each_explained_connections_header_changes(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14: a collapsed section per connection with natproof explain's field comparison (port-collision's
    connection #1 had its source port rewritten on a clash; #0 kept it)."""
    from natproof.cli import main

    pair = Path(__file__).resolve().parent.parent / "captures" / "port-collision"
    out = tmp_path / "r.html"
    assert main(["report", str(pair / "inside.pcap"), str(pair / "outside.pcap"), "-o", str(out), "--quiet"]) == 0
    text = out.read_text(encoding="utf-8")
    assert '<section id="headers">' in text and '<a href="#headers">' in text
    first = text.split('id="h0"', 1)[1].split("</details>", 1)[0]
    second = text.split('id="h1"', 1)[1].split("</details>", 1)[0]
    assert "source port" in second.split("</summary>", 1)[0] and "source port" not in first.split("</summary>")[0]
    assert "<td>source port</td><td class=\"mono\">40000</td>" in second and 'class="changed"' in second
    assert "dport=53585" in second  # its entry in conntrack notation
    test_self_contained(text)


def _facts(text: str) -> dict[str, str]:
    """The summary's facts (<dt>name</dt><dd>text</dd>), their markup stripped."""
    return {k: re.sub(r"<[^>]+>", "", v) for k, v in re.findall(r"<dt>([^<]*)</dt><dd>(.*?)</dd>", text)}


def test_summary_facts_say_what_their_counts_count(tmp_path: Path) -> None:
    """A new user's trial: "connections 0, all started inside"; "30 IP packets in connections" beside 0
    connections (the outside capture's packets are read whether or not a connection holds them); "unmatched 0
    inside (no counterpart outside)" beside 30 packets inside only (internal connections are left out of it)."""
    from pcapbytes import snaplen_cut

    cut = tmp_path / "cut.pcap"
    # Cut inside the IP header: no flow is left to read (a cut after it keeps one by hosts: not_captured).
    cut.write_bytes(snaplen_cut((CAPTURES / "basic" / "inside.pcap").read_bytes(), 30))
    result = natproof.correlate(cut, CAPTURES / "basic" / "outside.pcap")
    facts = _facts(render_html(result, []))
    assert result.connections.height == 0 and facts["connections"] == "0"
    assert f"{result.outside.packets} IP packets read;" in facts["outside capture"] and result.outside.packets > 0
    assert "in connections" not in facts["outside capture"] + facts["inside capture"]
    internal = natproof.correlate(CAPTURES / "internal" / "inside.pcap", CAPTURES / "internal" / "outside.pcap")
    facts = _facts(render_html(internal, []))
    assert internal.by_fate()["inside_only"] > 0 and internal.unmatched_inside == 0  # the JSON numbers, unchanged
    assert facts["unmatched packets"].startswith("0 inside (of connections that should have crossed: no counterpart "
                                                 "outside), 0 outside")
    n = internal.connections.height
    assert facts["connections"] == f"{n}, all started inside (egress)"
