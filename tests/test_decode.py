"""Tests of natproof/decode.py: link layers, IP, TCP/UDP/ICMP and quoted headers, from byte literals."""

from __future__ import annotations

import struct

import pytest
import xxhash
from pcapbytes import ether, icmp_echo, icmp_error, ipv4, ipv6, sll, sll2, tcp, udp

from natproof.decode import FIELDS, Skip, decode

POD, SRV = "10.244.0.10", "198.51.100.10"
PAYLOAD = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
IP_TCP = ipv4(POD, SRV, 6, tcp(43210, 80, 1000, 2000, 0x18, PAYLOAD), ttl=63, ip_id=777)


def row(linktype: int, frame: bytes, wire_len: int | None = None) -> dict:
    return dict(zip(FIELDS, decode(7, 123, wire_len or len(frame), len(frame), linktype, frame), strict=True))


@pytest.mark.parametrize(
    ("linktype", "frame", "ifindex"),
    [
        (1, ether(IP_TCP), -1),
        (1, ether(IP_TCP, vlans=(100,)), -1),
        (1, ether(IP_TCP, vlans=(100, 200)), -1),  # QinQ
        (113, sll(IP_TCP), -1),
        (276, sll2(IP_TCP, ifindex=5), 5),
        (101, IP_TCP, -1),
        (228, IP_TCP, -1),
        (0, struct.pack("<I", 2) + IP_TCP, -1),  # NULL, little-endian AF_INET
        (108, struct.pack(">I", 2) + IP_TCP, -1),  # LOOP, network order
    ],
)
def test_every_link_type_reaches_the_same_tcp_fields(linktype: int, frame: bytes, ifindex: int) -> None:
    r = row(linktype, frame)
    assert (r["src"], r["sport"], r["dst"], r["dport"], r["proto"]) == (POD, 43210, SRV, 80, 6)
    assert (r["tcp_seq"], r["tcp_ack"], r["tcp_flags"], r["ttl"], r["ip_id"]) == (1000, 2000, 0x18, 63, 777)
    assert r["payload_len"] == len(PAYLOAD) == r["payload_captured_len"]
    assert r["head_digest"] == xxhash.xxh3_64_intdigest(PAYLOAD[:32])
    assert r["ifindex"] == ifindex
    assert (r["frame_no"], r["ts_ns"]) == (7, 123)


def test_snaplen_cut_payload_keeps_the_length_from_the_ip_header() -> None:
    frame = ether(IP_TCP)[:14 + 20 + 20 + 10]
    r = row(1, frame, wire_len=len(ether(IP_TCP)))
    assert r["payload_len"] == len(PAYLOAD)
    assert r["payload_captured_len"] == 10
    assert r["head_digest"] == xxhash.xxh3_64_intdigest(PAYLOAD[:10])


def test_ethernet_padding_is_not_payload() -> None:
    # A 60-byte minimum frame pads a bare ACK; scapy's len(payload) would count the padding.
    ip = ipv4(POD, SRV, 6, tcp(1, 2, 3, 4, 0x10))
    r = row(1, ether(ip) + b"\0" * 6)
    assert r["payload_len"] == 0 and r["head_digest"] is None


def test_udp_and_ipv6() -> None:
    r = row(1, ether(ipv6("fd00::5", "2001:db8::1", 17, udp(5353, 53, b"abc"), hlim=7), ethertype=0x86DD))
    assert (r["ip_version"], r["src"], r["dst"], r["sport"], r["dport"]) == (6, "fd00::5", "2001:db8::1", 5353, 53)
    assert (r["ttl"], r["ip_id"], r["payload_len"]) == (7, None, 3)


def test_icmp_echo_identifier_plays_the_port() -> None:
    req = row(101, ipv4(POD, SRV, 1, icmp_echo(8, 0x1234, 9, b"ping")))
    rep = row(101, ipv4(SRV, POD, 1, icmp_echo(0, 0x1234, 9, b"ping")))
    assert (req["sport"], req["dport"], req["icmp_id"], req["icmp_seq"]) == (0x1234, 0, 0x1234, 9)
    assert (rep["sport"], rep["dport"]) == (0, 0x1234)


def test_icmp_error_quotes_the_offending_tuple() -> None:
    quoted = ipv4("203.0.113.2", SRV, 17, udp(40000, 9999, b"x" * 20))[:28]
    r = row(101, ipv4(SRV, "203.0.113.2", 1, icmp_error(3, 3, quoted)))
    assert (r["icmp_type"], r["icmp_code"]) == (3, 3)
    assert (r["inner_proto"], r["inner_src"], r["inner_dst"], r["inner_sport"], r["inner_dport"]) == (
        17, "203.0.113.2", SRV, 40000, 9999)
    assert r["sport"] is None


@pytest.mark.parametrize(
    ("linktype", "frame", "reason"),
    [
        (1, ether(b"\0" * 28, ethertype=0x0806), "non_ip"),  # ARP
        (1, b"\x01\x02", "malformed"),
        (147, IP_TCP, "unsupported_link"),
        (101, ipv4(POD, "224.0.0.22", 2, b"\x22" + b"\0" * 7), "other_proto"),  # IGMP
        (101, ipv6("fe80::1", "ff02::2", 58, struct.pack("!BBHI", 133, 0, 0, 0)), "icmp_other"),  # RS
        (101, ipv4(POD, SRV, 6, b"\x00\x50"), "truncated_l4"),
        (101, ipv4(POD, SRV, 17, udp(1, 2, b"abcdefgh"), frag=0x0010), "ip_fragment"),
        # IPv6: a fragment header (next header 44) with a non-zero offset (154 x 8 bytes), more fragments or not.
        (101, ipv6("2001:db8:244::10", "2001:db8:ff::99", 44, struct.pack("!BBHI", 17, 0, 154 << 3, 7) + b"x" * 176),
         "ip_fragment"),
        (101, ipv6("2001:db8:244::10", "2001:db8:ff::99", 44, struct.pack("!BBHI", 17, 0, 1 << 3 | 1, 7) + b"x" * 16),
         "ip_fragment"),
    ],
)
def test_frames_without_a_connection_are_skipped_with_a_reason(linktype: int, frame: bytes, reason: str) -> None:
    with pytest.raises(Skip) as exc:
        decode(1, 0, len(frame), len(frame), linktype, frame)
    assert exc.value.reason == reason


def _first_fragment(v6: bool, datagram: bytes, cut: int) -> bytes:
    """The first fragment (``cut`` bytes of ``datagram``'s UDP header and payload) as a pod's stack sends it."""
    if v6:
        return ipv6("2001:db8:244::10", "2001:db8:ff::99", 44, struct.pack("!BBHI", 17, 0, 1, 0xA6DCF8C4)
                    + datagram[:cut])
    return ipv4(POD, SRV, 17, datagram[:cut], ip_id=4242, frag=0x2000)


@pytest.mark.parametrize("v6", [False, True])
def test_a_first_fragment_is_the_whole_datagram_its_udp_header_describes(v6: bool) -> None:
    # tests/variants/pmtud6: a pod fragments a 1400-byte datagram (1232 bytes, then 176), the node's conntrack
    # reassembles it and forwards it whole. The first fragment's UDP length is the datagram's: payload_len counts
    # that, so the fragment and the whole copy agree on every field the match signature reads.
    datagram = udp(54979, 7, bytes(range(256)) * 5 + b"z" * 120)
    whole = row(101, ipv6("2001:db8:100::2", "2001:db8:ff::99", 17, datagram) if v6
                else ipv4("203.0.113.2", SRV, 17, datagram, ip_id=4242))
    first = row(101, _first_fragment(v6, datagram, 1232))
    assert whole["payload_len"] == first["payload_len"] == 1400
    assert (first["payload_captured_len"], first["ip_len"]) == (1224, 1280 if v6 else 1252)
    assert first["head_digest"] == whole["head_digest"]
    assert (first["sport"], first["dport"], first["ip_id"]) == (54979, 7, None if v6 else 4242)
    # Not a fragment after all (an atomic fragment: offset 0, no more): its own length.
    atomic = ipv6("2001:db8::1", "2001:db8::2", 44, struct.pack("!BBHI", 17, 0, 0, 1)
                  + udp(1, 2, b"abc"))
    assert row(101, atomic)["payload_len"] == 3
