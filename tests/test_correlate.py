"""Tests of natproof/correlate.py on generated MASQUERADE scenarios with known ground truth."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from pcapbytes import ipv4, ipv6, tcp, traceroute_rows, udp, write_pair

from natproof.check import compare
from natproof.correlate import correlate, infer_pod_networks
from natproof.errors import CaptureError
from natproof.testing.scenario import SCENARIOS, Flow, Scenario, write_scenario
from natproof.testing.strategies import scenarios


def run_scenario(sc: Scenario, tmp_path: Path, **kw: object) -> tuple[dict, dict]:
    truth = write_scenario(sc, tmp_path)
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap", **kw)  # type: ignore[arg-type]
    return truth, result.to_dict()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_named_scenario_recovers_every_mapping_verdict_and_count(name: str, tmp_path: Path) -> None:
    truth, doc = run_scenario(SCENARIOS[name], tmp_path)
    rep = compare(doc, truth)
    assert rep.ok, rep.to_dict()
    # Packet counts per connection as the generator wrote them.
    four = ("egress_inside", "egress_outside", "reply_outside", "reply_inside")
    got = [{k: c["packets"][k] for k in four} for c in doc["connections"]]
    assert sorted(got, key=str) == sorted((t["packets"] for t in truth["connections"]), key=str)
    assert doc["clock_offset_s"] == pytest.approx(truth["clock_offset_s"], abs=1e-4)


def test_every_egress_packet_is_matched_when_nothing_is_lost(tmp_path: Path) -> None:
    truth, doc = run_scenario(SCENARIOS["basic"], tmp_path)
    for c in doc["connections"]:
        assert c["matched"]["egress"] == c["packets"]["egress_inside"] == c["packets"]["egress_outside"]
        assert c["matched"]["reply"] == c["packets"]["reply_inside"]
        assert c["nat_latency_us"]["median"] > 0
    assert doc["unmatched"] == {"inside": 0, "outside": 0}


def test_gro_segments_are_matched_by_byte_range(tmp_path: Path) -> None:
    _, doc = run_scenario(SCENARIOS["gro"], tmp_path)
    merged = [c for c in doc["connections"] if c["packets"]["reply_inside"] > c["packets"]["reply_outside"]]
    assert len(merged) == 2
    for c in doc["connections"]:
        assert c["matched"]["reply"] == c["packets"]["reply_inside"]


def test_pod_cidr_is_inferred_from_the_inside_capture(tmp_path: Path) -> None:
    sc = Scenario(name="infer", flows=(
        Flow("tcp", "10.244.1.5", 41000, "198.51.100.10", 80),
        Flow("tcp", "10.244.1.5", 41001, "10.244.2.7", 8080, outcome="internal", start_s=0.5),
    ))
    truth, doc = run_scenario(sc, tmp_path)
    assert doc["pod_networks"] == ["10.244.0.0/16"]
    assert compare(doc, truth).ok


def test_explicit_pod_cidr_overrides_inference(tmp_path: Path) -> None:
    sc = Scenario(name="cidr", flows=(Flow("tcp", "10.244.1.5", 41001, "10.244.2.7", 8080, outcome="internal"),))
    write_scenario(sc, tmp_path)
    doc = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap", pod_cidr="10.244.1.0/24").to_dict()
    # With only 10.244.1.0/24 as the pod network, 10.244.2.7 is outside it, yet it answered without anything
    # crossing eth0: reached out of the outside capture's sight (not_captured), not dropped.
    assert [c["verdict"] for c in doc["connections"]] == ["not_captured"]


def test_infer_pod_networks_ignores_public_sources() -> None:
    import polars as pl

    conns = pl.DataFrame({"src": ["10.244.3.4", "203.0.113.9", "fd00:1::5", "10.245.0.2"]})
    assert [str(n) for n in infer_pod_networks(conns).networks] == ["10.244.0.0/16", "10.245.0.0/16",
                                                                    "fd00:1::/48"]


def test_infer_pod_networks_beyond_10_x() -> None:
    import polars as pl

    inside = pl.DataFrame({"src": ["192.168.1.20", "100.64.3.7", "2001:db8:244::10", "2001:db8:aa::5",
                                   "198.51.100.77", "203.0.113.9", "127.0.0.1"]})
    # The outside shows the routed GUA pod, the NodePort client and the node, never the NAT66 pod or 198.51.100.77.
    outside = pl.DataFrame({"src": ["2001:db8:aa::5", "203.0.113.9", "2001:db8:100::2"],
                            "dst": ["2001:db8:ff::10", "192.0.2.1", "2001:db8:ff::10"]})
    inferred = infer_pod_networks(inside, outside)
    assert [str(n) for n in inferred.networks] == ["100.64.0.0/16", "192.168.1.0/24", "198.51.100.0/24",
                                                   "2001:db8:244::/64"]
    assert "2001:db8:244::10" in inferred.why and "198.51.100.77" in inferred.why
    assert "2001:db8:aa::5" not in inferred.why  # routed: the outside shows it, so it is not hidden
    # Without the outside capture nothing says a global source was hidden: private space only.
    assert [str(n) for n in infer_pod_networks(inside).networks] == ["100.64.0.0/16", "192.168.1.0/24"]


@given(scenarios())
def test_property_random_scenarios_recover_exactly_the_generated_mapping(sc: Scenario) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        try:
            truth, doc = run_scenario(sc, Path(d), pod_cidr=sc.pod_cidr)
        except CaptureError as exc:
            # Nothing left the node and no noise was drawn: a header-only capture is refused, as documented.
            assert exc.problem == "empty capture (file header only, no packets)"
            assert not sc.noise and all(f.outcome in ("not_forwarded", "internal") for f in sc.flows)
            return
    rep = compare(doc, truth)
    assert rep.ok, (sc, rep.to_dict())
    # The estimate is within the NAT's latency (tens of us) of the truth; under 100 us it is reported as 0.
    offset = truth["clock_offset_s"] if any(c["matched"]["egress"] for c in doc["connections"]) else 0.0
    got = doc["clock_offset_s"]
    assert abs(got - offset) <= 1e-4 or (got == 0.0 and abs(offset) < 2e-4), (got, offset)


def test_identical_datagrams_from_two_pods_pair_by_time_not_by_port(tmp_path: Path) -> None:
    # Found by the property test: pod A's reply is dropped on the node; pod B, 13 ms later with the same
    # source port and an identical datagram (IP id 0), is rewritten to another port. B's reply must pair
    # with the reply to B's outside port 35 us away, not with A's dropped reply 11 ms away that kept 1024.
    sc = Scenario(name="regression", flows=(
        Flow("udp", "10.244.0.2", 1024, "192.0.2.1", 80, outcome="reply_dropped"),
        Flow("udp", "10.244.0.3", 1024, "192.0.2.1", 80, start_s=0.013),
        Flow("tcp", "10.244.0.2", 1024, "192.0.2.1", 53),
        Flow("tcp", "10.244.0.2", 1025, "192.0.2.1", 53),
    ), seed=1, noise=False, inside_nanosecond=False, outside_nanosecond=False)
    truth, doc = run_scenario(sc, tmp_path)
    assert compare(doc, truth).ok


def test_one_capture_given_twice_is_refused(tmp_path: Path) -> None:
    import shutil

    from natproof.errors import InputError

    basic = Path(__file__).resolve().parent.parent / "captures" / "basic" / "inside.pcap"
    with pytest.raises(InputError, match="are the same file"):
        correlate(basic, basic)
    copy = tmp_path / "copy.pcap"
    shutil.copyfile(basic, copy)
    with pytest.raises(InputError, match="are byte-identical"):
        correlate(basic, copy)


def test_exact_copies_within_one_capture_count_once(tmp_path: Path) -> None:
    # A bridge capture sees a bridged frame twice; every 5th frame of captures/basic/inside.pcap copied 10 us later.
    from decimal import Decimal

    import dpkt

    captures = Path(__file__).resolve().parent.parent / "captures" / "basic"
    with open(captures / "inside.pcap", "rb") as fh, open(tmp_path / "dup.pcap", "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), nano=True)
        for i, (ts, buf) in enumerate(reader):
            writer.writepkt(buf, ts)
            if i % 5 == 0:
                writer.writepkt(buf, ts + Decimal("0.00001"))
    doubled = correlate(tmp_path / "dup.pcap", captures / "outside.pcap")
    plain = correlate(captures / "inside.pcap", captures / "outside.pcap")
    assert doubled.inside.skipped["duplicate"] == 6  # the other two copies were ARP and ICMPv6 noise
    fates = [[c["fates"] for c in r.to_dict()["connections"]] for r in (doubled, plain)]
    assert fates[0] == fates[1]


def test_the_result_says_where_its_pod_networks_came_from() -> None:
    captures = Path(__file__).resolve().parent.parent / "captures" / "nodeport"
    inferred = correlate(captures / "inside.pcap", captures / "outside.pcap")
    assert inferred.pod_networks == ("10.244.0.0/16",)
    why = inferred.pod_networks_why
    assert why.startswith("inferred: the /16") and "10.244.0.10" in why
    given = correlate(captures / "inside.pcap", captures / "outside.pcap", pod_cidr="10.244.0.0/24")
    assert given.pod_networks == ("10.244.0.0/24",) and given.pod_networks_why == "given (--pod-cidr)"
    assert given.to_dict()["pod_networks_why"] == "given (--pod-cidr)"


def test_a_copy_of_a_capture_under_another_name_or_compression_is_refused(tmp_path: Path) -> None:
    # Not byte-identical (gzip), yet the same packets at the same times: no NAT between them.
    import gzip

    from natproof.errors import InputError

    src = Path(__file__).resolve().parent.parent / "captures" / "basic" / "inside.pcap"
    (tmp_path / "copy.pcap.gz").write_bytes(gzip.compress(src.read_bytes()))
    with pytest.raises(InputError, match="hold the same packets at the same times"):
        correlate(src, tmp_path / "copy.pcap.gz")


def test_connections_written_in_pieces_on_several_threads_are_the_one_piece_in_order(tmp_path: Path) -> None:
    from natproof.result import connection_ndjson_parts

    write_scenario(SCENARIOS["basic"], tmp_path)
    conns = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap").connections
    many = pl.concat([conns] * 40)  # enough rows for many pieces of 7
    whole = b"".join(connection_ndjson_parts(many, rows=many.height))
    pieces = list(connection_ndjson_parts(many, rows=7))
    assert len(pieces) == -(-many.height // 7) and b"".join(pieces) == whole
    first = connection_ndjson_parts(many, rows=7)
    assert next(first) == pieces[0]
    first.close()  # a reader that stops early (a closed pipe) leaves no thread behind to wait for


def test_a_json_document_of_many_pieces_is_the_document_of_its_dicts(tmp_path: Path) -> None:
    # json_parts puts the array's separators into each piece where polars wrote it (its pool's threads) and keeps
    # polars' own bytes: the document of more than one piece must still be to_dict's, byte for byte.
    import dataclasses

    import orjson

    from natproof.result import NDJSON_PART_ROWS

    write_scenario(SCENARIOS["basic"], tmp_path)
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    copies = -(-(2 * NDJSON_PART_ROWS + 1) // result.connections.height)
    many = dataclasses.replace(result, connections=pl.concat([result.connections] * copies))
    text = many.to_json()
    assert many.connections.height > 2 * NDJSON_PART_ROWS
    assert orjson.loads(text) == many.to_dict()
    lines = text.split(b"\n")
    items = [line for line in lines if line.startswith(b'    {"proto":')]  # one connection object per line
    assert len(items) == many.connections.height and all(i.endswith(b"},") for i in items[:-1])
    assert items[-1].endswith(b"}") and lines[lines.index(items[-1]) + 1] == b"  ],"


@pytest.mark.parametrize("tolerance", [0, -1.0, 1e-9])
def test_the_library_refuses_a_tolerance_the_cli_refuses(tolerance: float) -> None:
    # Found by a helper: tolerance_s=0 matched nothing within the window and returned wrong verdicts (4
    # not_forwarded, 4 internal on captures/nodeport) where --tolerance refuses it.
    from natproof.errors import InputError

    base = Path(__file__).resolve().parent.parent / "captures" / "nodeport"
    with pytest.raises(InputError, match=r"must be at least 1e-6 s"):
        correlate(base / "inside.pcap", base / "outside.pcap", tolerance_s=tolerance)


def test_a_flow_whose_first_packet_in_both_captures_is_a_reply_is_the_lan_hosts(tmp_path: Path) -> None:
    # Helper's variant of cases/swapped-sides (tests/variants/home-reply-first, scapy): a home router's captures
    # both begun after a DNS query and an echo request had left; their replies came first and read as datagrams
    # from the internet DNATed to the LAN host, "no_reply", finding "No reply from the far end". The replies'
    # flows are the LAN host's egress, translated; the port-forwarded datagram after them stays inbound.
    import json

    from natproof.diagnose import diagnose
    from natproof.errors import InputError

    v = Path(__file__).resolve().parent / "variants" / "home-reply-first"
    truth = json.loads((v / "truth.json").read_text())
    result = correlate(v / "inside.pcap", v / "outside.pcap")
    doc = result.to_dict()
    got = [(c["proto"], c["initiator"], c["original"], c["translated"], c["verdict"]) for c in doc["connections"]]
    assert got == [(t["proto"], t["initiator"], t["original"], t["translated"], t["verdict"])
                   for t in truth["connections"]]
    assert all(c["flags"] == [] for c in doc["connections"])
    assert doc["clock_offset_s"] == pytest.approx(truth["clock_offset_s"], abs=1e-3)
    assert [f.kind for f in diagnose(result)] == ["healthy"]
    with pytest.raises(InputError, match="look swapped"):
        correlate(v / "outside.pcap", v / "inside.pcap")


def test_a_pods_fragmented_datagram_pairs_with_the_nodes_whole_copy_in_one_any_capture() -> None:
    # Kernel variant (tests/variants/pmtud6): pod1 fragments its second 1400-byte datagram (after a packet too big,
    # MTU 1280) into 1232 + 176 bytes on vethpod1; the node's nf_defrag_ipv6 reassembles it for conntrack and
    # cni0 and eth0 carry it whole (1408 bytes of UDP). The first fragment (frame 68) and eth0's copy (frame 71)
    # did not pair (1 inside only, 1 outside only), and the second fragment was read as truncated_l4.
    import json

    from natproof.diagnose import diagnose

    v = Path(__file__).resolve().parent / "variants" / "pmtud6"
    truth = json.loads((v / "truth.json").read_text())
    result = correlate(v / "any.pcap", interfaces=v / "links.txt")
    doc = result.to_dict()
    assert compare(doc, truth).ok
    udp_conn, tcp_conn = doc["connections"]
    assert (udp_conn["proto"], udp_conn["verdict"], tcp_conn["verdict"]) == ("udp", "no_reply", "translated")
    assert udp_conn["matched"] == {"egress": 2, "reply": 0}
    assert udp_conn["fates"] == {"crossed": 4, "leaked": 0, "inside_only": 0, "outside_only": 0,
                                 "node_generated": 0}
    assert doc["unmatched"] == {"inside": 0, "outside": 0}
    assert doc["captures"]["inside"]["skipped"] == {"icmp_other": 18, "ip_fragment": 1}
    crossed = result.packets("inside").filter(pl.col("proto") == 17).select("frame_no", "out_frame").collect()
    assert crossed.rows() == [(25, 29), (68, 71)]
    # The same as the two-capture pair (cni0, whose copies are whole, and eth0) says.
    pair = correlate(v / "inside.pcap", v / "outside.pcap").to_dict()
    assert [(c["packets"], c["matched"], c["fates"]) for c in pair["connections"]] == [
        (c["packets"], c["matched"], c["fates"]) for c in doc["connections"]]
    assert [f.kind for f in diagnose(result)] == ["path_mtu"]


def _frags4(src: str, dst: str, datagram: bytes, ip_id: int, ttl: int) -> list[bytes]:
    """An IPv4 datagram's fragments at 1480 bytes (an MTU of 1500)."""
    from pcapbytes import ipv4

    out = []
    for off in range(0, len(datagram), 1480):
        more = 0x2000 if off + 1480 < len(datagram) else 0
        out.append(ipv4(src, dst, 17, datagram[off:off + 1480], ip_id=ip_id, ttl=ttl, frag=more | off // 8))
    return out


def _frags6(src: str, dst: str, datagram: bytes, ident: int, hlim: int) -> list[bytes]:
    """An IPv6 datagram's fragments at 1232 bytes (an MTU of 1280)."""
    import struct

    from pcapbytes import ipv6

    out = []
    for off in range(0, len(datagram), 1232):
        more = int(off + 1232 < len(datagram))
        out.append(ipv6(src, dst, 44, struct.pack("!BBHI", 17, 0, off | more, ident) + datagram[off:off + 1232],
                        hlim=hlim))
    return out


@pytest.mark.parametrize("answered", [True, False])
@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("fragmented", ["inside", "outside", "both"])
def test_identical_fragmented_datagrams_pair_one_to_one_whichever_side_saw_them_whole(
        v6: bool, fragmented: str, answered: bool, tmp_path: Path) -> None:
    # Two identical 3000-byte datagrams 200 ms apart, answered or not. A pod's fragments reassembled by the node
    # (inside), the node fragmenting on a smaller uplink MTU (outside), or both: each first fragment stands for its
    # datagram (the UDP length is the whole one's) and pairs with its own copy; later fragments are skipped. Before,
    # a fragment and a whole copy paired only by IPv4's IP id, and only once the answer had linked the two legs:
    # unanswered, the flow read not_forwarded beside an outside-only leg.
    from pcapbytes import ipv4, ipv6, udp, write_pair

    pod, node, srv = ("2001:db8:244::10", "2001:db8:100::2", "2001:db8:ff::99") if v6 else (
        "10.244.0.10", "203.0.113.2", "198.51.100.10")
    t0 = 1_700_000_000 * 10**9
    inside, outside = [], []
    for i in range(2):
        t = t0 + i * 200_000_000
        datagram = udp(40000, 7, b"same request " * 230)
        for side, rows, src, ttl, dt in (("inside", inside, pod, 64, 0), ("outside", outside, node, 63, 30_000)):
            if fragmented in (side, "both"):
                frags = (_frags6(src, srv, datagram, 0xA6DC0000 + i, ttl) if v6
                         else _frags4(src, srv, datagram, 700 + i, ttl))
            else:
                frags = [ipv6(src, srv, 17, datagram, hlim=ttl) if v6 else ipv4(src, srv, 17, datagram, ip_id=700 + i,
                                                                                 ttl=ttl)]
            rows.extend((t + dt + k * 1000, f) for k, f in enumerate(frags))
    answer = udp(7, 40000, b"ok")
    t = t0 + 300_000_000
    if answered:
        outside.append((t, ipv6(srv, node, 17, answer, hlim=50) if v6
                        else ipv4(srv, node, 17, answer, ip_id=9, ttl=50)))
        inside.append((t + 30_000, ipv6(srv, pod, 17, answer, hlim=49) if v6
                       else ipv4(srv, pod, 17, answer, ip_id=9, ttl=49)))
    else:  # a packet of another connection, so the captures overlap in time past the datagrams
        from pcapbytes import tcp_pair

        more_in, more_out = tcp_pair(t, pod="10.244.0.11")
        inside += more_in
        outside += more_out
    a, b = write_pair(tmp_path, inside, outside)
    result = correlate(a, b)
    c = result.to_dict()["connections"][0]
    assert (c["proto"], c["original"]["src"], c["translated"]["src"]) == ("udp", pod, node)
    assert c["verdict"] == ("translated" if answered else "no_reply")
    assert c["matched"] == {"egress": 2, "reply": int(answered)}
    assert c["fates"]["crossed"] == 2 + answered and c["fates"]["inside_only"] == c["fates"]["outside_only"] == 0
    # Each datagram with its own copy: 30 us apart, never 200 ms.
    egress = result.packets("inside").filter(pl.col("is_egress") & (pl.col("proto") == 17)).select("dt_ns").collect()
    assert egress["dt_ns"].to_list() == [30_000, 30_000]


def test_a_dns_exchange_one_capture_cut_short_crossed_and_the_cut_is_said(tmp_path: Path) -> None:
    # A trial (s08b): the inside captured with snaplen 64, the outside whole. The DNS exchange (IP id 0) was
    # not_captured, "the other capture shows neither direction", its outside copies in no connection, and nothing
    # said the frames were cut. Raw IP here: a snaplen of 50 keeps TCP's headers and cuts DNS after 22 bytes.
    from pcapbytes import ipv4, pcap, tcp_pair, udp

    t0 = 1_700_000_000 * 10**9
    tcp_in, tcp_out = tcp_pair(t0)
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    answer = query[:2] + b"\x81\x80" + query[4:] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc0\x00\x02\x01"
    pod, node, dns = "10.244.0.10", "203.0.113.2", "198.51.100.53"
    inside = [*tcp_in, (t0 + 10**9, ipv4(pod, dns, 17, udp(53000, 53, query), ip_id=0)),
              (t0 + 10**9 + 10_030_000, ipv4(dns, pod, 17, udp(53, 53000, answer), ip_id=0, ttl=51))]
    outside = [*tcp_out, (t0 + 10**9 + 30_000, ipv4(node, dns, 17, udp(53000, 53, query), ip_id=0, ttl=63)),
               (t0 + 10**9 + 10_000_000, ipv4(dns, node, 17, udp(53, 53000, answer), ip_id=0, ttl=52))]
    (tmp_path / "inside.pcap").write_bytes(pcap([(t, b[:50], len(b)) for t, b in inside], linktype=101))
    (tmp_path / "outside.pcap").write_bytes(pcap(outside, linktype=101))
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    got = result.connections.sort("proto").select("proto", "verdict", "matched_egress", "matched_reply").rows()
    assert got == [("tcp", "translated", 5, 3), ("udp", "translated", 1, 1)]
    assert (result.unmatched_inside, result.unmatched_outside) == (0, 0)
    cut = sum(len(b) > 50 for _, b in inside)
    assert [w.split(" were ")[0] for w in result.inside.warnings] == [f"{cut} of {len(inside)} frames"]
    assert result.outside.warnings == ()


def _cut_tcp_pair(tmp_path: Path, snaplen: int) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """An HTTP-like TCP connection and a DNS exchange through MASQUERADE, the inside captured with ``snaplen`` (raw
    IP: 20 + 10 keeps TCP's ports and cuts its flags; UDP's 8-byte header stays whole), the outside whole, with
    the node's own HTTPS connection beside them: (inside rows, outside rows) as captured, written to tmp_path."""
    from pcapbytes import pcap, tcp, tcp_pair

    t0 = 1_700_000_000 * 10**9
    tcp_in, tcp_out = tcp_pair(t0)
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    pod, node, dns, other = "10.244.0.10", "203.0.113.2", "198.51.100.53", "192.0.2.7"
    inside = [*tcp_in, (t0 + 50_000_000, ipv4(pod, dns, 17, udp(53000, 53, query), ip_id=0)),
              (t0 + 60_030_000, ipv4(dns, pod, 17, udp(53, 53000, query), ip_id=0, ttl=51))]
    outside = [*tcp_out, (t0 + 50_030_000, ipv4(node, dns, 17, udp(53000, 53, query), ip_id=0, ttl=63)),
               (t0 + 60_000_000, ipv4(dns, node, 17, udp(53, 53000, query), ip_id=0, ttl=52)),
               (t0 + 2_000_000, ipv4(node, other, 6, tcp(50000, 443, 1, 0, 0x02), ip_id=7)),
               (t0 + 3_000_000, ipv4(other, node, 6, tcp(443, 50000, 9, 2, 0x12), ip_id=8))]
    (tmp_path / "inside.pcap").write_bytes(pcap([(t, b[:snaplen], len(b)) for t, b in inside], linktype=101))
    (tmp_path / "outside.pcap").write_bytes(pcap(sorted(outside), linktype=101))
    return inside, outside


@pytest.mark.parametrize("decoder", ["fast", "dpkt"])
def test_a_flow_whose_headers_the_inside_snaplen_cut_is_not_captured_not_lost(tmp_path: Path, decoder: str) -> None:
    # A trial (s08c): the inside captured with snaplen 44 (Ethernet + IP + 10 bytes of TCP), the outside whole.
    # Every TCP frame inside was skipped (truncated_l4), so the outside TCP legs paired with nothing and fell in no
    # connection (unmatched 30, no connection counting them) while diagnose said "healthy". The inside still holds
    # the flows' addresses and ports: each such leg is a connection not_captured, its cut frames counted.
    inside, outside = _cut_tcp_pair(tmp_path, 20 + 10)
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap", decoder=decoder)
    cut_in = sum(1 for _, b in inside if b[9] == 6)
    out_http = sum(1 for _, b in outside if b[9] == 6 and 80 in (int.from_bytes(b[20:22]), int.from_bytes(b[22:24])))
    assert result.inside.skipped == {"truncated_l4": cut_in}
    rows = {r["proto"]: r for r in result.connections.iter_rows(named=True)}
    assert set(rows) == {"tcp", "udp"} and rows["udp"]["verdict"] == "translated"
    c = rows["tcp"]
    assert (c["verdict"], c["initiator"], c["orig_src"]) == ("not_captured", "inside", None)
    assert (c["trans_src"], c["trans_sport"], c["trans_dst"], c["trans_dport"]) == (
        "203.0.113.2", 40000, "198.51.100.10", 80)
    assert c["other_capture_cut"] == cut_in
    assert c["fate_outside_only"] == c["egress_outside"] + c["reply_outside"] == out_http
    assert c["fate_crossed"] == c["fate_inside_only"] == 0
    (doc,) = [d for d in result.to_dict()["connections"] if d["proto"] == "tcp"]
    assert "other_capture_cut" in doc["flags"] and doc["other_capture_cut"] == cut_in
    # The node's own connection shares no end with a cut flow: in no connection, as before.
    assert result.unmatched_outside == out_http + 2
    from natproof.diagnose import diagnose

    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["capture_cut"]  # not "NAT working as expected"
    f = found["capture_cut"]
    assert f.connections == (c["conn"],) and f.severity == "warning"
    assert (f.data["cut_frames"], f.data["packets"], f.data["side"]) == (cut_in, out_http, "inside")
    assert f"as {cut_in} frame(s) of their own flows cut" in f.summary
    assert f"({out_http} packet(s) on the outside" in f.summary


@pytest.mark.parametrize("answered", [True, False])
def test_a_flow_whose_headers_the_outside_snaplen_cut_is_not_captured_not_dropped(tmp_path: Path,
                                                                                  answered: bool) -> None:
    # The mirror of s08c: the uplink captured with a snaplen that cut every TCP header. The pod's connection paired
    # with nothing and read as crossing neither way: not_forwarded (dropped on the node) when unanswered, and when
    # answered a partial_overlap blaming a capture not running. Its flow is on the outside, cut: not_captured.
    from pcapbytes import pcap, tcp_pair

    inside, outside = tcp_pair(1_700_000_000 * 10**9)
    if not answered:
        inside, outside = inside[:1], outside[:1]  # the SYN alone
    (tmp_path / "inside.pcap").write_bytes(pcap(inside, linktype=101))
    (tmp_path / "outside.pcap").write_bytes(pcap([(t, b[:30], len(b)) for t, b in outside], linktype=101))
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    (c,) = result.connections.iter_rows(named=True)
    assert (c["verdict"], c["initiator"], c["other_capture_cut"]) == ("not_captured", "inside", len(outside))
    assert c["fate_inside_only"] == len(inside) and c["fate_crossed"] == 0
    from natproof.diagnose import diagnose

    (f,) = diagnose(result)
    assert (f.kind, f.data["side"], f.data["cut_frames"], f.data["packets"]) == (
        "capture_cut", "outside", len(outside), len(inside))


def _midflow(tmp_path: Path, proto: int, pod_port: int, far_port: int, *, far_first: bool) -> list[Path]:
    """A flow both captures caught mid-way (no SYN): 10.244.0.10:pod_port <-> 198.51.100.10:far_port, the node's
    203.0.113.2 on the outside, the port kept, routed (a TTL less across the node), four rounds, the far end's
    packet first in each with ``far_first``."""
    from pcapbytes import ipv4, tcp, udp, write_pair

    pod, node, far = "10.244.0.10", "203.0.113.2", "198.51.100.10"
    inside: list[tuple[int, bytes]] = []
    outside: list[tuple[int, bytes]] = []
    t0 = 1_700_000_000 * 10**9

    def l4(sport: int, dport: int, n: int, data: bytes) -> bytes:
        return tcp(sport, dport, 1000 + n * 100, 5000 + n * 100, 0x18, data) if proto == 6 else udp(sport, dport, data)

    for n in range(4):
        t = t0 + n * 10_000_000
        pod_t, far_t = (t + 2_000_000, t) if far_first else (t, t + 2_000_000)
        inside.append((pod_t, ipv4(pod, far, proto, l4(pod_port, far_port, n, b"p%d" % n), ttl=64, ip_id=100 + n)))
        outside.append((pod_t + 30_000, ipv4(node, far, proto, l4(pod_port, far_port, n, b"p%d" % n),
                                             ttl=63, ip_id=100 + n)))
        outside.append((far_t, ipv4(far, node, proto, l4(far_port, pod_port, n, b"f%d" % n), ttl=50, ip_id=200 + n)))
        inside.append((far_t + 30_000, ipv4(far, pod, proto, l4(far_port, pod_port, n, b"f%d" % n), ttl=49,
                                            ip_id=200 + n)))
    return write_pair(tmp_path, inside, outside, linktype=101)


@pytest.mark.parametrize(("proto", "pod_port", "far_port", "far_first"), [
    (6, 33000, 50051, False),  # the pod's segment first, from the lower port: taken for an answer
    (17, 45000, 8443, True),  # the server's datagram first
])
def test_a_masqueraded_flow_caught_midway_is_the_pods_egress(tmp_path: Path, proto: int, pod_port: int,
                                                             far_port: int, far_first: bool) -> None:
    # A helper's trial (s16, s23): read as an inbound DNAT of 203.0.113.2:PORT to the pod ("1 started outside", no
    # source rewritten). The node's address on the inside end's own port, outside the NodePort range, is
    # MASQUERADE of the pod's source.
    result = correlate(*_midflow(tmp_path, proto, pod_port, far_port, far_first=far_first))
    (c,) = result.to_dict()["connections"]
    assert c["initiator"] == "inside"
    assert c["original"] == {"src": "10.244.0.10", "sport": pod_port, "dst": "198.51.100.10", "dport": far_port}
    assert c["translated"] == {"src": "203.0.113.2", "sport": pod_port, "dst": "198.51.100.10", "dport": far_port}
    assert c["rewrites"] == ["src"] and c["verdict"] == "translated"
    assert c["packets"]["egress_inside"] == c["matched"]["egress"] == 4
    assert c["packets"]["reply_inside"] == c["matched"]["reply"] == 4
    # The pod networks are inferred from that reading, not the one before it (the trial printed "pod networks
    # none: none inferred: no private source ... on the inside" under the pod's own row).
    assert result.pod_networks == ("10.244.0.0/16",)
    assert "(10.244.0.10)" in result.pod_networks_why and not result.pod_networks_why.startswith("none")


def test_a_flow_caught_midway_on_a_nodeport_stays_inbound(tmp_path: Path) -> None:
    # The same packets with 33000 a NodePort (a range that holds it): a DNAT to the pod is what a NodePort makes,
    # so the reading from the packets' order stands.
    from natproof.assemble import Services

    paths = _midflow(tmp_path, 6, 33000, 50051, far_first=False)
    (c,) = correlate(*paths, services=Services(nodeport_range=(33000, 33999))).to_dict()["connections"]
    assert c["initiator"] == "outside" and c["rewrites"] == ["dst"]
    assert c["original"]["dst"] == "203.0.113.2" and c["translated"]["dst"] == "10.244.0.10"


def _heartbeats(offset_ns: int, *, replies: bool = False) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """A trial's statsd-like flow: a pod's datagram every 100 ms, 30 us across the node, the outside clock
    ``offset_ns`` ahead; ``replies``: each answered 5 ms later, 40 us back across the node."""
    from pcapbytes import ipv4, udp

    t0, inside, outside = 1_700_000_000 * 10**9, [], []
    for i in range(30):
        t = t0 + i * 100_000_000
        inside.append((t, ipv4("10.244.0.10", "198.51.100.70", 17, udp(52100, 8125, b"beat%02d" % i), ip_id=i + 1)))
        outside.append((t + 30_000 + offset_ns,
                        ipv4("203.0.113.2", "198.51.100.70", 17, udp(52100, 8125, b"beat%02d" % i), ttl=63,
                             ip_id=i + 1)))
        if replies:
            outside.append((t + 5_000_000 + offset_ns,
                            ipv4("198.51.100.70", "203.0.113.2", 17, udp(8125, 52100, b"ok%02d" % i), ttl=52,
                                 ip_id=500 + i)))
            inside.append((t + 5_040_000, ipv4("198.51.100.70", "10.244.0.10", 17, udp(8125, 52100, b"ok%02d" % i),
                                               ttl=51, ip_id=500 + i)))
    return inside, outside


def test_one_way_traffic_cannot_measure_the_nat_latency_its_clock_offset_holds(tmp_path: Path) -> None:
    # A trial: one-way UDP, the outside clock 2.5 s ahead, 30 us across the node, read as clock_offset_s 2.50003
    # and nat_latency_us {median: 0.0, max: 0.0}. One direction's median is the offset plus the latency.
    from pcapbytes import write_pair

    paths = write_pair(tmp_path, *_heartbeats(2_500_000_000))
    result = correlate(*paths)
    doc = result.to_dict()
    assert doc["clock_offset_s"] == pytest.approx(2.50003, abs=1e-6)  # the latency is in it
    assert result.clock_offset_one_way and "one direction only" in doc["clock_offset_note"]
    (c,) = doc["connections"]
    assert c["matched"]["egress"] == 30 and c["nat_latency_us"] is None
    from natproof.report.charts import latency_data
    from natproof.report.table import summary_line

    assert "clock offset +2.500030 s (from one direction's packets only: it includes the NAT's latency" in (
        summary_line(result))
    assert latency_data(result).is_empty()  # no chart of latencies that are the offset's error
    # Given the offset, the latency is measured.
    given = correlate(*paths, clock_offset_s=2.5).to_dict()
    assert given["clock_offset_note"] is None
    assert given["connections"][0]["nat_latency_us"] == {"median": pytest.approx(30.0), "max": pytest.approx(30.0)}


def test_two_way_traffic_separates_the_clock_offset_from_the_nat_latency(tmp_path: Path) -> None:
    from pcapbytes import write_pair

    result = correlate(*write_pair(tmp_path, *_heartbeats(2_500_000_000, replies=True)))
    doc = result.to_dict()
    # Egress 30 us, replies 40 us: the two medians' mean is off by half their difference (5 us).
    assert doc["clock_offset_s"] == pytest.approx(2.5, abs=1e-5) and doc["clock_offset_note"] is None
    (c,) = doc["connections"]
    assert c["nat_latency_us"]["median"] == pytest.approx(35.0, abs=0.01)
    assert c["nat_latency_us"]["max"] == pytest.approx(35.0, abs=0.01)


def test_a_probe_whose_ttl_ran_out_at_the_node_and_its_answer_are_not_unmatched(tmp_path: Path) -> None:
    # A traceroute's first probe (TTL 1) cannot cross a routing node: it and the node's time exceeded are not
    # packets that should have crossed. A probe the node drops otherwise still counts.
    inside, outside = traceroute_rows()
    result = correlate(*write_pair(tmp_path, inside, outside))
    assert result.unmatched_outside == 0
    fates = result.packets("inside").filter(pl.col("fate").is_in(["inside_only", "node_generated"])).collect()
    assert fates.height == 2 and result.unmatched_inside == 0
    lost = [(t, ipv4("10.244.0.10", "198.51.100.10", 17, udp(40002, 33500, b"@" * 32), ttl=2, ip_id=77))
            for t in (inside[-1][0] + 10**6,)]
    more = tmp_path / "more"
    more.mkdir()
    assert correlate(*write_pair(more, inside + lost, outside)).unmatched_inside == 1


@pytest.mark.parametrize("late", ["inside", "outside"])
def test_a_connections_span_covers_its_packets_on_both_captures(tmp_path: Path, late: str) -> None:
    # A trial (s07b): the inside capture started 1 s into a 3 s connection; first_seen was the inside's first packet
    # though the outside held the connection's packets from its SYN on. The span is every packet natproof gave the
    # connection on either side, the outside's on the inside clock (here 2.5 s behind the outside's).
    from pcapbytes import tcp_rounds

    t0, offset = 1_700_000_000 * 10**9, 2_500_000_000
    inside, outside = tcp_rounds(t0, rounds=12)
    start = t0 + 500_000_000
    if late == "inside":
        inside = [(t, b) for t, b in inside if t >= start]
    else:
        outside = [(t, b) for t, b in outside if t >= start]
    result = correlate(*write_pair(tmp_path, inside, [(t + offset, b) for t, b in outside]))
    assert result.clock_offset_s == pytest.approx(offset / 1e9, abs=1e-6)
    (c,) = result.to_dict()["connections"]
    assert c["fates"][f"{'outside' if late == 'inside' else 'inside'}_only"] > 0
    times = [t for t, _ in inside] + [t for t, _ in outside]  # the outside's on the inside clock already
    assert c["first_seen"] == pytest.approx(min(times) / 1e9, abs=1e-6)
    assert c["last_seen"] == pytest.approx(max(times) / 1e9, abs=1e-6)
    from natproof.report.export import csv_bytes

    (csv_row,) = pl.read_csv(csv_bytes(result)).iter_rows(named=True)
    assert (csv_row["first_seen"], csv_row["last_seen"]) == pytest.approx((c["first_seen"], c["last_seen"]))


Tuple = tuple[str, int, str, int]
Rows = list[tuple[int, bytes]]


def _tcp6(t0: int, inner: Tuple, outer: Tuple, isn: int) -> tuple[Rows, Rows]:
    """One IPv6 TCP connection across a forwarding node: (inside rows, outside rows). ``inner`` and ``outer`` are
    the initiator's (src, sport, dst, dport) on the inside and on the outside; its packets lose one hop on their
    way out (64 -> 63), the responder's one on their way in (60 -> 59), 30 us across the node."""
    from pcapbytes import http_steps

    (a, ap, b, bp), (c, cp, d, dp) = inner, outer
    steps = http_steps(isn, isn + 50_000)
    inside: Rows = []
    outside: Rows = []
    for i, (way, flags, seq, ack, data) in enumerate(steps):
        t = t0 + i * 1_000_000
        if way == "e":
            inside.append((t, ipv6(a, b, 6, tcp(ap, bp, seq, ack, flags, data), hlim=64)))
            outside.append((t + 30_000, ipv6(c, d, 6, tcp(cp, dp, seq, ack, flags, data), hlim=63)))
        else:
            outside.append((t, ipv6(d, c, 6, tcp(dp, cp, seq, ack, flags, data), hlim=60)))
            inside.append((t + 30_000, ipv6(b, a, 6, tcp(bp, ap, seq, ack, flags, data), hlim=59)))
    return inside, outside


def _udp6(t0: int, inner: Tuple, outer: Tuple) -> tuple[Rows, Rows]:
    """One IPv6 datagram and its answer across the node, as _tcp6."""
    (a, ap, b, bp), (c, cp, d, dp) = inner, outer
    q, r = b"\x12\x34query", b"\x12\x34answer"
    return ([(t0, ipv6(a, b, 17, udp(ap, bp, q), hlim=64)), (t0 + 1_030_000, ipv6(b, a, 17, udp(bp, ap, r), hlim=59))],
            [(t0 + 30_000, ipv6(c, d, 17, udp(cp, dp, q), hlim=63)),
             (t0 + 1_000_000, ipv6(d, c, 17, udp(dp, cp, r), hlim=60))])


def _write6(tmp_path: Path, parts: list[tuple[Rows, Rows]]) -> list[Path]:
    return write_pair(tmp_path, [r for ins, _ in parts for r in ins], [r for _, outs in parts for r in outs])


POD6, NODE6, SRV6, T6 = "2001:db8:244::10", "2001:db8:100::2", "2001:db8:ff::10", 1_700_000_000 * 10**9


def test_ipv6_global_pods_behind_nat66_and_a_service_dnat_given_swapped_are_refused(tmp_path: Path) -> None:
    # A new user's trial (tests/variants/clusterip6 given the wrong way round: exit 0, three "inbound"
    # connections). No address is private, so only the direction tells: the pod's plain egress is a source NAT seen
    # backwards, and the same pod's calls to a ClusterIP (DNAT and NAT66; DNAT alone, pods routed) then are too.
    inside, outside = _write6(tmp_path, [
        _tcp6(T6, (POD6, 40000, SRV6, 80), (NODE6, 40000, SRV6, 80), 1000),
        _tcp6(T6 + 20_000_000, (POD6, 40002, "2001:db8:96::1", 443), (NODE6, 40002, SRV6, 6443), 9000),
        _udp6(T6 + 40_000_000, (POD6, 40004, "2001:db8:96::53", 53), (POD6, 40004, "2001:db8:ff::53", 53))])
    from natproof.errors import InputError

    right = correlate(inside, outside)
    assert right.connections.select("initiator", "verdict", "rewrites").rows() == [
        ("inside", "translated", ["src"]), ("inside", "translated", ["src", "dst", "dport"]),
        ("inside", "translated", ["dst"])]
    with pytest.raises(InputError) as err:
        correlate(outside, inside)
    reason = str(err.value).split("wrong side: ")[1].split("; give them")[0]
    assert reason == ("1 started on the outside capture with the source rewritten on the way to the inside one (a "
                      "source NAT seen backwards); 2 started on the outside capture with the destination rewritten, "
                      "by a host whose other connection is a source NAT seen backwards (a Service's DNAT seen "
                      "backwards)")
    swapped = correlate(outside, inside, allow_swap=True)
    assert swapped.connections.drop("conn").equals(right.connections.drop("conn"))


def test_connections_from_outside_to_nodeports_in_global_ipv6_space_are_no_swap(tmp_path: Path) -> None:
    # What a DNATed connection started on the outside capture is when nothing says otherwise: a client's to a
    # NodePort (externalTrafficPolicy=Cluster: masqueraded to the bridge address; Local: DNAT alone), all in
    # global space. No connection of that client is a source NAT seen backwards, so no swap.
    client, bridge = "2001:db8:ff::20", "2001:db8:244::1"
    inside, outside = _write6(tmp_path, [
        tuple(reversed(_tcp6(T6, (client, 50000, NODE6, 30080), (bridge, 61000, POD6, 8080), 1000))),
        tuple(reversed(_tcp6(T6 + 20_000_000, (client, 50002, NODE6, 30081), (client, 50002, POD6, 8080), 9000)))])
    result = correlate(inside, outside)
    assert result.connections.select("initiator", "verdict", "rewrites").rows() == [
        ("outside", "translated", ["src", "sport", "dst", "dport"]), ("outside", "translated", ["dst", "dport"])]


def _merged_transfer(*, upload: bool, v6: bool, merges: int = 3, segs: int = 8,
                     mss: int = 1000) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """A TCP connection through MASQUERADE whose data one side holds as ``merges`` large packets of ``segs``
    segments and the other as the segments (IP ids counting up from the large packet's). ``upload``: the pod's
    GSO packets whole on the inside, segmented in software before the outside capture (an uplink without TSO),
    the server's ACK after each; else the server's segments GRO merged on the outside, the pod's ACK after every
    second segment between them on both sides. (inside rows, outside rows) of raw IP packets."""
    import random

    pod, node, srv = (("2001:db8:244::10", "2001:db8:100::2", "2001:db8:ff::99") if v6
                      else ("10.244.0.10", "203.0.113.2", "198.51.100.10"))
    inside: list[tuple[int, bytes]] = []
    outside: list[tuple[int, bytes]] = []
    ids = iter(range(100, 1000))

    def pkt(egress: bool, src: str, dst: str, seq: int, ack: int, flags: int, data: bytes, ip_id: int,
            ttl: int) -> bytes:
        ports = (41000, 443) if egress else (443, 41000)
        l4 = tcp(*ports, seq % 2**32, ack % 2**32, flags, data)
        return ipv6(src, dst, 6, l4, hlim=ttl) if v6 else ipv4(src, dst, 6, l4, ttl=ttl, ip_id=ip_id)

    def cross(t: int, egress: bool, seq: int, ack: int, flags: int) -> None:
        ip_id = next(ids)
        if egress:
            inside.append((t, pkt(True, pod, srv, seq, ack, flags, b"", ip_id, 64)))
            outside.append((t + 30_000, pkt(True, node, srv, seq, ack, flags, b"", ip_id, 63)))
        else:
            outside.append((t, pkt(False, srv, node, seq, ack, flags, b"", ip_id + 5000, 50)))
            inside.append((t + 30_000, pkt(False, srv, pod, seq, ack, flags, b"", ip_id + 5000, 49)))

    t0, isn, srv_isn = 1_700_000_000 * 10**9, 1000, 2**32 - 5000  # the server's numbers wrap mid-transfer
    cross(t0, True, isn, 0, 0x02)
    cross(t0 + 1_000_000, False, srv_isn, isn + 1, 0x12)
    cross(t0 + 2_000_000, True, isn + 1, srv_isn + 1, 0x10)
    seq, ack = (isn + 1, srv_isn + 1) if upload else (srv_isn + 1, isn + 1)
    rng = random.Random(7)
    for g in range(merges):
        chunk, base, big_id = rng.randbytes(segs * mss), seq + g * segs * mss, 3000 + 100 * g
        t = t0 + 10_000_000 + g * 4_000_000
        segments = [(base + i * mss, chunk[i * mss:(i + 1) * mss], big_id + i, 0x18 if i == segs - 1 else 0x10)
                    for i in range(segs)]
        if upload:
            inside.append((t, pkt(True, pod, srv, base, ack, 0x18, chunk, big_id, 64)))
            outside += [(t + 30_000 + i * 2_000, pkt(True, node, srv, s, ack, f, d, i_d, 63))
                        for i, (s, d, i_d, f) in enumerate(segments)]
            cross(t + 2_000_000, False, ack, base + segs * mss, 0x10)
        else:
            outside.append((t, pkt(False, srv, node, base, ack, 0x18, chunk, big_id, 50)))
            for i, (s, d, i_d, f) in enumerate(segments):
                inside.append((t + 30_000 + i * 2_000, pkt(False, srv, pod, s, ack, f, d, i_d, 49)))
                if i % 2:
                    cross(t + 31_000 + i * 2_000, True, ack, s + mss, 0x10)
    end = seq + merges * segs * mss
    e_seq, r_seq = (end, ack) if upload else (ack, end)
    cross(t0 + 50_000_000, True, e_seq, r_seq, 0x11)
    cross(t0 + 51_000_000, False, r_seq, e_seq + 1, 0x11)
    cross(t0 + 52_000_000, True, e_seq + 1, r_seq + 1, 0x10)
    return inside, outside


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("upload", [True, False], ids=["gso-upload", "gro-download"])
def test_segments_merged_on_one_side_cross_by_byte_range_with_no_payload_change(tmp_path: Path, upload: bool,
                                                                               v6: bool) -> None:
    # A trial: GSO packets whole on the veth and segmented before eth0's tap read 88 of 90 segments "outside only"
    # (flag not_reverse_translated, "the captures missed packets"); three GRO merges per response on eth0 against
    # the veth's segments read 87 segments "crossed with their payload changed". Every byte crossed unchanged.
    from natproof.diagnose import diagnose

    inside, outside = _merged_transfer(upload=upload, v6=v6)
    result = correlate(*write_pair(tmp_path, inside, outside))
    doc = result.to_dict()
    (c,) = doc["connections"]
    assert c["verdict"] == "translated" and c["flags"] == []
    assert c["fates"] == {"crossed": len(inside), "leaked": 0, "inside_only": 0, "outside_only": 0,
                          "node_generated": 0}
    assert c["matched"] == {"egress": c["packets"]["egress_inside"], "reply": c["packets"]["reply_inside"]}
    assert c["packets"]["egress_outside"] + c["packets"]["reply_outside"] == len(outside)
    assert doc["unmatched"] == {"inside": 0, "outside": 0}
    for side in ("inside", "outside"):
        assert set(result.packets(side).select("fate").collect()["fate"]) == {"crossed"}
    # Each large packet pairs with the segment that starts where it does (the inside packet's match names it).
    merged = result.packets("inside").filter(pl.col("method") == "bytes").select("method").collect()
    assert merged.height == (3 if upload else 24)
    assert [f.kind for f in diagnose(result)] == ["healthy"]


def _two_to_one_server(tmp_path: Path, *, cut: str, snaplen: int, keep_out: int | None = None) -> tuple[list, list]:
    """Two HTTP-like connections from one pod to 198.51.100.10:80 through MASQUERADE, 5 ms apart, raw IP, the
    ``cut`` side captured with ``snaplen`` (20: the whole IP header and nothing of TCP, so no ports), only its first
    ``keep_out`` frames kept on the outside when given: (inside rows, outside rows) as written."""
    from pcapbytes import pcap, tcp_pair

    t0 = 1_700_000_000 * 10**9
    in_a, out_a = tcp_pair(t0)
    in_b, out_b = tcp_pair(t0 + 5_000_000, sport=40010, nat_sport=40010, isn=9000)
    inside, outside = sorted(in_a + in_b), sorted(out_a + out_b)
    if keep_out is not None:
        outside = outside[:keep_out]
    for name, rows in (("inside", inside), ("outside", outside)):
        kept = [(t, b[:snaplen], len(b)) for t, b in rows] if name == cut else rows
        (tmp_path / f"{name}.pcap").write_bytes(pcap(kept, linktype=101))
    return inside, outside


@pytest.mark.parametrize("decoder", ["fast", "dpkt"])
def test_an_outside_snaplen_cut_before_the_ports_is_capture_cut_not_unseen(tmp_path: Path, decoder: str) -> None:
    # Trial 12: the uplink captured with -s 34 on Ethernet (the IP header whole, no port): every frame skipped, yet
    # diagnose said unseen_while_running ("the other capture shows none of their packets", "give --pod-cidr").
    # The cut frames still carry protocol, hosts and times: the connections are not_captured, read by hosts.
    from natproof.diagnose import diagnose

    inside, outside = _two_to_one_server(tmp_path, cut="outside", snaplen=20)
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap", decoder=decoder)
    assert result.outside.skipped == {"truncated_l4": len(outside)}
    rows = result.connections.sort("inside_sport").rows(named=True)
    assert [r["verdict"] for r in rows] == ["not_captured"] * 2
    # Ports unknown, the frames between the two hosts overlap both connections: each counts them, shared by 2.
    assert [(r["other_capture_cut"], r["other_capture_cut_shared"]) for r in rows] == [(len(outside), 2)] * 2
    assert all(r["fate_inside_only"] == len(inside) // 2 and r["fate_node_generated"] == 0 for r in rows)
    (f,) = diagnose(result)
    assert (f.kind, f.data["side"], f.data["by_hosts"], f.data["too_few_frames"]) == ("capture_cut", "outside", 2, 0)
    assert (f.data["cut_frames"], f.data["truncated_l4"], f.data["packets"]) == (0, len(outside), len(inside))
    assert "2 of them by their hosts alone" in f.summary and "not which connection" in f.summary
    assert "more connections than there are frames" not in f.summary
    assert f"{len(outside)} frame(s) between its hosts on the outside capture cut before their ports, " \
           "overlapping 2 connection(s)" in f.evidence[0]


def test_too_few_frames_cut_before_the_ports_for_the_connections_they_overlap_is_said(tmp_path: Path) -> None:
    # One cut frame on the outside between the pod's two connections' hosts: it cannot be both connections'.
    # Both stay not_captured (no drop is shown, and which one crossed is unknown), and the finding says so.
    from natproof.diagnose import diagnose

    _two_to_one_server(tmp_path, cut="outside", snaplen=20, keep_out=1)
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    rows = result.connections.rows(named=True)
    assert [(r["verdict"], r["other_capture_cut"], r["other_capture_cut_shared"]) for r in rows] == [
        ("not_captured", 1, 2)] * 2
    (f,) = diagnose(result)
    assert (f.kind, f.data["by_hosts"], f.data["too_few_frames"]) == ("capture_cut", 2, 2)
    assert "2 of these overlap more connections than there are frames" in f.summary
    assert "(fewer frames than connections)" in f.evidence[0]


def test_an_inside_snaplen_cut_before_the_ports_is_capture_cut_not_another_node(tmp_path: Path) -> None:
    # The mirror (trial 12, -s 54 on IPv6 inside): "No connection proves anything ... check that the captures are
    # of the same node". The outside legs are read against the inside's cut frames by their far end.
    from natproof.diagnose import diagnose

    inside, outside = _two_to_one_server(tmp_path, cut="inside", snaplen=20)
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    rows = result.connections.rows(named=True)
    assert [(r["verdict"], r["initiator"], r["other_capture_cut"], r["other_capture_cut_shared"]) for r in rows] == [
        ("not_captured", "inside", len(inside), 2)] * 2
    assert sum(r["fate_outside_only"] for r in rows) == len(outside)
    (f,) = diagnose(result)
    assert (f.kind, f.data["side"], f.data["by_hosts"]) == ("capture_cut", "inside", 2)


def test_an_ipv6_uplink_cut_before_the_ports_is_capture_cut() -> None:
    # Trial 12's own IPv6 case: editcap -s 54 (Ethernet + IPv6 header) of tests/variants/idle6/outside.pcap.
    from pcapbytes import snaplen_cut

    from natproof.diagnose import diagnose

    variant = Path(__file__).parent / "variants" / "idle6"
    cut = snaplen_cut((variant / "outside.pcap").read_bytes(), 54)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "outside.pcap").write_bytes(cut)
        result = correlate(variant / "inside.pcap", Path(d) / "outside.pcap")
    kinds = [f.kind for f in diagnose(result)]
    assert "capture_cut" in kinds and "unseen_while_running" not in kinds
    assert set(result.connections["verdict"]) == {"not_captured"}
    assert all(n > 0 for n in result.connections["other_capture_cut_shared"])


@pytest.mark.parametrize("from_node", [False, True])
def test_an_icmp_error_from_the_far_end_is_not_node_made_when_the_outside_cut_the_flow(tmp_path: Path,
                                                                                    from_node: bool) -> None:
    # Trial 12: editcap -s 38 of captures/udp/outside.pcap; the datagram to port 9 and its ICMP port unreachable
    # from 198.51.100.10 (the far end) read "1 inside only, 1 node-made": nothing of it paired on the outside, which
    # cut the flow, and that was taken for "the far end never saw it". From the pod network's gateway it is the
    # node's still: its source says so.
    from pcapbytes import icmp_error, pcap

    t0 = 1_700_000_000 * 10**9
    pod, node, far, gw = "10.244.0.10", "203.0.113.2", "198.51.100.10", "10.244.0.1"
    sent = ipv4(pod, far, 17, udp(51348, 9, b"x" * 8), ip_id=5)
    out = ipv4(node, far, 17, udp(51348, 9, b"x" * 8), ip_id=5, ttl=63)
    err_in = ipv4(gw if from_node else far, pod, 1, icmp_error(3, 3, sent[:28]), ttl=63)
    err_out = ipv4(far, node, 1, icmp_error(3, 3, out[:28]), ttl=64)
    inside = [(t0, sent), (t0 + 2_000_000, err_in)]
    outside = [(t0 + 30_000, out)] + ([] if from_node else [(t0 + 1_900_000, err_out)])
    (tmp_path / "inside.pcap").write_bytes(pcap(inside, linktype=101))
    (tmp_path / "outside.pcap").write_bytes(pcap([(t, b[:24], len(b)) for t, b in outside], linktype=101))
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    (c,) = result.connections.rows(named=True)
    assert c["verdict"] == "not_captured" and c["other_capture_cut"] == 1
    assert (c["fate_inside_only"], c["fate_node_generated"]) == ((1, 1) if from_node else (2, 0))
    (doc,) = result.to_dict()["connections"]
    assert ("node_generated" in doc["flags"]) == from_node
