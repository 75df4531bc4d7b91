"""Errors natproof raises for input it cannot use."""

from __future__ import annotations


class NatproofError(Exception):
    """Base class: natproof could not answer. The message is one line, fit for a user."""


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
