"""captures/overlay: two nodes joined by flannel's VXLAN, recorded with the real kernel (natproof lab run overlay).

Pod to pod across the nodes crosses node1's eth0 inside VXLAN (UDP 8472) and is never NATed: natproof must call it
internal, with the inner tuple unchanged on the outside and the tunnel as that leg's underlay, and must not be misled
by the tunnel's own UDP flows; egress is masqueraded as on any node. Counts are those of the kernel's truth.json.
(tests/test_overlay.py tests the decoders on synthetic frames of every encapsulation.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from natproof.check import capture_pair, compare, load_truth, single_captures
from natproof.correlate import correlate
from natproof.lab.scenarios import NODE2, NODE_IP, POD2_REMOTE, SERVER, vxlan_packets

CASE = Path(__file__).resolve().parent.parent / "captures" / "overlay"
pytestmark = pytest.mark.skipif(not (CASE / "truth.json").is_file(), reason="captures/overlay not recorded")
PROTO = {"tcp": 6, "udp": 17, "icmp": 1}


def _truth() -> list[dict]:
    return load_truth(CASE / "truth.json")["connections"]


def _t(d: dict | None) -> tuple | None:
    return None if d is None else (d["src"], d["sport"], d["dst"], d["dport"])


def test_the_recording_holds_the_tunnel_and_the_truth_says_internal() -> None:
    # What the kernel did, read without natproof: five connections to pod2 on node2 (three HTTP, one UDP socket,
    # one echo series), each inside VXLAN on eth0 both ways between the nodes' addresses, untranslated; three
    # egress connections masqueraded.
    truth = _truth()
    across = [c for c in truth if c["inside"]["dst"] == POD2_REMOTE]
    egress = [c for c in truth if c["inside"]["dst"] == SERVER]
    assert len(truth) == 8 and len(across) + len(egress) == 8
    assert Counter(c["proto"] for c in across) == {"tcp": 3, "udp": 1, "icmp": 1}
    assert Counter(c["proto"] for c in egress) == {"tcp": 2, "udp": 1}
    tunnelled = {(outer, inner) for outer, inner in vxlan_packets(CASE / "outside.pcap")}
    nodes = (NODE_IP, NODE2.ip)
    for c in across:
        assert c["verdict"] == "internal" and c["rewrites"] == [], c
        assert c["outside"] == c["inside"] == c["original"] == c["translated"], c
        src, sport, dst, dport = _t(c["inside"])  # type: ignore[misc]
        proto = PROTO[c["proto"]]
        # An echo reply carries the request's identifier (sport of the truth's ICMP tuple).
        back = (dst, src, proto, sport, 0) if c["proto"] == "icmp" else (dst, src, proto, dport, sport)
        assert (nodes, (src, dst, proto, sport, dport)) in tunnelled, c
        assert (nodes[::-1], back) in tunnelled, c
    for c in egress:
        assert c["verdict"] == "translated" and c["outside"]["src"] == NODE_IP and "src" in c["rewrites"], c


@pytest.mark.parametrize("pod_cidr", ["given", "inferred"])
def test_cross_node_pod_traffic_is_internal_and_egress_translated(pod_cidr: str) -> None:
    doc = load_truth(CASE / "truth.json")
    options = {"pod_cidr": doc["pod_cidr"]} if pod_cidr == "given" else {}
    result = correlate(*capture_pair(CASE), **options)
    rep = compare(result, doc)
    assert rep.ok, rep.to_dict()
    got = result.to_dict()["connections"]
    # Each tunnel flow (UDP 8472 between the nodes) is the node's own traffic, no connection of the NAT's.
    assert len(got) == len(doc["connections"]) == 8
    assert Counter(c["verdict"] for c in got) == Counter(c["verdict"] for c in doc["connections"]) == {
        "internal": 5, "translated": 3}
    for c in got:
        if c["inside"]["dst"] == POD2_REMOTE:
            # Crossed eth0 encapsulated, unchanged: the outside tuple is the inside one.
            assert c["verdict"] == "internal" and c["rewrites"] == [], c
            assert _t(c["outside"]) == _t(c["inside"]) == _t(c["original"]) == _t(c["translated"]), c
            # Its outside leg keeps the tunnel it crossed in: flannel's VXLAN between the two nodes, VNI 1.
            assert [leg["underlay"] for leg in c["legs"]] == [None, {"encap": "vxlan", "src": NODE_IP,
                                                                     "dst": NODE2.ip, "vni": 1}], c["legs"]
        else:
            assert c["verdict"] == "translated" and c["outside"]["src"] == NODE_IP, c
            assert all(leg["underlay"] is None for leg in c["legs"]), c["legs"]


@pytest.mark.parametrize("name", ["any.pcap", "node.pcapng"])
def test_one_capture_of_the_node_chooses_eth0_not_the_vxlan_device(name: str) -> None:
    # The node's flannel.1 carries the same pod-to-pod packets decapsulated (TTL one lower than on cni0, like eth0's
    # inner packets): it is neither the pod side nor the uplink.
    (single,) = [p for p in single_captures(CASE) if p.name.removesuffix(".gz") == name]
    result = correlate(single, interfaces=CASE / "links.txt")
    assert compare(result, load_truth(CASE / "truth.json")).ok
    assert result.inside.chosen == result.outside.chosen == "chosen"
    assert result.outside.interfaces == ("eth0",)
    assert "flannel.1" not in result.inside.interfaces
    keys = ("proto", "initiator", "original", "translated", "verdict")
    pair = correlate(*capture_pair(CASE)).to_dict()["connections"]
    assert [{k: c[k] for k in keys} for c in result.to_dict()["connections"]] == [{k: c[k] for k in keys}
                                                                                  for c in pair]


def test_the_kernel_record_confirms_every_connection() -> None:
    # conntrack tracked the inner flows (reply tuple = original reversed) and, apart, each tunnel flow.
    doc = correlate(*capture_pair(CASE), conntrack=CASE / "conntrack.log").to_dict()
    assert [c["kernel"] for c in doc["connections"]] == ["confirmed"] * 8


def test_the_readme_overlay_example_is_what_the_command_prints(tmp_path: Path) -> None:
    from natproof.cli import main

    repo = Path(__file__).resolve().parent.parent
    block = (repo / "README.md").read_text().split("$ natproof correlate captures/overlay/inside.pcap", 1)[1]
    shown = [line for line in block.split("```", 1)[0].splitlines()[1:] if line.strip() and line != "..."]
    out = tmp_path / "t.txt"
    assert main(["correlate", str(repo / "captures/overlay/inside.pcap"), str(repo / "captures/overlay/outside.pcap"),
                 "--format", "table", "--quiet", "-o", str(out)]) == 0
    printed = [line.rstrip() for line in out.read_text().splitlines()]
    assert len(shown) > 10 and all(line in printed for line in shown)
