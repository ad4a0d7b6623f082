"""``voicegate enroll NAME FILE...`` (or ``--mic``): make or extend a person's voice profile.

The path: each recording -> 16 kHz mono -> the speech detector's speech segments -> quality
checks -> spectrogram windows (1 s hop) -> the encoder's (W, S, D) embeddings -> per-window
embeddings (mean over samples, normalised) -> one session added to the profile
(``profiles.py``). Nothing is stored unless every check passes.

Checks, one line each (an **error** always refuses; a **warning** refuses unless ``--force``):

- error: a recording that cannot be read, or holds no speech;
- error: too little speech in all: less than ``--min-speech`` seconds (default
  :data:`MIN_SPEECH_SECONDS`) found by the speech detector;
- warning: clipping: more than :data:`CLIP_WARN_FRACTION` of a recording's samples at full scale;
- warning: noise: an SNR estimate (speech frames' mean power over the non-speech frames'
  median) below :data:`MIN_SNR_DB`;
- warning: recordings that disagree: a stretch of about :data:`SEGMENT_WINDOWS` s of speech
  whose embedding, scored against the rest with the model's calibration, falls below the deny
  threshold (two voices in one file, or one file of someone else); or, for two voices in about
  equal parts, the speech's two most different groups score below :data:`EXTEND_MIN_P` against
  each other (:func:`split_problems`). Both see only voices the encoder tells apart: on 51
  speakers it never heard, 15 s + 15 s of two people were refused 68 times in 90 (49 by the
  stretch check alone), and 2 of 51 one-person enrolments warned, 6 in the far field
  (``benchmarks/two_voices.py``);
- warning: the new voice already matches another enrolled person (both would become
  UNCERTAIN at the door);
- warning: adding to NAME's existing profile (no ``--replace``), the new speech does not
  match it: its median stretch scores below :data:`EXTEND_MIN_P` (the calibrated even-odds
  point: more likely someone else than NAME), so nobody's voice is slipped into another
  person's profile.

Exit codes: 0 enrolled, 2 usage, 4 refused or unusable audio, 5 model or profile store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field

import numpy as np

from .audio import TRIM_HOP, AudioError, dc_offset, dc_offset_problem, frame_rms_db, load_audio
from .contract import EXIT_AUDIO, EXIT_DEVICE, EXIT_INFO, EXIT_MODEL, EXIT_USAGE, ModelError
from .features import INFER_HOP_SECONDS, MAX_READ_SECONDS, frame_windows, spectrogram
from .policy import ThresholdError
from .profiles import ProfileError, ProfileStore, Session, check_name
from .options import default_threads, one_line, threads_count
from .scoring import centroid, normalise, window_embeddings

log = logging.getLogger(__name__)

MIN_SPEECH_SECONDS = 10.0  # speech (after the speech detector) an enrolment needs in all
MIC_SECONDS = 30.0  # --mic collects this much speech by default: the 30 s the published figures enrol from
MIN_SPEECH_FLOOR = 2.0  # --min-speech cannot go below this (one window is 2 s)
CLIP_LEVEL = 0.999  # |sample| at or above this is clipped (full scale)
CLIP_WARN_FRACTION = 0.001  # warn when more than 0.1 % of the samples are clipped
MIN_SNR_DB = 12.0  # warn below this estimated SNR (see estimate_snr_db)
EXTEND_MIN_P = 0.5  # a session added to an existing profile must score at least this against it
SEGMENT_WINDOWS = 5  # windows (1 s hop, so about 6 s of speech) per stretch in the agreement check
MIN_NOISE_FRAMES = 50  # non-speech frames (10 ms) needed to measure the noise floor directly
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


@dataclass
class Problem:
    level: str  # "error" or "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass
class Recording:
    """One enrolment recording, analysed: its speech and quality figures."""

    label: str
    audio: np.ndarray  # 16 kHz mono
    intervals: list = field(default_factory=list)  # the detector's (padded) speech segments
    speech_seconds: float = 0.0  # speech frames the detector found (unpadded)
    clipped: float = 0.0  # fraction of samples at full scale
    snr_db: float = float("inf")  # estimated with the DC offset removed
    dc_offset: float = 0.0  # the mean sample value (0 for a healthy input)

    @property
    def speech(self) -> np.ndarray:
        if not self.intervals:
            return self.audio[:0]
        return np.concatenate([self.audio[a:b] for a, b in self.intervals])


def find_speech(x: np.ndarray, detector=None) -> tuple[list, float]:
    """(speech segments as [start, end) samples, speech seconds) by the device's speech detector."""
    from .speech import select_speech

    found = select_speech(x, detector)
    return list(found.segments), float(found.speech_seconds)


def estimate_snr_db(x: np.ndarray, intervals) -> float:
    """Speech frames' mean power minus the noise floor, in dB (inf for digital silence).

    On LibriSpeech test-other with tap noise added at 10 dB (0 dB) this reads 10.5-12 (3-4.5);
    the clean files read 16-56.

    The noise floor is the median of the non-speech frames when there are enough of them,
    else the 5th percentile of all frames (a recording that is speech throughout).
    """
    db = frame_rms_db(x)
    centre = np.arange(db.size) * TRIM_HOP  # frame centres
    in_speech = np.zeros(db.size, bool)
    for a, b in intervals:
        in_speech |= (centre >= a) & (centre < b)
    if not in_speech.any():
        return float("-inf")
    speech_level = float(10.0 * np.log10(np.mean(10.0 ** (db[in_speech] / 10.0))))  # mean power
    quiet = db[~in_speech]
    noise = float(np.median(quiet)) if quiet.size >= MIN_NOISE_FRAMES else float(np.percentile(db, 5))
    if noise <= -190.0:  # frame_rms_db's floor: exact digital silence between words
        return float("inf")
    return speech_level - noise


def analyse(label: str, audio: np.ndarray, detector=None) -> Recording:
    x = np.asarray(audio, dtype=np.float32)
    intervals, seconds = find_speech(x, detector) if x.size else ([], 0.0)
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0
    dc = dc_offset(x)
    snr = estimate_snr_db(x - np.float32(dc), intervals) if intervals else 0.0  # an offset is no noise
    return Recording(label, x, intervals, seconds, clipped, snr, dc)


def read_recording(path: str, detector=None) -> Recording:
    return analyse(path, load_audio(path, max_seconds=MAX_READ_SECONDS), detector)


def recording_problems(rec: Recording) -> list[Problem]:
    if not rec.intervals:
        return [Problem("error", f"{rec.label}: no speech found")]
    out = []
    if rec.clipped > CLIP_WARN_FRACTION:
        out.append(Problem("warning", f"{rec.label}: {100 * rec.clipped:.1f}% of the samples are "
                           "clipped (at full scale): lower the gain or move back from the microphone"))
    off_zero = dc_offset_problem(rec.dc_offset)
    if off_zero:
        out.append(Problem("warning", f"{rec.label}: {off_zero}"))
    if rec.snr_db < MIN_SNR_DB:
        out.append(Problem("warning", f"{rec.label}: too much noise (SNR about {rec.snr_db:.0f} dB, "
                           f"want at least {MIN_SNR_DB:.0f} dB): record somewhere quieter"))
    return out


def segments(recordings: list, windows_per: list) -> list[tuple[str, np.ndarray]]:
    """(label, window indices) stretches of about SEGMENT_WINDOWS windows, within recordings."""
    out, start = [], 0
    for rec, n in zip(recordings, windows_per):
        bounds = list(range(0, n, SEGMENT_WINDOWS))
        if len(bounds) > 1 and n - bounds[-1] < (SEGMENT_WINDOWS + 1) // 2:
            bounds.pop()  # a short tail joins the stretch before it
        for i, a in enumerate(bounds):
            b = bounds[i + 1] if i + 1 < len(bounds) else n
            where = rec.label if len(bounds) == 1 else f"{rec.label} (speech {a:.0f}-{b + 1:.0f} s)"
            out.append((where, np.arange(start + a, start + b)))
        start += n
    return out


def door_p(samples: np.ndarray, profile_centroid: np.ndarray, encoder) -> float:
    """p_allow of a stretch as the door scores an utterance (``scoring.score_profiles`` on its
    (W, S, D) embeddings): the calibration is fitted on exactly those per-sample cosines, for MC
    samples and ensemble members alike."""
    centroids = np.asarray(profile_centroid, np.float64)[None]
    return encoder.score(samples, ["profile"], centroids)[0].p_allow


def median_door_p(samples: np.ndarray, stretches: list, profile_centroid: np.ndarray, encoder) -> float:
    """The median over the new speech's stretches of :func:`door_p` against one profile."""
    return float(np.median([door_p(samples[idx], profile_centroid, encoder) for _, idx in stretches]))


def agreement_problems(embs: np.ndarray, stretches: list, encoder, samples: np.ndarray) -> list[Problem]:
    """Stretches of speech whose voice does not match the rest (below the deny threshold).

    ``embs``: (W, D) window embeddings (what the profile stores); ``samples``: the same windows'
    (W, S, D) embeddings, scored against the rest's centroid as the door would (:func:`door_p`).
    """
    if len(stretches) < 2:
        return []
    out = []
    for where, idx in stretches:
        rest = np.setdiff1d(np.arange(embs.shape[0]), idx)
        p = door_p(samples[idx], centroid(embs[rest]), encoder)
        log.info("agreement: %s vs the rest: p %.3f", where, p)
        if p < encoder.thresholds.deny:
            out.append(Problem("warning", f"recordings disagree: {where} does not match the rest "
                               f"(p {p:.2f} < deny {encoder.thresholds.deny:.2f}): two voices, or "
                               "someone else's recording?"))
    return out


def two_groups(embs: np.ndarray, stretches: list, iterations: int = 20):
    """Split the stretches into the two groups of most different voice: spherical 2-means over
    the stretch centroids, seeded with the least similar pair. (group A, group B) lists of
    stretch indices, or None when every stretch lands on one side."""
    c = np.stack([centroid(embs[idx]) for _, idx in stretches])
    i, j = np.unravel_index(np.argmin(c @ c.T), (len(c), len(c)))
    a, b = c[i], c[j]
    labels = None
    for _ in range(iterations):
        new = c @ b > c @ a
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        if labels.all() or not labels.any():
            return None
        a = centroid(np.concatenate([embs[stretches[k][1]] for k in np.flatnonzero(~labels)]))
        b = centroid(np.concatenate([embs[stretches[k][1]] for k in np.flatnonzero(labels)]))
    return list(np.flatnonzero(~labels)), list(np.flatnonzero(labels))


def split_problems(embs: np.ndarray, stretches: list, encoder, samples: np.ndarray) -> list[Problem]:
    """Two voices in about equal parts, which the stretch-against-the-rest check cannot see (the
    rest is half the same voice): the speech split into its two most different groups
    (:func:`two_groups`, each of at least SEGMENT_WINDOWS windows), and each group scored against
    the other as the door would. Below EXTEND_MIN_P both ways (more likely two people than one),
    a warning: the same rule that keeps another voice out of an existing profile."""
    if len(stretches) < 2:
        return []
    groups = two_groups(embs, stretches)
    if groups is None:
        return []
    idx = [np.concatenate([stretches[k][1] for k in g]) for g in groups]
    if min(len(i) for i in idx) < SEGMENT_WINDOWS:
        return []  # one odd stretch: the check against the rest covers it
    p = max(door_p(samples[idx[0]], centroid(embs[idx[1]]), encoder),
            door_p(samples[idx[1]], centroid(embs[idx[0]]), encoder))
    log.info("agreement: the two most different groups of the speech vs each other: p %.3f", p)
    if p >= EXTEND_MIN_P:
        return []
    small = min(groups, key=lambda g: sum(len(stretches[k][1]) for k in g))
    names = list(dict.fromkeys(stretches[k][0].split(" (speech")[0] for k in small))
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return [Problem("warning", f"recordings disagree: the speech falls into two groups that do not "
                    f"match each other (p {p:.2f} < {EXTEND_MIN_P:.2f}; one holds {shown}): "
                    "two voices?")]


def disagreement_problems(embs: np.ndarray, stretches: list, encoder, samples: np.ndarray) -> list[Problem]:
    """Speech that is not all one voice: a stretch against the rest, else the two-group split."""
    return (agreement_problems(embs, stretches, encoder, samples)
            or split_problems(embs, stretches, encoder, samples))


def embed_recordings(encoder, recordings: list) -> tuple[np.ndarray, np.ndarray, list]:
    """The speech of the recordings that have some: (W, S, D) samples, (W, D) window embeddings
    (what a profile stores) and the stretches of :func:`segments`."""
    usable = [r for r in recordings if r.intervals]
    samples, counts = [], []
    for rec in usable:
        windows = frame_windows(rec.speech, INFER_HOP_SECONDS)
        samples.append(encoder.embed(spectrogram(windows), batch=32))  # (W, S, D)
        counts.append(windows.shape[0])
    samples = np.concatenate(samples)
    return samples, window_embeddings(samples), segments(usable, counts)


def rival_problems(samples: np.ndarray, stretches: list, name: str, store, encoder) -> list[Problem]:
    """The new voice already matches another enrolled person (both would be UNCERTAIN).

    Scored as the door would (:func:`door_p`): each stretch of the new speech, its (W, S, D)
    ``samples``, against the other profile's centroid; a warning when the median stretch reaches
    the accept threshold.
    """
    out = []
    for other in store.names():
        if other == name:
            continue
        try:
            prof = store.load(other, encoder.sha256)
        except ProfileError:
            continue  # a stale or broken profile is reported by listen / profiles list
        p = median_door_p(samples, stretches, prof.centroid(), encoder)
        if p >= encoder.thresholds.accept:
            out.append(Problem("warning", f"this voice already matches {other} (p {p:.2f}): "
                               "at the door both would be UNCERTAIN; same person twice?"))
    return out


def extension_problems(samples: np.ndarray, stretches: list, name: str, store, encoder, replace: bool) -> list[Problem]:
    """Adding to NAME's profile: the new speech must sound like NAME (median stretch, door_p)."""
    if replace or name not in store.names():
        return []
    try:
        prof = store.load(name, encoder.sha256)
    except ProfileError:
        return []  # another encoder or a broken profile: add_session refuses it with its reason
    p = median_door_p(samples, stretches, prof.centroid(), encoder)
    log.info("extension: the new speech vs %s's profile: p %.3f", name, p)
    if p < EXTEND_MIN_P:
        return [Problem("warning", f"this voice does not match {name}'s profile (p {p:.2f} < {EXTEND_MIN_P:.2f}): "
                        f"someone else? (--replace starts {name}'s profile again)")]
    return []


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
