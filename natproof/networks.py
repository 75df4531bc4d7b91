"""Pod networks: the address space behind the NAT, given (``--pod-cidr``) or inferred from the captures.

The pod networks decide which destinations are ``internal`` (pod to pod, never NATed), which inside sources a
leak exposes, and where a NodePort's DNAT may lead. Inference goes by two kinds of evidence:

- **private space** on the inside (RFC 1918, RFC 6598 shared space, IPv6 ULA): a source there is a pod (or a
  LAN host) whatever the outside shows, so that an untranslated leak is still seen as one;
- **hidden global space**: a global IPv6 source (2000::/3, NAT66) or a public IPv4 source that initiates on the
  inside and never appears on the outside capture was rewritten on the way out, so it stands behind the NAT.
  A global source that *does* appear on the outside is routed, not hidden (AWS VPC CNI pods, an SNAT
  exclusion), and is no pod network of a NAT.

Each source is widened to the prefix such networks are usually cut to (:data:`PREFIXES`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from natproof.errors import InputError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PRIVATE_SPACE: tuple[tuple[Network, int, str], ...] = (
    (ipaddress.ip_network("10.0.0.0/8"), 16, "RFC 1918"),
    (ipaddress.ip_network("172.16.0.0/12"), 16, "RFC 1918"),
    (ipaddress.ip_network("100.64.0.0/10"), 16, "RFC 6598 shared space"),
    (ipaddress.ip_network("192.168.0.0/16"), 24, "RFC 1918 (a LAN)"),
    (ipaddress.ip_network("fc00::/7"), 48, "ULA"),
)
"""(space, prefix length a source in it is widened to, name). Kubernetes gives each node a /24 of a cluster-wide
/16 (kube-controller-manager's --node-cidr-mask-size, 24 by default), so a /16 covers a node's pods and those on
other nodes; 192.168.0.0/16 is carved into /24 LANs (home routers, Docker's bridges); a ULA site is a /48
(RFC 4193)."""

GLOBAL_V6 = ipaddress.ip_network("2000::/3")
HIDDEN_PREFIX = {4: 24, 6: 64}
"""A hidden global source is widened to its /24 (IPv4) or /64 (IPv6: one subnet, RFC 4291's interface ids)."""

PREFIXES = "/16 (192.168/16: /24; ULA: /48) around private sources, /64 (IPv4 /24) around hidden global ones"


def parse_networks(cidrs: str | Sequence[str], option: str = "--pod-cidr") -> tuple[Network, ...]:
    """Parse one CIDR, a comma-separated list, or a sequence of CIDRs; InputError names ``option``."""
    items = cidrs.split(",") if isinstance(cidrs, str) else list(cidrs)
    try:
        return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in items if c.strip())
    except ValueError as exc:
        raise InputError(f"invalid {option}: {exc}") from None


def private_prefix(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int | None:
    """The prefix length a private ``addr`` is widened to (PRIVATE_SPACE), or None when it is not private."""
    for space, prefix, _ in PRIVATE_SPACE:
        if addr.version == space.version and addr in space:
            return prefix
    return None


def _global(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Unicast space a NAT can hide: global IPv6, or IPv4 that is neither private nor special (loopback,
    multicast, link-local, 0/8, reserved). The documentation ranges count as global: labs stand for the
    internet with them."""
    if addr.version == 6:
        return addr in GLOBAL_V6
    return not (addr.is_loopback or addr.is_multicast or addr.is_link_local or addr.is_unspecified
                or addr.is_reserved or addr in ipaddress.ip_network("0.0.0.0/8"))


@dataclass(frozen=True)
class PodNetworks:
    """The inferred pod networks and the sentence that says why (shown in the table, the report and JSON)."""

    networks: tuple[Network, ...]
    why: str


def _order(a: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(a)
    return ip.version, int(ip)


def _addresses(frames: Iterable[pl.DataFrame], cols: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for df in frames:
        for c in cols:
            if c in df.columns:
                found.update(df[c].drop_nulls().cast(pl.String).unique().to_list())
    return found


def infer_pod_networks(inside: pl.DataFrame, outside: pl.DataFrame | None = None, *,
                       where: str = "on the inside") -> PodNetworks:
    """Infer the pod networks from the inside capture's connections (``src`` column: who sent each leg's first
    packet) and, for global space, the outside capture's (``src``/``dst``): see the module docstring.

    Without ``outside`` only private space is inferred (no evidence that a global source is hidden).
    Returns networks sorted by version and address; none when nothing qualifies. ``where`` says in ``why`` where
    the sources were seen (the pod sources of a conntrack record when the only capture is the outside one).
    """
    seen_outside = _addresses([outside], ("src", "dst")) if outside is not None else None
    private: dict[Network, list[str]] = {}
    hidden: dict[Network, list[str]] = {}
    for src in sorted(_addresses([inside], ("src",)), key=_order):
        addr = ipaddress.ip_address(src)
        prefix = private_prefix(addr)
        if prefix is not None:
            private.setdefault(ipaddress.ip_network(f"{src}/{prefix}", strict=False), []).append(src)
        elif seen_outside is not None and _global(addr) and src not in seen_outside:
            net = ipaddress.ip_network(f"{src}/{HIDDEN_PREFIX[addr.version]}", strict=False)
            hidden.setdefault(net, []).append(src)
    nets = tuple(sorted({*private, *hidden}, key=lambda n: (n.version, n.network_address)))
    return PodNetworks(nets, _why(private, hidden, where))


def _why(private: dict[Network, list[str]], hidden: dict[Network, list[str]], where: str = "on the inside") -> str:
    if not private and not hidden:
        return (f"none inferred: no private source (RFC 1918, 100.64/10, ULA) {where} and no global one "
                "the outside capture never shows; --pod-cidr sets it")

    def shown(groups: dict[Network, list[str]]) -> str:
        addrs = [a for net in sorted(groups, key=lambda n: (n.version, n.network_address)) for a in groups[net]]
        return ", ".join(addrs[:5]) + (f" and {len(addrs) - 5} more" if len(addrs) > 5 else "")

    parts = []
    if private:
        parts.append(f"the /16 (192.168/16: /24; IPv6 ULA: /48) around each private source {where} "
                     f"({shown(private)})")
    if hidden:
        parts.append(f"the /64 (IPv4: /24) around each global source on the inside that the outside capture "
                     f"never shows, so the NAT rewrote it ({shown(hidden)})")
    return "inferred: " + "; and ".join(parts) + "; --pod-cidr sets it"


def dnat_networks(inside: pl.DataFrame, inferred: Sequence[Network]) -> tuple[Network, ...]:
    """Where a NodePort's DNAT may lead, from the inside capture alone (before the outside is read): the
    inferred networks (or all private space when none), ULA, and the /64 around every global IPv6 source on the
    inside (a NAT66 pod). Wider than the pod networks is harmless: it only lets a datagram be paired without
    its far end in a second pass (natproof.match)."""
    v6 = [ipaddress.ip_network(f"{a}/64", strict=False) for a in _addresses([inside], ("src",))
          if ":" in a and ipaddress.ip_address(a) in GLOBAL_V6]
    private = [space for space, _, _ in PRIVATE_SPACE]
    return (*(inferred or private), *private[-1:], *sorted(set(v6), key=lambda n: n.network_address))
