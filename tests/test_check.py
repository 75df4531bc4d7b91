"""Tests of natproof/check.py: scoring a correlation against a truth document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from natproof.check import compare, load_truth
from natproof.errors import InputError


def conn(sport: int, out_sport: int | None, verdict: str = "translated") -> dict:
    inside = {"src": "10.244.0.10", "sport": sport, "dst": "198.51.100.10", "dport": 80}
    outside = None if out_sport is None else {"src": "203.0.113.2", "sport": out_sport, "dst": "198.51.100.10",
                                              "dport": 80}
    return {"proto": "tcp", "inside": inside, "outside": outside, "verdict": verdict}


def test_right_wrong_missing_unexpected() -> None:
    truth = {"connections": [conn(1, 1), conn(2, 9), conn(3, None, "not_forwarded"), conn(4, 4)]}
    got = {"connections": [conn(1, 1), conn(2, 2), conn(3, None, "no_reply"), conn(5, 5)]}
    rep = compare(got, truth)
    assert (rep.expected, rep.found, rep.mapping_right, rep.verdict_right) == (4, 3, 2, 2)
    assert [w["truth"]["inside"]["sport"] for w in rep.wrong] == [2, 3]
    assert [m["inside"]["sport"] for m in rep.missing] == [4]
    assert [u["inside"]["sport"] for u in rep.unexpected] == [5]
    assert not rep.ok
    assert rep.summary() == ("4 expected, 3 found, 2 mappings right, 2 verdicts right, 2 wrong, 1 missing, "
                             "1 unexpected")


def test_reused_tuple_pairs_in_order() -> None:
    truth = {"connections": [conn(1, 1), conn(1, 7)]}
    assert compare({"connections": [conn(1, 1), conn(1, 7)]}, truth).ok
    assert not compare({"connections": [conn(1, 7), conn(1, 1)]}, truth).ok


def test_other_capture_off_is_compared_when_the_truth_gives_it() -> None:
    # The truth gives the flag as a field; natproof lists it among a connection's flags (natproof lab partial-overlap).
    off = conn(1, None, "not_forwarded") | {"other_capture_off": True}
    on = conn(2, 2) | {"other_capture_off": False}
    truth = {"connections": [off, on]}
    flagged = conn(1, None, "not_forwarded") | {"flags": ["other_capture_off"]}
    assert compare({"connections": [flagged, conn(2, 2) | {"flags": []}]}, truth).ok
    rep = compare({"connections": [conn(1, None, "not_forwarded") | {"flags": []}, conn(2, 2) | {"flags": []}]}, truth)
    assert [w["fields"] for w in rep.wrong] == [["other_capture_off"]]
    rep = compare({"connections": [flagged, conn(2, 2) | {"flags": ["other_capture_off"]}]}, truth)
    assert [w["fields"] for w in rep.wrong] == [["other_capture_off"]]
    assert compare({"connections": [conn(1, None, "not_forwarded"), conn(2, 2)]}, {"connections": [
        conn(1, None, "not_forwarded"), conn(2, 2)]}).ok  # not given: not compared


def test_load_truth_refuses_other_documents(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"schema": "natproof.correlate/1"}))
    with pytest.raises(InputError, match="not a natproof.truth/1 document"):
        load_truth(p)
    with pytest.raises(InputError, match="no such file"):
        load_truth(tmp_path / "absent.json")


# -- natproof lab check --conntrack on the bundled captures -----------------------------------------------------

CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def _lab_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from natproof.cli import main

    code = main(["lab", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_conntrack_check_passes_on_a_bundled_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _lab_check(capsys, "--conntrack", str(CAPTURES / "basic"))
    assert code == 0 and err == "", out
    (row,) = [line for line in out.splitlines() if line.startswith("│ basic")]
    assert "3 confirmed" in row and "3 of 3" in row and row.rstrip("│ ").endswith("ok")
    assert out.rstrip().endswith("1 of 1 scenarios match their truth and the kernel's record")


def test_conntrack_check_json_counts_states_reasons_and_the_one_capture_form(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _lab_check(capsys, "--conntrack", "--format", "json", str(CAPTURES / "forward-drop"),
                              str(CAPTURES / "forwarding-off"))
    doc = json.loads(out)
    assert code == 0
    drop = doc["forward-drop"]["kernel"]
    assert drop["ok"] and drop["record"] == str(CAPTURES / "forward-drop" / "conntrack.log")
    assert drop["states"] == {"confirmed": 2, "absent": 1}
    assert drop["absent_reasons"] == {"dropped_before_confirmation": 1}
    assert drop["summary"] == "2 confirmed, 1 absent (dropped_before_confirmation)"
    assert drop["one_capture"] | {"capture": None} == {"ok": True, "capture": None, "expected": 2, "right": 2,
                                                       "missing": [], "wrong": [], "note": None}
    # Forwarding off: the kernel tracked nothing, and natproof's reader and the lab's parser agree on that.
    off = doc["forwarding-off"]["kernel"]
    assert off["ok"] and off["note"] == "no entry (the kernel tracked nothing)" and off["states"] == {}
    # Without --conntrack the report is what it was.
    code, out, _ = _lab_check(capsys, "--format", "json", str(CAPTURES / "forward-drop"))
    assert "kernel" not in json.loads(out)["forward-drop"]


def test_conntrack_check_fails_on_a_tampered_record_and_names_the_connection(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re
    import shutil

    case = tmp_path / "basic"
    shutil.copytree(CAPTURES / "basic", case)
    record = case / "conntrack.log"
    # The kernel's translated port of 10.244.0.10:37800 made 4242 on every line of its entry (the reply tuple's
    # dport is the translated source port).
    lines = [re.sub(r"(src=198\.51\.100\.10 dst=203\.0\.113\.2 sport=80) dport=37800", r"\1 dport=4242", line)
             for line in record.read_text().splitlines()]
    record.write_text("\n".join(lines) + "\n")
    code, out, _ = _lab_check(capsys, "--conntrack", str(case))
    assert code == 1
    assert ("basic: kernel: #1 tcp 10.244.0.10:37800 -> 198.51.100.10:80 as 203.0.113.2:37800 translated: "
            "contradicts: the kernel's entry expects replies 198.51.100.10:80 -> 203.0.113.2:4242, the captures "
            "show the mapping 203.0.113.2:37800 -> 198.51.100.10:80 (conntrack.log line 4)") in out.splitlines()
    # The pod side alone with the record takes the kernel's word: not the truth's mapping.
    assert ("basic: one capture: missing: tcp 10.244.0.10:37800 -> 198.51.100.10:80 => 203.0.113.2:37800 -> "
            "198.51.100.10:80") in out.splitlines()
    assert out.rstrip().endswith("0 of 1 scenarios match their truth and the kernel's record")
    # The truth alone still matches: only --conntrack fails.
    assert _lab_check(capsys, str(case))[0] == 0
    code, out, _ = _lab_check(capsys, "--conntrack", "--format", "json", str(case))
    kernel = json.loads(out)["basic"]["kernel"]
    assert code == 1 and not kernel["ok"] and kernel["states"] == {"confirmed": 2, "contradicts": 1}
    assert [(d["connection"]["conn"], d["connection"]["inside"]["sport"], d["kernel"], d["kernel_line"])
            for d in kernel["disagree"]] == [(1, 37800, "contradicts", 4)]


def test_conntrack_check_without_a_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    case = tmp_path / "udp"
    shutil.copytree(CAPTURES / "udp", case)
    (case / "conntrack.log").unlink()
    code, _, err = _lab_check(capsys, "--conntrack", str(case))
    assert (code, err) == (2, f"natproof: error: {case}: no conntrack.log in it (natproof lab run writes the "
                              "kernel's record there)\n")
    code, out, err = _lab_check(capsys, "--conntrack", str(case), str(CAPTURES / "basic"))
    assert code == 0
    assert err == "natproof: warning: no conntrack.log in udp: checked against truth.json only\n"
    assert "no record" in next(line for line in out.splitlines() if line.startswith("│ udp"))
    assert out.rstrip().endswith("2 of 2 scenarios match their truth and the kernel's record (1 without a record: "
                                 "their truth only)")


def test_conntrack_check_of_one_capture_of_many_interfaces(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _lab_check(capsys, "--single-file", "--conntrack", str(CAPTURES / "internal"))
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("│ internal")]
    assert len(rows) == 2 and all("6 confirmed" in row for row in rows)
    assert "one capture" not in out  # the pod side's capture alone is the two-file form's
    assert out.rstrip().endswith("2 of 2 scenarios match their truth and the kernel's record")


def test_kernel_check_allows_what_the_listener_says_it_lost(tmp_path: Path) -> None:
    import natproof
    from natproof.check import allowed_absent, kernel_check, listener_drops

    d = CAPTURES / "basic"
    result = natproof.correlate(d / "inside.pcap", d / "outside.pcap")
    # Every line of the middle connection's entry gone: the event log covers its time, so natproof calls it
    # not_recorded, which a lab record allows only where its listener counted socket drops.
    lines = [line for line in (d / "conntrack.log").read_text().splitlines() if "sport=37800 " not in line]
    record = tmp_path / "conntrack.log"
    record.write_text("\n".join(lines) + "\n")
    assert listener_drops(record) == 0 and allowed_absent(record) == {"dropped_before_confirmation"}
    rep = kernel_check(result, record)
    assert not rep.ok and rep.summary() == "2 confirmed, 1 absent (not_recorded)"
    assert [(x["connection"]["inside"]["sport"], x["kernel_reason"]) for x in rep.disagree] == [
        (37800, "not_recorded")]
    record.write_text("\n".join(line.replace("netlink socket drops: 0", "netlink socket drops: 3")
                                for line in lines) + "\n")
    assert listener_drops(record) == 6 and "not_recorded" in allowed_absent(record)
    assert kernel_check(result, record).ok
    # As a listing, the kernel may have let the entry go before the snapshot.
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(line for line in lines if line.startswith("ipv4")) + "\n")
    rep = kernel_check(result, listing)
    assert rep.ok and rep.absent_reasons == {"snapshot_after_expiry": 1}


def test_check_case_from_a_script() -> None:
    from natproof.check import check_case

    rep = check_case(CAPTURES / "port-exhaustion", conntrack=True)
    assert rep.ok and rep.kernel is not None
    assert rep.kernel.summary() == "7 confirmed, 6 absent (dropped_before_confirmation)"
    assert rep.kernel.one_capture is not None and rep.kernel.one_capture.summary() == "7 of 7"
    assert check_case(CAPTURES / "port-exhaustion").kernel is None


def test_check_case_reads_the_folders_services_dump() -> None:
    # tests/variants/nodeport-unseen: 30091 is in the NodePort range but no Service lists it (its INPUT DROP
    # stands for externalTrafficPolicy=Local without a local endpoint). With the folder's services.json, as a user
    # with the dump gets it, it is not labelled NodePort, as the kernel's truth says; the one connection left is
    # the one DNATed to a pod whose veth the inside capture does not see (not_captured: the truth has its inside).
    from natproof.check import check_case

    rep = check_case(Path(__file__).resolve().parent / "variants" / "nodeport-unseen")
    assert rep.wrong == []
    assert [(m["outside"]["dport"], m["verdict"]) for m in rep.missing] == [(30082, "translated")]
    assert [(u["outside"]["dport"], u["verdict"]) for u in rep.unexpected] == [(30082, "not_captured")]


def test_a_flow_from_outside_mapped_anew_matches_the_kernels_truth() -> None:
    # tests/variants/udp-idle-nodeport: one client flow to a UDP NodePort, its entry expired while it idled and the
    # pod saw it under a second masqueraded port. The truth counts it once (its last entry's tuple inside), and
    # so does natproof now that a connection is anchored on its initiator's leg (it once made two, one unexpected).
    from natproof.check import check_case

    rep = check_case(Path(__file__).resolve().parent / "variants" / "udp-idle-nodeport")
    assert rep.ok and (rep.expected, rep.found, rep.mapping_right, rep.verdict_right) == (4, 4, 4, 4)
    assert rep.unexpected == [] and rep.missing == [] and rep.wrong == []


def test_a_flow_from_outside_mapped_anew_is_one_connection_from_the_pod_side_and_the_record() -> None:
    # The same folder as `natproof lab check --conntrack` holds it: the pod side alone with the kernel's record
    # once made a connection of each of the flow's two entries, and the first (36985) was not in the truth.
    from natproof.check import check_case

    rep = check_case(Path(__file__).resolve().parent / "variants" / "udp-idle-nodeport", conntrack=True)
    assert rep.kernel is not None and rep.kernel.summary() == "4 confirmed" and rep.kernel.disagree == []
    one = rep.kernel.one_capture
    assert one is not None and one.ok and one.summary() == "4 of 4" and one.wrong == [] and one.missing == []
    assert rep.ok
