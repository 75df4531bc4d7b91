"""The command line's entry: ``python -m natproof`` and the ``natproof`` console script (``run``)."""

import os
import sys

# numpy's OpenBLAS starts a thread per core as numpy is imported; natproof calls no BLAS routine, and on a machine
# whose cores the two capture processes already fill those threads took 0.14 s of CPU per process to start (2 x 1M
# real packets, correlate: 4.5 -> 4.3 s of user CPU). Only the command line and natproof's own worker
# (natproof.parallel) set it, not ``import natproof`` in a caller's program. A value the user set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def run(argv: list[str] | None = None) -> int:
    """natproof.cli.main, and Ctrl-C while the command line itself loads said in the same one line as at any
    other moment (exit 130), not a traceback."""
    try:
        from natproof.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("natproof: interrupted\n")
        return 130
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
