"""natproof.flowlogs.records: every delivery form of AWS VPC Flow Logs, hand-written, and input that is not one."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from natproof.cli import main
from natproof.errors import InputError
from natproof.flowlogs import DEFAULT_FORMAT, FIELDS, parse_format, read_flow_logs
from natproof.flowlogs.records import read_flow_log_file

# AWS's own examples ("Flow log record examples", Amazon VPC User Guide): accepted SSH, rejected RDP, NODATA, SKIPDATA.
HEADER = " ".join(DEFAULT_FORMAT)
ACCEPTED = ("2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 "
            "1418530070 ACCEPT OK")
REJECTED = ("2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 "
            "REJECT OK")
NODATA = "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA"
SKIPDATA = "2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA"
# AWS's NAT gateway example, as a custom format with ports and counts (the doc's example names only addresses).
NAT_FORMAT = ("instance-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end pkt-srcaddr "
              "pkt-dstaddr")
NAT_LINES = [
    "- eni-1235b8ca123456789 10.0.1.5 10.0.0.220 40000 443 6 10 900 1700000000 1700000010 10.0.1.5 203.0.113.5",
    "- eni-1235b8ca123456789 10.0.0.220 203.0.113.5 40000 443 6 10 900 1700000000 1700000010 10.0.0.220 203.0.113.5",
]


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_default_format_with_the_header_s3_writes(tmp_path: Path) -> None:
    path = write(tmp_path, "s3.log", "\n".join([HEADER, ACCEPTED, REJECTED, NODATA, SKIPDATA]) + "\n")
    log = read_flow_logs(path)
    (f,) = log.files
    assert (f.fields_from, f.fields, f.lines, f.records, f.nodata, f.skipdata) == (
        "header", DEFAULT_FORMAT, 5, 4, 1, 1)
    assert f.skipped == {}
    flows = log.flows()
    assert flows.select("srcaddr", "srcport", "dstport", "protocol", "packets", "bytes", "start_s", "end_s",
                        "action", "line_no").rows() == [
        ("172.31.16.139", 20641, 22, 6, 20, 4249, 1418530010, 1418530070, "ACCEPT", 2),
        ("172.31.9.69", 49761, 3389, 6, 20, 4249, 1418530010, 1418530070, "REJECT", 3)]
    # NODATA/SKIPDATA are records (counted) whose flow fields are all missing: never a flow.
    nodata = log.records.filter(pl.col("log_status") == "NODATA").row(0, named=True)
    assert nodata["srcaddr"] is None and nodata["packets"] is None and nodata["start_s"] == 1431280876
    summary = log.summary()
    assert summary["by_action"] == [{"value": "ACCEPT", "records": 1, "packets": 20, "bytes": 4249},
                                    {"value": "REJECT", "records": 1, "packets": 20, "bytes": 4249}]
    assert summary["by_protocol"][0]["value"] == "tcp"
    assert {r["value"]: r["records"] for r in summary["by_log_status"]} == {"OK": 2, "NODATA": 1, "SKIPDATA": 1}


def test_default_format_without_a_header(tmp_path: Path) -> None:
    log = read_flow_logs(write(tmp_path, "cw.log", f"{ACCEPTED}\n{NODATA}\n"))
    assert log.files[0].fields_from == "default"
    assert log.flows()["dstport"].to_list() == [22]


def test_gzip_is_sniffed_not_guessed_from_the_name(tmp_path: Path) -> None:
    path = write(tmp_path, "records.txt", gzip.compress(f"{HEADER}\n{ACCEPTED}\n".encode()))
    log = read_flow_logs(path)
    assert log.files[0].format == "text+gzip" and log.flows().height == 1


def test_custom_format_named_by_its_header_in_any_order(tmp_path: Path) -> None:
    log = read_flow_logs(write(tmp_path, "nat.log", "\n".join([NAT_FORMAT, *NAT_LINES])))
    assert log.files[0].fields == tuple(NAT_FORMAT.split())
    rows = log.flows().select("instance_id", "srcaddr", "dstaddr", "pkt_srcaddr", "pkt_dstaddr", "version").rows()
    # '-' is a missing value; a field the format lacks is null throughout.
    assert rows == [(None, "10.0.1.5", "10.0.0.220", "10.0.1.5", "203.0.113.5", None),
                    (None, "10.0.0.220", "203.0.113.5", "10.0.0.220", "203.0.113.5", None)]
    assert log.has("pkt_dstaddr") and not log.has("tcp_flags")


def test_cloudwatch_export_with_timestamps_needs_the_format(tmp_path: Path) -> None:
    lines = [f"2026-11-24T14:02:10.000Z {NAT_LINES[0]}", f"1795500000000 {NAT_LINES[1]}"]
    path = write(tmp_path, "cloudwatch.log", "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"cloudwatch\.log: not a VPC flow log in the default format .*"
                                          r"pass fields with the flow log's format$") as exc:
        read_flow_logs(path)
    assert exc.value.for_command_line().endswith("pass --flow-log-format with the flow log's format")
    log = read_flow_logs(path, fields="${" + "} ${".join(NAT_FORMAT.split()) + "}")
    (f,) = log.files
    assert (f.fields_from, f.records, f.cloudwatch_timestamps) == ("given", 2, 2)
    assert log.flows()["srcport"].to_list() == [40000, 40000]


def test_the_header_wins_over_a_given_format(tmp_path: Path) -> None:
    log = read_flow_logs(write(tmp_path, "s3.log", f"{HEADER}\n{ACCEPTED}\n"), fields=NAT_FORMAT)
    assert log.files[0].fields_from == "header" and log.flows().height == 1


def test_parquet_delivery_with_underscore_columns(tmp_path: Path) -> None:
    frame = pl.DataFrame({
        "version": pl.Series([5, 5], dtype=pl.Int32), "interface_id": ["eni-1", "eni-1"],
        "srcaddr": ["10.0.1.5", "10.0.0.220"], "dstaddr": ["10.0.0.220", "203.0.113.5"],
        "srcport": pl.Series([40000, 1024], dtype=pl.Int32), "dstport": pl.Series([443, 443], dtype=pl.Int32),
        "protocol": pl.Series([6, 6], dtype=pl.Int32), "packets": [10, 10], "bytes": [900, 900],
        "start": [1700000000, 1700000000], "end": [1700000010, 1700000010], "pkt_srcaddr": ["10.0.1.5", "-"],
        "pkt_dstaddr": ["203.0.113.5", None], "log_status": ["OK", "OK"], "flow_direction": ["ingress", "egress"],
    })
    path = tmp_path / "flows.log.parquet"
    frame.write_parquet(path, compression="gzip")
    log = read_flow_logs(path)
    (f,) = log.files
    assert f.format == "parquet" and "pkt-srcaddr" in f.fields and f.records == 2
    assert log.flows().select("srcport", "start_s", "end_s", "pkt_srcaddr", "flow_direction").rows() == [
        (40000, 1700000000, 1700000010, "10.0.1.5", "ingress"), (1024, 1700000000, 1700000010, None, "egress")]


def test_athena_integration_names_are_aliases(tmp_path: Path) -> None:
    path = tmp_path / "athena.parquet"
    pl.DataFrame({"srcaddr": ["10.0.1.5"], "dstaddr": ["10.0.0.220"], "windowstart": [1], "windowend": [2],
                  "flowlogstatus": ["OK"]}).write_parquet(path)
    row = read_flow_logs(path).records.row(0, named=True)
    assert (row["start_s"], row["end_s"], row["log_status"]) == (1, 2, "OK")


def test_lines_that_do_not_parse_are_counted_by_reason(tmp_path: Path) -> None:
    bad_port = ACCEPTED.replace(" 20641 ", " x ")
    bad_addr = ACCEPTED.replace("172.31.16.139", "not-an-address")
    short = " ".join(ACCEPTED.split()[:10])
    double_space = ACCEPTED.replace(" 22 ", "  22 ")  # as one of AWS's own examples prints a record
    text = "\n".join([HEADER, ACCEPTED, bad_port, "", bad_addr, short, HEADER, double_space, "garbage"]) + "\n"
    log = read_flow_logs(write(tmp_path, "mixed.log", text))
    (f,) = log.files
    assert f.skipped == {"bad_address": 1, "bad_number": 1, "blank": 1, "field_count": 2, "repeated_header": 1}
    assert f.records == 2 and log.flows()["line_no"].to_list() == [2, 8]


def test_several_files_and_a_directory_keep_one_copy_of_each_record(tmp_path: Path) -> None:
    folder = tmp_path / "AWSLogs"
    folder.mkdir()
    write(folder, "a.log.gz", gzip.compress(f"{HEADER}\n{ACCEPTED}\n".encode()))
    write(folder, "b.log", f"{HEADER}\n{ACCEPTED}\n{REJECTED}\n")
    write(folder, "README.txt", "these are flow logs\n")
    log = read_flow_logs(folder)
    assert [Path(f.path).name for f in log.files] == ["a.log.gz", "b.log"]
    assert log.duplicates == 1 and log.flows().height == 2
    assert len(log.passed_over) == 1 and "README.txt" in log.passed_over[0]


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "empty file"),
    (b"\n\n  \n", "empty file"),
    (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(40), "not a VPC flow log in the default format"),
    (b"hello world\nthis is not a flow log\n", "not a VPC flow log in the default format"),
    (f"{HEADER}\n".encode(), "no line is a flow log record in the header format of 14 fields"),
    (f"{HEADER}\n{ACCEPTED.replace(' 20641 ', ' x ')}\n".encode(), r"\(1 bad number\)"),
    (b"\x1f\x8b\x08\x00garbage", "damaged gzip file"),
    (b"PAR1 not really", "not a readable Parquet file"),
    # Records, none of traffic: counted as what they are, and nothing to summarise or join.
    (f"{HEADER}\n{NODATA}\n{NODATA}\n".encode(),
     r"no record of traffic: its 2 record\(s\) are 2 NODATA \(no traffic on the interface in their interval\)$"),
    (f"{SKIPDATA}\n".encode(), r"no record of traffic: its 1 record\(s\) are 1 SKIPDATA \(flows the flow log skipped"),
    (f"{NODATA}\n{SKIPDATA}\n".encode(), r"its 2 record\(s\) are 1 NODATA \(.*\), 1 SKIPDATA \("),
])
def test_a_file_with_nothing_usable_is_one_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           content: bytes, problem: str) -> None:
    path = write(tmp_path, "input.log", content)
    with pytest.raises(InputError, match=rf"^{path}: .*{problem}"):
        read_flow_logs(path)
    assert main(["flowlog", str(path), "--format", "json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"natproof: error: {path}: ")


def test_a_file_of_no_traffic_beside_one_with_traffic_is_counted_not_refused(tmp_path: Path) -> None:
    """An S3 folder holds a file per interval: one of a quiet interval (NODATA only) is a flow log like the others."""
    folder = tmp_path / "AWSLogs"
    folder.mkdir()
    write(folder, "quiet.log", f"{HEADER}\n{NODATA}\n")
    write(folder, "busy.log", f"{HEADER}\n{ACCEPTED}\n")
    log = read_flow_logs(folder)
    assert (log.passed_over, log.nodata, log.flows().height) == ((), 1, 1)


def test_missing_file_and_unknown_format_field(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.log: no such file"):
        read_flow_logs(tmp_path / "nope.log")
    with pytest.raises(InputError, match="unknown field 'srcadr'"):
        parse_format("${version} ${srcadr}")
    assert parse_format("${version} ${pkt-srcaddr}, log_status") == ("version", "pkt-srcaddr", "log-status")


def test_every_documented_field_has_a_version_and_parquet_type() -> None:
    assert all(v >= 2 and t in ("INT_32", "INT_64", "STRING") for v, t, _ in FIELDS.values())
    assert set(DEFAULT_FORMAT) == {f for f, (v, _, _) in FIELDS.items() if v == 2}


@given(st.binary(max_size=400))
def test_any_bytes_give_records_or_an_input_error(data: bytes) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".log") as fh:
        fh.write(data)
        fh.flush()
        try:
            frame, info = read_flow_log_file(fh.name)
        except InputError as exc:
            assert str(exc).startswith(fh.name)
        else:
            assert frame.height == info.records > 0


def test_cli_flowlog_exits_2_with_one_line_for_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "x.log", "hello\n")
    assert main(["flowlog", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"natproof: error: {path}: not a VPC flow log")
    assert main(["flowlog", str(path), "--nat-gateway", "10.0.0.220=public"]) == 2
    assert capsys.readouterr().err == ("natproof: error: --nat-gateway '10.0.0.220=public': 'public' is not an IP "
                                       "address (PRIVATE=PUBLIC, e.g. 10.0.0.220=203.0.113.20)\n")


UNKNOWN = f": unknown field 'srcadr' (fields: {', '.join(FIELDS)})"


@pytest.mark.parametrize(("fields", "library", "command_line"), [
    ("${version} ${srcadr}", f"fields{UNKNOWN}", f"--flow-log-format{UNKNOWN}"),
    ("srcaddr dstaddr srcaddr", "fields: srcaddr named more than once", "--flow-log-format: srcaddr named more than "
                                                                         "once"),
    (" , ", "fields: no field named (e.g. '${version} ${srcaddr} ${dstaddr}')",
     "--flow-log-format: no field named (e.g. '${version} ${srcaddr} ${dstaddr}')"),
])
def test_a_library_caller_is_told_fields_the_command_line_flow_log_format(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: str, library: str, command_line: str) -> None:
    """read_flow_logs(fields=) (and parse_format) name the keyword to a Python caller, who has no
    --flow-log-format; natproof flowlog prints the same error with its option, as it always has."""
    path = write(tmp_path, "s3.log", f"{HEADER}\n{ACCEPTED}\n")
    for call in (lambda: read_flow_logs(path, fields=fields), lambda: parse_format(fields)):
        with pytest.raises(InputError) as exc:
            call()
        assert (str(exc.value), exc.value.for_command_line()) == (library, command_line)
    assert main(["flowlog", str(path), "--flow-log-format", fields]) == 2
    assert capsys.readouterr().err == f"natproof: error: {command_line}\n"


def test_a_file_passed_over_is_said_to_each_in_its_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory's file that is no flow log is passed over with why: to a library caller with the keyword
    (passed_over), on the command line with the option (its warning, and its JSON as it always was); a directory
    of nothing else is an error with both wordings."""
    import json

    folder = tmp_path / "AWSLogs"
    folder.mkdir()
    write(folder, "b.log", f"{HEADER}\n{ACCEPTED}\n")
    write(folder, "cloudwatch.log", f"2026-11-24T14:02:10.000Z {NAT_LINES[0]}\n")
    cloudwatch = str(folder / "cloudwatch.log")
    log = read_flow_logs(folder)
    ([passed], [said]) = (log.passed_over, log.passed_over_for_command_line())
    assert passed.startswith(f"{cloudwatch}: not a VPC flow log in the default format")
    assert passed.endswith(", pass fields with the flow log's format") and "--" not in passed
    assert said == passed.replace("pass fields", "pass --flow-log-format")
    assert log.summary()["passed_over"] == [passed] and log.summary(command_line=True)["passed_over"] == [said]
    assert main(["flowlog", str(folder), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert err == f"natproof: warning: {said} (passed over)\n"
    assert json.loads(out)["summary"]["passed_over"] == [said]
    (folder / "b.log").unlink()
    with pytest.raises(InputError) as exc:
        read_flow_logs(folder)
    assert str(exc.value) == f"no flow log in {folder}: {passed}"
    assert exc.value.for_command_line() == f"no flow log in {folder}: {said}"
    assert main(["flowlog", str(folder)]) == 2
    assert capsys.readouterr().err == f"natproof: error: no flow log in {folder}: {said}\n"


def test_cli_flowlog_summary_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    path = write(tmp_path, "s3.log", "\n".join([HEADER, ACCEPTED, REJECTED, NODATA, "junk line"]) + "\n")
    assert main(["flowlog", str(path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "natproof.flowlog/1"
    assert (doc["summary"]["records"], doc["summary"]["flows"], doc["summary"]["nodata"]) == (3, 2, 1)
    assert doc["summary"]["skipped"] == {"field_count": 1}
    assert doc["join"] is None and doc["nat_gateways"] == []


_TOKENS = st.sampled_from(["2", "5", "-", "eni-1", "10.0.0.1", "2001:db8::1", "OK", "NODATA", "ACCEPT", "6", "17",
                           "1700000000", "x", "version", "srcaddr", "dstaddr", "2026-11-24T14:02:10Z", "", "\t"])


@given(st.lists(st.lists(_TOKENS, max_size=16), max_size=12))
def test_record_like_lines_give_records_or_an_input_error(lines: list[list[str]]) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".log") as fh:
        fh.write("\n".join(" ".join(t) for t in lines).encode())
        fh.flush()
        try:
            frame, info = read_flow_log_file(fh.name)
        except InputError as exc:
            assert str(exc).startswith(fh.name)
        else:
            assert frame.height == info.records > 0
            assert info.records + sum(info.skipped.values()) <= info.lines


@pytest.mark.parametrize("variant", ["as is", "crlf", "trailing blank line", "no final newline"])
def test_the_one_pass_reader_and_the_line_reader_agree(tmp_path: Path, variant: str) -> None:
    from natproof.flowlogs import records

    text = "\n".join([HEADER, ACCEPTED, REJECTED, NODATA, SKIPDATA]) + "\n"
    text = {"as is": text, "crlf": text.replace("\n", "\r\n"), "trailing blank line": text + "\n",
            "no final newline": text.rstrip("\n")}[variant]
    data = text.encode()
    import unittest.mock

    one_pass = records._read_text_regular("f.log", data, "text", None)
    with unittest.mock.patch.object(records, "_read_text_regular", return_value=None):
        line_by_line = records._read_text("f.log", data, "text", None)
    if variant == "trailing blank line":
        assert one_pass is None  # not regular: the line reader counts the blank line
        assert line_by_line[1].skipped == {"blank": 1}
        return
    assert one_pass is not None
    assert one_pass[0].equals(line_by_line[0]) and one_pass[1] == line_by_line[1]
