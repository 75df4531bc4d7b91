"""captures/eks-vpc-cni (a real-kernel run of natproof lab's eks-vpc-cni): an EKS node as the AWS VPC CNI wires it.

Pods hold addresses of the VPC subnet itself (10.0.1.50, .51 on the primary ENI, .60 on a secondary one), the node's
primary ENI is 10.0.1.10: a private address on both sides of the NAT. What natproof must say there: every connection
that leaves the VPC translated to the primary ENI's address with a random port (the secondary ENI's pod too), what
stays in the VPC internal and crossed unchanged, what goes to an SNAT-excluded network untranslated and answered (an
SNAT exclusion, no failure), the pod network inferred as the VPC's /16, and the captures given the wrong way round
refused although no public address tells the sides apart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import natproof
from natproof.check import capture_pair, compare, load_truth
from natproof.diagnose import diagnose
from natproof.errors import InputError
from natproof.result import connection_dicts

CASE = Path(__file__).resolve().parent.parent / "captures" / "eks-vpc-cni"
PRIMARY = "10.0.1.10"
PODS = {"10.0.1.50", "10.0.1.51", "10.0.1.60"}
VPC_HOST, EXCLUDED = "10.0.2.20", "172.16.5.5"
pytestmark = pytest.mark.skipif(not (CASE / "truth.json").is_file(), reason="captures/eks-vpc-cni not recorded")


def rows(result: natproof.Result) -> list[dict]:
    return connection_dicts(result.connections)


def mappings(result: natproof.Result) -> list[tuple]:
    def t(d: dict | None) -> tuple | None:
        return None if d is None else (d["src"], d["sport"], d["dst"], d["dport"])

    return sorted((c["proto"], t(c["original"]), t(c["translated"]), c["initiator"], c["verdict"])
                  for c in rows(result))


@pytest.fixture(scope="module")
def pair() -> natproof.Result:
    return natproof.correlate(*capture_pair(CASE))  # as a user runs it: no --pod-cidr


def test_every_mapping_is_the_kernels_with_and_without_the_vpc_cidr(pair: natproof.Result) -> None:
    truth = load_truth(CASE / "truth.json")
    assert truth["pod_cidr"] == "10.0.0.0/16"
    assert compare(pair, truth).ok, compare(pair, truth).to_dict()
    assert compare(natproof.correlate(*capture_pair(CASE), pod_cidr="10.0.0.0/16"), truth).ok


def test_the_pod_network_inferred_is_the_vpcs_and_holds_the_node(pair: natproof.Result) -> None:
    # The pods' private VPC addresses, widened to their /16; the primary ENI's address is in it too (as on EKS).
    assert pair.pod_networks == ("10.0.0.0/16",)
    assert "(10.0.1.50, 10.0.1.51, 10.0.1.60)" in pair.pod_networks_why


def test_what_leaves_the_vpc_is_snatted_to_the_primary_eni_with_random_ports(pair: natproof.Result) -> None:
    translated = [c for c in rows(pair) if c["verdict"] == "translated"]
    assert len(translated) == 8 and {c["inside"]["src"] for c in translated} == PODS
    for c in translated:
        # The secondary ENI's pod (10.0.1.60) too: the connmark sends it out of eth0, where the SNAT applies.
        assert c["outside"]["src"] == PRIMARY and c["outside"]["dst"] == "198.51.100.10", c
        assert c["rewrites"] == ["src", "sport"], c  # --random-fully (AWS_VPC_K8S_CNI_RANDOMIZESNAT=prng)
    assert pair.to_dict()["summary"]["port_preserved_ratio"] == 0.0


def test_what_stays_in_the_vpc_is_internal_and_what_is_excluded_is_untranslated(pair: natproof.Result) -> None:
    internal = [c for c in rows(pair) if c["verdict"] == "internal"]
    assert len(internal) == 3 and {c["inside"]["dst"] for c in internal} == {VPC_HOST}
    # They crossed eth0 unchanged and were answered: the VPC routes pod addresses.
    assert all(c["outside"] == c["inside"] and c["fates"]["crossed"] > 0 for c in internal)
    (excluded,) = [c for c in rows(pair) if c["verdict"] == "untranslated"]
    assert excluded["inside"]["dst"] == EXCLUDED and excluded["outside"] == excluded["inside"]
    assert excluded["matched"]["reply"] > 0


def test_the_diagnosis_is_healthy_with_an_snat_exclusion_not_a_failure(pair: natproof.Result) -> None:
    found = {f.kind: f for f in diagnose(pair)}
    # Before: ERROR stale_conntrack_entry ("conntrack -D") for the excluded network's connection.
    assert list(found) == ["healthy", "snat_exclusion"], {k: f.title for k, f in found.items()}
    excluded = found["snat_exclusion"]
    assert excluded.severity == "info"
    assert excluded.data == {"destinations": [EXCLUDED], "sources": ["10.0.1.51"],
                             "destination_subnets": ["172.16.5.0/24"]}
    assert "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS" in excluded.fix


def test_a_vpc_subnet_as_the_pod_network_calls_the_rest_of_the_vpc_an_snat_exclusion() -> None:
    # --pod-cidr may name the node's VPC subnet: the other subnet's host is then no pod, and its connections are
    # excluded from SNAT as the excluded network's are; nothing is called a failure.
    result = natproof.correlate(*capture_pair(CASE), pod_cidr="10.0.1.0/24")
    assert Counter(c["verdict"] for c in rows(result)) == {"translated": 8, "untranslated": 4}
    found = {f.kind: f for f in diagnose(result)}
    assert list(found) == ["healthy", "snat_exclusion"]
    assert found["snat_exclusion"].data["destinations"] == [VPC_HOST, EXCLUDED]


def test_the_captures_given_the_wrong_way_round_are_refused(pair: natproof.Result) -> None:
    # Both sides private (10.0.1.50 -> 10.0.1.10): the order is read from which capture each connection started on
    # and what was rewritten on the way (before: 12 healthy connections "started outside").
    inside, outside = capture_pair(CASE)
    with pytest.raises(InputError, match=f"look swapped: all 8 connection.*other order: {inside} {outside}"):
        natproof.correlate(outside, inside)
    swapped = natproof.correlate(outside, inside, allow_swap=True)
    assert mappings(swapped) == mappings(pair)
    assert any("looked swapped" in w for w in swapped.inside.warnings)
    # One capture of many interfaces with its interfaces named the wrong way round: the same.
    single = natproof.correlate(CASE / "any.pcap", interfaces=CASE / "links.txt")
    veths = ",".join(single.inside.interfaces)
    with pytest.raises(InputError, match=f"look swapped: .*inside_if='{veths}', outside_if='eth0'"):
        natproof.correlate(CASE / "any.pcap", interfaces=CASE / "links.txt", inside_if="eth0", outside_if=veths)


def test_one_capture_of_many_interfaces_takes_the_pod_veths_and_leaves_the_secondary_eni_out(
        pair: natproof.Result) -> None:
    # No bridge: the inside point is the three routed eni veths; eth1 (the secondary ENI) carried no pod traffic.
    single = natproof.correlate(CASE / "any.pcap", interfaces=CASE / "links.txt")
    assert len(single.inside.interfaces) == 3 and all(n.startswith("eni") for n in single.inside.interfaces)
    assert single.outside.interfaces == ("eth0",)
    assert [i.note for i in single.interfaces if i.name == "eth1"][0].startswith("left out")
    assert mappings(single) == mappings(pair)


@pytest.mark.parametrize("side", ["inside", "outside"])
def test_one_capture_and_the_kernels_record_agree_and_infer_the_vpc(side: str, pair: natproof.Result) -> None:
    capture = dict(zip(("inside", "outside"), capture_pair(CASE), strict=True))[side]
    result = natproof.correlate(capture, conntrack=CASE / "conntrack" / "list.txt")
    # The outside capture holds no pod address but the excluded and VPC ones: the record's SNATed sources are the
    # pods (before: no pod network, so the excluded network read as internal).
    assert result.pod_networks == ("10.0.0.0/16",), result.pod_networks_why
    assert [(c["proto"], c["verdict"], c["original"], c["translated"]) for c in rows(result)] == \
        [(c["proto"], c["verdict"], c["original"], c["translated"]) for c in rows(pair)]
    assert [f.kind for f in diagnose(result)] == ["healthy", "snat_exclusion"]


def test_the_readme_example_is_what_the_command_prints(tmp_path: Path) -> None:
    from natproof.cli import main

    readme = (CASE.parent.parent / "README.md").read_text()
    block = readme.split("$ natproof correlate captures/eks-vpc-cni/inside.pcap", 1)[1].split("```", 1)[0]
    shown = [line for line in block.splitlines()[1:] if line.strip()]
    out = tmp_path / "t.txt"
    assert main(["correlate", *map(str, capture_pair(CASE)), "--format", "table", "--quiet", "-o", str(out)]) == 0
    printed = [line.rstrip() for line in out.read_text().splitlines() if line.strip()]
    assert len(shown) > 30 and shown == printed
    quoted = " ".join(readme.split("and `natproof diagnose` says of the excluded network: \"", 1)[1].split('."', 1)[0]
                      .split())
    assert any(quoted + "." == f.summary for f in diagnose(natproof.correlate(*capture_pair(CASE))))
