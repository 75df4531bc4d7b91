"""Tests of natproof/names.py: kubectl dumps and ptcpdump comments name the pods and Services of a correlation."""

from __future__ import annotations

import ipaddress
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from pcapbytes import pcap, tcp_pair

from natproof.assemble import Services
from natproof.check import capture_pair, compare, load_truth
from natproof.cli import main
from natproof.correlate import correlate
from natproof.errors import InputError
from natproof.names import Names, is_ptcpdump, parse_timestamp, read_comments

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
T0 = 1_700_000_000 * 10**9
"""tcp_pair's first packet: 2023-11-14T22:13:20Z."""


def stamp(ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ns // 10**9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(ns: str, name: str, *ips: str, created: int | None = None, deleted: int | None = None,
        phase: str = "Running", finished: int | None = None, host_network: bool = False,
        containers: tuple[str, ...] = ("app",), uid: str | None = None) -> dict[str, Any]:
    """A Pod as kubectl get pods -o json writes it (the fields natproof reads, and a few it does not)."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid or f"uid-{ns}-{name}"}
    if created is not None:
        meta["creationTimestamp"] = stamp(created)
    if deleted is not None:
        meta["deletionTimestamp"] = stamp(deleted)
    status: dict[str, Any] = {"phase": phase, "hostIP": "192.0.2.10", "hostIPs": [{"ip": "192.0.2.10"}]}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    if finished is not None:
        status["containerStatuses"] = [{"name": c, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                                             "finishedAt": stamp(finished)}}}
                                       for c in containers]
    spec: dict[str, Any] = {"nodeName": "node-a", "containers": [{"name": c, "image": "busybox"} for c in containers]}
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def service(ns: str, name: str, cluster_ip: str, *ports: dict[str, Any], type_: str = "ClusterIP") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": type_, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": list(ports)}}


def endpoint_slice(ns: str, service_name: str, *endpoints: tuple[str, str | None]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name}-x7k2p", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "endpoints": [{"addresses": [a], "conditions": {"ready": True},
                           **({"targetRef": {"kind": "Pod", "name": p, "namespace": ns}} if p else {})}
                          for a, p in endpoints],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def kube_list(*items: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(items), "metadata": {"resourceVersion": ""}}


SUB = ("a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', beginning and ending with a letter or digit, "
       "at most 253 characters")
"""Kubernetes' rule for a pod's name, as natproof's message says it."""
LABEL = ("a DNS-1123 label: lower-case letters, digits and '-', beginning and ending with a letter or digit, at most "
         "63 characters")
"""Kubernetes' rule for a namespace's name, as natproof's message says it."""


def write(tmp_path: Path, name: str, doc: Any) -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=4))
    return p


# -- reading dumps ----------------------------------------------------------------------------------------------


def test_pods_dump_names_each_address_dual_stack_both_and_never_a_host_network_pod(tmp_path: Path) -> None:
    dump = kube_list(
        pod("kube-system", "coredns-5d78c9869d-abcde", "10.244.1.7", "fd00:10:244:1::7", created=T0),
        pod("kube-system", "kube-proxy-x2x9k", "192.0.2.10", host_network=True, containers=("kube-proxy",)),
        pod("default", "pending-0"),  # not scheduled yet: no address
    )
    names = Names.load(write(tmp_path, "pods.json", dump))
    assert names.pod_at("10.244.1.7", T0 + 10**9).name == "kube-system/coredns-5d78c9869d-abcde"
    # kubectl writes status.podIPs in its own text; natproof's addresses are inet_ntop's.
    assert names.pod_at(str(ipaddress.ip_address("fd00:10:244:1:0::7")), T0).name == (
        "kube-system/coredns-5d78c9869d-abcde")
    # The node's address is kube-proxy's podIP, and every host-network pod's and the node's own: no pod's.
    assert names.pod_at("192.0.2.10", T0).name is None and not names.pod_at("192.0.2.10", T0).ambiguous
    assert names.sources[0] | {"path": ""} == {"path": "", "kind": "kubectl", "pods": 1, "services": 0, "endpoints": 0,
                                               "host_network_pods": 1}
    # A pod with one container: the container is known.
    assert names.pod_at("10.244.1.7", T0).container == "app"


def test_ip_reused_over_time_is_resolved_by_the_dumps_timestamps(tmp_path: Path) -> None:
    hour = 3600 * 10**9
    dump = kube_list(
        # A Job's pod that completed at T0 + 1 h, then its address went to a new pod created at T0 + 2 h.
        pod("batch", "report-28473920-q8x7w", "10.244.2.5", created=T0, phase="Succeeded", finished=T0 + hour),
        pod("web", "api-7c9f8d6b5-m4n2p", "10.244.2.5", created=T0 + 2 * hour),
    )
    names = Names.load(write(tmp_path, "pods.json", dump))
    assert names.pod_at("10.244.2.5", T0 + hour // 2).name == "batch/report-28473920-q8x7w"
    assert names.pod_at("10.244.2.5", T0 + 3 * hour).name == "web/api-7c9f8d6b5-m4n2p"
    # Between the two nobody known held it: both named as candidates, neither picked.
    gap = names.pod_at("10.244.2.5", T0 + hour + hour // 2)
    assert gap.name is None and gap.candidates == ("batch/report-28473920-q8x7w", "web/api-7c9f8d6b5-m4n2p")


def test_ip_reuse_without_timestamps_or_overlapping_is_ambiguous(tmp_path: Path) -> None:
    no_times = Names.load(write(tmp_path, "a.json", kube_list(pod("a", "one", "10.244.3.3"),
                                                              pod("b", "two", "10.244.3.3"))))
    m = no_times.pod_at("10.244.3.3", T0)
    assert m.name is None and m.candidates == ("a/one", "b/two") and m.ambiguous
    # A terminating pod (deletionTimestamp in its grace period) and its replacement that already has the address.
    overlap = Names.load(write(tmp_path, "b.json", kube_list(
        pod("a", "old", "10.244.3.4", created=T0 - 10**12, deleted=T0 + 30 * 10**9),
        pod("a", "new", "10.244.3.4", created=T0 - 10 * 10**9))))
    assert overlap.pod_at("10.244.3.4", T0).candidates == ("a/new", "a/old")
    assert overlap.pod_at("10.244.3.4", T0 - 60 * 10**9).name == "a/old"
    # The same pod in two dumps (same uid) is one pod, not a reuse.
    twice = Names.load(write(tmp_path, "c.json", kube_list(pod("a", "web-0", "10.244.3.5", created=T0))),
                       write(tmp_path, "d.json", kube_list(pod("a", "web-0", "10.244.3.5", created=T0,
                                                               deleted=T0 + 10**12))))
    assert twice.pod_at("10.244.3.5", T0 + 10**9).name == "a/web-0"


def test_naming_a_whole_result_agrees_with_pod_at_row_by_row() -> None:
    import random

    import polars as pl

    from natproof.names import PodEntry

    rng = random.Random(11)
    sec = 10**9
    pods = []
    for i in range(60):
        start = rng.choice([None, T0 + rng.randrange(0, 100) * sec])
        end = rng.choice([None, None, (start or T0) + rng.randrange(0, 50) * sec])
        pods.append(PodEntry(f"ns{i % 3}", f"p{i % 25}", (f"10.244.0.{rng.randrange(8)}",), start, end,
                             containers=("app",) if i % 2 else ("app", "sidecar"), uid=f"u{i}"))
    names = Names(pods=tuple(pods))
    rows = [(i, i, T0 + rng.randrange(-10, 160) * sec, rng.choice([None, *(f"10.244.0.{a}" for a in range(10))]))
            for i in range(400)]
    frame = pl.DataFrame(rows, schema={"_row": pl.UInt32, "conn": pl.UInt32, "first_ts_ns": pl.Int64,
                                       "addr": pl.String}, orient="row")
    got = names._name_addresses(frame)
    for (_, _, ts, addr), (name, cands, container) in zip(rows, got.select("name", "candidates", "container")
                                                          .iter_rows(), strict=True):
        want = names.pod_at(addr, ts)
        assert (name, tuple(cands or ()), container) == (want.name, want.candidates, want.container), (addr, ts)


def test_services_and_endpoint_slices(tmp_path: Path) -> None:
    dump = kube_list(
        service("kube-system", "kube-dns", "10.96.0.10", {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}),
        service("default", "web", "172.20.4.9", {"name": "http", "port": 80, "nodePort": 8080,
                                                 "targetPort": 8080}, type_="NodePort"),
        endpoint_slice("default", "web", ("10.244.0.21", "web-6b7f9c4d8-kq2zt"), ("198.51.100.7", None)),
    )
    names = Names.load(write(tmp_path, "svc.json", dump))
    assert names.service("ClusterIP", "10.96.0.10", 53, "udp") == ("kube-system/kube-dns", "dns")
    assert names.service("ClusterIP", "10.96.0.10", 53, "tcp") == ("kube-system/kube-dns", "dns-tcp")
    assert names.service("ClusterIP", "10.96.0.10", 99, "tcp") == ("kube-system/kube-dns", None)
    assert names.service("NodePort", "203.0.113.2", 8080, "tcp") == ("default/web", "http")
    # The targetRef names the backend pod (no pods dump given, so no timestamps: held at any time).
    assert names.pod_at("10.244.0.21", T0).name == "default/web-6b7f9c4d8-kq2zt"
    assert names.pod_at("198.51.100.7", T0).name is None
    # Recognition: a ClusterIP outside 10.96.0.0/12 and a nodePort outside 30000-32767 are Services now.
    svc = names.recognise(Services())
    assert ipaddress.ip_network("172.20.4.9/32") in svc.networks and svc.node_ports == (8080,)
    assert names.recognise(svc) == svc


def test_every_form_kubectl_writes(tmp_path: Path) -> None:
    one = pod("default", "web-0", "10.244.0.5", created=T0)
    # kubectl get pod web-0 -o json: one object.
    assert Names.load(write(tmp_path, "one.json", one)).pod_at("10.244.0.5", T0).name == "default/web-0"
    # NDJSON (jq -c '.items[]'): objects one per line, a List among them.
    lines = "\n".join(json.dumps(o) for o in (one, kube_list(pod("default", "web-1", "10.244.0.6"))))
    ndjson = Names.load(write(tmp_path, "pods.ndjson", lines + "\n"))
    assert ndjson.pod_at("10.244.0.6", None).name == "default/web-1"
    # The API's PodList (kubectl get --raw), whose items leave their kind out.
    raw = {"kind": "PodList", "apiVersion": "v1", "items": [{k: v for k, v in one.items() if k != "kind"}]}
    assert Names.load(write(tmp_path, "raw.json", raw)).pod_at("10.244.0.5", None).name == "default/web-0"
    # v1 Endpoints (kubectl get endpoints) name backends too.
    ep = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "default"},
          "subsets": [{"addresses": [{"ip": "10.244.0.9", "targetRef": {"kind": "Pod", "name": "web-2",
                                                                       "namespace": "default"}}]}]}
    assert Names.load(write(tmp_path, "ep.json", ep)).pod_at("10.244.0.9", None).name == "default/web-2"


@pytest.mark.parametrize(("content", "problem"), [
    ("", "empty file; give the output of kubectl get pods -A -o json"),
    ("apiVersion: v1\nitems: []\nkind: List\n", "looks like YAML; natproof reads JSON: kubectl get ... -o json"),
    ("NAME   READY   STATUS\n", "not JSON (starts with 'NAME   READY')"),
    ('"just a string"', "JSON, but not an object or a list (starts with '\"just a stri')"),
    ('{"kind": "List", "items": [', "not valid JSON (line 1 column 28: Expecting value)"),
    (json.dumps(kube_list()), "an empty List (no items): kubectl found nothing to dump; check the context and "
                              "give -A for every namespace"),
    (json.dumps(kube_list({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}})),
     "no Pod, Service or EndpointSlice in it (Deployment x1)"),
    ("[1, 2]", "not a kubectl JSON dump (a number where an object with kind belongs)"),
    (json.dumps(kube_list({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                           "spec": {"ports": [{"port": "eighty"}]}})), "Service default/x is not shaped as "
                                                                        "kubectl writes it (spec.ports[0].port "
                                                                        "'eighty' is no port number)"),
    # It was "Service ?/x" (a new user's trial): an object written without a namespace is read into "default", as
    # kubectl would put it, and the message names it where it was read.
    (json.dumps(kube_list({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": None},
                           "spec": {}, "status": {"podIP": "10.244.0.300"}})),
     "Pod default/p is not shaped as kubectl writes it (status.podIP '10.244.0.300' is not an IP address)"),
    (json.dumps(kube_list({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                           "metadata": {"name": "x-abc", "namespace": ""}, "ports": [{"port": 65536}]})),
     "EndpointSlice default/x-abc is not shaped as kubectl writes it (ports[0].port 65536 is out of range "
     "(0-65535))"),
    # A port out of range went on to a polars column of UInt16: an internal error, exit 70 (new user's break test).
    (json.dumps(kube_list({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "d"},
                           "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 99999}]}})),
     "Service d/x is not shaped as kubectl writes it (spec.ports[0].port 99999 is out of range (1-65535))"),
    (json.dumps(kube_list({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "d"},
                           "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": -5}]}})),
     "Service d/x is not shaped as kubectl writes it (spec.ports[0].nodePort -5 is out of range (1-65535))"),
    # A Service of "spec": null read as a ClusterIP Service of no address and no port, accepted without a word
    # (a helper's break test); a spec or metadata of another JSON type is refused the same way, naming the item.
    (json.dumps(kube_list(service("d", "web", "10.96.0.50", {"port": 80}),
                          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "d"},
                           "spec": None})),
     "Service d/x is not shaped as kubectl writes it (spec is null, not an object)"),
    (json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "d"}, "spec": []}),
     "Service d/x is not shaped as kubectl writes it (spec is an array, not an object)"),
    (json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "d"}}),
     "Service d/x is not shaped as kubectl writes it (spec is missing, not an object)"),
    (json.dumps(kube_list(service("d", "web", "10.96.0.50", {"port": 80}),
                          {"apiVersion": "v1", "kind": "Service", "metadata": None,
                           "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 80}]}})),
     "Service #2 of the file is not shaped as kubectl writes it (metadata is null, not an object)"),
    (json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": "x", "spec": {"ports": [{"port": 80}]}}),
     "Service #1 of the file is not shaped as kubectl writes it (metadata is a string, not an object)"),
    (json.dumps(kube_list(pod("d", "web-0", "10.244.0.5") | {"spec": None})),
     "Pod d/web-0 is not shaped as kubectl writes it (spec is null, not an object)"),
    (json.dumps(kube_list(endpoint_slice("d", "web", ("10.244.0.5", "web-0")) | {"metadata": 7})),
     "EndpointSlice #1 of the file is not shaped as kubectl writes it (metadata is a number, not an object)"),
])
def test_bad_dumps_are_one_clear_error_naming_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = write(tmp_path, "dump.json", content)
    with pytest.raises(InputError) as err:
        Names.load(path)
    assert str(err.value).startswith(f"{path}: {problem}")


def test_cli_bad_dump_exit_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yaml = write(tmp_path, "pods.yaml", "apiVersion: v1\nkind: List\nitems:\n- kind: Pod\n")
    case = CAPTURES / "hairpin"
    code = main(["correlate", str(case / "inside.pcap"), str(case / "outside.pcap"), "--pods", str(yaml)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"natproof: error: {yaml}: looks like YAML; natproof reads JSON: kubectl get ... -o json\n"
    code = main(["who", "10.96.0.50:80", str(case / "inside.pcap"), str(case / "outside.pcap"),
                 "--services", str(tmp_path / "missing.json")])
    assert code == 2 and capsys.readouterr().err == f"natproof: error: {tmp_path / 'missing.json'}: no such file\n"
    # A Service item of "spec": null: one line naming the file and the item, exit 2, nothing on stdout.
    null_spec = write(tmp_path, "svc.json", kube_list({"apiVersion": "v1", "kind": "Service",
                                                       "metadata": {"name": "web", "namespace": "shop"},
                                                       "spec": None}))
    code = main(["correlate", str(case / "inside.pcap"), str(case / "outside.pcap"), "--services", str(null_spec)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (f"natproof: error: {null_spec}: Service shop/web is not shaped as kubectl writes it (spec is "
                   "null, not an object)\n")


def _full_dump() -> dict[str, Any]:
    """A List of every kind natproof reads, with every field it reads (and a few it does not), as kubectl writes
    them: the base of the shape tests below."""
    done = pod("batch", "job-x7k2p", "10.244.0.7", created=T0, phase="Succeeded", finished=T0 + 10**9)
    done["metadata"]["deletionTimestamp"] = stamp(T0 + 2 * 10**9)
    done["status"]["startTime"] = stamp(T0)
    lb = service("shop", "web", "10.96.0.50", {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080,
                                               "targetPort": "http"}, type_="LoadBalancer")
    lb["spec"]["externalIPs"] = ["192.0.2.80"]
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.80"}, {"hostname": "lb.example.com"}]}}
    endpoints = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"},
                 "subsets": [{"addresses": [{"ip": "10.244.0.9", "nodeName": "node-a",
                                             "targetRef": {"kind": "Pod", "name": "web-2", "namespace": "shop"}}],
                              "notReadyAddresses": [{"ip": "10.244.0.10"}], "ports": [{"port": 8080}]}]}
    return kube_list(pod("default", "web-0", "10.244.0.5", "fd00:10:244::5", created=T0), done, lb,
                     endpoint_slice("shop", "web", ("10.244.0.9", "web-2")), endpoints)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value in a JSON document, objects and arrays included (not the document itself)."""
    out = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _leaves(v, (*path, i))
    return out


@pytest.mark.parametrize("replacement", [None, "x", "", 7, 1.5, True, [], {}, ["x"], [7], [{}]],
                         ids=["null", "string", "empty", "number", "float", "bool", "array", "object", "strings",
                              "numbers", "objects"])
def test_any_field_of_any_shape_is_read_or_one_clear_error(tmp_path: Path, replacement: Any) -> None:
    """Whatever a field holds instead of what kubectl writes there, Names.load reads the dump or raises InputError
    naming the file, the item and the field: never a Python exception's own words (AttributeError: 'str' object has
    no attribute 'get', KeyError: 'name', Invalid isoformat string)."""
    import copy

    base = _full_dump()
    assert Names.load(write(tmp_path, "base.json", base)).pods  # the base itself reads
    for n, where in enumerate(_leaves(base)):
        doc = copy.deepcopy(base)
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        parent[where[-1]] = replacement
        path = write(tmp_path, f"d{n}.json", doc)
        try:
            Names.load(path)
        except InputError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: "), (where, message)
            for internal in ("Error:", "Error(", "object has no attribute", "isoformat", "indices must be",
                             "does not appear to be", "unhashable"):
                assert internal not in message, (where, message)
            _, shaped, reason = message.partition(" is not shaped as kubectl writes it (")
            if shaped:  # an item's field: named by its path in the item (status.podIPs[0].ip ...)
                assert len(where) > 2 and reason.startswith(str(where[2])), (where, message)


@pytest.mark.parametrize(("item", "problem"), [
    # A new user's break tests: the Python error's words came out ('str' object has no attribute 'get', KeyError:
    # 'name', Invalid isoformat string).
    (pod("n", "p", "10.244.0.10") | {"status": {"podIPs": "10.244.0.10"}},
     "Pod n/p is not shaped as kubectl writes it (status.podIPs is a string, not an array of objects such as "
     '{"ip": "10.244.0.5"})'),
    (pod("n", "p", "10.244.0.10") | {"status": {"podIPs": ["10.244.0.10"]}},
     "Pod n/p is not shaped as kubectl writes it (status.podIPs[0] is a string, not an object such as "
     '{"ip": "10.244.0.5"})'),
    (pod("n", "p", "10.244.0.10") | {"metadata": {"namespace": "n"}},
     "Pod #1 of the file is not shaped as kubectl writes it (metadata.name is missing)"),
    (pod("n", "p", "10.244.0.10") | {"metadata": {"name": "p", "namespace": "n", "creationTimestamp": "yesterday"}},
     "Pod n/p is not shaped as kubectl writes it (metadata.creationTimestamp 'yesterday' is not a time as "
     "Kubernetes writes it (RFC 3339, e.g. 2024-05-01T10:00:00Z))"),
    (pod("n", "p", "10.244.0.10", phase="Failed", finished=T0) | {"status": {
        "podIP": "10.244.0.10", "phase": "Failed",
        "containerStatuses": [{"name": "app", "state": {"terminated": {"finishedAt": "garbage"}}}]}},
     "Pod n/p is not shaped as kubectl writes it (status.containerStatuses[0].state.terminated.finishedAt "
     "'garbage' is not a time"),
    (pod("n", "p") | {"status": {"podIP": 12345}},
     "Pod n/p is not shaped as kubectl writes it (status.podIP is a number, not a string)"),
    (pod("n", "p") | {"status": {"podIP": "not-an-ip"}},
     "Pod n/p is not shaped as kubectl writes it (status.podIP 'not-an-ip' is not an IP address)"),
    (pod("n", "p", "10.244.0.10") | {"spec": {"hostNetwork": "yes"}},
     "Pod n/p is not shaped as kubectl writes it (spec.hostNetwork is a string, not a boolean (true or false))"),
    (pod("n", "p", "10.244.0.10") | {"spec": {"containers": ["app"]}},
     "Pod n/p is not shaped as kubectl writes it (spec.containers[0] is a string, not an object)"),
    (pod("n", "p", "10.244.0.10") | {"metadata": {"name": "p", "namespace": 7}},
     "Pod ?/p is not shaped as kubectl writes it (metadata.namespace is a number, not a string)"),
    (service("shop", "web", "10.96.0.9", {"port": 80, "protocol": "SCTP2"}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].protocol 'SCTP2' is not TCP, UDP or SCTP)"),
    (service("shop", "web", "10.96.0.9", {"port": True}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].port True is no port number)"),
    (service("shop", "web", "10.96.0.9", {"protocol": "TCP"}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].port is missing, not a port number)"),
    (endpoint_slice("shop", "web", ("bogus", "web-0")),
     "EndpointSlice shop/web-x7k2p is not shaped as kubectl writes it (endpoints[0].addresses[0] 'bogus' is not an "
     "IP address)"),
    ({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"},
      "subsets": [{"addresses": [{"hostname": "web-0"}]}]},
     "Endpoints shop/web is not shaped as kubectl writes it (subsets[0].addresses[0].ip is null, not an IP address)"),
    # A new user's trial: ports no API server writes were read without a word (an EndpointSlice's and Endpoints'
    # were never looked at, nor a targetPort; a port's digits as a string passed for the number).
    (endpoint_slice("shop", "web", ("10.244.0.5", "web-0")) | {"ports": [{"port": 99999, "protocol": "TCP"}]},
     "EndpointSlice shop/web-x7k2p is not shaped as kubectl writes it (ports[0].port 99999 is out of range "
     "(0-65535))"),
    (endpoint_slice("shop", "web", ("10.244.0.5", "web-0")) | {"ports": [{"port": -1, "protocol": "TCP"}]},
     "EndpointSlice shop/web-x7k2p is not shaped as kubectl writes it (ports[0].port -1 is out of range (0-65535))"),
    ({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"},
      "subsets": [{"addresses": [{"ip": "10.244.0.5"}], "ports": [{"port": 0, "protocol": "TCP"}]}]},
     "Endpoints shop/web is not shaped as kubectl writes it (subsets[0].ports[0].port 0 is out of range (1-65535))"),
    (service("shop", "web", "10.96.0.9", {"port": -80}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].port -80 is out of range (1-65535))"),
    (service("shop", "web", "10.96.0.9", {"port": 80, "targetPort": 70000}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].targetPort 70000 is out of range "
     "(1-65535))"),
    (service("shop", "web", "10.96.0.9", {"port": 80, "targetPort": -1}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].targetPort -1 is out of range (1-65535))"),
    (service("shop", "web", "10.96.0.9", {"port": 80, "nodePort": 65536}, type_="NodePort"),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].nodePort 65536 is out of range "
     "(1-65535))"),
    (service("shop", "web", "10.96.0.9", {"port": "80"}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].port '80' is a string, not a number "
     "(kubectl writes a port as a number: 80))"),
    (service("shop", "web", "10.96.0.9", {"port": 80, "nodePort": "30080"}, type_="NodePort"),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].nodePort '30080' is a string, not a number "
     "(kubectl writes a port as a number: 30080))"),
    (service("shop", "web", "10.96.0.9", {"port": 80, "targetPort": "8080"}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].targetPort '8080' is a string, not a "
     "number (kubectl writes a port as a number: 8080))"),
    (service("shop", "web", "10.96.0.9", {"port": 80, "targetPort": "HTTP"}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].targetPort 'HTTP' is neither a port number "
     "nor a port's name (IANA_SVC_NAME: at most 15 lower-case letters, digits and inner hyphens, such as 'http'))"),
    (service("shop", "web", "10.96.0.9", {"port": 80, "targetPort": 80.5}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].targetPort 80.5 is no port number)"),
    # The same trial: a protocol in lower case was read as the API's (the API refuses it).
    (service("shop", "web", "10.96.0.9", {"port": 80, "protocol": "tcp"}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[0].protocol 'tcp' is not TCP, UDP or SCTP "
     "(the API spells it 'TCP'))"),
    (service("shop", "web", "10.96.0.9", {"port": 53, "protocol": "TCP"}, {"port": 53, "protocol": "Udp"}),
     "Service shop/web is not shaped as kubectl writes it (spec.ports[1].protocol 'Udp' is not TCP, UDP or SCTP "
     "(the API spells it 'UDP'))"),
    (endpoint_slice("shop", "web", ("10.244.0.5", "web-0")) | {"ports": [{"port": 8080, "protocol": "sctp"}]},
     "EndpointSlice shop/web-x7k2p is not shaped as kubectl writes it (ports[0].protocol 'sctp' is not TCP, UDP or "
     "SCTP (the API spells it 'SCTP'))"),
    ({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"},
      "subsets": [{"addresses": [{"ip": "10.244.0.5"}], "ports": [{"port": 8080, "protocol": "HTTP"}]}]},
     "Endpoints shop/web is not shaped as kubectl writes it (subsets[0].ports[0].protocol 'HTTP' is not TCP, UDP "
     "or SCTP)"),
    # The same trial: status.podIP was not read when status.podIPs was there, bad or not, nor compared with it.
    (pod("n", "p", "10.244.0.10") | {"status": {"podIP": "10.244.0.300", "podIPs": [{"ip": "10.244.0.10"}]}},
     "Pod n/p is not shaped as kubectl writes it (status.podIP '10.244.0.300' is not an IP address)"),
    (pod("n", "p", "10.244.0.10") | {"status": {"podIP": "10.244.0.11", "podIPs": [{"ip": "10.244.0.10"}]}},
     "Pod n/p is not shaped as kubectl writes it (status.podIP '10.244.0.11' is not status.podIPs[0].ip "
     "'10.244.0.10'; the API keeps them equal)"),
    (pod("n", "p", "10.244.0.10") | {"status": {"podIP": "fd00:10:244::10",
                                                "podIPs": [{"ip": "10.244.0.10"}, {"ip": "fd00:10:244::10"}]}},
     "Pod n/p is not shaped as kubectl writes it (status.podIP 'fd00:10:244::10' is not status.podIPs[0].ip "
     "'10.244.0.10'; the API keeps them equal)"),
    (pod("n", "p", "10.244.0.10") | {"status": {"podIP": "", "podIPs": [{"ip": "10.244.0.10"}]}},
     "Pod n/p is not shaped as kubectl writes it (status.podIP '' is not status.podIPs[0].ip '10.244.0.10'; the API "
     "keeps them equal)"),
    # The same trial: a pod named "a/b" was read, and named "n/a/b" (which who would read as namespace n, pod a/b);
    # names the API never allows (a "/", capitals, a space, too long) are refused, the object then named by its place.
    (pod("n", "a/b", "10.244.0.10"),
     "Pod #1 of the file is not shaped as kubectl writes it (metadata.name 'a/b' is no pod name Kubernetes allows "
     f"({SUB}))"),
    (pod("n", "Web-0", "10.244.0.10"), "Pod #1 of the file is not shaped as kubectl writes it (metadata.name 'Web-0' "
                                       "is no pod name Kubernetes allows (a DNS-1123 subdomain"),
    (pod("n", "web-0.", "10.244.0.10"), "Pod #1 of the file is not shaped as kubectl writes it (metadata.name "
                                        "'web-0.' is no pod name Kubernetes allows"),
    (pod("n", "w" * 254, "10.244.0.10"), "Pod #1 of the file is not shaped as kubectl writes it (metadata.name "
                                         f"'{'w' * 254}' is no pod name Kubernetes allows"),
    (pod("a/b", "p", "10.244.0.10"),
     "Pod ?/p is not shaped as kubectl writes it (metadata.namespace 'a/b' is no namespace name Kubernetes allows "
     f"({LABEL}))"),
    (pod("kube.system", "p", "10.244.0.10"), "Pod ?/p is not shaped as kubectl writes it (metadata.namespace "
                                             "'kube.system' is no namespace name Kubernetes allows (a DNS-1123 label"),
    (pod("n", "p", "10.244.0.10", containers=("app", "side car")),
     "Pod n/p is not shaped as kubectl writes it (spec.containers[1].name 'side car' is no container name Kubernetes "
     "allows (a DNS-1123 label"),
    (service("shop", "9web", "10.96.0.9", {"port": 80}),
     "Service #1 of the file is not shaped as kubectl writes it (metadata.name '9web' is no Service name Kubernetes "
     "allows (a DNS-1035 label: lower-case letters, digits and '-', beginning with a letter and ending with a letter "
     "or digit, at most 63 characters))"),
    (service("a b", "web", "10.96.0.9", {"port": 80}),
     "Service ?/web is not shaped as kubectl writes it (metadata.namespace 'a b' is no namespace name Kubernetes "
     "allows"),
    (endpoint_slice("shop", "web", ("10.244.0.5", "web/0")),
     "EndpointSlice shop/web-x7k2p is not shaped as kubectl writes it (endpoints[0].targetRef.name 'web/0' is no pod "
     "name Kubernetes allows"),
    (endpoint_slice("shop", "web", ("10.244.0.5", "web-0")) | {"endpoints": [{
        "addresses": ["10.244.0.5"], "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "Shop"}}]},
     "EndpointSlice shop/web-x7k2p is not shaped as kubectl writes it (endpoints[0].targetRef.namespace 'Shop' is no "
     "namespace name Kubernetes allows"),
    (endpoint_slice("shop", "we/b", ("10.244.0.5", "web-0")) | {"metadata": {
        "name": "web-x7k2p", "namespace": "shop", "labels": {"kubernetes.io/service-name": "we/b"}}},
     "EndpointSlice shop/web-x7k2p is not shaped as kubectl writes it (metadata.labels['kubernetes.io/service-name'] "
     "'we/b' is no Service name Kubernetes allows"),
    ({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web_1", "namespace": "shop"},
      "subsets": [{"addresses": [{"ip": "10.244.0.5"}]}]},
     "Endpoints #1 of the file is not shaped as kubectl writes it (metadata.name 'web_1' is no Endpoints name "
     "Kubernetes allows (a DNS-1123 subdomain"),
    # The same trial: spec.clusterIP was not read when spec.clusterIPs was there, bad or not, nor compared with it.
    (service("shop", "web", "10.96.0.9", {"port": 80}) | {"spec": {"clusterIP": "10.96.0.999",
                                                                   "clusterIPs": ["10.96.0.9"]}},
     "Service shop/web is not shaped as kubectl writes it (spec.clusterIP '10.96.0.999' is not an IP address)"),
    (service("shop", "web", "10.96.0.9", {"port": 80}) | {"spec": {"clusterIP": "10.96.0.10",
                                                                   "clusterIPs": ["10.96.0.9"]}},
     "Service shop/web is not shaped as kubectl writes it (spec.clusterIP '10.96.0.10' is not spec.clusterIPs[0] "
     "'10.96.0.9'; the API keeps them equal)"),
    (service("shop", "web", "10.96.0.9", {"port": 80}) | {"spec": {"clusterIP": "None",
                                                                   "clusterIPs": ["10.96.0.9"]}},
     "Service shop/web is not shaped as kubectl writes it (spec.clusterIP 'None' is not spec.clusterIPs[0] "
     "'10.96.0.9'; the API keeps them equal)"),
    (service("shop", "web", "10.96.0.9", {"port": 80}) | {"spec": {"clusterIP": "", "clusterIPs": ["10.96.0.9"]}},
     "Service shop/web is not shaped as kubectl writes it (spec.clusterIP '' is not spec.clusterIPs[0] "
     "'10.96.0.9'; the API keeps them equal)"),
    (service("shop", "web", "10.96.0.9", {"port": 80}) | {"spec": {"clusterIP": "fd00:10:96::9",
                                                                   "clusterIPs": ["10.96.0.9", "fd00:10:96::9"]}},
     "Service shop/web is not shaped as kubectl writes it (spec.clusterIP 'fd00:10:96::9' is not spec.clusterIPs[0] "
     "'10.96.0.9'; the API keeps them equal)"),
    (service("shop", "web", "10.96.0.9", {"port": 80}) | {"spec": {"clusterIP": "None",
                                                                   "clusterIPs": ["None", "10.96.0.9"]}},
     "Service shop/web is not shaped as kubectl writes it (spec.clusterIPs ['None', '10.96.0.9'] holds 'None' (a "
     "headless Service) beside addresses; the API writes 'None' alone)"),
])
def test_a_malformed_field_is_named_by_its_path(tmp_path: Path, item: dict[str, Any], problem: str) -> None:
    path = write(tmp_path, "dump.json", kube_list(item))
    with pytest.raises(InputError) as err:
        Names.load(path)
    assert str(err.value).startswith(f"{path}: {problem}")


@pytest.mark.parametrize(("content", "problem"), [
    ('{"kind": ["Pod"]}', "not a kubectl JSON dump (object #1's kind is an array, not a string)"),
    ('{"kind": 5, "metadata": {}}', "not a kubectl JSON dump (object #1's kind is a number, not a string)"),
    ('{"kind": null}', "no Pod, Service or EndpointSlice in it (no kind x1)"),
    ('{"kind": "List", "items": {"a": 1}}', "not a kubectl JSON dump (the List's items is an object, not an array)"),
    ('{"kind": "List", "items": [{"kind": "Pod"}, 7]}', "not a kubectl JSON dump (item #2 is a number, not an "
                                                        "object)"),
])
def test_a_malformed_kind_or_list_is_one_clear_error(tmp_path: Path, content: str, problem: str) -> None:
    path = write(tmp_path, "dump.json", content)
    with pytest.raises(InputError) as err:
        Names.load(path)
    assert str(err.value) == f"{path}: {problem}" or str(err.value).startswith(f"{path}: {problem};")


def test_the_checks_keep_what_kubectl_writes(tmp_path: Path) -> None:
    """What the checks of ports, protocols, addresses and names must let through, as kubectl writes it: a targetPort
    that names the pods' port, an EndpointSlice port of no number ("all ports") or 0, ports at both ends of the
    range, a protocol left out (TCP, as the API defaults it), a headless Service, a dual-stack one (its clusterIP
    the first of its clusterIPs, written otherwise), a dump of clusterIP alone or of clusterIPs alone."""
    named = service("shop", "web", "10.96.0.50", {"name": "http", "port": 1, "targetPort": "http-alt"},
                    {"name": "top", "port": 65535, "targetPort": 65535, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "assoc", "port": 9, "protocol": "SCTP"},
                    type_="NodePort")
    everything = endpoint_slice("shop", "web", ("10.244.0.5", "web-0")) | {"ports": [{"port": None,
                                                                                      "protocol": "TCP"},
                                                                                     {"name": "z", "port": 0,
                                                                                      "protocol": "UDP"}]}
    headless = service("shop", "db", "None", {"port": 5432})
    dual = service("shop", "dual", "10.96.0.60", {"port": 80}) | {"spec": {
        "clusterIP": "fd00:10:96:0::60", "clusterIPs": ["fd00:10:96::60", "10.96.0.60"], "ports": [{"port": 80}]}}
    old = service("shop", "old", "10.96.0.70", {"port": 80})
    del old["spec"]["clusterIPs"]  # a cluster before 1.20 wrote clusterIP alone
    trimmed = service("shop", "trimmed", "10.96.0.80", {"port": 80})
    del trimmed["spec"]["clusterIP"]  # a dump trimmed by jq: the list alone
    spaceless = service("shop", "bare", "10.96.0.90", {"port": 80})
    del spaceless["metadata"]["namespace"]  # read into "default", as kubectl puts an object written without one
    names = Names.load(write(tmp_path, "svc.json", kube_list(named, everything, headless, dual, old, trimmed,
                                                             spaceless)))
    assert {s.full_name: s.cluster_ips for s in names.services} == {
        "shop/web": ("10.96.0.50",), "shop/db": (), "shop/dual": ("fd00:10:96::60", "10.96.0.60"),
        "shop/old": ("10.96.0.70",), "shop/trimmed": ("10.96.0.80",), "default/bare": ("10.96.0.90",)}
    web = names.services[0]
    # Pods: dual-stack (podIP the first of podIPs, written otherwise), podIP alone (before 1.16), podIPs alone.
    dual_pod = pod("shop", "dual-0", "fd00:10:244::20", "10.244.0.20")
    dual_pod["status"]["podIP"] = "fd00:10:244:0:0::20"
    alone = pod("shop", "alone-0", "10.244.0.21")
    del alone["status"]["podIPs"]
    listed = pod("shop", "listed-0", "10.244.0.22")
    del listed["status"]["podIP"]
    # Names at the edges of what the API allows: dots in a pod's name, 253 characters, a namespace of 63, digits first.
    dotted = pod("shop", "web-0.v2.x", "10.244.0.23", containers=("app", "istio-proxy"))
    longest = pod("n" * 63, "p" * 253, "10.244.0.24")
    digits = pod("0ns", "0pod", "10.244.0.25")
    pods = Names.load(write(tmp_path, "pods.json", kube_list(dual_pod, alone, listed, dotted, longest, digits)))
    assert {p.full_name: p.addresses for p in pods.pods} == {
        "shop/dual-0": ("fd00:10:244::20", "10.244.0.20"), "shop/alone-0": ("10.244.0.21",),
        "shop/listed-0": ("10.244.0.22",), "shop/web-0.v2.x": ("10.244.0.23",), f"{'n' * 63}/{'p' * 253}":
        ("10.244.0.24",), "0ns/0pod": ("10.244.0.25",)}
    assert [(p.port, p.target_port, p.node_port, p.proto) for p in web.ports] == [
        (1, "http-alt", None, "tcp"), (65535, 65535, 30080, "tcp"), (53, None, None, "udp"), (9, None, None, "sctp")]
    assert names.service("ClusterIP", "10.96.0.50", 53, "udp") == ("shop/web", "dns")
    assert names.service("ClusterIP", "10.96.0.50", 65535, "tcp") == ("shop/web", "top")
    assert names.pod_at("10.244.0.5", T0).name == "shop/web-0"


def test_what_real_kubectl_output_holds_is_read(tmp_path: Path) -> None:
    """Shapes a cluster's real dumps hold: a pod not yet given an address, a host-network pod (and one whose
    spec a trimmed dump left out, known by its podIP being its node's), RFC 3339 times with fractions or a lower
    case z, an FQDN EndpointSlice (host names, no address), a load balancer known by host name only, Endpoints'
    not-ready addresses, a List of several kinds."""
    pending = pod("default", "pending-0")
    pending["status"] = {"phase": "Pending", "podIPs": [], "podIP": ""}
    trimmed = pod("kube-system", "kube-proxy-abcde", "192.0.2.10")
    trimmed["status"]["hostIPs"] = [{"ip": "192.0.2.10"}]
    host = pod("kube-system", "node-exporter-x", "192.0.2.10", host_network=True)
    fraction = pod("default", "web-0", "10.244.0.5")
    fraction["metadata"]["creationTimestamp"] = stamp(T0).replace("Z", ".123456789z")
    fqdn = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "FQDN",
            "metadata": {"name": "ext-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "ext"}},
            "endpoints": [{"addresses": ["db.example.com"]}]}
    lb = service("shop", "web", "10.96.0.50", {"port": 80})
    lb["status"] = {"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}]}}
    not_ready = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"},
                 "subsets": [{"notReadyAddresses": [{"ip": "10.244.0.12", "targetRef": {"kind": "Pod",
                                                                                        "name": "web-3"}}]}]}
    names = Names.load(write(tmp_path, "all.json", kube_list(pending, trimmed, host, fraction, fqdn, lb, not_ready)))
    assert names.sources[0]["host_network_pods"] == 2 and names.sources[0]["pods"] == 1
    assert names.pod_at("192.0.2.10", T0).name is None and not names.pod_at("192.0.2.10", T0).ambiguous
    assert names.pod_at("10.244.0.5", T0 + 10**9).name == "default/web-0"
    assert names.pod_at("10.244.0.5", T0 - 10**9).candidates == ("default/web-0",)  # created after: not then
    assert names.pod_at("10.244.0.12", T0).name == "shop/web-3"
    assert names.service("ClusterIP", "10.96.0.50", 80, "tcp") == ("shop/web", None)
    assert parse_timestamp("2024-05-01T10:00:00.5z") == parse_timestamp("2024-05-01T10:00:00Z") + 5 * 10**8


@pytest.mark.parametrize(("content", "problem"), [
    ('{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"n"},"status":{"podIPs":"10.244.0.10"},'
     '"spec":{}}', "Pod n/p is not shaped as kubectl writes it (status.podIPs is a string, not an array"),
    ('{"apiVersion":"v1","kind":"Pod","metadata":{"namespace":"n"},"status":{"podIP":"10.244.0.10"},"spec":{}}',
     "Pod #1 of the file is not shaped as kubectl writes it (metadata.name is missing)"),
    ('{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"n","creationTimestamp":"yesterday"},'
     '"status":{"podIPs":[{"ip":"10.244.0.10"}],"podIP":"10.244.0.10"},"spec":{}}',
     "Pod n/p is not shaped as kubectl writes it (metadata.creationTimestamp 'yesterday' is not a time"),
], ids=["podIPs-string", "no-name", "bad-time"])
def test_cli_a_malformed_pod_is_exit_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                                problem: str) -> None:
    dump = write(tmp_path, "pods.json", content)
    case = CAPTURES / "hairpin"
    code = main(["correlate", str(case / "inside.pcap"), str(case / "outside.pcap"), "--pods", str(dump)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith(f"natproof: error: {dump}: {problem}") and err.count("\n") == 1


# -- naming a correlation ---------------------------------------------------------------------------------------


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    a_in, a_out = tcp_pair(T0, sport=40000, nat_sport=40000)
    inside, outside = tmp_path / "inside.pcap", tmp_path / "outside.pcap"
    inside.write_bytes(pcap(a_in, linktype=101))
    outside.write_bytes(pcap(a_out, linktype=101))
    return inside, outside


def test_correlate_names_the_pod_and_flags_an_ambiguous_one(tmp_path: Path) -> None:
    inside, outside = _pair(tmp_path)
    plain = correlate(inside, outside).to_dict()
    assert "names" not in plain and "pod" not in plain["connections"][0]["inside"]

    names = Names.load(write(tmp_path, "pods.json", kube_list(pod("shop", "cart-5f6d7c8b9-zz4xq", "10.244.0.10",
                                                                  created=T0 - 10**12))))
    doc = correlate(inside, outside, names=names).to_dict()
    (c,) = doc["connections"]
    assert c["inside"]["pod"] == "shop/cart-5f6d7c8b9-zz4xq" and c["inside"]["container"] == "app"
    assert c["inside"]["pod_candidates"] is None and "ambiguous_name" not in c["flags"]
    assert doc["names"]["pods"] == 1 and doc["names"]["ambiguous"] == []
    # /1 stays /1.
    assert "pod" not in correlate(inside, outside, names=names).to_dict("natproof.correlate/1")[
        "connections"][0]["inside"]

    reused = Names.load(write(tmp_path, "reused.json", kube_list(pod("shop", "cart-a", "10.244.0.10"),
                                                                 pod("shop", "cart-b", "10.244.0.10"))))
    result = correlate(inside, outside, names=reused)
    (c,) = result.to_dict()["connections"]
    assert c["inside"]["pod"] is None and c["inside"]["pod_candidates"] == ["shop/cart-a", "shop/cart-b"]
    assert "ambiguous_name" in c["flags"]
    (amb,) = result.names["ambiguous"]
    assert amb["address"] == "10.244.0.10" and amb["connections"] == [0]
    assert amb["why"] == "10.244.0.10 was held by shop/cart-a (no timestamps); shop/cart-b (no timestamps)"
    # Every output format takes the names (CSV joins the candidates).
    from natproof.report.export import render_bytes

    csv = render_bytes(result, "csv").decode()
    assert "pod_candidates" in csv.splitlines()[0] and "shop/cart-a|shop/cart-b" in csv


def test_dump_clusterips_are_services_outside_the_configured_range() -> None:
    # captures/clusterip-local: the DNATed leg is in neither capture (the endpoints are on the node), so nothing
    # but the Service network says 10.96.0.20 and 10.96.0.10 are ClusterIPs. With a wrong --service-cidr the
    # eight connections to them read as answered out of the outside capture's sight; the dump's ClusterIPs set
    # that right.
    case = CAPTURES / "clusterip-local"
    narrow = Services(networks=(ipaddress.ip_network("10.200.0.0/16"),))
    truth = load_truth(case / "truth.json")
    plain = correlate(*capture_pair(case), services=narrow)
    assert plain.connections["verdict"].to_list().count("not_captured") == 8 and not compare(plain, truth).ok
    named = correlate(*capture_pair(case), services=narrow, names=Names.load(case / "services.json"))
    assert compare(named, truth).ok
    got = {(r["service_ip"], r["service_type"], r["verdict"], r["service_name"])
           for r in named.connections.iter_rows(named=True) if r["service_type"]}
    assert got == {("10.96.0.20", "ClusterIP", "internal", "default/web"),
                   ("10.96.0.10", "ClusterIP", "internal", "kube-system/kube-dns")}


# -- the lab's dumps name its real-kernel captures ----------------------------------------------------------------


def _lab(case: str) -> dict[str, Any]:
    d = CAPTURES / case
    names = Names.load(*(d / f for f in ("pods.json", "services.json") if (d / f).exists()))
    result = correlate(*capture_pair(d), names=names)
    # Names are added fields: the kernel's truth (service without names) still holds.
    rep = compare(result, load_truth(d / "truth.json"))
    assert rep.ok, rep.to_dict()
    return result.to_dict()


def test_lab_dump_is_shaped_as_kubectl_writes_it() -> None:
    pods = json.loads((CAPTURES / "nodeport" / "pods.json").read_text())
    svcs = json.loads((CAPTURES / "nodeport" / "services.json").read_text())
    for doc in (pods, svcs):
        assert (doc["apiVersion"], doc["kind"], doc["metadata"]) == ("v1", "List", {"resourceVersion": ""})
        assert list(doc) == sorted(doc)  # kubectl prints keys sorted
    assert {(i["apiVersion"], i["kind"]) for i in pods["items"]} == {("v1", "Pod")}
    assert {(i["apiVersion"], i["kind"]) for i in svcs["items"]} == {("v1", "Service"),
                                                                     ("discovery.k8s.io/v1", "EndpointSlice")}
    (proxy,) = [i for i in pods["items"] if i["spec"].get("hostNetwork")]
    assert proxy["status"]["podIP"] == proxy["status"]["hostIP"] == "203.0.113.2"
    for item in pods["items"]:
        assert set(item) == {"apiVersion", "kind", "metadata", "spec", "status"}
        assert parse_timestamp(item["metadata"]["creationTimestamp"]) is not None


def test_lab_clusterip_names_pod_and_services() -> None:
    doc = _lab("clusterip")
    got = {(c["inside"]["pod"], c["service"] and c["service"]["name"], c["service"] and c["service"]["port_name"])
           for c in doc["connections"]}
    assert got == {("default/pod1", "default/kubernetes", "https"), ("default/pod1", "kube-system/kube-dns", "dns"),
                   ("default/pod1", None, None)}
    # The backends are outside the cluster (no targetRef): no pod.
    assert {s["name"]: [b["pod"] for b in s["backends"]] for s in doc["services"]} == {
        "default/kubernetes": [None], "kube-system/kube-dns": [None]}


def test_lab_nodeport_names_service_and_backend_pod_never_the_node() -> None:
    doc = _lab("nodeport")
    for c in doc["connections"]:
        assert c["inside"]["pod"] == "default/pod1"
        # 10.244.0.1 (bridge, masquerade) and 198.51.100.20 (the client) are no pod; nor is the node 203.0.113.2,
        # kube-proxy's hostNetwork podIP.
        assert c["inside"]["peer_pod"] is None
        if c["initiator"] == "outside":
            svc = c["service"]
            assert (svc["type"], svc["address"], svc["backend"]["pod"]) == ("NodePort", "203.0.113.2", "default/pod1")
            assert svc["name"] == {30080: "default/web", 30081: "default/web-local"}[svc["port"]]


def test_lab_hairpin_backend_is_the_calling_pod() -> None:
    doc = _lab("hairpin")
    hair = [c for c in doc["connections"] if "hairpin" in c["flags"]]
    assert len(hair) == 3
    for c in hair:
        assert (c["inside"]["pod"], c["service"]["name"], c["service"]["backend"]["pod"]) == (
            "default/pod1", "default/self", "default/pod1")


def test_lab_clusterip_local_names_services_whose_backend_was_not_seen() -> None:
    doc = _lab("clusterip-local")
    svc = {c["service"]["name"] for c in doc["connections"] if c["service"]}
    assert svc == {"default/web", "kube-system/kube-dns"}


# -- ptcpdump's packet comments -----------------------------------------------------------------------------------


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * ((-len(value)) % 4)


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * ((-len(body)) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def ptcpdump_pcapng(rows: list[tuple[int, bytes]], comments: dict[int, list[str]], app: str = "ptcpdump v0.33.0"
                    ) -> bytes:
    """A pcapng file as ptcpdump writes it: shb_userappl, one raw-IP interface (if_tsresol 9), and each packet's
    context as opt_comment options ("PID: ...", "ContainerName: ...", "PodName: ...\\nPodNamespace: ...")."""
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, app.encode()) + _opt(0, b"")),
           _block(1, struct.pack("<HHI", 101, 0, 262144) + _opt(2, b"vethpod1") + _opt(9, b"\x09") + _opt(0, b""))]
    for i, (ts, data) in enumerate(rows):
        opts = b"".join(_opt(1, c.encode()) for c in comments.get(i + 1, []))
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
        body += data + b"\0" * ((-len(data)) % 4) + (opts + _opt(0, b"") if opts else b"")
        out.append(_block(6, body))
    return b"".join(out)


def test_ptcpdump_comments_name_the_pod_without_any_dump(tmp_path: Path) -> None:
    a_in, a_out = tcp_pair(T0, sport=40000, nat_sport=40000)
    ctx = ["PID: 4242\nCmd: curl\nArgs: curl http://198.51.100.10/",
           "ContainerName: curl\nContainerId: 3f2a\nContainerImage: curlimages/curl:8.5.0\nContainerLabels: {}",
           "PodName: client-6d9f7b8c5-p9x2w\nPodNamespace: shop\nPodUID: 1b2c\nPodLabels: {}\nPodAnnotations: {}"]
    inside = tmp_path / "inside.pcapng"
    inside.write_bytes(ptcpdump_pcapng(a_in, {i + 1: ctx for i in range(len(a_in))}))
    outside = tmp_path / "outside.pcap"
    outside.write_bytes(pcap(a_out, linktype=101))
    assert is_ptcpdump(inside) and not is_ptcpdump(outside)
    assert read_comments(inside)[1]["PodName"] == "client-6d9f7b8c5-p9x2w"
    result = correlate(inside, outside)
    (c,) = result.to_dict()["connections"]
    assert (c["inside"]["pod"], c["inside"]["container"]) == ("shop/client-6d9f7b8c5-p9x2w", "curl")
    (src,) = result.names["sources"]
    assert src == {"path": str(inside), "kind": "pcapng comments", "commented_packets": 8, "pods": 1,
                   "undecided_pods": 0}
    # A block whose length is not repeated at its end ends the capture there (natproof.capture): its comments and
    # those after it name no frame either.
    data = bytearray(ptcpdump_pcapng(a_in, {i + 1: ctx for i in range(len(a_in))}))
    off, blocks = 0, []
    while off < len(data):
        blocks.append(off)
        off += struct.unpack_from("<I", data, off + 4)[0]
    third = blocks[2 + 2]  # the section header, the interface, then the packets: frame 3's block
    blen = struct.unpack_from("<I", data, third + 4)[0]
    struct.pack_into("<I", data, third + blen - 4, blen + 4)
    cut = tmp_path / "trailer.pcapng"
    cut.write_bytes(bytes(data))
    assert sorted(read_comments(cut)) == [1, 2]
    # The same file written by another tool is not read unless names are asked for.
    other = tmp_path / "other.pcapng"
    other.write_bytes(ptcpdump_pcapng(a_in, {1: ctx}, app="Wireshark 4.2"))
    assert correlate(other, outside).names is None
    named = correlate(other, outside, names=Names())
    assert named.connections["pod"].to_list() == ["shop/client-6d9f7b8c5-p9x2w"]


# -- who -----------------------------------------------------------------------------------------------------------


def test_who_names_the_pod_behind_a_node_port_and_finds_connections_by_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    from natproof.lookup import who

    d = CAPTURES / "nodeport"
    names = Names.load(d / "pods.json", d / "services.json")
    result = correlate(*capture_pair(d), names=names)
    ans = who(result, "203.0.113.2:30081")
    assert len(ans.connections) == 2
    for c in ans.connections:
        assert c["ends"]["pod"]["name"] == "default/pod1" and c["service"]["name"] == "default/web-local"
    # By name: the pod's five connections (four it served, one it opened); the Service's two.
    assert len(who(result, "default/pod1").connections) == 5
    by_service = who(result, "web-local")
    assert [c["roles"] for c in by_service.connections] == [["Service"], ["Service"]]
    egress = result.connections.row(4, named=True)
    mid = (egress["first_ts_ns"] + egress["last_ts_ns"]) / 2e9
    assert [(c["conn"], c["roles"]) for c in who(result, "pod1", at=f"{mid:.6f}", window_s=0).connections] == [
        (4, ["pod"])]
    args = ["who", "default/web", str(d / "inside.pcap"), str(d / "outside.pcap"), "--pods", str(d / "pods.json"),
            "--services", str(d / "services.json"), "--format", "json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["query"] == "default/web" and len(doc["connections"]) == 2
    assert {c["service"]["backend"]["pod"] for c in doc["connections"]} == {"default/pod1"}
    # Without names a name is bad input.
    assert main(args[:4]) == 2
    assert capsys.readouterr().err == (
        "natproof: error: 'default/web' is not ADDR:PORT ('default/web' is not an IP address, and there is no "
        "port; e.g. 203.0.113.5:38472 or [2001:db8::1]:443); "
        "a pod or Service name needs --pods and --services (kubectl JSON dumps)\n")


@pytest.mark.parametrize(("query", "problem"), [
    ("kube-system/", "no name after the /"),
    ("/", "no namespace before the / and no name after it"),
    (" / ", "no namespace before the / and no name after it"),
    ("/kube-dns", "no namespace before the /"),
    ("kube-system/kube-dns/x", "more than one /"),
])
def test_who_refuses_a_name_of_an_empty_part(capsys: pytest.CaptureFixture[str], query: str, problem: str) -> None:
    """A name with an empty namespace or name part was taken, and answered as "no connection used kube-system/"."""
    d = CAPTURES / "clusterip"
    code = main(["who", query, str(d / "inside.pcap"), str(d / "outside.pcap"), "--pods", str(d / "pods.json"),
                 "--services", str(d / "services.json"), "--format", "json"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (f"natproof: error: {query!r} is not a pod or Service name ({problem}; give namespace/name, e.g. "
                   "kube-system/kube-dns, or a bare name, in any namespace) nor ADDR:PORT\n")


@pytest.mark.parametrize(("query", "said"), [
    ("nosuch", "'nosuch': no pod or Service of that name in {pods}, {services}\n"),
    ("kube-system/nosuch", "'kube-system/nosuch': no pod or Service of that name in {pods}, {services}\n"),
    ("kube", "'kube': no pod or Service of that name in {pods}, {services} (close: default/kubernetes, "
             "kube-system/kube-dns, kube-system/kube-proxy-hz6mh)\n"),
    ("default/kube-dnss", "'default/kube-dnss': no pod or Service of that name in {pods}, {services} (close: "
                          "kube-system/kube-dns, default/kubernetes)\n"),
    ("kube-proxy-hz6mh", "'kube-proxy-hz6mh': kube-system/kube-proxy-hz6mh is a host-network pod (its address is "
                         "its node's, shared with the node and every other host-network pod): no connection is "
                         "named after it (give an ADDR:PORT instead)\n"),
], ids=["unknown", "unknown-namespaced", "prefix", "misspelt", "host-network"])
def test_who_a_name_no_dump_holds_is_bad_input_and_says_so(capsys: pytest.CaptureFixture[str], query: str,
                                                           said: str) -> None:
    """A name the dumps do not hold can match nothing: exit 2 and one line saying so (with the close names), not
    "no connection used nosuch" and exit 1 as for a pod that had no connection (plain pcap captures: refused
    before they are read)."""
    d = CAPTURES / "clusterip"
    code = main(["who", query, str(d / "inside.pcap"), str(d / "outside.pcap"), "--pods", str(d / "pods.json"),
                 "--services", str(d / "services.json"), "--format", "json"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == "natproof: error: " + said.format(pods=d / "pods.json", services=d / "services.json")


def test_who_a_name_only_ptcpdump_comments_hold_is_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With a pcapng capture the dumps are not the only names: a pod its comments name is found, and a name
    neither holds is refused once the captures are read, naming both sources."""
    a_in, a_out = tcp_pair(T0, sport=40000, nat_sport=40000)
    ctx = ["PodName: client-6d9f7b8c5-p9x2w\nPodNamespace: shop\nPodUID: 1b2c"]
    inside = tmp_path / "inside.pcapng"
    inside.write_bytes(ptcpdump_pcapng(a_in, {i + 1: ctx for i in range(len(a_in))}))
    outside = tmp_path / "outside.pcap"
    outside.write_bytes(pcap(a_out, linktype=101))
    dump = write(tmp_path, "pods.json", kube_list(pod("default", "web-0", "10.244.9.9")))
    base = [str(inside), str(outside), "--pods", str(dump), "--format", "json"]
    assert main(["who", "client-6d9f7b8c5-p9x2w", *base]) == 0
    assert [c["roles"] for c in json.loads(capsys.readouterr().out)["connections"]] == [["pod"]]
    assert main(["who", "shop/client", *base]) == 2
    assert capsys.readouterr().err == (f"natproof: error: 'shop/client': no pod or Service of that name in {dump}, "
                                       f"{inside} (close: shop/client-6d9f7b8c5-p9x2w)\n")


def test_who_a_known_name_with_no_connection_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from natproof.lookup import who

    d = CAPTURES / "clusterip"
    idle = json.loads((d / "pods.json").read_text())
    idle["items"].append(pod("default", "idle-0", "10.244.0.99", created=T0))
    dump = write(tmp_path, "pods.json", idle)
    result = correlate(*capture_pair(d), names=Names.load(dump))
    assert who(result, "default/idle-0").connections == ()  # a pod of the dump that opened nothing
    with pytest.raises(InputError, match="'nosuch': no pod or Service of that name in "):
        who(result, "nosuch")
    code = main(["who", "idle-0", str(d / "inside.pcap"), str(d / "outside.pcap"), "--pods", str(dump),
                 "--format", "table"])
    out, err = capsys.readouterr()
    assert (code, out, err) == (1, "no connection used idle-0\n", "")


# -- table and report ----------------------------------------------------------------------------------------------


def _table(result: Any) -> str:
    from io import StringIO

    from rich.console import Console

    from natproof.report.table import render_table

    buf = StringIO()
    Console(file=buf, width=200, color_system=None).print(render_table(result))
    return buf.getvalue()


def test_table_puts_names_beside_the_addresses(tmp_path: Path) -> None:
    d = CAPTURES / "hairpin"
    named = correlate(*capture_pair(d), names=Names.load(d / "pods.json", d / "services.json"))
    lines = _table(named).splitlines()
    assert "pod" in lines[2] and "Service -> backend pod" in lines[3]
    for c in named.to_dict()["connections"]:
        o = c["original"]
        at = next(i for i, line in enumerate(lines) if f"{o['src']}:{o['sport']} -> {o['dst']}:{o['dport']}" in line)
        assert "default/pod1" in lines[at]
        if c["service"]:
            assert "default/self:http" in lines[at + 1] and "-> default/pod1" in lines[at + 2]
    assert "ClusterIP 10.96.0.50:80" in _table(named).split("Services (VIP:port")[1]
    assert "10.244.0.10:8080 (default/pod1): 3 (100%)" in _table(named)
    assert "names: 1 pod, 1 Service from " in _table(named)
    # An ambiguous pod: every candidate, marked, and the why under the summary.
    inside, outside = _pair(tmp_path)
    reused = Names.load(write(tmp_path, "reused.json", kube_list(pod("shop", "cart-a", "10.244.0.10"),
                                                                 pod("shop", "cart-b", "10.244.0.10"))))
    text = _table(correlate(inside, outside, names=reused))
    assert "? shop/cart-a " in text and "  | shop/cart-b " in text
    assert ("ambiguous name: 10.244.0.10 was held by shop/cart-a (no timestamps); shop/cart-b (no timestamps); "
            "connections #0 name all of them") in text
    # Unnamed: no names column.
    assert "backend pod" not in _table(correlate(inside, outside))


def test_report_has_a_names_column_and_names_its_services() -> None:
    from test_html import Page

    from natproof.report.html import NAME_COLUMN, columns, render_html

    d = CAPTURES / "nodeport"
    named = correlate(*capture_pair(d), names=Names.load(d / "pods.json", d / "services.json"))
    page_text = render_html(named, [])
    page = Page(page_text)
    keys = [c[0] for c in columns(named)]
    assert NAME_COLUMN in columns(named) and keys.index("pod") == keys.index("translated") + 1
    conns = named.to_dict()["connections"]
    for (_, cells), c in zip(page.rows, conns, strict=True):
        assert len(cells) == len(keys)
        svc = c["service"]
        want = "default/pod1" + (f"{svc['name']}:{svc['port_name']}" if svc else "")
        assert cells[keys.index("pod")] == want
    assert "default/web:http" in page_text and "10.244.0.10:8080 (default/pod1): 2 (100%)" in page_text
    assert "<dt>names</dt><dd>1 pod(s), 2 Service(s) from" in page_text


def test_ptcpdump_comments_two_pods_and_an_outside_capture_that_names_no_address(tmp_path: Path) -> None:
    a_in, a_out = tcp_pair(T0, pod="10.244.0.10", sport=40000, nat_sport=40000)
    b_in, b_out = tcp_pair(T0 + 10**9, pod="10.244.0.11", sport=40001, nat_sport=40001, isn=777_777)
    ctx = {"10.244.0.10": ["PodName: web-0\nPodNamespace: shop", "ContainerName: nginx"],
           "10.244.0.11": ["PodName: web-1\nPodNamespace: shop", "ContainerName: nginx"]}
    rows_in = sorted(a_in + b_in)
    rows_out = sorted(a_out + b_out)
    # Which pod a packet belongs to: the pod address among its ends (what ptcpdump knows from the socket).
    who_in = {i + 1: ctx["10.244.0.10" if b"\x0a\xf4\x00\x0a" in d[12:20] else "10.244.0.11"]
              for i, (_, d) in enumerate(rows_in)}
    who_out = {i + 1: ctx["10.244.0.10" if d[20:22] == (40000).to_bytes(2, "big") or d[22:24] == (40000).to_bytes(
        2, "big") else "10.244.0.11"] for i, (_, d) in enumerate(rows_out)}
    inside, outside = tmp_path / "inside.pcapng", tmp_path / "outside.pcapng"
    inside.write_bytes(ptcpdump_pcapng(rows_in, who_in))
    outside.write_bytes(ptcpdump_pcapng(rows_out, who_out))
    result = correlate(inside, outside)
    assert dict(zip(result.connections["inside_src"], result.connections["pod"], strict=True)) == {
        "10.244.0.10": "shop/web-0", "10.244.0.11": "shop/web-1"}
    assert set(result.connections["pod_container"]) == {"nginx"}
    src_in, src_out = result.names["sources"]
    assert (src_in["pods"], src_in["undecided_pods"]) == (2, 0)
    # On eth0 the pods' packets carry the node's address and the server's: neither is a pod's, nothing named.
    assert (src_out["commented_packets"], src_out["pods"], src_out["undecided_pods"]) == (16, 0, 2)


def test_the_readme_examples_of_a_reused_address() -> None:
    examples = Path(__file__).resolve().parent.parent / "docs" / "examples"
    pair = capture_pair(CAPTURES / "hairpin")
    # A Job's pod finished with 10.244.0.10 at 12:00:41; pod1 got it at 13:07:13, just before the capture.
    done = correlate(*pair, names=Names.load(examples / "pods-ip-reused.json"))
    assert set(done.connections["pod"]) == {"default/pod1"} and done.names["ambiguous"] == []
    # A terminating pod (deletion at 13:07:40) and its replacement (13:07:05) both may have held it.
    both = correlate(*pair, names=Names.load(examples / "pods-ip-reused-overlapping.json"))
    assert both.connections["pod"].null_count() == both.connections.height
    (amb,) = both.names["ambiguous"]
    assert amb["candidates"] == ["default/web-7d4b9c8f5-k8mzq", "default/web-7d4b9c8f5-x2x9k"]
    assert amb["why"] == ("10.244.0.10 was held by default/web-7d4b9c8f5-x2x9k (2026-11-29T09:12:40Z to "
                          "2026-11-29T13:07:40Z); default/web-7d4b9c8f5-k8mzq (from 2026-11-29T13:07:05Z, still "
                          "running)")
    assert amb["connections"] == [0, 1, 2, 3]
