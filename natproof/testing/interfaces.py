"""One capture of several interfaces from a simulated scenario: tcpdump -i any (LINUX_SLL2), or a pcapng of several."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from natproof.testing.scenario import Scenario, Simulation, simulate

LO, OUTSIDE, BRIDGE = 1, 2, 3
"""Interface indexes of the node: lo, eth0 (the generator's outside frames carry 2), cni0. The generator numbers
the pods' host-side veths from 10."""
BRIDGE_DELAY_NS = 2_000
"""How much later ``tcpdump -i any`` sees a pod's frame on the bridge than on its veth (same softirq)."""
_SLL2 = 276
_ETHERNET = 1


def _ifindex(frame: bytes) -> int:
    return int(struct.unpack_from("!i", frame, 4)[0])


def _with_ifindex(frame: bytes, ifindex: int) -> bytes:
    return frame[:4] + struct.pack("!i", ifindex) + frame[8:]


def single_scenario(scenario: Scenario, link: str = "sll2") -> Scenario:
    """``scenario`` as one node-wide capture sees it: both sides on ``link`` and one clock (no offset)."""
    return dataclasses.replace(scenario, inside_link=link, outside_link=link, clock_offset_s=0.0,
                               inside_nanosecond=None, outside_nanosecond=None)


def any_records(sim: Simulation, *, bridge: bool = True) -> list[tuple[int, bytes]]:
    """(ts_ns, SLL2 frame) of ``tcpdump -i any`` on the node: every inside frame on its pod's veth and, with
    ``bridge``, again on cni0 (BRIDGE_DELAY_NS later), and every outside frame on eth0; in time order."""
    if sim.inside_linktype != _SLL2 or sim.outside_linktype != _SLL2:
        raise ValueError("any_records needs a simulation with both sides on sll2 (see single_scenario)")
    records = [(p.ts_ns, 0, i, p.data) for i, p in enumerate(sim.inside)]
    if bridge:
        records += [(p.ts_ns + BRIDGE_DELAY_NS, 1, i, _with_ifindex(p.data, BRIDGE)) for i, p in enumerate(sim.inside)]
    records += [(p.ts_ns, 2, i, p.data) for i, p in enumerate(sim.outside)]
    records.sort()
    return [(ts, data) for ts, _, _, data in records]


def pod_ifindexes(sim: Simulation) -> list[int]:
    """The pods' veth indexes seen in an SLL2 simulation's inside frames."""
    return sorted({_ifindex(p.data) for p in sim.inside})


def ip_link_text(sim: Simulation, prefix: str = "veth") -> str:
    """``ip -o link`` of the node: lo, eth0, cni0 and each pod's veth (``<prefix><index>``, master cni0)."""
    lines = [
        f"{LO}: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000"
        "\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
        f"{OUTSIDE}: eth0@if5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group "
        "default qlen 1000\\    link/ether 02:00:cb:00:71:02 brd ff:ff:ff:ff:ff:ff link-netnsid 0",
        f"{BRIDGE}: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group "
        "default qlen 1000\\    link/ether 0a:58:0a:f4:00:01 brd ff:ff:ff:ff:ff:ff",
    ]
    for idx in pod_ifindexes(sim):
        lines.append(f"{idx}: {prefix}{idx}@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master cni0 "
                     "state UP mode DEFAULT group default qlen 1000\\    link/ether 0a:58:0a:f4:00:63 brd "
                     "ff:ff:ff:ff:ff:ff link-netnsid 1")
    return "\n".join(lines) + "\n"


def write_pcap(path: Path, records: Iterable[tuple[int, bytes]], linktype: int) -> None:
    """A nanosecond little-endian pcap of (ts_ns, frame) records."""
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype))
        for ts, data in records:
            sec, ns = divmod(ts, 1_000_000_000)
            fh.write(struct.pack("<IIII", sec, ns, len(data), len(data)) + data)


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * ((-len(body)) % 4)
    blen = 12 + len(body)
    return struct.pack("<II", btype, blen) + body + struct.pack("<I", blen)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * ((-len(value)) % 4)


def write_pcapng(path: Path, interfaces: Sequence[tuple[str, int]], records: Iterable[tuple[int, int, bytes]]) -> None:
    """A pcapng with one Interface Description Block per (if_name, linktype), nanosecond resolution, and an
    Enhanced Packet Block per (interface number, ts_ns, frame) record, as dumpcap writes with several ``-i``."""
    with open(path, "wb") as fh:
        fh.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for name, linktype in interfaces:
            opts = _option(2, name.encode()) + _option(9, b"\x09") + struct.pack("<HH", 0, 0)
            fh.write(_block(1, struct.pack("<HHI", linktype, 0, 262144) + opts))
        for iface, ts, data in records:
            fh.write(_block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data))


def read_pcap(path: Path) -> tuple[int, list[tuple[int, bytes]]]:
    """(linktype, [(ts_ns, frame)]) of a classic pcap (either byte order, micro- or nanosecond); a file with no
    packet gives an empty list (read_capture would refuse it)."""
    data = Path(path).read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    unit = 1 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1_000
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    out, off = [], 24
    while off + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, off)
        out.append((sec * 1_000_000_000 + frac * unit, data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return linktype, out


def merge_pcapng(parts: Sequence[tuple[str, Path]], out: Path) -> int:
    """One pcapng of several single-interface pcaps, as dumpcap with one ``-i`` per interface writes it: an
    interface block per part (if_name its name, its link type) and every record in time order (ties: part order).
    Returns the records written."""
    interfaces, records = [], []
    for n, (name, path) in enumerate(parts):
        linktype, recs = read_pcap(path)
        interfaces.append((name, linktype))
        records += [(ts, n, i, data) for i, (ts, data) in enumerate(recs)]
    records.sort()
    write_pcapng(Path(out), interfaces, [(n, ts, data) for ts, n, _, data in records])
    return len(records)


def write_any(scenario: Scenario, path: Path, *, bridge: bool = True, links: Path | None = None) -> Simulation:
    """Simulate ``scenario`` on one clock and write it as one ``tcpdump -i any`` capture (and, with ``links``,
    the node's ``ip -o link``); returns the simulation (its truth is the two-file form's)."""
    sim = simulate(single_scenario(scenario, "sll2"))
    write_pcap(Path(path), any_records(sim, bridge=bridge), _SLL2)
    if links is not None:
        Path(links).write_text(ip_link_text(sim))
    return sim


def write_node_pcapng(scenario: Scenario, path: Path) -> Simulation:
    """Simulate ``scenario`` on one clock on Ethernet and write one pcapng of two interfaces, cni0 (every inside
    frame) and eth0 (every outside frame), plus an idle lo."""
    sim = simulate(single_scenario(scenario, "ethernet"))
    records = sorted([(p.ts_ns, 0, p.data) for p in sim.inside] + [(p.ts_ns, 1, p.data) for p in sim.outside])
    write_pcapng(Path(path), [("cni0", _ETHERNET), ("eth0", _ETHERNET), ("lo", _ETHERNET)],
                 [(iface, ts, data) for ts, iface, data in records])
    return sim
