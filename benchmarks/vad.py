"""The speech detector (issue 10): its cost, what it keeps, what it refuses, and listen's CPU.

    python benchmarks/vad.py [--out benchmarks/vad.json] [--files 60] [--snr-files 30]
        [--webrtcvad-path DIR] [--smoke]
    python benchmarks/vad.py --nonspeech --out benchmarks/nonspeech.json
    python benchmarks/vad.py --kept-detail --out benchmarks/vad-kept.json

Sections of the JSON (every figure measured here, on this machine, 1 thread):

* ``cost``: CPU time (``time.process_time``) of the detector per second of audio, offline
  (one pass over a 60 s recording) and streaming (100 ms chunks through the Endpointer), and
  its share of a warm ``enroll-check`` decision on a 3 s utterance (``Gate.decide_audio``
  with each shipped gate model, which runs the detector itself; medians of ``--repeats``), in
  CPU time and in wall time (wall time includes waiting for a core on a loaded machine).
* ``compare``: Silero VAD (the vendored model) against webrtcvad (``webrtcvad-wheels``, when
  importable; ``--webrtcvad-path`` adds a folder to sys.path, it is no device dependency):
  cost per second, speech kept against the energy trimmer on clean LibriSpeech, and false
  speech on the shared noise (the share of its 30/32 ms frames called speech).
* ``kept``: per corpus (librispeech, speechocean762; ``--files`` seeded random files each),
  the seconds the detector keeps (padded segments) against what the energy trimmer
  (``audio.voiced_intervals``) keeps: ``recall`` = both keep / trimmer keeps, ``ratio`` =
  detector keeps / trimmer keeps, ``loud_recall`` = the same recall on the trimmer's frames
  within 25 dB of the file's loudest (its voiced core), the trimmer's seconds the detector drops
  before its first / after its last segment (``lost_at_edges_share``: leading and trailing room
  noise the 40 dB rule keeps) and between them (``lost_inside_share``), and the files with no
  decidable speech.
* ``snr5``: utterances of the allowed LibriSpeech speakers mixed with each shared noise file at
  5 dB SNR (RMS over the whole utterance), decided in-process by each shipped model: how many
  were decided on (not exit 4), the decisions, and in how many the listen Endpointer opens an
  utterance (the mixture with 1 s of the same noise, at the same level, before and after).
* ``--kept-detail`` (alone, ``--out benchmarks/vad-kept.json``): where ``kept``'s recall goes
  (:func:`kept_detail`: recall on pitched frames, other paddings and thresholds, the worst files;
  and how many non-speech suite clips each of those other rules would decide on).
The non-speech parts (``--nonspeech``, ``nonspeech_decidable_by_rule``, ``listen_cpu``) live in
``benchmarks/vad_nonspeech.py``.

* ``--nonspeech`` (alone): GRANTED counts on the non-speech suite per shipped gate model,
  in-process and through ``listen --from-file`` (see :func:`nonspeech_counts`), and with every
  window of the raw clip straight into the model (``model_only``: no detector); an encoder
  model decides against the shipped demo household.
* ``listen_cpu``: process CPU seconds of ``voicegate listen --from-file`` per second of audio,
  from the difference between a 10 s and a 70 s file of the same sound (startup cancels out),
  for digital silence, -50 dBFS room noise and the shared washing machine at -26 dBFS. A live
  microphone delivers the same audio in real time, so this is the share of one core listen
  needs while idle in that sound (the PortAudio callback is not included).

Nothing here asserts a figure; ``--smoke`` runs a tiny version to check the script works.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from voicegate.train.data.fingerprint import shared_data_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = shared_data_dir()  # as the tests
sys.path.insert(0, str(REPO / "tests"))

from voicegate.device import speech  # noqa: E402
from voicegate.device.audio import (  # noqa: E402
    SAMPLE_RATE, TRIM_HOP, AudioError, frame_rms_db, load_audio, voiced_intervals)
from vad_nonspeech import (  # noqa: E402  (the non-speech suite, the other rules, listen's CPU)
    listen_cpu, nonspeech_counts, nonspeech_decidable_by_rule, rule_variants, shipped_encoders,
    shipped_gate_models)

SR = SAMPLE_RATE
LOUD_TOP_DB = 25.0


def _mask(n: int, intervals) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for a, b in intervals:
        m[a:b] = True
    return m


def corpus_files(corpus: str, k: int, seed: int = 0, speakers=None) -> list[Path]:
    root = SHARED / corpus
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    if speakers is not None:
        rows = [r for r in rows if r["speaker"] in speakers]
    random.Random(seed).shuffle(rows)
    return [root / r["path"] for r in rows[:k]]


# --- speech kept -----------------------------------------------------------------------------
def kept_against_trimmer(x: np.ndarray, segments) -> dict:
    """Samples the trimmer keeps, the detector keeps, both, and the same on the trimmer's core."""
    trim = _mask(x.size, voiced_intervals(x))
    loud = _mask(x.size, voiced_intervals(x, top_db=LOUD_TOP_DB))
    det = _mask(x.size, segments)
    lost = trim & ~det
    inside = int(lost[segments[0][0] : segments[-1][1]].sum()) if segments else 0
    return {"trimmer": int(trim.sum()), "detector": int(det.sum()), "both": int((trim & det).sum()),
            "loud": int(loud.sum()), "loud_both": int((loud & det).sum()),
            "lost_inside": inside, "lost_at_edges": int(lost.sum()) - inside}


def kept(corpus: str, k: int) -> dict:
    det = speech.default_detector()
    tot: dict = {}
    undecidable, shares = [], []
    files = corpus_files(corpus, k)
    for path in files:
        x = load_audio(path)
        s = det.select(x)
        shares.append(s.share)
        for key, v in kept_against_trimmer(x, s.segments).items():
            tot[key] = tot.get(key, 0) + v
        if not s.decidable:
            undecidable.append(f"{path.relative_to(SHARED / corpus)}: {s.reason()}")
    return {
        "corpus": corpus, "files": len(files), "sample": f"random.Random(0).shuffle(manifest rows)[:{k}]",
        "trimmer_seconds": round(tot["trimmer"] / SR, 1), "detector_seconds": round(tot["detector"] / SR, 1),
        "recall": round(tot["both"] / tot["trimmer"], 4), "ratio": round(tot["detector"] / tot["trimmer"], 4),
        "loud_recall": round(tot["loud_both"] / tot["loud"], 4),
        "lost_at_edges_share": round(tot["lost_at_edges"] / tot["trimmer"], 4),
        "lost_inside_share": round(tot["lost_inside"] / tot["trimmer"], 4), "undecidable": undecidable,
        "speech_share_p5_median": [round(float(np.percentile(shares, q)), 3) for q in (5, 50)],
    }


def kept_detail(corpus: str, k: int, pads=(0.25, 0.4, 0.5, 0.75)) -> dict:
    """Where the detector's recall against the trimmer goes (``--kept-detail``).

    * ``pitched_recall``: of the trimmer's samples in frames librosa's pYIN calls voiced (pitch
      70-500 Hz: the vowels and voiced consonants of a human voice), the share the detector keeps.
      A recall short of the trimmer's that is not short here is room noise, breath and clicks
      the 40 dB rule keeps, not voice the detector loses.
    * ``padding``: recall with other ``pad_s`` values (the same frame probabilities): what a
      longer padding, a change of the frame-selection contract (every model re-trained), would buy.
    * ``worst_files``: the five files that lose the most trimmer seconds, with their pitched share.
    * ``lost_seconds``: what the trimmer keeps and the detector drops: pitched, within 0.3 s of a
      pitched frame (consonants next to a vowel), or farther from any (of which ``far_quiet``: 30 dB
      or more below the file's loudest 25 ms trimmer frame): breath, room noise, clicks.
    """
    import librosa
    from dataclasses import replace

    from scipy.ndimage import binary_dilation

    base = speech.default_detector()
    tot: dict = {}
    per_pad = {p: [0, 0] for p in pads}
    per_rule: dict = {}
    worst = []
    for path in corpus_files(corpus, k):
        x = load_audio(path)
        probs = base.probabilities(x)
        s = base.select(x, probs)
        trim = _mask(x.size, voiced_intervals(x))
        det = _mask(x.size, s.segments)
        hop = 256
        _, voiced, _ = librosa.pyin(x, fmin=70, fmax=500, sr=SR, frame_length=1024, hop_length=hop)
        pitched = np.repeat(voiced, hop)[: x.size]
        pitched = np.pad(pitched, (0, x.size - pitched.size)) & trim
        tot["pitched"] = tot.get("pitched", 0) + int(pitched.sum())
        tot["pitched_both"] = tot.get("pitched_both", 0) + int((pitched & det).sum())
        lost = trim & ~det
        near = binary_dilation(pitched, structure=np.ones(2 * int(0.3 * SR) + 1, bool)) & ~pitched
        far = lost & ~pitched & ~near
        level = frame_rms_db(x)  # the trimmer's own 25 ms frames, every TRIM_HOP samples
        quiet = np.repeat(level < level.max() - 30.0, TRIM_HOP)[: x.size]
        quiet = np.pad(quiet, (0, x.size - quiet.size), constant_values=True)
        for key, m in (("pitched", lost & pitched), ("near_pitched", lost & near), ("far", far),
                       ("far_quiet", far & quiet)):
            tot["lost_" + key] = tot.get("lost_" + key, 0) + int(m.sum())
        for p in pads:
            d = _mask(x.size, speech.SpeechDetector(replace(base.config, pad_s=p), base.model).select(x, probs).segments)
            per_pad[p][0] += int((trim & d).sum())
            per_pad[p][1] += int(trim.sum())
        for key, cfg in rule_variants(base.config).items():
            d = _mask(x.size, speech.SpeechDetector(cfg, base.model).select(x, probs).segments)
            acc = per_rule.setdefault(key, [0, 0, 0, 0])
            acc[0] += int((trim & d).sum())
            acc[1] += int(trim.sum())
            acc[2] += int((pitched & d).sum())
            acc[3] += int(pitched.sum())
        worst.append({"file": str(path.relative_to(SHARED / corpus)), "lost_s": round(float(lost.sum()) / SR, 2),
                      "trimmer_s": round(float(trim.sum()) / SR, 2), "pitched_share_of_trimmer": round(float(pitched.sum()) / max(1, trim.sum()), 3),
                      "detector_max_p": round(float(probs.max()) if probs.size else 0.0, 3)})
    worst.sort(key=lambda r: -r["lost_s"])
    return {"corpus": corpus, "files": k, "sample": f"random.Random(0).shuffle(manifest rows)[:{k}]",
            "pitched_recall": round(tot["pitched_both"] / max(1, tot["pitched"]), 4),
            "pitched_seconds": round(tot["pitched"] / SR, 1),
            "lost_seconds": {k[5:]: round(v / SR, 1) for k, v in tot.items() if k.startswith("lost_")},
            "padding": {str(p): round(a / max(1, b), 4) for p, (a, b) in per_pad.items()},
            "rule_variants": {k: {"recall": round(a / max(1, b), 4), "pitched_recall": round(c / max(1, d), 4)}
                              for k, (a, b, c, d) in per_rule.items()},
            "worst_files": worst[:5]}


# --- cost ------------------------------------------------------------------------------------
def cpu_per_second(fn, x: np.ndarray, repeats: int = 3) -> float:
    """Median CPU milliseconds of ``fn(x)`` per second of audio."""
    runs = []
    for _ in range(repeats):
        t = time.process_time()
        fn(x)
        runs.append((time.process_time() - t) * 1000.0 / (x.size / SR))
    return round(statistics.median(runs), 2)


def long_speech(seconds: float) -> np.ndarray:
    path = SHARED / "librispeech"
    if (path / "manifest.csv").is_file():
        xs, n = [], 0
        for p in corpus_files("librispeech", 40, seed=1):
            xs.append(load_audio(p))
            n += xs[-1].size
            if n >= seconds * SR:
                break
        return np.concatenate(xs)[: int(seconds * SR)]
    x = load_audio(REPO / "models" / "example-espeak.wav")
    return np.tile(x, int(np.ceil(seconds * SR / x.size)))[: int(seconds * SR)]


def cost(repeats: int, seconds: float) -> dict:
    from voicegate.device.runtime import Gate
    from voicegate.device.endpoint import Endpointer
    from voicegate.device.stream import ArraySource

    det = speech.default_detector()
    x = long_speech(seconds)

    def stream(a):
        ep = Endpointer(detector=det)
        for chunk in ArraySource(a, 1600):
            ep.feed(chunk)
        ep.flush()

    out = {"audio_seconds": round(x.size / SR, 1),
           "offline_cpu_ms_per_s": cpu_per_second(det.probabilities, x, repeats),
           "select_cpu_ms_per_s": cpu_per_second(det.select, x, repeats),
           "endpointer_cpu_ms_per_s": cpu_per_second(stream, x, repeats), "decision": []}
    utt = x[: 3 * SR]
    for model in shipped_gate_models():
        gate = Gate.load(model)
        gate.warmup()
        runs = {"decision_cpu": [], "detector_cpu": [], "decision_wall": [], "detector_wall": []}
        for _ in range(repeats):
            for key, fn in (("detector", lambda: det.select(utt)), ("decision", lambda: gate.decide_audio(utt))):
                c, w = time.process_time(), time.perf_counter()
                fn()
                runs[f"{key}_cpu"].append((time.process_time() - c) * 1000)
                runs[f"{key}_wall"].append((time.perf_counter() - w) * 1000)
        med = {k: statistics.median(v) for k, v in runs.items()}
        out["decision"].append({"model": model.name, "utterance_seconds": 3.0,
                                **{f"{k}_ms": round(v, 1) for k, v in med.items()},
                                "detector_share_cpu": round(med["detector_cpu"] / med["decision_cpu"], 3),
                                "detector_share_wall": round(med["detector_wall"] / med["decision_wall"], 3)})
    return out


# --- Silero against webrtcvad ----------------------------------------------------------------
def webrtc_frames(vad, x: np.ndarray, frame: int = 480) -> np.ndarray:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    n = x.size // frame
    return np.array([vad.is_speech(pcm[i * frame : (i + 1) * frame].tobytes(), SR) for i in range(n)], bool)


def compare(files: list[Path], noise: list[np.ndarray], webrtc_path: str | None) -> dict:
    det = speech.default_detector()
    speech_audio = [load_audio(p) for p in files]
    pad = int(det.config.pad_s * SR)

    def silero_mask(x):
        return _mask(x.size, det.select(x).segments)

    def silero_false(x):
        return float(np.mean(det.probabilities(x) >= det.config.threshold))

    long = np.concatenate(speech_audio)
    rows = {"silero": {"cpu_ms_per_s": cpu_per_second(det.probabilities, long, 3),
                       **_kept_and_false(speech_audio, noise, silero_mask, silero_false)}}
    if webrtc_path:
        sys.path.insert(0, webrtc_path)
    try:
        import webrtcvad
    except ImportError as e:
        rows["webrtcvad"] = {"skipped": f"webrtcvad not importable ({e}); pip install webrtcvad-wheels"}
        return rows
    for mode in (1, 3):
        vad = webrtcvad.Vad(mode)

        def w_mask(x, vad=vad):
            flags = webrtc_frames(vad, x)
            m = np.zeros(x.size, bool)
            for i in np.flatnonzero(flags):
                m[max(0, i * 480 - pad) : i * 480 + 480 + pad] = True
            return m

        rows[f"webrtcvad_mode{mode}"] = {
            "cpu_ms_per_s": cpu_per_second(lambda a, vad=vad: webrtc_frames(vad, a), long, 3),
            **_kept_and_false(speech_audio, noise, w_mask, lambda a, vad=vad: float(np.mean(webrtc_frames(vad, a)))),
        }
    return rows


def _kept_and_false(speech_audio, noise, mask_fn, false_fn) -> dict:
    both = trim = 0
    for x in speech_audio:
        t = _mask(x.size, voiced_intervals(x))
        both += int((t & mask_fn(x)).sum())
        trim += int(t.sum())
    false = [false_fn(n) for n in noise]
    return {"recall_vs_trimmer": round(both / trim, 4), "noise_frames_called_speech": round(float(np.mean(false)), 4),
            "noise_files": len(noise), "speech_files": len(speech_audio)}


# --- 5 dB SNR --------------------------------------------------------------------------------
def noise_gain(x: np.ndarray, n: np.ndarray, snr_db: float) -> float:
    """The gain that puts noise ``n`` ``snr_db`` dB under the RMS of ``x``."""
    px, pn = np.mean(x.astype(np.float64) ** 2), np.mean(n.astype(np.float64) ** 2)
    return float(np.sqrt(px / (pn * 10 ** (snr_db / 10))))


def mix(x: np.ndarray, n: np.ndarray, snr_db: float, offset: int) -> np.ndarray:
    """``x`` plus the noise ``n`` (looped from ``offset``) at ``snr_db`` dB SNR."""
    n = np.resize(np.roll(n, -offset), x.size)
    return (x + noise_gain(x, n, snr_db) * n).astype(np.float32)


def noise_files() -> list[Path]:
    return sorted((SHARED / "noise").glob("*.flac"))


def snr5(k: int, snr_db: float = 5.0) -> dict:
    from voicegate.device.endpoint import Endpointer
    from voicegate.device.features import featurize
    from voicegate.device.runtime import Gate
    from voicegate.device.stream import ArraySource

    roles = json.loads((SHARED / "librispeech" / "roles.json").read_text())
    files = corpus_files("librispeech", k, seed=2, speakers=set(roles["allowed"]))
    noises = [load_audio(p) for p in noise_files()]
    rng = np.random.default_rng(0)
    mixes, sources = [], []
    for i, path in enumerate(files):
        x = load_audio(path)[: 10 * SR]
        n = noises[i % len(noises)]
        offset = int(rng.integers(0, n.size))
        mixes.append((path.name, noise_files()[i % len(noises)].stem, mix(x, n, snr_db, offset)))
        sources.append((x, np.resize(np.roll(n, -offset), x.size)))
    images = []
    for name, nname, y in mixes:
        try:
            images.append(featurize(y))
        except AudioError:
            images.append(None)
    heard = 0  # listen: the endpointer opens on the speech inside 1 s of the same noise each side
    for (_, _, y), (x, n) in zip(mixes, sources):
        pad = (noise_gain(x, n, snr_db) * np.resize(n, SR)).astype(np.float32)
        ep = Endpointer()
        utts = [u for chunk in ArraySource(np.concatenate([pad, y, pad]), 1600) for u in ep.feed(chunk)]
        heard += bool(utts + ep.flush())
    out = {"snr_db": snr_db, "utterances": len(mixes), "corpus": "librispeech allowed speakers " + ",".join(roles["allowed"]),
           "decided": sum(i is not None for i in images), "listen_endpointer_found_speech": heard,
           "not_decided": [f"{a} + {b}" for (a, b, _), i in zip(mixes, images) if i is None], "models": []}
    for model in shipped_gate_models():
        gate = Gate.load(model)
        counts: dict = {}
        for img in images:
            if img is not None:
                d = gate.decide_images(img)
                counts[d.decision] = counts.get(d.decision, 0) + 1
        out["models"].append({"model": model.name, "decisions": counts})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "vad.json")
    ap.add_argument("--files", type=int, default=60, help="files per corpus for 'kept'")
    ap.add_argument("--snr-files", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--webrtcvad-path", help="a folder holding webrtcvad (pip install --target DIR webrtcvad-wheels)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, not the figures")
    ap.add_argument("--nonspeech", action="store_true",
                    help="only the GRANTED counts on the non-speech suite (in-process and listen --from-file)")
    ap.add_argument("--kept-detail", action="store_true",
                    help="only where the recall against the trimmer goes: pitched frames, padding, worst files")
    args = ap.parse_args(argv)
    if args.kept_detail:
        result = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "detector": speech.speech_contract(speech.default_detector()),
                  "kept_detail": [kept_detail(c, args.files) for c in ("librispeech", "speechocean762")],
                  "nonspeech_decidable_by_rule": nonspeech_decidable_by_rule()}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["kept_detail"], indent=1))
        return 0
    if args.nonspeech:
        result = nonspeech_counts(listen=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
        return 0
    if args.smoke:
        args.files, args.snr_files, args.repeats = 3, 3, 1
    t0 = time.time()
    result = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
              "detector": speech.speech_contract(speech.default_detector()),
              "rule": speech.default_detector().config.to_dict(), "smoke": args.smoke,
              "encoders_not_measured": shipped_encoders()}
    result["cost"] = cost(args.repeats, 10.0 if args.smoke else 60.0)
    print("cost", json.dumps(result["cost"]), flush=True)
    if (SHARED / "librispeech" / "manifest.csv").is_file():
        from nonspeech import noise_pieces

        pieces = [x for name, x in noise_pieces(SHARED / "noise") if name.endswith("@-26dBFS")]
        result["compare"] = compare(corpus_files("librispeech", max(3, args.files // 3), seed=3),
                                    pieces[:: (20 if args.smoke else 2)], args.webrtcvad_path)
        print("compare", json.dumps(result["compare"]), flush=True)
        result["kept"] = [kept(c, args.files) for c in ("librispeech", "speechocean762") if (SHARED / c / "manifest.csv").is_file()]
        print("kept", json.dumps(result["kept"]), flush=True)
        result["snr5"] = snr5(args.snr_files)
        print("snr5", json.dumps(result["snr5"]), flush=True)
    else:
        result["shared_data"] = f"not found at {SHARED}: compare, kept and snr5 not measured"
    models = shipped_gate_models()
    if models and not args.smoke:
        result["listen_cpu"] = listen_cpu(models[-1])
        print("listen_cpu", json.dumps(result["listen_cpu"]), flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
