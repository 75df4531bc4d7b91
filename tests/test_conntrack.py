"""natproof.conntrack: every format conntrack and the kernel print, from real lines (kernel 6.18, conntrack 1.4.7)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import polars as pl
import pytest

from natproof.conntrack import ENTRY_SCHEMA, read_conntrack
from natproof.errors import InputError

# conntrack -L (default), the lab's node namespace: a MASQUERADEd HTTP request, a privileged UDP port kept, an
# unanswered SYN and an IGMP entry (protocol "unknown"). nf_conntrack_acct=1 adds packets= and bytes=.
LIST = """\
tcp      6 118 TIME_WAIT src=10.244.0.10 dst=198.51.100.10 sport=40364 dport=80 packets=5 bytes=385 \
src=198.51.100.10 dst=203.0.113.2 sport=80 dport=40364 packets=5 bytes=435 [ASSURED] mark=0 use=1
udp      17 28 src=10.244.0.10 dst=198.51.100.10 sport=123 dport=9999 packets=1 bytes=29 [UNREPLIED] \
src=198.51.100.10 dst=203.0.113.2 sport=9999 dport=123 packets=0 bytes=0 mark=0 use=1
tcp      6 119 SYN_SENT src=10.244.0.10 dst=198.51.100.99 sport=56834 dport=81 packets=1 bytes=60 [UNREPLIED] \
src=198.51.100.99 dst=203.0.113.2 sport=81 dport=56834 packets=0 bytes=0 mark=0 use=1
unknown  2 598 src=10.244.0.1 dst=224.0.0.22 packets=1 bytes=40 [UNREPLIED] src=224.0.0.22 dst=10.244.0.1 \
packets=0 bytes=0 mark=0 use=1
"""

# conntrack -L -o extended,id: the l3 protocol prefix and the entry id.
LIST_EXTENDED = """\
ipv4     2 tcp      6 118 TIME_WAIT src=10.244.0.10 dst=198.51.100.10 sport=40364 dport=80 packets=5 bytes=385 \
src=198.51.100.10 dst=203.0.113.2 sport=80 dport=40364 packets=5 bytes=435 [ASSURED] mark=0 use=1 id=193028120
ipv4     2 udp      17 28 src=10.244.0.10 dst=198.51.100.10 sport=123 dport=9999 packets=1 bytes=29 [UNREPLIED] \
src=198.51.100.10 dst=203.0.113.2 sport=9999 dport=123 packets=0 bytes=0 mark=0 use=1 id=3083452557
"""

# conntrack -E -o timestamp with nf_conntrack_timestamp=1: IPv6, a zone, DESTROY events from conntrack -F.
EVENTS = """\
[1795965652.672624]\t    [NEW] udp      17 30 src=::1 dst=::1 sport=60683 dport=5353 [UNREPLIED] src=::1 dst=::1 \
sport=5353 dport=60683
[1795965652.812980]\t    [NEW] tcp      6 120 SYN_SENT src=::1 dst=::1 sport=42128 dport=8080 [UNREPLIED] src=::1 \
dst=::1 sport=8080 dport=42128
[1795965652.812997]\t [UPDATE] tcp      6 60 SYN_RECV src=::1 dst=::1 sport=42128 dport=8080 src=::1 dst=::1 \
sport=8080 dport=42128
[1795965652.813006]\t [UPDATE] tcp      6 432000 ESTABLISHED src=::1 dst=::1 sport=42128 dport=8080 src=::1 dst=::1 \
sport=8080 dport=42128 [ASSURED]
[1795965652.956666]\t    [NEW] udp      17 30 src=127.0.0.1 dst=127.0.0.1 sport=44413 dport=7777 [UNREPLIED] \
src=127.0.0.1 dst=127.0.0.1 sport=7777 dport=44413 zone=5
[1795965653.560521]\t[DESTROY] tcp      6 119 TIME_WAIT src=::1 dst=::1 sport=42128 dport=8080 packets=5 bytes=370 \
src=::1 dst=::1 sport=8080 dport=42128 packets=3 bytes=224 [ASSURED] delta-time=1 [USERSPACE] portid=22325 \
progname=conntrack
"""

# conntrack -E -o extended,timestamp: ICMP and ICMPv6 echo (type, code, identifier).
EVENTS_EXTENDED = """\
[1795965793.174706]\t    [NEW] ipv4     2 icmp     1 30 src=10.244.0.10 dst=198.51.100.10 type=8 code=0 id=4242 \
[UNREPLIED] src=198.51.100.10 dst=203.0.113.2 type=0 code=0 id=4242
[1795965793.174724]\t [UPDATE] ipv4     2 icmp     1 30 src=10.244.0.10 dst=198.51.100.10 type=8 code=0 id=4242 \
src=198.51.100.10 dst=203.0.113.2 type=0 code=0 id=4242
[1795965793.325818]\t    [NEW] ipv6     10 icmpv6   58 30 src=::1 dst=::1 type=128 code=0 id=777 [UNREPLIED] \
src=::1 dst=::1 type=129 code=0 id=777
"""

# /proc/net/nf_conntrack: always zone= and use=, IPv6 addresses written out in full.
PROC = """\
ipv6     10 tcp      6 119 TIME_WAIT src=0000:0000:0000:0000:0000:0000:0000:0001 \
dst=0000:0000:0000:0000:0000:0000:0000:0001 sport=42128 dport=8080 packets=5 bytes=370 \
src=0000:0000:0000:0000:0000:0000:0000:0001 dst=0000:0000:0000:0000:0000:0000:0000:0001 sport=8080 dport=42128 \
packets=3 bytes=224 [ASSURED] mark=0 zone=0 delta-time=0 use=2
ipv4     2 udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=44413 dport=7777 packets=1 bytes=29 [UNREPLIED] \
src=127.0.0.1 dst=127.0.0.1 sport=7777 dport=44413 packets=0 bytes=0 mark=0 zone=5 delta-time=0 use=2
"""

# conntrack -L -o xml.
XML = """\
<?xml version="1.0" encoding="utf-8"?>
<conntrack>
<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>10.244.0.10</src><dst>198.51.100.10\
</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>40364</sport><dport>80</dport></layer4><counters>\
<packets>5</packets><bytes>385</bytes></counters></meta><meta direction="reply"><layer3 protonum="2" \
protoname="ipv4"><src>198.51.100.10</src><dst>203.0.113.2</dst></layer3><layer4 protonum="6" protoname="tcp">\
<sport>80</sport><dport>40364</dport></layer4><counters><packets>5</packets><bytes>435</bytes></counters></meta>\
<meta direction="independent"><state>TIME_WAIT</state><timeout>118</timeout><mark>0</mark><use>1</use>\
<id>193028120</id><assured/></meta></flow>
<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>10.244.0.10</src><dst>198.51.100.10\
</dst></layer3><layer4 protonum="17" protoname="udp"><sport>123</sport><dport>9999</dport></layer4><counters>\
<packets>1</packets><bytes>29</bytes></counters></meta><meta direction="reply"><layer3 protonum="2" \
protoname="ipv4"><src>198.51.100.10</src><dst>203.0.113.2</dst></layer3><layer4 protonum="17" protoname="udp">\
<sport>9999</sport><dport>123</dport></layer4><counters><packets>0</packets><bytes>0</bytes></counters></meta>\
<meta direction="independent"><timeout>28</timeout><mark>0</mark><use>1</use><id>3083452557</id><unreplied/>\
</meta></flow>
</conntrack>
"""

# conntrack -E -o xml,timestamp, stopped by SIGKILL: no </conntrack>. <when> is conntrack's local time (UTC here);
# 1.4.7 prints no ICMP type, code or identifier in XML.
XML_EVENTS = """\
<?xml version="1.0" encoding="utf-8"?>
<conntrack>
<flow type="new"><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>10.244.0.10</src>\
<dst>198.51.100.10</dst></layer3><layer4 protonum="1" protoname="icmp"></layer4></meta><meta direction="reply">\
<layer3 protonum="2" protoname="ipv4"><src>198.51.100.10</src><dst>203.0.113.2</dst></layer3><layer4 protonum="1" \
protoname="icmp"></layer4></meta><meta direction="independent"><timeout>30</timeout><id>1325344968</id><unreplied/>\
</meta><when><hour>15</hour><min>23</min><sec>13</sec><wday>1</wday><day>29</day><month>11</month><year>2026</year>\
</when></flow>
<flow type="destroy"><meta direction="original"><layer3 protonum="10" protoname="ipv6"><src>::1</src><dst>::1</dst>\
</layer3><layer4 protonum="6" protoname="tcp"><sport>42128</sport><dport>8080</dport></layer4><counters><packets>5\
</packets><bytes>370</bytes></counters></meta><meta direction="reply"><layer3 protonum="10" protoname="ipv6"><src>\
::1</src><dst>::1</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>8080</sport><dport>42128</dport>\
</layer4><counters><packets>3</packets><bytes>224</bytes></counters></meta><meta direction="independent"><state>\
TIME_WAIT</state><timeout>119</timeout><zone>5</zone><id>3454658237</id><assured/><deltatime>0</deltatime></meta>\
<when><hour>15</hour><min>20</min><sec>53</sec><wday>1</wday><day>29</day><month>11</month><year>2026</year></when>\
</flow> [USERSPACE] portid=22325 progname=conntrack
"""


def _read(tmp_path: Path, text: str, name: str = "record.txt") -> pl.DataFrame:
    path = tmp_path / name
    path.write_text(text)
    return read_conntrack(path).entries


def test_list_default(tmp_path: Path) -> None:
    e = _read(tmp_path, LIST)
    assert e.schema == pl.Schema(ENTRY_SCHEMA)
    assert e["source"].to_list() == ["list"] * 4
    assert e["line"].to_list() == [1, 2, 3, 4]
    first = e.row(0, named=True)
    assert (first["proto"], first["protonum"], first["timeout_s"], first["state"]) == ("tcp", 6, 118, "TIME_WAIT")
    assert (first["orig_src"], first["orig_sport"], first["orig_dst"], first["orig_dport"]) == (
        "10.244.0.10", 40364, "198.51.100.10", 80)
    assert (first["reply_src"], first["reply_sport"], first["reply_dst"], first["reply_dport"]) == (
        "198.51.100.10", 80, "203.0.113.2", 40364)
    counters = (first["orig_packets"], first["orig_bytes"], first["reply_packets"], first["reply_bytes"])
    assert counters == (5, 385, 5, 435)
    assert (first["assured"], first["unreplied"], first["mark"], first["use"], first["event"]) == (
        True, False, 0, 1, None)
    assert e["family"].to_list() == ["ipv4"] * 4
    assert e["unreplied"].to_list() == [False, True, True, True]
    assert e["state"].to_list() == ["TIME_WAIT", None, "SYN_SENT", None]
    igmp = e.row(3, named=True)
    assert (igmp["proto"], igmp["protonum"], igmp["orig_sport"], igmp["reply_src"]) == ("unknown", 2, None,
                                                                                       "224.0.0.22")


def test_list_extended_with_ids(tmp_path: Path) -> None:
    e = _read(tmp_path, LIST_EXTENDED)
    assert e["source"].to_list() == ["list_extended"] * 2
    assert e["id"].to_list() == [193028120, 3083452557]
    assert e["reply_dport"].to_list() == [40364, 123]


def test_events_timestamp_ipv6_zone_destroy(tmp_path: Path) -> None:
    e = _read(tmp_path, EVENTS)
    assert e["source"].to_list() == ["events_timestamp"] * 6
    assert e["event"].to_list() == ["NEW", "NEW", "UPDATE", "UPDATE", "NEW", "DESTROY"]
    assert e["ts_ns"][0] == 1795965652_672624000
    assert e["family"].to_list() == ["ipv6"] * 4 + ["ipv4", "ipv6"]
    assert e["orig_src"][0] == "::1"
    assert e["zone"].to_list() == [None] * 4 + [5, None]
    destroy = e.row(5, named=True)
    # [USERSPACE] portid=... after the tuple is no conntrack id.
    assert (destroy["delta_time_s"], destroy["id"], destroy["reply_packets"], destroy["assured"]) == (1, None, 3, True)


def test_events_extended_icmp_and_icmpv6(tmp_path: Path) -> None:
    e = _read(tmp_path, EVENTS_EXTENDED)
    assert e["source"].to_list() == ["events_extended_timestamp"] * 3
    assert e["proto"].to_list() == ["icmp", "icmp", "icmpv6"]
    # The echo identifier stands in sport in both directions, dport is 0: natproof's ICMP tuples.
    assert e.select("orig_sport", "orig_dport", "reply_sport", "reply_dport").rows() == [
        (4242, 0, 4242, 0), (4242, 0, 4242, 0), (777, 0, 777, 0)]
    assert e["icmp_type"].to_list() == [8, 8, 128]
    # id= inside the tuple is the identifier, not a conntrack id.
    assert e["id"].to_list() == [None, None, None]


def test_plain_events_have_no_time(tmp_path: Path) -> None:
    text = "\n".join(line.split("\t", 1)[1] for line in EVENTS.splitlines())
    e = _read(tmp_path, text)
    assert e["source"].to_list() == ["events"] * 6
    assert e["ts_ns"].is_null().all()


def test_proc_net_nf_conntrack(tmp_path: Path) -> None:
    e = _read(tmp_path, PROC)
    assert e["source"].to_list() == ["proc", "proc"]
    assert e["orig_src"].to_list() == ["::1", "127.0.0.1"]  # normalised as natproof prints addresses
    assert e["zone"].to_list() == [0, 5]
    assert e["family"].to_list() == ["ipv6", "ipv4"]


def test_ktimestamp_start(tmp_path: Path) -> None:
    line = ("tcp      6 119 TIME_WAIT src=::1 dst=::1 sport=42128 dport=8080 packets=5 bytes=370 src=::1 dst=::1 "
            "sport=8080 dport=42128 packets=3 bytes=224 [ASSURED] mark=0 delta-time=1 "
            "[start=Sun Nov 29 15:20:52 2026] use=1\n")
    e = _read(tmp_path, line)
    assert e["start_ts_ns"][0] == 1795965652_000_000_000
    assert e["use"][0] == 1


def test_timestamps_before_2000_are_a_warning(tmp_path: Path) -> None:
    """An event log with a stamp of 0 (1970: the node's clock never set) was read without a word, the record
    spanning 56 years. Each time column with entries before 2000 gives one warning naming the lines and the first
    such time; the entries are still read as stamped (the stamps are the record's own; nothing is dropped). A
    plausible record has none."""
    assert read_conntrack(_write(tmp_path / "good.log", EVENTS)).warnings == ()
    lines = EVENTS.splitlines(keepends=True)
    zero = "".join([lines[0].replace("[1795965652.672624]", "[0.000000]"), *lines[1:]])
    rec = read_conntrack(_write(tmp_path / "zero.log", zero))
    assert rec.entries.height == 6 and rec.first_ts_ns == 0
    assert rec.warnings == ("1 entry stamped before 2000 (line 1: 1970-01-01T00:00:00Z), a time no conntrack "
                            "record can have: the node's clock was not set (it starts at 1970) or the field is no "
                            "epoch time; read as stamped, the record's span reaches back to then",)
    assert rec.to_dict()["warnings"] == list(rec.warnings)
    # Several, the last just before 2000; and conntrack -L -o ktimestamp's [start=] of 1970.
    many = EVENTS.replace("[1795965652.8129", "[946684799.8129")
    (warning,) = read_conntrack(_write(tmp_path / "many.log", many)).warnings
    assert warning.startswith("2 entries stamped before 2000 (line 2, 3: 1999-12-31T23:59:59Z first), ")
    listing = ("tcp      6 119 TIME_WAIT src=::1 dst=::1 sport=42128 dport=8080 src=::1 dst=::1 sport=8080 "
               "dport=42128 [ASSURED] mark=0 [start=Thu Jan  1 00:00:00 1970] use=1\n")
    (warning,) = read_conntrack(_write(tmp_path / "list.txt", listing)).warnings
    assert warning.startswith("1 entry with [start=] before 2000 (line 1: 1970-01-01T00:00:00Z), ")
    assert warning.endswith("or the field is no epoch time")
    # A record made of entries already read says the same.
    from natproof.conntrack import ConntrackRecord

    assert ConntrackRecord.from_entries(rec.entries).warnings == rec.warnings


def test_stamps_no_64_bit_time_holds_are_no_entry(tmp_path: Path) -> None:
    """A stamp of [99999999999999999999.x] was an internal error (polars could not cast it), one of
    [10000000000.x] wrapped past 2**63 ns to a time in 1702. A stamp past 2262 is no time: the line is no entry,
    counted as such, and the rest is read; [start=] of the year 9999 is no time either."""
    lines = EVENTS.splitlines(keepends=True)
    for stamp in ("[99999999999999999999.672624]", "[10000000000.672624]", "[9223372037.672624]"):
        rec = read_conntrack(_write(tmp_path / "far.log", "".join([lines[0].replace("[1795965652.672624]", stamp),
                                                                  *lines[1:]])))
        assert rec.unparsed == 1 and rec.unparsed_lines == (1,), stamp
        assert rec.entries.height == 5 and rec.warnings == ()
        assert rec.entries["ts_ns"].min() > 1_700_000_000 * 10**9
    listing = ("tcp      6 119 TIME_WAIT src=::1 dst=::1 sport=42128 dport=8080 src=::1 dst=::1 sport=8080 "
               "dport=42128 [ASSURED] mark=0 [start=Fri Dec 31 23:59:59 9999] use=1\n")
    e = _read(tmp_path, listing)
    assert e.height == 1 and e["start_ts_ns"][0] is None


def test_xml_listing(tmp_path: Path) -> None:
    e = _read(tmp_path, XML, "ct.xml")
    assert e["source"].to_list() == ["xml", "xml"]
    assert e["line"].to_list() == [3, 4]
    assert e.select("proto", "orig_src", "orig_sport", "reply_dst", "reply_dport", "state", "assured",
                    "unreplied", "id").rows() == [
        ("tcp", "10.244.0.10", 40364, "203.0.113.2", 40364, "TIME_WAIT", True, False, 193028120),
        ("udp", "10.244.0.10", 123, "203.0.113.2", 123, None, False, True, 3083452557)]
    assert e["reply_bytes"].to_list() == [435, 0]


def test_xml_events_cut_short(tmp_path: Path) -> None:
    rec = read_conntrack(_write(tmp_path / "ev.xml", XML_EVENTS))
    e = rec.entries
    assert rec.unparsed == 0  # a listener killed before </conntrack> loses no flow
    assert e["source"].to_list() == ["xml_events", "xml_events"]
    assert e["event"].to_list() == ["NEW", "DESTROY"]
    assert e["ts_ns"].to_list() == [1795965793_000_000_000, 1795965653_000_000_000]
    assert e.select("proto", "orig_sport", "reply_sport").rows() == [("icmp", None, None), ("tcp", 42128, 8080)]
    assert e["zone"].to_list() == [None, 5]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_mixed_file_counts_what_it_cannot_read(tmp_path: Path) -> None:
    text = ("## conntrack -E (node namespace)\n" + EVENTS_EXTENDED + "\n## conntrack -L -o extended at the end\n"
            + LIST_EXTENDED + "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n"
            "-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE\n"
            "tcp 6 src=10.0.0.1\n")
    rec = read_conntrack(_write(tmp_path / "kernel-record.txt", text))
    assert rec.formats == {"events_extended_timestamp": 3, "list_extended": 2}
    assert rec.unparsed == 2
    assert rec.unparsed_lines == (10, 11)
    assert rec.entries["line"].to_list() == [2, 3, 4, 7, 8]
    assert rec.has_events and rec.has_listing
    assert rec.first_ts_ns == 1795965793_174706000


def test_gzip(tmp_path: Path) -> None:
    path = tmp_path / "record.log.gz"
    path.write_bytes(gzip.compress(LIST.encode()))
    assert read_conntrack(path).entries.height == 4


@pytest.mark.parametrize("text, problem", [
    ("", "empty file"),
    ("hello\nworld\n", "no conntrack entry in 2 line(s)"),
    ("# only a comment\n", "no conntrack entry in 1 line(s)"),
])
def test_nothing_readable_is_an_input_error(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path / "bad.log", text)
    with pytest.raises(InputError, match=re.escape(f"{path}: {problem}")):
        read_conntrack(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.log: cannot read the conntrack record: No such file"):
        read_conntrack(tmp_path / "missing.log")


def test_xml_with_a_doctype_is_refused(tmp_path: Path) -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE conntrack [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
            "<conntrack><flow>&b;</flow></conntrack>")
    path = _write(tmp_path / "bomb.xml", bomb)
    with pytest.raises(InputError, match="DOCTYPE"):
        read_conntrack(path)


def test_broken_xml_keeps_what_it_read(tmp_path: Path) -> None:
    text = XML.replace("</conntrack>", "<flow><meta direction=\"original\"><layer3>\n<<<\n")
    rec = read_conntrack(_write(tmp_path / "broken.xml", text))
    assert rec.entries.height == 2
    assert rec.unparsed == 1


def test_a_tuple_without_its_ports_is_no_entry(tmp_path: Path) -> None:
    # A new user's garbage line (sport=-4, dport=70000) was read with null ports, and a null port stood for any:
    # every connection between its addresses was "confirmed" by it, even one with an entry of its own.
    good = ("tcp      6 431999 ESTABLISHED src=10.244.0.10 dst=198.51.100.10 sport=37784 dport=80 src=198.51.100.10 "
            "dst=203.0.113.2 sport=80 dport=37784 [ASSURED] mark=0 use=1\n")
    bad = ("tcp      6 431999 ESTABLISHED src=10.244.0.10 dst=198.51.100.10 sport=-4 dport=80 src=198.51.100.10 "
           "dst=203.0.113.2 sport=80 dport=70000 [ASSURED] mark=0 use=1\n"
           "udp      17 29 src=10.244.0.10 dst=198.51.100.53 src=198.51.100.53 dst=203.0.113.2 mark=0 use=1\n")
    rec = read_conntrack(_write(tmp_path / "record.txt", bad + good))
    assert rec.unparsed_lines == (1, 2)
    assert rec.entries.select("line", "orig_sport", "reply_dport").rows() == [(3, 37784, 37784)]
    icmp = "icmp     1 29 src=10.244.0.10 dst=198.51.100.7 type=8 code=0 id=7 src=198.51.100.7 dst=203.0.113.2 " \
           "type=0 code=0 id=7 mark=0 use=1\n"
    assert read_conntrack(_write(tmp_path / "icmp.txt", icmp)).entries.height == 1  # no ports: its id stands in
