"""Tests of natproof/verdicts.py: the contract's verdict strings and the rules that pick them."""

from __future__ import annotations

import pytest

from natproof.verdicts import Verdict, classify


def test_contract_strings() -> None:
    assert [v.value for v in Verdict] == [
        "translated", "no_reply", "reply_dropped", "untranslated", "not_forwarded", "internal"]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"internal": True, "egress_matched": 3}, Verdict.INTERNAL),
        ({"egress_matched": 0}, Verdict.NOT_FORWARDED),
        ({"egress_matched": 2, "source_rewritten": False, "reply_outside": 2, "reply_inside": 2},
         Verdict.UNTRANSLATED),
        ({"egress_matched": 2, "source_rewritten": True}, Verdict.NO_REPLY),
        ({"egress_matched": 2, "source_rewritten": True, "reply_outside": 3}, Verdict.REPLY_DROPPED),
        ({"egress_matched": 2, "source_rewritten": True, "reply_outside": 3, "reply_inside": 1},
         Verdict.TRANSLATED),
    ],
)
def test_classify(kw: dict, expected: Verdict) -> None:
    args = {"internal": False, "egress_matched": 0, "source_rewritten": True, "reply_outside": 0,
            "reply_inside": 0} | kw
    assert classify(**args) is expected
