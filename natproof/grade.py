"""Grade a class folder of capture submissions: verify's expectations per student, with points and partial credit.

A grading file (TOML) is a list of ``[[expect]]`` tables, each a verify expectations table (natproof.verify: snat_ip,
all, no_verdicts, port_preserved, min_connections, no_leak, [[dnat]], [[connection]]) plus ``points``, an optional
``name`` and an optional ``partial`` rule; ``pod_cidr``, ``swap_penalty`` and ``swapped`` at the top. Any string may
hold ``{student}`` and ``{COLUMN}`` for the columns of an assignments CSV (a ``student`` column, one row per
student), filled per student before the expectations are checked.

Each sub-folder of the class folder is a student (its name the student's id), and so is each capture lying in the
folder itself (``<student>-inside.pcap`` and ``<student>-outside.pcap``, or ``<student>.pcap``: one capture of
several interfaces). A submission that cannot be graded (no capture, one side missing, not a capture, captures that
do not overlap, not two sides of a NAT) gets 0 points and the reason; grading goes on.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from natproof.capture import PCAP_MAGIC, PCAPNG_SHB
from natproof.correlate import SWAPPED_THEM
from natproof.errors import CapturesApart, InputError, NatproofError
from natproof.networks import parse_networks
from natproof.result import Result
from natproof.tomlfile import read_toml
from natproof.verify import EXPECTATION_KEYS, Check, Expectations, _frames, expectations_from_dict, verify

SCHEMA = "natproof.grade/1"
PARTIAL = ("none", "per_connection", "per_check")
"""How a failed [[expect]] earns part of its points: none (all or nothing), per_connection (points times the share of
the connections each of its checks is about that satisfy it, averaged over its checks), per_check (points times the
share of its checks that hold)."""
SWAPPED = ("grade", "zero")
"""What a submission whose captures are named the wrong way round gets: graded the right way round with
``swap_penalty`` points off (grade), or 0 points (zero)."""
GRADING_KEYS = ("pod_cidr", "swap_penalty", "swapped", "expect")
EXPECT_KEYS = ("name", "points", "partial", *(k for k in EXPECTATION_KEYS if k != "pod_cidr"))
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
"""File names that are captures (also with .gz); other files count when they start like a capture."""
LINKS_FILES = ("links.txt", "ip-link.txt")
"""``ip -o link`` output next to one capture of several interfaces names its interface indexes."""
NOT_TWO_SIDES = ("not_two_sides", "same_place")
"""diagnose findings that say the captures are not the two sides of one NAT."""
CROSSED = ("translated", "no_reply", "reply_dropped", "reply_other_path")
"""Verdicts of connections that crossed the NAT: natproof's swap detection reads them."""
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INSIDE = re.compile(r"inside|veth|cni|lxc|cali")
_OUTSIDE = re.compile(r"outside|(?<![a-z])eth\d*|uplink|(?<![a-z])en[sop]\d")


# -- the grading file and the assignments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GradedExpectation:
    """One [[expect]] of a grading file: verify keys (templates unfilled), its points and partial credit rule."""

    name: str
    points: float
    partial: str
    table: Mapping[str, Any]
    """The verify keys of the [[expect]] table, as written (``{student}``, ``{COLUMN}`` unfilled)."""


@dataclass(frozen=True)
class Grading:
    """A grading file read (load_grading), with its assignments."""

    path: str
    expectations: tuple[GradedExpectation, ...]
    pod_cidr: str | None = None
    """A template, as written."""
    swap_penalty: float = 0.0
    swapped: str = "grade"
    assignments: Mapping[str, Mapping[str, str]] | None = None
    """Per student, the assignments CSV's row (column -> value)."""
    assignments_path: str | None = None
    columns: tuple[str, ...] = ()
    """The assignments CSV's columns (``student`` first)."""

    @property
    def max_points(self) -> float:
        return _round(sum(e.points for e in self.expectations))

    @property
    def placeholders(self) -> frozenset[str]:
        """The ``{KEY}`` names the grading file uses."""
        found: set[str] = set()
        for value in (self.pod_cidr, *(e.table for e in self.expectations)):
            _collect(value, found)
        return frozenset(found)

    def values_for(self, student: str) -> dict[str, str] | None:
        """What ``{KEY}`` becomes for ``student``; None when the file needs a column of the assignments and the
        student has no row there."""
        row = dict(self.assignments.get(student, {})) if self.assignments is not None else {}
        if self.placeholders - {"student"} and student not in (self.assignments or {}):
            return None
        row["student"] = student
        return row

    def for_student(self, student: str) -> tuple[list[tuple[GradedExpectation, Expectations]], str | None]:
        """Each [[expect]] filled in for ``student`` (verify's Expectations), and the pod_cidr. InputError when a
        filled-in value is not what verify takes (a student's address that is not one) or the student has no row in
        the assignments the file needs."""
        values = self.values_for(student)
        if values is None:
            raise InputError(f"{self.assignments_path or 'assignments'}: no row for student {student!r}")
        where = f"{self.path} (for student {student})"
        out = []
        for e in self.expectations:
            spot = f"{where}: [[expect]] {e.name!r}"
            try:
                exp, _ = expectations_from_dict(_fill(dict(e.table), values), spot, known=EXPECT_KEYS)
            except InputError as exc:  # verify's own checks of a value (an address) do not say where it was
                raise exc if str(exc).startswith(spot) else exc.reworded(f"{spot}: ") from None
            if exp.is_empty():  # port_preserved = false, min_connections = 0: points for nothing
                raise InputError(f"{spot}: checks nothing (port_preserved = false and min_connections = 0 check "
                                 "nothing)")
            out.append((e, exp))
        cidr = _fill(self.pod_cidr, values) if self.pod_cidr is not None else None
        if cidr is not None:
            parse_networks(cidr, option=f"{where}: pod_cidr")
        return out, cidr


def _collect(value: Any, found: set[str]) -> None:
    if isinstance(value, str):
        found.update(_PLACEHOLDER.findall(value))
    elif isinstance(value, Mapping):
        for v in value.values():
            _collect(v, found)
    elif isinstance(value, list):
        for v in value:
            _collect(v, found)


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    """Every string in ``value`` with ``{KEY}`` replaced by ``values[KEY]``."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    if isinstance(value, Mapping):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    return value


def read_assignments(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, str]], tuple[str, ...]]:
    """An assignments CSV: a header with a ``student`` column and any others (snat_ip, pod_ip, ...), one row per
    student. Returns {student: {column: value}} and the columns. InputError for a file without a student column,
    a row without a student, two rows of one student, or a column name that cannot be a ``{KEY}``."""
    where = os.fspath(path)
    try:
        text = Path(where).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{where}: is a directory, not an assignments CSV") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not an assignments CSV: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{where}: cannot read it: {exc.strerror}") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(f"{where}: not a CSV file ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{where}: empty: give a header line with a student column (e.g. student,snat_ip,pod_ip)")
    header = tuple(c.strip() for c in rows[0])
    if "student" not in header:
        raise InputError(f"{where}: no 'student' column in its header line ({', '.join(header)}); e.g. "
                         "student,snat_ip,pod_ip")
    for name in header:
        if not _COLUMN.fullmatch(name):
            raise InputError(f"{where}: column {name!r} is not a name a grading file can use as {{KEY}} (letters, "
                             "digits and _)")
        if header.count(name) > 1:
            raise InputError(f"{where}: column {name!r} appears twice")
    out: dict[str, dict[str, str]] = {}
    for line, r in enumerate(rows[1:], 2):
        if len(r) != len(header):
            raise InputError(f"{where}: row {line} has {len(r)} value(s) for {len(header)} column(s)")
        row = {k: v.strip() for k, v in zip(header, r, strict=True)}
        student = row.pop("student")
        if not student:
            raise InputError(f"{where}: row {line} has no student")
        if student in out:
            raise InputError(f"{where}: row {line}: student {student!r} has a row already")
        out[student] = row
    return out, ("student", *(c for c in header if c != "student"))


def load_grading(path: str | os.PathLike[str], assignments: str | os.PathLike[str] | None = None) -> Grading:
    """Read a grading file (TOML) and its assignments CSV; every student of the assignments gets their
    expectations filled in now, so a bad file or value is an InputError before any capture is read.

    ```
    pod_cidr = "10.244.0.0/16"
    swap_penalty = 1          # points off captures named the wrong way round (swapped = "zero": 0 points)
    [[expect]]
    name = "SNAT address"
    points = 4
    snat_ip = "{snat_ip}"     # the student's row of the assignments CSV
    [[expect]]
    name = "all translated"
    points = 3
    all = "translated"
    partial = "per_connection"
    ```
    """
    where = os.fspath(path)
    doc = read_toml(where, "a grading file (TOML)")
    unknown = sorted(set(doc) - set(GRADING_KEYS))
    if unknown:
        hint = (" (expectations go in [[expect]] tables, each with points)"
                if set(unknown) & set(EXPECTATION_KEYS) else "")
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} at the top (known: "
                         f"{', '.join(GRADING_KEYS)}){hint}")
    blocks = doc.get("expect")
    if not blocks:
        raise InputError(f"{where}: no [[expect]] table: give each expectation as [[expect]] with points and what "
                         "verify checks (snat_ip, all, ...)")
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise InputError(f"{where}: expect: write each expectation as an [[expect]] table")
    penalty = doc.get("swap_penalty", 0)
    if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not math.isfinite(penalty) or penalty < 0:
        raise InputError(f"{where}: swap_penalty must be a number of points, 0 or more")
    swapped = doc.get("swapped", "grade")
    if swapped not in SWAPPED:
        raise InputError(f"{where}: swapped must be \"grade\" (graded, swap_penalty points off) or \"zero\"")
    cidr = doc.get("pod_cidr")
    if cidr is not None and not isinstance(cidr, str):
        raise InputError(f"{where}: pod_cidr must be a CIDR in quotes (e.g. \"10.244.0.0/16\")")
    expectations: list[GradedExpectation] = []
    names: dict[str, int] = {}
    for i, b in enumerate(blocks, 1):
        spot = f"{where}: [[expect]] #{i}"
        bad = sorted(set(b) - set(EXPECT_KEYS))
        if bad:
            raise InputError(f"{spot}: unknown key(s) {', '.join(bad)} (known: {', '.join(EXPECT_KEYS)})")
        points = b.get("points")
        if isinstance(points, bool) or not isinstance(points, int | float) or not math.isfinite(points) or points < 0:
            given = "no points given" if points is None else f"points = {points!r} is not a number, 0 or more"
            raise InputError(f"{spot}: {given} (e.g. points = 2)")
        partial = b.get("partial", "none")
        if partial not in PARTIAL:
            raise InputError(f"{spot}: partial must be one of {', '.join(PARTIAL)}")
        table = {k: v for k, v in b.items() if k not in ("name", "points", "partial")}
        if not table:
            raise InputError(f"{spot}: nothing to check: give what verify checks (snat_ip, all, no_verdicts, "
                             "port_preserved, min_connections, no_leak, [[expect.dnat]], [[expect.connection]])")
        name = b.get("name", " + ".join(table))
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{spot}: name must be a string")
        if name in names:
            if "name" in b:
                raise InputError(f"{spot}: name {name!r} is [[expect]] #{names[name]}'s too; each needs its own")
            n = 2
            while f"{name} ({n})" in names:
                n += 1
            name = f"{name} ({n})"
        names[name] = i
        expectations.append(GradedExpectation(name, float(points), partial, table))
    roster, columns = read_assignments(assignments) if assignments is not None else (None, ())
    grading = Grading(path=where, expectations=tuple(expectations), pod_cidr=cidr, swap_penalty=float(penalty),
                      swapped=swapped, assignments=roster,
                      assignments_path=None if assignments is None else os.fspath(assignments), columns=columns)
    known = set(columns) | {"student"}
    for key in sorted(grading.placeholders):
        if key not in known:
            source = (f"a column of {os.fspath(assignments)} (columns: {', '.join(columns)})" if assignments
                      is not None else "filled without --assignments FILE (only {student} is)")
            raise InputError(f"{where}: {{{key}}} is not {source}")
    # Every student of the assignments now: a bad value is the grader's to fix, before any capture is read. Without
    # assignments a file that uses no {student} is checked once; one that does, per student as it is graded (a
    # folder name that makes no address is that submission's reason).
    for student in roster if roster is not None else ([] if grading.placeholders else ["student"]):
        grading.for_student(student)
    return grading


# -- submissions -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """What one student handed in: the captures found, and any other files."""

    student: str
    captures: tuple[Path, ...] = ()
    others: tuple[Path, ...] = ()
    folder: Path | None = None
    """The student's sub-folder, or None for files lying in the class folder."""


def _base_name(name: str) -> str | None:
    """A capture file's name without its suffix (and .gz), or None when the name is no capture's."""
    low = name.lower()
    if low.endswith(".gz"):
        low, name = low[:-3], name[:-3]
    for suffix in CAPTURE_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return name[:-len(suffix)]
    return None


def _starts_like_capture(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in PCAP_MAGIC or head == PCAPNG_SHB


def is_capture_file(path: Path) -> bool:
    """A capture by its name (.pcap, .pcapng, .cap, with or without .gz) or its first bytes."""
    return path.is_file() and (_base_name(path.name) is not None or _starts_like_capture(path))


def side_of(name: str) -> str | None:
    """"inside" or "outside" as a capture's file name says (inside, veth*, cni*; outside, eth0, ens*), else None."""
    stem = (_base_name(name) or name).lower()
    inside, outside = bool(_INSIDE.search(stem)), bool(_OUTSIDE.search(stem))
    return "inside" if inside and not outside else "outside" if outside and not inside else None


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def find_submissions(class_dir: str | os.PathLike[str]) -> tuple[dict[str, Submission], tuple[str, ...]]:
    """Every student of a class folder: each sub-folder (its name the student), and the captures lying in the
    folder itself, grouped by student (``alice-inside.pcap`` and ``alice-outside.pcap``: alice; ``bob.pcap``: bob).
    Returns {student: Submission} and the names of the class folder's other files (not graded). Hidden files and
    folders are left out. InputError when ``class_dir`` is no folder."""
    root = Path(class_dir)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (give the class folder: one sub-folder or file pair per student)")
    try:
        entries = sorted(p for p in root.iterdir() if _visible(p))
    except OSError as exc:
        raise InputError(f"{root}: cannot read it: {exc.strerror}") from None
    found: dict[str, dict[str, Any]] = {}
    ignored = []
    for p in entries:
        if p.is_dir():
            entry = found.setdefault(p.name, {"captures": [], "others": [], "folder": None})
            entry["folder"] = p
            for q in _folder_files(p):
                entry["captures" if is_capture_file(q) else "others"].append(q)
        elif is_capture_file(p):
            entry = found.setdefault(_loose_student(p.name), {"captures": [], "others": [], "folder": None})
            entry["captures"].append(p)
        else:
            ignored.append(p.name)
    subs = {s: Submission(s, tuple(e["captures"]), tuple(e["others"]), e["folder"])
            for s, e in sorted(found.items(), key=lambda kv: _natural(kv[0]))}
    return subs, tuple(ignored)


def _folder_files(folder: Path) -> list[Path]:
    """A student folder's files; when none of them is a capture, those of its sub-folders too (a submission
    unpacked into a folder of its own: alice/lab3/inside.pcap)."""
    try:
        files = sorted(q for q in folder.iterdir() if _visible(q) and q.is_file())
    except OSError:
        return []
    if any(is_capture_file(q) for q in files):
        return files
    deeper = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if Path(dirpath) != folder:
            deeper += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return files + [q for q in deeper if q.is_file()]


def _loose_student(name: str) -> str:
    """The student a capture lying in the class folder belongs to: ``alice-inside.pcap`` -> alice (the part
    before the last - or _ when what follows names a side), else the name without its suffix."""
    stem = _base_name(name) or name
    m = re.fullmatch(r"(.+)[-_.]([^-_.]+)", stem)
    if m and side_of(m.group(2)):
        return m.group(1)
    return stem


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


# -- grades ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationGrade:
    """One [[expect]] for one student: its points, result (pass, partial, fail; None when the submission was not
    graded), verify's checks and the failing evidence (frames as Wireshark numbers them)."""

    name: str
    points: float
    max_points: float
    result: str | None
    checks: tuple[Check, ...] = ()
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "points": _num(self.points), "max_points": _num(self.max_points),
                "result": self.result, "checks": [{**c.to_dict(), "held": c.held, "of": c.of} for c in self.checks],
                "evidence": list(self.evidence)}


@dataclass(frozen=True)
class StudentGrade:
    """One student's grade: points of max_points, each expectation's, and why it was not graded (``reason``: 0
    points) or what was noted while grading (``notes``: captures swapped, sides told apart from the traffic)."""

    student: str
    points: float
    max_points: float
    expectations: tuple[ExpectationGrade, ...]
    reason: str | None = None
    notes: tuple[str, ...] = ()
    inside: str | None = None
    """The capture graded as the inside (relative to the class folder), or the one capture of several interfaces."""
    outside: str | None = None
    penalty: float = 0.0

    @property
    def graded(self) -> bool:
        return self.reason is None

    @property
    def evidence(self) -> tuple[str, ...]:
        """Every failing expectation's evidence, each line led by the expectation's name."""
        return tuple(f"{e.name}: {line}" for e in self.expectations for line in e.evidence)

    def to_dict(self) -> dict[str, Any]:
        return {"student": self.student, "points": _num(self.points), "max_points": _num(self.max_points),
                "graded": self.graded, "reason": self.reason, "notes": list(self.notes),
                "inside": self.inside, "outside": self.outside, "penalty": _num(self.penalty),
                "expectations": [e.to_dict() for e in self.expectations]}


def _round(x: float) -> float:
    return round(x + 0.0, 2)


def _num(x: float) -> int | float:
    """A whole number of points as an int (4, not 4.0)."""
    return int(x) if float(x).is_integer() else _round(x)


def points_text(x: float) -> str:
    return str(_num(x))


class _NotGraded(Exception):
    """A submission that cannot be graded; the message is the reason."""


def grade_class(class_dir: str | os.PathLike[str], grading: Grading, *, tolerance_s: float = 1.0,
                decoder: str = "auto", services: Any = None,
                progress: Callable[[StudentGrade], None] | None = None) -> list[StudentGrade]:
    """Grade every student of ``class_dir`` (find_submissions) and every student of the assignments (one with no
    submission gets 0 points), in the order of their names. A submission that cannot be graded gets 0 points and
    the reason; only a class folder that is none raises (InputError). ``progress`` is called with each grade."""
    subs, _ = find_submissions(class_dir)
    root = Path(class_dir)
    students = dict(subs)
    for s in grading.assignments or {}:
        students.setdefault(s, Submission(s))
    out = []
    for student in sorted(students, key=_natural):
        g = grade_submission(students[student], grading, root=root, tolerance_s=tolerance_s, decoder=decoder,
                             services=services)
        out.append(g)
        if progress is not None:
            progress(g)
    return out


def grade_submission(sub: Submission, grading: Grading, *, root: Path | None = None, tolerance_s: float = 1.0,
                     decoder: str = "auto", services: Any = None) -> StudentGrade:
    """One student's grade (see grade_class)."""
    root = root if root is not None else (sub.folder.parent if sub.folder else Path("."))
    notes: list[str] = []
    where: dict[str, str | None] = {"inside": None, "outside": None}
    try:
        grades, swapped = _grade(sub, grading, root, tolerance_s, decoder, services, notes, where)
    except _NotGraded as why:
        return StudentGrade(sub.student, 0.0, grading.max_points,
                            tuple(ExpectationGrade(e.name, 0.0, e.points, None) for e in grading.expectations),
                            reason=_relative(str(why), root), notes=tuple(_relative(n, root) for n in notes),
                            inside=where["inside"], outside=where["outside"])
    total = sum(g.points for g in grades)
    penalty = min(grading.swap_penalty, total) if swapped and grading.swapped == "grade" else 0.0
    return StudentGrade(sub.student, _round(max(0.0, total - penalty)), grading.max_points, tuple(grades),
                        notes=tuple(_relative(n, root) for n in notes), inside=where["inside"],
                        outside=where["outside"], penalty=_round(penalty))


def _grade(sub: Submission, grading: Grading, root: Path, tolerance_s: float, decoder: str, services: Any,
           notes: list[str], where: dict[str, str | None]) -> tuple[list[ExpectationGrade], bool]:
    """Each [[expect]]'s grade and whether the captures were swapped; _NotGraded with the reason, for what natproof
    cannot use and for a bug of its own on this submission (the class goes on)."""
    try:
        if grading.values_for(sub.student) is None:
            raise _NotGraded(f"no row for {sub.student!r} in {grading.assignments_path}: nothing to fill "
                             f"{', '.join('{' + k + '}' for k in sorted(grading.placeholders - {'student'}))} with")
        filled, cidr = grading.for_student(sub.student)
        result, where["inside"], where["outside"], swapped = _correlate_submission(
            sub, root, cidr, tolerance_s, decoder, services, notes)
        if swapped:
            if grading.swapped == "zero":
                raise _NotGraded(swapped.replace("graded the right way round", 'not graded (swapped = "zero")'))
            notes.append(swapped + (f": {points_text(grading.swap_penalty)} point(s) off" if grading.swap_penalty
                                    else ""))
        notes.extend(capture_warnings(result))
        _two_sides(result)
        rows = {r["conn"]: r for r in result.connections.iter_rows(named=True)}
        return [_grade_expectation(e, verify(result, exp), rows) for e, exp in filled], bool(swapped)
    except (_NotGraded, MemoryError, KeyboardInterrupt):
        raise
    except NatproofError as exc:
        raise _NotGraded(exc.for_command_line()) from None
    except Exception as exc:  # noqa: BLE001 - one submission's bug must not stop the class's grading
        raise _NotGraded(f"natproof failed on it (internal error: {type(exc).__name__}: {exc}; run natproof "
                         "correlate on these files with --traceback and report it)") from None


def capture_warnings(result: Result) -> list[str]:
    """What correlate warned of in the captures graded (one cut short, a snaplen that cut packets, ...), each as the
    command line says it (``PATH: warning``; once for a file that is both points): the student's grade notes them.
    The warning that the sides were swapped is left out: grade asked for the swap (allow_swap) and notes it itself."""
    said = (f"{cap.path}: {w}" for cap in (result.inside, result.outside) if cap.path for w in cap.warnings
            if not w.endswith(SWAPPED_THEM))
    return list(dict.fromkeys(said))


def _relative(text: str, root: Path) -> str:
    """Paths under the class folder without it: ``alice/inside.pcap``."""
    for base in {os.fspath(root), os.path.abspath(root)}:
        if base not in (".", ""):
            text = text.replace(base.rstrip(os.sep) + os.sep, "")
    return text


def _rel(path: Path, root: Path) -> str:
    try:
        return os.fspath(path.relative_to(root))
    except ValueError:
        return os.fspath(path)


def _correlate_submission(sub: Submission, root: Path, cidr: str | None, tolerance_s: float, decoder: str,
                          services: Any, notes: list[str]) -> tuple[Result, str | None, str | None, str | None]:
    """The correlation to grade, the files graded as inside and outside, and why the student's captures were
    swapped (None when they were not, or were not named as sides)."""
    import natproof

    where = f"{sub.student}/" if sub.folder is not None else f"{sub.student}'s files"
    caps = list(sub.captures)
    if not caps:
        if sub.folder is None:
            raise _NotGraded("no submission: no folder or capture of this student in the class folder")
        if not sub.others:
            raise _NotGraded(f"{where}: empty folder, nothing submitted")
        raise _NotGraded(f"{where}: no capture file (found {', '.join(_rel(p, root) for p in sub.others)})")
    kw: dict[str, Any] = dict(pod_cidr=cidr, tolerance_s=tolerance_s, decoder=decoder, services=services,
                              allow_swap=True)
    if len(caps) > 2:
        ins = [p for p in caps if side_of(p.name) == "inside"]
        outs = [p for p in caps if side_of(p.name) == "outside"]
        if len(ins) != 1 or len(outs) != 1:
            raise _NotGraded(f"{where}: {len(caps)} captures ({', '.join(_rel(p, root) for p in caps)}) and no one "
                             "pair named inside and outside to grade")
        notes.append(f"graded {_rel(ins[0], root)} and {_rel(outs[0], root)}; left out "
                     f"{', '.join(_rel(p, root) for p in caps if p not in (ins[0], outs[0]))}")
        caps = [ins[0], outs[0]]
    if len(caps) == 1:
        only = caps[0]
        links = next((q for q in sub.others if q.name in LINKS_FILES), None)
        try:
            result = _run(natproof.correlate, only, None, interfaces=links, **kw)
        except _NotGraded as exc:
            if "a capture of one interface" not in str(exc):
                raise
            side = side_of(only.name)
            missing = {"inside": "the outside capture", "outside": "the inside capture"}.get(
                side or "", "the other side's capture")
            raise _NotGraded(f"{_rel(only, root)} only, a capture of one interface: {missing} is missing") from None
        chose = (f"one capture of several interfaces: inside {','.join(result.inside.interfaces)}, outside "
                 f"{','.join(result.outside.interfaces)}")
        notes.append(chose)
        return result, _rel(only, root), None, None
    a, b = caps
    named = {side_of(a.name), side_of(b.name)} == {"inside", "outside"}
    if named and side_of(a.name) == "outside":
        a, b = b, a
    result = _run(natproof.correlate, a, b, **kw)
    given_inside = os.path.samefile(result.inside.path, a) if result.inside.path else True
    inside, outside = (a, b) if given_inside else (b, a)
    if not named:
        crossed = result.connections.filter(pl.col("verdict").is_in(CROSSED)).height
        how = ("told apart from the traffic" if crossed
               else "not told apart (nothing crossed the NAT), taken in name order")
        notes.append(f"sides {how}: {_rel(inside, root)} is the inside, {_rel(outside, root)} the outside")
        return result, _rel(inside, root), _rel(outside, root), None
    swapped = None
    if not given_inside:
        swapped = (f"{_rel(a, root)} and {_rel(b, root)} are swapped: {_rel(b, root)} holds the inside (pod side), "
                   "graded the right way round")
    return result, _rel(inside, root), _rel(outside, root), swapped


def _run(correlate: Callable[..., Result], *args: Any, **kw: Any) -> Result:
    """natproof.correlate; what it cannot use is the reason the submission is not graded."""
    try:
        return correlate(*args, **kw)
    except NatproofError as exc:
        # A reason in the command's words, as grade's own are; for captures that do not overlap, the fact without
        # correlate's advice, which names an option grade does not take.
        raise _NotGraded(exc.apart if isinstance(exc, CapturesApart) else exc.for_command_line()) from None


def _two_sides(result: Result) -> None:
    """0 points when diagnose says the captures are not the two sides of one NAT."""
    from natproof.diagnose import diagnose

    for f in diagnose(result):
        if f.kind in NOT_TWO_SIDES:
            raise _NotGraded(f"not two sides of a NAT: {f.title} ({f.summary})")


def _grade_expectation(e: GradedExpectation, checks: list[Check], rows: Mapping[int, dict[str, Any]]
                       ) -> ExpectationGrade:
    if all(c.passed for c in checks):
        share = 1.0
    elif e.partial == "per_check":
        share = sum(c.passed for c in checks) / len(checks)
    elif e.partial == "per_connection":
        share = sum(1.0 if c.passed else (c.held / c.of if c.of else 0.0) for c in checks) / len(checks)
    else:
        share = 0.0
    points = _round(e.points * share)
    result = "pass" if share == 1.0 else "partial" if points > 0 else "fail"
    evidence = []
    for c in checks:
        if c.passed:
            continue
        # The expectation's name leads each line (StudentGrade.evidence): a check's own only when it has several.
        evidence.append(f"{c.name + ': ' if len(checks) > 1 else ''}expected {c.expected}, got {c.actual}")
        evidence += [_cite(line, rows) for line in c.evidence]
    return ExpectationGrade(e.name, points, e.points, result, tuple(checks), tuple(evidence))


def _cite(line: str, rows: Mapping[int, dict[str, Any]]) -> str:
    """verify's evidence line with the frames of its connection's first packet in each capture, when it has none."""
    m = re.match(r"#(\d+) ", line)
    if m is None or "frame" in line or int(m.group(1)) not in rows:
        return line
    return line + _frames(rows[int(m.group(1))])


# -- output ----------------------------------------------------------------------------------------------------------


def grades_document(grades: Iterable[StudentGrade], grading: Grading, class_dir: str | os.PathLike[str],
                    ignored: Iterable[str] = ()) -> dict[str, Any]:
    """The natproof.grade/1 document: the grading (expectations with points), the class, one object per student."""
    grades = list(grades)
    return {
        "schema": SCHEMA,
        "class": os.fspath(class_dir),
        "grading": grading.path,
        "assignments": grading.assignments_path,
        "max_points": _num(grading.max_points),
        "swapped": grading.swapped,
        "swap_penalty": _num(grading.swap_penalty),
        "expectations": [{"name": e.name, "points": _num(e.points), "partial": e.partial} for e in
                         grading.expectations],
        "summary": class_summary(grades, grading),
        "students": [g.to_dict() for g in grades],
        "ignored": list(ignored),
    }


def class_summary(grades: list[StudentGrade], grading: Grading) -> dict[str, Any]:
    n = len(grades)
    return {"students": n, "graded": sum(g.graded for g in grades), "not_graded": sum(not g.graded for g in grades),
            "full_marks": sum(g.graded and g.points == grading.max_points for g in grades),
            "mean": _num(_round(sum(g.points for g in grades) / n)) if n else None}


CSV_FIXED = ("student", "points", "max_points")


def csv_columns(grading: Grading) -> list[str]:
    cols = list(CSV_FIXED)
    for e in grading.expectations:
        cols += [f"{e.name} points", f"{e.name} result"]
    return [*cols, "reason", "evidence"]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""How a cell a spreadsheet would run as a formula starts (OWASP, CSV injection)."""


def _text_cell(text: str) -> str:
    """A text cell of grades.csv, with a ' before it where a spreadsheet would run it as a formula: a student's
    folder is named by the student (a trial named one =HYPERLINK(1))."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def grades_csv(grades: Iterable[StudentGrade], grading: Grading) -> str:
    """One row per student: student, points, max_points, each expectation's points and result (pass, partial, fail;
    empty when not graded), the reason (why not graded, or what was noted) and the failing evidence (`` | ``
    between lines). A text cell that would start a formula (=, +, -, @) starts with ' instead."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(csv_columns(grading))
    for g in grades:
        row: list[Any] = [_text_cell(g.student), points_text(g.points), points_text(g.max_points)]
        for e in g.expectations:
            row += [points_text(e.points), e.result or ""]
        row += [_text_cell(g.reason or "; ".join(g.notes)), _text_cell(" | ".join(g.evidence))]
        w.writerow(row)
    return buf.getvalue()


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#1b1f24}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f6f8fa}td.n{text-align:right;white-space:nowrap}.mono{font-family:ui-monospace,monospace}
.pass{background:#dafbe1}.partial{background:#fff8c5}.fail{background:#ffebe9}.none{color:#57606a}
.reason{color:#b42318}.note{color:#57606a}details{margin:.2em 0}summary{cursor:pointer}
"""


def _files_html(g: StudentGrade) -> str:
    if g.outside is None:
        return f"graded <span class='mono'>{_e(g.inside)}</span>"
    return (f"graded <span class='mono'>{_e(g.inside)}</span> as the inside, <span class='mono'>{_e(g.outside)}"
            "</span> as the outside")


def grades_html(grades: Iterable[StudentGrade], grading: Grading, class_dir: str | os.PathLike[str]) -> str:
    """A self-contained page: a row per student (points, each expectation's result, the reason), then each
    student's failing evidence. No script, nothing loaded from elsewhere."""
    grades = list(grades)
    s = class_summary(grades, grading)
    heads = "".join(f"<th>{_e(e.name)}<br><span class='note'>{points_text(e.points)} pt"
                    f"{'' if e.partial == 'none' else ', ' + _e(e.partial.replace('_', ' '))}</span></th>"
                    for e in grading.expectations)
    rows = []
    for g in grades:
        cells = "".join(
            f"<td class='{e.result or 'none'} n'>{_e(e.result or '-')} {points_text(e.points)}</td>"
            if e.result else "<td class='none n'>-</td>" for e in g.expectations)
        why = (f"<span class='reason'>{_e(g.reason)}</span>" if g.reason else
               "<br>".join(f"<span class='note'>{_e(n)}</span>" for n in g.notes))
        link = f"<a href='#s-{_e(g.student)}'>{_e(g.student)}</a>" if g.evidence else _e(g.student)
        rows.append(f"<tr><td class='mono'>{link}</td><td class='n'><strong>{points_text(g.points)}</strong> / "
                    f"{points_text(g.max_points)}</td>{cells}<td>{why}</td></tr>")
    details = []
    for g in grades:
        if not g.evidence:
            continue
        items = []
        for e in g.expectations:
            if e.evidence:
                lines = "".join(f"<li class='mono'>{_e(x)}</li>" for x in e.evidence)
                items.append(f"<details><summary>{_e(e.name)}: {_e(e.result)} {points_text(e.points)} of "
                             f"{points_text(e.max_points)}</summary><ul>{lines}</ul></details>")
        details.append(f"<h2 id='s-{_e(g.student)}'>{_e(g.student)}: {points_text(g.points)} of "
                       f"{points_text(g.max_points)}</h2>"
                       f"<p class='note'>{_files_html(g)}</p>{''.join(items)}")
    mean = "-" if s["mean"] is None else s["mean"]
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>NAT proof: grades of {_e(os.fspath(class_dir))}</title><style>{_CSS}</style></head><body>",
        f"<h1>NAT proof: grades of <span class='mono'>{_e(os.fspath(class_dir))}</span></h1>",
        f"<p>{s['students']} students against <span class='mono'>{_e(grading.path)}</span>"
        + (f" and <span class='mono'>{_e(grading.assignments_path)}</span>" if grading.assignments_path else "")
        + f": {s['full_marks']} with full marks, {s['not_graded']} not graded (0 points, the reason given); mean "
        f"{mean} of {points_text(grading.max_points)}.</p>",
        f"<table><thead><tr><th>student</th><th>points</th>{heads}<th>reason</th></tr></thead><tbody>",
        *rows, "</tbody></table>", *details,
        f"<footer><p class='note'>{SCHEMA}</p></footer></body></html>\n",
    ])

