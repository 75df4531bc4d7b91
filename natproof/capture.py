"""Read pcap and pcapng files (optionally gzip-compressed) into records with integer-nanosecond timestamps."""

from __future__ import annotations

import functools
import io
import mmap
import os
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from natproof.errors import CaptureError

# Link-layer types natproof decodes, by libpcap's LINKTYPE_ number and name (pcap-linktype(7)).
LINKTYPE_NAMES: dict[int, str] = {
    0: "NULL",
    1: "EN10MB",
    12: "RAW",
    14: "RAW",
    101: "RAW",
    108: "LOOP",
    113: "LINUX_SLL",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # microsecond, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanosecond (tcpdump --time-stamp-precision=nano)
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class Record:
    """One packet record as stored in the file."""

    frame_no: int
    """1-based position among the file's packet records, as Wireshark numbers frames."""
    ts_ns: int
    """Capture time, nanoseconds since the Unix epoch."""
    caplen: int
    """Bytes stored in the file for this packet."""
    wire_len: int
    """Bytes the packet had on the wire (larger than caplen when the snaplen cut it)."""
    linktype: int
    """LINKTYPE_ of the interface the packet was captured on."""
    iface: int
    """The file's interface the packet was captured on: its position among the pcapng Interface Description
    Blocks of the whole file (sections counted in order; ``CaptureInfo.link_types`` and ``if_names`` are indexed
    by it); 0 for classic pcap."""
    data: bytes


@dataclass
class CaptureInfo:
    """What was read from one capture file; filled in as the records are iterated."""

    path: str
    format: str = ""
    """"pcap" or "pcapng", with "+gzip" when compressed."""
    link_types: list[int] = field(default_factory=list)
    """LINKTYPE_ of each interface, in file order (one for classic pcap)."""
    if_names: list[str] = field(default_factory=list)
    """pcapng ``if_name`` of each interface, in file order ("" where the block names none; [""] for classic
    pcap, which names no interface)."""
    ts_precision_ns: int = 1_000
    records: int = 0
    first_ts_ns: int | None = None
    """The earliest record's time (ns since the epoch), not the first in file order: a capture merged or written
    out of order still spans what its packets do."""
    last_ts_ns: int | None = None
    """The latest record's time."""
    truncated_records: int = 0
    """Records whose stored length is smaller than the original packet (snaplen)."""
    warnings: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    """Frames that are not part of any connection, by reason (non_ip, malformed, unsupported_link, ...)."""
    fallback_frames: int = 0
    """Frames the fast decoder (natproof.fastdecode) handed to the dpkt reference decoder; 0 on the dpkt path."""
    interface_frames: Counter[tuple[int, int]] = field(default_factory=Counter)
    """Records by the interface they were captured on, ``(iface, ifindex)``: ``iface`` as Record.iface, ``ifindex``
    the Linux interface index a LINUX_SLL2 frame carries (``tcpdump -i any``), -1 for every other link type.
    Filled by the decoders (natproof.packets, natproof.fastdecode), not by read_capture."""
    vxlan_like: Counter[int] = field(default_factory=Counter)
    """UDP packets that look like VXLAN on a port not read as VXLAN, by destination port (natproof.decode.vxlan_like):
    the decoders fill it and suggest --vxlan-port in ``warnings``."""
    interface_skipped: Counter[tuple[int, int, str]] = field(default_factory=Counter)
    """``skipped`` by interface: ``(iface, ifindex, reason)``. Frames lost to a malformed pcapng block belong to no
    interface and are only in ``skipped``."""
    malformed_frames: list[tuple[int, int]] = field(default_factory=list)
    """(frame number, time in ns) of the frames skipped as malformed, the first MALFORMED_KEPT: a packet the other
    capture saw and this one has only as such a frame was not lost (natproof.diagnose)."""

    cut_flows: dict[tuple[int, str, int | None, str, int | None], list[int]] = field(default_factory=dict)
    """Frames skipped as truncated_l4 behind a whole IP header (a snaplen cut the TCP or UDP header, or cut just
    before it), by flow as the frame went, (proto, src, sport, dst, dport), the ports None when the cut took them
    (tcpdump -s 34 on IPv4 over Ethernet): [frames, first time ns, last time ns, first frame number]. One entry a
    flow and direction (a pair of hosts and direction, ports cut), however many frames: a capture cut so is still
    told apart from one that missed the traffic (natproof.assemble._cut_flows_of)."""

    def note_cut(self, frame_no: int, ts_ns: int, flow: tuple[int, str, int | None, str, int | None] | None) -> None:
        """Count a frame skipped as truncated_l4, and, ``flow`` given (its IP header whole: decode.Skip.cut), add
        it to ``cut_flows``."""
        self.skipped["truncated_l4"] += 1
        if flow is None:
            return
        seen = self.cut_flows.get(flow)
        if seen is None:
            self.cut_flows[flow] = [1, ts_ns, ts_ns, frame_no]
        else:
            seen[0] += 1
            seen[1], seen[2], seen[3] = min(seen[1], ts_ns), max(seen[2], ts_ns), min(seen[3], frame_no)

    def note_malformed(self, frame_no: int, ts_ns: int) -> None:
        """Count a frame skipped as malformed, and keep where it is (the first MALFORMED_KEPT)."""
        self.skipped["malformed"] += 1
        if len(self.malformed_frames) < MALFORMED_KEPT:
            self.malformed_frames.append((frame_no, ts_ns))

    @property
    def link_type(self) -> str:
        names = sorted({LINKTYPE_NAMES.get(lt, f"LINKTYPE_{lt}") for lt in self.link_types})
        return ",".join(names) if names else "unknown"


MALFORMED_KEPT = 10_000
"""Malformed frames whose number and time a CaptureInfo keeps (each is counted)."""

GZIP_CUT = "gzip stream cut short: the capture ends where its compressed data does"
"""The warning of a gzip capture whose compressed stream stops before its end (a file still being written, or
copied before it was whole): what decompressed is read, as a plain capture cut short is."""


def gunzip(src: IO[bytes], dst: IO[bytes], name: str, chunk: int = 1 << 20) -> bool:
    """Decompress the gzip stream ``src`` (one member or several) into ``dst``; False when it stops before the
    end of its last member (cut short: everything before the cut is written). CaptureError naming ``name`` for a
    stream that is corrupt, or that decompresses to nothing."""
    d = zlib.decompressobj(wbits=31)
    wrote = 0
    try:
        while block := src.read(chunk):
            while block:
                out = d.decompress(block)
                dst.write(out)
                wrote += len(out)
                if not d.eof:
                    break
                block = d.unused_data  # the next member of a multi-member stream, or trailing bytes
                if block[:2] != GZIP_MAGIC:
                    break  # bytes after the last member are ignored, as gzip(1) ignores trailing zeros
                d = zlib.decompressobj(wbits=31)
        tail = d.flush()
        dst.write(tail)
        wrote += len(tail)
    except zlib.error as exc:
        raise CaptureError(name, f"corrupt gzip stream ({exc})") from None
    if not wrote:
        raise CaptureError(name, "empty gzip stream (nothing after decompression)")
    return d.eof


def _gunzipped(src: IO[bytes], name: str) -> tuple[bytes, bool, bool]:
    """_load's answer for a gzip stream: its decompressed bytes, True, and whether it was cut short."""
    out = io.BytesIO()
    whole = gunzip(src, out, name)
    return out.getvalue(), True, not whole


def _load(path: Path) -> tuple[bytes | mmap.mmap, bool, bool]:
    """Return the file's bytes (mmap for plain files, decompressed bytes for gzip), whether it was gzip and
    whether its gzip stream was cut short (gunzip)."""
    if str(path) == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise CaptureError("-", "empty (0 bytes)")
        if data[:2] == GZIP_MAGIC:
            return _gunzipped(io.BytesIO(data), "-")
        return data, False, False
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below or owned by the mmap
    except FileNotFoundError:
        raise CaptureError(str(path), "no such file") from None
    except IsADirectoryError:
        raise CaptureError(str(path), "is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureError(str(path), "permission denied") from None
    except OSError as exc:
        raise CaptureError(str(path), f"cannot open ({exc.strerror})") from None
    with fh:
        head = fh.read(4)
        if len(head) == 0:
            raise CaptureError(str(path), "empty file (0 bytes)")
        if head[:2] == GZIP_MAGIC:
            fh.seek(0)
            return _gunzipped(fh, str(path))
        size = os.fstat(fh.fileno()).st_size
        if size < 4096:
            fh.seek(0)
            return fh.read(), False, False
        # A single read() stops near 2 GiB; mmap has no such limit and pages in lazily.
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), False, False


SAMPLE_RECORDS = 2000
"""Records read from the start of a capture to estimate how many it holds (estimated_records)."""


def estimated_records(path: str | os.PathLike[str]) -> int | None:
    """How many records (packets) a capture file holds, estimated before reading it: its size over the mean size
    of its first SAMPLE_RECORDS records, a gzip file counted at three times its size. None for standard input
    and for a file that cannot be read as a capture (reading it says why). Sampled once per version of a file
    (correlate asks for the memory estimate and for the choice of two processes)."""
    p = os.fspath(path)
    if p == "-" or not os.path.isfile(p):
        return None
    try:
        st = os.stat(p)
    except OSError:
        return None
    return _sampled_records(p, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sampled_records(p: str, size: int, _mtime_ns: int) -> int | None:
    try:
        with open(p, "rb") as f:
            if f.read(2) == GZIP_MAGIC[:2]:
                size *= 3
        _, records = read_capture(p)
        lens = [rec.caplen + 16 for _, rec in zip(range(SAMPLE_RECORDS), records, strict=False)]
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is read
        return None
    return size * len(lens) // sum(lens) if lens else 0


def read_capture(path: str | os.PathLike[str]) -> tuple[CaptureInfo, Iterator[Record]]:
    """Open a capture and return its info and an iterator over its packet records.

    The file's format is sniffed from its magic bytes (never its name). Problems that make the whole
    file unusable raise :class:`CaptureError` at once; a record cut short at the end of the file stops
    the iteration and adds a warning to ``info.warnings``.
    """
    p = Path(path)
    buf, gz, cut = _load(p)
    info = CaptureInfo(path=str(path))
    if cut:
        info.warnings.append(GZIP_CUT)
    magic = bytes(buf[:4])
    if magic in PCAP_MAGIC:
        info.format = "pcap+gzip" if gz else "pcap"
        it = _iter_pcap(buf, info)
    elif magic == PCAPNG_SHB:
        info.format = "pcapng+gzip" if gz else "pcapng"
        it = _iter_pcapng(buf, info)
    else:
        shown = " ".join(f"{b:02x}" for b in magic)
        raise CaptureError(str(path), f"not a pcap or pcapng capture (starts with {shown})")
    first = _prime(it, info)
    return info, first


def read_frames(path: str | os.PathLike[str], frames: Iterable[int]) -> dict[int, Record]:
    """The records of the given frame numbers (1-based, as Wireshark counts), byte for byte, read in one pass that
    stops after the last one. Raises CaptureError for standard input ("-": it cannot be read a second time) and for
    a frame the file does not hold (the file changed since it was correlated)."""
    wanted = set(frames)
    if not wanted:
        return {}
    if str(path) == "-":
        raise CaptureError("-", "cannot be read again to copy its frames: give the capture as a file")
    last = max(wanted)
    found: dict[int, Record] = {}
    _, records = read_capture(path)
    for rec in records:
        if rec.frame_no in wanted:
            found[rec.frame_no] = rec
        if rec.frame_no >= last:
            break
    missing = sorted(wanted - found.keys())
    if missing:
        raise CaptureError(str(path), f"no frame {missing[0]} in it (did the file change since it was read?)")
    return found


def no_packets_problem(info: CaptureInfo) -> str:
    """Why a capture gave no packet: its first warning, its malformed packet blocks, or its being empty."""
    if info.warnings:
        return info.warnings[0]
    if bad := info.skipped.get("malformed_block"):
        return (f"no packet to read: {bad} malformed packet block{'s' if bad > 1 else ''} (an interface number, "
                "length or timestamp out of range)")
    return "empty capture (file header only, no packets)"


def _prime(it: Iterator[Record], info: CaptureInfo) -> Iterator[Record]:
    """Read the file header eagerly (so header errors raise now) and fail on a capture with no packets."""
    try:
        first = next(it)
    except StopIteration:
        raise CaptureError(info.path, no_packets_problem(info)) from None

    def chained() -> Iterator[Record]:
        yield first
        yield from it

    return chained()


def _note(info: CaptureInfo, rec: Record) -> Record:
    info.records += 1
    if info.first_ts_ns is None or rec.ts_ns < info.first_ts_ns:
        info.first_ts_ns = rec.ts_ns
    if info.last_ts_ns is None or rec.ts_ns > info.last_ts_ns:
        info.last_ts_ns = rec.ts_ns
    if rec.caplen < rec.wire_len:
        info.truncated_records += 1
    return rec


def overrun_record(frame: int, frac: int, caplen: int, wire_len: int, snaplen: int, unit: int) -> str:
    """The warning for a pcap record whose stored length runs past the end of the file (``frame``: the frames
    before it). A header no writer makes (a sub-second field of a second or more, a stored length above the
    file's snaplen or above the original length) follows a wrong length earlier in the file: the file is corrupt
    from there, not cut short (a helper's file: a record's length set to 3 read as 'last record truncated', its
    33 later frames dropped without a word of corruption)."""
    why = []
    if frac * unit >= 1_000_000_000:
        why.append(f"sub-second field {frac}")
    if snaplen and caplen > max(snaplen, 0xFFFF):
        why.append(f"stored length {caplen} above the snaplen {snaplen}")
    if wire_len < caplen:
        why.append(f"stored length {caplen} above the original {wire_len}")
    if why:
        return (f"the record header after frame {frame} is not valid ({', '.join(why)}): the file is corrupt from "
                f"there (a wrong record length before it?); {frame} frames used")
    return f"last record truncated at frame {frame + 1}; {frame} frames used"


def _iter_pcap(buf: bytes | mmap.mmap, info: CaptureInfo) -> Iterator[Record]:
    if len(buf) < 24:
        raise CaptureError(info.path, f"truncated pcap file header ({len(buf)} of 24 bytes)")
    endian, unit = PCAP_MAGIC[bytes(buf[:4])]
    _, _vmaj, _vmin, _tz, _sig, snaplen, network = struct.unpack(endian + "IHHiIII", buf[:24])
    # The upper 16 bits of the link-type field may carry FCS information (pcap-savefile(5)).
    linktype = network & 0x0FFFFFFF if network > 0xFFFF else network
    info.link_types = [linktype]
    info.if_names = [""]
    info.ts_precision_ns = unit
    hdr = struct.Struct(endian + "IIII")
    off, end, frame = 24, len(buf), 0
    while off < end:
        if end - off < 16:
            info.warnings.append(f"last record header truncated after frame {frame}; {frame} frames used")
            return
        sec, frac, caplen, wire_len = hdr.unpack_from(buf, off)
        off += 16
        if caplen > 0x4000000:
            info.warnings.append(f"record {frame + 1} claims {caplen} bytes; file corrupt from there")
            return
        if end - off < caplen:
            info.warnings.append(overrun_record(frame, frac, caplen, wire_len, snaplen, unit))
            return
        frame += 1
        yield _note(info, Record(frame, sec * 1_000_000_000 + frac * unit, caplen, max(wire_len, caplen),
                                 linktype, 0, bytes(buf[off:off + caplen])))
        off += caplen


# Smallest valid total length of the blocks natproof reads (pcapng spec, section 4).
_MIN_BLOCK = {1: 20, 2: 32, 3: 16, 6: 32}
_TSRESOL_DEFAULT = 1_000  # pcapng default if_tsresol is 10^-6 s


def _tsresol_ns(opt: int) -> tuple[int, int]:
    """pcapng if_tsresol to (multiplier, divisor) that turn ticks into nanoseconds."""
    if opt & 0x80:
        # Negative power of two: ticks of 2^-n seconds.
        return 1_000_000_000, 1 << (opt & 0x7F)
    exp = opt & 0x7F
    if exp <= 9:
        return 10 ** (9 - exp), 1
    return 1, 10 ** (exp - 9)


def read_idb(buf: bytes | mmap.mmap, off: int, blen: int, endian: str, info: CaptureInfo) -> tuple[int, int, int, int]:
    """An Interface Description Block as (linktype, mul, div, tsoffset_s), noted in ``info``."""
    body = off + 8
    linktype = struct.unpack_from(endian + "H", buf, body)[0]
    mul, div, tsoff = _TSRESOL_DEFAULT, 1, 0
    name = ""
    for code, value in _options(buf, body + 8, off + blen - 4, endian):
        if code == 9 and value:
            mul, div = _tsresol_ns(value[0])
        elif code == 14 and len(value) == 8:
            tsoff = struct.unpack(endian + "q", value)[0]
        elif code == 2:  # if_name, UTF-8 (pcapng spec 4.2); some writers end it with NULs
            name = value.rstrip(b"\0").decode("utf-8", errors="replace")
    info.link_types.append(linktype)
    info.if_names.append(name)
    info.ts_precision_ns = min(info.ts_precision_ns, max(1, mul // div))
    return linktype, mul, div, tsoff


def open_section(buf: bytes | mmap.mmap, off: int, frame: int, info: CaptureInfo) -> str | None:
    """struct's "<" or ">" for the pcapng section header at ``off``.

    An invalid byte-order magic before any packet makes the file unusable (CaptureError); after some, the
    rest is dropped with a warning and None is returned.
    """
    order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(bytes(buf[off + 8:off + 12]))
    if order is None:
        if frame == 0:
            raise CaptureError(info.path, "pcapng section header has an invalid byte-order magic")
        info.warnings.append(f"corrupt section header after frame {frame}; {frame} frames used")
    return order


def bad_block(blen: int, frame: int, off: int, left: int, *, trailer: int | None = None) -> str:
    """The warning for a pcapng block at byte ``off`` (``left`` bytes from there to the end of the file) whose
    length cannot be used where frame ``frame + 1`` would start (reading stops there, as at a pcap record cut
    short). A length below 12 bytes (type and two lengths), not a multiple of 4, or not repeated at the block's end
    (``trailer``: the length found there; draft-ietf-opsawg-pcapng, "General Block Structure") is a corrupt block,
    wherever it is. A length past the end of the file is that: the last block cut short (a file still being
    written) or a damaged length mid-file (a helper's block claiming 0x7ffffff0 bytes read as 'last block
    truncated', the frames after it dropped with no word of damage); the bytes cannot tell which."""
    if trailer is not None or blen < 12 or blen % 4:
        tail = f", {trailer} at its end" if trailer is not None else ""
        return f"corrupt block length ({blen} bytes{tail}) at frame {frame + 1} (offset {off}); {frame} frames used"
    return (f"block length past the end of the file at offset {off} (frame {frame + 1}: {blen} bytes, {left} left): "
            f"the file is damaged or cut short; {frame} frames used")


def block_trailer(buf: bytes | mmap.mmap, off: int, blen: int, endian: str) -> int | None:
    """The length a pcapng block repeats at its end when it differs from ``blen`` (its leading one), else None:
    one of the two is corrupt, and where the next block starts cannot be known."""
    trailer = struct.unpack_from(endian + "I", buf, off + blen - 4)[0]
    return trailer if trailer != blen else None


def _iter_pcapng(buf: bytes | mmap.mmap, info: CaptureInfo) -> Iterator[Record]:
    end = len(buf)
    off, frame = 0, 0
    prev_ts = 0  # a Simple Packet Block has no time of its own: it takes the previous record's
    endian = "<"
    # Interfaces of the current section: (linktype, mul, div, tsoffset_s); ``base`` is the file-wide number of
    # the section's first one (interface ids restart at 0 in each section).
    ifaces: list[tuple[int, int, int, int]] = []
    base = 0
    while off < end:
        if end - off < 12:
            info.warnings.append(f"last block truncated after frame {frame}; {frame} frames used")
            return
        btype_raw = bytes(buf[off:off + 4])
        if btype_raw == PCAPNG_SHB:
            order = open_section(buf, off, frame, info)
            if order is None:
                return
            endian = order
            ifaces = []
            base = len(info.link_types)
        btype, blen = struct.unpack_from(endian + "II", buf, off)
        if blen < 12 or blen % 4 or off + blen > end:
            if frame == 0 and btype_raw == PCAPNG_SHB and off + blen > end:
                raise CaptureError(info.path, "truncated pcapng section header")
            info.warnings.append(bad_block(blen, frame, off, end - off))
            return
        if (trailer := block_trailer(buf, off, blen, endian)) is not None:
            # Its length not repeated at its end: one of the two is corrupt, and what follows cannot be found.
            info.warnings.append(bad_block(blen, frame, off, end - off, trailer=trailer))
            return
        body = off + 8
        if blen < _MIN_BLOCK.get(btype, 12):  # too short for its type, well-formed: skipped and counted
            info.skipped["malformed_block"] += 1
            off += blen
            continue
        if btype == 1:  # Interface Description Block
            ifaces.append(read_idb(buf, off, blen, endian, info))
        elif btype in (6, 2):  # Enhanced Packet Block, obsolete Packet Block
            if btype == 6:
                iface, ts_hi, ts_lo, caplen, wire_len = struct.unpack_from(endian + "IIIII", buf, body)
            else:
                iface, _drops, ts_hi, ts_lo, caplen, wire_len = struct.unpack_from(endian + "HHIIII", buf, body)
            frame += 1
            if iface >= len(ifaces) or caplen > blen - 32:
                info.skipped["malformed_block"] += 1
                off += blen
                continue
            linktype, mul, div, tsoff = ifaces[iface]
            ticks = (ts_hi << 32) | ts_lo
            ts_ns = ticks * mul // div + tsoff * 1_000_000_000
            if not -(2**63) <= ts_ns < 2**63:  # past what an int64 of ns holds (the years 1677-2262): a bad clock
                info.skipped["malformed_block"] += 1
                off += blen
                continue
            start = body + 20
            prev_ts = ts_ns
            yield _note(info, Record(frame, ts_ns, caplen, max(wire_len, caplen), linktype, base + iface,
                                     bytes(buf[start:start + caplen])))
        elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
            frame += 1
            if not ifaces:
                info.skipped["malformed_block"] += 1
            else:
                wire_len = struct.unpack_from(endian + "I", buf, body)[0]
                caplen = min(wire_len, blen - 16)
                ts_ns = prev_ts
                yield _note(info, Record(frame, ts_ns, caplen, wire_len, ifaces[0][0], base,
                                         bytes(buf[body + 4:body + 4 + caplen])))
        off += blen
    if frame == 0 and not ifaces and not info.link_types:
        info.warnings.append("no interface description block")


def _options(buf: bytes | mmap.mmap, off: int, end: int, endian: str) -> Iterator[tuple[int, bytes]]:
    while off + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, off)
        if code == 0:
            return
        value = bytes(buf[off + 4:off + 4 + length])
        yield code, value
        off += 4 + ((length + 3) & ~3)
