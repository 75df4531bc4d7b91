"""kube-proxy's iptables rules (iptables mode) for the lab's Services: ClusterIP, NodePort, no endpoints."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

MASQ_MARK = "0x4000"
"""kube-proxy's default --iptables-masquerade-bit 14."""


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True)
class Service:
    """One Service port as kube-proxy sees it: a ClusterIP, optionally a NodePort, and its endpoints."""

    name: str
    """``namespace/name:port-name``, the string kube-proxy hashes into its chain names."""
    proto: str
    """``tcp`` or ``udp``."""
    cluster_ip: str
    port: int
    endpoints: tuple[Endpoint, ...] = ()
    """No endpoints: kube-proxy REJECTs in the filter table (ICMP port unreachable from the node)."""
    node_port: int | None = None
    local: bool = False
    """externalTrafficPolicy=Local: NodePort traffic is DNATed to local endpoints only, without masquerade."""

    @property
    def svc_chain(self) -> str:
        return "KUBE-SVC-" + _hash(self.name + self.proto)

    @property
    def ext_chain(self) -> str:
        return "KUBE-EXT-" + _hash(self.name + self.proto)

    @property
    def svl_chain(self) -> str:
        return "KUBE-SVL-" + _hash(self.name + self.proto)

    def sep_chain(self, endpoint: Endpoint) -> str:
        return "KUBE-SEP-" + _hash(self.name + self.proto + f"{endpoint.address}:{endpoint.port}")


def _hash(text: str) -> str:
    """kube-proxy's chain-name hash (pkg/proxy/iptables/proxier.go portProtoHash): base32 of SHA-256, 16 chars."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest())[:16].decode()


def _comment(text: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", text)


def kube_proxy_rules(
    services: tuple[Service, ...], pod_cidr: str, *, forward_invalid_drop: bool = False
) -> tuple[tuple[str, ...], ...]:
    """Arguments of each iptables call that builds kube-proxy's chains for ``services``, in order.

    The shapes follow kube-proxy 1.29+ in iptables mode (``iptables-save`` of a node): nat KUBE-SERVICES
    jumped from PREROUTING and OUTPUT, KUBE-SVC chains choosing an endpoint with ``-m statistic --mode random
    --probability 1/n``, KUBE-SEP chains marking the endpoint's own traffic for masquerade (hairpin) and
    DNATing, KUBE-MARK-MASQ and KUBE-POSTROUTING (``MASQUERADE --random-fully`` for marked packets),
    KUBE-NODEPORTS last in KUBE-SERVICES; filter KUBE-SERVICES REJECTs Services without endpoints.
    """
    chains = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
    nat: list[tuple[str, ...]] = [("-t", "nat", "-N", chain) for chain in chains]
    marked = f"{MASQ_MARK}/{MASQ_MARK}"
    nat += [
        ("-t", "nat", "-A", "PREROUTING", *_comment("kubernetes service portals"), "-j", "KUBE-SERVICES"),
        ("-t", "nat", "-A", "OUTPUT", *_comment("kubernetes service portals"), "-j", "KUBE-SERVICES"),
        ("-t", "nat", "-A", "POSTROUTING", *_comment("kubernetes postrouting rules"), "-j", "KUBE-POSTROUTING"),
        ("-t", "nat", "-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", MASQ_MARK),
        ("-t", "nat", "-A", "KUBE-POSTROUTING", "-m", "mark", "!", "--mark", marked, "-j", "RETURN"),
        ("-t", "nat", "-A", "KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", MASQ_MARK),
        (
            "-t", "nat", "-A", "KUBE-POSTROUTING", *_comment("kubernetes service traffic requiring SNAT"),
            "-j", "MASQUERADE", "--random-fully",
        ),
    ]  # fmt: skip
    filt: list[tuple[str, ...]] = []
    rejected = [s for s in services if not s.endpoints]
    if rejected:
        filt += [
            ("-N", "KUBE-SERVICES"),
            ("-A", "FORWARD", "-m", "conntrack", "--ctstate", "NEW", *_comment("kubernetes service portals"),
             "-j", "KUBE-SERVICES"),
            ("-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", *_comment("kubernetes service portals"),
             "-j", "KUBE-SERVICES"),
        ]  # fmt: skip
        for s in rejected:
            filt.append(
                ("-A", "KUBE-SERVICES", "-d", f"{s.cluster_ip}/32", "-p", s.proto,
                 *_comment(f"{s.name} has no endpoints"), "-m", s.proto, "--dport", str(s.port),
                 "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
            )  # fmt: skip
    # A NodePort of a Service without endpoints is REJECTed for packets to any of the node's own addresses, in
    # INPUT and FORWARD (kube-proxy's filter KUBE-EXTERNAL-SERVICES): the internet client gets ICMP port
    # unreachable from the node itself.
    external = [s for s in rejected if s.node_port is not None]
    if external:
        filt += [
            ("-N", "KUBE-EXTERNAL-SERVICES"),
            *[("-A", chain, "-m", "conntrack", "--ctstate", "NEW", *_comment("kubernetes externally-visible service "
               "portals"), "-j", "KUBE-EXTERNAL-SERVICES") for chain in ("INPUT", "FORWARD")],
        ]  # fmt: skip
        for s in external:
            filt.append(
                ("-A", "KUBE-EXTERNAL-SERVICES", "-p", s.proto, *_comment(f"{s.name} has no endpoints"),
                 "-m", "addrtype", "--dst-type", "LOCAL", "-m", s.proto, "--dport", str(s.node_port),
                 "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
            )  # fmt: skip
    filt += [
        ("-N", "KUBE-FORWARD"),
        ("-A", "FORWARD", *_comment("kubernetes forwarding rules"), "-j", "KUBE-FORWARD"),
    ]
    if forward_invalid_drop:
        filt.append(("-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"))
    filt += [
        ("-A", "KUBE-FORWARD", *_comment("kubernetes forwarding rules"), "-m", "mark", "--mark",
         f"{MASQ_MARK}/{MASQ_MARK}", "-j", "ACCEPT"),
        ("-A", "KUBE-FORWARD", *_comment("kubernetes forwarding conntrack rule"), "-m", "conntrack",
         "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
    ]  # fmt: skip

    for s in services:
        if not s.endpoints:
            continue
        p, cip, port = s.proto, f"{s.cluster_ip}/32", str(s.port)
        nat.append(("-t", "nat", "-N", s.svc_chain))
        nat += [("-t", "nat", "-N", s.sep_chain(e)) for e in s.endpoints]
        nat.append(
            ("-t", "nat", "-A", "KUBE-SERVICES", "-d", cip, "-p", p, *_comment(f"{s.name} cluster IP"),
             "-m", p, "--dport", port, "-j", s.svc_chain)
        )  # fmt: skip
        # Traffic to the ClusterIP from outside the pod network is masqueraded (kube-proxy --cluster-cidr).
        nat.append(
            ("-t", "nat", "-A", s.svc_chain, "!", "-s", pod_cidr, "-d", cip, "-p", p,
             *_comment(f"{s.name} cluster IP"), "-m", p, "--dport", port, "-j", "KUBE-MARK-MASQ")
        )  # fmt: skip
        nat += _endpoint_jumps(s, s.svc_chain, s.endpoints)
        for e in s.endpoints:
            sep = s.sep_chain(e)
            # An endpoint calling its own Service (hairpin): without the masquerade the reply would go
            # straight back to itself from its own address and never be reverse-translated.
            nat.append(("-t", "nat", "-A", sep, "-s", f"{e.address}/32", *_comment(s.name), "-j", "KUBE-MARK-MASQ"))
            nat.append(
                ("-t", "nat", "-A", sep, "-p", p, *_comment(s.name), "-m", p, "-j", "DNAT",
                 "--to-destination", f"{e.address}:{e.port}")
            )  # fmt: skip
        if s.node_port is None:
            continue
        nat.append(("-t", "nat", "-N", s.ext_chain))
        nat.append(
            ("-t", "nat", "-A", "KUBE-NODEPORTS", "-p", p, *_comment(s.name), "-m", p, "--dport",
             str(s.node_port), "-j", s.ext_chain)
        )  # fmt: skip
        if s.local:
            nat.append(("-t", "nat", "-N", s.svl_chain))
            nat += [
                ("-t", "nat", "-A", s.ext_chain, "-s", pod_cidr,
                 *_comment(f"pod traffic for {s.name} external destinations"), "-j", s.svc_chain),
                ("-t", "nat", "-A", s.ext_chain, *_comment(f"masquerade LOCAL traffic for {s.name} external "
                 "destinations"), "-m", "addrtype", "--src-type", "LOCAL", "-j", "KUBE-MARK-MASQ"),
                ("-t", "nat", "-A", s.ext_chain, *_comment(f"route LOCAL traffic for {s.name} external "
                 "destinations"), "-m", "addrtype", "--src-type", "LOCAL", "-j", s.svc_chain),
                ("-t", "nat", "-A", s.ext_chain, "-j", s.svl_chain),
            ]  # fmt: skip
            nat += _endpoint_jumps(s, s.svl_chain, s.endpoints)
        else:
            nat += [
                ("-t", "nat", "-A", s.ext_chain, *_comment(f"masquerade traffic for {s.name} external "
                 "destinations"), "-j", "KUBE-MARK-MASQ"),
                ("-t", "nat", "-A", s.ext_chain, "-j", s.svc_chain),
            ]  # fmt: skip
    nat.append(
        ("-t", "nat", "-A", "KUBE-SERVICES",
         *_comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
         "-m", "addrtype", "--dst-type", "LOCAL", "-j", "KUBE-NODEPORTS")
    )  # fmt: skip
    return (*nat, *filt)


def _endpoint_jumps(s: Service, chain: str, endpoints: tuple[Endpoint, ...]) -> list[tuple[str, ...]]:
    """One jump per endpoint; all but the last chosen with probability 1/(endpoints left), as kube-proxy does."""
    rules = []
    for i, e in enumerate(endpoints):
        left = len(endpoints) - i
        chance = ("-m", "statistic", "--mode", "random", "--probability", f"{1 / left:.10f}") if left > 1 else ()
        rules.append(
            ("-t", "nat", "-A", chain, *_comment(f"{s.name} -> {e.address}:{e.port}"), *chance,
             "-j", s.sep_chain(e))
        )  # fmt: skip
    return rules
