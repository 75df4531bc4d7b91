"""The command line's entry: ``python -m natproof`` and the ``natproof`` console script (``entry``)."""

import sys
from typing import NoReturn


def run(argv: list[str] | None = None) -> int:
    """natproof.cli.main, and Ctrl-C while the command line itself loads, or between that and main's own
    handling, said in the same one line as at any other moment (exit 130), not a traceback."""
    try:
        from natproof.cli import main

        return main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("natproof: interrupted\n")
        return 130


def entry() -> NoReturn:
    """The process's entry: :func:`run` on sys.argv, then :func:`leave` with its status."""
    leave(run())


def leave(status: int) -> NoReturn:
    """End the process with ``status`` once the command is done, without the interpreter's teardown of every
    module it loaded (polars and numpy: ~35 ms of each command's time, measured): the atexit handlers run (an
    unused prestarted worker is ended there, natproof.parallel), standard output and error are flushed, then
    os._exit. Every file natproof writes is closed by then (written atomically, natproof.report.files). The usual
    exit while a thread that is not a daemon still runs (it waits for it), or under a profiler or tracer (which
    write their findings after the program: ``python -m pyinstrument -m natproof ...``, coverage)."""
    import atexit
    import os
    import threading

    main = threading.main_thread()
    if (sys.getprofile() is not None or sys.gettrace() is not None
            or any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate())):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # (None: started with it closed, >&-)
                stream.flush()
        except (OSError, ValueError):  # natproof.cli.main flushed standard output and said what failed
            pass
    os._exit(status)


if __name__ == "__main__":
    entry()
