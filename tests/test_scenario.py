"""Tests of the MASQUERADE simulator: written captures read back with dpkt against the truth."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import struct
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import given, settings

from natproof.testing.scenario import (
    OUTCOMES,
    SCENARIOS,
    Flow,
    Scenario,
    Simulation,
    simulate,
    write_scenario,
)
from natproof.testing.strategies import scenarios
from natproof.verdicts import Verdict

NAT_IP = "203.0.113.2"
SNAT_VERDICTS = {"translated", "no_reply", "reply_dropped"}
Tuple5 = tuple[str, str, int, str, int]


@dataclass(frozen=True)
class Rec:
    """One captured frame, decoded by dpkt."""

    ts_ns: int
    frame: bytes
    link: Any
    ethertype: int
    l3: Any

    @property
    def ipv4(self) -> dpkt.ip.IP | None:
        return self.l3 if isinstance(self.l3, dpkt.ip.IP) else None

    @property
    def tuple5(self) -> Tuple5 | None:
        """(proto, src, sport, dst, dport) of an IPv4 TCP/UDP/ICMP echo packet; echo requests put the
        identifier in sport, echo replies in dport (so a reply's tuple is its request's, reversed)."""
        ip = self.ipv4
        if ip is None:
            return None
        src, dst = str(ipaddress.IPv4Address(ip.src)), str(ipaddress.IPv4Address(ip.dst))
        if isinstance(ip.data, dpkt.tcp.TCP):
            return ("tcp", src, ip.data.sport, dst, ip.data.dport)
        if isinstance(ip.data, dpkt.udp.UDP):
            return ("udp", src, ip.data.sport, dst, ip.data.dport)
        if isinstance(ip.data, dpkt.icmp.ICMP) and ip.data.type in (0, 8):
            ident = struct.unpack("!H", bytes(ip.data.data)[:2])[0]
            return ("icmp", src, ident, dst, 0) if ip.data.type == 8 else ("icmp", src, 0, dst, ident)
        return None


@dataclass(frozen=True)
class Capture:
    magic: int
    linktype: int
    recs: tuple[Rec, ...]


def read_capture(path: Path) -> Capture:
    magic = struct.unpack("<I", path.read_bytes()[:4])[0]
    recs = []
    with path.open("rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        linktype = reader.datalink()
        for ts, buf in reader:
            # dpkt gives an exact Decimal for nanosecond files and a float for microsecond ones.
            ts_ns = int(ts * 10**9) if isinstance(ts, Decimal) else round(ts * 1e6) * 1000
            if linktype == dpkt.pcap.DLT_EN10MB:
                link = dpkt.ethernet.Ethernet(buf)
                ethertype, l3 = link.type, link.data
            elif linktype == 276:
                link = dpkt.sll2.SLL2(buf)
                ethertype, l3 = link.ethtype, link.data
            else:
                assert linktype == 101
                link = None
                ethertype = 0x0800 if buf[0] >> 4 == 4 else 0x86DD
                l3 = dpkt.ip.IP(buf) if ethertype == 0x0800 else dpkt.ip6.IP6(buf)
            recs.append(Rec(ts_ns, buf, link, ethertype, l3))
    return Capture(magic, linktype, tuple(recs))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Capture, Capture]]:
    out: dict[str, tuple[dict[str, Any], Capture, Capture]] = {}
    root = tmp_path_factory.mktemp("scenarios")
    for name, scenario in SCENARIOS.items():
        truth = write_scenario(scenario, root / name)
        assert json.loads((root / name / "expected.json").read_text()) == truth
        out[name] = (
            truth,
            read_capture(root / name / "inside.pcap"),
            read_capture(root / name / "outside.pcap"),
        )
    return out


def conn_tuple(conn: dict[str, Any], side: str) -> Tuple5:
    t = conn[side]
    return (conn["proto"], t["src"], t["sport"], t["dst"], t["dport"])


def reverse(t: Tuple5) -> Tuple5:
    return (t[0], t[3], t[4], t[1], t[2])


def by_tuple(cap: Capture) -> dict[Tuple5, list[Rec]]:
    out: dict[Tuple5, list[Rec]] = {}
    for rec in cap.recs:
        if rec.tuple5 is not None:
            out.setdefault(rec.tuple5, []).append(rec)
    return out


def expected_counts(truth: dict[str, Any], side: str) -> Counter[Tuple5]:
    want: Counter[Tuple5] = Counter()
    for conn in truth["connections"]:
        if conn[side] is None:
            continue
        t = conn_tuple(conn, side)
        want[t] += conn["packets"][f"egress_{side}"]
        want[reverse(t)] += conn["packets"][f"reply_{side}"]
    return +want


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_counts_per_side_match_truth(written: dict[str, Any], name: str) -> None:
    truth, inside, outside = written[name]
    assert len(truth["connections"]) == len(SCENARIOS[name].flows)
    for side, cap in (("inside", inside), ("outside", outside)):
        seen = Counter({t: len(recs) for t, recs in by_tuple(cap).items()})
        # Every IPv4 TCP/UDP/ICMP packet belongs to a connection of the truth, and no packet is missing.
        assert seen == expected_counts(truth, side), side


def per_connection(truth: dict[str, Any], cap: Capture, side: str) -> dict[tuple[int, str], list[Rec]]:
    """Each connection's packets on one side, by (index, direction). Connections sharing a tuple never
    overlap in time, so each takes, in truth order, as many of that tuple's packets as it counts."""
    pool = {t: list(recs) for t, recs in by_tuple(cap).items()}
    out: dict[tuple[int, str], list[Rec]] = {}
    for i, conn in enumerate(truth["connections"]):
        if conn[side] is None:
            continue
        t = conn_tuple(conn, side)
        for direction, key in (("egress", t), ("reply", reverse(t))):
            n = conn["packets"][f"{direction}_{side}"]
            recs = pool.get(key, [])
            out[(i, direction)], pool[key] = recs[:n], recs[n:]
    return out


def pairs(truth: dict[str, Any], inside: Capture, outside: Capture) -> list[tuple[str, Rec, Rec]]:
    """(direction, inside copy, outside copy) of every packet seen on both sides, matched by order."""
    ins, outs = per_connection(truth, inside, "inside"), per_connection(truth, outside, "outside")
    out: list[tuple[str, Rec, Rec]] = []
    for i, conn in enumerate(truth["connections"]):
        if conn["outside"] is None:
            continue
        out += [("egress", a, b) for a, b in zip(ins[(i, "egress")], outs[(i, "egress")], strict=True)]
        if conn["verdict"] == "translated":
            out += [("reply", a, b) for a, b in zip(ins[(i, "reply")], outs[(i, "reply")], strict=True)]
    return out


NON_GRO = sorted(name for name, s in SCENARIOS.items() if not s.gro)


@pytest.mark.parametrize("name", NON_GRO)
def test_copies_differ_only_by_nat_and_ttl(written: dict[str, Any], name: str) -> None:
    truth, inside, outside = written[name]
    scenario = SCENARIOS[name]
    offset_ns = round(scenario.clock_offset_s * 1e9)
    slack = 0 if scenario.is_nanosecond("inside") and scenario.is_nanosecond("outside") else 1000
    matched = pairs(truth, inside, outside)
    assert matched
    for direction, a, b in matched:
        ip_in, ip_out = a.ipv4, b.ipv4
        assert ip_in is not None and ip_out is not None
        if direction == "egress":
            assert ip_in.ttl - ip_out.ttl == 1
            delay = b.ts_ns - offset_ns - a.ts_ns
        else:
            assert ip_out.ttl - ip_in.ttl == 1
            delay = a.ts_ns - (b.ts_ns - offset_ns)
        assert 20_000 - slack <= delay <= 80_000 + slack
        assert ip_in.id == ip_out.id
        assert ip_in.df == ip_out.df
        l4_in, l4_out = ip_in.data, ip_out.data
        if isinstance(l4_in, dpkt.icmp.ICMP):
            # dpkt leaves the echo header in the data: the identifier (NATed) then sequence and payload.
            assert l4_in.type == l4_out.type
            assert bytes(l4_in.data)[2:] == bytes(l4_out.data)[2:]
        else:
            assert bytes(l4_in.data) == bytes(l4_out.data)
        if isinstance(l4_in, dpkt.tcp.TCP):
            for attr in ("seq", "ack", "flags", "win", "opts"):
                assert getattr(l4_in, attr) == getattr(l4_out, attr), attr


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_outside_source_is_nat_ip_for_translated(written: dict[str, Any], name: str) -> None:
    truth, _inside, outside = written[name]
    outs = by_tuple(outside)
    for conn in truth["connections"]:
        verdict = conn["verdict"]
        if verdict in SNAT_VERDICTS:
            assert conn["outside"]["src"] == SCENARIOS[name].nat_ip
            for rec in outs[conn_tuple(conn, "outside")]:
                assert rec.tuple5 is not None and rec.tuple5[1] == NAT_IP
        elif verdict == "untranslated":
            assert conn["outside"] == conn["inside"]
        else:
            assert conn["outside"] is None
            assert conn["packets"]["egress_outside"] == conn["packets"]["reply_outside"] == 0


def test_basic_keeps_ports_and_reused_tuple_is_new_connection(written: dict[str, Any]) -> None:
    truth, inside, _outside = written["basic"]
    for conn in truth["connections"]:
        assert conn["outside"]["sport"] == conn["inside"]["sport"]
        assert conn["verdict"] == "translated"
    reused = ("tcp", "10.244.0.10", 40000, "198.51.100.10", 80)
    syns = [r for r in by_tuple(inside)[reused] if r.l3.data.flags == dpkt.tcp.TH_SYN]
    assert len(syns) == 2
    assert syns[0].l3.data.seq != syns[1].l3.data.seq
    assert syns[1].ts_ns - syns[0].ts_ns == pytest.approx(30e9, abs=1e6)


def test_port_collision_rewrites_only_the_clashing_port(written: dict[str, Any]) -> None:
    truth, _inside, outside = written["port_collision"]
    ports = [conn["outside"]["sport"] for conn in truth["connections"]]
    assert all(conn["inside"]["sport"] == 40000 for conn in truth["connections"])
    assert ports[0] == 40000 and ports[3] == 40000  # first mapping, and one made after all expired
    assert ports[1] != 40000 and ports[2] != 40000 and ports[1] != ports[2]
    assert all(1024 <= p <= 65535 for p in ports)
    syn_ports = [
        r.tuple5[2]
        for r in outside.recs
        if r.tuple5 is not None and r.tuple5[1] == NAT_IP and r.l3.data.flags == dpkt.tcp.TH_SYN
    ]
    assert syn_ports == ports


def test_random_fully_rewrites_every_port(written: dict[str, Any]) -> None:
    truth, inside, outside = written["random_fully"]
    inside_ports = {r.tuple5[2] for r in inside.recs if r.tuple5 is not None and r.tuple5[1] != NAT_IP}
    outside_ports = {r.tuple5[2] for r in outside.recs if r.tuple5 is not None and r.tuple5[1] == NAT_IP}
    assert len(outside_ports) == len(truth["connections"])
    assert not inside_ports & outside_ports
    for conn in truth["connections"]:
        assert conn["outside"]["sport"] != conn["inside"]["sport"]


def test_icmp_identifier_clash_rewrites_one(written: dict[str, Any]) -> None:
    truth, inside, outside = written["icmp"]
    same = [c for c in truth["connections"] if c["inside"]["sport"] == 0x1C2A]
    assert len(same) == 2
    assert sorted(c["outside"]["sport"] == 0x1C2A for c in same) == [False, True]
    for conn in same:
        assert conn["inside"]["dport"] == conn["outside"]["dport"] == 0
        mapped = conn["outside"]["sport"]
        replies_out = by_tuple(outside)[reverse(conn_tuple(conn, "outside"))]
        replies_in = by_tuple(inside)[reverse(conn_tuple(conn, "inside"))]
        assert [r.l3.data.type for r in replies_out] == [0, 0, 0]
        assert all(struct.unpack("!H", bytes(r.l3.data.data)[:2])[0] == mapped for r in replies_out)
        assert all(struct.unpack("!H", bytes(r.l3.data.data)[:2])[0] == 0x1C2A for r in replies_in)


def test_every_verdict(written: dict[str, Any]) -> None:
    truth, _inside, _outside = written["every_verdict"]
    conns = {c["verdict"]: c for c in truth["connections"]}
    assert set(conns) == set(OUTCOMES)
    p = {verdict: c["packets"] for verdict, c in conns.items()}
    assert p["translated"]["reply_outside"] > 0 and p["translated"]["reply_inside"] > 0
    assert p["no_reply"] == {"egress_inside": 2, "egress_outside": 2, "reply_outside": 0, "reply_inside": 0}
    assert p["reply_dropped"] == {
        "egress_inside": 2,
        "egress_outside": 2,
        "reply_outside": 2,
        "reply_inside": 0,
    }
    assert p["untranslated"] == {
        "egress_inside": 2,
        "egress_outside": 2,
        "reply_outside": 0,
        "reply_inside": 0,
    }
    assert p["not_forwarded"] == {
        "egress_inside": 2,
        "egress_outside": 0,
        "reply_outside": 0,
        "reply_inside": 0,
    }
    assert p["internal"]["egress_outside"] == p["internal"]["reply_outside"] == 0
    assert p["internal"]["reply_inside"] > 0
    assert ipaddress.IPv4Address(conns["internal"]["inside"]["dst"]) in ipaddress.IPv4Network("10.244.0.0/16")


def test_syn_retransmissions(written: dict[str, Any]) -> None:
    truth, inside, outside = written["retransmit"]
    conns = {c["verdict"]: c for c in truth["connections"]}
    syn_ack = dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    for side, cap in (("inside", inside), ("outside", outside)):
        for verdict in ("translated", "no_reply", "reply_dropped"):
            recs = by_tuple(cap)[conn_tuple(conns[verdict], side)]
            syns = [r for r in recs if r.l3.data.flags == dpkt.tcp.TH_SYN]
            assert len(syns) == 2
            assert syns[0].l3.data.seq == syns[1].l3.data.seq
            assert syns[0].l3.id != syns[1].l3.id
            assert syns[1].ts_ns - syns[0].ts_ns == pytest.approx(1e9, abs=100_000)
            if verdict == "translated":
                # Only the retransmitted SYN was answered: the SYN-ACK follows it.
                replies = by_tuple(cap)[reverse(conn_tuple(conns[verdict], side))]
                syn_acks = [r for r in replies if r.l3.data.flags == syn_ack]
                assert len(syn_acks) == 1 and syn_acks[0].ts_ns > syns[1].ts_ns
    dropped_out = by_tuple(outside)[reverse(conn_tuple(conns["reply_dropped"], "outside"))]
    assert [r.l3.data.flags for r in dropped_out] == [syn_ack] * 2
    assert reverse(conn_tuple(conns["reply_dropped"], "inside")) not in by_tuple(inside)


def test_clock_offset_shifts_outside(written: dict[str, Any]) -> None:
    truth, inside, outside = written["clock_offset"]
    assert truth["clock_offset_s"] == 3.5
    for conn in truth["connections"]:
        first_in = by_tuple(inside)[conn_tuple(conn, "inside")][0].ts_ns
        first_out = by_tuple(outside)[conn_tuple(conn, "outside")][0].ts_ns
        assert 3_500_020_000 <= first_out - first_in <= 3_500_080_000


def test_gro_merges_outside_reply_segments(written: dict[str, Any]) -> None:
    truth, inside, outside = written["gro"]
    flows = SCENARIOS["gro"].flows
    for conn, flow in zip(truth["connections"], flows, strict=True):
        assert conn["inside"]["sport"] == flow.sport
        segs_in = [r for r in by_tuple(inside)[reverse(conn_tuple(conn, "inside"))] if len(r.l3.data.data)]
        data_out = [r for r in by_tuple(outside)[reverse(conn_tuple(conn, "outside"))] if len(r.l3.data.data)]
        assert len(segs_in) == flow.requests * flow.response_segments
        assert len(data_out) == flow.requests
        merged = conn["packets"]["reply_inside"] - conn["packets"]["reply_outside"]
        assert merged == flow.requests * (flow.response_segments - 1)
        for big in data_out:
            ip = big.l3
            assert ip.len == len(bytes(ip)) and len(big.frame) == 14 + ip.len
            start, payload = ip.data.seq, bytes(ip.data.data)
            parts = [r for r in segs_in if 0 <= (r.l3.data.seq - start) % 2**32 < len(payload)]
            assert len(parts) == flow.response_segments
            assert b"".join(bytes(r.l3.data.data) for r in parts) == payload
            assert all(len(r.l3.data.data) <= 1460 for r in parts)
            assert ip.id == parts[0].l3.id and ip.data.flags == parts[-1].l3.data.flags
            if flow.response_segments > 1:
                assert len(payload) > 1460


def test_noise_present_and_never_a_connection(written: dict[str, Any]) -> None:
    for name, (_truth, inside, outside) in written.items():
        scenario = SCENARIOS[name]
        for side, cap in (("inside", inside), ("outside", outside)):
            arp = [r for r in cap.recs if r.ethertype == 0x0806]
            rs = [
                r
                for r in cap.recs
                if isinstance(r.l3, dpkt.ip6.IP6)
                and r.l3.nxt == 58
                and r.l3.data.type == 133
                and r.l3.dst == ipaddress.IPv6Address("ff02::2").packed
            ]
            igmp = [r for r in cap.recs if r.ipv4 is not None and r.ipv4.p == 2]
            assert rs and igmp, (name, side)
            assert bool(arp) == (scenario.link(side) != "raw"), (name, side)
            for r in arp + rs + igmp:
                assert r.tuple5 is None
    sim = simulate(dataclasses.replace(SCENARIOS["basic"], noise=False))
    assert all(p.connection is not None for p in sim.inside + sim.outside)


def test_outside_replies_from_the_wire_are_padded(written: dict[str, Any]) -> None:
    _truth, _inside, outside = written["every_verdict"]
    # ARP from the router arrives off the wire (padded to 60 bytes); the node's own is captured unpadded.
    router = ipaddress.IPv4Address("203.0.113.1").packed
    arp = [r for r in outside.recs if r.ethertype == 0x0806]
    assert {len(r.frame) for r in arp if r.l3.spa == router} == {60}
    assert {len(r.frame) for r in arp if r.l3.spa != router} == {42}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    scenario = SCENARIOS["basic"]
    write_scenario(scenario, tmp_path / "a")
    write_scenario(scenario, tmp_path / "b")
    write_scenario(dataclasses.replace(scenario, seed=99), tmp_path / "c")
    for name in ("inside.pcap", "outside.pcap", "expected.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "inside.pcap").read_bytes() != (tmp_path / "c" / "inside.pcap").read_bytes()


def test_timestamp_precision_magic(written: dict[str, Any]) -> None:
    _truth, inside, outside = written["mixed_precision"]
    assert inside.magic == 0xA1B2C3D4 and outside.magic == 0xA1B23C4D
    assert all(r.ts_ns % 1000 == 0 for r in inside.recs)
    assert any(r.ts_ns % 1000 for r in outside.recs)
    _truth, inside, outside = written["basic"]
    assert inside.magic == outside.magic == 0xA1B23C4D


def test_link_types(written: dict[str, Any]) -> None:
    _truth, inside, outside = written["sll2"]
    assert (inside.linktype, outside.linktype) == (276, 1)
    for rec in inside.recs:
        assert rec.link.hrd == 1 and rec.link.hlen == 6 and rec.link.intindex >= 10
    egress = [r for r in inside.recs if r.ipv4 is not None and r.ipv4.ttl == 64 and r.tuple5 is not None]
    assert egress and all(r.link.type == 0 for r in egress)  # PACKET_HOST: the pod sent it to us
    replies = [r for r in inside.recs if r.ipv4 is not None and r.ipv4.ttl < 64 and r.tuple5 is not None]
    assert replies and all(r.link.type == 4 for r in replies)  # PACKET_OUTGOING: we sent it to the pod
    # Kubernetes CNIs give pods the MAC 0a:58:<ip>; SLL2 records the sender's address.
    pod_macs = {b"\x0a\x58" + ipaddress.IPv4Address(f.pod).packed for f in SCENARIOS["sll2"].flows}
    assert {r.link.hdr[:6] for r in egress} == pod_macs
    _truth, inside, outside = written["raw"]
    assert (inside.linktype, outside.linktype) == (1, 101)
    assert {r.frame[0] >> 4 for r in outside.recs} == {4, 6}


def test_truth_shape(written: dict[str, Any]) -> None:
    for name, (truth, inside, _outside) in written.items():
        assert list(truth) == ["schema", "scenario", "source", "pod_cidr", "clock_offset_s", "connections"]
        assert truth["schema"] == "natproof.truth/1" and truth["source"] == "generator"
        assert truth["scenario"] == name and truth["pod_cidr"] == "10.244.0.0/16"
        assert isinstance(truth["clock_offset_s"], float)
        for conn in truth["connections"]:
            assert set(conn) == {"proto", "inside", "outside", "verdict", "packets"}
            assert conn["verdict"] in {v.value for v in Verdict}
            for side in ("inside", "outside"):
                if conn[side] is not None:
                    t = conn[side]
                    assert isinstance(t["src"], str) and isinstance(t["dst"], str)
                    assert isinstance(t["sport"], int) and isinstance(t["dport"], int)
        # Connections come in order of their first packet (always the pod's first egress, inside).
        firsts: dict[Tuple5, int] = {}
        for rec in inside.recs:
            if rec.tuple5 is not None:
                firsts.setdefault(rec.tuple5, rec.ts_ns)
        tuples = [conn_tuple(c, "inside") for c in truth["connections"]]
        if len(set(tuples)) == len(tuples):  # with a reused tuple only its first connection is found
            order = [firsts[t] for t in tuples]
            assert order == sorted(order)


def test_rejects_unsafe_or_ambiguous_scenarios() -> None:
    pod = "10.244.0.10"
    with pytest.raises(ValueError, match="documentation"):
        simulate(Scenario("bad", (Flow("tcp", pod, 40000, "198.18.0.1", 80),)))
    with pytest.raises(ValueError, match="internal"):
        simulate(Scenario("bad", (Flow("tcp", pod, 40000, "198.51.100.1", 80, "internal"),)))
    with pytest.raises(ValueError, match="overlap"):
        simulate(Scenario("bad", (Flow("tcp", pod, 40000, "198.51.100.1", 80),) * 2))


def check_consistent(sim: Simulation) -> None:
    """Invariants every simulation must hold, checked on the frames themselves (decoded by dpkt)."""
    scenario, truth = sim.scenario, sim.truth
    conns = truth["connections"]
    assert sorted((f.proto, f.pod, f.sport, f.dst, f.dport, f.outcome) for f in scenario.flows) == sorted(
        (c["proto"], *(c["inside"][k] for k in ("src", "sport", "dst", "dport")), c["verdict"]) for c in conns
    )
    counts: Counter[tuple[int, str, str]] = Counter()
    first: dict[int, int] = {}
    offset_ns = round(scenario.clock_offset_s * 1e9)
    for side, packets, linktype in (
        ("inside", sim.inside, sim.inside_linktype),
        ("outside", sim.outside, sim.outside_linktype),
    ):
        assert [p.ts_ns for p in packets] == sorted(p.ts_ns for p in packets)
        for p in packets:
            if p.connection is None:
                continue
            assert p.direction is not None
            counts[(p.connection, side, p.direction)] += 1
            conn = conns[p.connection]
            if linktype == 1:
                l3 = dpkt.ethernet.Ethernet(p.data).data
            elif linktype == 276:
                l3 = dpkt.sll2.SLL2(p.data).data
            else:
                l3 = dpkt.ip.IP(p.data)
            rec = Rec(p.ts_ns, p.data, None, 0x0800, l3)
            want = conn_tuple(conn, side)
            assert rec.tuple5 == (want if p.direction == "egress" else reverse(want))
            true_ns = p.ts_ns - (offset_ns if side == "outside" else 0)
            first[p.connection] = min(first.get(p.connection, true_ns), true_ns)
    for i, conn in enumerate(conns):
        for key, n in conn["packets"].items():
            direction, side = key.split("_")
            assert counts[(i, side, direction)] == n, (conn, key)
        assert conn["packets"]["egress_inside"] >= 1
    # No two live mappings share an outside tuple; a kept port was free, a rewritten one was not.
    snat = [(i, c) for i, c in enumerate(conns) if c["verdict"] in SNAT_VERDICTS]
    last: dict[int, int] = {}
    for side, packets in (("inside", sim.inside), ("outside", sim.outside)):
        shift = offset_ns if side == "outside" else 0
        for p in packets:
            if p.connection is not None:
                last[p.connection] = max(last.get(p.connection, 0), p.ts_ns - shift)
    for i, c in snat:
        live = [
            d
            for j, d in snat
            if j != i
            and d["inside"] != c["inside"]  # a TCP SYN on a TIME_WAIT entry replaces that entry
            and first[j] <= first[i] <= last[j] + 120e9 + 1000
            and (d["outside"]["dst"], d["outside"]["dport"], d["proto"])
            == (c["outside"]["dst"], c["outside"]["dport"], c["proto"])
        ]
        assert c["outside"]["sport"] not in {d["outside"]["sport"] for d in live}
        if scenario.random_fully:
            assert c["outside"]["sport"] != c["inside"]["sport"]
        elif c["outside"]["sport"] != c["inside"]["sport"]:
            assert c["inside"]["sport"] in {d["outside"]["sport"] for d in live}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_named_scenarios_are_consistent(name: str) -> None:
    check_consistent(simulate(SCENARIOS[name]))


@settings(max_examples=25, deadline=None)
@given(scenarios())
def test_random_scenarios_are_consistent(scenario: Scenario) -> None:
    assert 1 <= len(scenario.flows) <= 8
    check_consistent(simulate(scenario))
