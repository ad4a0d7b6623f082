"""At the door: the lockout (persisted), the --on-grant/--on-deny hooks, the guided --mic session."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import time

import numpy as np
import pytest
from synth import synth_voice

from voicegate.device.door import Hooks, new_decision_id
from voicegate.device.lockout import Lockout
from voicegate.device.enroll import EnrolmentRefused
from voicegate.device.enroll_mic import record_session
from voicegate.device.stream import ArraySource


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def rec(decision: str) -> dict:
    return {"decision": decision, "speaker": "alice" if decision == "GRANTED" else None,
            "reason": "r", "decision_id": new_decision_id()}


# --- lockout ---------------------------------------------------------------------------------------
def test_lockout_after_n_failures_in_the_window_then_cool_off(tmp_path):
    clock = Clock()
    lock = Lockout(tmp_path / "audit.jsonl.lockout.json", max_failures=3, window_s=60, cooloff_s=100, clock=clock)
    assert lock.apply(rec("DENIED")) is None
    clock.t += 70  # the first failure leaves the window
    assert lock.apply(rec("UNCERTAIN")) is None and lock.apply(rec("DENIED")) is None
    event = lock.apply(rec("DENIED"))
    assert event["event"] == "lockout" and lock.remaining() == pytest.approx(100)
    r = rec("GRANTED")
    lock.apply(r)
    assert r["decision"] == "DENIED" and r["speaker"] is None and r["locked_out"]
    assert "locked out for 100 s more" in r["reason"]
    clock.t += 101
    r = rec("GRANTED")
    assert lock.apply(r) is None and r["decision"] == "GRANTED"


def test_lockout_survives_a_restart_and_fails_closed_on_a_broken_state(tmp_path):
    clock = Clock()
    path = tmp_path / "audit.jsonl.lockout.json"
    lock = Lockout(path, max_failures=2, window_s=60, cooloff_s=100, clock=clock)
    lock.apply(rec("DENIED"))
    again = Lockout(path, max_failures=2, window_s=60, cooloff_s=100, clock=clock)  # a restart
    assert again.apply(rec("DENIED"))["event"] == "lockout"
    clock.t += 10
    assert Lockout(path, clock=clock).remaining() == pytest.approx(90)  # still locked after a restart
    path.write_text("{broken")
    assert Lockout(path, cooloff_s=100, clock=clock).remaining() == pytest.approx(100)


@pytest.mark.parametrize("damage", ["{}", '{"failures": [], "locked_until": NaN}', '{"failures": "x", "locked_until": 0}',
                                    "[]", '{"failures": [], "locked_until": 1' + "0" * 400 + "}",
                                    "dangling link", "link to a clean state", "deleted"])
def test_a_damaged_or_deleted_lockout_state_locks_out(tmp_path, damage):
    """Emptied, NaN, a folder or a dangling link in its place, or deleted beside an audit log that
    has records: a full cool-off, never a fresh count (found by a review: each of these granted)."""
    clock = Clock()
    audit = tmp_path / "audit.jsonl"
    audit.write_text('{"type": "decision"}\n')
    path = audit.with_name(audit.name + ".lockout.json")
    Lockout.beside(audit, max_failures=2, cooloff_s=100, clock=clock).apply(rec("DENIED"))
    assert path.is_file()
    path.unlink()
    if damage == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    elif damage == "link to a clean state":
        (tmp_path / "clean.json").write_text('{"failures": [], "locked_until": 0}')
        path.symlink_to(tmp_path / "clean.json")
    elif damage != "deleted":
        path.write_text(damage)
    lock = Lockout.beside(audit, max_failures=2, cooloff_s=100, clock=clock)
    assert lock.remaining() == pytest.approx(100)
    r = rec("GRANTED")
    lock.apply(r)
    assert r["decision"] == "DENIED" and r["locked_out"]


def test_a_first_start_is_not_locked_out_and_writes_its_state(tmp_path):
    audit = tmp_path / "audit.jsonl"
    lock = Lockout.beside(audit, clock=Clock())
    assert lock.remaining() == 0 and audit.with_name("audit.jsonl.lockout.json").is_file()
    audit.write_text("")  # the audit log just opened, still empty: also a first start
    assert Lockout.beside(audit, clock=Clock()).remaining() == 0


def test_a_grant_clears_the_count_and_noise_does_not_count():
    lock = Lockout(None, max_failures=2, window_s=60, cooloff_s=100, clock=Clock())
    lock.apply(rec("DENIED"))
    lock.apply(rec("GRANTED"))
    assert lock.apply(rec("DENIED")) is None  # the count started again
    assert lock.failures and len(lock.failures) == 1
    assert lock.apply({"decision": None}) is None and len(lock.failures) == 1


# --- hooks -----------------------------------------------------------------------------------------
HOOK = """import json, os, sys, time
out = sys.argv[1]
time.sleep(float(os.environ.get("HOOK_SLEEP", "0")))
env = {k: v for k, v in os.environ.items() if k.startswith("VOICEGATE_")}
json.dump({"argv": sys.argv[2:], "env": env}, open(out, "w"))
sys.exit(int(os.environ.get("HOOK_EXIT", "0")))
"""


@pytest.fixture()
def hook(tmp_path):
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    return script


def test_on_grant_gets_the_decision_in_its_environment_without_a_shell(tmp_path, hook):
    out, marker = tmp_path / "out.json", tmp_path / "pwned"
    hooks = Hooks(on_grant=f"{sys.executable} {hook} {out} ; touch {marker} $(touch {marker})")
    r = {**rec("GRANTED"), "p_allow": 0.93, "uncertainty": 0.01, "ts": "2026-01-01T00:00:00Z"}
    t = hooks.fire(r)
    t.join(10)
    got = json.loads(out.read_text())
    assert got["env"]["VOICEGATE_SPEAKER"] == "alice" and got["env"]["VOICEGATE_DECISION"] == "GRANTED"
    assert got["env"]["VOICEGATE_SCORE"] == "0.93" and got["env"]["VOICEGATE_DECISION_ID"] == r["decision_id"]
    assert got["argv"] == [";", "touch", str(marker), "$(touch", f"{marker})"]  # literal, no shell
    assert not marker.exists()
    assert hooks.fire(rec("DENIED")) is None  # no --on-deny


def test_hooks_never_block_and_their_failures_are_logged(tmp_path, hook, monkeypatch, caplog):
    monkeypatch.setenv("HOOK_SLEEP", "5")
    hooks = Hooks(on_deny=f"{sys.executable} {hook} {tmp_path / 'o.json'}", timeout=2.0)
    t = hooks.fire(rec("UNCERTAIN"))
    assert t.is_alive()  # fire returned while the hook still runs: the audio loop goes on at once
    assert hooks.fire(rec("DENIED")) is None  # still running: skipped, not queued
    t.join(10)
    assert "timed out" in caplog.text
    monkeypatch.setenv("HOOK_SLEEP", "0")
    monkeypatch.setenv("HOOK_EXIT", "3")
    Hooks(on_deny=f"{sys.executable} {hook} {tmp_path / 'o.json'}", timeout=30).fire(rec("DENIED")).join(30)
    assert "failed (exit 3)" in caplog.text
    Hooks(on_grant=str(tmp_path / "missing-program")).fire(rec("GRANTED")).join(10)
    assert "could not run" in caplog.text
    assert Hooks(on_grant="x").fire({"decision": "GRANTED"}) is None  # unscored (noise): no hook
    with pytest.raises(ValueError, match="--on-grant"):
        Hooks(on_grant="'unclosed")


def test_a_timed_out_hook_is_killed_with_what_it_started(tmp_path, caplog):
    """--hook-timeout bounds the hook's children too (they share its process group)."""
    started, escaped = tmp_path / "started", tmp_path / "escaped"
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\ntouch {started}\n(sleep 1; touch {escaped}) &\nwait\n")
    script.chmod(0o755)
    t0 = time.monotonic()
    Hooks(on_deny=str(script), timeout=0.3).fire(rec("DENIED")).join(10)
    assert started.exists() and "timed out" in caplog.text  # it ran, and was stopped
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))  # 2 s past when the child would have written
    assert not escaped.exists()


# --- the guided microphone session --------------------------------------------------------------
def phrases(*voices: str, gap: float = 1.0) -> np.ndarray:
    parts = []
    for i, v in enumerate(voices):
        parts += [synth_voice(v, 4.0, seed=i, pauses=False), np.zeros(int(gap * 16000), np.float32)]
    return np.concatenate(parts)


def test_mic_session_prompts_shows_progress_and_stops_when_enough(capsys):
    args = argparse.Namespace(name="alice", seconds=8.0, min_speech=8.0, device=None)
    src = ArraySource(phrases(*["f1"] * 6))
    recs = record_session(args, source=src, out=sys.stdout)
    total = sum(r.speech_seconds for r in recs)
    assert total >= 8.0 and len(recs) < 6  # stopped before the audio ran out
    out = capsys.readouterr().out
    assert "say:" in out and "enough, thank you" in out and "/ 8 s of speech" in out


def test_mic_session_gives_up_with_one_line_when_nobody_speaks():
    args = argparse.Namespace(name="alice", seconds=8.0, min_speech=8.0, device=None)
    quiet = ArraySource(np.zeros(16000 * 5, np.float32))
    with pytest.raises(EnrolmentRefused, match="too little speech: 0.0 s heard"):
        record_session(args, source=quiet, out=sys.stdout)


def test_without_an_audit_log_the_lockout_outlives_the_process(tmp_path, monkeypatch):
    """A script that runs `listen --max-utterances 1` once per attempt meets one count: the state
    is kept in $XDG_STATE_HOME/voicegate/lockout.json when there is no --log."""
    from voicegate.device.lockout import DEFAULT_LOCKOUT_NAME, default_state_dir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_state_dir() == tmp_path / "state" / "voicegate"
    for _ in range(3):  # three processes, one denial each
        Lockout.default(max_failures=3, window_s=60, cooloff_s=300).apply(rec("DENIED"))
    r = rec("GRANTED")
    Lockout.default(max_failures=3, window_s=60, cooloff_s=300).apply(r)
    assert r["decision"] == "DENIED" and r["locked_out"]
    state = tmp_path / "state" / "voicegate" / DEFAULT_LOCKOUT_NAME
    assert state.is_file() and (state.parent.stat().st_mode & 0o777) == 0o700


def test_a_lockout_that_cannot_keep_its_count_refuses_to_start(tmp_path, monkeypatch):
    """A count that is lost at every restart is no lockout (a review got GRANTED after 7 denials
    with the state folder replaced by a file): the door does not start (listen: exit 7)."""
    from voicegate.device.lockout import LockoutStateError

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))  # a file: no folder can be made under it
    with pytest.raises(LockoutStateError, match="cannot keep the lockout state"):
        Lockout.default(max_failures=1, window_s=60, cooloff_s=300)
    (tmp_path / "state.json").mkdir()  # a folder where the state file should be
    with pytest.raises(LockoutStateError):
        Lockout(tmp_path / "state.json", max_failures=1, window_s=60, cooloff_s=300)


def test_a_state_that_cannot_be_saved_while_running_means_no_access(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    lock = Lockout(folder / "lockout.json", max_failures=5, window_s=60, cooloff_s=300)
    (folder / "lockout.json").unlink()
    (folder / "lockout.json").mkdir()  # from now on nothing can be saved there
    r = rec("GRANTED")
    lock.apply(r)
    assert r["decision"] == "DENIED" and lock.unsaved


def test_two_processes_share_one_count(tmp_path):
    """Each decision re-reads the state under a lock (a review's 8 parallel listens counted 2)."""
    path = tmp_path / "lockout.json"
    a = Lockout(path, max_failures=3, window_s=60, cooloff_s=300)
    b = Lockout(path, max_failures=3, window_s=60, cooloff_s=300)
    a.apply(rec("DENIED"))
    b.apply(rec("DENIED"))
    assert a.apply(rec("DENIED"))["event"] == "lockout"
    r = rec("GRANTED")
    b.apply(r)
    assert r["decision"] == "DENIED" and r["locked_out"]


def test_a_state_far_in_the_future_is_held_to_the_longest_cool_off(tmp_path):
    from voicegate.device.lockout import LOCKOUT_MAX_COOLOFF_S

    clock = Clock()
    path = tmp_path / "lockout.json"
    path.write_text(json.dumps({"failures": [], "locked_until": clock.t + 9e9, "lockouts": 1}))
    lock = Lockout(path, max_failures=3, window_s=60, cooloff_s=300, clock=clock)
    assert lock.remaining() == pytest.approx(LOCKOUT_MAX_COOLOFF_S)
    clock.t += LOCKOUT_MAX_COOLOFF_S + 1  # an hour later the door opens again (the hold was saved)
    r = rec("GRANTED")
    lock.apply(r)
    assert r["decision"] == "GRANTED", r


def test_a_deeply_nested_lockout_state_is_a_cool_off(tmp_path):
    state = tmp_path / "audit.jsonl.lockout.json"
    state.write_text("[" * 100_000 + "]" * 100_000)
    lock = Lockout.beside(tmp_path / "audit.jsonl", max_failures=3, window_s=60, cooloff_s=300)
    assert lock.remaining() > 0


def test_lockouts_in_a_row_double_the_cool_off_until_someone_is_granted(tmp_path):
    """Someone trying sound after sound (or one recording again and again) waits longer each
    time: 100, 200, 400 s ... at most an hour; a GRANTED outside a lockout starts over."""
    from voicegate.device.lockout import LOCKOUT_MAX_COOLOFF_S

    clock = Clock()
    path = tmp_path / "audit.jsonl.lockout.json"
    lock = Lockout(path, max_failures=2, window_s=60, cooloff_s=100, clock=clock)
    waits = []
    for _ in range(7):
        lock.apply(rec("DENIED"))
        event = lock.apply(rec("DENIED"))
        waits.append(event["cooloff_s"])
        clock.t += lock.remaining() + 1
    assert waits == [100, 200, 400, 800, 1600, 3200, LOCKOUT_MAX_COOLOFF_S]
    again = Lockout(path, max_failures=2, window_s=60, cooloff_s=100, clock=clock)  # a restart keeps the count
    assert again.lockouts == 7 and again.cooloff() == LOCKOUT_MAX_COOLOFF_S
    again.apply(rec("GRANTED"))
    again.apply(rec("DENIED"))
    assert again.apply(rec("DENIED"))["cooloff_s"] == 100


def test_a_state_file_of_an_older_voicegate_has_no_lockout_count(tmp_path):
    path = tmp_path / "audit.jsonl.lockout.json"
    path.write_text(json.dumps({"failures": [], "locked_until": 0.0}))
    lock = Lockout(path, max_failures=2, window_s=60, cooloff_s=100)
    assert lock.lockouts == 0 and lock.remaining() == 0
    path.write_text(json.dumps({"failures": [], "locked_until": 0.0, "lockouts": "7"}))
    assert Lockout(path, max_failures=2, window_s=60, cooloff_s=100).remaining() > 0  # damaged: cool-off


def test_a_relative_xdg_folder_is_ignored_not_taken_from_the_current_folder(tmp_path, monkeypatch):
    from voicegate.device import profiles
    from voicegate.device.lockout import default_state_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", "state")
    monkeypatch.setenv("XDG_DATA_HOME", "./data")
    assert default_state_dir() == tmp_path / ".local" / "state" / "voicegate"
    assert profiles.default_dir() == tmp_path / ".local" / "share" / "voicegate" / "profiles"
    monkeypatch.setenv("XDG_STATE_HOME", "~nosuchuser/s")  # no ~ expansion: relative, ignored (no crash)
    assert default_state_dir() == tmp_path / ".local" / "state" / "voicegate"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "abs"))
    assert default_state_dir() == tmp_path / "abs" / "voicegate"


def test_a_state_folder_made_read_only_is_found_at_the_start(tmp_path):
    """A review made the folder read-only after the first run: 7 denials, then GRANTED."""
    import subprocess
    import sys as _sys

    folder = tmp_path / "s"
    folder.mkdir()
    Lockout(folder / "lockout.json", max_failures=3, window_s=60, cooloff_s=300)
    folder.chmod(0o500)
    try:
        code = ("import sys; from voicegate.device.lockout import Lockout, LockoutStateError\n"
                "try:\n    Lockout(sys.argv[1], max_failures=3, window_s=60, cooloff_s=300)\n"
                "except LockoutStateError:\n    sys.exit(7)\n")
        # as a user without CAP_DAC_OVERRIDE (root ignores folder modes): setpriv if it is there
        prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
        if prefix and subprocess.run(["which", "setpriv"], capture_output=True).returncode != 0:
            pytest.skip("running as root without setpriv: folder modes do not apply")
        r = subprocess.run(prefix + [_sys.executable, "-c", code, str(folder / "lockout.json")])
        assert r.returncode == 7
    finally:
        folder.chmod(0o700)


def test_a_lock_that_cannot_be_taken_means_no_access(tmp_path):
    """A root-owned (or linked) STATE.lock left no lock and no shared count (a code review): the
    door does not start."""
    from voicegate.device.lockout import LockoutStateError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "lockout.json.lock").mkdir()  # cannot be opened as the lock
    with pytest.raises(LockoutStateError):
        Lockout(tmp_path / "a" / "lockout.json", max_failures=3, window_s=60, cooloff_s=300)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "lockout.json.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LockoutStateError):
        Lockout(tmp_path / "b" / "lockout.json", max_failures=3, window_s=60, cooloff_s=300)
    assert not (tmp_path / "elsewhere").exists()  # the link was not followed


def test_a_save_that_fails_mid_run_denies_without_a_cool_off(tmp_path, monkeypatch):
    from voicegate.device import lockout

    lock = Lockout(tmp_path / "lockout.json", max_failures=5, window_s=60, cooloff_s=300)

    def no_room(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lockout.tempfile, "mkstemp", no_room)
    lock.apply(rec("DENIED"))  # counted, but not saved
    assert lock.unsaved and lock.remaining() == 0
    r = rec("GRANTED")
    lock.apply(r)
    assert r["decision"] == "DENIED" and "cannot be saved" in r["reason"]
    monkeypatch.undo()
    r = rec("GRANTED")
    lock.apply(r)  # saved again: the door opens
    assert r["decision"] == "GRANTED" and not lock.unsaved
    assert not list(tmp_path.glob(".lockout.*"))  # no temp file left


def _deny_n(path: str, n: int) -> None:
    lock = Lockout(path, max_failures=1000, window_s=600, cooloff_s=300)
    for _ in range(n):
        lock.apply(rec("DENIED"))


def test_processes_deciding_at_once_lose_no_count(tmp_path):
    """The lock, not only the re-read: 6 processes, 10 denials each, all counted."""
    import multiprocessing

    path = str(tmp_path / "lockout.json")
    Lockout(path, max_failures=1000, window_s=600, cooloff_s=300)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_deny_n, args=(path, 10)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    assert len(json.loads(Path(path).read_text())["failures"]) == 60


def test_a_far_future_state_written_while_running_is_held_and_saved(tmp_path):
    from voicegate.device.lockout import LOCKOUT_MAX_COOLOFF_S

    clock = Clock()
    path = tmp_path / "lockout.json"
    lock = Lockout(path, max_failures=3, window_s=60, cooloff_s=300, clock=clock)
    path.write_text(json.dumps({"failures": [], "locked_until": clock.t + 9e9, "lockouts": 1}))
    lock.apply(rec("DENIED"))
    assert lock.remaining() == pytest.approx(LOCKOUT_MAX_COOLOFF_S)
    assert json.loads(path.read_text())["locked_until"] == pytest.approx(clock.t + LOCKOUT_MAX_COOLOFF_S)


def test_a_zero_cool_off_is_refused():
    with pytest.raises(ValueError):
        Lockout(None, max_failures=3, window_s=60, cooloff_s=0)
