"""The README's examples as a new user runs them: the command exactly as written, from the repository's root."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from natproof.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks() -> list[list[str]]:
    """The README's fenced code blocks, each as its lines."""
    out: list[list[str]] = []
    current: list[str] | None = None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                out.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return out


def example(prefix: str) -> tuple[str, list[str]]:
    """The README code block whose first line starts ``$ `` + prefix: its command and its output lines."""
    for block in blocks():
        if block and block[0].startswith(f"$ {prefix}"):
            return block[0][2:], block[1:]
    raise AssertionError(f"no README example starting with $ {prefix}")


def test_one_tcpdump_any_capture_with_pod_names(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    command, shown = example("natproof correlate captures/internal/any.pcap")
    argv = shlex.split(command)
    assert argv[0] == "natproof" and "--pods" in argv and "--interfaces" in argv
    monkeypatch.chdir(ROOT)
    code = main(argv[1:])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    lines = [line.rstrip() for line in out.splitlines()]
    assert any("default/pod1 -> default/pod2" in line for line in lines)
    # What the README shows is what the command prints: every row naming a pod, and the names' source.
    named = [line for line in shown if "default/pod" in line or line.startswith("names: ")]
    assert len(named) == 7, named
    assert [line for line in named if line not in lines] == []


def test_the_library_section_lists_what_a_result_offers() -> None:
    """A new user's trial found the library section silent on Result's methods (summary(), by_verdict(), by_fate()
    ...) and on to_json() giving bytes: every public attribute, method and property of natproof.Result is named
    there, and what it says of them holds."""
    import dataclasses
    import re

    import natproof

    [block] = [b for b in blocks() if b[:1] == ["import natproof"] and any("= natproof.correlate(" in x for x in b)]
    text = "\n".join(block)
    public = {n for n in dir(natproof.Result) if not n.startswith("_")}
    public |= {f.name for f in dataclasses.fields(natproof.Result)}
    assert sorted(n for n in public if not re.search(rf"\.{n}\b", text)) == []
    basic = ROOT / "captures" / "basic"
    result = natproof.correlate(basic / "inside.pcap", basic / "outside.pcap")
    assert "result.to_json()                          # the document as bytes" in text
    assert isinstance(result.to_json(), bytes) and b"".join(result.json_parts()) == result.to_json()
    keys = re.search(r"result.summary\(\) .*summary \(a dict\): (.*)\n +# (.*)", text)
    assert keys is not None and set(result.summary()) == {k.strip() for k in " ".join(keys.groups()).split(",")}
    assert set(result.by_verdict()) == {v.value for v in natproof.Verdict}
    assert list(result.by_fate())[:2] == ["crossed", "leaked"]
    assert set(result.overlap()) == {"start", "end", "seconds", "clock", "inside_share", "outside_share"}


def test_the_library_section_names_only_what_exists() -> None:
    """A new user's trial: the section said result.CONNECTION_SCHEMA, an AttributeError (the module's constant is
    natproof.result.CONNECTION_SCHEMA). Every result.NAME there is an attribute of a Result, every natproof.X.NAME an
    attribute of that module."""
    import importlib
    import re

    import natproof

    [block] = [b for b in blocks() if b[:1] == ["import natproof"] and any("= natproof.correlate(" in x for x in b)]
    text = "\n".join(block)
    basic = ROOT / "captures" / "basic"
    result = natproof.correlate(basic / "inside.pcap", basic / "outside.pcap")
    named = set(re.findall(r"(?<![\w.])result\.(\w+)", text))
    assert named and sorted(n for n in named if not hasattr(result, n)) == []
    for path in set(re.findall(r"\bnatproof((?:\.\w+)+)", text)):
        obj: object = natproof
        for part in path.split(".")[1:]:
            if not hasattr(obj, part) and isinstance(obj, type(natproof)):
                importlib.import_module(f"{obj.__name__}.{part}")  # a module not yet imported (natproof.result)
            assert hasattr(obj, part), f"natproof{path}"
            obj = getattr(obj, part)
