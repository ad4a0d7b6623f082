"""The door's lockout: the count of denied and uncertain decisions that ``listen`` keeps, and
the cool-off it imposes.

After ``max_failures`` DENIED or UNCERTAIN decisions within
``window_s`` seconds (default :data:`LOCKOUT_FAILURES` = 5 in :data:`LOCKOUT_WINDOW_S` = 120 s),
``listen`` stops granting for ``cooloff_s`` (default :data:`LOCKOUT_COOLOFF_S` = 300 s): a
voice that would be GRANTED meanwhile is DENIED with the reason, and the lockout is logged and
recorded in the audit log (``lockout_started``, ``locked_out``). Each lockout in a row (no GRANTED
between them) doubles the cool-off, up to :data:`LOCKOUT_MAX_COOLOFF_S`: listen draws new MC masks
for every decision, so a borderline voice or sound tried again and again must pay for each try.
A GRANTED decision outside a lockout clears the count. Only real
decisions count (not "no speech" noise, which is DENIED without being scored). The state is a
small JSON file beside the audit log (``AUDIT.lockout.json``, written atomically, created on the
first start), so it survives a restart of the service; without ``--log`` it is the per-user
``$XDG_STATE_HOME/voicegate/lockout.json`` (:func:`default_state_dir`), so a script that runs
``listen --max-utterances 1`` once per attempt meets the same count. A state file that is unreadable, malformed (``{}``, NaN times), not a regular file, or
missing beside an audit log that already has records means a full cool-off (fail closed).
``--lockout-after 0`` turns it off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from .policy import DENIED, GRANTED, UNCERTAIN

log = logging.getLogger(__name__)

LOCKOUT_FAILURES = 5
LOCKOUT_WINDOW_S = 120.0
LOCKOUT_COOLOFF_S = 300.0
MAX_LOCKOUT_AFTER = 100  # more tries than this before a lockout is no lockout
DAY_S = 86400.0
LOCKOUT_MAX_COOLOFF_S = 3600.0  # each lockout with no GRANTED since doubles the cool-off, up to this
LOCKOUT_SUFFIX = ".lockout.json"
DEFAULT_LOCKOUT_NAME = "lockout.json"  # in default_state_dir(), when there is no --log


def default_state_dir() -> Path:
    """Where ``listen`` keeps its lockout state without ``--log``: ``$XDG_STATE_HOME/voicegate``
    (default ``~/.local/state/voicegate``), so a new process (``listen --max-utterances 1`` run
    once per attempt by a script) does not start with a clean count."""
    from .xdg import base

    return base("XDG_STATE_HOME") / "voicegate"


class LockoutStateError(OSError):
    """The lockout's count cannot be kept (its folder or file cannot be written): ``listen``
    refuses to start (exit 7), as for an audit log it cannot write. A door whose count is lost
    at every restart has no lockout."""


class Lockout:
    """Counts denied/uncertain decisions; locks granting for a cool-off (see the module doc).

    The state file is read again and written under an exclusive lock (``STATE.lock``) for every
    decision, so two ``listen`` processes on one door (or one per attempt) share one count. A
    state that cannot be saved during a run means no access until it can be (fail closed)."""

    def __init__(self, path: Optional[Path] = None, max_failures: int = LOCKOUT_FAILURES,
                 window_s: float = LOCKOUT_WINDOW_S, cooloff_s: float = LOCKOUT_COOLOFF_S,
                 clock: Callable[[], float] = time.time, audit_path: Optional[Path] = None):
        if not (max_failures >= 1 and window_s > 0 and cooloff_s > 0
                and math.isfinite(window_s) and math.isfinite(cooloff_s)):
            raise ValueError("lockout needs max_failures >= 1, and a finite window_s and cooloff_s > 0")
        self.path = Path(path) if path else None
        self.max_failures, self.window_s, self.cooloff_s = int(max_failures), float(window_s), float(cooloff_s)
        self.clock = clock
        self.audit_path = Path(audit_path) if audit_path else None
        self.failures: list[float] = []  # wall-clock times of recent denied/uncertain decisions
        self.locked_until = 0.0
        self.lockouts = 0  # lockouts in a row with no GRANTED between them (the cool-off doubles)
        self.unsaved = False  # the last change could not be written: no access until it is
        self._lock_failed = False  # STATE.lock could not be opened: no shared count, no access
        with self._locked():
            existed = self.path is not None and os.path.lexists(self.path)
            self._load(first=True)  # a first start writes the file
            if existed and not self.unsaved:
                self._save()  # can it be written? A door finds out at the start, not at a denial
        if self.unsaved:
            raise LockoutStateError(f"cannot keep the lockout state in {self.path}")

    def longest(self) -> float:
        return max(LOCKOUT_MAX_COOLOFF_S, self.cooloff_s)

    def cooloff(self) -> float:
        """The next lockout's cool-off: ``cooloff_s`` doubled for every lockout in a row before it
        (someone trying sound after sound, or one recording again and again, waits longer each
        time), at most LOCKOUT_MAX_COOLOFF_S (or ``cooloff_s`` if that is longer)."""
        return min(self.cooloff_s * 2.0 ** min(self.lockouts, 30), self.longest())

    @classmethod
    def beside(cls, audit_path, **kw) -> "Lockout":
        p = Path(audit_path)
        return cls(p.with_name(p.name + LOCKOUT_SUFFIX), audit_path=p, **kw)

    @classmethod
    def default(cls, **kw) -> "Lockout":
        """The per-user state file (:func:`default_state_dir`), its folder created 0700
        (LockoutStateError if it cannot be)."""
        folder = default_state_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder} is not a folder")
        except OSError as e:
            raise LockoutStateError(f"cannot keep the lockout state in {folder} ({e.strerror or e})") from None
        return cls(folder / DEFAULT_LOCKOUT_NAME, **kw)

    def remaining(self) -> float:
        """Seconds left in the current lockout (0 when not locked)."""
        return max(0.0, self.locked_until - self.clock())

    def apply(self, record: dict) -> Optional[dict]:
        """Update with one decision record (changed in place); return a lockout event or None."""
        with self._locked():
            self._load()  # what other processes on this door counted meanwhile
            if self.unsaved:
                self._save()  # can it be written again? Then this decision is judged normally
            before = (list(self.failures), self.locked_until, self.lockouts)
            event = self._apply(record)
            if self.unsaved or before != (self.failures, self.locked_until, self.lockouts):
                self._save()  # only a change is written (and fsync'd): a plain GRANTED waits for no disk
        return event

    def _apply(self, record: dict) -> Optional[dict]:
        now = self.clock()
        decision = record.get("decision")
        if self.remaining() > 0 or self.unsaved:
            if decision == GRANTED:
                why = ("the lockout state cannot be saved" if self.unsaved and self.remaining() <= 0 else
                       f"locked out for {self.remaining():.0f} s more after {self.max_failures} "
                       f"denied/uncertain in {self.window_s:.0f} s")
                record.update(decision=DENIED, speaker=None, locked_out=True,
                              reason=f"{why} (would have granted: {record.get('reason', '')})")
            return None
        if decision == GRANTED:
            self.failures, self.lockouts = [], 0
            return None
        if decision not in (DENIED, UNCERTAIN):
            return None
        self.failures = [t for t in self.failures if now - t < self.window_s] + [now]
        if len(self.failures) < self.max_failures:
            return None
        cooloff = self.cooloff()
        self.locked_until = now + cooloff
        self.failures = []
        self.lockouts += 1
        again = f" (lockout {self.lockouts} in a row)" if self.lockouts > 1 else ""
        log.info("lockout: %d denied/uncertain within %.0f s%s; no access for %.0f s",
                 self.max_failures, self.window_s, again, cooloff)
        return {"type": "event", "event": "lockout", "cooloff_s": cooloff, "lockouts_in_a_row": self.lockouts,
                "reason": f"{self.max_failures} denied/uncertain within {self.window_s:.0f} s{again}"}

    # -- persistence --------------------------------------------------------------------------
    def _locked(self):
        """An exclusive lock on ``STATE.lock`` (no lock without a state file)."""
        import contextlib
        import fcntl

        if self.path is None:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def held():
            try:  # O_NOFOLLOW: a planted link must not make listen create or open a file elsewhere
                fd = os.open(self.path.with_name(self.path.name + ".lock"),
                             os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except OSError as e:  # no lock, no shared count: no access (listen does not start)
                if not self.unsaved:
                    log.error("%s: cannot lock the lockout state (%s): no access until it can be",
                              self.path, e.strerror or e)
                self.unsaved = True
                self._lock_failed = True
                yield
                return
            self._lock_failed = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

        return held()

    def _load(self, first: bool = False) -> None:
        """Read the state; anything but a well-formed state file means a full cool-off (fail
        closed), except on a first start: no state file and no audit log beside it yet. Once
        this process has seen the file, a missing one was deleted: a cool-off too."""
        if self.path is None:
            return
        if not os.path.lexists(self.path):
            if not first:
                self._fail_closed("deleted while listen runs")
            elif self.audit_path is not None and self.audit_path.is_file() and self.audit_path.stat().st_size > 0:
                self._fail_closed("missing beside an existing audit log (deleted?)")
            else:
                self._save()  # a first start: from now on the file exists while the log does
            return
        try:
            if self.path.is_symlink() or not self.path.is_file():
                raise ValueError("a link" if self.path.is_symlink() else "not a regular file")
            d = json.loads(self.path.read_text())
            if not isinstance(d, dict) or not isinstance(d.get("failures"), list) or "locked_until" not in d:
                raise ValueError("not a lockout state")
            failures = [float(t) for t in d["failures"]]
            locked_until = float(d["locked_until"])
            if not all(math.isfinite(t) for t in failures + [locked_until]):
                raise ValueError("non-finite times")
            lockouts = d.get("lockouts", 0)  # absent in a state file of an older voicegate
            if type(lockouts) is not int or lockouts < 0:
                raise ValueError("lockouts is not a count")
        except (OSError, ValueError, TypeError, OverflowError, RecursionError) as e:  # "[[[[...", 1e400
            self._fail_closed(f"unreadable ({'nested too deep' if isinstance(e, RecursionError) else e})")
            return
        latest = self.clock() + self.longest()
        held = locked_until > latest  # a clock that ran ahead, or an edit: no lockout is longer than this
        if held:
            log.warning("%s: lockout state ends in %.0f s, more than any cool-off: held to %.0f s",
                        self.path, locked_until - self.clock(), self.longest())
        self.failures, self.locked_until, self.lockouts = failures, min(locked_until, latest), min(lockouts, 64)
        if held:
            self._save()  # held to an hour from now, once: not an hour from every later read

    def _fail_closed(self, why: str) -> None:
        log.warning("%s: lockout state %s: locking out for %.0f s", self.path, why, self.cooloff_s)
        self.failures, self.locked_until, self.lockouts = [], self.clock() + self.cooloff_s, 1
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = json.dumps({"failures": self.failures, "locked_until": self.locked_until,
                           "lockouts": self.lockouts, "max_failures": self.max_failures,
                           "window_s": self.window_s, "cooloff_s": self.cooloff_s})
        tmp = None
        try:
            if self.path.is_dir() and not self.path.is_symlink():  # os.replace would leave tmp behind
                raise OSError(f"{self.path} is a folder")
            fd, tmp = tempfile.mkstemp(prefix=".lockout.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            self.unsaved = self._lock_failed  # saved, but without the lock the count is not shared
        except OSError as e:
            if not self.unsaved:
                log.error("%s: cannot save the lockout state (%s): no access until it can be",
                          self.path, e.strerror or e)
            self.unsaved = True
        finally:  # also when a SIGTERM (KeyboardInterrupt) arrives mid-write: no temp file left
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

