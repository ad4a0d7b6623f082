"""The enrolment protocol: people the encoder never heard enrol, then attempt and attack the door.

Per corpus (a manifest corpus of ``../shared/data`` or any corpus :func:`load_corpus` reads):

1. **Who.** The allowed speakers and the held-out impostors of the corpus's roles are the people
   enrolled: neither role ever reaches encoder training (:func:`check_unseen` asserts it against
   the training speaker list the model's contract carries, when it carries one). A held-out
   speaker with a single recording cannot both enrol and attempt without pairing a recording with
   itself: it is an *impostor-only* voice (its attempts attack every profile). The not-allowed
   training speakers are not used at all (the encoder may have trained on them).
2. **Enrolment.** An allowed speaker enrols from its train-split recordings (the split training
   used: :func:`~voicegate.train.data.splits.split_recordings` with the preparation seed); a
   held-out speaker from the first half of its recordings (sorted by id). Recordings are taken in
   order, each reduced to its speech by the device's detector, until ``enrol_seconds`` (default
   30 s) of speech; the last one is cut to fit. The profile is the device's
   (:mod:`voicegate.device.scoring`): the normalised mean of the enrolment window embeddings.
3. **Attempts.** Every other recording of an enrolled speaker (allowed: val and test; held-out:
   the second half), and every recording of an impostor-only speaker, is reduced to its speech
   and cut into consecutive 3 s attempts (:func:`~voicegate.train.eval.attempts.cut_attempts`,
   the classifier evaluation's own rule). An attempt the featurizer rejects is a failed attempt.
4. **Trials** (:func:`make_trials`): every attempt against every profile. Same speaker = genuine,
   other speaker = impostor. By construction no attempt comes from a recording its profile was
   enrolled from; :func:`make_trials` asserts it.
5. **Channel.** With a channel (telephone band, cheap microphone, reverberant noisy room, far
   field), every recording, enrolment and attempt alike, goes through that same simulated channel
   first: one door (the same simulated room for the whole corpus), with the noise drawn from a
   seed fixed by (seed, channel, recording). The door enrols through its own microphone.
   ``clean`` is no channel.

The embedder is anything with ``samples``, ``embed(speech) -> (S, D)`` (per-sample utterance
embeddings, L2-normalised) and ``enrol(speech) -> (n, D)`` (enrolment embeddings): the exported
encoder (:class:`OnnxEmbedder`: the device featurizer, encoder and scoring rule) or a peer
(``benchmarks/ge2e_peer.py``). Who enrols, the unseen check and the trials (steps 1 to 4):
:mod:`.enrolment_plan`; figures: :mod:`.enrolment_report`.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from voicegate.device.audio import SAMPLE_RATE, AudioError

from .enrolment_plan import (  # noqa: F401 (re-exported: the protocol's public names live here too)
    ANY_CORPUS,
    ENROLLED_ROLES,
    SPEAKER_LISTS,
    ProtocolError,
    SpeakerPlan,
    Trials,
    check_unseen,
    make_trials,
    plan_speakers,
    training_speakers,
)

log = logging.getLogger(__name__)

ENROL_SECONDS = 30.0  # the most speech a person gives at enrolment
CLEAN = "clean"  # no channel
FAILED_SCORE = -2.0  # the cosine score of an attempt the featurizer rejected (below any cosine)


@dataclass
class ProtocolConfig:
    corpus: str  # corpus folder
    enrol_seconds: float = ENROL_SECONDS
    attempt_seconds: float = 3.0
    min_attempt_seconds: float = 1.0
    split_seed: int = 0  # the preparation seed: which recordings of an allowed speaker are "train"
    split_fractions: tuple = (0.6, 0.2, 0.2)
    channel: str = CLEAN
    seed: int = 0  # channel seeds derive from it
    max_read_seconds: float = 120.0  # decode at most this much of a file
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


# --- embedders ---------------------------------------------------------------------------------
class OnnxEmbedder:
    """An exported encoder (the device's :class:`~voicegate.device.encoder.Encoder`) through the
    device featurizer and the device scoring rule (:mod:`voicegate.device.scoring`).

    ``embed(speech)``: the utterance's (S, D) sample embeddings (per sample, the normalised mean
    over its windows); ``enrol(speech)``: its (W, D) window embeddings (mean over the samples,
    normalised), which is what the device stores at enrolment. ``detector``: the speech detector
    the featurizer uses (None: the device's).
    """

    def __init__(self, path, threads: int = 1, seed: Optional[int] = 0, detector=None):
        from voicegate.device.encoder import Encoder

        self.encoder = Encoder.load(path, threads=threads, seed=seed)
        self.path, self.sha256, self.contract = self.encoder.path, self.encoder.sha256, self.encoder.contract
        self.samples = self.contract.samples
        self.name = self.path.stem
        self.detector = detector

    def windows(self, speech: np.ndarray) -> np.ndarray:
        """(W, S, D) embeddings of the device's windows of ``speech`` (raises AudioError)."""
        from voicegate.device.features import INFER_HOP_SECONDS, featurize

        images = featurize(speech, sample_rate=SAMPLE_RATE, hop_seconds=INFER_HOP_SECONDS, detector=self.detector)
        return self.encoder.embed(images)

    def embed(self, speech: np.ndarray) -> np.ndarray:
        from voicegate.device.scoring import sample_embeddings

        return sample_embeddings(self.windows(speech))

    def enrol(self, speech: np.ndarray) -> np.ndarray:
        from voicegate.device.scoring import window_embeddings

        return window_embeddings(self.windows(speech))


# --- audio ------------------------------------------------------------------------------------
ChannelFn = Callable[..., np.ndarray]


def default_channel_fn(corpus: str, door_seed: int = 0) -> ChannelFn:
    """The training side's named channels (``voicegate.train.data.channel.apply_channel``), with
    the shared real noise beside the corpus (``<corpus>/../noise``) for the noisy room, and one
    door: the same simulated room for every recording (``room_seed``), fresh noise per recording.
    The noise is the EVALUATION part of each file (``augment.noise_part``: the stretch training's
    augmentation never reads), so the noisy room is not a room the encoder trained in."""
    import inspect
    from functools import partial

    from voicegate.train.data.augment import find_noise_dir, load_noises
    from voicegate.train.data.channel import apply_channel

    kw = {"noises": load_noises(find_noise_dir(corpus), part="eval") or None}
    if "room_seed" in inspect.signature(apply_channel).parameters:
        kw["room_seed"] = door_seed
    else:
        log.warning("apply_channel has no room_seed: every recording gets its own simulated room")
    return partial(apply_channel, **kw)


def channel_seed(seed: int, channel: str, item: str) -> int:
    from voicegate.train.data.splits import keyed_rng

    return int(keyed_rng(seed, "channel", channel, item).integers(0, 2**31 - 1))


def recording_speech(rec, cfg: ProtocolConfig, channel_fn: Optional[ChannelFn], skipped: list,
                     detector=None, half: Optional[int] = None) -> Optional[np.ndarray]:
    """The recording through the configured channel, then the device's speech selection
    (:func:`voicegate.device.speech.speech_only`); None when nothing usable is left. ``half``
    0 / 1: only the first / second half of that speech."""
    from voicegate.device.speech import speech_only
    from voicegate.train.data.build import load_recording
    from voicegate.train.data.config import PrepareConfig

    audio = load_recording(rec, PrepareConfig(corpus=cfg.corpus, max_read_seconds=cfg.max_read_seconds),
                           Path(cfg.corpus), skipped)
    if audio is None:
        return None
    if cfg.channel != CLEAN:
        audio = np.asarray(channel_fn(audio, cfg.channel, channel_seed(cfg.seed, cfg.channel, rec.item)), np.float32)
    try:
        speech = speech_only(audio, where=rec.item, detector=detector)
    except AudioError:
        return None
    if half is None:
        return speech
    mid = speech.size // 2
    return speech[:mid] if half == 0 else speech[mid:]


def device_accepts(speech: np.ndarray, detector=None) -> bool:
    """Whether the device's speech detector would decide on this audio (enough speech, enough of
    it speech). Checked by the protocol itself, so a peer embedder fails and skips exactly what
    the device featurizer would, and every embedder gets the very same trials."""
    from voicegate.device.speech import select_speech

    return bool(select_speech(speech, detector).decidable)


# --- enrolment --------------------------------------------------------------------------------------
def enrol_speaker(plan: SpeakerPlan, embedder, cfg: ProtocolConfig, channel_fn: Optional[ChannelFn] = None,
                  skipped: Optional[list] = None, detector=None) -> Optional[dict]:
    """Enrol one speaker from its enrolment recordings, in order, up to ``cfg.enrol_seconds`` of
    speech (the last recording cut to fit; a piece the featurizer rejects is left out) ->
    {speaker, role, recordings, utterances, seconds, centroid}, or None when nothing was usable."""
    from voicegate.device.scoring import centroid

    skipped = [] if skipped is None else skipped
    n_max = int(round(cfg.enrol_seconds * SAMPLE_RATE))
    parts, used, have = [], [], 0
    for piece, rec, half in plan.pieces("enrol"):
        if have >= n_max:
            break
        speech = recording_speech(rec, cfg, channel_fn, skipped, detector, half)
        if speech is None or speech.size == 0:
            continue
        speech = speech[: n_max - have]
        if not device_accepts(speech, detector):  # e.g. a short remnant: left out for every embedder
            continue
        try:
            parts.append(np.asarray(embedder.enrol(speech), np.float64))
        except AudioError:
            continue
        used.append(piece)
        have += speech.size
    if not parts:
        return None
    return {"speaker": plan.speaker, "role": plan.role, "recordings": used, "utterances": len(parts),
            "seconds": round(have / SAMPLE_RATE, 2), "centroid": centroid(np.concatenate(parts))}


# --- running the protocol --------------------------------------------------------------------------
@dataclass
class Embedded:
    """Profiles, attempts and trials of one corpus under one channel, with the cosine samples."""

    profiles: list  # {speaker, role, recordings, seconds}
    attempts: list  # {speaker, role, recording, failed}
    trials: Trials
    cos: np.ndarray  # (trials, S) cosine of each sample's utterance embedding with the profile
    info: dict
    attempt_embeddings: Optional[np.ndarray] = None  # (attempts, S, D); zeros for a failed attempt
    centroids: Optional[np.ndarray] = None  # (profiles, D)

    def score(self) -> np.ndarray:
        """Per-trial cosine score (mean over the samples); FAILED_SCORE for a failed attempt."""
        failed = np.asarray([a["failed"] for a in self.attempts], bool)[self.trials.attempt]
        return np.where(failed, FAILED_SCORE, self.cos.mean(axis=1))


def run_protocol(plans: Sequence[SpeakerPlan], embedder, cfg: ProtocolConfig,
                 channel_fn: Optional[ChannelFn] = None, detector=None) -> Embedded:
    """Enrol every plan, embed every attempt, score every trial (cosine samples).

    ``embedder``: ``samples``, ``embed(speech) -> (S, D)`` and ``enrol(speech) -> (n, D)``;
    ``channel_fn(x, name, seed)``: the channel (default: :func:`default_channel_fn`);
    ``detector``: the speech detector that selects each recording's speech (None: the device's).
    """
    from tqdm import tqdm

    from voicegate.train.eval.attempts import cut_attempts

    if cfg.channel != CLEAN and channel_fn is None:
        channel_fn = default_channel_fn(cfg.corpus, cfg.seed)
    skipped: list = []
    info = {"channel": cfg.channel, "enrolment_failed": [], "failed_attempts": 0,
            "recordings_without_attempt": 0, "attempt_speech_seconds": 0.0, "skipped_files": skipped}
    profiles, centroids, attempts, embs, embed_ms = [], [], [], [], []
    bar = tqdm(plans, desc=f"enrol+attempt [{cfg.channel}]", unit="spk", disable=not cfg.progress)
    for plan in bar:
        if plan.enrolled:
            profile = enrol_speaker(plan, embedder, cfg, channel_fn, skipped, detector)
            if profile is None:
                info["enrolment_failed"].append(plan.speaker)
            else:
                centroids.append(profile.pop("centroid"))
                profiles.append(profile)
        for piece, rec, half in plan.pieces("attempts"):
            speech = recording_speech(rec, cfg, channel_fn, skipped, detector, half)
            chunks = [] if speech is None else cut_attempts(speech, cfg.attempt_seconds, cfg.min_attempt_seconds)
            if not chunks:
                info["recordings_without_attempt"] += 1
                continue
            for chunk in chunks:
                row = {"speaker": plan.speaker, "role": plan.role, "recording": piece,
                       "enrolled": plan.enrolled, "failed": False}
                t0 = time.perf_counter()
                try:
                    if not device_accepts(chunk, detector):  # failed for every embedder alike
                        raise AudioError("no speech found")
                    e = embedder.embed(chunk)
                    embed_ms.append(1000.0 * (time.perf_counter() - t0))
                except AudioError:
                    row["failed"] = True
                    info["failed_attempts"] += 1
                    e = np.zeros((embedder.samples, 1))
                attempts.append(row)
                embs.append(e)
                info["attempt_speech_seconds"] += chunk.size / SAMPLE_RATE
    if not profiles:
        raise ProtocolError("nobody could be enrolled")
    if not attempts:
        raise ProtocolError("no attempt could be cut")
    # a speaker whose enrolment failed still attacks the others: impostor-only
    enrolled = {p["speaker"] for p in profiles}
    for a in attempts:
        a["enrolled"] = a["speaker"] in enrolled
    trials = make_trials([a["speaker"] for a in attempts], [a["recording"] for a in attempts],
                         [p["speaker"] for p in profiles], [set(p["recordings"]) for p in profiles])
    if not trials.genuine.any() or trials.genuine.all():
        kind = "genuine" if not trials.genuine.any() else "impostor"
        raise ProtocolError(f"no {kind} trials: the protocol needs at least two speakers, one of them with a "
                            f"recording left after enrolment ({len(profiles)} enrolled, {len(attempts)} attempts)")
    dim = centroids[0].size
    E = np.stack([e if e.shape[-1] == dim else np.zeros((embedder.samples, dim)) for e in embs])  # (A, S, D)
    C = np.stack(centroids)  # (P, D)
    norm = getattr(getattr(embedder, "encoder", None), "score_norm", None)  # the model's AS-norm, if any
    if norm is None:
        cos = np.einsum("asd,pd->aps", E, C).reshape(len(attempts) * len(profiles), -1)
    else:  # the device's rule: each sample's cosine normalised against the model's cohort
        cos = norm.apply_many(np.einsum("asd,pd->asp", E, C), E.mean(axis=1), C)
        cos = cos.transpose(0, 2, 1).reshape(len(attempts) * len(profiles), -1)
        info["score_norm"] = {"type": "as-norm", "top": norm.top, "cohort_speakers": int(len(norm.cohort))}
    info["attempt_speech_seconds"] = round(info["attempt_speech_seconds"], 1)
    if embed_ms:  # featurize + embed of one attempt, this process's load included
        info["attempt_embed_ms"] = {"median": round(float(np.median(embed_ms)), 2),
                                    "p95": round(float(np.percentile(embed_ms, 95)), 2), "n": len(embed_ms)}
    return Embedded(profiles, attempts, trials, cos, info, E, C)
