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


from natproof.assemble import Services
from natproof.capture import CaptureInfo, Record, read_capture
from natproof.chain import Chain, correlate_chain
from natproof.conntrack import ConntrackRecord, read_conntrack
from natproof.correlate import correlate
from natproof.diagnose import Finding, diagnose
from natproof.errors import CaptureError, InputError, NatproofError
from natproof.grade import Grading, StudentGrade, grade_class, load_grading
from natproof.kernel import join_kernel
from natproof.names import Names
from natproof.packets import load_packets
from natproof.points import Interface, ObservationPoint
from natproof.result import Result
from natproof.verdicts import Verdict
from natproof.verify import Check, Expectations, ExpectedConnection, load_expectations, verify

__version__ = "0.2.0"

__all__ = [
    "CaptureError",
    "CaptureInfo",
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
