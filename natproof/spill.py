"""Correlate captures larger than memory: each side's packets spilled to Parquet, correlated a group of flows at a
time.

Matching pairs packets only on equal keys (natproof.match: the strong key, the loose key, the payload key; the
byte-range and IP-id passes only within legs an exact pair already linked), and a connection is a set of whole
flows. So the flows of both captures fall into components that never pair with each other: flows are joined
when they share a packet key, and flows that share none with the other side (a drop, a capture started
mid-transfer, a sequence-randomising middlebox) when they share an end (address, port), as the fallback passes
need. A group of whole components is correlated as the two captures would be, with what depends on the whole
captures settled first over all groups: the clock offset (the medians over every group's unique keys), the pod
networks, the addresses that send, each packet's duplicate (in capture order, as it is read).

Steps, each holding one batch or one group at a time:

1. read each capture, batch by batch (natproof.fastdecode's sink): drop what no NAT sees and the duplicates,
   write the packets' features to Parquet with their flow (natproof.connections.flow_hash), each flow's packet
   keys to one of several key parts, and keep a row per flow;
2. link flows part by part (a hub per key: linear in packets, never a product of look-alikes), then label the
   components (label propagation with pointer jumping) and cut them into groups of about the budget's packets;
3. write each side's packets again by group;
4. group each group's packets into legs (natproof.correlate.group_point) and take its clock-offset samples;
5. with the offset and networks of the whole captures, key, match and assemble each group and write its packet
   frames to Parquet; the Result reads them lazily (``pl.scan_parquet``), its connections are in memory.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from natproof.assemble import Services, assemble, match_evidence, turned_sources
from natproof.assemble import node_addresses as assembled_node_addresses
from natproof.capture import CaptureInfo
from natproof.connections import IdleTimeouts, drop_duplicates, flow_hash, split_never_forwarded
from natproof.decode import DEFAULT_OVERLAY, Overlay
from natproof.errors import InputError, setting, shown_path
from natproof.match import match_sides, offset_and_way, offset_samples, with_keys
from natproof.memory import (  # noqa: F401 (named here before natproof.memory)
    check_spill_dir,
    default_memory_limit,
    parse_size,
    spill_dir_error,
    trim,
)
from natproof.networks import PRIVATE_SPACE, PodNetworks, dnat_networks, infer_pod_networks, parse_networks
from natproof.packets import load_packets
from natproof.points import Interface, ObservationPoint, choose_point, several_interfaces
from natproof.result import CaptureSummary, Result

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BYTES_PER_PACKET = 300
"""Peak memory of an in-memory correlation per packet of both captures, measured by ``make bench`` (2 x 5M
packets: 160 B on the synthetic pair, 290 B on the real-traffic one; rounded up)."""

BASE_BYTES = 256 << 20
"""What a correlation holds besides its packets (the interpreter, polars, the connections): taken off the limit
before groups are sized."""

DISK_BYTES_PER_PACKET = 60
"""What the spill folder holds at most per packet of both captures (each packet's features and keys, lz4
Parquet: about 50 bytes measured on the 1M synthetic pair), for the message when the disk is full."""

MIN_GROUP_PACKETS = 1_000
"""The smallest group: a tiny limit (a test's) still makes groups of some size."""

KEY_PART_PACKETS = 2_000_000
"""At most about this many packets' keys (both captures) per key part when flows are linked; fewer when the
budget is smaller (a key row costs about what a packet does in a group: 190 B measured on 1M keys)."""

_OUTSIDE = 0x5A5A_5A5A_5A5A_5A5A
"""Outside flows' node ids in the component graph are their flow hash XOR this: a flow seen on both sides under
one tuple (unchanged) is two nodes, linked by its packets' keys like any other."""


def estimated_bytes(paths: Sequence[str | os.PathLike[str]]) -> int:
    """An in-memory correlation's peak memory for these captures, estimated before reading them: packets
    (natproof.capture.estimated_records: file size over the mean record size of the first ones read; a gzip file
    counted at three times its size) times BYTES_PER_PACKET, plus BASE_BYTES. Standard input and unreadable
    files count as nothing."""
    from natproof.capture import estimated_records

    return sum((estimated_records(p) or 0) * BYTES_PER_PACKET for p in paths) + BASE_BYTES


class SpillDir:
    """The directory a spilled correlation's Parquet files live in, removed when the last Result holding it is
    gone (or at exit)."""

    def __init__(self, parent: str | os.PathLike[str] | None = None) -> None:
        if parent is not None:
            check_spill_dir(parent)  # "" is no folder, not the current one
        try:
            self.path = Path(tempfile.mkdtemp(prefix="natproof-spill-", dir=parent))
        except OSError as exc:
            problem = f"cannot make a folder in it ({exc.strerror or exc})"
            if parent is not None:
                raise spill_dir_error(os.fspath(parent), problem) from None
            raise InputError(f"{tempfile.gettempdir()} (TMPDIR): {problem}; give ", setting("spill_dir"),
                             " a writable folder") from None
        self._finalizer = weakref.finalize(self, _remove, self.path)

    def cleanup(self) -> None:
        self._finalizer()

    def __reduce__(self) -> tuple:
        # A copy in another process would outlive the folder: the folder goes with this process's last Result (a
        # process pool's child returning one removed it on its way out, and the caller got a Result whose packets
        # failed to load). Said at once instead.
        raise TypeError(f"a Result correlated past memory cannot be pickled: its packets are the Parquet files in "
                        f"{self.path}, removed with the Result in the process that made it; pass on what you need "
                        "(result.to_json(), result.connections) or correlate in memory")


def _remove(path: Path) -> None:
    """A spill folder removed to its end through a second Ctrl-C (GNU timeout signals the command and then its
    group: twice; a trial once found a folder left after an interrupted run). The interrupt is not raised again:
    this runs as a finalizer (the Result gone, or at exit), where an exception is only printed as ignored."""
    while True:
        try:
            shutil.rmtree(path, ignore_errors=True)
            return
        except KeyboardInterrupt:
            continue


class _SideWriter:
    """Step 1 for one capture: takes its decoded batches (packet_features' columns) in capture order."""

    def __init__(self, root: Path, role: str, key_parts: int) -> None:
        self.root, self.role, self.key_parts = root, role, key_parts
        self.salt = _OUTSIDE if role == "outside" else 0
        self.batches = 0
        self.per_interface: dict[tuple[int, int], int] = {}
        """IP packets per (iface, ifindex), as natproof.points.interfaces_of counts them."""
        self.flows: list[pl.DataFrame] = []
        self.senders: set[str] = set()
        self.skipped: dict[str, int] = {}
        self.tail: pl.DataFrame | None = None
        self.packets = 0
        self.schema: dict[str, pl.DataType] | None = None
        """The packets' columns as written (less fid)."""

    def __call__(self, df: pl.DataFrame) -> None:
        for a, b, n in df.group_by("iface", "ifindex").len().iter_rows():
            self.per_interface[(int(a), int(b))] = self.per_interface.get((int(a), int(b)), 0) + n
        df = df.drop("iface", "ifindex")
        df, never = split_never_forwarded(df, directed=False)
        for k, v in never.items():
            self.skipped[k] = self.skipped.get(k, 0) + v
        if df.is_empty():
            return
        # Duplicates against the packet just before in the whole capture: the batch before's last one too.
        both = df if self.tail is None else pl.concat([self.tail, df], how="vertical_relaxed")
        kept, dups = drop_duplicates(both)
        if self.tail is not None:
            kept = kept.slice(1)
        if dups:
            self.skipped["duplicate"] = self.skipped.get("duplicate", 0) + dups
        self.tail = df.tail(1)
        self.schema = self.schema or dict(kept.schema)
        df = kept.with_columns((flow_hash() ^ self.salt).alias("fid"))
        self.packets += df.height
        self.batches += 1
        _write(df, self.root / self.role / f"b{self.batches:06d}.parquet")
        self.senders.update(df["f_src"].drop_nulls().unique().cast(pl.String).to_list())
        keys = df.select(pl.struct("f_proto", "sig").hash(seed=0x6E61).alias("k"), "fid").unique()
        if self.key_parts == 1:
            pieces = {0: keys}
        else:
            split = keys.with_columns((pl.col("k") % self.key_parts).cast(pl.UInt32).alias("_p"))
            pieces = {int(p[0]): piece for p, piece in split.partition_by("_p", as_dict=True,  # type: ignore[index]
                                                                             include_key=False).items()}
        for p, piece in pieces.items():
            _write(piece, self.root / f"{self.role}-keys-{p}" / f"b{self.batches:06d}.parquet")
        self.flows.append(df.group_by("fid").agg(
            pl.col("f_proto").first(), pl.col("f_src").first().cast(pl.String), pl.col("f_sport").first(),
            pl.col("f_dst").first().cast(pl.String), pl.col("f_dport").first(), pl.len().alias("n")))
        if len(self.flows) >= 16:
            self.flows = [self._flow_table()]

    def _flow_table(self) -> pl.DataFrame:
        return pl.concat(self.flows).group_by("fid").agg(
            pl.col("f_proto", "f_src", "f_sport", "f_dst", "f_dport").first(), pl.col("n").sum())

    def close(self) -> pl.DataFrame:
        """The flow table: fid, the flow's protocol and ends, its packets."""
        flows = self._flow_table() if self.flows else pl.DataFrame(schema={
            "fid": pl.UInt64, "f_proto": pl.UInt8, "f_src": pl.String, "f_sport": pl.UInt16, "f_dst": pl.String,
            "f_dport": pl.UInt16, "n": pl.UInt32})
        self.flows = []
        return flows


def _write(df: pl.DataFrame, path: Path) -> None:
    """One batch's file in a folder of them (polars writes no appendable Parquet file; a folder of files reads as
    one with a glob)."""
    path.parent.mkdir(exist_ok=True)
    df.write_parquet(path, compression="lz4", statistics=False)


def _read(folder: Path) -> pl.DataFrame | None:
    """A folder of batch files as one frame, in batch order; None when no batch was written."""
    return pl.read_parquet(folder / "*.parquet") if folder.is_dir() else None


def _link(root: Path, key_parts: int, flows_in: pl.DataFrame, flows_out: pl.DataFrame) -> pl.DataFrame:
    """Edges (a, b) between flow nodes that may hold the same packet: a hub per key (its least inside flow), to
    which every flow holding the key is joined, for keys on both sides and for keys in two inside flows (a
    hairpinned packet's two copies); and, for flows with no key on the other side at all, a hub per end."""
    # Distinct (flow, hub) rows only, folded in part by part: a flow's packets spread over every part, and one
    # row per key would hold a row per packet.
    edges = pl.DataFrame(schema={"a": pl.UInt64, "hub": pl.UInt64})
    linked = pl.DataFrame(schema={"fid": pl.UInt64})
    for p in range(key_parts):
        ki = _read(root / f"inside-keys-{p}")
        ko = _read(root / f"outside-keys-{p}")
        if ki is None:
            continue
        hub = ki.group_by("k").agg(pl.col("fid").min().alias("hub"), pl.col("fid").n_unique().alias("n_in"))
        found = []
        if ko is not None:
            on_out = ko.select("k").unique().with_columns(pl.lit(True).alias("out"))
            hub = hub.join(on_out, on="k", how="left").with_columns(pl.col("out").fill_null(False))
            both = hub.filter("out").select("k", "hub")
            e_out = ko.join(both, on="k").select(pl.col("fid").alias("a"), "hub").unique()
            found.append(e_out)
            linked = pl.concat([linked, e_out.select(pl.col("a").alias("fid")),
                                ki.join(both, on="k", how="semi").select("fid")]).unique()
        else:
            hub = hub.with_columns(pl.lit(False).alias("out"))
        keep = hub.filter(pl.col("out") | (pl.col("n_in") > 1)).select("k", "hub")
        found.append(ki.join(keep, on="k").select(pl.col("fid").alias("a"), "hub").unique())
        edges = pl.concat([edges, *found]).unique()
        del ki, ko, hub, found
    # Flows with no key on the other side: joined by their ends (the far end pure SNAT keeps, for the byte-range
    # and payload passes' fallback).
    def ends(flows: pl.DataFrame) -> pl.DataFrame:
        lone = flows.join(linked, on="fid", how="anti")
        return pl.concat([
            lone.select("fid", pl.struct("f_proto", pl.col("f_src").alias("a"), pl.col("f_sport").alias("p"))
                        .hash(seed=0x656E).alias("end")),
            lone.select("fid", pl.struct("f_proto", pl.col("f_dst").alias("a"), pl.col("f_dport").alias("p"))
                        .hash(seed=0x656E).alias("end"))])
    ei, eo = ends(flows_in), ends(flows_out)
    shared = ei.select("end").unique().join(eo.select("end").unique(), on="end")
    hubs = pl.concat([ei, eo]).join(shared, on="end").group_by("end").agg(pl.col("fid").min().alias("hub"))
    edges = pl.concat([edges, pl.concat([ei, eo]).join(hubs, on="end").select(pl.col("fid").alias("a"), "hub")])
    return edges.rename({"hub": "b"}).filter(pl.col("a") != pl.col("b")).unique()


def _components(nodes: pl.Series, edges: pl.DataFrame) -> pl.DataFrame:
    """(node, label): the least node of each node's connected component. Label propagation over both directions
    of every edge, with pointer jumping (a label takes its own label's label), until nothing changes."""
    labels = pl.DataFrame({"node": nodes.unique()}).with_columns(pl.col("node").alias("label"))
    if edges.is_empty():
        return labels
    both = pl.concat([edges, edges.select(pl.col("b").alias("a"), pl.col("a").alias("b"))])
    while True:
        m = both.join(labels, left_on="b", right_on="node").group_by("a").agg(pl.col("label").min().alias("m"))
        new = labels.join(m, left_on="node", right_on="a", how="left").select(
            "node", pl.min_horizontal("label", "m").alias("label"))
        new = new.join(new.select(pl.col("node").alias("label"), pl.col("label").alias("l2")), on="label",
                       how="left").select("node", pl.min_horizontal("label", "l2").alias("label"))
        if new.sort("node").equals(labels.sort("node")):
            return new
        labels = new


def _groups(flows_in: pl.DataFrame, flows_out: pl.DataFrame, edges: pl.DataFrame, budget: int) -> pl.DataFrame:
    """(fid, group): whole components, cut in order of their least node into groups of about ``budget`` packets
    (a component larger than that is a group of its own)."""
    sizes = pl.concat([flows_in.select("fid", "n"), flows_out.select("fid", "n")]).group_by("fid").agg(
        pl.col("n").sum())
    labels = _components(sizes["fid"], edges).join(sizes, left_on="node", right_on="fid")
    comp = labels.group_by("label").agg(pl.col("n").sum()).sort("label")
    comp = comp.with_columns(((pl.col("n").cum_sum() - pl.col("n")) // budget).alias("_g"))
    comp = comp.with_columns(pl.col("_g").rank("dense").cast(pl.UInt32).sub(1).alias("group"))
    return labels.join(comp.select("label", "group"), on="label").select(pl.col("node").alias("fid"), "group")


def _split_by_group(root: Path, role: str, groups: pl.DataFrame) -> None:
    """Step 3: the side's spilled packets written again, a folder per group, in capture order."""
    src = root / role
    if not src.is_dir():
        return
    for batch in sorted(src.glob("*.parquet")):
        df = pl.read_parquet(batch).join(groups, on="fid", how="left", maintain_order="left")
        for piece in df.partition_by("group", maintain_order=True):
            _write(piece.drop("group"), root / f"{role}-g{int(piece['group'][0])}" / batch.name)
        batch.unlink()
    shutil.rmtree(src)


@dataclass
class _Capture:
    """One capture after step 1."""

    info: CaptureInfo
    point: ObservationPoint
    interfaces: tuple[Interface, ...]
    flows: pl.DataFrame
    senders: set[str]
    packets: int
    schema: dict[str, pl.DataType] | None


def _read_capture(root: Path, role: str, path: str | os.PathLike[str], key_parts: int,
                  progress: Callable[[str, int], Callable[[int], None]] | None, fast: bool | None,
                  overlay: Overlay) -> _Capture | str:
    """Step 1 for one capture; why it must be correlated in memory instead (several interfaces)."""
    from natproof.correlate import DECODE_COLUMNS, packet_features

    cb = progress(f"{role}: {os.fspath(path)}", os.path.getsize(path)) if progress else None
    writer = _SideWriter(root, role, key_parts)
    try:
        info, _ = load_packets(path, cb, fast=fast, columns=DECODE_COLUMNS, transform=packet_features,
                               overlay=overlay, sink=writer)
    finally:
        flows = writer.close()
    if several_interfaces(info, pl.DataFrame(), None, counts=writer.per_interface):
        return f"{os.fspath(path)} holds several interfaces"
    for k, v in writer.skipped.items():
        info.skipped[k] += v
    point, interfaces = choose_point(role, info, pl.DataFrame(), counts=writer.per_interface)
    return _Capture(info, point, interfaces, flows, writer.senders, writer.packets, writer.schema)


def _legs(root: Path, g: int, caps: tuple[_Capture, _Capture], timeouts: IdleTimeouts | None,
          samples: bool) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
    """Step 4 for group ``g``: each side's packets grouped into legs (written to disk), the clock-offset samples
    (when ``samples``); returns the inside legs' sources, the outside legs' ends (the pod networks read only
    those) and whether both sides hold the very same packets."""
    from natproof.correlate import group_point

    keyed = []
    for role, cap in zip(("inside", "outside"), caps, strict=True):
        pk = _read(root / f"{role}-g{g}")
        schema = caps[0].schema or caps[1].schema
        pk = pk.drop("fid") if pk is not None else pl.DataFrame(schema=schema)
        pk, legs = group_point(pk, cap.info, timeouts, senders=cap.senders, duplicates=False)
        pk.write_parquet(root / f"{role}-grouped-g{g}.parquet")
        legs.write_parquet(root / f"{role}-legs-g{g}.parquet")
        ends = ["src"] if role == "inside" else ["src", "dst"]
        keyed.append((with_keys(pk), legs.select(pl.col(ends).cast(pl.String)).unique()))
        shutil.rmtree(root / f"{role}-g{g}", ignore_errors=True)
    (a, ends_in), (b, ends_out) = keyed
    if samples:
        offset_samples(a, b).write_parquet(root / f"offset-g{g}.parquet")
    return ends_in, ends_out, a.select("ts_ns", "k_strong").equals(b.select("ts_ns", "k_strong"))


def _clock_offset(root: Path, n_groups: int) -> tuple[int, bool, bool]:
    """The whole captures' clock offset from every group's samples (natproof.match.offset_and_way: the same
    medians); by rank when no key is unique on both sides. And whether any sample grounds it (0 and False: no packet
    of one capture is in the other; match_sides' ``offset_grounded``), and whether the samples were of one direction
    only (the NAT's latency in it: match_sides' ``offset_one_way``)."""
    offset, one_way = offset_and_way(pl.scan_parquet(root / "offset-g*.parquet"))
    if offset is not None:
        return offset, True, one_way
    for g in range(n_groups):
        a, b = (with_keys(pl.read_parquet(root / f"{r}-grouped-g{g}.parquet")) for r in ("inside", "outside"))
        offset_samples(a, b, by_rank=True).write_parquet(root / f"rank-g{g}.parquet")
    offset, one_way = offset_and_way(pl.scan_parquet(root / "rank-g*.parquet"))
    return (0, False, False) if offset is None else (offset, True, one_way)


@dataclass
class _Group:
    """Step 5's result for one group."""

    connections: pl.DataFrame
    paired: bool
    hairpin: bool
    unmatched_inside: int
    unmatched_outside: int
    legs: tuple[int, int]
    node_addresses: frozenset[str] = frozenset()
    """The node's addresses its connections show (natproof.assemble.node_addresses)."""
    refused_lookalikes: int = 0
    """natproof.match.Matches.refused_lookalikes of the group."""
    calls: frozenset[str] = frozenset()
    """Destinations of its pods' connections that nothing of crossed, not known here as the node's: another
    group's node_addresses may name one (a pod calling its node's NodePort, tests/variants/pod-nodeport-lb), and
    the group is then assembled again knowing them, as the whole captures in memory are."""
    sources: pl.DataFrame | None = None
    """When assembly turned a leg round (natproof.assemble.turned_sources): the sources (``src``, String, distinct)
    of the group's inside legs as it finally read them, for the pod networks; None when it turned none (its
    sources are those step 4 read)."""


def _match_group(root: Path, g: int, *, dnat: Sequence[Network], nets: Sequence[Network], services: Services,
                 offset: int, grounded: bool, tolerance_ns: int, base: tuple[int, int],
                 inside_senders: Collection[str],
                 node_addresses: Collection[str] = ()) -> _Group:
    """Step 5 for group ``g``: keyed, matched and assembled as natproof.correlate does the whole captures, its
    packet frames written to Parquet; conn_ids offset by ``base`` (the legs of the groups before, per side).
    ``node_addresses``: the node's addresses other groups showed. The group's input files are removed unless it
    has calls (_Group.calls: it may be assembled again)."""
    from natproof.correlate import _contract_rows, key_point, node_made_apart, result_packets, unmatched_inside

    fa = key_point(pl.read_parquet(root / f"inside-grouped-g{g}.parquet"), inside=True, dnat=dnat,
                   services=services)
    fb = key_point(pl.read_parquet(root / f"outside-grouped-g{g}.parquet"), inside=False, dnat=dnat,
                   services=services)
    legs_in = pl.read_parquet(root / f"inside-legs-g{g}.parquet")
    legs_out = pl.read_parquet(root / f"outside-legs-g{g}.parquet")
    matches = match_sides(fa["match"], fb["match"], clock_offset_ns=offset, tolerance_ns=tolerance_ns,
                          offset_grounded=grounded)
    evidence = match_evidence(fa["match"], fb["match"], matches.pairs)
    conns, in_pk, out_pk, pairs = assemble(fa["packets"], fb["packets"], legs_in, legs_out, matches,
                                           pod_networks=nets, services=services, icmp=(fa["icmp"], fb["icmp"]),
                                           evidence=evidence, inside_senders=inside_senders,
                                           known_node_addresses=node_addresses)
    known = frozenset(assembled_node_addresses(conns).to_list()) | frozenset(node_addresses)
    sources = None
    if conns["_turned"].fill_null(False).any():
        sources = turned_sources(legs_in, conns).select(pl.col("src").cast(pl.String)).unique()
    calls = frozenset(conns.filter(pl.col("init_inside") & (pl.col("_cross_init") == 0) & ~pl.col("_to_node"))
                      ["orig_dst"].drop_nulls().cast(pl.String).to_list()) - known
    conns = _contract_rows(conns)
    in_pk, out_pk = result_packets(in_pk, out_pk, (fa["icmp"], fb["icmp"]), pairs, matches.inside_self)
    if "copy_frame" not in in_pk.columns:  # every group's file has the same columns
        in_pk = in_pk.with_columns(pl.lit(None, in_pk["frame_no"].dtype).alias("copy_frame"))
    conns = node_made_apart(conns, in_pk, out_pk)
    done = _Group(connections=conns, paired=not matches.pairs.is_empty(), hairpin=matches.inside_self.height > 0,
                  unmatched_inside=unmatched_inside(in_pk, conns),
                  unmatched_outside=out_pk.height - pairs["out_row"].n_unique(),
                  legs=(legs_in.height, legs_out.height), node_addresses=known, calls=calls,
                  refused_lookalikes=matches.refused_lookalikes, sources=sources)
    b_in, b_out = base
    in_pk = in_pk.with_columns(pl.col("conn_id", "anchor") + b_in)
    out_pk = out_pk.with_columns(pl.col("conn_id") + b_out, pl.col("anchor") + b_in)
    done.connections = conns.with_columns(pl.col("inside_conn_id") + b_in, pl.col("outside_conn_id") + b_out)
    in_pk.write_parquet(root / f"inside-packets-g{g:05d}.parquet")
    out_pk.write_parquet(root / f"outside-packets-g{g:05d}.parquet")
    if not calls:
        _drop_inputs(root, g)
    return done


def _drop_inputs(root: Path, g: int) -> None:
    for name in ("inside-grouped", "outside-grouped", "inside-legs", "outside-legs"):
        (root / f"{name}-g{g}.parquet").unlink(missing_ok=True)


def correlate_spilled(inside: str | os.PathLike[str], outside: str | os.PathLike[str], *, memory_limit: int,
                      spill_dir: str | os.PathLike[str] | None = None, pod_cidr: str | Sequence[str] | None = None,
                      clock_offset_s: float | None = None, tolerance_s: float = 1.0,
                      timeouts: IdleTimeouts | None = None,
                      progress: Callable[[str, int], Callable[[int], None]] | None = None, fast: bool | None = None,
                      services: Services | None = None, overlay: Overlay = DEFAULT_OVERLAY,
                      networks: PodNetworks | None = None) -> Result | str:
    """Two captures (one interface each) correlated within about ``memory_limit`` bytes: the same Result as
    natproof.correlate's (the same connections, verdicts and packet fates; ``conn`` numbered in order of first
    packet alike, conn_ids differ), its packet frames LazyFrames over Parquet in a temporary directory under
    ``spill_dir`` (TMPDIR by default) kept while the Result is. Instead of a Result, why the captures are to be
    correlated in memory: a capture holds several interfaces (choosing points needs the whole file), or no packet
    is left to correlate (""). Raises what correlate raises.

    ``networks``: the pod networks inferred on a first run, used instead of inferring them (without ``pod_cidr``):
    a group's assembly can turn a leg round (a masqueraded flow caught mid-flow) whose pod no other leg shows, and
    every group is then matched again with the networks that reading gives, as natproof.correlate assembles
    again in memory."""
    from natproof.correlate import mark_capture_off, number_connections, without_latency

    services = services or Services()
    spill = SpillDir(spill_dir)
    root = spill.path
    budget = max(MIN_GROUP_PACKETS, (memory_limit - BASE_BYTES) // BYTES_PER_PACKET)
    est = max(1, (estimated_bytes([inside, outside]) - BASE_BYTES) // BYTES_PER_PACKET)
    key_parts = max(1, -(-est // min(budget, KEY_PART_PACKETS)))
    try:
        # 1. read both captures, batch by batch
        read = [_read_capture(root, role, path, key_parts, progress, fast, overlay)
                for role, path in (("inside", inside), ("outside", outside))]
        if reason := next((r for r in read if isinstance(r, str)), None):
            spill.cleanup()
            return reason
        ins, outs = caps = (read[0], read[1])
        assert isinstance(ins, _Capture) and isinstance(outs, _Capture)

        # 2. link flows into components, cut into groups; 3. each side's packets by group
        groups = _groups(ins.flows, outs.flows, _link(root, key_parts, ins.flows, outs.flows), budget)
        n_groups = int(groups["group"].max()) + 1 if groups.height else 0
        if not n_groups:
            spill.cleanup()
            return ""
        for role in ("inside", "outside"):
            _split_by_group(root, role, groups)
        del groups
        trim()

        # 4. legs per group; then what depends on the whole captures
        ends_in, ends_out, same = [], [], ins.packets == outs.packets > 0
        for g in range(n_groups):
            a, b, identical = _legs(root, g, caps, timeouts, samples=clock_offset_s is None)
            ends_in.append(a)
            ends_out.append(b)
            same = same and identical
        if same:
            raise InputError(f"{shown_path(inside)} and {shown_path(outside)} hold the same packets at the same "
                             "times (one is a copy of the other): give one capture from each side of the NAT")
        all_in, all_out = pl.concat(ends_in).unique(), pl.concat(ends_out).unique()
        del ends_out
        if pod_cidr:
            nets, why = parse_networks(pod_cidr), "given (--pod-cidr)"
            dnat = (*nets, PRIVATE_SPACE[-1][0])
        else:
            inferred = networks or infer_pod_networks(all_in, all_out)
            nets, why = inferred.networks, inferred.why
            dnat = dnat_networks(all_in, infer_pod_networks(all_in).networks)
        offset, grounded, one_way = ((int(round(clock_offset_s * 1e9)), True, False) if clock_offset_s is not None
                                     else _clock_offset(root, n_groups))

        # 5. match and assemble each group with the whole captures' offset and networks
        done: list[_Group] = []
        bases = [(0, 0)]
        total_bytes = sum(os.path.getsize(p) for p in (inside, outside))
        tick = progress(f"matching {n_groups} groups of flows", total_bytes) if progress and n_groups > 1 else None
        step = dict(dnat=dnat, nets=nets, services=services, offset=offset, grounded=grounded,
                    tolerance_ns=int(tolerance_s * 1e9),
                    inside_senders=ins.senders)
        for g in range(n_groups):
            done.append(_match_group(root, g, base=bases[g], **step))
            bases.append((bases[g][0] + done[-1].legs[0], bases[g][1] + done[-1].legs[1]))
            trim()
            if tick:
                tick(total_bytes // n_groups)
        # The node's addresses are those of every group's connections (as in memory, of all of them): a group
        # whose pods called one another group showed is assembled again knowing them (rare: its files were kept).
        node = frozenset().union(*(d.node_addresses for d in done))
        for g, d in enumerate(done):
            if d.calls & node:
                done[g] = _match_group(root, g, base=bases[g], node_addresses=node, **step)
            _drop_inputs(root, g)
        if not pod_cidr and networks is None and any(d.sources is not None for d in done):
            # Inferred again on the legs as assembly finally read them (natproof.correlate does the same): when that
            # adds a network, every group is matched again with it, from the captures (rare; their inputs are gone).
            again = infer_pod_networks(pl.concat([ends_in[g] if d.sources is None else d.sources
                                                  for g, d in enumerate(done)]).unique(), all_out)
            if again.networks != nets:
                spill.cleanup()
                return correlate_spilled(inside, outside, memory_limit=memory_limit, spill_dir=spill_dir,
                                         clock_offset_s=clock_offset_s, tolerance_s=tolerance_s, timeouts=timeouts,
                                         progress=progress, fast=fast, services=services, overlay=overlay,
                                         networks=again)
            why = again.why
        del ends_in
        if not any(d.paired for d in done) and ins.packets and outs.packets:
            _check_overlap_spans(inside, outside, ins.info, outs.info, offset, clock_offset_s is not None)
        conns = pl.concat([d.connections for d in done])
        hairpin = any(d.hairpin for d in done)
        unmatched = (sum(d.unmatched_inside for d in done), sum(d.unmatched_outside for d in done))
        refused = sum(d.refused_lookalikes for d in done)
        done.clear()
        conns = number_connections(conns)
        inside_packets, outside_packets = _scan(root, "inside", hairpin), _scan(root, "outside", hairpin)
        conns = mark_capture_off(conns, inside_packets, outside_packets, ins.info, outs.info, offset)
        if one_way:
            conns = without_latency(conns)
        if refused:
            from natproof.correlate import refused_lookalikes_note

            ins.info.warnings.append(refused_lookalikes_note(refused, grounded))
        return Result(
            inside=CaptureSummary.from_info(ins.info, _count(root, "inside"), ins.point),
            outside=CaptureSummary.from_info(outs.info, _count(root, "outside"), outs.point),
            interfaces=(*ins.interfaces, *outs.interfaces),
            clock_offset_s=round(offset / 1e9, 9),
            clock_offset_one_way=one_way,
            clock_offset_given=clock_offset_s is not None,
            pod_networks=tuple(str(n) for n in nets),
            pod_networks_why=why,
            connections=conns,
            unmatched_inside=unmatched[0],
            unmatched_outside=unmatched[1],
            inside_packets=inside_packets,
            outside_packets=outside_packets,
            spill=spill,
        )
    except BaseException as exc:
        spill.cleanup()
        if _no_space(exc):
            raise InputError(f"{root.parent}: no space left for the spilled packets (about {DISK_BYTES_PER_PACKET} "
                             "bytes per packet of both captures): give ", setting("spill_dir"), " on a larger disk, or "
                             "a larger ", setting("memory_limit")) from None
        raise


def _no_space(exc: BaseException) -> bool:
    """A write failed for want of disk space (polars reports it inside a ComputeError's text)."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def _scan(root: Path, role: str, hairpin: bool) -> pl.LazyFrame:
    """One side's packet frames of every group (a connection's packets in capture order); copy_frame only when
    some packet was hairpinned, as in memory."""
    scan = pl.scan_parquet(root / f"{role}-packets-g*.parquet")
    return scan if hairpin or role == "outside" else scan.drop("copy_frame")


def _count(root: Path, role: str) -> int:
    return int(pl.scan_parquet(root / f"{role}-packets-g*.parquet").select(pl.len()).collect().item())


def _check_overlap_spans(inside: str | os.PathLike[str], outside: str | os.PathLike[str], in_info: CaptureInfo,
                         out_info: CaptureInfo, offset: int, given: bool) -> None:
    """correlate's overlap check (nothing paired at all) on the captures' first and last packets."""
    from natproof.correlate import _check_overlap

    a = pl.DataFrame({"ts_ns": [in_info.first_ts_ns or 0, in_info.last_ts_ns or 0]})
    b = pl.DataFrame({"ts_ns": [out_info.first_ts_ns or 0, out_info.last_ts_ns or 0]})
    _check_overlap(shown_path(inside), shown_path(outside), a, b, offset, given=given)

