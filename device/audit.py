"""The gate's audit trail: one JSON object per line, flushed and fsync'd per line.

Every record has ``ts`` (UTC, ISO 8601) and ``type`` ("decision" or "event"). A crash (even
kill -9 or power loss) can leave at most the last line partial: :func:`read_audit_log` skips
it, and :class:`AuditLog` starts a fresh line when it reopens such a file, so the next record
is never glued onto the broken one.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator

from .audio import PathLike

log = logging.getLogger(__name__)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class AuditError(OSError):
    """The audit log cannot be written (the decision it was to record is not durable)."""


class AuditLog:
    """Append-only JSON-lines writer; each ``write`` is durable when it returns."""

    def __init__(self, path: PathLike, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 like the profiles: the log names who came to the door and when (an existing file
        # keeps its mode, so an administrator may share it on purpose)
        if os.path.lexists(self.path) and not self.path.is_file():  # a FIFO would block the open forever,
            # and /dev/full or a folder is no log (nor the place for the lockout state beside it)
            import errno

            raise OSError(errno.EINVAL, "not a regular file", str(self.path))
        self._f = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o600), "ab")
        if self._f.tell() > 0 and not _ends_with_newline(self.path):
            log.warning("%s: last line was partial (a crash?); starting a new line", self.path)
            self._f.write(b"\n")
            self._sync()

    def write(self, record: dict) -> dict:
        """Append ``record`` (with a ``ts``) durably; return it as written (JSON-safe)."""
        record = stamped(record)
        line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        try:
            self._f.write(line.encode("utf-8") + b"\n")
            self._sync()
        except (OSError, ValueError) as e:  # ValueError: the file was closed
            raise AuditError(f"cannot write the audit log {self.path}: {e}") from None
        return record

    def _sync(self) -> None:
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        """Close the file (closed even when this raises AuditError: a failed final flush)."""
        if not self._f.closed:
            try:
                self._f.close()  # flushes whatever a failed write left in the buffer, again
            except OSError as e:
                raise AuditError(f"cannot write the audit log {self.path}: {e}") from None

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stamped(record: dict) -> dict:
    """``record`` with a ``ts`` first, made JSON-safe (numpy scalars unwrapped, NaN -> null)."""
    return jsonable({"ts": utc_now(), **record})


def jsonable(value):
    """A JSON-safe version of ``value``: numpy arrays and scalars as Python values, NaN and
    infinities as null, anything else that JSON has no type for (a Path, ...) as a string."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # a numpy array or scalar
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def iter_audit_log(path: PathLike) -> Iterator[dict]:
    """Yield the records of an audit log, skipping a partial last line.

    A line without its newline at the end of the file is an interrupted write and is skipped
    quietly. A complete line that is not a JSON object (a line cut by an earlier crash and then
    terminated on restart) is skipped with a warning.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                log.info("%s: skipping a partial last line (%d bytes)", path, len(raw))
                break
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError):
                log.warning("%s:%d: skipping a line that is not valid JSON", path, lineno)
                continue
            if isinstance(record, dict):
                yield record
            else:
                log.warning("%s:%d: skipping a line that is not a JSON object", path, lineno)


def read_audit_log(path: PathLike) -> list[dict]:
    """All complete records of an audit log (see :func:`iter_audit_log`)."""
    return list(iter_audit_log(path))
