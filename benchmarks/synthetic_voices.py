"""Does a speech synthesiser open the door? GRANTED counts for espeak-ng voices, as JSON.

    python benchmarks/synthetic_voices.py [--model ENCODER.onnx ...] [--profiles DIR] \
        [--out benchmarks/synthetic-voices.json]

24 synthetic voices (12 espeak-ng voice variants x 2 speaking rates, one door sentence each,
16 kHz) are decided ``--tries`` times each (fresh MC masks every time) against a profile store
(default: the shipped demo household ``models/demo-profiles``; its encoder must be the one the
profiles were made with, so give ``--profiles`` for any other model). Reported per model: the
decisions, the highest and the median p_allow. Nobody in a household is a synthesiser, so
every GRANTED here is a false accept. Not a spoofing benchmark (no cloning, no replay): the
simplest synthetic voice a visitor could play. Needs ``espeak-ng`` and ``sox`` (Debian packages);
without them it says so and writes nothing. Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VOICES = ("en-us", "en-gb", "en+f2", "en+f4", "en+m2", "en+m5", "en-us+f3", "en-gb+m3", "en+klatt",
          "en+whisper", "en-us+croak", "en+f5")
RATES = (130, 170)
SENTENCE = "Hello, this is the front door. Please open it, I am home and I live here with my family."


def make_voices(folder: Path) -> list[Path]:
    out = []
    for v in VOICES:
        for rate in RATES:
            raw, wav = folder / "raw.wav", folder / f"espeak-{v}-{rate}.wav"
            subprocess.run(["espeak-ng", "-v", v, "-s", str(rate), "-w", str(raw), SENTENCE], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
            out.append(wav)
    return out


def score(model: str, profiles: str, files: list[Path], tries: int) -> dict:
    from voicegate.device.encoder import Encoder
    from voicegate.device.profiles import ProfileStore
    from voicegate.device.scoring import ProfileGate

    encoder = Encoder.load(model)
    gate = ProfileGate(encoder, ProfileStore(profiles), reload=False)
    counts, p, granted = collections.Counter(), [], []
    for f in files:
        for _ in range(tries):
            try:
                d = gate.decide_file(f)
            except Exception as e:  # noqa: BLE001 - an error is a refusal; count it by kind
                counts[type(e).__name__] += 1
                continue
            counts[d.decision] += 1
            p.append(d.p_allow)
            if d.decision == "GRANTED":
                granted.append(f"{f.stem} as {d.speaker}")
    return {"model": Path(model).name, "sha256": encoder.sha256, "method": encoder.method,
            "profiles": gate.names, "decisions": dict(counts), "tries": len(files) * tries,
            "p_allow_max": round(max(p), 4) if p else None,
            "p_allow_median": round(float(np.median(p)), 4) if p else None,
            "granted": sorted(set(granted))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="encoder model (repeatable; default the shipped default)")
    ap.add_argument("--profiles", action="append",
                    help="profile store for the model at the same position (repeatable; default models/demo-profiles)")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        print("synthetic_voices: needs espeak-ng and sox (apt-get install espeak-ng sox); nothing measured",
              file=sys.stderr)
        return 1
    from voicegate.device.encoder import resolve_encoder_path

    models = args.model or [str(resolve_encoder_path())]
    stores = args.profiles or [str(REPO / "models" / "demo-profiles")]
    if len(stores) == 1:
        stores = stores * len(models)
    if len(stores) != len(models):
        print("synthetic_voices: give one --profiles, or one per --model", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vg-synth-") as d:
        files = make_voices(Path(d))
        result = {"benchmark": "synthetic voices", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "voices": [f.stem for f in files], "sentence": SENTENCE, "tries_per_voice": args.tries,
                  "results": [score(m, st, files, args.tries) for m, st in zip(models, stores)]}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
