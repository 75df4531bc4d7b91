"""Tests of natproof/connections.py: 5-tuples, reuse, direction, ICMP echo and errors."""

from __future__ import annotations

from pcapbytes import frame_of, icmp_echo, icmp_error, ipv4, tcp, udp

from natproof.connections import group_connections

POD, SRV, S = "10.244.0.10", "198.51.100.10", 1_000_000_000
SYN, SYNACK, ACK = 0x02, 0x12, 0x10


def syn(t: int, seq: int, sport: int = 40000) -> tuple[int, bytes]:
    return t, ipv4(POD, SRV, 6, tcp(sport, 80, seq, 0, SYN))


def synack(t: int, seq: int, ack: int, dport: int = 40000) -> tuple[int, bytes]:
    return t, ipv4(SRV, POD, 6, tcp(80, dport, seq, ack, SYNACK))


def test_syn_retransmission_stays_one_connection_and_direction_follows_the_syn() -> None:
    pk, conns = group_connections(frame_of([syn(0, 100), syn(1 * S, 100), synack(1 * S + 5, 900, 101)]))
    assert conns.height == 1
    c = conns.row(0, named=True)
    assert (c["src"], c["sport"], c["dst"], c["dport"], c["proto"]) == (POD, 40000, SRV, 80, 6)
    assert (c["egress_packets"], c["reply_packets"]) == (2, 1)
    assert pk.sort("frame_no")["is_egress"].to_list() == [True, True, False]


def test_reused_tuple_with_a_new_isn_is_a_new_connection() -> None:
    rows = [syn(0, 100), synack(10, 900, 101), syn(5 * S, 777777), synack(5 * S + 10, 1, 777778)]
    pk, conns = group_connections(frame_of(rows))
    assert conns.height == 2
    assert conns["first_ts_ns"].to_list() == [0, 5 * S]
    ids = pk.sort("frame_no")["conn_id"].to_list()
    assert ids[0] == ids[1] != ids[2] == ids[3]


def test_udp_idle_gap_splits_like_conntrack() -> None:
    # nf_conntrack_udp_packet: an entry answered and still active 2 s after it was made is a stream, kept 120 s
    # past each packet; any other 30 s (a trial: two pods' flows on one public port 40 s apart were one leg).
    q, a = ipv4(POD, SRV, 17, udp(5000, 53, b"q")), ipv4(SRV, POD, 17, udp(53, 5000, b"a"))
    _, conns = group_connections(frame_of([(0, q), (60 * S, q), (300 * S, q)]))
    assert conns["egress_packets"].to_list() == [1, 1, 1]  # never answered: 30 s each
    stream = [(0, q), (S // 10, a), (3 * S, q), (63 * S, q), (63 * S + S // 10, a), (200 * S, q)]
    _, conns = group_connections(frame_of(stream))
    assert conns.select("egress_packets", "reply_packets").rows() == [(3, 2), (1, 0)]  # 60 s kept, 137 s not
    # Answered within its first 2 s only, then 40 s of silence: expired. The next entry begins at 40 s, so its
    # own silence is judged from there: answered at 40.1 s, active at 43 s (a stream), 80 s of silence kept.
    short = [(0, q), (S // 10, a), (40 * S, q), (40 * S + S // 10, a), (43 * S, q), (123 * S, q)]
    _, conns = group_connections(frame_of(short))
    assert conns.select("first_ts_ns", "egress_packets").rows() == [(0, 1), (40 * S, 3)]
    # An answer's own packet is refreshed before conntrack marks the entry answered: a stream only from the next.
    late = [(0, q), (3 * S, a), (40 * S, q)]
    assert group_connections(frame_of(late))[1].height == 2


def test_icmp_echo_flow_is_keyed_by_identifier() -> None:
    rows = [(0, ipv4(POD, SRV, 1, icmp_echo(8, 77, 1))), (10, ipv4(SRV, POD, 1, icmp_echo(0, 77, 1))),
            (20, ipv4(POD, SRV, 1, icmp_echo(8, 78, 1)))]
    _, conns = group_connections(frame_of(rows))
    got = sorted(conns.select("sport", "dport", "egress_packets", "reply_packets").iter_rows())
    assert got == [(77, 0, 1, 1), (78, 0, 1, 0)]


def test_icmp_error_is_a_reply_of_the_flow_it_quotes() -> None:
    dgram = ipv4(POD, SRV, 17, udp(40000, 9999, b"hello"))
    err = ipv4(SRV, POD, 1, icmp_error(3, 3, dgram[:28]))
    pk, conns = group_connections(frame_of([(0, dgram), (10, err)]))
    assert conns.height == 1
    # Related to the flow, but not a reply: conntrack keeps such an entry [UNREPLIED].
    assert conns.select("egress_packets", "reply_packets", "icmp_error_packets").row(0) == (1, 0, 1)
    assert pk.filter(pk["is_icmp_error"])["is_egress"].to_list() == [False]


def test_packets_caught_mid_connection_then_a_new_syn() -> None:
    mid = (0, ipv4(POD, SRV, 6, tcp(40000, 80, 5000, 6000, ACK)))
    _, conns = group_connections(frame_of([mid, syn(2 * S, 100)]))
    assert conns.height == 2


def test_without_a_syn_the_higher_port_is_the_client() -> None:
    reply_first = (0, ipv4(SRV, POD, 6, tcp(80, 40000, 5000, 77, ACK, b"data")))
    pk, conns = group_connections(frame_of([reply_first, (10, ipv4(POD, SRV, 6, tcp(40000, 80, 77, 5004, ACK)))]))
    c = conns.row(0, named=True)
    assert (c["src"], c["sport"], c["egress_packets"], c["reply_packets"]) == (POD, 40000, 1, 1)


def test_udp_originator_is_the_first_sender_even_from_a_low_port() -> None:
    _, conns = group_connections(frame_of([(0, ipv4(POD, SRV, 17, udp(1024, 5000, b"q"))),
                                           (10, ipv4(SRV, POD, 17, udp(5000, 1024, b"a")))]))
    assert conns.select("src", "sport", "egress_packets").row(0) == (POD, 1024, 1)


def test_traffic_no_router_forwards_is_split_off_by_reason() -> None:
    from natproof.connections import split_never_forwarded

    frames = [
        (0, ipv4(POD, "239.255.255.250", 17, udp(40001, 1900, b"M-SEARCH"))),  # SSDP
        (1, ipv4(POD, "10.244.0.255", 17, udp(137, 137, b"nbns"))),  # directed broadcast
        (2, ipv4("0.0.0.0", "255.255.255.255", 17, udp(68, 67, b"discover"))),  # DHCP
        (3, ipv4("127.0.0.1", "127.0.0.1", 6, tcp(40002, 8080, 1, 0, SYN))),
        (4, ipv4(POD, POD, 17, udp(40003, 53, b"self"))),  # to its own address: through lo
        (5, ipv4("169.254.1.1", "169.254.1.2", 17, udp(40004, 9, b"ll"))),
        (6, ipv4(POD, "10.244.1.255", 6, tcp(40005, 80, 1, 0, SYN))),  # TCP has no broadcast: kept
        (7, ipv4(POD, SRV, 17, udp(40006, 53, b"q"))),  # kept
        (8, ipv4("10.244.2.255", POD, 17, udp(53, 40007, b"r"))),  # .255 that sends: a host, kept
        (9, ipv4(POD, "10.244.2.255", 17, udp(40007, 53, b"q"))),
    ]
    pk, _ = group_connections(frame_of(frames))
    kept, counts = split_never_forwarded(pk)
    assert counts == {"multicast": 1, "broadcast": 1, "dhcp": 1, "loopback": 2, "link_local": 1}
    assert sorted(kept["frame_no"].to_list()) == [7, 8, 9, 10]


def test_a_directed_broadcast_is_known_without_the_prefix() -> None:
    # A /25 LAN's broadcast is .127, a /26's .63: the all-ones host of a prefix that holds the sender, reached by a
    # datagram of the kind hosts broadcast (a port BROADCAST_PORTS names, the same port both ends, or two senders),
    # and never a sender itself. A LAN host that happens to be .127 and one unanswered datagram to it stay.
    from natproof.connections import split_never_forwarded

    frames = [
        (0, ipv4("192.168.1.20", "192.168.1.127", 17, udp(137, 137, b"nbns"))),  # /25: NetBIOS
        (1, ipv4("192.168.1.30", "192.168.1.127", 17, udp(40800, 9, b"wol"))),  # Wake-on-LAN
        (2, ipv4("192.168.1.70", "192.168.1.127", 17, udp(50000, 4000, b"x"))),  # /26 .64-.127: one sender...
        (3, ipv4("192.168.1.71", "192.168.1.127", 17, udp(50001, 4000, b"x"))),  # ...and a second one
        (4, ipv4("192.168.1.20", "192.168.1.63", 17, udp(17500, 17500, b"db"))),  # /26: same port both ends
        (5, ipv4("192.168.1.20", "192.168.1.31", 17, udp(40000, 514, b"log"))),  # one datagram to a host: kept
        (6, ipv4("192.168.1.20", "192.168.1.31", 17, udp(123, 123, b"ntp"))),  # NTP client on 123: kept
        (7, ipv4("192.168.1.20", "192.168.1.127", 6, tcp(40001, 445, 1, 0, SYN))),  # TCP has no broadcast: kept
        (8, ipv4("192.168.1.200", "192.168.1.191", 17, udp(137, 137, b"nbns"))),  # not in a prefix it ends: kept
        (9, ipv4("203.0.113.2", "198.51.100.127", 17, udp(137, 137, b"x"))),  # another network's: kept
        (10, ipv4("192.168.1.2", "192.168.1.7", 17, udp(137, 137, b"nbns"))),  # a /29's: taken
        (11, ipv4("192.168.1.1", "192.168.1.3", 17, udp(137, 137, b"nbns"))),  # a /30's: too narrow, kept
    ]
    pk, _ = group_connections(frame_of(frames))
    kept, counts = split_never_forwarded(pk)
    assert counts == {"broadcast": 6}
    assert sorted(kept["frame_no"].to_list()) == [6, 7, 8, 9, 10, 12]


def test_a_replayed_connection_is_a_connection_of_its_own() -> None:
    # tcpreplay --loop repeats a capture byte for byte: the same tuple, the same ISN. Once a FIN or RST closed the
    # first copy, the second SYN reopens the tuple as conntrack would (TIME_WAIT/CLOSE), not a retransmission.
    FIN = 0x11

    def once(t0: int) -> list[tuple[int, bytes]]:
        return [syn(t0, 100), synack(t0 + 5, 900, 101),
                (t0 + 9, ipv4(POD, SRV, 6, tcp(40000, 80, 101, 901, FIN))),
                (t0 + 12, ipv4(SRV, POD, 6, tcp(80, 40000, 901, 102, FIN)))]

    pk, conns = group_connections(frame_of(once(0) + once(2 * S) + [syn(2 * S + 2, 100)]))
    assert conns.height == 2  # a SYN retransmitted before anything closed stays in its connection
    assert sorted(conns["egress_packets"].to_list()) == [2, 3]
    pk, conns = group_connections(frame_of([syn(0, 100), (1, ipv4(SRV, POD, 6, tcp(80, 40000, 0, 101, 0x14))),
                                            syn(3 * S, 100)]))
    assert conns.height == 2  # refused (RST), then the same connect() replayed


def test_a_udp_answer_from_a_system_port_caught_first_is_a_reply() -> None:
    # The capture began after the query (tests/variants/home-reply-first): the answer from port 53 is no datagram
    # the server opened, as a high port's first datagram to a low one is (an inbound one to a forwarded port).
    answer = (0, ipv4(SRV, POD, 17, udp(53, 51553, b"a")))
    _, conns = group_connections(frame_of([answer, (10, ipv4(POD, SRV, 17, udp(51553, 53, b"q")))]))
    assert conns.select("src", "sport", "dst", "dport", "egress_packets", "reply_packets").row(0) == (
        POD, 51553, SRV, 53, 1, 1)
    _, conns = group_connections(frame_of([answer]))
    assert conns.select("src", "sport", "egress_packets", "reply_packets").row(0) == (POD, 51553, 0, 1)
    inbound = (0, ipv4(SRV, POD, 17, udp(40000, 51820, b"hs")))
    _, conns = group_connections(frame_of([inbound]))
    assert conns.select("src", "sport", "egress_packets").row(0) == (SRV, 40000, 1)
    nfs = (0, ipv4(POD, SRV, 17, udp(800, 2049, b"rpc")))  # a client's reserved port to a registered one
    _, conns = group_connections(frame_of([nfs]))
    assert conns.select("src", "sport", "egress_packets").row(0) == (POD, 800, 1)


def test_an_echo_reply_caught_first_is_a_reply() -> None:
    _, conns = group_connections(frame_of([(0, ipv4(SRV, POD, 1, icmp_echo(0, 77, 3)))]))
    assert conns.select("src", "dst", "sport", "egress_packets", "reply_packets").row(0) == (POD, SRV, 77, 0, 1)
