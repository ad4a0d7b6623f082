"""The ``voicegate`` console script (and ``python -m voicegate.device``).

This module imports nothing but the standard library, so a Ctrl-C while the command starts up
(numpy and onnxruntime take a few hundred ms to import on a Pi) ends in one line and exit 130,
as a Ctrl-C later does, never in a traceback. For ``listen``, a SIGTERM in that time ends it as
a SIGTERM later does: one line and exit 8 (stopped), which the systemd unit counts as a clean
stop (listen then installs its own handler). Any other command stopped by SIGTERM unwinds as a
Ctrl-C does, so its clean-up runs (``prepare`` and ``train`` remove their half-written cache
folder): one line and exit 143 (128 + SIGTERM, as a shell reports a killed command). The
command itself is :func:`cli.console_main`.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_STOPPED = 8  # contract.EXIT_STOPPED (not imported: contract imports numpy)
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: any other command stopped by SIGTERM


class _Stopped(BaseException):
    """SIGTERM (for ``listen``: before it has installed its own handler)."""


def _stop(signum, frame):
    raise _Stopped


def first_command(argv) -> str | None:
    """The command word of ``argv`` (its first non-option); the CLI's own rule too."""
    return next((a for a in argv if not a.startswith("-")), None)


def console_main() -> None:
    listen = first_command(sys.argv[1:]) == "listen"
    signal.signal(signal.SIGTERM, _stop)
    try:
        from .cli import console_main as run

        run()
    except KeyboardInterrupt:
        print("voicegate: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except _Stopped:
        if listen:
            print("voicegate: stopped (SIGTERM)", file=sys.stderr)
            sys.exit(EXIT_STOPPED)
        print("voicegate: terminated (SIGTERM)", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
