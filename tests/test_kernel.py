"""natproof.kernel: connections held against the kernel's conntrack record (real-kernel captures in captures/)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

import natproof
from natproof.conntrack import read_conntrack
from natproof.diagnose import diagnose
from natproof.kernel import kernel_flows
from natproof.result import CONNECTION_SCHEMA

CAPTURES = Path(__file__).resolve().parent.parent / "captures"


def _correlate(name: str, record: Path | str | None = None) -> natproof.Result:
    d = CAPTURES / name
    return natproof.correlate(d / "inside.pcap", d / "outside.pcap",
                              conntrack=d / "conntrack.log" if record is None else record)


def _lines(name: str) -> list[str]:
    return (CAPTURES / name / "conntrack.log").read_text().splitlines()


def test_without_a_record_kernel_is_null() -> None:
    d = CAPTURES / "basic"
    result = natproof.correlate(d / "inside.pcap", d / "outside.pcap")
    assert result.conntrack is None
    assert result.connections["kernel"].is_null().all()
    assert result.connections["evidence_level"].to_list() == ["packets"] * 3
    doc = result.to_dict()
    assert doc["conntrack"] is None
    assert {c["kernel"] for c in doc["connections"]} == {None}


@pytest.mark.parametrize("name", ["basic", "icmp", "nodeport", "hairpin", "clusterip", "port-collision", "udp",
                                  "random-fully", "no-masquerade", "asymmetric-reply", "ftp-alg"])
def test_every_entry_the_kernel_kept_confirms_its_connection(name: str) -> None:
    result = _correlate(name)
    conns = result.connections
    assert conns["kernel"].to_list() == ["confirmed"] * conns.height
    # Each one rests on the NEW event of its own original tuple: the line names it.
    lines = _lines(name)
    for r in conns.iter_rows(named=True):
        line = lines[r["kernel_line"] - 1]
        assert "[NEW]" in line
        assert f"src={r['orig_src']} dst={r['orig_dst']}" in line


def test_dropped_before_confirmation_is_absent_with_its_reason() -> None:
    result = _correlate("forward-drop")
    conns = result.connections.sort("conn")
    assert conns.select("verdict", "kernel", "kernel_reason").rows() == [
        ("not_forwarded", "absent", "dropped_before_confirmation"),
        ("translated", "confirmed", None), ("translated", "confirmed", None)]
    assert [f.kind for f in diagnose(result) if f.kind.startswith("kernel")] == []


def test_json_carries_the_entry() -> None:
    result = _correlate("icmp")
    doc = result.to_dict()
    assert doc["conntrack"]["formats"] == {"conntrack -E -o extended,timestamp": 4, "conntrack -L -o extended": 2}
    second = doc["connections"][1]
    assert second["kernel"] == "confirmed"
    assert second["kernel_reason"] is None
    assert second["evidence_level"] == "packets"
    # ICMP echo: the identifier was rewritten 16962 -> 53572; the kernel's reply tuple holds it.
    assert second["kernel_entry"] == {"line": 4, "state": None, "assured": False, "replied": True,
                                      "reply": {"src": "198.51.100.10", "sport": 53572, "dst": "203.0.113.2",
                                                "dport": 0}}
    assert second["translated"]["sport"] == 53572
    assert b'"kernel":"confirmed"' in result.to_json()


def _tamper(name: str, tmp_path: Path, src: str, sport: int, new_port: int) -> Path:
    """conntrack.log with the translated port of the entry whose original source is ``src``:``sport`` changed on
    every line that records it (its NEW, its UPDATEs, its DESTROY and its listing line)."""
    out = []
    for line in _lines(name):
        if f" src={src} " in line and f"sport={sport} " in line:
            head, sep, reply = line.rpartition(" src=")
            line = head + sep + re.sub(r"dport=\d+", f"dport={new_port}", reply, count=1)
        out.append(line)
    path = tmp_path / "conntrack.log"
    path.write_text("\n".join(out) + "\n")
    return path


def test_tampered_record_contradicts_with_a_finding(tmp_path: Path) -> None:
    clean = _correlate("port-collision")
    victim = clean.connections.filter(pl.col("trans_sport") != pl.col("orig_sport")).row(0, named=True)
    record = _tamper("port-collision", tmp_path, victim["orig_src"], victim["orig_sport"], 4242)
    result = _correlate("port-collision", record)
    conns = result.connections
    assert conns.filter(pl.col("conn") == victim["conn"])["kernel"].item() == "contradicts"
    assert conns.filter(pl.col("conn") != victim["conn"])["kernel"].to_list() == ["confirmed"]
    row = conns.filter(pl.col("conn") == victim["conn"]).row(0, named=True)
    assert row["kernel_reply_dport"] == 4242
    assert row["trans_sport"] == victim["trans_sport"]  # the captured mapping stands; the kernel's is beside it
    findings = {f.kind: f for f in diagnose(result)}
    assert "healthy" not in findings
    finding = findings["kernel_contradicts"]
    assert finding.severity == "error"
    assert finding.connections == (victim["conn"],)
    assert finding.data["lines"] == [row["kernel_line"]]
    (evidence,) = finding.evidence
    assert f"{record} line {row['kernel_line']}" in evidence
    assert "dport=4242" in evidence
    assert f"203.0.113.2:{victim['trans_sport']} -> 198.51.100.10:80" in evidence


def test_listing_only_says_the_snapshot_came_after(tmp_path: Path) -> None:
    # Keep only the closing listing, minus one connection's line: that one had closed before the snapshot.
    lines = _lines("basic")
    listing = [line for line in lines if line.startswith("ipv4")]
    dropped = listing.pop(0)
    path = tmp_path / "ct-list.txt"
    path.write_text("\n".join(listing) + "\n")
    result = _correlate("basic", path)
    sport = int(re.search(r"sport=(\d+)", dropped).group(1))  # type: ignore[union-attr]
    conns = result.connections
    assert conns.filter(pl.col("orig_sport") == sport).select("kernel", "kernel_reason").row(0) == (
        "absent", "snapshot_after_expiry")
    assert set(conns.filter(pl.col("orig_sport") != sport)["kernel"]) == {"confirmed"}
    assert result.conntrack is not None and result.conntrack.formats == {"list_extended": 3}


def test_event_log_started_late(tmp_path: Path) -> None:
    # The first connection's events cut away: the log now starts after that connection began.
    lines = [line for line in _lines("basic") if line.startswith("[")]
    first_sport = re.search(r"sport=(\d+)", lines[0]).group(1)  # type: ignore[union-attr]
    late = [line for line in lines if f"sport={first_sport} " not in line]
    path = tmp_path / "late.log"
    path.write_text("\n".join(late) + "\n")
    result = _correlate("basic", path)
    assert result.connections.select("kernel", "kernel_reason").rows() == [
        ("absent", "record_starts_after"), ("confirmed", None), ("confirmed", None)]
    gaps = [f for f in diagnose(result) if f.kind == "kernel_record_gaps"]
    assert gaps and gaps[0].severity == "info" and gaps[0].connections == (0,)


def test_missing_leg_is_filled_from_the_kernel() -> None:
    # clusterip-local: the DNAT happens as the frame is bridged; the endpoint's leg is in neither capture. The
    # kernel's entry names the endpoint it chose.
    result = _correlate("clusterip-local")
    services = result.connections.filter(pl.col("service_type") == "ClusterIP")
    assert services.height > 0
    assert services["evidence_level"].to_list() == ["kernel_record"] * services.height
    assert services["kernel"].to_list() == ["confirmed"] * services.height
    for r in services.iter_rows(named=True):
        assert r["backend_ip"] == r["trans_dst"] == r["kernel_reply_src"]
        assert r["backend_port"] == r["trans_dport"] == r["kernel_reply_sport"]
        assert r["backend_ip"].startswith("10.244.0.")
        assert "dst" in r["rewrites"]
    egress = result.connections.filter(pl.col("service_type").is_null())
    assert egress["evidence_level"].to_list() == ["packets"]


def test_flows_split_on_destroy_and_reuse_but_not_on_a_late_new(tmp_path: Path) -> None:
    new = ("[{ts}]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=10.244.0.10 dst=198.51.100.10 sport=40000 "
           "dport=80 [UNREPLIED] src=198.51.100.10 dst=203.0.113.2 sport=80 dport={port}")
    upd = ("[{ts}]\t [UPDATE] ipv4     2 tcp      6 432000 ESTABLISHED src=10.244.0.10 dst=198.51.100.10 sport=40000 "
           "dport=80 src=198.51.100.10 dst=203.0.113.2 sport=80 dport={port} [ASSURED]")
    dst = ("[{ts}]\t[DESTROY] ipv4     2 tcp      6 TIME_WAIT src=10.244.0.10 dst=198.51.100.10 sport=40000 "
           "dport=80 src=198.51.100.10 dst=203.0.113.2 sport=80 dport={port} [ASSURED]")
    lines = [
        upd.format(ts="100.000100", port=40000),  # stamped before its own NEW by another listener
        new.format(ts="100.000200", port=40000),
        dst.format(ts="220.0", port=40000),
        new.format(ts="300.0", port=40000),  # the tuple reused after the DESTROY: another entry
        new.format(ts="400.0", port=40001),  # and again without a DESTROY seen, under another port
    ]
    path = tmp_path / "ev.log"
    path.write_text("\n".join(lines) + "\n")
    flows = kernel_flows(read_conntrack(path).entries)
    assert flows.select("line", "has_new", "start_ts_ns", "end_ts_ns", "state", "reply_dport").rows() == [
        (2, True, 100_000100000, 220_000000000, "TIME_WAIT", 40000),
        (4, True, 300_000000000, None, "SYN_SENT", 40000),
        (5, True, 400_000000000, None, "SYN_SENT", 40001),
    ]


def test_schema_columns_exist() -> None:
    result = _correlate("basic")
    assert result.connections.schema == pl.Schema(CONNECTION_SCHEMA)
