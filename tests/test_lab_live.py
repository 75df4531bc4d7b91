"""Every lab scenario, live: `natproof lab run` with the real kernel, then `natproof lab check` on its output; and
what natproof must say about the scenarios whose point is more than their truth.json (skipped noise, findings,
flags)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_kernel import kernel_records_agree, one_capture_agrees, tampered_record_contradicts

import natproof
from natproof.check import capture_pair, compare, load_truth, single_captures
from natproof.cli import main
from natproof.correlate import correlate
from natproof.diagnose import Finding, diagnose
from natproof.lab import MULTI_HOP, leftover_namespaces, list_scenarios, run_scenario
from natproof.lab.scenarios import LAN_NOISE_EXPECTED, NODE_FILES, NODE_IP6, get_scenario, lan_noise_counts
from natproof.result import Result, connection_dicts

pytestmark = pytest.mark.lab
if not hasattr(os, "geteuid") or os.geteuid() != 0:
    pytest.skip("the lab needs root (network namespaces, iptables, tcpdump)", allow_module_level=True)
_missing = [tool for tool in ("ip", "iptables", "tcpdump", "conntrack") if shutil.which(tool) is None]
if _missing:
    pytest.skip(f"the lab needs {', '.join(_missing)} on PATH", allow_module_level=True)

_RUNS: dict[str, Path] = {}
"""Output folder of each scenario run in this session: the tests below reuse the run of the parametrized one."""


@pytest.mark.parametrize("name", [name for name, _ in list_scenarios()])
def test_scenario_runs_checks_and_tears_down(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / name
    assert main(["lab", "run", name, "--out", str(out)]) == 0, capsys.readouterr().err
    names = sorted(p.name.removesuffix(".gz") for p in out.iterdir())
    # Single-node scenarios write kubectl-style dumps of their pods (and Services) beside the captures, and the
    # kernel's conntrack record in each format (conntrack/).
    single = name not in MULTI_HOP
    dumps = ["pods.json", *(["services.json"] if get_scenario(name).services else [])] if single else []
    # Scenarios with several NATs add their further hops' folders (double-nat: gateway/, flowlogs/).
    extra = {"double-nat": ["flowlogs", "gateway"]}.get(name, [])
    # One capture of many interfaces cannot miss part of one interface: a design whose outside capture ran for part
    # of the run (partial-overlap) has no single-file form.
    single_file = (out / "any.pcap").exists() or (out / "any.pcap.gz").exists()
    assert single_file == (name not in MULTI_HOP and get_scenario(name).outside_phases is None)
    assert names == sorted(["conntrack.log", "inside.pcap", "outside.pcap", "scenario.txt", "truth.json", *dumps,
                            *extra, *(["conntrack"] if single else []), *(NODE_FILES if single_file else ())])
    # Namespaces are named np<pid in hex><random>-...: none of this process's may outlive the run.
    assert leftover_namespaces(f"np{os.getpid():x}") == []
    _RUNS[name] = out
    capsys.readouterr()
    code = main(["lab", "check", str(out)])
    report = capsys.readouterr().out
    assert code == 0, report
    # A scenario of several NATs is also checked as its chain of captures (double-nat: pod, node eth0, gateway).
    # and as its first hop's two captures with the gateway's flow log.
    checked = 3 if name in MULTI_HOP else 1
    assert report.rstrip().endswith(f"{checked} of {checked} scenarios match their truth")
    # The same connections against the kernel's record (conntrack.log; double-nat: its node hop's), and the pod
    # side's capture alone with the record against the truth's mappings.
    code = main(["lab", "check", "--conntrack", str(out)])
    report = capsys.readouterr().out
    assert code == 0, report
    assert report.rstrip().endswith(f"{checked} of {checked} scenarios match their truth and the kernel's record")
    if single:  # double-nat: its own live test checks both hops and the flow logs
        # The kernel's record in each format beside the captures: every connection it kept is confirmed, and one
        # translated port edited in the conntrack -L listing contradicts.
        records = sorted(p.name for p in (out / "conntrack").iterdir())
        assert {"events.log", "index.json", "list.txt", "list-extended.txt", "list.xml"} <= set(records)
        kernel_records_agree(out)
        tampered_record_contradicts(out, tmp_path)
        # One capture and the record: the pod side alone gives the same mappings as both captures.
        one_capture_agrees(out)
    if not single_file:
        return
    # The same run as one capture of many interfaces: tcpdump -i any (SLL2) and one pcapng of every interface.
    code = main(["lab", "check", "--single-file", str(out)])
    report = capsys.readouterr().out
    assert code == 0, report
    assert report.rstrip().endswith("2 of 2 scenarios match their truth")
    code = main(["lab", "check", "--single-file", "--conntrack", str(out)])
    report = capsys.readouterr().out
    assert code == 0, report
    assert report.rstrip().endswith("2 of 2 scenarios match their truth and the kernel's record")
    # Where the truth says the capture of every interface proves more, its reading: replies over a link the
    # outside capture misses (reply_other_path in two files, translated in one); a Service's leg DNATed to an
    # endpoint on the node, on that endpoint's veth (its translated tuple).
    def t(d: dict | None) -> tuple | None:
        return None if d is None else (d["src"], d["sport"], d["dst"], d["dport"])

    truth = {(c["proto"], t(c["original"])): c for c in json.loads((out / "truth.json").read_text())["connections"]
             if c.get("original")}
    pair = []
    for proto, original, translated, initiator, verdict in mappings(natproof.correlate(*capture_pair(out))):
        c = truth.get((proto, original), {})
        pair.append((proto, original, t(c["single_file_translated"]) if "single_file_translated" in c else translated,
                     initiator, c.get("single_file_verdict", verdict)))
    pair.sort()
    for one in single_captures(out):
        result = natproof.correlate(one, interfaces=out / "links.txt")
        assert mappings(result) == pair, one.name
        assert result.inside.chosen == result.outside.chosen == "chosen"
    # One capture of many interfaces and the record: the record is joined to the split capture's connections as to
    # both captures' (not taken for the side not captured).
    record = out / "conntrack.log"
    try:
        natproof.read_conntrack(record)
    except natproof.InputError:
        return  # the kernel tracked nothing at all (forwarding-off): no record to hold a connection against
    # A leg DNATed to a local endpoint is proven by that capture's packets, where two files had the record's word.
    kernel_pair = sorted((*k[:-1], "packets" if "single_file_translated" in truth.get(k[:2], {}) else k[-1])
                         for k in kernel_states(natproof.correlate(*capture_pair(out), conntrack=record)))
    result = natproof.correlate(single_captures(out)[0], interfaces=out / "links.txt", conntrack=record)
    assert result.conntrack is not None and result.inside.chosen == "chosen"
    assert kernel_states(result) == kernel_pair


def mappings(result: natproof.Result) -> list[tuple]:
    """Each connection's protocol, original and translated tuples, initiator and verdict, in a stable order."""
    def t(d: dict | None) -> tuple | None:
        return None if d is None else (d["src"], d["sport"], d["dst"], d["dport"])

    return sorted((c["proto"], t(c["original"]), t(c["translated"]), c["initiator"], c["verdict"])
                  for c in result.to_dict()["connections"])


def kernel_states(result: natproof.Result) -> list[tuple]:
    """Each connection's original and translated tuples with its kernel state (confirmed, contradicts, absent, and
    why) and evidence level, in a stable order."""
    def t(d: dict | None) -> tuple | None:
        return None if d is None else (d["src"], d["sport"], d["dst"], d["dport"])

    return sorted((c["proto"], t(c["original"]), t(c["translated"]), str(c["kernel"]), str(c["kernel_reason"]),
                   str(c["evidence_level"])) for c in result.to_dict()["connections"])


def _run(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if name not in _RUNS:
        out = tmp_path_factory.mktemp(name)
        run_scenario(name, out)
        _RUNS[name] = out
    return _RUNS[name]


def _correlate(folder: Path) -> tuple[Result, list[dict[str, Any]], list[Finding]]:
    """natproof as a user runs it on these captures: no --pod-cidr, everything inferred."""
    result = correlate(*capture_pair(folder))
    rows = connection_dicts(result.connections)
    for row, conn in zip(rows, result.connections["conn"], strict=True):
        row["conn"] = conn  # the index findings cite
    return result, rows, diagnose(result)


def test_lan_noise_is_skipped_by_reason_and_judged_by_nobody(tmp_path_factory: pytest.TempPathFactory) -> None:
    out = _run("lan-noise", tmp_path_factory)
    result, rows, findings = _correlate(out)
    inside, outside = capture_pair(out)
    seen = lan_noise_counts(inside)  # what the capture holds, told by the scenario's own endpoints
    skipped = result.inside.skipped
    for reason in ("multicast", "link_local", "dhcp"):
        assert skipped.get(reason) == seen[reason] == LAN_NOISE_EXPECTED[reason], (reason, skipped, seen)
    # The datagrams to the pod network's directed broadcast 10.244.0.255 are broadcast too, not a connection.
    directed = [r for r in rows if r["inside"]["dst"] == "10.244.0.255"]
    assert skipped.get("broadcast") == seen["broadcast"] + seen["directed_broadcast"]
    assert directed == []
    # The node's datagrams to its own addresses went over lo, which neither capture sees (the scenario's check
    # asserts that): lan-noise cannot show the `loopback` skip reason at work (tests/test_connections.py does).
    assert seen["loopback"] == 0 and not skipped.get("loopback")
    assert not any(result.outside.skipped.get(r) for r in ("multicast", "broadcast", "link_local", "dhcp"))
    assert not lan_noise_counts(outside)
    egress = [r for r in rows if r["inside"]["dst"] == "198.51.100.10"]
    assert len(egress) == 3 and all(r["verdict"] == "translated" for r in egress)
    assert all(r["outside"]["src"] == "203.0.113.2" for r in egress)
    assert not [r for r in rows if r["verdict"] == "not_forwarded"]
    assert not [r for r in rows if r not in egress and r not in directed]
    assert [f.kind for f in findings] == ["healthy"]


def test_routed_path_is_untranslated_and_named_not_a_failure(tmp_path_factory: pytest.TempPathFactory) -> None:
    out = _run("routed", tmp_path_factory)
    _, rows, findings = _correlate(out)
    assert len(rows) == 5 and all(r["verdict"] == "untranslated" and r["outside"] == r["inside"] for r in rows)
    answered = {r["conn"] for r in rows if r["inside"]["src"] == "10.244.0.10"}
    unanswered = {r["conn"] for r in rows if r["inside"]["src"] == "10.244.1.10"}
    assert len(answered) == 4 and len(unanswered) == 1
    routed = [f for f in findings if f.kind == "routed_path"]
    assert len(routed) == 1 and routed[0].severity == "info" and set(routed[0].connections) == answered
    # pod2's subnet is not routed back: its untranslated SYNs got no answer, an error about that connection only.
    errors = [f for f in findings if f.severity == "error"]
    assert len(errors) == 1 and set(errors[0].connections) == unanswered, [f.kind for f in findings]
    # Named as a missing way back, not a missing MASQUERADE: the same path answers 10.244.0.0/24 unchanged.
    assert errors[0].kind == "no_route_back"
    assert errors[0].data == {"untranslated_subnets": ["10.244.1.0/24"], "routed_subnets": ["10.244.0.0/24"]}
    assert not [f for f in findings if f.severity == "warning"]


def test_partial_overlap_sets_aside_what_the_outside_capture_missed(tmp_path_factory: pytest.TempPathFactory) -> None:
    out = _run("partial-overlap", tmp_path_factory)
    result, rows, findings = _correlate(out)
    truth = load_truth(out / "truth.json")
    assert compare(result, truth).ok
    off = {r["conn"] for r in rows if "other_capture_off" in r["flags"]}
    both = [r for r in rows if r["conn"] not in off]
    assert len(off) == 4 == sum(1 for c in truth["connections"] if c["other_capture_off"])
    assert {r["verdict"] for r in rows if r["conn"] in off} == {"not_captured"}  # no drop claimed
    assert len(both) == 2 and all(r["verdict"] == "translated" and r["outside"]["src"] == "203.0.113.2" for r in both)
    overlap = [f for f in findings if f.kind == "partial_overlap"]
    assert len(overlap) == 1 and set(overlap[0].connections) == off
    # No failure is claimed for what the outside capture could not see, and nothing else cites those connections.
    assert not [f for f in findings if f.severity == "error"]
    assert not [f.kind for f in findings if f.kind != "partial_overlap" and off & set(f.connections)]


def test_nat66_is_translated_to_the_node_address(tmp_path_factory: pytest.TempPathFactory) -> None:
    out = _run("nat66", tmp_path_factory)
    result, rows, findings = _correlate(out)
    assert compare(result, load_truth(out / "truth.json")).ok
    assert len(rows) == 4 and {r["proto"] for r in rows} == {"tcp", "udp"}
    for r in rows:
        assert r["verdict"] == "translated" and r["rewrites"] == ["src"], r
        assert r["outside"]["src"] == NODE_IP6 and r["inside"]["src"].startswith("2001:db8:244::")
    assert [f.kind for f in findings] == ["healthy"]
    # The pods' global addresses never appear on eth0 (NAT66 hid them): their /64 is the pod network.
    assert result.pod_networks == ("2001:db8:244::/64",)


@pytest.mark.parametrize("name", ["clusterip", "nodeport", "hairpin"])
def test_scenario_dump_names_its_pods_and_services(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    from natproof.names import Names

    out = _run(name, tmp_path_factory)
    scenario = get_scenario(name)
    doc = correlate(*capture_pair(out), names=Names.load(out / "pods.json", out / "services.json")).to_dict()
    pods = {p.ip: p.name for p in scenario.topology.pods}
    svc_names = {(s.cluster_ip, s.port): s.name.partition(":")[0] for s in scenario.services}
    svc_names |= {("203.0.113.2", s.node_port): s.name.partition(":")[0] for s in scenario.services if s.node_port}
    assert doc["connections"]
    for c in doc["connections"]:
        end = c["inside"]["dst"] if c["initiator"] == "outside" else c["inside"]["src"]
        assert c["inside"]["pod"] == f"default/{pods[end]}", c
        if c["service"]:
            s = c["service"]
            assert s["name"] == svc_names[(s["address"], s["port"])], c
            backend = (s["backend"] or {}).get("address")
            assert (s["backend"] or {}).get("pod") == (f"default/{pods[backend]}" if backend in pods else None), c
def test_double_nat_flow_logs_against_both_kernels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The double-NAT run, live: both hops check against their kernels; the gateway's flow logs, made from its own
    captures, give the gateway kernel's mapping (unique) or a candidate set holding it (the designed ambiguity); who
    walks from a public tuple to the pod."""
    import json

    from natproof.flowlogs import (
        EVIDENCE_UNIQUE,
        evidence_ambiguous,
        join_nat_gateway,
        node_tuples,
        parse_nat_gateway,
        read_flow_logs,
    )

    out = tmp_path / "double-nat"
    assert main(["lab", "run", "double-nat", "--out", str(out)]) == 0, capsys.readouterr().err
    assert leftover_namespaces(f"np{os.getpid():x}") == []
    capsys.readouterr()
    assert main(["lab", "check", str(out), str(out / "gateway")]) == 0, capsys.readouterr().out
    capsys.readouterr()
    gw = parse_nat_gateway((out / "gateway" / "nat-gateway.txt").read_text())
    truth = json.loads((out / "gateway" / "truth.json").read_text())["connections"]
    tuples = node_tuples([(c["proto"], c["inside"]["src"], c["inside"]["sport"], c["inside"]["dst"],
                           c["inside"]["dport"]) for c in truth])
    fmt = (out / "flowlogs" / "cloudwatch-format.txt").read_text()
    for form in ("default.log.gz", "custom.log", "custom.parquet", "cloudwatch.log"):
        log = read_flow_logs(out / "flowlogs" / form, fields=fmt if form == "cloudwatch.log" else None)
        for c, j in zip(truth, join_nat_gateway(tuples, log, [gw]).to_dicts(), strict=True):
            ports = sorted(g["sport"] for g in j["gateway_tuples"])
            assert c["outside"]["sport"] in ports, (form, c, j["why"])
            want = EVIDENCE_UNIQUE if c["proto"] == "tcp" else evidence_ambiguous(2)
            assert j["evidence"] == want, (form, c, j["why"])
    node = json.loads((out / "truth.json").read_text())["connections"]
    first = node[0]
    (hop,) = [c for c in truth if (c["inside"]["src"], c["inside"]["sport"]) == (first["outside"]["src"],
                                                                             first["outside"]["sport"])]
    code = main(["who", f"{hop['outside']['src']}:{hop['outside']['sport']}", str(out / "inside.pcap"),
                 str(out / "outside.pcap"), "--flow-log", str(out / "flowlogs" / "custom.log"), "--nat-gateway",
                 str(gw), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [p["pod"] for p in doc["paths"]] == [{"address": first["inside"]["src"], "port": first["inside"]["sport"]}]
