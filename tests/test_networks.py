"""Address arithmetic in polars (natproof.networks.address_bits, in_any) against Python's ipaddress."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import polars as pl
import pytest

from natproof.assemble import in_networks
from natproof.networks import PRIVATE_SPACE, address_bits, infer_pod_networks, parse_networks, pod_cidr_misses

EDGES = ["10.0.0.0", "9.255.255.255", "10.255.255.255", "11.0.0.0", "172.15.255.255", "172.16.0.0", "172.31.255.255",
         "172.32.0.0", "100.63.255.255", "100.64.0.0", "100.127.255.255", "192.168.0.1", "127.0.0.1", "0.0.0.0",
         "169.254.1.1", "224.0.0.251", "239.255.255.250", "240.0.0.1", "255.255.255.255", "203.0.113.5",
         "fc00::", "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe00::",
         "fe80::1", "::1", "::", "ff02::fb", "2001:db8::1", "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2000::",
         "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "4000::", "::ffff:10.0.0.1", "fd00:10:96::a"]


def _addresses(n: int = 2000) -> list[str]:
    rng = random.Random(11)
    out = list(EDGES)
    for _ in range(n):
        if rng.random() < 0.7:
            base = int(ipaddress.IPv4Address(rng.choice(EDGES[:20])))
            out.append(str(ipaddress.IPv4Address((base + rng.randint(-300, 300)) % 2**32)))
        else:
            base = int(ipaddress.IPv6Address(rng.choice(EDGES[20:])))
            out.append(str(ipaddress.IPv6Address((base + rng.getrandbits(rng.choice((8, 64, 80)))) % 2**128)))
    return out


NETS = [
    [space for space, _, _ in PRIVATE_SPACE],
    parse_networks("10.96.0.0/12,fd00:10:96::/112"),
    parse_networks("0.0.0.0/0"),
    parse_networks("::/0,10.1.2.3/32"),
    parse_networks("2001:db8::/33,203.0.113.0/24"),
    [],
]


@pytest.mark.parametrize("dtype", [pl.String, pl.Categorical])
@pytest.mark.parametrize("nets", NETS, ids=lambda n: ",".join(map(str, n)) or "none")
def test_in_networks_agrees_with_ipaddress(dtype: pl.DataType, nets: list) -> None:
    addrs = _addresses()
    got = in_networks(pl.Series("a", [*addrs, None], dtype=dtype), nets).to_list()
    want = [any(ipaddress.ip_address(a) in n for n in nets) for a in addrs] + [False]
    assert got == want


def test_address_bits_values_and_text_that_is_no_address() -> None:
    addrs = [*EDGES, "not an address", "1.2.3", "256.1.1.1", "1.2.3.4.5", "::g"]
    bits = address_bits(pl.Series(addrs)).sort("a")
    for a, version, hi, lo in bits.iter_rows():
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            assert version is None, a
            continue
        assert (version, (hi << 64) | lo) == (ip.version, int(ip)), a


def test_inferred_pod_networks_group_sources_by_prefix() -> None:
    inside = pl.DataFrame({"src": ["10.244.1.7", "10.244.0.5", "192.168.7.9", "203.0.113.9", "198.51.100.20",
                                   "fd00:1:2:3::4", "2001:db8:5:6::7", "127.0.0.1", "224.0.0.251"]})
    outside = pl.DataFrame({"src": ["198.51.100.20", "192.0.2.1"], "dst": ["192.0.2.1", "198.51.100.20"]})
    got = infer_pod_networks(inside, outside)
    assert [str(n) for n in got.networks] == ["10.244.0.0/16", "192.168.7.0/24", "203.0.113.0/24",
                                              "2001:db8:5:6::/64", "fd00:1:2::/48"]
    assert "(10.244.0.5, 10.244.1.7, 192.168.7.9, fd00:1:2:3::4)" in got.why
    assert "(203.0.113.9, 2001:db8:5:6::7)" in got.why
    assert [str(n) for n in infer_pod_networks(inside).networks] == ["10.244.0.0/16", "192.168.7.0/24",
                                                                    "fd00:1:2::/48"]


def _legs(rows: list[tuple[str, str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"src": pl.String, "dst": pl.String, "egress_packets": pl.Int64,
                                      "reply_packets": pl.Int64}, orient="row")


def test_pod_cidr_misses_leaves_out_the_far_ends_the_outside_capture_also_shows() -> None:
    # A trial: reject6 with --pod-cidr 2001:db8:245::/64 named the far server 2001:db8:ff::10 (its replies are on
    # the inside) beside the pod. A NAT never rewrites the far end, so the server is on both captures; the
    # masqueraded pod is not. A NodePort's client is a far end too: its pod only answers.
    inside = _legs([("2001:db8:244::10", "2001:db8:ff::10", 3, 2), ("2001:db8:ff::20", "2001:db8:244::11", 2, 2)])
    outside = _legs([("2001:db8:1::2", "2001:db8:ff::10", 3, 2), ("2001:db8:ff::20", "2001:db8:1::2", 2, 2)])
    wrong = parse_networks("2001:db8:245::/64")
    missed = pod_cidr_misses(wrong, inside, outside=outside)
    assert missed is not None and "come from (2001:db8:244::10, 2001:db8:244::11):" in missed
    assert "2001:db8:ff::" not in missed
    # Without the outside capture the far ends cannot be told apart: all are named, as before.
    assert "2001:db8:ff::10" in (pod_cidr_misses(wrong, inside) or "")
    # A network that holds only the far ends does not pass; the pods' does.
    assert pod_cidr_misses(parse_networks("2001:db8:ff::/64"), inside, outside=outside) is not None
    assert pod_cidr_misses(parse_networks("2001:db8:ff::/64"), inside) is None
    assert pod_cidr_misses(parse_networks("2001:db8:244::/64"), inside, outside=outside) is None
    # Every sender on both captures (no NAT between them): all weighed, and the message says why.
    same = pod_cidr_misses(wrong, inside, outside=inside)
    assert same is not None and "2001:db8:ff::10" in same and "each also on the outside capture" in same


def test_pod_cidr_warning_of_reject6_names_only_the_pod() -> None:
    from natproof.correlate import correlate

    d = Path(__file__).parent / "variants" / "reject6"
    result = correlate(d / "inside.pcap", d / "outside.pcap", pod_cidr="2001:db8:245::/64")
    (warning,) = [w for w in result.inside.warnings if "--pod-cidr" in w]
    assert "come from (2001:db8:244::10):" in warning
