"""Enrolment: checks and refusals on generated audio, and `voicegate enroll` on real speech."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from synth import synth_voice
from tiny_encoder import encoder, model, synthetic_recordings  # noqa: F401 (fixtures)

from voicegate.device import enroll, enroll_checks
from voicegate.device.enroll import EnrolmentRefused, enrol
from voicegate.device.enroll_checks import analyse
from voicegate.device.profiles import ProfileStore


def recording(label: str, audio: np.ndarray):
    return analyse(label, audio)


def refusal(encoder, store, name, recs, **kw) -> list[str]:
    with pytest.raises(EnrolmentRefused) as e:
        enrol(encoder, store, name, recs, **kw)
    assert not store.path(name).exists()  # nothing stored
    return [str(p) for p in e.value.problems]


# --- on generated audio ------------------------------------------------------------------------
def test_enrol_from_generated_audio(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    recs = synthetic_recordings("f1", seeds=(0, 1, 2))
    prof, sess, warnings = enrol(encoder, store, "alice", recs)
    assert warnings == [] and sess.speech_seconds == pytest.approx(sum(r.speech_seconds for r in recs))
    assert sess.speech_seconds >= enroll.MIN_SPEECH_SECONDS
    assert sess.embeddings.shape[1] == encoder.dim and sess.embeddings.shape[0] >= 6
    np.testing.assert_allclose(np.linalg.norm(sess.embeddings, axis=1), 1.0, atol=1e-5)
    assert store.load("alice", encoder.sha256).sessions[0].sources == [r.label for r in recs]


def test_too_little_speech_is_an_error_even_with_force(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    recs = synthetic_recordings("f1", seeds=(0,), seconds=5.0)
    problems = refusal(encoder, store, "alice", recs, force=True)
    assert problems[0].startswith("error: too little speech") and "at least 10 s" in problems[0]


def test_silent_recording_is_an_error(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    recs = synthetic_recordings("f1", seeds=(0, 1)) + [recording("quiet.wav", np.zeros(16000 * 5, np.float32))]
    problems = refusal(encoder, store, "alice", recs, force=True)
    assert problems == ["error: quiet.wav: no speech found"]


def test_clipping_is_a_warning_that_force_overrides(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    clipped = np.clip(synth_voice("f1", 7, seed=5) * 8.0, -1.0, 1.0)
    recs = synthetic_recordings("f1") + [recording("loud.wav", clipped)]
    problems = refusal(encoder, store, "alice", recs)
    assert any("loud.wav" in p and "clipped" in p for p in problems) and problems[-1].startswith("hint: --force")
    prof, _, warnings = enrol(encoder, store, "alice", recs, force=True)
    assert "clipped" in str(warnings[0]) and len(prof.sessions) == 1


def test_noise_is_a_warning_with_an_snr_estimate(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    x = synth_voice("f1", 8, seed=4)
    noisy = x + 0.05 * np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    recs = synthetic_recordings("f1") + [recording("street.wav", noisy)]
    assert recs[-1].snr_db < enroll_checks.MIN_SNR_DB < recs[0].snr_db
    problems = refusal(encoder, store, "alice", recs)
    assert any("street.wav: too much noise (SNR about" in p for p in problems)


def test_a_dc_offset_is_said_as_one_not_as_noise(encoder, tmp_path):
    """A review's DC-offset recording was refused as "too much noise (SNR about 0 dB)"."""
    store = ProfileStore(tmp_path / "p")
    offset = synth_voice("f1", 8, seed=4) + np.float32(0.1)
    recs = synthetic_recordings("f1") + [recording("biased.wav", offset)]
    assert abs(recs[-1].dc_offset - 0.1) < 0.01 and recs[-1].snr_db >= enroll_checks.MIN_SNR_DB
    problems = refusal(encoder, store, "alice", recs)
    assert any("biased.wav: the signal sits off zero (DC offset +0.10" in p for p in problems), problems
    assert not any("too much noise" in p for p in problems), problems


def test_one_file_of_someone_else_is_caught(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    recs = synthetic_recordings("f1", seeds=(0, 1)) + [recording("m1.wav", synth_voice("m1", 7, seed=3))]
    problems = refusal(encoder, store, "alice", recs)
    assert any(p.startswith("warning: recordings disagree: m1.wav") for p in problems)


def test_two_voices_in_one_file_are_caught(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    both = np.concatenate([synth_voice("f1", 9, seed=1), synth_voice("m2", 9, seed=2)])
    problems = refusal(encoder, store, "alice", [recording("both.wav", both)])
    assert any("recordings disagree: both.wav (speech" in p for p in problems)


def test_a_voice_already_enrolled_under_another_name_is_a_warning(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    enrol(encoder, store, "alice", synthetic_recordings("f1"))
    problems = refusal(encoder, store, "alicia", synthetic_recordings("f1", seeds=(3, 4)))
    assert any("already matches alice" in p for p in problems)
    enrol(encoder, store, "bob", synthetic_recordings("m1"))  # another voice: no warning


def test_enrolling_again_adds_a_session(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    enrol(encoder, store, "alice", synthetic_recordings("f1"))
    prof, _, _ = enrol(encoder, store, "alice", synthetic_recordings("f1", seeds=(3, 4)))
    assert len(prof.sessions) == 2
    prof, _, _ = enrol(encoder, store, "alice", synthetic_recordings("f1", seeds=(5, 6)), replace=True)
    assert len(prof.sessions) == 1


def test_another_voice_is_not_slipped_into_an_existing_profile(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    enrol(encoder, store, "alice", synthetic_recordings("f1"))
    with pytest.raises(EnrolmentRefused) as e:
        enrol(encoder, store, "alice", synthetic_recordings("m1", seeds=(3, 4)))  # someone else, no --replace
    problems = [str(p) for p in e.value.problems]
    assert any("does not match alice's profile" in p for p in problems) and problems[-1].startswith("hint: --force")
    assert len(store.load("alice", encoder.sha256).sessions) == 1  # nothing added
    prof, _, _ = enrol(encoder, store, "alice", synthetic_recordings("m1", seeds=(3, 4)), replace=True)
    assert len(prof.sessions) == 1  # --replace starts the profile again: nothing to match


# --- the command -----------------------------------------------------------------------------------
def cli(*argv: str) -> int:
    p = argparse.ArgumentParser()
    enroll.add_arguments(p)
    return enroll.run(p.parse_args(list(argv)))


def test_command_line_errors(tmp_path, model, capsys):
    (tmp_path / "a.wav").write_bytes(b"")
    assert cli("alice", "--profiles", str(tmp_path), "--model", str(model)) == 2  # no FILE, no --mic
    assert cli("../x", str(tmp_path / "a.wav"), "--model", str(model)) == 2
    assert cli("alice", str(tmp_path / "a.wav"), "--profiles", "", "--model", str(model)) == 5  # as at the door
    assert cli("alice", str(tmp_path / "a.wav"), "--mic", "--model", str(model)) == 2
    assert cli("alice", str(tmp_path / "a.wav"), "--profiles", str(tmp_path / "p"), "--model",
               str(tmp_path / "none.onnx")) == 5
    assert "model file not found" in capsys.readouterr().err
    assert cli("alice", str(tmp_path / "a.wav"), "--profiles", str(tmp_path / "p"), "--model", str(model),
               "--json") == 4
    captured = capsys.readouterr()
    assert "empty file" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert json.loads(captured.out)["enrolled"] is False
    assert not (tmp_path / "p").exists()


@pytest.mark.shared
def test_enrol_real_speech_from_files(librispeech, tmp_path, model, capsys):
    files = sorted((librispeech / "test-other" / "2414").glob("*.flac"))
    profiles = str(tmp_path / "p")
    assert cli("bob", *map(str, files[:2]), "--profiles", profiles, "--model", str(model)) == 4
    err = capsys.readouterr().err  # 2.9 + 8.4 s of audio: not enough speech
    assert "too little speech" in err and "at least 10 s" in err and len(err.strip().splitlines()) == 1
    # --force: the tiny encoder is too crude to find real recordings of one voice in agreement
    assert cli("bob", *map(str, files[1:5]), "--profiles", profiles, "--model", str(model), "--json",
               "--force") == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["enrolled"] and out["speech_seconds"] >= 10 and out["sessions"] == 1
    assert "enrolled anyway despite warning:" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert all(w.startswith("warning: recordings disagree") for w in out["warnings"])
    clipped = tmp_path / "clipped.wav"
    x, sr = sf.read(files[4], dtype="float32")
    sf.write(clipped, np.clip(x * 30, -1, 1), sr)
    assert cli("bob", str(clipped), *map(str, files[5:7]), "--profiles", profiles, "--model", str(model)) == 4
    err = capsys.readouterr().err  # a warning and the --force hint: one line
    assert "clipped" in err and "hint: --force" in err and len(err.strip().splitlines()) == 1, err
    assert cli("bob", str(clipped), *map(str, files[5:7]), "--profiles", profiles, "--model", str(model),
               "--force") == 0
    assert len(ProfileStore(profiles).load("bob").sessions) == 2


def test_the_enrolment_path_imports_no_torch_or_librosa():
    code = ("import sys; import voicegate.device.enroll, voicegate.device.profiles_cli, "
            "voicegate.device.scoring, voicegate.device.encoder, voicegate.device.profiles; "
            "bad = [m for m in ('torch', 'librosa', 'onnx', 'sklearn') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_two_voices_in_equal_parts_are_split_apart(encoder):
    """Half one voice, half another: each stretch resembles "the rest" (half its own voice), so
    the split into the two most different groups is what finds them; one voice is not split."""
    mixed = synthetic_recordings("f1", seeds=(0, 1)) + synthetic_recordings("m1", seeds=(2, 3))
    samples, embs, stretches = enroll_checks.embed_recordings(encoder, mixed)
    groups = enroll_checks.two_groups(embs, stretches)
    labels = [{stretches[k][0].split("-")[0] for k in g} for g in groups]
    assert sorted(map(sorted, labels)) == [["f1"], ["m1"]]  # the groups are the two voices
    problems = [str(p) for p in enroll_checks.split_problems(embs, stretches, encoder, samples)]
    assert len(problems) == 1 and "two groups that do not match each other" in problems[0]
    one = synthetic_recordings("f1", seeds=(0, 1, 2, 3))
    samples, embs, stretches = enroll_checks.embed_recordings(encoder, one)
    assert enroll_checks.split_problems(embs, stretches, encoder, samples) == []
