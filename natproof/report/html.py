"""A Result and its diagnosis as one self-contained HTML page: summary, findings, Services, mapping table, charts."""

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

from matplotlib.collections import Collection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import natproof
from natproof.conntrack import FORMATS
from natproof.decode import parse_underlay
from natproof.diagnose import Finding
from natproof.kernel import ABSENT_REASONS
from natproof.report.charts import RASTERIZE_ABOVE, build_charts, chart_title, figure_bytes
from natproof.report.export import write_bytes
from natproof.report.table import (
    ENCAP_NAMES,
    FATE_LABEL,
    fate_counts,
    format_address,
    format_pod,
    format_service,
    format_service_name,
    format_tuple,
    kernel_line,
    overlap_text,
)
from natproof.result import SCHEMA, Result
from natproof.verdicts import Verdict

VERDICT_MEANING = {
    "translated": "rewritten on the way through, and replies reverse-translated back to the initiator",
    "no_reply": "translated and sent on, nothing came back on the far side",
    "reply_dropped": "replies reached the far side of the NAT but never the initiator",
    "untranslated": "crossed the node with nothing rewritten",
    "not_forwarded": "the initiator's packets never crossed the node",
    "not_captured": "seen while the other side's capture was not running: nothing proven",
    "internal": "destination inside the pod network (or a Service answered on the node): not expected outside",
    "reply_other_path": "the initiator got replies that never crossed the captured far side: another return "
                        "path, or a capture that misses them; reverse translation not proven",
}
CHART_CAPTIONS = {
    "port_timeline": "Each dot is a connection whose source address the NAT rewrote (egress, a ClusterIP's, an "
                     "inbound one masqueraded, hairpin): when it started and the translated source port it got, "
                     "coloured by its initiator. Bands show ports kept from each pod's own ephemeral range; a "
                     "scatter over the whole range is random port allocation (--random-fully).",
    "port_map": "Original source port (as the initiator sent it) against the translated one. Dots on the dashed "
                "diagonal kept their port; dots off it were rewritten (a clash with another mapping, or random "
                "allocation). Connections only DNATed (NodePort with externalTrafficPolicy=Local) are not here.",
    "concurrency": "Mappings live at once (a mapping lives from its connection's first to its last packet) per "
                   "outside address, destination and protocol, against the size of the port range the NAT used "
                   "for it (dashed). A solid line reaching the dashed one means the pool is full.",
    "latency": "Time each packet took to cross the node (exact matches only; clock offset applied), egress and "
               "reply. Tens of microseconds is normal for a kernel NAT; milliseconds point at a busy node or a "
               "clock problem.",
    "service_backends": "Connections per backend for each Service (ClusterIP or NodePort), from the destination "
                        "the DNAT chose. kube-proxy picks a backend at random for each new connection, so over "
                        "many connections each backend should get about an even share (dashed); a backend that "
                        "never shows up, or takes everything, is worth a look at the Service's endpoints.",
}
OPTIONAL_CHARTS = ("service_backends",)
"""Charts left out of the page (not even a "no data" note) when there is nothing to draw: no Service."""
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("conn", "#", "num", "connection index, as findings cite it (#N)"),
    ("start", "start (s)", "num", "first packet, seconds since the first connection (inside clock)"),
    ("proto", "proto", "text", "protocol"),
    ("initiator", "started", "text",
     "who opened the connection: inside (a pod: egress) or outside (inbound: a NodePort, an ALG's data connection)"),
    ("original", "original\n(initiator → responder)", "text",
     "the connection as its initiator sent it: source → destination"),
    ("translated", "translated\n(as the responder got it)", "text",
     "the same packets after the NAT (SNAT changes the source, DNAT the destination); — when no leg after the NAT "
     "was captured"),
    ("service", "Service → backend", "text",
     "the ClusterIP or NodePort the connection was sent to, and the backend the DNAT chose"),
    ("verdict", "verdict", "text", "what the NAT did to the connection"),
    ("kernel", "kernel\nrecord", "text",
     "held against the node's conntrack record (--conntrack): confirmed (an entry with the same original and "
     "translated tuples), contradicts (an entry names another mapping: see the diagnosis) or absent (and why); — "
     "without a record"),
    ("fates", "packets by fate", "num",
     "every packet once: crossed (translated as the mapping says), leaked (crossed untranslated), inside only, "
     "outside only, node-made (a REJECT, an RST for an INVALID packet); sorts by the packets that did not cross"),
    ("egress", "egress pkts\nin/out", "num",
     "the initiator's packets seen inside / outside under the connection's tuples (packets by fate tells which "
     "crossed, leaked or stayed on one side)"),
    ("reply", "reply pkts\nout/in", "num", "reply packets seen outside / inside"),
    ("latency", "NAT µs\nmed / max", "num", "time to cross the node, median / max, microseconds"),
    ("egress_frames", "egress frames\nin/out", "num",
     "frame numbers (as Wireshark counts) of the first matched egress packet: inside capture / outside capture"),
    ("reply_frames", "reply frames\nin/out", "num",
     "frame numbers of the first matched reply packet: inside capture / outside capture"),
    ("legs", "legs", "num",
     "the connection's packets at each observation point under one tuple, in time order (open to see them)"),
)
NAME_COLUMN = ("pod", "pod\n(Service → backend pod)", "text",
               "names from --pods / --services (kubectl dumps) or ptcpdump's packet comments: the pod that opened the "
               "connection (or, started outside, the one it reached), the Service and the backend's pod; "
               "“?” lists every pod that may have held a reused address then")
"""The column a named result adds after "translated"."""


def columns(result: Result) -> tuple[tuple[str, str, str, str], ...]:
    """The mapping table's columns: COLUMNS, plus NAME_COLUMN when the result is named."""
    if result.names is None:
        return COLUMNS
    at = [c[0] for c in COLUMNS].index("translated") + 1
    return (*COLUMNS[:at], NAME_COLUMN, *COLUMNS[at:])


_CELL_CLASS = {"original": "addr", "translated": "addr", "service": "addr", "verdict": "verdict", "pod": "addr"}
"""The class of a mapping-table cell (fonts, alignment, colours), by column key; numbers are "num"."""
_SEVERITIES = ("error", "warning", "info")
_EVIDENCE_OPEN = 8
"""Evidence lists up to this long are shown expanded."""
_CONN_LINKS = 40
"""Connections linked by number under a finding; the rest are reachable with its table filter."""

# The mapping table is styled by cell class (see _CELL_CLASS): num, addr, verdict.
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
code,.mono,td.addr,.legs li{font-size:12.5px;
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
.v-translated td.verdict,.vbtn.v-translated b{color:var(--ok)}
.v-no_reply td.verdict,.vbtn.v-no_reply b{color:var(--warn)}
.v-reply_other_path td.verdict,.vbtn.v-reply_other_path b{color:var(--warn)}
.v-reply_dropped td.verdict,.v-untranslated td.verdict,.v-not_forwarded td.verdict,
.vbtn.v-reply_dropped b,.vbtn.v-untranslated b,.vbtn.v-not_forwarded b{color:var(--bad)}
.v-internal td.verdict,.vbtn.v-internal b{color:var(--dim)}
.f-leaked{color:var(--bad);font-weight:700}.f-inside_only,.f-outside_only{color:var(--warn)}
.k-confirmed{color:var(--ok)}.k-contradicts{color:var(--bad);font-weight:700}.k-absent{color:var(--warn)}
.f-node_generated{color:#8250df;font-weight:600}.inbound{color:#0a7ea4;font-weight:600}
td.addr .sub{display:block;color:var(--muted)}.ambiguous{color:var(--warn)}
.legs summary{cursor:pointer;color:var(--link)}.legs ol{margin:2px 0 2px;padding-left:18px}
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
td.num{text-align:right;font-variant-numeric:tabular-nums}
#mappings td.verdict{font-weight:600}#mappings td.legs{text-align:left}
table.plain{width:auto;min-width:60%}table.plain td{vertical-align:top}table.plain ul{margin:0;padding-left:0;
list-style:none}
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
    list.forEach(function (item) {
      if (!item) { return; }
      var ends = item.split("-"), lo = +ends[0], hi = ends.length > 1 ? +ends[1] : lo;
      for (var c = lo; c <= hi; c++) { set["c" + c] = true; }
    });
    return set;
  }

  function applyFilter() {
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean), tests = [];
    terms.forEach(function (t) {
      if (t.indexOf("verdict:") === 0) {
        var cls = "v-" + t.slice(8);
        tests.push(function (row) { return row.className === cls; });
      } else if (t.indexOf("service:") === 0 || t.indexOf("initiator:") === 0) {
        var attr = "data-" + t.slice(0, t.indexOf(":")), want = t.slice(t.indexOf(":") + 1);
        tests.push(function (row) { return (row.getAttribute(attr) || "").toLowerCase() === want; });
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
    rewritten = result.source_rewritten().height
    ratio = result.port_preserved_ratio()
    inbound = int((result.connections["initiator"] == "outside").sum())
    fates = result.by_fate()
    fate_text = ", ".join(f'<span class="f-{f}">{n} {_e(FATE_LABEL[f])}</span>' if n else f"{n} {_e(FATE_LABEL[f])}"
                          for f, n in fates.items())
    services = result.services()
    facts: list[tuple[str, str]] = [
        ("connections", f"{total}: {total - inbound} started inside (egress), "
                        f'<button type="button" class="linkbtn" data-filter="initiator:outside">{inbound} started '
                        "outside</button> (inbound)" if inbound else f"{total}, all started inside (egress)"),
        ("packets by fate", f"{fate_text} <span class=\"muted\">(every packet of a connection once)</span>"),
        ("Services", f'<a href="#services">{len(services)} Service(s)</a>, '
                     f"{sum(s['connections'] for s in services)} connection(s)" if services
                     else "no connection went to a ClusterIP or NodePort"),
        ("port preserved", f"{ratio:.1%} of {rewritten} connection(s) whose source address the NAT rewrote "
                           "(original against translated source)"
                           if rewritten else "no connection had its source address rewritten"),
        ("clock offset", f"{result.clock_offset_s:+.6f} s (outside clock minus inside clock)"),
        ("overlap", overlap_text(result)),
        ("pod networks", _e(", ".join(result.pod_networks) or "none")
         + (f" — {_e(result.pod_networks_why)}" if result.pod_networks_why else "")),
        ("unmatched packets", f"{result.unmatched_inside} inside (no counterpart outside), "
                              f"{result.unmatched_outside} outside (no counterpart inside, includes the node's "
                              "own traffic)"),
    ]
    if result.names is not None:
        n = result.names
        files = ", ".join(f'<span class="mono">{_e(src["path"])}</span>' for src in n.get("sources", [])) or "none"
        facts.append(("names", f"{n.get('pods', 0)} pod(s), {n.get('services', 0)} Service(s) from {files}"))
        for a in n.get("ambiguous", []):
            links = " ".join(f'<a href="#c{int(c)}">#{int(c)}</a>' for c in a["connections"][:_CONN_LINKS])
            facts.append(("ambiguous name", f'<span class="ambiguous">{_e(a["why"])}</span>: every candidate is '
                                            f"named, none picked — {links}"))
    kernel = kernel_line(result)
    if kernel is not None and result.conntrack is not None:
        kinds = ", ".join(FORMATS[k] for k in result.conntrack.formats)
        unread = f"; {result.conntrack.unparsed} line(s) were no entry" if result.conntrack.unparsed else ""
        facts.append(("kernel record", f"{_e(kernel.removeprefix('kernel record '))} — {_e(kinds)}{_e(unread)}"))
    for side, cap in (("inside", result.inside), ("outside", result.outside)):
        skipped = ", ".join(f"{_e(k)} {v}" for k, v in cap.skipped.items()) or "none"
        facts.append((f"{side} capture",
                      f'<span class="mono">{_e(cap.path)}</span> — {_e(cap.format)}, {_e(cap.link_type)}, '
                      f"{cap.records} frames, {cap.packets} IP packets in connections; skipped: {skipped}; "
                      f"{_e(_span(cap.first_ts_ns, cap.last_ts_ns))}"))
        if cap.chosen != "file":
            facts.append((f"{side} interfaces", f'<span class="mono">{_e(", ".join(cap.interfaces))}</span> — '
                          f"{_e(cap.chosen)}: {_e(cap.why)}"))
        for w in cap.warnings:
            facts.append((f"{side} warning", _e(w)))
    left = [f"{i.label()}: {i.note.removeprefix('left out: ')}" for i in result.interfaces if i.point is None]
    if result.split_by_interface and left:
        facts.append(("interfaces left out", _e("; ".join(left))))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (f'<section id="summary"><h2>Summary</h2><div class="verdicts">{"".join(buttons)}</div>'
            f'<dl class="facts">{dl}</dl></section>')


def _finding(i: int, f: Finding) -> str:
    sev = f.severity if f.severity in _SEVERITIES else "info"
    parts = [f'<article class="finding sev-{sev}" id="finding-{i}" '
             f'data-conns="{_ranges(f.connections)}">',
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


def _ranges(conns: Sequence[int]) -> str:
    """``0 2 5-41999``: connection numbers, sorted, runs of three or more as first-last."""
    nums, out, i = sorted({int(c) for c in conns}), [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.extend([f"{nums[i]}-{nums[j]}"] if j - i >= 2 else [str(c) for c in nums[i:j + 1]])
        i = j + 1
    return " ".join(out)


def _findings(findings: Sequence[Finding]) -> str:
    if not findings:
        body = '<p class="muted">No diagnosis was given for this report.</p>'
    else:
        body = "".join(_finding(i, f) for i, f in enumerate(findings))
    return f'<section id="diagnosis"><h2>Diagnosis</h2>{body}</section>'


def _fates(row: dict[str, Any]) -> str:
    counts = fate_counts(row)
    if not counts:
        return "—"
    return ", ".join(f'<span class="f-{f}">{n} {_e(FATE_LABEL[f])}</span>' for f, n in counts)


def _underlay_text(label: str | None) -> str:
    """" (in VXLAN 192.0.2.1 → 192.0.2.2, VNI 1)": how an overlay leg's packets travelled (its ``underlay``
    label); "" for a plain leg."""
    underlay = parse_underlay(label)
    if not underlay:
        return ""
    vni = "" if underlay.get("vni") is None else f", {'key' if underlay['encap'] == 'gre' else 'VNI'} {underlay['vni']}"
    name = ENCAP_NAMES.get(underlay["encap"], underlay["encap"])
    return _e(f" (in {name} {underlay['src']} → {underlay['dst']}{vni})")


def _legs(row: dict[str, Any]) -> str:
    legs = row["legs"] or []
    if not legs:
        return "—"
    items = "".join(
        f"<li>{_e(leg['observation_point'])}{_underlay_text(leg.get('underlay'))} "
        f"{_e(format_address(leg['src'], leg['sport']))} → "
        f"{_e(format_address(leg['dst'], leg['dport']))} · frame {_e(leg['first_frame'])} · {_e(leg['packets'])} "
        f"packet{'' if leg['packets'] == 1 else 's'}</li>" for leg in legs)
    return f'<details class="legs"><summary>{len(legs)}</summary><ol>{items}</ol></details>'


def _td(key: str, content: str, sort: str | None = None) -> str:
    kind = next(c[2] for c in (*COLUMNS, NAME_COLUMN) if c[0] == key)
    cls = _CELL_CLASS.get(key, "num" if kind == "num" else "")
    attrs = (f' class="{cls}"' if cls else "") + ("" if sort is None else f' data-v="{_e(sort)}"')
    return f"<td{attrs}>{content}</td>"


def _names_cell(row: dict[str, Any]) -> str:
    """A named row's pod (→ the peer's, pod to pod), its Service and the backend's pod; "?" lists candidates."""
    pod, peer = format_pod(row), format_pod(row, "peer_pod")
    first = _e(pod or "—") + (f" → {_e(peer)}" if peer else "")
    lines = [f'<span class="ambiguous">{first}</span>' if "?" in first else first]
    svc, backend = format_service_name(row), format_pod(row, "backend_pod")
    if svc:
        lines.append(f'<span class="sub">{_e(svc)}</span>')
    if backend and not (row.get("initiator") == "outside" and backend == pod):
        lines.append(f'<span class="sub">→ {_e(backend)}</span>')
    return "".join(lines) if len(lines) > 1 else lines[0]


def _rows(result: Result) -> str:
    conns = result.connections
    named = result.names is not None
    t0 = conns["first_ts_ns"].min() if conns.height else 0
    out = []
    for r in conns.iter_rows(named=True):
        start = (r["first_ts_ns"] - t0) / 1e9  # type: ignore[operator]
        trans = format_tuple(r, "trans", "→")
        if trans is not None and (r["outside_tuples"] or 0) > 1:
            trans += f" (+{r['outside_tuples'] - 1} tuples)"
        if trans is not None and r["evidence_level"] == "kernel_record":
            trans += " (from the kernel's record)"
        med, mx = r["latency_median_us"], r["latency_max_us"]
        lat = "—" if med is None else f"{med:.1f} / {mx:.1f}"
        ev_e = (r["evidence_egress_inside_frame"], r["evidence_egress_outside_frame"])
        ev_r = (r["evidence_reply_inside_frame"], r["evidence_reply_outside_frame"])
        svc = format_service(r, "→")
        svc_key = "" if svc is None else f"{format_address(r['service_ip'], r['service_port'])}/{r['proto']}"
        inbound = r["initiator"] == "outside"
        started = '<span class="inbound">outside (inbound)</span>' if inbound else _e(r["initiator"])
        not_crossed = sum(n for f, n in fate_counts(r) if f != "crossed")
        # Numeric columns sort on data-v or the number their text starts with; address columns on a data-v key.
        out.append(
            f'<tr id="c{r["conn"]}" class="v-{_e(r["verdict"])}" data-initiator="{_e(r["initiator"])}"'
            + (f' data-service="{_e(svc_key)}"' if svc else "") + ">"
            + _td("conn", str(r["conn"])) + _td("start", f"{start:.3f}") + f"<td>{_e(r['proto'])}</td>"
            + f"<td>{started}</td>"
            + _td("original", _e(format_tuple(r, "orig", "→")), _addr_key(r["orig_src"], r["orig_sport"])
                  + _addr_key(r["orig_dst"], r["orig_dport"]))
            + _td("translated", _e(trans), _addr_key(r["trans_src"], r["trans_sport"])
                  + _addr_key(r["trans_dst"], r["trans_dport"]))
            + (_td("pod", _names_cell(r), format_pod(r) or "") if named else "")
            + _td("service", _e(svc).replace(" → ", " <br>→ ", 1) if svc else "", svc_key)
            + _td("verdict", _e(r["verdict"]))
            + _td("kernel", _kernel_cell(r), r["kernel"] or "")
            + _td("fates", _fates(r), str(not_crossed))
            + _td("egress", _pair(r["egress_inside"], r["egress_outside"]))
            + _td("reply", _pair(r["reply_outside"], r["reply_inside"]))
            + _td("latency", lat) + _td("egress_frames", _pair(*ev_e)) + _td("reply_frames", _pair(*ev_r))
            + _td("legs", _legs(r), str(len(r["legs"] or [])))
            + "</tr>")
    return "\n".join(out)


def _kernel_cell(row: dict[str, Any]) -> str:
    """confirmed, contradicts (with the entry's line) or absent (with the reason, in full on hover); — without a
    record."""
    state = row["kernel"]
    if state is None:
        return "—"
    if state == "contradicts":
        return f'<span class="k-contradicts">contradicts</span> (line {_e(row["kernel_line"])})'
    if state == "absent":
        reason = row["kernel_reason"] or ""
        return (f'<span class="k-absent" title="{_e(ABSENT_REASONS.get(reason, reason))}">absent</span> '
                f'<span class="muted">{_e(reason.replace("_", " "))}</span>')
    return f'<span class="k-confirmed" title="entry at line {_e(row["kernel_line"])}">confirmed</span>'


def _services(result: Result) -> str:
    services = result.services()
    if not services:
        return ('<section id="services"><h2>Services</h2><p class="muted">No connection went to a Service '
                "(ClusterIP or NodePort).</p></section>")
    rows = []
    for svc in services:
        key = f"{format_address(svc['address'], svc['port'])}/{svc['proto']}"
        backends = "".join(
            f"<li>{_e('backend not seen' if b['address'] is None else format_address(b['address'], b['port']))}"
            + (f" ({_e(b['pod'])})" if b.get("pod") else "")
            + f": {b['connections']} ({b['connections'] / svc['connections']:.0%})</li>" for b in svc["backends"])
        name = ""
        if svc.get("name"):
            port = f":{svc['port_name']}" if svc.get("port_name") else ""
            name = f'<span class="sub">{_e(svc["name"] + port)}</span>'
        rows.append(f'<tr><td class="addr"><button type="button" class="linkbtn" data-filter="service:{_e(key)}" '
                    f'title="show its connections in the mapping table">{_e(key)}</button>{name}</td>'
                    f"<td>{_e(svc['type'])}</td><td class=\"num\">{svc['connections']}</td>"
                    f'<td class="num">{len(svc["backends"])}</td><td class="addr"><ul>{backends}</ul></td></tr>')
    return ('<section id="services"><h2>Services</h2><p class="muted">Connections sent to a ClusterIP or NodePort, '
            "and the backends the DNAT chose for them (kube-proxy picks one at random for each new connection). "
            "“backend not seen”: no leg after the DNAT was captured.</p>"
            '<table id="services-table" class="plain"><thead><tr><th>VIP:port/proto</th><th>type</th>'
            "<th>connections</th><th>backends</th><th>backends: connections (share)</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></section>")


def _table(result: Result) -> str:
    heads = "".join(f'<th data-key="{key}" data-type="{kind}" aria-sort="none" title="{_e(tip)}">'
                    f'<button type="button">{_e(label).replace(chr(10), "<br>")}</button></th>'
                    for key, label, kind, tip in columns(result))
    n = result.connections.height
    return (
        '<section id="mappings-section"><h2>NAT mappings</h2>'
        '<div class="tools"><input id="filter" type="search" autocomplete="off" spellcheck="false" '
        'aria-label="filter the mappings" placeholder="filter: address, port, proto… '
        '(verdict:no_reply, finding:0, initiator:outside, service:10.96.0.1:443/tcp)">'
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


def _rasterize_heavy(fig: Figure) -> None:
    """Draw a line or area of more than RASTERIZE_ABOVE points as an image inside the page's SVG (as the charts
    already draw big scatter plots): the concurrency curves of 100,000 connections are 20 MB of path otherwise."""
    for artist in fig.findobj(lambda a: isinstance(a, (Line2D, Collection))):
        if isinstance(artist, Line2D):
            points = len(artist.get_xydata())
        else:
            points = max(len(artist.get_offsets()), sum(len(p.vertices) for p in artist.get_paths()))
        if points > RASTERIZE_ABOVE:
            artist.set_rasterized(True)


def _charts(result: Result) -> str:
    figs = build_charts(result)
    parts = ['<section id="charts"><h2>Charts</h2><div class="charts">']
    for name, caption in CHART_CAPTIONS.items():
        fig = figs.get(name)
        if fig is None and name in OPTIONAL_CHARTS:
            continue
        if fig is None:
            parts.append(f'<figure id="chart-{name}"><p class="muted">{_e(name.replace("_", " "))}: no data '
                         "(no connection had its source address rewritten, or no packet matched exactly)."
                         "</p></figure>")
            continue
        _rasterize_heavy(fig)
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
        '<nav><a href="#summary">Summary</a><a href="#diagnosis">Diagnosis</a><a href="#services">Services</a>'
        '<a href="#mappings-section">Mappings</a><a href="#charts">Charts</a></nav></header><main>',
        _summary(result), _findings(findings), _services(result), _table(result), _charts(result),
        f"</main><footer>natproof {_e(natproof.__version__)} · {SCHEMA} · frame numbers count from 1, as "
        "Wireshark does</footer>",
        f"<script>{_JS}</script></body></html>\n",
    ])


def write_html(result: Result, findings: Sequence[Finding], path: str | os.PathLike[str]) -> None:
    """Write the report to ``path`` atomically (a failure leaves no half-written file)."""
    write_bytes(path, render_html(result, findings).encode("utf-8"))
