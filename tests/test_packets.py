"""Tests of natproof/packets.py: the packet frame's schema and the accounting of skipped frames."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from pcapbytes import ether, ipv4, pcap, tcp, udp

from natproof.packets import PACKET_SCHEMA, load_packets


def test_frame_schema_and_skip_counts(tmp_path: Path) -> None:
    good = ether(ipv4("10.244.0.10", "198.51.100.10", 6, tcp(40000, 80, 7, 0, 0x02)))
    arp = ether(b"\0" * 28, ethertype=0x0806)
    junk = ether(b"\x45\x00")  # an IPv4 header cut to two bytes
    dns = ether(ipv4("10.244.0.10", "192.0.2.53", 17, udp(5353, 53, b"abc")))
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap([(1, good), (2, arp), (3, junk), (4, dns)]))
    info, df = load_packets(path)
    assert df.schema == pl.Schema(PACKET_SCHEMA)
    assert df["frame_no"].to_list() == [1, 4]  # frame numbers count every record, as Wireshark does
    assert df["ts_ns"].to_list() == [1, 4]
    assert dict(info.skipped) == {"non_ip": 1, "malformed": 1}
    assert info.records == 4


@pytest.mark.parametrize("fast", [False, True], ids=["dpkt", "fast"])
def test_progress_reports_bytes(tmp_path: Path, fast: bool) -> None:
    frame = ether(ipv4("10.244.0.10", "198.51.100.10", 17, udp(1, 2, b"x" * 100)))
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap([(i, frame) for i in range(5000)]))
    seen: list[int] = []
    load_packets(path, seen.append, fast=fast)
    assert sum(seen) == 5000 * (16 + len(frame)) == path.stat().st_size - 24
    # The reference reports every 4096 records, then the rest; the columnar decoder once per chunk (64 MiB).
    assert len(seen) == (1 if fast else 2)


@pytest.mark.parametrize("fast", [False, True], ids=["dpkt", "fast"])
def test_frames_cut_by_a_snaplen_are_said_in_the_warnings(tmp_path: Path, fast: bool) -> None:
    # A trial (s08b): an inside capture taken with snaplen 64 read without a word of it. Two of three frames here
    # are cut into their UDP payload; they still decode, with the length their IP header gives.
    dns = ether(ipv4("10.244.0.10", "192.0.2.53", 17, udp(53000, 53, b"q" * 40)))
    syn = ether(ipv4("10.244.0.10", "198.51.100.10", 6, tcp(40000, 80, 7, 0, 0x02)))
    path = tmp_path / "cut.pcap"
    path.write_bytes(pcap([(1, dns[:64], len(dns)), (2, syn), (3, dns[:50], len(dns))]))
    info, df = load_packets(path, fast=fast)
    assert info.truncated_records == 2
    assert [w for w in info.warnings if "shorter than they were on the wire" in w] == [
        "2 of 3 frames were captured shorter than they were on the wire (a snaplen: tcpdump -s): their payload past "
        "the cut is not compared, and a frame cut inside its TCP/UDP/ICMP header is skipped (truncated_l4)"]
    assert df.filter(pl.col("proto") == 17)["payload_len"].to_list() == [40, 40]
    whole = tmp_path / "whole.pcap"
    whole.write_bytes(pcap([(1, dns), (2, syn)]))
    assert load_packets(whole, fast=fast)[0].warnings == []
