"""Regenerate captures/<scenario>/ for every lab scenario (or the named ones) with the real kernel."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from natproof.lab import LabError, list_scenarios, run_scenario

    known = [name for name, _ in list_scenarios()]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", metavar="SCENARIO", help=f"default: all of {', '.join(known)}")
    parser.add_argument("--out", type=Path, default=REPO / "captures", help="default: %(default)s")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="write a scenario's files even when its checks fail, and go on after a failed scenario",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, description in list_scenarios():
            print(f"{name:18} {description}")
        return 0
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")

    failed: list[str] = []
    started = time.monotonic()
    for name in args.names or known:
        t0 = time.monotonic()
        try:
            truth = run_scenario(name, args.out / name, keep_going=args.keep_going)
        except LabError as exc:
            print(f"make_captures: error: {exc}", file=sys.stderr)
            failed.append(name)
            if not args.keep_going:
                break
            continue
        except KeyboardInterrupt:
            print("make_captures: interrupted", file=sys.stderr)
            return 130
        verdicts = Counter(c["verdict"] for c in truth["connections"])
        summary = ", ".join(f"{verdict} {count}" for verdict, count in sorted(verdicts.items()))
        took, count = time.monotonic() - t0, len(truth["connections"])
        print(f"{name:18} {count:4d} connections ({summary}) in {took:.1f} s", flush=True)
    print(f"total {time.monotonic() - started:.1f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
