"""Record offsets of a capture file: the one step of decoding that is sequential by nature.

Each pcap record header gives the length of its own record (``incl_len``), and each pcapng block its own
(``Block Total Length``), so where record n + 1 starts is known only once record n has been read. A Python
loop over the records costs ~200 ns each (5M records of a real capture: 0.9-1.3 s). Here the walk is many walks
at once, in numpy:

1. The span is cut into segments of about SEGMENT_RECORDS records (from a sample's mean length); in the first
   bytes past each cut (as many as the sample's longest record) the first offset that looks like a record header
   (the pcap header's sanity rules, for it and the record after it) is guessed to be a record start. The first
   segment starts at the known offset.
2. All segments are walked in lockstep, one record of each per numpy step, each until it reaches the next
   segment's guess.
3. The true chain is the first segment's walk; a segment's walk counts only if the walk before it lands exactly
   on its guess (two walks that meet at one offset are one walk from there). A segment whose guess was wrong (or
   that had none) is walked again from where the true chain entered it, in Python.

So the offsets are those of the plain loop whatever the guesses were (tests/test_recordwalk.py checks it on
truncated, corrupt and adversarial files); the guesses only decide how much of the work is vectorised.
Measured on this 2-core machine, per 5M records: a real capture (88-byte mean frame) 0.87 -> 0.35 s; the
synthetic bench pair (875-byte frames, 4.4 GB) 1.8 -> 0.85 s. numba compiled the plain loop
to 0.07 s but its import held ~150 MB more in each process, which the memory targets cannot spare.

pcapng (pcapng_epb_run): the same walk over runs of Enhanced Packet Blocks; a walk stops at any other block
(an interface description, a section header, statistics) and at a packet block whose length is not repeated at
its end, which natproof.fastdecode._frame_pcapng reads the long way before the next run (the latter ends the file
with a warning, as natproof.capture reads it). A guess must repeat its length at the block's end, as every pcapng
block does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

SEGMENT_RECORDS = 64
"""Records per lockstep walker, about: a segment is this many times the mean record length of a sample."""

_SAMPLE_RECORDS = 64
"""Records walked first, in Python, whose mean and longest lengths size the segments and the guess window."""

_MIN_SEGMENT = 4096
"""Bytes per segment at least."""

LOCKSTEP_MIN_BYTES = 1024 * 1024
"""Spans shorter than this are walked by the plain loop (the numpy set-up costs more)."""

_MIN_WALKERS = 16
"""Fewer walkers than this (huge records, a span just above LOCKSTEP_MIN_BYTES): the plain loop is faster."""

_MAX_STEPS = 4 * SEGMENT_RECORDS
"""Lockstep steps at most; walkers still going then finish in Python."""

_SEC_SPAN = 1 << 24
"""A guessed record's ts_sec lies within this many seconds (194 days) of the span's first record's."""


def python_run(buf, off: int, stop: int, endian: str) -> tuple[list[int], int]:
    """The plain loop: record offsets from ``off`` while they are below ``stop``; (offsets, next offset)."""
    caplen_at = struct.Struct(endian + "8xI").unpack_from
    offs: list[int] = []
    ap = offs.append
    while off < stop:
        ap(off)
        off += 16 + caplen_at(buf, off)[0]
    return offs, off


def python_run_n(buf, off: int, n: int, endian: str) -> tuple[np.ndarray, int]:
    """The plain loop for at most ``n`` records (a sample); (offsets, next offset)."""
    caplen_at = struct.Struct(endian + "8xI").unpack_from
    offs = []
    end = len(buf) - 16
    while len(offs) < n and off <= end:
        offs.append(off)
        off += 16 + caplen_at(buf, off)[0]
    return np.array(offs, dtype=np.int64), off


def pcap_run(buf, off: int, lim: int, endian: str, nano: bool) -> tuple[np.ndarray, int]:
    """Offsets of the pcap record headers from ``off`` (a record start) while they start at or before ``lim``
    (at most len(buf) - 16, so every header read is whole).

    Returns (offsets as int64, offset of the next record). A record's length is ``16 + incl_len``; lengths are
    not checked here (the caller marks the first implausible one). ``endian`` is "<" or ">" as the file's magic
    says, ``nano`` whether its timestamps are in nanoseconds (the guesses' sanity rule for the fraction).
    """
    if lim - off < LOCKSTEP_MIN_BYTES:
        offs, nxt = python_run(buf, off, lim + 1, endian)
        return np.array(offs, dtype=np.int64), nxt
    size = len(buf)
    u32 = np.ndarray((size - 3,), dtype=endian + "u4", buffer=buf, strides=(1,))
    sample, after = python_run_n(buf, off, _SAMPLE_RECORDS, endian)
    lengths = np.diff(np.append(sample, after))
    segment = max(_MIN_SEGMENT, int(lengths.mean() * SEGMENT_RECORDS))
    window = min(segment // 2, max(64, int(lengths.max())))
    guesses = _guesses(u32, off, lim, nano, segment, window)
    if len(guesses) < _MIN_WALKERS:
        offs, nxt = python_run(buf, off, lim + 1, endian)
        return np.array(offs, dtype=np.int64), nxt
    stops = np.append(guesses[1:], lim + 1)

    def step(cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cur + 16 + u32[cur + 8], np.ones(len(cur), dtype=bool)

    def rewalk(pos: int, stop: int) -> tuple[list[int], int, bool]:
        offs, nxt = python_run(buf, pos, stop, endian)
        return offs, nxt, False

    return _walk(guesses, stops, step, rewalk)


def pcapng_epb_run(buf, off: int, stop: int, endian: str) -> tuple[np.ndarray, int]:
    """Offsets of the consecutive well-formed Enhanced Packet Blocks from ``off`` while they start before
    ``stop``. A block ends the run unless its type is 6, its length at least 32, a multiple of 4, within the
    file and repeated at the block's end; the caller reads that block the long way (pcapng,
    draft-ietf-opsawg-pcapng sections 3.1 and 4.3).

    Returns (offsets as int64, offset of the block that ended the run, or the first at or past ``stop``).

    The run is walked over spans that double while it lasts (2 MiB, 4 MiB, ...), so a file with another block
    every few packets (statistics, interface descriptions) costs about what the plain loop costs, not a guess
    over the whole chunk each time.
    """
    pieces: list[np.ndarray] = []
    span = max(2 * LOCKSTEP_MIN_BYTES, 4096)  # never 0: each span walks at least one block or ends the run
    while True:
        upto = min(stop, off + span)
        offs, nxt = _epb_span(buf, off, upto, endian)
        pieces.append(offs)
        if nxt < upto or upto >= stop:  # the run ended, or the span reached ``stop``
            return (np.concatenate(pieces) if len(pieces) > 1 else pieces[0]), nxt
        off, span = nxt, 2 * span


def _epb_span(buf, off: int, stop: int, endian: str) -> tuple[np.ndarray, int]:
    """pcapng_epb_run within one span: in Python below LOCKSTEP_MIN_BYTES or when the run ends in the sample,
    else in lockstep."""
    end = len(buf)
    if stop - off < LOCKSTEP_MIN_BYTES:
        offs, nxt = python_epb_run(buf, off, stop, endian)
        return np.array(offs, dtype=np.int64), nxt
    u32 = np.ndarray((end - 3,), dtype=endian + "u4", buffer=buf, strides=(1,))
    sample, after = python_epb_run(buf, off, stop, endian, _SAMPLE_RECORDS)
    if len(sample) < _SAMPLE_RECORDS:  # the run ends within the sample
        return np.array(sample, dtype=np.int64), after
    lengths = np.diff(np.append(sample, after))
    segment = max(_MIN_SEGMENT, int(lengths.mean() * SEGMENT_RECORDS))
    # Wider than for pcap (a type test per offset is cheap): blocks longer than the sample's leave fewer cuts
    # unguessed.
    window = min(segment // 2, max(256, 4 * int(lengths.max())))
    guesses = _epb_guesses(u32, off, stop, end, segment, window)
    if len(guesses) < _MIN_WALKERS:
        offs, nxt = python_epb_run(buf, off, stop, endian)
        return np.array(offs, dtype=np.int64), nxt
    stops = np.append(guesses[1:], stop)

    def step(cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        room = end - cur >= 12
        at = np.where(room, cur, 0)
        blen = u32[at + 4].astype(np.int64)
        ok = room & (u32[at] == 6) & (blen >= 32) & ((blen & 3) == 0) & (cur + blen <= end)
        ok &= u32[np.where(ok, at + blen - 4, 0)] == blen  # the length repeated at the block's end
        return np.where(ok, cur + blen, cur), ok

    def rewalk(pos: int, stop_at: int) -> tuple[list[int], int, bool]:
        offs, nxt = python_epb_run(buf, pos, stop_at, endian)
        return offs, nxt, nxt < stop_at

    return _walk(guesses, stops, step, rewalk)


def python_epb_run(buf, off: int, stop: int, endian: str, limit: int | None = None) -> tuple[list[int], int]:
    """The plain loop of pcapng_epb_run (at most ``limit`` blocks); (offsets, offset where the run ended)."""
    unpack = struct.Struct(endian + "II").unpack_from
    trailer = struct.Struct(endian + "I").unpack_from
    end = len(buf)
    offs: list[int] = []
    ap = offs.append
    while off < stop and end - off >= 12 and (limit is None or len(offs) < limit):
        btype, blen = unpack(buf, off)
        if btype != 6 or blen < 32 or blen & 3 or off + blen > end or trailer(buf, off + blen - 4)[0] != blen:
            break
        ap(off)
        off += blen
    return offs, off


Step = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Rewalk = Callable[[int, int], tuple[list[int], int, bool]]


def _walk(guesses: np.ndarray, stops: np.ndarray, step: Step, rewalk: Rewalk) -> tuple[np.ndarray, int]:
    """Walk every segment [guesses[i], stops[i]) in lockstep and keep the true chain (see the module docstring).

    ``step(cur)`` gives each walker's next offset and whether the record at ``cur`` was one (False: the walk
    stops there, the chain ends at that block); ``rewalk(pos, stop)`` is the plain loop from ``pos``: (offsets,
    where it ended, whether the chain ended before ``stop``). guesses[0] is a true record start."""
    k = len(guesses)
    # The active walkers' positions, ids and stops, in id order; each step's offsets kept with it.
    cur, ids, stop = guesses.copy(), np.arange(k, dtype=np.int64), stops.copy()
    land = np.empty(k, dtype=np.int64)
    blocked = np.zeros(k, dtype=bool)
    steps_off: list[np.ndarray] = []
    steps_id: list[np.ndarray] = []
    while len(cur) and len(steps_off) < _MAX_STEPS:
        nxt, ok = step(cur)
        if not ok.all():  # these walkers met something other than a record: they stop where they are
            bad = ~ok
            land[ids[bad]] = cur[bad]
            blocked[ids[bad]] = True
            cur, ids, stop, nxt = cur[ok], ids[ok], stop[ok], nxt[ok]
        steps_off.append(cur)
        steps_id.append(ids)
        going = nxt < stop
        if not going.all():
            done = ~going
            land[ids[done]] = nxt[done]
        cur, ids, stop = nxt[going], ids[going], stop[going]
    # Walkers still going (a segment of many tiny records, or a wrong guess walking zeros) finish in Python.
    unfinished = np.zeros(k, dtype=bool)
    unfinished[ids] = True
    land[ids] = cur
    # Each walker's offsets together, in walk order: walker i's j-th record at start[i] + j.
    counts = np.zeros(k, dtype=np.int64)
    for s in steps_id:  # a walker active at step j was active at every earlier step
        counts[s] += 1
    start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    walked = np.empty(int(counts.sum()), dtype=np.int64)
    for j, (o, s) in enumerate(zip(steps_off, steps_id, strict=True)):
        walked[start[s] + j] = o
    # The true chain: segment 0's walk, then each segment whose guess it lands on; the rest walked again.
    pieces: list[np.ndarray] = []
    pos = int(guesses[0])
    run_from = 0  # first walker of the current run of accepted walkers
    for i in range(k):
        if pos == guesses[i]:
            pos = int(land[i])
            if blocked[i]:  # the chain ends inside this segment, at ``pos``
                pieces.append(walked[start[run_from]:start[i] + counts[i]])
                return np.concatenate(pieces), pos
            if not unfinished[i]:
                continue
            upto = int(start[i] + counts[i])  # this walker's records stand; the rest of its segment follows
        else:
            upto = int(start[i])  # a wrong guess: its records go
        if upto > start[run_from]:
            pieces.append(walked[start[run_from]:upto])
        again, pos, ended = rewalk(pos, int(stops[i]))
        pieces.append(np.array(again, dtype=np.int64))
        if ended:
            return np.concatenate(pieces), pos
        run_from = i + 1
    if run_from < k:
        pieces.append(walked[start[run_from]:])
    return (np.concatenate(pieces) if len(pieces) > 1 else pieces[0]), pos


def _guesses(u32: np.ndarray, off: int, lim: int, nano: bool, segment: int, window: int) -> np.ndarray:
    """``off`` and, in the ``window`` bytes past each cut every ``segment`` bytes, the first offset whose header
    and next header look sane (fraction below one second, 0 < incl_len <= orig_len, incl_len below 256 KiB,
    ts_sec near the first record's); strictly increasing, all at most ``lim``."""
    cuts = np.arange(off + segment, lim - window, segment, dtype=np.int64)
    if not len(cuts):
        return np.array([off], dtype=np.int64)
    sec0 = int(u32[off])
    frac_max = 1_000_000_000 if nano else 1_000_000

    def sane(at: np.ndarray) -> np.ndarray:
        incl = u32[at + 8]
        return ((u32[at + 4] < frac_max) & (incl > 0) & (incl <= 262144) & (u32[at + 12] >= incl)
                & (np.abs(u32[at].astype(np.int64) - sec0) < _SEC_SPAN))

    # ts_sec first, on every offset of every window (a strided view, no copy): few bytes of a payload pass it.
    secs = np.lib.stride_tricks.as_strided(u32[int(cuts[0]):], shape=(len(cuts), window), strides=(segment, 1),
                                           writeable=False)
    lo, hi = max(0, sec0 - _SEC_SPAN + 1), min(0xFFFFFFFF, sec0 + _SEC_SPAN - 1)  # bounds within uint32
    rows, cols = np.nonzero((secs >= lo) & (secs <= hi))
    at = cuts[rows] + cols
    keep = sane(at)
    rows, at = rows[keep], at[keep]
    nxt = at + 16 + u32[at + 8]
    inside = nxt <= lim
    good = np.zeros(len(at), dtype=bool)
    good[inside] = sane(nxt[inside])
    rows, at = rows[good], at[good]
    first = np.unique(rows, return_index=True)[1]  # np.nonzero goes row by row: the first per row is the earliest
    return np.concatenate(([off], at[first])).astype(np.int64)


def _epb_guesses(u32: np.ndarray, off: int, stop: int, end: int, segment: int, window: int) -> np.ndarray:
    """``off`` and, in the ``window`` bytes past each cut every ``segment`` bytes, the first offset that holds
    an Enhanced Packet Block type whose length is sane and repeated at the block's end, as is the next block's
    if that is an EPB too; strictly increasing, all below ``stop``."""
    cuts = np.arange(off + segment, stop - window, segment, dtype=np.int64)
    cuts = cuts[cuts + window + 12 <= end]
    if not len(cuts):
        return np.array([off], dtype=np.int64)
    types = np.lib.stride_tricks.as_strided(u32[int(cuts[0]):], shape=(len(cuts), window), strides=(segment, 1),
                                            writeable=False)
    rows, cols = np.nonzero(types == 6)
    at = cuts[rows] + cols
    blen = u32[at + 4].astype(np.int64)
    ok = (blen >= 32) & ((blen & 3) == 0) & (at + blen <= end)
    ok[ok] = u32[at[ok] + blen[ok] - 4] == blen[ok]
    rows, at = rows[ok], at[ok]
    first = np.unique(rows, return_index=True)[1]
    return np.concatenate(([off], at[first])).astype(np.int64)
