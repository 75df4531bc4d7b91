"""Every lab scenario, live: `natproof lab run` with the real kernel, then `natproof lab check` on its output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from natproof.cli import main
from natproof.lab import leftover_namespaces, list_scenarios

pytestmark = pytest.mark.lab
if not hasattr(os, "geteuid") or os.geteuid() != 0:
    pytest.skip("the lab needs root (network namespaces, iptables, tcpdump)", allow_module_level=True)
_missing = [tool for tool in ("ip", "iptables", "tcpdump", "conntrack") if shutil.which(tool) is None]
if _missing:
    pytest.skip(f"the lab needs {', '.join(_missing)} on PATH", allow_module_level=True)


@pytest.mark.parametrize("name", [name for name, _ in list_scenarios()])
def test_scenario_runs_checks_and_tears_down(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / name
    assert main(["lab", "run", name, "--out", str(out)]) == 0, capsys.readouterr().err
    names = sorted(p.name.removesuffix(".gz") for p in out.iterdir())
    # Scenarios with several NATs add their further hops' folders (double-nat: gateway/, flowlogs/).
    extra = {"double-nat": ["flowlogs", "gateway"]}.get(name, [])
    assert names == sorted(["conntrack.log", "inside.pcap", "outside.pcap", "scenario.txt", "truth.json", *extra])
    # Namespaces are named np<pid in hex><random>-...: none of this process's may outlive the run.
    assert leftover_namespaces(f"np{os.getpid():x}") == []
    capsys.readouterr()
    code = main(["lab", "check", str(out)])
    report = capsys.readouterr().out
    assert code == 0, report
    assert report.rstrip().endswith("1 of 1 scenarios match their truth")


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
