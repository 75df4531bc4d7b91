"""The double-NAT lab: pods -> node MASQUERADE -> a NAT gateway's SNAT -> internet, with the gateway's flow logs.

What it builds (every link a veth made inside its namespaces, as natproof.lab.topology does for one node):

- two nodes, each a namespace with a ``cni0`` bridge for its pods and the background note's MASQUERADE rule on its
  ``eth0`` (node1 10.0.1.10 with pod1 and pod2, node2 10.0.1.11 with pod3): the EKS note's first NAT;
- a "NAT gateway" namespace: a bridge ``vpc0`` (10.0.1.1/24) joining the nodes' ``eth0`` as their subnet and default
  router, and ``eth1`` to the internet with ``SNAT --to-source`` its public address (203.0.113.20): the second NAT,
  shared by both nodes, so that it must rewrite a source port two nodes kept;
- ``inet`` with HTTP and UDP echo servers on documentation addresses (198.51.100.10, .11).

What it records: node1's pod side (cni0) and eth0 (inside.pcap, outside.pcap, its conntrack events and truth.json,
as every lab scenario), the gateway's private side (vpc0) and public side (eth1) with its own conntrack record and
truth (``gateway/``), and in ``flowlogs/`` the VPC Flow Log records AWS would write for the gateway's interface,
made from the gateway's two captures by natproof.testing.flowlogs (default format, a custom format, a CloudWatch
export and Parquet). ``natproof lab check OUT OUT/gateway`` checks both hops against their kernels.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from natproof.lab.capture import ConntrackRecorder, PacketCapture, foreign_addresses, snapshot_conntrack
from natproof.lab.topology import (
    MASQUERADE_RULE,
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

GATEWAY = "gw"
INET = "inet"
SERVER = "198.51.100.10"
SERVER2 = "198.51.100.11"
VPC_SUBNET = "10.0.1.0/24"
GATEWAY_PRIVATE = "10.0.1.1"
GATEWAY_PUBLIC = "203.0.113.20"
INET_ADDRESS = "203.0.113.1/24"
SETTLE_S = 0.5
FLOW_LOG_INTERVAL_S = 60
"""The flow log's maximum aggregation interval: 1 minute (the shorter of AWS's two choices)."""
FLOW_LOG_FORMAT_FILE = "cloudwatch-format.txt"


@dataclass(frozen=True)
class Node:
    """A node: a namespace with a cni0 bridge for its pods and eth0 on the gateway's subnet."""

    name: str
    address: str
    """eth0's address with prefix length, in VPC_SUBNET."""
    bridge: str
    """cni0's address with prefix length (the pods' default router)."""
    pods: tuple[Pod, ...]

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def gateway_port(self) -> str:
        """The peer of its eth0, on the gateway's vpc0 bridge."""
        return f"v{self.name}"


NODES = (
    Node("node1", "10.0.1.10/24", "10.244.0.1/24", (Pod("pod1", "10.244.0.10/24"), Pod("pod2", "10.244.0.11/24"))),
    Node("node2", "10.0.1.11/24", "10.244.1.1/24", (Pod("pod3", "10.244.1.10/24"),)),
)
ROLES = (GATEWAY, INET, *(n.name for n in NODES), *(p.name for n in NODES for p in n.pods))
SNAT_RULE = tuple(f"-t nat -A POSTROUTING -o eth1 -s {VPC_SUBNET} -j SNAT --to-source {GATEWAY_PUBLIC}".split())


def _http(dst: str, path: str, **kw: float | int) -> Action:
    return Action("http", dst, 80, path=path, **kw)  # type: ignore[arg-type]


CLIENTS = (
    ClientPlan("pod1", (
        _http(SERVER, "/bytes/1000", sport=40000, hold=0.6),
        _http(SERVER, "/bytes/3000", at=1.2),
        _http(SERVER, "/bytes/5000", at=1.5),
        Action("udp", SERVER, 7, sport=40001, at=2.1, timeout=1.0),
    )),
    ClientPlan("pod2", (_http(SERVER2, "/bytes/2000", at=0.4),)),
    ClientPlan("pod3", (
        _http(SERVER, "/bytes/4000", sport=40000, at=0.2, hold=0.3),
        Action("udp", SERVER, 7, sport=40001, at=2.0, timeout=1.0),
    )),
)
SERVERS = (Server(INET, "http", SERVER, 80), Server(INET, "http", SERVER2, 80), Server(INET, "udp-echo", SERVER, 7))

DESCRIPTION = ("two nodes' pods through node MASQUERADE and a shared NAT gateway's SNAT; the gateway's flow logs")
DESIGN = (
    "pod1 (node1) opens HTTP connections to 198.51.100.10:80 from source port 40000 (held 0.6 s before its request) "
    "and from kernel-chosen ports, each fetching a different size (/bytes/1000, 3000, 5000); pod3 (node2) opens one "
    "from source port 40000 too, 0.2 s later (/bytes/4000). Each node's MASQUERADE keeps port 40000 (it is free on "
    "each node), so both reach the gateway as NODE:40000 -> 198.51.100.10:80 and the gateway's SNAT to "
    f"{GATEWAY_PUBLIC} must rewrite the second. pod2 (node1) fetches /bytes/2000 from 198.51.100.11:80, a "
    "destination nobody else uses. At 2.0 s pod3, and 0.1 s later pod1, each send one datagram of the same size from "
    "port 40001 to the UDP echo server 198.51.100.10:7: the gateway rewrites one port again, and the two flows have "
    "the same packet and byte counts in the same aggregation interval, so the flow log cannot tell them apart (the "
    "join must say 'ambiguous: 2 candidates'); the TCP connections differ in size and each has a unique candidate. "
    "The 0.1 s keeps the two datagrams apart for the gateway's conntrack: sent in the same instant (both at 2.0 s) "
    "one of them was dropped in 1 of 7 runs here, as two new UDP entries racing to one SNAT tuple on two CPUs can be "
    "(the loser fails to insert and its packet is dropped)."
)


@dataclass
class DoubleNatLab(Lab):
    """The namespaces of one double-NAT run; ``with DoubleNatLab(...)`` tears down always (Lab's teardown)."""

    nodes: tuple[Node, ...] = NODES

    @property
    def roles(self) -> list[str]:
        return [GATEWAY, INET, *(n.name for n in self.nodes), *(p.name for n in self.nodes for p in n.pods)]

    def setup(self) -> None:
        for role in self.roles:
            self._add_netns(role)
        gw_ip = GATEWAY_PRIVATE
        self._ip(GATEWAY, "link", "add", "vpc0", "type", "bridge")
        self._ip(GATEWAY, "addr", "add", f"{GATEWAY_PRIVATE}/24", "dev", "vpc0")
        self._ip(GATEWAY, "link", "set", "vpc0", "up")
        for node in self.nodes:
            self._ip(node.name, "link", "add", "eth0", "type", "veth", "peer", "name", node.gateway_port, "netns",
                     self.netns(GATEWAY))
            self._ip(GATEWAY, "link", "set", node.gateway_port, "master", "vpc0")
            self._ip(GATEWAY, "link", "set", node.gateway_port, "up")
            self._ip(node.name, "addr", "add", node.address, "dev", "eth0")
            self._ip(node.name, "link", "set", "eth0", "up")
            self._ip(node.name, "route", "add", "default", "via", gw_ip)
            self._ip(node.name, "link", "add", "cni0", "type", "bridge")
            self._ip(node.name, "addr", "add", node.bridge, "dev", "cni0")
            self._ip(node.name, "link", "set", "cni0", "up")
            for pod in node.pods:
                self._ip(node.name, "link", "add", pod.host_veth, "type", "veth", "peer", "name", "eth0", "netns",
                         self.netns(pod.name))
                self._ip(node.name, "link", "set", pod.host_veth, "master", "cni0")
                self._ip(node.name, "link", "set", pod.host_veth, "up")
                self._ip(pod.name, "addr", "add", pod.address, "dev", "eth0")
                self._ip(pod.name, "link", "set", "eth0", "up")
                self._ip(pod.name, "route", "add", "default", "via", pod.gateway)
        self._ip(GATEWAY, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", self.netns(INET))
        self._ip(GATEWAY, "addr", "add", f"{GATEWAY_PUBLIC}/24", "dev", "eth1")
        self._ip(GATEWAY, "link", "set", "eth1", "up")
        self._ip(INET, "addr", "add", INET_ADDRESS, "dev", "eth0")
        self._ip(INET, "link", "set", "eth0", "up")
        for address in (SERVER, SERVER2):
            self._ip(INET, "addr", "add", f"{address}/32", "dev", "lo")
        self._ip(GATEWAY, "route", "add", "default", "via", str(ipaddress.ip_interface(INET_ADDRESS).ip))
        # inet has no route to the VPC subnet or the pod networks, as the internet: only the gateway's public
        # address (on its link) can be answered.
        forwarding = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                      "net.ipv4.conf.default.rp_filter": "0", "net.netfilter.nf_conntrack_acct": "1"}
        for node in self.nodes:
            self.write_sysctls(node.name, forwarding | {"net.bridge.bridge-nf-call-iptables": "1"})
            self.run(["iptables", "-w", "5", *MASQUERADE_RULE], role=node.name, record=True)
        self.write_sysctls(GATEWAY, forwarding)
        self.run(["iptables", "-w", "5", *SNAT_RULE], role=GATEWAY, record=True)
        self.write_sysctls(INET, {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"})


@dataclass(frozen=True)
class Run:
    """What one double-NAT run observed."""

    prefix: str
    attempts: list[Attempt]
    captures: dict[str, tuple[PacketCapture, object]]
    """Output name (inside.pcap, gateway/inside.pcap ...) -> (capture, its CaptureStats)."""
    conntrack: dict[str, list[str]]
    """Role -> conntrack.log lines (events of both listeners, then the closing listing)."""
    drops: list[str]
    setup_commands: list[str]
    state: dict[str, str]
    started: float
    finished: float
    pod_node: dict[str, str] = field(default_factory=dict)


def run_double_nat(outdir: Path, *, keep_going: bool = False) -> dict:
    """Run the scenario and write its files into ``outdir`` (see the module docstring); return node1's truth.

    As natproof.lab.run_scenario: files appear only once all are written, and a disagreement between the kernels'
    records and the design raises LabError (nothing written) unless ``keep_going``.
    """
    check_prerequisites()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".double-nat-partial-", dir=outdir))
    try:
        (stage / "gateway").mkdir()
        (stage / "flowlogs").mkdir()
        with signals_raise():
            run = _record(stage)
        node_truth, node_conns, node_notes = _truth(run, "node1", stage / "conntrack.log")
        gw_truth, gw_conns, gw_notes = _truth(run, GATEWAY, stage / "gateway" / "conntrack.log")
        flow_records = _flow_logs(stage)
        problems = _problems(run, node_conns, gw_conns, node_notes + gw_notes, flow_records)
        if problems and not keep_going:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise LabError(f"double-nat: {problems[0]}{more}")
        (stage / "truth.json").write_text(json.dumps(node_truth, indent=2) + "\n")
        (stage / "gateway" / "truth.json").write_text(json.dumps(gw_truth, indent=2) + "\n")
        (stage / "gateway" / "nat-gateway.txt").write_text(f"{GATEWAY_PRIVATE}={GATEWAY_PUBLIC}\n")
        (stage / "scenario.txt").write_text(_describe(run, node_conns, gw_conns, node_notes + gw_notes, problems,
                                                      flow_records))
        for name in ("inside.pcap", "outside.pcap", "conntrack.log", "truth.json", "scenario.txt"):
            os.replace(stage / name, outdir / name)
        for folder in ("gateway", "flowlogs"):
            if (outdir / folder).exists():
                shutil.rmtree(outdir / folder)
            os.replace(stage / folder, outdir / folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return node_truth


def _record(stage: Path) -> Run:
    started = time.time()
    pods = tuple(p for n in NODES for p in n.pods)
    with DoubleNatLab(TopologySpec(pods=pods), prefix=new_prefix()) as lab:
        start_servers(lab, SERVERS)
        recorders = {role: [ConntrackRecorder(lab, role, "NEW", stage / f"{role}-new.log"),
                            ConntrackRecorder(lab, role, "UPDATE,DESTROY", stage / f"{role}-update.log")]
                     for role in ("node1", GATEWAY)}
        for pair in recorders.values():
            for r in pair:
                r.start()
        captures = {
            "inside.pcap": PacketCapture(lab, "node1", "cni0", stage / "inside.pcap"),
            "outside.pcap": PacketCapture(lab, "node1", "eth0", stage / "outside.pcap"),
            "gateway/inside.pcap": PacketCapture(lab, GATEWAY, "vpc0", stage / "gateway" / "inside.pcap"),
            "gateway/outside.pcap": PacketCapture(lab, GATEWAY, "eth1", stage / "gateway" / "outside.pcap"),
        }
        for c in captures.values():
            c.start()
        attempts = run_clients(lab, CLIENTS)
        time.sleep(SETTLE_S)
        stats = {name: (c, c.stop()) for name, c in captures.items()}
        conntrack, drops = {}, []
        for role, pair in recorders.items():
            lines = [f"# natproof lab conntrack record: scenario double-nat, namespace {lab.netns(role)}, "
                     f"kernel {platform.release()}"]
            for r in pair:
                s = r.stop()
                events = [line for line in s.path.read_text().splitlines() if line.strip()]
                lines.append(f"# events: {s.command} ({len(events)} lines; netlink socket drops: {s.socket_drops})")
                lines.extend(events)
                s.path.unlink()
                if s.socket_drops:
                    drops.append(f"{role}: {s.command}: {s.socket_drops} events dropped by the netlink socket")
            command, listing = snapshot_conntrack(lab, role)
            lines.append(f"# listing after the traffic: {command} ({len(listing)} entries)")
            lines.extend(listing)
            conntrack[role] = lines
        state = {f"{role}: iptables-save -c": lab.run(["iptables-save", "-c"], role=role).stdout
                 for role in ("node1", "node2", GATEWAY)}
        for role in (GATEWAY, "node1", "node2", INET):
            state[f"{role}: ip -br addr; ip route"] = (lab.run(["ip", "-br", "addr"], role=role).stdout
                                                      + lab.run(["ip", "route"], role=role).stdout)
        state["gw: conntrack -S"] = lab.run(["conntrack", "-S"], role=GATEWAY).stdout
    return Run(prefix=lab.prefix, attempts=attempts, captures=stats, conntrack=conntrack, drops=drops,
               setup_commands=list(lab.commands), state=state, started=started, finished=time.time(),
               pod_node={p.name: n.name for n in NODES for p in n.pods})


def _truth(run: Run, role: str, path: Path) -> tuple[dict, list[Connection], list[str]]:
    """Write ``role``'s conntrack.log and judge its entries: node1's against its pods' attempts, the gateway's
    with the nodes as its clients (natproof.truth/1 either way)."""
    path.write_text("\n".join(run.conntrack[role]) + "\n")
    entries = parse_lines(run.conntrack[role])
    events = [e for e in entries if e.event is not None]
    listing = [e for e in entries if e.event is None]
    if role == GATEWAY:
        rules = TruthRules(pod_addresses=frozenset(n.ip for n in NODES), internal_networks=(VPC_SUBNET,))
        attempts: list[Attempt] = []
        cidr = VPC_SUBNET
    else:
        node = next(n for n in NODES if n.name == role)
        rules = TruthRules(pod_addresses=frozenset(p.ip for p in node.pods), internal_networks=(POD_CIDR,))
        attempts = [a for a in run.attempts if run.pod_node[a.pod] == role]
        cidr = POD_CIDR
    connections, notes = build_connections(events, listing, attempts, rules)
    truth = {
        "schema": SCHEMA, "scenario": "double-nat" if role != GATEWAY else "double-nat/gateway", "source": "kernel",
        "pod_cidr": cidr, "clock_offset_s": 0.0, "kernel": platform.release(),
        "created": dt.datetime.fromtimestamp(run.started, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "connections": [c.to_dict() for c in connections],
    }
    return truth, connections, notes


def _flow_logs(stage: Path) -> int:
    """The gateway interface's flow log records, from its two captures, in each delivery form; returns how many."""
    from natproof.testing.flowlogs import CUSTOM_FORMAT, records_from_captures, write_parquet, write_text

    records = records_from_captures(stage / "gateway" / "inside.pcap", stage / "gateway" / "outside.pcap",
                                    gateway_private=GATEWAY_PRIVATE, gateway_public=GATEWAY_PUBLIC, vpc=VPC_SUBNET,
                                    interval_s=FLOW_LOG_INTERVAL_S)
    out = stage / "flowlogs"
    write_text(records, out / "default.log.gz", compress=True)
    write_text(records, out / "custom.log", CUSTOM_FORMAT)
    write_text(records, out / "cloudwatch.log", CUSTOM_FORMAT, header=False, cloudwatch_timestamps=True)
    (out / FLOW_LOG_FORMAT_FILE).write_text(" ".join(f"${{{f}}}" for f in CUSTOM_FORMAT) + "\n")
    write_parquet(records, out / "custom.parquet", CUSTOM_FORMAT)
    return records.height


def _problems(run: Run, node_conns: list[Connection], gw_conns: list[Connection], notes: list[str],
              flow_records: int) -> list[str]:
    """Where the kernels' records, the pods' view and the design disagree, or a record is incomplete."""
    problems = [n for n in notes if not n.startswith("left out")] + list(run.drops)
    node1 = {(c.proto, c.inside.src, c.inside.sport, c.inside.dst, c.inside.dport): c for c in node_conns}
    for a in run.attempts:
        what = f"{a.pod} {a.proto} {a.src}:{a.sport} -> {a.dst}:{a.dport}"
        if a.outcome != "ok":
            problems.append(f"{what}: the client saw '{a.outcome}' ({a.detail})")
        if run.pod_node[a.pod] == "node1":
            c = node1.get(a.key)
            if c is None:
                problems.append(f"{what}: not in node1's conntrack truth")
            elif c.verdict != "translated":
                problems.append(f"{what}: node1 verdict {c.verdict}")
    at_gateway = {(c.proto, c.inside.src, c.inside.sport, c.inside.dst, c.inside.dport) for c in gw_conns}
    for c in node_conns:
        if c.outside is not None and (c.proto, c.outside.src, c.outside.sport, c.outside.dst,
                                      c.outside.dport) not in at_gateway:
            problems.append(f"{c.proto} {c.outside}: left node1 but is not in the gateway's conntrack record")
    if len(gw_conns) != len(run.attempts):
        problems.append(f"the gateway tracked {len(gw_conns)} connections for {len(run.attempts)} attempts")
    if not any(c.outside and c.outside.sport != c.inside.sport for c in gw_conns if c.proto == "tcp"):
        problems.append("the gateway kept every TCP source port: the design's port clash did not happen")
    if not any(c.outside and c.outside.sport != c.inside.sport for c in gw_conns if c.proto == "udp"):
        problems.append("the gateway kept every UDP source port: the design's port clash did not happen")
    vpc = ipaddress.ip_network(VPC_SUBNET)
    for name, (cap, stats) in run.captures.items():
        if stats.dropped_by_kernel:  # type: ignore[attr-defined]
            problems.append(f"{name}: {stats.dropped_by_kernel} packets dropped by kernel")  # type: ignore[attr-defined]
        if not stats.captured:  # type: ignore[attr-defined]
            problems.append(f"{name}: no packet captured on {cap.interface}")
        for address, count in sorted(foreign_addresses(cap.path).items()):
            if ipaddress.ip_address(address) not in vpc:
                problems.append(f"{name}: {count} packets to or from {address}, outside the lab's ranges")
    if not flow_records:
        problems.append("no flow log record made from the gateway's captures")
    return problems


def _describe(run: Run, node_conns: list[Connection], gw_conns: list[Connection], notes: list[str],
              problems: list[str], flow_records: int) -> str:
    """scenario.txt: what was run, where it was captured and recorded, how the truth and the flow logs were made."""
    from natproof.lab.scenarios import _wrap
    from natproof.testing.flowlogs import CUSTOM_FORMAT, INTERFACE_ID

    t0 = min((a.t_start for a in run.attempts), default=run.started)
    created = dt.datetime.fromtimestamp(run.started, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    out = [
        "natproof lab scenario: double-nat", DESCRIPTION, "",
        f"created: {created}   kernel: {platform.release()}   run took {run.finished - run.started:.1f} s",
        f"namespaces: {', '.join(f'{run.prefix}-{r}' for r in ROLES)} (deleted at the end of the run)", "",
        "== What was run ==", *_wrap(DESIGN), "",
        "servers:", *(f"  {s.describe()} (python3 -c, stdlib only)" for s in SERVERS),
        "client attempts, as each pod saw them (t relative to the first attempt):",
    ]
    for a in run.attempts:
        out.append(f"  t={a.t_start - t0:6.3f}s {a.pod} ({run.pod_node[a.pod]}) {a.proto} {a.src}:{a.sport} -> "
                   f"{a.dst}:{a.dport}: {a.outcome} ({a.detail})")
    out += ["", "== Topology =="]
    for n in NODES:
        out.append(f"{n.name}: eth0 {n.address} (port {n.gateway_port} of the gateway's vpc0), default via "
                   f"{GATEWAY_PRIVATE}; cni0 {n.bridge}; pods "
                   + ", ".join(f"{p.name} {p.address}" for p in n.pods) + "; " + " ".join(MASQUERADE_RULE))
    out.append(f"gw (the NAT gateway): vpc0 {GATEWAY_PRIVATE}/24 (bridge of the nodes' subnet {VPC_SUBNET}), eth1 "
               f"{GATEWAY_PUBLIC}/24 to inet, default via {INET_ADDRESS.split('/')[0]}; " + " ".join(SNAT_RULE))
    out.append(f"inet: eth0 {INET_ADDRESS}; servers on {SERVER}/32 and {SERVER2}/32 (lo); no route to the VPC "
               "subnet or the pod networks")
    out += ["", "setup commands, in order:", *(f"  {c}" for c in run.setup_commands)]
    for title, text in run.state.items():
        out += ["", f"{title}:", *(f"  {line}" for line in text.rstrip().splitlines())]
    out += ["", "== Captures =="]
    for name, (cap, stats) in run.captures.items():
        out.append(f"{name}: tcpdump on {cap.interface} in {cap.role}: {stats.captured} packets, "  # type: ignore[attr-defined]
                   f"{stats.dropped_by_kernel} dropped by kernel, {stats.size_bytes} bytes")  # type: ignore[attr-defined]
    out += ["", "== Kernel truth =="]
    out += _wrap(
        "truth.json is node1's hop, judged as every lab scenario's (conntrack events of node1, original tuple = "
        "the pod's, translated = the reply tuple reversed) against pod1's and pod2's attempts. gateway/truth.json "
        "is the gateway's hop from the gateway's own conntrack record, with the nodes' addresses as its clients "
        f"(pod_cidr {VPC_SUBNET}): inside = what a node sent, outside = what left {GATEWAY_PUBLIC}. Every "
        "connection node1 sent out must be in the gateway's record."
    )
    out += [f"note: {n}" for n in notes]
    for title, conns in (("node1", node_conns), ("gateway", gw_conns)):
        counts = Counter(c.verdict for c in conns)
        out.append(f"{title}: {len(conns)} connections (" + ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
                   + ")")
        for i, c in enumerate(conns, 1):
            out.append(f"  {i:3d} {c.proto} {c.inside} => {c.outside}  {c.verdict}")
    out += ["", "== Flow logs (flowlogs/) =="]
    out += _wrap(
        f"{flow_records} records of the gateway's interface {INTERFACE_ID} (private address {GATEWAY_PRIVATE}, "
        f"public {GATEWAY_PUBLIC}: pass --nat-gateway {GATEWAY_PRIVATE}={GATEWAY_PUBLIC}), made by "
        "natproof.testing.flowlogs from gateway/inside.pcap (private side) and gateway/outside.pcap (public side) "
        f"with a {FLOW_LOG_INTERVAL_S} s aggregation interval and no delivery lag: default.log.gz (the default "
        "format, with the header line S3 writes, gzip), custom.log (custom format with header), cloudwatch.log "
        f"(the same custom format as CloudWatch Logs holds it, no header, each line led by an event timestamp; its "
        f"format is in {FLOW_LOG_FORMAT_FILE}), custom.parquet (S3's Parquet delivery). Custom format: "
        + " ".join(CUSTOM_FORMAT) + "."
    )
    out += ["", "== Checks =="]
    out += [f"PROBLEM: {p}" for p in problems] or ["all checks passed (design, both kernels and pods agree)"]
    return "\n".join(out) + "\n"
