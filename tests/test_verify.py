"""Tests of natproof/verify.py and `natproof verify`: expectations, TOML files and exit statuses 0/1/2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from natproof.cli import main
from natproof.correlate import correlate
from natproof.errors import InputError
from natproof.verify import Expectations, ExpectedConnection, load_expectations, verify

CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def pair(name: str) -> list[str]:
    return [str(CAPTURES / name / "inside.pcap"), str(CAPTURES / name / "outside.pcap")]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_library_checks_on_port_collision() -> None:
    result = correlate(*pair("port-collision"))
    checks = {c.name: c for c in verify(result, Expectations(
        snat_ip="203.0.113.2", all_verdict="translated", port_preserved=True, min_connections=2,
        connections=(ExpectedConnection("10.244.0.11:40000", outside="203.0.113.2:53585", verdict="translated"),
                     ExpectedConnection("10.244.0.99:1"))))}
    assert checks["snat_ip"].passed and checks["all translated"].passed and checks["min_connections"].passed
    # One pod's port was rewritten on the clash: the port is not preserved for every connection.
    assert not checks["port_preserved"].passed and checks["port_preserved"].actual == 0.5
    assert checks["port_preserved"].evidence == (
        "#1 tcp 10.244.0.11:40000 -> 198.51.100.10:80 as 203.0.113.2:53585: translated",)
    assert checks["connection 10.244.0.11:40000"].passed
    assert not checks["connection 10.244.0.99:1"].passed and checks["connection 10.244.0.99:1"].actual == "absent"


def test_exit_0_when_everything_holds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", *pair("basic"), "--expect-all", "translated", "--expect-snat-ip",
                       "203.0.113.2", "--expect-port-preserved", "--min-connections", "3", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["passed"] is True and len(doc["expectations"]) == 4


def test_exit_1_when_one_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", *pair("no-masquerade"), "--expect-all", "translated", "--format", "table")
    assert code == 1
    assert out.splitlines()[0] == "FAIL  all translated: expected translated, got {'untranslated': 2}"
    assert out.rstrip().endswith("0 of 1 expectations hold")


def test_exit_2_on_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "verify", *pair("basic"))
    assert code == 2 and "nothing to verify" in err
    code, _, err = run(capsys, "verify", str(tmp_path / "nope.pcap"), pair("basic")[1], "--expect-all", "translated")
    assert code == 2 and err.endswith("nope.pcap: no such file\n")


def test_toml_expectations_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "lab1.toml"
    f.write_text('pod_cidr = "10.244.0.0/16"\nsnat_ip = "203.0.113.2"\nno_verdicts = ["untranslated"]\n'
                 '[[connection]]\ninside = "10.244.0.10:40000"\noutside = "203.0.113.2:40000"\n'
                 'verdict = "translated"\n')
    code, out, _ = run(capsys, "verify", *pair("port-collision"), "--expectations", str(f), "--format", "json")
    doc = json.loads(out)
    assert code == 0, doc
    assert [e["name"] for e in doc["expectations"]] == ["no untranslated", "snat_ip", "connection 10.244.0.10:40000"]


def test_bad_expectations_files(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text('all = "translatd"\n')
    with pytest.raises(InputError, match="unknown verdict 'translatd'"):
        load_expectations(f)
    f.write_text('snat = "1.2.3.4"\n')
    with pytest.raises(InputError, match="unknown key"):
        load_expectations(f)
    f.write_text("this is = not toml =\n")
    with pytest.raises(InputError, match="not a TOML expectations file"):
        load_expectations(f)
