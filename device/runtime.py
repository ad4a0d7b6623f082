"""The gate: an exported ONNX model, its contract and the decision policy, on numpy + onnxruntime.

    gate = Gate.load()                       # the shipped compact MC model
    decision = gate.decide_file("door.wav")  # or gate.decide_audio(samples_16k_float32)
    decision.decision, decision.exit_code    # "GRANTED" / "DENIED" / "UNCERTAIN", 0 / 1 / 3

Which model: ``model_path`` > ``$VOICEGATE_MODEL`` > the shipped
``voicegate.models/voicegate-compact-{mc,ensemble}.onnx``. Before a model is used its bytes are
checked against the sha256 in its sidecar (``NAME.onnx.sha256``, ``sha256sum`` format) or in
``manifest.json`` beside it (:mod:`~voicegate.device.model_files`); a model without either, or
whose hash differs, is refused. The
contract in its metadata must match this featurizer (feature version, sample rate, image size).
At load the model is also probed once: a model whose S samples cannot disagree (S < 2, or MC
dropout that collapsed into identical samples) would never say UNCERTAIN and is refused.

Threshold overrides that loosen the model's validated operating point are recorded in every
decision (``thresholds_loosened``) and refused beyond the bounds in
:mod:`~voicegate.device.policy` unless ``unsafe_thresholds`` is set.

Every failure is an exception: :class:`~voicegate.device.audio.AudioError` (exit 4) for audio
that cannot be used, :class:`~voicegate.device.contract.ModelError` (exit 5) for the model.
Callers turn any exception into "no access" (fail closed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from .audio import SAMPLE_RATE, AudioError, PathLike
from .contract import (
    DECISION_EXIT,
    INPUT_NAME,
    OUTPUT_NAME,
    ModelContract,
    ModelError,
)
from .features import IMAGE_SIZE, INFER_HOP_SECONDS, feature_contract, featurize
from .model_files import read_verified_model, resolve_model_path
from .policy import check_loosening, decide, summarize

log = logging.getLogger(__name__)

PROBE_SEED = 14  # the load-time probe input (fixed, so a load is reproducible)
MIN_SAMPLE_SPREAD = 1e-7  # samples closer than this on every probe input are "identical"


# --- the decision record ---------------------------------------------------------------------
@dataclass
class Decision:
    """One gate decision and everything needed to audit it."""

    decision: str  # GRANTED | DENIED | UNCERTAIN
    p_allow: float  # mean p(allowed) over windows and samples
    uncertainty: float  # the deciding measure's value (see uncertainty_measure)
    uncertainty_measure: str
    std: float
    entropy: float  # predictive entropy, bits
    mutual_info: float  # BALD mutual information, bits
    windows: int
    samples: int
    method: str
    model_sha256: str
    latency_ms: float  # audio in -> decision out (featurize + model + policy)
    reason: str
    thresholds: dict = field(default_factory=dict)  # the thresholds that decided
    model_thresholds: dict = field(default_factory=dict)  # the model's validated ones
    thresholds_loosened: list = field(default_factory=list)  # how an override loosened them ([]: not)

    @property
    def exit_code(self) -> int:
        return DECISION_EXIT[self.decision]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d


# --- the gate ------------------------------------------------------------------------------
def as_model_input(images: np.ndarray) -> np.ndarray:
    """(n, 224, 224) or (n, 1, 224, 224) spectrograms -> contiguous float32 (n, 1, 224, 224)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE) or x.shape[0] == 0:
        raise ValueError(f"want (n, {IMAGE_SIZE}, {IMAGE_SIZE}) spectrograms, got {x.shape}")
    return np.ascontiguousarray(x)


def run_session(session, images: np.ndarray) -> np.ndarray:
    """One batch through a gate graph -> (n, S) p(allowed) samples (MC masks shared by the batch)."""
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: as_model_input(images)})
    return np.asarray(out)


def probe_images(n: int = 2) -> np.ndarray:
    """Fixed, non-trivial spectrogram inputs for the load-time probe: noise and a noisy ramp."""
    rng = np.random.default_rng(PROBE_SEED)
    noise = rng.random((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, IMAGE_SIZE, dtype=np.float32)[:, None]
    noise[1::2] = 0.5 * noise[1::2] + 0.5 * ramp
    return noise


def log_odds(p: np.ndarray) -> np.ndarray:
    """p(allowed) -> log(p / (1 - p)) in float64, finite even where float32 rounded p to 0 or 1.

    The load-time probe compares samples in this space: a working model can be so sure of a
    probe input that its samples differ only as 1e-25 against 6e-25, which the p scale calls
    identical. Samples that float32 rounded to exactly 0 or 1 stay equal here, as they should.
    """
    q = np.asarray(p, dtype=np.float64)
    tiny = np.finfo(np.float64).tiny
    return np.log(np.maximum(q, tiny)) - np.log(np.maximum(1.0 - q, tiny))


def check_samples_differ(outputs: np.ndarray, method: str, path) -> float:
    """Refuse (ModelError) a model whose S output samples cannot disagree; return their spread.

    ``outputs`` is one probe batch's output, (batch, S) p(allowed) or (batch, S, D) embeddings:
    any output whose axis 1 holds the MC-dropout samples or ensemble members. S < 2, or samples
    that are all equal (within MIN_SAMPLE_SPREAD) on every probe input, mean an uncertainty of
    0 whatever the voice: such a model would never say UNCERTAIN.
    """
    out = np.asarray(outputs, dtype=np.float64)
    what = "MC samples" if method == "mc" else "ensemble members"
    if out.ndim < 2 or out.shape[1] < 2:
        n = out.shape[1] if out.ndim >= 2 else 1
        raise ModelError(f"{path}: {n} {what}: an uncertainty needs at least 2; refusing it")
    spread = float(np.max(np.ptp(out, axis=1))) if np.all(np.isfinite(out)) else float("nan")
    if not spread > MIN_SAMPLE_SPREAD:
        raise ModelError(
            f"{path}: its {out.shape[1]} {what} are identical on the probe input (spread {spread:.1e}): "
            "the dropout collapsed (or the members are copies), so it could never say UNCERTAIN; refusing it"
        )
    return spread


MALLOC_MMAP_THRESHOLD = 32 << 20  # bytes: buffers below this come from the heap, not fresh mmaps
MALLOC_TRIM_THRESHOLD = 64 << 20  # bytes of free heap kept before it is handed back to the OS


def tune_allocator() -> bool:
    """Keep a decision's freed numpy buffers in the heap (glibc ``mallopt``); True if applied.

    A spectrogram of a 3 s attempt makes a few 1-3 MB temporaries. glibc serves those with a
    fresh ``mmap`` each time and unmaps them on free, so every decision page-faults its buffers
    in again: measured here, 8.3 ms per 3 s spectrogram against 3.8 ms with the buffers kept
    (``benchmarks/enroll.py``). Raising the mmap and trim thresholds keeps and reuses them; peak
    memory is what a decision needs anyway. A no-op off glibc. Called by the CLI at start, never
    at import.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc on Linux (find_library costs ~15 ms: a subprocess)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    ok = bool(mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD))
    log.debug("glibc allocator thresholds raised: %s", ok)
    return ok


def make_session(model: Union[bytes, str], threads: int = 1):
    """A small, explicit CPU session with onnxruntime's default graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: the CLI prints one line, not ORT's warnings
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def open_model(path: Path, threads: int = 1, seed: int | None = None):
    """(session, contract, sha256) of a verified model whose contract fits this featurizer.

    Shared by every model kind (the classifier :class:`Gate`, the encoder); ``seed`` seeds
    onnxruntime's random ops (process-global: leave it None on a real gate).
    """
    data, digest = read_verified_model(path)
    try:
        import onnxruntime as ort

        if seed is not None:
            ort.set_seed(int(seed))
        session = make_session(data, threads)
    except Exception as e:  # onnxruntime raises its own types for invalid graphs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{path}: not a loadable ONNX model ({first[:200]})") from None
    try:
        contract = ModelContract.from_metadata(session.get_modelmeta().custom_metadata_map)
        contract.check_features(feature_contract())
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    return session, contract, digest


class Gate:
    """A loaded, verified model plus its thresholds; thread-compatible (one decision at a time)."""

    def __init__(self, session, contract: ModelContract, path: Path, sha256: str,
                 thresholds, measure: str, thresholds_loosened: list | None = None):
        self.session = session
        self.contract = contract
        self.path = path
        self.sha256 = sha256
        self.thresholds = thresholds
        self.measure = measure
        self.thresholds_loosened = list(thresholds_loosened or [])  # recorded in every decision

    @property
    def method(self) -> str:
        return self.contract.method

    @property
    def samples(self) -> int:
        return self.contract.samples

    @classmethod
    def load(
        cls,
        model_path: PathLike | None = None,
        method: str | None = None,
        accept: float | None = None,
        uncertainty_limit: float | None = None,
        threads: int = 1,
        deny: float | None = None,
        seed: int | None = None,
        unsafe_thresholds: bool = False,
    ) -> "Gate":
        """Resolve, verify, open and probe a model; apply threshold overrides.

        ``method`` picks the shipped default model, and when a model is named it must match its
        contract. ``seed`` seeds onnxruntime's random ops (MC masks) for reproducible runs; it
        is process-global in onnxruntime, so leave it None on a real gate. Overrides that loosen
        the model's thresholds beyond the policy's bounds raise ThresholdError unless
        ``unsafe_thresholds``.
        """
        path = resolve_model_path(model_path, method)
        session, contract, digest = open_model(path, threads, seed)
        if method is not None and method != contract.method:
            raise ModelError(f"{path}: is an {contract.method} model, but --method {method} was asked for")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
            raise ModelError(
                f"{path}: graph interface is {[i.name for i in inputs]} -> {[o.name for o in outputs]}, "
                f"want [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]"
            )
        thresholds = contract.thresholds.override(accept, uncertainty_limit, deny)  # ThresholdError
        loosened = check_loosening(contract.thresholds, thresholds, unsafe_thresholds)  # ThresholdError
        if contract.samples < 2:
            check_samples_differ(np.zeros((1, contract.samples)), contract.method, path)
        gate = cls(session, contract, path, digest, thresholds, contract.uncertainty_measure, loosened)
        spread = check_samples_differ(log_odds(gate.predict(probe_images())), contract.method, path)
        log.info(
            "model %s (%s, S=%d, sha256 %s..., probe spread %.3g), thresholds %s%s",
            path, contract.method, contract.samples, digest[:12], spread, thresholds.to_dict(),
            f" LOOSENED: {'; '.join(loosened)}" if loosened else "",
        )
        return gate

    # -- inference ----------------------------------------------------------------------------
    def predict(self, images: np.ndarray) -> np.ndarray:
        """(n, 224, 224) spectrograms -> (n, S) per-sample p(allowed), one batch (shared masks)."""
        x = as_model_input(images)
        try:
            out = run_session(self.session, x)
        except Exception as e:
            raise ModelError(f"{self.path}: inference failed ({str(e).strip()[:200]})") from None
        if out.shape != (x.shape[0], self.samples):
            raise ModelError(
                f"{self.path}: output shape {out.shape}, contract says ({x.shape[0]}, {self.samples})"
            )
        return out

    def decide_images(self, images: np.ndarray, started: float | None = None) -> Decision:
        """Decide on the spectrogram windows of one utterance."""
        t0 = time.perf_counter() if started is None else started
        return self.decide_samples(self.predict(images), started=t0)

    def decide_samples(self, samples: np.ndarray, started: float | None = None) -> Decision:
        """Decide on the (windows, S) samples :meth:`predict` gave for one utterance.

        Lets a caller keep the per-window samples (``voicegate eval``) without a second run.
        """
        t0 = time.perf_counter() if started is None else started
        try:
            stats = summarize(samples)
        except ValueError as e:
            raise ModelError(f"{self.path}: the model produced unusable output ({e})") from None
        verdict, reason = decide(stats, self.thresholds, self.measure)
        latency = (time.perf_counter() - t0) * 1000.0
        return Decision(
            decision=verdict,
            p_allow=stats.p_allow,
            uncertainty=stats.uncertainty(self.measure),
            uncertainty_measure=self.measure,
            std=stats.std,
            entropy=stats.entropy,
            mutual_info=stats.mutual_info,
            windows=stats.windows,
            samples=stats.samples,
            method=self.method,
            model_sha256=self.sha256,
            latency_ms=latency,
            reason=reason,
            thresholds=self.thresholds.to_dict(),
            model_thresholds=self.contract.thresholds.to_dict(),
            thresholds_loosened=list(self.thresholds_loosened),
        )

    def decide_audio(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE, speech_probs=None) -> Decision:
        """Decide on one utterance given as a float array (mono, or (frames, channels)).

        ``speech_probs``: its speech detector frame probabilities, if already computed (listen).
        """
        t0 = time.perf_counter()
        if not isinstance(audio, np.ndarray):
            raise AudioError(f"audio must be a numpy array, got {type(audio).__name__}")
        images = featurize(audio, sample_rate=sample_rate, hop_seconds=INFER_HOP_SECONDS,
                           speech_probs=speech_probs)
        return self.decide_images(images, started=t0)

    def decide_file(self, path: PathLike) -> Decision:
        """Decide on the audio file at ``path`` (any rate/channels soundfile reads)."""
        t0 = time.perf_counter()
        images = featurize(Path(path), hop_seconds=INFER_HOP_SECONDS)
        return self.decide_images(images, started=t0)

    def warmup(self) -> None:
        """Run the model once on a blank window, so the first real decision is warm."""
        self.predict(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), np.float32))
