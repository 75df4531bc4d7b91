"""Tests of natproof/match.py: keys, clock offset, one-to-one pairing, GRO byte ranges, payload fallback."""

from __future__ import annotations

import polars as pl
from pcapbytes import frame_of, icmp_echo, ipv4, ipv6, tcp, tcp_pair, udp

from natproof.connections import group_connections
from natproof.match import estimate_clock_offset, match_sides, with_keys

POD, NODE, SRV = "10.244.0.10", "203.0.113.2", "198.51.100.10"
T0, S = 1_700_000_000 * 10**9, 10**9


def keyed(rows: list[tuple[int, bytes]]) -> pl.DataFrame:
    pk, _ = group_connections(frame_of(rows))
    return with_keys(pk)


def frames_of_pairs(inside: pl.DataFrame, outside: pl.DataFrame, pairs: pl.DataFrame) -> list[tuple[int, int]]:
    j = pairs.join(inside.select(pl.col("row").alias("in_row"), pl.col("frame_no").alias("fi")), on="in_row")
    j = j.join(outside.select(pl.col("row").alias("out_row"), pl.col("frame_no").alias("fo")), on="out_row")
    return sorted(j.select("fi", "fo").iter_rows())


def test_offset_cancels_nat_latency_ntp_style() -> None:
    # Egress copies are 30 us later outside, replies 30 us later inside: offset is exactly the clock skew.
    inside, outside = tcp_pair(T0, offset_ns=3_500_000_000)
    assert estimate_clock_offset(keyed(inside), keyed(outside)) == 3_500_000_000


def test_sub_millisecond_offset_is_reported_as_synchronised() -> None:
    inside, outside = tcp_pair(T0, offset_ns=40_000)
    assert estimate_clock_offset(keyed(inside), keyed(outside)) == 0


def test_every_packet_pairs_with_its_translated_copy() -> None:
    inside, outside = tcp_pair(T0, nat_sport=61000, offset_ns=-2 * S)
    a, b = keyed(inside), keyed(outside)
    m = match_sides(a, b)
    assert m.clock_offset_ns == -2 * S
    # Both captures list the 8 packets in the same order: frame k matches frame k.
    assert frames_of_pairs(a, b, m.pairs) == [(k, k) for k in range(1, 9)]
    assert set(m.pairs["method"]) == {"exact"}


def test_retransmissions_pair_one_to_one_by_time() -> None:
    syn = lambda ip_id, src=POD: ipv4(src, SRV, 6, tcp(40000, 80, 100, 0, 0x02), ip_id=ip_id)  # noqa: E731
    # Same SYN (same ip_id 0, as DF packets often carry) sent three times 1 s apart; the outside lost the 2nd.
    inside = [(T0, syn(0)), (T0 + S, syn(0)), (T0 + 2 * S, syn(0))]
    outside = [(T0 + 40_000, syn(0, NODE)), (T0 + 2 * S + 40_000, syn(0, NODE))]
    a, b = keyed(inside), keyed(outside)
    m = match_sides(a, b, clock_offset_ns=0, tolerance_ns=S // 2)
    assert frames_of_pairs(a, b, m.pairs) == [(1, 1), (3, 2)]


def test_identical_ipv6_dup_acks_pair_with_the_nearest_copy_so_the_lost_one_is_cited() -> None:
    # Trial s04: an IPv6 pod (no IP id) sends four byte-identical ACKs 100-200 us apart; the node drops the third,
    # each other one leaves eth0 25 us later. Only time tells them apart: the one left unpaired must be the third
    # (inside frame 6 here), not whichever the n-th outside copy would rank against.
    pod, node, srv = "fd00:10:244::10", "2001:db8:1::2", "2001:db8:100::10"
    pkt = lambda src, dst, sp, dp, seq, ack, fl: ipv6(src, dst, 6, tcp(sp, dp, seq, ack, fl))  # noqa: E731
    out = lambda src, dst, sp, dp, seq, ack, fl: ipv6(src, dst, 6, tcp(sp, dp, seq, ack, fl), hlim=63)  # noqa: E731
    inside = [(T0, pkt(pod, srv, 41300, 443, 100, 0, 0x02)),
              (T0 + 10_025_000, pkt(srv, pod, 443, 41300, 900, 101, 0x12)),
              (T0 + 10_100_000, pkt(pod, srv, 41300, 443, 101, 901, 0x10))]
    outside = [(T0 + 25_000, out(node, srv, 41300, 443, 100, 0, 0x02)),
               (T0 + 10_000_000, out(srv, node, 443, 41300, 900, 101, 0x12)),
               (T0 + 10_125_000, out(node, srv, 41300, 443, 101, 901, 0x10))]
    sent = [21_150_000, 21_350_000, 21_450_000, 21_550_000]
    inside += [(T0 + t, pkt(pod, srv, 41300, 443, 101, 3000, 0x10)) for t in sent]
    outside += [(T0 + t + 25_000, out(node, srv, 41300, 443, 101, 3000, 0x10)) for t in sent if t != 21_450_000]
    a, b = keyed(inside), keyed(outside)
    m = match_sides(a, b)
    assert m.clock_offset_ns == 0
    assert frames_of_pairs(a, b, m.pairs) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (7, 6)]


def test_gro_merged_outside_segments_match_by_byte_range() -> None:
    seg = lambda src, seq, data: ipv4(SRV, src, 6, tcp(80, 40000, seq, 77, 0x10, data), ip_id=seq)  # noqa: E731
    chunks = [bytes([65 + i]) * 1000 for i in range(3)]
    inside = [(T0 + 100_000 + i, seg(POD, 5000 + 1000 * i, c)) for i, c in enumerate(chunks)]
    outside = [(T0, seg(NODE, 5000, b"".join(chunks)))]  # one merged packet, as GRO hands it to tcpdump
    a, b = keyed(inside), keyed(outside)
    m = match_sides(a, b, clock_offset_ns=0)
    assert frames_of_pairs(a, b, m.pairs) == [(1, 1), (2, 1), (3, 1)]
    assert set(m.pairs["method"]) == {"bytes"}


def _segments(src: str, dst: str, seq: int, data: bytes, ip_id: int, mss: int = 1000) -> list[bytes]:
    """``data`` sent from ``seq`` as segments of ``mss`` bytes, IP ids counting up from ``ip_id``, as software
    segmentation of a GSO packet gives them (and GRO merges them)."""
    sport, dport = (40000, 80) if src in (POD, NODE) else (80, 40000)
    return [ipv4(src, dst, 6, tcp(sport, dport, (seq + k) % 2**32, 77, 0x10, data[k:k + mss]), ip_id=(ip_id + k // mss))
            for k in range(0, len(data), mss)]


def test_a_gso_packet_whole_inside_pairs_with_every_segment_outside_across_the_sequence_wrap() -> None:
    # The pod's veth shows one GSO packet; an uplink without TSO has the node segment it before eth0's tap. Its
    # bytes run past 2**32: the segments after the wrap are inside it too.
    data = bytes(range(256)) * 32
    start = 2**32 - 2500
    inside = [(T0, ipv4(POD, SRV, 6, tcp(40000, 80, start, 77, 0x18, data), ip_id=300))]
    outside = [(T0 + 30_000 + k * 2_000, p) for k, p in enumerate(_segments(NODE, SRV, start, data, 300))]
    a, b = keyed(inside), keyed(outside)
    m = match_sides(a, b, clock_offset_ns=0)
    assert frames_of_pairs(a, b, m.pairs) == [(1, k) for k in range(1, 10)]
    assert set(m.pairs["method"]) == {"bytes"}


def test_of_two_copies_of_a_segment_the_one_whose_ip_id_follows_the_merge_pairs_with_it() -> None:
    # GRO merges only segments whose IP ids count up from the merged packet's; a retransmitted copy of the third
    # segment (another id), nearer the merge in time, is not the one merged.
    data = bytes(range(200)) * 40
    segs = _segments(SRV, POD, 5000, data, 700)
    inside = [(T0 + 30_000 + k * 2_000, p) for k, p in enumerate(segs)]
    inside.append((T0 + 20_000, ipv4(SRV, POD, 6, tcp(80, 40000, 7000, 77, 0x10, data[2000:3000]), ip_id=9000)))
    inside.sort()
    outside = [(T0, ipv4(SRV, NODE, 6, tcp(80, 40000, 5000, 77, 0x18, data), ip_id=700))]
    a, b = keyed(inside), keyed(outside)
    m = match_sides(a, b, clock_offset_ns=0)
    paired = [fi for fi, _ in frames_of_pairs(a, b, m.pairs)]
    assert paired == [2, 3, 4, 5, 6, 7, 8, 9]  # frame 1 is the retransmitted copy


def test_payload_head_matches_when_a_middlebox_rewrites_sequence_numbers() -> None:
    data = b"POST /upload HTTP/1.1\r\n\r\n" + b"x" * 100
    inside = [(T0, ipv4(POD, SRV, 6, tcp(40000, 80, 1000, 1, 0x18, data), ip_id=5))]
    outside = [(T0 + 30_000, ipv4(NODE, SRV, 6, tcp(40000, 80, 987654, 1, 0x18, data), ip_id=5))]
    a, b = keyed(inside), keyed(outside)
    m = match_sides(a, b, clock_offset_ns=0)
    assert m.pairs["method"].to_list() == ["payload"]


def test_payload_lookalikes_pair_only_forward_in_time_against_a_grounded_offset() -> None:
    # A trial: an unrelated capture of alike HTTP exchanges, moved onto the inside's time, paired on payload heads
    # alone, each reply crossing before it was sent. The payload pass keeps only pairs that cross forward in time
    # against an offset other packets (or the user) give, and none when nothing else ties the clocks.
    req, resp = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 40
    inside = [(T0, ipv4(POD, SRV, 6, tcp(40000, 80, 1000, 1, 0x18, req), ip_id=5)),
              (T0 + 2_000_000, ipv4(SRV, POD, 6, tcp(80, 40000, 1, 1000 + len(req), 0x18, resp), ip_id=9))]
    a = keyed(inside)

    def outside(egress_dt: int, reply_dt: int) -> pl.DataFrame:  # each packet's outside time minus inside time
        return keyed([(T0 + egress_dt, ipv4(NODE, SRV, 6, tcp(40000, 80, 777, 5, 0x18, req), ip_id=50)),
                      (T0 + 2_000_000 + reply_dt, ipv4(SRV, NODE, 6, tcp(80, 40000, 5, 777 + len(req), 0x18, resp),
                                                       ip_id=90))])

    causal = match_sides(a, outside(30_000, -30_000), clock_offset_ns=0)
    assert causal.pairs["method"].to_list() == ["payload", "payload"] and causal.refused_lookalikes == 0
    # The reply 0.4 s "before" it reached the inside capture against a given offset: refused, the egress kept.
    late = match_sides(a, outside(30_000, 400_000_000), clock_offset_ns=0)
    assert late.pairs["method"].to_list() == ["payload"] and late.refused_lookalikes == 1
    # Nothing else pairs and no offset is given: nothing ties the clocks, both refused.
    alone = match_sides(a, outside(30_000, -30_000))
    assert alone.pairs.is_empty() and alone.refused_lookalikes == 2 and not alone.offset_grounded


def test_a_rewritten_destination_still_matches() -> None:
    # kube-proxy DNATs a ClusterIP to its endpoint and MASQUERADE rewrites the source: no address or port is
    # left in common (cases/clusterip-dnat), the packet's own fields are.
    inside = [(T0, ipv4(POD, "10.96.0.1", 6, tcp(40000, 443, 1000, 0, 0x02), ip_id=7))]
    outside = [(T0 + 20_000, ipv4(NODE, SRV, 6, tcp(40000, 6443, 1000, 0, 0x02), ip_id=7))]
    a, b = keyed(inside), keyed(outside)
    assert frames_of_pairs(a, b, match_sides(a, b, clock_offset_ns=0).pairs) == [(1, 1)]


def test_different_packets_never_match() -> None:
    inside = [(T0, ipv4(POD, SRV, 6, tcp(40000, 80, 1000, 0, 0x02)))]
    outside = [(T0, ipv4(NODE, SRV, 6, tcp(40000, 80, 1001, 0, 0x02)))]
    assert match_sides(keyed(inside), keyed(outside)).pairs.is_empty()


def test_alg_sequence_shift_pairs_on_ip_id_within_linked_legs() -> None:
    # conntrack's FTP helper rewrote a PORT command one byte longer: the next segment's seq is +1 outside
    # (cases/ftp-alg-active). The SYN links the legs; the IP id pairs the shifted segment.
    inside = [(T0, ipv4(POD, SRV, 6, tcp(40000, 21, 1000, 0, 0x02), ip_id=7)),
              (T0 + S // 10, ipv4(POD, SRV, 6, tcp(40000, 21, 1030, 5, 0x18, b"NOOP\r\n"), ip_id=9))]
    outside = [(T0 + 20_000, ipv4(NODE, SRV, 6, tcp(40000, 21, 1000, 0, 0x02), ip_id=7)),
               (T0 + S // 10 + 20_000, ipv4(NODE, SRV, 6, tcp(40000, 21, 1031, 5, 0x18, b"NOOP\r\n"), ip_id=9))]
    a, b = keyed(inside), keyed(outside)
    m = match_sides(a, b, clock_offset_ns=0)
    assert frames_of_pairs(a, b, m.pairs) == [(1, 1), (2, 2)]
    shifted = m.pairs.filter(pl.col("method") == "ip_id")
    assert shifted["seq_delta"].to_list() == [1]


def test_hairpin_copies_pair_within_one_capture() -> None:
    # A pod calls a Service it backs: its veth sees the SYN to the ClusterIP, then the same SYN DNATed back to it
    # and masqueraded to the bridge address.
    inside = [(T0, ipv4(POD, "10.96.0.20", 6, tcp(40000, 80, 1000, 0, 0x02), ip_id=7)),
              (T0 + 30_000, ipv4("10.244.0.1", POD, 6, tcp(51000, 8080, 1000, 0, 0x02), ip_id=7))]
    a = keyed(inside)
    m = match_sides(a, keyed([(T0, ipv4(NODE, SRV, 17, udp(1, 2, b"x")))]), clock_offset_ns=0)
    assert m.pairs.is_empty()
    assert m.inside_self.select("a_row", "b_row").rows() == [(0, 1)]


def test_offset_found_even_when_no_key_is_unique() -> None:
    # Two pods send the same datagram (IP id 0, same payload) to the same server: keys collide.
    dgram = lambda src, sport: ipv4(src, SRV, 17, udp(sport, 53, b"same"), ip_id=0)  # noqa: E731
    inside = [(T0, dgram(POD, 1000)), (T0 + 1000, dgram("10.244.0.11", 1000))]
    outside = [(T0 + 5_000_040, dgram(NODE, 1000)), (T0 + 5_001_040, dgram(NODE, 33333))]
    a, b = keyed(inside), keyed(outside)
    assert estimate_clock_offset(a, b) is None
    m = match_sides(a, b)
    assert m.clock_offset_ns == 5_000_040
    assert frames_of_pairs(a, b, m.pairs) == [(1, 1), (2, 2)]


def test_copies_with_the_same_two_addresses_are_no_hairpin() -> None:
    """Found by a helper: two SYNs from one pod's ports to one ClusterIP, alike in every field the key holds
    (synthetic: the same ISN and IP id), paired as a hairpin's two copies, and the Service's refusals became a
    translated 'hairpin'. A hairpin's second copy is DNATed (and masqueraded): its addresses differ."""
    from natproof.match import pair_within

    side = pl.DataFrame({"row": [0, 1, 2, 3], "k_strong": [7, 7, 9, 9], "ts_ns": [0, 50, 0, 20],
                         "conn_id": [0, 1, 2, 3],
                         "local": ["10.244.0.10", "10.244.0.10", "10.244.0.10", "10.244.0.1"],
                         "remote": ["10.96.0.30", "10.96.0.30", "10.96.0.50", "10.244.0.10"]})
    pairs = pair_within(side, tolerance_ns=100)
    assert pairs.select("a_row", "b_row").rows() == [(2, 3)]


def test_a_weak_datagrams_dnated_copy_pairs_only_on_another_interface_from_the_same_client_port() -> None:
    """An IPv6 datagram (no IP id) keeps its far end in the strong key, so its copy DNATed to a Service's endpoint
    on the node (on the endpoint's veth, tcpdump -i any) pairs on the loose key. Identical queries one socket
    sends to two nameservers at once (musl) are on the client's veth alone, and another socket's are another
    client: neither pairs."""
    from natproof.match import pair_within

    pod, vip, backend = "2001:db8:244::10", "2001:db8:96::10", "2001:db8:244::11"
    veth_a, veth_b = 5, 6
    side = pl.DataFrame({
        "row": [0, 1, 2, 3, 4, 5], "k_strong": [1, 2, 3, 4, 5, 6], "k_loose": [7, 7, 8, 8, 9, 9],
        "ts_ns": [0, 4_000, 10**7, 10**7 + 3_000, 2 * 10**7, 2 * 10**7 + 4_000], "conn_id": [0, 1, 2, 3, 4, 5],
        "local": [pod] * 6, "lport": [40000, 40000, 40001, 40001, 40002, 40003],
        "remote": [vip, backend, vip, "2001:db8:96::11", vip, backend], "rport": [53] * 6,
        "dnat_end": [True] * 6, "where": [veth_a, veth_b, veth_a, veth_a, veth_a, veth_b]})
    assert pair_within(side).select("a_row", "b_row").rows() == [(0, 1)]


def test_ipv6_clusterip_datagrams_pair_across_dnat_and_name_the_service() -> None:
    # Kernel capture (tests/variants/clusterip6): IPv6 ClusterIPs in 2001:db8:96::/112, outside the default Service
    # network, DNATed by ip6tables. An IPv6 datagram has no IP id, so its key keeps the far end, which the DNAT to
    # [2001:db8:ff::10]:53 changed: the UDP flow read not_captured though eth0 held its six datagrams. A far end the
    # outside capture never shows (a Service address is virtual) is one a DNAT may stand for, whatever its prefix:
    # the datagrams pair without it. The ClusterIP is named only where a Service network (or a dump) says so: a
    # public address DNATed on the node may as well be a LoadBalancer's ingress IP that kube-proxy short-circuits.
    import json
    from ipaddress import ip_network
    from pathlib import Path

    import natproof
    import natproof.check
    from natproof.assemble import Services
    from natproof.result import connection_dicts

    case = Path(__file__).resolve().parent / "variants" / "clusterip6"
    truth = json.loads((case / "truth.json").read_text())
    for files in ((case / "inside.pcap", case / "outside.pcap"), (case / "any.pcap",)):
        rows = {(c["proto"], c["inside"]["dst"]): c for c in connection_dicts(natproof.correlate(*files).connections)}
        udp = rows[("udp", "2001:db8:96::53")]
        assert udp["verdict"] == "translated" and udp["fates"]["crossed"] == 6
        assert udp["translated"]["dst"] == "2001:db8:ff::10" and udp["service"] is None
        assert rows[("tcp", "2001:db8:96::1")]["verdict"] == "translated"
        assert rows[("tcp", "2001:db8:ff::10")]["service"] is None  # plain egress: its destination is on eth0
        local = rows[("udp", "2001:db8:96::10")]
        if len(files) == 2:
            # Served on the node by pod2, out of both captures' sight: no DNAT seen, so only a Service network says so.
            assert local["verdict"] == "not_captured"
        else:
            # any.pcap holds pod2's port: the DNATed copy pairs there (its far end, too, is never on eth0).
            assert local["verdict"] == "translated" and local["translated"]["dst"] == "2001:db8:244::11"
    named = natproof.correlate(case / "inside.pcap", case / "outside.pcap",
                               services=Services(networks=(ip_network("2001:db8:96::/112"),)))
    report = natproof.check.compare(named, truth)
    assert report.expected == report.found == report.mapping_right == report.verdict_right == 7
    rows = {(c["proto"], c["inside"]["dst"]): c for c in connection_dicts(named.connections)}
    assert rows[("udp", "2001:db8:96::53")]["service"] == {
        "type": "ClusterIP", "address": "2001:db8:96::53", "port": 53,
        "backend": {"address": "2001:db8:ff::10", "port": 53}}


def keyed_cut(rows: list[tuple[int, bytes]], snaplen: int | None) -> pl.DataFrame:
    pk, _ = group_connections(frame_of(rows, snaplen=snaplen))
    return with_keys(pk)


DNS, QUERY = "198.51.100.53", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
ANSWER = QUERY[:2] + b"\x81\x80" + QUERY[4:] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc0\x00\x02\x01"


def dns_rows(t: int, src: str, sport: int, query: bytes = QUERY, answer: bytes = ANSWER, *, outside: bool,
             ip_id: int = 0) -> list[tuple[int, bytes]]:
    """A DNS query and its answer (IP id 0, as Linux sends UDP with DF... and as the trial's), seen inside or
    outside: the outside copy of the query 30 us after the inside one, of the answer 30 us before."""
    lat = 30_000 if outside else 0
    return [(t + lat, ipv4(src, DNS, 17, udp(sport, 53, query), ip_id=ip_id)),
            (t + 5_000_000 + 30_000 - lat, ipv4(DNS, src, 17, udp(53, sport, answer), ip_id=ip_id))]


def test_datagrams_cut_short_on_one_side_still_pair() -> None:
    # A trial (s08b): the inside captured with snaplen 64, the outside whole. The DNS payload's head digest covers
    # the 10 bytes the inside kept and the 29 the outside did: they differ, and the exchange read as never having
    # crossed. Its length, IP id and far end agree, and TCP of the same captures grounds the clock.
    tcp_in, tcp_out = tcp_pair(T0)
    a = keyed_cut([*tcp_in, *dns_rows(T0 + S, POD, 53000, outside=False)], 20 + 20 + 10)
    b = keyed_cut([*tcp_out, *dns_rows(T0 + S, NODE, 53000, outside=True)], None)
    m = match_sides(a, b)
    assert frames_of_pairs(a, b, m.pairs) == [(k, k) for k in range(1, 11)]
    got = m.pairs.join(a.select(pl.col("row").alias("in_row"), "proto"), on="in_row")
    assert got.filter(pl.col("proto") == 17)["method"].to_list() == ["datagram", "datagram"]
    assert set(got.filter(pl.col("proto") == 6)["method"]) == {"exact"}


def test_a_cut_datagram_pairs_with_its_own_copy_not_a_lookalike_of_another_time_or_far_end() -> None:
    # Two pods' queries of one length to one resolver, 20 ms apart; the inside cut them both. Each pairs with the
    # nearest copy forward in time, never with the copy 2 s before (a look-alike in time), and a whole query to
    # another resolver is no candidate at all.
    other = "192.0.2.53"
    tcp_in, tcp_out = tcp_pair(T0)
    q2 = QUERY[:1] + b"\x99" + QUERY[2:]
    inside = [*tcp_in, *dns_rows(T0 + S, POD, 53000, outside=False)[:1],
              *dns_rows(T0 + S + 20_000_000, "10.244.0.11", 53002, q2, outside=False)[:1]]
    outside = [*tcp_out, (T0 - S, ipv4(NODE, DNS, 17, udp(53004, 53, QUERY), ip_id=0)),
               (T0 + S + 30_000, ipv4(NODE, other, 17, udp(53000, 53, QUERY), ip_id=0)),
               *dns_rows(T0 + S, NODE, 53000, outside=True)[:1],
               *dns_rows(T0 + S + 20_000_000, NODE, 53002, q2, outside=True)[:1]]
    a, b = keyed_cut(sorted(inside), 20 + 20), keyed_cut(sorted(outside), None)  # TCP headers whole
    m = match_sides(a, b, tolerance_ns=3 * S)
    dgram = m.pairs.filter(pl.col("method") == "datagram")
    ports = lambda df, rows: df.select("lport").gather(rows).to_series().to_list()  # noqa: E731
    assert ports(a, dgram["in_row"]) == ports(b, dgram["out_row"]) == [53000, 53002]
    assert b["remote"].gather(dgram["out_row"]).cast(pl.String).to_list() == [DNS, DNS]


def test_whole_datagrams_with_different_heads_still_never_pair() -> None:
    # Both sides hold the queries whole: unlike payload heads are two datagrams, the IP id alone no reason to pair.
    tcp_in, tcp_out = tcp_pair(T0)
    q2 = QUERY[:1] + b"\x99" + QUERY[2:]
    a = keyed([*tcp_in, *dns_rows(T0 + S, POD, 53000, outside=False)[:1]])
    b = keyed([*tcp_out, *dns_rows(T0 + S, NODE, 53000, q2, outside=True)[:1]])
    assert "datagram" not in set(match_sides(a, b).pairs["method"])


def test_a_cut_datagram_with_nothing_else_to_ground_the_clock_pairs_only_when_alone() -> None:
    # A trial (s08c): snaplen 44 cut every TCP header on the inside, only the DNS exchange is left to pair. With
    # one candidate each way it pairs; with a second query alike from another pod, neither is sure.
    a = keyed_cut(dns_rows(T0, POD, 53000, outside=False), 20 + 8 + 2)
    b = keyed_cut(dns_rows(T0, NODE, 53000, outside=True), None)
    assert frames_of_pairs(a, b, match_sides(a, b).pairs) == [(1, 1), (2, 2)]
    two = keyed_cut([*dns_rows(T0, POD, 53000, outside=False)[:1],
                     *dns_rows(T0 + 1_000_000, "10.244.0.11", 53002, outside=False)[:1]], 20 + 8 + 2)
    assert match_sides(two, keyed_cut(dns_rows(T0, NODE, 53000, outside=True)[:1], None)).pairs.is_empty()


def echo_rows(ident: int, ip_ids: list[int], *, outside: bool) -> list[tuple[int, bytes]]:
    """Three pings (alike payloads) 200 ms apart and their replies; outside: behind a NAT that gives each request a
    new identifier and IP id, the replies' IP ids kept (the replier's)."""
    rows = []
    for i, ip_id in enumerate(ip_ids):
        t = T0 + i * 200_000_000
        lat = 30_000 if outside else 0
        pod = NODE if outside else POD
        rows.append((t + lat, ipv4(pod, SRV, 1, icmp_echo(8, ident, i + 1, b"abcdefgh" * 7), ip_id=ip_id)))
        rows.append((t + 10_000_000 + 30_000 - lat, ipv4(SRV, pod, 1, icmp_echo(0, ident, i + 1, b"abcdefgh" * 7),
                                                         ip_id=9100 + i)))
    return rows


def test_echo_requests_whose_ip_id_a_nat_rewrote_pair_within_legs_their_replies_link() -> None:
    # A trial (s17): pf's scrub random-id gave each request a new IP id (and identifier). The replies pair exactly
    # and link the legs; the requests pair there on length, payload head, type and sequence, each with its own.
    a = keyed(echo_rows(0x0101, [7000, 7001, 7002], outside=False))
    b = keyed(echo_rows(0x7777, [41000, 17, 60000], outside=True))
    m = match_sides(a, b)
    assert frames_of_pairs(a, b, m.pairs) == [(k, k) for k in range(1, 7)]
    requests = m.pairs.filter(pl.col("method") == "datagram")
    assert a["frame_no"].gather(requests["in_row"]).to_list() == [1, 3, 5]
    # No reply pairs the legs: the rewritten requests have nothing to tie them, and stay apart.
    lone_a, lone_b = (keyed([r for r in rows if r[1][20] == 8]) for rows in (
        echo_rows(0x0101, [7000, 7001, 7002], outside=False), echo_rows(0x7777, [41000, 17, 60000], outside=True)))
    assert match_sides(lone_a, lone_b).pairs.is_empty()


def test_a_rewritten_ip_id_pairs_only_forward_in_time() -> None:
    # The outside copy of a request 50 ms before the inside one cannot be it: that request is left unpaired.
    a = keyed(echo_rows(0x0101, [7000], outside=False))
    early = [(t - 50_000_000 if p[20] == 8 else t, p) for t, p in echo_rows(0x7777, [41000], outside=True)]
    m = match_sides(a, keyed(early))
    assert m.pairs["method"].to_list() == ["exact"]
