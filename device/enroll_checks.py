"""The checks a ``voicegate enroll`` passes before anything is stored, and the analysis of its
recordings (speech found, clipping, DC offset, SNR; embeddings per stretch of speech).

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .audio import TRIM_HOP, dc_offset, dc_offset_problem, frame_rms_db, load_audio
from .features import INFER_HOP_SECONDS, MAX_READ_SECONDS, frame_windows, spectrogram
from .profiles import ProfileError
from .scoring import centroid, window_embeddings

log = logging.getLogger(__name__)

MIN_SPEECH_SECONDS = 10.0  # speech (after the speech detector) an enrolment needs in all
CLIP_LEVEL = 0.999  # |sample| at or above this is clipped (full scale)
CLIP_WARN_FRACTION = 0.001  # warn when more than 0.1 % of the samples are clipped
MIN_SNR_DB = 12.0  # warn below this estimated SNR (see estimate_snr_db)
EXTEND_MIN_P = 0.5  # a session added to an existing profile must score at least this against it
SEGMENT_WINDOWS = 5  # windows (1 s hop, so about 6 s of speech) per stretch in the agreement check
MIN_NOISE_FRAMES = 50  # non-speech frames (10 ms) needed to measure the noise floor directly


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

