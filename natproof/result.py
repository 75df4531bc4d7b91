"""The result of a correlation, and its JSON form (schema natproof.correlate/1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from natproof.capture import CaptureInfo
from natproof.verdicts import Verdict

SCHEMA = "natproof.correlate/1"

CONNECTION_SCHEMA: dict[str, pl.DataType] = {
    "conn": pl.UInt32(),
    "proto": pl.String(),
    "inside_src": pl.String(), "inside_sport": pl.UInt16(), "inside_dst": pl.String(), "inside_dport": pl.UInt16(),
    "outside_src": pl.String(), "outside_sport": pl.UInt16(),
    "outside_dst": pl.String(), "outside_dport": pl.UInt16(),
    "verdict": pl.String(),
    "first_ts_ns": pl.Int64(), "last_ts_ns": pl.Int64(),
    "egress_inside": pl.UInt32(), "egress_outside": pl.UInt32(),
    "reply_outside": pl.UInt32(), "reply_inside": pl.UInt32(),
    "icmp_errors_outside": pl.UInt32(), "icmp_errors_inside": pl.UInt32(),
    "matched_egress": pl.UInt32(), "matched_reply": pl.UInt32(),
    "latency_median_us": pl.Float64(), "latency_max_us": pl.Float64(),
    "outside_tuples": pl.UInt32(),
    "evidence_egress_inside_frame": pl.UInt32(), "evidence_egress_outside_frame": pl.UInt32(),
    "evidence_reply_outside_frame": pl.UInt32(), "evidence_reply_inside_frame": pl.UInt32(),
    "evidence_icmp_error_outside_frame": pl.UInt32(), "evidence_icmp_error_inside_frame": pl.UInt32(),
    "inside_conn_id": pl.UInt32(), "outside_conn_id": pl.UInt32(),
}
"""One row per inside connection. Ports are the ICMP echo identifier and 0 for ICMP echo.
inside_conn_id / outside_conn_id are the conn_id of its packets in inside_packets / outside_packets."""


@dataclass(frozen=True)
class CaptureSummary:
    """What natproof read from one capture file."""

    path: str
    format: str
    link_type: str
    """libpcap link-type name(s), e.g. EN10MB or LINUX_SLL2."""
    records: int
    """Packet records in the file (frames)."""
    packets: int
    """IP packets that belong to a connection."""
    first_ts_ns: int
    last_ts_ns: int
    skipped: dict[str, int]
    """Frames left out of every connection, by reason (non_ip, icmp_other, malformed, ...)."""
    warnings: tuple[str, ...]

    @classmethod
    def from_info(cls, info: CaptureInfo, packets: int) -> CaptureSummary:
        return cls(
            path=info.path, format=info.format, link_type=info.link_type, records=info.records,
            packets=packets, first_ts_ns=info.first_ts_ns or 0, last_ts_ns=info.last_ts_ns or 0,
            skipped=dict(sorted(info.skipped.items())), warnings=tuple(info.warnings),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "packets": self.records, "link_type": self.link_type,
            "first_ts": _secs(self.first_ts_ns), "last_ts": _secs(self.last_ts_ns),
            "format": self.format, "ip_packets": self.packets, "skipped": self.skipped,
        }


def _secs(ts_ns: int | None) -> float | None:
    return None if ts_ns is None else round(ts_ns / 1e9, 9)


@dataclass(frozen=True)
class Result:
    """Everything ``correlate`` found: a frame of connections plus the packet frames behind it."""

    inside: CaptureSummary
    outside: CaptureSummary
    clock_offset_s: float
    """Outside clock minus inside clock, estimated from matched packets; 0.0 when synchronized."""
    pod_networks: tuple[str, ...]
    """Networks treated as the pod network (given, or inferred from the inside capture)."""
    connections: pl.DataFrame
    """One row per inside connection, columns of CONNECTION_SCHEMA, in order of first packet."""
    unmatched_inside: int
    """Packets of non-internal inside connections with no counterpart outside."""
    unmatched_outside: int
    """Outside packets with no counterpart inside (includes the node's own traffic)."""
    inside_packets: pl.DataFrame = field(repr=False)
    """Every inside packet that belongs to a connection, in capture order: frame_no, ts_ns, proto, tcp_flags,
    conn_id (= inside_conn_id of its connection), is_egress, is_icmp_error, and its match: out_frame, dt_ns
    (outside minus inside time, raw clocks), method (exact, bytes, payload; null when unmatched). Narrow on
    purpose: a full decoded frame is load_packets()."""
    outside_packets: pl.DataFrame = field(repr=False)
    """The same for the outside capture, without the match columns."""

    def by_verdict(self) -> dict[str, int]:
        counts = dict.fromkeys((v.value for v in Verdict), 0)
        for v, n in self.connections.group_by("verdict").len().iter_rows():
            counts[v] = n
        return counts

    def port_preserved_ratio(self) -> float:
        """Share of translated-source connections whose outside source port equals the inside one."""
        rewritten = self.connections.filter(
            pl.col("outside_src").is_not_null() & (pl.col("outside_src") != pl.col("inside_src"))
        )
        if rewritten.is_empty():
            return 0.0
        kept = rewritten.filter(pl.col("outside_sport") == pl.col("inside_sport")).height
        return round(kept / rewritten.height, 6)

    def to_dict(self) -> dict[str, Any]:
        """The natproof.correlate/1 document."""
        conns = [connection_dict(row) for row in self.connections.iter_rows(named=True)]
        return {
            "schema": SCHEMA,
            "captures": {"inside": self.inside.to_dict(), "outside": self.outside.to_dict()},
            "clock_offset_s": self.clock_offset_s,
            "pod_networks": list(self.pod_networks),
            "connections": conns,
            "unmatched": {"inside": self.unmatched_inside, "outside": self.unmatched_outside},
            "summary": {
                "connections": self.connections.height,
                "by_verdict": self.by_verdict(),
                "port_preserved_ratio": self.port_preserved_ratio(),
            },
        }


def connection_dict(row: dict[str, Any]) -> dict[str, Any]:
    """One connection row as the contract's JSON object."""
    outside = None
    if row["outside_src"] is not None:
        outside = {"src": row["outside_src"], "sport": row["outside_sport"],
                   "dst": row["outside_dst"], "dport": row["outside_dport"]}
    latency = None
    if row["latency_median_us"] is not None:
        latency = {"median": row["latency_median_us"], "max": row["latency_max_us"]}
    flags = []
    if (row["outside_tuples"] or 0) > 1:
        flags.append("multiple_outside_tuples")
    if row["icmp_errors_outside"] or row["icmp_errors_inside"]:
        flags.append("icmp_error")
    return {
        "proto": row["proto"],
        "inside": {"src": row["inside_src"], "sport": row["inside_sport"],
                   "dst": row["inside_dst"], "dport": row["inside_dport"]},
        "outside": outside,
        "verdict": row["verdict"],
        "first_seen": _secs(row["first_ts_ns"]),
        "last_seen": _secs(row["last_ts_ns"]),
        "packets": {"egress_inside": row["egress_inside"], "egress_outside": row["egress_outside"],
                    "reply_outside": row["reply_outside"], "reply_inside": row["reply_inside"],
                    "icmp_error_outside": row["icmp_errors_outside"], "icmp_error_inside": row["icmp_errors_inside"]},
        "matched": {"egress": row["matched_egress"], "reply": row["matched_reply"]},
        "nat_latency_us": latency,
        "flags": flags,
        "evidence": {
            "egress": _frames(row["evidence_egress_inside_frame"], row["evidence_egress_outside_frame"]),
            "reply": _frames(row["evidence_reply_inside_frame"], row["evidence_reply_outside_frame"]),
            "icmp_error": _frames(row["evidence_icmp_error_inside_frame"], row["evidence_icmp_error_outside_frame"]),
        },
    }


def _frames(inside: int | None, outside: int | None) -> dict[str, int | None] | None:
    """Frame numbers (1-based, as Wireshark counts) of the first matched pair in one direction."""
    if inside is None and outside is None:
        return None
    return {"inside_frame": inside, "outside_frame": outside}
