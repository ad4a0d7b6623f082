"""Score fusion of independently trained encoders: would a larger deep ensemble help? As JSON.

    python benchmarks/fuse_encoders.py --corpus ../shared/data/speechocean762 \
        models/voicegate-encoder-mc.onnx out/cand/scratch-plain.onnx [--out benchmarks/fusion]

Each exported encoder runs the enrolment protocol of ``voicegate eval`` on the corpus (clean: the
same enrolled speakers, never heard in training, <= 30 s of enrolment, 3 s attempts, the same
trials). Each trial's score is the device's rule, the mean over the samples of the cosine with
the profile centroid, and a failed attempt scores ``FAILED_SCORE``. Every model's EER and FRR
at FAR 1 % is reported, then the same for the mean of the models' scores. That mean is what a
deep ensemble of these networks would score, with equal weights. The trials must be the same
for every model (same corpus, same split), and this is checked. Training side only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def trial_scores(model: str, corpus: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(scores, genuine mask, (attempt, profile) pairs, sha256) of one model's clean trials."""
    from voicegate.device.scoring import normalise
    from voicegate.train.eval.encoder_eval import load_plans
    from voicegate.train.eval.enrolment import FAILED_SCORE, OnnxEmbedder, ProtocolConfig, run_protocol

    emb = OnnxEmbedder(model)
    _, plans, _ = load_plans(Path(corpus), 0, (0.6, 0.2, 0.2), emb.contract)
    run = run_protocol(plans, emb, ProtocolConfig(corpus=str(corpus), progress=False))
    a, p, genuine = run.trials.attempt, run.trials.profile, run.trials.genuine
    e = run.attempt_embeddings  # (attempts, S, D)
    cos = np.einsum("asd,pd->ap", normalise(e), run.centroids) / e.shape[1]
    failed = np.asarray([x["failed"] for x in run.attempts], bool)[a]
    return np.where(failed, FAILED_SCORE, cos[a, p]), genuine, np.stack([a, p], 1), emb.sha256


def figures(s: np.ndarray, genuine: np.ndarray) -> dict:
    from voicegate.train.models.encoder import eer, frr_at_far

    g, i = s[genuine], s[~genuine]
    return {"eer": round(eer(g, i)[0], 4), "frr_at_far_1pct": round(frr_at_far(g, i, 0.01)[0], 4),
            "genuine_trials": int(g.size), "impostor_trials": int(i.size)}


def measure(models: list[str], corpus: str) -> dict:
    t0 = time.perf_counter()
    scores, out, ref = [], {}, None
    for m in models:
        s, genuine, pairs, sha = trial_scores(m, corpus)
        if ref is not None and not (np.array_equal(pairs, ref[0]) and np.array_equal(genuine, ref[1])):
            raise SystemExit(f"fuse_encoders: {m} was scored on other trials than {models[0]}")
        ref = (pairs, genuine)
        scores.append(s)
        out[Path(m).name] = {"sha256": sha, **figures(s, genuine)}
    return {
        "benchmark": "score fusion of independently trained encoders (equal-weight mean of the cosine scores)",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "corpus": Path(corpus).name, "channel": "clean", "models": out,
        "fused": figures(np.mean(scores, axis=0), ref[1]), "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="exported encoder models (.onnx), at least two")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", help="folder for <corpus>.json (default: stdout only)")
    args = ap.parse_args(argv)
    if len(args.models) < 2:
        ap.error("give at least two models to fuse")
    result = measure(args.models, args.corpus)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        d = Path(args.out)
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{Path(args.corpus).name}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
