"""AS-norm for an encoder: a cohort of training-speaker voices in the model, scores normalised on it.

    voicegate export runs/encoder-mc --score-norm as-norm --out out/encoder/voicegate-encoder-mc.onnx
    voicegate export models/voicegate-encoder-mc.onnx --score-norm as-norm --cache cache/encoder-v2 \
        --out out/encoder/voicegate-encoder-mc-asnorm.onnx        # re-score an exported encoder

**The cohort** is one centroid per TRAINING speaker of the encoder (the data cache's clean and
first augmented version of each window, embedded by the exported graph itself, mean over the MC
samples, as enrolment does), stored in the contract as float16 (about 70 kB for 270 voices of
128 dimensions). No validation, allowed or held-out speaker is in it.

**On the device** (``device.scoring.ScoreNorm``) each cosine of an attempt with a profile becomes
``0.5 * ((cos - mu_a) / sd_a + (cos - mu_p) / sd_p)``: mu and sd over the ``top`` cohort voices
closest to the attempt (a) and to the profile (p). The calibration and thresholds are then fitted
on those normalised scores of the validation speakers (``encoder_calibration``), and the
calibration's type becomes ``as-norm-logistic``, which an older runtime refuses rather than
misreading. Re-scoring an exported encoder keeps its graph, weights and export settings (target
FAR, uncertainty measure, placement) and replaces only the calibration, thresholds and metrics:
the embeddings, and so the profiles' content, are the same, but the file's sha256 changes, so
profiles must be re-enrolled.

**Not the default, and not shipped** (measured 2026-12-03 on the shipped MC encoder re-scored this
way; ``benchmarks/eval-encoder-asnorm-<corpus>``, ``benchmarks/synthetic-voices-asnorm.json``). On
people it is better on every channel of both corpora: speechocean762 clean EER 8.1 -> 7.1 %,
librispeech FRR at FAR 1 % 14.0 -> 2.3 %. But it judges an attempt against the cohort voices
closest to it, and a voice-like sound far from every real voice has only distant neighbours, so
its normalised score is inflated: of 120 seeded formant buzzes the highest p_allow rose from 0.75
to 0.87 (accept 0.874), and the buzz the raw model scored highest was GRANTED 13 times in 30
against the demo household (0 of 30 with raw cosines). A door must not open to a buzzer, so
the shipped encoders score raw cosines; this option stays for measurement, as ``--backend wccn``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

COHORT_TOP = 50  # the best of 50, 100, 200 and all 270 in benchmarks/score_norm.py, on both corpora
COHORT_VERSIONS = (0, 1)  # the clean image and the first augmented copy of each training window


def training_window_embeddings(embed, data, versions=COHORT_VERSIONS, batch: int = 256,
                               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) window embeddings (mean over the samples, normalised: enrolment's rule) of the
    cache's training windows, and their speaker labels; ``embed``: images -> (n, S, D)."""
    from tqdm import tqdm

    from voicegate.device.scoring import window_embeddings

    jobs = [(v, i) for v in versions if v < data.images.shape[1] for i in range(0, data.labels.size, batch)]
    xs, ys = [], []
    for v, i in tqdm(jobs, desc="cohort: training windows", unit="batch", disable=not progress):
        images = data.images[i : i + batch, v].astype(np.float32) / 255.0
        xs.append(window_embeddings(embed(images)))
        ys.append(data.labels[i : i + batch])
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys)


def fit_cohort(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(speakers, D): each training speaker's normalised mean window embedding."""
    from voicegate.device.scoring import normalise

    return normalise(np.stack([X[Y == c].mean(axis=0) for c in np.unique(Y)]))


def fit_score_norm(session, data, top: int = COHORT_TOP, progress: bool = True) -> tuple:
    """(device ScoreNorm, the calibration entries that carry it) for an encoder graph's session.

    The ScoreNorm is decoded from those entries, so the export fits its calibration on exactly
    the float16 cohort the device will read."""
    from voicegate.device.encoder import check_score_norm, encode_cohort

    from .encoder_calibration import _run

    X, Y = training_window_embeddings(lambda images: _run(session, images), data, progress=progress)
    cohort = fit_cohort(X, Y)
    info = {"top": int(top), "cohort": encode_cohort(cohort), "cohort_shape": [int(n) for n in cohort.shape],
            "cohort_from": "the encoder's training speakers: one centroid each of their clean and first "
                           "augmented training windows", "cohort_windows": int(len(X))}
    norm = check_score_norm({"type": "as-norm-logistic", **info}, cohort.shape[1], "the cohort")
    log.info("AS-norm cohort: %d training speakers from %d windows, top %d", len(cohort), len(X), top)
    return norm, info


def rescore(model, out, cache: str, top: int = COHORT_TOP) -> Path:
    """An exported encoder with AS-norm: same graph, a cohort, refitted calibration and thresholds."""
    import onnx
    import onnxruntime as ort

    import voicegate
    from voicegate.device.contract import ModelContract
    from voicegate.device.encoder import Encoder
    from voicegate.device.model_files import read_verified_model
    from voicegate.train.data.encoder_data import EncoderData

    from .encoder_calibration import _session, calibrate_encoder
    from .onnx_export import ExportConfig, refuse_other_featurizer
    from .writing import ExportInputError, write_verified

    model, out = Path(model), Path(out)
    if out.suffix != ".onnx":
        raise ExportInputError(f"--out must name a .onnx file, got {out}")
    raw, digest = read_verified_model(model)
    proto = onnx.load_from_string(raw)
    contract = ModelContract.from_metadata({p.key: p.value for p in proto.metadata_props})
    if contract.kind != "encoder":
        raise ExportInputError(f"{model}: is a {contract.kind} model; only an encoder can be re-scored")
    if contract.calibration.get("type") != "logistic":
        raise ExportInputError(f"{model}: its scores are already normalised ({contract.calibration.get('type')})")
    if not cache or not (Path(cache) / "meta.json").is_file():
        raise ExportInputError(f"re-scoring needs the encoder's training data cache (--cache), not {cache!r}")
    data = EncoderData(cache)
    refuse_other_featurizer(data.meta.get("feature_contract"), f"the encoder data in {cache}")
    if data.meta["validation_speakers"] != contract.corpus.get("validation_speakers"):
        raise ExportInputError(f"{cache}: its validation speakers are not the model's: another data cache")
    if sorted(data.meta["speakers"]) != sorted(contract.corpus.get("training_speakers", [])):
        raise ExportInputError(f"{cache}: its training speakers are not the model's: another data cache")
    known = {f.name for f in dataclasses.fields(ExportConfig)}
    cfg = ExportConfig(**{k: v for k, v in contract.extra.get("export_config", {}).items() if k in known})
    ort.set_seed(cfg.seed)
    norm, info = fit_score_norm(_session(proto), data, top)
    calibration, thresholds, val_report, e = calibrate_encoder(_session(proto), data, cfg, norm, info)
    metrics = {**contract.metrics, "validation": val_report,
               "validation_raw_cosine": contract.metrics.get("validation"),
               "score_norm": {k: v for k, v in info.items() if k != "cohort"}}
    new = dataclasses.replace(
        contract, thresholds=thresholds, calibration=calibration, metrics=metrics,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        voicegate_version=voicegate.__version__,
        extra={**contract.extra, "rescored_from": {"file": model.name, "sha256": digest}},
    )
    new_digest, _ = write_verified(proto, new, out, Encoder.load)
    pol = val_report["policy"]
    sc = val_report["as_norm_score"]
    print(f"encoder {contract.method} + AS-norm (top {top}, {info['cohort_shape'][0]} cohort voices): {out} "
          f"({out.stat().st_size / 1e6:.2f} MB, sha256 {new_digest[:12]}...)  a={calibration['a']:.3f} "
          f"b={calibration['b']:.3f}  accept={thresholds.accept:.4f} limit={thresholds.uncertainty_limit:.4f} "
          f"deny={thresholds.deny:.4f}  val AS-norm EER {e:.2%} (cosine: "
          f"{contract.metrics.get('validation', {}).get('cosine', {}).get('eer', float('nan')):.2%})  "
          f"FAR={pol['far']:.3f} FRR={pol['frr']:.3f} uncertain(genuine)={pol['allowed']['UNCERTAIN']:.3f}  "
          f"({sc['genuine_trials']} genuine / {sc['impostor_trials']} impostor trials)")
    return out


def run_rescore(model: str, args: argparse.Namespace) -> int:
    """``voicegate export MODEL.onnx --score-norm as-norm --cache CACHE --out NEW.onnx``."""
    from voicegate.device.contract import EXIT_MODEL
    from voicegate.train.commands import error_text, failure_exit

    if not Path(model).is_file():  # a typo: say so, rather than how to re-score a model
        print(f"voicegate export: {model}: model file not found", file=sys.stderr)
        return EXIT_MODEL
    if getattr(args, "score_norm", "none") != "as-norm":
        print("voicegate export: RUN is an exported model (.onnx): give a run folder to export, or re-score an "
              "exported encoder with --score-norm as-norm --cache CACHE", file=sys.stderr)
        return 2
    try:
        rescore(model, args.out, args.cache)
    except Exception as e:  # one line; 5 for an unusable model, 2 usage, 1 failure
        print(f"voicegate export: {error_text(e)}", file=sys.stderr)
        log.debug("re-scoring failed", exc_info=True)
        return failure_exit(e)
    return 0
