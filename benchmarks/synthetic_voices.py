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

``--buzzes N`` adds N **formant buzzes** (seeded, :func:`make_buzzes`): a sawtooth whose pitch
glides and wobbles, cut into 0.12-0.35 s pieces each filtered through three random formant
resonances, 3 s each. Nobody's voice, but vowel-like enough that the speech detector lets most
through, so they test what the scoring does with a voice-like sound far from every real voice
(score normalisation, for one, can inflate it). Reported per model under ``buzzes``; then the
buzz the FIRST model scored highest is decided ``--best-tries`` more times by every model
(``best_buzz``): a search for the worst case, as an attacker would run one.
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


def make_buzzes(folder: Path, n: int, seed: int = 5, sr: int = 16000) -> list[Path]:
    """``n`` random formant buzzes of 3 s (see the module docstring), as 16-bit WAV files."""
    import soundfile as sf
    from scipy import signal

    rng = np.random.default_rng(seed)
    t = np.arange(3 * sr) / sr
    out = []
    for i in range(n):
        f0, glide, period, vibrato = rng.uniform(80, 150), rng.uniform(100, 600), rng.uniform(0.3, 0.8), rng.uniform(0, 15)
        f = f0 + glide * (t % period) / period + vibrato * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
        src = signal.sawtooth(2 * np.pi * np.cumsum(f) / sr, rng.uniform(0.6, 1.0))
        piece, y = int(sr * rng.uniform(0.12, 0.35)), np.zeros_like(src)
        for k in range(0, src.size, piece):
            seg = src[k : k + piece]
            formants = (rng.uniform(250, 850), rng.uniform(850, 2300), rng.uniform(2200, 3200))
            q = rng.uniform(50, 150)
            y[k : k + piece] = seg + sum(4 * signal.lfilter(*signal.iirpeak(F / (sr / 2), F / q), seg) for F in formants)
        path = folder / f"buzz-{i:03d}.wav"
        sf.write(path, np.clip(0.6 * y / np.abs(y).max(), -1, 1), sr, subtype="PCM_16")
        out.append(path)
    return out


def score(model: str, profiles: str, files: list[Path], tries: int) -> dict:
    from voicegate.device.encoder import Encoder
    from voicegate.device.profiles import ProfileStore
    from voicegate.device.scoring import ProfileGate

    encoder = Encoder.load(model)
    gate = ProfileGate(encoder, ProfileStore(profiles), reload=False)
    counts, p, granted, by_file = collections.Counter(), [], [], collections.defaultdict(list)
    for f in files:
        for _ in range(tries):
            try:
                d = gate.decide_file(f)
            except Exception as e:  # noqa: BLE001 - an error is a refusal; count it by kind
                counts[type(e).__name__] += 1
                continue
            counts[d.decision] += 1
            p.append(d.p_allow)
            by_file[f].append(d.p_allow)
            if d.decision == "GRANTED":
                granted.append(f"{f.stem} as {d.speaker}")
    return {"model": Path(model).name, "sha256": encoder.sha256, "method": encoder.method,
            "profiles": gate.names, "decisions": dict(counts), "tries": len(files) * tries,
            "p_allow_by_file": {f.stem: round(max(v), 4) for f, v in by_file.items() if v},
            "p_allow_max": round(max(p), 4) if p else None,
            "p_allow_median": round(float(np.median(p)), 4) if p else None,
            "granted": sorted(set(granted))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="encoder model (repeatable; default the shipped default)")
    ap.add_argument("--profiles", action="append",
                    help="profile store for the model at the same position (repeatable; default models/demo-profiles)")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--buzzes", type=int, default=0, help="also decide N seeded formant buzzes (default 0)")
    ap.add_argument("--best-tries", type=int, default=15,
                    help="with --buzzes: decide the first model's highest-scoring buzz this many more times")
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
        if args.buzzes > 0:
            buzz_dir = Path(d) / "buzz"
            buzz_dir.mkdir()
            buzzes = make_buzzes(buzz_dir, args.buzzes)
            result["buzzes"] = {"n": len(buzzes), "seed": 5, "seconds": 3.0}
            for r, m, st in zip(result["results"], models, stores):
                r["buzzes"] = score(m, st, buzzes, args.tries)
            seen = result["results"][0]["buzzes"]["p_allow_by_file"]
            if seen and args.best_tries > 0:
                worst = next(b for b in buzzes if b.stem == max(seen, key=seen.get))
                result["best_buzz"] = {"file": worst.stem, "chosen_by": result["results"][0]["model"],
                                       "tries": args.best_tries}
                for r, m, st in zip(result["results"], models, stores):
                    r["best_buzz"] = {k: v for k, v in score(m, st, [worst], args.best_tries).items()
                                      if k in ("decisions", "p_allow_max", "p_allow_median", "granted")}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
