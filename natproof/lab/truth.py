"""Parse ``conntrack -E -o timestamp,extended`` and ``conntrack -L -o extended`` lines into lab truth."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from natproof.lab.traffic import Attempt

SCHEMA = "natproof.truth/1"

_TIMESTAMP = re.compile(r"^\[(\d+)\.(\d+)\]$")
_EVENTS = {"[NEW]": "NEW", "[UPDATE]": "UPDATE", "[DESTROY]": "DESTROY"}
# With nf_conntrack_timestamp=1 DESTROY events carry "[start=Tue Nov 21 ...]": brackets holding spaces.
_DATED_FLAG = re.compile(r"\[(?:start|stop)=[^\]]*\]")
_TUPLE_KEYS = {"src", "dst", "sport", "dport", "type", "code", "id"}


@dataclass(frozen=True)
class FlowTuple:
    """One direction of a conntrack entry. For ICMP ``sport`` is the echo identifier and ``dport`` 0."""

    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None

    def to_dict(self) -> dict[str, str | int]:
        return {"src": self.src, "sport": self.sport, "dst": self.dst, "dport": self.dport}

    def rewrites(self, other: FlowTuple) -> list[str]:
        """The fields of ``other`` that differ from this tuple's, in the order src, sport, dst, dport."""
        return [f for f in ("src", "sport", "dst", "dport") if getattr(self, f) != getattr(other, f)]

    def __str__(self) -> str:
        def end(address: str, port: int) -> str:
            return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

        return f"{end(self.src, self.sport)} -> {end(self.dst, self.dport)}"


@dataclass(frozen=True)
class ConntrackLine:
    """One conntrack entry as printed by ``conntrack -E`` (``event`` set) or ``conntrack -L`` (not set)."""

    ts: float | None
    """Epoch seconds from ``-o timestamp``: when the conntrack tool received the event, not kernel time."""
    event: str | None
    """``NEW``, ``UPDATE`` or ``DESTROY``; None for a listing line."""
    family: str
    """``ipv4`` or ``ipv6`` with ``-o extended``; empty without it."""
    proto: str
    protonum: int
    timeout: int | None
    """Seconds left; absent from DESTROY events."""
    state: str | None
    """TCP (or SCTP, DCCP) state; None for UDP and ICMP."""
    original: FlowTuple
    reply: FlowTuple
    flags: frozenset[str] = frozenset()
    """Bracketed flags without brackets: UNREPLIED, ASSURED, OFFLOAD, HW_OFFLOAD."""
    orig_packets: int | None = None
    """Packets counted in the original direction (needs nf_conntrack_acct=1)."""
    reply_packets: int | None = None
    orig_bytes: int | None = None
    reply_bytes: int | None = None
    extras: tuple[tuple[str, str], ...] = ()
    """Other key=value fields (mark, use, id, zone, delta-time ...), in order."""

    @property
    def replied(self) -> bool:
        """The kernel saw a packet in the reply direction (IPS_SEEN_REPLY: no [UNREPLIED] flag)."""
        return "UNREPLIED" not in self.flags

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        """(proto, src, sport, dst, dport) of the original tuple: the inside view of the connection."""
        o = self.original
        return (self.proto, o.src, o.sport, o.dst, o.dport)


def parse_line(line: str) -> ConntrackLine | None:
    """Parse one line; None for blank lines, ``#`` comments and conntrack's "N flow entries" summaries.

    Raises ValueError for a line that starts like an entry but lacks its two tuples.
    """
    text = _DATED_FLAG.sub(" ", line.strip())
    if not text or text.startswith("#") or text.startswith("conntrack v"):
        return None
    tokens = text.split()
    pos = 0
    ts = None
    if (m := _TIMESTAMP.match(tokens[pos])) is not None:
        ts = int(m.group(1)) + int(m.group(2)) / 10 ** len(m.group(2))
        pos += 1
    event = _EVENTS.get(tokens[pos]) if pos < len(tokens) else None
    if event is not None:
        pos += 1
    family = ""
    if pos + 1 < len(tokens) and tokens[pos] in ("ipv4", "ipv6") and tokens[pos + 1].isdigit():
        family, pos = tokens[pos], pos + 2
    if pos + 1 >= len(tokens) or not tokens[pos + 1].isdigit():
        raise ValueError(f"not a conntrack line: {line.strip()!r}")
    proto, protonum = tokens[pos], int(tokens[pos + 1])
    pos += 2
    timeout = None
    if pos < len(tokens) and tokens[pos].isdigit():
        timeout, pos = int(tokens[pos]), pos + 1
    state = None
    if pos < len(tokens) and "=" not in tokens[pos] and not tokens[pos].startswith("["):
        state, pos = tokens[pos], pos + 1

    tuples: list[dict[str, str]] = []
    counters: list[dict[str, int]] = []
    flags: set[str] = set()
    extras: list[tuple[str, str]] = []
    in_tuple = False
    for token in tokens[pos:]:
        key, sep, value = token.partition("=")
        if key == "src" and sep and len(tuples) < 2:
            # The first src= opens the original tuple, the second the reply tuple.
            tuples.append({key: value})
            counters.append({})
            in_tuple = True
            continue
        if in_tuple and key in _TUPLE_KEYS and sep and key not in tuples[-1]:
            tuples[-1][key] = value
            continue
        # Anything else closes the tuple: so a trailing id= (conntrack's entry id) is not an ICMP id.
        in_tuple = False
        if token.startswith("[") and token.endswith("]"):
            flags.add(token[1:-1])
        elif key in ("packets", "bytes") and sep and counters and key not in counters[-1]:
            counters[-1][key] = int(value)
        else:
            extras.append((key, value))
    if len(tuples) != 2 or any("dst" not in t for t in tuples):
        raise ValueError(f"conntrack line without original and reply tuples: {line.strip()!r}")
    while len(counters) < 2:
        counters.append({})
    return ConntrackLine(
        ts=ts,
        event=event,
        family=family,
        proto=proto,
        protonum=protonum,
        timeout=timeout,
        state=state,
        original=_flow_tuple(tuples[0]),
        reply=_flow_tuple(tuples[1]),
        flags=frozenset(flags),
        orig_packets=counters[0].get("packets"),
        reply_packets=counters[1].get("packets"),
        orig_bytes=counters[0].get("bytes"),
        reply_bytes=counters[1].get("bytes"),
        extras=tuple(extras),
    )


def _flow_tuple(fields: dict[str, str]) -> FlowTuple:
    if "id" in fields or "type" in fields:
        # ICMP: the echo identifier plays the part of the source port in both directions.
        return FlowTuple(
            fields["src"],
            fields["dst"],
            int(fields.get("id", 0)),
            0,
            int(fields["type"]) if "type" in fields else None,
            int(fields["code"]) if "code" in fields else None,
        )
    return FlowTuple(fields["src"], fields["dst"], int(fields.get("sport", 0)), int(fields.get("dport", 0)))


def parse_lines(lines: Iterable[str]) -> list[ConntrackLine]:
    """Every entry in ``lines``, in order; comments, blanks and summaries skipped."""
    return [entry for line in lines if (entry := parse_line(line)) is not None]


@dataclass(frozen=True)
class ServiceRule:
    """A Service address the design configured: a ClusterIP, or a NodePort on the node's address."""

    type: str
    """``ClusterIP`` or ``NodePort``."""
    proto: str
    address: str
    port: int

    def to_dict(self, backend: FlowTuple | None) -> dict[str, object]:
        return {
            "type": self.type,
            "address": self.address,
            "port": self.port,
            "backend": {"address": backend.dst, "port": backend.dport} if backend else None,
        }


@dataclass(frozen=True)
class TruthRules:
    """What the scenario's design adds to the kernel's facts when choosing a verdict."""

    pod_addresses: frozenset[str]
    """Entries whose original source is one of these are pod-initiated (egress, internal, hairpin); entries
    whose reply source is one of these and original source is not are inbound (NodePort, an ALG's data
    connection). Other entries do not belong in the truth."""
    internal_networks: tuple[str, ...]
    """A destination in one of these networks is pod-to-pod traffic: verdict ``internal``."""
    reply_dropped: frozenset[tuple[str, int]] = frozenset()
    """(proto, server port) whose replies the node drops after conntrack has seen them."""
    not_forwarded_sources: frozenset[str] = frozenset()
    """Pod addresses whose egress the node does not forward (ip_forward=0, FORWARD DROP)."""
    port_exhausted: frozenset[tuple[str, str, int]] = frozenset()
    """(proto, server address, port) whose SNAT port pool the design exhausts: an attempt there with no
    conntrack entry had every SYN dropped by the kernel for want of a free port."""
    services: tuple[ServiceRule, ...] = ()
    """ClusterIPs and NodePorts: a connection to one of them carries ``service`` in the truth."""
    refused: Mapping[tuple[str, str, int], str] = field(default_factory=dict)
    """(proto, destination, port) the design refuses or drops on the node before any entry is confirmed
    (REJECT, a Service without endpoints, a hairpin the bridge will not send back), with the reason."""
    reply_other_path: bool = False
    """Replies come back over a link that is not captured (asymmetric routing)."""
    unseen_translated: frozenset[str] = frozenset()
    """Backend addresses whose DNATed leg is in neither capture (a Service endpoint on another bridge port
    than the captured one): the truth gives ``translated`` null for those, and says why in ``notes``."""
    broadcast_addresses: frozenset[str] = frozenset()
    """Directed broadcast addresses of the node's own subnets (10.244.0.255 for 10.244.0.1/24): a packet to one
    is delivered to the node and the bridge's ports, never routed on."""
    overlay_networks: tuple[str, ...] = ()
    """Pod subnets of other nodes, reached through an overlay on the uplink (flannel's VXLAN): a pod-to-pod connection
    to one is internal, yet crosses the outside capture, encapsulated and untranslated; its outside tuple is its
    inside tuple (and its translated tuple its original one), as for any connection that crossed unchanged."""
    routed_networks: tuple[str, ...] = ()
    """Internal networks beyond the node, reached over its uplink by routing, neither NAT nor an overlay (the VPC
    CNI's VPC CIDR: its other subnets and other nodes' pods): a connection to one (not to a pod of this node) is
    internal, yet crosses the outside capture untranslated, so its outside tuple is its inside tuple and its
    translated tuple its original one, as for any connection that crossed unchanged."""

    def service_for(self, proto: str, address: str, port: int) -> ServiceRule | None:
        for rule in self.services:
            if (rule.proto, rule.address, rule.port) == (proto, address, port):
                return rule
        return None


@dataclass(frozen=True)
class Connection:
    """One connection of the truth: pod-initiated, or inbound to a pod."""

    proto: str
    inside: FlowTuple
    """The tuple on the inside capture, in the initiator's direction: ``original`` for pod-initiated
    connections (for hairpin the leg before the NAT), ``translated`` for inbound ones."""
    outside: FlowTuple | None
    """The tuple on the outside capture, in the initiator's direction; None when nothing crossed eth0."""
    verdict: str
    first_seen: float
    """Epoch seconds of its NEW event (else its first event), or of the client's attempt without an entry."""
    evidence: str
    """How the verdict was derived, for scenario.txt."""
    entry: ConntrackLine | None = None
    """The latest conntrack line about it (events, then the closing listing)."""
    notes: str = ""
    """Why the truth of this connection is not a single conntrack entry (truth.json's ``notes``)."""
    initiator: str = "inside"
    """``inside`` (a pod opened it) or ``outside`` (inbound: NodePort, an ALG's data connection)."""
    original: FlowTuple | None = None
    """As the initiator sent it: conntrack's original tuple (or the client's own report without an entry)."""
    translated: FlowTuple | None = None
    """As the responder received it: conntrack's reply tuple reversed; None without an entry, or when the
    leg after the NAT is in neither capture."""
    service: dict[str, object] | None = None
    """``{"type", "address", "port", "backend"}`` when the original destination is a Service the design set up."""
    other_capture_off: bool | None = None
    """Set where the design stops a capture during the traffic: True for a connection made while the outside
    capture was not running (natproof.correlate/2's ``other_capture_off`` flag), False for the others; None (not in
    truth.json) elsewhere."""
    reached_inside: bool = True
    """False for an inbound attempt that reached no pod (no entry: refused or dropped on the node): truth.json
    gives it no inside tuple, its client's tuple as the outside one (``inside`` keeps it for the design's checks)."""
    single_file_verdict: str | None = None
    """The verdict of the run's capture of every interface (any.pcap, node.pcapng) where it differs from the two
    captures' (truth.json's ``single_file_verdict``): replies that come back over a link the outside capture does
    not see cross one that capture holds, so reverse translation is proven there (translated, not
    reply_other_path)."""
    single_file_translated: FlowTuple | None = None
    """The translated tuple that capture proves where the two captures cannot (truth.json's
    ``single_file_translated``, with ``single_file_rewrites``): a Service's leg DNATed to an endpoint on the node is
    on the endpoint's veth and cni0, in neither of the two captures but in the capture of every interface."""
    single_file_service: dict[str, object] | None = None
    """``service`` with the backend that capture shows (truth.json's ``single_file_service``)."""

    @property
    def rewrites(self) -> list[str] | None:
        if self.original is None or self.translated is None:
            return None
        return self.original.rewrites(self.translated)

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "proto": self.proto,
            "inside": self.inside.to_dict() if self.reached_inside else None,
            "outside": self.outside.to_dict() if self.outside else None,
            "verdict": self.verdict,
            "initiator": self.initiator,
            "original": (self.original or self.inside).to_dict(),
            "translated": self.translated.to_dict() if self.translated else None,
            "rewrites": self.rewrites,
            "service": self.service,
        }
        if self.other_capture_off is not None:
            doc["other_capture_off"] = self.other_capture_off
        if self.single_file_verdict is not None:
            doc["single_file_verdict"] = self.single_file_verdict
        if self.single_file_translated is not None:
            doc["single_file_translated"] = self.single_file_translated.to_dict()
            doc["single_file_rewrites"] = (self.original or self.inside).rewrites(self.single_file_translated)
        if self.single_file_service is not None:
            doc["single_file_service"] = self.single_file_service
        if self.notes:
            doc["notes"] = self.notes
        return doc


@dataclass
class _Track:
    first: ConntrackLine
    latest: ConntrackLine
    first_seen: float
    destroyed: bool = False
    replied: bool = False
    reply_packets: int = 0
    events: list[str] = field(default_factory=list)
    news: list[ConntrackLine] = field(default_factory=list)
    """Its NEW events: more than one when one client connection was tracked as several entries in turn."""


NEVER_FORWARDED = (
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    ("broadcast", ("255.255.255.255/32",)),
    ("link_local", ("169.254.0.0/16", "fe80::/10")),
    ("loopback", ("127.0.0.0/8", "::1/128")),
)
DHCP_PORTS = frozenset({67, 68, 546, 547})


def never_forwarded(entry: ConntrackLine, rules: TruthRules) -> str | None:
    """Why no router forwards this entry's traffic (so it is no connection through the NAT), or None.

    conntrack tracks such traffic all the same where it passes iptables (a bridged multicast with
    bridge-nf-call-iptables=1, a DHCP datagram to the node): multicast, limited or directed broadcast,
    link-local and loopback addresses (RFC 1112, 919, 3927, 4291), and DHCP/DHCPv6 between ports 67/68, 546/547.
    """
    o = entry.original
    if entry.proto == "udp" and o.sport in DHCP_PORTS and o.dport in DHCP_PORTS:
        return "dhcp"
    if o.dst in rules.broadcast_addresses:
        return "broadcast"
    for address in (o.dst, o.src):
        ip = ipaddress.ip_address(address)
        for reason, networks in NEVER_FORWARDED:
            if any(ip.version == net.version and ip in net for net in map(ipaddress.ip_network, networks)):
                return reason
    return None


def build_connections(
    events: Iterable[ConntrackLine],
    listing: Iterable[ConntrackLine],
    attempts: Iterable[Attempt],
    rules: TruthRules,
) -> tuple[list[Connection], list[str]]:
    """Join conntrack events, the closing listing and the clients' attempts into connections.

    Returns the connections in order of first appearance, and notes on what was filtered out or missing.
    """
    notes: list[str] = []
    tracks: dict[tuple[str, str, int, str, int], list[_Track]] = {}
    order: list[_Track] = []
    ignored: dict[str, int] = {}

    unforwarded: dict[str, int] = {}

    def keep(entry: ConntrackLine) -> bool:
        from_pod = entry.original.src in rules.pod_addresses
        to_pod = entry.reply.src in rules.pod_addresses  # inbound: DNATed to a pod
        if entry.family not in ("", "ipv4", "ipv6") or not (from_pod or to_pod):
            label = f"{entry.family or '?'} {entry.proto} from {entry.original.src}"
            ignored[label] = ignored.get(label, 0) + 1
            return False
        reason = never_forwarded(entry, rules)
        if reason is not None:
            label = f"{reason}: {entry.proto} {entry.original}"
            unforwarded[label] = unforwarded.get(label, 0) + 1
            return False
        return True

    # Two listeners (NEW, and UPDATE+DESTROY) write separately and each stamps an event when it reads it, so
    # an UPDATE can carry an earlier stamp than its own NEW. Merge by stamp; a connection is then placed by
    # its NEW stamp, which keeps the kernel's order of NEW events (a single listener reads them in order).
    timed = sorted((e for e in events if e.ts is not None), key=lambda e: (e.ts, e.event != "NEW"))
    for entry in timed:
        if not keep(entry):
            continue
        live = [t for t in tracks.get(entry.key, []) if not t.destroyed]
        if entry.event == "NEW" and live and live[-1].events and "NEW" in live[-1].events:
            # A second NEW for a live tuple: the old entry was replaced (e.g. a SYN reopening TIME_WAIT).
            live[-1].destroyed = True
            live = []
        if not live:
            track = _Track(first=entry, latest=entry, first_seen=entry.ts or 0.0)
            tracks.setdefault(entry.key, []).append(track)
            order.append(track)
        else:
            track = live[-1]
        if entry.event == "NEW" and entry.ts is not None:
            track.first_seen = entry.ts
        _observe(track, entry)
        if entry.event == "DESTROY":
            track.destroyed = True

    for entry in listing:
        if not keep(entry):
            continue
        live = [t for t in tracks.get(entry.key, []) if not t.destroyed]
        if live:
            _observe(live[-1], entry)
            continue
        notes.append(f"{entry.proto} {entry.original}: in the closing listing but in no event (event lost)")
        track = _Track(first=entry, latest=entry, first_seen=float("inf"))
        _observe(track, entry)
        tracks.setdefault(entry.key, []).append(track)
        order.append(track)

    if ignored:
        notes.append(
            "left out (neither from a pod nor to one): "
            + ", ".join(f"{count} x {label}" for label, count in sorted(ignored.items()))
        )
    if unforwarded:
        notes.append(
            "left out (traffic no router forwards, no connection through the NAT; lines per entry): "
            + ", ".join(f"{count} x {label}" for label, count in sorted(unforwarded.items()))
        )

    connections: list[Connection] = []
    # A client reports each connection it made. One connection may still appear as several entries (a SYN
    # after the pod's RST closed the entry re-creates it, and SNAT may then pick another port; two listeners
    # can also stamp its events out of order): those are judged together under the entry conntrack recorded
    # last. A tuple the client used for several connections (an ephemeral port reused after the previous
    # one closed) keeps one connection per attempt: each entry goes to the latest attempt begun by its time.
    attempts_by_key: dict[tuple[str, str, int, str, int], list[Attempt]] = {}
    for a in sorted(attempts, key=lambda a: a.t_start):
        attempts_by_key.setdefault(a.key, []).append(a)
    per_attempt: dict[int, list[_Track]] = {}
    owner_of: dict[int, int] = {}
    for track in order:
        tries = attempts_by_key.get(track.first.key)
        if tries:
            when = track.first.ts if track.first.ts is not None else track.first_seen
            begun = [a for a in tries if a.t_start <= when + ATTEMPT_SLACK_S]
            owner = id(begun[-1] if begun else tries[0])
            per_attempt.setdefault(owner, []).append(track)
            owner_of[id(track)] = owner
    claimed: set[int] = set()
    by_id = {id(a): a for tries in attempts_by_key.values() for a in tries}
    for track in order:
        notes_here = ""
        attempt = None
        if track.first.key in attempts_by_key:
            owner = owner_of[id(track)]
            if owner in claimed:
                continue
            claimed.add(owner)
            attempt = by_id[owner]
            group = per_attempt[owner]
            if len(group) > 1:
                track, notes_here = _merge(group)
            if track.first_seen == float("inf"):
                track.first_seen = attempt.t_start
        connections.append(_judge(track, rules, attempt, notes_here))

    by_key = {i: a for i, a in by_id.items() if i not in claimed}
    for attempt in by_key.values():
        inside = FlowTuple(attempt.src, attempt.dst, attempt.sport, attempt.dport)
        rule = rules.service_for(attempt.proto, attempt.dst, attempt.dport)
        service = rule.to_dict(None) if rule else None
        refused = rules.refused.get((attempt.proto, attempt.dst, attempt.dport))
        if refused is not None:
            verdict = "not_forwarded"
            why = f"no conntrack entry: {refused} (design); the pod saw '{attempt.outcome}' ({attempt.detail})"
        elif _internal(attempt.dst, rules):
            verdict, why = "internal", "no conntrack entry; destination in the pod network (design)"
        elif attempt.src in rules.not_forwarded_sources:
            verdict = "not_forwarded"
            why = (
                f"no conntrack entry: the node drops this pod's egress before the entry is confirmed; "
                f"the pod saw '{attempt.outcome}' ({attempt.detail})"
            )
        elif (attempt.proto, attempt.dst, attempt.dport) in rules.port_exhausted:
            verdict = "not_forwarded"
            why = (
                "no conntrack entry: SNAT found no free port in the pool and the kernel dropped the SYN "
                f"when confirming the entry (design); the pod saw '{attempt.outcome}' ({attempt.detail})"
            )
        else:
            notes.append(f"{attempt.proto} {inside}: attempted by {attempt.pod} but no conntrack entry")
            verdict, why = "not_forwarded", "no conntrack entry and the design does not explain it"
        # A client outside the pod network (an internet client of a NodePort) whose attempt made no entry never
        # reached a pod: its tuple is the outside capture's, and it started there.
        inbound = attempt.src not in rules.pod_addresses and not _internal(attempt.src, rules)
        connections.append(
            Connection(attempt.proto, inside, inside if inbound else None, verdict, attempt.t_start, why,
                       original=inside, service=service, initiator="outside" if inbound else "inside",
                       reached_inside=not inbound)
        )
    connections.sort(key=lambda c: c.first_seen)
    return connections, notes


ATTEMPT_SLACK_S = 0.05
"""An entry may be stamped this much before the client noted its attempt's start (both read the host clock)."""


def _merge(group: list[_Track]) -> tuple[_Track, str]:
    """One track from several under one tuple, headed by the last NEW event; and a note saying so.

    The last entry is the one that carried the connection to its end (the earlier ones were closed by the
    pod's RST after the server refused the tuple), so its outside tuple is the connection's mapping.
    """
    news = sorted((n for t in group for n in t.news), key=lambda n: n.ts or 0.0)
    first = news[-1] if news else min(group, key=lambda t: t.first_seen).first
    merged = _Track(
        first=first,
        latest=group[-1].latest,
        first_seen=min(t.first_seen for t in group),
        destroyed=group[-1].destroyed,
        replied=any(t.replied for t in group),
        reply_packets=max(t.reply_packets for t in group),
        events=[e for t in group for e in t.events],
        news=news,
    )
    if len(news) < 2:
        return merged, ""
    t0 = news[0].ts or 0.0
    turns = ", then ".join(
        f"{n.reply.dst}:{n.reply.dport} (NEW at +{(n.ts or 0.0) - t0:.3f} s)" for n in news
    )
    ports = {n.reply.dport for n in news}
    how = "under the same outside port" if len(ports) == 1 else f"under {len(ports)} outside ports"
    note = (
        f"one client connection tracked as {len(news)} conntrack entries in turn, {how}: {turns}; "
        "outside is the last one, which carried the connection"
    )
    return merged, note


def _observe(track: _Track, entry: ConntrackLine) -> None:
    track.latest = entry
    if entry.event:
        track.events.append(entry.event)
    if entry.event == "NEW":
        track.news.append(entry)
    if entry.replied:
        track.replied = True
    if entry.reply_packets:
        track.reply_packets = max(track.reply_packets, entry.reply_packets)


def _internal(address: str, rules: TruthRules) -> bool:
    return _in(address, rules.internal_networks)


def _in(address: str, networks: Iterable[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(net) for net in networks)


def _judge(track: _Track, rules: TruthRules, attempt: Attempt | None, notes: str = "") -> Connection:
    entry = track.first
    orig, reply = entry.original, entry.reply
    original = FlowTuple(orig.src, orig.dst, orig.sport, orig.dport)
    # The responder received the packet as the reply tuple says, reversed: DNAT shows in reply.src/sport,
    # SNAT in reply.dst/dport. ICMP: the echo identifier stands in sport, in both directions.
    if entry.proto == "icmp":
        translated = FlowTuple(reply.dst, reply.src, reply.sport, 0)
    else:
        translated = FlowTuple(reply.dst, reply.src, reply.dport, reply.sport)
    inbound = orig.src not in rules.pod_addresses
    rule = rules.service_for(entry.proto, orig.dst, orig.dport)
    service = rule.to_dict(translated) if rule else None
    replied = track.replied or track.reply_packets > 0
    counted = (
        f"reply packets={track.reply_packets}" if track.latest.reply_packets is not None else "no counters"
    )
    kinds = Counter(track.events)
    logged = ", ".join(f"{kinds[k]} {k}" for k in ("NEW", "UPDATE", "DESTROY") if kinds[k]) or "no event"
    seen = f"{logged}; last state {track.latest.state or '-'}; {counted}"
    pod_view = f"; the client saw '{attempt.outcome}' ({attempt.detail})" if attempt else ""
    shown: FlowTuple | None = translated
    single_verdict: str | None = None
    single_translated: FlowTuple | None = None
    single_service: dict[str, object] | None = None
    if inbound:
        # Initiated outside and DNATed to a pod: the pod's side sees the translated tuple.
        inside, mapped = translated, original
        nat = "+".join(original.rewrites(translated)) or "nothing"
        if replied:
            verdict, why = "translated", f"inbound to a pod ({nat} rewritten) and reply seen"
        else:
            verdict, why = "no_reply", f"inbound to a pod ({nat} rewritten), [UNREPLIED] to the end"
    else:
        inside, mapped = original, translated
        if translated.dst == orig.src and translated != original:
            # Hairpin: both legs cross the client's own bridge port, so the inside capture proves the rewrite.
            mapped = None
            verdict = "translated" if replied else "no_reply"
            why = (
                f"hairpin: DNAT back to the client itself, {'+'.join(original.rewrites(translated))} "
                f"rewritten; both legs on its own bridge port; {'reply seen' if replied else '[UNREPLIED]'}"
            )
        elif _internal(orig.dst, rules) or _internal(translated.dst, rules):
            mapped, verdict = None, "internal"
            across = translated == original and _in(orig.dst, rules.overlay_networks)
            routed = (translated == original and orig.dst not in rules.pod_addresses
                      and _in(orig.dst, rules.routed_networks))
            if across or routed:
                # It left by eth0 unchanged: to a pod on another node inside the overlay, or routed on (the VPC).
                mapped = inside
            elif translated == original:
                shown = None  # pod to pod, nothing rewritten: no leg after a NAT to show
            if across:
                why = (f"destination in the pod network, on another node: crossed the uplink inside the overlay, "
                       f"untranslated ({orig.dst} in {', '.join(rules.overlay_networks)})")
            elif routed:
                why = (f"destination in the pod network beyond this node ({', '.join(rules.routed_networks)}): routed "
                       "over the uplink, untranslated")
            elif _internal(orig.dst, rules):
                why = "destination in the pod network"
            else:
                why = f"Service endpoint {translated.dst}:{translated.dport} in the pod network: DNAT on the bridge"
            if translated.dst in rules.unseen_translated:
                shown = None
                # The run's capture of every interface holds that leg (the endpoint's veth, cni0): there the rewrite
                # is proven from the capture itself, as a hairpin's is.
                single_verdict = "translated" if replied else "no_reply"
                single_translated = translated
                single_service = rule.to_dict(translated) if rule else None
                notes = "; ".join(
                    n for n in (
                        notes,
                        f"the kernel DNATed it to {translated.dst}:{translated.dport} as it crossed the bridge; "
                        "that leg is on the endpoint's bridge port, in neither capture",
                    ) if n
                )  # fmt: skip
        elif orig.src in rules.not_forwarded_sources:
            mapped, verdict = None, "not_forwarded"
            why = "entry exists but the design drops this pod's egress on the node"
        elif translated == original:
            mapped, verdict = inside, "untranslated"
            why = (
                "reply tuple points back at the pod address: no NAT; "
                + ("reply seen (the far side routes the pod address back)" if replied else "[UNREPLIED] to the end")
            )
        elif replied and (entry.proto, orig.dport) in rules.reply_dropped:
            verdict = "reply_dropped"
            why = (
                f"the kernel saw the reply (no [UNREPLIED]) and the node drops replies from {entry.proto} "
                f"port {orig.dport} in FORWARD"
            )
        elif replied and rules.reply_other_path:
            verdict = "reply_other_path"
            why = "rewritten and reply seen by conntrack, but replies come back over a link not captured (design)"
        elif replied:
            verdict, why = "translated", f"{'+'.join(original.rewrites(translated))} rewritten and reply seen"
        else:
            verdict, why = "no_reply", "rewritten, [UNREPLIED] to the end"
    evidence = f"{why}; {seen}{pod_view}"
    if rule is not None and shown is None:
        service = rule.to_dict(None)  # the endpoint is in notes: no capture shows which one it was
    return Connection(
        entry.proto,
        inside,
        mapped,
        verdict,
        track.first_seen,
        evidence,
        track.latest,
        notes,
        initiator="outside" if inbound else "inside",
        original=original,
        translated=shown,
        service=service,
        single_file_verdict="translated" if verdict == "reply_other_path" else single_verdict,
        single_file_translated=single_translated,
        single_file_service=single_service,
    )
