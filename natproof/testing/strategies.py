"""Hypothesis strategies that draw small random MASQUERADE scenarios for the simulator."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from natproof.testing.scenario import DOCUMENTATION_NETS, LINKTYPES, OUTCOMES, Flow, Scenario

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
