"""Read the kernel's own record of its connections (conntrack output, /proc/net/nf_conntrack) into a frame."""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

import polars as pl

from natproof.contracts import epoch_seconds
from natproof.errors import InputError

ENTRY_SCHEMA: dict[str, pl.DataType] = {
    "line": pl.UInt32(),
    "source": pl.String(),
    "event": pl.String(),
    "ts_ns": pl.Int64(),
    "family": pl.String(),
    "proto": pl.String(),
    "protonum": pl.UInt8(),
    "timeout_s": pl.UInt32(),
    "state": pl.String(),
    "orig_src": pl.String(), "orig_sport": pl.UInt16(), "orig_dst": pl.String(), "orig_dport": pl.UInt16(),
    "reply_src": pl.String(), "reply_sport": pl.UInt16(), "reply_dst": pl.String(), "reply_dport": pl.UInt16(),
    "icmp_type": pl.UInt8(), "icmp_code": pl.UInt8(),
    "orig_packets": pl.UInt64(), "orig_bytes": pl.UInt64(), "reply_packets": pl.UInt64(), "reply_bytes": pl.UInt64(),
    "unreplied": pl.Boolean(),
    "assured": pl.Boolean(),
    "offload": pl.Boolean(),
    "mark": pl.UInt32(),
    "zone": pl.UInt16(),
    "use": pl.UInt32(),
    "id": pl.UInt32(),
    "delta_time_s": pl.UInt64(),
    "start_ts_ns": pl.Int64(),
    "stop_ts_ns": pl.Int64(),
}
"""One row per conntrack line (an entry of a listing, or one event about an entry), in file order.

line: 1-based line number in the file (for XML, the line its ``<flow>`` starts on). source: the format the line is
in (FORMATS). event: NEW, UPDATE or DESTROY (``conntrack -E``), null for a listing. ts_ns: when the event was
stamped, epoch ns: ``-o timestamp`` is the *listener's* receive time (up to ~1 ms after the kernel's event, and
two listeners stamp one event differently), XML ``<when>`` whole seconds; null for listings and untimed events.
family: ipv4 or ipv6 (from ``-o extended``, else from the address). proto/protonum: the layer-4 protocol as
conntrack names it (tcp, udp, icmp, icmpv6, sctp, unknown ...). timeout_s: seconds left when printed. state: TCP
(SCTP, DCCP) state, null for the others. orig_*: the original tuple (as the initiator sent its first packet);
reply_*: the reply tuple (as the kernel expects the responder's packets: source NAT shows in reply_dst/dport,
destination NAT in reply_src/sport). For ICMP echo both sports are the echo identifier and both dports 0 (null
when the format does not print them: conntrack 1.4.7's XML has no ICMP fields); icmp_type/icmp_code are the
original direction's. orig_/reply_packets and _bytes: counters (nf_conntrack_acct=1). unreplied: [UNREPLIED] (no
packet seen in the reply direction yet); assured: [ASSURED]; offload: [OFFLOAD] or [HW_OFFLOAD]. mark, zone, use,
id: as printed (ids are reused by the kernel: they identify no connection over time). delta_time_s: the entry's
age in seconds when printed (nf_conntrack_timestamp=1). start_ts_ns/stop_ts_ns: ``-o ktimestamp``'s
``[start=...]``/``[stop=...]`` (whole seconds, conntrack's local time read as UTC)."""

FORMATS = {
    "events_extended_timestamp": "conntrack -E -o extended,timestamp",
    "events_timestamp": "conntrack -E -o timestamp",
    "events_extended": "conntrack -E -o extended",
    "events": "conntrack -E",
    "proc": "/proc/net/nf_conntrack",
    "list_extended": "conntrack -L -o extended",
    "list": "conntrack -L",
    "xml_events": "conntrack -E -o xml",
    "xml": "conntrack -L -o xml",
}
"""``source`` values, and the command that writes each."""

PORTED_PROTOCOLS = frozenset({6, 17, 33, 132, 136})
"""TCP, UDP, DCCP, SCTP and UDP-Lite: conntrack prints sport= and dport= in both tuples of their entries."""

_ADDR = r"[0-9A-Fa-f.:]+"
_TUPLE = (r"src=(?P<{p}src>" + _ADDR + r")\s+dst=(?P<{p}dst>" + _ADDR + r")"
          r"(?:\s+sport=(?P<{p}sport>\d+)\s+dport=(?P<{p}dport>\d+))?"
          r"(?:\s+type=(?P<{p}type>\d+)\s+code=(?P<{p}code>\d+)(?:\s+id=(?P<{p}id>\d+))?)?")
# The layout of libnetfilter_conntrack's snprintf_default.c (conntrack -L and -E) and of the kernel's
# ct_seq_show (/proc/net/nf_conntrack): [timestamp] [EVENT] [l3name l3num] l4name l4num [timeout] [STATE]
# original tuple [zone-orig=] [packets= bytes=] [UNREPLIED] reply tuple, then flags and key=value fields.
LINE_PATTERN = (
    r"^\s*(?:\[(?P<ts_s>\d+)\.(?P<ts_frac>\d+)\]\s+)?"
    r"(?:\[(?P<event>NEW|UPDATE|DESTROY)\]\s+)?"
    r"(?:(?P<family>ipv4|ipv6)\s+\d+\s+)?"
    r"(?P<proto>[a-z][a-z0-9-]*)\s+(?P<protonum>\d+)\s+"
    r"(?:(?P<timeout>\d+)\s+)?"
    r"(?:(?P<state>[A-Z][A-Z_]*)\s+)?"
    + _TUPLE.format(p="o")
    # Other protocols' tuple fields (GRE's srckey/dstkey) and zone-orig=, taken only when needed to reach src=.
    + r"(?:\s+[a-z-]+=\S+)*?"
    r"(?:\s+packets=(?P<opackets>\d+)\s+bytes=(?P<obytes>\d+))?"
    r"(?:\s+\[(?P<unreplied>UNREPLIED)\])?"
    r"\s+" + _TUPLE.format(p="r")
    + r"(?P<rest>.*)$"
)
"""One conntrack text line (every text format), for polars' ``str.extract_groups``."""

_REST = {
    "reply_packets": r"^\s+packets=(\d+)\s+bytes=\d+",
    "reply_bytes": r"^\s+packets=\d+\s+bytes=(\d+)",
    "mark": r"(?:^|\s)mark=(\d+)",
    "zone": r"(?:^|\s)zone=(\d+)",
    "use": r"(?:^|\s)use=(\d+)",
    "id": r"(?:^|\s)id=(\d+)",
    "delta_time_s": r"(?:^|\s)delta-time=(\d+)",
    "start": r"\[start=([^\]]+)\]",
    "stop": r"\[stop=([^\]]+)\]",
}
"""What follows the reply tuple: its counters, then mark, secmark, zone, delta-time, [start=], use, id."""

IGNORED_PREFIXES = ("#", "conntrack v", "<?xml")
"""Lines read as no entry and no error: blank lines, comments, conntrack's "N flow entries have been shown."."""


@dataclass(frozen=True)
class ConntrackRecord:
    """What natproof read from a conntrack record file."""

    path: str
    entries: pl.DataFrame = field(repr=False)
    """ENTRY_SCHEMA rows, in file order."""
    formats: dict[str, int]
    """Lines per format found (FORMATS keys), in order of first appearance: one file may mix them (a lab's
    conntrack.log holds two event logs and a listing)."""
    lines: int
    """Lines in the file."""
    unparsed: int
    """Lines that are neither an entry nor blank, a comment or conntrack's summary line."""
    unparsed_lines: tuple[int, ...] = ()
    """The first few of those (1-based line numbers)."""
    warnings: tuple[str, ...] = ()
    """What reading it found suspect in the entries it kept (time_warnings), as a capture's warnings are: the CLI
    prints each on stderr (``natproof: warning: PATH: ...``), the JSON has them under ``conntrack.warnings``."""

    @classmethod
    def from_entries(cls, entries: pl.DataFrame, path: str = "(entries)") -> ConntrackRecord:
        """A record of entries already read (ENTRY_SCHEMA columns; a script may have filtered them)."""
        entries = entries.select([pl.col(c).cast(t) for c, t in ENTRY_SCHEMA.items()])
        return cls(path=path, entries=entries, formats=dict(Counter(entries["source"].to_list())),
                   lines=entries.height, unparsed=0, warnings=time_warnings(entries))

    @property
    def first_ts_ns(self) -> int | None:
        """The earliest event timestamp, or None when the record has none (a listing, untimed events)."""
        value = self.entries["ts_ns"].min()
        return None if value is None else int(value)  # type: ignore[arg-type]

    @property
    def last_ts_ns(self) -> int | None:
        value = self.entries["ts_ns"].max()
        return None if value is None else int(value)  # type: ignore[arg-type]

    @property
    def has_events(self) -> bool:
        return bool(self.entries["event"].is_not_null().any())

    @property
    def has_listing(self) -> bool:
        return bool(self.entries["event"].is_null().any())

    def describe(self) -> str:
        """``conntrack.log: 18 entries (conntrack -E -o extended,timestamp 14, conntrack -L -o extended 4)``."""
        kinds = ", ".join(f"{FORMATS[k]} {n}" for k, n in self.formats.items())
        skipped = f"; {self.unparsed} line(s) not understood" if self.unparsed else ""
        return f"{self.path}: {self.entries.height} entries ({kinds}){skipped}"

    def to_dict(self) -> dict[str, Any]:
        first, last = self.first_ts_ns, self.last_ts_ns
        return {"path": self.path, "formats": {FORMATS[k]: n for k, n in self.formats.items()},
                "entries": self.entries.height, "lines": self.lines, "unparsed": self.unparsed,
                "first_ts": None if first is None else epoch_seconds(first),
                "last_ts": None if last is None else epoch_seconds(last), "warnings": list(self.warnings)}


MAX_STAMP_S = (2**63 - 1) // 10**9 - 1
"""The last whole second whose every nanosecond an Int64 holds (2262-04-11): a stamp past it is no time."""

PLAUSIBLE_FROM_NS = 946_684_800 * 10**9
"""2000-01-01T00:00:00Z: no conntrack record natproof reads can be older (nf_conntrack_timestamp came with Linux 2.6.38,
in 2011). A stamp before it is a clock that was never set (it starts at 0, 1970) or a field that is no epoch time."""

_TIME_COLUMNS = {"ts_ns": "stamped", "start_ts_ns": "with [start=]", "stop_ts_ns": "with [stop=]"}


def time_warnings(entries: pl.DataFrame) -> tuple[str, ...]:
    """One warning per time column (the event stamp, ``-o ktimestamp``'s start and stop) that has entries before
    2000 (PLAUSIBLE_FROM_NS): how many, the first lines and the first such time. Such an entry is still read as
    stamped (a helper's event log with a stamp of 0 was held against the captures without a word, the record
    spanning 56 years); the warning says the time is none a record can have."""
    out = []
    for column, what in _TIME_COLUMNS.items():
        early = entries.filter(pl.col(column) < PLAUSIBLE_FROM_NS)
        if early.is_empty():
            continue
        n = early.height
        lines = ", ".join(str(v) for v in early["line"].head(5).to_list()) + (" ..." if n > 5 else "")
        when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(early[column][0]) // 1000)
        span = "; read as stamped, the record's span reaches back to then" if column == "ts_ns" else ""
        out.append(f"{n} entr{'y' if n == 1 else 'ies'} {what} before 2000 (line {lines}: {when:%Y-%m-%dT%H:%M:%SZ}"
                   f"{' first' if n > 1 else ''}), a time no conntrack record can have: the node's clock was not set "
                   f"(it starts at 1970) or the field is no epoch time{span}")
    return tuple(out)


def read_conntrack(path: str | os.PathLike[str]) -> ConntrackRecord:
    """Read a conntrack record in any of the formats of FORMATS (one file may mix the text ones), detected from
    its content; gzip-compressed files are read as they are.

    Lines that are no entry are counted (``unparsed``), never an error. Raises InputError naming the file when it
    cannot be read or holds no entry at all, and for XML with a DOCTYPE (refused rather than expanded)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"{name}: cannot read the conntrack record: {exc.strerror or exc}") from None
    return parse_conntrack(data, name)


def parse_conntrack(data: bytes | str, name: str = "conntrack") -> ConntrackRecord:
    """A conntrack record already in memory (a file's bytes, or text such as lines joined by newlines), read as
    read_conntrack reads a file, with its checks; ``name`` stands for the file in the record and its errors."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{name}: not a readable gzip file ({exc})") from None
    head = data[:4096].lstrip()
    if head.startswith((b"<?xml", b"<conntrack", b"<flow")):
        entries, lines, unparsed = _read_xml(name, data)
    else:
        entries, lines, unparsed = _read_text(data)
    if entries.is_empty():
        problem = "empty file" if not data.strip() else (
            f"no conntrack entry in {lines} line(s) (natproof reads conntrack -L and -E output, default, -o extended, "
            "-o timestamp and -o xml, and /proc/net/nf_conntrack)")
        raise InputError(f"{name}: {problem}")
    if entries["source"].is_in(["proc"]).any():
        # /proc/net/nf_conntrack is told apart by zone=0 and full IPv6 addresses, which not every line has.
        entries = entries.with_columns(pl.col("source").replace("list_extended", "proc"))
    formats = dict(Counter(entries["source"].to_list()))
    return ConntrackRecord(path=name, entries=entries, formats=formats, lines=lines, unparsed=len(unparsed),
                           unparsed_lines=tuple(unparsed[:10]), warnings=time_warnings(entries))


CHUNK_LINES = 250_000
"""Lines parsed per part: the parts run in parallel (polars' collect_all) and bound the memory of the matches."""


def _read_text(data: bytes) -> tuple[pl.DataFrame, int, list[int]]:
    """Every line through LINE_PATTERN (polars' regex engine, on parts of the file in parallel), never a Python
    loop per line."""
    text = _split_lines(data)
    lines = text.len()
    frame = pl.DataFrame({"text": text}).with_row_index("line", offset=1)
    del text
    stripped = pl.col("text").str.strip_chars()
    ignored = (stripped == "") | pl.any_horizontal([stripped.str.starts_with(p) for p in IGNORED_PREFIXES])
    frame = frame.filter(~ignored)
    parts = pl.collect_all([_parse_lines(frame.slice(offset, CHUNK_LINES).lazy())
                            for offset in range(0, frame.height, CHUNK_LINES)] or [_parse_lines(frame.lazy())])
    del frame
    parsed = pl.concat(parts)
    unparsed = parsed.filter(pl.col("proto").is_null())["line"].to_list()
    entries = parsed.filter(pl.col("proto").is_not_null())
    entries = entries.with_columns(_ctime_ns(entries["start"]).alias("start_ts_ns"),
                                   _ctime_ns(entries["stop"]).alias("stop_ts_ns")).drop("start", "stop")
    entries, bad = _normalise_addresses(entries)
    unparsed = sorted(unparsed + bad)
    return entries.select([pl.col(c).cast(t) for c, t in ENTRY_SCHEMA.items()]), lines, unparsed


BLOCK_BYTES = 16 * 1024 * 1024
"""The file is cut into lines a block of about this size at a time: splitting it whole once cost 6x its size."""


def _split_lines(data: bytes) -> pl.Series:
    """The file's lines (without their newline), in order; invalid UTF-8 replaced."""
    pieces, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start + BLOCK_BYTES)
        end = len(data) if end < 0 else end + 1
        pieces.append(pl.Series("text", [data[start:end].decode("utf-8", errors="replace")]).str.split("\n")
                      .explode())
        if data[end - 1:end] == b"\n":
            pieces[-1] = pieces[-1].head(pieces[-1].len() - 1)  # a newline ends its line; it opens none
        start = end
    return pl.concat(pieces) if pieces else pl.Series("text", [], dtype=pl.String)


def _parse_lines(lines: pl.LazyFrame) -> pl.LazyFrame:
    """(line, text) rows as ENTRY_SCHEMA columns (start and stop still text); proto is null where the line is no
    entry."""
    parts = lines.select("line", pl.col("text").str.extract_groups(LINE_PATTERN).alias("m")).unnest("m")
    rest = pl.col("rest")
    # A stamp past what nanoseconds in 64 bits hold (year 2262) is no time: the line is no entry (it raised, or,
    # multiplied past the range, wrapped to a time before 1970).
    ts_s = pl.col("ts_s").cast(pl.Int64, strict=False)
    bad_ts = pl.col("ts_s").is_not_null() & ~ts_s.is_between(0, MAX_STAMP_S).fill_null(False)
    ts = (pl.when(~bad_ts).then(ts_s * 1_000_000_000)
          + pl.col("ts_frac").str.pad_end(9, "0").str.slice(0, 9).cast(pl.Int64))
    family = pl.col("family").fill_null(
        pl.when(pl.col("osrc").str.contains(":")).then(pl.lit("ipv6")).otherwise(pl.lit("ipv4")))
    event, timed, extended = pl.col("event").is_not_null(), pl.col("ts_s").is_not_null(), pl.col("family").is_not_null()
    # /proc/net/nf_conntrack always prints zone= (conntrack -L only a non-zero one) and IPv6 addresses in full.
    proc = extended & (rest.str.contains(r"(?:^|\s)zone=0(?:\s|$)") | pl.col("osrc").str.contains("^0000:"))
    source = (pl.when(event & timed & extended).then(pl.lit("events_extended_timestamp"))
              .when(event & timed).then(pl.lit("events_timestamp"))
              .when(event & extended).then(pl.lit("events_extended"))
              .when(event).then(pl.lit("events"))
              .when(proc).then(pl.lit("proc"))
              .when(extended).then(pl.lit("list_extended"))
              .otherwise(pl.lit("list")))
    icmp = pl.col("otype").is_not_null()

    def port(prefix: str, which: str) -> pl.Expr:
        # ICMP echo: the identifier stands in sport, in both directions; dport 0 (natproof's connection tuples).
        value = pl.col(f"{prefix}{which}").cast(pl.UInt16, strict=False)
        ident = pl.col(f"{prefix}id").cast(pl.UInt16, strict=False) if which == "sport" else pl.lit(0, pl.UInt16)
        return pl.when(icmp).then(ident).otherwise(value)

    def num(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
        return expr.cast(dtype, strict=False)

    # A protocol with ports whose tuple lacks one, or holds one outside 0-65535 (sport=-4, dport=70000), is no entry:
    # a tuple read without its ports would stand for every port of its addresses (a new user's garbage line was
    # "confirmed" by every connection between them).
    ported = pl.col("protonum").cast(pl.Int64, strict=False).is_in(list(PORTED_PROTOCOLS))
    no_port = pl.any_horizontal([port(p, w).is_null() for p in ("o", "r") for w in ("sport", "dport")])
    return parts.select(
        pl.col("line").cast(pl.UInt32),
        source.alias("source"),
        pl.col("event"),
        ts.alias("ts_ns"),
        family.alias("family"),
        pl.when(ported & no_port | bad_ts).then(None).otherwise(pl.col("proto")).alias("proto"),
        num(pl.col("protonum"), pl.UInt8()).alias("protonum"),
        num(pl.col("timeout"), pl.UInt32()).alias("timeout_s"),
        pl.col("state"),
        pl.col("osrc").alias("orig_src"), port("o", "sport").alias("orig_sport"),
        pl.col("odst").alias("orig_dst"), port("o", "dport").alias("orig_dport"),
        pl.col("rsrc").alias("reply_src"), port("r", "sport").alias("reply_sport"),
        pl.col("rdst").alias("reply_dst"), port("r", "dport").alias("reply_dport"),
        num(pl.col("otype"), pl.UInt8()).alias("icmp_type"), num(pl.col("ocode"), pl.UInt8()).alias("icmp_code"),
        num(pl.col("opackets"), pl.UInt64()).alias("orig_packets"),
        num(pl.col("obytes"), pl.UInt64()).alias("orig_bytes"),
        num(rest.str.extract(_REST["reply_packets"]), pl.UInt64()).alias("reply_packets"),
        num(rest.str.extract(_REST["reply_bytes"]), pl.UInt64()).alias("reply_bytes"),
        pl.col("unreplied").is_not_null().alias("unreplied"),
        rest.str.contains(r"\[ASSURED\]").alias("assured"),
        rest.str.contains(r"\[(?:HW_)?OFFLOAD\]").alias("offload"),
        *[num(rest.str.extract(_REST[k]), ENTRY_SCHEMA[k]).alias(k) for k in ("mark", "zone", "use", "id",
                                                                              "delta_time_s")],
        rest.str.extract(_REST["start"]).alias("start"),
        rest.str.extract(_REST["stop"]).alias("stop"),
    )


def _ctime_ns(values: pl.Series) -> pl.Series:
    """``Sun Nov 29 15:20:52 2026`` (conntrack's ctime(3) rendering of the kernel's timestamp, in its local time,
    read here as UTC) as epoch ns; null where absent or unreadable."""
    mapping: dict[str, int | None] = {}
    for text in values.drop_nulls().unique().to_list():
        try:
            when = dt.datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y").replace(tzinfo=dt.UTC)
            seconds = int(when.timestamp())
            mapping[text] = seconds * 1_000_000_000 if 0 <= seconds <= MAX_STAMP_S else None
        except ValueError:
            mapping[text] = None
    if not mapping:
        return pl.repeat(None, values.len(), dtype=pl.Int64, eager=True)
    return values.replace_strict(mapping, default=None, return_dtype=pl.Int64)


def _normalise_addresses(entries: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
    """Addresses as natproof prints them (``::1``, not /proc's ``0000:...:0001``); the lines of rows holding
    something that is no address are returned and the rows dropped."""
    cols = ("orig_src", "orig_dst", "reply_src", "reply_dst")
    if entries.is_empty():
        return entries, []
    distinct = pl.concat([entries[c] for c in cols]).unique().to_list()
    mapping: dict[str, str | None] = {}
    for text in distinct:
        try:
            mapping[text] = str(ipaddress.ip_address(text))
        except ValueError:
            mapping[text] = None
    if all(k == v for k, v in mapping.items()):
        return entries, []
    entries = entries.with_columns(pl.col(c).replace_strict(mapping, return_dtype=pl.String) for c in cols)
    bad = pl.any_horizontal([pl.col(c).is_null() for c in cols])
    return entries.filter(~bad), entries.filter(bad)["line"].to_list()


# -- XML (conntrack -o xml) ---------------------------------------------------------------------------------------


class _XmlFlows:
    """expat handlers collecting one dict per ``<flow>`` (libnetfilter_conntrack's snprintf_xml.c layout)."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.rows: list[dict[str, Any]] = []
        self.flow: dict[str, Any] | None = None
        self.direction = ""
        self.path: list[str] = []
        self.text: list[str] = []

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.path.append(tag)
        self.text = []
        if tag == "flow":
            kind = attrs.get("type")
            self.flow = {"line": self.parser.CurrentLineNumber, "event": kind.upper() if kind else None,
                         "when": {}}
        elif self.flow is None:
            return
        elif tag == "meta":
            self.direction = attrs.get("direction", "")
        elif tag == "layer3" and self.direction == "original":
            self.flow["family"] = attrs.get("protoname")
        elif tag == "layer4" and self.direction == "original":
            self.flow["proto"] = attrs.get("protoname")
            self.flow["protonum"] = attrs.get("protonum")
        elif tag in ("assured", "unreplied") and self.direction == "independent":
            self.flow[tag] = True
        elif tag in ("offload", "hw_offload"):
            self.flow["offload"] = True

    def chars(self, data: str) -> None:
        self.text.append(data)

    def end(self, tag: str) -> None:
        self.path.pop()
        flow = self.flow
        if flow is None:
            return
        if tag == "flow":
            self.rows.append(flow)
            self.flow = None
            return
        value = "".join(self.text).strip()
        self.text = []
        parent = self.path[-1] if self.path else ""
        short = {"original": "orig", "reply": "reply"}.get(self.direction)
        if parent == "when":
            flow["when"][tag] = value
        elif short and parent == "layer3" and tag in ("src", "dst"):
            flow[f"{short}_{tag}"] = value
        elif short and parent == "layer4" and tag in ("sport", "dport", "type", "code", "id"):
            flow[f"{short}_{tag}"] = value
        elif short and parent == "counters" and tag in ("packets", "bytes"):
            flow[f"{short}_{tag}"] = value
        elif self.direction == "independent" and parent == "meta":
            key = {"timeout": "timeout_s", "deltatime": "delta_time_s"}.get(tag, tag)
            if key in ("state", "timeout_s", "mark", "zone", "use", "id", "delta_time_s"):
                flow[key] = value


_NO_ELEMENTS = expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS]


class _Refused(Exception):
    pass


def _refuse(*_: Any) -> None:
    raise _Refused


def _read_xml(name: str, data: bytes) -> tuple[pl.DataFrame, int, list[int]]:
    """``conntrack -L -o xml`` and ``-E -o xml[,timestamp]`` through the stdlib's expat, with no DOCTYPE allowed:
    no entity is ever declared, so none is expanded (the billion-laughs and external-entity attacks need one).
    A document cut short (a listener killed before it wrote ``</conntrack>``) keeps the flows read so far, and
    the line where parsing stopped counts as unparsed."""
    parser = expat.ParserCreate()
    flows = _XmlFlows(parser)
    parser.StartElementHandler = flows.start
    parser.EndElementHandler = flows.end
    parser.CharacterDataHandler = flows.chars
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.buffer_text = True
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    unparsed: list[int] = []
    try:
        parser.Parse(data, True)
    except _Refused:
        raise InputError(f"{name}: XML with a DOCTYPE (conntrack -o xml writes none); refused rather than expanding "
                         "its entities") from None
    except expat.ExpatError as exc:
        # Only a document that ends between two flows without its </conntrack> (a listener stopped by a signal
        # that gave it no time to finish) loses nothing; any other error costs the flow it hit.
        cut_short = exc.code == _NO_ELEMENTS and flows.flow is None and flows.rows
        if not cut_short:
            unparsed.append(exc.lineno)
    rows = flows.rows
    icmp = [r.get("orig_type") is not None for r in rows]
    frame = pl.DataFrame({
        "line": [r["line"] for r in rows],
        "source": ["xml_events" if r["event"] else "xml" for r in rows],
        "event": [r["event"] for r in rows],
        "ts_ns": [_when_ns(r["when"]) for r in rows],
        "family": [r.get("family") for r in rows],
        "proto": [r.get("proto") for r in rows],
        "protonum": [r.get("protonum") for r in rows],
        "timeout_s": [r.get("timeout_s") for r in rows],
        "state": [r.get("state") for r in rows],
        **{f"{d}_{f}": [r.get(f"{d}_{f}") for r in rows] for d in ("orig", "reply") for f in ("src", "dst")},
        **{f"{d}_{f}": [(r.get(f"{d}_id") if f == "sport" else "0") if i else r.get(f"{d}_{f}")
                        for r, i in zip(rows, icmp, strict=True)]
           for d in ("orig", "reply") for f in ("sport", "dport")},
        "icmp_type": [r.get("orig_type") for r in rows],
        "icmp_code": [r.get("orig_code") for r in rows],
        **{f"{d}_{f}": [r.get(f"{d}_{f}") for r in rows] for d in ("orig", "reply") for f in ("packets", "bytes")},
        "unreplied": [bool(r.get("unreplied")) for r in rows],
        "assured": [bool(r.get("assured")) for r in rows],
        "offload": [bool(r.get("offload")) for r in rows],
        **{k: [r.get(k) for r in rows] for k in ("mark", "zone", "use", "id", "delta_time_s")},
        "start_ts_ns": [None] * len(rows),
        "stop_ts_ns": [None] * len(rows),
    }, schema={c: _XML_TYPES.get(c, pl.String()) for c in ENTRY_SCHEMA})
    frame = frame.with_columns(pl.col(c).cast(t, strict=False) for c, t in ENTRY_SCHEMA.items())
    no_port = pl.col("protonum").cast(pl.Int64, strict=False).is_in(list(PORTED_PROTOCOLS)) & pl.any_horizontal(
        [pl.col(f"{d}_{f}").is_null() for d in ("orig", "reply") for f in ("sport", "dport")])  # as _parse_lines
    bad_tuple = pl.any_horizontal([pl.col(c).is_null() for c in ("proto", "orig_src", "orig_dst", "reply_src",
                                                                 "reply_dst")]) | no_port
    unparsed += frame.filter(bad_tuple)["line"].to_list()
    frame = frame.filter(~bad_tuple)
    frame = frame.with_columns(pl.col("family").fill_null(
        pl.when(pl.col("orig_src").str.contains(":")).then(pl.lit("ipv6")).otherwise(pl.lit("ipv4"))))
    frame, bad = _normalise_addresses(frame)
    return frame, lines, sorted(unparsed + bad)


_XML_TYPES: dict[str, pl.DataType] = {c: ENTRY_SCHEMA[c] for c in (
    "line", "ts_ns", "start_ts_ns", "stop_ts_ns", "unreplied", "assured", "offload")}
"""Columns the XML reader fills with their final type; the others are read as text and cast."""


def _when_ns(when: dict[str, str]) -> int | None:
    """XML ``<when>`` (conntrack's localtime(3) of the event, whole seconds), read as UTC."""
    try:
        stamp = dt.datetime(int(when["year"]), int(when["month"]), int(when["day"]), int(when["hour"]),
                            int(when["min"]), int(when["sec"]), tzinfo=dt.UTC)
    except (KeyError, ValueError):
        return None
    seconds = int(stamp.timestamp())
    return seconds * 1_000_000_000 if 0 <= seconds <= MAX_STAMP_S else None
