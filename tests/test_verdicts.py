"""Tests of natproof/verdicts.py: the contract's verdict strings and the rules that pick them from packet fates."""

from __future__ import annotations

import pytest

from natproof.verdicts import V1_VERDICTS, Verdict, classify


def test_contract_strings() -> None:
    assert [v.value for v in Verdict] == [
        "translated", "no_reply", "reply_dropped", "untranslated", "not_forwarded", "internal", "reply_other_path",
        "not_captured"]
    # natproof.correlate/1 readers see every /2 verdict under a name they know.
    assert set(V1_VERDICTS.values()) <= {v.value for v in Verdict} - set(V1_VERDICTS)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"internal": True, "cross_init": 3}, Verdict.INTERNAL),
        ({"cross_init": 0}, Verdict.NOT_FORWARDED),
        # The far end answered, so it crossed where the other capture did not look (node-made RSTs and ICMP errors
        # are never counted as replies: they stay not_forwarded).
        ({"cross_init": 0, "pre_reply": 1}, Verdict.NOT_CAPTURED),
        ({"cross_init": 2, "rewritten": False, "cross_reply": 2}, Verdict.UNTRANSLATED),
        ({"cross_init": 2}, Verdict.NO_REPLY),
        ({"cross_init": 2, "post_reply": 3}, Verdict.REPLY_DROPPED),
        ({"cross_init": 2, "post_reply": 3, "cross_reply": 1, "pre_reply": 1}, Verdict.TRANSLATED),
        # cases/asymmetric-reply: the pod got its replies, none crossed the outside capture.
        ({"cross_init": 2, "pre_reply": 5}, Verdict.REPLY_OTHER_PATH),
        ({"cross_init": 2, "post_reply": 1, "pre_reply": 5}, Verdict.REPLY_DROPPED),
        # tests/variants/asym-nodeport: a NodePort's replies seen only on the pod side, yet the client acknowledged
        # them: they left by an uplink the outside capture misses, not dropped.
        ({"cross_init": 5, "post_reply": 5, "acked": 5}, Verdict.REPLY_OTHER_PATH),
        # The same, a datagram's (no ack tells) from one -i any file given --outside-if eth0: the file holds its
        # replies leaving by eth1, left out of the outside point. Another path, no drop.
        ({"cross_init": 2, "post_reply": 2, "other_reply": 2}, Verdict.REPLY_OTHER_PATH),
        # The initiator's packets left by another link, its replies crossed back: the replies prove the mapping.
        ({"cross_init": 0, "cross_reply": 5, "post_reply": 5, "pre_reply": 5}, Verdict.TRANSLATED),
        ({"cross_init": 0, "cross_reply": 2, "rewritten": False, "post_reply": 2, "pre_reply": 2},
         Verdict.UNTRANSLATED),
    ],
)
def test_classify(kw: dict, expected: Verdict) -> None:
    assert classify(**kw) is expected
