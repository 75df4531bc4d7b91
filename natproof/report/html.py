"""A Result and its diagnosis as one self-contained HTML page: summary, findings, mapping table and charts."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import ipaddress
import os
import re
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

import natproof
from natproof.diagnose import Finding
from natproof.report.charts import build_charts, chart_title, figure_bytes
from natproof.report.export import write_bytes
from natproof.report.table import format_address
from natproof.result import SCHEMA, Result
from natproof.verdicts import Verdict

VERDICT_MEANING = {
    "translated": "rewritten on the way through, and replies reverse-translated back to the initiator",
    "no_reply": "translated and sent on, nothing came back on the far side",
    "reply_dropped": "replies reached the far side of the NAT but never the initiator",
    "untranslated": "crossed the node with nothing rewritten",
    "not_forwarded": "the initiator's packets never crossed the node",
    "internal": "destination inside the pod network (or a Service answered on the node): not expected outside",
    "reply_other_path": "the initiator got replies that never crossed the captured far side: another return "
                        "path, or a capture that misses them; reverse translation not proven",
}
CHART_CAPTIONS = {
    "port_timeline": "Each dot is a connection whose source address the NAT rewrote: when it started and the "
                     "outside source port it got, coloured by pod. Bands show ports kept from each pod's own "
                     "ephemeral range; a scatter over the whole range is random port allocation (--random-fully).",
    "port_map": "Inside source port against outside source port. Dots on the dashed diagonal kept their port; "
                "dots off it were rewritten (a clash with another mapping, or random allocation).",
    "concurrency": "Mappings live at once (a mapping lives from its connection's first to its last packet) per "
                   "outside address, destination and protocol, against the size of the port range the NAT used "
                   "for it (dashed). A solid line reaching the dashed one means the pool is full.",
    "latency": "Time each packet took to cross the node (exact matches only; clock offset applied), egress and "
               "reply. Tens of microseconds is normal for a kernel NAT; milliseconds point at a busy node or a "
               "clock problem.",
}
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("conn", "#", "num", "connection index, as findings cite it (#N)"),
    ("start", "start (s)", "num", "first packet, seconds since the first connection (inside clock)"),
    ("proto", "proto", "text", "protocol"),
    ("inside", "inside (pod)", "text", "pod source address:port as seen inside"),
    ("outside", "outside (node)", "text", "source address:port after NAT, as seen on the outside"),
    ("destination", "destination", "text", "destination address:port"),
    ("verdict", "verdict", "text", "what the NAT did to the connection"),
    ("egress", "egress pkts\nin/out", "num", "egress packets seen inside / outside"),
    ("reply", "reply pkts\nout/in", "num", "reply packets seen outside / inside"),
    ("latency", "NAT µs\nmed / max", "num", "time to cross the node, median / max, microseconds"),
    ("egress_frames", "egress frames\nin/out", "num",
     "frame numbers (as Wireshark counts) of the first matched egress packet: inside capture / outside capture"),
    ("reply_frames", "reply frames\nin/out", "num",
     "frame numbers of the first matched reply packet: inside capture / outside capture"),
)
_SEVERITIES = ("error", "warning", "info")
_EVIDENCE_OPEN = 8
"""Evidence lists up to this long are shown expanded."""
_CONN_LINKS = 40
"""Connections linked by number under a finding; the rest are reachable with its table filter."""

# The mapping table is styled by column position (see COLUMNS): 1-2 and 8-12 numbers, 4-6 addresses, 7 verdict.
_CSS = """
:root{color-scheme:light;--fg:#1d2127;--muted:#5f6b7a;--line:#d9dee5;--bg:#fff;--soft:#f5f7fa;
--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--dim:#6e7781;--link:#0969da}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:var(--bg)}
header.top{padding:18px 28px 12px;border-bottom:1px solid var(--line);background:var(--soft)}
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;margin:0 0 12px}h3{font-size:15px;margin:0}
main{padding:0 28px 40px;max-width:1500px}
section{padding:18px 0 8px;border-bottom:1px solid var(--line)}
nav a{margin-right:14px}a{color:var(--link)}
code,.mono,#mappings td:nth-child(n+4):nth-child(-n+6){font-size:12.5px;
font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
code{background:var(--soft);border:1px solid var(--line);border-radius:4px;padding:0 4px;word-break:break-word}
.muted{color:var(--muted)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:12px 0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
.verdicts{display:flex;flex-wrap:wrap;gap:8px;margin:4px 0 8px}
.vbtn{border:1px solid var(--line);border-radius:8px;background:var(--bg);padding:6px 10px;text-align:left;
cursor:pointer;font:inherit;color:inherit;min-width:150px}
.vbtn b{font-size:20px;display:block}.vbtn.zero{opacity:.45}
.vbtn:hover{border-color:var(--muted)}
.v-translated td:nth-child(7),.vbtn.v-translated b{color:var(--ok)}
.v-no_reply td:nth-child(7),.vbtn.v-no_reply b{color:var(--warn)}
.v-reply_other_path td:nth-child(7),.vbtn.v-reply_other_path b{color:var(--warn)}
.v-reply_dropped td:nth-child(7),.v-untranslated td:nth-child(7),.v-not_forwarded td:nth-child(7),
.vbtn.v-reply_dropped b,.vbtn.v-untranslated b,.vbtn.v-not_forwarded b{color:var(--bad)}
.v-internal td:nth-child(7),.vbtn.v-internal b{color:var(--dim)}
.finding{border:1px solid var(--line);border-left:6px solid var(--dim);border-radius:6px;padding:10px 14px;
margin:0 0 12px}
.finding.sev-error{border-left-color:var(--bad)}.finding.sev-warning{border-left-color:var(--warn)}
.finding.sev-info{border-left-color:var(--ok)}
.finding header{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.sev{font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.04em;padding:1px 7px;border-radius:10px;
color:#fff;background:var(--dim)}
.sev-error .sev{background:var(--bad)}.sev-warning .sev{background:var(--warn)}.sev-info .sev{background:var(--ok)}
.finding p{margin:6px 0}.finding ul{margin:4px 0;padding-left:20px}
.finding li{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12.5px}
.linkbtn{border:0;background:none;color:var(--link);cursor:pointer;font:inherit;padding:0;text-decoration:underline}
.tools{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin-bottom:8px}
#filter{font:inherit;padding:6px 10px;width:min(520px,100%);border:1px solid var(--muted);border-radius:6px}
.tablewrap{max-height:78vh;overflow:auto;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid var(--line);white-space:nowrap;text-align:left}
#mappings td:nth-child(-n+2),#mappings td:nth-child(n+8){text-align:right;font-variant-numeric:tabular-nums}
#mappings td:nth-child(7){font-weight:600}
thead th{position:sticky;top:0;background:var(--soft);z-index:1;padding:0;vertical-align:bottom;white-space:normal}
th button{all:unset;display:block;padding:6px 8px;cursor:pointer;font-weight:600;line-height:1.2}
th button:focus-visible{outline:2px solid var(--link)}
th[aria-sort=ascending] button::after{content:" \\25B2"}th[aria-sort=descending] button::after{content:" \\25BC"}
tbody tr:hover{background:#f0f4fa}tbody tr:target{background:#fff3c4}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(620px,1fr));gap:8px 28px}
figure{margin:0 0 24px;min-width:0}figcaption{color:var(--muted);max-width:900px}
svg.chart{width:100%;max-width:1000px;height:auto;display:block}
footer{padding:14px 28px;color:var(--muted);font-size:12px}
"""

_JS = """
(function () {
  "use strict";
  var table = document.getElementById("mappings");
  if (!table) { return; }
  var tbody = table.tBodies[0], input = document.getElementById("filter"), shown = document.getElementById("shown");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells), timer = 0;

  function sortBy(index, descending) {
    var numeric = heads[index].getAttribute("data-type") === "num", sign = descending ? -1 : 1;
    var items = Array.prototype.map.call(tbody.rows, function (row, i) {
      var cell = row.cells[index], v = cell.getAttribute("data-v");
      if (v === null) { v = cell.textContent; }
      if (numeric) { v = parseFloat(v); }
      return [v, i, row];
    });
    items.sort(function (a, b) {
      var x = a[0], y = b[0];
      var xm = numeric ? isNaN(x) : x === "", ym = numeric ? isNaN(y) : y === "";
      if (xm || ym) { return xm === ym ? a[1] - b[1] : (xm ? 1 : -1); }
      if (x < y) { return -sign; }
      if (x > y) { return sign; }
      return a[1] - b[1];
    });
    var frag = document.createDocumentFragment();
    for (var k = 0; k < items.length; k++) { frag.appendChild(items[k][2]); }
    tbody.appendChild(frag);
    heads.forEach(function (th, j) {
      th.setAttribute("aria-sort", j === index ? (descending ? "descending" : "ascending") : "none");
    });
  }

  function findingSet(n) {
    var el = document.getElementById("finding-" + n);
    var list = el ? (el.getAttribute("data-conns") || "").split(" ") : [];
    var set = {};
    for (var i = 0; i < list.length; i++) { if (list[i]) { set["c" + list[i]] = true; } }
    return set;
  }

  function applyFilter() {
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean), tests = [];
    terms.forEach(function (t) {
      if (t.indexOf("verdict:") === 0) {
        var cls = "v-" + t.slice(8);
        tests.push(function (row) { return row.className === cls; });
      } else if (t.indexOf("finding:") === 0) {
        var set = findingSet(t.slice(8));
        tests.push(function (row) { return set[row.id] === true; });
      } else {
        tests.push(function (row, text) { return text.indexOf(t) !== -1; });
      }
    });
    var rows = tbody.rows, n = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i], text = tests.length ? row.textContent.toLowerCase() : "", ok = true;
      for (var j = 0; j < tests.length && ok; j++) { ok = tests[j](row, text); }
      row.hidden = !ok;
      if (ok) { n++; }
    }
    shown.textContent = "showing " + n + " of " + rows.length;
  }

  function setFilter(value) {
    input.value = value;
    applyFilter();
    document.getElementById("mappings-section").scrollIntoView();
  }

  table.tHead.addEventListener("click", function (e) {
    var th = e.target.closest("th");
    if (!th) { return; }
    sortBy(heads.indexOf(th), th.getAttribute("aria-sort") === "ascending");
  });
  input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(applyFilter, 150); });
  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-filter]");
    if (b) { e.preventDefault(); setFilter(b.getAttribute("data-filter")); }
  });
  function reveal() {
    var id = location.hash.slice(1), row = id ? document.getElementById(id) : null;
    if (row && row.hidden && row.parentNode === tbody) { input.value = ""; applyFilter(); row.scrollIntoView(); }
  }
  window.addEventListener("hashchange", reveal);

  var params = new URLSearchParams(location.search);
  if (params.get("filter")) { input.value = params.get("filter"); }
  if (params.get("sort")) {
    var keys = heads.map(function (th) { return th.getAttribute("data-key"); });
    var at = keys.indexOf(params.get("sort"));
    if (at !== -1) { sortBy(at, params.get("order") === "desc"); }
  }
  applyFilter();
  reveal();
  table.setAttribute("data-ready", "true");
})();
"""


def _e(value: Any) -> str:
    """HTML-escape any value (None as an em dash)."""
    return "—" if value is None else html.escape(str(value), quote=True)


def _rich(text: str) -> str:
    """Escaped text with `backtick` spans as <code> (the way findings quote commands)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=True))


def _utc(ns: int, with_date: bool = True) -> str:
    t = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if with_date else t.strftime("%H:%M:%S.%f")[:-3]


def _span(first_ns: int, last_ns: int) -> str:
    if not first_ns:
        return "no packets"
    same_day = _utc(first_ns)[:10] == _utc(last_ns)[:10]
    return (f"{_utc(first_ns)} → {_utc(last_ns, with_date=not same_day)} UTC "
            f"({(last_ns - first_ns) / 1e9:.3f} s)")


def _addr_key(addr: str | None, port: int | None) -> str:
    """Sort key of an address:port cell: IPv4 before IPv6, numeric address, then port (compared as text)."""
    if addr is None:
        return ""
    try:
        ip = ipaddress.ip_address(addr)
        head = f"{ip.version}{int(ip):0{8 if ip.version == 4 else 32}x}"
    except ValueError:
        head = f"9{addr}"
    return f"{head}:{port or 0:05d}"


def _pair(a: int | None, b: int | None) -> str:
    return "—" if a is None and b is None else f"{_e(a)}/{_e(b)}"


def _summary(result: Result) -> str:
    counts = result.by_verdict()
    total = result.connections.height
    buttons = []
    for v in Verdict:
        n = counts.get(v.value, 0)
        buttons.append(
            f'<button type="button" class="vbtn v-{v.value}{" zero" if not n else ""}" '
            f'data-filter="verdict:{v.value}" title="{_e(VERDICT_MEANING[v.value])}; click to filter the table">'
            f"<b>{n}</b>{_e(v.value)}</button>")
    rewritten = result.connections.filter(
        result.connections["outside_src"].is_not_null()
        & (result.connections["outside_src"] != result.connections["inside_src"])).height
    ratio = result.port_preserved_ratio()
    facts: list[tuple[str, str]] = [
        ("connections", f"{total}"),
        ("port preserved", f"{ratio:.1%} of {rewritten} connection(s) with a rewritten source address"
                           if rewritten else "no connection had its source address rewritten"),
        ("clock offset", f"{result.clock_offset_s:+.6f} s (outside clock minus inside clock)"),
        ("pod networks", _e(", ".join(result.pod_networks) or "none")),
        ("unmatched packets", f"{result.unmatched_inside} inside (no counterpart outside), "
                              f"{result.unmatched_outside} outside (no counterpart inside, includes the node's "
                              "own traffic)"),
    ]
    for side, cap in (("inside", result.inside), ("outside", result.outside)):
        skipped = ", ".join(f"{_e(k)} {v}" for k, v in cap.skipped.items()) or "none"
        facts.append((f"{side} capture",
                      f'<span class="mono">{_e(cap.path)}</span> — {_e(cap.format)}, {_e(cap.link_type)}, '
                      f"{cap.records} frames, {cap.packets} IP packets in connections; skipped: {skipped}; "
                      f"{_e(_span(cap.first_ts_ns, cap.last_ts_ns))}"))
        for w in cap.warnings:
            facts.append((f"{side} warning", _e(w)))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (f'<section id="summary"><h2>Summary</h2><div class="verdicts">{"".join(buttons)}</div>'
            f'<dl class="facts">{dl}</dl></section>')


def _finding(i: int, f: Finding) -> str:
    sev = f.severity if f.severity in _SEVERITIES else "info"
    parts = [f'<article class="finding sev-{sev}" id="finding-{i}" '
             f'data-conns="{" ".join(str(int(c)) for c in f.connections)}">',
             f'<header><span class="sev">{_e(f.severity)}</span><h3>{_e(f.title)}</h3>'
             f'<span class="muted mono">{_e(f.kind)}</span></header>',
             f"<p>{_rich(f.summary)}</p>", f"<p><strong>Fix:</strong> {_rich(f.fix)}</p>"]
    if f.evidence:
        items = "".join(f"<li>{_rich(line)}</li>" for line in f.evidence)
        is_open = " open" if len(f.evidence) <= _EVIDENCE_OPEN else ""
        parts.append(f"<details{is_open}><summary>Evidence ({len(f.evidence)} line"
                     f"{'' if len(f.evidence) == 1 else 's'})</summary><ul>{items}</ul></details>")
    if f.connections:
        links = " ".join(f'<a href="#c{int(c)}">#{int(c)}</a>' for c in f.connections[:_CONN_LINKS])
        more = f" and {len(f.connections) - _CONN_LINKS} more" if len(f.connections) > _CONN_LINKS else ""
        parts.append(f"<p>Connections ({len(f.connections)}): {links}{more} — "
                     f'<button type="button" class="linkbtn" data-filter="finding:{i}">show them in the table'
                     "</button></p>")
    parts.append("</article>")
    return "".join(parts)


def _findings(findings: Sequence[Finding]) -> str:
    if not findings:
        body = '<p class="muted">No diagnosis was given for this report.</p>'
    else:
        body = "".join(_finding(i, f) for i, f in enumerate(findings))
    return f'<section id="diagnosis"><h2>Diagnosis</h2>{body}</section>'


def _rows(result: Result) -> str:
    conns = result.connections
    t0 = conns["first_ts_ns"].min() if conns.height else 0
    out = []
    for r in conns.iter_rows(named=True):
        start = (r["first_ts_ns"] - t0) / 1e9  # type: ignore[operator]
        outside = format_address(r["outside_src"], r["outside_sport"])
        if (r["outside_tuples"] or 0) > 1:
            outside += f" (+{r['outside_tuples'] - 1})"
        med, mx = r["latency_median_us"], r["latency_max_us"]
        lat = "—" if med is None else f"{med:.1f} / {mx:.1f}"
        ev_e = (r["evidence_egress_inside_frame"], r["evidence_egress_outside_frame"])
        ev_r = (r["evidence_reply_inside_frame"], r["evidence_reply_outside_frame"])
        # Plain cells (alignment and fonts come from the column's CSS); numeric columns sort on the number
        # their text starts with, address columns on a data-v key.
        out.append(
            f'<tr id="c{r["conn"]}" class="v-{_e(r["verdict"])}">'
            f'<td>{r["conn"]}</td><td>{start:.3f}</td><td>{_e(r["proto"])}</td>'
            f'<td data-v="{_e(_addr_key(r["inside_src"], r["inside_sport"]))}">'
            f"{_e(format_address(r['inside_src'], r['inside_sport']))}</td>"
            f'<td data-v="{_e(_addr_key(r["outside_src"], r["outside_sport"]))}">{_e(outside)}</td>'
            f'<td data-v="{_e(_addr_key(r["inside_dst"], r["inside_dport"]))}">'
            f"{_e(format_address(r['inside_dst'], r['inside_dport']))}</td>"
            f'<td>{_e(r["verdict"])}</td>'
            f'<td>{_pair(r["egress_inside"], r["egress_outside"])}</td>'
            f'<td>{_pair(r["reply_outside"], r["reply_inside"])}</td>'
            f"<td>{lat}</td><td>{_pair(*ev_e)}</td><td>{_pair(*ev_r)}</td></tr>")
    return "\n".join(out)


def _table(result: Result) -> str:
    heads = "".join(f'<th data-key="{key}" data-type="{kind}" aria-sort="none" title="{_e(tip)}">'
                    f'<button type="button">{_e(label).replace(chr(10), "<br>")}</button></th>'
                    for key, label, kind, tip in COLUMNS)
    n = result.connections.height
    return (
        '<section id="mappings-section"><h2>NAT mappings</h2>'
        '<div class="tools"><input id="filter" type="search" autocomplete="off" spellcheck="false" '
        'aria-label="filter the mappings" placeholder="filter: address, port, proto… '
        '(verdict:no_reply, finding:0)">'
        f'<span id="shown" class="muted">showing {n} of {n}</span>'
        '<span class="muted">click a column header to sort; every word must match</span></div>'
        '<div class="tablewrap"><table id="mappings"><thead><tr>'
        f"{heads}</tr></thead><tbody>\n{_rows(result)}\n</tbody></table></div></section>"
    )


def inline_svg(fig: Figure, prefix: str) -> str:
    """A figure as an <svg> element for an HTML page: ids prefixed (unique per page), no XML prologue."""
    svg = figure_bytes(fig, "svg").decode("utf-8")
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    title = _e(chart_title(fig))
    return re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"',
                  rf'<svg class="chart" role="img" aria-label="{title}" \1', svg, count=1)


def _charts(result: Result) -> str:
    figs = build_charts(result)
    parts = ['<section id="charts"><h2>Charts</h2><div class="charts">']
    for name, caption in CHART_CAPTIONS.items():
        fig = figs.get(name)
        if fig is None:
            parts.append(f'<figure id="chart-{name}"><p class="muted">{_e(name.replace("_", " "))}: no data '
                         "(no connection had its source address rewritten, or no packet matched exactly)."
                         "</p></figure>")
            continue
        parts.append(f'<figure id="chart-{name}">{inline_svg(fig, name)}<figcaption>{_e(caption)}</figcaption>'
                     "</figure>")
    parts.append("</div></section>")
    return "".join(parts)


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def render_html(result: Result, findings: Sequence[Finding]) -> str:
    """The report as one HTML document with everything inline; fetches nothing from the network."""
    ins, outs = result.inside, result.outside
    first = ins.first_ts_ns or outs.first_ts_ns
    last = ins.last_ts_ns or outs.last_ts_ns
    title = f"natproof: {ins.path} ↔ {outs.path}"
    worst = next((s for s in _SEVERITIES if any(f.severity == s for f in findings)), None)
    verdict_line = ", ".join(f"{n} {v}" for v, n in result.by_verdict().items() if n) or "no connections"
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{_csp(_JS)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="natproof {_e(natproof.__version__)}">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        '<header class="top"><h1>NAT proof: <span class="mono">',
        f'{_e(ins.path)}</span> ↔ <span class="mono">{_e(outs.path)}</span></h1>',
        f"<div>inside (pod side) ↔ outside (node); {_e(_span(first, last))}, inside clock</div>",
        f"<div><strong>{result.connections.height} connections</strong>: {_e(verdict_line)}"
        + (f"; diagnosis: {len(findings)} finding(s), worst {_e(worst)}" if worst else "") + "</div>",
        '<nav><a href="#summary">Summary</a><a href="#diagnosis">Diagnosis</a>'
        '<a href="#mappings-section">Mappings</a><a href="#charts">Charts</a></nav></header><main>',
        _summary(result), _findings(findings), _table(result), _charts(result),
        f"</main><footer>natproof {_e(natproof.__version__)} · {SCHEMA} · frame numbers count from 1, as "
        "Wireshark does</footer>",
        f"<script>{_JS}</script></body></html>\n",
    ])


def write_html(result: Result, findings: Sequence[Finding], path: str | os.PathLike[str]) -> None:
    """Write the report to ``path`` atomically (a failure leaves no half-written file)."""
    write_bytes(path, render_html(result, findings).encode("utf-8"))
