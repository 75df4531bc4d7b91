"""A Result whose packet tables are LazyFrames scanning Parquet (what a correlation larger than RAM hands back, its
packets kept on disk): every reader of the packets gives, byte for byte, what it gives with the tables in memory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pcapbytes import pcap, tcp_pair
from test_names import T0, ptcpdump_pcapng

import natproof
from natproof.check import capture_pair
from natproof.errors import InputError
from natproof.explain import explain, to_document
from natproof.names import Names, pods_from_comments
from natproof.proof import proof_packets, select_connections, write_proof
from natproof.report.charts import chart_data
from natproof.report.html import render_html
from natproof.result import Result
from natproof.verify import Expectations, verify

CAPTURES = Path(__file__).resolve().parent.parent / "captures"

CASES = {
    "port-collision": "healthy",
    "idle-expiry": "private_address_leak",
    "invalid-oow": "invalid_reply_reset",
    "udp": "refused",
    "reject-no-endpoints": "rejected_by_node",
    "reply-drop": "replies_dropped",
    "forward-drop": "forwarding_blocked",
    "hairpin": "healthy",
}
"""Scenario folders and a finding of theirs that cites packets (leaked, node-made, ICMP errors, dropped replies,
hairpinned copies ...): the readers below go through each kind of packet look-up."""


def on_disk(result: Result, folder: Path) -> Result:
    """``result`` with both packet tables written to Parquet and scanned back: LazyFrames, nothing in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    scans = {}
    for side in ("inside", "outside"):
        path = folder / f"{side}.parquet"
        result.packets(side).collect().write_parquet(path)
        scans[f"{side}_packets"] = pl.scan_parquet(path)
    lazy = dataclasses.replace(result, **scans)
    assert isinstance(lazy.inside_packets, pl.LazyFrame) and isinstance(lazy.outside_packets, pl.LazyFrame)
    return lazy


def readings(result: Result, out: Path) -> dict[str, Any]:
    """What every reader of the packet tables makes of ``result``."""
    out.mkdir(parents=True, exist_ok=True)
    findings = natproof.diagnose(result)
    conns = list(range(min(4, result.connections.height)))
    explained = explain(result, conns)
    got: dict[str, Any] = {
        "json": result.to_json(),
        "diagnosis": json.dumps([f.to_dict() for f in findings], sort_keys=True),
        "html": render_html(result, findings, explanations=explained),
        "charts": {k: v.write_csv() for k, v in chart_data(result).items()},
        "explain": json.dumps(to_document(result, explained), sort_keys=True, default=str),
        "verify": [dataclasses.asdict(c) for c in verify(result, Expectations(no_leak=True, min_connections=1))],
        "names": Names().name_result(result).to_json(),
        "proof": proof_packets(result, range(result.connections.height)).write_csv(),
    }
    # explain --frame: the first egress frame, and the same frame asked of another connection (refused, naming
    # the frames it has; a frame with no counterpart is refused naming those that crossed).
    rows = result.connections.filter(pl.col("evidence_egress_inside_frame").is_not_null())
    for i, row in enumerate(rows.head(2).iter_rows(named=True)):
        try:
            doc = to_document(result, explain(result, [row["conn"]], frame=rows["evidence_egress_inside_frame"][0]))
            got[f"explain_frame_{i}"] = json.dumps(doc, sort_keys=True, default=str)
        except InputError as err:
            got[f"explain_frame_{i}"] = str(err)
    selection = select_connections(result, everything=True)
    if selection.conns:
        summary = write_proof(result, out / "proof.pcapng", selection)
        got["pcapng"] = ((out / "proof.pcapng").read_bytes(), summary.packets, summary.interfaces)
    return got


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_reader_of_the_packets_gives_the_same_from_parquet(case: str, tmp_path: Path) -> None:
    result = natproof.correlate(*capture_pair(CAPTURES / case))
    assert isinstance(result.inside_packets, pl.DataFrame)  # correlate itself still builds DataFrames
    assert CASES[case] in [f.kind for f in natproof.diagnose(result)]
    lazy = on_disk(result, tmp_path / "parquet")
    assert readings(lazy, tmp_path / "lazy") == readings(result, tmp_path / "eager")


@pytest.mark.parametrize("side", ["inside", "outside"])
def test_one_capture_and_the_kernel_record_from_parquet(tmp_path: Path, side: str) -> None:
    # Without the other capture a connection's packets there are found by its leg, not its anchor.
    folder = CAPTURES / "basic"
    result = natproof.correlate(folder / f"{side}.pcap", conntrack=folder / "conntrack.log", side=side)
    lazy = on_disk(result, tmp_path / "parquet")
    assert readings(lazy, tmp_path / "lazy") == readings(result, tmp_path / "eager")


def test_pods_named_in_ptcpdump_comments_from_parquet(tmp_path: Path) -> None:
    a_in, a_out = tcp_pair(T0, sport=40000, nat_sport=40000)
    ctx = ["ContainerName: curl", "PodName: client-6d9f7b8c5-p9x2w\nPodNamespace: shop"]
    inside, outside = tmp_path / "inside.pcapng", tmp_path / "outside.pcap"
    inside.write_bytes(ptcpdump_pcapng(a_in, {i + 1: ctx for i in range(len(a_in))}))
    outside.write_bytes(pcap(a_out, linktype=101))
    result = natproof.correlate(inside, outside)
    lazy = on_disk(result, tmp_path / "parquet")
    pods, info = pods_from_comments(lazy, "inside")
    assert (pods, info) == pods_from_comments(result, "inside")
    assert [p.full_name for p in pods] == ["shop/client-6d9f7b8c5-p9x2w"] and info["pods"] == 1
    assert Names().name_result(lazy).to_json() == Names().name_result(result).to_json()


def test_packets_is_a_lazyframe_of_either_table(tmp_path: Path) -> None:
    result = natproof.correlate(*capture_pair(CAPTURES / "port-collision"))
    lazy = on_disk(result, tmp_path)
    for r in (result, lazy):
        for side in ("inside", "outside"):
            assert isinstance(r.packets(side), pl.LazyFrame)
            assert r.packets(side).collect().equals(result.packets(side).collect())
    with pytest.raises(ValueError, match="side"):
        result.packets("both")
