"""Per-connection verdicts: how packet fates choose them (the strings of the contract: natproof.contracts.Verdict)."""

from __future__ import annotations

import polars as pl

from natproof.contracts import Verdict


def verdict_expr() -> pl.Expr:
    """The verdict (String) of each connection row, from its evidence columns (counts, UInt32):

    ``internal`` (Boolean: no crossing expected), ``cross_init`` (the initiator's packets that crossed, leaked
    ones included), ``rewritten`` (Boolean: original and translated tuples differ), ``cross_reply`` (replies
    that crossed back), ``post_reply`` (replies seen on the far side, node-made ones excluded), ``pre_reply``
    (replies seen on the initiator's side, node-made ones excluded), ``acked`` (the initiator's TCP packets that
    acknowledge a reply seen only on the far side: it got that reply, so it came by a path out of the captures'
    sight rather than being dropped), ``other_reply`` (replies of a connection started outside that the same file
    of several interfaces holds leaving toward the initiator, reverse-translated, by an interface left out of both
    observation points: natproof.points.left_out_flows; they took another path, no drop). The order of the rules
    is the contract:
    the first that holds wins. Replies that crossed back prove the mapping even when none of the initiator's
    packets crossed the far capture (they took another link: a helper's variant of cases/asymmetric-reply).
    """
    nothing_crossed = (pl.col("cross_init") == 0) & (pl.col("cross_reply") == 0)
    return (pl.when(pl.col("internal")).then(pl.lit(Verdict.INTERNAL.value))
            .when(nothing_crossed & (pl.col("pre_reply") > 0)).then(pl.lit(Verdict.NOT_CAPTURED.value))
            .when(nothing_crossed).then(pl.lit(Verdict.NOT_FORWARDED.value))
            .when(~pl.col("rewritten")).then(pl.lit(Verdict.UNTRANSLATED.value))
            .when(pl.col("cross_reply") > 0).then(pl.lit(Verdict.TRANSLATED.value))
            .when((pl.col("post_reply") > 0) & (pl.col("acked") == 0) & (pl.col("other_reply") == 0))
            .then(pl.lit(Verdict.REPLY_DROPPED.value))
            .when((pl.col("pre_reply") > 0) | (pl.col("acked") > 0) | (pl.col("other_reply") > 0))
            .then(pl.lit(Verdict.REPLY_OTHER_PATH.value))
            .otherwise(pl.lit(Verdict.NO_REPLY.value)))


def classify(*, internal: bool = False, cross_init: int = 0, rewritten: bool = True, cross_reply: int = 0,
             post_reply: int = 0, pre_reply: int = 0, acked: int = 0, other_reply: int = 0) -> Verdict:
    """The verdict of one connection from its evidence (see :func:`verdict_expr`, which it evaluates)."""
    row = pl.DataFrame({"internal": [internal], "cross_init": [cross_init], "rewritten": [rewritten],
                        "cross_reply": [cross_reply], "post_reply": [post_reply], "pre_reply": [pre_reply],
                        "acked": [acked], "other_reply": [other_reply]})
    return Verdict(row.select(verdict_expr()).item())


V1_VERDICTS = {Verdict.REPLY_OTHER_PATH.value: Verdict.TRANSLATED.value,
               Verdict.NOT_CAPTURED.value: Verdict.NOT_FORWARDED.value}
"""natproof.correlate/1's name for the verdicts /2 added."""
