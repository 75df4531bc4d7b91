"""A rich table of a Result's connections, with its Services and a summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command line imports format_address without loading polars (nor rich: see natproof.cli)
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from natproof.result import Result

VERDICT_STYLE = {
    "translated": "green", "no_reply": "yellow", "reply_dropped": "red", "untranslated": "red",
    "not_forwarded": "red", "internal": "dim", "reply_other_path": "yellow", "not_captured": "dim",
}
FATE_LABEL = {"crossed": "crossed", "leaked": "leaked", "inside_only": "inside only",
              "outside_only": "outside only", "node_generated": "node-made"}
"""How each packet fate (docs/model.md) reads in the table and the report."""
FATE_STYLE = {"crossed": "", "leaked": "bold red", "inside_only": "yellow", "outside_only": "yellow",
              "node_generated": "magenta"}


def format_address(addr: str | None, port: int | None) -> str:
    """10.244.0.5:43210, [2001:db8::1]:443, as mitmproxy prints addresses."""
    if addr is None:
        return "-"
    host = f"[{addr}]" if ":" in addr else addr
    return host if port is None else f"{host}:{port}"


def format_tuple(row: dict[str, Any], prefix: str, arrow: str = "->") -> str | None:
    """``src:sport -> dst:dport`` of a connection's ``orig`` or ``trans`` tuple (initiator -> responder); None
    when that tuple was not captured."""
    if row[f"{prefix}_src"] is None:
        return None
    return (f"{format_address(row[f'{prefix}_src'], row[f'{prefix}_sport'])} {arrow} "
            f"{format_address(row[f'{prefix}_dst'], row[f'{prefix}_dport'])}")


def format_service(row: dict[str, Any], arrow: str = "->") -> str | None:
    """``ClusterIP 10.96.0.1:443 -> 198.51.100.10:6443``; the backend reads ``backend not seen`` when no leg after
    the DNAT was captured; None for a connection to no Service."""
    if not row.get("service_type"):
        return None
    backend = ("backend not seen" if row["backend_ip"] is None
               else format_address(row["backend_ip"], row["backend_port"]))
    return f"{row['service_type']} {format_address(row['service_ip'], row['service_port'])} {arrow} {backend}"


def format_pod(row: dict[str, Any], prefix: str = "pod", sep: str = " | ") -> str | None:
    """A named row's pod (``pod``, ``peer_pod`` or ``backend_pod``): namespace/name, or for an address more than
    one pod may have held then, ``? a | b`` (never one of them silently); None when no pod is known there."""
    if row.get(prefix):
        return str(row[prefix])
    if row.get(f"{prefix}_candidates"):
        return "? " + sep.join(row[f"{prefix}_candidates"])
    return None


def format_service_name(row: dict[str, Any]) -> str | None:
    """``kube-system/kube-dns:dns``: a named row's Service and the name of its port; None when not known."""
    if not row.get("service_name"):
        return None
    port = row.get("service_port_name")
    return f"{row['service_name']}:{port}" if port else str(row["service_name"])


def _names_text(row: dict[str, Any]) -> Text:
    """The pod (and the far end's, pod to pod), then the Service and the backend's pod, one per line."""
    from rich.text import Text
    text = Text()
    # Candidates one per line: a reused address's pods never squeeze the other columns.
    pod, peer = format_pod(row, sep="\n  | "), format_pod(row, "peer_pod", sep="\n  | ")
    first = pod or "-"
    if peer:
        first += f" -> {peer}"
    text.append(first, style="yellow" if first.startswith("?") or " ? " in first else "")
    svc, backend = format_service_name(row), format_pod(row, "backend_pod", sep="\n  | ")
    if row.get("initiator") == "outside" and backend == pod:
        backend = None  # a connection started outside reached its pod through the Service: said on the first line
    if svc or backend:
        text.append(f"\n{svc or '-'}", style="cyan")
    if backend:
        text.append(f"\n-> {backend}", style="yellow" if backend.startswith("?") else "")
    return text


def fate_counts(row: dict[str, Any]) -> list[tuple[str, int]]:
    """A connection's non-zero packet fates, in FATES order."""
    from natproof.assemble import FATES

    return [(f, int(row[f"fate_{f}"] or 0)) for f in FATES if row.get(f"fate_{f}")]


def format_fates(counts: list[tuple[str, int]] | dict[str, int]) -> str:
    """``3 crossed, 5 leaked``: the non-zero fates, every packet counted once (so they add up to the packets)."""
    items = counts.items() if isinstance(counts, dict) else counts
    return ", ".join(f"{n} {FATE_LABEL[f]}" for f, n in items if n) or "no packets"


def _fates_text(row: dict[str, Any]) -> Text:
    from rich.text import Text
    text = Text()
    for i, (f, n) in enumerate(fate_counts(row)):
        if i:
            text.append(",\n")
        text.append(f"{n} {FATE_LABEL[f]}", style=FATE_STYLE[f])
    return text or Text("-")


UNREAD_IP = {"truncated_l4": "cut inside their headers", "malformed": "malformed", "ip_fragment": "later fragments",
             "icmp_other": "ICMP neither echo nor error", "other_proto": "neither TCP, UDP nor ICMP"}
"""Skip reasons (CaptureSummary.skipped) of frames that hold an IP packet natproof did not read, in words."""


def _no_packet_text(side: str, skipped: dict[str, int]) -> str:
    """``the inside capture holds no IP packet``, or, when it skipped IP packets (a snaplen cut them inside their
    headers: a new user's trial at -s 40), ``... no IP packet natproof could read: 30 cut inside their headers``."""
    unread = [f"{skipped[r]} {words}" for r, words in UNREAD_IP.items() if skipped.get(r)]
    if not unread:
        return f"the {side} capture holds no IP packet"
    return f"the {side} capture holds no IP packet natproof could read: {', '.join(unread)}"


def overlap_text(result: Result) -> str:
    """How long both captures ran, and how much of each one's span that is when they only partly overlap."""
    ov = result.overlap()
    if result.outside.format == "none" or result.inside.format == "none":  # one capture and a kernel record
        return "one capture; the other side from the kernel's record"
    empty = [side for side in ("inside", "outside") if not getattr(result, side).packets]
    if empty:  # no time to line up: that capture's span is unknown, not apart from the other's
        return "; ".join(_no_packet_text(side, getattr(result, side).skipped) for side in empty)
    if ov["start"] is None:
        return "the captures never ran at the same time"
    text = f"captures overlap {ov['seconds']:.3f} s"
    if min(ov["inside_share"], ov["outside_share"]) < 0.99:
        text += f" ({ov['inside_share']:.0%} of the inside's span, {ov['outside_share']:.0%} of the outside's)"
    return text


def points_lines(result: Result) -> list[str]:
    """Which interfaces each observation point is and why, and what was left out: one line each, for a capture of
    several interfaces (none when each point is a whole file)."""
    if not result.split_by_interface:
        return []
    labels = {(i.path, i.name): i.label() for i in result.interfaces}
    lines = []
    for role, cap in (("inside", result.inside), ("outside", result.outside)):
        names = ", ".join(labels.get((cap.path, n), n) for n in cap.interfaces) or "the whole file"
        lines.append(f"{role}: {cap.path} {names}, {cap.chosen}: {cap.why}")
    lines += [f"left out: {i.label()}: {i.note.removeprefix('left out: ')}" for i in result.interfaces
              if i.point is None]
    return lines


KERNEL_STYLE = {"confirmed": "green", "contradicts": "bold red", "absent": "yellow"}
KERNEL_REASON_SHORT = {
    "dropped_before_confirmation": "dropped before\nconfirmation",
    "record_starts_after": "log starts after",
    "record_ends_before": "log ends before",
    "snapshot_after_expiry": "snapshot taken\nafter it ended",
    "not_recorded": "not recorded",
    "not_tracked": "bridged, untracked",
}
"""natproof.kernel.ABSENT_REASONS in a few words, for the table's kernel column."""


def kernel_text(row: dict[str, Any]) -> Text:
    """A connection's ``kernel`` cell: confirmed, contradicts (with the entry's line) or absent (and why)."""
    from rich.text import Text
    state = row.get("kernel")
    if state is None:
        return Text("-")
    text = Text(state, style=KERNEL_STYLE.get(state, ""))
    if state == "contradicts":
        text.append(f"\nline {row['kernel_line']}")
    elif state == "absent" and row.get("kernel_reason"):
        text.append("\n" + KERNEL_REASON_SHORT.get(row["kernel_reason"], row["kernel_reason"]), style="dim")
    return text


def kernel_line(result: Result) -> str | None:
    """``kernel record FILE (N entries): N confirmed, ...``, or None without a record."""
    rec = result.conntrack
    if rec is None:
        return None
    states = result.connections["kernel"].value_counts(sort=True).rows()
    reasons = result.connections["kernel_reason"].drop_nulls().value_counts(sort=True).rows()
    why = f" ({', '.join(f'{n} {r}' for r, n in reasons)})" if reasons else ""
    filled = int((result.connections["evidence_level"] == "kernel_record").sum())
    taken = f"; {filled} translated tuple(s) taken from it" if filled else ""
    return (f"kernel record {rec.path} ({rec.entries.height} {'entry' if rec.entries.height == 1 else 'entries'}): "
            + (", ".join(f"{n} {s}" for s, n in states) or "no connection to hold against it") + why + taken)


def summary_line(result: Result) -> str:
    counts = ", ".join(f"{n} {v}" for v, n in result.by_verdict().items() if n)
    skipped_in = sum(result.inside.skipped.values())
    skipped_out = sum(result.outside.skipped.values())
    inbound = int((result.connections["initiator"] == "outside").sum())
    started = f", {inbound} started outside" if inbound else ""
    rewritten = result.source_rewritten().height
    n = result.connections.height
    ports = (f"port preserved {result.port_preserved_ratio():.0%} of {rewritten} with the source rewritten"
             if rewritten else "no source rewritten")
    points = "".join(f"{line}\n" for line in points_lines(result))
    return points + (
        f"{n} connection{'' if n == 1 else 's'}{started}: {counts or 'none'}\n"
        f"packets by fate: {', '.join(f'{n} {FATE_LABEL[f]}' for f, n in result.by_fate().items())}\n"
        f"{ports}; clock offset {result.clock_offset_s:+.6f} s"
        + (" (from one direction's packets only: it includes the NAT's latency, not measured)"
           if result.clock_offset_one_way else "")
        + f"; {overlap_text(result)}\n"
        f"pod networks {', '.join(result.pod_networks) or 'none'}: {result.pod_networks_why or 'given'}\n"
        # Result.unmatched_inside leaves internal connections out by design (their packets never cross): said so,
        # beside "packets by fate" counting them as inside only (captures/internal: 0 unmatched, 30 inside only).
        f"unmatched packets {result.unmatched_inside} inside (of connections that should have crossed), "
        f"{result.unmatched_outside} outside; "
        f"frames skipped {skipped_in} inside, {skipped_out} outside"
        + (f"\n{kernel_line(result)}" if result.conntrack is not None else "")
    )


def render_services(result: Result) -> Table | None:
    """Each Service (VIP:port) and the backends kube-proxy chose for its connections, most used first."""
    from rich import box
    from rich.table import Table
    services = result.services()
    if not services:
        return None
    table = Table(title="Services (VIP:port -> backends chosen)", header_style="bold", box=box.SIMPLE_HEAD,
                  title_justify="left")
    table.add_column("Service", no_wrap=True)
    table.add_column("proto")
    table.add_column("connections", justify="right")
    table.add_column("backends: connections (share)", no_wrap=True)
    for s in services:
        backends = []
        for b in s["backends"]:
            where = "backend not seen" if b["address"] is None else format_address(b["address"], b["port"])
            pod = f" ({b['pod']})" if b.get("pod") else ""
            backends.append(f"{where}{pod}: {b['connections']} ({b['connections'] / s['connections']:.0%})")
        name = s.get("name")
        label = f"{s['type']} {format_address(s['address'], s['port'])}"
        if name:
            label += f"\n{name}" + (f":{s['port_name']}" if s.get("port_name") else "")
        table.add_row(label, s["proto"], str(s["connections"]), "\n".join(backends))
    return table


ENCAP_NAMES = {"vxlan": "VXLAN", "geneve": "Geneve", "ipip": "IP-in-IP", "gre": "GRE"}
"""How the table and the report name an underlay's encapsulation (natproof.decode.ENCAPS)."""


def _outside_underlay(row: dict[str, Any]) -> dict | None:
    """The underlay of a connection's first outside leg that has one (its packets crossed inside an overlay)."""
    for leg in row.get("legs") or []:
        if leg["observation_point"] == "outside" and leg.get("underlay"):
            from natproof.decode import parse_underlay

            return parse_underlay(leg["underlay"])
    return None


def render_table(result: Result, limit: int | None = None) -> Group:
    """The connections, one per row: original tuple and, below it, the translated one (initiator -> responder),
    the Service and backend, the verdict and the packets by fate; then the Services and the summary.

    Fits 120 columns for IPv4: the latency and frame columns of the JSON are left to the other formats."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from natproof.result import other_mappings_text

    conns = result.connections
    has_service = conns["service_type"].is_not_null().any()
    named = "pod" in conns.columns
    table = Table(title="NAT mappings: original, then => translated (initiator -> responder)", header_style="bold",
                  expand=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("proto", no_wrap=True)
    table.add_column("original\n=> translated", no_wrap=True)
    if named:
        table.add_column("pod\nService -> backend pod", no_wrap=True)
    if has_service:
        table.add_column("Service\n-> backend", max_width=28)
    table.add_column("verdict", no_wrap=True)
    table.add_column("packets by fate", max_width=17)
    has_kernel = result.conntrack is not None
    if has_kernel:
        table.add_column("kernel", no_wrap=True)
    for i, r in enumerate(conns.iter_rows(named=True)):
        if limit is not None and i >= limit:
            table.add_row("...", "", f"{conns.height - limit} more", *([""] * (len(table.columns) - 3)))
            break
        trans = format_tuple(r, "trans") or "(no leg after the NAT captured)"
        trans += other_mappings_text(r)
        conn = Text(format_tuple(r, "orig") or "-")
        conn.append(f"\n=> {trans}", style="" if r["trans_src"] is not None else "dim")
        if r["evidence_level"] == "kernel_record":
            conn.append(" (kernel record)", style="cyan")
        if (lay := _outside_underlay(r)) is not None:
            name = ENCAP_NAMES.get(lay["encap"], lay["encap"])
            conn.append(f"\n   in {name} {lay['src']} -> {lay['dst']}", style="dim")
        proto = Text(r["proto"])
        if r["initiator"] == "outside":
            proto.append("\ninbound", style="cyan")
        cells: list[Any] = [str(r["conn"]), proto, conn]
        if named:
            cells.append(_names_text(r))
        if has_service:
            svc = format_service(r)
            cells.append("" if svc is None else svc.replace(" -> ", "\n-> "))
        cells += [Text(r["verdict"], style=VERDICT_STYLE.get(r["verdict"], "")), _fates_text(r)]
        if has_kernel:
            cells.append(kernel_text(r))
        table.add_row(*cells)
    parts: list[Any] = [table]
    services = render_services(result)
    if services is not None:
        parts.append(services)
    parts.append(Text(summary_line(result)))
    if result.names is not None:
        parts.append(Text(names_line(result)))
    return Group(*parts)


def names_line(result: Result) -> str:
    """Where a named result's names came from, and the addresses whose pod stays ambiguous."""
    names = result.names or {}
    files = ", ".join(s["path"] for s in names.get("sources", [])) or "none"
    pods, svcs = names.get("pods", 0), names.get("services", 0)
    lines = [f"names: {pods} pod{'' if pods == 1 else 's'}, {svcs} Service{'' if svcs == 1 else 's'} from {files}"]
    for a in names.get("ambiguous", []):
        ids = ", ".join(f"#{c}" for c in a["connections"][:10]) + (" ..." if len(a["connections"]) > 10 else "")
        lines.append(f"ambiguous name: {a['why']}; connections {ids} name all of them")
    return "\n".join(lines)
