"""The speaker encoder: a verified encoder-kind ONNX model -> voice embeddings, on onnxruntime.

    enc = Encoder.load()                      # $VOICEGATE_MODEL, else the shipped encoder
    emb = enc.embed(images)                   # (windows, S, D), every (w, s) row L2-normalised

The graph (the encoder contract, see ``contract.py``): input ``spectrogram`` float32
(batch, 1, 224, 224) in [0, 1] -> output ``embeddings`` float32 (batch, S, D), S = the MC-dropout
samples (masks shared by every window of one batch) or the ensemble members. The model's bytes
are checked against their sha256 sidecar/manifest (``model_files.read_verified_model``) before use,
its contract must say ``kind="encoder"`` with a valid cosine calibration, and it must match this
featurizer. The sha256 names the encoder a profile was made with (``profiles.py``).

Every failure is a :class:`~voicegate.device.contract.ModelError` (exit 5).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np

from .audio import PathLike
from .contract import EMBEDDINGS_NAME, INPUT_NAME, ModelContract, ModelError
from .features import INFER_HOP_SECONDS, feature_contract, frame_windows, spectrogram
from .policy import check_loosening
from .runtime import as_model_input, check_samples_differ, open_model, probe_images
from .model_files import MODEL_ENV, models_dir  # MODEL_ENV: the door's model, for every command

log = logging.getLogger(__name__)

ENCODER_ENV = "VOICEGATE_ENCODER"  # the older name, read after $VOICEGATE_MODEL
DEFAULT_ENCODER_NAME = "voicegate-encoder-mc.onnx"
MAX_BATCH = 32  # windows per onnxruntime run when embedding long enrolment audio (bounds memory)
NORM_TOLERANCE = 1e-2  # embedding rows must have |norm - 1| below this


def shipped_encoder(method: str | None = None) -> Path:
    """``models/voicegate-encoder-{mc|ensemble}.onnx`` (mc when ``method`` is None)."""
    return models_dir() / (DEFAULT_ENCODER_NAME if method in (None, "mc") else f"voicegate-encoder-{method}.onnx")


def build_has_encoder(method: str | None = None) -> bool:
    """Does this build (or ``$VOICEGATE_ENCODER``) hold an encoder? Then a door decides by name
    whatever ``--method`` says (a missing ensemble encoder fails, exit 5); only a build without
    any encoder falls back to the study's classifier (the rule of identify and doctor)."""
    return shipped_encoder().is_file() or resolve_encoder_path(None, method).is_file()


def resolve_encoder_path(model_path: PathLike | None = None, method: str | None = None) -> Path:
    """``model_path`` > ``$VOICEGATE_MODEL`` > ``$VOICEGATE_ENCODER`` > the shipped encoder
    (``method`` picks mc or ensemble). enroll, profiles, enroll-check and listen all read the
    same variable, so a door enrols with the encoder it decides with."""
    from .model_files import named_model

    named = named_model(model_path, (MODEL_ENV, ENCODER_ENV))
    return named if named is not None else shipped_encoder(method)


def model_kind(model_path: PathLike) -> str:
    """``classifier`` or ``encoder``: what the (verified) model at ``model_path`` is."""
    _, contract, _ = open_model(Path(model_path))
    return contract.kind


def encoder_identity(model_path: PathLike) -> tuple[str, int]:
    """(sha256, embedding size) of the verified encoder at ``model_path``: what a profile must
    match to be used by it (ModelError if it is not an encoder-kind model)."""
    path = Path(model_path)
    _, contract, digest = open_model(path)
    if contract.kind != "encoder" or contract.embedding_dim < 1:
        raise ModelError(f"{path}: is a {contract.kind} model, not an encoder: profiles are made "
                         f"with an encoder (name one with --model or ${MODEL_ENV})")
    return digest, int(contract.embedding_dim)


CALIBRATION_TYPES = ("logistic", "as-norm-logistic")  # the second: AS-norm first (scoring.ScoreNorm)


def check_calibration(calibration, where: str = "model") -> tuple[float, float]:
    """(a, b) of a ``{"type": "logistic" | "as-norm-logistic", "a": A, "b": B}`` calibration, or ModelError."""
    if not isinstance(calibration, dict) or calibration.get("type") not in CALIBRATION_TYPES:
        kind = calibration.get("type") if isinstance(calibration, dict) else calibration
        raise ModelError(f"{where}: encoder contract has no logistic calibration (got type {kind!r})")
    try:
        a, b = float(calibration["a"]), float(calibration["b"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{where}: encoder calibration needs numbers a and b (got {calibration!r})") from None
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 0:
        raise ModelError(f"{where}: encoder calibration a={a}, b={b}: a must be finite and > 0")
    return a, b


def encode_cohort(cohort: np.ndarray) -> str:
    """(N, D) cohort -> base64 of little-endian float16 (what the contract stores)."""
    return base64.b64encode(np.ascontiguousarray(cohort, dtype="<f2").tobytes()).decode("ascii")


def check_score_norm(calibration, dim: int, where: str = "model"):
    """The contract's AS-norm (scoring.ScoreNorm), None for a plain logistic one, or ModelError."""
    from .scoring import ScoreNorm, normalise

    if calibration.get("type") != "as-norm-logistic":
        return None
    try:
        n, d = (int(v) for v in calibration["cohort_shape"])
        top = int(calibration["top"])
        raw = base64.b64decode(calibration["cohort"], validate=True)
        cohort = np.frombuffer(raw, dtype="<f2").astype(np.float64).reshape(n, d)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{where}: the AS-norm cohort in the contract is malformed ({e})") from None
    if d != dim or n < 1 or top < 1 or not np.all(np.isfinite(cohort)):
        raise ModelError(f"{where}: the AS-norm cohort is {n} x {d} (top {top}); the encoder's D is {dim}")
    return ScoreNorm(normalise(cohort), top)


class Encoder:
    """A loaded, verified encoder plus its calibration and thresholds (one run at a time)."""

    def __init__(self, session, contract: ModelContract, path: Path, sha256: str, thresholds,
                 thresholds_loosened: list | None = None):
        self.session = session
        self.contract = contract
        self.path = path
        self.sha256 = sha256
        self.thresholds = thresholds
        self.thresholds_loosened = list(thresholds_loosened or [])  # recorded in every decision
        self.measure = contract.uncertainty_measure
        self.calibration = check_calibration(contract.calibration, str(path))
        self.score_norm = check_score_norm(contract.calibration, contract.embedding_dim, str(path))

    method = property(lambda self: self.contract.method)
    samples = property(lambda self: self.contract.samples)
    dim = property(lambda self: self.contract.embedding_dim)

    @classmethod
    def load(
        cls,
        model_path: PathLike | None = None,
        accept: float | None = None,
        uncertainty_limit: float | None = None,
        deny: float | None = None,
        threads: int = 1,
        seed: int | None = None,
        unsafe_thresholds: bool = False,
    ) -> "Encoder":
        """Resolve, verify, open and probe an encoder; apply threshold overrides.

        Overrides that loosen the validated thresholds beyond policy's bounds raise
        ThresholdError unless ``unsafe_thresholds``; samples that cannot disagree (collapsed MC
        dropout) are refused, as for the classifier gate.
        """
        path = resolve_encoder_path(model_path)
        session, contract, digest = open_model(path, threads, seed)
        if contract.kind != "encoder":
            raise ModelError(
                f"{path}: is a {contract.kind} model; enrolment and profiles need an encoder-kind "
                f"model (name one with --model or ${MODEL_ENV})"
            )
        if contract.embedding_dim < 1:
            raise ModelError(f"{path}: encoder contract has no embedding_dim")
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        if names_in != [INPUT_NAME] or EMBEDDINGS_NAME not in names_out:
            raise ModelError(
                f"{path}: graph interface is {names_in} -> {names_out}, "
                f"want [{INPUT_NAME!r}] -> [{EMBEDDINGS_NAME!r}]"
            )
        thresholds = contract.thresholds.override(accept, uncertainty_limit, deny)
        loosened = check_loosening(contract.thresholds, thresholds, unsafe_thresholds)
        encoder = cls(session, contract, path, digest, thresholds, loosened)
        # what must be able to disagree is the samples' SCORES: the cosine of two probe inputs per
        # sample (an ensemble's members write to disjoint blocks, so its raw rows always differ)
        probe = encoder._run(as_model_input(probe_images()))
        check_samples_differ(np.einsum("sd,sd->s", probe[0], probe[1])[None, :], contract.method, path)
        log.info("encoder %s (%s, S=%d, D=%d, sha256 %s...), thresholds %s%s", path, contract.method,
                 contract.samples, contract.embedding_dim, digest[:12], thresholds.to_dict(),
                 f" LOOSENED: {'; '.join(loosened)}" if loosened else "")
        return encoder

    # -- inference --------------------------------------------------------------------------
    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            (out,) = self.session.run([EMBEDDINGS_NAME], {INPUT_NAME: x})
        except Exception as e:
            raise ModelError(f"{self.path}: inference failed ({str(e).strip()[:200]})") from None
        out = np.asarray(out, dtype=np.float32)
        want = (x.shape[0], self.samples, self.dim)
        if out.shape != want:
            raise ModelError(f"{self.path}: embeddings of shape {out.shape}, contract says {want}")
        if not np.all(np.isfinite(out)):
            raise ModelError(f"{self.path}: the encoder produced non-finite embeddings")
        norms = np.linalg.norm(out, axis=-1)
        if np.any(np.abs(norms - 1.0) > NORM_TOLERANCE):
            raise ModelError(f"{self.path}: embeddings are not L2-normalised (norms {norms.min():.3f}"
                             f"..{norms.max():.3f})")
        return out

    def embed(self, images: np.ndarray, batch: int | None = None) -> np.ndarray:
        """(n, 224, 224) spectrograms -> (n, S, D) embeddings.

        One run by default (the MC masks are shared by the whole utterance); ``batch`` splits a
        long enrolment into runs of that many windows.
        """
        x = as_model_input(images)
        step = x.shape[0] if not batch else max(1, int(batch))
        return np.concatenate([self._run(x[i : i + step]) for i in range(0, x.shape[0], step)])

    def embed_speech(self, speech: np.ndarray, hop_seconds: float = INFER_HOP_SECONDS,
                     batch: int | None = MAX_BATCH) -> np.ndarray:
        """Trimmed 16 kHz speech -> (windows, S, D): cut into windows, rendered, embedded."""
        return self.embed(spectrogram(frame_windows(speech, hop_seconds)), batch=batch)

    def score(self, emb: np.ndarray, names, centroids: np.ndarray) -> list:
        """(W, S, D) embeddings against (P, D) profile centroids, best first, with this model's
        calibration, uncertainty measure and score normalisation (``scoring.score_profiles``)."""
        from .scoring import score_profiles

        return score_profiles(emb, names, centroids, self.calibration, self.measure, self.score_norm)

    def warmup(self) -> None:
        """Run the encoder once, so the first real decision is warm."""
        self._run(as_model_input(probe_images(1)))
