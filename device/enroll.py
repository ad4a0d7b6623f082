"""``voicegate enroll NAME FILE...`` (or ``--mic``): make or extend a person's voice profile.

The path: each recording -> 16 kHz mono -> the speech detector's speech segments -> quality
checks -> spectrogram windows (1 s hop) -> the encoder's (W, S, D) embeddings -> per-window
embeddings (mean over samples, normalised) -> one session added to the profile
(``profiles.py``). Nothing is stored unless every check passes.

Checks, one line each (an **error** always refuses; a **warning** refuses unless ``--force``):
see :mod:`.enroll_checks`.

Exit codes: 0 enrolled, 2 usage, 4 refused or unusable audio, 5 model or profile store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

from .audio import AudioError
from .contract import EXIT_AUDIO, EXIT_DEVICE, EXIT_INFO, EXIT_MODEL, EXIT_USAGE, ModelError
from .enroll_checks import (
    MIN_SPEECH_SECONDS, Problem, disagreement_problems, embed_recordings,
    extension_problems, read_recording, recording_problems, rival_problems,
)
from .policy import ThresholdError
from .profiles import ProfileError, ProfileStore, Session, check_name
from .options import default_threads, one_line, threads_count
from .scoring import normalise

log = logging.getLogger(__name__)

MIC_SECONDS = 30.0  # --mic collects this much speech by default: the 30 s the published figures enrol from
MIN_SPEECH_FLOOR = 2.0  # --min-speech cannot go below this (one window is 2 s)

EXIT_ENROLLED = 0

EXIT_CODES_HELP = f"""\
exit codes:
  0  enrolled (the profile was written)
  {EXIT_USAGE}  usage error (bad command line, bad name)
  {EXIT_AUDIO}  refused: a recording is unusable, too little speech, or a warning without --force
  {EXIT_MODEL}  the encoder model or the profile store cannot be used
  {EXIT_DEVICE}  --mic: the audio device is unavailable
  {EXIT_INFO} --help was printed: nothing was enrolled"""


class EnrolmentRefused(AudioError):
    """Enrolment refused: the one-line problems that stopped it (exit 4)."""

    def __init__(self, problems: list):
        self.problems = problems
        super().__init__(problems[0].message if problems else "enrolment refused")


def enrol(encoder, store: ProfileStore, name: str, recordings: list, replace: bool = False,
          force: bool = False, min_speech: float = MIN_SPEECH_SECONDS, sources: list | None = None):
    """Check the recordings, embed them and add a session to NAME.

    Returns (profile, session, warnings that --force let through); raises EnrolmentRefused.
    """
    check_name(name)
    problems = [p for rec in recordings for p in recording_problems(rec)]
    total = sum(r.speech_seconds for r in recordings)
    if total < min_speech:
        problems.append(Problem("error", f"too little speech: {total:.1f} s found by the speech "
                                f"detector in {len(recordings)} recording(s); enrolment needs at "
                                f"least {min_speech:.0f} s: record more"))
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise EnrolmentRefused(errors + [p for p in problems if p.level != "error"])
    samples, embs, stretches = embed_recordings(encoder, recordings)
    problems += disagreement_problems(embs, stretches, encoder, samples)
    problems += rival_problems(samples, stretches, name, store, encoder)
    problems += extension_problems(samples, stretches, name, store, encoder, replace)
    if problems and not force:
        raise EnrolmentRefused(problems + [Problem("hint", "--force enrols despite warnings")])
    session = Session(normalise(embs).astype(np.float32), total,
                      sources or [r.label for r in recordings])
    profile = store.add_session(name, encoder.sha256, encoder.dim, session, replace=replace)
    return profile, session, problems


# --- command line ------------------------------------------------------------------------------
def _min_speech(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not MIN_SPEECH_FLOOR <= v <= 600:
        raise argparse.ArgumentTypeError(f"must be between {MIN_SPEECH_FLOOR:.0f} and 600 s, got {v}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_CODES_HELP
    parser.add_argument("name", metavar="NAME", help="who is enrolling (letters, digits, _ - .)")
    parser.add_argument("files", metavar="FILE", nargs="*", help="recordings of NAME's voice")
    parser.set_defaults(intermixed_positionals="files")  # FILEs may follow options (cli.OneLineParser)
    parser.add_argument("--mic", action="store_true", help="record from the microphone, guided")
    parser.add_argument("--seconds", type=_min_speech, metavar="S",
                        help=f"--mic: seconds of speech to collect (default {MIC_SECONDS:g}, at least --min-speech; "
                             "speechocean762 EER 8.7 %% from 20 s, 8.1 %% from 30 s)")
    parser.add_argument("--device", metavar="ID", help="--mic: input device, index or part of its name")
    parser.add_argument("--profiles", metavar="DIR",
                        help="the profile store (default: $VOICEGATE_PROFILES, else "
                             "$XDG_DATA_HOME/voicegate/profiles)")
    parser.add_argument("--model", metavar="PATH",
                        help="encoder model (default: $VOICEGATE_MODEL, else $VOICEGATE_ENCODER, else the shipped encoder)")
    parser.add_argument("--replace", action="store_true", help="replace NAME's profile instead of adding")
    parser.add_argument("--force", action="store_true", help="enrol despite warnings (never errors)")
    parser.add_argument("--min-speech", type=_min_speech, default=MIN_SPEECH_SECONDS, metavar="S",
                        help=f"seconds of speech needed (default {MIN_SPEECH_SECONDS:.0f})")
    parser.add_argument("--threads", type=threads_count, default=default_threads(),
                        help=f"onnxruntime threads (default {default_threads()})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _fail(args, code: int, message: str, extra: list | None = None) -> int:
    """One line on stderr, however many problems: the first, then the rest after "; "."""
    print("voicegate enroll: " + "; ".join(one_line(m) for m in [message, *(extra or [])]), file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"enrolled": False, "error": message, "problems": extra or [],
                          "exit_code": code}))
    return code


def run(args: argparse.Namespace) -> int:
    """The ``enroll`` command."""
    try:
        check_name(args.name)
    except ProfileError as e:
        return _fail(args, EXIT_USAGE, str(e))
    if bool(args.files) == bool(args.mic):
        return _fail(args, EXIT_USAGE, "give recordings (FILE...) or --mic, not both or neither")
    if not args.mic and (args.seconds or args.device):
        return _fail(args, EXIT_USAGE, "--seconds and --device go with --mic")
    if any(not f.strip() for f in args.files):  # Path("") is ".": the message would be about a folder
        return _fail(args, EXIT_USAGE, "an empty file name among the recordings")
    try:
        store = ProfileStore(args.profiles)
    except ProfileError as e:  # an empty --profiles or $VOICEGATE_PROFILES: exit 5, as at the door
        return _fail(args, EXIT_MODEL, str(e))
    from .stream import AudioDeviceError

    try:
        from .encoder import Encoder

        encoder = Encoder.load(args.model, threads=max(1, args.threads))
        if args.mic:
            from .enroll_mic import record_session

            recordings = record_session(args, encoder)
        else:
            recordings = [read_recording(f) for f in args.files]
        profile, session, warnings = enrol(encoder, store, args.name, recordings, replace=args.replace,
                                           force=args.force, min_speech=args.min_speech,
                                           sources=["mic"] if args.mic else None)
    except EnrolmentRefused as e:
        lines = [str(p) for p in e.problems]
        return _fail(args, EXIT_AUDIO, f"not enrolled: {args.name}: " + lines[0], lines[1:])
    except (AudioError, ThresholdError) as e:
        return _fail(args, EXIT_AUDIO, f"not enrolled: {e}")
    except ModelError as e:  # the encoder, or the profile store (ProfileError)
        return _fail(args, EXIT_MODEL, f"not enrolled: {e}")
    except AudioDeviceError as e:
        return _fail(args, EXIT_DEVICE, f"not enrolled: {e}")
    if warnings:
        print("voicegate enroll: --force: enrolled anyway despite " + "; ".join(one_line(str(w)) for w in warnings),
              file=sys.stderr)
    result = {"enrolled": True, "name": profile.name, "speech_seconds": round(session.speech_seconds, 2),
              "windows": int(session.embeddings.shape[0]), "recordings": len(recordings),
              "sessions": len(profile.sessions), "total_speech_seconds": round(profile.speech_seconds, 2),
              "profile": str(store.path(profile.name)), "encoder_sha256": encoder.sha256,
              "warnings": [str(w) for w in warnings], "exit_code": EXIT_ENROLLED}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"enrolled {profile.name}: {session.speech_seconds:.1f} s of speech from "
              f"{len(recordings)} recording(s); profile has {len(profile.sessions)} session(s), "
              f"{profile.speech_seconds:.1f} s in all ({store.path(profile.name)})")
    return EXIT_ENROLLED
