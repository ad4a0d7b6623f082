"""`voicegate export runs/ENCODER --out models/voicegate-encoder-mc.onnx`: an encoder run -> ONNX.

``voicegate export`` hands a run folder made by ``voicegate train-encoder`` (it holds
``encoder-run.json``) to :func:`export_encoder`; classifier runs go to ``onnx_export`` as before.

1. **Graph.** The trunk runs once; T dropout masks on the trunk features are drawn inside the
   graph from ``RandomUniformLike`` (onnxruntime's optimiser deletes ``Dropout`` nodes, never a
   random op), shared by every window of the batch; the head's linear layer gives (B, T, D) which
   is L2-normalised per (b, t) row -> output ``embeddings``. The dropout rate is an initializer
   (``graphs.DROPOUT_P_NAME``), so a copy with p = 0 must reproduce the torch encoder.
2. **Parity** on real validation windows: p = 0 matches torch eval within PARITY_ATOL; the mean
   cosine of the onnx samples to the eval embedding matches torch's MC mean within sampling error;
   the samples vary under onnxruntime's default session options.
3. **Calibration and thresholds** on the VALIDATION speakers (:mod:`.encoder_calibration`:
   training speakers held out of encoder training, enrolled and attacked as at a door; a
   logistic map cosine -> probability, then accept / uncertainty limit / deny for FAR <= target).
   ``--score-norm as-norm`` first fits a cohort of the training speakers (:mod:`.score_norm`;
   not the default) and calibrates the normalised scores instead.
4. The model, its contract (kind ``encoder``), sha256 sidecar and manifest entry are written,
   then loaded back through the device (``voicegate.device.encoder.Encoder``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .encoder_calibration import _run, _session, calibrate_encoder, fit_calibration  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4
MC_SIGMAS = 6.0
MC_ROUNDS = 10
FP16_ATOL = 5e-3


def is_encoder_run(run) -> bool:
    from voicegate.train.models.fit_encoder import RUN_MARKER

    return (Path(run) / RUN_MARKER).is_file()


# --- the graph -------------------------------------------------------------------------------
def mc_module(encoder, samples: int):
    import torch
    from torch import nn

    class EncoderMC(nn.Module):
        """trunk once -> T inverted-dropout masks on the features -> linear -> L2 normalise."""

        def __init__(self):
            super().__init__()
            self.encoder, self.samples = encoder, int(samples)
            self.p = float(encoder.head[0].p)
            self.linear = encoder.head[1]

        def forward(self, x, dropout_p):
            feats = self.encoder.trunk(x)  # (B, F)
            u = torch.rand(self.samples, feats.shape[1], dtype=feats.dtype)
            keep = (u >= dropout_p).to(feats.dtype) / (1.0 - dropout_p)
            emb = self.linear(feats.unsqueeze(1) * keep)  # (B, T, D)
            emb = emb / torch.sqrt((emb * emb).sum(dim=-1, keepdim=True)).clamp(min=1e-12)
            post = getattr(self.encoder, "post", None)  # a back-end (backend.with_wccn), per sample
            return post(emb) if post is not None else emb

    return EncoderMC().eval()


def export_encoder_mc(encoder, samples: int, opset: int = 17):
    """The MC-dropout encoder graph as an ONNX ModelProto (dropout rate as an initializer)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from voicegate.device.contract import EMBEDDINGS_NAME, INPUT_NAME

    from .graphs import DROPOUT_P_NAME, _example_input, _to_onnx

    module = mc_module(encoder.eval().cpu(), samples)
    if not 0.0 < module.p < 1.0:
        raise ValueError(f"MC dropout needs a head dropout rate in (0, 1), the encoder has {module.p}")
    size = int(encoder.cfg.image_size)
    proto = _to_onnx(module, (_example_input(size), torch.tensor(module.p)),
                     [INPUT_NAME, DROPOUT_P_NAME], opset, output_name=EMBEDDINGS_NAME)
    graph = proto.graph
    graph.input.remove(next(i for i in graph.input if i.name == DROPOUT_P_NAME))
    graph.initializer.append(numpy_helper.from_array(np.array(module.p, np.float32), DROPOUT_P_NAME))
    if not {"RandomUniformLike", "RandomUniform"} & {n.op_type for n in graph.node}:
        raise RuntimeError("encoder MC export lost its random op: the samples would not vary")
    onnx.checker.check_model(proto)
    return proto


def check_parity(proto, encoder, images: np.ndarray, samples: int) -> dict:
    """Raise ExportError unless the graph reproduces ``encoder`` (see the module docstring)."""
    import torch

    from .graphs import with_dropout_p
    from .writing import ExportError

    x = torch.from_numpy(np.asarray(images, np.float32)[:, None])
    with torch.no_grad():
        ref = encoder.eval()(x).numpy()  # (n, D)
    off = _run(_session(with_dropout_p(proto, 0.0)), images)  # (n, T, D)
    err = float(np.abs(off - ref[:, None]).max())
    if err > PARITY_ATOL:
        raise ExportError(f"encoder parity failed: with dropout off, max |onnx - torch| = {err:.2e}")
    norms = np.linalg.norm(off, axis=-1)
    session = _session(proto)
    onnx_cos = np.concatenate([np.einsum("ntd,nd->nt", _run(session, images), ref) for _ in range(MC_ROUNDS)], 1)
    module = mc_module(encoder, samples)
    with torch.no_grad():
        torch_cos = np.concatenate([np.einsum("ntd,nd->nt", module(x, torch.tensor(module.p)).numpy(), ref)
                                    for _ in range(MC_ROUNDS)], 1)
    se = np.sqrt((onnx_cos.var(1) + torch_cos.var(1)) / onnx_cos.shape[1])
    diff = np.abs(onnx_cos.mean(1) - torch_cos.mean(1))
    if np.any(diff > MC_SIGMAS * se + 1e-3):
        raise ExportError(f"encoder MC parity failed: mean cosine differs by up to {diff.max():.4f}")
    spread = float(onnx_cos.std(1).max())
    if spread <= 1e-7:
        raise ExportError("encoder MC parity failed: onnxruntime gives identical samples")
    return {"max_abs_dropout_off": err, "max_norm_error": float(np.abs(norms - 1).max()),
            "max_mc_mean_cos_diff": float(diff.max()), "onnx_sample_cos_std_max": spread,
            "windows": int(len(images)), "mc_samples_compared": int(onnx_cos.shape[1])}


# --- the export ------------------------------------------------------------------------------
def export_encoder(run, out, cfg, cache: str | None = None, checkpoint: str = "checkpoint.pt",
                   backend: str = "none", score_norm: str = "none") -> Path:
    """Export an encoder run (``--method mc``) or several (``--method ensemble``: a deep ensemble
    of runs trained with different seeds, :mod:`.encoder_ensemble`) as ``cfg``
    (onnx_export.ExportConfig) says; returns the model path. ``backend``: "none" (default) or
    "wccn" (each member gets its own, fitted on its training windows: :mod:`.backend`; not the
    default: it lets synthetic voices through, see there). ``score_norm``: "none" or "as-norm"
    (a cohort of training-speaker centroids in the contract: :mod:`.score_norm`)."""
    import onnxruntime as ort

    import voicegate
    from voicegate.device.contract import ModelContract
    from voicegate.device.encoder import Encoder
    from voicegate.device.features import feature_contract
    from voicegate.device.model_files import file_sha256
    from voicegate.train.data.encoder_data import EncoderData
    from voicegate.train.models.encoder import load_encoder

    from . import graphs
    from .onnx_export import refuse_other_featurizer
    from .writing import ExportError, ExportInputError, write_verified

    from . import encoder_ensemble

    runs = [Path(r) for r in ([run] if isinstance(run, (str, Path)) else run)]
    run, out = runs[0], Path(out)
    if cfg.method not in ("mc", "ensemble"):
        raise ExportInputError("encoder runs export as --method mc (one run) or --method ensemble (several runs)")
    if cfg.method == "mc" and len(runs) != 1:
        raise ExportInputError(f"--method mc exports one encoder run, got {len(runs)}; use --method ensemble")
    if cfg.method == "ensemble" and len(runs) < 2:
        raise ExportInputError("--method ensemble needs >= 2 encoder runs (trained with different --seed)")
    if out.suffix != ".onnx":
        raise ExportInputError(f"--out must name a .onnx file, got {out}")
    if cfg.method == "ensemble":
        try:
            members = encoder_ensemble.load_members(runs, checkpoint)
        except ValueError as e:
            raise ExportInputError(str(e)) from None
    else:
        members = [(*load_encoder(run / checkpoint), run / checkpoint)]
    encoder, ckpt, ckpt_path = members[0]
    fv = feature_contract()["feature_version"]
    if encoder.cfg.feature_version != fv:
        raise ExportInputError(f"the encoder was trained on features {encoder.cfg.feature_version!r}, "
                               f"this voicegate renders {fv!r}")
    summary = ckpt.get("data", {})
    folder = cache or summary.get("cache")
    if not folder or not (Path(folder) / "meta.json").is_file():
        raise ExportInputError(f"the run's encoder data ({folder}) is not there; pass --cache")
    data = EncoderData(folder)
    refuse_other_featurizer(data.meta.get("feature_contract"), f"the encoder data in {folder}")
    if data.meta["validation_speakers"] != summary.get("validation_speakers"):
        raise ExportInputError("the cache's validation speakers differ from the run's")
    parity_images = data.val_images[: cfg.parity_windows].astype(np.float32) / 255.0
    if backend not in ("wccn", "none"):
        raise ExportInputError(f"unknown back-end {backend!r} (wccn or none)")
    backend_info = {"type": "none"}
    if backend == "wccn":
        from .backend import wccn_encoder

        fitted = [wccn_encoder(m[0], data) for m in members]
        members = [(enc, m[1], m[2]) for (enc, _), m in zip(fitted, members)]
        encoder, backend_info = members[0][0], {**fitted[0][1], "members": len(fitted)}
        log.info("WCCN back-end fitted on %d training windows of %d speakers", backend_info["windows"],
                 backend_info["speakers"])

    if cfg.method == "mc":
        proto = export_encoder_mc(encoder, cfg.samples, cfg.opset)
        parity = check_parity(proto, encoder, parity_images, cfg.samples)
        samples, dim, dropout_p = cfg.samples, int(encoder.cfg.embedding_dim), float(encoder.head[0].p)
        weights_sha = file_sha256(ckpt_path)
    else:
        encoders = [m[0] for m in members]
        proto = encoder_ensemble.export_encoder_ensemble(encoders, cfg.opset)
        try:
            parity = encoder_ensemble.check_ensemble_parity(proto, encoders, parity_images, _session, _run)
        except ValueError as e:
            raise ExportError(str(e)) from None
        samples, dim, dropout_p = len(encoders), len(encoders) * int(encoder.cfg.embedding_dim), None
        weights_sha = _digest_of([m[2] for m in members])
    if cfg.weights == "fp16":
        proto16 = graphs.store_weights_fp16(proto)
        fixed = (lambda p: graphs.with_dropout_p(p, 0.0)) if cfg.method == "mc" else (lambda p: p)  # deterministic
        det = [_run(_session(fixed(p)), parity_images) for p in (proto, proto16)]
        parity["fp16_max_abs_vs_fp32"] = float(np.abs(det[0] - det[1]).max())
        if parity["fp16_max_abs_vs_fp32"] > FP16_ATOL:
            raise ExportError("float16 weights move the embeddings too far; use --weights fp32")
        proto = proto16
    log.info("encoder parity OK: %s", parity)

    ort.set_seed(cfg.seed)
    norm, norm_info = None, {"type": "none"}
    if score_norm == "as-norm":
        from .score_norm import fit_score_norm

        norm, norm_info = fit_score_norm(_session(proto), data)
    calibration, thresholds, val_report, e = calibrate_encoder(_session(proto), data, cfg, norm, norm_info)
    contract = ModelContract(
        features=feature_contract(), method=cfg.method, samples=samples, thresholds=thresholds,
        uncertainty_measure=cfg.measure, labels=["other_voice", "enrolled_voice"],
        architecture="compact-encoder" if cfg.method == "mc" else f"compact-encoder-ensemble-{samples}",
        dropout_p=dropout_p,
        corpus={"corpora": {k: {kk: vv for kk, vv in v.items() if kk != "validation"}
                            for k, v in summary.get("per_corpus", {}).items()},
                "training_speakers": summary.get("speakers", []),
                "validation_speakers": summary.get("validation_speakers", []),
                "training_windows": summary.get("windows"), "run": run.name,
                "runs": [r.name for r in runs]},
        metrics={"validation": val_report, "parity": parity, "backend": backend_info,
                 "score_norm": {k: v for k, v in norm_info.items() if k != "cohort"},
                 "training": {"epochs": ckpt.get("epoch"), "history": _short_history(ckpt.get("history", []))},
                 "members": [{"run": r.name, "seed": m[1].get("train_config", {}).get("seed"),
                              "distill_weight": m[1].get("train_config", {}).get("distill_weight"),
                              "epochs": m[1].get("epoch"), "seconds": m[1].get("seconds"),
                              "weights_sha256": file_sha256(m[2])} for r, m in zip(runs, members)]},
        weights_sha256=weights_sha,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        voicegate_version=voicegate.__version__,
        extra={"export_config": cfg.to_dict(), "encoder_config": encoder.cfg.to_dict(), "checkpoint": checkpoint,
               "train_config": {k: v for k, v in ckpt.get("train_config", {}).items() if k not in ("data", "out")}},
        kind="encoder", embedding_dim=dim, calibration=calibration,
    )
    digest, _ = write_verified(proto, contract, out, Encoder.load)
    pol, sc = val_report["policy"], val_report.get("cosine") or val_report["as_norm_score"]
    print(f"encoder {cfg.method}: {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {digest[:12]}...)  "
          f"a={calibration['a']:.3f} b={calibration['b']:.3f}  accept={thresholds.accept:.4f} "
          f"limit={thresholds.uncertainty_limit:.4f} deny={thresholds.deny:.4f}  "
          f"val {'cosine' if norm is None else 'AS-norm'} EER {e:.2%}  "
          f"FAR={pol['far']:.3f} FRR={pol['frr']:.3f} uncertain(genuine)={pol['allowed']['UNCERTAIN']:.3f}  "
          f"({sc['genuine_trials']} genuine / {sc['impostor_trials']} impostor trials)")
    return out


def _digest_of(paths: list) -> str:
    """One sha256 over the members' checkpoint digests, in order."""
    import hashlib

    from voicegate.device.model_files import file_sha256

    return hashlib.sha256("".join(file_sha256(p) for p in paths).encode()).hexdigest()


def _short_history(history: list) -> list:
    return [{k: h.get(k) for k in ("epoch", "aam_loss", "distill_loss", "train_accuracy", "elapsed_s")}
            | {"val_eer": h.get("val", {}).get("all", {}).get("eer")} for h in history]


# --- CLI (`voicegate export` for both kinds) -----------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from .onnx_export import add_arguments as classifier_arguments

    classifier_arguments(p)
    p.add_argument("--backend", choices=("none", "wccn"), default="none",
                   help="encoder runs: a linear back-end folded into the graph: wccn = within-class covariance "
                        "normalisation fitted on the training windows (better EER on people, but it grants "
                        "synthetic voices: see export/backend.py); default %(default)s")
    p.add_argument("--score-norm", choices=("none", "as-norm"), default="none",
                   help="encoders: adaptive score normalisation against a cohort of the training speakers, "
                        "stored in the model, with the calibration and thresholds refitted on normalised "
                        "scores; RUN may then also be an exported encoder .onnx, re-scored without its run "
                        "folder (needs --cache). Better EER on people, but it lets a voice-like buzz in "
                        "(export/score_norm.py); default %(default)s")
    p.add_argument("--checkpoint", default="checkpoint.pt",
                   help="encoder runs: checkpoint.pt (last epoch, default) or best.pt (lowest validation EER)")


def run(args: argparse.Namespace) -> int:
    """Encoder runs (``encoder-run.json``) export here; classifier runs go to onnx_export."""
    from voicegate.train.commands import error_text, failure_exit

    from . import onnx_export

    if Path(args.out).suffix != ".onnx":  # before any work, as every export path would refuse it
        print(f"voicegate export: --out must name a .onnx file, got {args.out}", file=sys.stderr)
        return 2
    runs = [args.run] if isinstance(args.run, str) else list(args.run)
    if len(runs) == 1 and str(runs[0]).endswith(".onnx"):  # an exported encoder, re-scored
        from .score_norm import run_rescore

        return run_rescore(runs[0], args)
    if not is_encoder_run(runs[0]):
        if len(runs) != 1:
            print("voicegate export: a classifier run is one folder (its members are inside it)", file=sys.stderr)
            return 2
        encoder_only = [f for f, v in (("--backend", args.backend), ("--score-norm", args.score_norm)) if v != "none"]
        if encoder_only:  # they would be ignored: say so rather than write a model without them
            print(f"voicegate export: {', '.join(encoder_only)} applies to encoder runs; {runs[0]} is a "
                  "classifier run", file=sys.stderr)
            return 2
        args.run = runs[0]
        return onnx_export.run(args)
    if not all(is_encoder_run(r) for r in runs):
        print("voicegate export: every RUN of an encoder ensemble must be an encoder run", file=sys.stderr)
        return 2
    cfg = onnx_export.ExportConfig(method=args.method, samples=args.samples, target_far=args.target_far,
                                   opset=args.opset, measure=args.measure, placement=args.placement,
                                   uncertainty_quantile=args.uncertainty_quantile, weights=args.weights)
    if cfg.samples < 2 or not 0.0 <= cfg.target_far < 1.0:
        print("voicegate export: --samples must be >= 2 and --target-far in [0, 1)", file=sys.stderr)
        return 2
    try:
        export_encoder(runs, args.out, cfg, cache=args.cache, checkpoint=args.checkpoint, backend=args.backend,
                       score_norm=args.score_norm)
    except Exception as e:  # one line, and the training side's exit code (2 usage, 1 failure)
        print(f"voicegate export: {error_text(e)}", file=sys.stderr)
        log.debug("encoder export failed", exc_info=True)
        return failure_exit(e)
    return 0
