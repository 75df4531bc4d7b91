"""natproof fleet: each node's correlation as a task on a Dask LocalCluster of two worker processes, checked against
the per-pair correlation of the same lab captures; a node's bad capture, manifest errors, fleet-who."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import natproof
from natproof.cli import main
from natproof.fleet import fleet_who, load_manifest, run_fleet
from natproof.report.export import flat_frame

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"

NODES = {
    # name: the node's manifest keys (paths under captures/)
    "basic": {"inside": "basic/inside.pcap", "outside": "basic/outside.pcap", "conntrack": "basic/conntrack.log",
               "pods": "basic/pods.json"},
    "udp": {"inside": "udp/inside.pcap", "outside": "udp/outside.pcap"},
    "clusterip": {"inside": "clusterip/inside.pcap", "outside": "clusterip/outside.pcap",
                   "pods": "clusterip/pods.json", "services": ["clusterip/services.json"]},
    "internal": {"capture": "internal/any.pcap", "interfaces": "internal/links.txt", "pods": "internal/pods.json"},
    "double-nat": {"inside": "double-nat/inside.pcap", "outside": "double-nat/outside.pcap",
                    "conntrack": "double-nat/conntrack.log"},
    "forward-drop": {"capture": "forward-drop/inside.pcap", "conntrack": "forward-drop/conntrack.log"},
}


def toml_value(value: str | list[str]) -> str:
    return json.dumps(value)  # a JSON string or list of strings is TOML too


def write_manifest(folder: Path, nodes: dict[str, dict[str, str | list[str]]], gateway: str = "") -> Path:
    """A manifest in ``folder`` whose capture paths are relative to it (as a user writes them)."""
    rel = os.path.relpath(CAPTURES, folder)
    lines = []
    for name, keys in nodes.items():
        lines += ["[[node]]", f"name = {toml_value(name)}"]
        for key, value in keys.items():
            if key in ("worker", "pod_cidr"):
                lines.append(f"{key} = {toml_value(value)}")
            elif isinstance(value, list):
                lines.append(f"{key} = {toml_value([f'{rel}/{v}' for v in value])}")
            else:
                lines.append(f"{key} = {toml_value(f'{rel}/{value}')}")
        lines.append("")
    path = folder / "fleet.toml"
    path.write_text("\n".join(lines) + gateway, encoding="utf-8")
    return path


GATEWAY = """[gateway]
flow_logs = ["{rel}/double-nat/flowlogs/custom.log"]
nat_gateways = ["10.0.1.1=203.0.113.20"]
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A LocalCluster of two worker processes (one thread each), as natproof fleet starts by default; its
    scheduler's address is given as --scheduler, the way a real cluster is."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as lc:
        yield lc.scheduler_address


@pytest.fixture(scope="module")
def fleet(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, natproof.fleet.FleetResult]:
    folder = tmp_path_factory.mktemp("fleet")
    manifest = write_manifest(folder, NODES,
                              GATEWAY.format(rel=os.path.relpath(CAPTURES, folder)))
    finished: list[str] = []
    result = run_fleet(manifest, folder / "out", scheduler=cluster, progress=lambda e: finished.append(e["name"]))
    assert sorted(finished) == sorted(NODES)
    return folder / "out", result


def per_pair(keys: dict[str, str | list[str]]) -> natproof.Result:
    """The node's files correlated on their own, as natproof correlate does."""
    def p(v: str) -> str:
        return str(CAPTURES / v)

    def ps(v: str | list[str] | None) -> list[str]:
        return [] if v is None else [p(x) for x in ([v] if isinstance(v, str) else v)]

    paths = [*ps(keys.get("pods")), *ps(keys.get("services"))]
    names = natproof.Names.load(*paths) if paths else None
    conntrack = p(keys["conntrack"]) if "conntrack" in keys else None
    if "capture" in keys:
        links = p(keys["interfaces"]) if "interfaces" in keys else None
        return natproof.correlate(p(keys["capture"]), None, interfaces=links, names=names, conntrack=conntrack,
                                  side="auto")
    return natproof.correlate(p(keys["inside"]), p(keys["outside"]), names=names, conntrack=conntrack)


def test_each_node_equals_its_per_pair_correlation(fleet: tuple[Path, natproof.fleet.FleetResult]) -> None:
    out, result = fleet
    assert result.ok and result.failed == ()
    table = pl.read_parquet(out / "fleet.parquet")
    summary = json.loads((out / "fleet.json").read_text())
    assert summary["schema"] == "natproof.fleet/1"
    assert [n["name"] for n in summary["nodes"]] == list(NODES)  # the manifest's order
    assert table["node"].unique(maintain_order=True).to_list() == list(NODES)
    total = 0
    for name, keys in NODES.items():
        expected = flat_frame(per_pair(keys))
        got = pl.read_parquet(out / "nodes" / f"{name}.parquet")
        assert_frame_equal(got, expected)
        # The fleet table holds the same rows and columns under its node (name columns null where a node had no
        # dumps; the gateway's columns after them).
        rows = table.filter(pl.col("node") == name).select(expected.columns)
        assert_frame_equal(rows, expected)
        entry = next(n for n in summary["nodes"] if n["name"] == name)
        assert entry["status"] == "ok" and entry["parquet"] == f"nodes/{name}.parquet"
        assert entry["connections"] == expected.height
        assert entry["by_verdict"] == dict(expected["verdict"].value_counts().iter_rows())
        assert [f["kind"] for f in entry["findings"]] == [f.kind for f in natproof.diagnose(per_pair(keys))]
        total += expected.height
    assert table.height == total == summary["totals"]["connections"]
    assert summary["totals"]["failed"] == 0
    # The gateway: node double-nat's connections joined to the NAT gateway's public side, the others not in it.
    assert summary["gateway"]["joined"]["double-nat"] == {"flow log, unique candidate": 4,
                                                          "flow log, ambiguous: 2 candidates": 1}
    assert set(summary["gateway"]["joined"]["basic"]) == {"no candidate"}
    # One capture of one interface and the node's record: its side told from the record, and said.
    drop = next(n for n in summary["nodes"] if n["name"] == "forward-drop")
    assert any("the only capture; taken as the inside one" in w for w in drop["warnings"])
    assert drop["findings"][0]["kind"] == "forwarding_blocked"
    page = (out / "fleet.html").read_text()
    assert all(f'href="nodes/{name}.parquet"' in page for name in NODES)


def test_fleet_who_finds_a_nodes_public_port_and_the_gateways(fleet: tuple[Path, natproof.fleet.FleetResult],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = fleet
    # basic's pod1 left through the node's 203.0.113.2:37784.
    code = main(["fleet-who", "203.0.113.2:37784", str(out), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["schema"] == "natproof.fleet-who/1"
    [m] = doc["matches"]
    assert (m["node"], m["roles"], m["inside"]["pod"]) == ("basic", ["translated source"], "default/pod1")
    assert m["original"] == {"src": "10.244.0.10", "sport": 37784, "dst": "198.51.100.10", "dport": 80}
    assert m["translated"]["src"] == "203.0.113.2"
    # The abuse report names the gateway's public port: node double-nat's pod 10.244.0.10:39264.
    answer = fleet_who(out, "203.0.113.20:39264", at="16:19:41")
    [m] = answer.matches
    assert m["node"] == "double-nat" and m["roles"] == ["NAT gateway public source"]
    assert (m["ends"]["pod"]["address"], m["ends"]["pod"]["port"]) == ("10.244.0.10", 39264)
    assert m["gateway"]["evidence"] == "flow log, unique candidate"
    # A port nobody used: exit 1, one line.
    assert main(["fleet-who", "203.0.113.2:9", str(out), "--format", "table"]) == 1
    assert capsys.readouterr().out.strip() == "no connection in the fleet used 203.0.113.2:9"


def test_a_broken_node_fails_alone(cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(b"this is no capture\n")
    manifest = write_manifest(tmp_path, {"udp": NODES["udp"], "elsewhere": {**NODES["udp"],
                                                                               "worker": "tcp://192.0.2.1:8786"}})
    outside = CAPTURES / "udp" / "outside.pcap"
    text = manifest.read_text() + f'[[node]]\nname = "broken"\ninside = "{broken}"\noutside = "{outside}"\n'
    manifest.write_text(text)
    (tmp_path / "out" / "nodes").mkdir(parents=True)
    (tmp_path / "out" / "nodes" / "broken.parquet").write_bytes(b"an earlier run's")
    code = main(["fleet", str(manifest), "-o", str(tmp_path / "out"), "--scheduler", cluster, "--format", "json"])
    captured = capsys.readouterr()
    assert code == 1
    doc = json.loads(captured.out)
    by_name = {n["name"]: n for n in doc["nodes"]}
    assert by_name["udp"]["status"] == "ok"
    assert by_name["broken"]["status"] == "failed"
    assert by_name["broken"]["error"] == f"{broken}: not a pcap or pcapng capture (starts with 74 68 69 73)"
    assert by_name["elsewhere"]["status"] == "failed" and "no such worker" in by_name["elsewhere"]["error"]
    # Every entry has every key (a failed node's null), and no Parquet file of an earlier run stays for it.
    assert set(by_name["broken"]) == set(by_name["udp"]) and by_name["broken"]["parquet"] is None
    assert sorted(p.name for p in (tmp_path / "out" / "nodes").iterdir()) == ["udp.parquet"]
    assert doc["totals"]["failed_nodes"] == ["elsewhere", "broken"]
    assert f"natproof: broken: failed: {broken}: not a pcap" in captured.err
    assert "Traceback" not in captured.err
    table = pl.read_parquet(tmp_path / "out" / "fleet.parquet")
    assert table["node"].unique().to_list() == ["udp"]
    assert "failed" in (tmp_path / "out" / "fleet.html").read_text()
    # The table says a failed node's connections as fleet.json counts them (it said "-" beside JSON's 0).
    from natproof.cli import _print_fleet

    _print_fleet(doc, str(tmp_path / "out"))
    [row] = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(" broken ")]
    assert row[:3] == ["broken", "failed", str(by_name["broken"]["connections"])]


@pytest.mark.parametrize(("text", "problem"), [
    ('[[node]]\nname = "a"\ninside = "nope.pcap"\noutside = "nope.pcap"\n',
     r"fleet\.toml: \[\[node\]\] #1 \(a\) inside: no such file .*/nope\.pcap"),
    ('[[node]]\nname = "a"\ncapture = "{any}"\ninterface = "links.txt"\n',
     r"fleet\.toml: \[\[node\]\] #1 \(a\): unknown key 'interface' \(a node takes name, inside, "),
    ('[[node]]\nname = "a"\ncapture = "{any}"\n[[node]]\nname = "a"\ncapture = "{any}"\n',
     r"fleet\.toml: \[\[node\]\] #2 name: 'a' is also \[\[node\]\] #1's name"),
    ('[[node]]\nname = "a"\ncapture = "{any}"\n[gateway]\nflow_log = "x"\n',
     r"fleet\.toml: \[gateway\]: unknown key 'flow_log' \(the gateway takes flow_logs, "),
    ('[[node]]\nname = "a"\ncapture = "{any}"\n[gateway]\nflow_logs = "{any}"\nnat_gateways = ["10.0.1.1=x"]\n',
     r"fleet\.toml: \[gateway\] nat_gateways: '10\.0\.1\.1=x': 'x' is not an IP address"),
    ('[[node]]\nname = "a"\ncapture = "{any}"\n[gateway]\nflow_logs = "{any}"\n'
     'nat_gateways = "203.0.113.20=10.0.1.1"\n',
     r"fleet\.toml: \[gateway\] nat_gateways: '203\.0\.113\.20=10\.0\.1\.1': looks swapped: 10\.0\.1\.1 is a VPC "),
    # Refused with the manifest's key before any node runs (it named --flow-log-format, after every node had run).
    ('[[node]]\nname = "a"\ncapture = "{any}"\n[gateway]\nflow_logs = "{any}"\n'
     'flow_log_format = "${version} ${srcadr}"\n',
     r"fleet\.toml: \[gateway\] flow_log_format: unknown field 'srcadr' \(fields: version, account-id, "),
    # The flow logs are read with the manifest: one natproof cannot use is named by the manifest and its key, before
    # any node runs (it was found after every node had run, and named by the file alone).
    ('[[node]]\nname = "a"\ncapture = "{any}"\n[gateway]\nflow_logs = "{pods}"\n',
     r"fleet\.toml: \[gateway\] flow_logs: .*/basic/pods\.json: not a VPC flow log in the default format \(.*\); for a "
     r"custom format without a header \(CloudWatch Logs\), pass flow_log_format with the flow log's format$"),
    ('[[node]]\nname = "a"\ncapture = "{any}"\n[gateway]\nflow_logs = "{empty}"\n',
     r"fleet\.toml: \[gateway\] flow_logs: .*/empty\.log: empty file: no flow log record in it$"),
    # The default format has no pkt-dstaddr: no gateway to find, so none to join ("(none found) ... no connection
    # left a node" after every node had run).
    ('[[node]]\nname = "a"\ncapture = "{any}"\n[gateway]\nflow_logs = "{default}"\n',
     r"fleet\.toml: \[gateway\] nat_gateways: none given, and none can be found in the flow log: its format has no "
     r"pkt-dstaddr \(the default format's case\), which is how a NAT gateway's private side shows: give nat_gateways "
     r"= \[\"PRIVATE=PUBLIC\"\] \(aws ec2 describe-nat-gateways\)$"),
    ('[[node]]\nname = "a"\n', r"fleet\.toml: \[\[node\]\] #1 \(a\): no capture: give inside and outside"),
    ('[node]\nname = "a"\n', r"fleet\.toml: node: write each node as a \[\[node\]\] table"),
    ("nodes = 3\n", r"fleet\.toml: unknown key 'nodes' at the top"),
    ('[[node]]\nname = "a"\ncapture = "{any}"\npod_cidr = "nonsense"\n',
     r"fleet\.toml: \[\[node\]\] #1 \(a\) invalid pod_cidr: 'nonsense' does not appear"),
    ('[[node]]\nname = "a\n', r"fleet\.toml: not TOML: "),
    # A clock offset as --clock-offset takes it: a finite number of seconds (TOML has inf and nan; a string is none).
    ('[[node]]\nname = "a"\ncapture = "{any}"\nclock_offset = "1h"\n',
     r"fleet\.toml: \[\[node\]\] #1 \(a\) clock_offset: a number of seconds within ten years \(the node's outside "
     r"clock minus its inside clock\), not '1h'$"),
    ('[[node]]\nname = "a"\ncapture = "{any}"\nclock_offset = inf\n',
     r"fleet\.toml: \[\[node\]\] #1 \(a\) clock_offset: a number of seconds within ten years .*, not inf$"),
    ('[[node]]\nname = "a"\ncapture = "{any}"\nclock_offset = true\n',
     r"fleet\.toml: \[\[node\]\] #1 \(a\) clock_offset: a number of seconds within ten years .*, not True$"),
    # A name no file name can hold: refused here, not an OSError (File name too long) in the node's task.
    (f'[[node]]\nname = "{"x" * 300}"\ncapture = "{{any}}"\n',
     r"fleet\.toml: \[\[node\]\] #1 name: 300 bytes, longer than a node's name can be \(237 bytes: "),
    (f'[[node]]\nname = "{"x" * 238}"\ncapture = "{{any}}"\n', r"fleet\.toml: \[\[node\]\] #1 name: 238 bytes, "),
])
def test_manifest_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                      problem: str) -> None:
    path = tmp_path / "fleet.toml"
    (tmp_path / "empty.log").write_text("")
    path.write_text(text.replace("{any}", str(CAPTURES / "internal/any.pcap"))
                    .replace("{pods}", str(CAPTURES / "basic/pods.json"))
                    .replace("{empty}", str(tmp_path / "empty.log"))
                    .replace("{default}", str(CAPTURES / "double-nat/flowlogs/default.log.gz")))
    code = main(["fleet", str(path), "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err
    assert re.match(rf"natproof: error: {re.escape(str(tmp_path))}/{problem}", captured.err.rstrip("\n")), captured.err
    assert not (tmp_path / "out").exists()  # nothing started
    # The manifest's own words, to a library caller as to the command line.
    with pytest.raises(natproof.InputError) as exc:
        load_manifest(path)
    assert f"natproof: error: {exc.value}\n" == f"natproof: error: {exc.value.for_command_line()}\n" == captured.err


def fleet_folder(folder: Path) -> Path:
    """A folder as natproof fleet writes it, of nodes a and b, whose table has no pod names."""
    out = folder / "out"
    out.mkdir()
    (out / "fleet.json").write_text(json.dumps({"schema": "natproof.fleet/1", "nodes": [{"name": "a"},
                                                                                       {"name": "b"}]}))
    from natproof.fleet import _empty_frame

    _empty_frame().with_columns(pl.lit(None, pl.String).alias("node")).write_parquet(out / "fleet.parquet")
    return out


def truncated(table: Path) -> None:
    table.write_bytes(table.read_bytes()[:100])


def a_nodes_table(table: Path) -> None:
    (table.parent / "nodes" / "basic.parquet").replace(table)


def pages_damaged(table: Path) -> None:
    data = bytearray(table.read_bytes())
    for i in range(100, 3000, 3):  # its rows; the footer (the schema) whole
        data[i] ^= 0x5A
    table.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "problem"), [
    (truncated, r"not a Parquet file \(parquet: File out of specification: The file must end with PAR1 or PARE\)"),
    (a_nodes_table, r"not the table natproof fleet writes \(no column 'node'\)"),
    (pages_damaged, r"damaged \(parquet: .*\)"),
])
def test_fleet_who_on_a_damaged_or_foreign_table_is_one_line(
        fleet: tuple[Path, natproof.fleet.FleetResult], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        damage: Callable[[Path], None], problem: str) -> None:
    """A truncated fleet.parquet, a node's table copied in as it, or one whose rows are damaged, is said as a damaged
    fleet.json is: one line naming the file, exit 2 (it was an internal error: polars' ComputeError,
    ColumnNotFoundError)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(fleet[0], out)
    damage(out / "fleet.parquet")
    assert main(["fleet-who", "203.0.113.20:39264", str(out), "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(rf"natproof: error: {re.escape(str(out))}/fleet\.parquet: {problem}: rerun natproof fleet\n",
                        captured.err), captured.err


NOT_NAMED = ("'default/pod1' is not ADDR:PORT ('default/pod1' is not an IP address, and there is no port; e.g. "
             "203.0.113.5:38472 or [2001:db8::1]:443); a pod or Service name needs ")


@pytest.mark.parametrize(("call", "command", "library", "command_line"), [
    (lambda manifest, out: run_fleet(manifest, out / "new", scheduler="nope://x"),
     ["fleet", "{manifest}", "-o", "{out}/new", "--scheduler", "nope://x"],
     "scheduler='nope://x': cannot reach a Dask scheduler there: ", "--scheduler nope://x: cannot reach a Dask "
                                                                    "scheduler there: "),
    (lambda manifest, out: fleet_who(out, "203.0.113.2:1", node="c"), ["fleet-who", "203.0.113.2:1", "{out}", "--node",
                                                                        "c"],
     "node='c': no such node in {out} (nodes: a, b)", "--node c: no such node in {out} (nodes: a, b)"),
    # fleet-who's --clock is a choice, refused before fleet_who runs.
    (lambda manifest, out: fleet_who(out, "203.0.113.2:1", clock="uplink"), None,
     "clock='uplink': inside or outside", "--clock uplink: inside or outside"),
    (lambda manifest, out: fleet_who(out, "default/pod1"), ["fleet-who", "default/pod1", "{out}"],
     f"{NOT_NAMED}a node's pods and services in the fleet's manifest (kubectl JSON dumps)",
     f"{NOT_NAMED}--pods and --services (kubectl JSON dumps)"),
])
def test_a_library_caller_is_told_run_fleets_and_fleet_whos_keywords(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], call: Callable[[Path, Path], object],
        command: list[str] | None, library: str, command_line: str) -> None:
    """run_fleet(scheduler=) and fleet_who(node=, clock=) name their keywords to a Python caller, who has no
    --scheduler, --node or --clock, and a pod's name the manifest's keys; natproof fleet and fleet-who print the
    same errors with their options, as they always have."""
    manifest, out = write_manifest(tmp_path, {"udp": NODES["udp"]}), fleet_folder(tmp_path)
    with pytest.raises(natproof.InputError) as exc:
        call(manifest, out)
    assert str(exc.value).startswith(library.format(out=out)) and "--" not in str(exc.value)
    assert exc.value.for_command_line().startswith(command_line.format(out=out))
    if command is not None:
        assert main([a.format(manifest=manifest, out=out) for a in command]) == 2
        assert capsys.readouterr().err == f"natproof: error: {exc.value.for_command_line()}\n"


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Found by a helper: -o under a file, or under /proc, was an internal error (NotADirectoryError).
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f'[[node]]\nname = "a"\ninside = "{CAPTURES}/basic/inside.pcap"\n'
                        f'outside = "{CAPTURES}/basic/outside.pcap"\n')
    (tmp_path / "afile").write_text("")
    code = main(["fleet", str(manifest), "-o", str(tmp_path / "afile" / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"natproof: error: {tmp_path}/afile/out: cannot make the folder for the fleet's "
                                 "results (Not a directory)\n")


def test_a_missing_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", str(tmp_path / "fleet.toml"), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"natproof: error: {tmp_path}/fleet.toml: no such manifest\n"


def test_manifest_paths_are_the_manifests_folders() -> None:
    m = load_manifest(ROOT / "docs" / "examples" / "fleet.toml")
    assert [n.name for n in m.nodes] == ["node-a", "node-b", "node-c", "ip-10-0-1-10"]
    assert m.nodes[0].inside == str(CAPTURES / "basic" / "inside.pcap")
    assert m.nodes[1].services == (str(CAPTURES / "clusterip" / "services.json"),)
    assert m.gateway is not None and m.gateway.nat_gateways == ("10.0.1.1=203.0.113.20",)


@pytest.mark.parametrize(("form", "nat_gateways"), [
    ("as recorded", '"10.0.1.1=203.0.113.20"'),
    ("no start and end fields", '"10.0.1.1=203.0.113.20"'),
    ("'-' in start and end", '"10.0.1.1=203.0.113.20"'),
    ("as recorded", None),  # found from pkt-dstaddr: the private address alone, and said so
])
def test_the_gateways_flow_log_joins_the_nodes_connections(tmp_path: Path, form: str,
                                                           nat_gateways: str | None) -> None:
    """A gateway log whose records carry no time joins as the recorded one does (its counts tell the flows apart),
    not 'no connection in its flow log'. One node's task called directly, then the join: no cluster needed."""
    from natproof.fleet import _gateway_join, correlate_node, gateway_addresses, gateway_text

    lines = (CAPTURES / "double-nat" / "flowlogs" / "custom.log").read_text().splitlines()
    fields = lines[0].split()
    timed = [i for i, f in enumerate(fields) if f in ("start", "end")]
    if form == "no start and end fields":
        lines = [" ".join(v for i, v in enumerate(line.split()) if i not in timed) for line in lines]
    elif form == "'-' in start and end":
        lines = [lines[0]] + [" ".join("-" if i in timed else v for i, v in enumerate(line.split()))
                              for line in lines[1:]]
    (tmp_path / "gw.log").write_text("\n".join(lines) + "\n")
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f'[[node]]\nname = "a"\ninside = "{CAPTURES}/double-nat/inside.pcap"\n'
                        f'outside = "{CAPTURES}/double-nat/outside.pcap"\n[gateway]\nflow_logs = "gw.log"\n'
                        + ("" if nat_gateways is None else f"nat_gateways = {nat_gateways}\n"))
    spec = load_manifest(manifest)
    assert spec.gateway is not None and spec.gateway.flow_log is not None  # read once, with the manifest
    node = correlate_node(spec.nodes[0], str(tmp_path))
    gw = _gateway_join(spec.gateway, {"a": node}, spec.path)
    assert gw["joined"] == {"a": {"flow log, unique candidate": 4, "flow log, ambiguous: 2 candidates": 1}}
    assert gateway_text(gw) == "a: 4 flow log, unique candidate, 1 flow log, ambiguous: 2 candidates"
    assert gateway_addresses(gw) == ("10.0.1.1 (public not given)" if nat_gateways is None
                                     else "10.0.1.1=203.0.113.20")


def test_a_nodes_conntrack_warnings_are_among_its_warnings(tmp_path: Path) -> None:
    """A node's conntrack record stamped before 2000 warns in fleet.json's node entry, as its captures' warnings
    do (one node's task, called directly: no cluster needed)."""
    from natproof.fleet import NodeSpec, correlate_node

    d = CAPTURES / "basic"
    text = (d / "conntrack.log").read_text()
    first = text.index("\n[") + 1
    record = tmp_path / "zero.log"
    record.write_text(text[:first] + "[0.000000]" + text[text.index("]", first) + 1:])
    out = correlate_node(NodeSpec(name="n", inside=str(d / "inside.pcap"), outside=str(d / "outside.pcap"),
                                  conntrack=str(record)), str(tmp_path))
    assert out["status"] == "ok"
    assert [w for w in out["warnings"] if w.startswith(f"{record}: ")] == [
        f"{record}: 1 entry stamped before 2000 (line 3: 1970-01-01T00:00:00Z), a time no conntrack record can "
        "have: the node's clock was not set (it starts at 1970) or the field is no epoch time; read as stamped, "
        "the record's span reaches back to then"]


def readme_example(prefix: str) -> tuple[str, list[str]]:
    from test_readme import example

    return example(prefix)


def test_readme_fleet_example_as_a_new_user_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The README's command exactly as written, on the default LocalCluster of two workers, from a folder that has
    the repository's docs/ and captures/ (so its output folder is written there, not in the repository)."""
    command, shown = readme_example("natproof fleet docs/examples/fleet.toml")
    for name in ("docs", "captures"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    code = main(shlex.split(command)[1:])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = [line.rstrip() for line in captured.out.splitlines()]
    shown_out = [line for line in shown if not line.startswith("natproof: ")]
    assert out == shown_out
    # Progress lines come as nodes finish (any order) and carry their time.
    def norm(lines: list[str]) -> list[str]:
        return sorted(re.sub(r" in \d+\.\d s$", " in N s", line) for line in lines)

    assert norm(captured.err.splitlines()) == norm([line for line in shown if line.startswith("natproof: ")])
    command, shown = readme_example("natproof fleet-who 203.0.113.20:39264")
    assert main(shlex.split(command)[1:]) == 0
    assert [line.rstrip() for line in capsys.readouterr().out.splitlines()] == shown


@pytest.mark.parametrize(("keys", "said"), [
    # One file of one interface: the manifest's keys, not correlate(inside, outside) and conntrack=FILE.
    ({"capture": "basic/inside.pcap"},
     "no second capture: give the other side's too (the node's inside and outside instead of capture), or the node's "
     'conntrack record for the other side (conntrack = "FILE"), or one capture of several interfaces'),
    # A manifest refuses allow_swap: its user is told to swap the node's inside and outside.
    ({"inside": "udp/outside.pcap", "outside": "udp/inside.pcap"},
     f"give them in the other order: {CAPTURES}/udp/inside.pcap {CAPTURES}/udp/outside.pcap (or swap the node's "
     "inside and outside)"),
])
def test_a_failed_nodes_error_names_its_manifests_keys(tmp_path: Path, keys: dict[str, str], said: str) -> None:
    """A node's correlation fails in the words of the manifest that set it up, not in correlate's keywords (which a
    manifest refuses: "unknown key 'allow_swap'") nor the command line's options (a new user's trial)."""
    from natproof.fleet import NodeSpec, correlate_node

    out = correlate_node(NodeSpec(name="n", **{k: str(CAPTURES / v) for k, v in keys.items()}), str(tmp_path))
    assert out["status"] == "failed" and said in out["error"], out["error"]
    assert not re.search(r"allow_swap|correlate\(|=FILE|--", out["error"])


def test_a_side_given_to_a_capture_of_several_interfaces_is_among_its_warnings(tmp_path: Path) -> None:
    """A node's side with a capture of several interfaces changes nothing (the file holds both sides) and was
    dropped without a word (a new user's trial): the node's warnings say so."""
    from natproof.fleet import NodeSpec, correlate_node

    d = CAPTURES / "internal"
    out = correlate_node(NodeSpec(name="n", capture=str(d / "any.pcap"), conntrack=str(d / "conntrack.log"),
                                  side="outside"), str(tmp_path))
    assert out["status"] == "ok"
    assert f"{d / 'any.pcap'}: holds several interfaces, both sides of the NAT, and is split into them: the side " \
           "given (outside) does not apply (it is for one capture of one interface and a conntrack record)" \
           in out["warnings"]


def test_every_correlate_keyword_a_node_passes_has_its_manifest_key(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The one table of a node's keys for correlate's keywords (errors.MANIFEST_KEYS) holds every keyword a node's
    task passes that an error may advise, each a key of a [[node]] table."""
    from natproof.errors import MANIFEST_KEYS, OPTIONS
    from natproof.fleet import NODE_KEYS, NodeSpec, correlate_node

    passed: set[str] = set()

    def record(*args: object, **kw: object) -> None:
        passed.update(kw)
        raise natproof.InputError("recorded")

    monkeypatch.setattr(natproof, "correlate", record)
    correlate_node(NodeSpec(name="n", inside="a", outside="b"), str(tmp_path))
    correlate_node(NodeSpec(name="n", capture="a"), str(tmp_path))
    assert {"conntrack", "inside_if", "outside_if", "interfaces", "side", "pod_cidr", "clock_offset_s"} <= passed
    assert passed & set(OPTIONS) <= set(MANIFEST_KEYS)
    assert set(MANIFEST_KEYS.values()) <= set(NODE_KEYS)


def test_the_longest_node_name_writes_its_table(tmp_path: Path) -> None:
    """A node's name of the most bytes the manifest takes names a table the node's task can write (its temporary
    file's name, longer, too)."""
    from natproof.fleet import correlate_node

    name = "n" * 237
    manifest = write_manifest(tmp_path, {name: NODES["udp"]})
    [node] = load_manifest(manifest).nodes
    out = correlate_node(node, str(tmp_path / "nodes"))
    assert out["status"] == "ok", out["error"]
    assert Path(out["parquet"]) == tmp_path / "nodes" / f"{name}.parquet"


def test_a_scheduler_not_reached_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No scheduler reached, nothing done: the folders the run made are gone (an empty nodes/ stayed, a new user's
    trial), and an earlier run's results in a folder that was there are left whole."""
    manifest = write_manifest(tmp_path, {"udp": NODES["udp"]})
    new = tmp_path / "new" / "out"
    assert main(["fleet", str(manifest), "-o", str(new), "--scheduler", "nope://x"]) == 2
    assert "cannot reach a Dask scheduler there" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    earlier = tmp_path / "earlier"
    (earlier / "nodes").mkdir(parents=True)
    (earlier / "nodes" / "udp.parquet").write_bytes(b"an earlier run's")
    with pytest.raises(natproof.InputError):
        run_fleet(manifest, earlier, scheduler="nope://x")
    assert [p.name for p in (earlier / "nodes").iterdir()] == ["udp.parquet"]


def drop_column(name: str) -> Callable[[Path], None]:
    def drop(out: Path) -> None:
        table = out / "fleet.parquet"
        from natproof.fleet import GATEWAY_SCHEMA
        from natproof.result import NAME_SCHEMA

        frame = pl.read_parquet(table).with_columns(pl.lit(None, t).alias(c) for c, t in
                                                     (NAME_SCHEMA | GATEWAY_SCHEMA).items())
        frame.drop(name).write_parquet(table)
    return drop


def summary_of(doc: object) -> Callable[[Path], None]:
    def write(out: Path) -> None:
        (out / "fleet.json").write_text(json.dumps(doc))
    return write


@pytest.mark.parametrize(("damage", "problem"), [
    (summary_of({"schema": "natproof.fleet/1"}), "fleet.json: not the summary natproof fleet writes (no 'nodes')"),
    (summary_of({"schema": "natproof.fleet/1", "nodes": 5}),
     "fleet.json: not the summary natproof fleet writes ('nodes' is int, not a list)"),
    (summary_of({"schema": "natproof.fleet/1", "nodes": [5]}),
     "fleet.json: not the summary natproof fleet writes (nodes[0] is int, not an object)"),
    (summary_of({"schema": "natproof.fleet/1", "nodes": [{"name": "a", "first_ts": "noon"}]}),
     "fleet.json: not the summary natproof fleet writes (nodes[0] (a): 'first_ts' is str)"),
    (summary_of({"schema": "natproof.fleet/1", "nodes": []}),
     "fleet.json: not the summary natproof fleet writes ('nodes' is empty: a fleet has one node or more)"),
    (drop_column("gateway_candidates"),
     "fleet.parquet: not the table natproof fleet writes (no column 'gateway_candidates')"),
    (drop_column("peer_pod"), "fleet.parquet: not the table natproof fleet writes (no column 'peer_pod')"),
])
def test_fleet_who_on_a_summary_or_table_of_the_wrong_shape_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], None], problem: str) -> None:
    """fleet.json without its nodes list, or of nodes that are no objects, and a fleet.parquet without one of the
    columns fleet_who reads (a [gateway]'s, a name's), are one line naming the file, exit 2 (they were internal
    errors: KeyError, TypeError, ColumnNotFoundError); no nodes at all is said so, not as a --at problem."""
    out = fleet_folder(tmp_path)
    damage(out)
    assert main(["fleet-who", "203.0.113.20:39264", str(out), "--at", "16:19:41", "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"natproof: error: {out}/{problem}: rerun natproof fleet\n")


def test_fleet_who_refuses_a_table_of_nodes_its_summary_does_not_list(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = fleet_folder(tmp_path)
    frame = pl.read_parquet(out / "fleet.parquet")
    row = pl.DataFrame({"node": ["zz"], "conn": [0], "proto": ["tcp"], "orig_src": ["203.0.113.20"],
                        "orig_sport": [39264]}, schema_overrides={"conn": pl.UInt32, "orig_sport": pl.UInt16})
    pl.concat([frame, row], how="diagonal_relaxed").select(frame.columns).write_parquet(out / "fleet.parquet")
    assert main(["fleet-who", "203.0.113.20:39264", str(out), "--format", "json"]) == 2
    assert capsys.readouterr().err == (f"natproof: error: {out}/fleet.parquet: connections of node 'zz', which "
                                       f"{out}/fleet.json does not list (nodes: a, b): not one run's files: rerun "
                                       "natproof fleet\n")


def test_the_fleet_table_has_every_column_fleet_who_reads(fleet: tuple[Path, natproof.fleet.FleetResult]) -> None:
    """One schema: what run_fleet writes (with names and a [gateway]) is what fleet_who checks and reads."""
    from natproof.fleet import GATEWAY_SCHEMA
    from natproof.result import CONNECTION_SCHEMA, NAME_SCHEMA

    schema = pl.read_parquet_schema(fleet[0] / "fleet.parquet")
    want = {"node": pl.String(), **CONNECTION_SCHEMA, **NAME_SCHEMA, **GATEWAY_SCHEMA}
    assert {c: schema.get(c) for c in want} == want
    # And fleet.json lists each node's dumps, which fleet-who checks a name against.
    nodes = {n["name"]: n for n in json.loads((fleet[0] / "fleet.json").read_text())["nodes"]}
    assert nodes["clusterip"]["pods"] == [str(CAPTURES / "clusterip/pods.json")]
    assert nodes["clusterip"]["services"] == [str(CAPTURES / "clusterip/services.json")]
    assert nodes["udp"]["pods"] == nodes["udp"]["services"] == []


def named_fleet_folder(folder: Path, pods: list[str]) -> Path:
    """fleet_folder whose table has the name columns and whose node a had ``pods`` for its dumps (node b none), as
    fleet.json lists them."""
    from natproof.result import NAME_SCHEMA

    out = fleet_folder(folder)
    doc = json.loads((out / "fleet.json").read_text())
    doc["nodes"][0] |= {"pods": pods, "services": []}
    doc["nodes"][1] |= {"pods": [], "services": []}
    (out / "fleet.json").write_text(json.dumps(doc))
    table = out / "fleet.parquet"
    pl.read_parquet(table).with_columns(pl.lit(None, t).alias(c) for c, t in NAME_SCHEMA.items()).write_parquet(table)
    return out


def test_fleet_who_of_a_name_no_nodes_dump_holds_is_bad_input_with_close_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As who: a name no node's kubectl dump holds is exit 2 naming the dumps and the close names (it was exit 1,
    "no connection"); a name a dump holds that no connection had stays exit 1."""
    dump = str(CAPTURES / "basic" / "pods.json")
    out = named_fleet_folder(tmp_path, [dump])
    assert main(["fleet-who", "default/pod2", str(out), "--format", "json"]) == 2
    assert capsys.readouterr().err == (f"natproof: error: 'default/pod2': no pod or Service of that name in {dump} "
                                       "(close: default/pod1)\n")
    with pytest.raises(natproof.InputError):
        fleet_who(out, "pod2")
    assert main(["fleet-who", "default/pod1", str(out), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["matches"] == []
    # --node keeps that node's dumps: node b had none, so nothing to check a name against.
    assert main(["fleet-who", "default/pod2", str(out), "--node", "b", "--format", "json"]) == 1
    # Dumps moved since the run: the table's names are all there is, and no match is no connection.
    (tmp_path / "moved").mkdir()
    moved = named_fleet_folder(tmp_path / "moved", [str(tmp_path / "gone.json")])
    assert main(["fleet-who", "default/pod2", str(moved), "--format", "json"]) == 1


class _InProcessClient:
    """Stands in for a Dask client where run_fleet is the question, not Dask: no scheduler, nothing to close."""

    class scheduler:  # noqa: N801 - a Client's attribute
        address = "inproc://test"

    def close(self) -> None:
        pass


def run_in_process(monkeypatch: pytest.MonkeyPatch, interrupted_at: str | None = None) -> list[str]:
    """run_fleet without a cluster: each node's task (correlate_node, as a worker runs it) called here, in the
    manifest's order; Ctrl-C (KeyboardInterrupt) as node ``interrupted_at``'s task starts, where a real Ctrl-C
    reaches run_fleet (its wait for the tasks). Returns the nodes whose task ran."""
    import natproof.fleet as fleet_module

    ran: list[str] = []

    def run_tasks(client: object, manifest: natproof.fleet.Manifest, nodes_dir: Path,
                  progress: Callable[[dict], None] | None) -> dict[str, dict]:
        entries = {}
        for node in manifest.nodes:
            if node.name == interrupted_at:
                raise KeyboardInterrupt
            entries[node.name] = fleet_module.correlate_node(node, str(nodes_dir))
            ran.append(node.name)
            if progress:
                progress(entries[node.name])
        return entries

    monkeypatch.setattr(fleet_module, "_client", lambda scheduler, workers: (_InProcessClient(), None))
    monkeypatch.setattr(fleet_module, "_run_tasks", run_tasks)
    return ran


def gateway_folder(folder: Path, strays: list[str]) -> Path:
    """A [gateway] flow_logs folder as an S3 download leaves it: the flow log, and ``strays`` that are no flow log."""
    folder.mkdir()
    (folder / "custom.log").write_bytes((CAPTURES / "double-nat" / "flowlogs" / "custom.log").read_bytes())
    for name in strays:
        (folder / name).write_text("not a flow log\n")
    return folder


def test_files_of_a_gateway_folder_that_are_no_flow_log_are_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A [gateway] folder's files that are no flow log were passed over without a word (a new user's trial): one
    warning on stderr as the manifest is read, naming the first three and counting them all, and in fleet.json
    (with why for each) and the report."""
    strays = ["a.txt", "b.json", "c.md", "manifest.xml"]
    gateway_folder(tmp_path / "AWSLogs", strays)
    manifest = write_manifest(tmp_path, {"dn": NODES["double-nat"]},
                              '[gateway]\nflow_logs = "AWSLogs"\nnat_gateways = ["10.0.1.1=203.0.113.20"]\n')
    run_in_process(monkeypatch)
    code = main(["fleet", str(manifest), "-o", str(tmp_path / "out"), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    logs = tmp_path / "AWSLogs"
    said = (f"{manifest}: [gateway] flow_logs: 4 files that are no flow log passed over: {logs}/a.txt, {logs}/b.json, "
            f"{logs}/c.md and 1 more (why, for each: fleet.json's gateway passed_over)")
    assert [line for line in captured.err.splitlines() if "warning" in line] == [f"natproof: warning: {said}"]
    gw = json.loads(captured.out)["gateway"]
    assert gw["warnings"] == [said]
    assert [p.split(": ", 1)[0] for p in gw["passed_over"]] == [str(logs / s) for s in sorted(strays)]
    assert all(": not a VPC flow log in the default format (" in p for p in gw["passed_over"])
    assert gw["records"] == 28  # the flow log itself read as ever
    assert html_escape(said) in (tmp_path / "out" / "fleet.html").read_text()
    # One file passed over: said in the singular; none: nothing said.
    from natproof.fleet import gateway_warnings

    for name in ("a.txt", "b.json", "c.md"):
        (logs / name).unlink()
    spec = load_manifest(manifest)
    assert spec.gateway is not None
    assert gateway_warnings(spec.path, spec.gateway) == [
        f"{manifest}: [gateway] flow_logs: 1 file that is no flow log passed over: {logs}/manifest.xml (why, for "
        "each: fleet.json's gateway passed_over)"]
    (logs / "manifest.xml").unlink()
    spec = load_manifest(manifest)
    assert spec.gateway is not None and gateway_warnings(spec.path, spec.gateway) == []


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_a_gateway_folder_of_no_flow_log_is_refused_with_the_manifest(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A [gateway] folder none of whose files is a flow log is refused before any node runs, in one line naming the
    manifest, the key, the folder, how many files it holds and why the first is no flow log (it named the first
    alone, as if it were the only one)."""
    logs = tmp_path / "AWSLogs"
    logs.mkdir()
    for name in ("README.txt", "pods.json"):
        (logs / name).write_text("not a flow log\n")
    manifest = write_manifest(tmp_path, {"dn": NODES["double-nat"]}, '[gateway]\nflow_logs = "AWSLogs"\n')
    assert main(["fleet", str(manifest), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"natproof: error: {manifest}: [gateway] flow_logs: no flow log in {logs}: none of its 2 "
                          f"files is one; the first, {logs}/README.txt: not a VPC flow log in the default format (")
    assert err.endswith("pass flow_log_format with the flow log's format\n") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_the_nodes_tasks_leaves_no_part_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while the nodes ran left the tables of those that had finished and no fleet.json (a new user's trial):
    exit 130 and nothing of the run, in a folder it made (gone) or one an earlier run wrote (its results whole)."""
    manifest = write_manifest(tmp_path, {"udp": NODES["udp"], "basic": NODES["basic"]})
    ran = run_in_process(monkeypatch, interrupted_at="basic")
    new = tmp_path / "new" / "out"
    assert main(["fleet", str(manifest), "-o", str(new), "--format", "json"]) == 130
    captured = capsys.readouterr()
    assert ran == ["udp"]  # one node's table was written before Ctrl-C
    assert captured.out == "" and captured.err.splitlines()[-1] == "natproof: interrupted"
    assert not (tmp_path / "new").exists()
    # Into the folder of an earlier run: its files as they were, and nothing beside them.
    earlier = tmp_path / "earlier"
    (earlier / "nodes").mkdir(parents=True)
    before = {"nodes/udp.parquet": b"an earlier run's table", "fleet.json": b"an earlier run's summary",
              "fleet.parquet": b"an earlier run's fleet", "notes.txt": b"the user's"}
    for name, data in before.items():
        (earlier / name).write_bytes(data)
    assert main(["fleet", str(manifest), "-o", str(earlier), "--format", "json"]) == 130
    capsys.readouterr()
    after = {str(p.relative_to(earlier)): p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in earlier.iterdir()) == ["fleet.json", "fleet.parquet", "nodes", "notes.txt"]


def test_a_finished_run_replaces_an_earlier_one_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that finishes moves every file into place: its own tables, fleet.json naming them, no earlier run's
    node table left beside them, nothing of its folder of files under way; the user's other files stay."""
    manifest = write_manifest(tmp_path, {"udp": NODES["udp"]})
    out = tmp_path / "out"
    (out / "nodes").mkdir(parents=True)
    (out / "nodes" / "gone.parquet").write_bytes(b"an earlier run's node")
    (out / "notes.txt").write_text("the user's")
    run_in_process(monkeypatch)
    result = run_fleet(manifest, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "fleet.html", "fleet.json", "fleet.parquet", "nodes", "nodes/udp.parquet", "notes.txt"]
    doc = json.loads((out / "fleet.json").read_text())
    assert doc["nodes"][0]["parquet"] == "nodes/udp.parquet" and result.nodes[0]["parquet"] == "nodes/udp.parquet"
    assert_frame_equal(pl.read_parquet(out / "nodes" / "udp.parquet"), flat_frame(per_pair(NODES["udp"])))
    assert pl.read_parquet(out / "fleet.parquet")["node"].unique().to_list() == ["udp"]
    assert fleet_who(out, "10.244.0.10:40000").query == "10.244.0.10:40000"  # the folder reads as a fleet's


def test_a_run_that_fails_after_its_tasks_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any failure once the nodes have run (here, writing fleet.parquet) removes the run's files as Ctrl-C does."""
    import natproof.fleet as fleet_module

    manifest = write_manifest(tmp_path, {"udp": NODES["udp"]})
    run_in_process(monkeypatch)

    def full(*args: object) -> None:
        raise natproof.InputError("fleet.parquet: cannot write it (No space left on device)")

    monkeypatch.setattr(fleet_module, "_write_table", full)
    with pytest.raises(natproof.InputError):
        run_fleet(manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_nodes_clock_offset_reaches_its_correlation(tmp_path: Path) -> None:
    """A node's clock_offset (seconds, outside clock minus inside clock, as --clock-offset) is the correlation's: a
    pair whose outside clock runs an hour ahead is correlated with the offset given, not the one estimated."""
    from pcapbytes import tcp_pair, write_pair

    from natproof.fleet import correlate_node

    write_pair(tmp_path, *tcp_pair(offset_ns=3600 * 10**9))
    manifest = tmp_path / "fleet.toml"
    text = '[[node]]\nname = "n"\ninside = "inside.pcap"\noutside = "outside.pcap"\n'
    for given, offset in ((None, 3600.0), ("3599.9", 3599.9)):
        manifest.write_text(text + ("" if given is None else f"clock_offset = {given}\n"))
        [node] = load_manifest(manifest).nodes
        assert node.clock_offset_s == (None if given is None else offset)
        out = correlate_node(node, str(tmp_path / "nodes"))
        assert out["status"] == "ok" and out["clock_offset_s"] == offset  # 3600.0 when estimated
        assert out["by_verdict"] == {"translated": 1}


def test_captures_apart_are_advised_the_nodes_clock_offset(tmp_path: Path) -> None:
    """A node whose captures do not overlap was told to run natproof correlate --clock-offset, which a fleet's user
    cannot set for a node: now the node's clock_offset, its unit and its sign; given, to check its sign."""
    from pcapbytes import tcp_pair, write_pair

    from natproof.fleet import NodeSpec, correlate_node

    inside, _ = tcp_pair(1_700_000_000 * 10**9)
    _, outside = tcp_pair(1_700_003_600 * 10**9, isn=42)  # an hour later, another connection: nothing to estimate by
    a, b = write_pair(tmp_path, inside, outside)
    out = correlate_node(NodeSpec(name="n", inside=str(a), outside=str(b)), str(tmp_path / "nodes"))
    assert out["status"] == "failed"
    assert out["error"] == (f"{a} and {b} do not overlap in time (22:13:20.000-22:13:20.007 vs "
                            "23:13:20.000-23:13:20.007 UTC, on the "
                            "outside clock); set the node's clock_offset (seconds, its outside clock minus its inside "
                            "clock) if the clocks differ")
    out = correlate_node(NodeSpec(name="n", inside=str(a), outside=str(b), clock_offset_s=-3600.0),
                         str(tmp_path / "nodes"))
    assert out["error"].endswith("on the outside clock); with the clock_offset given; check its sign (outside minus "
                                 "inside)")


def test_fleet_who_of_a_name_on_a_fleet_json_that_records_no_dumps_says_it_cannot_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fleet.json of an older natproof lists no node's kubectl dumps: a name no connection had is exit 1 (no
    connection; it may be a pod's all the same) and says that it could not be checked, where a fleet.json that
    lists the dumps refuses an unknown name (exit 2). So are dumps that cannot be read now."""
    dump = str(CAPTURES / "basic" / "pods.json")
    out = named_fleet_folder(tmp_path, [dump])
    assert main(["fleet-who", "default/pod2", str(out), "--format", "json"]) == 2  # names checked: unknown
    capsys.readouterr()
    doc = json.loads((out / "fleet.json").read_text())
    for n in doc["nodes"]:  # as natproof wrote it before fleet.json recorded the dumps
        del n["pods"], n["services"]
    (out / "fleet.json").write_text(json.dumps(doc))
    said = (f"{out}/fleet.json: records no node's kubectl dumps (written by an older natproof): whether any pod or "
            "Service is named 'default/pod2' cannot be checked; rerun natproof fleet to have names checked")
    assert main(["fleet-who", "default/pod2", str(out), "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"natproof: warning: {said}\n"
    answer = json.loads(captured.out)
    assert (answer["matches"], answer["warnings"]) == ([], [said])
    assert fleet_who(out, "default/pod2").warnings == (said,)
    assert fleet_who(out, "203.0.113.2:9").warnings == ()  # an ADDR:PORT has no name to check
    # Dumps listed but moved since the run: said too (it was exit 1 without a word).
    (tmp_path / "moved").mkdir()
    moved = named_fleet_folder(tmp_path / "moved", [str(tmp_path / "gone.json")])
    assert main(["fleet-who", "default/pod2", str(moved), "--format", "table"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "no connection in the fleet used default/pod2\n"
    assert captured.err.startswith(f"natproof: warning: the nodes' kubectl dumps cannot be read now ({tmp_path}/"
                                   "gone.json: ")
    assert captured.err.endswith("): whether any pod or Service is named 'default/pod2' cannot be checked\n")


def test_fleet_who_names_the_client_behind_a_masqueraded_nodeport_source(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's trial: fleet-who 10.244.0.1:8028 (the bridge address a NodePort client was masqueraded to,
    externalTrafficPolicy: Cluster) said "behind 10.244.0.1:8028 was pod 10.244.0.10:8080", the pod it reached;
    who over the node's two captures names the client 198.51.100.20:38159 (the README's who table). Both answer
    with natproof.lookup.behind. The node's table is written as its fleet task writes it (the flat frame of its
    correlation; correlate_node), without a cluster."""
    from natproof.fleet import TABLE, _write_table
    from natproof.lookup import behind, who

    pair = natproof.correlate(str(CAPTURES / "nodeport/inside.pcap"), str(CAPTURES / "nodeport/outside.pcap"))
    out = tmp_path / "out"
    (out / "nodes").mkdir(parents=True)
    flat_frame(pair).write_parquet(out / "nodes" / "np.parquet")
    _write_table({"np": {"status": "ok", "parquet": str(out / "nodes" / "np.parquet")}}, None, out / TABLE)
    (out / "fleet.json").write_text(json.dumps({"schema": "natproof.fleet/1", "nodes": [{"name": "np"}]}))

    [two] = who(pair, "10.244.0.1:8028").connections
    [fleet] = fleet_who(out, "10.244.0.1:8028").matches
    client = {"address": "198.51.100.20", "port": 38159}
    assert behind(two) == behind(fleet) == ("client", client) and two["ends"]["peer"] == client
    lines = []
    for query in ("10.244.0.1:8028", "198.51.100.20:45329", "203.0.113.2:59688"):
        assert main(["fleet-who", query, str(out), "--format", "table"]) == 0
        lines += [line for line in capsys.readouterr().out.splitlines() if line.startswith("np #")]
    assert lines == ["np #0: behind 10.244.0.1:8028 was client 198.51.100.20:38159",
                     # externalTrafficPolicy: Local: the client's own source, nothing behind it; the pod it reached
                     "np #1: pod 10.244.0.10:8080",
                     "np #4: behind 203.0.113.2:59688 was pod 10.244.0.10:59688"]
