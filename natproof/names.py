"""Names users think in: pods and Services from kubectl JSON dumps and ptcpdump's pcapng packet comments."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import os
import re
import struct
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl

from natproof.assemble import Network, Services
from natproof.errors import InputError
from natproof.result import NAME_SCHEMA, Result

KINDS = ("Pod", "Service", "EndpointSlice", "Endpoints")
"""The kinds of object natproof reads names from (kubectl get pods,svc,endpointslices -A -o json)."""

TIMESTAMP_RESOLUTION_NS = 1_000_000_000
"""Kubernetes writes metadata timestamps to the second (RFC 3339, truncated): a pod that ended at 10:00:05 may have
held its address until just before 10:00:06."""

_YAML_START = re.compile(r"^(---|%YAML|- |[A-Za-z_][\w.-]*:(\s|$))")


@dataclass(frozen=True)
class PodEntry:
    """One pod that held one or more addresses, and when (from a Pod object, an EndpointSlice's targetRef, or
    ptcpdump's packet comments)."""

    namespace: str
    name: str
    addresses: tuple[str, ...]
    """Its pod IPs (status.podIPs: both families of a dual-stack pod); never a hostNetwork pod's node address."""
    start_ns: int | None = None
    """From when it may have held them (metadata.creationTimestamp; first commented packet); None: unknown."""
    end_ns: int | None = None
    """Until when (deletionTimestamp, the last container's finishedAt of a pod that Succeeded or Failed, the last
    commented packet), exclusive; None: still running when dumped, or unknown."""
    node: str | None = None
    containers: tuple[str, ...] = ()
    uid: str | None = None
    source: str = ""

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    def held_at(self, ts_ns: int) -> bool:
        """Whether it may have held its addresses at ``ts_ns`` (unknown bounds are open)."""
        if self.start_ns is not None and ts_ns < self.start_ns:
            return False
        return self.end_ns is None or ts_ns < self.end_ns + TIMESTAMP_RESOLUTION_NS


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    """spec.ports[].name (Services with more than one port must name them)."""
    port: int
    proto: str
    """tcp, udp or sctp."""
    node_port: int | None = None
    target_port: int | str | None = None


@dataclass(frozen=True)
class ServiceEntry:
    namespace: str
    name: str
    type: str
    cluster_ips: tuple[str, ...]
    """spec.clusterIPs (both families of a dual-stack Service); empty for a headless one."""
    ports: tuple[ServicePort, ...]
    source: str = ""
    load_balancer_ips: tuple[str, ...] = ()
    """status.loadBalancer.ingress[].ip: kube-proxy DNATs them in KUBE-SERVICES, like the ClusterIPs."""
    external_ips: tuple[str, ...] = ()
    """spec.externalIPs: likewise."""

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address kube-proxy DNATs to this Service's endpoints on its ports (NodePorts aside)."""
        return (*self.cluster_ips, *self.load_balancer_ips, *self.external_ips)

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class EndpointEntry:
    """One endpoint address of a Service (EndpointSlice or v1 Endpoints), and the pod behind it (targetRef)."""

    service: str | None
    """namespace/name of its Service (the kubernetes.io/service-name label), None when the slice names none."""
    address: str
    pod: str | None
    """namespace/name of the targetRef pod; None for an endpoint that is no pod (the API server's own)."""
    node: str | None = None


@dataclass(frozen=True)
class Match:
    """Who an address was at a time: one pod, several (ambiguous), or nobody known."""

    name: str | None = None
    """namespace/name when exactly one pod may have held the address then; else None."""
    candidates: tuple[str, ...] = ()
    """When the dumps cannot settle it (a pod IP reused, without timestamps that tell the pods apart): every pod that
    may have held it then, or, when none may have, every pod known to have held it at another time."""
    container: str | None = None
    """The container, when known (ptcpdump names it; a pod with a single container has no other)."""

    @property
    def ambiguous(self) -> bool:
        return bool(self.candidates)


@dataclass(frozen=True)
class Names:
    """Pods, Services and endpoints read from kubectl dumps (and pcapng comments), and how to name a Result with
    them: ``Names.load("pods.json", "svc.json").name_result(result)``, or ``correlate(..., names=names)``."""

    pods: tuple[PodEntry, ...] = ()
    services: tuple[ServiceEntry, ...] = ()
    endpoints: tuple[EndpointEntry, ...] = ()
    sources: tuple[dict[str, Any], ...] = ()
    """Each file read: {"path", "kind": "kubectl", "pods", "services", "endpoints", "host_network_pods"} (counts of
    what it held); name_result adds the captures whose pcapng comments named pods ("kind": "pcapng comments")."""
    comments: bool = True
    """Also read ptcpdump's packet comments (pcapng) from the captures when naming a result."""
    unaddressed: tuple[tuple[str, str], ...] = ()
    """Pods the dumps hold that name no address, each (namespace/name, why): a hostNetwork pod (its address is its
    node's), a pod not given one yet; and ExternalName Services (a DNS name). ``check_name`` says why such a name
    names no connection."""

    @classmethod
    def load(cls, *paths: str | os.PathLike[str]) -> Names:
        """Read kubectl JSON dumps: ``kubectl get pods -A -o json``, ``kubectl get svc,endpointslices -A -o json``,
        one object (``kubectl get pod NAME -o json``), a List of any mix, or JSON objects one after another
        (NDJSON). Raises InputError naming the file when it is no such dump (YAML, another kind, an empty List)."""
        names = cls()
        for path in paths:
            names = names.merged(read_dump(path))
        return names

    def merged(self, other: Names) -> Names:
        return Names(pods=(*self.pods, *other.pods), services=(*self.services, *other.services),
                     endpoints=(*self.endpoints, *other.endpoints), sources=(*self.sources, *other.sources),
                     comments=self.comments and other.comments, unaddressed=(*self.unaddressed, *other.unaddressed))

    # -- look-ups ---------------------------------------------------------------------------------------------------

    @cached_property
    def _by_address(self) -> dict[str, list[PodEntry]]:
        """Every pod known to have held each address: the pods' own records, merged by name and uid (one pod seen
        in several dumps), plus the EndpointSlices' targetRef pods no pod record names."""
        merged: dict[tuple[str, str | None], PodEntry] = {}
        keys: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
        for p in self.pods:
            key = (p.full_name, p.uid)
            if key not in merged:
                # The same pod without a uid (from an EndpointSlice or a comment) is the one with one.
                key = next((k for k in keys[p.full_name] if k[1] is None or p.uid is None), key)
            if key in merged:
                merged[key] = _merge(merged[key], p)
            else:
                merged[key] = p
                keys[p.full_name].append(key)
        named = {k[0] for k in merged}
        for e in self.endpoints:
            if e.pod and e.pod not in named:
                ns, _, name = e.pod.partition("/")
                merged[(e.pod, None)] = PodEntry(ns, name, (e.address,), node=e.node, source="EndpointSlice")
                named.add(e.pod)
            elif e.pod and (e.pod, None) in merged and e.address not in merged[(e.pod, None)].addresses:
                p = merged[(e.pod, None)]
                merged[(e.pod, None)] = dataclasses.replace(p, addresses=(*p.addresses, e.address))
        index: dict[str, list[PodEntry]] = defaultdict(list)
        for p in merged.values():
            for a in p.addresses:
                index[a].append(p)
        return dict(index)

    def pod_at(self, address: str | None, ts_ns: int | None) -> Match:
        """The pod that held ``address`` at ``ts_ns`` (epoch ns; None: at any time)."""
        if address is None:
            return Match()
        pods = self._by_address.get(address, [])
        if not pods:
            return Match()
        held = pods if ts_ns is None else [p for p in pods if p.held_at(ts_ns)]
        names = sorted({p.full_name for p in held})
        if len(names) == 1:
            pod = next(p for p in held if p.full_name == names[0])
            container = pod.containers[0] if len(pod.containers) == 1 else None
            return Match(names[0], container=container)
        # Several pods may have held it then (timestamps missing or overlapping), or none of the known ones did:
        # never pick one.
        return Match(candidates=tuple(names or sorted({p.full_name for p in pods})))

    @cached_property
    def _named(self) -> dict[str, str]:
        """Every pod and Service name a connection can be named after (namespace/name -> "pod" or "Service"): the
        pods that held an address (from a dump, an EndpointSlice's targetRef, ptcpdump's comments), the Services
        with a ClusterIP, load balancer or external address, or a nodePort."""
        out = {p.full_name: "pod" for ps in self._by_address.values() for p in ps}
        for s in self.services:
            if s.addresses or any(p.node_port for p in s.ports):
                out.setdefault(s.full_name, "Service")
        return out

    def means(self, query: str) -> list[str]:
        """The namespace/names of pods and Services that ``query`` (namespace/name, or a bare name in any
        namespace) names, among those a connection can be named after (as natproof.lookup.name_roles matches)."""
        if "/" in query:
            return [query] if query in self._named else []
        return sorted(n for n in self._named if n.partition("/")[2] == query)

    def check_name(self, query: str) -> None:
        """InputError when ``query`` (namespace/name, or a bare name) can name no connection: no pod or Service of
        that name in the dumps (nor in ptcpdump's comments), with the close names there are; or only pods and
        Services that hold no address of their own (a host-network pod, a pod without an address yet, a headless
        or ExternalName Service), saying which and why."""
        if self.means(query):
            return

        def same(full: str) -> bool:
            return full == query or ("/" not in query and full.partition("/")[2] == query)

        why = {full: reason for full, reason in self.unaddressed if same(full)}
        for svc in self.services:
            if same(svc.full_name) and svc.full_name not in self._named:
                why[svc.full_name] = ("a headless Service (no ClusterIP: its clients reach its pods' own addresses, "
                                      "named after the pods)")
        if why:
            said = "; ".join(f"{full} is {reason}" for full, reason in sorted(why.items()))
            raise InputError(f"{query!r}: {said}: no connection is named after it (give an ADDR:PORT instead)")
        where = ", ".join(dict.fromkeys(str(s.get("path")) for s in self.sources if s.get("path"))) or "the dumps"
        close = self._close_to(query)
        raise InputError(f"{query!r}: no pod or Service of that name in {where}"
                         + (f" (close: {', '.join(close)})" if close else ""))

    def _close_to(self, query: str, n: int = 5) -> list[str]:
        """Names like ``query``: those it begins (a Deployment's pods for its name), then the closest spellings."""
        import difflib

        want = query.rpartition("/")[2]
        known = sorted(set(self._named) | {full for full, _ in self.unaddressed} | {s.full_name for s in self.services})
        keys = {full: full.partition("/")[2] for full in known}  # by name, in any namespace
        starts = [full for full, key in keys.items() if key.startswith(want) or want.startswith(f"{key}-")]
        by_key: dict[str, list[str]] = defaultdict(list)
        for full, key in keys.items():
            by_key[key].append(full)
        similar = [full for key in difflib.get_close_matches(want, list(by_key), n=n, cutoff=0.6)
                   for full in by_key[key]]
        return list(dict.fromkeys([*starts, *similar]))[:n]

    def held_by(self, address: str) -> list[PodEntry]:
        """Every pod known to have held ``address``."""
        return list(self._by_address.get(address, []))

    @cached_property
    def _service_index(self) -> tuple[dict[tuple[str, int, str], tuple[ServiceEntry, ServicePort]],
                                      dict[tuple[int, str], tuple[ServiceEntry, ServicePort]],
                                      dict[str, ServiceEntry]]:
        by_port: dict[tuple[str, int, str], tuple[ServiceEntry, ServicePort]] = {}
        by_node_port: dict[tuple[int, str], tuple[ServiceEntry, ServicePort]] = {}
        by_ip: dict[str, ServiceEntry] = {}
        for s in self.services:
            for ip in s.addresses:
                by_ip.setdefault(ip, s)
                for p in s.ports:
                    by_port.setdefault((ip, p.port, p.proto), (s, p))
            for p in s.ports:
                if p.node_port:
                    by_node_port.setdefault((p.node_port, p.proto), (s, p))
        return by_port, by_node_port, by_ip

    def service(self, kind: str | None, address: str | None, port: int | None,
                proto: str) -> tuple[str | None, str | None]:
        """(namespace/name, port name) of the Service a connection was sent to: by ClusterIP and port, or by
        NodePort (unique in a cluster, on every node address); (None, None) when the dumps hold none."""
        by_port, by_node_port, by_ip = self._service_index
        if kind == "NodePort" and port is not None:
            hit = by_node_port.get((port, proto))
            return (hit[0].full_name, hit[1].name) if hit else (None, None)
        if address is None:
            return None, None
        hit = by_port.get((address, port or 0, proto))
        if hit:
            return hit[0].full_name, hit[1].name
        svc = by_ip.get(address)
        return (svc.full_name, None) if svc else (None, None)

    def recognise(self, services: Services | None = None) -> Services:
        """``services`` (kube-apiserver's defaults when None) plus what the dumps prove: every ClusterIP in them is
        a Service address, whatever the service CIDR, and every nodePort a NodePort, whatever the range."""
        base = services or Services()
        ips = sorted({ipaddress.ip_address(ip) for s in self.services for ip in s.cluster_ips},
                     key=lambda a: (a.version, a))
        extra = tuple(ipaddress.ip_network(a) for a in ips if not any(a in n for n in base.networks))

        def hosts(field: str, known: tuple[Network, ...]) -> tuple[Network, ...]:
            found = sorted({ipaddress.ip_address(ip) for s in self.services for ip in getattr(s, field)},
                           key=lambda a: (a.version, a))
            return tuple(ipaddress.ip_network(a) for a in found if not any(a in n for n in known))

        balancers = hosts("load_balancer_ips", base.load_balancers)
        externals = hosts("external_ips", base.external_ips)
        lo, hi = base.nodeport_range
        ports = sorted({p.node_port for s in self.services for p in s.ports
                        if p.node_port and not lo <= p.node_port <= hi} - set(base.node_ports))
        listed = tuple(sorted({p.node_port for s in self.services for p in s.ports if p.node_port}))
        if not extra and not ports and not self.services:
            return base
        return dataclasses.replace(base, networks=(*base.networks, *extra), node_ports=(*base.node_ports, *ports),
                                   listed_node_ports=listed, load_balancers=(*base.load_balancers, *balancers),
                                   external_ips=(*base.external_ips, *externals))

    # -- naming a result --------------------------------------------------------------------------------------------

    def name_result(self, result: Result) -> Result:
        """``result`` with every connection named (NAME_SCHEMA columns; JSON ``inside.pod``, ``service.name``,
        ``service.backend.pod`` ...), and ``result.names`` saying from what. Pods named in ptcpdump's packet
        comments in either capture are used too (unless ``comments`` is False)."""
        names = self
        if self.comments:
            for side in ("inside", "outside"):
                pods, info = pods_from_comments(result, side)
                names = names.merged(Names(pods=pods, sources=(info,) if info else ()))
        return names._apply(result)

    def _apply(self, result: Result) -> Result:
        """``result`` with its connections named (name_connections), ``names`` its summary and ``named_by`` self."""
        named_conns, summary = self.name_connections(result.connections)
        return dataclasses.replace(result, connections=named_conns, names=summary, named_by=self)

    def name_connections(self, conns: pl.DataFrame, comment_sources: tuple[dict[str, Any], ...] = (),
                         ) -> tuple[pl.DataFrame, dict[str, Any]]:
        """Connections (CONNECTION_SCHEMA rows: a Result's, or the kernel record's alone,
        natproof.kernel.kernel_connections) with NAME_SCHEMA's columns, and the document's ``names`` summary
        (sources, pods, services, ambiguous). Every connection at once (joins on address, not a look-up per row:
        100k connections in well under a second); the same answers as pod_at and service per row."""
        base = conns.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "conn", "initiator",
                            "first_ts_ns", "proto", "inside_src", "inside_dst", "service_type", "service_ip",
                            "service_port", "backend_ip")
        outside = pl.col("initiator") == "outside"
        ends = {
            "pod": pl.when(outside).then("inside_dst").otherwise("inside_src"),
            "peer_pod": pl.when(outside).then("inside_src").otherwise("inside_dst"),
            "backend_pod": pl.when(pl.col("service_type").is_not_null()).then("backend_ip"),
        }
        columns: dict[str, pl.Series] = {}
        ambiguous: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(list)
        for prefix, expr in ends.items():
            named = self._name_addresses(base.select("_row", "conn", "first_ts_ns", expr.alias("addr")))
            columns[prefix] = named["name"]
            columns[f"{prefix}_candidates"] = named["candidates"]
            if prefix == "pod":
                columns["pod_container"] = named["container"]
            for addr, cands, conn in named.filter(pl.col("candidates").is_not_null()).select(
                    "addr", "candidates", "conn").iter_rows():
                ambiguous[(addr, tuple(cands))].append(conn)
        svc = self._name_services(base)
        columns["service_name"], columns["service_port_name"] = svc["service_name"], svc["service_port_name"]
        named_conns = conns.with_columns(columns[c].cast(t).alias(c) for c, t in NAME_SCHEMA.items())
        summary = {
            "sources": [*self.sources, *comment_sources],
            "pods": len({p.full_name for ps in self._by_address.values() for p in ps}),
            "services": len({s.full_name for s in self.services}),
            "ambiguous": [{"address": a, "candidates": list(c), "why": self.why_ambiguous(a),
                           "connections": sorted(set(ids))}
                          for (a, c), ids in sorted(ambiguous.items(), key=lambda kv: min(kv[1]))],
        }
        return named_conns, summary

    @cached_property
    def _pod_table(self) -> pl.DataFrame:
        """One row per (address, pod that held it): addr, name, start_ns, end_ns, container (of a pod with one)."""
        rows = [(a, p.full_name, p.start_ns, p.end_ns, p.containers[0] if len(p.containers) == 1 else None)
                for a, ps in self._by_address.items() for p in ps]
        return pl.DataFrame(rows, schema={"addr": pl.String, "name": pl.String, "start_ns": pl.Int64,
                                          "end_ns": pl.Int64, "container": pl.String}, orient="row")

    def _name_addresses(self, ends: pl.DataFrame) -> pl.DataFrame:
        """For rows (_row, conn, first_ts_ns, addr): name, candidates and container, in row order (see pod_at)."""
        ts = pl.col("first_ts_ns")
        held = (pl.col("start_ns").is_null() | (ts >= pl.col("start_ns"))) & (
            pl.col("end_ns").is_null() | (ts < pl.col("end_ns") + TIMESTAMP_RESOLUTION_NS))
        j = ends.drop_nulls("addr").join(self._pod_table, on="addr", how="inner")
        per = j.group_by("_row").agg(
            pl.col("name").filter(held).unique().sort().alias("held"),
            pl.col("name").unique().sort().alias("all"),
            pl.col("container").filter(held).first().alias("container"))
        one = pl.col("held").list.len() == 1
        per = per.select(
            "_row",
            pl.when(one).then(pl.col("held").list.first()).alias("name"),
            pl.when(pl.col("held").list.len() > 1).then("held")
            .when(pl.col("held").list.len() == 0).then("all").alias("candidates"),
            pl.when(one).then("container").alias("container"))
        return ends.join(per, on="_row", how="left", maintain_order="left").select(
            "addr", "conn", "name", "candidates", "container")

    def _name_services(self, base: pl.DataFrame) -> pl.DataFrame:
        """service_name and service_port_name per row (see service): ClusterIP by address, port and protocol (the
        address alone when no port matches), NodePort by port and protocol."""
        by_port, by_node_port, by_ip = self._service_index
        schema = {"service_name": pl.String, "service_port_name": pl.String}
        ports = pl.DataFrame([(ip, port, proto, s.full_name, p.name) for (ip, port, proto), (s, p) in by_port.items()],
                             schema={"service_ip": pl.String, "service_port": pl.UInt16, "proto": pl.String,
                                     "_n1": pl.String, "_p1": pl.String}, orient="row")
        node = pl.DataFrame([(port, proto, s.full_name, p.name) for (port, proto), (s, p) in by_node_port.items()],
                            schema={"service_port": pl.UInt16, "proto": pl.String, "_n2": pl.String,
                                    "_p2": pl.String}, orient="row")
        ips = pl.DataFrame([(ip, s.full_name) for ip, s in by_ip.items()],
                           schema={"service_ip": pl.String, "_n3": pl.String}, orient="row")
        j = (base.select("_row", "service_type", "service_ip", "service_port", "proto")
             .join(ports, on=["service_ip", "service_port", "proto"], how="left", maintain_order="left")
             .join(node, on=["service_port", "proto"], how="left", maintain_order="left")
             .join(ips, on="service_ip", how="left", maintain_order="left"))
        nodeport = pl.col("service_type") == "NodePort"
        cluster = pl.col("service_type").is_not_null() & ~nodeport
        return j.select(
            pl.when(nodeport).then("_n2").when(cluster).then(pl.coalesce("_n1", "_n3")).alias("service_name"),
            pl.when(nodeport).then("_p2").when(cluster & pl.col("_n1").is_not_null()).then("_p1")
            .alias("service_port_name")).cast(schema)  # type: ignore[arg-type]

    def why_ambiguous(self, address: str) -> str:
        """Which pods held ``address`` when, as the dumps say (for the ambiguity notes)."""
        parts = []
        for p in sorted(self.held_by(address), key=lambda p: (p.start_ns or 0, p.full_name)):
            parts.append(f"{p.full_name} {_span(p.start_ns, p.end_ns)}")
        return f"{address} was held by " + "; ".join(parts)


def _merge(a: PodEntry, b: PodEntry) -> PodEntry:
    """One pod seen twice (two dumps, a dump and comments): the widest known span, every address and container."""
    starts = [t for t in (a.start_ns, b.start_ns) if t is not None]
    ends = [t for t in (a.end_ns, b.end_ns) if t is not None]
    return dataclasses.replace(
        a, addresses=tuple(dict.fromkeys((*a.addresses, *b.addresses))), start_ns=min(starts) if starts else None,
        end_ns=max(ends) if ends else None, node=a.node or b.node,
        containers=tuple(dict.fromkeys((*a.containers, *b.containers))), uid=a.uid or b.uid)


def _span(start: int | None, end: int | None) -> str:
    def t(ns: int) -> str:
        return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    if start is None and end is None:
        return "(no timestamps)"
    if end is None:
        return f"(from {t(start)}, still running)"  # type: ignore[arg-type]
    return f"({t(start)} to {t(end)})" if start is not None else f"(until {t(end)})"


def apply_names(result: Result, names: Names | None) -> Result:
    """Name ``result`` with ``names``; without them, still with the pods a ptcpdump capture names in its packet
    comments (when there are any: otherwise ``result`` unchanged)."""
    if names is not None:
        return names.name_result(result)
    if not any(is_ptcpdump(p) for p in (result.inside.path, result.outside.path)):
        return result
    return Names().name_result(result)


# -- kubectl dumps ------------------------------------------------------------------------------------------------


def read_dump(path: str | os.PathLike[str]) -> Names:
    """The pods, Services and endpoints of one kubectl JSON dump (see Names.load)."""
    name = os.fspath(path)
    objects = _objects(name)
    kinds = Counter(o.get("kind") for o in objects)
    if not any(kinds[k] for k in KINDS):
        found = ", ".join(f"{k or 'no kind'} x{n}" for k, n in kinds.most_common()) if objects else "no items"
        if not objects:
            raise InputError(f"{name}: an empty List (no items): kubectl found nothing to dump; check the context "
                             "and give -A for every namespace")
        raise InputError(f"{name}: no Pod, Service or EndpointSlice in it ({found}); give the output of "
                         "kubectl get pods -A -o json or kubectl get svc,endpointslices -A -o json")
    pods, services, endpoints = [], [], []
    unaddressed: list[tuple[str, str]] = []
    host_network = 0
    for i, o in enumerate(objects, 1):
        kind = o.get("kind")
        if kind not in KINDS:
            continue
        try:
            _require_objects(o, _SHAPED[kind])
            if kind == "Pod":
                pod = _pod(o, name)
                if pod is None:
                    host_network += 1
                    unaddressed.append((_full_name(o), "a host-network pod (its address is its node's, shared with "
                                                       "the node and every other host-network pod)"))
                elif pod.addresses:
                    pods.append(pod)
                else:
                    unaddressed.append((pod.full_name, "a pod with no address in the dump (not given one yet)"))
            elif kind == "Service":
                svc = _service(o, name)
                if svc is not None:
                    services.append(svc)
                else:
                    unaddressed.append((_full_name(o), "an ExternalName Service (a DNS name, no address of its "
                                                       "own)"))
            else:
                endpoints += _endpoints(o)
        except _Bad as exc:
            meta = o.get("metadata") if isinstance(o.get("metadata"), dict) else {}
            # As the object is read (_namespace): one written without a namespace is in "default", where kubectl
            # would put it; one of a namespace the API never allows is "?" (the reason says what it holds).
            given = meta.get("namespace")
            ns = "default" if given in (None, "") else given if _is_name(given, "namespace") else "?"
            # An object is named by what the API would allow: a name that is none ("a/b") is quoted in the reason.
            what = (f"{kind} {ns}/{meta['name']}" if _is_name(meta.get("name"), "pod" if kind == "Pod" else kind)
                    else f"{kind} #{i} of the file")
            raise InputError(f"{name}: {what} is not shaped as kubectl writes it ({exc})") from None
    source = {"path": name, "kind": "kubectl", "pods": len(pods), "services": len(services),
              "endpoints": len(endpoints), "host_network_pods": host_network}
    return Names(pods=tuple(pods), services=tuple(services), endpoints=tuple(endpoints), sources=(source,),
                 unaddressed=tuple(unaddressed))


def _full_name(o: dict[str, Any]) -> str:
    """namespace/name of an object read without error (its metadata checked)."""
    return f"{_namespace(o['metadata'])}/{_name_field(o['metadata'])}"


_SHAPED = {"Pod": ("metadata", "spec"), "Service": ("metadata", "spec"), "EndpointSlice": ("metadata",),
           "Endpoints": ("metadata",)}
"""The fields kubectl always writes as objects in each kind natproof reads. A Service of "spec": null read as a
ClusterIP Service of no address and no port (a helper's break test): accepted, and nothing named after it."""


class _Bad(ValueError):
    """A field of a kubectl object that is not as kubectl writes it; the message names the field by its path in the
    object (``status.podIPs[0].ip``) and says what is wrong with it."""


def _require_objects(o: dict[str, Any], fields: tuple[str, ...]) -> None:
    """_Bad naming the first of ``fields`` that is missing or not a JSON object in ``o``."""
    for field in fields:
        value = o.get(field)
        if not isinstance(value, dict):
            raise _Bad(f"{field} is {'missing' if field not in o else _json_type(value)}, not an object")


def _json_type(value: Any) -> str:
    """What a JSON value is, as a message says it: null, a string, a number, a boolean, an array, an object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def _field(o: dict[str, Any], key: str, path: str, want: type) -> Any:
    """``o[key]`` when it is a JSON value of type ``want`` (dict, list, str, bool, int), None when it is missing or
    null; _Bad naming ``path`` (the field's place in the object) when it is anything else."""
    value = o.get(key)
    if value is None or (isinstance(value, want) and not (want is int and isinstance(value, bool))):
        return value
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean (true or false)", int: "a number"}
    raise _Bad(f"{path} is {_json_type(value)}, not {names[want]}")


def _objects_in(o: dict[str, Any], key: str, path: str, example: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The objects of the array ``o[key]`` (none when it is missing or null), each with its path (``path[i]``); _Bad
    when it is no array or an element is no object (``example``: what an element looks like, for the message)."""
    such = f" such as {example}" if example else ""
    value = o.get(key)
    if value is not None and not isinstance(value, list):
        raise _Bad(f"{path} is {_json_type(value)}, not an array of objects{such}")
    out = []
    for j, item in enumerate(value or []):
        where = f"{path}[{j}]"
        if not isinstance(item, dict):
            raise _Bad(f"{where} is {_json_type(item)}, not an object{such}")
        out.append((where, item))
    return out


_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME_RULES = {
    "label": (re.compile(_LABEL + r"\Z"), 63, "a DNS-1123 label: lower-case letters, digits and '-', beginning and "
              "ending with a letter or digit, at most 63 characters"),
    "subdomain": (re.compile(rf"{_LABEL}(\.{_LABEL})*\Z"), 253, "a DNS-1123 subdomain: lower-case letters, digits, "
                  "'-' and '.', beginning and ending with a letter or digit, at most 253 characters"),
    "dns1035": (re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z"), 63, "a DNS-1035 label: lower-case letters, digits and "
                "'-', beginning with a letter and ending with a letter or digit, at most 63 characters"),
}
"""Kubernetes' name rules (apimachinery's IsDNS1123Label, IsDNS1123Subdomain, IsDNS1035Label): the pattern, the
longest name, and the rule in words."""

_NAMED = {"pod": "subdomain", "namespace": "label", "Service": "dns1035", "Endpoints": "subdomain",
          "EndpointSlice": "subdomain", "container": "label"}
"""Which rule the API holds each name to (ValidatePodName, ValidateNamespaceName, ValidateServiceName, ...)."""


def _is_name(value: Any, of: str) -> bool:
    """Whether ``value`` is a name the API allows for ``of`` (a key of _NAMED)."""
    pattern, longest, _ = _NAME_RULES[_NAMED[of]]
    return isinstance(value, str) and len(value) <= longest and pattern.match(value) is not None


def _checked_name(value: str, path: str, of: str) -> str:
    """``value`` when the API allows it as the name of ``of`` (a pod, a namespace, a Service...); _Bad naming
    ``path`` otherwise: natproof writes names namespace/name, so a name with a "/" (which none may hold) would name
    another pod."""
    if not _is_name(value, of):
        raise _Bad(f"{path} {value!r} is no {of} name Kubernetes allows ({_NAME_RULES[_NAMED[of]][2]})")
    return value


def _name_field(meta: dict[str, Any], path: str = "metadata.name", of: str = "pod") -> str:
    """metadata.name (or a container's name): a string that is not empty and is a name the API allows for ``of``
    (see _NAMED); _Bad otherwise."""
    value = _field(meta, "name", path, str)
    if not value:
        raise _Bad(f"{path} is {'missing' if 'name' not in meta else _json_type(value) if value is None else 'empty'}")
    return _checked_name(value, path, of)


def _address(value: Any, path: str) -> str:
    """An IP address field, as natproof writes addresses (inet_ntop's text); _Bad naming ``path`` otherwise."""
    if not isinstance(value, str):
        raise _Bad(f"{path} is {_json_type(value)}, not an IP address")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise _Bad(f"{path} {value!r} is not an IP address") from None


def _time_field(o: dict[str, Any], key: str, path: str) -> int | None:
    """A timestamp field in epoch ns, None when missing or empty; _Bad naming ``path`` when it is no RFC 3339 time."""
    text = _field(o, key, path, str)
    try:
        return parse_timestamp(text)
    except ValueError:
        raise _Bad(f"{path} {text!r} is not a time as Kubernetes writes it (RFC 3339, e.g. 2024-05-01T10:00:00Z)"
                   ) from None


def _objects(path: str) -> list[dict[str, Any]]:
    """The Kubernetes objects in a file: a List's items, one object, or objects one after another (NDJSON)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a kubectl JSON dump") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a kubectl JSON dump (not UTF-8 text; starts with {raw[:4].hex(' ')})"
                         ) from None
    body = text.lstrip()
    if not body:
        raise InputError(f"{path}: empty file; give the output of kubectl get pods -A -o json (or svc,endpointslices)")
    if body[0] not in "{[":
        if _YAML_START.match(body):
            raise InputError(f"{path}: looks like YAML; natproof reads JSON: kubectl get ... -o json")
        what = "JSON, but not an object or a list" if body[0] in '"-0123456789tfn' and _is_json(body) else "not JSON"
        raise InputError(f"{path}: {what} (starts with {body[:12]!r}); give the output of kubectl get ... -o json")
    decoder = json.JSONDecoder()
    values = []
    pos = len(text) - len(body)
    while pos < len(text):
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
        values.append(value)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    objects: list[dict[str, Any]] = []
    for v in values:
        for item in v if isinstance(v, list) else [v]:
            if not isinstance(item, dict):
                raise InputError(f"{path}: not a kubectl JSON dump ({_json_type(item)} where an object with kind "
                                 "belongs)")
            kind = _kind(item, path, len(objects) + 1)
            if isinstance(item.get("items"), list) or kind.endswith("List"):
                # kubectl's "List", or the API's PodList/ServiceList, whose items may leave their kind out.
                items = item.get("items")
                if items is not None and not isinstance(items, list):
                    raise InputError(f"{path}: not a kubectl JSON dump (the {kind or 'List'}'s items is "
                                     f"{_json_type(items)}, not an array)")
                of = kind[:-4] if kind.endswith("List") else ""
                for sub in items or []:
                    if not isinstance(sub, dict):
                        raise InputError(f"{path}: not a kubectl JSON dump (item #{len(objects) + 1} is "
                                         f"{_json_type(sub)}, not an object)")
                    objects.append(sub if _kind(sub, path, len(objects) + 1) or not of else {**sub, "kind": of})
            else:
                objects.append(item)
    return objects


def _kind(o: dict[str, Any], path: str, number: int) -> str:
    """An object's kind ("" when it has none); InputError when it is not a string."""
    kind = o.get("kind")
    if kind is None:
        return ""
    if not isinstance(kind, str):
        raise InputError(f"{path}: not a kubectl JSON dump (object #{number}'s kind is {_json_type(kind)}, not a "
                         "string)")
    return kind


def parse_timestamp(text: str | None) -> int | None:
    """An RFC 3339 timestamp as kubectl writes it (2024-05-01T10:00:00Z) in epoch ns; None when absent. ValueError
    when it is no such time."""
    if not text:
        return None
    t = str(text).strip()
    when = dt.datetime.fromisoformat(t[:-1] + "+00:00" if t[-1:] in "zZ" else t)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _namespace(meta: dict[str, Any]) -> str:
    """metadata.namespace; "default" when it is missing, null or empty (where kubectl puts a namespaced object
    written without one). _Bad when it is no namespace name the API allows (a DNS-1123 label)."""
    value = _field(meta, "namespace", "metadata.namespace", str)
    return _checked_name(value, "metadata.namespace", "namespace") if value else "default"


def _pod(o: dict[str, Any], source: str) -> PodEntry | None:
    """A Pod object as a PodEntry; None for a hostNetwork pod (its podIP is its node's address, which is not the
    pod's alone: naming it after one pod would name every other host-network pod's and the node's traffic). A pod
    whose podIP is its node's (status.hostIP) is one, whatever spec says (a dump trimmed of spec.hostNetwork). _Bad
    naming the field that is not as kubectl writes it: status.podIP, when given beside status.podIPs, must be the
    list's first (the API writes it so); either alone is read (a cluster before 1.16 wrote no list)."""
    meta, spec = o["metadata"], o["spec"]
    status = _field(o, "status", "status", dict) or {}
    name, namespace = _name_field(meta), _namespace(meta)
    if _field(spec, "hostNetwork", "spec.hostNetwork", bool):
        return None
    ips = [_address(e.get("ip"), f"{where}.ip")
           for where, e in _objects_in(status, "podIPs", "status.podIPs", '{"ip": "10.244.0.5"}')]
    # The API writes podIP as podIPs[0].ip (its v1 conversion, as a node's podCIDR from podCIDRs).
    ips = _with_first(ips, status, "podIP", "status.podIP", "status.podIPs[0].ip",
                      status["podIPs"][0].get("ip") if ips else None)
    host = [_address(e.get("ip"), f"{where}.ip")
            for where, e in _objects_in(status, "hostIPs", "status.hostIPs", '{"ip": "192.0.2.10"}')]
    if _field(status, "hostIP", "status.hostIP", str):
        host.append(_address(status["hostIP"], "status.hostIP"))
    if set(ips) & set(host):
        return None
    end = _time_field(meta, "deletionTimestamp", "metadata.deletionTimestamp")
    if end is None and _field(status, "phase", "status.phase", str) in ("Succeeded", "Failed"):
        known = []
        for where, c in _objects_in(status, "containerStatuses", "status.containerStatuses"):
            state = _field(c, "state", f"{where}.state", dict) or {}
            done = _field(state, "terminated", f"{where}.state.terminated", dict) or {}
            finished = _time_field(done, "finishedAt", f"{where}.state.terminated.finishedAt")
            if finished is not None:
                known.append(finished)
        end = max(known) if known else None
    start = _time_field(meta, "creationTimestamp", "metadata.creationTimestamp")
    if start is None:
        start = _time_field(status, "startTime", "status.startTime")
    containers = tuple(_name_field(c, f"{where}.name", "container")
                       for where, c in _objects_in(spec, "containers", "spec.containers"))
    return PodEntry(namespace=namespace, name=name, addresses=tuple(dict.fromkeys(ips)), start_ns=start, end_ns=end,
                    node=_field(spec, "nodeName", "spec.nodeName", str), containers=containers,
                    uid=_field(meta, "uid", "metadata.uid", str), source=source)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _port(value: Any, path: str, low: int = 1) -> int:
    """A port number field as an int: a JSON number, as kubectl writes every port (the API's int32); _Bad naming
    ``path`` when it is anything else (a string of digits included: the API never writes "80") or out of range
    (``low``-65535: 1 for Service and Endpoints ports, as the API validates them; 0 for an EndpointSlice's, whose
    number the API leaves unchecked but no port exceeds 65535)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        raise _Bad(f"{path} {value!r} is a string, not a number (kubectl writes a port as a number: {int(value)})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{path} {value!r} is no port number" if isinstance(value, str | float | bool)
                   else f"{path} is {'missing' if value is None else _json_type(value)}, not a port number")
    if not low <= value <= 65535:
        raise _Bad(f"{path} {value} is out of range ({low}-65535)")
    return value


_PORT_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*\Z")
"""A named port (IANA_SVC_NAME, RFC 6335: lower-case letters, digits and single inner hyphens, a letter at least),
as a Service's targetPort names its pods' container port."""


def _target_port(value: Any, path: str) -> int | str | None:
    """spec.ports[].targetPort (the API's IntOrString): a port number, or the name of the pods' container port
    ("http", at most 15 characters: IANA_SVC_NAME); None when missing (the API then uses port). _Bad naming
    ``path`` otherwise: a string of digits is neither (the API refuses it as a name: no letter)."""
    if value is None:
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        return _port(value, path)
    if isinstance(value, str) and len(value) <= 15 and _PORT_NAME.match(value):
        return value
    if isinstance(value, str):
        raise _Bad(f"{path} {value!r} is neither a port number nor a port's name (IANA_SVC_NAME: at most 15 "
                   "lower-case letters, digits and inner hyphens, such as 'http')")
    raise _Bad(f"{path} is {_json_type(value)}, not a port number or a port's name")


_PROTOCOLS = ("TCP", "UDP", "SCTP")
"""A port's protocol, spelt as the API spells it (core/v1 Protocol: "TCP", "UDP", "SCTP"; no other case)."""


def _protocol(o: dict[str, Any], path: str) -> str:
    """A port's protocol as natproof names a connection's (tcp, udp, sctp): TCP when it is missing, null or empty,
    as the API defaults it; _Bad naming ``path`` when it is anything but TCP, UDP or SCTP in capitals (a "tcp" is
    nothing the API writes: it refuses it)."""
    value = _field(o, "protocol", path, str)
    if not value:
        return "tcp"
    if value not in _PROTOCOLS:
        hint = f" (the API spells it {value.upper()!r})" if value.upper() in _PROTOCOLS else ""
        raise _Bad(f"{path} {value!r} is not TCP, UDP or SCTP{hint}")
    return value.lower()


def _service(o: dict[str, Any], source: str) -> ServiceEntry | None:
    meta, spec = o["metadata"], o["spec"]
    name, namespace = _name_field(meta, of="Service"), _namespace(meta)
    kind = _field(spec, "type", "spec.type", str) or "ClusterIP"
    if kind == "ExternalName":
        return None
    cluster_ips = _cluster_ips(spec)
    ports = []
    for where, p in _objects_in(spec, "ports", "spec.ports"):
        proto = _protocol(p, f"{where}.protocol")
        node_port = p.get("nodePort")
        ports.append(ServicePort(name=_field(p, "name", f"{where}.name", str) or None,
                                 port=_port(p.get("port"), f"{where}.port"), proto=proto,
                                 node_port=_port(node_port, f"{where}.nodePort") if node_port not in (None, 0)
                                 else None, target_port=_target_port(p.get("targetPort"), f"{where}.targetPort")))
    status = _field(o, "status", "status", dict) or {}
    balancer = _field(status, "loadBalancer", "status.loadBalancer", dict) or {}
    ingress = tuple(_address(i["ip"], f"{where}.ip")
                    for where, i in _objects_in(balancer, "ingress", "status.loadBalancer.ingress")
                    if i.get("ip") is not None)  # an ingress of a hostname alone (an AWS ELB) has no address
    external = tuple(_address(ip, f"spec.externalIPs[{j}]")
                     for j, ip in enumerate(_field(spec, "externalIPs", "spec.externalIPs", list) or []) if ip)
    return ServiceEntry(namespace=namespace, name=name, type=kind, cluster_ips=cluster_ips, ports=tuple(ports),
                        source=source, load_balancer_ips=ingress, external_ips=external)


def _cluster_ips(spec: dict[str, Any]) -> tuple[str, ...]:
    """A Service's ClusterIPs: spec.clusterIPs (spec.clusterIP alone in a dump of a cluster older than 1.20, which
    wrote no list); none for a headless Service ("None"). _Bad naming the field when an address is none, when
    spec.clusterIP is not spec.clusterIPs[0] (the API's Service validation keeps them equal: "first value must
    match `clusterIP`") or when "None" is not the list's only value. A dump trimmed of clusterIP is read from the
    list."""
    given = _field(spec, "clusterIPs", "spec.clusterIPs", list) or []
    listed = [ip if ip in (None, "", "None") else _address(ip, f"spec.clusterIPs[{j}]") for j, ip in enumerate(given)]
    if "None" in listed and len(listed) > 1:
        raise _Bad(f"spec.clusterIPs {given!r} holds 'None' (a headless Service) beside addresses; the API writes "
                   "'None' alone")
    listed = _with_first(listed, spec, "clusterIP", "spec.clusterIP", "spec.clusterIPs[0]",
                         given[0] if given else None)
    return tuple(ip for ip in listed if ip not in (None, "", "None"))


def _with_first(listed: list[Any], o: dict[str, Any], key: str, path: str, first_path: str,
                first_given: Any) -> list[Any]:
    """A list field's values (``listed``, already read) checked against the single field the API keeps equal to its
    first (status.podIP beside status.podIPs, spec.clusterIP beside spec.clusterIPs): the single field ``key`` of
    ``o`` (an address, or "" / "None", read as it is) must be ``listed[0]`` when both are given, else _Bad naming
    both (a dump where they differ was edited, and which one holds is unknown); the list, or the single field alone
    when no list is given (a cluster before 1.16 or 1.20 wrote none)."""
    single = _field(o, key, path, str)
    if single not in (None, "", "None"):
        single = _address(single, path)
    if listed and single is not None and single != listed[0]:
        raise _Bad(f"{path} {o[key]!r} is not {first_path} {first_given!r}; the API keeps them equal")
    return listed if listed or not single else [single]


def _endpoints(o: dict[str, Any]) -> list[EndpointEntry]:
    """The endpoints of an EndpointSlice (discovery.k8s.io/v1) or of a v1 Endpoints object. Their ports name
    nothing (the Service's do) but are checked all the same: a dump that holds a port no API server writes is no
    dump of a cluster. _Bad naming the first field that is not as kubectl writes it."""
    meta = o["metadata"]
    ns = _namespace(meta)
    out = []

    def pod_of(ref: dict[str, Any] | None, where: str) -> str | None:
        if not ref or (_field(ref, "kind", f"{where}.kind", str) or "Pod") != "Pod":
            return None
        name = _field(ref, "name", f"{where}.name", str)
        if not name:
            return None
        space = _field(ref, "namespace", f"{where}.namespace", str)
        space = _checked_name(space, f"{where}.namespace", "namespace") if space else ns
        return f"{space}/{_checked_name(name, f'{where}.name', 'pod')}"

    if o.get("kind") == "EndpointSlice":
        labels = _field(meta, "labels", "metadata.labels", dict) or {}
        at = "metadata.labels['kubernetes.io/service-name']"
        label = _field(labels, "kubernetes.io/service-name", at, str)
        service = f"{ns}/{_checked_name(label, at, 'Service')}" if label else None
        for where, port in _objects_in(o, "ports", "ports"):
            if port.get("port") is not None:  # a port of no number is "all ports" (discovery.k8s.io/v1)
                _port(port["port"], f"{where}.port", low=0)
            _protocol(port, f"{where}.protocol")
        if _field(o, "addressType", "addressType", str) == "FQDN":
            return out  # its endpoints are host names: no address to name
        for where, ep in _objects_in(o, "endpoints", "endpoints"):
            pod = pod_of(_field(ep, "targetRef", f"{where}.targetRef", dict), f"{where}.targetRef")
            node = _field(ep, "nodeName", f"{where}.nodeName", str)
            for k, a in enumerate(_field(ep, "addresses", f"{where}.addresses", list) or []):
                out.append(EndpointEntry(service, _address(a, f"{where}.addresses[{k}]"), pod, node))
    else:
        service = f"{ns}/{_name_field(meta, of='Endpoints')}"
        for where, subset in _objects_in(o, "subsets", "subsets"):
            for at, port in _objects_in(subset, "ports", f"{where}.ports"):
                _port(port.get("port"), f"{at}.port")
                _protocol(port, f"{at}.protocol")
            for key in ("addresses", "notReadyAddresses"):
                for at, a in _objects_in(subset, key, f"{where}.{key}", '{"ip": "10.244.0.5"}'):
                    out.append(EndpointEntry(service, _address(a.get("ip"), f"{at}.ip"),
                                             pod_of(_field(a, "targetRef", f"{at}.targetRef", dict), f"{at}.targetRef"),
                                             _field(a, "nodeName", f"{at}.nodeName", str)))
    return out


# -- ptcpdump's packet comments -----------------------------------------------------------------------------------

PTCPDUMP_KEYS = ("PodName", "PodNamespace", "ContainerName")
"""The lines natproof reads from ptcpdump's comments: "PodName: web-0\\nPodNamespace: default\\nPodUID: ...", one
comment per kind of context (process, container, pod), each "Key: value" per line (internal/writer/pcapng.go)."""


def is_ptcpdump(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a pcapng file whose section header names ptcpdump as the application that wrote it
    (shb_userappl "ptcpdump v0.x"); reads the first block only. False for standard input and gzip files."""
    name = os.fspath(path)
    if name == "-":
        return False
    try:
        with open(name, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    if head[:4] != b"\x0a\x0d\x0d\x0a" or len(head) < 28:
        return False
    endian = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(head[8:12])
    if endian is None:
        return False
    blen = struct.unpack_from(endian + "I", head, 4)[0]
    for code, value in _options(head, 24, min(blen, len(head)) - 4, endian):
        if code == 4 and value.lower().startswith(b"ptcpdump"):
            return True
    return False


def read_comments(path: str | os.PathLike[str]) -> dict[int, dict[str, str]]:
    """The ptcpdump context of each commented packet of a pcapng file: frame number (1-based, as Wireshark and
    natproof count them) -> {"PodName", "PodNamespace", "ContainerName", ...}. Only packets whose comments hold
    "Key: value" lines; {} for pcap files and pcapng files without comments."""
    from natproof.fastdecode import open_buffer

    out: dict[int, dict[str, str]] = {}
    with open_buffer(path) as (buf, _gz, _cut):
        if bytes(buf[:4]) != b"\x0a\x0d\x0d\x0a":
            return out
        end, off, frame, endian = len(buf), 0, 0, "<"
        unpack = struct.unpack_from
        seen: dict[bytes, dict[str, str]] = {}
        while off + 12 <= end:
            if bytes(buf[off:off + 4]) == b"\x0a\x0d\x0d\x0a":
                order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(bytes(buf[off + 8:off + 12]))
                if order is None:
                    break
                endian = order
            btype, blen = unpack(endian + "II", buf, off)
            # Where the capture readers stop (natproof.capture.bad_block): no comment for a frame they never read.
            if blen < 12 or blen % 4 or off + blen > end or unpack(endian + "I", buf, off + blen - 4)[0] != blen:
                break
            if btype in (2, 3, 6):  # packet blocks count as frames, as natproof.capture counts them
                frame += 1
            if btype == 6 and blen > 32:
                caplen = unpack(endian + "I", buf, off + 20)[0]
                opts = off + 28 + ((caplen + 3) & ~3)
                if opts < off + blen - 4:
                    # ptcpdump repeats one process's comments on each of its packets: parse each text once.
                    raw = buf[opts:off + blen - 4]
                    context = seen.get(raw)
                    if context is None:
                        context = seen[raw] = {}
                        for code, value in _options(raw, 0, len(raw), endian):
                            if code == 1:
                                context.update(_comment_lines(value.decode("utf-8", "replace")))
                    if context:
                        out[frame] = context
            off += blen
    return out


def _comment_lines(text: str) -> dict[str, str]:
    """ptcpdump's "Key: value" lines (its own reader splits the same way: internal/types/context.go)."""
    out = {}
    for line in text.strip().splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key.strip() and value.strip():
            out[key.strip()] = value.strip()
    return out


def _options(buf: Any, off: int, end: int, endian: str) -> Iterable[tuple[int, bytes]]:
    while off + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, off)
        if code == 0:
            return
        yield code, bytes(buf[off + 4:off + 4 + length])
        off += 4 + ((length + 3) & ~3)


def pods_from_comments(result: Result, side: str) -> tuple[tuple[PodEntry, ...], dict[str, Any] | None]:
    """The pods ptcpdump named in the packet comments of ``result``'s ``side`` capture, each with the address it
    used and when (first to last commented packet).

    A comment names the process's pod, not which end of the packet it is: a pod's address is the one every packet
    commented with its name carries (as source or destination); when a single peer leaves two, the one in the pod
    networks, then the connection's pod end, decides. A pod whose address stays undecided is left out (counted)."""
    path = result.inside.path if side == "inside" else result.outside.path
    if path == "-" or not os.path.exists(path):
        return (), None
    comments = read_comments(path)
    named = {f: c for f, c in comments.items() if c.get("PodName")}
    if not named:
        return (), None
    # One row per commented packet, its pod by name; then each pod's packets gathered by polars, so Python
    # only sees each pod's distinct (src, dst) pairs and connections (lazily: a packet table on disk is never
    # collected, only what each pod gathers).
    pod_of = {f: f"{c.get('PodNamespace') or 'default'}/{c['PodName']}" for f, c in named.items()}
    frames = pl.DataFrame({"frame_no": list(pod_of), "pod": list(pod_of.values()),
                           "container": [named[f].get("ContainerName") for f in pod_of]},
                          schema={"frame_no": pl.UInt32, "pod": pl.String, "container": pl.String})
    per_pod = (_packet_ends(result, side).join(frames.lazy(), on="frame_no", how="inner")
               .group_by("pod").agg(pl.struct("src", "dst").unique().alias("pairs"),
                                    pl.col("ts_ns").min().alias("first"), pl.col("ts_ns").max().alias("last"),
                                    pl.col("container").drop_nulls().unique().alias("containers"),
                                    pl.col("anchor").drop_nulls().unique().alias("anchors"))).collect()
    nets = [ipaddress.ip_network(n) for n in result.pod_networks]
    pod_ends = _pod_ends(result)
    seen: dict[str, dict[str, Any]] = {}
    for full, pairs, first, last, containers, anchors in per_pod.iter_rows():
        common: set[str] | None = None
        for pair in pairs:
            common = {pair["src"], pair["dst"]} if common is None else common & {pair["src"], pair["dst"]}
        seen[full] = {"ends": common, "first": first, "last": last, "containers": set(containers),
                      "pod_ends": {pod_ends[a] for a in anchors if a in pod_ends}}
    pods, undecided = [], 0
    for full, s in seen.items():
        ends = s["ends"] or set()
        if len(ends) > 1:
            ends = {a for a in ends if any(ipaddress.ip_address(a) in n for n in nets)} or ends
        if len(ends) > 1:
            ends &= s["pod_ends"]
        if len(ends) != 1:
            undecided += 1
            continue
        ns, _, name = full.partition("/")
        pods.append(PodEntry(ns, name, (ends.pop(),), start_ns=s["first"], end_ns=s["last"],
                             containers=tuple(sorted(s["containers"])), source=f"pcapng comments ({path})"))
    info = {"path": path, "kind": "pcapng comments", "commented_packets": len(named), "pods": len(pods),
            "undecided_pods": undecided}
    return tuple(pods), info


def _packet_ends(result: Result, side: str) -> pl.LazyFrame:
    """frame_no, ts_ns, src, dst and anchor of every packet of a connection leg on ``side``: each leg's tuple
    (from the connections' legs, found by their first frame) read in the packet's own direction. A LazyFrame over
    Result.packets: the caller collects what it keeps of it."""
    packets = result.packets(side)
    legs = (result.connections.lazy().select("legs").explode("legs").drop_nulls().unnest("legs")
            .filter(pl.col("observation_point") == side).select("first_frame", "src", "dst").unique("first_frame"))
    firsts = packets.group_by("conn_id").agg(pl.col("frame_no").min().alias("first_frame"))
    tuples = firsts.join(legs, on="first_frame", how="inner").drop("first_frame")
    pk = packets.filter(~pl.col("is_icmp_error").fill_null(False)).select(
        "frame_no", "ts_ns", "conn_id", "is_egress", "anchor").join(tuples, on="conn_id", how="inner")
    egress = pl.col("is_egress")
    return pk.select("frame_no", "ts_ns", "anchor",
                     pl.when(egress).then("src").otherwise("dst").alias("src"),
                     pl.when(egress).then("dst").otherwise("src").alias("dst"))


def _pod_ends(result: Result) -> dict[int, str]:
    """Each connection's pod end (by its anchor, the inside_conn_id): the source of one started inside, the
    destination of one started outside."""
    c = result.connections.filter(pl.col("inside_conn_id").is_not_null())
    addr = pl.when(pl.col("initiator") == "outside").then("inside_dst").otherwise("inside_src")
    return dict(c.select("inside_conn_id", addr.alias("a")).drop_nulls().iter_rows())


def load_names(pods: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
               services: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None) -> Names | None:
    """Names from ``--pods`` and ``--services`` files (one path or several each; either file may hold any of the
    kinds); None when neither is given."""
    paths: list[str | os.PathLike[str]] = []
    for given in (pods, services):
        if given is None:
            continue
        paths += [given] if isinstance(given, str | os.PathLike) else list(given)
    if not paths:
        return None
    return Names.load(*dict.fromkeys(os.fspath(p) for p in paths))


__all__ = ["EndpointEntry", "Match", "Names", "PodEntry", "ServiceEntry", "ServicePort", "apply_names", "is_ptcpdump",
           "load_names", "read_comments", "read_dump"]
