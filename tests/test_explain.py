"""explain (natproof/explain.py): the header fields the NAT changed, against what the kernel is known to do."""

from __future__ import annotations

import json
import shlex
from functools import cache
from pathlib import Path

import pytest
from pcapbytes import ether, ipv4, tcp
from test_readme import example

import natproof
from natproof.cli import main
from natproof.decode import Skip
from natproof.errors import InputError
from natproof.explain import explain, header_fields, to_document

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
SCENARIOS = sorted(p.name for p in CAPTURES.iterdir() if (p / "inside.pcap").is_file())
SWAP = {"src": "dst", "dst": "src", "sport": "dport", "dport": "sport"}


def pair(name: str) -> tuple[str, str]:
    return str(CAPTURES / name / "inside.pcap"), str(CAPTURES / name / "outside.pcap")


@cache
def correlated(name: str) -> natproof.Result:
    return natproof.correlate(*pair(name))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fields(p: object) -> dict[str, dict]:
    return {r["field"]: r for r in p.rows}  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", SCENARIOS)
def test_lab_scenarios_change_what_the_kernel_changes(name: str) -> None:
    """FIELD-NOTES: TTL -1 per routed hop both ways (a hairpin is bridged: kept); the IP checksum changes with the
    addresses and TTL; IP id, TCP numbers and lengths are never changed (an ALG's payload rewrite excepted); the
    fields of the tuple that changed are the connection's rewrites, mirrored for replies."""
    result = correlated(name)
    explained = explain(result, list(range(result.connections.height)))
    pairs = 0
    for ex in explained:
        row = ex.row
        for p in ex.pairs:
            pairs += 1
            f = fields(p)
            where = f"{name} #{row['conn']} {p.kind}"
            hairpin = p.before.observation_point == p.after.observation_point
            assert f["ttl"]["after"] == f["ttl"]["before"] - (0 if hairpin else 1), where
            header = any(f[k]["changed"] for k in ("src", "dst", "ttl", "ip_len", "ip_id"))
            assert f["ip_checksum"]["changed"] == header, where
            assert not f["ip_id"]["changed"], where
            if name != "ftp-alg":
                assert not f["ip_len"]["changed"] and all(f[k]["shift"] == 0 for k in ("tcp_seq", "tcp_ack")
                                                          if k in f), where
            moved = {k for k in ("src", "sport", "dst", "dport") if k in f and f[k]["changed"]}
            if "icmp_id" in f and f["icmp_id"]["changed"]:  # the echo identifier plays the source port
                moved.add("sport" if p.kind == "egress" else "dport")
            rewrites = set(row["rewrites"] or [])
            assert moved == (rewrites if p.kind == "egress" else {SWAP[k] for k in rewrites}), where
            # The rewritten fields hold the connection's own tuples: as sent before, as translated after.
            first, then = ("orig", "trans") if p.kind == "egress" else ("trans", "orig")
            for k in moved & {"src", "dst"}:
                side = k if p.kind == "egress" else SWAP[k]
                assert (f[k]["before"], f[k]["after"]) == (row[f"{first}_{side}"], row[f"{then}_{side}"]), where
        assert len(ex.pairs) + len(ex.notes) == 2
    crossed = int(result.connections["fate_crossed"].sum() + result.connections["fate_leaked"].sum())
    assert (pairs > 0) == (crossed > 0)  # forwarding-off: nothing crossed, nothing to compare


def test_port_kept_unless_it_clashed() -> None:
    # Two pods leave from port 40000 to one server at once: MASQUERADE keeps it for the first and must move the
    # second (captures/port-collision); the 10.244.0.10 one keeps 40000.
    a, b = explain(correlated("port-collision"), [0, 1])
    fa, fb = fields(a.pairs[0]), fields(b.pairs[0])
    assert (fa["sport"]["before"], fa["sport"]["after"], fa["sport"]["changed"]) == (40000, 40000, False)
    assert (fb["sport"]["before"], fb["sport"]["after"], fb["sport"]["changed"]) == (40000, 53585, True)
    assert fb["src"]["after"] == fa["src"]["after"] == "203.0.113.2"
    reply = fields(b.pairs[1])
    assert (reply["dport"]["before"], reply["dport"]["after"]) == (53585, 40000)
    assert b.conntrack == ("tcp      6 - src=10.244.0.11 dst=198.51.100.10 sport=40000 dport=80 src=198.51.100.10 "
                           "dst=203.0.113.2 sport=80 dport=53585 verdict=translated")
    # --random-fully rewrites every port.
    result = correlated("random-fully")
    assert all(fields(ex.pairs[0])["sport"]["changed"] for ex in explain(result, list(range(5))))


def test_alg_shift_reads_as_seq_shift() -> None:
    # The FTP helper rewrote PORT 10,244,0,5,... to PORT 203,0,113,2,... (one byte longer): frame 21 grows by one,
    # and every later reply's ack is one more outside than inside, the connection's reply_ack shift.
    result = correlated("ftp-alg")
    (port,) = explain(result, [0], frame=21)
    f = fields(port.pairs[0])
    assert (f["ip_len"]["before"], f["ip_len"]["after"]) == (77, 78)
    (ack,) = explain(result, [0], frame=22)
    f = fields(ack.pairs[0])
    assert (ack.pairs[0].before.observation_point, ack.pairs[0].after.observation_point) == ("outside", "inside")
    assert f["tcp_ack"]["before"] - f["tcp_ack"]["after"] == 1
    assert f["tcp_ack"]["shift"] == ack.to_dict()["seq_shift"]["reply_ack"] == 1
    (seq,) = explain(result, [0], frame=23)
    assert fields(seq.pairs[0])["tcp_seq"]["shift"] == seq.to_dict()["seq_shift"]["initiator_seq"] == 1


def test_hairpin_both_copies_on_the_pod_port() -> None:
    (ex,) = explain(correlated("hairpin"), [0])
    egress, reply = ex.pairs
    assert (egress.before.frame, egress.after.frame, reply.before.frame, reply.after.frame) == (11, 12, 13, 14)
    assert {egress.before.observation_point, egress.after.observation_point} == {"inside"}
    assert sorted(egress.to_dict()["changed"]) == sorted(["dst_mac", "src", "dst", "ip_checksum", "sport", "dport",
                                                          "l4_checksum"])


def test_overlay_outer_packet_is_a_field() -> None:
    (ex,) = explain(correlated("overlay"), [0])
    f = fields(ex.pairs[0])
    assert (f["underlay"]["before"], f["underlay"]["after"]) == (None, "vxlan 203.0.113.2 203.0.113.3 1")
    assert not f["src"]["changed"] and not f["dst"]["changed"]  # pod to pod: the inner packet crossed unchanged


def test_nothing_crossed_says_why() -> None:
    (ex,) = explain(correlated("forwarding-off"), [0])
    assert ex.pairs == () and len(ex.notes) == 2
    assert ex.notes[0].startswith("no pair of the initiator's packets: none was seen on both sides of the NAT")
    assert "[UNREPLIED] src=- dst=- sport=- dport=- verdict=not_forwarded" in ex.conntrack


def test_header_fields_of_a_frame() -> None:
    frame = ether(ipv4("10.244.0.10", "198.51.100.10", 6, tcp(40000, 80, 7, 9, 0x10), ttl=61, ip_id=5))
    got = header_fields(1, frame)
    assert got == {"dst_mac": "02:00:00:00:00:01", "src_mac": "02:00:00:00:00:02", "underlay": None,
                   "src": "10.244.0.10", "dst": "198.51.100.10", "ttl": 61, "ip_id": 5, "ip_len": 40,
                   "ip_checksum": "0x0000", "sport": 40000, "dport": 80, "l4_checksum": "0x0000", "tcp_seq": 7,
                   "tcp_ack": 9}
    assert "src_mac" not in header_fields(101, frame[14:])
    with pytest.raises(Skip):
        header_fields(1, ether(b"\0" * 28, ethertype=0x0806))


def test_json_document_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", *pair("port-collision"), "--conn", "1", "--format", "json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["schema"] == "natproof.explain/1" and doc["clock_offset_s"] == 0.0
    (c,) = doc["connections"]
    assert set(c) == {"conn", "proto", "verdict", "initiator", "original", "translated", "rewrites", "seq_shift",
                      "conntrack", "pairs", "notes"}
    egress = c["pairs"][0]
    assert set(egress) == {"kind", "before", "after", "nat_latency_us", "fields", "changed", "kept"}
    assert egress["before"] == {"observation_point": "inside", "frame": 14, "ts": 1795500362.957089568,
                                "link_type": "EN10MB"}
    assert egress["changed"] == ["src_mac", "dst_mac", "src", "ttl", "ip_checksum", "sport", "l4_checksum"]
    assert egress["kept"] == ["dst", "ip_id", "ip_len", "dport", "tcp_seq", "tcp_ack"]
    assert doc == to_document(correlated("port-collision"), explain(correlated("port-collision"), [1]))
    code, out, _ = run(capsys, "explain", *pair("port-collision"), "--conn", "1", "--format", "table")
    assert code == 0
    assert "egress (the initiator's first packet to cross): inside frame 14 -> outside frame 8, 27.061 us later" in out


def test_readme_example_is_what_it_prints(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    command, shown = example("natproof explain ")
    argv = shlex.split(command)
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, *argv[1:])
    assert code == 0 and err == ""
    assert [line.rstrip() for line in out.splitlines()] == shown


@pytest.mark.parametrize(("args", "message"), [
    (("--conn", "2"), "--conn 2: no such connection (the captures' connections are #0 to #1)"),
    (("--conn", "0", "--frame", "14"), "--frame 14: inside frame 14 is not a packet of connection #0 (its frames: "
                                       "8, 9, 10, 25, 26, 27, 28, 29, 30, 31)"),
    (("--conn", "0", "--frame", "99"), "--frame 99: no packet of a connection is inside frame 99 (frames of #0: 8, "
                                       "9, 10, 25, 26, 27, 28, 29, 30, 31)"),
    (("--conn", "0", "--conn", "1", "--frame", "8"),
     "--frame F explains one packet of one connection: give one --conn N with it"),
    ((), "Missing option '--conn'. (see 'natproof explain --help')"),
])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                          message: str) -> None:
    code, out, err = run(capsys, "explain", *pair("port-collision"), *args)
    assert (code, out, err) == (2, "", f"natproof: error: {message}\n")


def test_a_frame_that_never_crossed() -> None:
    with pytest.raises(InputError, match=r"^frame=5: inside frame 5 of #0 has no counterpart outside \(fate "
                                         r"inside_only\); frames that crossed: none$") as exc:
        explain(correlated("forwarding-off"), [0], frame=5)
    assert exc.value.for_command_line().startswith("--frame 5: inside frame 5 of #0 has no counterpart outside")


@pytest.mark.parametrize(("conns", "frame", "library", "command_line"), [
    ([0, 2], None, "conns[1]=2: no such connection", "--conn 2: no such connection"),
    ([0], 14, "frame=14: inside frame 14 is not a packet of connection #0",
     "--frame 14: inside frame 14 is not a packet of connection #0"),
    ([0], 99, "frame=99: no packet of a connection is inside frame 99", "--frame 99: no packet of a connection is"
                                                                        " inside frame 99"),
    ([0, 1], 8, "frame=F explains one packet of one connection: give conns=[N] with it",
     "--frame F explains one packet of one connection: give one --conn N with it"),
])
def test_a_library_caller_is_told_explains_keywords_the_command_line_its_options(
        capsys: pytest.CaptureFixture[str], conns: list[int], frame: int | None, library: str,
        command_line: str) -> None:
    """explain(result, conns, frame=) names its own keywords to a Python caller, who has no --conn or --frame; the
    command prints the same error with its options, as it always has."""
    with pytest.raises(InputError) as exc:
        explain(correlated("port-collision"), conns, frame=frame)
    assert str(exc.value).startswith(library) and "--" not in str(exc.value)
    assert exc.value.for_command_line().startswith(command_line)
    options = [a for n in conns for a in ("--conn", str(n))] + ([] if frame is None else ["--frame", str(frame)])
    code, out, err = run(capsys, "explain", *pair("port-collision"), *options)
    assert (code, out, err) == (2, "", f"natproof: error: {exc.value.for_command_line()}\n")
