"""device/speech.py: the voice-activity model and the speech rule (issue 10).

Unit tests on the repository's own audio (models/example-espeak.wav, synthetic voices, generated
noise); the `shared` tests measure speech kept against the energy trimmer on real corpora and
the decision on allowed speech mixed with the shared noise at 5 dB SNR.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from synth import synth_voice

from voicegate.device import speech
from voicegate.device.audio import NoSpeechError, load_audio
from voicegate.device.contract import ModelError
from voicegate.device.features import feature_contract, featurize

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "models" / "example-espeak.wav"
SR = 16_000


@pytest.fixture(scope="module")
def detector():
    return speech.default_detector()


@pytest.fixture(scope="module")
def example():
    return load_audio(EXAMPLE)


def white(seconds, dbfs, seed=0):
    x = np.random.default_rng(seed).standard_normal(int(seconds * SR))
    return (x * 10 ** (dbfs / 20)).astype(np.float32)


def test_speech_is_found_in_real_speech(detector, example):
    s = detector.select(example)
    assert s.decidable
    assert s.speech_seconds >= 0.6 * s.sounding_seconds
    assert 0.0 < s.share <= 1.0
    # the padded segments lie inside the audio and are what is returned
    assert all(0 <= a < b <= example.size for a, b in s.segments)
    assert s.audio.size == sum(b - a for a, b in s.segments)


@pytest.mark.parametrize("speaker", ["f1", "m1", "visitor"])
def test_the_test_voices_are_speech_to_the_detector(detector, speaker):
    s = detector.select(synth_voice(speaker, 3.0, seed=4))
    assert s.decidable, s.reason()


@pytest.mark.parametrize(
    "name,x",
    [
        ("digital silence", np.zeros(3 * SR, np.float32)),
        ("white noise -20 dBFS", white(3.0, -20.0)),
        ("white noise -50 dBFS", white(3.0, -50.0)),
        ("1 kHz tone", (0.3 * np.sin(2 * np.pi * 1000 * np.arange(3 * SR) / SR)).astype(np.float32)),
        ("DC", np.full(3 * SR, 0.5, np.float32)),
    ],
)
def test_no_speech_in_silence_and_noise(detector, name, x):
    s = detector.select(x)
    assert not s.decidable, name
    with pytest.raises(NoSpeechError, match="no speech found"):
        speech.speech_only(x, where=name, detector=detector)


def test_no_speech_message_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "hum.wav"
    sf.write(str(path), white(2.0, -30.0), SR)
    with pytest.raises(NoSpeechError) as e:
        featurize(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: no speech found")


def test_only_speech_reaches_the_spectrogram(detector, example):
    """Noise between two utterances is not scored: the selection is the speech, not the gap."""
    gap = white(4.0, -30.0, seed=3)
    x = np.concatenate([example, gap, example])
    s = detector.select(x)
    kept_gap = sum(max(0, min(b, example.size + gap.size) - max(a, example.size)) for a, b in s.segments)
    assert kept_gap <= 2 * speech.SpeechConfig().pad_s * SR + speech.FRAME_SAMPLES
    assert s.audio.size >= 1.6 * detector.select(example).audio.size


def test_too_little_speech_in_too_much_sound_is_not_decided(detector, example):
    """One short burst of speech in 20 s of loud noise: under min_share, no decision."""
    burst = example[: int(1.0 * SR)]
    x = np.concatenate([white(10.0, -35.0, 1), burst + white(1.0, -35.0, 2), white(10.0, -35.0, 4)])
    s = detector.select(x)
    assert s.speech_seconds > 0 and s.share < s.config.min_share and not s.decidable


@pytest.mark.parametrize("chunk", [1, 160, 511, 512, 1600, 4097])
def test_stream_probabilities_do_not_depend_on_chunking(detector, example, chunk):
    whole = detector.probabilities(example)
    stream = detector.model.stream()
    parts = [stream.feed(example[i : i + chunk]) for i in range(0, example.size, chunk)]
    got = np.concatenate(parts)
    assert got.shape == whole.shape == (example.size // speech.FRAME_SAMPLES,)
    np.testing.assert_allclose(got, whole, atol=1e-5)


def test_listen_hands_its_frame_probabilities_to_the_decision(detector, example):
    """The endpointer's per-frame probabilities travel with the utterance, so the decision does
    not run the detector again, and they are what selects the frames."""
    from voicegate.device.endpoint import Endpointer

    ep = Endpointer(detector=detector)
    x = np.concatenate([np.zeros(SR, np.float32), example, np.zeros(SR, np.float32)])
    utts = ep.feed(x) + ep.flush()
    assert utts
    for u in utts:
        assert u.probs.shape == (u.audio.size // speech.FRAME_SAMPLES,)
        assert u.audio.size % speech.FRAME_SAMPLES == 0
        with_probs = detector.select(u.audio, u.probs)
        assert with_probs.decidable
        # the same frames with the model's own verdict replaced by "no speech": nothing is selected
        assert not detector.select(u.audio, np.zeros_like(u.probs)).decidable
    with pytest.raises(NoSpeechError):
        featurize(utts[0].audio, speech_probs=np.zeros_like(utts[0].probs))
    with pytest.raises(ValueError, match="frame probabilities"):
        detector.select(utts[0].audio, utts[0].probs[:-1])


def test_hysteresis_rule():
    c = speech.SpeechConfig(threshold=0.5, neg_threshold=0.35, min_silence_s=3 * speech.FRAME_SECONDS,
                            min_segment_s=2 * speech.FRAME_SECONDS)
    d = speech.SpeechDetector(c, model=object())  # the rule only: no model is run
    p = np.array([0.1, 0.6, 0.4, 0.4, 0.2, 0.2, 0.6, 0.1, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    # 0.4 keeps speech going (>= neg_threshold); a 2-frame dip does not end it; 3 frames do;
    # the lone 0.9 frame is shorter than min_segment
    assert d.speech_frames(p) == [(1, 7)]
    assert d.speech_frames(np.full(5, 0.49)) == []
    assert d.speech_frames(np.array([0.1, 0.8, 0.8, 0.8])) == [(1, 4)]


def test_a_tampered_vad_model_is_refused(tmp_path):
    src = speech.vad_model_path()
    bad = tmp_path / src.name
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    shutil.copy(src.with_name("manifest.json"), tmp_path / "manifest.json")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        speech.VadModel.load(bad)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ModelError, match="no sha256"):
        speech.VadModel.load(bad)


def test_the_feature_contract_names_the_detector_and_old_models_still_load():
    fc = feature_contract()
    sd = fc["speech_detector"]
    assert sd["name"] == "silero-vad" and len(sd["sha256"]) == 64
    assert sd["sha256"] == speech.default_detector().model.sha256
    assert set(speech.FRAME_SELECTION_KEYS) <= set(sd)
    from voicegate.device.runtime import Gate

    for name in ("voicegate-compact-mc.onnx", "voicegate-compact-ensemble.onnx"):
        assert (REPO / "models" / name).is_file(), name  # committed: the study's classifiers
        Gate.load(REPO / "models" / name)  # models exported before the key still load


def test_the_device_path_imports_no_heavy_module():
    import subprocess

    code = ("import sys; from voicegate.device import speech; speech.default_detector(); "
            "bad = [m for m in ('torch', 'librosa', 'scipy') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


# --- on the shared corpora ---------------------------------------------------------------------
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def corpus_dir(request):
    from conftest import _shared

    return _shared(request.param)


@pytest.mark.shared
@pytest.mark.parametrize("corpus_dir,min_recall,min_loud_recall",
                         [("librispeech", 0.97, 0.98), ("speechocean762", 0.80, 0.95)],
                         indirect=["corpus_dir"], ids=["librispeech", "speechocean762"])
def test_the_detector_keeps_the_speech_the_trimmer_keeps(corpus_dir, min_recall, min_loud_recall):
    """Clean recordings: the detector's padded segments cover what the energy trimmer keeps.

    ``loud`` is the trimmer's voiced core (frames within 25 dB of the loudest); the trimmer's
    own 40 dB rule also keeps leading and trailing room noise (speechocean762 has up to 2 s of
    it), which the detector rightly drops. benchmarks/vad.py measures both on more files; the
    bounds here sit under those figures (the 98 % of issue 10 holds on the voiced core).
    """
    import vad

    det = speech.default_detector()
    tot: dict = {}
    for path in vad.corpus_files(corpus_dir.name, 12, seed=5):
        x = load_audio(path)
        for k, v in vad.kept_against_trimmer(x, det.select(x).segments).items():
            tot[k] = tot.get(k, 0) + v
    recall, loud = tot["both"] / tot["trimmer"], tot["loud_both"] / tot["loud"]
    assert recall >= min_recall and loud >= min_loud_recall, (recall, loud, tot)


@pytest.mark.shared
def test_allowed_speech_in_noise_at_5db_snr_is_still_decided(librispeech, noise_dir):
    import json

    import vad

    roles = json.loads((librispeech / "roles.json").read_text())
    noises = sorted(noise_dir.glob("*.flac"))
    files = vad.corpus_files("librispeech", len(noises), seed=7, speakers=set(roles["allowed"]))
    refused = []
    for i, (path, npath) in enumerate(zip(files, noises)):
        x = load_audio(path, max_seconds=8.0)
        n = load_audio(npath)
        y = vad.mix(x, n, 5.0, offset=1000 * i)
        try:
            featurize(y)
        except NoSpeechError as e:
            refused.append(f"{path.name} + {npath.stem}: {e}")
    assert noises and len(files) == len(noises), (len(files), len(noises))  # something was mixed
    assert refused == []


@pytest.mark.shared
@pytest.mark.slow
def test_the_vad_benchmark_runs(librispeech, noise_dir, tmp_path):
    """`python benchmarks/vad.py --smoke` end to end: valid JSON, every section filled (no figure checked)."""
    import json

    import vad

    out = tmp_path / "vad.json"
    assert vad.main(["--smoke", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert {"cost", "compare", "kept", "snr5", "detector", "rule"} <= set(d)
    assert d["cost"]["offline_cpu_ms_per_s"] > 0 and d["cost"]["decision"]
    assert [k["corpus"] for k in d["kept"]][:1] == ["librispeech"]
    assert d["snr5"]["utterances"] == 3
