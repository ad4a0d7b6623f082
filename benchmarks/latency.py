"""Gate latency: warm per-utterance decisions and cold `voicegate enroll-check` wall time.

    python benchmarks/latency.py --model models/voicegate-compact-mc.onnx
    python benchmarks/latency.py --untrained compact seed --samples 50 --out latency.json

``--model`` measures exported models as they are. ``--untrained ARCH`` first exports a
full-size model of that architecture with random weights (MC dropout, T = ``--samples``), the
way ``voicegate export`` builds its graph, in a child process (so torch never enters the
measuring process); its latency and size are realistic, its decisions meaningless, and the JSON
says so.

Warm: one Gate (1 onnxruntime thread), a synthetic 3 s utterance, a few warm-up decisions, then
the median of ``--repeats`` decisions (audio in -> decision out), with the featurizer and the
model timed separately too. Cold: the median wall time of ``--cold`` fresh
``python -m voicegate.device enroll-check`` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # synth.py: speech-like audio without any corpus

EXPORT_UNTRAINED = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1); torch.manual_seed(0)
from voicegate.export import graphs
from voicegate.export.onnx_export import write_model
from voicegate.train.models import ModelConfig, build_model
from tiny_gate import make_contract
model = build_model(ModelConfig(arch={arch!r})).eval()
proto = graphs.export_mc(model, {samples})
c = make_contract("mc", {samples})
c.architecture = {arch!r}
c.metrics = {{"note": "UNTRAINED: random weights, for latency and size only"}}
write_model(proto, c, __import__("pathlib").Path({out!r}))
"""


def export_untrained(arch: str, samples: int, out: Path) -> Path:
    code = EXPORT_UNTRAINED.format(tests=str(REPO / "tests"), arch=arch, samples=samples, out=str(out))
    subprocess.run([sys.executable, "-c", code], check=True)
    return out


def warm_latency(model: Path, seconds: float, repeats: int) -> dict:
    from synth import synth_voice

    from voicegate.device.features import INFER_HOP_SECONDS, featurize
    from voicegate.device.runtime import Gate

    gate = Gate.load(model, threads=1)
    audio = synth_voice("f1", seconds, seed=0, pauses=False)
    for _ in range(3):
        gate.decide_audio(audio)
    total, feat, infer = [], [], []
    for _ in range(repeats):
        d = gate.decide_audio(audio)
        total.append(d.latency_ms)
        t0 = time.perf_counter()
        images = featurize(audio, hop_seconds=INFER_HOP_SECONDS)
        t1 = time.perf_counter()
        gate.predict(images)
        t2 = time.perf_counter()
        feat.append((t1 - t0) * 1e3)
        infer.append((t2 - t1) * 1e3)
    return {
        "model": str(model),
        "size_mb": round(model.stat().st_size / 1e6, 3),
        "method": gate.method,
        "samples": gate.samples,
        "architecture": gate.contract.architecture,
        "untrained": "UNTRAINED" in json.dumps(gate.contract.metrics),
        "utterance_seconds": seconds,
        "windows": d.windows,
        "warm_decision_ms_median": round(statistics.median(total), 2),
        "warm_decision_ms_min": round(min(total), 2),
        "featurize_ms_median": round(statistics.median(feat), 2),
        "model_ms_median": round(statistics.median(infer), 2),
        "repeats": repeats,
        "onnxruntime_threads": 1,
    }


def cold_wall(model: Path, wav: Path, runs: int) -> dict:
    times, codes = [], set()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "voicegate.device", "enroll-check", str(wav),
                            "--model", str(model)], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        codes.add(r.returncode)
    return {"cold_enroll_check_s_median": round(statistics.median(times), 3),
            "cold_enroll_check_s_min": round(min(times), 3), "runs": runs, "exit_codes": sorted(codes)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="an exported model (repeatable)")
    ap.add_argument("--untrained", nargs="*", default=[], choices=("compact", "seed"),
                    help="export and measure random-weight models of these architectures")
    ap.add_argument("--samples", type=int, default=50, help="T for --untrained (default 50)")
    ap.add_argument("--seconds", type=float, default=3.0, help="utterance length (default 3)")
    ap.add_argument("--repeats", type=int, default=20, help="warm decisions (default 20)")
    ap.add_argument("--cold", type=int, default=5, help="cold enroll-check runs (default 5)")
    ap.add_argument("--out", help="write the results as JSON here too")
    args = ap.parse_args()

    import soundfile as sf
    from synth import synth_voice

    work = Path(tempfile.mkdtemp(prefix="vg-latency-"))
    wav = work / "utterance.wav"
    sf.write(wav, synth_voice("f1", args.seconds, seed=0, pauses=False), 16000)
    models = [Path(m) for m in args.model]
    for arch in args.untrained:
        models.append(export_untrained(arch, args.samples, work / f"untrained-{arch}-mc{args.samples}.onnx"))
    results = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                           "platform": platform.platform()}, "models": []}
    for m in models:
        r = warm_latency(m, args.seconds, args.repeats)
        r.update(cold_wall(m, wav, args.cold))
        results["models"].append(r)
        print(json.dumps(r))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
