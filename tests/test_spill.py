"""Correlation past memory (natproof.spill): the same result as in memory, a group of flows at a time."""

from __future__ import annotations

import gc
from pathlib import Path

import polars as pl
import pytest

import natproof
from natproof import spill
from natproof.errors import InputError
from natproof.testing.bulk import generate_pair
from natproof.testing.scenario import SCENARIOS, write_scenario

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
PAIRS = sorted(d.name for d in CAPTURES.iterdir()
               if any((d / f"inside.pcap{z}").is_file() for z in ("", ".gz")))

IDS = ("inside_conn_id", "outside_conn_id")


def pair(name: str) -> tuple[Path, Path]:
    d = CAPTURES / name
    z = "" if (d / "inside.pcap").is_file() else ".gz"
    return d / f"inside.pcap{z}", d / f"outside.pcap{z}"


def assert_same(mem: natproof.Result, spilled: natproof.Result) -> None:
    """Every connection, verdict, count and packet fate alike; conn_ids are each correlation's own, so each
    packet's connection is compared by the connection's number (``conn``)."""
    assert spilled.spill is not None and mem.spill is None
    a, b = mem.connections, spilled.connections
    assert a.drop(IDS).equals(b.drop(IDS))
    da, db = mem.to_dict(), spilled.to_dict()
    for doc in (da, db):  # what reading each capture warned of may differ: a pair swapped back says so
        for summary in doc["captures"].values():
            summary.pop("warnings")
    assert {k: v for k, v in da.items() if k != "connections"} == {k: v for k, v in db.items() if k != "connections"}
    for side, ids in (("inside", "inside_conn_id"), ("outside", "inside_conn_id")):
        pa = getattr(mem, f"{side}_packets").lazy().collect()
        pb = getattr(spilled, f"{side}_packets").lazy().collect()
        conn_a = a.select(pl.col(ids).alias("anchor"), "conn").drop_nulls()
        conn_b = b.select(pl.col(ids).alias("anchor"), "conn").drop_nulls()
        pa = pa.join(conn_a, on="anchor", how="left").drop("conn_id", "anchor").sort("frame_no")
        pb = pb.join(conn_b, on="anchor", how="left").drop("conn_id", "anchor").sort("frame_no")
        assert pa.columns == pb.columns
        assert pa.equals(pb), side
    # A leg's packets belong to one connection in both.
    assert mem.unmatched_inside == spilled.unmatched_inside
    assert mem.unmatched_outside == spilled.unmatched_outside


@pytest.fixture
def tiny_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of one component each: every join the matcher makes must fall within one."""
    monkeypatch.setattr(spill, "MIN_GROUP_PACKETS", 1)


@pytest.mark.parametrize("name", PAIRS)
def test_every_bundled_pair_spilled_in_small_groups_equals_in_memory(name: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of an eighth of the packets at most: one component each in the small pairs, a few hundred
    connections each in many-connections (one group per component there would be 2,100 groups)."""
    inside, outside = pair(name)
    mem = natproof.correlate(inside, outside)
    monkeypatch.setattr(spill, "MIN_GROUP_PACKETS", max(1, (mem.inside.packets + mem.outside.packets) // 8))
    spilled = natproof.correlate(inside, outside, memory_limit=1)
    assert_same(mem, spilled)
    if mem.connections.height > 1:
        assert len(list(spilled.spill.path.glob("inside-packets-*.parquet"))) > 1


def test_a_pod_calling_its_nodes_nodeport_in_a_group_of_its_own_equals_in_memory(tiny_groups: None) -> None:
    # Kernel variant (tests/variants/pod-nodeport-lb): pod1 calls its node's NodePort 203.0.113.2:30080 (answered on
    # the node: internal, NodePort). The node's address is known from the connections the node masqueraded; in
    # groups of one component each, the NodePort calls' group has none of them and read them not_captured. Such a
    # group is assembled again knowing every group's node addresses.
    d = Path(__file__).resolve().parent / "variants" / "pod-nodeport-lb"
    mem = natproof.correlate(d / "inside.pcap", d / "outside.pcap")
    calls = mem.connections.filter(pl.col("orig_dst") == "203.0.113.2")
    assert calls["verdict"].to_list() == ["internal"] * 3 and calls["service_type"].to_list() == ["NodePort"] * 3
    spilled = natproof.correlate(d / "inside.pcap", d / "outside.pcap", memory_limit=1)
    assert len(list(spilled.spill.path.glob("inside-packets-*.parquet"))) == mem.connections.height
    assert_same(mem, spilled)
    assert not list(spilled.spill.path.glob("*-grouped-*")) and not list(spilled.spill.path.glob("*-legs-*"))


def test_a_lans_broadcasts_spilled_equal_in_memory(tiny_groups: None) -> None:
    # Helper's scapy variant (tests/variants/lan-broadcast25): directed broadcasts (.127 on a /25) are known only
    # from the whole capture's senders, link-local ones from the address alone; 169.254.255.255 is both, and was
    # counted as broadcast in memory, link_local past memory (read batch by batch before the senders are known).
    d = Path(__file__).resolve().parent / "variants" / "lan-broadcast25"
    mem = natproof.correlate(d / "inside.pcap", d / "outside.pcap")
    spilled = natproof.correlate(d / "inside.pcap", d / "outside.pcap", memory_limit=1)
    assert_same(mem, spilled)
    assert mem.inside.skipped.get("broadcast") == 7 and mem.inside.skipped.get("link_local")


VARIANTS = sorted(d.name for d in (Path(__file__).resolve().parent / "variants").iterdir()
                  if (d / "inside.pcap").is_file() and (d / "outside.pcap").is_file())


@pytest.mark.parametrize("name", VARIANTS)
def test_every_kernel_variant_spilled_in_small_groups_equals_in_memory(name: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The variants of the shared cases' kinds (tests/variants), as the bundled pairs above: what a group cannot
    see of the others (the node's addresses, the senders a directed broadcast needs) is the fault this guards."""
    d = Path(__file__).resolve().parent / "variants" / name
    mem = natproof.correlate(d / "inside.pcap", d / "outside.pcap")
    monkeypatch.setattr(spill, "MIN_GROUP_PACKETS", max(1, (mem.inside.packets + mem.outside.packets) // 8))
    assert_same(mem, natproof.correlate(d / "inside.pcap", d / "outside.pcap", memory_limit=1))


def test_generator_scenario_with_every_verdict_equals_in_memory(tmp_path: Path, tiny_groups: None) -> None:
    sc = SCENARIOS["every_verdict"]
    write_scenario(sc, tmp_path)
    kw = {"pod_cidr": sc.pod_cidr}
    assert_same(natproof.correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap", **kw),
                natproof.correlate(tmp_path / "inside.pcap", tmp_path / "outside.pcap", memory_limit=1, **kw))


def test_a_bulk_pair_at_a_limit_of_a_few_thousand_packets_is_cut_into_groups(tmp_path: Path) -> None:
    generate_pair(tmp_path, 30_000, seed=7)
    inside, outside = tmp_path / "inside.pcap", tmp_path / "outside.pcap"
    limit = spill.BASE_BYTES + 6_000 * spill.BYTES_PER_PACKET
    assert spill.estimated_bytes([inside, outside]) > limit
    spilled = natproof.correlate(inside, outside, memory_limit=limit)
    groups = len(list(spilled.spill.path.glob("inside-packets-*.parquet")))
    assert 5 <= groups <= 20, groups
    assert_same(natproof.correlate(inside, outside), spilled)


def test_inputs_within_the_limit_stay_in_memory() -> None:
    inside, outside = pair("basic")
    result = natproof.correlate(inside, outside, memory_limit=spill.default_memory_limit())
    assert result.spill is None and isinstance(result.inside_packets, pl.DataFrame)


def test_the_spill_directory_is_removed_with_the_result_and_on_error(tmp_path: Path, tiny_groups: None) -> None:
    inside, outside = pair("basic")
    result = natproof.correlate(inside, outside, memory_limit=1, spill_dir=tmp_path)
    where = result.spill.path
    assert where.parent == tmp_path and any(where.iterdir())
    del result
    gc.collect()
    assert not where.exists()
    with pytest.raises(InputError, match="look swapped"):
        natproof.correlate(outside, inside, memory_limit=1, spill_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_result_past_memory_refuses_to_be_pickled_and_says_why(tiny_groups: None) -> None:
    """Its packets live in a folder removed with it: a copy in another process (a process pool's child returning
    it) would outlive the folder. An in-memory Result pickles."""
    import pickle

    inside, outside = pair("basic")
    spilled = natproof.correlate(inside, outside, memory_limit=1)
    with pytest.raises(TypeError, match="a Result correlated past memory cannot be pickled"):
        pickle.dumps(spilled)
    mem = pickle.loads(pickle.dumps(natproof.correlate(inside, outside)))
    assert mem.spill is None and mem.connections.drop(IDS).equals(spilled.connections.drop(IDS))


def test_a_swapped_pair_is_swapped_back_past_memory_too(tiny_groups: None) -> None:
    inside, outside = pair("basic")
    result = natproof.correlate(outside, inside, memory_limit=1, allow_swap=True)
    assert result.spill is not None
    assert any("looked swapped" in w for w in result.inside.warnings)
    assert_same(natproof.correlate(inside, outside), result)


def test_a_capture_of_several_interfaces_is_correlated_in_memory_and_says_so() -> None:
    d = CAPTURES / "overlay"
    result = natproof.correlate(d / "node.pcapng", d / "outside.pcap", memory_limit=1, allow_swap=True,
                                inside_if=None)
    assert result.spill is None
    assert any("--memory-limit not applied" in w for w in result.inside.warnings)


def test_one_capture_is_correlated_in_memory_and_says_so() -> None:
    """Found by a new user's trial: the one-capture forms ignored the limit without the warning the README
    promises (only two files said it). Within the limit, no word of it."""
    d = CAPTURES / "internal"
    split = natproof.correlate(d / "any.pcap", interfaces=d / "links.txt", memory_limit=1)
    assert split.spill is None
    assert split.inside.warnings[-1] == (
        "--memory-limit not applied (one capture of several interfaces): correlating past memory takes two captures "
        "of one interface each; the capture was correlated in memory")
    inside, outside = pair("basic")
    record = CAPTURES / "basic" / "conntrack.log"
    one = natproof.correlate(inside, None, conntrack=record, memory_limit=1)
    assert one.spill is None and one.inside.warnings[-1].startswith(
        "--memory-limit not applied (one capture and a conntrack record): ")
    uplink = natproof.correlate(None, outside, conntrack=record, memory_limit=1)
    assert uplink.outside.warnings[-1].startswith("--memory-limit not applied (one capture and a conntrack record)")
    assert len(uplink.inside.warnings) == len(one.outside.warnings) == 1  # the side not captured: only that
    roomy = natproof.correlate(d / "any.pcap", interfaces=d / "links.txt", memory_limit=2**40)
    assert not any("--memory-limit" in w for w in roomy.inside.warnings)


@pytest.mark.parametrize(("text", "size"), [("512M", 512 << 20), ("2G", 2 << 30), ("1.5g", 3 << 29),
                                            ("1000", 1000), ("64KiB", 64 << 10), ("1TB", 1 << 40)])
def test_sizes(text: str, size: int) -> None:
    assert spill.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "0", "-1G", "1X"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        spill.parse_size(text)


def test_a_full_disk_is_one_clear_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tiny_groups: None) -> None:
    """The write fails as polars reports ENOSPC (inside a ComputeError's text, seen on a 64 KiB tmpfs)."""
    def full(df: pl.DataFrame, path: Path) -> None:
        raise pl.exceptions.ComputeError("parquet: underlying IO error: No space left on device (os error 28)")

    monkeypatch.setattr(spill, "_write", full)
    inside, outside = pair("basic")
    with pytest.raises(InputError, match=f"{tmp_path}: no space left for the spilled packets"):
        natproof.correlate(inside, outside, memory_limit=1, spill_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_the_command_prints_the_same_past_memory(fmt: str, capsys: pytest.CaptureFixture[str],
                                                 tiny_groups: None) -> None:
    """(CSV and Parquet carry the conn_ids, which differ: compared in assert_same without them.)"""
    from natproof.cli import main

    inside, outside = pair("reply-drop")
    outs = []
    for extra in ([], ["--memory-limit", "1K"]):
        assert main(["correlate", str(inside), str(outside), "--format", fmt, "-q", *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0]


@pytest.mark.parametrize("value", ["0", "abc", "-1G"])
def test_a_bad_memory_limit_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from natproof.cli import main

    inside, outside = pair("basic")
    assert main(["correlate", str(inside), str(outside), "--memory-limit", value]) == 2
    err = capsys.readouterr().err
    assert "--memory-limit" in err and "size" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text", ["inf", "1e400", "0.5", "nan"])
def test_sizes_that_are_no_bytes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        spill.parse_size(text)


def test_standard_input_is_correlated_in_memory_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    inside, outside = pair("basic")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(outside.read_bytes())))
    result = natproof.correlate(inside, "-", memory_limit=1)
    assert result.spill is None
    assert any("standard input" in w for w in result.inside.warnings)


@pytest.mark.parametrize(("where", "problem"), [
    ("{tmp}/file", "a file, not a folder"),
    ("/dev/null", "a device, not a folder"),
    ("/proc", "cannot make a folder in it (No such file or directory)"),
    ("{tmp}/missing", "no such folder"),
])
def test_a_spill_dir_that_cannot_hold_a_folder_is_one_line_naming_it_and_the_problem(
        where: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A regular file, /dev/null and /proc were each worded differently (click's 'Directory ... is a file.', and
    'cannot make the spill folder there' only once the limit was reached): a new user's trial. One check
    (natproof.memory.check_spill_dir), before any capture is read, limit reached or not, in one form."""
    from natproof.cli import main

    where = where.format(tmp=tmp_path)
    (tmp_path / "file").write_text("not a folder\n")
    inside, outside = pair("basic")
    for limit in (1, None):
        with pytest.raises(InputError) as exc:
            natproof.correlate(inside, outside, memory_limit=limit, spill_dir=where)
        assert str(exc.value) == f"spill_dir={where!r}: {problem}"
    assert main(["correlate", str(inside), str(outside), "--memory-limit", "1", "--spill-dir", where, "-q"]) == 2
    assert capsys.readouterr().err == f"natproof: error: --spill-dir {where}: {problem}\n"
    assert natproof.correlate(inside, outside, memory_limit=None, spill_dir=tmp_path).spill is None
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # a folder that takes one: the trial's removed


def test_an_empty_spill_dir_is_refused_alike_by_the_library_and_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """spill_dir="" spilled into the current folder (tempfile reads "" so) where --spill-dir "" was refused: a new
    user's trial. One check (natproof.memory.check_spill_dir), before any capture is read, each in its words."""
    from natproof.cli import main

    monkeypatch.chdir(tmp_path)
    inside, outside = pair("basic")
    with pytest.raises(InputError) as exc:
        natproof.correlate(inside, outside, memory_limit=1, spill_dir="")
    assert str(exc.value) == "spill_dir='': an empty name names no folder"
    with pytest.raises(InputError, match="^spill_dir='': an empty name names no folder$"):
        spill.SpillDir("")
    assert main(["correlate", str(inside), str(outside), "--memory-limit", "1", "--spill-dir", ""]) == 2
    assert capsys.readouterr().err == "natproof: error: --spill-dir '': an empty name names no folder\n"
    assert list(tmp_path.iterdir()) == []


def test_the_library_takes_a_size_and_refuses_less_than_a_byte() -> None:
    inside, outside = pair("basic")
    assert natproof.correlate(inside, outside, memory_limit="1K").spill is not None
    with pytest.raises(InputError, match="one byte or more"):
        natproof.correlate(inside, outside, memory_limit=-5)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT twice"])
def test_a_spilled_run_ended_by_a_signal_leaves_no_spill_folder(tmp_path: Path, how: str) -> None:
    # SIGTERM (timeout, kill, a CI job's limit) ended the process at once: its spill folder stayed (a trial found
    # 3-4 MB folders in /tmp after each). It now ends as Ctrl-C does, clean-up first, exit 143; and a second
    # SIGINT during the clean-up (GNU timeout signals the command and its group) does not cut it short.
    import signal
    import subprocess
    import sys
    import time

    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    d = CAPTURES / "many-connections"
    proc = subprocess.Popen([sys.executable, "-m", "natproof", "correlate", str(d / "inside.pcap.gz"),
                             str(d / "outside.pcap.gz"), "--memory-limit", "64M", "--spill-dir", str(spill_dir),
                             "-o", str(tmp_path / "r.json")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(spill_dir.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # into the spilled work
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    with proc.stderr:
        code, err = proc.wait(timeout=60), proc.stderr.read().decode()
    if code == 0:  # finished before the signal: nothing to say of it
        return
    if how == "SIGTERM":
        assert (code, err) == (143, "natproof: terminated\n")
    else:  # (the second SIGINT may land as the process ends, past the one line: what it must not do is stop the
        # clean-up)
        assert code == 130 and err.startswith("natproof: interrupted\n"), err
    assert list(spill_dir.iterdir()) == [] and not (tmp_path / "r.json").exists()


def test_a_masqueraded_flow_caught_midway_gives_the_pod_networks_past_memory_too(tmp_path: Path,
                                                                                   tiny_groups: None) -> None:
    # A helper's trial (s16): a pod's gRPC stream caught mid-flow, its leg turned round in assembly. The pod
    # networks were inferred from the reading before it ("none"), and past memory they still were once the in-memory
    # path read it right. Here a second connection, from a public address the outside shows, is a group of its own.
    from pcapbytes import ipv4, tcp, tcp_pair, write_pair

    pod, node, far = "10.244.0.10", "203.0.113.2", "198.51.100.10"
    t0 = 1_700_000_000 * 10**9
    inside, outside = tcp_pair(t0, pod="192.0.2.7", node="192.0.2.7", sport=41000, nat_sport=41000)
    for n in range(4):
        t = t0 + n * 10_000_000
        seg = tcp(33000, 50051, 1000 + n * 100, 5000 + n * 100, 0x18, b"p%d" % n)
        inside.append((t, ipv4(pod, far, 6, seg, ttl=64, ip_id=100 + n)))
        outside.append((t + 30_000, ipv4(node, far, 6, seg, ttl=63, ip_id=100 + n)))
        back = tcp(50051, 33000, 5000 + n * 100, 1000 + n * 100 + 2, 0x18, b"f%d" % n)
        outside.append((t + 2_000_000, ipv4(far, node, 6, back, ttl=50, ip_id=200 + n)))
        inside.append((t + 2_030_000, ipv4(far, pod, 6, back, ttl=49, ip_id=200 + n)))
    paths = write_pair(tmp_path, inside, outside)
    mem = natproof.correlate(*paths)
    assert mem.pod_networks == ("10.244.0.0/16",)
    spilled = natproof.correlate(*paths, memory_limit=1)
    assert len(list(spilled.spill.path.glob("inside-packets-*.parquet"))) == 2
    assert_same(mem, spilled)
    assert spilled.pod_networks_why == mem.pod_networks_why and "(10.244.0.10)" in spilled.pod_networks_why
