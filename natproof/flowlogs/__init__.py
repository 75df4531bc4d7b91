"""AWS VPC Flow Logs as an observation point: read them, join a NAT gateway's two sides, measure its port use.

The library API a grading script (or the capture chain) calls::

    from natproof.flowlogs import read_flow_logs, parse_nat_gateway, node_tuples, join_nat_gateway

    flowlog = read_flow_logs(["flowlogs/"])                    # text, gzip, CloudWatch export or Parquet
    gateways = [parse_nat_gateway("10.0.1.1=203.0.113.20")]    # aws ec2 describe-nat-gateways: PrivateIp=PublicIp
    joined = join_nat_gateway(node_tuples([("tcp", "10.0.1.10", 40000, "198.51.100.10", 80, t_ns)]),
                              flowlog, gateways)               # polars frame: evidence, gateway_sport, ...
    flows = trace_public(flowlog, gateways, "203.0.113.20", 7362, at_ns=t_ns)   # public tuple -> node tuple(s)
    usage = port_usage(flowlog, gateways)                      # ports per destination vs AWS's 55,000

Evidence is never stronger than the records allow: "flow log, unique candidate", "flow log, ambiguous: N
candidates" or "no candidate" (with why); captures on both sides of a NAT give "packets", a NAT's conntrack entry
"kernel record" (docs/model.md).
"""

from natproof.flowlogs.gateway import (
    EVIDENCE_KERNEL,
    EVIDENCE_NONE,
    EVIDENCE_PACKETS,
    EVIDENCE_UNIQUE,
    LAG_S,
    NODE_TUPLE_SCHEMA,
    TOLERANCE_S,
    NatGateway,
    evidence_ambiguous,
    evidence_level,
    gateway_interfaces,
    join_nat_gateway,
    node_tuples,
    node_tuples_from_conntrack,
    node_tuples_from_result,
    parse_nat_gateway,
    trace_public,
)
from natproof.flowlogs.ports import CONNECTIONS_PER_DESTINATION, PortUsage, infer_gateways, port_usage
from natproof.flowlogs.records import (
    DEFAULT_FORMAT,
    FIELDS,
    RECORD_SCHEMA,
    FlowLog,
    FlowLogFile,
    parse_format,
    read_flow_logs,
)

__all__ = [
    "CONNECTIONS_PER_DESTINATION",
    "DEFAULT_FORMAT",
    "EVIDENCE_KERNEL",
    "EVIDENCE_NONE",
    "EVIDENCE_PACKETS",
    "EVIDENCE_UNIQUE",
    "FIELDS",
    "LAG_S",
    "NODE_TUPLE_SCHEMA",
    "RECORD_SCHEMA",
    "TOLERANCE_S",
    "FlowLog",
    "FlowLogFile",
    "NatGateway",
    "PortUsage",
    "evidence_ambiguous",
    "evidence_level",
    "gateway_interfaces",
    "infer_gateways",
    "join_nat_gateway",
    "node_tuples",
    "node_tuples_from_conntrack",
    "node_tuples_from_result",
    "parse_format",
    "parse_nat_gateway",
    "port_usage",
    "read_flow_logs",
    "trace_public",
]
