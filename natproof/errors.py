"""Errors natproof raises for input it cannot use."""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass
from typing import Self

OPTIONS = {
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
}
"""natproof.correlate's keywords that an error message may advise, and the command line's option for each."""


@dataclass(frozen=True)
class Said:
    """A part of an error message that a library caller and the command line say differently: ``library`` as
    natproof.correlate's keywords say it, ``command_line`` as natproof's options do (see :func:`setting`)."""

    library: str
    command_line: str


_NAMED = object()


def setting(keyword: str, value: object = _NAMED, *, metavar: str | None = None) -> Said:
    """A setting an error message advises, as each caller gives it: ``setting("allow_swap", True)`` is
    ``allow_swap=True`` and ``--allow-swap``; ``setting("inside_if", "eth0")`` ``inside_if='eth0'`` and ``--inside-if
    eth0`` (a value quoted as a shell needs it: ``--spill-dir ''``); ``setting("conntrack", metavar="FILE")``
    ``conntrack=FILE`` and ``--conntrack FILE``; the setting alone, ``setting("clock_offset_s")``, ``clock_offset_s``
    and ``--clock-offset``. ``keyword`` is one of OPTIONS."""
    option = OPTIONS[keyword]
    if metavar is not None:
        return Said(f"{keyword}={metavar}", f"{option} {metavar}")
    if value is _NAMED:
        return Said(keyword, option)
    return Said(f"{keyword}={value!r}", option if value is True else f"{option} {shlex.quote(str(value))}")


class NatproofError(Exception):
    """Base class: natproof could not answer. The message is one line, fit for a user.

    Built from parts: strings, and :class:`Said` parts (:func:`setting`) where a library caller and the command line
    name what to do differently. ``str(error)`` is the library's wording (``pass allow_swap=True``);
    :meth:`for_command_line` the command line's (``pass --allow-swap``), which natproof's commands print."""

    def __init__(self, *parts: object) -> None:
        message = "".join(p.library if isinstance(p, Said) else str(p) for p in parts)
        super().__init__(*((message,) if parts else ()))
        if any(isinstance(p, Said) for p in parts):
            self.command_line = "".join(p.command_line if isinstance(p, Said) else str(p) for p in parts)

    def for_command_line(self) -> str:
        """The message as the command line says it: its options where the library names keywords."""
        return vars(self).get("command_line", str(self))

    def reworded(self, before: str = "", after: str = "") -> Self:
        """The same error with ``before`` and ``after`` around its message, in both wordings (a caller that names
        where it happened: natproof.chain's hop)."""
        new = copy.copy(self)
        new.args = (f"{before}{self}{after}",)
        if "command_line" in vars(self):
            new.command_line = f"{before}{self.command_line}{after}"
        return new


class CaptureError(NatproofError):
    """A capture file is missing, unreadable, not a capture, empty or otherwise unusable."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type[CaptureError], tuple[str, str]]:
        # Exception pickles its message alone, which __init__ cannot take back: a CaptureError raised in a
        # process pool's child (a grading script's) broke the pool instead of reaching the caller.
        return type(self), (self.path, self.problem)


class InputError(NatproofError):
    """The inputs are each readable but cannot be used together (e.g. they do not overlap in time)."""
