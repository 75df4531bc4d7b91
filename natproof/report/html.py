"""A Result and its diagnosis as one self-contained HTML page: summary, findings, Services, mapping table, charts."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import html
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
from matplotlib.collections import Collection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import natproof
from natproof.assemble import FATES
from natproof.conntrack import FORMATS
from natproof.decode import parse_underlay
from natproof.diagnose import Finding
from natproof.kernel import ABSENT_REASONS
from natproof.report.charts import RASTERIZE_ABOVE, build_charts, chart_title, figure_bytes
from natproof.report.export import write_bytes, write_result
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
from natproof.result import NAME_SCHEMA, SCHEMA, Result, flags_expr, other_mappings_text
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
    ("reply", "reply pkts\nout/in", "num",
     "reply packets seen outside / inside: the far end's (packets the node made, such as a REJECT's RST, are no "
     "reply: packets by fate counts them as node-made)"),
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
EMBED_LEGS_MAX = 20_000
"""Above this many connections the page embeds no legs (each connection's packets at each observation point, most
of a row's bytes): write_html writes every connection, legs included, to a Parquet file beside the page
(sidecar_path) and links it."""
TABLE_ROWS_MAX = 150_000
"""The most connections the mapping table holds, problem ones first; the rest are only in the Parquet file. A row
without legs is 30 to 50 bytes of page (30 for the lab's traffic, 52 for random ports and frame numbers): the page
stays under 10 MB however many connections there are."""
PAGE_ROWS = 100
"""Rows the mapping table shows at a time; a pager turns the pages."""
SIDECAR_SUFFIX = ".connections.parquet"
_PROBLEMS_TIP = ("connections to look at first: a verdict other than translated or internal, a flag that something "
                 "went wrong (leaked or node-made packets, an ICMP error, more than one outside tuple, replies not "
                 "reverse-translated, the other capture off, an ambiguous name), a kernel record that contradicts "
                 "it, or a warning or error in the diagnosis that cites it")

# The mapping table is styled by cell class (see _CELL_CLASS): num, addr, verdict.
_CSS = """
table.diff{border-collapse:collapse;margin:4px 0 10px}table.diff td,table.diff th{padding:2px 10px;
border-bottom:1px solid var(--line);text-align:left}table.diff tr.changed td{font-weight:600}
details.headers{margin:4px 0}details.headers summary{cursor:pointer}
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
tbody tr:hover{background:#f0f4fa}tbody tr:target,tbody tr.target{background:#fff3c4}
.pager{display:flex;gap:8px;align-items:center;margin:8px 0}.pager[hidden]{display:none}
.pager button{font:inherit;padding:3px 10px}
.note{background:#fff8e1;border:1px solid #e6d08a;border-radius:6px;padding:6px 10px}
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
  // The rows come from the column data below the table (see TableData): one page of them in the DOM at a time.
  var D = JSON.parse(document.getElementById("mappings-data").textContent);
  var T = D.t, K = D.kinds, P = D.k, n = D.kind.length, size = D.page, DASH = "\\u2014";
  var tbody = table.tBodies[0], input = document.getElementById("filter"), shown = document.getElementById("shown");
  var pager = document.getElementById("pager"), info = document.getElementById("page-info");
  var first = document.getElementById("problems-first");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells), timer = 0;

  function column(a, delta) {
    var out = new Float64Array(a.length), last = 0;
    for (var i = 0; i < a.length; i++) {
      if (a[i] === null) { out[i] = NaN; } else if (delta) { last += a[i]; out[i] = last; } else { out[i] = a[i]; }
    }
    return out;
  }
  var conn = D.conn ? column(D.conn, true) : null, start = column(D.start, true), osp = column(D.osp);
  var tsp = column(D.tsp), lat = column(D.lat), latx = column(D.latx);
  var fei = column(D.fei, true), feo = column(D.feo, true), fri = column(D.fri, true), fro = column(D.fro, true);
  var problem = new Uint8Array(n);
  column(D.problems, true).forEach(function (i) { problem[i] = 1; });
  for (var i = 0; i < n; i++) { tsp[i] += osp[i] || 0; }  // stored as the change from the original port
  var L = D.legs, legAt = null, lsp, lf, lp;
  if (L) {
    legAt = new Float64Array(n + 1);
    for (i = 0; i < n; i++) { legAt[i + 1] = legAt[i] + K[D.kind[i]][P.legs]; }
    lsp = column(L.sp); lf = column(L.f, true); lp = column(L.p);
  }

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")
      .replace(/'/g, "&#x27;");
  }
  function text(h) {
    return h.replace(/<\\/(td|li)>/g, " ").replace(/<[^>]*>/g, "").replace(/&lt;/g, "<").replace(/&gt;/g, ">")
      .replace(/&quot;/g, '"').replace(/&#x27;/g, "'").replace(/&amp;/g, "&");
  }
  function num(v) { return isNaN(v) ? DASH : String(v); }
  function pair(a, b) { return isNaN(a) && isNaN(b) ? DASH : num(a) + "/" + num(b); }
  function host(a, port) { return isNaN(port) ? T.addr[a] : T.addr[a] + ":" + port; }
  function tuple(src, port, dst) { return host(src, port) + " \\u2192 " + T.ep[dst]; }
  function tenths(v) {
    var a = Math.abs(v);
    return isNaN(v) ? DASH : (v < 0 ? "-" : "") + Math.floor(a / 10) + "." + (a % 10);
  }
  function ms(v) { var s = String(v % 1000); return Math.floor(v / 1000) + "." + "000".slice(s.length) + s; }
  function connOf(i) { return conn ? conn[i] : i; }

  // Each cell as render_html writes it (TableData.cell): the same markup, from the same data.
  var cells = {
    conn: function (i) { return String(connOf(i)); },
    start: function (i) { return ms(start[i]); },
    proto: function (i, k) { return T.proto[k[P.proto]]; },
    initiator: function (i, k) { return T.init[k[P.init]][0]; },
    original: function (i, k) { return tuple(k[P.osrc], osp[i], k[P.odst]); },
    translated: function (i, k) {
      return k[P.tsrc] < 0 ? DASH : tuple(k[P.tsrc], tsp[i], k[P.tdst]) + T.suffix[k[P.suffix]];
    },
    pod: function (i, k) { return T.pod[k[P.pod]][0]; },
    service: function (i, k) { return T.service[k[P.service]][0]; },
    verdict: function (i, k) { return esc(T.verdict[k[P.verdict]]); },
    kernel: function (i, k) { return T.kernel[k[P.kernel]][0]; },
    fates: function (i, k) { return T.fates[k[P.fates]][0]; },
    egress: function (i, k) { return T.pair[k[P.egress]][0]; },
    reply: function (i, k) { return T.pair[k[P.reply]][0]; },
    latency: function (i) { return isNaN(lat[i]) ? DASH : tenths(lat[i]) + " / " + tenths(lat[i] + latx[i]); },
    egress_frames: function (i) { return pair(fei[i], feo[i]); },
    reply_frames: function (i) { return pair(fri[i], fro[i]); },
    legs: function (i, k) {
      var count = k[P.legs];
      if (!count) { return DASH; }
      if (!L) { return String(count); }
      var h = '<details class="legs"><summary>' + count + "</summary><ol>";
      for (var j = legAt[i]; j < legAt[i + 1]; j++) {
        h += "<li>" + T.leg[L.k[j]] + " " + host(L.s[j], lsp[j]) + " \\u2192 " + T.ep[L.d[j]] + " \\u00b7 frame " +
          num(lf[j]) + " \\u00b7 " + lp[j] + " packet" + (lp[j] === 1 ? "" : "s") + "</li>";
      }
      return h + "</ol></details>";
    }
  };
  function rowHtml(i) {
    var k = K[D.kind[i]], svc = T.service[k[P.service]][1];
    var h = '<tr id="c' + connOf(i) + '" class="v-' + esc(T.verdict[k[P.verdict]]) + '" data-initiator="' +
      esc(T.init[k[P.init]][1]) + '"' + (svc ? ' data-service="' + esc(svc) + '"' : "") + ">";
    for (var j = 0; j < D.cols.length; j++) { h += "<td" + D.cls[j] + ">" + cells[D.cols[j]](i, k) + "</td>"; }
    return h + "</tr>";
  }

  // Sort keys: one to three numbers per row (NaN first: no value, sorted last either way).
  var keyCache = {};
  function rank(strings) {
    var at = [], out = new Float64Array(strings.length).fill(NaN), r = -1, prev = null;
    for (var j = 0; j < strings.length; j++) { if (strings[j] !== "" && strings[j] !== null) { at.push(j); } }
    at.sort(function (a, b) { return strings[a] < strings[b] ? -1 : (strings[a] > strings[b] ? 1 : 0); });
    at.forEach(function (j) { if (strings[j] !== prev) { r++; prev = strings[j]; } out[j] = r; });
    return out;
  }
  function perKind(part, values) {
    var out = new Float64Array(n);
    for (var j = 0; j < n; j++) {
      var v = K[D.kind[j]][part];
      out[j] = v < 0 ? NaN : (values ? values[v] : v);
    }
    return out;
  }
  function second(table) { return table.map(function (e) { return e[1]; }); }
  function orZero(a) { return a.map(function (v) { return isNaN(v) ? 0 : v; }); }
  function keysOf(key) {
    if (keyCache[key]) { return keyCache[key]; }
    var k;
    switch (key) {
      case "conn": k = [conn || Float64Array.from({length: n}, function (v, j) { return j; })]; break;
      case "start": k = [start]; break;
      case "proto": k = [perKind(P.proto, rank(T.proto.map(text)))]; break;
      case "initiator": k = [perKind(P.init, rank(T.init.map(function (e) { return text(e[0]); })))]; break;
      case "original": k = [perKind(P.osrc), orZero(osp), perKind(P.odst)]; break;
      case "translated": k = [perKind(P.tsrc), orZero(tsp), perKind(P.tdst)]; break;
      case "pod": k = [perKind(P.pod, rank(second(T.pod)))]; break;
      case "service": k = [perKind(P.service, rank(second(T.service)))]; break;
      case "verdict": k = [perKind(P.verdict, rank(T.verdict))]; break;
      case "kernel": k = [perKind(P.kernel, rank(second(T.kernel)))]; break;
      case "fates": k = [perKind(P.fates, second(T.fates))]; break;
      case "egress": k = [perKind(P.egress, second(T.pair).map(function (v) { return v === null ? NaN : v; }))]; break;
      case "reply": k = [perKind(P.reply, second(T.pair).map(function (v) { return v === null ? NaN : v; }))]; break;
      case "latency": k = [lat]; break;
      case "egress_frames": k = [fei]; break;
      case "reply_frames": k = [fri]; break;
      case "legs": k = [perKind(P.legs)]; break;
      default: k = [new Float64Array(n)];
    }
    keyCache[key] = k;
    return k;
  }

  var sortKey = null, descending = false, order = null, visible = [], page = 0, texts = null;
  function arrange() {
    var all = [];
    for (var j = 0; j < n; j++) { all.push(j); }
    if (sortKey !== null) {
      var k = keysOf(sortKey), sign = descending ? -1 : 1;
      all.sort(function (a, b) {
        var xm = isNaN(k[0][a]), ym = isNaN(k[0][b]);
        if (xm || ym) { return xm === ym ? a - b : (xm ? 1 : -1); }
        for (var c = 0; c < k.length; c++) {
          if (k[c][a] !== k[c][b]) { return k[c][a] < k[c][b] ? -sign : sign; }
        }
        return a - b;
      });
    }
    if (first.checked) {
      all = all.filter(function (j) { return problem[j]; }).concat(all.filter(function (j) { return !problem[j]; }));
    }
    order = all;
    heads.forEach(function (th) {
      var on = th.getAttribute("data-key") === sortKey;
      th.setAttribute("aria-sort", on ? (descending ? "descending" : "ascending") : "none");
    });
  }

  function findingSet(n) {
    var el = document.getElementById("finding-" + n), set = {};
    var list = el ? (el.getAttribute("data-conns") || "").split(" ") : [];
    list.forEach(function (item) {
      if (!item) { return; }
      var ends = item.split("-"), lo = +ends[0], hi = ends.length > 1 ? +ends[1] : lo;
      for (var c = lo; c <= hi; c++) { set[c] = true; }
    });
    return set;
  }
  function rowText(i) {
    if (!texts) { texts = new Array(n); }
    if (texts[i] === undefined) { texts[i] = text(rowHtml(i)).toLowerCase(); }
    return texts[i];
  }

  function applyFilter() {
    var terms = input.value.toLowerCase().split(/\\s+/).filter(Boolean), tests = [];
    terms.forEach(function (t) {
      var want = t.slice(t.indexOf(":") + 1);
      if (t.indexOf("verdict:") === 0) {
        tests.push(function (i, k) { return T.verdict[k[P.verdict]] === want; });
      } else if (t.indexOf("service:") === 0) {
        tests.push(function (i, k) { return T.service[k[P.service]][1].toLowerCase() === want; });
      } else if (t.indexOf("initiator:") === 0) {
        tests.push(function (i, k) { return T.init[k[P.init]][1].toLowerCase() === want; });
      } else if (t.indexOf("finding:") === 0) {
        var set = findingSet(want);
        tests.push(function (i) { return set[connOf(i)] === true; });
      } else {
        tests.push(function (i) { return rowText(i).indexOf(t) !== -1; });
      }
    });
    visible = !tests.length ? order : order.filter(function (i) {
      var k = K[D.kind[i]];
      for (var j = 0; j < tests.length; j++) { if (!tests[j](i, k)) { return false; } }
      return true;
    });
    page = 0;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(visible.length / size));
    page = Math.max(0, Math.min(page, pages - 1));
    var from = page * size, to = Math.min(visible.length, from + size), h = [];
    for (var j = from; j < to; j++) { h.push(rowHtml(visible[j])); }
    tbody.innerHTML = h.join("\\n");
    shown.textContent = "showing " + visible.length + " of " + n;
    pager.hidden = visible.length <= size;
    info.textContent = "rows " + (to ? from + 1 : 0) + "\\u2013" + to + " of " + visible.length + " \\u00b7 page " +
      (page + 1) + " of " + pages;
    pager.querySelectorAll("button").forEach(function (b) {
      var go = b.getAttribute("data-page");
      b.disabled = go === "first" || go === "previous" ? page === 0 : page === pages - 1;
    });
  }
  function refresh() { arrange(); applyFilter(); render(); }

  function setFilter(value) {
    input.value = value;
    applyFilter();
    render();
    document.getElementById("mappings-section").scrollIntoView();
  }
  function rowOf(c) {
    if (!conn) { return c >= 0 && c < n && c === Math.floor(c) ? c : -1; }
    var lo = 0, hi = n - 1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (conn[mid] === c) { return mid; }
      if (conn[mid] < c) { lo = mid + 1; } else { hi = mid - 1; }
    }
    return -1;
  }
  function reveal() {
    var id = location.hash.slice(1), i = /^c[0-9]+$/.test(id) ? rowOf(+id.slice(1)) : -1;
    if (i === -1) { return; }
    var at = visible.indexOf(i);
    if (at === -1) { input.value = ""; applyFilter(); at = visible.indexOf(i); }
    page = Math.floor(at / size);
    render();
    var row = document.getElementById(id);
    if (row) { row.classList.add("target"); row.scrollIntoView(); }
  }

  table.tHead.addEventListener("click", function (e) {
    var th = e.target.closest("th");
    if (!th) { return; }
    descending = th.getAttribute("aria-sort") === "ascending";
    sortKey = th.getAttribute("data-key");
    first.checked = false;
    refresh();
  });
  first.addEventListener("change", refresh);
  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { applyFilter(); render(); }, 150);
  });
  pager.addEventListener("click", function (e) {
    var b = e.target.closest("button");
    if (!b) { return; }
    var go = b.getAttribute("data-page");
    page = go === "first" ? 0 : go === "previous" ? page - 1 : go === "next" ? page + 1 : Infinity;
    render();
    table.parentNode.scrollTop = 0;
  });
  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-filter]");
    if (b) { e.preventDefault(); setFilter(b.getAttribute("data-filter")); return; }
    var a = e.target.closest("a[href^='#c']");
    if (a && a.getAttribute("href") === location.hash) { reveal(); }
  });
  window.addEventListener("hashchange", reveal);

  var params = new URLSearchParams(location.search);
  if (params.get("filter")) { input.value = params.get("filter"); }
  if (params.get("sort") && heads.some(function (th) { return th.getAttribute("data-key") === params.get("sort"); })) {
    sortKey = params.get("sort");
    descending = params.get("order") === "desc";
    first.checked = false;
  }
  refresh();
  if (params.get("page")) { page = parseInt(params.get("page"), 10) - 1 || 0; render(); }
  reveal();
  table.setAttribute("data-ready", "true");
  table.setAttribute("data-ready-ms", String(Math.round(performance.now())));  // since the page was asked for
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
                        "outside</button> (inbound)" if inbound
                        else f"{total}, all started inside (egress)" if total else "0"),
        ("packets by fate", f"{fate_text} <span class=\"muted\">(every packet of a connection once)</span>"),
        ("Services", f'<a href="#services">{len(services)} Service(s)</a>, '
                     f"{sum(s['connections'] for s in services)} connection(s)" if services
                     else "no connection went to a ClusterIP or NodePort"),
        ("port preserved", f"{ratio:.1%} of {rewritten} connection(s) whose source address the NAT rewrote "
                           "(original against translated source)"
                           if rewritten else "no connection had its source address rewritten"),
        ("clock offset", f"{result.clock_offset_s:+.6f} s (outside clock minus inside clock)"
                         + (f"; {_e(result.clock_offset_note() or '')}" if result.clock_offset_one_way else "")),
        ("overlap", overlap_text(result)),
        ("pod networks", _e(", ".join(result.pod_networks) or "none")
         + (f" — {_e(result.pod_networks_why)}" if result.pod_networks_why else "")),
        ("unmatched packets", f"{result.unmatched_inside} inside (of connections that should have crossed: no "
                              "counterpart outside), "
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
        for w in result.conntrack.warnings:
            facts.append(("kernel record warning", _e(w)))
    for side, cap in (("inside", result.inside), ("outside", result.outside)):
        skipped = ", ".join(f"{_e(k)} {v}" for k, v in cap.skipped.items()) or "none"
        facts.append((f"{side} capture",
                      f'<span class="mono">{_e(cap.path)}</span> — {_e(cap.format)}, {_e(cap.link_type)}, '
                      f"{cap.records} frames, {cap.packets} IP packets read; skipped: {skipped}; "
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


def _cell_class(key: str) -> str:
    """`` class="num"``: a mapping-table cell's class attribute, by column key (see _CELL_CLASS)."""
    kind = next(c[2] for c in (*COLUMNS, NAME_COLUMN) if c[0] == key)
    cls = _CELL_CLASS.get(key, "num" if kind == "num" else "")
    return f' class="{cls}"' if cls else ""


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


def _service_cell(row: dict[str, Any]) -> tuple[str, str]:
    """The Service → backend cell and its key (``10.96.0.1:443/tcp``: the filter's and the row's data-service); two
    empty strings for a connection to no Service."""
    svc = format_service(row, "→")
    if svc is None:
        return "", ""
    return (_e(svc).replace(" → ", " <br>→ ", 1),
            f"{format_address(row['service_ip'], row['service_port'])}/{row['proto']}")


def _trans_suffix(row: dict[str, Any]) -> str:
    if not row["has_trans"]:
        return ""
    kernel = " (from the kernel's record)" if row["evidence_level"] == "kernel_record" else ""
    return _e(other_mappings_text(row) + kernel)


def problem_connections(result: Result, findings: Sequence[Finding] = ()) -> pl.Series:
    """Per connection, whether the table shows it first: a verdict other than translated or internal, a flag that
    says something went wrong (leak, node-made packets, an ICMP error, more than one outside tuple, replies not
    reverse-translated, the other capture not running, an ambiguous name; not hairpin or seq_shift), a kernel record
    that contradicts it, or a warning or error finding that cites it."""
    cited = sorted({int(c) for f in findings if f.severity in ("error", "warning") for c in f.connections})
    conns = result.connections
    candidates = [c for c in conns.columns if c.endswith("_candidates")]
    expr = (~pl.col("verdict").is_in(["translated", "internal"])
            | flags_expr().list.set_difference(pl.lit(["hairpin", "seq_shift", "payload_rewritten"])).list.len().gt(0)
            | pl.col("kernel").eq("contradicts").fill_null(False)
            | pl.col("conn").is_in(cited))
    for c in candidates:
        expr = expr | pl.col(c).is_not_null()
    return conns.select(expr.fill_null(True).alias("problem"))["problem"]


class _Interned:
    """Distinct cell contents in first-seen order; rows point at one by its index."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._at: dict[Any, int] = {}

    def add(self, value: Any) -> int:
        key = tuple(value) if isinstance(value, list) else value
        if key not in self._at:
            self._at[key] = len(self.values)
            self.values.append(value)
        return self._at[key]


def _family(frame: pl.DataFrame, cols: Sequence[str], fmt: Callable[[dict[str, Any]], Any],
            table: _Interned) -> np.ndarray:
    """Each row's index in ``table`` of ``fmt`` of its ``cols``; fmt runs once per distinct combination."""
    if frame.height == 0:
        return np.zeros(0, dtype=np.int64)
    ids = frame.select((pl.struct(cols).rank("dense").cast(pl.Int64) - 1).alias("_k"))["_k"]
    uniq = frame.select(cols).with_columns(ids).unique("_k", keep="first").sort("_k").drop("_k")
    index = np.array([table.add(fmt(r)) for r in uniq.iter_rows(named=True)], dtype=np.int64)
    return index[ids.to_numpy()]


def _delta(values: Sequence[int | None]) -> list[int | None]:
    """Each value less the last non-null one before it (nulls stay null): small numbers for growing columns."""
    out: list[int | None] = []
    last = 0
    for v in values:
        if v is None:
            out.append(None)
        else:
            out.append(v - last)
            last = v
    return out


def _scaled(values: Sequence[float | None], digits: int) -> list[int | None]:
    """Numbers as integers of their last shown digit (12.345 with 1 digit: 123), rounded as Python formats them."""
    return [None if v is None else int(f"{v:.{digits}f}".replace(".", "")) for v in values]


def _ms(v: int) -> str:
    return f"{v // 1000}.{v % 1000:03d}"


def _tenths(v: int | None) -> str:
    return "—" if v is None else f"{'-' if v < 0 else ''}{abs(v) // 10}.{abs(v) % 10}"


def _num(v: int | None) -> str:
    return "—" if v is None else str(v)


def _pair(a: int | None, b: int | None) -> str:
    return "—" if a is None and b is None else f"{_num(a)}/{_num(b)}"


def _host(addr: str, port: int | None) -> str:
    return addr if port is None else f"{addr}:{port}"


PARTS = ("proto", "init", "osrc", "odst", "tsrc", "tdst", "suffix", "pod", "service", "verdict", "kernel", "fates",
         "egress", "reply", "legs")
"""What a row kind is made of: the index of each of its cells' contents in its table (-1: none); the count of legs."""


@dataclasses.dataclass
class TableData:
    """The mapping table as compact column data, embedded in the page as JSON and rendered by its script a page of
    rows at a time (render_html also renders the first page, so the file shows it without a script).

    Cells whose contents repeat (protocol, verdict, Service, packets by fate, addresses, ...) are stored once in a
    table (``tables``) and combined per row through a row kind (``kinds``, ``kind``); what differs from row to row
    (ports, times, frame numbers) is stored per row, as the difference from the row before where it grows."""

    cols: tuple[str, ...]
    total: int
    """Connections in the result (the table holds ``len(kind)`` of them: all, up to TABLE_ROWS_MAX)."""
    conn: list[int]
    kind: list[int]
    kinds: list[list[int]]
    tables: dict[str, list[Any]]
    start: list[int]
    osp: list[int | None]
    tsp: list[int | None]
    """Translated source ports (the JSON holds each as its change from the original one: mostly 0)."""
    lat: list[int | None]
    latx: list[int | None]
    frames: dict[str, list[int | None]]
    problem: list[bool]
    legs: dict[str, list[Any]] | None
    leg_at: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.part = {p: i for i, p in enumerate(PARTS)}
        self.leg_at = [0]
        for k in self.kind:
            self.leg_at.append(self.leg_at[-1] + self.kinds[k][self.part["legs"]])

    def __len__(self) -> int:
        return len(self.kind)

    def default_order(self) -> list[int]:
        """Problem connections first, each group in connection order (the page's order until sorted)."""
        return ([i for i, p in enumerate(self.problem) if p] + [i for i, p in enumerate(self.problem) if not p])

    def _tuple(self, src: int, port: int | None, dst: int) -> str:
        return f"{_host(self.tables['addr'][src], port)} → {self.tables['ep'][dst]}"

    def cell(self, key: str, i: int) -> str:
        """One cell's markup, exactly as the page's script (``cells`` in _JS) renders it."""
        t, k, p = self.tables, self.kinds[self.kind[i]], self.part
        if key == "conn":
            return str(self.conn[i])
        if key == "start":
            return _ms(self.start[i])
        if key == "original":
            return self._tuple(k[p["osrc"]], self.osp[i], k[p["odst"]])
        if key == "translated":
            if k[p["tsrc"]] < 0:
                return "—"
            return self._tuple(k[p["tsrc"]], self.tsp[i], k[p["tdst"]]) + t["suffix"][k[p["suffix"]]]
        if key == "latency":
            if self.lat[i] is None:
                return "—"
            mx = None if self.latx[i] is None else self.lat[i] + self.latx[i]  # type: ignore[operator]
            return f"{_tenths(self.lat[i])} / {_tenths(mx)}"
        if key in ("egress_frames", "reply_frames"):
            w = key[0]
            return _pair(self.frames[f"f{w}i"][i], self.frames[f"f{w}o"][i])
        if key == "legs":
            return self._legs(i, k[p["legs"]])
        if key == "verdict":
            return _e(t["verdict"][k[p["verdict"]]])
        part, pick = {"proto": ("proto", None), "initiator": ("init", 0), "pod": ("pod", 0),
                      "service": ("service", 0), "kernel": ("kernel", 0), "fates": ("fates", 0),
                      "egress": ("egress", 0), "reply": ("reply", 0)}[key]
        entry = t["pair" if part in ("egress", "reply") else part][k[p[part]]]
        return entry if pick is None else entry[pick]

    def _legs(self, i: int, count: int) -> str:
        if not count:
            return "—"
        if self.legs is None:
            return str(count)
        t, legs = self.tables, self.legs
        items = "".join(
            f"<li>{t['leg'][legs['k'][j]]} {_host(t['addr'][legs['s'][j]], legs['sp'][j])} → "
            f"{t['ep'][legs['d'][j]]} · frame {_num(legs['f'][j])} · {_num(legs['p'][j])} "
            f"packet{'' if legs['p'][j] == 1 else 's'}</li>" for j in range(self.leg_at[i], self.leg_at[i + 1]))
        return f'<details class="legs"><summary>{count}</summary><ol>{items}</ol></details>'

    def row_html(self, i: int) -> str:
        """One row's markup, exactly as the page's script (``rowHtml`` in _JS) renders it."""
        k, p, t = self.kinds[self.kind[i]], self.part, self.tables
        svc = t["service"][k[p["service"]]][1]
        cells = "".join(f"<td{_cell_class(key)}>{self.cell(key, i)}</td>" for key in self.cols)
        return (f'<tr id="c{self.conn[i]}" class="v-{_e(t["verdict"][k[p["verdict"]]])}" '
                f'data-initiator="{_e(t["init"][k[p["init"]]][1])}"'
                + (f' data-service="{_e(svc)}"' if svc else "") + f">{cells}</tr>")

    def to_json(self) -> str:
        """The data the page's script reads, as JSON safe inside a <script> element."""
        doc: dict[str, Any] = {
            "cols": list(self.cols), "cls": [_cell_class(c) for c in self.cols], "k": self.part, "page": PAGE_ROWS,
            "t": self.tables, "kinds": self.kinds, "kind": self.kind,
            "start": _delta(self.start), "osp": self.osp, "lat": self.lat, "latx": self.latx,
            "tsp": [None if t is None else t - (o or 0) for o, t in zip(self.osp, self.tsp, strict=True)],
            **{name: _delta(values) for name, values in self.frames.items()},
            "problems": _delta([i for i, p in enumerate(self.problem) if p]),
        }
        if self.conn != list(range(len(self.conn))):
            doc["conn"] = _delta(self.conn)  # type: ignore[arg-type]
        if self.legs is not None:
            doc["legs"] = {**self.legs, "f": _delta(self.legs["f"])}
        return orjson.dumps(doc).decode("utf-8").replace("<", "\\u003c")


def table_data(result: Result, findings: Sequence[Finding] = (), *, legs: bool | None = None,
               max_rows: int | None = None) -> TableData:
    """The mapping table's data (see TableData). ``legs``: embed each connection's legs (default: when there are
    at most EMBED_LEGS_MAX connections); ``max_rows``: the most rows to hold (default TABLE_ROWS_MAX), problem
    connections first, then the others in order."""
    conns = result.connections
    total = conns.height
    if legs is None:
        legs = total <= EMBED_LEGS_MAX
    max_rows = TABLE_ROWS_MAX if max_rows is None else max_rows
    t0 = conns["first_ts_ns"].min() if total else 0
    frame = conns.with_columns(problem_connections(result, findings).alias("_problem"),
                               pl.col("trans_src").is_not_null().alias("has_trans"))
    if total > max_rows:
        frame = frame.with_row_index("_i").sort(["_problem", "_i"], descending=[True, False]).head(max_rows) \
            .sort("_i").drop("_i")
    named = result.names is not None
    cols = tuple(c[0] for c in columns(result))

    # Addresses, and address:port endpoints, in sort order: a row's index is its sort key.
    leg_frame = (frame.select(pl.col("legs").explode()).filter(pl.col("legs").is_not_null()).unnest("legs")
                 if legs else None)
    srcs = {a for c in ("orig_src", "trans_src") for a in frame[c].drop_nulls().unique().to_list()}
    eps = {tuple(r) for a, p in (("orig_dst", "orig_dport"), ("trans_dst", "trans_dport"))
           for r in frame.select(a, p).filter(pl.col(a).is_not_null()).unique().iter_rows()}
    if leg_frame is not None:
        srcs |= set(leg_frame["src"].drop_nulls().unique().to_list())
        eps |= {tuple(r) for r in leg_frame.select("dst", "dport").filter(pl.col("dst").is_not_null()).unique()
                .iter_rows()}
    addrs = sorted(srcs, key=lambda a: _addr_key(a, None))
    endpoints = sorted(eps, key=lambda e: _addr_key(*e))
    addr_at = {a: i for i, a in enumerate(addrs)}
    ep_at = {f"{a}\x00{'' if p is None else p}": i for i, (a, p) in enumerate(endpoints)}

    def addr_index(col: str) -> pl.Expr:
        return pl.col(col).replace_strict(addr_at, default=-1, return_dtype=pl.Int64)

    def ep_index(addr: str, port: str) -> pl.Expr:
        key = pl.concat_str([pl.col(addr), pl.lit("\x00"), pl.col(port).cast(pl.String).fill_null("")])
        return key.replace_strict(ep_at, default=-1, return_dtype=pl.Int64).fill_null(-1)

    tables = {name: _Interned() for name in ("proto", "init", "suffix", "pod", "service", "verdict", "kernel",
                                              "fates", "pair", "leg")}
    fate_cols = [f"fate_{f}" for f in FATES]
    name_cols = [c for c in NAME_SCHEMA if c in frame.columns and c != "pod_container"] + ["initiator"]
    parts: dict[str, np.ndarray] = {
        "proto": _family(frame, ["proto"], lambda r: _e(r["proto"]), tables["proto"]),
        "init": _family(frame, ["initiator"], lambda r: [
            '<span class="inbound">outside (inbound)</span>' if r["initiator"] == "outside" else _e(r["initiator"]),
            r["initiator"] or ""], tables["init"]),
        "suffix": _family(frame, ["has_trans", "initiator", "outside_tuples", "inside_tuples", "evidence_level"],
                          _trans_suffix, tables["suffix"]),
        "pod": (_family(frame, name_cols, lambda r: [_names_cell(r), format_pod(r) or ""], tables["pod"]) if named
                else np.full(len(frame), -1)),
        "service": _family(frame, ["service_type", "service_ip", "service_port", "backend_ip", "backend_port",
                                   "proto"], lambda r: list(_service_cell(r)), tables["service"]),
        "verdict": _family(frame, ["verdict"], lambda r: r["verdict"], tables["verdict"]),
        "kernel": _family(frame, ["kernel", "kernel_reason", "kernel_line"],
                          lambda r: [_kernel_cell(r), r["kernel"] or ""], tables["kernel"]),
        "fates": _family(frame, fate_cols, lambda r: [_fates(r), sum(n for f, n in fate_counts(r) if f != "crossed")],
                         tables["fates"]),
        "egress": _family(frame, ["egress_inside", "egress_outside"], lambda r: [
            _pair(r["egress_inside"], r["egress_outside"]), r["egress_inside"]], tables["pair"]),
        "reply": _family(frame, ["reply_outside", "reply_inside"], lambda r: [
            _pair(r["reply_outside"], r["reply_inside"]), r["reply_outside"]], tables["pair"]),
    }
    idx = frame.select(addr_index("orig_src").alias("osrc"), ep_index("orig_dst", "orig_dport").alias("odst"),
                       addr_index("trans_src").alias("tsrc"), ep_index("trans_dst", "trans_dport").alias("tdst"),
                       pl.col("legs").list.len().fill_null(0).cast(pl.Int64).alias("legs"))
    for name in idx.columns:
        parts[name] = idx[name].to_numpy()
    matrix = np.stack([np.asarray(parts[p], dtype=np.int64) for p in PARTS], axis=1) if len(frame) else \
        np.zeros((0, len(PARTS)), dtype=np.int64)
    kinds, kind = np.unique(matrix, axis=0, return_inverse=True)

    nums = frame.select(
        pl.col("orig_sport").cast(pl.Int64).alias("osp"),
        pl.col("trans_sport").cast(pl.Int64).alias("tsp"),
        pl.col("evidence_egress_inside_frame").cast(pl.Int64).alias("ei"),
        pl.col("evidence_egress_outside_frame").cast(pl.Int64).alias("eo"),
        pl.col("evidence_reply_inside_frame").cast(pl.Int64).alias("ri"),
        pl.col("evidence_reply_outside_frame").cast(pl.Int64).alias("ro"),
    )
    lat = _scaled(frame["latency_median_us"].to_list(), 1)
    leg_data = None
    if leg_frame is not None:
        leg_data = {"k": _family(leg_frame, ["observation_point", "underlay"],
                                 lambda r: _e(r["observation_point"]) + _underlay_text(r["underlay"]),
                                 tables["leg"]).tolist(),
                    "s": leg_frame.select(addr_index("src"))["src"].to_list(),
                    "sp": leg_frame["sport"].to_list(),
                    "d": leg_frame.select(ep_index("dst", "dport"))["dst"].to_list(),
                    "f": leg_frame["first_frame"].to_list(), "p": leg_frame["packets"].to_list()}
    return TableData(
        cols=cols, total=total, conn=frame["conn"].to_list(), kind=kind.reshape(-1).tolist(),
        kinds=kinds.tolist(),
        tables={"addr": [_e(format_address(a, None)) for a in addrs],
                "ep": [_e(format_address(a, p)) for a, p in endpoints],
                **{name: table.values for name, table in tables.items()}},
        start=_scaled(((frame["first_ts_ns"] - t0) / 1e9).to_list(), 3), osp=nums["osp"].to_list(),
        tsp=nums["tsp"].to_list(), lat=lat, latx=[None if a is None or b is None else b - a for a, b in zip(
            lat, _scaled(frame["latency_max_us"].to_list(), 1), strict=True)],
        frames={"fei": nums["ei"].to_list(), "feo": nums["eo"].to_list(), "fri": nums["ri"].to_list(),
                "fro": nums["ro"].to_list()},
        problem=frame["_problem"].to_list(), legs=leg_data)


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


def _table(result: Result, data: TableData, sidecar: str | None) -> str:
    heads = "".join(f'<th data-key="{key}" data-type="{kind}" aria-sort="none" title="{_e(tip)}">'
                    f'<button type="button">{_e(label).replace(chr(10), "<br>")}</button></th>'
                    for key, label, kind, tip in columns(result))
    n, pages = len(data), max(1, -(-len(data) // PAGE_ROWS))
    rows = "\n".join(data.row_html(i) for i in data.default_order()[:PAGE_ROWS])
    link = (f'<a href="{_e(urllib.parse.quote(sidecar))}"><span class="mono">{_e(sidecar)}</span></a> beside this '
            "file (every column, legs included: read it with DuckDB, polars or pandas)" if sidecar else None)
    notes = []
    if data.legs is None and data.total:
        notes.append(f"{data.total} connections: above {EMBED_LEGS_MAX} the page does not embed each connection's "
                     "legs (its packets at each observation point); the legs column gives their number. "
                     + (f"They are in {link}." if link else
                        "natproof report writes them to a Parquet file beside the page."))
    if n < data.total:
        notes.append(f"The table holds {n} of the {data.total} connections: the problem ones first, then the others "
                     "in order" + (f"; all are in {link}." if link else "."))
    last = " disabled" if pages == 1 else ""
    problems = sum(data.problem)
    return (
        '<section id="mappings-section"><h2>NAT mappings</h2>'
        + "".join(f'<p class="note">{note}</p>' for note in notes)
        + '<div class="tools"><input id="filter" type="search" autocomplete="off" spellcheck="false" '
        'aria-label="filter the mappings" placeholder="filter: address, port, proto… '
        '(verdict:no_reply, finding:0, initiator:outside, service:10.96.0.1:443/tcp)">'
        f'<span id="shown" class="muted">showing {n} of {n}</span>'
        f'<label class="muted" title="{_e(_PROBLEMS_TIP)}"><input type="checkbox" id="problems-first" checked> '
        f"problem connections first ({problems})</label>"
        '<span class="muted">click a column header to sort; every word must match</span></div>'
        f'<div class="pager" id="pager"{"" if n > PAGE_ROWS else " hidden"}>'
        '<button type="button" data-page="first" disabled>« first</button>'
        '<button type="button" data-page="previous" disabled>‹ previous</button>'
        f'<span id="page-info">rows {1 if n else 0}–{min(n, PAGE_ROWS)} of {n} · page 1 of {pages}</span>'
        f'<button type="button" data-page="next"{last}>next ›</button>'
        f'<button type="button" data-page="last"{last}>last »</button></div>'
        '<div class="tablewrap"><table id="mappings"><thead><tr>'
        f"{heads}</tr></thead><tbody>\n{rows}\n</tbody></table></div>"
        f'<script type="application/json" id="mappings-data">{data.to_json()}</script></section>'
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


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``report.connections.parquet`` beside ``report.html``: where write_html puts what a big report leaves out."""
    p = Path(path)
    stem = p.stem if p.suffix.lower() in (".html", ".htm") else p.name
    return p.with_name(stem + SIDECAR_SUFFIX)


EXPLAIN_MAX = 20
"""Connections whose header changes the report shows (natproof.explain): the ones findings cite first."""


def explained_connections(result: Result, findings: Sequence[Finding], limit: int = EXPLAIN_MAX) -> list[int]:
    """The connection numbers the report's "Header changes" section explains: those the findings cite (errors and
    warnings first), then the first connections that crossed, at most ``limit``."""
    n = result.connections.height
    picked: dict[int, None] = {}  # in order, each once (a list's `in` made this quadratic: 100k connections, 55 s)
    order = sorted(findings, key=lambda f: _SEVERITIES.index(f.severity) if f.severity in _SEVERITIES else 9)
    for f in order:
        picked.update((c, None) for c in f.connections if 0 <= c < n)
    if len(picked) < limit:
        crossed = result.connections.filter(pl.col("fate_crossed") > 0).head(limit + len(picked))["conn"]
        picked.update((c, None) for c in crossed.to_list())
    return list(picked)[:limit]


def _header_changes(explanations: Sequence[Any]) -> str:
    """The collapsed "Header changes" section: per connection, each field of its first egress and reply pair,
    changed or kept (natproof.explain), and its entry in conntrack notation."""
    if not explanations:
        return ""
    from natproof.explain import FIELD_LABELS

    parts = ['<section id="headers"><h2>Header changes</h2><p class="note">What the NAT changed in each header '
             "field, per connection: its first packet to cross each way, before and after (as <code>natproof "
             "explain --conn N</code> shows it).</p>"]
    for ex in explanations:
        r = ex.row
        changed = sorted({FIELD_LABELS.get(f, f) for p in ex.pairs for f in p.to_dict()["changed"]})
        head = (f"#{r['conn']} {_e(r['proto'])} {_e(format_tuple(r, 'orig') or '-')} · {_e(r['verdict'])}"
                + (f" · changed: {_e(', '.join(changed))}" if changed else ""))
        body = [f'<p class="mono">{_e(ex.conntrack)}</p>']
        for p in ex.pairs:
            d = p.to_dict()
            body.append(f"<p>{_e(p.kind)}: {_e(d['before']['observation_point'])} frame {d['before']['frame']} → "
                        f"{_e(d['after']['observation_point'])} frame {d['after']['frame']}, "
                        f"{d['nat_latency_us']} µs</p><table class=\"diff\"><tr><th>field</th><th>before</th>"
                        "<th>after</th><th></th></tr>")
            for row in d["fields"]:
                state = "" if row["changed"] is None else "changed" if row["changed"] else "kept"
                shift = f" (shift {row['shift']:+d})" if row.get("shift") else ""
                body.append(f"<tr class=\"{state}\"><td>{_e(FIELD_LABELS.get(row['field'], row['field']))}</td>"
                            f"<td class=\"mono\">{_e(row['before'])}</td><td class=\"mono\">{_e(row['after'])}"
                            f"</td><td>{state}{_e(shift)}</td></tr>")
            body.append("</table>")
        body += [f'<p class="note">{_e(n)}</p>' for n in ex.notes]
        parts.append(f'<details class="headers" id="h{r["conn"]}"><summary>{head}</summary>{"".join(body)}'
                     "</details>")
    parts.append("</section>")
    return "".join(parts)


def render_html(result: Result, findings: Sequence[Finding], sidecar: str | None = None,
                explanations: Sequence[Any] = ()) -> str:
    """The report as one HTML document with everything inline; fetches nothing from the network.

    ``sidecar``: the name of the Parquet file beside the page that holds every connection (write_html writes it
    above EMBED_LEGS_MAX connections), linked from the table. ``explanations`` (natproof.explain.Explanation,
    e.g. of explained_connections) fill a collapsed "Header changes" section."""
    ins, outs = result.inside, result.outside
    first = ins.first_ts_ns or outs.first_ts_ns
    last = ins.last_ts_ns or outs.last_ts_ns
    title = f"natproof: {ins.path} ↔ {outs.path}"
    worst = next((s for s in _SEVERITIES if any(f.severity == s for f in findings)), None)
    verdict_line = ", ".join(f"{n} {v}" for v, n in result.by_verdict().items() if n) or "no connections"
    data = table_data(result, findings)
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
        '<a href="#mappings-section">Mappings</a>' + ('<a href="#headers">Header changes</a>' if explanations else "")
        + '<a href="#charts">Charts</a></nav></header><main>',
        _summary(result), _findings(findings), _services(result), _table(result, data, sidecar),
        _header_changes(explanations), _charts(result),
        f"</main><footer>natproof {_e(natproof.__version__)} · {SCHEMA} · frame numbers count from 1, as "
        "Wireshark does</footer>",
        f"<script>{_JS}</script></body></html>\n",
    ])


def write_html(result: Result, findings: Sequence[Finding], path: str | os.PathLike[str],
               explanations: Sequence[Any] = ()) -> Path | None:
    """Write the report to ``path`` atomically (a failure leaves no half-written file). Above EMBED_LEGS_MAX
    connections, first write every connection to ``sidecar_path(path)`` (Parquet, atomically) and link it from
    the page; returns that path, or None when the page holds everything (and removes the sidecar an earlier report
    of the same name left)."""
    target = Path(path)
    sidecar = None
    if result.connections.height > EMBED_LEGS_MAX and (target.is_file() or not target.exists()):
        sidecar = sidecar_path(target)
        write_result(result, "parquet", sidecar)
    write_bytes(path, render_html(result, findings, None if sidecar is None else sidecar.name,
                                  explanations).encode("utf-8"))
    if sidecar is None and target.is_file():
        # A sidecar an earlier, bigger report of the same name left would sit beside a page that is not its own.
        sidecar_path(target).unlink(missing_ok=True)
    return sidecar
