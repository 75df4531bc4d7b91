"""Tests of the simulator's ClusterIP DNAT, NodePort inbound and per-packet failures: captures read back
with dpkt against the truth (docs/model.md's fields)."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import given, settings
from test_scenario import Capture, Rec, Tuple5, read_capture, reverse

from natproof.testing.scenario import (
    FATES,
    MODEL_SCENARIOS,
    SERVICE_CIDR,
    Flow,
    Scenario,
    Service,
    simulate,
    write_scenario,
)
from natproof.testing.strategies import model_scenarios

NAT_IP = "203.0.113.2"
BRIDGE = "10.244.0.1"
KEYS = ("src", "sport", "dst", "dport")
SEQ = 2**32
Written = tuple[dict[str, Any], Capture, Capture]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    root = tmp_path_factory.mktemp("model")
    out = {}
    for name, scenario in MODEL_SCENARIOS.items():
        truth = write_scenario(scenario, root / name)
        assert json.loads((root / name / "expected.json").read_text()) == truth
        out[name] = (truth, read_capture(root / name / "inside.pcap"), read_capture(root / name / "outside.pcap"))
    return out


def as_tuple(proto: str, t: dict[str, Any] | None) -> Tuple5 | None:
    return None if t is None else (proto, t["src"], t["sport"], t["dst"], t["dport"])


def flow_of(scenario: Scenario, conn: dict[str, Any]) -> Flow:
    """The scenario's flow behind a truth row: the one whose original tuple it is (they are unique)."""
    original = as_tuple(conn["proto"], conn["original"])
    (flow,) = [f for f in scenario.flows if f.inside_tuple == original]
    return flow


def commas(addr: str) -> bytes:
    return addr.replace(".", ",").encode()


def l4_key(rec: Rec) -> tuple[int, int]:
    """What NAT never changes and a crossing packet keeps: IP id and TCP flags (ICMP type)."""
    l4 = rec.l3.data
    return rec.l3.id, l4.flags if isinstance(l4, dpkt.tcp.TCP) else getattr(l4, "type", -1)


def pair_up(before: list[Rec], after: list[Rec], offset_ns: int, after_is_outside: bool, slack: int):
    """Pair the copies of packets that crossed the node: same IP id and flags, 20-80 us later on the far
    side, in order (the node never reorders a connection's packets). Returns (pairs, unmatched before,
    unmatched after)."""

    def true_ns(rec: Rec, outside: bool) -> int:
        return rec.ts_ns - (offset_ns if outside else 0)

    pairs: list[tuple[Rec, Rec]] = []
    used: set[int] = set()
    lonely: list[Rec] = []
    for b in before:
        t_b = true_ns(b, not after_is_outside)
        for k, a in enumerate(after):
            if k in used:
                continue
            dt = true_ns(a, after_is_outside) - t_b
            if dt > 80_000 + slack:
                lonely.append(b)
                break
            if dt >= 20_000 - slack and l4_key(a) == l4_key(b):
                pairs.append((b, a))
                used.add(k)
                break
        else:
            lonely.append(b)
    return pairs, lonely, [a for k, a in enumerate(after) if k not in used]


def check_capture_pair(scenario: Scenario, truth: dict[str, Any], inside: Capture, outside: Capture) -> None:
    """Everything the captures must show for the truth to be exact (docs/model.md)."""
    offset_ns = round(scenario.clock_offset_s * 1e9)
    slack = 0 if scenario.is_nanosecond("inside") and scenario.is_nanosecond("outside") else 1000
    groups: dict[str, dict[Tuple5, list[Rec]]] = {"inside": {}, "outside": {}}
    for side, cap in (("inside", inside), ("outside", outside)):
        for rec in cap.recs:
            if rec.tuple5 is not None:
                groups[side].setdefault(rec.tuple5, []).append(rec)

    want: dict[str, Counter[Tuple5]] = {"inside": Counter(), "outside": Counter()}
    claimed: dict[str, set[Tuple5]] = {"inside": set(), "outside": set()}
    for conn in truth["connections"]:
        flow = flow_of(scenario, conn)
        proto, p = conn["proto"], conn["packets"]
        check_row(scenario, flow, conn)
        leaked = conn.get("fates", {}).get("leaked", 0)
        tuples = {side: as_tuple(proto, conn[side]) for side in ("inside", "outside")}
        for side in ("inside", "outside"):
            t = tuples[side]
            if t is None:
                assert p[f"egress_{side}"] == p[f"reply_{side}"] == 0
                continue
            # Leaked packets carry the inside tuple on the outside; every other packet its side's tuple.
            want[side][t] += p[f"egress_{side}"] - (leaked if side == "outside" else 0)
            want[side][reverse(t)] += p[f"reply_{side}"]
            for key in (t, reverse(t)):
                assert key not in claimed[side], f"{key} is shared: grouping by tuple would mix connections"
                claimed[side].add(key)
        if leaked:
            assert tuples["inside"] is not None
            want["outside"][tuples["inside"]] += leaked
        check_packets(flow, conn, tuples, groups, offset_ns, slack)
    for side in ("inside", "outside"):
        seen = Counter({t: len(recs) for t, recs in groups[side].items()})
        # Every IPv4 TCP/UDP/ICMP packet belongs to a connection of the truth, and no packet is missing.
        assert seen == +want[side], side


def check_row(scenario: Scenario, flow: Flow, conn: dict[str, Any]) -> None:
    """A truth row agrees with the flow that made it and with docs/model.md's relations."""
    original = {"src": flow.pod, "sport": flow.sport, "dst": flow.dst, "dport": flow.dport}
    assert conn["original"] == original and conn["verdict"] == flow.outcome
    assert conn["initiator"] == ("outside" if flow.service and flow.service.type == "NodePort" else "inside")
    before, after = ("outside", "inside") if conn["initiator"] == "outside" else ("inside", "outside")
    assert conn[before] == original
    translated = conn["translated"]
    if flow.outcome == "internal":
        assert translated is None and conn["outside"] is None
    else:
        assert translated == conn[after]
    assert conn["rewrites"] == ([] if translated is None else [k for k in KEYS if original[k] != translated[k]])
    assert ("fates" in conn) == (flow.leak > 0 or flow.invalid_reply or flow.alg)
    svc = flow.service
    if svc is None:
        assert conn["service"] is None
        if translated is not None and flow.outcome != "untranslated":
            assert translated["src"] == NAT_IP and (translated["dst"], translated["dport"]) == (flow.dst, flow.dport)
        return
    backend = {"address": svc.backends[flow.backend][0], "port": svc.backends[flow.backend][1]}
    assert conn["service"] == {"type": svc.type, "address": svc.address, "port": svc.port, "backend": backend}
    if translated is None:
        return
    assert (translated["dst"], translated["dport"]) == (backend["address"], backend["port"])
    if svc.type == "ClusterIP":
        assert ipaddress.IPv4Address(original["dst"]) in SERVICE_CIDR
        assert translated["src"] == NAT_IP
    elif svc.external_traffic_policy == "Cluster":
        # Masqueraded to the bridge address with --random-fully: a new port every time.
        assert translated["src"] == BRIDGE and translated["sport"] != original["sport"]
    else:
        assert (translated["src"], translated["sport"]) == (original["src"], original["sport"])


def check_packets(
    flow: Flow,
    conn: dict[str, Any],
    tuples: dict[str, Tuple5 | None],
    groups: dict[str, dict[Tuple5, list[Rec]]],
    offset_ns: int,
    slack: int,
) -> None:
    """Pair each packet's two copies; check TTL, the ALG's sequence shift and the fates."""
    fates = dict.fromkeys(FATES, 0)
    inbound = conn["initiator"] == "outside"
    shifts: dict[str, list[tuple[int, int | None, bool]]] = {"egress": [], "reply": []}
    rewritten: list[tuple[str, Rec, Rec]] = []
    for direction in ("egress", "reply"):

        def recs(side: str, direction: str = direction) -> list[Rec]:
            t = tuples[side]
            if t is None:
                return []
            got = list(groups[side].get(t if direction == "egress" else reverse(t), []))
            if side == "outside" and direction == "egress" and tuples["inside"] not in (None, t):
                got += groups["outside"].get(tuples["inside"], [])  # leaked copies
            return sorted(got, key=lambda r: r.ts_ns)

        from_pod = (direction == "egress") != inbound
        before_side, after_side = ("inside", "outside") if from_pod else ("outside", "inside")
        pairs, lonely_before, lonely_after = pair_up(
            recs(before_side), recs(after_side), offset_ns, after_side == "outside", slack
        )
        for b, a in pairs:
            ins, outs = (b, a) if before_side == "inside" else (a, b)
            # One routed hop: TTL - 1 on the far side, whichever way the packet went.
            assert b.l3.ttl - a.l3.ttl == 1
            assert ins.l3.df == outs.l3.df
            leak = outs.tuple5 == ins.tuple5 and bool(conn["rewrites"])
            fates["leaked" if leak else "crossed"] += 1
            if not leak:
                want_out = tuples["outside"]
                assert outs.tuple5 == (want_out if direction == "egress" else reverse(want_out))
            if isinstance(ins.l3.data, dpkt.tcp.TCP):
                d_seq = (outs.l3.data.seq - ins.l3.data.seq) % SEQ
                # Without the ACK flag the ack field means nothing (a bare RST carries 0 on both sides).
                d_ack = (outs.l3.data.ack - ins.l3.data.ack) % SEQ if ins.l3.data.flags & dpkt.tcp.TH_ACK else None
                shifts[direction].append((d_seq, d_ack, leak))
                if bytes(ins.l3.data.data) != bytes(outs.l3.data.data):
                    rewritten.append((direction, ins, outs))
            elif isinstance(ins.l3.data, dpkt.udp.UDP):
                assert bytes(ins.l3.data.data) == bytes(outs.l3.data.data)
        fates["inside_only"] += len(lonely_before if before_side == "inside" else lonely_after)
        for rec in lonely_before if before_side == "outside" else lonely_after:
            # A routed copy of the pod's packet leaves with TTL 63: one with 64 was made by the node.
            made = not inbound and direction == "egress" and rec.l3.ttl == 64
            fates["node_generated" if made else "outside_only"] += 1
    if "fates" in conn:
        assert fates == conn["fates"]
    check_alg(flow, inbound, shifts, rewritten)


def check_alg(
    flow: Flow,
    inbound: bool,
    shifts: dict[str, list[tuple[int, int | None, bool]]],
    rewritten: list[tuple[str, Rec, Rec]],
) -> None:
    """Without the helper nothing but addresses changes; with it one payload is rewritten, and from then
    on that direction's seq moves by a constant outside and the other direction's ack with it."""
    if not flow.alg:
        assert not rewritten
        assert all(d_seq == 0 and d_ack in (0, None) for ds in shifts.values() for d_seq, d_ack, _ in ds)
        return
    (direction, ins, outs) = rewritten[0]
    assert len(rewritten) == 1 and direction == ("reply" if inbound else "egress")
    inside_addr, far_addr = (flow.service.backends[flow.backend][0], flow.dst) if inbound else (flow.pod, NAT_IP)
    assert commas(inside_addr) + b"," in bytes(ins.l3.data.data)
    assert commas(far_addr) + b"," in bytes(outs.l3.data.data)
    shift = len(commas(far_addr)) - len(commas(inside_addr))
    assert len(outs.l3.data.data) - len(ins.l3.data.data) == shift
    other = "egress" if direction == "reply" else "reply"
    seqs = [d_seq for d_seq, _, leak in shifts[direction] if not leak]  # leaked packets skip seqadj
    acks = [d_ack for _, d_ack, leak in shifts[other] if not leak and d_ack is not None]
    assert all(d_ack in (0, None) for _, d_ack, _ in shifts[direction])
    assert all(d_seq == 0 for d_seq, _, _ in shifts[other])
    if not shift:
        assert set(seqs) <= {0} and set(acks) <= {0}
        return
    shifted = shift % SEQ
    assert shifted in seqs and shifted in acks
    # 0 up to the rewritten packet, the constant after it: in its direction's seq, the other's ack.
    for deltas in (seqs, acks):
        k = deltas.index(shifted)
        assert set(deltas[:k]) <= {0} and set(deltas[k:]) <= {shifted}


@pytest.mark.parametrize("name", sorted(MODEL_SCENARIOS))
def test_captures_agree_with_truth(written: dict[str, Written], name: str) -> None:
    truth, inside, outside = written[name]
    assert len(truth["connections"]) == len(MODEL_SCENARIOS[name].flows)
    check_capture_pair(MODEL_SCENARIOS[name], truth, inside, outside)


def test_truth_shape(written: dict[str, Written]) -> None:
    for name, (truth, _inside, _outside) in written.items():
        assert list(truth) == ["schema", "scenario", "source", "pod_cidr", "clock_offset_s", "connections"]
        assert truth["scenario"] == name
        for conn in truth["connections"]:
            keys = ["proto", "initiator", "inside", "outside", "original", "translated", "rewrites", "service"]
            keys += ["verdict", "packets"] + (["fates"] if "fates" in conn else [])
            assert list(conn) == keys
            if "fates" in conn:
                assert list(conn["fates"]) == list(FATES)
                total = sum(conn["packets"].values())
                crossing = conn["fates"]["crossed"] + conn["fates"]["leaked"]
                # A crossing packet counts once in fates, twice in packets.
                assert sum(conn["fates"].values()) == total - crossing


def rows(truth: dict[str, Any]) -> dict[tuple[str, Tuple5 | None], dict[str, Any]]:
    return {(c["proto"], as_tuple(c["proto"], c["original"])): c for c in truth["connections"]}


def test_clusterip_rewrites_destination_and_source(written: dict[str, Written]) -> None:
    truth, inside, outside = written["clusterip_dnat"]
    conns = rows(truth)
    api = conns[("tcp", ("tcp", "10.244.0.10", 50438, "10.96.0.1", 443))]
    assert api["outside"] == {"src": NAT_IP, "sport": 50438, "dst": "198.51.100.10", "dport": 6443}
    assert api["rewrites"] == ["src", "dst", "dport"]
    picks = [c["service"]["backend"]["address"] for c in truth["connections"] if c["original"]["dst"] == "10.96.0.1"]
    assert picks == ["198.51.100.10", "198.51.100.11", "198.51.100.10"]
    dns = [c for c in truth["connections"] if c["proto"] == "udp"]
    assert {tuple(c["rewrites"]) for c in dns} == {("src", "dst")}  # port 53 stays 53
    # The ClusterIP never appears outside; the backends never appear inside.
    vips = {ipaddress.IPv4Address(a).packed for a in ("10.96.0.1", "10.96.0.10", "10.100.7.9")}
    assert not any(r.ipv4 is not None and {r.l3.src, r.l3.dst} & vips for r in outside.recs)
    backends = {ipaddress.IPv4Address(a).packed for a in ("198.51.100.11", "198.51.100.53", "203.0.113.50")}
    assert not any(r.ipv4 is not None and {r.l3.src, r.l3.dst} & backends for r in inside.recs)


def test_clusterip_and_direct_flow_clash_on_one_backend(written: dict[str, Written]) -> None:
    truth, _inside, _outside = written["clusterip_outcomes"]
    both = [c for c in truth["connections"] if c["original"]["sport"] == 46000]
    assert {(c["outside"]["dst"], c["outside"]["dport"]) for c in both} == {("198.51.100.10", 6443)}
    assert both[0]["outside"]["sport"] == 46000 and both[1]["outside"]["sport"] != 46000
    verdicts = {c["verdict"]: c for c in truth["connections"]}
    assert verdicts["not_forwarded"]["translated"] is None and verdicts["not_forwarded"]["rewrites"] == []
    assert verdicts["not_forwarded"]["service"]["backend"] == {"address": "198.51.100.53", "port": 53}
    other = verdicts["reply_other_path"]["packets"]
    assert other["reply_outside"] == 0 and other["reply_inside"] > 0


def test_nodeport_inbound(written: dict[str, Written]) -> None:
    truth, inside, outside = written["nodeport_inbound"]
    conns = rows(truth)
    cluster = conns[("tcp", ("tcp", "198.51.100.20", 43765, NAT_IP, 30080))]
    local = conns[("tcp", ("tcp", "198.51.100.20", 51909, NAT_IP, 30081))]
    assert cluster["initiator"] == local["initiator"] == "outside"
    assert cluster["inside"]["src"] == BRIDGE and cluster["inside"]["dst"] == "10.244.0.10"
    assert cluster["rewrites"] == ["src", "sport", "dst", "dport"]
    assert local["inside"] == {"src": "198.51.100.20", "sport": 51909, "dst": "10.244.0.10", "dport": 8080}
    assert local["rewrites"] == ["dst", "dport"]
    # The outside capture sees the original tuple first, the inside the translated one.
    for conn in (cluster, local):
        first_out = next(r for r in outside.recs if r.tuple5 == as_tuple("tcp", conn["outside"]))
        first_in = next(r for r in inside.recs if r.tuple5 == as_tuple("tcp", conn["inside"]))
        assert first_out.ts_ns < first_in.ts_ns and first_out.l3.data.flags == dpkt.tcp.TH_SYN
        assert first_out.l3.ttl - first_in.l3.ttl == 1


def test_nodeport_outcomes(written: dict[str, Written]) -> None:
    truth, _inside, _outside = written["nodeport_outcomes"]
    p = {c["verdict"] + "/" + c["proto"]: c for c in truth["connections"]}
    assert p["not_forwarded/tcp"]["inside"] is None and p["not_forwarded/tcp"]["translated"] is None
    counts = {k: tuple(c["packets"].values()) for k, c in p.items()}
    # (egress_inside, egress_outside, reply_outside, reply_inside): the client retransmits its SYN once.
    assert counts["not_forwarded/tcp"] == (0, 2, 0, 0)
    assert counts["no_reply/tcp"] == (2, 2, 0, 0)
    assert counts["reply_dropped/tcp"] == (2, 2, 0, 2)


def test_fin_leak(written: dict[str, Written]) -> None:
    truth, _inside, outside = written["fin_leak"]
    leaky = [c for c in truth["connections"] if "fates" in c]
    assert [c["fates"]["leaked"] for c in leaky] == [7, 3]
    for conn in leaky:
        leaked = [r for r in outside.recs if r.tuple5 == as_tuple("tcp", conn["inside"])]
        assert len(leaked) == conn["fates"]["leaked"]
        assert all(r.l3.data.flags == dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK and r.l3.ttl == 63 for r in leaked)
        assert leaked[0].ts_ns - leaked[-1].ts_ns < 0
        assert conn["verdict"] == "translated" and conn["fates"]["crossed"] > 0


def test_invalid_reply_and_node_rst(written: dict[str, Written]) -> None:
    truth, _inside, outside = written["invalid_reply"]
    for conn in (c for c in truth["connections"] if "fates" in c):
        f = conn["fates"]
        assert (f["outside_only"], f["node_generated"], f["leaked"], f["inside_only"]) == (1, 1, 0, 0)
        t = as_tuple("tcp", conn["outside"])
        resets = [r for r in outside.recs if r.tuple5 == t and r.l3.data.flags == dpkt.tcp.TH_RST]
        (node_rst,) = resets
        oow = [r for r in outside.recs if r.tuple5 == reverse(t) and len(r.l3.data.data) == 100]
        assert len(oow) == 1 and node_rst.l3.data.seq == oow[0].l3.data.ack
        assert node_rst.l3.ttl == 64 and node_rst.l3.id == 0
        assert 0 < node_rst.ts_ns - oow[0].ts_ns < 100_000


def test_alg_shifts(written: dict[str, Written]) -> None:
    truth, _inside, outside = written["ftp_alg"]
    # check_alg has checked the constant per connection; here: the shifts the scenario was built for.
    ports = {}
    for conn in truth["connections"]:
        t = as_tuple("tcp", conn["outside"])
        ports[conn["original"]["sport"]] = [
            bytes(r.l3.data.data) for r in outside.recs
            if r.tuple5 in (t, reverse(t)) and bytes(r.l3.data.data)[:4] in (b"PORT", b"227 ")
        ]
    assert ports[43756][0].startswith(b"PORT 203,0,113,2,")
    assert ports[40021][0].startswith(b"227 Entering Passive Mode (203,0,113,2,")


def test_rejects_what_is_not_modelled() -> None:
    pod, node = "10.244.0.10", NAT_IP
    api = Service("ClusterIP", "10.96.0.1", 443, (("198.51.100.10", 6443),))
    np = Service("NodePort", node, 30080, ((pod, 8080),))
    bad = [
        (Flow("tcp", pod, 40000, "10.96.0.1", 443, service=api, backend=1), "backend"),
        (Flow("tcp", pod, 40000, "10.96.0.2", 443, service=api), "Service's address"),
        (Flow("tcp", "10.1.2.3", 40000, node, 30080, service=np), "documentation"),
        (Flow("tcp", "198.51.100.9", 40000, node, 30080, service=np, leak=2), "pod-initiated"),
        (Flow("tcp", pod, 40000, "198.51.100.9", 80, alg=True), "port 21"),
        (Flow("udp", pod, 40000, "198.51.100.9", 80, leak=1), "translated TCP"),
        (Flow("tcp", pod, 40000, "198.51.100.9", 80, leak=1, invalid_reply=True), "idle out"),
    ]
    for flow, match in bad:
        with pytest.raises(ValueError, match=match):
            simulate(Scenario("bad", (flow,)))
    local = Service("NodePort", node, 30081, ((pod, 8080),), external_traffic_policy="Local")
    local2 = dataclasses.replace(local, port=30082)
    twice = (
        Flow("tcp", "198.51.100.9", 40000, node, 30081, service=local),
        Flow("tcp", "198.51.100.9", 40000, node, 30082, service=local2),
    )
    with pytest.raises(ValueError, match="inside tuple"):
        simulate(Scenario("bad", twice))


@contextlib.contextmanager
def scenario_files(scenario: Scenario) -> Iterator[tuple[dict[str, Any], Capture, Capture, Path]]:
    """The scenario's truth and captures, in a folder removed afterwards (hypothesis runs many examples: the
    folders were left in /tmp, ~40 a run)."""
    with tempfile.TemporaryDirectory(prefix="natproof-model-") as name:
        tmp = Path(name)
        truth = write_scenario(scenario, tmp)
        yield truth, read_capture(tmp / "inside.pcap"), read_capture(tmp / "outside.pcap"), tmp


@settings(deadline=None)
@given(model_scenarios())
def test_random_model_scenarios_agree_with_truth(scenario: Scenario) -> None:
    with scenario_files(scenario) as (truth, inside, outside, _tmp):
        check_capture_pair(scenario, truth, inside, outside)


# What correlate/2 must recover for every connection (docs/model.md's per-connection contract).
RECOVERED = ("initiator", "original", "translated", "rewrites", "verdict")


def assert_recovered(truth: dict[str, Any], doc: dict[str, Any]) -> None:
    got = {(c["proto"], as_tuple(c["proto"], c.get("original"))): c for c in doc["connections"]}
    want = rows(truth)
    assert set(got) == set(want)
    for key, t in want.items():
        n = got[key]
        expected = {k: t[k] for k in RECOVERED} | ({"fates": t["fates"]} if "fates" in t else {})
        assert {k: n.get(k) for k in expected} == expected, key


@pytest.mark.parametrize("name", sorted(MODEL_SCENARIOS))
def test_correlate_recovers_named_model_scenarios(name: str, tmp_path: Path) -> None:
    import natproof

    truth = write_scenario(MODEL_SCENARIOS[name], tmp_path)
    doc = natproof.correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap").to_dict()
    assert_recovered(truth, doc)


@settings(deadline=None)
@given(model_scenarios())
def test_property_correlate_recovers_exactly_the_generated_truth(scenario: Scenario) -> None:
    import natproof

    with scenario_files(scenario) as (truth, _inside, _outside, tmp):
        try:
            doc = natproof.correlate(tmp / "inside.pcap", tmp / "outside.pcap").to_dict()
        except natproof.CaptureError as exc:
            # A capture with no packet at all (every flow lost before it) is refused, as documented.
            assert "empty capture" in str(exc)
            assert all(c["verdict"] in ("not_forwarded", "internal") for c in truth["connections"])
            return
        except natproof.InputError as exc:
            # Nothing crossed and the two captures' packets are apart in time: a clock offset cannot be told from
            # traffic that never crossed, so natproof asks for --clock-offset (documented).
            assert "do not overlap in time" in str(exc)
            assert all(c["verdict"] in ("not_forwarded", "internal") for c in truth["connections"])
            return
        assert_recovered(truth, doc)
