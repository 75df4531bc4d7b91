"""The flow-log observation point on captures/double-nat (a real-kernel run): the join against the gateway kernel's
conntrack record, who from the gateway's public tuple to the pod, and the record generator's formats agreeing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

import natproof
from natproof.cli import main
from natproof.flowlogs import (
    EVIDENCE_NONE,
    EVIDENCE_PACKETS,
    EVIDENCE_UNIQUE,
    evidence_ambiguous,
    join_nat_gateway,
    node_tuples,
    node_tuples_from_conntrack,
    node_tuples_from_result,
    parse_nat_gateway,
    read_flow_logs,
)
from natproof.flowlogs.who import who_via_gateway

CASE = Path(__file__).resolve().parent.parent / "captures" / "double-nat"
FLOWLOGS = CASE / "flowlogs"
pytestmark = pytest.mark.skipif(not (FLOWLOGS / "custom.log").is_file(), reason="captures/double-nat not recorded")

FORMS = {
    "default.log.gz": {},
    "custom.log": {},
    "custom.parquet": {},
    "cloudwatch.log": {"fields": "cloudwatch-format.txt"},
}
"""Each delivery form of the same records, with what reading it needs."""


def gateway() -> natproof.flowlogs.NatGateway:
    return parse_nat_gateway((CASE / "gateway" / "nat-gateway.txt").read_text())


def read(form: str) -> natproof.flowlogs.FlowLog:
    kw = {k: (FLOWLOGS / v).read_text() for k, v in FORMS[form].items()}
    return read_flow_logs(FLOWLOGS / form, **kw)


def gateway_truth() -> list[dict]:
    return json.loads((CASE / "gateway" / "truth.json").read_text())["connections"]


def truth_tuples() -> pl.DataFrame:
    """The node tuples the gateway's kernel saw (its conntrack original tuples), untimed."""
    return node_tuples([(c["proto"], c["inside"]["src"], c["inside"]["sport"], c["inside"]["dst"], c["inside"]["dport"])
                        for c in gateway_truth()])


@pytest.mark.parametrize("form", sorted(FORMS))
def test_the_gateway_mapping_from_flow_logs_is_the_gateway_kernels(form: str) -> None:
    truth = gateway_truth()
    joined = join_nat_gateway(truth_tuples(), read(form), [gateway()]).to_dicts()
    same_counts: dict[tuple, int] = {}
    for c in truth:
        key = (c["proto"], c["inside"]["dst"], c["inside"]["dport"])
        same_counts[key] = same_counts.get(key, 0) + 1
    for c, j in zip(truth, joined, strict=True):
        public = (c["outside"]["src"], c["outside"]["sport"])
        candidates = {(g["gateway_public"], g["sport"]) for g in j["gateway_tuples"]}
        # The kernel's mapping is always among the candidates; unique ones are exactly it.
        assert public in candidates, (c, j["why"])
        if j["evidence"] == EVIDENCE_UNIQUE:
            assert (j["gateway_public"], j["gateway_sport"]) == public
        else:
            assert j["evidence"] == evidence_ambiguous(len(candidates)) and j["gateway_sport"] is None
    # The design: TCP connections differ in size (unique); the two same-sized datagrams in one interval do not.
    evidence = {(j["proto"], j["src"]): j["evidence"] for j in joined}
    assert {e for (p, _), e in evidence.items() if p == "tcp"} == {EVIDENCE_UNIQUE}
    assert {e for (p, _), e in evidence.items() if p == "udp"} == {evidence_ambiguous(2)}
    # The gateway rewrote the port one node had kept, and the flow log says which node got which.
    rewritten = [j for j, c in zip(joined, truth, strict=True) if c["outside"]["sport"] != c["inside"]["sport"]
                 and j["proto"] == "tcp"]
    assert len(rewritten) == 1 and rewritten[0]["evidence"] == EVIDENCE_UNIQUE


def test_node_tuples_from_the_nodes_own_record_and_captures_join_alike() -> None:
    log = read("custom.log")
    from_ct = node_tuples_from_conntrack((CASE / "conntrack.log").read_text().splitlines(), "node1")
    result = natproof.correlate(CASE / "inside.pcap", CASE / "outside.pcap")
    from_pcap = node_tuples_from_result(result)
    a = join_nat_gateway(from_ct, log, [gateway()]).select("proto", "src", "sport", "evidence", "gateway_sport")
    b = join_nat_gateway(from_pcap, log, [gateway()]).select("proto", "src", "sport", "evidence", "gateway_sport")
    assert sorted(a.rows()) == sorted(b.rows()) and a.height == 5
    # Timed tuples (first/last packet of node1's record) give the same answers as the untimed kernel tuples.
    truth = {(c["proto"], c["inside"]["src"], c["inside"]["sport"]): c["outside"]["sport"] for c in gateway_truth()}
    for proto, src, sport, evidence, gport in a.rows():
        assert evidence in (EVIDENCE_UNIQUE, evidence_ambiguous(2))
        assert gport in (None, truth[(proto, src, sport)])


def test_who_walks_from_the_public_tuple_to_the_pod() -> None:
    truth = gateway_truth()
    node = json.loads((CASE / "truth.json").read_text())["connections"]
    pods = {(c["outside"]["src"], c["outside"]["sport"], c["outside"]["dst"], c["outside"]["dport"]): c["inside"]
            for c in node}
    result = natproof.correlate(CASE / "inside.pcap", CASE / "outside.pcap")
    log = read("custom.log")
    for c in truth:
        answer = who_via_gateway(log, [gateway()], c["outside"]["src"], c["outside"]["sport"], result=result)
        assert answer.found
        key = (c["inside"]["src"], c["inside"]["sport"], c["inside"]["dst"], c["inside"]["dport"])
        (path,) = [p for p in answer.paths if (p.node["address"], p.node["port"]) == key[:2]]
        if key in pods:  # node1: the captures close the chain to the pod, with packets
            assert path.pod == {"address": pods[key]["src"], "port": pods[key]["sport"]}
            assert path.hops[-1].evidence == EVIDENCE_PACKETS and path.missing == ()
        else:  # node2: nobody captured it; the answer says which link is missing and what would close it
            assert path.pod is None and [m.link for m in path.missing] == ["node -> pod"]
            assert "10.0.1.11" in path.missing[0].close_with
        assert len(answer.paths) == (2 if c["proto"] == "udp" else 1)


def test_who_cli_json_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    c = next(c for c in gateway_truth() if c["proto"] == "tcp" and c["inside"]["src"] == "10.0.1.10")
    public = f"{c['outside']['src']}:{c['outside']['sport']}"
    common = ["--flow-log", str(FLOWLOGS / "default.log.gz"), "--nat-gateway", str(gateway()), "--format", "json"]
    assert main(["who", public, str(CASE / "inside.pcap"), str(CASE / "outside.pcap"), *common]) == 0
    doc = json.loads(capsys.readouterr().out)
    (path,) = doc["paths"]
    assert path["evidence"] == EVIDENCE_UNIQUE and path["pod"]["port"] == c["inside"]["sport"]
    assert [h["observation_point"].split(" (")[0] for h in path["hops"]] == [
        "far end", "NAT gateway public side", "NAT gateway private side", "node eth0", "pod side"]
    # Without captures: the gateway hop alone, and the missing link named.
    assert main(["who", public, *common]) == 0
    (path,) = json.loads(capsys.readouterr().out)["paths"]
    assert path["pod"] is None and path["missing"][0]["link"] == "node -> pod"
    # With the node's conntrack record instead of captures: the kernel record closes it.
    assert main(["who", public, *common, "--conntrack", str(CASE / "conntrack.log")]) == 0
    (path,) = json.loads(capsys.readouterr().out)["paths"]
    assert path["hops"][-1]["evidence"] == "kernel record" and path["pod"]["port"] == c["inside"]["sport"]
    # A port the gateway never used then: exit 1, the first link named as missing.
    assert main(["who", f"{c['outside']['src']}:9", *common]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["paths"] == [] and doc["missing"][0]["link"] == "far end -> NAT gateway"


@pytest.mark.parametrize("node_evidence", ["captures", "conntrack"])
def test_who_through_the_gateway_names_the_pod_in_the_table_as_in_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], node_evidence: str) -> None:
    # A new user's trial: with --pods, the JSON's path named the pod and the table did not; from the node's
    # conntrack record instead of its captures, nothing named it at all.
    c = next(c for c in gateway_truth() if c["proto"] == "tcp" and c["inside"]["src"] == "10.0.1.10")
    node = json.loads((CASE / "truth.json").read_text())["connections"]
    pod = next(x for x in node if x["outside"] == c["inside"])["inside"]["src"]
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps({"kind": "Pod", "metadata": {"name": "web", "namespace": "shop"}, "spec": {},
                                "status": {"podIP": pod, "podIPs": [{"ip": pod}]}}))
    public = f"{c['outside']['src']}:{c['outside']['sport']}"
    node = ([str(CASE / "inside.pcap"), str(CASE / "outside.pcap")] if node_evidence == "captures"
            else ["--conntrack", str(CASE / "conntrack.log")])
    args = ["who", public, *node, "--flow-log", str(FLOWLOGS / "default.log.gz"), "--nat-gateway", str(gateway()),
            "--pods", str(pods)]
    assert main([*args, "--format", "json"]) == 0
    (path,) = json.loads(capsys.readouterr().out)["paths"]
    assert path["pod"]["name"] == "shop/web"
    assert main([*args, "--format", "table"]) == 0
    assert f"pod {pod}:{path['pod']['port']} shop/web (" in capsys.readouterr().out


def test_who_cli_refuses_what_it_cannot_answer(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--flow-log", str(FLOWLOGS / "custom.log"), "--nat-gateway", str(gateway())]
    assert main(["who", "10.0.1.10:40000", *common]) == 2
    assert "is not a --nat-gateway address" in capsys.readouterr().err
    # One capture alone must hold several interfaces (tcpdump -i any): this one is one interface.
    assert main(["who", "203.0.113.20:40000", str(CASE / "inside.pcap")]) == 2
    assert "a capture of one interface (" in capsys.readouterr().err
    assert main(["who", "203.0.113.20:40000"]) == 2
    assert "or --flow-log with --nat-gateway" in capsys.readouterr().err


def test_who_on_a_node_tuple_adds_the_gateway_hop(capsys: pytest.CaptureFixture[str]) -> None:
    c = next(c for c in gateway_truth() if c["proto"] == "tcp" and c["inside"]["src"] == "10.0.1.10")
    node = f"{c['inside']['src']}:{c['inside']['sport']}"
    assert main(["who", node, str(CASE / "inside.pcap"), str(CASE / "outside.pcap"), "--flow-log",
                 str(FLOWLOGS / "custom.parquet"), "--nat-gateway", str(gateway()), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (hop,) = doc["nat_gateway_hops"]
    assert hop["evidence"] == EVIDENCE_UNIQUE and hop["gateway_sport"] == c["outside"]["sport"]


def test_flowlog_cli_joins_captures_result_and_conntrack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = tmp_path / "result.json"
    assert main(["correlate", str(CASE / "inside.pcap"), str(CASE / "outside.pcap"), "-o", str(result),
                 "--format", "json"]) == 0
    capsys.readouterr()
    answers = []
    for extra in (["--captures", str(CASE / "inside.pcap"), str(CASE / "outside.pcap")], ["--result", str(result)],
                  ["--conntrack", str(CASE / "conntrack.log")]):
        assert main(["flowlog", str(FLOWLOGS / "custom.log"), "--nat-gateway", str(gateway()), *extra,
                     "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        answers.append(sorted((j["src"], j["sport"], j["evidence"], j["gateway_sport"]) for j in doc["join"]))
        assert doc["gateway_interfaces"][0]["gateway_private"] == gateway().private
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 5
    assert main(["flowlog", str(FLOWLOGS / "custom.log"), "--result", str(CASE / "truth.json")]) == 2
    assert "not a natproof.correlate document" in capsys.readouterr().err


def test_the_generator_writes_one_set_of_records_in_every_form(tmp_path: Path) -> None:
    from natproof.testing.flowlogs import CUSTOM_FORMAT, records_from_captures, write_parquet, write_text

    records = records_from_captures(CASE / "gateway" / "inside.pcap", CASE / "gateway" / "outside.pcap",
                                    gateway_private="10.0.1.1", gateway_public="203.0.113.20", vpc="10.0.1.0/24")
    write_text(records, tmp_path / "a.log", CUSTOM_FORMAT)
    write_parquet(records, tmp_path / "a.parquet", CUSTOM_FORMAT)
    cols = ["srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets", "bytes", "start_s", "end_s",
            "pkt_srcaddr", "pkt_dstaddr", "tcp_flags", "flow_direction", "traffic_path"]
    text, parquet = (read_flow_logs(tmp_path / n).records.select(cols) for n in ("a.log", "a.parquet"))
    assert text.equals(parquet) and text.equals(records.select(cols))
    # The committed records are what the generator makes of the committed captures.
    assert read("custom.log").records.select(cols).equals(text)
    # Every packet of the gateway's two sides is in exactly one record, per direction of each side.
    _, inside = natproof.load_packets(CASE / "gateway" / "inside.pcap")
    ip4 = inside.filter((pl.col("ip_version") == 4) & pl.col("proto").is_in([6, 17]))
    private_side = records.filter(pl.col("srcaddr").is_in(["10.0.1.10", "10.0.1.11"])
                                  | pl.col("dstaddr").is_in(["10.0.1.10", "10.0.1.11"]))
    assert private_side["packets"].sum() == ip4.height
    assert private_side["bytes"].sum() == ip4["ip_len"].sum()


def test_no_candidate_for_a_node_tuple_that_never_reached_the_gateway() -> None:
    log = read("custom.log")
    (j,) = join_nat_gateway(node_tuples([("tcp", "10.0.1.10", 1, "198.51.100.10", 80)]), log, [gateway()]).to_dicts()
    assert j["evidence"] == EVIDENCE_NONE and j["why"].startswith("no record of tcp 10.0.1.10:1")


BAD_CONNTRACK = {
    "garbage": bytes(range(256)) * 4,
    "empty": b"",
    "plain text": b"this is not a conntrack record\n",
    "an XML DOCTYPE": b'<?xml version="1.0"?>\n<!DOCTYPE conntrack [<!ENTITY a "b">]>\n<conntrack>&a;</conntrack>\n',
    "a truncated gzip file": gzip.compress((CASE / "conntrack.log").read_bytes())[:60],
}


@pytest.mark.parametrize("kind", [*BAD_CONNTRACK, "/dev/null"])
def test_a_bad_conntrack_record_is_refused_alike_with_a_flow_log(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 kind: str) -> None:
    """flowlog --conntrack and who --flow-log --conntrack read the node's record as correlate and who --conntrack
    do, with their checks: one line and exit 2, not an empty join and 'no conntrack record of node ... given'."""
    if kind == "/dev/null":
        path = "/dev/null"
    else:
        (tmp_path / "ct.log").write_bytes(BAD_CONNTRACK[kind])
        path = str(tmp_path / "ct.log")
    assert main(["who", "10.0.1.10:39264", "--conntrack", path]) == 2
    refused = capsys.readouterr().err
    assert refused.startswith(f"natproof: error: {path}: ") and refused.count("\n") == 1
    public = next(f"{c['outside']['src']}:{c['outside']['sport']}" for c in gateway_truth() if c["proto"] == "tcp")
    flow_log = ["--flow-log", str(FLOWLOGS / "custom.log"), "--nat-gateway", str(gateway())]
    for args in (["flowlog", str(FLOWLOGS / "custom.log"), "--nat-gateway", str(gateway()), "--conntrack", path],
                 ["who", public, *flow_log, "--conntrack", path]):
        assert main([*args, "--format", "json"]) == 2
        out, err = capsys.readouterr()
        assert (out, err) == ("", refused)


def test_the_library_reads_a_conntrack_record_as_a_file_of_it() -> None:
    """node_tuples_from_conntrack and who_via_gateway take a record, a path or lines alike, refused alike."""
    from natproof.conntrack import read_conntrack

    path = CASE / "conntrack.log"
    lines = path.read_text().splitlines()
    by_record = node_tuples_from_conntrack(read_conntrack(path))
    assert by_record.drop("source").equals(node_tuples_from_conntrack(lines).drop("source"))
    assert by_record.equals(node_tuples_from_conntrack(str(path)))
    assert by_record["source"][0].startswith(f"{path} line ")
    with pytest.raises(natproof.InputError, match=r"^node1: no conntrack entry in 1 line\(s\)"):
        node_tuples_from_conntrack(["not a conntrack line"], "node1")
    c = next(c for c in gateway_truth() if c["proto"] == "tcp" and c["inside"]["src"] == "10.0.1.10")
    log = read("custom.log")
    for record in ((str(path), lines), read_conntrack(path), str(path)):
        answer = who_via_gateway(log, [gateway()], c["outside"]["src"], c["outside"]["sport"], conntrack=[record])
        (p,) = answer.paths
        assert p.hops[-1].evidence == "kernel record" and p.pod["port"] == c["inside"]["sport"]
        assert p.hops[-1].source.startswith(f"{path}:")
    with pytest.raises(natproof.InputError, match=r"^node1: empty file"):
        who_via_gateway(log, [gateway()], c["outside"]["src"], c["outside"]["sport"], conntrack=[("node1", [])])


NO_GATEWAY = ("no NAT gateway given, and none can be found in the flow log: its format has no pkt-dstaddr (the "
              "default format's case), which is how a NAT gateway's private side shows")
LOOK_UP_A_NODE = "the node's captures INSIDE OUTSIDE (or --conntrack FILE) to look up a node or pod tuple"


@pytest.mark.parametrize(("form", "nat_gateway", "said"), [
    # Nothing given, nothing to find in the default format: say so, and ask for the addresses (not "()").
    ("default.log.gz", None, f"203.0.113.20:32074: {NO_GATEWAY}: pass --nat-gateway PRIVATE=PUBLIC to look up a "
                             f"gateway's public address, or {LOOK_UP_A_NODE}"),
    # Found from pkt-dstaddr, never given: named as found, with its public address unknown to the records.
    ("custom.log", None, "203.0.113.20:32074 is not the address of a NAT gateway found in the flow log (10.0.1.1, "
                         "from pkt-dstaddr; a public address is in no record): pass --nat-gateway 10.0.1.1=PUBLIC to "
                         f"look up the gateway's public address, or {LOOK_UP_A_NODE}"),
    ("custom.log", "10.0.1.1=203.0.113.21", "203.0.113.20:32074 is not a --nat-gateway address "
                                            "(10.0.1.1=203.0.113.21): give the gateway's public address, or "
                                            f"{LOOK_UP_A_NODE}"),
])
def test_who_says_which_gateways_it_knows_of(capsys: pytest.CaptureFixture[str], form: str, nat_gateway: str | None,
                                             said: str) -> None:
    given = [] if nat_gateway is None else ["--nat-gateway", nat_gateway]
    assert main(["who", "203.0.113.20:32074", "--at", "16:19:40", "--flow-log", str(FLOWLOGS / form), *given]) == 2
    assert capsys.readouterr().err == f"natproof: error: {said}\n"


def test_flowlog_says_why_no_gateway_was_found(capsys: pytest.CaptureFixture[str]) -> None:
    path = FLOWLOGS / "default.log.gz"
    assert main(["flowlog", str(path), "--conntrack", str(CASE / "conntrack.log")]) == 2
    assert capsys.readouterr().err == (f"natproof: error: {path}: {NO_GATEWAY}: pass --nat-gateway PRIVATE=PUBLIC (aws "
                                       "ec2 describe-nat-gateways)\n")
    assert main(["flowlog", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["port_usage"]["notes"] == [
        f"{NO_GATEWAY} (pass --nat-gateway PRIVATE=PUBLIC)"]


@pytest.mark.parametrize("node_evidence", ["captures", "conntrack"])
def test_who_with_a_flow_log_and_no_gateway_is_refused_before_the_node_evidence_is_read(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, node_evidence: str) -> None:
    """The default format has no pkt-dstaddr, so no gateway can be found: who on a node tuple failed for want of
    --nat-gateway only once the captures had been correlated (or the record looked up). Same line, before."""
    import natproof.lookup

    def never(*args: object, **kwargs: object) -> None:
        pytest.fail("the node's evidence was read")

    monkeypatch.setattr(natproof, "correlate", never)
    monkeypatch.setattr(natproof.lookup, "who_kernel", never)
    node = ([str(CASE / "inside.pcap"), str(CASE / "outside.pcap")] if node_evidence == "captures"
            else ["--conntrack", str(CASE / "conntrack.log")])
    assert main(["who", "10.0.1.10:40000", *node, "--flow-log", str(FLOWLOGS / "default.log.gz"), "--format",
                 "json"]) == 2
    assert capsys.readouterr() == ("", "natproof: error: no NAT gateway given: pass --nat-gateway PRIVATE=PUBLIC (aws "
                                       "ec2 describe-nat-gateways)\n")


def test_flowlog_charts_without_a_gateway_say_why_none_is_drawn(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Dated records, but no gateway to chart the ports of: --charts wrote nothing and said nothing."""
    path, charts = FLOWLOGS / "default.log.gz", tmp_path / "charts"
    assert main(["flowlog", str(path), "--charts", str(charts), "--format", "json"]) == 0
    assert capsys.readouterr().err == (f"natproof: warning: {path}: no chart of the gateway's ports in use over time "
                                       f"to draw ({NO_GATEWAY} (pass --nat-gateway PRIVATE=PUBLIC)); none written to "
                                       f"{charts}\n")
    assert list(charts.iterdir()) == []
