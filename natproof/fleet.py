"""A fleet of nodes: each node's correlation as a task on Dask distributed, then one fleet-wide table and report.

A manifest (TOML) names every node's evidence: its captures (``inside`` and ``outside``, or one ``capture`` of many
interfaces), its conntrack record and its kubectl dumps, and any evidence from a NAT gateway in front of them (the
gateway's flow logs). ``run_fleet`` runs ``natproof.correlate`` once per node as a Dask task, on the worker that
holds the node's files (``worker`` pins it there), which writes the node's connections as Parquet and sends back only
counts and findings; then one table of the whole fleet (``fleet.parquet``, a ``node`` column in front), a summary
(``fleet.json``) and a report (``fleet.html``). ``fleet_who`` answers from that table: which node and pod was
behind an address and port.

Dask is an optional dependency (``pip install 'natproof[fleet]'``); everything but ``run_fleet`` works without it.
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import polars as pl

from natproof.contracts import epoch_seconds
from natproof.errors import InputError, NatproofError, Said, setting
from natproof.tomlfile import read_toml

if TYPE_CHECKING:
    from natproof.flowlogs import FlowLog, NatGateway

SCHEMA = "natproof.fleet/1"
WHO_SCHEMA = "natproof.fleet-who/1"
TABLE = "fleet.parquet"
SUMMARY = "fleet.json"
REPORT = "fleet.html"
NODES_DIR = "nodes"
GATEWAY_SCHEMA: dict[str, pl.DataType] = {
    "gateway_evidence": pl.String(), "gateway_public": pl.String(), "gateway_sport": pl.UInt16(),
    "gateway_candidates": pl.List(pl.String()),
}
"""The columns a ``[gateway]`` joins onto fleet.parquet (per node and conn): its evidence, the public address, the
public port when one candidate, and every candidate (public:port). All of them or none (no ``[gateway]``)."""

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_NAME_BYTES = 255 - len(".") - len(".parquet.") - 8
"""The longest node name (UTF-8 bytes): its table nodes/NAME.parquet is written as a temporary file
.NAME.parquet. and 8 random characters (natproof.report.files.atomic_write: mkstemp's), then renamed, and either name
must fit a file name (255 bytes: Linux's NAME_MAX on ext4, xfs, btrfs, tmpfs and NFS)."""

NODE_KEYS = {
    "name": f"the node's name (letters, digits, '.', '-', '_'; up to {_NAME_BYTES}): its Parquet file is "
            "nodes/NAME.parquet",
    "inside": "the pod-side capture (the pod's veth or cni0)",
    "outside": "the node's uplink capture (eth0)",
    "capture": "one capture of several interfaces (tcpdump -i any), or of one interface with conntrack",
    "interfaces": "with capture: 'ip -o link' output naming a tcpdump -i any file's interface indexes",
    "inside_if": "with capture: the inside interface(s), a name or a list",
    "outside_if": "with capture: the outside interface(s), a name or a list",
    "conntrack": "the node's conntrack record (conntrack -E -o timestamp, conntrack -L, /proc/net/nf_conntrack)",
    "side": "with capture of one interface and conntrack: the side it was taken on (inside, outside; default auto)",
    "pods": "kubectl get pods -A -o json output (a path or a list)",
    "services": "kubectl get svc,endpointslices -A -o json output (a path or a list)",
    "pod_cidr": "the pod network(s): a CIDR or a list (default: inferred from the inside capture)",
    "clock_offset": "seconds, the node's outside clock minus its inside clock, as --clock-offset (default: "
                    "estimated from the packets)",
    "worker": "the Dask worker that holds the node's files (address, host or name); its paths are that worker's",
}
"""The keys of a [[node]] table, and what each holds."""

GATEWAY_KEYS = {
    "flow_logs": "the NAT gateway's VPC Flow Log files or folders (a path or a list)",
    "nat_gateways": "the gateway's addresses as PRIVATE=PUBLIC (a string or a list)",
    "flow_log_format": "the flow log's fields, for text without a header line (its --log-format)",
}
"""The keys of the [gateway] table."""

_TEN_YEARS_S = 10 * 365 * 86_400
"""The largest clock offset natproof.correlate (and --clock-offset) takes, seconds."""

_PATH_KEYS = ("inside", "outside", "capture", "interfaces", "conntrack", "pods", "services")


@dataclass(frozen=True)
class NodeSpec:
    """One node of a manifest: its evidence, paths made absolute against the manifest's folder."""

    name: str
    inside: str | None = None
    outside: str | None = None
    capture: str | None = None
    interfaces: str | None = None
    inside_if: tuple[str, ...] = ()
    outside_if: tuple[str, ...] = ()
    conntrack: str | None = None
    pods: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    pod_cidr: tuple[str, ...] = ()
    clock_offset_s: float | None = None
    """The manifest's clock_offset: outside clock minus inside clock, seconds (correlate's clock_offset_s); None:
    estimated from the packets."""
    side: str = "auto"
    worker: str | None = None

    def files(self) -> list[str]:
        """Every file the node's task reads."""
        one = [self.inside, self.outside, self.capture, self.interfaces, self.conntrack]
        return [p for p in one if p is not None] + [*self.pods, *self.services]


@dataclass(frozen=True)
class GatewaySpec:
    """Evidence from a NAT gateway in front of the nodes: its flow logs and addresses."""

    flow_logs: tuple[str, ...]
    nat_gateways: tuple[str, ...] = ()
    flow_log_format: str | None = None
    flow_log: FlowLog | None = field(default=None, repr=False, compare=False)
    """The flow logs as load_manifest read them (checked with the manifest, before any worker starts); None: read
    when the fleet's connections are joined to them."""


@dataclass(frozen=True)
class Manifest:
    path: str
    nodes: tuple[NodeSpec, ...]
    gateway: GatewaySpec | None = None


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a fleet manifest (TOML): ``[[node]]`` tables (NODE_KEYS) and an optional ``[gateway]`` table
    (GATEWAY_KEYS). Relative paths are taken from the manifest's folder. Raises InputError, one line naming the file
    and the key, for a file that is no TOML, an unknown or missing key, a value of the wrong type, two nodes of one
    name, and a file that does not exist (except on a node pinned to a ``worker``: its paths are the worker's). The
    ``[gateway]``'s flow logs are read here (``GatewaySpec.flow_log``), so that one natproof cannot read, or a log
    in which no gateway is given or found, is refused with the manifest too."""
    where = os.fspath(path)
    doc = read_toml(where, "TOML", noun="manifest")
    base = Path(where).resolve().parent
    unknown = sorted(set(doc) - {"node", "gateway"})
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} at the top (a manifest has [[node]] tables and an "
                         "optional [gateway] table)")
    nodes_raw = doc.get("node")
    if not nodes_raw:
        raise InputError(f"{where}: no [[node]] table: give each node as [[node]] with name, inside and outside "
                         "(or capture)")
    if not isinstance(nodes_raw, list) or not all(isinstance(n, dict) for n in nodes_raw):
        raise InputError(f"{where}: node: write each node as a [[node]] table")
    nodes: list[NodeSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(nodes_raw, 1):
        node = _node(where, base, i, raw)
        if node.name in seen:
            raise InputError(f"{where}: [[node]] #{i} name: {node.name!r} is also [[node]] #{seen[node.name]}'s "
                             "name; each node needs its own")
        seen[node.name] = i
        nodes.append(node)
    gateway = None
    if "gateway" in doc:
        gateway = _gateway(where, base, doc["gateway"])
    return Manifest(path=where, nodes=tuple(nodes), gateway=gateway)


def _strings(where: str, label: str, key: str, value: Any) -> tuple[str, ...]:
    """A string or a list of strings (a key that takes several)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value) or not value:
        raise InputError(f"{where}: {label} {key}: a string or a list of strings, not {value!r}")
    return tuple(value)


def _file(where: str, base: Path, label: str, key: str, value: str, check: bool, folder: bool = False) -> str:
    p = Path(os.path.expanduser(value))
    p = Path(os.path.normpath(p if p.is_absolute() else base / p))
    if check and not (p.exists() if folder else p.is_file()):
        problem = "is a directory, not a file" if p.is_dir() else "no such file"
        raise InputError(f"{where}: {label} {key}: {problem} {p}")
    return str(p)


def _node(where: str, base: Path, i: int, raw: dict[str, Any]) -> NodeSpec:
    name = raw.get("name")
    label = f"[[node]] #{i}" + (f" ({name})" if isinstance(name, str) else "")
    unknown = sorted(set(raw) - set(NODE_KEYS))
    if unknown:
        raise InputError(f"{where}: {label}: unknown key {unknown[0]!r} (a node takes {', '.join(NODE_KEYS)})")
    if name is None:
        raise InputError(f"{where}: {label}: no name (name = \"node-a\")")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"{where}: {label} name: {name!r} is no node name (letters, digits, '.', '-', '_'; "
                         "it names the node's Parquet file)")
    if len(name.encode()) > _NAME_BYTES:
        raise InputError(f"{where}: [[node]] #{i} name: {len(name.encode())} bytes, longer than a node's name can "
                         f"be ({_NAME_BYTES} bytes: it names the node's Parquet file, whose name a file system holds "
                         "to 255 bytes)")
    worker = raw.get("worker")
    if worker is not None and (not isinstance(worker, str) or not worker.strip()):
        raise InputError(f"{where}: {label} worker: a Dask worker's address, host or name, not {worker!r}")
    check = worker is None  # a pinned node's paths are on its worker
    kw: dict[str, Any] = {"name": name, "worker": worker}
    for key in ("inside", "outside", "capture", "interfaces", "conntrack"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: {label} {key}: a path, not {value!r}")
            kw[key] = _file(where, base, label, key, value, check)
    for key in ("pods", "services"):
        if key in raw:
            kw[key] = tuple(_file(where, base, label, key, v, check) for v in _strings(where, label, key, raw[key]))
    for key in ("inside_if", "outside_if", "pod_cidr"):
        if key in raw:
            kw[key] = _strings(where, label, key, raw[key])
    if kw.get("pod_cidr"):
        from natproof.networks import parse_networks

        try:  # refused before any worker starts, as every other key
            parse_networks(list(kw["pod_cidr"]), option="pod_cidr")
        except InputError as exc:
            raise InputError(f"{where}: {label} {exc}") from None
    if "clock_offset" in raw:
        value = raw["clock_offset"]
        # As --clock-offset takes it: a finite number of seconds within ten years (natproof.correlate's limit).
        if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                or abs(value) > _TEN_YEARS_S):
            raise InputError(f"{where}: {label} clock_offset: a number of seconds within ten years (the node's "
                             f"outside clock minus its inside clock), not {value!r}")
        kw["clock_offset_s"] = float(value)
    if "side" in raw:
        if raw["side"] not in ("auto", "inside", "outside"):
            raise InputError(f"{where}: {label} side: inside, outside or auto, not {raw['side']!r}")
        if "capture" not in kw:
            raise InputError(f"{where}: {label} side: only with capture (one file of one interface, and conntrack)")
        kw["side"] = raw["side"]
    if "capture" in kw and ("inside" in kw or "outside" in kw):
        raise InputError(f"{where}: {label}: give inside and outside, or capture (one file of several interfaces), "
                         "not both")
    if "capture" not in kw and "inside" not in kw:
        raise InputError(f"{where}: {label}: no capture: give inside and outside (the pod side and eth0), or capture "
                         "(one file of several interfaces)")
    if "inside" in kw and "outside" not in kw:
        raise InputError(f"{where}: {label}: inside without outside: give the node's eth0 capture as outside, or one "
                         "file as capture (with conntrack for a capture of one interface)")
    if "outside" in kw and "inside" not in kw:
        raise InputError(f"{where}: {label}: outside without inside: give the pod-side capture as inside")
    for key in ("interfaces", "inside_if", "outside_if"):
        if key in kw and "capture" not in kw:
            raise InputError(f"{where}: {label} {key}: only with capture (one file of several interfaces)")
    return NodeSpec(**kw)


def _gateway(where: str, base: Path, raw: Any) -> GatewaySpec:
    label = "[gateway]"
    if not isinstance(raw, dict):
        raise InputError(f"{where}: gateway: write it as a [gateway] table")
    unknown = sorted(set(raw) - set(GATEWAY_KEYS))
    if unknown:
        raise InputError(f"{where}: {label}: unknown key {unknown[0]!r} (the gateway takes "
                         f"{', '.join(GATEWAY_KEYS)})")
    if "flow_logs" not in raw:
        raise InputError(f"{where}: {label}: no flow_logs (the NAT gateway's VPC Flow Log files or folders)")
    logs = tuple(_file(where, base, label, "flow_logs", v, True, folder=True)
                 for v in _strings(where, label, "flow_logs", raw["flow_logs"]))
    gateways: tuple[str, ...] = ()
    if "nat_gateways" in raw:
        from natproof.flowlogs import parse_nat_gateway

        gateways = _strings(where, label, "nat_gateways", raw["nat_gateways"])
        for g in gateways:
            parse_nat_gateway(g, where=f"{where}: {label} nat_gateways: {g!r}")
    fmt = raw.get("flow_log_format")
    # The flow log's --log-format: AWS's option (aws ec2 create-flow-logs), as the manifest user gave it there.
    if fmt is not None and (not isinstance(fmt, str) or not fmt.strip()):
        raise InputError(f"{where}: {label} flow_log_format: the flow log's --log-format, not {fmt!r}")
    if fmt is not None:
        from natproof.flowlogs import parse_format

        parse_format(fmt, where=f"{where}: {label} flow_log_format")
    spec = GatewaySpec(flow_logs=logs, nat_gateways=gateways, flow_log_format=fmt)
    # The flow logs are read now, with the manifest: one that cannot be used is refused before any worker starts,
    # named by the manifest and its key (it was found after every node had run, named by the file alone).
    log = _read_gateway(where, spec)
    return GatewaySpec(flow_logs=logs, nat_gateways=gateways, flow_log_format=fmt, flow_log=log)


def _read_gateway(where: str, spec: GatewaySpec) -> FlowLog:
    """The [gateway]'s flow logs, read (InputError naming the manifest and the key), and a gateway to join them to:
    given, or found from pkt-dstaddr (none: InputError asking for nat_gateways)."""
    from natproof.flowlogs import read_flow_logs
    from natproof.flowlogs.ports import why_no_gateway

    try:
        log = read_flow_logs(list(spec.flow_logs), fields=spec.flow_log_format, fields_named="flow_log_format")
    except InputError as exc:
        raise exc.reworded(f"{where}: [gateway] flow_logs: ") from None
    if not _gateways(spec, log):
        raise InputError(f"{where}: [gateway] nat_gateways: none given, and {why_no_gateway(log)}: give nat_gateways "
                         "= [\"PRIVATE=PUBLIC\"] (aws ec2 describe-nat-gateways)")
    return log


PASSED_OVER_NAMED = 3
"""How many of the files a [gateway]'s folder held that are no flow log its warning names (the rest are counted)."""


def gateway_warnings(manifest_path: str, spec: GatewaySpec) -> list[str]:
    """What a fleet says of its ``[gateway]`` before any node runs: the files under its ``flow_logs`` folders that
    are no flow log and were passed over, in one line (their count, the first PASSED_OVER_NAMED of them; why for
    each is fleet.json's ``gateway.passed_over``); [] when every file was read (or the logs are not read yet)."""
    log = spec.flow_log
    if log is None or not log.passed_over_files:
        return []
    files = list(log.passed_over_files)
    named = ", ".join(files[:PASSED_OVER_NAMED]) + (f" and {len(files) - PASSED_OVER_NAMED} more"
                                                    if len(files) > PASSED_OVER_NAMED else "")
    plural = "s" if len(files) > 1 else ""
    return [f"{manifest_path}: [gateway] flow_logs: {len(files)} file{plural} that {'are' if plural else 'is'} no "
            f"flow log passed over: {named} (why, for each: fleet.json's gateway passed_over)"]


def _gateways(spec: GatewaySpec, log: FlowLog) -> list[NatGateway]:
    """The gateway's addresses: as the manifest gives them, else found from the flow log's pkt-dstaddr."""
    from natproof.flowlogs import infer_gateways, parse_nat_gateway

    return [parse_nat_gateway(g) for g in spec.nat_gateways] or infer_gateways(log)


# -- one node, on a worker -------------------------------------------------------------------------------------------


def correlate_node(node: NodeSpec, nodes_dir: str) -> dict[str, Any]:
    """One node's task: correlate its files, write ``nodes_dir/NAME.parquet`` (the flat connection columns of
    ``natproof correlate --format parquet``) and return a small summary (counts, findings). Never raises for bad
    input: a node that cannot be correlated returns its error, so the rest of the fleet goes on."""
    import natproof
    from natproof.names import load_names
    from natproof.report.export import flat_frame, write_bytes

    start = time.perf_counter()
    out: dict[str, Any] = {"name": node.name, "worker": _worker_address()}
    try:
        names = load_names(node.pods or None, node.services or None)
        common: dict[str, Any] = {"names": names, "conntrack": node.conntrack, "pod_cidr": list(node.pod_cidr) or None,
                                  "clock_offset_s": node.clock_offset_s}
        if node.capture is not None:
            result = natproof.correlate(node.capture, None, interfaces=node.interfaces,
                                        inside_if=list(node.inside_if) or None,
                                        outside_if=list(node.outside_if) or None, side=node.side, **common)
        else:
            result = natproof.correlate(node.inside, node.outside, **common)
        findings = natproof.diagnose(result)
        frame = flat_frame(result)
        Path(nodes_dir).mkdir(parents=True, exist_ok=True)
        target = Path(nodes_dir) / f"{node.name}.parquet"
        buf = _parquet_bytes(frame)
        write_bytes(target, buf)
    except NatproofError as exc:
        # A manifest's user set the node's keys, not correlate's keywords: said in the manifest's words.
        return out | {"status": "failed", "error": exc.for_manifest(), "seconds": round(time.perf_counter() - start, 3)}
    except Exception as exc:  # noqa: BLE001 - one node's bug must not end the fleet; reported as its error
        return out | {"status": "failed", "error": f"internal error: {type(exc).__name__}: {exc} (rerun this node "
                                                   "with natproof correlate --traceback and report it)",
                      "seconds": round(time.perf_counter() - start, 3)}
    verdicts = Counter(frame["verdict"].to_list())
    warnings = [f"{cap.path}: {w}" for cap in (result.inside, result.outside) for w in cap.warnings if cap.path]
    if result.conntrack is not None:
        warnings += [f"{result.conntrack.path}: {w}" for w in result.conntrack.warnings]
    return out | {
        "status": "ok", "error": None, "parquet": str(target), "connections": frame.height,
        "by_verdict": dict(sorted(verdicts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "findings": [f.to_dict() for f in findings],
        "clock_offset_s": result.clock_offset_s,
        "first_ts_ns": result.inside.first_ts_ns or None, "last_ts_ns": result.inside.last_ts_ns or None,
        "captures": {"inside": result.inside.path, "outside": result.outside.path},
        "named": result.names is not None, "warnings": list(dict.fromkeys(warnings)),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None  # not on a Dask worker (called directly)


def _read_file(path: str) -> bytes:
    """A worker's copy of a node's table, for a client that does not share the worker's filesystem."""
    return Path(path).read_bytes()


# -- the fleet -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetResult:
    """What ``run_fleet`` wrote, and each node's outcome (``nodes``: fleet.json's node entries, manifest order)."""

    out_dir: str
    nodes: tuple[dict[str, Any], ...]
    summary: dict[str, Any]
    table: str
    summary_path: str
    report: str
    scheduler: str
    failed: tuple[str, ...] = field(default=())
    """Names of the nodes whose task failed."""

    @property
    def ok(self) -> bool:
        return not self.failed


def _client(scheduler: str | None, workers: int) -> tuple[Any, Any]:
    """A distributed Client on ``scheduler``, or on a LocalCluster of ``workers`` processes (returned to close)."""
    try:
        import logging

        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("natproof fleet needs Dask distributed: pip install 'natproof[fleet]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(setting("scheduler", scheduler, quoted=False),
                             f": cannot reach a Dask scheduler there: {exc}") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _pinned(client: Any, node: NodeSpec) -> list[str] | None:
    """The worker address(es) a pinned node's task must run on (its ``worker`` matched against each worker's
    address, host and name); None when not pinned; InputError when no worker of the cluster is it."""
    if node.worker is None:
        return None
    from urllib.parse import urlparse

    info = client.scheduler_info(n_workers=-1)["workers"]
    want = node.worker.strip()
    hits = [addr for addr, w in info.items()
            if want in (addr, urlparse(addr).hostname, str(w.get("name")), w.get("host"))]
    if not hits:
        known = ", ".join(sorted(info)) or "none"
        raise InputError(f"worker {want!r}: no such worker in the cluster (workers: {known})")
    return hits


def run_fleet(manifest: Manifest | str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
              scheduler: str | None = None, workers: int = 2,
              progress: Callable[[dict[str, Any]], None] | None = None) -> FleetResult:
    """Correlate every node of ``manifest`` as a task on Dask distributed and write, in ``out_dir``,
    ``nodes/NAME.parquet`` per node, ``fleet.parquet`` (every node's connections, ``node`` first, and with a
    ``[gateway]`` the NAT gateway's public tuple per connection: ``gateway_*``), ``fleet.json`` (natproof.fleet/1)
    and ``fleet.html``.

    ``scheduler``: a running scheduler's address (tcp://HOST:PORT); its workers must read the nodes' paths (or be
    pinned with ``worker``) and write ``out_dir`` (a table the client cannot see is fetched from the worker).
    Without it, a LocalCluster of ``workers`` processes of one thread each. ``progress`` is called with each node's
    entry as it finishes. A node whose task fails (a bad capture) gets ``status: failed`` and its ``error``; the
    others go on. Raises InputError for a manifest or scheduler that cannot be used.

    Whole or not at all: every file is written in a folder of this run's in ``out_dir`` (``.natproof-fleet-RUN``)
    and moved into place once all are (_move_into_place). A run that does not finish (Ctrl-C: KeyboardInterrupt, a
    scheduler not reached, an error) removes that folder, and the folders it made for ``out_dir``, before its
    exception goes on: an earlier run's results there are left whole, and nothing of this one's is."""
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    from natproof.report.export import writable_folder, write_bytes

    # The folders are made before a cluster starts (one natproof cannot write costs no workers).
    made = _missing_folders(Path(out_dir))
    out = writable_folder(out_dir, "folder for the fleet's results")
    if (out / NODES_DIR).exists():  # an earlier run's (or something else in its place): said now, not at the end
        writable_folder(out / NODES_DIR, "folder for the fleet's results")
    staging = out / f".natproof-fleet-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    try:
        nodes_dir = writable_folder(staging / NODES_DIR, "folder for the fleet's results")
        client, cluster = _client(scheduler, workers)
        try:
            address = client.scheduler.address
            entries = _run_tasks(client, manifest, nodes_dir.resolve(), progress)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        gateway = _gateway_join(manifest.gateway, entries, manifest.path) if manifest.gateway else None
        _write_table(entries, gateway, staging / TABLE)
        for name, e in entries.items():  # where each node's table will be, once moved: what fleet.json names
            if e.get("parquet"):
                e["parquet"] = str(out.resolve() / NODES_DIR / f"{name}.parquet")
        summary = _summary(manifest, entries, address, scheduler is None, workers, gateway,
                           round(time.perf_counter() - started, 3), out)
        write_bytes(staging / SUMMARY, orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
        write_bytes(staging / REPORT, render_fleet_html(summary).encode("utf-8"))
        _move_into_place(staging, out, [name for name, e in entries.items() if e.get("parquet")])
    except BaseException:
        _remove_unfinished(staging, made)
        raise
    nodes = tuple(summary["nodes"])
    return FleetResult(out_dir=str(out), nodes=nodes, summary=summary, table=str(out / TABLE),
                       summary_path=str(out / SUMMARY), report=str(out / REPORT), scheduler=address,
                       failed=tuple(n["name"] for n in nodes if n["status"] != "ok"))


def _move_into_place(staging: Path, out: Path, tables: Sequence[str]) -> None:
    """A finished run's files, written under ``staging`` (a folder in ``out``: one file system, so each move is a
    rename), moved into ``out``; ``tables``: the nodes whose nodes/NAME.parquet there is. fleet.json, what marks a
    folder as a fleet's results (read_summary refuses one without it), is removed first and moved in last: between
    the two, nothing reads the folder as one run's results while it holds an earlier run's files and this one's.
    The nodes/ folder is the fleet's own: Parquet files an earlier run left there (other nodes, a node that failed
    now) would sit beside this run's as if they were its results, and are removed."""
    (out / SUMMARY).unlink(missing_ok=True)
    nodes = out / NODES_DIR
    nodes.mkdir(exist_ok=True)
    for stale in nodes.glob("*.parquet"):
        stale.unlink()
    for name in tables:
        os.replace(staging / NODES_DIR / f"{name}.parquet", nodes / f"{name}.parquet")
    for name in (TABLE, REPORT, SUMMARY):
        os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)  # (empty but for a temporary file a task left behind)


def _remove_unfinished(staging: Path, made: Sequence[Path]) -> None:
    """A run that did not finish: its folder of files under way, then the folders made for its output (deepest
    first; one something else has put a file in since stays), gone; begun again if Ctrl-C comes again meanwhile."""
    while True:
        try:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:
                    break
            return
        except KeyboardInterrupt:
            continue


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: the folders making it makes."""
    missing = []
    whole = Path(os.path.abspath(path))
    for folder in (whole, *whole.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _run_tasks(client: Any, manifest: Manifest, nodes_dir: Path,
               progress: Callable[[dict[str, Any]], None] | None) -> dict[str, dict[str, Any]]:
    from distributed import as_completed

    futures: dict[Any, NodeSpec] = {}
    entries: dict[str, dict[str, Any]] = {}
    run = uuid.uuid4().hex[:8]
    for node in manifest.nodes:
        try:
            pinned = _pinned(client, node)
        except InputError as exc:
            entries[node.name] = {"name": node.name, "status": "failed", "error": str(exc), "worker": None}
            if progress:
                progress(entries[node.name])
            continue
        fut = client.submit(correlate_node, node, str(nodes_dir), key=f"natproof-node-{node.name}-{run}",
                            workers=pinned, allow_other_workers=False, retries=0)
        futures[fut] = node
    for fut in as_completed(list(futures)):
        node = futures[fut]
        try:
            entry = fut.result()
        except Exception as exc:  # noqa: BLE001 - a worker that died (KilledWorker), a cancelled task
            entry = {"name": node.name, "status": "failed", "worker": None,
                     "error": f"the task did not finish: {type(exc).__name__}: {exc}"}
        if entry["status"] == "ok" and not Path(entry["parquet"]).is_file():
            # The worker wrote it on a filesystem this client does not share: fetch it from that worker.
            data = client.submit(_read_file, entry["parquet"], workers=[entry["worker"]], allow_other_workers=False,
                                 key=f"natproof-fetch-{node.name}-{run}").result()
            from natproof.report.export import write_bytes

            write_bytes(nodes_dir / f"{node.name}.parquet", data)
            entry["parquet"] = str(nodes_dir / f"{node.name}.parquet")
        entries[node.name] = entry
        if progress:
            progress(entry)
    return {node.name: entries[node.name] for node in manifest.nodes}  # the manifest's order, not completion's


def _gateway_join(spec: GatewaySpec, entries: Mapping[str, dict[str, Any]], manifest_path: str) -> dict[str, Any]:
    """Each node's connections that left it, joined to the NAT gateway's flow log: per (node, conn) the gateway's
    public tuple (``gateway_public``, ``gateway_sport`` when one candidate), ``gateway_evidence`` and every candidate
    (``gateway_candidates``: public:port)."""
    from natproof.flowlogs import join_nat_gateway, node_tuples

    log = spec.flow_log if spec.flow_log is not None else _read_gateway(manifest_path, spec)
    gateways = _gateways(spec, log)
    rows: list[dict[str, Any]] = []
    keys: list[tuple[str, int]] = []
    for name, e in entries.items():
        if e["status"] != "ok":
            continue
        off = int(round(e["clock_offset_s"] * 1e9))
        left = (pl.read_parquet(e["parquet"], columns=["conn", "proto", "initiator", "trans_src", "trans_sport",
                                                       "trans_dst", "trans_dport", "first_ts_ns", "last_ts_ns"])
                .filter((pl.col("initiator") == "inside") & pl.col("trans_src").is_not_null()))
        for r in left.iter_rows(named=True):
            rows.append({"proto": r["proto"], "src": r["trans_src"], "sport": r["trans_sport"], "dst": r["trans_dst"],
                         "dport": r["trans_dport"], "first_ts_ns": r["first_ts_ns"] + off,
                         "last_ts_ns": r["last_ts_ns"] + off, "source": f"{name} connection #{r['conn']}"})
            keys.append((name, r["conn"]))
    info = {"flow_logs": list(spec.flow_logs), "nat_gateways": [str(g) for g in gateways],
            "records": log.records.height, "joined": {}, "frame": None,
            "passed_over": list(log.passed_over),
            "warnings": gateway_warnings(manifest_path, replace(spec, flow_log=log))}
    if not rows or not gateways:
        return info
    joined = join_nat_gateway(node_tuples(rows), log, gateways)
    frame = pl.DataFrame({"node": [k[0] for k in keys], "conn": [k[1] for k in keys]},
                         schema={"node": pl.String, "conn": pl.UInt32}).with_columns(
        joined["evidence"].alias("gateway_evidence"),
        joined["gateway_public"].alias("gateway_public"),
        joined["gateway_sport"].alias("gateway_sport"),
        joined["gateway_tuples"].list.eval(_public_text(pl.element())).alias("gateway_candidates"),
    ).cast(GATEWAY_SCHEMA)
    info["frame"] = frame
    for (name, _), evidence in zip(keys, frame["gateway_evidence"].to_list(), strict=True):
        info["joined"].setdefault(name, Counter())[evidence] += 1
    return info


def _public_text(t: pl.Expr) -> pl.Expr:
    """A gateway candidate's public tuple as ADDR:PORT ([V6]:PORT), its private address when no public one is known."""
    addr = t.struct.field("gateway_public").fill_null(t.struct.field("gateway_private"))
    addr = pl.when(addr.str.contains(":")).then(pl.concat_str(pl.lit("["), addr, pl.lit("]"))).otherwise(addr)
    return pl.concat_str(addr, pl.lit(":"), t.struct.field("sport").cast(pl.String))


def _empty_frame() -> pl.DataFrame:
    from natproof.result import CONNECTION_SCHEMA, seconds_expr

    return pl.DataFrame(schema=CONNECTION_SCHEMA).with_columns(
        seconds_expr("first_ts_ns").alias("first_seen"), seconds_expr("last_ts_ns").alias("last_seen"))


def _write_table(entries: Mapping[str, dict[str, Any]], gateway: dict[str, Any] | None, target: Path) -> None:
    """fleet.parquet: every node's table (polars scans, concatenated by column name: a node without pod names has
    them null), ``node`` in front, the gateway's columns joined on (node, conn)."""
    scans = [pl.scan_parquet(e["parquet"]).with_columns(pl.lit(name).alias("node"))
             for name, e in entries.items() if e["status"] == "ok"]
    lf = pl.concat(scans, how="diagonal_relaxed") if scans else _empty_frame().lazy().with_columns(
        pl.lit(None, pl.String).alias("node"))
    if gateway is not None:
        g = gateway["frame"]
        if g is None:
            g = pl.DataFrame(schema={"node": pl.String(), "conn": pl.UInt32(), **GATEWAY_SCHEMA})
        lf = lf.join(g.lazy(), on=["node", "conn"], how="left", maintain_order="left")
    lf = lf.select("node", pl.exclude("node"))
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        lf.sink_parquet(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _summary(manifest: Manifest, entries: Mapping[str, dict[str, Any]], address: str, local: bool, workers: int,
             gateway: dict[str, Any] | None, seconds: float, out: Path) -> dict[str, Any]:
    nodes = []
    verdicts: Counter[str] = Counter()
    severities: Counter[str] = Counter()
    for spec in manifest.nodes:
        e = dict(entries[spec.name])
        if e.get("parquet"):
            e["parquet"] = os.path.relpath(e["parquet"], out.resolve()) if os.path.isabs(e["parquet"]) else e["parquet"]
        for key in ("first_ts_ns", "last_ts_ns"):
            ns = e.pop(key, None)
            e[key.replace("_ns", "")] = None if ns is None else epoch_seconds(ns)
        e.setdefault("connections", 0)
        e.setdefault("by_verdict", {})
        e.setdefault("findings", [])
        for key in ("parquet", "captures", "clock_offset_s", "warnings", "named", "error"):
            e.setdefault(key, None)  # every node entry has every key: a failed node's are null
        e["files"] = spec.files()
        e["pods"], e["services"] = list(spec.pods), list(spec.services)  # fleet-who checks a name against them
        verdicts.update(e["by_verdict"])
        severities.update(f["severity"] for f in e["findings"])
        nodes.append(e)
    failed = [n["name"] for n in nodes if n["status"] != "ok"]
    gw = None
    if gateway is not None:
        gw = {k: v for k, v in gateway.items() if k != "frame"}
        gw["joined"] = {name: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
                        for name, c in gw["joined"].items()}
    return {
        "schema": SCHEMA, "manifest": manifest.path,
        "scheduler": {"address": address, "local_cluster": local, "workers": workers if local else None},
        "seconds": seconds,
        "nodes": nodes,
        "gateway": gw,
        "totals": {"nodes": len(nodes), "ok": len(nodes) - len(failed), "failed": len(failed),
                   "failed_nodes": failed,
                   "connections": sum(n["connections"] for n in nodes),
                   "by_verdict": dict(sorted(verdicts.items(), key=lambda kv: (-kv[1], kv[0]))),
                   "findings": {s: severities[s] for s in ("error", "warning", "info") if severities[s]}},
        "table": TABLE, "report": REPORT,
    }


# -- the report ------------------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#1b1f24}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f6f8fa}td.n{text-align:right}.mono{font-family:ui-monospace,monospace}
.failed{background:#ffebe9}.error{color:#b42318;font-weight:600}.warning{color:#9a6700;font-weight:600}
.info{color:#57606a}.fix{color:#57606a}ul{margin:.2em 0}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _verdict_text(by_verdict: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in by_verdict.items()) or "-"


def _worst(findings: Sequence[Mapping[str, Any]]) -> str | None:
    for sev in ("error", "warning", "info"):
        if any(f["severity"] == sev for f in findings):
            return sev
    return None


def gateway_addresses(gw: Mapping[str, Any]) -> str:
    """The gateway's addresses as the fleet used them: ``10.0.1.1=203.0.113.20``, or ``10.0.1.1 (public not
    given)`` for a private address alone (a private NAT gateway; its candidates are then that address's ports)."""
    return ", ".join(a if "=" in a else f"{a} (public not given)" for a in gw["nat_gateways"])


def gateway_text(gw: Mapping[str, Any]) -> str:
    """Per node, how its connections that left it joined to the NAT gateway's flow log; the nodes none of whose
    connections the flow log holds, together."""
    parts, none = [], []
    for name, counts in gw["joined"].items():
        if set(counts) == {"no candidate"}:
            none.append(name)
        else:
            parts.append(f"{name}: {_verdict_text(counts)}")
    if none:
        parts.append(f"{', '.join(none)}: no connection in its flow log")
    return "; ".join(parts) or "no connection left a node"


def render_fleet_html(summary: Mapping[str, Any]) -> str:
    """fleet.html: the fleet's totals, a row per node (linking its Parquet file), each node's findings. One page,
    no script, nothing loaded from elsewhere."""
    t = summary["totals"]
    rows = []
    for n in summary["nodes"]:
        link = f'<a class="mono" href="{_e(n["parquet"])}">{_e(n["parquet"])}</a>' if n.get("parquet") else "-"
        worst = _worst(n["findings"])
        status = "ok" if n["status"] == "ok" else f'<span class="error">failed</span>: {_e(n["error"])}'
        rows.append(
            f'<tr class="{"" if n["status"] == "ok" else "failed"}"><td><a href="#node-{_e(n["name"])}">'
            f'{_e(n["name"])}</a></td><td>{status}</td><td class="n">{n["connections"]}</td>'
            f'<td>{_e(_verdict_text(n["by_verdict"]))}</td>'
            f'<td>{len(n["findings"])}{f" (worst <span class={worst}>{worst}</span>)" if worst else ""}</td>'
            f'<td>{link}</td><td class="mono">{_e(n.get("worker") or "-")}</td></tr>')
    sections = []
    for n in summary["nodes"]:
        body = []
        if n["status"] != "ok":
            body.append(f'<p class="error">{_e(n["error"])}</p>')
        for f in n["findings"]:
            ev = "".join(f"<li class='mono'>{_e(x)}</li>" for x in f["evidence"][:10])
            more = f"<li>… {len(f['evidence']) - 10} more</li>" if len(f["evidence"]) > 10 else ""
            body.append(f'<p><span class="{_e(f["severity"])}">[{_e(f["severity"])}]</span> <strong>'
                        f'{_e(f["title"])}</strong><br>{_e(f["summary"])}<br><span class="fix">fix: {_e(f["fix"])}'
                        f'</span></p>' + (f"<ul>{ev}{more}</ul>" if ev else ""))
        files = ", ".join(f'<span class="mono">{_e(p)}</span>' for p in n.get("files", []))
        sections.append(f'<h2 id="node-{_e(n["name"])}">{_e(n["name"])}</h2><p>{files}</p>' + "".join(body))
    gw = summary.get("gateway")
    gw_html = ""
    if gw:
        gw_html = (f"<h2>NAT gateway</h2><p>{_e(gateway_addresses(gw))}: "
                   f"{gw['records']} flow log records from {_e(', '.join(gw['flow_logs']))}. "
                   f"{_e(gateway_text(gw))}</p>")
        gw_html += "".join(f'<p><span class="warning">[warning]</span> {_e(w)}</p>' for w in gw.get("warnings") or ())
    findings = ", ".join(f"{n} {s}" for s, n in t["findings"].items()) or "none"
    plural = "" if t["nodes"] == 1 else "s"
    return "".join([
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>NAT proof: fleet of {t['nodes']} node{plural}</title><style>{_CSS}</style></head><body>",
        f"<h1>NAT proof: fleet of {t['nodes']} node{plural}</h1>",
        f"<p>manifest <span class='mono'>{_e(summary['manifest'])}</span>; {t['ok']} correlated, "
        f"<span class='{'error' if t['failed'] else ''}'>{t['failed']} failed</span>; "
        f"<strong>{t['connections']} connections</strong>: {_e(_verdict_text(t['by_verdict']))}; findings: "
        f"{_e(findings)}. Every connection: <a class='mono' href='{_e(summary['table'])}'>{_e(summary['table'])}</a>"
        f" (one row per connection, a node column in front).</p>",
        "<table><thead><tr><th>node</th><th>status</th><th>connections</th><th>verdicts</th><th>findings</th>"
        "<th>connections (Parquet)</th><th>worker</th></tr></thead><tbody>", *rows, "</tbody></table>",
        gw_html, *sections,
        f"<footer><p class='info'>{SCHEMA}; scheduler {_e(summary['scheduler']['address'])}; "
        f"{summary['seconds']} s</p></footer></body></html>\n",
    ])


# -- who, fleet-wide -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetAnswer:
    """The connections of a fleet in which ADDR:PORT (or a pod's or Service's name) took part: each match is a
    natproof.correlate/2 connection object plus ``node``, ``conn``, ``roles``, ``ends`` and ``gateway`` (the NAT
    gateway's public tuple and evidence, or null)."""

    query: str
    at_ns: int | None
    window_s: float
    clock: str
    matches: tuple[dict[str, Any], ...]
    nearest: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    """What the answer could not do: a NAME no connection had that could not be checked against the nodes' kubectl
    dumps (a fleet.json that records none, written by an older natproof; dumps that cannot be read now)."""

    def to_dict(self) -> dict[str, Any]:
        return {"schema": WHO_SCHEMA, "query": self.query,
                "at": None if self.at_ns is None else epoch_seconds(self.at_ns),
                "window_s": self.window_s, "clock": self.clock, "matches": list(self.matches),
                "nearest": list(self.nearest), "warnings": list(self.warnings)}


GATEWAY_ROLE = "NAT gateway public source"


def read_summary(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """fleet.json of a folder ``run_fleet`` wrote; InputError when it is not one."""
    path = Path(out_dir) / SUMMARY
    if not Path(out_dir).is_dir():
        raise InputError(f"{out_dir}: no such folder (natproof fleet MANIFEST -o {out_dir} writes it)")
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{out_dir}: no {SUMMARY}: not a folder natproof fleet wrote") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not (Path(out_dir) / TABLE).is_file():
        raise InputError(f"{path}: not a {SCHEMA} summary with its {TABLE}: rerun natproof fleet")
    problem = _nodes_problem(doc.get("nodes"))
    if problem is not None:
        raise InputError(f"{path}: not the summary natproof fleet writes ({problem}): rerun natproof fleet")
    return doc


_NODE_FIELDS: dict[str, tuple[type, ...]] = {
    # What fleet_who reads of a node's entry (_summary writes every one; a missing one reads as null).
    "clock_offset_s": (int, float), "first_ts": (int, float), "last_ts": (int, float), "pods": (list,),
    "services": (list,),
}


def _nodes_problem(nodes: Any) -> str | None:
    """What is wrong with fleet.json's ``nodes`` as fleet_who reads it, or None."""
    if nodes is None:
        return "no 'nodes'"
    if not isinstance(nodes, list):
        return f"'nodes' is {type(nodes).__name__}, not a list"
    if not nodes:
        return "'nodes' is empty: a fleet has one node or more"
    for i, n in enumerate(nodes):
        if not isinstance(n, dict):
            return f"nodes[{i}] is {type(n).__name__}, not an object"
        if not isinstance(n.get("name"), str) or not n["name"]:
            return f"nodes[{i}] has no name"
        for key, types in _NODE_FIELDS.items():
            value = n.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
                return f"nodes[{i}] ({n['name']}): {key!r} is {type(value).__name__}"
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                return f"nodes[{i}] ({n['name']}): {key!r} is not a list of paths"
    return None


def _scan_table(out_dir: str | os.PathLike[str]) -> pl.LazyFrame:
    """fleet.parquet of a folder ``run_fleet`` wrote, to scan; InputError, naming the file, for one that is no
    Parquet file (truncated, damaged) or not the fleet's table (a node's table copied over it, another file)."""
    from natproof.result import CONNECTION_SCHEMA, NAME_SCHEMA

    path = Path(out_dir) / TABLE
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: not a Parquet file ({_first_line(exc)}): rerun natproof fleet") from None
    want = {"node": pl.String(), **CONNECTION_SCHEMA}
    # Names (kubectl dumps) and the NAT gateway's join are all of their columns or none: fleet_who reads each.
    for group in (NAME_SCHEMA, GATEWAY_SCHEMA):
        if any(col in schema for col in group):
            want |= group
    for col, dtype in want.items():
        if schema.get(col) != dtype:
            problem = f"no column {col!r}" if col not in schema else f"column {col!r} is {schema[col]}, not {dtype}"
            raise InputError(f"{path}: not the table natproof fleet writes ({problem}): rerun natproof fleet")
    return pl.scan_parquet(path)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_name(query: str, nodes: Sequence[Mapping[str, Any]], summary: Path) -> str | None:
    """As ``who`` refuses a name its dumps do not hold: InputError, with the close names, when no pod or Service of
    the nodes' kubectl dumps (the manifest's ``pods`` and ``services``, as fleet.json lists them) is ``query``.
    Said nothing when no node had dumps (the table's names are all there is). What could not be checked is
    returned, to be said beside "no connection" (exit 1, not 2: the name may be a pod's all the same): a fleet.json
    ``summary`` with a node entry that has neither ``pods`` nor ``services`` (written by a natproof before it
    recorded them: that node's dumps, if any, are unknown), and dumps that cannot be read now (moved since the
    run)."""
    from natproof.names import load_names

    unchecked = f"whether any pod or Service is named {query!r} cannot be checked"
    if any("pods" not in n and "services" not in n for n in nodes):
        return (f"{summary}: records no node's kubectl dumps (written by an older natproof): {unchecked}; rerun "
                "natproof fleet to have names checked")
    pods = [p for n in nodes for p in n.get("pods") or ()]
    services = [p for n in nodes for p in n.get("services") or ()]
    if not pods and not services:
        return None
    try:
        names = load_names(pods or None, services or None)
    except NatproofError as exc:
        return f"the nodes' kubectl dumps cannot be read now ({exc}): {unchecked}"
    if names is not None:
        names.check_name(query)
    return None


def fleet_who(out_dir: str | os.PathLike[str], endpoint: str, at: str | None = None, window_s: float = 1.0, *,
              clock: str = "inside", node: str | None = None) -> FleetAnswer:
    """Which node's connections ADDR:PORT took part in, from the table ``run_fleet`` wrote: as any end of a
    connection's original or translated tuple (a node's public source port, a pod's source, a NodePort, a
    ClusterIP), as the NAT gateway's public tuple a connection left through (a ``[gateway]``'s flow logs), or by a
    pod's or Service's name where the node had kubectl dumps. ``at`` is on each node's ``clock`` ("inside" or
    "outside" capture; HH:MM:SS on the day of the node's capture); a connection counts when live within
    ``window_s`` of it, else the nearest before and after are given. ``node`` keeps one node's.

    A NAME no node's dump holds is an InputError with the close names (as ``who``'s); one no connection had whose
    dumps cannot be checked (a fleet.json of an older natproof records none; moved since the run) is an answer
    without matches whose ``warnings`` say so. InputError for a folder, fleet.json or fleet.parquet that is not
    the fleet's, and a ``node`` or ``clock`` it does not have."""
    from natproof.lookup import NAMES_FROM, check_query, ends_of, name_roles, parse_endpoint, parse_time, roles_of
    from natproof.report.table import format_address
    from natproof.result import CONNECTION_SCHEMA, NAME_SCHEMA, connection_dict

    if clock not in ("inside", "outside"):
        raise InputError(setting("clock", clock, quoted=False), ": inside or outside")
    summary = read_summary(out_dir)
    nodes = {n["name"]: n for n in summary["nodes"]}
    if node is not None and node not in nodes:
        raise InputError(setting("node", node, quoted=False), f": no such node in {out_dir} (nodes: "
                         f"{', '.join(nodes)})")
    lf = _scan_table(out_dir)
    cols = lf.collect_schema().names()
    named = "pod" in cols
    # A library caller names a fleet's pods by its manifest's keys; the command line's words are who's, as ever.
    by_name = check_query(endpoint, named, names_from=Said("a node's pods and services in the fleet's manifest "
                                                           "(kubectl JSON dumps)", NAMES_FROM.command_line))
    if by_name:
        cond = pl.lit(False)
        bare = "/" not in endpoint
        for c in ("pod", "peer_pod", "service_name", "backend_pod"):
            same = (pl.col(c) == endpoint) | (pl.col(c).str.ends_with(f"/{endpoint}") if bare else pl.lit(False))
            el = (pl.element() == endpoint) | (pl.element().str.ends_with(f"/{endpoint}") if bare else pl.lit(False))
            cond = cond | same.fill_null(False)
            if f"{c}_candidates" in cols:
                cond = cond | pl.col(f"{c}_candidates").list.eval(el).list.any().fill_null(False)
        addr, port = "", 0
        query = endpoint
    else:
        addr, port = parse_endpoint(endpoint)
        query = format_address(addr, port)
        cond = pl.lit(False)
        for tup in ("orig", "trans"):
            for end, p in (("src", "sport"), ("dst", "dport")):
                cond = cond | ((pl.col(f"{tup}_{end}") == addr) & (pl.col(f"{tup}_{p}") == port)).fill_null(False)
        if "legs" in cols:  # a leg under another tuple (a flow mapped anew after idling): lookup.roles_of names it
            leg = pl.element().struct.field
            on_leg = ((leg("src") == addr) & (leg("sport") == port)) | ((leg("dst") == addr) & (leg("dport") == port))
            cond = cond | pl.col("legs").list.eval(on_leg).list.any().fill_null(False)
        if "gateway_candidates" in cols:
            cond = cond | pl.col("gateway_candidates").list.contains(f"{query}").fill_null(False)
    if node is not None:
        cond = cond & (pl.col("node") == node)
    try:
        frame = lf.filter(cond).collect()
    except (pl.exceptions.ComputeError, OSError) as exc:  # its footer whole, a page of its rows not
        raise InputError(f"{Path(out_dir) / TABLE}: damaged ({_first_line(exc)}): rerun natproof fleet") from None
    strangers = sorted(set(frame["node"].drop_nulls().to_list()) - set(nodes))
    if strangers:
        raise InputError(f"{Path(out_dir) / TABLE}: connections of node {strangers[0]!r}, which "
                         f"{Path(out_dir) / SUMMARY} does not list (nodes: {', '.join(nodes)}): not one run's files: "
                         "rerun natproof fleet")
    rows = frame.sort("node", "conn").iter_rows(named=True)
    schema = CONNECTION_SCHEMA | (NAME_SCHEMA if named else {})
    found = []
    for row in rows:
        roles = name_roles(row, endpoint) if by_name else roles_of(row, addr, port)
        gw = None
        if row.get("gateway_evidence") is not None:
            gw = {"evidence": row["gateway_evidence"], "public": row["gateway_public"],
                  "sport": row["gateway_sport"], "candidates": row["gateway_candidates"] or []}
            if not by_name and query in gw["candidates"]:
                unique = gw["sport"] is not None
                roles.append(GATEWAY_ROLE + ("" if unique else " (ambiguous)"))
        if not roles:
            continue
        conn = {c: row.get(c) for c in schema}
        found.append({"node": row["node"], "conn": row["conn"]} | connection_dict(conn)
                     | {"roles": roles, "ends": ends_of(conn), "gateway": gw,
                        "_first": row["first_ts_ns"], "_last": row["last_ts_ns"]})
    warnings: list[str] = []
    if by_name and not found:
        unchecked = _check_name(endpoint, [n for n in summary["nodes"] if node is None or n["name"] == node],
                                Path(out_dir) / SUMMARY)
        warnings += [unchecked] if unchecked else []
    at_ns = None
    nearest: list[dict[str, Any]] = []
    if at is not None:
        # TIME is read on each node's clock (a time of day on the day its capture began): one query, one instant
        # per node. The instant shown is the first node's (of --node's).
        def instant(name: str) -> tuple[int, int]:
            n = nodes.get(name, {})
            off = int(round((n.get("clock_offset_s") or 0.0) * 1e9)) if clock == "outside" else 0
            first = n.get("first_ts")
            return parse_time(at, None if first is None else int(first * 1e9) + off) - off, off

        shown = node or (found[0]["node"] if found else None) or next(
            (n["name"] for n in summary["nodes"] if n.get("first_ts")), None)
        at_ns = parse_time(at) if shown is None else sum(instant(shown))
        w = int(window_s * 1e9)
        live, before, after = [], [], []
        for m in found:
            t = instant(m["node"])[0]
            if m["_first"] - w <= t <= m["_last"] + w:
                live.append(m)
            elif m["_last"] < t:
                before.append((t - m["_last"], m))
            else:
                after.append((m["_first"] - t, m))
        if not live:
            nearest = [min(side, key=lambda x: x[0])[1] for side in (before, after) if side]
        found = live
    strip = [{k: v for k, v in m.items() if not k.startswith("_")} for m in found]
    near = [{k: v for k, v in m.items() if not k.startswith("_")} for m in nearest]
    return FleetAnswer(query=query, at_ns=at_ns, window_s=window_s, clock=clock, matches=tuple(strip),
                       nearest=tuple(near), warnings=tuple(warnings))


__all__ = ["GATEWAY_KEYS", "NODE_KEYS", "FleetAnswer", "FleetResult", "GatewaySpec", "Manifest", "NodeSpec",
           "correlate_node", "fleet_who", "gateway_warnings", "load_manifest", "read_summary", "render_fleet_html",
           "run_fleet"]
