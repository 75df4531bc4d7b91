"""Decode one record's link layer and, with dpkt, its IP and transport headers into a packet row."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import xxhash

# Field order of a decoded row; packets.PACKET_SCHEMA gives each its type.
FIELDS: tuple[str, ...] = (
    "frame_no", "ts_ns", "wire_len", "caplen", "iface", "ifindex",
    "ip_version", "src", "dst", "proto", "sport", "dport",
    "ip_id", "ttl", "ip_len",
    "tcp_seq", "tcp_ack", "tcp_flags", "tcp_win",
    "payload_len", "payload_captured_len", "head_digest",
    "icmp_type", "icmp_code", "icmp_id", "icmp_seq",
    "inner_proto", "inner_src", "inner_dst", "inner_sport", "inner_dport",
    "icmp_mtu", "underlay",
)

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
# BSD and Linux AF_INET6 values seen in NULL/LOOP captures.
AF_INET6_VALUES = (10, 24, 28, 30)

ICMP4_ECHO_REQUEST, ICMP4_ECHO_REPLY = 8, 0
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
# ICMP errors quote the offending packet's IP header and first 8 bytes of its transport header (RFC 792/4443).
ICMP4_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMP6_ERRORS = frozenset({1, 2, 3, 4})
PATH_MTU_ERRORS = frozenset({(1, 3, 4), (58, 2, 0)})
"""(proto, type, code) of "fragmentation needed and DF set" (RFC 1191) and "packet too big" (RFC 4443)."""
HEAD_DIGEST_BYTES = 32
"""head_digest (xxh3_64) covers at most this many payload bytes, so captures with different snaplens still agree.
(A whole-payload digest cost a fifth of the columnar decoder's time and nothing read it.)"""


@dataclass(frozen=True)
class Overlay:
    """Which UDP destination ports carry which overlay encapsulation. IP-in-IP (IP protocols 4 and 41) and GRE
    (47, version 0) need no port. Defaults: VXLAN on IANA's 4789 (RFC 7348) and 8472 (the Linux kernel's default
    and flannel's), Geneve on 6081 (RFC 8926). Raises ValueError for a port outside 1..65535."""

    vxlan_ports: tuple[int, ...] = (4789, 8472)
    geneve_ports: tuple[int, ...] = (6081,)

    def __post_init__(self) -> None:
        for port in (*self.vxlan_ports, *self.geneve_ports):
            if not 0 < port < 65536:
                raise ValueError(f"overlay port {port} is not a UDP port (1-65535)")

    def with_vxlan_ports(self, ports: tuple[int, ...]) -> Overlay:
        """This overlay with ``ports`` also read as VXLAN (``--vxlan-port``)."""
        return Overlay(tuple(dict.fromkeys((*self.vxlan_ports, *ports))), self.geneve_ports)


DEFAULT_OVERLAY = Overlay()
MAX_ENCAP_DEPTH = 2
"""Encapsulations peeled from one frame at most: an overlay packet inside a mirror session's VXLAN (AWS Traffic
Mirroring) is two. The outermost is the packet's underlay."""
ETH_TEB = 0x6558
"""Transparent Ethernet Bridging: an Ethernet frame follows (GRE, Geneve; RFC 1701 protocol types)."""


class Skip(Exception):
    """The frame carries nothing natproof correlates; ``reason`` says why (counted, never fatal). ``cut``: for a
    TCP or UDP frame a snaplen cut inside or before its transport header (truncated_l4) behind a whole IP header,
    its flow as (proto, src, sport, dst, dport), the ports None when the cut took them too: what the capture can
    still say of it (CaptureInfo.note_cut)."""

    def __init__(self, reason: str, cut: tuple[int, str, int | None, str, int | None] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cut = cut


def sll2_ifindex(linktype: int, data: bytes) -> int:
    """The Linux interface index a LINUX_SLL2 frame carries (``tcpdump -i any``); -1 for other link types and for
    a frame too short to hold the header."""
    if linktype != 276 or len(data) < 20:
        return -1
    return int(struct.unpack_from("!i", data, 4)[0])


def link_payload(linktype: int, data: bytes) -> tuple[int, bytes, int]:
    """Strip the link layer: return (ip_version, ip_bytes, ifindex_or_-1)."""
    if linktype == 1:  # EN10MB, with any number of 802.1Q / QinQ tags
        if len(data) < 14:
            raise Skip("malformed")
        etype, off = struct.unpack_from("!H", data, 12)[0], 14
        while etype in VLAN_TPIDS:
            if len(data) < off + 4:
                raise Skip("malformed")
            etype = struct.unpack_from("!H", data, off + 2)[0]
            off += 4
        return _by_ethertype(etype, data[off:]) + (-1,)
    if linktype == 276:  # LINUX_SLL2: protocol, reserved, ifindex, hatype, pkttype, halen, addr[8]
        if len(data) < 20:
            raise Skip("malformed")
        etype, _, ifindex = struct.unpack_from("!HHi", data, 0)
        return _by_ethertype(etype, data[20:]) + (ifindex,)
    if linktype == 113:  # LINUX_SLL: pkttype, hatype, halen, addr[8], protocol
        if len(data) < 16:
            raise Skip("malformed")
        return _by_ethertype(struct.unpack_from("!H", data, 14)[0], data[16:]) + (-1,)
    if linktype in (101, 12, 14, 228, 229):  # raw IP
        if not data:
            raise Skip("malformed")
        version = data[0] >> 4
        if version not in (4, 6):
            raise Skip("non_ip")
        return version, data, -1
    if linktype in (0, 108):  # NULL (host byte order family) and LOOP (network order)
        if len(data) < 4:
            raise Skip("malformed")
        fam_le, fam_be = struct.unpack_from("<I", data)[0], struct.unpack_from(">I", data)[0]
        fams = (fam_be,) if linktype == 108 else (fam_le, fam_be)
        if 2 in fams:
            return 4, data[4:], -1
        if any(f in AF_INET6_VALUES for f in fams):
            return 6, data[4:], -1
        raise Skip("non_ip")
    raise Skip("unsupported_link")


def _by_ethertype(etype: int, payload: bytes) -> tuple[int, bytes]:
    if etype == ETH_IPV4:
        return 4, payload
    if etype == ETH_IPV6:
        return 6, payload
    raise Skip("non_ip")


def _addr(version: int, raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if version == 4 else socket.AF_INET6, raw)


def decode(frame_no: int, ts_ns: int, wire_len: int, caplen: int, linktype: int, data: bytes, iface: int = 0,
           overlay: Overlay = DEFAULT_OVERLAY) -> tuple:
    """Decode one frame into a row ordered as FIELDS, or raise Skip with the reason. ``iface`` is the file's
    interface it was captured on (Record.iface), carried into the row as it is. An overlay packet (see
    :func:`decapsulate`) is decoded from its inner packet, the outer one kept as ``underlay``."""
    import dpkt  # here, not at the top: the fast path never needs it, and it takes 40 ms to import

    version, ipb, ifindex = link_payload(linktype, data)
    underlay = None
    for _ in range(MAX_ENCAP_DEPTH):
        inner = decapsulate(version, ipb, overlay)
        if inner is None:
            break
        version, ipb, label = inner
        underlay = underlay or label
    try:
        if version == 4:
            ip = dpkt.ip.IP(ipb)
            if ip.v != 4:
                raise Skip("malformed")
            hdr_len = ip.hl * 4
            # ip.len is 0 on packets captured before TCP segmentation offload split them.
            ip_len = ip.len or len(ipb)
            l4_len = ip_len - hdr_len
            ip_id: int | None = ip.id
            ttl = ip.ttl
            proto = ip.p
            if ip.offset:  # a non-first fragment carries no transport header
                raise Skip("ip_fragment")
            first_fragment = bool(ip.mf)
        else:
            ip = dpkt.ip6.IP6(ipb)
            ext = sum(len(h) for h in ip.all_extension_headers)
            ip_len = (ip.plen or len(ipb) - 40) + 40
            l4_len = ip_len - 40 - ext
            ip_id = None
            ttl = ip.hlim
            proto = ip.p
            frag = next((h for h in ip.all_extension_headers if isinstance(h, dpkt.ip6.IP6FragmentHeader)), None)
            if frag is not None and frag.frag_off:  # a non-first fragment carries no transport header
                raise Skip("ip_fragment")
            first_fragment = frag is not None and bool(frag.m_flag)
    except (dpkt.UnpackError, struct.error):
        # An extension header that runs out of bytes behind a whole IP header, in a frame a snaplen cut (captured
        # shorter than on the wire: an IPv6 MLD report's hop-by-hop header at -s 54), is cut, not malformed:
        # truncated_l4, as a cut transport header is. A cut inside the IP header itself stays malformed: its time
        # is kept (CaptureInfo.malformed_frames), and diagnose takes such a frame for the other capture's copy.
        whole_ip = len(ipb) >= (40 if version == 6 else 20)
        raise Skip("truncated_l4" if caplen < wire_len and whole_ip else "malformed") from None
    if ip_len > len(ipb) + (wire_len - caplen) or (version == 4 and ip_len < hdr_len):
        # Longer than the frame was on the wire (its bytes captured, and those a snaplen cut), or an IPv4 total
        # length shorter than its own header: no packet the kernel sent or received; counted, not read (a helper's
        # trial: a total length of 65535 in a 74-byte frame made a spurious "lost mid-connection" finding).
        raise Skip("malformed")
    src, dst = _addr(version, ip.src), _addr(version, ip.dst)
    l4 = ip.data
    sport = dport = None
    tcp_seq = tcp_ack = tcp_flags = tcp_win = None
    payload: bytes = b""
    payload_len = 0
    icmp_type = icmp_code = icmp_id = icmp_seq = icmp_mtu = None
    inner: tuple = (None, None, None, None, None)
    if proto in (6, 17) and not isinstance(l4, dpkt.tcp.TCP if proto == 6 else dpkt.udp.UDP):
        # Cut inside its TCP/UDP header by a snaplen: not read, but its ports (the header's first 4 bytes) may be
        # there, and with them its flow (natproof.assemble reads an unpaired leg of the other capture against it).
        # Cut before its ports (tcpdump -s 34 on IPv4 over Ethernet, -s 54 on IPv6): its whole IP header still
        # gives its protocol and hosts, the flow kept with its ports unknown (None), read by hosts alone.
        raw = l4 if isinstance(l4, bytes) else bytes(l4)
        if caplen >= wire_len:
            raise Skip("truncated_l4")
        ports = struct.unpack_from("!HH", raw) if len(raw) >= 4 else (None, None)
        raise Skip("truncated_l4", (proto, src, ports[0], dst, ports[1]))
    if proto == 6:
        sport, dport = l4.sport, l4.dport
        tcp_seq, tcp_ack, tcp_flags, tcp_win = l4.seq, l4.ack, l4.flags, l4.win
        payload = bytes(l4.data)
        payload_len = max(0, l4_len - l4.off * 4)
    elif proto == 17:
        sport, dport = l4.sport, l4.dport
        payload = bytes(l4.data)
        payload_len = max(0, l4_len - 8)
        if first_fragment and l4.ulen >= 8:
            # A datagram's first fragment: its UDP length is the whole datagram's. Counting that, not the
            # fragment's bytes, the first fragment and the datagram whole (reassembled by the node's conntrack,
            # nf_defrag_ipv4/ipv6, and forwarded so) agree on every field the match signature reads.
            payload_len = l4.ulen - 8
    elif proto in (1, 58):
        if not isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
            raise Skip("truncated_l4")
        icmp_type, icmp_code = l4.type, l4.code
        body = bytes(l4.data) if not isinstance(l4.data, bytes) else l4.data
        echo = (ICMP4_ECHO_REQUEST, ICMP4_ECHO_REPLY) if proto == 1 else (ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY)
        errors = ICMP4_ERRORS if proto == 1 else ICMP6_ERRORS
        if icmp_type in echo:
            if len(body) < 4:
                raise Skip("truncated_l4")
            icmp_id, icmp_seq = struct.unpack_from("!HH", body)
            # Echo request: the identifier plays the source port; the reply carries it as destination port.
            sport, dport = (icmp_id, 0) if icmp_type == echo[0] else (0, icmp_id)
            payload = body[4:]
            payload_len = max(0, l4_len - 8)
        elif icmp_type in errors:
            inner = _quoted(version, body[4:])
            if len(body) >= 4 and (proto, icmp_type, icmp_code) in PATH_MTU_ERRORS:
                # RFC 1191: next-hop MTU in the low 16 bits of the second word; RFC 4443: all 32 bits.
                icmp_mtu = struct.unpack_from("!I", body)[0] & (0xFFFF if proto == 1 else 0xFFFFFFFF)
            payload = body[4:]
            payload_len = max(0, l4_len - 8)
        else:
            raise Skip("icmp_other")
    else:
        raise Skip("other_proto")
    head = xxhash.xxh3_64_intdigest(payload[:HEAD_DIGEST_BYTES]) if payload else None
    return (
        frame_no, ts_ns, wire_len, caplen, iface, ifindex,
        version, src, dst, proto, sport, dport,
        ip_id, ttl, ip_len,
        tcp_seq, tcp_ack, tcp_flags, tcp_win,
        payload_len, len(payload), head,
        icmp_type, icmp_code, icmp_id, icmp_seq,
        *inner,
        icmp_mtu, underlay,
    )


ENCAPS = ("vxlan", "geneve", "ipip", "gre")
"""Names of the encapsulations natproof peels (an underlay's first word): ipip is IP protocol 4 or 41 (IPv4 or
IPv6 inside IPv4 or IPv6: Calico's IPIP, the kernel's ipip, sit and ip6tnl devices)."""


def underlay_label(encap: str, src: str, dst: str, vni: int | None) -> str:
    """The ``underlay`` column's value: "ENCAP SRC DST VNI" ("-" for no VNI or GRE key); parse_underlay reads it."""
    return f"{encap} {src} {dst} {'-' if vni is None else vni}"


def parse_underlay(label: str | None) -> dict | None:
    """An ``underlay`` value as {encap, src, dst, vni} (vni None when absent), None for None."""
    if label is None:
        return None
    encap, src, dst, vni = label.split(" ")
    return {"encap": encap, "src": src, "dst": dst, "vni": None if vni == "-" else int(vni)}


def decapsulate(version: int, ipb: bytes, overlay: Overlay = DEFAULT_OVERLAY) -> tuple[int, bytes, str] | None:
    """The inner packet of an overlay packet: (inner IP version, inner IP bytes, underlay label), or None when the
    packet is no encapsulation natproof peels (it is then decoded as it is).

    Peeled: VXLAN (RFC 7348: UDP to overlay.vxlan_ports, the I flag set, an Ethernet frame after the 8-byte header:
    flannel, Calico-VXLAN, Cilium, AWS Traffic Mirroring), Geneve (RFC 8926: UDP to overlay.geneve_ports, version 0,
    options skipped, Ethernet or IP inside: Antrea, OVN), IP-in-IP (protocol 4 or 41: Calico IPIP) and GRE version 0
    (RFC 2784/2890: checksum, key and sequence fields skipped; the key is the VNI; IP or Ethernet inside). Raises
    Skip("non_ip") for an overlay frame that carries no IP packet (ARP inside VXLAN), Skip("malformed") for one cut
    short inside its encapsulation headers. A fragment, or IPv6 with extension headers, is not peeled."""
    if version == 4:
        if len(ipb) < 20 or ipb[0] >> 4 != 4 or struct.unpack_from("!H", ipb, 6)[0] & 0x1FFF:
            return None
        hl = (ipb[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ipb, 2)[0]
        proto = ipb[9]
        src, dst = ipb[12:16], ipb[16:20]
        body = ipb[hl:total] if total >= hl else ipb[hl:]
    else:
        if len(ipb) < 40 or ipb[0] >> 4 != 6:
            return None
        plen = struct.unpack_from("!H", ipb, 4)[0]
        proto = ipb[6]
        src, dst = ipb[8:24], ipb[24:40]
        body = ipb[40:40 + plen] if plen else ipb[40:]
    vni: int | None = None
    if proto in (4, 41):
        encap, inner_v, inner = "ipip", 4 if proto == 4 else 6, body
        if not inner or inner[0] >> 4 != inner_v:
            raise Skip("malformed")
    elif proto == 17:
        if len(body) < 8:
            return None
        dport = struct.unpack_from("!H", body, 2)[0]
        if dport in overlay.vxlan_ports:
            if len(body) < 16 or not body[8] & 0x08:
                return None
            encap, vni = "vxlan", int.from_bytes(body[12:15], "big")
            inner_v, inner = _inner_ethernet(body[16:])
        elif dport in overlay.geneve_ports:
            if len(body) < 16 or body[8] >> 6:
                return None
            start = 16 + (body[8] & 0x3F) * 4
            encap, vni = "geneve", int.from_bytes(body[12:15], "big")
            inner_v, inner = _inner_by_type(struct.unpack_from("!H", body, 10)[0], body[start:])
        else:
            return None
    elif proto == 47:
        if len(body) < 4:
            return None
        flags, ptype = struct.unpack_from("!HH", body)
        if flags & 0x4007 or ptype not in (ETH_IPV4, ETH_IPV6, ETH_TEB):  # routing present, or not version 0
            return None
        off = 4 + (4 if flags & 0x8000 else 0)
        if flags & 0x2000:
            if len(body) < off + 4:
                raise Skip("malformed")
            vni = struct.unpack_from("!I", body, off)[0]
            off += 4
        off += 4 if flags & 0x1000 else 0
        encap = "gre"
        inner_v, inner = _inner_by_type(ptype, body[off:])
    else:
        return None
    return inner_v, inner, underlay_label(encap, _addr(version, src), _addr(version, dst), vni)


VXLAN_LIKE_MIN = 8
"""UDP packets to one port that must look like VXLAN (see vxlan_like) before natproof suggests --vxlan-port."""


def vxlan_like(version: int, ipb: bytes) -> int | None:
    """The UDP destination port of a packet that is not peeled but looks like VXLAN (RFC 7348): flags exactly the I
    flag, reserved bytes zero, then an Ethernet frame carrying IPv4 or IPv6 (an overlay or mirror session on a port
    not given with --vxlan-port); None otherwise. IPv4 without options and IPv6 without extension headers only."""
    if version == 4:
        if len(ipb) < 20 or ipb[0] != 0x45 or ipb[9] != 17:
            return None
        udp = ipb[20:]
    else:
        if len(ipb) < 40 or ipb[6] != 17:
            return None
        udp = ipb[40:]
    if len(udp) < 30 or udp[8] != 0x08 or udp[9:12] != b"\0\0\0" or udp[15] != 0:
        return None
    if struct.unpack_from("!H", udp, 28)[0] not in (ETH_IPV4, ETH_IPV6):
        return None
    return int(struct.unpack_from("!H", udp, 2)[0])


def _inner_by_type(ptype: int, body: bytes) -> tuple[int, bytes]:
    """(version, IP bytes) after a GRE/Geneve protocol type: IP directly, or an Ethernet frame."""
    if ptype == ETH_TEB:
        return _inner_ethernet(body)
    if ptype in (ETH_IPV4, ETH_IPV6):
        if not body:
            raise Skip("malformed")
        return _by_ethertype(ptype, body)
    raise Skip("non_ip")


def _inner_ethernet(frame: bytes) -> tuple[int, bytes]:
    """(version, IP bytes) of an encapsulated Ethernet frame, VLAN tags skipped."""
    return link_payload(1, frame)[:2]


def _quoted(version: int, quoted: bytes) -> tuple:
    """Parse the IP header and first transport bytes an ICMP error quotes: (proto, src, dst, sport, dport).

    A quoted fragment: the ports of a first fragment are read (past an IPv6 fragment header, RFC 8200 4.5: its
    next header is the transport's, so the error joins the flow it quotes, as a whole datagram's would), a later
    fragment has none (its bytes are payload, read as ports before: the error made a leg of its own)."""
    try:
        if version == 4:
            if len(quoted) < 20 or quoted[0] >> 4 != 4:
                raise Skip("malformed")
            hl = (quoted[0] & 0x0F) * 4
            proto = quoted[9]
            src, dst = _addr(4, quoted[12:16]), _addr(4, quoted[16:20])
            later = struct.unpack_from("!H", quoted, 6)[0] & 0x1FFF
        else:
            if len(quoted) < 40 or quoted[0] >> 4 != 6:
                raise Skip("malformed")
            hl, later = 40, 0
            proto = quoted[6]
            src, dst = _addr(6, quoted[8:24]), _addr(6, quoted[24:40])
            if proto == 44 and len(quoted) >= 48:
                proto, hl, later = quoted[40], 48, struct.unpack_from("!H", quoted, 42)[0] >> 3
    except (IndexError, ValueError):
        raise Skip("malformed") from None
    if later:
        return proto, src, dst, None, None
    l4 = quoted[hl:hl + 8]
    sport = dport = None
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
    elif proto in (1, 58) and len(l4) >= 8:
        # A quoted echo request: its identifier is the "source port" of the echo flow.
        sport, dport = struct.unpack_from("!H", l4, 4)[0], 0
    return proto, src, dst, sport, dport
