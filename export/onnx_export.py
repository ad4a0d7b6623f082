"""`voicegate export RUN --out models/NAME.onnx`: a trained run -> device ONNX models.

For each method (``--method mc|ensemble|both``; ``both`` writes ``NAME-mc.onnx`` and
``NAME-ensemble.onnx``):

1. build the graph (:mod:`voicegate.export.graphs`): MC dropout with T live masks from one
   member (``--member``, default 0), or all K members side by side;
2. check parity with torch on real validation windows, and fail (exit 1) if it does not hold:
   MC with its dropout rate set to 0 must match torch eval within 1e-4, the MC mean over many
   samples must match torch's MC mean within sampling error, and the samples must vary under
   onnxruntime's default session options; the ensemble must match torch eval within 1e-4;
   with ``--weights fp16`` the weights are then stored as float16 (half the file, computed in
   float32) and the graph must stay within FP16_ATOL of the float32 one;
3. choose the thresholds on the validation split (:mod:`voicegate.export.thresholds`), running
   the exported graph through onnxruntime one utterance per batch, as the device does;
4. write the model with its contract in ``metadata_props``, a ``NAME.onnx.sha256`` sidecar,
   and the folder's ``manifest.json``; then reload it through the device runtime.

Nothing heavy is imported at module level (the CLI builds ``--help`` from this module).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .writing import ExportError, ExportInputError, output_paths, weights_digest, write_verified

log = logging.getLogger(__name__)

METHOD_CHOICES = ("mc", "ensemble", "both")
PARITY_ATOL = 1e-4  # max |p_onnx - p_torch| with dropout off / for the ensemble
MC_MEAN_SIGMAS = 6.0  # MC means may differ by this many standard errors (plus MC_MEAN_ATOL)
MC_MEAN_ATOL = 1e-3
MC_PARITY_ROUNDS = 20  # onnxruntime runs (of T samples each) for the MC-mean comparison
FP16_ATOL = 5e-3  # max |p_fp16 - p_fp32| for a graph whose weights are stored as float16


@dataclass
class ExportConfig:
    method: str = "mc"  # mc | ensemble | both
    samples: int = 50  # T MC samples
    target_far: float = 0.01  # accept threshold: FAR on not-allowed validation utterances
    opset: int = 17
    member: int = 0  # the run member that becomes the MC model
    measure: str = "std"  # the uncertainty measure that decides
    uncertainty_quantile: float = 0.95
    deny_quantile: float = 0.01
    placement: str = "midpoint"  # accept threshold: midpoint of the validation gap, or the FAR bound
    utterance_windows: int = 0  # 0: a validation utterance = a whole recording (<= runtime cap)
    parity_windows: int = 32  # real validation windows for the parity checks
    seed: int = 0  # seeds onnxruntime's masks during threshold selection (reproducible export)
    weights: str = "fp32"  # fp16: store weights as float16 (half the file; computed in float32)

    def to_dict(self) -> dict:
        return asdict(self)

    def methods(self) -> list[str]:
        return ["mc", "ensemble"] if self.method == "both" else [self.method]


# --- validation utterances -------------------------------------------------------------------
def runtime_window_cap() -> int:
    """How many windows the runtime looks at, at most, for one utterance."""
    from voicegate.device.features import INFER_HOP_SECONDS, MAX_UTTERANCE_SECONDS, WINDOW_SECONDS

    return 1 + int((MAX_UTTERANCE_SECONDS - WINDOW_SECONDS) // INFER_HOP_SECONDS)


def _column(index, name: str) -> np.ndarray:
    return np.asarray(index.column(name) if hasattr(index, "column") else index[name])


def validation_utterances(corpus, utterance_windows: int = 0) -> list[tuple[str, int, np.ndarray]]:
    """(recording, label, float32 (n, 224, 224) windows) for every validation utterance.

    Validation windows are cut every ``eval_hop_seconds`` of the preparation (the device's
    INFER_HOP_SECONDS by default); should that differ, every k-th window is taken so the hop is
    the runtime's. A recording is capped at the runtime's window count; with
    ``utterance_windows`` > 0 each recording is instead cut into utterances of that many windows.
    """
    from voicegate.device.features import INFER_HOP_SECONDS

    index = corpus.index
    rows = np.asarray(corpus.indices("val", aug=False), dtype=np.int64)
    if rows.size == 0:
        raise ExportInputError("the corpus has no validation windows to choose thresholds on")
    if "heldout_impostors" in set(_column(index, "role").astype(str)[rows]):
        raise ExportInputError("held-out impostors in the validation split: refusing to choose thresholds on them")
    recordings = _column(index, "recording").astype(str)[rows]
    labels = _column(index, "label").astype(np.int64)[rows]
    starts = _column(index, "start_s").astype(np.float64)[rows]
    items = _column(index, "item").astype(str)[rows]
    hop = float((getattr(corpus, "meta", None) or {}).get("config", {}).get("eval_hop_seconds", INFER_HOP_SECONDS))
    stride = max(1, int(round(INFER_HOP_SECONDS / hop)))
    cap = runtime_window_cap()
    out = []
    for rec in dict.fromkeys(recordings):  # first-seen order
        sel = np.flatnonzero(recordings == rec)
        mine = rows[sel[np.lexsort((starts[sel], items[sel]))]][::stride]  # by item, then time
        label = int(labels[sel[0]])
        groups = (
            [mine[i : i + utterance_windows] for i in range(0, mine.size, utterance_windows)]
            if utterance_windows > 0
            else [mine[:cap]]
        )
        for g in groups:
            out.append((rec, label, np.asarray(corpus.images[g], dtype=np.float32)))
    return out


# --- parity checks -----------------------------------------------------------------------------
def _session(proto):
    from voicegate.device.runtime import make_session

    return make_session(proto.SerializeToString(), threads=1)


def check_mc_parity(proto, model, images: np.ndarray, samples: int) -> dict:
    """Raise ExportError unless the MC graph reproduces ``model`` (see the module docstring)."""
    import torch

    from voicegate.device.runtime import run_session

    from .graphs import MCDropoutGraph, with_dropout_p

    x = torch.from_numpy(np.asarray(images, np.float32)[:, None])
    with torch.no_grad():
        ref = torch.softmax(model.eval()(x), dim=-1)[:, 1].numpy()
    off = run_session(_session(with_dropout_p(proto, 0.0)), images)
    err_off = float(np.abs(off - ref[:, None]).max())
    if err_off > PARITY_ATOL:
        raise ExportError(f"MC parity failed: with dropout off, max |onnx - torch| = {err_off:.2e} > {PARITY_ATOL}")

    session = _session(proto)
    onnx_s = np.concatenate([run_session(session, images) for _ in range(MC_PARITY_ROUNDS)], axis=1)
    graph = MCDropoutGraph(model, samples).eval()
    torch_s = torch.cat([graph.torch_samples(x) for _ in range(MC_PARITY_ROUNDS)], dim=1).numpy()
    n = onnx_s.shape[1]
    se = np.sqrt((onnx_s.var(axis=1) + torch_s.var(axis=1)) / n)
    diff = np.abs(onnx_s.mean(axis=1) - torch_s.mean(axis=1))
    bad = diff > MC_MEAN_SIGMAS * se + MC_MEAN_ATOL
    if bad.any():
        raise ExportError(
            f"MC parity failed: the onnx MC mean differs from torch's on {int(bad.sum())} of "
            f"{len(bad)} windows (max diff {diff.max():.4f})"
        )
    torch_varies = float(torch_s.std(axis=1).max())
    onnx_varies = float(onnx_s.std(axis=1).max())
    if torch_varies > 1e-6 and onnx_varies <= 1e-7:
        raise ExportError("MC parity failed: onnxruntime gives identical samples (the dropout was optimised away)")
    return {"max_abs_dropout_off": err_off, "max_mc_mean_diff": float(diff.max()),
            "mc_samples_compared": int(n), "onnx_sample_std_max": onnx_varies}


def check_ensemble_parity(proto, models: list, images: np.ndarray) -> dict:
    import torch

    from voicegate.device.runtime import run_session

    from .graphs import EnsembleGraph

    x = torch.from_numpy(np.asarray(images, np.float32)[:, None])
    with torch.no_grad():
        ref = EnsembleGraph(models).eval()(x).numpy()
    got = run_session(_session(proto), images)
    err = float(np.abs(got - ref).max())
    if got.shape != ref.shape or err > PARITY_ATOL:
        raise ExportError(f"ensemble parity failed: max |onnx - torch| = {err:.2e} > {PARITY_ATOL}")
    return {"max_abs": err}


def check_fp16(proto32, proto16, images: np.ndarray) -> float:
    """Max |p| difference between a graph and its float16-stored copy (MC with dropout off)."""
    from voicegate.device.runtime import run_session

    from .graphs import DROPOUT_P_NAME, with_dropout_p

    def det(proto):
        is_mc = any(i.name == DROPOUT_P_NAME for i in proto.graph.initializer)
        return with_dropout_p(proto, 0.0) if is_mc else proto

    a = run_session(_session(det(proto32)), images)
    b = run_session(_session(det(proto16)), images)
    err = float(np.abs(a - b).max())
    if err > FP16_ATOL:
        raise ExportError(f"float16 weights change p(allowed) by up to {err:.2e} (> {FP16_ATOL}); use --weights fp32")
    return err


# --- the export ------------------------------------------------------------------------------
def open_corpus(data_config: dict, cache: str | None = None):
    """The prepared corpus a run was trained on (``cache`` overrides the checkpoint's).

    The stored data config's cache folder is opened as it is when it exists; otherwise the
    config is prepared again (which reuses a matching cache).
    """
    from voicegate.train.data import prepare

    if cache:
        return prepare.PreparedCorpus.open(cache)
    stored = data_config.get("cache_dir") or data_config.get("cache")
    if stored and (Path(stored) / "meta.json").is_file():
        return prepare.PreparedCorpus.open(stored)
    try:
        cfg = prepare.PrepareConfig.from_dict(data_config)
    except (TypeError, ValueError) as e:
        raise ExportInputError(f"cannot rebuild the run's corpus from its data config ({e}); pass --cache") from None
    return prepare.prepare_corpus(cfg)


def refuse_other_featurizer(rendered, what: str) -> None:
    """ExportError unless ``rendered`` (the feature contract a cache recorded) is this voicegate's:
    the thresholds are chosen on the cache's validation windows, so they must be the windows the
    device would select and render."""
    from voicegate.device.features import feature_contract

    if rendered != feature_contract():
        raise ExportInputError(f"{what} was prepared by another featurizer (speech detector or spectrogram "
                               "settings): prepare it again and pass --cache")


def training_corpus(corpus, data_config: dict, roles: dict) -> dict:
    """The contract's corpus section: the corpus by name, the preparation config without paths,
    the roles, and the fingerprint (manifest sha256, recording ids per split) of the windows the
    run saw (the pure non-speech windows are not recordings of the corpus)."""
    from voicegate.train.data.build import NONSPEECH_ROLE
    from voicegate.train.data.fingerprint import fingerprint, portable_data_config

    meta = getattr(corpus, "meta", None) or {}
    root = Path(str(meta.get("corpus") or data_config.get("corpus") or "corpus"))
    fp = meta.get("fingerprint")
    if fp is None:  # a cache prepared before fingerprints: the recordings that gave windows
        index = corpus.index
        keep = np.asarray(index.role).astype(str) != NONSPEECH_ROLE
        fp = fingerprint(root, zip(np.asarray(index.recording)[keep], np.asarray(index.split)[keep]))
    portable = portable_data_config(data_config)
    return {"name": portable.get("corpus") or root.name, "data_config": portable, "roles": roles,
            "fingerprint": fp}


def _run_members(run_dir: Path) -> tuple[dict, list, list[Path]]:
    from voicegate.train.models.trainer import CHECKPOINT_NAME, load_run

    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    members = load_run(run_dir)
    name = info.get("checkpoint", CHECKPOINT_NAME)
    paths = [run_dir / m / name for m in info.get("members", [])]
    return info, members, paths


def _training_metrics(run_dir: Path) -> dict:
    """The run's own summary (ensemble.json), without per-speaker detail, for the contract."""
    path = run_dir / "ensemble.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    text = json.dumps(data)
    return data if len(text) < 64_000 else {"note": "ensemble.json too large to embed", "bytes": len(text)}


def export_run(run_dir, out, cfg: ExportConfig, corpus=None, cache: str | None = None) -> dict[str, Path]:
    """Export ``run_dir`` as ``cfg`` says; returns {method: written path}. Raises ExportError."""
    import onnxruntime as ort

    import voicegate
    from voicegate.device.contract import LABELS, ModelContract
    from voicegate.device.features import feature_contract
    from voicegate.device.runtime import Gate, run_session

    from . import graphs
    from .thresholds import choose_thresholds, utterance_stats

    run_dir = Path(run_dir)
    info, members, ckpt_paths = _run_members(run_dir)
    if not members:
        raise ExportInputError(f"{run_dir}: the run has no members")
    model_cfg = members[0][1].get("model_config", {})
    want_fv = model_cfg.get("feature_version")
    if want_fv and want_fv != feature_contract()["feature_version"]:
        raise ExportInputError(f"the run was trained on features {want_fv!r}, this voicegate renders "
                               f"{feature_contract()['feature_version']!r}; retrain or use the matching version")
    methods = cfg.methods()
    if "ensemble" in methods and len(members) < 2:
        raise ExportInputError(f"{run_dir}: an ensemble export needs >= 2 members, the run has {len(members)}")
    if not 0 <= cfg.member < len(members):
        raise ExportInputError(f"--member {cfg.member}: the run has members 0..{len(members) - 1}")
    paths = output_paths(Path(out), methods)
    ckpt = members[0][1]
    if corpus is None:
        corpus = open_corpus(ckpt.get("data_config", {}), cache)
    rendered = (getattr(corpus, "meta", None) or {}).get("feature_contract")
    if rendered is not None:  # a corpus object built in memory (tests) records none
        refuse_other_featurizer(rendered, "the prepared corpus")
    utterances = validation_utterances(corpus, cfg.utterance_windows)
    parity_images = np.concatenate([u[2] for u in utterances])[: cfg.parity_windows]
    roles = ckpt.get("roles") or info.get("roles") or {}
    data_config = ckpt.get("data_config") or info.get("data_config") or {}
    corpus_section = training_corpus(corpus, data_config, roles)
    image_size = int(model_cfg.get("image_size", 224))

    written = {}
    for method in methods:
        if method == "mc":
            model = members[cfg.member][0]
            proto = graphs.export_mc(model, cfg.samples, cfg.opset, image_size)
            parity = check_mc_parity(proto, model, parity_images, cfg.samples)
            samples, dropout_p = cfg.samples, graphs.head_parts(model)[0]
            weights_sha = weights_digest(ckpt_paths[cfg.member : cfg.member + 1]) if ckpt_paths else ""
        else:
            models = [m for m, _ in members]
            proto = graphs.export_ensemble(models, cfg.opset, image_size)
            parity = check_ensemble_parity(proto, models, parity_images)
            samples, dropout_p = len(models), None
            weights_sha = weights_digest(ckpt_paths) if ckpt_paths else ""
        if cfg.weights == "fp16":
            proto16 = graphs.store_weights_fp16(proto)
            parity["fp16_max_abs_vs_fp32"] = check_fp16(proto, proto16, parity_images)
            proto = proto16
        log.info("%s parity OK: %s", method, parity)

        ort.set_seed(cfg.seed)
        session = _session(proto)
        stats = utterance_stats(lambda im: run_session(session, im), (u[2] for u in utterances))
        pos = [s for s, u in zip(stats, utterances) if u[1] == 1]
        neg = [s for s, u in zip(stats, utterances) if u[1] == 0]
        try:
            thresholds, val_report = choose_thresholds(
                pos, neg, cfg.target_far, cfg.measure, cfg.uncertainty_quantile, cfg.deny_quantile,
                placement=cfg.placement)
        except ValueError as e:
            raise ExportError(f"threshold selection failed: {e}") from None
        contract = ModelContract(
            features=feature_contract(),
            method=method,
            samples=samples,
            thresholds=thresholds,
            uncertainty_measure=cfg.measure,
            labels=list(LABELS),
            architecture=str(model_cfg.get("arch", info.get("arch", ""))),
            dropout_p=dropout_p,
            corpus={**corpus_section, "run": run_dir.name, "validation_utterances": len(utterances)},
            metrics={"validation": val_report, "parity": parity, "training": _training_metrics(run_dir)},
            weights_sha256=weights_sha,
            created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            voicegate_version=voicegate.__version__,
            extra={"export_config": cfg.to_dict(), "model_config": model_cfg, "member": cfg.member if method == "mc" else None},
        )
        path = paths[method]
        digest, _ = write_verified(proto, contract, path, Gate.load)
        pol = val_report["policy"]
        print(f"{method}: {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {digest[:12]}...)  "
              f"accept={thresholds.accept:.4f} limit={thresholds.uncertainty_limit:.4f} deny={thresholds.deny:.4f}  "
              f"val FAR={pol['far']:.3f} FRR={pol['frr']:.3f} "
              f"uncertain(allowed)={pol['allowed']['UNCERTAIN']:.3f}")
        written[method] = path
    return written


# --- CLI ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ExportConfig()
    p.add_argument("run", metavar="RUN", nargs="+",
                   help="a training run folder (runs/NAME with run.json or encoder-run.json); an encoder "
                        "ensemble (--method ensemble): two or more encoder runs trained with different --seed")
    p.add_argument("--out", required=True, help="the .onnx file to write (models/NAME.onnx); "
                   "with --method both: NAME-mc.onnx and NAME-ensemble.onnx")
    p.add_argument("--method", choices=METHOD_CHOICES, default=d.method, help="default %(default)s")
    p.add_argument("--samples", type=int, default=d.samples, help="T MC-dropout samples (default %(default)s)")
    p.add_argument("--target-far", type=float, default=d.target_far,
                   help="false-accept rate on validation that sets the accept threshold (default %(default)s)")
    p.add_argument("--opset", type=int, default=d.opset, help="ONNX opset (default %(default)s)")
    p.add_argument("--member", type=int, default=d.member, help="run member for the MC model (default %(default)s)")
    p.add_argument("--measure", choices=("std", "entropy", "mutual_info"), default=d.measure,
                   help="the uncertainty measure that decides (default %(default)s)")
    p.add_argument("--uncertainty-quantile", type=float, default=d.uncertainty_quantile,
                   help="uncertainty limit = this quantile over correctly accepted allowed val utterances")
    p.add_argument("--placement", choices=("midpoint", "far"), default=d.placement,
                   help="accept threshold: 'far' = the lowest p with validation FAR <= target; "
                   "'midpoint' = halfway from there to the 5%% quantile of allowed p (default %(default)s)")
    p.add_argument("--utterance-windows", type=int, default=d.utterance_windows,
                   help="cut validation recordings into utterances of N windows (0 = whole recording)")
    p.add_argument("--weights", choices=("fp32", "fp16"), default=d.weights,
                   help="fp16 stores the weights as float16: half the file, still computed in float32 "
                   "(default %(default)s)")
    p.add_argument("--cache", help="prepared corpus cache (default: the one the run was trained on)")


def run(args: argparse.Namespace) -> int:
    cfg = ExportConfig(
        method=args.method, samples=args.samples, target_far=args.target_far, opset=args.opset,
        member=args.member, measure=args.measure, uncertainty_quantile=args.uncertainty_quantile,
        utterance_windows=args.utterance_windows, weights=args.weights, placement=args.placement,
    )
    problem = None
    if cfg.samples < 2:
        problem = "--samples must be at least 2"
    elif not 0.0 <= cfg.target_far < 1.0:
        problem = "--target-far must be in [0, 1)"
    elif cfg.utterance_windows < 0:
        problem = "--utterance-windows must be >= 0"
    if problem:
        print(f"voicegate export: {problem}", file=sys.stderr)
        return 2
    try:
        export_run(args.run, args.out, cfg, cache=args.cache)
    except Exception as e:  # one line, and the training side's exit code (2 usage, 1 failure)
        from voicegate.train.commands import error_text, failure_exit

        print(f"voicegate export: {error_text(e)}", file=sys.stderr)
        log.debug("export failed", exc_info=True)
        return failure_exit(e)
    return 0
