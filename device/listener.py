"""The listen loop: endpoint a live (or replayed) audio stream and decide every utterance.

A source (microphone, or a file replayed through the same streaming path) yields 16 kHz mono
chunks; the :class:`~voicegate.device.stream.Endpointer` cuts utterances; the gate decides each
one; every decision is appended to the audit log (flushed and fsync'd) before it is emitted. It
fails closed: an utterance the gate cannot decide (unusable audio, any error) is DENIED with the
reason (one in which the featurizer finds no speech gets no decision, only a ``no_speech`` event), and an utterance cut short by a failing device is DENIED too. So is an utterance with
audio lost in it (the microphone queue overflowed, or PortAudio flagged a block): its record
says ``audio_lost: true`` and why, and the gate never sees the gapped audio. A device that fails
mid-stream is reopened with exponential back-off (unless ``exit_on_error``).

The ``voicegate listen`` command around it is :mod:`voicegate.device.listen`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from .audio import SAMPLE_RATE, AudioError, NoSpeechError
from .audit import AuditLog, stamped
from .contract import DECISION_EXIT, EXIT_AUDIO, EXIT_DENIED, EXIT_DEVICE, EXIT_STOPPED
from .door import new_decision_id
from .options import one_line
from .policy import DENIED, GRANTED, UNCERTAIN
from .stream import AudioSource, Endpointer, Utterance

log = logging.getLogger(__name__)

DECISIONS = (GRANTED, DENIED, UNCERTAIN)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
GAP_MEMORY_SECONDS = 5.0  # lost audio this far behind, outside speech, is past any pre-roll or VAD lag


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
    audio_lost: int = 0  # utterances denied because audio was lost in them
    exit_code: int = EXIT_STOPPED
    last_decision: Optional[str] = None

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
        self._fed = 0  # samples fed to the endpointer (its utterances' sample coordinates)
        self._gaps: list[tuple[int, int, int, int]] = []  # lost audio: (start, end, dropped, flags)
        self._loss_source, self._loss_seen = None, (0, 0)
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
            code = EXIT_STOPPED
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
                            return self._reached_code()
                    return EXIT_STOPPED
                except AudioError as e:  # the input itself is unusable: retrying cannot help
                    self._source_failed(e, final=True)  # the command says why, in one line
                    return EXIT_AUDIO
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:  # the device failed (or vanished) mid-stream
                    self._source_failed(e)  # denies the utterance in progress: a decision
                    if self._reached():
                        return self._reached_code()
                    if self.exit_on_error or getattr(e, "permanent", False):
                        return EXIT_DEVICE
                    if not self._reopen():
                        return EXIT_DEVICE
                    break
                self._delays = None
                self._check_drops()
                self._note_loss(len(chunk))
                for utt in self.endpointer.feed(chunk):
                    if self._decide(utt):
                        return self._reached_code()

    def _reached(self) -> bool:
        return self.max_utterances is not None and self.stats.decisions >= self.max_utterances

    def _reached_code(self) -> int:
        """At ``max_utterances``: the last decision's exit code (0 only for GRANTED)."""
        return DECISION_EXIT.get(self.stats.last_decision, EXIT_DENIED)

    def _decide(self, utt: Utterance) -> bool:
        """Decide one utterance and record it; True once ``max_utterances`` is reached."""
        t0 = time.perf_counter()
        try:
            lost = self._lost(utt)
            if lost:  # never decide on audio with a gap in it
                self.stats.audio_lost += 1
                log.warning("denying the utterance %.2f-%.2f s: %s", utt.start_s, utt.end_s, lost)
                record = denied_record(lost, gate=self.gate)
            else:
                # the endpointer's frame probabilities: the detector does not run twice
                record = decision_record(self.gate.decide_audio(utt.audio, speech_probs=utt.probs))
        except (KeyboardInterrupt, SystemExit):
            raise
        except NoSpeechError as e:  # not speech after all: no decision (nothing opens), an event
            log.info("no decision on %.2f-%.2f s: %s", utt.start_s, utt.end_s, e)
            self._event("no_speech", utt_start_s=round(utt.start_s, 3), utt_end_s=round(utt.end_s, 3),
                        reason=str(e))
            return False
        except AudioError as e:
            record = denied_record(f"unusable audio: {e}", gate=self.gate)
        except Exception as e:  # fail closed on anything the gate throws
            log.error("the gate failed on an utterance; denying it: %s", one_line(f"{type(e).__name__}: {e}"))
            log.debug("the gate's failure", exc_info=True)
            record = denied_record(f"gate error: {type(e).__name__}: {e}", gate=self.gate)
        if record.get("latency_ms") is None:
            record["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        self._record(record, utt)
        return self._reached()

    def _record(self, record: dict, utt: Optional[Utterance]) -> dict:
        record = {"type": "decision", **record}
        record.setdefault("decision_id", new_decision_id())  # every decision has one (DoorGate's, or here)
        if utt is not None:
            record.update(
                utt_start_s=round(utt.start_s, 3),
                utt_end_s=round(utt.end_s, 3),
                utt_cut=utt.cut,
                voiced_s=round(utt.voiced_seconds, 2),
            )
            record["audio_lost"] = self._lost(utt) is not None
            self._gaps = [g for g in self._gaps if g[1] > utt.end_sample]  # later ones may still count
        record["dropped_chunks"] = self.dropped
        record = self._write(record)
        self.stats.decisions += 1
        self.stats.counts[record["decision"]] = self.stats.counts.get(record["decision"], 0) + 1
        self.stats.last_decision = record["decision"]
        self.emit(record)
        return record

    def _write(self, record: dict) -> dict:
        loosened = getattr(self.gate, "thresholds_loosened", None)
        if loosened is not None:  # a looser-than-validated override is in every record
            record.setdefault("thresholds_loosened", list(loosened))
        if self.audit is not None:
            return self.audit.write(record)
        return stamped(record)

    def _event(self, event: str, **fields) -> None:
        self._write({"type": "event", "event": event, "dropped_chunks": self.dropped, **fields})

    def _note_loss(self, n: int) -> None:
        """Before feeding an ``n``-sample chunk: note audio the source lost since the last one.

        Dropped chunks sit just before this chunk; a PortAudio status flag is on some block
        still queued, so the gap is placed anywhere from here to the end of the queue.
        """
        src = self._source
        if src is not self._loss_source:
            self._loss_source, self._loss_seen = src, (0, 0)
        now = (int(getattr(src, "dropped", 0)), int(getattr(src, "status_flags", 0)))
        dropped, flags = now[0] - self._loss_seen[0], now[1] - self._loss_seen[1]
        self._loss_seen = now
        if dropped > 0 or flags > 0:
            queued = len(getattr(src, "queue", ())) * int(getattr(src, "chunk_samples", n))
            self._gaps.append((self._fed, self._fed + n + queued, dropped, flags))
        self._fed += n
        if not self.endpointer.in_speech:  # forget gaps no utterance can reach any more
            self._gaps = [g for g in self._gaps if g[1] >= self._fed - GAP_MEMORY_SECONDS * SAMPLE_RATE]

    def _lost(self, utt: Utterance) -> Optional[str]:
        """Why audio is missing from ``utt`` (None if nothing was lost in it)."""
        hits = [g for g in self._gaps if g[0] <= utt.end_sample and g[1] >= utt.start_sample]
        if not hits:
            return None
        dropped, flags = sum(g[2] for g in hits), sum(g[3] for g in hits)
        return (f"audio lost in the utterance ({dropped} chunk(s) dropped by a full queue, "
                f"{flags} PortAudio status flag(s)): not decided")

    def _deny_in_progress(self, reason: str) -> None:
        utt = self.endpointer.abort()
        if utt is not None:
            log.warning("denying the utterance in progress (%.2f-%.2f s): %s", utt.start_s, utt.end_s, reason)
            self._record(denied_record(reason, gate=self.gate), utt)

    def _source_failed(self, e: BaseException, final: bool = False) -> None:
        self.stats.source_errors += 1
        name = getattr(self._source, "name", "source")
        self.last_error = str(e) or type(e).__name__
        (log.info if final else log.error)("audio source %s failed: %s", name, e)
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
    d.pop("exit_code", None)  # enroll-check's mapping; listen's exit code is its last decision's at most
    if d.get("decision") not in DECISIONS:
        d["reason"] = f"gate returned an invalid decision {d.get('decision')!r}"
        d["decision"] = DENIED
    return d


def denied_record(reason: str, gate=None) -> dict:
    """An utterance denied without a score (lost audio, unusable audio, a failing gate): a
    decision like any other, given its id by :meth:`Listener._record` (the audit log, the
    on-deny hook), which the lockout does not count (nobody's voice was judged)."""
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

    who = f"{record['decision']} as {record['speaker']}" if record.get("speaker") else record["decision"]
    line = (
        f"[{num('utt_start_s', '.2f')}-{num('utt_end_s', '.2f')}s] {who:<9} "
        f"p_allow={num('p_allow', '.3f')} uncertainty={num('uncertainty', '.3f')} "
        f"windows={record.get('windows', '-')} latency={num('latency_ms', '.0f')} ms"
    )
    if record.get("reason"):
        line += f"  ({record['reason']})"
    return line
