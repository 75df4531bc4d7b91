"""correlate(): read both captures, group legs, pair packets, and assemble and judge every connection."""

from __future__ import annotations

import dataclasses
import filecmp
import ipaddress
import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from natproof import parallel
from natproof.assemble import (
    FATE,
    Services,
    assemble,
    cut_flow_frame,
    in_networks,
    match_evidence,
    private_to_outside,
    turned_sources,
)
from natproof.capture import CaptureInfo
from natproof.connections import (
    PROTO_NAMES,
    IdleTimeouts,
    drop_duplicates,
    flow_columns,
    group_connections,
    split_never_forwarded,
)
from natproof.conntrack import ConntrackRecord, read_conntrack
from natproof.contracts import utc_ms
from natproof.decode import DEFAULT_OVERLAY, Overlay
from natproof.errors import CapturesApart, InputError, Said, setting, shown_path
from natproof.kernel import join_kernel, kernel_connections, one_side_connections, which_side
from natproof.match import (
    MATCH_COLUMNS,
    PAIR_SCHEMA,
    KeyParts,
    arrange_keys,
    head_whole,
    key_part_count,
    match_sides,
    signature,
    with_keys,
)
from natproof.memory import check_spill_dir, parse_size, trim
from natproof.names import Names, apply_names
from natproof.networks import PRIVATE_SPACE, dnat_networks, infer_pod_networks, parse_networks, pod_cidr_misses
from natproof.packets import decoder_flag, load_packets
from natproof.parallel import run_pair
from natproof.points import (
    Interface,
    Link,
    ObservationPoint,
    choose_point,
    choose_points,
    left_out_flows,
    parse_names,
    point_info,
    read_links,
    several_interfaces,
    split,
    where_expr,
)
from natproof.result import CONNECTION_SCHEMA, CaptureSummary, Result, unmatched_inside
from natproof.spill import correlate_spilled, estimated_bytes

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ProgressFactory = Callable[[str, int], Callable[[int], None]]
"""Called as (label, total_bytes) for each capture; returns a callback advanced by records decoded."""

SIDE_IS_FOR = "it is for one capture of one interface and a conntrack record"
"""What ``side`` is for, in the warning that says it was given where it does not apply."""

SWAPPED_THEM = "so natproof swapped them"
"""How the inside capture's warning that ``allow_swap`` swapped the captures (or a file's points) ends: a caller that
asked for the swap and says it in its own words (natproof.grade) leaves it out."""


def _fmt_time(ns: int) -> str:
    import datetime as dt

    # To the millisecond: captures a few seconds apart rounded to the second read as 06:06:01-06:06:01 for one
    # that started at 06:06:00.797 (a new user's trial). Integer arithmetic: ns / 1e9 loses the last digits.
    return dt.datetime.fromtimestamp(ns // 10**9, dt.UTC).strftime("%H:%M:%S") + f".{ns % 10**9 // 10**6:03d}"


DECODE_COLUMNS = ("frame_no", "ts_ns", "iface", "ifindex", "proto", "src", "dst", "sport", "dport", "ip_id", "ttl",
                  "tcp_seq", "tcp_ack", "tcp_flags", "payload_len", "payload_captured_len", "head_digest",
                  "icmp_type", "icmp_code",
                  "icmp_seq", "inner_proto", "inner_src", "inner_dst", "inner_sport", "inner_dport", "icmp_mtu",
                  "underlay")
"""The packet columns correlate decodes: what grouping, the keys and matching read (see PACKET_SCHEMA)."""

FEATURE_COLUMNS = ("frame_no", "ts_ns", "iface", "ifindex", "proto", "ip_id", "ttl", "tcp_seq", "tcp_ack",
                   "tcp_flags", "icmp_type", "icmp_code", "icmp_seq", "icmp_mtu", "payload_len", "head_digest",
                   "underlay")
"""Decoded columns kept as they are; the rest are read once into the flow columns and the signature (icmp_seq is
kept too: natproof.match pairs echoes a NAT gave a new IP id on it). (iface and ifindex are dropped once the
packets are split into observation points: natproof.points; underlay once each leg has its own: leg_underlay.)"""


def packet_features(packets: pl.DataFrame) -> pl.DataFrame:
    """What correlate keeps of each decoded packet: FEATURE_COLUMNS, the flow (natproof.connections.flow_columns)
    and the match signature (natproof.match.signature). Row by row: applied to each decoded batch."""
    # An ICMP error's own source: the far end, a router on the path, or the node itself (REJECT).
    err_src = pl.when(pl.col("inner_proto").is_not_null()).then(pl.col("src")).alias("err_src")
    return packets.select(*FEATURE_COLUMNS, head_whole(), err_src, *flow_columns(), signature())


PACKET_COLUMNS = ("frame_no", "ts_ns", "proto", "ttl", "tcp_flags", "conn_id", "is_egress", "is_icmp_error")
"""What a correlation carries of each packet (a Result adds anchor and fate, ICMP_COLUMNS, and inside the match:
out_frame, dt_ns, method)."""

ICMP_COLUMNS = ("err_src", "icmp_type", "icmp_code", "icmp_mtu")
"""What ICMP errors carry besides (who sent it, what it says); kept apart, for the few packets that are errors,
until the Result is made."""


@dataclass(frozen=True)
class _Side:
    info: CaptureInfo
    networks: tuple[Network, ...]
    point: ObservationPoint | None = None
    interfaces: tuple[Interface, ...] = ()


def _load(path: str | os.PathLike[str], progress: Callable[[int], None] | None,
          fast: bool | None, overlay: Overlay = DEFAULT_OVERLAY,
          read_ahead: bool | None = None) -> tuple[CaptureInfo, pl.DataFrame]:
    return load_packets(path, progress, fast=fast, columns=DECODE_COLUMNS, transform=packet_features,
                        overlay=overlay, read_ahead=read_ahead)


def _prepare_side(path: str | os.PathLike[str], progress: Callable[[int], None] | None, *, fast: bool | None,
                  timeouts: IdleTimeouts | None, inside: bool, pod_cidr: str | Sequence[str] | None,
                  services: Services, if_names: Sequence[str] = (), links: Mapping[int, Link] | None = None,
                  loaded: list | None = None, overlay: Overlay = DEFAULT_OVERLAY, read_ahead: bool | None = None,
                  ) -> tuple[_Side, dict[str, pl.DataFrame]]:
    """Decode one capture given for one side, keep its observation point (natproof.points.choose_point: the whole
    file, or the interfaces ``if_names`` gives or natproof chooses) and prepare it (see _prepare_point).
    ``loaded``: the capture already decoded ([info, packets] from _load, emptied here); ``read_ahead``: see
    natproof.fastdecode.decode_file."""
    if loaded:
        info, pk = loaded
        loaded.clear()
    else:
        info, pk = _load(path, progress, fast, overlay, read_ahead)
    role = "inside" if inside else "outside"
    point, interfaces = choose_point(role, info, pk, names=if_names, links=links,
                                     pod_networks=parse_networks(pod_cidr) if pod_cidr else (),
                                     service_networks=services.networks)
    pk, copies = split(pk, point)
    side, frames = _prepare_point(pk, point_info(info, point), copies, timeouts=timeouts, inside=inside,
                                  pod_cidr=pod_cidr, services=services)
    return dataclasses.replace(side, point=point, interfaces=interfaces), frames


def _prepare_one_file(loaded: list, *, fast: bool | None, timeouts: IdleTimeouts | None,
                      pod_cidr: str | Sequence[str] | None, services: Services, inside_if: Sequence[str],
                      outside_if: Sequence[str], links: Mapping[int, Link] | None,
                      ) -> tuple[list[tuple[_Side, dict[str, pl.DataFrame]]], pl.DataFrame]:
    """Choose both observation points in one capture of several interfaces, decoded once (``loaded``: [info,
    packets] from _load, emptied here so that the whole file's frame is dropped once split;
    natproof.points.choose_points) and prepare each. Returns the two sides, and the flows the file holds on
    interfaces left out of both points (natproof.points.left_out_flows)."""
    info, pk = loaded
    loaded.clear()
    plan = choose_points(info, pk, inside_if=inside_if, outside_if=outside_if, links=links,
                         pod_networks=parse_networks(pod_cidr) if pod_cidr else (),
                         service_networks=services.networks)
    left_out = left_out_flows(pk, plan)
    parts = [split(pk, point) for point in (plan.inside, plan.outside)]
    del pk  # each point's packets from here on, never the whole file's as well
    trim()
    out = []
    for point, first in ((plan.inside, True), (plan.outside, False)):
        part, copies = parts.pop(0)
        side, frames = _prepare_point(part, point_info(info, point, first=first), copies, timeouts=timeouts,
                                      inside=first, pod_cidr=pod_cidr, services=services)
        out.append((dataclasses.replace(side, point=point, interfaces=plan.interfaces), frames))
        del part
    return out, left_out


def _prepare_point(pk: pl.DataFrame, info: CaptureInfo, interface_copies: int, *, timeouts: IdleTimeouts | None,
                   inside: bool, pod_cidr: str | Sequence[str] | None,
                   services: Services) -> tuple[_Side, dict[str, pl.DataFrame]]:
    """Group and key one observation point's packets. Frames: packets (PACKET_COLUMNS), match (MATCH_COLUMNS;
    ``row`` indexes packets) and connections (one row per leg). The inside side also settles the pod networks."""
    # A point of several interfaces keeps each packet's (natproof.match.pair_within tells a Service's DNATed copy
    # on the endpoint's veth from a second query the client sent); one interface needs no column for it.
    several = pk.height and (pk["ifindex"].n_unique() > 1 or pk["iface"].n_unique() > 1)
    pk = pk.with_columns(where_expr()).drop("iface", "ifindex") if several else pk.drop("iface", "ifindex")
    if interface_copies:
        info.skipped["interface_copy"] += interface_copies
    pk, conns = group_point(pk, info, timeouts)
    nets: tuple[Network, ...] = ()
    if inside:  # private space only here: what the outside hides is settled once both sides are read
        nets = parse_networks(pod_cidr) if pod_cidr else infer_pod_networks(conns).networks
    trim()
    dnat = (*nets, PRIVATE_SPACE[-1][0]) if pod_cidr else dnat_networks(conns, nets)
    frames = key_point(pk, inside=inside, dnat=dnat, services=services)
    del pk
    trim()
    return _Side(info, nets), frames | {"connections": conns}


def group_point(pk: pl.DataFrame, info: CaptureInfo, timeouts: IdleTimeouts | None, *,
                senders: Collection[str] | None = None,
                duplicates: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One observation point's packets (packet_features' columns) less what no NAT sees (counted in
    ``info.skipped``), grouped into legs: (packets with conn_id and the flow's ends, one row per leg with its
    ``underlay``). ``senders`` and ``duplicates=False`` are for a part of a capture whose duplicates were dropped
    as it was read, in capture order (natproof.spill: the parts of a capture larger than memory)."""
    if "underlay" in pk.columns and pk["underlay"].null_count() == pk.height:
        pk = pk.drop("underlay")  # no overlay packet: nothing to carry through grouping (a column per packet)
    pk, never = split_never_forwarded(pk, senders=senders)
    info.skipped.update(never)
    if duplicates:
        pk, copies = drop_duplicates(pk)
        if copies:
            info.skipped["duplicate"] += copies
    pk, conns = group_connections(pk, timeouts)
    conns = leg_underlay(pk, conns)
    # Only when there: polars' drop of an absent column (strict=False) still copied the whole frame (+200 MB peak
    # at 2 x 5M packets).
    if "underlay" in pk.columns:
        pk = pk.drop("underlay")
    return pk, conns


def key_point(pk: pl.DataFrame, *, inside: bool, dnat: Sequence[Network],
              services: Services) -> dict[str, pl.DataFrame]:
    """A grouped point's frames for matching and assembly: packets (PACKET_COLUMNS), match (MATCH_COLUMNS; ``row``
    indexes packets) and icmp (the ICMP errors' ICMP_COLUMNS by row). ``dnat``: where a DNAT may lead
    (natproof.networks.dnat_networks, from the inside's legs)."""
    keyed = with_keys(pk.with_columns(_dnat_end(pk, inside, dnat, services)))
    return {"packets": keyed.select(PACKET_COLUMNS), "match": keyed.select(MATCH_COLUMNS),
            "icmp": keyed.filter(pl.col("is_icmp_error")).select("row", *ICMP_COLUMNS)}


def leg_underlay(pk: pl.DataFrame, conns: pl.DataFrame) -> pl.DataFrame:
    """``conns`` (one row per leg) with ``underlay`` (String): the outer packet of the leg's first overlay packet
    ("ENCAP SRC DST VNI", natproof.decode.underlay_label), null for a leg seen as it is. ``pk``: the leg's packets,
    with conn_id and the decoded ``underlay``."""
    if "underlay" not in pk.columns:
        return conns.with_columns(pl.lit(None, pl.String).alias("underlay"))
    lay = (pk.filter(pl.col("underlay").is_not_null()).group_by("conn_id")
           .agg(pl.col("underlay").sort_by("ts_ns").first().cast(pl.String)))
    return conns.join(lay, on="conn_id", how="left", maintain_order="left")


def _dnat_end(pk: pl.DataFrame, inside: bool, nets: Sequence[Network], services: Services) -> pl.Series:
    """``dnat_end`` per packet: its far end is one DNAT may stand for or lead to, so a weak key may do without it
    (natproof.match's second exact pass). Inside: a ClusterIP, or a pod (the backend of a NodePort: in ``nets``,
    natproof.networks.dnat_networks); outside: any far end (the backend the DNAT chose, or the NodePort
    itself)."""
    if not inside:
        return pl.repeat(True, pk.height, eager=True).alias("dnat_end")
    return in_networks(pk["remote"], (*services.networks, *nets)).alias("dnat_end")


def correlate(
    inside: str | os.PathLike[str] | None,
    outside: str | os.PathLike[str] | None = None,
    *,
    inside_if: str | Sequence[str] | None = None,
    outside_if: str | Sequence[str] | None = None,
    interfaces: str | os.PathLike[str] | Mapping[int, str] | None = None,
    pod_cidr: str | Sequence[str] | None = None,
    clock_offset_s: float | None = None,
    tolerance_s: float = 1.0,
    timeouts: IdleTimeouts | None = None,
    progress: ProgressFactory | None = None,
    decoder: str = "auto",
    services: Services | None = None,
    allow_swap: bool = False,
    names: Names | None = None,
    conntrack: str | os.PathLike[str] | ConntrackRecord | None = None,
    vxlan_ports: Sequence[int] = (),
    side: str | None = None,
    memory_limit: int | str | None = None,
    spill_dir: str | os.PathLike[str] | None = None,
) -> Result:
    """Prove each connection's NAT mapping from an inside (pod side) and an outside observation point.

    Two shapes. ``correlate(inside, outside)``: two capture files, one per side of the NAT. ``correlate(capture)``
    (``outside=None``): one capture of several interfaces, a ``tcpdump -i any`` file (LINUX_SLL2, an interface
    index per packet) or a pcapng with an interface block per interface (dumpcap with several ``-i``), split into
    the two points there. ``inside_if`` / ``outside_if`` (a name, a comma-separated list, or a sequence of names;
    ``if<N>`` for an unnamed SLL2 index N, ``idb<N>`` for an unnamed pcapng interface N) say which interfaces make
    each point; in the two-file form they apply within that side's file when it holds several interfaces. What
    is not given is chosen by natproof.points: where connections cross the NAT between interfaces (the first
    packet seen with the TTL one lower on the far side), then the interface names (veth*, cni0, cali*, lxc*,
    eni* ... for the inside, eth*, ens* ... for the outside); of a bridge and its ports, which hold the same
    packets, one is kept (the ports). ``interfaces`` names SLL2 indexes: a file of ``ip -o link`` output (or
    ``ip -j link``), or a mapping {index: name}; without it they are ``if<N>``. ``result.inside`` /
    ``result.outside`` say which interfaces each point is and why, ``result.interfaces`` every interface of the
    file(s) and what became of it. Each packet counts once per point: a copy under the same tuple on another of
    the point's interfaces (pod to pod, both veths) is skipped as ``interface_copy``.

    ``pod_cidr`` names the pod network (destinations in it are ``internal``); by default it is inferred
    from the inside capture. ``clock_offset_s`` (outside minus inside) is estimated when not given.
    Raises :class:`~natproof.errors.CaptureError` for an unusable file and
    :class:`~natproof.errors.InputError` for captures that cannot be used together, a single file with one
    interface, an unknown interface name, an ``interfaces`` file that is not ``ip -o link`` output, or a single
    file whose inside or outside natproof cannot tell (the message names the interfaces and the option to use).
    ``decoder`` picks the packet decoder: "auto" or "fast" (columnar), or "dpkt" (the reference); the
    result is the same. ``services`` says how Kubernetes Services are recognised (ClusterIP network, NodePort
    range; kube-apiserver's defaults when None). Captures that look given in the wrong order (see
    :func:`looks_swapped`) raise InputError naming the right order, unless ``allow_swap``: then they are swapped
    and the result says so in the inside capture's warnings. ``names`` (natproof.names.Names, from kubectl dumps)
    names pods and Services in the result, and its ClusterIPs and nodePorts count as Services whatever the ranges;
    a ptcpdump capture's packet comments name pods without it.
    ``conntrack``: the kernel's conntrack record (a file in
    any format natproof.conntrack reads, or a record already read) to hold every connection against
    (natproof.kernel.join_kernel; ``tolerance_s`` is its time tolerance too).

    Overlay packets (VXLAN on UDP 4789 and 8472 and ``vxlan_ports``, Geneve on 6081, IP-in-IP, GRE) are matched by
    their inner packet (natproof.decode.decapsulate); each leg keeps the outer packet as its ``underlay``. A pod's
    connection to another pod that crossed unchanged (through the overlay to another node, or routed) is
    ``internal``: pod to pod is never NATed.

    ONE capture (the other argument None): a file of several interfaces (or one given ``inside_if`` /
    ``outside_if``) is split into both points as above, and a record is joined to that result as to two files'. A
    file of one interface needs the record: it gives each connection's other side (:func:`correlate_one`,
    evidence_level kernel_record; ``side``: "inside", "outside" or "auto", told from the record; by default the
    argument the capture was given as; "inside" or "outside" with a file of several interfaces, or two files, where
    both sides are there, changes nothing and is said in the inside capture's warnings). Without a record such a
    file is an InputError naming both ways out (the other side's capture, or ``--conntrack``).

    ``memory_limit`` (bytes, or a size such as "2G": natproof.spill.parse_size; InputError below one byte): two
    captures whose correlation would need more (natproof.spill.estimated_bytes) are correlated past memory, a group
    of flows at a time, their packets spilled to Parquet under ``spill_dir`` (natproof.spill.correlate_spilled;
    TMPDIR when None; InputError for one that can hold no folder, natproof.memory.check_spill_dir):
    the same connections and verdicts; the Result's packet frames are then LazyFrames over those files, removed
    with the Result (keep it while reading them). None: always in memory. Captures of several interfaces, standard
    input, and ``inside_if`` / ``outside_if`` / ``interfaces``, are correlated in memory, as is ONE capture (of
    several interfaces, or with a record); when they would need more, a warning says the limit was not applied, and
    why. Limits below about 512 MiB are not kept to: the interpreter and polars alone take ~250 MB.
    """
    if names is not None:
        services = names.recognise(services)
    fast = decoder_flag(decoder)
    try:
        overlay = DEFAULT_OVERLAY.with_vxlan_ports(tuple(int(p) for p in vxlan_ports))
    except (TypeError, ValueError) as exc:
        raise InputError(setting("vxlan_ports"), f": {exc}") from None
    for name, value in (("clock offset", clock_offset_s), ("tolerance", tolerance_s)):
        if value is not None and not (math.isfinite(value) and abs(value) <= 10 * 365 * 86_400):
            raise InputError(f"{name} {value!r}: not a number of seconds within ten years")
    if tolerance_s is not None and tolerance_s < 1e-6:  # as --tolerance: no pair forms within nothing
        raise InputError(f"tolerance {tolerance_s!r}: must be at least 1e-6 s (a microsecond)")
    if pod_cidr is not None:
        # A bad --pod-cidr is an error before any capture is read; so is one that names no network ('', ','),
        # which would otherwise fall back to inference without a word.
        if not parse_networks(pod_cidr):
            raise InputError("invalid ", setting("pod_cidr"), f": no network in {pod_cidr!r}")
    if isinstance(memory_limit, str):
        try:
            memory_limit = parse_size(memory_limit)
        except ValueError as exc:
            raise InputError(f"memory limit {exc}") from None
    if memory_limit is not None and memory_limit < 1:
        raise InputError(f"memory limit {memory_limit!r}: a size of one byte or more")
    if spill_dir is not None:
        check_spill_dir(spill_dir)
    if side not in (None, "auto", "inside", "outside"):
        raise InputError(setting("side", side), ": inside, outside or auto")
    side_note = ""  # a side given where both sides are captured: used as ever (not at all), but said
    if side in ("inside", "outside") and inside is not None and outside is not None:
        side_note = f"given with the other side's capture: the side given ({side}) does not apply ({SIDE_IS_FOR})"
    if conntrack is not None and not isinstance(conntrack, ConntrackRecord):
        conntrack = read_conntrack(conntrack)  # a bad record is an error before any capture is read
    links = read_links(interfaces) if interfaces is not None else None
    in_names, out_names = parse_names(inside_if), parse_names(outside_if)
    if inside is None and outside is None:
        raise InputError("no capture given: give ", Said("inside and outside", "INSIDE and OUTSIDE"),
                         ", one capture of several interfaces, or one "
                         "capture and a conntrack record")
    services = services or Services()
    memory_note = ""

    def swap_again(swapped: str, in_point: ObservationPoint | None, out_point: ObservationPoint | None) -> Result:
        """Captures (or a file's points) that look swapped: refused, or with ``allow_swap`` correlated the other
        way round, said in the inside capture's warnings."""
        again = dict(memory_limit=memory_limit, spill_dir=spill_dir, pod_cidr=pod_cidr,
                     clock_offset_s=None if clock_offset_s is None else -clock_offset_s, tolerance_s=tolerance_s,
                     timeouts=timeouts, progress=progress, decoder=decoder, services=services, names=names,
                     conntrack=conntrack,
                     interfaces=links and {k: v.name for k, v in links.items()})
        if capture is not None:
            assert in_point is not None and out_point is not None
            in_ifs, out_ifs = ",".join(in_point.names), ",".join(out_point.names)
            if not allow_swap:
                raise InputError(f"{os.fspath(capture)}: the inside ({in_ifs}) and outside ({out_ifs}) look swapped: "
                                 f"{swapped}; pass ", setting("inside_if", out_ifs), Said(", ", " "),
                                 setting("outside_if", in_ifs), " (or ",
                                 setting("allow_swap", True, verb=""), ")")
            result = correlate(capture, None, inside_if=out_ifs, outside_if=in_ifs,
                               **again)  # type: ignore[arg-type]
            note = f"{in_ifs} and {out_ifs} looked swapped as inside and outside ({swapped}), {SWAPPED_THEM}"
        else:
            assert inside is not None and outside is not None
            if not allow_swap:
                raise InputError(
                    f"{os.fspath(inside)} and {os.fspath(outside)} look swapped: {swapped}; give them in the other "
                    f"order: {os.fspath(outside)} {os.fspath(inside)} (or ", setting("allow_swap", True, verb="pass"),
                    ")")
            result = correlate(outside, inside, inside_if=out_names, outside_if=in_names,
                               **again)  # type: ignore[arg-type]
            note = (f"given as the outside capture; {os.fspath(inside)} and {os.fspath(outside)} looked "
                    f"swapped ({swapped}), {SWAPPED_THEM}")
        return side_said(_warned(result, note))

    def side_said(result: Result) -> Result:
        return _warned(result, side_note) if side_note else result

    capture = inside if outside is None else outside if inside is None else None
    arranged: list[KeyParts] = []  # the inside side's keys cut for matching while the outside one was prepared
    left_out = None  # one file's flows on interfaces left out of both points (natproof.points.left_out_flows)
    if capture is not None:
        # One capture: split into both observation points when it holds several interfaces (or names are given);
        # else, with a record, the record gives the other side; else choose_points says what is missing.
        over = memory_limit is not None and estimated_bytes([capture]) > memory_limit
        cb = progress(f"capture: {os.fspath(capture)}", _size(capture)) if progress else None
        loaded = [*_load(capture, cb, fast, overlay)]
        given_side = side in ("inside", "outside")
        one_side = conntrack is not None and not in_names and not out_names
        several = (one_side or given_side) and several_interfaces(*loaded, links)
        if given_side and several:
            side_note = (f"holds several interfaces, both sides of the NAT, and is split into them: the side given "
                         f"({side}) does not apply ({SIDE_IS_FOR})")
        if one_side and not several:
            one = _correlate_one(
                capture, conntrack, side=side or ("inside" if inside is not None else "outside"), pod_cidr=pod_cidr,
                tolerance_s=tolerance_s, timeouts=timeouts, fast=fast, services=services, loaded=loaded,
                links=links)
            if over:
                one = _warned(one, _memory_note("one capture and a conntrack record", 1))
            return apply_names(one, names)
        if over:
            memory_note = _memory_note("one capture of several interfaces", 1)
        [(ins, a), (outs, b)], left_out = _prepare_one_file(
            loaded, fast=fast, timeouts=timeouts, pod_cidr=pod_cidr, services=services, inside_if=in_names,
            outside_if=out_names, links=links)
    else:
        assert inside is not None and outside is not None
        _check_distinct(inside, outside)
        if memory_limit is not None and estimated_bytes([inside, outside]) > memory_limit:
            spilled: Result | str = "--inside-if/--outside-if/--interfaces are given"
            if "-" in (os.fspath(inside), os.fspath(outside)):
                spilled = "a capture is read from standard input"
            elif not in_names and not out_names and links is None:
                parallel.discard_prestarted()  # a worker the command line started has no job here: its memory back
                spilled = correlate_spilled(inside, outside, memory_limit=memory_limit, spill_dir=spill_dir,
                                            pod_cidr=pod_cidr, clock_offset_s=clock_offset_s, tolerance_s=tolerance_s,
                                            timeouts=timeouts, progress=progress, fast=fast, services=services,
                                            overlay=overlay)
            if isinstance(spilled, Result):
                swapped = looks_swapped(spilled.connections, services)
                if swapped:
                    spilled.spill.cleanup()
                    return swap_again(swapped, None, None)
                if conntrack is not None:
                    spilled = join_kernel(spilled, conntrack, tolerance_s=tolerance_s)
                return apply_names(side_said(spilled), names)
            if spilled:
                memory_note = _memory_note(spilled, 2)
        cbs = [progress(f"{label}: {os.fspath(path)}", _size(path)) if progress else None
               for label, path in (("inside", inside), ("outside", outside))]
        # Each capture is prepared on its own (decode, group, key), the outside one in a second process when both
        # are large; then the two meet in matching.
        # Two processes have the two cores then: this one (a polars pool of every core) frames no chunk ahead in a
        # thread besides (natproof.parallel.pairs); the worker, whose pool has half of them and which finished its
        # side ~0.25 s after this one, does (2 x 1M real, alternated eight times: 3.32 -> 3.27 s; 5M within noise).
        ahead = False if parallel.pairs([inside, outside]) else None

        def arrange_inside(first: tuple[_Side, dict[str, pl.DataFrame]]) -> None:
            # The worker finishes its side ~1 s after this process (2 x 5M real): cut this side's keys for the
            # exact pass meanwhile, guessing the other side is no larger (else matching cuts them again).
            rows = first[1]["match"].height
            arranged.append(arrange_keys(first[1]["match"], key_part_count(rows)))

        (ins, a), (outs, b) = run_pair(_prepare_side, [inside, outside], cbs, fast=fast, overlay=overlay,
                                       timeouts=timeouts, while_waiting=arrange_inside,
                                       pod_cidr=pod_cidr, services=services, links=links,
                                       each=[{"inside": True, "if_names": in_names, "read_ahead": ahead},
                                             {"inside": False, "if_names": out_names, "read_ahead": None}])
    # Taken out of the sides' dicts, not referenced from them: each frame is let go as soon as its last name here
    # is (the match frames after matching, the decoded packets after assembly), which the dicts would prevent
    # until correlate returns (2 x 5M synthetic: peak RSS of the two processes 1,618 -> 1,558 MiB).
    in_pk, in_conns, in_match = a.pop("packets"), a.pop("connections"), a.pop("match")
    out_pk, out_conns, out_match = b.pop("packets"), b.pop("connections"), b.pop("match")
    missed = None
    if pod_cidr:
        nets, why = ins.networks, "given (--pod-cidr)"
        missed = pod_cidr_misses(nets, in_conns, outside=out_conns)
    else:
        inferred = infer_pod_networks(in_conns, out_conns)
        nets, why = inferred.networks, inferred.why

    if capture is None:  # a copy of one file; two points of one file are told apart by natproof.points
        _check_same_packets(shown_path(ins.info.path), shown_path(outs.info.path), in_match, out_match)
    offset_ns = None if clock_offset_s is None else int(round(clock_offset_s * 1e9))
    matches = match_sides(in_match, out_match, clock_offset_ns=offset_ns, tolerance_ns=int(tolerance_s * 1e9),
                          inside_parts=arranged[0] if arranged else None)
    arranged.clear()
    if matches.pairs.is_empty() and not in_match.is_empty() and not out_match.is_empty():
        _check_overlap(shown_path(ins.info.path), shown_path(outs.info.path), in_match, out_match,
                       matches.clock_offset_ns, given=clock_offset_s is not None)
    evidence = match_evidence(in_match, out_match, matches.pairs)
    del in_match, out_match

    packets = in_pk, out_pk
    cut = {"inside_cut": cut_flow_frame(ins.info.cut_flows), "outside_cut": cut_flow_frame(outs.info.cut_flows)}
    conns, in_pk, out_pk, pairs = assemble(*packets, in_conns, out_conns, matches, pod_networks=nets,
                                           services=services, icmp=(a["icmp"], b["icmp"]), evidence=evidence,
                                           left_out=left_out, **cut)
    if not pod_cidr:
        # The pod networks are inferred from who started each inside leg; a masqueraded flow caught mid-flow is
        # known for the pod's own only once assembly has turned its leg round (a helper's trial s16: the pod's
        # 10.244.0.10 shown beside "pod networks none"). Inferred again on that reading; when it adds a network
        # the connections are assembled again with it (rare: a turned leg whose pod no other leg shows).
        again = infer_pod_networks(turned_sources(in_conns, conns), out_conns)
        if again.networks != nets:
            nets, why = again.networks, again.why
            conns, in_pk, out_pk, pairs = assemble(*packets, in_conns, out_conns, matches, pod_networks=nets,
                                                   services=services, icmp=(a["icmp"], b["icmp"]), evidence=evidence,
                                                   left_out=left_out, **cut)
        else:
            why = again.why
    del packets, cut
    conns = _contract_rows(conns)
    conns = mark_capture_off(conns, in_pk, out_pk, ins.info, outs.info, matches.clock_offset_ns)
    if matches.offset_one_way:
        conns = without_latency(conns)
    swapped = looks_swapped(conns, services)
    if swapped:
        return swap_again(swapped, ins.point, outs.point)
    in_pk, out_pk = result_packets(in_pk, out_pk, (a["icmp"], b["icmp"]), pairs, matches.inside_self)
    conns = node_made_apart(conns, in_pk, out_pk)
    result = Result(
        inside=CaptureSummary.from_info(ins.info, in_pk.height, ins.point),
        outside=CaptureSummary.from_info(outs.info, out_pk.height, outs.point),
        interfaces=ins.interfaces if capture is not None else (*ins.interfaces, *outs.interfaces),
        clock_offset_s=round(matches.clock_offset_ns / 1e9, 9),
        clock_offset_one_way=matches.offset_one_way,
        clock_offset_given=clock_offset_s is not None,
        pod_networks=tuple(str(n) for n in nets),
        pod_networks_why=why,
        connections=conns,
        unmatched_inside=unmatched_inside(in_pk, conns),
        unmatched_outside=out_pk.height - pairs["out_row"].n_unique(),
        inside_packets=in_pk,
        outside_packets=out_pk,
    )
    if memory_note:
        result = _warned(result, memory_note)
    if missed:
        result = _warned(result, missed)
    if matches.refused_lookalikes:
        result = _warned(result, refused_lookalikes_note(matches.refused_lookalikes, matches.offset_grounded))
    if conntrack is not None:
        result = join_kernel(result, conntrack, tolerance_s=tolerance_s)
    return apply_names(side_said(result), names)


def refused_lookalikes_note(n: int, grounded: bool) -> str:
    """The inside capture's warning for ``n`` packet pairs the payload pass refused (natproof.match.
    _causal_payload_pairs); ``grounded``: whether other packets tied the clocks (else that was the reason)."""
    why = ("they would cross the NAT backwards in time against the clock offset the other packets give" if grounded
           else "no other packet is in both captures to tie their clocks (--clock-offset gives it)")
    return (f"{n} packet(s) look alike on both captures (far end, TCP payload length and head: identical requests "
            f"or answers) but differ in IP id and TCP numbers, and {why}: not paired (unrelated traffic, or a "
            "capture of another time or place)")


def _memory_note(why: str, captures: int) -> str:
    """The warning that a memory limit was given and not applied, and ``why`` (its ``captures`` were correlated in
    memory): correlating past memory (natproof.spill) takes two captures of one interface each."""
    were = "the captures were" if captures > 1 else "the capture was"
    return (f"--memory-limit not applied ({why}): correlating past memory takes two captures of one interface each; "
            f"{were} correlated in memory")


def _warned(result: Result, note: str) -> Result:
    """``result`` with ``note`` last among its inside capture's warnings (the outside one's when only that one was
    captured: one capture and the kernel's record)."""
    side = "inside" if result.inside.path or not result.outside.path else "outside"
    summary = getattr(result, side)
    return dataclasses.replace(result, **{side: dataclasses.replace(summary, warnings=(*summary.warnings, note))})


def looks_swapped(conns: pl.DataFrame, services: Services | None = None) -> str | None:
    """Why a correlation looks like its captures were given in the wrong order, or None.

    Every connection that crossed reads as NAT seen from the wrong side (cases/swapped-sides); the TTL step and
    the order of the copies put its initiator on the capture that saw its packets first:
    - egress reversed: started on the "outside" capture, with its source rewritten on the way to the "inside" one
      and its destination kept. A source NAT rewrites the initiator's source on its way out, so the capture the
      initiator is on is the NAT's inside, whatever the addresses: a pod's to a node's (10.244.0.10 -> 203.0.113.2),
      a private one to another (EKS: a pod's VPC address to the primary ENI's, 10.0.1.50 -> 10.0.1.10; a node's to
      a NAT gateway's), a global IPv6 one to another (NAT66). Connections from outside that a node rewrites the
      source of (NodePort, externalTrafficPolicy=Cluster) are DNATed too. Also, with the destination rewritten as
      well, a private source rewritten to a public one;
    - a ClusterIP reversed: addressed to a ClusterIP (only ever addressed from the node's side) but started on
      the "outside" capture;
    - inbound reversed (NodePort, an ALG's expectation): a public source DNATed to a private address, started
      on the "inside" capture;
    - a host's Service DNAT reversed: where no address is private (IPv6 pods in global space: nothing tells a
      pod's call to a ClusterIP seen backwards from a client's to a NodePort), a connection started on the
      "outside" capture with its destination rewritten, from a host whose own connection is egress reversed
      (above). A forwarding node lowers the hop limit, never raises it, so each initiator is on the capture its
      packets were seen on first, and a host sits on one side of the node (tests/variants/clusterip6 swapped).
    One connection that reads right in the captures rules a swap out.

    The reason names the readings that held, each with its count (a connection may read so more than one way): a
    reading that held for none is not claimed (tests/variants/public-pods given swapped was said to hold "private
    addresses on the outside capture only", which it did not: its private address is the node's, inside).
    """
    svc = services or Services()
    crossed = conns.filter(pl.col("verdict").is_in(["translated", "no_reply", "reply_dropped", "reply_other_path"]))
    if crossed.is_empty():
        return None
    # One that reads right is enough: the first connections first (nearly always one of them does), then all.
    if crossed.height > _SWAP_SAMPLE and not _read_reversed(crossed.head(_SWAP_SAMPLE), svc)["r"].all():
        return None
    ways = _read_reversed(crossed, svc)
    if not ways["r"].all():
        return None
    held = [f"{n} {text}" for col, text in _SWAP_READINGS.items() if (n := int(ways[col].sum()))]
    return (f"all {crossed.height} connection(s) that crossed read as NAT seen from the wrong side: "
            + "; ".join(held))


_SWAP_SAMPLE = 1000

_SWAP_READINGS = {
    "snat": "started on the outside capture with the source rewritten on the way to the inside one (a source NAT "
            "seen backwards)",
    "inbound": "from a public source DNATed to a private address, started on the inside capture",
    "clusterip": "to a ClusterIP, started on the outside capture",
    "private": "with private addresses on the outside capture only",
    "host": "started on the outside capture with the destination rewritten, by a host whose other connection is "
            "a source NAT seen backwards (a Service's DNAT seen backwards)",
}
"""looks_swapped's readings (_read_reversed's columns), as its reason says them."""


def _read_reversed(crossed: pl.DataFrame, svc: Services) -> pl.DataFrame:
    """Per connection that crossed, each way it reads as NAT seen from the wrong side (see looks_swapped): the
    columns of _SWAP_READINGS, and ``r``, any of them."""
    rw = pl.col("rewrites")
    # RFC 1918, shared (RFC 6598) and ULA space: ipaddress's is_private also counts the documentation ranges.
    inside_space = [space for space, _, _ in PRIVATE_SPACE]
    crossed = crossed.with_columns(in_networks(crossed[c].fill_null("0.0.0.0"), inside_space).alias(f"_private_{c}")
                                   for c in ("orig_src", "trans_src", "trans_dst", "inside_src", "inside_dst",
                                             "outside_src", "outside_dst"))

    def private(col: str) -> pl.Expr:
        return pl.col(f"_private_{col}")

    out_first, in_first = pl.col("initiator") == "outside", pl.col("initiator") == "inside"
    dnat = rw.list.contains("dst") | rw.list.contains("dport")
    snat_reversed = out_first & rw.list.contains("src") & (~dnat | (private("orig_src") & ~private("trans_src")))
    inbound_reversed = in_first & rw.list.contains("dst") & private("trans_dst") & ~private("orig_src")
    clusterip_reversed = in_networks(crossed["orig_dst"], svc.networks) & (crossed["initiator"] == "outside")
    # Private space only on the "outside" capture, none on the "inside" one, other than as egress SNAT (a helper's
    # swap of a pair whose eth0 capture held only the replies: they read as connections started outside, or with
    # every field rewritten). Started inside with only the source rewritten, the same addresses are a node with a
    # private address masquerading pods with public ones (GKE's privately used public pod ranges behind a 10.x
    # node: another helper's pair), no swap.
    into_private = ((out_first | dnat) & (private("outside_src") | private("outside_dst")) & ~private("inside_src")
                    & ~private("inside_dst"))
    # A host is on one side of the node: the hop limit a forwarding node decrements (never raises) put each
    # initiator on the capture its packets were seen on first. A source NAT seen backwards (``snat``) puts its
    # initiator on the NAT's inside, so that host's other connections started on the same capture whose
    # destination was rewritten are a Service's DNAT seen backwards too (ClusterIP to a backend outside, with or
    # without MASQUERADE), not connections from outside to a NodePort. Only where the addresses' class cannot
    # tell (none private: IPv6 pods in global space, tests/variants/clusterip6 swapped, read 3 "inbound"
    # connections and no swap); a private address gives the readings above their say.
    swapped_hosts = crossed.filter(snat_reversed)["orig_src"].unique().implode()
    all_global = ~(private("orig_src") | private("trans_src") | private("trans_dst")
                   | in_networks(crossed["orig_dst"].fill_null("0.0.0.0"), inside_space))
    host_reversed = out_first & dnat & all_global & pl.col("orig_src").is_in(swapped_hosts)
    ways = crossed.select(snat_reversed.alias("snat"), inbound_reversed.alias("inbound"),
                          into_private.alias("private"), host_reversed.alias("host")).with_columns(
        clusterip_reversed.alias("clusterip"))
    return ways.with_columns(pl.any_horizontal("snat", "inbound", "clusterip", "private", "host").alias("r"))


def result_packets(in_pk: pl.DataFrame, out_pk: pl.DataFrame, icmp: tuple[pl.DataFrame, pl.DataFrame],
                   pairs: pl.DataFrame, inside_self: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Assembled packet frames (natproof.assemble) as a Result holds them: ICMP_COLUMNS on both, and on the inside
    each packet's match (out_frame, dt_ns, method: of its first segment when the outside holds it as several) and,
    when any packet was hairpinned, copy_frame."""
    in_pk, out_pk = _with_icmp(in_pk, icmp[0]), _with_icmp(out_pk, icmp[1])
    if "method" in pairs.columns and (pairs["method"] == "bytes").any():
        # An inside packet the outside holds as segments pairs with each (natproof.match): its first segment.
        pairs = pairs.sort("in_row", "out_row").unique("in_row", keep="first", maintain_order=True)
    in_rows = pairs["in_row"]
    in_pk = in_pk.with_columns(
        _scatter(in_pk.height, in_rows, out_pk["frame_no"].gather(pairs["out_row"])).alias("out_frame"),
        _scatter(in_pk.height, in_rows, pairs["dt_ns"]).alias("dt_ns"),
        _scatter(in_pk.height, in_rows, pairs["method"]).alias("method"),
    )
    # Hairpin: the two copies of one packet the inside capture holds (natproof.match.pair_within), each the other's
    # (a column only when there are any: a column per packet costs at millions of packets).
    if inside_self.height:
        copy_of = in_pk["frame_no"].gather(pl.concat([inside_self["b_row"], inside_self["a_row"]]))
        in_pk = in_pk.with_columns(_scatter(in_pk.height, pl.concat([inside_self["a_row"], inside_self["b_row"]]),
                                            copy_of).alias("copy_frame"))
    return in_pk, out_pk


def _record_elsewhere(info: CaptureInfo, record: ConntrackRecord, tolerance_s: float) -> str | None:
    """The warning, for one capture and the kernel's record, that the record's events lie wholly before or after
    the capture (by more than ``tolerance_s``): a record of another time or node, or a node clock far from the
    capture's, that says nothing of its connections (a helper's trial: `who` on a record of the next day exited 1
    with no hint why). None when they overlap, or the record has no timed events (a listing)."""
    first, last = record.first_ts_ns, record.last_ts_ns
    if not record.has_events or first is None or last is None or not info.first_ts_ns or not info.last_ts_ns:
        return None
    tol = int(tolerance_s * 1e9)
    if info.last_ts_ns >= first - tol and info.first_ts_ns <= last + tol:
        return None
    return (f"the events of {record.path} ({utc_ms(first)} - {utc_ms(last)} UTC) do not cover the capture's time "
            f"({utc_ms(info.first_ts_ns)} - {utc_ms(info.last_ts_ns)} UTC): the record is of another time (or node, "
            "or the node's clock is off), so it tells nothing of these connections; give the record taken while the "
            "capture ran")


def _one_side_fates(pk: pl.DataFrame, conns: pl.DataFrame, side: str,
                    leaked_legs: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One capture and the kernel's record: the fates two captures would give, moved out of ``{side}_only``
    (packets, and each connection's fate counts by its leg on the captured side, the packets' anchor).

    - The pod side: an RST or ICMP error towards the pod, of a connection the kernel never confirmed an entry for
      (not_forwarded), was made by the node (a REJECT; kube-proxy's for a Service without endpoints), as in
      natproof.assemble._unmatched_fates (a helper found cases/reject-no-endpoints called 'dropped in the FORWARD
      chain').
    - The uplink: the packets of ``leaked_legs`` (an egress connection's leg under its pre-NAT tuple, folded into
      it by natproof.kernel) left untranslated: leaked (a helper found idle-expiry's FINs read as a second
      translated connection). Those legs' packets were in no count."""
    if side == "inside":
        rst = (pl.col("proto") == 6) & ((pl.col("tcp_flags").fill_null(0) & 0x04) != 0)
        # Only where the record covered the leg and has no entry for it (dropped_before_confirmation): out of the
        # record's sight nothing says the node made it (a helper's trial: a far end's port unreachable, with a
        # record of the next day, read as node_generated).
        refused = conns.filter((pl.col("verdict") == "not_forwarded")
                               & (pl.col("kernel_reason") == "dropped_before_confirmation"))["leg"].implode()
        made = ((pl.col("fate") == "inside_only") & ~pl.col("is_egress") & (rst | pl.col("is_icmp_error"))
                & pl.col("conn_id").is_in(refused))
        fate, taken = "node_generated", "fate_inside_only"
        # Out of its sight (other_capture_off) a leg is not_captured, answered or not (natproof.kernel.
        # _unrecorded_inside_legs), and its RST or ICMP error is no node's: nothing says the node made it.
    else:
        made = pl.col("conn_id").is_in(leaked_legs) & pl.col("fate").is_not_null()
        fate, taken = "leaked", None
    counts = pk.filter(made).group_by("anchor").len().select(
        pl.col("anchor").alias(f"{side}_conn_id"), pl.col("len").cast(pl.UInt32).alias("_moved"))
    moved = pl.col("_moved").fill_null(0)
    conns = conns.join(counts, on=f"{side}_conn_id", how="left", maintain_order="left").with_columns(
        (pl.col(f"fate_{fate}") + moved).alias(f"fate_{fate}"),
        *([(pl.col(taken) - moved).alias(taken)] if taken else []),
    ).drop("_moved")
    pk = pk.with_columns(pl.when(made).then(pl.lit(fate)).otherwise(pl.col("fate")).cast(FATE).alias("fate"))
    return pk, conns


def _with_icmp(pk: pl.DataFrame, icmp: pl.DataFrame) -> pl.DataFrame:
    """``pk`` with ICMP_COLUMNS: the errors' values at their rows, null elsewhere."""
    return pk.with_columns(_scatter(pk.height, icmp["row"], icmp[c]).alias(c) for c in ICMP_COLUMNS)


def _scatter(n: int, rows: pl.Series, values: pl.Series) -> pl.Series:
    """A column of n nulls with ``values`` at ``rows``."""
    return pl.repeat(None, n, dtype=values.dtype, eager=True).scatter(rows, values)


def _size(path: str | os.PathLike[str]) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


CAPTURE_EDGE_NS = 500_000_000
"""A connection whose every packet came this long (500 ms) before the other capture's first packet, or that began
this long after its last, was seen while that capture was not running; closer, the other capture may have been
running and quiet (a pcap records no start or stop time), and a drop is the likelier reading."""


def _other_capture_off(conns: pl.DataFrame, inside: CaptureInfo, outside: CaptureInfo, offset_ns: int) -> pl.Series:
    """Per connection: it was seen while the other capture showed nothing yet or any more (wholly before its
    first packet, or begun after its last, on one clock). Such a connection seen on one side only proves nothing
    about the other: captures that only partly overlap are judged on what both could see."""
    crossed = int(conns["fate_crossed"].sum() + conns["fate_leaked"].sum()) if conns.height else 0
    if not inside.first_ts_ns or not outside.first_ts_ns or not crossed:
        # Nothing crossed at all: the other capture's silence is the finding (forwarding off, a filter that
        # matched nothing), not its schedule.
        return pl.repeat(False, conns.height, eager=True).alias("other_capture_off")
    # On the inside clock (every connection's times are), with a margin for the NAT's latency and the offset's
    # error.
    out_first = outside.first_ts_ns - offset_ns - CAPTURE_EDGE_NS
    out_last = (outside.last_ts_ns or 0) - offset_ns + CAPTURE_EDGE_NS
    in_first, in_last = inside.first_ts_ns - CAPTURE_EDGE_NS, (inside.last_ts_ns or 0) + CAPTURE_EDGE_NS
    first, last = pl.col("first_ts_ns"), pl.col("last_ts_ns")
    # A connection still sending while the other side was capturing, and never crossing, is what a drop looks
    # like (captures/forward-drop: SYN retransmissions into the other pod's traffic), so "before" takes its last
    # packet, and "after" its first: one that began while the other capture ran and then fell silent is no
    # schedule either.
    off = (pl.when(pl.col("inside_conn_id").is_not_null()).then((last < out_first) | (first > out_last))
           .otherwise((last < in_first) | (first > in_last)))
    return conns.select(off.fill_null(False).alias("other_capture_off")).to_series()


def node_made_apart(conns: pl.DataFrame, in_pk: pl.DataFrame | pl.LazyFrame | None,
                    out_pk: pl.DataFrame | pl.LazyFrame | None, *, out_key: str = "inside_conn_id") -> pl.DataFrame:
    """``conns`` (CONNECTION_SCHEMA rows) with the packets the node made itself (fate node_generated: a REJECT's TCP
    reset, the RST for an INVALID packet) other than ICMP errors taken out of egress_* / reply_* and counted in
    node_made_* (a trial: cases/reject-no-endpoints' forged RST read reply_inside 1 and "reply pkts 0/1"; the
    RST is no reply). Verdicts were settled before, on every packet. Packet frames (anchor, conn_id, fate,
    is_egress, is_icmp_error; DataFrames or natproof.spill's LazyFrames): inside ones by anchor = inside_conn_id;
    outside ones by anchor (``out_key``: inside_conn_id with two captures, outside_conn_id from the uplink alone
    with the kernel's record), and with two captures, one with no anchor (a connection started outside that never
    reached the pod side) by its conn_id = outside_conn_id. The node's ICMP errors stay in icmp_errors_*."""
    made = (pl.col("fate") == "node_generated") & ~pl.col("is_icmp_error")
    counts = [pl.col("is_egress").sum().cast(pl.UInt32).alias("_e"), (~pl.col("is_egress")).sum().cast(pl.UInt32)
              .alias("_r")]
    for side, pk, keys in (("inside", in_pk, [("anchor", "inside_conn_id")]),
                           ("outside", out_pk, [("anchor", out_key)] + (
                               [("conn_id", "outside_conn_id")] if out_key == "inside_conn_id" else []))):
        conns = conns.with_columns(pl.lit(0, pl.UInt32).alias(f"node_made_{side}"))
        if pk is None:
            continue
        rows = pk.lazy().filter(made)
        for i, (col, key) in enumerate(keys):
            # The second key only for packets the first leaves unowned (no anchor), and rows with no inside leg.
            part = (rows.filter(pl.col("anchor").is_null()) if i else rows.filter(pl.col(col).is_not_null()))
            got = part.group_by(col).agg(*counts).collect()
            if got.is_empty():
                continue
            got = got.rename({col: "_k"}).with_columns(pl.col("_k").cast(pl.UInt32))
            target = pl.col(key).cast(pl.UInt32) if not i else pl.when(pl.col("inside_conn_id").is_null()).then(
                pl.col(key).cast(pl.UInt32))
            conns = (conns.with_columns(target.alias("_k")).join(got, on="_k", how="left", maintain_order="left")
                     .with_columns(pl.col("_e").fill_null(0), pl.col("_r").fill_null(0)))
            conns = conns.with_columns(
                (pl.col(f"egress_{side}") - pl.min_horizontal("_e", f"egress_{side}")).alias(f"egress_{side}"),
                (pl.col(f"reply_{side}") - pl.min_horizontal("_r", f"reply_{side}")).alias(f"reply_{side}"),
                (pl.col(f"node_made_{side}") + pl.col("_e") + pl.col("_r")).alias(f"node_made_{side}"),
            ).drop("_k", "_e", "_r")
    return conns


def without_latency(conns: pl.DataFrame) -> pl.DataFrame:
    """``conns`` with latency_median_us and latency_max_us null: the clock offset was estimated from packets crossing
    one way only (natproof.match.offset_and_way), so it holds the NAT's latency, and every packet's time across the
    node measured against it is that latency's error, not the latency (a trial: one-way UDP, 30 us, read as 0)."""
    return conns.with_columns(pl.lit(None, pl.Float64).alias("latency_median_us"),
                              pl.lit(None, pl.Float64).alias("latency_max_us"))


def mark_capture_off(conns: pl.DataFrame, in_pk: pl.DataFrame | pl.LazyFrame, out_pk: pl.DataFrame | pl.LazyFrame,
                     inside: CaptureInfo, outside: CaptureInfo, offset_ns: int) -> pl.DataFrame:
    """``conns`` (CONNECTION_SCHEMA rows) with other_capture_off and outside_only_before_inside set from the
    captures' spans and the packet frames (anchor, fate, ts_ns, is_egress; DataFrames, or natproof.spill's
    LazyFrames).

    other_capture_off: _other_capture_off's whole connections, and a connection that crossed with packets seen on
    one side only while the other capture was shown not running yet (capture_off_until): a connection begun before
    that capture started (a trial: an inside capture started 0.9 s into a 3 s connection read as 30 replies not
    reverse-translated), no drop. outside_only_before_inside counts those seen on the outside only (flag
    not_reverse_translated leaves them out)."""
    off = _other_capture_off(conns, inside, outside, offset_ns)
    crossed = int(conns["fate_crossed"].sum() + conns["fate_leaked"].sum()) if conns.height else 0
    until = capture_off_until(conns, in_pk, out_pk, inside.first_ts_ns, outside.first_ts_ns, offset_ns)
    if not crossed or until == (None, None):
        return conns.with_columns(off, pl.lit(0, pl.UInt32).alias("outside_only_before_inside"))
    counts = [pk.lazy().filter((pl.col("fate") == f"{side}_only") & (pl.col("ts_ns") <= t)
                               & pl.col("anchor").is_not_null())
              .group_by("anchor").agg(pl.len().cast(pl.UInt32).alias(f"_{side}_before"))
              for pk, side, t in ((in_pk, "inside", until[0]), (out_pk, "outside", until[1])) if t is not None]
    early = counts[0] if len(counts) == 1 else counts[0].join(counts[1], on="anchor", how="full", coalesce=True)
    marked = conns.with_columns(off).join(early.collect().rename({"anchor": "inside_conn_id"}),
                                          on="inside_conn_id", how="left", maintain_order="left")
    n_in, n_out = (pl.col(c).fill_null(0) if c in marked.columns else pl.lit(0, pl.UInt32)
                   for c in ("_inside_before", "_outside_before"))
    return marked.with_columns(
        (pl.col("other_capture_off") | (((n_in + n_out) > 0) & ((pl.col("fate_crossed") + pl.col("fate_leaked")) > 0)))
        .alias("other_capture_off"),
        n_out.cast(pl.UInt32).alias("outside_only_before_inside"),
    ).drop("_inside_before", "_outside_before", strict=False)


def capture_off_until(conns: pl.DataFrame, in_pk: pl.DataFrame | pl.LazyFrame, out_pk: pl.DataFrame | pl.LazyFrame,
                      in_first_ns: int | None, out_first_ns: int | None,
                      offset_ns: int) -> tuple[int | None, int | None]:
    """(on the inside clock, on the outside clock): up to when the capture on the other side of the NAT is shown
    not running yet, before its first packet; None where nothing shows it.

    What shows it: a packet seen past the node with no copy in the capture before it (fate inside_only of one
    coming in: a reply of a connection started inside, the initiator's packet of one started outside; outside_only
    of one going out) that came before that capture's first packet. It crossed that capture's point while the
    capture saw nothing, so the capture was not yet running; every packet seen on one side only until then came
    while it was not (captures are started once). The capture started between that packet and its own first one:
    a packet nearer the former came likelier before the start (a trial: the pod's ACK 0.2 ms after the reply that
    showed the uplink capture off, 90 ms before its first packet), so the time returned is halfway between them.
    With nothing that shows it, a packet before the other capture's first one proves nothing: the capture may
    have run and the node dropped it (tests/test_diagnose.py's egress_other_path: the uplink capture's first
    packet a SYN/ACK, the SYN having left by another path). After the
    other capture's last packet is no such rule: a pcap records no end of capture, and a drop there is as likely
    (tests/variants/idle-drop-invalid: FINs the node dropped after the uplink's last packet; natproof.diagnose says
    both readings)."""
    if not in_first_ns or not out_first_ns or not conns.height:
        return None, None
    initiator = conns.lazy().filter(pl.col("inside_conn_id").is_not_null()).select(
        pl.col("inside_conn_id").alias("anchor"), (pl.col("initiator") == "inside").alias("_from_inside"))
    out = []
    for pk, side, first in ((in_pk, "inside", out_first_ns - offset_ns), (out_pk, "outside", in_first_ns + offset_ns)):
        # Coming in (seen inside) is the reply of a connection started inside; going out (seen outside) the
        # initiator's packet of one started inside.
        through = pl.col("is_egress") == (pl.col("_from_inside") if side == "outside" else ~pl.col("_from_inside"))
        t = (pk.lazy().filter((pl.col("fate") == f"{side}_only") & (pl.col("ts_ns") < first))
             .select("anchor", "ts_ns", "is_egress").join(initiator, on="anchor", how="inner")
             .filter(through).select(pl.col("ts_ns").max()).collect().item())
        out.append(None if t is None else int(t) + (first - int(t)) // 2)
    return out[0], out[1]


def _check_distinct(inside: str | os.PathLike[str], outside: str | os.PathLike[str]) -> None:
    """InputError when both arguments are one file, or two byte-identical files: one capture cannot show both
    sides of a NAT (every packet would 'cross' unchanged, in no time)."""
    a, b = os.fspath(inside), os.fspath(outside)
    if a == "-" or b == "-":
        return
    try:
        same = os.path.samefile(a, b)
        identical = same or (os.path.getsize(a) == os.path.getsize(b) and filecmp.cmp(a, b, shallow=False))
    except OSError:
        return  # a missing or unreadable file is reported when it is read
    if identical:
        what = "are the same file" if same else "are byte-identical"
        raise InputError(f"{a} and {b} {what}: give one capture from each side of the NAT (e.g. the pod's veth "
                         "and the node's eth0)")


def _check_same_packets(in_path: str, out_path: str, in_pk: pl.DataFrame, out_pk: pl.DataFrame) -> None:
    """InputError when the two captures hold the very same packets at the very same times (one is a copy of the
    other under another name or compression, or read from standard input): no NAT lies between them."""
    if in_pk.is_empty() or in_pk.height != out_pk.height:
        return
    cols = ["ts_ns", "k_strong"]
    # The first packets tell two captures of a NAT apart: only copies go on to compare every row (5M: 0.1 s).
    same = (in_pk.head(1000).select(cols).equals(out_pk.head(1000).select(cols))
            and in_pk.select(cols).equals(out_pk.select(cols)))
    if same:
        raise InputError(f"{in_path} and {out_path} hold the same packets at the same times (one is a copy of the "
                         "other): give one capture from each side of the NAT")


def _check_overlap(in_path: str, out_path: str, in_pk: pl.DataFrame, out_pk: pl.DataFrame, offset: int, *,
                   given: bool = False) -> None:
    a0, a1 = in_pk["ts_ns"].min() + offset, in_pk["ts_ns"].max() + offset  # type: ignore[operator]
    b0, b1 = out_pk["ts_ns"].min(), out_pk["ts_ns"].max()
    if a1 < b0 or b1 < a0:  # type: ignore[operator]
        hint = (("with the ", setting("clock_offset_s"), " given; check its sign (",
                 Said("outside minus inside", "OUTSIDE minus INSIDE"), ")") if given
                else (setting("clock_offset_s", verb="pass"), " if the clocks differ"))
        raise CapturesApart(
            f"{in_path} and {out_path} do not overlap in time ({_fmt_time(a0)}-{_fmt_time(a1)} vs "
            f"{_fmt_time(b0)}-{_fmt_time(b1)} UTC, on the outside clock)", "; ", *hint  # type: ignore[arg-type]
        )


def number_connections(conns: pl.DataFrame) -> pl.DataFrame:
    """Connections (CONNECTION_SCHEMA's tuple columns) sorted and numbered (``conn``, 0 ..) in order of first
    packet; connections whose first packets share a timestamp (a microsecond pcap at speed) in order of their
    inside tuple, then their outside one: what they are, never the order they were found in, so a correlation
    past memory (natproof.spill) numbers them alike."""
    by = ["inside_src", "inside_sport", "inside_dst", "inside_dport", "outside_src", "outside_sport", "outside_dst",
          "outside_dport", "proto"]
    if conns["first_ts_ns"].is_duplicated().any() or conns["first_ts_ns"].null_count():
        conns = conns.sort([pl.col("first_ts_ns"), *(pl.col(c).cast(pl.String) for c in by)], nulls_last=False)
    else:  # no two share a first packet's time: that alone orders them (500k connections: 0.2 -> 0.1 s)
        conns = conns.sort("first_ts_ns")
    return conns.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("conn"))


def _contract_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Assembled connections (natproof.assemble) as CONNECTION_SCHEMA rows, numbered in order of first packet."""
    df = df.with_columns(
        pl.col("proto").replace_strict(PROTO_NAMES, return_dtype=pl.String),
    ).rename({
        "src": "inside_src", "sport": "inside_sport", "dst": "inside_dst", "dport": "inside_dport",
        "egress_packets": "egress_inside", "reply_packets": "reply_inside",
        "icmp_error_packets": "icmp_errors_inside", "anchor": "inside_conn_id", "primary_out": "outside_conn_id",
    })
    if "other_capture_cut" not in df.columns:  # only rows of natproof.assemble._cut_legs carry it
        df = df.with_columns(pl.lit(0, pl.UInt32).alias("other_capture_cut"))
    if "other_capture_cut_shared" not in df.columns:
        df = df.with_columns(pl.lit(0, pl.UInt32).alias("other_capture_cut_shared"))
    if "left_out_interfaces" not in df.columns:  # assemble counts them (natproof.assemble._left_out_counts)
        df = df.with_columns(pl.lit(0, pl.UInt32).alias("left_out_replies"),
                             pl.lit(0, pl.UInt32).alias("left_out_initiator"),
                             pl.lit(None, pl.List(pl.String)).alias("left_out_interfaces"))
    # Set by node_made_apart once the packets' fates are final.
    df = df.with_columns(*[pl.lit(0, pl.UInt32).alias(f"node_made_{side}") for side in ("inside", "outside")])
    counts = [c for c, t in CONNECTION_SCHEMA.items() if t == pl.UInt32() and not c.startswith("evidence_")
              and not c.endswith("_conn_id") and c != "conn" and not c.startswith("kernel")
              and c != "outside_only_before_inside"]
    df = df.with_columns([pl.col(c).fill_null(0) for c in counts]).with_columns(
        # Set by correlate (mark_capture_off), which knows the captures' spans.
        pl.lit(False).alias("other_capture_off"), pl.lit(0, pl.UInt32).alias("outside_only_before_inside"),
        pl.when(pl.col("trans_src").is_not_null()).then(pl.lit("packets")).alias("evidence_level"),
        # Set by natproof.kernel.join_kernel when a conntrack record is given.
        *[pl.lit(None, t).alias(c) for c, t in CONNECTION_SCHEMA.items() if c.startswith("kernel")],
    )
    return number_connections(df).select([pl.col(c).cast(t) for c, t in CONNECTION_SCHEMA.items()])


def correlate_one(
    capture: str | os.PathLike[str],
    conntrack: str | os.PathLike[str] | ConntrackRecord,
    *,
    side: str = "auto",
    pod_cidr: str | Sequence[str] | None = None,
    tolerance_s: float = 1.0,
    timeouts: IdleTimeouts | None = None,
    progress: ProgressFactory | None = None,
    decoder: str = "auto",
    services: Services | None = None,
    vxlan_ports: Sequence[int] = (),
) -> Result:
    """Connections from ONE capture (the pod side or the node's uplink) and the node's conntrack record, which gives
    each connection's tuple on the side not captured (natproof.kernel.one_side_connections: evidence_level
    kernel_record, never "crossed" fates: no packet was seen on both sides).

    ``side``: "inside", "outside", or "auto": told from the record (natproof.kernel.which_side), and said in the
    capture's warnings. The result's summary of the side not captured has format "none" and no packets. Raises
    CaptureError for an unusable capture, InputError for an unusable record."""
    if side not in ("auto", "inside", "outside"):
        raise InputError(setting("side", side), ": inside, outside or auto")
    record = conntrack if isinstance(conntrack, ConntrackRecord) else read_conntrack(conntrack)
    cb = progress(f"capture: {os.fspath(capture)}", _size(capture)) if progress else None
    fast = decoder_flag(decoder)
    overlay = DEFAULT_OVERLAY.with_vxlan_ports(tuple(vxlan_ports))
    return _correlate_one(capture, record, side=side, pod_cidr=pod_cidr, tolerance_s=tolerance_s, timeouts=timeouts,
                          fast=fast, services=services, loaded=[*_load(capture, cb, fast, overlay)])


def _correlate_one(capture: str | os.PathLike[str], record: ConntrackRecord, *, side: str,
                   pod_cidr: str | Sequence[str] | None, tolerance_s: float, timeouts: IdleTimeouts | None,
                   fast: bool | None, services: Services | None, loaded: list,
                   links: Mapping[int, Link] | None = None) -> Result:
    """correlate_one on a capture already decoded (``loaded``: [info, packets] from _load)."""
    services = services or Services()
    sd, fr = _prepare_side(capture, None, fast=fast, timeouts=timeouts, inside=side != "outside",
                           pod_cidr=pod_cidr, services=services, links=links, loaded=loaded)
    legs = fr["connections"].with_columns(pl.col("proto").replace_strict(PROTO_NAMES, return_dtype=pl.String))
    if pod_cidr:
        nets, why = sd.networks, "given (--pod-cidr)"
    else:
        inferred = infer_pod_networks(fr["connections"])
        nets, why = inferred.networks, inferred.why
    note = ""
    if side == "auto":
        side, ins, outs = which_side(legs, record, pod_networks=nets, services=services, tolerance_s=tolerance_s)
        if ins or outs:
            note = (f"the only capture; taken as the {side} one: {max(ins, outs)} of its connections have the "
                    f"{'pre' if side == 'inside' else 'post'}-NAT tuple of an egress entry in {record.path} (or the "
                    f"other of an inbound one), {min(ins, outs)} the other way (--side sets it)")
        else:
            note = (f"the only capture; taken as the inside one: no entry of {record.path} that rewrote anything "
                    "has its tuples at its connections' times, so the record cannot tell the side (--side sets it)")
    if side == "outside":
        nets = parse_networks(pod_cidr) if pod_cidr else ()
        why = "given (--pod-cidr)"
        if not pod_cidr:
            # The outside capture holds no pod address (or only leaked ones); the record's SNATed sources are pods.
            # Without them every private destination would count as the pod network (natproof.kernel's default):
            # an untranslated connection to a network the NAT excludes (eks-vpc-cni) would read internal.
            egress = kernel_connections(record, services=services).filter(
                (pl.col("initiator") == "inside") & pl.col("rewrites").list.contains("src"))
            # And a private source the kernel saw talk to a global address unrewritten: a pod the NAT missed
            # (wrong-subnet's leak), never an internet client.
            ents = record.entries
            leaked = ents.filter(private_to_outside(ents["orig_src"], ents["orig_dst"])
                                 & (pl.col("orig_src") == pl.col("reply_dst")))
            sources = pl.concat([egress.select(pl.col("inside_src").cast(pl.String).alias("src")),
                                 leaked.select(pl.col("orig_src").cast(pl.String).alias("src"))]).unique()
            inferred = infer_pod_networks(sources, where=f"that {record.path} rewrote or saw leave unrewritten (the "
                                                         "only capture is the outside one)")
            nets, why = inferred.networks, inferred.why
    conns = one_side_connections(legs, side, record, pod_networks=nets, services=services, tolerance_s=tolerance_s,
                                 timeouts=timeouts)
    # Each leg's connection, by its leg on the captured side (the uplink's connections have no inside leg).
    ids = conns[f"{side}_conn_id"].to_list()
    conn_of = dict(zip(conns["leg"].to_list(), ids, strict=True))
    # A hairpin's second leg on the pod side belongs to the connection of its first (natproof.kernel).
    conn_of |= {f: c for f, c in zip(conns["folded"].to_list(), ids, strict=True) if f is not None}
    # So do the other mappings of a flow mapped anew after idling (natproof.kernel: its packets on every leg).
    conn_of |= {m: c for ms, c in zip(conns["mapped"].to_list(), ids, strict=True) for m in ms or ()}
    owned = pl.Series(list(conn_of), dtype=pl.UInt32).implode()
    # On the uplink, an egress connection's leg under its pre-NAT tuple left untranslated (its entry expired, or
    # INVALID): its packets leaked, as with two captures (a helper: idle-expiry's FINs read as a second
    # translated connection).
    leaked_legs = (conns.filter((pl.lit(side) == "outside") & (pl.col("initiator") == "inside"))
                   ["folded"].drop_nulls().implode())
    conns = conns.drop("folded", "mapped")
    pk = _with_icmp(fr["packets"], fr["icmp"]).with_columns(
        pl.col("conn_id").replace_strict(conn_of, default=None, return_dtype=pl.UInt32).alias("anchor"),
        pl.when(pl.col("conn_id").is_in(owned)).then(pl.lit(f"{side}_only")).cast(FATE).alias("fate"),
    ).select(*PACKET_COLUMNS, "anchor", "fate", *ICMP_COLUMNS)
    pk, conns = _one_side_fates(pk, conns, side, leaked_legs)
    match_cols = [pl.lit(None, pl.UInt32).alias("out_frame"), pl.lit(None, pl.Int64).alias("dt_ns"),
                  pl.lit(None, PAIR_SCHEMA["method"]).alias("method")]
    empty = pk.clear()
    in_pk = (pk if side == "inside" else empty).with_columns(match_cols)
    out_pk = pk if side == "outside" else empty
    conns = node_made_apart(conns, in_pk if side == "inside" else None, out_pk if side == "outside" else None,
                            out_key="outside_conn_id")
    info = sd.info
    if note:
        info.warnings.append(note)
    missed = pod_cidr_misses(nets, legs) if pod_cidr and side == "inside" else None
    if missed:
        info.warnings.append(missed)
    off_time = _record_elsewhere(info, record, tolerance_s)
    if off_time:
        info.warnings.append(off_time)
    summary = CaptureSummary.from_info(info, pk.height, sd.point)
    other = "outside" if side == "inside" else "inside"
    missing = CaptureSummary(path="", format="none", link_type="", records=0, packets=0, first_ts_ns=0,
                             last_ts_ns=0, skipped={}, warnings=(f"not captured: each connection's {other} tuple "
                                                                 f"comes from the kernel's record {record.path}",),
                             chosen="none", why=f"not captured: the kernel's record {record.path} gives it")
    internal = pl.col("verdict") == "internal"
    unmatched = int(conns.filter(~internal).select(pl.col(f"fate_{side}_only").sum()).item() or 0)
    result = Result(
        inside=summary if side == "inside" else missing,
        outside=summary if side == "outside" else missing,
        clock_offset_s=0.0,
        pod_networks=tuple(str(n) for n in nets),
        pod_networks_why=why,
        connections=conns.drop("leg"),
        unmatched_inside=unmatched if side == "inside" else 0,
        unmatched_outside=unmatched if side == "outside" else pk.height - int(pk["fate"].is_not_null().sum()),
        inside_packets=in_pk,
        outside_packets=out_pk,
        conntrack=record,
        interfaces=sd.interfaces,
    )
    return result
