"""Turn a capture's records into a polars frame with one row per IP packet."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import polars as pl

from natproof.capture import LINKTYPE_NAMES, CaptureInfo, Record, read_capture
from natproof.decode import FIELDS, Skip, decode
from natproof.errors import CaptureError

PACKET_SCHEMA: dict[str, pl.DataType] = {
    "frame_no": pl.UInt32(),
    "ts_ns": pl.Int64(),
    "wire_len": pl.UInt32(),
    "caplen": pl.UInt32(),
    "ifindex": pl.Int32(),
    "ip_version": pl.UInt8(),
    "src": pl.String(),
    "dst": pl.String(),
    "proto": pl.UInt8(),
    "sport": pl.UInt16(),
    "dport": pl.UInt16(),
    "ip_id": pl.UInt32(),
    "ttl": pl.UInt8(),
    "ip_len": pl.UInt32(),
    "tcp_seq": pl.UInt32(),
    "tcp_ack": pl.UInt32(),
    "tcp_flags": pl.UInt16(),
    "tcp_win": pl.UInt16(),
    "payload_len": pl.UInt32(),
    "payload_captured_len": pl.UInt32(),
    "payload_digest": pl.UInt64(),
    "head_digest": pl.UInt64(),
    "icmp_type": pl.UInt8(),
    "icmp_code": pl.UInt8(),
    "icmp_id": pl.UInt16(),
    "icmp_seq": pl.UInt16(),
    "inner_proto": pl.UInt8(),
    "inner_src": pl.String(),
    "inner_dst": pl.String(),
    "inner_sport": pl.UInt16(),
    "inner_dport": pl.UInt16(),
}
assert tuple(PACKET_SCHEMA) == FIELDS

Progress = Callable[[int], None]
"""Called with the number of file bytes (record headers and data) decoded since the last call."""


def build_packets(records: Iterable[Record], info: CaptureInfo, progress: Progress | None = None) -> pl.DataFrame:
    """Decode records into a frame of PACKET_SCHEMA; frames that are not IP packets are counted in info.skipped."""
    rows: list[tuple] = []
    append = rows.append
    skipped = info.skipped
    n = 0
    done = 0
    for rec in records:
        try:
            append(decode(rec.frame_no, rec.ts_ns, rec.wire_len, rec.caplen, rec.linktype, rec.data))
        except Skip as skip:
            skipped[skip.reason] += 1
        except Exception:  # noqa: BLE001 - a malformed packet is counted, never fatal
            skipped["malformed"] += 1
        n += 1
        done += rec.caplen + 16
        if progress is not None and n == 4096:
            progress(done)
            n = done = 0
    if progress is not None and done:
        progress(done)
    return pl.DataFrame(rows, schema=PACKET_SCHEMA, orient="row")


def load_packets(path: str | os.PathLike[str], progress: Progress | None = None) -> tuple[CaptureInfo, pl.DataFrame]:
    """Read and decode one capture file; a capture with no frame of a link type natproof reads is an error."""
    info, records = read_capture(path)
    packets = build_packets(records, info, progress)
    if packets.is_empty() and info.skipped.get("unsupported_link", 0) == info.records:
        supported = ", ".join(sorted(set(LINKTYPE_NAMES.values())))
        raise CaptureError(info.path, f"unsupported link type {info.link_type} (natproof reads {supported})")
    return info, packets
