"""Turn a capture's records into a polars frame with one row per IP packet."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import IO

import polars as pl

from natproof.capture import LINKTYPE_NAMES, CaptureInfo, Record, read_capture
from natproof.decode import FIELDS, Skip, decode
from natproof.errors import CaptureError

PACKET_SCHEMA: dict[str, pl.DataType] = {
    "frame_no": pl.UInt32(),
    "ts_ns": pl.Int64(),
    "wire_len": pl.UInt32(),
    "caplen": pl.UInt32(),
    "ifindex": pl.Int32(),
    "ip_version": pl.UInt8(),
    "src": pl.String(),
    "dst": pl.String(),
    "proto": pl.UInt8(),
    "sport": pl.UInt16(),
    "dport": pl.UInt16(),
    "ip_id": pl.UInt32(),
    "ttl": pl.UInt8(),
    "ip_len": pl.UInt32(),
    "tcp_seq": pl.UInt32(),
    "tcp_ack": pl.UInt32(),
    "tcp_flags": pl.UInt16(),
    "tcp_win": pl.UInt16(),
    "payload_len": pl.UInt32(),
    "payload_captured_len": pl.UInt32(),
    "payload_digest": pl.UInt64(),
    "head_digest": pl.UInt64(),
    "icmp_type": pl.UInt8(),
    "icmp_code": pl.UInt8(),
    "icmp_id": pl.UInt16(),
    "icmp_seq": pl.UInt16(),
    "inner_proto": pl.UInt8(),
    "inner_src": pl.String(),
    "inner_dst": pl.String(),
    "inner_sport": pl.UInt16(),
    "inner_dport": pl.UInt16(),
}
assert tuple(PACKET_SCHEMA) == FIELDS

Progress = Callable[[int], None]
"""Called with the number of file bytes (record headers and data) decoded since the last call."""

DECODERS = ("auto", "fast", "dpkt")
"""Values of the ``decoder`` option: the columnar decoder (auto, fast) or the dpkt reference."""
PARALLEL_MIN_BYTES = 256 * 1024 * 1024
"""Two captures each at least this big decode in two processes at once (below it, starting one costs more)."""


def build_packets(records: Iterable[Record], info: CaptureInfo, progress: Progress | None = None) -> pl.DataFrame:
    """Decode records into a frame of PACKET_SCHEMA; frames that are not IP packets are counted in info.skipped."""
    rows: list[tuple] = []
    append = rows.append
    skipped = info.skipped
    n = 0
    done = 0
    for rec in records:
        try:
            append(decode(rec.frame_no, rec.ts_ns, rec.wire_len, rec.caplen, rec.linktype, rec.data))
        except Skip as skip:
            skipped[skip.reason] += 1
        except Exception:  # noqa: BLE001 - a malformed packet is counted, never fatal
            skipped["malformed"] += 1
        n += 1
        done += rec.caplen + 16
        if progress is not None and n == 4096:
            progress(done)
            n = done = 0
    if progress is not None and done:
        progress(done)
    return pl.DataFrame(rows, schema=PACKET_SCHEMA, orient="row")


def load_packets(path: str | os.PathLike[str], progress: Progress | None = None, *,
                 fast: bool | None = None) -> tuple[CaptureInfo, pl.DataFrame]:
    """Read and decode one capture file; a capture with no frame of a link type natproof reads is an error.

    ``fast`` picks the decoder: True the columnar one (natproof.fastdecode), False the dpkt reference
    (:func:`build_packets`), None (the default) the columnar one. Both give the same frame and info; the
    columnar decoder hands every frame it does not handle to the reference (``info.fallback_frames``), and a
    file whose framing it does not handle to the reference path as a whole.
    """
    if fast is None or fast:
        from natproof.fastdecode import Unsupported, decode_file

        try:
            info, packets = decode_file(path, progress)
        except Unsupported:
            info, packets = _load_reference(path, progress)
    else:
        info, packets = _load_reference(path, progress)
    return require_supported_link(info, packets)


def require_supported_link(info: CaptureInfo, packets: pl.DataFrame) -> tuple[CaptureInfo, pl.DataFrame]:
    """Raise CaptureError when no frame was of a link type natproof reads; else return the arguments."""
    if packets.is_empty() and info.skipped.get("unsupported_link", 0) == info.records:
        supported = ", ".join(sorted(set(LINKTYPE_NAMES.values())))
        raise CaptureError(info.path, f"unsupported link type {info.link_type} (natproof reads {supported})")
    return info, packets


def _load_reference(path: str | os.PathLike[str], progress: Progress | None) -> tuple[CaptureInfo, pl.DataFrame]:
    info, records = read_capture(path)
    return info, build_packets(records, info, progress)


def decoder_flag(decoder: str) -> bool | None:
    """load_packets' ``fast`` argument for a ``decoder`` name (auto, fast or dpkt)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    return {"auto": None, "fast": True, "dpkt": False}[decoder]


def load_pair(paths: Sequence[str | os.PathLike[str]], progress: Sequence[Progress | None] | None = None, *,
              fast: bool | None = None) -> list[tuple[CaptureInfo, pl.DataFrame]]:
    """load_packets on each path; two large captures decode in parallel, the last one in a second process.

    Decoding holds the GIL for most of its time (record framing and payload digests), so threads gain little
    (measured: 15%); a second Python process decodes one capture and hands its frame back through an Arrow IPC
    file (a plain subprocess, not multiprocessing: a caller's script is never imported again). Errors are raised
    as a sequential run would raise them: the first path's first.
    """
    cbs = list(progress) if progress is not None else [None] * len(paths)
    sizes = [_file_size(p) for p in paths]
    if (len(paths) != 2 or min(sizes) < PARALLEL_MIN_BYTES or (os.cpu_count() or 1) < 2
            or any(str(p) == "-" for p in paths)):
        return [load_packets(p, cb, fast=fast) for p, cb in zip(paths, cbs, strict=True)]
    shm = "/dev/shm"  # the frame crosses in RAM when there is a tmpfs for it, not through the disk
    tmp = tempfile.mkdtemp(prefix="natproof-", dir=shm if os.access(shm, os.W_OK) else None)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-c", "from natproof.packets import _worker_main; _worker_main()",
           os.fspath(paths[1]), tmp, repr(fast)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
    reply: list[str] = []
    listener = threading.Thread(target=_relay, args=(proc.stdout, cbs[1], reply), daemon=True)
    try:
        listener.start()
        first = load_packets(paths[0], cbs[0], fast=fast)
        proc.wait()
        listener.join()
        status = reply[0] if reply else "failed"
        if status == "ok":
            with open(os.path.join(tmp, "info.pickle"), "rb") as fh:
                info = pickle.load(fh)
            second = (info, pl.read_ipc(os.path.join(tmp, "packets.arrow")))
        elif status.startswith("capture_error\t"):
            _, path, problem = status.split("\t", 2)
            raise CaptureError(path, problem)
        else:  # the worker failed unexpectedly: decode here, so the real error (if any) surfaces
            second = load_packets(paths[1], None, fast=fast)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return [first, second]


def _file_size(path: str | os.PathLike[str]) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _relay(stream: IO[bytes], progress: Progress | None, reply: list[str]) -> None:
    """Forward the worker's progress lines to ``progress``; keep its final status line in ``reply``."""
    for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith("progress "):
            if progress is not None:
                progress(int(line.split()[1]))
        else:
            reply.append(line)
            return


def _worker_main() -> None:
    """Worker process: ``PATH TMPDIR FAST``; writes TMPDIR/packets.arrow and info.pickle, prints progress and
    then one status line (ok, or capture_error<TAB>path<TAB>problem)."""
    path, tmp, fast_arg = sys.argv[1:4]
    fast = {"None": None, "True": True, "False": False}[fast_arg]
    out = sys.stdout

    def progress(n: int) -> None:
        out.write(f"progress {n}\n")
        out.flush()

    try:
        info, packets = load_packets(path, progress, fast=fast)
    except CaptureError as exc:
        out.write(f"capture_error\t{exc.path}\t{exc.problem}\n")
        return
    packets.write_ipc(os.path.join(tmp, "packets.arrow"), compression="uncompressed")
    with open(os.path.join(tmp, "info.pickle"), "wb") as fh:
        pickle.dump(info, fh)
    out.write("ok\n")
    out.flush()
