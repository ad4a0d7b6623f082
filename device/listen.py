"""``voicegate listen``: endpoint a live (or replayed) audio stream and decide every utterance.

The loop: a source (microphone, or a file replayed through the same streaming path) yields
16 kHz mono chunks; the :class:`~voicegate.device.stream.Endpointer` cuts utterances; the gate
decides each one; every decision is appended to the audit log (flushed and fsync'd) before it
is printed. It fails closed: an utterance the gate cannot decide (unusable audio, any error) is
DENIED with the reason, and an utterance cut short by a failing device is DENIED too. A device
that fails mid-stream is reopened with exponential back-off (unless ``--exit-on-error``).
Ctrl-C or SIGTERM stops it cleanly (exit 0) after closing the log.

sounddevice is imported only when the microphone source opens (never for ``--from-file``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from .audio import AudioError
from .audit import AuditError, AuditLog, stamped
from .contract import (
    EXIT_AUDIO,
    EXIT_AUDIT,
    EXIT_DEVICE,
    EXIT_INFO,
    EXIT_MODEL,
    EXIT_USAGE,
    LISTEN_EXIT_CODES_HELP,
)
from .options import add_model_arguments, load_gate
from .policy import DENIED, GRANTED, UNCERTAIN
from .stream import (
    DEFAULT_CHUNK_SAMPLES,
    AudioDeviceError,
    AudioSource,
    Endpointer,
    FileSource,
    MicrophoneSource,
    Utterance,
    list_input_devices,
)

log = logging.getLogger(__name__)

EXIT_OK = 0  # stopped cleanly: end of the replayed file, --max-utterances, Ctrl-C or SIGTERM

DECISIONS = (GRANTED, DENIED, UNCERTAIN)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0


# --- the loop ----------------------------------------------------------------------------------
@dataclass
class Backoff:
    """Exponential back-off between attempts to reopen a failed source."""

    initial: float = BACKOFF_INITIAL_S
    maximum: float = BACKOFF_MAX_S
    factor: float = 2.0

    def delays(self):
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


@dataclass
class ListenStats:
    decisions: int = 0
    counts: dict = field(default_factory=lambda: {d: 0 for d in DECISIONS})
    source_errors: int = 0
    reopens: int = 0
    dropped_chunks: int = 0  # over every source opened so far
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict:
        return asdict(self)


class Listener:
    """Runs the listen loop: source -> endpointer -> gate -> audit log -> output.

    ``open_source()`` returns a new :class:`AudioSource` (called again to reopen after a
    failure); ``gate`` is anything with ``decide_audio(audio) -> Decision``. ``emit`` receives
    every record after it is in the audit log. ``sleep`` is injectable for back-off tests.
    """

    def __init__(
        self,
        gate,
        open_source: Callable[[], AudioSource],
        audit: Optional[AuditLog] = None,
        emit: Optional[Callable[[dict], None]] = None,
        endpointer: Optional[Endpointer] = None,
        exit_on_error: bool = False,
        max_utterances: Optional[int] = None,
        backoff: Optional[Backoff] = None,
        sleep: Callable[[float], None] = time.sleep,
        max_reopen_attempts: Optional[int] = None,
    ):
        self.gate = gate
        self.open_source = open_source
        self.audit = audit
        self.emit = emit or (lambda record: None)
        self.endpointer = endpointer or Endpointer()
        self.exit_on_error = exit_on_error
        self.max_utterances = max_utterances
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.max_reopen_attempts = max_reopen_attempts
        self.stats = ListenStats()
        self._dropped_before = 0  # drops of sources already closed
        self._source: Optional[AudioSource] = None
        self._warned_drops = 0
        self._last_drop_warning = -1e9
        self._delays = None  # back-off in progress; reset once a reopened source delivers
        self.last_error: Optional[str] = None  # the last source failure, for the final message

    # -- public --------------------------------------------------------------------------------
    def run(self, source: Optional[AudioSource] = None) -> int:
        """Listen until the stream ends, ``max_utterances``, a fatal error or an interrupt.

        ``source`` is an already opened first source (else ``open_source()`` is called, and a
        failure to open it raises: a device that never worked is a configuration error).
        """
        self._source = source if source is not None else self.open_source()
        try:
            code = self._loop()
        except KeyboardInterrupt:
            log.info("interrupted: stopping")
            self._deny_in_progress("listen stopped mid-utterance")
            code = EXIT_OK
        finally:
            self._close_source()
        self.stats.exit_code = code
        return code

    @property
    def dropped(self) -> int:
        src = self._source
        return self._dropped_before + (int(getattr(src, "dropped", 0)) if src is not None else 0)

    # -- internals -------------------------------------------------------------------------------
    def _loop(self) -> int:
        while True:
            chunks = iter(self._source)
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    for utt in self.endpointer.flush():
                        if self._decide(utt):
                            return EXIT_OK
                    return EXIT_OK
                except AudioError as e:  # the input itself is unusable: retrying cannot help
                    self._source_failed(e)
                    return EXIT_AUDIO
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:  # the device failed (or vanished) mid-stream
                    self._source_failed(e)
                    if self.exit_on_error or getattr(e, "permanent", False):
                        return EXIT_DEVICE
                    if not self._reopen():
                        return EXIT_DEVICE
                    break
                self._delays = None
                self._check_drops()
                for utt in self.endpointer.feed(chunk):
                    if self._decide(utt):
                        return EXIT_OK

    def _decide(self, utt: Utterance) -> bool:
        """Decide one utterance and record it; True once ``max_utterances`` is reached."""
        t0 = time.perf_counter()
        try:
            result = self.gate.decide_audio(utt.audio)
            record = decision_record(result)
        except (KeyboardInterrupt, SystemExit):
            raise
        except AudioError as e:
            record = denied_record(f"unusable audio: {e}", gate=self.gate)
        except Exception as e:  # fail closed on anything the gate throws
            log.exception("the gate failed on an utterance; denying it")
            record = denied_record(f"gate error: {type(e).__name__}: {e}", gate=self.gate)
        if record.get("latency_ms") is None:
            record["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        self._record(record, utt)
        return self.max_utterances is not None and self.stats.decisions >= self.max_utterances

    def _record(self, record: dict, utt: Optional[Utterance]) -> dict:
        record = {"type": "decision", **record}
        if utt is not None:
            record.update(
                utt_start_s=round(utt.start_s, 3),
                utt_end_s=round(utt.end_s, 3),
                utt_cut=utt.cut,
                voiced_s=round(utt.voiced_seconds, 2),
            )
        record["dropped_chunks"] = self.dropped
        record = self._write(record)
        self.stats.decisions += 1
        self.stats.counts[record["decision"]] = self.stats.counts.get(record["decision"], 0) + 1
        self.emit(record)
        return record

    def _write(self, record: dict) -> dict:
        if self.audit is not None:
            return self.audit.write(record)
        return stamped(record)

    def _event(self, event: str, **fields) -> None:
        self._write({"type": "event", "event": event, "dropped_chunks": self.dropped, **fields})

    def _deny_in_progress(self, reason: str) -> None:
        utt = self.endpointer.abort()
        if utt is not None:
            log.warning("denying the utterance in progress (%.2f-%.2f s): %s", utt.start_s, utt.end_s, reason)
            self._record(denied_record(reason, gate=self.gate), utt)

    def _source_failed(self, e: BaseException) -> None:
        self.stats.source_errors += 1
        name = getattr(self._source, "name", "source")
        self.last_error = str(e) or type(e).__name__
        log.error("audio source %s failed: %s", name, e)
        self._deny_in_progress(f"audio source failed mid-utterance: {e}")
        self._event("source_error", source=name, error=f"{type(e).__name__}: {e}")
        self._close_source()

    def _reopen(self) -> bool:
        """Reopen the source with back-off; False if that is hopeless or attempts ran out."""
        if self._delays is None:
            self._delays = self.backoff.delays()
        for attempt, delay in enumerate(self._delays, 1):
            if self.max_reopen_attempts is not None and attempt > self.max_reopen_attempts:
                log.error("giving up after %d attempts to reopen the audio source", attempt - 1)
                return False
            log.warning("reopening the audio source in %.1f s (attempt %d)", delay, attempt)
            self.sleep(delay)
            try:
                self._source = self.open_source()
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                self.last_error = str(e) or type(e).__name__
                if isinstance(e, AudioError) or getattr(e, "permanent", False):
                    log.error("cannot reopen the audio source: %s", e)
                    return False
                log.warning("reopening the audio source failed: %s", e)
                continue
            self.stats.reopens += 1
            self._event("source_reopened", source=getattr(self._source, "name", "source"), attempt=attempt)
            log.info("audio source reopened after %d attempt(s)", attempt)
            return True
        return False  # pragma: no cover - delays() is infinite

    def _close_source(self) -> None:
        src, self._source = self._source, None
        if src is None:
            return
        self._dropped_before += int(getattr(src, "dropped", 0))
        try:
            src.close()
        except Exception as e:
            log.debug("closing the audio source: %s", e)
        self.stats.dropped_chunks = self._dropped_before

    def _check_drops(self) -> None:
        dropped = self.dropped
        self.stats.dropped_chunks = dropped
        if dropped > self._warned_drops:
            now = time.monotonic()
            if now - self._last_drop_warning >= 1.0:
                log.warning(
                    "audio queue full (decisions too slow): dropped %d oldest chunk(s), %d in all",
                    dropped - self._warned_drops,
                    dropped,
                )
                self._warned_drops = dropped
                self._last_drop_warning = now


def decision_record(result) -> dict:
    """A gate Decision (or dict) as a plain record; an invalid decision becomes DENIED."""
    if hasattr(result, "to_dict"):
        d = dict(result.to_dict())
    elif isinstance(result, dict):
        d = dict(result)
    else:
        d = dict(vars(result))
    d.pop("exit_code", None)  # enroll-check's mapping; listen's exit code is not per decision
    if d.get("decision") not in DECISIONS:
        d["reason"] = f"gate returned an invalid decision {d.get('decision')!r}"
        d["decision"] = DENIED
    return d


def denied_record(reason: str, gate=None) -> dict:
    return {
        "decision": DENIED,
        "p_allow": None,
        "uncertainty": None,
        "windows": 0,
        "method": getattr(gate, "method", None),
        "model_sha256": getattr(gate, "sha256", None) or getattr(gate, "model_sha256", None),
        "latency_ms": None,
        "reason": reason,
    }


def format_line(record: dict) -> str:
    """One human-readable line per decision."""
    def num(key: str, fmt: str) -> str:
        v = record.get(key)
        return "-" if v is None else format(v, fmt)

    line = (
        f"[{num('utt_start_s', '.2f')}-{num('utt_end_s', '.2f')}s] {record['decision']:<9} "
        f"p_allow={num('p_allow', '.3f')} uncertainty={num('uncertainty', '.3f')} "
        f"windows={record.get('windows', '-')} latency={num('latency_ms', '.0f')} ms"
    )
    if record.get("reason"):
        line += f"  ({record['reason']})"
    return line


# --- command line ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = LISTEN_EXIT_CODES_HELP
    add_model_arguments(parser)
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
        "--max-utterances", type=int, metavar="N", help="stop after N decisions (default: run until stopped)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicegate listen", description="decide every utterance heard")
    add_arguments(parser)
    return parser


def default_gate_factory(args: argparse.Namespace):
    """The real gate from the command line's model options, warmed up."""
    return load_gate(args, warmup=True)


def default_source_factory(args: argparse.Namespace) -> Callable[[], AudioSource]:
    if args.from_file:
        return lambda: FileSource(args.from_file, chunk_samples=args.chunk_samples, loops=args.loop)
    return lambda: MicrophoneSource(device=args.device, chunk_samples=args.chunk_samples).open()


def _error(message: str) -> None:
    print(f"voicegate listen: error: {message}", file=sys.stderr)


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
    return EXIT_OK


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
            _error(f"--{name.replace('_', '-')} must be at least 1")
            return EXIT_USAGE
    if args.loop < 0 or (args.max_utterances is not None and args.max_utterances < 1):
        _error("--loop must be >= 0 and --max-utterances >= 1")
        return EXIT_USAGE
    if args.loop != 1 and not args.from_file:
        _error("--loop needs --from-file")
        return EXIT_USAGE

    audit = None
    with _SigtermAsInterrupt():
        try:
            if args.log:
                try:
                    audit = AuditLog(args.log)
                except OSError as e:
                    _error(f"cannot open the audit log {args.log}: {e.strerror or e}")
                    return EXIT_AUDIT
            code = _listen(args, audit, gate_factory, source_factory, listener_options)
        except KeyboardInterrupt:  # Ctrl-C while loading the model or opening the source
            code = EXIT_OK
        except BaseException:
            _close_audit(audit, EXIT_AUDIT)  # quietly: the exception is what gets reported
            raise
        return _close_audit(audit, code)


def _listen(args, audit, gate_factory, source_factory, listener_options) -> int:
    try:
        gate = (gate_factory or default_gate_factory)(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # ModelError, or anything else while loading: no model, no gate
        _error(str(e) or type(e).__name__)
        return EXIT_MODEL
    open_source = (source_factory or default_source_factory)(args)
    try:
        first = open_source()
    except AudioError as e:
        _error(str(e))
        return EXIT_AUDIO
    except AudioDeviceError as e:
        _error(str(e))
        return EXIT_DEVICE

    def emit(record: dict) -> None:
        if record.get("type") != "decision":
            return
        print(json.dumps(record) if args.json else format_line(record), flush=True)

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
        _error(str(e))
        return EXIT_AUDIT
    if code in (EXIT_AUDIO, EXIT_DEVICE):
        _error(listener.last_error or "the audio source failed")
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
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
