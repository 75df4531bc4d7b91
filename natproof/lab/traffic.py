"""Small stdlib-only servers and clients run inside the lab namespaces, and the attempts they report."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from natproof.lab.topology import Lab, LabError

SERVER_LIFETIME_S = 120.0
"""A server exits by itself after this long even if teardown never reaches it."""
READY_TIMEOUT_S = 5.0
START_DELAY_S = 0.4
"""Clients start together this long after they are spawned (Python's start-up fits well inside)."""

# An HTTP/1.0 server: GET / answers a short text, GET /bytes/N answers N bytes. One connection per
# request, closed by the server after the response, so the server side holds TIME_WAIT.
HTTP_SERVER = r"""
import http.server, socket, socketserver, sys, threading, time
address, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "natproof-lab"
    sys_version = ""
    wbufsize = -1  # buffered: status line, headers and a short body leave in one segment

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            size = min(int(self.path[7:]), 64 * 1024 * 1024)
            chunk = bytes(range(256)) * 256
        else:
            body = ("hello from %s:%d\n" % (address, port)).encode()
            size, chunk = len(body), body
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        left = size
        while left > 0:
            piece = chunk[:left]
            self.wfile.write(piece)
            left -= len(piece)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 512  # bursts from several pods must not overflow the accept queue
    allow_reuse_address = True
    address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS query to the host's resolver:
        # traffic to an address outside the lab. Bind without it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = address, port

server = Server((address, port), Handler)
print("ready", flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(lifetime)
"""

UDP_ECHO_SERVER = r"""
import socket, sys, time
address, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# An IPv6 link-local address names its interface: fe80::1%cni0 (getaddrinfo fills in the scope id).
family, _, _, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_DGRAM)[0]
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.bind(where)
sock.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + lifetime
while time.monotonic() < end:
    try:
        data, peer = sock.recvfrom(65535)
    except socket.timeout:
        continue
    sock.sendto(data, peer)
"""

# Just enough FTP for an active-mode RETR: USER, PASS, TYPE, PORT, RETR, QUIT. The data connection is
# opened by the server from port 20 to the address and port of the last PORT command, as RFC 959 says.
FTP_SERVER = r"""
import socket, sys, threading, time
address, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
FILE = b"natproof lab ftp file\n" * 40

def session(conn):
    f = conn.makefile("rb")
    def reply(text):
        conn.sendall(text.encode() + b"\r\n")
    reply("220 natproof lab ftp")
    data_to = None
    for raw in f:
        line = raw.decode(errors="replace").strip()
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb == "USER":
            reply("331 any password")
        elif verb == "PASS":
            reply("230 logged in")
        elif verb == "TYPE":
            reply("200 type set")
        elif verb == "PORT":
            nums = [int(n) for n in arg.split(",")]
            data_to = (".".join(map(str, nums[:4])), nums[4] * 256 + nums[5])
            reply("200 PORT command successful")
        elif verb in ("RETR", "LIST") and data_to:
            reply("150 opening data connection")
            data = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            data.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            data.bind((address, 20))
            data.settimeout(5)
            try:
                data.connect(data_to)
                data.sendall(FILE if verb == "RETR" else b"-rw-r--r-- 1 lab lab 880 Jan 1 00:00 hello.txt\r\n")
                data.close()
                reply("226 transfer complete")
            except OSError as exc:
                reply("425 cannot open data connection: %s" % exc)
            data_to = None
        elif verb == "QUIT":
            reply("221 bye")
            break
        else:
            reply("502 not implemented")
    conn.close()

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((address, port))
sock.listen(16)
print("ready", flush=True)

def serve():
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=session, args=(conn,), daemon=True).start()

threading.Thread(target=serve, daemon=True).start()
time.sleep(lifetime)
"""

CHECKSUM = r"""
def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF
"""
"""The Internet checksum (RFC 1071), for the scripts that build raw packets (stdlib only, in a namespace)."""

# Waits on inet's eth0 for the SYN-ACK of one connection (server address and port to the node's address and
# a given port), then sends one TCP segment of that connection whose sequence number is half the sequence
# space away from the server's: out of window for any receiver, and for conntrack (tcp_in_window).
OOW_INJECTOR = r"""
import socket, struct, sys, time
address, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
node, node_port, delay = sys.argv[4], int(sys.argv[5]), float(sys.argv[6])

""" + CHECKSUM + r"""
# ETH_P_ALL: the kernel hands copies of outgoing frames (the SYN-ACK) to ETH_P_ALL taps only.
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sniff.bind(("eth0", 0))
send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL implied
src, dst = socket.inet_aton(address), socket.inet_aton(node)
print("ready", flush=True)
end = time.monotonic() + lifetime
sniff.settimeout(0.5)
while time.monotonic() < end:
    try:
        frame = sniff.recv(65535)
    except socket.timeout:
        continue
    ip = frame[14:]
    if frame[12:14] != b"\x08\x00" or len(ip) < 40 or ip[9] != 6 or ip[12:16] != src or ip[16:20] != dst:
        continue
    tcp = ip[(ip[0] & 15) * 4:]
    sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", tcp[:14])
    if sport != port or dport != node_port or off_flags & 0x12 != 0x12:
        continue
    time.sleep(delay)
    payload = b"natproof out-of-window segment\n"
    bad_seq = (seq + 1 + 2**31) % 2**32
    header = struct.pack("!HHIIBBHHH", port, node_port, bad_seq, ack, 5 << 4, 0x18, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(header) + len(payload))
    header = header[:16] + struct.pack("!H", checksum(pseudo + header + payload)) + header[18:]
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(header) + len(payload), 0x4e50, 0, 64, 6, 0, src, dst)
    send.sendto(iph + header + payload, (node, 0))
    print("injected seq=%d ack=%d" % (bad_seq, ack), flush=True)
    break
time.sleep(max(0.0, end - time.monotonic()))
"""

# Runs every action of one pod's plan in its own thread from a common start time, and prints one JSON
# line per attempt (one TCP connection, one UDP socket, or one ICMP echo identifier).
CLIENT = r"""
import errno, ftplib, json, select, socket, struct, sys, threading, time
plan = json.loads(sys.argv[1])
lock = threading.Lock()

def emit(action, src, sport, t_start, outcome, detail=""):
    rec = {"pod": plan["pod"], "proto": action["kind_proto"], "src": src, "sport": sport,
           "dst": action["dst"], "dport": action["dport"] if action["kind_proto"] != "icmp" else 0,
           "t_start": t_start, "t_end": time.time(), "outcome": outcome, "detail": detail,
           "expect": action["expect"], "expect_outcome": action["outcome"]}
    with lock:
        print(json.dumps(rec), flush=True)

def source_for(dst):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((dst, 9))  # a routing lookup only: a UDP connect sends nothing
    try:
        return probe.getsockname()[0]
    finally:
        probe.close()

def family(dst):
    return socket.AF_INET6 if ":" in dst else socket.AF_INET

def http_once(a):
    sock = socket.socket(family(a["dst"]), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if a["sport"] or a["bind"]:
        sock.bind((a["bind"], a["sport"]))
    sock.setblocking(False)
    t_start = time.time()
    sock.connect_ex((a["dst"], a["dport"]))
    src, sport = sock.getsockname()[:2]  # the port is chosen at connect(), before the SYN leaves
    try:
        _, writable, _ = select.select([], [sock], [], a["timeout"])
        if not writable:
            return emit(a, src, sport, t_start, "timeout", "no SYN-ACK within %gs" % a["timeout"])
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return emit(a, src, sport, t_start, "refused" if err == errno.ECONNREFUSED else "error",
                        errno.errorcode.get(err, str(err)))
        sock.setblocking(True)
        sock.settimeout(a["timeout"])
        time.sleep(a["hold"])
        if a["kind"] == "connect":
            # Connected, held idle, closed without a request: the FIN is the next packet.
            return emit(a, src, sport, t_start, "ok", "connected, idle %gs, closed" % a["hold"])
        sock.sendall(("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (a["path"], a["dst"])).encode())
        chunks = []
        while True:
            data = sock.recv(262144)
            if not data:
                break
            chunks.append(data)
        raw = b"".join(chunks)
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "?"
        length = [h[15:] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
        complete = status == "200" and length and int(length[0]) == len(body)
        detail = "HTTP %s, %d body bytes" % (status, len(body))
        emit(a, src, sport, t_start, "ok" if complete else "error", detail)
    except socket.timeout:
        emit(a, src, sport, t_start, "timeout", "response not complete within %gs" % a["timeout"])
    except OSError as exc:
        emit(a, src, sport, t_start, "error", str(exc))
    finally:
        sock.close()

def ftp(a):
    # Active mode: the client listens and sends PORT with its own address; the server connects back.
    client = ftplib.FTP(timeout=a["timeout"])
    t_start = time.time()
    try:
        client.connect(a["dst"], a["dport"])
    except OSError as exc:
        return emit(a, "", 0, t_start, "error", str(exc))
    src, sport = client.sock.getsockname()
    try:
        client.login("anonymous", "lab@natproof")
        client.set_pasv(False)
        data = []
        client.retrbinary("RETR hello.txt", data.append)
        client.quit()
        size = len(b"".join(data))
        emit(a, src, sport, t_start, "ok" if size == 880 else "error", "RETR %d bytes (active mode)" % size)
    except (OSError, ftplib.Error) as exc:
        emit(a, src, sport, t_start, "error", str(exc))

def udp(a):
    sock = socket.socket(family(a["dst"]), socket.SOCK_DGRAM)
    if a["sport"] or a["bind"]:
        sock.bind((a["bind"], a["sport"]))
    sock.connect((a["dst"], a["dport"]))  # connected: an ICMP error comes back as ECONNREFUSED
    sock.settimeout(a["timeout"])
    src, sport = sock.getsockname()[:2]
    t_start, answered, outcome = time.time(), 0, "ok"
    try:
        for i in range(a["count"]):
            sock.send(b"natproof udp %d from %s:%d\n" % (i, src.encode(), sport))
            try:
                sock.recv(65535)
                answered += 1
            except ConnectionRefusedError:
                outcome = "refused"
                break
            except socket.timeout:
                outcome = "timeout"
            time.sleep(a["interval"])
    finally:
        sock.close()
    emit(a, src, sport, t_start, outcome, "%d of %d datagrams answered" % (answered, a["count"]))

def send(a):
    # Datagrams nobody forwards (multicast, broadcast, link-local, DHCP): sent and not reported as attempts,
    # since they are no connection through the NAT. An IPv6 link-local or multicast address names its interface
    # (fe80::1%eth0, ff02::fb%eth0); replies are read until a["timeout"] after the last datagram, so none comes
    # to a closed socket (which would answer it with an ICMP error).
    fam, _, _, _, where = socket.getaddrinfo(a["dst"], a["dport"], type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    elif where[3]:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, where[3])
    if a["sport"] or a["bind"]:
        # AI_PASSIVE: no bind address means the wildcard one (without it getaddrinfo gives loopback).
        sock.bind(socket.getaddrinfo(a["bind"] or None, a["sport"], fam, socket.SOCK_DGRAM, 0,
                                     socket.AI_PASSIVE)[0][4])
    try:
        for i in range(a["count"]):
            sock.sendto(a["path"].encode() + b" %d" % i, where)
            if i + 1 < a["count"]:
                time.sleep(a["interval"])
        deadline = time.monotonic() + a["timeout"]
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                sock.recv(65535)
            except OSError:
                break
    finally:
        sock.close()

""" + CHECKSUM + r"""
def ping(a):
    # A raw socket lets the pod choose the echo identifier (a ping socket would take it from its port).
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident, src, t_start, answered = a["sport"] & 0xFFFF, source_for(a["dst"]), time.time(), 0
    try:
        for seq in range(1, a["count"] + 1):
            payload = struct.pack("!d", time.time()) + bytes(range(48))  # 56 bytes, as ping(8) sends
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            sock.sendto(struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload,
                        (a["dst"], 0))
            deadline = time.monotonic() + a["timeout"]
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, peer = sock.recvfrom(65535)
                except socket.timeout:
                    break
                ihl = (data[0] & 15) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if kind == 0 and rid == ident and rseq == seq and peer[0] == a["dst"]:
                    answered += 1
                    break
            if seq < a["count"]:
                time.sleep(a["interval"])
    finally:
        sock.close()
    outcome = "ok" if answered == a["count"] else ("timeout" if answered == 0 else "partial")
    emit(a, src, ident, t_start, outcome, "%d of %d echoes answered" % (answered, a["count"]))

def run(a):
    time.sleep(max(0.0, plan["start_at"] + a["at"] - time.time()))
    if a["kind"] in ("http", "connect"):
        for i in range(a["count"]):
            if i:
                time.sleep(a["interval"])
            http_once(a)
    elif a["kind"] == "udp":
        udp(a)
    elif a["kind"] == "ping":
        ping(a)
    elif a["kind"] == "ftp":
        ftp(a)
    elif a["kind"] == "send":
        try:
            send(a)
        except OSError as exc:
            # Nothing reports these datagrams: a failure to send them must fail the client.
            failures.append("send to %s:%d: %s" % (a["dst"], a["dport"], exc))

failures = []
threads = [threading.Thread(target=run, args=(a,)) for a in plan["actions"]]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failures:
    sys.exit("; ".join(failures))
"""

PROTO_OF_KIND = {"http": "tcp", "connect": "tcp", "ftp": "tcp", "udp": "udp", "ping": "icmp", "send": "udp"}
SERVER_SCRIPTS = {"http": HTTP_SERVER, "udp-echo": UDP_ECHO_SERVER, "ftp": FTP_SERVER, "oow-injector": OOW_INJECTOR}
SERVER_PROTO = {"http": "tcp", "udp-echo": "udp", "ftp": "tcp", "oow-injector": "tcp"}


@dataclass(frozen=True)
class Server:
    """A server process in one namespace."""

    role: str
    """Namespace role: ``inet`` or a pod name."""
    kind: str
    """``http`` (TCP), ``udp-echo``, ``ftp`` (control on ``port``, data from port 20), or ``oow-injector``
    (not a server: injects one out-of-window segment from ``address:port`` into a connection, see ``args``)."""
    address: str
    port: int
    args: tuple[str, ...] = ()
    """Extra arguments of the script (the injector's node address, node port and delay in seconds)."""

    def describe(self) -> str:
        if self.kind == "oow-injector":
            node, node_port, delay = self.args
            return (
                f"out-of-window injector in {self.role}: {delay} s after the SYN-ACK of {self.address}:{self.port} "
                f"-> {node}:{node_port}, one segment of that connection with seq + 2^31 (raw socket)"
            )
        return f"{self.kind} server on {self.address}:{self.port}/{SERVER_PROTO[self.kind]} in {self.role}"


@dataclass(frozen=True)
class Action:
    """One step of a pod's client: ``count`` HTTP connections, one UDP socket, or one ICMP echo series."""

    kind: str
    """``http``, ``connect`` (TCP connect, hold, close without a request), ``ftp`` (active-mode RETR over
    stdlib ftplib), ``udp``, ``ping``, or ``send``: ``count`` datagrams that no router forwards (multicast,
    broadcast, link-local, DHCP), not reported as attempts (they are in no truth). TCP and UDP follow the
    family of ``dst``; ``send`` takes an IPv6 scope (``ff02::fb%eth0``) in ``dst`` and ``bind``."""
    dst: str
    dport: int = 0
    count: int = 1
    """HTTP: connections, one after another. UDP: datagrams on one socket. Ping: echo requests."""
    sport: int = 0
    """Source port to bind (0: the kernel's choice); for ``ping`` the echo identifier."""
    at: float = 0.0
    """Seconds after the common start of all clients."""
    hold: float = 0.0
    """HTTP: seconds between connect and request, to keep connections of several pods open together."""
    interval: float = 0.0
    """Seconds between repetitions."""
    path: str = "/"
    """HTTP: the path to GET; ``send``: the datagrams' payload (each gets its number appended)."""
    timeout: float = 2.0
    """Per connect, per read and per datagram or echo reply."""
    expect: str = "translated"
    """The verdict the scenario's design expects for every connection of this action."""
    bind: str = ""
    """Source address to bind (an inet client's own address); empty: the kernel's choice."""
    outcome: str = ""
    """The outcome the client must see when it is not the one the verdict implies (answered for translated
    and internal, not answered otherwise): e.g. ``error`` for a connection the node reset."""

    @property
    def proto(self) -> str:
        return PROTO_OF_KIND[self.kind]

    @property
    def duration_bound_s(self) -> float:
        per = self.timeout * (2 if self.kind == "http" else 1) + self.hold + self.interval
        return self.at + self.count * per


@dataclass(frozen=True)
class ClientPlan:
    pod: str
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Attempt:
    """What a client reports about one connection it initiated, as the pod saw it."""

    pod: str
    proto: str
    src: str
    sport: int
    """TCP/UDP source port, or the ICMP echo identifier."""
    dst: str
    dport: int
    t_start: float
    """Epoch seconds just before the first packet (same clock as conntrack's timestamps)."""
    t_end: float
    outcome: str
    """``ok``, ``timeout``, ``refused``, ``partial`` or ``error`` (the pod's view)."""
    detail: str
    expect: str
    expect_outcome: str = ""
    """The outcome the design expects, when the verdict alone does not say it (Action.outcome)."""

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        return (self.proto, self.src, self.sport, self.dst, self.dport)


def start_servers(lab: Lab, servers: tuple[Server, ...]) -> None:
    """Start each server and return once all have bound their sockets."""
    for server in servers:
        script = SERVER_SCRIPTS[server.kind]
        errors = tempfile.TemporaryFile()
        argv = [sys.executable, "-c", script, server.address, str(server.port), str(SERVER_LIFETIME_S)]
        argv += server.args
        proc = lab.spawn(argv, role=server.role, stdout=subprocess.PIPE, stderr=errors)
        if not _wait_for_line(proc, b"ready", READY_TIMEOUT_S):
            lab.stop(proc)
            errors.seek(0)
            text = errors.read().decode(errors="replace").strip().splitlines()
            raise LabError(f"{server.describe()} did not start: {text[-1] if text else 'no output'}")
        errors.close()


def _wait_for_line(proc: subprocess.Popen[bytes], line: bytes, timeout: float) -> bool:
    assert proc.stdout is not None
    seen, deadline = b"", time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            return False
        seen += chunk
        if line in seen.splitlines():
            return True
    return False


def run_clients(lab: Lab, plans: tuple[ClientPlan, ...]) -> list[Attempt]:
    """Run every pod's client at once from a common start; return their attempts in start order."""
    start_at = time.time() + START_DELAY_S
    procs = []
    for plan in plans:
        actions = [{**asdict(action), "kind_proto": action.proto} for action in plan.actions]
        spec = json.dumps({"pod": plan.pod, "start_at": start_at, "actions": actions})
        proc = lab.spawn(
            [sys.executable, "-c", CLIENT, spec],
            role=plan.pod,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        bound = START_DELAY_S + 5.0 + max((a.duration_bound_s for a in plan.actions), default=0.0)
        procs.append((plan, proc, bound))
    attempts: list[Attempt] = []
    for plan, proc, bound in procs:
        try:
            out, err = proc.communicate(timeout=max(0.0, start_at + bound - time.time()))
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"client in {plan.pod} did not finish within {bound:.0f} s") from exc
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()
            raise LabError(f"client in {plan.pod} failed: {last[-1] if last else f'exit {proc.returncode}'}")
        attempts.extend(Attempt(**json.loads(line)) for line in out.decode().splitlines() if line.strip())
    return sorted(attempts, key=lambda a: a.t_start)
