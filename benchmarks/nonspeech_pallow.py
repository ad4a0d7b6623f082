"""p(allowed) of pure non-speech for the shipped classifier models (issue 10: the noise shortcut).

The attempts are ``voicegate eval``'s non-speech attempts (train/eval/nonspeech.py: the part of
each shared noise file that training never reads, and generated noise, hum and near-silence, at
-40 / -26 / -12 dBFS), decided through the device path (speech detector, then the policy) and with
every window straight into the model (no detector). Run it before and after retraining:

    python benchmarks/nonspeech_pallow.py --out benchmarks/eval-librispeech/nonspeech_after.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from voicegate.device.runtime import Gate
from voicegate.train.data.fingerprint import shared_data_dir
from voicegate.train.eval.nonspeech import nonspeech_attempts, score_nonspeech

SHARED = shared_data_dir()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", default=str(SHARED / "noise"), help="the shared noise folder")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    attempts = nonspeech_attempts(Path(args.noise))
    gates = {m: Gate.load(None, method=m, threads=1, seed=0) for m in ("mc", "ensemble")}
    t0 = time.perf_counter()
    result = {"attempts": len(attempts), "models": {g.path.name: {"sha256": g.sha256} for g in gates.values()},
              "scores": score_nonspeech(gates, attempts), "seconds": None}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, r in result["scores"].items():
        mo = r["model_only"]
        print(f"{name}: {r['n']} attempts; device path GRANTED {r['device']['far']['k']} (no speech {r['device']['no_speech']}); "
              f"model only GRANTED {mo['far']['k']}, p >= accept {mo['above_accept']}, "
              f"p mean {mo['p_allow_mean']:.3f} p95 {mo['p_allow_p95']:.3f} max {mo['p_allow_max']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
