"""The seed way: the study's decision, in torch, as a script (the cold-start baseline).

    python benchmarks/seed_way.py FILE --weights seed.pt [--samples 50] [--threads 1]

The study's ``SpectrogramCNN`` (``voicegate.train.models.classifier``), its weights from a state-dict file,
and the study's ``mc_dropout_predictions``: the **whole network** run T times with dropout on.
The audio goes through the same numpy featurizer as the device (the study used librosa; using
the same features keeps the comparison about the model and the MC method). Prints one JSON
line: p(allowed), its std over the T passes, the decision under fixed thresholds, and the time
from process start to the decision.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

DEFAULT_THRESHOLDS = {"accept": 0.5, "uncertainty_limit": 0.1, "deny": 0.3}


def mc_dropout_predictions(model, x, samples: int = 50):
    """The study's MC dropout: ``model.train()`` (dropout on), ``samples`` full forward passes.

    Returns (samples, n, 2) softmax probabilities. The study's model has no BatchNorm, so train
    mode changes nothing but the dropout.
    """
    import torch

    model.train()
    with torch.no_grad():
        return torch.stack([torch.softmax(model(x), dim=1) for _ in range(samples)])


def seed_decision(model, audio, samples: int, thresholds: dict) -> dict:
    """Featurize a 16 kHz utterance, run the seed way, and decide with the device policy."""
    import torch

    from voicegate.device.features import INFER_HOP_SECONDS, featurize
    from voicegate.device.policy import Thresholds, decide, summarize

    t0 = time.perf_counter()
    images = featurize(audio, hop_seconds=INFER_HOP_SECONDS)
    t1 = time.perf_counter()
    probs = mc_dropout_predictions(model, torch.from_numpy(images[:, None]), samples)
    stats = summarize(probs[..., 1].numpy().T)  # (windows, T)
    verdict, _ = decide(stats, Thresholds(**thresholds), "std")
    return {"decision": verdict, "p_allow": stats.p_allow, "std": stats.std, "windows": stats.windows,
            "featurize_ms": (t1 - t0) * 1e3, "model_ms": (time.perf_counter() - t1) * 1e3}


def build_seed(widths=None, embed_dim=None):
    from voicegate.train.models.classifier import ModelConfig, build_model

    return build_model(ModelConfig(arch="seed", widths=widths, embed_dim=embed_dim))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="an audio file holding one utterance")
    p.add_argument("--weights", required=True, help="state dict of a SpectrogramCNN (torch.save)")
    p.add_argument("--samples", type=int, default=50, help="T forward passes (default 50)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--widths", type=int, nargs=3, help="conv widths (default: the study's 32 64 128)")
    p.add_argument("--embed-dim", type=int, help="fc1 width (default: the study's 512)")
    args = p.parse_args(argv)

    import torch

    from voicegate.device.audio import load_audio

    torch.set_num_threads(args.threads)
    model = build_seed(args.widths, args.embed_dim)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    out = seed_decision(model, load_audio(args.file), args.samples, DEFAULT_THRESHOLDS)
    out["seconds_from_start"] = round(time.perf_counter() - T_START, 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
