"""Tests of natproof/diagnose.py: each failure the lab makes with the real kernel is named, with evidence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from pcapbytes import icmp_echo, ipv4, tcp_pair, tcp_rounds, traceroute_rows, udp, udp_remap_rows, write_pair

from natproof.check import capture_pair
from natproof.correlate import correlate
from natproof.diagnose import _frames, diagnose
from natproof.names import load_names
from natproof.result import flags_of

CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def findings_of(name: str) -> dict:
    return {f.kind: f for f in diagnose(correlate(*capture_pair(CAPTURES / name)))}


@pytest.mark.parametrize(("scenario", "kind"), [
    ("basic", "healthy"), ("many-connections", "healthy"), ("internal", "healthy"),
    ("forwarding-off", "forwarding_blocked"), ("forward-drop", "forwarding_blocked"),
    ("no-masquerade", "no_masquerade"), ("wrong-subnet", "wrong_source_subnet"),
    ("reply-drop", "replies_dropped"), ("udp", "refused"), ("port-exhaustion", "port_pool_exhausted"),
    ("clusterip", "healthy"), ("clusterip-local", "healthy"), ("hairpin", "healthy"),
    ("hairpin-off", "service_unanswered"), ("idle-expiry", "private_address_leak"),
    ("invalid-oow", "invalid_reply_reset"), ("asymmetric-reply", "reply_other_path"),
    ("udp-remap", "remapped_after_idle"),
])
def test_each_lab_scenario_gets_its_diagnosis(scenario: str, kind: str) -> None:
    found = findings_of(scenario)
    assert list(found) == [kind], {k: f.title for k, f in found.items()}


def test_forwarding_off_versus_a_forward_drop_for_one_pod() -> None:
    off = findings_of("forwarding-off")["forwarding_blocked"]
    assert off.data["all_blocked"] is True and off.data["syn_retransmissions"] >= 2
    assert "sysctl net.ipv4.ip_forward" in off.fix
    # Evidence cites the inside frames of the pod's SYNs (one per retransmission).
    assert off.evidence[0].startswith("#0 tcp 10.244.0.10:") and "3 SYN retransmission(s)" in off.evidence[0]
    drop = findings_of("forward-drop")["forwarding_blocked"]
    assert drop.data == {"pods": ["10.244.0.10"], "all_blocked": False, "syn_retransmissions": 3}
    assert "iptables -L FORWARD" in drop.fix


def test_wrong_subnet_names_both_sides() -> None:
    f = findings_of("wrong-subnet")["wrong_source_subnet"]
    assert f.data == {"untranslated_subnets": ["10.244.0.0/24"], "translated_subnets": ["10.245.0.0/24"]}


def test_reply_drop_cites_outside_frames_of_the_lost_replies() -> None:
    f = findings_of("reply-drop")["replies_dropped"]
    assert f.data["server_ports"] == [8080]
    (line,) = f.evidence
    assert "reply packet(s) to 203.0.113.2:" in line and "none inside" in line


def test_a_nodeport_client_reset_by_the_node_after_its_entry_expired() -> None:
    # captures/nodeport-idle (a helper's kernel variant, inbound, of the idle-expiry and oow kinds): the client's
    # FIN after 6 s idle (timeout 3 s) is not DNATed, reaches the node's own stack, which answers with a RST from
    # the NodePort. It was 'NAT working as expected' with both packets merely outside_only.
    r = correlate(*capture_pair(CAPTURES / "nodeport-idle"))
    found = {f.kind: f for f in diagnose(r)}
    f = found["invalid_reply_reset"]
    assert f.severity == "error" and f.data == {"connections": 2, "inbound": 2} and "healthy" not in found
    rows = {c["conn"]: c for c in r.connections.iter_rows(named=True)}
    for conn, line in zip(f.connections, f.evidence, strict=True):
        c = rows[conn]
        assert c["initiator"] == "outside" and c["verdict"] == "translated"
        assert (c["fate_outside_only"], c["fate_node_generated"]) == (1, 1)
        assert f"an RST from 203.0.113.2:{c['outside_dport']} the pod never sent" in line
    assert sorted(rows[c]["outside_dport"] for c in f.connections) == [30080, 30081]
    # The request answered in between, and the pod's egress, are not in it.
    assert all(c["fate_node_generated"] == 0 for n, c in rows.items() if n not in f.connections)


def test_packets_dropped_on_the_node_mid_connection_are_no_healthy_nat() -> None:
    # Kernel variants (tests/variants): "NAT working as expected" stood beside "10 inside only" and beside a
    # not_reverse_translated flag. idle-drop-invalid: two pods' FINs after 6 s idle (timeout 3 s) matched no
    # entry and a FORWARD INVALID DROP rule counted all 10. oow-drop-invalid: an out-of-window segment from the
    # server was INVALID (conntrack -S invalid=1) and dropped on the node, no RST.
    d = Path(__file__).resolve().parent / "variants"
    found = {f.kind: f for f in diagnose(correlate(d / "idle-drop-invalid" / "inside.pcap",
                                                   d / "idle-drop-invalid" / "outside.pcap"))}
    assert list(found) == ["dropped_mid_connection"]
    f = found["dropped_mid_connection"]
    assert f.severity == "warning" and len(f.connections) == 2
    # The outside capture's last packet came before the FINs: a stopped capture reads the same, and is said so.
    assert f.data == {"lost_packets": 10, "after_idle": 0, "unproven": 0, "before_other_capture": 0,
                      "after_other_capture": 10}
    assert all("never left the node" in e and "after 6.0 s of silence" in e for e in f.evidence)
    assert "or that capture had already stopped (10 of them after 1 s or more of silence" in f.summary
    assert "keepalives" in f.fix
    found = {f.kind: f for f in diagnose(correlate(d / "oow-drop-invalid" / "inside.pcap",
                                                   d / "oow-drop-invalid" / "outside.pcap"))}
    assert list(found) == ["dropped_mid_connection"]
    f = found["dropped_mid_connection"]
    assert f.data == {"lost_packets": 1, "after_idle": 0, "unproven": 1, "before_other_capture": 0,
                      "after_other_capture": 0}
    assert "never reached the pod side" in f.evidence[0] and "nf_conntrack_tcp_be_liberal" in f.fix
    assert "these captures cannot tell which" in f.summary


def test_packets_a_capture_missed_are_not_blamed_on_the_node(tmp_path: Path) -> None:
    # A helper's break test: basic's pair with the pod's request removed from the inside capture. The request is on
    # the uplink, so it crossed the node: the inside capture missed it (info), and nothing is "dropped on the node".
    import dpkt

    src = CAPTURES / "basic"
    with open(src / "inside.pcap", "rb") as fh, open(tmp_path / "inside.pcap", "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), nano=True)
        for ts, buf in reader:
            tcp = getattr(getattr(dpkt.ethernet.Ethernet(buf), "data", None), "data", None)
            if isinstance(tcp, dpkt.tcp.TCP) and tcp.dport == 80 and tcp.data.startswith(b"GET"):
                continue  # every request of the three connections
            writer.writepkt(buf, ts)
    found = {f.kind: f for f in diagnose(correlate(tmp_path / "inside.pcap", src / "outside.pcap"))}
    assert "dropped_mid_connection" not in found
    f = found["capture_missed_packets"]
    assert f.severity == "info" and f.data == {"inside_missed": 3, "outside_missed": 0}
    assert len(f.connections) == 3 and "the inside capture missed 3" in f.summary


def test_fragmentation_needed_made_by_the_node_itself_points_at_the_pod_mtu() -> None:
    # Kernel variant (tests/variants/pmtu-node): pod MTU 9000, eth0 1500; the node (10.244.0.1) answered the pod's
    # DF datagram itself. Was told as "a router on the path ... the NAT reverse-translated the ICMP error".
    d = Path(__file__).resolve().parent / "variants" / "pmtu-node"
    found = {f.kind: f for f in diagnose(correlate(d / "inside.pcap", d / "outside.pcap"))}
    # The same datagram flow's next, smaller datagram crossed and the server refused it: both are said (the MTU
    # finding alone hid the refusal, a helper found).
    assert found["refused"].connections == found["path_mtu"].connections
    assert "port unreachable from the destination" in found["refused"].evidence[0]
    f = found["path_mtu"]
    assert f.data["by_node"] == ["10.244.0.1"] and f.data["mtu"] == [1500]
    assert "the node itself (10.244.0.1)" in f.summary and "reverse-translated" not in f.summary
    assert "the node itself: made here" in f.evidence[0] and "CNI's mtu" in f.fix


def _flip_every_97th_byte(src: Path, dst: Path) -> set[int]:
    """Write ``src`` (a pcap of Ethernet frames) to ``dst`` with 0xff XORed into every 97th byte from offset 200 on,
    as a new user's trial damaged captures/basic/outside.pcap; return the TCP ports of the packets whose payload
    holds a flipped byte (read from the undamaged file)."""
    import struct

    import dpkt

    data = bytearray(src.read_bytes())
    flipped = set(range(200, len(data), 97))
    e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    ports, at = set(), 24
    while at < len(data):
        caplen = struct.unpack_from(e + "I", data, at + 8)[0]
        frame = bytes(data[at + 16:at + 16 + caplen])
        tcp = dpkt.ethernet.Ethernet(frame).data.data
        if isinstance(tcp, dpkt.tcp.TCP) and tcp.data:
            start = at + 16 + caplen - len(tcp.data)
            if flipped & set(range(start, start + len(tcp.data))):
                ports |= {tcp.sport, tcp.dport}
        at += 16 + caplen
    for i in flipped:
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return ports


def test_a_payload_changed_on_a_port_no_helper_watches_is_no_alg(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: captures/basic/outside.pcap with every 97th byte flipped read as "[INFO] An ALG rewrote
    payloads", conntrack's FTP helper named on HTTP to port 80, a flipped byte called "seq numbers +13303808". No
    conntrack helper watches port 80: the finding says payloads changed in flight, cites the capture's own warning,
    and names no ALG; the flags (payload_rewritten, seq_shift) stay, being true of the packets; explain does not
    call the numbers an ALG's shift. captures/ftp-alg keeps its ALG finding (test_lab_nodeport_and_ftp_...)."""
    from natproof.cli import main

    inside = CAPTURES / "basic" / "inside.pcap"
    damaged = tmp_path / "corrupt.pcap"
    hit_ports = _flip_every_97th_byte(CAPTURES / "basic" / "outside.pcap", damaged)
    result = correlate(inside, damaged)
    found = {f.kind: f for f in diagnose(result)}
    assert "alg_rewrite" not in found
    f = found["payload_changed"]
    assert f.severity == "warning" and f.data["ports"] == ["tcp/80"]
    rows = {r["conn"]: r for r in result.connections.iter_rows(named=True)}
    assert f.connections and all(rows[c]["orig_sport"] in hit_ports for c in f.connections)
    assert all("payload_rewritten" in flags_of(rows[c]) for c in f.connections)
    assert not re.search(r"\bALG rewrote|FTP helper", f.summary + " ".join(f.evidence))
    assert any(e.startswith(f"the outside capture {damaged}: ") and "corrupt" in e for e in f.evidence)
    assert main(["diagnose", str(inside), str(damaged), "--format", "table", "-q"]) == 0
    out = capsys.readouterr().out
    assert "[WARNING] Payloads changed in flight, not by an ALG natproof knows" in out and "[INFO] An ALG" not in out
    (shifted, *_) = [c for c in f.connections if "seq_shift" in flags_of(rows[c])]
    assert main(["explain", str(inside), str(damaged), "--conn", str(shifted), "--format", "table", "-q"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("seq shift")]
    assert line.endswith("(outside minus inside; no conntrack helper watches this port: not an ALG natproof knows)")


def test_ftp_commands_that_crossed_with_the_pod_address_say_no_alg_rewrote_them() -> None:
    # Kernel variant (tests/variants/ftp-no-helper): no FTP helper attached, the PORT command left eth0 naming
    # 10.244.0.5 and the transfer failed; was "NAT working as expected". With the helper (captures/ftp-alg) the
    # commands are rewritten: no such finding.
    from natproof.diagnose import ftp_data_addresses

    d = Path(__file__).resolve().parent / "variants" / "ftp-no-helper"
    found = {f.kind: f for f in diagnose(correlate(d / "inside.pcap", d / "outside.pcap"))}
    assert list(found) == ["alg_missing"]
    f = found["alg_missing"]
    assert f.severity == "warning" and f.data == {"commands": 1}
    assert "asks the server to connect to 10.244.0.5:" in f.evidence[0] and "CT --helper ftp" in f.fix
    assert "alg_missing" not in {f.kind for f in diagnose(correlate(*capture_pair(CAPTURES / "ftp-alg")))}
    assert ftp_data_addresses(b"PORT 10,244,0,5,182,163\r\n") == [("10.244.0.5", 46755)]
    assert ftp_data_addresses(b"EPRT |2|2001:db8:244::10|5282|\r\nEPRT |1|10.0.0.1|1|\r\n") == [
        ("2001:db8:244::10", 5282), ("10.0.0.1", 1)]
    assert ftp_data_addresses(b"PORT 300,1,1,1,1,1\r\nUSER x\r\n") == []


def test_a_connection_refused_by_its_endpoint_is_named_beside_a_healthy_nat(tmp_path: Path) -> None:
    # Kernel variant (tests/variants/nodeport-two-clients): NodePort 30082's endpoint 10.244.0.11:9090 answers the
    # SYN with a RST, reverse-translated to the client; it read only "NAT working as expected".
    import json

    import natproof.check

    d = Path(__file__).resolve().parent / "variants" / "nodeport-two-clients"
    result = correlate(d / "inside.pcap", d / "outside.pcap")
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["healthy", "refused_by_far_end", "nodeport_source_lost"]
    f = found["refused_by_far_end"]
    assert f.data == {"destinations": ["10.244.0.11:9090"]} and len(f.connections) == 1
    assert "203.0.113.2:30082" in f.evidence[0] and "reverse-translated to the client" in f.evidence[0]
    # A capture that begins after the SYN proves no refusal of it.
    import dpkt

    with open(d / "inside.pcap", "rb") as fh, open(tmp_path / "late.pcap", "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), nano=True)
        for ts, buf in reader:
            tcp = getattr(getattr(dpkt.ethernet.Ethernet(buf), "data", None), "data", None)
            if not (isinstance(tcp, dpkt.tcp.TCP) and tcp.dport == 9090 and tcp.flags & 0x12 == 0x02):
                writer.writepkt(buf, ts)
    late = {f.kind for f in diagnose(correlate(tmp_path / "late.pcap", d / "outside.pcap"))}
    assert "refused_by_far_end" not in late
    # The same run as one tcpdump -i any capture without interface names: cni0 holds half-translated NodePort
    # replies (br_netfilter) and must give way to the pods' veths; every mapping as the kernel's truth has it.
    one = correlate(d / "any.pcap")
    report = natproof.check.compare(one, json.loads((d / "truth.json").read_text()), single_file=True)
    assert report.expected == report.found == report.mapping_right == report.verdict_right == 15


def test_nodeport_replies_leaving_by_an_uncaptured_uplink_are_another_path_not_dropped() -> None:
    # Kernel variant (tests/variants/asym-nodeport): the node routes the internet client via eth1, so the pod's
    # replies to NodePort 30080/tcp and 30053/udp leave by eth1, never eth0 (the outside capture); the client got
    # every one. natproof said reply_dropped, ERROR "Replies dropped on the node", for the TCP ones too, whose
    # client acknowledged each reply. A datagram carries no acknowledgement: its replies stay unproven either way.
    import json

    import natproof.check

    d = Path(__file__).resolve().parent / "variants" / "asym-nodeport"
    result = correlate(d / "inside.pcap", d / "outside.pcap")
    got = sorted((c["proto"], c["original"]["dport"], c["verdict"]) for c in result.to_dict()["connections"])
    assert got == [("tcp", 80, "translated"), ("tcp", 30080, "reply_other_path"), ("tcp", 30080, "reply_other_path"),
                   ("udp", 30053, "reply_dropped")]
    found = {f.kind: f for f in diagnose(result)}
    assert found["reply_other_path"].connections and len(found["reply_other_path"].connections) == 2
    assert "the client acknowledged them" in found["reply_other_path"].evidence[0]
    assert "another uplink" in found["replies_dropped"].summary
    assert "from the pod" in found["replies_dropped"].evidence[0]
    truth = json.loads((d / "truth.json").read_text())
    # The tcpdump -i any form holds eth1: the replies cross it reverse-translated, all four translated
    # (truth.json's single_file_verdict; tests/test_points.py pins the choice of eth1).
    one = correlate(d / "any.pcap", interfaces=d / "links.txt")
    report = natproof.check.compare(one, truth, single_file=True)
    assert report.expected == report.found == report.mapping_right == report.verdict_right == 4


def test_a_hairpin_whose_fins_leaked_after_its_entry_expired_stays_a_translated_hairpin() -> None:
    # tests/variants/hairpin-idle (kernel): the hairpin connection's FINs left eth0 untranslated after 6 s idle
    # (timeout 3 s). That outside leg made the connection 'untranslated' (outside tuple = inside tuple, hairpin
    # flag lost, finding "SNAT skipped for some destinations") and its leak went uncounted.
    import json

    d = Path(__file__).resolve().parent / "variants" / "hairpin-idle"
    result = correlate(d / "inside.pcap", d / "outside.pcap")
    truth = {c["inside"]["sport"]: c for c in json.loads((d / "truth.json").read_text())["connections"]}
    rows = {r["inside_sport"]: r for r in result.connections.iter_rows(named=True)}
    assert set(rows) == set(truth)
    for sport, t in truth.items():
        r = rows[sport]
        assert r["verdict"] == t["verdict"] == "translated"
        assert {f: r[f"trans_{f}"] for f in ("src", "sport", "dst", "dport")} == t["translated"]
    hair = rows[52492]
    assert "hairpin" in flags_of(hair) and "leak" in flags_of(hair) and hair["outside_src"] is None
    assert hair["fate_leaked"] == 5
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["private_address_leak"]
    leak = found["private_address_leak"]
    assert sorted(leak.connections) == sorted([hair["conn"], rows[47668]["conn"]])
    assert any("the rest as 10.244.0.1:" in line and "(a hairpin" in line for line in leak.evidence)


def test_a_flow_mapped_anew_after_its_entry_expired_is_no_port_clash() -> None:
    # captures/udp-remap: UDP timeout 2 s, --random-fully; one socket's datagrams 5 s apart left as two tuples
    # in turn (conntrack.log: NEW, DESTROY, NEW). Not "outside tuple reused": no tuple carried two connections.
    r = correlate(*capture_pair(CAPTURES / "udp-remap"))
    found = {f.kind: f for f in diagnose(r)}
    assert list(found) == ["remapped_after_idle"]
    f = found["remapped_after_idle"]
    (conn,) = f.connections
    row = r.connections.row(conn, named=True)
    assert row["proto"] == "udp" and row["outside_tuples"] == 2 and row["verdict"] == "translated"
    outside = [leg for leg in row["legs"] if leg["observation_point"] == "outside"]
    first, last = sorted(outside, key=lambda leg: leg["first_frame"])
    (line,) = f.evidence
    assert f"left as 203.0.113.2:{first['sport']}" in line and f"then as 203.0.113.2:{last['sport']}" in line
    assert 4.5 < f.data["silence_s"]["min"] <= f.data["silence_s"]["max"] < 6
    assert f.data["protocols"] == ["udp"] and "nf_conntrack_udp_timeout" in f.fix
    # The mapping is the one the flow ended under, as the lab's truth (the last conntrack entry) has it.
    assert row["outside_sport"] == last["sport"]


def test_two_pods_on_one_outside_tuple_at_once_is_a_mapping_conflict(tmp_path: Path) -> None:
    # A broken NAT: two pods' connections leave concurrently on the same outside tuple.
    a_in, a_out = tcp_pair(pod="10.244.0.10", sport=40000, nat_sport=40000, isn=1000)
    b_in, b_out = tcp_pair(pod="10.244.0.11", sport=41000, nat_sport=40000, isn=900_000)
    a, b = write_pair(tmp_path, a_in + b_in, a_out + b_out)
    found = {f.kind: f for f in diagnose(correlate(a, b))}
    assert list(found) == ["mapping_conflict"]
    assert found["mapping_conflict"].connections == (0, 1)
    assert "while it was in use" in found["mapping_conflict"].evidence[0]
    # The summary states what was seen, no count of nothing beside it.
    assert found["mapping_conflict"].summary == (
        "1 outside tuple(s) carried two different inside connections within conntrack's lifetime; 1 connection(s) "
        "left under more than one outside tuple (at once, or in turn with less than 1 s between them).")


def test_port_exhaustion_explains_the_dropped_connections_and_the_reused_tuples() -> None:
    f = findings_of("port-exhaustion")["port_pool_exhausted"]
    (pool,) = f.data["pools"]
    assert pool["port_range"] == [40000, 40003] and pool["concurrent_peak"] == 4
    assert f.data["conflicts"] >= 1
    dropped = [e for e in f.evidence if "never left the node" in e]
    assert len(dropped) == 6  # the SYNs that found no free port (conntrack -S: insert_failed)
    assert any("left under 2 outside tuples" in e for e in f.evidence)


def test_lab_nodeport_and_ftp_add_information_to_a_healthy_node() -> None:
    found = findings_of("nodeport")
    assert list(found) == ["healthy", "nodeport_source_lost"]
    # Two of the four inbound connections went to the Cluster-policy NodePort (masqueraded).
    assert len(found["nodeport_source_lost"].connections) == 2
    found = findings_of("ftp-alg")
    assert list(found) == ["healthy", "alg_rewrite"]


def test_reject_scenario_names_the_service_without_endpoints_and_the_reject_rule() -> None:
    found = findings_of("reject-no-endpoints")
    assert list(found) == ["service_no_endpoints", "rejected_by_node"]
    assert found["service_no_endpoints"].data["services"] == ["10.96.0.30:80", "10.96.0.31:53"]
    assert "forwarding_blocked" not in found


def test_a_nodeport_without_endpoints_is_refused_by_the_node_for_the_internet_client() -> None:
    # Kernel capture (lab nodeport-no-endpoints): kube-proxy's KUBE-EXTERNAL-SERVICES REJECTs the SYN to NodePort
    # 30090 in INPUT with ICMP port unreachable from 203.0.113.2; nothing reaches the pod (was an internal error:
    # the FORWARD finding joined the missing inside source).
    result = correlate(*capture_pair(CAPTURES / "nodeport-no-endpoints"))
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["inbound_refused", "nodeport_source_lost"]
    refused = found["inbound_refused"]
    assert refused.data["destinations"] == ["203.0.113.2:30090"]
    assert "port unreachable from 203.0.113.2" in refused.evidence[0]
    row = result.connections.filter(pl.col("conn") == refused.connections[0]).row(0, named=True)
    assert (row["verdict"], row["initiator"], row["inside_src"]) == ("not_forwarded", "outside", None)
    # The client's SYN went nowhere (outside only); the ICMP error was made by the node.
    assert (row["fate_outside_only"], row["fate_node_generated"]) == (1, 1)
    assert "forwarding_blocked" not in found


def test_connections_from_outside_that_reached_no_captured_pod_are_told_apart() -> None:
    # Kernel variant (tests/variants/nodeport-unseen): a port nothing DNATs (the node's RST), one dropped on the
    # node (no answer), and one DNATed to a pod the inside capture does not see, answered on eth0: that one was
    # "not_forwarded ... no answer", false.
    d = Path(__file__).resolve().parent / "variants" / "nodeport-unseen"
    result = correlate(d / "inside.pcap", d / "outside.pcap")
    by_port = {r["orig_dport"]: r for r in result.connections.iter_rows(named=True) if r["initiator"] == "outside"}
    assert {p: r["verdict"] for p, r in by_port.items()} == {
        30099: "not_forwarded", 30091: "not_forwarded", 30082: "not_captured", 30080: "translated"}
    found = {f.kind: f for f in diagnose(result)}
    assert found["inbound_refused"].connections == (by_port[30099]["conn"],)
    assert "TCP RST from 203.0.113.2:30099" in found["inbound_refused"].evidence[0]
    assert found["inbound_dropped"].connections == (by_port[30091]["conn"],)
    # Within the span of the inside capture, which ran and shows none of it: another pod's veth, no capture off.
    assert by_port[30082]["conn"] in found["unseen_while_running"].connections
    assert "partial_overlap" not in found or by_port[30082]["conn"] not in found["partial_overlap"].connections
    assert {p: r["service_type"] for p, r in by_port.items() if p != 30080} == {
        30099: "NodePort", 30091: "NodePort", 30082: "NodePort"}  # by the range alone
    # With the Service dump, a port in the range that no Service lists is not named a NodePort (a helper's trial).
    named = correlate(d / "inside.pcap", d / "outside.pcap", names=load_names(services=d / "services.json"))
    types = {r["orig_dport"]: r["service_type"] for r in named.connections.iter_rows(named=True)
             if r["initiator"] == "outside"}
    assert types == {30099: None, 30091: None, 30082: "NodePort", 30080: "NodePort"}


def test_every_summary_count_is_its_evidence_count() -> None:
    # A finding's sentence may not contradict the lines it cites: the number of connections it names is the
    # number of connections it lists (up to the 20 it shows).
    variants = Path(__file__).resolve().parent / "variants"
    for case in sorted([p for p in CAPTURES.iterdir() if (p / "truth.json").exists()]
                       + [p for p in variants.iterdir() if (p / "inside.pcap").exists()]):
        for f in diagnose(correlate(*capture_pair(case))):
            if f.kind in ("healthy", "port_pool_exhausted", "mapping_conflict"):
                continue
            head = re.match(r"(?:None of the )?(\d+) (?:outbound |translated |NodePort )?connection", f.summary)
            if head is None:  # a summary that names subnets, not a count of connections
                assert f.kind == "wrong_source_subnet", f.summary
                continue
            assert int(head.group(1)) == len(f.connections), (case.name, f.kind, f.summary)
            assert len(f.evidence) >= min(len(f.connections), 20), (case.name, f.kind)


def test_two_captures_of_one_place_say_there_is_no_nat_between_them(tmp_path: Path) -> None:
    # The same eth0 capture, minus one IP packet, given as the other side (a copy of the very same packets is
    # refused outright): every packet "crosses" unchanged in no time.
    import dpkt

    src = CAPTURES / "basic" / "outside.pcap"
    with open(src, "rb") as fh, open(tmp_path / "same.pcap", "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), nano=True)
        dropped = False
        for ts, buf in reader:
            if not dropped and isinstance(dpkt.ethernet.Ethernet(buf).data, dpkt.ip.IP):
                dropped = True
                continue
            writer.writepkt(buf, ts)
    found = {f.kind: f for f in diagnose(correlate(src, tmp_path / "same.pcap"))}
    assert list(found) == ["same_place"]
    assert found["same_place"].connections == (0, 1, 2)


def test_an_outside_capture_that_stopped_early_is_no_forward_drop(tmp_path: Path) -> None:
    # captures/basic with the outside capture cut after its first connection: the two later connections were
    # made while eth0 was not being captured, so nothing says they were dropped.
    import dpkt

    with open(CAPTURES / "basic" / "outside.pcap", "rb") as fh, open(tmp_path / "early.pcap", "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), nano=True)
        for i, (ts, buf) in enumerate(reader):
            if i < 8:
                writer.writepkt(buf, ts)
    result = correlate(CAPTURES / "basic" / "inside.pcap", tmp_path / "early.pcap")
    # 100 ms after the cut a quiet running capture is as likely as a stopped one (the flag needs 500 ms), but the
    # far end answered both later connections: they crossed, out of the outside capture's sight.
    assert [("other_capture_off" in c["flags"]) for c in result.to_dict()["connections"]] == [False, False, False]
    assert [c["verdict"] for c in result.to_dict()["connections"]] == ["translated", "not_captured", "not_captured"]
    assert [c["verdict"] for c in result.to_dict("natproof.correlate/1")["connections"]] == [
        "translated", "not_forwarded", "not_forwarded"]  # /1 readers see the name they know
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["partial_overlap"]
    assert found["partial_overlap"].connections == (1, 2)
    assert found["partial_overlap"].data["answered_unseen"] == 2 and found["partial_overlap"].data["capture_off"] == 0
    # The window both ran in, on the inside clock: from the outside's first packet to its last (offset ~0).
    ov = result.to_dict()["overlap"]
    assert ov["clock"] == "inside" and ov["outside_share"] == 1.0 and 0 < ov["inside_share"] < 1
    assert ov["start"] == pytest.approx(result.outside.first_ts_ns / 1e9, abs=1e-3)
    assert ov["end"] == pytest.approx(result.outside.last_ts_ns / 1e9, abs=1e-3)
    assert ov["seconds"] == pytest.approx(ov["end"] - ov["start"], abs=1e-6)


@pytest.mark.parametrize("late", ["inside", "outside"])
def test_a_capture_started_mid_connection_is_said_so_not_read_as_drops(tmp_path: Path, late: str) -> None:
    # A trial (scapy, exact truth): one capture started 0.9 s into a 3 s connection. The other capture's packets
    # from before read as 30 replies not reverse-translated and "10 sent after the other capture's last packet"
    # dropped, though the node dropped nothing and that capture had not started yet.
    t0 = 1_700_000_000 * 10**9
    inside, outside = tcp_rounds(t0)
    rows = {"inside": inside, "outside": outside}
    start = t0 + 1_000_000_000
    rows[late] = [(t, b) for t, b in rows[late] if t >= start]
    other = "outside" if late == "inside" else "inside"
    unseen = sum(t < start - 30_000 for t, _ in rows[other])  # the other side's packets the late one cannot hold
    assert 20 < unseen < len(rows[other])
    result = correlate(*write_pair(tmp_path, rows["inside"], rows["outside"]))
    (c,) = result.to_dict()["connections"]
    assert c["verdict"] == "translated" and c["translated"]["src"] == "203.0.113.2"
    assert c["fates"][f"{other}_only"] == unseen and c["fates"]["crossed"] == len(rows[late])
    assert "other_capture_off" in c["flags"] and "not_reverse_translated" not in c["flags"]
    (row,) = result.connections.iter_rows(named=True)
    assert row["outside_only_before_inside"] == (unseen if late == "inside" else 0)
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["partial_overlap"]  # no dropped_mid_connection
    f = found["partial_overlap"]
    assert f.connections == (0,) and f.data["began_before"] == 1 and f.data["packets_before"] == unseen
    assert f"{unseen} of their packets, seen on one side only, came before it" in f.summary
    assert f"({unseen} seen on the {other} only) came before the {late} capture's first packet" in f.evidence[0]


def test_a_reply_dropped_while_both_ran_is_still_one_beside_a_late_started_capture(tmp_path: Path) -> None:
    # The same connection, the inside capture started 1 s in, and the reply of round 20 (2.06 s in) never reaches
    # the pod side: that one is a reply not reverse-translated, the first second's are not.
    t0 = 1_700_000_000 * 10**9
    inside, outside = tcp_rounds(t0)
    lost_at = t0 + 50_000_000 + 20 * 100_000_000 + 10_000_000  # the server's reply of round 20, on the outside
    start = t0 + 1_000_000_000
    inside = [(t, b) for t, b in inside if t >= start and t != lost_at + 30_000]
    before = sum(t < start for t, _ in outside)
    result = correlate(*write_pair(tmp_path, inside, outside))
    (c,) = result.to_dict()["connections"]
    assert c["fates"]["outside_only"] == before + 1
    assert {"other_capture_off", "not_reverse_translated"} <= set(c["flags"])
    found = {f.kind: f for f in diagnose(result)}
    assert found["partial_overlap"].data["packets_before"] == before
    lost = found["dropped_mid_connection"]
    assert lost.data["lost_packets"] == 1 and lost.data["before_other_capture"] == 0
    frame = [t for t, _ in sorted(outside)].index(lost_at) + 1
    assert f"outside frame(s) {frame} never reached the pod side" in lost.evidence[0]


def test_two_busy_unrelated_captures_are_not_two_sides_of_a_nat(tmp_path: Path) -> None:
    # Two generated nodes' captures over the same seconds, with nothing in common: the outside capture is of
    # another node. One finding says so instead of twenty "dropped" ones.
    from natproof.testing.scenario import Flow, Scenario, write_scenario

    mine = tuple(Flow("tcp", f"10.244.0.{i}", 40000 + i, "198.51.100.10", 80, start_s=i * 0.01) for i in range(2, 22))
    other = tuple(Flow("tcp", f"10.244.1.{i}", 41000 + i, "198.51.100.11", 443, start_s=i * 0.01)
                  for i in range(2, 22))
    write_scenario(Scenario("mine", mine, seed=1), tmp_path / "a")
    write_scenario(Scenario("other", other, seed=2), tmp_path / "b")
    found = diagnose(correlate(tmp_path / "a" / "inside.pcap", tmp_path / "b" / "outside.pcap"))
    assert [f.kind for f in found] == ["not_two_sides"]
    assert found[0].data == {"inside_packets": 180, "outside_packets": 180, "crossed": 0}
    assert len(found[0].connections) == 20


def at(packet: Any, dt: float) -> Any:
    """A scapy IP packet on Ethernet, stamped dt seconds after 1_700_000_000 (the scapy pairs below)."""
    from scapy.all import Ether

    packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / packet
    packet.time = 1_700_000_000.0 + dt
    return packet


def _ptb_pair(directory: Path, relayed: bool) -> tuple[Path, Path]:
    """A NAT66'd datagram too big for the path: a router on the node's side answers ICMPv6 "packet too big"
    (RFC 4443 type 2), which the node reverse-translates to the pod (``relayed``) or not; and one query that
    works."""
    from scapy.all import UDP, ICMPv6PacketTooBig, IPv6, wrpcap

    pod, node, srv, rtr = "fd00:244::10", "2001:db8:100::2", "2001:db8:ff::53", "2001:db8:100::1"

    e_in = IPv6(src=pod, dst=srv, hlim=64) / UDP(sport=40000, dport=53) / (b"x" * 1400)
    e_out = IPv6(src=node, dst=srv, hlim=63) / UDP(sport=40000, dport=53) / (b"x" * 1400)
    inside = [at(e_in, 0)]
    outside = [at(e_out, 20e-6), at(IPv6(src=rtr, dst=node) / ICMPv6PacketTooBig(mtu=1280) / bytes(e_out)[:1232],
                                     1e-3)]
    if relayed:
        inside.append(at(IPv6(src=rtr, dst=pod, hlim=63) / ICMPv6PacketTooBig(mtu=1280) / bytes(e_in)[:1232],
                         1.02e-3))
    inside += [at(IPv6(src=pod, dst=srv, hlim=64) / UDP(sport=40001, dport=53) / (b"q" * 30), 0.5),
               at(IPv6(src=srv, dst=pod, hlim=59) / UDP(sport=53, dport=40001) / (b"r" * 60), 0.50102)]
    outside += [at(IPv6(src=node, dst=srv, hlim=63) / UDP(sport=40001, dport=53) / (b"q" * 30), 0.50002),
                at(IPv6(src=srv, dst=node, hlim=60) / UDP(sport=53, dport=40001) / (b"r" * 60), 0.501)]
    wrpcap(str(directory / "inside.pcap"), inside)
    wrpcap(str(directory / "outside.pcap"), outside)
    return directory / "inside.pcap", directory / "outside.pcap"


@pytest.mark.parametrize("relayed", [True, False], ids=["relayed", "not-relayed"])
def test_ipv6_packet_too_big_is_named_in_ipv6_terms_and_says_only_what_the_inside_shows(
        tmp_path: Path, relayed: bool) -> None:
    result = correlate(*_ptb_pair(tmp_path, relayed))
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["path_mtu"]
    f = found["path_mtu"]
    assert f.data["mtu"] == [1280] and f.data["routers"] == ["2001:db8:100::1"]
    assert f.data["reached_pod"] == (1 if relayed else 0)
    assert '"packet too big"' in f.summary and "fragmentation" not in f.summary
    assert "ip6tables" in f.fix and "ICMPv6 type 2" in f.fix
    assert ("reverse-translated the ICMP error to the pod" in f.summary) == relayed
    assert ("not proven" in f.summary) == (not relayed)
    assert "packet too big, mtu 1280 from 2001:db8:100::1 (a router on the path" in f.evidence[0]


def _frag_needed_then_answered(directory: Path, relayed: bool) -> tuple[Path, Path]:
    """A translated TCP connection whose 1448-byte DF segment a router on the path (203.0.113.1) drops with
    "fragmentation needed, mtu 1280" (RFC 1191); the node reverse-translates the error to the pod (``relayed``)
    or not, the pod resends the bytes in two smaller segments, and the server acknowledges them (a helper's
    variant of cases/pmtud-frag-needed, which got no reply)."""
    from scapy.all import ICMP, IP, TCP, wrpcap

    pod, node, srv, rtr = "10.244.0.10", "203.0.113.2", "198.51.100.80", "203.0.113.1"
    inside: list = []
    outside: list = []

    def egress(dt, ip_id, flags, seq, ack, data=b"", lost=False):  # noqa: ANN001, ANN202
        seg = TCP(sport=41500, dport=443, flags=flags, seq=seq, ack=ack, window=64240) / data
        inside.append(at(IP(src=pod, dst=srv, ttl=64, id=ip_id, flags="DF") / seg, dt))
        out = IP(src=node, dst=srv, ttl=63, id=ip_id, flags="DF") / seg
        outside.append(at(out, dt + 20e-6))
        return out

    def reply(dt, ip_id, flags, seq, ack):  # noqa: ANN001, ANN202
        seg = TCP(sport=443, dport=41500, flags=flags, seq=seq, ack=ack, window=65160)
        outside.append(at(IP(src=srv, dst=node, ttl=60, id=ip_id, flags="DF") / seg, dt))
        inside.append(at(IP(src=srv, dst=pod, ttl=59, id=ip_id, flags="DF") / seg, dt + 20e-6))

    egress(0.0, 100, "S", 1000, 0)
    reply(0.01, 500, "SA", 9000, 1001)
    egress(0.0101, 101, "A", 1001, 9001)
    big = egress(0.011, 102, "PA", 1001, 9001, b"a" * 1448)
    quote = bytes(big)[:28]  # the IP header and 8 bytes: the least a router must quote
    outside.append(at(IP(src=rtr, dst=node, ttl=64, id=7) / ICMP(type=3, code=4, nexthopmtu=1280) / quote, 0.0112))
    if relayed:
        inner = bytes(IP(src=pod, dst=srv, ttl=63, id=102, flags="DF") / big[TCP])[:28]
        inside.append(at(IP(src=rtr, dst=pod, ttl=63, id=7) / ICMP(type=3, code=4, nexthopmtu=1280) / inner, 0.01122))
    egress(0.012, 103, "A", 1001, 9001, b"a" * 1228)
    egress(0.0121, 104, "PA", 2229, 9001, b"a" * 220)
    reply(0.022, 501, "A", 9001, 2449)
    wrpcap(str(directory / "inside.pcap"), sorted(inside, key=lambda p: p.time))
    wrpcap(str(directory / "outside.pcap"), sorted(outside, key=lambda p: p.time))
    return directory / "inside.pcap", directory / "outside.pcap"


@pytest.mark.parametrize("relayed", [True, False], ids=["relayed", "not-relayed"])
def test_fragmentation_needed_on_a_connection_answered_after_it_is_named(tmp_path: Path, relayed: bool) -> None:
    result = correlate(*_frag_needed_then_answered(tmp_path, relayed))
    (conn,) = result.connections.iter_rows(named=True)
    assert conn["verdict"] == "translated" and conn["icmp_errors_outside"] == 1
    assert conn["icmp_errors_inside"] == (1 if relayed else 0)
    found = {f.kind: f for f in diagnose(result)}
    f = found["path_mtu"]
    assert f.data == {"mtu": [1280], "routers": ["203.0.113.1"], "reached_pod": 1 if relayed else 0,
                      "answered_after": 1, "by_node": []}
    assert "answered afterwards" in f.summary and "fragmentation needed, mtu 1280 from 203.0.113.1" in f.evidence[0]
    # Answered before the error only (the handshake), not after: not "path MTU discovery worked" (a helper's variant).
    early = tmp_path / "early"
    early.mkdir()
    from scapy.all import rdpcap, wrpcap

    for name in ("inside.pcap", "outside.pcap"):
        kept = [p for p in rdpcap(str(tmp_path / name)) if not (p.time > 1_700_000_000.0115 and p.haslayer("TCP")
                                                                 and p["TCP"].sport == 443)]
        wrpcap(str(early / name), kept)
    g = {x.kind: x for x in diagnose(correlate(early / "inside.pcap", early / "outside.pcap"))}["path_mtu"]
    assert g.severity == "warning" and g.data["answered_after"] == 0 and "None was answered after it." in g.summary
    if relayed:  # nothing lost for good: an info beside the healthy NAT, not a problem
        assert (f.severity, f.title) == ("info", "Path MTU discovery at work (fragmentation needed)")
        assert list(found) == ["healthy", "path_mtu"]
    else:  # the NAT may not have passed the signal back: not proven, so a warning and no "healthy"
        assert (f.severity, f.title) == ("warning", "Packets too big for the path (fragmentation needed)")
        assert "not proven" in f.summary and list(found) == ["path_mtu"]


def _without_egress(src: Path, out: Path, proto: str, sport: int) -> tuple[Path, Path]:
    """A kernel capture pair whose outside copy lacks one connection's egress (node -> far end, source port
    ``sport``): they left by a link the outside capture does not see; its replies still cross it."""
    import shutil

    from scapy.all import IP, TCP, UDP, rdpcap, wrpcap

    layer = {"udp": UDP, "tcp": TCP}[proto]
    kept = [p for p in rdpcap(str(src / "outside.pcap"))
            if not (IP in p and p[IP].src == "203.0.113.2" and layer in p and p[layer].sport == sport)]
    out.mkdir()
    wrpcap(str(out / "outside.pcap"), kept)
    shutil.copy(src / "inside.pcap", out / "inside.pcap")
    return out / "inside.pcap", out / "outside.pcap"


@pytest.mark.parametrize(("scenario", "proto", "sport"), [("udp", "udp", 46647), ("basic", "tcp", None)])
def test_egress_by_another_path_is_translated_by_its_replies_and_named(
        tmp_path: Path, scenario: str, proto: str, sport: int | None) -> None:
    # A helper's variant of cases/asymmetric-reply the other way round. The UDP echo's replies carry the server's
    # own IP ids: read first on the outside, they made its leg look opened by the server (translated tuple
    # printed backwards, rewrites of all four fields, port preserved 86%); the TCP one was not_captured with
    # "neither direction" though five replies crossed.
    full = correlate(*capture_pair(CAPTURES / scenario))
    row = full.connections.filter(pl.col("proto") == proto).row(0, named=True)
    sport = sport or row["outside_sport"]
    result = correlate(*_without_egress(CAPTURES / scenario, tmp_path / "cut", proto, sport))
    conn = result.connections.filter((pl.col("proto") == proto) & (pl.col("inside_sport") == row["inside_sport"]))
    (c,) = conn.iter_rows(named=True)
    assert c["verdict"] == "translated" and c["matched_egress"] == 0 and c["matched_reply"] == row["matched_reply"]
    assert (c["trans_src"], c["trans_sport"], c["trans_dst"], c["trans_dport"]) == (
        row["trans_src"], row["trans_sport"], row["trans_dst"], row["trans_dport"])
    assert c["rewrites"] == row["rewrites"] and c["initiator"] == "inside"
    assert (c["egress_outside"], c["reply_outside"]) == (0, row["reply_outside"])
    assert "egress_other_path" in flags_of(c)
    found = {f.kind: f for f in diagnose(result)}
    f = found["egress_other_path"]
    assert f.connections == (c["conn"],) and "healthy" not in found
    assert f"{c['egress_inside']} egress packet(s)" in f.evidence[0]
    assert "are not on the outside capture" in f.evidence[0]
    # The JSON says so too, and every other connection is as before.
    assert "egress_other_path" in orjson.loads(result.to_json())["connections"][c["conn"]]["flags"]
    others = result.connections.filter(pl.col("conn") != c["conn"]).select("inside_sport", "verdict", "trans_sport")
    assert others.sort("inside_sport").equals(full.connections.filter(pl.col("conn") != row["conn"]).select(
        "inside_sport", "verdict", "trans_sport").sort("inside_sport"))


def test_a_clusterip_the_node_refused_is_refused_for_the_attempts_its_icmp_limit_left_unanswered(
        tmp_path: Path) -> None:
    """A helper's kernel variant of cases/reject-no-endpoints at scale: the kernel rate-limits the ICMP errors of
    kube-proxy's REJECT, so only some attempts to the endpoint-less ClusterIP got one; the others were blamed on
    'an endpoint on this node that did not answer'. Here 6 attempts, 2 answered by the node's ICMP."""
    from scapy.all import ICMP, IP, TCP, wrpcap

    pod, node, vip, bridge, srv = "10.244.0.10", "203.0.113.2", "10.96.0.30", "10.244.0.1", "198.51.100.10"
    inside: list = []
    outside: list = []

    for i in range(6):
        syn = IP(src=pod, dst=vip, ttl=64, id=100 + i) / TCP(sport=40000 + i, dport=80, flags="S", seq=1000 * i)
        inside.append(at(syn, 0.1 * i))
        if i < 2:
            inside.append(at(IP(src=bridge, dst=pod, ttl=64, id=7 + i) / ICMP(type=3, code=3) / bytes(syn)[:28],
                             0.1 * i + 0.0001))
    for i, dt in enumerate((0.0, 0.3, 0.6)):  # a healthy egress connection beside them, on both sides
        ports = (80, 45000) if i == 1 else (45000, 80)
        seg = TCP(sport=ports[0], dport=ports[1], flags=("S", "SA", "A")[i], seq=(5000, 9000, 5001)[i],
                  ack=(0, 5001, 9001)[i])
        if i == 1:
            outside.append(at(IP(src=srv, dst=node, ttl=60, id=300) / seg, dt))
            inside.append(at(IP(src=srv, dst=pod, ttl=59, id=300) / seg, dt + 2e-5))
        else:
            inside.append(at(IP(src=pod, dst=srv, ttl=64, id=200 + i) / seg, dt))
            outside.append(at(IP(src=node, dst=srv, ttl=63, id=200 + i) / seg, dt + 2e-5))
    wrpcap(str(tmp_path / "inside.pcap"), sorted(inside, key=lambda p: p.time))
    wrpcap(str(tmp_path / "outside.pcap"), sorted(outside, key=lambda p: p.time))
    result = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["service_no_endpoints"]
    f = found["service_no_endpoints"]
    assert len(f.connections) == 6 and f.data == {"services": ["10.96.0.30:80"], "rate_limited": 4}
    assert "4 of them got no ICMP error in the captures: the kernel rate-limits them" in f.summary
    assert sum("rate-limits the ICMP errors" in line for line in f.evidence) == 4


def test_captures_that_prove_nothing_about_the_nat_are_not_called_healthy(tmp_path: Path) -> None:
    # Only pod-to-pod traffic: nothing failed, and nothing crossed the NAT either. "NAT working as expected" would
    # rest on no packet at all.
    from natproof.testing.scenario import Flow, Scenario, write_scenario

    sc = Scenario(name="pods", flows=(Flow("tcp", "10.244.0.5", 41001, "10.244.0.7", 8080, outcome="internal"),))
    write_scenario(sc, tmp_path)
    found = {f.kind: f for f in diagnose(correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap"))}
    assert list(found) == ["nothing_proven"]
    f = found["nothing_proven"]
    assert f.severity == "warning" and "1 connection(s) judged (internal 1)" in f.summary
    assert f.data["connections"] == 1 and f.connections == (0,)


def test_an_inside_capture_that_stopped_early_is_said_so_not_healthy(tmp_path: Path) -> None:
    # captures/many-connections with the pod side cut to its first 40%: every connection it holds is translated,
    # but the outside capture ran on, and what it saw afterwards belongs to no connection in the table.
    import gzip

    import dpkt

    records = list(dpkt.pcap.Reader(gzip.open(CAPTURES / "many-connections" / "inside.pcap.gz")))
    with open(tmp_path / "early.pcap", "wb") as out:
        writer = dpkt.pcap.Writer(out, nano=True)
        for ts, buf in records[: len(records) * 2 // 5]:
            writer.writepkt(buf, ts)
    result = correlate(tmp_path / "early.pcap", CAPTURES / "many-connections" / "outside.pcap.gz")
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["partial_overlap"]  # not "NAT working as expected"
    beyond = found["partial_overlap"].data["outside_packets_beyond"]
    assert 0 < beyond <= result.unmatched_outside
    assert f"{beyond} outside packet(s) with no counterpart" in found["partial_overlap"].summary


def test_an_answered_untranslated_flow_beside_translated_ones_is_an_snat_exclusion_not_a_stale_entry(
        tmp_path: Path) -> None:
    # One pod: translated to the internet, unchanged and answered to a network the NAT rule leaves out (the VPC CNI's
    # VPC CIDR or AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: captures/eks-vpc-cni), unchanged and unanswered to the internet
    # (an entry from before the rule: the far end cannot route the pod's address back).
    pod, t0 = "10.244.0.10", 1_700_000_000 * 10**9
    a_in, a_out = tcp_pair(t0, pod=pod, sport=40000, nat_sport=40000, isn=1000)
    b_in, b_out = tcp_pair(t0 + 10**8, pod=pod, node=pod, srv="172.16.5.5", sport=41000, nat_sport=41000,
                           isn=900_000)
    c_in, c_out = tcp_pair(t0 + 2 * 10**8, pod=pod, node=pod, srv="198.51.100.20", sport=42000, nat_sport=42000,
                           isn=5_000_000)
    inside, outside = write_pair(tmp_path, a_in + b_in + c_in[:1], a_out + b_out + c_out[:1])
    result = correlate(inside, outside)
    assert list(result.connections["verdict"]) == ["translated", "untranslated", "untranslated"]
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["stale_conntrack_entry", "snat_exclusion"], {k: f.title for k, f in found.items()}
    assert found["stale_conntrack_entry"].connections == (2,)
    excluded = found["snat_exclusion"]
    assert excluded.severity == "info" and excluded.connections == (1,)
    assert excluded.data == {"destinations": ["172.16.5.5"], "sources": [pod], "destination_subnets": ["172.16.5.0/24"]}


def test_ipv6_node_answers_are_named_in_icmpv6_words_and_point_at_ip6tables() -> None:
    # Kernel variants (tests/variants, NAT66 by ip6tables): reject6, ClusterIPs without endpoints REJECTed with
    # icmp6-port-unreachable from the bridge address and an egress REJECT --reject-with tcp-reset; oow6, an
    # out-of-window segment from the server (INVALID) answered by the node's RST. The ICMPv6 errors read "ICMP type
    # 1 code 4" (ICMPv4's numbering has no such error) and the fixes named iptables, whose rules IPv6 never meets.
    d = Path(__file__).resolve().parent / "variants"
    case = d / "reject6"
    found = {f.kind: f for f in diagnose(correlate(case / "inside.pcap", case / "outside.pcap",
                                                   names=load_names(services=case / "services.json")))}
    assert list(found) == ["service_no_endpoints", "rejected_by_node"]
    assert found["service_no_endpoints"].data["services"] == ["[2001:db8:96::30]:80", "[2001:db8:96::31]:53"]
    assert all("port unreachable from 2001:db8:244::1" in e for e in found["service_no_endpoints"].evidence)
    assert "`ip6tables -t filter -S KUBE-SERVICES" in found["service_no_endpoints"].fix
    rejected = found["rejected_by_node"]
    assert rejected.data["destinations"] == ["[2001:db8:ff::10]:443"]
    assert "TCP RST as if from [2001:db8:ff::10]:443" in rejected.evidence[0]
    assert "`ip6tables -S | grep REJECT`" in rejected.fix and "`iptables" not in rejected.fix
    case = d / "oow6"
    found = {f.kind: f for f in diagnose(correlate(case / "inside.pcap", case / "outside.pcap"))}
    assert list(found) == ["invalid_reply_reset"]
    assert "`ip6tables -I INPUT -m conntrack --ctstate INVALID" in found["invalid_reply_reset"].fix


def test_a_flow_from_outside_mapped_anew_after_idling_is_one_connection_named() -> None:
    # Kernel variant (tests/variants/udp-idle-nodeport): UDP timeouts of 2 s; an internet client's socket sends to
    # NodePort 30053/udp (externalTrafficPolicy=Cluster), then again 5 s later. Its entry expired meanwhile, and the
    # second datagram was masqueraded to another port: the pod saw 10.244.0.1:36985, then 10.244.0.1:21091. A
    # connection is anchored on its initiator's leg (here the outside one), so the flow is one connection with two
    # mappings, as the kernel's truth counts it (it once made a connection per mapping, both counting the one
    # outside leg's packets). The pod's own flows idled too but kept their ports: one connection each, no finding.
    d = Path(__file__).resolve().parent / "variants" / "udp-idle-nodeport"
    result = correlate(d / "inside.pcap", d / "outside.pcap")
    conns = result.to_dict()["connections"]
    (inbound,) = [c for c in conns if c["initiator"] == "outside"]
    assert sum(c["initiator"] == "inside" for c in conns) == 3
    # Its tuple inside is the mapping it ended under, as the kernel's truth (the last conntrack entry) has it.
    assert (inbound["inside"]["src"], inbound["inside"]["sport"]) == ("10.244.0.1", 21091)
    assert [(leg["observation_point"], leg["tuple"]["sport"], leg["first_frame"]) for leg in inbound["legs"]] == [
        ("outside", 49963, 3), ("inside", 36985, 4), ("inside", 21091, 23)]
    # Each packet counted once, on both sides, as matched and as fates say.
    assert inbound["packets"] == {"egress_inside": 2, "egress_outside": 2, "reply_outside": 2, "reply_inside": 2,
                                  "icmp_error_outside": 0, "icmp_error_inside": 0,
                                  "node_made_outside": 0, "node_made_inside": 0}
    assert inbound["matched"] == {"egress": 2, "reply": 2} and inbound["fates"]["crossed"] == 4
    assert inbound["flags"] == ["multiple_inside_tuples"]
    assert result.unmatched_inside == 0 and result.unmatched_outside == 0
    found = {f.kind: f for f in diagnose(result)}
    remap = found["remapped_after_idle"]
    conn = result.connections.filter(pl.col("initiator") == "outside")["conn"].item()
    assert remap.connections == (conn,) and remap.data["flows_from_outside"] == 1
    assert remap.data["connections"] == 1 and 4.5 < remap.data["silence_s"]["min"] < 6
    (line,) = remap.evidence
    assert line == (f"#{conn} udp 198.51.100.20:49963 -> 203.0.113.2:30053 reached the pod as 10.244.0.1:36985 "
                    "(inside frame 4), then as 10.244.0.1:21091 from inside frame 23, 5.0 s after "
                    "10.244.0.1:36985's last packet, shorter than 30 s, the default nf_conntrack_udp_timeout of an "
                    "entry not yet a stream (answered, but not before a packet 2 s after its first), so under the "
                    "defaults it did not expire")
    # The lab's timeouts were 2 s: shorter than the defaults, as the finding says it may be.
    assert remap.data["shorter_than_default"] == {"connections": 1, "by_sysctl": {"nf_conntrack_udp_timeout": 1}}
    assert remap.summary.startswith("1 connection(s) started outside, reached the pod under a new tuple after "
                                    "falling silent")
    assert "The pod sees a new client address:port" in remap.summary and "nf_conntrack_udp_timeout" in remap.fix
    assert "mapping_conflict" not in found
    assert "healthy" not in found and not [f for f in found.values() if f.severity == "error"]


def test_a_flow_mapped_anew_counts_its_packets_on_every_outside_tuple() -> None:
    # captures/udp-remap #0: two datagrams and their replies, one under each outside tuple in turn. The outside
    # counts are of both legs, as matched counts the pairs of both (they once counted the primary leg alone:
    # egress_outside 1 beside matched egress 2); frames listed beside them are of both legs too.
    r = correlate(*capture_pair(CAPTURES / "udp-remap"))
    (c,) = [c for c in r.to_dict()["connections"] if c["proto"] == "udp"]
    assert c["matched"] == {"egress": 2, "reply": 2}
    assert c["packets"] == {"egress_inside": 2, "egress_outside": 2, "reply_outside": 2, "reply_inside": 2,
                            "icmp_error_outside": 0, "icmp_error_inside": 0,
                                  "node_made_outside": 0, "node_made_inside": 0}
    assert sum(leg["packets"] for leg in c["legs"] if leg["observation_point"] == "outside") == 4
    assert c["fates"]["crossed"] == 4 and c["flags"] == ["multiple_outside_tuples"]
    row = r.connections.filter(pl.col("proto") == "udp").row(0, named=True)
    assert row["outside_tuples"] == 2 and row["inside_tuples"] == 1
    assert len(_frames(r, row["conn"], "outside", True)) == row["egress_outside"]
    assert len(_frames(r, row["conn"], "outside", False)) == row["reply_outside"]


def test_ftp_list_over_port_then_retr_over_eprt_with_random_fully() -> None:
    # Kernel variant (tests/variants/ftp-eprt-random): the FTP helper with MASQUERADE --random-fully rewrote a PORT
    # and then an EPRT command (+1 byte each): every control packet matched on both sides, the two data connections
    # inbound and translated, each admitted by an expectation; the finding names EPRT too.
    d = Path(__file__).resolve().parent / "variants" / "ftp-eprt-random"
    for result in (correlate(d / "inside.pcap", d / "outside.pcap", conntrack=d / "conntrack.log"),
                   correlate(d / "any.pcap", interfaces=d / "links.txt")):
        rows = sorted(result.connections.iter_rows(named=True), key=lambda r: r["conn"])
        assert [(r["initiator"], r["verdict"], r["orig_sport"], r["trans_sport"]) for r in rows] == [
            ("inside", "translated", 34636, 1756), ("outside", "translated", 20, 20),
            ("outside", "translated", 20, 20)]
        assert [r["fate_crossed"] for r in rows] == [33, 8, 8]
        # +1 after PORT, +2 after EPRT: the shift reported is the most common one, between as common ones the
        # largest (it was whichever mode() listed first, and varied from run to run)
        assert rows[0]["init_seq_shift"] == 2 and rows[0]["reply_ack_shift"] == 2
        found = {f.kind: f for f in diagnose(result)}
        assert list(found) == ["healthy", "alg_rewrite"]
        assert "PORT and EPRT" in found["alg_rewrite"].summary
        assert sum("an expectation" in e for e in found["alg_rewrite"].evidence) == 2


def test_an_alg_rewrite_that_keeps_the_length_is_still_named() -> None:
    # Kernel variant (tests/variants/ftp-samelen): active FTP from 10.244.0.55, whose '10,244,0,55' is as long as
    # the node's '203,0,113,2': the FTP helper rewrote the PORT and EPRT commands without changing their length, so
    # no sequence number moved, and diagnose said only "NAT working as expected". The two packets crossed with their
    # payload head changed (head_digest): natproof.assemble.rewritten_payloads.
    d = Path(__file__).resolve().parent / "variants" / "ftp-samelen"
    result = correlate(d / "inside.pcap", d / "outside.pcap")
    doc = dict(enumerate(result.to_dict()["connections"]))  # in row order: "conn" 0, 1, ...
    at, control = next((i, c) for i, c in doc.items() if c["original"]["dport"] == 21)
    assert "payload_rewritten" in control["flags"] and "seq_shift" not in control["flags"]
    assert result.connections.filter(pl.col("conn") == at)["payload_rewrites"].item() == 2
    assert sorted(c["initiator"] for c in doc.values()) == ["inside", "outside", "outside"]
    assert all(c["verdict"] == "translated" for c in doc.values())
    assert not [c for c in doc.values() if c["original"]["dport"] != 21 and c["flags"]]
    found = {f.kind: f for f in diagnose(result)}
    alg = found["alg_rewrite"]
    assert alg.title == "An ALG rewrote payloads" and "1 kept the length, and no number moved" in alg.summary
    assert alg.evidence[0].endswith("2 packet(s) crossed with their payload changed, its length kept (no sequence "
                                    "number moved)")
    assert "alg_missing" not in found


def test_a_capture_cut_short_by_its_snaplen_shows_no_payload_rewrite(tmp_path: Path) -> None:
    # captures/many-connections with the inside capture cut to 80 bytes a frame (tcpdump -s 80): every payload's
    # head digests fewer bytes there than on the outside, which read as 4,200 packets rewritten by an ALG before
    # heads were compared only where both captures hold them whole.
    import gzip
    import struct

    src = CAPTURES / "many-connections"
    data = gzip.decompress((src / "inside.pcap.gz").read_bytes())
    e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out = bytearray(data[:16] + struct.pack(e + "I", 80) + data[20:24])  # the file header, snaplen 80
    at = 24
    while at < len(data):
        sec, frac, caplen, wire = struct.unpack_from(e + "IIII", data, at)
        frame = data[at + 16:at + 16 + caplen]
        out += struct.pack(e + "IIII", sec, frac, min(caplen, 80), wire) + frame[:80]
        at += 16 + caplen
    (tmp_path / "inside.pcap").write_bytes(bytes(out))
    with gzip.open(src / "outside.pcap.gz") as fh:
        (tmp_path / "outside.pcap").write_bytes(fh.read())
    cut = correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap")
    whole = correlate(src / "inside.pcap.gz", src / "outside.pcap.gz")
    assert cut.by_verdict() == whole.by_verdict()
    assert cut.connections["payload_rewrites"].sum() == 0 == whole.connections["payload_rewrites"].sum()
    assert "alg_rewrite" not in {f.kind for f in diagnose(cut)}
    ftp = correlate(CAPTURES / "ftp-alg" / "inside.pcap", CAPTURES / "ftp-alg" / "outside.pcap")
    assert ftp.connections.filter(pl.col("payload_rewrites") > 0)["orig_dport"].to_list() == [21]


def test_a_pods_call_to_its_nodes_nodeport_or_a_load_balancer_ip_is_answered_on_the_node() -> None:
    # Kernel variant (tests/variants/pod-nodeport-lb): pod1 calls the node's own NodePort 203.0.113.2:30080 and
    # the LoadBalancer IP 192.0.2.100:80, both DNATed to pod2 (10.244.0.11:8080) and masqueraded to 10.244.0.1
    # (the DNATed leg is on pod2's veth, in neither capture), and 192.0.2.101:80, DNATed to 198.51.100.30:8080
    # outside and masqueraded. natproof said not_captured with a "capture both sides" warning for the first six;
    # the record alone (inside capture + conntrack.log) read all nine as inbound connections.
    from natproof.check import check_case
    from natproof.correlate import correlate_one

    d = Path(__file__).resolve().parent / "variants" / "pod-nodeport-lb"
    rows = correlate(d / "inside.pcap", d / "outside.pcap").connections.to_dicts()
    nodeport = [r for r in rows if r["orig_dport"] == 30080]
    assert len(nodeport) == 3 and all(r["verdict"] == "internal" and r["service_type"] == "NodePort"
                                      and r["service_ip"] == "203.0.113.2" for r in nodeport)
    # Without a dump nothing says 192.0.2.100 is a Service: it was answered and crossed neither capture.
    assert [r["verdict"] for r in rows if r["orig_dst"] == "192.0.2.100"] == ["not_captured"] * 3
    # The Service dump names the LoadBalancer IPs (status.loadBalancer.ingress): every verdict and Service right.
    names = load_names(services=[d / "services.json"])
    result = correlate(d / "inside.pcap", d / "outside.pcap", services=names.recognise())
    by_dst = {r["orig_dst"]: (r["verdict"], r["service_type"]) for r in result.connections.to_dicts()}
    assert by_dst == {"203.0.113.2": ("internal", "NodePort"), "192.0.2.100": ("internal", "LoadBalancer"),
                      "192.0.2.101": ("translated", "LoadBalancer"), "198.51.100.10": ("translated", None)}
    assert [f.kind for f in diagnose(result)] == ["healthy"]
    # The kernel's record shows the DNAT to a pod of this node: internal without the dump too.
    kernel = correlate(d / "inside.pcap", d / "outside.pcap", conntrack=d / "conntrack.log").connections
    assert kernel.filter(pl.col("orig_dst") == "192.0.2.100")["verdict"].to_list() == ["internal"] * 3
    # The inside capture alone with the record: pod-initiated, not inbound.
    one = correlate_one(d / "inside.pcap", d / "conntrack.log").connections
    assert one["initiator"].unique().to_list() == ["inside"]
    assert one.filter(pl.col("orig_dport") == 30080)["service_type"].to_list() == ["NodePort"] * 3
    for rep in (check_case(d, conntrack=True), check_case(d, d / "any.pcap")):
        assert rep.expected == rep.found == rep.mapping_right == rep.verdict_right == 10


def _records(data: bytes) -> list[tuple[int, int]]:
    """(offset, caplen) of each record of a little-endian pcap."""
    import struct

    out, at = [], 24
    while at + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, at + 8)[0]
        out.append((at, caplen))
        at += 16 + caplen
    return out


def test_a_file_cut_short_or_a_malformed_frame_is_said_not_blamed_on_the_node(tmp_path: Path) -> None:
    # A new user's break test on captures/basic: the inside file cut in the middle of a record read as "the node
    # dropped them, or that capture had already stopped" with "count the drops"; an inside frame cut to 30 bytes
    # (skipped as malformed) as a capture that lost the packet.
    import struct

    src = CAPTURES / "basic"
    data = (src / "inside.pcap").read_bytes()
    assert data[:4] == b"\x4d\x3c\xb2\xa1"
    recs = _records(data)
    at, caplen = recs[-12]
    (tmp_path / "cut.pcap").write_bytes(data[:at + 16 + caplen // 2])
    cut = correlate(tmp_path / "cut.pcap", src / "outside.pcap")
    assert any(w.startswith("last record truncated") for w in cut.inside.warnings)
    lost = {f.kind: f for f in diagnose(cut)}["dropped_mid_connection"]
    assert lost.data["after_other_capture"] == lost.data["lost_packets"] > 0
    assert "The inside file ends cut short (last record truncated at frame" in lost.summary
    assert lost.fix.startswith("Take the capture again")
    whole = correlate(src / "inside.pcap", src / "outside.pcap")
    egress = whole.inside_packets.filter(pl.col("is_egress") & (pl.col("fate") == "crossed"))["frame_no"][3]
    at, caplen = recs[egress - 1]
    short = bytearray(data)
    struct.pack_into("<I", short, at + 8, 30)
    (tmp_path / "short.pcap").write_bytes(bytes(short[:at + 16 + 30] + short[at + 16 + caplen:]))
    one = correlate(tmp_path / "short.pcap", src / "outside.pcap")
    assert one.inside.skipped.get("malformed") == 1
    # The frame is kept with its time: the outside copy is tied to it (a second trial), not a capture loss.
    found = {f.kind: f for f in diagnose(one)}
    assert "capture_missed_packets" not in found and "dropped_mid_connection" not in found
    unread = found["unreadable_counterparts"]
    assert unread.severity == "info" and unread.data == {"packets": 1}
    assert f"with inside frame(s) {egress} skipped as malformed" in unread.evidence[0]


@pytest.mark.parametrize("decoder", ["fast", "dpkt"])
def test_an_ip_length_past_the_frame_is_a_malformed_frame_not_a_lost_packet(tmp_path: Path, decoder: str) -> None:
    # A new user's trial: an inside frame of 74 bytes on the wire whose IPv4 total length says 65535 was read as
    # a packet (its payload length 65k), matched nothing, and diagnose said it "never left the node". No packet
    # is longer than its frame: both decoders count it malformed.
    import struct

    src = CAPTURES / "basic"
    data = bytearray((src / "inside.pcap").read_bytes())
    whole = correlate(src / "inside.pcap", src / "outside.pcap")
    egress = whole.inside_packets.filter(pl.col("is_egress") & (pl.col("fate") == "crossed"))["frame_no"][3]
    at, caplen = _records(bytes(data))[egress - 1]
    frame = at + 16
    assert data[frame + 12:frame + 14] == b"\x08\x00" and caplen < 1500  # Ethernet, IPv4
    struct.pack_into(">H", data, frame + 14 + 2, 65535)
    (tmp_path / "long.pcap").write_bytes(bytes(data))
    one = correlate(tmp_path / "long.pcap", src / "outside.pcap", decoder=decoder)
    assert one.inside.skipped.get("malformed") == 1 and one.inside.malformed_frames[0][0] == egress
    kinds = {f.kind for f in diagnose(one)}
    assert "dropped_mid_connection" not in kinds and "capture_missed_packets" not in kinds
    assert "unreadable_counterparts" in kinds


@pytest.mark.parametrize("direction", ["egress", "reply"])
def test_a_packet_whose_copy_is_a_malformed_frame_is_not_lost(tmp_path: Path, direction: str) -> None:
    # A second trial: an inside reply whose IP length was edited (65535, one byte too long, shorter than its
    # header) left its outside copy "never reached the pod side" (dropped_mid_connection); a SYN's, "missed".
    import struct

    src = CAPTURES / "basic"
    data = bytearray((src / "inside.pcap").read_bytes())
    whole = correlate(src / "inside.pcap", src / "outside.pcap")
    mine = pl.col("is_egress") if direction == "egress" else ~pl.col("is_egress")
    frames = whole.inside_packets.filter(mine & (pl.col("fate") == "crossed"))["frame_no"]
    records = _records(bytes(data))
    for frame, length in zip(frames[2:5], (65535, 10, 0), strict=True):
        at, caplen = records[frame - 1]
        true = struct.unpack_from(">H", data, at + 16 + 14 + 2)[0]
        struct.pack_into(">H", data, at + 16 + 14 + 2, length or true + 1)
    (tmp_path / "edited.pcap").write_bytes(bytes(data))
    one = correlate(tmp_path / "edited.pcap", src / "outside.pcap")
    assert one.inside.skipped.get("malformed") == 3
    found = {f.kind: f for f in diagnose(one)}
    assert "dropped_mid_connection" not in found and "capture_missed_packets" not in found
    assert found["unreadable_counterparts"].data == {"packets": 3}


def test_a_pcapng_file_cut_short_is_said_too(tmp_path: Path) -> None:
    """The pcapng form of the test above: a block whose length runs past the end of the file is worded 'block
    length past the end of the file ...: the file is damaged or cut short' (it was 'last block truncated'), and
    diagnose still reads it as the file ending cut short."""
    from pcapbytes import pcapng

    from natproof.capture import read_capture

    src = CAPTURES / "basic"
    info, recs = read_capture(src / "inside.pcap")
    records = list(recs)
    data = pcapng([(records[0].linktype, 9)], [(0, r.ts_ns, r.data) for r in records])
    at, blen = len(data), 0
    for r in reversed(records[-12:]):  # the 12th block from the end, as above
        blen = 32 + len(r.data) + (-len(r.data)) % 4
        at -= blen
    (tmp_path / "cut.pcapng").write_bytes(data[:at + blen // 2])
    cut = correlate(tmp_path / "cut.pcapng", src / "outside.pcap")
    (warning,) = cut.inside.warnings
    assert warning.startswith(f"block length past the end of the file at offset {at} (frame {len(records) - 11}: ")
    lost = {f.kind: f for f in diagnose(cut)}["dropped_mid_connection"]
    assert "The inside file ends cut short (block length past the end of the file at offset" in lost.summary
    assert lost.fix.startswith("Take the capture again")


def test_requests_a_nat_gave_a_new_ip_id_are_no_other_path(tmp_path: Path) -> None:
    # A trial (s17, s12): a NAT that rewrites the IP id (pf's scrub random-id) and an echo's identifier. Every
    # request was on the outside capture under the translated tuple, yet matched none: egress_other_path, "they
    # took another interface", and each request counted twice (inside_only and outside_only). The replies link the
    # legs; the requests pair there on what the rewrite leaves, and the node is healthy.
    pod, node, srv = "10.244.0.10", "203.0.113.2", "198.51.100.10"
    t0, data = 1_700_000_000 * 10**9, b"abcdefgh" * 7
    inside, outside = [], []
    for i, new_id in enumerate((41000, 17, 60000)):
        t = t0 + i * 200_000_000
        inside.append((t, ipv4(pod, srv, 1, icmp_echo(8, 0x0101, i + 1, data), ip_id=7000 + i)))
        outside.append((t + 30_000, ipv4(node, srv, 1, icmp_echo(8, 0x7777, i + 1, data), ip_id=new_id, ttl=63)))
        outside.append((t + 10_000_000, ipv4(srv, node, 1, icmp_echo(0, 0x7777, i + 1, data), ip_id=9100 + i, ttl=52)))
        inside.append((t + 10_030_000, ipv4(srv, pod, 1, icmp_echo(0, 0x0101, i + 1, data), ip_id=9100 + i, ttl=51)))
        inside.append((t + 100_000_000, ipv4(pod, srv, 17, udp(52004, 5000, b"data%02d" % i), ip_id=3000 + i)))
        outside.append((t + 100_030_000, ipv4(node, srv, 17, udp(52004, 5000, b"data%02d" % i), ip_id=new_id ^ 5,
                                              ttl=63)))
        outside.append((t + 105_000_000, ipv4(srv, node, 17, udp(5000, 52004, b"resp%02d" % i), ip_id=4000 + i,
                                              ttl=52)))
        inside.append((t + 105_030_000, ipv4(srv, pod, 17, udp(5000, 52004, b"resp%02d" % i), ip_id=4000 + i,
                                             ttl=51)))
    result = correlate(*write_pair(tmp_path, inside, outside))
    rows = result.connections.sort("proto").select("proto", "verdict", "matched_egress", "matched_reply").rows()
    assert rows == [("icmp", "translated", 3, 3), ("udp", "translated", 3, 3)]
    assert all("egress_other_path" not in flags_of(c) for c in result.connections.iter_rows(named=True))
    assert [f.kind for f in diagnose(result)] == ["healthy"]


def _leaked_syns(t0: int, pod: str, sport: int) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """A pod's SYN sent three times (0, 1, 3 s) that left the node untranslated (a TTL less) and got no reply."""
    from pcapbytes import ipv4, tcp

    inside, outside = [], []
    for i, dt in enumerate((0, 1, 3)):
        t = t0 + dt * 10**9
        inside.append((t, ipv4(pod, "198.51.100.10", 6, tcp(sport, 80, 300_000, 0, 0x02), ttl=64, ip_id=3000 + i)))
        outside.append((t + 30_000, ipv4(pod, "198.51.100.10", 6, tcp(sport, 80, 300_000, 0, 0x02), ttl=63,
                                         ip_id=3000 + i)))
    return inside, outside


def test_untranslated_pods_of_a_translated_subnet_are_not_a_wrong_subnet(tmp_path: Path) -> None:
    # A helper's trial (s21): pod .10 translated, pod .13 of the same /24 untranslated and unanswered. It read
    # "Connections from 10.244.0.0/24 leave untranslated while those from 10.244.0.0/24 are translated", the fix to
    # cover 10.244.0.0/24 "too". A pod of 10.245.0.0/24, none of whose subnet is translated, is a wrong subnet still.
    t0 = 1_700_000_000 * 10**9
    ok_in, ok_out = tcp_pair(t0, pod="10.244.0.10", sport=40000, nat_sport=40000)
    same_in, same_out = _leaked_syns(t0 + 200_000_000, "10.244.0.13", 51004)
    far_in, far_out = _leaked_syns(t0 + 300_000_000, "10.245.0.5", 52000)
    found = {f.kind: f for f in diagnose(correlate(*write_pair(tmp_path, ok_in + same_in, ok_out + same_out)))}
    assert "wrong_source_subnet" not in found, found["wrong_source_subnet"].summary
    f = found["untranslated_sources"]
    assert f.severity == "error" and len(f.connections) == 1
    assert f.data == {"sources": ["10.244.0.13"], "translated_sources": ["10.244.0.10"], "subnets": ["10.244.0.0/24"]}
    assert "conntrack -D -s 10.244.0.13" in f.fix and "-s 10.244.0.0/24" not in f.fix
    assert f.evidence[0].startswith("#1 tcp 10.244.0.13:51004 -> 198.51.100.10:80 left as 10.244.0.13:51004")

    both = tmp_path / "both"
    both.mkdir()
    found = {f.kind: f for f in diagnose(correlate(*write_pair(both, ok_in + same_in + far_in,
                                                                ok_out + same_out + far_out)))}
    wrong, skipped = found["wrong_source_subnet"], found["untranslated_sources"]
    assert wrong.data == {"untranslated_subnets": ["10.245.0.0/24"], "translated_subnets": ["10.244.0.0/24"]}
    assert skipped.data["sources"] == ["10.244.0.13"]
    assert set(wrong.connections).isdisjoint(skipped.connections)
    assert len(wrong.evidence) == len(wrong.connections) == 1 and "10.245.0.5" in wrong.evidence[0]


def test_time_exceeded_for_a_small_ttl_is_a_path_probe_and_for_a_normal_one_a_loop(tmp_path: Path) -> None:
    # A helper's trial (s20), traceroute from a pod: the node's time exceeded for the TTL 1 probe read as a REJECT rule
    # ("iptables -S | grep REJECT"), a router's for TTL 2 as "Destination unreachable ... check routing". A REJECT
    # never answers time exceeded; a packet sent with TTL 64 that runs out went round a loop.
    from pcapbytes import icmp_error, ipv4, ipv6, udp

    pod, node, far, bridge, hop = "10.244.0.10", "203.0.113.2", "198.51.100.10", "10.244.0.1", "198.51.100.1"
    pod6, bridge6, far6 = "fd00:10:244::10", "fd00:10:244::1", "2001:db8::10"
    t0 = 1_700_000_000 * 10**9
    inside: list[tuple[int, bytes]] = []
    outside: list[tuple[int, bytes]] = []
    # TTL 1: the node answers from its bridge address; nothing leaves (IPv4, then IPv6's hop limit).
    probe = ipv4(pod, far, 17, udp(45555, 33434, b"@" * 32), ttl=1, ip_id=2000)
    inside += [(t0, probe), (t0 + 50_000, ipv4(bridge, pod, 1, icmp_error(11, 0, probe[:28]), ip_id=7))]
    probe6 = ipv6(pod6, far6, 17, udp(45556, 33434, b"@" * 32), hlim=1)
    inside += [(t0 + 10_000_000, probe6),
               (t0 + 10_050_000, ipv6(bridge6, pod6, 58, icmp_error(3, 0, probe6[:48])))]
    # TTL 2 and TTL 64: they cross masqueraded, a router answers time exceeded, the node passes it back.
    for i, (dport, ttl) in enumerate(((33435, 2), (9999, 64))):
        t = t0 + (i + 2) * 50_000_000
        sent = ipv4(pod, far, 17, udp(45555, dport, b"@" * 32), ttl=ttl, ip_id=2001 + i)
        left = ipv4(node, far, 17, udp(45555, dport, b"@" * 32), ttl=ttl - 1, ip_id=2001 + i)
        inside.append((t, sent))
        outside.append((t + 30_000, left))
        outside.append((t + 5_000_000, ipv4(hop, node, 1, icmp_error(11, 0, left[:28]), ttl=254, ip_id=300 + i)))
        back = ipv4(pod, far, 17, udp(45555, dport, b"@" * 32), ttl=1, ip_id=2001 + i)[:28]
        inside.append((t + 5_030_000, ipv4(hop, pod, 1, icmp_error(11, 0, back), ttl=253, ip_id=300 + i)))
    result = correlate(*write_pair(tmp_path, inside, outside))
    rows = {(r["orig_dst"], r["orig_dport"]): r for r in result.connections.iter_rows(named=True)}
    first = rows[(far, 33434)]
    # The node's answer stays what it is: made on the node, nothing of the probe left it.
    assert first["fate_node_generated"] == 1 and first["verdict"] == "not_forwarded"
    found = {f.kind: f for f in diagnose(result)}
    assert not {"rejected_by_node", "unreachable", "forwarding_blocked"} & set(found), list(found)
    probes, loop = found["path_probe"], found["routing_loop"]
    want = sorted(rows[k]["conn"] for k in ((far, 33434), (far6, 33434), (far, 33435)))
    assert probes.severity == "info" and sorted(probes.connections) == want
    assert probes.data == {"ttls": [1, 2], "hops": sorted([bridge, bridge6, hop])}
    assert any(line.endswith("for a packet sent with TTL 1 (inside frame 1)") and "(the node itself)" in line
               for line in probes.evidence)
    assert loop.severity == "warning" and loop.connections == (rows[(far, 9999)]["conn"],)
    assert loop.data == {"ttls": [64], "hops": [hop]}


def _ip_ids_moved(rows: list[tuple[int, bytes]], by: int) -> list[tuple[int, bytes]]:
    """Rows of raw IPv4 packets with every IP id moved by ``by``: packets of another run of the same exchange."""
    return [(t, b[:4] + ((int.from_bytes(b[4:6], "big") + by) & 0xFFFF).to_bytes(2, "big") + b[6:]) for t, b in rows]


def test_reply_other_path_counts_what_paired_and_says_payload_lookalikes_are_weak(tmp_path: Path) -> None:
    # An uplink capture of another run of the same HTTP exchange (other ISN and IP ids, 20 ms later), its span
    # around the inside's (the node's own DNS), correlated with --clock-offset 0: only the request's payload pairs.
    t0 = 1_700_000_000 * 10**9
    inside, _ = tcp_pair(t0)
    _, other = tcp_pair(t0, isn=777_777, offset_ns=20_000_000)
    node = [(t0 + dt, ipv4("203.0.113.2", "192.0.2.53", 17, udp(5353, 53, b"q"), ip_id=9))
            for dt in (-50_000_000, 100_000_000)]
    result = correlate(*write_pair(tmp_path, inside, _ip_ids_moved(other, 3000) + node), clock_offset_s=0.0)
    row = result.connections.row(0, named=True)
    assert row["verdict"] == "reply_other_path"
    methods = result.packets("inside").filter(pl.col("method").is_not_null()).collect()["method"].to_list()
    assert methods and set(methods) == {"payload"}
    f = {f.kind: f for f in diagnose(result)}["reply_other_path"]
    line = f.evidence[0]
    assert (f"{row['matched_egress']} of its {row['egress_inside']} packet(s) paired with one crossing as "
            "203.0.113.2:40000") in line
    assert row["matched_egress"] < row["egress_inside"] and row["reply_outside"] > 0
    assert f"none paired with the {row['reply_outside']} reply packet(s) to that tuple the outside capture" in line
    assert "none crossed the outside capture" not in line
    assert "rests only on payload look-alikes" in line and "clock offset given (0 s)" in line
    assert "1 of them have replies to their translated tuple on the outside capture" in f.summary


def test_asymmetric_reply_keeps_its_sentence_and_no_payload_note() -> None:
    f = findings_of("asymmetric-reply")["reply_other_path"]
    assert all("none crossed the outside capture" in e and "payload look-alikes" not in e for e in f.evidence)
    assert "have replies to their translated tuple" not in f.summary


def test_partial_overlap_accounts_for_every_unmatched_outside_packet_before_the_inside_capture(
        tmp_path: Path) -> None:
    # The pod-side capture started 1.5 s into a long connection; the uplink saw the start, an earlier connection
    # and the node's own DNS. Every outside packet unmatched is from before the inside's first packet, and the
    # finding counts them all (not only those more than CAPTURE_MARGIN_NS early), by whose they are.
    t0 = 1_700_000_000 * 10**9
    inside, outside = tcp_rounds(t0, rounds=30)
    start = t0 + 1_500_000_000
    _, gone = tcp_pair(t0 + 100_000_000, sport=41000, nat_sport=41000, isn=70_000)
    node = [(t0 + 1_480_000_000 + i * 1_000_000, ipv4("203.0.113.2", "192.0.2.53", 17, udp(5353, 53, b"q"),
                                                       ip_id=9 + i)) for i in range(3)]
    result = correlate(*write_pair(tmp_path, [r for r in inside if r[0] >= start], outside + gone + node))
    f = {f.kind: f for f in diagnose(result)}["partial_overlap"]
    d = f.data
    assert d["outside_unmatched_before"] == result.unmatched_outside > 0
    assert d["outside_unmatched_before"] == (d["outside_unmatched_before_listed"]
                                             + d["outside_unmatched_before_other_connections"]
                                             + d["outside_unmatched_before_no_connection"])
    assert d["outside_unmatched_before_no_connection"] == len(gone) + len(node)  # within 500 ms of it: 3
    assert d["outside_unmatched_before_listed"] > 0 and f.connections == (0,)
    assert (f"{result.unmatched_outside} outside packet(s) with no counterpart came before the inside capture's "
            f"first packet: {d['outside_unmatched_before_listed']} of 1 connection(s) listed here; "
            f"{len(gone) + len(node)} of 2 flow(s) in no connection") in f.summary


def test_path_probe_evidence_names_the_capture_of_each_frame(tmp_path: Path) -> None:
    inside, outside = traceroute_rows()
    result = correlate(*write_pair(tmp_path, inside, outside))
    f = {f.kind: f for f in diagnose(result)}["path_probe"]
    assert f.data["ttls"] == [1, 2, 3]
    pk = {side: result.packets(side).filter(pl.col("is_icmp_error")).collect() for side in ("inside", "outside")}
    node, first_hop = f.evidence[0], f.evidence[1]
    # The node's own answer is seen inside only; a hop's, reverse-translated, is cited where diagnose found it.
    assert f"(inside frame {pk['inside']['frame_no'][0]}) for a packet sent with TTL 1 (inside frame 1)" in node
    assert re.search(r"from 203\.0\.113\.1 \((inside|outside) frame \d+\)", first_hop)
    assert not re.search(r"\(frame \d", " ".join(f.evidence))
    refused = {f.kind: f for f in diagnose(result)}["refused"]
    assert not re.search(r"\(frame \d", " ".join(refused.evidence)) and "inside frame" in refused.evidence[0]


def test_a_pod_cidr_that_holds_no_inside_sender_is_warned_and_is_no_capture_off() -> None:
    # A trial: captures/internal with --pod-cidr 10.245.0.0/16 made the pod-to-pod connections not_captured under
    # partial_overlap's "it was not running then", beside two identical capture spans, and nothing said the given
    # network holds none of the pods.
    inside, outside = CAPTURES / "internal" / "inside.pcap", CAPTURES / "internal" / "outside.pcap"
    wrong = correlate(inside, outside, pod_cidr="10.245.0.0/16")
    (warning,) = [w for w in wrong.inside.warnings if "--pod-cidr" in w]
    assert "10.245.0.0/16 holds none" in warning and "10.244.0.10, 10.244.0.11" in warning
    pod_to_pod = wrong.connections.filter(pl.col("orig_dst") == "10.244.0.11")
    assert set(pod_to_pod["verdict"]) == {"not_captured"} and not pod_to_pod["other_capture_off"].any()
    found = {f.kind: f for f in diagnose(wrong)}
    assert "partial_overlap" not in found  # both captures ran through them
    unseen = found["unseen_while_running"]
    assert unseen.connections == tuple(sorted(pod_to_pod["conn"].to_list()))
    assert unseen.data["between_private_outside_pod_networks"] == 3 and "not running" not in unseen.summary
    right = correlate(inside, outside, pod_cidr="10.244.0.0/16")
    assert not [w for w in right.inside.warnings if "--pod-cidr" in w]
    assert set(right.connections.filter(pl.col("orig_dst") == "10.244.0.11")["verdict"]) == {"internal"}


def test_a_remap_within_the_default_timeout_is_no_expiry_under_the_defaults(tmp_path: Path) -> None:
    # A trial (udp2): an unanswered flow mapped anew after 20 s and a stream after 100 s were told "its conntrack
    # entry expired", though conntrack's defaults (30 s, 120 s for a stream) keep such entries longer.
    from natproof.connections import IdleTimeouts

    t = IdleTimeouts()
    result = correlate(*write_pair(tmp_path, *udp_remap_rows()))
    f = {f.kind: f for f in diagnose(result)}["remapped_after_idle"]
    assert f.data["connections"] == 2
    assert f.data["shorter_than_default"] == {"connections": 2, "by_sysctl": {"nf_conntrack_udp_timeout": 1,
                                                                              "nf_conntrack_udp_timeout_stream": 1}}
    unanswered, stream = sorted(f.evidence)
    assert "10.244.0.10:40300" in unanswered and "20.0 s after" in unanswered
    assert f"shorter than {t.udp_unreplied_s:g} s, the default nf_conntrack_udp_timeout of an unanswered" in unanswered
    assert "10.244.0.10:40400" in stream and "100.0 s after" in stream
    assert f"shorter than {t.udp_s:g} s, the default nf_conntrack_udp_timeout_stream of a stream" in stream
    assert "expired, or was deleted" not in f.summary and "under the defaults the entry did not expire" in f.summary
    assert "or the entry was deleted (conntrack -D" in f.summary and "sysctl net.netfilter.nf_conntrack" in f.fix
    # Grouped with longer timeouts, a 40 s unanswered silence is a remap too, and one the default 30 s explains.
    longer = correlate(*write_pair(tmp_path, *udp_remap_rows(gap=40)), timeouts=IdleTimeouts(udp_unreplied_s=60.0))
    g = {f.kind: f for f in diagnose(longer)}["remapped_after_idle"]
    assert g.data["connections"] == 2 and g.data["shorter_than_default"]["connections"] == 1
    assert "the other 1's silence outlasted the default, so their entry expired or was deleted" in g.summary
