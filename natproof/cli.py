"""The natproof command line: parse options, call the library, render; the only place that exits."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from enum import IntEnum

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

import natproof
from natproof.errors import NatproofError
from natproof.report.export import FORMATS, render_bytes, write_result
from natproof.report.table import render_table

PROGRESS_MIN_BYTES = 4 * 1024 * 1024
"""Captures smaller than this decode in well under a second: no bar for them."""


class ExitStatus(IntEnum):
    OK = 0
    FAILED = 1
    """verify / lab check ran and an expectation failed."""
    BAD_INPUT = 2
    """Missing or unusable file, captures that cannot be used together, bad option."""
    INTERNAL = 70
    """A bug in natproof (sysexits EX_SOFTWARE); rerun with --traceback."""
    INTERRUPTED = 130


_stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def warn(msg: str) -> None:
    click.echo(f"natproof: warning: {msg}", err=True)


@contextlib.contextmanager
def make_progress(quiet: bool) -> Iterator[Callable[[str, int], Callable[[int], None]] | None]:
    """A rich progress bar on stderr for large captures; none when quiet or stderr is not a terminal."""
    if quiet or not _stderr.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=_stderr, transient=True) as bar:

        def factory(label: str, total: int) -> Callable[[int], None]:
            if total < PROGRESS_MIN_BYTES:
                return lambda n: None
            task = bar.add_task(label, total=total)
            return lambda n: bar.advance(task, n)

        yield factory


def output_options(f: Callable) -> Callable:
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings.")(f)
    f = click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
                     help="Write to FILE (atomically) instead of standard output.")(f)
    f = click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                     help="Output format; default: table on a terminal, json otherwise.")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(natproof.__version__, prog_name="natproof")
@click.option("--traceback", is_flag=True, help="Show the Python traceback of an error (for bug reports).")
@click.pass_context
def cli(ctx: click.Context, traceback: bool) -> None:
    """Prove what a NAT did to your traffic, from a capture on each side of it."""
    ctx.obj = {"traceback": traceback}


@cli.command()
@click.argument("inside", type=click.Path(dir_okay=True))
@click.argument("outside", type=click.Path(dir_okay=True))
@click.option("--pod-cidr", metavar="CIDR[,CIDR...]",
              help="The pod network; destinations in it are 'internal'. Default: inferred from INSIDE.")
@click.option("--clock-offset", type=float, metavar="SECONDS",
              help="OUTSIDE clock minus INSIDE clock. Default: estimated from the packets.")
@click.option("--tolerance", type=click.FloatRange(min=0.000001), default=1.0, show_default=True,
              metavar="SECONDS", help="How far apart (after the clock offset) two copies of a packet may be.")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True,
              help="Rows shown in the table format.")
@output_options
def correlate(inside: str, outside: str, pod_cidr: str | None, clock_offset: float | None, tolerance: float,
              limit: int, fmt: str | None, output: str | None, quiet: bool) -> None:
    """Prove each connection's NAT mapping from an INSIDE (pod side) and an OUTSIDE (node eth0) capture.

    Either file may be '-' for standard input (pcap, pcapng, or either gzip-compressed).
    """
    if inside == "-" and outside == "-":
        raise click.UsageError("only one of INSIDE and OUTSIDE can be '-' (standard input)")
    with make_progress(quiet) as progress:
        result = natproof.correlate(inside, outside, pod_cidr=pod_cidr, clock_offset_s=clock_offset,
                                    tolerance_s=tolerance, progress=progress)
    if not quiet:
        for cap in (result.inside, result.outside):
            for w in cap.warnings:
                warn(f"{cap.path}: {w}")
    emit(result, fmt, output, limit)


def emit(result: natproof.Result, fmt: str | None, output: str | None, limit: int) -> None:
    """Print or write a result in the chosen format."""
    if fmt is None:
        fmt = "table" if output is None and sys.stdout.isatty() else "json"
    if fmt == "table":
        if output:
            con = Console(file=open(output, "w"), width=160)  # noqa: SIM115 - closed below
            con.print(render_table(result, limit))
            con.file.close()
        else:
            # Piped table output keeps whole addresses rather than wrapping at 80 columns.
            Console(width=None if sys.stdout.isatty() else 160).print(render_table(result, limit))
        return
    if output:
        write_result(result, fmt, output)
        return
    if fmt == "parquet":
        raise click.UsageError("--format parquet needs -o FILE")
    sys.stdout.buffer.write(render_bytes(result, fmt))
    sys.stdout.flush()


def _error(msg: str) -> None:
    click.echo(f"natproof: error: {msg}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every outcome into one line on stderr and an exit status."""
    args = sys.argv[1:] if argv is None else argv
    show_tb = "--traceback" in args
    try:
        rv = cli.main(args=args, prog_name="natproof", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see 'natproof {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        if exc.ctx and not exc.ctx.parent:
            hint = " (see 'natproof --help')"
        _error(f"{exc.format_message()}{hint}")
        return ExitStatus.BAD_INPUT
    except click.ClickException as exc:
        _error(exc.format_message())
        return ExitStatus.BAD_INPUT
    except NatproofError as exc:
        if show_tb:
            raise
        _error(str(exc))
        return ExitStatus.BAD_INPUT
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("natproof: interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        return ExitStatus.OK
    except Exception as exc:  # noqa: BLE001 - the one place that reports bugs
        if show_tb:
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (rerun with --traceback and report it)")
        return ExitStatus.INTERNAL
    return int(rv) if isinstance(rv, int) else ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
