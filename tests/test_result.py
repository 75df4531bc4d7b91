"""Tests of natproof/result.py: the summary figures a Result gives, against the lab's truth (truth.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import natproof

CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def _truth_ratio(scenario: str) -> float | None:
    """The share of the kernel's source-rewritten connections that kept their port, from the lab's truth alone."""
    conns = json.loads((CAPTURES / scenario / "truth.json").read_text())["connections"]
    snat = [c for c in conns if c.get("outside") and c["outside"]["src"] != c["inside"]["src"]]
    return round(sum(c["outside"]["sport"] == c["inside"]["sport"] for c in snat) / len(snat), 6) if snat else None


@pytest.mark.parametrize("scenario", ["no-masquerade", "forwarding-off", "port-collision"])
def test_port_preserved_ratio_is_none_when_no_source_was_rewritten(scenario: str) -> None:
    """A new user's trial: 0.0 beside "no source rewritten" was a false figure; there is no share to give."""
    want = _truth_ratio(scenario)
    assert (want is None) == (scenario != "port-collision")
    result = natproof.correlate(CAPTURES / scenario / "inside.pcap", CAPTURES / scenario / "outside.pcap")
    assert result.port_preserved_ratio() == want
    assert result.port_preserved_ratio("inside") == want
    assert result.summary()["port_preserved_ratio"] == want
    assert json.loads(result.to_json())["summary"]["port_preserved_ratio"] == want
    # The /1 document, for scripts written against 0.1, keeps what 0.1 gave: 0.0.
    assert result.to_dict("natproof.correlate/1")["summary"]["port_preserved_ratio"] == (want or 0.0)


def test_port_preserved_ratio_refuses_an_initiator_that_is_no_side() -> None:
    result = natproof.correlate(CAPTURES / "basic" / "inside.pcap", CAPTURES / "basic" / "outside.pcap")
    with pytest.raises(ValueError, match="initiator must be 'inside', 'outside' or None, not 'sideways'"):
        result.port_preserved_ratio("sideways")
    with pytest.raises(ValueError, match="side must be 'inside' or 'outside', not 'middle'"):
        result.packets("middle")
    assert result.port_preserved_ratio("outside") is None  # basic: every connection started inside
