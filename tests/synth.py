"""Synthetic speech-like audio and tiny corpora for tests (no real data needed).

Each synthetic "speaker" is the repository's espeak-ng recording (models/example-espeak.wav) played at
its own speed (pitch and vocal-tract length) and coloured by its own formants, with pauses: the
device's voice-activity model takes it for speech (only speech is scored), trimming has real
silence to remove, and a classifier has real spectral identity to learn.
"""

from __future__ import annotations

import functools
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


EXAMPLE_SPEECH = Path(__file__).resolve().parents[1] / "models" / "example-espeak.wav"  # espeak-ng
EXAMPLE_F0 = 100.0  # Hz, about the median F0 of EXAMPLE_SPEECH
_RESONATOR_TAPS = 512


def _voice_params(speaker: str) -> tuple[float, tuple]:
    if speaker in VOICES:
        return VOICES[speaker]
    h = sum(ord(c) * (i + 1) for i, c in enumerate(speaker))
    return 90.0 + (h % 160), (400 + h % 500, 1000 + (h * 7) % 1400, 2300 + (h * 13) % 1000)


def _resonator(fc: float, sr: int, bandwidth: float = 150.0) -> np.ndarray:
    """Peak-normalised impulse response of a two-pole resonator at ``fc`` Hz."""
    r = np.exp(-np.pi * bandwidth / sr)
    w = 2 * np.pi * fc / sr
    k = np.arange(_RESONATOR_TAPS)
    h = r**k * np.sin((k + 1) * w) / np.sin(w)
    return h / np.max(np.abs(h))


@functools.lru_cache(maxsize=32)
def _base_voice(speaker: str) -> np.ndarray:
    """EXAMPLE_SPEECH made into this speaker's voice (read-only, 16 kHz).

    Played faster or slower (pitch and vocal-tract length together: the F0 moves towards the
    speaker's), then coloured by the speaker's three formants, so each voice has its own
    pitch and spectral envelope. Its pauses of 0.25 s or more are cut out first.
    """
    from voicegate.device.audio import resample, voiced_intervals

    x, sr = sf.read(str(EXAMPLE_SPEECH), dtype="float32")
    x = np.concatenate([x[a:b] for a, b in voiced_intervals(x, top_db=30.0)])  # no long gaps
    f0, formants = _voice_params(speaker)
    factor = float(np.clip(np.sqrt(f0 / EXAMPLE_F0), 0.85, 1.6))  # pitch and formants x factor
    y = resample(x.astype(np.float32), sr, int(round(sr / factor))).astype(np.float64)
    coloured = sum(np.convolve(y, _resonator(fc, SR))[: y.size] for fc in formants)
    y = 0.5 * y / np.max(np.abs(y)) + 0.5 * coloured / np.max(np.abs(coloured))
    y /= np.max(np.abs(y))
    y.flags.writeable = False
    return y


def synth_voice(
    speaker: str, seconds: float, seed: int = 0, sr: int = SR, pauses: bool = True
) -> np.ndarray:
    """Speech float32 audio for one of VOICES (or a voice derived from the name).

    Real speech, so the device's voice-activity model takes it for speech: the espeak-ng
    recording models/example-espeak.wav made into each speaker's voice (see :func:`_base_voice`),
    from a seeded starting point, looped to ``seconds``. With ``pauses`` it has 0.4 s
    silences (one per 2 s), so trimming has real silence to remove.
    """
    rng = np.random.default_rng(seed)
    base = _base_voice(speaker)
    n16 = int(round(seconds * SR))
    start = int(rng.integers(0, base.size))
    reps = int(np.ceil((start + n16) / base.size)) + 1
    out = np.tile(base, reps)[start : start + n16].copy()
    out *= rng.uniform(0.7, 1.0)
    if pauses:
        gate = np.ones(n16)
        for s in rng.uniform(0, seconds, size=max(1, int(seconds / 2))):
            a = int(s * SR)
            gate[a : a + int(0.4 * SR)] = 0.0
        out *= np.convolve(gate, np.ones(160) / 160, mode="same")
    out += 0.001 * rng.standard_normal(n16)
    out = 0.5 * out / (np.max(np.abs(out)) + 1e-9)
    if sr != SR:
        from voicegate.device.audio import resample

        out = resample(out.astype(np.float32), SR, sr)[: int(seconds * sr)]
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
