"""NATs in a chain (natproof.chain) on the lab's double-NAT run: pod -> node MASQUERADE -> a NAT gateway's SNAT,
captured at the pod side, node1's eth0, the gateway's VPC bridge and its public side; the kernel's truth of
each NAT composes into each connection's tuple at every point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import UDP
from scapy.utils import rdpcap, wrpcap

import natproof
from natproof.cli import main

LAB = Path(__file__).resolve().parent.parent / "captures" / "double-nat"
CHAIN = [LAB / "inside.pcap", LAB / "outside.pcap", LAB / "gateway" / "inside.pcap", LAB / "gateway" / "outside.pcap"]


def _key(t: dict) -> tuple:
    return t["src"], t["sport"], t["dst"], t["dport"]


def _truth() -> tuple[list[dict], dict[tuple, dict]]:
    node = json.loads((LAB / "truth.json").read_text())["connections"]
    gateway = {_key(c["original"]): c for c in json.loads((LAB / "gateway" / "truth.json").read_text())["connections"]}
    return node, gateway


def test_every_connection_is_followed_through_both_nats() -> None:
    chain = natproof.correlate_chain(CHAIN)
    doc = chain.to_dict()
    assert doc["schema"] == "natproof.chain/1" and len(doc["hops"]) == 3
    node, gateway = _truth()
    by_pod = {_key(c["inside"]): c for c in doc["connections"] if c["first_point"] == 0}
    assert len(by_pod) == len(node)
    for t in node:
        c = by_pod[_key(t["original"])]
        gw = gateway[_key(t["translated"])]
        points = {h["observation_point"]: h for h in c["hops"]}
        assert _key(points[0]["tuple"]) == _key(t["original"])
        assert _key(points[1]["tuple"]) == _key(t["translated"]) and points[1]["rewrites"] == t["rewrites"]
        assert _key(points[2]["tuple"]) == _key(t["translated"]) and points[2]["rewrites"] == []  # the bridge
        assert _key(points[3]["tuple"]) == _key(gw["translated"]) and points[3]["rewrites"] == gw["rewrites"]
        assert c["translated"] == c["outside"] == points[3]["tuple"]
        assert c["verdict"] == "translated" and c["lost_at"] is None
        assert c["rewrites"] == [f for f in ("src", "sport", "dst", "dport")
                                 if t["original"][f] != gw["translated"][f]]
        assert c["nat"] == ["SNAT"]
    # node2's connections: first seen at the gateway's bridge, its own SNAT there.
    others = [c for c in doc["connections"] if c["first_point"] != 0]
    node_tuples = {_key(t["translated"]) for t in node}
    expected = [g for k, g in gateway.items() if k not in node_tuples]
    assert sorted(_key(c["inside"]) for c in others) == sorted(_key(g["original"]) for g in expected)
    assert all(c["first_point"] == 2 and c["hops"][-1]["observation_point"] == 3 for c in others)
    # The gateway rewrote a port for exactly the flows whose node tuple clashed (the lab's design).
    clashed = [c for c in doc["connections"] if "sport" in c["hops"][-1]["rewrites"]]
    assert len(clashed) == sum("sport" in g["rewrites"] for g in gateway.values()) == 2
    assert doc["summary"] == {"connections": len(node) + len(expected), "by_verdict": {"translated": 7},
                              "reached_last": 7, "lost": 0, "unsettled_at_last": []}


def test_a_connection_lost_at_the_gateway_says_at_which_hop(tmp_path: Path) -> None:
    """The gateway's public capture without pod1's UDP datagram and its answer (as if that capture had missed
    them): the chain stops at hop 2, between the gateway's two sides, with that hop's verdict: not_captured, for
    the answer reached the gateway's bridge, so the datagram did cross, out of the public capture's sight."""
    node, gateway = _truth()
    udp = next(t for t in node if t["proto"] == "udp")
    public = _key(gateway[_key(udp["translated"])]["translated"])
    kept = [p for p in rdpcap(str(CHAIN[3]))
            if not (UDP in p and public[1] in (p[UDP].sport, p[UDP].dport))]
    cut = tmp_path / "gw-outside.pcap"
    wrpcap(str(cut), kept)
    doc = natproof.correlate_chain([*CHAIN[:3], cut]).to_dict()
    [lost] = [c for c in doc["connections"] if c["lost_at"] is not None]
    assert _key(lost["inside"]) == _key(udp["original"])
    assert lost["lost_at"] == {"hop": 2, "from": str(CHAIN[2]), "to": str(cut)}
    assert lost["verdict"] == "not_captured" and lost["translated"] is None
    assert [h["observation_point"] for h in lost["hops"]] == [0, 1, 2]
    assert _key(lost["outside"]) == _key(udp["translated"])  # as far as it got
    assert doc["summary"]["reached_last"] == doc["summary"]["connections"] - 1 and doc["summary"]["lost"] == 1


def test_cli_chain_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["correlate", *map(str, CHAIN), "--quiet"]
    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "natproof.chain/1" and doc["summary"]["reached_last"] == 7
    out = tmp_path / "chain.txt"
    assert main([*args, "--format", "table", "-o", str(out)]) == 0
    text = out.read_text()
    assert "3: 203.0.113.20:19143 -> 198.51.100.10:7  [src, sport]" in text
    assert "7 connections: 7 translated; 7 reached the last capture" in text


@pytest.mark.parametrize("flow_log", [False, True], ids=["captures", "flow-log"])
@pytest.mark.parametrize("to", ["pipe", "file"])
def test_the_chain_table_piped_or_in_a_file_has_no_trailing_blanks_and_no_wrapped_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], to: str, flow_log: bool) -> None:
    """The chain's table padded every line to 160 columns with blanks (the two-capture table strips them), and
    wrapped its summary lines at the table's width."""
    args = ["correlate", *map(str, CHAIN[:2]), "--format", "table", "--quiet"]
    args += ["--flow-log", str(LAB / "flowlogs" / "custom.log"), "--nat-gateway", "10.0.1.1=203.0.113.20"] \
        if flow_log else [str(CHAIN[3])]
    out = tmp_path / "chain.txt"
    assert main([*args, "-o", str(out)] if to == "file" else args) == 0
    text = out.read_text() if to == "file" else capsys.readouterr().out
    lines = text.splitlines()
    assert text.endswith("\n") and lines and all(line == line.rstrip() for line in lines)
    last = lines[-1] if not flow_log else lines[-2]
    assert last.startswith("5 connections: 5 translated; ")
    if flow_log:
        assert lines[-1].startswith("reached the last capture, their tuple at the NAT gateway not settled by its "
                                    "flow log: #4 (flow log, ambiguous: 2 candidates)")


def test_one_connection_is_one_connection(capsys: pytest.CaptureFixture[str]) -> None:
    """who over a chain printed "1 connections" under the table of the one it found."""
    assert main(["who", "203.0.113.20:19143", str(CHAIN[0]), str(CHAIN[1]), str(CHAIN[3]), "--format", "table",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "\n1 connection: 1 translated; 1 reached the last capture\n" in out and "1 connections" not in out
    assert all(line == line.rstrip() for line in out.splitlines())


@pytest.mark.parametrize(("extra", "message"), [
    (["--format", "csv"], "table or json"),
    (["--clock-offset", "1"], "each hop's clock offset"),
])
def test_cli_chain_refuses_what_applies_to_one_pair(extra: list[str], message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["correlate", *map(str, CHAIN), "--quiet", *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_capture_twice_in_the_chain_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["correlate", str(CHAIN[0]), str(CHAIN[1]), str(CHAIN[0]), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "given twice in the chain" in err and "Traceback" not in err


def test_the_readme_chain_example_is_what_the_command_prints(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("$ natproof correlate captures/double-nat/inside.pcap", 1)[1].split("```", 1)[0]
    shown = [line for line in block.splitlines()[2:] if line.strip()]
    out = tmp_path / "t.txt"
    assert main(["correlate", *map(str, CHAIN[:2]), str(CHAIN[3]), "--format", "table", "--quiet", "-o",
                 str(out)]) == 0
    printed = [line.rstrip().replace(str(LAB.parent.parent) + "/", "") for line in out.read_text().splitlines()]
    assert len(shown) > 20 and shown == [line for line in printed if line.strip()]


def test_who_across_the_chain_finds_the_pod_behind_the_gateway_port(capsys: pytest.CaptureFixture[str]) -> None:
    node, gateway = _truth()
    udp = next(t for t in node if t["proto"] == "udp")
    public = gateway[_key(udp["translated"])]["translated"]
    query = f"{public['src']}:{public['sport']}"
    caps = [str(CHAIN[0]), str(CHAIN[1]), str(CHAIN[3])]
    assert main(["who", query, *caps, "--format", "json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [c] = doc["connections"]
    assert _key(c["inside"]) == _key(udp["original"]) and _key(c["outside"]) == _key(public)
    # At the time it happened (first capture's clock), and not an hour later.
    at = c["first_seen"]
    assert main(["who", query, *caps, "--at", str(at + 0.5), "--format", "json", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["who", query, *caps, "--at", str(at + 3600), "--format", "table", "--quiet"]) == 1
    assert f"no connection used {query}" in capsys.readouterr().out
    assert main(["who", query, *caps, "--format", "table", "--quiet"]) == 0
    assert f"behind {query} was {udp['original']['src']}:{udp['original']['sport']}" in capsys.readouterr().out


@pytest.mark.parametrize(("shift", "side"), [(-600.0, "after"), (3600.0, "before")])
def test_who_across_the_chain_at_another_time_shows_the_nearest(capsys: pytest.CaptureFixture[str], shift: float,
                                                                side: str) -> None:
    """The endpoint was used, at another time: the answer is the nearest connection (as who over two captures
    gives it), not the hint about a connection the last capture alone holds, which was printed instead."""
    from natproof.chain import nearest_chain, who_chain

    caps = [str(CHAIN[0]), str(CHAIN[1]), str(CHAIN[3])]
    chain = natproof.correlate_chain(caps)
    [c] = who_chain(chain, "203.0.113.20", 19143)
    at = (c["first_seen"] if shift < 0 else c["last_seen"]) + shift
    assert who_chain(chain, "203.0.113.20", 19143, at_ns=round(at * 1e9)) == []
    assert nearest_chain(chain, "203.0.113.20", 19143, round(at * 1e9)) == [c]
    assert nearest_chain(chain, "203.0.113.20", 1, round(at * 1e9)) == []
    assert main(["who", "203.0.113.20:19143", *caps, "--at", f"{at:.6f}", "--format", "json", "--quiet"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["connections"] == [] and [n["conn"] for n in doc["nearest"]] == [c["conn"]]
    assert main(["who", "203.0.113.20:19143", *caps, "--at", f"{at:.6f}", "--format", "table", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("no connection used 203.0.113.20:19143 at ") and "nearest in time" in out
    assert "2: 203.0.113.20:19143 -> 198.51.100.10:7" in out and "needs that node's captures" not in out
    gap = "10 min 0 s" if shift < 0 else "1 h 0 min"
    assert f" (first capture's clock), {gap} {side} " in out
    # The summary under the nearest is theirs: "1 connection: 1 translated; 1 reached the last capture" read as
    # contradicting "no connection used".
    from natproof.cli import _iso

    assert (f"\nnearest in time (none live at {_iso(round(at * 1e9))[11:-1]}): 1 connection: 1 translated; 1 "
            "reached the last capture\n") in out
    # A port no connection of the chain used at any time: the hint, and no nearest.
    assert main(["who", "203.0.113.20:1", *caps, "--at", f"{at:.6f}", "--format", "table", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "nearest in time" not in out and "needs that node's captures" in out


def test_lab_check_holds_the_chain_against_both_kernels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from natproof.check import chain_captures, check_chain

    assert [p.relative_to(LAB) for p in chain_captures(LAB)] == [
        Path("inside.pcap"), Path("outside.pcap"), Path("gateway/outside.pcap")]
    assert check_chain(LAB).ok
    assert main(["lab", "check", str(LAB), "--format", "json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"double-nat", "double-nat (chain of 3 captures)",
                                                        "double-nat (2 captures + flow log)"}
    # The gateway's truth with one public port edited: the chain no longer agrees, and names that connection.
    copy = tmp_path / "double-nat"
    shutil.copytree(LAB, copy)
    doc = json.loads((copy / "gateway" / "truth.json").read_text())
    edited = next(c for c in doc["connections"] if c["proto"] == "tcp")
    edited["translated"]["sport"] = edited["outside"]["sport"] = 4242
    (copy / "gateway" / "truth.json").write_text(json.dumps(doc))
    rep = check_chain(copy)
    assert not rep.ok and len(rep.wrong) == 1 and rep.wrong[0]["truth"]["outside"]["sport"] == 4242
    assert main(["lab", "check", str(copy)]) == 1
    # The chain of captures and the flow log's unique candidate both disagree with the edited truth.
    assert "1 of 3 scenarios match their truth" in capsys.readouterr().out


def test_the_gateway_from_its_flow_log_is_one_more_point(capsys: pytest.CaptureFixture[str]) -> None:
    """Two captures and the NAT gateway's flow log: each TCP connection's gateway tuple is the unique candidate and
    the gateway truth's; the two same-sized datagrams give two candidates, the truth's among them, and no
    translated tuple (the records cannot tell)."""
    from natproof.flowlogs import parse_nat_gateway, read_flow_logs

    node, gateway = _truth()
    gw = parse_nat_gateway((LAB / "gateway" / "nat-gateway.txt").read_text())
    for form in ("custom.log", "custom.parquet", "default.log.gz"):
        chain = natproof.correlate_chain(CHAIN[:2], flow_log=read_flow_logs(LAB / "flowlogs" / form),
                                         nat_gateways=[gw])
        by_pod = {_key(c["inside"]): c for c in chain.to_dict()["connections"]}
        for t in node:
            c = by_pod[_key(t["original"])]
            want = gateway[_key(t["translated"])]["translated"]
            point = c["hops"][-1]
            assert point["capture"] == "flow log" and point["observation_point"] == 2
            if t["proto"] == "tcp":
                assert c["evidence_level"] == "flow log, unique candidate", (form, point["why"])
                assert c["translated"] == point["tuple"] == want and "src" in c["rewrites"]
            else:
                assert c["evidence_level"] == "flow log, ambiguous: 2 candidates", (form, point["why"])
                assert c["translated"] is None and want in point["candidates"]
    args = ["correlate", *map(str, CHAIN[:2]), "--flow-log", str(LAB / "flowlogs" / "custom.log"), "--nat-gateway",
            str(gw), "--format", "table", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(flow log, ambiguous: 2 candidates)" in out and "from its flow log" in out
    assert main(["correlate", str(CHAIN[0]), "--flow-log", str(LAB / "flowlogs" / "custom.log"), "--quiet"]) == 2
    assert "give INSIDE and OUTSIDE" in capsys.readouterr().err


def _summary_agrees_with_rows(chain: natproof.Chain) -> dict:
    """The chain's summary, checked against its rows: it never counts more than they prove."""
    doc = chain.to_dict()
    rows, summary = doc["connections"], doc["summary"]
    assert summary["reached_last"] == sum(c["translated"] is not None for c in rows)
    assert summary["lost"] == sum(c["lost_at"] is not None for c in rows)
    assert summary["unsettled_at_last"] == [c["conn"] for c in rows if c["lost_at"] is None
                                            and c["translated"] is None and c["hops"][-1]["capture"] == "flow log"]
    stayed = [c for c in rows if c["lost_at"] is None and c["translated"] is None
              and c["conn"] not in summary["unsettled_at_last"]]
    assert all(c["verdict"] == "internal" for c in stayed)
    assert summary["reached_last"] + summary["lost"] + len(summary["unsettled_at_last"]) + len(stayed) == len(rows)
    return summary


def test_the_summary_counts_only_what_reached_the_gateway_and_names_the_unsettled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two captures and the flow log: the datagram whose gateway tuple the records leave at two candidates has no
    translated tuple, and was counted as having reached the last point all the same ("reached_last": 5, "5
    reached the last capture")."""
    from natproof.flowlogs import parse_nat_gateway, read_flow_logs

    gw = parse_nat_gateway((LAB / "gateway" / "nat-gateway.txt").read_text())
    chain = natproof.correlate_chain(CHAIN[:2], flow_log=read_flow_logs(LAB / "flowlogs" / "custom.log"),
                                     nat_gateways=[gw])
    [udp] = [c["conn"] for c in chain.connections if c["proto"] == "udp"]
    assert _summary_agrees_with_rows(chain) == {"connections": 5, "by_verdict": {"translated": 5},
                                                "reached_last": 4, "lost": 0, "unsettled_at_last": [udp]}
    out = tmp_path / "t.txt"
    assert main(["correlate", *map(str, CHAIN[:2]), "--flow-log", str(LAB / "flowlogs" / "custom.log"),
                 "--nat-gateway", str(gw), "--format", "table", "--quiet", "-o", str(out)]) == 0
    text = "".join(f"{line.rstrip()}\n" for line in out.read_text().splitlines())
    assert "5 connections: 5 translated; 4 reached the last point (the NAT gateway, from its flow log)\n" in text
    assert (f"reached the last capture, their tuple at the NAT gateway not settled by its flow log: #{udp} (flow "
            "log, ambiguous: 2 candidates)\n") in text


@pytest.mark.parametrize("captures", [CHAIN, [CHAIN[0], CHAIN[1], CHAIN[3]], CHAIN[1:]],
                         ids=["four", "three", "from-eth0"])
def test_the_summary_agrees_with_the_rows_of_every_chain(captures: list[Path]) -> None:
    summary = _summary_agrees_with_rows(natproof.correlate_chain(captures))
    assert summary["lost"] == 0 and summary["unsettled_at_last"] == []


def test_internal_connections_stop_without_being_lost_and_split_files_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scapy.layers.inet import IP

    internal = LAB.parent / "internal"
    # A third point past eth0: a router NATing the node's address again (192.0.2.99), made from eth0's packets.
    routed = []
    for p in rdpcap(str(internal / "outside.pcap")):
        if IP in p:
            p[IP].src = "192.0.2.99" if p[IP].src == "203.0.113.2" else p[IP].src
            p[IP].dst = "192.0.2.99" if p[IP].dst == "203.0.113.2" else p[IP].dst
            p[IP].ttl -= 1
            del p[IP].chksum
            if p[IP].payload.haslayer("TCP") or p[IP].payload.haslayer("UDP"):
                del p[IP].payload.chksum
            p.time += 0.00002 if p[IP].dst != "192.0.2.99" else -0.00002
        routed.append(p)
    third = tmp_path / "router.pcap"
    wrpcap(str(third), routed)
    chain = natproof.correlate_chain([internal / "inside.pcap", internal / "outside.pcap", third])
    assert sum(c["lost_at"] is None and len(c["hops"]) == 3 for c in chain.connections) == 3
    # With --pods the table names the pod at the first point.
    assert main(["correlate", str(internal / "inside.pcap"), str(internal / "outside.pcap"), str(third), "--pods",
                 str(internal / "pods.json"), "--format", "table", "--quiet"]) == 0
    assert "0: 10.244.0.10:" in (out := capsys.readouterr().out) and "(default/pod1)" in out
    pod_to_pod = [c for c in chain.connections if c["verdict"] == "internal"]
    assert pod_to_pod and all(c["lost_at"] is None and len(c["hops"]) == 1 for c in pod_to_pod)
    # They stayed on the node: not counted as having reached the last capture, as they were.
    assert _summary_agrees_with_rows(chain)["reached_last"] == len(chain.connections) - len(pod_to_pod) == 3
    assert main(["correlate", str(internal / "inside.pcap"), str(internal / "any.pcap"),
                 str(internal / "outside.pcap"), "--quiet"]) == 2
    assert "a capture of several interfaces; a chain takes one interface per file" in capsys.readouterr().err


INTERNAL = LAB.parent / "internal"


@pytest.mark.parametrize("several", ["node.pcapng", "any.pcap"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_file_of_several_interfaces_is_refused_in_every_position(capsys: pytest.CaptureFixture[str], several: str,
                                                                   position: int) -> None:
    """Before any hop runs: as the first file a hop called it a copy of the next ("hold the same packets"), as the
    last "look swapped"; only the middle one got "a chain takes one interface per file"."""
    paths = [str(INTERNAL / "inside.pcap"), str(INTERNAL / "outside.pcap")]
    paths.insert(position, str(INTERNAL / several))
    assert main(["correlate", *paths, "--quiet", "--format", "json"]) == 2
    assert capsys.readouterr().err == (f"natproof: error: {INTERNAL / several}: a capture of several interfaces; a "
                                       "chain takes one interface per file (split it first, or correlate it alone: "
                                       "natproof correlate FILE)\n")
    with pytest.raises(natproof.InputError, match="a chain takes one interface per file"):
        natproof.correlate_chain(paths, correlate=lambda *a, **k: pytest.fail("a hop ran"))


@pytest.mark.parametrize("path", [INTERNAL / "any.pcap", INTERNAL / "node.pcapng", INTERNAL / "inside.pcap",
                                  LAB / "gateway" / "outside.pcap",
                                  LAB.parent / "many-connections" / "inside.pcap.gz"], ids=lambda p: p.name)
def test_framing_alone_tells_a_file_of_several_interfaces_as_decoding_does(path: Path) -> None:
    from natproof.fastdecode import decode_file, interfaces_used, pcap_link_type
    from natproof.points import several_interfaces

    info, packets = decode_file(path)
    assert interfaces_used(path) == set(info.interface_frames)
    assert (len(interfaces_used(path)) > 1) == several_interfaces(info, packets)
    # The header alone (the chain's shortcut): a pcap's link type, each frame's; one interface unless SLL2.
    link = pcap_link_type(path)
    assert link == (info.link_types[0] if info.format.startswith("pcap+") or info.format == "pcap" else None)
    if link is not None and link != 276:
        assert len(set(info.interface_frames)) == 1


@pytest.mark.parametrize("extra", [["--flow-log", str(LAB / "flowlogs" / "custom.log")], ["--clock", "outside"],
                                   ["--peer", "198.51.100.10:7"]])
def test_who_over_a_chain_refuses_options_of_a_pair(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["who", "203.0.113.20:19143", *map(str, CHAIN), "--quiet", *extra]) == 2
    assert "who over a chain of captures takes none of" in capsys.readouterr().err


def test_a_flow_log_past_a_capture_already_past_the_gateway_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway's public side captured as the chain's last point, and its flow log after it: the flow log's point
    would be the same place again, and no record joins it (every row read "3: one of none (no candidate)" and "0
    reached the last point"). Refused in one line naming the capture."""
    from natproof.flowlogs import parse_nat_gateway, read_flow_logs

    gw = parse_nat_gateway((LAB / "gateway" / "nat-gateway.txt").read_text())
    log = LAB / "flowlogs" / "custom.log"
    last = CHAIN[3]
    tail = (f"{last}: already past the NAT gateway (its connections leave from {gw.public}, the gateway's public "
            "address): the {} adds nothing after it; give the chain without it, or without this capture")
    with pytest.raises(natproof.InputError) as exc:
        natproof.correlate_chain([CHAIN[0], CHAIN[1], last], flow_log=read_flow_logs(log), nat_gateways=[gw])
    assert str(exc.value) == tail.format("flow_log")
    assert main(["correlate", str(CHAIN[0]), str(CHAIN[1]), str(last), "--flow-log", str(log), "--nat-gateway",
                 str(gw), "--format", "table"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"natproof: error: {tail.format('--flow-log')}\n")


def test_a_gateway_point_without_a_candidate_says_so(tmp_path: Path) -> None:
    """A connection the flow log holds no record of at the gateway is "no tuple in the flow log", never "one of
    none"."""
    from natproof.flowlogs import NatGateway

    out = tmp_path / "t.txt"
    assert main(["correlate", *map(str, CHAIN[:2]), "--flow-log", str(LAB / "flowlogs" / "custom.log"),
                 "--nat-gateway", str(NatGateway("10.0.1.99", "198.51.100.99")), "--format", "table",
                 "-o", str(out)]) == 0
    text = out.read_text()
    assert "one of none" not in text and "one of " not in text
    assert text.count("2: no tuple in the flow log  (no candidate)") == 5


PAIR_ONLY = ("natproof: error: --inside-if, --outside-if, --conntrack and --side apply to one pair of captures, not a "
             "chain (see 'natproof {} --help')\n")


@pytest.mark.parametrize("extra", [["--inside-if", "eth0"], ["--outside-if", "eth0"], ["--side", "inside"],
                                   ["--conntrack", str(LAB / "conntrack.log")]], ids=lambda e: e[0])
@pytest.mark.parametrize("command", ["correlate", "who"])
def test_a_chain_refuses_the_options_of_one_pair_in_correlate_and_who_alike(
        command: str, extra: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user's trial: who over a chain ran without a word past --inside-if, --outside-if and --side (correlate
    refused them); both now refuse them in the same line, before any hop runs."""
    import importlib

    monkeypatch.setattr(importlib.import_module("natproof.correlate"), "correlate",
                        lambda *a, **k: pytest.fail("a hop ran"))
    query = ["203.0.113.20:19143"] if command == "who" else []
    assert main([command, *query, *map(str, CHAIN), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    if command == "who" and extra[0] == "--conntrack":  # who's own list of what a chain takes none of names it
        assert err.startswith("natproof: error: who over a chain of captures takes none of --flow-log, "
                              "--nat-gateway, --conntrack")
    else:
        assert err == PAIR_ONLY.format(command)


def test_a_flow_log_without_a_gateway_is_refused_before_any_hop_runs(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The default format has no pkt-dstaddr, so no gateway can be inferred: the chain was refused for want of
    --nat-gateway only once every hop had run."""
    import importlib

    from natproof.flowlogs import read_flow_logs

    log = LAB / "flowlogs" / "default.log.gz"
    monkeypatch.setattr(importlib.import_module("natproof.correlate"), "correlate",
                        lambda *a, **k: pytest.fail("a hop ran"))
    for caps in (CHAIN[:2], [CHAIN[0], CHAIN[1], CHAIN[3]]):
        assert main(["correlate", *map(str, caps), "--flow-log", str(log), "--format", "json", "--quiet"]) == 2
        assert capsys.readouterr() == ("", "natproof: error: no NAT gateway given: pass --nat-gateway PRIVATE=PUBLIC "
                                           "(aws ec2 describe-nat-gateways)\n")
    with pytest.raises(natproof.InputError, match="no NAT gateway given"):
        natproof.correlate_chain(CHAIN[:2], flow_log=read_flow_logs(log),
                                 correlate=lambda *a, **k: pytest.fail("a hop ran"))


def test_a_gzip_capture_of_one_link_is_decompressed_only_by_the_hops_that_read_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain's check for files of several interfaces decompressed every gzip capture once more before the hops
    decompressed it again: a pcap's header says it holds one interface unless its frames are SLL2."""
    import gzip
    from collections import Counter

    from natproof import fastdecode

    plain = [CHAIN[0], CHAIN[1], CHAIN[3]]
    paths = []
    for i, p in enumerate(plain):
        (gz := tmp_path / f"{i}-{p.name}.gz").write_bytes(gzip.compress(p.read_bytes()))
        paths.append(str(gz))
    seen: Counter[str] = Counter()
    real = fastdecode.gunzip

    def counting(src, dst, name, *args):  # type: ignore[no-untyped-def]
        seen[name] += 1
        return real(src, dst, name, *args)

    monkeypatch.setattr(fastdecode, "gunzip", counting)
    assert main(["correlate", *paths, "--format", "json", "--quiet"]) == 0
    assert seen == {paths[0]: 1, paths[1]: 2, paths[2]: 1}  # hop 0 reads the first two, hop 1 the last two
    node, _ = _truth()  # node1's connections, each through both NATs to the gateway's public side
    assert json.loads(capsys.readouterr().out)["summary"] == {
        "connections": len(node), "by_verdict": {"translated": len(node)}, "reached_last": len(node), "lost": 0,
        "unsettled_at_last": []}
    # A gzip file of several interfaces is still refused, SLL2 pcap (tcpdump -i any) or pcapng.
    for several in ("any.pcap", "node.pcapng"):
        (gz := tmp_path / f"{several}.gz").write_bytes(gzip.compress((INTERNAL / several).read_bytes()))
        assert main(["correlate", str(INTERNAL / "inside.pcap"), str(gz), str(INTERNAL / "outside.pcap"),
                     "--quiet"]) == 2
        assert f"{gz}: a capture of several interfaces; a chain takes one interface per file" in \
            capsys.readouterr().err
