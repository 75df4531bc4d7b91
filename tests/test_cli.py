"""Tests of natproof/cli.py: output formats, exit statuses and the exact one-line errors."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterator
from itertools import takewhile
from pathlib import Path

import polars as pl
import pytest
from pcapbytes import pcap, tcp_pair, write_pair

import natproof
from natproof.cli import main


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a_in, a_out = tcp_pair(sport=40000, nat_sport=40000, isn=1000)
    b_in, b_out = tcp_pair(1_700_000_001 * 10**9, sport=40001, nat_sport=61001, isn=9_999_999)
    return tuple(write_pair(tmp_path, a_in + b_in, a_out + b_out))  # type: ignore[return-value]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("where", ["afile/sub", "afile", "/proc/natproof-none"])
def test_a_charts_folder_that_cannot_be_written_is_said_before_any_output(
        pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    # Found by a helper: the JSON was written, then an internal error (NotADirectoryError, exit 70).
    (tmp_path / "afile").write_text("")
    charts = where if where.startswith("/") else str(tmp_path / where)
    out = tmp_path / "c.json"
    code, stdout, err = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--charts", charts, "-o", str(out))
    assert code == 2 and stdout == "" and len(err.splitlines()) == 1 and charts in err
    assert not out.exists()


def test_json_to_stdout(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--format", "json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["schema"] == "natproof.correlate/2"
    got = [(c["inside"]["sport"], c["outside"]["sport"], c["verdict"]) for c in doc["connections"]]
    assert got == [(40000, 40000, "translated"), (40001, 61001, "translated")]
    assert doc["summary"]["port_preserved_ratio"] == 0.5


def test_table_csv_ndjson_conntrack(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--format", "table")
    assert code == 0 and "10.244.0.10:40001" in out and "203.0.113.2:61001" in out
    assert "2 connections: 2 translated" in out
    _, out, _ = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--format", "ndjson")
    assert [json.loads(line)["outside"]["sport"] for line in out.splitlines()] == [40000, 61001]
    _, out, _ = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--format", "csv")
    assert out.splitlines()[0].startswith("conn,proto,inside_src,inside_sport")
    _, out, _ = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--format", "conntrack")
    assert out.splitlines()[1] == (
        "tcp      6 - src=10.244.0.10 dst=198.51.100.10 sport=40001 dport=80 "
        "src=198.51.100.10 dst=203.0.113.2 sport=80 dport=61001 verdict=translated")


def test_parquet_file(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "m.parquet"
    code, out, _ = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--format", "parquet", "-o", str(target))
    assert code == 0 and out == ""
    assert pl.read_parquet(target)["outside_sport"].to_list() == [40000, 61001]


def test_output_suffix_names_the_format(pair: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new user's trial: `correlate -o out.parquet` (and .csv, .ndjson) wrote indented JSON, where grade
    reads the format from -o's suffix. Now a known suffix (any case) writes its format; a suffix that names no
    format keeps JSON; a --format the suffix contradicts is refused before any file is written."""
    args = ["correlate", *map(str, pair), "-q"]
    for name in ("c.jsonl", "c.CSV", "c.parquet", "c.txt"):
        assert run(capsys, *args, "-o", str(tmp_path / name)) == (0, "", "")
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert [json.loads(line)["outside"]["sport"] for line in lines] == [40000, 61001]
    rows = (tmp_path / "c.CSV").read_text().splitlines()
    assert rows[0].startswith("conn,proto,inside_src,") and len(rows) == 3
    assert pl.read_parquet(tmp_path / "c.parquet")["outside_sport"].to_list() == [40000, 61001]
    assert json.loads((tmp_path / "c.txt").read_text())["schema"] == "natproof.correlate/2"
    target = tmp_path / "clash.json"
    assert run(capsys, *args, "--format", "csv", "-o", str(target)) == (
        2, "", f"natproof: error: -o {target}: --format csv and the suffix .json (json) disagree; give one of them, "
               "or make them agree (see 'natproof correlate --help')\n")
    assert not target.exists()
    # A chain of captures writes table or json: a .csv name is refused before any hop is correlated.
    target = tmp_path / "chain.csv"
    code, out, err = run(capsys, "correlate", *map(str, pair), str(pair[1]), "-o", str(target))
    assert (code, out) == (2, "") and err == (
        f"natproof: error: -o {target}: the suffix .csv names csv, which a chain of captures does not write (it "
        "writes table or json); name the file for one of those, or give it another suffix and --format (see "
        "'natproof correlate --help')\n")
    assert not target.exists()


def test_diagnose_reads_the_format_from_the_output_suffix(pair: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """diagnose takes -o's suffix as correlate does: .json is JSON; a suffix naming a format diagnose does not
    write (.csv), or one --format contradicts (a table into .json), is refused before any work, nothing written."""
    args = ["diagnose", *map(str, pair), "-q"]
    assert run(capsys, *args, "-o", str(tmp_path / "d.json")) == (0, "", "")
    assert json.loads((tmp_path / "d.json").read_text())["schema"] == "natproof.diagnose/1"
    target = tmp_path / "d.csv"
    assert run(capsys, *args, "-o", str(target)) == (
        2, "", f"natproof: error: -o {target}: the suffix .csv names csv, which diagnose does not write (it writes "
               "table or json); name the file for one of those, or give it another suffix and --format (see "
               "'natproof diagnose --help')\n")
    target = tmp_path / "t.json"
    assert run(capsys, *args, "--format", "table", "-o", str(target)) == (
        2, "", f"natproof: error: -o {target}: --format table and the suffix .json (json) disagree; give one of "
               "them, or make them agree (see 'natproof diagnose --help')\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "inside.pcap", "outside.pcap"]


def test_missing_file(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "correlate", str(tmp_path / "veth.pcap"), str(pair[1]))
    assert code == 2 and out == ""
    assert err == f"natproof: error: {tmp_path / 'veth.pcap'}: no such file\n"


def test_not_a_capture_leaves_no_output_file(pair: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.zip"
    bogus.write_bytes(b"PK\x03\x04zipzip")
    target = tmp_path / "out.json"
    code, _, err = run(capsys, "correlate", str(pair[0]), str(bogus), "-o", str(target))
    assert code == 2
    assert err == f"natproof: error: {bogus}: not a pcap or pcapng capture (starts with 50 4b 03 04)\n"
    assert list(tmp_path.glob("out.json*")) == [] and list(tmp_path.glob(".out.json*")) == []


def test_empty_capture(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(pcap([]))
    code, _, err = run(capsys, "correlate", str(empty), str(pair[1]))
    assert (code, err) == (2, f"natproof: error: {empty}: empty capture (file header only, no packets)\n")


def test_captures_that_do_not_overlap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inside, _ = tcp_pair(1_700_000_000 * 10**9)
    _, outside = tcp_pair(1_700_003_600 * 10**9, isn=42)  # an hour later, different connection
    a, b = write_pair(tmp_path, inside, outside)
    code, _, err = run(capsys, "correlate", str(a), str(b))
    assert code == 2
    assert err == (f"natproof: error: {a} and {b} do not overlap in time (22:13:20.000-22:13:20.007 vs "
                   "23:13:20.000-23:13:20.007 UTC, "
                   "on the outside clock); pass --clock-offset if the clocks differ\n")
    code, _, err = run(capsys, "correlate", str(a), str(b), "--clock-offset", "-3600")
    assert code == 2 and err.endswith("with the --clock-offset given; check its sign (OUTSIDE minus INSIDE)\n")
    # The library's caller is told the keyword, not the option (a new user's trial), from the same error.
    with pytest.raises(natproof.InputError) as exc:
        natproof.correlate(a, b)
    assert str(exc.value).endswith("on the outside clock); pass clock_offset_s if the clocks differ")
    assert exc.value.for_command_line().endswith("; pass --clock-offset if the clocks differ")
    with pytest.raises(natproof.InputError) as exc:
        natproof.correlate(a, b, clock_offset_s=-3600)
    assert str(exc.value).endswith("with the clock_offset_s given; check its sign (outside minus inside)")
    # A hop of a chain says where, in either wording; a worker's error reaches the caller with both (pickled).
    hop = pickle.loads(pickle.dumps(exc.value.reworded("hop 0: ")))
    assert str(hop).startswith(f"hop 0: {a} and {b} do not overlap")
    assert hop.for_command_line().startswith("hop 0: ") and hop.for_command_line().endswith("(OUTSIDE minus INSIDE)")
    # A fleet's manifest user is told the node's clock_offset key, its unit and its sign, from a Dask worker.
    with pytest.raises(natproof.InputError) as exc:
        natproof.correlate(a, b)
    node = pickle.loads(pickle.dumps(exc.value.reworded("node-a: ")))
    assert node.for_manifest() == (f"node-a: {a} and {b} do not overlap in time (22:13:20.000-22:13:20.007 vs "
                                   "23:13:20.000-23:13:20.007 UTC, on the outside clock); set the node's clock_offset "
                                   "(seconds, its outside clock minus its inside clock) if the clocks differ")
    assert (str(node), node.for_command_line()) == (f"node-a: {exc.value}", f"node-a: {exc.value.for_command_line()}")


def _library_errors(result: natproof.Result, tmp_path: Path) -> list[tuple[Callable[[], object], str, str]]:
    """Calls of natproof's other public functions that fail, and the start of each wording of their error."""
    from natproof.explain import explain
    from natproof.fleet import fleet_who
    from natproof.flowlogs import parse_format, parse_nat_gateway
    from natproof.lookup import who
    from natproof.proof import select_connections
    from natproof.verify import expectations_from_dict

    return [
        (lambda: explain(result, [0, 9]), "conns[1]=9: no such connection", "--conn 9: no such connection"),
        (lambda: explain(result, [0], frame=99), "frame=99: no packet", "--frame 99: no packet"),
        (lambda: select_connections(result, verdicts=["lost"]), "verdicts[0]='lost': not a verdict",
         "--verdict lost: not a verdict"),
        (lambda: select_connections(result, finding=["7"]), "finding[0]='7': no such finding",
         "--finding 7: no such finding"),
        (lambda: who(result, "203.0.113.2:1", at="noon"), "at='noon': not a time", "--at noon: not a time"),
        (lambda: who(result, "web"), "'web' is not ADDR:PORT", "'web' is not ADDR:PORT"),
        (lambda: fleet_who(tmp_path, "203.0.113.2:1", clock="uplink"), "clock='uplink': inside or outside",
         "--clock uplink: inside or outside"),
        (lambda: parse_nat_gateway("10.0.0.220="), "parse_nat_gateway('10.0.0.220='): no public address",
         "--nat-gateway '10.0.0.220=': no public address"),
        (lambda: parse_format("${version} ${srcadr}"), "fields: unknown field 'srcadr'",
         "--flow-log-format: unknown field 'srcadr'"),
        (lambda: expectations_from_dict({"min_connections": 0}, "e.toml"), "e.toml: min_connections must be 1 or more",
         "e.toml: min_connections must be 1 or more (as --min-connections)"),
    ]


def test_every_library_error_keeps_both_wordings_across_a_process_boundary(pair: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    """Beyond correlate: the other public functions' errors tell a library caller their keywords and the command
    line its options, and keep both when pickled (a worker's error: a process pool, Dask in natproof fleet)."""
    result = natproof.correlate(*pair)
    for call, library, command_line in _library_errors(result, tmp_path):
        with pytest.raises(natproof.InputError) as exc:
            call()
        assert str(exc.value).startswith(library) and exc.value.for_command_line().startswith(command_line)
        sent = pickle.loads(pickle.dumps(exc.value))
        assert type(sent) is natproof.InputError
        assert (str(sent), sent.for_command_line(), sent.for_manifest()) == (
            str(exc.value), exc.value.for_command_line(), exc.value.for_manifest())
        where = pickle.loads(pickle.dumps(exc.value.reworded("node-a: ")))
        assert (str(where), where.for_command_line(), where.for_manifest()) == (
            f"node-a: {exc.value}", f"node-a: {exc.value.for_command_line()}", f"node-a: {exc.value.for_manifest()}")


def test_usage_errors_are_one_line(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "correlate", str(pair[0]))  # OUTSIDE may be left out: several interfaces, or --conntrack
    assert code == 2 and err == (f"natproof: error: {pair[0]}: a capture of one interface (RAW) and no second "
                                 "capture: give the other side's too (natproof correlate INSIDE OUTSIDE), or the "
                                 "node's conntrack record for the other side (--conntrack FILE), or one capture of "
                                 "several interfaces (tcpdump -i any, dumpcap -i A -i B)\n")
    code, _, err = run(capsys, "correlate")
    assert code == 2 and err == "natproof: error: Missing argument 'INSIDE'. (see 'natproof correlate --help')\n"
    code, _, err = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--format", "parquet")
    assert (code, err) == (2, "natproof: error: --format parquet needs -o FILE (see 'natproof correlate --help')\n")


def test_internal_error_exit_70(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(natproof, "correlate", boom)
    code, _, err = run(capsys, "correlate", str(pair[0]), str(pair[1]))
    assert code == 70
    assert err == "natproof: error: internal error: RuntimeError: kaput (rerun with --traceback and report it)\n"


def test_one_capture_from_stdin(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import io
    import sys

    fake = io.TextIOWrapper(io.BytesIO(gzip.compress(pair[1].read_bytes())))
    monkeypatch.setattr(sys, "stdin", fake)
    code, out, _ = run(capsys, "correlate", str(pair[0]), "-", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["captures"]["outside"]["format"] == "pcap+gzip"
    assert [c["verdict"] for c in doc["connections"]] == ["translated", "translated"]
    code, _, err = run(capsys, "correlate", "-", "-")
    assert code == 2 and "only one of INSIDE and OUTSIDE" in err


@pytest.mark.parametrize("decoder", ["fast", "dpkt"])
def test_standard_input_is_named_so_in_errors_and_warnings(pair: tuple[Path, Path], decoder: str,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A new user's trial: empty standard input said "-: empty file". Every message names it "standard input", as
    the usage errors do ("only one of INSIDE and OUTSIDE can be '-' (standard input)")."""
    import io
    import sys

    for data, said in ((b"", "error: standard input: empty (0 bytes)"),
                       (b"hello", "error: standard input: not a pcap or pcapng capture (starts with 68 65 6c 6c)"),
                       # the last record cut short: a warning, and the other frames used
                       (pair[0].read_bytes()[:-3], "warning: standard input: last record truncated at frame ")):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        code, out, err = run(capsys, "correlate", "-", str(pair[1]), "--decoder", decoder, "--format", "json")
        assert err.startswith(f"natproof: {said}") and len(err.splitlines()) == 1
        assert code == (0 if said.startswith("warning") else 2)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(pair[1].read_bytes())))
    code, _, err = run(capsys, "correlate", str(pair[1]), "-", "--decoder", decoder)
    assert code == 2 and err.startswith(f"natproof: error: {pair[1]} and standard input hold the same packets")


def test_snaplen_cut_inside_capture_still_proves_the_mapping(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from pcapbytes import pcap as make_pcap

    inside, outside = tcp_pair(nat_sport=50505)
    snap = 20 + 20 + 4  # tcpdump -s 44 on raw IP: 4 payload bytes kept
    cut = [(t, b[:snap]) for t, b in inside]
    a, b = tmp_path / "in.pcap", tmp_path / "out.pcap"
    data = make_pcap(cut, linktype=101)
    # Restore each record's original length so the file says it was truncated.
    a.write_bytes(_with_wire_lengths(data, [len(b) for _, b in inside]))
    b.write_bytes(make_pcap(outside, linktype=101))
    code, out, _ = run(capsys, "correlate", str(a), str(b), "--format", "json")
    (c,) = json.loads(out)["connections"]
    assert code == 0 and c["verdict"] == "translated" and c["outside"]["sport"] == 50505
    assert c["matched"] == {"egress": 5, "reply": 3}


def _with_wire_lengths(data: bytes, wire: list[int]) -> bytes:
    import struct

    out, off = bytearray(data[:24]), 24
    for w in wire:
        sec, frac, caplen, _ = struct.unpack_from("<IIII", data, off)
        out += struct.pack("<IIII", sec, frac, caplen, w) + data[off + 16:off + 16 + caplen]
        off += 16 + caplen
    return bytes(out)


def test_unsupported_link_type(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    usb = tmp_path / "usb.pcap"
    usb.write_bytes(pcap([(1, b"\x00" * 40)], linktype=189))
    code, _, err = run(capsys, "correlate", str(usb), str(pair[1]))
    assert code == 2
    assert err == (f"natproof: error: {usb}: unsupported link type LINKTYPE_189 (natproof reads EN10MB, IPV4, IPV6, "
                   "LINUX_SLL, LINUX_SLL2, LOOP, NULL, RAW)\n")


def test_connection_leaving_under_two_outside_ports_is_flagged(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Port-pool exhaustion: the kernel can move one connection to another outside tuple mid-way.
    inside, first = tcp_pair(nat_sport=1111)
    _, second = tcp_pair(nat_sport=2222)
    a, b = write_pair(tmp_path, inside, first[:3] + second[3:])
    code, out, _ = run(capsys, "correlate", str(a), str(b), "--format", "json")
    (c,) = json.loads(out)["connections"]
    assert code == 0 and c["flags"] == ["multiple_outside_tuples"]
    assert c["outside"]["sport"] == 2222  # the tuple most of its packets left under
    assert c["matched"] == {"egress": 5, "reply": 3}


def test_truncated_last_record_warns_and_goes_on(pair: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.pcap"
    data = pair[0].read_bytes()
    cut.write_bytes(data[:-7])
    code, out, err = run(capsys, "correlate", str(cut), str(pair[1]), "--format", "json")
    assert code == 0
    assert err == f"natproof: warning: {cut}: last record truncated at frame 16; 15 frames used\n"
    assert json.loads(out)["captures"]["inside"]["packets"] == 15
    code, out, err = run(capsys, "correlate", str(cut), str(pair[1]), "--format", "json", "--quiet")
    assert code == 0 and err == ""
    # Quiet on stderr, still in the document a script reads.
    captures = json.loads(out)["captures"]
    assert captures["inside"]["warnings"] == ["last record truncated at frame 16; 15 frames used"]
    assert captures["outside"]["warnings"] == []


CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def test_lab_check_passes_on_the_committed_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "lab", "check", str(CAPTURES), "--format", "json")
    doc = json.loads(out)
    assert code == 0
    assert len(doc) >= 14 and all(r["ok"] for r in doc.values())
    assert doc["many-connections"]["mapping_right"] == 2100


def test_lab_check_fails_with_exit_1_on_a_wrong_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    case = tmp_path / "basic"
    shutil.copytree(CAPTURES / "basic", case)
    truth = json.loads((case / "truth.json").read_text())
    truth["connections"][0]["outside"]["sport"] = 1
    truth["connections"][1]["verdict"] = "no_reply"
    (case / "truth.json").write_text(json.dumps(truth))
    code, out, _ = run(capsys, "lab", "check", str(case))
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith("basic: wrong: ")]
    assert len(lines) == 2 and " as 203.0.113.2:1 translated -> natproof tcp 10.244.0.10:" in lines[0]
    assert out.rstrip().endswith("0 of 1 scenarios match their truth")


def test_lab_check_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "lab", "check", str(tmp_path))
    assert (code, err) == (2, f"natproof: error: {tmp_path}: no truth.json in it or in its subfolders\n")


def test_lab_run_refuses_without_root(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, _, err = run(capsys, "lab", "run", "basic", "--out", str(tmp_path / "x"))
    assert (code, err) == (2, "natproof: error: lab needs root (network namespaces, iptables and tcpdump)\n")
    assert not (tmp_path / "x").exists()


def test_lab_list_names_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "lab", "list")
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and names[:2] == ["basic", "port-collision"] and "large-transfer" in names


def test_report_and_charts_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = (str(CAPTURES / "port-collision" / f"{side}.pcap") for side in ("inside", "outside"))
    html = tmp_path / "r.html"
    code, _, err = run(capsys, "report", inside, outside, "-o", str(html))
    assert code == 0 and err == f"natproof: wrote {html}\n"
    page = html.read_text()
    assert "203.0.113.2:53585" in page and "<svg" in page
    code, _, err = run(capsys, "correlate", inside, outside, "--charts", str(tmp_path / "ch"), "-o",
                       str(tmp_path / "m.json"))
    assert code == 0 and err.endswith("wrote 8 chart files to " + str(tmp_path / "ch") + "\n")
    assert sorted(p.name for p in (tmp_path / "ch").iterdir()) == sorted(
        f"{n}.{ext}" for n in ("port_timeline", "port_map", "concurrency", "latency") for ext in ("png", "svg"))
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~mask  # as any new file, not mkstemp's 0600


def test_decoder_choice_gives_the_same_document(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    docs = []
    for decoder in ("dpkt", "fast"):
        code, out, _ = run(capsys, "correlate", str(pair[0]), str(pair[1]), "--decoder", decoder, "--format", "json")
        assert code == 0
        docs.append(json.loads(out))
    assert docs[0] == docs[1] and len(docs[0]["connections"]) == 2


# ----------------------------------------------------------------------------------- the table, Services, fates


def pair_of(where: Path) -> tuple[str, str]:
    """inside and outside capture of a captures/ or tests/cases/ folder."""
    return tuple(str(next(where.glob(f"{side}.pcap*"))) for side in ("inside", "outside"))  # type: ignore[return-value]


CASES = Path(__file__).resolve().parent / "cases"


@pytest.mark.parametrize("where", [CAPTURES / "clusterip", CAPTURES / "nodeport"], ids=lambda p: p.name)
def test_table_shows_original_translated_service_and_backends(where: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = pair_of(where)
    code, out, _ = run(capsys, "correlate", inside, outside, "--format", "table")
    assert code == 0
    res = natproof.correlate(inside, outside)
    doc = res.to_dict()
    lines = out.splitlines()
    for c in doc["connections"]:
        o, t = c["original"], c["translated"]
        orig = f"{o['src']}:{o['sport']} -> {o['dst']}:{o['dport']}"
        trans = f"=> {t['src']}:{t['sport']} -> {t['dst']}:{t['dport']}"
        at = next(i for i, line in enumerate(lines) if orig in line)
        assert trans in lines[at + 1]  # the translated tuple right under the original one
        assert ("inbound" in lines[at + 1]) == (c["initiator"] == "outside")
        if c["service"]:
            s, b = c["service"], c["service"]["backend"]
            assert f"{s['type']} {s['address']}:{s['port']}" in lines[at]
            assert f"-> {b['address']}:{b['port']}" in lines[at + 1]
    assert out.count("inbound") == doc["summary"]["by_initiator"]["outside"]
    services = out[out.index("Services (VIP:port -> backends chosen)"):]
    for s in doc["services"]:
        row = next(line for line in services.splitlines() if f"{s['type']} {s['address']}:{s['port']} " in line)
        assert f" {s['proto']} " in row and f" {s['connections']} " in row
        for b in s["backends"]:
            assert f"{b['address']}:{b['port']}: {b['connections']} (" in services
    fates = ", ".join(f"{n} {label}" for n, label in zip(doc["summary"]["by_fate"].values(),
                      ("crossed", "leaked", "inside only", "outside only", "node-made"), strict=True))
    assert f"packets by fate: {fates}" in out


def test_table_shows_leaked_and_node_made_packets(capsys: pytest.CaptureFixture[str]) -> None:
    for where in (CASES / "idle-expiry-fin-leak", CAPTURES / "reject-no-endpoints", CAPTURES / "invalid-oow"):
        inside, outside = pair_of(where)
        _, out, _ = run(capsys, "correlate", inside, outside, "--format", "table")
        lines = out.splitlines()
        for c in natproof.correlate(inside, outside).to_dict()["connections"]:
            o = c["original"]
            at = next(i for i, line in enumerate(lines) if f"{o['src']}:{o['sport']} -> " in line)
            rows = [lines[at], *takewhile(lambda line: re.match("│ +│", line), lines[at + 1:])]
            cell = " ".join(line.split("│")[-2].strip() for line in rows)  # the last column, every line of the row
            f = c["fates"]
            for n, label in ((f["crossed"], "crossed"), (f["leaked"], "leaked"), (f["inside_only"], "inside only"),
                             (f["outside_only"], "outside only"), (f["node_generated"], "node-made")):
                assert (f"{n} {label}" in cell) == bool(n), (where.name, c["original"], cell)
            assert c["verdict"] in lines[at]
    assert "7 leaked" in natproof_table(CASES / "idle-expiry-fin-leak")


def natproof_table(where: Path, width: int = 120) -> str:
    from io import StringIO

    from rich.console import Console

    from natproof.report.table import render_table

    buf = StringIO()
    Console(file=buf, width=width, color_system=None).print(render_table(natproof.correlate(*pair_of(where))))
    return buf.getvalue()


@pytest.mark.parametrize("where", [CAPTURES / "clusterip", CAPTURES / "nodeport", CAPTURES / "reject-no-endpoints",
                                   CAPTURES / "hairpin", CASES / "idle-expiry-fin-leak"], ids=lambda p: p.name)
def test_table_fits_120_columns_without_breaking_a_tuple(where: Path) -> None:
    text = natproof_table(where)
    assert max(len(line) for line in text.splitlines()) <= 120
    for c in natproof.correlate(*pair_of(where)).to_dict()["connections"]:
        o = c["original"]
        assert f"{o['src']}:{o['sport']} -> {o['dst']}:{o['dport']}" in text
        if c["service"]:
            assert f"{c['service']['type']} {c['service']['address']}:{c['service']['port']}" in text


def test_table_limit_row_keeps_the_columns(capsys: pytest.CaptureFixture[str]) -> None:
    for where in (CAPTURES / "clusterip", CAPTURES / "idle-expiry"):
        inside, outside = pair_of(where)
        n = natproof.correlate(inside, outside).connections.height
        _, out, _ = run(capsys, "correlate", inside, outside, "--format", "table", "--limit", "1")
        lines = out.splitlines()
        top = next(line for line in lines if line.startswith("┏"))
        more = next(line for line in lines if f"{n - 1} more" in line)
        assert more.count("│") == top.count("┳") + 2  # as many cells as the header has columns


def test_output_into_a_device_writes_through_it(pair: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Renaming a temporary file over /dev/null would replace the device for the whole machine.
    import os
    import stat

    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    code, _, err = run(capsys, "correlate", *map(str, pair), "-o", str(dev))
    assert code == 0, err
    assert stat.S_ISCHR(os.stat(dev).st_mode)


def test_output_never_overwrites_a_capture(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = pair
    before = inside.read_bytes()
    code, _, err = run(capsys, "correlate", str(inside), str(outside), "-o", str(inside))
    assert code == 2 and err == f"natproof: error: {inside}: is the capture {inside}; write the output elsewhere\n"
    assert inside.read_bytes() == before


def test_output_into_a_missing_folder(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Said before any work (a new user's trial: -o into a missing folder failed after 10 s of a 1M pair's
    # correlation), for every command that writes a result with -o.
    import natproof

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("correlated before the output target was checked")

    monkeypatch.setattr(natproof, "correlate", no_work)
    for command in ("correlate", "diagnose", "report"):
        target = tmp_path / "nodir" / ("x.html" if command == "report" else "x.json")
        code, _, err = run(capsys, command, *map(str, pair), "-o", str(target))
        assert code == 2 and err == f"natproof: error: {target}: cannot write it, no such directory {target.parent}\n"
    code, _, err = run(capsys, "correlate", *map(str, pair), "-o", "/proc/natproof-test.json")
    assert code == 2 and "its folder /proc takes no new file" in err and err.count("\n") == 1
    # A folder that is a file: said as such, not "no such directory".
    (tmp_path / "file").write_text("keep")
    for command in ("correlate", "diagnose", "report"):
        target = tmp_path / "file" / ("x.html" if command == "report" else "x.json")
        code, _, err = run(capsys, command, *map(str, pair), "-o", str(target))
        assert code == 2
        assert err == f"natproof: error: {target}: cannot write it, {target.parent} is a file, not a folder\n"
    assert (tmp_path / "file").read_text() == "keep"


@pytest.mark.parametrize("fmt", ["json", "table", "csv", "parquet"])
def test_output_that_cannot_be_written(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       fmt: str) -> None:
    """A missing folder, a full disk (/dev/full), a place no file can be made (/proc): one line naming the target,
    status 2, no temporary file left; the table too (it was written in place, and a missing folder was an internal
    error)."""
    for target, problem in ((tmp_path / "nodir" / f"x.{fmt}", f"no such directory {tmp_path / 'nodir'}"),
                            (Path("/dev/full"), "(No space left on device)"),
                            (Path(f"/proc/natproof-test.{fmt}"), "its folder /proc takes no new file"),
                            # a file that is there, in a folder that takes none: not "no such file" alone
                            (Path("/proc/self/status"), "its folder /proc/self takes no new file")):
        code, _, err = run(capsys, "correlate", *map(str, pair), "--format", fmt, "-o", str(target))
        assert code == 2 and err.startswith(f"natproof: error: {target}: cannot write it") and problem in err, err
        assert err.count("\n") == 1
    assert sorted(tmp_path.iterdir()) == sorted(tmp_path.glob("*.pcap"))


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_diagnose_writes_to_a_file_atomically(pair: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                              fmt: str) -> None:
    """diagnose had no -o (the other commands write atomically with it). Now: the same bytes as on standard
    output, nothing on standard output; "-" is standard output; never over a capture; a target that cannot be
    written is one line, status 2, no file and no temporary left."""
    d = CAPTURES / "hairpin-off"
    inside, outside = str(d / "inside.pcap"), str(d / "outside.pcap")
    code, printed, _ = run(capsys, "diagnose", inside, outside, "--format", fmt, "-q")
    assert code == 0 and printed
    target = tmp_path / f"diagnosis.{fmt}"
    code, out, err = run(capsys, "diagnose", inside, outside, "--format", fmt, "-q", "-o", str(target))
    assert (code, out, err) == (0, "", "")
    assert target.read_text() == printed
    if fmt == "json":
        assert json.loads(printed)["schema"] == "natproof.diagnose/1"
    else:
        assert printed.startswith("[ERROR] ClusterIP connections got no answer and left no trace outside\n")
    # Without --format, a file gets JSON, as correlate's -o does.
    code, _, _ = run(capsys, "diagnose", inside, outside, "-q", "-o", str(tmp_path / "plain"))
    assert code == 0 and json.loads((tmp_path / "plain").read_text())["schema"] == "natproof.diagnose/1"
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "diagnose", inside, outside, "--format", fmt, "-q", "-o", "-")
    assert (code, out) == (0, printed) and not (tmp_path / "-").exists()
    # Never over the evidence: refused before any work.
    before = pair[0].read_bytes()
    code, out, err = run(capsys, "diagnose", *map(str, pair), "-o", str(pair[0]))
    assert (code, out) == (2, "") and err == (f"natproof: error: {pair[0]}: is the capture {pair[0]}; write the "
                                              "output elsewhere\n")
    assert pair[0].read_bytes() == before
    for bad, problem in ((tmp_path / "nodir" / "x", f"no such directory {tmp_path / 'nodir'}"),
                         (Path("/dev/full"), "(No space left on device)")):
        code, out, err = run(capsys, "diagnose", inside, outside, "--format", fmt, "-q", "-o", str(bad))
        assert (code, out) == (2, "") and err.startswith(f"natproof: error: {bad}: cannot write it") and problem in err
        assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["inside.pcap", "outside.pcap", target.name, "plain"])


@pytest.mark.parametrize("args", [("correlate", "{i}", "{o}", "-o", ""), ("report", "{i}", "{o}", "-o", ""),
                                  ("diagnose", "{i}", "{o}", "-o", ""),
                                  ("correlate", "", "{o}"), ("export-pcap", "{i}", "{o}", "-o", ""),
                                  ("correlate", "{i}", "{o}", "--conntrack", ""),
                                  ("diagnose", "{i}", "{o}", "--interfaces", "")])
def test_an_empty_file_name_is_refused(pair: tuple[Path, Path], args: tuple[str, ...],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """-o "" wrote the result to standard output as if no -o was given; an empty name is no file, in or out."""
    code, out, err = run(capsys, *(a.format(i=pair[0], o=pair[1]) for a in args))
    assert code == 2 and out == "" and err.count("\n") == 1 and "an empty name names no file" in err, err


def test_dash_as_output_is_standard_output_or_refused(pair: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """-o - is standard output, as - is standard input for a capture; it wrote a file named '-'. report writes an
    HTML file and its data beside it: there -o - is refused."""
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "correlate", *map(str, pair), "--format", "csv", "-o", "-")
    assert code == 0 and out.startswith("conn,proto,") and not (tmp_path / "-").exists()
    code, out, err = run(capsys, "report", *map(str, pair), "-o", "-")
    assert code == 2 and out == "" and err.startswith("natproof: error: -o -: report writes an HTML file")
    assert not (tmp_path / "-").exists()


def test_standard_output_that_cannot_be_written(pair: tuple[Path, Path]) -> None:
    """`> /dev/full`: one line, status 2, in every format written to standard output."""
    import os
    import subprocess
    import sys

    for fmt in ("json", "ndjson", "table"):
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([sys.executable, "-m", "natproof", "correlate", *map(str, pair), "--format", fmt],
                                  stdout=full, stderr=subprocess.PIPE, check=False)
        assert (proc.returncode, proc.stderr) == (
            2, b"natproof: error: standard output: cannot write it (No space left on device)\n")
    # Every command, not only correlate's formats (who, --help, lab list were internal errors), and standard output
    # closed (>&-: an AttributeError on None, then a traceback from the exit).
    for args in (["who", "203.0.113.2:1", *map(str, pair), "--format", "json"], ["--help"], ["lab", "list"],
                 ["--version"]):
        for where, why in (("/dev/full", "No space left on device"), (None, "standard output is closed")):
            with open(where or os.devnull, "wb") as sink:
                proc = subprocess.run([sys.executable, "-m", "natproof", *args], stdout=sink if where else None,
                                      stderr=subprocess.PIPE, check=False,
                                      preexec_fn=None if where else (lambda: os.close(1)))
            assert (proc.returncode, proc.stderr.decode()) == (
                2, f"natproof: error: standard output: cannot write it ({why})\n"), (args, where)


JSON_COMMANDS = ["correlate", "correlate chain", "correlate --flow-log", "diagnose", "explain", "verify", "who",
                 "flowlog", "grade", "lab check", "fleet", "fleet-who"]
"""Every command that prints JSON, and the forms of correlate that print it by their own path."""


def json_command(name: str, tmp_path: Path) -> list[str]:
    """The arguments of command ``name`` (JSON_COMMANDS) printing JSON, on small inputs of the repository's."""
    c = Path(__file__).resolve().parent.parent / "captures"
    basic, dn = [str(c / "basic" / "inside.pcap"), str(c / "basic" / "outside.pcap")], c / "double-nat"
    gateway = [str(dn / "flowlogs" / "custom.log"), "10.0.1.1=203.0.113.20"]
    if name == "grade":
        (tmp_path / "class" / "ann").mkdir(parents=True)
        for side in ("inside", "outside"):
            (tmp_path / "class" / "ann" / f"{side}.pcap").symlink_to(c / "basic" / f"{side}.pcap")
        (tmp_path / "g.toml").write_text('[[expect]]\npoints = 1\nall = "translated"\n')
    if name == "fleet":
        (tmp_path / "fleet.toml").write_text(f'[[node]]\nname = "a"\ninside = "{basic[0]}"\noutside = "{basic[1]}"\n')
    if name == "fleet-who":
        from natproof.fleet import _empty_frame

        (tmp_path / "fleet").mkdir()
        (tmp_path / "fleet" / "fleet.json").write_text(json.dumps({"schema": "natproof.fleet/1",
                                                                  "nodes": [{"name": "a"}]}))
        _empty_frame().with_columns(pl.lit(None, pl.String).alias("node")).write_parquet(
            tmp_path / "fleet" / "fleet.parquet")
    return {
        "correlate": ["correlate", *basic],
        "correlate chain": ["correlate", str(dn / "inside.pcap"), str(dn / "outside.pcap"),
                            str(dn / "gateway" / "outside.pcap")],
        "correlate --flow-log": ["correlate", str(dn / "inside.pcap"), str(dn / "outside.pcap"), "--flow-log",
                                 gateway[0], "--nat-gateway", gateway[1]],
        "diagnose": ["diagnose", *basic],
        "explain": ["explain", *basic, "--conn", "0"],
        "verify": ["verify", *basic, "--expect-snat-ip", "203.0.113.2"],
        "who": ["who", "203.0.113.2:37784", *basic],
        "flowlog": ["flowlog", gateway[0], "--nat-gateway", gateway[1]],
        "grade": ["grade", str(tmp_path / "class"), "--expectations", str(tmp_path / "g.toml")],
        "lab check": ["lab", "check", str(c / "basic")],
        "fleet": ["fleet", str(tmp_path / "fleet.toml"), "-o", str(tmp_path / "out"), "--workers", "1", "-q"],
        "fleet-who": ["fleet-who", "203.0.113.2:1", str(tmp_path / "fleet")],
    }[name] + ["--format", "json"]


def test_every_command_that_prints_json_is_among_those_written_to_a_full_disk() -> None:
    import click

    from natproof.cli import cli

    def leaves(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from leaves(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", command

    printing = {name for name, command in leaves(cli) for p in command.params
                if p.name == "fmt" and "json" in getattr(p.type, "choices", ())}
    assert printing == {name.split(" -")[0] for name in JSON_COMMANDS if name != "correlate chain"}


@pytest.mark.parametrize("sink", ["/dev/full", "closed"])
@pytest.mark.parametrize("name", JSON_COMMANDS)
def test_json_to_standard_output_that_cannot_be_written(name: str, sink: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`> /dev/full` or `>&-` under every command's JSON: one line, status 2, whichever path wrote it (fleet's and
    a chain's JSON, written as bytes, went past the handling every other command had: internal errors)."""
    import contextlib
    import sys

    args = json_command(name, tmp_path)
    stream = open("/dev/full", "w", encoding="utf-8") if sink == "/dev/full" else None  # noqa: SIM115
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        code = main(args)
    finally:
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    why = "No space left on device" if stream is not None else "standard output is closed"
    assert (code, capsys.readouterr().err) == (2, f"natproof: error: standard output: cannot write it ({why})\n")


def test_output_through_a_symlink_writes_the_file_it_names(pair: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "data" / "result.csv"
    real.parent.mkdir()
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    assert run(capsys, "correlate", *map(str, pair), "--format", "csv", "-o", str(link))[0] == 0
    assert link.is_symlink() and real.read_text().startswith("conn,proto,")


def test_a_table_written_to_a_file_is_the_table_shown(pair: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "t.txt"
    assert run(capsys, "correlate", *map(str, pair), "--format", "table", "-o", str(target))[0] == 0
    code, out, _ = run(capsys, "correlate", *map(str, pair), "--format", "table")
    assert code == 0 and target.read_text() == out and "203.0.113.2:61001" in out


def test_atomic_write_cleans_up_even_if_interrupted_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while writing, and again while the temporary file is removed (polars raised the one it saw a second
    time, in a captured case): the temporary file still goes, the KeyboardInterrupt goes on."""
    import os

    from natproof.report import export

    real_unlink, calls = os.unlink, []

    def unlink_once_interrupted(path: str) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real_unlink(path)

    def write(fh: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export.os, "unlink", unlink_once_interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.atomic_write(tmp_path / "out.json", write)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--clock-offset", "nan"], ["--tolerance", "inf"]])
def test_times_that_are_not_finite_are_bad_input(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                                 args: list[str]) -> None:
    code, _, err = run(capsys, "correlate", *map(str, pair), *args)
    assert code == 2 and "is not a finite number of seconds" in err and err.count("\n") == 1


def test_who_at_a_time_no_capture_can_hold(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "who", "203.0.113.2:40000", *map(str, pair), "--at", "inf")
    assert code == 2 and err.startswith("natproof: error: --at inf: not a time a capture can hold")


def test_verify_refuses_expectations_of_the_wrong_type(pair: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "verify", *map(str, pair), "--expect-snat-ip", "garbage")
    assert code == 2 and err == "natproof: error: --expect-snat-ip: 'garbage' is not an IP address (e.g. 203.0.113.2)\n"
    toml = tmp_path / "e.toml"
    toml.write_text('min_connections = "two"\n')
    code, _, err = run(capsys, "verify", *map(str, pair), "--expectations", str(toml))
    assert code == 2 and err == f"natproof: error: {toml}: min_connections must be a whole number\n"


CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def test_conntrack_record_in_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    d = CAPTURES / "forward-drop"
    args = ("correlate", str(d / "inside.pcap"), str(d / "outside.pcap"), "--conntrack", str(d / "conntrack.log"))
    code, out, err = run(capsys, *args, "--format", "json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["conntrack"]["entries"] == 14
    assert [(c["kernel"], c["kernel_reason"]) for c in doc["connections"]] == [
        ("absent", "dropped_before_confirmation"), ("confirmed", None), ("confirmed", None)]
    code, out, _ = run(capsys, *args, "--format", "table")
    assert code == 0
    assert re.search(r"│ absent +│", out) and out.count("confirmed") >= 2
    assert (f"kernel record {d / 'conntrack.log'} (14 entries): 2 confirmed, 1 absent (1 "
            "dropped_before_confirmation)") in out
    code, out, _ = run(capsys, *args[:3], "--format", "csv")
    assert "kernel" in out.splitlines()[0].split(",")


@pytest.mark.parametrize("command", ["correlate", "diagnose", "report", "verify", "who"])
def test_conntrack_record_errors_are_one_line(command: str, pair: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.log"
    junk.write_text("not conntrack\n")
    extra = {"report": ["-o", str(tmp_path / "r.html")], "verify": ["--expect-all", "translated"],
             "who": []}.get(command, [])
    head = [command, "203.0.113.2:40000"] if command == "who" else [command]
    code, out, err = run(capsys, *head, str(pair[0]), str(pair[1]), "--conntrack", str(junk), *extra)
    assert (code, out) == (2, "")
    assert err == (f"natproof: error: {junk}: no conntrack entry in 1 line(s) (natproof reads conntrack -L and -E "
                   "output, default, -o extended, -o timestamp and -o xml, and /proc/net/nf_conntrack)\n")
    code, _, err = run(capsys, *head, str(pair[0]), str(pair[1]), "--conntrack", str(tmp_path / "none.log"), *extra)
    assert code == 2
    missing = tmp_path / "none.log"
    assert err == f"natproof: error: {missing}: cannot read the conntrack record: No such file or directory\n"


def test_conntrack_lines_it_cannot_read_are_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    d = CAPTURES / "basic"
    record = Path(__file__).resolve().parent / "cases" / "clusterip-dnat" / "kernel-record.txt"
    code, _, err = run(capsys, "correlate", str(d / "inside.pcap"), str(d / "outside.pcap"), "--conntrack",
                       str(record), "--format", "json")
    assert code == 0
    assert err.startswith(f"natproof: warning: {record}: 21 line(s) are no conntrack entry and were left out (line ")


def test_conntrack_stamps_before_2000_are_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A record with an event stamped 0 (1970) is read with a warning on stderr and in the JSON's conntrack
    section, as lines that are no entry are; -q silences it, as it does every warning."""
    d = CAPTURES / "basic"
    text = (d / "conntrack.log").read_text()
    first = text.index("\n[") + 1
    record = tmp_path / "zero.log"
    record.write_text(text[:first] + "[0.000000]" + text[text.index("]", first) + 1:])
    code, out, err = run(capsys, "correlate", str(d / "inside.pcap"), str(d / "outside.pcap"), "--conntrack",
                         str(record), "--format", "json")
    assert code == 0
    warning = (f"natproof: warning: {record}: 1 entry stamped before 2000 (line 3: 1970-01-01T00:00:00Z), a time no "
               "conntrack record can have: the node's clock was not set (it starts at 1970) or the field is no epoch "
               "time; read as stamped, the record's span reaches back to then\n")
    assert err == warning
    assert json.loads(out)["conntrack"]["warnings"] == [warning.split(f"{record}: ", 1)[1].rstrip("\n")]
    code, _, err = run(capsys, "who", "203.0.113.2:37784", "--conntrack", str(record), "--format", "json")
    assert err == warning
    code, _, err = run(capsys, "who", "203.0.113.2:37784", "--conntrack", str(record), "--format", "json", "-q")
    assert err == ""


def test_who_with_a_conntrack_event_log_and_no_capture(capsys: pytest.CaptureFixture[str]) -> None:
    record = str(CAPTURES / "clusterip" / "conntrack.log")
    code, out, err = run(capsys, "who", "203.0.113.2:38372", "--at", "2026-11-29T13:07:07.300Z", "--conntrack",
                         record, "--format", "json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["clock"] == "node"
    assert [(c["ends"]["pod"]["address"], c["kernel_entry"]["line"]) for c in doc["connections"]] == [
        ("10.244.0.10", 4)]
    code, out, _ = run(capsys, "who", "203.0.113.2:38372", "--conntrack", record, "--format", "table")
    assert code == 0 and "conntrack line 4" in out and "10.244.0.10:38372" in out
    code, out, _ = run(capsys, "who", "203.0.113.2:1", "--conntrack", record, "--format", "table")
    assert (code, out) == (1, "no connection used 203.0.113.2:1\n")
    code, _, err = run(capsys, "who", "203.0.113.2:38372")
    assert code == 2 and err == ("natproof: error: give INSIDE and OUTSIDE captures, or neither and --conntrack FILE "
                                 "(a conntrack event log) to answer from the kernel's record alone, or --flow-log "
                                 "with --nat-gateway (see 'natproof who --help')\n")


def test_who_from_the_kernel_record_alone_names_pods_and_finds_one_by_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Found by a helper's trial: with --conntrack and no capture, --pods named nothing and a pod's name was
    # refused as "needs --pods and --services" although they were given.
    d = CAPTURES / "port-collision"
    code, out, err = run(capsys, "who", "203.0.113.2:53585", "--conntrack", str(d / "conntrack.log"), "--pods",
                         str(d / "pods.json"), "--format", "json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert [c["ends"]["pod"]["name"] for c in doc["connections"]] == ["default/pod2"]
    code, out, err = run(capsys, "who", "pod2", "--conntrack", str(d / "conntrack.log"), "--pods",
                         str(d / "pods.json"), "--format", "json")
    assert (code, err) == (0, "")
    named = json.loads(out)["connections"]
    captured = json.loads(run(capsys, "who", "pod2", str(d / "inside.pcap"), str(d / "outside.pcap"), "--pods",
                              str(d / "pods.json"), "--format", "json")[1])["connections"]
    # The record alone names the same connections the captures do (the kernel's tuples, the captures' pod).
    assert named and [c["ends"]["pod"]["address"] + f":{c['ends']['pod']['port']}" for c in named] == [
        c["ends"]["pod"]["address"] + f":{c['ends']['pod']['port']}" for c in captured]


def test_a_side_that_does_not_apply_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    """--side says which side one capture of one interface was taken on: given with a file of several interfaces
    (split into both sides) or with two captures, it changes nothing, as before, but is no longer dropped without a
    word (a new user's trial): a warning says so."""
    d = CAPTURES / "internal"
    not_for = "(it is for one capture of one interface and a conntrack record)"
    code, out, err = run(capsys, "correlate", str(d / "any.pcap"), "--conntrack", str(d / "conntrack.log"),
                         "--side", "outside", "--format", "json")
    assert code == 0
    assert (f"natproof: warning: {d / 'any.pcap'}: holds several interfaces, both sides of the NAT, and is split into "
            f"them: the side given (outside) does not apply {not_for}\n") in err
    split = json.loads(out)
    assert (split["captures"]["inside"]["interfaces"], split["captures"]["outside"]["interfaces"]) == (
        ["if4"], ["if3"])  # split, as without --side
    code, _, err = run(capsys, "correlate", str(d / "inside.pcap"), str(d / "outside.pcap"), "--side", "inside",
                       "--format", "json")
    assert code == 0 and err == (f"natproof: warning: {d / 'inside.pcap'}: given with the other side's capture: the "
                                 f"side given (inside) does not apply {not_for}\n")
    # auto, the default, claims nothing: no warning.
    code, _, err = run(capsys, "correlate", str(d / "inside.pcap"), str(d / "outside.pcap"), "--format", "json")
    assert (code, err) == (0, "")
    chain = [str(CAPTURES / "double-nat" / p) for p in ("inside.pcap", "outside.pcap", "gateway/outside.pcap")]
    code, _, err = run(capsys, "correlate", *chain, "--side", "inside")
    assert code == 2 and err.startswith("natproof: error: --inside-if, --outside-if, --conntrack and --side apply to "
                                        "one pair of captures, not a chain")


def test_one_capture_with_conntrack(capsys: pytest.CaptureFixture[str]) -> None:
    d = CAPTURES / "nodeport"
    code, out, err = run(capsys, "correlate", str(d / "outside.pcap"), "--conntrack", str(d / "conntrack.log"),
                         "--format", "json")
    assert code == 0
    assert err.startswith(f"natproof: warning: {d / 'outside.pcap'}: the only capture; taken as the outside one: 5 ")
    doc = json.loads(out)
    assert doc["captures"]["inside"]["format"] == "none"
    assert {c["evidence_level"] for c in doc["connections"]} == {"kernel_record"}
    pods = sorted((c["inside"]["src"], c["inside"]["dport"]) for c in doc["connections"] if c["initiator"] == "outside")
    assert pods == [("10.244.0.1", 8080)] * 2 + [("198.51.100.20", 8080)] * 2
    code, out, _ = run(capsys, "correlate", str(d / "outside.pcap"), "--conntrack", str(d / "conntrack.log"),
                       "--side", "inside", "--format", "json", "-q")
    assert code == 0 and json.loads(out)["captures"]["outside"]["format"] == "none"
    code, out, err = run(capsys, "correlate", str(d / "outside.pcap"))
    assert (code, out) == (2, "")
    assert err == (f"natproof: error: {d / 'outside.pcap'}: a capture of one interface (EN10MB) and no second capture: "
                   "give the other side's too (natproof correlate INSIDE OUTSIDE), or the node's conntrack record for "
                   "the other side (--conntrack FILE), or one capture of several interfaces (tcpdump -i any, dumpcap "
                   "-i A -i B)\n")


def test_output_never_replaces_a_file_an_option_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the new-user trial: -o naming the --pods dump or the --interfaces file replaced it."""
    import shutil

    src = Path(__file__).resolve().parent.parent / "captures" / "internal"
    for name in ("any.pcap", "links.txt", "pods.json"):
        shutil.copy(src / name, tmp_path / name)
    before = (tmp_path / "pods.json").read_bytes()
    assert main(["report", str(tmp_path / "any.pcap"), "--interfaces", str(tmp_path / "links.txt"), "--pods",
                 str(tmp_path / "pods.json"), "-o", str(tmp_path / "pods.json"), "--quiet"]) == 2
    assert "is the --pods dump" in capsys.readouterr().err and (tmp_path / "pods.json").read_bytes() == before
    assert main(["export-pcap", str(tmp_path / "any.pcap"), "--interfaces", str(tmp_path / "links.txt"), "--all",
                 "-o", str(tmp_path / "links.txt"), "--quiet"]) == 2
    assert "is the --interfaces file" in capsys.readouterr().err
    assert main(["export-pcap", str(tmp_path / "any.pcap"), "--interfaces", str(tmp_path / "links.txt"), "--all",
                 "-o", "-", "--quiet"]) == 2
    assert "writes a pcapng file" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["icmp", "asymmetric-reply", "udp", "hairpin"])
def test_conntrack_lines_are_conntrack_line(case: str) -> None:
    """The conntrack form is built from columns (export.conntrack_lines); each line must be the per-row
    conntrack_line's text, ICMP echo identifiers (original and reply) and unreplied entries included, and a row with
    no translation or null ports too."""
    from natproof.report.export import conntrack_line, conntrack_lines

    d = Path(__file__).parent.parent / "captures" / case
    conns = natproof.correlate(*sorted(d.glob("*side.pcap*"))).connections
    odd = conns.head(1).with_columns(pl.lit(None, pl.String).alias("trans_src"), pl.lit(None, pl.UInt16)
                                     .alias("orig_sport"), pl.lit(None, pl.UInt32).alias("reply_inside"),
                                     pl.lit(0, pl.UInt32).alias("reply_outside"))
    frame = pl.concat([conns, odd])
    assert conntrack_lines(frame).to_list() == [conntrack_line(r) for r in frame.iter_rows(named=True)]
    if case == "icmp":  # the second ping's identifier was rewritten by the NAT: the reply tuple shows the new one
        assert conntrack_lines(conns)[1] == (
            "icmp     1 - src=10.244.0.11 dst=198.51.100.10 type=8 code=0 id=16962 "
            "src=198.51.100.10 dst=203.0.113.2 type=0 code=0 id=53572 verdict=translated")


@pytest.mark.parametrize("fmt", ["ndjson", "json", "table"])
def test_a_reader_that_leaves_early_is_no_error(fmt: str) -> None:
    """`natproof correlate ... | head`: the reader closes the pipe after a few bytes; natproof stops quietly with
    status 0 (click and rich would exit 1), whatever the format."""
    import subprocess
    import sys

    d = Path(__file__).resolve().parent.parent / "captures" / "many-connections"
    rows = ["--limit", "100000"] if fmt == "table" else []  # more than a pipe holds, in every format
    with subprocess.Popen([sys.executable, "-m", "natproof", "correlate", str(d / "inside.pcap.gz"),
                           str(d / "outside.pcap.gz"), "--format", fmt, *rows, "-q"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        head = proc.stdout.read(100)
        proc.stdout.close()
        err = proc.stderr.read()
        assert (proc.wait(timeout=120), err, len(head)) == (0, b"", 100)


@pytest.mark.parametrize(("args", "status"), [
    (["verify", "--expect-all", "translated", "--format", "json"], 0),
    (["verify", "--expect-all", "no_reply", "--format", "table"], 1),  # failed: it says so, reader or not
    (["diagnose", "--format", "table"], 0),
    (["explain", "--conn", "0", "--format", "json"], 0),
    (["who", "198.51.100.10:80", "--format", "table"], 0),
], ids=["verify-passed", "verify-failed", "diagnose", "explain", "who"])
def test_every_command_keeps_its_own_status_when_the_reader_left(args: list[str], status: int) -> None:
    """Found by a helper: outside `correlate`, a closed pipe made every command exit 1 (click's and rich's
    handling), so a passed verify read as failed and a found `who` as not found."""
    import subprocess
    import sys

    d = Path(__file__).resolve().parent.parent / "captures" / "basic"
    cmd, *rest = args
    head = [cmd, rest.pop(0)] if cmd == "who" else [cmd]
    with subprocess.Popen([sys.executable, "-m", "natproof", *head, str(d / "inside.pcap"), str(d / "outside.pcap"),
                           *rest], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before natproof writes a byte
        err = proc.stderr.read()
        assert (proc.wait(timeout=120), err) == (status, b"")


def test_one_capture_and_a_kernel_record_is_not_two_captures_that_never_overlapped(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Found by a helper: the summary said "the captures never ran at the same time" of a single capture.
    d = Path(__file__).resolve().parent.parent / "captures" / "forward-drop"
    code, out, _ = run(capsys, "correlate", str(d / "inside.pcap"), "--conntrack", str(d / "conntrack.log"),
                       "--format", "table")
    assert code == 0 and "one capture; the other side from the kernel's record" in out
    assert "never ran at the same time" not in out


def test_a_capture_of_no_ip_packet_is_not_said_to_run_apart(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # A new user's break test: an inside file left with two ARP frames read as "the captures never ran at the same
    # time"; it holds no IP packet, so there is nothing to line up in time.
    from pcapbytes import ether

    d = Path(__file__).resolve().parent.parent / "captures" / "basic"
    arp = ether(b"\x00" * 28, ethertype=0x0806)
    (tmp_path / "inside.pcap").write_bytes(pcap([(1_700_000_000 * 10**9, arp), (1_700_000_001 * 10**9, arp)]))
    code, out, _ = run(capsys, "correlate", str(tmp_path / "inside.pcap"), str(d / "outside.pcap"), "--format",
                       "table")
    assert code == 0 and "the inside capture holds no IP packet" in out
    assert "never ran at the same time" not in out


def test_a_capture_whose_ip_packets_a_snaplen_cut_says_it_holds_none_natproof_could_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A new user's trial at -s 40: "the inside capture holds no IP packet" of 30 IP packets cut inside their TCP
    # headers (skipped truncated_l4). They are IP packets; natproof could not read them.
    from pcapbytes import ether, ipv4, tcp

    d = Path(__file__).resolve().parent.parent / "captures" / "basic"
    frame = ether(ipv4("10.244.0.10", "198.51.100.10", 6, tcp(40000, 80, 1, 0, 0x02)))
    t0 = 1_700_000_000 * 10**9
    (tmp_path / "inside.pcap").write_bytes(pcap([(t0 + i, frame[:40], len(frame)) for i in range(3)]))
    code, out, _ = run(capsys, "correlate", str(tmp_path / "inside.pcap"), str(d / "outside.pcap"), "--format",
                       "table")
    assert code == 0
    assert "the inside capture holds no IP packet natproof could read: 3 cut inside their headers" in " ".join(
        out.split())


def test_a_piped_table_has_no_trailing_blanks(capsys: pytest.CaptureFixture[str]) -> None:
    # Found by a helper: rich padded the centred title and the Services block to the width.
    d = Path(__file__).resolve().parent.parent / "captures" / "clusterip"
    code, out, _ = run(capsys, "correlate", str(d / "inside.pcap"), str(d / "outside.pcap"), "--format", "table")
    assert code == 0 and "Services (VIP:port -> backends chosen)" in out
    assert [line for line in out.splitlines() if line != line.rstrip()] == []


def test_lab_check_prints_a_connection_that_reached_no_pod() -> None:
    # A refused NodePort attempt has no inside tuple (truth and result alike): lab check's miss and surplus lines
    # name it by its outside tuple (was an internal error).
    from natproof.cli import _conn_text

    refused = {"proto": "tcp", "inside": None, "verdict": "not_forwarded",
               "outside": {"src": "198.51.100.20", "sport": 45915, "dst": "203.0.113.2", "dport": 30090}}
    assert _conn_text(refused) == "tcp 198.51.100.20:45915 -> 203.0.113.2:30090 (outside only) not_forwarded"


def test_lab_run_names_a_folder_it_cannot_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A helper's new-user trial: --out under /proc was an internal error (exit 70).
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "lab", "run", "basic", "--out", str(tmp_path / "file" / "run"))
    assert code == 2 and err.startswith(f"natproof: error: {tmp_path / 'file' / 'run'}: cannot make the scenario "
                                        "folder") and err.count("\n") == 1


def test_who_gives_the_first_frame_of_a_connection_that_crossed_nowhere(capsys: pytest.CaptureFixture[str]) -> None:
    # A helper's new-user trial: a refused NodePort attempt showed frames "-" though the outside capture holds it.
    case = Path(__file__).resolve().parents[1] / "captures" / "nodeport-no-endpoints"
    code, out, _ = run(capsys, "who", "203.0.113.2:30090", str(case / "inside.pcap"), str(case / "outside.pcap"),
                       "--format", "table")
    assert code == 0 and out.rstrip().splitlines()[-1].endswith("not_forwarded  out 3")


def test_a_pod_cidr_that_names_no_network_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # A helper's new-user trial: --pod-cidr '' fell back to inference without a word.
    case = Path(__file__).resolve().parents[1] / "captures" / "basic"
    for value in ("", ","):
        code, out, err = run(capsys, "correlate", str(case / "inside.pcap"), str(case / "outside.pcap"),
                             "--pod-cidr", value)
        assert (code, out) == (2, "") and err == f"natproof: error: invalid --pod-cidr: no network in {value!r}\n"


def test_lab_check_of_the_current_folder_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A helper's new-user trial: `lab check .` printed an empty scenario name.
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[1] / "captures" / "basic", tmp_path / "basic")
    monkeypatch.chdir(tmp_path / "basic")
    code, out, _ = run(capsys, "lab", "check", ".")
    assert code == 0 and "│ basic " in out


def test_lab_check_says_which_capture_was_cut_short_when_it_fails(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # A helper's new-user trial: a truncated capture's warning was dropped and lab check only said FAIL.
    import shutil

    case = tmp_path / "basic"
    shutil.copytree(Path(__file__).resolve().parents[1] / "captures" / "basic", case)
    data = (case / "inside.pcap").read_bytes()
    (case / "inside.pcap").write_bytes(data[: len(data) * 2 // 5 + 7])
    code, out, _ = run(capsys, "lab", "check", str(case))
    assert code == 1
    assert f"basic: capture warning: {case / 'inside.pcap'}: last record truncated at frame 16" in out


def test_the_table_counts_a_flows_other_mappings(capsys: pytest.CaptureFixture[str]) -> None:
    # Kernel variant (tests/variants/udp-idle-nodeport): one flow from outside reached the pod under two tuples in
    # turn; the table shows the last and counts the other ("(+1 tuple)": a new user's trial read "(+1 tuples)").
    d = Path(__file__).resolve().parent / "variants" / "udp-idle-nodeport"
    code, out, _ = run(capsys, "correlate", str(d / "inside.pcap"), str(d / "outside.pcap"), "--format", "table")
    assert code == 0 and "=> 10.244.0.1:21091 -> 10.244.0.10:5353 (+1 tuple) " in out and "tuples)" not in out


def test_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # The console script imported natproof.cli before any handler of natproof's: Ctrl-C in its first ~0.1 s printed
    # a KeyboardInterrupt traceback (a new user's trial). Both entries (the script, python -m natproof) are run().
    import builtins
    import sys

    from natproof.__main__ import run

    real = builtins.__import__

    def interrupted(name: str, *args: object, **kwargs: object) -> object:
        if name == "natproof.cli":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "natproof.cli")
    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert run(["--help"]) == 130
    assert capsys.readouterr().err == "natproof: interrupted\n"


def test_the_command_leaves_after_its_atexit_handlers_and_a_flush(tmp_path: Path) -> None:
    # natproof.__main__.leave skips the interpreter's teardown (os._exit) but not what the exit owes: atexit
    # handlers (natproof.parallel ends an unused prestarted worker there), buffered output, the status; a thread
    # that is not a daemon is waited for as by the usual exit.
    import subprocess
    import sys

    code = ("import atexit, sys, threading, time\n"
            "from natproof.__main__ import leave\n"
            "atexit.register(lambda: print('handler'))\n"
            "if sys.argv[1] == 'thread':\n"
            "    threading.Thread(target=lambda: (time.sleep(0.3), print('thread'))).start()\n"
            "sys.stdout.write('buffered ')\n"
            "leave(3)\n")
    for how, want in (("plain", "buffered handler\n"), ("thread", "buffered thread\nhandler\n")):
        got = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=60)
        assert (got.returncode, got.stdout, got.stderr) == (3, want, "")
    # Under a profiler the usual exit, teardown and all (the profiler writes its findings after the program ends):
    # a file left open is flushed by the teardown, not by os._exit.
    left = code.replace("leave(3)", "left = open(sys.argv[2], 'w')\nleft.write('flushed')\n{}leave(3)")
    for profile, want in (("", ""), ("sys.setprofile(lambda *a: None)\n", "flushed")):
        target = tmp_path / "left.txt"
        got = subprocess.run([sys.executable, "-c", left.format(profile), "plain", str(target)], capture_output=True,
                             text=True, timeout=60)
        assert (got.returncode, got.stdout, target.read_text()) == (3, "buffered handler\n", want)


def test_ctrl_c_in_a_command_is_one_line_with_no_blank_line_before_it(pair: tuple[Path, Path],
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # click writes a blank line to end a terminal's ^C echo, whatever stderr is: a log read "\nnatproof:
    # interrupted" (a new user's trial). Only on a terminal is there a line to end.
    from natproof import cli

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_correlate", interrupted)
    assert run(capsys, "correlate", *map(str, pair), "-q") == (130, "", "natproof: interrupted\n")


@pytest.mark.parametrize("scenario", ["internal", "reject-no-endpoints"])
def test_table_says_which_inside_packets_unmatched_counts(scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: "unmatched packets 0 inside" beside "30 inside only" (captures/internal) read as a
    contradiction; unmatched counts the packets of connections that should have crossed (internal ones left out, the
    node's REJECTs in: 6 against reject-no-endpoints' 3 inside only). The JSON numbers are unchanged."""
    args = [str(CAPTURES / scenario / "inside.pcap"), str(CAPTURES / scenario / "outside.pcap")]
    code, out, _ = run(capsys, "correlate", *args, "--format", "json")
    doc = json.loads(out)
    unmatched = [c for c in doc["connections"] if c["verdict"] != "internal"]
    want = sum(c["fates"]["inside_only"] + c["fates"]["node_generated"] for c in unmatched)
    assert code == 0 and doc["unmatched"]["inside"] == want
    code, out, _ = run(capsys, "correlate", *args, "--format", "table")
    (line,) = [x for x in out.splitlines() if x.startswith("unmatched packets ")]
    assert line.startswith(f"unmatched packets {want} inside (of connections that should have crossed), "
                           f"{doc['unmatched']['outside']} outside; ")


def test_ctrl_c_in_code_python_only_prints_is_not_lost(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # A Ctrl-C landing in a weakref callback of the import system printed "Exception ignored in ... Traceback ...
    # KeyboardInterrupt" and the command went on to exit 0 (a CI run of the Ctrl-C test, 40 ms into a command).
    # Python can only print what such code raises: the interrupt is raised again in the main thread, said in one
    # line. Any other exception there still goes to the hook that was in place, which is back after the command.
    import sys
    import weakref

    from natproof import cli

    class Thing:
        pass

    def raise_(exc: BaseException) -> None:
        raise exc

    seen: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_type))
    before = sys.unraisablehook

    def callbacks(*args: object, **kwargs: object) -> None:
        for exc in (ValueError("other"), KeyboardInterrupt()):
            thing = Thing()
            ref = weakref.ref(thing, lambda _, exc=exc: raise_(exc))
            del thing
            assert ref() is None
        import time

        end = time.monotonic() + 5  # the instructions after the callback, where the interrupt is raised again
        while time.monotonic() < end:
            pass
        raise AssertionError("the command went on past its interrupt")

    monkeypatch.setattr(cli, "run_correlate", callbacks)
    assert run(capsys, "correlate", *map(str, pair), "-q") == (130, "", "natproof: interrupted\n")
    assert seen == [ValueError]
    assert sys.unraisablehook is before


def test_ipv6_addresses_in_brackets_print_whole_in_tables(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # rich read "[fd00:10:244::10]" as a style tag and deleted it: a trial's who table named the pod ":40000"
    # (fd00::/8, the usual IPv6 pod range; 2001:db8:: starts with a digit and survived). Tables print text as is.
    from pcapbytes import ipv6, tcp

    pod, node, srv = "fd00:10:244::10", "2001:db8:100::2", "2001:db8:ff::10"
    inside, outside = [], []
    steps = [("e", 0x02, 1000, 0), ("r", 0x12, 5000, 1001), ("e", 0x10, 1001, 5001), ("e", 0x11, 1001, 5001),
             ("r", 0x11, 5001, 1002), ("e", 0x10, 1002, 5002)]
    for i, (d, flags, seq, ack) in enumerate(steps):
        t = 1_700_000_000 * 10**9 + i * 1_000_000
        if d == "e":
            inside.append((t, ipv6(pod, srv, 6, tcp(40000, 443, seq, ack, flags))))
            outside.append((t + 30_000, ipv6(node, srv, 6, tcp(40000, 443, seq, ack, flags), hlim=63)))
        else:
            outside.append((t, ipv6(srv, node, 6, tcp(443, 40000, seq, ack, flags), hlim=50)))
            inside.append((t + 30_000, ipv6(srv, pod, 6, tcp(443, 40000, seq, ack, flags), hlim=49)))
    paths = write_pair(tmp_path, inside, outside)
    code, out, _ = run(capsys, "correlate", *map(str, paths), "--format", "table")
    assert code == 0 and f"[{pod}]:40000 -> [{srv}]:443" in out
    code, out, _ = run(capsys, "who", f"[{node}]:40000", *map(str, paths), "--format", "table")
    assert code == 0 and f"[{pod}]:40000" in out


def test_csv_and_parquet_carry_the_flags_json_gives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A trial: a leaked FIN, a reply left untranslated... were flags of the JSON only; a CSV or Parquet reader saw
    # a plain 'translated'. Both carry the JSON's flags, connection by connection.
    case = Path(__file__).parent / "cases" / "idle-expiry-fin-leak"
    pair = [str(case / "inside.pcap"), str(case / "outside.pcap")]
    assert run(capsys, "correlate", *pair, "-q", "-o", str(tmp_path / "r.json"))[0] == 0
    want = [c["flags"] for c in json.loads((tmp_path / "r.json").read_text())["connections"]]
    assert ["leak"] in want
    for suffix in ("csv", "parquet"):
        assert run(capsys, "correlate", *pair, "-q", "-o", str(tmp_path / f"r.{suffix}"))[0] == 0
    assert [f.split(",") if f else [] for f in pl.read_csv(tmp_path / "r.csv")["flags"].fill_null("")] == want
    assert pl.read_parquet(tmp_path / "r.parquet")["flags"].to_list() == want


def test_report_refuses_a_data_suffix_and_flowlog_a_result_with_no_connections(
        pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A trial: `report -o out.json` wrote the HTML page into out.json; `flowlog --result` took {"schema":
    # "natproof.correlate/2"} alone (cut short or edited) as a result with nothing to join, exit 0.
    for name in ("out.json", "out.pcap", "out.json.gz"):
        target = tmp_path / name
        code, _, err = run(capsys, "report", *map(str, pair), "-o", str(target))
        assert code == 2 and "report writes an HTML page: name the file .html" in err and not target.exists()
    assert run(capsys, "report", *map(str, pair), "-o", str(tmp_path / "r.HTML"), "-q")[0] == 0
    logs = Path(__file__).resolve().parent.parent / "captures" / "double-nat" / "flowlogs" / "custom.log"
    fake = tmp_path / "fake.json"
    whole = {"schema": "natproof.correlate/2", "connections": [
        {"proto": "tcp", "verdict": "translated", "first_seen": 1.0, "last_seen": 2.0, "initiator": "inside",
         "translated": {"src": "203.0.113.20", "sport": 40000, "dst": "198.51.100.10", "dport": 80}}]}
    # A trial's edits: each one line naming the file (and the connection), exit 2; "noon" was an internal error.
    for doc, said in (({"schema": "natproof.correlate/2"}, "not a whole natproof.correlate document (no list of "
                                                           "connections)"),
                      ({**whole, "schema": "natproof.correlate/9"}, "natproof.correlate/9 is a version this natproof "
                                                                    "does not read"),
                      ({**whole, "connections": [{"proto": "tcp"}]}, "connection #0: no verdict, first_seen, "
                                                                     "last_seen"),
                      ({**whole, "connections": [{**whole["connections"][0], "first_seen": "noon"}]},
                       "connection #0: a field is missing or of the wrong kind")):
        fake.write_text(json.dumps(doc))
        code, out, err = run(capsys, "flowlog", str(logs), "--nat-gateway", "10.0.1.1=203.0.113.20", "--result",
                             str(fake), "--format", "table")
        assert (code, out) == (2, "") and err.startswith(f"natproof: error: {fake}: {said}") and err.count("\n") == 1
    fake.write_text(json.dumps(whole))
    assert run(capsys, "flowlog", str(logs), "--nat-gateway", "10.0.1.1=203.0.113.20", "--result", str(fake),
               "--format", "json")[0] == 0
