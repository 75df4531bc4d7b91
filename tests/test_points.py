"""Tests of natproof/points.py: one capture of several interfaces split into the inside and outside observation
points, against the two-file form of the same simulated traffic."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import struct
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from pcapbytes import ipv4, ipv6, pcap, pcapng, sll2, tcp, udp

import natproof
from natproof.cli import main
from natproof.packets import load_packets
from natproof.points import read_links
from natproof.testing.interfaces import (
    BRIDGE,
    any_records,
    ip_link_text,
    single_scenario,
    write_any,
    write_node_pcapng,
    write_pcap,
)
from natproof.testing.scenario import MODEL_SCENARIOS, SCENARIOS, simulate, write_scenario

T0 = 1_700_000_000 * 10**9


def write(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def mappings(result: natproof.Result) -> list[tuple]:
    """What the single-file and two-file forms must agree on: protocol, original and translated tuples, verdict."""
    def t(d: dict | None) -> tuple | None:
        return None if d is None else (d["src"], d["sport"], d["dst"], d["dport"])

    return sorted((c["proto"], t(c["original"]), t(c["translated"]), c["initiator"], c["verdict"])
                  for c in result.to_dict()["connections"])


def two_files(scenario, tmp_path: Path, link: str) -> natproof.Result:
    folder = tmp_path / f"pair-{link}"
    write_scenario(single_scenario(scenario, link), folder)
    return natproof.correlate(folder / "inside.pcap", folder / "outside.pcap", pod_cidr=scenario.pod_cidr)


# -- naming: ip -o link ---------------------------------------------------------------------------------------


def test_ip_o_link_names_indexes_and_knows_ports_and_loopback(tmp_path: Path) -> None:
    sim = simulate(single_scenario(SCENARIOS["basic"]))
    links = read_links(write(tmp_path, ip_link_text(sim).encode(), "links.txt"))
    assert {i: (v.name, v.master, v.loopback) for i, v in links.items()} == {
        1: ("lo", None, True), 2: ("eth0", None, False), 3: ("cni0", None, False),
        10: ("veth10", "cni0", False), 11: ("veth11", "cni0", False)}


def test_ip_link_without_o_and_ip_j_link_parse_too(tmp_path: Path) -> None:
    two_lines = ("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN\n"
                 "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
                 "7: vethab12@if3: <BROADCAST,MULTICAST,UP> mtu 1500 master cni0 state UP\n"
                 "    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff link-netnsid 1\n")
    links = read_links(write(tmp_path, two_lines.encode(), "link.txt"))
    assert [(v.index, v.name, v.master, v.loopback) for v in links.values()] == [
        (1, "lo", None, True), (7, "vethab12", "cni0", False)]
    doc = [{"ifindex": 2, "ifname": "eth0", "link_type": "ether"}, {"ifindex": 1, "ifname": "lo",
                                                                      "link_type": "loopback"}]
    links = read_links(write(tmp_path, json.dumps(doc).encode(), "link.json"))
    assert [(v.index, v.name, v.loopback) for v in links.values()] == [(2, "eth0", False), (1, "lo", True)]


@pytest.mark.parametrize(("text", "problem"), [
    ("2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\n",
     "line 1 is not `ip -o link` output: '2: eth0    inet 10.0.0.5/24 brd 10.0....' (expected 'INDEX: NAME: "
     "<FLAGS> ...')"),
    ("\n\n", "no interface in it (interfaces wants the output of `ip -o link`)"),
    ("[{\"name\": \"eth0\"}]", "not `ip -j link` output (KeyError: 'ifindex')"),
])
def test_a_file_that_is_not_ip_link_output_is_an_input_error(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text.encode(), "links.txt")
    with pytest.raises(natproof.InputError) as exc:
        read_links(path)
    assert str(exc.value) == f"{path}: {problem}"


# -- the interface column -------------------------------------------------------------------------------------


def test_both_decoders_give_each_packet_its_interface(tmp_path: Path) -> None:
    raw = ipv4("10.244.0.10", "198.51.100.10", 17, udp(1000, 53, b"q"))
    data = pcapng([(101, 9, "vethab12"), (276, 9, "any"), (101, 9)],
                  [(0, T0, raw), (1, T0 + 1, sll2(raw, ifindex=7)), (1, T0 + 2, sll2(raw, ifindex=2)),
                   (2, T0 + 3, raw), (1, T0 + 4, sll2(b"\x00" * 30, ifindex=7, proto=0x0806))])
    path = write(tmp_path, data, "multi.pcapng")
    frames = []
    for fast in (True, False):
        info, pk = load_packets(path, fast=fast)
        frames.append(pk)
        assert pk.select("iface", "ifindex").rows() == [(0, -1), (1, 7), (1, 2), (2, -1)]
        assert info.if_names == ["vethab12", "any", ""]
        assert info.interface_frames == Counter({(0, -1): 1, (1, 7): 2, (1, 2): 1, (2, -1): 1})
        assert info.interface_skipped == Counter({(1, 7, "non_ip"): 1})
    assert frames[0].equals(frames[1])


# -- one capture, both points ---------------------------------------------------------------------------------


FORMS = ["basic", "every_verdict", "nodeport_inbound", "clusterip_dnat", "ftp_alg", "failures_combined"]


@pytest.mark.parametrize("name", FORMS)
def test_tcpdump_any_gives_the_connections_of_the_two_file_form(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS.get(name) or MODEL_SCENARIOS[name]
    write_any(scenario, tmp_path / "any.pcap", links=tmp_path / "links.txt")
    one = natproof.correlate(tmp_path / "any.pcap", interfaces=tmp_path / "links.txt", pod_cidr=scenario.pod_cidr)
    assert mappings(one) == mappings(two_files(scenario, tmp_path, "sll2"))
    pods = sorted(f"veth{p}" for p in {struct.unpack_from("!i", p.data, 4)[0] for p in
                                       simulate(single_scenario(scenario)).inside})
    assert sorted(one.inside.interfaces) == pods and one.outside.interfaces == ("eth0",)
    assert one.inside.chosen == one.outside.chosen == "chosen"
    points = {i.name: (i.point, i.note) for i in one.interfaces}
    assert points["cni0"][0] is None
    assert points["cni0"][1].startswith("left out: all its connection starts are copies of packets on veth")


@pytest.mark.parametrize("name", ["basic", "nodeport_inbound"])
def test_dumpcap_pcapng_gives_the_connections_of_the_two_file_form(name: str, tmp_path: Path) -> None:
    scenario = SCENARIOS.get(name) or MODEL_SCENARIOS[name]
    write_node_pcapng(scenario, tmp_path / "node.pcapng")
    one = natproof.correlate(tmp_path / "node.pcapng", pod_cidr=scenario.pod_cidr)
    assert mappings(one) == mappings(two_files(scenario, tmp_path, "ethernet"))
    assert (one.inside.interfaces, one.outside.interfaces) == (("cni0",), ("eth0",))
    assert [(i.name, i.point, i.note) for i in one.interfaces if i.name == "lo"] == [("lo", None, "left out: loopback")]


def test_without_names_indexes_read_if_n_and_the_bridge_is_still_left_out(tmp_path: Path) -> None:
    scenario = SCENARIOS["every_verdict"]
    write_any(scenario, tmp_path / "any.pcap")
    one = natproof.correlate(tmp_path / "any.pcap", pod_cidr=scenario.pod_cidr, decoder="dpkt")
    assert sorted(one.inside.interfaces) == ["if10", "if11", "if12"] and one.outside.interfaces == ("if2",)
    assert [i.name for i in one.interfaces if i.point is None] == [f"if{BRIDGE}"]
    assert mappings(one) == mappings(two_files(scenario, tmp_path, "sll2"))


def test_the_json_and_table_say_which_interfaces_and_why(tmp_path: Path) -> None:
    write_any(SCENARIOS["basic"], tmp_path / "any.pcap", links=tmp_path / "links.txt")
    one = natproof.correlate(tmp_path / "any.pcap", interfaces=tmp_path / "links.txt")
    doc = one.to_dict()
    inside = doc["captures"]["inside"]
    assert (inside["interfaces"], inside["chosen"]) == (["veth10", "veth11"], "chosen")
    assert "crossed the NAT" in inside["why"]
    by_name = {i["name"]: i for i in doc["interfaces"]}
    assert by_name["eth0"] | {"frames": 0, "ip_packets": 0, "note": ""} == {
        "path": str(tmp_path / "any.pcap"), "name": "eth0", "ifindex": 2, "pcapng_interface": 0,
        "link_type": "LINUX_SLL2", "kind": "uplink", "frames": 0, "ip_packets": 0, "point": "outside", "note": ""}
    assert by_name["lo"]["point"] is None and by_name["lo"]["frames"] == 0
    from natproof.report.table import points_lines

    lines = points_lines(one)
    assert lines[0].startswith(f"inside: {tmp_path / 'any.pcap'} veth10 (if10), veth11 (if11), chosen: ")
    assert lines[1].startswith(f"outside: {tmp_path / 'any.pcap'} eth0 (if2), chosen: ")
    assert lines[2:] == ["left out: lo (if1): loopback", "left out: cni0 (if3): all its connection starts are "
                         "copies of packets on veth10, veth11 (a bridge beside its ports, the veth of a pod another "
                         "pod calls)"]


def test_a_pod_to_pod_packet_on_both_veths_counts_once(tmp_path: Path) -> None:
    scenario = SCENARIOS["every_verdict"]  # has a pod-to-pod (internal) connection, 10.244.0.10 -> 10.244.1.20
    sim = simulate(single_scenario(scenario))
    veth = {f"10.244.{i}.{a}": 10 + n for n, (i, a) in enumerate([(0, 10), (1, 20), (2, 30)])}
    records, copies = [], 0
    for ts, frame in any_records(sim, bridge=False):
        records.append((ts, frame))
        ip = frame[20:]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        if frame[:2] == b"\x08\x00" and src in veth and dst in veth:
            # Bridged between the two pods: the other pod's veth sees the same frame a few microseconds later.
            own = struct.unpack_from("!i", frame, 4)[0]
            other = veth[src] if veth[dst] == own else veth[dst]
            records.append((ts + 3_000, frame[:4] + struct.pack("!i", other) + frame[8:]))
            copies += 1
    assert copies
    path = tmp_path / "any.pcap"
    write_pcap(path, sorted(records), 276)
    one = natproof.correlate(path, inside_if="if10,if11,if12", outside_if="if2")
    assert one.inside.skipped["interface_copy"] == copies
    assert (one.inside.chosen, one.outside.chosen) == ("given", "given")
    two = two_files(scenario, tmp_path, "sll2")
    assert mappings(one) == mappings(two)
    internal = one.connections.filter(pl.col("verdict") == "internal")
    assert internal["fate_inside_only"].to_list() == two.connections.filter(
        pl.col("verdict") == "internal")["fate_inside_only"].to_list()


def test_a_two_file_form_whose_inside_file_holds_several_interfaces(tmp_path: Path) -> None:
    scenario = SCENARIOS["basic"]
    sim = simulate(single_scenario(scenario))
    write_pcap(tmp_path / "pods.pcap", [r for r in any_records(sim) if r[1][4:8] != struct.pack("!i", 2)], 276)
    write_pcap(tmp_path / "eth0.pcap", [(p.ts_ns, p.data) for p in sim.outside], 276)
    write(tmp_path, ip_link_text(sim).encode(), "links.txt")
    res = natproof.correlate(tmp_path / "pods.pcap", tmp_path / "eth0.pcap", interfaces=tmp_path / "links.txt")
    assert (res.inside.interfaces, res.inside.chosen) == (("veth10", "veth11"), "chosen")
    assert (res.outside.interfaces, res.outside.chosen) == (("eth0",), "file")
    assert mappings(res) == mappings(two_files(scenario, tmp_path, "sll2"))
    given = natproof.correlate(tmp_path / "pods.pcap", tmp_path / "eth0.pcap", inside_if=["cni0"],
                               interfaces=tmp_path / "links.txt")
    assert (given.inside.interfaces, given.inside.chosen) == (("cni0",), "given")
    assert mappings(given) == mappings(res)


def test_inside_and_outside_given_the_wrong_way_round_look_swapped(tmp_path: Path) -> None:
    write_any(SCENARIOS["basic"], tmp_path / "any.pcap", links=tmp_path / "links.txt")
    args = {"inside_if": "eth0", "outside_if": "veth10,veth11", "interfaces": tmp_path / "links.txt"}
    with pytest.raises(natproof.InputError) as exc:
        natproof.correlate(tmp_path / "any.pcap", **args)
    assert str(exc.value).startswith(f"{tmp_path / 'any.pcap'}: the inside (eth0) and outside (veth10,veth11) look "
                                     "swapped: ")
    assert str(exc.value).endswith("; pass inside_if='veth10,veth11', outside_if='eth0' (or allow_swap=True)")
    assert exc.value.for_command_line().endswith("; pass --inside-if veth10,veth11 --outside-if eth0 (or --allow-swap)")
    swapped = natproof.correlate(tmp_path / "any.pcap", allow_swap=True, **args)
    assert swapped.inside.interfaces == ("veth10", "veth11")
    assert mappings(swapped) == mappings(natproof.correlate(tmp_path / "any.pcap", interfaces=tmp_path / "links.txt"))


# -- errors ---------------------------------------------------------------------------------------------------


def test_one_file_of_one_interface_is_an_input_error(tmp_path: Path) -> None:
    path = write(tmp_path, pcap([(T0, sll2(ipv4("10.244.0.10", "198.51.100.10", 6, tcp(1, 80, 1, 0, 2)), 5))],
                                linktype=276), "eth0.pcap")
    with pytest.raises(natproof.InputError) as exc:
        natproof.correlate(path)
    assert str(exc.value) == (f"{path}: a capture of one interface (if5) and no second capture: give the other "
                              "side's too (correlate(inside, outside)), or the node's conntrack record for the other "
                              "side (conntrack=FILE), or one capture of several interfaces (tcpdump -i any, dumpcap "
                              "-i A -i B)")
    assert exc.value.for_command_line() == (
        f"{path}: a capture of one interface (if5) and no second capture: give the other side's too (natproof "
        "correlate INSIDE OUTSIDE), or the node's conntrack record for the other side (--conntrack FILE), or one "
        "capture of several interfaces (tcpdump -i any, dumpcap -i A -i B)")


def test_unknown_or_doubly_given_interfaces_are_input_errors(tmp_path: Path) -> None:
    write_any(SCENARIOS["basic"], tmp_path / "any.pcap", links=tmp_path / "links.txt")
    path, links = tmp_path / "any.pcap", tmp_path / "links.txt"
    with pytest.raises(natproof.InputError) as exc:
        natproof.correlate(path, inside_if="vethX", interfaces=links)
    assert str(exc.value) == (f"{path}: no interface 'vethX' (inside_if); it has lo (if1), eth0 (if2), cni0 (if3), "
                              "veth10 (if10), veth11 (if11)")
    with pytest.raises(natproof.InputError, match="veth10 given as both inside_if and outside_if"):
        natproof.correlate(path, inside_if="veth10", outside_if="if10", interfaces=links)


def test_the_cli_reads_one_capture_and_exits_2_on_bad_interface_input(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write_any(SCENARIOS["basic"], tmp_path / "any.pcap", links=tmp_path / "links.txt")
    path, links = str(tmp_path / "any.pcap"), str(tmp_path / "links.txt")
    assert main(["correlate", path, "--interfaces", links, "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["captures"]["outside"]["interfaces"] == ["eth0"]
    assert main(["correlate", path, "--interfaces", links, "--format", "table"]) == 0
    assert f"outside: {path} eth0 (if2), chosen: " in capsys.readouterr().out
    assert main(["correlate", path, "--outside-if", "wlan9"]) == 2
    assert capsys.readouterr().err == (f"natproof: error: {path}: no interface 'wlan9' (--outside-if); it has if2, "
                                       "if3, if10, if11\n")
    bad = write(tmp_path, b"eth0 is up\n", "bad.txt")
    assert main(["correlate", path, "--interfaces", str(bad)]) == 2
    assert capsys.readouterr().err == (f"natproof: error: {bad}: line 1 is not `ip -o link` output: 'eth0 is up' "
                                       "(expected 'INDEX: NAME: <FLAGS> ...')\n")
    assert main(["who", "203.0.113.2:40000", path, "--interfaces", links, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["connections"]


def test_decoders_agree_on_a_capture_of_many_interfaces(tmp_path: Path) -> None:
    sim = write_any(MODEL_SCENARIOS["nodeport_inbound"], tmp_path / "any.pcap")
    assert sim.truth["connections"]
    fast, ref = (load_packets(tmp_path / "any.pcap", fast=f) for f in (True, False))
    assert fast[1].equals(ref[1])
    assert fast[0].interface_frames == ref[0].interface_frames and len(fast[0].interface_frames) > 3
    sim2 = write_node_pcapng(SCENARIOS["udp"], tmp_path / "node.pcapng")
    assert sim2.truth["connections"]
    fast, ref = (load_packets(tmp_path / "node.pcapng", fast=f) for f in (True, False))
    assert fast[1].equals(ref[1])
    assert dataclasses.replace(fast[0], fallback_frames=0) == ref[0]  # the fast one hands ICMP errors over


def test_a_bridge_that_shows_packets_past_its_nat_hook_gives_way_to_its_port() -> None:
    # Kernel capture (lab nodeport-no-endpoints, tcpdump -i any, no interface names): with br_netfilter the bridge
    # cni0 sees the pod's NodePort replies after PREROUTING undid the masquerade and before the DNAT is undone
    # (10.244.0.10:8080 -> the client), a tuple no capture point of the pod has. Chosen as the inside (its index
    # sorts first), it split each masqueraded NodePort connection into a no_reply and a made-up translated one.
    import natproof.check

    case = Path(__file__).resolve().parents[1] / "captures" / "nodeport-no-endpoints"
    one = natproof.correlate(case / "any.pcap")
    links = {link.name: link for link in read_links(case / "links.txt").values()}
    veth = next(n for n, link in links.items() if link.master == "cni0")
    assert one.inside.interfaces == (f"if{links[veth].index}",)
    assert any(i.note and i.note.startswith("left out: all its connection starts are copies of packets on")
               for i in one.interfaces if i.name == f"if{links['cni0'].index}")
    truth = json.loads((case / "truth.json").read_text())
    report = natproof.check.compare(one, truth, single_file=True)
    assert (report.found, report.mapping_right, report.verdict_right) == (4, 4, 4) and not report.unexpected


def test_nat66_between_global_prefixes_finds_its_pod_side_without_names() -> None:
    # Kernel capture (lab nat66 as tcpdump -i any, tests/variants/nat66-any): pods in 2001:db8:244::/64, no private
    # range, so nothing marked a source as a pod's and natproof refused ("cannot tell which interface is the
    # inside"). A source the NAT rewrote while keeping the destination is a pod's.
    import natproof.check

    case = Path(__file__).resolve().parent / "variants" / "nat66-any"
    one = natproof.correlate(case / "any.pcap")
    links = {link.name: link for link in read_links(case / "links.txt").values()}
    assert sorted(one.inside.interfaces) == sorted(f"if{links[n].index}" for n in ("vethpod1", "vethpod2"))
    assert one.outside.interfaces == (f"if{links['eth0'].index}",)
    assert "2001:db8:244::10" in one.inside.why
    report = natproof.check.compare(one, json.loads((case / "truth.json").read_text()), single_file=True)
    assert report.expected == report.found == report.mapping_right == report.verdict_right == 4


def test_the_choice_counts_connections_not_their_echo_requests(tmp_path: Path) -> None:
    # The generator's icmp scenario: two pods' echo series of three requests each crossed (one id kept, one
    # remapped), a third pod's two requests got no reply. Each echo series is one connection, as in the summary;
    # the choice line counted every request (8) before.
    write_any(SCENARIOS["icmp"], tmp_path / "any.pcap", links=tmp_path / "links.txt")
    one = natproof.correlate(tmp_path / "any.pcap", interfaces=tmp_path / "links.txt")
    crossed = [c for c in one.to_dict()["connections"] if c["outside"] is not None]
    assert len(crossed) == 3
    assert one.inside.why.startswith("pod side of 3 connection(s) that crossed the NAT")
    assert one.outside.why.startswith("node side of 3 connection(s) that crossed the NAT")


def test_ipv6_clusterip_client_port_is_not_past_the_hook() -> None:
    # Kernel capture (tests/variants/clusterip6, tcpdump -i any read without links.txt): pod1 calls IPv6 ClusterIPs
    # that ip6tables DNATs to pod2 on the bridge and to a server outside. pod2's replies reach pod1's port un-DNATed
    # (their source rewritten on the way out, not by PREROUTING), and an IPv6 UDP echo's reply carries its request's
    # fields (no IP id): neither is a copy past br_netfilter's hook, so pod1's port was marked like cni0 (19 and 17
    # packets) and only the packet count kept it inside. The bridge, holding the requests already DNATed, is past it.
    import sys

    import natproof.check
    from natproof.points import gather_evidence, interfaces_of
    from natproof.result import connection_dicts

    case = Path(__file__).resolve().parent / "variants" / "clusterip6"
    names = {link.index: link.name for link in read_links(case / "links.txt").values()}
    correlate_module = sys.modules["natproof.correlate"]
    info, pk = load_packets(case / "any.pcap", columns=correlate_module.DECODE_COLUMNS,
                            transform=correlate_module.packet_features)
    ev = gather_evidence(pk)
    hooked = {names[i.ifindex]: ev.past_hook[i.key] for i in interfaces_of(info, pk, None)}
    assert hooked["vethpod1"] == hooked["eth0"] == 0
    assert hooked["cni0"] > 0 and hooked["vethpod2"] > 0
    one = natproof.correlate(case / "any.pcap")
    index = {name: i for i, name in names.items()}
    # pod2's port joins for the legs DNATed to it, which no other interface of the point holds (and cni0 does
    # not hold them all: it is past the hook for the legs routed on).
    assert one.inside.interfaces == (f"if{index['vethpod1']}", f"if{index['vethpod2']}")
    assert one.outside.interfaces == (f"if{index['eth0']}",)
    report = natproof.check.compare(one, json.loads((case / "truth.json").read_text()), single_file=True)
    assert report.found == report.verdict_right == 7 and not report.unexpected
    # Every tuple as the kernel's; without --services or --service-cidr no global IPv6 ClusterIP is named a Service.
    assert report.wrong and all(w["fields"] == ["service"] for w in report.wrong)
    assert not [c for c in connection_dicts(one.connections) if c["verdict"] in ("reply_dropped", "no_reply")]


def test_a_second_uplink_holding_a_nodeports_replies_is_outside_too() -> None:
    # Kernel capture (tests/variants/asym-nodeport, tcpdump -i any): the node routes the NodePort client via a second
    # uplink, eth1, so the pod's replies leave there, reverse-translated (203.0.113.2:30080/30053 -> the client).
    # No connection starts on eth1, so the choice left it out ("no connection crossed the NAT to or from it") and
    # correlate called the datagram's replies dropped (ERROR) and the TCP ones another path, though the same file
    # holds them leaving by eth1.
    import natproof.check
    from natproof.diagnose import diagnose

    case = Path(__file__).resolve().parent / "variants" / "asym-nodeport"
    one = natproof.correlate(case / "any.pcap", interfaces=case / "links.txt")
    assert one.inside.interfaces == ("vethpod1",)
    assert one.outside.interfaces == ("eth0", "eth1")
    assert one.outside.why.endswith("; eth1: it holds the replies of 3 connection(s) that crossed the NAT, under "
                                    "their node-side tuples (another way back)")
    report = natproof.check.compare(one, json.loads((case / "truth.json").read_text()), single_file=True)
    assert report.expected == report.found == report.mapping_right == report.verdict_right == 4
    assert Counter(one.connections["verdict"]) == {"translated": 4}
    assert not [f for f in diagnose(one) if f.severity in ("error", "warning")]
    # Left out by hand, eth1's note says what it holds instead of that nothing crossed there.
    given = natproof.correlate(case / "any.pcap", interfaces=case / "links.txt", outside_if="eth0")
    assert {i.name: i.note for i in given.interfaces}["eth1"] == (
        "left out: it holds the replies of 3 connection(s) that crossed the NAT, under their node-side tuples "
        "(--outside-if takes it in)")


def test_replies_on_an_uplink_left_out_by_hand_are_no_drop() -> None:
    # The same file with --outside-if eth0: eth1, left out, holds every NodePort reply leaving toward the client,
    # reverse-translated. The datagram's replies were called reply_dropped ("Replies never crossed the node") and the
    # fix said to capture with tcpdump -i any, which this file is: they took another path, and eth1 is named.
    from natproof.diagnose import diagnose

    case = Path(__file__).resolve().parent / "variants" / "asym-nodeport"
    given = natproof.correlate(case / "any.pcap", interfaces=case / "links.txt", outside_if="eth0")
    rows = given.connections.filter(pl.col("initiator") == "outside").sort("conn").to_dicts()
    assert [(r["proto"], r["verdict"], r["left_out_interfaces"], r["left_out_replies"], r["reply_inside"])
            for r in rows] == [("tcp", "reply_other_path", ["eth1"], 5, 5), ("udp", "reply_other_path", ["eth1"], 2, 2),
                               ("tcp", "reply_other_path", ["eth1"], 5, 5)]
    doc = given.to_dict()
    assert [c["left_out"] for c in doc["connections"] if c["initiator"] == "outside"][1] == {
        "interfaces": ["eth1"], "replies": 2, "initiator": 0}
    findings = {f.kind: f for f in diagnose(given)}
    assert "reply_dropped" not in findings
    other = findings["reply_other_path"]
    assert other.fix.startswith("The capture holds them on eth1, left out of the outside point: `--outside-if "
                                "eth0,eth1` takes it in")
    assert "tcpdump -i any" not in other.fix
    assert other.evidence[1].endswith("; the same file holds 2 reply packet(s) to the client leaving by eth1, left "
                                      "out of the outside point")
    # Chosen automatically, eth1 is in the outside point: nothing left out, all 4 translated.
    auto = natproof.correlate(case / "any.pcap", interfaces=case / "links.txt")
    assert Counter(auto.connections["verdict"]) == {"translated": 4}
    assert auto.connections["left_out_interfaces"].null_count() == auto.connections.height


def _two_uplinks_links(tmp_path: Path) -> Path:
    """`ip -o link` of a node with two uplinks, eth0 (if3) and eth1 (if5), and a pod's veth on cni0 (if4)."""
    links = tmp_path / "links.txt"
    links.write_text("".join(
        f"{i}: {name}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue{master} state UP\\    link/ether "
        "02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff\n"
        for i, name, master in ((3, "eth0", ""), (4, "vethpod1", " master cni0"), (5, "eth1", ""))))
    return links


def test_replies_that_leave_by_another_uplink_are_no_drops(tmp_path: Path) -> None:
    # tcpdump -i any of a node whose NodePort replies leave by eth1 (if5), not eth0 (if3) where the requests came
    # in: two clients' datagrams to 203.0.113.2:30053, DNATed to the pod 10.244.0.10:5353 on vethpod1 (if4) and
    # masqueraded to 10.244.0.1; each reply leaves eth1 reverse-translated, TTL one lower than on the veth.
    links = _two_uplinks_links(tmp_path)
    records = []
    for n, (client, cport, masq) in enumerate((("198.51.100.20", 40001, 20001), ("198.51.100.21", 40002, 20002))):
        t = T0 + n * 100_000_000
        ask, answer = b"query %d" % n, b"answer %d" % n
        records += [
            (t, sll2(ipv4(client, "203.0.113.2", 17, udp(cport, 30053, ask), ttl=60, ip_id=100 + n), ifindex=3)),
            (t + 20_000, sll2(ipv4("10.244.0.1", "10.244.0.10", 17, udp(masq, 5353, ask), ttl=59, ip_id=100 + n),
                              ifindex=4)),
            (t + 500_000, sll2(ipv4("10.244.0.10", "10.244.0.1", 17, udp(5353, masq, answer), ttl=64, ip_id=200 + n),
                               ifindex=4)),
            (t + 520_000, sll2(ipv4("203.0.113.2", client, 17, udp(30053, cport, answer), ttl=63, ip_id=200 + n),
                               ifindex=5)),
        ]
    path = write(tmp_path, pcap(records, linktype=276), "any.pcap")
    one = natproof.correlate(path, interfaces=links)
    assert (one.inside.interfaces, one.outside.interfaces) == (("vethpod1",), ("eth0", "eth1"))
    assert "eth1: it holds the replies of 2 connection(s) that crossed the NAT" in one.outside.why
    rows = one.to_dict()["connections"]
    assert sorted((c["original"]["src"], c["verdict"]) for c in rows) == [("198.51.100.20", "translated"),
                                                                         ("198.51.100.21", "translated")]
    assert all(c["translated"]["dst"] == "10.244.0.10" for c in rows)


def test_egress_on_an_uplink_left_out_by_hand_is_named(tmp_path: Path) -> None:
    # tcpdump -i any of a node whose pod's datagrams leave by eth1 (if5), masqueraded to 203.0.113.2, while the
    # answers come in on eth0 (if3) and reach the pod on vethpod1 (if4). Given --outside-if eth0, the mapping rests on
    # the replies (flag egress_other_path); the file holds the pod's packets leaving by eth1, which diagnose names,
    # with the --outside-if that takes it in, rather than advising a capture of every uplink it already is.
    from natproof.diagnose import diagnose

    links = _two_uplinks_links(tmp_path)
    records = []
    for n in range(2):
        t, ask, answer = T0 + n * 100_000_000, b"query %d" % n, b"answer %d" % n
        records += [
            (t, sll2(ipv4("10.244.0.10", "198.51.100.10", 17, udp(40000, 53, ask), ttl=64, ip_id=100 + n),
                     ifindex=4)),
            (t + 20_000, sll2(ipv4("203.0.113.2", "198.51.100.10", 17, udp(40000, 53, ask), ttl=63, ip_id=100 + n),
                              ifindex=5)),
            (t + 500_000, sll2(ipv4("198.51.100.10", "203.0.113.2", 17, udp(53, 40000, answer), ttl=60,
                                    ip_id=200 + n), ifindex=3)),
            (t + 520_000, sll2(ipv4("198.51.100.10", "10.244.0.10", 17, udp(53, 40000, answer), ttl=59,
                                    ip_id=200 + n), ifindex=4)),
        ]
    path = write(tmp_path, pcap(records, linktype=276), "any.pcap")
    one = natproof.correlate(path, interfaces=links, outside_if="eth0")
    (row,) = one.connections.to_dicts()
    assert (row["verdict"], row["left_out_interfaces"], row["left_out_initiator"], row["left_out_replies"]) == (
        "translated", ["eth1"], 2, 0)
    (finding,) = [f for f in diagnose(one) if f.kind == "egress_other_path"]
    assert finding.evidence[0].endswith("; the same file holds 2 of the initiator's packet(s) under that tuple "
                                        "leaving by eth1, left out of the outside point")
    assert finding.fix.startswith("The capture holds them on eth1, left out of the outside point: `--outside-if "
                                  "eth0,eth1` takes it in")


# -- a Service's endpoint on the node: the DNATed leg is on its veth and cni0 only ------------------------------

_LOCAL_LINKS = "".join(
    f"{i}: {name}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue{master} state UP mode DEFAULT group "
    f"default qlen 1000\\    link/ether 02:00:00:00:00:0{i} brd ff:ff:ff:ff:ff:ff\n"
    for i, name, master in ((2, "cni0", ""), (3, "eth0", ""), (5, "vethA@if2", " master cni0"),
                            (6, "vethB@if2", " master cni0")))
"""``ip -o link`` of a node whose pod A (vethA, if5) calls a Service served by pod B (vethB, if6), both on cni0."""


def _local_service_any(tmp_path: Path, v6: bool) -> Path:
    """``tcpdump -i any`` of that node (s13 of a trial, and tests/variants/clusterip6 in small): pod A calls the
    Service; kube-proxy DNATs it to pod B on the bridge (TTL kept), so vethA holds only the Service's tuple (replies
    already reverse-translated), cni0 (2 us later) and vethB (4 us) only the DNATed leg. TCP over IPv4 (two
    connections), or one UDP datagram over IPv6 (no IP id); plus one masqueraded egress that crosses eth0."""
    cni0, eth0, veth_a, veth_b = 2, 3, 5, 6
    pod, vip, backend = ("2001:db8:244::10", "2001:db8:96::10", "2001:db8:244::11") if v6 else \
        ("10.244.0.10", "10.96.0.80", "10.244.0.20")
    far, node = ("2001:db8:ff::10", "2001:db8:100::2") if v6 else ("198.51.100.10", "203.0.113.2")
    vport, bport = (53, 53) if v6 else (80, 8080)
    ip_id = iter(range(100, 1000))

    def ip(src: str, dst: str, l4: bytes, proto: int, ttl: int = 64, same_id: int | None = None) -> bytes:
        if v6:
            return ipv6(src, dst, proto, l4, hlim=ttl)
        return ipv4(src, dst, proto, l4, ttl=ttl, ip_id=same_id or 0)

    records: list[tuple[int, bytes]] = []

    def at(ts: int, ifindex: int, packet: bytes) -> None:
        records.append((ts, sll2(packet, ifindex, 0x86DD if v6 else 0x0800)))

    def service_packet(ts: int, request: bool, l4_vip: bytes, l4_backend: bytes, proto: int) -> None:
        n = next(ip_id)
        if request:  # vethA under the Service's tuple, then cni0 and vethB under the endpoint's
            at(ts, veth_a, ip(pod, vip, l4_vip, proto, same_id=n))
            at(ts + 2_000, cni0, ip(pod, backend, l4_backend, proto, same_id=n))
            at(ts + 4_000, veth_b, ip(pod, backend, l4_backend, proto, same_id=n))
        else:
            at(ts, veth_b, ip(backend, pod, l4_backend, proto, same_id=n))
            at(ts + 2_000, cni0, ip(backend, pod, l4_backend, proto, same_id=n))
            at(ts + 4_000, veth_a, ip(vip, pod, l4_vip, proto, same_id=n))

    if v6:
        query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x1c\x00\x01"
        service_packet(T0, True, udp(40000, vport, query), udp(40000, bport, query), 17)
        answer = query[:2] + b"\x81\x80" + query[4:]
        service_packet(T0 + 300_000, False, udp(vport, 40000, answer), udp(bport, 40000, answer), 17)
    else:
        for k in range(2):
            t, cport = T0 + k * 100_000_000, 40000 + k
            for dt, request, seq, ack, flags in ((0, True, 1000, 0, 0x02), (200_000, False, 5000, 1001, 0x12),
                                                 (400_000, True, 1001, 5001, 0x10)):
                a, b = (cport, vport) if request else (vport, cport)
                c, d = (cport, bport) if request else (bport, cport)
                service_packet(t + dt, request, tcp(a, b, seq, ack, flags), tcp(c, d, seq, ack, flags), 6)
    # Egress: vethA, cni0, then eth0 masqueraded one hop later; the reply back the same way.
    t = T0 + 300_000_000
    for dt, out, seq, ack, flags in ((0, True, 7000, 0, 0x02), (500_000, False, 9000, 7001, 0x12),
                                     (700_000, True, 7001, 9001, 0x10)):
        n = next(ip_id)
        if out:
            seg = tcp(41000, 443, seq, ack, flags)
            at(t + dt, veth_a, ip(pod, far, seg, 6, 64, n))
            at(t + dt + 2_000, cni0, ip(pod, far, seg, 6, 64, n))
            at(t + dt + 10_000, eth0, ip(node, far, seg, 6, 63, n))
        else:
            seg = tcp(443, 41000, seq, ack, flags)
            at(t + dt, eth0, ip(far, node, seg, 6, 50, n))
            at(t + dt + 8_000, cni0, ip(far, pod, seg, 6, 49, n))
            at(t + dt + 10_000, veth_a, ip(far, pod, seg, 6, 49, n))
    path = tmp_path / "any.pcap"
    path.write_bytes(pcap(sorted(records), linktype=276))
    (tmp_path / "links.txt").write_text(_LOCAL_LINKS)
    return path


def test_a_local_service_endpoints_veth_holds_the_dnated_leg_and_proves_the_backend(tmp_path: Path) -> None:
    # Trial s13: vethB was "left out: all its connection starts are copies of packets on vethA" (the same IP id
    # and TCP numbers, under another destination), so both ClusterIP connections read internal with the backend
    # not seen, though the file holds the DNATed leg; `who 10.96.0.80:80` showed the backend as "-".
    path = _local_service_any(tmp_path, v6=False)
    one = natproof.correlate(path, interfaces=tmp_path / "links.txt")
    assert one.inside.interfaces == ("vethA", "vethB") and one.outside.interfaces == ("eth0",)
    assert "vethB: 2 connection starts there are the leg a Service DNATed to a pod on the node" in one.inside.why
    notes = {i.name: i.note for i in one.interfaces}
    assert notes["cni0"].startswith("left out: all its connection starts are copies of packets on vethA, vethB")
    conns = sorted(one.to_dict()["connections"], key=lambda c: c["original"]["sport"])
    assert [c["verdict"] for c in conns] == ["translated"] * 3
    for c in conns[:2]:
        assert c["original"]["dst"] == "10.96.0.80" and c["outside"] is None
        assert (c["translated"]["dst"], c["translated"]["dport"]) == ("10.244.0.20", 8080)
        assert c["translated"]["src"] == "10.244.0.10" and c["rewrites"] == ["dst", "dport"] and c["nat"] == ["DNAT"]
        assert c["service"]["backend"] == {"address": "10.244.0.20", "port": 8080}
    (svc,) = one.to_dict()["services"]
    assert svc["backends"] == [{"address": "10.244.0.20", "port": 8080, "connections": 2}]
    # The egress is read as before: vethA against eth0, masqueraded.
    assert conns[2]["translated"]["src"] == "203.0.113.2" and conns[2]["outside"] is not None


def test_who_names_a_local_services_backend_from_one_capture(tmp_path: Path, capsys) -> None:
    path = _local_service_any(tmp_path, v6=False)
    code = main(["who", "10.96.0.80:80", str(path), "--interfaces", str(tmp_path / "links.txt"), "--format", "json"])
    assert code == 0
    found = json.loads(capsys.readouterr().out)["connections"]
    assert len(found) == 2
    assert [c["service"]["backend"] for c in found] == [{"address": "10.244.0.20", "port": 8080}] * 2
    assert [c["ends"]["peer"] for c in found] == [{"address": "10.244.0.20", "port": 8080}] * 2


def test_a_local_services_ipv6_datagram_pairs_with_its_dnated_copy(tmp_path: Path) -> None:
    # tests/variants/clusterip6 in small: an IPv6 datagram has no IP id, so its key keeps the far end and the
    # DNATed copy on vethB was read as a second, internal connection once vethB joined the inside.
    from natproof.assemble import Services

    path = _local_service_any(tmp_path, v6=True)
    one = natproof.correlate(path, interfaces=tmp_path / "links.txt", pod_cidr="2001:db8:244::/64",
                             services=Services(networks=(ipaddress.ip_network("2001:db8:96::/112"),)))
    assert one.inside.interfaces == ("vethA", "vethB")
    conns = one.to_dict()["connections"]
    (dns,) = [c for c in conns if c["proto"] == "udp"]
    assert len(conns) == 2 and dns["verdict"] == "translated"
    assert dns["translated"] == {"src": "2001:db8:244::10", "sport": 40000, "dst": "2001:db8:244::11", "dport": 53}
    assert dns["service"]["backend"] == {"address": "2001:db8:244::11", "port": 53}


@pytest.mark.parametrize("variant", ["clusterip6", "pod-nodeport-lb"])
def test_a_kernel_capture_of_every_interface_proves_its_local_endpoints(variant: str) -> None:
    # Kernel captures: pod1 calls Services DNATed to pod2 on the bridge (clusterip6: IPv6 ClusterIPs, TCP and UDP;
    # pod-nodeport-lb: the node's NodePort and a LoadBalancer IP, masqueraded to the bridge address too). The
    # two files read them internal, backend not seen; any.pcap holds pod2's veth, so it proves each DNAT and
    # backend, as truth.json's single_file_* fields (from the kernel's own entries) say.
    import natproof.check

    case = Path(__file__).resolve().parent / "variants" / variant
    (single,) = natproof.check.single_captures(case)
    report = natproof.check.check_case(case, single)
    truth = json.loads((case / "truth.json").read_text())["connections"]
    proven = [c for c in truth if "single_file_translated" in c]
    assert proven and all(c["verdict"] == "internal" and c["translated"] is None for c in proven)
    assert report.expected == report.found == report.mapping_right == report.verdict_right == len(truth)
    assert not report.unexpected and not report.wrong
