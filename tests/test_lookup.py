"""Tests of natproof/lookup.py and `natproof who` on the real many-connections capture."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from natproof.check import capture_pair, load_truth
from natproof.cli import main
from natproof.correlate import correlate
from natproof.errors import InputError
from natproof.lookup import parse_time, who

CASE = Path(__file__).resolve().parent.parent / "captures" / "many-connections"


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return correlate(*capture_pair(CASE))


def test_who_names_the_pod_behind_every_sampled_outside_tuple(result) -> None:  # type: ignore[no-untyped-def]
    truth = load_truth(CASE / "truth.json")["connections"]
    conns = {(c["inside"]["src"], c["inside"]["sport"]): c for c in result.to_dict()["connections"]}
    for t in random.Random(7).sample(truth, 25):
        o = t["outside"]
        mid = (conns[(t["inside"]["src"], t["inside"]["sport"])]["first_seen"]
               + conns[(t["inside"]["src"], t["inside"]["sport"])]["last_seen"]) / 2
        ans = who(result, f"{o['src']}:{o['sport']}", at=f"{mid:.6f}", window_s=0)
        assert ans.side == "outside"
        assert [(c["inside"]["src"], c["inside"]["sport"]) for c in ans.connections] == [
            (t["inside"]["src"], t["inside"]["sport"])]
        # And the other way: where did that pod's source port go?
        back = who(result, f"{t['inside']['src']}:{t['inside']['sport']}")
        assert back.side == "inside" and back.connections[0]["outside"] == t["outside"]


def test_time_outside_every_connection_gives_the_nearest(result) -> None:  # type: ignore[no-untyped-def]
    c = result.to_dict()["connections"][0]
    ans = who(result, f"{c['outside']['src']}:{c['outside']['sport']}", at=str(c["last_seen"] + 50), window_s=1)
    assert ans.connections == () and [n["conn"] for n in ans.nearest] == [0]


def test_who_finds_a_connection_by_the_tuple_of_its_other_mapping() -> None:
    # A flow mapped anew after idling is one connection with several legs on one side; its primary tuple is the
    # last mapping. The first mapping's tuple (the public port an abuse report of that moment names, the client
    # address the pod saw first) found nothing: "no connection used".
    root = Path(__file__).resolve().parent.parent
    for folder, endpoint, primary in ((root / "captures" / "udp-remap", "203.0.113.2:46807", "203.0.113.2:52490"),
                                      (root / "tests" / "variants" / "udp-idle-nodeport", "10.244.0.1:36985",
                                       "10.244.0.1:21091")):
        res = correlate(folder / "inside.pcap", folder / "outside.pcap")
        (found,) = who(res, endpoint).connections
        assert found["conn"] == 0 and found["roles"] == ["translated source (another mapping)"]
        assert who(res, endpoint).side == who(res, primary).side
        assert who(res, primary).connections[0]["roles"] == ["translated source"]


def test_who_with_one_capture_and_the_record_finds_a_flow_mapped_anew_by_either_mapping() -> None:
    # The capture after the NAT (the uplink for a pod's socket, the pod side for a NodePort client) and the
    # kernel's record: the flow's two mappings are one connection, found by either tuple as with two captures (it
    # was two connections, each found by its own tuple only).
    from natproof.correlate import correlate_one

    root = Path(__file__).resolve().parent.parent
    for folder, side, endpoint, primary in (
            (root / "captures" / "udp-remap", "outside", "203.0.113.2:46807", "203.0.113.2:52490"),
            (root / "tests" / "variants" / "udp-idle-nodeport", "inside", "10.244.0.1:36985", "10.244.0.1:21091")):
        res = correlate_one(folder / f"{side}.pcap", folder / "conntrack.log")
        both = correlate(folder / "inside.pcap", folder / "outside.pcap")
        (found,) = who(res, endpoint).connections
        (ref,) = who(both, endpoint).connections
        assert found["roles"] == ref["roles"] == ["translated source (another mapping)"]
        assert (found["original"], found["translated"]) == (ref["original"], ref["translated"])
        assert [c["conn"] for c in who(res, primary).connections] == [found["conn"]]
        assert who(res, primary).connections[0]["roles"] == ["translated source"]
        assert who(res, endpoint).side == side


def test_who_and_correlate_give_every_connection_the_same_times(result) -> None:  # type: ignore[no-untyped-def]
    # A trial: `who` (one row through polars) and `correlate` (2,100 rows) wrote one connection's first_seen a
    # float step apart (...2848773 and ...2848775): polars divides a long column differently from one value.
    doc = {(c["outside"]["src"], c["outside"]["sport"]): c for c in result.to_dict()["connections"]}
    for key, c in random.Random(3).sample(sorted(doc.items()), 40):
        found = who(result, f"{key[0]}:{key[1]}").to_dict()["connections"]
        assert [(f["first_seen"], f["last_seen"]) for f in found] == [(c["first_seen"], c["last_seen"])]


def test_epoch_seconds_is_one_float_in_python_and_polars() -> None:
    import polars as pl

    from natproof.contracts import epoch_seconds
    from natproof.result import seconds_expr

    ns = random.Random(6).sample(range(1_500_000_000_000_000_000, 2_000_000_000_000_000_000), 200_000)
    got = pl.DataFrame({"ns": ns}, schema={"ns": pl.Int64}).select(seconds_expr("ns"))["ns"].to_list()
    assert got == [epoch_seconds(n) for n in ns]
    assert got[:3] == [pl.DataFrame({"ns": [n]}).select(seconds_expr("ns")).item() for n in ns[:3]]


def test_parse_time_forms() -> None:
    day = 1_795_500_362_369_528_800  # 2026-11-24T06:06:02Z
    assert parse_time("1795500362.5") == 1_795_500_362_500_000_000
    assert parse_time("2026-11-24T06:06:02Z") == 1_795_500_362 * 10**9
    assert parse_time("2026-11-24T08:06:02.25+02:00") == 1_795_500_362_250_000_000
    assert parse_time("06:06:02", day) == 1_795_500_362 * 10**9
    with pytest.raises(InputError, match="not a time"):
        parse_time("yesterday")


@pytest.mark.parametrize(("text", "seconds"), [
    ("06:06:02", 1_795_500_362), ("06:06", 1_795_500_360), ("6:06:02", 1_795_500_362),
    ("06:06:02.25", 1_795_500_362.25),  # seconds; compared in ns below
    # A time of day with a zone, as ISO-8601's time part: refused while "2026-11-24T06:06:02Z" was taken.
    ("06:06:02Z", 1_795_500_362), ("06:06:02z", 1_795_500_362), ("06:06Z", 1_795_500_360),
    ("08:06:02+02:00", 1_795_500_362), ("08:06:02+0200", 1_795_500_362), ("01:06:02.5-05:00", 1_795_500_362.5),
    ("2026-11-24T06:06:02z", 1_795_500_362), ("2026-11-24 06:06:02Z", 1_795_500_362),
])
def test_parse_time_a_time_of_day_in_every_form_the_help_names(text: str, seconds: float) -> None:
    day = 1_795_500_362_369_528_800  # 2026-11-24T06:06:02Z
    assert parse_time(text, day) == round(seconds * 4) * 250_000_000


@pytest.mark.parametrize("text", ["25:00", "06:06:02 Z", "06:61", "06:06:02+2", "noon"])
def test_parse_time_refuses_what_is_no_time_and_names_the_forms(text: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_time(text, 1_795_500_362_369_528_800)
    assert str(exc.value) == f"at={text!r}{NOT_A_TIME}"


@pytest.mark.parametrize("command", ["who", "fleet-who"])
def test_the_help_of_at_names_the_forms_parse_time_takes(command: str) -> None:
    from click.testing import CliRunner

    from natproof.cli import cli

    help_text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
    assert "ISO-8601 (2026-11-24T14:02:10Z), or a time of day HH:MM[:SS[.ffffff]] on the captures' day; UTC unless " \
           "a zone is given (Z, +02:00)." in help_text
    day = 1_795_500_362_369_528_800
    assert parse_time("2026-11-24T14:02:10Z") == parse_time("14:02:10", day) == parse_time("16:02:10+02:00", day)


BASIC = CASE.parent / "basic"
NOT_NAMED = ("'default/pod1' is not ADDR:PORT ('default/pod1' is not an IP address, and there is no port; e.g. "
             "203.0.113.5:38472 or [2001:db8::1]:443); a pod or Service name needs ")
NOT_A_TIME = (": not a time (use epoch seconds, ISO-8601 such as 2026-11-24T14:02:10Z, or a time of day "
              "HH:MM[:SS[.ffffff]] on the captures' day; UTC unless a zone is given (Z, +02:00))")


@pytest.mark.parametrize(("query", "keywords", "options", "library", "command_line"), [
    ("203.0.113.2:1", {"at": "yesterday noon"}, ("--at", "yesterday noon"), f"at='yesterday noon'{NOT_A_TIME}",
     f"--at yesterday noon{NOT_A_TIME}"),
    ("203.0.113.2:1", {"at": "inf"}, ("--at", "inf"), "at='inf': not a time a capture can hold (epoch seconds "
     "between 0 and 9.2e9)", "--at inf: not a time a capture can hold (epoch seconds between 0 and 9.2e9)"),
    # The command's --clock is a choice, refused before who runs.
    ("203.0.113.2:1", {"clock": "uplink"}, None, "clock='uplink': inside or outside", "--clock uplink: inside or "
     "outside"),
    ("default/pod1", {}, (), f"{NOT_NAMED}a result named from kubectl JSON dumps (correlate's "
     "names=natproof.Names.load(...), or Names.name_result)", f"{NOT_NAMED}--pods and --services (kubectl JSON dumps)"),
])
def test_a_library_caller_is_told_whos_keywords(capsys: pytest.CaptureFixture[str], query: str,
                                                keywords: dict[str, str], options: tuple[str, ...] | None,
                                                library: str, command_line: str) -> None:
    """who() names its own keywords (at, clock) and how a result gets names to a Python caller, who has no --at or
    --pods; natproof who prints the same error with its options, as it always has."""
    with pytest.raises(InputError) as exc:
        who(correlate(*capture_pair(BASIC)), query, **keywords)
    assert (str(exc.value), exc.value.for_command_line()) == (library, command_line)
    if options is not None:
        code = main(["who", query, *map(str, capture_pair(BASIC)), *options])
        assert (code, capsys.readouterr().err) == (2, f"natproof: error: {command_line}\n")


def test_a_time_of_day_needs_a_date() -> None:
    with pytest.raises(InputError, match=r"^at='14:02:10': a time of day needs a capture to give the date$") as exc:
        parse_time("14:02:10")
    assert exc.value.for_command_line() == "--at 14:02:10: a time of day needs a capture to give the date"


def test_cli_who_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    truth = load_truth(CASE / "truth.json")["connections"][5]
    o = truth["outside"]
    code = main(["who", f"{o['src']}:{o['sport']}", *map(str, capture_pair(CASE)),
                 "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["connections"][0]["inside"] == truth["inside"]
    code = main(["who", "203.0.113.2:1", *map(str, capture_pair(CASE)), "--format", "table"])
    assert code == 1 and capsys.readouterr().out == "no connection used 203.0.113.2:1\n"
    code = main(["who", "not-an-endpoint", *map(str, capture_pair(CASE))])
    assert code == 2 and "is not ADDR:PORT" in capsys.readouterr().err


ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"
_NEW = re.compile(r"\[NEW\] ipv4 +\d+ (\w+) .*?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+) (?:\[UNREPLIED\] )?"
                  r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def kernel_new_events(case: Path) -> list[dict[str, tuple[str, int]]]:
    """The kernel's own record of each connection (conntrack -E NEW lines in kernel-record.txt): the original
    tuple's ends, and the translated ones read off the reply tuple (conntrack's reply src = translated dst)."""
    out = []
    for m in _NEW.finditer((case / "kernel-record.txt").read_text()):
        proto, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp = m.groups()
        out.append({"proto": proto, "orig_src": (osrc, int(osp)), "orig_dst": (odst, int(odp)),
                    "trans_src": (rdst, int(rdp)), "trans_dst": (rsrc, int(rsp))})
    return out


def _ends(c: dict, key: str) -> tuple[str, int] | None:
    end = c["ends"][key]
    return None if end is None else (end["address"], end["port"])


def test_who_finds_the_pod_behind_a_nodeport_in_the_kernel_record() -> None:
    case = CASES / "nodeport-inbound"
    result = correlate(*capture_pair(case))
    for nodeport in ("203.0.113.2:30080", "203.0.113.2:30081"):
        want = [e for e in kernel_new_events(case) if f"{e['orig_dst'][0]}:{e['orig_dst'][1]}" == nodeport]
        ans = who(result, nodeport)
        assert len(want) == 1 and len(ans.connections) == 1, nodeport
        (c,) = ans.connections
        assert ans.side == "outside" and c["initiator"] == "outside"
        assert c["roles"] == ["original destination (NodePort)"]
        assert _ends(c, "pod") == want[0]["trans_dst"] == ("10.244.0.10", 8080)
        assert _ends(c, "node") == want[0]["orig_dst"] and _ends(c, "peer") == want[0]["orig_src"]
        assert (c["translated"]["src"], c["translated"]["sport"]) == want[0]["trans_src"]
        assert c["service"] == {"type": "NodePort", "address": "203.0.113.2", "port": int(nodeport[-5:]),
                                "backend": {"address": "10.244.0.10", "port": 8080}}
    # The pod's own port: both inbound connections reached it, as their translated destination.
    ans = who(result, "10.244.0.10:8080")
    assert ans.side == "inside"
    assert [(c["roles"], _ends(c, "node")) for c in ans.connections] == [
        (["translated destination (backend)"], ("203.0.113.2", 30080)),
        (["translated destination (backend)"], ("203.0.113.2", 30081))]
    # externalTrafficPolicy=Cluster: the node MASQUERADEd the client to its bridge address; that port is found too.
    (masq,) = [e["trans_src"] for e in kernel_new_events(case) if e["orig_dst"] == ("203.0.113.2", 30080)]
    ans = who(result, f"{masq[0]}:{masq[1]}")
    assert [c["roles"] for c in ans.connections] == [["translated source"]]
    # Local: the client's address is kept, so it is the source of both tuples.
    ans = who(result, "198.51.100.20:51909")
    assert [c["roles"] for c in ans.connections] == [["original source", "translated source"]]


def test_who_names_the_backend_a_clusterip_chose_at_a_time() -> None:
    case = CASES / "clusterip-dnat"
    result = correlate(*capture_pair(case))
    kernel = [e for e in kernel_new_events(case) if e["orig_dst"] == ("10.96.0.1", 443)]
    every = who(result, "10.96.0.1:443")
    assert len(every.connections) == len(kernel) == 3 and every.side == "inside"
    for c, e in zip(every.connections, kernel, strict=True):
        assert (c["original"]["src"], c["original"]["sport"]) == e["orig_src"]
        assert c["roles"] == ["original destination (ClusterIP)"]
        assert _ends(c, "peer") == e["trans_dst"] == ("198.51.100.10", 6443)
        assert (c["service"]["backend"]["address"], c["service"]["backend"]["port"]) == e["trans_dst"]
        assert _ends(c, "node") == e["trans_src"]
    second = every.connections[1]
    mid = (second["first_seen"] + second["last_seen"]) / 2
    ans = who(result, "10.96.0.1:443", at=f"{mid:.6f}", window_s=0)
    assert [c["conn"] for c in ans.connections] == [second["conn"]]
    # The backend, seen from the node's outside: the translated destination of the same three connections.
    back = who(result, "198.51.100.10:6443")
    assert back.side == "outside" and [c["conn"] for c in back.connections] == [c["conn"] for c in every.connections]
    assert {r for c in back.connections for r in c["roles"]} == {"translated destination (backend)"}


@pytest.mark.parametrize("scenario", ["clusterip", "nodeport", "hairpin"])
def test_who_by_every_end_agrees_with_lab_truth(scenario: str) -> None:
    case = ROOT / "captures" / scenario
    result = correlate(*capture_pair(case))
    for t in load_truth(case / "truth.json")["connections"]:
        for tup, end, role in (("original", "src", "original source"), ("original", "dst", "original destination"),
                               ("translated", "src", "translated source"),
                               ("translated", "dst", "translated destination")):
            port = t[tup]["sport" if end == "src" else "dport"]
            ans = who(result, f"{t[tup][end]}:{port}")
            (c,) = [c for c in ans.connections if c["original"] == t["original"]]
            assert c["translated"] == t["translated"] and c["service"] == t["service"]
            assert any(r.startswith(role) for r in c["roles"]), (scenario, tup, end, c["roles"])
            if tup == "original" and end == "dst" and t["service"]:
                assert f"original destination ({t['service']['type']})" in c["roles"]
            if tup == "translated" and end == "dst" and t["service"]:
                assert "translated destination (backend)" in c["roles"]
                assert _ends(c, "pod" if t["initiator"] == "outside" else "peer") == (
                    t["service"]["backend"]["address"], t["service"]["backend"]["port"])


def test_who_in_hairpin_names_both_pods_and_the_bridge_port() -> None:
    case = ROOT / "captures" / "hairpin"
    result = correlate(*capture_pair(case))
    hair = [t for t in load_truth(case / "truth.json")["connections"] if t["outside"] is None]
    ans = who(result, "10.96.0.50:80")
    assert ans.side == "inside" and len(ans.connections) == len(hair) == 3
    for c, t in zip(ans.connections, hair, strict=True):
        assert _ends(c, "pod") == (t["original"]["src"], t["original"]["sport"])
        assert _ends(c, "node") == (t["translated"]["src"], t["translated"]["sport"])  # the bridge address
        assert _ends(c, "peer") == (t["translated"]["dst"], t["translated"]["dport"])
        assert "hairpin" in c["flags"] and c["outside"] is None


def test_cli_who_table_names_pod_node_service_and_backend(capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES / "nodeport-inbound"
    code = main(["who", "203.0.113.2:30080", *map(str, capture_pair(case)), "--format", "table"])
    lines = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert lines[0] == "203.0.113.2:30080: 1 connection (times UTC on the inside capture's clock, 2026-11-29)"
    assert lines[2].split() == ["#", "role", "proto", "pod", "node", "peer", "service", "backend", "seen", "verdict",
                                "frames"]
    assert lines[4].split() == ["0", "original", "destination", "(NodePort)", "tcp", "10.244.0.10:8080",
                                "203.0.113.2:30080", "198.51.100.20:43765", "NodePort", "203.0.113.2:30080",
                                "10.244.0.10:8080", "11:48:52.046-11:48:52.047", "translated", "in", "10,", "out", "4"]
    code = main(["who", "203.0.113.2:30080", *map(str, capture_pair(case)), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["side"] == "outside" and doc["connections"][0]["roles"] == [
        "original destination (NodePort)"]
    assert doc["connections"][0]["ends"]["pod"] == {"address": "10.244.0.10", "port": 8080}


@pytest.mark.parametrize(("endpoint", "problem"), [
    ("10.96.0.1", "no port"),
    ("10.96.0.1:99999", "port 99999 is out of range 0-65535"),
    ("pod-a:8080", "'pod-a' is not an IP address"),
    (":443", "no address"),
    ("10.96.0.1:https", "port 'https' is not a number"),
    # Found by a helper: ::1:443 was read as [::1]:443 (it is itself an address), a port in Arabic-Indic digits
    # as 443, and an address that is none as one missing its port.
    ("::1:443", "no port (an IPv6 address with a port goes in brackets)"),
    ("2001:db8::1:x", "an IPv6 address with a port goes in brackets"),
    ("10.96.0.1:\u0664\u0664\u0663", "port '\u0664\u0664\u0663' is not a number"),
])
def test_cli_who_bad_endpoint_is_one_line_exit_2(endpoint: str, problem: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["who", endpoint, *map(str, capture_pair(CASES / "clusterip-dnat"))])
    assert (code, capsys.readouterr().err) == (2, f"natproof: error: {endpoint!r} is not ADDR:PORT ({problem}; "
                                                  "e.g. 203.0.113.5:38472 or [2001:db8::1]:443)\n")


def test_an_address_that_is_none_is_not_called_one_missing_its_port() -> None:
    from natproof.lookup import parse_endpoint

    with pytest.raises(InputError, match=r"'999.1.1.1' is not an IP address, and there is no port;"):
        parse_endpoint("999.1.1.1", "--peer")
    with pytest.raises(InputError, match=r"^--expect-dnat: '' is not ADDR:PORT \(nothing given;"):
        parse_endpoint("", "--expect-dnat")


def test_cli_who_at_a_time_with_no_connection_shows_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["who", "10.96.0.1:443", *map(str, capture_pair(CASES / "clusterip-dnat")), "--window", "0"]
    code = main([*args, "--at", "11:44:04.52", "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["connections"] == [] and doc["side"] == "inside"
    assert [(c["original"]["sport"], c["ends"]["peer"]["port"]) for c in doc["nearest"]] == [(50438, 6443),
                                                                                             (50454, 6443)]
    code = main([*args, "--at", "11:44:04.524", "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and [c["original"]["sport"] for c in doc["connections"]] == [50454]
    code = main(["who", "10.96.0.99:443", *map(str, capture_pair(CASES / "clusterip-dnat")), "--format", "json"])
    assert code == 1 and json.loads(capsys.readouterr().out)["side"] is None


def test_who_at_a_time_on_the_outside_clock() -> None:
    # tests/cases/swapped-sides: the ISP-side clock runs 0.42 s ahead of the home side's. A time read off the
    # ISP side (an abuse report) finds the connection only on that clock.
    from natproof.correlate import correlate
    from natproof.lookup import who as lookup

    cases = Path(__file__).resolve().parent / "cases" / "swapped-sides"
    result = correlate(cases / "home-side.pcap", cases / "isp-side.pcap")
    outside_time = "20:43:02.100"  # while the connection ran, on the ISP side's clock
    on_inside = lookup(result, "203.0.113.71:4330", outside_time, window_s=0)
    on_outside = lookup(result, "203.0.113.71:4330", outside_time, window_s=0, clock="outside")
    assert on_inside.connections == () and on_outside.clock == "outside"
    (found,) = on_outside.connections
    assert found["original"]["src"] == "192.168.1.100" and found["original"]["sport"] == 4330
    assert on_outside.to_dict()["clock_offset_s"] == pytest.approx(0.42, abs=0.01)


@pytest.mark.parametrize(("text", "ns"), [
    # A zone of hours alone is ISO-8601's too: refused in a time of day while "2026-11-24T08:06:02+02" was taken.
    ("08:06:02.5+02", 1_795_500_362_500_000_000), ("01:06:02-05", 1_795_500_362_000_000_000),
    # To the nanosecond, as a capture's clock holds it: a fraction's seventh to ninth digits were dropped.
    ("06:06:02.123456789", 1_795_500_362_123_456_789), ("06:06:02.1234567", 1_795_500_362_123_456_700),
    ("2026-11-24T06:06:02.000000001Z", 1_795_500_362_000_000_001), ("06:06:02,25", 1_795_500_362_250_000_000),
    ("1795500362.123456789", 1_795_500_362_123_456_789), ("1795500362.5", 1_795_500_362_500_000_000),
])
def test_parse_time_takes_a_zone_of_hours_and_nanoseconds(text: str, ns: int) -> None:
    assert parse_time(text, 1_795_500_362_369_528_800) == ns


@pytest.mark.parametrize("text", ["06:06:02.1234567891", "1795500362.1234567891",
                                  "2026-11-24T06:06:02.1234567891Z"])
def test_parse_time_refuses_more_than_nanoseconds_rather_than_cut_them(text: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError) as exc:
        parse_time(text, 1_795_500_362_369_528_800)
    said = "10 digits after the second's point; a capture's clock holds nanoseconds (at most 9)"
    assert str(exc.value) == f"at={text!r}: {said}"
    assert exc.value.for_command_line() == f"--at {text}: {said}"


def test_who_warns_when_the_record_is_of_another_time(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A helper's trial: `who` on the pod side with basic's record a day later exited 1 with no hint why.
    record = tmp_path / "nextday.log"
    record.write_text(re.sub(r"^\[(\d+)\.", lambda m: f"[{int(m.group(1)) + 86400}.",
                             (BASIC / "conntrack.log").read_text(), flags=re.M))
    query = ["who", "203.0.113.2:37784", str(BASIC / "inside.pcap")]
    assert main([*query, "--conntrack", str(record)]) == 1
    err = capsys.readouterr().err
    assert f"the events of {record} (2026-11-25T" in err and "do not cover the capture's time (2026-11-24T" in err
    # The record of the capture's own time finds it, and says nothing of the kind.
    assert main([*query, "--conntrack", str(BASIC / "conntrack.log")]) == 0
    assert "do not cover" not in capsys.readouterr().err


REMAP = ROOT / "captures" / "udp-remap"


def _time_of_day(ns: int) -> str:
    """ns since the epoch as the time of day an abuse report gives (HH:MM:SS.ffffff, UTC)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%H:%M:%S.%f")


def test_who_with_one_capture_reads_a_time_of_day_on_that_capture() -> None:
    # A trial: the uplink capture and the record, `--at 09:26:08.7`, read the time on the inside capture's clock
    # (the default) that was never captured: 1970-01-01, "no connection used" the abuse report's port.
    # And the pod-side capture with --clock outside refused a time of day ("needs a capture to give the date").
    from natproof.correlate import correlate_one

    for side in ("outside", "inside"):
        res = correlate_one(REMAP / f"{side}.pcap", REMAP / "conntrack.log", side=side)
        (conn,) = who(res, "203.0.113.2:46807").connections
        at = _time_of_day(int(conn["first_seen"] * 1e9) + 50_000_000)
        day = getattr(res, side).first_ts_ns // 86_400_000_000_000
        for clock in (None, "inside", "outside"):  # one capture: one clock, whichever --clock names
            ans = who(res, "203.0.113.2:46807", at=at, window_s=1, clock=clock)
            assert ans.clock == side and ans.clock_offset_s == 0.0
            assert ans.at_ns is not None and ans.at_ns // 86_400_000_000_000 == day
            assert [c["conn"] for c in ans.connections] == [conn["conn"]]
            assert ans.connections[0]["ends"]["pod"]["address"] == conn["ends"]["pod"]["address"]


def test_cli_who_with_one_capture_says_whose_clock(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["who", "203.0.113.2:46807", str(REMAP / "outside.pcap"), "--side", "outside", "--conntrack",
            str(REMAP / "conntrack.log")]
    assert main([*args, "-q", "--format", "json"]) == 0
    conn = json.loads(capsys.readouterr().out)["connections"][0]
    at = _time_of_day(int(conn["first_seen"] * 1e9) + 50_000_000)
    assert main([*args, "-q", "--at", at, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["clock"] == "outside" and abs(doc["at"] - conn["first_seen"] - 0.05) < 1e-6
    assert main([*args, "--at", at, "--clock", "inside", "--format", "table"]) == 0
    out, err = capsys.readouterr()
    assert "(outside capture's clock, the only capture): 1 connection" in out.splitlines()[0]
    assert "inside capture" not in out and "the conntrack record's on the node's" in out
    assert ("--clock inside: no inside capture was given; TIME and the times shown are on the only capture's "
            "clock, the outside one") in err


def _leg_times(res, conn: dict, sport: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """First and last time (s, inside clock) of a connection's outside leg under source port SPORT, from its
    packets."""
    import polars as pl

    (leg,) = [g for g in conn["legs"] if g["observation_point"] == "outside" and g["tuple"]["sport"] == sport]
    pk = res.packets("outside").collect()
    leg_id = pk.filter(pl.col("frame_no") == leg["first_frame"])["conn_id"][0]
    ts = pk.filter(pl.col("conn_id") == leg_id)["ts_ns"]
    return ts.min() / 1e9 - res.clock_offset_s, ts.max() / 1e9 - res.clock_offset_s  # type: ignore[operator]


def test_who_at_a_time_matches_a_mapping_only_while_it_lived() -> None:
    # A trial: the flow's second public port (52490, its last mapping and the connection's translated tuple) was
    # reported in use at the time of its first packet, when 46807 was the mapping: the connection's span was used.
    res = correlate(REMAP / "inside.pcap", REMAP / "outside.pcap")
    (conn,) = who(res, "203.0.113.2:52490").to_dict()["connections"]
    first_a, last_a = _leg_times(res, conn, 46807)
    first_b, last_b = _leg_times(res, conn, 52490)
    assert last_a + 1 < first_b  # idled between the mappings
    early, late = f"{last_a + 0.06:.6f}", f"{first_b:.6f}"  # the trial's 09:26:08.7, and the second mapping's start
    assert [c["conn"] for c in who(res, "203.0.113.2:46807", at=early, window_s=0.5).connections] == [conn["conn"]]
    ans = who(res, "203.0.113.2:52490", at=early, window_s=0.5)
    assert ans.connections == () and [c["conn"] for c in ans.nearest] == [conn["conn"]]
    assert [c["conn"] for c in who(res, "203.0.113.2:52490", at=late, window_s=0).connections] == [conn["conn"]]
    assert who(res, "203.0.113.2:46807", at=late, window_s=0.5).connections == ()
    # Ends every leg has (the pod's source, the far end) keep the connection's whole span.
    assert who(res, f"{conn['original']['src']}:{conn['original']['sport']}", at=early, window_s=0).connections


def test_who_shows_the_span_of_the_mapping_that_matched() -> None:
    # `who` on the flow's first public port matched only while that mapping lived, yet its row's "seen" was the
    # whole connection's. The row keeps first_seen/last_seen (the connection) and adds the mapping's own span.
    import datetime as dt

    res = correlate(REMAP / "inside.pcap", REMAP / "outside.pcap")
    for port in (46807, 52490):
        (c,) = who(res, f"203.0.113.2:{port}").to_dict()["connections"]
        whole = res.to_dict()["connections"][c["conn"]]
        assert (c["first_seen"], c["last_seen"]) == (whole["first_seen"], whole["last_seen"])
        first, last = _leg_times(res, c, port)
        assert (c["leg_first_seen"], c["leg_last_seen"]) == (pytest.approx(first, abs=1e-6),
                                                             pytest.approx(last, abs=1e-6))
        assert c["last_seen"] - c["first_seen"] > 1 + (c["leg_last_seen"] - c["leg_first_seen"])
    # An end of every leg (the pod's source) was the tuple all along: no span of its own.
    (c,) = who(res, f"{c['original']['src']}:{c['original']['sport']}").to_dict()["connections"]
    assert c["leg_first_seen"] is None and c["leg_last_seen"] is None
    from natproof.cli import _plain_text, _who_table

    answer = who(res, "203.0.113.2:46807")
    out = _plain_text(_who_table("who", answer.connections))  # what `natproof who --format table` prints

    def hms(s: float) -> str:
        return dt.datetime.fromtimestamp(s, dt.UTC).strftime("%H:%M:%S.%f")[:-3]

    (row,) = answer.to_dict()["connections"]
    (first, last), (a, b) = _leg_times(res, row, 46807), (row["first_seen"], row["last_seen"])
    assert f"{hms(first)}-{hms(last)} (this mapping; connection {hms(a)}-{hms(b)})" in out


def test_who_at_a_time_matches_a_mapping_from_the_record_only_while_its_entry_lived() -> None:
    # The pod-side capture and the record: the two public ports are legs from the record (no frame); their
    # spans are their entries' (NEW to DESTROY, else the last event), on the node's clock.
    from natproof.conntrack import read_conntrack
    from natproof.correlate import correlate_one
    from natproof.kernel import kernel_flows

    record = read_conntrack(REMAP / "conntrack.log")
    res = correlate_one(REMAP / "inside.pcap", record, side="inside")
    flows = {r["reply_dport"]: r for r in kernel_flows(record.entries).iter_rows(named=True)
             if r["reply_dport"] in (46807, 52490)}
    new_b = flows[52490]["start_ts_ns"] / 1e9
    end_a = flows[46807]["end_ts_ns"] / 1e9
    early = f"{new_b - 2:.6f}"
    (conn,) = who(res, "203.0.113.2:46807", at=early, window_s=0).connections
    assert conn["first_seen"] < new_b - 2 < end_a  # the connection lived then, under 46807
    assert who(res, "203.0.113.2:52490", at=early, window_s=0.5).connections == ()
    assert who(res, "203.0.113.2:52490", at=f"{new_b:.6f}", window_s=0).connections
    assert who(res, "203.0.113.2:46807", at=f"{end_a + 0.1:.6f}", window_s=0).connections == ()


def test_a_public_port_two_pods_held_in_turn_past_the_udp_timeout_names_one_pod_each_time(tmp_path: Path) -> None:
    # A trial (s07): pod .11 kept 5000 for a short exchange; pod .10, clashing, left as 61001; 40 s later (past
    # conntrack's 30 s for an entry answered only in its first 2 s) .10 came back and got 5000. One outside leg
    # held both pods' datagrams: who named both at either time, counts were doubled, and diagnose called it a
    # port reused while in use.
    from pcapbytes import ipv4, udp, write_pair

    from natproof.diagnose import diagnose

    t0, s, srv, node = 1_700_000_000 * 10**9, 10**9, "198.51.100.30", "203.0.113.2"
    inside, outside = [], []

    def exchange(t: int, pod: str, public: int, n: int) -> None:
        for j in range(4):
            at = t + j * s // 5
            inside.append((at, ipv4(pod, srv, 17, udp(5000, 9000, b"q%d%d" % (n, j)), ip_id=1000 * n + j)))
            outside.append((at + 30_000, ipv4(node, srv, 17, udp(public, 9000, b"q%d%d" % (n, j)), ttl=63,
                                              ip_id=1000 * n + j)))
            outside.append((at + s // 50, ipv4(srv, node, 17, udp(9000, public, b"a%d%d" % (n, j)), ip_id=5000 + j)))
            inside.append((at + s // 50 + 30_000, ipv4(srv, pod, 17, udp(9000, 5000, b"a%d%d" % (n, j)), ttl=63,
                                                       ip_id=5000 + j)))

    exchange(t0, "10.244.0.11", 5000, 1)
    exchange(t0 + s // 10, "10.244.0.10", 61001, 2)
    exchange(t0 + 41 * s, "10.244.0.10", 5000, 3)
    result = correlate(*write_pair(tmp_path, sorted(inside), sorted(outside)))
    rows = result.to_dict()["connections"]
    assert sorted((c["inside"]["src"], c["outside"]["sport"], c["packets"]["egress_outside"],
                   c["packets"]["reply_outside"]) for c in rows) == [
        ("10.244.0.10", 5000, 4, 4), ("10.244.0.10", 61001, 4, 4), ("10.244.0.11", 5000, 4, 4)]
    for at, pod in ((t0 + 3 * s // 10, "10.244.0.11"), (t0 + 41 * s + 3 * s // 10, "10.244.0.10")):
        (found,) = who(result, f"{node}:5000", at=str(at / 1e9), window_s=0).connections
        assert found["inside"]["src"] == pod
    assert [f.kind for f in diagnose(result)] == ["healthy"]


def test_who_table_shows_the_node_tuple_and_frames_of_the_mapping_that_matched(tmp_path: Path) -> None:
    # A trial (udp2): `who 203.0.113.2:61002`, a stream's second mapping, showed node 203.0.113.2:40400 and the
    # first mapping's frames beside that mapping's own span. The row now shows the mapping that matched, the
    # connection's primary node tuple (most of the pod's datagrams) beside it.
    from pcapbytes import udp_remap_rows, write_pair

    from natproof.cli import _plain_text, _who_table

    res = correlate(*write_pair(tmp_path, *udp_remap_rows()))
    answer = who(res, "203.0.113.2:61002")
    (c,) = answer.to_dict()["connections"]
    (leg,) = [leg for leg in c["legs"] if leg["tuple"]["sport"] == 61002]
    assert c["mapping"] == [{"observation_point": "outside", "tuple": leg["tuple"], "first_frame": leg["first_frame"]}]
    assert c["translated"]["sport"] == c["ends"]["node"]["port"] == 40400  # the primary: 4 of the 5 datagrams
    out = _plain_text(_who_table("who", answer.connections))
    assert "203.0.113.2:61002 (this mapping; connection's 203.0.113.2:40400)" in out
    assert f"out {leg['first_frame']} (this mapping)" in out
    assert f"out {c['evidence']['egress']['outside_frame']}," not in out
    # An end every leg holds (the pod's source) is the connection's: no mapping of its own.
    (whole,) = who(res, "10.244.0.10:40400").to_dict()["connections"]
    assert whole["mapping"] is None
