"""What keeps large captures within memory changes nothing in the result: decoding batch by batch into the
columns correlate keeps, grouping in parts of whole flows, matching in parts of the key space, and preparing
the outside capture in a second process."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from natproof import connections, match, parallel
from natproof.assemble import Services
from natproof.capture import CaptureInfo
from natproof.connections import group_connections
from natproof.correlate import DECODE_COLUMNS, _prepare_side, correlate, packet_features
from natproof.fastdecode import decode_file
from natproof.packets import load_packets
from natproof.parallel import run_pair
from natproof.testing.bulk import generate_pair
from natproof.testing.scenario import SCENARIOS, write_scenario

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
PAIRS = ["many-connections", "icmp", "udp", "port-collision", "internal", "large-transfer"]


def _pair(name: str) -> tuple[Path, Path]:
    d = CAPTURES / name
    return next(d.glob("inside.pcap*")), next(d.glob("outside.pcap*"))


def _info(info: CaptureInfo) -> tuple:
    return (info.records, info.first_ts_ns, info.last_ts_ns, dict(info.skipped), info.warnings)


@pytest.mark.parametrize("name", PAIRS)
def test_batches_of_packet_features_equal_the_reference_decoders_frame(name: str) -> None:
    for path in _pair(name):
        ref_info, ref = load_packets(path, fast=False, columns=DECODE_COLUMNS, transform=packet_features)
        # Small batches: many per capture, so a feature computed across batch boundaries would show.
        info, got = decode_file(path, chunk_bytes=16 * 1024, columns=DECODE_COLUMNS, transform=packet_features)
        assert got.equals(ref), path
        assert _info(info) == _info(ref_info)
        assert "src" not in got.columns and {"f_src", "sig"} <= set(got.columns)


def _by_flow(pk: pl.DataFrame, conns: pl.DataFrame) -> list[tuple]:
    """Each packet (by frame) with its direction and its connection's tuple and start: conn_id numbering aside."""
    named = conns.select("conn_id", "proto", "src", "sport", "dst", "dport", "first_ts_ns")
    rows = pk.select("frame_no", "conn_id", "is_egress", "remote", "rport", "local", "lport").join(named, on="conn_id")
    return sorted(rows.drop("conn_id").with_columns(pl.col("remote", "local").cast(pl.String)).iter_rows())


def test_grouping_in_parts_of_whole_flows_gives_the_same_connections(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pair = generate_pair(tmp_path, 6000, seed=3)
    for path in (pair.inside, pair.outside, *_pair("icmp"), *_pair("many-connections")):
        _, packets = load_packets(path)
        whole_pk, whole = group_connections(packets)
        monkeypatch.setattr(connections, "GROUP_PART_ROWS", 500)
        parts_pk, parts = group_connections(packets)
        monkeypatch.undo()
        assert whole.height > 1
        assert parts_pk.height == whole_pk.height and parts.height == whole.height
        assert _by_flow(parts_pk, parts) == _by_flow(whole_pk, whole), path
        assert parts_pk["frame_no"].to_list() == whole_pk["frame_no"].to_list()  # still in capture order


@pytest.mark.parametrize("name", ["many-connections", "icmp", "internal", "port-collision"])
def test_correlate_in_parts_and_in_two_processes_gives_the_same_document(name: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    inside, outside = _pair(name)
    whole = correlate(inside, outside).to_dict()
    monkeypatch.setattr(connections, "GROUP_PART_ROWS", 700)
    monkeypatch.setattr(match, "PART_ROWS", 700)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    parts = correlate(inside, outside).to_dict()
    assert parts == whole
    assert whole["summary"]["connections"] > 0


def _match_frames(name: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both captures of a pair as correlate prepares them for matching."""
    frames = [_prepare_side(path, None, inside=inside, fast=None, timeouts=None, pod_cidr=None,
                            services=Services())[1]["match"]
              for inside, path in zip((True, False), _pair(name), strict=True)]
    return frames[0], frames[1]


def test_inside_keys_cut_ahead_give_the_same_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    # correlate cuts the inside side's keys while the worker still prepares the outside capture (arrange_keys);
    # matching then takes them as they are, or cuts again when the other side's height gives another part count.
    monkeypatch.setattr(match, "PART_ROWS", 97)
    ins, outs = _match_frames("many-connections")
    parts = match.key_part_count(ins.height, outs.height)
    assert parts > 2
    whole = match.match_sides(ins, outs).pairs
    ahead = match.arrange_keys(ins, parts)
    assert len(ahead.frames) == parts and sum(f.height for f in ahead.frames) == ins["k_strong"].count()
    assert all(f["k_strong"].is_sorted() for f in ahead.frames)
    assert match.match_sides(ins, outs, inside_parts=ahead).pairs.equals(whole)
    assert ahead.frames == []  # each part let go of as matching read it: not held to the end beside a copy
    other = match.arrange_keys(ins, parts + 1)  # guessed from this side alone, wrongly: not used
    assert not other.fits("k_strong", list(match.EXACT_COLUMNS), parts)
    assert match.match_sides(ins, outs, inside_parts=other).pairs.equals(whole)
    assert other.frames == []


def test_the_worker_leaves_time_for_the_next_step_only_when_there_is_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inside, outside = _pair("icmp")
    seen: list[int] = []

    def waiting(first: tuple) -> None:
        seen.append(first[1]["match"].height)

    kwargs = dict(each=[{"inside": True}, {"inside": False}], fast=None, timeouts=None, pod_cidr=None,
                  services=Services(), while_waiting=waiting)
    run_pair(_prepare_side, [inside, outside], **kwargs)
    assert seen == []  # one after the other: nothing to wait for
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    (_, first), _ = run_pair(_prepare_side, [inside, outside], **kwargs)
    assert seen == [first["match"].height] and seen[0] > 0


def test_a_prestarted_worker_takes_the_job_and_an_unused_one_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    # The command line starts the outside capture's process before it loads polars (parallel.prestart), so both
    # load their libraries at once; run_pair hands that process its job, and one no run_pair takes ends.
    inside, outside = _pair("icmp")
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    kwargs = dict(each=[{"inside": True}, {"inside": False}], fast=None, timeouts=None, pod_cidr=None,
                  services=Services())
    fresh = run_pair(_prepare_side, [inside, outside], **kwargs)
    parallel.prestart([inside, outside], _prepare_side.__module__)
    assert parallel._prestarted is not None
    worker = parallel._prestarted[2]
    taken = run_pair(_prepare_side, [inside, outside], **kwargs)
    assert parallel._prestarted is None and worker.wait(timeout=30) == 0
    assert all(taken[i][1][n].equals(fresh[i][1][n]) for i in (0, 1) for n in fresh[i][1])
    # Started for other captures (or never taken): ended, not left behind; run_pair starts its own.
    parallel.prestart([inside, outside], _prepare_side.__module__)
    unused = parallel._prestarted[2]
    other = run_pair(_prepare_side, [outside, inside], each=[{"inside": True}, {"inside": False}], fast=None,
                     timeouts=None, pod_cidr=None, services=Services())
    assert unused.poll() is not None and other[1][1]["match"].height == fresh[0][1]["match"].height
    parallel.prestart([inside, outside], _prepare_side.__module__)
    unused = parallel._prestarted[2]
    parallel.discard_prestarted()
    assert parallel._prestarted is None and unused.poll() is not None


def _worker_with_a_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str,
                       source: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A worker (its stderr piped) for a job module of ``source``, and the job's folder, not yet handed to it."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: popen(*a, stderr=subprocess.PIPE, **k))
    proc = parallel._start_worker(module)
    job = tmp_path / "job"
    job.mkdir()
    with open(job / "job.pickle", "wb") as fh:
        pickle.dump((module, "job", "x", {}), fh)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    return proc, job


def test_ctrl_c_ends_a_worker_in_its_job_without_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C reaches the whole process group: the command line says "natproof: interrupted" and ends the worker,
    # which must print nothing of its own (it printed KeyboardInterrupt's traceback when caught in its job).
    proc, job = _worker_with_a_job(tmp_path, monkeypatch, "slowjob",
                                   "import time\ndef job(path, progress):\n    progress(1)\n    time.sleep(60)\n")
    proc.stdin.write(f"{job}\n".encode())
    proc.stdin.close()
    assert proc.stdout.readline() == b"progress 1\n"  # in its job
    proc.send_signal(signal.SIGINT)
    with proc.stdout, proc.stderr:
        assert proc.wait(timeout=30) == 130
        assert proc.stderr.read() == b""


@pytest.mark.parametrize("error", ["InputError('b.pcap: no interface eth0')", "ValueError('a bug')"])
def test_a_worker_that_cannot_do_its_job_prints_no_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             error: str) -> None:
    # An --outside-if the outside capture has not: the worker printed InputError's traceback above the command
    # line's one error line. Now the worker's NatproofError is raised here as it is, and a bug in the worker is
    # met again by the caller running the job itself (one traceback, with --traceback), the worker silent.
    from natproof.errors import InputError

    (tmp_path / "failjob.py").write_text("from natproof.errors import InputError\n"
                                         "def job(path, progress):\n"
                                         "    if str(path).endswith('b'):\n"
                                         f"        raise {error}\n"
                                         "    return path, {}\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    for name in "ab":
        (tmp_path / name).write_bytes(b"x")
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen",
                        lambda *a, **k: started.append(popen(*a, stderr=subprocess.PIPE, **k)) or started[-1])
    import failjob  # type: ignore[import-not-found]

    with pytest.raises(InputError if error.startswith("InputError") else ValueError, match="eth0|a bug"):
        run_pair(failjob.job, [tmp_path / "a", tmp_path / "b"])
    assert len(started) == 1
    with started[0].stderr as stderr:
        started[0].wait(timeout=30)
        assert stderr.read() == b""
    sys.modules.pop("failjob", None)


def test_ctrl_c_while_the_worker_starts_is_left_to_the_caller(tmp_path: Path) -> None:
    # Ctrl-C in the worker's first ~50 ms (the interpreter importing its site module; the command line prestarts
    # the worker as it parses OUTSIDE) printed "Fatal Python error: init_import_site" and a traceback (a new user's
    # trial). A terminal's Ctrl-C goes to its foreground process group: the worker has a group of its own, and the
    # caller, interrupted, says so in one line and ends it. Here the command line runs in a session of its own and
    # the whole group is signalled, as a terminal does, at moments around the worker's start.
    inside, outside = _pair("icmp")
    # "ready" is said inside main's handling (its _main), as the command line's entry is: said before main, a
    # signal could land between the two and end the test's own script with a traceback (a CI run, delay 0).
    code = f"""if True:
        import sys
        from natproof import cli, parallel
        parallel.PARALLEL_MIN_BYTES = 0
        command = cli._main

        def _main(args):
            print("ready", flush=True)
            return command(args)

        cli._main = _main
        sys.exit(cli.main(["correlate", {str(inside)!r}, {str(outside)!r}, "-q", "-o", {str(tmp_path / "r.json")!r}]))
    """
    import time

    for delay in (0.0, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        assert proc.stdout is not None and proc.stderr is not None
        with proc.stdout, proc.stderr:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
            code_, err = proc.wait(timeout=60), proc.stderr.read().decode()
        assert "Traceback" not in err and "Fatal" not in err, (delay, err)
        assert code_ == 0 or (code_ == 130 and err.strip() == "natproof: interrupted"), (delay, code_, err)
    worker = parallel._start_worker("natproof.correlate")  # its own group: no terminal's signal reaches it
    try:
        assert os.getpgid(worker.pid) == worker.pid != os.getpgid(0)
    finally:
        parallel._end(worker)


def _record_jobs(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    """Every pair in two processes; the job folders run_pair makes and the workers it starts, as they come."""
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    made: list[str] = []
    started: list[subprocess.Popen[bytes]] = []
    mkdtemp, start_worker = parallel.tempfile.mkdtemp, parallel._start_worker
    monkeypatch.setattr(parallel, "tempfile",
                        SimpleNamespace(mkdtemp=lambda **k: made.append(mkdtemp(**k)) or made[-1]))
    monkeypatch.setattr(parallel, "_start_worker", lambda m: started.append(start_worker(m)) or started[-1])
    return made, started


def test_ctrl_c_before_the_job_starts_leaves_no_folder_and_no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Interrupted between making the job's folder and starting the job (here: as the listener thread is made), the
    # folder in /dev/shm was left behind with its job.pickle, and the worker unreaped.
    inside, outside = _pair("icmp")
    made, started = _record_jobs(monkeypatch)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(parallel, "threading", SimpleNamespace(Thread=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run_pair(_prepare_side, [inside, outside], each=[{"inside": True}, {"inside": False}], fast=None,
                 timeouts=None, pod_cidr=None, services=Services())
    assert len(made) == 1 and not Path(made[0]).exists()
    assert len(started) == 1 and started[0].poll() is not None


def test_a_second_ctrl_c_during_the_clean_up_still_ends_the_worker_and_its_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GNU timeout sends SIGINT to the command and then to its process group: twice. The second interrupt, raised
    # inside run_pair's clean-up after the first, cut it short: the worker lived on, wrote its frames, met a closed
    # pipe (a BrokenPipeError traceback) and left its folder in /dev/shm (a new user's trial).
    inside, outside = _pair("icmp")
    made, started = _record_jobs(monkeypatch)
    rmtree, kills = parallel.shutil.rmtree, []

    def second_interrupt(path: str, **kwargs: object) -> None:
        if not kills:
            kills.append(path)
            raise KeyboardInterrupt  # the second one, inside the clean-up
        rmtree(path, **kwargs)

    monkeypatch.setattr(parallel, "shutil", SimpleNamespace(rmtree=second_interrupt))

    def first_interrupt(first: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pair(_prepare_side, [inside, outside], each=[{"inside": True}, {"inside": False}], fast=None,
                 timeouts=None, pod_cidr=None, services=Services(), while_waiting=first_interrupt)
    assert kills and len(made) == 1 and not Path(made[0]).exists() and parallel._jobs == {}
    assert len(started) == 1 and started[0].poll() is not None


def test_a_worker_whose_caller_has_gone_removes_its_folder_quietly(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Its status line meets a closed pipe: no traceback, and the folder with its frames is no one's to remove.
    proc, job = _worker_with_a_job(tmp_path, monkeypatch, "quickjob",
                                   "import polars as pl\n"
                                   "def job(path, progress):\n    return 1, {'f': pl.DataFrame({'a': [1]})}\n")
    proc.stdout.close()  # the caller went away
    proc.stdin.write(f"{job}\n".encode())
    proc.stdin.close()
    with proc.stderr:
        assert proc.wait(timeout=60) == 1
        assert proc.stderr.read() == b""
    assert not job.exists()


@pytest.mark.parametrize("command", ["correlate", "diagnose", "report"])
def test_the_command_line_prestarts_the_worker_before_it_loads_polars(tmp_path: Path, command: str) -> None:
    # What lets prestart's worker load its libraries while this process loads its own (and --help answer at
    # once): the command line, its options' callbacks included, imports polars, numpy and the pipeline only once
    # a command runs, and the worker starts as OUTSIDE is parsed, before the command's body imports its modules
    # (diagnose imported natproof.diagnose, and with it polars, before it correlated).
    inside, outside = _pair("icmp")
    target = "r.html" if command == "report" else "r.out"
    code = f"""if True:
        import sys
        from natproof import parallel
        seen = []
        parallel.prestart = lambda paths, module: seen.append(sorted({{"polars", "numpy"}} & set(sys.modules)))
        from natproof.cli import main
        code = main([{command!r}, {str(inside)!r}, {str(outside)!r}, "--memory-limit", "8G", "--nodeport-range",
                     "30000-32767", "--service-cidr", "10.96.0.0/12", "-q", "-o", {str(tmp_path / target)!r}])
        print(code, seen[0])
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0 []"


def test_two_processes_for_many_small_packets_not_only_for_big_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # The work is per packet: captures of small packets go to two processes by their estimated packet count
    # (file size over the first records' mean size) even below PARALLEL_MIN_BYTES; files too small to hold that
    # many packets are not even sampled.
    inside, outside = _pair("basic")
    from natproof.capture import estimated_records, read_capture

    packets = sum(1 for _ in read_capture(inside)[1])
    assert estimated_records(inside) == packets  # all of it sampled: exact (but for the file header)
    assert not parallel.pairs([inside, outside])
    monkeypatch.setattr(parallel, "PARALLEL_MIN_PACKETS", packets // 2)
    assert parallel.pairs([inside, outside]) and not parallel.pairs([inside, "-"])
    monkeypatch.setattr(parallel, "PARALLEL_MIN_PACKETS", packets + 1)
    assert not parallel.pairs([inside, outside])
    monkeypatch.setattr(parallel, "_packets", lambda path: pytest.fail(f"{path} sampled"))
    monkeypatch.setattr(parallel, "PARALLEL_MIN_PACKETS", inside.stat().st_size)  # more than the bytes can hold
    assert not parallel.pairs([inside, outside])


def test_generated_scenarios_survive_parts_and_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = {}
    for name in ("retransmit", "gro", "every_verdict", "clock_offset"):
        write_scenario(SCENARIOS[name], tmp_path / name)
        docs[name] = correlate(tmp_path / name / "inside.pcap", tmp_path / name / "outside.pcap").to_dict()
    monkeypatch.setattr(connections, "GROUP_PART_ROWS", 3)
    monkeypatch.setattr(match, "PART_ROWS", 3)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    for name, doc in docs.items():
        got = correlate(tmp_path / name / "inside.pcap", tmp_path / name / "outside.pcap").to_dict()
        assert got == doc, name


@pytest.mark.parametrize("distinct", [False, True], ids=["replayed", "distinct"])
def test_a_pair_looped_gives_each_copy_its_own_connections(tmp_path: Path, distinct: bool) -> None:
    # captures/port-collision (two pods on one source port: the kernel remapped one) looped 6 times: replayed byte for
    # byte as tcpreplay --loop sends it (no packet key is unique any more), or as distinct traffic on the same
    # tuples. Either way each copy is its own connections, with the mapping the kernel made the first time.
    from natproof.testing.replay import loop_pair

    inside, outside = _pair("port-collision")
    once = correlate(inside, outside).to_dict()["connections"]
    looped = correlate(*loop_pair(inside, outside, tmp_path, 6, distinct=distinct)).to_dict()["connections"]
    assert len(looped) == 6 * len(once)

    def mapping(c: dict) -> tuple:
        return c["original"]["src"], c["original"]["sport"], c["translated"]["sport"], c["verdict"], c["fates"]

    assert sorted(mapping(c) for c in looped) == sorted(mapping(c) for c in once for _ in range(6))
    starts = sorted(c["first_seen"] for c in looped)
    period = (starts[len(once)] - starts[0])
    assert period > 1.0  # copies a capture's length plus a second apart, none folded into another
