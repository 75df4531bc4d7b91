"""natproof: prove NAT translations from an inside and an outside packet capture."""

from natproof.capture import CaptureInfo, Record, read_capture
from natproof.correlate import correlate
from natproof.errors import CaptureError, InputError, NatproofError
from natproof.packets import load_packets
from natproof.result import Result
from natproof.verdicts import Verdict

__version__ = "0.1.0"

__all__ = [
    "CaptureError",
    "CaptureInfo",
    "InputError",
    "NatproofError",
    "Record",
    "Result",
    "Verdict",
    "__version__",
    "correlate",
    "load_packets",
    "read_capture",
]
