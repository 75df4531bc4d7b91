"""The right answer of every case in tests/cases (copies of the shared cases: kernel captures of the faults
natproof 0.1 got wrong, and two public lab captures). Each stands for a kind of fault; captures/ holds the
lab's own scenario of the same kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from natproof.correlate import correlate
from natproof.diagnose import diagnose
from natproof.errors import InputError
from natproof.lookup import who
from natproof.result import Result, flags_of

CASES = Path(__file__).resolve().parent / "cases"


def run(name: str, inside: str = "inside.pcap", outside: str = "outside.pcap") -> Result:
    return correlate(CASES / name / inside, CASES / name / outside)


def conns(result: Result) -> list[dict[str, Any]]:
    return result.to_dict()["connections"]


def kinds(result: Result) -> dict[str, Any]:
    return {f.kind: f for f in diagnose(result)}


def tup(t: dict[str, Any] | None) -> str | None:
    return None if t is None else f"{t['src']}:{t['sport']}->{t['dst']}:{t['dport']}"


def test_every_case_is_pinned_here() -> None:
    names = {p.name for p in CASES.iterdir() if p.is_dir()}
    pinned = {"clusterip-dnat", "nodeport-inbound", "oow-invalid-node-rst", "idle-expiry-fin-leak",
              "reject-no-endpoints", "pmtud-frag-needed", "asymmetric-reply", "ftp-alg-active", "lan-multicast",
              "swapped-sides"}
    assert names == pinned


def test_clusterip_dnat_is_translated_with_destination_and_source_rewritten() -> None:
    r = run("clusterip-dnat")
    cs = conns(r)
    assert [c["verdict"] for c in cs] == ["translated"] * 6
    dnat = [c for c in cs if c["service"]]
    assert len(dnat) == 5
    for c in dnat:
        assert "src" in c["rewrites"] and "dst" in c["rewrites"] and c["nat"] == ["SNAT", "DNAT"]
        assert c["translated"]["src"] == "203.0.113.2"
    # The kernel's conntrack record: 10.96.0.1:443 -> 198.51.100.10:6443, 10.96.0.10:53 -> 198.51.100.53:53.
    backends = {(s["address"], s["port"]): [(b["address"], b["port"]) for b in s["backends"]] for s in r.services()}
    assert backends == {("10.96.0.1", 443): [("198.51.100.10", 6443)], ("10.96.0.10", 53): [("198.51.100.53", 53)]}
    assert list(kinds(r)) == ["healthy"]


def test_nodeport_inbound_connections_are_translated_and_who_finds_the_pod() -> None:
    r = run("nodeport-inbound")
    cs = conns(r)
    inbound = [c for c in cs if c["initiator"] == "outside"]
    assert [(tup(c["original"]), tup(c["translated"]), c["verdict"]) for c in inbound] == [
        ("198.51.100.20:43765->203.0.113.2:30080", "10.244.0.1:2421->10.244.0.10:8080", "translated"),
        ("198.51.100.20:51909->203.0.113.2:30081", "198.51.100.20:51909->10.244.0.10:8080", "translated"),
    ]
    assert [c["service"]["type"] for c in inbound] == ["NodePort", "NodePort"]
    (egress,) = [c for c in cs if c["initiator"] == "inside"]
    assert egress["verdict"] == "translated" and egress["rewrites"] == ["src"]
    answer = who(r, "203.0.113.2:30080").to_dict()
    (found,) = answer["connections"]
    assert found["translated"]["dst"] == "10.244.0.10" and found["translated"]["dport"] == 8080
    assert "nodeport_source_lost" in kinds(r)


def test_out_of_window_reply_not_reverse_translated_and_the_node_resets() -> None:
    r = run("oow-invalid-node-rst")
    (c,) = conns(r)
    assert c["verdict"] == "translated"
    assert c["fates"]["outside_only"] == 1 and c["fates"]["node_generated"] == 1
    assert {"not_reverse_translated", "node_generated"} <= set(c["flags"])
    f = kinds(r)["invalid_reply_reset"]
    assert "nf_conntrack_tcp_be_liberal" in f.fix and "INVALID" in f.fix
    assert "healthy" not in kinds(r)


def test_fins_after_idle_expiry_leak_the_pod_address_and_that_is_no_port_clash() -> None:
    r = run("idle-expiry-fin-leak")
    cs = conns(r)
    assert [c["verdict"] for c in cs] == ["translated"] * 3
    (leaky,) = [c for c in cs if c["fates"]["leaked"]]
    assert leaky["fates"]["leaked"] == 7 and "leak" in leaky["flags"]
    assert leaky["outside"]["src"] == "203.0.113.2"  # the mapping is the translated tuple, not the leaked one
    assert "multiple_outside_tuples" not in leaky["flags"]
    found = kinds(r)
    assert "private_address_leak" in found and "mapping_conflict" not in found
    assert found["private_address_leak"].data == {"leaked_packets": 7, "after_idle": 1}


def test_node_made_rejects_are_not_replies_and_not_a_forward_drop() -> None:
    r = run("reject-no-endpoints")
    cs = conns(r)
    refused = [c for c in cs if c["verdict"] == "not_forwarded"]
    assert len(refused) == 3
    assert all(c["fates"]["node_generated"] == 1 for c in refused)
    found = kinds(r)
    assert set(found) == {"service_no_endpoints", "rejected_by_node"}
    assert found["service_no_endpoints"].data["services"] == ["10.96.0.30:80", "10.96.0.31:53"]
    assert found["rejected_by_node"].data["destinations"] == ["198.51.100.10:443"]


def test_fragmentation_needed_is_a_path_mtu_signal_from_a_router() -> None:
    r = run("pmtud-frag-needed")
    f = kinds(r)["path_mtu"]
    assert f.data == {"mtu": [1400], "routers": ["203.0.113.1"], "reached_pod": 1, "answered_after": 0,
                      "by_node": []}  # relayed
    assert "MSS" in f.fix and "no_reply" not in kinds(r)


def test_replies_by_another_path_are_not_proof_of_reverse_translation() -> None:
    r = run("asymmetric-reply")
    cs = conns(r)
    assert [c["verdict"] for c in cs] == ["reply_other_path"] * 3
    assert all(c["rewrites"] == ["src"] and c["matched"]["reply"] == 0 for c in cs)
    assert list(kinds(r)) == ["reply_other_path"]
    # natproof.correlate/1 readers keep the name they knew.
    assert {c["verdict"] for c in r.to_dict("natproof.correlate/1")["connections"]} == {"translated"}


def test_ftp_helper_shift_and_its_expected_inbound_data_connection() -> None:
    r = run("ftp-alg-active")
    control, data = conns(r)
    assert control["matched"] == {"egress": 15, "reply": 15}
    assert control["fates"] == {"crossed": 30, "leaked": 0, "inside_only": 0, "outside_only": 0,
                                "node_generated": 0}
    assert control["seq_shift"]["initiator_seq"] == 1 and "seq_shift" in control["flags"]
    assert data["initiator"] == "outside" and data["verdict"] == "translated" and data["rewrites"] == ["dst"]
    assert tup(data["original"]) == "198.51.100.10:20->203.0.113.2:39949"
    assert tup(data["translated"]) == "198.51.100.10:20->10.244.0.5:39949"
    assert "alg_rewrite" in kinds(r)


def test_lan_multicast_is_skipped_and_the_routed_path_is_information() -> None:
    r = run("lan-multicast")
    cs = conns(r)
    assert [c["inside"]["dst"] for c in cs] == ["10.0.0.2"]
    assert r.inside.skipped.get("multicast") == 2
    found = kinds(r)
    assert list(found) == ["routed_path"] and found["routed_path"].severity == "info"
    assert "forwarding_blocked" not in found


VARIANTS = Path(__file__).resolve().parent / "variants"


def _lan(name: str) -> Result:
    return correlate(VARIANTS / name / "inside.pcap", VARIANTS / name / "outside.pcap")


def test_a_slash25_lans_directed_broadcast_is_no_connection() -> None:
    # Helper's scapy variant of cases/lan-multicast (tests/variants/lan-broadcast25): a /25 LAN, whose NetBIOS and
    # Wake-on-LAN datagrams go to 192.168.1.127. Only x.x.x.255 was taken for a directed broadcast: the NetBIOS
    # flows were "internal" connections, and the two magic packets (port 9 and port 7, one payload) paired with
    # each other as a translated datagram with "no_reply", finding "No reply from the far end".
    r = _lan("lan-broadcast25")
    cs = conns(r)
    assert not [c for c in cs if c["inside"]["dst"] == "192.168.1.127"]
    # To .127: 4 NetBIOS name, 1 datagram, 2 Wake-on-LAN; APIPA 169.254.23.7 to 169.254.255.255 is link-local.
    assert r.inside.skipped.get("broadcast") == 7 and r.inside.skipped.get("link_local")
    verdicts = {(c["inside"]["src"], c["inside"]["dst"], c["inside"]["dport"]): c["verdict"] for c in cs}
    assert sorted(verdicts.values()) == ["internal"] * 10 + ["translated"] * 6
    # The NATed ones stay translated, the printer and the unicast answers to multicast queries (SSDP, mDNS,
    # LLMNR, WS-Discovery, over IPv4 and IPv6) are LAN-internal.
    assert {k for k, v in verdicts.items() if v == "translated"} == {
        ("192.168.1.20", "198.51.100.53", 53), ("192.168.1.20", "198.51.100.10", 443), ("192.168.1.30", "192.0.2.1", 0),
        ("192.168.1.30", "198.51.100.20", 80), ("192.168.1.121", "192.0.2.123", 123), ("192.168.1.20", "192.0.2.1", 0)}
    summary = r.to_dict()["summary"]
    assert summary["connections"] == len(cs) == 16
    assert {k: v for k, v in summary["by_verdict"].items() if v} == {"translated": 6, "internal": 10}
    assert list(kinds(r)) == ["healthy"]


def test_a_lans_routed_ipv6_slash64_is_one_link_not_a_forward_drop() -> None:
    # Helper's scapy variant (tests/variants/lan-v6-routed): a home router NATs IPv4 and routes the LAN's IPv6 /64
    # unchanged, so the /64 shows on the outside and is no pod network. The printer's unicast answer to an SSDP
    # search and its syslog datagram to the PC were "not_forwarded" with ERROR "dropped in the FORWARD chain", the
    # PC's IPP connection to it "not_captured" with a warning: two hosts of one /64 talk on their link.
    r = _lan("lan-v6-routed")
    by = {(c["inside"]["src"], c["inside"]["dst"]): c["verdict"] for c in conns(r) if ":" in c["inside"]["src"]}
    assert by == {("2001:db8:1::40", "2001:db8:1::20"): "internal",  # the SSDP answer and the syslog datagram
                  ("2001:db8:1::20", "2001:db8:1::40"): "internal",
                  ("2001:db8:1::20", "2001:db8:ff::10"): "untranslated",
                  ("2001:db8:1::40", "2001:db8:ff::20"): "untranslated"}
    assert [c["verdict"] for c in conns(r) if ":" in c["inside"]["src"]].count("internal") == 3
    assert {k: v for k, v in r.to_dict()["summary"]["by_verdict"].items() if v} == {
        "translated": 6, "untranslated": 2, "internal": 12}
    found = kinds(r)
    assert list(found) == ["healthy", "routed_path"]
    assert all(f.severity == "info" for f in found.values())


def test_swapped_sides_in_the_right_order_map_right() -> None:
    r = run("swapped-sides", "home-side.pcap", "isp-side.pcap")
    cs = conns(r)
    assert [(c["verdict"], c["outside"]["src"]) for c in cs] == [("translated", "203.0.113.71")] * 2
    assert r.clock_offset_s == pytest.approx(0.42, abs=0.01)
    assert all(c["nat_latency_us"]["median"] > 0 for c in cs)


def test_swapped_sides_are_refused_with_the_right_order_or_swapped_on_request() -> None:
    with pytest.raises(InputError, match=r"look swapped: .*other order: .*home-side.pcap .*isp-side.pcap"):
        run("swapped-sides", "isp-side.pcap", "home-side.pcap")
    r = correlate(CASES / "swapped-sides" / "isp-side.pcap", CASES / "swapped-sides" / "home-side.pcap",
                  allow_swap=True)
    assert r.inside.path.endswith("home-side.pcap")
    assert any("swapped" in w for w in r.inside.warnings)
    assert [c["outside"]["src"] for c in conns(r)] == ["203.0.113.71"] * 2


def test_a_swap_is_judged_alike_when_a_first_sample_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    # looks_swapped judges the first connections that crossed before all of them (one that reads right rules a
    # swap out): with a sample of one, the same answers both ways round.
    import importlib

    monkeypatch.setattr(importlib.import_module("natproof.correlate"), "_SWAP_SAMPLE", 1)
    with pytest.raises(InputError, match="look swapped"):
        run("swapped-sides", "isp-side.pcap", "home-side.pcap")
    assert [c["verdict"] for c in conns(run("swapped-sides", "home-side.pcap", "isp-side.pcap"))] == ["translated"] * 2


def test_cli_refuses_a_swapped_pair_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from natproof.cli import main

    isp, home = CASES / "swapped-sides" / "isp-side.pcap", CASES / "swapped-sides" / "home-side.pcap"
    assert main(["correlate", str(isp), str(home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"natproof: error: {isp} and {home} look swapped") and err.count("\n") == 1
    assert main(["correlate", str(isp), str(home), "--allow-swap", "--format", "json"]) == 0


PAIRS = {p.name: ("home-side.pcap", "isp-side.pcap") if p.name == "swapped-sides" else ("inside.pcap", "outside.pcap")
         for p in sorted(CASES.iterdir()) if p.is_dir()}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_every_case_given_the_wrong_way_round_is_refused_when_it_can_be_told(name: str) -> None:
    # Where something crossed the NAT with a rewrite the sides can be told apart, and the wrong order is refused
    # with the right one; where nothing was rewritten (a routed path) either order reads the same and is kept.
    inside, outside = PAIRS[name]
    right = run(name, inside, outside)
    crossed = right.connections.filter(
        pl.col("verdict").is_in(["translated", "no_reply", "reply_dropped", "reply_other_path"])
        & (pl.col("rewrites").list.len() > 0))
    if crossed.is_empty():
        assert right.connections.filter(pl.col("rewrites").list.len() > 0).is_empty()
        run(name, outside, inside)  # not refused
        return
    with pytest.raises(InputError, match=f"look swapped: .*other order: .*{inside} .*{outside}"):
        run(name, outside, inside)


def test_a_clusterip_outside_the_configured_service_network_is_still_a_service() -> None:
    # clusterip-dnat as if the cluster's Service network were elsewhere (EKS uses 172.20.0.0/16 or 10.100.0.0/16):
    # a private destination the node DNATed on a pod's connection is a ClusterIP all the same.
    import ipaddress

    from natproof.assemble import Services

    default = run("clusterip-dnat")
    elsewhere = correlate(CASES / "clusterip-dnat" / "inside.pcap", CASES / "clusterip-dnat" / "outside.pcap",
                          services=Services(networks=(ipaddress.ip_network("172.20.0.0/16"),)))
    assert elsewhere.services() == default.services() and len(default.services()) == 2
    assert [c["service"] for c in conns(elsewhere)] == [c["service"] for c in conns(default)]
    assert list(kinds(elsewhere)) == ["healthy"]


def test_reject_from_the_pod_side_capture_and_the_kernel_record_alone() -> None:
    """A helper: the pod-side capture with the case's kernel-record.txt (no outside capture) gave the README's wrong
    answer, "dropped in the FORWARD chain", counted the forged RST a plain inside-only packet, and set the node's
    ICMP side against "outside capture 00:00:00.000-00:00:00.000"; healthy connections of an outside capture with a
    record were all flagged not_reverse_translated."""
    from natproof.correlate import correlate_one

    case = CASES / "reject-no-endpoints"
    result = correlate_one(case / "inside.pcap", case / "kernel-record.txt", side="inside")
    rows = {(r["inside_dst"], r["inside_dport"]): r for r in result.connections.iter_rows(named=True)}
    rst = rows[("198.51.100.10", 443)]
    assert rst["verdict"] == "not_forwarded" and (rst["fate_node_generated"], rst["fate_inside_only"]) == (1, 1)
    found = {f.kind: f for f in diagnose(result)}
    assert "forwarding_blocked" not in found and found["rejected_by_node"].connections == (rst["conn"],)
    overlap = found["partial_overlap"]
    assert "00:00:00.000" not in overlap.summary and "the kernel's record" in overlap.summary
    healthy = rows[("198.51.100.10", 80)]
    assert healthy["verdict"] == "translated" and "not_reverse_translated" not in flags_of(healthy)
    captures = Path(__file__).resolve().parent.parent / "captures" / "basic"
    outside = correlate_one(captures / "outside.pcap", captures / "conntrack.log", side="outside")
    assert outside.connections.height and not any("not_reverse_translated" in flags_of(r)
                                                  for r in outside.connections.iter_rows(named=True))


def test_a_pair_whose_outside_holds_only_replies_is_refused_the_wrong_way_round(tmp_path: Path) -> None:
    # A helper's swap: basic's eth0 capture cut to the packets addressed to the node (the replies), given first.
    # Each connection then read as an inbound one DNATed to a pod, started on the "outside" capture; natproof
    # inferred the node's public /24 as the pod network and called them translated. Private space only on the
    # capture given as outside is NAT seen from the wrong side.
    import dpkt

    src = Path(__file__).resolve().parents[1] / "captures" / "basic"
    with open(src / "outside.pcap", "rb") as fh, open(tmp_path / "replies.pcap", "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), nano=True)
        for ts, buf in reader:
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP) and ip.dst == bytes([203, 0, 113, 2]):
                writer.writepkt(buf, ts)
    right = correlate(src / "inside.pcap", tmp_path / "replies.pcap")
    assert set(right.connections["verdict"]) == {"translated"}
    with pytest.raises(InputError, match="look swapped: .*private addresses on the outside capture only"):
        correlate(tmp_path / "replies.pcap", src / "inside.pcap")


def test_an_unrelated_uplink_capture_of_alike_exchanges_proves_no_mapping(tmp_path: Path) -> None:
    # A trial: port-collision's uplink moved 1.5 s onto basic's time. Its HTTP exchanges have basic's payloads,
    # not one IP id or TCP number of them: two connections read translated (to port-collision's ports), each
    # reply crossing ~0.47 s before it was sent. Nothing else pairs, so nothing ties the clocks: not paired, said.
    import dpkt

    src = Path(__file__).resolve().parents[1] / "captures"
    moved = tmp_path / "moved.pcap"
    with open(src / "port-collision" / "outside.pcap", "rb") as fh, open(moved, "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), nano=True)
        for ts, buf in reader:
            writer.writepkt(buf, float(ts) - 1.5)
    for limit in (None, 1):
        r = correlate(src / "basic" / "inside.pcap", moved, memory_limit=limit)
        assert set(r.connections["verdict"]) == {"not_captured"} and r.connections["fate_crossed"].sum() == 0
        (note,) = [w for w in r.inside.warnings if "look alike" in w]
        assert note.startswith("4 packet(s) look alike on both captures") and "--clock-offset" in note


def test_pods_with_public_addresses_behind_a_private_node_address_are_no_swap() -> None:
    # tests/variants/public-pods: egress SNAT into private space (GKE's privately used public pod ranges behind a
    # 10.x node). The rule "private space only on the outside capture" refused this pair in both orders.
    d = Path(__file__).resolve().parent / "variants" / "public-pods"
    right = correlate(d / "inside.pcap", d / "outside.pcap")
    assert set(right.connections["verdict"]) == {"translated"} and right.connections.height == 3
    assert set(right.connections["trans_src"]) == {"10.0.1.10"}
    # Given swapped, refused by what held, with its count: not "private addresses on the outside capture only".
    with pytest.raises(InputError) as err:
        correlate(d / "outside.pcap", d / "inside.pcap")
    reason = str(err.value).split("wrong side: ")[1].split("; give them")[0]
    assert reason == ("3 started on the outside capture with the source rewritten on the way to the inside one (a "
                      "source NAT seen backwards)")
    with pytest.raises(InputError, match="look swapped"):
        correlate(d / "outside.pcap", d / "inside.pcap")


VARIANTS = Path(__file__).resolve().parent / "variants"


def test_ipv6_pods_in_global_space_with_a_clusterip_given_swapped_are_refused() -> None:
    # A new user's trial: tests/variants/clusterip6 (pods in 2001:db8:244::/64, NAT66 to the node's 2001:db8:100::2,
    # ClusterIPs DNATed to a server outside) given the wrong way round exited 0 with three "inbound" connections,
    # the uplink's /64 inferred as the pod network, and `who` naming the pod a server: no address is private, so
    # the DNAT+SNAT connections read as a NodePort masquerade from outside. The pod's plain egress is a source
    # NAT seen backwards, which puts the pod on the capture given as outside: its DNATed connections too.
    d = VARIANTS / "clusterip6"
    inside, outside = d / "inside.pcap", d / "outside.pcap"
    right = correlate(inside, outside)
    with pytest.raises(InputError) as err:
        correlate(outside, inside)
    reason = str(err.value)
    assert "look swapped: all 3 connection(s) that crossed" in reason and reason.endswith(
        f"give them in the other order: {inside} {outside} (or pass allow_swap=True)")
    assert "1 started on the outside capture with the source rewritten" in reason
    assert "2 started on the outside capture with the destination rewritten, by a host whose other" in reason
    swapped = correlate(outside, inside, allow_swap=True)
    assert swapped.connections.drop("conn").equals(right.connections.drop("conn"))
    assert any("looked swapped" in w for w in swapped.outside.warnings + swapped.inside.warnings)
    assert swapped.pod_networks == right.pod_networks == ("2001:db8:244::/64",)


def test_who_on_ipv6_global_pod_captures_given_swapped_exits_2_or_answers_right_when_swapped(
        capsys: pytest.CaptureFixture[str]) -> None:
    # The same trial's `who`: it named the pod an internet server and the "node" the ClusterIP, exit 0.
    from natproof.cli import main

    d = VARIANTS / "clusterip6"
    inside, outside = d / "inside.pcap", d / "outside.pcap"
    assert main(["who", "[2001:db8:100::2]:53886", str(outside), str(inside), "--format", "json"]) == 2
    err_text = capsys.readouterr().err
    assert "look swapped" in err_text and err_text.count("\n") == 1
    assert main(["who", "[2001:db8:100::2]:53886", str(outside), str(inside), "--allow-swap", "--format",
                 "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    (hit,) = found["connections"]
    assert found["side"] == "outside" and hit["initiator"] == "inside"
    assert hit["inside"]["src"] == "2001:db8:244::10" and hit["outside"]["dst"] == "2001:db8:ff::10"


def test_the_nodes_forged_rst_is_no_reply_in_the_packet_counts() -> None:
    # A trial: connection #2's RST, made by the node (REJECT --reject-with tcp-reset), read reply_inside 1 in JSON
    # and "reply pkts out/in 0/1" in the HTML beside its fate node_generated. It counts as node-made, not a reply.
    r = run("reject-no-endpoints")
    (rst,) = [c for c in conns(r) if c["inside"]["dport"] == 443]
    assert rst["fates"]["node_generated"] == 1
    assert (rst["packets"]["reply_inside"], rst["packets"]["reply_outside"]) == (0, 0)
    assert (rst["packets"]["node_made_inside"], rst["packets"]["node_made_outside"]) == (1, 0)
    # Every packet still counted once: egress, replies, ICMP errors and the node's own add up to the fates.
    for c in conns(r):
        p, f = c["packets"], c["fates"]
        assert (sum(p[k] for k in p if k.endswith("_inside")) + sum(p[k] for k in p if k.endswith("_outside"))
                == 2 * f["crossed"] + 2 * f["leaked"] + f["inside_only"] + f["outside_only"] + f["node_generated"])
    # The HTML's "reply pkts out/in" and the CSV read these columns.
    row = r.connections.filter(pl.col("inside_dport") == 443).row(0, named=True)
    assert (row["reply_outside"], row["reply_inside"], row["node_made_inside"]) == (0, 0, 1)
