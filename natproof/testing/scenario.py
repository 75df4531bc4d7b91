"""Deterministic Linux NAT simulator (MASQUERADE, kube-proxy DNAT): matching inside/outside captures and truth."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from natproof.verdicts import Verdict

Proto = Literal["tcp", "udp", "icmp"]
Direction = Literal["egress", "reply"]
Side = Literal["inside", "outside"]

TRUTH_SCHEMA = "natproof.truth/1"
LINKTYPES: dict[str, int] = {"ethernet": 1, "raw": 101, "sll2": 276}
"""pcap link types by the names a Scenario uses: DLT_EN10MB, LINKTYPE_RAW (bare IP), LINKTYPE_LINUX_SLL2."""
DOCUMENTATION_NETS: tuple[ipaddress.IPv4Network, ...] = (
    ipaddress.IPv4Network("192.0.2.0/24"),
    ipaddress.IPv4Network("198.51.100.0/24"),
    ipaddress.IPv4Network("203.0.113.0/24"),
)
"""The only public addresses the simulator ever uses (RFC 5737 TEST-NET-1/2/3)."""
OUTCOMES: tuple[str, ...] = tuple(v.value for v in Verdict
                                  if v not in (Verdict.REPLY_OTHER_PATH, Verdict.NOT_CAPTURED))
"""Outcomes of the MASQUERADE-only flows: every verdict but reply_other_path and not_captured (a property of the
captures' schedule, which the simulator does not cut: the lab's partial-overlap scenario makes it)."""
MODEL_OUTCOMES: tuple[str, ...] = (*OUTCOMES, Verdict.REPLY_OTHER_PATH.value)
"""The verdicts of docs/model.md (natproof.correlate/2) that flows can be made with: OUTCOMES plus
``reply_other_path``."""
FATES: tuple[str, ...] = ("crossed", "leaked", "inside_only", "outside_only", "node_generated")
"""Packet fates of docs/model.md, in the order a truth row's ``fates`` lists them."""
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
"""Where Kubernetes allocates ClusterIPs (kube-apiserver's default --service-cluster-ip-range)."""
NODE_PORT_RANGE = (30000, 32767)
"""kube-apiserver's default --service-node-port-range."""
FTP_PORT = 21
"""The port conntrack's FTP helper watches: only its connections get the ALG payload rewrite."""
CONNTRACK_LINGER_NS = 120 * 1_000_000_000
"""How long a mapping stays reserved after its last packet (conntrack keeps TIME_WAIT entries ~120 s)."""
EPHEMERAL_RANGE = (1024, 65535)
"""Where MASQUERADE picks a replacement port (or echo identifier) when the original cannot be kept."""

_SECOND = 1_000_000_000
_MS = 1_000_000
_US = 1_000
# Outcomes whose egress goes through MASQUERADE and so owns an outside mapping.
_SNAT = frozenset({"translated", "no_reply", "reply_dropped", "reply_other_path"})
_EGRESS_OUTSIDE = _SNAT | {"untranslated"}
_REPLY_OUTSIDE = frozenset({"translated", "reply_dropped"})
# Outcomes in which the far end answers the initiator at all.
_ANSWERED = frozenset({"translated", "reply_dropped", "internal", "reply_other_path"})
# What a NodePort connection can come to: the client's packets cross (or not), the pod answers (or not).
_INBOUND_OUTCOMES = frozenset({"translated", "no_reply", "reply_dropped", "not_forwarded"})
_SEQ_MASK = 0xFFFFFFFF
# Linux retransmits an unanswered FIN after ~200 ms (the tail loss probe), then doubles its RTO
# (see /work/shared/cases/idle-expiry-fin-leak: 205, 208, 436, 832, 1664, 3328 ms).
_FIN_RETRANSMIT_MS = (200, 200, 400, 800, 1600, 3200, 6400, 12800)
_TCP_MSS = 1460
_HTTP_PORTS = frozenset({80, 8080})
# Linux packet-socket packet types, as cooked captures (SLL2) record them.
_PACKET_HOST, _PACKET_BROADCAST, _PACKET_MULTICAST, _PACKET_OTHERHOST, _PACKET_OUTGOING = 0, 1, 2, 3, 4
_ETH_IP, _ETH_ARP, _ETH_IPV6 = 0x0800, 0x0806, 0x86DD
_OUTSIDE_IFINDEX = 2
_ETH_MIN_FRAME = 60


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service as kube-proxy (iptables mode) programs it on the node."""

    type: Literal["ClusterIP", "NodePort"]
    address: str
    """The ClusterIP (in SERVICE_CIDR), or for a NodePort the node's own address (the scenario's nat_ip)."""
    port: int
    """The Service port, or the NodePort (in NODE_PORT_RANGE)."""
    backends: tuple[tuple[str, int], ...]
    """Endpoints as (address, port): servers outside the node for a ClusterIP, pods for a NodePort."""
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    """NodePort only. Cluster: DNAT to the endpoint plus masquerade to the bridge address with a random
    port (KUBE-MARK-MASQ, --random-fully); Local: DNAT only, the pod sees the client (FIELD-NOTES)."""


@dataclass(frozen=True)
class Flow:
    """One connection, and what the node does to it (the outcome is a verdict string).

    ``pod``, ``sport``, ``dst`` and ``dport`` are the tuple as the initiator sent it (docs/model.md's
    ``original``). Without a Service, or with a ClusterIP one, a pod opens the connection: ``pod`` is that
    pod and ``dst:dport`` the server (or the ClusterIP and Service port). With a NodePort Service an
    internet client opens it: ``pod`` is then the client's address and ``dst:dport`` the node's
    address and NodePort; the pod that answers is the Service backend the flow picks."""

    proto: Proto
    pod: str
    sport: int
    dst: str
    dport: int
    outcome: str = "translated"
    start_s: float = 0.0
    requests: int = 1
    response_segments: int = 2
    syn_retransmit: bool = False
    service: Service | None = None
    """The Service whose DNAT this connection goes through; None for plain MASQUERADE egress."""
    backend: int = 0
    """Index into ``service.backends`` of the endpoint kube-proxy picked for this connection (its
    ``-m statistic --mode random`` rules choose per connection; the scenario names the choice)."""
    leak: int = 0
    """TCP only: after its last response the pod idles past conntrack's established timeout (the case
    lowered it to 3 s), the entry expires, and its FIN and the FIN's retransmissions (``leak`` packets in
    all) are INVALID: not NATed, they leave with the pod's own tuple and nothing answers
    (cases/idle-expiry-fin-leak, FIELD-NOTES "Per-packet NAT failures")."""
    invalid_reply: bool = False
    """TCP only: after the first response an out-of-window segment from the server reaches the outside;
    conntrack marks it INVALID, so it is not reverse-translated and never reaches the pod, and the node
    answers it with its own RST under the translated tuple. The server drops the connection, so the pod's
    next request (always sent, whatever ``requests`` says) is answered with the server's RST, which crosses
    back; nothing follows (cases/oow-invalid-node-rst)."""
    alg: bool = False
    """TCP to port 21 only: conntrack's FTP helper rewrites the address in the first payload that carries
    the inside end's address (the pod's PORT command, or for a NodePort the pod's 227 reply to PASV) to
    the address the far side sees. The payload's length changes by the difference, so every later
    sequence number of that direction is shifted by a constant after the node, and every
    acknowledgement of the other direction before it (cases/ftp-alg-active)."""

    @property
    def inside_tuple(self) -> tuple[str, str, int, str, int]:
        """(proto, src, sport, dst, dport) as the initiator sent it (the inside tuple of pod egress)."""
        return (self.proto, self.pod, self.sport, self.dst, self.dport)

    @property
    def initiator(self) -> Side:
        """Who opened the connection: ``inside`` (a pod) or ``outside`` (an internet client, NodePort)."""
        return "outside" if self.service is not None and self.service.type == "NodePort" else "inside"

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """The backend kube-proxy DNATs this connection to; None without a Service."""
        return None if self.service is None else self.service.backends[self.backend]

    @property
    def inside_end(self) -> str:
        """The pod this connection's inside capture belongs to: the initiator, or the NodePort backend."""
        endpoint = self.endpoint
        return endpoint[0] if self.initiator == "outside" and endpoint is not None else self.pod

    @property
    def has_fates(self) -> bool:
        """Uses a per-packet failure option, so its truth row counts packets by fate."""
        return self.leak > 0 or self.invalid_reply or self.alg

    @property
    def uses_model(self) -> bool:
        """Needs docs/model.md's truth fields to be described (a Service, a failure option, a /2 verdict)."""
        return self.service is not None or self.has_fates or self.outcome not in OUTCOMES


@dataclass(frozen=True)
class Scenario:
    """A node, its pods' connections, and how the two captures are taken."""

    name: str
    flows: tuple[Flow, ...]
    nat_ip: str = "203.0.113.2"
    pod_cidr: str = "10.244.0.0/16"
    random_fully: bool = False
    clock_offset_s: float = 0.0
    seed: int = 0
    epoch_ns: int = 1_700_000_000_000_000_000
    noise: bool = True
    gro: bool = False
    inside_link: str = "ethernet"
    outside_link: str = "ethernet"
    nanosecond: bool = True
    inside_nanosecond: bool | None = None
    """Timestamp precision of inside.pcap; None follows ``nanosecond``."""
    outside_nanosecond: bool | None = None
    """Timestamp precision of outside.pcap; None follows ``nanosecond``."""
    outside_underlay: str | None = None
    """Deliver every outside frame inside an overlay encapsulation (natproof.decode.ENCAPS: vxlan, geneve, ipip,
    gre), as AWS Traffic Mirroring delivers its copies (VXLAN) or a GRE/ERSPAN-less mirror port does: the outer
    packet goes from UNDERLAY_SRC to UNDERLAY_DST; the truth is unchanged (matching reads the inner packet).
    Needs outside_link ethernet."""
    model_truth: bool = False
    """Write docs/model.md's fields (initiator, original, translated, rewrites, service) in every truth
    row. Always on when a flow uses a Service, a failure option or a /2 verdict; off, rows keep the
    natproof.truth/1 shape the /1 matcher and its tests read."""

    @property
    def writes_model_truth(self) -> bool:
        return self.model_truth or any(f.uses_model for f in self.flows)

    def is_nanosecond(self, side: Side) -> bool:
        own = self.inside_nanosecond if side == "inside" else self.outside_nanosecond
        return self.nanosecond if own is None else own

    def link(self, side: Side) -> str:
        return self.inside_link if side == "inside" else self.outside_link


@dataclass(frozen=True)
class Packet:
    """One captured frame as written to a capture file."""

    ts_ns: int
    """Capture timestamp: the outside has the clock offset applied; microsecond captures are truncated."""
    data: bytes
    """The frame from its link-layer header on (none for the raw link type)."""
    connection: int | None
    """Index into the truth's ``connections``; None for noise."""
    direction: Direction | None
    """``egress`` (sent by the initiator: conntrack's ORIGINAL direction) or ``reply``; None for noise."""


@dataclass(frozen=True)
class Simulation:
    """Everything :func:`write_scenario` writes, in memory; each side's packets in capture order."""

    scenario: Scenario
    inside: tuple[Packet, ...]
    outside: tuple[Packet, ...]
    truth: dict[str, Any]
    inside_linktype: int
    outside_linktype: int


@dataclass(frozen=True)
class _Event:
    """One packet of a flow, placed in time, before addresses and ports are rendered."""

    direction: Direction
    inside_ns: int | None
    outside_ns: int | None
    ttl_inside: int
    ttl_outside: int
    ip_id: int
    df: bool
    flags: str = ""
    seq: int = 0
    ack: int = 0
    window: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    payload: bytes = b""
    seq_delta: int = 0
    """Added to ``seq`` on the outside copy (an ALG rewrote an earlier payload of this direction)."""
    ack_delta: int = 0
    """Added to ``ack`` on the outside copy (an ALG rewrote an earlier payload of the other direction)."""
    outside_payload: bytes | None = None
    """The payload on the outside copy when an ALG rewrote it; None: the same as ``payload``."""
    fate: Literal["leaked", "node_generated"] | None = None
    """Set for packets that are not plainly crossing or dropped; None: fate follows from the times."""

    @property
    def outside_view(self) -> _Event:
        """This packet as the outside capture shows it (sequence numbers and payload after an ALG)."""
        if not (self.seq_delta or self.ack_delta or self.outside_payload is not None):
            return self
        return dataclasses.replace(
            self,
            seq=(self.seq + self.seq_delta) & _SEQ_MASK,
            ack=(self.ack + self.ack_delta) & _SEQ_MASK,
            payload=self.payload if self.outside_payload is None else self.outside_payload,
        )

    @property
    def times(self) -> tuple[int, ...]:
        return tuple(t for t in (self.inside_ns, self.outside_ns) if t is not None)


Tuple4 = tuple[str, int, str, int]


@dataclass(frozen=True)
class _Layout:
    """A flow laid out in time, with the tuple each capture shows it under, in the initiator's direction
    as (src, sport, dst, dport); None: never seen on that side (leaked packets aside)."""

    flow: Flow
    index: int
    events: tuple[_Event, ...]
    inside: Tuple4 | None = None
    outside: Tuple4 | None = None

    @property
    def first_ns(self) -> int:
        return min(t for e in self.events for t in e.times)

    @property
    def last_ns(self) -> int:
        return max(t for e in self.events for t in e.times)


@dataclass(frozen=True)
class _Mapping:
    """A conntrack entry holding an outside tuple on nat_ip."""

    inside: tuple[str, str, int, str, int]
    key: tuple[str, str, int]
    port: int
    first_ns: int
    last_ns: int

    def live_at(self, t_ns: int) -> bool:
        return self.first_ns <= t_ns <= self.last_ns + CONNTRACK_LINGER_NS


@dataclass(frozen=True)
class _Frame:
    """A built frame waiting to be sorted into its capture."""

    true_ns: int
    order: int
    data: bytes
    flow_index: int | None
    direction: Direction | None


class _FlowBuilder:
    """Lays one flow out in time; the outside port is not known yet (it depends on other flows).

    The initiator's packets are ``egress``, the responder's ``reply`` (conntrack's directions). Times are
    given on the initiator's side of the node (``near``: inside for a pod, outside for a NodePort client)
    or the responder's (``far``)."""

    def __init__(self, flow: Flow, index: int, scenario: Scenario) -> None:
        self.flow = flow
        self.gro = scenario.gro
        self.nat_ip = scenario.nat_ip
        rng = random.Random(f"natproof/{scenario.seed}/flow/{index}")
        self.rng = rng
        self.t0 = scenario.epoch_ns + round(flow.start_s * _SECOND)
        self.internal = flow.outcome == "internal"
        self.inbound = flow.initiator == "outside"
        # Pod-to-pod on the node bridge answers in tens of microseconds; servers are milliseconds away.
        # A NodePort's responder is a pod on this node: its answers come as fast.
        near_peer = self.internal or self.inbound
        self.rtt = rng.randint(80 * _US, 400 * _US) if near_peer else rng.randint(4 * _MS, 60 * _MS)
        # Forwarding through the node costs a steady 20-70 us plus up to 10 us jitter, so back-to-back
        # packets never overtake each other across the node.
        self.fwd_ns = rng.randint(20 * _US, 70 * _US)
        # Linux numbers IP ids per socket from a random start; unconnected UDP sockets with DF send id 0.
        self.egress_id = rng.randrange(65536)
        self.egress_id_zero = flow.proto == "udp" and rng.random() < 0.3
        self.reply_id = rng.randrange(65536)
        self.reply_id_zero = rng.random() < 0.3
        self.reply_df = self.reply_id_zero or rng.random() < 0.8
        # TTL the internet peer's packets carry when they reach the node (64 minus the hops they crossed):
        # the server's replies, or a NodePort client's own packets.
        self.reply_ttl = 64 if self.internal else rng.randint(40, 60)
        # A NodePort client is milliseconds away: what it sends in answer reaches the node that much later.
        self.near_rtt = rng.randint(4 * _MS, 60 * _MS) if self.inbound else 0
        # After an ALG rewrite: the rewritten direction and the constant its sequence numbers move by.
        self.shift = 0
        self.shifted: Direction | None = None
        self.events: list[_Event] = []

    def _delay(self) -> int:
        return self.fwd_ns + self.rng.randint(0, 10 * _US)

    def _ip_id(self, direction: Direction) -> int:
        if direction == "egress":
            if self.egress_id_zero:
                return 0
            self.egress_id = (self.egress_id + 1) & 0xFFFF
            return self.egress_id
        if self.reply_id_zero:
            return 0
        self.reply_id = (self.reply_id + 1) & 0xFFFF
        return self.reply_id

    def _sides(self, near: int | None, far: int | None) -> tuple[int | None, int | None]:
        """(inside, outside) times from the initiator's side and the responder's."""
        return (far, near) if self.inbound else (near, far)

    def _ttls(self, direction: Direction) -> tuple[int, int]:
        """(inside, outside) TTL of a packet that crosses the node (one routed hop: TTL - 1)."""
        from_pod = (direction == "egress") != self.inbound
        if from_pod:
            return 64, 63
        # Pod-to-pod frames are bridged, not routed, so their TTL is untouched.
        return (self.reply_ttl if self.internal else self.reply_ttl - 1), self.reply_ttl

    def _alg(self, direction: Direction, flags: str) -> dict[str, int]:
        """The outside copy's sequence number moves in the rewritten direction, the acknowledgement in
        the other (nf_conntrack_seqadj); nothing before the rewrite, nothing in packets without ACK."""
        if not self.shift:
            return {}
        if direction == self.shifted:
            return {"seq_delta": self.shift}
        return {"ack_delta": self.shift} if "A" in flags else {}

    def egress(self, t_near: int, **l4: Any) -> int:
        """The initiator sends at ``t_near``; returns when the packet leaves the node toward the responder
        (``t_near`` when it never does)."""
        outcome = self.flow.outcome
        far = t_near + self._delay() if outcome in _EGRESS_OUTSIDE else None
        inside, outside = self._sides(t_near, far)
        ttl_inside, ttl_outside = self._ttls("egress")
        self.events.append(
            _Event(
                "egress",
                inside,
                outside,
                ttl_inside=ttl_inside,
                ttl_outside=ttl_outside,
                ip_id=self._ip_id("egress"),
                df=True,
                **self._alg("egress", l4.get("flags", "")),
                **l4,
            )
        )
        return far if far is not None else t_near

    def leaked(self, t_inside: int, **l4: Any) -> None:
        """The pod sends a packet conntrack marks INVALID: NAT skips it, so it leaves with the pod's own
        tuple (and without sequence adjustment), and no answer can come back."""
        self.events.append(
            _Event(
                "egress",
                t_inside,
                t_inside + self._delay(),
                ttl_inside=64,
                ttl_outside=63,
                ip_id=self._ip_id("egress"),
                df=True,
                fate="leaked",
                **l4,
            )
        )

    def node_reset(self, t_outside: int, seq: int) -> None:
        """The node answers an INVALID reply with its own RST under the translated tuple: made by the
        node's stack (TTL 64, IP id 0, DF, window 0), seen outside only (cases/oow-invalid-node-rst)."""
        self.events.append(
            _Event(
                "egress",
                None,
                t_outside,
                ttl_inside=64,
                ttl_outside=64,
                ip_id=0,
                df=True,
                flags="R",
                seq=seq,
                fate="node_generated",
                **self._alg("egress", "R"),
            )
        )

    def reply(self, t_far: int, *, ip_id: int | None = None, near: bool = True, **l4: Any) -> int:
        """The responder's packet reaches the node (or, internal, the pod) at ``t_far``; returns when the
        initiator's side sees it (``t_far`` when it never does). ``near=False``: the node does not pass it
        on whatever the outcome (INVALID)."""
        near_ns, far_ns = self._reply_times(t_far) if near else (None, t_far)
        inside, outside = self._sides(near_ns, far_ns)
        self.events.append(self._reply_event(inside, outside, ip_id=ip_id, **l4))
        return near_ns if near_ns is not None else t_far

    def _reply_times(self, t_far: int) -> tuple[int | None, int | None]:
        """(initiator's side, responder's side) times of a reply reaching the node at ``t_far``."""
        outcome = self.flow.outcome
        if outcome == "internal":
            return t_far, None
        if outcome in ("translated", "reply_other_path"):
            # reply_other_path: the replies come back over a link the outside capture does not see.
            return t_far + self._delay(), (None if outcome == "reply_other_path" else t_far)
        return None, t_far

    def _reply_event(self, inside: int | None, outside: int | None, ip_id: int | None = None, **l4: Any) -> _Event:
        ttl_in, ttl_out = self._ttls("reply")
        return _Event(
            "reply",
            inside,
            outside,
            ttl_inside=ttl_in,
            ttl_outside=ttl_out,
            ip_id=self._ip_id("reply") if ip_id is None else ip_id,
            df=self.reply_df if ip_id is None else True,
            **self._alg("reply", l4.get("flags", "")),
            **l4,
        )

    def reply_burst(self, arrivals: list[int], segments: list[dict[str, Any]]) -> int:
        """Back-to-back reply data segments; with GRO the outside NIC merges them into one packet."""
        merges = self.gro and not self.inbound and len(segments) > 1
        if not (merges and self.flow.outcome in _REPLY_OUTSIDE):
            near = 0
            for t, seg in zip(arrivals, segments, strict=True):
                near = self.reply(t, **seg)
            return near
        # GRO on eth0 holds the segments until the last one arrives and hands up one large packet:
        # that is what tcpdump on eth0 records. The first segment's header (seq, IP id) leads it and
        # the last one's flags (PSH) close it. The pod's veth shows the segments resegmented, in a burst.
        last = arrivals[-1]
        inside_start = last + self._delay() if self.flow.outcome == "translated" else None
        parts: list[_Event] = []
        for i, seg in enumerate(segments):
            inside = None if inside_start is None else inside_start + i * 1200
            parts.append(self._reply_event(inside, None, **seg))
        merged = _Event(
            "reply",
            None,
            last,
            ttl_inside=parts[0].ttl_inside,
            ttl_outside=parts[0].ttl_outside,
            ip_id=parts[0].ip_id,
            df=parts[0].df,
            flags=parts[-1].flags,
            seq=parts[0].seq,
            ack=parts[-1].ack,
            window=parts[-1].window,
            options=parts[0].options,
            payload=b"".join(p.payload for p in parts),
        )
        self.events.append(merged)
        self.events.extend(parts)
        return parts[-1].inside_ns if parts[-1].inside_ns is not None else last

    def build(self) -> tuple[_Event, ...]:
        {"tcp": self._tcp, "udp": self._udp, "icmp": self._icmp}[self.flow.proto]()
        return tuple(self.events)

    def _ftp_address(self, rng: random.Random) -> tuple[bytes, bytes]:
        """The payload the FTP helper rewrites, as the inside end wrote it and as the far side gets it:
        the pod's PORT command, or (NodePort) the pod's answer to PASV; the data port is kept."""
        f = self.flow
        data_port = rng.randint(32768, 60999)
        inside_addr, outside_addr = (f.inside_end, f.dst) if self.inbound else (f.pod, self.nat_ip)

        def line(addr: str) -> bytes:
            h = addr.replace(".", ",")
            if self.inbound:
                return f"227 Entering Passive Mode ({h},{data_port >> 8},{data_port & 255}).\r\n".encode()
            return f"PORT {h},{data_port >> 8},{data_port & 255}\r\n".encode()

        return line(inside_addr), line(outside_addr)

    def _tcp(self) -> None:
        f, rng = self.flow, self.rng
        timestamps = rng.random() < 0.75
        seg_size = _TCP_MSS - 12 if timestamps else _TCP_MSS
        c_isn, s_isn = rng.getrandbits(32), rng.getrandbits(32)
        c_ts0, s_ts0 = rng.getrandbits(32), rng.getrandbits(32)
        # Linux TCP timestamps tick at 1 kHz.
        last_c_ts = 0
        last_s_ts = 0

        def c_opts(t: int, syn: bool = False) -> tuple[tuple[str, Any], ...]:
            nonlocal last_c_ts
            last_c_ts = (c_ts0 + (t - self.t0) // _MS) & 0xFFFFFFFF
            # A SYN (first or retransmitted) echoes nothing: the client has not heard from the server.
            return _tcp_options(syn, timestamps, last_c_ts, 0 if syn else last_s_ts)

        def s_opts(t: int, syn: bool = False) -> tuple[tuple[str, Any], ...]:
            nonlocal last_s_ts
            last_s_ts = (s_ts0 + (t - self.t0) // _MS) & 0xFFFFFFFF
            return _tcp_options(syn, timestamps, last_s_ts, last_c_ts)

        def syn(t: int) -> int:
            return self.egress(t, flags="S", seq=c_isn, window=64240, options=c_opts(t, True))

        def syn_ack(t: int) -> int:
            return self.reply(
                t, flags="SA", seq=s_isn, ack=(c_isn + 1) & 0xFFFFFFFF, window=65160, options=s_opts(t, True)
            )

        t = self.t0
        if f.outcome in ("no_reply", "untranslated", "not_forwarded"):
            # Nothing answers: the pod's stack retransmits the SYN after its 1 s initial RTO.
            syn(t)
            syn(t + _SECOND)
            return
        if f.outcome == "reply_dropped":
            # The server answers, the node never delivers the SYN-ACK; the pod retransmits its SYN after
            # 1 s and the server answers the duplicate with a retransmitted SYN-ACK.
            syn_ack(syn(t) + self.rtt)
            syn_ack(syn(t + _SECOND) + self.rtt)
            return
        far = syn(t)
        if f.syn_retransmit:
            # The first SYN is lost beyond the outside capture; only the retransmission is answered.
            far = syn(t + _SECOND)
        near = syn_ack(far + self.rtt)
        cseq, sseq = (c_isn + 1) & 0xFFFFFFFF, (s_isn + 1) & 0xFFFFFFFF
        t = near + self.near_rtt + rng.randint(20 * _US, 60 * _US)
        self.egress(t, flags="A", seq=cseq, ack=sseq, window=502, options=c_opts(t))
        t += rng.randint(100 * _US, 300 * _US)
        for i in range(f.requests):
            request = _request(f, i, rng)
            rewritten: bytes | None = None
            if f.alg and i == 0 and not self.inbound:
                request, rewritten = self._ftp_address(rng)
            far = self.egress(
                t,
                flags="PA",
                seq=cseq,
                ack=sseq,
                window=502,
                payload=request,
                options=c_opts(t),
                **({} if rewritten is None else {"outside_payload": rewritten}),
            )
            cseq = (cseq + len(request)) & 0xFFFFFFFF
            if rewritten is not None:
                self.shift, self.shifted = len(rewritten) - len(request), "egress"
            if f.alg and i == 0 and self.inbound:
                # The pod's answer to the client's PASV carries its own address: the helper rewrites it.
                first = far + self.rtt + rng.randint(50 * _US, 500 * _US)
                body, rewritten = self._ftp_address(rng)
                opts = s_opts(first)
                near = self.reply(
                    first, flags="PA", seq=sseq, ack=cseq, window=509, options=opts, payload=body,
                    outside_payload=rewritten,
                )
                sseq = (sseq + len(body)) & 0xFFFFFFFF
                self.shift, self.shifted = len(rewritten) - len(body), "reply"
                t = near + self.near_rtt + rng.randint(200 * _US, 5 * _MS)
                continue
            sizes = [seg_size] * (f.response_segments - 1) + [rng.randint(200, seg_size)]
            body = _response(f, sum(sizes), rng)
            first = far + self.rtt + rng.randint(50 * _US, 500 * _US)
            # A server bursts a response at line rate: ~12 us per full-sized segment at 1 Gbit/s.
            arrivals = [first]
            for _ in sizes[1:]:
                arrivals.append(arrivals[-1] + rng.randint(12 * _US, 20 * _US))
            opts = s_opts(first)
            segments: list[dict[str, Any]] = []
            offset = 0
            for arrival, size in zip(arrivals, sizes, strict=True):
                segments.append(
                    dict(
                        flags="PA" if arrival == arrivals[-1] else "A",
                        seq=(sseq + offset) & 0xFFFFFFFF,
                        ack=cseq,
                        window=509,
                        options=opts,
                        payload=body[offset : offset + size],
                    )
                )
                offset += size
            sseq = (sseq + offset) & 0xFFFFFFFF
            near = self.reply_burst(arrivals, segments)
            # The next request (or the FIN) carries the acknowledgement of the whole response.
            t = near + self.near_rtt + rng.randint(200 * _US, 5 * _MS)
            if f.invalid_reply or (f.leak and i == f.requests - 1):
                # Nothing more to send for a while: the pod acknowledges the response on its own.
                self.egress(t, flags="A", seq=cseq, ack=sseq, window=502, options=c_opts(t))
            if f.invalid_reply:
                self._invalid_reply(t, cseq, sseq, c_opts, s_opts)
                return
        if f.leak:
            # The connection idles past conntrack's established timeout (3 s in the case): the entry is
            # gone, so the FIN and every retransmission of it is INVALID and leaks untranslated.
            t = t + 6 * _SECOND + rng.randint(0, 5 * _MS)
            for gap_ms in _FIN_RETRANSMIT_MS[: f.leak]:
                self.leaked(t, flags="FA", seq=cseq, ack=sseq, window=502, options=c_opts(t))
                t += gap_ms * _MS + rng.randint(0, 10 * _MS)
            return
        far = self.egress(t, flags="FA", seq=cseq, ack=sseq, window=502, options=c_opts(t))
        cseq = (cseq + 1) & 0xFFFFFFFF
        t_srv = far + self.rtt
        near = self.reply(t_srv, flags="FA", seq=sseq, ack=cseq, window=509, options=s_opts(t_srv))
        sseq = (sseq + 1) & 0xFFFFFFFF
        t = near + self.near_rtt + rng.randint(20 * _US, 60 * _US)
        self.egress(t, flags="A", seq=cseq, ack=sseq, window=502, options=c_opts(t))

    def _invalid_reply(self, t_acked: int, cseq: int, sseq: int, c_opts: Any, s_opts: Any) -> None:
        """After the pod acknowledged the response at ``t_acked``: an out-of-window segment from the
        server, the node's RST for it, and the end of the connection (cases/oow-invalid-node-rst)."""
        rng = self.rng
        t = t_acked + rng.randint(300 * _MS, 700 * _MS)
        # Far outside the receive window: conntrack's TCP tracking marks it INVALID.
        oow = (sseq + rng.randint(2**30, 2**31)) & _SEQ_MASK
        self.reply(
            t, near=False, flags="PA", seq=oow, ack=cseq, window=509, options=s_opts(t), payload=b"X" * 100
        )
        self.node_reset(t + rng.randint(30 * _US, 90 * _US), cseq)
        # The server took the node's RST for the pod's: the pod's next request meets a RST of its own.
        t = t_acked + _SECOND + rng.randint(0, 5 * _MS)
        request = _request(self.flow, 1, rng)
        far = self.egress(t, flags="PA", seq=cseq, ack=sseq, window=502, payload=request, options=c_opts(t))
        self.reply(far + self.rtt, ip_id=0, flags="R", seq=sseq, window=0)

    def _udp(self) -> None:
        f, rng = self.flow, self.rng
        dns = f.dport == 53
        query_id = rng.randrange(65536)
        t = self.t0
        for i in range(f.requests):
            request = _dns_query(query_id + i) if dns else b"natproof udp request %d" % i
            far = self.egress(t, payload=request)
            # Unless the answer reaches it, the pod sends its next datagram after a 1 s timeout.
            next_t = t + _SECOND
            if f.outcome in _ANSWERED:
                reply = _dns_answer(query_id + i) if dns else b"natproof udp reply %d" % i
                near = self.reply(far + self.rtt, payload=reply)
                if f.outcome != "reply_dropped":
                    next_t = near + self.near_rtt + rng.randint(200 * _US, 5 * _MS)
            t = next_t

    def _icmp(self) -> None:
        f = self.flow
        for i in range(f.requests):
            # ping sends one echo a second whatever comes back; its payload starts with the send time.
            t = self.t0 + i * _SECOND
            payload = struct.pack("<qq", t // _SECOND, (t % _SECOND) // _US) + bytes(range(0x10, 0x38))
            far = self.egress(t, seq=i + 1, payload=payload)
            if f.outcome in _ANSWERED:
                self.reply(far + self.rtt, seq=i + 1, payload=payload)


def _tcp_options(syn: bool, timestamps: bool, tsval: int, tsecr: int) -> tuple[tuple[str, Any], ...]:
    """TCP options in the order Linux writes them."""
    if syn:
        if timestamps:
            return (
                ("MSS", _TCP_MSS),
                ("SAckOK", b""),
                ("Timestamp", (tsval, tsecr)),
                ("NOP", None),
                ("WScale", 7),
            )
        return (
            ("MSS", _TCP_MSS),
            ("NOP", None),
            ("NOP", None),
            ("SAckOK", b""),
            ("NOP", None),
            ("WScale", 7),
        )
    if timestamps:
        return (("NOP", None), ("NOP", None), ("Timestamp", (tsval, tsecr)))
    return ()


def _responder_port(flow: Flow) -> int:
    """The port the responder listens on: the Service backend's, else the one the initiator sent to."""
    return flow.dport if flow.endpoint is None else flow.endpoint[1]


def _request(flow: Flow, i: int, rng: random.Random) -> bytes:
    if _responder_port(flow) in _HTTP_PORTS:
        return _http_request(flow.dst, i)
    return _tls_records(rng.randint(60, 400), rng)


def _response(flow: Flow, total: int, rng: random.Random) -> bytes:
    return _http_response(total) if _responder_port(flow) in _HTTP_PORTS else _tls_records(total, rng)


def _tls_records(total: int, rng: random.Random) -> bytes:
    """Opaque TLS application-data records adding up to exactly ``total`` bytes."""
    count = -(-total // (5 + 16384))
    sizes = [total // count] * count
    sizes[0] += total - sum(sizes)
    return b"".join(b"\x17\x03\x03" + struct.pack("!H", n - 5) + rng.randbytes(n - 5) for n in sizes)


def _http_request(host: str, i: int) -> bytes:
    return (
        f"GET /object/{i} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    ).encode()


def _http_response(total: int) -> bytes:
    """An HTTP response of exactly ``total`` bytes."""
    length = total
    for _ in range(3):
        header = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n\r\n".encode()
        length = total - len(header)
    body = (b"abcdefghijklmnopqrstuvwxyz" * (length // 26 + 1))[:length]
    return header + body


def _dns_query(query_id: int) -> bytes:
    from scapy.layers.dns import DNS, DNSQR

    return bytes(DNS(id=query_id & 0xFFFF, rd=1, qd=[DNSQR(qname="example.org", qtype="A")]))


def _dns_answer(query_id: int) -> bytes:
    from scapy.layers.dns import DNS, DNSQR, DNSRR

    return bytes(
        DNS(
            id=query_id & 0xFFFF,
            qr=1,
            rd=1,
            ra=1,
            qd=[DNSQR(qname="example.org", qtype="A")],
            an=[DNSRR(rrname="example.org", type="A", ttl=300, rdata="192.0.2.80")],
        )
    )


def _check(scenario: Scenario) -> ipaddress.IPv4Network:
    """Reject scenarios the simulator cannot model faithfully; returns the pod network."""
    pod_net = ipaddress.IPv4Network(scenario.pod_cidr)
    nat_ip = ipaddress.IPv4Address(scenario.nat_ip)
    if nat_ip in pod_net:
        raise ValueError(f"nat_ip {nat_ip} lies inside pod_cidr {pod_net}")
    for side in ("inside", "outside"):
        if side == "outside" and scenario.outside_underlay and scenario.outside_link != "ethernet":
            raise ValueError("outside_underlay needs outside_link ethernet")
        if scenario.link(side) not in LINKTYPES:
            raise ValueError(f"{side}_link must be one of {sorted(LINKTYPES)}, not {scenario.link(side)!r}")
    for flow in scenario.flows:
        where = f"scenario {scenario.name!r}: flow {flow}"
        if flow.proto not in ("tcp", "udp", "icmp"):
            raise ValueError(f"{where}: unknown proto")
        if flow.outcome not in MODEL_OUTCOMES:
            raise ValueError(f"{where}: outcome must be one of {MODEL_OUTCOMES}")
        pod, dst = ipaddress.IPv4Address(flow.pod), ipaddress.IPv4Address(flow.dst)
        if flow.initiator == "outside":
            _check_inbound(flow, where, pod_net, nat_ip)
        else:
            if pod not in pod_net:
                raise ValueError(f"{where}: pod is not in {pod_net}")
            if flow.outcome == "internal":
                if dst not in pod_net or dst == pod:
                    raise ValueError(f"{where}: an internal flow goes to another address in {pod_net}")
            elif flow.service is not None:
                _check_cluster_ip(flow, where, nat_ip)
            elif not _documentation(dst) or dst == nat_ip:
                raise ValueError(
                    f"{where}: servers must be documentation addresses (RFC 5737) other than nat_ip"
                )
        if not 0 <= flow.sport <= 65535 or (flow.proto != "icmp" and flow.sport == 0):
            raise ValueError(f"{where}: bad source port")
        if flow.proto == "icmp" and flow.dport != 0:
            raise ValueError(f"{where}: ICMP echo flows have dport 0")
        if flow.proto != "icmp" and not 1 <= flow.dport <= 65535:
            raise ValueError(f"{where}: bad destination port")
        if flow.requests < 1 or flow.response_segments < 1 or flow.start_s < 0:
            raise ValueError(f"{where}: requests and response_segments must be >= 1, start_s >= 0")
        if flow.proto == "tcp" and flow.response_segments * _TCP_MSS + 200 > 65535 - 60:
            raise ValueError(f"{where}: a response must fit one IP packet once GRO merges it")
        _check_failures(flow, where, scenario)
    return pod_net


def _documentation(addr: ipaddress.IPv4Address) -> bool:
    return any(addr in net for net in DOCUMENTATION_NETS)


def _check_cluster_ip(flow: Flow, where: str, nat_ip: ipaddress.IPv4Address) -> None:
    svc = flow.service
    assert svc is not None
    if svc.type != "ClusterIP" or ipaddress.IPv4Address(svc.address) not in SERVICE_CIDR:
        raise ValueError(f"{where}: a pod's Service is a ClusterIP in {SERVICE_CIDR}")
    if (flow.dst, flow.dport) != (svc.address, svc.port):
        raise ValueError(f"{where}: a ClusterIP flow goes to its Service's address and port")
    _check_backends(flow, where)
    for addr, _port in svc.backends:
        a = ipaddress.IPv4Address(addr)
        if not _documentation(a) or a == nat_ip:
            # Endpoints on the node itself are bridged, never cross the outside: not modelled here.
            raise ValueError(f"{where}: ClusterIP endpoints are off-node documentation addresses (RFC 5737)")
    if flow.outcome in ("internal", "untranslated"):
        # Without kube-proxy's DNAT the packet would still be masqueraded: never untranslated.
        raise ValueError(f"{where}: a ClusterIP flow is DNATed and masqueraded, never {flow.outcome}")


def _check_inbound(flow: Flow, where: str, pod_net: ipaddress.IPv4Network, nat_ip: ipaddress.IPv4Address) -> None:
    svc = flow.service
    assert svc is not None
    client = ipaddress.IPv4Address(flow.pod)
    if not _documentation(client) or client == nat_ip:
        raise ValueError(f"{where}: NodePort clients must be documentation addresses (RFC 5737) other than nat_ip")
    if (flow.dst, flow.dport) != (str(nat_ip), svc.port) or svc.address != str(nat_ip):
        raise ValueError(f"{where}: a NodePort flow goes to nat_ip and its Service's NodePort")
    if not NODE_PORT_RANGE[0] <= svc.port <= NODE_PORT_RANGE[1]:
        raise ValueError(f"{where}: a NodePort lies in {NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}")
    if svc.external_traffic_policy not in ("Cluster", "Local"):
        raise ValueError(f"{where}: externalTrafficPolicy is Cluster or Local")
    _check_backends(flow, where)
    for addr, _port in svc.backends:
        a = ipaddress.IPv4Address(addr)
        if a not in pod_net or a in (pod_net.network_address, pod_net.network_address + 1):
            raise ValueError(f"{where}: NodePort endpoints are pods in {pod_net} (not its bridge address)")
    if flow.outcome not in _INBOUND_OUTCOMES:
        raise ValueError(f"{where}: a NodePort flow's outcome is one of {sorted(_INBOUND_OUTCOMES)}")


def _check_backends(flow: Flow, where: str) -> None:
    svc = flow.service
    assert svc is not None
    if flow.proto == "icmp":
        raise ValueError(f"{where}: kube-proxy DNATs TCP and UDP only")
    if not 0 <= flow.backend < len(svc.backends):
        raise ValueError(f"{where}: backend must index the Service's backends")
    if any(not 1 <= port <= 65535 for _addr, port in svc.backends):
        raise ValueError(f"{where}: bad backend port")


def _check_failures(flow: Flow, where: str, scenario: Scenario) -> None:
    if not flow.has_fates:
        return
    if flow.proto != "tcp" or flow.outcome != "translated":
        raise ValueError(f"{where}: leak, invalid_reply and alg need a translated TCP connection")
    if flow.leak < 0 or flow.leak > len(_FIN_RETRANSMIT_MS):
        raise ValueError(f"{where}: leak counts FIN transmissions, 0-{len(_FIN_RETRANSMIT_MS)}")
    if (flow.leak or flow.invalid_reply) and flow.initiator == "outside":
        raise ValueError(f"{where}: leak and invalid_reply are modelled for pod-initiated connections only")
    if flow.leak and flow.invalid_reply:
        raise ValueError(f"{where}: an invalid reply ends the connection before it can idle out")
    if flow.alg and _responder_port(flow) != FTP_PORT:
        raise ValueError(f"{where}: the FTP helper (alg) only watches connections to port {FTP_PORT}")
    if scenario.gro:
        # A merged outside packet has no single fate; GRO and per-packet fates are not combined.
        raise ValueError(f"{where}: leak, invalid_reply and alg are not modelled with gro")


def _allocate(scenario: Scenario, layouts: list[_Layout]) -> list[_Layout]:
    """Give every flow the tuple each side shows it under, in the order the flows start, as conntrack
    allocates them: MASQUERADE keeps the source port when it is free, the NodePort masquerade
    (--random-fully) never does."""
    rng = random.Random(f"natproof/{scenario.seed}/ports")
    gw_ip = str(ipaddress.IPv4Network(scenario.pod_cidr).network_address + 1)
    mappings: list[_Mapping] = []
    done: dict[int, _Layout] = {}
    spans: dict[tuple[str, str, int, str, int], list[tuple[int, int]]] = {}
    for lay in sorted(layouts, key=lambda la: (la.first_ns, la.index)):
        f = lay.flow
        for first, last in spans.get(f.inside_tuple, []):
            if lay.first_ns <= last and first <= lay.last_ns:
                raise ValueError(
                    f"scenario {scenario.name!r}: two flows with the inside tuple {f.inside_tuple} "
                    "overlap in time"
                )
        spans.setdefault(f.inside_tuple, []).append((lay.first_ns, lay.last_ns))
        original = (f.pod, f.sport, f.dst, f.dport)

        def place(
            inside: Tuple4 | None, outside: Tuple4 | None, lay: _Layout = lay, original: Tuple4 = original
        ) -> None:
            if inside is not None and inside != original:
                # DNAT alone (NodePort, Local) cannot move a clash away: the kernel would drop the packet.
                seen = (lay.flow.proto, *inside)
                for first, last in spans.get(seen, []):
                    if lay.first_ns <= last and first <= lay.last_ns:
                        raise ValueError(
                            f"scenario {scenario.name!r}: two flows show the inside tuple {seen} at once"
                        )
                spans.setdefault(seen, []).append((lay.first_ns, lay.last_ns))
            done[lay.index] = _Layout(lay.flow, lay.index, lay.events, inside, outside)

        if f.outcome == "untranslated":
            place(original, original)
            continue
        endpoint = f.endpoint
        if f.initiator == "outside":
            assert f.service is not None and endpoint is not None
            if f.outcome == "not_forwarded":
                place(None, original)
            elif f.service.external_traffic_policy == "Local":
                place((f.pod, f.sport, *endpoint), original)
            else:
                key = (f.proto, *endpoint)
                port, mappings = _masquerade(f, key, None, lay, mappings, rng)
                place((gw_ip, port, *endpoint), original)
            continue
        if f.outcome not in _SNAT:
            place(original, None)
            continue
        dst, dport = (f.dst, f.dport) if endpoint is None else endpoint
        preferred = None if scenario.random_fully else f.sport
        port, mappings = _masquerade(f, (f.proto, dst, dport), preferred, lay, mappings, rng)
        place(original, (scenario.nat_ip, port, dst, dport))
    return [done[lay.index] for lay in layouts]


def _masquerade(
    f: Flow,
    key: tuple[str, str, int],
    preferred: int | None,
    lay: _Layout,
    mappings: list[_Mapping],
    rng: random.Random,
) -> tuple[int, list[_Mapping]]:
    """The source port conntrack gives a new connection toward ``key`` (proto, dst, dport after DNAT),
    and the mappings then live. ``preferred`` is the port MASQUERADE tries to keep (None: --random-fully)."""
    t = lay.first_ns
    live = [m for m in mappings if m.live_at(t)]
    same = [m for m in live if m.inside == f.inside_tuple]
    port: int | None = None
    if same:
        if f.proto == "tcp":
            # A SYN that hits a TIME_WAIT entry makes conntrack drop it and start afresh.
            mappings = [m for m in mappings if m not in same]
        else:
            # UDP and ICMP traffic within the entry's lifetime simply continues on the same entry.
            port = same[-1].port
    if port is None:
        used = {m.port for m in live if m.key == key and m.inside != f.inside_tuple}
        port = f.sport
        if preferred is None or port in used:
            # MASQUERADE keeps the source port when it can; when the outside tuple is taken (or
            # --random-fully is set) it searches the ephemeral range from a random offset.
            while True:
                port = rng.randint(*EPHEMERAL_RANGE)
                if port not in used and port != f.sport:
                    break
    mappings = [*mappings, _Mapping(f.inside_tuple, key, port, lay.first_ns, lay.last_ns)]
    return port, mappings


def _mac(ip: str) -> bytes:
    """Locally administered MAC derived from an IPv4 address, as Kubernetes CNIs do (0a:58:<ip>)."""
    return b"\x0a\x58" + ipaddress.IPv4Address(ip).packed


def _mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _link_local(mac: bytes) -> str:
    """The IPv6 link-local address (modified EUI-64) a host derives from its MAC."""
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


@dataclass(frozen=True)
class _Hop:
    """Link-layer facts of one frame: who sent it on the wire, to whom, and how the capture saw it."""

    src_mac: bytes
    dst_mac: bytes
    pkttype: int
    ifindex: int
    pad: bool = False
    """Received from a physical wire: the NIC delivers at least 60 bytes, padding included."""


def _frame(link: str, l3: Any, hop: _Hop, ethertype: int) -> bytes | None:
    """Wrap a scapy layer-3 packet (or ARP) in the capture's link-layer header; None if the link type
    cannot carry it (ARP on a raw-IP capture)."""
    from scapy.layers.l2 import CookedLinuxV2, Ether

    if link == "raw":
        if ethertype == _ETH_ARP:
            return None
        return bytes(l3)
    if link == "ethernet":
        data = bytes(Ether(dst=_mac_str(hop.dst_mac), src=_mac_str(hop.src_mac), type=ethertype) / l3)
        if hop.pad and len(data) < _ETH_MIN_FRAME:
            data += b"\x00" * (_ETH_MIN_FRAME - len(data))
        return data
    # SLL2 records the sender's hardware address (ours, for outgoing frames) in an 8-byte field.
    header = CookedLinuxV2(
        proto=ethertype,
        ifindex=hop.ifindex,
        lladdrtype=1,
        pkttype=hop.pkttype,
        lladdrlen=6,
        src=hop.src_mac + b"\x00\x00",
    )
    payload = bytes(l3)
    if hop.pad and len(payload) < _ETH_MIN_FRAME - 14:
        payload += b"\x00" * (_ETH_MIN_FRAME - 14 - len(payload))
    return bytes(header) + payload


def _l3(proto: Proto, ev: _Event, src: str, sport: int, dst: str, dport: int, ttl: int) -> Any:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.packet import Raw

    ip = IP(src=src, dst=dst, ttl=ttl, id=ev.ip_id, flags="DF" if ev.df else 0)
    if proto == "tcp":
        pkt = ip / TCP(
            sport=sport,
            dport=dport,
            seq=ev.seq,
            ack=ev.ack,
            flags=ev.flags,
            window=ev.window,
            options=list(ev.options),
        )
    elif proto == "udp":
        pkt = ip / UDP(sport=sport, dport=dport)
    elif ev.direction == "egress":
        pkt = ip / ICMP(type=8, id=sport, seq=ev.seq)
    else:
        pkt = ip / ICMP(type=0, id=dport, seq=ev.seq)
    return pkt / Raw(ev.payload) if ev.payload else pkt


class _Renderer:
    """Turns laid-out flows and noise into link-layer frames for both captures."""

    def __init__(self, scenario: Scenario, pod_net: ipaddress.IPv4Network, pods: list[str]) -> None:
        self.s = scenario
        self.gw_ip = str(pod_net.network_address + 1)
        self.gw_mac = _mac(self.gw_ip)
        self.node_mac = b"\x02\x00" + ipaddress.IPv4Address(scenario.nat_ip).packed
        nat_net = ipaddress.IPv4Network(f"{scenario.nat_ip}/24", strict=False)
        router = nat_net.network_address + 1
        self.router_ip = str(router if str(router) != scenario.nat_ip else nat_net.network_address + 254)
        self.router_mac = b"\x02\x00" + ipaddress.IPv4Address(self.router_ip).packed
        # Each pod hangs off its own veth; the host ends are numbered after lo and eth0.
        self.ifindex = {pod: 10 + i for i, pod in enumerate(pods)}
        self.frames: dict[Side, list[_Frame]] = {"inside": [], "outside": []}
        self._order = 0

    def _add(
        self,
        side: Side,
        t: int,
        l3: Any,
        hop: _Hop,
        ethertype: int,
        flow_index: int | None = None,
        direction: Direction | None = None,
    ) -> None:
        data = _frame(self.s.link(side), l3, hop, ethertype)
        if data is not None:
            self._order += 1
            self.frames[side].append(_Frame(t, self._order, data, flow_index, direction))

    def flow(self, lay: _Layout) -> None:
        f = lay.flow
        internal = f.outcome == "internal"
        pod = f.inside_end
        peer_mac = _mac(f.dst) if internal else self.gw_mac
        veth = self.ifindex[pod]
        # A frame to another pod's MAC is not addressed to the host: PACKET_OTHERHOST.
        from_pod = _Hop(_mac(pod), peer_mac, _PACKET_OTHERHOST if internal else _PACKET_HOST, veth)
        to_pod = _Hop(peer_mac, _mac(pod), _PACKET_OUTGOING, veth)
        leaving = _Hop(self.node_mac, self.router_mac, _PACKET_OUTGOING, _OUTSIDE_IFINDEX)
        arriving = _Hop(self.router_mac, self.node_mac, _PACKET_HOST, _OUTSIDE_IFINDEX, pad=True)
        inbound = f.initiator == "outside"
        hops: dict[Direction, dict[Side, _Hop]] = {
            "egress": {"inside": to_pod if inbound else from_pod, "outside": arriving if inbound else leaving},
            "reply": {"inside": from_pod if inbound else to_pod, "outside": leaving if inbound else arriving},
        }
        for ev in lay.events:
            # Leaked packets were not NATed: they show the inside tuple on the outside too.
            tuples: dict[Side, Tuple4 | None] = {
                "inside": lay.inside,
                "outside": lay.inside if ev.fate == "leaked" else lay.outside,
            }
            views: dict[Side, _Event] = {"inside": ev, "outside": ev.outside_view}
            times: dict[Side, int | None] = {"inside": ev.inside_ns, "outside": ev.outside_ns}
            ttls: dict[Side, int] = {"inside": ev.ttl_inside, "outside": ev.ttl_outside}
            # Egress is added inside first, replies outside first (only ties on one side care).
            order: tuple[Side, Side] = ("inside", "outside") if ev.direction == "egress" else ("outside", "inside")
            for side in order:
                t = times[side]
                if t is None:
                    continue
                tup = tuples[side]
                assert tup is not None
                src, sport, dst, dport = tup if ev.direction == "egress" else (tup[2], tup[3], tup[0], tup[1])
                l3 = _l3(f.proto, views[side], src, sport, dst, dport, ttls[side])
                self._add(side, t, l3, hops[ev.direction][side], _ETH_IP, lay.index, ev.direction)

    def noise(self, pods: list[str], start: int, end: int) -> None:
        """Traffic every real capture carries that is no connection: ARP, IPv6 router solicitations,
        IGMP membership reports."""
        rng = random.Random(f"natproof/{self.s.seed}/noise")
        rounds = min(8, 2 + (end - start) // (30 * _SECOND))
        bcast = b"\xff" * 6
        for _ in range(rounds):
            pod = rng.choice(pods)
            pod_mac, veth = _mac(pod), self.ifindex[pod]
            t = rng.randint(start, end)
            # A pod resolves its gateway (the bridge) and the node answers.
            self._arp(
                "inside", t, 1, pod_mac, pod, bcast, self.gw_ip, _Hop(pod_mac, bcast, _PACKET_BROADCAST, veth)
            )
            hop = _Hop(self.gw_mac, pod_mac, _PACKET_OUTGOING, veth)
            self._arp(
                "inside", t + rng.randint(20 * _US, 90 * _US), 2, self.gw_mac, self.gw_ip, pod_mac, pod, hop
            )
            self._router_solicitation(
                "inside",
                rng.randint(start, end),
                pod_mac,
                _Hop(pod_mac, b"\x33\x33\x00\x00\x00\x02", _PACKET_MULTICAST, veth),
            )
            self._igmp(
                "inside",
                rng.randint(start, end),
                pod,
                _Hop(pod_mac, b"\x01\x00\x5e\x00\x00\x16", _PACKET_MULTICAST, veth),
            )
            # The node resolves its default router, and the router resolves the node.
            t = rng.randint(start, end)
            node, router = self.s.nat_ip, self.router_ip
            out = _OUTSIDE_IFINDEX
            self._arp(
                "outside",
                t,
                1,
                self.node_mac,
                node,
                bcast,
                router,
                _Hop(self.node_mac, bcast, _PACKET_OUTGOING, out),
            )
            self._arp(
                "outside",
                t + rng.randint(100 * _US, 900 * _US),
                2,
                self.router_mac,
                router,
                self.node_mac,
                node,
                _Hop(self.router_mac, self.node_mac, _PACKET_HOST, out, pad=True),
            )
            t = rng.randint(start, end)
            self._arp(
                "outside",
                t,
                1,
                self.router_mac,
                router,
                bcast,
                node,
                _Hop(self.router_mac, bcast, _PACKET_BROADCAST, out, pad=True),
            )
            self._arp(
                "outside",
                t + rng.randint(10 * _US, 50 * _US),
                2,
                self.node_mac,
                node,
                self.router_mac,
                router,
                _Hop(self.node_mac, self.router_mac, _PACKET_OUTGOING, out),
            )
            self._router_solicitation(
                "outside",
                rng.randint(start, end),
                self.node_mac,
                _Hop(self.node_mac, b"\x33\x33\x00\x00\x00\x02", _PACKET_OUTGOING, out),
            )
            self._igmp(
                "outside",
                rng.randint(start, end),
                node,
                _Hop(self.node_mac, b"\x01\x00\x5e\x00\x00\x16", _PACKET_OUTGOING, out),
            )

    def _arp(
        self, side: Side, t: int, op: int, hwsrc: bytes, psrc: str, hwdst: bytes, pdst: str, hop: _Hop
    ) -> None:
        from scapy.layers.l2 import ARP

        target = b"\x00" * 6 if op == 1 else hwdst
        arp = ARP(op=op, hwsrc=_mac_str(hwsrc), psrc=psrc, hwdst=_mac_str(target), pdst=pdst)
        self._add(side, t, arp, hop, _ETH_ARP)

    def _router_solicitation(self, side: Side, t: int, mac: bytes, hop: _Hop) -> None:
        from scapy.layers.inet6 import ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr, IPv6

        rs = (
            IPv6(src=_link_local(mac), dst="ff02::2", hlim=255)
            / ICMPv6ND_RS()
            / ICMPv6NDOptSrcLLAddr(lladdr=_mac_str(mac))
        )
        self._add(side, t, rs, hop, _ETH_IPV6)

    def _igmp(self, side: Side, t: int, src: str, hop: _Hop) -> None:
        from scapy.layers.igmp import IGMPv3_MR, IGMPv3_MR_Group
        from scapy.layers.inet import IP, IPOption_Router_Alert

        # Joining mDNS: an IGMPv3 "change to exclude" report to 224.0.0.22, TTL 1, router alert.
        report = IP(
            src=src, dst="224.0.0.22", ttl=1, tos=0xC0, id=0, flags="DF", options=[IPOption_Router_Alert()]
        ) / IGMPv3_MR(records=[IGMPv3_MR_Group(rtype=4, maddr="224.0.0.251")])
        self._add(side, t, report, hop, _ETH_IP)


def simulate(scenario: Scenario) -> Simulation:
    """Lay out every flow, apply kube-proxy's DNAT and MASQUERADE, and build both captures and the truth,
    in memory."""
    pod_net = _check(scenario)
    layouts = [
        _Layout(flow, i, _FlowBuilder(flow, i, scenario).build()) for i, flow in enumerate(scenario.flows)
    ]
    layouts = _allocate(scenario, layouts)
    ordered = sorted(layouts, key=lambda la: (la.first_ns, la.index))
    conn_of = {lay.index: n for n, lay in enumerate(ordered)}

    pod_addrs = {f.inside_end for f in scenario.flows}
    pod_addrs |= {f.dst for f in scenario.flows if f.outcome == "internal"}
    if not pod_addrs:
        pod_addrs = {str(pod_net.network_address + 10)}
    pods = sorted(pod_addrs, key=lambda a: ipaddress.IPv4Address(a))
    renderer = _Renderer(scenario, pod_net, pods)
    for lay in layouts:
        renderer.flow(lay)
    if scenario.noise:
        end = max((lay.last_ns for lay in layouts), default=scenario.epoch_ns) + _SECOND
        renderer.noise([f.inside_end for f in scenario.flows] or pods, scenario.epoch_ns, end)

    offset_ns = round(scenario.clock_offset_s * _SECOND)
    sides: dict[Side, tuple[Packet, ...]] = {}
    for side in ("inside", "outside"):
        shift = offset_ns if side == "outside" else 0
        # tcpdump writing a microsecond capture truncates the kernel's nanosecond stamp.
        unit = 1 if scenario.is_nanosecond(side) else _US
        packets = []
        for fr in sorted(renderer.frames[side], key=lambda fr: (fr.true_ns, fr.order)):
            ts = fr.true_ns + shift
            if ts < 0:
                raise ValueError(f"scenario {scenario.name!r}: clock offset puts a packet before 1970")
            conn = None if fr.flow_index is None else conn_of[fr.flow_index]
            data = fr.data
            if side == "outside" and scenario.outside_underlay:
                data = encapsulate(data, scenario.outside_underlay)
            packets.append(Packet(ts - ts % unit, data, conn, fr.direction))
        sides[side] = tuple(packets)

    truth = {
        "schema": TRUTH_SCHEMA,
        "scenario": scenario.name,
        "source": "generator",
        "pod_cidr": scenario.pod_cidr,
        "clock_offset_s": float(scenario.clock_offset_s),
        "connections": [_truth_row(lay, renderer.frames, scenario.writes_model_truth) for lay in ordered],
    }
    return Simulation(
        scenario,
        sides["inside"],
        sides["outside"],
        truth,
        LINKTYPES[scenario.inside_link],
        LINKTYPES[scenario.outside_link],
    )


UNDERLAY_SRC, UNDERLAY_DST = "192.0.2.250", "192.0.2.251"
"""The outer addresses of Scenario.outside_underlay's packets (a mirror session's source and target)."""
UNDERLAY_VNI = 4242


def encapsulate(frame: bytes, kind: str) -> bytes:
    """An Ethernet frame carried in an overlay packet of ``kind`` (vxlan: UDP 4789, geneve: UDP 6081, gre:
    Transparent Ethernet Bridging with a key, ipip: its IP packet alone in IPv4, protocol 4 or 41), itself in an
    Ethernet frame from UNDERLAY_SRC to UNDERLAY_DST. A frame with no IP packet (ARP) stays as it is for ipip."""
    from scapy.contrib.geneve import GENEVE
    from scapy.layers.inet import GRE, IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw

    outer = Ether(src="02:00:00:00:0a:01", dst="02:00:00:00:0a:02") / IP(src=UNDERLAY_SRC, dst=UNDERLAY_DST, id=0)
    if kind == "vxlan":
        return bytes(outer / UDP(sport=49152, dport=4789, chksum=0) / VXLAN(flags=0x08, vni=UNDERLAY_VNI) / frame)
    if kind == "geneve":
        return bytes(outer / UDP(sport=49152, dport=6081, chksum=0) / GENEVE(proto=0x6558, vni=UNDERLAY_VNI) / frame)
    if kind == "gre":
        return bytes(outer / GRE(key_present=1, key=UNDERLAY_VNI, proto=0x6558) / frame)
    if kind == "ipip":
        etype = int.from_bytes(frame[12:14], "big")
        if etype not in (0x0800, 0x86DD):
            return frame
        outer[IP].proto = 4 if etype == 0x0800 else 41
        return bytes(outer / Raw(frame[14:]))
    raise ValueError(f"outside_underlay must be one of vxlan, geneve, ipip, gre, not {kind!r}")


def _truth_row(lay: _Layout, frames: dict[Side, list[_Frame]], model: bool) -> dict[str, Any]:
    """One connection of the truth: natproof.truth/1's fields, and with ``model`` docs/model.md's.

    Shape (model): {"proto", "initiator", "inside", "outside", "original", "translated", "rewrites",
    "service", "verdict", "packets", "fates" (only for flows with a failure option)}; tuples are
    {"src", "sport", "dst", "dport"} in the initiator's direction, or null where not seen."""
    f = lay.flow

    def count(side: Side, direction: Direction) -> int:
        return sum(1 for fr in frames[side] if fr.flow_index == lay.index and fr.direction == direction)

    def tuple_dict(t: Tuple4 | None) -> dict[str, Any] | None:
        return None if t is None else {"src": t[0], "sport": t[1], "dst": t[2], "dport": t[3]}

    packets = {
        "egress_inside": count("inside", "egress"),
        "egress_outside": count("outside", "egress"),
        "reply_outside": count("outside", "reply"),
        "reply_inside": count("inside", "reply"),
    }
    if not model:
        return {
            "proto": f.proto,
            "inside": tuple_dict(lay.inside),
            "outside": tuple_dict(lay.outside),
            "verdict": f.outcome,
            "packets": packets,
        }
    original: Tuple4 = (f.pod, f.sport, f.dst, f.dport)
    # As the responder received it: the leg after the NAT (null where it was never captured, and for
    # pod-to-pod traffic, which no NAT touches).
    after = lay.inside if f.initiator == "outside" else lay.outside
    translated = None if f.outcome == "internal" else after
    rewrites = []
    if translated is not None:
        rewrites = [k for k, a, b in zip(_TUPLE_KEYS, original, translated, strict=True) if a != b]
    service = None
    if f.service is not None and f.endpoint is not None:
        service = {
            "type": f.service.type,
            "address": f.service.address,
            "port": f.service.port,
            "backend": {"address": f.endpoint[0], "port": f.endpoint[1]},
        }
    row: dict[str, Any] = {
        "proto": f.proto,
        "initiator": f.initiator,
        "inside": tuple_dict(lay.inside),
        "outside": tuple_dict(lay.outside),
        "original": tuple_dict(original),
        "translated": tuple_dict(translated),
        "rewrites": rewrites,
        "service": service,
        "verdict": f.outcome,
        "packets": packets,
    }
    if f.has_fates:
        row["fates"] = _fates(lay)
    return row


_TUPLE_KEYS = ("src", "sport", "dst", "dport")


def _fates(lay: _Layout) -> dict[str, int]:
    """Packets of one flow by fate (docs/model.md): a packet seen on both sides counts once."""
    fates = dict.fromkeys(FATES, 0)
    for ev in lay.events:
        if ev.fate is not None:
            fates[ev.fate] += 1
        elif ev.inside_ns is not None and ev.outside_ns is not None:
            fates["crossed"] += 1
        else:
            fates["inside_only" if ev.inside_ns is not None else "outside_only"] += 1
    return fates


def write_pcap(path: Path, packets: tuple[Packet, ...], linktype: int, nanosecond: bool) -> None:
    """Write a classic little-endian pcap with scapy's writer, with exact integer timestamps."""
    from scapy.utils import RawPcapWriter

    with RawPcapWriter(str(path), linktype=linktype, nano=nanosecond, endianness="<", snaplen=262144) as w:
        # The writer only emits the file header with the first packet; an empty capture still needs one.
        w.write_header(None)
        for p in packets:
            sec, frac = divmod(p.ts_ns, _SECOND)
            w.write_packet(p.data, sec=sec, usec=frac if nanosecond else frac // _US)


def write_scenario(scenario: Scenario, outdir: Path) -> dict[str, Any]:
    """Write inside.pcap, outside.pcap and expected.json into ``outdir``; returns the truth."""
    sim = simulate(scenario)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_pcap(outdir / "inside.pcap", sim.inside, sim.inside_linktype, scenario.is_nanosecond("inside"))
    write_pcap(outdir / "outside.pcap", sim.outside, sim.outside_linktype, scenario.is_nanosecond("outside"))
    (outdir / "expected.json").write_text(json.dumps(sim.truth, indent=2) + "\n")
    return sim.truth


def _named() -> dict[str, Scenario]:
    a, b, c = "10.244.0.10", "10.244.1.20", "10.244.2.30"
    web, api, alt = "198.51.100.10", "192.0.2.20", "203.0.113.50"
    basic = (
        Flow("tcp", a, 40000, web, 80),
        Flow("tcp", b, 45678, api, 443, start_s=0.2, requests=2, response_segments=3),
        Flow("tcp", a, 40001, alt, 8080, start_s=0.5, response_segments=1),
        # Same source port as the first flow but another destination: its outside tuple is free.
        Flow("tcp", a, 40000, api, 443, start_s=1.0),
        # The first flow's 5-tuple again, after it closed: a new connection with a new ISN.
        Flow("tcp", a, 40000, web, 80, start_s=30.0),
    )
    every = (
        Flow("tcp", a, 41000, web, 80, "translated"),
        Flow("tcp", a, 41001, api, 443, "no_reply", start_s=0.1),
        Flow("tcp", b, 41002, web, 443, "reply_dropped", start_s=0.2),
        Flow("tcp", b, 41003, alt, 80, "untranslated", start_s=0.3),
        Flow("tcp", c, 41004, api, 80, "not_forwarded", start_s=0.4),
        Flow("tcp", a, 41005, b, 8080, "internal", start_s=0.5),
    )
    scenarios = [
        Scenario("basic", basic),
        Scenario(
            "port_collision",
            (
                Flow("tcp", a, 40000, web, 80, requests=2),
                # Same sport to the same server while the first mapping is live: the port is taken.
                Flow("tcp", b, 40000, web, 80, start_s=0.3),
                Flow("tcp", c, 40000, web, 80, start_s=0.6),
                # Long after every mapping above expired (last packet + 120 s): the port is kept again.
                Flow("tcp", b, 40000, web, 80, start_s=400.0),
            ),
            seed=1,
        ),
        Scenario(
            "random_fully",
            (
                Flow("tcp", a, 40000, web, 80),
                Flow("tcp", b, 45678, api, 443, start_s=0.2),
                Flow("udp", a, 53000, "192.0.2.53", 53, start_s=0.4),
                Flow("tcp", b, 45679, alt, 80, "no_reply", start_s=0.6),
            ),
            random_fully=True,
            seed=2,
        ),
        Scenario(
            "udp",
            (
                Flow("udp", a, 53000, "192.0.2.53", 53, requests=2),
                Flow("udp", b, 53001, "198.51.100.53", 53, "no_reply", start_s=0.1),
                Flow("udp", b, 50000, alt, 5000, start_s=0.2, requests=3),
                Flow("udp", c, 50001, alt, 5000, "reply_dropped", start_s=0.3, requests=2),
            ),
            seed=3,
        ),
        Scenario(
            "icmp",
            (
                Flow("icmp", a, 0x1C2A, "198.51.100.7", 0, requests=3),
                # ping in another pod happens to pick the same identifier toward the same host.
                Flow("icmp", b, 0x1C2A, "198.51.100.7", 0, start_s=0.5, requests=3),
                Flow("icmp", c, 7, "192.0.2.1", 0, "no_reply", start_s=0.2, requests=2),
            ),
            seed=4,
        ),
        Scenario("every_verdict", every, seed=5),
        Scenario(
            "retransmit",
            (
                Flow("tcp", a, 42000, web, 80, syn_retransmit=True),
                Flow("tcp", b, 42001, api, 443, "no_reply", start_s=0.2),
                Flow("tcp", b, 42002, web, 80, "reply_dropped", start_s=0.4),
            ),
            seed=6,
        ),
        Scenario("clock_offset", basic[:3], clock_offset_s=3.5, seed=7),
        Scenario(
            "gro",
            (
                Flow("tcp", a, 43000, web, 80, response_segments=4),
                Flow("tcp", b, 43001, api, 443, start_s=0.1, requests=2, response_segments=6),
                Flow("tcp", a, 43002, alt, 80, start_s=0.2, response_segments=1),
            ),
            gro=True,
            seed=8,
        ),
        Scenario(
            "sll2",
            (
                Flow("tcp", a, 44000, web, 80),
                Flow("udp", b, 53000, "192.0.2.53", 53, start_s=0.1),
                Flow("icmp", b, 99, api, 0, start_s=0.2, requests=2),
            ),
            inside_link="sll2",
            seed=9,
        ),
        Scenario(
            "mixed_precision",
            (Flow("tcp", a, 45000, web, 80), Flow("tcp", b, 45001, api, 443, start_s=0.05)),
            inside_nanosecond=False,
            outside_nanosecond=True,
            seed=10,
        ),
        Scenario(
            "raw",
            (Flow("tcp", a, 46000, web, 80), Flow("icmp", b, 5, api, 0, start_s=0.1)),
            outside_link="raw",
            seed=11,
        ),
    ]
    return {s.name: s for s in scenarios}


SCENARIOS: dict[str, Scenario] = _named()
"""Hand-written scenarios, one per behaviour the matcher must prove."""


def _model_named() -> dict[str, Scenario]:
    a, b, c, ftpd = "10.244.0.10", "10.244.1.20", "10.244.100.100", "10.244.0.5"
    node = "203.0.113.2"
    web, api = "198.51.100.10", "192.0.2.20"
    client, client2 = "198.51.100.20", "192.0.2.77"
    # kube-proxy's picture of cases/clusterip-dnat: the API server behind 10.96.0.1:443, DNS behind 10.96.0.10.
    kube_api = Service("ClusterIP", "10.96.0.1", 443, (("198.51.100.10", 6443), ("198.51.100.11", 6443)))
    kube_dns = Service("ClusterIP", "10.96.0.10", 53, (("198.51.100.53", 53),))
    web_svc = Service("ClusterIP", "10.100.7.9", 80, ((web, 8080), (api, 8080), ("203.0.113.50", 8080)))
    ftp_svc = Service("ClusterIP", "10.96.40.21", 21, ((web, 21),))
    # cases/nodeport-inbound: 30080 (Cluster) and 30081 (Local) in front of a pod's :8080.
    np_cluster = Service("NodePort", node, 30080, ((a, 8080), (b, 8080)))
    np_local = Service("NodePort", node, 30081, ((a, 8080),), external_traffic_policy="Local")
    np_dns = Service("NodePort", node, 30053, ((b, 53),))
    np_ftp = Service("NodePort", node, 30021, ((ftpd, 21),))
    scenarios = [
        Scenario(
            "clusterip_dnat",
            (
                # kube-proxy picks an endpoint per connection: the scenario names each pick.
                Flow("tcp", a, 50438, "10.96.0.1", 443, service=kube_api, backend=0),
                Flow("tcp", a, 50454, "10.96.0.1", 443, start_s=0.15, service=kube_api, backend=1),
                Flow("tcp", b, 44874, "10.96.0.1", 443, start_s=0.3, service=kube_api, backend=0, requests=2),
                Flow("udp", a, 34545, "10.96.0.10", 53, start_s=0.4, service=kube_dns),
                Flow("udp", b, 54658, "10.96.0.10", 53, start_s=0.55, service=kube_dns, requests=2),
                Flow("tcp", b, 41000, "10.100.7.9", 80, start_s=0.6, service=web_svc, backend=2),
                # Plain egress to one of the backends, next to the DNATed connections.
                Flow("tcp", a, 48284, web, 80, start_s=0.7),
            ),
            seed=20,
        ),
        Scenario(
            "clusterip_outcomes",
            (
                Flow("tcp", a, 45000, "10.96.0.1", 443, "no_reply", service=kube_api, backend=1),
                Flow("tcp", b, 45001, "10.96.0.1", 443, "reply_dropped", start_s=0.1, service=kube_api),
                Flow("udp", a, 45002, "10.96.0.10", 53, "not_forwarded", start_s=0.2, service=kube_dns),
                Flow("tcp", b, 45003, "10.100.7.9", 80, "reply_other_path", start_s=0.3, service=web_svc, backend=1),
                # Two pods' connections land on one outside tuple unless MASQUERADE moves one: the
                # second reaches 198.51.100.10:6443 by the ClusterIP, the first directly.
                Flow("tcp", a, 46000, web, 6443, start_s=0.4, requests=2),
                Flow("tcp", b, 46000, "10.96.0.1", 443, start_s=0.45, service=kube_api, backend=0),
            ),
            seed=21,
        ),
        Scenario(
            "nodeport_inbound",
            (
                Flow("tcp", client, 43765, node, 30080, service=np_cluster, backend=0),
                Flow("tcp", client, 51909, node, 30081, start_s=0.05, service=np_local),
                Flow("tcp", client2, 40022, node, 30080, start_s=0.1, service=np_cluster, backend=1, requests=2),
                Flow("udp", client2, 41053, node, 30053, start_s=0.15, service=np_dns, requests=2),
                # One pod egress among the inbound connections.
                Flow("tcp", a, 49788, web, 80, start_s=0.2),
            ),
            seed=22,
        ),
        Scenario(
            "nodeport_outcomes",
            (
                Flow("tcp", client, 43001, node, 30080, "no_reply", service=np_cluster),
                Flow("tcp", client, 43002, node, 30081, "reply_dropped", start_s=0.1, service=np_local),
                Flow("tcp", client2, 43003, node, 30080, "not_forwarded", start_s=0.2, service=np_cluster, backend=1),
                Flow("udp", client2, 43004, node, 30053, "reply_dropped", start_s=0.3, service=np_dns),
            ),
            seed=23,
        ),
        Scenario(
            "fin_leak",
            (
                # cases/idle-expiry-fin-leak: a closed connection, then one that idles out and leaks 7 FINs.
                Flow("tcp", a, 42924, web, 80),
                Flow("tcp", a, 42934, web, 80, start_s=0.12, leak=7),
                Flow("tcp", b, 42940, "10.96.0.1", 443, start_s=0.2, service=kube_api, backend=1, leak=3),
                Flow("tcp", a, 42938, web, 80, start_s=9.3, requests=5),
            ),
            seed=24,
        ),
        Scenario(
            "invalid_reply",
            (
                # cases/oow-invalid-node-rst, and the same behind a ClusterIP.
                Flow("tcp", a, 41000, web, 80, invalid_reply=True),
                Flow("tcp", b, 41001, "10.96.0.1", 443, start_s=0.2, service=kube_api, invalid_reply=True),
                Flow("tcp", b, 41002, api, 443, start_s=0.4),
            ),
            seed=25,
        ),
        Scenario(
            "ftp_alg",
            (
                # cases/ftp-alg-active: "10,244,0,5" becomes "203,0,113,2", one byte longer (+1).
                Flow("tcp", ftpd, 43756, web, 21, alg=True, requests=3),
                # "10,244,100,100" becomes "203,0,113,2": three bytes shorter (-3).
                Flow("tcp", c, 43757, api, 21, start_s=0.1, alg=True, requests=2),
                Flow("tcp", a, 43758, "10.96.40.21", 21, start_s=0.2, service=ftp_svc, alg=True, requests=2),
                # Inbound: the pod's 227 answer carries 10,244,0,5; the client gets 203,0,113,2.
                Flow("tcp", client, 40021, node, 30021, start_s=0.3, service=np_ftp, alg=True, requests=2),
            ),
            seed=26,
        ),
        Scenario(
            "failures_combined",
            (
                Flow("tcp", c, 47000, web, 21, alg=True, leak=4, requests=2),
                Flow("tcp", ftpd, 47001, "10.96.40.21", 21, start_s=0.1, service=ftp_svc, alg=True, invalid_reply=True),
                Flow("tcp", b, 47002, "10.100.7.9", 80, start_s=0.2, service=web_svc, backend=1, leak=2),
                Flow("tcp", client, 47003, node, 30080, start_s=0.3, service=np_cluster, backend=1),
                Flow("icmp", a, 77, api, 0, start_s=0.4, requests=2),
            ),
            inside_link="sll2",
            clock_offset_s=-1.25,
            seed=27,
        ),
    ]
    return {s.name: s for s in scenarios}


MODEL_SCENARIOS: dict[str, Scenario] = _model_named()
"""Hand-written scenarios for docs/model.md (correlate/2): ClusterIP DNAT, NodePort inbound, per-packet
failures. Kept apart from SCENARIOS, whose tests and /1 matcher assume pod-initiated MASQUERADE."""
