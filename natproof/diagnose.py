"""Name the NAT failure behind a correlation's verdicts, with its evidence and the fix to try."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from natproof.report.table import format_address
from natproof.result import Result

SYN_RETRANSMIT_MIN_GAP_NS = 500_000_000
"""Two SYNs with the same ISN at least this far apart (0.5 s) are a retransmission by the pod's stack
(about 1 s in the lab), not a duplicate in the capture."""

POOL_NEAR_FULL = 0.9
"""Concurrent mappings at this share of the ports in use (or more) point at an exhausted port pool."""


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem (or a clean bill of health) with what proves it."""

    kind: str
    """Stable identifier: forwarding_blocked, no_masquerade, wrong_source_subnet, port_pool_exhausted,
    mapping_conflict, replies_dropped, no_reply, healthy."""
    severity: str
    """"error", "warning" or "info"."""
    title: str
    summary: str
    """One or two sentences for a person."""
    fix: str
    """What to check or change, with the command to do it."""
    connections: tuple[int, ...] = ()
    """Indexes (the ``conn`` column, 0-based) of the connections this is about."""
    evidence: tuple[str, ...] = ()
    """Lines citing connections and frame numbers (1-based, as Wireshark counts) in each capture."""
    data: dict[str, Any] = field(default_factory=dict)
    """Machine-readable details (subnets, counts, ports)."""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "title": self.title, "summary": self.summary,
                "fix": self.fix, "connections": list(self.connections), "evidence": list(self.evidence),
                "data": self.data}


def _conn_label(r: dict[str, Any]) -> str:
    return (f"#{r['conn']} {r['proto']} {format_address(r['inside_src'], r['inside_sport'])} -> "
            f"{format_address(r['inside_dst'], r['inside_dport'])}")


def _frames(result: Result, conn: int, side: str, egress: bool, limit: int = 6) -> list[int]:
    """Frame numbers of one connection's packets in one capture (inside: by conn; outside: by matched conn)."""
    pk = result.inside_packets if side == "inside" else result.outside_packets
    if side == "inside":
        sel = pk.filter((pl.col("conn_id") == _in_conn_id(result, conn)) & (pl.col("is_egress") == egress))
    else:
        sel = pk.filter((pl.col("conn_id") == _out_conn_id(result, conn)) & (pl.col("is_egress") == egress))
    return sel.sort("frame_no")["frame_no"].head(limit).to_list()


def _in_conn_id(result: Result, conn: int) -> int | None:
    return result.connections.filter(pl.col("conn") == conn)["inside_conn_id"].item()


def _out_conn_id(result: Result, conn: int) -> int | None:
    return result.connections.filter(pl.col("conn") == conn)["outside_conn_id"].item()


def _fmt_frames(frames: list[int]) -> str:
    return ", ".join(map(str, frames)) if frames else "none"


def _syn_retransmissions(result: Result, conn: int) -> int:
    """Extra SYNs (same ISN, at least 0.5 s apart) the pod sent on one connection, seen inside."""
    pk = result.inside_packets.filter(
        (pl.col("conn_id") == _in_conn_id(result, conn)) & pl.col("is_egress") & (pl.col("proto") == 6)
        & ((pl.col("tcp_flags") & 0x12) == 0x02)
    ).sort("ts_ns")
    if pk.height < 2:
        return 0
    gaps = pk["ts_ns"].diff().drop_nulls()
    return int((gaps >= SYN_RETRANSMIT_MIN_GAP_NS).sum())


def _subnets(addrs: list[str], prefix: int = 24) -> list[str]:
    nets = sorted({ipaddress.ip_network(f"{a}/{prefix if ':' not in a else 64}", strict=False) for a in addrs},
                  key=lambda n: (n.version, n.network_address))
    return [str(n) for n in nets]


def diagnose(result: Result) -> list[Finding]:
    """Every failure pattern the connections show, most severe first; a single ``healthy`` finding if none."""
    rows = list(result.connections.iter_rows(named=True))
    by_verdict: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_verdict.setdefault(r["verdict"], []).append(r)
    findings: list[Finding] = []
    pool, explained = _pool(result, rows)
    blocked = [r for r in by_verdict.get("not_forwarded", []) if r["conn"] not in explained]
    findings += _forwarding(result, blocked, rows)
    findings += _masquerade(result, by_verdict.get("untranslated", []), by_verdict.get("translated", []) +
                            by_verdict.get("no_reply", []) + by_verdict.get("reply_dropped", []))
    findings += pool
    findings += _replies(result, by_verdict.get("reply_dropped", []))
    findings += _no_reply(result, by_verdict.get("no_reply", []))
    if not findings:
        n = Counter(r["verdict"] for r in rows)
        findings.append(Finding(
            "healthy", "info", "NAT working as expected",
            f"{n.get('translated', 0)} connections translated with replies reverse-translated to the pod; "
            f"{n.get('internal', 0)} internal.", "Nothing to fix.",
            connections=tuple(r["conn"] for r in rows if r["verdict"] == "translated")))
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])


def _forwarding(result: Result, blocked: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[Finding]:
    """not_forwarded: seen inside, never outside; packets vanish silently (no ICMP, no conntrack entry)."""
    if not blocked:
        return []
    egress_rows = [r for r in rows if r["verdict"] != "internal"]
    everything = len(blocked) == len(egress_rows)
    pods = sorted({r["inside_src"] for r in blocked})
    passing = sorted({r["inside_src"] for r in egress_rows if r["verdict"] != "not_forwarded"})
    evidence, retrans_total = [], 0
    for r in blocked[:20]:
        frames = _frames(result, r["conn"], "inside", True)
        retrans = _syn_retransmissions(result, r["conn"])
        retrans_total += retrans
        extra = f", {retrans} SYN retransmission(s)" if retrans else ""
        evidence.append(f"{_conn_label(r)}: {r['egress_inside']} egress packet(s) inside (frames "
                        f"{_fmt_frames(frames)}){extra}; none on the outside")
    if everything:
        summary = (f"None of the {len(blocked)} outbound connection(s) left the node: every packet seen inside is "
                   "missing on the outside, with no ICMP error and no reply. IP forwarding is off, or the FORWARD "
                   "chain drops all pod traffic.")
        fix = ("Check `sysctl net.ipv4.ip_forward` (must be 1: `sysctl -w net.ipv4.ip_forward=1`), then "
               "`iptables -L FORWARD -v -n` for a DROP policy or rule matching the pod network.")
    else:
        summary = (f"{len(blocked)} connection(s) from {', '.join(pods)} never left the node while "
                   f"{', '.join(passing) or 'other connections'} did: forwarding is on, so the FORWARD chain (a "
                   "DROP rule or policy, a network policy) drops these pods or destinations.")
        fix = ("Run `iptables -L FORWARD -v -n` and look for DROP rules or a DROP policy whose counters grow "
               f"with these packets; the affected sources are {', '.join(pods)}.")
    return [Finding(
        "forwarding_blocked", "error",
        "Packets not forwarded (IP forwarding off or FORWARD chain drop)" if everything
        else "Some pods' packets are dropped in the FORWARD chain",
        summary, fix, connections=tuple(r["conn"] for r in blocked), evidence=tuple(evidence),
        data={"pods": pods, "all_blocked": everything, "syn_retransmissions": retrans_total})]


def _masquerade(result: Result, leaked: list[dict[str, Any]], translated: list[dict[str, Any]]) -> list[Finding]:
    """untranslated: egress left with the pod's own source address."""
    if not leaked:
        return []
    leak_nets = _subnets([r["inside_src"] for r in leaked])
    ok_nets = _subnets([r["inside_src"] for r in translated])
    evidence = []
    for r in leaked[:20]:
        ein, eout = r["evidence_egress_inside_frame"], r["evidence_egress_outside_frame"]
        replies = "no reply came back" if not r["reply_outside"] else f"{r['reply_outside']} replies came back"
        evidence.append(f"{_conn_label(r)} left as {format_address(r['outside_src'], r['outside_sport'])} "
                        f"(inside frame {ein}, outside frame {eout}); {replies}")
    pod_net = ", ".join(result.pod_networks) or "the pod network"
    if not translated:
        return [Finding(
            "no_masquerade", "error", "No MASQUERADE: pod addresses leave the node untranslated",
            f"{len(leaked)} connection(s) left on the outside still carrying the pod's own address "
            f"({', '.join(leak_nets)}); the internet does not route pod addresses back, so replies never return.",
            f"Check `iptables -t nat -L POSTROUTING -n -v` for a MASQUERADE rule; add one: `iptables -t nat -A "
            f"POSTROUTING -s {pod_net.split(', ')[0]} ! -d {pod_net.split(', ')[0]} -j MASQUERADE`.",
            connections=tuple(r["conn"] for r in leaked), evidence=tuple(evidence),
            data={"untranslated_subnets": leak_nets})]
    return [Finding(
        "wrong_source_subnet", "error", "MASQUERADE rule covers the wrong source subnet",
        f"Connections from {', '.join(leak_nets)} leave untranslated while those from {', '.join(ok_nets)} are "
        "translated: the rule's `-s` range matches only some pod subnets.",
        f"Check the `-s` range of the rule in `iptables -t nat -L POSTROUTING -n -v`; it must cover "
        f"{', '.join(leak_nets)} too (e.g. `-s {pod_net.split(', ')[0]}`).",
        connections=tuple(r["conn"] for r in leaked), evidence=tuple(evidence),
        data={"untranslated_subnets": leak_nets, "translated_subnets": ok_nets})]


def _replies(result: Result, dropped: list[dict[str, Any]]) -> list[Finding]:
    """reply_dropped: replies reached the outside for the translated tuple, never the pod."""
    if not dropped:
        return []
    evidence = []
    for r in dropped[:20]:
        frames = _frames(result, r["conn"], "outside", False)
        evidence.append(f"{_conn_label(r)}: {r['reply_outside']} reply packet(s) to "
                        f"{format_address(r['outside_src'], r['outside_sport'])} on the outside (frames "
                        f"{_fmt_frames(frames)}), none inside")
    ports = sorted({r["inside_dport"] for r in dropped})
    return [Finding(
        "replies_dropped", "error", "Replies dropped on the node (reverse NAT never delivered)",
        f"{len(dropped)} connection(s) got replies on the outside, addressed to the translated tuple, that never "
        "reached the pod: the node drops them after conntrack (a FORWARD rule, rp_filter, or a policy).",
        f"Run `iptables -L FORWARD -v -n` for rules dropping traffic from source port(s) "
        f"{', '.join(map(str, ports))} toward the pods; check `conntrack -L` shows the entries as replied.",
        connections=tuple(r["conn"] for r in dropped), evidence=tuple(evidence), data={"server_ports": ports})]


def _no_reply(result: Result, silent: list[dict[str, Any]]) -> list[Finding]:
    """no_reply: translated and sent, the far end never answered (not the NAT's fault)."""
    if not silent:
        return []
    refused = [r for r in silent if r["icmp_errors_outside"]]
    evidence = []
    for r in silent[:20]:
        why = "an ICMP error came back" if r["icmp_errors_outside"] else "nothing came back"
        evidence.append(f"{_conn_label(r)} left as {format_address(r['outside_src'], r['outside_sport'])} "
                        f"(outside frame {r['evidence_egress_outside_frame']}); {why}")
    return [Finding(
        "no_reply", "warning", "No reply from the far end",
        f"{len(silent)} connection(s) were translated and left the node, but the far end did not answer"
        + (f" ({len(refused)} refused with an ICMP error)" if refused else "")
        + ". The NAT did its part; look beyond the node.",
        "Check the destination is up and reachable from the node's address (firewalls, security groups, a "
        "NAT gateway further on).",
        connections=tuple(r["conn"] for r in silent), evidence=tuple(evidence), data={"refused": len(refused)})]


TIME_WAIT_NS = 120 * 10**9
"""conntrack keeps a closed TCP entry 120 s (TIME_WAIT); a tuple reused sooner clashes at the server."""


def _pool(result: Result, rows: list[dict[str, Any]]) -> tuple[list[Finding], set[int]]:
    """Port pool exhausted (or conntrack full): concentrated ports, tuple reuse, new connections dropped.

    Also returns the not_forwarded connections it explains (to a destination whose pool was exhausted), so
    they are not blamed on forwarding as well.
    """
    mapped = [r for r in rows if r["outside_src"] is not None and r["outside_src"] != r["inside_src"]]
    findings: list[Finding] = []
    # An outside tuple used by two inside connections at once (or within TIME_WAIT) is a mapping conflict.
    by_tuple: dict[tuple, list[dict[str, Any]]] = {}
    for r in mapped:
        key = (r["proto"], r["outside_src"], r["outside_sport"], r["outside_dst"], r["outside_dport"])
        by_tuple.setdefault(key, []).append(r)
    conflicts, evidence = [], []
    for key, users in by_tuple.items():
        users.sort(key=lambda r: r["first_ts_ns"])
        for a, b in zip(users, users[1:], strict=False):
            if (a["inside_src"], a["inside_sport"]) == (b["inside_src"], b["inside_sport"]):
                continue
            gap = b["first_ts_ns"] - a["last_ts_ns"]
            if gap < (TIME_WAIT_NS if key[0] == "tcp" else 0):
                conflicts.append((a, b))
                when = "while it was in use" if gap < 0 else f"{gap / 1e9:.1f} s after its last packet"
                evidence.append(f"{format_address(key[1], key[2])} -> {format_address(key[3], key[4])} carried "
                                f"{_conn_label(a)} and then {_conn_label(b)} {when}")
    multi = [r for r in rows if (r["outside_tuples"] or 0) > 1]
    for r in multi[:20]:
        evidence.append(f"{_conn_label(r)} left under {r['outside_tuples']} outside tuples")
    # Concurrency against the ports in use, per (outside ip, destination, protocol).
    pool_rows = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in mapped:
        groups.setdefault((r["proto"], r["outside_src"], r["outside_dst"], r["outside_dport"]), []).append(r)
    for key, members in groups.items():
        ports = {r["outside_sport"] for r in members}
        span = max(ports) - min(ports) + 1
        events = sorted([(r["first_ts_ns"], 1) for r in members] + [(r["last_ts_ns"], -1) for r in members],
                        key=lambda e: (e[0], -e[1]))
        live = peak = 0
        for _, d in events:
            live += d
            peak = max(peak, live)
        if len(members) >= 4 and span <= 4096 and peak >= POOL_NEAR_FULL * span:
            pool_rows.append({"outside_ip": key[1], "destination": format_address(key[2], key[3]),
                              "proto": key[0], "concurrent_peak": peak, "ports_in_use": len(ports),
                              "port_range": [min(ports), max(ports)]})
    busy = {(p["proto"], p["destination"]) for p in pool_rows} | {
        (r["proto"], format_address(r["outside_dst"], r["outside_dport"])) for pair in conflicts for r in pair
    } | {(r["proto"], format_address(r["outside_dst"], r["outside_dport"])) for r in multi}
    blocked = [r for r in rows if r["verdict"] == "not_forwarded"
               and (r["proto"], format_address(r["inside_dst"], r["inside_dport"])) in busy]
    exhausted = bool(pool_rows) or (bool(conflicts or multi) and bool(blocked))
    if exhausted:
        for p in pool_rows:
            evidence.insert(0, f"{p['outside_ip']} -> {p['destination']} ({p['proto']}): {p['concurrent_peak']} "
                               f"concurrent mappings on ports {p['port_range'][0]}-{p['port_range'][1]}")
        for r in blocked[:10]:
            evidence.append(f"{_conn_label(r)} never left the node (inside frames "
                            f"{_fmt_frames(_frames(result, r['conn'], 'inside', True))})")
        findings.append(Finding(
            "port_pool_exhausted", "error", "Port pool exhausted or conntrack table full",
            "Translated source ports are concentrated in a small range that is nearly all in use at once"
            + (f", {len(blocked)} new connection(s) were dropped while established ones continued" if blocked
               else "")
            + (f", and {len(conflicts)} outside tuple(s) were reused too soon" if conflicts else "") + ".",
            "Widen the SNAT port range (`--to-ports`, or more SNAT addresses), check `conntrack -S` for "
            "insert_failed/drop and `conntrack -C` against `sysctl net.netfilter.nf_conntrack_max`.",
            connections=tuple(sorted({r["conn"] for pair in conflicts for r in pair} | {r["conn"] for r in multi}
                                     | {r["conn"] for r in blocked})),
            evidence=tuple(evidence), data={"pools": pool_rows, "conflicts": len(conflicts)}))
    elif conflicts or multi:
        findings.append(Finding(
            "mapping_conflict", "warning", "Outside tuple reused by two connections",
            f"{len(conflicts)} outside tuple(s) carried two different inside connections within conntrack's "
            f"lifetime, and {len(multi)} connection(s) left under more than one outside tuple.",
            "Check `conntrack -L` for clashing entries and the SNAT port range; the server may refuse a reused "
            "tuple still in its TIME_WAIT.",
            connections=tuple(sorted({r["conn"] for pair in conflicts for r in pair} | {r["conn"] for r in multi})),
            evidence=tuple(evidence), data={"conflicts": len(conflicts)}))
        blocked = []
    return findings, {r["conn"] for r in blocked}
