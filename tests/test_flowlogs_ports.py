"""natproof.flowlogs.ports: ports a NAT gateway holds per destination, from its records, against AWS's 55,000."""

from __future__ import annotations

from pathlib import Path

import pytest

from natproof.cli import main
from natproof.flowlogs import CONNECTIONS_PER_DESTINATION, NatGateway, infer_gateways, port_usage, read_flow_logs
from natproof.flowlogs.ports import IDLE_TIMEOUT_S, port_usage_chart
from natproof.testing.flowlogs import CUSTOM_FORMAT, busy_destination_records, write_parquet, write_text

GW = NatGateway("10.0.1.1", "203.0.113.20")
T0 = 1_800_000_000


def busy(tmp_path: Path, connections: int, **kw: int):  # type: ignore[no-untyped-def]
    """A Parquet flow log of ``connections`` connections from GW to one destination, all open at once from T0+120 s
    to T0+240 s (opened over 120 s, each held 240 s; 10-minute aggregation as AWS's default)."""
    records = busy_destination_records(connections, gateway_private=GW.private, destination="198.51.100.10",
                                       start_s=T0, ramp_s=120, hold_s=240, interval_s=600, **kw)
    path = tmp_path / f"busy-{connections}.parquet"
    write_parquet(records, path, CUSTOM_FORMAT)
    return read_flow_logs(path)


def test_the_limit_reached_is_an_error_finding_with_its_numbers(tmp_path: Path) -> None:
    usage = port_usage(busy(tmp_path, 56_000), [GW])
    (g,) = usage.groups.to_dicts()
    assert (g["gateway_address"], g["gateway_public"], g["proto"], g["dst"], g["dport"]) == (
        "10.0.1.1", "203.0.113.20", "tcp", "198.51.100.10", 443)
    assert (g["ports"], g["connections"], g["peak"], g["limit"]) == (56_000, 56_000, 56_000, 55_000)
    assert g["peak_start_s"] == T0 + (56_000 - 1) * 120 // 56_000  # when the last connection opened
    (f,) = usage.findings()
    assert (f.kind, f.severity) == ("nat_gateway_port_limit", "error")
    assert "56,000 ports in use at once" in f.summary and "ErrorPortAllocation" in f.summary
    assert f.data["peak"] == 56_000 and f.data["limit"] == CONNECTIONS_PER_DESTINATION
    # The series the chart draws rises to the peak and falls back to zero.
    s = usage.series
    assert s["concurrent"].max() == 56_000 and s["concurrent"].to_list()[-1] == 0
    fig = port_usage_chart(usage)
    assert fig is not None and "55,000" in fig.get_suptitle()


def test_near_the_limit_is_a_warning_and_far_below_is_nothing(tmp_path: Path) -> None:
    (near,) = port_usage(busy(tmp_path, 50_000), [GW]).findings()
    assert near.severity == "warning" and near.data["peak"] == 50_000
    usage = port_usage(busy(tmp_path, 300), [GW])
    assert usage.findings() == [] and usage.groups["peak"].to_list() == [300]


def test_one_port_used_twice_across_the_idle_timeout_is_two_connections(tmp_path: Path) -> None:
    gap = IDLE_TIMEOUT_S + 50
    lines = ["srcaddr dstaddr srcport dstport protocol packets bytes start end",
             f"10.0.1.1 198.51.100.10 1024 443 6 3 200 {T0} {T0 + 10}",
             f"10.0.1.1 198.51.100.10 1024 443 6 3 200 {T0 + 70} {T0 + 80}",           # same connection, still live
             f"10.0.1.1 198.51.100.10 1024 443 6 3 200 {T0 + 80 + gap} {T0 + 90 + gap}",  # idle past the timeout: new
             f"10.0.1.1 198.51.100.10 1025 443 6 3 200 {T0 + 5} {T0 + 75}",
             # a reply towards a node (a VPC address) is the private side, not a port of the gateway's
             f"10.0.1.1 10.0.1.10 443 40000 6 3 200 {T0} {T0 + 10}"]
    path = tmp_path / "ports.log"
    path.write_text("\n".join(lines) + "\n")
    (g,) = port_usage(read_flow_logs(path), [GW]).groups.to_dicts()
    assert (g["ports"], g["connections"], g["peak"], g["peak_start_s"]) == (2, 3, 2, T0 + 5)


def test_records_without_a_time_are_one_use_of_their_port_apart_from_its_dated_ones(tmp_path: Path) -> None:
    """A port's records with '-' for start and end cannot be told into uses: together they are one, counted among
    the connections, never among the ports live at once (nor merged into a dated use)."""
    lines = ["srcaddr dstaddr srcport dstport protocol packets bytes start end",
             f"10.0.1.1 198.51.100.10 1024 443 6 3 200 {T0} {T0 + 10}",
             "10.0.1.1 198.51.100.10 1024 443 6 3 200 - -",
             "10.0.1.1 198.51.100.10 1024 443 6 3 200 - -",
             "10.0.1.1 198.51.100.10 1025 443 6 3 200 - -"]
    path = tmp_path / "ports.log"
    path.write_text("\n".join(lines) + "\n")
    usage = port_usage(read_flow_logs(path), [GW])
    (g,) = usage.groups.to_dicts()
    assert (g["ports"], g["connections"], g["peak"], g["peak_start_s"]) == (2, 3, 1, T0)
    assert usage.notes == ("gateway port uses whose records have no start or end time: 2 of 3; ports live at once "
                           "are counted from the others",)


def test_gateways_are_inferred_from_pkt_dstaddr(tmp_path: Path) -> None:
    lines = ["srcaddr dstaddr srcport dstport protocol packets bytes start end pkt-srcaddr pkt-dstaddr",
             f"10.0.1.10 10.0.1.1 40000 443 6 3 200 {T0} {T0} 10.0.1.10 198.51.100.10",
             f"10.0.1.1 198.51.100.10 40000 443 6 3 200 {T0} {T0} 10.0.1.1 198.51.100.10",
             f"10.0.1.1 10.0.1.10 443 40000 6 3 200 {T0} {T0} 198.51.100.10 10.0.1.10"]
    path = tmp_path / "nat.log"
    path.write_text("\n".join(lines) + "\n")
    log = read_flow_logs(path)
    assert infer_gateways(log) == [NatGateway("10.0.1.1", None)]
    usage = port_usage(log)
    assert usage.groups.select("gateway_address", "dst", "ports").rows() == [("10.0.1.1", "198.51.100.10", 1)]
    assert usage.notes == ("gateway addresses inferred from pkt-dstaddr: 10.0.1.1",)


def test_cli_flowlog_reports_the_finding_and_writes_the_chart(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    records = busy_destination_records(56_000, gateway_private=GW.private, destination="198.51.100.10",
                                       start_s=T0, ramp_s=120, hold_s=240, interval_s=600)
    path = tmp_path / "busy.log.gz"
    write_text(records, path, CUSTOM_FORMAT, compress=True)
    charts = tmp_path / "charts"
    assert main(["flowlog", str(path), "--nat-gateway", str(GW), "--charts", str(charts), "--format", "table"]) == 0
    out, err = capsys.readouterr()
    assert "[ERROR] NAT gateway port limit reached for one destination" in out
    assert "56,000 ports in use at once" in out
    assert sorted(p.name for p in charts.iterdir()) == ["nat_gateway_ports.png", "nat_gateway_ports.svg"]
    assert (charts / "nat_gateway_ports.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
