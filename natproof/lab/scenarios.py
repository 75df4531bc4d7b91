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

import datetime as dt
import gzip
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

from natproof.lab.capture import (
    CaptureStats,
    ConntrackRecorder,
    PacketCapture,
    RecorderStats,
    count_syns,
    foreign_addresses,
    snapshot_conntrack,
)
from natproof.lab.topology import (
    INET,
    MASQUERADE_RULE,
    NODE,
    POD_CIDR,
    Lab,
    LabError,
    Pod,
    TopologySpec,
    check_prerequisites,
    new_prefix,
    signals_raise,
)
from natproof.lab.traffic import Action, Attempt, ClientPlan, Server, run_clients, start_servers
from natproof.lab.truth import SCHEMA, Connection, TruthRules, build_connections, parse_lines

SETTLE_S = 0.3
"""Wait after the last client before stopping the captures, for the last FIN/ACKs and late replies."""
FAILURE_TIMEOUT_S = 3.3
"""Client timeout where no answer comes. SYNs are retransmitted 1 s apart for the first four tries on
kernels with net.ipv4.tcp_syn_linear_timeouts (6.7+), at 1 s and 3 s before: 2-3 retransmissions in all."""
MAX_PCAP_BYTES = 500_000

SERVER = "198.51.100.10"
HTTP = Server(INET, "http", SERVER, 80)
OUTPUT_FILES = ("inside.pcap", "outside.pcap", "conntrack.log", "truth.json", "scenario.txt")


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

    def rules(self) -> TruthRules:
        pods = self.topology.pods
        blocked = [p.ip for p in pods if p.name in self.not_forwarded_pods or not self.topology.ip_forward]
        return TruthRules(
            pod_addresses=frozenset(p.ip for p in pods),
            internal_networks=(self.pod_cidr,),
            reply_dropped=self.reply_dropped,
            not_forwarded_sources=frozenset(blocked),
            port_exhausted=self.port_exhausted,
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
    """Run one scenario and write inside.pcap, outside.pcap, conntrack.log, truth.json and scenario.txt.

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
        outputs = list(OUTPUT_FILES)
        if scenario.gzip_pcaps:
            for pcap in ("inside.pcap", "outside.pcap"):
                with open(stage / pcap, "rb") as src, open(stage / f"{pcap}.gz", "wb") as raw, \
                        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst:
                    shutil.copyfileobj(src, dst)
                outputs[outputs.index(pcap)] = f"{pcap}.gz"
        for stale in ("inside.pcap", "outside.pcap", "inside.pcap.gz", "outside.pcap.gz"):
            if stale not in outputs:
                (outdir / stale).unlink(missing_ok=True)
        for filename in outputs:
            os.replace(stage / filename, outdir / filename)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return truth


def _record(scenario: Scenario, stage: Path) -> Recording:
    """Build the namespaces, run the traffic under captures and conntrack listeners, always tear down."""
    started = time.time()
    with Lab(scenario.topology, prefix=new_prefix()) as lab:
        start_servers(lab, scenario.servers)
        recorders = [
            ConntrackRecorder(lab, NODE, "NEW", stage / "conntrack-new.log"),
            ConntrackRecorder(lab, NODE, "UPDATE,DESTROY", stage / "conntrack-update.log"),
        ]
        for recorder in recorders:
            recorder.start()
        captures = [
            PacketCapture(lab, NODE, scenario.inside_interface, stage / "inside.pcap"),
            PacketCapture(lab, NODE, "eth0", stage / "outside.pcap"),
        ]
        for capture in captures:
            capture.start()
        attempts = run_clients(lab, scenario.clients)
        time.sleep(SETTLE_S)
        capture_stats = [capture.stop() for capture in captures]
        recorder_stats = [recorder.stop() for recorder in recorders]
        listing_command, listing = snapshot_conntrack(lab, NODE)
        node_state = _node_state(lab)
    return Recording(
        prefix=lab.prefix,
        attempts=attempts,
        captures=capture_stats,
        recorders=recorder_stats,
        listing_command=listing_command,
        listing=listing,
        node_state=node_state,
        setup_commands=list(lab.commands),
        started=started,
        finished=time.time(),
    )


NODE_SYSCTLS = (
    "net.ipv4.ip_forward",
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
    links = ["eth0", "cni0", *(pod.host_veth for pod in lab.spec.pods)]
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


def _problems(
    scenario: Scenario, rec: Recording, connections: list[Connection], notes: list[str]
) -> list[str]:
    """Where the kernel's truth, the pods' view and the design disagree, or a record is incomplete."""
    problems = [note for note in notes if not note.startswith("left out")]
    by_inside = {
        (c.proto, c.inside.src, c.inside.sport, c.inside.dst, c.inside.dport): c for c in connections
    }
    for attempt in rec.attempts:
        conn = by_inside.get(attempt.key)
        what = f"{attempt.proto} {attempt.src}:{attempt.sport} -> {attempt.dst}:{attempt.dport}"
        if conn is None:
            problems.append(f"{what}: attempted but not in the truth")
            continue
        # "a|b": the design allows either verdict (which one the kernel gives is a race it decides).
        if conn.verdict not in attempt.expect.split("|"):
            problems.append(f"{what}: verdict {conn.verdict}, the design expects {attempt.expect}")
        answered = attempt.outcome == "ok"
        if answered != (conn.verdict in ("translated", "internal")):
            problems.append(f"{what}: the pod saw '{attempt.outcome}' ({attempt.detail}) for {conn.verdict}")
    attempted = {a.key for a in rec.attempts}
    for key, conn in by_inside.items():
        if key not in attempted:
            problems.append(f"{conn.proto} {conn.inside}: in conntrack but no client attempted it")
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
    roles = (NODE, INET, *(pod.name for pod in scenario.topology.pods))
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
    out.append(
        "node: bridge cni0 "
        + ", ".join(scenario.topology.bridge_addresses)
        + f"; eth0 {scenario.topology.node_address} (veth to inet's eth0 "
        f"{scenario.topology.inet_address}); default via {scenario.topology.inet_ip}"
    )
    for pod in scenario.topology.pods:
        out.append(f"{pod.name}: eth0 {pod.address}, default via {pod.gateway}; peer {pod.host_veth} on cni0")
    out.append(
        "inet: servers on "
        + ", ".join(f"{a}/32 on lo" for a in scenario.topology.server_addresses)
        + "; no route to the pod networks and no default route"
    )
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
    out += _wrap(
        "No capture filter: ARP, IPv6 (router solicitations, MLD, DAD) and IGMP noise is kept as it was. "
        "Both captures were started (each printed 'listening on') before the first client and stopped with "
        f"SIGINT {SETTLE_S:g} s after the last one. Offloads are the kernel's defaults (see offloads above): "
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
        "`conntrack -L -o extended` after the traffic. nf_conntrack_acct=1 adds packets=/bytes= per "
        "direction. Only IPv4 entries whose original source is a pod address are kept. inside = the original "
        "tuple; outside src/sport = the reply tuple's dst/dport, outside dst/dport = the original dst/dport "
        "(ICMP: the echo id stands for sport, dport is 0). Connections are listed by the timestamp of their "
        "NEW event (the time the NEW listener read it; a listener reads events in the kernel's order). "
        "Verdicts: translated when the kernel saw a reply (no [UNREPLIED]); no_reply when the entry stayed "
        "[UNREPLIED] and the design has the far end silent; "
        "untranslated when the reply tuple points back at the pod address; internal when the destination is "
        "in pod_cidr (outside null); not_forwarded and reply_dropped as the design above says. Every verdict "
        "is checked against what the pod's client saw and what the design expects."
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
        if c.notes:
            out.append(f"      notes: {c.notes}")
    out += ["", "== Checks =="]
    out += [f"PROBLEM: {p}" for p in problems] or ["all checks passed (design, kernel and pods agree)"]
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int = 110) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines
