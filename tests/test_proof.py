"""export-pcap (natproof/proof.py, natproof/report/pcapng.py): the proof as one pcapng, read back by tshark."""

from __future__ import annotations

import re
import shlex
import shutil
import struct
import subprocess
from pathlib import Path

import polars as pl
import pytest
from pcapbytes import ether, ipv4, pcapng, tcp, tcp_pair, write_pair
from test_readme import blocks

import natproof
from natproof.capture import read_capture
from natproof.cli import main
from natproof.errors import InputError
from natproof.proof import proof_packets, select_connections, write_proof
from natproof.report.pcapng import PcapngWriter

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (CI installs it)")


def pair(name: str) -> tuple[str, str]:
    return str(CAPTURES / name / "inside.pcap"), str(CAPTURES / name / "outside.pcap")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    """One row per packet: the fields tshark shows (``-T fields``), tab-separated as it prints them."""
    args = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=/t"]
    for f in fields:
        args += ["-e", f]
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    return [line.split("\t") for line in done.stdout.splitlines()]


def section_comment(path: Path) -> str:
    """The section header block's opt_comment, read from the bytes (little-endian, as natproof writes)."""
    data = path.read_bytes()
    btype, blen = struct.unpack_from("<II", data)
    assert btype == 0x0A0D0D0A
    off = 8 + 16
    while off < blen - 4:
        code, length = struct.unpack_from("<HH", data, off)
        if code == 1:
            return data[off + 4:off + 4 + length].decode()
        if code == 0:
            break
        off += 4 + length + (-length % 4)
    raise AssertionError("no section comment")


def selected_packets(result: natproof.Result, conns: list[int]) -> int:
    """Every packet of the connections, counted from the Result's packet frames (each side once)."""
    anchors = result.connections.filter(pl.col("conn").is_in(conns))["inside_conn_id"].to_list()
    return (result.inside_packets.filter(pl.col("anchor").is_in(anchors)).height
            + result.outside_packets.filter(pl.col("anchor").is_in(anchors)).height)


def origin(comment: str) -> tuple[str, int]:
    """(point, frame) a packet comment names as the packet's own: ``...; inside frame 14, egress, ...``."""
    m = re.search(r"; (inside|outside) frame (\d+),", comment)
    assert m, comment
    return m.group(1), int(m.group(2))


# -- the writer -----------------------------------------------------------------------------------------------------

def test_writer_blocks_read_back_by_natproof(tmp_path: Path) -> None:
    target = tmp_path / "w.pcapng"
    frames = [ether(ipv4("10.244.0.10", "198.51.100.10", 6, tcp(40000, 80, 1, 0, 0x02))), b"\x45" + b"\0" * 18]
    with open(target, "wb") as fh:
        w = PcapngWriter(fh, comment="section", userappl="natproof test")
        a = w.add_interface(1, "inside:veth1", "a.pcap")
        b = w.add_interface(101, "outside:eth0", "b.pcap")
        w.write_packet(a, 1_700_000_000_123_456_789, frames[0], comment="first, ünïcode")
        w.write_packet(b, 1_700_000_000_123_457_000, frames[1], wire_len=60)
        with pytest.raises(ValueError):
            w.write_packet(5, 0, b"")
    info, records = read_capture(target)
    got = list(records)
    assert info.if_names == ["inside:veth1", "outside:eth0"] and info.link_types == [1, 101]
    assert [(r.frame_no, r.ts_ns, r.iface, r.data) for r in got] == [
        (1, 1_700_000_000_123_456_789, 0, frames[0]), (2, 1_700_000_000_123_457_000, 1, frames[1])]
    assert got[1].wire_len == 60 and got[1].caplen == 19
    assert section_comment(target) == "section"


# -- export-pcap end to end, read by tshark ------------------------------------------------------------------------

@tshark
def test_tshark_shows_every_comment_and_interface(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = pair("port-collision")
    target = tmp_path / "proof.pcapng"
    code, out, err = run(capsys, "export-pcap", inside, outside, "-o", str(target), "--all")
    assert code == 0 and out == "" and "wrote" in err
    rows = tshark_fields(target, "frame.comment", "frame.interface_name", "frame.interface_description",
                         "frame.time_epoch")
    result = natproof.correlate(inside, outside)
    assert len(rows) == selected_packets(result, [0, 1]) == 40
    assert {r[1] for r in rows} == {"inside:inside.pcap", "outside:outside.pcap"}
    assert {(r[1], r[2]) for r in rows} == {("inside:inside.pcap", inside), ("outside:outside.pcap", outside)}
    assert all(r[0].startswith(("#0 translated: tcp 10.244.0.10:40000 -> 198.51.100.10:80 => 203.0.113.2:40000",
                                "#1 translated: tcp 10.244.0.11:40000 -> 198.51.100.10:80 => 203.0.113.2:53585"))
               for r in rows)
    times = [float(r[3]) for r in rows]
    assert times == sorted(times)
    # The rewritten connection's SYN and its counterpart, as the README shows them.
    syn = next(r[0] for r in rows if "; inside frame 14," in r[0])
    assert syn.endswith("; inside frame 14, egress, crossed = outside frame 8, +27.061 us")
    back = next(r[0] for r in rows if "; outside frame 8," in r[0])
    assert back.endswith("; outside frame 8, egress, crossed = inside frame 14, -27.061 us")
    # Each side's frames exactly once.
    seen = [origin(r[0]) for r in rows]
    assert len(set(seen)) == 40 and sum(p == "inside" for p, _ in seen) == 20


@tshark
def test_readme_example_is_what_it_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (shown,) = [b for b in blocks() if b and b[0].startswith("$ natproof export-pcap ")]
    argv = shlex.split(shown[0][2:])
    target = tmp_path / "proof.pcapng"
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, *argv[1:-1], str(target))
    assert argv[-2:] == ["-o", "proof.pcapng"] and code == 0 and out == ""
    assert err.replace(str(target), "proof.pcapng").splitlines() == [shown[1]]
    assert shown[2] == "$ tshark -r proof.pcapng -T fields -e frame.number -e frame.interface_name -e frame.comment"
    rows = ["\t".join(r) for r in tshark_fields(target, "frame.number", "frame.interface_name", "frame.comment")]
    assert shown[3:8] == rows[:5] and shown[8] == "..." and shown[9:] == rows[-1:]


def test_frames_copied_byte_for_byte_in_time_order(tmp_path: Path) -> None:
    inside, outside = pair("reply-drop")
    result = natproof.correlate(inside, outside)
    selection = select_connections(result)  # default: the connections the diagnosis's problems cite
    assert selection.conns == (1,) and "replies_dropped" in selection.why
    target = tmp_path / "proof.pcapng"
    summary = write_proof(result, target, selection)
    assert summary.packets == selected_packets(result, [1]) == 13
    assert summary.interfaces == ("inside:inside.pcap", "outside:outside.pcap")
    originals = {side: {r.frame_no: r for r in read_capture(path)[1]}
                 for side, path in (("inside", inside), ("outside", outside))}
    info, records = read_capture(target)
    got = list(records)
    assert len(got) == 13 and info.if_names == ["inside:inside.pcap", "outside:outside.pcap"]
    comments = proof_packets(result, [1])["comment"].to_list()
    for rec, comment in zip(got, comments, strict=True):
        side, frame = origin(comment)
        orig = originals[side][frame]
        assert (rec.data, rec.wire_len, rec.linktype, rec.ts_ns) == (orig.data, orig.wire_len, orig.linktype,
                                                                     orig.ts_ns)
        assert rec.iface == (0 if side == "inside" else 1)
        assert comment.startswith("#1 reply_dropped: tcp 10.244.0.10:44712 -> 198.51.100.10:8080 => ")
    assert [r.ts_ns for r in got] == sorted(r.ts_ns for r in got)
    # The replies the node dropped reached the outside and nothing else.
    assert sum("reply, outside only" in c for c in comments) == 5


def test_outside_times_on_the_inside_clock(tmp_path: Path) -> None:
    # The outside capture's clock runs 3 s ahead: its packets are written 3 s earlier, and the section says so.
    a_in, a_out = tcp_pair(sport=40000, nat_sport=51000, offset_ns=3 * 10**9)
    inside, outside = write_pair(tmp_path, a_in, a_out)
    result = natproof.correlate(inside, outside)
    assert result.clock_offset_s == 3.0
    target = tmp_path / "proof.pcapng"
    write_proof(result, target, select_connections(result, everything=True))
    _, records = read_capture(target)
    got = list(records)
    raw = {**{("inside", i + 1): ts for i, (ts, _) in enumerate(sorted(a_in))},
           **{("outside", i + 1): ts for i, (ts, _) in enumerate(sorted(a_out))}}
    comments = proof_packets(result, [0])["comment"].to_list()
    for rec, comment in zip(got, comments, strict=True):
        side, frame = origin(comment)
        assert rec.ts_ns == raw[(side, frame)] - (3 * 10**9 if side == "outside" else 0)
    assert [r.ts_ns for r in got] == sorted(r.ts_ns for r in got)
    # The NAT's 30 us, not the clocks' 3 s, between a packet and its counterpart.
    assert comments[0].endswith("; inside frame 1, egress, crossed = outside frame 1, +30 us")
    text = section_comment(target)
    assert "moved by -3.000000 s (clock offset +3.000000 s, outside clock minus inside, estimated" in text
    assert f"from {inside} (inside) and {outside} (outside)" in text


def test_one_capture_of_several_interfaces(tmp_path: Path) -> None:
    path = CAPTURES / "internal" / "any.pcap"
    result = natproof.correlate(path, interfaces=CAPTURES / "internal" / "links.txt")
    target = tmp_path / "proof.pcapng"
    summary = write_proof(result, target, select_connections(result, conns=[0, 1]))
    assert summary.interfaces == ("inside:vethpod1", "outside:eth0")
    assert summary.packets == selected_packets(result, [0, 1]) == 30
    originals = {r.frame_no: r for r in read_capture(path)[1]}
    comments = proof_packets(result, [0, 1])["comment"].to_list()
    _, records = read_capture(target)
    for rec, comment in zip(records, comments, strict=True):
        side, frame = origin(comment)
        assert rec.data == originals[frame].data and rec.linktype == 276  # LINUX_SLL2, as tcpdump -i any wrote it
    # The internal connection never left the pod side: inside only, no counterpart.
    assert all("inside only" in c and " = " not in c for c in comments if c.startswith("#1 internal"))


@pytest.mark.parametrize("side", ["inside", "outside"])
def test_one_capture_and_the_kernel_record(tmp_path: Path, side: str) -> None:
    # One side captured, the other from conntrack: its packets alone, no counterpart, one interface block.
    folder = CAPTURES / "basic"
    capture = folder / f"{side}.pcap"
    result = natproof.correlate(capture, conntrack=folder / "conntrack.log", side=side)
    target = tmp_path / "proof.pcapng"
    summary = write_proof(result, target, select_connections(result, everything=True))
    assert summary.interfaces == (f"{side}:{side}.pcap",) and summary.packets == 30
    comments = proof_packets(result, [0, 1, 2])["comment"].to_list()
    assert all(f"{side} only" in c and " = " not in c for c in comments)
    assert f"from {capture} ({side})." in section_comment(target)


@pytest.mark.parametrize("side", ["inside", "outside"])
def test_one_capture_says_nothing_of_moving_the_other_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            side: str) -> None:
    """A new user's trial: with one capture and the kernel's record, export-pcap said "outside times moved by
    +0.000000 s onto the inside clock", of a capture it never had. With both, it still says it."""
    folder = CAPTURES / "basic"
    target = tmp_path / "proof.pcapng"
    code, out, err = run(capsys, "export-pcap", str(folder / f"{side}.pcap"), "--conntrack",
                         str(folder / "conntrack.log"), "--side", side, "--all", "-o", str(target))
    assert code == 0 and out == "" and err.startswith(f"natproof: wrote {target}: 30 packets of 3 connection(s)")
    assert err.endswith(f"on interfaces {side}:{side}.pcap\n") and "clock" not in err
    code, _, err = run(capsys, "export-pcap", *pair("basic"), "--all", "-o", str(target))
    assert code == 0 and err.endswith("; outside times moved by +0.000000 s onto the inside clock\n")


def test_a_point_of_two_link_types_gets_a_block_per_type(tmp_path: Path) -> None:
    # dumpcap with three -i: two pod veths (one Ethernet, one raw IP) and eth0; each pod one connection out.
    a_in, a_out = tcp_pair(sport=40000, nat_sport=40000)
    b_in, b_out = tcp_pair(1_700_000_000 * 10**9 + 500_000, pod="10.244.0.11", sport=40001, nat_sport=40001,
                           isn=777_777)
    packets = sorted([(0, ts, ether(b)) for ts, b in a_in] + [(1, ts, b) for ts, b in b_in]
                     + [(2, ts, ether(b)) for ts, b in a_out + b_out], key=lambda p: p[1])
    path = tmp_path / "node.pcapng"
    path.write_bytes(pcapng([(1, 9, "veth1"), (101, 9, "veth2"), (1, 9, "eth0")],
                            [(i, ts, data) for i, ts, data in packets]))
    result = natproof.correlate(path, inside_if="veth1,veth2", outside_if="eth0")
    target = tmp_path / "proof.pcapng"
    summary = write_proof(result, target, select_connections(result, everything=True))
    assert summary.interfaces == ("inside:veth1,veth2 [EN10MB]", "inside:veth1,veth2 [RAW]", "outside:eth0")
    info, records = read_capture(target)
    assert info.link_types == [1, 101, 1]
    by_iface = {}
    for rec in records:
        by_iface.setdefault(rec.iface, []).append(rec)
    assert [len(by_iface[i]) for i in range(3)] == [8, 8, 16]


def test_hairpin_copies_say_which_tuple(tmp_path: Path) -> None:
    result = natproof.correlate(*pair("hairpin"))
    comments = proof_packets(result, [0])["comment"].to_list()
    assert len(comments) == selected_packets(result, [0]) == 20
    assert comments[0].endswith("; inside frame 11, egress, crossed = inside frame 12, +52.027 us")
    assert comments[1].endswith("; inside frame 12, egress, crossed (hairpin: the copy under the translated tuple) "
                                "= inside frame 11, -52.027 us")


def test_a_flow_from_outside_mapped_anew_is_no_hairpin() -> None:
    # tests/variants/udp-idle-nodeport: one connection from outside, reaching the pod under two inside tuples in turn.
    # The first tuple's packets are not anchored on the connection's inside leg (the last mapping); they were
    # commented "(hairpin: the copy under the translated tuple)", and no copy of them is in the capture.
    folder = ROOT / "tests" / "variants" / "udp-idle-nodeport"
    result = natproof.correlate(folder / "inside.pcap", folder / "outside.pcap")
    packets = proof_packets(result, [0])
    comments = packets["comment"].to_list()
    assert packets["point"].to_list().count("inside") == 4 and not any("hairpin" in c for c in comments)
    earlier = [c for p, c in zip(packets["point"], comments, strict=True)
               if p == "inside" and "(under another inside tuple: mapped anew after idling)" in c]
    assert [re.search(r"inside frame (\d+),", c).group(1) for c in earlier] == ["4", "5"]


def test_selection_by_finding_verdict_and_number() -> None:
    result = natproof.correlate(*pair("reject-no-endpoints"))
    kinds = [f.kind for f in natproof.diagnose(result)]
    assert kinds[:2] == ["service_no_endpoints", "rejected_by_node"]
    assert select_connections(result, finding=["rejected_by_node"]).conns == (2,)
    assert select_connections(result, finding=["0"]).conns == (0, 1)
    assert select_connections(result, finding=["1"], conns=[3]).conns == (2, 3)
    verdicts = result.connections.group_by("verdict").agg("conn").rows()
    for verdict, conns in verdicts:
        assert select_connections(result, verdicts=[verdict]).conns == tuple(sorted(conns))
    assert select_connections(result).conns == (0, 1, 2)
    with pytest.raises(InputError, match=r"^conns\[0\]=4: no such connection \(the captures' connections are #0 to "
                                         r"#3\)$"):
        select_connections(result, conns=[4])
    with pytest.raises(InputError, match=r"^finding\[0\]='9': no such finding"):
        select_connections(result, finding=["9"])
    with pytest.raises(InputError, match=r"^finding\[1\]='healthy': the diagnosis found no healthy here"):
        select_connections(result, finding=["0", "healthy"])


@pytest.mark.parametrize(("keywords", "options", "library", "command_line"), [
    ({"conns": [0, 7]}, ("--conn", "0", "--conn", "7"), "conns[1]=7: no such connection",
     "--conn 7: no such connection (the captures' connections are #0 to #1)"),
    ({"finding": ["mapping_conflict"]}, ("--finding", "mapping_conflict"),
     "finding[0]='mapping_conflict': the diagnosis found no mapping_conflict here",
     "--finding mapping_conflict: the diagnosis found no mapping_conflict here (its findings: 0 healthy)"),
    ({"finding": ["3"]}, ("--finding", "3"), "finding[0]='3': no such finding",
     "--finding 3: no such finding (the diagnosis's findings: 0 healthy)"),
    # The command's --verdict is a choice, refused before select_connections runs.
    ({"verdicts": ["no_reply", "noreply"]}, None, "verdicts[1]='noreply': not a verdict (translated, ",
     "--verdict noreply: not a verdict (translated, "),
])
def test_a_library_caller_is_told_select_connections_keywords(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], keywords: dict[str, list[int | str]],
        options: tuple[str, ...] | None, library: str, command_line: str) -> None:
    """select_connections names its own keywords (and which item) to a Python caller, who has no --conn, --finding
    or --verdict; export-pcap prints the same error with its options, as it always has."""
    with pytest.raises(InputError) as exc:
        select_connections(natproof.correlate(*pair("port-collision")), **keywords)  # type: ignore[arg-type]
    assert str(exc.value).startswith(library) and "--" not in str(exc.value)
    assert exc.value.for_command_line().startswith(command_line)
    if options is not None:
        code, out, err = run(capsys, "export-pcap", *pair("port-collision"), "-o", str(tmp_path / "p.pcapng"),
                             *options)
        assert (code, out, err) == (2, "", f"natproof: error: {command_line}\n")


# -- bad input: one line, the documented status, nothing written ---------------------------------------------------

@pytest.mark.parametrize(("args", "code", "message"), [
    (("--conn", "7"), 2, "natproof: error: --conn 7: no such connection (the captures' connections are #0 to #1)\n"),
    (("--finding", "mapping_conflict"), 2,
     "natproof: error: --finding mapping_conflict: the diagnosis found no mapping_conflict here (its findings: "
     "0 healthy)\n"),
    ((), 1, "natproof: error: no connection selected (the diagnosis's errors and warnings cite connections, and it "
            "found none: healthy): nothing written to {target}; choose with --conn N, --finding K, --verdict V or "
            "--all\n"),
    (("--verdict", "no_reply"), 1, "natproof: error: no connection selected (--verdict no_reply): nothing written to "
                                   "{target}; choose with --conn N, --finding K, --verdict V or --all\n"),
])
def test_bad_selection_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                      code: int, message: str) -> None:
    target = tmp_path / "proof.pcapng"
    got, out, err = run(capsys, "export-pcap", *pair("port-collision"), "-o", str(target), *args)
    assert (got, out, err) == (code, "", message.format(target=target))
    assert list(tmp_path.iterdir()) == []


def test_standard_input_and_missing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = pair("port-collision")
    code, _, err = run(capsys, "export-pcap", "-", outside, "-o", str(tmp_path / "p.pcapng"), "--all")
    assert code == 2 and err.startswith("natproof: error: export-pcap reads the captures' frames again")
    assert err.count("\n") == 1
    code, _, err = run(capsys, "export-pcap", inside, outside, "--all")
    assert code == 2 and err == ("natproof: error: Missing option '-o' / '--output'. (see 'natproof export-pcap "
                                 "--help')\n")
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = natproof.correlate(*pair("port-collision"))
    target = tmp_path / "proof.pcapng"
    target.write_bytes(b"an older proof")
    calls = []
    real = PcapngWriter.write_packet

    def fail(self: PcapngWriter, *args: object, **kw: object) -> None:
        calls.append(1)
        if len(calls) == 5:  # the disk fills up halfway through
            raise OSError("disk full")
        real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(PcapngWriter, "write_packet", fail)
    # The failure is the user's to fix (a full disk), said in one line naming the file: an InputError.
    with pytest.raises(InputError, match=r"proof\.pcapng: cannot write it \(disk full\)"):
        write_proof(result, target, select_connections(result, everything=True))
    assert target.read_bytes() == b"an older proof" and [p.name for p in tmp_path.iterdir()] == ["proof.pcapng"]


def test_empty_selection_is_refused_by_the_library(tmp_path: Path) -> None:
    result = natproof.correlate(*pair("port-collision"))
    with pytest.raises(InputError, match="no connection selected"):
        write_proof(result, tmp_path / "p.pcapng", select_connections(result, verdicts=["no_reply"]))
    assert list(tmp_path.iterdir()) == []


def test_raw_ip_captures_keep_their_link_type(tmp_path: Path) -> None:
    # A plain pcap pair of raw IP (LINKTYPE_RAW 101): the blocks keep the link type.
    a_in, a_out = tcp_pair()
    inside, outside = write_pair(tmp_path, a_in, a_out)
    result = natproof.correlate(inside, outside)
    target = tmp_path / "proof.pcapng"
    write_proof(result, target, select_connections(result, conns=[0]))
    info, records = read_capture(target)
    assert info.format == "pcapng" and info.link_types == [101, 101] and len(list(records)) == 16


@tshark
def test_every_hairpinned_copy_names_its_other_copy(tmp_path: Path) -> None:
    """captures/hairpin: both copies of a hairpinned packet are in the pod-side capture; each comment names the other
    copy and how far apart they were (the second trial found them without a counterpart)."""
    from natproof.cli import main

    folder = Path(__file__).resolve().parent.parent / "captures" / "hairpin"
    out = tmp_path / "h.pcapng"
    assert main(["export-pcap", str(folder / "inside.pcap"), str(folder / "outside.pcap"), "--conn", "0", "-o",
                 str(out), "--quiet"]) == 0
    comments = [row[0] for row in tshark_fields(out, "frame.comment")]
    crossed = [c for c in comments if "inside frame" in c and ", crossed" in c]
    assert crossed and all(re.search(r"= inside frame \d+, [+-]\d+\.\d+ us$", c) for c in crossed)
    pairs = {int(re.search(r"; inside frame (\d+)", c)[1]): int(re.search(r"= inside frame (\d+)", c)[1])
             for c in crossed}
    assert all(pairs[b] == a for a, b in pairs.items())  # each the other's
