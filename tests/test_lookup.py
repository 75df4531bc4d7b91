"""Tests of natproof/lookup.py and `natproof who` on the real many-connections capture."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from natproof.check import capture_pair, load_truth
from natproof.cli import main
from natproof.correlate import correlate
from natproof.errors import InputError
from natproof.lookup import parse_time, who

CASE = Path(__file__).resolve().parent.parent / "captures" / "many-connections"


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return correlate(*capture_pair(CASE))


def test_who_names_the_pod_behind_every_sampled_outside_tuple(result) -> None:  # type: ignore[no-untyped-def]
    truth = load_truth(CASE / "truth.json")["connections"]
    conns = {(c["inside"]["src"], c["inside"]["sport"]): c for c in result.to_dict()["connections"]}
    for t in random.Random(7).sample(truth, 25):
        o = t["outside"]
        mid = (conns[(t["inside"]["src"], t["inside"]["sport"])]["first_seen"]
               + conns[(t["inside"]["src"], t["inside"]["sport"])]["last_seen"]) / 2
        ans = who(result, f"{o['src']}:{o['sport']}", at=f"{mid:.6f}", window_s=0)
        assert ans.side == "outside"
        assert [(c["inside"]["src"], c["inside"]["sport"]) for c in ans.connections] == [
            (t["inside"]["src"], t["inside"]["sport"])]
        # And the other way: where did that pod's source port go?
        back = who(result, f"{t['inside']['src']}:{t['inside']['sport']}")
        assert back.side == "inside" and back.connections[0]["outside"] == t["outside"]


def test_time_outside_every_connection_gives_the_nearest(result) -> None:  # type: ignore[no-untyped-def]
    c = result.to_dict()["connections"][0]
    ans = who(result, f"{c['outside']['src']}:{c['outside']['sport']}", at=str(c["last_seen"] + 50), window_s=1)
    assert ans.connections == () and [n["conn"] for n in ans.nearest] == [0]


def test_parse_time_forms() -> None:
    day = 1_795_500_362_369_528_800  # 2026-11-24T06:06:02Z
    assert parse_time("1795500362.5") == 1_795_500_362_500_000_000
    assert parse_time("2026-11-24T06:06:02Z") == 1_795_500_362 * 10**9
    assert parse_time("2026-11-24T08:06:02.25+02:00") == 1_795_500_362_250_000_000
    assert parse_time("06:06:02", day) == 1_795_500_362 * 10**9
    with pytest.raises(InputError, match="not a time"):
        parse_time("yesterday")


def test_cli_who_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    truth = load_truth(CASE / "truth.json")["connections"][5]
    o = truth["outside"]
    code = main(["who", f"{o['src']}:{o['sport']}", *map(str, capture_pair(CASE)),
                 "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["connections"][0]["inside"] == truth["inside"]
    code = main(["who", "203.0.113.2:1", *map(str, capture_pair(CASE)), "--format", "table"])
    assert code == 1 and capsys.readouterr().out == "no connection used 203.0.113.2:1\n"
    code = main(["who", "not-an-endpoint", *map(str, capture_pair(CASE))])
    assert code == 2 and "is not ADDR:PORT" in capsys.readouterr().err
