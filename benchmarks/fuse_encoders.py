"""Score fusion of independently trained encoders: would a larger deep ensemble help? As JSON.

    python benchmarks/fuse_encoders.py --corpus ../shared/data/speechocean762 \
        models/voicegate-encoder-mc.onnx out/cand/scratch-plain.onnx [--out benchmarks/fusion]

Each exported encoder runs the enrolment protocol of ``voicegate eval`` on the corpus (clean: the
same enrolled speakers, never heard in training, <= 30 s of enrolment, 3 s attempts, the same
trials). Each trial's score is the device's rule, the mean over the samples of the cosine with
the profile centroid, and a failed attempt scores ``FAILED_SCORE`` (``Embedded.score``, the
protocol's own). Every model's EER and FRR at FAR 1 % is reported, then the same for the mean of
the models' scores. That mean is what a deep ensemble of these networks would score, with equal
weights. The trials must be the same
for every model (same corpus, same split), and this is checked. Training side only.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from score_norm import rates, write_result  # noqa: E402


def trial_scores(model: str, corpus: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(scores, genuine mask, (attempt, profile) pairs, sha256) of one model's clean trials."""
    from voicegate.train.eval.encoder_eval import load_plans
    from voicegate.train.eval.enrolment import OnnxEmbedder, ProtocolConfig, run_protocol

    emb = OnnxEmbedder(model)
    _, plans, _ = load_plans(Path(corpus), 0, (0.6, 0.2, 0.2), emb.contract)
    run = run_protocol(plans, emb, ProtocolConfig(corpus=str(corpus), progress=False))
    pairs = np.stack([run.trials.attempt, run.trials.profile], 1)
    return run.score(), run.trials.genuine, pairs, emb.sha256


def measure(models: list[str], corpus: str) -> dict:
    t0 = time.perf_counter()
    scores, out, ref = [], {}, None
    for m in models:
        s, genuine, pairs, sha = trial_scores(m, corpus)
        if ref is not None and not (np.array_equal(pairs, ref[0]) and np.array_equal(genuine, ref[1])):
            raise SystemExit(f"fuse_encoders: {m} was scored on other trials than {models[0]}")
        ref = (pairs, genuine)
        scores.append(s)
        out[Path(m).name] = {"sha256": sha, **rates(s, genuine)}
    return {
        "benchmark": "score fusion of independently trained encoders (equal-weight mean of the cosine scores)",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "corpus": Path(corpus).name, "channel": "clean", "models": out,
        "fused": rates(np.mean(scores, axis=0), ref[1]), "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="exported encoder models (.onnx), at least two")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", help="folder for <corpus>.json (default: stdout only)")
    args = ap.parse_args(argv)
    if len(args.models) < 2:
        ap.error("give at least two models to fuse")
    write_result(measure(args.models, args.corpus), args.out, f"{Path(args.corpus).name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
