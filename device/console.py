"""The ``voicegate`` console script (and ``python -m voicegate.device``).

This module imports nothing but the standard library, so a Ctrl-C while the command starts up
(numpy and onnxruntime take a few hundred ms to import on a Pi) ends in one line and exit 130,
as a Ctrl-C later does, never in a traceback. The command itself is :func:`cli.console_main`.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def console_main() -> None:
    try:
        from .cli import console_main as run
    except KeyboardInterrupt:
        print("voicegate: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    run()
