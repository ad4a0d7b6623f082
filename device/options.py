"""Command-line pieces the device commands share: the model and threshold options, and loading
the gate they name.

``cli`` (``enroll-check``) and ``listen`` both import from here, so neither imports the other.
Nothing heavy is imported until :func:`load_gate` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from .policy import MAX_ACCEPT_LOWERING, MAX_LIMIT_RAISE

log = logging.getLogger(__name__)

MAX_DEFAULT_THREADS = 2  # a decision's onnxruntime threads by default (the CLI's --threads)


def default_threads() -> int:
    """The CLI's default onnxruntime threads: 2 where the machine has 2 cores or more, else 1.

    A decision is one short burst of work after the end of speech, so a second thread cuts the
    encoder's share of it (a 3 s attempt on this 2-core machine: MC encoder 3.8 -> 2.3 ms, the
    ensemble's three members 10.5 -> 6.5 ms); more than two threads gain little for a batch of
    two windows and would compete with the audio thread on a 4-core Pi.
    """
    return max(1, min(MAX_DEFAULT_THREADS, os.cpu_count() or 1))


MAX_THREADS = 64  # more onnxruntime threads than this is a typo (--threads 1000 took 15 s a decision)


def number(kind=int, low: float | None = None, high: float | None = None, low_open: bool = False,
           finite: bool = False):
    """An argparse type: a ``kind`` (int or float) within [low, high] (low excluded if
    ``low_open``; inf refused if ``finite``), so a bad value is a one-line usage error (exit 2),
    not a later traceback."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a {'whole ' if kind is int else ''}number: {text!r}") from None
        if kind is float and v != v:
            raise argparse.ArgumentTypeError("not a number: nan")
        if low is not None and (v <= low if low_open else v < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        if finite and abs(v) == float("inf"):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


threads_count = number(int, 1, MAX_THREADS)  # onnxruntime threads
POSITIVE_INT = number(int, 1)
NON_NEGATIVE_INT = number(int, 0)
POSITIVE_FLOAT = number(float, 0.0, low_open=True)
NON_NEGATIVE_FLOAT = number(float, 0.0)
PROBABILITY = number(float, 0.0, 1.0)  # a share or a rate in [0, 1]
FINITE_NON_NEGATIVE = number(float, 0.0, finite=True)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model and threshold options shared by the device commands."""
    p.add_argument("--model", metavar="PATH",
                   help="ONNX model (default: $VOICEGATE_MODEL, else $VOICEGATE_ENCODER, else the shipped encoder)")
    p.add_argument("--method", choices=("mc", "ensemble"),
                   help="MC dropout or deep ensemble: picks the shipped encoder of that kind (the study's "
                        "classifiers only with --model), and must match --model")
    p.add_argument("--accept", type=PROBABILITY, metavar="P",
                   help="override the model's accept threshold on p(allowed)")
    p.add_argument("--uncertainty-limit", type=FINITE_NON_NEGATIVE, metavar="U",
                   help="override the model's uncertainty limit")
    p.add_argument("--deny", type=PROBABILITY, metavar="P",
                   help="override the deny threshold (p(allowed) below it is DENIED even if uncertain)")
    p.add_argument("--unsafe-thresholds", action="store_true",
                   help="allow overrides that loosen the model's thresholds beyond the bounds "
                        f"(accept or deny lower by more than {MAX_ACCEPT_LOWERING:g}, uncertainty "
                        f"limit higher by more than {MAX_LIMIT_RAISE * 100:.0f} %%); always recorded")
    p.add_argument("--threads", type=threads_count, default=default_threads(),
                   help=f"onnxruntime threads (default {default_threads()}: 2 on a machine with 2 cores "
                        "or more, else 1)")


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def one_line(text) -> str:
    """``text`` with control characters escaped: an error about a file named ``a\\nGRANTED`` stays
    one line, and cannot print a line that looks like a decision."""
    return str(text).translate(_CONTROL)


# enroll-check's MC masks: one process decides once, so a fixed seed gives the same masks in
# every run, and the same recording always the same decision (run it again: no new draw).
# listen decides many times in one process and its masks go on changing; its lockout counts
# the attempts. Process-global (onnxruntime's seed): set only by a one-decision command.
ONE_DECISION_SEED = 0


def write_line(text: str) -> bool:
    """Print ``text`` on stdout and flush; False (nothing raised) when stdout cannot be written: a
    full disk, a closed pipe, or no stdout at all (the descriptor was closed at start).
    enroll-check and listen never exit 0 on a decision they could not say."""
    if sys.stdout is None:
        return False
    try:
        print(text, flush=True)
        return True
    except (OSError, ValueError):  # ValueError: a closed file
        return False


class QuietStderr:
    """sys.stderr for the length of a command (:func:`quiet_stderr`): a line that cannot be
    written (a full disk, a closed descriptor) is dropped, never an exception. A warning that
    cannot be said must not change an exit code, nor make ``enroll`` report failure for a profile
    it has written."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text) if self.stream is not None else len(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self):
        try:
            if self.stream is not None:
                self.stream.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):  # fileno, isatty, encoding, ...
        return getattr(self.stream, name)


@contextlib.contextmanager
def quiet_stderr():
    """Run a command with :class:`QuietStderr` as sys.stderr (restored after it)."""
    saved = sys.stderr
    if not isinstance(saved, QuietStderr):
        sys.stderr = QuietStderr(saved)
    try:
        yield
    finally:
        sys.stderr = saved


def load_gate(args: argparse.Namespace, warmup: bool = False, implicit_demo: bool = True,
              seed: int | None = None):
    """The gate the command line's model options name (raises ModelError, ThresholdError, ...).

    Overrides that loosen the model's validated thresholds are said on stderr (one line). An
    encoder-kind model decides by name against the enrolled profiles (``identify``);
    ``implicit_demo=False`` (the door) never falls back to the demo household. ``seed``: the MC
    masks' seed (:data:`ONE_DECISION_SEED` for enroll-check; None: a new draw every process).
    """
    from .identify import load_profile_gate, wants_encoder
    from .runtime import Gate

    if wants_encoder(args):
        gate = load_profile_gate(args, warmup, implicit_demo, seed=seed)
        warn_loosened(gate.encoder)
        return gate
    gate = Gate.load(
        args.model,
        method=args.method,
        accept=args.accept,
        uncertainty_limit=args.uncertainty_limit,
        deny=args.deny,
        threads=args.threads,
        unsafe_thresholds=getattr(args, "unsafe_thresholds", False),
        seed=seed,
    )
    warn_loosened(gate)
    warn_classifier(gate, named_by_environment=not args.model)
    if warmup:
        gate.warmup()
    return gate


def warn_classifier(gate, named_by_environment: bool) -> None:
    """One stderr line when one of the study's classifiers decides because $VOICEGATE_MODEL names
    it, or where people are enrolled: it lets in the speakers baked into its weights (public
    recordings for the shipped ones), whoever is enrolled, so a variable left pointing at one is
    seen. ``--model CLASSIFIER`` on a machine where nobody is enrolled is the study: no line."""
    from .profiles import ProfileStore

    try:
        enrolled_here = os.path.lexists(ProfileStore(None).root)
    except Exception:  # noqa: BLE001 (no home folder: nothing enrolled to say it about)
        enrolled_here = False
    if named_by_environment or enrolled_here:
        print(f"voicegate: warning: {gate.path.name} is a classifier of the study: it lets in the "
              "speakers baked into its weights, not the people enrolled with voicegate enroll",
              file=sys.stderr)


def warn_loosened(gate) -> None:
    """One stderr line when the gate's thresholds are looser than its model's validated ones."""
    loosened = getattr(gate, "thresholds_loosened", None)
    if loosened:
        print("voicegate: warning: thresholds looser than the model's validated operating point: "
              + "; ".join(loosened) + " (recorded in every decision)", file=sys.stderr)

