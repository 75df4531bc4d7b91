"""Hypothesis strategies that draw small random NAT scenarios (MASQUERADE, ClusterIP, NodePort) for the simulator."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from natproof.testing.scenario import (
    DOCUMENTATION_NETS,
    FTP_PORT,
    LINKTYPES,
    MODEL_OUTCOMES,
    NODE_PORT_RANGE,
    OUTCOMES,
    SERVICE_CIDR,
    Flow,
    Scenario,
    Service,
)

_POD_NET = ipaddress.IPv4Network("10.244.0.0/16")
_NAT_IP = "203.0.113.2"
_DPORTS = (53, 80, 123, 443, 5000, 8080)


def pod_addresses() -> st.SearchStrategy[str]:
    """Pod addresses in 10.244.0.0/16, avoiding each node's .0, .1 (the bridge) and .255."""
    return st.builds(
        lambda third, fourth: str(_POD_NET.network_address + third * 256 + fourth),
        st.integers(0, 255),
        st.integers(2, 254),
    )


def server_addresses() -> st.SearchStrategy[str]:
    """Server addresses in the RFC 5737 documentation ranges only, never the node's own nat_ip."""
    return st.builds(
        lambda net, host: str(net.network_address + host),
        st.sampled_from(DOCUMENTATION_NETS),
        st.integers(1, 254),
    ).filter(lambda addr: addr != _NAT_IP)


@st.composite
def scenarios(draw: st.DrawFn, max_flows: int = 8) -> Scenario:
    """A random small scenario: 1-``max_flows`` flows of random outcomes from a few pods to a few
    servers, with deliberate source-port clashes, optional --random-fully, GRO, link types, timestamp
    precisions and a clock offset within +-5 s. No two flows share an inside 5-tuple."""
    pods = draw(st.lists(pod_addresses(), min_size=1, max_size=4, unique=True))
    servers = draw(st.lists(server_addresses(), min_size=1, max_size=3, unique=True))
    flows: list[Flow] = []
    used: set[tuple[str, str, int, str, int]] = set()
    for _ in range(draw(st.integers(1, max_flows))):
        outcome = draw(st.sampled_from(OUTCOMES))
        start_s = draw(st.integers(0, 20_000)) / 1000
        earlier = [f for f in flows if f.outcome != "internal"]
        if outcome != "internal" and earlier and draw(st.booleans()):
            # Another pod reuses an earlier flow's source port toward the same server at about the same
            # time: the outside tuple is taken, so MASQUERADE must pick another port.
            model = draw(st.sampled_from(earlier))
            proto, sport, dst, dport = model.proto, model.sport, model.dst, model.dport
            others = [p for p in pods if p != model.pod]
            pod = draw(st.sampled_from(others) if others else pod_addresses())
            start_s = model.start_s + draw(st.integers(0, 2_000)) / 1000
        else:
            proto = draw(st.sampled_from(("tcp", "udp", "icmp")))
            pod = draw(st.sampled_from(pods))
            if outcome == "internal":
                peers = [p for p in pods if p != pod]
                dst = draw(
                    st.sampled_from(peers) if peers else pod_addresses().filter(lambda p, me=pod: p != me)
                )
            else:
                dst = draw(st.sampled_from(servers))
            sport = draw(st.integers(0, 65535) if proto == "icmp" else st.integers(1024, 65535))
            dport = 0 if proto == "icmp" else draw(st.sampled_from(_DPORTS))
        # Keep inside 5-tuples unique: the same tuple twice at once would be one connection, not two.
        while (proto, pod, sport, dst, dport) in used:
            sport = sport + 1 if sport < 65535 else 1024
        used.add((proto, pod, sport, dst, dport))
        flows.append(
            Flow(
                proto,
                pod,
                sport,
                dst,
                dport,
                outcome=outcome,
                start_s=start_s,
                requests=draw(st.integers(1, 3)),
                response_segments=draw(st.integers(1, 4)),
                syn_retransmit=draw(st.booleans()),
            )
        )
    links = st.sampled_from(sorted(LINKTYPES))
    return Scenario(
        name="hypothesis",
        flows=tuple(flows),
        random_fully=draw(st.booleans()),
        clock_offset_s=draw(st.integers(-5_000_000, 5_000_000)) / 1_000_000,
        seed=draw(st.integers(0, 2**32 - 1)),
        noise=draw(st.booleans()),
        gro=draw(st.booleans()),
        inside_link=draw(links),
        outside_link=draw(links),
        inside_nanosecond=draw(st.booleans()),
        outside_nanosecond=draw(st.booleans()),
    )


_SERVICE_PORTS = (21, 53, 80, 443)
_TARGET_PORTS = (21, 53, 8080, 6443)
_CLUSTER_IP_OUTCOMES = ("translated", "no_reply", "reply_dropped", "not_forwarded", "reply_other_path")
_NODE_PORT_OUTCOMES = ("translated", "no_reply", "reply_dropped", "not_forwarded")


@st.composite
def cluster_ip_services(draw: st.DrawFn) -> Service:
    """A ClusterIP in 10.96.0.0/12 with 1-3 endpoints off the node (documentation addresses)."""
    address = str(SERVICE_CIDR.network_address + draw(st.integers(1, SERVICE_CIDR.num_addresses - 2)))
    port = draw(st.sampled_from(_SERVICE_PORTS))
    # An FTP Service's endpoints listen on 21, so the helper watches them; others on any target port.
    target = st.just(FTP_PORT) if port == FTP_PORT else st.sampled_from(_TARGET_PORTS)
    backends = draw(st.lists(st.tuples(server_addresses(), target), min_size=1, max_size=3, unique=True))
    return Service("ClusterIP", address, port, tuple(backends))


@st.composite
def node_port_services(draw: st.DrawFn, pods: list[str]) -> Service:
    """A NodePort on the node's address in front of 1-2 of ``pods``, policy Cluster or Local."""
    port = draw(st.integers(*NODE_PORT_RANGE))
    target = draw(st.sampled_from(_TARGET_PORTS))
    backends = draw(st.lists(st.sampled_from(pods), min_size=1, max_size=2, unique=True))
    policy = draw(st.sampled_from(("Cluster", "Local")))
    return Service("NodePort", _NAT_IP, port, tuple((b, target) for b in backends), policy)


@st.composite
def model_scenarios(draw: st.DrawFn, max_flows: int = 8) -> Scenario:
    """A random small scenario mixing pod egress (MASQUERADE), ClusterIP DNAT and NodePort inbound
    flows with every docs/model.md verdict each kind can come to, deliberate source-port clashes (plain
    egress and ClusterIP flows meeting on one backend), and the per-packet failure options (leak,
    invalid_reply, alg) on translated TCP connections. Truth rows always carry the model's fields. GRO
    stays off (a merged packet has no single fate). No two flows share an original 5-tuple."""
    pods = draw(st.lists(pod_addresses(), min_size=1, max_size=4, unique=True))
    servers = draw(st.lists(server_addresses(), min_size=1, max_size=3, unique=True))
    cluster_ips = draw(st.lists(cluster_ip_services(), min_size=1, max_size=2, unique_by=lambda s: s.address))
    node_ports = draw(st.lists(node_port_services(pods), min_size=1, max_size=2, unique_by=lambda s: s.port))
    clients = draw(st.lists(server_addresses(), min_size=1, max_size=2, unique=True))
    flows: list[Flow] = []
    used: set[tuple[str, str, int, str, int]] = set()
    for _ in range(draw(st.integers(1, max_flows))):
        kind = draw(st.sampled_from(("egress", "cluster_ip", "node_port")))
        start_s = draw(st.integers(0, 20_000)) / 1000
        service: Service | None = None
        backend = 0
        if kind == "node_port":
            service = draw(st.sampled_from(node_ports))
            backend = draw(st.integers(0, len(service.backends) - 1))
            outcome = draw(st.sampled_from(_NODE_PORT_OUTCOMES))
            proto = draw(st.sampled_from(("tcp", "udp")))
            pod = draw(st.sampled_from(clients))
            # Client ports above the NodePort range and the servers' ports: no outside tuple of an
            # egress mapping can be an inbound connection's reversed.
            sport = draw(st.integers(32768, 60999))
            dst, dport = _NAT_IP, service.port
        else:
            earlier = [f for f in flows if f.initiator == "inside" and f.outcome not in ("internal", "untranslated")]
            if kind == "cluster_ip":
                service = draw(st.sampled_from(cluster_ips))
                backend = draw(st.integers(0, len(service.backends) - 1))
                outcome = draw(st.sampled_from(_CLUSTER_IP_OUTCOMES))
                proto = draw(st.sampled_from(("tcp", "udp")))
                dst, dport = service.address, service.port
            else:
                outcome = draw(st.sampled_from(MODEL_OUTCOMES))
                proto = draw(st.sampled_from(("tcp", "udp", "icmp")))
            pod = draw(st.sampled_from(pods))
            sport = draw(st.integers(0, 65535) if proto == "icmp" else st.integers(1024, 65535))
            if kind == "egress":
                if outcome == "internal":
                    peers = [p for p in pods if p != pod]
                    dst = draw(
                        st.sampled_from(peers) if peers else pod_addresses().filter(lambda p, me=pod: p != me)
                    )
                else:
                    dst = draw(st.sampled_from(servers))
                dport = 0 if proto == "icmp" else draw(st.sampled_from((*_DPORTS, FTP_PORT)))
            clash = [f for f in earlier if f.proto == proto and f.pod != pod]
            if outcome != "internal" and clash and draw(st.booleans()):
                # Another pod's connection, same source port, toward the same server and port once DNAT
                # is done (directly or through a ClusterIP): MASQUERADE must move one of them.
                model = draw(st.sampled_from(clash))
                sport = model.sport
                start_s = model.start_s + draw(st.integers(0, 2_000)) / 1000
                if kind == "egress" and model.endpoint is not None and proto != "icmp":
                    dst, dport = model.endpoint
                elif kind == "egress":
                    dst, dport = model.dst, model.dport
        leak, invalid_reply, alg = 0, False, False
        responder_port = dport if service is None else service.backends[backend][1]
        if proto == "tcp" and outcome == "translated":
            alg = responder_port == FTP_PORT and draw(st.booleans())
            if kind != "node_port":
                failure = draw(st.sampled_from(("none", "leak", "invalid_reply")))
                leak = draw(st.integers(1, 7)) if failure == "leak" else 0
                invalid_reply = failure == "invalid_reply"
        # Keep original 5-tuples unique: the same tuple twice at once would be one connection, not two.
        # A NodePort with policy Local keeps the client's tuple inside: keep that unique as well.
        local = kind == "node_port" and service is not None and service.external_traffic_policy == "Local"
        target = service.backends[backend] if service is not None else ("", 0)
        while (proto, pod, sport, dst, dport) in used or (local and (proto, pod, sport, *target) in used):
            sport = sport + 1 if sport < 65535 else 1024
        used.add((proto, pod, sport, dst, dport))
        if local:
            used.add((proto, pod, sport, *target))
        flows.append(
            Flow(
                proto,
                pod,
                sport,
                dst,
                dport,
                outcome=outcome,
                start_s=start_s,
                requests=draw(st.integers(1, 3)),
                response_segments=draw(st.integers(1, 4)),
                syn_retransmit=draw(st.booleans()),
                service=service,
                backend=backend,
                leak=leak,
                invalid_reply=invalid_reply,
                alg=alg,
            )
        )
    links = st.sampled_from(sorted(LINKTYPES))
    return Scenario(
        name="hypothesis-model",
        flows=tuple(flows),
        random_fully=draw(st.booleans()),
        clock_offset_s=draw(st.integers(-5_000_000, 5_000_000)) / 1_000_000,
        seed=draw(st.integers(0, 2**32 - 1)),
        noise=draw(st.booleans()),
        inside_link=draw(links),
        outside_link=draw(links),
        inside_nanosecond=draw(st.booleans()),
        outside_nanosecond=draw(st.booleans()),
        model_truth=True,
    )
