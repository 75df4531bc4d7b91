"""kubectl-style JSON dumps of a lab scenario's pods and Services, as users attach them (pods.json, services.json)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from natproof.lab.kube import Service
from natproof.lab.topology import NODE, Pod

PODS_FILE = "pods.json"
"""What ``kubectl get pods -A -o json`` would print for the scenario's node."""
SERVICES_FILE = "services.json"
"""What ``kubectl get svc,endpointslices -A -o json`` would print."""
DUMP_FILES = (PODS_FILE, SERVICES_FILE)

NODE_NAME = NODE
"""spec.nodeName of the captured node's pods (a peer node's pods carry its own name)."""
IMAGE = "docker.io/library/python:3.12-slim"
"""The lab's servers and clients are python3 -c programs."""


def _stamp(ts: float) -> str:
    """RFC 3339 to the second, as the API server writes metadata timestamps."""
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "natproof-lab/" + "/".join(parts)))


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _suffix(*parts: str, n: int = 5) -> str:
    """A generated-name suffix (kube's are 5 of bcdfghjklmnpqrstvwxz2456789), stable for the same parts."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:n])


def _split(name: str) -> tuple[str, str, str | None]:
    """kube-proxy's ``namespace/name:port`` (natproof.lab.kube.Service.name) as (namespace, name, port name)."""
    ns, _, rest = name.partition("/")
    svc, _, port = rest.partition(":")
    return ns, svc, port or None


def pod_namespaces(pods: Sequence[Pod], services: Sequence[Service]) -> dict[str, tuple[str, str]]:
    """Each lab pod's (namespace, app label): an endpoint of a Service lives in the Service's namespace (an
    EndpointSlice's targetRef must) and carries its selector label; any other pod is in default."""
    out: dict[str, tuple[str, str]] = {}
    for p in pods:
        owner = next((s for s in services for e in s.endpoints if e.address == p.ip), None)
        if owner is None:
            out[p.name] = ("default", p.name)
        else:
            ns, svc, _ = _split(owner.name)
            out[p.name] = (ns, svc)
    return out


PeerPods = tuple[str, str, Sequence[Pod]]
"""Another node of the cluster and its pods: (node name, node address, pods)."""


def pods_list(pods: Sequence[Pod], services: Sequence[Service], node_ip: str, started: float,
              peers: Sequence[PeerPods] = ()) -> dict[str, Any]:
    """A v1 List of the scenario's Pods (kubectl get pods -A -o json): one per lab pod namespace, plus, where the
    node runs kube-proxy's rules, its hostNetwork kube-proxy pod, whose podIP is the node's own address; then the
    pods of the other nodes (``peers``), with their own spec.nodeName and hostIP."""
    when = _stamp(started)
    spaces = pod_namespaces(pods, services)
    items = []
    for p in pods:
        ns, app = spaces[p.name]
        items.append(_pod(ns, p.name, {"app": app}, p.ip, node_ip, when, containers=("app",)))
    for node, address, others in peers:
        items += [_pod("default", p.name, {"app": p.name}, p.ip, address, when, containers=("app",), node=node)
                  for p in others]
    if services:
        name = f"kube-proxy-{_suffix('kube-proxy', NODE_NAME)}"
        items.append(_pod("kube-system", name, {"k8s-app": "kube-proxy"}, node_ip, node_ip, when,
                          containers=("kube-proxy",), host_network=True, image="registry.k8s.io/kube-proxy:v1.31.0"))
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


def _pod(ns: str, name: str, labels: dict[str, str], ip: str, node_ip: str, when: str, *,
         containers: tuple[str, ...], host_network: bool = False, image: str = IMAGE,
         node: str = NODE_NAME) -> dict[str, Any]:
    family = [{"ip": ip}]
    spec: dict[str, Any] = {
        "containers": [{"image": image, "imagePullPolicy": "IfNotPresent", "name": c, "resources": {},
                        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}
                       for c in containers],
        "dnsPolicy": "ClusterFirst", "enableServiceLinks": True, "nodeName": node,
        "preemptionPolicy": "PreemptLowerPriority", "priority": 0, "restartPolicy": "Always",
        "schedulerName": "default-scheduler", "securityContext": {}, "terminationGracePeriodSeconds": 30,
    }
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"creationTimestamp": when, "labels": labels, "name": name, "namespace": ns,
                     "resourceVersion": str(1000 + int(hashlib.sha256(name.encode()).hexdigest()[:4], 16)),
                     "uid": _uid("pod", ns, name)},
        "spec": spec,
        "status": {
            "conditions": [{"lastProbeTime": None, "lastTransitionTime": when, "status": "True", "type": t}
                           for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                     "PodScheduled")],
            "containerStatuses": [{"containerID": "containerd://" + _digest(ns, name, c),
                                   "image": image, "imageID": image, "lastState": {}, "name": c, "ready": True,
                                   "restartCount": 0, "started": True, "state": {"running": {"startedAt": when}}}
                                  for c in containers],
            "hostIP": node_ip, "hostIPs": [{"ip": node_ip}], "phase": "Running", "podIP": ip, "podIPs": family,
            "qosClass": "BestEffort", "startTime": when,
        },
    }


def services_list(services: Sequence[Service], pods: Sequence[Pod], started: float) -> dict[str, Any]:
    """A v1 List of the scenario's Services and their EndpointSlices (kubectl get svc,endpointslices -A -o json),
    grouped as the API holds them: one Service per namespace/name with all its ports, one EndpointSlice each."""
    when = _stamp(started)
    by_ip = {p.ip: p for p in pods}
    spaces = pod_namespaces(pods, services)
    grouped: dict[tuple[str, str], list[Service]] = {}
    for s in services:
        ns, name, _ = _split(s.name)
        grouped.setdefault((ns, name), []).append(s)
    svcs, slices = [], []
    for (ns, name), ports in grouped.items():
        node_ports = [s for s in ports if s.node_port is not None]
        spec: dict[str, Any] = {
            "clusterIP": ports[0].cluster_ip, "clusterIPs": [ports[0].cluster_ip],
            "internalTrafficPolicy": "Cluster", "ipFamilies": [_family(ports[0].cluster_ip)],
            "ipFamilyPolicy": "SingleStack",
            "ports": [_port(s) for s in ports], "sessionAffinity": "None",
            "type": "NodePort" if node_ports else "ClusterIP",
        }
        if name != "kubernetes":
            spec["selector"] = {"app": name}
        if node_ports:
            spec["externalTrafficPolicy"] = "Local" if any(s.local for s in node_ports) else "Cluster"
        svcs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"creationTimestamp": when, "name": name, "namespace": ns,
                                  "resourceVersion": "500", "uid": _uid("service", ns, name)},
                     "spec": spec, "status": {"loadBalancer": {}}})
        slices.append(_slice(ns, name, ports, by_ip, spaces, when))
    return {"apiVersion": "v1", "items": [*svcs, *slices], "kind": "List", "metadata": {"resourceVersion": ""}}


def _family(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def _port(s: Service) -> dict[str, Any]:
    _, _, port_name = _split(s.name)
    target = s.endpoints[0].port if s.endpoints else s.port
    port: dict[str, Any] = {"name": port_name, "port": s.port, "protocol": s.proto.upper(), "targetPort": target}
    if port_name is None:
        del port["name"]
    if s.node_port is not None:
        port["nodePort"] = s.node_port
    return port


def _slice(ns: str, name: str, ports: list[Service], by_ip: dict[str, Pod],
           spaces: dict[str, tuple[str, str]], when: str) -> dict[str, Any]:
    endpoints = []
    for address in dict.fromkeys(e.address for s in ports for e in s.endpoints):
        ep: dict[str, Any] = {"addresses": [address],
                              "conditions": {"ready": True, "serving": True, "terminating": False}}
        pod = by_ip.get(address)
        if pod is not None:
            pod_ns = spaces[pod.name][0]
            ep["nodeName"] = NODE_NAME
            ep["targetRef"] = {"kind": "Pod", "name": pod.name, "namespace": pod_ns,
                               "uid": _uid("pod", pod_ns, pod.name)}
        endpoints.append(ep)
    slice_ports = []
    for s in ports:
        _, _, port_name = _split(s.name)
        entry: dict[str, Any] = {"name": port_name or "", "port": s.endpoints[0].port if s.endpoints else s.port,
                                 "protocol": s.proto.upper()}
        slice_ports.append(entry)
    managed = "endpointslicemirroring-controller.k8s.io" if name == "kubernetes" else "endpointslice-controller.k8s.io"
    return {
        "addressType": _family(ports[0].cluster_ip),
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": endpoints or None,
        "kind": "EndpointSlice",
        "metadata": {"creationTimestamp": when, "generateName": f"{name}-",
                     "labels": {"endpointslice.kubernetes.io/managed-by": managed,
                                "kubernetes.io/service-name": name},
                     "name": f"{name}-{_suffix('slice', ns, name)}", "namespace": ns,
                     "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": True, "controller": True,
                                          "kind": "Service", "name": name, "uid": _uid("service", ns, name)}],
                     "resourceVersion": "501", "uid": _uid("slice", ns, name)},
        "ports": slice_ports,
    }


def write_dumps(outdir: Path, pods: Sequence[Pod], services: Sequence[Service], node_ip: str,
                started: float, peers: Sequence[PeerPods] = ()) -> list[str]:
    """Write pods.json and, when the scenario has Services, services.json (kubectl's layout: indented by four,
    final newline) into ``outdir``; returns their file names. ``peers``: the other nodes' pods, in pods.json too."""
    docs = {PODS_FILE: pods_list(pods, services, node_ip, started, peers)}
    if services:
        docs[SERVICES_FILE] = services_list(services, pods, started)
    for filename, doc in docs.items():
        (Path(outdir) / filename).write_text(json.dumps(doc, indent=4, sort_keys=True) + "\n")
    return list(docs)
