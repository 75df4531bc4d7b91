"""Network namespaces, veths, the cni0 bridge, addresses, routes and iptables rules of one lab run."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from natproof.errors import NatproofError


class LabError(NatproofError):
    """The lab could not run: a missing tool or privilege, or a namespace step that failed. One line."""


# Debian package that ships each tool the lab runs; named in the LabError when a tool is missing.
REQUIRED_TOOLS: dict[str, str] = {
    "ip": "iproute2",
    "iptables": "iptables",
    "tcpdump": "tcpdump",
    "conntrack": "conntrack",
}

POD_CIDR = "10.244.0.0/16"
MASQUERADE_RULE = tuple(f"-t nat -A POSTROUTING -s {POD_CIDR} ! -d {POD_CIDR} -j MASQUERADE".split())
"""The background note's rule: SNAT to eth0's address for pod traffic that leaves the pod network."""

NODE = "node"
INET = "inet"
COMMAND_TIMEOUT_S = 15.0
RECORDER_NICE = -10
"""Nice value of the lab's recorders (Lab.spawn): -10 weighs about ten times a nice-0 process in the kernel's
fair scheduler."""

VXLAN_DEVICE = "flannel.1"
"""flannel's VXLAN device: VNI 1 (flannel's default VNI), named flannel.<VNI>."""
VXLAN_ID = 1
VXLAN_PORT = 8472
"""flannel's VXLAN UDP port (the Linux kernel's historical default; IANA's is 4789)."""
UNDERLAY_BRIDGE = "br0"
"""The bridge in inet that joins the nodes' uplinks into one network (a cloud subnet with its router)."""


def check_prerequisites() -> None:
    """Raise LabError naming the first missing privilege or tool, and how to install it."""
    if sys.platform != "linux":
        raise LabError("lab needs Linux network namespaces")
    if os.geteuid() != 0:
        raise LabError("lab needs root (network namespaces, iptables and tcpdump)")
    for tool, package in REQUIRED_TOOLS.items():
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: apt-get install {package}")


def new_prefix() -> str:
    """A namespace-name prefix unique to this run: the pid in hex plus random bits."""
    return f"np{os.getpid():x}{secrets.token_hex(2)}"


def leftover_namespaces(prefix: str) -> list[str]:
    """Names of the network namespaces that still carry ``prefix`` (empty after a clean teardown)."""
    if not prefix:
        raise ValueError("prefix must not be empty")
    try:
        out = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"ip netns list failed: {exc}") from exc
    # Each line is "NAME" or "NAME (id: N)".
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(name for name in names if name.startswith(prefix))


@dataclass(frozen=True)
class Pod:
    """One pod: a namespace whose eth0 is one end of a veth, the other end (``veth<name>``) on cni0."""

    name: str
    """Short role name, e.g. ``pod1``; the host-side veth is ``veth<name>``."""
    address: str
    """Interface address with prefix length, e.g. ``10.244.0.10/24`` (or an IPv6 one: the pod is then
    IPv6-only, with its default route via the first host of its /64)."""
    extra_addresses: tuple[str, ...] = ()
    """More addresses on the pod's eth0 (a link-local 169.254.x/16 or fe80::/64 one): no route uses them."""

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def gateway(self) -> str:
        """The bridge address of the pod's subnet (the first host), as a CNI bridge plugin sets it."""
        return str(next(ipaddress.ip_interface(self.address).network.hosts()))

    @property
    def host_veth(self) -> str:
        return f"veth{self.name}"


@dataclass(frozen=True)
class PeerNode:
    """A second node on the captured node's uplink network, joined to it by a flannel-style VXLAN overlay.

    It has its own namespace, its own cni0 bridge with ``pods`` on ``pod_subnet``, an eth0 on the same underlay
    bridge as the captured node's eth0, and ``flannel.1``. Each node routes the other's pod subnet via its
    flannel.1 (onlink, with the permanent neighbour and ``bridge fdb`` entries flanneld writes), so pod-to-pod
    traffic between them crosses both eth0s inside VXLAN (UDP VXLAN_PORT)."""

    name: str = "node2"
    address: str = "203.0.113.3/24"
    """Its eth0 address, on the captured node's uplink network."""
    pod_subnet: str = "10.244.1.0/24"
    """Its pods' subnet (flannel's lease): the bridge gets the first host, flannel.1 the network address /32."""
    pods: tuple[Pod, ...] = (Pod("pod2", "10.244.1.10/24"),)
    iptables_rules: tuple[tuple[str, ...], ...] = ()
    """Arguments of each ``iptables`` call in its namespace."""
    vtep_mac: str = "0e:6e:70:00:00:02"
    """Its flannel.1 MAC (flanneld publishes it in the node annotation flannel.alpha.coreos.com/backend-data; fixed
    here so that every recording has the same)."""

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def bridge_address(self) -> str:
        net = ipaddress.ip_network(self.pod_subnet)
        return f"{next(net.hosts())}/{net.prefixlen}"

    @property
    def vtep_address(self) -> str:
        """flannel.1's address: the network address of its subnet, /32."""
        return str(ipaddress.ip_network(self.pod_subnet).network_address)

    @property
    def uplink_peer(self) -> str:
        """Name of its eth0's other end, a port of the underlay bridge in inet."""
        return f"v{self.name}"[:15]


@dataclass(frozen=True)
class TopologySpec:
    """The namespaces and node configuration of one scenario; defaults are the background note's node."""

    pods: tuple[Pod, ...] = (Pod("pod1", "10.244.0.10/24"),)
    bridge_addresses: tuple[str, ...] = ("10.244.0.1/24",)
    node_address: str = "203.0.113.2/24"
    inet_address: str = "203.0.113.1/24"
    server_addresses: tuple[str, ...] = ("198.51.100.10",)
    ip_forward: bool = True
    forward_policy: str = "ACCEPT"
    iptables_rules: tuple[tuple[str, ...], ...] = (MASQUERADE_RULE,)
    """Arguments of each ``iptables`` call in the node namespace, applied in order."""
    hairpin_pods: tuple[str, ...] = ()
    """Pods whose bridge port has hairpin mode on (a frame may leave by the port it came in on)."""
    node_sysctls: tuple[tuple[str, str], ...] = ()
    """Extra sysctls of the node namespace, written after the defaults (e.g. conntrack timeouts)."""
    reply_link: tuple[str, str] | None = None
    """(node address, inet address) of a second link, eth1, between node and inet; when set, inet sends
    everything for the node's eth0 address over it (a /32 route), so replies bypass eth0."""
    inet_routes: tuple[str, ...] = ()
    """Networks inet routes back via the node's eth0 address (a routed pod network: no NAT needed)."""
    ip6tables_rules: tuple[tuple[str, ...], ...] = ()
    """Arguments of each ``ip6tables`` call in the node namespace, applied after the iptables ones."""
    peer_node: PeerNode | None = None
    """A second node joined by a VXLAN overlay (flannel's vxlan backend); None: a single node. When set, inet's
    eth0 becomes a port of an underlay bridge (UNDERLAY_BRIDGE, holding inet's address) that the peer's eth0 joins
    too, and the node gets ``flannel.1`` with a route to the peer's pod subnet."""
    vtep_mac: str = "0e:6e:70:00:00:01"
    """The node's flannel.1 MAC, with a peer node."""
    pod_mtu: int | None = None
    """MTU of the pods' veths (both ends) and the bridges, on every node; None: the kernel's 1500. flannel writes
    the uplink's MTU less the VXLAN overhead (1450) into the CNI configuration."""

    @property
    def inet_ip(self) -> str:
        return str(ipaddress.ip_interface(self.inet_address).ip)

    @property
    def node_ip(self) -> str:
        return str(ipaddress.ip_interface(self.node_address).ip)

    @property
    def roles(self) -> list[str]:
        """Every namespace role: node, inet, the node's pods, then the peer node and its pods."""
        peer = [self.peer_node.name, *(p.name for p in self.peer_node.pods)] if self.peer_node else []
        return [NODE, INET, *(pod.name for pod in self.pods), *peer]


@dataclass
class Lab:
    """The namespaces of one run and every process started in them; ``with Lab(...)`` tears down always."""

    spec: TopologySpec
    prefix: str = field(default_factory=new_prefix)
    created: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    """Every setup command as run, for scenario.txt."""

    def netns(self, role: str) -> str:
        """Namespace name of a role: ``node``, ``inet`` or a pod name."""
        return f"{self.prefix}-{role}"

    @property
    def roles(self) -> list[str]:
        return self.spec.roles

    # -- running commands -------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        role: str | None = None,
        timeout: float = COMMAND_TIMEOUT_S,
        check: bool = True,
        record: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (inside ``role``'s namespace when given) and return its output."""
        full = self._wrap(argv, role)
        if record:
            # Quoted where a word holds a space (an iptables --comment), so the line can be pasted into a shell.
            self.commands.append(" ".join(shlex.quote(a) if any(c.isspace() for c in a) else a for a in full))
        try:
            done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"timed out after {timeout:g} s: {' '.join(full)}") from exc
        except OSError as exc:
            raise LabError(f"cannot run {full[0]}: {exc}") from exc
        if check and done.returncode != 0:
            reason = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[0]
            raise LabError(f"{' '.join(full)}: {reason}")
        return done

    def spawn(self, argv: Sequence[str], *, role: str, recorder: bool = False,
              **popen_kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a long-running process in ``role``'s namespace; it is kept for teardown by its Popen.

        ``ip netns exec`` execs the command in place (it forks only in batch mode), so the Popen's pid is
        the pid of the tool itself and signals sent to it reach the tool, not a wrapper. ``recorder``: the
        process records what the kernel does (tcpdump, conntrack -E) and runs at RECORDER_NICE, ahead of
        whatever else keeps the machine's cores busy: a recorder that falls behind loses packets or events
        for good (many-connections' -i any dropped 1,938 frames beside a second pytest worker at nice 0).
        """
        # A new session keeps a terminal's Ctrl-C away from the children: run_scenario stops each of
        # them itself, in order, so that tcpdump can flush its file.
        proc = subprocess.Popen(self._wrap(argv, role), start_new_session=True, **popen_kwargs)
        self.processes.append(proc)
        if recorder:
            try:  # only root may raise a priority; the lab runs as root, a dry test may not
                os.setpriority(os.PRIO_PROCESS, proc.pid, RECORDER_NICE)
            except OSError:
                pass
        return proc

    def _wrap(self, argv: Sequence[str], role: str | None) -> list[str]:
        if role is None:
            return list(argv)
        if self.netns(role) not in self.created:
            raise LabError(f"namespace for {role} was not created")
        return ["ip", "netns", "exec", self.netns(role), *argv]

    def write_sysctls(self, role: str, values: dict[str, str]) -> None:
        """Write sysctls inside one namespace only (/proc/sys/net is per network namespace)."""
        script = (
            "import sys\n"
            "for item in sys.argv[1:]:\n"
            "    key, value = item.split('=', 1)\n"
            "    with open('/proc/sys/' + key.replace('.', '/'), 'w') as f:\n"
            "        f.write(value)\n"
        )
        self.run([sys.executable, "-c", script, *(f"{k}={v}" for k, v in values.items())], role=role)
        self.commands.append(f"[{role}] sysctl -w " + " ".join(f"{k}={v}" for k, v in values.items()))

    def read_sysctls(self, role: str, keys: Sequence[str]) -> dict[str, str]:
        script = (
            "import sys\n"
            "for key in sys.argv[1:]:\n"
            "    try:\n"
            "        value = open('/proc/sys/' + key.replace('.', '/')).read().strip()\n"
            "    except OSError as exc:\n"
            "        value = 'unavailable (' + exc.strerror + ')'\n"
            "    print(key + '=' + value)\n"
        )
        out = self.run([sys.executable, "-c", script, *keys], role=role).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def iptables(self, *args: str, tool: str = "iptables", role: str = NODE) -> None:
        # -w: the xtables lock file is shared by every namespace on the machine.
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: apt-get install iptables")
        self.run([tool, "-w", "5", *args], role=role, record=True)

    # -- setup and teardown ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        problems = self.teardown()
        if problems and exc_type is None:
            raise LabError(f"teardown of {self.prefix}: {problems[0]}")

    def _add_netns(self, role: str) -> None:
        name = self.netns(role)
        self.run(["ip", "netns", "add", name], record=True)
        self.created.append(name)
        self.run(["ip", "-n", name, "link", "set", "lo", "up"], record=True)

    def _ip(self, role: str, *args: str) -> None:
        self.run(["ip", "-n", self.netns(role), *args], record=True)

    def _addr(self, role: str, address: str, dev: str) -> None:
        """Add an address; IPv6 ones without duplicate address detection, which would keep them tentative (not
        bindable, not a source) for a second or more after the link comes up."""
        nodad = ("nodad",) if ipaddress.ip_interface(address).version == 6 else ()
        self._ip(role, "addr", "add", address, "dev", dev, *nodad)

    def setup(self) -> None:
        """Build the topology. Every link is created directly inside its namespaces, never in the root one."""
        spec = self.spec
        for role in self.roles:
            self._add_netns(role)
        inet = self.netns(INET)

        self._bridge(NODE, spec.bridge_addresses)

        # The node's uplink: eth0 in node <-> eth0 in inet, both ends created in place.
        self._ip(NODE, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", inet)
        self._addr(NODE, spec.node_address, "eth0")
        self._ip(NODE, "link", "set", "eth0", "up")
        if spec.peer_node is not None:
            # With a second node, inet's end is a port of the underlay bridge, which holds inet's address: the two
            # nodes' uplinks share one network (a cloud subnet), inet is its router and the internet behind it.
            self._ip(INET, "link", "add", UNDERLAY_BRIDGE, "type", "bridge")
            self._ip(INET, "link", "set", "eth0", "master", UNDERLAY_BRIDGE)
            self._addr(INET, spec.inet_address, UNDERLAY_BRIDGE)
            self._ip(INET, "link", "set", UNDERLAY_BRIDGE, "up")
        else:
            self._addr(INET, spec.inet_address, "eth0")
        self._ip(INET, "link", "set", "eth0", "up")
        for address in spec.server_addresses:
            host = ipaddress.ip_address(address).max_prefixlen
            self._addr(INET, f"{address}/{host}", "lo")
        self._ip(NODE, "route", "add", "default", "via", spec.inet_ip)
        # inet gets no route to the pod ranges and no default route, like the real internet: a packet that
        # still carries a pod source address gets no answer. Only a routed design (inet_routes) routes some back.
        for network in spec.inet_routes:
            self._ip(INET, "route", "add", network, "via", str(ipaddress.ip_interface(spec.node_address).ip))

        for pod in spec.pods:
            self._add_pod(NODE, pod)
            if pod.name in spec.hairpin_pods:
                self._ip(NODE, "link", "set", "dev", pod.host_veth, "type", "bridge_slave", "hairpin", "on")
        if spec.peer_node is not None:
            self._add_peer(spec.peer_node)

        if spec.reply_link is not None:
            node_side, inet_side = spec.reply_link
            self._ip(NODE, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", inet)
            self._ip(NODE, "addr", "add", node_side, "dev", "eth1")
            self._ip(NODE, "link", "set", "eth1", "up")
            self._ip(INET, "addr", "add", inet_side, "dev", "eth1")
            self._ip(INET, "link", "set", "eth1", "up")
            node_ip = str(ipaddress.ip_interface(node_side).ip)
            eth0_ip = str(ipaddress.ip_interface(spec.node_address).ip)
            self._ip(INET, "route", "add", f"{eth0_ip}/32", "via", node_ip, "dev", "eth1")

        # New namespaces inherit the host's IPv4 conf/all and conf/default values (devconf_inherit_init_net
        # = 0), so every value that changes what the captures show is written explicitly here.
        self.write_sysctls(
            NODE,
            {
                "net.ipv4.ip_forward": "1" if spec.ip_forward else "0",
                "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.default.rp_filter": "0",
                # packets=/bytes= per direction in every conntrack line: the kernel's count of replies.
                "net.netfilter.nf_conntrack_acct": "1",
                # As on a Kubernetes node: bridged frames traverse iptables, so pod-to-pod flows get
                # conntrack entries too.
                "net.bridge.bridge-nf-call-iptables": "1",
            },
        )
        if spec.ip6tables_rules or any(ipaddress.ip_interface(p.address).version == 6 for p in spec.pods):
            self.write_sysctls(NODE, {"net.ipv6.conf.all.forwarding": "1" if spec.ip_forward else "0"})
            self.write_sysctls(INET, {"net.ipv6.conf.all.forwarding": "1"})
        self.write_sysctls(
            INET,
            {
                "net.ipv4.ip_forward": "1",
                # Accept a leaked pod source (no route back): it is lost on the reply path, as on the
                # internet.
                "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.default.rp_filter": "0",
                "net.ipv4.conf.eth0.rp_filter": "0",
            },
        )

        if spec.reply_link is not None:
            # Packets for eth0's address arrive on eth1: no reverse-path filter may drop them.
            self.write_sysctls(NODE, {"net.ipv4.conf.eth1.rp_filter": "0"})
            self.write_sysctls(INET, {"net.ipv4.conf.eth1.rp_filter": "0"})
        if spec.node_sysctls:
            self.write_sysctls(NODE, dict(spec.node_sysctls))

        if spec.peer_node is not None:
            self.write_sysctls(INET, {f"net.ipv4.conf.{UNDERLAY_BRIDGE}.rp_filter": "0"})
            peer = spec.peer_node.name
            self.write_sysctls(peer, {
                "net.ipv4.ip_forward": "1",
                "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.default.rp_filter": "0",
                "net.bridge.bridge-nf-call-iptables": "1",
            })
            for rule in spec.peer_node.iptables_rules:
                self.iptables(*rule, role=peer)

        if spec.forward_policy != "ACCEPT":
            self.iptables("-P", "FORWARD", spec.forward_policy)
        for rule in spec.iptables_rules:
            self.iptables(*rule)
        for rule in spec.ip6tables_rules:
            self.iptables(*rule, tool="ip6tables")

    def _bridge(self, role: str, addresses: Sequence[str]) -> None:
        """A node's pod bridge, cni0, with its addresses (the first host of each pod subnet)."""
        self._ip(role, "link", "add", "cni0", "type", "bridge")
        if self.spec.pod_mtu is not None:
            self._ip(role, "link", "set", "cni0", "mtu", str(self.spec.pod_mtu))
        for address in addresses:
            self._addr(role, address, "cni0")
        self._ip(role, "link", "set", "cni0", "up")

    def _add_pod(self, node: str, pod: Pod) -> None:
        """A pod's namespace joined to ``node``'s cni0 by a veth (``veth<name>`` on the node, eth0 in the pod)."""
        peer = f"peer name eth0 netns {self.netns(pod.name)}"
        self._ip(node, "link", "add", pod.host_veth, "type", "veth", *peer.split())
        if self.spec.pod_mtu is not None:
            self._ip(node, "link", "set", pod.host_veth, "mtu", str(self.spec.pod_mtu))
            self._ip(pod.name, "link", "set", "eth0", "mtu", str(self.spec.pod_mtu))
        self._ip(node, "link", "set", pod.host_veth, "master", "cni0")
        self._ip(node, "link", "set", pod.host_veth, "up")
        for address in (pod.address, *pod.extra_addresses):
            self._addr(pod.name, address, "eth0")
        self._ip(pod.name, "link", "set", "eth0", "up")
        self._ip(pod.name, "route", "add", "default", "via", pod.gateway)

    def _add_peer(self, peer: PeerNode) -> None:
        """The second node: its uplink on the underlay bridge, its cni0 and pods, and flannel.1 on both nodes."""
        spec = self.spec
        self._ip(peer.name, "link", "add", "eth0", "type", "veth", "peer", "name", peer.uplink_peer,
                 "netns", self.netns(INET))
        self._addr(peer.name, peer.address, "eth0")
        self._ip(peer.name, "link", "set", "eth0", "up")
        self._ip(INET, "link", "set", peer.uplink_peer, "master", UNDERLAY_BRIDGE)
        self._ip(INET, "link", "set", peer.uplink_peer, "up")
        self._ip(peer.name, "route", "add", "default", "via", spec.inet_ip)
        self._bridge(peer.name, (peer.bridge_address,))
        for pod in peer.pods:
            self._add_pod(peer.name, pod)
        local = PeerNode(NODE, spec.node_address, str(ipaddress.ip_interface(spec.bridge_addresses[0]).network),
                         (), vtep_mac=spec.vtep_mac)
        self._vxlan(local, peer)
        self._vxlan(peer, local)

    def _vxlan(self, node: PeerNode, remote: PeerNode) -> None:
        """flannel.1 on ``node`` as flanneld's vxlan backend makes it, and what flanneld writes for ``remote``'s
        lease: a permanent neighbour entry for the remote VTEP address, a ``bridge fdb`` entry sending its MAC to the
        remote node's address, and the route of its pod subnet via that VTEP address, onlink."""
        role = node.name
        self._ip(role, "link", "add", VXLAN_DEVICE, "type", "vxlan", "id", str(VXLAN_ID), "local", node.ip,
                 "dev", "eth0", "dstport", str(VXLAN_PORT), "nolearning")
        self._ip(role, "link", "set", VXLAN_DEVICE, "address", node.vtep_mac)
        self._addr(role, f"{node.vtep_address}/32", VXLAN_DEVICE)
        self._ip(role, "link", "set", VXLAN_DEVICE, "up")
        self._ip(role, "neigh", "replace", remote.vtep_address, "lladdr", remote.vtep_mac, "dev", VXLAN_DEVICE,
                 "nud", "permanent")
        self.run(["bridge", "-n", self.netns(role), "fdb", "replace", remote.vtep_mac, "dev", VXLAN_DEVICE,
                  "dst", remote.ip, "self", "permanent"], record=True)
        self._ip(role, "route", "add", remote.pod_subnet, "via", remote.vtep_address, "dev", VXLAN_DEVICE, "onlink")

    def stop(
        self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 3.0
    ) -> int | None:
        """Signal one process we started, by its pid, and wait for it; SIGKILL it if it lingers."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
        return proc.returncode

    def teardown(self) -> list[str]:
        """Stop every process we started, then delete every namespace we created; returns what failed."""
        problems: list[str] = []
        with _signals_deferred():
            for proc in reversed(self.processes):
                if self.stop(proc) is None:
                    problems.append(f"pid {proc.pid} did not exit")
                for stream in (proc.stdout, proc.stderr, proc.stdin):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
            for name in reversed(self.created):
                # A namespace whose last process has exited disappears with its name; its veths go with
                # it and take their peers in the other namespaces along.
                done = subprocess.run(
                    ["ip", "netns", "del", name], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
                )
                if done.returncode != 0 and name in leftover_namespaces(name):
                    problems.append(f"ip netns del {name}: {done.stderr.strip()}")
            self.created.clear()
        return problems


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM off while tearing down, so a second Ctrl-C cannot leave namespaces behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Blocked signals stay pending and are delivered when the old mask comes back, after the teardown.
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt for the duration, so ``finally`` blocks run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
