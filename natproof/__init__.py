"""natproof: prove NAT translations from an inside and an outside packet capture."""

from natproof.capture import CaptureInfo, Record, read_capture
from natproof.correlate import correlate
from natproof.diagnose import Finding, diagnose
from natproof.errors import CaptureError, InputError, NatproofError
from natproof.packets import load_packets
from natproof.result import Result
from natproof.verdicts import Verdict
from natproof.verify import Check, Expectations, ExpectedConnection, load_expectations, verify

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
    "CaptureInfo",
    "Check",
    "ExpectedConnection",
    "Expectations",
    "Finding",
    "InputError",
    "NatproofError",
    "Record",
    "Result",
    "Verdict",
    "__version__",
    "correlate",
    "diagnose",
    "load_expectations",
    "load_packets",
    "read_capture",
    "verify",
]
