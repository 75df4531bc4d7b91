"""Turn a capture's records into a polars frame with one row per IP packet."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import polars as pl

from natproof.capture import LINKTYPE_NAMES, CaptureInfo, Record, read_capture
from natproof.decode import (
    DEFAULT_OVERLAY,
    FIELDS,
    VXLAN_LIKE_MIN,
    Overlay,
    Skip,
    decode,
    link_payload,
    sll2_ifindex,
    vxlan_like,
)
from natproof.errors import CaptureError

PACKET_SCHEMA: dict[str, pl.DataType] = {
    "frame_no": pl.UInt32(),
    "ts_ns": pl.Int64(),
    "wire_len": pl.UInt32(),
    "caplen": pl.UInt32(),
    "iface": pl.UInt32(),
    "ifindex": pl.Int32(),
    "ip_version": pl.UInt8(),
    "src": pl.Categorical(),
    "dst": pl.Categorical(),
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
    "head_digest": pl.UInt64(),
    "icmp_type": pl.UInt8(),
    "icmp_code": pl.UInt8(),
    "icmp_id": pl.UInt16(),
    "icmp_seq": pl.UInt16(),
    "inner_proto": pl.UInt8(),
    "inner_src": pl.Categorical(),
    "inner_dst": pl.Categorical(),
    "inner_sport": pl.UInt16(),
    "inner_dport": pl.UInt16(),
    "icmp_mtu": pl.UInt32(),
    "underlay": pl.Categorical(),
}
assert tuple(PACKET_SCHEMA) == FIELDS
"""Every column of a decoded packet. ``iface`` and ``ifindex`` say which interface it was captured on: ``iface`` the
file's interface (Record.iface: the pcapng interface block, 0 for classic pcap), ``ifindex`` the Linux interface
index of a LINUX_SLL2 frame (``tcpdump -i any``), -1 for other link types. CaptureInfo names the first
(``if_names``); natproof.points names both (an SLL2 index from ``ip -o link`` output, else ``if<N>``).
``underlay``: an overlay packet's outer packet, "ENCAP SRC DST VNI" (natproof.decode.decapsulate and
underlay_label; null for a packet captured as it is): every other column is the inner packet's."""

_PROTO, _UNDERLAY = FIELDS.index("proto"), FIELDS.index("underlay")

Progress = Callable[[int], None]
"""Called with the number of file bytes (record headers and data) decoded since the last call."""

DECODERS = ("auto", "fast", "dpkt")
"""Values of the ``decoder`` option: the columnar decoder (auto, fast) or the dpkt reference."""


def build_packets(records: Iterable[Record], info: CaptureInfo, progress: Progress | None = None,
                  overlay: Overlay = DEFAULT_OVERLAY) -> pl.DataFrame:
    """Decode records into a frame of PACKET_SCHEMA; frames that are not IP packets are counted in info.skipped.
    ``overlay``: the encapsulations' ports (natproof.decode.Overlay)."""
    rows: list[tuple] = []
    append = rows.append
    skipped = info.skipped
    on_if, skipped_on_if = info.interface_frames, info.interface_skipped
    n = 0
    done = 0
    for rec in records:
        where = (rec.iface, sll2_ifindex(rec.linktype, rec.data))
        on_if[where] += 1
        try:
            row = decode(rec.frame_no, rec.ts_ns, rec.wire_len, rec.caplen, rec.linktype, rec.data, rec.iface,
                         overlay)
            append(row)
            if row[_PROTO] == 17 and row[_UNDERLAY] is None:
                port = vxlan_like(*link_payload(rec.linktype, rec.data)[:2])
                if port is not None:
                    info.vxlan_like[port] += 1
        except Skip as skip:
            if skip.reason == "malformed":
                info.note_malformed(rec.frame_no, rec.ts_ns)
            elif skip.reason == "truncated_l4":
                info.note_cut(rec.frame_no, rec.ts_ns, skip.cut)
            else:
                skipped[skip.reason] += 1
            skipped_on_if[(*where, skip.reason)] += 1
        except Exception:  # noqa: BLE001 - a malformed packet is counted, never fatal
            info.note_malformed(rec.frame_no, rec.ts_ns)
            skipped_on_if[(*where, "malformed")] += 1
        n += 1
        done += rec.caplen + 16
        if progress is not None and n == 4096:
            progress(done)
            n = done = 0
    if progress is not None and done:
        progress(done)
    return pl.DataFrame(rows, schema=PACKET_SCHEMA, orient="row")


def load_packets(path: str | os.PathLike[str], progress: Progress | None = None, *,
                 fast: bool | None = None, columns: Sequence[str] | None = None,
                 transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
                 overlay: Overlay = DEFAULT_OVERLAY,
                 sink: Callable[[pl.DataFrame], None] | None = None,
                 read_ahead: bool | None = None) -> tuple[CaptureInfo, pl.DataFrame]:
    """Read and decode one capture file; a capture with no frame of a link type natproof reads is an error.

    ``fast`` picks the decoder: True the columnar one (natproof.fastdecode), False the dpkt reference
    (:func:`build_packets`), None (the default) the columnar one. Both give the same frame and info; the
    columnar decoder hands every frame it does not handle to the reference (``info.fallback_frames``), and a
    file whose framing it does not handle to the reference path as a whole. ``columns`` (names of
    PACKET_SCHEMA) keeps only those, in that order, and ``transform``, a row-by-row function of such a frame,
    is applied to it: the columnar decoder does both batch by batch and never holds the full width. ``sink``
    takes the packets batch by batch in capture order instead of their being returned (then an empty frame is):
    the columnar decoder never holds the whole capture; the reference path, for the rare file the columnar
    framing does not handle, hands it over in one batch. ``read_ahead``: the columnar decoder's framing thread
    (natproof.fastdecode.decode_file; False when another process has the other core).
    """
    if columns is not None and (unknown := [c for c in columns if c not in PACKET_SCHEMA]):
        raise ValueError(f"unknown packet columns: {', '.join(unknown)}")
    shaped = False  # columns and transform applied
    if fast is None or fast:
        from natproof.fastdecode import Unsupported, decode_file

        try:
            info, packets = decode_file(path, progress, columns=columns, transform=transform, overlay=overlay,
                                        sink=sink, read_ahead=read_ahead)
            shaped = True
        except Unsupported:
            info, packets = _load_reference(path, progress, overlay)
    else:
        info, packets = _load_reference(path, progress, overlay)
    require_supported_link(info, packets)
    note_decoded(info)
    if not shaped and columns is not None and packets.columns != list(columns):
        packets = packets.select(columns)
    if not shaped and transform is not None:
        packets = transform(packets)
    if not shaped and sink is not None:
        sink(packets)
        packets = packets.clear()
    return info, packets


def note_decoded(info: CaptureInfo) -> None:
    """Append to ``info.warnings`` what load_packets says of a capture once it is decoded: frames a snaplen cut
    (:func:`truncated_note`), UDP that looks like VXLAN on a port not read as VXLAN."""
    if info.truncated_records:
        info.warnings.append(truncated_note(info.truncated_records, info.records))
    for port, n in sorted(info.vxlan_like.items()):
        if n >= VXLAN_LIKE_MIN:
            info.warnings.append(f"{n} UDP packets to port {port} look like VXLAN (the I flag, an Ethernet frame with "
                                 f"IP inside) but were read as plain UDP: --vxlan-port {port} reads them as overlay "
                                 "packets")


def truncated_note(truncated: int, records: int) -> str:
    """The warning of a capture ``truncated`` of whose ``records`` frames are stored shorter than they were on the
    wire (CaptureInfo.truncated_records: a snaplen, tcpdump -s). A cut payload head digests what was captured,
    which only a copy cut alike agrees with: natproof.match pairs such datagrams on their headers and lengths
    (_pair_datagrams), TCP segments on their numbers; a frame cut inside its transport header is skipped
    (truncated_l4)."""
    return (f"{truncated} of {records} frames were captured shorter than they were on the wire (a snaplen: tcpdump "
            "-s): their payload past the cut is not compared, and a frame cut inside its TCP/UDP/ICMP header is "
            "skipped (truncated_l4)")


def require_supported_link(info: CaptureInfo, packets: pl.DataFrame) -> tuple[CaptureInfo, pl.DataFrame]:
    """Raise CaptureError when no frame was of a link type natproof reads; else return the arguments."""
    if packets.is_empty() and info.skipped.get("unsupported_link", 0) == info.records:
        supported = ", ".join(sorted(set(LINKTYPE_NAMES.values())))
        raise CaptureError(info.path, f"unsupported link type {info.link_type} (natproof reads {supported})")
    return info, packets


def _load_reference(path: str | os.PathLike[str], progress: Progress | None,
                    overlay: Overlay = DEFAULT_OVERLAY) -> tuple[CaptureInfo, pl.DataFrame]:
    info, records = read_capture(path)
    return info, build_packets(records, info, progress, overlay)


def decoder_flag(decoder: str) -> bool | None:
    """load_packets' ``fast`` argument for a ``decoder`` name (auto, fast or dpkt)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    return {"auto": None, "fast": True, "dpkt": False}[decoder]


def load_pair(paths: Sequence[str | os.PathLike[str]], progress: Sequence[Progress | None] | None = None, *,
              fast: bool | None = None) -> list[tuple[CaptureInfo, pl.DataFrame]]:
    """load_packets on each path; two large captures decode in parallel (see natproof.parallel)."""
    from natproof.parallel import pairs, run_pair

    # Two processes have the two cores: this one frames no chunk ahead in a thread; the worker, with half the
    # cores for its polars pool, does (as natproof.correlate).
    ahead = False if pairs(paths) else None
    return [(info, frames["packets"])
            for info, frames in run_pair(_load_job, paths, progress, fast=fast,
                                         each=[{"read_ahead": ahead}, {"read_ahead": None}])]


def _load_job(path: str | os.PathLike[str], progress: Progress | None, *,
              fast: bool | None, read_ahead: bool | None = None) -> tuple[CaptureInfo, dict[str, pl.DataFrame]]:
    info, packets = load_packets(path, progress, fast=fast, read_ahead=read_ahead)
    return info, {"packets": packets}
