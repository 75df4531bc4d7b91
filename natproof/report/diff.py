"""explain's table: each connection's tuples and conntrack entry, then each pair's header fields side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from natproof.diagnose import conntrack_helper
from natproof.explain import FIELD_LABELS, Explanation, Pair
from natproof.report.table import format_tuple

PAIR_TITLES = {"egress": "the initiator's first packet to cross", "reply": "the first reply to cross",
               "frame": "the frame asked for"}


def _value(v: Any) -> str:
    return "-" if v is None else str(v)


def _status(row: dict[str, Any]) -> Text:
    if row["changed"] is None:
        return Text("-", style="dim")
    if "shift" in row:
        return Text(f"shifted {row['shift']:+d}", style="bold yellow") if row["shift"] else Text("kept", style="dim")
    return Text("changed", style="bold yellow") if row["changed"] else Text("kept", style="dim")


def _end_label(end: Any) -> str:
    return f"{end.observation_point} frame {end.frame}"


def pair_heading(pair: Pair) -> str:
    """``egress (the initiator's first packet to cross): inside frame 14 -> outside frame 8, 27.061 us later``."""
    latency = f"{abs(pair.latency_us):g} us {'later' if pair.latency_us >= 0 else 'earlier'}"
    return (f"{pair.kind} ({PAIR_TITLES[pair.kind]}): {_end_label(pair.before)} -> {_end_label(pair.after)}, "
            f"{latency}")


def render_pair(pair: Pair) -> Table:
    """One pair: a row per field, before and after the NAT, and whether it changed."""
    t = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 2, 0, 0))
    t.add_column("field", no_wrap=True)
    t.add_column(f"before ({_end_label(pair.before)})", no_wrap=True)
    t.add_column(f"after ({_end_label(pair.after)})", no_wrap=True)
    t.add_column("", no_wrap=True)
    for row in pair.rows:
        label = FIELD_LABELS[row["field"]]
        t.add_row(label, _value(row["before"]), _value(row["after"]), _status(row))
    return t


def render_explanation(ex: Explanation) -> Group:
    r = ex.row
    started = "inside" if r["initiator"] == "inside" else "outside"
    lines: list[RenderableType] = [Text(f"#{r['conn']} {r['proto']} {r['verdict']} (started {started})",
                                        style="bold")]
    rewrites = list(r["rewrites"] or [])
    nat = [n for n, f in (("SNAT", ("src", "sport")), ("DNAT", ("dst", "dport"))) if set(f) & set(rewrites)]
    what = f"  (rewrites {', '.join(rewrites)}: {' and '.join(nat)})" if rewrites else "  (nothing rewritten)"
    trans = format_tuple(r, "trans")
    lines.append(Text(f"original    {format_tuple(r, 'orig') or '-'}"))
    lines.append(Text(f"translated  {trans}{what}" if trans else "translated  (no leg after the NAT captured)"))
    lines.append(Text(f"conntrack   {ex.conntrack}"))
    shifts = [(f"{w} {n}", r[f"{k}_{n}_shift"]) for w, k in (("initiator", "init"), ("reply", "reply"))
              for n in ("seq", "ack") if r[f"{k}_{n}_shift"]]
    if shifts:
        # An ALG's shift only on a port a conntrack helper watches; elsewhere the numbers differ for a reason the
        # captures do not name (a damaged capture read as the FTP helper's shift: a new user's trial).
        helper = conntrack_helper(r)
        why = (f"an ALG rewrote the payload: the {helper} helper's port" if helper else
               "no conntrack helper watches this port: not an ALG natproof knows")
        lines.append(Text("seq shift   " + ", ".join(f"{name} {v:+d}" for name, v in shifts)
                          + f" (outside minus inside; {why})"))
    for pair in ex.pairs:
        lines.append(Text(""))
        lines.append(Text(pair_heading(pair)))
        lines.append(render_pair(pair))
        rows = pair.rows
        changed = [FIELD_LABELS[x["field"]] for x in rows if x["changed"]]
        lines.append(Text(f"changed: {', '.join(changed) or 'nothing'}"))
    for note in ex.notes:
        lines.append(Text(""))
        lines.append(Text(f"note: {note}"))
    return Group(*lines)


def render_explanations(explanations: Sequence[Explanation]) -> Group:
    """Every connection explained, a blank line between them."""
    parts: list[RenderableType] = []
    for i, ex in enumerate(explanations):
        if i:
            parts.append(Text(""))
        parts.append(render_explanation(ex))
    return Group(*parts)
