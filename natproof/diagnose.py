"""Name the NAT failure behind a correlation's verdicts, with its evidence and the fix to try."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from natproof.connections import TCP_ESTABLISHED_S, IdleTimeouts
from natproof.contracts import utc_ms
from natproof.correlate import capture_off_until
from natproof.errors import NatproofError
from natproof.networks import PRIVATE_SPACE
from natproof.report.table import format_address
from natproof.result import CaptureSummary, Result, flags_expr, flags_of

SYN_RETRANSMIT_MIN_GAP_NS = 500_000_000
"""Two SYNs with the same ISN at least this far apart (0.5 s) are a retransmission by the pod's stack
(about 1 s in the lab), not a duplicate in the capture."""

SAME_PLACE_US = 2.0
"""Untranslated copies at most this far apart (2 us, median per connection) were captured at one point: crossing
a node's forwarding path takes tens of us (NAT latency in captures/)."""

POOL_NEAR_FULL = 0.9
"""Concurrent mappings at this share of the ports in use (or more) point at an exhausted port pool."""


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem (or a clean bill of health) with what proves it."""

    kind: str
    """Stable identifier: forwarding_blocked, no_masquerade, wrong_source_subnet, untranslated_sources,
    no_route_back, port_pool_exhausted, mapping_conflict, replies_dropped, no_reply, stale_conntrack_entry,
    routed_path, snat_exclusion, healthy ..."""
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
    """``#N proto SRC -> DST`` in the initiator's own view (its original tuple); where that is unknown (an uplink
    leg out of a conntrack record's sight: natproof.kernel._unseen_outside_legs), its translated tuple, said so."""
    if r["orig_src"] is None and r.get("trans_src") is not None:
        return (f"#{r['conn']} {r['proto']} {format_address(r['trans_src'], r['trans_sport'])} -> "
                f"{format_address(r['trans_dst'], r['trans_dport'])} (as translated)")
    return (f"#{r['conn']} {r['proto']} {format_address(r['orig_src'], r['orig_sport'])} -> "
            f"{format_address(r['orig_dst'], r['orig_dport'])}")


def _frames(result: Result, conn: int, side: str, egress: bool, limit: int = 6) -> list[int]:
    """Frame numbers of one connection's packets in one capture, the first ``limit``: of every leg of it there, as
    its packet counts (egress_outside, ...) count them: a flow mapped anew left under each of its tuples in turn;
    a hairpin's copies aside (its inside packets are the pod's own leg's)."""
    row = result.connections.row(by_predicate=pl.col("conn") == conn, named=True)
    own = _owned(row, side, _uplink_only(result))
    if own is None:  # no leg on that side (one capture and a conntrack record)
        return []
    if side == "inside" and row["initiator"] != "outside" and row["inside_conn_id"] is not None:
        own &= pl.col("conn_id") == row["inside_conn_id"]
    sel = result.packets(side).filter(own & (pl.col("is_egress") == egress))
    return sel.select("frame_no").sort("frame_no").head(limit).collect()["frame_no"].to_list()


def _in_conn_id(result: Result, conn: int) -> int | None:
    return result.connections.filter(pl.col("conn") == conn)["inside_conn_id"].item()


def _fmt_frames(frames: list[int]) -> str:
    return ", ".join(map(str, frames)) if frames else "none"


def _syn_retransmissions(result: Result, conn: int) -> int:
    """Extra SYNs (same ISN, at least 0.5 s apart) the pod sent on one connection, seen inside."""
    leg = _in_conn_id(result, conn)
    if leg is None:
        return 0
    pk = result.packets("inside").filter(
        (pl.col("conn_id") == leg) & pl.col("is_egress") & (pl.col("proto") == 6)
        & ((pl.col("tcp_flags") & 0x12) == 0x02)
    ).select("ts_ns").sort("ts_ns").collect()
    if pk.height < 2:
        return 0
    gaps = pk["ts_ns"].diff().drop_nulls()
    return int((gaps >= SYN_RETRANSMIT_MIN_GAP_NS).sum())


def _subnets(addrs: list[str], prefix: int = 24) -> list[str]:
    nets = sorted({ipaddress.ip_network(f"{a}/{prefix if ':' not in a else 64}", strict=False) for a in addrs},
                  key=lambda n: (n.version, n.network_address))
    return [str(n) for n in nets]


def diagnose(result: Result) -> list[Finding]:
    """Every failure pattern the connections show, most severe first; a single ``healthy`` finding if none.

    Each finding cites connections and frames, and its summary's counts are those of its evidence. Patterns
    come from the kernel's behaviour as measured in captures/ and the shared cases (docs/model.md)."""
    rows = list(result.connections.iter_rows(named=True))
    every = rows
    # The flags two filters below read, from the columns at once (flags_of row by row: 2.4 s of 100k connections).
    flagged = result.connections.select("conn", flags_expr().alias("flags"))
    other_path = set(flagged.filter(pl.col("flags").list.contains("egress_other_path"))["conn"].to_list())
    alg_flagged = set(flagged.filter(pl.any_horizontal([pl.col("flags").list.contains(f) for f in sorted(_ALG_FLAGS)]))
                      ["conn"].to_list())
    del flagged
    by_verdict: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_verdict.setdefault(r["verdict"], []).append(r)
    findings: list[Finding] = []
    mismatch = _not_two_sides(result, rows)
    if mismatch:
        return mismatch
    # What the other capture could not have seen is judged by nobody: set it aside and say so.
    unseen = [r for r in rows if r["verdict"] == "not_captured" or (
        r["other_capture_off"] and r["verdict"] in ("not_forwarded", "no_reply", "reply_dropped", "reply_other_path"))]
    unseen_conns = {r["conn"] for r in unseen}  # by number: a list's `in` compares whole rows, each against all
    # Connections that crossed and began before the other capture's first packet (flag other_capture_off): what
    # they sent then is seen on one side only because that capture was not running yet.
    began = _began_before(result, [r for r in rows if r["other_capture_off"] and r["conn"] not in unseen_conns
                                   and r["verdict"] != "internal"])
    # Answered within the other capture's span, and shown by it in neither direction: it ran, so no schedule
    # explains them (a trial: pod-to-pod traffic under a wrong --pod-cidr read "it was not running then" beside two
    # identical spans); the rest of what it could not have seen is partial_overlap's.
    running = {r["conn"] for r in unseen if not r["other_capture_off"] and not r.get("other_capture_cut")
               and _within_other_span(result, r)}
    # Seen crossing the other capture's interface, which a snaplen cut inside their headers: a capture's fault too.
    findings += _partial_overlap(result, [r for r in unseen if not r.get("other_capture_cut")
                                          and r["conn"] not in running], began)
    findings += _unseen_while_running(result, [r for r in unseen if r["conn"] in running])
    findings += _headers_cut(result, [r for r in unseen if r.get("other_capture_cut")])
    rows = [r for r in rows if r["conn"] not in unseen_conns]
    by_verdict = {}
    for r in rows:
        by_verdict.setdefault(r["verdict"], []).append(r)
    pool, explained = _pool(result, rows)
    not_forwarded = [r for r in by_verdict.get("not_forwarded", []) if r["conn"] not in explained]
    # Started outside and never seen inside: a NodePort (or other DNAT) attempt that reached no pod.
    findings += _inbound_not_forwarded(result, [r for r in not_forwarded if r["initiator"] == "outside"])
    not_forwarded = [r for r in not_forwarded if r["initiator"] != "outside"]
    refused = [r for r in not_forwarded if r["fate_node_generated"]]
    # The node's time exceeded is no refusal: its TTL ran out there (a traceroute's first hop, or a loop: _expired).
    expired = [r for r in refused if _only_time_exceeded(_packets(result, r, "inside", "node_generated"), r)]
    refused = [r for r in refused if r not in expired]
    services = [r for r in not_forwarded if not r["fate_node_generated"] and r["service_type"] == "ClusterIP"]
    blocked = [r for r in not_forwarded if not r["fate_node_generated"] and r["service_type"] != "ClusterIP"]
    # A ClusterIP the node refused for some connections refused the unanswered others too: the kernel rate-limits
    # the ICMP errors of kube-proxy's REJECT (a helper's kernel variant: 16 of 40 attempts got one).
    refused_vips = {(r["proto"], r["service_ip"], r["service_port"]) for r in refused
                    if r["service_type"] == "ClusterIP"}
    quiet = [r for r in services if (r["proto"], r["service_ip"], r["service_port"]) in refused_vips]
    quiet_conns = {r["conn"] for r in quiet}
    services = [r for r in services if r["conn"] not in quiet_conns]
    findings += _refused_by_node(result, refused, quiet)
    findings += _service_unanswered(result, services, rows)
    findings += _forwarding(result, blocked, rows)
    untranslated = by_verdict.get("untranslated", [])
    translated_srcs = {r["orig_src"] for r in rows if r["initiator"] == "inside" and "src" in (r["rewrites"] or [])}
    # Answered untranslated connections are a routed path, whatever else their source does: the far end routes the
    # pod's address back. From a pod whose other connections are translated, the NAT rule leaves their destination
    # out (an SNAT exclusion: the VPC CIDR and AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS on EKS, ip-masq-agent's
    # nonMasqueradeCIDRs, a `-d ... -j RETURN` ahead of the MASQUERADE: captures/eks-vpc-cni), no stale entry.
    routed = [r for r in untranslated if _answered(r)]
    routed_conns = {r["conn"] for r in routed}
    stale = [r for r in untranslated if r["inside_src"] in translated_srcs and r["conn"] not in routed_conns]
    set_aside = {r["conn"] for r in stale} | routed_conns
    findings += _stale_entries(result, stale)
    findings += _masquerade(result, [r for r in untranslated if r["conn"] not in set_aside],
                            by_verdict.get("translated", []) + by_verdict.get("no_reply", [])
                            + by_verdict.get("reply_dropped", []), routed)
    findings += pool
    findings += _leaks(result, [r for r in rows if r["fate_leaked"]])
    findings += _invalid_resets(result, rows)
    # Mid-connection: both directions crossed otherwise (one direction never crossing is a path or a capture:
    # egress_other_path, reply_other_path).
    findings += _dropped_mid_connection(result, [r for r in rows if r["verdict"] == "translated"
                                                 and (r["fate_inside_only"] or r["fate_outside_only"])
                                                 and not r["fate_node_generated"] and r["matched_egress"]
                                                 and r["matched_reply"]],
                                        partial=any(f.kind == "partial_overlap" and (
                                            f.data["capture_off"] or f.data["answered_unseen"]
                                            or f.data["outside_packets_beyond"]) for f in findings))
    findings += _replies(result, by_verdict.get("reply_dropped", []))
    findings += _other_path(result, by_verdict.get("reply_other_path", []))
    findings += _egress_other_path(result, [r for r in by_verdict.get("translated", [])
                                            if r["conn"] in other_path])
    silent = by_verdict.get("no_reply", [])
    # An ICMP error on a connection that went on anyway matters when it is a path-MTU signal (the router dropped a
    # packet too big, the sender resent smaller ones): a helper's variants of cases/pmtud-frag-needed.
    went_on = [r for r in rows if r["verdict"] in ("translated", "reply_other_path", "reply_dropped", "untranslated")
               and (r["icmp_errors_outside"] or r["icmp_errors_inside"])]
    findings += _icmp_errors(result, [r for r in silent if r["icmp_errors_outside"] or r["icmp_errors_inside"]]
                             + expired, went_on)
    findings += _no_reply(result, [r for r in silent if not (r["icmp_errors_outside"] or r["icmp_errors_inside"])])
    findings += _alg_missing(result, rows)
    findings += _kernel_contradicts(result, [r for r in every if r["kernel"] == "contradicts"])
    problems = any(f.severity != "info" for f in findings)  # path MTU discovery at work is no problem
    findings += _kernel_gaps(result, [r for r in every if r["kernel_reason"] in ("not_recorded",
                                                                               "record_starts_after",
                                                                               "record_ends_before")],
                             judged=len(every))
    excluded = [r for r in routed if r["inside_src"] in translated_srcs]
    excluded_conns = {r["conn"] for r in excluded}
    findings += _routed(result, [r for r in routed if r["conn"] not in excluded_conns])
    findings += _snat_exclusion(result, excluded)
    # A payload changed on a port a conntrack helper watches is that helper's rewrite (captures/ftp-alg); on any
    # other port no ALG of the node's natproof knows did it (a damaged capture read so: a new user's trial).
    changed = [r for r in rows if r["conn"] in alg_flagged]
    findings += _alg(result, [r for r in changed if conntrack_helper(r)])
    findings += _payload_changed(result, [r for r in changed if not conntrack_helper(r)])
    findings += _refused_by_far_end(result, rows)
    findings += _nodeport_source(result, [r for r in rows if r["service_type"] == "NodePort" and r["initiator"] ==
                                          "outside" and "src" in (r["rewrites"] or [])])
    n = Counter(r["verdict"] for r in rows)
    if not problems and not n.get("translated") and not routed:
        # Nothing failed, and nothing crossed both ways either: no sentence about the NAT would rest on packets.
        skipped = sum(result.inside.skipped.values())
        counts = ", ".join(f"{k} {v}" for k, v in sorted(n.items())) or "none"
        findings.insert(0, Finding(
            "nothing_proven", "warning", "No connection proves anything about the NAT",
            f"No connection crossed the NAT with a reply in these captures: {len(rows)} connection(s) judged "
            f"({counts}); {skipped} inside frame(s) skipped; {result.unmatched_outside} outside packet(s) have no "
            "counterpart inside.",
            "Capture traffic that crosses the NAT on both sides at the same time (the pod's veth and the node's "
            "uplink), or check that the captures are of the same node.",
            connections=tuple(r["conn"] for r in rows),
            data={"connections": len(rows), "inside_skipped": skipped, "unmatched_outside": result.unmatched_outside}))
    elif not problems and (n.get("translated") or not routed):
        inbound = sum(1 for r in rows if r["initiator"] == "outside" and r["verdict"] == "translated")
        findings.insert(0, Finding(
            "healthy", "info", "NAT working as expected",
            f"{n.get('translated', 0)} connections translated with replies reverse-translated to the initiator"
            + (f" ({inbound} of them started outside)" if inbound else "")
            + f"; {n.get('internal', 0)} internal.", "Nothing to fix.",
            connections=tuple(r["conn"] for r in rows if r["verdict"] == "translated")))
    findings = _say_payload_only(result, findings)
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order[f.severity])


def _payload_only(result: Result) -> set[int]:
    """The connections (``conn``) whose every paired inside packet was paired by the payload pass alone (method
    "payload" in result.packets("inside"): same far end, payload length and head, under the clock offset;
    natproof.match._causal_payload_pairs), none by a stronger key: the weakest evidence two packets are one."""
    pk = result.packets("inside").filter(pl.col("method").is_not_null() & pl.col("anchor").is_not_null())
    legs = pk.group_by("anchor").agg((pl.col("method") == "payload").all().alias("only")).filter(
        pl.col("only")).select("anchor").collect()["anchor"]
    if legs.is_empty():
        return set()
    return set(result.connections.filter(pl.col("inside_conn_id").is_in(legs.implode()))["conn"].to_list())


def _say_payload_only(result: Result, findings: list[Finding]) -> list[Finding]:
    """Each evidence line about a connection of _payload_only (a line starting ``#N ``, _conn_label) says that
    its pairing rests on payload look-alikes and the clock offset: identical requests of unrelated traffic pair
    so as well (a new user's trial: an unrelated uplink capture with --clock-offset 0)."""
    weak = _payload_only(result)
    if not weak:
        return findings
    given = "given" if result.clock_offset_given else "estimated"
    note = ("; its pairing rests only on payload look-alikes (same far end, payload length and head; no "
            f"stronger key agrees) and the clock offset {given} ({result.clock_offset_s:g} s): weak evidence, "
            "identical requests of unrelated traffic pair so too")
    out = []
    for f in findings:
        if not weak.intersection(f.connections):
            out.append(f)
            continue
        lines = tuple(line + note if (m := re.match(r"#(\d+) ", line)) and int(m.group(1)) in weak else line
                      for line in f.evidence)
        out.append(replace(f, evidence=lines))
    return out


def _owned(r: dict[str, Any], side: str, uplink_only: bool = False) -> pl.Expr | None:
    """Which packets of one capture are the connection ``r``'s (all its legs there); None: none can be.
    ``uplink_only``: the uplink is the only capture (with the kernel's record), where ``anchor`` is the
    connection's outside leg for all its legs (natproof.correlate._correlate_one)."""
    if r["inside_conn_id"] is not None:
        return pl.col("anchor") == r["inside_conn_id"]
    if side == "outside" and r["outside_conn_id"] is not None:  # one capture, the outside one
        own = pl.col("conn_id") == r["outside_conn_id"]
        return (own | (pl.col("anchor") == r["outside_conn_id"])) if uplink_only else own
    return None


def _uplink_only(result: Result) -> bool:
    return result.inside.format == "none"


def _packets(result: Result, r: dict[str, Any], side: str, fate: str | None = None,
             egress: bool | None = None, among: pl.DataFrame | None = None) -> pl.DataFrame:
    """A connection's packets in one capture (all its legs there), optionally of one fate and direction, in frame
    order. Only those rows are collected from the packet table; ``among``: look in these packets instead (of
    _packets_of, for a loop over many connections)."""
    pk = result.packets(side) if among is None else among.lazy()
    cond = _owned(r, side, _uplink_only(result))
    if cond is None:
        return pk.clear().collect()
    if fate is not None:
        cond &= pl.col("fate") == fate
    if egress is not None:
        cond &= pl.col("is_egress") == egress
    return pk.filter(cond).sort("frame_no").collect()


def _packets_of(result: Result, rows: list[dict[str, Any]], side: str, cond: pl.Expr | None = None) -> pl.DataFrame:
    """The packets in one capture of every connection in ``rows`` (those ``cond`` keeps, when given), collected in
    one pass over the packet table: _packets(..., among=) then finds each one's, where a loop over many
    connections would read a table on disk once per connection."""
    anchors = [r["inside_conn_id"] for r in rows if r["inside_conn_id"] is not None]
    legs = [r["outside_conn_id"] for r in rows if side == "outside" and r["inside_conn_id"] is None
            and r["outside_conn_id"] is not None]
    pk = result.packets(side)
    if not anchors and not legs:
        return pk.clear().collect()
    which = pl.col("anchor").is_in(pl.Series(anchors, dtype=pl.UInt32).implode())
    if legs:
        which |= pl.col("conn_id").is_in(pl.Series(legs, dtype=pl.UInt32).implode())
        if _uplink_only(result):
            which |= pl.col("anchor").is_in(pl.Series(legs, dtype=pl.UInt32).implode())
    return pk.filter(which if cond is None else which & cond).collect()


def _fate_frames(result: Result, r: dict[str, Any], side: str, fate: str, egress: bool | None = None,
                 limit: int = 6) -> list[int]:
    return _packets(result, r, side, fate, egress)["frame_no"].head(limit).to_list()


BUSY_PACKETS = 50
"""Both captures hold at least this many packets of connections before natproof calls them unrelated."""
UNRELATED_SHARE = 0.05
"""Below this share of crossing packets among the inside's (internal connections aside), the captures do not
look like two sides of one NAT."""


def _not_two_sides(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """Both captures busy, almost nothing in common: the wrong interface, the wrong host, or clocks further apart
    than --tolerance. Every other finding would then be about the mismatch, so this one stands alone."""
    judged = [r for r in rows if r["verdict"] != "internal" and r["inside_conn_id"] is not None]
    inside_packets = sum(r["egress_inside"] + r["reply_inside"] + r["icmp_errors_inside"] + (r["node_made_inside"] or 0)
                         for r in judged)
    crossed = sum(r["fate_crossed"] + r["fate_leaked"] for r in judged)
    if inside_packets < BUSY_PACKETS or result.outside.packets < BUSY_PACKETS:
        return []
    if crossed >= UNRELATED_SHARE * inside_packets:
        return []
    return [Finding(
        "not_two_sides", "error", "The captures do not look like two sides of one NAT",
        f"{len(judged)} connection(s) with {inside_packets} packet(s) on the inside and {result.outside.packets} "
        f"packet(s) on the outside, but only {crossed} packet(s) found on both sides: the outside capture was "
        "taken on another interface or host, or the clocks differ by more than --tolerance.",
        "Capture the node's uplink (eth0, or the interface of the default route) at the same time as the pod side; "
        "if the captures come from two hosts, pass --clock-offset SECONDS (outside minus inside) or a larger "
        "--tolerance.",
        connections=tuple(r["conn"] for r in judged),
        evidence=tuple(f"{_conn_label(r)}: {r['egress_inside'] + r['reply_inside'] + (r['node_made_inside'] or 0)} "
                       "packet(s) inside, "
                       f"{r['fate_crossed'] + r['fate_leaked']} found outside" for r in judged[:20]),
        data={"inside_packets": inside_packets, "outside_packets": result.outside.packets, "crossed": crossed})]


def _outside_beyond(result: Result, before: bool | None = None) -> int:
    """Outside packets that no connection owns and that fall outside the window both captures ran in, by more
    than CAPTURE_MARGIN_NS (the inside capture started late or stopped early): what the inside capture could not
    have shown, and what raises partial_overlap (_outside_before then counts every unpaired one before it).
    ``before``: True counts only those before the window, False only those after, None both."""
    ov = result.overlap()
    if ov["start"] is None or ov["outside_share"] >= 0.99:
        return 0
    off = int(round(result.clock_offset_s * 1e9))
    start, end = int(ov["start"] * 1e9) + off - CAPTURE_MARGIN_NS, int(ov["end"] * 1e9) + off + CAPTURE_MARGIN_NS
    early, late = pl.col("ts_ns") < start, pl.col("ts_ns") > end
    beyond = pl.col("anchor").is_null() & (early | late if before is None else early if before else late)
    return int(result.packets("outside").select(beyond.sum()).collect().item())


def _outside_before(result: Result) -> pl.DataFrame:
    """The outside packets that paired with nothing (fate neither crossed nor leaked, or no connection owns them:
    result.unmatched_outside counts them all) and came before the inside capture's first packet, on the inside
    clock: anchor (the connection's inside leg; null for the node's own traffic and legs that make no connection)
    and conn_id (the outside leg). No margin: partial_overlap accounts for every one of them once it is raised."""
    first = result.inside.first_ts_ns
    if not first or result.inside.format == "none" or result.outside.format == "none":
        return pl.DataFrame(schema={"anchor": pl.UInt32, "conn_id": pl.UInt32})
    off = int(round(result.clock_offset_s * 1e9))
    unpaired = pl.col("fate").is_null() | ~pl.col("fate").is_in(["crossed", "leaked"])
    return (result.packets("outside").filter(unpaired & (pl.col("ts_ns") - off < first))
            .select(pl.col("anchor").cast(pl.UInt32), pl.col("conn_id").cast(pl.UInt32)).collect())


CAPTURE_MARGIN_NS = 500_000_000
"""natproof.correlate.CAPTURE_EDGE_NS: how far outside the other capture's span a packet must be to count as
seen while it was not running."""


def _began_before(result: Result, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str, list[int]]]:
    """(row, side, frames) of the packets of ``rows`` seen on one side only (``side``'s capture) while the other
    capture is shown not running yet (natproof.correlate.capture_off_until, which flags their connections
    other_capture_off): sent before it started, neither dropped nor left untranslated. A connection with none (a
    whole one flagged so) is not in it."""
    a0, b0 = result.inside.first_ts_ns, result.outside.first_ts_ns
    if not (rows and a0 and b0):
        return []
    until = dict(zip(("inside", "outside"), capture_off_until(
        result.connections, result.packets("inside"), result.packets("outside"), a0, b0,
        int(round(result.clock_offset_s * 1e9))), strict=True))
    among = {side: _packets_of(result, rows, side, (pl.col("fate") == f"{side}_only") & (pl.col("ts_ns") <= t))
             for side, t in until.items() if t is not None}
    out = []
    for r in rows:
        for side, pk in among.items():
            early = _packets(result, r, side, among=pk)
            if early.height:
                out.append((r, side, early["frame_no"].to_list()))
    return out


def _partial_overlap(result: Result, unseen: list[dict[str, Any]],
                     began: list[tuple[dict[str, Any], str, list[int]]] = ()) -> list[Finding]:  # type: ignore[assignment]
    """Connections seen while the capture on the other side of the NAT was not running, or answered out of its
    sight: their verdict says what the captures show, not what the NAT did. Also outside traffic from before the
    inside capture started or after it stopped, which no connection can own; and (``began``: _began_before) the
    packets of connections that crossed seen on one side only before the other capture's first packet."""
    beyond = _outside_beyond(result)
    if not unseen and not beyond and not began:
        return []
    import datetime as dt

    off = int(result.clock_offset_s * 1e9)
    # Spans of different days (a record of another day) are dated, or read as printed they could overlap.
    times = [t for fmt, ts in ((result.inside.format, (result.inside.first_ts_ns, result.inside.last_ts_ns)),
                               (result.outside.format, (result.outside.first_ts_ns - off,
                                                        result.outside.last_ts_ns - off))) if fmt != "none" for t in ts]
    if result.conntrack is not None and "none" in (result.inside.format, result.outside.format):
        times += [t for t in (result.conntrack.first_ts_ns, result.conntrack.last_ts_ns) if t]
    dated = len({dt.datetime.fromtimestamp(t / 1e9, dt.UTC).date() for t in times}) > 1

    def hms(ns: int) -> str:
        return utc_ms(ns, dated)

    sep = " - " if dated else "-"

    span_out = f"{hms(result.outside.first_ts_ns - off)}{sep}{hms(result.outside.last_ts_ns - off)}"
    span_in = f"{hms(result.inside.first_ts_ns)}{sep}{hms(result.inside.last_ts_ns)}"
    # One capture and the kernel's record (natproof.correlate_one): the record stands for the other side.
    record = result.conntrack if "none" in (result.inside.format, result.outside.format) else None
    other = "the kernel's record" if record is not None else "the capture on the other side of the NAT"
    if record is not None:
        first, last = record.first_ts_ns, record.last_ts_ns
        span = f"{hms(first)}{sep}{hms(last)}" if first and last else "no time"
        span_in, span_out = ((span_in, span) if result.outside.format == "none" else (span, span_out))
    timed = [r for r in unseen if r["other_capture_off"]]
    answered = [r for r in unseen if not r["other_capture_off"]]

    def why(r: dict[str, Any]) -> str:
        if r["other_capture_off"]:
            return "while the kernel's record has no event" if record is not None else \
                "while the other capture showed nothing"
        return "answered by the far end, crossing in neither capture of the other side"

    evidence = [f"{_conn_label(r)} ({r['verdict']}): {hms(r['first_ts_ns'])}{sep}{hms(r['last_ts_ns'])}, {why(r)}"
                for r in unseen[:20]]
    parts = []
    if timed:
        parts.append(f"{len(timed)} were seen while {other} was not running" if record is None else
                     f"{len(timed)} were seen before the first or after the last event of {other}")
    if answered:
        parts.append(f"{len(answered)} were answered by the far end (so they crossed) although the other capture "
                     "shows neither direction, and came before its first packet or after its last: it was not "
                     "running then, or they took an interface it does not see")
    summary = f"{len(unseen)} connection(s) are seen on one side only: {'; '.join(parts)}. " if unseen else ""
    early_conns = list({r["conn"]: r for r, _, _ in began}.values())
    early_packets = sum(len(frames) for _, _, frames in began)
    if began:
        summary += (f"{len(early_conns)} connection(s) that crossed began before the other capture's first packet: "
                    f"{early_packets} of their packets, seen on one side only, came before it, while it was not "
                    "running yet (not dropped, not left untranslated). ")
        for r, side, frames in began[:20]:
            other = "outside" if side == "inside" else "inside"
            evidence.append(f"{_conn_label(r)} ({r['verdict']}): {side} frame(s) {_fmt_frames(frames[:6])} "
                            f"({len(frames)} seen on the {side} only) came before the {other} capture's first "
                            f"packet; {r['fate_crossed']} of its packets crossed after")
    listed = {r["conn"] for r in (*unseen, *early_conns)}
    before = _outside_before(result)
    owners = dict(result.connections.filter(pl.col("inside_conn_id").is_not_null())
                  .select("inside_conn_id", "conn").iter_rows()) if before.height else {}
    conn_of = [owners.get(a) if a is not None else None for a in before["anchor"].to_list()]
    of_listed = [c for c in conn_of if c in listed]
    of_others = [c for c in conn_of if c is not None and c not in listed]
    unowned = before.filter(pl.col("anchor").is_null())
    if before.height:
        # Every one of them, as `unmatched` counts them: of the connections listed here, of others, of none.
        parts = [f"{len(of_listed)} of {len(set(of_listed))} connection(s) listed here"] if of_listed else []
        if of_others:
            parts.append(f"{len(of_others)} of {len(set(of_others))} other connection(s)")
        if unowned.height:
            parts.append(f"{unowned.height} of {unowned['conn_id'].n_unique()} flow(s) in no connection (the "
                         "node's own traffic, or legs that make no connection)")
        summary += (f"{before.height} outside packet(s) with no counterpart came before the inside capture's first "
                    f"packet: {'; '.join(parts)}. ")
        evidence.append(f"{before.height} outside packet(s) with no counterpart before the inside capture's first "
                        f"packet ({hms(result.inside.first_ts_ns)}): {'; '.join(parts)}")
    after = _outside_beyond(result, before=False)
    if after:
        summary += (f"{after} outside packet(s) with no counterpart came after the inside capture's last packet, "
                    "while it was not running: their connections are in no table. ")
        evidence.append(f"{after} outside packet(s) after the window both captures ran in "
                        f"({result.overlap()['seconds']:.3f} s)")
    return [Finding(
        "partial_overlap", "warning", "Some connections fall outside what the other capture saw",
        f"{summary}"
        + (f"Inside capture {span_in}, outside capture {span_out} UTC, on the inside clock. " if record is None else
           f"{'Inside' if result.outside.format == 'none' else 'Outside'} capture "
           f"{span_in if result.outside.format == 'none' else span_out}, the kernel's record {record.path} "
           f"{span_out if result.outside.format == 'none' else span_in} UTC. ")
        + "What one capture "
        "alone shows says nothing about what the NAT did; it is left out of the other findings.",
        "Capture both sides over the same time (start both before the traffic, stop both after it), on the "
        "interfaces the traffic takes.",
        connections=tuple(sorted({r["conn"] for r in (*unseen, *early_conns)})), evidence=tuple(evidence),
        data={"inside": span_in, "outside": span_out, "capture_off": len(timed), "answered_unseen": len(answered),
              "outside_packets_beyond": beyond, "began_before": len(early_conns), "packets_before": early_packets,
              "outside_unmatched_before": before.height, "outside_unmatched_before_listed": len(of_listed),
              "outside_unmatched_before_other_connections": len(of_others),
              "outside_unmatched_before_no_connection": unowned.height})]


def _other_span(result: Result, r: dict[str, Any]) -> tuple[int, int] | None:
    """(first, last) on the inside clock, ns: the span of what stands for the other side of the NAT for ``r`` (the
    outside capture for a connection with an inside leg, else the inside one; the kernel's record with one
    capture); None when it has none."""
    if "none" in (result.inside.format, result.outside.format):
        record = result.conntrack
        span = (record.first_ts_ns, record.last_ts_ns) if record is not None else (None, None)
    elif r["inside_conn_id"] is not None:
        off = int(round(result.clock_offset_s * 1e9))
        span = (result.outside.first_ts_ns - off, result.outside.last_ts_ns - off)
    else:
        span = (result.inside.first_ts_ns, result.inside.last_ts_ns)
    return (span[0], span[1]) if span[0] and span[1] else None


def _within_other_span(result: Result, r: dict[str, Any]) -> bool:
    """``r`` (a connection seen on one side only) overlaps the span of the other side's capture or record
    (_other_span), its first and last packets with no margin: that capture ran while it did."""
    span = _other_span(result, r)
    return span is not None and r["first_ts_ns"] <= span[1] and r["last_ts_ns"] >= span[0]


def _unseen_while_running(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """Connections the far end answered (so they crossed: not_captured, not flagged other_capture_off) that lie
    within the span of the other capture (_within_other_span), which shows none of their packets: it ran, so they
    took a path it does not see, or never crossed the NAT (traffic between pods that a given pod network leaves
    out, natproof.networks.pod_cidr_misses). Set aside like partial_overlap's, with their own reason."""
    if not rows:
        return []
    record = "none" in (result.inside.format, result.outside.format)
    other = "the kernel's record" if record else "the other capture"
    spans = [(r, _other_span(result, r)) for r in rows[:20]]
    # Times of one day are shown as times of day, as partial_overlap does; of several, dated.
    dated = len({utc_ms(t)[:10] for r, span in spans for t in (r["first_ts_ns"], r["last_ts_ns"], *(span or ()))}) > 1

    def hms(ns: int) -> str:
        return utc_ms(ns, dated)

    evidence = [f"{_conn_label(r)} ({r['verdict']}): {hms(r['first_ts_ns'])}-{hms(r['last_ts_ns'])}, within "
                f"{other}'s {hms(span[0])}-{hms(span[1])} (UTC, inside clock), answered by the far end; {other} "
                "shows none of it" for r, span in spans if span]
    given = result.pod_networks_why.startswith("given")
    nets = [ipaddress.ip_network(n) for n in result.pod_networks]
    private = [space for space, _, _ in PRIVATE_SPACE]

    def left_out(a: str | None) -> bool:
        if not a:
            return False
        ip = ipaddress.ip_address(a)
        return any(ip in n for n in private) and not any(ip.version == n.version and ip in n for n in nets)

    between = [r for r in rows if left_out(r["orig_src"]) and left_out(r["orig_dst"])] if given else []
    summary = (f"{len(rows)} connection(s) are seen on one side only although {other} covered their time: the far "
               f"end answered them (so they reached it), yet {other} shows none of their packets while it ran. They "
               "took a path it does not see (another interface or uplink, a capture of another host), or never "
               "crossed the NAT at all (traffic between pods is taken for traffic that should cross when the pod "
               "network leaves them out). ")
    if between:
        summary += (f"{len(between)} of them run between private addresses the given pod network(s) "
                    f"({', '.join(result.pod_networks)}, --pod-cidr) leave out: if those are pods, --pod-cidr is "
                    "wrong and these connections are internal. ")
    summary += "What one capture alone shows says nothing about what the NAT did; it is left out of the other findings."
    return [Finding(
        "unseen_while_running", "warning", f"Some connections crossed out of the sight of {other} while it ran",
        summary,
        "If these are pods talking to each other, give --pod-cidr the network they are in (or leave it out to infer "
        "it); otherwise capture every interface the traffic takes (each uplink, or tcpdump -i any) at the same time.",
        connections=tuple(sorted(r["conn"] for r in rows)), evidence=tuple(evidence),
        data={"connections": len(rows), "between_private_outside_pod_networks": len(between)})]


def _headers_cut(result: Result, cut: list[dict[str, Any]]) -> list[Finding]:
    """Connections seen on one side only whose flow the other capture holds only as frames a snaplen cut inside
    or before their TCP/UDP header (other_capture_cut: natproof.assemble._cut_legs, _cut_outside): they reached
    that capture's interface, which kept their addresses (and ports, cut after them) and cut their flags and
    numbers, so neither a translation nor a drop is proven (verdict not_captured). A connection read by its hosts
    alone (other_capture_cut_shared > 0: the cut took the ports too) is said so: those frames show only that the
    capture cut packets between its hosts then, shared with every connection between them they overlap; where
    they are fewer than those connections, not all of them can have crossed there, and which did is unknown. One
    finding per capture that cut them; its counts: the connections' packets on the side that read them, the cut
    frames of the flows read by their ports (each flow one connection's), the connections read by hosts and
    those with fewer frames than connections sharing them, and that capture's truncated_l4 frames in all."""
    findings = []
    for side, read in (("inside", "outside"), ("outside", "inside")):
        rows = [r for r in cut if (r[f"fate_{read}_only"] > 0) and not r[f"fate_{side}_only"]]
        if not rows:
            continue
        packets = sum(r[f"fate_{read}_only"] for r in rows)
        by_ports = [r for r in rows if not r.get("other_capture_cut_shared")]
        by_hosts = [r for r in rows if r.get("other_capture_cut_shared")]
        too_few = [r for r in by_hosts if r["other_capture_cut"] < r["other_capture_cut_shared"]]
        frames = sum(r["other_capture_cut"] for r in by_ports)
        skipped = getattr(result, side).skipped.get("truncated_l4", 0)

        def own(r: dict[str, Any], side: str = side) -> str:
            if not r.get("other_capture_cut_shared"):
                return f"{r['other_capture_cut']} frame(s) of its flow on the {side} capture cut inside their header"
            n = r["other_capture_cut_shared"]
            return (f"{r['other_capture_cut']} frame(s) between its hosts on the {side} capture cut before their "
                    f"ports, overlapping {n} connection(s)" + (" (fewer frames than connections)"
                                                               if r["other_capture_cut"] < n else ""))

        evidence = [f"{_conn_label(r)}: {r[f'fate_{read}_only']} packet(s) on the {read} capture only, from frame "
                    f"{r[f'evidence_egress_{read}_frame'] or r['legs'][0]['first_frame']}; {own(r)}"
                    for r in rows[:20]]
        parts = []
        if by_ports:
            parts.append(
                f"{len(by_ports)} of them by their ports, as {frames} frame(s) of their own flows cut inside their "
                "TCP/UDP header: their addresses and ports are there, the rest of their headers (TCP flags and "
                "numbers) is not, so no packet pairs with its copy")
        if by_hosts:
            parts.append(
                f"{len(by_hosts)} of them by their hosts alone, as frames the snaplen cut before their ports: each "
                "one's far end, protocol and time match frames there, which shows that the capture cut packets "
                "between those hosts then, not which connection each frame was (one frame counts for every "
                "connection between those hosts it overlaps)"
                + (f"; {len(too_few)} of these overlap more connections than there are frames, so not all of them "
                   "can have crossed there, and the captures do not say which did" if too_few else ""))
        findings.append(Finding(
            "capture_cut", "warning", f"The {side} capture cut the headers of some connections' packets",
            f"{len(rows)} connection(s) ({packets} packet(s) on the {read} capture) are on the {side} capture only "
            f"as frames a snaplen cut inside or before their TCP/UDP header ({skipped} {side} frame(s) skipped so "
            f"in all, truncated_l4): {'; '.join(parts)}. The {side} capture holds packets of these flows (or "
            "between their hosts) then, so the NAT is not shown to have dropped them; which packets crossed and "
            "how the NAT rewrote them is not in the captures (verdict not_captured), and they are left out of the "
            "other findings.",
            f"Capture the {side} again with a snaplen that keeps whole headers: tcpdump's default (-s 0, 262144 "
            "bytes), or at least -s 128 (link, IP and TCP headers with options).",
            connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence),
            data={"connections": len(rows), "packets": packets, "cut_frames": frames, "side": side,
                  "truncated_l4": skipped, "by_hosts": len(by_hosts), "too_few_frames": len(too_few)}))
    return findings


def _node_answers(made: pl.DataFrame, rst_from: str) -> list[str]:
    """The first three packets the node made in answer (ICMP errors, RSTs) as evidence phrases; ``rst_from``
    says whose a RST claims to be ("as if from 198.51.100.10:443")."""
    return [f"frame {f['frame_no']}: "
            f"{icmp_error_name(f['icmp_type'], f['icmp_code'], ':' in (f['err_src'] or ''))} from {f['err_src']}"
            if f["is_icmp_error"] else f"frame {f['frame_no']}: TCP RST {rst_from}"
            for f in made.head(3).iter_rows(named=True)]


def _refused_by_node(result: Result, refused: list[dict[str, Any]],
                     quiet: list[dict[str, Any]] | None = None) -> list[Finding]:
    """not_forwarded, answered by the node itself: kube-proxy's REJECT for a Service without endpoints, or a
    REJECT rule (ICMP from the bridge address, or an RST forged as the far end; cases/reject-no-endpoints).
    ``quiet``: unanswered connections to a ClusterIP:port the node refused for others (their ICMP error
    rate-limited away)."""
    quiet = quiet or []
    if not refused:
        return []
    findings = []
    no_endpoints = [r for r in refused if r["service_type"] == "ClusterIP"] + quiet
    quiet_ids = {r["conn"] for r in quiet}
    rules = [r for r in refused if r["service_type"] != "ClusterIP"]
    for group, kind in ((no_endpoints, "service_no_endpoints"), (rules, "rejected_by_node")):
        if not group:
            continue
        evidence = []
        for r in group[:20]:
            if r["conn"] in quiet_ids:
                evidence.append(f"{_conn_label(r)}: nothing reached the outside and nothing answered it in the "
                                "captures: the node refused others to this ClusterIP:port, and rate-limits the ICMP "
                                "errors it sends (net.ipv4.icmp_ratelimit)")
                continue
            made = _packets(result, r, "inside", "node_generated")
            what = _node_answers(made, f"as if from {format_address(r['inside_dst'], r['inside_dport'])}")
            evidence.append(f"{_conn_label(r)}: nothing reached the outside; the node answered itself "
                            f"({'; '.join(what)})")
        if kind == "service_no_endpoints":
            vips = sorted({format_address(r["service_ip"], r["service_port"]) for r in group})
            findings.append(Finding(
                kind, "error", "Service without endpoints: the node rejects its ClusterIP",
                f"{len(group)} connection(s) to ClusterIP(s) {', '.join(vips)} were "
                f"{'refused' if quiet else 'answered'} by the node itself "
                "(kube-proxy's REJECT for a Service with no ready endpoints), never by a backend; nothing left "
                "the node."
                + (f" {len(quiet)} of them got no ICMP error in the captures: the kernel rate-limits them, and the "
                   "node refused the others to the same ClusterIP:port." if quiet else ""),
                "Check the Service's endpoints: `kubectl get endpointslices -A -l kubernetes.io/service-name=NAME` "
                "(empty, or no ready address), the selector against the pods' labels, and the pods' readiness "
                f"probes; kube-proxy's rule is `{_iptables(group)} -t filter -S KUBE-SERVICES | grep 'has no "
                "endpoints'`.",
                connections=tuple(r["conn"] for r in group), evidence=tuple(evidence),
                data={"services": vips, "rate_limited": len(quiet)}))
        else:
            dests = sorted({format_address(r["inside_dst"], r["inside_dport"]) for r in group})
            findings.append(Finding(
                kind, "error", "Connections refused by the node (REJECT)",
                f"{len(group)} connection(s) to {', '.join(dests)} were refused by the node itself: the RST or "
                "ICMP error the pod got was made on the node (nothing of the connection left it), not by the far "
                "end. A REJECT rule (a firewall, a NetworkPolicy) matches them.",
                f"Find the rule: `{_iptables(group)} -S | grep REJECT` and `{_iptables(group)} -L -v -n | grep "
                "REJECT` (its counter grows "
                "with these attempts); for a NetworkPolicy, `kubectl get networkpolicy -A`.",
                connections=tuple(r["conn"] for r in group), evidence=tuple(evidence),
                data={"destinations": dests}))
    return findings


def _service_unanswered(result: Result, unanswered: list[dict[str, Any]],
                        rows: list[dict[str, Any]]) -> list[Finding]:
    """not_forwarded ClusterIP connections with nothing from the node either: the DNAT went to an endpoint out of
    the captures' sight (on this node), which never answered, or the packets were dropped; when the client is
    itself an endpoint of the Service, hairpin failed (bridge port without hairpin mode, or no masquerade for
    hairpin: captures/hairpin-off)."""
    if not unanswered:
        return []
    backends: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        if r["service_type"] and r["backend_ip"]:
            backends.setdefault((r["service_ip"], r["service_port"]), set()).add(r["backend_ip"])
    hairpin = [r for r in unanswered if r["inside_src"] in backends.get((r["service_ip"], r["service_port"]), set())]
    at_backend = {r["conn"] for r in hairpin}  # by number: a list's `in` compares whole rows
    other = [r for r in unanswered if r["conn"] not in at_backend]
    findings = []
    for group, kind in ((hairpin, "hairpin_failed"), (other, "service_unanswered")):
        if not group:
            continue
        evidence = []
        for r in group[:20]:
            frames = _fate_frames(result, r, "inside", "inside_only", True)
            retrans = _syn_retransmissions(result, r["conn"])
            evidence.append(f"{_conn_label(r)}: {r['egress_inside']} packet(s) to the ClusterIP (frames "
                            f"{_fmt_frames(frames)})" + (f", {retrans} SYN retransmission(s)" if retrans else "")
                            + "; no answer, nothing on the outside")
        vips = sorted({format_address(r["service_ip"], r["service_port"]) for r in group})
        if kind == "hairpin_failed":
            findings.append(Finding(
                kind, "error", "Hairpin failed: a pod cannot reach a Service it backs",
                f"{len(group)} connection(s) from a pod to ClusterIP(s) {', '.join(vips)}, which that pod itself "
                "backs (other connections were DNATed to it), got no answer: the packet DNATed back to the pod "
                "must leave the bridge port it came in on.",
                "Turn on hairpin mode on the pod's bridge port (`bridge link show` shows `hairpin on`; kubelet "
                "`--hairpin-mode=hairpin-veth`, or `ip link set VETH type bridge_slave hairpin on`) and check that "
                "hairpin traffic is masqueraded (KUBE-MARK-MASQ in the KUBE-SEP chain, KUBE-POSTROUTING).",
                connections=tuple(r["conn"] for r in group), evidence=tuple(evidence), data={"services": vips}))
        else:
            findings.append(Finding(
                kind, "error", "ClusterIP connections got no answer and left no trace outside",
                f"{len(group)} connection(s) to ClusterIP(s) {', '.join(vips)} got no answer and nothing of them "
                "reached the outside: kube-proxy DNATed them to an endpoint on this node that the captures do not "
                "see and that did not answer, or the node dropped them. If the client backs the Service itself, "
                "this is hairpin failing.",
                "Check the endpoints (`kubectl get endpointslices -l kubernetes.io/service-name=NAME`) and that "
                "the endpoint pod listens on the target port; capture on the bridge or the endpoint's veth to see "
                "the DNATed leg; for hairpin, `bridge link show` must show `hairpin on` for the client's port.",
                connections=tuple(r["conn"] for r in group), evidence=tuple(evidence), data={"services": vips}))
    return findings


def _stale_entries(result: Result, stale: list[dict[str, Any]]) -> list[Finding]:
    """untranslated next to translated connections from the same source: the MASQUERADE rule covers that source
    (so it is not a wrong ``-s`` subnet); the untranslated flow's conntrack entry predates the rule (conntrack
    decides NAT once, when the entry is created)."""
    if not stale:
        return []
    evidence = [f"{_conn_label(r)} left as {format_address(r['outside_src'], r['outside_sport'])} (inside frame "
                f"{r['evidence_egress_inside_frame']}, outside frame {r['evidence_egress_outside_frame']}) while "
                f"other connections from {r['inside_src']} were translated" for r in stale[:20]]
    return [Finding(
        "stale_conntrack_entry", "error", "Untranslated flows from pods whose other connections are translated",
        f"{len(stale)} connection(s) left the node untranslated although their source's other connections were "
        "translated: the NAT rule covers the source, so these flows' conntrack entries were created before the "
        "rule (NAT is decided once per entry); long-lived UDP flows keep such an entry alive.",
        "Delete the stale entries so the next packet creates a new one through the NAT rule: `conntrack -D -s "
        f"{stale[0]['inside_src']} -d {stale[0]['inside_dst']}` (see `conntrack -L -s {stale[0]['inside_src']}`).",
        connections=tuple(r["conn"] for r in stale), evidence=tuple(evidence),
        data={"sources": sorted({r["inside_src"] for r in stale})})]


def _inbound_not_forwarded(result: Result, inbound: list[dict[str, Any]]) -> list[Finding]:
    """not_forwarded connections started outside (to a NodePort, or any address the node DNATs): none of their
    packets reached the inside. Answered on the outside by an ICMP error or a RST, the node refused them itself
    (no pod saw them): kube-proxy's REJECT in KUBE-EXTERNAL-SERVICES for a NodePort whose Service has no
    endpoints (a helper's kernel variant: ICMP port unreachable from the node's own address), or a firewall's
    REJECT, or the node's TCP for a port nothing DNATs. Unanswered, they were dropped on the node."""
    if not inbound:
        return []
    answered, silent = [], []
    for r in inbound:
        made = _packets(result, r, "outside", "node_generated")  # the node's ICMP errors and RSTs (assemble)
        (answered if made.height else silent).append((r, made))
    findings = []
    for group, kind in ((answered, "inbound_refused"), (silent, "inbound_dropped")):
        if not group:
            continue
        evidence = []
        for r, made in group[:20]:
            first = _packets(result, r, "outside", egress=True)["frame_no"].head(6).to_list()
            what = _node_answers(made, f"from {format_address(r['orig_dst'], r['orig_dport'])}")
            evidence.append(f"{_conn_label(r)}: {r['egress_outside']} packet(s) from the client outside (frames "
                            f"{_fmt_frames(first)}), none inside"
                            + (f"; the node answered itself ({'; '.join(what)})" if what else "; no answer"))
        ports = sorted({format_address(r["orig_dst"], r["orig_dport"]) for r, _ in group})
        services = sorted({format_address(r["service_ip"], r["service_port"]) for r, _ in group
                           if r["service_type"] == "NodePort"})
        named = f" (NodePort {', '.join(services)})" if services else ""
        if kind == "inbound_refused":
            findings.append(Finding(
                kind, "error", "Connections from outside refused by the node",
                f"{len(group)} connection(s) from outside to {', '.join(ports)}{named} reached no pod: the node "
                "answered them itself (the error or RST came from the node, none of their packets crossed to the "
                "inside). kube-proxy REJECTs a NodePort whose Service has no ready endpoints "
                "(KUBE-EXTERNAL-SERVICES); a firewall's REJECT rule, or the node's own TCP for a port nothing "
                "DNATs, answer alike.",
                "Check the Service's endpoints (`kubectl get endpointslices -A -l kubernetes.io/service-name=NAME`)"
                " and kube-proxy's rule (`iptables -t filter -S KUBE-EXTERNAL-SERVICES | grep 'has no endpoints'`);"
                " else `iptables -L -v -n | grep REJECT` and the NodePort's DNAT (`iptables -t nat -S "
                "KUBE-NODEPORTS`).",
                connections=tuple(r["conn"] for r, _ in group), evidence=tuple(evidence),
                data={"destinations": ports, "services": services}))
        else:
            findings.append(Finding(
                kind, "error", "Connections from outside never reached a pod",
                f"{len(group)} connection(s) from outside to {', '.join(ports)}{named} arrived on the outside "
                "and reached no pod, with no answer: the node dropped them (a DROP rule or policy, a NodePort "
                "with externalTrafficPolicy=Local and no endpoint on this node, no DNAT rule for the port), or "
                "the DNAT sent them to an endpoint the inside capture does not see.",
                "Check the NodePort's rules (`iptables -t nat -S KUBE-NODEPORTS`, `iptables -L -v -n` for DROP "
                "counters that grow with these attempts) and the Service's endpoints on this node.",
                connections=tuple(r["conn"] for r, _ in group), evidence=tuple(evidence),
                data={"destinations": ports, "services": services}))
    return findings


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
        others = len(egress_rows) - len(blocked)
        same_pods = sorted(set(pods) & set(passing))
        who = (f"other connections from {', '.join(same_pods)} and others" if same_pods
               else ", ".join(passing) or "other connections")
        summary = (f"{len(blocked)} connection(s) from {', '.join(pods)} never left the node while {others} "
                   f"connection(s) ({who}) did: forwarding is on, so the FORWARD chain (a DROP rule or policy, a "
                   "network policy) drops these pods or destinations.")
        fix = ("Run `iptables -L FORWARD -v -n` and look for DROP rules or a DROP policy whose counters grow "
               f"with these packets; the affected sources are {', '.join(pods)}.")
    return [Finding(
        "forwarding_blocked", "error",
        "Packets not forwarded (IP forwarding off or FORWARD chain drop)" if everything
        else "Some pods' packets are dropped in the FORWARD chain",
        summary, fix, connections=tuple(r["conn"] for r in blocked), evidence=tuple(evidence),
        data={"pods": pods, "all_blocked": everything, "syn_retransmissions": retrans_total})]


def _routed(result: Result, routed: list[dict[str, Any]]) -> list[Finding]:
    """untranslated with replies crossing back: a routed path that keeps addresses (a router with no NAT, VPC CNI
    pods with routable addresses, an SNAT exclusion for a VPC CIDR): information, not a failure."""
    if not routed:
        return []
    evidence = [_unchanged_evidence(r) for r in routed[:20]]
    nets = _subnets([r["inside_src"] for r in routed])
    lat = [r["latency_median_us"] for r in routed if r["latency_median_us"] is not None]
    everything = len(routed) == result.connections.filter(pl.col("verdict") != "internal").height
    if everything and lat and max(abs(x) for x in lat) <= SAME_PLACE_US:
        return [Finding(
            "same_place", "warning", "No NAT between the captures: they look taken at the same place",
            f"{len(routed)} connection(s) crossed with nothing rewritten in no measurable time (at most "
            f"{max(abs(x) for x in lat):g} us): the two captures were taken at one point, not on the two sides of "
            "a NAT.",
            "Capture on each side of the NAT: the pod's veth (or cni0) and the node's uplink (eth0), at the same "
            "time.", connections=tuple(r["conn"] for r in routed), evidence=tuple(evidence),
            data={"subnets": nets})]
    return [Finding(
        "routed_path", "info", "Routed path: addresses kept, replies come back",
        f"{len(routed)} connection(s) crossed with nothing rewritten and their replies crossed back: the path "
        f"between the captures routes {', '.join(nets)} without NAT.",
        "Nothing to fix if no NAT is wanted here (a routed network, pods with routable addresses, an SNAT "
        "exclusion); if one was expected, check `iptables -t nat -L POSTROUTING -n -v`.",
        connections=tuple(r["conn"] for r in routed), evidence=tuple(evidence), data={"subnets": nets})]


def _answered(r: dict[str, Any]) -> bool:
    """The far end answered a connection: replies crossed back, or, where one side was not captured and the kernel's
    record gives it (evidence_level kernel_record), conntrack saw a reply."""
    return bool(r["matched_reply"]) or (r["evidence_level"] == "kernel_record" and bool(r["kernel_replied"]))


def _unchanged_evidence(r: dict[str, Any]) -> str:
    """An evidence line for a connection that crossed unchanged and was answered."""
    if not r["matched_reply"]:  # one capture and the kernel's record
        side = "inside" if r["inside_conn_id"] is not None else "outside"
        return (f"{_conn_label(r)} left unchanged by the kernel's record; the kernel saw its replies "
                f"({r['reply_inside'] if side == 'inside' else r['reply_outside']} reply packet(s) in the {side} "
                "capture)")
    if r["evidence_egress_outside_frame"] is None:  # its own packets left by a path the outside capture misses
        went = (f"{_conn_label(r)} was answered unchanged; its {r['egress_inside']} packet(s) are not on the outside "
                "capture")
    else:
        went = (f"{_conn_label(r)} crossed unchanged (inside frame {r['evidence_egress_inside_frame']}, outside "
                f"frame {r['evidence_egress_outside_frame']})")
    return (f"{went}; {r['matched_reply']} reply packet(s) crossed back (first: outside frame "
            f"{r['evidence_reply_outside_frame']}, inside frame {r['evidence_reply_inside_frame']})")


def _snat_exclusion(result: Result, excluded: list[dict[str, Any]]) -> list[Finding]:
    """untranslated and answered, from pods whose other connections are translated: the NAT rule skips these
    destinations on purpose and the path routes the pods' own addresses to them (captures/eks-vpc-cni: the VPC CNI
    never SNATs traffic to the VPC CIDR or to AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS): information, not a failure."""
    if not excluded:
        return []
    evidence = [_unchanged_evidence(r) for r in excluded[:20]]
    sources = sorted({r["inside_src"] for r in excluded}, key=lambda a: ipaddress.ip_address(a).packed)
    destinations = sorted({r["inside_dst"] for r in excluded}, key=lambda a: ipaddress.ip_address(a).packed)
    shown = ", ".join(destinations[:5]) + (f" and {len(destinations) - 5} more" if len(destinations) > 5 else "")
    return [Finding(
        "snat_exclusion", "info", "SNAT skipped for some destinations: pod addresses kept, replies come back",
        f"{len(excluded)} connection(s) to {shown} crossed with the pod's own address and were answered, while the "
        f"same pod(s) ({', '.join(sources)}) had their other connections translated: the NAT rule leaves these "
        "destinations out and the path routes the pods' addresses back to them.",
        "Nothing to fix if these destinations are meant to see pod addresses (on EKS the VPC CNI never SNATs the VPC "
        "CIDR or AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS; ip-masq-agent's nonMasqueradeCIDRs; a `-d ... -j RETURN` ahead "
        "of the MASQUERADE rule); if they are meant to see the node's address, check the exclusions in "
        "`iptables -t nat -S POSTROUTING` and the chains it jumps to (AWS-SNAT-CHAIN-0 on EKS).",
        connections=tuple(r["conn"] for r in excluded), evidence=tuple(evidence),
        data={"destinations": destinations, "sources": sources,
              "destination_subnets": _subnets(destinations)})]


def _masquerade(result: Result, leaked: list[dict[str, Any]], translated: list[dict[str, Any]],
                routed: list[dict[str, Any]]) -> list[Finding]:
    """untranslated without replies crossing back: egress left with the pod's own source address, and the far end
    could not answer it. Where other untranslated connections were answered (``routed``) the path routes some
    pod addresses back, so the missing piece may as well be the route back as a MASQUERADE rule (lab: routed)."""
    if not leaked:
        return []
    leak_nets = _subnets([r["inside_src"] for r in leaked])
    ok_nets = _subnets([r["inside_src"] for r in translated])
    routed_nets = _subnets([r["inside_src"] for r in routed])
    evidence = []
    for r in leaked[:20]:
        ein, eout = r["evidence_egress_inside_frame"], r["evidence_egress_outside_frame"]
        replies = "no reply came back" if not r["reply_outside"] else f"{r['reply_outside']} replies came back"
        evidence.append(f"{_conn_label(r)} left as {format_address(r['outside_src'], r['outside_sport'])} "
                        f"(inside frame {ein}, outside frame {eout}); {replies}")
    pod_net = ", ".join(result.pod_networks) or "the pod network"
    if routed:
        return [Finding(
            "no_route_back", "error", "Untranslated egress with no way back",
            f"{len(leaked)} connection(s) from {', '.join(leak_nets)} left untranslated and got no reply, while "
            f"{len(routed)} untranslated connection(s) from {', '.join(routed_nets)} were answered: the path routes "
            f"{', '.join(routed_nets)} back but not {', '.join(leak_nets)}.",
            f"If the pods' addresses are meant to be routed, add the route back to {', '.join(leak_nets)} on the "
            f"far side (as {', '.join(routed_nets)} has); if they are meant to be hidden, MASQUERADE "
            f"{', '.join(leak_nets)} (`iptables -t nat -A POSTROUTING -s {leak_nets[0]} -j MASQUERADE`).",
            connections=tuple(r["conn"] for r in leaked), evidence=tuple(evidence),
            data={"untranslated_subnets": leak_nets, "routed_subnets": routed_nets})]
    if not translated:
        return [Finding(
            "no_masquerade", "error", "No MASQUERADE: pod addresses leave the node untranslated",
            f"{len(leaked)} connection(s) left on the outside still carrying the pod's own address "
            f"({', '.join(leak_nets)}); the internet does not route pod addresses back, so replies never return.",
            f"Check `iptables -t nat -L POSTROUTING -n -v` for a MASQUERADE rule; add one: `iptables -t nat -A "
            f"POSTROUTING -s {pod_net.split(', ')[0]} ! -d {pod_net.split(', ')[0]} -j MASQUERADE`.",
            connections=tuple(r["conn"] for r in leaked), evidence=tuple(evidence),
            data={"untranslated_subnets": leak_nets})]
    # A subnet whose other sources were translated is covered by the rule: its untranslated connections escaped
    # the NAT some other way (a helper's trial: pod .13 untranslated beside pod .10 translated, one /24).
    covered = [r for r in leaked if _subnets([r["inside_src"]])[0] in ok_nets]
    findings = _skipped_sources(covered, translated)
    covered_conns = {r["conn"] for r in covered}
    apart = [r for r in leaked if r["conn"] not in covered_conns]
    if not apart:
        return findings
    leak_nets = _subnets([r["inside_src"] for r in apart])
    lines = [line for r, line in zip(leaked[:20], evidence, strict=False) if r["conn"] not in covered_conns]
    return [Finding(
        "wrong_source_subnet", "error", "MASQUERADE rule covers the wrong source subnet",
        f"Connections from {', '.join(leak_nets)} leave untranslated while those from {', '.join(ok_nets)} are "
        "translated: the rule's `-s` range matches only some pod subnets.",
        f"Check the `-s` range of the rule in `iptables -t nat -L POSTROUTING -n -v`; it must cover "
        f"{', '.join(leak_nets)} too (e.g. `-s {pod_net.split(', ')[0]}`).",
        connections=tuple(r["conn"] for r in apart), evidence=tuple(lines),
        data={"untranslated_subnets": leak_nets, "translated_subnets": ok_nets}), *findings]


def _skipped_sources(leaked: list[dict[str, Any]], translated: list[dict[str, Any]]) -> list[Finding]:
    """untranslated and unanswered, from sources of a subnet (/24, IPv6 /64) whose other sources' connections were
    translated: the rule's `-s` range covers the subnet, so the subnet is not the cause; these sources' packets
    escaped the NAT (an exception for them ahead of the MASQUERADE rule, conntrack entries made before the rule,
    a NAT exemption for their destinations). A source with translated connections of its own is a stale entry
    (_stale_entries), set aside before."""
    if not leaked:
        return []
    sources = sorted({r["inside_src"] for r in leaked}, key=lambda a: ipaddress.ip_address(a).packed)
    nets = _subnets(sources)
    others = sorted({r["inside_src"] for r in translated if _subnets([r["inside_src"]])[0] in nets},
                    key=lambda a: ipaddress.ip_address(a).packed)
    evidence = []
    for r in leaked[:20]:
        replies = "no reply came back" if not r["reply_outside"] else f"{r['reply_outside']} replies came back"
        evidence.append(f"{_conn_label(r)} left as {format_address(r['outside_src'], r['outside_sport'])} "
                        f"(inside frame {r['evidence_egress_inside_frame']}, outside frame "
                        f"{r['evidence_egress_outside_frame']}); {replies}")
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    return [Finding(
        "untranslated_sources", "error", "Some sources leave untranslated while others of their subnet are translated",
        f"{len(leaked)} connection(s) from {', '.join(sources)} left the node untranslated and got no reply, while "
        f"connections from {shown} of the same subnet ({', '.join(nets)}) were translated: the MASQUERADE rule "
        "covers the subnet, so these addresses' packets escaped it: a rule exception for them, conntrack entries "
        "made before the rule existed (NAT is decided once per entry), or a NAT exemption for their destinations.",
        "Look for an exception ahead of the MASQUERADE rule for these sources or their destinations (`iptables -t "
        "nat -S POSTROUTING` and the chains it jumps to: a `-s ADDR -j RETURN` or ACCEPT, ip-masq-agent's "
        f"nonMasqueradeCIDRs); list their entries (`conntrack -L -s {sources[0]}`) and delete stale ones "
        f"(`conntrack -D -s {sources[0]}`) so the next packet is NATed anew.",
        connections=tuple(r["conn"] for r in leaked), evidence=tuple(evidence),
        data={"sources": sources, "translated_sources": others, "subnets": nets})]


def _replies(result: Result, dropped: list[dict[str, Any]]) -> list[Finding]:
    """reply_dropped: replies reached the outside for the translated tuple, never the pod."""
    if not dropped:
        return []
    evidence = []
    for r in dropped[:20]:
        if r["initiator"] == "outside":  # the pod answered; its replies never left on the outside
            frames = _fate_frames(result, r, "inside", "inside_only", False)
            evidence.append(f"{_conn_label(r)}: {r['reply_inside']} reply packet(s) from the pod to "
                            f"{format_address(r['inside_src'], r['inside_sport'])} on the inside (frames "
                            f"{_fmt_frames(frames)}), none on the outside")
            continue
        frames = _frames(result, r["conn"], "outside", False)
        evidence.append(f"{_conn_label(r)}: {r['reply_outside']} reply packet(s) to "
                        f"{format_address(r['outside_src'], r['outside_sport'])} on the outside (frames "
                        f"{_fmt_frames(frames)}), none inside")
    ports = sorted({r["inside_dport"] for r in dropped})
    inbound = sum(r["initiator"] == "outside" for r in dropped)
    toward = ("the pods" if not inbound else "the clients outside" if inbound == len(dropped)
              else "the pods, or the clients outside")
    # Replies of a connection started outside are sent by the pod: not seen on the outside, they were dropped on
    # the node or left by an uplink the outside capture does not see (its initiator's TCP acks would have told
    # natproof the latter: reply_other_path); the captures cannot tell which for datagrams.
    egress = len(dropped) - inbound
    said = []
    if egress:
        said.append(f"{egress} connection(s) got replies on the outside, addressed to the translated tuple, that "
                    "never reached the pod: the node drops them after conntrack (a FORWARD rule, rp_filter, or a "
                    "policy).")
    if inbound:
        said.append(f"{inbound} connection(s) started outside got the pod's replies on the inside that never "
                    "reached the captured outside interface: dropped on the node after conntrack (a FORWARD rule, "
                    "rp_filter, a policy), or sent out of another uplink (asymmetric routing). The captures "
                    "cannot tell which: nothing the client sent acknowledges them (a datagram carries no "
                    "acknowledgement; a TCP client's acks would prove the latter).")
    return [Finding(
        "replies_dropped", "error",
        "Replies dropped on the node (reverse NAT never delivered)" if not inbound
        else "Replies never crossed the node (dropped, or left by an uplink not captured)",
        " ".join(said),
        f"Run `{_iptables(dropped)} -L FORWARD -v -n` for rules dropping traffic from source port(s) "
        f"{', '.join(map(str, ports))} toward {toward}; check `conntrack -L` shows the entries as replied"
        + ("; for the ones started outside, `ip route get CLIENT` on the node names the uplink their replies take."
           if inbound else "."),
        connections=tuple(r["conn"] for r in dropped), evidence=tuple(evidence), data={"server_ports": ports})]


def _no_reply(result: Result, silent: list[dict[str, Any]]) -> list[Finding]:
    """no_reply with no ICMP error: translated and sent, the far end never answered (not the NAT's fault); for a
    ClusterIP, the backend kube-proxy chose never answered."""
    if not silent:
        return []
    findings = []
    backends = [r for r in silent if r["service_type"] == "ClusterIP" and r["backend_ip"]]
    at_backends = {r["conn"] for r in backends}  # by number: a list's `in` compares whole rows
    rest = [r for r in silent if r["conn"] not in at_backends]
    if backends:
        evidence = [f"{_conn_label(r)} DNATed to {format_address(r['backend_ip'], r['backend_port'])} and left as "
                    f"{format_address(r['outside_src'], r['outside_sport'])} (outside frame "
                    f"{r['evidence_egress_outside_frame']}); nothing came back" for r in backends[:20]]
        chosen = sorted({format_address(r["backend_ip"], r["backend_port"]) for r in backends})
        findings.append(Finding(
            "service_backend_silent", "error", "Service DNAT to a backend that never answers",
            f"{len(backends)} connection(s) to a ClusterIP were DNATed to {', '.join(chosen)} and sent on, and the "
            "backend never answered: the endpoint is gone or not listening while kube-proxy still sends to it.",
            "Check the endpoint is ready and listening on its target port (`kubectl get endpointslices`, "
            "`kubectl get pod -o wide`); a stale endpoint points at kube-proxy's sync (`iptables -t nat -S | grep "
            "KUBE-SEP`).",
            connections=tuple(r["conn"] for r in backends), evidence=tuple(evidence), data={"backends": chosen}))
    if rest:
        evidence = [f"{_conn_label(r)} left as {format_address(r['outside_src'], r['outside_sport'])} (outside "
                    f"frame {r['evidence_egress_outside_frame']}); nothing came back" for r in rest[:20]]
        findings.append(Finding(
            "no_reply", "warning", "No reply from the far end",
            f"{len(rest)} connection(s) were translated and left the node, but the far end did not answer. The NAT "
            "did its part; look beyond the node.",
            "Check the destination is up and reachable from the node's address (firewalls, security groups, a "
            "NAT gateway further on).",
            connections=tuple(r["conn"] for r in rest), evidence=tuple(evidence), data={"refused": 0}))
    return findings


ICMP_UNREACHABLE_NAMES = {0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
                          3: "port unreachable", 4: "fragmentation needed", 9: "net administratively prohibited",
                          10: "host administratively prohibited", 13: "communication administratively prohibited"}
"""ICMP type 3 codes (RFC 792, RFC 1812)."""
ICMP6_NAMES = {(1, 0): "no route to destination", (1, 1): "administratively prohibited",
               (1, 3): "address unreachable", (1, 4): "port unreachable", (1, 5): "source address failed policy",
               (1, 6): "reject route", (2, 0): "packet too big", (3, 0): "hop limit exceeded"}
"""ICMPv6 (type, code) names (RFC 4443)."""


def icmp_error_name(type_: int, code: int, v6: bool) -> str:
    """What an ICMP (``v6``: ICMPv6) error's type and code say, in RFC 792/4443's words."""
    if v6:
        return ICMP6_NAMES.get((type_, code), f"ICMPv6 type {type_} code {code}")
    if type_ == 3:
        return ICMP_UNREACHABLE_NAMES.get(code, f"ICMP type 3 code {code}")
    return {11: "time exceeded"}.get(type_, f"ICMP type {type_} code {code}")


def _icmp_kind(pk: dict[str, Any], r: dict[str, Any]) -> str:
    """What one ICMP error says: refused (port/protocol unreachable from the destination itself), path_mtu
    (fragmentation needed / packet too big, RFC 1191/4443), prohibited (administratively), unreachable (a
    router on the path: host/net unreachable, reassembly time exceeded), time_exceeded (TTL or hop limit exceeded
    in transit: a packet's TTL ran out at a hop, RFC 792/4443: _expired says whether a probe or a loop)."""
    v6 = ":" in (r["inside_src"] or "")
    t, c = pk["icmp_type"], pk["icmp_code"]
    if (not v6 and t == 11 and c == 0) or (v6 and t == 3 and c == 0):
        return "time_exceeded"
    if (not v6 and t == 3 and c == 4) or (v6 and t == 2):
        return "path_mtu"
    if (not v6 and t == 3 and c in (9, 10, 13)) or (v6 and t == 1 and c == 1):
        return "prohibited"
    if (not v6 and t == 3 and c in (2, 3)) or (v6 and t == 1 and c == 4):
        return "refused"
    return "unreachable"


def _only_time_exceeded(made: pl.DataFrame, r: dict[str, Any]) -> bool:
    """Whether the packets a node made in answer (``made``) are all ICMP time exceeded (and there are some)."""
    return made.height > 0 and all(e["is_icmp_error"] and _icmp_kind(e, r) == "time_exceeded"
                                   for e in made.iter_rows(named=True))


def _icmp_errors(result: Result, answered: list[dict[str, Any]],
                 went_on: list[dict[str, Any]] | None = None) -> list[Finding]:
    """no_reply answered by an ICMP error: named for what it is and who sent it (cases/pmtud-frag-needed: a
    router's "fragmentation needed", reverse-translated by the node like any related ICMP error). ``went_on``:
    connections with an ICMP error that were answered all the same; only a path-MTU error among them is named
    (path MTU discovery at work: the sender resent smaller packets)."""
    went_on = went_on or []
    if not answered and not went_on:
        return []
    groups: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    reached_pod: set[int] = set()
    answered_after: set[int] = set()
    every = answered + went_on
    silent = {r["conn"] for r in answered}
    errors = {side: _packets_of(result, every, side, pl.col("is_icmp_error")) for side in ("inside", "outside")}
    for r in every:
        errs = _packets(result, r, "inside", among=errors["inside"])
        seen_inside = not errs.is_empty()
        if not seen_inside:
            errs = _packets(result, r, "outside", among=errors["outside"])
        errs = errs.with_columns(pl.lit("inside" if seen_inside else "outside").alias("_side"))
        if r["conn"] in silent:
            # The first error of each kind: a datagram too big for the node's uplink, then one that crossed and was
            # refused (a helper's kernel variant) is both a path-MTU signal and a refusal.
            kinds: dict[str, dict[str, Any]] = {}
            for e in errs.iter_rows(named=True):
                kinds.setdefault(_icmp_kind(e, r), e)
            first = next(iter(kinds.values()))
        else:  # the first path-MTU error among its ICMP errors, if any
            first = next((e for e in errs.iter_rows(named=True) if _icmp_kind(e, r) == "path_mtu"), None)
            if first is None:
                continue
            kinds = {"path_mtu": first}
        if seen_inside:
            reached_pod.add(r["conn"])
        if r["conn"] not in silent:
            # A reply after the error, on the capture that shows it: path MTU discovery went on (a reply before
            # it, the handshake's, says nothing of it: a helper's variant).
            later = _packets(result, r, "inside" if seen_inside else "outside").filter(
                ~pl.col("is_egress") & ~pl.col("is_icmp_error") & (pl.col("ts_ns") > first["ts_ns"]))
            if later.height:
                answered_after.add(r["conn"])
        for kind, e in kinds.items():
            groups.setdefault(kind, []).append((r, e))
    findings = []
    for kind, items in groups.items():
        def line(r: dict[str, Any], e: dict[str, Any]) -> str:
            name = icmp_error_name(e["icmp_type"], e["icmp_code"], ":" in (r["inside_src"] or ""))
            mtu = f", mtu {e['icmp_mtu']}" if e["icmp_mtu"] is not None else ""
            who = ("the destination" if e["err_src"] == r["inside_dst"] or e["err_src"] == r["trans_dst"]
                   else f"{e['err_src']} (the node itself: made here, never crossed)" if e.get("fate") ==
                   "node_generated" else f"{e['err_src']} (a router on the path, not the destination)")
            return f"{_conn_label(r)}: {name}{mtu} from {who} ({e['_side']} frame {e['frame_no']})"
        evidence = [line(r, e) for r, e in items[:20]]
        conns = tuple(r["conn"] for r, _ in items)
        if kind == "path_mtu":
            mtus = sorted({e["icmp_mtu"] for _, e in items if e["icmp_mtu"] is not None})
            routers = sorted({e["err_src"] for _, e in items if e["err_src"] is not None})
            v6 = all(":" in (r["inside_src"] or "") for r, _ in items)
            said = "packet too big" if v6 else "fragmentation needed"
            seen_in = sum(1 for r, _ in items if r["conn"] in reached_pod)
            # Made by the node itself (its pod-side address), not relayed: the node could not forward the packet
            # out of its own uplink (a helper's kernel variant: pod MTU 9000, eth0 1500). No NAT was involved.
            by_node = sorted({e["err_src"] for _, e in items if e.get("fate") == "node_generated"})
            node_made = bool(by_node) and len(by_node) == len(routers)
            if node_made:
                relay = ("The node made the error itself (it is the pod's gateway): the packets too big for its "
                         "uplink never reached the NAT; the pod's MTU is larger than the uplink's.")
            elif seen_in == len(items):
                relay = ("The NAT reverse-translated the ICMP error to the pod, as it should; the server is not at "
                         "fault.")
            elif seen_in == 0:
                relay = ("The inside capture shows no copy of the error: whether the NAT passed it back to the pod "
                         "is not proven (a filter dropping ICMP would also break path MTU discovery).")
            else:
                relay = (f"The inside capture shows the error reached the pod for {seen_in} of them; for the other "
                         f"{len(items) - seen_in} no copy crossed back.")
            clamp = ("`ip6tables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu`"
                     if v6 else "`iptables -t mangle -A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS "
                     "--clamp-mss-to-pmtu`")
            carried = sum(1 for r, _ in items if r["conn"] in answered_after)
            if carried == len(items):
                after = (" Every one of them was answered afterwards: the sender resent smaller packets (path MTU "
                         "discovery worked, at the cost of a drop and a delay for each new destination).")
            elif carried:
                after = (f" {carried} of them were answered afterwards (path MTU discovery worked for them); "
                         f"{len(items) - carried} got no reply after it.")
            else:
                after = "" if all(r["conn"] in silent for r, _ in items) else " None was answered after it."
            # Nothing lost for good: the NAT passed the signal back and every connection was answered after it.
            fine = carried == len(items) and seen_in == len(items)
            findings.append(Finding(
                "path_mtu", "info" if fine else "warning",
                f"Path MTU discovery at work ({said})" if fine else f"Packets too big for the path ({said})",
                f"{len(items)} connection(s) sent packets larger than a link on the path allows: "
                + (f"the node itself ({', '.join(by_node)})" if node_made
                   else f"router(s) {', '.join(routers)}")
                + f" answered \"{said}\" (next-hop MTU {', '.join(map(str, mtus))}) and dropped them. {relay}{after}",
                ("Give the pods the uplink's MTU, less any overlay's overhead (the CNI's mtu setting), "
                 if node_made else "Lower the MTU on the path's near side ")
                + f"or clamp TCP MSS ({clamp}); for UDP, send datagrams that fit "
                f"{min(mtus) if mtus else 'the path MTU'} bytes, and make sure "
                f"{'ICMPv6 type 2' if v6 else 'ICMP type 3 code 4'} is not filtered.",
                connections=conns, evidence=tuple(evidence),
                data={"mtu": mtus, "routers": routers, "reached_pod": seen_in, "answered_after": carried,
                      "by_node": by_node}))
        elif kind == "refused":
            findings.append(Finding(
                "refused", "warning", "The far end refused (port or protocol unreachable)",
                f"{len(items)} connection(s) were translated and reached the destination, which answered that "
                "nothing listens there (ICMP port/protocol unreachable). The NAT did its part.",
                "Check the service on the destination listens on that port and protocol.",
                connections=conns, evidence=tuple(evidence), data={"refused": len(items)}))
        elif kind == "time_exceeded":
            findings += _expired(result, items)
        elif kind == "prohibited":
            findings.append(Finding(
                "prohibited", "warning", "A firewall on the path prohibits the traffic",
                f"{len(items)} connection(s) were answered with ICMP \"administratively prohibited\": a filter on "
                "the path (or at the destination) rejects them.",
                "Find the filter at the ICMP error's source address (its REJECT --reject-with icmp-*-prohibited).",
                connections=conns, evidence=tuple(evidence), data={}))
        else:
            findings.append(Finding(
                "unreachable", "warning", "Destination unreachable from the path",
                f"{len(items)} connection(s) were translated and sent, and a router answered that the destination "
                "cannot be reached (host/net unreachable).",
                "Check routing beyond the node towards the destination (the ICMP error's source is the router "
                "that gave up).",
                connections=conns, evidence=tuple(evidence), data={}))
    return findings


PROBE_TTL_MAX = 30
"""The largest TTL (IPv6 hop limit) a packet sent to probe the path carries: traceroute's default maximum hop count
(-m 30; mtr's and tracepath's alike), where a host's own packets start at 64, 128 or 255."""


def _sent_ttl(result: Result, r: dict[str, Any], e: dict[str, Any], side: str) -> tuple[int | None, int | None]:
    """(TTL, frame) of the packet an ICMP error ``e`` (seen on ``side``) answers, as its sender sent it: the last
    of the sender's packets before the error on the sender's side of the NAT (the initiator's side for its own
    packets: the pod's as it sent them for a connection started inside), else its lowest TTL there; (None, None)
    when that side holds none."""
    init_side = "inside" if r["initiator"] == "inside" else "outside"
    by_init = not e["is_egress"]  # an error runs against the packet it quotes
    sender_side = init_side if by_init else ("outside" if init_side == "inside" else "inside")
    sent = _packets(result, r, sender_side, egress=by_init).filter(~pl.col("is_icmp_error"))
    if sent.is_empty() or "ttl" not in sent.columns:
        return None, None
    # The error's time on the sender's side's clock (clock_offset_s: outside minus inside).
    offset = int(round(result.clock_offset_s * 1e9))
    at = e["ts_ns"] + (0 if side == sender_side else -offset if side == "outside" else offset)
    before = sent.filter(pl.col("ts_ns") <= at)
    row = before.row(-1, named=True) if before.height else sent.sort("ttl").row(0, named=True)
    return row["ttl"], row["frame_no"]


def _expired(result: Result, items: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Finding]:
    """Connections answered by ICMP time exceeded (IPv4 type 11, ICMPv6 type 3: a hop's TTL ran out), judged by
    the TTL the packet was sent with (_sent_ttl): at most PROBE_TTL_MAX, a probe of the path (traceroute: a helper's
    trial, read as a REJECT when the node answered TTL 1, as a routing failure when a router answered TTL 2), which is
    forwarding at work (info); more, a packet that went round a routing loop (warning). A REJECT never sends time
    exceeded (it answers port or host unreachable, or a TCP RST)."""
    probes: list[tuple[dict[str, Any], dict[str, Any], int | None, int | None]] = []
    loops: list[tuple[dict[str, Any], dict[str, Any], int | None, int | None]] = []
    for r, e in items:
        ttl, frame = _sent_ttl(result, r, e, e["_side"])
        (loops if ttl is not None and ttl > PROBE_TTL_MAX else probes).append((r, e, ttl, frame))
    probes.sort(key=lambda g: g[0]["conn"])
    loops.sort(key=lambda g: g[0]["conn"])
    findings = []

    def hop(r: dict[str, Any], e: dict[str, Any]) -> str:
        return (f"{e['err_src']} (the node itself)" if e.get("fate") == "node_generated"
                else f"{e['err_src']} (the destination)" if e["err_src"] in (r["inside_dst"], r["trans_dst"])
                else str(e["err_src"]))

    def line(r: dict[str, Any], e: dict[str, Any], ttl: int | None, frame: int | None) -> str:
        name = icmp_error_name(e["icmp_type"], e["icmp_code"], ":" in (r["inside_src"] or ""))
        sent = (f" for a packet sent with TTL {ttl} ({'inside' if r['initiator'] == 'inside' else 'outside'} "
                f"frame {frame})" if ttl is not None else "")
        return f"{_conn_label(r)}: {name} from {hop(r, e)} ({e['_side']} frame {e['frame_no']}){sent}"

    for group, kind in ((probes, "path_probe"), (loops, "routing_loop")):
        if not group:
            continue
        ttls = sorted({t for _, _, t, _ in group if t is not None})
        hops = list(dict.fromkeys(hop(r, e) for r, e, _, _ in group))
        said = (f"with a TTL of {', '.join(map(str, ttls))}" if ttls else "(their sending not captured)")
        conns = tuple(r["conn"] for r, _, _, _ in group)
        evidence = tuple(line(*g) for g in group[:20])
        data = {"ttls": ttls, "hops": sorted({str(e["err_src"]) for _, e, _, _ in group})}
        if kind == "path_probe":
            findings.append(Finding(
                kind, "info", "Path probes: time exceeded for packets sent with a small TTL (traceroute)",
                f"{len(group)} connection(s) sent packets {said} and the hops where their TTL ran out answered "
                f"ICMP time exceeded ({', '.join(hops)}): a traceroute (mtr, tracepath) mapping the path. That is "
                "forwarding as it should be, not a REJECT (which answers unreachable or a TCP RST) nor a routing "
                "failure.",
                "Nothing to fix: a hop answers time exceeded when a packet's TTL runs out there, which is what "
                "traceroute asks of it.",
                connections=conns, evidence=evidence, data=data))
        else:
            findings.append(Finding(
                kind, "warning", "Routing loop: packets ran out of TTL on the path",
                f"{len(group)} connection(s) had packets {said}, no probe's, run out of TTL on the path (ICMP time "
                f"exceeded from {', '.join(hops)}): with that many hops to live they went round a loop (two "
                "routers, or the node and a router, routing the destination to each other).",
                "Trace it from the node: `traceroute -n DST` shows the hops repeating; check `ip route get DST` on "
                "the node and the routes of the hops named.",
                connections=conns, evidence=evidence, data=data))
    return findings


def _leaks(result: Result, leaky: list[dict[str, Any]]) -> list[Finding]:
    """Packets that crossed untranslated inside a translated connection: conntrack marked them INVALID, or their
    entry had expired (a FIN after an idle established timeout), so no NAT applied and the pod's own address left
    the node (cases/idle-expiry-fin-leak). Not a port clash: the same connection, the pod's own tuple."""
    if not leaky:
        return []
    evidence, idle = [], 0
    for r in leaky[:20]:
        # The pod side's copies; the uplink's where it is the only capture (with the kernel's record).
        inside = _packets(result, r, "outside" if _uplink_only(result) else "inside").sort("ts_ns")
        leaked = inside.filter(pl.col("fate") == "leaked")
        first = leaked.row(0, named=True)
        before = inside.filter(pl.col("ts_ns") < first["ts_ns"])
        gap_s = (first["ts_ns"] - before["ts_ns"].max()) / 1e9 if before.height else None
        flags = sorted({_flag_names(f) for f in leaked["tcp_flags"].drop_nulls().to_list()})
        outs = _fate_frames(result, r, "outside", "leaked", limit=20)
        after = f" after {gap_s:.1f} s of silence" if gap_s is not None and gap_s >= IDLE_GAP_S else ""
        idle += bool(after)
        evidence.append(f"{_conn_label(r)}: {r['fate_leaked']} packet(s) ({', '.join(flags) or 'no TCP flags'}) left "
                        f"as {format_address(r['inside_src'], r['inside_sport'])}{after} ("
                        + ("" if _uplink_only(result) else
                           f"inside frames {_fmt_frames(leaked['frame_no'].head(20).to_list())}, ")
                        + f"outside frames {_fmt_frames(outs)}), "
                        f"the rest as {format_address(r['trans_src'], r['trans_sport'])}"
                        + (" (a hairpin: back to the pod through the bridge)" if "hairpin" in flags_of(r) else ""))
    total = sum(r["fate_leaked"] for r in leaky)
    protos = sorted({r["proto"] for r in leaky})
    timeouts = "; ".join(IDLE_TIMEOUT_SYSCTL[p] for p in protos if p in IDLE_TIMEOUT_SYSCTL)
    cause = (f"in {idle} of them after the connection sat idle: its conntrack entry had expired ({timeouts}; or a "
             "conntrack -D), so its next packets matched no entry and left without NAT" if idle
             else "conntrack marked them INVALID (out of the TCP window)")
    return [Finding(
        "private_address_leak", "error", "Pod addresses leaked: packets left untranslated mid-connection",
        f"{len(leaky)} translated connection(s) sent {total} packet(s) out of the node untranslated, carrying the "
        f"pod's own address; {cause}. This is not a port clash: the connection kept one mapping.",
        f"Drop what conntrack cannot translate: `{_iptables(leaky)} -I FORWARD -m conntrack --ctstate INVALID -j "
        "DROP` (as kube-proxy's KUBE-FORWARD does); keep idle connections alive more often than the timeout "
        f"(`sysctl {timeouts.split(' ')[0]}`; TCP keepalives), or raise it; check `conntrack -S` for invalid.",
        connections=tuple(r["conn"] for r in leaky), evidence=tuple(evidence),
        data={"leaked_packets": total, "after_idle": idle})]


def _iptables(rows: list[dict[str, Any]]) -> str:
    """The tool whose rules apply to these connections: ip6tables for IPv6 ones (NAT66), iptables otherwise, both
    for a mix."""
    v6 = {":" in (r["orig_src"] or "") for r in rows}
    return "ip6tables" if v6 == {True} else "iptables" if v6 == {False} else "iptables (and ip6tables)"


def _dropped_mid_connection(result: Result, rows: list[dict[str, Any]], partial: bool = False) -> list[Finding]:
    """Translated connections with packets seen on one side of the node only while the rest of the connection
    crossed, nothing the node made answering them (else invalid_reply_reset).

    By the way a packet was going: one seen past the node (a reply at the pod, a pod's packet on the uplink) and
    missing before it was missed by a capture (capture_missed_packets). One missing past the node was dropped there
    or missed by the capture past it; packets-only cannot tell the two apart (the sender's retransmission, the
    node's counters can), except TCP segments sent after a silence of IDLE_GAP_S or more: the conntrack entry had
    expired, they matched no entry and could not start one (INVALID), and a ctstate INVALID DROP rule stopped
    them before they leaked (a helper's kernel variant of cases/idle-expiry-fin-leak: two pods' FINs after 6 s idle,
    timeout 3 s). Those before the other capture's first packet came while it was not running yet: no drop, they
    are partial_overlap's (_began_before). Those after its last packet may have met a capture that had stopped (a
    pcap records no end of capture) or a drop (tests/variants/idle-drop-invalid): both are said; where
    partial_overlap speaks of a capture not running (``partial``), they are its."""
    a0, a1 = result.inside.first_ts_ns, result.inside.last_ts_ns
    b0, b1 = result.outside.first_ts_ns, result.outside.last_ts_ns
    if not (rows and a0 and b0):  # one capture (and a record): what it misses of the other side is not known
        return []
    off = int(round(result.clock_offset_s * 1e9))
    # Each connection's packets read in one pass per capture; ICMP errors aside (path_mtu and the ICMP findings).
    among = {side: _packets_of(result, rows, side) for side in ("inside", "outside")}
    # (row, side, frames, silence in s or None): lost after an idle silence, unprovable, before the other capture's
    # first packet (not shown not running then), after its last packet; and (row, side, frames) missed by a capture.
    idle, unsure, ahead, stopped, missed = [], [], [], [], []
    # Until when each capture's side shows the other capture not running yet (natproof.correlate.capture_off_until):
    # what is seen on one side only until then is partial_overlap's (_began_before).
    until = dict(zip(("inside", "outside"), capture_off_until(
        result.connections, result.packets("inside"), result.packets("outside"), a0, b0, off), strict=True))
    # Frames the capture that should hold a lost packet's copy skipped as malformed, on the clock of the other
    # side (inside + offset = outside): a lost packet near one in time may be it, unreadable, not lost (a second
    # trial: an inside reply with a bad IP length read as "never reached the pod side").
    unreadable = {"outside": _malformed_at(result.inside, off), "inside": _malformed_at(result.outside, -off)}
    unread: list[tuple[dict[str, Any], str, list[int], list[int]]] = []
    for r in rows:
        inbound = r["initiator"] == "outside"
        inside = _packets(result, r, "inside", among=among["inside"]).sort("ts_ns")
        outside = _packets(result, r, "outside", among=among["outside"])
        # Going out: the initiator's packets of a connection started inside, the replies of one started outside.
        out_dir = pl.col("is_egress") != inbound
        lost_in = inside.filter((pl.col("fate") == "inside_only") & ~pl.col("is_icmp_error"))
        lost_out = outside.filter((pl.col("fate") == "outside_only") & ~pl.col("is_icmp_error"))
        # Only while the capture that missed them ran (else partial_overlap's, or no capture's fault).
        for side, seen_past, span in (("inside", lost_in.filter(~out_dir), (b0 - off, b1 - off)),
                                      ("outside", lost_out.filter(out_dir), (a0 + off, a1 + off))):
            seen_past, theirs = _take_unreadable(seen_past.filter(pl.col("ts_ns").is_between(*span)),
                                                 unreadable[side])
            if theirs:
                unread.append((r, side, *theirs))
            if seen_past.height:
                missed.append((r, side, seen_past["frame_no"].to_list()))
        for side, lost, span in (("inside", lost_in.filter(out_dir), (b0 - off, b1 - off)),
                                 ("outside", lost_out.filter(~out_dir), (a0 + off, a1 + off))):
            if until[side] is not None:  # the other capture was not running yet (partial_overlap names them)
                lost = lost.filter(pl.col("ts_ns") > until[side])
            lost, theirs = _take_unreadable(lost, unreadable[side])
            if theirs:
                unread.append((r, side, *theirs))
            if not lost.height:
                continue
            first = lost.row(0, named=True)
            before = (inside if side == "inside" else outside).filter(pl.col("ts_ns") < first["ts_ns"])
            gap_s = (first["ts_ns"] - before["ts_ns"].max()) / 1e9 if before.height else None
            after_idle = r["proto"] == "tcp" and gap_s is not None and gap_s >= IDLE_GAP_S
            if not lost.filter(~pl.col("ts_ns").is_between(*span)).is_empty():
                if partial:
                    continue
                for kept, beyond in ((ahead, lost.filter(pl.col("ts_ns") < span[0])),
                                     (stopped, lost.filter(pl.col("ts_ns") > span[1]))):
                    if beyond.height:
                        kept.append((r, side, beyond["frame_no"].to_list(), gap_s if after_idle else None))
                lost = lost.filter(pl.col("ts_ns").is_between(*span))
                if not lost.height:
                    continue
            if after_idle:
                idle.append((r, side, lost["frame_no"].to_list(), gap_s))
            else:
                unsure.append((r, side, lost["frame_no"].to_list(), None))
    findings = []
    dropped = idle + unsure + ahead + stopped
    if dropped:
        conns = sorted({item[0]["conn"] for item in dropped})
        n_idle, n_unsure, n_ahead, n_stopped = (sum(len(item[2]) for item in group)
                                                for group in (idle, unsure, ahead, stopped))
        total = n_idle + n_unsure + n_ahead + n_stopped
        evidence = []
        edges = [""] * (len(idle) + len(unsure)) + [" (before the other capture's first packet)"] * len(ahead) + [
            " (after the other capture's last packet)"] * len(stopped)
        for (r, side, frames, gap), late in zip(dropped[:20], edges, strict=False):
            where = "never left the node (not on the uplink)" if side == "inside" else "never reached the pod side"
            after = f", sent after {gap:.1f} s of silence" if gap is not None else ""
            evidence.append(f"{_conn_label(r)}: {side} frame(s) {_fmt_frames(frames[:6])} {where}{after}{late}, "
                            f"while {r['fate_crossed']} of its packets crossed")
        timeouts = IDLE_TIMEOUT_SYSCTL["tcp"]
        parts = [f"{len(conns)} translated connection(s) have {total} packet(s) that reached the node and were "
                 "not seen past it, while the rest of the connection crossed and nothing the node made answered "
                 "them."]
        if n_idle:
            parts.append(f"{n_idle} of them were sent after 1 s or more of silence: the conntrack entry had expired "
                         f"({timeouts}), so they matched no entry and could not start one (INVALID: a TCP segment "
                         "other than a SYN), and a ctstate INVALID DROP rule (kube-proxy's KUBE-FORWARD has one) "
                         "stopped them before they leaked untranslated.")
        if n_unsure:
            lossy = ("; the capture past the node is shown to miss packets (below), so missed is likely"
                     if missed else "")
            parts.append(f"{n_unsure} were dropped on the node (a ctstate INVALID DROP rule drops what conntrack "
                         "marks INVALID, such as a segment out of the TCP window) or missed by the capture past it: "
                         f"these captures cannot tell which{lossy} (the sender's retransmission, `conntrack -S` and "
                         "the rule's counters can).")
        quiet = sum(len(frames) for _, _, frames, gap in stopped if gap is not None)
        # A file that ends in a record cut short was still being written, or was copied before it was whole: it
        # stopped there (a new user's truncated capture read as packets the node dropped).
        cut = {side: [w for w in summary.warnings if w.startswith(("last record", "last block", "block length past"))]
               for side, summary in (("inside", result.inside), ("outside", result.outside))}
        ends_cut = [f"{other} file ends cut short ({cut[other][0]})" for other in ("outside", "inside")
                    if cut[other] and any(s == ("inside" if other == "outside" else "outside")
                                          for _, s, _, _ in stopped)]
        if n_ahead:
            parts.append(f"{n_ahead} were sent before the other capture's first packet, while nothing shows it "
                         "running: that capture had not started yet, or the node dropped them.")
        if n_stopped:
            parts.append(f"{n_stopped} were sent after the other capture's last packet: the node dropped them, or "
                         "that capture had already stopped"
                         + (f" ({quiet} of them after 1 s or more of silence, when an expired conntrack entry "
                            f"({timeouts}) makes a TCP segment INVALID and a ctstate INVALID DROP rule drops it)."
                            if quiet else ".")
                         + (f" The {' and the '.join(ends_cut)}: it stopped there, which is likely." if ends_cut
                            else ""))
        count = ("count the drops: `conntrack -S` (invalid) and `" + _iptables([item[0] for item in dropped])
                 + " -L -v -n | grep INVALID`.")
        fix = ("Take the capture again, or copy it once tcpdump has exited (a file cut short holds no more than its "
               f"whole records); else {count}" if ends_cut and not n_idle and not n_unsure and not n_ahead
               else count[0].upper() + count[1:])
        if n_idle or quiet:
            fix += (" After an idle period the far end still holds the connection open: keep idle connections alive "
                    "more often than the timeout (TCP keepalives) or raise it (`sysctl "
                    f"{timeouts.split(' ')[0]}`).")
        if n_unsure:
            fix += (" An out-of-window packet dropped this way spares the connection the node's RST "
                    "(cases/oow-invalid-node-rst); if such drops grow, look for reordering or a middlebox that "
                    "rewrites sequence numbers, or let conntrack accept them: `sysctl -w "
                    "net.netfilter.nf_conntrack_tcp_be_liberal=1`.")
        findings.append(Finding(
            "dropped_mid_connection", "warning", "Packets lost mid-connection", " ".join(parts), fix,
            connections=tuple(conns), evidence=tuple(evidence),
            data={"lost_packets": total, "after_idle": n_idle, "unproven": n_unsure,
                  "before_other_capture": n_ahead, "after_other_capture": n_stopped}))
    if unread:
        n = sum(len(frames) for _, _, frames, _ in unread)
        evidence = [f"{_conn_label(r)}: {side} frame(s) {_fmt_frames(frames[:6])}, with "
                    f"{'inside' if side == 'outside' else 'outside'} frame(s) {_fmt_frames(bad[:6])} skipped as "
                    "malformed at the same time" for r, side, frames, bad in unread[:20]]
        findings.append(Finding(
            "unreadable_counterparts", "info", "Packets whose copy past the node could not be read",
            f"{n} packet(s) of {len({r['conn'] for r, *_ in unread})} connection(s) seen on one side only have, at "
            "the same time in the other capture, a frame natproof skipped as malformed (a header that cannot be): "
            "that frame is likely the packet's copy, so they are not counted as lost.",
            "Look at those frames in Wireshark (natproof explain --frame N names a readable one's fields); a frame "
            "corrupted in the file, not on the wire, says nothing about the NAT.",
            connections=tuple(sorted({r["conn"] for r, *_ in unread})), evidence=tuple(evidence),
            data={"packets": n}))
    if missed:
        conns = sorted({r["conn"] for r, *_ in missed})
        per_side = {side: sum(len(f) for _, s, f in missed if s == side) for side in ("inside", "outside")}
        # A packet seen only on the inside and going in was missed by the outside capture, and the other way round.
        sides = [f"the {'outside' if side == 'inside' else 'inside'} capture missed {n}"
                 for side, n in per_side.items() if n]
        evidence = [f"{_conn_label(r)}: {side} frame(s) {_fmt_frames(frames[:6])} went "
                    f"{'in' if side == 'inside' else 'out'} through the node yet are not in the "
                    f"{'outside' if side == 'inside' else 'inside'} capture" for r, side, frames in missed[:20]]
        # A frame the decoder skipped as malformed is in the file: the packet may be one of these (a new user's
        # capture with one frame cut to 30 bytes read as a capture loss).
        malformed = [f"the {side} file has {n} frame(s) skipped as malformed, which may be among them"
                     for side, summary in (("inside", result.inside), ("outside", result.outside))
                     if (n := summary.skipped.get("malformed", 0))
                     and per_side["outside" if side == "inside" else "inside"]]
        findings.append(Finding(
            "capture_missed_packets", "info", "The captures missed packets",
            f"{len(conns)} connection(s) have packets seen only past the node, never before it ({'; '.join(sides)}):"
            " a packet cannot reach the far side of the node without crossing it, so a capture lost them "
            "(tcpdump's 'packets dropped by kernel', a capture filter, a snaplen-cut or offloaded frame"
            + (f"; {'; '.join(malformed)}: natproof could not read their headers" if malformed else "")
            + "). Counts of packets seen on one side only are not all the node's doing.",
            "Capture with a larger buffer (`tcpdump -B 65536`), no filter, and check tcpdump's own count of packets "
            "dropped by kernel.",
            connections=tuple(conns), evidence=tuple(evidence),
            data={"inside_missed": per_side["outside"], "outside_missed": per_side["inside"]}))
    return findings


def _malformed_at(summary: CaptureSummary, shift_ns: int) -> list[tuple[int, int]]:
    """(time on the other capture's clock, frame number) of a capture's frames skipped as malformed, in time order
    (CaptureSummary.malformed_frames; none where its point skipped none)."""
    if not summary.skipped.get("malformed"):
        return []
    return sorted((ts + shift_ns, frame) for frame, ts in summary.malformed_frames)


UNREADABLE_WITHIN_NS = 1_000_000_000
"""How near in time (1 s, correlate's default tolerance) a frame skipped as malformed must be to a lost packet to be
taken as its copy."""


def _take_unreadable(lost: pl.DataFrame, bad: list[tuple[int, int]]) -> tuple[pl.DataFrame,
                                                                            tuple[list[int], list[int]] | None]:
    """``lost`` less the packets a malformed frame of the other capture may be (one frame each, the nearest in time
    within UNREADABLE_WITHIN_NS; ``bad`` is _malformed_at's list, consumed), and (their frames, those frames)."""
    if not bad or not lost.height:
        return lost, None
    taken, used = [], []
    for frame_no, ts in lost.select("frame_no", "ts_ns").iter_rows():
        near = min(((abs(t - ts), i) for i, (t, _) in enumerate(bad)), default=None)
        if near is not None and near[0] <= UNREADABLE_WITHIN_NS:
            taken.append(frame_no)
            used.append(bad.pop(near[1])[1])
    if not taken:
        return lost, None
    return lost.filter(~pl.col("frame_no").is_in(taken)), (taken, used)


IDLE_GAP_S = 1.0
"""A leak after at least this much silence (1 s) is told as an expired entry (captures/idle-expiry: 6 s); so is a
connection's next outside tuple after it (a new mapping: conntrack's timeouts are whole seconds). A shorter gap is
the TCP state machine at work (a RST answering a challenge ACK ends the entry, the SYN sent again is mapped anew 12
ms later: captures/port-exhaustion)."""


def _flag_names(flags: int) -> str:
    names = [n for bit, n in ((0x02, "SYN"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"))
             if flags & bit]
    return ",".join(names)


def _invalid_resets(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """A reply that reached the outside and never the pod, next to an RST the node made under the translated
    tuple: conntrack marked the reply INVALID (out of window), did not reverse-translate it, delivered it to the
    node's own stack, which reset the connection (the kube-proxy connection-reset bug;
    cases/oow-invalid-node-rst)."""
    hit = [r for r in rows if r["fate_outside_only"] and r["fate_node_generated"]
           and r["verdict"] in ("translated", "no_reply", "reply_dropped")]
    hits = []
    outside = _packets_of(result, hit, "outside", pl.col("fate").is_in(["outside_only", "node_generated"]))
    for r in hit:
        # Pod-initiated: the far end's reply is lost, the node's RST goes the pod's way. Started outside (a
        # NodePort): the client's packet is lost, the node's RST goes back to the client.
        egress = r["initiator"] != "inside"
        lost = _packets(result, r, "outside", "outside_only", egress, among=outside)
        rst = _packets(result, r, "outside", "node_generated", not egress, among=outside)
        if lost.height and rst.height:
            hits.append((r, lost, rst))
    if not hits:
        return []

    def line(r: dict[str, Any], lost: pl.DataFrame, rst: pl.DataFrame) -> str:
        if r["initiator"] == "inside":
            return (f"{_conn_label(r)}: reply frame(s) {_fmt_frames(lost['frame_no'].head(6).to_list())} on the "
                    f"outside never reached the pod; outside frame(s) {_fmt_frames(rst['frame_no'].head(6).to_list())}"
                    f": an RST from {format_address(r['outside_src'], r['outside_sport'])} the pod never sent")
        return (f"{_conn_label(r)}: the client's frame(s) {_fmt_frames(lost['frame_no'].head(6).to_list())} on the "
                f"outside never reached the pod; outside frame(s) {_fmt_frames(rst['frame_no'].head(6).to_list())}: "
                f"an RST from {format_address(r['outside_dst'], r['outside_dport'])} the pod never sent")

    evidence = [line(r, lost, rst) for r, lost, rst in hits[:20]]
    inbound = sum(1 for r, _, _ in hits if r["initiator"] != "inside")
    if inbound:
        title = "Packets not translated; the node reset the connection"
        summary = (f"{len(hits)} connection(s) had a packet from the far end that conntrack did not translate "
                   "(marked INVALID: out of the TCP window, or sent after the entry expired), which the node's own "
                   "stack answered with an RST under the translated tuple, killing the connection at the far end "
                   f"({inbound} of them started outside, through a NodePort: the client's packet was not DNATed).")
    else:
        title = "Replies not reverse-translated; the node reset the connection"
        summary = (f"{len(hits)} connection(s) got a reply that conntrack did not reverse-translate (marked INVALID: "
                   "out of the TCP window) and the node answered it with its own RST under the translated tuple, "
                   "which kills the connection at the far end.")
    return [Finding(
        "invalid_reply_reset", "error", title, summary,
        f"Drop INVALID packets before the node answers them: `{_iptables([r for r, _, _ in hits])} -I INPUT -m "
        "conntrack --ctstate INVALID -j "
        "DROP` and in FORWARD (kube-proxy's KUBE-FORWARD rule), or let conntrack accept out-of-window segments: "
        "`sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1`; for packets sent after the entry expired (an "
        "idle connection), keep the connection alive more often than `net.netfilter."
        "nf_conntrack_tcp_timeout_established` or raise it; `conntrack -S` counts them as invalid.",
        connections=tuple(r["conn"] for r, _, _ in hits), evidence=tuple(evidence),
        data={"connections": len(hits), "inbound": inbound})]


def _other_path(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """reply_other_path: the source rewrite is proven, the reverse translation is not (cases/asymmetric-reply)."""
    if not rows:
        return []
    def line(r: dict[str, Any]) -> str:
        frames = _fmt_frames(_fate_frames(result, r, "inside", "inside_only", False))
        elsewhere = _left_out(r)
        if r["initiator"] == "outside":  # the pod's replies left by an uplink not captured; the client acked them
            said = (f"{_conn_label(r)}: {r['egress_outside']} packet(s) from the client crossed to the pod as "
                    f"{format_address(r['inside_src'], r['inside_sport'])} -> "
                    f"{format_address(r['inside_dst'], r['inside_dport'])}; {r['reply_inside']} reply packet(s) "
                    f"from the pod (inside frames {frames}) never crossed the outside capture")
            if elsewhere:
                return (f"{said}; the same file holds {r['left_out_replies']} reply packet(s) to the client leaving "
                        f"by {elsewhere}, left out of the outside point")
            return said + ", yet the client acknowledged them"
        # Counted as paired (matched_egress) of as seen (egress_inside): a connection whose pods' packets pair in
        # part, and whose replies are on the outside capture but pair with none (a new user's trial: an unrelated
        # uplink capture paired on payload look-alikes) is not one whose replies are missing there.
        sent, paired = r["egress_inside"], r["matched_egress"] or 0
        crossed = (f"{sent} packet(s) crossed as" if paired == sent else
                   f"{paired} of its {sent} packet(s) paired with one crossing as")
        line = (f"{_conn_label(r)}: {crossed} {format_address(r['outside_src'], r['outside_sport'])}; "
                f"{r['reply_inside']} reply packet(s) reached the pod (inside frames {frames}), ")
        came = (f"; the same file holds {r['left_out_replies']} reply packet(s) to that tuple coming in by "
                f"{elsewhere}, left out of the outside point" if elsewhere and r["left_out_replies"] else "")
        if not r["reply_outside"]:
            return line + "none crossed the outside capture" + came
        return (line + f"none paired with the {r['reply_outside']} reply packet(s) to that tuple the outside "
                f"capture holds (outside frames {_fmt_frames(_frames(result, r['conn'], 'outside', False))})" + came)
    evidence = [line(r) for r in rows[:20]]
    inbound = sum(r["initiator"] == "outside" for r in rows)
    left = [r for r in rows if r["initiator"] == "outside" and _left_out(r)]
    acked = inbound - len(left)
    started_outside = (f" {inbound} of them started outside (a NodePort): the pod's replies left the node by "
                       "another interface" + (f"; {'for ' + str(len(left)) + ', ' if acked else ''}the same file "
                                              "holds them leaving by "
                                              f"{_left_out_names(left)}, an interface left out of the outside point"
                                              if left else "")
                       + (f"; for {acked}, the client's acknowledgements show it got them" if acked and left else
                          ", and the client's acknowledgements show it got them" if acked else "")
                       + "." if inbound else "")
    unpaired = sum(1 for r in rows if r["initiator"] != "outside" and r["reply_outside"])
    return [Finding(
        "reply_other_path", "warning", "Replies came back by a path the outside capture does not see",
        f"{len(rows)} connection(s) were translated and their replies reached the initiator, but no reply "
        "crossed the captured outside interface: they went over another interface (asymmetric routing) or the "
        f"capture missed them. The initiator's rewrite is proven; the reverse translation is not.{started_outside}"
        + (f" {unpaired} of them have replies to their translated tuple on the outside capture that pair with none "
           "the initiator got: a capture of other traffic, or of another time, looks so." if unpaired else ""),
        _take_in(result, [r for r in rows if _left_out(r)])
        + ("Capture every uplink (`tcpdump -i any`) or check" if not all(_left_out(r) for r in rows) else "Check")
        + " `ip route` / policy routing for a second return path; with rp_filter strict, asymmetric replies get "
        "dropped.",
        connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence), data={})]


def _left_out(r: dict[str, Any]) -> str:
    """The interfaces, left out of both observation points, on which the same file holds packets of the connection
    under its outside tuple (natproof.assemble._left_out_counts), comma-separated; "" when none."""
    return ", ".join(r.get("left_out_interfaces") or ())


def _left_out_names(rows: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({n for r in rows for n in r.get("left_out_interfaces") or ()}))


def _take_in(result: Result, rows: list[dict[str, Any]]) -> str:
    """The fix's first sentence for connections whose packets the same file holds on interfaces left out of the
    outside point: the ``--outside-if`` that takes them in; "" when there are none."""
    names = _left_out_names(rows)
    if not names:
        return ""
    given = ",".join((*result.outside.interfaces, *names.split(", ")))
    return (f"The capture holds them on {names}, left out of the outside point: `--outside-if {given}` takes it in "
            "(the outside point is then every uplink they take). ")


def _egress_other_path(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """Translated connections none of whose initiator's packets crossed the outside capture while it ran, though
    replies to the translated tuple crossed it and reached the initiator: the mirror of reply_other_path (a helper's
    variant of cases/asymmetric-reply: the pod's egress left by an uncaptured link, the replies came over eth0)."""
    if not rows:
        return []
    def line(r: dict[str, Any]) -> str:
        if r["initiator"] == "inside":
            return (f"{_conn_label(r)}: {r['reply_outside']} reply packet(s) to "
                    f"{format_address(r['outside_src'], r['outside_sport'])} crossed (outside frame "
                    f"{r['evidence_reply_outside_frame']}, inside frame {r['evidence_reply_inside_frame']}); its "
                    f"{r['egress_inside']} egress packet(s) (inside frames "
                    f"{_fmt_frames(_fate_frames(result, r, 'inside', 'inside_only', True))}) are not on the "
                    "outside capture" + went(r, "leaving"))
        # Started outside (a NodePort): the pod's replies crossed out, the client's packets are not seen inside.
        return (f"{_conn_label(r)}: {r['reply_inside']} reply packet(s) from the pod crossed out (inside frame "
                f"{r['evidence_reply_inside_frame']}, outside frame {r['evidence_reply_outside_frame']}); the "
                f"client's {r['egress_outside']} packet(s) (outside frames "
                f"{_fmt_frames(_fate_frames(result, r, 'outside', 'outside_only', True))}) are not on the inside "
                "capture" + went(r, "coming in"))

    def went(r: dict[str, Any], how: str) -> str:
        if not (r.get("left_out_initiator") and _left_out(r)):
            return ""
        return (f"; the same file holds {r['left_out_initiator']} of the initiator's packet(s) under that tuple "
                f"{how} by {_left_out(r)}, left out of the outside point")

    evidence = [line(r) for r in rows[:20]]
    inbound = sum(1 for r in rows if r["initiator"] != "inside")
    return [Finding(
        "egress_other_path", "warning", "The initiator's packets took a path a capture does not see",
        f"{len(rows)} connection(s) got replies addressed to their translated tuple, which crossed the NAT and "
        "were reverse-translated to the initiator, but none of the initiator's own packets crossed the captures "
        "while they ran: they took another interface (asymmetric routing, a second uplink or policy route) or "
        "the capture missed them"
        + (f" ({inbound} started outside: the client's packets are not on the inside capture)" if inbound else "")
        + ". The mapping is proven by the replies; how the initiator's packets were translated is not seen.",
        _take_in(result, [r for r in rows if r.get("left_out_initiator") and _left_out(r)])
        + "Capture every uplink and the pod's own interface (`tcpdump -i any`), or check `ip route` / `ip rule` for "
        "a second way; with rp_filter strict on the return interface, such flows can be dropped.",
        connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence),
        data={"connections": len(rows), "inbound": inbound})]


_ALG_FLAGS = frozenset({"seq_shift", "payload_rewritten"})
"""The flags of a connection whose payload changed in flight (its TCP numbers moved, or its bytes changed): an
ALG's rewrite on a port a conntrack helper watches (conntrack_helper), else something natproof cannot name."""

FTP_CONTROL_PORT = 21

CONNTRACK_HELPER_PORTS: dict[tuple[str, int], str] = {
    ("tcp", FTP_CONTROL_PORT): "ftp", ("udp", 69): "tftp", ("udp", 5060): "sip", ("tcp", 5060): "sip",
    ("tcp", 6667): "irc", ("tcp", 1720): "h323", ("udp", 1719): "h323 (RAS)", ("tcp", 1723): "pptp",
    ("udp", 10080): "amanda", ("udp", 137): "netbios-ns", ("udp", 161): "snmp", ("udp", 162): "snmp_trap",
    ("tcp", 6566): "sane",
}
"""The (protocol, server port) each of the kernel's conntrack helpers watches by default, and the helper's name:
nf_conntrack_ftp (FTP_PORT 21), _tftp (69), _sip (SIP_PORT 5060, UDP and TCP), _irc (IRC_PORT 6667), _h323
(Q931_PORT 1720, RAS_PORT 1719), _pptp (PPTP_CONTROL_PORT 1723), _amanda (10080), _netbios_ns (NMBD_PORT 137),
_snmp (161), nf_nat_snmp_basic's snmp_trap (162), _sane (SANE_PORT 6566), as the kernel's sources define them. A
module's ``ports=`` parameter, or a raw-table ``CT --helper`` rule, can set a helper on any other port: natproof
cannot see that in the captures."""


def conntrack_helper(r: dict[str, Any]) -> str | None:
    """The conntrack helper (CONNTRACK_HELPER_PORTS) that watches a connection row's server port by default, before
    or after a DNAT (orig_dport, trans_dport: the kernel matches a helper on the reply tuple's source port); None
    when none does, or the row has no ports (ICMP)."""
    for port in (r.get("orig_dport"), r.get("trans_dport")):
        if port is not None and (r.get("proto"), port) in CONNTRACK_HELPER_PORTS:
            return CONNTRACK_HELPER_PORTS[(r["proto"], port)]
    return None


def _moved(r: dict[str, Any]) -> str:
    """How a connection's TCP numbers differ outside minus inside (the difference most of its packets that differ
    show), as ``the initiator's seq numbers +1, ...``."""
    return ", ".join(f"the {who}'s {n} numbers {r[f'{k}_{n}_shift']:+d}" for who, k in (("initiator", "init"),
                     ("reply", "reply")) for n in ("seq", "ack") if r[f"{k}_{n}_shift"])


def _alg(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """A payload rewrite on a port a conntrack helper watches (conntrack_helper): an ALG (conntrack's FTP helper)
    edited the payload (cases/ftp-alg-active), seen as packets that crossed with their payload changed and, where
    the length changed, as a TCP sequence shift; its expectation admits the related inbound connection. The shift is
    the one most shifted packets show: each later rewrite that changes the length adds to it (two PORT commands:
    +1, then +2; a helper's kernel variant), so it is not called constant. A rewrite of the same length moves no
    number (a pod address as long as the node's: a helper's kernel variant, which read 'NAT working as
    expected')."""
    if not rows:
        return []

    def line(r: dict[str, Any]) -> str:
        n = r["payload_rewrites"] or 0
        changed = f"{n} packet(s) crossed with their payload changed" if n else "a payload rewrite"
        if "seq_shift" not in flags_of(r):
            return f"{_conn_label(r)}: {changed}, its length kept (no sequence number moved)"
        return f"{_conn_label(r)}: {changed}; after it {_moved(r)} on the outside (the shift most of its " \
               "shifted packets show)"

    evidence = [line(r) for r in rows[:20]]
    same_length = sum("seq_shift" not in flags_of(r) for r in rows)
    related = [r for r in result.connections.iter_rows(named=True) if r["initiator"] == "outside"
               and r["service_type"] is None and r["verdict"] == "translated"]
    for r in related[:10]:
        evidence.append(f"{_conn_label(r)} came in from {format_address(r['orig_src'], r['orig_sport'])} to "
                        f"{format_address(r['orig_dst'], r['orig_dport'])}, DNATed to the pod: an expectation")
    return [Finding(
        "alg_rewrite", "info", "An ALG rewrote payloads" + ("" if same_length == len(rows)
                                                            else " (sequence numbers shifted)"),
        f"{len(rows)} connection(s) had their payload rewritten on the node (conntrack's FTP helper rewrites the "
        "address in PORT and EPRT commands): a rewrite that changes the length shifts the sequence numbers after it, "
        "and again with each later one; natproof matched the shifted packets on their IP id or on the TCP numbers "
        "the shift left alone."
        + (f" {same_length} kept the length, and no number moved." if same_length else "")
        + f" {len(related)} connection(s) started outside were admitted to the pod.",
        "Nothing to fix if the ALG is wanted; `iptables -t raw -S | grep 'CT --helper'` shows which helper runs "
        "and `conntrack -L expect` its expectations.",
        connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence), data={})]


def _payload_changed(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """Connections whose payload changed between the captures (flag payload_rewritten, or TCP numbers that differ
    across the NAT: seq_shift) on ports no conntrack helper watches by default (conntrack_helper): what the packets
    show, and no more. NAT rewrites headers, never payloads; no ALG natproof knows handles these ports, so the
    cause is damage in a capture, a middlebox between the capture points, or a helper set on another port. Found by
    a new user's trial: a capture with every 97th byte flipped read as "an ALG rewrote payloads", conntrack's FTP
    helper named on plain HTTP to port 80, its flipped bytes called a sequence shift."""
    if not rows:
        return []
    evidence = []
    for r in rows[:20]:
        n = r["payload_rewrites"] or 0
        parts = [f"{n} packet(s) crossed with their payload changed"] if n else []
        if "seq_shift" in flags_of(r):
            parts.append(f"TCP numbers differ outside minus inside: {_moved(r)} (the difference most of its "
                         "differing packets show)")
        evidence.append(f"{_conn_label(r)}: {'; '.join(parts)}")
    for side, cap in (("inside", result.inside), ("outside", result.outside)):
        evidence += [f"the {side} capture {cap.path}: {w}" for w in cap.warnings[:2]]
    ports = sorted({f"{r['proto']}/{r['orig_dport']}" for r in rows if r["orig_dport"] is not None})
    shifted = sum("seq_shift" in flags_of(r) for r in rows)
    return [Finding(
        "payload_changed", "warning", "Payloads changed in flight, not by an ALG natproof knows",
        f"{len(rows)} connection(s) crossed with their payload or TCP numbers changed between the captures"
        + (f" ({shifted} with TCP numbers that differ across the NAT)" if shifted else "")
        + f", on port(s) {', '.join(ports) or 'without a port'}, which no conntrack helper watches by default. "
        "NAT rewrites headers, never payloads, and no ALG natproof knows works on these ports, so the captures do "
        "not say what changed them: damage in a capture, a middlebox between the capture points, or a helper set "
        "on another port.",
        "Check the captures for damage (`natproof` warned of a corrupt file? open them in Wireshark: malformed "
        "segments, bad checksums), and capture again if so; `iptables -t raw -S | grep 'CT --helper'` shows "
        "helpers set on other ports; otherwise look for a middlebox (proxy, IPS, WAN optimiser) between the pod's "
        "interface and the uplink.",
        connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence),
        data={"ports": ports, "seq_shift": shifted})]


def _refused_by_far_end(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """Translated TCP connections whose only answer to the SYN was a RST (no SYN-ACK): the far end (a server, a
    NodePort's endpoint pod) refused them; the NAT did its part, replies reverse-translated (a helper's kernel
    variant: a NodePort endpoint with nothing listening on its targetPort read only as 'NAT working as expected')."""
    tcp = [r for r in rows if r["proto"] == "tcp" and r["verdict"] == "translated" and r["inside_conn_id"] is not None]
    if not tcp or _uplink_only(result):
        return []
    crossed = _packets_of(result, tcp, "inside", ~pl.col("is_icmp_error") & (pl.col("fate") == "crossed"))
    if crossed.is_empty():
        return []
    flags, reply = pl.col("tcp_flags").fill_null(0), ~pl.col("is_egress")
    # The SYN must be in the capture: a capture that began mid-connection holds no SYN-ACK either.
    per = crossed.group_by("anchor").agg((~reply & ((flags & 0x12) == 0x02)).any().alias("syn"),
                                         (reply & ((flags & 0x12) == 0x12)).any().alias("synack"),
                                         (reply & ((flags & 0x04) != 0)).any().alias("rst"),
                                         pl.col("frame_no").filter(reply & ((flags & 0x04) != 0)).min().alias("frame"))
    refused = {a: f for a, syn, synack, rst, f in per.iter_rows() if syn and rst and not synack}
    hits = [r for r in tcp if r["inside_conn_id"] in refused]
    if not hits:
        return []
    evidence = [f"{_conn_label(r)}: answered with a RST (inside frame {refused[r['inside_conn_id']]}) and no "
                f"SYN-ACK, reverse-translated to the {'client' if r['initiator'] == 'outside' else 'pod'}"
                for r in hits[:20]]
    dests = sorted({format_address(r["trans_dst"], r["trans_dport"]) for r in hits})
    return [Finding(
        "refused_by_far_end", "info", "The far end refused (TCP RST to the SYN)",
        f"{len(hits)} connection(s) were translated and reached {', '.join(dests[:5])}"
        + (f" and {len(dests) - 5} more" if len(dests) > 5 else "")
        + ", which answered the SYN with a RST: nothing listened on that port there. The NAT did its part: the "
        "RST was reverse-translated like any reply.",
        "Check that the server (for a Service, the endpoint pod: its targetPort) listens on that port.",
        connections=tuple(r["conn"] for r in hits), evidence=tuple(evidence), data={"destinations": dests})]


_PORT_COMMAND = re.compile(rb"(?:PORT|port) (\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})\r?\n")
_EPRT_COMMAND = re.compile(rb"(?:EPRT|eprt) \|([12])\|([0-9A-Fa-f:.]+)\|(\d{1,5})\|\r?\n")


def ftp_data_addresses(payload: bytes) -> list[tuple[str, int]]:
    """The (address, port) an FTP client's PORT (RFC 959) and EPRT (RFC 2428) commands in ``payload`` ask the server
    to connect back to; [] when it holds none."""
    found = []
    for m in _PORT_COMMAND.finditer(payload):
        n = [int(x) for x in m.groups()]
        if all(x <= 255 for x in n):
            found.append((".".join(map(str, n[:4])), n[4] * 256 + n[5]))
    for m in _EPRT_COMMAND.finditer(payload):
        try:
            found.append((str(ipaddress.ip_address(m.group(2).decode())), int(m.group(3))))
        except ValueError:
            continue
    return found


def _alg_missing(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """Translated FTP control connections (to port 21) whose PORT or EPRT command left the node still naming the
    pod's own address: no ALG rewrote it (conntrack's FTP helper is not attached: since kernel 4.7 helpers are not
    assigned automatically, nf_conntrack_helper=0; a helper's kernel variant of cases/ftp-alg-active: the server
    answered '425 cannot open data connection'). Read from the outside capture's frames of those connections."""
    from natproof.capture import read_frames
    from natproof.decode import Skip, link_payload

    ftp = [r for r in rows if r["proto"] == "tcp" and r["initiator"] == "inside" and r["verdict"] == "translated"
           and r["orig_dport"] == FTP_CONTROL_PORT and not _ALG_FLAGS & set(flags_of(r))]
    if not ftp or str(result.outside.path) == "-":
        return []
    hits = []
    for r in ftp[:50]:
        egress = _packets(result, r, "outside", egress=True)
        if "payload_len" in egress.columns:
            egress = egress.filter(pl.col("payload_len") > 0)
        frames = egress["frame_no"].head(200).to_list()
        try:
            records = read_frames(result.outside.path, frames)
        except (OSError, NatproofError):
            return []
        for frame in frames:
            rec = records[frame]
            try:
                version, ipb, _ = link_payload(rec.linktype, rec.data)
            except Skip:
                continue
            if version == 4 and len(ipb) >= 20 and ipb[9] == 6:
                tcp = ipb[(ipb[0] & 0x0F) * 4:]
            elif version == 6 and len(ipb) >= 40 and ipb[6] == 6:
                tcp = ipb[40:]
            else:
                continue
            if len(tcp) < 20:
                continue
            for address, port in ftp_data_addresses(tcp[(tcp[12] >> 4) * 4:]):
                if address == r["orig_src"] and address != r["trans_src"]:
                    hits.append((r, frame, address, port))
    if not hits:
        return []
    conns = sorted({r["conn"] for r, *_ in hits})
    evidence = [f"{_conn_label(r)}: outside frame {frame} asks the server to connect to "
                f"{format_address(address, port)}, the pod's own address, while the connection left as "
                f"{format_address(r['trans_src'], r['trans_sport'])}" for r, frame, address, port in hits[:20]]
    return [Finding(
        "alg_missing", "warning", "FTP commands left the node with the pod's address (no ALG)",
        f"{len(conns)} translated connection(s) to FTP's control port sent PORT/EPRT commands that crossed "
        "unchanged, naming the pod's own address: no ALG rewrote the payload (conntrack's FTP helper is not "
        "attached to them), so the server cannot open the data connection back (servers answer 425) and no "
        "expectation admits it.",
        "Attach the FTP helper: `modprobe nf_conntrack_ftp` and `iptables -t raw -A PREROUTING -p tcp --dport 21 "
        "-j CT --helper ftp` (helpers are not assigned automatically since kernel 4.7), or have the client use "
        "passive mode (PASV/EPSV).",
        connections=tuple(conns), evidence=tuple(evidence), data={"commands": len(hits)})]


def _nodeport_source(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """NodePort with externalTrafficPolicy=Cluster: the client's address is masqueraded to the node's (info)."""
    if not rows:
        return []
    evidence = [f"{_conn_label(r)}: {format_address(r['orig_src'], r['orig_sport'])} -> "
                f"{format_address(r['orig_dst'], r['orig_dport'])} reached the pod as "
                f"{format_address(r['trans_src'], r['trans_sport'])} -> "
                f"{format_address(r['trans_dst'], r['trans_dport'])}" for r in rows[:20]]
    return [Finding(
        "nodeport_source_lost", "info", "NodePort clients' addresses are masqueraded (externalTrafficPolicy=Cluster)",
        f"{len(rows)} NodePort connection(s) reached the pod from a node address, not the client's: kube-proxy "
        "masquerades NodePort traffic under externalTrafficPolicy=Cluster.",
        "If the pod needs the client's address, set `externalTrafficPolicy: Local` on the Service (traffic then "
        "goes only to endpoints on the receiving node).",
        connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence), data={})]


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
    multi = [r for r in rows if (r["outside_tuples"] or 0) > 1 or (r["inside_tuples"] or 0) > 1]
    # A connection whose tuples after the NAT follow one another, with a silence before each new one, was mapped
    # again after its entry expired: not a clash, and no sign of a full pool.
    remaps = _remaps_after_silence(result, multi)
    multi = [r for r in multi if r["conn"] not in remaps]
    findings += _remapped_after_idle([r for r in rows if r["conn"] in remaps], remaps)
    for r in multi[:20]:
        evidence.append(f"{_conn_label(r)} left under {r['outside_tuples']} outside tuples"
                        if r["initiator"] != "outside" or (r["outside_tuples"] or 0) > 1 else
                        f"{_conn_label(r)} reached the pod under {r['inside_tuples']} tuples")
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
        said = ([f"{len(conflicts)} outside tuple(s) carried two different inside connections within conntrack's "
                 "lifetime"] if conflicts else []) + (
            [f"{len(multi)} connection(s) left under more than one outside tuple (at once, or in turn with less "
             "than 1 s between them)"] if multi else [])
        findings.append(Finding(
            "mapping_conflict", "warning", "Outside tuple reused by two connections" if conflicts
            else "Connection left under more than one outside tuple",
            "; ".join(said) + ".",
            "Check `conntrack -L` for clashing entries and the SNAT port range; the server may refuse a reused "
            "tuple still in its TIME_WAIT.",
            connections=tuple(sorted({r["conn"] for pair in conflicts for r in pair} | {r["conn"] for r in multi})),
            evidence=tuple(evidence), data={"conflicts": len(conflicts), "multiple_outside_tuples": len(multi)}))
        blocked = []
    return findings, {r["conn"] for r in blocked}


_DEFAULT = IdleTimeouts()
"""conntrack's default timeouts, as natproof.connections groups by them (one source of truth)."""
IDLE_TIMEOUT_SYSCTL = {
    "udp": f"net.netfilter.nf_conntrack_udp_timeout (default {_DEFAULT.udp_unreplied_s:g} s) and "
           f"nf_conntrack_udp_timeout_stream (default {_DEFAULT.udp_s:g} s, for a flow answered and still active "
           f"after {_DEFAULT.udp_stream_after_s:g} s)",
    "tcp": f"net.netfilter.nf_conntrack_tcp_timeout_established (default {TCP_ESTABLISHED_S / 86400:g} days)",
    "icmp": f"net.netfilter.nf_conntrack_icmp_timeout (default {_DEFAULT.icmp_s:g} s)",
}
"""The conntrack timeout that ends an idle entry, per protocol, with the kernel's default."""

EntryDefault = tuple[float, str, str]
"""What conntrack's defaults gave an entry after its last packet: (timeout in seconds, the sysctl that sets it,
the entry's state in words)."""


def _entry_default(proto: str, first_ns: int, last_ns: int, answered: bool, replied: bool) -> EntryDefault | None:
    """The default timeout of one mapping's conntrack entry after its last packet, from its packets in a capture
    (``first_ns``, ``last_ns``: its first and last; ``answered``: a packet the other way, no ICMP error, came
    before the last; ``replied``: one came at all, for the words). UDP follows nf_conntrack_udp_packet as
    natproof.connections.IdleTimeouts does: answered before a last packet more than udp_stream_after_s (2 s)
    after the first, a stream (udp_s, 120 s, nf_conntrack_udp_timeout_stream), else udp_unreplied_s (30 s,
    nf_conntrack_udp_timeout); ICMP icmp_s (30 s). A capture that began after the entry or missed an answer can
    only make the timeout read shorter than it was. None for TCP: its timeout hangs on a state natproof does not
    follow (10 s closing to 5 days established)."""
    if proto == "udp":
        if answered and last_ns - first_ns > _DEFAULT.udp_stream_after_s * 1e9:
            return (_DEFAULT.udp_s, "nf_conntrack_udp_timeout_stream",
                    f"a stream entry (answered, active after {_DEFAULT.udp_stream_after_s:g} s)")
        return (_DEFAULT.udp_unreplied_s, "nf_conntrack_udp_timeout",
                f"an entry not yet a stream (answered, but not before a packet {_DEFAULT.udp_stream_after_s:g} s "
                "after its first)" if replied else "an unanswered entry")
    if proto == "icmp":
        return _DEFAULT.icmp_s, "nf_conntrack_icmp_timeout", "an ICMP entry"
    return None


def _mapping_answered(before_last: bool = True) -> pl.Expr:
    """Over one mapping's packets (ts_ns, frame_no, is_egress, is_icmp_error): a packet the other way than the
    first, no ICMP error, came (``before_last``: before the last one, as conntrack marks the entry answered only
    after that packet's own refresh)."""
    first = pl.col("is_egress").sort_by("ts_ns", "frame_no").first()
    other = (pl.col("is_egress") != first) & ~pl.col("is_icmp_error").fill_null(False)
    return (other & (pl.col("ts_ns") < pl.col("ts_ns").max()) if before_last else other).any()


Remap = tuple[int, int, int, str, str, EntryDefault | None]
"""One mapping of a flow mapped anew: (first ns, last ns, first frame, the tuple's source ADDR:PORT after the NAT,
the capture the frame is in, what conntrack's defaults gave its entry after its last packet: _entry_default)."""


def _remaps_after_silence(result: Result, rows: list[dict[str, Any]]) -> dict[int, list[Remap]]:
    """Of the connections ``rows`` that reached their responder under several tuples, those whose legs after the
    NAT follow one another in time (each next one starts IDLE_GAP_S or more after the last packet of the one
    before): {conn: [Remap per leg, in time order]}. The legs after the NAT are the outside ones of a connection
    started inside (lab udp-remap), the inside ones of a connection started outside
    (tests/variants/udp-idle-nodeport); legs under the initiator's own tuple (leaked) aside. With one capture, of
    the side before the NAT, and the kernel's record, the mappings are the record's entries in turn
    (_remaps_in_record)."""
    out: dict[int, list[Remap]] = {}
    for started, side in (("inside", "outside"), ("outside", "inside")):
        these = [r for r in rows if (r["initiator"] == "outside") == (started == "outside")]
        if not these:
            continue
        pk = _packets_of(result, these, side)
        spans = (pk.group_by("anchor", "conn_id").agg(pl.col("ts_ns").min().alias("first"),
                                                      pl.col("ts_ns").max().alias("last"),
                                                      pl.col("frame_no").min().alias("frame"),
                                                      _mapping_answered().alias("answered"),
                                                      _mapping_answered(before_last=False).alias("replied"))
                 .sort("anchor", "first"))
        by_anchor: dict[int, list[tuple[int, int, int, bool, bool]]] = {}
        for a, *span in spans.select("anchor", "first", "last", "frame", "answered", "replied").iter_rows():
            by_anchor.setdefault(a, []).append(tuple(span))  # type: ignore[arg-type]
        uplink_only = _uplink_only(result)
        for r in these:
            own = (r["orig_src"], r["orig_sport"], r["orig_dst"], r["orig_dport"])
            translated = {leg["first_frame"]: format_address(leg["src"], leg["sport"]) for leg in (r["legs"] or [])
                          if leg["observation_point"] == side
                          and (leg["src"], leg["sport"], leg["dst"], leg["dport"]) != own}
            # The uplink alone with the kernel's record (natproof.correlate_one): its packets' anchor is the
            # connection's outside leg, as no inside leg exists.
            anchor = r["outside_conn_id"] if uplink_only and r["inside_conn_id"] is None else r["inside_conn_id"]
            legs = [(first, last, frame, translated[frame], side,
                     _entry_default(r["proto"], first, last, answered, replied))
                    for first, last, frame, answered, replied in by_anchor.get(anchor, []) if frame in translated]
            if len(legs) > 1 and all(b[0] - a[1] >= IDLE_GAP_S * 1e9 for a, b in zip(legs, legs[1:], strict=False)):
                out[r["conn"]] = legs
    return out | _remaps_in_record(result, [r for r in rows if r["conn"] not in out])


def _remaps_in_record(result: Result, rows: list[dict[str, Any]]) -> dict[int, list[Remap]]:
    """_remaps_after_silence for a capture of the side before the NAT alone: a connection whose mappings came from
    the kernel's record (legs after the NAT with no frame: natproof.kernel._with_earlier_mappings) is split among
    the record's entries of its original tuple, in turn, at each entry's NEW (the packet that made it came up to
    EVENT_LAG_NS before its stamp); a remap when each entry's first packet came IDLE_GAP_S or more after the last
    one of the entry before (lab udp-remap's pod side: 5 s)."""
    from natproof.kernel import EVENT_LAG_NS, kernel_flows

    record = result.conntrack
    mine = [r for r in rows if any(leg["first_frame"] is None for leg in r["legs"] or [])]
    if record is None or not mine:
        return {}
    flows = kernel_flows(record.entries).filter(pl.col("has_new") & pl.col("start_ts_ns").is_not_null())
    out: dict[int, list[Remap]] = {}
    for r in mine:
        after = "inside" if r["initiator"] == "outside" else "outside"
        before = "outside" if after == "inside" else "inside"
        mapped = [leg for leg in r["legs"] if leg["observation_point"] == after and leg["first_frame"] is None]
        tup = {"proto": r["proto"], **{f"orig_{f}": r[f"orig_{f}"] for f in ("src", "sport", "dst", "dport")}}
        starts = (flows.filter(pl.all_horizontal([pl.col(k).eq_missing(v) for k, v in tup.items()])
                               & pl.col("start_ts_ns").is_between(r["first_ts_ns"] - int(IDLE_GAP_S * 1e9),
                                                                  r["last_ts_ns"] + EVENT_LAG_NS))
                  .sort("start_ts_ns")["start_ts_ns"].to_list())
        if len(starts) != len(mapped):
            continue
        pk = _packets(result, r, before).sort("ts_ns").select("ts_ns", "frame_no", "is_egress", "is_icmp_error")
        cuts = [*(t - EVENT_LAG_NS for t in starts[1:]), None]
        legs: list[Remap] = []
        lo = None
        for leg, hi in zip(mapped, cuts, strict=True):
            part = pk.filter((pl.col("ts_ns") >= lo) if lo is not None else pl.lit(True))
            part = part.filter(pl.col("ts_ns") < hi) if hi is not None else part
            if part.is_empty():
                break
            first, last = int(part["ts_ns"].min()), int(part["ts_ns"].max())  # type: ignore[arg-type]
            answered, replied = part.select(_mapping_answered().alias("a"),
                                            _mapping_answered(before_last=False).alias("r")).row(0)
            legs.append((first, last, int(part["frame_no"].min()), format_address(leg["src"], leg["sport"]), before,
                         _entry_default(r["proto"], first, last, answered, replied)))
            lo = hi
        if len(legs) == len(mapped) and all(b[0] - a[1] >= IDLE_GAP_S * 1e9
                                            for a, b in zip(legs, legs[1:], strict=False)):
            out[r["conn"]] = legs
    return out


def _remapped_after_idle(rows: list[dict[str, Any]], remaps: dict[int, list[Remap]]) -> list[Finding]:
    """Connections given a new tuple after a silence (``remaps``: _remaps_after_silence): their conntrack entry
    expired while the flow was idle (a NAT44 session delete, then a session create for the next packet, in RFC
    8158's terms), and the new mapping took another port (--random-fully, or the old one taken). Seen in the
    kernel: a UDP flow silent for longer than nf_conntrack_udp_timeout under MASQUERADE --random-fully, left the
    node under a new outside tuple (natproof lab run udp-remap); a UDP NodePort flow from outside, masqueraded
    (externalTrafficPolicy=Cluster), reached the pod from a new port (tests/variants/udp-idle-nodeport). One
    connection each, its tuples named in turn.

    What the silence allows: one shorter than the default timeout of the entry's state (_entry_default) could not
    have outlived it under conntrack's defaults, so the node's timeout is shorter than the default (the sysctl
    named) or something deleted the entry; the evidence gives each such silence beside the default. A trial:
    an unanswered UDP flow mapped anew after 20 s, a stream after 100 s, were told "its entry expired" beside the
    defaults of 30 and 120 s."""
    if not rows:
        return []
    evidence, silences = [], []
    early: dict[int, list[EntryDefault]] = {}  # conn -> the defaults its silences fell short of
    for r in rows:
        legs = remaps[r["conn"]]
        gaps = [(b[0] - a[1]) / 1e9 for a, b in zip(legs, legs[1:], strict=False)]
        silences += gaps
        notes = []
        for a, gap in zip(legs, gaps, strict=False):
            if a[5] is not None and gap < a[5][0]:
                early.setdefault(r["conn"], []).append(a[5])
                notes.append(f", shorter than {a[5][0]:g} s, the default {a[5][1]} of {a[5][2]}, so under the "
                             "defaults it did not expire")
            else:
                notes.append("")
        if len(evidence) >= 20:
            continue
        side = "inside" if r["initiator"] == "outside" else "outside"
        # (From the record: the frames are the captured side's, the tuples the kernel's entries.)
        steps = [f"{b[3]} from {b[4]} frame {b[2]}, {gap:.1f} s after {a[3]}'s last packet{note}"
                 for a, b, gap, note in zip(legs, legs[1:], gaps, notes, strict=False)]
        went = "reached the pod as" if side == "inside" else "left as"
        said = "the kernel's record; " if legs[0][4] != side else ""
        evidence.append(f"{_conn_label(r)} {went} {legs[0][3]} ({said}{legs[0][4]} frame {legs[0][2]}), then as "
                        + "; then as ".join(steps))
    inbound = [r for r in rows if r["initiator"] == "outside"]
    outbound = [r for r in rows if r["initiator"] != "outside"]
    protos = sorted({r["proto"] for r in rows})
    knobs = "; ".join(IDLE_TIMEOUT_SYSCTL[p] for p in protos if p in IDLE_TIMEOUT_SYSCTL)
    silence = f"shortest silence {min(silences):.1f} s, longest {max(silences):.1f} s"
    left = "left the node under a new outside tuple"
    reached = "started outside, reached the pod under a new tuple"
    if not inbound:
        head = f"{len(rows)} connection(s) {left} after falling silent ({silence})"
    elif not outbound:
        head = f"{len(rows)} connection(s) {reached} after falling silent ({silence})"
    else:
        head = (f"{len(rows)} connection(s) were mapped anew after falling silent ({len(outbound)} {left}; "
                f"{len(inbound)} {reached}; {silence})")
    effects = ([] if not outbound else ["The far end sees a new client address:port (a UDP session, a QUIC or SIP "
                                        "peer, a game server may drop it)"]) + (
        [] if not inbound else [f"{'the' if outbound else 'The'} pod sees a new client address:port (masqueraded "
                                "NodePort traffic: a session keyed on it is lost)"])
    deleted = "kube-proxy deletes a UDP Service's entries when its endpoints change"
    by_knob = Counter(d[1] for ds in early.values() for d in dict.fromkeys(ds))
    shorter = ", ".join(f"net.netfilter.{k} for {n} connection(s)" for k, n in sorted(by_knob.items()))
    if not early:
        why = (f"the first mapping ended during the silence (its conntrack entry expired, or was deleted: {deleted})"
               " and the next packet was mapped anew, to another port")
        fix = ("Keep the flow alive more often than the conntrack timeout, or raise it on the node: " + knobs
               + " (RFC 4787 REQ-5 asks a UDP mapping to outlive 2 minutes of silence). `conntrack -E` shows the "
               "first entry's DESTROY and the new one's NEW.")
    else:
        some = "" if len(early) == len(rows) else f"{len(early)} of them: "
        rest = "" if len(early) == len(rows) else (
            f"; the other {len(rows) - len(early)}'s silence outlasted the default, so their entry expired or was "
            "deleted")
        why = (f"the first mapping ended during the silence and the next packet was mapped anew, to another port; "
               f"{some}the silence was shorter than conntrack's default timeout for the entry's state (each beside "
               "its default in the evidence), so under the defaults the entry did not expire: the node's timeout is "
               f"shorter than the default ({shorter}), or the entry was deleted (conntrack -D, a flush of the "
               f"table, an agent: {deleted}){rest}")
        fix = ("Read the node's timeouts (`sysctl net.netfilter." + " net.netfilter.".join(sorted(by_knob))
               + "`) and raise one set below the default (RFC 4787 REQ-5 asks a UDP mapping to outlive 2 minutes of "
               "silence); if they are the defaults, something deleted the entries: `conntrack -E` shows the first "
               "entry's DESTROY and the new one's NEW, and when.")
    return [Finding(
        "remapped_after_idle", "warning", "New outside tuple after an idle gap" if not inbound else
        "New tuple after an idle gap",
        f"{head}: {why}. " + "; ".join(effects) + "; this is not a port clash.",
        fix, connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence),
        data={"connections": len(rows),
              "silence_s": {"min": round(min(silences), 3), "max": round(max(silences), 3)},
              "protocols": protos, "flows_from_outside": len(inbound),
              "shorter_than_default": {"connections": len(early), "by_sysctl": dict(sorted(by_knob.items()))}})]


def _kernel_entry_text(r: dict[str, Any]) -> str:
    """The reply tuple a kernel entry recorded, in conntrack's notation, and the mapping it means."""
    icmp = r["proto"] == "icmp"
    reply = (f"src={r['kernel_reply_src']} dst={r['kernel_reply_dst']} "
             + (f"id={r['kernel_reply_sport']}" if icmp else
                f"sport={r['kernel_reply_sport']} dport={r['kernel_reply_dport']}"))
    means = (f"{format_address(r['kernel_reply_dst'], r['kernel_reply_sport'] if icmp else r['kernel_reply_dport'])}"
             f" -> {format_address(r['kernel_reply_src'], 0 if icmp else r['kernel_reply_sport'])}")
    return f"reply tuple {reply}, i.e. translated to {means}"


def _kernel_contradicts(result: Result, rows: list[dict[str, Any]]) -> list[Finding]:
    """The kernel's conntrack record holds another mapping for a connection's original tuple, in its time: the
    packets and the kernel disagree (natproof.kernel: conntrack's reply tuple is the translated tuple reversed)."""
    if not rows:
        return []
    path = result.conntrack.path if result.conntrack is not None else "the conntrack record"
    evidence = [f"{_conn_label(r)}: the captures show it translated to "
                f"{format_address(r['trans_src'], r['trans_sport'])} -> "
                f"{format_address(r['trans_dst'], r['trans_dport'])}; {path} line {r['kernel_line']}: "
                f"{_kernel_entry_text(r)}" for r in rows[:20]]
    return [Finding(
        "kernel_contradicts", "error", "The kernel's conntrack record contradicts the captured mapping",
        f"{len(rows)} connection(s) crossed the NAT, by the captures, under a translated tuple that the kernel's "
        "conntrack record does not hold: its entry for the same original tuple, at the same time, names another "
        "mapping. The record is from another node or another time, or was edited, or the captures are not of the "
        "NAT that wrote it.",
        "Check that the record was taken on this node while the captures ran (conntrack -E -o timestamp, started "
        "before the traffic); list the entry itself with `conntrack -L -p PROTO -s ORIGINAL_SRC --sport "
        "ORIGINAL_SPORT`; the line cited is the entry's NEW event (else its first line).",
        connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence),
        data={"record": path, "lines": [r["kernel_line"] for r in rows]})]


def _kernel_gaps(result: Result, rows: list[dict[str, Any]], judged: int) -> list[Finding]:
    """Connections that crossed the node but are missing from an event log (kernel_reason not_recorded,
    record_starts_after, record_ends_before): a gap in the record, not a NAT failure. When every one of the
    ``judged`` connections (of two captures, or of one) lies before or after the log's events, the log is of
    another time (or node): a warning, kernel_record_other_time, saying so with both spans (a helper's trial: a
    record of 06:06 given with captures of 09:26 read as "misses some connections")."""
    if not rows:
        return []
    record = result.conntrack
    path = record.path if record is not None else "the conntrack record"
    why = Counter(r["kernel_reason"] for r in rows)
    outside_events = set(why) <= {"record_starts_after", "record_ends_before"}
    # With one capture too (partial_overlap sets its connections aside, but only this says why: a helper's trial of
    # a record of the next day read as a listener's full buffer).
    two_captures = "none" not in (result.inside.format, result.outside.format)
    if (outside_events and len(rows) == judged and record is not None
            and record.first_ts_ns is not None and record.last_ts_ns is not None):
        first = min(r["first_ts_ns"] for r in rows)
        last = max(r["last_ts_ns"] for r in rows)
        theirs = "the captures'" if two_captures else "the capture's connections"
        return [Finding(
            "kernel_record_other_time", "warning", "The conntrack record is of another time",
            f"None of the {judged} connection(s) falls within the events of {path} ({utc_ms(record.first_ts_ns)} - "
            f"{utc_ms(record.last_ts_ns)} UTC, the node's clock), "
            f"{theirs} are {utc_ms(first)} - {utc_ms(last)} UTC: "
            "the record says nothing of them, and every mapping rests on the packets alone.",
            "Give the record taken on this node while the captures ran (`conntrack -E -o timestamp,extended`, "
            "started before the traffic and stopped after), or check the node's clock against the captures'.",
            connections=tuple(r["conn"] for r in rows),
            evidence=(f"{path}: events {utc_ms(record.first_ts_ns)} - {utc_ms(record.last_ts_ns)} UTC",
                      f"connections {utc_ms(first)} - {utc_ms(last)} UTC"),
            data=dict(why) | {"record_first_ts": record.first_ts_ns / 1e9, "record_last_ts": record.last_ts_ns / 1e9,
                              "connections_first_ts": first / 1e9, "connections_last_ts": last / 1e9})]
    evidence = [f"{_conn_label(r)} ({r['verdict']}): {r['kernel_reason']}" for r in rows[:20]]
    return [Finding(
        "kernel_record_gaps", "info", "The conntrack record misses "
        + ("every connection" if len(rows) == judged else "some connections"),
        f"{len(rows)} connection(s) have no entry in {path}: "
        + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in why.items())
        + ". Their mappings rest on the packets alone.",
        "Start `conntrack -E -o timestamp,extended` before the traffic and stop it after; give it a large socket "
        "buffer (`-b 8388608`) or listen for NEW events alone (`-e NEW`): a listener drops events when its buffer "
        "fills (conntrack -E prints 'No buffer space available').",
        connections=tuple(r["conn"] for r in rows), evidence=tuple(evidence), data=dict(why))]
