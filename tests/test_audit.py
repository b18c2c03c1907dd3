"""The tamper-evident audit log: a real runtime writes the chained lines, the real CLI
checks them; tampering of every kind is caught at the right line, across rotation, with
several real processes appending to one chain and across restarts."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iron_sdk import Runtime, RuntimeConfig
from iron_sdk.audit_chain import (
    audit_key,
    head_path,
    log_files,
    read_log,
    rotated_path,
    verify,
)
from iron_sdk.cli import main
from iron_sdk.events import make_event
from iron_sdk.identity import load_secret

ROOT = Path(__file__).resolve().parents[1]


def _runtime(home: Path) -> Runtime:
    return Runtime(RuntimeConfig(home=home, ledger="memory", load_entry_points=False))


def _write(home: Path, n: int, *, agent: str = "agent", start: int = 0) -> None:
    rt = _runtime(home)
    try:
        for i in range(start, start + n):
            rt.emit(make_event("call_completed", agent_id=f"{agent}-{i}", model="gpt-4o-mini",
                               input_tokens=10, output_tokens=i, cost_micro=7 * i))
    finally:
        rt.close()


def _verify_cli(capsys: pytest.CaptureFixture[str], *files: Path) -> tuple[int, str]:
    code = main(["audit", "verify", *map(str, files)])
    out = capsys.readouterr()
    return code, (out.out + out.err).strip()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture
def log10(iron_home: Path) -> Path:
    _write(iron_home, 10)
    return iron_home / "audit.jsonl"


def test_intact_log_verifies_and_every_line_is_chained(log10, capsys):
    code, out = _verify_cli(capsys)
    assert code == 0 and out == "ok: 10 lines intact (seq 1..10)"
    events = list(read_log(log10))
    assert [e["seq"] for e in events] == list(range(1, 11))
    assert all(len(e["mac"]) == 64 for e in events)
    assert events[0]["prev"] == "0" * 64 and "prev" not in events[1]
    assert (log10.stat().st_mode & 0o777) == 0o600


def _edit(lines: list[bytes]) -> list[bytes]:
    lines[3] = lines[3].replace(b'"output_tokens":3', b'"output_tokens":0')
    return lines


def _forge(lines: list[bytes]) -> list[bytes]:
    """Edit a line and recompute its MAC with a key other than the home secret's."""
    import hashlib
    import hmac

    from iron_sdk.audit_chain import split_line

    prev = bytes.fromhex(json.loads(lines[2])["mac"])
    body = split_line(lines[3].rstrip(b"\n"))[0].replace(b'"cost_micro":21', b'"cost_micro":0')
    mac = hmac.new(b"guessed", prev + body, hashlib.sha256).hexdigest()
    lines[3] = body[:-1] + b',"mac":"' + mac.encode() + b'"}\n'
    return lines


TAMPERING = {
    # name: (change to the lines, first bad line, words in the reason)
    "edit": (_edit, 4, "MAC mismatch"),
    "forged MAC": (_forge, 4, "MAC mismatch"),
    "delete": (lambda ls: ls[:3] + ls[4:], 4, "expected seq 4, found 5"),
    "insert copy": (lambda ls: ls[:5] + [ls[1]] + ls[5:], 6, "expected seq 6, found 2"),
    "insert new": (lambda ls: ls[:5] + [ls[5].replace(b'"seq":6', b'"seq":6,"x":1')]
                   + ls[5:], 6, "MAC mismatch"),
    "reorder": (lambda ls: ls[:5] + [ls[6], ls[5]] + ls[7:], 6, "expected seq 6, found 7"),
    "truncate lines": (lambda ls: ls[:7], 8, "truncated"),
    "truncate mid-line": (lambda ls: ls[:8] + [ls[8][:40]], 9, "incomplete last line"),
    "drop MAC": (lambda ls: ls[:2] + [ls[2].split(b',"mac"')[0] + b"}\n"] + ls[3:], 3,
                 "no MAC"),
    "delete first": (lambda ls: ls[1:], 1, "nothing of the line before"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_is_caught_at_the_first_bad_line(log10, capsys, name):
    change, line, words = TAMPERING[name]
    log10.write_bytes(b"".join(change(_lines(log10))))
    code, out = _verify_cli(capsys)
    assert code == 1
    assert out.startswith(f"{log10}:{line}: ") and words in out, out


def test_a_deleted_log_is_caught_by_its_head(log10, capsys):
    log10.unlink()
    code, out = _verify_cli(capsys)
    assert code == 1 and out.startswith(f"{log10}:1: ") and "truncated" in out


def test_altered_head_is_caught(log10, capsys):
    head = json.loads(head_path(log10).read_text())
    head["seq"] = 5
    head_path(log10).write_text(json.dumps(head))
    code, out = _verify_cli(capsys)
    assert code == 1 and "head file was altered" in out


def test_a_different_secret_cannot_verify(log10, capsys, monkeypatch):
    monkeypatch.setenv("IRON_SECRET", "someone-elses-secret")
    code, out = _verify_cli(capsys)
    assert code == 1 and "altered" in out


def test_rotation_keeps_one_chain(iron_home, capsys, monkeypatch):
    monkeypatch.setenv("IRON_AUDIT_MAX_BYTES", "2000")
    _write(iron_home, 40)
    current = iron_home / "audit.jsonl"
    files = log_files(current)
    assert len(files) >= 4 and files[0] == rotated_path(current, 1) and files[-1] == current
    assert all(f.stat().st_size <= 2000 for f in files)
    assert _verify_cli(capsys) == (0, "ok: 40 lines intact (seq 1..40)")
    assert [e["agent_id"] for e in read_log(current)] == [f"agent-{i}" for i in range(40)]
    second = rotated_path(current, 2)
    first_seq = json.loads(_lines(second)[0])["seq"]
    assert json.loads(_lines(second)[0])["prev"] == json.loads(
        _lines(rotated_path(current, 1))[-1])["mac"]
    # one rotated file checks alone (its first line names the MAC it chains from)
    assert _verify_cli(capsys, second)[0] == 0

    lines = _lines(second)
    lines[2] = lines[2].replace(b'"model":"gpt-4o-mini"', b'"model":"gpt-4o"')
    second.write_bytes(b"".join(lines))
    assert _verify_cli(capsys) == (
        1, f"{second}:3: MAC mismatch: the line was altered or not written by this runtime")
    lines[2] = lines[2].replace(b'"model":"gpt-4o"', b'"model":"gpt-4o-mini"')
    second.write_bytes(b"".join(lines))
    assert _verify_cli(capsys)[0] == 0

    second.write_bytes(b"".join(lines[:-1]))  # its last line cut: the next file says so
    code, out = _verify_cli(capsys)
    assert code == 1 and out.startswith(f"{rotated_path(current, 3)}:1: ")
    assert "does not continue the previous one" in out
    second.unlink()  # a whole file gone
    code, out = _verify_cli(capsys)
    assert code == 1 and out.startswith(f"{rotated_path(current, 3)}:1: ")
    rotated_path(current, 1).unlink()  # the start gone
    code, out = _verify_cli(capsys)
    assert code == 1 and out.startswith(f"{rotated_path(current, 3)}:1: ")
    assert "starts at seq" in out and first_seq > 1


def test_restart_continues_the_chain(iron_home, capsys, monkeypatch):
    _write(iron_home, 3, start=0)
    _write(iron_home, 3, start=3)
    monkeypatch.setenv("IRON_AUDIT_MAX_BYTES", "1500")
    _write(iron_home, 10, start=6)  # restarts into a rotation
    _write(iron_home, 2, start=16)
    assert len(log_files(iron_home / "audit.jsonl")) > 1
    assert _verify_cli(capsys) == (0, "ok: 18 lines intact (seq 1..18)")


def test_lines_cut_off_the_end_stay_visible_after_more_appends(log10, iron_home, capsys):
    log10.write_bytes(b"".join(_lines(log10)[:6]))
    _write(iron_home, 2, start=10)  # a restart after the cut chains from the head
    code, out = _verify_cli(capsys)
    assert code == 1 and out.startswith(f"{log10}:7: ") and "expected seq 7, found 11" in out


def test_two_writers_in_one_process_interleave_into_one_chain(iron_home, capsys):
    a, b = _runtime(iron_home), _runtime(iron_home)
    try:
        for i in range(20):
            (a if i % 3 else b).emit(make_event("tool_called", tool=f"t{i}"))
            a.flush()
            b.flush()
    finally:
        a.close()
        b.close()
    assert _verify_cli(capsys) == (0, "ok: 20 lines intact (seq 1..20)")


def test_the_tail_is_read_again_only_after_another_writer_appended(iron_home):
    from iron_sdk.audit_chain import ChainWriter

    class CountingWriter(ChainWriter):
        recoveries = 0

        def _recover(self) -> tuple[int, bytes]:
            self.recoveries += 1
            return super()._recover()

    key = audit_key(b"test-secret")
    path = iron_home / "audit.jsonl"
    a, b = CountingWriter(path, key), CountingWriter(path, key)
    for i in range(5):
        a.append([make_event("tool_called", tool=f"a{i}")])
    assert a.recoveries == 1
    b.append([make_event("tool_called", tool="b")])
    a.append([make_event("tool_called", tool="a5")])
    a.append([make_event("tool_called", tool="a6")])
    assert a.recoveries == 2 and b.recoveries == 1
    a.close()
    b.close()
    assert verify(log_files(path), key, head_of=path).lines == 8


def test_a_log_from_before_the_chain_is_set_aside(iron_home, capsys):
    iron_home.mkdir(parents=True)
    (iron_home / "audit.jsonl").write_text('{"type":"call_completed","agent_id":"old"}\n')
    _write(iron_home, 2)
    assert _verify_cli(capsys) == (0, "ok: 2 lines intact (seq 1..2)")
    aside = list(iron_home.glob("audit.unchained-*.jsonl"))
    assert len(aside) == 1 and "old" in aside[0].read_text()


WRITER = """
import os, sys
from iron_sdk import Runtime, RuntimeConfig
from iron_sdk.events import make_event
from pathlib import Path
name, n = sys.argv[1], int(sys.argv[2])
rt = Runtime(RuntimeConfig(home=Path(os.environ["IRON_HOME"]), ledger="memory",
                           load_entry_points=False))
for i in range(n):
    rt.emit(make_event("call_completed", agent_id=name, n=i, cost_micro=i))
    if i % 7 == 0:
        rt.flush()
rt.close()
"""


def test_four_processes_appending_keep_one_valid_chain(iron_home, capsys, monkeypatch):
    monkeypatch.setenv("IRON_AUDIT_MAX_BYTES", "20000")  # rotations happen under contention
    load_secret(iron_home, create=True)  # made once, before the processes race
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, f"proc-{k}", "150"], env=env)
             for k in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    current = iron_home / "audit.jsonl"
    assert len(log_files(current)) > 2
    assert _verify_cli(capsys) == (0, "ok: 600 lines intact (seq 1..600)")
    events = list(read_log(current))
    for k in range(4):  # each process's own events in its order, none lost
        assert [e["n"] for e in events if e["agent_id"] == f"proc-{k}"] == list(range(150))
    key = audit_key(load_secret(iron_home, create=False))
    assert verify(log_files(current), key, head_of=current).ok


def test_tail_filters_and_prints_json(iron_home, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    rt = _runtime(iron_home)
    now = time.time()
    for ts, agent, type_ in ((now - 7200, "a", "call_completed"), (now - 60, "a", "call_blocked"),
                             (now - 30, "b", "call_completed"), (now - 5, "a", "call_completed")):
        rt.emit({**make_event(type_, agent_id=agent, model="gpt-4o-mini"), "ts": ts})
    rt.close()

    def tail(*args: str) -> list[dict]:
        assert main(["audit", "tail", "--json", *args]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert [e["ts"] for e in tail("--agent", "a")] == [now - 7200, now - 60, now - 5]
    assert [e["agent_id"] for e in tail("--type", "call_completed")] == ["a", "b", "a"]
    assert [e["ts"] for e in tail("--since", "10m")] == [now - 60, now - 30, now - 5]
    assert [e["ts"] for e in tail("--since", str(now - 40), "--agent", "a")] == [now - 5]
    assert len(tail("-n", "2")) == 2
    assert main(["audit", "tail"]) == 0
    table = capsys.readouterr().out
    assert "call_blocked" in table and "gpt-4o-mini" in table


def _read_json_lines(proc: subprocess.Popen, n: int, timeout: float = 30) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {n} events followed"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            out.append(json.loads(proc.stdout.readline()))
    return out


def test_tail_follow_continues_across_rotation(iron_home, monkeypatch):
    _write(iron_home, 2, agent="before")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "iron_sdk.cli", "audit", "tail", "-f",
                             "--json", "-n", "1"], env=env, stdout=subprocess.PIPE,
                            bufsize=0)
    try:
        assert [e["agent_id"] for e in _read_json_lines(proc, 1)] == ["before-1"]
        monkeypatch.setenv("IRON_AUDIT_MAX_BYTES", "1200")
        _write(iron_home, 12, agent="after")  # several rotations while it follows
        assert len(log_files(iron_home / "audit.jsonl")) > 2
        followed = _read_json_lines(proc, 12)
        assert [e["agent_id"] for e in followed] == [f"after-{i}" for i in range(12)]
    finally:
        proc.terminate()
        proc.wait(10)
