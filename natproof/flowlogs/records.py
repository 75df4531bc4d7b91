"""Read AWS VPC Flow Logs (text with the default or a custom format, gzip, CloudWatch exports, Parquet) into one frame.

The format is AWS's, "Flow log records" in the Amazon VPC User Guide
(https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html):

- A record is one line of space-separated fields describing one flow (a 5-tuple seen on one network interface)
  within an *aggregation interval* (capture window) of at most 10 minutes, or at most 1 minute when the flow log
  was created so (and always 1 minute or less on Nitro instances).
- The *default format* is the version 2 fields in this order: ``version account-id interface-id srcaddr dstaddr
  srcport dstport protocol packets bytes start end action log-status``. A *custom format* names any subset of the
  available fields (FIELDS) in any order; its ``version`` is the highest version among them.
- A field that does not apply or could not be computed reads ``-``. ``start`` and ``end`` are Unix seconds of the
  first and last packet of the flow received within the interval, "up to 60 seconds after the packet was
  transmitted or received on the network interface".
- ``log-status`` is OK, NODATA (no traffic in the interval: every flow field is ``-``) or SKIPDATA (records were
  skipped for want of capacity; one such record can stand for several flows): such records are counted, never
  joined.
- Delivery to S3 ("Publish flow logs to Amazon S3",
  https://docs.aws.amazon.com/vpc/latest/userguide/flow-logs-s3.html) writes gzip-compressed text files whose
  first line names the fields (Athena's table for them skips one header line), or Parquet files whose columns are
  the field names with underscores (``pkt_srcaddr``, ``log_status``) and typed (INT_32, INT_64, STRING). Delivery
  to CloudWatch Logs writes one record per log event, no header; an export of a log group can carry each event's
  timestamp before the record.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from natproof.errors import InputError, setting

# name: (version introduced, Parquet type, description). From "Available fields" in the Amazon VPC User Guide
# (https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html#flow-logs-fields).
FIELDS: dict[str, tuple[int, str, str]] = {
    "version": (2, "INT_32", "the flow log version (2 for the default format; a custom format's highest field "
                             "version)"),
    "account-id": (2, "STRING", "the AWS account that owns the network interface"),
    "interface-id": (2, "STRING", "the network interface the traffic is recorded for"),
    "srcaddr": (2, "STRING", "source address of incoming traffic, or the interface's own (primary private) address "
                             "for outgoing traffic; see pkt-srcaddr"),
    "dstaddr": (2, "STRING", "destination address of outgoing traffic, or the interface's own (primary private) "
                             "address for incoming traffic; see pkt-dstaddr"),
    "srcport": (2, "INT_32", "source port"),
    "dstport": (2, "INT_32", "destination port"),
    "protocol": (2, "INT_32", "IANA protocol number (6 TCP, 17 UDP, 1 ICMP)"),
    "packets": (2, "INT_64", "packets of the flow in the interval"),
    "bytes": (2, "INT_64", "bytes of the flow in the interval"),
    "start": (2, "INT_64", "Unix seconds of the first packet in the interval (up to 60 s late)"),
    "end": (2, "INT_64", "Unix seconds of the last packet in the interval (up to 60 s late)"),
    "action": (2, "STRING", "ACCEPT or REJECT (security groups, network ACLs)"),
    "log-status": (2, "STRING", "OK, NODATA or SKIPDATA"),
    "vpc-id": (3, "STRING", "the VPC of the interface"),
    "subnet-id": (3, "STRING", "the subnet of the interface"),
    "instance-id": (3, "STRING", "the instance of the interface; '-' for a requester-managed interface such as a "
                                 "NAT gateway's"),
    "tcp-flags": (3, "INT_32", "OR of the TCP flags seen in the interval: FIN 1, SYN 2, RST 4, SYN-ACK 18"),
    "type": (3, "STRING", "IPv4, IPv6 or EFA"),
    "pkt-srcaddr": (3, "STRING", "the packet's own (original) source address: differs from srcaddr on an "
                                 "intermediate interface such as a NAT gateway's"),
    "pkt-dstaddr": (3, "STRING", "the packet's own (final) destination address: differs from dstaddr on an "
                                 "intermediate interface such as a NAT gateway's"),
    "region": (4, "STRING", "the Region of the interface"),
    "az-id": (4, "STRING", "the Availability Zone of the interface"),
    "sublocation-type": (4, "STRING", "wavelength, outpost or localzone"),
    "sublocation-id": (4, "STRING", "the sublocation of the interface"),
    "pkt-src-aws-service": (5, "STRING", "the AWS service range pkt-srcaddr belongs to"),
    "pkt-dst-aws-service": (5, "STRING", "the AWS service range pkt-dstaddr belongs to"),
    "flow-direction": (5, "STRING", "ingress or egress, relative to the interface"),
    "traffic-path": (5, "INT_32", "the path egress traffic takes (1 within the VPC ... 8 through an internet "
                                  "gateway)"),
    "ecs-cluster-arn": (7, "STRING", "Amazon ECS: cluster ARN"),
    "ecs-cluster-name": (7, "STRING", "Amazon ECS: cluster name"),
    "ecs-container-instance-arn": (7, "STRING", "Amazon ECS: container instance ARN"),
    "ecs-container-instance-id": (7, "STRING", "Amazon ECS: container instance ID"),
    "ecs-container-id": (7, "STRING", "Amazon ECS: container ID"),
    "ecs-second-container-id": (7, "STRING", "Amazon ECS: second container ID"),
    "ecs-service-name": (7, "STRING", "Amazon ECS: service name"),
    "ecs-task-definition-arn": (7, "STRING", "Amazon ECS: task definition ARN"),
    "ecs-task-arn": (7, "STRING", "Amazon ECS: task ARN"),
    "ecs-task-id": (7, "STRING", "Amazon ECS: task ID"),
    "reject-reason": (8, "STRING", "why traffic was rejected (BPA)"),
}
"""Every documented field: (version it was introduced in, its Parquet type, what it holds)."""

DEFAULT_FORMAT: tuple[str, ...] = ("version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport",
                                   "dstport", "protocol", "packets", "bytes", "start", "end", "action", "log-status")
"""The default format: the version 2 fields in the order of the field table."""

ALIASES = {"windowstart": "start", "windowend": "end", "start-time": "start", "end-time": "end",
           "flowlogstatus": "log-status", "interfaceid": "interface-id", "sourceaddress": "srcaddr",
           "destinationaddress": "dstaddr", "sourceport": "srcport", "destinationport": "dstport",
           "numpackets": "packets", "numbytes": "bytes", "starttime": "start", "endtime": "end",
           "logstatus": "log-status", "account": "account-id"}
"""Column names some Athena tables and integrations give the fields, for Parquet files written through them."""

INTEGER_FIELDS = ("version", "srcport", "dstport", "protocol", "packets", "bytes", "start", "end", "tcp-flags",
                  "traffic-path")

RECORD_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(), "line_no": pl.UInt32(),
    "version": pl.Int32(), "account_id": pl.String(), "interface_id": pl.String(),
    "srcaddr": pl.String(), "dstaddr": pl.String(), "srcport": pl.Int32(), "dstport": pl.Int32(),
    "protocol": pl.Int32(), "packets": pl.Int64(), "bytes": pl.Int64(), "start_s": pl.Int64(), "end_s": pl.Int64(),
    "action": pl.String(), "log_status": pl.String(),
    "vpc_id": pl.String(), "subnet_id": pl.String(), "instance_id": pl.String(), "tcp_flags": pl.Int32(),
    "type": pl.String(), "pkt_srcaddr": pl.String(), "pkt_dstaddr": pl.String(), "region": pl.String(),
    "az_id": pl.String(), "pkt_src_aws_service": pl.String(), "pkt_dst_aws_service": pl.String(),
    "flow_direction": pl.String(), "traffic_path": pl.Int32(),
}
"""One row per record: the fields with underscores (as the Parquet delivery names them), ``start_s``/``end_s`` for
start/end (Unix seconds), null where a record reads ``-`` or its format lacks the field. ``file`` and ``line_no``
(1-based line of a text file, row of a Parquet file) say where the record was read. Other documented fields
(sublocation, ECS) are kept as extra String columns when a file has them."""

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
"""IANA numbers of the protocols natproof names; others print as their number."""

_TIMESTAMP = r"^(\d{4}-\d{2}-\d{2}T\S+|\d{13})$"
"""A CloudWatch export's event timestamp before the record: ISO-8601, or epoch milliseconds."""
_ADDRESS = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|-)$"
_NAME = r"^[a-z][a-z0-9_-]*$"
_PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"


def column_name(field_name: str) -> str:
    """The RECORD_SCHEMA column of a field name (``pkt-srcaddr`` -> ``pkt_srcaddr``, ``start`` -> ``start_s``)."""
    name = field_name.strip().lower().replace("_", "-")
    name = ALIASES.get(name, name)
    if name in ("start", "end"):
        return f"{name}_s"
    return name.replace("-", "_")


def parse_format(text: str, where: str | None = None) -> tuple[str, ...]:
    """A flow log's field list from its ``--log-format`` (``${version} ${srcaddr} ...``) or a plain list of names
    separated by spaces or commas. Raises InputError naming the first unknown field, after ``where`` (a fleet
    manifest's key) or by default read_flow_logs' ``fields`` (the command line's ``--flow-log-format``)."""
    head = setting("fields") if where is None else where
    names = [t.strip().removeprefix("${").removesuffix("}") for t in text.replace(",", " ").split()]
    if not names:
        raise InputError(head, ": no field named (e.g. '${version} ${srcaddr} ${dstaddr}')")
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise InputError(head, f": {', '.join(twice)} named more than once")
    for n in names:
        canonical = ALIASES.get(n.lower().replace("_", "-"), n.lower().replace("_", "-"))
        if canonical not in FIELDS:
            raise InputError(head, f": unknown field {n!r} (fields: {', '.join(FIELDS)})")
    return tuple(ALIASES.get(n.lower().replace("_", "-"), n.lower().replace("_", "-")) for n in names)


@dataclass(frozen=True)
class FlowLogFile:
    """What was read from one flow log file."""

    path: str
    format: str
    """``text``, ``text+gzip``, ``parquet`` (gzip-compressed columns are Parquet's own business)."""
    fields: tuple[str, ...]
    """Its fields in order (AWS's names): from its header line, the default format, or the format given."""
    fields_from: str
    """``header``, ``default`` (no header, 14 fields per line), ``given`` (--flow-log-format) or ``parquet``."""
    lines: int
    """Text lines (blank ones included) or Parquet rows."""
    records: int
    """Records read (OK, NODATA and SKIPDATA)."""
    nodata: int
    """Records with log-status NODATA: no traffic on the interface in their interval."""
    skipdata: int
    """Records with log-status SKIPDATA: flows VPC Flow Logs could not record in their interval."""
    skipped: dict[str, int]
    """Lines left out, by reason: ``field_count`` (not as many fields as the format), ``bad_number``, ``bad_address``,
    ``repeated_header``, ``blank``."""
    cloudwatch_timestamps: int = 0
    """Records that carried a CloudWatch event timestamp before them (dropped: start/end are the record's times)."""
    first_start_s: int | None = None
    last_end_s: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "fields": list(self.fields), "fields_from": self.fields_from,
                "lines": self.lines, "records": self.records, "nodata": self.nodata, "skipdata": self.skipdata,
                "skipped": self.skipped, "cloudwatch_timestamps": self.cloudwatch_timestamps,
                "first_start": self.first_start_s, "last_end": self.last_end_s}


@dataclass(frozen=True)
class FlowLog:
    """Flow log records read from one or more files."""

    records: pl.DataFrame = field(repr=False)
    """Every record read, RECORD_SCHEMA columns (plus any other documented field a file had), in file order."""
    files: tuple[FlowLogFile, ...]
    passed_over: tuple[str, ...] = ()
    """Files found in a given directory that are no flow log, each with why (``FILE: problem``)."""
    duplicates: int = 0
    """Records read more than once (same interface, flow, interval and counts), kept once in ``records``."""
    passed_over_command_line: tuple[str, ...] | None = field(default=None, repr=False)
    """passed_over, each as the command line says it (InputError.for_command_line: its options where passed_over names
    read_flow_logs' keywords), as natproof's commands print them; None: as passed_over (see
    passed_over_for_command_line)."""
    passed_over_files: tuple[str, ...] = ()
    """The files of passed_over alone, in its order (for a message that names them without why)."""

    def passed_over_for_command_line(self) -> tuple[str, ...]:
        """passed_over as the command line says it (as NatproofError.for_command_line says an error)."""
        return self.passed_over if self.passed_over_command_line is None else self.passed_over_command_line

    def named(self) -> str:
        """The files read, for a message: ``a.log``, ``a.log, b.log``, ``a.log, b.log, c.log and 7 more``."""
        paths = [f.path for f in self.files]
        return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")

    def dated(self) -> bool:
        """Whether any record of traffic has a start or end time (a format may lack them; a record may read '-')."""
        return bool(self.flows().select(pl.coalesce("start_s", "end_s").is_not_null().any()).item())

    def flows(self) -> pl.DataFrame:
        """The records that describe traffic: log-status OK (or absent from the format) and a source address."""
        status = pl.col("log_status")
        return self.records.filter((status.is_null() | (status == "OK")) & pl.col("srcaddr").is_not_null())

    @property
    def nodata(self) -> int:
        return sum(f.nodata for f in self.files)

    @property
    def skipdata(self) -> int:
        return sum(f.skipdata for f in self.files)

    def skipped(self) -> dict[str, int]:
        """Lines left out of every file, by reason."""
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.skipped)
        return dict(sorted(total.items()))

    def has(self, column: str) -> bool:
        """Whether any record has a value in ``column`` (a format without the field leaves it null throughout)."""
        return column in self.records.columns and self.records[column].null_count() < self.records.height

    def span(self) -> tuple[int | None, int | None, str | None]:
        """The records' time span, from what they hold: (earliest start or end, latest end or start, which times
        there were: "start and end", "start" when the format has no end, "end" when no start), seconds; (None,
        None, None) when no record has a time."""
        row = self.records.select(pl.col("start_s").min().alias("s0"), pl.col("start_s").max().alias("s1"),
                                  pl.col("end_s").min().alias("e0"), pl.col("end_s").max().alias("e1")).row(0)
        s0, s1, e0, e1 = row
        starts, ends = s0 is not None, e0 is not None
        if not starts and not ends:
            return None, None, None
        first = min(t for t in (s0, e0) if t is not None)
        last = max(t for t in (s1, e1) if t is not None)
        return first, last, "start and end" if starts and ends else "start" if starts else "end"

    def summary(self, command_line: bool = False) -> dict[str, Any]:
        """Records per interface, action, protocol and log-status, the time span, and per-file reading notes (in the
        command line's words with ``command_line``: passed_over_command_line)."""
        flows = self.flows()
        passed = self.passed_over_for_command_line() if command_line else self.passed_over

        def counts(col: str, name: Any = None) -> list[dict[str, Any]]:
            if flows.is_empty():
                return []
            g = (flows.group_by(col).agg(pl.len().alias("records"), pl.col("packets").sum().alias("packets"),
                                         pl.col("bytes").sum().alias("bytes"))
                 .sort(["records", col], descending=[True, False], nulls_last=True))
            return [{"value": name(v) if name else v, "records": n, "packets": p, "bytes": b}
                    for v, n, p, b in g.iter_rows()]

        span = self.records.select(pl.col("start_s").min(), pl.col("end_s").max()).row(0)
        first, last, span_from = self.span()
        return {
            "files": [f.to_dict() for f in self.files], "passed_over": list(passed),
            "records": self.records.height, "duplicates": self.duplicates, "flows": flows.height,
            "nodata": self.nodata, "skipdata": self.skipdata,
            "skipped": self.skipped(), "first_start": span[0], "last_end": span[1],
            "first": first, "last": last, "span_from": span_from,
            "by_interface": counts("interface_id"), "by_action": counts("action"),
            "by_protocol": counts("protocol", protocol_name), "by_log_status": [
                {"value": s, "records": n} for s, n in
                self.records.group_by("log_status").len().sort("len", "log_status", descending=[True, False],
                                                                 nulls_last=True).iter_rows()],
        }


def protocol_name(number: int | None) -> str:
    """tcp, udp, icmp, icmpv6, or the number as text; ``-`` for none."""
    if number is None:
        return "-"
    return PROTOCOLS.get(int(number), str(number))


def read_flow_logs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                   fields: Sequence[str] | str | None = None, fields_named: str | None = None) -> FlowLog:
    """Read flow log files (a directory stands for every file under it, as an S3 download lays them out).

    Each file is sniffed by its first bytes: gzip (``1f 8b``) is decompressed and sniffed again, Parquet (``PAR1``)
    is read with polars, anything else is text. A text file's fields come from its header line when it has one
    (S3 delivery), else from ``fields`` (the flow log's ``--log-format``, a string or a sequence of names), else the
    default format when its lines have 14 fields. Lines that do not parse are counted by reason in
    ``FlowLogFile.skipped``, never an error. A file under a directory that is no flow log is passed over
    (``FlowLog.passed_over``, with why; ``passed_over_files``), as a file given by itself is not. Raises InputError
    (one line, naming the file) for a missing or unreadable file, a file in which no line is a record, and a file
    whose fields cannot be known; (naming the directories, how many files they hold and why the first is no flow
    log) for directories of which no file is a flow log; and (naming the paths given) for records of which none is
    of traffic (only NODATA or SKIPDATA): nothing to join or count.
    An error that advises the format names it ``fields`` (the command line's ``--flow-log-format``), or
    ``fields_named`` for a caller that takes it under another name (a fleet manifest's ``flow_log_format``).
    """
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    given = parse_format(fields) if isinstance(fields, str) else (tuple(fields) if fields else None)
    if given is not None:
        given = parse_format(" ".join(given))
    files: list[tuple[Path, Path | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            if not found:
                raise InputError(f"{p}: no file in this directory")
            files.extend((q, p) for q in found)
        else:
            files.append((p, None))
    if not files:
        raise InputError("no flow log file given")
    frames, summaries = [], []
    passed: list[InputError] = []
    passed_files: list[str] = []
    for path, folder in files:
        try:
            frame, summary = read_flow_log_file(path, fields=given, fields_named=fields_named)
        except InputError as exc:
            if folder is None:
                raise
            passed.append(exc)  # a file in a directory that is no flow log: said, not fatal
            passed_files.append(str(path))
            continue
        frames.append(frame)
        summaries.append(summary)
    if not frames:
        # Why the first file is no flow log; how many others were not either (a folder of several named one alone).
        many = f"none of its {len(passed)} files is one; the first, " if len(passed) > 1 else ""
        raise passed[0].reworded(f"no flow log in {', '.join(sorted({str(f) for _, f in files if f}))}: {many}")
    said = {"passed_over": tuple(map(str, passed)), "passed_over_files": tuple(passed_files),
            "passed_over_command_line": tuple(exc.for_command_line() for exc in passed)}
    if len(frames) == 1:
        log = FlowLog(records=frames[0], files=tuple(summaries), **said)
    else:
        records = _conform(pl.concat(frames, how="diagonal_relaxed"))
        # One record per interface, flow and interval: the same record read twice (a file given twice, or its text
        # and Parquet deliveries) would double every count. Keep one, the one with the pkt-* fields when there is a
        # choice.
        key = ["interface_id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "start_s", "end_s", "packets",
               "bytes", "log_status"]
        unique = (records.with_row_index("_row").sort(pl.col("pkt_dstaddr").is_null(), "_row")
                  .unique(subset=key, keep="first", maintain_order=True).sort("_row").drop("_row"))
        log = FlowLog(records=unique, files=tuple(summaries), duplicates=records.height - unique.height, **said)
    if log.flows().is_empty():
        # Records, but none of traffic: nothing to summarise, join or count ports of.
        raise InputError(f"{', '.join(map(os.fspath, paths))}: {_no_traffic(log)}")
    return log


def _no_traffic(log: FlowLog) -> str:
    """Why a flow log holds no record of traffic (FlowLog.flows() empty), from its records' log-status."""
    n, nodata, skipdata = log.records.height, log.nodata, log.skipdata
    parts = [f"{nodata} NODATA (no traffic on the interface in their interval)" if nodata else "",
             f"{skipdata} SKIPDATA (flows the flow log skipped for want of capacity)" if skipdata else "",
             f"{n - nodata - skipdata} without a source address" if n - nodata - skipdata else ""]
    return f"no record of traffic: its {n} record(s) are {', '.join(p for p in parts if p)}"


def read_flow_log_file(path: str | os.PathLike[str], *, fields: Sequence[str] | None = None,
                       fields_named: str | None = None) -> tuple[pl.DataFrame, FlowLogFile]:
    """One file: (records, what was read). See read_flow_logs."""
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror})") from None
    fmt = "text"
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{name}: damaged gzip file ({exc})") from None
        fmt = "text+gzip"
    if not data[:65536].strip() and not data.strip():
        raise InputError(f"{name}: empty file: no flow log record in it")
    if data[:4] == _PARQUET_MAGIC:
        return _read_parquet(name, data)
    return _read_text(name, data, fmt, tuple(fields) if fields else None, fields_named)


def _read_parquet(name: str, data: bytes) -> tuple[pl.DataFrame, FlowLogFile]:
    try:
        raw = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - polars raises several types for a damaged file
        raise InputError(f"{name}: not a readable Parquet file ({type(exc).__name__}: {str(exc)[:120]})") from None
    known = {c: column_name(c) for c in raw.columns}
    fields = tuple(ALIASES.get(c.lower().replace("_", "-"), c.lower().replace("_", "-")) for c in raw.columns)
    if not {"srcaddr", "dstaddr", "log-status"} & set(fields):
        raise InputError(f"{name}: a Parquet file without flow log columns (has {', '.join(raw.columns[:8])})")
    frame = raw.rename(known)
    # Parquet types the fields (INT_32, INT_64, STRING); a '-' in a string column is a missing value as in text.
    strings = [c for c in frame.columns if c not in RECORD_SCHEMA or RECORD_SCHEMA[c] == pl.String()]
    frame = frame.with_columns(pl.col(c).cast(pl.String) for c in strings).with_columns(
        pl.when(pl.col(c) == "-").then(None).otherwise(pl.col(c)).alias(c) for c in strings)
    frame = frame.with_columns(pl.lit(name).alias("file"),
                               pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias("line_no"))
    frame = _conform(frame)
    return frame, _summary(name, "parquet", fields, "parquet", raw.height, frame, {}, 0)


def _header_fields(name: str, line: str) -> tuple[str, ...] | None:
    """The fields a header line names (S3 delivery's first line): every token a field-like name, most of them
    documented ones; None for a line that is no header. InputError for a header naming a field twice."""
    tokens = line.strip().split()
    names = [ALIASES.get(t.lower().replace("_", "-"), t.lower().replace("_", "-")) for t in tokens]
    if not tokens or not all(_is_name(t) for t in tokens) or sum(n in FIELDS for n in names) * 2 <= len(names):
        return None
    if twice := sorted({f for f in names if names.count(f) > 1}):
        raise InputError(f"{name}: its header line names {', '.join(twice)} more than once")
    return tuple(names)


def _read_text_regular(name: str, data: bytes, fmt: str, given: tuple[str, ...] | None
                       ) -> tuple[pl.DataFrame, FlowLogFile] | None:
    """The common case in one typed pass of polars' CSV reader: every line one record of the file's fields, one space
    between them, no blank line, no event timestamp, every number a number. None when the file is not that regular
    (then _read_text reads it line by line and counts what it passes over)."""
    # A doubled, leading or trailing space makes a line one field too many (the reader refuses it), a blank line one
    # row too few (counted below); a tab is searched for (one byte: memchr).
    if b"\t" in data or data[:1] in (b" ", b"\n"):
        return None
    first = data[:data.find(b"\n")] if b"\n" in data else data
    head = first.decode("utf-8", "replace")
    fields = _header_fields(name, head)
    skip = 1 if fields is not None else 0
    fields_from = "header" if fields is not None else "given"
    if fields is None:
        tokens = head.split()
        if given is not None:
            fields = given
        elif len(tokens) == len(DEFAULT_FORMAT) and tokens[0] == "2":
            fields, fields_from = DEFAULT_FORMAT, "default"
        else:
            return None
    n = len(fields)
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    # No line has more fields than the schema (the reader would refuse it); the spaces say none has fewer.
    if data.count(b" ") != (n - 1) * lines:
        return None
    cols = [column_name(f) for f in fields]
    schema = {c: (pl.Int64() if f in INTEGER_FIELDS else pl.String()) for c, f in zip(cols, fields, strict=True)}
    try:
        frame = pl.read_csv(io.BytesIO(data), separator=" ", has_header=False, skip_rows=skip, new_columns=cols,
                            schema=schema, quote_char=None, encoding="utf8-lossy", null_values="-")
    except Exception:  # noqa: BLE001 - any irregularity: the line-by-line path says which lines and why
        return None
    if frame.height != lines - skip or frame.is_empty():
        return None
    for c in ("srcaddr", "dstaddr", "pkt_srcaddr", "pkt_dstaddr"):
        if c in frame.columns and not frame[c].drop_nulls().unique().str.contains(_ADDRESS).all():
            return None
    frame = frame.with_columns(pl.lit(name).alias("file"),
                               pl.int_range(1 + skip, frame.height + 1 + skip, dtype=pl.UInt32).alias("line_no"))
    good = _conform(frame)
    return good, _summary(name, fmt, fields, fields_from, lines, good, {}, 0)


def _read_text(name: str, data: bytes, fmt: str, given: tuple[str, ...] | None, fields_named: str | None = None
               ) -> tuple[pl.DataFrame, FlowLogFile]:
    if (regular := _read_text_regular(name, data, fmt, given)) is not None:
        return regular
    # polars reads the lines (a separator no record holds keeps each line whole; the byte is made a space where some
    # garbage holds it); every later step is a column operation: no Python per line.
    if b"\x1f" in data:
        data = data.replace(b"\x1f", b" ")
    lines = pl.read_csv(io.BytesIO(data), has_header=False, separator="\x1f", quote_char=None, new_columns=["line"],
                        schema={"line": pl.String}, encoding="utf8-lossy", truncate_ragged_lines=True,
                        raise_if_empty=False)
    frame = lines.with_row_index("line_no", offset=1)
    line = pl.col("line")
    # AWS separates fields by one space; a tab, doubled or trailing space (hand edits, copies) is normalised, at a
    # regex's cost only when some line has one.
    if frame.select((line.str.contains("  ", literal=True) | line.str.contains("\t", literal=True)
                     | line.str.starts_with(" ") | line.str.ends_with(" ")).any()).item():
        frame = frame.with_columns(line.str.strip_chars().str.replace_all(r"\s+", " "))
    frame = frame.filter(line.is_not_null() & (line != ""))
    skipped: Counter[str] = Counter()
    if blank := lines.height - frame.height:
        skipped["blank"] = blank

    # The file's own header wins over a given format: the format applies to files without one (CloudWatch).
    fields, fields_from, header = given, "given" if given else "", None
    if not frame.is_empty() and (names := _header_fields(name, frame["line"][0])) is not None:
        header = frame["line"][0]
        fields, fields_from = names, "header"
    if header is not None:
        repeated = frame.filter(line == header).height
        frame = frame.filter(line != header)
        if repeated > 1:
            skipped["repeated_header"] = repeated - 1

    frame = frame.with_columns((line.str.count_matches(" ", literal=True) + 1).alias("_n"))
    first = line.str.extract(r"^(\S+)", 1)
    has_ts = first.str.contains(_TIMESTAMP)
    if fields is None:
        # No header and no format given: the default format, if its 14 fields are what the lines hold.
        n_default = len(DEFAULT_FORMAT)
        shaped = frame.select((pl.col("_n") - has_ts.cast(pl.UInt32)).alias("n"),
                              line.str.extract(r"^(?:\d{4}-\d{2}-\d{2}T\S+ |\d{13} )?(\S+)", 1).alias("version"))
        # A default-format record has 14 fields and starts with its version, 2.
        if shaped.filter((pl.col("n") == n_default) & (pl.col("version") == "2")).height:
            fields, fields_from = DEFAULT_FORMAT, "default"
        else:
            start = data[:8].hex(" ")
            common = shaped["n"].mode().sort().to_list()
            most = common[0] if common else 0
            raise InputError(
                f"{name}: not a VPC flow log in the default format (no header line naming the fields, and lines have "
                f"{most} fields, not 14; starts with {start}); for a custom format without a header (CloudWatch "
                "Logs), pass ", fields_named or setting("fields"), " with the flow log's format")
    n = len(fields)
    # A CloudWatch export leads each record with its event's timestamp: one token more, dropped.
    frame = frame.with_columns(((pl.col("_n") == n + 1) & has_ts).alias("_ts"))
    if frame["_ts"].any():
        frame = frame.with_columns(pl.when(pl.col("_ts")).then(line.str.replace(r"^\S+ ", "")).otherwise(line),
                                   pl.when(pl.col("_ts")).then(pl.col("_n") - 1).otherwise(pl.col("_n")))
    if bad_count := frame.filter(pl.col("_n") != n).height:
        skipped["field_count"] = bad_count
    frame = frame.filter(pl.col("_n") == n)
    parts = line.str.split_exact(" ", n - 1).struct.rename_fields([column_name(f) for f in fields])
    frame = frame.select("line_no", "_ts", parts.alias("_rec")).unnest("_rec")
    cols = [column_name(f) for f in fields]
    frame = frame.with_columns(pl.when(pl.col(c) == "-").then(None).otherwise(pl.col(c)).alias(c) for c in cols)
    ints = [column_name(f) for f in fields if f in INTEGER_FIELDS]
    # A value that is not "-" and not a number, or not an address, makes the whole line unusable: counted, dropped.
    number_ok = pl.all_horizontal(pl.col(c).is_null() | pl.col(c).cast(pl.Int64, strict=False).is_not_null()
                                  for c in ints) if ints else pl.lit(True)
    addrs = [c for c in ("srcaddr", "dstaddr", "pkt_srcaddr", "pkt_dstaddr") if c in frame.columns]
    addr_ok = pl.lit(True)
    for c in addrs:
        distinct = frame[c].drop_nulls().unique()
        bad = distinct.filter(~distinct.str.contains(_ADDRESS))
        if len(bad):
            addr_ok = addr_ok & ~pl.col(c).is_in(bad.implode())
    checked = frame.with_columns(number_ok.alias("_num"), addr_ok.alias("_addr"))
    if bad_n := checked.filter(~pl.col("_num")).height:
        skipped["bad_number"] = bad_n
    if bad_n := checked.filter(pl.col("_num") & ~pl.col("_addr")).height:
        skipped["bad_address"] = bad_n
    good = checked.filter(pl.col("_num") & pl.col("_addr"))
    timestamps = int(good["_ts"].sum())
    good = good.drop("_num", "_addr", "_ts").with_columns(
        *(pl.col(c).cast(pl.Int64) for c in ints), pl.lit(name).alias("file"), pl.col("line_no").cast(pl.UInt32))
    good = _conform(good)
    if good.is_empty():
        reasons = ", ".join(f"{k} {r.replace('_', ' ')}" for r, k in sorted(skipped.items()) if r != "blank")
        raise InputError(f"{name}: no line is a flow log record in the {fields_from} format of {n} fields"
                         + (f" ({reasons})" if reasons else ""))
    return good, _summary(name, fmt, fields, fields_from, lines.height, good, dict(skipped), timestamps)


def _is_name(token: str) -> bool:
    return re.match(_NAME, token.lower()) is not None and not token.isdigit()


def _conform(frame: pl.DataFrame) -> pl.DataFrame:
    """RECORD_SCHEMA columns first, in order and type (null where absent), then any other documented field."""
    cols = []
    for c, dtype in RECORD_SCHEMA.items():
        cols.append(pl.col(c).cast(dtype, strict=False) if c in frame.columns else pl.lit(None, dtype).alias(c))
    extra = [pl.col(c).cast(pl.String) for c in frame.columns if c not in RECORD_SCHEMA and not c.startswith("_")]
    return frame.select(*cols, *extra)


def _summary(name: str, fmt: str, fields: tuple[str, ...], fields_from: str, lines: int, frame: pl.DataFrame,
             skipped: dict[str, int], timestamps: int) -> FlowLogFile:
    status = frame["log_status"]
    span = frame.select(pl.col("start_s").min(), pl.col("end_s").max()).row(0)
    return FlowLogFile(path=name, format=fmt, fields=fields, fields_from=fields_from, lines=lines,
                       records=frame.height, nodata=int((status == "NODATA").sum()),
                       skipdata=int((status == "SKIPDATA").sum()), skipped=dict(sorted(skipped.items())),
                       cloudwatch_timestamps=timestamps, first_start_s=span[0], last_end_s=span[1])
