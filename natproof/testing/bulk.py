"""Fast numpy generator of large MASQUERADE capture pairs (pod side and node side) with a known mapping."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NAT_IP = "192.0.2.2"
POD_NET = "10.244.0.0/16"
SERVER_NETS = ("198.51.100.0/24", "203.0.113.0/24")
NAT_LATENCY_NS = 30_000
"""A packet crosses the node in 30 us: egress reaches the outside capture this much later, replies the inside."""
MSS = 1448
LINGER_NS = 120 * 1_000_000_000
"""A mapping stays reserved this long after its connection's last packet (conntrack TIME_WAIT)."""
_EPOCH_NS = 1_700_000_000 * 1_000_000_000
_POOL_BYTES = 32 * 1024 * 1024
_WRITE_CHUNK = 200_000
_TCP_HDR, _UDP_HDR = 54, 42  # Ethernet + IPv4 + TCP / UDP, no options


@dataclass(frozen=True)
class BulkPair:
    """Where a generated pair was written, and what is known about it."""

    inside: Path
    outside: Path
    truth: Path
    packets_inside: int
    packets_outside: int
    connections: int
    rewritten: int
    """Connections whose source port MASQUERADE had to change (their outside tuple was taken)."""
    mean_frame: float


def _ip(s: str) -> int:
    a, b, c, d = (int(x) for x in s.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _ip_str(v: int) -> str:
    return ".".join(str((v >> s) & 0xFF) for s in (24, 16, 8, 0))


def _connections(n_packets: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw connections that hold about ``n_packets`` packets per side (within one connection)."""
    # TCP: handshake 3, request 1, S response segments, ceil(S/2) client ACKs, close 3. UDP (DNS): 2.
    mean_segs = 30
    per_tcp = 7 + mean_segs * 1.5
    n_conn = int(1.3 * n_packets / (0.9 * per_tcp + 0.1 * 2)) + 16  # more than enough; cut below
    is_udp = rng.random(n_conn) < 0.1
    segs = np.where(is_udp, 0, np.clip(rng.geometric(1 / mean_segs, n_conn), 1, 400))
    npk = np.where(is_udp, 2, 7 + segs + (segs + 1) // 2)
    # Keep the connections that reach n_packets (the total lands within one connection of it).
    keep = min(len(npk), int(np.searchsorted(np.cumsum(npk), n_packets, side="left")) + 1)
    is_udp, segs = is_udp[:keep], segs[:keep]
    n_conn = keep
    duration_ns = max(60, n_conn // 200) * 1_000_000_000
    start = np.sort(rng.integers(0, duration_ns, n_conn)) + _EPOCH_NS
    pods = _ip("10.244.0.0") + rng.integers(0, 64, n_conn) * 256 + rng.integers(2, 254, n_conn)
    server_base = np.array([_ip("198.51.100.0"), _ip("203.0.113.0")], dtype=np.int64)
    servers = server_base[rng.integers(0, 2, n_conn)] + rng.integers(10, 250, n_conn)
    dport = np.where(is_udp, 53, np.array([80, 443, 8080])[rng.integers(0, 3, n_conn)])
    sport = rng.integers(32768, 61000, n_conn)
    # Some pods deliberately reuse a busy server tuple: another pod's source port to the same server at about
    # the same time, so MASQUERADE must pick another port (as in the lab's port-collision scenario).
    clash = np.sort(rng.choice(np.arange(1, n_conn), size=min(n_conn - 1, max(2, n_conn // 100)), replace=False))
    clash = clash[np.diff(clash, prepend=0) > 1]  # never copy from a connection that is itself a copy
    sport[clash] = sport[clash - 1]
    servers[clash] = servers[clash - 1]
    dport[clash] = dport[clash - 1]
    is_udp[clash] = is_udp[clash - 1]
    segs[clash] = np.where(is_udp[clash], 0, np.maximum(segs[clash], 1))
    npk = np.where(is_udp, 2, 7 + segs + (segs + 1) // 2)
    pods[clash] = np.where(pods[clash] == pods[clash - 1], pods[clash] + 1, pods[clash])
    rtt = rng.integers(1_000_000, 30_000_000, n_conn)
    return {"is_udp": is_udp, "segs": segs, "npk": npk, "start": start, "pod": pods, "server": servers,
            "dport": dport, "sport": sport, "rtt": rtt}


def _unique_inside(c: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Inside 5-tuples must not repeat: a repeated tuple would be one connection to conntrack."""
    while True:
        key = np.stack([c["is_udp"].astype(np.int64), c["pod"], c["sport"], c["server"], c["dport"]], axis=1)
        _, first = np.unique(key, axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(len(key)), first)
        if not len(dup):
            return
        c["sport"][dup] = rng.integers(32768, 61000, len(dup))


def _masquerade(c: dict[str, np.ndarray], end_ns: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Outside source port of each connection: kept unless (proto, port, server, dport) is still reserved."""
    busy: dict[tuple[int, int, int, int], int] = {}
    out = c["sport"].copy()
    order = np.argsort(c["start"], kind="stable")
    udp, sport, server, dport = (c[k].tolist() for k in ("is_udp", "sport", "server", "dport"))
    starts, ends = c["start"].tolist(), end_ns.tolist()
    for i in order.tolist():
        port = sport[i]
        key = (udp[i], port, server[i], dport[i])
        if busy.get(key, -1) > starts[i]:
            while True:
                port = int(rng.integers(1024, 65536))
                key = (udp[i], port, server[i], dport[i])
                if busy.get(key, -1) <= starts[i]:
                    break
        busy[key] = ends[i] + LINGER_NS
        out[i] = port
    return out


def _packets(c: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Expand connections into packets (one row per packet as the NAT sees it, inside addresses)."""
    npk = c["npk"]
    n = int(npk.sum())
    conn = np.repeat(np.arange(len(npk)), npk)
    first = np.repeat(np.cumsum(npk) - npk, npk)
    k = np.arange(n) - first  # position in its connection
    udp = c["is_udp"][conn]
    segs = c["segs"][conn]
    m = segs + (segs + 1) // 2  # middle part: data segments and the client's ACKs
    rtt = c["rtt"][conn]
    t0 = c["start"][conn]
    isn_c = rng.integers(0, 2**32, len(npk))[conn]
    isn_s = rng.integers(0, 2**32, len(npk))[conn]
    q = rng.integers(80, 700, len(npk))[conn]  # request bytes
    last = rng.integers(1, MSS + 1, len(npk))[conn]  # last response segment
    resp = (segs - 1) * MSS + last
    j = k - 4
    g, r = j // 3, j % 3
    mid = (k >= 4) & (k < 4 + m)
    mid_ack = mid & ((r == 2) | (j == m - 1))
    mid_data = mid & ~mid_ack
    seg_i = np.where(mid_data, 2 * g + r, 0)
    acked = np.where(mid_ack, np.minimum(2 * g + 2, segs), 0)  # segments acknowledged by this ACK
    data_len = np.where(seg_i == segs - 1, last, MSS)
    close = k - (4 + m)  # 0 FIN (client), 1 FIN (server), 2 ACK
    egress = np.where(udp, k == 0, (k == 0) | (k == 2) | (k == 3) | mid_ack | (close == 0) | (close == 2))
    gap = 100_000  # 100 us between back-to-back segments
    data_t = t0 + 2 * rtt + seg_i * gap
    ts = np.select(
        [udp & (k == 0), udp, k == 0, k == 1, k == 2, k == 3, mid_data, mid_ack, close == 0, close == 1],
        [t0, t0 + rtt, t0, t0 + rtt, t0 + rtt + 60_000, t0 + rtt + 80_000, data_t,
         t0 + 2 * rtt + (acked - 1) * gap + 50_000, t0 + 2 * rtt + segs * gap + 1_000_000,
         t0 + 3 * rtt + segs * gap + 1_000_000],
        t0 + 3 * rtt + segs * gap + 1_060_000,
    )
    two32 = 2**32
    seq = np.select(
        [udp, k == 0, k == 1, (k == 2) | (k == 3), mid_data, mid_ack, close == 0, close == 1],
        [0, isn_c, isn_s, isn_c + 1, isn_s + 1 + seg_i * MSS, isn_c + 1 + q, isn_c + 1 + q, isn_s + 1 + resp],
        isn_c + 2 + q,
    ) % two32
    ack = np.select(
        [udp, k == 0, k == 1, (k == 2) | (k == 3), mid_data, mid_ack, close == 0, close == 1],
        [0, 0, isn_c + 1, isn_s + 1, isn_c + 1 + q, isn_s + 1 + np.minimum(acked * MSS, resp), isn_s + 1 + resp,
         isn_c + 2 + q],
        isn_s + 2 + resp,
    ) % two32
    flags = np.select(
        [udp, k == 0, k == 1, k == 3, mid_data & (seg_i == segs - 1), close == 0, close == 1],
        [0, 0x02, 0x12, 0x18, 0x18, 0x11, 0x11], 0x10,
    )
    plen = np.select([udp & (k == 0), udp, k == 3, mid_data], [40, rng.integers(60, 300, n), q, data_len], 0)
    pool_off = rng.integers(0, _POOL_BYTES - 2048, n)
    return {"conn": conn, "egress": egress, "ts": ts, "udp": udp, "seq": seq, "ack": ack, "flags": flags,
            "plen": plen, "pool_off": pool_off, "ip_id": rng.integers(1, 65536, n),
            "win": rng.integers(500, 65535, n)}


def _write(path: Path, order: np.ndarray, p: dict[str, np.ndarray], src: np.ndarray, dst: np.ndarray,
           sport: np.ndarray, dport: np.ndarray, ttl: np.ndarray, ts: np.ndarray, pool: np.ndarray) -> int:
    """Write the packets ``order`` selects as an Ethernet pcap with nanosecond timestamps; returns its size."""
    hdr_t = np.dtype([
        ("sec", "<u4"), ("nsec", "<u4"), ("caplen", "<u4"), ("wire", "<u4"),
        ("mac", "V12"), ("etype", ">u2"),
        ("vhl", "u1"), ("tos", "u1"), ("tot", ">u2"), ("id", ">u2"), ("frag", ">u2"), ("ttl", "u1"), ("proto", "u1"),
        ("csum", ">u2"), ("src", ">u4"), ("dst", ">u4"),
        ("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"), ("off", "u1"), ("flags", "u1"),
        ("win", ">u2"), ("sum", ">u2"), ("urp", ">u2"),
    ])
    assert hdr_t.itemsize == 16 + _TCP_HDR
    mac = np.frombuffer(b"\x02\x42\x0a\xf4\x00\x01\x02\x42\x0a\xf4\x00\x02", dtype="V12")[0]
    size = 24
    pool_v = {}
    with open(path, "wb") as fh:
        fh.write(np.array([0xA1B23C4D], "<u4").tobytes() + np.array([2, 4], "<u2").tobytes()
                 + np.array([0, 0, 262144, 1], "<u4").tobytes())
        for a in range(0, len(order), _WRITE_CHUNK):
            idx = order[a:a + _WRITE_CHUNK]
            udp = p["udp"][idx]
            plen = p["plen"][idx]
            hlen = np.where(udp, _UDP_HDR, _TCP_HDR)
            frame = hlen + plen
            h = np.zeros(len(idx), hdr_t)
            t = ts[idx]
            h["sec"], h["nsec"] = t // 1_000_000_000, t % 1_000_000_000
            h["caplen"] = h["wire"] = frame
            h["mac"] = mac
            h["etype"] = 0x0800
            h["vhl"] = 0x45
            h["tot"] = frame - 14
            h["id"] = p["ip_id"][idx]
            h["frag"] = np.where(udp, 0, 0x4000)
            h["ttl"] = ttl[idx]
            h["proto"] = np.where(udp, 17, 6)
            h["src"], h["dst"] = src[idx], dst[idx]
            h["sport"], h["dport"] = sport[idx], dport[idx]
            tcp = ~udp
            h["seq"] = np.where(tcp, p["seq"][idx], (8 + plen) << 16)  # UDP: length, then checksum 0
            h["ack"] = np.where(tcp, p["ack"][idx], 0)
            h["off"] = np.where(tcp, 0x50, 0)
            h["flags"] = np.where(tcp, p["flags"][idx], 0)
            h["win"] = np.where(tcp, p["win"][idx], 0)
            rec = 16 + frame
            offs = np.concatenate([[0], np.cumsum(rec)[:-1]])
            out = np.zeros(int(rec.sum()) + 16 + _TCP_HDR, dtype=np.uint8)
            hb = h.view(np.uint8).reshape(len(idx), hdr_t.itemsize)
            for hl in (_TCP_HDR, _UDP_HDR):
                sel = np.nonzero(hlen == hl)[0]
                if len(sel):
                    view = np.ndarray((len(out) - 16 - hl + 1,), f"V{16 + hl}", buffer=out, strides=(1,))
                    view[offs[sel]] = np.ascontiguousarray(hb[sel, :16 + hl]).view(f"V{16 + hl}").ravel()
            pstart = offs + 16 + hlen
            po = p["pool_off"][idx]
            for length in np.unique(plen).tolist():
                if length == 0:
                    continue
                sel = np.nonzero(plen == length)[0]
                src_v = pool_v.get(length)
                if src_v is None:
                    src_v = pool_v[length] = np.ndarray((len(pool) - length + 1,), f"V{length}", buffer=pool,
                                                        strides=(1,))
                dst_v = np.ndarray((len(out) - length + 1,), f"V{length}", buffer=out, strides=(1,))
                dst_v[pstart[sel]] = src_v[po[sel]]
            body = out[:int(rec.sum())]
            fh.write(body.data)
            size += len(body)
    return size


def generate_pair(outdir: Path, n_packets: int, *, seed: int = 1) -> BulkPair:
    """Write inside.pcap (pod veth) and outside.pcap (node eth0) of about ``n_packets`` packets each, and
    truth.json with the MASQUERADE mapping of every connection."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c = _connections(n_packets, rng)
    _unique_inside(c, rng)
    p = _packets(c, rng)
    conn = p["conn"]
    end = np.zeros(len(c["npk"]), dtype=np.int64)
    np.maximum.at(end, conn, p["ts"])
    nat_port = _masquerade(c, end, rng)
    nat = _ip(NAT_IP)
    eg = p["egress"]
    pod, server = c["pod"][conn], c["server"][conn]
    sp, dp, np_ = c["sport"][conn], c["dport"][conn], nat_port[conn]
    ttl_srv = rng.integers(44, 60, len(c["npk"]))[conn]
    pool = np.random.default_rng(seed + 1).integers(0, 256, _POOL_BYTES, dtype=np.uint8)
    # Inside: egress as sent by the pod, replies 30 us after the outside saw them.
    ts_in = np.where(eg, p["ts"], p["ts"] + NAT_LATENCY_NS)
    ts_out = np.where(eg, p["ts"] + NAT_LATENCY_NS, p["ts"])
    sides = {
        "inside": (ts_in, np.where(eg, pod, server), np.where(eg, server, pod), np.where(eg, sp, dp),
                   np.where(eg, dp, sp), np.where(eg, 64, ttl_srv - 1)),
        "outside": (ts_out, np.where(eg, nat, server), np.where(eg, server, nat), np.where(eg, np_, dp),
                    np.where(eg, dp, np_), np.where(eg, 63, ttl_srv)),
    }
    sizes = {}
    for name, (ts, src, dst, sport, dport, ttl) in sides.items():
        order = np.argsort(ts, kind="stable")
        sizes[name] = _write(outdir / f"{name}.pcap", order, p, src, dst, sport, dport, ttl, ts, pool)
    rewritten = int((nat_port != c["sport"]).sum())
    truth: dict[str, Any] = {
        "schema": "natproof.bulk-truth/1", "nat_ip": NAT_IP, "pod_cidr": POD_NET, "packets": len(conn),
        "connections": [
            [("udp" if u else "tcp"), _ip_str(a), s, _ip_str(b), d, o]
            for u, a, s, b, d, o in zip(c["is_udp"].tolist(), c["pod"].tolist(), c["sport"].tolist(),
                                        c["server"].tolist(), c["dport"].tolist(), nat_port.tolist(), strict=True)
        ],
    }
    (outdir / "truth.json").write_text(json.dumps(truth))
    n = len(conn)
    return BulkPair(outdir / "inside.pcap", outdir / "outside.pcap", outdir / "truth.json", n, n, len(c["npk"]),
                    rewritten, (sizes["inside"] - 24) / n - 16)


def check_mapping(result_connections: list[dict[str, Any]], truth_path: Path) -> tuple[bool, str]:
    """Compare correlate's connections (JSON dicts) with the generated truth: every connection translated,
    to the expected outside source port."""
    truth = json.loads(Path(truth_path).read_text())
    want = {(p, a, s, b, d): o for p, a, s, b, d, o in truth["connections"]}
    got: dict[tuple, Any] = {}
    verdicts: dict[str, int] = {}
    for c in result_connections:
        ins, out = c["inside"], c.get("outside") or {}
        key = (c["proto"], ins["src"], ins["sport"], ins["dst"], ins["dport"])
        got[key] = (out.get("src"), out.get("sport"), c["verdict"])
        verdicts[c["verdict"]] = verdicts.get(c["verdict"], 0) + 1
    wrong = [k for k, o in want.items() if got.get(k) != (truth["nat_ip"], o, "translated")]
    extra = len(set(got) - set(want))
    ok = not wrong and not extra
    msg = (f"{len(want)} connections expected, {len(got)} found, {verdicts.get('translated', 0)} translated; "
           f"{len(wrong)} wrong or missing, {extra} unexpected")
    return ok, msg
