"""Run one job per capture for a pair of captures, the second in another Python process when both are large.

A job is a module-level function ``job(path, progress, **kwargs) -> (meta, frames)``: ``meta`` any picklable
value, ``frames`` a dict of polars frames. Decoding and grouping hold the GIL for most of their time, so threads
gain little (measured: 15%); a plain subprocess (not multiprocessing: a caller's script is never imported
again) runs the job on the second capture and hands its frames back through Arrow IPC files, in RAM when
/dev/shm is there. The machine this was built for has two cores.

The worker is a Python process that must load polars and natproof (about 0.3 s) before it can start: the command
line starts it (:func:`prestart`) before it loads them itself, so both load at once, and :func:`run_pair` hands it
the job when it comes (2 x 1M packets of real node traffic, alternated four times: 3.57 -> 3.31 s on average).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from natproof.errors import CaptureError, NatproofError

if TYPE_CHECKING:  # polars loads when a job runs, not with this module: see prestart
    import polars as pl

Progress = Callable[[int], None]
Job = Callable[..., tuple[Any, "dict[str, pl.DataFrame]"]]

PARALLEL_MIN_BYTES = 256 * 1024 * 1024
"""Two captures each at least this big run in two processes at once (below it, starting one costs more)."""

PARALLEL_MIN_PACKETS = 600_000
"""...or each holding at least this many packets (natproof.capture.estimated_records): the work is per packet,
and small packets pack many into few bytes. Measured on real node traffic (88-byte frames), alternated: 2 x 1M
packets (100 MB each) 3.78 s one after the other, 3.35 s in two processes; 2 x 200k packets (20 MB) 1.35 s and
1.50 s."""

_MIN_RECORD_BYTES = 44
"""The smallest record that holds a packet with ports (pcap record header, IPv4 and UDP headers): a file smaller
than PARALLEL_MIN_PACKETS of these cannot reach it, and is not sampled."""


Output = tuple[Any, "dict[str, pl.DataFrame]"]


def run_pair(job: Job, paths: Sequence[str | os.PathLike[str]], progress: Sequence[Progress | None] | None = None,
             *, each: Sequence[dict[str, Any]] | None = None, while_waiting: Callable[[Output], None] | None = None,
             **kwargs: Any) -> list[Output]:
    """``job(path, progress, **kwargs, **each[i])`` for each path: the second in a worker process when both files
    are large enough (:func:`pairs`), else one after the other.

    ``while_waiting(first output)`` runs in this process once its job is done while the worker's still runs: work
    that would come next anyway, moved into the wait (only when there is a worker: one after the other there is
    no wait to fill).

    Errors are raised as a sequential run would raise them: the first path's first. Arguments must pickle.
    """
    cbs = list(progress) if progress is not None else [None] * len(paths)
    args = [{**kwargs, **(each[i] if each else {})} for i in range(len(paths))]
    if not pairs(paths):
        return [job(p, cb, **a) for p, cb, a in zip(paths, cbs, args, strict=True)]
    shm = "/dev/shm"  # the frames cross in RAM when there is a tmpfs for them, not through the disk
    tmp = tempfile.mkdtemp(prefix="natproof-", dir=shm if os.access(shm, os.W_OK) else None)
    # From here on the folder and the worker are this call's to end, whatever interrupts it (Ctrl-C between the
    # folder's making and the job's start left both behind: a job.pickle in /dev/shm, a worker nobody reaped).
    proc: subprocess.Popen[bytes] | None = None
    status = "failed"
    _jobs[tmp] = None
    try:
        with open(os.path.join(tmp, "job.pickle"), "wb") as fh:
            pickle.dump((job.__module__, job.__qualname__, os.fspath(paths[1]), args[1]), fh)
        proc = _take_prestarted(paths[1], job.__module__) or _start_worker(job.__module__)
        _jobs[tmp] = proc
        assert proc.stdin is not None
        try:  # the job, by the folder that holds it; the worker ends at the end of its input
            proc.stdin.write(tmp.encode() + b"\n")
            proc.stdin.close()
        except OSError:  # a worker that died before its job came: the status below says failed, and the job runs here
            pass
        import polars as pl

        reply: list[str] = []
        listener = threading.Thread(target=_relay, args=(proc.stdout, cbs[1], reply), daemon=True)
        listener.start()
        first = job(paths[0], cbs[0], **args[0])
        if while_waiting is not None:
            while_waiting(first)
        # The worker's status line (or the end of its output), not its exit: a worker that has written its frames
        # spends another 0.3 s giving back its memory (2 x 5M real), which this process need not wait for.
        listener.join()
        status = reply[0] if reply else "failed"
        if status == "ok":
            with open(os.path.join(tmp, "meta.pickle"), "rb") as fh:
                meta, names = pickle.load(fh)
            second = (meta, {n: pl.read_ipc(os.path.join(tmp, f"{n}.arrow")) for n in names})
        elif status.startswith("capture_error\t"):
            _, path, problem = status.split("\t", 2)
            raise CaptureError(path, problem)
        elif status == "error":
            with open(os.path.join(tmp, "error.pickle"), "rb") as fh:
                raise pickle.load(fh)
        else:  # the worker failed unexpectedly: run the job here, so the real error (if any) surfaces
            second = job(paths[1], None, **args[1])
    finally:
        # To its end through a second KeyboardInterrupt (Ctrl-C again, or GNU timeout's SIGINT, sent to the process
        # and to its group: twice), which cut it short and left the worker and its folder behind (a new user's
        # trial); inline, as a function's entry is where Python would raise it. What still escapes is ended at exit.
        interrupted = False
        while True:
            try:
                _end_job(proc, status == "ok", tmp)
                break
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt
    return [first, second]


_jobs: dict[str, subprocess.Popen[bytes] | None] = {}
"""run_pair's job folders not yet removed, with their workers: ended at exit if a clean-up was cut short."""


def _end_job(proc: subprocess.Popen[bytes] | None, ok: bool, tmp: str) -> None:
    """End run_pair's worker (let it exit by itself once it said ok: it is giving back its memory, reaped in a
    thread) and remove the job's folder. Safe to run again."""
    if proc is not None:
        if proc.poll() is None:
            if ok:
                threading.Thread(target=proc.wait, daemon=True).start()  # reaped once it has exited
            else:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
    shutil.rmtree(tmp, ignore_errors=True)
    _jobs.pop(tmp, None)


@atexit.register
def _end_jobs_left() -> None:
    for tmp, proc in list(_jobs.items()):
        _end_job(proc, False, tmp)


_prestarted: tuple[str, str, subprocess.Popen[bytes]] | None = None
"""(second capture's path, job module, worker) of prestart's worker while no run_pair has taken it."""


def prestart(paths: Sequence[str | os.PathLike[str]], module: str) -> None:
    """Start the worker that :func:`run_pair` would start for these paths now, loading ``module`` (the job's),
    so that it loads its libraries while the caller loads its own: the command line calls this before importing
    polars. Nothing when :func:`pairs` says the paths run one after the other. A worker no run_pair takes (the
    run failed first, or correlated past memory) is ended when this process exits, or by
    :func:`discard_prestarted`; were this process killed, the worker's input closes and it exits by itself."""
    global _prestarted
    if _prestarted is not None or not pairs(paths):
        return
    _prestarted = (os.fspath(paths[1]), module, _start_worker(module))
    atexit.register(discard_prestarted)


def discard_prestarted() -> None:
    """End prestart's worker if no run_pair took it."""
    global _prestarted
    if _prestarted is None:
        return
    proc = _prestarted[2]
    _prestarted = None
    _end(proc)


def _take_prestarted(second: str | os.PathLike[str], module: str) -> subprocess.Popen[bytes] | None:
    global _prestarted
    if _prestarted is None:
        return None
    path, mod, proc = _prestarted
    _prestarted = None
    if path == os.fspath(second) and mod == module and proc.poll() is None:
        return proc
    _end(proc)
    return None


def _end(proc: subprocess.Popen[bytes]) -> None:
    """End a worker that has no job (it is only loading libraries or waiting): no need to wait for its imports."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _start_worker(module: str) -> subprocess.Popen[bytes]:
    """A worker process that imports ``module`` and then waits for its job's folder on standard input."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")]))}
    # The worker shares the cores with this process for its whole life: half of them for its polars pool, not a
    # pool as large as this one's (2 x 5M real on two cores: 23.4 -> 21.0 s). A POLARS_MAX_THREADS the user set wins.
    env.setdefault("POLARS_MAX_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    # Ctrl-C reaches the terminal's foreground process group: the worker has a group of its own, so it never sees
    # one (while its interpreter started, Ctrl-C printed "Fatal Python error: init_import_site" and a traceback);
    # the caller, interrupted, ends it (run_pair, discard_prestarted), and a caller that is gone closes its input.
    cmd = [sys.executable, "-c", "from natproof.parallel import _worker_main; _worker_main()", module]
    group = {"process_group": 0} if os.name == "posix" else {}
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, **group)


def pairs(paths: Sequence[str | os.PathLike[str]]) -> bool:
    """Whether run_pair runs jobs on these paths at once, in two processes: two files (not standard input) of at
    least PARALLEL_MIN_BYTES or PARALLEL_MIN_PACKETS each, and two cores or more. The caller's job can then leave
    the other core to the worker (natproof.fastdecode's read-ahead thread in both processes: 2 x 5M synthetic
    packets 13.6-14.0 s without, 14.1-15.5 s with; in the worker alone, whose polars pool has half the cores, it
    helps: 2 x 1M real 3.32 -> 3.27 s)."""
    if len(paths) != 2 or (os.cpu_count() or 1) < 2 or any(str(p) == "-" for p in paths):
        return False
    sizes = [_file_size(p) for p in paths]
    if min(sizes) >= PARALLEL_MIN_BYTES:
        return True
    if min(sizes) < PARALLEL_MIN_PACKETS * _MIN_RECORD_BYTES:
        return False
    return min(_packets(p) for p in paths) >= PARALLEL_MIN_PACKETS


def _packets(path: str | os.PathLike[str]) -> int:
    from natproof.capture import estimated_records

    return estimated_records(path) or 0


def _file_size(path: str | os.PathLike[str]) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _relay(stream: IO[bytes], progress: Progress | None, reply: list[str]) -> None:
    """Forward the worker's progress lines to ``progress``; keep its final status line in ``reply``."""
    for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith("progress "):
            if progress is not None:
                progress(int(line.split()[1]))
        else:
            reply.append(line)
            return


def _worker_main() -> None:
    """Worker process: imports the module named on its command line, then reads a folder's path from standard
    input (none: it was not needed, and exits); the folder holds job.pickle. Writes one Arrow IPC file per frame
    and meta.pickle, prints progress lines and then one status line (ok, or capture_error<TAB>path<TAB>problem, or
    error: another NatproofError, pickled in error.pickle; or failed: a bug, which the caller meets again itself).

    The worker is in a process group of its own (_start_worker): a terminal's Ctrl-C reaches the caller, which
    says so in one line and ends it. A SIGINT sent to it directly ends it quietly, no traceback of its own."""
    try:
        _work()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # the caller went away (interrupted) before the status line: its folder is no one's
        if _job_folder:
            shutil.rmtree(_job_folder, ignore_errors=True)
        os._exit(1)  # quietly: the interpreter's last flush of the closed pipe would fail again


_job_folder = ""
"""The worker's job folder once it has one (_worker_main removes it when its caller has gone)."""


def _work() -> None:
    global _job_folder
    importlib.import_module(sys.argv[1])
    tmp = sys.stdin.readline().strip()
    if not tmp:
        return
    _job_folder = tmp
    with open(os.path.join(tmp, "job.pickle"), "rb") as fh:
        module, name, path, kwargs = pickle.load(fh)
    job = getattr(importlib.import_module(module), name)
    out = sys.stdout

    def progress(n: int) -> None:
        out.write(f"progress {n}\n")
        out.flush()

    try:
        meta, frames = job(path, progress, **kwargs)
    except CaptureError as exc:
        out.write(f"capture_error\t{exc.path}\t{exc.problem}\n")
        return
    except NatproofError as exc:  # e.g. an --outside-if the capture has not: its one line, by the caller
        with open(os.path.join(tmp, "error.pickle"), "wb") as fh:
            pickle.dump(exc, fh)
        out.write("error\n")
        return
    except Exception:  # a bug: the caller runs the job again itself, where --traceback shows it (not twice here)
        out.write("failed\n")
        return
    for n, df in frames.items():
        df.write_ipc(os.path.join(tmp, f"{n}.arrow"), compression="uncompressed")
        frames[n] = df.clear()  # let go of each frame once written: the worker's peak is one frame lower
    with open(os.path.join(tmp, "meta.pickle"), "wb") as fh:
        pickle.dump((meta, list(frames)), fh)
    out.write("ok\n")
    out.flush()
