"""explain: which header fields the NAT changed in a connection's packets, pair by pair, and its table entry."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from natproof.capture import LINKTYPE_NAMES, Record, read_frames
from natproof.contracts import epoch_seconds
from natproof.decode import DEFAULT_OVERLAY, MAX_ENCAP_DEPTH, Overlay, Skip, decapsulate, link_payload
from natproof.errors import OPTIONS, InputError, Said, setting
from natproof.report.export import conntrack_line
from natproof.result import TUPLE_FIELDS, Result

SCHEMA = "natproof.explain/1"

FIELD_LABELS = {
    "src_mac": "source MAC", "dst_mac": "destination MAC", "underlay": "overlay (outer packet)",
    "src": "IP source", "dst": "IP destination", "ttl": "TTL", "hop_limit": "hop limit", "ip_id": "IP id",
    "ip_len": "IP length", "ip_checksum": "IP checksum", "sport": "source port", "dport": "destination port",
    "icmp_id": "ICMP echo id", "l4_checksum": "L4 checksum", "tcp_seq": "TCP seq", "tcp_ack": "TCP ack",
}
"""Every field explain compares, in the order it lists them, with how the table names it. ``underlay``: the outer
packet an overlay packet came in (natproof.decode.underlay_label), null when seen as it is; every field after it
is the inner packet's."""

_SHIFTED = ("tcp_seq", "tcp_ack")


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _addr(version: int, raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if version == 4 else socket.AF_INET6, raw)


def header_fields(linktype: int, data: bytes, overlay: Overlay = DEFAULT_OVERLAY) -> dict[str, Any]:
    """The header fields of one captured frame that NAT may touch (FIELD_LABELS' keys; a field the frame does not
    carry is absent): Ethernet addresses (EN10MB only), the outer packet of an overlay, IP addresses, TTL or hop
    limit, IPv4 id, length and checksum, ports (the ICMP echo identifier), the transport checksum (as captured:
    checksum offload leaves locally made packets' wrong, so never judged), TCP sequence and acknowledgement
    numbers. Checksums read 0x1234. Raises Skip for a frame that carries no IP packet."""
    out: dict[str, Any] = {}
    if linktype == 1 and len(data) >= 14:
        out["dst_mac"], out["src_mac"] = _mac(data[0:6]), _mac(data[6:12])
    version, ipb, _ = link_payload(linktype, data)
    out["underlay"] = None
    for _ in range(MAX_ENCAP_DEPTH):
        inner = decapsulate(version, ipb, overlay)
        if inner is None:
            break
        version, ipb, label = inner
        out["underlay"] = out["underlay"] or label
    if version == 4:
        if len(ipb) < 20:
            raise Skip("malformed")
        hl = (ipb[0] & 0x0F) * 4
        ip_len, ip_id, ttl, proto, csum = struct.unpack_from("!2xHH2xBBH", ipb)
        out |= {"src": _addr(4, ipb[12:16]), "dst": _addr(4, ipb[16:20]), "ttl": ttl, "ip_id": ip_id,
                "ip_len": ip_len, "ip_checksum": f"0x{csum:04x}"}
        l4 = ipb[hl:]
    else:
        if len(ipb) < 40:
            raise Skip("malformed")
        plen, proto, hlim = struct.unpack_from("!4xHBB", ipb)
        out |= {"src": _addr(6, ipb[8:24]), "dst": _addr(6, ipb[24:40]), "hop_limit": hlim, "ip_len": plen + 40}
        l4 = ipb[40:]  # extension headers: the transport fields below are then not read
    if proto == 6 and len(l4) >= 18:
        sport, dport, seq, ack, csum = struct.unpack_from("!HHII4xH", l4)
        out |= {"sport": sport, "dport": dport, "l4_checksum": f"0x{csum:04x}", "tcp_seq": seq, "tcp_ack": ack}
    elif proto == 17 and len(l4) >= 8:
        sport, dport, csum = struct.unpack_from("!HH2xH", l4)
        out |= {"sport": sport, "dport": dport, "l4_checksum": f"0x{csum:04x}"}
    elif proto in (1, 58) and len(l4) >= 4:
        icmp_type, csum = l4[0], struct.unpack_from("!H", l4, 2)[0]
        if icmp_type in (0, 8, 128, 129) and len(l4) >= 6:
            out["icmp_id"] = struct.unpack_from("!H", l4, 4)[0]
        out["l4_checksum"] = f"0x{csum:04x}"
    return out


@dataclass(frozen=True)
class End:
    """One packet of a pair: where it was seen and its header fields."""

    observation_point: str
    frame: int
    ts_ns: int
    """On the inside capture's clock (an outside packet's time less the clock offset)."""
    link_type: str
    fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"observation_point": self.observation_point, "frame": self.frame, "ts": epoch_seconds(self.ts_ns),
                "link_type": self.link_type}


@dataclass(frozen=True)
class Pair:
    """One packet before the NAT and the same packet after it, and what differs."""

    kind: str
    """"egress" (the initiator's first packet that crossed, the evidence's egress pair), "reply" (the first reply
    that crossed) or "frame" (the pair of a frame asked for)."""
    before: End
    """The copy seen first on the packet's way: the initiator's side for its own packets, the far side for
    replies."""
    after: End
    shift_sign: int
    """+1 when ``after`` is the outside copy, -1 when ``before`` is, +1 within one side (hairpin): the TCP shifts
    read outside minus inside, as the connection's seq_shift."""

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Each field either copy carries, in FIELD_LABELS order: before, after, changed (None when one copy lacks
        it), and for TCP numbers the shift (outside minus inside, modulo 2^32 as a signed number)."""
        out = []
        for name in FIELD_LABELS:
            if name not in self.before.fields and name not in self.after.fields:
                continue
            a, b = self.before.fields.get(name), self.after.fields.get(name)
            if name == "underlay" and a is None and b is None:
                continue
            have = name in self.before.fields and name in self.after.fields
            row: dict[str, Any] = {"field": name, "before": a, "after": b, "changed": (a != b) if have else None}
            if name in _SHIFTED and have:
                d = ((b - a) * self.shift_sign) % 2**32
                row["shift"] = d - 2**32 if d >= 2**31 else d
            out.append(row)
        return out

    @property
    def latency_us(self) -> float:
        return round((self.after.ts_ns - self.before.ts_ns) / 1000, 3)

    def to_dict(self) -> dict[str, Any]:
        rows = self.rows
        return {"kind": self.kind, "before": self.before.to_dict(), "after": self.after.to_dict(),
                "nat_latency_us": self.latency_us, "fields": rows,
                "changed": [r["field"] for r in rows if r["changed"]],
                "kept": [r["field"] for r in rows if r["changed"] is False]}


@dataclass(frozen=True)
class Explanation:
    """One connection: its tuples, its table entry in conntrack notation, and its pairs of packets compared."""

    row: dict[str, Any] = field(repr=False)
    """Its connection row (CONNECTION_SCHEMA)."""
    pairs: tuple[Pair, ...]
    notes: tuple[str, ...]
    """Why a pair is missing (nothing crossed that way)."""

    @property
    def conntrack(self) -> str:
        return conntrack_line(self.row)

    def to_dict(self) -> dict[str, Any]:
        r = self.row

        def tup(prefix: str) -> dict[str, Any] | None:
            return None if r[f"{prefix}_src"] is None else {f: r[f"{prefix}_{f}"] for f in TUPLE_FIELDS}

        shifts = {f"{w}_{n}": r[f"{k}_{n}_shift"] for w, k in (("initiator", "init"), ("reply", "reply"))
                  for n in ("seq", "ack")}
        return {"conn": r["conn"], "proto": r["proto"], "verdict": r["verdict"], "initiator": r["initiator"],
                "original": tup("orig"), "translated": tup("trans"), "rewrites": list(r["rewrites"] or []),
                "seq_shift": shifts if any(v is not None for v in shifts.values()) else None,
                "conntrack": self.conntrack, "pairs": [p.to_dict() for p in self.pairs], "notes": list(self.notes)}


def _pair_frames(row: dict[str, Any], kind: str) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """The evidence pair of one direction as ((point, frame) before the NAT, (point, frame) after it), or None."""
    inside, outside = row[f"evidence_{kind}_inside_frame"], row[f"evidence_{kind}_outside_frame"]
    copy = row[f"evidence_{kind}_translated_frame"]
    # The initiator's packets cross from its side, replies the other way.
    onward = (kind == "egress") == (row["initiator"] == "inside")
    if inside is not None and outside is not None:
        ends = [("inside", inside), ("outside", outside)]
    elif inside is not None and copy is not None:  # hairpin: the pod's own port saw it before and after
        ends = [("inside", inside), ("inside", copy)]
    else:
        return None
    return (ends[0], ends[1]) if onward else (ends[1], ends[0])


def _frame_pair(result: Result, row: dict[str, Any], frame: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """The pair of inside frame ``frame`` of the connection ``row``: it and its match outside, in crossing order."""
    pk = result.packets("inside").filter(pl.col("frame_no") == frame).collect()
    conn = row["conn"]
    if pk.is_empty():
        raise InputError(setting("frame", frame), f": no packet of a connection is inside frame {frame} (frames of "
                         f"#{conn}: {_frames_of(result, row)})")
    p = pk.row(0, named=True)
    if p["anchor"] != row["inside_conn_id"]:
        raise InputError(setting("frame", frame), f": inside frame {frame} is not a packet of connection #{conn} (its "
                         f"frames: {_frames_of(result, row)})")
    for kind in ("egress", "reply"):  # a hairpin's evidence pairs are the only ones kept within one side
        ends = _pair_frames(row, kind)
        if ends and ("inside", frame) in ends and ends[0][0] == ends[1][0]:
            return ends
    if p["out_frame"] is None:
        raise InputError(setting("frame", frame), f": inside frame {frame} of #{conn} has no counterpart outside (fate "
                         f"{p['fate']}); frames that crossed: {_frames_of(result, row, crossed=True)}")
    onward = bool(p["is_egress"]) == (row["initiator"] == "inside")
    ends = [("inside", frame), ("outside", p["out_frame"])]
    return (ends[0], ends[1]) if onward else (ends[1], ends[0])


def _frames_of(result: Result, row: dict[str, Any], crossed: bool = False, limit: int = 12) -> str:
    pk = result.packets("inside").filter(pl.col("anchor") == row["inside_conn_id"])
    if crossed:
        pk = pk.filter(pl.col("out_frame").is_not_null())
    frames = pk.select("frame_no").collect()["frame_no"].sort().to_list()
    text = ", ".join(map(str, frames[:limit])) or "none"
    return text + (" ..." if len(frames) > limit else "")


def _end(result: Result, point: str, frame: int, records: dict[tuple[str, int], Record], overlay: Overlay) -> End:
    rec = records[(point, frame)]
    offset_ns = int(round(result.clock_offset_s * 1e9)) if point == "outside" else 0
    try:
        fields = header_fields(rec.linktype, rec.data, overlay)
    except Skip as exc:
        raise InputError(f"{point} frame {frame}: no IP packet natproof can read ({exc.reason})") from None
    return End(point, frame, rec.ts_ns - offset_ns, LINKTYPE_NAMES.get(rec.linktype, f"LINKTYPE_{rec.linktype}"),
               fields)


def explain(result: Result, conns: Sequence[int], frame: int | None = None,
            vxlan_ports: Sequence[int] = ()) -> list[Explanation]:
    """For each connection number in ``conns``: its first egress and first reply pair (the evidence frames of the
    JSON document), or with ``frame`` (an inside frame number; one connection only) that frame's pair, each header
    field compared (Pair.rows), plus its translation-table entry in conntrack notation. The frames are read again
    from the capture files, byte for byte. Raises InputError for a connection the result does not have, a frame
    that is not its or that has no counterpart, or a capture given as standard input."""
    known = result.connections.height
    for i, n in enumerate(conns):
        if not 0 <= n < known:
            have = f"#0 to #{known - 1}" if known else "none"
            raise InputError(setting("conns", n, index=i), f": no such connection (the captures' connections are "
                             f"{have})")
    if frame is not None and len(conns) != 1:
        raise InputError(setting("frame", metavar="F"), " explains one packet of one connection: give ",
                         Said("conns=[N]", f"one {OPTIONS['conns']} N"), " with it")
    overlay = DEFAULT_OVERLAY.with_vxlan_ports(tuple(vxlan_ports))
    rows = {r["conn"]: r for r in result.connections.filter(pl.col("conn").is_in(list(conns))).iter_rows(named=True)}
    plans: list[tuple[dict[str, Any], list[tuple[str, tuple[tuple[str, int], tuple[str, int]]]], list[str]]] = []
    for n in conns:
        row = rows[n]
        pairs, notes = [], []
        if frame is not None:
            pairs.append(("frame", _frame_pair(result, row, frame)))
        else:
            for kind in ("egress", "reply"):
                ends = _pair_frames(row, kind)
                if ends is None:
                    notes.append(_missing(row, kind))
                else:
                    pairs.append((kind, ends))
        plans.append((row, pairs, notes))
    wanted: dict[str, set[int]] = {}
    for _, pairs, _ in plans:
        for _, ends in pairs:
            for point, f in ends:
                wanted.setdefault(point, set()).add(f)
    records = {(point, f): rec for point, frames in wanted.items()
               for f, rec in read_frames((result.inside if point == "inside" else result.outside).path,
                                         frames).items()}
    out = []
    for row, pairs, notes in plans:
        made = []
        for kind, (a, b) in pairs:
            sign = -1 if a[0] == "outside" else 1
            made.append(Pair(kind, _end(result, *a, records, overlay), _end(result, *b, records, overlay), sign))
        out.append(Explanation(row, tuple(made), tuple(notes)))
    return out


def _missing(row: dict[str, Any], kind: str) -> str:
    """Why a connection has no pair in one direction."""
    what = "the initiator's packets" if kind == "egress" else "replies"
    if kind == "egress":
        return (f"no pair of {what}: none was seen on both sides of the NAT (verdict {row['verdict']}), so what the "
                "NAT would have changed is not shown")
    return f"no pair of {what}: no reply was seen on both sides of the NAT (verdict {row['verdict']})"


def to_document(result: Result, explanations: Sequence[Explanation]) -> dict[str, Any]:
    """The natproof.explain/1 document."""
    return {"schema": SCHEMA,
            "captures": {"inside": result.inside.path or None, "outside": result.outside.path or None},
            "clock_offset_s": result.clock_offset_s,
            "connections": [e.to_dict() for e in explanations]}
