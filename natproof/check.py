"""Compare a correlation with a ground-truth document (natproof.truth/1): what matched, what did not."""

from __future__ import annotations

import json
import os
from collections import defaultdict
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

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong and not self.unexpected and self.found == self.expected

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "expected": self.expected, "found": self.found, "mapping_right": self.mapping_right,
            "verdict_right": self.verdict_right, "missing": self.missing, "wrong": self.wrong,
            "unexpected": self.unexpected,
        }

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


def compare(result: Result | dict[str, Any], truth: dict[str, Any]) -> CheckReport:
    """Pair truth and natproof connections by protocol and inside tuple (in order, for reused tuples), and compare
    the outside tuple, the verdict and every contract field the truth gives (COMPARED)."""
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
            cases.append(p)
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


def check_case(case: str | os.PathLike[str], single: str | os.PathLike[str] | None = None,
               **correlate_options: Any) -> CheckReport:
    """Correlate a scenario folder's inside and outside captures and compare with its truth.json; with ``single``
    (one of single_captures(case)), that one capture of many interfaces instead (its links.txt naming the indexes,
    natproof choosing the inside and outside interfaces)."""
    from natproof.correlate import correlate

    folder = Path(case)
    truth = load_truth(folder / "truth.json")
    options = {"pod_cidr": truth.get("pod_cidr")} | correlate_options
    if single is None:
        result = correlate(*capture_pair(folder), **options)
    else:
        links = folder / "links.txt"
        result = correlate(single, None, interfaces=links if links.is_file() else None, **options)
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
