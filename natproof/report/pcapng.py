"""Write pcapng: a section header, interface descriptions and enhanced packets, each with its comment options."""

from __future__ import annotations

import struct
from typing import IO

# Block types and option codes of the pcapng spec (draft-ietf-opsawg-pcapng: 4.1 SHB, 4.2 IDB, 4.3 EPB, 3.5 options).
SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_ENDOFOPT, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
TSRESOL_NS = 9
"""if_tsresol 9: timestamps in units of 10^-9 s, so integer-nanosecond times are written as they are."""


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def options(*opts: tuple[int, bytes | str | None]) -> bytes:
    """Options as the spec lays them out (code, length, value padded to 32 bits), ended by opt_endofopt; b"" when
    none has a value (a block may then carry no options at all). Strings are UTF-8, without a terminating NUL."""
    out = b""
    for code, value in opts:
        if value is None:
            continue
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if len(raw) > 0xFFFF:
            raw = raw[:0xFFFF]
        out += struct.pack("<HH", code, len(raw)) + _pad(raw)
    return out + struct.pack("<HH", OPT_ENDOFOPT, 0) if out else b""


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def section_header(comment: str | None = None, userappl: str | None = None) -> bytes:
    """A Section Header Block (little-endian, version 1.0, section length unknown) with opt_comment and
    shb_userappl."""
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    return _block(SHB, body + options((OPT_COMMENT, comment), (SHB_USERAPPL, userappl)))


def interface_description(linktype: int, name: str | None = None, description: str | None = None,
                          snaplen: int = 0) -> bytes:
    """An Interface Description Block: LINKTYPE_ ``linktype``, if_name, if_description and if_tsresol (ns). Snaplen
    0: no limit."""
    body = struct.pack("<HHI", linktype, 0, snaplen)
    return _block(IDB, body + options((IF_NAME, name), (IF_DESCRIPTION, description),
                                      (IF_TSRESOL, bytes([TSRESOL_NS]))))


def enhanced_packet(interface: int, ts_ns: int, data: bytes, wire_len: int | None = None,
                    comment: str | None = None) -> bytes:
    """An Enhanced Packet Block: the frame as captured (``data``), its length on the wire (at least the captured
    length), its time in ns since the epoch (the interface's if_tsresol), and an opt_comment."""
    ts = max(0, ts_ns)
    body = struct.pack("<IIIII", interface, ts >> 32, ts & 0xFFFFFFFF, len(data), max(wire_len or 0, len(data)))
    return _block(EPB, body + _pad(data) + options((OPT_COMMENT, comment)))


class PcapngWriter:
    """Blocks to a binary file, in order: one section, interfaces added as needed (their ids counted from 0)."""

    def __init__(self, fh: IO[bytes], comment: str | None = None, userappl: str | None = None) -> None:
        self._fh = fh
        self.interfaces = 0
        self.packets = 0
        fh.write(section_header(comment, userappl))

    def add_interface(self, linktype: int, name: str | None = None, description: str | None = None) -> int:
        """Describe one more interface; its id for write_packet."""
        self._fh.write(interface_description(linktype, name, description))
        self.interfaces += 1
        return self.interfaces - 1

    def write_packet(self, interface: int, ts_ns: int, data: bytes, wire_len: int | None = None,
                     comment: str | None = None) -> None:
        if not 0 <= interface < self.interfaces:
            raise ValueError(f"interface {interface} not described (0..{self.interfaces - 1})")
        self._fh.write(enhanced_packet(interface, ts_ns, data, wire_len, comment))
        self.packets += 1
