"""Captures made longer from real ones: a pair repeated in a loop.

Each copy comes after the previous copy ended, plus a gap. Both captures of a pair are shifted by the same
amounts, so the clock offset between them stays what it was. Two kinds of copy:

- a replay (``distinct=False``) repeats every frame byte for byte (same tuples, TCP sequence numbers and IP
  ids), as ``tcpreplay --loop`` sends a capture again;
- a distinct copy (``distinct=True``) moves each copy's TCP sequence space and IPv4 ids by a constant of its
  own (both directions, both captures alike, checksums made again), so its packets are new traffic on the same
  tuples, as a busy node's would be: the scale-up of real kernel traffic the bench uses.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import dpkt

from natproof.capture import read_capture


def _records(path: Path) -> tuple[int, list[tuple[Decimal, bytes]]]:
    """(link type, [(time in seconds, frame)]) of a capture natproof reads (pcap or pcapng, gzip too)."""
    info, records = read_capture(path)
    got = [(Decimal(r.ts_ns) / 1_000_000_000, r.data) for r in records]
    return info.link_types[0], got


SEQ_STEP = 0x01000193
"""How far each distinct copy moves TCP sequence and acknowledgement numbers (mod 2**32): odd, so 2**32 copies
never repeat a space."""
IP_ID_STEP = 7919
"""How far each distinct copy moves IPv4 ids (mod 2**16, skipping 0, which Linux leaves on DF packets)."""


def _moved(buf: bytes, linktype: int, k: int) -> bytes:
    """Frame ``buf`` of copy ``k`` with its TCP numbers and IPv4 id moved (Ethernet frames; others unchanged)."""
    if k == 0 or linktype != 1:
        return buf
    eth = dpkt.ethernet.Ethernet(buf)
    ip = eth.data
    if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
        return buf
    if isinstance(ip, dpkt.ip.IP) and ip.id:
        ip.id = (ip.id - 1 + k * IP_ID_STEP) % 0xFFFF + 1
        ip.sum = 0
    tcp = ip.data
    if isinstance(tcp, dpkt.tcp.TCP):
        tcp.seq = (tcp.seq + k * SEQ_STEP) & 0xFFFFFFFF
        if tcp.flags & dpkt.tcp.TH_ACK:
            tcp.ack = (tcp.ack + k * SEQ_STEP) & 0xFFFFFFFF
        tcp.sum = 0
    return bytes(eth)


def loop_pair(inside: str | os.PathLike[str], outside: str | os.PathLike[str], outdir: str | os.PathLike[str],
              copies: int, gap_s: float = 1.0, *, distinct: bool = False) -> tuple[Path, Path]:
    """Write ``outdir``/inside.pcap and outside.pcap: ``copies`` back-to-back copies of the pair, each starting
    ``gap_s`` seconds after the previous one's last frame (on the earlier-starting capture's clock); replays,
    or ``distinct`` copies (see the module docstring). Returns the two paths. Raises ValueError when ``copies``
    < 1."""
    if copies < 1:
        raise ValueError("copies must be at least 1")
    (lt_in, a), (lt_out, b) = _records(Path(inside)), _records(Path(outside))
    times = [ts for ts, _ in a + b]
    period = (max(times) - min(times)) + Decimal(str(gap_s)) if times else Decimal(0)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, linktype, records in (("inside.pcap", lt_in, a), ("outside.pcap", lt_out, b)):
        path = out / name
        with open(path, "wb") as fh:
            writer = dpkt.pcap.Writer(fh, linktype=linktype, nano=True)
            for k in range(copies):
                for ts, buf in records:
                    writer.writepkt(_moved(buf, linktype, k) if distinct else buf, ts + k * period)
        paths.append(path)
    return paths[0], paths[1]
