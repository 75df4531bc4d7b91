"""A rich table of a Result's connections, with a summary line."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from natproof.result import Result

VERDICT_STYLE = {
    "translated": "green", "no_reply": "yellow", "reply_dropped": "red", "untranslated": "red",
    "not_forwarded": "red", "internal": "dim",
}


def format_address(addr: str | None, port: int | None) -> str:
    """10.244.0.5:43210, [2001:db8::1]:443, as mitmproxy prints addresses."""
    if addr is None:
        return "-"
    host = f"[{addr}]" if ":" in addr else addr
    return host if port is None else f"{host}:{port}"


def summary_line(result: Result) -> str:
    counts = ", ".join(f"{n} {v}" for v, n in result.by_verdict().items() if n)
    skipped_in = sum(result.inside.skipped.values())
    skipped_out = sum(result.outside.skipped.values())
    return (
        f"{result.connections.height} connections ({counts or 'none'}); "
        f"port preserved {result.port_preserved_ratio():.0%} of translated; "
        f"clock offset {result.clock_offset_s:+.6f} s\n"
        f"unmatched packets {result.unmatched_inside} inside, {result.unmatched_outside} outside; "
        f"frames skipped {skipped_in} inside, {skipped_out} outside"
    )


def render_table(result: Result, limit: int | None = None) -> Group:
    table = Table(title="NAT mappings (inside -> outside)", header_style="bold", expand=False)
    addr = {"no_wrap": True}
    for col, kw in (("proto", {}), ("inside", addr), ("outside", addr), ("destination", addr), ("verdict", addr),
                    ("egress in/out", {"justify": "right"}), ("reply out/in", {"justify": "right"}),
                    ("NAT us", {"justify": "right"}), ("frames in/out", {"justify": "right"})):
        table.add_column(col, **kw)
    rows = result.connections.iter_rows(named=True)
    for i, r in enumerate(rows):
        if limit is not None and i >= limit:
            table.add_row("...", f"{result.connections.height - limit} more", "", "", "", "", "", "", "")
            break
        outside = format_address(r["outside_src"], r["outside_sport"])
        if r["outside_tuples"] and r["outside_tuples"] > 1:
            outside += f" (+{r['outside_tuples'] - 1})"
        lat = "-" if r["latency_median_us"] is None else f"{r['latency_median_us']:.0f}"
        ev = "-"
        if r["evidence_egress_inside_frame"] is not None:
            ev = f"{r['evidence_egress_inside_frame']}/{r['evidence_egress_outside_frame']}"
        table.add_row(
            r["proto"], format_address(r["inside_src"], r["inside_sport"]), outside,
            format_address(r["inside_dst"], r["inside_dport"]),
            Text(r["verdict"], style=VERDICT_STYLE.get(r["verdict"], "")),
            f"{r['egress_inside']}/{r['egress_outside']}", f"{r['reply_outside']}/{r['reply_inside']}",
            lat, ev,
        )
    return Group(table, Text(summary_line(result)))
