"""Observation points: which interfaces of which capture file are the inside and the outside of the NAT."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from natproof.capture import LINKTYPE_NAMES, CaptureInfo
from natproof.errors import InputError, Said, setting
from natproof.networks import HIDDEN_PREFIX

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Key = tuple[int, int]
"""An interface of one file: (iface, ifindex) as the decoded columns give them (natproof.packets.PACKET_SCHEMA)."""

ROLES = ("inside", "outside")

# Interface names, as CNIs, container runtimes and distributions make them. Only a hint: traffic decides first.
_KIND_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("loopback", re.compile(r"lo$")),
    # Bridges pods hang off: the bridge CNI plugin (cni0), kubenet (cbr0), Docker, kube-router, Weave, LXC, libvirt.
    ("bridge", re.compile(r"(cni\d*|cbr\d+|docker\d+|br-[0-9a-f]+|kube-bridge|weave|lxcbr\d+|virbr\d+)$")),
    # A pod's host-side interface: veth (bridge, ptp, Flannel, Docker), Calico, Cilium, the AWS VPC CNI, GKE, Azure.
    ("port", re.compile(r"(veth|cali|lxc|eni|gke|azv|vnet|tap)")),
    # The node's own uplinks: classic, systemd-predictable (ens5, enp0s3, eno1, enx...), bonds, teams, Wi-Fi.
    ("uplink", re.compile(r"(eth\d|en[sopx]|em\d|bond|team|wl|ib\d)")),
)
KINDS = ("port", "bridge", "uplink", "loopback", "other", "unknown")
"""What an interface's name says it is: a pod's host-side port (veth*, cali*, lxc*, eni* ...), a bridge of pod
ports (cni0, cbr0, docker0 ...), an uplink of the node (eth*, ens*, bond* ...), loopback, other (tunnels,
kube-ipvs0, ...), or unknown (no name: if<N> without ``ip -o link``, an unnamed pcapng interface)."""

_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                                   "fc00::/7"))
COPY_NS = 1_000_000
"""Two copies of one packet on two interfaces of one observation point (a pod-to-pod packet on both pods' veths)
are at most this far apart (1 ms); a retransmission never is (the shortest retransmission timer, TLP, is 10 ms)."""
COPY_SHARE = 0.9
"""An interface whose connection starts (or, with none, IP packets) are at least this share copies of packets
already on the point's interfaces (same invariant fields: a bridge and its ports, the veth of a Service backend
that a pod on the node calls) adds no connection and is left out."""


@dataclass(frozen=True)
class Link:
    """One line of ``ip -o link``."""

    index: int
    name: str
    master: str | None = None
    """The bridge (or bond) it is a port of (``master cni0``)."""
    loopback: bool = False


@dataclass(frozen=True)
class Interface:
    """One interface of one capture file, and what natproof made of it."""

    path: str
    iface: int
    """The file's interface (Record.iface: its pcapng interface block; 0 for classic pcap)."""
    ifindex: int
    """The Linux interface index of LINUX_SLL2 frames (``tcpdump -i any``); -1 for other link types."""
    name: str
    """pcapng if_name; for an SLL2 index its name in ``--interfaces`` (``ip -o link``), else ``if<N>``; for an unnamed
    pcapng block ``idb<N>``; "" for the one interface of a classic pcap (which names none)."""
    link_type: str
    frames: int
    """Records captured on it."""
    packets: int
    """Of them, IP packets natproof decoded."""
    kind: str
    """One of KINDS, from ``ip -o link`` (``master``, loopback) and the name."""
    point: str | None = None
    """"inside" or "outside" when it is (part of) that observation point, else None."""
    note: str = ""
    """Why it is in its point, or why it was left out."""

    @property
    def key(self) -> Key:
        return self.iface, self.ifindex

    def label(self) -> str:
        """The name, with the SLL2 index or pcapng block when the name does not already say it."""
        if self.ifindex >= 0:
            return self.name if self.name == f"if{self.ifindex}" else f"{self.name} (if{self.ifindex})"
        return self.name or "the file's one interface"

    def to_dict(self) -> dict:
        return {"path": self.path, "name": self.name or None, "ifindex": None if self.ifindex < 0 else self.ifindex,
                "pcapng_interface": self.iface, "link_type": self.link_type, "kind": self.kind,
                "frames": self.frames, "ip_packets": self.packets, "point": self.point, "note": self.note}


@dataclass(frozen=True)
class ObservationPoint:
    """Where one side of the NAT was observed: a capture file, and which of its interfaces (docs/model.md)."""

    role: str
    """"inside" or "outside"."""
    path: str
    interfaces: tuple[Interface, ...]
    """The interfaces whose packets make this point (all of the file's, when it has one)."""
    how: str
    """"file" (the whole file: it holds one interface), "given" (``--inside-if`` / ``--outside-if``) or "chosen"
    (natproof chose from the traffic and the names: see ``why``)."""
    why: str
    """One sentence: why these interfaces."""

    @property
    def keys(self) -> frozenset[Key]:
        return frozenset(i.key for i in self.interfaces)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.interfaces if i.name)

    def to_dict(self) -> dict:
        return {"path": self.path, "interfaces": [i.name or None for i in self.interfaces], "how": self.how,
                "why": self.why}


# ---------------------------------------------------------------------------------------------------------------
# Naming: ip -o link output, and the interfaces of a file.


_LINK_LINE = re.compile(r"^(\d+):\s+([^:\s@]+)(?:@[^:\s]*)?:\s+<([^>]*)>(.*)$")


def read_links(source: str | os.PathLike[str] | Mapping[int, str]) -> dict[int, Link]:
    """Interface indexes and names from ``ip -o link`` output (or ``ip link``, or ``ip -j link``) in a file, or
    from a mapping {index: name}. Raises InputError naming the file and the line that does not parse."""
    if isinstance(source, Mapping):
        return {int(k): Link(int(k), str(v), loopback=str(v) == "lo") for k, v in source.items()}
    path = os.fspath(source)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (", setting("interfaces"),
                         " wants the output of `ip -o link`)") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not `ip -o link` output") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror})") from None
    if text.lstrip().startswith("["):
        return _json_links(path, text)
    links: dict[int, Link] = {}
    last: int | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line[0].isspace():  # `ip link` puts link/ether ... on a second, indented line
            if last is not None and "link/loopback" in line:
                links[last] = dataclasses.replace(links[last], loopback=True)
            continue
        m = _LINK_LINE.match(line)
        if m is None:
            shown = line if len(line) <= 40 else line[:37] + "..."
            raise InputError(f"{path}: line {n} is not `ip -o link` output: {shown!r} (expected 'INDEX: NAME: "
                             "<FLAGS> ...')")
        index, name, rest = int(m.group(1)), m.group(2), m.group(4)
        master = re.search(r"\bmaster (\S+)", rest)
        links[index] = Link(index, name, master.group(1) if master else None, "link/loopback" in rest)
        last = index
    if not links:
        raise InputError(f"{path}: no interface in it (", setting("interfaces"), " wants the output of `ip -o link`)")
    return links


def _json_links(path: str, text: str) -> dict[int, Link]:
    try:
        doc = json.loads(text)
        return {int(d["ifindex"]): Link(int(d["ifindex"]), str(d["ifname"]), d.get("master"),
                                        d.get("link_type") == "loopback") for d in doc}
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: not `ip -j link` output ({type(exc).__name__}: {exc})") from None


def kind_of(name: str, link: Link | None = None, bridges: Iterable[str] = ()) -> str:
    """KINDS of an interface from ``ip -o link`` (a port of a bridge, loopback) or else from its name."""
    if link is not None and link.loopback:
        return "loopback"
    if name in set(bridges):
        return "bridge"
    if link is not None and link.master:
        return "port"
    for kind, pattern in _KIND_PATTERNS:
        if pattern.match(name):
            return kind
    return "unknown" if re.fullmatch(r"(if|idb)\d+|", name) else "other"


def interfaces_of(info: CaptureInfo, packets: pl.DataFrame, links: Mapping[int, Link] | None = None, *,
                  counts: Mapping[Key, int] | None = None) -> list[Interface]:
    """Every interface of one decoded file: those that carried a frame, the pcapng interfaces that carried none,
    and, for a ``tcpdump -i any`` capture with ``links``, the interfaces ``ip -o link`` lists that were silent.
    ``counts``: IP packets per (iface, ifindex) counted as the file was read, instead of ``packets``."""
    links = links or {}
    per_key: Counter[Key] = Counter(counts or {})
    if counts is not None:
        pass
    elif packets.height and "iface" in packets.columns:
        for a, b, n in packets.group_by("iface", "ifindex").len().iter_rows():
            per_key[(int(a), int(b))] = n
    elif packets.height:
        per_key[(0, -1)] = packets.height
    frames = Counter(info.interface_frames) or Counter({(0, -1): info.records})
    keys = set(frames) | set(per_key)
    sll2_blocks = [i for i, lt in enumerate(info.link_types) if lt == 276]
    for i, lt in enumerate(info.link_types):
        if lt != 276 and (i, -1) not in keys:
            keys.add((i, -1))
    if links and len(sll2_blocks) == 1:
        keys |= {(sll2_blocks[0], idx) for idx in links}
    bridges = {link.master for link in links.values() if link.master}
    out = []
    for iface, ifindex in sorted(keys):
        link = links.get(ifindex) if ifindex >= 0 else None
        if ifindex >= 0:
            name = link.name if link else f"if{ifindex}"
        else:
            named = info.if_names[iface] if iface < len(info.if_names) else ""
            name = named or (f"idb{iface}" if len(info.link_types) > 1 else "")
        lt = info.link_types[iface] if iface < len(info.link_types) else -1
        out.append(Interface(path=info.path, iface=iface, ifindex=ifindex, name=name,
                             link_type=LINKTYPE_NAMES.get(lt, f"LINKTYPE_{lt}"), frames=frames.get((iface, ifindex), 0),
                             packets=per_key.get((iface, ifindex), 0), kind=kind_of(name, link, bridges)))
    seen = Counter(i.name for i in out)
    # One name twice (the same index under two SLL2 blocks, two blocks both named eth0): tell them apart.
    return [dataclasses.replace(i, name=f"{i.name}@idb{i.iface}") if seen[i.name] > 1 and i.name else i for i in out]


def parse_names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--inside-if`` / ``--outside-if``: a comma-separated list, or a sequence of names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [v for part in value for v in str(part).split(",")]
    return tuple(dict.fromkeys(v.strip() for v in items if v.strip()))


def resolve(names: Sequence[str], interfaces: Sequence[Interface], path: str, keyword: str) -> list[Interface]:
    """The interfaces ``names`` mean: a name, ``if<N>`` (SLL2 index N, named or not), ``idb<N>`` (pcapng block N) or
    a bare number (an SLL2 index where the file has them, else a pcapng block). InputError for an unknown one, naming
    ``keyword`` (inside_if, outside_if) as the caller gave it."""
    out: list[Interface] = []
    for n in names:
        m = re.fullmatch(r"(if|idb)?(\d+)", n)
        found = [i for i in interfaces if i.name == n]
        if not found and m:
            num = int(m.group(2))
            sll2 = any(i.ifindex >= 0 for i in interfaces)
            by_index = m.group(1) == "if" or (m.group(1) is None and sll2)
            found = [i for i in interfaces if (i.ifindex == num if by_index else (i.iface == num and i.ifindex < 0))]
        if not found:
            known = ", ".join(i.label() for i in interfaces) or "none"
            raise InputError(f"{path}: no interface {n!r} (", setting(keyword), f"); it has {known}")
        out += [i for i in found if i not in out]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Evidence: connections whose first packet crosses the NAT from one interface to another.


@dataclass
class Evidence:
    """What the traffic of one file says about each interface."""

    inside: Counter[Key] = dataclasses.field(default_factory=Counter)
    """Crossings that put the interface before the NAT for egress or after it for inbound (pod side)."""
    outside: Counter[Key] = dataclasses.field(default_factory=Counter)
    """Crossings that put it on the node's far side."""
    crossings: dict[Key, set[tuple[Any, ...]]] = dataclasses.field(default_factory=dict)
    """The connections that crossed at each interface, by their tuple before the NAT (proto, src, sport, dst,
    dport): counted once whatever their copies, SYN retransmissions or echo requests (an echo series is one
    connection)."""
    starts: Counter[Key] = dataclasses.field(default_factory=Counter)
    """Connections started on it by a pod-side (private, not the node's own) address, crossing or not."""
    sources: dict[Key, set[str]] = dataclasses.field(default_factory=dict)
    """Those pod-side sources."""
    translated: dict[Key, set[str]] = dataclasses.field(default_factory=dict)
    """Sources connections started inside carried after the NAT, on the interface where they appeared."""
    packets: pl.DataFrame = dataclasses.field(default_factory=pl.DataFrame)
    """(where, sig, ts_ns, tup, local) of every IP packet (``where``: see where_expr; ``tup``: see _tuple_expr;
    ``local``: see _local_legs)."""
    service_starts: Counter[Key] = dataclasses.field(default_factory=Counter)
    """Connection starts to a ClusterIP (the tuple before kube-proxy's DNAT exists only where the client sent it)."""
    aggregates: frozenset[Key] = frozenset()
    """Interfaces that hold, under the same tuples, the packets of two or more others, and connections started by
    two or more pod-side sources: a bridge beside its ports, whatever its name."""
    past_hook: Counter[Key] = dataclasses.field(default_factory=Counter)
    """Packets on an interface that are a later copy, with the same TTL (bridged, not routed), of a packet on
    another interface under another tuple: the bridge device beside its port sees a pod's packets after
    br_netfilter's PREROUTING hook (a ClusterIP already DNATed to its endpoint; a NodePort reply already
    de-masqueraded to the client, its DNAT not yet undone: two helpers' kernel captures of lab nodeport), the
    port before it. An interface with such packets is no pod's own view when its port is there."""
    start_rows: pl.DataFrame = dataclasses.field(default_factory=pl.DataFrame)
    """(where, sig, ts_ns, tup, local) of each interface's connection starts."""
    destinations: dict[Key, set[str]] = dataclasses.field(default_factory=dict)
    """The destination addresses of each interface's packets (ICMP errors aside)."""
    replies: dict[Key, set[tuple[Any, ...]]] = dataclasses.field(default_factory=dict)
    """The connections that crossed the NAT (by their tuple before it, as ``crossings``) whose replies, under the
    tuple of the node's far side, each interface holds: a reply that leaves, or comes in, by an uplink the
    connection's first packet did not take (asymmetric routing: ``tcpdump -i any`` holds both uplinks)."""

    def copy_share(self, key: Key, taken: Sequence[Key]) -> tuple[float, str, int]:
        """How much of ``key``'s traffic is copies of packets on ``taken``: the same invariant fields within COPY_NS,
        so that look-alike packets of other connections (IP id 0, the same query) are no copies. A bridge's copy
        keeps the tuple; one under another tuple counts too (the bridge device sees a pod's packets past
        br_netfilter's PREROUTING hook: a ClusterIP already DNATed to a backend the node then routes on), except
        the DNATed leg delivered to a pod on the node (``local``: see _local_legs), which nothing else holds
        where the client's veth shows only the Service's tuple, unless ``taken`` holds that leg already (the
        endpoint's veth, then the bridge: the one taken first). Measured on its connection starts, or on its
        packets when it has no start; returns the share, which of the two was measured, and how many of them are
        such DNATed legs."""
        if self.packets.is_empty() or not taken:
            return 0.0, "packets", 0
        theirs = (self.packets.filter(pl.col("where").is_in([_where_value(k) for k in taken]))
                  .select("sig", "tup", "local", pl.col("ts_ns").alias("their_ts")).sort("sig", "their_ts"))
        for what, frame in (("connection starts", self.start_rows), ("packets", self.packets)):
            if frame.is_empty():
                continue
            mine = (frame.filter(pl.col("where") == _where_value(key)).select("sig", "ts_ns", "tup", "local")
                    .sort("sig", "ts_ns"))
            if mine.is_empty():
                continue
            if theirs.is_empty():
                return 0.0, what, 0

            def near(there: pl.DataFrame, by: list[str], mine: pl.DataFrame = mine) -> pl.Series:
                found = mine.join_asof(there.select(*by, "their_ts"), left_on="ts_ns", right_on="their_ts", by=by,
                                       strategy="nearest", tolerance=COPY_NS, check_sortedness=False)
                return found["their_ts"].is_not_null()

            same = near(theirs, ["sig", "tup"])
            held = near(theirs.filter(pl.col("local")), ["sig"])
            anyhow = near(theirs, ["sig"])
            other = anyhow & ~same & ~held
            if (other & ~mine["local"]).any():
                # Past br_netfilter's hook for legs the node routes on: the bridge device, whose DNATed copies are
                # all copies, those of a local endpoint too (its veth holds them without the rest).
                return anyhow.sum() / mine.height, what, 0
            dnated = other & mine["local"]
            return (same | held).sum() / mine.height, what, int(dnated.sum())
        return 0.0, "packets", 0


def where_expr() -> pl.Expr:
    """``where``: a packet's interface (iface, ifindex) as one Int64, iface in the high 32 bits."""
    return ((pl.col("iface").cast(pl.Int64) * (1 << 32)) + (pl.col("ifindex").cast(pl.Int64) & 0xFFFFFFFF)).alias(
        "where")


def _where_value(key: Key) -> int:
    return key[0] * (1 << 32) + (key[1] & 0xFFFFFFFF)


def _aggregates(starts: pl.DataFrame) -> frozenset[Key]:
    """Interfaces B with two or more partners A whose connection starts are nearly all (COPY_SHARE) on B under the
    same tuple and TTL: a bridge, seen beside its ports, whatever its name."""
    if starts.is_empty():
        return frozenset()
    tsig = pl.struct("sig", "src", "dst").hash(seed=0x7473).alias("tsig")
    same = starts.select(where_expr(), tsig, "ttl").unique()
    pairs = same.join(same, on=["tsig", "ttl"], suffix="_b").filter(pl.col("where") != pl.col("where_b"))
    if pairs.is_empty():
        return frozenset()
    sizes = same.group_by("where").len("size")
    shared = pairs.group_by("where", "where_b").len("shared").join(sizes, on="where")
    parts = shared.filter(pl.col("shared") >= COPY_SHARE * pl.col("size")).group_by("where_b").len("parts")
    found = parts.filter(pl.col("parts") >= 2)["where_b"].to_list()
    return frozenset((int(w) >> 32, _signed(int(w) & 0xFFFFFFFF)) for w in found)


def _past_hook(packets: pl.DataFrame) -> Counter[Key]:
    """Evidence.past_hook of every interface: packets that are a later copy (within COPY_NS, same invariant fields
    and TTL) of a packet on another interface under another 5-tuple with the same source. PREROUTING rewrites only
    destinations (DNAT, and SNAT undone on a reply); a copy whose source changed was rewritten on its way out (a
    ClusterIP reply un-DNATed to the client's port: the port is before the hook for the client's own packets), or
    is another packet with the same fields (an IPv6 UDP echo's reply: no IP id, the request's payload). Of two copies
    with one timestamp (microsecond captures), the one later in the file is the later."""
    tup = pl.struct("f_src", "f_sport", "f_dst", "f_dport").hash(seed=0x6870).alias("tup")
    sender = pl.struct("f_src", "f_sport").hash(seed=0x6873).alias("sender")
    p = packets.filter(~pl.col("is_icmp_error")).select(where_expr(), "sig", "ttl", "ts_ns", "frame_no", tup, sender)
    # Only where one packet shows two tuples on two interfaces: most packets look the same everywhere.
    both = (p.group_by("sig", "ttl", "sender").agg(pl.col("where").n_unique().alias("w"),
                                                    pl.col("tup").n_unique().alias("t"))
            .filter((pl.col("w") > 1) & (pl.col("t") > 1)).select("sig", "ttl", "sender"))
    if both.is_empty():
        return Counter()
    cand = p.join(both, on=["sig", "ttl", "sender"])
    later = cand.join(cand, on=["sig", "ttl", "sender"], suffix="_b").filter(
        (pl.col("where") != pl.col("where_b")) & (pl.col("tup") != pl.col("tup_b"))
        & ((pl.col("ts_ns_b") > pl.col("ts_ns"))
           | ((pl.col("ts_ns_b") == pl.col("ts_ns")) & (pl.col("frame_no_b") > pl.col("frame_no"))))
        & (pl.col("ts_ns_b") - pl.col("ts_ns") <= COPY_NS))
    counts = later.select("where_b", "ts_ns_b", "tup_b").unique().group_by("where_b").len()
    return Counter({(int(w) >> 32, _signed(int(w) & 0xFFFFFFFF)): n for w, n in counts.iter_rows()})


def _tuple_expr() -> pl.Expr:
    """``tup``: a hash of a packet's flow tuple (f_src, f_sport, f_dst, f_dport as they are on the wire). Hashes
    compare within one frame's rows (and those selected from them: its connection starts), as the column types
    are the same there."""
    return pl.struct("f_src", "f_sport", "f_dst", "f_dport").hash(seed=0x7475).alias("tup")


def _to_expr() -> pl.Expr:
    """``to``: a hash of a packet's invariant fields and its destination (sig, f_dst, f_dport): its copies on the
    way to one end, however its source was rewritten."""
    return pl.struct("sig", "f_dst", "f_dport").hash(seed=0x746F).alias("to")


def _local_legs(rows: pl.DataFrame, routed: pl.Series, pod_side: Callable[[str], bool]) -> pl.DataFrame:
    """``rows`` (with f_dst and ``to``: _to_expr) with ``local``: the packet goes to a pod-side address and no copy
    of it on its way there (the same ``to``) had its TTL lowered anywhere in the file: delivered to a pod on the
    node without being routed (the leg kube-proxy DNATed to a Service's endpoint on the same node, bridged: on
    that pod's veth and the bridge only). ``routed``: the ``to`` values seen with two TTLs. By destination, not by
    sig alone: two identical IPv6 queries (no IP id) to two Services, one endpoint on the node and one routed on,
    share a sig."""
    dsts = rows["f_dst"].drop_nulls().unique()
    pods = dsts.filter(pl.Series([pod_side(d) for d in dsts.cast(pl.String).to_list()], dtype=pl.Boolean))
    return rows.with_columns((pl.col("f_dst").is_in(pods.implode()) & ~pl.col("to").is_in(routed.implode()))
                             .fill_null(False).alias("local"))


def _signed(u32: int) -> int:
    return u32 - (1 << 32) if u32 >= 1 << 31 else u32


def _start_rows(packets: pl.DataFrame) -> pl.DataFrame:
    """Each interface's connection starts: TCP SYNs, ICMP echo requests, a UDP flow's first datagram."""
    err = pl.col("is_icmp_error")
    syn = (pl.col("f_proto") == 6) & ((pl.col("tcp_flags") & 0x12) == 0x02)
    echo = ((pl.col("proto") == 1) & (pl.col("icmp_type") == 8)) | ((pl.col("proto") == 58)
                                                                      & (pl.col("icmp_type") == 128))
    flow = ["iface", "ifindex", "f_src", "f_sport", "f_dst", "f_dport"]
    udp = (pl.col("f_proto") == 17) & pl.struct(flow).is_first_distinct()
    rows = packets.filter(~err & (syn.fill_null(False) | echo.fill_null(False) | udp))
    # A datagram is no start where the opposite direction was seen before it, on any interface (under the NAT's
    # tuple too): replies that come in on an interface their request did not leave by (asymmetric routing).
    tuple_ = ["f_src", "f_sport", "f_dst", "f_dport"]
    first = packets.filter(pl.col("f_proto") == 17).group_by(tuple_).agg(pl.col("ts_ns").min().alias("_first"))
    reverse = first.rename({"f_src": "f_dst", "f_dst": "f_src", "f_sport": "f_dport", "f_dport": "f_sport"})
    rows = rows.join(reverse, on=tuple_, how="left").filter(
        (pl.col("f_proto") != 17) | pl.col("_first").is_null() | (pl.col("_first") > pl.col("ts_ns")))
    return rows.select("iface", "ifindex", "ts_ns", "sig", "ttl", _tuple_expr(), _to_expr(),
                       pl.col("f_src").cast(pl.String).alias("src"),
                       pl.col("f_dst").cast(pl.String).alias("dst"), pl.col("f_proto").alias("proto"),
                       pl.col("f_sport").alias("sport"), pl.col("f_dport").alias("dport"))


def _replies_at(packets: pl.DataFrame, far_legs: Mapping[tuple[Any, ...], tuple[Any, ...]],
                ) -> dict[Key, set[tuple[Any, ...]]]:
    """Evidence.replies: for each interface, the crossings whose reply tuple its packets carry. ``far_legs`` maps
    a reply's tuple (proto, src, sport, dst, dport: the far side's tuple turned round) to the crossing's tuple
    before the NAT. ICMP errors count as replies of the flow they quote (natproof.connections.flow_columns)."""
    if not far_legs or packets.is_empty():
        return {}
    legs = pl.DataFrame([(*reply, i) for i, reply in enumerate(far_legs)],
                        schema={"f_proto": pl.Int64, "f_src": pl.String, "f_sport": pl.Int64, "f_dst": pl.String,
                                "f_dport": pl.Int64, "_leg": pl.Int64}, orient="row")
    mine = packets.select("iface", "ifindex", pl.col("f_proto").cast(pl.Int64), pl.col("f_src").cast(pl.String),
                          pl.col("f_sport").cast(pl.Int64), pl.col("f_dst").cast(pl.String),
                          pl.col("f_dport").cast(pl.Int64)).unique()
    hits = mine.join(legs, on=["f_proto", "f_src", "f_sport", "f_dst", "f_dport"]).select("iface", "ifindex", "_leg")
    crossed = list(far_legs.values())
    out: dict[Key, set[tuple[Any, ...]]] = {}
    for a, b, leg in hits.unique().iter_rows():
        out.setdefault((int(a), int(b)), set()).add(crossed[leg])
    return out


def _private(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return any(ip.version == n.version and ip in n for n in _PRIVATE)


def gather_evidence(packets: pl.DataFrame, pod_networks: Sequence[Network] = (),
                    service_networks: Sequence[Network] = ()) -> Evidence:
    """Where connections cross the NAT between this file's interfaces.

    A connection's first packet (SYN, echo request, a UDP flow's first datagram) seen on two interfaces with a TTL
    one lower on the second crossed the node's routing step, where NAT happens; the copy with the higher TTL is the
    earlier one. Egress (a pod-side source, by ``pod_networks`` or else any private address that is not one the
    NAT translated to) puts the earlier interface inside and the later outside; inbound (rewritten to a pod-side
    destination from an address that is not, as a NodePort does) the other way round. Copies with equal TTL were
    bridged: the same side."""
    from natproof.connections import split_never_forwarded

    ev = Evidence()
    if packets.is_empty():
        return ev
    # Not unique(): a copy share reads each interface's part once, and most interfaces need none.
    every = packets.select(where_expr(), "sig", "ts_ns", _tuple_expr(), "f_dst", _to_expr(), "ttl", "is_icmp_error")
    ev.packets = every.select("where", "sig", "ts_ns", "tup", pl.lit(False).alias("local"))
    starts, _ = split_never_forwarded(packets.filter(~pl.col("is_icmp_error")).select(
        "iface", "ifindex", "ts_ns", "sig", "ttl", "proto", "icmp_type", "tcp_flags", "is_icmp_error",
        "f_proto", "f_src", "f_sport", "f_dst", "f_dport"))
    starts = _start_rows(starts)
    ev.start_rows = starts.select(where_expr(), "sig", "ts_ns", "tup", pl.lit(False).alias("local"))
    kept = ["where", "sig", "ts_ns", "tup", "local"]
    if starts.is_empty():
        return ev
    for a, b, dst in (packets.filter(~pl.col("is_icmp_error")).select("iface", "ifindex", "f_dst").unique()
                      .drop_nulls().iter_rows()):
        ev.destinations.setdefault((a, b), set()).add(str(dst))
    shares_all = _aggregates(starts)
    ev.past_hook = _past_hook(packets)
    by_sig = starts.group_by("sig").agg(
        pl.struct("iface", "ifindex").n_unique().alias("where"), pl.col("ttl").max().alias("hi"),
        pl.col("ttl").min().alias("lo"))
    routed = by_sig.filter((pl.col("where") > 1) & (pl.col("hi") > pl.col("lo")))
    rows = starts.join(routed.select("sig", "hi"), on="sig")
    pre = rows.filter(pl.col("ttl") == pl.col("hi"))
    post = rows.filter(pl.col("ttl") < pl.col("hi"))
    ends = pre.group_by("sig").agg(pl.col("src").first().alias("pre_src"), pl.col("dst").first().alias("pre_dst"),
                                   pl.struct("proto", "src", "sport", "dst", "dport").first().alias("flow")).join(
        post.group_by("sig").agg(pl.col("src").first().alias("post_src"), pl.col("dst").first().alias("post_dst"),
                                 pl.struct("proto", "src", "sport", "dst", "dport").first().alias("post_flow")),
        on="sig")
    # The addresses the NAT translated sources to are the node's own (eth0's address, the bridge address of a
    # NodePort's masquerade), never a pod's, even where they are private too.
    node_owned = {p for a, p in zip(ends["pre_src"].to_list(), ends["post_src"].to_list(), strict=True) if a != p}
    # A source the NAT rewrote while keeping the destination (SNAT of egress) is a pod's, whatever the address
    # looks like: NAT66 between global prefixes (the lab's nat66: pods in 2001:db8:244::/64, no private range).
    snatted = {a for a, p, d, e in zip(ends["pre_src"].to_list(), ends["post_src"].to_list(),
                                       ends["pre_dst"].to_list(), ends["post_dst"].to_list(), strict=True)
               if a != p and d == e}

    @functools.cache
    def service(addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        return any(ip.version == n.version and ip in n for n in service_networks)

    @functools.cache
    def pod_side(addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        if pod_networks:
            return any(ip.version == n.version and ip in n for n in pod_networks)
        return (_private(addr) or addr in snatted) and addr not in node_owned and not service(addr)

    # The DNATed leg of a Service whose endpoint is a pod on this node, delivered without routing, is no copy of
    # the client's packets under the Service's tuple (Evidence.copy_share). Without pod networks given, a global
    # address in the subnet (HIDDEN_PREFIX) of a source the NAT rewrote is a pod's too (tests/variants/clusterip6:
    # pod2 2001:db8:244::11 beside pod1 ::10, masqueraded), as natproof.networks infers it later.
    subnets = () if pod_networks else tuple(
        ipaddress.ip_network(f"{a}/{HIDDEN_PREFIX[ipaddress.ip_address(a).version]}", strict=False) for a in snatted)

    def pod_here(addr: str) -> bool:
        if pod_side(addr):
            return True
        ip = ipaddress.ip_address(addr)
        return any(ip.version == n.version and ip in n for n in subnets) and addr not in node_owned

    routed = (every.filter(~pl.col("is_icmp_error")).group_by("to")
              .agg((pl.col("ttl").max() > pl.col("ttl").min()).alias("r")).filter(pl.col("r"))["to"])
    ev.packets = _local_legs(every, routed, pod_here).select(kept)
    del every
    ev.start_rows = _local_legs(starts.select(where_expr(), "sig", "ts_ns", "tup", "to", pl.col("dst").alias("f_dst")),
                                routed, pod_here).select(kept)
    where_pre = pre.group_by("sig").agg(pl.struct("iface", "ifindex").unique().alias("k"))
    where_post = post.group_by("sig").agg(pl.struct("iface", "ifindex").unique().alias("k"))
    pre_at = {s: [(d["iface"], d["ifindex"]) for d in k] for s, k in where_pre.iter_rows()}
    post_at = {s: [(d["iface"], d["ifindex"]) for d in k] for s, k in where_post.iter_rows()}
    # Each crossing's tuple on the node's far side (proto, src, sport, dst, dport): its reply runs the other way.
    far_legs: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for sig, pre_src, pre_dst, post_src, post_dst, flow, post_flow in ends.select(
            "sig", "pre_src", "pre_dst", "post_src", "post_dst", "flow", "post_flow").iter_rows():
        if pre_dst != post_dst and pod_side(post_dst) and not pod_side(pre_dst) and not service(pre_dst):
            inside, outside = post_at[sig], pre_at[sig]  # inbound: DNAT to a pod (NodePort, an ALG's expectation)
            far = flow
        elif pod_side(post_src) and pod_side(post_dst):
            continue  # pod to pod, through a ClusterIP or not: no crossing between inside and outside
        elif pod_side(pre_src) and (not pod_side(post_src) or pre_src == post_src):
            inside, outside = pre_at[sig], post_at[sig]  # egress, translated or not
            far = post_flow
            for k in outside:
                ev.translated.setdefault(k, set()).add(post_src)
        elif pod_side(post_dst) and not pod_side(pre_src):
            inside, outside = post_at[sig], pre_at[sig]
            far = flow
        else:
            continue
        for k in inside:
            ev.inside[k] += 1
        for k in outside:
            ev.outside[k] += 1
        for k in (*inside, *outside):
            ev.crossings.setdefault(k, set()).add(tuple(flow.values()))
        far_legs[(far["proto"], far["dst"], far["dport"], far["src"], far["sport"])] = tuple(flow.values())
    ev.replies = _replies_at(packets, far_legs)
    for a, b, dst, n in starts.group_by("iface", "ifindex", "dst").len().iter_rows():
        if service(dst):
            ev.service_starts[(a, b)] += n
    by_source = starts.group_by("iface", "ifindex", "src").len()
    for a, b, src, n in by_source.iter_rows():
        if pod_side(src):
            ev.starts[(a, b)] += n
            ev.sources.setdefault((a, b), set()).add(src)
    # A bridge holds its ports' packets and, unlike a pod's veth (which may hold a peer pod's copies too), the
    # connections of several pods.
    ev.aggregates = frozenset(k for k in shares_all if len(ev.sources.get(k, ())) >= 2)
    return ev


# ---------------------------------------------------------------------------------------------------------------
# Choosing.


_PREFERENCE = {"port": 0, "bridge": 1, "unknown": 2, "other": 2, "uplink": 3, "loopback": 4}


def _addresses(addrs: Iterable[str], most: int = 3) -> str:
    shown = sorted(addrs, key=ipaddress.ip_address)
    return ", ".join(shown[:most]) + (f" and {len(shown) - most} more" if len(shown) > most else "")


def _names(ifs: Iterable[Interface]) -> str:
    return ", ".join(i.name or i.label() for i in ifs)


def _without_copies(order: list[Interface], ev: Evidence,
                    ) -> tuple[list[Interface], dict[Key, str], dict[Key, tuple[int, str]]]:
    """``order`` less the interfaces whose packets are copies of those already taken (COPY_SHARE): a bridge and
    its ports, the veth of a pod that another pod on the node calls. Also returns, for each interface taken, how
    many of its connection starts (or packets, as the second item says) are a Service's leg DNATed to a pod on the
    node that the point held only under the Service's tuple (Evidence.copy_share)."""
    taken: list[Interface] = []
    notes: dict[Key, str] = {}
    dnated: dict[Key, tuple[int, str]] = {}
    for i in order:
        share, what, legs = ev.copy_share(i.key, [t.key for t in taken])
        if share >= COPY_SHARE:
            most = "all" if share == 1 else f"{share:.0%} of"
            notes[i.key] = (f"left out: {most} its {what} are copies of packets on {_names(taken)} (a bridge beside "
                            "its ports, the veth of a pod another pod calls)")
            continue
        if legs:
            dnated[i.key] = (legs, what)
        taken.append(i)
    return taken, notes, dnated


def _auto(role: str, cands: list[Interface], ev: Evidence, *, whole_file_role: bool) -> tuple[list[Interface], str,
                                                                                           dict[Key, str]]:
    """Choose ``role``'s interfaces among ``cands``: (chosen, why, notes on those left out)."""
    mine, theirs = (ev.inside, ev.outside) if role == "inside" else (ev.outside, ev.inside)
    usable = [i for i in cands if i.kind != "loopback"]
    voted = [i for i in usable if mine[i.key] > theirs[i.key]]
    more: list[Interface] = []
    if voted:
        n = len(set().union(*(ev.crossings.get(i.key, set()) for i in voted)))
        if role == "inside":
            srcs = set().union(*(ev.sources.get(i.key, set()) for i in voted))
            why = (f"pod side of {n} connection(s) that crossed the NAT (from {_addresses(srcs)}; TTL one lower past "
                   "the node)")
        else:
            trans = set().union(*(ev.translated.get(i.key, set()) for i in voted))
            shown = f" (as {_addresses(trans)}" if trans else " ("
            why = f"node side of {n} connection(s) that crossed the NAT{shown}; TTL one lower past the node)"
        if role == "inside":
            # Pods whose connections never crossed (dropped on the node, pod to pod) are inside all the same.
            more = [i for i in usable if i not in voted and i.packets and not theirs[i.key]
                    and (i.kind in ("port", "bridge") or (i.kind == "unknown" and ev.starts[i.key]))]
        else:
            # Replies that come in to the NAT's address over another uplink (asymmetric routing: a helper's -i any
            # capture of the asymmetric-reply scenario, its eth1), or that leave by one under the node side's tuple
            # (a NodePort's replies routed to the client by a second uplink: tests/variants/asym-nodeport), are the
            # node side too, though nothing starts there.
            more = [i for i in usable if i not in voted and i.kind not in ("port", "bridge") and not ev.inside[i.key]
                    and (trans & ev.destinations.get(i.key, set()) or ev.replies.get(i.key))]
        base = voted + more
    else:
        kinds = ("port", "bridge") if role == "inside" else ("uplink",)
        named = [i for i in usable if i.kind in kinds and (i.packets or role == "outside")]
        if named and role == "outside" and not whole_file_role:
            named = [max(named, key=lambda i: (i.frames, -i.iface, -i.ifindex))]
        if named:
            what = "a pod's veth or its bridge" if role == "inside" else "the node's uplink"
            why = f"no connection crossed the NAT between the interfaces; chosen by name ({what})"
            base = named
        elif role == "inside" and (started := [i for i in usable if ev.starts[i.key]]):
            srcs = set().union(*(ev.sources.get(i.key, set()) for i in started))
            why = f"private sources start connections here ({_addresses(srcs)}); no connection crossed the NAT"
            base = started
        elif role == "outside" and (rest := [i for i in usable if i.kind not in ("port", "bridge")]):
            base = [max(rest, key=lambda i: (i.frames, -i.iface, -i.ifindex))]
            why = "no connection crossed the NAT and no name says uplink; the busiest other interface"
        else:
            return [], "", {}
    order = sorted(base, key=lambda i: (_PREFERENCE[i.kind], i.key in ev.aggregates, ev.past_hook[i.key] > 0,
                                        -ev.service_starts[i.key], -mine[i.key], -i.packets, i.name))
    chosen, notes, dnated = _without_copies(order, ev)
    added = [i for i in chosen if i in more]
    if role == "inside" and (legs := [i for i in chosen if i.key in dnated]):
        # A Service's endpoint on the node: the leg after kube-proxy's DNAT is on its veth (and the bridge) only.
        why += "".join(f"; {_names([i])}: {dnated[i.key][0]} {dnated[i.key][1]} there are the leg a Service "
                       "DNATed to a pod on the node (elsewhere only under the Service's tuple)" for i in legs)
        added = [i for i in added if i not in legs]
    if added and role == "inside":
        why += f"; {_names(added)}: the same side (by name, or pod-side sources start connections there)"
    elif added:
        why += "".join(f"; {_names([i])}: {_another_way_back(i, ev)}" for i in added)
    return chosen, why, notes


def _another_way_back(i: Interface, ev: Evidence) -> str:
    """Why an interface no connection crossed at is on the node side all the same (_auto's ``more``)."""
    if replied := ev.replies.get(i.key):
        return (f"it holds the replies of {len(replied)} connection(s) that crossed the NAT, under their node-side "
                "tuples (another way back)")
    return "replies to that address come in there (another way back)"


@dataclass(frozen=True)
class Plan:
    """The two observation points, and every interface of the file(s) with its place."""

    inside: ObservationPoint
    outside: ObservationPoint
    interfaces: tuple[Interface, ...]


def _cannot(path: str, role: str, interfaces: Sequence[Interface]) -> InputError:
    what = "the pod side (a veth or cni0)" if role == "inside" else "the node's uplink (eth0)"
    return InputError(f"{path}: cannot tell which interface is the {role}, {what}; name it with ",
                      setting(f"{role}_if"), f" (interfaces: {', '.join(i.label() for i in interfaces) or 'none'})")


def _point(role: str, path: str, chosen: Sequence[Interface], how: str, why: str) -> ObservationPoint:
    return ObservationPoint(role, path, tuple(chosen), how, why)


def _marked(interfaces: Sequence[Interface], points: Sequence[ObservationPoint], notes: Mapping[Key, str],
            default: str) -> tuple[Interface, ...]:
    out = []
    for i in interfaces:
        role = next((p.role for p in points if i.key in p.keys and p.path == i.path), None)
        if role is not None:
            p = next(p for p in points if p.role == role)
            note = {"given": f"{role}: given", "file": f"{role}: the whole file"}.get(p.how, f"{role}: chosen")
        elif i.kind == "loopback":
            note = "left out: loopback"
        else:
            note = notes.get(i.key) or default
        out.append(dataclasses.replace(i, point=role, note=note))
    return tuple(out)


def several_interfaces(info: CaptureInfo, packets: pl.DataFrame, links: Mapping[int, Link] | None = None, *,
                       counts: Mapping[Key, int] | None = None) -> bool:
    """Whether one decoded file carried frames on two interfaces or more (choose_points can split it)."""
    return len([i for i in interfaces_of(info, packets, links, counts=counts) if i.frames or i.packets]) >= 2


def choose_points(info: CaptureInfo, packets: pl.DataFrame, *, inside_if: Sequence[str] = (),
                  outside_if: Sequence[str] = (), links: Mapping[int, Link] | None = None,
                  pod_networks: Sequence[Network] = (), service_networks: Sequence[Network] = ()) -> Plan:
    """Both observation points within one capture of several interfaces (``tcpdump -i any``, dumpcap with several
    ``-i``). Given names win; the rest is chosen from where connections cross the NAT (see gather_evidence), then
    from the names (KINDS). One interface of a kind is kept where several hold the same packets (a bridge and its
    ports: the ports). InputError when the file has one interface, or a name is unknown or on both sides."""
    path = info.path
    interfaces = interfaces_of(info, packets, links)
    if len([i for i in interfaces if i.frames or i.packets]) < 2:
        named = [i for i in interfaces if i.frames or i.packets][:1] or interfaces[:1]
        only = named[0].label() if named and named[0].name else info.link_type
        raise InputError(f"{path}: a capture of one interface ({only}) and no second capture: give the other side's "
                         "too (", Said("correlate(inside, outside)", "natproof correlate INSIDE OUTSIDE",
                                       "the node's inside and outside instead of capture"), "), or the "
                         "node's conntrack record for the other side (", setting("conntrack", metavar="FILE"), "), or "
                         "one capture of several interfaces (tcpdump -i any, dumpcap -i A -i B)")
    given_in = resolve(inside_if, interfaces, path, "inside_if")
    given_out = resolve(outside_if, interfaces, path, "outside_if")
    if both := [i for i in given_in if i in given_out]:
        raise InputError(f"{path}: {_names(both)} given as both ", setting("inside_if"), " and ", setting("outside_if"))
    ev = gather_evidence(packets, pod_networks, service_networks)
    notes: dict[Key, str] = {}
    if given_in:
        inside = _point("inside", path, given_in, "given", "given (--inside-if)")
    else:
        cands = [i for i in interfaces if i not in given_out]
        chosen, why, notes_in = _auto("inside", cands, ev, whole_file_role=False)
        if not chosen:
            raise _cannot(path, "inside", interfaces)
        inside = _point("inside", path, chosen, "chosen", why)
        notes |= notes_in
    if given_out:
        outside = _point("outside", path, given_out, "given", "given (--outside-if)")
    else:
        # What the inside left out as copies of its own packets is the inside's, not a candidate outside.
        cands = [i for i in interfaces if i.key not in inside.keys and i.key not in notes]
        chosen, why, notes_out = _auto("outside", cands, ev, whole_file_role=False)
        if not chosen:
            raise _cannot(path, "outside", interfaces)
        outside = _point("outside", path, chosen, "chosen", why)
        notes |= notes_out
    for i in interfaces:
        if (i.key not in inside.keys | outside.keys and i.key not in notes and i.kind not in ("port", "bridge")
                and (replied := ev.replies.get(i.key))):
            notes[i.key] = (f"left out: it holds the replies of {len(replied)} connection(s) that crossed the NAT, "
                            "under their node-side tuples (--outside-if takes it in)")
    default = "left out: no connection crossed the NAT to or from it (--inside-if / --outside-if take it in)"
    return Plan(inside, outside, _marked(interfaces, (inside, outside), notes, default))


def choose_point(role: str, info: CaptureInfo, packets: pl.DataFrame, *, names: Sequence[str] = (),
                 links: Mapping[int, Link] | None = None, pod_networks: Sequence[Network] = (),
                 service_networks: Sequence[Network] = (), counts: Mapping[Key, int] | None = None,
                 ) -> tuple[ObservationPoint, tuple[Interface, ...]]:
    """One side's observation point in a file given for that side (the two-file form): the whole file when it holds
    one interface; else the interfaces ``names`` give, or those of the side's kind (pod-side names for inside,
    uplinks for outside; loopback never) less copies of each other's packets."""
    path = info.path
    option = "--inside-if" if role == "inside" else "--outside-if"
    interfaces = interfaces_of(info, packets, links, counts=counts)
    carrying = [i for i in interfaces if i.frames or i.packets]
    if names:
        chosen = resolve(names, interfaces, path, f"{role}_if")
        point = _point(role, path, chosen, "given", f"given ({option})")
        return point, _marked(interfaces, (point,), {}, f"left out: not in {option}")
    if len(carrying) <= 1:
        only = carrying or interfaces[:1]
        point = _point(role, path, only, "file", "the whole file (one interface)")
        return point, _marked(interfaces, (point,), {}, "left out: no frame on it")
    ev = gather_evidence(packets, pod_networks, service_networks)
    other = ("uplink",) if role == "inside" else ("port", "bridge")
    cands = [i for i in carrying if i.kind not in other and i.kind != "loopback"] or \
        [i for i in carrying if i.kind != "loopback"]
    order = sorted(cands, key=lambda i: (_PREFERENCE[i.kind], i.key in ev.aggregates, -ev.service_starts[i.key],
                                         -i.packets, i.name))
    chosen, notes, _ = _without_copies(order, ev)
    if not chosen:
        raise _cannot(path, role, interfaces)
    kinds = sorted({i.kind for i in chosen})
    why = (f"the file's {'/'.join(kinds)} interfaces (given as the {role} capture; the other side's kind and "
           "loopback left out)")
    point = _point(role, path, chosen, "chosen", why)
    left = f"left out: {'an uplink' if role == 'inside' else 'pod side'} in the {role} capture (or loopback)"
    return point, _marked(interfaces, (point,), notes, left)


# ---------------------------------------------------------------------------------------------------------------
# Splitting a file's packets into a point's.


LEFT_OUT_SCHEMA = {"f_proto": pl.UInt8(), "f_src": pl.String(), "f_sport": pl.UInt16(), "f_dst": pl.String(),
                   "f_dport": pl.UInt16(), "interface": pl.String(), "packets": pl.UInt32()}
"""left_out_flows' columns: one flow's packets on one interface left out of both points."""


def left_out_flows(packets: pl.DataFrame, plan: Plan) -> pl.DataFrame:
    """The packets a file of several interfaces holds on interfaces ``plan`` left out of both observation points,
    by flow (f_proto, f_src, f_sport, f_dst, f_dport, as the packets carry them) and interface (its name, or
    label): LEFT_OUT_SCHEMA rows. Only the node-side kinds count (an uplink, or an interface no name places):
    loopback, and pod veths and bridges (which hold copies of the inside's packets), never do; nor do ICMP errors
    (their flow is the one they quote). natproof.assemble reads a connection's packets among them under its
    outside tuple: a second uplink its replies, or its initiator's packets, took (tests/variants/asym-nodeport given
    ``--outside-if eth0``), so that what the file holds there is read as another path, never as a drop."""
    taken = plan.inside.keys | plan.outside.keys
    names = {_where_value(i.key): i.name or i.label() for i in plan.interfaces
             if i.key not in taken and i.kind not in ("loopback", "port", "bridge") and i.packets}
    if not names or packets.is_empty():
        return pl.DataFrame(schema=LEFT_OUT_SCHEMA)
    rows = packets.filter(~pl.col("is_icmp_error")).with_columns(where_expr()).filter(
        pl.col("where").is_in(list(names)))
    # A copy of a packet the outside holds (the same invariant fields within COPY_NS: an overlay's tunnel device
    # beside the uplink that carries it encapsulated, a bond's port) took no other path.
    outside = (packets.filter(where_expr().is_in([_where_value(k) for k in plan.outside.keys]))
               .select("sig", pl.col("ts_ns").alias("_their")).sort("sig", "_their"))
    if rows.height and outside.height:
        near = rows.sort("sig", "ts_ns").join_asof(outside, left_on="ts_ns", right_on="_their", by="sig",
                                                   strategy="nearest", tolerance=COPY_NS, check_sortedness=False)
        rows = near.filter(pl.col("_their").is_null())
    return (rows.group_by("where", "f_proto", "f_src", "f_sport", "f_dst", "f_dport").len("packets")
            .with_columns(pl.col("where").replace_strict(names, return_dtype=pl.String).alias("interface"))
            .select([pl.col(c).cast(t) for c, t in LEFT_OUT_SCHEMA.items()]))


def split(packets: pl.DataFrame, point: ObservationPoint, *, whole_file: bool = False) -> tuple[pl.DataFrame, int]:
    """The packets of ``point`` (rows of its interfaces), each packet once: a copy of the same packet under the same
    tuple and TTL on another of its interfaces within COPY_NS (pod to pod, on both pods' veths) is dropped. Returns
    (packets, copies dropped). The frame needs iface, ifindex, ts_ns, sig, ttl and the flow columns."""
    if whole_file or point.how == "file":
        return packets, 0
    keys = point.keys
    mine = packets.filter(where_expr().is_in([_where_value(k) for k in keys]))
    if len(keys) < 2 or mine.height < 2:
        return mine, 0
    cols = ["sig", "f_src", "f_sport", "f_dst", "f_dport", "ttl"]
    order = mine.with_row_index("_row").with_columns(where_expr()).sort([*cols, "ts_ns", "_row"])
    same = pl.all_horizontal([(pl.col(c) == pl.col(c).shift(1)).fill_null(False) for c in cols])
    other_if = pl.col("where") != pl.col("where").shift(1)
    near = (pl.col("ts_ns") - pl.col("ts_ns").shift(1)) <= COPY_NS
    dup_rows = order.filter(same & other_if.fill_null(False) & near.fill_null(False))["_row"]
    if dup_rows.is_empty():
        return mine, 0
    keep = ~pl.int_range(mine.height, dtype=pl.UInt32).is_in(dup_rows.implode())
    return mine.filter(keep), dup_rows.len()


def point_info(info: CaptureInfo, point: ObservationPoint, *, first: bool = True) -> CaptureInfo:
    """The CaptureInfo of one observation point of a file: frames and skipped frames of its interfaces only (frames
    lost to a malformed block, which belong to no interface, go to the ``first`` point). Times, format and warnings
    are the file's: every interface was captured for the file's whole span. Its ``cut_flows`` are none: they are
    kept for the file, not by interface, and a point must not take another's for its own."""
    if point.how == "file":
        return info
    keys = point.keys
    skipped: Counter[str] = Counter()
    for (a, b, reason), n in info.interface_skipped.items():
        if (a, b) in keys:
            skipped[reason] += n
    if first:
        attributed: Counter[str] = Counter()
        for (_, _, reason), n in info.interface_skipped.items():
            attributed[reason] += n
        skipped.update({r: n - attributed[r] for r, n in info.skipped.items() if n > attributed[r]})
    blocks = sorted({a for a, _ in keys})
    return dataclasses.replace(
        info, link_types=[info.link_types[a] for a in blocks if a < len(info.link_types)],
        if_names=[info.if_names[a] for a in blocks if a < len(info.if_names)],
        records=sum(n for k, n in info.interface_frames.items() if k in keys),
        truncated_records=info.truncated_records if first else 0, skipped=skipped,
        fallback_frames=info.fallback_frames if first else 0,
        interface_frames=Counter({k: n for k, n in info.interface_frames.items() if k in keys}),
        interface_skipped=Counter({k: n for k, n in info.interface_skipped.items() if k[:2] in keys}),
        warnings=list(info.warnings), cut_flows={})
