"""The scenario registry, and run_scenario: topology, traffic, captures and kernel truth for one scenario.

There is no ``conntrack-full`` scenario (a node whose conntrack table is full and drops new connections with
"nf_conntrack: table full, dropping packet"). On this kernel the table's limit,
net.netfilter.nf_conntrack_max, can be written only in the initial network namespace; in any other it is
read-only (mode 0444: ``sysctl -w net.netfilter.nf_conntrack_max=64`` fails with EINVAL, a plain write with
EACCES). The lab never touches the initial namespace, and it does not fake a full table either: a DROP rule, a
connlimit match or a tiny port pool would be another mechanism with other packets and other conntrack
records, and a truth labelled "table full" that the kernel never produced. ``get_scenario("conntrack-full")``
raises LabError saying so. ``port-exhaustion`` shows the nearest real symptom: new connections fail (their
SYNs are dropped on the node when conntrack confirms their entry, and nothing leaves) while the established
ones carry on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import ipaddress
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt

from natproof.lab.capture import (
    ANY_SNAPLEN,
    RING_KIB,
    CaptureStats,
    ConntrackRecorder,
    PacketCapture,
    RecorderStats,
    count_syns,
    foreign_addresses,
    foreign_ip_addresses,
    merge_pcaps,
    node_links,
    snapshot_conntrack,
    snapshot_kernel_records,
)
from natproof.lab.kube import Endpoint, Service, kube_proxy_rules
from natproof.lab.kubectl import DUMP_FILES, write_dumps
from natproof.lab.topology import (
    INET,
    MASQUERADE_RULE,
    NODE,
    POD_CIDR,
    VXLAN_DEVICE,
    VXLAN_ID,
    VXLAN_PORT,
    Lab,
    LabError,
    PeerNode,
    Pod,
    TopologySpec,
    check_prerequisites,
    new_prefix,
    signals_raise,
)
from natproof.lab.traffic import Action, Attempt, ClientPlan, Server, run_clients, start_servers
from natproof.lab.truth import SCHEMA, Connection, ServiceRule, TruthRules, build_connections, parse_lines
from natproof.lab.vpccni import Eni, EniPod, VpcCniLab, VpcCniSpec, snat_rules
from natproof.lab.vpccni import describe as describe_vpc_cni
from natproof.testing.interfaces import merge_pcapng

SETTLE_S = 0.3
"""Wait after the last client before stopping the captures, for the last FIN/ACKs and late replies."""
FAILURE_TIMEOUT_S = 3.3
"""Client timeout where no answer comes. SYNs are retransmitted 1 s apart for the first four tries on
kernels with net.ipv4.tcp_syn_linear_timeouts (6.7+), at 1 s and 3 s before: 2-3 retransmissions in all."""
MAX_PCAP_BYTES = 500_000
PHASE_GAP_S = 1.5
"""Pause between two rounds of clients (Scenario.phases): well past natproof's 500 ms capture-edge margin
(natproof.correlate.CAPTURE_EDGE_NS)."""

SERVER = "198.51.100.10"
HTTP = Server(INET, "http", SERVER, 80)
OUTPUT_FILES = ("inside.pcap", "outside.pcap", "conntrack.log", "truth.json", "scenario.txt")
NODE_FILES = ("any.pcap", "node.pcapng", "links.txt")
"""The same run as one capture of many interfaces: ``tcpdump -i any`` (LINUX_SLL2), and one pcapng of every node
interface but lo with an interface block each (a tcpdump per interface, merged: what dumpcap with several -i
writes; dumpcap itself starts capturing on some interfaces up to seconds after it prints "Capturing on", measured
2.7 s on the third of three veths, and would miss the first connections); ``ip -o link`` of the node names the
indexes. ``natproof correlate any.pcap --interfaces links.txt`` must find the two-file form's connections."""
NODE_CAPTURE_FACTOR = 4
"""A node-wide capture holds each forwarded packet on up to three interfaces (veth, cni0, eth0)."""
KERNEL_RECORDS = "conntrack"
"""Folder beside the captures holding the kernel's record in each format users hold (``natproof correlate
--conntrack`` reads each): events.log (``conntrack -E -o timestamp``, one listener for every event, started
before the traffic), the listings of natproof.lab.capture.KERNEL_SNAPSHOTS taken after it, and index.json (the
command behind each file, its entries, and the listener's netlink socket drops)."""


@dataclass(frozen=True)
class Recording:
    """Everything one run observed, before it is judged and written."""

    prefix: str
    attempts: list[Attempt]
    captures: list[CaptureStats]
    recorders: list[RecorderStats]
    listing_command: str
    listing: list[str]
    node_state: dict[str, str]
    """Titled text blocks: iptables rules and counters, addresses, routes, sysctls, offloads."""
    setup_commands: list[str]
    started: float
    finished: float
    outside_off: frozenset[tuple[str, str, int, str, int]] = frozenset()
    """Attempts (Attempt.key) made while the outside capture was not running (Scenario.outside_phases)."""
    node_captures: list[CaptureStats] = field(default_factory=list)
    """any.pcap and node.pcapng (NODE_FILES)."""
    links: str = ""
    """``ip -o link`` of the node namespace (links.txt)."""
    kernel_records: dict[str, dict[str, object]] = field(default_factory=dict)
    """What the KERNEL_RECORDS folder holds: file name -> command, entries (and socket_drops for events.log)."""


Check = Callable[[list[Connection], Recording], list[str]]


@dataclass(frozen=True)
class Scenario:
    """A named lab experiment: node configuration, servers, the pods' traffic and the truth rules."""

    name: str
    description: str
    """One line, for ``list_scenarios``."""
    design: str
    """What is run and why, and how the truth of its special connections is derived (for scenario.txt)."""
    clients: tuple[ClientPlan, ...]
    topology: TopologySpec = field(default_factory=TopologySpec)
    servers: tuple[Server, ...] = (HTTP,)
    inside_interface: str = "cni0"
    """The interface the inside capture is taken on; several, comma-separated (each pod's routed veth where there is
    no bridge: the VPC CNI), are captured one tcpdump each and merged in time order into inside.pcap."""
    pod_cidr: str = POD_CIDR
    reply_dropped: frozenset[tuple[str, int]] = frozenset()
    not_forwarded_pods: tuple[str, ...] = ()
    port_exhausted: frozenset[tuple[str, str, int]] = frozenset()
    """(proto, server address, port) whose SNAT port pool the design exhausts."""
    check: Check | None = None
    max_pcap_bytes: int = MAX_PCAP_BYTES
    gzip_pcaps: bool = False
    """Store the captures as inside.pcap.gz and outside.pcap.gz (large scenarios; natproof and Wireshark read
    gzip-compressed captures as they are)."""
    services: tuple[Service, ...] = ()
    """kube-proxy Services of the design (their rules are in ``topology.iptables_rules``)."""
    refused: tuple[tuple[tuple[str, str, int], str], ...] = ()
    """((proto, destination, port), reason): attempts the node refuses or drops before any entry exists."""
    reply_other_path: bool = False
    unseen_translated: tuple[str, ...] = ()
    """Service endpoints whose DNATed leg is in neither capture (see TruthRules.unseen_translated)."""
    server_initiated: frozenset[tuple[str, str, int]] = frozenset()
    """(proto, source address, source port) of inbound connections a server opens by itself (an FTP data
    connection): in the truth although no client attempted them."""
    settle_s: float = 0.0
    """Extra wait after the last client, for packets the kernel still sends (retransmitted FINs)."""
    phases: tuple[tuple[ClientPlan, ...], ...] = ()
    """Further rounds of clients, each started PHASE_GAP_S after the one before has finished (``clients`` is
    phase 0)."""
    outside_phases: tuple[int, int] | None = None
    """(first, last) phase the outside capture covers: it starts PHASE_GAP_S before the first and stops
    SETTLE_S after the last (captures that only partly overlap); None: it runs as long as the inside one."""

    def rules(self) -> TruthRules:
        pods = self.topology.pods
        blocked = [p.ip for p in pods if p.name in self.not_forwarded_pods or not self.topology.ip_forward]
        node_ip = str(ipaddress.ip_interface(self.topology.node_address).ip)
        services = [ServiceRule("ClusterIP", s.proto, s.cluster_ip, s.port) for s in self.services]
        services += [
            ServiceRule("NodePort", s.proto, node_ip, s.node_port) for s in self.services if s.node_port is not None
        ]
        return TruthRules(
            pod_addresses=frozenset(p.ip for p in pods),
            internal_networks=(self.pod_cidr,),
            reply_dropped=self.reply_dropped,
            not_forwarded_sources=frozenset(blocked),
            port_exhausted=self.port_exhausted,
            services=tuple(services),
            refused=dict(self.refused),
            reply_other_path=self.reply_other_path,
            unseen_translated=frozenset(self.unseen_translated),
            broadcast_addresses=frozenset(
                str(net.broadcast_address)
                for net in (ipaddress.ip_interface(a).network for a in self.topology.bridge_addresses)
                if net.version == 4 and net.prefixlen < 31
            ),
            overlay_networks=(self.topology.peer_node.pod_subnet,) if self.topology.peer_node else (),
            # The VPC CNI's pod network is the VPC: beyond this node's pods it is reached over eth0, unchanged.
            routed_networks=self.topology.vpc_cidrs if isinstance(self.topology, VpcCniSpec) else (),
        )


# -- scenario-specific checks: each returns the problems it finds -----------------------------------------


def _check_port_kept(connections: list[Connection], _: Recording) -> list[str]:
    return [
        f"{c.inside}: source port rewritten to {c.outside.sport} with no clash"
        for c in connections
        if c.outside and c.proto == "tcp" and c.outside.sport != c.inside.sport
    ]


def _check_collision(connections: list[Connection], _: Recording) -> list[str]:
    outs = [c.outside.sport for c in connections if c.outside]
    ins = {c.inside.sport for c in connections}
    if len(connections) != 2 or len(ins) != 1 or len(set(outs)) != 2 or ins.pop() not in outs:
        return [f"expected one kept and one rewritten source port, got {outs}"]
    return []


def _check_icmp(connections: list[Connection], _: Recording) -> list[str]:
    ins = {c.inside.sport for c in connections}
    outs = [c.outside.sport for c in connections if c.outside]
    if len(connections) != 2 or len(ins) != 1 or len(set(outs)) != 2:
        return [f"expected one echo identifier kept and one rewritten, got {outs}"]
    return []


def _check_random_fully(connections: list[Connection], _: Recording) -> list[str]:
    kept = sum(1 for c in connections if c.outside and c.outside.sport == c.inside.sport)
    # A random port equals the original one with probability ~1/64512: more than one is not random.
    return [f"{kept} of {len(connections)} source ports kept under --random-fully"] if kept > 1 else []


def _check_udp(connections: list[Connection], _: Recording) -> list[str]:
    privileged = [c for c in connections if c.inside.sport == 123]
    if not privileged or privileged[0].outside is None or privileged[0].outside.sport != 123:
        return ["source port 123 was not kept"]
    return []


def _check_reply_drop(_: list[Connection], rec: Recording) -> list[str]:
    # The DROP rule's own counter is the kernel's proof that replies reached the node and went no further.
    for line in rec.node_state.get("iptables -L FORWARD -v -x -n", "").splitlines():
        cols = line.split()
        if "DROP" in cols and "spt:8080" in line and cols[0].isdigit() and int(cols[0]) > 0:
            return []
    return ["the FORWARD DROP rule for sport 8080 counted no packet"]


def _check_port_pool(connections: list[Connection], rec: Recording) -> list[str]:
    low, high = PORT_POOL
    problems = [
        f"{c.inside}: outside port {c.outside.sport} is not in the pool {low}-{high}"
        for c in connections
        if c.verdict == "translated" and c.outside and not low <= c.outside.sport <= high
    ]
    verdicts = Counter(c.verdict for c in connections)
    if not verdicts["translated"] or not verdicts["not_forwarded"]:
        problems.append(f"expected translated and not_forwarded connections, got {dict(verdicts)}")
    # The kernel's own count of the SYNs it dropped for want of a port, against the two captures.
    failed = sum(int(n) for n in re.findall(r"\binsert_failed=(\d+)", rec.node_state.get("conntrack -S", "")))
    syns = {cap.path.name: count_syns(cap.path) for cap in rec.captures}
    lost = syns["inside.pcap"] - syns["outside.pcap"]
    if not failed or failed != lost:
        problems.append(f"conntrack insert_failed={failed}, but {lost} SYNs seen inside were not seen outside")
    return problems


def _ip_packets(path: Path) -> list[tuple[str, str, Any]]:
    """(src, dst, transport layer) of each IPv4 and IPv6 packet in an Ethernet pcap."""
    out = []
    with open(path, "rb") as f:
        for _, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                out.append((_addr(ip.src), _addr(ip.dst), ip.data))
    return out


def _addr(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def _capture(rec: Recording, name: str) -> Path:
    return next(cap.path for cap in rec.captures if cap.path.name == name)


def _rule_packets(rec: Recording, *needles: str, save: str = "iptables-save") -> list[int]:
    """Packet counters of the iptables-save -c (or ``save`` -c: ip6tables-save) rules whose line holds every
    needle."""
    counts = []
    for line in rec.node_state.get(f"{save} -c", "").splitlines():
        if line.startswith("[") and all(n in line for n in needles):
            counts.append(int(line[1:].split(":", 1)[0]))
    return counts


def _counted(*needles: str, save: str = "iptables-save") -> Check:
    """Every rule holding all ``needles`` exists and counted at least one packet (the kernel's own proof)."""

    def check(_: list[Connection], rec: Recording) -> list[str]:
        counts = _rule_packets(rec, *needles, save=save)
        if not counts:
            return [f"no iptables rule with {' '.join(needles)}"]
        return [f"iptables rule with {' '.join(needles)} counted no packet"] if 0 in counts else []

    return check


def _counted_between(*needles: str) -> Check:
    """The rules holding all ``needles`` exist and counted packets between them, each alone perhaps none: a
    Service's KUBE-SEP rules behind kube-proxy's random choice (-m statistic --mode random), where six requests
    all go to one of two endpoints one run in 32 (a live run of clusterip-local did)."""

    def check(_: list[Connection], rec: Recording) -> list[str]:
        counts = _rule_packets(rec, *needles)
        if not counts:
            return [f"no iptables rule with {' '.join(needles)}"]
        return [] if sum(counts) else [f"no iptables rule with {' '.join(needles)} counted a packet"]

    return check


def _conntrack_stat(rec: Recording, name: str) -> int:
    """A conntrack -S counter summed over the CPUs."""
    return sum(int(n) for n in re.findall(rf"\b{name}=(\d+)", rec.node_state.get("conntrack -S", "")))


def _nowhere(capture: str, *networks: str) -> Check:
    """No IPv4 packet in ``capture`` has an address in ``networks``."""

    def check(_: list[Connection], rec: Recording) -> list[str]:
        nets = [ipaddress.ip_network(n) for n in networks]
        seen = sorted(
            {a for src, dst, _ in _ip_packets(_capture(rec, capture)) for a in (src, dst)
             if any(ipaddress.ip_address(a) in net for net in nets)}
        )  # fmt: skip
        return [f"{capture}: packets with {', '.join(seen)}"] if seen else []

    return check


def _verdicts(**expected: int) -> Check:
    def check(connections: list[Connection], _: Recording) -> list[str]:
        got = Counter(c.verdict for c in connections)
        return [] if got == Counter(expected) else [f"verdicts {dict(got)}, expected {expected}"]

    return check


def _check_clusterip(connections: list[Connection], _: Recording) -> list[str]:
    problems = []
    for c in connections:
        if c.service is None:
            continue
        rewrites = c.rewrites or []
        if "src" not in rewrites or "dst" not in rewrites or c.verdict != "translated":
            problems.append(f"{c.inside}: ClusterIP connection with rewrites {rewrites}, verdict {c.verdict}")
    return problems


def _check_local_backends(connections: list[Connection], rec: Recording) -> list[str]:
    # Which endpoint conntrack chose, from the listing and events: both must be pod addresses of the design.
    problems = []
    backends = Counter()
    for c in connections:
        if c.service is not None and c.entry is not None:
            backends[c.entry.reply.src] += 1
    if not set(backends) <= {"10.244.0.21", "10.244.0.22", "10.244.0.53"}:
        problems.append(f"DNAT chose {dict(backends)}, not the design's endpoints")
    return problems


def _check_nodeport(connections: list[Connection], _: Recording) -> list[str]:
    problems = []
    inbound = [c for c in connections if c.initiator == "outside"]
    for c in inbound:
        svc, t = c.service, c.translated
        if svc is None or t is None:
            problems.append(f"{c.original}: inbound without service or translated tuple")
            continue
        if svc["port"] == 30080 and (t.src != "10.244.0.1" or c.verdict != "translated"):
            problems.append(f"{c.original}: Cluster policy, but the pod saw {t.src} ({c.verdict})")
        if svc["port"] == 30081 and (t.src != "198.51.100.20" or c.verdict != "translated"):
            problems.append(f"{c.original}: Local policy, but the pod saw {t.src} ({c.verdict})")
    if len(inbound) != 4:
        problems.append(f"{len(inbound)} inbound connections, expected 4")
    return problems


def _check_hairpin(connections: list[Connection], _: Recording) -> list[str]:
    problems = []
    for c in connections:
        if c.service is None:
            continue
        t = c.translated
        if c.verdict != "translated" or t is None or (t.src, t.dst) != ("10.244.0.1", "10.244.0.10"):
            problems.append(f"{c.inside}: hairpin expected 10.244.0.1 -> 10.244.0.10, got {t} ({c.verdict})")
    return problems


def _check_hairpin_off(connections: list[Connection], rec: Recording) -> list[str]:
    # The DNAT rule counts the SYNs; the bridge then drops them (it will not send a frame back out of the
    # port it came in on): nothing reaches eth0 and the pod's own port shows the SYN only, never a SYN-ACK.
    problems = _counted("KUBE-SEP-", "DNAT")(connections, rec)
    inside = _ip_packets(_capture(rec, "inside.pcap"))
    if any(src == "10.244.0.1" and dst == "10.244.0.10" for src, dst, _ in inside):
        problems.append("inside.pcap: a hairpinned packet came back although hairpin mode is off")
    return problems


def _check_rejects(connections: list[Connection], rec: Recording) -> list[str]:
    problems = _counted("has no endpoints", "REJECT")(connections, rec)
    problems += _counted("--dport 443", "tcp-reset")(connections, rec)
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    leaked = [d for _, d, l4 in outside if d.startswith("10.96.") or getattr(l4, "dport", None) == 443]
    if leaked:
        problems.append(f"outside.pcap: {len(leaked)} refused packets left the node")
    # The node's own answers on the inside: ICMP port unreachable from the bridge address, a RST "from" :443.
    inside = _ip_packets(_capture(rec, "inside.pcap"))
    icmp = [1 for s, _, l4 in inside if s == "10.244.0.1" and isinstance(l4, dpkt.icmp.ICMP) and l4.type == 3]
    rst = [1 for _, _, l4 in inside if isinstance(l4, dpkt.tcp.TCP) and l4.sport == 443 and l4.flags & 4]
    if not icmp or not rst:
        problems.append(f"inside.pcap: {len(icmp)} ICMP unreachable from 10.244.0.1, {len(rst)} RST from :443")
    return problems


def _check_nodeport_rejected(connections: list[Connection], rec: Recording) -> list[str]:
    problems = _counted("KUBE-EXTERNAL-SERVICES", "REJECT")(connections, rec)
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    icmp = [1 for s, d, l4 in outside if s == NODE_IP and d == CLIENT and isinstance(l4, dpkt.icmp.ICMP)
            and l4.type == 3 and l4.code == 3]
    if not icmp:
        problems.append("outside.pcap: no ICMP port unreachable from the node to the client")
    inside = _ip_packets(_capture(rec, "inside.pcap"))
    if any(getattr(l4, "sport", None) == 30090 or getattr(l4, "dport", None) == 30090 for _, _, l4 in inside):
        problems.append("inside.pcap: a packet of the refused NodePort reached the pod")
    return problems


OOW_PAYLOAD = b"natproof out-of-window segment\n"


def _check_oow(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    if _conntrack_stat(rec, "invalid") < 1:
        problems.append("conntrack -S counted no invalid packet")
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    inside = _ip_packets(_capture(rec, "inside.pcap"))
    injected = [l4 for s, _, l4 in outside if isinstance(l4, dpkt.tcp.TCP) and l4.data == OOW_PAYLOAD]
    if len(injected) != 1:
        return [*problems, f"outside.pcap: {len(injected)} injected segments, expected 1"]
    if any(isinstance(l4, dpkt.tcp.TCP) and l4.data == OOW_PAYLOAD for _, _, l4 in inside):
        problems.append("inside.pcap: the out-of-window segment reached the pod")
    # The node's RST for it: from the node's address and the connection's outside port, seq = its ack.
    seg = injected[0]
    node_rst = [
        l4 for s, _, l4 in outside
        if s == "203.0.113.2" and isinstance(l4, dpkt.tcp.TCP) and l4.flags & dpkt.tcp.TH_RST
        and l4.sport == seg.dport and l4.seq == seg.ack
    ]  # fmt: skip
    pod_rst = [l4 for _, _, l4 in inside if isinstance(l4, dpkt.tcp.TCP) and l4.flags & dpkt.tcp.TH_RST]
    if not node_rst:
        problems.append("outside.pcap: no RST from the node for the out-of-window segment")
    elif any(r.seq == seg.ack for r in pod_rst):
        problems.append("inside.pcap: the pod sent the RST, not the node")
    return problems


def _check_idle_expiry(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    if _conntrack_stat(rec, "invalid") < 1:
        problems.append("conntrack -S counted no invalid packet")
    idle = [c for c in connections if c.entry is not None and c.entry.event == "DESTROY"]
    if len(idle) != 1:
        problems.append(f"{len(idle)} connections ended by expiry (DESTROY), expected 1")
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    leaked = [
        l4 for s, _, l4 in outside
        if s == "10.244.0.10" and isinstance(l4, dpkt.tcp.TCP) and l4.flags & dpkt.tcp.TH_FIN
    ]  # fmt: skip
    if not leaked:
        problems.append("outside.pcap: no FIN left with the pod address")
    elif idle and any(l4.sport != idle[0].inside.sport for l4 in leaked):
        problems.append("outside.pcap: a leaked FIN of another connection")
    return problems


def _check_udp_remap(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    udp = [c for c in connections if c.proto == "udp"]
    if len(udp) != 1 or "2 conntrack entries in turn, under 2 outside ports" not in udp[0].notes:
        problems.append("the UDP flow was not tracked as 2 conntrack entries in turn under 2 outside ports")
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    ports = {l4.sport for s, _, l4 in outside if s == NODE_IP and isinstance(l4, dpkt.udp.UDP) and l4.dport == 7}
    if len(ports) != 2:
        problems.append(f"outside.pcap: the UDP flow left under {len(ports)} source port(s), expected 2")
    return problems


def _check_nodeport_idle(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    if _conntrack_stat(rec, "invalid") < 1:
        problems.append("conntrack -S counted no invalid packet")
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    resets = {l4.sport for s, d, l4 in outside if s == NODE_IP and d == CLIENT and isinstance(l4, dpkt.tcp.TCP)
              and l4.flags & dpkt.tcp.TH_RST}
    if resets != {30080, 30081}:
        problems.append(f"outside.pcap: the node reset the client from NodePorts {sorted(resets)}, expected 30080 "
                        "and 30081")
    inside = _ip_packets(_capture(rec, "inside.pcap"))
    fins = [l4 for s, _, l4 in inside if isinstance(l4, dpkt.tcp.TCP) and l4.flags & dpkt.tcp.TH_FIN
            and s in (CLIENT, "10.244.0.1") and l4.dport == 8080]
    if len(fins) > 1:  # the one answered request's FIN only
        problems.append(f"inside.pcap: {len(fins)} client FINs reached the pod, expected only the answered request's")
    return problems


def _check_asymmetric(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    replies = [s for s, _, _ in outside if s.startswith("198.51.100.")]
    if replies:
        problems.append(f"outside.pcap: {len(replies)} replies came over eth0")
    link = rec.node_state.get("node: ip -s -br link", "")
    match = re.search(r"\beth1@\S+.*?RX:[^\n]*\n\s*(\d+)\s+(\d+)", link, re.S)
    if not match or int(match.group(2)) == 0:
        problems.append("eth1 received no packet")
    return problems


def _check_ftp(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    data = [c for c in connections if c.initiator == "outside"]
    if len(data) != 1 or data[0].verdict != "translated" or data[0].original is None or data[0].original.sport != 20:
        problems.append(f"expected one inbound data connection from port 20, got {[str(c.original) for c in data]}")
    payloads = {
        name: b"".join(l4.data for _, _, l4 in _ip_packets(_capture(rec, name)) if isinstance(l4, dpkt.tcp.TCP))
        for name in ("inside.pcap", "outside.pcap")
    }
    if b"PORT 10,244,0,5," not in payloads["inside.pcap"]:
        problems.append("inside.pcap: no PORT command with the pod address")
    if b"PORT 203,0,113,2," not in payloads["outside.pcap"]:
        problems.append("outside.pcap: no PORT command rewritten to the node address")
    if _counted("PREROUTING", "--helper ftp")(connections, rec):
        problems.append("the CT --helper ftp rule counted no packet")
    return problems


def _count(expected: int) -> Check:
    def check(connections: list[Connection], _: Recording) -> list[str]:
        n = len(connections)
        return [] if n == expected else [f"{n} connections in the truth, expected {expected}"]

    return check


def _all(*checks: Check) -> Check:
    def check(connections: list[Connection], rec: Recording) -> list[str]:
        return [problem for one in checks for problem in one(connections, rec)]

    return check


def _rule(text: str) -> tuple[str, ...]:
    """iptables arguments from their command-line spelling."""
    return tuple(text.split())


ESTABLISHED = _rule("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
TWO_PODS = (Pod("pod1", "10.244.0.10/24"), Pod("pod2", "10.244.0.11/24"))
THREE_PODS = (*TWO_PODS, Pod("pod3", "10.244.0.12/24"))
PORT_POOL = (40000, 40003)
PORT_POOL_RULE = _rule(
    f"-t nat -A POSTROUTING -s {POD_CIDR} ! -d {POD_CIDR} -p tcp -j MASQUERADE --to-ports {PORT_POOL[0]}-{PORT_POOL[1]}"
)
EITHER = "translated|not_forwarded"
"""An expectation that allows either verdict: which connections win a port is the kernel's race."""


NODE_IP = "203.0.113.2"
NODE_IP6 = "2001:db8:100::2"
SERVER6 = "2001:db8:ff::10"
POD6_CIDR = "2001:db8:244::/64"
CLIENT = "198.51.100.20"
"""An internet client's address (on inet's lo) for inbound connections to NodePorts."""
KUBERNETES = Service("default/kubernetes:https", "tcp", "10.96.0.1", 443, (Endpoint(SERVER, 6443),))
DNS_OUTSIDE = Service("kube-system/kube-dns:dns", "udp", "10.96.0.10", 53, (Endpoint("198.51.100.53", 53),))
WEB_LOCAL = Service(
    "default/web:http", "tcp", "10.96.0.20", 80, (Endpoint("10.244.0.21", 8080), Endpoint("10.244.0.22", 8080))
)
DNS_LOCAL = Service("kube-system/kube-dns:dns", "udp", "10.96.0.10", 53, (Endpoint("10.244.0.53", 53),))
WEB_NODEPORT = Service("default/web:http", "tcp", "10.96.0.40", 80, (Endpoint("10.244.0.10", 8080),), node_port=30080)
WEB_NODEPORT_LOCAL = Service(
    "default/web-local:http", "tcp", "10.96.0.41", 80, (Endpoint("10.244.0.10", 8080),), node_port=30081, local=True
)
SELF = Service("default/self:http", "tcp", "10.96.0.50", 80, (Endpoint("10.244.0.10", 8080),))
WEB_NONE = Service("default/web:http", "tcp", "10.96.0.30", 80)
GONE_NODEPORT = Service("default/gone:http", "tcp", "10.96.0.33", 80, node_port=30090)
DNS_NONE = Service("default/dns:dns", "udp", "10.96.0.31", 53)
FTP_HELPER = tuple(
    _rule(f"-t raw -A {chain} -p tcp --dport 21 -j CT --helper ftp") for chain in ("PREROUTING", "OUTPUT")
)
NO_ENDPOINTS = (
    "kube-proxy's filter KUBE-SERVICES REJECTs a Service without endpoints in FORWARD (ICMP port unreachable)"
)
HAIRPIN_DROP = (
    "DNATed back to the pod itself as it crossed the bridge, then dropped by the bridge, which does not send a "
    "frame back out of the port it came in on (hairpin mode off), before conntrack confirmed the entry"
)


# -- lan-noise: what the pod side carries that no router forwards ----------------------------------------------

LAN_NOISE: tuple[tuple[str, Action, int], ...] = (
    # (the reason natproof must count it under, the datagrams, copies of each in the inside capture: 2 where a
    # server on the node echoes it back)
    ("multicast", Action("send", "239.255.255.250", 1900, count=2, interval=0.05, timeout=0.3,
                         path="M-SEARCH * HTTP/1.1 ST: ssdp:all"), 1),
    ("multicast", Action("send", "224.0.0.251", 5353, sport=5353, count=2, interval=0.05, timeout=0.3, at=0.02,
                         path="mdns query _http._tcp.local"), 1),
    ("multicast", Action("send", "ff02::fb%eth0", 5353, sport=5353, bind="fe80::10%eth0", count=2, interval=0.05,
                         timeout=0.3, at=0.04, path="mdns query _http._tcp.local"), 1),
    ("broadcast", Action("send", "255.255.255.255", 9, count=2, interval=0.05, timeout=0.3, at=0.06,
                         path="discovery"), 1),
    ("dhcp", Action("send", "255.255.255.255", 67, sport=68, count=2, interval=0.05, timeout=0.3, at=0.08,
                    path="dhcp request (rebinding)"), 1),
    # Later than the broadcast one, so that one socket at a time holds port 68 and gets the node's answer.
    ("dhcp", Action("send", "10.244.0.1", 67, sport=68, count=2, interval=0.05, timeout=0.3, at=0.5,
                    path="dhcp request (renewing)"), 2),
    ("dhcp", Action("send", "ff02::1:2%eth0", 547, sport=546, bind="fe80::10%eth0", count=2, interval=0.05,
                    timeout=0.3, at=0.12, path="dhcpv6 solicit"), 1),
    ("link_local", Action("send", "169.254.1.1", 7, bind="169.254.10.10", count=2, interval=0.05, timeout=0.3,
                          at=0.14, path="link-local ipv4"), 2),
    ("link_local", Action("send", "fe80::1%eth0", 7, bind="fe80::10%eth0", count=2, interval=0.05, timeout=0.3,
                          at=0.16, path="link-local ipv6"), 2),
)
LAN_NOISE_EXPECTED: dict[str, int] = dict(sum((Counter({r: a.count * copies}) for r, a, copies in LAN_NOISE),
                                              Counter()))
"""Packets of each reason the inside capture of lan-noise holds (checked against the capture by the scenario)."""
DIRECTED_BROADCAST = Action("send", "10.244.0.255", 9, count=2, interval=0.05, timeout=0.3, at=0.18,
                            path="directed broadcast")
NODE_LOOPBACK = tuple(
    Action("send", address, 9, count=2, interval=0.05, timeout=0.3, at=0.2 + 0.02 * i, path="to myself")
    for i, address in enumerate(("127.0.0.1", "::1", NODE_IP, "10.244.0.1"))
)
"""From the node to its own addresses: over lo, so in neither capture (a `tcpdump -i any` capture would hold it)."""


def _endpoint(address: str, port: int) -> tuple[str, int]:
    return str(ipaddress.ip_address(address.split("%")[0])), port


def lan_noise_counts(path: Path) -> Counter[str]:
    """UDP packets of lan-noise's noise in a capture, by reason (as LAN_NOISE names them), plus
    ``directed_broadcast`` (to 10.244.0.255) and ``loopback`` (any packet with a 127/8 or ::1 address, or its
    source equal to its destination). Packets are told by the scenario's own endpoints, not by natproof's rules."""
    signature = {_endpoint(a.dst, a.dport): reason for reason, a, _ in LAN_NOISE}
    signature[_endpoint(DIRECTED_BROADCAST.dst, DIRECTED_BROADCAST.dport)] = "directed_broadcast"
    loopback = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128")]
    counts: Counter[str] = Counter()
    for src, dst, l4 in _ip_packets(path):
        if src == dst or any(ipaddress.ip_address(a) in n for a in (src, dst) for n in loopback):
            counts["loopback"] += 1
        if isinstance(l4, dpkt.udp.UDP):
            reason = signature.get((dst, l4.dport)) or signature.get((src, l4.sport))
            if reason:
                counts[reason] += 1
    return counts


def _check_lan_noise(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    inside = lan_noise_counts(_capture(rec, "inside.pcap"))
    outside = lan_noise_counts(_capture(rec, "outside.pcap"))
    for reason, n in LAN_NOISE_EXPECTED.items():
        if inside[reason] != n:
            problems.append(f"inside.pcap: {inside[reason]} {reason} packets, the design sends {n}")
    # Measured (kernel 6.18, iproute2 6.1): the pod's kernel sends the datagrams to 10.244.0.255 to the Ethernet
    # broadcast address, the bridge floods them to the node, and nothing forwards them.
    if inside["directed_broadcast"] != DIRECTED_BROADCAST.count:
        problems.append(f"inside.pcap: {inside['directed_broadcast']} packets to 10.244.0.255, expected "
                        f"{DIRECTED_BROADCAST.count}")
    if any(outside.values()):
        problems.append(f"outside.pcap: noise crossed the node: {dict(outside)}")
    for name, counts in (("inside.pcap", inside), ("outside.pcap", outside)):
        if counts["loopback"]:
            problems.append(f"{name}: {counts['loopback']} loopback packets (127/8, ::1 or source = destination)")
    # The node's datagrams to itself went over lo: its counters hold them (and the ICMP errors for the closed port).
    lo = re.search(r"\d+: lo:.*?RX:[^\n]*\n\s*(\d+)\s+(\d+)", rec.node_state.get("node: ip -s -br link", ""), re.S)
    sent = sum(a.count for a in NODE_LOOPBACK)
    if not lo or int(lo.group(2)) < sent:
        problems.append(f"node lo received {lo.group(2) if lo else 'no'} packets, the node sent itself {sent}")
    return problems


# -- routed, partial-overlap, nat66 ---------------------------------------------------------------------------


def _check_routed(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    if _rule_packets(rec, "MASQUERADE") or _rule_packets(rec, "SNAT"):
        problems.append("the node has a MASQUERADE or SNAT rule")
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    for pod, answered in (("10.244.0.10", True), ("10.244.1.10", False)):
        sent = sum(1 for s, _, _ in outside if s == pod)
        back = sum(1 for _, d, _ in outside if d == pod)
        if not sent:
            problems.append(f"outside.pcap: nothing left with source {pod}")
        if bool(back) != answered:
            problems.append(f"outside.pcap: {back} packets came back to {pod}, the design "
                            f"{'routes it back' if answered else 'has no route back'}")
    return problems


def _check_partial_overlap(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    off = sum(1 for c in connections if _key(c) in rec.outside_off)
    if off != 4 or len(connections) - off != 2:
        problems.append(f"{off} of {len(connections)} connections made while the outside capture was off, "
                        "expected 4 of 6")
    # The kernel translated them all (conntrack saw replies, the pod got them); the outside capture holds the
    # translated packets of the ones it ran for, and of no other.
    outside_ports = {l4.sport for s, _, l4 in _ip_packets(_capture(rec, "outside.pcap"))
                     if s == NODE_IP and isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP)}
    for c in connections:
        was_off = _key(c) in rec.outside_off
        port = c.entry.reply.dport if c.entry is not None else None
        if c.entry is None or not c.entry.replied or port is None:
            problems.append(f"{c.inside}: no replied conntrack entry")
        elif was_off == (port in outside_ports):
            problems.append(f"{c.inside}: outside port {port} {'in' if was_off else 'not in'} outside.pcap")
    return problems


def _check_nat66(connections: list[Connection], _: Recording) -> list[str]:
    return [f"{c.inside}: left as {c.outside}, not as the node's address {NODE_IP6}" for c in connections
            if c.outside is None or c.outside.src != NODE_IP6]


# -- overlay: two nodes joined by flannel's VXLAN ---------------------------------------------------------------


def flannel_rules(lease: str, cluster: str = POD_CIDR) -> tuple[tuple[str, ...], ...]:
    """The iptables rules flanneld (0.25) writes on a node holding ``lease`` of ``cluster``: its masquerade chain
    (no NAT within the pod network, MASQUERADE --random-fully for the rest but multicast, kube-proxy's 0x4000 mark
    left to kube-proxy) and its FORWARD accepts for the pod network."""
    masq, fwd = ("-m", "comment", "--comment", "flanneld masq"), ("-m", "comment", "--comment", "flanneld forward")
    chain = ("-t", "nat", "-A", "FLANNEL-POSTRTG")
    return (
        ("-t", "nat", "-N", "FLANNEL-POSTRTG"),
        ("-t", "nat", "-A", "POSTROUTING", *masq, "-j", "FLANNEL-POSTRTG"),
        (*chain, "-m", "mark", "--mark", "0x4000/0x4000", *masq, "-j", "RETURN"),
        (*chain, "-s", lease, "-d", cluster, *masq, "-j", "RETURN"),
        (*chain, "-s", cluster, "-d", lease, *masq, "-j", "RETURN"),
        (*chain, "!", "-s", cluster, "-d", lease, *masq, "-j", "RETURN"),
        (*chain, "-s", cluster, "!", "-d", "224.0.0.0/4", *masq, "-j", "MASQUERADE", "--random-fully"),
        (*chain, "!", "-s", cluster, "-d", cluster, *masq, "-j", "MASQUERADE", "--random-fully"),
        ("-N", "FLANNEL-FWD"),
        ("-A", "FORWARD", *fwd, "-j", "FLANNEL-FWD"),
        ("-A", "FLANNEL-FWD", "-s", cluster, *fwd, "-j", "ACCEPT"),
        ("-A", "FLANNEL-FWD", "-d", cluster, *fwd, "-j", "ACCEPT"),
    )


NODE2 = PeerNode("node2", "203.0.113.3/24", "10.244.1.0/24", (Pod("pod2", "10.244.1.10/24"),),
                 iptables_rules=flannel_rules("10.244.1.0/24"))
POD2_REMOTE = "10.244.1.10"
"""node2's pod, across the overlay."""


def vxlan_packets(path: Path, port: int = VXLAN_PORT) -> list[tuple[tuple[str, str], tuple[str, str, int, int, int]]]:
    """((outer src, outer dst), (inner src, inner dst, inner proto, sport, dport)) of each VXLAN packet (UDP to
    ``port``, VNI flag set) carrying IPv4 in an Ethernet pcap; ICMP echo: the identifier as sport, 0 as dport."""
    out = []
    for src, dst, l4 in _ip_packets(path):
        if not isinstance(l4, dpkt.udp.UDP) or l4.dport != port or len(l4.data) < 8 or not l4.data[0] & 0x08:
            continue
        inner = dpkt.ethernet.Ethernet(bytes(l4.data[8:])).data
        if not isinstance(inner, dpkt.ip.IP):
            continue
        t = inner.data
        if isinstance(t, dpkt.icmp.ICMP) and isinstance(t.data, dpkt.icmp.ICMP.Echo):
            ports = (t.data.id, 0)
        else:
            ports = (getattr(t, "sport", 0), getattr(t, "dport", 0))
        out.append(((src, dst), (_addr(inner.src), _addr(inner.dst), inner.p, *ports)))
    return out


def _vni(path: Path, port: int = VXLAN_PORT) -> set[int]:
    """The VXLAN network identifiers of the packets to ``port`` in an Ethernet pcap."""
    return {int.from_bytes(bytes(l4.data[4:7]), "big") for _, _, l4 in _ip_packets(path)
            if isinstance(l4, dpkt.udp.UDP) and l4.dport == port and len(l4.data) >= 8}


def _check_overlay(connections: list[Connection], rec: Recording) -> list[str]:
    """The kernel and eth0's packets show the design: every pod-to-pod connection crossed eth0 both ways inside
    VXLAN (UDP 8472, VNI 1) between the two nodes' addresses and nowhere in the clear, untranslated; egress left as
    the node's address; flannel's RETURN and MASQUERADE rules counted; conntrack tracked the tunnel flows."""
    problems = []
    outside = _capture(rec, "outside.pcap")
    tunnelled = vxlan_packets(outside)
    nodes = (NODE_IP, NODE2.ip)
    if not tunnelled:
        return [f"outside.pcap: no VXLAN packet (UDP {VXLAN_PORT}) carrying IPv4"]
    if wrong := {outer for outer, _ in tunnelled if outer not in (nodes, nodes[::-1])}:
        problems.append(f"outside.pcap: VXLAN packets between {sorted(wrong)}, not the two nodes")
    if (vnis := _vni(outside)) != {VXLAN_ID}:
        problems.append(f"outside.pcap: VXLAN network identifiers {sorted(vnis)}, expected {{{VXLAN_ID}}}")
    protos = {"tcp": 6, "udp": 17, "icmp": 1}
    inner = {(outer, i) for outer, i in tunnelled}
    across = [c for c in connections if c.inside.dst == POD2_REMOTE]
    for c in across:
        t = c.inside
        forth = (nodes, (t.src, t.dst, protos[c.proto], t.sport, t.dport))
        back = (nodes[::-1], (t.dst, t.src, protos[c.proto], t.dport if c.proto != "icmp" else t.sport,
                              t.sport if c.proto != "icmp" else 0))
        if c.verdict != "internal" or c.outside != c.inside:
            problems.append(f"{c.proto} {t}: {c.verdict}, outside {c.outside}: expected internal, untranslated")
        if forth not in inner or back not in inner:
            problems.append(f"{c.proto} {t}: not in VXLAN on eth0 both ways (there: {forth in inner}, "
                            f"back: {back in inner})")
    if len(across) != 5:
        problems.append(f"{len(across)} connections to {POD2_REMOTE}, the design makes 5")
    # Never in the clear on the uplink: the pod network shows only inside the tunnel.
    problems += _nowhere("outside.pcap", POD_CIDR)([], rec)
    for c in connections:
        if c.inside.dst == SERVER and (c.verdict != "translated" or c.outside is None or c.outside.src != NODE_IP):
            problems.append(f"{c.proto} {c.inside}: {c.verdict} as {c.outside}, not masqueraded to {NODE_IP}")
    problems += _counted("-s 10.244.0.0/24 -d 10.244.0.0/16", "RETURN")(connections, rec)
    problems += _counted("-s 10.244.0.0/16 ! -d 224.0.0.0/4", "MASQUERADE")(connections, rec)
    # Each tunnel flow is a conntrack entry of its own (the node's own UDP, outer source port a hash of the inner
    # flow): the reason the truth leaves them out.
    tunnels = [line for line in rec.listing if f"dport={VXLAN_PORT}" in line and f"src={NODE_IP}" in line]
    if not tunnels:
        problems.append(f"no conntrack entry of a tunnel flow from {NODE_IP} to port {VXLAN_PORT}")
    return problems


# -- eks-vpc-cni: pods with VPC addresses, SNAT to the primary ENI for what leaves the VPC -----------------------

VPC_CIDR = "10.0.0.0/16"
VPC_HOST = "10.0.2.20"
"""A host in another subnet of the VPC (a database, another node's pod): reached unchanged."""
ONPREM_CIDR = "172.16.0.0/16"
"""AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: a network reached over a VPN or Direct Connect, never SNATed."""
ONPREM_HOST = "172.16.5.5"
PRIMARY_IP = "10.0.1.10"
EKS_NODE = VpcCniSpec(
    pods=(EniPod("pod1", "10.0.1.50/32"), EniPod("pod2", "10.0.1.51/32"), EniPod("pod3", "10.0.1.60/32", eni=1)),
    enis=(Eni("eth0", f"{PRIMARY_IP}/24", "02:00:0a:00:01:0a"), Eni("eth1", "10.0.1.11/24", "02:00:0a:00:01:0b")),
    vpc_cidrs=(VPC_CIDR,),
    exclude_snat_cidrs=(ONPREM_CIDR,),
    server_addresses=(SERVER, VPC_HOST, ONPREM_HOST),
    iptables_rules=snat_rules((VPC_CIDR,), (ONPREM_CIDR,), PRIMARY_IP, random="prng"),
)


def _check_vpc_cni(connections: list[Connection], rec: Recording) -> list[str]:
    problems = []
    translated = [c for c in connections if c.verdict == "translated"]
    for c in translated:
        if c.outside is None or c.outside.src != PRIMARY_IP:
            problems.append(f"{c.inside}: left as {c.outside}, not as the primary ENI's {PRIMARY_IP}")
    if not any(c.inside.src == "10.0.1.60" for c in translated):
        problems.append("no translated connection of pod3 (secondary ENI)")
    kept = [c for c in translated if c.proto != "icmp" and c.outside and c.outside.sport == c.inside.sport]
    if len(kept) > 1:  # a random port equals the original one with probability ~1/64512
        problems.append(f"{len(kept)} of {len(translated)} source ports kept under --random-fully")
    # What stays in the VPC or goes to an excluded network leaves eth0 unchanged and is answered; the secondary ENI's
    # pod address never leaves eth0 (its internet traffic is SNATed there, it sent nothing else).
    outside = _ip_packets(_capture(rec, "outside.pcap"))
    for pod, far in (("10.0.1.50", VPC_HOST), ("10.0.1.51", ONPREM_HOST)):
        for src, dst in ((pod, far), (far, pod)):
            if not any(s == src and d == dst for s, d, _ in outside):
                problems.append(f"outside.pcap: no packet {src} -> {dst}")
    if any("10.0.1.60" in (s, d) for s, d, _ in outside):
        problems.append("outside.pcap: pod3's own address on eth0")
    for needles in (("AWS SNAT CHAIN\"", "RETURN"), ("AWS SNAT CHAIN EXCLUSION", "RETURN"), ("AWS, SNAT", "SNAT"),
                    ("AWS, CONNMARK", "--set-xmark")):
        problems += _counted(*needles)(connections, rec)
    return problems


def _kube(services: tuple[Service, ...], *extra: tuple[str, ...], **topology: Any) -> TopologySpec:
    """A node with kube-proxy's rules for ``services``, the pod-network MASQUERADE, then ``extra`` rules."""
    rules = (*kube_proxy_rules(services, POD_CIDR), MASQUERADE_RULE, *extra)
    return TopologySpec(iptables_rules=rules, **topology)


def _overlap_phase(outside_on: bool) -> tuple[ClientPlan, ...]:
    """One phase of partial-overlap: an HTTP request and two datagrams; all answered (outcome ok) either way."""
    expect = "translated" if outside_on else "not_captured"
    return (
        ClientPlan(
            "pod1",
            (
                Action("http", SERVER, 80, expect=expect, outcome="ok"),
                Action("udp", SERVER, 7, count=2, interval=0.1, at=0.05, timeout=1.0, expect=expect, outcome="ok"),
            ),
        ),
    )


def _http(pod: str, count: int = 1, **kwargs: Any) -> ClientPlan:
    return ClientPlan(pod, (Action("http", SERVER, 80, count=count, **kwargs),))


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "basic",
            "one pod, three HTTP GETs over TCP to 198.51.100.10:80 through MASQUERADE",
            "pod1 opens three HTTP/1.0 connections one after another (0.1 s apart) to a Python http.server "
            "in inet. Every source port is free on the node, so MASQUERADE keeps it.",
            (_http("pod1", 3, interval=0.1),),
            check=_all(_count(3), _check_port_kept),
        ),
        Scenario(
            "port-collision",
            "two pods bind the same source port to the same server at once: one port is rewritten",
            "pod1 and pod2 both bind source port 40000 and connect to 198.51.100.10:80; pod1 starts at 0 s "
            "and holds its connection 0.6 s before the request, pod2 starts at 0.2 s (both are open "
            "together). After MASQUERADE both would be 203.0.113.2:40000 -> 198.51.100.10:80, so the kernel "
            "keeps pod1's port and picks another one for pod2.",
            (
                ClientPlan("pod1", (Action("http", SERVER, 80, sport=40000, hold=0.6),)),
                ClientPlan("pod2", (Action("http", SERVER, 80, sport=40000, at=0.2, hold=0.3),)),
            ),
            topology=TopologySpec(pods=TWO_PODS),
            check=_all(_count(2), _check_collision),
        ),
        Scenario(
            "udp",
            "UDP request/response to an echo server, from an ephemeral and from port 123, "
            "plus a datagram to a closed port (ICMP port unreachable comes back)",
            "pod1 sends three datagrams on one connected socket to a UDP echo server on 198.51.100.10:7, one "
            "from source port 123 to the same server, and one to 198.51.100.10:9 where nothing listens. inet "
            "answers the last with ICMP port unreachable; the node reverse-NATs it (outer destination and "
            "the quoted inner header) and the pod's socket gets ECONNREFUSED. The ICMP error is RELATED to "
            "the UDP entry and creates no entry of its own, and the UDP entry stays [UNREPLIED]: its verdict "
            "is no_reply (the far end was designed not to answer with a datagram).",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("udp", SERVER, 7, count=3, interval=0.1, timeout=1.0),
                        Action("udp", SERVER, 7, sport=123, at=0.05, timeout=1.0),
                        Action("udp", SERVER, 9, at=0.1, timeout=1.0, expect="no_reply"),
                    ),
                ),
            ),
            servers=(Server(INET, "udp-echo", SERVER, 7),),
            check=_all(_count(3), _check_udp),
        ),
        Scenario(
            "icmp",
            "ping from two pods with the same echo identifier: the kernel rewrites one identifier",
            "pod1 and pod2 each send three echo requests (0.2 s apart) with identifier 0x4242 through raw "
            "sockets; pod2 starts 0.1 s after pod1. The ICMP conntrack tuple holds the identifier in place "
            "of the ports, so the two echoes would clash after MASQUERADE and pod2's identifier is "
            "rewritten.",
            (
                ClientPlan(
                    "pod1", (Action("ping", SERVER, sport=0x4242, count=3, interval=0.2, timeout=1.0),)
                ),
                ClientPlan(
                    "pod2",
                    (Action("ping", SERVER, sport=0x4242, count=3, interval=0.2, at=0.1, timeout=1.0),),
                ),
            ),
            topology=TopologySpec(pods=TWO_PODS),
            check=_all(_count(2), _check_icmp),
        ),
        Scenario(
            "random-fully",
            "MASQUERADE --random-fully: every source port is rewritten",
            "pod1 opens five HTTP connections (0.05 s apart) to 198.51.100.10:80. The rule carries "
            "--random-fully (NF_NAT_RANGE_PROTO_RANDOM_FULLY), so the kernel draws every source port at "
            "random even when the original one is free.",
            (_http("pod1", 5, interval=0.05),),
            topology=TopologySpec(iptables_rules=((*MASQUERADE_RULE, "--random-fully"),)),
            check=_all(_count(5), _check_random_fully),
        ),
        Scenario(
            "forwarding-off",
            "net.ipv4.ip_forward=0 on the node: the SYN is retransmitted on the inside and never leaves",
            "ip_forward is 0 in the node namespace (the MASQUERADE rule is in place). pod1 connects to "
            f"198.51.100.10:80 with a {FAILURE_TIMEOUT_S:g} s timeout (SYN at 0 s, retransmissions at 1 s "
            "and 3 s) and sends two echo requests. The route lookup fails for a packet the node may not "
            "forward and it is dropped before conntrack confirms its entry: no ICMP, no conntrack event, "
            "nothing on eth0. The truth of these connections therefore comes from the design: the clients "
            "report their tuples (the pod's chosen source port, the echo identifier) and the verdict is "
            "not_forwarded; the kernel's part is the absence of any entry for them in conntrack.log.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80, timeout=FAILURE_TIMEOUT_S, expect="not_forwarded"),
                        Action(
                            "ping",
                            SERVER,
                            sport=0x0101,
                            count=2,
                            interval=0.5,
                            timeout=1.0,
                            expect="not_forwarded",
                        ),
                    ),
                ),
            ),
            topology=TopologySpec(ip_forward=False),
            check=_count(2),
        ),
        Scenario(
            "no-masquerade",
            "no MASQUERADE rule: the pod address leaves on eth0 and no reply comes back",
            "The node has no SNAT rule; its only rule accepts RELATED,ESTABLISHED in FORWARD (the conntrack "
            "match also makes the kernel track connections in this namespace, as any Kubernetes node does). "
            f"pod1 connects to 198.51.100.10:80 ({FAILURE_TIMEOUT_S:g} s timeout) and sends two echo "
            "requests. The packets leave eth0 with source 10.244.0.10; inet has no route back to "
            "10.244.0.0/16, so nothing answers. conntrack's reply tuple points at the pod address itself: "
            "untranslated.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80, timeout=FAILURE_TIMEOUT_S, expect="untranslated"),
                        Action(
                            "ping",
                            SERVER,
                            sport=0x0102,
                            count=2,
                            interval=0.5,
                            timeout=1.0,
                            expect="untranslated",
                        ),
                    ),
                ),
            ),
            topology=TopologySpec(iptables_rules=(ESTABLISHED,)),
            check=_count(2),
        ),
        Scenario(
            "wrong-subnet",
            "MASQUERADE written for 10.245.0.0/16 only: the 10.244 pod leaks untranslated, the 10.245 pod is "
            "translated",
            "The pod network is 10.244.0.0/15 (pod1 in 10.244.0.0/24, pod2 in 10.245.0.0/24, both behind "
            "cni0), but the MASQUERADE rule matches -s 10.245.0.0/16 only. pod1 connects to 198.51.100.10:80 "
            f"({FAILURE_TIMEOUT_S:g} s timeout): it leaves with its pod address and gets no answer. pod2 "
            "makes two HTTP requests, translated. pod_cidr in truth.json is 10.244.0.0/15 for this reason.",
            (
                ClientPlan(
                    "pod1", (Action("http", SERVER, 80, timeout=FAILURE_TIMEOUT_S, expect="untranslated"),)
                ),
                _http("pod2", 2, interval=0.1, at=0.05),
            ),
            topology=TopologySpec(
                pods=(Pod("pod1", "10.244.0.10/24"), Pod("pod2", "10.245.0.10/24")),
                bridge_addresses=("10.244.0.1/24", "10.245.0.1/24"),
                iptables_rules=(
                    _rule("-t nat -A POSTROUTING -s 10.245.0.0/16 ! -d 10.244.0.0/15 -j MASQUERADE"),
                ),
            ),
            pod_cidr="10.244.0.0/15",
            check=_count(3),
        ),
        Scenario(
            "forward-drop",
            "FORWARD policy DROP with an ACCEPT for pod2 only: pod1's SYNs never leave the node",
            "FORWARD's policy is DROP; it accepts RELATED,ESTABLISHED and new traffic from pod2 "
            f"(10.244.0.11) only. pod1 connects to 198.51.100.10:80 ({FAILURE_TIMEOUT_S:g} s timeout): the "
            "SYN is dropped in FORWARD, before conntrack confirms the entry in POSTROUTING, so no entry and "
            "no event exist for it and nothing reaches eth0. Its truth comes from the design (the client "
            "reports the tuple; verdict not_forwarded). pod2 makes two HTTP requests, translated.",
            (
                ClientPlan(
                    "pod1", (Action("http", SERVER, 80, timeout=FAILURE_TIMEOUT_S, expect="not_forwarded"),)
                ),
                _http("pod2", 2, interval=0.1, at=0.05),
            ),
            topology=TopologySpec(
                pods=TWO_PODS,
                forward_policy="DROP",
                iptables_rules=(MASQUERADE_RULE, ESTABLISHED, _rule("-A FORWARD -s 10.244.0.11 -j ACCEPT")),
            ),
            not_forwarded_pods=("pod1",),
            check=_count(3),
        ),
        Scenario(
            "reply-drop",
            "replies from server port 8080 dropped in FORWARD after conntrack: SYN-ACKs reach eth0, never "
            "the pod",
            "A FORWARD rule drops tcp --sport 8080 from eth0 to cni0. pod1 makes two HTTP requests to "
            f"198.51.100.10:80 (translated) and connects to 198.51.100.10:8080 ({FAILURE_TIMEOUT_S:g} s "
            "timeout). The SYN-ACKs pass conntrack in PREROUTING, which marks the entry as replied (no "
            "[UNREPLIED], reply packets counted) and reverse-NATs them, then die in FORWARD: the pod "
            "retransmits its SYN and the server its SYN-ACK. Verdict reply_dropped, known from three facts: "
            "the entry saw a reply, the DROP rule's packet counter (iptables -L FORWARD -v) is non-zero, and "
            "the pod's connect timed out.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80, count=2, interval=0.1),
                        Action(
                            "http", SERVER, 8080, at=0.05, timeout=FAILURE_TIMEOUT_S, expect="reply_dropped"
                        ),
                    ),
                ),
            ),
            servers=(HTTP, Server(INET, "http", SERVER, 8080)),
            topology=TopologySpec(
                iptables_rules=(
                    MASQUERADE_RULE,
                    _rule("-A FORWARD -i eth0 -o cni0 -p tcp --sport 8080 -j DROP"),
                )
            ),
            reply_dropped=frozenset({("tcp", 8080)}),
            check=_all(_count(3), _check_reply_drop),
        ),
        Scenario(
            "internal",
            "pod to pod on the bridge mixed with egress: internal connections never reach eth0",
            "pod2 runs an HTTP server on 10.244.0.11:8080. pod1 makes three requests to it and, interleaved, "
            "three to 198.51.100.10:80. The MASQUERADE rule excludes -d 10.244.0.0/16, so pod-to-pod traffic "
            "keeps its addresses and is only bridged; with bridge-nf-call-iptables=1 the node still tracks "
            "it (its reply tuple is unchanged). The inside capture is on vethpod1, pod1's port of the "
            "bridge: frames bridged between two ports are not delivered to the bridge device itself, so "
            "tcpdump on cni0 would miss the pod-to-pod traffic.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", "10.244.0.11", 8080, count=3, interval=0.1, expect="internal"),
                        Action("http", SERVER, 80, count=3, interval=0.1, at=0.05),
                    ),
                ),
            ),
            topology=TopologySpec(pods=TWO_PODS),
            servers=(HTTP, Server("pod2", "http", "10.244.0.11", 8080)),
            inside_interface="vethpod1",
            check=_count(6),
        ),
        Scenario(
            "many-connections",
            "2,100 short HTTP connections from three pods at once",
            "pod1, pod2 and pod3 each open 700 HTTP/1.0 connections to 198.51.100.10:80 back to back, all "
            "three pods at the same time. conntrack events are recorded by two listeners (NEW alone, and "
            "UPDATE,DESTROY) with 8 MiB socket buffers; the netlink drop counters are checked to be 0.",
            # A generous timeout: on a busy 2-core machine the stdlib server can take seconds to accept.
            tuple(_http(f"pod{i}", 700, timeout=10.0) for i in (1, 2, 3)),
            topology=TopologySpec(pods=THREE_PODS),
            check=_count(2100),
            max_pcap_bytes=6_000_000,
            gzip_pcaps=True,
        ),
        Scenario(
            "large-transfer",
            "one 2 MiB HTTP download through MASQUERADE",
            "pod1 downloads 2 MiB (GET /bytes/2097152) from 198.51.100.10:80 on one connection.",
            (_http("pod1", 1, path="/bytes/2097152", timeout=10.0),),
            check=_count(1),
            max_pcap_bytes=3_200_000,
        ),
        Scenario(
            "port-exhaustion",
            "MASQUERADE --to-ports 40000-40003: 10 connections at once from three pods to one server (6 find no "
            "port: SYNs dropped), then 3 more that reuse ports held in TIME_WAIT",
            "The node's TCP MASQUERADE rule has --to-ports 40000-40003, ahead of the usual rule (which still "
            "covers the other protocols): at most four connections to one server address and port can be "
            "mapped at a time. Phase 1, at 0 s: pod1 opens 4, pod2 3 and pod3 3 connections to "
            "198.51.100.10:80 at once, each holding its connection 1.2 s before sending the request (the "
            "server answers at once and closes), with a 1.5 s timeout. Four get an outside port in the pool. "
            "For the other SYNs SNAT finds no free port: the search gives up on a tuple that clashes and the "
            "kernel drops the SYN when it confirms the entry (counted per CPU by conntrack -S as insert_failed "
            "and drop), so there is no conntrack event and nothing on eth0. The pod retransmits the SYN at 1 s "
            "(the four ports are still in use), which is dropped the same way, and gives up at 1.5 s, before "
            "its next try at 2 s. The truth of these connections comes from the design: the clients report "
            "their tuples and the verdict is not_forwarded; the kernel's part is the absence of any entry for "
            "them, and its insert_failed count, which is checked to equal the number of SYNs seen on cni0 but "
            "not on eth0. Phase 2, at 2.0, 2.05 and 2.1 s: each pod opens one more connection (3.3 s timeout). "
            "Every port now holds a conntrack entry in TIME_WAIT (120 s). For a new SYN the kernel evicts such "
            "an entry when the SYN's sequence number is past the old connection's (nf_nat_used_tuple_harder) "
            "and reuses its port, while the server may still hold that tuple in TIME_WAIT. The server then "
            "accepts the SYN only if its TCP timestamp is newer than the old connection's (the pods' timestamp "
            "clocks have unrelated random offsets); otherwise it answers with an ACK of the old connection, "
            "which conntrack passes back to the pod. The pod answers that ACK with a RST, which moves the entry "
            "to CLOSE and ends the server's TIME_WAIT, and sends its SYN again about 10 ms later. conntrack "
            "drops the CLOSE entry for that SYN and makes a new one, and SNAT draws a port again: the same one "
            "or another. One client connection then has two (or more) conntrack entries in turn, possibly under "
            "two outside ports. Its truth holds the tuple of the entry conntrack recorded last, which carried the "
            "connection to its end, and its notes field (also below) lists every entry. A "
            "phase-2 SYN that finds no port to take is dropped like the phase-1 ones and retried. Which "
            "connections win a port is the kernel's race, so each attempt allows translated or not_forwarded, "
            "and its verdict must agree with what its pod saw (answered: translated; timed out: not_forwarded).",
            tuple(
                ClientPlan(
                    pod,
                    (
                        *(Action("http", SERVER, 80, hold=1.2, timeout=1.5, expect=EITHER) for _ in range(n)),
                        Action("http", SERVER, 80, at=at, timeout=FAILURE_TIMEOUT_S, expect=EITHER),
                    ),
                )
                for pod, n, at in (("pod1", 4, 2.0), ("pod2", 3, 2.05), ("pod3", 3, 2.1))
            ),
            topology=TopologySpec(pods=THREE_PODS, iptables_rules=(PORT_POOL_RULE, MASQUERADE_RULE)),
            port_exhausted=frozenset({("tcp", SERVER, 80)}),
            check=_all(_count(13), _check_port_pool),
            max_pcap_bytes=300_000,
        ),
        Scenario(
            "clusterip",
            "kube-proxy ClusterIPs whose endpoints are outside the node: DNAT then MASQUERADE (destination and "
            "source rewritten), TCP and UDP, plus one plain egress",
            "kube-proxy's nat chains (iptables mode): KUBE-SERVICES jumped from PREROUTING and OUTPUT sends "
            "10.96.0.1:443/tcp (default/kubernetes) to its KUBE-SVC chain and KUBE-SEP chain, which DNATs to "
            "198.51.100.10:6443, and 10.96.0.10:53/udp (kube-dns) to 198.51.100.53:53, both outside the pod "
            "network. The DNATed packets then leave eth0 and the pod-network MASQUERADE rewrites their source "
            "(they carry no 0x4000 mark: KUBE-POSTROUTING returns). pod1 makes three HTTP requests to "
            "10.96.0.1:443, sends one datagram from each of two sockets to 10.96.0.10:53 (a UDP echo stands in "
            "for DNS), and one plain HTTP request to 198.51.100.10:80. conntrack's reply tuple holds both "
            "rewrites: src=198.51.100.10 sport=6443 (DNAT), dst=203.0.113.2 (MASQUERADE). The inside capture is "
            "pod1's bridge port, vethpod1.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", "10.96.0.1", 443, count=3, interval=0.1),
                        Action("udp", "10.96.0.10", 53, at=0.05, timeout=1.0),
                        Action("udp", "10.96.0.10", 53, at=0.15, timeout=1.0),
                        Action("http", SERVER, 80, at=0.4),
                    ),
                ),
            ),
            topology=_kube((KUBERNETES, DNS_OUTSIDE), server_addresses=(SERVER, "198.51.100.53")),
            servers=(HTTP, Server(INET, "http", SERVER, 6443), Server(INET, "udp-echo", "198.51.100.53", 53)),
            services=(KUBERNETES, DNS_OUTSIDE),
            inside_interface="vethpod1",
            check=_all(
                _count(6),
                _verdicts(translated=6),
                _check_clusterip,
                _counted("KUBE-SEP-", "DNAT"),
                _nowhere("outside.pcap", "10.96.0.0/12", POD_CIDR),
            ),
        ),
        Scenario(
            "clusterip-local",
            "ClusterIPs served by pods on the node: DNAT as the packet crosses the bridge, random choice of two "
            "endpoints; nothing reaches eth0",
            "default/web 10.96.0.20:80/tcp has two endpoints on the node, pod2 10.244.0.21:8080 and pod3 "
            "10.244.0.22:8080; its KUBE-SVC chain picks the first with -m statistic --mode random --probability "
            "0.5, else the second. kube-dns 10.96.0.10:53/udp has one, pod4 10.244.0.53:53 (a UDP echo). pod1 "
            "makes six HTTP requests to 10.96.0.20:80 and two datagrams (two sockets) to 10.96.0.10:53, plus one "
            "plain egress request to 198.51.100.10:80. With bridge-nf-call-iptables=1 the DNAT happens in the "
            "bridge's PREROUTING hook; br_netfilter then finds the new destination on the bridge itself and "
            "bridges the frame to the endpoint's port (TTL kept) instead of routing it. The inside capture is "
            "pod1's port, vethpod1: it shows only the ClusterIP tuple and the reverse-translated replies; the "
            "DNATed leg is on the endpoint's port, in neither capture, so the truth's translated is null (the "
            "endpoint conntrack chose is in notes and in conntrack.log). Verdict internal.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", "10.96.0.20", 80, count=6, interval=0.05, expect="internal"),
                        Action("udp", "10.96.0.10", 53, at=0.05, timeout=1.0, expect="internal"),
                        Action("udp", "10.96.0.10", 53, at=0.15, timeout=1.0, expect="internal"),
                        Action("http", SERVER, 80, at=0.5),
                    ),
                ),
            ),
            topology=_kube(
                (WEB_LOCAL, DNS_LOCAL),
                pods=(
                    Pod("pod1", "10.244.0.10/24"),
                    Pod("pod2", "10.244.0.21/24"),
                    Pod("pod3", "10.244.0.22/24"),
                    Pod("pod4", "10.244.0.53/24"),
                ),
            ),
            servers=(
                HTTP,
                Server("pod2", "http", "10.244.0.21", 8080),
                Server("pod3", "http", "10.244.0.22", 8080),
                Server("pod4", "udp-echo", "10.244.0.53", 53),
            ),
            services=(WEB_LOCAL, DNS_LOCAL),
            unseen_translated=("10.244.0.21", "10.244.0.22", "10.244.0.53"),
            inside_interface="vethpod1",
            check=_all(
                _count(9),
                _verdicts(internal=8, translated=1),
                _check_local_backends,
                _counted_between("KUBE-SEP-", "DNAT"),
                _nowhere("inside.pcap", "10.244.0.21/32", "10.244.0.22/32", "10.244.0.53/32"),
                _nowhere("outside.pcap", "10.96.0.0/12", POD_CIDR),
            ),
        ),
        Scenario(
            "nodeport",
            "connections from the internet to NodePorts: externalTrafficPolicy=Cluster (DNAT + masquerade to "
            "the bridge address) and Local (DNAT only); plus one pod egress",
            "pod1 (10.244.0.10) serves HTTP on 8080 and is the endpoint of two Services: default/web, NodePort "
            "30080 (externalTrafficPolicy=Cluster) and default/web-local, NodePort 30081 (Local). An internet "
            "client in inet, bound to 198.51.100.20, makes two HTTP requests to 203.0.113.2:30080 and two to "
            "203.0.113.2:30081. KUBE-SERVICES' last rule sends packets for a local address to KUBE-NODEPORTS; "
            "for 30080 its KUBE-EXT chain marks them (KUBE-MARK-MASQ, 0x4000) and KUBE-SEP DNATs to "
            "10.244.0.10:8080, and KUBE-POSTROUTING masquerades marked packets with --random-fully: the pod sees "
            "10.244.0.1 and a random port. For 30081 (Local) KUBE-EXT goes to KUBE-SVL without a mark: DNAT "
            "only, the pod sees the client's own address. pod1 also makes one egress request to "
            "198.51.100.10:80. These conntrack entries have an original source outside the pod network and a "
            "reply source in it: inbound, initiator outside, inside = the translated tuple (vethpod1), outside "
            "= the original one (eth0).",
            (
                ClientPlan(
                    INET,
                    (
                        Action("http", NODE_IP, 30080, count=2, interval=0.1, bind=CLIENT),
                        Action("http", NODE_IP, 30081, count=2, interval=0.1, at=0.05, bind=CLIENT),
                    ),
                ),
                ClientPlan("pod1", (Action("http", SERVER, 80, at=0.4),)),
            ),
            topology=_kube((WEB_NODEPORT, WEB_NODEPORT_LOCAL), server_addresses=(SERVER, CLIENT)),
            servers=(HTTP, Server("pod1", "http", "10.244.0.10", 8080)),
            services=(WEB_NODEPORT, WEB_NODEPORT_LOCAL),
            inside_interface="vethpod1",
            check=_all(
                _count(5),
                _verdicts(translated=5),
                _check_nodeport,
                _counted("KUBE-NODEPORTS", "--dport 30080"),
                _counted("KUBE-NODEPORTS", "--dport 30081"),
                _counted("KUBE-POSTROUTING", "--random-fully"),
            ),
        ),
        Scenario(
            "hairpin",
            "a pod calls a Service it backs: DNAT back to itself plus masquerade to the bridge address; bridge "
            "port in hairpin mode; both legs on the pod's own port",
            "pod1 (10.244.0.10) serves HTTP on 8080 and is the only endpoint of default/self, ClusterIP "
            "10.96.0.50:80. pod1 makes three requests to 10.96.0.50:80 and one egress request to "
            "198.51.100.10:80. The SYN crosses the bridge: KUBE-SEP's -s 10.244.0.10/32 rule marks it "
            "(KUBE-MARK-MASQ) and DNATs it back to 10.244.0.10:8080; br_netfilter bridges it back to vethpod1, "
            "which hairpin mode allows (ip link set vethpod1 type bridge_slave hairpin on), and KUBE-POSTROUTING "
            "masquerades it with --random-fully to the bridge address 10.244.0.1 and a random port, so the reply "
            "comes back through the node and is reverse-translated. Both legs, pod -> ClusterIP and "
            "10.244.0.1 -> pod, are on vethpod1 (the inside capture); nothing of them reaches eth0. Verdict "
            "translated (the inside capture holds both legs and the replies crossing back); translated is the "
            "second leg.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", "10.96.0.50", 80, count=3, interval=0.1, expect="translated"),
                        Action("http", SERVER, 80, at=0.5),
                    ),
                ),
            ),
            topology=_kube((SELF,), hairpin_pods=("pod1",)),
            servers=(HTTP, Server("pod1", "http", "10.244.0.10", 8080)),
            services=(SELF,),
            inside_interface="vethpod1",
            check=_all(_count(4), _verdicts(translated=4), _check_hairpin, _counted("--random-fully")),
        ),
        Scenario(
            "hairpin-off",
            "the same call as hairpin with the bridge port's hairpin mode off: the DNATed SYN is dropped by the "
            "bridge and the connection fails",
            "As hairpin, but vethpod1's hairpin mode is off (the bridge default). pod1 connects to 10.96.0.50:80 "
            f"({FAILURE_TIMEOUT_S:g} s timeout) and makes one egress request to 198.51.100.10:80. The SYN is "
            "DNATed back to 10.244.0.10:8080 in the bridge's PREROUTING hook (the KUBE-SEP DNAT rule counts it), "
            "and the bridge would have to send it out of the port it came in on: it drops it, before conntrack "
            "confirms the entry, so there is no conntrack event. The pod retransmits its SYN and times out. The "
            "truth of this connection comes from the design (the client reports its tuple; not_forwarded); the "
            "kernel's part is the DNAT rule's counter and the absence of any entry.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", "10.96.0.50", 80, timeout=FAILURE_TIMEOUT_S, expect="not_forwarded"),
                        Action("http", SERVER, 80, at=0.2),
                    ),
                ),
            ),
            topology=_kube((SELF,)),
            servers=(HTTP, Server("pod1", "http", "10.244.0.10", 8080)),
            services=(SELF,),
            refused=((("tcp", "10.96.0.50", 80), HAIRPIN_DROP),),
            inside_interface="vethpod1",
            check=_all(_count(2), _verdicts(not_forwarded=1, translated=1), _check_hairpin_off),
        ),
        Scenario(
            "reject-no-endpoints",
            "ClusterIPs without endpoints (kube-proxy REJECT: ICMP port unreachable from the node) and an egress "
            "REJECT --reject-with tcp-reset; plus one normal connection",
            "default/web 10.96.0.30:80/tcp and default/dns 10.96.0.31:53/udp have no endpoints: kube-proxy's "
            "filter chain KUBE-SERVICES, jumped from FORWARD and OUTPUT for ctstate NEW, REJECTs them with "
            "icmp-port-unreachable. A FORWARD rule REJECTs pod traffic to 198.51.100.10:443 with tcp-reset. "
            "pod1 connects to 10.96.0.30:80, sends a datagram to 10.96.0.31:53, connects to "
            "198.51.100.10:443, and makes one request to 198.51.100.10:80. The node answers the first two with "
            "ICMP port unreachable from the bridge address 10.244.0.1 and the third with a RST it forges from "
            "198.51.100.10:443; the packets are dropped before conntrack confirms an entry, so there is no "
            "event and nothing reaches eth0. Their truth comes from the design (not_forwarded; the client saw "
            "'refused'); the kernel's part is the REJECT rules' counters and the absence of entries.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", "10.96.0.30", 80, expect="not_forwarded"),
                        Action("udp", "10.96.0.31", 53, at=0.05, timeout=1.0, expect="not_forwarded"),
                        Action("http", SERVER, 443, at=0.1, expect="not_forwarded"),
                        Action("http", SERVER, 80, at=0.15),
                    ),
                ),
            ),
            topology=_kube(
                (WEB_NONE, DNS_NONE),
                _rule(f"-A FORWARD -s {POD_CIDR} -d {SERVER} -p tcp --dport 443 -j REJECT --reject-with tcp-reset"),
            ),
            services=(WEB_NONE, DNS_NONE),
            refused=(
                (("tcp", "10.96.0.30", 80), NO_ENDPOINTS),
                (("udp", "10.96.0.31", 53), NO_ENDPOINTS),
                (("tcp", SERVER, 443), "a FORWARD REJECT --reject-with tcp-reset: the node forges the RST"),
            ),
            inside_interface="vethpod1",
            check=_all(_count(4), _verdicts(not_forwarded=3, translated=1), _check_rejects),
        ),
        Scenario(
            "nodeport-no-endpoints",
            "an internet client calls a NodePort whose Service has no endpoints: kube-proxy's "
            "KUBE-EXTERNAL-SERVICES REJECTs it with ICMP port unreachable from the node; a working NodePort beside it",
            "default/gone 10.96.0.33:80/tcp, NodePort 30090, has no endpoints: kube-proxy's filter chain "
            "KUBE-EXTERNAL-SERVICES, jumped from INPUT and FORWARD for ctstate NEW, REJECTs packets to a local "
            "address on port 30090 with icmp-port-unreachable. default/web (NodePort 30080, endpoint pod1's "
            "10.244.0.10:8080) works. The internet client (198.51.100.20) connects to 203.0.113.2:30090 and makes "
            "two HTTP requests to 203.0.113.2:30080; pod1 makes one egress request. The node answers the first "
            "with ICMP port unreachable from 203.0.113.2 on eth0: the SYN is dropped before conntrack confirms an "
            "entry (no event) and nothing reaches the pod. Its truth comes from the design: not_forwarded, "
            "started outside, no inside tuple (the client saw 'refused').",
            (
                ClientPlan(
                    INET,
                    (
                        Action("http", NODE_IP, 30090, bind=CLIENT, timeout=1.0, expect="not_forwarded"),
                        Action("http", NODE_IP, 30080, count=2, interval=0.1, at=0.05, bind=CLIENT),
                    ),
                ),
                ClientPlan("pod1", (Action("http", SERVER, 80, at=0.3),)),
            ),
            topology=_kube((WEB_NODEPORT, GONE_NODEPORT), server_addresses=(SERVER, CLIENT)),
            servers=(HTTP, Server("pod1", "http", "10.244.0.10", 8080)),
            services=(WEB_NODEPORT, GONE_NODEPORT),
            refused=((("tcp", NODE_IP, 30090), "kube-proxy's filter KUBE-EXTERNAL-SERVICES REJECTs a NodePort "
                      "without endpoints in INPUT (ICMP port unreachable from the node's address)"),),
            inside_interface="vethpod1",
            check=_all(_count(4), _verdicts(not_forwarded=1, translated=3), _check_nodeport_rejected),
        ),
        Scenario(
            "invalid-oow",
            "one out-of-window segment injected from the server into a translated connection: conntrack marks "
            "it INVALID, it is not reverse-translated, and the node answers it with its own RST",
            "pod1 connects from source port 41000 to 198.51.100.10:80 (MASQUERADE keeps the port) and holds the "
            "connection 1 s before its request. 0.3 s after the server's SYN-ACK, a raw socket in inet "
            "(stdlib, IP_HDRINCL) sends one segment of that connection, 198.51.100.10:80 -> 203.0.113.2:41000 "
            "with the right ack but a sequence number 2^31 away from the server's: conntrack's window check "
            "fails, the packet is INVALID (conntrack -S invalid), carries no conntrack entry and so is not "
            "reverse-translated: it is delivered to the node itself, which has no socket for it and answers "
            "with a RST under the translated tuple (203.0.113.2:41000 -> 198.51.100.10:80, seq = the segment's "
            "ack). That RST is in the server's window: the server drops the connection, answers pod1's "
            "request with a RST, and pod1's client sees the connection reset. The entry saw replies: "
            "translated. pod1 then makes one more request, which works.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80, sport=41000, hold=1.0, outcome="error"),
                        Action("http", SERVER, 80, at=1.5),
                    ),
                ),
            ),
            servers=(HTTP, Server(INET, "oow-injector", SERVER, 80, (NODE_IP, "41000", "0.3"))),
            inside_interface="vethpod1",
            check=_all(_count(2), _verdicts(translated=2), _check_oow),
        ),
        Scenario(
            "idle-expiry",
            "established timeout 3 s: a connection idles 6 s, its conntrack entry expires, and its FINs leave "
            "eth0 untranslated with the pod address",
            "nf_conntrack_tcp_timeout_established is 3 s in the node namespace. pod1 makes one HTTP request to "
            "198.51.100.10:80, and opens a second connection that stays idle for 6 s and is then closed by the "
            "pod without a request. The entry of the idle connection expires (DESTROY event) while both ends "
            "still hold it open. The pod's FIN then finds no entry: a FIN cannot start one (conntrack marks it "
            "INVALID), so no NAT applies and it leaves eth0 with source 10.244.0.10; inet has no route back, "
            "nothing answers, and the pod retransmits the FIN (the capture runs 2.5 s after the close). The "
            "entry saw the replies of the handshake: translated.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80),
                        Action("connect", SERVER, 80, at=0.2, hold=6.0),
                    ),
                ),
            ),
            topology=TopologySpec(node_sysctls=(("net.netfilter.nf_conntrack_tcp_timeout_established", "3"),)),
            settle_s=2.5,
            inside_interface="vethpod1",
            check=_all(_count(2), _verdicts(translated=2), _check_idle_expiry),
        ),
        Scenario(
            "udp-remap",
            "UDP timeout 2 s: a UDP flow falls silent for 5 s, its conntrack entry expires, and its next datagram "
            "is mapped anew to another port (--random-fully)",
            "nf_conntrack_udp_timeout and nf_conntrack_udp_timeout_stream are 2 s in the node namespace and the "
            "MASQUERADE rule carries --random-fully. pod1 sends a datagram to the UDP echo on 198.51.100.10:7 from "
            "one socket, and another 5 s later from the same socket; one HTTP request in between. The first "
            "entry expires during the silence (DESTROY event) and the second datagram makes a new one (NEW) with "
            "another random source port: one inside 5-tuple leaves eth0 under two outside tuples in turn, each "
            "answered. Translated, under the last entry's tuple (the lab's truth takes the last entry of a "
            "connection tracked in turn).",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("udp", SERVER, 7, count=2, interval=5.0, timeout=1.0),
                        Action("http", SERVER, 80, at=0.3),
                    ),
                ),
            ),
            topology=TopologySpec(
                iptables_rules=((*MASQUERADE_RULE, "--random-fully"),),
                node_sysctls=(("net.netfilter.nf_conntrack_udp_timeout", "2"),
                              ("net.netfilter.nf_conntrack_udp_timeout_stream", "2")),
            ),
            servers=(HTTP, Server(INET, "udp-echo", SERVER, 7)),
            settle_s=0.5,
            inside_interface="vethpod1",
            check=_all(_count(2), _verdicts(translated=2), _check_udp_remap),
        ),
        Scenario(
            "nodeport-idle",
            "established timeout 3 s: internet clients hold NodePort connections idle for 6 s; their entries expire, "
            "the client's FIN is not DNATed, and the node's own stack answers it with a RST from the NodePort",
            "nf_conntrack_tcp_timeout_established is 3 s in the node namespace. The internet client (198.51.100.20) "
            "opens one connection to 203.0.113.2:30080 (default/web, externalTrafficPolicy=Cluster) and one to "
            "203.0.113.2:30081 (default/web-local, Local), holds both idle for 6 s and closes them, and makes one "
            "HTTP request to 30081 in between; pod2 makes one egress request. The idle entries expire; the "
            "client's FIN then finds none, cannot start one (INVALID), so no DNAT applies: it is addressed to the "
            "node itself, where nothing listens on the NodePort, and the node's TCP answers with a RST from "
            "203.0.113.2:3008x. Neither FIN nor RST reaches the pod. The entries saw replies: translated.",
            (
                ClientPlan(
                    INET,
                    (
                        Action("connect", NODE_IP, 30080, hold=6.0, bind=CLIENT),
                        Action("connect", NODE_IP, 30081, at=0.1, hold=6.0, bind=CLIENT),
                        Action("http", NODE_IP, 30081, at=0.2, bind=CLIENT),
                    ),
                ),
                ClientPlan("pod2", (Action("http", SERVER, 80, at=0.3),)),
            ),
            topology=_kube((WEB_NODEPORT, WEB_NODEPORT_LOCAL), pods=(Pod("pod1", "10.244.0.10/24"),
                                                                     Pod("pod2", "10.244.0.11/24")),
                           server_addresses=(SERVER, CLIENT),
                           node_sysctls=(("net.netfilter.nf_conntrack_tcp_timeout_established", "3"),)),
            servers=(HTTP, Server("pod1", "http", "10.244.0.10", 8080)),
            services=(WEB_NODEPORT, WEB_NODEPORT_LOCAL),
            settle_s=2.5,
            inside_interface="vethpod1,vethpod2",
            check=_all(_count(4), _verdicts(translated=4), _check_nodeport_idle),
        ),
        Scenario(
            "asymmetric-reply",
            "replies come back over a second link (eth1, not captured): the source rewrite is seen on eth0, "
            "the reverse translation is not",
            "The node has a second link to inet, eth1 (192.0.2.2/24, inet 192.0.2.1/24), and inet routes "
            "203.0.113.2/32 over it: the node's egress leaves on eth0, every reply comes back on eth1. "
            "rp_filter is 0 on both. pod1 makes two HTTP requests to 198.51.100.10:80, three datagrams to a UDP "
            "echo on 198.51.100.10:7, and two echo requests. conntrack sees the replies (it is node-wide) and "
            "reverse-translates them, and the pod gets them all; the outside capture (eth0) holds none of "
            "them. Verdict reply_other_path.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80, count=2, interval=0.1, expect="reply_other_path"),
                        Action("udp", SERVER, 7, count=3, interval=0.1, at=0.05, timeout=1.0,
                               expect="reply_other_path"),
                        Action("ping", SERVER, sport=0x0103, count=2, interval=0.2, at=0.1, timeout=1.0,
                               expect="reply_other_path"),
                    ),
                ),
            ),
            topology=TopologySpec(reply_link=("192.0.2.2/24", "192.0.2.1/24")),
            servers=(HTTP, Server(INET, "udp-echo", SERVER, 7)),
            reply_other_path=True,
            inside_interface="vethpod1",
            check=_all(_count(4), _verdicts(reply_other_path=4), _check_asymmetric),
        ),
        Scenario(
            "ftp-alg",
            "active-mode FTP through conntrack's FTP helper: the PORT command is rewritten (its length changes) "
            "and the server's data connection comes in, DNATed to the pod",
            "The raw table assigns conntrack's ftp helper to TCP port 21 (CT --helper ftp, in PREROUTING and "
            "OUTPUT). pod1 (10.244.0.5) runs stdlib ftplib in active mode against a minimal FTP server on "
            "198.51.100.10:21: login, TYPE I, PORT, RETR of an 880-byte file, QUIT. The helper (with its NAT "
            "part) rewrites 'PORT 10,244,0,5,p1,p2' to 'PORT 203,0,113,2,p1,p2' (one byte longer here), "
            "adjusts every later sequence number of the control connection on the way out and every ack on the "
            "way back, and sets up an expectation; the server's data connection from 198.51.100.10:20 to "
            "203.0.113.2:port matches it and is DNATed to 10.244.0.5:port. That entry's original source is "
            "outside and its reply source is the pod: inbound, initiator outside, opened by the server (no "
            "client attempt).",
            (ClientPlan("pod1", (Action("ftp", SERVER, 21, timeout=3.0),)),),
            topology=TopologySpec(pods=(Pod("pod1", "10.244.0.5/24"),), iptables_rules=(MASQUERADE_RULE, *FTP_HELPER)),
            servers=(Server(INET, "ftp", SERVER, 21),),
            server_initiated=frozenset({("tcp", SERVER, 20)}),
            inside_interface="vethpod1",
            check=_all(_count(2), _verdicts(translated=2), _check_ftp),
        ),
        Scenario(
            "lan-noise",
            "the pod side also carries LAN traffic no router forwards (SSDP and mDNS multicast, IPv6 multicast, "
            "limited and directed broadcast, DHCP and DHCPv6, 169.254/16 and fe80:: link-local), next to egress "
            "through MASQUERADE",
            "pod1 (10.244.0.10/24, plus 169.254.10.10/16 and fe80::10/64 on its eth0) makes two HTTP requests to "
            "198.51.100.10:80 and sends three datagrams to a UDP echo on 198.51.100.10:7 (translated), and around "
            "them, from stdlib UDP sockets, two datagrams each of: SSDP M-SEARCH to 239.255.255.250:1900, mDNS "
            "from port 5353 to 224.0.0.251:5353 and from [fe80::10]:5353 to [ff02::fb]:5353, a discovery "
            "datagram to the limited broadcast 255.255.255.255:9, DHCP from port 68 to 255.255.255.255:67 (a "
            "rebinding request) and to the node's 10.244.0.1:67 (a renewal, which a UDP echo on the node "
            "answers), DHCPv6 from [fe80::10]:546 to [ff02::1:2]:547, link-local datagrams from 169.254.10.10 to "
            "169.254.1.1:7 and from fe80::10 to fe80::1:7 (cni0 holds 169.254.1.1/16 and fe80::1/64; UDP echoes "
            "on the node answer both), and to the directed broadcast of the pod subnet, 10.244.0.255:9 "
            "(SO_BROADCAST). The node also sends two datagrams each to 127.0.0.1, ::1, 203.0.113.2 and "
            "10.244.0.1 (its own addresses, port 9, closed): they go over lo and appear in neither capture. No "
            "router forwards any of this noise: the check counts each kind on the pod's bridge port (vethpod1, "
            "the inside capture) and finds none on eth0. conntrack tracks some of it (bridged multicast with "
            "bridge-nf-call-iptables=1, the DHCP renewal): those entries are left out of the truth (see notes).",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80, count=2, interval=0.1, at=0.1),
                        Action("udp", SERVER, 7, count=3, interval=0.1, at=0.15, timeout=1.0),
                        *(action for _, action, _ in LAN_NOISE),
                        DIRECTED_BROADCAST,
                    ),
                ),
                ClientPlan(NODE, NODE_LOOPBACK),
            ),
            topology=TopologySpec(
                pods=(Pod("pod1", "10.244.0.10/24", ("169.254.10.10/16", "fe80::10/64")),),
                bridge_addresses=("10.244.0.1/24", "169.254.1.1/16", "fe80::1/64"),
            ),
            servers=(
                HTTP,
                Server(INET, "udp-echo", SERVER, 7),
                Server(NODE, "udp-echo", "10.244.0.1", 67),
                Server(NODE, "udp-echo", "169.254.1.1", 7),
                Server(NODE, "udp-echo", "fe80::1%cni0", 7),
            ),
            inside_interface="vethpod1",
            check=_all(_count(3), _verdicts(translated=3), _check_lan_noise),
        ),
        Scenario(
            "routed",
            "no NAT: the far side routes the pod subnet 10.244.0.0/24 back, so pod1's traffic crosses unchanged and "
            "is answered; pod2's 10.244.1.0/24 has no route back and gets no answer",
            "The node has no SNAT rule (only FORWARD's RELATED,ESTABLISHED accept, which makes the kernel track "
            "connections) and forwards pod traffic unchanged. inet routes 10.244.0.0/24 back via the node "
            "(203.0.113.2) and nothing else: pod1 (10.244.0.10) makes two HTTP requests to 198.51.100.10:80, three "
            "datagrams to a UDP echo on :7 and two echo requests, all answered with its own address as "
            "destination. pod2 (10.244.1.10, on the same bridge, gateway 10.244.1.1) connects to "
            f"198.51.100.10:80 ({FAILURE_TIMEOUT_S:g} s timeout): its SYNs leave eth0 unchanged and the server's "
            "SYN-ACKs have no route, so nothing comes back (a subnet the far side was never told about). conntrack's "
            "reply tuple is the original one reversed for all: untranslated; the pods' clients saw answers for "
            "pod1 and a timeout for pod2.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80, count=2, interval=0.1, expect="untranslated", outcome="ok"),
                        Action("udp", SERVER, 7, count=3, interval=0.1, at=0.05, timeout=1.0, expect="untranslated",
                               outcome="ok"),
                        Action("ping", SERVER, sport=0x0104, count=2, interval=0.2, at=0.1, timeout=1.0,
                               expect="untranslated", outcome="ok"),
                    ),
                ),
                ClientPlan(
                    "pod2",
                    (Action("http", SERVER, 80, at=0.15, timeout=FAILURE_TIMEOUT_S, expect="untranslated"),),
                ),
            ),
            topology=TopologySpec(
                pods=(Pod("pod1", "10.244.0.10/24"), Pod("pod2", "10.244.1.10/24")),
                bridge_addresses=("10.244.0.1/24", "10.244.1.1/24"),
                iptables_rules=(ESTABLISHED,),
                inet_routes=("10.244.0.0/24",),
            ),
            servers=(HTTP, Server(INET, "udp-echo", SERVER, 7)),
            check=_all(_count(5), _verdicts(untranslated=5), _check_routed),
        ),
        Scenario(
            "partial-overlap",
            "the outside capture starts late and stops early: connections before and after it are on the inside "
            "capture only",
            "Three phases of the same traffic, 1.5 s apart: pod1 makes one HTTP request to 198.51.100.10:80 and "
            "sends two datagrams to a UDP echo on :7. The inside capture (vethpod1) runs throughout; the outside "
            "capture (eth0) is started after phase 0 and stopped after phase 1. The kernel translates every "
            "connection (conntrack saw replies, and the pod got them), but only phase 1's crossed a running outside "
            "capture. For phases 0 and 2 the truth says what the captures can show, as natproof.correlate/2 "
            "defines it: not_captured (no capture shows the crossing), other_capture_off true, no translated "
            "tuple; the kernel's mapping is in their notes. Phase 1: translated, other_capture_off false.",
            _overlap_phase(outside_on=False),
            phases=(_overlap_phase(outside_on=True), _overlap_phase(outside_on=False)),
            outside_phases=(1, 1),
            servers=(HTTP, Server(INET, "udp-echo", SERVER, 7)),
            inside_interface="vethpod1",
            check=_all(_count(6), _verdicts(translated=2, not_captured=4), _check_partial_overlap),
        ),
        Scenario(
            "nat66",
            "IPv6 pods with global (documentation) addresses behind ip6tables MASQUERADE: TCP and UDP egress",
            "pod1 (2001:db8:244::10) and pod2 (2001:db8:244::11) are on cni0 (2001:db8:244::1/64); the node's eth0 "
            f"is {NODE_IP6}/64 and inet's 2001:db8:100::1/64, with the servers on {SERVER6}; IPv6 forwarding is on. "
            "ip6tables: -t nat -A POSTROUTING -s 2001:db8:244::/64 -o eth0 -j MASQUERADE. pod1 makes two HTTP "
            f"requests to [{SERVER6}]:80 and sends three datagrams to a UDP echo on :7; pod2 makes one HTTP "
            "request. Addresses are added without duplicate address detection (nodad), so they are usable at once. "
            "conntrack's IPv6 entries are the truth (the closing listing is `conntrack -L -f ipv6`).",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER6, 80, count=2, interval=0.1),
                        Action("udp", SERVER6, 7, count=3, interval=0.1, at=0.05, timeout=1.0),
                    ),
                ),
                ClientPlan("pod2", (Action("http", SERVER6, 80, at=0.1),)),
            ),
            topology=TopologySpec(
                pods=(Pod("pod1", "2001:db8:244::10/64"), Pod("pod2", "2001:db8:244::11/64")),
                bridge_addresses=("2001:db8:244::1/64",),
                node_address=f"{NODE_IP6}/64",
                inet_address="2001:db8:100::1/64",
                server_addresses=(SERVER6,),
                iptables_rules=(),
                ip6tables_rules=(_rule(f"-t nat -A POSTROUTING -s {POD6_CIDR} -o eth0 -j MASQUERADE"),),
            ),
            servers=(Server(INET, "http", SERVER6, 80), Server(INET, "udp-echo", SERVER6, 7)),
            pod_cidr=POD6_CIDR,
            check=_all(
                _count(4),
                _verdicts(translated=4),
                _check_nat66,
                _counted("MASQUERADE", save="ip6tables-save"),
                _nowhere("outside.pcap", POD6_CIDR),
            ),
        ),
        Scenario(
            "overlay",
            "two nodes joined by flannel's VXLAN (UDP 8472): pod to pod across nodes is internal (encapsulated on "
            "eth0, never NATed), egress is translated",
            "A second node, node2 (eth0 203.0.113.3/24), shares the captured node's uplink network: both eth0s are "
            "ports of one bridge in inet, which holds 203.0.113.1 and routes to the servers. node2 has its own cni0 "
            "(10.244.1.1/24) with pod2 (10.244.1.10), which runs an HTTP server on :8080 and a UDP echo on :7. Each "
            "node has flannel.1 as flanneld's vxlan backend makes it (`ip link add flannel.1 type vxlan id 1 local "
            "<node ip> dev eth0 dstport 8472 nolearning`, its lease's network address /32, a fixed MAC) and, for the "
            "other node's lease, what flanneld writes: a permanent neighbour entry for the other VTEP address "
            "(10.244.1.0 on the node, 10.244.0.0 on node2), a `bridge fdb` entry sending that VTEP's MAC to the other "
            "node's eth0 address, and the route of its pod subnet via that VTEP address dev flannel.1 onlink (no "
            "`remote` peer, no learning). Pod MTU 1450, as flannel's CNI configuration sets it. Both nodes carry "
            "flanneld's iptables rules (FLANNEL-POSTRTG: RETURN within 10.244.0.0/16, MASQUERADE --random-fully for "
            "the rest but multicast; FLANNEL-FWD accepts). pod1 makes three HTTP requests to pod2:8080, sends three "
            "datagrams on one socket to pod2:7 and two echo requests to pod2, and, interleaved, two HTTP requests "
            "and two datagrams to 198.51.100.10. Pod to pod leaves the node by eth0 inside VXLAN (outer "
            "203.0.113.2 -> 203.0.113.3:8472, source port a hash of the inner flow), untranslated: conntrack's "
            "reply tuple is its original one reversed, and the truth gives it verdict internal with its inside tuple "
            "as outside (and translated) tuple, since the inner packet crossed eth0 unchanged. Each tunnel flow is "
            "a conntrack entry of the node's own, left out of the truth (neither from a pod nor to one). Egress is "
            "masqueraded to 203.0.113.2 (random ports). Inside capture: cni0 (pod1's traffic is routed, both to "
            "pod2 and to the internet, so the bridge device sees it); outside: eth0. The node-wide captures (any.pcap, "
            "node.pcapng) hold flannel.1 too: the pod-to-pod packets once more, decapsulated, between cni0 and eth0.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", POD2_REMOTE, 8080, count=3, interval=0.1, expect="internal"),
                        Action("udp", POD2_REMOTE, 7, count=3, interval=0.1, at=0.03, timeout=1.0, expect="internal"),
                        Action("ping", POD2_REMOTE, sport=0x0106, count=2, interval=0.2, at=0.06, timeout=1.0,
                               expect="internal"),
                        Action("http", SERVER, 80, count=2, interval=0.1, at=0.05),
                        Action("udp", SERVER, 7, count=2, interval=0.1, at=0.08, timeout=1.0),
                    ),
                ),
            ),
            topology=TopologySpec(
                peer_node=NODE2,
                iptables_rules=flannel_rules("10.244.0.0/24"),
                pod_mtu=1450,
            ),
            servers=(
                HTTP,
                Server(INET, "udp-echo", SERVER, 7),
                Server("pod2", "http", POD2_REMOTE, 8080),
                Server("pod2", "udp-echo", POD2_REMOTE, 7),
            ),
            check=_all(_count(8), _verdicts(internal=5, translated=3), _check_overlay),
        ),
        Scenario(
            "eks-vpc-cni",
            "an EKS node as the AWS VPC CNI wires it: pods with VPC addresses on routed veths (no bridge), SNAT "
            "--random-fully to the primary ENI only for traffic leaving the VPC (and not to an excluded CIDR), a pod "
            "on a secondary ENI SNATed to the primary ENI's address too",
            "The VPC is 10.0.0.0/16; the node's primary ENI eth0 is 10.0.1.10/24 and its secondary ENI eth1 "
            "10.0.1.11/24, both on the subnet's router 10.0.1.1 (the inet namespace, which stands for the VPC: it "
            f"routes the VPC CIDR back and holds another subnet's host {VPC_HOST}, a host of a network behind a VPN "
            f"{ONPREM_HOST} and the internet server {SERVER}). pod1 (10.0.1.50) and pod2 (10.0.1.51) hold secondary "
            "addresses of eth0, pod3 (10.0.1.60) one of eth1; each pod is a /32 on a routed veth eni<hash>, default "
            "via 169.254.1.1 (a static neighbour), as the plugin wires it. iptables as the plugin writes it "
            f"(AWS_VPC_K8S_CNI_RANDOMIZESNAT=prng, AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS={ONPREM_CIDR}): AWS-SNAT-CHAIN-0 "
            f"RETURNs for {VPC_CIDR} and {ONPREM_CIDR} and SNATs the rest to 10.0.1.10 --random-fully; "
            "AWS-CONNMARK-CHAIN-0 marks (0x80) new pod connections leaving the VPC, so `ip rule 1024 fwmark 0x80 "
            "lookup main` sends pod3's internet traffic out of eth0 (its own rule 1536 would send it out of eth1). "
            f"pod1 makes two HTTP requests to {SERVER}:80 and one echo request (translated), and two HTTP requests "
            f"and two datagrams to {VPC_HOST} (internal: the VPC is the pod network; they leave eth0 unchanged and "
            f"are answered); pod2 two HTTP requests and three datagrams to {SERVER} (translated) and one HTTP "
            f"request to {ONPREM_HOST} (untranslated, answered: an SNAT exclusion, no failure); pod3 two HTTP "
            f"requests to {SERVER}:80 (translated to 10.0.1.10, via eth0). pod3 sends nothing to the VPC: that would "
            "leave by eth1, which neither capture holds. The inside capture is one tcpdump per pod veth, merged in "
            f"time order (no bridge holds every pod's traffic). pod_cidr in truth.json is the VPC CIDR {VPC_CIDR}, "
            "what the CNI never SNATs.",
            (
                ClientPlan(
                    "pod1",
                    (
                        Action("http", SERVER, 80, count=2, interval=0.1),
                        Action("ping", SERVER, sport=0x0105, count=2, interval=0.2, at=0.02, timeout=1.0),
                        Action("http", VPC_HOST, 80, count=2, interval=0.1, at=0.05, expect="internal"),
                        Action("udp", VPC_HOST, 7, count=2, interval=0.1, at=0.08, timeout=1.0, expect="internal"),
                    ),
                ),
                ClientPlan(
                    "pod2",
                    (
                        Action("http", SERVER, 80, count=2, interval=0.1, at=0.1),
                        Action("udp", SERVER, 7, count=3, interval=0.1, at=0.12, timeout=1.0),
                        Action("http", ONPREM_HOST, 80, at=0.15, expect="untranslated", outcome="ok"),
                    ),
                ),
                ClientPlan("pod3", (Action("http", SERVER, 80, count=2, interval=0.1, at=0.2),)),
            ),
            topology=EKS_NODE,
            servers=(
                HTTP,
                Server(INET, "udp-echo", SERVER, 7),
                Server(INET, "http", VPC_HOST, 80),
                Server(INET, "udp-echo", VPC_HOST, 7),
                Server(INET, "http", ONPREM_HOST, 80),
            ),
            inside_interface=",".join(p.host_veth for p in EKS_NODE.pods),
            pod_cidr=VPC_CIDR,
            check=_all(_count(12), _verdicts(translated=8, internal=3, untranslated=1), _check_vpc_cni),
        ),
    )
}


def list_scenarios() -> list[tuple[str, str]]:
    """(name, one-line description) of every scenario, in the order they were built."""
    return [(s.name, s.description) for s in SCENARIOS.values()]


UNAVAILABLE = {
    "conntrack-full": "conntrack-full cannot be made in a network namespace: nf_conntrack_max is read-only there "
    "(sysctl -w: EINVAL); see port-exhaustion",
}
"""Scenarios the lab cannot build, with the reason (see the module docstring); not in list_scenarios."""


def get_scenario(name: str) -> Scenario:
    if name in UNAVAILABLE:
        raise LabError(UNAVAILABLE[name])
    try:
        return SCENARIOS[name]
    except KeyError:
        raise LabError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


def run_scenario(name: str, outdir: Path, *, keep_going: bool = False) -> dict:
    """Run one scenario and write inside.pcap, outside.pcap, conntrack.log, truth.json and scenario.txt, and the
    kubectl-style dumps of its pods and Services (pods.json, services.json: natproof.lab.kubectl), and the
    same traffic as captures of many interfaces (NODE_FILES: any.pcap, node.pcapng, links.txt).

    The files appear in ``outdir`` only once all of them are written. When the kernel's truth disagrees
    with the scenario's design (or a capture is incomplete), LabError is raised and nothing is written,
    unless ``keep_going``: then the files are written anyway with the problems listed in scenario.txt.
    Returns the truth (the content of truth.json).
    """
    scenario = get_scenario(name)
    check_prerequisites()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=outdir))
    try:
        with signals_raise():
            recording = _record(scenario, stage)
        truth, connections, notes = _judge(scenario, recording, stage)
        problems = _problems(scenario, recording, connections, notes)
        if problems and not keep_going:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise LabError(f"{name}: {problems[0]}{more}")
        (stage / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
        (stage / "scenario.txt").write_text(
            _describe(scenario, recording, truth, connections, notes, problems)
        )
        if recording.node_captures:
            (stage / "links.txt").write_text(recording.links)
        outputs = list(OUTPUT_FILES) + [n for n in NODE_FILES if (stage / n).exists()]
        peer = scenario.topology.peer_node
        outputs += write_dumps(stage, scenario.topology.pods, scenario.services,
                               str(ipaddress.ip_interface(scenario.topology.node_address).ip), recording.started,
                               peers=[(peer.name, peer.ip, peer.pods)] if peer else ())
        if scenario.gzip_pcaps:
            for pcap in [n for n in outputs if n.endswith((".pcap", ".pcapng"))]:
                with open(stage / pcap, "rb") as src, open(stage / f"{pcap}.gz", "wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst:
                    shutil.copyfileobj(src, dst)
                outputs[outputs.index(pcap)] = f"{pcap}.gz"
        captures = ("inside.pcap", "outside.pcap", "any.pcap", "node.pcapng")
        for stale in (*captures, *(f"{c}.gz" for c in captures), *DUMP_FILES):
            if stale not in outputs:
                (outdir / stale).unlink(missing_ok=True)
        for filename in outputs:
            os.replace(stage / filename, outdir / filename)
        (stage / KERNEL_RECORDS / "index.json").write_text(json.dumps(recording.kernel_records, indent=2) + "\n")
        shutil.rmtree(outdir / KERNEL_RECORDS, ignore_errors=True)
        os.replace(stage / KERNEL_RECORDS, outdir / KERNEL_RECORDS)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return truth


def _record(scenario: Scenario, stage: Path) -> Recording:
    """Build the namespaces, run the traffic under captures and conntrack listeners, always tear down."""
    started = time.time()
    lab_type = VpcCniLab if isinstance(scenario.topology, VpcCniSpec) else Lab
    with lab_type(scenario.topology, prefix=new_prefix()) as lab:
        start_servers(lab, scenario.servers)
        recorders = [
            ConntrackRecorder(lab, NODE, "NEW", stage / "conntrack-new.log"),
            ConntrackRecorder(lab, NODE, "UPDATE,DESTROY", stage / "conntrack-update.log"),
        ]
        kernel_dir = stage / KERNEL_RECORDS
        kernel_dir.mkdir()
        # One more listener, for every event in conntrack's plain timestamped format: the event log users keep.
        # Niced as far as it goes: on a busy machine the truth's own listeners must not lose events to it
        # (many-connections); its own losses are counted in index.json.
        event_log = ConntrackRecorder(lab, NODE, "ALL", kernel_dir / "events.log", output="timestamp", niceness=19)
        for recorder in (*recorders, event_log):
            recorder.start()
        inside_ifs = scenario.inside_interface.split(",")
        insides = [PacketCapture(lab, NODE, n, stage / ("inside.pcap" if len(inside_ifs) == 1 else f".if-{n}.pcap"))
                   for n in inside_ifs]
        outside = PacketCapture(lab, NODE, "eth0", stage / "outside.pcap")
        phases = (scenario.clients, *scenario.phases)
        first, last = scenario.outside_phases or (0, len(phases) - 1)
        # The same run as one capture of many interfaces (NODE_FILES), over the inside capture's span; not where
        # the design has the outside capture miss part of the run (one file cannot miss part of one interface).
        links, names = node_links(lab, NODE)
        node_captures: list[PacketCapture] = []
        if scenario.outside_phases is None:
            # Every forwarded packet reaches -i any once per interface it crosses: sixteen times the slots
            # (many-connections dropped 2,010 of ~65,000 frames with the per-interface ring, 347 with four times).
            node_captures.append(PacketCapture(lab, NODE, "any", stage / "any.pcap", link_type="LINUX_SLL2",
                                               ring_kib=4 * RING_KIB, snaplen=ANY_SNAPLEN))
            node_captures += [PacketCapture(lab, NODE, n, stage / f".if-{n}.pcap", promiscuous=False) for n in names
                              if n not in (*inside_ifs, "eth0")]
        for capture in node_captures:
            capture.start()
        for inside in insides:
            inside.start()
        outside_stats = None
        attempts: list[Attempt] = []
        off: set[tuple[str, str, int, str, int]] = set()
        for i, plans in enumerate(phases):
            if i:
                time.sleep(PHASE_GAP_S)
            if i == first:
                outside.start()
            done = run_clients(lab, plans)
            attempts += done
            if not first <= i <= last:
                off.update(a.key for a in done)
            if i == last and i < len(phases) - 1:
                time.sleep(SETTLE_S)
                outside_stats = outside.stop()
        time.sleep(SETTLE_S + scenario.settle_s)
        inside_stats = [inside.stop() for inside in insides]
        outside_stats = outside_stats or outside.stop()
        capture_stats = [inside_stats[0] if len(insides) == 1 else _merge_inside(inside_stats, stage / "inside.pcap"),
                         outside_stats]
        node_stats = [capture.stop() for capture in node_captures]
        if node_stats:
            node_stats = [node_stats[0], _merge_node(names, [*inside_stats, outside_stats, *node_stats[1:]],
                                                     stage / "node.pcapng")]
        for part in inside_stats if len(insides) > 1 else ():
            part.path.unlink(missing_ok=True)
        recorder_stats = [recorder.stop() for recorder in recorders]
        events = event_log.stop()
        listing_command, listing = snapshot_conntrack(lab, NODE)
        kernel_records = {"events.log": {"command": events.command, "entries": events.events,
                                         "socket_drops": events.socket_drops}}
        kernel_records |= snapshot_kernel_records(lab, NODE, kernel_dir)
        node_state = _node_state(lab)
    return Recording(
        prefix=lab.prefix,
        attempts=sorted(attempts, key=lambda a: a.t_start),
        outside_off=frozenset(off),
        captures=capture_stats,
        recorders=recorder_stats,
        listing_command=listing_command,
        listing=listing,
        node_state=node_state,
        setup_commands=list(lab.commands),
        started=started,
        finished=time.time(),
        node_captures=node_stats,
        links=links,
        kernel_records=kernel_records,
    )


def _merge_inside(parts: list[CaptureStats], path: Path) -> CaptureStats:
    """inside.pcap from one capture per pod veth (Ethernet, nanosecond): every record in time order, as ``mergecap
    -w inside.pcap`` writes them. The parts are kept (node.pcapng is made from them too)."""
    merge_pcaps([c.path for c in parts], path)
    counts = [c.captured for c in parts]
    drops = [c.dropped_by_kernel for c in parts]
    return CaptureStats(
        interface=",".join(c.interface for c in parts), path=path,
        captured=None if None in counts else sum(n or 0 for n in counts),
        dropped_by_kernel=None if None in drops else sum(d or 0 for d in drops),
        size_bytes=path.stat().st_size,
        command=" + ".join(f"tcpdump -i {c.interface}" for c in parts) + " (each with the options above) merged in "
                "time order into one pcap (mergecap -w inside.pcap)",
    )


def _merge_node(names: list[str], parts: list[CaptureStats], path: Path) -> CaptureStats:
    """node.pcapng from the per-interface captures, in ``ip -o link`` order; the extra ones are deleted."""
    by_if = {c.interface: c for c in parts}
    merged = merge_pcapng([(n, by_if[n].path) for n in names], path)
    for c in parts:
        if c.path.name.startswith(".if-"):
            c.path.unlink()
    drops = [c.dropped_by_kernel for c in parts if c.interface in names]
    return CaptureStats(
        interface=",".join(names), path=path, captured=merged,
        dropped_by_kernel=None if None in drops else sum(d or 0 for d in drops),
        size_bytes=path.stat().st_size,
        command=" + ".join(f"tcpdump -i {n}" for n in names) + " merged into one pcapng (an interface block each)",
    )


NODE_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.bridge.bridge-nf-call-iptables",
    "net.netfilter.nf_conntrack_acct",
    "net.netfilter.nf_conntrack_timestamp",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_icmp_timeout",
)
POD_SYSCTLS = (
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_syn_linear_timeouts",
    "net.ipv4.ip_default_ttl",
)


def _node_state(lab: Lab) -> dict[str, str]:
    """Titled text blocks describing the node at the end of the run (rules with their counters, links ...)."""
    state: dict[str, str] = {}
    for args in (
        ("-S",),
        ("-t", "nat", "-S"),
        ("-L", "FORWARD", "-v", "-x", "-n"),
        ("-t", "nat", "-L", "POSTROUTING", "-v", "-x", "-n"),
    ):
        state["iptables " + " ".join(args)] = lab.run(["iptables", "-w", "5", *args], role=NODE).stdout
    # Every table with packet and byte counters per rule ([packets:bytes]): the kernel's count of what
    # each DNAT, MARK, MASQUERADE and REJECT rule did.
    state["iptables-save -c"] = lab.run(["iptables-save", "-c"], role=NODE).stdout
    if lab.spec.ip6tables_rules:
        state["ip6tables-save -c"] = lab.run(["ip6tables-save", "-c"], role=NODE).stdout
    state["node: ip -s -br link"] = lab.run(["ip", "-s", "link"], role=NODE).stdout
    peer = lab.spec.peer_node
    if peer is not None:
        # The overlay as the kernel holds it on both nodes: the VXLAN device, the remote VTEP's neighbour and
        # forwarding entries, and node2's rules with their counters and its links' counters.
        for role in (NODE, peer.name):
            state[f"{role}: ip -d link show {VXLAN_DEVICE}"] = lab.run(
                ["ip", "-d", "link", "show", VXLAN_DEVICE], role=role).stdout
            state[f"{role}: ip neigh show dev {VXLAN_DEVICE}; bridge fdb show dev {VXLAN_DEVICE}"] = (
                lab.run(["ip", "neigh", "show", "dev", VXLAN_DEVICE], role=role).stdout
                + lab.run(["bridge", "fdb", "show", "dev", VXLAN_DEVICE], role=role).stdout)
        state[f"{peer.name}: iptables-save -c"] = lab.run(["iptables-save", "-c"], role=peer.name).stdout
        state[f"{peer.name}: ip -s link"] = lab.run(["ip", "-s", "link"], role=peer.name).stdout
    if isinstance(lab.spec, VpcCniSpec):
        # The VPC CNI routes by policy: its ip rules, the secondary ENIs' tables, the VPC's mapping of addresses.
        tables = [str(e.table) for e in lab.spec.enis[1:]]
        state["node: ip rule; ip route show table " + ", ".join(tables or ["-"])] = (
            lab.run(["ip", "rule"], role=NODE).stdout
            + "".join(lab.run(["ip", "route", "show", "table", t], role=NODE).stdout for t in tables))
        state["inet: ip neigh show nud permanent"] = lab.run(["ip", "neigh", "show", "nud", "permanent"],
                                                             role=INET).stdout
    for role in lab.roles:
        addrs = lab.run(["ip", "-br", "addr"], role=role).stdout
        routes = lab.run(["ip", "route"], role=role).stdout
        state[f"{role}: ip -br addr; ip route"] = addrs + routes
    # Per-CPU counters of this namespace: insert_failed counts packets dropped because their entry clashed
    # with one already confirmed (a SNAT that found no free port ends so).
    state["conntrack -S"] = lab.run(["conntrack", "-S"], role=NODE).stdout
    state["node sysctls"] = _lines(lab.read_sysctls(NODE, NODE_SYSCTLS))
    state["inet sysctls"] = _lines(
        lab.read_sysctls(INET, ("net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"))
    )
    first_pod = lab.spec.pods[0].name
    state[f"{first_pod} sysctls"] = _lines(lab.read_sysctls(first_pod, POD_SYSCTLS))
    state["offloads"] = _offloads(lab)
    return state


def _lines(values: dict[str, str]) -> str:
    return "".join(f"{k} = {v}\n" for k, v in values.items())


OFFLOAD_FEATURES = re.compile(
    r"\s*(tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload|[rt]x-checksumming):"
)


def _offloads(lab: Lab) -> str:
    """GSO/GRO/TSO limits of the node's links (from ip -d link) and ethtool's feature flags when installed."""
    out = []
    present = set(node_links(lab, NODE)[1])
    links = [n for n in ("eth0", "eth1", "cni0", *(pod.host_veth for pod in lab.spec.pods)) if n in present]
    if lab.spec.peer_node is not None:
        links.append(VXLAN_DEVICE)
    for link in links:
        detail = lab.run(["ip", "-d", "link", "show", "dev", link], role=NODE).stdout
        limits = re.findall(r"\b((?:gso|tso|gro)_max_(?:size|segs) \d+)", detail)
        mtu = re.search(r"\bmtu (\d+)", detail)
        out.append(f"{link}: mtu {mtu.group(1) if mtu else '?'}, " + ", ".join(limits))
    if shutil.which("ethtool"):
        for link in links:
            feats = lab.run(["ethtool", "-k", link], role=NODE, check=False).stdout.splitlines()
            keep = [f.strip() for f in feats if OFFLOAD_FEATURES.match(f)]
            out.append(f"{link} (ethtool -k): " + "; ".join(keep))
    else:
        out.append(
            "ethtool is not installed: feature flags not read. Nothing was turned off: the kernel "
            "defaults for veth and bridge are kept (TSO/GSO and checksum offload on)."
        )
    return "\n".join(out) + "\n"


def _judge(scenario: Scenario, rec: Recording, stage: Path) -> tuple[dict, list[Connection], list[str]]:
    """Assemble conntrack.log from the listeners' files and the listing; derive the truth from it."""
    log = [
        f"# natproof lab conntrack record: scenario {scenario.name}, namespace {rec.prefix}-node, "
        f"kernel {platform.release()}"
    ]
    for stats in rec.recorders:
        lines = [line for line in stats.path.read_text().splitlines() if line.strip()]
        log.append(
            f"# events: {stats.command} ({len(lines)} lines; netlink socket drops: {stats.socket_drops})"
        )
        log.extend(lines)
        stats.path.unlink()
    log.append(f"# listing after the traffic: {rec.listing_command} ({len(rec.listing)} entries)")
    log.extend(rec.listing)
    (stage / "conntrack.log").write_text("\n".join(log) + "\n")

    entries = parse_lines(log)
    events = [e for e in entries if e.event is not None]
    listing = [e for e in entries if e.event is None]
    connections, notes = build_connections(events, listing, rec.attempts, scenario.rules())
    if scenario.outside_phases is not None:
        connections = [
            _outside_off(c) if _key(c) in rec.outside_off else dataclasses.replace(c, other_capture_off=False)
            for c in connections
        ]
    truth = {
        "schema": SCHEMA,
        "scenario": scenario.name,
        "source": "kernel",
        "pod_cidr": scenario.pod_cidr,
        # Both captures are taken in the node namespace by one kernel: a single clock.
        "clock_offset_s": 0.0,
        "kernel": platform.release(),
        "created": dt.datetime.fromtimestamp(rec.started, dt.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "connections": [c.to_dict() for c in connections],
    }
    return truth, connections, notes


def _key(c: Connection) -> tuple[str, str, int, str, int]:
    return (c.proto, c.inside.src, c.inside.sport, c.inside.dst, c.inside.dport)


def _outside_off(c: Connection) -> Connection:
    """A connection made while the outside capture was not running: the kernel's mapping stays in the evidence and
    notes, the truth says what the captures can show (natproof.correlate/2: not_captured, flagged
    other_capture_off; no translated leg was captured)."""
    note = (f"made while the outside capture was not running (design): the kernel mapped it to {c.outside} "
            f"({c.verdict}), but no capture shows it crossing; natproof can only say not_captured")
    return dataclasses.replace(c, outside=None, translated=None, verdict="not_captured", other_capture_off=True,
                               notes="; ".join(n for n in (c.notes, note) if n),
                               evidence=f"{c.evidence}; outside capture off (design)")


def _problems(
    scenario: Scenario, rec: Recording, connections: list[Connection], notes: list[str]
) -> list[str]:
    """Where the kernel's truth, the pods' view and the design disagree, or a record is incomplete."""
    problems = [note for note in notes if not note.startswith("left out")]
    # Clients report what they sent: the original tuple (for egress also the inside one).
    by_original = {}
    for c in connections:
        o = c.original or c.inside
        by_original[(c.proto, o.src, o.sport, o.dst, o.dport)] = c
    for attempt in rec.attempts:
        conn = by_original.get(attempt.key)
        what = f"{attempt.proto} {attempt.src}:{attempt.sport} -> {attempt.dst}:{attempt.dport}"
        if conn is None:
            problems.append(f"{what}: attempted but not in the truth")
            continue
        # "a|b": the design allows either verdict (which one the kernel gives is a race it decides).
        if conn.verdict not in attempt.expect.split("|"):
            problems.append(f"{what}: verdict {conn.verdict}, the design expects {attempt.expect}")
        if attempt.expect_outcome:
            if attempt.outcome != attempt.expect_outcome:
                problems.append(
                    f"{what}: the client saw '{attempt.outcome}' ({attempt.detail}), the design expects "
                    f"'{attempt.expect_outcome}'"
                )
        elif (attempt.outcome == "ok") != (conn.verdict in ("translated", "internal", "reply_other_path")):
            problems.append(f"{what}: the client saw '{attempt.outcome}' ({attempt.detail}) for {conn.verdict}")
    attempted = {a.key for a in rec.attempts}
    for key, conn in by_original.items():
        opened_by_server = conn.original and (conn.proto, conn.original.src, conn.original.sport)
        if key not in attempted and opened_by_server not in scenario.server_initiated:
            problems.append(f"{conn.proto} {conn.original}: in conntrack but no client attempted it")
    for cap in rec.captures:
        if cap.dropped_by_kernel:
            problems.append(f"{cap.path.name}: {cap.dropped_by_kernel} packets dropped by kernel")
        if not cap.captured:
            problems.append(f"{cap.path.name}: no packet captured on {cap.interface}")
        for address, count in sorted(foreign_addresses(cap.path).items()):
            problems.append(
                f"{cap.path.name}: {count} packets to or from {address}, outside the lab's ranges"
            )
        if cap.size_bytes > scenario.max_pcap_bytes:
            problems.append(f"{cap.path.name}: {cap.size_bytes} bytes, over {scenario.max_pcap_bytes}")
    for cap in rec.node_captures:
        if cap.dropped_by_kernel:
            problems.append(f"{cap.path.name}: {cap.dropped_by_kernel} packets dropped by kernel")
        if not cap.captured:
            problems.append(f"{cap.path.name}: no packet captured on {cap.interface}")
        else:
            for address, count in sorted(foreign_ip_addresses(cap.path).items()):
                problems.append(f"{cap.path.name}: {count} packets to or from {address}, outside the lab's ranges")
        if cap.size_bytes > NODE_CAPTURE_FACTOR * scenario.max_pcap_bytes:
            problems.append(f"{cap.path.name}: {cap.size_bytes} bytes, over "
                            f"{NODE_CAPTURE_FACTOR * scenario.max_pcap_bytes}")
    for stats in rec.recorders:
        if stats.socket_drops:
            problems.append(f"{stats.command}: {stats.socket_drops} events dropped by the netlink socket")
    if scenario.check is not None:
        problems.extend(scenario.check(connections, rec))
    return problems


def _describe(
    scenario: Scenario,
    rec: Recording,
    truth: dict,
    connections: list[Connection],
    notes: list[str],
    problems: list[str],
) -> str:
    """scenario.txt: what was run, on what topology and configuration, and how the truth was derived."""
    t0 = min((a.t_start for a in rec.attempts), default=rec.started)
    roles = scenario.topology.roles
    out: list[str] = [
        f"natproof lab scenario: {scenario.name}",
        scenario.description,
        "",
        f"created: {truth['created']}   kernel: {truth['kernel']}   "
        f"run took {rec.finished - rec.started:.1f} s",
        f"namespaces: {', '.join(f'{rec.prefix}-{role}' for role in roles)} (deleted at the end of the run)",
        "",
        "== What was run ==",
        *_wrap(scenario.design),
        "",
        "servers:",
        *(f"  {server.describe()} (python3 -c, stdlib only)" for server in scenario.servers),
        "client attempts, as each pod saw them (t relative to the first attempt):",
    ]
    for a in rec.attempts:
        out.append(
            f"  t={a.t_start - t0:6.3f}s {a.pod} {a.proto} {a.src}:{a.sport} -> {a.dst}:{a.dport}: "
            f"{a.outcome} ({a.detail}); design expects {a.expect}"
        )
    out += ["", "== Topology and node configuration =="]
    if isinstance(scenario.topology, VpcCniSpec):
        out += describe_vpc_cni(scenario.topology)
    else:
        out += _describe_bridge(scenario)
    out += ["", "setup commands, in order:", *(f"  {c}" for c in rec.setup_commands)]
    for title, text in rec.node_state.items():
        out += ["", f"{title}:", *(f"  {line}" for line in text.rstrip().splitlines())]
    out += ["", "== Captures =="]
    for cap in rec.captures:
        side = "inside" if cap.path.name.startswith("inside") else "outside"
        out.append(
            f"{cap.path.name} ({side}): `{cap.command.replace(str(cap.path.parent) + '/', '')}` in the node "
            f"namespace on {cap.interface}: {cap.captured} packets, {cap.dropped_by_kernel} dropped by "
            f"kernel, {cap.size_bytes} bytes"
        )
    schedule = (
        "Both captures were started (each printed 'listening on') before the first client and stopped with "
        f"SIGINT {SETTLE_S:g} s after the last one."
    )
    if scenario.outside_phases is not None:
        first, last = scenario.outside_phases
        schedule = (
            "The inside capture was started (it printed 'listening on') before the first client and stopped with "
            f"SIGINT {SETTLE_S:g} s after the last one. The clients ran in {1 + len(scenario.phases)} phases "
            f"{PHASE_GAP_S:g} s apart, and the outside capture ran for phases {first} to {last} only: started "
            f"{PHASE_GAP_S:g} s after the phase before, stopped {SETTLE_S:g} s after phase {last}."
        )
    for cap in rec.node_captures:
        out.append(
            f"{cap.path.name} (one capture of many interfaces): "
            f"`{cap.command.replace(str(cap.path.parent) + '/', '')}` in the node namespace: {cap.captured} "
            f"packets, {cap.dropped_by_kernel} dropped by kernel, {cap.size_bytes} bytes"
        )
    if rec.node_captures:
        out += _wrap(
            "The node-wide captures ran over the same span as the two above and hold the same traffic, each "
            "forwarded packet once per interface it crossed (pod veth, cni0 where there is one, eth0). links.txt is "
            "`ip -o link` of the node namespace: it names any.pcap's interface indexes (natproof correlate any.pcap "
            "--interfaces "
            "links.txt). node.pcapng holds a tcpdump of each node interface but lo (started, like the others, "
            "before the first client), merged into one pcapng with an interface block (if_name) each."
        )
    out += _wrap(
        "No capture filter: ARP, IPv6 (router solicitations, MLD, DAD) and IGMP noise is kept as it was. "
        f"{schedule} Offloads are the kernel's defaults (see offloads above): "
        "TCP data built by the pods' and inet's stacks crosses the veths as GSO packets of up to 64 KB, "
        "which appear with that size in both captures (a physical NIC would segment them on the wire, and "
        "GRO would merge them again on the outside only), and L4 checksums of locally built packets carry "
        "only the pseudo-header sum (CHECKSUM_PARTIAL) in both captures: tcpdump calls them incorrect, and "
        "since MASQUERADE adjusts that partial sum the inside and outside values differ."
    )
    out += [
        "",
        "== Kernel truth (truth.json) ==",
    ]
    out += _wrap(
        "conntrack.log holds, in sections, the output of `conntrack -E -e NEW -o timestamp,extended`, of "
        "`conntrack -E -e UPDATE,DESTROY -o timestamp,extended` (two listeners, because one listening to all "
        "events loses NEW events under load), both in the node namespace for the whole run, then "
        "`conntrack -L -o extended` (IPv4, then `-f ipv6`) after the traffic. nf_conntrack_acct=1 adds packets=/bytes= "
        "per direction. Entries of traffic no router forwards (multicast, broadcast, link-local, loopback, DHCP) "
        "are left out. Only entries whose original source is a pod address (pod-initiated) or whose reply "
        "source is one while the original source is not (inbound: NodePort, an FTP data connection) are kept. "
        "original = the original tuple; translated = the reply tuple reversed (src = reply dst, sport = reply "
        "dport, dst = reply src, dport = reply sport), so DNAT shows in dst/dport and SNAT in src/sport; "
        "rewrites = the fields that differ (ICMP: the echo id stands for sport, dport is 0). Pod-initiated: "
        "inside = original, outside = translated (initiator inside). Inbound: inside = translated, outside = "
        "original (initiator outside). A destination, or a DNATed destination, in pod_cidr (a local Service "
        "endpoint, hairpin): internal, outside null, translated null where the DNATed leg is in neither capture. "
        "service = the ClusterIP or NodePort of the design that the original destination names, with the "
        "backend conntrack chose (the translated destination). Connections are listed by the timestamp of their "
        "NEW event (the time the NEW listener read it; a listener reads events in the kernel's order). "
        "Verdicts: translated when the kernel saw a reply (no [UNREPLIED]); no_reply when the entry stayed "
        "[UNREPLIED] and the design has the far end silent; "
        "untranslated when the reply tuple points back at the pod address; internal when the destination is "
        "in pod_cidr (outside null); not_forwarded and reply_dropped as the design above says. Every verdict "
        "is checked against what the pod's client saw and what the design expects."
    )
    if scenario.topology.peer_node is not None:
        out += _wrap(
            f"Overlay: a destination in another node's pod subnet ({scenario.topology.peer_node.pod_subnet}, "
            "reached through the overlay), untranslated: internal, but outside = inside and translated = original, "
            "since its packets crossed eth0 (inside VXLAN) unchanged. The tunnel's own flows (the node's UDP to port "
            f"{VXLAN_PORT}) are conntrack entries neither from a pod nor to one: left out."
        )
    out += _wrap(
        f"{KERNEL_RECORDS}/ holds the same kernel's record in the other formats users hold, for `natproof "
        "correlate --conntrack`: " + "; ".join(f"{name}: `{info['command']}` ({info['entries']} entries"
                                               + (f", netlink socket drops: {info['socket_drops']}"
                                                  if "socket_drops" in info else "") + ")"
                                               for name, info in rec.kernel_records.items())
        + ". The listings are taken one after another after the traffic, after the listeners stopped."
    )
    out += [f"note: {note}" for note in notes]
    counts = Counter(c.verdict for c in connections)
    out += [
        "",
        f"connections: {len(connections)} (" + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())) + ")",
    ]
    for i, c in enumerate(connections, 1):
        mapped = f" => {c.outside}" if c.outside else ""
        out.append(f"  {i:3d} {c.proto} {c.inside}{mapped}  {c.verdict}: {c.evidence}")
        if c.initiator != "inside" or c.service or (c.translated and c.outside != c.translated):
            svc = c.service
            where = f"; service {svc['type']} {svc['address']}:{svc['port']} -> {svc['backend']}" if svc else ""
            out.append(
                f"      initiator {c.initiator}; original {c.original}; translated {c.translated}; "
                f"rewrites {c.rewrites}{where}"
            )
        if c.notes:
            out.append(f"      notes: {c.notes}")
    out += ["", "== Checks =="]
    out += [f"PROBLEM: {p}" for p in problems] or ["all checks passed (design, kernel and pods agree)"]
    return "\n".join(out) + "\n"


def _describe_bridge(scenario: Scenario) -> list[str]:
    """scenario.txt's lines on a bridge node's topology (cni0, eth0 to inet, the pods' veths, a peer node)."""
    topology = scenario.topology
    out: list[str] = []
    out.append(
        "node: bridge cni0 "
        + ", ".join(topology.bridge_addresses)
        + f"; eth0 {topology.node_address} (veth to inet's eth0 "
        f"{topology.inet_address}); default via {topology.inet_ip}"
    )
    for pod in topology.pods:
        out.append(f"{pod.name}: eth0 {pod.address}, default via {pod.gateway}; peer {pod.host_veth} on cni0")
    peer = topology.peer_node
    if peer is not None:
        local = ipaddress.ip_interface(topology.bridge_addresses[0]).network
        out.append(
            f"node: {VXLAN_DEVICE} (vxlan id {VXLAN_ID}, local {topology.node_ip} dev eth0, dstport "
            f"{VXLAN_PORT}, nolearning) {local.network_address}/32, MAC {topology.vtep_mac}; route "
            f"{peer.pod_subnet} via {peer.vtep_address} dev {VXLAN_DEVICE} onlink; neighbour {peer.vtep_address} "
            f"lladdr {peer.vtep_mac} permanent; fdb {peer.vtep_mac} dst {peer.ip}"
        )
        out.append(
            f"{peer.name}: a second node; eth0 {peer.address} (veth to {peer.uplink_peer}, a port of inet's underlay "
            f"bridge with inet's eth0); default via {topology.inet_ip}; bridge cni0 {peer.bridge_address}; "
            f"{VXLAN_DEVICE} {peer.vtep_address}/32, MAC {peer.vtep_mac}; route {local} via "
            f"{local.network_address} dev {VXLAN_DEVICE} onlink; neighbour and fdb entries for the node's VTEP"
        )
        for pod in peer.pods:
            out.append(f"{pod.name} (on {peer.name}): eth0 {pod.address}, default via {pod.gateway}; peer "
                       f"{pod.host_veth} on {peer.name}'s cni0")
    out.append(
        "inet: servers on "
        + ", ".join(f"{a}/{ipaddress.ip_address(a).max_prefixlen} on lo" for a in topology.server_addresses)
        + (
            f"; routes {', '.join(topology.inet_routes)} back via the node, no other route to the pod "
            "networks and no default route"
            if topology.inet_routes
            else "; no route to the pod networks and no default route"
        )
    )
    return out


def _wrap(text: str, width: int = 110) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines
