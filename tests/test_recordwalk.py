"""The lockstep record walk (natproof.recordwalk) against the plain loop and the dpkt reference."""

from __future__ import annotations

import contextlib
import mmap
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pcapbytes import ether, ipv4, pcap, pcapng, udp
from test_fastdecode import BUNDLED, _info, assert_same, captures

from natproof import recordwalk
from natproof.fastdecode import decode_file


@contextlib.contextmanager
def tiny_segments(records: int = 2) -> Iterator[None]:
    """Walk every span in lockstep, with segments of a few records (so small files have many walkers); a context
    manager, not a fixture: hypothesis reruns the body."""
    saved = {k: getattr(recordwalk, k) for k in ("LOCKSTEP_MIN_BYTES", "SEGMENT_RECORDS", "_MIN_SEGMENT",
                                                  "_MIN_WALKERS", "_SAMPLE_RECORDS")}
    recordwalk.LOCKSTEP_MIN_BYTES, recordwalk.SEGMENT_RECORDS = 0, records
    recordwalk._MIN_SEGMENT, recordwalk._MIN_WALKERS, recordwalk._SAMPLE_RECORDS = 48, 1, 2
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(recordwalk, k, v)


def _both(data: bytes, off: int = 24, lim: int | None = None, endian: str = "<", nano: bool = True) -> list[int]:
    """Walk ``data`` both ways; the offsets and the next offset must be equal."""
    lim = len(data) - 16 if lim is None else lim
    ref, ref_next = recordwalk.python_run(data, off, lim + 1, endian)
    with tiny_segments():
        got, nxt = recordwalk.pcap_run(data, off, lim, endian, nano)
    assert got.dtype == np.int64
    assert got.tolist() == ref and nxt == ref_next
    return ref


def _record_header(ts: int, incl: int, orig: int | None = None) -> bytes:
    return struct.pack("<IIII", ts, 0, incl, incl if orig is None else orig)


def test_bundled_captures_walked_in_lockstep_decode_as_the_plain_loop() -> None:
    """Every bundled capture (real kernel captures; pcap and pcapng), walked in lockstep in one chunk and in many
    (each walk stops and resumes at a chunk's end), decodes as the plain loop does (which tests/test_fastdecode.py
    holds to dpkt)."""
    for path in BUNDLED:
        info, plain = decode_file(path)
        with tiny_segments(8):
            for chunk in (None, 4096):
                got_info, got = decode_file(path) if chunk is None else decode_file(path, chunk_bytes=chunk)
                assert got.equals(plain), path
                assert _info(got_info) == _info(info), path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(captures())
def test_random_captures_walked_in_lockstep(case: tuple[bytes, int | None]) -> None:
    """Truncated and corrupt files, both byte orders: the same frames and warnings as dpkt."""
    data, chunk = case
    with tempfile.TemporaryDirectory() as d, tiny_segments():
        p = Path(d) / "c"
        p.write_bytes(data)
        assert_same(p)
        if chunk is not None:
            assert_same(p, chunk_bytes=chunk)


# Payloads that look like record headers: a wrong guess must cost time, never a wrong offset.
_FAKE = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda ts, incl: _record_header(ts, incl) + b"\0" * min(incl, 64) + _record_header(ts, 20),
              st.integers(1_700_000_000, 1_700_000_010), st.integers(0, 80)),
    st.just(b"\0" * 64),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_FAKE, max_size=4).map(b"".join), min_size=1, max_size=60), st.booleans(),
       st.integers(0, 40))
def test_lockstep_equals_the_loop_whatever_the_payloads(payloads: list[bytes], big: bool, cut: int) -> None:
    records = [(1_700_000_000 * 10**9 + i * 1000, ether(ipv4("10.0.0.1", "192.0.2.1", 17, udp(1, 2, p))))
               for i, p in enumerate(payloads)]
    data = pcap(records, big_endian=big)
    _both(data, endian=">" if big else "<")
    _both(data, lim=max(24, len(data) - 16 - cut * 37), endian=">" if big else "<")  # a limit inside a record


def test_corrupt_length_jumps_past_the_end_as_the_loop_does() -> None:
    frame = ether(ipv4("10.0.0.1", "192.0.2.1", 17, udp(1, 2, b"x" * 10)))
    data = bytearray(pcap([(i, frame) for i in range(40)]))
    at = 24 + 20 * (16 + len(frame))
    data[at + 8: at + 12] = (0xFFFFFFF0).to_bytes(4, "little")
    offs = _both(bytes(data))
    assert len(offs) == 21


def test_zero_length_records_and_walkers_past_the_step_cap() -> None:
    """Records of no bytes (16-byte strides) in a segment sized for long ones: walkers still going after the
    step cap finish in Python."""
    long = ether(ipv4("10.0.0.1", "192.0.2.1", 17, udp(1, 2, b"y" * 900)))
    data = pcap([(i, long) for i in range(8)] + [(100 + i, b"") for i in range(600)] + [(900, long)] * 4)
    with mmap.mmap(-1, len(data)) as m:
        m.write(data)
        ref, ref_next = recordwalk.python_run(m, 24, len(data) - 15, "<")
        with tiny_segments(16):
            was = recordwalk._MAX_STEPS
            recordwalk._MAX_STEPS = 8
            try:
                got, nxt = recordwalk.pcap_run(m, 24, len(data) - 16, "<", True)
            finally:
                recordwalk._MAX_STEPS = was
        assert got.tolist() == ref and nxt == ref_next and len(ref) == 612


@pytest.mark.parametrize("nano", [True, False])
def test_real_sized_span_uses_many_walkers(nano: bool) -> None:
    """At the default sizes a 2 MiB span of small records is walked by many walkers and equals the loop."""
    frame = ether(ipv4("10.0.0.1", "192.0.2.1", 6, b"\0" * 20 + b"z" * 30))
    data = pcap([(1_700_000_000 * 10**9 + i * 997, frame) for i in range(2 * 1024 * 1024 // (16 + len(frame)))],
                nano=nano)
    ref, ref_next = recordwalk.python_run(data, 24, len(data) - 15, "<")
    got, nxt = recordwalk.pcap_run(data, 24, len(data) - 16, "<", nano)
    assert got.tolist() == ref and nxt == ref_next
    # Every cut guessed a record start, and every guess is one: the whole span went in lockstep.
    u32 = np.ndarray((len(data) - 3,), dtype="<u4", buffer=data, strides=(1,))
    segment = 256 * (16 + len(frame))
    guesses = recordwalk._guesses(u32, 24, len(data) - 16, nano, segment, 256)
    assert len(guesses) == len(range(24 + segment, len(data) - 16 - 256, segment)) + 1 > 50
    assert set(guesses.tolist()) <= set(ref)


@pytest.mark.parametrize("sec", [0, 5, 0xFFFFFFF0, 0xFFFFFFFF])
def test_timestamps_at_the_ends_of_the_range(sec: int) -> None:
    """A first record stamped near 0 or 2^32 s (a corrupt or odd file): the sanity window stays within uint32."""
    frame = ether(ipv4("10.0.0.1", "192.0.2.1", 17, udp(1, 2, b"q" * 20)))
    data = pcap([(sec * 10**9 + i, frame) for i in range(400)])
    _both(data)


def _epb_both(data: bytes, off: int, stop: int | None = None) -> list[int]:
    stop = len(data) if stop is None else stop
    ref, ref_next = recordwalk.python_epb_run(data, off, stop, "<")
    with tiny_segments():
        got, nxt = recordwalk.pcapng_epb_run(data, off, stop, "<")
    assert got.tolist() == ref and nxt == ref_next
    return ref


def _fake_epb(body_len: int) -> bytes:
    """Bytes that look like a whole EPB (type, length, the length again at the end) inside a payload."""
    blen = 32 + body_len
    return struct.pack("<II", 6, blen) + b"\0" * (blen - 12) + struct.pack("<I", blen)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=30), st.integers(0, 40).map(lambda n: _fake_epb(4 * n))),
                min_size=1, max_size=50), st.integers(0, 49), st.sampled_from([1, 3, 5, None]))
def test_pcapng_runs_in_lockstep_stop_where_the_loop_does(payloads: list[bytes], other_at: int,
                                                          other: int | None) -> None:
    """Packets whose payloads hold EPB lookalikes, with an interface, statistics or section block in the run."""
    frames = [(0, 1_700_000_000_000_000 + i, ether(ipv4("10.0.0.1", "192.0.2.1", 17, udp(1, 2, p))))
              for i, p in enumerate(payloads)]
    data = bytearray(pcapng([(1, 9)], frames))
    shb = int.from_bytes(data[4:8], "little")
    first = shb + int.from_bytes(data[shb + 4: shb + 8], "little")
    if other is not None:  # put a block of another type in place of one EPB (same length: the file stays whole)
        at = first
        for _ in range(min(other_at, len(frames) - 1)):
            at += int.from_bytes(data[at + 4: at + 8], "little")
        data[at: at + 4] = other.to_bytes(4, "little")
    offs = _epb_both(bytes(data), first)
    assert len(offs) == (len(frames) if other is None else min(other_at, len(frames) - 1))
    _epb_both(bytes(data), first, len(data) - 40)  # a stop inside the last block


def test_pcapng_run_stops_at_a_block_whose_trailing_length_differs() -> None:
    """A packet block whose length at its end differs from its leading one ends the run in lockstep where the plain
    loop ends it (the framing then reads it the long way and stops with a warning, as natproof.capture does)."""
    frame = ether(ipv4("10.0.0.1", "192.0.2.1", 17, udp(1, 2, b"t" * 30)))
    data = pcapng([(1, None)], [(0, i, frame) for i in range(50)])
    shb = int.from_bytes(data[4:8], "little")
    first = shb + int.from_bytes(data[shb + 4: shb + 8], "little")
    blen = int.from_bytes(data[first + 4: first + 8], "little")
    for k in (0, 1, 17, 49):
        bad = bytearray(data)
        at = first + k * blen
        bad[at + blen - 4: at + blen] = (blen + 4).to_bytes(4, "little")
        assert _epb_both(bytes(bad), first) == [first + i * blen for i in range(k)]


def test_pcapng_run_at_a_truncated_end() -> None:
    frame = ether(ipv4("10.0.0.1", "192.0.2.1", 17, udp(1, 2, b"t" * 30)))
    data = pcapng([(1, None)], [(0, i, frame) for i in range(50)])
    shb = int.from_bytes(data[4:8], "little")
    first = shb + int.from_bytes(data[shb + 4: shb + 8], "little")
    for cut in (1, 8, 11, 12, 40):
        _epb_both(data[:-cut], first)


def test_pcapng_runs_between_frequent_other_blocks_at_default_sizes() -> None:
    """A statistics block every 50 packets in 2 MiB: every run ends where the plain loop's does, over spans that
    start at twice LOCKSTEP_MIN_BYTES and double (each run is short, so none costs a guess over the whole chunk)."""
    frame = ether(ipv4("10.0.0.1", "192.0.2.1", 17, udp(1, 2, b"s" * 40)))
    n = 2 * 1024 * 1024 // (32 + len(frame) + 2)
    data = bytearray(pcapng([(1, None)], [(0, i, frame) for i in range(n)]))
    shb = int.from_bytes(data[4:8], "little")
    off = first = shb + int.from_bytes(data[shb + 4: shb + 8], "little")
    i = 0
    while off < len(data):
        if i % 50 == 49:
            data[off: off + 4] = (5).to_bytes(4, "little")
        off += int.from_bytes(data[off + 4: off + 8], "little")
        i += 1
    data = bytes(data)
    got_runs, ref_runs, off = [], [], first
    while off < len(data):
        ref, ref_next = recordwalk.python_epb_run(data, off, len(data), "<")
        got, nxt = recordwalk.pcapng_epb_run(data, off, len(data), "<")
        assert got.tolist() == ref and nxt == ref_next
        got_runs.append(len(got))
        ref_runs.append(len(ref))
        off = nxt + int.from_bytes(data[nxt + 4: nxt + 8], "little") if nxt < len(data) else nxt
    assert got_runs == ref_runs and set(got_runs[:-1]) == {49}
