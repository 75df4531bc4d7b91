"""natproof: prove NAT translations from an inside and an outside packet capture."""

import os

# polars allocates through jemalloc, which by default keeps freed pages for ten seconds (and polars disables the
# second stage of returning them), so a pipeline of large transient frames holds several times its live data.
# Returning freed pages at once (0 ms) keeps the peak nearest the live data but makes every large allocation fault
# in fresh pages: measured on 2 x 5M packets, correlate took 31.8 s at 0 ms, 21.9 s at 300 ms and 20.5 s at 10 s,
# with peak RSS 1.57, 1.65 and 1.77 GB; past --memory-limit 1G (2 x 5M real) 937 MB at 0 ms, 966 MB at 300 ms.
# Set here, before polars is first imported; a value the user set wins. (Without effect if polars was imported
# first.)
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:300,muzzy_decay_ms:0")
# numpy's OpenBLAS starts a thread per core as numpy is imported, which spin a while: 0.14 s of CPU per process
# here, taken from the decoding when two capture processes fill the cores (2 x 1M real packets, correlate: 4.5 ->
# 4.3 s of user CPU). natproof calls no BLAS routine. Like the allocator's setting above: set before numpy is first
# imported, a value the user set wins (set OPENBLAS_NUM_THREADS before importing natproof to keep BLAS threads
# for your own matrix work in the same process).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


import sys
import types
from typing import TYPE_CHECKING

# Each public name is imported from its module on first use (PEP 562): ``natproof correlate`` never loads the
# grading, diagnosis or chain modules it does not run, nor does the worker process correlate starts.
_PUBLIC = {
    "CaptureError": "natproof.errors",
    "CaptureInfo": "natproof.capture",
    "Chain": "natproof.chain",
    "CapturesApart": "natproof.errors",
    "Check": "natproof.verify",
    "ConntrackRecord": "natproof.conntrack",
    "Expectations": "natproof.verify",
    "ExpectedConnection": "natproof.verify",
    "Finding": "natproof.diagnose",
    "Grading": "natproof.grade",
    "InputError": "natproof.errors",
    "Interface": "natproof.points",
    "Names": "natproof.names",
    "NatproofError": "natproof.errors",
    "ObservationPoint": "natproof.points",
    "Record": "natproof.capture",
    "Result": "natproof.result",
    "Services": "natproof.assemble",
    "StudentGrade": "natproof.grade",
    "Verdict": "natproof.contracts",
    "correlate": "natproof.correlate",
    "correlate_chain": "natproof.chain",
    "diagnose": "natproof.diagnose",
    "grade_class": "natproof.grade",
    "join_kernel": "natproof.kernel",
    "load_expectations": "natproof.verify",
    "load_grading": "natproof.grade",
    "load_packets": "natproof.packets",
    "read_capture": "natproof.capture",
    "read_conntrack": "natproof.conntrack",
    "verify": "natproof.verify",
}

if TYPE_CHECKING:
    from natproof.assemble import Services
    from natproof.capture import CaptureInfo, Record, read_capture
    from natproof.chain import Chain, correlate_chain
    from natproof.conntrack import ConntrackRecord, read_conntrack
    from natproof.contracts import Verdict
    from natproof.correlate import correlate
    from natproof.diagnose import Finding, diagnose
    from natproof.errors import CaptureError, CapturesApart, InputError, NatproofError
    from natproof.grade import Grading, StudentGrade, grade_class, load_grading
    from natproof.kernel import join_kernel
    from natproof.names import Names
    from natproof.packets import load_packets
    from natproof.points import Interface, ObservationPoint
    from natproof.result import Result
    from natproof.verify import Check, Expectations, ExpectedConnection, load_expectations, verify


class _Package(types.ModuleType):
    """natproof itself: importing a submodule named like a public function (natproof.correlate, .diagnose,
    .verify) leaves ``natproof.<name>`` the function, as an import of every name at once used to."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in _PUBLIC and _PUBLIC[name] == value.__name__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    """The public name ``name``, imported from its module (the first time it is asked for)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'natproof' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


__version__ = "0.2.0"

__all__ = [
    "CaptureError",
    "CaptureInfo",
    "CapturesApart",
    "Chain",
    "Check",
    "ConntrackRecord",
    "ExpectedConnection",
    "Expectations",
    "Finding",
    "Grading",
    "InputError",
    "Interface",
    "Names",
    "NatproofError",
    "ObservationPoint",
    "Record",
    "Result",
    "Services",
    "StudentGrade",
    "Verdict",
    "__version__",
    "correlate",
    "correlate_chain",
    "diagnose",
    "grade_class",
    "join_kernel",
    "load_expectations",
    "load_grading",
    "load_packets",
    "read_capture",
    "read_conntrack",
    "verify",
]
