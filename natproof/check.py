"""Compare a correlation with a ground-truth document (natproof.truth/1): what matched, what did not; and with the
kernel's conntrack record beside it (``natproof lab check --conntrack``)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from natproof.errors import InputError
from natproof.result import Result, connection_dicts

TRUTH_SCHEMA = "natproof.truth/1"

Tuple4 = tuple[str, int, str, int]


def _key(c: dict[str, Any]) -> tuple[str, str, Tuple4]:
    """Truth and result pair on protocol and inside tuple (the outside one where no inside leg exists)."""
    side = "inside" if c.get("inside") else "outside"
    i = c[side]
    return c["proto"], side, (i["src"], int(i["sport"]), i["dst"], int(i["dport"]))


COMPARED = ("initiator", "original", "translated", "rewrites", "service", "other_capture_off")
"""Fields of natproof.correlate/2 a truth connection may give (docs/model.md); each one given is compared.
``other_capture_off`` is one of natproof's ``flags``."""


SINGLE_FILE_FIELDS = ("verdict", "outside", *COMPARED)
"""Fields a truth connection may give again as ``single_file_<field>``, for the run's capture of every interface
(any.pcap, node.pcapng) where that capture proves more than the two files: compare() takes them in its place."""


def _differs(truth: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """The contract fields the truth gives that natproof got otherwise (rewrites compared as a set)."""
    out = []
    for f in COMPARED:
        if f not in truth:
            continue
        want, have = truth[f], got.get(f)
        if f == "rewrites":
            want, have = sorted(want or []), sorted(have or [])
        elif f == "other_capture_off":
            want, have = bool(want), f in (got.get("flags") or [])
        if not _given_match(want, have):
            out.append(f)
    return out


def _given_match(want: Any, have: Any) -> bool:
    """``have`` agrees with every field ``want`` gives, object by object: fields a result adds (the names of a named
    result: service.name, service.backend.pod) are no difference."""
    if isinstance(want, dict) and isinstance(have, dict):
        return all(k in have and _given_match(v, have[k]) for k, v in want.items())
    return bool(want == have)


def _outside(c: dict[str, Any]) -> Tuple4 | None:
    o = c.get("outside")
    return None if o is None else (o["src"], int(o["sport"]), o["dst"], int(o["dport"]))


@dataclass
class CheckReport:
    """How a correlation compares with the truth."""

    expected: int = 0
    """Connections in the truth."""
    found: int = 0
    """Truth connections natproof reported (same protocol and inside tuple)."""
    mapping_right: int = 0
    """Found connections whose outside tuple (and every contract field the truth gives: COMPARED) is the
    truth's."""
    verdict_right: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)
    wrong: list[dict[str, Any]] = field(default_factory=list)
    """Found connections with another outside tuple or verdict: {"truth": ..., "natproof": ...}."""
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    """Connections natproof reported that the truth does not list."""
    kernel: KernelReport | None = None
    """How the same connections agree with the kernel's record (check_case with ``conntrack``); None when not
    asked."""
    warnings: list[str] = field(default_factory=list)
    """What reading the captures warned of (a last record cut short, an unknown link type): a comparison that
    fails beside one is about the file as much as about natproof."""

    @property
    def truth_ok(self) -> bool:
        """The comparison with the truth alone."""
        return not self.missing and not self.wrong and not self.unexpected and self.found == self.expected

    @property
    def ok(self) -> bool:
        return self.truth_ok and (self.kernel is None or self.kernel.ok)

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "ok": self.ok, "expected": self.expected, "found": self.found, "mapping_right": self.mapping_right,
            "verdict_right": self.verdict_right, "missing": self.missing, "wrong": self.wrong,
            "unexpected": self.unexpected, "warnings": self.warnings,
        }
        return doc if self.kernel is None else doc | {"kernel": self.kernel.to_dict()}

    def summary(self) -> str:
        return (f"{self.expected} expected, {self.found} found, {self.mapping_right} mappings right, "
                f"{self.verdict_right} verdicts right, {len(self.wrong)} wrong, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected")


def load_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{os.fspath(path)}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{os.fspath(path)}: not a truth document ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != TRUTH_SCHEMA:
        raise InputError(f"{os.fspath(path)}: not a {TRUTH_SCHEMA} document")
    return doc


def compare(result: Result | dict[str, Any], truth: dict[str, Any], *, single_file: bool = False) -> CheckReport:
    """Pair truth and natproof connections by protocol and inside tuple (in order, for reused tuples), and compare
    the outside tuple, the verdict and every contract field the truth gives (COMPARED). ``single_file``: the
    result is of the run's capture of every interface, whose verdict and contract fields are a connection's
    ``single_file_verdict`` and ``single_file_<field>`` (SINGLE_FILE_FIELDS) where the truth gives them: what only
    that capture proves (a reply's other uplink, the DNATed leg on a local Service endpoint's veth)."""
    if isinstance(result, Result):
        got = connection_dicts(result.connections)
    else:
        got = list(result["connections"])
    pool: dict[tuple[str, str, Tuple4], list[dict[str, Any]]] = defaultdict(list)
    for c in got:
        pool[_key(c)].append(c)
    rep = CheckReport(expected=len(truth["connections"]))
    for t in truth["connections"]:
        candidates = pool.get(_key(t))
        if not candidates:
            rep.missing.append(t)
            continue
        n = candidates.pop(0)
        rep.found += 1
        if single_file:
            t = t | {f: t[f"single_file_{f}"] for f in SINGLE_FILE_FIELDS if f"single_file_{f}" in t}
        differs = _differs(t, n)
        same_map = _outside(n) == _outside(t) and not differs
        same_verdict = n["verdict"] == t["verdict"]
        rep.mapping_right += same_map
        rep.verdict_right += same_verdict
        if not (same_map and same_verdict):
            rep.wrong.append({"truth": _brief(t), "natproof": _brief(n), "fields": differs})
    rep.unexpected = [_brief(c) for rest in pool.values() for c in rest]
    return rep


def _brief(c: dict[str, Any]) -> dict[str, Any]:
    doc = {"proto": c["proto"], "inside": c["inside"], "outside": c.get("outside"), "verdict": c["verdict"]}
    return doc | {f: c[f] for f in COMPARED if f in c}


def find_cases(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Scenario folders among ``paths``: each path that holds truth.json, else its subfolders that do."""
    cases: list[Path] = []
    for p in map(Path, paths):
        if (p / "truth.json").is_file():
            cases.append(p.resolve() if not p.name else p)  # "." is named by the folder it is
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / "truth.json").is_file())
            if not found:
                raise InputError(f"{p}: no truth.json in it or in its subfolders")
            cases.extend(found)
        else:
            raise InputError(f"{p}: no such folder")
    return cases


def capture_pair(case: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A scenario folder's inside and outside captures (``inside.pcap`` or ``inside.pcap.gz``, and so on)."""
    folder = Path(case)
    found = []
    for side in ("inside", "outside"):
        for name in (f"{side}.pcap", f"{side}.pcap.gz", f"{side}.pcapng"):
            if (folder / name).is_file():
                found.append(folder / name)
                break
        else:
            raise InputError(f"{folder}: no {side}.pcap (or .pcap.gz, .pcapng) in it")
    return found[0], found[1]


SINGLE_FILES = ("any.pcap", "node.pcapng")
"""A scenario folder's captures of many interfaces (natproof.lab.scenarios.NODE_FILES): ``tcpdump -i any`` and one
pcapng of every node interface; links.txt (``ip -o link``) names any.pcap's interface indexes."""


def single_captures(case: str | os.PathLike[str]) -> list[Path]:
    """A scenario folder's captures of many interfaces (SINGLE_FILES, or gzip-compressed), those it has."""
    folder = Path(case)
    found = []
    for name in SINGLE_FILES:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def check_case(case: str | os.PathLike[str], single: str | os.PathLike[str] | None = None, *,
               conntrack: bool | str | os.PathLike[str] = False, **correlate_options: Any) -> CheckReport:
    """Correlate a scenario folder's inside and outside captures and compare with its truth.json; with ``single``
    (one of single_captures(case)), that one capture of many interfaces instead (its links.txt naming the indexes,
    natproof choosing the inside and outside interfaces).

    ``conntrack``: also hold the same connections against the kernel's record (True: the folder's KERNEL_RECORD;
    or a record's path) with kernel_check, and, in the two-file form, correlate the inside capture alone with the
    record (one_capture_check); both go to the report's ``kernel``. InputError when the record is not there."""
    from natproof.correlate import correlate
    from natproof.lab.kubectl import SERVICES_FILE
    from natproof.names import Names

    folder = Path(case)
    truth = load_truth(folder / "truth.json")
    record = None
    if conntrack is not False:
        record = folder / KERNEL_RECORD if conntrack is True else Path(conntrack)
        if not record.is_file():
            raise InputError(f"{folder}: no {record.name} in it (natproof lab run writes the kernel's record there)")
    options = {"pod_cidr": truth.get("pod_cidr")} | correlate_options
    if "services" not in options and (folder / SERVICES_FILE).is_file():
        # What a user with the lab's kubectl dump gets: its ClusterIPs and nodePorts are the Services, and a port in
        # the NodePort range that no Service lists is not labelled NodePort (tests/variants/nodeport-unseen).
        options["services"] = Names.load(folder / SERVICES_FILE).recognise()
    if single is None:
        inside, outside = capture_pair(folder)
        result = correlate(inside, outside, **options)
    else:
        links = folder / "links.txt"
        result = correlate(single, None, interfaces=links if links.is_file() else None, **options)
    rep = compare(result, truth, single_file=single is not None)
    rep.warnings = [f"{c.path}: {w}" for c in (result.inside, result.outside) for w in c.warnings]
    if record is not None:
        rep.kernel = kernel_check(result, record, tolerance_s=options.get("tolerance_s", 1.0))
        if single is None:
            rep.kernel.one_capture = one_capture_check(inside, record, truth, **options)
    return rep


# -- the kernel's record (natproof lab check --conntrack) --------------------------------------------------------

KERNEL_RECORD = "conntrack.log"
"""The record ``natproof lab check --conntrack`` holds each scenario folder against: the lab's own conntrack.log,
the events of both listeners (``conntrack -E``, NEW and UPDATE/DESTROY) through the whole run, then the listing
(``conntrack -L``) taken after the traffic: the record truth.json is derived from, written by every lab run
(double-nat too) and kept in every bundled captures/ folder. The conntrack/ folder newer runs also write holds
the same kernel's record once per format (events.log, list.txt, list-extended.txt, list.xml); a script, or
tests/test_lab_live.py, holds a result against each of them with kernel_check."""

ALLOWED_ABSENT = ("dropped_before_confirmation",)
"""The kernel_reason an absent connection may carry in a lab record that ran through the traffic: nothing of it
crossed the node, so conntrack never confirmed an entry (an unreplied SYN dropped in FORWARD, a REJECT, a port
pool with no free port). Also allowed: ``snapshot_after_expiry`` in a listing (it holds only what was alive when
it was taken), and ``not_recorded`` where the lab's listener says it lost events (listener_drops)."""


def _tuple(d: dict[str, Any]) -> Tuple4:
    return d["src"], int(d["sport"]), d["dst"], int(d["dport"])


def kept_entries(lines: Iterable[str]) -> set[tuple[str, str, int, str, int]]:
    """(proto, original tuple) of every entry in conntrack text lines, read by the lab's own parser
    (natproof.lab.truth, the one truth.json comes from) rather than natproof.conntrack: what the kernel kept, told
    independently of the reader under test. ICMP's echo identifier stands for the source port; IPv6 addresses
    compressed as natproof prints them (/proc/net/nf_conntrack writes them in full)."""
    from natproof.lab.truth import parse_line

    kept = set()
    for line in lines:
        try:
            entry = parse_line(line)
        except ValueError:
            continue
        if entry is not None:
            proto = "icmp" if entry.proto == "icmpv6" else entry.proto
            o = entry.original
            src, dst = (str(ipaddress.ip_address(a)) for a in (o.src, o.dst))
            kept.add((proto, src, o.sport, dst, o.dport))
    return kept


_DROPS = re.compile(r"netlink socket drops: (\d+)")


def listener_drops(record: str | os.PathLike[str]) -> int:
    """Events the lab's conntrack listeners say they lost (ENOBUFS on a busy machine) while recording ``record``:
    from index.json beside a file of conntrack/ (its ``socket_drops``), else from the ``# events: ... netlink
    socket drops: N`` lines of a lab conntrack.log; 0 when neither says."""
    path = Path(record)
    index = path.parent / "index.json"
    if index.is_file():
        try:
            info = json.loads(index.read_text(encoding="utf-8")).get(path.name) or {}
            return int(info.get("socket_drops") or 0)
        except (OSError, ValueError, AttributeError):
            return 0
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return sum(int(m.group(1)) for line in fh if line.startswith("#") and (m := _DROPS.search(line)))
    except OSError:
        return 0


def _is_listing(record: Path) -> bool:
    """A file of conntrack/ holding a listing (conntrack -L, /proc/net/nf_conntrack): entries alive when taken."""
    return record.name.startswith(("list", "proc"))


def allowed_absent(record: str | os.PathLike[str]) -> frozenset[str]:
    """The kernel_reasons an absent connection may carry in this lab record (ALLOWED_ABSENT and when the others
    apply)."""
    path = Path(record)
    allowed = set(ALLOWED_ABSENT)
    if _is_listing(path):
        allowed.add("snapshot_after_expiry")
    if listener_drops(path):
        allowed.add("not_recorded")
    return frozenset(allowed)


@dataclass
class OneCaptureReport:
    """The inside capture alone with the kernel's record (natproof.correlate.correlate_one) against the truth's
    mappings: each truth connection's (protocol, initiator, original, translated) where the truth gives a
    translated tuple."""

    capture: str
    expected: int = 0
    """Mappings in the truth."""
    right: int = 0
    """Of them, those the one capture and the record gave."""
    missing: list[dict[str, Any]] = field(default_factory=list)
    """Truth mappings not given: {"proto", "initiator", "original", "translated"}."""
    wrong: list[dict[str, Any]] = field(default_factory=list)
    """Mappings given that the truth holds otherwise (or not at all). A mapping of a connection whose truth has no
    translated tuple (the leg after the NAT was in neither capture) is the record's to give and no difference.
    Mappings are compared as sets: one given twice (correlate_one makes each of hairpin's two legs on the pod's
    veth a connection today) counts once."""
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong

    def summary(self) -> str:
        """``12 of 12``: the truth's mappings given (and how many not in the truth)."""
        if self.note:
            return self.note
        return f"{self.right} of {self.expected}" + (f", {len(self.wrong)} wrong" if self.wrong else "")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "capture": self.capture, "expected": self.expected, "right": self.right,
                "missing": self.missing, "wrong": self.wrong, "note": self.note or None}


@dataclass
class KernelReport:
    """How a correlation agrees with the kernel's record: every connection the kernel kept (an entry with its
    original tuple, by kept_entries) confirmed, none contradicts, every absent one with a reason allowed_absent
    allows."""

    record: str
    states: dict[str, int] = field(default_factory=dict)
    """Connections per ``kernel`` state (confirmed, contradicts, absent)."""
    absent_reasons: dict[str, int] = field(default_factory=dict)
    """Absent connections per ``kernel_reason``."""
    disagree: list[dict[str, Any]] = field(default_factory=list)
    """Connections whose kernel state is not the one the record calls for: the connection (as compare lists them,
    with ``conn``), its ``kernel``, ``kernel_reason``, ``kernel_line`` and ``why``."""
    note: str = ""
    """Said instead of states when the record holds no entry at all (the kernel tracked nothing)."""
    one_capture: OneCaptureReport | None = None

    @property
    def ok(self) -> bool:
        return not self.disagree and (self.one_capture is None or self.one_capture.ok)

    def summary(self) -> str:
        """``12 confirmed, 1 absent (dropped_before_confirmation)``."""
        if self.note:
            return self.note
        parts = []
        for state in ("confirmed", "contradicts", "absent"):
            n = self.states.get(state)
            if n:
                why = ", ".join(f"{k}" if c == n else f"{c} {k}" for k, c in sorted(self.absent_reasons.items()))
                parts.append(f"{n} {state}" + (f" ({why})" if state == "absent" and why else ""))
        return ", ".join(parts) or "no connection"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "record": self.record, "summary": self.summary(), "states": self.states,
                "absent_reasons": self.absent_reasons, "disagree": self.disagree, "note": self.note or None,
                "one_capture": None if self.one_capture is None else self.one_capture.to_dict()}


def _no_entry(exc: Exception) -> bool:
    return "no conntrack entry" in str(exc) or "empty file" in str(exc)


NO_ENTRY = "no entry (the kernel tracked nothing)"


def kernel_check(result: Result, record: str | os.PathLike[str], *, listing: bool | None = None,
                 kept_from: str | os.PathLike[str] | None = None, tolerance_s: float = 1.0) -> KernelReport:
    """Hold ``result`` (a correlation without a record) against a lab kernel record: each connection whose
    original tuple the record keeps (kept_entries of ``kept_from``, by default the record itself; a list.xml is
    told by the list-extended.txt beside it, taken just before) must be ``confirmed`` with a translated tuple
    (in a listing, only the last connection of a reused tuple: the kernel keeps one entry per tuple), every other
    one ``absent`` with a reason allowed_absent allows; no connection may be ``contradicts``. A record with no
    entry at all, for natproof and for the lab's parser alike, holds nothing against (``note``).

    ``listing``: the record is a listing (conntrack -L, /proc/net/nf_conntrack) rather than an event log; by
    default told by its name as the lab writes them (list*, proc*). ``tolerance_s``: natproof.kernel.join_kernel's."""
    from natproof.kernel import join_kernel

    path = Path(record)
    source = Path(kept_from) if kept_from is not None else path
    if kept_from is None and path.suffix == ".xml" and (path.parent / "list-extended.txt").is_file():
        source = path.parent / "list-extended.txt"
    kept = kept_entries(source.read_text(encoding="utf-8", errors="replace").splitlines())
    rep = KernelReport(record=str(path))
    try:
        joined = join_kernel(result, path, tolerance_s=tolerance_s)
    except InputError as exc:
        if not kept and _no_entry(exc):
            rep.note = NO_ENTRY
        else:
            rep.disagree.append({"connection": None, "kernel": None, "kernel_reason": None, "kernel_line": None,
                                 "why": f"natproof cannot read the record: {exc}"})
        return rep
    listing = _is_listing(path) if listing is None else listing
    allowed = allowed_absent(path) | ({"snapshot_after_expiry"} if listing else set())
    rows = connection_dicts(joined.connections)
    for conn, row in zip(joined.connections["conn"].to_list(), rows, strict=True):
        row["conn"] = conn
    key_of = {r["conn"]: (r["proto"], *_tuple(r["original"])) for r in rows if r.get("original")}
    last: dict[tuple, int] = {}  # a listing holds a reused tuple's last entry only: that of its last connection
    for r in sorted(rows, key=lambda r: r["first_seen"]):
        if r["conn"] in key_of:
            last[key_of[r["conn"]]] = r["conn"]
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for r in rows:
        state, reason = r["kernel"], r["kernel_reason"]
        states[str(state)] += 1
        if state == "absent":
            reasons[str(reason)] += 1
        key = key_of.get(r["conn"])
        why = ""
        if state == "contradicts":
            reply = (r.get("kernel_entry") or {}).get("reply") or {}
            why = (f"contradicts: the kernel's entry expects replies {_end(reply, 'src')} -> {_end(reply, 'dst')}, "
                   f"the captures show the mapping {_end(r['translated'], 'src')} -> {_end(r['translated'], 'dst')}")
        elif key in kept and (not listing or last[key] == r["conn"]):
            if state != "confirmed":
                why = (f"the record keeps an entry for its original tuple, natproof says {state}"
                       + (f" ({reason})" if reason else ""))
            elif r.get("translated") is None:
                why = "confirmed without a translated tuple"
        elif state != "absent":
            why = f"the record keeps no entry for its original tuple, natproof says {state}"
        elif reason not in allowed:
            why = f"absent for a reason this record does not allow: {reason} (allowed: {', '.join(sorted(allowed))})"
        if why:
            entry = r.get("kernel_entry") or {}
            rep.disagree.append({"connection": _brief(r) | {"conn": r["conn"]}, "kernel": state,
                                 "kernel_reason": reason, "kernel_line": entry.get("line"), "why": why})
    rep.states, rep.absent_reasons = dict(states), dict(reasons)
    return rep


def _end(t: dict[str, Any] | None, end: str) -> str:
    from natproof.report.table import format_address

    return "?" if not t else format_address(t.get(end), t.get("sport" if end == "src" else "dport"))


def _mapping(c: dict[str, Any]) -> tuple[str, str, Tuple4, Tuple4 | None] | None:
    """(proto, initiator, original, translated) of a truth or natproof connection; None without an original tuple.
    Older truths give only inside and outside: the original is the initiator's side."""
    initiator = c.get("initiator") or "inside"
    if "original" in c:
        orig, trans = c["original"], c.get("translated")
    else:
        ends = (c["inside"], c.get("outside"))
        orig, trans = ends if initiator == "inside" else ends[::-1]
    if orig is None:
        return None
    return c["proto"], initiator, _tuple(orig), None if trans is None else _tuple(trans)


def _mapping_doc(m: tuple[str, str, Tuple4, Tuple4 | None]) -> dict[str, Any]:
    def t(x: Tuple4 | None) -> dict[str, Any] | None:
        return None if x is None else dict(zip(("src", "sport", "dst", "dport"), x, strict=True))

    return {"proto": m[0], "initiator": m[1], "original": t(m[2]), "translated": t(m[3])}


def one_capture_check(capture: str | os.PathLike[str], record: str | os.PathLike[str], truth: dict[str, Any],
                      **correlate_options: Any) -> OneCaptureReport:
    """Correlate one capture (a scenario's inside.pcap) with the kernel's record alone (correlate_one, the side
    told from the record) and compare its mappings with the truth's (OneCaptureReport)."""
    from natproof.correlate import correlate_one

    rep = OneCaptureReport(capture=os.fspath(capture))
    options = {k: v for k, v in correlate_options.items() if k in ("pod_cidr", "tolerance_s", "services", "decoder")}
    try:
        result = correlate_one(capture, record, **options)
    except InputError as exc:
        if _no_entry(exc) and not kept_entries(Path(record).read_text(errors="replace").splitlines()):
            rep.note = NO_ENTRY
            return rep
        raise
    want: set[tuple] = set()
    free: set[tuple] = set()  # (proto, original): the truth has no translated tuple; the record may give one
    for t in truth["connections"]:
        m = _mapping(t)
        if m is None:
            continue
        if m[3] is None:
            free.add((m[0], m[2]))
        else:
            want.add(m)
    got = {m for c in connection_dicts(result.connections) if (m := _mapping(c)) is not None and m[3] is not None}
    rep.expected, rep.right = len(want), len(want & got)
    rep.missing = [_mapping_doc(m) for m in sorted(want - got, key=str)]
    rep.wrong = [_mapping_doc(m) for m in sorted(got - want, key=str) if (m[0], m[2]) not in free]
    return rep

    return compare(result, truth)


CHAIN_HOPS = ("gateway",)
"""Subfolders of a multi-NAT scenario folder holding the next hop's captures and truth, in order outwards
(natproof.lab's double-nat: gateway/ with its inside.pcap, outside.pcap and truth.json)."""


def chain_captures(case: str | os.PathLike[str]) -> list[Path]:
    """A multi-NAT scenario folder's chain, pod outwards: its inside and outside captures, then each further hop's
    outside capture (CHAIN_HOPS); [] for a folder of one NAT."""
    folder = Path(case)
    hops = [folder / h for h in CHAIN_HOPS if (folder / h / "truth.json").is_file()]
    if not hops:
        return []
    return [*capture_pair(folder), *(capture_pair(h)[1] for h in hops)]


def chain_truth(case: str | os.PathLike[str]) -> dict[str, Any]:
    """The truth of a multi-NAT scenario's whole chain: each first-hop truth connection followed through the next
    hops' truths (a hop's connection whose original is the previous hop's translated tuple), as one truth document:
    inside the first point's tuple, outside and translated the last one's, rewrites between them, verdict the last
    failing hop's, else translated (natproof.chain's rule). A connection a later hop's truth does not hold is left
    out (the chain cannot be checked past what the kernels recorded)."""
    folder = Path(case)
    first = load_truth(folder / "truth.json")
    later = [load_truth(folder / h / "truth.json") for h in CHAIN_HOPS if (folder / h / "truth.json").is_file()]
    rows = []
    for t in first["connections"]:
        if t.get("translated") is None or t.get("initiator", "inside") != "inside":
            continue
        cur, verdicts = t, [t["verdict"]]
        for hop in later:
            after = [c for c in hop["connections"] if c.get("original") == cur["translated"]]
            if len(after) != 1:
                break
            cur = after[0]
            verdicts.append(cur["verdict"])
        else:
            original, final = t["original"], cur["translated"]
            failing = [v for v in reversed(verdicts) if v not in ("translated", "untranslated", "internal")]
            rewrites = [f for f in ("src", "sport", "dst", "dport") if original[f] != final[f]]
            rows.append({"proto": t["proto"], "initiator": "inside", "inside": t["inside"], "outside": final,
                         "original": original, "translated": final, "rewrites": rewrites,
                         "verdict": failing[0] if failing else "translated" if rewrites else "untranslated"})
    return {"schema": TRUTH_SCHEMA, "scenario": first.get("scenario"), "connections": rows}


def check_chain(case: str | os.PathLike[str], **correlate_options: Any) -> CheckReport:
    """Correlate a multi-NAT scenario folder's chain of captures (chain_captures: pod side, node eth0, each further
    hop's public side; natproof.chain.correlate_chain) and compare the connections first seen at the pod side with
    chain_truth. Raises InputError for a folder with one NAT."""
    from natproof.chain import correlate_chain

    paths = chain_captures(case)
    if not paths:
        raise InputError(f"{case}: one NAT only (no {', '.join(f'{h}/' for h in CHAIN_HOPS)} with a truth.json)")
    truth = chain_truth(case)
    chain = correlate_chain(paths, **correlate_options)
    return compare({"connections": [c for c in chain.connections if c["first_point"] == 0]}, truth)


FLOW_LOGS = ("flowlogs/custom.log", "gateway/nat-gateway.txt")
"""A multi-NAT scenario folder's NAT gateway flow log (natproof.lab's double-nat writes it in every format; the
custom format with pkt-srcaddr/pkt-dstaddr is the one checked) and the gateway's PRIVATE=PUBLIC addresses."""


def check_chain_flow_log(case: str | os.PathLike[str], **correlate_options: Any) -> CheckReport:
    """The first hop's two captures and the NAT gateway's flow log (FLOW_LOGS) as a chain (natproof.chain with
    flow_log) against chain_truth: a connection's mapping is right when the flow log's unique candidate is the
    truth's gateway tuple, or, where the records allow several (evidence "flow log, ambiguous: N candidates"), when
    the truth's is among them and ``translated`` is left null; wrong when the truth's tuple is not among them.
    Raises InputError for a folder without them."""
    from natproof.chain import correlate_chain
    from natproof.flowlogs import parse_nat_gateway, read_flow_logs

    folder = Path(case)
    log_path, gw_path = (folder / f for f in FLOW_LOGS)
    if not log_path.is_file() or not gw_path.is_file():
        raise InputError(f"{folder}: no {FLOW_LOGS[0]} and {FLOW_LOGS[1]} in it (natproof lab run double-nat "
                         "writes them)")
    truth = chain_truth(folder)
    chain = correlate_chain(list(capture_pair(folder)), flow_log=read_flow_logs(log_path),
                            nat_gateways=[parse_nat_gateway(gw_path.read_text())], **correlate_options)
    got: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in chain.connections:
        got[(c["proto"], "inside", _tuple4(c["inside"]))].append(c)
    rep = CheckReport(expected=len(truth["connections"]))
    for t in truth["connections"]:
        pool = got.get((t["proto"], "inside", _tuple4(t["inside"])))
        if not pool:
            rep.missing.append(t)
            continue
        c = pool.pop(0)
        rep.found += 1
        gateway = c["hops"][-1]
        want = _tuple4(t["translated"])
        if c["translated"] is not None:
            right = _tuple4(c["translated"]) == want
        else:
            right = (gateway.get("evidence") or "").startswith("flow log, ambiguous") and \
                want in [_tuple4(g) for g in gateway.get("candidates") or []]
        same_verdict = c["verdict"] == t["verdict"]
        rep.mapping_right += right
        rep.verdict_right += same_verdict
        if not (right and same_verdict):
            rep.wrong.append({"truth": _brief(t), "natproof": {**_brief(c), "evidence": gateway.get("evidence"),
                                                               "candidates": gateway.get("candidates")}})
    rep.unexpected = [_brief(c) for rest in got.values() for c in rest if c["first_point"] == 0]
    return rep


def _tuple4(t: dict[str, Any] | None) -> Tuple4 | None:
    return None if t is None else (t["src"], int(t["sport"]), t["dst"], int(t["dport"]))
