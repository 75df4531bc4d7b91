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
