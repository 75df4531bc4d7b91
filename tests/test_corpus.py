"""Every committed real-kernel capture pair: correlate must agree with the kernel's own record (truth.json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from natproof.check import capture_pair, compare, load_truth, single_captures
from natproof.correlate import correlate

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
DIRS = sorted(d for d in CAPTURES.iterdir() if (d / "truth.json").exists())


def test_corpus_is_there() -> None:
    assert len(DIRS) >= 10, "captures/ lost its scenarios; run make captures"


@pytest.mark.parametrize("case", DIRS, ids=[d.name for d in DIRS])
def test_kernel_truth(case: Path) -> None:
    truth = load_truth(case / "truth.json")
    assert truth["source"] == "kernel"
    result = correlate(*capture_pair(case), pod_cidr=truth["pod_cidr"])
    rep = compare(result, truth)
    assert rep.ok, rep.to_dict()
    # One host, one clock: the estimate must say so.
    assert result.clock_offset_s == 0.0
    doc = result.to_dict()
    for c in doc["connections"]:
        if c["verdict"] == "translated":
            # Every egress packet of a translated connection crossed the node and was found again.
            assert c["matched"]["egress"] == c["packets"]["egress_inside"], c
            assert c["evidence"]["egress"] is not None and c["evidence"]["reply"] is not None


@pytest.mark.parametrize("case", DIRS, ids=[d.name for d in DIRS])
def test_kernel_truth_with_inferred_pod_network(case: Path) -> None:
    truth = load_truth(case / "truth.json")
    rep = compare(correlate(*capture_pair(case)), truth)
    assert rep.ok, rep.to_dict()


SINGLE = [(d, f) for d in DIRS for f in single_captures(d)]


@pytest.mark.parametrize(("case", "single"), SINGLE, ids=[f"{d.name}/{f.name}" for d, f in SINGLE])
def test_kernel_truth_from_one_capture_of_many_interfaces(case: Path, single: Path) -> None:
    # The same run as tcpdump -i any (named by links.txt) and as one pcapng: natproof chooses the points itself.
    truth = load_truth(case / "truth.json")
    result = correlate(single, interfaces=case / "links.txt")
    assert compare(result, truth).ok
    assert result.inside.chosen == result.outside.chosen == "chosen"
    assert result.outside.interfaces == ("eth0",)
    pair = correlate(*capture_pair(case)).to_dict()["connections"]
    keys = ("proto", "initiator", "original", "translated", "verdict", "fates", "flags")
    assert [{k: c[k] for k in keys} for c in result.to_dict()["connections"]] == [{k: c[k] for k in keys}
                                                                                  for c in pair]


def test_single_file_forms_are_in_the_corpus() -> None:
    assert SINGLE, "no scenario in captures/ has any.pcap or node.pcapng; record one with make captures"


def test_icmp_port_unreachable_is_reverse_translated_but_not_a_reply() -> None:
    # captures/udp: one datagram to a closed port; the kernel rewrites the ICMP error back to the pod
    # (outer and quoted header) and conntrack keeps the entry [UNREPLIED].
    doc = correlate(CAPTURES / "udp" / "inside.pcap", CAPTURES / "udp" / "outside.pcap").to_dict()
    (closed,) = [c for c in doc["connections"] if c["inside"]["dport"] == 9]
    assert closed["verdict"] == "no_reply" and closed["flags"] == ["icmp_error"]
    assert closed["packets"]["icmp_error_outside"] == closed["packets"]["icmp_error_inside"] == 1
    assert closed["evidence"]["icmp_error"] is not None


def test_pcapng_copy_of_a_kernel_capture_gives_the_same_answer(tmp_path: Path) -> None:
    # Rewrite captures/port-collision as pcapng (one interface, nanosecond if_tsresol) and as gzip.
    import gzip
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from pcapbytes import pcapng

    from natproof.capture import read_capture

    paths = []
    for side in ("inside", "outside"):
        info, records = read_capture(CAPTURES / "port-collision" / f"{side}.pcap")
        data = pcapng([(info.link_types[0], 9)], [(0, r.ts_ns, r.data) for r in records])
        p = tmp_path / f"{side}.pcapng.gz"
        p.write_bytes(gzip.compress(data))
        paths.append(p)
    a = correlate(*paths).to_dict()
    b = correlate(*capture_pair(CAPTURES / "port-collision")).to_dict()
    assert a["captures"]["inside"]["format"] == "pcapng+gzip"
    assert a["connections"] == b["connections"] and a["clock_offset_s"] == b["clock_offset_s"]


def _rewritten_crossing(case: Path) -> bool:
    """Something crossed the NAT with a rewrite, which tells the sides apart whatever the addresses: a private one
    and a public one, or two private ones (captures/double-nat's node hop rewrites a pod address to a node's VPC
    address, captures/eks-vpc-cni a pod's VPC address to the primary ENI's, as on EKS)."""
    crossed = [c for c in load_truth(case / "truth.json")["connections"]
               if c["verdict"] in ("translated", "no_reply", "reply_dropped", "reply_other_path")]
    return any(c.get("translated") is None or c.get("rewrites") for c in crossed)


SIDED = [d for d in DIRS if _rewritten_crossing(d)]


@pytest.mark.parametrize("case", SIDED, ids=[d.name for d in SIDED])
def test_swapping_the_two_captures_is_refused(case: Path) -> None:
    # Any pair in which something crossed the NAT with a rewrite, given in the wrong order, is refused with the
    # right order.
    from natproof.errors import InputError

    inside, outside = capture_pair(case)
    with pytest.raises(InputError, match=f"look swapped: .*other order: {inside} {outside}"):
        correlate(outside, inside)
