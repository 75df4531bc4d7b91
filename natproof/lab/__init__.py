"""Real-kernel NAT lab: namespaces, MASQUERADE, tcpdump and conntrack produce captures with their truth."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from natproof.lab import doublenat, scenarios
from natproof.lab.topology import LabError, leftover_namespaces

MULTI_HOP: dict[str, tuple[str, Callable[..., dict]]] = {
    "double-nat": (doublenat.DESCRIPTION, doublenat.run_double_nat),
}
"""Scenarios with more than one NAT (their own topology and outputs beside the node hop's files): name ->
(description, runner)."""


def list_scenarios() -> list[tuple[str, str]]:
    """(name, one-line description) of every scenario: the single-node ones, then those with several NATs."""
    return [*scenarios.list_scenarios(), *((name, d) for name, (d, _) in MULTI_HOP.items())]


def run_scenario(name: str, outdir: str | os.PathLike[str], *, keep_going: bool = False) -> dict:
    """Run one scenario into ``outdir`` and return its (first hop's) truth; see natproof.lab.scenarios."""
    if name in MULTI_HOP:
        return MULTI_HOP[name][1](Path(outdir), keep_going=keep_going)
    return scenarios.run_scenario(name, Path(outdir), keep_going=keep_going)


__all__ = ["MULTI_HOP", "LabError", "leftover_namespaces", "list_scenarios", "run_scenario"]
