"""Real-kernel NAT lab: namespaces, MASQUERADE, tcpdump and conntrack produce captures with their truth."""

from natproof.lab.scenarios import list_scenarios, run_scenario
from natproof.lab.topology import LabError, leftover_namespaces

__all__ = ["LabError", "leftover_namespaces", "list_scenarios", "run_scenario"]
