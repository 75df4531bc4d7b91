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

import contextlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from natproof.errors import InputError, Said, setting

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


def parse_networks(cidrs: str | Sequence[str], option: str | Said | None = None) -> tuple[Network, ...]:
    """Parse one CIDR, a comma-separated list, or a sequence of CIDRs; InputError names ``option`` (by default
    natproof.correlate's pod_cidr, the command line's --pod-cidr)."""
    items = cidrs.split(",") if isinstance(cidrs, str) else list(cidrs)
    try:
        return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in items if c.strip())
    except ValueError as exc:
        raise InputError("invalid ", setting("pod_cidr") if option is None else option, f": {exc}") from None


@dataclass(frozen=True)
class PodNetworks:
    """The inferred pod networks and the sentence that says why (shown in the table, the report and JSON)."""

    networks: tuple[Network, ...]
    why: str


_M64 = (1 << 64) - 1
_NO_ROUTE_V4 = tuple(ipaddress.ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
                                                        "240.0.0.0/4"))
"""IPv4 space :func:`_global` leaves out: 0/8 (unspecified), loopback, link-local, multicast and reserved (with the
limited broadcast), as ipaddress's is_* properties define them."""


def address_bits(addrs: pl.Series) -> pl.DataFrame:
    """Each distinct address of a String or Categorical series once, as (a, version, hi, lo): ``a`` the address in
    the series' own type, its 128 bits as two UInt64 (an IPv4 address in ``lo``, ``hi`` 0). IPv4 text is parsed by
    polars, IPv6 by ipaddress (one call per distinct address: a capture's addresses are mostly IPv4, and a Python
    parse of each cost seconds at 100k addresses); text that is no address has a null version."""
    df = addrs.drop_nulls().unique().alias("a").to_frame().with_columns(pl.col("a").cast(pl.String).alias("_t"))
    octets = [pl.col("_t").str.split_exact(".", 3).struct.field(f"field_{i}").cast(pl.UInt64, strict=False)
              for i in range(4)]
    v4 = pl.col("_t").str.contains(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$") & pl.all_horizontal(
        [(o <= 255).fill_null(False) for o in octets])
    df = df.select("a", "_t", pl.when(v4).then(pl.lit(4, pl.UInt8)).alias("version"), pl.lit(0, pl.UInt64).alias("hi"),
                   pl.when(v4).then(octets[0] * (1 << 24) + octets[1] * (1 << 16) + octets[2] * (1 << 8) + octets[3])
                   .otherwise(0).alias("lo"))
    v6 = []
    for a, t in df.filter(pl.col("version").is_null() & pl.col("_t").str.contains(":")).select("a", "_t").iter_rows():
        with contextlib.suppress(ValueError):
            value = int(ipaddress.IPv6Address(t))
            v6.append((a, 6, value >> 64, value & _M64))
    if v6:
        df = df.update(pl.DataFrame(v6, schema=df.drop("_t").schema, orient="row"), on="a")
    return df.drop("_t")


def in_any(nets: Iterable[Network]) -> pl.Expr:
    """Over :func:`address_bits`' columns: the address is in one of ``nets`` (False for no address)."""
    conds = []
    for n in nets:
        bits = n.max_prefixlen
        mask = ((1 << bits) - 1) ^ ((1 << (bits - n.prefixlen)) - 1)
        net = int(n.network_address)
        cond = (pl.col("version") == n.version) & (
            (pl.col("lo") & pl.lit(mask & _M64, pl.UInt64)) == pl.lit(net & _M64, pl.UInt64))
        if n.version == 6:
            cond = cond & ((pl.col("hi") & pl.lit(mask >> 64, pl.UInt64)) == pl.lit(net >> 64, pl.UInt64))
        conds.append(cond)
    return pl.any_horizontal(conds).fill_null(False) if conds else pl.lit(False)


def _global() -> pl.Expr:
    """Over :func:`address_bits`' columns: unicast space a NAT can hide: global IPv6 (2000::/3), or IPv4 that is
    neither private nor special (_NO_ROUTE_V4). The documentation ranges count as global: labs stand for the
    internet with them."""
    return (((pl.col("version") == 6) & in_any([GLOBAL_V6]))
            | ((pl.col("version") == 4) & ~in_any(_NO_ROUTE_V4)))


def _addresses(frames: Iterable[pl.DataFrame], cols: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for df in frames:
        for c in cols:
            if c in df.columns:
                found.update(df[c].drop_nulls().cast(pl.String).unique().to_list())
    return found


def _network(version: int, hi: int, lo: int, prefix: int) -> Network:
    if version == 4:
        return ipaddress.IPv4Network((lo, prefix))
    return ipaddress.IPv6Network(((hi << 64) | lo, prefix))


def infer_pod_networks(inside: pl.DataFrame, outside: pl.DataFrame | None = None, *,
                       where: str = "on the inside") -> PodNetworks:
    """Infer the pod networks from the inside capture's connections (``src`` column: who sent each leg's first
    packet) and, for global space, the outside capture's (``src``/``dst``): see the module docstring.

    Without ``outside`` only private space is inferred (no evidence that a global source is hidden).
    Returns networks sorted by version and address; none when nothing qualifies. ``where`` says in ``why`` where
    the sources were seen (the pod sources of a conntrack record when the only capture is the outside one).
    """
    sources = address_bits(inside["src"].cast(pl.String) if "src" in inside.columns
                           else pl.Series([], dtype=pl.String))
    prefix = pl.lit(None, pl.UInt8)
    for space, plen, _ in reversed(PRIVATE_SPACE):  # the first space that holds it (they do not overlap)
        prefix = pl.when(in_any([space])).then(pl.lit(plen, pl.UInt8)).otherwise(prefix)
    hidden = pl.lit(False)
    if outside is not None:
        seen = pl.Series(list(_addresses([outside], ("src", "dst"))), dtype=pl.String)
        hidden = _global() & ~pl.col("a").is_in(seen.implode())
    rows = (sources.filter(pl.col("version").is_not_null())
            .with_columns(prefix.alias("private"), hidden.alias("hidden"))
            .filter(pl.col("private").is_not_null() | pl.col("hidden"))
            .sort("version", "hi", "lo"))
    private: dict[Network, list[str]] = {}
    hidden_nets: dict[Network, list[str]] = {}
    made: dict[tuple[int, int, int, int], Network] = {}
    for a, version, hi, lo, plen in rows.select("a", "version", "hi", "lo", "private").iter_rows():
        groups = private if plen is not None else hidden_nets
        plen = plen if plen is not None else HIDDEN_PREFIX[version]
        host = (32 if version == 4 else 128) - plen
        whole = ((hi << 64) | lo) >> host << host
        key = (version, whole >> 64, whole & _M64, plen)
        net = made.get(key)
        if net is None:
            net = made[key] = _network(*key)
        groups.setdefault(net, []).append(a)
    nets = tuple(sorted({*private, *hidden_nets}, key=lambda n: (n.version, n.network_address)))
    return PodNetworks(nets, _why(private, hidden_nets, where))


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


def pod_cidr_misses(nets: Sequence[Network], legs: pl.DataFrame, option: str = "--pod-cidr",
                    outside: pl.DataFrame | None = None) -> str | None:
    """The warning for a given pod network (``option``) that holds no address the inside capture's packets come
    from, or None when it holds one (or none was given). ``legs``: the inside capture's legs (src, dst,
    egress_packets, reply_packets: natproof.connections); a leg's src sent its egress packets, its dst its
    replies. The inside capture is the pod side: its pods send there (their requests, or their answers to a
    NodePort's clients), so a pod network holding none of its senders is a wrong one, and every connection
    between pods then reads as one that should cross the NAT (a trial: pod-to-pod traffic read not_captured, "the
    other capture was not running", with both captures running).

    The far ends send on the inside too (a server's replies, a NodePort client's requests). ``outside``: the
    outside capture's legs (src, dst), when there is one: an address it also shows is left out, as a far end
    (a NAT never rewrites the far end of a flow, so it appears on both captures; a pod behind MASQUERADE or a
    NodePort's DNAT does not): such an address is neither named nor lets the network pass (a trial: reject6 with
    --pod-cidr 2001:db8:245::/64 named the server 2001:db8:ff::10 beside the pod). When every sender appears on
    both captures (no NAT between them, routed pods) none can be told for a far end: all are weighed, and the
    message says so. Without ``outside`` all senders are weighed. The message names the private senders (all of
    them when none is private), at most five."""
    if not nets or legs.is_empty() or "src" not in legs.columns:
        return None
    sent = pl.concat([legs.filter(pl.col("egress_packets") > 0).select(pl.col("src").cast(pl.String).alias("a")),
                      legs.filter(pl.col("reply_packets") > 0).select(pl.col("dst").cast(pl.String).alias("a"))])
    bits = address_bits(sent["a"]).filter(pl.col("version").is_not_null())
    both = ""
    if outside is not None and not bits.is_empty():
        seen = pl.Series(list(_addresses([outside], ("src", "dst"))), dtype=pl.String).implode()
        hidden = bits.filter(~pl.col("a").cast(pl.String).is_in(seen))
        if hidden.height:
            bits = hidden
        else:
            both = (", each also on the outside capture (no NAT hid it, so the far ends cannot be told from "
                    "the pods)")
    if bits.is_empty() or bits.select(in_any(nets).any()).item():
        return None
    private = bits.filter(in_any([space for space, _, _ in PRIVATE_SPACE]))
    shown = (private if private.height else bits).sort("version", "hi", "lo")["a"].cast(pl.String).to_list()
    kind = "private ones: " if private.height else ""
    listed = ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
    given = ",".join(str(n) for n in nets)
    return (f"{option} {given} holds none of the addresses the inside capture's packets come from ({kind}{listed})"
            f"{both}: the pods send from those, so connections between them are taken for ones that should cross "
            f"the NAT; give the pod network they are in, or leave {option} out to infer it")
