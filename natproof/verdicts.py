"""Per-connection verdicts: the strings of the natproof.correlate/1 contract and how they are chosen."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What the NAT did to one connection, as the two captures prove it."""

    TRANSLATED = "translated"
    """Egress seen on both sides with the source rewritten, and a reply seen on both sides."""
    NO_REPLY = "no_reply"
    """Egress translated and seen outside; no reply on the outside either."""
    REPLY_DROPPED = "reply_dropped"
    """A reply reached the outside, addressed to the translated tuple, but never the inside."""
    UNTRANSLATED = "untranslated"
    """Egress left on the outside still carrying the inside source address."""
    NOT_FORWARDED = "not_forwarded"
    """Seen inside, never outside."""
    INTERNAL = "internal"
    """Destination inside the pod network: not expected outside."""


def classify(
    *,
    internal: bool,
    egress_matched: int,
    source_rewritten: bool,
    reply_outside: int,
    reply_inside: int,
) -> Verdict:
    """Choose the verdict of one connection from its evidence.

    ``egress_matched`` counts inside egress packets found on the outside; ``reply_outside`` counts reply
    packets of the matched outside connection; ``reply_inside`` counts reply packets seen inside.
    """
    if internal:
        return Verdict.INTERNAL
    if egress_matched == 0:
        return Verdict.NOT_FORWARDED
    if not source_rewritten:
        return Verdict.UNTRANSLATED
    if reply_outside == 0:
        # A reply seen only inside cannot have come through this NAT; it still says the far end answered.
        return Verdict.TRANSLATED if reply_inside else Verdict.NO_REPLY
    if reply_inside == 0:
        return Verdict.REPLY_DROPPED
    return Verdict.TRANSLATED
