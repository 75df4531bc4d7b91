"""tcpdump on the inside and outside interfaces, and the conntrack event recorder, in the node namespace."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dpkt

from natproof.lab.topology import Lab, LabError

SNAPLEN = 262144
ANY_SNAPLEN = 65600
"""Snaplen of ``tcpdump -i any``: the largest IP packet (65,535 bytes, a GSO packet at the veths' gso_max_size
65536) plus the 20-byte SLL2 header. Immediate mode makes every ring slot snaplen-sized, so this gives four times the
slots of SNAPLEN in the same memory: -i any sees each forwarded packet up to three times."""
RING_KIB = 64 * 1024
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
# Room for a burst of events: ctnetlink drops events (ENOBUFS) when the listener's socket buffer is full. 8 MiB
# lost 61 of many-connections' UPDATE/DESTROY events beside a second busy pytest worker; the buffer costs memory
# only while events wait in it.
CONNTRACK_BUFFER_BYTES = 64 * 1024 * 1024
CONNTRACK_OUTPUT = "timestamp,extended"


@dataclass(frozen=True)
class CaptureStats:
    """What tcpdump reported when it stopped."""

    interface: str
    path: Path
    captured: int | None
    """Packets written to the file ("N packets captured")."""
    dropped_by_kernel: int | None
    """Packets the kernel dropped before tcpdump read them; 0 for a complete capture."""
    size_bytes: int
    command: str


class PacketCapture:
    """One tcpdump writing a nanosecond pcap of one interface; stopped by SIGINT to its pid.

    ``interface="any"`` captures every interface of the namespace at once (``tcpdump -i any``): ``link_type``
    LINUX_SLL2 makes each frame carry its interface index (tcpdump 4.99 picks it for any by default; named so an
    older default, LINUX_SLL without the index, cannot slip in)."""

    ready = "listening on"
    """What the tool prints on stderr once its capture sockets are bound."""

    def __init__(self, lab: Lab, role: str, interface: str, path: Path, link_type: str | None = None,
                 ring_kib: int = RING_KIB, snaplen: int = SNAPLEN, promiscuous: bool = True) -> None:
        self.lab, self.role, self.interface, self.path = lab, role, interface, path
        # No capture filter: ARP, IPv6 router solicitations and MLD reports stay in, as on a real node.
        # -U writes each packet as it arrives. --immediate-mode: with TPACKET_V3 libpcap hands packets over
        # a ring block at a time, when the block fills or its 1 s timeout expires, and a block still open at
        # SIGINT is never written: a run shorter than a second would leave an empty file. -Z root keeps
        # tcpdump from switching to an unprivileged user before it opens the output file. -B: in immediate
        # mode every ring slot is snaplen-sized (256 KiB), so the default 2 MiB ring holds 8 packets and a
        # burst of GSO packets or of 300 connections overflows it ("dropped by kernel").
        options = f"-n -U --immediate-mode --time-stamp-precision=nano -s {snaplen} -B {ring_kib} -Z root"
        self.argv = ["tcpdump", "-i", interface, *options.split(), "-w", str(path)]
        if link_type:
            self.argv[3:3] = ["-y", link_type]
        if not promiscuous:
            # A bridge device in promiscuous mode is handed every frame its ports forward to each other (PACKET_
            # OTHERHOST): a capture that only watches must not change what the bridge does.
            self.argv[3:3] = ["-p"]
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start tcpdump and return once it has printed "listening on" (the socket is bound)."""
        self._proc = self.lab.spawn(
            self.argv, role=self.role, recorder=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._reader = threading.Thread(
            target=self._read_stderr, name=f"tcpdump-{self.interface}", daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._listening.wait(0.02):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(1.0)
                text = " ".join(self._stderr).strip() or "no output"
                raise LabError(f"{self.argv[0]} on {self.interface} did not start: {text}")

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._stderr.append(line)
            if self.ready in line:
                self._listening.set()

    def stop(self) -> CaptureStats:
        """SIGINT by pid (tcpdump then flushes and prints its counts) and wait for it to exit."""
        if self._proc is None:
            raise LabError(f"{self.argv[0]} on {self.interface} was never started")
        self.lab.stop(self._proc, signal.SIGINT, timeout=STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        captured, dropped = self._counts("\n".join(self._stderr))
        return CaptureStats(
            interface=self.interface,
            path=self.path,
            captured=captured,
            dropped_by_kernel=dropped,
            size_bytes=self.path.stat().st_size if self.path.exists() else 0,
            command=" ".join(self.argv),
        )

    def _counts(self, text: str) -> tuple[int | None, int | None]:
        """(packets written, packets the kernel dropped) from what the tool printed when it stopped."""
        return _count(text, r"(\d+) packets? captured"), _count(text, r"(\d+) packets? dropped by kernel")


def node_links(lab: Lab, role: str) -> tuple[str, list[str]]:
    """``ip -o link`` of a namespace: (its text, the names of its interfaces other than lo)."""
    text = lab.run(["ip", "-o", "link"], role=role).stdout
    names = [m.group(1) for m in re.finditer(r"^\d+:\s+([^:@\s]+)", text, re.M)]
    return text, [n for n in names if n != "lo"]


def _count(text: str, pattern: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RecorderStats:
    """How one ``conntrack -E`` listener ended."""

    command: str
    path: Path
    events: int
    """Lines written."""
    socket_drops: int | None
    """The kernel's drop count on the listener's netlink socket (/proc/net/netlink); 0 = no event lost."""
    stderr: str


class ConntrackRecorder:
    """``conntrack -E`` for the given event types, writing ``-o timestamp,extended`` lines (or ``output``) to a file.

    The kernel multicasts each conntrack event to the listeners' netlink sockets; when a socket's buffer
    is full the event is dropped for that listener only and the socket's drop counter grows.
    """

    def __init__(self, lab: Lab, role: str, events: str, path: Path, output: str = CONNTRACK_OUTPUT,
                 niceness: int = 0) -> None:
        self.lab, self.role, self.path, self.niceness = lab, role, path, niceness
        # nice execs conntrack in place: the pid stays the listener's own (its socket is found by it).
        self.argv = ["nice", "-n", str(niceness)] if niceness else []
        self.argv += ["conntrack", "-E", "-e", events, "-o", output]
        self.argv += ["-b", str(CONNTRACK_BUFFER_BYTES)]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the listener and return once its netlink socket has joined the event groups."""
        with open(self.path, "wb") as out:  # the child writes to its own copy of the descriptor
            # A listener niced on purpose stays behind the rest; the others run ahead of the machine's load.
            self._proc = self.lab.spawn(self.argv, role=self.role, recorder=not self.niceness, stdout=out,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while _subscribed_socket(self._proc.pid) is None:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.lab.stop(self._proc)
                err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
                raise LabError(f"conntrack -E did not start: {err or 'no event subscription seen'}")
            time.sleep(0.01)

    def stop(self) -> RecorderStats:
        if self._proc is None:
            raise LabError("conntrack -E was never started")
        row = _subscribed_socket(self._proc.pid)
        drops = row[1] if row else None
        # conntrack exits on SIGINT after printing its "N flow events have been shown." summary.
        self.lab.stop(self._proc, signal.SIGINT, timeout=STOP_TIMEOUT_S)
        err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
        lines = sum(1 for line in self.path.read_text().splitlines() if line.strip())
        return RecorderStats(" ".join(self.argv), self.path, lines, drops, err)


def _subscribed_socket(pid: int) -> tuple[int, int] | None:
    """(inode, drops) of the process's NETLINK_NETFILTER socket that has joined multicast groups, if any.

    /proc/PID/net/netlink lists the sockets of the process's network namespace; the process's own ones are
    found through the socket inodes among its file descriptors.
    """
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
        table = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in table:
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode; Eth 12 is NETLINK_NETFILTER.
        cols = line.split()
        if len(cols) >= 10 and cols[1] == "12" and int(cols[3], 16) != 0 and int(cols[9]) in inodes:
            return int(cols[9]), int(cols[8])
    return None


def snapshot_conntrack(lab: Lab, role: str) -> tuple[str, list[str]]:
    """``conntrack -L -o extended`` for IPv4, then for IPv6: (commands, entry lines) at this moment.

    ``conntrack -L`` lists one family, IPv4 unless ``-f ipv6`` is given; ``-E`` reports events of both.
    """
    commands, lines = [], []
    for family in ("ipv4", "ipv6"):
        argv = ["conntrack", "-L", "-f", family, "-o", "extended"]
        done = lab.run(argv, role=role, check=False)
        if done.returncode != 0:
            raise LabError(f"conntrack -L -f {family} failed: {done.stderr.strip()}")
        commands.append(" ".join(argv))
        lines += [line for line in done.stdout.splitlines() if line.strip()]
    return "; ".join(commands), lines


LAB_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.244.0.0/15", "10.96.0.0/12",  # pods, ClusterIPs
        "203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24",  # node, "internet"
        "0.0.0.0/32", "255.255.255.255/32", "224.0.0.0/4",  # unspecified, broadcast, multicast (IGMP)
        "169.254.0.0/16", "127.0.0.0/8",  # link-local, loopback (lan-noise)
        "::/128", "fe80::/10", "ff00::/8", "::1/128",  # IPv6 noise: DAD, router solicitations, MLD; loopback
        "2001:db8::/32",  # IPv6 documentation range (nat66)
        "10.0.0.0/16", "172.16.0.0/16",  # a VPC (eks-vpc-cni, double-nat) and a network behind a VPN (eks-vpc-cni)
    )
)  # fmt: skip


PCAP_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")
NANO_MAGIC = 0xA1B23C4D


def merge_pcaps(parts: list[Path], path: Path) -> int:
    """One nanosecond pcap of every record of ``parts`` (tcpdump's own nanosecond little-endian pcaps of one link
    type), in time order (a stable sort: ties keep the order of ``parts``), as ``mergecap -w`` writes it. Returns
    the records written."""
    records: list[tuple[int, int, bytes]] = []
    header = b""
    for i, part in enumerate(parts):
        data = part.read_bytes()
        magic, *_ = PCAP_HEADER.unpack_from(data, 0) if len(data) >= PCAP_HEADER.size else (0,)
        if magic != NANO_MAGIC:
            raise LabError(f"{part}: not a little-endian nanosecond pcap (tcpdump --time-stamp-precision=nano)")
        if header and data[20:24] != header[20:24]:
            raise LabError(f"{part}: another link type than {parts[0]}")
        header = header or data[:PCAP_HEADER.size]
        pos = PCAP_HEADER.size
        while pos + RECORD_HEADER.size <= len(data):
            sec, nsec, caplen, _ = RECORD_HEADER.unpack_from(data, pos)
            end = pos + RECORD_HEADER.size + caplen
            records.append((sec * 1_000_000_000 + nsec, i, data[pos:end]))
            pos = end
    records.sort(key=lambda r: (r[0], r[1]))
    with open(path, "wb") as out:
        out.write(header)
        for _, _, record in records:
            out.write(record)
    return len(records)


def count_syns(path: Path) -> int:
    """TCP segments with SYN and without ACK in a pcap: connection attempts, retransmissions included."""
    count = 0
    with open(path, "rb") as f:
        for _, frame in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP):
                if ip.data.flags & dpkt.tcp.TH_SYN and not ip.data.flags & dpkt.tcp.TH_ACK:
                    count += 1
    return count


def foreign_addresses(path: Path) -> Counter[str]:
    """Addresses in an Ethernet capture outside the lab's own ranges, with their packet counts.

    A safety net: every packet the lab makes must stay between its namespaces and its documentation
    addresses; anything else (say a resolver query) is reported as a problem of the run.
    """
    found: Counter[str] = Counter()
    with open(path, "rb") as f:
        for _, frame in dpkt.pcap.Reader(f):
            layer = dpkt.ethernet.Ethernet(frame).data
            if isinstance(layer, dpkt.arp.ARP):
                raw = [layer.spa, layer.tpa]
            elif isinstance(layer, dpkt.ip.IP | dpkt.ip6.IP6):
                raw = [layer.src, layer.dst]
            else:
                continue
            for packed in raw:
                address = ipaddress.ip_address(packed)
                if not any(address in net for net in LAB_NETWORKS if net.version == address.version):
                    found[str(address)] += 1
    return found


def foreign_ip_addresses(path: Path) -> Counter[str]:
    """foreign_addresses for a capture of any link type natproof reads (``tcpdump -i any``, a pcapng of several
    interfaces): IP sources and destinations outside the lab's ranges, with their packet counts."""
    import polars as pl

    from natproof.packets import load_packets

    _, packets = load_packets(path, columns=("src", "dst"))
    found: Counter[str] = Counter()
    for col in ("src", "dst"):
        for address, count in packets[col].cast(pl.String).value_counts().iter_rows():
            ip = ipaddress.ip_address(address)
            if not any(ip in net for net in LAB_NETWORKS if net.version == ip.version):
                found[address] += count
    return found


KERNEL_SNAPSHOTS = {
    "list.txt": ["conntrack", "-L"],
    "list-extended.txt": ["conntrack", "-L", "-o", "extended"],
    "list.xml": ["conntrack", "-L", "-o", "xml"],
    "proc-nf_conntrack.txt": ["cat", "/proc/net/nf_conntrack"],
}
"""The conntrack table in every listing format users hold, taken one after another after the traffic: file name,
command. /proc/net/nf_conntrack is written only where the namespace has it (CONFIG_NF_CONNTRACK_PROCFS)."""


def snapshot_kernel_records(lab: Lab, role: str, folder: Path) -> dict[str, dict[str, object]]:
    """Write KERNEL_SNAPSHOTS into ``folder``; returns, per file written, its command and entry count."""
    written: dict[str, dict[str, object]] = {}
    for name, argv in KERNEL_SNAPSHOTS.items():
        done = lab.run(argv, role=role, check=False)
        if done.returncode != 0:
            if argv[0] == "cat":
                continue  # no /proc/net/nf_conntrack in this kernel: nothing to record
            raise LabError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        (folder / name).write_text(done.stdout)
        entries = done.stdout.count("<flow") if name.endswith(".xml") else len(done.stdout.splitlines())
        written[name] = {"command": " ".join(argv), "entries": entries}
    return written
