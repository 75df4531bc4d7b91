"""Build tiny pcap / pcapng files and packets byte by byte, independently of natproof's reader."""

from __future__ import annotations

import socket
import struct


def ipv4(src: str, dst: str, proto: int, l4: bytes, *, ttl: int = 64, ip_id: int = 1, total: int | None = None,
         frag: int = 0) -> bytes:
    length = 20 + len(l4) if total is None else total
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, ip_id, frag, ttl, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr + l4


def ipv6(src: str, dst: str, nxt: int, l4: bytes, *, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), nxt, hlim,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + l4


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"", win: int = 64240) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, win, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo(type_: int, ident: int, seq: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", type_, 0, 0, ident, seq) + payload


def icmp_error(type_: int, code: int, quoted: bytes) -> bytes:
    return struct.pack("!BBHI", type_, code, 0, 0) + quoted


def ether(payload: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    out = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02"
    for vid in vlans:
        out += struct.pack("!HH", 0x8100, vid)
    return out + struct.pack("!H", ethertype) + payload


def sll2(payload: bytes, ifindex: int = 3, proto: int = 0x0800) -> bytes:
    return struct.pack("!HHiHBB8s", proto, 0, ifindex, 1, 4, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + payload


def sll(payload: bytes, proto: int = 0x0800) -> bytes:
    return struct.pack("!HHH8sH", 4, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", proto) + payload


def pcap(records: list[tuple[int, bytes]] | list[tuple[int, bytes, int]], *, linktype: int = 1, nano: bool = True,
         big_endian: bool = False, wire_extra: int = 0) -> bytes:
    """records: (ts_ns, frame bytes[, original length: a frame cut by a snaplen])."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)
    for ts, data, *wire in records:
        sec, frac = divmod(ts, 1_000_000_000)
        if not nano:
            frac //= 1000
        out += struct.pack(e + "IIII", sec, frac, len(data), (wire[0] if wire else len(data)) + wire_extra) + data
    return out


def _block(btype: int, body: bytes) -> bytes:
    pad = (-len(body)) % 4
    blen = 12 + len(body) + pad
    return struct.pack("<II", btype, blen) + body + b"\0" * pad + struct.pack("<I", blen)


def pcapng(interfaces: list[tuple[int, int | None]] | list[tuple[int, int | None, str]],
           packets: list[tuple[int, int, bytes]]) -> bytes:
    """interfaces: (linktype, if_tsresol option byte or None[, if_name]); packets: (iface, ticks, frame)."""
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for lt, tsresol, *name in interfaces:
        opts = b""
        if name:
            raw = name[0].encode()
            opts += struct.pack("<HH", 2, len(raw)) + raw + b"\0" * ((-len(raw)) % 4)
        if tsresol is not None:
            opts += struct.pack("<HHB3x", 9, 1, tsresol)
        if opts:
            opts += struct.pack("<HH", 0, 0)
        out += _block(1, struct.pack("<HHI", lt, 0, 262144) + opts)
    for iface, ticks, data in packets:
        body = struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
        out += _block(6, body + data + b"\0" * ((-len(data)) % 4))
    return out


def frame_of(rows: list[tuple[int, bytes]], linktype: int = 101, *, snaplen: int | None = None):
    """Decode (ts_ns, raw IP bytes) rows into natproof's packet frame, numbering frames from 1; ``snaplen`` cuts
    each record to that many bytes, as tcpdump -s does (the original length kept)."""
    from natproof.capture import CaptureInfo, Record
    from natproof.packets import build_packets

    recs = [Record(i + 1, ts, len(b[:snaplen]), len(b), linktype, 0, b[:snaplen]) for i, (ts, b) in enumerate(rows)]
    return build_packets(recs, CaptureInfo(path="<test>"))


def http_steps(isn: int, srv_isn: int) -> list[tuple[str, int, int, int, bytes]]:
    """An HTTP/1.0 exchange's TCP segments, (direction "e" initiator or "r" responder, flags, seq, ack, payload):
    handshake, request, response, both FINs and the last ACK."""
    req, resp = b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nhello"
    return [("e", 0x02, isn, 0, b""), ("r", 0x12, srv_isn, isn + 1, b""), ("e", 0x10, isn + 1, srv_isn + 1, b""),
            ("e", 0x18, isn + 1, srv_isn + 1, req), ("r", 0x18, srv_isn + 1, isn + 1 + len(req), resp),
            ("e", 0x11, isn + 1 + len(req), srv_isn + 1 + len(resp), b""),
            ("r", 0x11, srv_isn + 1 + len(resp), isn + 2 + len(req), b""),
            ("e", 0x10, isn + 2 + len(req), srv_isn + 2 + len(resp), b"")]


def tcp_pair(t0: int = 1_700_000_000 * 10**9, *, pod: str = "10.244.0.10", node: str = "203.0.113.2",
             srv: str = "198.51.100.10", sport: int = 40000, nat_sport: int = 40000, isn: int = 1000,
             offset_ns: int = 0) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """One HTTP-like TCP connection through MASQUERADE: (inside rows, outside rows) of raw IP packets."""
    inside, outside = [], []
    steps = http_steps(isn, 5000)
    for i, (d, flags, seq, ack, data) in enumerate(steps):
        t = t0 + i * 1_000_000
        if d == "e":
            inside.append((t, ipv4(pod, srv, 6, tcp(sport, 80, seq, ack, flags, data), ttl=64, ip_id=100 + i)))
            outside.append((t + 30_000 + offset_ns,
                            ipv4(node, srv, 6, tcp(nat_sport, 80, seq, ack, flags, data), ttl=63, ip_id=100 + i)))
        else:
            outside.append((t + offset_ns,
                            ipv4(srv, node, 6, tcp(80, nat_sport, seq, ack, flags, data), ttl=50, ip_id=200 + i)))
            inside.append((t + 30_000, ipv4(srv, pod, 6, tcp(80, sport, seq, ack, flags, data), ttl=49, ip_id=200 + i)))
    return inside, outside


def tcp_rounds(t0: int = 1_700_000_000 * 10**9, *, rounds: int = 30, every_ns: int = 100_000_000,
               pod: str = "10.244.0.10", node: str = "203.0.113.2", srv: str = "198.51.100.10", sport: int = 48000,
               isn: int = 100_000, ip_id: int = 1000) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """A long-lived TCP connection through MASQUERADE (port kept, 30 us across the node): handshake, then
    ``rounds`` request/response/ACK exchanges ``every_ns`` apart, 10 ms server time each. (inside rows, outside
    rows) of raw IP packets, both captures running throughout; trim the rows by time to start one late."""
    srv_isn, seq, ack = 5_000_000, isn + 1, 0
    steps = [(0, "e", 0x02, isn, 0, b""), (10_000_000, "r", 0x12, srv_isn, isn + 1, b""),
             (10_200_000, "e", 0x10, isn + 1, srv_isn + 1, b"")]
    ack = srv_isn + 1
    for i in range(rounds):
        t = 50_000_000 + i * every_ns
        req, resp = b"ping%03d" % i, b"pong%03d" % i
        steps += [(t, "e", 0x18, seq, ack, req), (t + 10_000_000, "r", 0x18, ack, seq + len(req), resp),
                  (t + 10_200_000, "e", 0x10, seq + len(req), ack + len(resp), b"")]
        seq, ack = seq + len(req), ack + len(resp)
    inside, outside = [], []
    for i, (dt, d, flags, s, a, data) in enumerate(steps):
        t = t0 + dt
        if d == "e":
            inside.append((t, ipv4(pod, srv, 6, tcp(sport, 80, s, a, flags, data), ttl=64, ip_id=ip_id + i)))
            outside.append((t + 30_000, ipv4(node, srv, 6, tcp(sport, 80, s, a, flags, data), ttl=63,
                                             ip_id=ip_id + i)))
        else:
            outside.append((t, ipv4(srv, node, 6, tcp(80, sport, s, a, flags, data), ttl=52, ip_id=ip_id + 5000 + i)))
            inside.append((t + 30_000, ipv4(srv, pod, 6, tcp(80, sport, s, a, flags, data), ttl=51,
                                            ip_id=ip_id + 5000 + i)))
    return inside, outside


def write_pair(directory, inside, outside, linktype: int = 101):
    """Write rows of raw IP packets as inside.pcap and outside.pcap; return both paths."""
    from pathlib import Path

    d = Path(directory)
    paths = []
    for name, rows in (("inside.pcap", inside), ("outside.pcap", outside)):
        p = d / name
        p.write_bytes(pcap(sorted(rows, key=lambda r: r[0]), linktype=linktype))
        paths.append(p)
    return paths


def snaplen_cut(data: bytes, snaplen: int) -> bytes:
    """A classic pcap file's bytes with every record cut to ``snaplen`` bytes and the header's snaplen set so, as
    ``tcpdump -s SNAPLEN`` writes it (wire lengths kept)."""
    end = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out = [data[:16], struct.pack(f"{end}I", snaplen), data[20:24]]
    at = 24
    while at + 16 <= len(data):
        sec, frac, caplen, wire = struct.unpack(f"{end}IIII", data[at:at + 16])
        kept = min(caplen, snaplen)
        out += [struct.pack(f"{end}IIII", sec, frac, kept, wire), data[at + 16:at + 16 + kept]]
        at += 16 + caplen
    return b"".join(out)


def traceroute_rows(t0: int = 1_700_000_000 * 10**9, *, pod: str = "10.244.0.10", gw: str = "10.244.0.1",
                    node: str = "203.0.113.2", hops: tuple[str, ...] = ("203.0.113.1", "192.0.2.1"),
                    dst: str = "198.51.100.10", sport: int = 40001
                    ) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """A UDP traceroute from a pod through MASQUERADE (port kept): one probe per TTL from 1 to len(hops) + 2, 50 ms
    apart. The node answers TTL 1 itself (time exceeded from ``gw``, seen inside only), each of ``hops`` the next
    TTLs (time exceeded, reverse-translated to the pod), ``dst`` the last (port unreachable). (inside rows,
    outside rows) of raw IP packets."""
    inside, outside = [], []
    data = b"@" * 32
    for ttl in range(1, len(hops) + 3):
        t, ip_id, dport = t0 + (ttl - 1) * 50_000_000, 1000 + ttl, 33433 + ttl
        inside.append((t, ipv4(pod, dst, 17, udp(sport, dport, data), ttl=ttl, ip_id=ip_id)))
        if ttl == 1:
            quoted = ipv4(pod, dst, 17, udp(sport, dport, data), ttl=1, ip_id=ip_id)
            inside.append((t + 100_000, ipv4(gw, pod, 1, icmp_error(11, 0, quoted), ip_id=5000 + ttl)))
            continue
        outside.append((t + 20_000, ipv4(node, dst, 17, udp(sport, dport, data), ttl=ttl - 1, ip_id=ip_id)))
        src, kind = (hops[ttl - 2], (11, 0)) if ttl - 2 < len(hops) else (dst, (3, 3))
        left = 1 if src != dst else ttl - len(hops) - 1
        out_q = ipv4(node, dst, 17, udp(sport, dport, data), ttl=left, ip_id=ip_id)
        in_q = ipv4(pod, dst, 17, udp(sport, dport, data), ttl=left, ip_id=ip_id)
        outside.append((t + 1_000_000, ipv4(src, node, 1, icmp_error(*kind, out_q), ttl=64 - ttl, ip_id=6000 + ttl)))
        inside.append((t + 1_020_000, ipv4(src, pod, 1, icmp_error(*kind, in_q), ttl=63 - ttl, ip_id=6000 + ttl)))
    return inside, outside


def udp_remap_rows(t0: int = 1_700_000_000 * 10**9, gap: float = 20) -> tuple[list, list]:
    """Two pod flows mapped anew after a silence (a trial's udp2): 40300 unanswered, ``gap`` s silent; 40400 a stream
    (answered from 2 s to 5 s), 100 s silent. Each datagram crosses 20 us later, as a MASQUERADE would send it."""
    pod, node, s = "10.244.0.10", "203.0.113.2", 1_000_000_000
    inside: list = []
    outside: list = []

    def out(t: float, sport: int, mapped: int, srv: str, dport: int) -> None:
        inside.append((t0 + int(t * s), ipv4(pod, srv, 17, udp(sport, dport, b"q%07d" % int(t * 1000)))))
        outside.append((t0 + int(t * s) + 20_000, ipv4(node, srv, 17, udp(mapped, dport, b"q%07d" % int(t * 1000)),
                                                       ttl=63)))

    def back(t: float, sport: int, mapped: int, srv: str, dport: int) -> None:
        outside.append((t0 + int(t * s), ipv4(srv, node, 17, udp(dport, mapped, b"r%07d" % int(t * 1000)))))
        inside.append((t0 + int(t * s) + 20_000, ipv4(srv, pod, 17, udp(dport, sport, b"r%07d" % int(t * 1000)),
                                                      ttl=63)))

    out(1, 40300, 40300, "198.51.100.54", 53)
    out(1 + gap, 40300, 61001, "198.51.100.54", 53)
    for i in range(4):
        out(2 + i, 40400, 40400, "198.51.100.77", 27016)
        back(2.02 + i, 40400, 40400, "198.51.100.77", 27016)
    out(105, 40400, 61002, "198.51.100.77", 27016)
    back(105.02, 40400, 61002, "198.51.100.77", 27016)
    return inside, outside
