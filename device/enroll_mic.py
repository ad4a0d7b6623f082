"""``voicegate enroll NAME --mic``: a guided enrolment session through the door's microphone.

The person reads the short phrases it prompts, one at a time. Each phrase they say is cut out
by the same endpointer ``listen`` uses, its speech measured by the device's speech detector, and
a progress bar shows the speech seconds collected of the target (``--seconds``, default
:data:`DEFAULT_SECONDS`; never less than ``--min-speech``). It stops as soon as there is
enough; the recordings then go through the same checks as files (``enroll.enrol``). After
:data:`LISTEN_FACTOR` times the target (plus :data:`LISTEN_SLACK_S`) of listening without
enough speech, it gives up with a one-line error.
"""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from .audio import SAMPLE_RATE
from .enroll import MIC_SECONDS, EnrolmentRefused
from .enroll_checks import Problem, analyse

DEFAULT_SECONDS = MIC_SECONDS  # 30 s of speech: under a minute of reading
MIN_PHRASE_SPEECH_S = 0.5  # an utterance with less speech than this is noise, not a phrase
LISTEN_FACTOR = 4.0
LISTEN_SLACK_S = 30.0
BAR_WIDTH = 30

PHRASES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please open the front door, it is me.",
    "Seven silver spoons lay on the kitchen table.",
    "I would like a cup of hot tea with milk.",
    "The rain in the valley stopped before noon.",
    "My voice is my key to this house.",
    "Yellow boats drift slowly under the old bridge.",
    "Thursday we will visit the museum and the park.",
    "A warm wind carried the smell of fresh bread.",
    "Numbers like four, nine and twenty-three are easy to say.",
)


def progress_bar(done: float, target: float, width: int = BAR_WIDTH) -> str:
    share = 0.0 if target <= 0 else min(1.0, done / target)
    filled = int(round(share * width))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:4.1f} / {target:.0f} s of speech"


def record_session(args, encoder=None, source=None, detector=None, out: Optional[TextIO] = None):
    """Prompt, listen and collect enrolment recordings until there is enough speech.

    ``source`` (an opened AudioSource) and ``detector`` are injectable for tests; by default the
    microphone ``--device`` names (AudioDeviceError, exit 6, if it cannot be opened).
    """
    from .stream import Endpointer, MicrophoneSource

    out = out or sys.stderr
    target = max(float(getattr(args, "seconds", None) or DEFAULT_SECONDS), float(args.min_speech))
    limit = LISTEN_FACTOR * target + LISTEN_SLACK_S
    src = source if source is not None else MicrophoneSource(device=getattr(args, "device", None)).open()
    endpointer = Endpointer()
    recordings, total, heard = [], 0.0, 0.0

    def prompt() -> None:
        phrase = PHRASES[len(recordings) % len(PHRASES)]
        print(f"\n{progress_bar(total, target)}\n  say: \u201c{phrase}\u201d", file=out, flush=True)

    def take(utts) -> bool:
        nonlocal total
        for utt in utts:
            rec = analyse(f"mic phrase {len(recordings) + 1}", utt.audio, detector)
            if rec.speech_seconds < MIN_PHRASE_SPEECH_S:
                continue
            recordings.append(rec)
            total += rec.speech_seconds
            if total >= target:
                print(f"\n{progress_bar(total, target)}  enough, thank you", file=out, flush=True)
                return True
            prompt()
        return False

    print(f"enrolling {args.name}: read each phrase aloud, in your normal voice, "
          f"about {target:.0f} s of speech in all", file=out)
    prompt()
    try:
        for chunk in src:
            heard += chunk.size / SAMPLE_RATE
            if take(endpointer.feed(chunk)):
                return recordings
            if heard > limit:
                break
        if take(endpointer.flush()):
            return recordings
    finally:
        src.close()
    raise EnrolmentRefused([Problem(
        "error", f"too little speech: {total:.1f} s heard in {heard:.0f} s of listening, enrolment "
                 f"needs {target:.0f} s: speak closer to the microphone (voicegate doctor checks it)")])
