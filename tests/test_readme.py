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
