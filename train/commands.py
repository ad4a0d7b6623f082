"""CLI commands of the training side, registered into the `voicegate` command.

The device CLI finds this through the ``voicegate.commands`` entry point, so the device
runtime never imports training code. Nothing heavy is imported here: each command's module
is imported only when that command runs, and a missing ``[train]`` extra gives a one-line
error that says what to install.
"""

from __future__ import annotations

import argparse
import importlib

# command name -> (module under voicegate.train, one-line help)
COMMANDS = {
    "prepare": ("data.prepare", "cut a speaker corpus into cached, leak-free spectrogram windows"),
    "train": ("models.trainer", "train a seed or compact CNN (or a deep ensemble of them)"),
    "train-encoder": ("models.encoder_cli", "train the compact CNN as a speaker encoder on every corpus's training speakers"),
    "eval": ("eval.evaluate", "closed-set and open-set security figures for an exported model"),
    "report": ("reports.report", "the study's analyses: eda, uncertainty, interpret, params"),
}


EXIT_FAILED = 1  # a training-side command failed for another reason (README, "Exit codes")


def error_text(e: BaseException) -> str:
    """``e`` as the one line a command prints: an OS error as "PATH: reason" (not Python's
    "[Errno 2] No such file or directory: 'PATH'"), control characters escaped."""
    from voicegate.device.options import one_line

    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
        return one_line(f"{where}: {e.strerror}")
    return one_line(str(e) or type(e).__name__)


def failure_exit(e: BaseException) -> int:
    """The exit code of a training-side command that failed with ``e``: 5 for a model that is
    missing, invalid or modified (as on the device), 2 for a corpus, a run folder or an option
    that cannot be used (CorpusError, ValueError, a missing file), 1 for anything else (a parity
    check that failed, a crash)."""
    from voicegate.device.contract import EXIT_MODEL, EXIT_USAGE, ModelError
    from voicegate.train.data.corpus import CorpusError

    if isinstance(e, ModelError):
        return EXIT_MODEL
    if isinstance(e, (CorpusError, ValueError, FileNotFoundError)):
        return EXIT_USAGE
    return EXIT_FAILED


def out_problem(out) -> str | None:
    """Why ``--out`` cannot be written (None if it can), checked BEFORE the work: a run that
    fails at its last step loses minutes or hours. A name with a suffix (``model.onnx``) is a
    file, its folder must be writable; otherwise a folder. Nothing is left behind: the check
    makes and removes a probe folder in the nearest existing ancestor."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(out).expanduser()
    if path.exists() and not (path.is_dir() or path.is_file()):
        return f"--out {out}: exists and is neither a file nor a folder"
    if path.suffix and path.is_dir():
        return None
    folder = path.parent if path.suffix else path
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"--out {out}: {ancestor} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".voicegate-out-check-", dir=ancestor))
    except OSError as e:
        return f"--out {out}: cannot write in {ancestor} ({e.strerror or e})"
    return None


def lazy_command(package: str, module: str):
    """A `func(args) -> int` that checks ``--out`` (exit 2 if it cannot be written), imports
    `package.module` and calls its `run(args)`."""

    def func(args: argparse.Namespace) -> int:
        out = getattr(args, "out", None)
        problem = out_problem(out) if isinstance(out, str) and out else None
        if problem:
            import sys

            print(f"voicegate {getattr(args, 'command', module.split('.')[-1])}: {problem}", file=sys.stderr)
            return 2
        mod = importlib.import_module(f"{package}.{module}")
        return mod.run(args)

    return func


def add_lazy_commands(subparsers, package: str, commands: dict) -> None:
    for name, (module, help_text) in commands.items():
        mod = importlib.import_module(f"{package}.{module}")
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(func=lazy_command(package, module))


def register(subparsers) -> None:
    add_lazy_commands(subparsers, "voicegate.train", COMMANDS)
