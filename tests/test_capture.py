"""Tests of natproof/capture.py: the record loop over pcap, pcapng and gzip."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pcapbytes import ether, ipv4, pcap, pcapng, udp

from natproof.capture import read_capture
from natproof.errors import CaptureError

FRAME = ether(ipv4("10.244.0.10", "198.51.100.10", 17, udp(1000, 53, b"q")))
T0 = 1_700_000_000_123_456_789


def write(tmp_path: Path, data: bytes, name: str = "c.pcap") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("big_endian", [False, True])
def test_nanosecond_pcap_keeps_every_nanosecond(tmp_path: Path, big_endian: bool) -> None:
    path = write(tmp_path, pcap([(T0, FRAME), (T0 + 1, FRAME)], big_endian=big_endian))
    info, recs = read_capture(path)
    recs = list(recs)
    assert [r.ts_ns for r in recs] == [T0, T0 + 1]
    assert [r.frame_no for r in recs] == [1, 2]
    assert info.format == "pcap" and info.link_type == "EN10MB" and info.ts_precision_ns == 1
    assert recs[0].data == FRAME


def test_microsecond_pcap(tmp_path: Path) -> None:
    info, recs = read_capture(write(tmp_path, pcap([(T0, FRAME)], nano=False)))
    assert [r.ts_ns for r in recs] == [T0 // 1000 * 1000]
    assert info.ts_precision_ns == 1000


def test_snaplen_truncation_is_visible(tmp_path: Path) -> None:
    info, recs = read_capture(write(tmp_path, pcap([(T0, FRAME)], wire_extra=100)))
    (rec,) = list(recs)
    assert rec.wire_len == rec.caplen + 100
    assert info.truncated_records == 1


def test_gzip_is_sniffed_not_named(tmp_path: Path) -> None:
    path = write(tmp_path, gzip.compress(pcap([(T0, FRAME)] * 3)), name="no-extension")
    info, recs = read_capture(path)
    assert len(list(recs)) == 3
    assert info.format == "pcap+gzip"


def test_pcapng_interfaces_keep_their_own_link_type_and_resolution(tmp_path: Path) -> None:
    raw = ipv4("10.244.0.10", "198.51.100.10", 17, udp(1000, 53, b"q"))
    data = pcapng([(1, None), (101, 9)], [(0, T0 // 1000, FRAME), (1, T0, raw)])
    info, recs = read_capture(write(tmp_path, data, "c.pcapng"))
    a, b = list(recs)
    assert (a.linktype, a.ts_ns, a.iface) == (1, T0 // 1000 * 1000, 0)
    assert (b.linktype, b.ts_ns, b.iface) == (101, T0, 1)
    assert info.link_types == [1, 101]
    assert info.link_type == "EN10MB,RAW"


def test_a_capture_error_crosses_a_process_boundary() -> None:
    """Raised in a process pool's child (a grading script's), it reaches the caller whole: pickled, it came back
    as a TypeError that broke the pool."""
    import pickle

    err = pickle.loads(pickle.dumps(CaptureError("x.pcap", "not a pcap or pcapng capture")))
    assert (type(err), err.path, err.problem, str(err)) == (
        CaptureError, "x.pcap", "not a pcap or pcapng capture", "x.pcap: not a pcap or pcapng capture")


def test_last_record_cut_short_is_a_warning(tmp_path: Path) -> None:
    data = pcap([(T0, FRAME), (T0 + 5, FRAME)])
    info, recs = read_capture(write(tmp_path, data[:-5]))
    assert len(list(recs)) == 1
    assert info.warnings == ["last record truncated at frame 2; 1 frames used"]


def test_a_wrong_record_length_mid_file_is_corruption_not_a_truncated_last_record(tmp_path: Path) -> None:
    """A helper's file: record 2's stored length set to 3, so the next header is read from inside its frame and
    claims more than is left. Both decoders call that corruption after frame 2 (it was 'last record truncated',
    the later frames dropped with no word of it); a file merely cut short still says truncated."""
    import struct

    from natproof.fastdecode import decode_file

    data = bytearray(pcap([(T0 + i, FRAME) for i in range(6)]))
    struct.pack_into("<I", data, 24 + (16 + len(FRAME)) + 8, 3)  # record 2's incl_len
    path = write(tmp_path, bytes(data))
    info, recs = read_capture(path)
    assert len(list(recs)) == 2
    (warning,) = info.warnings
    assert "corrupt from there" in warning and "truncated" not in warning
    fast_info, _ = decode_file(path)
    assert fast_info.warnings == info.warnings
    # The helper's own file: the kernel capture captures/basic/inside.pcap with record 4's length set to 3. The
    # header read from inside its frame claims a length that runs past the end, and a sub-second field no writer
    # makes.
    data = bytearray((Path(__file__).resolve().parent.parent / "captures" / "basic" / "inside.pcap").read_bytes())
    struct.pack_into("<I", data, 334 + 8, 3)
    path = write(tmp_path, bytes(data), "basic.pcap")
    info, recs = read_capture(path)
    assert len(list(recs)) == 4
    (warning,) = info.warnings
    assert warning.startswith("the record header after frame 4 is not valid (sub-second field ")
    assert warning.endswith("the file is corrupt from there (a wrong record length before it?); 4 frames used")
    assert decode_file(path)[0].warnings == info.warnings


def test_a_capture_out_of_time_order_spans_its_earliest_to_its_latest_packet(tmp_path: Path) -> None:
    """A helper moved a capture's last record to its front: the span was read from the first and last records
    in file order, and two captures that overlap were said never to have run at the same time."""
    from natproof.fastdecode import decode_file

    path = write(tmp_path, pcap([(T0 + 9_000, FRAME), (T0, FRAME), (T0 + 5_000, FRAME)]))
    info, recs = read_capture(path)
    times = [r.ts_ns for r in recs]
    assert times[0] > times[1] < times[2] and (info.first_ts_ns, info.last_ts_ns) == (min(times), max(times))
    fast_info, _ = decode_file(path)
    assert (fast_info.first_ts_ns, fast_info.last_ts_ns) == (info.first_ts_ns, info.last_ts_ns)


def _epb_offsets(data: bytes) -> list[int]:
    import struct

    epbs, off = [], 0
    while off < len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        epbs += [off] if btype == 6 else []
        off += blen
    return epbs


def test_pcapng_block_cut_short_or_of_a_corrupt_length_says_which(tmp_path: Path) -> None:
    """A length past the end is the file cut short or damaged (which, the bytes cannot tell); a length no block can
    have (not a multiple of 4) in the middle of the file is a corrupt block, not a truncation. Both decoders say
    the same."""
    import struct

    from natproof.fastdecode import decode_file

    data = pcapng([(1, None)], [(0, T0 // 1000 + i, FRAME) for i in range(3)])
    epbs = _epb_offsets(data)
    second, third = epbs[1], epbs[2]
    corrupt = bytearray(data)
    corrupt[second + 4:second + 8] = struct.pack("<I", 30)
    short = bytearray(data)  # a length a block may have, too short for a packet block, not repeated at its end
    short[second + 4:second + 8] = struct.pack("<I", 12)
    blen = len(data) - third
    trail = struct.unpack_from("<I", data, second + 8)[0]  # what the 12-byte block's end holds: the next field
    for blob, warning in ((data[:-5], f"block length past the end of the file at offset {third} (frame 3: {blen} "
                                      f"bytes, {blen - 5} left): the file is damaged or cut short; 2 frames used"),
                          (bytes(corrupt), f"corrupt block length (30 bytes) at frame 2 (offset {second}); "
                                           "1 frames used"),
                          (bytes(short), f"corrupt block length (12 bytes, {trail} at its end) at frame 2 "
                                         f"(offset {second}); 1 frames used")):
        path = write(tmp_path, blob, "c.pcapng")
        info, recs = read_capture(path)
        assert len(list(recs)) == int(warning.split("; ")[-1].split()[0])
        assert info.warnings == [warning]
        assert decode_file(path)[0].warnings == [warning]


def test_pcapng_block_whose_trailing_length_differs_ends_the_file_with_a_warning(tmp_path: Path) -> None:
    """A block whose Block Total Length at its end differs from the one at its start was accepted silently (the
    leading one trusted). One of the two is corrupt and where the next block starts cannot be known: it is read as
    the nearest case is, a length no block can have mid-file (corrupt block length), so reading ends there with
    a warning naming the frame and the offset, the frames before it kept; not an error (a file cut short or
    corrupt later on keeps what was whole, as a pcap record cut short does). Both decoders, the dpkt reference and
    the fast one's EPB run in lockstep, stop at the same block and say the same."""
    import struct

    from natproof.fastdecode import decode_file
    from natproof.packets import load_packets

    data = pcapng([(1, None)], [(0, T0 // 1000 + i, FRAME) for i in range(6)])
    epbs = _epb_offsets(data)
    for k in (0, 3, 5):  # the first packet block (no frame read), one mid-file, the last
        at = epbs[k]
        blen = struct.unpack_from("<I", data, at + 4)[0]
        bad = bytearray(data)
        struct.pack_into("<I", bad, at + blen - 4, blen + 4)  # the trailer says 4 bytes more
        path = write(tmp_path, bytes(bad), f"trailer{k}.pcapng")
        warning = f"corrupt block length ({blen} bytes, {blen + 4} at its end) at frame {k + 1} (offset {at}); " \
                  f"{k} frames used"
        if k == 0:  # nothing before it: the file gives no packet, one error naming it (exit 2 on the CLI)
            with pytest.raises(CaptureError) as exc:
                read_capture(path)
            assert (exc.value.path, exc.value.problem) == (str(path), warning)
            for fast in (False, True):
                with pytest.raises(CaptureError) as exc:
                    load_packets(path, fast=fast)
                assert exc.value.problem == warning
            continue
        info, recs = read_capture(path)
        assert [r.frame_no for r in recs] == list(range(1, k + 1))
        assert info.warnings == [warning]
        for fast in (False, True):
            got_info, frame = load_packets(path, fast=fast)
            assert got_info.warnings == [warning] and frame.height == k
        assert decode_file(path, chunk_bytes=64)[0].warnings == [warning]
    # The Interface Description Block's trailer: no interface is read, the file gives no packet.
    idb = struct.unpack_from("<I", data, 4)[0]
    blen = struct.unpack_from("<I", data, idb + 4)[0]
    bad = bytearray(data)
    struct.pack_into("<I", bad, idb + blen - 4, 0)
    with pytest.raises(CaptureError, match=rf"corrupt block length \({blen} bytes, 0 at its end\) at frame 1 "):
        read_capture(write(tmp_path, bytes(bad), "idb.pcapng"))


def test_pcapng_block_claiming_far_past_the_end_mid_file_is_not_called_the_last_block_truncated(
        tmp_path: Path) -> None:
    """A block mid-file claiming 0x7ffffff0 bytes read as 'last block truncated at frame 3': the frames after it
    dropped under a word that blamed the file's end. It is a block length past the end of the file at an offset:
    the file is damaged there or cut short. Both decoders say the same."""
    import struct

    from natproof.fastdecode import decode_file

    data = bytearray(pcapng([(1, None)], [(0, T0 // 1000 + i, FRAME) for i in range(6)]))
    at = _epb_offsets(bytes(data))[2]
    struct.pack_into("<I", data, at + 4, 0x7FFFFFF0)
    path = write(tmp_path, bytes(data), "huge.pcapng")
    info, recs = read_capture(path)
    assert len(list(recs)) == 2
    warning = (f"block length past the end of the file at offset {at} (frame 3: 2147483632 bytes, {len(data) - at} "
               "left): the file is damaged or cut short; 2 frames used")
    assert info.warnings == [warning]
    assert "truncated" not in warning
    assert decode_file(path)[0].warnings == [warning]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty file (0 bytes)"),
        (pcap([]), "empty capture (file header only, no packets)"),
        (b"PK\x03\x04rest", "not a pcap or pcapng capture (starts with 50 4b 03 04)"),
        (pcap([])[:10], "truncated pcap file header (10 of 24 bytes)"),
        (pcap([(T0, FRAME)])[:30], "last record header truncated after frame 0; 0 frames used"),
        (b"\x1f\x8bnot really gzip", None),
        (gzip.compress(b"", mtime=0), "empty gzip stream (nothing after decompression)"),
    ],
)
def test_unusable_files_raise_one_clear_error(tmp_path: Path, data: bytes, problem: str | None) -> None:
    path = write(tmp_path, data)
    with pytest.raises(CaptureError) as exc:
        read_capture(path)
    assert exc.value.path == str(path)
    if problem is not None:
        assert exc.value.problem == problem
    else:
        assert exc.value.problem.startswith("corrupt gzip stream")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such file"):
        read_capture(tmp_path / "absent.pcap")
    with pytest.raises(CaptureError, match="is a directory"):
        read_capture(tmp_path)


@given(st.binary(max_size=300))
def test_fuzz_any_bytes_raise_only_capture_error(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f"
        p.write_bytes(data)
        try:
            info, recs = read_capture(p)
            for rec in recs:
                assert rec.caplen == len(rec.data)
        except CaptureError:
            pass


@given(st.binary(max_size=200))
def test_fuzz_valid_header_random_body(body: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for head in (pcap([]), pcapng([(1, None)], [])):
            p = Path(d) / "f"
            p.write_bytes(head + body)
            try:
                _, recs = read_capture(p)
                list(recs)
            except CaptureError:
                pass


def test_pcapng_short_packet_block_is_counted_not_fatal(tmp_path: Path) -> None:
    import struct

    good = pcapng([(1, None)], [(0, 5, FRAME)])
    bad_epb = struct.pack("<II", 6, 16) + b"\0" * 4 + struct.pack("<I", 16)
    info, recs = read_capture(write(tmp_path, good + bad_epb + good[-(12 + 20 + len(FRAME) + 2 + 4):]))
    assert len(list(recs)) >= 1
    assert info.skipped["malformed_block"] == 1


def test_a_gzip_stream_cut_short_is_read_up_to_the_cut_in_both_decoders(tmp_path: Path) -> None:
    # A half-written (or half-copied) capture.pcap.gz was refused outright ("corrupt gzip stream"), while the same
    # capture cut short uncompressed is read up to its last whole record (a new user's break test).
    from natproof.capture import GZIP_CUT
    from natproof.packets import load_packets

    raw = pcap([(T0 + i * 1000, FRAME) for i in range(400)])
    whole = gzip.compress(raw)
    cut = write(tmp_path, whole[:len(whole) * 2 // 3], name="cut.pcap.gz")
    frames = []
    for fast in (True, False):
        info, pk = load_packets(cut, fast=fast)
        assert info.format == "pcap+gzip"
        assert info.warnings[0] == GZIP_CUT
        assert 0 < pk.height < 400
        frames.append(pk)
    assert frames[0].equals(frames[1])
    two = write(tmp_path, gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]), name="members.pcap.gz")
    info, pk = load_packets(two)
    assert pk.height == 400 and not info.warnings  # a multi-member stream is whole
