"""Overlay packets (VXLAN, Geneve, IP-in-IP, GRE): both decoders peel them alike, matching reads the inner packet,
the outer one is each leg's underlay, and pod-to-pod traffic through an overlay is internal."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl
import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap

from natproof.check import compare
from natproof.cli import main
from natproof.correlate import correlate
from natproof.decode import Overlay, parse_underlay
from natproof.packets import load_packets
from natproof.testing.scenario import SCENARIOS, UNDERLAY_DST, UNDERLAY_SRC, UNDERLAY_VNI, write_scenario

POD, PEER = "10.244.0.10", "10.244.1.20"
NODE1, NODE2 = "192.168.50.1", "192.168.50.2"


def _eth() -> Ether:
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _inner(ttl: int = 63) -> IP:
    return IP(src=POD, dst=PEER, ttl=ttl, id=7) / TCP(sport=40000, dport=8080, flags="S", seq=1000)


def _outer(proto: int | None = None) -> IP:
    return IP(src=NODE1, dst=NODE2) if proto is None else IP(src=NODE1, dst=NODE2, proto=proto)


# (frame, expected underlay or None for a frame that is skipped, skip reason)
FRAMES = [
    ("vxlan flannel", _eth() / _outer() / UDP(sport=1, dport=8472) / VXLAN(flags=8, vni=1) / _eth() / _inner(),
     f"vxlan {NODE1} {NODE2} 1"),
    ("vxlan iana, ipv6 inside", _eth() / _outer() / UDP(sport=1, dport=4789) / VXLAN(flags=8, vni=77) / _eth()
     / IPv6(src="fd00::1", dst="fd00:1::2") / UDP(sport=5353, dport=53) / (b"q" * 40),
     f"vxlan {NODE1} {NODE2} 77"),
    ("vxlan over ipv6", _eth() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=4789)
     / VXLAN(flags=8, vni=5) / _eth() / _inner(), "vxlan 2001:db8::1 2001:db8::2 5"),
    ("geneve", _eth() / _outer() / UDP(sport=1, dport=6081) / GENEVE(vni=9, proto=0x6558) / _eth() / _inner(),
     f"geneve {NODE1} {NODE2} 9"),
    ("ipip", _eth() / _outer(4) / _inner(), f"ipip {NODE1} {NODE2} -"),
    ("gre key", _eth() / _outer() / GRE(key_present=1, key=42, proto=0x0800) / _inner(), f"gre {NODE1} {NODE2} 42"),
    ("gre ethernet", _eth() / _outer() / GRE(proto=0x6558) / _eth() / _inner(), f"gre {NODE1} {NODE2} -"),
    ("vxlan in vxlan (a mirrored overlay)", _eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=4789)
     / VXLAN(flags=8, vni=3) / _eth() / _outer() / UDP(sport=1, dport=8472) / VXLAN(flags=8, vni=1) / _eth()
     / _inner(), "vxlan 192.0.2.1 192.0.2.2 3"),
    ("vlan inside vxlan", _eth() / _outer() / UDP(sport=1, dport=4789) / VXLAN(flags=8, vni=1) / _eth()
     / Dot1Q(vlan=5) / _inner(), f"vxlan {NODE1} {NODE2} 1"),
    ("icmp error inside vxlan", _eth() / _outer() / UDP(sport=1, dport=4789) / VXLAN(flags=8, vni=1) / _eth()
     / IP(src="10.244.1.1", dst=POD) / ICMP(type=3, code=3) / _inner(), f"vxlan {NODE1} {NODE2} 1"),
    ("plain", _eth() / _inner(), None),
    ("arp inside vxlan", _eth() / _outer() / UDP(sport=1, dport=8472) / VXLAN(flags=8, vni=1) / _eth() / ARP(),
     "skip:non_ip"),
    ("udp to 4789 without the I flag", _eth() / _outer() / UDP(sport=1, dport=4789) / (b"\x00" * 16), None),
]


@pytest.fixture
def frames_pcap(tmp_path: Path) -> Path:
    path = tmp_path / "overlay.pcap"
    wrpcap(str(path), [f for _, f, _ in FRAMES])
    return path


def test_both_decoders_peel_every_encapsulation_alike(frames_pcap: Path) -> None:
    fast_info, fast = load_packets(frames_pcap, fast=True)
    ref_info, ref = load_packets(frames_pcap, fast=False)
    assert fast.equals(ref)
    assert fast_info.skipped == ref_info.skipped == {"non_ip": 1}
    # The common encapsulations of plain TCP/UDP are the columnar decoder's own; the reference sees the VLAN tag
    # inside, the ICMP error and the ARP frame.
    assert fast_info.fallback_frames == 3
    by_frame = {r["frame_no"]: r for r in fast.iter_rows(named=True)}
    for n, (name, _, want) in enumerate(FRAMES, start=1):
        if want == "skip:non_ip":
            assert n not in by_frame, name
            continue
        row = by_frame[n]
        assert row["underlay"] == want, name
        if name == "udp to 4789 without the I flag":
            assert (row["src"], row["proto"], row["dport"]) == (NODE1, 17, 4789)
        elif name.startswith("icmp error"):
            assert (row["inner_src"], row["inner_sport"], row["inner_dport"]) == (POD, 40000, 8080)
        elif "ipv6 inside" in name:
            assert (row["src"], row["dst"], row["dport"], row["payload_len"]) == ("fd00::1", "fd00:1::2", 53, 40)
        else:  # the inner packet's own fields, TTL included
            assert (row["src"], row["dst"], row["sport"], row["dport"], row["ttl"], row["ip_id"]) == \
                (POD, PEER, 40000, 8080, 63, 7), name


def test_parse_underlay_reads_the_label() -> None:
    assert parse_underlay(f"gre {NODE1} {NODE2} -") == {"encap": "gre", "src": NODE1, "dst": NODE2, "vni": None}
    assert parse_underlay("vxlan 2001:db8::1 2001:db8::2 5")["vni"] == 5
    assert parse_underlay(None) is None


def test_other_vxlan_ports_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "vx9999.pcap"
    wrpcap(str(path), [_eth() / _outer() / UDP(sport=1, dport=9999) / VXLAN(flags=8, vni=1) / _eth() / _inner()])
    for fast in (True, False):
        _, plain = load_packets(path, fast=fast)
        assert (plain["dport"][0], plain["underlay"][0]) == (9999, None)
        _, peeled = load_packets(path, fast=fast, overlay=Overlay().with_vxlan_ports((9999,)))
        assert (peeled["dport"][0], peeled["underlay"][0]) == (8080, f"vxlan {NODE1} {NODE2} 1")
    with pytest.raises(ValueError, match="not a UDP port"):
        Overlay(vxlan_ports=(70000,))


@pytest.mark.parametrize("kind", ["vxlan", "geneve", "ipip", "gre"])
def test_a_mirrored_outside_capture_matches_the_truth(kind: str, tmp_path: Path) -> None:
    """The generator's scenarios with every outside frame delivered inside an encapsulation (AWS Traffic
    Mirroring's VXLAN, a GRE mirror): the same mappings, verdicts and counts as the plain capture, and every
    outside leg says how its packets came."""
    sc = dataclasses.replace(SCENARIOS["every_verdict"], outside_underlay=kind)
    truth = write_scenario(sc, tmp_path)
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    doc = result.to_dict()
    rep = compare(doc, truth)
    assert rep.ok, rep.to_dict()
    four = ("egress_inside", "egress_outside", "reply_outside", "reply_inside")
    got = sorted(({k: c["packets"][k] for k in four} for c in doc["connections"]), key=str)
    assert got == sorted((t["packets"] for t in truth["connections"]), key=str)
    vni = None if kind == "ipip" else UNDERLAY_VNI
    outside_legs = [leg for c in doc["connections"] for leg in c["legs"] if leg["observation_point"] == "outside"]
    assert outside_legs
    assert all(leg["underlay"] == {"encap": kind, "src": UNDERLAY_SRC, "dst": UNDERLAY_DST, "vni": vni}
               for leg in outside_legs)
    inside_legs = [leg for c in doc["connections"] for leg in c["legs"] if leg["observation_point"] == "inside"]
    assert all(leg["underlay"] is None for leg in inside_legs)


def _handshake(pod_ttl: int, wrap: bool) -> list:
    """Pod to pod across nodes: SYN, SYN-ACK, ACK as the pod's veth (ttl 64 from the pod) or node1's eth0 (routed
    once: ttl 63, inside flannel's VXLAN) sees them."""
    def frame(src: str, dst: str, sport: int, dport: int, flags: str, seq: int, ack: int, ttl: int, ip_id: int):
        pkt = IP(src=src, dst=dst, ttl=ttl, id=ip_id) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
        if not wrap:
            return _eth() / pkt
        return _eth() / _outer() / UDP(sport=33000, dport=8472) / VXLAN(flags=8, vni=1) / _eth() / pkt

    reply_ttl = 62 if not wrap else 63  # the reply crossed node2 then node1 to the veth; node2 only on eth0
    return [
        frame(POD, PEER, 40000, 8080, "S", 1000, 0, pod_ttl, 1),
        frame(PEER, POD, 8080, 40000, "SA", 5000, 1001, reply_ttl, 2),
        frame(POD, PEER, 40000, 8080, "A", 1001, 5001, pod_ttl, 3),
    ]


def test_pod_to_pod_through_the_overlay_is_internal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = tmp_path / "veth.pcap", tmp_path / "eth0.pcap"
    pkts_in, pkts_out = _handshake(64, wrap=False), _handshake(63, wrap=True)
    t0 = 1_700_000_000.0
    for i, (a, b) in enumerate(zip(pkts_in, pkts_out, strict=True)):
        a.time, b.time = t0 + i * 0.01, t0 + i * 0.01 + (0.00002 if i != 1 else -0.00002)
    wrpcap(str(inside), pkts_in)
    wrpcap(str(outside), pkts_out)
    result = correlate(inside, outside, pod_cidr="10.244.0.0/16")
    doc = result.to_dict()
    [conn] = doc["connections"]
    assert conn["verdict"] == "internal"
    assert conn["original"] == conn["translated"] == {"src": POD, "sport": 40000, "dst": PEER, "dport": 8080}
    assert conn["rewrites"] == [] and conn["fates"]["crossed"] == 3  # each packet seen on both sides, once
    legs = {leg["observation_point"]: leg for leg in conn["legs"]}
    assert legs["outside"]["underlay"] == {"encap": "vxlan", "src": NODE1, "dst": NODE2, "vni": 1}
    assert legs["inside"]["underlay"] is None
    assert result.connections.filter(pl.col("verdict") == "internal").height == 1
    # The report says how the outside leg travelled.
    out = tmp_path / "report.html"
    assert main(["report", str(inside), str(outside), "--pod-cidr", "10.244.0.0/16", "-o", str(out), "--quiet"]) == 0
    assert f"(in VXLAN {NODE1} → {NODE2}, VNI 1)" in out.read_text()
    capsys.readouterr()
    # So does the table, under the connection's translated tuple.
    assert main(["correlate", str(inside), str(outside), "--pod-cidr", "10.244.0.0/16", "--format", "table",
                 "--quiet"]) == 0
    assert f"in VXLAN {NODE1} -> {NODE2}" in capsys.readouterr().out


def test_vxlan_port_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = tmp_path / "veth.pcap", tmp_path / "eth0.pcap"
    pkts_in = _handshake(64, wrap=False)
    pkts_out = [_eth() / _outer() / UDP(sport=33000, dport=9999) / VXLAN(flags=8, vni=1) / _eth() / p[IP]
                for p in _handshake(63, wrap=False)]
    for i, (a, b) in enumerate(zip(pkts_in, pkts_out, strict=True)):
        a.time, b.time = 1_700_000_000.0 + i * 0.01, 1_700_000_000.0 + i * 0.01 + 0.00002
    wrpcap(str(inside), pkts_in)
    wrpcap(str(outside), pkts_out)
    args = ["correlate", str(inside), str(outside), "--pod-cidr", "10.244.0.0/16", "--format", "json", "--quiet"]
    # Pod to pod is internal either way; only read as VXLAN did its packets cross (the outside holds them).
    main(args)
    [plain] = json.loads(capsys.readouterr().out)["connections"]
    assert (plain["verdict"], plain["fates"]["crossed"], plain["outside"]) == ("internal", 0, None)
    assert main([*args, "--vxlan-port", "9999"]) == 0
    [peeled] = json.loads(capsys.readouterr().out)["connections"]
    assert (peeled["verdict"], peeled["fates"]["crossed"]) == ("internal", 3)
    assert peeled["legs"][-1]["underlay"]["encap"] == "vxlan"
    assert main([*args, "--vxlan-port", "0"]) == 2
    assert "--vxlan-port" in capsys.readouterr().err


def test_calico_ipip_in_its_default_pool_is_internal(tmp_path: Path) -> None:
    """Calico's default pool 192.168.0.0/16: pods on two nodes (192.168.10.5, 192.168.77.9) are in different /24s,
    wider than what natproof infers around a 192.168 pod; their traffic through IPIP is still pod to pod (found by
    the new-user trial: an ERROR with a conntrack -D "fix")."""
    src, dst = "192.168.10.5", "192.168.77.9"

    def pkt(a: str, b: str, sport: int, dport: int, flags: str, seq: int, ack: int, ttl: int, wrap: bool):
        inner = IP(src=a, dst=b, ttl=ttl, id=seq % 65535) / TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                                                                 ack=ack)
        return _eth() / (IP(src="10.0.0.1", dst="10.0.0.2", proto=4) / inner if wrap else inner)

    def side(wrap: bool, ttl: int) -> list:
        return [pkt(src, dst, 40000, 80, "S", 100, 0, ttl, wrap), pkt(dst, src, 80, 40000, "SA", 900, 101, 62, wrap),
                pkt(src, dst, 40000, 80, "A", 101, 901, ttl, wrap)]

    ins, outs = side(False, 64), side(True, 63)
    for i, (a, b) in enumerate(zip(ins, outs, strict=True)):
        a.time, b.time = 1_700_000_000.0 + i * 0.01, 1_700_000_000.0 + i * 0.01 + (2e-5 if i != 1 else -2e-5)
    wrpcap(str(tmp_path / "in.pcap"), ins)
    wrpcap(str(tmp_path / "out.pcap"), outs)
    result = correlate(tmp_path / "in.pcap", tmp_path / "out.pcap")
    [conn] = result.to_dict()["connections"]
    assert conn["verdict"] == "internal" and conn["legs"][-1]["underlay"]["encap"] == "ipip"
    from natproof.diagnose import diagnose

    assert all(f.severity != "error" for f in diagnose(result))


def test_vxlan_on_a_port_not_given_is_suggested(tmp_path: Path) -> None:
    """Found by the new-user trial: VXLAN on UDP 9999 was read as plain UDP with no hint; now both decoders count
    the packets that look like VXLAN by port and warn with the option that reads them."""
    path = tmp_path / "vx9999.pcap"
    frames = [_eth() / _outer() / UDP(sport=1, dport=9999) / VXLAN(flags=8, vni=1) / _eth() / _inner()
              for _ in range(10)]
    frames += [_eth() / _outer() / UDP(sport=1, dport=5000) / (b"\x08\x00\x00\x00" + b"x" * 40) for _ in range(10)]
    wrpcap(str(path), frames)
    infos = [load_packets(path, fast=fast)[0] for fast in (True, False)]
    assert infos[0].vxlan_like == infos[1].vxlan_like == {9999: 10}
    assert all(any("--vxlan-port 9999" in w for w in i.warnings) for i in infos)
    peeled = load_packets(path, overlay=Overlay().with_vxlan_ports((9999,)))[0]
    assert not peeled.vxlan_like and not any("--vxlan-port" in w for w in peeled.warnings)
