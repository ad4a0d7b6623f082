"""``voicegate listen``: decide every utterance heard on the microphone (or in a replayed file).

The command line around :class:`~voicegate.device.listener.Listener` (the loop: endpointing,
deciding, the audit log, lost audio and device failures; see its module). Every decision is
appended to the audit log (flushed and fsync'd) before it is printed. Ctrl-C or SIGTERM stops it
cleanly (exit 8, never 0) after closing the log; with ``--max-utterances N`` the N-th decision is
the exit code (0 only for GRANTED). Exit codes: ``LISTEN_EXIT_CODES_HELP`` in
:mod:`~voicegate.device.contract`.

sounddevice is imported only when the microphone source opens (never for ``--from-file``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Callable, Optional

from .audio import AudioError
from .audit import AuditError, AuditLog
from .contract import (
    EXIT_AUDIO,
    EXIT_AUDIT,
    EXIT_DEVICE,
    EXIT_INFO,
    EXIT_MODEL,
    EXIT_STOPPED,
    EXIT_USAGE,
    LISTEN_EXIT_CODES_HELP,
)
from .listener import DECISIONS, Listener, format_line  # noqa: F401  (DECISIONS: re-exported)
from .door import add_door_arguments, door_from_args, hook_problem
from .lockout import LockoutStateError
from .identify import add_profile_arguments, demo_problem
from .options import add_model_arguments, load_gate, one_line, quiet_stderr, write_line
from .policy import ThresholdError
from .stream import (
    DEFAULT_CHUNK_SAMPLES,
    AudioDeviceError,
    AudioSource,
    FileSource,
    MicrophoneSource,
    list_input_devices,
)

log = logging.getLogger(__name__)


# --- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = LISTEN_EXIT_CODES_HELP
    add_model_arguments(parser)
    add_profile_arguments(parser)  # encoder kind: --profiles DIR / --demo (see identify.py)
    add_door_arguments(parser)  # --on-grant / --on-deny / --hook-timeout / --lockout-* (door.py)
    parser.add_argument("--device", metavar="ID", help="input device: index or part of its name")
    parser.add_argument("--list-devices", action="store_true", help="print the input devices and exit")
    parser.add_argument(
        "--from-file", metavar="WAV", help="replay an audio file through the streaming path instead of a microphone"
    )
    parser.add_argument(
        "--loop", type=int, default=1, metavar="N", help="with --from-file: replay it N times (0 = forever)"
    )
    parser.add_argument(
        "--chunk-samples",
        type=int,
        default=DEFAULT_CHUNK_SAMPLES,
        metavar="N",
        help=f"samples per audio chunk (default {DEFAULT_CHUNK_SAMPLES} = 100 ms)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per decision")
    parser.add_argument("--log", metavar="PATH", help="append every decision to this JSON-lines audit log")
    parser.add_argument(
        "--exit-on-error", action="store_true", help="exit (code 6) when the device fails instead of retrying"
    )
    parser.add_argument(
        "--max-utterances", type=int, metavar="N", help="stop after N decisions and exit with the last one's code: 0 GRANTED, 1 DENIED, 3 UNCERTAIN "
        "(default: run until stopped, exit 8)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicegate listen", description="decide every utterance heard")
    add_arguments(parser)
    return parser


def default_gate_factory(args: argparse.Namespace):
    """The real gate from the command line's model options, warmed up."""
    return load_gate(args, warmup=True, implicit_demo=False)  # a door: enrolled people or --demo


def default_source_factory(args: argparse.Namespace) -> Callable[[], AudioSource]:
    if args.from_file:
        return lambda: FileSource(args.from_file, chunk_samples=args.chunk_samples, loops=args.loop)
    return lambda: MicrophoneSource(device=args.device, chunk_samples=args.chunk_samples).open()


class OutputError(OSError):
    """A decision could not be written to stdout (a full disk, a closed pipe or descriptor)."""


def _error(message: str) -> None:
    print(f"voicegate listen: error: {one_line(message)}", file=sys.stderr)


_ERROR_KINDS = {EXIT_USAGE: "usage", EXIT_AUDIO: "unusable audio", EXIT_MODEL: "model error",
                EXIT_DEVICE: "audio device", EXIT_AUDIT: "audit log"}


def _fail(args, code: int, message: str) -> int:
    """One stderr line; with --json also a JSON object on stdout (as enroll-check does), so a
    caller that reads stdout learns why there is no decision."""
    _error(message)
    if getattr(args, "json", False):
        write_line(json.dumps({"decision": None, "error": _ERROR_KINDS.get(code, "error"), "reason": message,
                               "exit_code": code}))
    return code


def _print_devices() -> int:
    try:
        devices = list_input_devices()
    except AudioDeviceError as e:
        _error(str(e))
        return EXIT_DEVICE
    if not devices:
        _error("no input devices found")
        return EXIT_DEVICE
    for d in devices:
        mark = "*" if d["default"] else " "
        print(f"{mark} {d['index']:>3}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz)")
    return EXIT_INFO  # information, not a decision: never 0


class _SigtermAsInterrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt (so systemd stops it cleanly)."""

    def __enter__(self):
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handler)
        return self

    @staticmethod
    def _handler(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def run(
    args: argparse.Namespace,
    gate_factory: Optional[Callable[[argparse.Namespace], object]] = None,
    source_factory: Optional[Callable[[argparse.Namespace], Callable[[], AudioSource]]] = None,
    **listener_options,
) -> int:
    """The ``listen`` command. The factories are injectable (tests use fake gates and sources)."""
    if args.list_devices:
        return _print_devices()
    for name in ("chunk_samples", "threads"):
        if getattr(args, name) < 1:
            return _fail(args, EXIT_USAGE, f"--{name.replace('_', '-')} must be at least 1")
    if args.loop < 0:
        return _fail(args, EXIT_USAGE, f"--loop must be >= 0, got {args.loop}")
    if args.max_utterances is not None and args.max_utterances < 1:
        return _fail(args, EXIT_USAGE, f"--max-utterances must be >= 1, got {args.max_utterances}")
    if args.log is not None and not args.log.strip():  # an unset variable in a unit file: no silent "no log"
        return _fail(args, EXIT_USAGE, "--log: empty path (leave the option out for no audit log)")
    if args.loop != 1 and not args.from_file:
        return _fail(args, EXIT_USAGE, "--loop needs --from-file")
    if args.from_file is not None and not args.from_file.strip():
        return _fail(args, EXIT_USAGE, "--from-file: empty file name")
    problem = demo_problem(args) or hook_problem(args)
    if problem:
        return _fail(args, EXIT_USAGE, problem)

    audit = None
    with _SigtermAsInterrupt():
        try:
            if args.log:
                try:
                    audit = AuditLog(args.log)
                except OSError as e:
                    return _fail(args, EXIT_AUDIT, f"cannot open the audit log {args.log}: {e.strerror or e}")
            code = _listen(args, audit, gate_factory, source_factory, listener_options)
        except KeyboardInterrupt:  # Ctrl-C while loading the model or opening the source
            code = EXIT_STOPPED
        except BaseException:
            _close_audit(audit, EXIT_AUDIT)  # quietly: the exception is what gets reported
            raise
        return _close_audit(audit, code)


def _listen(args, audit, gate_factory, source_factory, listener_options) -> int:
    try:
        gate = (gate_factory or default_gate_factory)(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except ThresholdError as e:  # out of range, or loosened too far without --unsafe-thresholds
        return _fail(args, EXIT_USAGE, f"bad thresholds: {e}")
    except Exception as e:  # ModelError, or anything else while loading: no model, no gate
        return _fail(args, EXIT_MODEL, str(e) or type(e).__name__)
    try:  # decision ids and the lockout on every decision; the hooks after each record
        gate, hooks = door_from_args(gate, args)
    except LockoutStateError as e:  # a count lost at every restart is no lockout: do not start
        return _fail(args, EXIT_AUDIT, f"{e}: set $XDG_STATE_HOME or --log to a folder this user can write")
    except ValueError as e:
        return _fail(args, EXIT_USAGE, str(e))
    if args.lockout_after == 0:
        print("voicegate listen: warning: --lockout-after 0: no lockout, a voice can be tried without limit",
              file=sys.stderr)
    open_source = (source_factory or default_source_factory)(args)
    try:
        first = open_source()
    except AudioError as e:
        return _fail(args, EXIT_AUDIO, str(e))
    except AudioDeviceError as e:
        return _fail(args, EXIT_DEVICE, str(e))

    def emit(record: dict) -> None:
        if record.get("type") != "decision":
            return
        if not write_line(json.dumps(record) if args.json else format_line(record)):
            # the decision is in the audit log, but nobody was told: no hook, and never exit 0
            raise OutputError(f"cannot write the {record['decision']} decision to stdout: stopping (exit {EXIT_MODEL})")
        hooks.fire(record)  # background thread; never blocks the loop

    listener = Listener(
        gate,
        open_source,
        audit=audit,
        emit=emit,
        exit_on_error=args.exit_on_error,
        max_utterances=args.max_utterances,
        **listener_options,
    )
    try:
        code = listener.run(first)
    except AuditError as e:
        return _fail(args, EXIT_AUDIT, str(e))
    except OutputError as e:
        return _fail(args, EXIT_MODEL, str(e))
    finally:
        hooks.wait()  # the last decision's --on-grant / --on-deny runs before the process exits
    if code in (EXIT_AUDIO, EXIT_DEVICE):
        _fail(args, code, listener.last_error or "the audio source failed")
    log.info("listen stopped: %s", listener.stats.to_dict())
    return code


def _close_audit(audit: Optional[AuditLog], code: int) -> int:
    """Close the audit log; a failure to close is exit 7, printed once (not again after a write)."""
    if audit is None:
        return code
    try:
        audit.close()
    except AuditError as e:
        if code != EXIT_AUDIT:
            _error(str(e))
            return EXIT_AUDIT
    return code


def main(argv=None) -> int:
    """``python -m voicegate.device.listen`` (the same command as ``voicegate listen``)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help: never 0 (see EXIT_INFO); a usage error: 2
        return EXIT_INFO if e.code in (0, None) else EXIT_USAGE
    with quiet_stderr():  # as `voicegate listen`: a lost stderr line changes no exit code
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
