"""What ``listen`` does at the door after a decision: the lockout (:mod:`.lockout`) and the
grant/deny hooks.

**Hooks** (:class:`Hooks`): ``--on-grant CMD`` runs CMD when access is granted, ``--on-deny CMD``
when a voice is DENIED or UNCERTAIN (a bell, a notification). CMD is split with ``shlex.split``
and run without a shell (no interpolation of anything); the decision reaches it through the
environment: ``VOICEGATE_DECISION``, ``VOICEGATE_SPEAKER`` (empty unless granted),
``VOICEGATE_SCORE`` (p_allow), ``VOICEGATE_UNCERTAINTY``, ``VOICEGATE_DECISION_ID`` (also in the
audit log), ``VOICEGATE_TS``. It runs in a background thread, in its own process group, with a
timeout (default :data:`HOOK_TIMEOUT_S`) after which the hook and every process it started are
killed; its failure or timeout is logged, and it never blocks the audio loop:
while one run of a hook is still going, a new event for it is skipped (logged), never queued.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from typing import Optional

from .lockout import DAY_S, LOCKOUT_COOLOFF_S, LOCKOUT_FAILURES, LOCKOUT_WINDOW_S, MAX_LOCKOUT_AFTER, Lockout
from .options import number
from .policy import DENIED, GRANTED, UNCERTAIN

log = logging.getLogger(__name__)

HOOK_TIMEOUT_S = 10.0


def new_decision_id() -> str:
    return uuid.uuid4().hex


def hook_env(record: dict) -> dict:
    """The environment a hook runs with: this process's plus the VOICEGATE_* decision fields."""
    def text(v) -> str:
        return "" if v is None else str(v)

    env = dict(os.environ)
    env.update(
        VOICEGATE_DECISION=text(record.get("decision")),
        VOICEGATE_SPEAKER=text(record.get("speaker")),
        VOICEGATE_SCORE=text(record.get("p_allow")),
        VOICEGATE_UNCERTAINTY=text(record.get("uncertainty")),
        VOICEGATE_DECISION_ID=text(record.get("decision_id")),
        VOICEGATE_TS=text(record.get("ts")),
    )
    return env


class Hooks:
    """Run --on-grant / --on-deny commands in background threads (see the module doc)."""

    def __init__(self, on_grant: Optional[str] = None, on_deny: Optional[str] = None,
                 timeout: float = HOOK_TIMEOUT_S):
        self.commands = {GRANTED: parse_command(on_grant, "--on-grant"),
                         DENIED: parse_command(on_deny, "--on-deny")}
        self.commands[UNCERTAIN] = self.commands[DENIED]
        self.timeout = float(timeout)
        # the latest hook thread of each kind: a kind starts anew only once its last one ended, so
        # these are all the hooks that may still run
        self._running: dict[str, threading.Thread] = {}

    def __bool__(self) -> bool:
        return any(self.commands.values())

    def fire(self, record: dict) -> Optional[threading.Thread]:
        """Start the hook for this decision record, if any; never blocks, never raises."""
        decision = record.get("decision")
        argv = self.commands.get(decision)
        if not argv or not record.get("decision_id"):  # only scored decisions, not noise
            return None
        kind = "grant" if decision == GRANTED else "deny"
        busy = self._running.get(kind)
        if busy is not None and busy.is_alive():
            log.warning("on-%s hook still running: skipping it for decision %s", kind, record["decision_id"])
            return None
        t = threading.Thread(target=self._run, args=(kind, argv, hook_env(record)),
                             name=f"voicegate-on-{kind}", daemon=True)
        self._running[kind] = t
        t.start()
        return t

    def wait(self) -> None:
        """Wait for every hook still running (each ends within ``timeout``, killed if need be):
        before the process exits, so the last decision's hook (``--max-utterances``) still runs."""
        for t in list(self._running.values()):
            t.join(self.timeout + 5.0)

    def _run(self, kind: str, argv: list, env: dict) -> None:
        """One hook run in its own process group, so a timeout kills what it started too."""
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, shell=False, start_new_session=True)
        except OSError as e:
            log.error("on-%s hook %s could not run: %s", kind, argv[0], e)
            return
        try:
            _, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.error("on-%s hook %s timed out after %.1f s (killed, with what it started)",
                      kind, argv[0], self.timeout)
            return
        if proc.returncode != 0:
            tail = (err or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            log.error("on-%s hook %s failed (exit %d) %s", kind, argv[0], proc.returncode, tail[0][:200])
        else:
            log.info("on-%s hook %s done", kind, argv[0])


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a timed-out hook's process group (the hook and every process it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:  # already gone
        pass
    try:
        proc.communicate(timeout=5.0)
    except subprocess.TimeoutExpired:  # a pipe held open by a process outside the group
        proc.kill()


def parse_command(cmd: Optional[str], flag: str) -> Optional[list]:
    """``shlex.split`` of a hook command (ValueError with the flag's name if it cannot be split)."""
    if not cmd:
        return None
    try:
        argv = shlex.split(cmd)
    except ValueError as e:
        raise ValueError(f"{flag}: cannot split {cmd!r} ({e})") from None
    if not argv:
        raise ValueError(f"{flag}: empty command")
    return argv


class DoorGate:
    """A gate plus the door's rules: every scored decision gets a ``decision_id`` and passes the
    lockout. ``decide_audio`` returns the decision as a record (dict); anything else is the
    wrapped gate's (``method``, ``sha256``, ...)."""

    def __init__(self, gate, lockout: Optional[Lockout] = None):
        self.gate = gate
        self.lockout = lockout

    def __getattr__(self, name):
        return getattr(self.gate, name)

    def decide_audio(self, audio, *a, **kw) -> dict:
        d = self.gate.decide_audio(audio, *a, **kw)
        record = dict(d.to_dict()) if hasattr(d, "to_dict") else dict(d)
        record["decision_id"] = new_decision_id()
        if self.lockout is not None:
            event = self.lockout.apply(record)
            if event is not None:
                record["lockout_started"] = True
                record["lockout_cooloff_s"] = event["cooloff_s"]
                print(f"voicegate listen: lockout: {event['reason']}; no access for "
                      f"{event['cooloff_s']:.0f} s", file=sys.stderr, flush=True)
        return record


def add_door_arguments(p) -> None:
    """listen's --on-grant / --on-deny / --hook-timeout and lockout options."""
    p.add_argument("--on-grant", metavar="CMD",
                   help="run CMD (no shell) when access is granted; the decision is in VOICEGATE_* "
                        "environment variables (VOICEGATE_SPEAKER, VOICEGATE_SCORE, VOICEGATE_DECISION_ID, ...)")
    p.add_argument("--on-deny", metavar="CMD", help="run CMD (no shell) when a voice is DENIED or UNCERTAIN")
    p.add_argument("--hook-timeout", type=number(float, 0.0, 3600.0, low_open=True, finite=True),
                   default=HOOK_TIMEOUT_S, metavar="S",
                   help=f"kill a hook after S seconds (default {HOOK_TIMEOUT_S:.0f})")
    p.add_argument("--lockout-after", type=number(int, 0, MAX_LOCKOUT_AFTER), default=LOCKOUT_FAILURES, metavar="N",
                   help=f"stop granting after N denied/uncertain decisions within --lockout-window "
                        f"(default {LOCKOUT_FAILURES}, at most {MAX_LOCKOUT_AFTER}; 0 turns the lockout off)")
    p.add_argument("--lockout-window", type=number(float, 1.0, DAY_S, finite=True), default=LOCKOUT_WINDOW_S,
                   metavar="S", help=f"the lockout's counting window (default {LOCKOUT_WINDOW_S:.0f} s, 1 s to a day)")
    p.add_argument("--lockout-cooloff", type=number(float, 1.0, DAY_S, finite=True), default=LOCKOUT_COOLOFF_S,
                   metavar="S", help=f"how long a first lockout lasts (default {LOCKOUT_COOLOFF_S:.0f} s; "
                                     "it doubles for lockouts in a row)")


def hook_problem(args) -> str | None:
    """Why the hook options cannot be used (None if they can), said before the model loads: an
    empty command (an unset variable in a unit file), or a program that is not there, would
    leave a door that can never open."""
    import shutil

    for flag, cmd in (("--on-grant", args.on_grant), ("--on-deny", args.on_deny)):
        if cmd is None:
            continue
        try:
            argv = shlex.split(cmd)
        except ValueError as e:
            return f"{flag}: {e}"
        if not argv or not argv[0].strip():
            return f"{flag}: empty command (leave the option out for no hook)"
        program = argv[0]
        found = shutil.which(program) if os.sep not in program else (
            program if os.path.isfile(program) and os.access(program, os.X_OK) else None)
        if found is None:
            return f"{flag}: {program}: no such program (or not executable)"
    return None


def door_from_args(gate, args) -> tuple[DoorGate, Hooks]:
    """(the gate wrapped with the lockout, the hooks) that listen's options ask for (ValueError)."""
    if args.hook_timeout <= 0 or args.lockout_after < 0 or args.lockout_window <= 0 or args.lockout_cooloff < 0:
        raise ValueError("--hook-timeout and --lockout-window must be > 0, --lockout-after and "
                         "--lockout-cooloff >= 0")
    hooks = Hooks(args.on_grant, args.on_deny, timeout=args.hook_timeout)
    lockout = None
    if args.lockout_after > 0:
        kw = dict(max_failures=args.lockout_after, window_s=args.lockout_window, cooloff_s=args.lockout_cooloff)
        lockout = Lockout.beside(args.log, **kw) if getattr(args, "log", None) else Lockout.default(**kw)
    return DoorGate(gate, lockout), hooks
