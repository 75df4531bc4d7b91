"""natproof grade: a generated class of 30 submissions graded exactly, and the command's files and exit statuses."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

import dpkt
import pytest
from test_readme import blocks as readme_blocks

from natproof.cli import main
from natproof.grade import find_submissions, grade_class, grades_csv, load_grading, side_of
from natproof.testing.scenario import Flow, Scenario, write_scenario

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"

GRADING = """\
pod_cidr = "10.244.0.0/16"
swap_penalty = 1

[[expect]]
name = "SNAT address"
points = 4
snat_ip = "{snat_ip}"

[[expect]]
name = "all translated"
points = 3
all = "translated"
partial = "per_connection"

[[expect]]
name = "the pod's connection"
points = 2
[[expect.connection]]
inside = "{pod_ip}:{pod_port}"
outside = "{snat_ip}:{pod_port}"
verdict = "translated"

[[expect]]
name = "no leak"
points = 1
no_leak = true
"""

WEB, DNS = "198.51.100.10", "192.0.2.53"


def _scenario(i: int, nat_ip: str, *, silent: bool = False) -> Scenario:
    """A student's node: a pod at 10.244.<i>.10 behind nat_ip, one TCP and one UDP connection (and one no reply)."""
    pod = f"10.244.{i}.10"
    flows = [Flow("tcp", pod, 40000, WEB, 80), Flow("udp", pod, 53000, DNS, 53, start_s=0.1)]
    if silent:
        flows.append(Flow("tcp", pod, 40001, WEB, 443, "no_reply", start_s=0.2))
    return Scenario(f"student{i}", tuple(flows), nat_ip=nat_ip, seed=i, noise=False)


def _lab(name: str, folder: Path, inside: str = "inside.pcap", outside: str = "outside.pcap") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(CAPTURES / name / "inside.pcap", folder / inside)
    shutil.copy(CAPTURES / name / "outside.pcap", folder / outside)


def _same_place(src: Path, target: Path) -> None:
    """``src`` less its first IP packet: the same place as ``src`` (a copy of the very same packets is refused)."""
    with open(src, "rb") as fh, open(target, "wb") as out:
        reader = dpkt.pcap.Reader(fh)
        writer = dpkt.pcap.Writer(out, linktype=reader.datalink(), nano=True)
        dropped = False
        for ts, buf in reader:
            if not dropped and isinstance(dpkt.ethernet.Ethernet(buf).data, dpkt.ip.IP):
                dropped = True
                continue
            writer.writepkt(buf, ts)


def build_class(base: Path) -> tuple[Path, Path, Path]:
    """30 submissions and the grading files: (class folder, grading.toml, assignments.csv)."""
    cls = base / "class"
    cls.mkdir()
    rows = []

    def generated(student: str, i: int, *, nat_ip: str | None = None, silent: bool = False) -> Path:
        assigned = f"203.0.113.{100 + i}"
        rows.append((student, assigned, f"10.244.{i}.10", "40000"))
        out = base / "gen" / student
        write_scenario(_scenario(i, nat_ip or assigned, silent=silent), out)
        return out

    def folder(student: str, src: Path, inside: str = "inside.pcap", outside: str | None = "outside.pcap") -> None:
        (cls / student).mkdir()
        shutil.copy(src / "inside.pcap", cls / student / inside)
        if outside is not None:
            shutil.copy(src / "outside.pcap", cls / student / outside)

    for i in range(1, 11):  # correct, in a folder each
        folder(f"s{i:02}", generated(f"s{i:02}", i))
    for i in (11, 12):  # correct, loose file pairs in the class folder
        src = generated(f"s{i}", i)
        shutil.copy(src / "inside.pcap", cls / f"s{i}-inside.pcap")
        shutil.copy(src / "outside.pcap", cls / f"s{i}-outside.pcap")
    folder("s13", generated("s13", 13), "vethpod1.pcap", "eth0.pcap")  # named by interface
    folder("s14", generated("s14", 14), "b.pcap", "a.pcap")  # unnamed: natproof tells the sides apart
    folder("s15", generated("s15", 15, silent=True))  # one connection of three unanswered
    for i in (16, 17):  # swapped: the files renamed the other way round
        folder(f"s{i}", generated(f"s{i}", i), "outside.pcap", "inside.pcap")
    _lab("basic", cls / "s18", "outside.pcap", "inside.pcap")  # a lab capture, swapped
    rows.append(("s18", "203.0.113.2", "10.244.0.10", "37784"))
    for i in (19, 20):  # the outside capture missing
        folder(f"s{i}", generated(f"s{i}", i), outside=None)
    shutil.copy(generated("s21", 21) / "inside.pcap", cls / "s21-inside.pcap")  # and a loose one
    for i in (22, 23, 24):  # the wrong SNAT address for their assignment
        folder(f"s{i}", generated(f"s{i}", i, nat_ip=f"203.0.113.{200 + i}"))
    _lab("basic", cls / "s25" / "lab3")  # a lab capture, correct, unpacked into a folder of its own
    rows.append(("s25", "203.0.113.2", "10.244.0.10", "37784"))
    (cls / "s26").mkdir()  # one capture of several interfaces (tcpdump -i any) and its ip -o link
    shutil.copy(CAPTURES / "internal" / "any.pcap", cls / "s26" / "any.pcap")
    shutil.copy(CAPTURES / "internal" / "links.txt", cls / "s26" / "links.txt")
    rows.append(("s26", "203.0.113.2", "10.244.0.10", "36148"))
    (cls / "s27.pcap").write_text("my NAT works, see screenshot\n")  # not a capture
    rows.append(("s27", "203.0.113.2", "10.244.0.10", "40000"))
    (cls / "s28").mkdir()  # an empty folder
    rows.append(("s28", "203.0.113.2", "10.244.0.10", "40000"))
    (cls / "s29").mkdir()  # both captures taken at one place: no NAT between them
    shutil.copy(CAPTURES / "basic" / "outside.pcap", cls / "s29" / "inside.pcap")
    _same_place(CAPTURES / "basic" / "outside.pcap", cls / "s29" / "outside.pcap")
    rows.append(("s29", "203.0.113.2", "10.244.0.10", "37784"))
    (cls / "s30").mkdir()  # captures of two different runs: they never ran at the same time
    shutil.copy(CAPTURES / "basic" / "inside.pcap", cls / "s30" / "inside.pcap")
    shutil.copy(CAPTURES / "udp" / "outside.pcap", cls / "s30" / "outside.pcap")
    rows.append(("s30", "203.0.113.2", "10.244.0.10", "37784"))
    rows.append(("s31", "203.0.113.131", "10.244.31.10", "40000"))  # on the roster, handed nothing in
    (cls / "notes.txt").write_text("grading notes, not a submission\n")
    grading = base / "grading.toml"
    grading.write_text(GRADING)
    assignments = base / "assignments.csv"
    assignments.write_text("student,snat_ip,pod_ip,pod_port\n" + "".join(f"{','.join(r)}\n" for r in rows))
    return cls, grading, assignments


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict]:
    base = tmp_path_factory.mktemp("grade")
    cls, grading_file, assignments = build_class(base)
    grading = load_grading(grading_file, assignments)
    grades = {g.student: g for g in grade_class(cls, grading)}
    return cls, grading_file, assignments, grades


FULL = {"SNAT address": 4, "all translated": 3, "the pod's connection": 2, "no leak": 1}
NOT_GRADED = {"SNAT address": None, "all translated": None, "the pod's connection": None, "no leak": None}
SWAP = "{s}/inside.pcap and {s}/outside.pcap are swapped: {s}/outside.pcap holds the inside (pod side), graded the " \
       "right way round: 1 point(s) off"
MISSING = "{f} only, a capture of one interface: the outside capture is missing"

# student: (points, each expectation's points (None: not graded), reason (a prefix), notes (each a prefix))
EXPECTED: dict[str, tuple[float, dict[str, float | None], str | None, tuple[str, ...]]] = {
    **{f"s{i:02}": (10, FULL, None, ()) for i in range(1, 13)},
    "s13": (10, FULL, None, ()),
    "s14": (10, FULL, None, ("sides told apart from the traffic: s14/b.pcap is the inside, s14/a.pcap the outside",)),
    "s15": (9, {**FULL, "all translated": 2}, None, ()),
    **{f"s{i}": (9, FULL, None, (SWAP.format(s=f"s{i}"),)) for i in (16, 17, 18)},
    "s19": (0, NOT_GRADED, MISSING.format(f="s19/inside.pcap"), ()),
    "s20": (0, NOT_GRADED, MISSING.format(f="s20/inside.pcap"), ()),
    "s21": (0, NOT_GRADED, MISSING.format(f="s21-inside.pcap"), ()),
    **{f"s{i}": (4, {**FULL, "SNAT address": 0, "the pod's connection": 0}, None, ()) for i in (22, 23, 24)},
    "s25": (10, FULL, None, ()),
    "s26": (10, FULL, None, ("one capture of several interfaces: inside vethpod1, outside eth0",)),
    "s27": (0, NOT_GRADED, "s27.pcap: not a pcap or pcapng capture (starts with 6d 79 20 4e)", ()),
    "s28": (0, NOT_GRADED, "s28/: empty folder, nothing submitted", ()),
    "s29": (0, NOT_GRADED, "not two sides of a NAT: No NAT between the captures: they look taken at the same place",
            ("s29/inside.pcap: --pod-cidr 10.244.0.0/16 holds none of the addresses the inside capture's packets come "
             "from (198.51.100.10, 203.0.113.2)",)),
    "s30": (0, NOT_GRADED, "s30/inside.pcap and s30/outside.pcap do not overlap in time", ()),
    "s31": (0, NOT_GRADED, "no submission: no folder or capture of this student in the class folder", ()),
}


def test_the_class_is_found_as_its_students(graded: tuple) -> None:
    cls = graded[0]
    subs, ignored = find_submissions(cls)
    assert len(subs) == 30 and ignored == ("notes.txt",)
    assert [p.name for p in subs["s11"].captures] == ["s11-inside.pcap", "s11-outside.pcap"]
    assert subs["s11"].folder is None and subs["s28"].captures == () and subs["s28"].folder == cls / "s28"
    assert [p.name for p in subs["s26"].others] == ["links.txt"]
    assert subs["s25"].captures == (cls / "s25" / "lab3" / "inside.pcap", cls / "s25" / "lab3" / "outside.pcap")
    assert [side_of(n) for n in ("inside.pcap", "vethpod1.pcap", "eth0.pcapng", "ens5.pcap.gz", "a.pcap", "any.pcap",
                                 "s11-outside.pcap", "node.pcapng")] == [
        "inside", "inside", "outside", "outside", None, None, "outside", None]


def test_every_student_is_graded_exactly(graded: tuple) -> None:
    grades = graded[3]
    assert list(grades) == [f"s{i:02}" for i in range(1, 32)]  # in name order, the roster's absentee too
    for student, (points, each, reason, notes) in EXPECTED.items():
        g = grades[student]
        assert g.points == points, (student, g.points, g.reason, g.evidence)
        assert g.max_points == 10
        assert {e.name: (e.points if e.result else None) for e in g.expectations} == each, student
        if reason is None:
            assert g.reason is None, (student, g.reason)
        else:
            assert g.reason is not None and g.reason.startswith(reason), (student, g.reason)
            assert "--clock-offset" not in g.reason  # grade takes no such option (the second trial)
            assert all(e.result is None for e in g.expectations)
        assert len(g.notes) == len(notes) and all(map(str.startswith, g.notes, notes)), (student, g.notes)


def test_failing_evidence_cites_the_frames(graded: tuple) -> None:
    grades = graded[3]
    # The wrong SNAT address: what was expected, what the captures show, the connections with their frames.
    assert grades["s22"].evidence[:2] == (
        "SNAT address: expected 203.0.113.122, got ['203.0.113.222']",
        "SNAT address: #0 tcp 10.244.22.10:40000 -> 198.51.100.10:80 as 203.0.113.222:40000: translated "
        "(inside frame 1, outside frame 1)")
    assert "the pod's connection: expected {'outside': '203.0.113.122:40000', 'verdict': 'translated'}, got " \
           "{'outside': '203.0.113.222:40000', 'verdict': 'translated'}" in grades["s22"].evidence
    results = {e.name: e.result for e in grades["s22"].expectations}
    assert results == {"SNAT address": "fail", "all translated": "pass", "the pod's connection": "fail",
                       "no leak": "pass"}
    # Partial credit: 2 of 3 connections translated earn 2 of the 3 points.
    s15 = {e.name: e for e in grades["s15"].expectations}
    assert s15["all translated"].result == "partial" and s15["all translated"].points == 2
    assert s15["all translated"].evidence[0] == "expected translated, got {'translated': 2, 'no_reply': 1}"
    assert s15["all translated"].evidence[1].startswith("#2 tcp 10.244.15.10:40001 -> 198.51.100.10:443 as "
                                                        "203.0.113.115:40001: no_reply (inside frame ")
    assert grades["s01"].evidence == ()
    assert (grades["s25"].inside, grades["s25"].outside) == ("s25/lab3/inside.pcap", "s25/lab3/outside.pcap")


def test_an_html_target_that_cannot_be_written_stops_before_the_grades_go_anywhere(
        graded: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Found by a helper: with --html /dev/full the grades were printed (or -o written) first, then exit 2.
    cls, grading_file, assignments, _ = graded
    out = tmp_path / "grades.csv"
    for extra in ([], ["-o", str(out)]):
        code = main(["grade", str(cls), "--expectations", str(grading_file), "--assignments", str(assignments),
                     "--html", "/dev/full", "-q", *extra])
        stdout, err = capsys.readouterr()
        assert code == 2 and stdout == "" and err.startswith("natproof: error: /dev/full: cannot write it")
        assert not out.exists()


def test_the_command_writes_csv_json_and_html(graded: tuple, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cls, grading_file, assignments, grades = graded
    out, page = tmp_path / "grades.csv", tmp_path / "grades.html"
    code = main(["grade", str(cls), "--expectations", str(grading_file), "--assignments", str(assignments),
                 "-o", str(out), "--html", str(page)])
    _, err = capsys.readouterr()
    assert code == 0
    assert err.splitlines() == [f"natproof: warning: {cls / 'notes.txt'}: not a capture and not a folder: no "
                                "student's, left out", f"natproof: wrote {out}", f"natproof: wrote {page}"]
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert out.read_text() == grades_csv(grades.values(), load_grading(grading_file, assignments))
    assert list(rows[0]) == ["student", "points", "max_points", "SNAT address points", "SNAT address result",
                             "all translated points", "all translated result", "the pod's connection points",
                             "the pod's connection result", "no leak points", "no leak result", "reason", "evidence"]
    by = {r["student"]: r for r in rows}
    assert len(rows) == 31
    assert {s: float(r["points"]) for s, r in by.items()} == {s: e[0] for s, e in EXPECTED.items()}
    assert by["s15"]["all translated result"] == "partial" and by["s15"]["all translated points"] == "2"
    assert by["s19"]["SNAT address result"] == "" and by["s19"]["reason"] == MISSING.format(f="s19/inside.pcap")
    assert by["s22"]["evidence"].startswith("SNAT address: expected 203.0.113.122, got ['203.0.113.222'] | ")
    html = page.read_text()
    assert html.startswith("<!doctype html>") and "<script" not in html and "s22" in html
    assert "31 students" in html and "s28/: empty folder, nothing submitted" in html

    code = main(["grade", str(cls), "--expectations", str(grading_file), "--assignments", str(assignments),
                 "--format", "json", "-q"])
    stdout, err = capsys.readouterr()
    doc = json.loads(stdout)
    assert code == 0 and err == ""
    assert doc["schema"] == "natproof.grade/1" and doc["max_points"] == 10 and doc["ignored"] == ["notes.txt"]
    assert doc["summary"] == {"students": 31, "graded": 23, "not_graded": 8, "full_marks": 16,
                              "mean": round(sum(e[0] for e in EXPECTED.values()) / 31, 2)}
    s16 = next(s for s in doc["students"] if s["student"] == "s16")
    assert (s16["points"], s16["penalty"], s16["inside"], s16["outside"]) == (9, 1, "s16/outside.pcap",
                                                                              "s16/inside.pcap")
    assert [e["result"] for e in s16["expectations"]] == ["pass"] * 4

    code = main(["grade", str(cls), "--expectations", str(grading_file), "--assignments", str(assignments),
                 "--format", "table", "-q"])
    stdout, _ = capsys.readouterr()
    assert code == 0
    assert stdout.splitlines()[-1] == ("31 students: 16 with full marks, 8 not graded (0 points, the reason "
                                       "given); mean 6.71 of 10")


def test_a_swapped_submission_can_be_worth_nothing(graded: tuple, tmp_path: Path) -> None:
    cls, grading_file, assignments, _ = graded
    strict = tmp_path / "strict.toml"
    strict.write_text('swapped = "zero"\n' + grading_file.read_text())
    grades = {g.student: g for g in grade_class(cls, load_grading(strict, assignments))}
    assert grades["s16"].points == 0 and grades["s16"].reason == (
        "s16/inside.pcap and s16/outside.pcap are swapped: s16/outside.pcap holds the inside (pod side), not graded "
        '(swapped = "zero")')
    assert grades["s01"].points == 10


@pytest.mark.parametrize(("grading", "assignments", "message"), [
    ('[[expect]]\npoints = 1\nsnat_ip = "{snat}"\n', "student,snat_ip\na,203.0.113.2\n",
     "{snat} is not a column of"),
    ('[[expect]]\npoints = 1\nsnat_ip = "{snat_ip}"\n', None, "{snat_ip} is not filled without --assignments"),
    ('[[expect]]\npoints = 1\nsnat_ip = "{snat_ip}"\n', "name,snat_ip\na,203.0.113.2\n", "no 'student' column"),
    ('[[expect]]\npoints = 1\nsnat_ip = "{snat_ip}"\n', "student,snat_ip\na,203.0.113.2\na,203.0.113.3\n",
     "student 'a' has a row already"),
    ('[[expect]]\npoints = 1\nsnat_ip = "{snat_ip}"\n', "student,snat_ip\na,nowhere\n",
     "(for student a): [[expect]] 'snat_ip': snat_ip 'nowhere' is not an IP address"),
    ('[[expect]]\nsnat_ip = "203.0.113.2"\n', None, "[[expect]] #1: no points given (e.g. points = 2)"),
    ('[[expect]]\npoints = 1\n', None, "[[expect]] #1: nothing to check"),
    ('[[expect]]\npoints = 1\nall = "translated"\npartial = "some"\n', None, "partial must be one of"),
    ('snat_ip = "203.0.113.2"\n', None, "unknown key(s) snat_ip at the top"),
    ('[[expect]]\npoints = 1\nall = "fine"\n', None, "unknown verdict 'fine'"),
    ('[[expect\n', None, "not a grading file (TOML)"),
    ('[[expect]]\npoints = 1\nport_preserved = false\n', None, "checks nothing"),
])
def test_a_grading_file_or_assignments_it_cannot_use_is_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], grading: str, assignments: str | None,
        message: str) -> None:
    (tmp_path / "class").mkdir()
    (tmp_path / "g.toml").write_text(grading)
    args = ["grade", str(tmp_path / "class"), "--expectations", str(tmp_path / "g.toml")]
    if assignments is not None:
        (tmp_path / "a.csv").write_text(assignments)
        args += ["--assignments", str(tmp_path / "a.csv")]
    code = main(args)
    _, err = capsys.readouterr()
    assert code == 2 and message in err and err.startswith("natproof: error: ") and len(err.splitlines()) == 1


def test_a_class_folder_that_is_none_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "g.toml").write_text('[[expect]]\npoints = 1\nall = "translated"\n')
    code = main(["grade", str(tmp_path / "nope"), "--expectations", str(tmp_path / "g.toml")])
    assert code == 2 and "nope: no such folder" in capsys.readouterr().err
    code = main(["grade", str(tmp_path / "g.toml"), "--expectations", str(tmp_path / "g.toml")])
    assert code == 2 and "g.toml: not a folder" in capsys.readouterr().err
    code = main(["grade", str(tmp_path), "--expectations", str(tmp_path / "g.toml"), "-o", str(tmp_path / "g.toml")])
    assert code == 2 and "write the output elsewhere" in capsys.readouterr().err


def test_per_check_partial_credit_and_a_student_without_a_row(tmp_path: Path) -> None:
    cls = tmp_path / "class"
    _lab("basic", cls / "ann")
    _lab("no-masquerade", cls / "ben")
    (tmp_path / "g.toml").write_text(
        '[[expect]]\nname = "three things"\npoints = 3\npartial = "per_check"\nall = "translated"\nno_leak = true\n'
        'min_connections = 3\n[[expect]]\npoints = 1\nsnat_ip = "{snat_ip}"\n')
    (tmp_path / "a.csv").write_text("student,snat_ip\nann,203.0.113.2\n")
    grades = {g.student: g for g in grade_class(cls, load_grading(tmp_path / "g.toml", tmp_path / "a.csv"))}
    assert grades["ann"].points == 4
    assert grades["ben"].points == 0 and grades["ben"].reason == (
        f"no row for 'ben' in {tmp_path / 'a.csv'}: nothing to fill {{snat_ip}} with")
    # Without the row's column in the file, ben is graded: no no_reply holds, all translated and 2 of 3 connections
    # do not: one check of three. (no_leak does not hold for ben: his pod's address left the node untranslated.)
    (tmp_path / "g.toml").write_text(
        '[[expect]]\nname = "three things"\npoints = 3\npartial = "per_check"\nall = "translated"\n'
        'no_verdicts = ["no_reply"]\nmin_connections = 3\n')
    grades = {g.student: g for g in grade_class(cls, load_grading(tmp_path / "g.toml", tmp_path / "a.csv"))}
    ben = grades["ben"].expectations[0]
    assert (grades["ben"].points, ben.result, len(ben.checks)) == (1, "partial", 3)
    assert [line.split(":")[0] for line in ben.evidence if not line.startswith("#")] == [
        "min_connections", "all translated"]


def test_unnamed_sides_with_nothing_crossed_are_said_so(tmp_path: Path) -> None:
    cls = tmp_path / "class"
    sc = dataclasses.replace(_scenario(1, "203.0.113.101"), flows=(
        Flow("tcp", "10.244.1.10", 40000, WEB, 80, "untranslated"),))
    write_scenario(sc, tmp_path / "gen")
    (cls / "zoe").mkdir(parents=True)
    shutil.copy(tmp_path / "gen" / "inside.pcap", cls / "zoe" / "one.pcap")
    shutil.copy(tmp_path / "gen" / "outside.pcap", cls / "zoe" / "two.pcap")
    (tmp_path / "g.toml").write_text('[[expect]]\npoints = 1\nall = "translated"\n')
    [zoe] = grade_class(cls, load_grading(tmp_path / "g.toml"))
    assert zoe.points == 0 and zoe.reason is None
    assert zoe.notes == ("sides not told apart (nothing crossed the NAT), taken in name order: zoe/one.pcap is the "
                         "inside, zoe/two.pcap the outside",)


def test_the_readme_class_is_graded_from_the_readme_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import shlex
    import subprocess

    code = readme_blocks()
    setup = next(b for b in code if b and b[0].startswith("mkdir -p class/"))
    grading = next(b for b in code if b and b[0] == "# grading.toml")
    roster = next(b for b in code if b and b[0].startswith("student,"))
    table = next(b for b in code if b and b[0].startswith("$ natproof grade class") and "--format table" in b[0])
    files = next(b for b in code if b and b[0].startswith("$ natproof grade class") and "--html" in b[0])
    # As a new user would, from the repository's root: here a folder with the bundled captures in it.
    (tmp_path / "captures").symlink_to(CAPTURES)
    subprocess.run(["bash", "-e", "-c", "\n".join(setup)], cwd=tmp_path, check=True)
    (tmp_path / "grading.toml").write_text("\n".join(grading) + "\n")
    (tmp_path / "assignments.csv").write_text("\n".join(roster) + "\n")
    monkeypatch.chdir(tmp_path)
    code = main(shlex.split(table[0][2:])[1:])
    out, err = capsys.readouterr()
    end = table.index("$ echo $?")
    assert (code, err) == (int(table[end + 1]), "")
    assert out.splitlines() == table[1:end]
    code = main(shlex.split(files[0][2:])[1:])
    out, err = capsys.readouterr()
    head = files.index("$ head -3 grades.csv")
    assert (code, out) == (0, "") and err.splitlines() == files[1:head]
    assert (tmp_path / "grades.csv").read_text().splitlines()[:3] == files[head + 1:]


def test_a_bug_on_one_submission_does_not_stop_the_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import natproof

    cls = tmp_path / "class"
    _lab("basic", cls / "ann")
    _lab("udp", cls / "bug")
    (tmp_path / "g.toml").write_text('[[expect]]\npoints = 1\nsnat_ip = "203.0.113.2"\n')
    real = natproof.correlate

    def correlate(inside: Path, *args: object, **kw: object) -> object:
        if Path(inside).parent.name == "bug":
            raise ZeroDivisionError("division by zero")
        return real(inside, *args, **kw)

    monkeypatch.setattr(natproof, "correlate", correlate)
    ann, bug = grade_class(cls, load_grading(tmp_path / "g.toml"))
    assert ann.points == 1 and bug.points == 0
    assert bug.reason == ("natproof failed on it (internal error: ZeroDivisionError: division by zero; run natproof "
                          "correlate on these files with --traceback and report it)")


def test_grades_never_overwrite_a_submission_nor_guess_a_format(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the new-user trial: -o naming a student's capture replaced it with the grades; an unknown suffix
    was written as JSON; --html into a missing folder failed after the CSV was written."""
    from natproof.cli import main

    cls = tmp_path / "class"
    (cls / "ann").mkdir(parents=True)
    src = Path(__file__).resolve().parent.parent / "captures" / "basic"
    for name in ("inside.pcap", "outside.pcap"):
        (cls / "ann" / name).write_bytes((src / name).read_bytes())
    grading = tmp_path / "grading.toml"
    grading.write_text('[[expect]]\nverdict = "translated"\npoints = 1\n')
    before = (cls / "ann" / "inside.pcap").read_bytes()
    args = ["grade", str(cls), "--expectations", str(grading), "-q"]
    assert main([*args, "-o", str(cls / "ann" / "inside.pcap")]) == 2
    assert "inside the class folder" in capsys.readouterr().err
    assert (cls / "ann" / "inside.pcap").read_bytes() == before
    assert main([*args, "-o", str(tmp_path / "grades.xlsx")]) == 2
    assert "--format" in capsys.readouterr().err and not (tmp_path / "grades.xlsx").exists()
    assert main([*args, "-o", str(tmp_path / "g.csv"), "--html", str(tmp_path / "nodir" / "g.html")]) == 2
    assert "no such directory" in capsys.readouterr().err and not (tmp_path / "g.csv").exists()
    # -o - is standard output, as for correlate and diagnose; --html - is refused, as report refuses -o -: each
    # wrote a file named "-" in the current folder.
    monkeypatch.chdir(tmp_path)
    grading.write_text("[[expect]]\nno_leak = true\npoints = 1\n")
    assert main([*args, "-o", "-", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["students"] and not (tmp_path / "-").exists()
    assert main([*args, "--html", "-"]) == 2
    assert "standard output is not written" in capsys.readouterr().err and not (tmp_path / "-").exists()


def test_grades_output_suffix_and_format_must_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """grade reads -o's suffix as correlate and diagnose do (natproof.cli.output_format): a suffix naming a format
    grade does not write (.parquet), or one --format contradicts, is refused before any submission is graded."""
    import natproof

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("graded before the output was checked")

    monkeypatch.setattr(natproof, "correlate", no_work)
    (tmp_path / "class" / "ann").mkdir(parents=True)
    grading = tmp_path / "grading.toml"
    grading.write_text('[[expect]]\nverdict = "translated"\npoints = 1\n')
    args = ["grade", str(tmp_path / "class"), "--expectations", str(grading), "-q"]
    target = tmp_path / "grades.parquet"
    assert main([*args, "-o", str(target)]) == 2
    assert capsys.readouterr().err == (
        f"natproof: error: -o {target}: the suffix .parquet names parquet, which grade does not write (it writes "
        "table, csv or json); name the file for one of those, or give it another suffix and --format (see "
        "'natproof grade --help')\n")
    target = tmp_path / "grades.json"
    assert main([*args, "--format", "csv", "-o", str(target)]) == 2
    assert capsys.readouterr().err == (
        f"natproof: error: -o {target}: --format csv and the suffix .json (json) disagree; give one of them, or make "
        "them agree (see 'natproof grade --help')\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class", "grading.toml"]


def test_a_grades_csv_cell_never_starts_a_spreadsheet_formula(graded: tuple) -> None:
    # A student names their own folder: one named =HYPERLINK(1) became a cell a spreadsheet runs (a trial). Such a
    # text cell starts with ' (OWASP's CSV-injection advice); numbers and other names are as they were.
    _cls, grading_file, assignments, grades = graded
    one = next(iter(grades.values()))
    named = [dataclasses.replace(one, student=name, reason=reason)
             for name, reason in (("=HYPERLINK(1)", None), ("+1", "@SUM(A1)"), ("-x", None), ("ana", None))]
    rows = list(csv.DictReader(io.StringIO(grades_csv(named, load_grading(grading_file, assignments)))))
    assert [r["student"] for r in rows] == ["'=HYPERLINK(1)", "'+1", "'-x", "ana"]
    assert rows[1]["reason"] == "'@SUM(A1)"
    assert all(not r[k].startswith(("=", "+", "-", "@")) for r in rows for k in ("student", "reason", "evidence"))


def test_a_capture_warning_is_in_the_students_notes_and_grades_csv(tmp_path: Path) -> None:
    """Found by a new user's trial: a submission cut short (correlate warns 'last record truncated') was graded with
    no word of it. Each capture warning is a note, as correlate words it, paths relative to the class folder, and
    so in grades.csv's reason column; swapped captures still get grade's one note of it, not correlate's too."""
    cls = tmp_path / "class"
    _lab("basic", cls / "ann")
    outside = cls / "ann" / "outside.pcap"
    outside.write_bytes(outside.read_bytes()[:-30])
    _lab("basic", cls / "bob", "outside.pcap", "inside.pcap")
    (tmp_path / "g.toml").write_text('[[expect]]\npoints = 1\nall = "translated"\n')
    grading = load_grading(tmp_path / "g.toml")
    ann, bob = grade_class(cls, grading)
    cut = "ann/outside.pcap: last record truncated at frame 36; 35 frames used"
    assert (ann.points, ann.reason, ann.notes) == (1, None, (cut,))
    assert bob.notes == ("bob/inside.pcap and bob/outside.pcap are swapped: bob/outside.pcap holds the inside (pod "
                         "side), graded the right way round",)
    rows = list(csv.DictReader(io.StringIO(grades_csv([ann, bob], grading))))
    assert rows[0]["reason"] == cut


def test_a_healthy_nodeport_node_earns_its_snat_points(tmp_path: Path) -> None:
    """A new user's trial: captures/nodeport graded partial 0.8 of 4 on snat_ip, its four NodePort clients counted
    as connections that left with another address; only the one started inside is (verify.left_the_node)."""
    _lab("nodeport", tmp_path / "class" / "np")
    (tmp_path / "g.toml").write_text('[[expect]]\npoints = 4\nsnat_ip = "203.0.113.2"\npartial = "per_connection"\n')
    [np_] = grade_class(tmp_path / "class", load_grading(tmp_path / "g.toml"))
    [exp] = np_.expectations
    assert (np_.points, exp.result, exp.evidence) == (4, "pass", ())
    assert [(c.held, c.of) for c in exp.checks] == [(1, 1)]
