"""The names of natproof's public output contracts: the JSON document versions, the output formats and the
verdicts.

Free of natproof's other modules and of polars, so that the command line can offer them (``--schema``,
``--format``, ``--verdict``) without loading the libraries (natproof.verdicts says how verdicts are chosen).
"""

from enum import StrEnum

SCHEMA = "natproof.correlate/2"
SCHEMA_V1 = "natproof.correlate/1"
SCHEMAS = {"2": SCHEMA, "1": SCHEMA_V1}
"""``--schema`` values and the documents they name. /2 added connections started on either side, DNAT, legs,
packet fates and Services, and the verdict reply_other_path (which /1 called translated)."""

def epoch_seconds(ns: int) -> float:
    """A time in ns since the epoch as the contracts write it: float seconds, the whole seconds plus the fraction,
    rounded once (within half a float64 step, ~0.12 us in this century). ``ns / 1e9`` rounds ns to a float first,
    and polars' division of a long column differs from it by a step (a helper's trial: `who` and `correlate`
    gave one connection first_seen ...2848773 and ...2848775); natproof.result.seconds_expr is the same sum in
    polars, so every output agrees to the last digit."""
    whole, frac = divmod(ns, 1_000_000_000)
    return whole + frac / 1e9


def utc_ms(ns: int, dated: bool = True) -> str:
    """A time in ns since the epoch as the texts write it: ISO-8601 UTC to the millisecond without the zone's
    letter ("2026-11-24T06:06:01.284"), or the time of day alone (``dated`` false: "06:06:01.284")."""
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f" if dated
                                                                else "%H:%M:%S.%f")[:-3]


FORMATS = ("table", "json", "ndjson", "csv", "parquet", "conntrack")
"""``--format`` values: a rich table, or a file format natproof.report.export writes."""

OUTPUT_SUFFIXES = {".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson", ".csv": "csv", ".parquet": "parquet"}
"""The file formats an ``-o FILE`` suffix names (lower case), for the commands that take -o and --format
(natproof.cli.output_format). The table and conntrack lines are plain text, with no suffix of their own: ``.txt``
or ``.log`` names neither."""


class Verdict(StrEnum):
    """What the NAT did to one connection, as the captures prove it (read in the initiator's direction:
    "the far side" is the capture after the NAT for the initiator's packets; docs/model.md)."""

    TRANSLATED = "translated"
    """The initiator's packets crossed with a rewrite, and at least one reply crossed back (reverse-translated).
    Also when only replies crossed, reverse-translated: the initiator's packets left out of the far capture's sight
    (flag egress_other_path, or other_capture_off), and the replies prove the mapping."""
    NO_REPLY = "no_reply"
    """The initiator's packets crossed with a rewrite; no reply on the far side (an ICMP error may have come)."""
    REPLY_DROPPED = "reply_dropped"
    """Replies were seen on the far side, addressed to the translated tuple; none crossed back."""
    UNTRANSLATED = "untranslated"
    """The initiator's packets crossed with nothing rewritten."""
    NOT_FORWARDED = "not_forwarded"
    """The initiator's packets never crossed (dropped on the node, or refused by it: see the node_generated
    fate)."""
    INTERNAL = "internal"
    """No crossing expected: the destination is in the pod network, or a ClusterIP answered on this node out of
    the captures' sight."""
    REPLY_OTHER_PATH = "reply_other_path"
    """The initiator got replies, but none crossed the captured far side: they came another way (asymmetric
    routing) or that capture missed them, so reverse translation is not proven (cases/asymmetric-reply).
    natproof.correlate/1 called this ``translated``."""
    NOT_CAPTURED = "not_captured"
    """Seen on one side only, yet not dropped: the far end answered the initiator, so its packets crossed out of
    the other capture's sight (that capture was not running then, flag other_capture_off; or they took an
    interface it does not see). Also a flow the other capture holds only as frames a snaplen cut inside their
    TCP/UDP header (flag other_capture_cut: natproof.assemble._cut_legs). What the NAT did is not in the
    captures. natproof.correlate/1 called this ``not_forwarded``."""
