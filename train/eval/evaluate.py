"""``voicegate eval``: closed-set and open-set security figures, through the device runtime.

Every figure comes from the gate the device runs (:class:`voicegate.device.runtime.Gate`) on
audio, not from cached training windows:

1. **Which audio.** The corpus, its roles and its split are rebuilt from the model's contract
   (the preparation config training used: corpus path, seed, split fractions, role overrides)
   with the training side's own loader and split (:func:`~voicegate.train.data.corpus.load_corpus`,
   :func:`~voicegate.train.data.splits.split_recordings`), so the split is the training split.
   *Closed set*: the ``--split`` (default test) recordings of the allowed and the not-allowed
   training speakers (the study's protocol: known speakers, unseen recordings). *Open set*: every
   recording of the held-out impostors, voices the model has never heard.
2. **Attempts.** Each recording is loaded, its speech selected by the device's speech detector
   (:func:`~voicegate.device.speech.speech_only`), and that speech is cut
   into consecutive, non-overlapping attempts of ``--attempt-seconds`` (default 3 s, about what a
   person says at a door: "it's me, open please"). A shorter tail is dropped; a recording with
   less speech than one attempt (but at least ``min_attempt_seconds``) is one shorter attempt.
3. **Decisions.** Each attempt goes through the device featurizer
   (:func:`~voicegate.device.features.featurize`: speech frames, 2 s windows every 1 s, spectrograms)
   and then every model's gate (``Gate.predict`` + ``Gate.decide_samples``, which is what
   ``Gate.decide_audio`` does). The spectrograms of an attempt are rendered once and shared by
   all models (MC and ensemble). An attempt the featurizer rejects (no speech) is a failed
   attempt: no access, scored p = 0 (fail closed), and counted.

Figures, per model:

- closed set: accuracy, weighted F1, macro F1, balanced accuracy, ROC AUC and the confusion
  matrix, per window (mean of the T/K samples of one window), per attempt (= per utterance as
  the device sees it: the gate's p_allow) and per recording (mean over its windows), at the
  model's accept threshold and at 0.5 (the study's argmax);
- verification, with the allowed speakers' attempts as genuine and, separately, two impostor
  sets: the held-out impostors (open set) and the not-allowed training speakers' ``--split``
  recordings (closed set):
  * **plain decision** (accept iff p_allow >= accept threshold, no rejection): FAR and FRR at
    the shipped threshold, EER, per attempt and per window;
  * **rejecting policy** (the gate's GRANTED / DENIED / UNCERTAIN): FAR = impostor attempts
    GRANTED; FRR = genuine attempts not GRANTED (UNCERTAIN counts as a reject); the UNCERTAIN
    share; FAR and FRR **after one retry** (see :func:`after_one_retry`); and the EER of the
    policy swept over the accept threshold with the uncertainty limit fixed;
  * a DET curve (probit axes) per impostor set with every model and both policies.

The parts: :mod:`~voicegate.train.eval.protocol` (which audio), :mod:`~voicegate.train.eval.attempts`
(cutting and deciding), :mod:`~voicegate.train.eval.verification` (the figures),
:mod:`~voicegate.train.eval.plots` (DET) and :mod:`~voicegate.train.eval.markdown` (eval.md).
Nothing heavy is imported at module level (the CLI builds ``--help`` from this module).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from voicegate.device.options import POSITIVE_FLOAT, threads_count
from voicegate.train.data.fingerprint import summary

from voicegate.train.eval.attempts import FAILED, cut_attempts, load_gates, score_attempts
from voicegate.train.eval.plots import DET_FLOOR, det_curves_for, det_figure
from voicegate.train.eval.protocol import (
    IMPOSTOR_SETS,
    RETRY_RULE,
    EvalConfig,
    EvalError,
    check_fingerprint,
    contract_roles,
    evaluation_recordings,
    prepare_config_of,
)
from voicegate.train.eval.verification import (
    after_one_retry,
    model_report,
    plain_report,
    policy_report,
    rejecting_scores,
    wilson_interval,
)
from voicegate.train.eval.markdown import markdown

log = logging.getLogger(__name__)

# the names other evaluation modules and tests import from here (their homes are above)
__all__ = ["EvalConfig", "EvalError", "FAILED", "after_one_retry", "cut_attempts", "det_figure", "evaluate",
           "markdown", "plain_report", "policy_report", "rejecting_scores", "run", "wilson_interval"]


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation; write eval.json, eval.md and the DET PNGs to ``cfg.out`` if given."""
    if cfg.split not in ("test", "val"):
        raise EvalError(f"--split must be test or val, got {cfg.split!r}")
    if cfg.attempt_seconds <= 0:
        raise EvalError("--attempt-seconds must be > 0")
    t0 = time.perf_counter()
    from dataclasses import replace

    from voicegate.train.eval.encoder_eval import split_kinds

    classifiers, encoders = split_kinds(cfg.models)  # encoders join as household gates (household.py)
    gates = load_gates(replace(cfg, models=classifiers) if encoders else cfg)
    first = next(iter(gates.values()))
    prep_cfg = prepare_config_of(first.contract, cfg.corpus)
    roles = contract_roles(first.contract)
    for name, gate in gates.items():
        other = prepare_config_of(gate.contract, cfg.corpus)
        if (other.seed, tuple(other.split_fractions), contract_roles(gate.contract).get("allowed")) != (
            prep_cfg.seed, tuple(prep_cfg.split_fractions), roles.get("allowed")
        ):
            raise EvalError(f"{name}: trained with another split seed, fractions or allowed list "
                            "than the first model; evaluate them separately")
    corpus, items, here = evaluation_recordings(prep_cfg, roles, cfg.split)
    fingerprints = {name: check_fingerprint(gate.contract, here, cfg.allow_corpus_change)
                    for name, gate in gates.items() if gate.contract.kind == "classifier"}
    if encoders:
        from voicegate.train.eval.household import household_gates

        gates.update(household_gates(encoders, corpus, prep_cfg, cfg.threads))
    if not any(r == "allowed" for _, r, _ in items):
        raise EvalError(f"no allowed speaker's {cfg.split} recordings in {corpus.root}")
    attempts, scores, info = score_attempts(gates, items, cfg, prep_cfg, corpus.root)
    if not len(attempts):
        raise EvalError("no attempt could be cut from the evaluation recordings")

    per_role = {}
    for role in ("allowed", "not_allowed_train", "heldout_impostors"):
        rows = [i for i, r in enumerate(attempts.role) if r == role]
        per_role[role] = {
            "speakers": len({attempts.speaker[i] for i in rows}),
            "recordings": len({attempts.recording[i] for i in rows}),
            "attempts": len(rows),
            "windows": int(sum(attempts.windows[i] for i in rows)),
        }
    feat = np.asarray(info.pop("featurize_ms"), np.float64)
    nonspeech = None
    if cfg.nonspeech:
        from voicegate.train.data.augment import find_noise_dir
        from voicegate.train.eval import nonspeech as NS

        noise_dir = find_noise_dir(corpus.root, prep_cfg.noise_dir if prep_cfg.noise_dir else "auto")
        clips = NS.nonspeech_attempts(noise_dir, cfg.attempt_seconds)
        nonspeech = {"protocol": NS.protocol(noise_dir, clips, cfg.attempt_seconds),
                     "models": NS.score_nonspeech(gates, clips)}
    result = {
        "config": cfg.to_dict(),
        "protocol": {
            "corpus": corpus.root.name,
            "corpus_fingerprint": {"here": summary(here), "per_model": fingerprints},
            "layout": corpus.layout,
            "split_seed": prep_cfg.seed,
            "split_fractions": list(prep_cfg.split_fractions),
            "closed_set_split": cfg.split,
            "roles": {k: len(v) for k, v in corpus.roles.to_dict().items()},
            "allowed": list(corpus.roles.allowed),
            "attempt_seconds": cfg.attempt_seconds,
            "attempt": (f"the detected speech cut into consecutive {cfg.attempt_seconds:g} s attempts; the "
                        f"shorter tail is dropped; a recording with {cfg.min_attempt_seconds:g} s to one "
                        "attempt of speech is one shorter attempt"),
            "retry": RETRY_RULE,
            "note": ("splits are by recording; recordings of one speaker may share a session "
                     "(a LibriSpeech chapter), so closed-set figures can be optimistic; the open "
                     "set is the security figure"),
        },
        "counts": per_role,
        "data": {**info, "speech_seconds": round(info["speech_seconds"], 1),
                 "featurize_ms_median": float(np.median(feat)) if feat.size else None},
        "models": {name: model_report(name, gates[name], attempts, scores[name]) for name in gates},
        "nonspeech": nonspeech,
        "files": {},
        "seconds": None,
    }
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        for key, what in IMPOSTOR_SETS.items():
            curves = det_curves_for(key, gates, attempts, scores)
            if curves:
                title = (f"DET, {corpus.root.name}: allowed vs {what}\n(attempts of {cfg.attempt_seconds:g} s; "
                         f"dots: shipped threshold; a rate of 0 is drawn at {100 * DET_FLOOR:g} %)")
                result["files"][f"det_{key}"] = det_figure(curves, title, out / f"det_{key}.png").name
        result["files"]["json"] = "eval.json"
        result["files"]["markdown"] = "eval.md"
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if cfg.out:
        (out / "eval.md").write_text(markdown(result))
        (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EvalConfig()
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="exported .onnx model(s), e.g. an MC model and an ensemble "
                        "(default: the shipped models picked by --method)")
    p.add_argument("--method", choices=("mc", "ensemble", "both"), default=d.method,
                   help="with no MODEL: which shipped models to evaluate (default %(default)s)")
    p.add_argument("--corpus", help="corpus folder (default: the training corpus named in the model's contract)")
    p.add_argument("--split", choices=("test", "val"), default=d.split,
                   help="closed-set split of the known speakers (default %(default)s)")
    p.add_argument("--attempt-seconds", type=POSITIVE_FLOAT, default=d.attempt_seconds,
                   help="seconds of detected speech per door attempt (default %(default)s)")
    p.add_argument("--threads", type=threads_count, default=d.threads, help="onnxruntime threads (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="onnxruntime seed for the MC masks (default %(default)s)")
    p.add_argument("--out", help="write eval.json, eval.md and DET curve PNGs to this folder")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the Markdown tables")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-corpus-change", action="store_true",
                   help="evaluate even when the corpus differs from the model's training corpus "
                        "(fingerprint mismatch: loudly warned, recorded in the result)")
    p.add_argument("--no-nonspeech", action="store_true",
                   help="skip the non-speech attempts (shared noise + generated noise)")
    from voicegate.train.eval.encoder_eval import add_encoder_arguments

    add_encoder_arguments(p)  # an encoder model alone: the enrolment protocol (encoder_eval.py)


def run(args: argparse.Namespace) -> int:
    from voicegate.device.contract import ModelError
    from voicegate.train.commands import error_text, failure_exit

    from voicegate.train.data.corpus import CorpusError
    from voicegate.train.eval import encoder_eval

    if args.models and not encoder_eval.split_kinds(args.models)[0]:  # encoders only
        return encoder_eval.run(args)
    given = encoder_eval.encoder_options_given(args)
    if given:  # the study's protocol has no enrolment, channels or peer: say so, never ignore them
        print(f"voicegate eval: {', '.join(given)} applies to encoder models (the enrolment protocol); "
              "a classifier is evaluated by the study's protocol, on clean audio", file=sys.stderr)
        return 2
    cfg = EvalConfig(
        models=list(args.models), method=args.method, corpus=args.corpus, split=args.split,
        attempt_seconds=args.attempt_seconds, threads=args.threads, seed=args.seed, out=args.out,
        progress=not args.no_progress, allow_corpus_change=args.allow_corpus_change,
        nonspeech=not args.no_nonspeech,
    )
    try:
        result = evaluate(cfg)
    except (EvalError, ModelError, CorpusError, FileNotFoundError, ValueError) as e:
        print(f"voicegate eval: {error_text(e)}", file=sys.stderr)
        log.debug("eval failed", exc_info=True)
        return failure_exit(e)
    print(json.dumps(result, indent=1) if args.json else markdown(result))
    return 0
