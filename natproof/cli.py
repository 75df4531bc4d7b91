"""The natproof command line: parse options, call the library, render; the only place that exits."""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import math
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import natproof
from natproof.contracts import FORMATS, OUTPUT_SUFFIXES, SCHEMA, SCHEMAS, epoch_seconds
from natproof.errors import InputError, NatproofError, shown_path
from natproof.report.files import check_target
from natproof.report.table import format_address

# Everything that loads polars is imported where a command needs it: correlate starts its second process
# (natproof.parallel.prestart) before this one loads the libraries, and --help answers at once. So is rich (50 ms
# of imports): a quiet correlate written to a file never loads it, and its worker starts that much sooner.

if TYPE_CHECKING:
    from rich.console import Console, Group, RenderableType
    from rich.table import Table

    from natproof.conntrack import ConntrackRecord

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
    TERMINATED = 143
    """SIGTERM (128 + 15), after the same clean-up as an interrupt's."""


def warn(msg: str) -> None:
    click.echo(f"natproof: warning: {msg}", err=True)


@contextlib.contextmanager
def make_progress(quiet: bool) -> Iterator[Callable[[str, int], Callable[[int], None]] | None]:
    """A rich progress bar on stderr for large captures; none when quiet or stderr is not a terminal. The bar
    starts with its first capture of PROGRESS_MIN_BYTES or more: with none, nothing is written to the terminal
    (rich hid and showed the cursor and cleared a line for small captures, a new user's trial)."""
    if quiet:
        yield None
        return
    from rich.console import Console

    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    if not stderr.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    started: list[Progress] = []

    def factory(label: str, total: int) -> Callable[[int], None]:
        if total < PROGRESS_MIN_BYTES:
            return lambda n: None
        if not started:
            started.append(Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                    TimeRemainingColumn(), console=stderr, transient=True))
            started[0].start()
        bar = started[0]
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    try:
        yield factory
    finally:
        if started:
            started[0].stop()


class _Named(click.Path):
    """click.Path that refuses an empty name: click passes "" through, and ``-o ""`` wrote to standard output as
    if no -o had been given."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("an empty name names no file", param, ctx)
        return super().convert(value, param, ctx)


def output_options(f: Callable) -> Callable:
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings.")(f)
    f = click.option("-o", "--output", type=_Named(dir_okay=False, writable=True),
                     help="Write to FILE (atomically) instead of standard output ('-': standard output).")(f)
    f = click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                     help="Output format; default: as -o FILE's suffix says (.json, .ndjson, .jsonl, .csv, "
                          ".parquet), else table on a terminal, json otherwise.")(f)
    return f


def _either(names: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def output_format(output: str | None, fmt: str | None, writes: Sequence[str], *, what: str | None = None,
                  suffix_required: bool = False) -> str:
    """The format a command writes, one of ``writes``: --format when given; else the one -o FILE's suffix names
    (natproof.contracts.OUTPUT_SUFFIXES: .json, .ndjson/.jsonl, .csv, .parquet, any case); else a table on a terminal
    and JSON into a file or a pipe. ``output`` None or "-" is standard output (no suffix). ``what`` names the writer
    in messages (default: the command's name).

    click.UsageError (exit 2, one line) before any work, when --format and the suffix name different formats
    (``--format csv -o out.json``), when the suffix names a format the command does not write (``diagnose -o
    out.csv``), or, with ``suffix_required`` (grade), when no --format is given and the suffix names no format.
    Found by a new user's trial: correlate wrote JSON into out.parquet, out.csv and out.ndjson."""
    target = output if output not in (None, "-") else None
    suffix = Path(target).suffix.lower() if target else ""
    named = OUTPUT_SUFFIXES.get(suffix)
    if fmt is not None:
        if named is not None and named != fmt:
            raise click.UsageError(f"-o {target}: --format {fmt} and the suffix {suffix} ({named}) disagree; give "
                                   "one of them, or make them agree")
        return fmt
    if named is not None:
        if named not in writes:
            who = what or click.get_current_context().info_name
            raise click.UsageError(f"-o {target}: the suffix {suffix} names {named}, which {who} does not write "
                                   f"(it writes {_either(writes)}); name the file for one of those, or give it "
                                   "another suffix and --format")
        return named
    if target and suffix_required:
        raise click.UsageError(f"-o {target}: say --format {_either(writes)} (the suffix {suffix!r} names none of "
                               "them)")
    return "table" if target is None and sys.stdout.isatty() else "json"


def _console(**kwargs: Any) -> Console:
    """The rich Console natproof prints its tables and text to (``kwargs``: Console's). Markup is off: text in
    brackets is printed as it is, not read as a style tag, which deleted a pod's IPv6 address and port
    ("[fd00:10:244::10]:8080" printed ":8080", a trial's who and Services tables). Styles come as rich Text."""
    from rich.console import Console

    return Console(markup=False, **kwargs)


class _Interrupted(Exception):
    """Ctrl-C in a command, carried past click: click answers a KeyboardInterrupt with a blank line on stderr (to end
    the terminal's ^C echo) even where stderr is no terminal (a log then read a blank line, a new user's trial);
    _main says it in one line, after a newline on a terminal only."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(natproof.__version__, prog_name="natproof")
@click.option("--traceback", is_flag=True, help="Show the Python traceback of an error (for bug reports).")
@click.pass_context
def cli(ctx: click.Context, traceback: bool) -> None:
    """Prove what a NAT did to your traffic, from a capture on each side of it."""
    ctx.obj = {"traceback": traceback}


def _services_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Keep --service-cidr / --nodeport-range / --allow-swap / --pods / --services / --conntrack / --side for
    run_correlate in the context (every command that reads captures takes them; they never reach the command's own
    signature)."""
    obj = ctx.find_root().ensure_object(dict)
    obj.setdefault("services", {})[param.name] = value
    return value


def services_from(obj: dict) -> natproof.Services:
    """The Services recognition --service-cidr and --nodeport-range ask for (kube-apiserver's defaults)."""
    from natproof.networks import parse_networks

    opts = obj.get("services", {})
    cidr, ports = opts.get("service_cidr"), opts.get("nodeport_range")
    kw: dict = {}
    if cidr:
        kw["networks"] = parse_networks(cidr, option="--service-cidr")
    if ports:
        lo, sep, hi = ports.partition("-")
        if not (sep and lo.isdigit() and hi.isdigit() and 0 < int(lo) <= 65535 and 0 < int(hi) <= 65535):
            raise NatproofError(f"invalid --nodeport-range {ports!r}: LOW-HIGH, ports 1-65535 (e.g. 30000-32767)")
        if int(lo) > int(hi):
            raise NatproofError(f"invalid --nodeport-range {ports!r}: {lo} is above {hi}")
        kw["nodeport_range"] = (int(lo), int(hi))
    return natproof.Services(**kw)


def names_from(obj: dict) -> natproof.Names | None:
    """The kubectl dumps --pods and --services give (read now, so a bad file is reported before any capture)."""
    from natproof.names import load_names

    if "names" not in obj:  # read once per command
        opts = obj.get("services", {})
        obj["names"] = load_names(opts.get("pods") or None, opts.get("services") or None)
    return obj["names"]


def _points_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Keep --inside-if / --outside-if / --interfaces / --vxlan-port for run_correlate in the context (as
    _services_option)."""
    ctx.find_root().ensure_object(dict).setdefault("points", {})[param.name] = value
    return value


def _size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """--memory-limit as bytes (natproof.memory.parse_size), kept like _points_option."""
    from natproof.memory import parse_size

    size = None
    if value is not None:
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    ctx.find_root().ensure_object(dict).setdefault("points", {})[param.name] = size
    return size


def _spill_dir_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--spill-dir checked as the library checks spill_dir (natproof.memory.check_spill_dir: one line naming the
    folder and its problem, whatever the problem), kept like _points_option."""
    from natproof.memory import check_spill_dir

    return _points_option(ctx, param, None if value is None else check_spill_dir(value))


def _prestart_worker(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """OUTSIDE, once parsed: the process that would prepare it (natproof.parallel.prestart) starts now, before the
    command loads polars and its modules, so both processes load their libraries at once."""
    inside = ctx.params.get("inside")
    if value is not None and inside is not None:
        from natproof import parallel

        parallel.prestart((inside, value), "natproof.correlate")
    return value


def capture_options(f: Callable | None = None, *, required: tuple[str, ...] = ("inside",)) -> Callable:
    """INSIDE [OUTSIDE] and the options that shape a correlation (shared by every command that reads captures).
    ``required`` names the captures that must be given: OUTSIDE may be left out (INSIDE is then one capture of
    several interfaces: --inside-if, --outside-if, --interfaces; or one capture and --conntrack, the kernel's record
    giving the other side), both by a command that can answer without captures (who with --conntrack or flow
    logs)."""
    if f is None:
        return lambda g: _capture_options(g, required)
    return _capture_options(f, required)


def _capture_options(f: Callable, required: tuple[str, ...]) -> Callable:
    f = click.option("--conntrack", "conntrack", metavar="FILE", expose_value=False, callback=_services_option,
                     type=_Named(dir_okay=False),
                     help="The kernel's conntrack record from the node (conntrack -L or -E output in any -o format, "
                          "/proc/net/nf_conntrack, gzip or not): each connection is confirmed by it, contradicts it "
                          "or is absent from it (with the reason), and a leg no capture shows is taken from it.")(f)
    f = click.option("--side", type=click.Choice(["auto", "inside", "outside"]), default="auto",
                     show_default=True, expose_value=False, callback=_services_option,
                     help="With ONE capture of one interface and --conntrack: the side of the NAT it was taken "
                          "on (auto: told from the record). A file of several interfaces, or two captures, holds "
                          "both sides: there it changes nothing (a warning says so).")(f)
    f = click.option("--services", metavar="FILE", multiple=True, expose_value=False, callback=_services_option,
                     type=_Named(dir_okay=False),
                     help="kubectl get svc,endpointslices -A -o json output: name Services and their backend "
                          "pods; its ClusterIPs and nodePorts count as Services whatever the ranges (repeatable).")(f)
    f = click.option("--pods", metavar="FILE", multiple=True, expose_value=False, callback=_services_option,
                     type=_Named(dir_okay=False),
                     help="kubectl get pods -A -o json output: name pods (namespace/name) next to their addresses; "
                          "a reused pod IP is told apart by the pods' timestamps, else flagged (repeatable).")(f)
    f = click.option("--interfaces", "interfaces", metavar="FILE", expose_value=False, callback=_points_option,
                     type=_Named(dir_okay=False),
                     help="Names for the interface indexes of a 'tcpdump -i any' capture: the output of "
                          "'ip -o link' on the node (default: shown as if<N>).")(f)
    f = click.option("--outside-if", metavar="NAME[,NAME...]", expose_value=False, callback=_points_option,
                     help="The interface(s) of a capture of several interfaces that are the outside (the node's "
                          "uplink). Default: chosen from the traffic, and said.")(f)
    f = click.option("--inside-if", metavar="NAME[,NAME...]", expose_value=False, callback=_points_option,
                     help="The interface(s) of a capture of several interfaces that are the inside (pod veths, "
                          "or the bridge). Default: chosen from the traffic, and said.")(f)
    f = click.option("--allow-swap", is_flag=True, expose_value=False, callback=_services_option,
                     help="If INSIDE and OUTSIDE look given in the wrong order, swap them (and say so) "
                          "instead of refusing.")(f)
    f = click.option("--nodeport-range", metavar="LOW-HIGH", expose_value=False, callback=_services_option,
                     help="NodePort range (kube-apiserver --service-node-port-range). Default: 30000-32767.")(f)
    f = click.option("--service-cidr", metavar="CIDR[,CIDR...]", expose_value=False, callback=_services_option,
                     help="ClusterIP range (kube-apiserver --service-cluster-ip-range). Default: 10.96.0.0/12.")(f)
    f = click.option("--vxlan-port", "vxlan_port", type=click.IntRange(1, 65535), multiple=True, metavar="PORT",
                     expose_value=False, callback=_points_option,
                     help="Also read UDP to PORT as VXLAN (repeatable; 4789 and 8472 always are; Geneve 6081, "
                          "IP-in-IP and GRE too): overlay packets are matched by their inner packet.")(f)
    f = click.option("--decoder", type=click.Choice(["auto", "fast", "dpkt"]), default="auto", show_default=True,
                     help="Packet decoder: the columnar one (auto, fast) or the dpkt reference (slower).")(f)
    f = click.option("--spill-dir", "spill_dir", metavar="DIR", expose_value=False, callback=_spill_dir_option,
                     help="Where captures correlated past --memory-limit keep their packets (Parquet, removed "
                          "afterwards; about 40 bytes per packet). Default: $TMPDIR or /tmp.")(f)
    f = click.option("--memory-limit", "memory_limit", metavar="SIZE", expose_value=False, callback=_size_option,
                     help="Memory budget (512M, 2G, 1.5G): two captures whose correlation would need more are "
                          "correlated a group of flows at a time, their packets spilled to disk; the same result. "
                          "Default: three quarters of the memory available.")(f)
    f = click.option("--tolerance", type=click.FloatRange(min=0.000001), default=1.0, show_default=True,
                     metavar="SECONDS", callback=_finite,
                     help="How far apart (after the clock offset) two copies of a packet may be.")(f)
    f = click.option("--clock-offset", type=float, metavar="SECONDS", callback=_finite,
                     help="OUTSIDE clock minus INSIDE clock. Default: estimated from the packets.")(f)
    f = click.option("--pod-cidr", metavar="CIDR[,CIDR...]",
                     help="The pod network; destinations in it are 'internal'. Default: inferred from INSIDE.")(f)
    f = click.argument("outside", type=_Named(dir_okay=True), required="outside" in required,
                       callback=_prestart_worker)(f)
    f = click.argument("inside", type=_Named(dir_okay=True), required="inside" in required)(f)
    return f


def flow_log_options(f: Callable) -> Callable:
    """--flow-log FILE (repeatable), --nat-gateway PRIVATE=PUBLIC (repeatable) and --flow-log-format FORMAT."""
    f = click.option("--flow-log-format", metavar="FORMAT",
                     help="The flow log's fields, for text without a header line (CloudWatch Logs): its --log-format, "
                          "e.g. '${version} ${srcaddr} ${dstaddr} ...'. Default: the header line, else AWS's default "
                          "format.")(f)
    f = click.option("--nat-gateway", "nat_gateways", multiple=True, metavar="PRIVATE=PUBLIC",
                     help="A NAT gateway's private and public (Elastic IP) address, as aws ec2 describe-nat-gateways "
                          "lists them (repeatable).")(f)
    f = click.option("--flow-log", "flow_logs", multiple=True, type=_Named(), metavar="FILE",
                     help="AWS VPC Flow Logs of the NAT gateway's network interface: text (default or custom "
                          "format, gzip) or Parquet, a file or a directory of them (repeatable).")(f)
    return f


def refuse_overwriting_inputs(output: str | None, *inputs: str | None, what: str = "the capture") -> None:
    """-o naming one of the inputs (a capture, or any file an option reads: the conntrack record, --interfaces,
    --pods, --services, --flow-log) would replace the evidence with the output: an error, before any work, as is a
    target natproof cannot write (natproof.report.files.check_target). ``what`` names the positional inputs in the
    message."""
    if not output:
        return
    check_target(output)  # a folder that is missing or takes no new file: said now, not after the work
    if not os.path.exists(output):
        return
    obj = click.get_current_context().find_root().ensure_object(dict)
    opts, points = obj.get("services", {}), obj.get("points", {})
    side = [(opts.get(k), name) for k, name in (("conntrack", "the conntrack record"), ("pods", "the --pods dump"),
                                                ("services", "the --services dump"))]
    side.append((points.get("interfaces"), "the --interfaces file"))
    flat = [(p, name) for value, name in side for p in (value if isinstance(value, (list, tuple)) else [value])]
    for path, name in [*((p, what) for p in inputs), *flat]:
        if path is not None and path != "-" and os.path.exists(path) and os.path.samefile(output, path):
            raise NatproofError(f"{output}: is {name} {path}; write the output elsewhere")


MAX_SECONDS = 10 * 365 * 86_400
"""The largest clock offset, tolerance or window natproof takes (ten years): nanosecond times are 64-bit integers,
and no two captures of one NAT are further apart."""


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """NaN and infinity are no times (click's FloatRange lets them through), nor are spans past MAX_SECONDS."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number of seconds")
    if value is not None and abs(value) > MAX_SECONDS:
        raise click.BadParameter(f"{value:g} s is more than ten years")
    return value


def run_correlate(inside: str | None, outside: str | None, pod_cidr: str | None, clock_offset: float | None,
                  tolerance: float, quiet: bool, decoder: str = "auto") -> natproof.Result:
    """Correlate with a progress bar, and print the captures' warnings unless quiet. OUTSIDE None: INSIDE is one
    capture of several interfaces, or one capture and --conntrack (natproof.correlate's single-file forms)."""
    if inside == "-" and outside == "-":
        raise click.UsageError("only one of INSIDE and OUTSIDE can be '-' (standard input)")
    if inside is not None and outside is not None:
        # The outside capture's process (when there is one) loads its libraries while this one loads its own:
        # started here for callers without capture_options, as its OUTSIDE argument does (_prestart_worker).
        from natproof import parallel

        parallel.prestart((inside, outside), "natproof.correlate")
    from natproof.memory import default_memory_limit

    obj = click.get_current_context().find_root().ensure_object(dict)
    services = services_from(obj)
    names = names_from(obj)
    opts = obj.get("services", {})
    record = opts.get("conntrack")
    points = obj.get("points", {})
    if inside is None:
        raise click.UsageError("give INSIDE and OUTSIDE captures, one capture of several interfaces, or one capture "
                               "and --conntrack FILE (the node's conntrack record gives the other side)")
    with make_progress(quiet) as progress:
        result = natproof.correlate(inside, outside, pod_cidr=pod_cidr, clock_offset_s=clock_offset,
                                    tolerance_s=tolerance, progress=progress, decoder=decoder, services=services,
                                    allow_swap=bool(opts.get("allow_swap")), names=names, conntrack=record,
                                    side=opts.get("side") or "auto", inside_if=points.get("inside_if"),
                                    outside_if=points.get("outside_if"), interfaces=points.get("interfaces"),
                                    vxlan_ports=points.get("vxlan_port") or (),
                                    memory_limit=points.get("memory_limit") or default_memory_limit(),
                                    spill_dir=points.get("spill_dir"))
    if not quiet:
        said = set()
        for cap in (result.inside, result.outside):
            for w in cap.warnings:
                # One file as both points warns once; the side not captured (one capture and --conntrack) says
                # so in the summary.
                if cap.path and (cap.path, w) not in said:
                    said.add((cap.path, w))
                    warn(f"{shown_path(cap.path)}: {w}")
        if result.conntrack is not None:
            warn_record(result.conntrack)
    return result


def warn_record(rec: ConntrackRecord) -> None:
    """The conntrack record's warnings on stderr: lines that are no entry, entries of a time no record can have."""
    if rec.unparsed:
        first = ", ".join(map(str, rec.unparsed_lines[:5]))
        warn(f"{rec.path}: {rec.unparsed} line(s) are no conntrack entry and were left out (line {first}"
             f"{' ...' if rec.unparsed > 5 else ''})")
    for w in rec.warnings:
        warn(f"{rec.path}: {w}")


@cli.command()
@capture_options(required=("inside",))
@click.argument("further", nargs=-1, type=_Named(dir_okay=False), metavar="[FURTHER...]")
@flow_log_options
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True,
              help="Rows shown in the table format.")
@click.option("--charts", "charts_dir", type=_Named(file_okay=False), metavar="DIR",
              help="Also write the port-allocation and latency charts (PNG and SVG) into DIR.")
@click.option("--schema", type=click.Choice(sorted(SCHEMAS)), default="2", show_default=True,
              help="JSON document version: 2 (natproof.correlate/2), or 1 for scripts written against 0.1.")
@output_options
def correlate(inside: str, outside: str | None, further: tuple[str, ...], flow_logs: tuple[str, ...],
              nat_gateways: tuple[str, ...], flow_log_format: str | None, pod_cidr: str | None,
              clock_offset: float | None, tolerance: float, decoder: str, limit: int, charts_dir: str | None,
              schema: str, fmt: str | None, output: str | None, quiet: bool) -> None:
    """Prove each connection's NAT mapping from an INSIDE (pod side) and an OUTSIDE (node eth0) capture.

    Or from ONE capture of several interfaces (tcpdump -i any; dumpcap -i A -i B): natproof splits it into the
    inside and outside interfaces and says which it chose and why (--inside-if, --outside-if to choose). Or from
    ONE capture of one interface and --conntrack FILE: the node's conntrack record gives the other side (--side).
    Either file may be '-' for standard input (pcap, pcapng, or either gzip-compressed).

    Or from THREE OR MORE captures along a chain of NATs, from the pod outwards (pod veth, node eth0, a NAT
    gateway's or router's public side): each adjacent pair is correlated with its own clock offset and every
    connection followed through each hop (natproof.chain/1 document; table or json). With --flow-log (and
    --nat-gateway), the NAT gateway past the last capture is one more point, from its flow log, with the evidence
    level the records allow; INSIDE OUTSIDE and --flow-log are then a chain too.
    """
    if further or flow_logs:
        if outside is None:
            raise click.UsageError("--flow-log follows connections past the last of two or more captures: give "
                                   "INSIDE and OUTSIDE (and any further captures outwards)")
        flow = read_flow_log_inputs(flow_logs, nat_gateways, flow_log_format) if flow_logs else None
        return _correlate_chain((inside, outside, *further), pod_cidr, tolerance, decoder, limit, fmt,
                                output, quiet, clock_offset, charts_dir, flow)
    refuse_overwriting_inputs(output, inside, outside)
    fmt = output_format(output, fmt, FORMATS)
    if charts_dir:  # a folder that cannot be written is said before any work or output
        from natproof.report.export import writable_folder

        writable_folder(charts_dir, "charts folder")
    result = run_correlate(inside, outside, pod_cidr, clock_offset, tolerance, quiet, decoder)
    emit(result, fmt, output, limit, SCHEMAS[schema])
    if charts_dir:
        from natproof.report.charts import save_charts

        written = save_charts(result, charts_dir)
        if not quiet:
            click.echo(f"natproof: wrote {len(written)} chart files to {charts_dir}", err=True)


def _correlate_chain(paths: tuple[str, ...], pod_cidr: str | None, tolerance: float, decoder: str, limit: int,
                     fmt: str | None, output: str | None, quiet: bool, clock_offset: float | None,
                     charts_dir: str | None, flow: tuple | None = None) -> None:
    """``natproof correlate CAP1 CAP2 CAP3 ...``: the chain (natproof.chain.correlate_chain) as a table or JSON."""

    from natproof.chain import correlate_chain
    from natproof.report.export import write_bytes

    if clock_offset is not None or charts_dir:
        raise click.UsageError("--clock-offset and --charts apply to one pair of captures; a chain estimates each "
                               "hop's clock offset")
    if "-" in paths:
        raise click.UsageError("a chain reads files: standard input ('-') is for one pair of captures")
    if fmt not in (None, "table", "json"):
        raise click.UsageError(f"--format {fmt}: a chain of captures is written as table or json")
    refuse_overwriting_inputs(output, *paths)
    fmt = output_format(output, fmt, ("table", "json"), what="a chain of captures")
    refuse_pair_options_in_chain()
    obj = click.get_current_context().find_root().ensure_object(dict)
    points = obj.get("points", {})
    with make_progress(quiet) as progress:
        chain = correlate_chain(paths, pod_cidr=pod_cidr, tolerance_s=tolerance, decoder=decoder,
                                services=services_from(obj), names=names_from(obj), progress=progress,
                                vxlan_ports=points.get("vxlan_port") or (),
                                flow_log=None if flow is None else flow[0],
                                nat_gateways=() if flow is None else flow[1])
    if not quiet:
        for i, hop in enumerate(chain.hops):
            for cap in (hop.inside, hop.outside):
                for w in cap.warnings:
                    warn(f"hop {i}: {cap.path}: {w}")
    if fmt == "json":
        data = chain.to_json()
    elif output is None and sys.stdout.isatty():
        _console().print(render_chain(chain, limit))
        data = b""
    else:  # a file or a pipe: whole lines, no trailing blanks, as the two-capture table
        data = _plain_text(render_chain(chain, limit)).encode()
    if output:
        write_bytes(output, data)
    elif data:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def refuse_pair_options_in_chain() -> None:
    """--inside-if, --outside-if, --conntrack and --side choose within one pair of captures (its interfaces, its side,
    the node's record): a chain of captures, in correlate and in who, refuses them in one usage error (exit 2) before
    any hop runs, rather than running without them. Reads the options from the command's context (capture_options
    keeps them there)."""
    obj = click.get_current_context().find_root().ensure_object(dict)
    points, opts = obj.get("points", {}), obj.get("services", {})
    if points.get("inside_if") or points.get("outside_if") or opts.get("conntrack") or opts.get("side") not in (
            None, "auto"):
        raise click.UsageError("--inside-if, --outside-if, --conntrack and --side apply to one pair of captures, not a "
                               "chain")


def render_chain(chain: natproof.Chain, limit: int,
                 title: str = "NATs in a chain: each connection at every observation point (pod outwards)",
                 whose: str = "") -> Group:
    """A chain's connections: the tuple at each observation point (what that hop rewrote), the verdict, where a
    connection stopped; then the captures, the hops and the summary, a line each (not a caption, which would wrap
    at the table's width). ``whose`` starts the summary line: whose connections it counts, when not the chain's
    (who's nearest ones)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    table = Table(title=title, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("proto")
    table.add_column("tuple at each point (rewritten by the hop before it)")
    table.add_column("verdict")
    table.add_column("lost at")
    for c in chain.connections[:limit]:
        lines = []
        for h in c["hops"]:
            t = h["tuple"]
            what = f"  [{', '.join(h['rewrites'])}]" if h["rewrites"] else ""
            if h.get("evidence") is not None:  # the NAT gateway, from its flow log
                what += f"  ({h['evidence']})"
                if t is None:
                    ends = ", ".join(format_address(g["src"], g["sport"]) for g in h["candidates"])
                    lines.append(f"{h['observation_point']}: " + (f"one of {ends}" if ends else "no tuple in the flow "
                                                                   "log") + what)
                    continue
            pod = f" ({t['pod']})" if h is c["hops"][0] and t.get("pod") else ""
            lines.append(f"{h['observation_point']}: {format_address(t['src'], t['sport'])}{pod} -> "
                         f"{format_address(t['dst'], t['dport'])}{what}")
        lost = c["lost_at"]
        table.add_row(str(c["conn"]), c["proto"], "\n".join(lines), c["verdict"],
                      "-" if lost is None else f"hop {lost['hop']} ({lost['from']} -> {lost['to']})")
    caption = [f"{i}: {p}" for i, p in enumerate(chain.captures)]
    if any(h.get("evidence") is not None for c in chain.connections for h in c["hops"]):
        caption.append(f"{len(chain.captures)}: the NAT gateway's public side, from its flow log")
    caption += [f"hop {i}: clock offset {h.clock_offset_s:+.6f} s, {h.connections.height} "
                f"connection{'' if h.connections.height == 1 else 's'}" for i, h in enumerate(chain.hops)]
    summary = chain.summary()
    counts = ", ".join(f"{n} {v}" for v, n in sorted(summary["by_verdict"].items()))
    gateway = any(h.get("evidence") is not None for c in chain.connections for h in c["hops"])
    last = "the last point (the NAT gateway, from its flow log)" if gateway else "the last capture"
    lost = f"; {summary['lost']} lost on the way" if summary["lost"] else ""
    n = summary["connections"]
    caption.append(f"{whose}{n} connection{'' if n == 1 else 's'}: {counts or 'none'}; {summary['reached_last']} "
                   f"reached {last}{lost}")
    if unsettled := summary["unsettled_at_last"]:
        evidence = {c["conn"]: c["evidence_level"] for c in chain.connections}
        caption.append("reached the last capture, their tuple at the NAT gateway not settled by its flow log: "
                       + ", ".join(f"#{i} ({evidence[i]})" for i in unsettled))
    if len(chain.connections) > limit:
        caption.append(f"(first {limit} of {len(chain.connections)}; --limit N for more)")
    return Group(table, Text("\n".join(caption)))


@cli.command()
@capture_options(required=("inside",))
@click.option("-o", "--output", required=True, type=_Named(dir_okay=False), metavar="FILE",
              help="The HTML file to write (atomically).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings.")
def report(inside: str, outside: str | None, pod_cidr: str | None, clock_offset: float | None, tolerance: float,
           decoder: str, output: str, quiet: bool) -> None:
    """Write one self-contained HTML report: summary, diagnosis, a sortable mapping table, charts.

    Above 20,000 connections the page leaves each connection's legs out, and links a Parquet file it writes beside
    FILE with every connection, legs included (report.html: report.connections.parquet)."""
    from natproof.diagnose import diagnose as run_diagnose
    from natproof.report.html import write_html

    if output == "-":
        raise click.UsageError("-o -: report writes an HTML file and its data beside it; name one (standard output "
                               "is not written)")
    refuse_overwriting_inputs(output, inside, outside)
    suffix = Path(output).suffix
    if suffix and suffix.lower() not in (".html", ".htm", ".xhtml"):  # a trial's page went into out.json, out.pcap
        named = OUTPUT_SUFFIXES.get(suffix.lower())
        raise click.UsageError(f"-o {output}: the suffix {suffix} names {named or 'no HTML page'}; report writes an "
                               "HTML page: name the file .html")
    result = run_correlate(inside, outside, pod_cidr, clock_offset, tolerance, quiet, decoder)
    findings = run_diagnose(result)
    explanations: list = []
    try:  # the header changes read the frames again from the files (not from standard input)
        from natproof.explain import explain
        from natproof.report.html import explained_connections

        explanations = explain(result, explained_connections(result, findings),
                               vxlan_ports=click.get_current_context().find_root().ensure_object(dict)
                               .get("points", {}).get("vxlan_port") or ())
    except NatproofError as exc:
        if not quiet:
            warn(f"the report has no header changes: {exc.for_command_line()}")
    sidecar = write_html(result, findings, output, explanations)
    if not quiet:
        click.echo(f"natproof: wrote {output}" + (f" and {sidecar} (every connection, legs included: too many to "
                                                    "embed)" if sidecar else ""), err=True)


@cli.command()
@capture_options(required=("inside",))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Default: json for -o FILE.json, else table on a terminal, json otherwise (with -o too).")
@click.option("-o", "--output", type=_Named(dir_okay=False, writable=True), metavar="FILE",
              help="Write to FILE (atomically) instead of standard output ('-': standard output).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings.")
def diagnose(inside: str, outside: str | None, pod_cidr: str | None, clock_offset: float | None, tolerance: float,
             decoder: str, fmt: str | None, output: str | None, quiet: bool) -> None:
    """Name what went wrong (forwarding, MASQUERADE, port pool, dropped replies), with evidence and the fix."""
    from natproof.diagnose import diagnose as run_diagnose
    from natproof.report.export import write_bytes

    if output == "-":  # as correlate's -o: "-" is standard output, as "-" reads standard input
        output = None
    refuse_overwriting_inputs(output, inside, outside)  # before any work: never the evidence replaced
    fmt = output_format(output, fmt, ("table", "json"))  # as correlate: -o's suffix, else table on a terminal
    result = run_correlate(inside, outside, pod_cidr, clock_offset, tolerance, quiet, decoder)
    findings = run_diagnose(result)
    if fmt == "json":
        doc = {"schema": "natproof.diagnose/1", "inside": result.inside.path, "outside": result.outside.path,
               "summary": result.summary(), "findings": [f.to_dict() for f in findings]}
        text = json.dumps(doc, indent=2) + "\n"
    else:
        text = "".join(f"[{f.severity.upper()}] {f.title}\n  {f.summary}\n  fix: {f.fix}\n"
                       + "".join(f"  - {line}\n" for line in f.evidence) + "\n" for f in findings)
    if output:  # whole at once, atomically: a file that cannot be written is one line and nothing half-written
        write_bytes(output, text.encode())
        return
    with _reader_may_leave():
        sys.stdout.write(text)
        sys.stdout.flush()


@cli.command()
@capture_options(required=("inside",))
@click.option("--expectations", "expectations_file", type=_Named(dir_okay=False),
              help="A TOML file of expectations (see README); the options below add to it.")
@click.option("--expect-snat-ip", metavar="ADDR",
              help="Every connection started inside that left the node did so from ADDR (connections started outside, "
                   "NodePort clients, are not judged).")
@click.option("--expect-all", type=click.Choice([v.value for v in natproof.Verdict]),
              help="Every connection that is not internal has this verdict.")
@click.option("--expect-no", "expect_no", multiple=True, type=click.Choice([v.value for v in natproof.Verdict]),
              help="No connection has this verdict (repeatable).")
@click.option("--expect-port-preserved", is_flag=True, help="Every translated connection kept its source port.")
@click.option("--min-connections", type=click.IntRange(min=1), help="At least N connections that are not internal.")
@click.option("--expect-dnat", "expect_dnat", multiple=True, metavar="VIP:PORT[=BACKEND:PORT,...]",
              help="Every connection to VIP:PORT was DNATed (to one of the BACKENDs when given), and there is at "
                   "least one (repeatable).")
@click.option("--expect-no-leak", is_flag=True,
              help="No pod's private address left the node untranslated: no connection from a private source "
                   "to a non-private destination crossed untranslated, and no packet leaked (no 'leak' flag).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Default: table on a terminal, json otherwise.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings.")
def verify(inside: str, outside: str | None, pod_cidr: str | None, clock_offset: float | None, tolerance: float,
           decoder: str, expectations_file: str | None, expect_snat_ip: str | None, expect_all: str | None,
           expect_no: tuple[str, ...], expect_port_preserved: bool, min_connections: int | None,
           expect_dnat: tuple[str, ...], expect_no_leak: bool, fmt: str | None, quiet: bool) -> None:
    """Check the captures against expectations: exit 0 when all hold, 1 when one fails, 2 on bad input."""
    from natproof.verify import Expectations, load_expectations, parse_dnat
    from natproof.verify import verify as run_verify

    dnat = tuple(parse_dnat(d) for d in expect_dnat)  # a bad VIP:PORT is reported before any file is read
    exp, file_cidr = load_expectations(expectations_file) if expectations_file else (Expectations(), None)
    exp = Expectations(
        snat_ip=expect_snat_ip or exp.snat_ip, all_verdict=expect_all or exp.all_verdict,
        port_preserved=expect_port_preserved or exp.port_preserved,
        min_connections=min_connections or exp.min_connections,
        no_verdicts=tuple(dict.fromkeys(exp.no_verdicts + expect_no)), connections=exp.connections,
        dnat=tuple(dict.fromkeys(exp.dnat + dnat)), no_leak=expect_no_leak or exp.no_leak)
    if exp.is_empty():
        raise click.UsageError(f"nothing to verify: {expectations_file} expects nothing (false or empty values "
                               "ask for nothing); add an expectation or an --expect-* option" if expectations_file
                               else "nothing to verify: give --expectations FILE or an --expect-* option")
    result = run_correlate(inside, outside, pod_cidr or file_cidr, clock_offset, tolerance, quiet, decoder)
    checks = run_verify(result, exp)
    passed = all(c.passed for c in checks)
    if (fmt or ("table" if sys.stdout.isatty() else "json")) == "json":
        click.echo(json.dumps({"schema": "natproof.verify/1", "passed": passed,
                               "expectations": [c.to_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            click.echo(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: expected {c.expected}, got {c.actual}")
            for line in c.evidence:
                click.echo(f"      {line}")
        click.echo(f"{sum(c.passed for c in checks)} of {len(checks)} expectations hold")
    if not passed:
        raise SystemExit(ExitStatus.FAILED)


@cli.command()
@click.argument("endpoint", metavar="ADDR:PORT|NAME")
@capture_options(required=())
@click.argument("further", nargs=-1, type=_Named(dir_okay=False), metavar="[FURTHER...]")
@flow_log_options
@click.option("--peer", metavar="ADDR[:PORT]",
              help="With --flow-log: only connections to this far end (the reporter's address, and port).")
@click.option("--at", metavar="TIME", help="Epoch seconds, ISO-8601 (2026-11-24T14:02:10Z), or a time of day "
              "HH:MM[:SS[.ffffff]] on the captures' day; UTC unless a zone is given (Z, +02:00).")
@click.option("--window", type=click.FloatRange(min=0), default=1.0, show_default=True, metavar="SECONDS",
              callback=_finite,
              help="How far from TIME a connection may start or end and still count.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Default: table on a terminal, json otherwise.")
@click.option("--clock", type=click.Choice(["inside", "outside"]), default=None,
              help="Which capture's clock TIME and the printed times are on (outside: the node uplink's, as in a "
                   "far end's logs or an abuse report). Default: inside; with ONE capture and --conntrack, that "
                   "capture's, the only clock there is.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings.")
def who(endpoint: str, inside: str | None, outside: str | None, further: tuple[str, ...], pod_cidr: str | None,
        clock_offset: float | None,
        tolerance: float, decoder: str, flow_logs: tuple[str, ...], nat_gateways: tuple[str, ...],
        flow_log_format: str | None, peer: str | None, at: str | None, window: float, clock: str | None,
        fmt: str | None, quiet: bool) -> None:
    """Which connections did ADDR:PORT take part in (at TIME), and as what?

    ADDR:PORT may be any end of a connection's original or translated tuple: the node's public source port
    (which pod was behind it?), a pod's source (where did it go?), a NodePort (which pod did it reach?), a
    ClusterIP (which backend?), a backend, a remote client. With --pods/--services, NAME (namespace/name, or a bare
    name) finds a pod's or Service's connections (a name the dumps do not hold is bad input: exit 2, with the names
    close to it). Without INSIDE and OUTSIDE, --conntrack FILE (an event log:
    conntrack -E -o timestamp) answers alone, on the node's clock. Exit 0 when a connection was found, 1 when none
    was.

    With --flow-log and --nat-gateway, ADDR:PORT may be a NAT gateway's public address and port, as an abuse
    report names it: the answer walks through the gateway's flow log to the node tuple (with the evidence level),
    and with INSIDE OUTSIDE (the node's captures, or --conntrack: the node's record) on to the pod; a link nothing
    given proves is named, with what would prove it.

    With THREE OR MORE captures along a chain of NATs (pod outwards, as correlate takes them), ADDR:PORT may be an
    end at any point: the answer gives each connection's tuple at every point, the first point's source being who
    was behind it (--at on the first capture's clock).
    """
    if further:
        record = click.get_current_context().find_root().ensure_object(dict).get("services", {}).get("conntrack")
        if flow_logs or nat_gateways or record or clock == "outside" or peer:
            raise click.UsageError("who over a chain of captures takes none of --flow-log, --nat-gateway, "
                                   "--conntrack, --clock outside, --peer: give the chain's captures only, or two "
                                   "captures with those options")
        refuse_pair_options_in_chain()
        return _who_chain(endpoint, (inside or "", outside or "", *further), pod_cidr, tolerance, decoder, at,
                          window, fmt, quiet)
    from natproof.conntrack import read_conntrack
    from natproof.lookup import check_query, one_clock, parse_endpoint, who_kernel
    from natproof.lookup import who as run_who
    from natproof.names import is_ptcpdump

    # A bad ADDR:PORT, or a name with nothing to name by, is reported before any file is read. OUTSIDE may be left
    # out: INSIDE is then one capture of several interfaces.
    obj = click.get_current_context().find_root().ensure_object(dict)
    record = obj.get("services", {}).get("conntrack")
    ptcpdump = inside is not None and (is_ptcpdump(inside) or (outside is not None and is_ptcpdump(outside)))
    names = names_from(obj)
    if check_query(endpoint, bool(names) or ptcpdump) and names is not None and not _may_name_pods(inside, outside):
        names.check_name(endpoint)  # a name the dumps do not hold, before any capture is read (else natproof.who)
    as_json = (fmt or ("table" if sys.stdout.isatty() else "json")) == "json"
    if flow_logs:
        flowlog, gateways = read_flow_log_inputs(flow_logs, nat_gateways, flow_log_format)
        if inside is not None or record is not None:
            # Whatever the captures or the record answer goes on through a gateway (gateway_hops): with none given
            # or found, refused now, not once they have been read. (Without either, _not_a_gateway says more.)
            from natproof.flowlogs.gateway import require_gateways

            require_gateways(gateways)
        try:
            addr: str | None = parse_endpoint(endpoint)[0]
        except NatproofError:
            addr = None  # a pod's or Service's name: no gateway address
        if addr is not None and any(addr in (g.private, g.public) for g in gateways):
            result = None if inside is None else run_correlate(inside, outside, pod_cidr, clock_offset,
                                                               tolerance, quiet, decoder)
            kernel = []
            if record is not None:  # read and checked as correlate reads it (and did, with the captures)
                kernel = [result.conntrack if result is not None and result.conntrack is not None
                          else read_conntrack(record)]
                if result is None and not quiet:
                    warn_record(kernel[0])
            who_gateway(flowlog, gateways, endpoint, at, window, peer, result, as_json, kernel, names)
            return
    if inside is None:
        if record is None and flow_logs:
            raise NatproofError(_not_a_gateway(endpoint, flowlog, gateways, given=bool(nat_gateways)))
        if record is None:
            raise click.UsageError("give INSIDE and OUTSIDE captures, or neither and --conntrack FILE (a conntrack "
                                   "event log) to answer from the kernel's record alone, or --flow-log with "
                                   "--nat-gateway")
        from natproof.networks import parse_networks

        nets = parse_networks(pod_cidr) if pod_cidr else ()
        kernel_record = read_conntrack(record)
        if not quiet:
            warn_record(kernel_record)
        answer = who_kernel(kernel_record, endpoint, at, window, pod_networks=nets, services=services_from(obj),
                            names=names)
    else:
        result = run_correlate(inside, outside, pod_cidr, clock_offset, tolerance, quiet, decoder)
        only = one_clock(result)
        if only and clock not in (None, only) and not quiet:
            warn(f"--clock {clock}: no {clock} capture was given; TIME and the times shown are on the only "
                 f"capture's clock, the {only} one")
        answer = run_who(result, endpoint, at, window, clock)
    only = None if inside is None else one_clock(result)
    hops = gateway_hops(answer, flowlog, gateways) if flow_logs else None
    if as_json:
        doc = answer.to_dict()
        if hops is not None:
            doc["nat_gateway_hops"] = hops
        click.echo(json.dumps(doc, indent=2))
    else:
        clock_name = ("the node's clock" if answer.clock == "node" else f"{answer.clock} capture's clock"
                      + (", the only capture" if only else ""))
        when = "" if answer.at_ns is None else f" at {_iso(answer.at_ns)} ({clock_name})"
        shift = answer.clock_offset_s if answer.clock == "outside" else 0.0
        if answer.connections:
            n = len(answer.connections)
            _print_whole(_who_table(f"{answer.query}{when}: {n} connection{'s' if n > 1 else ''}",
                                    answer.connections, answer.clock, shift, only=bool(only)))
        else:
            click.echo(f"no connection used {answer.query}{when}")
            if answer.nearest:
                _print_whole(_who_table("nearest in time", answer.nearest, answer.clock, shift, only=bool(only)))
        if hops:
            _print_whole(_gateway_hops_table(hops))
    if not answer.connections:
        raise SystemExit(ExitStatus.FAILED)


def _may_name_pods(*captures: str | None) -> bool:
    """Whether a capture may name pods in its packet comments (pcapng: ptcpdump's, read with --pods): any that is
    not a plain pcap file (pcapng, gzip, standard input; one that cannot be read is left to correlate to report)."""
    from natproof.capture import PCAP_MAGIC

    for path in captures:
        if path is None:
            continue
        try:
            with open(path, "rb") as fh:
                if fh.read(4) in PCAP_MAGIC:
                    continue
        except OSError:
            pass
        return True
    return False


def _who_chain(endpoint: str, paths: tuple[str, ...], pod_cidr: str | None, tolerance: float, decoder: str,
               at: str | None, window: float, fmt: str | None, quiet: bool) -> None:
    """who over a chain of captures (natproof.chain.who_chain): exit 1 when no connection used ENDPOINT."""
    from natproof.chain import correlate_chain, nearest_chain, who_chain
    from natproof.lookup import parse_endpoint, parse_time

    try:
        addr, port = parse_endpoint(endpoint)
    except NatproofError:
        raise click.UsageError(f"{endpoint!r}: who over a chain of captures takes ADDR:PORT (pod and Service "
                               "names work with two captures)") from None
    obj = click.get_current_context().find_root().ensure_object(dict)
    with make_progress(quiet) as progress:
        chain = correlate_chain(paths, pod_cidr=pod_cidr, tolerance_s=tolerance, decoder=decoder,
                                services=services_from(obj), names=names_from(obj), progress=progress,
                                vxlan_ports=obj.get("points", {}).get("vxlan_port") or ())
    first = chain.hops[0].inside.first_ts_ns
    at_ns = None if at is None else parse_time(at, first)
    found = who_chain(chain, addr, port, at_ns=at_ns, window_s=window)
    # None live then: the nearest before and after, as who over two captures shows them.
    nearest = nearest_chain(chain, addr, port, at_ns) if at_ns is not None and not found else []
    if (fmt or ("table" if sys.stdout.isatty() else "json")) == "json":
        click.echo(json.dumps({"query": endpoint, "at": None if at_ns is None else epoch_seconds(at_ns),
                               "window_s": window, "captures": list(chain.captures), "connections": found,
                               "nearest": nearest}, indent=2))
    else:
        when = "" if at_ns is None else f" at {_iso(at_ns)} (first capture's clock)"
        if not found:
            click.echo(f"no connection used {endpoint}{when}")
        if nearest:
            picked = natproof.Chain(chain.captures, chain.hops, nearest)
            _print_whole(render_chain(picked, len(nearest), title="nearest in time",
                                      whose=f"nearest in time (none live at {_iso(at_ns)[11:-1]}): "))  # type: ignore[arg-type]
            for c in nearest:
                first = int(c["first_seen"] * 1e9)
                last = first if c["last_seen"] is None else int(c["last_seen"] * 1e9)
                gap = (first - at_ns) / 1e9 if first > at_ns else (at_ns - last) / 1e9  # type: ignore[operator]
                click.echo(f"#{c['conn']}: seen {_iso(first)[11:-1]}-{_iso(last)[11:-1]} (first capture's clock), "
                           f"{_duration(gap)} {'after' if first > at_ns else 'before'} {_iso(at_ns)[11:-1]}")  # type: ignore[operator]
        elif not found:
            click.echo("a chain follows the connections its first captures show: one the last capture alone holds "
                       "(another node's traffic through a shared gateway) needs that node's captures, or a capture "
                       "of the gateway's inside before its public side")
        else:
            picked = natproof.Chain(chain.captures, chain.hops, found)
            _print_whole(render_chain(picked, len(found)))
            for c in found:
                t = c["inside"]
                pod = f" (pod {t['pod']})" if t.get("pod") else ""
                click.echo(f"#{c['conn']}: behind {endpoint} was {format_address(t['src'], t['sport'])}{pod} (as "
                           f"{chain.captures[c['first_point']]} saw it)")
    if not found:
        raise SystemExit(ExitStatus.FAILED)


def _not_a_gateway(endpoint: str, flowlog: natproof.flowlogs.FlowLog, gateways: list[natproof.flowlogs.NatGateway],
                   given: bool) -> str:
    """Why who cannot look ENDPOINT up with a flow log and no captures: the gateways given, found (from
    pkt-dstaddr, their public addresses unknown) or neither, and what to give."""
    from natproof.flowlogs.ports import why_no_gateway

    node = "the node's captures INSIDE OUTSIDE (or --conntrack FILE) to look up a node or pod tuple"
    if given:
        return (f"{endpoint} is not a --nat-gateway address ({', '.join(map(str, gateways))}): give the gateway's "
                f"public address, or {node}")
    if gateways:
        found = ", ".join(g.private for g in gateways)
        return (f"{endpoint} is not the address of a NAT gateway found in the flow log ({found}, from pkt-dstaddr; a "
                f"public address is in no record): pass --nat-gateway {gateways[0].private}=PUBLIC to look up the "
                f"gateway's public address, or {node}")
    return (f"{endpoint}: no NAT gateway given, and {why_no_gateway(flowlog)}: pass --nat-gateway PRIVATE=PUBLIC to "
            f"look up a gateway's public address, or {node}")


def read_flow_log_inputs(flow_logs: tuple[str, ...], nat_gateways: tuple[str, ...], flow_log_format: str | None
                         ) -> tuple[natproof.flowlogs.FlowLog, list[natproof.flowlogs.NatGateway]]:
    """The flow log files and the gateways (given, else inferred from pkt-dstaddr); an error without any."""
    from natproof.flowlogs import infer_gateways, parse_nat_gateway, read_flow_logs

    gateways = [parse_nat_gateway(g) for g in nat_gateways]  # a bad address is reported before any file is read
    flowlog = read_flow_logs(list(flow_logs), fields=flow_log_format)
    for problem in flowlog.passed_over_for_command_line():
        warn(f"{problem} (passed over)")
    if not gateways:
        gateways = infer_gateways(flowlog)
    return flowlog, gateways


def who_gateway(flowlog: natproof.flowlogs.FlowLog, gateways: list[natproof.flowlogs.NatGateway], endpoint: str,
                at: str | None, window: float, peer: str | None, result: natproof.Result | None,
                as_json: bool, conntrack: list[ConntrackRecord] | None = None,
                names: natproof.Names | None = None) -> None:
    """who on a NAT gateway's public tuple: print the paths to nodes (and pods), exit 1 when none reaches a node."""
    import polars as pl

    from natproof.flowlogs.who import who_via_gateway
    from natproof.lookup import parse_endpoint, parse_time

    addr, port = parse_endpoint(endpoint)
    peer_at = None if peer is None else _parse_peer(peer)
    if at is not None:
        from natproof.flowlogs.gateway import require_times

        require_times(flowlog)  # before a time of day looks for the records' date
    first = flowlog.records.select(pl.coalesce("start_s", "end_s").min()).item()
    at_ns = None if at is None else parse_time(at, None if first is None else int(first) * 10**9)
    answer = who_via_gateway(flowlog, gateways, addr, port, at_ns=at_ns, window_s=window, peer=peer_at,
                             result=result, conntrack=conntrack or (), names=names)
    if as_json:
        click.echo(json.dumps(answer.to_dict(), indent=2, default=str))
    else:
        when = "" if at_ns is None else f" at {_iso(at_ns)}"
        gw = answer.gateway
        click.echo(f"{answer.query}{when}: NAT gateway {gw.private} (public {gw.public or 'not given'}), "
                   f"{len(answer.paths)} path{'s' if len(answer.paths) != 1 else ''}")
        for m in answer.missing:
            click.echo(f"missing link {m.link}: {m.why}; close with: {m.close_with}")
        for f in answer.flows.filter(pl.col("candidates") > 1).iter_rows(named=True):
            click.echo(f"the flow log cannot tell {f['candidates']} node tuples apart for {f['proto']} "
                       f"{format_address(f['gateway_private'], f['sport'])} -> {format_address(f['dst'], f['dport'])}: "
                       "the connection is one of these paths, not all of them")
        for i, path in enumerate(answer.paths, 1):
            _print_whole(_path_table(i, path))
            for m in path.missing:
                click.echo(f"  missing link {m.link}: {m.why}; close with: {m.close_with}")
    if not answer.found:
        raise SystemExit(ExitStatus.FAILED)


def _parse_peer(text: str) -> tuple[str, int | None]:
    """--peer ADDR[:PORT] (an IPv6 address with a port in brackets)."""
    import ipaddress

    from natproof.lookup import parse_endpoint

    try:
        return str(ipaddress.ip_address(text.strip().strip("[]"))), None
    except ValueError:
        return parse_endpoint(text, "--peer")


def _path_table(i: int, path: natproof.flowlogs.who.Path) -> Table:
    from rich import box
    from rich.table import Table

    pod = path.pod or {}
    named = pod.get("name") or (" | ".join(pod["name_candidates"]) if pod.get("name_candidates") else None)
    who = "" if path.pod is None else (f", pod {format_address(pod['address'], pod['port'])}"
                                       + (f" {named}" if named else ""))
    node = "" if path.node is None else f": node {format_address(path.node['address'], path.node['port'])}"
    table = Table(title=f"path {i}{node}{who} ({path.evidence})", title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("hop", "tuple", "tied by", "records / frames"):
        table.add_column(col, no_wrap=col != "records / frames")
    for h in path.hops:
        t = h.tuple
        table.add_row(h.observation_point, f"{t['proto']} {format_address(t['src'], t['sport'])} -> "
                                           f"{format_address(t['dst'], t['dport'])}", h.evidence or "-", h.source)
    return table


def gateway_hops(answer: natproof.lookup.Answer, flowlog: natproof.flowlogs.FlowLog,
                 gateways: list[natproof.flowlogs.NatGateway]) -> list[dict]:
    """For each connection a who answer found that left the node: its NAT gateway hop from the flow log."""
    from natproof.flowlogs import join_nat_gateway, node_tuples

    rows = []
    off = answer.clock_offset_s
    for c in answer.connections:
        t = c.get("translated")
        if c.get("initiator") != "inside" or t is None:
            continue
        rows.append({"proto": c["proto"], "src": t["src"], "sport": t["sport"], "dst": t["dst"], "dport": t["dport"],
                     "first_ts_ns": int((c["first_seen"] + off) * 1e9), "last_ts_ns": int((c["last_seen"] + off) * 1e9),
                     "source": f"connection #{c['conn']}"})
    if not rows:
        return []
    joined = join_nat_gateway(node_tuples(rows), flowlog, gateways)
    return joined.to_dicts()


def _gateway_hops_table(hops: list[dict]) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title="NAT gateway hop (flow log)", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("connection", "node tuple", "gateway public tuple", "evidence", "why"):
        table.add_column(col, no_wrap=col != "why", max_width=60 if col == "why" else None)
    for h in hops:
        public = ", ".join(format_address(g["gateway_public"] or g["gateway_private"], g["sport"])
                           for g in h["gateway_tuples"]) or "-"
        table.add_row(h["source"], f"{h['proto']} {format_address(h['src'], h['sport'])} -> "
                                   f"{format_address(h['dst'], h['dport'])}", public, h["evidence"], h["why"])
    return table


def _duration(seconds: float) -> str:
    """A span of time as people say it: 0.250 s, 42 s, 9 min 40 s, 2 h 5 min."""
    if seconds < 60:
        return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _iso(ts_ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts_ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _print_whole(table: RenderableType) -> None:
    """Print a table on a terminal at its width; piped, at its natural width (no address wraps, no trailing blanks)."""
    if sys.stdout.isatty():
        _console().print(table)
        return
    click.echo(_plain_text(table), nl=False)


def _plain_text(renderable: RenderableType) -> str:
    """A table (or a group of them and lines) as plain text at its natural width, for a pipe or a file: no address
    wraps, no styles, no trailing blanks (rich pads every line to the width)."""

    console = _console(file=io.StringIO(), width=_console(width=1000).measure(renderable).maximum, color_system=None)
    console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "".join(f"{line.rstrip()}\n" for line in text.rstrip().splitlines())


def _who_table(title: str, conns: tuple[dict, ...], clock: str = "inside", shift_s: float = 0.0,
               only: bool = False) -> Table:
    """One row per connection: the role ADDR:PORT played, then who is who (pod, node, peer, service, backend).
    "seen" is the connection's first to last packet, or where ADDR:PORT was its tuple for one mapping only (a flow
    mapped anew after idling) that mapping's span first (natproof.lookup.Answer's leg_first_seen/leg_last_seen),
    and then "node" and "frames" are that mapping's too (Answer's "mapping"), the connection's primary node tuple
    beside it.
    Times are on ``clock``'s capture (``shift_s`` added to the connections' inside-clock times); ``only``: it is
    the only capture, beside the conntrack record, whose times are the node's clock (natproof.lookup.one_clock)."""
    from rich import box
    from rich.table import Table

    days = sorted({_iso(int((c["first_seen"] + shift_s) * 1e9))[:10] for c in conns if c["first_seen"] is not None})
    where = "the node's clock, as conntrack stamped its events" if clock == "node" else f"the {clock} capture's clock"
    if only:
        where += ", the only capture; the conntrack record's on the node's, read as the same"
    table = Table(title=f"{title} (times UTC on {where}{', ' if days else ''}{', '.join(days)})",
                  header_style="bold", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("#", "role", "proto", "pod", "node", "peer", "service", "backend", "seen", "verdict", "frames"):
        table.add_column(col, no_wrap=col not in ("role", "service"), justify="right" if col == "#" else "left")

    def addr(end: dict | None, name: str | None = None, candidates: list[str] | None = None) -> str:
        if end is None:
            return "-"
        text = format_address(end["address"], end["port"])
        name = name or end.get("name")
        candidates = candidates or end.get("name_candidates")
        if name:
            return f"{text} {name}"
        return f"{text} ? {' | '.join(candidates)}" if candidates else text

    for c in conns:
        svc = c["service"]
        ev = c["evidence"]["egress"] or {}
        frames = ", ".join(f"{op} {ev[k]}" for op, k in (("in", "inside_frame"), ("out", "outside_frame"),
                                                          ("in", "inside_translated_frame")) if ev.get(k))
        if not frames:  # nothing crossed: the first frame of each leg, where it was seen
            frames = ", ".join(f"{'in' if leg['observation_point'] == 'inside' else 'out'} {leg['first_frame']}"
                               for leg in c.get("legs") or () if leg.get("first_frame") is not None)
        if not frames and c.get("kernel_entry"):
            frames = f"conntrack line {c['kernel_entry']['line']}"
        frames = frames or "-"
        node = addr(c["ends"]["node"])
        mapping = c.get("mapping") or []
        own = [f"{'in' if m['observation_point'] == 'inside' else 'out'} {m['first_frame']}" for m in mapping
               if m["first_frame"] is not None]
        if own:  # ADDR:PORT was the tuple of one mapping only: its frames, not the primary mapping's
            frames = f"{', '.join(own)} (this mapping)"
        # The node's tuple of that mapping (a flow started inside: its source on the uplink), beside the primary's.
        here = [m["tuple"] for m in mapping if c["initiator"] != "outside" and m["observation_point"] == "outside"]
        if here and c["ends"]["node"] is not None:
            mine = format_address(here[0]["src"], here[0]["sport"])
            if mine != node:
                node = f"{mine} (this mapping; connection's {node})"
        if c["first_seen"] is None:
            seen = "- (a listing)"
        else:
            first, last = (int((c[k] + shift_s) * 1e9) for k in ("first_seen", "last_seen"))
            seen = f"{_iso(first)[11:-1]}-{_iso(last)[11:-1]}"
            if c.get("leg_first_seen") is not None:  # ADDR:PORT was the tuple of one mapping only: its own span
                a, b = (int((c[k] + shift_s) * 1e9) for k in ("leg_first_seen", "leg_last_seen"))
                seen = f"{_iso(a)[11:-1]}-{_iso(b)[11:-1]} (this mapping; connection {seen})"
        service = "-" if svc is None else f"{svc['type']} {format_address(svc['address'], svc['port'])}"
        if svc is not None and svc.get("name"):
            service += f" {svc['name']}" + (f":{svc['port_name']}" if svc.get("port_name") else "")
        backend = "-" if svc is None or svc["backend"] is None else addr(
            svc["backend"], svc["backend"].get("pod"), svc["backend"].get("pod_candidates"))
        table.add_row(str(c["conn"]), ", ".join(c["roles"]), c["proto"], addr(c["ends"]["pod"]),
                      node, addr(c["ends"]["peer"]), service, backend, seen, c["verdict"], frames)
    return table


@cli.command()
@click.argument("class_dir", type=_Named(), metavar="DIR")
@click.option("--expectations", "grading_file", required=True, type=_Named(dir_okay=False), metavar="FILE",
              help="The grading file (TOML): [[expect]] tables, each what verify checks plus points (see README).")
@click.option("--assignments", type=_Named(dir_okay=False), metavar="FILE",
              help="CSV of a student column and one column per {KEY} the grading file uses (student,snat_ip,...).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default=None,
              help="Default: table on a terminal, json otherwise; with -o, csv or json as FILE's suffix says.")
@click.option("-o", "--output", type=_Named(dir_okay=False), metavar="FILE",
              help="Write the grades to FILE (atomically) instead of standard output.")
@click.option("--html", "html_file", type=_Named(dir_okay=False), metavar="FILE",
              help="Also write a summary page: a row per student, each expectation's result, the evidence.")
@click.option("--tolerance", type=click.FloatRange(min=0.000001), default=1.0, show_default=True, metavar="SECONDS",
              callback=_finite, help="How far apart (after the clock offset) two copies of a packet may be.")
@click.option("-q", "--quiet", is_flag=True, help="No warnings and no 'wrote' lines.")
def grade(class_dir: str, grading_file: str, assignments: str | None, fmt: str | None, output: str | None,
          html_file: str | None, tolerance: float, quiet: bool) -> None:
    """Grade a class folder: every student's captures against the grading file's expectations, with points.

    DIR holds one sub-folder per student (inside.pcap and outside.pcap, or captures named by interface, or one
    capture of several interfaces) or files STUDENT-inside.pcap and STUDENT-outside.pcap. A submission that cannot
    be graded gets 0 points and the reason. Exit 0 when the class was graded, whatever the marks; 2 when the
    grading file, the assignments or DIR cannot be used.
    """
    from natproof.grade import find_submissions, grade_class, grades_csv, grades_document, grades_html, load_grading
    from natproof.report.export import write_bytes

    if html_file == "-":  # as report refuses it: a file named "-" was written
        raise click.UsageError("--html -: grade writes an HTML file; name one (standard output is not written)")
    if output == "-":  # standard output, as correlate and diagnose take it (a file named "-" was written)
        output = None
    for target in (output, html_file):
        refuse_overwriting_inputs(target, grading_file, assignments, what="an input")
        # Nothing inside the class folder: a student's capture must never become the grades.
        if target and os.path.isdir(class_dir) and Path(os.path.abspath(class_dir)) in Path(
                os.path.abspath(target)).parents:
            raise NatproofError(f"{target}: inside the class folder {class_dir}; write the grades elsewhere")
    if output and html_file and os.path.abspath(output) == os.path.abspath(html_file):
        raise click.UsageError("-o and --html name the same file")
    fmt = output_format(output, fmt, ("table", "csv", "json"), suffix_required=True)
    grading = load_grading(grading_file, assignments)  # a bad file is reported before any capture is read
    _, ignored = find_submissions(class_dir)
    if not quiet:
        for name in ignored:
            warn(f"{os.path.join(class_dir, name)}: not a capture and not a folder: no student's, left out")
    grades = grade_class(class_dir, grading, tolerance_s=tolerance)
    if fmt == "table":
        text = _grades_table(grades, grading)
    elif fmt == "csv":
        text = grades_csv(grades, grading)
    else:
        text = json.dumps(grades_document(grades, grading, class_dir, ignored), indent=2) + "\n"
    # The HTML first: a target that cannot be written (a full disk, /dev/full) then stops natproof before the
    # grades went anywhere, not after they were printed or written (found by a helper).
    if html_file:
        write_bytes(html_file, grades_html(grades, grading, class_dir).encode())
    if output:
        write_bytes(output, text.encode())
    else:
        click.echo(text, nl=False)
    if not quiet:
        for target in (output, html_file):
            if target:
                click.echo(f"natproof: wrote {target}", err=True)


def _grades_table(grades: list, grading: natproof.grade.Grading) -> str:
    """The grades as text: a row per student (points, each expectation's result and points, the reason or notes),
    then each student's failing evidence, then the class in one line."""
    from rich import box
    from rich.table import Table

    from natproof.grade import class_summary, points_text

    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("student", no_wrap=True)
    table.add_column("points", no_wrap=True, justify="right")
    for e in grading.expectations:
        table.add_column(f"{e.name} ({points_text(e.points)})", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    for g in grades:
        cells = [f"{e.result} {points_text(e.points)}" if e.result else "-" for e in g.expectations]
        table.add_row(g.student, f"{points_text(g.points)}/{points_text(g.max_points)}", *cells,
                      g.reason or "; ".join(g.notes))
    console = _console(width=_console(width=1000).measure(table).maximum)
    with console.capture() as out:
        console.print(table)
    lines = [line.rstrip() for line in out.get().splitlines() if line.strip()]
    for g in grades:
        for line in g.evidence:
            lines.append(f"{g.student}: {line}")
    s = class_summary(grades, grading)
    mean = "-" if s["mean"] is None else s["mean"]
    lines.append(f"{s['students']} students: {s['full_marks']} with full marks, {s['not_graded']} not graded "
                 f"(0 points, the reason given); mean {mean} of {points_text(grading.max_points)}")
    return "\n".join(lines) + "\n"


def emit(result: natproof.Result, fmt: str | None, output: str | None, limit: int, schema: str = SCHEMA) -> None:
    """Print or write a result in the chosen format (``output`` "-": standard output, as "-" reads standard input)."""
    from rich.text import Text

    from natproof.report.export import render_parts, write_bytes, write_parts, write_result
    from natproof.report.table import render_table

    if output == "-":
        output = None
    if fmt is None:
        fmt = "table" if output is None and sys.stdout.isatty() else "json"
    if fmt == "table":
        from natproof.diagnose import diagnose

        lines = [Text(f"diagnosis: [{f.severity}] {f.title}") for f in diagnose(result)]
        if output or not sys.stdout.isatty():
            # A file or a pipe: whole addresses rather than wrapping at 80 columns, and no trailing blanks (rich
            # pads centred titles and panels to the width); a file is written whole at once, atomically, as every
            # other format (the table holds --limit rows).
            con = _console(file=io.StringIO(), width=160)
            for part in render_table(result, limit).renderables:  # a line of text whole, not wrapped at 160
                con.print(part, soft_wrap=isinstance(part, Text))
            for line in lines:
                con.print(line, soft_wrap=True)
            text = "".join(f"{line.rstrip()}\n" for line in con.file.getvalue().splitlines())  # type: ignore[attr-defined]
            if output:
                write_bytes(output, text.encode())
            else:
                with _reader_may_leave():
                    sys.stdout.write(text)
                    sys.stdout.flush()
        else:
            con = _console()
            with _reader_may_leave():
                con.print(render_table(result, limit))
                for line in lines:
                    con.print(line)
        return
    if output:
        write_result(result, fmt, output, schema)
        return
    if fmt == "parquet":
        raise click.UsageError("--format parquet needs -o FILE")
    # In pieces: json and ndjson are never held whole (render_parts).
    with _reader_may_leave():
        write_parts(sys.stdout.buffer, render_parts(result, fmt, schema))
        sys.stdout.flush()


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """Writing to standard output: a reader that went away (`| head`) took what it wanted. Exit 0 without a
    word (click would exit 1); standard output then goes nowhere, so the interpreter's last flush cannot fail
    again. Any other failure to write (a full disk) is an InputError."""
    try:
        yield
    except BrokenPipeError:
        _stdout_nowhere()
    except OSError as exc:  # a full disk behind `> file`, ...
        raise _cannot_write_stdout(exc) from None


def _stdout_nowhere() -> None:
    """Point standard output at /dev/null (its reader left)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@cli.command()
@click.argument("files", nargs=-1, required=True, type=_Named(), metavar="FILE...")
@click.option("--nat-gateway", "nat_gateways", multiple=True, metavar="PRIVATE=PUBLIC",
              help="A NAT gateway's private and public (Elastic IP) address, as aws ec2 describe-nat-gateways lists "
                   "them (repeatable). Default: gateways inferred from pkt-dstaddr, public address unknown.")
@click.option("--flow-log-format", metavar="FORMAT",
              help="The flow log's fields, for text without a header line (CloudWatch Logs): its --log-format.")
@click.option("--captures", nargs=2, type=_Named(dir_okay=False), metavar="INSIDE OUTSIDE",
              help="Join the node-side tuple of every connection these captures of one node show leaving it.")
@click.option("--result", "result_json", type=_Named(dir_okay=False), metavar="FILE",
              help="Join the node-side tuples of a natproof.correlate/2 JSON document (natproof correlate --format "
                   "json).")
@click.option("--conntrack", "conntrack_file", type=_Named(dir_okay=False), metavar="FILE",
              help="Join the node-side tuples of a node's conntrack -L or -E -o timestamp output.")
@click.option("--lag", type=click.FloatRange(min=0), default=60.0, show_default=True, metavar="SECONDS",
              callback=_finite, help="How late a record's start/end may be after its packets (AWS: up to 60 s).")
@click.option("--charts", "charts_dir", type=_Named(file_okay=False), metavar="DIR",
              help="Write the NAT gateway port-use chart (PNG and SVG) into DIR.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows of each table in the table format.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Default: table on a terminal, json otherwise.")
def flowlog(files: tuple[str, ...], nat_gateways: tuple[str, ...], flow_log_format: str | None,
            captures: tuple[str, str] | None, result_json: str | None, conntrack_file: str | None, lag: float,
            charts_dir: str | None, limit: int, fmt: str | None) -> None:
    """Summarise AWS VPC Flow Logs; join node tuples to a NAT gateway's ports; measure the gateway's port use.

    FILE may be text (AWS's default format, or a custom format named by its header line or --flow-log-format;
    gzip is sniffed), a CloudWatch Logs export, Parquet (S3's Parquet delivery), or a directory of them. With
    --captures, --result or --conntrack, each node-side tuple is joined to the gateway's public-side flow(s) with
    its evidence: "flow log, unique candidate", "flow log, ambiguous: N candidates" or "no candidate" (and why).
    """
    from natproof.flowlogs import join_nat_gateway, node_tuples, node_tuples_from_conntrack, node_tuples_from_result
    from natproof.flowlogs.gateway import gateway_interfaces
    from natproof.flowlogs.ports import port_usage, port_usage_chart

    if charts_dir:  # said before any work or output
        from natproof.report.export import writable_folder

        writable_folder(charts_dir, "charts folder")
    flowlog_, gateways = read_flow_log_inputs(files, nat_gateways, flow_log_format)
    tuples = []
    if captures:
        res = run_correlate(captures[0], captures[1], None, None, 1.0, True)
        tuples.append(node_tuples_from_result(res))
    if result_json:
        tuples.append(_node_tuples_from_json(result_json))
    if conntrack_file:
        from natproof.conntrack import read_conntrack

        record = read_conntrack(conntrack_file)  # read and checked as correlate and who --conntrack read it
        warn_record(record)
        tuples.append(node_tuples_from_conntrack(record))
    joined = None
    if tuples:
        if not gateways:
            from natproof.flowlogs.ports import why_no_gateway

            raise NatproofError(f"{flowlog_.named()}: no NAT gateway given, and {why_no_gateway(flowlog_)}: pass "
                                "--nat-gateway PRIVATE=PUBLIC (aws ec2 describe-nat-gateways)")
        rows = [r for t in tuples for r in t.drop("node_tuple").to_dicts()]
        joined = join_nat_gateway(node_tuples(rows), flowlog_, gateways, lag_s=lag)
    usage = port_usage(flowlog_, gateways)
    ifaces = gateway_interfaces(flowlog_, gateways) if gateways else None
    if charts_dir:
        fig = port_usage_chart(usage)
        if fig is not None:
            from natproof.report.charts import figure_bytes  # matplotlib: about a second, only to draw
            from natproof.report.export import write_bytes

            for ext in ("png", "svg"):
                write_bytes(Path(charts_dir) / f"nat_gateway_ports.{ext}", figure_bytes(fig, ext))
            click.echo(f"natproof: wrote nat_gateway_ports.png and .svg to {charts_dir}", err=True)
        elif not flowlog_.dated():  # the chart is of ports live over time: records without times draw none
            from natproof.flowlogs.gateway import UNDATED

            warn(f"{flowlog_.named()}: {UNDATED}: no chart of the gateway's ports in use over time can be drawn; "
                 f"none written to {charts_dir}")
        else:  # no gateway given or found, none of its records public-side or dated: port_usage's note says which
            warn(f"{flowlog_.named()}: no chart of the gateway's ports in use over time to draw "
                 f"({usage.notes[-1] if usage.notes else 'no port use'}); none written to {charts_dir}")
    summary = flowlog_.summary(command_line=True)
    if (fmt or ("table" if sys.stdout.isatty() else "json")) == "json":
        doc = {"schema": "natproof.flowlog/1", "summary": summary,
               "nat_gateways": [{"private": g.private, "public": g.public} for g in gateways],
               "gateway_interfaces": [] if ifaces is None else ifaces.to_dicts(),
               "port_usage": usage.to_dict(),
               "join": None if joined is None else joined.to_dicts()}
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    _print_flowlog(summary, gateways, ifaces, usage, joined, limit)


def _node_tuples_from_json(path: str) -> object:
    """The node-side tuples of a natproof.correlate document (/2 or /1): each connection started inside with a
    translated tuple, timed by its first_seen/last_seen (on the inside clock, moved by the document's clock
    offset). NatproofError naming the file (and the connection) for a document of another schema or version, or
    one cut short or edited: no list of connections, a connection without the fields every version writes (proto,
    verdict, first_seen, last_seen), a time or port of the wrong kind (a trial: "noon" was an internal error)."""
    from natproof.contracts import SCHEMAS
    from natproof.flowlogs import node_tuples

    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise NatproofError(f"{path}: not a natproof JSON document ({exc})") from None
    schema = str(doc.get("schema", "")) if isinstance(doc, dict) else ""
    if not schema.startswith("natproof.correlate/"):
        raise NatproofError(f"{path}: not a natproof.correlate document (natproof correlate --format json)")
    if schema not in SCHEMAS.values():
        raise NatproofError(f"{path}: {schema} is a version this natproof does not read (it reads "
                            f"{', '.join(sorted(SCHEMAS.values()))})")
    conns = doc.get("connections")
    if not isinstance(conns, list):  # a trial: cut short or edited, it read as nothing to join
        raise NatproofError(f"{path}: not a whole natproof.correlate document (no list of connections)")
    rows, where = [], path
    try:
        summary = doc.get("summary") or {}
        off = float(summary.get("clock_offset_s") or doc.get("clock_offset_s") or 0.0)
        for i, c in enumerate(conns):
            where = f"{path}: connection #{i}"
            missing = [k for k in ("proto", "verdict", "first_seen", "last_seen")
                       if not isinstance(c, dict) or k not in c]
            if missing:
                raise NatproofError(f"{where}: no {', '.join(missing)} (not as natproof correlate writes it)")
            t = c.get("translated") or c.get("outside")
            if t is None or c.get("initiator", "inside") != "inside":
                continue
            rows.append({"proto": str(c["proto"]), "src": str(t["src"]), "sport": int(t["sport"]),
                         "dst": str(t["dst"]), "dport": int(t["dport"]),
                         "first_ts_ns": int((float(c["first_seen"]) + off) * 1e9),
                         "last_ts_ns": int((float(c["last_seen"]) + off) * 1e9), "source": f"{path} connection #{i}"})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise NatproofError(f"{where}: a field is missing or of the wrong kind ({exc!r})") from None
    return node_tuples(rows)


def _print_flowlog(summary: dict, gateways: list, ifaces: object, usage: object, joined: object, limit: int) -> None:
    """The flowlog command's table format: files, records by interface/action/protocol, gateways, port use, join."""
    from rich import box
    from rich.table import Table

    def table(title: str, cols: tuple[str, ...]) -> Table:
        t = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1, 0, 0))
        numbers = ("lines", "records", "NODATA", "SKIPDATA", "packets", "bytes", "ports", "connections", "peak")
        for c in cols:
            wrap = c in ("why", "skipped")
            t.add_column(c, no_wrap=not wrap, max_width=60 if wrap else None,
                         justify="right" if c in numbers else "left")
        return t

    files = table("flow log files", ("file", "format", "fields", "lines", "records", "NODATA", "SKIPDATA", "skipped"))
    for f in summary["files"]:
        skipped = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in f["skipped"].items()) or "-"
        files.add_row(f["path"], f["format"], f"{len(f['fields'])} from {f['fields_from']}", str(f["lines"]),
                      str(f["records"]), str(f["nodata"]), str(f["skipdata"]), skipped)
    _print_whole(files)
    span = "no record has a start or end time" if summary["first"] is None else (
        f"{_iso(summary['first'] * 10**9)} to {_iso(summary['last'] * 10**9)}"
        + {"start and end": "", "start": " (start times only: the records have no end)",
           "end": " (end times only: the records have no start)"}[summary["span_from"]])
    dupes = f" ({summary['duplicates']} more read twice, kept once)" if summary["duplicates"] else ""
    click.echo(f"{summary['records']} records{dupes}, {summary['flows']} with traffic, {summary['nodata']} NODATA, "
               f"{summary['skipdata']} SKIPDATA; {span}")
    for key, title in (("by_interface", "interface"), ("by_action", "action"), ("by_protocol", "protocol")):
        t = table(f"records by {title}", (title, "records", "packets", "bytes"))
        for row in summary[key][:limit]:
            t.add_row(str(row["value"] if row["value"] is not None else "-"), str(row["records"]),
                      str(row["packets"]), str(row["bytes"]))
        _print_whole(t)
    if gateways:
        found = {} if ifaces is None else {r["gateway_private"]: r["interface_id"]
                                           for r in ifaces.iter_rows(named=True)}  # type: ignore[attr-defined]
        for g in gateways:
            where = f"interface {found[g.private]}" if g.private in found else "no record carries this address"
            click.echo(f"NAT gateway {g.private} (public {g.public or 'not given'}): {where}")
    groups = usage.groups  # type: ignore[attr-defined]
    if not groups.is_empty():
        t = table(f"NAT gateway ports in use per destination (AWS limit {usage.limit:,} per address)",  # type: ignore[attr-defined]
                  ("gateway address", "proto", "destination", "ports", "connections", "peak", "of limit"))
        for g in groups.head(limit).iter_rows(named=True):
            t.add_row(g["gateway_address"], g["proto"], format_address(g["dst"], g["dport"]), str(g["ports"]),
                      str(g["connections"]), "-" if g["peak"] is None else str(g["peak"]),
                      "-" if g["share"] is None else f"{g['share']:.3%}")
        _print_whole(t)
    for f in usage.findings():  # type: ignore[attr-defined]
        click.echo(f"[{f.severity.upper()}] {f.title}\n  {f.summary}\n  fix: {f.fix}")
    for note in usage.notes:  # type: ignore[attr-defined]
        click.echo(f"note: {note}")
    if joined is not None:
        t = table("node tuples joined to the NAT gateway (flow log)",
                  ("node tuple", "gateway public tuple", "evidence", "why"))
        for r in joined.iter_rows(named=True):  # type: ignore[attr-defined]
            public = ", ".join(format_address(g["gateway_public"] or g["gateway_private"], g["sport"])
                               for g in r["gateway_tuples"]) or "-"
            t.add_row(f"{r['proto']} {format_address(r['src'], r['sport'])} -> {format_address(r['dst'], r['dport'])}",
                      public, r["evidence"], r["why"])
        _print_whole(t)


def _refuse_stdin(command: str, *paths: str | None) -> None:
    """A command that reads the captures' frames again after correlating them cannot take standard input."""
    if "-" in paths:
        raise click.UsageError(f"{command} reads the captures' frames again after correlating them: give files, "
                               "not standard input ('-')")


@cli.command("export-pcap")
@capture_options(required=("inside",))
@click.option("-o", "--output", required=True, type=_Named(dir_okay=False), metavar="FILE",
              help="The pcapng file to write (atomically).")
@click.option("--conn", "conns", type=click.IntRange(min=0), multiple=True, metavar="N",
              help="Export connection N (as correlate numbers them; repeatable).")
@click.option("--finding", "findings", multiple=True, metavar="K",
              help="Export the connections diagnosis finding K cites: its kind (e.g. port_pool_exhausted) or its "
                   "index as diagnose lists them, from 0 (repeatable).")
@click.option("--verdict", "verdicts", multiple=True, type=click.Choice([v.value for v in natproof.Verdict]),
              help="Export the connections with this verdict (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Export every connection.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no warnings, no summary line.")
def export_pcap(inside: str, outside: str | None, pod_cidr: str | None, clock_offset: float | None,
                tolerance: float, decoder: str, output: str, conns: tuple[int, ...], findings: tuple[str, ...],
                verdicts: tuple[str, ...], everything: bool, quiet: bool) -> None:
    """Write the packets of chosen connections from both captures as ONE pcapng that Wireshark opens: an interface
    per observation point, every packet in time order on the inside capture's clock, and on each a comment with
    the connection, its verdict and tuples, the packet's fate and its counterpart on the other side.

    --conn, --finding, --verdict and --all each add connections; without them, the connections the diagnosis's
    errors and warnings cite. Exit 1 when nothing is selected (nothing is written).
    """
    from natproof.proof import select_connections, write_proof

    _refuse_stdin("export-pcap", inside, outside)
    if output == "-":
        raise click.UsageError("-o -: export-pcap writes a pcapng file; name one (standard output is not written)")
    refuse_overwriting_inputs(output, inside, outside)
    result = run_correlate(inside, outside, pod_cidr, clock_offset, tolerance, quiet, decoder)
    selection = select_connections(result, conns=conns, finding=findings, verdicts=verdicts, everything=everything)
    if not selection.conns:
        _error(f"no connection selected ({selection.why}): nothing written to {output}; choose with --conn N, "
               "--finding K, --verdict V or --all")
        raise SystemExit(ExitStatus.FAILED)
    summary = write_proof(result, output, selection, clock_given=clock_offset is not None)
    if not quiet:
        numbers = ", ".join(f"#{n}" for n in summary.connections)
        # One capture and the kernel's record: no other clock to move onto this one, so nothing is said of it.
        both = "none" not in (result.inside.chosen, result.outside.chosen)
        moved = f"; outside times moved by {0.0 - summary.clock_offset_s:+.6f} s onto the inside clock" if both else ""
        click.echo(f"natproof: wrote {output}: {summary.packets} packets of {len(summary.connections)} "
                   f"connection(s) ({numbers}; {selection.why}) on interfaces {', '.join(summary.interfaces)}"
                   f"{moved}", err=True)


@cli.command()
@capture_options(required=("inside",))
@click.option("--conn", "conns", type=click.IntRange(min=0), multiple=True, required=True, metavar="N",
              help="The connection to explain (as correlate numbers them; repeatable).")
@click.option("--frame", type=click.IntRange(min=1), metavar="F",
              help="Compare inside frame F (a packet of the one --conn) with its counterpart, instead of the "
                   "connection's first egress and reply pairs.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Default: table on a terminal, json otherwise.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no warnings.")
def explain(inside: str, outside: str | None, pod_cidr: str | None, clock_offset: float | None, tolerance: float,
            decoder: str, conns: tuple[int, ...], frame: int | None, fmt: str | None, quiet: bool) -> None:
    """Which header fields the NAT changed in a connection's packets, and which it kept: MAC addresses, IP
    addresses, TTL, checksums, ports, TCP numbers (an ALG's shift), for its first egress and first reply pair
    (or --frame F), with its translation-table entry in conntrack notation."""

    from natproof.explain import explain as run_explain
    from natproof.explain import to_document
    from natproof.report.diff import render_explanations

    _refuse_stdin("explain", inside, outside)
    result = run_correlate(inside, outside, pod_cidr, clock_offset, tolerance, quiet, decoder)
    points = click.get_current_context().find_root().ensure_object(dict).get("points", {})
    explanations = run_explain(result, tuple(dict.fromkeys(conns)), frame,  # a connection named twice, once
                               vxlan_ports=points.get("vxlan_port") or ())
    if (fmt or ("table" if sys.stdout.isatty() else "json")) == "json":
        click.echo(json.dumps(to_document(result, explanations), indent=2))
        return
    console = _console(width=None if sys.stdout.isatty() else 160)
    with console.capture() as out:
        console.print(render_explanations(explanations))
    click.echo("\n".join(line.rstrip() for line in out.get().rstrip().splitlines()))


@cli.command()
@click.argument("manifest", type=_Named(dir_okay=False), metavar="MANIFEST")
@click.option("-o", "--output", "out_dir", required=True, type=_Named(file_okay=False), metavar="DIR",
              help="Folder to write nodes/NAME.parquet, fleet.parquet, fleet.json and fleet.html in (made if missing; "
                   "with --scheduler, a folder the workers can write).")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="A running Dask scheduler to run the nodes' tasks on. Default: a LocalCluster on this machine.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes of the LocalCluster (one thread each); not with --scheduler.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Default: table on a terminal, json (fleet.json) otherwise.")
@click.option("-q", "--quiet", is_flag=True, help="No line per finished node and no warnings.")
def fleet(manifest: str, out_dir: str, scheduler: str | None, workers: int, fmt: str | None, quiet: bool) -> None:
    """Correlate every node of a fleet, each as a task on Dask distributed, into one table and one report.

    MANIFEST is a TOML file of [[node]] tables (name; inside and outside, or capture; optional conntrack, pods,
    services, pod_cidr, clock_offset, worker) and an optional [gateway] table (flow_logs, nat_gateways), paths
    relative to the manifest's folder. Writes DIR/nodes/NAME.parquet per node (the columns of correlate --format
    parquet), DIR/fleet.parquet (all of them, a node column in front), DIR/fleet.json and DIR/fleet.html. A node
    that cannot be correlated is reported and the others go on; exit 1 when any failed. Needs pip install
    'natproof[fleet]'.
    """
    from natproof.fleet import gateway_warnings, load_manifest, run_fleet

    spec = load_manifest(manifest)  # a bad manifest is reported before any cluster starts
    if scheduler and click.get_current_context().get_parameter_source("workers").name != "DEFAULT":
        raise click.UsageError("--workers sizes the LocalCluster; a --scheduler's cluster has its own workers")
    if spec.gateway is not None and not quiet:
        for w in gateway_warnings(spec.path, spec.gateway):  # said as the manifest is read, before any node runs
            warn(w)

    def progress(entry: dict) -> None:
        if entry["status"] == "ok":
            click.echo(f"natproof: {entry['name']}: {entry['connections']} connections "
                       f"({_fleet_verdicts(entry['by_verdict'])}) in {entry['seconds']:.1f} s", err=True)
            for w in entry.get("warnings", []):
                warn(f"{entry['name']}: {w}")
        else:
            click.echo(f"natproof: {entry['name']}: failed: {entry['error']}", err=True)

    result = run_fleet(spec, out_dir, scheduler=scheduler, workers=workers, progress=None if quiet else progress)
    summary = result.summary
    if (fmt or ("table" if sys.stdout.isatty() else "json")) == "json":
        sys.stdout.buffer.write(Path(result.summary_path).read_bytes())
        sys.stdout.flush()
    else:
        _print_fleet(summary, out_dir)
    if result.failed:
        raise SystemExit(ExitStatus.FAILED)


def _fleet_verdicts(by_verdict: dict) -> str:
    return ", ".join(f"{n} {v}" for v, n in by_verdict.items()) or "none"


def _print_fleet(summary: dict, out_dir: str) -> None:
    from rich import box
    from rich.table import Table

    t = summary["totals"]
    plural = "s" if t["nodes"] != 1 else ""
    table = Table(title=f"fleet of {t['nodes']} node{plural} ({summary['manifest']})", header_style="bold",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("node", "status", "connections", "verdicts", "findings", "connections table"):
        table.add_column(col, no_wrap=True, justify="right" if col == "connections" else "left")
    for n in summary["nodes"]:
        sev = Counter(f["severity"] for f in n["findings"])
        findings = ", ".join(f"{sev[s]} {s}" for s in ("error", "warning", "info") if sev[s]) or "-"
        # Its connections as fleet.json counts them (a failed node's rows in fleet.parquet: 0), not "-" beside a 0
        # there; no verdicts, as none was reached.
        table.add_row(n["name"], n["status"], str(n["connections"]),
                      _fleet_verdicts(n["by_verdict"]) if n["status"] == "ok" else "-", findings,
                      os.path.join(out_dir, n["parquet"]) if n.get("parquet") else "-")
    _print_whole(table)
    for n in summary["nodes"]:
        if n["status"] != "ok":
            click.echo(f"{n['name']}: failed: {n['error']}")
        for f in n["findings"]:
            click.echo(f"diagnosis: {n['name']}: [{f['severity']}] {f['title']}")
    gw = summary.get("gateway")
    if gw:
        from natproof.fleet import gateway_addresses, gateway_text

        click.echo(f"NAT gateway {gateway_addresses(gw)} ({gw['records']} flow log "
                   f"records): {gateway_text(gw)}")
    failed = f", {t['failed']} failed ({', '.join(t['failed_nodes'])})" if t["failed"] else ""
    click.echo(f"{t['nodes']} node{plural}: {t['ok']} correlated{failed}; "
               f"{t['connections']} connection{'s' if t['connections'] != 1 else ''}: "
               f"{_fleet_verdicts(t['by_verdict'])}")
    click.echo(f"wrote {os.path.join(out_dir, summary['table'])}, {os.path.join(out_dir, 'fleet.json')}, "
               f"{os.path.join(out_dir, summary['report'])}")


@cli.command("fleet-who")
@click.argument("endpoint", metavar="ADDR:PORT|NAME")
@click.argument("out_dir", type=_Named(file_okay=False), metavar="DIR")
@click.option("--at", metavar="TIME", help="Epoch seconds, ISO-8601 (2026-11-24T14:02:10Z), or a time of day "
              "HH:MM[:SS[.ffffff]] on the captures' day; UTC unless a zone is given (Z, +02:00).")
@click.option("--window", type=click.FloatRange(min=0), default=1.0, show_default=True, metavar="SECONDS",
              callback=_finite, help="How far from TIME a connection may start or end and still count.")
@click.option("--clock", type=click.Choice(["inside", "outside"]), default="inside", show_default=True,
              help="Which capture's clock TIME is on, on each node (outside: the node uplink's).")
@click.option("--node", metavar="NAME", help="Only this node's connections.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=None,
              help="Default: table on a terminal, json otherwise.")
def fleet_who(endpoint: str, out_dir: str, at: str | None, window: float, clock: str, node: str | None,
              fmt: str | None) -> None:
    """Which node and pod was behind ADDR:PORT (at TIME), from the fleet table natproof fleet wrote in DIR?

    ADDR:PORT may be any end of a connection's original or translated tuple on any node (a node's public source
    port, a pod's source, a NodePort, a ClusterIP, a remote end), or, with a [gateway] in the manifest, the NAT
    gateway's public address and port; NAME a pod or Service (namespace/name, or a bare name) where the node had
    kubectl dumps. Exit 0 when a connection was found, 1 when none was.
    """
    from natproof.fleet import fleet_who as run_fleet_who
    from natproof.lookup import REWRITTEN_SOURCE, behind

    answer = run_fleet_who(out_dir, endpoint, at, window, clock=clock, node=node)
    for w in answer.warnings:
        warn(w)
    if (fmt or ("table" if sys.stdout.isatty() else "json")) == "json":
        click.echo(json.dumps(answer.to_dict(), indent=2))
    else:
        when = "" if answer.at_ns is None else f" at {_iso(answer.at_ns)} (each node's {clock} capture's clock)"
        if answer.matches:
            n = len(answer.matches)
            _print_whole(_fleet_who_table(f"{answer.query}{when}: {n} connection{'s' if n > 1 else ''} in the fleet",
                                          answer.matches))
            for m in answer.matches:
                roles = " ".join(m["roles"])
                # Behind a rewritten source (or the gateway's public one): lookup.behind, from the ends who's answer
                # carries too: a NodePort client masqueraded to the bridge address, not the pod it reached.
                rewritten = (REWRITTEN_SOURCE in roles and "original source" not in roles) or "NAT gateway" in roles
                end = behind(m) if rewritten else None
                if end is None:
                    end = None if m["ends"]["pod"] is None else ("pod", m["ends"]["pod"])
                    rewritten = False
                if end is None:
                    continue
                what, e = end
                who = f"{what} {format_address(e['address'], e['port'])}" + (f" {e['name']}" if e.get("name") else "")
                if "ambiguous" in roles:
                    who = (f"{answer.query} may have been its {who} (the flow log cannot tell this connection from "
                           f"{len(m['gateway']['candidates']) - 1} other(s) to the same destination)")
                elif rewritten:
                    who = f"behind {answer.query} was {who}"
                click.echo(f"{m['node']} #{m['conn']}: {who}")
        else:
            click.echo(f"no connection in the fleet used {answer.query}{when}")
            if answer.nearest:
                _print_whole(_fleet_who_table("nearest in time", answer.nearest))
    if not answer.matches:
        raise SystemExit(ExitStatus.FAILED)


def _fleet_who_table(title: str, matches: tuple[dict, ...]) -> Table:
    """One row per connection: its node, the role ADDR:PORT played, its original and translated tuples, its pod, and
    the NAT gateway's public tuple when a [gateway] joined it."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, header_style="bold", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1, 0, 0))
    for col in ("node", "#", "role", "proto", "original", "translated", "pod", "seen (UTC)", "verdict",
                "NAT gateway"):
        table.add_column(col, no_wrap=col not in ("role", "NAT gateway"), justify="right" if col == "#" else "left")

    def tup(t: dict | None) -> str:
        if t is None:
            return "-"
        return f"{format_address(t['src'], t['sport'])} -> {format_address(t['dst'], t['dport'])}"

    for m in matches:
        pod = m["ends"]["pod"]
        pod_text = "-"
        if pod is not None:
            pod_text = pod.get("name") or (" | ".join(pod["name_candidates"]) if pod.get("name_candidates") else "-")
        gw = m.get("gateway")
        gw_text = "-"
        if gw is not None and gw["candidates"]:
            gw_text = f"{' | '.join(gw['candidates'])} ({gw['evidence']})"
        seen = f"{_iso(int(m['first_seen'] * 1e9))[11:-1]}-{_iso(int(m['last_seen'] * 1e9))[11:-1]}"
        table.add_row(m["node"], str(m["conn"]), ", ".join(m["roles"]), m["proto"], tup(m["original"]),
                      tup(m["translated"]), pod_text, seen, m["verdict"], gw_text)
    return table


@cli.group()
def lab() -> None:
    """Real-kernel NAT scenarios with ground truth (run needs root, iproute2, iptables, tcpdump, conntrack)."""


@lab.command("list")
def lab_list() -> None:
    """List the scenarios."""
    from natproof.lab import list_scenarios

    scenarios = list_scenarios()
    width = max(len(name) for name, _ in scenarios) + 1
    for name, description in scenarios:
        click.echo(f"{name:{width}} {description}")


@lab.command("run")
@click.argument("scenario")
@click.option("--out", "out", required=True, type=_Named(file_okay=False),
              help="Folder for inside.pcap, outside.pcap, any.pcap, node.pcapng, links.txt, conntrack.log, truth.json, "
                   "scenario.txt and the kubectl-style pods.json and services.json.")
@click.option("--keep-going", is_flag=True,
              help="Write the files even when the kernel's record disagrees with the scenario's design.")
def lab_run(scenario: str, out: str, keep_going: bool) -> None:
    """Build SCENARIO in network namespaces, capture both sides (and the whole node), record the kernel's truth,
    tear down."""
    from natproof.lab import MULTI_HOP, run_scenario
    from natproof.lab.scenarios import check_prerequisites, get_scenario
    from natproof.report.export import writable_folder

    if scenario not in MULTI_HOP:  # an unknown name, or no root, is refused before the folder is made
        get_scenario(scenario)
    check_prerequisites()
    truth = run_scenario(scenario, writable_folder(out, "scenario folder"), keep_going=keep_going)
    verdicts = Counter(c["verdict"] for c in truth["connections"])
    counts = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
    click.echo(f"{scenario}: {len(truth['connections'])} connections ({counts}) written to {out}")


@lab.command("check")
@click.argument("folders", nargs=-1, required=True, type=_Named())
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--single-file", is_flag=True,
              help="Check the captures of many interfaces instead of the pair: any.pcap (tcpdump -i any, named by "
                   "links.txt) and node.pcapng, each on its own, natproof choosing the inside and outside.")
@click.option("--conntrack", is_flag=True,
              help="Also hold the connections against the folder's kernel record (conntrack.log): every one the "
                   "kernel kept confirmed, none contradicts, any absent for an allowed reason; and (two-file form) "
                   "the inside capture alone with the record must give the truth's mappings.")
def lab_check(folders: tuple[str, ...], fmt: str, single_file: bool, conntrack: bool) -> None:
    """Correlate each scenario folder's captures and compare with its truth.json (exit 1 on any mismatch).

    A FOLDER holding truth.json is one scenario; otherwise each subfolder holding one is (e.g. captures/). A
    scenario of several NATs (double-nat) is also checked as its chain of captures (pod side, node eth0, the
    gateway's public side) against the composed truth of its kernels.
    """
    from rich.table import Table
    from rich.text import Text

    from natproof.check import (
        FLOW_LOGS,
        KERNEL_RECORD,
        chain_captures,
        check_case,
        check_chain,
        check_chain_flow_log,
        find_cases,
        single_captures,
    )

    cases = find_cases(list(folders))
    if single_file:
        without = [case for case in cases if not single_captures(case)]
        if len(without) == len(cases):
            where = str(cases[0]) if len(cases) == 1 else f"none of the {len(cases)} scenario folders"
            raise NatproofError(f"{where}: no any.pcap or node.pcapng in it (natproof lab run writes them)")
        if without:
            warn(f"no any.pcap or node.pcapng in {', '.join(c.name for c in without)}: checked in the two-file "
                 "form only (recorded before the lab wrote them, or a design with no single-file form)")
        cases = [case for case in cases if case not in without]
    recorded = {case for case in cases if (case / KERNEL_RECORD).is_file()}
    if conntrack:
        if not recorded:
            where = str(cases[0]) if len(cases) == 1 else f"none of the {len(cases)} scenario folders"
            raise NatproofError(f"{where}: no {KERNEL_RECORD} in it (natproof lab run writes the kernel's record "
                                "there)")
        if len(recorded) < len(cases):
            warn(f"no {KERNEL_RECORD} in {', '.join(c.name for c in cases if c not in recorded)}: checked against "
                 "truth.json only")
    reports = {}
    chained: set[str] = set()  # rows of a chain of captures: the kernel record is checked on the folder's own row
    for case in cases:
        kernel = conntrack and case in recorded
        if not single_file:
            reports[case.name] = check_case(case, conntrack=kernel)
            if chain := chain_captures(case):
                # A scenario of several NATs: also its whole chain of captures against the kernels' composed truth.
                reports[f"{case.name} (chain of {len(chain)} captures)"] = check_chain(case)
                if all((case / f).is_file() for f in FLOW_LOGS):  # and the gateway from its flow log instead
                    reports[f"{case.name} (2 captures + flow log)"] = check_chain_flow_log(case)
                chained |= {f"{case.name} (chain of {len(chain)} captures)", f"{case.name} (2 captures + flow log)"}
        else:
            reports |= {f"{case.name} ({path.name})": check_case(case, path, conntrack=kernel)
                        for path in single_captures(case)}
    if fmt == "json":
        click.echo(json.dumps({name: rep.to_dict() for name, rep in reports.items()}, indent=2))
    else:
        table = Table(title="natproof lab check", header_style="bold")
        cols = ["scenario", "expected", "found", "mappings right", "verdicts right", "wrong", "missing", "unexpected"]
        if conntrack:
            cols += ["kernel"] + ([] if single_file else ["one capture"])
        for col in [*cols, "result"]:
            # The kernel's states one a line, each whole: the numeric columns give way.
            table.add_column(col, justify="left" if col in ("scenario", "kernel") else "right",
                             no_wrap=col in ("scenario", "kernel", "one capture"))
        for name, rep in reports.items():
            row = [name, str(rep.expected), str(rep.found), str(rep.mapping_right), str(rep.verdict_right),
                   str(len(rep.wrong)), str(len(rep.missing)), str(len(rep.unexpected))]
            if conntrack:
                k = rep.kernel
                row.append("-" if name in chained else "no record" if k is None
                           else k.summary().replace(", ", "\n"))
                if not single_file:
                    one = None if k is None else k.one_capture
                    row.append("-" if one is None or one.note else one.summary())
            table.add_row(*row, Text("ok", style="green") if rep.ok else Text("FAIL", style="red"))
        _console(width=None if sys.stdout.isatty() else 180 if conntrack else 160).print(table)
        for name, rep in reports.items():
            for w in rep.wrong:
                fields = f" (differs in {', '.join(w['fields'])})" if w.get("fields") else ""
                click.echo(f"{name}: wrong: {_conn_text(w['truth'])} -> natproof {_conn_text(w['natproof'])}{fields}")
            for m in rep.missing:
                click.echo(f"{name}: missing: {_conn_text(m)}")
            for u in rep.unexpected:
                click.echo(f"{name}: unexpected: {_conn_text(u)}")
            if not rep.ok:  # a file cut short explains a failure as much as natproof does
                for w in dict.fromkeys(rep.warnings):
                    click.echo(f"{name}: capture warning: {w}")
            k = rep.kernel
            if k is None:
                continue
            for d in k.disagree:
                c = d["connection"]
                what = f"#{c['conn']} {_conn_text(c)}: " if c else ""
                line = f" ({Path(k.record).name} line {d['kernel_line']})" if d.get("kernel_line") else ""
                click.echo(f"{name}: kernel: {what}{d['why']}{line}")
            one = k.one_capture
            for m in [] if one is None else one.missing:
                click.echo(f"{name}: one capture: missing: {_mapping_text(m)}")
            for m in [] if one is None else one.wrong:
                click.echo(f"{name}: one capture: not in the truth: {_mapping_text(m)}")
        ok = sum(rep.ok for rep in reports.values())
        against = " and the kernel's record" if conntrack else ""
        unrecorded = sum(rep.kernel is None and name not in chained for name, rep in reports.items()) \
            if conntrack else 0
        if unrecorded:
            against += f" ({unrecorded} without a record: their truth only)"
        click.echo(f"{ok} of {len(reports)} scenarios match their truth{against}")
    if not all(rep.ok for rep in reports.values()):
        raise SystemExit(ExitStatus.FAILED)


def _mapping_text(m: dict) -> str:
    o, t = m["original"], m["translated"]
    return (f"{m['proto']} {format_address(o['src'], o['sport'])} -> {format_address(o['dst'], o['dport'])} => "
            f"{format_address(t['src'], t['sport'])} -> {format_address(t['dst'], t['dport'])}")


def _conn_text(c: dict) -> str:
    """A truth or result connection in one line: its inside tuple (the outside one where it reached no pod), and
    the outside source it left as."""
    i, o = c.get("inside"), c.get("outside")
    if i is None:  # started outside and never reached the inside (a refused NodePort attempt)
        return (f"{c['proto']} {format_address(o['src'], o['sport'])} -> {format_address(o['dst'], o['dport'])} "
                f"(outside only) {c['verdict']}")
    outside = "-" if o is None else format_address(o["src"], o["sport"])
    return (f"{c['proto']} {format_address(i['src'], i['sport'])} -> {format_address(i['dst'], i['dport'])} "
            f"as {outside} {c['verdict']}")


def _error(msg: str) -> None:
    click.echo(f"natproof: error: {msg}", err=True)


class _ReaderMayLeave:
    """Standard output whose reader may go away (`| head`, `| true`): the write that finds the pipe closed sends
    the rest to /dev/null and the command goes on, so its exit status is its own (click and rich would exit 1
    there: a passed verify read as failed, a found `who` as not found). Any other failure to write (a full disk
    behind `> file`, /dev/full) is an InputError naming standard output, whichever command wrote: `who`, `explain`,
    `--help`... ended as internal errors (a new user's trial). Everything else is the stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _stdout_nowhere()
            return len(text)
        except OSError as exc:
            raise _cannot_write_stdout(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _stdout_nowhere()
        except OSError as exc:
            raise _cannot_write_stdout(exc) from None

    @property
    def buffer(self) -> _ReaderMayLeave:
        """The byte stream beneath, written with the same care: a command that writes bytes (fleet's and a chain's
        JSON) reached the stream's own buffer through __getattr__, past this class, and a full disk or a closed
        standard output was an internal error there."""
        return _ReaderMayLeave(self._stream.buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _ClosedStdout:
    """Standard output when the command was started without one (``>&-``: sys.stdout is None): every write fails
    as a closed descriptor's does, and is said as such (it was an AttributeError on None)."""

    def write(self, data: Any) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    @property
    def buffer(self) -> _ClosedStdout:
        return self

    @property
    def encoding(self) -> str:
        return "utf-8"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _StdoutLost(InputError):
    """Standard output cannot be written (a full disk, closed): what is still buffered for it is lost too."""


def _cannot_write_stdout(exc: OSError) -> InputError:
    return _StdoutLost(f"standard output: cannot write it ({exc.strerror or exc})")


_terminated: list[bool] = []
"""Set while a SIGTERM is being handled (_on_sigterm)."""


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (timeout, kill, Kubernetes, systemd, a CI job's limit) ends the command as Ctrl-C does: its
    clean-up runs (the worker and its folder in /dev/shm, a spill folder, a temporary -o file), then one line and
    exit 143. By default it ended the process at once and left them (a trial: spill folders in /tmp)."""
    _terminated.append(True)
    raise KeyboardInterrupt


def _said_interrupted(end_echo: bool = False) -> int:
    """Say an interrupt (or a SIGTERM, _on_sigterm) in one line and give its status; ``end_echo``: a newline
    first on a terminal, to end its ^C echo (click's own newline did so, on a terminal or not)."""
    if _terminated:
        click.echo("natproof: terminated", err=True)
        return ExitStatus.TERMINATED
    click.echo(("\n" if end_echo and _stderr_is_terminal() else "") + "natproof: interrupted", err=True)
    return ExitStatus.INTERRUPTED


def _interrupt_not_lost(before: Callable[[Any], object], unraisable: Any) -> None:
    """sys.unraisablehook while a command runs: a Ctrl-C (or SIGTERM, _on_sigterm) that lands in code whose
    exceptions Python can only print and pass over (a weakref callback of the import system, a finalizer) printed
    "Exception ignored in ..." with a traceback and was lost: the command went on (a CI run's Ctrl-C test, 40 ms
    into a command). It is raised again in the main thread (``_thread.interrupt_main``) and said as any other
    interrupt: by a thread of its own once this hook has returned, as in the hook it would be raised, and lost,
    again. Any other unraisable exception goes to ``before``, the hook that was there."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        returned = [False]
        again = threading.Thread(target=_interrupt_after, args=(returned,), daemon=True)
        again.start()
        _raised_again.append(again)
        returned[0] = True  # the hook's last instruction: nothing here can meet the interrupt (no call, no loop)
        return
    before(unraisable)


def _interrupt_after(returned: list[bool]) -> None:
    """Interrupt the main thread once ``returned[0]`` is true (_interrupt_not_lost)."""
    import _thread
    import time

    while not returned[0]:
        time.sleep(0.001)
    _thread.interrupt_main()


_raised_again: list[threading.Thread] = []
"""The threads that raise a lost interrupt again (_interrupt_not_lost): main waits for them before it ends."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every outcome into one line on stderr and an exit status. What is still
    buffered for standard output is written before the status is returned, so a failure to write it (a full disk)
    is said and is exit 2 (natproof.__main__.leave ends the process without the interpreter's last flush)."""
    args = sys.argv[1:] if argv is None else argv
    stdout = sys.stdout
    previous = None
    unraisable_hook = sys.unraisablehook
    try:  # Ctrl-C from here on, in setting up or in the last flush too, is one line, not a traceback
        sys.stdout = _ReaderMayLeave(stdout if stdout is not None else _ClosedStdout())  # type: ignore[assignment]
        _terminated.clear()
        _raised_again.clear()
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
            sys.unraisablehook = functools.partial(_interrupt_not_lost, unraisable_hook)
        status = _main(args)
        while _raised_again:  # an interrupt raised again arrives here if the command ended first
            _raised_again.pop().join()
        try:
            sys.stdout.flush()
        except InputError as exc:  # the output is lost, whatever the command found: said, and status 2 as for -o
            _error(exc.for_command_line())
            status = ExitStatus.BAD_INPUT
        return status
    except KeyboardInterrupt:
        return _said_interrupted()
    finally:
        sys.stdout = stdout
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            sys.unraisablehook = unraisable_hook


def _main(args: list[str]) -> int:
    show_tb = "--traceback" in args
    try:
        rv = cli.main(args=args, prog_name="natproof", standalone_mode=False)
    except click.UsageError as exc:
        # The command's whole path: 'natproof lab run --help', not 'natproof run --help'.
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _error(f"{exc.format_message()}{hint}")
        return ExitStatus.BAD_INPUT
    except click.ClickException as exc:
        _error(exc.format_message())
        return ExitStatus.BAD_INPUT
    except NatproofError as exc:
        if show_tb:
            raise
        _error(exc.for_command_line())
        if isinstance(exc, _StdoutLost):
            # Said once: what is still buffered goes to /dev/null, or main's last flush failed on it again and said
            # it twice (`diagnose --format json > /dev/full`). Here, once the command is over, not where it is
            # raised: click tries a write to tell a stream's kind and passes over what that raises.
            with contextlib.suppress(OSError, ValueError):  # closed (>&-): no descriptor, nothing buffered
                _stdout_nowhere()
        return ExitStatus.BAD_INPUT
    except _Interrupted:
        return _said_interrupted(end_echo=True)
    except (KeyboardInterrupt, click.exceptions.Abort):  # (while click parsed: it wrote its blank line)
        return _said_interrupted()
    except BrokenPipeError:
        return ExitStatus.OK
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - the one place that reports bugs
        if show_tb:
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (rerun with --traceback and report it)")
        return ExitStatus.INTERNAL
    return int(rv) if isinstance(rv, int) else ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
