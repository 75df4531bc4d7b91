"""Every lab scenario, live: `natproof lab run` with the real kernel, then `natproof lab check` on its output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_kernel import kernel_records_agree, one_capture_agrees, tampered_record_contradicts

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
    assert names == ["conntrack", "conntrack.log", "inside.pcap", "outside.pcap", "scenario.txt", "truth.json"]
    # Namespaces are named np<pid in hex><random>-...: none of this process's may outlive the run.
    assert leftover_namespaces(f"np{os.getpid():x}") == []
    capsys.readouterr()
    code = main(["lab", "check", str(out)])
    report = capsys.readouterr().out
    assert code == 0, report
    assert report.rstrip().endswith("1 of 1 scenarios match their truth")
    # The kernel's record in each format beside the captures: every connection it kept is confirmed, and one
    # translated port edited in the conntrack -L listing contradicts.
    records = sorted(p.name for p in (out / "conntrack").iterdir())
    assert {"events.log", "index.json", "list.txt", "list-extended.txt", "list.xml"} <= set(records)
    kernel_records_agree(out)
    tampered_record_contradicts(out, tmp_path)
    # One capture and the record: the pod side alone gives the same mappings as both captures.
    one_capture_agrees(out)
