"""The command line's entry: ``python -m natproof`` and the ``natproof`` console script (``run``)."""

import sys


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
