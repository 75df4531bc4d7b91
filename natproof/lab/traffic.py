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
import http.server, socketserver, sys, threading, time
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
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((address, port))
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

# Runs every action of one pod's plan in its own thread from a common start time, and prints one JSON
# line per attempt (one TCP connection, one UDP socket, or one ICMP echo identifier).
CLIENT = r"""
import errno, json, select, socket, struct, sys, threading, time
plan = json.loads(sys.argv[1])
lock = threading.Lock()

def emit(action, src, sport, t_start, outcome, detail=""):
    rec = {"pod": plan["pod"], "proto": action["kind_proto"], "src": src, "sport": sport,
           "dst": action["dst"], "dport": action["dport"] if action["kind_proto"] != "icmp" else 0,
           "t_start": t_start, "t_end": time.time(), "outcome": outcome, "detail": detail,
           "expect": action["expect"]}
    with lock:
        print(json.dumps(rec), flush=True)

def source_for(dst):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((dst, 9))  # a routing lookup only: a UDP connect sends nothing
    try:
        return probe.getsockname()[0]
    finally:
        probe.close()

def http_once(a):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if a["sport"]:
        sock.bind(("", a["sport"]))
    sock.setblocking(False)
    t_start = time.time()
    sock.connect_ex((a["dst"], a["dport"]))
    src, sport = sock.getsockname()  # the port is chosen at connect(), before the SYN leaves
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

def udp(a):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if a["sport"]:
        sock.bind(("", a["sport"]))
    sock.connect((a["dst"], a["dport"]))  # connected: an ICMP error comes back as ECONNREFUSED
    sock.settimeout(a["timeout"])
    src, sport = sock.getsockname()
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

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF

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
    if a["kind"] == "http":
        for i in range(a["count"]):
            if i:
                time.sleep(a["interval"])
            http_once(a)
    elif a["kind"] == "udp":
        udp(a)
    elif a["kind"] == "ping":
        ping(a)

threads = [threading.Thread(target=run, args=(a,)) for a in plan["actions"]]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

PROTO_OF_KIND = {"http": "tcp", "udp": "udp", "ping": "icmp"}


@dataclass(frozen=True)
class Server:
    """A server process in one namespace."""

    role: str
    """Namespace role: ``inet`` or a pod name."""
    kind: str
    """``http`` (TCP) or ``udp-echo``."""
    address: str
    port: int

    def describe(self) -> str:
        proto = "tcp" if self.kind == "http" else "udp"
        return f"{self.kind} server on {self.address}:{self.port}/{proto} in {self.role}"


@dataclass(frozen=True)
class Action:
    """One step of a pod's client: ``count`` HTTP connections, one UDP socket, or one ICMP echo series."""

    kind: str
    """``http``, ``udp`` or ``ping``."""
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
    timeout: float = 2.0
    """Per connect, per read and per datagram or echo reply."""
    expect: str = "translated"
    """The verdict the scenario's design expects for every connection of this action."""

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

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        return (self.proto, self.src, self.sport, self.dst, self.dport)


def start_servers(lab: Lab, servers: tuple[Server, ...]) -> None:
    """Start each server and return once all have bound their sockets."""
    for server in servers:
        script = HTTP_SERVER if server.kind == "http" else UDP_ECHO_SERVER
        errors = tempfile.TemporaryFile()
        argv = [sys.executable, "-c", script, server.address, str(server.port), str(SERVER_LIFETIME_S)]
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
