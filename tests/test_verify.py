"""Tests of natproof/verify.py and `natproof verify`: expectations, TOML files and exit statuses 0/1/2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pcapbytes import snaplen_cut

from natproof.cli import main
from natproof.correlate import correlate
from natproof.errors import InputError
from natproof.verify import Expectations, ExpectedConnection, ExpectedDnat, load_expectations, parse_dnat, verify

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
    # Found by a helper: bytes that are not UTF-8 were an internal error; a negative min_connections passed; a bad
    # pod_cidr was blamed on --pod-cidr.
    f.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(InputError, match=r"x.toml: not a TOML expectations file: not UTF-8 text$"):
        load_expectations(f)
    f.write_bytes('\ufeffall = "translatd"\n'.encode())  # a byte-order mark first (Notepad's UTF-8): read past
    with pytest.raises(InputError, match="unknown verdict 'translatd'"):
        load_expectations(f)
    f.write_text("min_connections = -3\n")
    with pytest.raises(InputError, match=r"x.toml: min_connections must be 1 or more$"):
        load_expectations(f)
    f.write_text('pod_cidr = "bad"\nall = "translated"\n')
    with pytest.raises(InputError, match=r"x.toml: pod_cidr 'bad' is not a CIDR"):
        load_expectations(f)


def test_min_connections_of_0_is_said_to_each_in_its_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file's key to both; the command line is told its --min-connections refuses 0 alike, a library caller
    (who has no such option) is not."""
    f = tmp_path / "e.toml"
    f.write_text("min_connections = 0\n")
    with pytest.raises(InputError) as exc:
        load_expectations(f)
    assert str(exc.value) == f"{f}: min_connections must be 1 or more"
    assert exc.value.for_command_line() == f"{f}: min_connections must be 1 or more (as --min-connections)"
    code, out, err = run(capsys, "verify", *pair("port-collision"), "--expectations", str(f))
    assert (code, out, err) == (2, "", f"natproof: error: {f}: min_connections must be 1 or more (as "
                                       "--min-connections)\n")


def test_an_expectations_file_that_asks_for_nothing_says_so(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.toml"
    f.write_text("no_leak = false\n")
    code, _, err = run(capsys, "verify", *case_pair(CASES / "clusterip-dnat"), "--expectations", str(f))
    assert code == 2 and f"nothing to verify: {f} expects nothing" in err and len(err.splitlines()) == 1


ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"


def case_pair(case: Path) -> list[str]:
    return [str(case / "inside.pcap"), str(case / "outside.pcap")]


def truth_services(scenario: str) -> dict[tuple[str, int], set[tuple[str, int]]]:
    """Each Service address:port in a lab truth.json and the backends the kernel chose for it."""
    out: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for c in json.loads((CAPTURES / scenario / "truth.json").read_text())["connections"]:
        if c["service"]:
            b = c["service"]["backend"]
            out.setdefault((c["service"]["address"], c["service"]["port"]), set()).add((b["address"], b["port"]))
    return out


@pytest.mark.parametrize("scenario", ["clusterip", "nodeport", "hairpin"])
def test_expect_dnat_holds_for_every_service_in_lab_truth(scenario: str) -> None:
    services = truth_services(scenario)
    assert services
    result = correlate(*pair(scenario))
    dnat = tuple(ExpectedDnat(a, p, tuple(sorted(backends))) for (a, p), backends in services.items())
    checks = verify(result, Expectations(dnat=dnat, no_leak=True))
    assert [c.passed for c in checks] == [True] * (len(dnat) + 1), checks
    truth = json.loads((CAPTURES / scenario / "truth.json").read_text())["connections"]
    counts = {s: sum(1 for c in truth if c["service"] and (c["service"]["address"], c["service"]["port"]) == s)
              for s in services}
    for check, (service, backends) in zip(checks[:-1], services.items(), strict=True):
        assert len(backends) == 1  # one backend per Service in these labs
        assert check.actual == {f"{b[0]}:{b[1]}": counts[service] for b in backends}
    # A backend the kernel did not choose fails, naming each connection and its frames.
    service = next(iter(services))
    wrong = verify(result, Expectations(dnat=(ExpectedDnat(*service, (("192.0.2.1", 1),)),)))[0]
    assert not wrong.passed and len(wrong.evidence) == counts[service]
    assert all("not an allowed backend (inside frame " in line for line in wrong.evidence)


def test_expect_dnat_on_clusterip_case_against_kernel_record() -> None:
    result = correlate(*case_pair(CASES / "clusterip-dnat"))
    # kernel-record.txt: 10.96.0.1:443 -> 198.51.100.10:6443 (3 TCP), 10.96.0.10:53 -> 198.51.100.53:53 (2 UDP);
    # 198.51.100.10:80 is reached directly (MASQUERADE only).
    record = (CASES / "clusterip-dnat" / "kernel-record.txt").read_text()
    assert "--to-destination 198.51.100.10:6443" in record and "--to-destination 198.51.100.53:53" in record
    checks = verify(result, Expectations(dnat=(
        parse_dnat("10.96.0.1:443=198.51.100.10:6443"), parse_dnat("10.96.0.10:53"),
        parse_dnat("10.96.0.10:53=198.51.100.54:53"), parse_dnat("198.51.100.10:80"), parse_dnat("10.96.0.99:80"))))
    assert [(c.name, c.passed, c.actual) for c in checks] == [
        ("dnat 10.96.0.1:443 -> 198.51.100.10:6443", True, {"198.51.100.10:6443": 3}),
        ("dnat 10.96.0.10:53", True, {"198.51.100.53:53": 2}),
        ("dnat 10.96.0.10:53 -> 198.51.100.54:53", False, {"198.51.100.53:53": 2}),
        ("dnat 198.51.100.10:80", False, {"198.51.100.10:80": 1}),
        ("dnat 10.96.0.99:80", False, "absent"),
    ]
    assert checks[2].evidence == (
        "#3 udp 10.244.0.10:34545 -> 10.96.0.10:53: DNATed to 198.51.100.53:53, not an allowed backend "
        "(inside frame 42, outside frame 37)",
        "#4 udp 10.244.0.10:54658 -> 10.96.0.10:53: DNATed to 198.51.100.53:53, not an allowed backend "
        "(inside frame 45, outside frame 40)")
    assert checks[3].evidence == ("#5 tcp 10.244.0.10:48284 -> 198.51.100.10:80: reached 198.51.100.10:80 "
                                  "unchanged: not DNATed (inside frame 47, outside frame 42)",)
    assert checks[4].evidence == ("no connection to 10.96.0.99:80 in the captures",)


def test_expect_no_leak_names_the_leaked_frames() -> None:
    # The case's right answer: one connection's entry expired; its 7 FINs left eth0 carrying 10.244.0.10.
    case = CASES / "idle-expiry-fin-leak"
    result = correlate(*case_pair(case))
    (check,) = verify(result, Expectations(no_leak=True))
    assert not check.passed and check.actual == 7
    (line,) = check.evidence
    assert line.startswith("#1 tcp 10.244.0.10:42934 -> 198.51.100.10:80: 7 packet(s) crossed untranslated as "
                           "10.244.0.10:42934 -> 198.51.100.10:80 (inside frames ")
    # Each outside frame named really left with the pod's address (read back from the capture, not natproof).
    from natproof.capture import read_capture

    outside = {r.frame_no: r for r in read_capture(case / "outside.pcap")[1]}
    frames = [int(f) for f in line.split("outside frames ")[1].rstrip(")").split(", ")]
    assert len(frames) == 7
    for f in frames:
        ip = outside[f].data[14:]  # EN10MB
        assert ip[12:16] == bytes([10, 244, 0, 10])
    assert verify(correlate(*case_pair(CASES / "nodeport-inbound")), Expectations(no_leak=True))[0].passed


def test_cli_expect_dnat_and_no_leak_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", *case_pair(CASES / "nodeport-inbound"), "--expect-dnat",
                       "203.0.113.2:30080=10.244.0.10:8080", "--expect-dnat", "203.0.113.2:30081",
                       "--expect-no-leak", "--format", "table")
    assert code == 0 and out.splitlines() == [
        "PASS  dnat 203.0.113.2:30080 -> 10.244.0.10:8080: expected ['10.244.0.10:8080'], got {'10.244.0.10:8080': 1}",
        "PASS  dnat 203.0.113.2:30081: expected DNAT, got {'10.244.0.10:8080': 1}",
        "PASS  no_leak: expected 0, got 0",
        "3 of 3 expectations hold"]
    code, out, _ = run(capsys, "verify", *case_pair(CASES / "idle-expiry-fin-leak"), "--expect-no-leak",
                       "--expect-all", "translated", "--format", "json")
    doc = json.loads(out)
    assert code == 1 and [(e["name"], e["passed"]) for e in doc["expectations"]] == [
        ("all translated", True), ("no_leak", False)]


@pytest.mark.parametrize(("value", "message"), [
    ("10.96.0.1", "'10.96.0.1' is not ADDR:PORT (no port; e.g. 203.0.113.5:38472 or [2001:db8::1]:443)"),
    ("10.96.0.1:99999", "'10.96.0.1:99999' is not ADDR:PORT (port 99999 is out of range 0-65535; "
                        "e.g. 203.0.113.5:38472 or [2001:db8::1]:443)"),
    ("10.96.0.1:443=backend:8080", "'backend:8080' is not ADDR:PORT ('backend' is not an IP address; "
                                   "e.g. 203.0.113.5:38472 or [2001:db8::1]:443)"),
    ("10.96.0.1:443=", "'10.96.0.1:443=' has an empty backend (VIP:PORT or VIP:PORT=BACKEND:PORT,BACKEND:PORT...)"),
])
def test_cli_bad_expect_dnat_is_one_line_exit_2(value: str, message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Reported before the captures are read: the missing file does not matter.
    code, out, err = run(capsys, "verify", str(tmp_path / "none.pcap"), str(tmp_path / "none.pcap"),
                         "--expect-dnat", value)
    assert (code, out, err) == (2, "", f"natproof: error: --expect-dnat: {message}\n")


def test_toml_dnat_and_no_leak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "svc.toml"
    f.write_text('no_leak = true\n[[dnat]]\nservice = "10.96.0.1:443"\nbackends = ["198.51.100.10:6443"]\n'
                 '[[dnat]]\nservice = "10.96.0.10:53"\n')
    exp, _ = load_expectations(f)
    assert exp.no_leak and exp.dnat == (ExpectedDnat("10.96.0.1", 443, (("198.51.100.10", 6443),)),
                                        ExpectedDnat("10.96.0.10", 53))
    code, out, _ = run(capsys, "verify", *case_pair(CASES / "clusterip-dnat"), "--expectations", str(f),
                       "--format", "json")
    doc = json.loads(out)
    assert code == 0 and [e["name"] for e in doc["expectations"]] == [
        "dnat 10.96.0.1:443 -> 198.51.100.10:6443", "dnat 10.96.0.10:53", "no_leak"]
    code, _, _ = run(capsys, "verify", *case_pair(CASES / "idle-expiry-fin-leak"), "--expectations", str(f))
    assert code == 1
    f.write_text('[[dnat]]\nservice = "10.96.0.1:99999"\n')
    code, _, err = run(capsys, "verify", *case_pair(CASES / "clusterip-dnat"), "--expectations", str(f))
    assert (code, err) == (2, f"natproof: error: {f}: [[dnat]] 1: '10.96.0.1:99999' is not ADDR:PORT (port 99999 "
                              "is out of range 0-65535; e.g. 203.0.113.5:38472 or [2001:db8::1]:443)\n")
    f.write_text('[[dnat]]\nbackends = ["10.0.0.1:1"]\n')
    code, _, err = run(capsys, "verify", *case_pair(CASES / "clusterip-dnat"), "--expectations", str(f))
    assert (code, err) == (2, f'natproof: error: {f}: [[dnat]] 1 needs service = "VIP:PORT" and optionally '
                              'backends = ["ADDR:PORT", ...]\n')
    f.write_text('no_leak = "yes"\n')
    code, _, err = run(capsys, "verify", *case_pair(CASES / "clusterip-dnat"), "--expectations", str(f))
    assert (code, err) == (2, f"natproof: error: {f}: no_leak must be true or false\n")


VARIANTS = ROOT / "tests" / "variants"


@pytest.mark.parametrize("scenario", ["no-masquerade", "wrong-subnet"])
def test_no_leak_fails_where_the_pods_address_left_untranslated(scenario: str) -> None:
    """A new user's trial: no_leak passed on these, where 10.244.0.10 left the node untranslated. The truth is the
    lab's (truth.json): which connections the kernel left unrewritten, each read back from the outside capture."""
    truth = json.loads((CAPTURES / scenario / "truth.json").read_text())
    want = sorted((c["inside"]["src"], c["inside"]["sport"]) for c in truth["connections"]
                  if c["verdict"] == "untranslated")
    assert want  # the lab's truth holds the leak
    result = correlate(*pair(scenario))
    (check,) = verify(result, Expectations(no_leak=True))
    assert not check.passed
    named = sorted((line.split()[2].rsplit(":", 1)[0], int(line.split()[2].rsplit(":", 1)[1].rstrip(":")))
                   for line in check.evidence)
    assert named == want
    from natproof.capture import read_capture

    outside = {r.frame_no: r for r in read_capture(CAPTURES / scenario / "outside.pcap")[1]}
    for line in check.evidence:
        assert ": untranslated: " in line and "carrying the private address 10.244.0.10" in line
        frame = int(line.split("outside frame ")[1].rstrip(")"))
        assert outside[frame].data[14 + 12:14 + 16] == bytes([10, 244, 0, 10])  # EN10MB, IPv4 source
    assert check.actual == sum(r["fate_crossed"] for r in result.connections.iter_rows(named=True)
                               if r["verdict"] == "untranslated")


@pytest.mark.parametrize("where", [VARIANTS / "public-pods", VARIANTS / "lan-v6-routed", CAPTURES / "eks-vpc-cni"])
def test_no_leak_holds_where_addresses_are_kept_by_design(where: Path) -> None:
    """Global pod addresses (routed, or hidden by the NAT) and a private destination the NAT leaves out (an SNAT
    exclusion) are no leak, as diagnose reads them (routed_path, snat_exclusion: info)."""
    result = correlate(*case_pair(where))
    (check,) = verify(result, Expectations(no_leak=True))
    assert check.passed and check.of == result.connections.height > 0
    from natproof.diagnose import diagnose

    assert all(f.severity == "info" for f in diagnose(result))


def test_no_leak_in_a_file_and_as_an_option_fails_on_no_masquerade(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "e.toml"
    f.write_text("no_leak = true\n")
    for args in (["--expectations", str(f)], ["--expect-no-leak"]):
        code, out, _ = run(capsys, "verify", *pair("no-masquerade"), *args, "--format", "json", "-q")
        doc = json.loads(out)
        assert code == 1 and [(e["name"], e["passed"], len(e["evidence"])) for e in doc["expectations"]] == [
            ("no_leak", False, 2)]


@pytest.mark.parametrize("scenario", ["no-masquerade", "forwarding-off"])
def test_port_preserved_with_no_source_rewritten_says_it_cannot_be_judged(
        scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: "expected 1.0, got 0.0" where no connection's source was rewritten (the lab's truth: no
    connection left translated)."""
    truth = json.loads((CAPTURES / scenario / "truth.json").read_text())["connections"]
    assert not [c for c in truth if c.get("outside") and c["outside"]["src"] != c["inside"]["src"]]
    code, out, _ = run(capsys, "verify", *pair(scenario), "--expect-port-preserved", "--format", "json", "-q")
    (check,) = json.loads(out)["expectations"]
    assert code == 1 and check["passed"] is False and check["actual"] is None
    assert check["evidence"] == ["no connection had its source rewritten, so port preservation cannot be judged"]


def test_no_connection_to_judge_fails_every_expectation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: with every inside frame cut short (0 connections), --expect-no untranslated and
    --expect-no-leak passed: "2 of 2 expectations hold", exit 0."""
    inside = tmp_path / "cut.pcap"  # tcpdump -s 30: every frame cut inside its IP header
    inside.write_bytes(snaplen_cut((CAPTURES / "basic" / "inside.pcap").read_bytes(), 30))
    result = correlate(str(inside), pair("basic")[1])
    assert result.connections.height == 0 and result.inside.skipped.get("malformed", 0) > 0
    code, out, _ = run(capsys, "verify", str(inside), pair("basic")[1], "--expect-no", "untranslated",
                       "--expect-no-leak", "--format", "table", "-q")
    lines = out.splitlines()
    assert code == 1 and lines[-1] == "0 of 2 expectations hold"
    assert [line.split(":")[0] for line in lines if line.startswith(("PASS", "FAIL"))] == [
        "FAIL  no untranslated", "FAIL  no_leak"]
    assert sum(line.strip().startswith("no connection to judge") for line in lines) == 2
    checks = verify(result, Expectations(snat_ip="203.0.113.2", port_preserved=True, min_connections=1,
                                         connections=(ExpectedConnection("10.244.0.10:37784"),)))
    assert [(c.passed, c.held, c.evidence[0].split(":")[0]) for c in checks] == [
        (False, 0, "no connection to judge")] * 4


def test_with_no_connection_nothing_judged_is_counted_as_none(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: an ARP-only capture each side printed "FAIL  no_leak: expected 0, got 0": a failed line
    whose numbers agree. With nothing judged, actual is null, as port_preserved's is; min_connections keeps its 0."""
    from pcapbytes import ether, pcap

    arp = ether(b"\x00" * 28, ethertype=0x0806)
    for name, t in (("in.pcap", 1_700_000_000 * 10**9), ("out.pcap", 1_700_000_000 * 10**9 + 500_000_000)):
        (tmp_path / name).write_bytes(pcap([(t, arp)]))
    code, out, _ = run(capsys, "verify", str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"), "--expect-no-leak",
                       "--expect-no", "untranslated", "--expect-all", "translated", "--expect-snat-ip", "203.0.113.2",
                       "--expect-port-preserved", "--min-connections", "1", "--expect-dnat", "10.96.0.10:53",
                       "--format", "json", "-q")
    got = {c["name"]: (c["passed"], c["actual"]) for c in json.loads(out)["expectations"]}
    assert code == 1 and got == {"min_connections": (False, 0), "all translated": (False, None),
                                 "no untranslated": (False, None), "snat_ip": (False, None),
                                 "port_preserved": (False, None), "dnat 10.96.0.10:53": (False, "absent"),
                                 "no_leak": (False, None)}
    code, out, _ = run(capsys, "verify", str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"), "--expect-no-leak",
                       "--format", "table", "-q")
    assert "FAIL  no_leak: expected 0, got None" in out.splitlines()


def test_a_snat_ip_that_is_no_address_is_named_where_it_was_given(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: "SNAT address 'banana' is not an IP address" named neither --expect-snat-ip nor the file
    (--expect-dnat's errors name their option). Reported before any capture is read: the files need not exist."""
    missing = [str(tmp_path / "none.pcap")] * 2
    code, out, err = run(capsys, "verify", *missing, "--expect-snat-ip", "banana")
    assert (code, out, err) == (2, "", "natproof: error: --expect-snat-ip: 'banana' is not an IP address "
                                       "(e.g. 203.0.113.2)\n")
    f = tmp_path / "e.toml"
    f.write_text('snat_ip = "banana"\n')
    code, out, err = run(capsys, "verify", *missing, "--expectations", str(f))
    assert (code, out, err) == (2, "", f"natproof: error: {f}: snat_ip 'banana' is not an IP address "
                                       "(e.g. 203.0.113.2)\n")
    with pytest.raises(InputError, match=r"^snat_ip: 'banana' is not an IP address"):  # a library caller's word
        Expectations(snat_ip="banana")


def test_snat_ip_judges_what_left_the_node_not_nodeport_clients(capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: on captures/nodeport (one pod's egress SNATed to 203.0.113.2, and four NodePort clients,
    two masqueraded to the bridge 10.244.0.1 and two kept by externalTrafficPolicy: Local) --expect-snat-ip
    203.0.113.2 failed with "got ['198.51.100.20', '203.0.113.2']": the clients' own addresses, as they arrived,
    were counted as addresses the node's traffic left with. Only connections started inside are judged."""
    import dataclasses

    import polars as pl

    result = correlate(*pair("nodeport"))
    assert sorted(result.connections["initiator"].to_list()) == ["inside"] + ["outside"] * 4
    [check] = verify(result, Expectations(snat_ip="203.0.113.2"))
    assert (check.passed, check.actual, check.held, check.of, check.evidence) == (True, ["203.0.113.2"], 1, 1, ())
    [check] = verify(result, Expectations(snat_ip="203.0.113.9"))  # the egress alone is the evidence against it
    assert (check.passed, check.actual, check.held, check.of) == (False, ["203.0.113.2"], 0, 1)
    assert check.evidence == ("#4 tcp 10.244.0.10:59688 -> 198.51.100.10:80 as 203.0.113.2:59688: translated",)
    # Inbound connections alone: nothing left, and the evidence says why none was judged.
    inbound = dataclasses.replace(result, connections=result.connections.filter(pl.col("initiator") == "outside"))
    [check] = verify(inbound, Expectations(snat_ip="203.0.113.2"))
    assert (check.passed, check.actual, check.of) == (False, [], 0)
    assert check.evidence == ("no connection to judge: none started inside was seen leaving the node (4 started "
                              "outside, not judged: their source on the outside is their client's)",)
    code, out, _ = run(capsys, "verify", *pair("nodeport"), "--expect-snat-ip", "203.0.113.2", "--format", "table")
    assert (code, out.splitlines()) == (0, ["PASS  snat_ip: expected 203.0.113.2, got ['203.0.113.2']",
                                            "1 of 1 expectations hold"])
