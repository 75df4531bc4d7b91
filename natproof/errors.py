"""Errors natproof raises for input it cannot use."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any, Self

OPTIONS = {
    # natproof.correlate (and correlate_chain, correlate_one)
    "allow_swap": "--allow-swap",
    "clock_offset_s": "--clock-offset",
    "conntrack": "--conntrack",
    "inside_if": "--inside-if",
    "interfaces": "--interfaces",
    "memory_limit": "--memory-limit",
    "outside_if": "--outside-if",
    "pod_cidr": "--pod-cidr",
    "side": "--side",
    "spill_dir": "--spill-dir",
    "vxlan_ports": "--vxlan-port",
    # natproof.explain.explain and natproof.proof.select_connections (explain, export-pcap)
    "conns": "--conn",
    "finding": "--finding",
    "frame": "--frame",
    "verdicts": "--verdict",
    # natproof.lookup.who and natproof.fleet.fleet_who (who, fleet-who), natproof.fleet.run_fleet (fleet)
    "at": "--at",
    "clock": "--clock",
    "node": "--node",
    "scheduler": "--scheduler",
    # natproof.flowlogs: read_flow_logs, join_nat_gateway, trace_public (flowlog, who --flow-log)
    "fields": "--flow-log-format",
    "gateways": "--nat-gateway",
    # natproof.verify.Expectations (verify)
    "min_connections": "--min-connections",
    "snat_ip": "--expect-snat-ip",
}
"""The keywords of natproof's public functions that an error message may advise or name, and the command line's
option for each: the one table of both spellings. A keyword is one setting wherever it is taken (``clock`` is
who's and fleet_who's ``--clock``; ``conns`` explain's and select_connections' ``--conn``), so one entry serves
every function and command that takes it; a keyword that came to mean different options in different commands would
need :func:`setting` to be told the option."""

MANIFEST_KEYS = {
    # natproof.fleet: a [[node]] table's key for each keyword of natproof.correlate that a node passes (NODE_KEYS)
    "clock_offset_s": "clock_offset",
    "conntrack": "conntrack",
    "inside_if": "inside_if",
    "interfaces": "interfaces",
    "outside_if": "outside_if",
    "pod_cidr": "pod_cidr",
    "side": "side",
}
"""The keywords of natproof.correlate a fleet manifest's node sets, and its key for each: an error of a node's
correlation names the key its manifest's user writes (:meth:`NatproofError.for_manifest`)."""

INSTEAD = {
    "allow_swap": "swap the node's inside and outside",
    "clock_offset_s": "set the node's clock_offset (seconds, its outside clock minus its inside clock)",
}
"""What a fleet manifest's user does where an error of a node's correlation advises a keyword (``pass
allow_swap=True``): the advice as the manifest's user reads it, in place of the verb and the setting. For a keyword
no node has a key for, what to do instead; for one a node has a key for but ``pass KEY`` would not say how to
set (a number, and which way), the key as the manifest's user sets it."""


@dataclass(frozen=True)
class Said:
    """A part of an error message that a library caller and the command line say differently: ``library`` as
    natproof's keywords say it, ``command_line`` as natproof's options do, ``manifest`` as a fleet manifest's keys
    do where they differ from the library's (see :func:`setting`; a part that is not a setting, such as
    ``Said("inside and outside", "INSIDE and OUTSIDE")``, is made directly)."""

    library: str
    command_line: str
    manifest: str | None = None
    """As a fleet manifest's user reads it (a node's correlation: the node's keys); None: as the library's."""


_NAMED = object()


def setting(keyword: str, value: object = _NAMED, *, metavar: str | None = None, index: int | None = None,
            quoted: bool = True, verb: str | None = None) -> Said:
    """A setting an error message advises or names, as each caller gives it: ``setting("allow_swap", True)`` is
    ``allow_swap=True`` and ``--allow-swap``; ``setting("inside_if", "eth0")`` ``inside_if='eth0'`` and ``--inside-if
    eth0`` (a value quoted as a shell needs it: ``--spill-dir ''``; ``quoted=False`` shows it as given, for the
    messages that always have: ``--at yesterday noon``); ``setting("conntrack", metavar="FILE")`` ``conntrack=FILE``
    and ``--conntrack FILE``; the setting alone, ``setting("clock_offset_s")``, ``clock_offset_s`` and
    ``--clock-offset``. ``index``: the value is that item of the sequence the keyword takes, one use of a repeatable
    option: ``setting("conns", 9, index=1)`` is ``conns[1]=9`` and ``--conn 9``. ``keyword`` is one of OPTIONS.

    A fleet manifest's user (:meth:`NatproofError.for_manifest`) is told the node's key (MANIFEST_KEYS) as the
    manifest writes it: ``inside_if = "eth0"``, ``conntrack = "FILE"``. ``verb`` (``"pass"``; ``""`` for none):
    the setting is advised, the verb in front of it in each wording (``pass allow_swap=True``, ``pass
    --allow-swap``); where INSTEAD has the keyword, the manifest's user reads what to do there, verb and all
    (``swap the node's inside and outside``; ``set the node's clock_offset (seconds, ...)``). A keyword only
    named, never advised, is the node's key to a manifest's user where it has one (``with the clock_offset
    given``), else the library's word (a node never gave it)."""
    option = OPTIONS[keyword]
    key = MANIFEST_KEYS.get(keyword)
    if metavar is not None:
        said = Said(f"{keyword}={metavar}", f"{option} {metavar}", key and f"{key} = {json.dumps(metavar)}")
    elif value is _NAMED:
        said = Said(keyword, option, key)
    else:
        name = keyword if index is None else f"{keyword}[{index}]"
        shown = shlex.quote(str(value)) if quoted else str(value)
        said = Said(f"{name}={value!r}", option if value is True else f"{option} {shown}",
                    key and f"{key} = {json.dumps(value, default=str)}")  # as TOML writes it
    if verb is None:
        return said
    instead = INSTEAD.get(keyword)
    do = f"{verb} " if verb else ""
    manifest = instead or (said.manifest and f"{do}{said.manifest}")
    return Said(f"{do}{said.library}", f"{do}{said.command_line}", manifest)


def _restore(cls: type[NatproofError], args: tuple[Any, ...], state: dict[str, Any]) -> NatproofError:
    """A pickled NatproofError back (NatproofError.__reduce__)."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class NatproofError(Exception):
    """Base class: natproof could not answer. The message is one line, fit for a user.

    Built from parts: strings, and :class:`Said` parts (:func:`setting`) where a library caller and the command line
    name what to do differently. ``str(error)`` is the library's wording (``pass allow_swap=True``);
    :meth:`for_command_line` the command line's (``pass --allow-swap``), which natproof's commands print;
    :meth:`for_manifest` a fleet manifest's (``swap the node's inside and outside``), which a fleet's failed node
    gives. Every wording survives pickling (a worker's error) and :meth:`reworded`."""

    def __init__(self, *parts: object) -> None:
        message = "".join(p.library if isinstance(p, Said) else str(p) for p in parts)
        super().__init__(*((message,) if parts else ()))
        if any(isinstance(p, Said) for p in parts):
            self.command_line = "".join(p.command_line if isinstance(p, Said) else str(p) for p in parts)
            self.manifest = "".join((p.library if p.manifest is None else p.manifest) if isinstance(p, Said)
                                    else str(p) for p in parts)

    def __reduce__(self) -> tuple[Any, ...]:
        # Its message and every attribute as they are, not through __init__ (Exception pickles the arguments it was
        # built from: a CaptureError's two, which a message cannot give back, broke a grading script's process
        # pool; a reworded error lost its prefix), whether pickled for a worker or by tblib (dask.distributed).
        return _restore, (type(self), self.args, dict(vars(self)))

    def for_command_line(self) -> str:
        """The message as the command line says it: its options where the library names keywords."""
        return vars(self).get("command_line", str(self))

    def for_manifest(self) -> str:
        """The message as a fleet manifest's user reads it (a node's correlation failed): the node's keys where the
        library names correlate's keywords, and what to do instead where the manifest has no key (INSTEAD)."""
        return vars(self).get("manifest", str(self))

    def reworded(self, before: str = "", after: str = "") -> Self:
        """The same error with ``before`` and ``after`` around its message, in every wording (a caller that names
        where it happened: natproof.chain's hop)."""
        # A new instance with a dict of its own: copy.copy goes through the class's pickling, which tblib (loaded
        # with dask.distributed: a fleet) replaces by one that shares the original's __dict__, so the original's
        # wordings were reworded too.
        new = type(self).__new__(type(self))
        new.__dict__.update(vars(self))
        new.args = (f"{before}{self}{after}",)
        for wording in ("command_line", "manifest"):
            if wording in vars(self):
                setattr(new, wording, f"{before}{vars(self)[wording]}{after}")
        return new


def shown_path(path: object) -> str:
    """A capture's path as a message names it: "standard input" for "-" (what the command line reads as standard
    input: ``natproof correlate - outside.pcap``), else the path as given."""
    return "standard input" if str(path) == "-" else str(path)


class CaptureError(NatproofError):
    """A capture file is missing, unreadable, not a capture, empty or otherwise unusable. ``path`` is as given
    ("-" for standard input); the message names it by :func:`shown_path` ("standard input: empty (0 bytes)")."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{shown_path(self.path)}: {problem}")


class InputError(NatproofError):
    """The inputs are each readable but cannot be used together (e.g. they do not overlap in time)."""


class CapturesApart(InputError):
    """Two captures that do not overlap in time, after the clock offset (natproof.correlate): ``apart`` is that fact
    alone (the files, their spans on the outside clock), without the advice that follows it in the message, for a
    caller that gives its own (a chain's hop, grade, which takes no clock offset)."""

    def __init__(self, apart: str, *advice: object) -> None:
        super().__init__(apart, *advice)
        self.apart = apart
