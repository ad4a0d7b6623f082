"""Does score normalisation or a linear back-end help the encoder? Measured, as JSON (issue 12).

    python benchmarks/score_norm.py --model models/voicegate-encoder-mc.onnx \
        --corpus ../shared/data/speechocean762 --cache cache/encoder-v2 --out benchmarks/score-norm \
        --channels all

On the enrolment protocol's trials (``voicegate eval``'s: the corpus's allowed and held-out
speakers, never heard by the encoder, enrolled from <= 30 s, 3 s attempts; clean, and with
``--channels`` through each same-microphone channel as well), the same embeddings
are scored five ways and each gets its EER and FRR at FAR 1 %, with the trial counts:

* ``raw``: the device's rule (mean over the samples of the cosine with the profile centroid);
* ``as_norm_top_N``: adaptive symmetric normalisation against a cohort, for N = 50, 100, 200, all:
  ``0.5 * ((s - mu_a) / sd_a + (s - mu_p) / sd_p)`` with mu, sd over the N cohort speakers
  closest to the attempt (a) and to the profile (p);
* ``z_norm_top_N``: the profile's half of AS-norm alone, ``(s - mu_p) / sd_p`` (N = 50, all):
  a per-profile rescaling of the cosine, blind to the attempt's own cohort neighbours;
* ``centred``: cosine after subtracting the cohort mean;
* ``wccn``: within-class covariance normalisation fitted on the training windows.

The cohort and the WCCN statistics come from the encoder's TRAINING speakers (the data cache
``voicegate train-encoder`` wrote: clean and first augmented version of each window), never from
the speakers evaluated. The benchmark needs the cache; `voicegate export --score-norm as-norm` puts the
top-50 AS-norm it measures into a model, for the device (export/score_norm.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def rates(score: np.ndarray, genuine: np.ndarray) -> dict:
    from voicegate.train.models.encoder import eer, frr_at_far

    g, i = score[genuine], score[~genuine]
    return {"eer": round(eer(g, i)[0], 4), "frr_at_far_1pct": round(frr_at_far(g, i, 0.01)[0], 4),
            "genuine_trials": int(g.size), "impostor_trials": int(i.size)}


def as_norm(s: np.ndarray, e: np.ndarray, C: np.ndarray, a_idx, p_idx, norm) -> np.ndarray:
    """The device's AS-norm (``device.scoring.ScoreNorm``) of the trials' raw scores ``s``: the
    attempts' mean embeddings ``e`` (A, D) and the profiles' centroids ``C`` (P, D) against the cohort."""
    ma, sa = norm.stats(e)
    mp, sp = norm.stats(C)
    return 0.5 * ((s - ma[a_idx]) / sa[a_idx] + (s - mp[p_idx]) / sp[p_idx])


def channel_scores(run, cohort: np.ndarray, X: np.ndarray, wccn: dict) -> dict:
    """The five scorings of one protocol run (one channel): EER and FRR at FAR 1 % each."""
    from voicegate.device.scoring import ScoreNorm, normalise

    E, C = run.attempt_embeddings, run.centroids  # (A, S, D), (P, D)
    a_idx, p_idx, gen = run.trials.attempt, run.trials.profile, run.trials.genuine
    ok = ~np.asarray([a["failed"] for a in run.attempts], bool)[a_idx]  # failed attempts: no score
    a_idx, p_idx, gen = a_idx[ok], p_idx[ok], gen[ok]
    e = normalise(E.mean(axis=1))  # the utterance's mean embedding
    raw = np.einsum("asd,pd->ap", normalise(E), C) / E.shape[1]
    s = raw[a_idx, p_idx]
    out = {"raw": rates(s, gen)}
    for top in (50, 100, 200, len(cohort)):
        name = f"as_norm_top_{top}" if top < len(cohort) else "as_norm_all"
        out[name] = rates(as_norm(s, e, C, a_idx, p_idx, ScoreNorm(cohort, top)), gen)
    for top in (50, len(cohort)):  # the profile's half alone: an attempt's own neighbours play no part
        mp, sp = ScoreNorm(cohort, top).stats(C)
        out[f"z_norm_top_{top}" if top < len(cohort) else "z_norm_all"] = rates((s - mp[p_idx]) / sp[p_idx], gen)
    mu = X.mean(0)
    out["centred"] = rates(np.einsum("ad,pd->ap", normalise(e - mu), normalise(C - mu))[a_idx, p_idx], gen)
    ew = normalise((normalise(E) - wccn["mu"]) @ wccn["transform"])
    cw = normalise((C - wccn["mu"]) @ wccn["transform"])
    out["wccn"] = rates(np.einsum("asd,pd->ap", ew, cw)[a_idx, p_idx] / E.shape[1], gen)
    return {"failed_attempts_left_out": int((~ok).sum()), "scores": out}


def measure(model: str, corpus: str, cache: str, channels=("clean",), progress: bool = True) -> dict:
    """Every scoring on every channel (enrolment and attempts through the same one)."""
    from voicegate.export.backend import fit_wccn
    from voicegate.export.score_norm import fit_cohort, training_window_embeddings
    from voicegate.train.data.encoder_data import EncoderData
    from voicegate.train.eval.encoder_eval import load_plans
    from voicegate.train.eval.enrolment import OnnxEmbedder, ProtocolConfig, run_protocol

    t0 = time.perf_counter()
    emb = OnnxEmbedder(model)
    _, plans, unseen = load_plans(Path(corpus), 0, (0.6, 0.2, 0.2), emb.contract)
    data = EncoderData(cache)
    X, Y = training_window_embeddings(emb.encoder.embed, data, progress=progress)
    cohort = fit_cohort(X, Y)  # one centroid per training speaker, as `voicegate export --score-norm` stores
    wccn = fit_wccn(X, Y)  # the back-end `voicegate export --backend wccn` builds in
    per_channel = {}
    for ch in channels:
        run = run_protocol(plans, emb, ProtocolConfig(corpus=str(corpus), channel=ch, progress=progress))
        per_channel[ch] = channel_scores(run, cohort, X, wccn)
    first = per_channel[channels[0]]
    return {
        "benchmark": "score normalisation and back-ends", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"file": Path(model).name, "sha256": emb.sha256, "method": emb.contract.method,
                  "samples": emb.samples},
        "corpus": Path(corpus).name, "channel": channels[0], "unseen_check": unseen,
        "cohort": {"from": "the encoder's training speakers (data cache, clean and first augmented "
                           "copy of each window), one centroid each", "speakers": int(len(cohort)), "windows": int(len(X))},
        "failed_attempts_left_out": first["failed_attempts_left_out"], "scores": first["scores"],
        "channels": per_channel, "seconds": round(time.perf_counter() - t0, 1),
    }


def write_result(result: dict, out, name: str) -> None:
    """Print the result as JSON and, with a folder ``out``, write it there as ``name``."""
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--cache", required=True, help="the encoder's training data cache (cohort and WCCN)")
    ap.add_argument("--out", help="folder for <corpus>-<model>.json (default: stdout only)")
    ap.add_argument("--channels", default="clean",
                    help="comma-separated: clean and/or telephone, cheap_mic, noisy_room, far_field, or 'all' "
                         "(default clean; 'scores' holds the first, 'channels' every one)")
    args = ap.parse_args(argv)
    from voicegate.train.data.channel import CHANNELS

    channels = ("clean", *CHANNELS) if args.channels == "all" else tuple(c.strip() for c in args.channels.split(","))
    unknown = [c for c in channels if c != "clean" and c not in CHANNELS]
    if unknown or not channels:
        ap.error(f"unknown channel(s) {', '.join(unknown)}; choose from clean, {', '.join(CHANNELS)} or all")
    write_result(measure(args.model, args.corpus, args.cache, channels), args.out,
                 f"{Path(args.corpus).name}-{Path(args.model).stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
