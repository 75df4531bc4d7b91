"""Columnar decode of pcap/pcapng over an mmap with numpy; frames it does not handle go to decode.decode."""

from __future__ import annotations

import contextlib
import gzip
import mmap
import os
import queue
import shutil
import socket
import struct
import sys
import tempfile
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import polars as pl
import xxhash

from natproof import recordwalk
from natproof.capture import (
    _MIN_BLOCK,
    GZIP_CUT,
    GZIP_MAGIC,
    PCAP_MAGIC,
    PCAPNG_SHB,
    CaptureInfo,
    bad_block,
    block_trailer,
    gunzip,
    no_packets_problem,
    open_section,
    overrun_record,
    read_idb,
)
from natproof.decode import (
    DEFAULT_OVERLAY,
    ENCAPS,
    HEAD_DIGEST_BYTES,
    ICMP4_ERRORS,
    ICMP6_ERRORS,
    MAX_ENCAP_DEPTH,
    VLAN_TPIDS,
    Overlay,
    Skip,
    decode,
    link_payload,
    sll2_ifindex,
    vxlan_like,
)
from natproof.decode import FIELDS as _FIELDS
from natproof.errors import CaptureError
from natproof.memory import trim

CHUNK_BYTES = 32 * 1024 * 1024
"""File bytes framed and decoded per chunk: bounds the pages of the file resident at once."""
SNAP = 84
"""Frame bytes gathered per record: the longest fast link header (Ethernet with two VLAN tags, 22 bytes)
plus an IPv6 header and a TCP header without options, with room to spare."""
L3_SNAP = 62
_PROTO, _UNDERLAY = _FIELDS.index("proto"), _FIELDS.index("underlay")
_PEEK = 24
"""Bytes read after an outer IP header to recognise an encapsulation: UDP (8) and a VXLAN or Geneve header (8), or
a GRE header with checksum, key and sequence (16)."""
_RAW_LINKS = (101, 12, 14, 228, 229)
_ETH, _SLL, _SLL2 = 1, 113, 276
_MAX_CAPLEN = 0x4000000
_SHB_TYPE = 0x0A0D0D0A  # the same value in either byte order
_SPB_PREVIOUS_TS = -(2**63)
"""Placeholder timestamp of a Simple Packet Block: it takes the previous record's."""


class Unsupported(Exception):
    """The file uses something the fast path does not frame; decode it with the reference path instead."""


@dataclass
class _Chunk:
    """Records framed from one stretch of the file, as arrays in file order."""

    frame_no: np.ndarray
    data_off: np.ndarray
    """Offset of each record's frame bytes in the file buffer."""
    caplen: np.ndarray
    wire_len: np.ndarray
    """Original length, at least caplen (as Record.wire_len)."""
    orig_wire: np.ndarray
    """Original length as stored (truncated_records compares caplen with it)."""
    ts_ns: np.ndarray
    linktype: np.ndarray
    iface: np.ndarray
    """The file's interface of each record (capture.Record.iface)."""
    resume_off: int
    """File offset where the next chunk starts; bytes before it are no longer needed."""


# ---------------------------------------------------------------------------------------------------------------
# Opening: an mmap of the file, or of a temporary file holding the decompressed stream.


@contextlib.contextmanager
def open_buffer(path: str | os.PathLike[str]) -> Iterator[tuple[mmap.mmap, bool, bool]]:
    """Map a capture file read-only, with whether it was gzip and whether its gzip stream was cut short
    (capture.gunzip: what decompressed is used); gzip input and standard input are spooled to a temporary file
    first.

    Raises the same CaptureError messages as capture.read_capture for files that cannot be opened.
    """
    name = str(path)
    with contextlib.ExitStack() as stack:
        if name == "-":
            src: IO[bytes] = sys.stdin.buffer
        else:
            try:
                src = stack.enter_context(open(path, "rb"))  # noqa: SIM115
            except FileNotFoundError:
                raise CaptureError(name, "no such file") from None
            except IsADirectoryError:
                raise CaptureError(name, "is a directory, not a capture file") from None
            except PermissionError:
                raise CaptureError(name, "permission denied") from None
            except OSError as exc:
                raise CaptureError(name, f"cannot open ({exc.strerror})") from None
        head = src.read(2) if name == "-" else src.read(4)
        if not head:
            raise CaptureError(name, "empty (0 bytes)" if name == "-" else "empty file (0 bytes)")
        gz = head[:2] == GZIP_MAGIC
        cut = False
        if name != "-" and not gz:
            fh = src
        else:
            fh = stack.enter_context(tempfile.TemporaryFile(prefix="natproof-"))
            if gz:
                if name == "-":
                    reader: IO[bytes] = _Prefixed(head, src)
                else:
                    src.seek(0)
                    reader = src
                cut = not gunzip(reader, fh, name, 8 * 1024 * 1024)
            else:
                fh.write(head)
                shutil.copyfileobj(src, fh, 8 * 1024 * 1024)
            fh.flush()
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield buf, gz, cut
        finally:
            with contextlib.suppress(BufferError):
                buf.close()


class _Prefixed:
    """A read-only stream that returns ``head`` before the rest of ``rest`` (for sniffed standard input)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            more = self._rest.read(-1 if n < 0 else max(0, n - len(out)))
            return out + more
        return self._rest.read(n)


# ---------------------------------------------------------------------------------------------------------------
# Framing: record offsets by a tight Python loop, every other header field by numpy gathers.


def _gather(buf: mmap.mmap, offsets: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` bytes at each offset as an (n, width) uint8 matrix; bytes past the end of buf read as 0."""
    n = len(offsets)
    size = len(buf)
    if size >= width:
        view = np.ndarray((size - width + 1,), dtype=f"V{width}", buffer=buf, strides=(1,))
        last = size - width
        out = view[np.minimum(offsets, last)].view(np.uint8).reshape(n, width)
        late = np.nonzero(offsets > last)[0]
    else:
        out = np.zeros((n, width), dtype=np.uint8)
        late = np.arange(n)
    if len(late):
        out = np.array(out)  # writable copy
        for i in late.tolist():
            o = int(offsets[i])
            piece = bytes(buf[o:o + width])
            out[i] = 0
            out[i, :len(piece)] = np.frombuffer(piece, dtype=np.uint8)
    return out


def _u(m: np.ndarray, col: int, width: int, endian: str = ">", dtype: type = np.int64) -> np.ndarray:
    """Unsigned integers of ``width`` bytes at column ``col`` of a byte matrix, as int64 (or ``dtype``: a column's
    own, read in one pass instead of widened and narrowed again)."""
    return m[:, col:col + width].view(f"{endian}u{width}")[:, 0].astype(dtype)


def _frame_pcap(buf: mmap.mmap, info: CaptureInfo, chunk_bytes: int) -> Iterator[_Chunk]:
    end = len(buf)
    if end < 24:
        raise CaptureError(info.path, f"truncated pcap file header ({end} of 24 bytes)")
    endian, unit = PCAP_MAGIC[bytes(buf[:4])]
    snaplen, network = struct.unpack_from(endian + "II", buf, 16)
    linktype = network & 0x0FFFFFFF if network > 0xFFFF else network
    info.link_types = [linktype]
    info.if_names = [""]
    info.ts_precision_ns = unit
    off, frame = 24, 0
    while True:
        o, off = recordwalk.pcap_run(buf, off, min(off + chunk_bytes, end - 16), endian, unit == 1)
        hdr = _gather(buf, o, 16)
        sec, frac, cap, wire = (_u(hdr, c, 4, endian) for c in (0, 4, 8, 12))
        bad = (cap > _MAX_CAPLEN) | (o + 16 + cap > end)
        done = False
        if bad.any():
            i = int(np.argmax(bad))
            if cap[i] > _MAX_CAPLEN:
                info.warnings.append(f"record {frame + i + 1} claims {int(cap[i])} bytes; file corrupt from there")
            else:
                info.warnings.append(overrun_record(frame + i, int(frac[i]), int(cap[i]), int(wire[i]), snaplen,
                                                    unit))
            o, sec, frac, cap, wire = o[:i], sec[:i], frac[:i], cap[:i], wire[:i]
            done = True
        elif off > end - 16:
            if off < end:
                n = frame + len(o)
                info.warnings.append(f"last record header truncated after frame {n}; {n} frames used")
            done = True
        n = len(o)
        yield _Chunk(
            frame_no=np.arange(frame + 1, frame + n + 1, dtype=np.int64), data_off=o + 16, caplen=cap,
            wire_len=np.maximum(wire, cap), orig_wire=wire, ts_ns=sec * 1_000_000_000 + frac * unit,
            linktype=np.full(n, linktype, dtype=np.int64), iface=np.zeros(n, dtype=np.int64), resume_off=off,
        )
        frame += n
        if done:
            return


@dataclass
class _Section:
    """Interfaces and byte order in force from a given position of a pcapng chunk's record list on."""

    start: int
    endian: str
    ifaces: tuple[tuple[int, int, int, int], ...]
    base: int = 0
    """File-wide number of the section's first interface (see capture.Record.iface)."""


def _frame_pcapng(buf: mmap.mmap, info: CaptureInfo, chunk_bytes: int) -> Iterator[_Chunk]:
    """Mirror capture._iter_pcapng block by block; Enhanced Packet Blocks take a short path and are
    decoded in bulk afterwards."""
    end = len(buf)
    off, frame = 0, 0
    endian = "<"
    ifaces: list[tuple[int, int, int, int]] = []
    base = 0
    pair = {"<": struct.Struct("<II").unpack_from, ">": struct.Struct(">II").unpack_from}
    last_ts: int | None = None
    finished = False
    while not finished:
        stop = min(off + chunk_bytes, end)
        # Per frame: block offset (EPB) or -1 - index into specials (PB, SPB, and unusable frames).
        offs: list[int] = []
        ap = offs.append
        specials: list[tuple[int, int, int, int, int, int] | None] = []
        sections = [_Section(0, endian, tuple(ifaces), base)]
        unpack = pair[endian]
        while off < stop:
            run, off = recordwalk.pcapng_epb_run(buf, off, stop, endian)  # packets up to the next other block
            if len(run):
                offs.extend(run.tolist())
                frame += len(run)
                if off >= stop:
                    continue
            if end - off < 12:
                info.warnings.append(f"last block truncated after frame {frame}; {frame} frames used")
                finished = True
                break
            btype, blen = unpack(buf, off)  # not a well-formed EPB: the run above took those
            if btype == _SHB_TYPE:
                order = open_section(buf, off, frame, info)
                if order is None:
                    finished = True
                    break
                endian = order
                ifaces = []
                base = len(info.link_types)
                unpack = pair[endian]
                sections.append(_Section(len(offs), endian, (), base))
                btype, blen = unpack(buf, off)
            if blen < 12 or blen % 4 or off + blen > end:
                if frame == 0 and btype == _SHB_TYPE and off + blen > end:
                    raise CaptureError(info.path, "truncated pcapng section header")
                info.warnings.append(bad_block(blen, frame, off, end - off))
                finished = True
                break
            if (trailer := block_trailer(buf, off, blen, endian)) is not None:  # as natproof.capture reads it
                info.warnings.append(bad_block(blen, frame, off, end - off, trailer=trailer))
                finished = True
                break
            body = off + 8
            if blen < _MIN_BLOCK.get(btype, 12):  # as natproof.capture reads a block too short for its type
                info.skipped["malformed_block"] += 1
                off += blen
                continue
            if btype == 1:
                ifaces.append(read_idb(buf, off, blen, endian, info))
                sections.append(_Section(len(offs), endian, tuple(ifaces), base))
            elif btype == 6:
                ap(off)
                frame += 1
            elif btype == 2:
                iface, _drops, ts_hi, ts_lo, caplen, wire = struct.unpack_from(endian + "HHIIII", buf, body)
                frame += 1
                ap(-1 - len(specials))
                if iface >= len(ifaces) or caplen > blen - 32:
                    specials.append(None)
                else:
                    lt, mul, div, tsoff = ifaces[iface]
                    ts = ((ts_hi << 32) | ts_lo) * mul // div + tsoff * 1_000_000_000
                    specials.append((body + 20, caplen, wire, ts, lt, base + iface))
            elif btype == 3:
                frame += 1
                ap(-1 - len(specials))
                if not ifaces:
                    specials.append(None)
                else:
                    wire = struct.unpack_from(endian + "I", buf, body)[0]
                    caplen = min(wire, blen - 16)
                    specials.append((body + 4, caplen, wire, _SPB_PREVIOUS_TS, ifaces[0][0], base))
            off += blen
        else:
            finished = off >= end
        if finished and frame == 0 and not ifaces and not info.link_types:
            info.warnings.append("no interface description block")
        chunk, last_ts = _pcapng_chunk(buf, info, offs, specials, sections, frame - len(offs), off, last_ts)
        yield chunk


def _pcapng_chunk(buf: mmap.mmap, info: CaptureInfo, offs: list[int], specials: list, sections: list[_Section],
                  first_frame: int, resume: int, last_ts: int | None) -> tuple[_Chunk, int | None]:
    n = len(offs)
    o = np.array(offs, dtype=np.int64)
    data_off = np.zeros(n, dtype=np.int64)
    cap = np.zeros(n, dtype=np.int64)
    wire = np.zeros(n, dtype=np.int64)
    ts = np.zeros(n, dtype=np.int64)
    lt = np.zeros(n, dtype=np.int64)
    ifc = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    bounds = [s.start for s in sections[1:]] + [n]
    for sec, stop in zip(sections, bounds, strict=True):
        if stop <= sec.start:
            continue
        part = np.arange(sec.start, stop)
        part = part[o[part] >= 0]
        if not len(part):
            continue
        hdr = _gather(buf, o[part], 28)
        blen, iface, ts_hi, ts_lo, caplen, wlen = (_u(hdr, c, 4, sec.endian) for c in (4, 8, 12, 16, 20, 24))
        good = (iface < len(sec.ifaces)) & (caplen <= blen - 32)
        ok[part] = good
        data_off[part] = o[part] + 28
        cap[part] = caplen
        wire[part] = wlen
        if not sec.ifaces:
            continue
        table = np.array(sec.ifaces, dtype=object)
        idx = np.where(good, iface, -1)
        lt[part] = np.where(good, table[np.maximum(idx, 0), 0].astype(np.int64), 0)
        ifc[part] = np.where(good, iface + sec.base, 0)
        ts[part] = _ticks_to_ns(ts_hi, ts_lo, idx, sec.ifaces)
    spb: list[int] = []
    for i in np.nonzero(o < 0)[0].tolist():
        rec = specials[-1 - offs[i]]
        if rec is None:
            continue
        ok[i] = True
        data_off[i], cap[i], wire[i], t, lt[i], ifc[i] = rec
        if t == _SPB_PREVIOUS_TS:
            spb.append(i)
        else:
            ts[i] = t
    bad = int(n - ok.sum())
    if bad:
        info.skipped["malformed_block"] += bad
    frame_no = np.arange(first_frame + 1, first_frame + n + 1, dtype=np.int64)
    if spb:
        prev = last_ts
        pos = np.cumsum(ok) - 1  # index among kept records
        kept_ts = ts[ok]
        for i in spb:
            j = int(pos[i])
            p = int(kept_ts[j - 1]) if j > 0 else prev
            ts[i] = p or 0
            kept_ts[j] = ts[i]
    sel = np.nonzero(ok)[0]
    if len(sel):
        last_ts = int(ts[sel[-1]])
    return _Chunk(frame_no=frame_no[sel], data_off=data_off[sel], caplen=cap[sel],
                  wire_len=np.maximum(wire[sel], cap[sel]), orig_wire=wire[sel], ts_ns=ts[sel], linktype=lt[sel],
                  iface=ifc[sel], resume_off=resume), last_ts


def _ticks_to_ns(hi: np.ndarray, lo: np.ndarray, iface: np.ndarray,
                 ifaces: tuple[tuple[int, int, int, int], ...]) -> np.ndarray:
    """ticks * mul // div + tsoffset * 1e9 per interface, exactly as Python integers would give it."""
    ticks = (hi.astype(np.uint64) << np.uint64(32)) | lo.astype(np.uint64)
    out = np.zeros(len(ticks), dtype=np.int64)
    for k, (_lt, mul, div, tsoff) in enumerate(ifaces):
        sel = iface == k
        if not sel.any():
            continue
        t = ticks[sel]
        top = int(t.max()) * mul // div + tsoff * 1_000_000_000
        bottom = int(t.min()) * mul // div + tsoff * 1_000_000_000
        if int(t.max()) * mul < 2**63 and -(2**63) <= bottom and top < 2**63:
            out[sel] = (t.astype(np.int64) * mul) // div + tsoff * 1_000_000_000
        else:
            vals = [v * mul // div + tsoff * 1_000_000_000 for v in t.tolist()]
            if min(vals) < -(2**63) or max(vals) >= 2**63:
                raise Unsupported("timestamp beyond int64")
            out[sel] = np.array(vals, dtype=np.int64)
    return out


# ---------------------------------------------------------------------------------------------------------------
# XXH3-64 (seed 0, default secret) of exactly 32 bytes, vectorised: the head digest of every payload longer
# than HEAD_DIGEST_BYTES. xxHash's XXH3_len_17to128_64b for len == 32; checked against xxhash in the tests.

_M32 = np.uint64(0xFFFFFFFF)
_PRIME64_1 = np.uint64(0x9E3779B185EBCA87)
_PRIME_MX1 = np.uint64(0x165667919E3779F9)
_SECRET32 = np.frombuffer(bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"), dtype="<u8").astype(np.uint64)


def _mul128_fold64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a_lo, a_hi, b_lo, b_hi = a & _M32, a >> np.uint64(32), b & _M32, b >> np.uint64(32)
    ll, lh, hl, hh = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    cross = (ll >> np.uint64(32)) + (lh & _M32) + hl
    upper = hh + (lh >> np.uint64(32)) + (cross >> np.uint64(32))
    lower = (cross << np.uint64(32)) | (ll & _M32)
    return lower ^ upper


def xxh3_64_of_32(rows: np.ndarray) -> np.ndarray:
    """xxhash.xxh3_64_intdigest of each row of an (n, 32) uint8 matrix."""
    w = np.ascontiguousarray(rows).view("<u8").astype(np.uint64)
    with np.errstate(over="ignore"):
        acc = np.full(len(w), np.uint64(32) * _PRIME64_1, dtype=np.uint64)
        acc += _mul128_fold64(w[:, 0] ^ _SECRET32[0], w[:, 1] ^ _SECRET32[1])
        acc += _mul128_fold64(w[:, 2] ^ _SECRET32[2], w[:, 3] ^ _SECRET32[3])
        acc ^= acc >> np.uint64(37)
        acc *= _PRIME_MX1
        acc ^= acc >> np.uint64(32)
    return acc


# ---------------------------------------------------------------------------------------------------------------
# Decoding a chunk of records.


class _Addresses:
    """Address text for IPv4 (uint32) and IPv6 (16 bytes) values, exactly as socket.inet_ntop writes it."""

    def __init__(self) -> None:
        self.v4: dict[int, str] = {}
        self.v6: dict[bytes, str] = {}

    def series(self, v4: np.ndarray, v6: np.ndarray, is_v4: np.ndarray) -> pl.Series:
        """One string per row: ``v4`` (uint32) where is_v4, else the next row of ``v6`` ((number of rows not
        is_v4, 16) uint8: only those rows, in order; the caller copies no IPv6 field of an IPv4 packet)."""
        key = pl.Series("a", _masked(v4, is_v4, np.uint32))
        uniq = key.drop_nulls().unique()
        cache = self.v4
        texts = []
        for u in uniq.to_list():
            t = cache.get(u)
            if t is None:
                t = cache[u] = socket.inet_ntop(socket.AF_INET, u.to_bytes(4, "big"))
            texts.append(t)
        table = pl.DataFrame({"a": uniq, "s": pl.Series(texts, dtype=pl.Categorical)})
        out = key.to_frame().join(table, on="a", how="left", maintain_order="left").to_series(1)
        if is_v4.all():
            return out
        rows6 = np.nonzero(~is_v4)[0]
        raw = np.ascontiguousarray(v6).view("V16").ravel()
        uniq6, inv6 = np.unique(raw, return_inverse=True)
        cache6 = self.v6
        texts6 = []
        for u in uniq6.tolist():
            t = cache6.get(u)
            if t is None:
                t = cache6[u] = socket.inet_ntop(socket.AF_INET6, u)
            texts6.append(t)
        return out.scatter(rows6, pl.Series(texts6, dtype=pl.Categorical).gather(inv6.ravel()))


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_counts=True), without its sort where every value is one (a chunk's link type,
    link header length and interface usually are: 5 ms a call on 300k records, 16 chunks to 5M packets)."""
    if len(values) and values.min() == values.max():
        return values[:1], np.array([len(values)])
    return np.unique(values, return_counts=True)


def _where(iface: np.ndarray, ifindex: np.ndarray) -> np.ndarray:
    """(iface, ifindex) of each record as one int64: iface in the high 32 bits, ifindex's 32 bits below."""
    return (iface.astype(np.int64) << 32) | (ifindex.astype(np.int64) & 0xFFFFFFFF)


def _count_where(counter: Counter, where: np.ndarray, reason: str | None) -> None:
    """Add each distinct _where value's count to ``counter`` as (iface, ifindex) or (iface, ifindex, reason)."""
    values, counts = _distinct(where)
    for v, n in zip(values.tolist(), counts.tolist(), strict=True):
        ifindex = v & 0xFFFFFFFF
        key = (v >> 32, ifindex - (1 << 32) if ifindex >= 1 << 31 else ifindex)
        counter[key if reason is None else (*key, reason)] += n


def _masked(values: np.ndarray, valid: np.ndarray | None, dtype: type) -> np.ndarray:
    arr = values.astype(dtype, copy=False)
    if valid is None or valid.all():
        return arr
    return np.ma.masked_array(arr, mask=~valid)


@dataclass
class _IPLayer:
    """The IP and transport headers of rows of a normalised header matrix (one row per frame, from the IP header
    on): which rows the fast path decodes, and the fields it reads."""

    is4: np.ndarray
    frag: np.ndarray
    """IPv4 fragments after the first (no transport header: skipped)."""
    ipok: np.ndarray
    ip_len: np.ndarray
    seg: np.ndarray
    """Transport bytes captured, within the IP length."""
    hl: np.ndarray
    proto: np.ndarray
    l4: np.ndarray
    doff: np.ndarray
    typ: np.ndarray
    tcp: np.ndarray
    udp: np.ndarray
    req: np.ndarray
    echo: np.ndarray


def _ip_layer(hdr: np.ndarray, avail: np.ndarray, is4: np.ndarray) -> _IPLayer:
    """Parse the IP header (IPv4 without options, IPv6 without extension headers: the rest goes to the reference
    decoder) and the first transport bytes of each row; ``avail`` is each row's bytes captured from the header on."""
    tot, plen6 = _u(hdr, 2, 2), _u(hdr, 4, 2)
    ok4 = is4 & (avail >= 20) & (hdr[:, 0] == 0x45)
    frag = ok4 & ((_u(hdr, 6, 2) & 0x1FFF) != 0)
    ok4 &= ~frag
    ok6 = ~is4 & (avail >= 40)
    ip_len = np.where(is4, np.where(tot > 0, tot, avail), np.where(plen6 > 0, plen6, avail - 40) + 40)
    seg = np.where(is4, np.where(tot > 0, np.minimum(tot, avail), avail) - 20,
                   np.where(plen6 > 0, np.minimum(plen6, avail - 40), avail - 40))
    hl = np.where(is4, 20, 40)
    proto = np.where(is4, hdr[:, 9], hdr[:, 6]).astype(np.int64)
    # A view of the rows' bytes where all rows are of one version (no per-byte choice: 0.18 s of 5M packets);
    # else the IPv4 offset's bytes copied and the IPv6 rows' put over them (a node's chunks hold a few IPv6
    # neighbour discoveries among IPv4 traffic: np.where's choice per byte took 13 ms a chunk of 300k, this 3).
    if is4.all():
        l4 = hdr[:, 20:42]
    elif not is4.any():
        l4 = hdr[:, 40:62]
    else:
        l4 = hdr[:, 20:42].copy()
        six = np.nonzero(~is4)[0]
        l4[six] = hdr[six, 40:62]
    doff = (l4[:, 12] >> 4).astype(np.int64)
    typ = l4[:, 0].astype(np.int64)
    ipok = ok4 | ok6
    tcp = ipok & (proto == 6) & (seg >= 20) & (doff >= 5)
    udp = ipok & (proto == 17) & (seg >= 8)
    icmp = ipok & (seg >= 8) & (((proto == 1) & is4) | ((proto == 58) & ~is4))
    req = np.where(proto == 1, 8, 128)
    echo = icmp & ((typ == req) | (typ == np.where(proto == 1, 0, 129)))
    return _IPLayer(is4, frag, ipok, ip_len, seg, hl, proto, l4, doff, typ, tcp, udp, req, echo)


_DECODED_PROTOS = frozenset({1, 4, 6, 17, 41, 47, 58})
"""IP protocols the reference decoder reads (transports, ICMP, the encapsulations it peels): any other is its
Skip("other_proto")."""
_IP6_EXTENSIONS = frozenset({0, 43, 44, 50, 51, 60})
"""IPv6 next headers dpkt walks as extension headers (dpkt.ip6.EXT_HDRS)."""
_MLD_HOP_BY_HOP = (0, 5, 2, 0, 0, 1, 0)
"""The hop-by-hop header every MLD message carries after its next-header byte (RFC 3810 5: a Router Alert
option, RFC 2711, then a PadN of no data), eight bytes: the one extension header read here."""


def _known_skips(hdr: np.ndarray, avail: np.ndarray, is4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of a few rows the reference decoder would only count as skipped, without running it (importing dpkt
    and decoding in Python took ~70 ms a process on a node's captures, for its ICMPv6 neighbour discovery, MLD
    reports and IGMP): (other_proto, icmp_other) boolean masks. ``hdr`` rows hold the bytes from the IP header on
    (L3_SNAP of them), ``avail`` each row's bytes captured from there. Read here: IPv4 with or without options
    and not a later fragment, IPv6 with no extension header or the MLD hop-by-hop header; a protocol outside
    _DECODED_PROTOS is other_proto; an ICMP (IPv4) or ICMPv6 (IPv6) message of at least its 4-byte header whose
    type is neither echo nor an error is icmp_other. Every other row stays with the reference decoder, which
    decides as decode.decode does (malformed, truncated_l4, fragments, quoted packets)."""
    n = len(hdr)
    other = np.zeros(n, dtype=bool)
    icmp = np.zeros(n, dtype=bool)
    for j in range(n):
        h = hdr[j].tolist()
        have = int(avail[j])
        if is4[j]:
            ihl = (h[0] & 0x0F) * 4
            if have < 20 or h[0] >> 4 != 4 or ihl < 20 or (h[6] << 8 | h[7]) & 0x1FFF:
                continue
            proto, at, total = h[9], ihl, h[2] << 8 | h[3]
            body = (min(total, have) if total else have) - ihl  # dpkt's slice [ihl:len]
            types = (0, 8, *ICMP4_ERRORS) if proto == 1 else None
        else:
            if have < 40 or h[0] >> 4 != 6:
                continue
            plen = h[4] << 8 | h[5]
            body = min(plen, have - 40) if plen else have - 40
            proto, at = h[6], 40
            if proto == 0 and tuple(h[41:48]) == _MLD_HOP_BY_HOP and body >= 8:
                proto, at, body = h[40], 48, body - 8
            if proto in _IP6_EXTENSIONS:  # (another one after MLD's: destination options, a fragment header...)
                continue
            types = (128, 129, *ICMP6_ERRORS) if proto == 58 else None
        if proto not in _DECODED_PROTOS:
            other[j] = True
        elif types is not None and body >= 4 and at < len(h) and h[at] not in types:
            icmp[j] = True
    return other, icmp


class _ChunkDecoder:
    """Decode chunks of one capture; keeps the address caches and counts frames sent to the reference."""

    def __init__(self, buf: mmap.mmap, info: CaptureInfo, schema: dict[str, pl.DataType],
                 overlay: Overlay = DEFAULT_OVERLAY) -> None:
        self.buf = buf
        self.overlay = overlay
        self.mv = memoryview(buf)
        self.info = info
        self.schema = schema
        self.addresses = _Addresses()
        self._slow_kept: list[int] = []
        """Frame numbers of the rows the last _slow_frame decoded."""

    def close(self) -> None:
        self.mv.release()

    def decode(self, ch: _Chunk) -> pl.DataFrame | None:
        n = len(ch.frame_no)
        if n == 0:
            return None
        cap, lt = ch.caplen, ch.linktype
        snap = _gather(self.buf, ch.data_off, SNAP)
        l3 = np.full(n, -1, dtype=np.int64)
        ver = np.zeros(n, dtype=np.int64)
        ifindex = np.full(n, -1, dtype=np.int64)
        skip_nonip = np.zeros(n, dtype=bool)
        for t in _distinct(lt)[0].tolist():
            sel = lt == t
            if t in _RAW_LINKS:
                nib = snap[:, 0] >> 4
                ok = sel & (cap >= 1)
                isip = (nib == 4) | (nib == 6)
                l3[ok & isip] = 0
                ver[ok & isip] = nib[ok & isip]
                skip_nonip |= ok & ~isip
                continue
            if t == _ETH:
                e1, e2, e3 = _u(snap, 12, 2), _u(snap, 16, 2), _u(snap, 20, 2)
                v1, v2, v3 = np.isin(e1, VLAN_TPIDS), np.isin(e2, VLAN_TPIDS), np.isin(e3, VLAN_TPIDS)
                etype = np.where(~v1, e1, np.where(~v2, e2, e3))
                start = np.where(~v1, 14, np.where(~v2, 18, 22))
                ok = sel & (cap >= start) & ~(v1 & v2 & v3)
            elif t == _SLL2:
                etype, start = _u(snap, 0, 2), 20
                ok = sel & (cap >= 20)
                raw = np.ascontiguousarray(snap[:, 4:8]).view(">i4").ravel()
                ifindex[ok] = raw[ok]
            elif t == _SLL:
                etype, start = _u(snap, 14, 2), 16
                ok = sel & (cap >= 16)
            else:
                continue
            v = np.where(etype == 0x0800, 4, np.where(etype == 0x86DD, 6, 0))
            isip = ok & (v > 0)
            l3 = np.where(isip, start, l3)
            ver = np.where(isip, v, ver)
            skip_nonip |= ok & (v == 0)

        # IP layer on the rows that have one: a normalised copy of the bytes from the IP header on.
        rows = np.nonzero(l3 >= 0)[0]
        m = len(rows)
        starts = l3[rows]
        firsts = _distinct(starts)[0].tolist()
        if len(firsts) == 1:  # one link header length (the usual case): one copy, not a gather and a scatter
            # The rows gathered whole, as one SNAP-byte value each (a copy per row, not per byte: 15 -> 4 ms a
            # chunk of 300k records), then the IP header's bytes on as a view.
            whole = np.ascontiguousarray(snap).view(f"V{SNAP}").ravel()[rows]
            hdr = whole.view(np.uint8).reshape(m, SNAP)[:, firsts[0]:firsts[0] + L3_SNAP]
        else:
            hdr = np.empty((m, L3_SNAP), dtype=np.uint8)
            for s in firsts:
                sel = np.nonzero(starts == s)[0]
                hdr[sel] = snap[rows[sel], s:s + L3_SNAP]
        v = ver[rows]
        ip = _ip_layer(hdr, cap[rows] - starts, v == 4)
        underlay = None
        refer = np.zeros(m, dtype=bool)  # overlay packets whose inner packet is the reference decoder's to judge
        for _ in range(MAX_ENCAP_DEPTH):
            peeled = self._peel(ch, rows, starts, hdr, ip, underlay, refer)
            if peeled is None:
                break
            at, inner_start, inner_v, labels = peeled
            underlay = labels
            starts[at] = inner_start
            v[at] = inner_v
            hdr[at] = _gather(self.buf, ch.data_off[rows[at]] + inner_start, L3_SNAP)
            refer[at] |= (hdr[at, 0] >> 4) != inner_v
            ip = _ip_layer(hdr, cap[rows] - starts, v == 4)
        is4, frag, proto, l4, doff, typ = ip.is4, ip.frag & ~refer, ip.proto, ip.l4, ip.doff, ip.typ
        tcp, echo, req, seg, ip_len, hl = ip.tcp, ip.echo, ip.req, ip.seg, ip.ip_len, ip.hl
        # An IP length past the frame's length on the wire (captured bytes and those a snaplen cut) is malformed:
        # the reference decoder's to count (natproof.decode.decode).
        # So is an IPv4 total length shorter than its own header.
        ihl = (hdr[:, 0] & 0x0F).astype(np.int64) * 4
        overlong = (ip_len > ch.wire_len[rows] - starts) | (is4 & (ip_len < ihl))
        fast = (tcp | ip.udp | echo) & ~refer & ~overlong
        self._count_vxlan_like(ch, rows, starts, ip, fast if underlay is None else fast & underlay.is_null().to_numpy())

        fast_rows = rows[fast]
        skip_frag = np.zeros(n, dtype=bool)
        skip_frag[rows[frag]] = True
        # Rows the reference decoder would only count (neighbour discovery, MLD, IGMP): counted here instead.
        skip_other = np.zeros(n, dtype=bool)
        skip_icmp = np.zeros(n, dtype=bool)
        plain = ~fast & ~frag & ~refer & ~overlong
        if underlay is not None:
            plain &= underlay.is_null().to_numpy()
        if (at := np.nonzero(plain)[0]).size:
            other, icmp = _known_skips(hdr[at], cap[rows[at]] - starts[at], v[at] == 4)
            skip_other[rows[at[other]]] = True
            skip_icmp[rows[at[icmp]]] = True
        slow = np.ones(n, dtype=bool)
        slow[fast_rows] = False
        slow &= ~skip_nonip & ~skip_frag & ~skip_other & ~skip_icmp
        info = self.info
        where = _where(ch.iface, ifindex)
        _count_where(info.interface_frames, where, None)
        for reason, skip in (("non_ip", skip_nonip), ("ip_fragment", skip_frag), ("other_proto", skip_other),
                             ("icmp_other", skip_icmp)):
            if skip.any():
                info.skipped[reason] += int(skip.sum())
                _count_where(info.interface_skipped, where[skip], reason)

        frames: list[pl.DataFrame] = []
        if len(fast_rows):
            frames.append(self._fast_frame(ch, fast_rows, hdr[fast], l4[fast], is4[fast], proto[fast], typ[fast],
                                           req[fast], tcp[fast], echo[fast], doff[fast], seg[fast], ip_len[fast],
                                           hl[fast], starts[fast], ch.iface[fast_rows], ifindex[fast_rows],
                                           None if underlay is None else underlay.filter(pl.Series(fast))))
        slow_rows = np.nonzero(slow)[0]
        if len(slow_rows):
            info.fallback_frames += len(slow_rows)
            slow_df = self._slow_frame(ch, slow_rows)
            if slow_df is not None:
                frames.append(slow_df)
        if not frames:
            return None
        if len(frames) == 1:
            return frames[0]
        # Back into file order by the records' frame numbers (the kept columns need not include frame_no).
        order = pl.concat([pl.Series(ch.frame_no[fast_rows]), pl.Series(self._slow_kept)])
        return pl.concat(frames).with_columns(order.alias("_order")).sort("_order").drop("_order")

    def _fast_frame(self, ch: _Chunk, r: np.ndarray, hdr: np.ndarray, l4: np.ndarray, is4: np.ndarray,
                    proto: np.ndarray, typ: np.ndarray, req: np.ndarray, tcp: np.ndarray, echo: np.ndarray,
                    doff: np.ndarray, seg: np.ndarray, ip_len: np.ndarray, hl: np.ndarray, l3: np.ndarray,
                    iface: np.ndarray, ifindex: np.ndarray, underlay: pl.Series | None) -> pl.DataFrame:
        # The columns' own widths from the start (uint16 ports, uint32 sequence numbers): no int64 copies.
        p1, p2 = _u(l4, 0, 2, dtype=np.uint16), _u(l4, 2, 2, dtype=np.uint16)
        icmp_id, icmp_seq = _u(l4, 4, 2, dtype=np.uint16), _u(l4, 6, 2, dtype=np.uint16)
        is_req = typ == req
        sport = np.where(echo, np.where(is_req, icmp_id, 0), p1)
        dport = np.where(echo, np.where(is_req, 0, icmp_id), p2)
        l4_len = ip_len - hl
        skip = np.where(tcp, doff * 4, 8)
        pcl = np.maximum(seg - skip, 0)
        payload_len = np.maximum(l4_len - skip, 0)
        # An IPv4 datagram's first fragment (more fragments, offset 0: later ones are skipped): its UDP length is the
        # whole datagram's, as the reference decoder counts it (natproof.decode.decode). IPv6 fragments carry a
        # fragment header, which the reference decodes.
        ulen = _u(l4, 4, 2)
        first_frag = is4 & ~tcp & ~echo & ((hdr[:, 6] & 0x20) != 0) & (ulen >= 8)
        if first_frag.any():
            payload_len = np.where(first_frag, ulen - 8, payload_len)
        pstart = ch.data_off[r] + l3 + hl + skip
        has = pcl > 0
        head_full = np.zeros(len(r), dtype=np.uint64)
        head_full[has] = self._head_digests(pstart[has], pcl[has])
        src4, dst4 = _u(hdr, 12, 4), _u(hdr, 16, 4)
        addrs = self.addresses
        # Sources and destinations in one lookup: its cost is mostly per call, not per address. The IPv6 fields
        # of IPv6 packets only (copying them for every row took 0.14 s of 5M IPv4 packets).
        six = ~is4
        both = addrs.series(np.concatenate([src4, dst4]), np.concatenate([hdr[six, 8:24], hdr[six, 24:40]]),
                            np.concatenate([is4, is4]))
        src, dst = both.head(len(r)), both.tail(len(r))
        icmp_or_none = echo
        data = {
            "frame_no": ch.frame_no[r].astype(np.uint32),
            "ts_ns": ch.ts_ns[r],
            "wire_len": ch.wire_len[r].astype(np.uint32),
            "caplen": ch.caplen[r].astype(np.uint32),
            "iface": iface.astype(np.uint32),
            "ifindex": ifindex.astype(np.int32),
            "ip_version": np.where(is4, 4, 6).astype(np.uint8),
            "src": src,
            "dst": dst,
            "proto": proto.astype(np.uint8),
            "sport": sport,
            "dport": dport,
            "ip_id": _masked(_u(hdr, 4, 2, dtype=np.uint32), is4, np.uint32),
            "ttl": np.where(is4, hdr[:, 8], hdr[:, 7]).astype(np.uint8),
            "ip_len": ip_len.astype(np.uint32),
            "tcp_seq": _masked(_u(l4, 4, 4, dtype=np.uint32), tcp, np.uint32),
            "tcp_ack": _masked(_u(l4, 8, 4, dtype=np.uint32), tcp, np.uint32),
            "tcp_flags": _masked(_u(l4, 12, 2, dtype=np.uint16) & 0x1FF, tcp, np.uint16),
            "tcp_win": _masked(_u(l4, 14, 2, dtype=np.uint16), tcp, np.uint16),
            "payload_len": payload_len.astype(np.uint32),
            "payload_captured_len": pcl.astype(np.uint32),
            "head_digest": _masked(head_full, has, np.uint64),
            "icmp_type": _masked(typ, icmp_or_none, np.uint8),
            "icmp_code": _masked(l4[:, 1], icmp_or_none, np.uint8),
            "icmp_id": _masked(icmp_id, icmp_or_none, np.uint16),
            "icmp_seq": _masked(icmp_seq, icmp_or_none, np.uint16),
        }
        if underlay is not None:
            data["underlay"] = underlay
        series, absent = [], []
        for name, dtype in self.schema.items():
            if name in data:
                col = data[name]
                s = col.alias(name) if isinstance(col, pl.Series) else pl.Series(name, col)
                series.append(s if s.dtype == dtype else s.cast(dtype))
            else:  # a column of nulls as a literal, not made row by row (pl.repeat: 0.7 ms a chunk)
                absent.append(pl.lit(None, dtype=dtype).alias(name))
        if not absent:
            return pl.DataFrame(series)
        # (A frame of no column has no rows to give the literals: a stand-in column holds their count.)
        frame = pl.DataFrame(series) if series else pl.DataFrame({"_rows": np.zeros(len(r), dtype=np.uint8)})
        return frame.with_columns(absent).select(list(self.schema))

    def _count_vxlan_like(self, ch: _Chunk, rows: np.ndarray, starts: np.ndarray, ip: _IPLayer,
                          plain: np.ndarray) -> None:
        """Count, by destination port, the plain UDP packets that look like VXLAN (decode.vxlan_like's rule) into
        info.vxlan_like."""
        l4 = ip.l4
        c = plain & ip.udp & (ip.seg >= 30) & (l4[:, 8] == 0x08) & (l4[:, 9] == 0) & (l4[:, 10] == 0) \
            & (l4[:, 11] == 0) & (l4[:, 15] == 0) & ((ip.is4 & (ip.hl == 20)) | ~ip.is4)
        idx = np.nonzero(c)[0]
        if not len(idx):
            return
        cap = ch.caplen[rows[idx]]
        at = starts[idx] + ip.hl[idx] + 28
        et = _u(_gather(self.buf, ch.data_off[rows[idx]] + at, 2), 0, 2)
        hit = ((et == 0x0800) | (et == 0x86DD)) & (at + 2 <= cap)
        for port, n in zip(*np.unique(_u(l4[idx[hit]], 2, 2), return_counts=True), strict=True):
            self.info.vxlan_like[int(port)] += int(n)

    def _peel(self, ch: _Chunk, rows: np.ndarray, starts: np.ndarray, hdr: np.ndarray, ip: _IPLayer,
              underlay: pl.Series | None, refer: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pl.Series] | None:
        """One layer of overlay encapsulation off the rows that carry one (decode.decapsulate's rules, the common
        cases): (indexes into ``rows`` peeled, their inner IP header's offset in the frame, its version, the
        ``underlay`` column of all rows: the outermost label kept). None when no row is an overlay packet.
        An encapsulation recognised whose inner packet is not plain IP within the bytes captured (ARP inside,
        VLAN tags, cut short) is marked in ``refer``: the reference decoder peels it again and decides."""
        ov = self.overlay
        dport = _u(ip.l4, 2, 2)
        vx = ip.udp & np.isin(dport, ov.vxlan_ports)
        gn = ip.udp & np.isin(dport, ov.geneve_ports)
        ipip = ip.ipok & ((ip.proto == 4) | (ip.proto == 41))
        gre = ip.ipok & (ip.proto == 47)
        cand = np.nonzero(vx | gn | ipip | gre)[0]
        if not len(cand):
            return None
        cap = ch.caplen[rows[cand]]
        base = starts[cand] + ip.hl[cand]  # the transport (or GRE) header's offset in the frame
        room = np.minimum(cap - base, ip.seg[cand])  # its bytes captured, within the IP length
        peek = _gather(self.buf, ch.data_off[rows[cand]] + base, _PEEK)
        k = len(cand)
        inner = np.full(k, -1, dtype=np.int64)  # offset of what follows the encapsulation, from base
        eth = np.zeros(k, dtype=bool)  # an Ethernet frame follows
        ptype = np.zeros(k, dtype=np.int64)  # else the IP version by EtherType
        kind = np.zeros(k, dtype=np.int64)
        vni = np.full(k, -1, dtype=np.int64)
        # VXLAN (RFC 7348): the I flag, then VNI in bytes 4-6 of the 8-byte header.
        c = vx[cand] & (room >= 16) & ((peek[:, 8] & 0x08) != 0)
        inner[c], eth[c], kind[c], vni[c] = 16, True, 1, (_u(peek, 12, 4) >> 8)[c]
        # Geneve (RFC 8926): version 0, options of 4-byte words, a protocol type.
        c = gn[cand] & (room >= 16) & ((peek[:, 8] >> 6) == 0)
        gtype = _u(peek, 10, 2)
        inner[c], ptype[c], kind[c] = 16 + (peek[c, 8] & 0x3F).astype(np.int64) * 4, gtype[c], 2
        vni[c] = (_u(peek, 12, 4) >> 8)[c]
        # IP-in-IP: the inner header at once.
        c = ipip[cand]
        inner[c], ptype[c], kind[c] = 0, np.where(ip.proto[cand][c] == 4, 0x0800, 0x86DD), 3
        # GRE version 0 (RFC 2784/2890): C, K, S add a word each; no routing, no other version.
        flags, gtype = _u(peek, 0, 2), _u(peek, 2, 2)
        c = gre[cand] & (room >= 4) & ((flags & 0x4007) == 0) & np.isin(gtype, (0x0800, 0x86DD, 0x6558))
        has_c, has_k, has_s = (flags & 0x8000) != 0, (flags & 0x2000) != 0, (flags & 0x1000) != 0
        key_at = np.where(has_c, 8, 4)
        key = np.where(has_c, _u(peek, 8, 4), _u(peek, 4, 4))
        inner[c] = (key_at + 4 * has_k + 4 * has_s)[c]
        ptype[c], kind[c] = gtype[c], 4
        vni[c & has_k] = key[c & has_k]
        eth |= ptype == 0x6558
        # An Ethernet frame inside: its EtherType (one VLAN tag skipped at most; more go to the reference).
        e = np.nonzero(eth & (inner >= 0))[0]
        if len(e):
            head = _gather(self.buf, ch.data_off[rows[cand[e]]] + base[e] + inner[e], 18)
            et = _u(head, 12, 2)
            tagged = np.isin(et, VLAN_TPIDS)
            ptype[e] = np.where(tagged, 0, et)  # tagged: the reference's
            inner[e] += 14
        ver = np.where(ptype == 0x0800, 4, np.where(ptype == 0x86DD, 6, 0))
        ok = (inner >= 0) & (ver > 0) & (inner < room)
        refer[cand[(inner >= 0) & ~ok]] = True
        if not ok.any():
            return None
        at = cand[ok]
        # The outer addresses, as text, for the rows peeled.
        outer = hdr[at]
        o4 = ip.is4[at]
        addrs = self.addresses.series(np.concatenate([_u(outer, 12, 4), _u(outer, 16, 4)]),
                                      np.concatenate([outer[~o4, 8:24], outer[~o4, 24:40]]), np.concatenate([o4, o4]))
        n_at = len(at)
        label = pl.DataFrame({
            "e": pl.Series(np.array(ENCAPS)[kind[ok] - 1]),
            "s": addrs.head(n_at).cast(pl.String), "d": addrs.tail(n_at).cast(pl.String),
            "v": pl.Series(vni[ok]).cast(pl.String).replace("-1", "-"),
        }).select(pl.concat_str("e", "s", "d", "v", separator=" ")).to_series()
        if underlay is None:
            underlay = pl.repeat(None, len(rows), dtype=pl.String, eager=True)
        else:  # a second layer: the outermost stays the underlay
            label = underlay.cast(pl.String).gather(at).fill_null(label)
        underlay = underlay.cast(pl.String).scatter(at, label).cast(pl.Categorical)
        return at, starts[at] + ip.hl[at] + inner[ok], ver[ok], underlay

    def _head_digests(self, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        """xxh3_64 of each payload's first HEAD_DIGEST_BYTES bytes: vectorised for payloads at least that long,
        a call per packet for shorter ones."""
        mv = self.mv
        h = xxhash.xxh3_64_intdigest
        head = np.zeros(len(start), dtype=np.uint64)
        short = np.nonzero(length < HEAD_DIGEST_BYTES)[0]
        s = start[short].tolist()
        e = (start[short] + length[short]).tolist()
        head[short] = np.fromiter([h(mv[a:b]) for a, b in zip(s, e, strict=True)], dtype=np.uint64, count=len(s))
        at = np.nonzero(length >= HEAD_DIGEST_BYTES)[0]
        if len(at):
            head[at] = xxh3_64_of_32(_gather(self.buf, start[at], HEAD_DIGEST_BYTES))
        return head

    def _slow_frame(self, ch: _Chunk, rows: np.ndarray) -> pl.DataFrame | None:
        """The reference decoder, record by record, exactly as packets.build_packets runs it."""
        out: list[tuple] = []
        kept: list[int] = []
        self._slow_kept = kept
        skipped = self.info.skipped
        buf = self.buf
        on_if = self.info.interface_skipped
        cols = (ch.frame_no[rows].tolist(), ch.ts_ns[rows].tolist(), ch.wire_len[rows].tolist(),
                ch.caplen[rows].tolist(), ch.linktype[rows].tolist(), ch.data_off[rows].tolist(),
                ch.iface[rows].tolist())
        for frame_no, ts, wire, cap, lt, off, iface in zip(*cols, strict=True):
            data = buf[off:off + cap]
            try:
                row = decode(frame_no, ts, wire, cap, lt, data, iface, self.overlay)
                out.append(row)
                if row[_PROTO] == 17 and row[_UNDERLAY] is None:
                    port = vxlan_like(*link_payload(lt, data)[:2])
                    if port is not None:
                        self.info.vxlan_like[port] += 1
                kept.append(frame_no)
            except Skip as skip:
                if skip.reason == "malformed":
                    self.info.note_malformed(frame_no, ts)
                elif skip.reason == "truncated_l4":
                    self.info.note_cut(frame_no, ts, skip.cut)
                else:
                    skipped[skip.reason] += 1
                on_if[(iface, sll2_ifindex(lt, data), skip.reason)] += 1
            except Exception:  # noqa: BLE001 - a malformed packet is counted, never fatal
                self.info.note_malformed(frame_no, ts)
                on_if[(iface, sll2_ifindex(lt, data), "malformed")] += 1
        if not out:
            return None
        from natproof.packets import PACKET_SCHEMA

        return pl.DataFrame(out, schema=PACKET_SCHEMA, orient="row").select(list(self.schema))


# ---------------------------------------------------------------------------------------------------------------


def _read_ahead(chunks: Generator[_Chunk, None, None], depth: int = 1) -> Generator[_Chunk, None, None]:
    """``chunks``, framed in a thread up to ``depth`` chunks ahead of the one being decoded. Errors the framing
    raises are raised here, in order; closing this generator stops the thread and then closes ``chunks``.

    The record walk (natproof.recordwalk) and the decoding are numpy work that mostly runs without the GIL, so
    on two cores they overlap: 5M synthetic packets 4.4 -> 3.4 s, for ~70 MB more RSS (a second chunk's pages
    and arrays). The framing thread writes only ``info.warnings``, ``info.skipped["malformed_block"]`` and the
    pcapng interfaces, which the decoder reads from each chunk, not from ``info``."""
    q: queue.Queue[tuple[_Chunk | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def frame() -> None:
        try:
            for ch in chunks:
                while not stop.is_set():
                    try:
                        q.put((ch, None), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((None, None))
        except BaseException as exc:  # handed to the reader, raised there
            q.put((None, exc))

    worker = threading.Thread(target=frame, name="natproof-framing", daemon=True)
    worker.start()
    try:
        while True:
            ch, exc = q.get()
            if exc is not None:
                raise exc
            if ch is None:
                return
            yield ch
    finally:
        stop.set()
        while worker.is_alive():  # it may wait on a full queue: make room until it sees ``stop``
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
        worker.join()
        chunks.close()


def pcap_link_type(path: str | os.PathLike[str]) -> int | None:
    """The link type a pcap file's header gives every frame (as _frame_pcap reads it), from the header alone: of
    a gzip file only the stream's first block is decompressed. None for pcapng, standard input, anything else, or a
    file that cannot be read (decode_file then says what is wrong with it). A pcap has one interface: its frames
    are all on it unless the link type is LINUX_SLL2 (276), whose frames each carry an interface index
    (interfaces_used); natproof.chain tells a file of one interface by this without framing it."""
    if str(path) == "-":
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
            if head[:2] == GZIP_MAGIC:
                fh.seek(0)
                with gzip.GzipFile(fileobj=fh) as gz:
                    head = gz.read(24)
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        return None
    if len(head) < 24 or head[:4] not in PCAP_MAGIC:
        return None
    (network,) = struct.unpack_from(PCAP_MAGIC[head[:4]][0] + "I", head, 20)
    return network & 0x0FFFFFFF if network > 0xFFFF else network


def interfaces_used(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> set[tuple[int, int]]:
    """The (iface, ifindex) of every frame of a capture file, by framing alone, nothing decoded: its pcapng
    interface, and an SLL2 frame's interface index (-1 for other link types), the keys CaptureInfo.interface_frames
    counts. Two or more: a capture of several interfaces (natproof.points.several_interfaces, which decode_file's
    packets decide), told at a fraction of a decode's cost (natproof.chain checks each pcapng or SLL2 file of a
    chain with it; another pcap's header settles it: pcap_link_type).
    Raises CaptureError as decode_file does, and Unsupported where its framing does."""
    with open_buffer(path) as (buf, _gz, _cut):
        info = CaptureInfo(path=str(path))
        magic = bytes(buf[:4])
        if magic in PCAP_MAGIC:
            chunks = _frame_pcap(buf, info, chunk_bytes)
        elif magic == PCAPNG_SHB:
            chunks = _frame_pcapng(buf, info, chunk_bytes)
        else:
            shown = " ".join(f"{b:02x}" for b in magic)
            raise CaptureError(str(path), f"not a pcap or pcapng capture (starts with {shown})")
        keys: set[tuple[int, int]] = set()
        try:
            for ch in chunks:
                n = len(ch.frame_no)
                if not n:
                    continue
                ifindex = np.full(n, -1, dtype=np.int64)
                rows = np.nonzero((ch.linktype == _SLL2) & (ch.caplen >= 20))[0]  # as _ChunkDecoder.decode reads it
                if len(rows):
                    raw = np.ascontiguousarray(_gather(buf, ch.data_off[rows] + 4, 4))
                    ifindex[rows] = raw.view(">i4").ravel()
                counts: Counter[tuple[int, int]] = Counter()
                _count_where(counts, _where(ch.iface, ifindex), None)
                keys |= set(counts)
        finally:
            chunks.close()  # its views of the mapped file go before the map is closed
    return keys


def decode_file(path: str | os.PathLike[str], progress: Callable[[int], None] | None = None, *,
                chunk_bytes: int = CHUNK_BYTES, columns: Sequence[str] | None = None,
                transform: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
                overlay: Overlay = DEFAULT_OVERLAY,
                sink: Callable[[pl.DataFrame], None] | None = None,
                read_ahead: bool | None = None) -> tuple[CaptureInfo, pl.DataFrame]:
    """Read and decode a capture into (info, packets) equal to read_capture + build_packets on the same file.

    ``columns`` keeps only those columns of each chunk, then ``transform`` (row by row) turns each chunk into
    what the caller keeps, so a full-width frame of the whole capture never exists. ``sink``, when given, is
    handed each chunk's frame in capture order instead (the packets returned are then an empty frame): a capture
    larger than memory streams through (natproof.spill). ``read_ahead``: frame the next chunk in a thread while
    one decodes (_read_ahead); by default when there is more than one core and no ``sink`` (a spilled run keeps
    its memory). ``overlay``: the ports of the
    encapsulations to peel (decode.Overlay). Raises CaptureError as
    read_capture does, and Unsupported for the rare file the fast framing does not handle (the caller then
    uses the reference path).
    """
    from natproof.packets import PACKET_SCHEMA

    keep = list(PACKET_SCHEMA) if columns is None else list(columns)

    with open_buffer(path) as (buf, gz, cut):
        info = CaptureInfo(path=str(path))
        if cut:
            info.warnings.append(GZIP_CUT)
        magic = bytes(buf[:4])
        if magic in PCAP_MAGIC:
            info.format = "pcap+gzip" if gz else "pcap"
            chunks = _frame_pcap(buf, info, chunk_bytes)
        elif magic == PCAPNG_SHB:
            info.format = "pcapng+gzip" if gz else "pcapng"
            chunks = _frame_pcapng(buf, info, chunk_bytes)
        else:
            shown = " ".join(f"{b:02x}" for b in magic)
            raise CaptureError(str(path), f"not a pcap or pcapng capture (starts with {shown})")
        if read_ahead if read_ahead is not None else (sink is None and (os.cpu_count() or 1) > 1):
            chunks = _read_ahead(chunks)
        dec = _ChunkDecoder(buf, info, PACKET_SCHEMA if columns is None else {c: PACKET_SCHEMA[c] for c in keep},
                            overlay)
        parts: list[pl.DataFrame] = []
        released = 0
        page = mmap.PAGESIZE
        dontneed = getattr(mmap, "MADV_DONTNEED", None)
        try:
            for ch in chunks:
                n = len(ch.frame_no)
                if n:
                    info.records += n
                    lo, hi = int(ch.ts_ns.min()), int(ch.ts_ns.max())  # the span, whatever the file's order
                    info.first_ts_ns = lo if info.first_ts_ns is None else min(info.first_ts_ns, lo)
                    info.last_ts_ns = hi if info.last_ts_ns is None else max(info.last_ts_ns, hi)
                    info.truncated_records += int((ch.caplen < ch.orig_wire).sum())
                    df = dec.decode(ch)
                    if df is not None:  # already only the ``keep`` columns: the decoder makes no others
                        df = transform(df) if transform is not None else df
                        if sink is None:
                            parts.append(df)
                        else:
                            sink(df)
                    if progress is not None:
                        progress(int(ch.caplen.sum()) + 16 * n)
                # Pages before the next chunk are done with: drop them from this process (they stay cached).
                upto = min(ch.resume_off, len(buf)) // page * page
                if dontneed is not None and upto > released:
                    with contextlib.suppress(OSError, ValueError):
                        buf.madvise(dontneed, released, upto - released)
                    released = upto
        finally:
            chunks.close()  # its views of the mapped file go before the map is closed
            dec.close()
            trim()  # the chunks' numpy temporaries
        if info.records == 0:
            raise CaptureError(info.path, no_packets_problem(info))
    if not parts:
        empty = pl.DataFrame(schema={c: PACKET_SCHEMA[c] for c in keep})
        return info, transform(empty) if transform is not None else empty
    return info, pl.concat(parts, rechunk=False) if len(parts) > 1 else parts[0]
