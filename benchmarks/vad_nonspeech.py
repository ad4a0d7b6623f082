"""The non-speech side of the speech-detector benchmark (``benchmarks/vad.py``, which runs it):
how many clips of the non-speech suite (``tests/nonspeech.py``) each shipped model GRANTS, in
process and through ``voicegate listen --from-file``; how many other frame-selection rules would
decide on; and listen's CPU while it hears only noise. Nothing here asserts a figure.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from voicegate.train.data.fingerprint import shared_data_dir

REPO = Path(__file__).resolve().parent.parent
SHARED = shared_data_dir()  # as the tests
sys.path.insert(0, str(REPO / "tests"))

from voicegate.device import speech  # noqa: E402
from voicegate.device.audio import SAMPLE_RATE, AudioError, load_audio  # noqa: E402

SR = SAMPLE_RATE


def rule_variants(config) -> dict:
    """Frame-selection rules other than the shipped one (each a contract change: every model
    re-exported): lower start / continue thresholds, with the shipped and a longer padding."""
    from dataclasses import replace

    out = {}
    for thr, neg in ((0.5, 0.35), (0.35, 0.2), (0.25, 0.15)):
        for pad in (0.25, 0.5):
            out[f"threshold {thr}/{neg}, pad {pad}"] = replace(config, threshold=thr, neg_threshold=neg, pad_s=pad)
    return out


def nonspeech_decidable_by_rule() -> dict:
    """How many clips of the non-speech suite each rule variant would decide on (not 'no speech')."""
    import nonspeech

    base = speech.default_detector()
    clips = list(nonspeech.suite(SHARED / "noise" if (SHARED / "noise").is_dir() else None))
    probs = [(name, x, base.probabilities(x)) for name, x in clips]
    out = {"suite_clips": len(clips)}
    for key, cfg in rule_variants(base.config).items():
        det = speech.SpeechDetector(cfg, base.model)
        hits = [name for name, x, pr in probs if det.select(x, pr).decidable]
        out[key] = {"decidable": len(hits), "clips": hits[:10]}
    return out


# --- listen CPU ------------------------------------------------------------------------------
def listen_cpu(model: Path) -> dict:
    import soundfile as sf

    rng = np.random.default_rng(0)
    wm = SHARED / "noise" / "washing_machine.flac"
    sounds = {"digital_silence": lambda n: np.zeros(n, np.float32),
              "room_noise_-50dBFS": lambda n: (10 ** (-50 / 20) * rng.standard_normal(n)).astype(np.float32)}
    if wm.is_file():
        from nonspeech import set_rms_dbfs

        base = load_audio(wm)
        sounds["washing_machine_-26dBFS"] = lambda n: set_rms_dbfs(np.resize(base, n), -26.0)
    out = {"method": "child CPU (user+sys) of `voicegate listen --from-file`, (70 s run - 10 s run) / 60 s",
           "model": model.name, "sounds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in sounds.items():
            cpu = {}
            for seconds in (10, 70):
                path = Path(tmp) / f"{name}_{seconds}.wav"
                sf.write(str(path), make(seconds * SR), SR, subtype="FLOAT")
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                r = subprocess.run([sys.executable, "-m", "voicegate.device", "listen", "--from-file", str(path),
                                    "--model", str(model), "--json"], capture_output=True, text=True)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[seconds] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                decisions = sum(1 for line in r.stdout.splitlines() if line.startswith("{"))
            out["sounds"][name] = {"cpu_share_of_one_core": round((cpu[70] - cpu[10]) / 60.0, 4),
                                   "cpu_s_10s_file": round(cpu[10], 2), "cpu_s_70s_file": round(cpu[70], 2),
                                   "decisions_in_70s": decisions, "exit_code": r.returncode}
    return out


# --- the non-speech suite --------------------------------------------------------------------
def nonspeech_counts(listen: bool) -> dict:
    """GRANTED counts on the non-speech suite (tests/nonspeech.py) for every shipped gate model.

    In-process through ``Gate.decide_audio`` (enroll-check's path: an AudioError there is its
    exit 4); with ``listen``, also ``voicegate listen --from-file`` on the whole suite joined
    by 1 s of silence. This is the code that measured the "before" counts of issue 10 (then
    benchmarks/nonspeech_count.py, run before the detector existed).
    """
    import soundfile as sf

    import nonspeech
    from test_nonspeech import open_decider
    from test_nonspeech import shipped_gate_models as gate_models
    from voicegate.device.model_files import file_sha256

    clips = list(nonspeech.suite(SHARED / "noise" if (SHARED / "noise").is_dir() else None))
    out = {"suite_clips": len(clips), "in_process": [], "listen": [],
           "encoders": "decide against the shipped demo household (--demo)"}
    det = speech.default_detector()
    found = [(name, det.select(x)) for name, x in clips]
    out["detector"] = {  # the clips the detector finds any speech in, against the rule
        "rule": {"min_speech_s": det.config.min_speech_s, "min_share": det.config.min_share},
        "clips_with_speech": sorted(((name, round(f.speech_seconds, 2), round(f.share, 3), f.decidable)
                                     for name, f in found if f.speech_seconds > 0), key=lambda r: -r[1]),
        "decidable": sum(f.decidable for _, f in found)}
    models = [(m, *open_decider(m)) for m in gate_models()]
    for model, gate, _ in models:
        counts: dict = {}
        granted = []
        for name, x in clips:
            try:
                d = gate.decide_audio(x)
            except AudioError:
                counts["no_decision_exit4"] = counts.get("no_decision_exit4", 0) + 1
                continue
            counts[d.decision] = counts.get(d.decision, 0) + 1
            if d.decision == "GRANTED":
                granted.append((name, round(d.p_allow, 3), round(d.std, 3)))
        out["in_process"].append({"model": model.name, "sha256": file_sha256(model), "outcomes": counts,
                                  "granted": len(granted), "granted_clips": granted})
        print(f"{model.name}: GRANTED {len(granted)} of {len(clips)} ({counts})", flush=True)
    out["model_only"] = model_only_counts(models, clips)
    if listen:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "nonspeech.wav"
            sf.write(str(wav), nonspeech.concatenation([x for _, x in clips]), SR, subtype="FLOAT")
            for model, _, extra in models:
                r = subprocess.run([sys.executable, "-m", "voicegate.device", "listen", "--from-file", str(wav),
                                    "--model", str(model), "--json", *extra], capture_output=True, text=True)
                records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
                counts = {}
                for rec in records:
                    counts[rec["decision"]] = counts.get(rec["decision"], 0) + 1
                out["listen"].append({"model": model.name, "exit_code": r.returncode, "decisions": len(records),
                                      "counts": counts, "granted": counts.get("GRANTED", 0)})
                print(f"listen {model.name}: GRANTED {counts.get('GRANTED', 0)} of {len(records)} decisions", flush=True)
    return out


def model_only_counts(models, clips) -> list[dict]:
    """Every window of each raw clip straight into the model, no speech detector: what the
    model itself says about noise (issue 10's shortcut: the old classifiers granted 9 to 12 of
    these clips before the detector existed, ``benchmarks/nonspeech-before.json``)."""
    from voicegate.device.features import frame_windows, spectrogram

    rows = []
    for model, gate, _ in models:
        counts: dict = {}
        top = []
        for name, x in clips:
            d = gate.decide_images(spectrogram(frame_windows(x)))
            counts[d.decision] = counts.get(d.decision, 0) + 1
            top.append((round(d.p_allow, 3), name))
        top.sort(reverse=True)
        rows.append({"model": model.name, "outcomes": counts, "granted": counts.get("GRANTED", 0),
                     "highest_p_allow": top[:5]})
        print(f"model only {model.name}: GRANTED {counts.get('GRANTED', 0)} ({counts})", flush=True)
    return rows


def shipped_gate_models() -> list[Path]:
    """The shipped classifier models (an encoder model decides against enrolled profiles,
    which these benchmarks do not build; the JSON lists it under ``encoders_not_measured``)."""
    from test_nonspeech import model_kind
    from test_nonspeech import shipped_gate_models as gate_models

    return [p for p in gate_models() if model_kind(p) == "classifier"]


def shipped_encoders() -> list[str]:
    from test_nonspeech import model_kind
    from test_nonspeech import shipped_gate_models as gate_models

    return [p.name for p in gate_models() if model_kind(p) == "encoder"]
