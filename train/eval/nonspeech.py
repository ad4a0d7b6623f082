"""Non-speech attempts for ``voicegate eval``: sounds that must never open the door (issue 10).

The attempts are ``attempt_seconds`` clips of

- the shared noise files (``<corpus>/../noise``), only the part training never read (the last
  ``1 - NOISE_TRAIN_SHARE`` of each file, :func:`~voicegate.train.data.augment.noise_part`), each
  piece at -40, -26 and -12 dBFS RMS;
- generated sounds at the same three levels and two seeds (random streams other than
  training's): white, pink and brown noise, mains hum at 50 and 60 Hz, and near-silence with hum
  (hum at -60 and -50 dBFS only).

Each attempt is decided twice per model:

- **device path**: the gate's featurizer (the speech detector selects the frames; too little
  speech is "no speech found", no decision, no access) then the policy, as ``enroll-check`` does;
  the non-speech false-accept rate is the share of attempts GRANTED;
- **model only**: every 2 s window of the raw clip straight into the model (no detector), which
  measures what the classifier itself says about noise: the p(allowed) of pure noise, and the
  share the policy would grant if the detector let the sound through.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from voicegate.device.audio import SAMPLE_RATE, AudioError
from voicegate.device.features import INFER_HOP_SECONDS, featurize, frame_windows, spectrogram
from voicegate.device.policy import GRANTED, UNCERTAIN

log = logging.getLogger(__name__)

LEVELS_DBFS = (-40.0, -26.0, -12.0)
SILENCE_HUM_DBFS = (-60.0, -50.0)
GENERATED_KINDS = ("white", "pink", "brown", "hum50", "hum60")
SEEDS = (0, 1)
EVAL_STREAM = 7_000_000  # generated attempts use rng streams far from training's keyed ones
NO_SPEECH = "NO_SPEECH"  # the detector found too little speech: no decision, no access


def generated_clip(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """One unit-RMS clip of a generated kind (white / pink / brown / hum50 / hum60)."""
    from voicegate.train.data.augment import NOISE_EXPONENTS, coloured_noise, hum

    if kind.startswith("hum"):
        return hum(n, rng, mains_hz=float(kind[3:]))
    return coloured_noise(n, rng, NOISE_EXPONENTS[kind])


def nonspeech_attempts(noise_dir: Optional[Path], attempt_seconds: float = 3.0) -> list[tuple[str, str, np.ndarray]]:
    """[(name, kind, clip)]: the shared noise files' held-out parts and the generated sounds."""
    from voicegate.train.data.augment import at_dbfs, load_noises

    n = int(round(attempt_seconds * SAMPLE_RATE))
    out = []
    for file, x in sorted(load_noises(noise_dir, part="eval").items()):
        for k in range(x.size // n):
            piece = x[k * n : (k + 1) * n]
            for level in LEVELS_DBFS:
                out.append((f"{file}[{k}]@{level:g}", Path(file).stem, at_dbfs(piece, level)))
    for seed in SEEDS:
        for j, kind in enumerate(GENERATED_KINDS):
            clip = generated_clip(kind, n, np.random.default_rng([EVAL_STREAM, seed, j]))
            for level in LEVELS_DBFS:
                out.append((f"{kind}#{seed}@{level:g}", kind, at_dbfs(clip, level)))
        clip = generated_clip("hum50", n, np.random.default_rng([EVAL_STREAM, seed, 99]))
        for level in SILENCE_HUM_DBFS:
            out.append((f"silence_hum#{seed}@{level:g}", "silence_hum", at_dbfs(clip, level)))
    return out


def _rate(k: int, n: int) -> dict:
    from voicegate.train.eval.verification import wilson_interval

    return {"k": int(k), "n": int(n), "rate": float(k / n) if n else 0.0, "ci95": wilson_interval(int(k), int(n))}


def score_nonspeech(gates: dict, attempts: list) -> dict:
    """{model name: report} for the non-speech ``attempts`` (see the module docstring)."""
    device = {name: [] for name in gates}
    model_d = {name: [] for name in gates}
    model_p = {name: [] for name in gates}
    for _, _, clip in attempts:
        try:
            images = featurize(clip, sample_rate=SAMPLE_RATE, hop_seconds=INFER_HOP_SECONDS)
        except AudioError:  # NoSpeechError included: the device takes no decision
            images = None
        raw = spectrogram(frame_windows(clip, INFER_HOP_SECONDS))
        for name, gate in gates.items():
            device[name].append(NO_SPEECH if images is None else gate.decide_samples(gate.predict(images)).decision)
            d = gate.decide_samples(gate.predict(raw))
            model_d[name].append(d.decision)
            model_p[name].append(d.p_allow)
    kinds = np.asarray([k for _, k, _ in attempts])
    out = {}
    for name in gates:
        dev, mod, p = np.asarray(device[name]), np.asarray(model_d[name]), np.asarray(model_p[name], np.float64)
        n = int(dev.size)
        per_kind = {}
        for kind in dict.fromkeys(kinds.tolist()):
            m = kinds == kind
            per_kind[kind] = {"n": int(m.sum()), "device_granted": int(np.sum(dev[m] == GRANTED)),
                              "model_only_granted": int(np.sum(mod[m] == GRANTED)),
                              "p_allow_mean": float(p[m].mean()), "p_allow_max": float(p[m].max())}
        out[name] = {
            "n": n,
            "device": {"far": _rate(np.sum(dev == GRANTED), n), "no_speech": int(np.sum(dev == NO_SPEECH)),
                       "uncertain": int(np.sum(dev == UNCERTAIN))},
            "model_only": {"far": _rate(np.sum(mod == GRANTED), n), "uncertain": int(np.sum(mod == UNCERTAIN)),
                           "p_allow_mean": float(p.mean()) if n else None,
                           "p_allow_p95": float(np.percentile(p, 95)) if n else None,
                           "p_allow_max": float(p.max()) if n else None,
                           "above_accept": int(np.sum(p >= gates[name].thresholds.accept))},
            "per_kind": per_kind,
        }
    return out


def protocol(noise_dir: Optional[Path], attempts: list, attempt_seconds: float) -> dict:
    """What the non-speech attempts were (for eval.json)."""
    from voicegate.train.data.augment import NOISE_TRAIN_SHARE

    kinds: dict = {}
    for _, k, _ in attempts:
        kinds[k] = kinds.get(k, 0) + 1
    return {
        "attempts": len(attempts),
        "attempt_seconds": attempt_seconds,
        "noise_dir": None if noise_dir is None else Path(noise_dir).name,
        "noise_part": f"the last {1 - NOISE_TRAIN_SHARE:.0%} of each noise file (training read the first "
                      f"{NOISE_TRAIN_SHARE:.0%})",
        "levels_dbfs": list(LEVELS_DBFS),
        "silence_hum_dbfs": list(SILENCE_HUM_DBFS),
        "per_kind": kinds,
    }
