"""Only a human voice opens the door (issue 10): the non-speech suite is never GRANTED.

The suite (tests/nonspeech.py): the shared noise files cut into 3 s pieces at -40, -26 and
-12 dBFS RMS, and generated white, pink and brown noise, 50/60 Hz hum with harmonics, tones,
clicks and music-like chords. Every shipped gate model (every model in models/manifest.json
that carries a voicegate contract, so re-exported and encoder models are picked up) sees all
of it in-process, through the same path as ``enroll-check`` (featurize -> model -> policy);
the CLI ``enroll-check`` and ``listen --from-file`` run on a few clips and on a concatenation.

Encoder models decide against enrolled profiles: :func:`open_decider` gives them the shipped
demo household (issue 12; the hook for any other enrolled store).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nonspeech
import numpy as np
import pytest
import soundfile as sf

from voicegate.device.audio import NoSpeechError
from voicegate.device.contract import EXIT_STOPPED, ModelContract
from voicegate.device.features import featurize
from voicegate.device.speech import default_detector

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
GRANTED = "GRANTED"


def shipped_gate_models() -> list[Path]:
    """The models in models/manifest.json that carry a voicegate contract (gate models)."""
    import onnxruntime as ort

    out = []
    for name in sorted(json.loads((MODELS / "manifest.json").read_text())):
        path = MODELS / name
        if path.suffix != ".onnx" or not path.is_file():
            continue
        so = ort.SessionOptions()
        so.log_severity_level = 3
        meta = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_modelmeta()
        if "voicegate.contract" in meta.custom_metadata_map:
            out.append(path)
    return out


def model_kind(path: Path) -> str:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    meta = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_modelmeta()
    return ModelContract.from_metadata(meta.custom_metadata_map).kind


def model_params(paths) -> list:
    """pytest params of ``paths``; an encoder other than the default decides against the demo
    household enrolled with it from the shared corpus (conftest.demo_household_for): marked shared."""
    from voicegate.device.encoder import DEFAULT_ENCODER_NAME

    return [pytest.param(p, id=p.name, marks=pytest.mark.shared
                         if model_kind(p) == "encoder" and p.name != DEFAULT_ENCODER_NAME else ())
            for p in paths]


MODEL_PATHS = shipped_gate_models()
MODELS_PARAMS = model_params(MODEL_PATHS)


def open_decider(path: Path):
    """(decider with ``decide_images(images)``, extra CLI arguments) for a shipped gate model.

    Classifier models need nothing else. An encoder model decides against enrolled profiles:
    here the shipped demo household (models/demo-profiles: allowed LibriSpeech speakers
    enrolled from real speech), ``--demo`` on the command line. HOOK: to test against another
    enrolled store, build it here and return ``["--profiles", DIR]``.
    """
    from voicegate.device.runtime import Gate

    if model_kind(path) != "encoder":
        return Gate.load(path), []
    from voicegate.device.encoder import Encoder
    from voicegate.device.identify import demo_dir
    from voicegate.device.profiles import ProfileStore
    from voicegate.device.scoring import ProfileGate

    assert demo_dir().is_dir(), f"{path.name}: the shipped demo household {demo_dir()} is missing"
    encoder = Encoder.load(path)
    demo = ProfileStore(demo_dir())
    if all(p.encoder_sha256 == encoder.sha256 for p in demo.load_all(None)):
        return ProfileGate(encoder, demo), ["--demo"]
    from conftest import demo_household_for

    store = demo_household_for(path)  # the same household enrolled with this (non-default) encoder
    return ProfileGate(encoder, ProfileStore(store)), ["--profiles", str(store)]


@pytest.fixture(scope="module")
def generated_clips():
    return list(nonspeech.generated())


@pytest.fixture(scope="module")
def noise_clips(noise_dir):
    return list(nonspeech.noise_pieces(noise_dir))


def detected(clips):
    """(name, audio, what the detector found) for each clip: one detector pass per clip."""
    det = default_detector()
    return [(name, x, det.select(x)) for name, x in clips]


@pytest.fixture(scope="module")
def noise_detected(noise_clips):
    return detected(noise_clips)


@pytest.fixture(scope="module")
def generated_detected(generated_clips):
    return detected(generated_clips)


def outcomes(decider, found) -> tuple[Counter, list]:
    """Decision counts (and the GRANTED clips) through the enroll-check path: featurize -> gate."""
    counts: Counter = Counter()
    granted = []
    for name, x, speech in found:
        if not speech.decidable:  # featurize raises NoSpeechError on these: exit 4
            counts["no speech (exit 4)"] += 1
            continue
        try:
            images = featurize(x)
        except NoSpeechError:
            counts["no speech (exit 4)"] += 1
            continue
        d = decider.decide_images(images)
        counts[d.decision] += 1
        if d.decision == GRANTED:
            granted.append((name, round(d.p_allow, 3)))
    return counts, granted


@pytest.mark.shared
@pytest.mark.slow
def test_most_of_the_suite_is_not_even_speech(noise_detected, generated_detected):
    """The detector turns away nearly all of it before any model sees it (exit 4)."""
    found = noise_detected + generated_detected
    decided = [(name, round(s.speech_seconds, 2), round(s.share, 2)) for name, _, s in found if s.decidable]
    assert len(decided) <= 0.05 * len(found), decided
    assert not any(s.decidable for _, _, s in generated_detected), decided


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS_PARAMS)
def test_shared_noise_is_never_granted(model, noise_detected, noise_dir):
    decider, _ = open_decider(model)
    counts, granted = outcomes(decider, noise_detected)
    files = {f.stem for f in noise_dir.glob("*.flac")}
    assert files and {name.split("[")[0] for name, _, _ in noise_detected} == files  # every file, in pieces
    assert sum(counts.values()) == len(noise_detected)
    assert granted == [], (counts, granted)


@pytest.mark.parametrize("model", MODELS_PARAMS)
def test_generated_sounds_never_reach_the_model(model, generated_detected):
    """enroll-check's path: every generated sound is refused as "no speech" (exit 4) before any
    model sees it. What the model itself would say is the next test."""
    decider, _ = open_decider(model)
    counts, granted = outcomes(decider, generated_detected)
    assert counts == {"no speech (exit 4)": len(generated_detected)}, (counts, granted)


def model_only(decider, found) -> tuple[Counter, list]:
    """Decision counts with every window of the raw clip straight into the model: no speech
    detector (benchmarks/vad_nonspeech.py's ``model_only``)."""
    from voicegate.device.features import frame_windows, spectrogram

    counts: Counter = Counter()
    granted = []
    for name, x, _ in found:
        d = decider.decide_images(spectrogram(frame_windows(x)))
        counts[d.decision] += 1
        if d.decision == GRANTED:
            granted.append((name, round(d.p_allow, 3)))
    return counts, granted


ENCODER_PARAMS = model_params([p for p in MODEL_PATHS if model_kind(p) == "encoder"])


@pytest.mark.parametrize("model", ENCODER_PARAMS)
def test_the_encoder_itself_grants_no_generated_sound(model, generated_detected):
    """Defence in depth: even with the speech detector out of the way, a shipped encoder matches
    no generated sound to the demo household. (The study's classifiers do grant some pure tones
    this way, ``benchmarks/nonspeech.json``: for them the detector is the only guard.)"""
    decider, _ = open_decider(model)
    counts, granted = model_only(decider, generated_detected)
    assert sum(counts.values()) == len(generated_detected) and granted == [], (counts, granted)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("model", ENCODER_PARAMS)
def test_the_encoder_itself_grants_no_shared_noise(model, noise_detected):
    decider, _ = open_decider(model)
    counts, granted = model_only(decider, noise_detected)
    assert sum(counts.values()) == len(noise_detected) and granted == [], (counts, granted)


def hard_clips(noise_detected, generated_detected):
    """The clips the detector finds any speech in (the hardest), plus every 20th other clip."""
    found = noise_detected + generated_detected
    hard = [(name, x) for name, x, s in found if s.speech_seconds > 0]
    rest = [(name, x) for name, x, s in found if s.speech_seconds == 0]
    return hard + rest[::20]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voicegate.device", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS_PARAMS)
def test_enroll_check_cli_says_no_speech(model, tmp_path, noise_clips, generated_clips):
    _, extra = open_decider(model)
    picks = dict(noise_clips + generated_clips)
    # the piece both shipped models GRANTED before the detector, and a generated chord
    for name in ("washing_machine[8]@-12dBFS", "chords#1@-26dBFS"):
        assert name in picks, (name, "renamed or re-cut: pick another clip")
        path = tmp_path / "clip.wav"
        sf.write(str(path), picks[name], nonspeech.SR, subtype="FLOAT")
        r = cli("enroll-check", path, "--model", model, *extra)
        assert r.returncode == 4, (name, r.returncode, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "no speech found" in lines[0], (name, r.stderr)


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS_PARAMS)
def test_listen_opens_no_utterance_on_the_hardest_clips(model, tmp_path, noise_detected, generated_detected):
    """listen's endpointer opens no utterance on any of them, so there is no decision at all
    (exit 8 at the end of the file). A decision here, even DENIED, means the endpointer now
    opens on non-speech: look at which clip (the in-process tests above cover the model)."""
    _, extra = open_decider(model)
    clips = hard_clips(noise_detected, generated_detected)
    path = tmp_path / "nonspeech.wav"
    sf.write(str(path), nonspeech.concatenation([x for _, x in clips]), nonspeech.SR, subtype="FLOAT")
    r = cli("listen", "--from-file", path, "--model", model, "--json", *extra)
    assert r.returncode == EXIT_STOPPED, r.stderr  # the end of the file: never 0
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert records == [], (len(clips), Counter(rec["decision"] for rec in records), records[:3])


def test_listen_endpointer_finds_nothing_in_pure_noise(generated_clips):
    """No utterance (so no decision) from a minute of the generated sounds back to back."""
    from voicegate.device.endpoint import Endpointer
    from voicegate.device.stream import ArraySource

    audio = nonspeech.concatenation([x for _, x in generated_clips], gap_seconds=0.5)
    ep = Endpointer()
    utts = [u for chunk in ArraySource(audio, 1600) for u in ep.feed(chunk)] + ep.flush()
    assert [(round(u.start_s, 2), round(u.voiced_seconds, 2)) for u in utts] == []


def test_a_voice_still_opens_the_endpointer_after_the_noise(generated_clips):
    """The same stream with real speech after it: the speech is found (the test above is not vacuous)."""
    from voicegate.device.audio import load_audio
    from voicegate.device.endpoint import Endpointer
    from voicegate.device.stream import ArraySource

    voice = load_audio(MODELS / "example-espeak.wav")
    noise = nonspeech.concatenation([x for _, x in generated_clips[:9]])
    audio = np.concatenate([noise, voice, nonspeech.gap(1.0)])
    ep = Endpointer()
    utts = [u for chunk in ArraySource(audio, 1600) for u in ep.feed(chunk)] + ep.flush()
    starts = [u.start_s for u in utts]
    assert starts and all(t >= noise.size / nonspeech.SR - ep.config.pre_roll - 0.05 for t in starts), starts
