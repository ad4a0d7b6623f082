"""Synthetic speech-like audio and tiny corpora for tests (no real data needed).

Each synthetic "speaker" is a glottal-pulse source at its own F0 through its own formant
filters, with syllable-like amplitude bursts and pauses, so trimming has real silence to remove
and a classifier has real spectral identity to learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000

# (f0 Hz, formants Hz) per synthetic speaker
VOICES = {
    "f1": (210.0, (850, 1610, 2900)),
    "f2": (235.0, (500, 2300, 3100)),
    "m1": (110.0, (650, 1100, 2500)),
    "m2": (130.0, (400, 1900, 2600)),
    "m3": (95.0, (750, 1300, 2400)),
    "f3": (190.0, (600, 1800, 3300)),
}


def synth_voice(
    speaker: str, seconds: float, seed: int = 0, sr: int = SR, pauses: bool = True
) -> np.ndarray:
    """Speech-like float32 audio for one of VOICES (or a voice derived from the name)."""
    rng = np.random.default_rng(seed)
    if speaker in VOICES:
        f0, formants = VOICES[speaker]
    else:
        h = sum(ord(c) * (i + 1) for i, c in enumerate(speaker))
        f0 = 90.0 + (h % 160)
        formants = (400 + h % 500, 1000 + (h * 7) % 1400, 2300 + (h * 13) % 1000)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f = f0 * (1 + 0.06 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f) / sr
    src = np.zeros(n)
    for k in range(1, int(4000 / f0)):
        src += np.sin(k * phase) / k
    out = np.zeros(n)
    for fc in formants:
        bw = 80.0
        r = np.exp(-np.pi * bw / sr)
        a1, a2 = -2 * r * np.cos(2 * np.pi * fc / sr), r * r
        y = np.zeros(n)
        # simple two-pole resonator
        y1 = y2 = 0.0
        for i in range(n):
            y0 = src[i] - a1 * y1 - a2 * y2
            y[i] = y0
            y2, y1 = y1, y0
        out += y / np.max(np.abs(y) + 1e-9)
    if pauses:
        syl = (np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)) > -0.3).astype(float)
        gate = np.ones(n)
        for s in rng.uniform(0, seconds, size=max(1, int(seconds / 2))):
            a = int(s * sr)
            gate[a : a + int(0.4 * sr)] = 0.0
        env = np.convolve(syl * gate, np.ones(160) / 160, mode="same")
        out *= env
    out += 0.001 * rng.standard_normal(n)
    out = 0.5 * out / (np.max(np.abs(out)) + 1e-9)
    return out.astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype=subtype)
    return path


def make_manifest_corpus(
    root: Path,
    allowed=("f1", "m1"),
    not_allowed=("f2", "m2"),
    impostors=("m3", "f3"),
    recordings: int = 5,
    seconds: float = 4.0,
) -> Path:
    """A tiny corpus in the shared-data format: manifest.csv + roles.json + FLAC files."""
    root = Path(root)
    rows = ["path,speaker,recording,seconds"]
    for spk in (*allowed, *not_allowed, *impostors):
        for r in range(recordings):
            rel = f"{spk}/{spk}-{r:03d}.flac"
            write_wav(root / rel, synth_voice(spk, seconds, seed=r), subtype="PCM_16")
            rows.append(f"{rel},{spk},{spk}-{r:03d},{seconds}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    roles = {
        "allowed": list(allowed),
        "not_allowed_train": list(not_allowed),
        "heldout_impostors": list(impostors),
    }
    (root / "roles.json").write_text(json.dumps(roles, indent=1))
    return root


def make_daps_corpus(
    root: Path,
    speakers=("f1", "f2", "m1", "m2"),
    scripts: int = 5,
    versions=("clean", "iphone_livingroom1"),
    seconds: float = 3.0,
) -> Path:
    """A tiny corpus in the DAPS layout: <version>/<speaker>_<script>_<version>.wav."""
    root = Path(root)
    for v_i, version in enumerate(versions):
        for spk in speakers:
            for s in range(1, scripts + 1):
                audio = synth_voice(spk, seconds, seed=s)
                if v_i:  # device/room versions: a little reverb-ish smear and noise
                    audio = np.convolve(audio, np.exp(-np.arange(400) / 80.0) / 40.0, "same")
                    audio = audio + 0.005 * np.random.default_rng(s).standard_normal(audio.size)
                write_wav(root / version / f"{spk}_script{s}_{version}.wav", audio.astype(np.float32))
    return root
