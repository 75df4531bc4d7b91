"""A node wired as the AWS VPC CNI wires one: pods with VPC addresses on routed veths, SNAT only out of the VPC.

What the plugin does on a node (aws/amazon-vpc-cni-k8s, cmd/routed-eni-cni-plugin/driver/driver.go and
pkg/networkutils/network.go), and what this module builds in the lab's namespaces:

- Each pod gets a secondary private address of one of the node's ENIs, from the VPC subnet itself (no pod /16, no
  bridge): its ``eth0`` holds it as a /32, with a link route to the dummy next hop 169.254.1.1, a default route via
  it, and a permanent neighbour entry for 169.254.1.1 at the MAC of the host side of its veth (``setupVeth``). The
  host side is named ``eni`` + the first 11 hex digits of SHA-1(``namespace.name``) (``GenerateHostVethName``); the
  node routes the pod's /32 over it (scope link) and looks it up in the main table (``ip rule`` ``512: to POD lookup
  main``).
- A pod on a secondary ENI (device number N) also gets ``1536: from POD lookup N+1``; that table routes via the
  subnet's router over the secondary ENI, whose connected route the plugin removes from the main table. Traffic
  that leaves the VPC is marked in conntrack (``AWS-CONNMARK-CHAIN-0``, mark 0x80) and ``1024: fwmark 0x80/0x80
  lookup main`` sends it out of the primary ENI, where ``AWS-SNAT-CHAIN-0`` rewrites it to the primary address: a
  pod on a secondary ENI is still SNATed to the primary ENI's address.
- The SNAT chain RETURNs for the VPC CIDR and each ``AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`` network; everything else
  (``! -o vlan+``, not to a local address) is ``SNAT --to-source PRIMARY --random-fully``
  (``AWS_VPC_K8S_CNI_RANDOMIZESNAT=prng``, the default).

The VPC itself is the ``inet`` namespace: its bridge ``vpc0`` is the subnet (holding the router's address, the
subnet's first host as in a VPC), the node's ENIs are ports of it, and it knows which ENI holds each pod address
from a permanent neighbour entry (the VPC's own mapping of secondary addresses to ENIs; no ARP is answered for
them). Its other subnets, networks reached over a VPN (the SNAT exclusions) and the internet are addresses on its
``lo``: it routes the VPC CIDR back to the node, as the VPC's route tables do.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from natproof.lab.topology import INET, NODE, Lab, LabError, Pod, TopologySpec

DUMMY_GATEWAY = "169.254.1.1"
"""The pods' next hop: never an address of any interface, resolved by a static neighbour entry."""
VETH_PREFIX = "eni"
"""AWS_VPC_K8S_CNI_VETHPREFIX's default."""
CONNMARK = "0x80"
"""AWS_VPC_K8S_CNI_CONNMARK's default: conntrack mark of connections that leave the VPC."""
TO_POD_PRIORITY, MAIN_ENI_PRIORITY, FROM_POD_PRIORITY = 512, 1024, 1536
"""The plugin's ``ip rule`` priorities: to a pod (main), marked traffic (main), from a secondary-ENI pod (its ENI's
table)."""
SUBNET_BRIDGE = "vpc0"


def host_veth_name(namespace: str, name: str, prefix: str = VETH_PREFIX) -> str:
    """The plugin's host-side veth name: prefix + the first 11 hex digits of SHA-1("namespace.name")."""
    return prefix + hashlib.sha1(f"{namespace}.{name}".encode()).hexdigest()[:11]


@dataclass(frozen=True)
class EniPod(Pod):
    """A pod wired by the VPC CNI: ``address`` is a /32 of the VPC subnet, secondary address of ENI ``eni``."""

    eni: int = 0
    """Device number of the ENI the address belongs to: 0 the primary (eth0), N the secondary ethN."""
    namespace: str = "default"

    @property
    def gateway(self) -> str:
        return DUMMY_GATEWAY

    @property
    def host_veth(self) -> str:
        return host_veth_name(self.namespace, self.name)


@dataclass(frozen=True)
class Eni:
    """One ENI of the node: its device (eth0 primary), address with the subnet's prefix length, and MAC."""

    device: str
    address: str
    mac: str
    """Fixed, AWS-style (02:...), so that the VPC's neighbour entries and every recording name the same one."""

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def number(self) -> int:
        return int(self.device.removeprefix("eth"))

    @property
    def table(self) -> int:
        """The route table of a secondary ENI: device number + 1 (the plugin's off-by-one, kept for compatibility)."""
        return self.number + 1

    @property
    def vpc_port(self) -> str:
        """Its peer: a port of the subnet bridge in the VPC namespace."""
        return f"vpc-{self.device}"


def snat_rules(vpc_cidrs: tuple[str, ...], exclusions: tuple[str, ...], primary: str, random: str = "prng",
               pod_prefix: str = VETH_PREFIX) -> tuple[tuple[str, ...], ...]:
    """The plugin's nat rules (buildIptablesSNATRules and buildIptablesConnmarkRules, in the RETURN form of its
    recent releases, as ``iptables-save`` prints them on EKS nodes): SNAT to ``primary`` for anything not in the VPC
    CIDRs or the exclusions, and the connmark that routes such traffic of secondary-ENI pods out of the primary
    ENI. ``random``: AWS_VPC_K8S_CNI_RANDOMIZESNAT (prng: --random-fully, hashrandom: --random, none)."""
    def comment(text: str) -> tuple[str, ...]:
        return ("-m", "comment", "--comment", text)

    flag = {"prng": ("--random-fully",), "hashrandom": ("--random",), "none": ()}[random]
    rules: list[tuple[str, ...]] = [
        ("-t", "nat", "-N", "AWS-SNAT-CHAIN-0"),
        ("-t", "nat", "-N", "AWS-CONNMARK-CHAIN-0"),
        ("-t", "nat", "-A", "PREROUTING", "-i", f"{pod_prefix}+", *comment("AWS, outbound connections"), "-j",
         "AWS-CONNMARK-CHAIN-0"),
        ("-t", "nat", "-A", "PREROUTING", *comment("AWS, CONNMARK"), "-j", "CONNMARK", "--restore-mark", "--nfmask",
         CONNMARK, "--ctmask", CONNMARK),
        ("-t", "nat", "-A", "POSTROUTING", *comment("AWS SNAT CHAIN"), "-j", "AWS-SNAT-CHAIN-0"),
    ]
    for cidr in vpc_cidrs:
        rules.append(("-t", "nat", "-A", "AWS-CONNMARK-CHAIN-0", "-d", cidr, *comment("AWS CONNMARK CHAIN, VPC CIDR"),
                      "-j", "RETURN"))
    for cidr in exclusions:
        rules.append(("-t", "nat", "-A", "AWS-CONNMARK-CHAIN-0", "-d", cidr,
                      *comment("AWS CONNMARK CHAIN, EXCLUDED CIDR"), "-j", "RETURN"))
    rules.append(("-t", "nat", "-A", "AWS-CONNMARK-CHAIN-0", *comment("AWS, CONNMARK"), "-j", "CONNMARK",
                  "--set-xmark", f"{CONNMARK}/{CONNMARK}"))
    for cidr in vpc_cidrs:
        rules.append(("-t", "nat", "-A", "AWS-SNAT-CHAIN-0", "-d", cidr, *comment("AWS SNAT CHAIN"), "-j", "RETURN"))
    for cidr in exclusions:
        rules.append(("-t", "nat", "-A", "AWS-SNAT-CHAIN-0", "-d", cidr, *comment("AWS SNAT CHAIN EXCLUSION"), "-j",
                      "RETURN"))
    rules.append(("-t", "nat", "-A", "AWS-SNAT-CHAIN-0", "!", "-o", "vlan+", *comment("AWS, SNAT"), "-m", "addrtype",
                  "!", "--dst-type", "LOCAL", "-j", "SNAT", "--to-source", primary, *flag))
    # Every later packet of a connection the chain above marked (its replies included) keeps the mark, so a
    # secondary-ENI pod's non-VPC traffic keeps leaving by the primary ENI.
    rules.append(("-t", "mangle", "-A", "PREROUTING", *comment("AWS, primary ENI"), "-i", f"{pod_prefix}+", "-j",
                  "CONNMARK", "--restore-mark", "--mask", CONNMARK))
    return tuple(rules)


@dataclass(frozen=True)
class VpcCniSpec(TopologySpec):
    """A VPC CNI node (see the module docstring). ``pods`` are EniPods; ``iptables_rules`` the plugin's
    (snat_rules); ``server_addresses`` every address on the VPC namespace's lo (other subnets, the internet)."""

    bridge_addresses: tuple[str, ...] = ()
    node_address: str = "10.0.1.10/24"
    """The primary ENI's address (eth0): what the SNAT rule rewrites to."""
    inet_address: str = "10.0.1.1/24"
    """The subnet's router (its first host, as in a VPC), on the VPC namespace's subnet bridge."""
    vpc_cidrs: tuple[str, ...] = ("10.0.0.0/16",)
    """The VPC's CIDR blocks: never SNATed."""
    exclude_snat_cidrs: tuple[str, ...] = ()
    """AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: never SNATed either (a network reached over a VPN, a peered VPC)."""
    enis: tuple[Eni, ...] = (Eni("eth0", "10.0.1.10/24", "02:00:0a:00:01:0a"),)
    """The node's ENIs, the primary first (its address is node_address); all in the router's subnet."""

    @property
    def primary(self) -> Eni:
        return self.enis[0]


class VpcCniLab(Lab):
    """A Lab whose node is wired by the VPC CNI (VpcCniSpec) instead of a cni0 bridge; same namespaces and teardown."""

    spec: VpcCniSpec

    def setup(self) -> None:
        spec = self.spec
        if not isinstance(spec, VpcCniSpec):
            raise LabError("VpcCniLab needs a VpcCniSpec")
        for role in self.roles:
            self._add_netns(role)
        if spec.primary.address != spec.node_address or spec.primary.number:
            raise LabError(f"the primary ENI must be eth0 with the node's address {spec.node_address}")
        inet = self.netns(INET)
        router = spec.inet_ip

        # The subnet: a bridge in the VPC namespace holding the router's address; each ENI is a veth whose peer is
        # a port of it.
        self._ip(INET, "link", "add", SUBNET_BRIDGE, "type", "bridge")
        self._addr(INET, spec.inet_address, SUBNET_BRIDGE)
        self._ip(INET, "link", "set", SUBNET_BRIDGE, "up")
        for eni in spec.enis:
            self._ip(NODE, "link", "add", eni.device, "address", eni.mac, "type", "veth", "peer", "name",
                     eni.vpc_port, "netns", inet)
            self._addr(NODE, eni.address, eni.device)
            self._ip(NODE, "link", "set", eni.device, "up")
            self._ip(INET, "link", "set", eni.vpc_port, "master", SUBNET_BRIDGE)
            self._ip(INET, "link", "set", eni.vpc_port, "up")
        for address in spec.server_addresses:
            self._addr(INET, f"{address}/{ipaddress.ip_address(address).max_prefixlen}", "lo")
        self._ip(NODE, "route", "add", "default", "via", router, "dev", spec.primary.device)
        for eni in spec.enis[1:]:
            # setupENINetwork: the secondary ENI's subnet leaves the main table; its own table routes via the router.
            subnet = str(ipaddress.ip_interface(eni.address).network)
            self._ip(NODE, "route", "del", subnet, "dev", eni.device)
            self._ip(NODE, "route", "add", f"{router}/32", "dev", eni.device, "scope", "link", "table", str(eni.table))
            self._ip(NODE, "route", "add", "default", "via", router, "dev", eni.device, "table", str(eni.table))
        self._ip(NODE, "rule", "add", "fwmark", f"{CONNMARK}/{CONNMARK}", "lookup", "main", "priority",
                 str(MAIN_ENI_PRIORITY))

        by_number = {eni.number: eni for eni in spec.enis}
        for pod in spec.pods:
            if not isinstance(pod, EniPod) or pod.eni not in by_number:
                raise LabError(f"{pod.name}: a VPC CNI pod needs the device number of one of the node's ENIs")
            veth = pod.host_veth
            self._ip(NODE, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns(pod.name))
            self._ip(NODE, "link", "set", veth, "up")
            mac = self._mac(NODE, veth)
            self._addr(pod.name, pod.address, "eth0")
            self._ip(pod.name, "link", "set", "eth0", "up")
            self._ip(pod.name, "route", "add", DUMMY_GATEWAY, "dev", "eth0", "scope", "link")
            self._ip(pod.name, "route", "add", "default", "via", DUMMY_GATEWAY, "dev", "eth0")
            self._ip(pod.name, "neigh", "add", DUMMY_GATEWAY, "lladdr", mac, "dev", "eth0", "nud", "permanent")
            self._ip(NODE, "route", "add", pod.ip, "dev", veth, "scope", "link")
            self._ip(NODE, "rule", "add", "to", pod.ip, "lookup", "main", "priority", str(TO_POD_PRIORITY))
            eni = by_number[pod.eni]
            if pod.eni:
                self._ip(NODE, "rule", "add", "from", pod.ip, "lookup", str(eni.table), "priority",
                         str(FROM_POD_PRIORITY))
            # The VPC delivers a secondary address to the ENI that holds it.
            self._ip(INET, "neigh", "add", pod.ip, "lladdr", eni.mac, "dev", SUBNET_BRIDGE, "nud", "permanent")

        self.write_sysctls(NODE, {
            "net.ipv4.ip_forward": "1" if spec.ip_forward else "0",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            # The plugin sets the primary ENI's reverse-path filter to loose (2).
            f"net.ipv4.conf.{spec.primary.device}.rp_filter": "2",
            "net.netfilter.nf_conntrack_acct": "1",
        })
        self.write_sysctls(INET, {
            "net.ipv4.ip_forward": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
        })
        if spec.node_sysctls:
            self.write_sysctls(NODE, dict(spec.node_sysctls))
        for rule in spec.iptables_rules:
            self.iptables(*rule)

    def _mac(self, role: str, device: str) -> str:
        text = self.run(["ip", "-n", self.netns(role), "-o", "link", "show", "dev", device]).stdout
        match = re.search(r"link/ether ([0-9a-f:]{17})", text)
        if match is None:
            raise LabError(f"{device} in {role} has no MAC address: {text.strip()}")
        return match.group(1)


def describe(spec: VpcCniSpec) -> list[str]:
    """scenario.txt's lines on a VPC CNI node's topology."""
    enis = "; ".join(f"{e.device} {e.address} ({e.mac}, {'primary' if not e.number else f'table {e.table}'})"
                     for e in spec.enis)
    out = [
        f"node (VPC CNI, no bridge): ENIs {enis}; default via {spec.inet_ip} dev "
        f"{spec.primary.device}; VPC CIDR {', '.join(spec.vpc_cidrs)}"
        + (f"; AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS {','.join(spec.exclude_snat_cidrs)}" if spec.exclude_snat_cidrs
           else ""),
    ]
    for pod in spec.pods:
        where = f"secondary address of eth{pod.eni}" if isinstance(pod, EniPod) else "?"
        out.append(f"{pod.name}: eth0 {pod.address} ({where}), default via {pod.gateway} (static neighbour); "
                   f"host side {pod.host_veth}, routed /32")
    out.append(
        f"inet (the VPC): subnet bridge {SUBNET_BRIDGE} {spec.inet_address} with the ENIs' peers as ports and a "
        "permanent neighbour entry per pod address (its ENI's MAC); "
        + ", ".join(f"{a}/{ipaddress.ip_address(a).max_prefixlen} on lo" for a in spec.server_addresses)
        + "; no default route"
    )
    return out
