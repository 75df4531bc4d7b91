"""export-pcap: the chosen connections' packets from both captures as one pcapng, each packet commented."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from natproof.capture import LINKTYPE_NAMES, Record, read_frames
from natproof.diagnose import Finding
from natproof.errors import InputError, setting
from natproof.report.export import atomic_write
from natproof.report.pcapng import PcapngWriter
from natproof.report.table import FATE_LABEL, format_tuple
from natproof.result import CaptureSummary, Result
from natproof.verdicts import Verdict

PROBLEM_SEVERITIES = ("error", "warning")
"""Findings whose connections export-pcap takes by default: the problems (not ``healthy`` or other info)."""


@dataclass(frozen=True)
class Selection:
    """Which connections to export, and in a phrase why."""

    conns: tuple[int, ...]
    """Connection numbers (the ``conn`` column), ascending."""
    why: str


@dataclass(frozen=True)
class ProofSummary:
    """What export-pcap wrote."""

    path: str
    packets: int
    connections: tuple[int, ...]
    interfaces: tuple[str, ...]
    """The if_name of each interface block, in order (block 0 first)."""
    clock_offset_s: float


def _finding_index(spec: str, findings: Sequence[Finding], given: int) -> list[int]:
    """The findings ``finding[given]`` (``--finding``) names: an index as ``natproof diagnose`` lists them (0-based),
    or a kind."""
    listed = ", ".join(f"{i} {f.kind}" for i, f in enumerate(findings)) or "none"
    said = setting("finding", spec, index=given, quoted=False)
    if spec.isdigit():
        if int(spec) >= len(findings):
            raise InputError(said, f": no such finding (the diagnosis's findings: {listed})")
        return [int(spec)]
    hits = [i for i, f in enumerate(findings) if f.kind == spec]
    if not hits:
        raise InputError(said, f": the diagnosis found no {spec} here (its findings: {listed})")
    return hits


def select_connections(result: Result, findings: Sequence[Finding] | None = None, *, conns: Iterable[int] = (),
                       finding: Iterable[str] = (), verdicts: Iterable[str] = (),
                       everything: bool = False) -> Selection:
    """The connections export-pcap writes: those given by number (``conns``), those a diagnosis finding cites
    (``finding``: its index as diagnose lists them, or its kind), those of a verdict (``verdicts``), every one
    (``everything``); each adds to the others. With none of them: the connections the problem findings (errors
    and warnings) cite. ``findings``: the diagnosis (natproof.diagnose.diagnose(result), run here when needed and
    not given). Raises InputError for a connection number the result does not have, a finding it did not find or
    an unknown verdict; an empty selection (nothing matched) is no error: ``conns`` is then ()."""
    conns, finding, verdicts = list(conns), list(finding), list(verdicts)
    known = result.connections.height
    for i, n in enumerate(conns):
        if not 0 <= n < known:
            have = f"#0 to #{known - 1}" if known else "none"
            raise InputError(setting("conns", n, index=i), f": no such connection (the captures' connections are "
                             f"{have})")
    for i, v in enumerate(verdicts):
        if v not in {x.value for x in Verdict}:
            raise InputError(setting("verdicts", v, index=i, quoted=False),
                             f": not a verdict ({', '.join(x.value for x in Verdict)})")
    if findings is None and (finding or not (conns or verdicts or everything)):
        from natproof.diagnose import diagnose

        findings = diagnose(result)
    findings = findings or []
    chosen: set[int] = set(conns)
    why = []
    if conns:
        why.append("--conn")
    for given, spec in enumerate(finding):
        for i in _finding_index(spec, findings, given):
            chosen.update(findings[i].connections)
        why.append(f"--finding {spec}")
    if verdicts:
        chosen.update(result.connections.filter(pl.col("verdict").is_in(verdicts))["conn"].to_list())
        why.append("--verdict " + ", ".join(verdicts))
    if everything:
        chosen.update(range(known))
        why.append("every connection")
    if not why:
        problems = [f for f in findings if f.severity in PROBLEM_SEVERITIES]
        for f in problems:
            chosen.update(f.connections)
        if problems:
            why.append("the connections the diagnosis's errors and warnings cite: "
                       + ", ".join(dict.fromkeys(f.kind for f in problems)))
        else:
            why.append("the diagnosis's errors and warnings cite connections, and it found none: "
                       + (", ".join(f.kind for f in findings) or "no finding"))
    return Selection(tuple(sorted(chosen)), "; ".join(why))


def interface_name(summary: CaptureSummary, role: str) -> str:
    """The interface block's name for an observation point: its role and its interfaces (a split capture), or its
    file's name (a file of one interface)."""
    what = ",".join(summary.interfaces) or Path(summary.path).name or "-"
    return f"{role}:{what}"


def _us(ns: int) -> str:
    """Signed microseconds, three decimals at most: +11.982 us, -3 us."""
    text = f"{ns / 1000:+.3f}".rstrip("0").rstrip(".")
    return f"{text} us"


def _conn_text(row: dict[str, Any]) -> str:
    """``#1 translated: tcp ORIGINAL => TRANSLATED``: what every comment of one connection's packets starts with."""
    orig = format_tuple(row, "orig") or "-"
    trans = format_tuple(row, "trans") or "(no leg after the NAT captured)"
    return f"#{row['conn']} {row['verdict']}: {row['proto']} {orig} => {trans}"


def _direction(initiator: str, is_egress: bool | None, is_icmp_error: bool | None) -> str:
    if is_icmp_error:
        return "ICMP error"
    if is_egress:
        return "egress" if initiator == "inside" else "inbound"
    return "reply"


def proof_packets(result: Result, conns: Sequence[int]) -> pl.DataFrame:
    """Every packet of the connections ``conns``, from both observation points, in time order on the inside clock:
    ``point`` (inside, outside), ``frame_no`` (in its capture), ``ts_ns`` (inside clock: an outside packet's time
    less the clock offset) and ``comment`` (the connection, its verdict and tuples; the packet's frame, direction
    and fate; its counterpart on the other side and how much later (+) or earlier (-) it was seen there, on the
    inside clock). Built from the Result's packet frames and their matches: nothing is matched again, and only the
    selected connections' packets are collected from them (Result.packets)."""
    offset_ns = int(round(result.clock_offset_s * 1e9))
    rows = {r["conn"]: r for r in result.connections.filter(pl.col("conn").is_in(list(conns))).iter_rows(named=True)}
    # A connection's packets carry its anchor (its inside leg) on both sides; with no inside leg (one capture of the
    # outside and a conntrack record) its outside leg's packets are its own.
    by_anchor = {r["inside_conn_id"]: n for n, r in rows.items() if r["inside_conn_id"] is not None}
    by_leg = {r["outside_conn_id"]: n for n, r in rows.items()
              if r["inside_conn_id"] is None and r["outside_conn_id"] is not None}
    owner = pl.col("anchor").replace_strict(by_anchor, default=None, return_dtype=pl.UInt32)
    leg = pl.col("conn_id").replace_strict(by_leg, default=None, return_dtype=pl.UInt32)
    inside = (result.packets("inside").with_columns(owner.alias("owner")).filter(pl.col("owner").is_not_null())
              .collect())
    if result.inside.format == "none":  # the uplink alone: anchor is the connection's outside leg, for all its legs
        leg = pl.col("anchor").replace_strict(by_leg, default=None, return_dtype=pl.UInt32)
    outside = (result.packets("outside").with_columns(pl.when(pl.col("anchor").is_not_null()).then(owner)
                                                      .otherwise(leg).alias("owner") if result.inside.format != "none"
                                                      else leg.alias("owner"))
               .filter(pl.col("owner").is_not_null()).collect())
    # Each outside packet's counterpart: the inside packet(s) matched to it (several when GRO merged segments).
    matched = (result.packets("inside").filter(pl.col("out_frame").is_in(outside["frame_no"].implode()))
               .group_by("out_frame").agg(pl.col("frame_no").sort(), pl.col("dt_ns").sort_by("frame_no").first())
               .collect())
    back = {f: (frames, dt) for f, frames, dt in matched.iter_rows()}
    hair = inside.filter(pl.col("copy_frame").is_not_null()) if "copy_frame" in inside.columns else inside.clear()
    stamps = dict(result.packets("inside").filter(pl.col("frame_no").is_in(hair["copy_frame"].implode()))
                  .select("frame_no", "ts_ns").collect().iter_rows()) if hair.height else {}
    out: list[tuple[str, int, int, str]] = []
    for p in inside.iter_rows(named=True):
        row = rows[p["owner"]]
        text = (f"{_conn_text(row)}; inside frame {p['frame_no']}, "
                f"{_direction(row['initiator'], p['is_egress'], p['is_icmp_error'])}, {FATE_LABEL[p['fate']]}")
        if p["conn_id"] != p["anchor"]:
            if row["initiator"] == "inside":  # hairpin: the copy the pod's port saw again, DNATed and masqueraded
                text += " (hairpin: the copy under the translated tuple)"
            else:  # started outside and mapped anew after idling: this packet crossed under another mapping
                text += " (under another inside tuple: mapped anew after idling)"
        if p["out_frame"] is not None:
            text += f" = outside frame {p['out_frame']}, {_us(p['dt_ns'] - offset_ns)}"
        elif p.get("copy_frame") is not None:  # hairpin: its other copy is in the same capture
            dt = stamps.get(p["copy_frame"])
            text += f" = inside frame {p['copy_frame']}" + ("" if dt is None else f", {_us(dt - p['ts_ns'])}")
        out.append(("inside", p["frame_no"], p["ts_ns"], text))
    for p in outside.iter_rows(named=True):
        row = rows[p["owner"]]
        text = (f"{_conn_text(row)}; outside frame {p['frame_no']}, "
                f"{_direction(row['initiator'], p['is_egress'], p['is_icmp_error'])}, {FATE_LABEL[p['fate']]}")
        if p["frame_no"] in back:
            frames, dt = back[p["frame_no"]]
            more = f" (and {len(frames) - 1} more)" if len(frames) > 1 else ""
            text += f" = inside frame {frames[0]}{more}, {_us(offset_ns - dt)}"
        out.append(("outside", p["frame_no"], p["ts_ns"] - offset_ns, text))
    frame = pl.DataFrame(out, schema={"point": pl.String, "frame_no": pl.UInt32, "ts_ns": pl.Int64,
                                      "comment": pl.String}, orient="row")
    # Time order; a packet and its counterpart at one instant: the inside one first, then by frame.
    return frame.sort("ts_ns", pl.col("point") != "inside", "frame_no")


def _records(result: Result, packets: pl.DataFrame) -> dict[tuple[str, int], Record]:
    """The selected frames of each point, byte for byte from its capture: {(point, frame_no): Record}. Each file is
    read once (one capture of several interfaces holds both points)."""
    wanted: dict[str, dict[int, str]] = {}
    for point, frame_no in packets.select("point", "frame_no").iter_rows():
        path = (result.inside if point == "inside" else result.outside).path
        wanted.setdefault(path, {})[frame_no] = point
    return {(point, f): rec for path, frames in wanted.items()
            for f, rec in read_frames(path, frames).items() for point in (frames[f],)}


def section_comment(result: Result, packets: int, selection: Selection, clock_given: bool = False) -> str:
    """The section header's comment: what the file holds, from where, and on which clock."""
    numbers = ", ".join(f"#{n}" for n in selection.conns)
    sides = [f"{s.path} ({role}{': ' + ','.join(s.interfaces) if s.interfaces else ''})"
             for role, s in (("inside", result.inside), ("outside", result.outside)) if s.path]
    where = " and ".join(dict.fromkeys(sides))
    source = "given (--clock-offset)" if clock_given else "estimated from the matched packets"
    moved = 0.0 - result.clock_offset_s  # never "-0.000000"
    return (f"natproof export-pcap: {packets} packets of {len(selection.conns)} connection(s) ({numbers}; "
            f"{selection.why}) from {where}. Times are on the inside capture's clock: each outside packet's time is "
            f"moved by {moved:+.6f} s (clock offset {result.clock_offset_s:+.6f} s, outside clock "
            f"minus inside, {source}). Each packet's comment: natproof's connection number, verdict, original => "
            "translated tuple (initiator -> responder); the packet's frame in its own capture, its direction and "
            "fate; its counterpart on the other side and how much later (+) or earlier (-) it was seen there.")


def write_proof(result: Result, path: str | os.PathLike[str], selection: Selection, *,
                clock_given: bool = False) -> ProofSummary:
    """Write the selected connections' packets (proof_packets) as one pcapng, atomically: an interface block per
    observation point (per point and link type when a point's frames differ in it: if_name the point's role and
    interfaces or file name, if_description its file), the frames copied byte for byte from the captures, each
    with its comment; the section header's comment says what the file holds and the clock offset applied. Raises
    InputError when the selection is empty (nothing is written)."""
    if not selection.conns:
        raise InputError(f"no connection selected ({selection.why}): nothing written")
    packets = proof_packets(result, selection.conns)
    if packets.is_empty():
        numbers = ", ".join(f"#{n}" for n in selection.conns)
        raise InputError(f"no packet of connection(s) {numbers} in the captures: nothing written")
    records = _records(result, packets)
    from natproof import __version__

    names: list[str] = []

    def write(fh: Any) -> None:
        w = PcapngWriter(fh, section_comment(result, packets.height, selection, clock_given),
                         f"natproof {__version__}")
        ids: dict[tuple[str, int], int] = {}
        per_point = {point: sorted({records[(point, f)].linktype for f in frames})
                     for point, frames in packets.group_by("point").agg("frame_no").iter_rows()}
        for point in ("inside", "outside"):
            summary = result.inside if point == "inside" else result.outside
            for linktype in per_point.get(point, []):
                name = interface_name(summary, point)
                if len(per_point[point]) > 1:
                    name += f" [{LINKTYPE_NAMES.get(linktype, f'LINKTYPE_{linktype}')}]"
                ids[(point, linktype)] = w.add_interface(linktype, name, summary.path)
                names.append(name)
        for point, frame_no, ts_ns, comment in packets.iter_rows():
            rec = records[(point, frame_no)]
            w.write_packet(ids[(point, rec.linktype)], ts_ns, rec.data, rec.wire_len, comment)

    atomic_write(path, write)
    return ProofSummary(str(path), packets.height, selection.conns, tuple(names), result.clock_offset_s)
