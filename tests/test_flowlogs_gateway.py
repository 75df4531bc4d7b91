"""natproof.flowlogs.gateway on hand-written NAT gateway records: unique, ambiguous, missing candidates, both ways."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from natproof.cli import main
from natproof.errors import InputError
from natproof.flowlogs import (
    EVIDENCE_NONE,
    EVIDENCE_UNIQUE,
    FlowLog,
    NatGateway,
    evidence_ambiguous,
    join_nat_gateway,
    node_tuples,
    node_tuples_from_conntrack,
    parse_nat_gateway,
    read_flow_logs,
    trace_public,
)

GW = NatGateway("10.0.0.220", "198.51.100.20")
ENI = "eni-0nat"
FORMAT = ("interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end pkt-srcaddr pkt-dstaddr "
          "log-status")
T0 = 1_700_000_000
NS = 10**9


def nat_flow(node: str, nport: int, gport: int, dst: str, dport: int, *, proto: int = 6,
             out: tuple[int, int] = (5, 400), back: tuple[int, int] | None = (4, 3000), t: int = T0, iface: str = ENI,
             gw: str = GW.private) -> list[str]:
    """The four records AWS documents for one connection through a NAT gateway (its interface, both sides)."""
    lines = [f"{iface} {node} {gw} {nport} {dport} {proto} {out[0]} {out[1]} {t} {t + 2} {node} {dst} OK",
             f"{iface} {gw} {dst} {gport} {dport} {proto} {out[0]} {out[1]} {t} {t + 2} {gw} {dst} OK"]
    if back is not None:
        lines += [f"{iface} {dst} {gw} {dport} {gport} {proto} {back[0]} {back[1]} {t} {t + 2} {dst} {gw} OK",
                  f"{iface} {gw} {node} {dport} {nport} {proto} {back[0]} {back[1]} {t} {t + 2} {dst} {node} OK"]
    return lines


def flowlog(tmp_path: Path, lines: list[str], fields: str = FORMAT, name: str = "nat.log"):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text("\n".join([fields, *lines]) + "\n")
    return read_flow_logs(path)


def join(log, *tuples, **kw):  # type: ignore[no-untyped-def]
    return join_nat_gateway(node_tuples(tuples), log, [GW], **kw).to_dicts()


def test_two_nodes_with_one_port_are_told_apart_by_their_counts(tmp_path: Path) -> None:
    log = flowlog(tmp_path, [*nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443, back=(4, 3000)),
                             *nat_flow("10.0.1.6", 40000, 1025, "203.0.113.5", 443, back=(4, 5000))])
    a, b = join(log, ("tcp", "10.0.1.5", 40000, "203.0.113.5", 443, T0 * NS),
                ("tcp", "10.0.1.6", 40000, "203.0.113.5", 443, T0 * NS))
    assert (a["evidence"], a["gateway_sport"], a["candidates"]) == (EVIDENCE_UNIQUE, 40000, 1)
    assert (b["evidence"], b["gateway_sport"], b["candidates"]) == (EVIDENCE_UNIQUE, 1025, 1)
    assert (b["interface_id"], b["gateway_private"], b["gateway_public"]) == (ENI, GW.private, GW.public)
    assert b["node_side"]["packets"] == 5 and b["node_side"]["reply_bytes"] == 5000
    # The other connection to the same destination was a candidate by time, ruled out by its counts, and said so.
    assert b["ruled_out"] == 1
    assert "1 other(s) to it ruled out by their counts" in b["why"]
    assert b["node_side"]["records"] == [f"{tmp_path / 'nat.log'}:6", f"{tmp_path / 'nat.log'}:9"]


def test_same_counts_in_one_window_are_ambiguous_never_a_guess(tmp_path: Path) -> None:
    log = flowlog(tmp_path, [*nat_flow("10.0.1.5", 5000, 5000, "203.0.113.5", 7, proto=17, out=(1, 60), back=(1, 60)),
                             *nat_flow("10.0.1.6", 5000, 1026, "203.0.113.5", 7, proto=17, out=(1, 60), back=(1, 60))])
    (a,) = join(log, ("udp", "10.0.1.5", 5000, "203.0.113.5", 7, T0 * NS))
    assert a["evidence"] == evidence_ambiguous(2) == "flow log, ambiguous: 2 candidates"
    assert a["gateway_sport"] is None and sorted(g["sport"] for g in a["gateway_tuples"]) == [1026, 5000]
    assert "cannot tell which one" in a["why"]


def test_no_candidate_says_why(tmp_path: Path) -> None:
    lines = [*nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443),
             # the node's own interface logs its tuple too, but shows no gateway port
             f"eni-0node 10.0.1.7 203.0.113.9 41000 443 6 5 400 {T0} {T0 + 2} 10.0.1.7 203.0.113.9 OK",
             # the gateway saw the node's packets to .10 but nothing left for .10
             f"{ENI} 10.0.1.8 {GW.private} 42000 443 6 5 400 {T0} {T0 + 2} 10.0.1.8 203.0.113.10 OK"]
    log = flowlog(tmp_path, lines)
    later, wrong_if, no_public, counts = join(
        log, ("tcp", "10.0.1.5", 40000, "203.0.113.5", 443, (T0 + 3600) * NS),
        ("tcp", "10.0.1.7", 41000, "203.0.113.9", 443, T0 * NS),
        ("tcp", "10.0.1.8", 42000, "203.0.113.10", 443, T0 * NS),
        ("tcp", "10.0.1.5", 40000, "203.0.113.5", 443, T0 * NS))
    assert later["evidence"] == EVIDENCE_NONE and "no record of tcp 10.0.1.5:40000" in later["why"]
    assert wrong_if["evidence"] == EVIDENCE_NONE and "only on interface(s) eni-0node" in wrong_if["why"]
    assert no_public["evidence"] == EVIDENCE_NONE and "no public-side record to 203.0.113.10:443" in no_public["why"]
    assert counts["evidence"] == EVIDENCE_UNIQUE  # the control: the same records do answer at the right time


def test_a_direction_seen_on_one_side_only_rules_a_candidate_out(tmp_path: Path) -> None:
    lines = [*nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443, back=(4, 3000)),
             *nat_flow("10.0.1.6", 40001, 1025, "203.0.113.5", 443, back=None)]
    log = flowlog(tmp_path, lines)
    (a,) = join(log, ("tcp", "10.0.1.6", 40001, "203.0.113.5", 443, T0 * NS))
    # Same egress counts as 40000's flow, but only the other one had replies: 1025 is the one.
    assert (a["evidence"], a["gateway_sport"]) == (EVIDENCE_UNIQUE, 1025)


def test_records_may_lag_the_packets_by_up_to_a_minute(tmp_path: Path) -> None:
    log = flowlog(tmp_path, nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443, t=T0 + 55))
    (on_time,) = join(log, ("tcp", "10.0.1.5", 40000, "203.0.113.5", 443, T0 * NS))
    assert on_time["evidence"] == EVIDENCE_UNIQUE
    (strict,) = join(log, ("tcp", "10.0.1.5", 40000, "203.0.113.5", 443, T0 * NS), lag_s=10)
    assert strict["evidence"] == EVIDENCE_NONE
    (anytime,) = join(log, {"proto": "tcp", "src": "10.0.1.5", "sport": 40000, "dst": "203.0.113.5", "dport": 443})
    assert anytime["evidence"] == EVIDENCE_UNIQUE and "at any time" in anytime["why"]


def test_default_format_without_pkt_fields(tmp_path: Path) -> None:
    # The default format has no pkt-dstaddr: the private side names the gateway as destination and nothing else.
    default = ("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end "
               "action log-status")
    lines = []
    for line in [*nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443, back=(4, 3000)),
                 *nat_flow("10.0.1.6", 40000, 1025, "203.0.113.5", 443, back=(4, 5000))]:
        iface, src, dst, sport, dport, proto, p, b, start, end, _, _, status = line.split()
        lines.append(f"2 123456789012 {iface} {src} {dst} {sport} {dport} {proto} {p} {b} {start} {end} ACCEPT "
                     f"{status}")
    log = flowlog(tmp_path, lines, fields=default)
    a, b = join(log, ("tcp", "10.0.1.5", 40000, "203.0.113.5", 443, T0 * NS),
                ("tcp", "10.0.1.6", 40000, "203.0.113.5", 443, T0 * NS))
    assert (a["gateway_sport"], b["gateway_sport"]) == (40000, 1025)


def test_trace_public_walks_back_to_the_node(tmp_path: Path) -> None:
    log = flowlog(tmp_path, [*nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443, back=(4, 3000)),
                             *nat_flow("10.0.1.6", 40000, 1025, "203.0.113.5", 443, back=(4, 5000)),
                             *nat_flow("10.0.1.6", 40002, 1025, "203.0.113.77", 80, back=(4, 5000))])
    flows = trace_public(log, [GW], GW.public, 1025, at_ns=(T0 + 1) * NS)  # type: ignore[arg-type]
    # The gateway port 1025 was in use to two destinations at once (AWS allocates per destination).
    assert flows.select("dst", "dport", "evidence").rows() == [("203.0.113.5", 443, EVIDENCE_UNIQUE),
                                                               ("203.0.113.77", 80, EVIDENCE_UNIQUE)]
    assert [n["src"] for n in flows["nodes"][0]] == ["10.0.1.6"] and flows["nodes"][0][0]["sport"] == 40000
    peer = trace_public(log, [GW], GW.private, 1025, peer=("203.0.113.77", None))
    assert peer["nodes"].to_list()[0][0]["sport"] == 40002
    with pytest.raises(InputError, match="203.0.113.99 is not a given NAT gateway's address"):
        trace_public(log, [GW], "203.0.113.99", 1025)
    assert trace_public(log, [GW], GW.public, 1025, at_ns=(T0 + 7200) * NS).is_empty()  # type: ignore[arg-type]


def test_trace_public_ambiguous_and_unlinked(tmp_path: Path) -> None:
    log = flowlog(tmp_path, [*nat_flow("10.0.1.5", 5000, 5000, "203.0.113.5", 7, proto=17, out=(1, 60), back=(1, 60)),
                             *nat_flow("10.0.1.6", 5000, 1026, "203.0.113.5", 7, proto=17, out=(1, 60), back=(1, 60)),
                             f"{ENI} {GW.private} 203.0.113.8 2000 53 17 1 70 {T0} {T0} {GW.private} 203.0.113.8 OK"])
    (amb,) = trace_public(log, [GW], GW.public, 1026).to_dicts()  # type: ignore[arg-type]
    assert amb["evidence"] == evidence_ambiguous(2) and {n["src"] for n in amb["nodes"]} == {"10.0.1.5", "10.0.1.6"}
    (alone,) = trace_public(log, [GW], GW.public, 2000).to_dicts()  # type: ignore[arg-type]
    assert alone["evidence"] == EVIDENCE_NONE and "no private-side record to 203.0.113.8:53" in alone["why"]


@given(st.integers(min_value=1, max_value=6), st.integers(min_value=0, max_value=3))
def test_the_evidence_counts_every_indistinguishable_flow(same: int, different: int) -> None:
    import tempfile

    lines = []
    for i in range(same):
        lines += nat_flow(f"10.0.1.{10 + i}", 6000, 2000 + i, "203.0.113.5", 7, proto=17, out=(1, 60), back=(1, 60))
    for j in range(different):
        lines += nat_flow(f"10.0.2.{10 + j}", 6000, 3000 + j, "203.0.113.5", 7, proto=17, out=(1, 61 + j),
                          back=(1, 61 + j))
    with tempfile.TemporaryDirectory() as d:
        log = flowlog(Path(d), lines)
        (r,) = join(log, ("udp", "10.0.1.10", 6000, "203.0.113.5", 7, T0 * NS))
    assert r["candidates"] == same and r["evidence"] == (EVIDENCE_UNIQUE if same == 1 else evidence_ambiguous(same))
    assert r["ruled_out"] == different


def test_node_tuples_from_conntrack_events_and_listing() -> None:
    lines = [
        "[1700000000.100000]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=10.244.0.10 dst=203.0.113.5 sport=40000 "
        "dport=443 [UNREPLIED] src=203.0.113.5 dst=10.0.1.5 sport=443 dport=40000",
        "[1700000003.500000]\t[DESTROY] ipv4     2 tcp      6 src=10.244.0.10 dst=203.0.113.5 sport=40000 dport=443 "
        "packets=5 bytes=400 src=203.0.113.5 dst=10.0.1.5 sport=443 dport=40000 packets=4 bytes=3000 [ASSURED]",
        "not a conntrack line",
        "udp      17 29 src=10.244.0.11 dst=203.0.113.5 sport=5000 dport=7 src=203.0.113.5 dst=10.0.1.5 sport=7 "
        "dport=5001 mark=0 use=1",
    ]
    t = node_tuples_from_conntrack(lines, "node.ct")
    assert t.select("proto", "src", "sport", "dst", "dport", "first_ts_ns", "last_ts_ns", "source").rows() == [
        ("udp", "10.0.1.5", 5001, "203.0.113.5", 7, None, None, "node.ct line 4"),
        ("tcp", "10.0.1.5", 40000, "203.0.113.5", 443, 1_700_000_000_100_000_000, 1_700_000_003_500_000_000,
         "node.ct line 1")]


@pytest.mark.parametrize(("text", "want"), [
    ("10.0.0.220=198.51.100.20", NatGateway("10.0.0.220", "198.51.100.20")),
    (" 10.0.0.220 ", NatGateway("10.0.0.220", None)),
])
def test_parse_nat_gateway(text: str, want: NatGateway) -> None:
    assert parse_nat_gateway(text) == want


@pytest.mark.parametrize(("text", "problem"), [
    ("=198.51.100.20", "no private address"),
    ("10.0.0.220=", "no public address"),
    ("nat-0abc=198.51.100.20", "'nat-0abc' is not an IP address"),
])
def test_parse_nat_gateway_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                   problem: str) -> None:
    """A library caller is told the call it made, natproof's commands --nat-gateway, as they always were."""
    tail = f": {problem} (PRIVATE=PUBLIC, e.g. 10.0.0.220=203.0.113.20)"
    with pytest.raises(InputError) as exc:
        parse_nat_gateway(text)
    assert str(exc.value) == f"parse_nat_gateway({text!r}){tail}"
    assert exc.value.for_command_line() == f"--nat-gateway {text!r}{tail}"
    log = flowlog(tmp_path, nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443))
    assert main(["flowlog", str(log.files[0].path), "--nat-gateway", text]) == 2
    assert capsys.readouterr().err == f"natproof: error: --nat-gateway {text!r}{tail}\n"


@pytest.mark.parametrize(("text", "problem"), [
    ("2001:db8::1=203.0.113.20", "2001:db8::1 and 203.0.113.20 are not of one IP version: a NAT gateway's private "
                                 "address and its public one are of the same family (PRIVATE=PUBLIC, e.g. "
                                 "10.0.0.220=203.0.113.20)"),
    ("10.0.0.220=2001:db8::20", "10.0.0.220 and 2001:db8::20 are not of one IP version"),
    ("203.0.113.20=10.0.1.1", "looks swapped: 10.0.1.1 is a VPC (private) address, which no Elastic IP is, and "
                              "203.0.113.20 is not one; give PRIVATE=PUBLIC: 10.0.1.1=203.0.113.20"),
    ("198.51.100.20=100.64.0.9", "looks swapped: 100.64.0.9 is a VPC (private) address"),
    ("2001:db8::1=fd00::1", "looks swapped: fd00::1 is a VPC (private) address"),
])
def test_gateway_addresses_that_cannot_be_one_gateways_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str) -> None:
    """Mixed IP versions, and PUBLIC a VPC address with PRIVATE none (no Elastic IP is one): one line, exit 2."""
    with pytest.raises(InputError) as exc:
        parse_nat_gateway(text)
    assert str(exc.value).startswith(f"parse_nat_gateway({text!r}): {problem}")
    log = flowlog(tmp_path, nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443))
    for command in (["flowlog", str(log.files[0].path)], ["who", "203.0.113.20:1", "--flow-log", log.files[0].path]):
        assert main([*command, "--nat-gateway", text]) == 2
        assert capsys.readouterr().err == f"natproof: error: {exc.value.for_command_line()}\n"
    assert exc.value.for_command_line().startswith(f"--nat-gateway {text!r}: {problem}")


@pytest.mark.parametrize("text", [
    "10.0.1.1=203.0.113.20",
    "198.51.100.5=203.0.113.20",  # a VPC may use a public range for itself: its NAT gateway's address is in it
    "10.0.1.1=10.0.2.1",  # not an Elastic IP, but nothing says which side is which
    "203.0.113.20=198.51.100.5",
    "2001:db8::1=2001:db8::2",
])
def test_gateway_addresses_not_certainly_wrong_are_taken(text: str) -> None:
    private, public = text.split("=")
    assert parse_nat_gateway(text) == NatGateway(private, public)


def test_an_ipv6_gateway_port_is_written_in_brackets(tmp_path: Path) -> None:
    from natproof.flowlogs.who import who_via_gateway

    log = flowlog(tmp_path, nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443))
    gw = parse_nat_gateway("2001:db8::1=2001:db8::2")
    (m,) = who_via_gateway(log, [gw], "2001:db8::2", 39264).missing
    assert m.why.startswith("no public-side record from [2001:db8::1]:39264 on the gateway's interface")


@pytest.mark.parametrize(("call", "library", "command_line"), [
    (lambda log: join_nat_gateway(node_tuples([("tcp", "10.0.1.5", 40000, "203.0.113.5", 443)]), log, []),
     "no NAT gateway given: pass gateways=[parse_nat_gateway('PRIVATE=PUBLIC')] (aws ec2 describe-nat-gateways)",
     "no NAT gateway given: pass --nat-gateway PRIVATE=PUBLIC (aws ec2 describe-nat-gateways)"),
    (lambda log: trace_public(log, [GW], "203.0.113.99", 1025),
     "203.0.113.99 is not a given NAT gateway's address (gateways=[parse_nat_gateway('PRIVATE=PUBLIC')]; given: "
     "10.0.0.220=198.51.100.20)",
     "203.0.113.99 is not a given NAT gateway's address (--nat-gateway PRIVATE=PUBLIC; given: "
     "10.0.0.220=198.51.100.20)"),
])
def test_a_library_caller_is_told_gateways_the_command_line_nat_gateway(
        tmp_path: Path, call: Callable[[FlowLog], object], library: str, command_line: str) -> None:
    log = flowlog(tmp_path, nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443))
    with pytest.raises(InputError) as exc:
        call(log)
    assert (str(exc.value), exc.value.for_command_line()) == (library, command_line)


def test_join_needs_a_gateway_and_the_tuple_columns(tmp_path: Path) -> None:
    log = flowlog(tmp_path, nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443))
    with pytest.raises(InputError, match=r"gateways=\[parse_nat_gateway\('PRIVATE=PUBLIC'\)\]"):
        join_nat_gateway(node_tuples([("tcp", "10.0.1.5", 40000, "203.0.113.5", 443)]), log, [])
    with pytest.raises(ValueError, match="node_tuples lacks"):
        join_nat_gateway(pl.DataFrame({"src": ["10.0.1.5"]}), log, [GW])
    other = join_nat_gateway(node_tuples([("tcp", "10.0.1.5", 40000, "203.0.113.5", 443)]), log,
                             [NatGateway("10.9.9.9", "198.51.100.99")]).row(0, named=True)
    assert other["evidence"] == EVIDENCE_NONE
    assert "no record carries a given NAT gateway's private address" in other["why"]


def undated(tmp_path: Path, form: str, lines: list[str]) -> FlowLog:
    """``lines`` (FORMAT) as a flow log whose records carry no time: a format without start and end, '-' for both,
    or a Parquet delivery without their columns."""
    names = FORMAT.split()
    keep = [i for i, n in enumerate(names) if n not in ("start", "end")]
    if form == "dash":
        return flowlog(tmp_path, [" ".join("-" if names[i] in ("start", "end") else v
                                           for i, v in enumerate(line.split())) for line in lines])
    text = flowlog(tmp_path, [" ".join(line.split()[i] for i in keep) for line in lines],
                   fields=" ".join(names[i] for i in keep))
    if form == "text":
        return text
    path = tmp_path / "nat.parquet"
    text.records.select([n.replace("-", "_") for i, n in enumerate(names) if i in keep]).write_parquet(path)
    return read_flow_logs(path)


UNDATED = ["text", "dash", "parquet"]


@pytest.mark.parametrize("form", UNDATED)
def test_records_without_times_are_joined_at_any_time(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      form: str) -> None:
    """A format without start and end (or '-' in them) is AWS's to allow: the join and the walk back need no time,
    so they take the records at any time and say so; the counts still tell the flows apart."""
    log = undated(tmp_path, form, [*nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443, back=(4, 3000)),
                                   *nat_flow("10.0.1.6", 40000, 1025, "203.0.113.5", 443, back=(4, 5000))])
    assert not log.dated() and log.summary()["first_start"] is None
    a, b = join(log, ("tcp", "10.0.1.5", 40000, "203.0.113.5", 443, T0 * NS),
                ("tcp", "10.0.1.6", 40000, "203.0.113.5", 443, T0 * NS))
    assert (a["evidence"], a["gateway_sport"], b["evidence"], b["gateway_sport"]) == (
        EVIDENCE_UNIQUE, 40000, EVIDENCE_UNIQUE, 1025)
    assert "at any time (its records carry no start or end time)" in b["why"] and b["ruled_out"] == 1
    (flow,) = trace_public(log, [GW], GW.public, 1025).to_dicts()  # type: ignore[arg-type]
    assert flow["evidence"] == EVIDENCE_UNIQUE and [n["src"] for n in flow["nodes"]] == ["10.0.1.6"]
    assert "at any time (this flow's records carry no start or end time)" in flow["why"]
    # Port use: the ports are counted, how many were live at once is not known.
    from natproof.flowlogs import port_usage

    usage = port_usage(log, [GW])
    assert usage.groups.select("ports", "connections", "peak", "share").rows() == [(2, 2, None, None)]
    assert usage.series.is_empty() and usage.findings() == [] and usage.t0_s is None
    assert any("no start or end time" in n for n in usage.notes)
    path = log.files[0].path
    assert main(["flowlog", path, "--nat-gateway", str(GW), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "no record has a start or end time" in out and "not how many were live at once" in out


@pytest.mark.parametrize("form", UNDATED)
def test_charts_of_records_without_times_say_why_none_is_drawn(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               form: str) -> None:
    """A new user's trial: flowlog --charts DIR on records without start and end wrote no chart and said nothing.
    Now one warning says no chart over time can be drawn; the command exits as before."""
    log = undated(tmp_path, form, [*nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443),
                                   *nat_flow("10.0.1.6", 40000, 1025, "203.0.113.5", 443)])
    path, charts = log.files[0].path, tmp_path / "charts"
    assert main(["flowlog", path, "--nat-gateway", str(GW), "--charts", str(charts), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert err == (f"natproof: warning: {path}: no record has a start or end time (its format has no start and end "
                   f"fields, or they read '-'): no chart of the gateway's ports in use over time can be drawn; none "
                   f"written to {charts}\n")
    assert list(charts.iterdir()) == []
    usage = json.loads(out)["port_usage"]  # the JSON's own notes said it, and still do
    assert [g["ports"] for g in usage["groups"]] == [2] and any("no start or end time" in n for n in usage["notes"])


@pytest.mark.parametrize("form", UNDATED)
def test_a_time_asked_of_records_without_times_is_refused_in_one_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      form: str) -> None:
    """A gateway reuses a port over time: a record with no time cannot answer 'who had it at T'. Asked anyway,
    natproof says the records have no time (never 'no record within 1 s', never a traceback)."""
    log = undated(tmp_path, form, nat_flow("10.0.1.5", 40000, 1025, "203.0.113.5", 443))
    path = log.files[0].path
    tail = ": no record has a start or end time (its format has no start and end fields, or they read '-'): "
    with pytest.raises(InputError) as exc:
        trace_public(log, [GW], GW.public, 1025, at_ns=T0 * NS)  # type: ignore[arg-type]
    assert str(exc.value).startswith(f"{path}{tail}at_ns cannot be placed among them")
    assert exc.value.for_command_line().startswith(f"{path}{tail}--at cannot be placed among them")
    for at in ("12:00:00", str(T0)):
        assert main(["who", f"{GW.public}:1025", "--at", at, "--flow-log", path, "--nat-gateway", str(GW)]) == 2
        err = capsys.readouterr().err
        assert err == f"natproof: error: {exc.value.for_command_line()}\n"
    assert main(["who", f"{GW.public}:1025", "--flow-log", path, "--nat-gateway", str(GW), "--format", "json"]) == 0
    (p,) = json.loads(capsys.readouterr().out)["paths"]
    assert p["node"] == {"address": "10.0.1.5", "port": 40000}


def test_a_port_whose_records_have_no_time_is_named_when_a_time_is_asked(tmp_path: Path) -> None:
    """Some records dated, the asked port's not: the missing link says why the time asked cannot reach it."""
    from natproof.flowlogs.who import who_via_gateway

    dated = nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443)
    untimed = [" ".join("-" if i in (8, 9) else v for i, v in enumerate(line.split()))
               for line in nat_flow("10.0.1.6", 40001, 1025, "203.0.113.5", 443)]
    log = flowlog(tmp_path, [*dated, *untimed])
    answer = who_via_gateway(log, [GW], GW.public, 1025, at_ns=T0 * NS)
    (m,) = answer.missing
    assert not answer.found and "1 use(s) of the port have records without a start or end time" in m.why
    assert who_via_gateway(log, [GW], GW.public, 1025).found


@pytest.mark.parametrize(("drop", "said"), [
    ("end", " (start times only: the records have no end)"),
    ("start", " (end times only: the records have no start)"),
    (None, ""),
])
def test_the_span_is_from_the_times_the_records_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     drop: str | None, said: str) -> None:
    """A format with start and no end spans from the earliest start to the latest start, and says that only starts
    were known (it printed the first start to the first start: last_end null)."""
    names = FORMAT.split()
    keep = [i for i, n in enumerate(names) if n != drop]
    lines = [*nat_flow("10.0.1.5", 40000, 40000, "203.0.113.5", 443),
             *nat_flow("10.0.1.6", 40001, 1025, "203.0.113.5", 443, t=T0 + 3)]  # end = start + 2
    log = flowlog(tmp_path, [" ".join(line.split()[i] for i in keep) for line in lines],
                  fields=" ".join(names[i] for i in keep))
    first, last = {"end": (T0, T0 + 3), "start": (T0 + 2, T0 + 5), None: (T0, T0 + 5)}[drop]
    summary = log.summary()
    assert (summary["first"], summary["last"]) == (first, last)
    assert summary["span_from"] == {"end": "start", "start": "end", None: "start and end"}[drop]
    assert main(["flowlog", str(tmp_path / "nat.log"), "--nat-gateway", str(GW), "--format", "table"]) == 0
    from natproof.cli import _iso

    span = f"{_iso(first * NS)} to {_iso(last * NS)}{said}\n"
    assert f"0 SKIPDATA; {span}" in capsys.readouterr().out
