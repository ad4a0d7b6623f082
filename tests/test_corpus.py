"""Corpus loaders, speaker roles, the by-recording split, and training augmentation."""

import csv
import json
import logging
from collections import Counter

import numpy as np
import pytest

from synth import make_daps_corpus, synth_voice, write_wav
from voicegate.train.data import augment as AUG
from voicegate.train.data.corpus import (
    DAPS_ALLOWED,
    CorpusError,
    Roles,
    detect_layout,
    load_corpus,
)
from voicegate.train.data.splits import (
    HELDOUT,
    count_heldout_violations,
    count_leakage,
    split_recordings,
    split_sizes,
)
from voicegate.train.data.corpus import Recording

SR = 16000


# --- loaders ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def daps_root(tmp_path_factory):
    root = make_daps_corpus(tmp_path_factory.mktemp("daps") / "daps", seconds=1.0)
    (root / "clean" / "._f1_script1_clean.wav").write_bytes(b"\0" * 100)  # macOS resource fork
    return root


def test_daps_layout_groups_versions_into_one_recording(daps_root):
    assert detect_layout(daps_root) == "daps"
    c = load_corpus(daps_root)
    assert c.layout == "daps"
    assert c.speakers == ["f1", "f2", "m1", "m2"]
    assert len(c.recordings) == 4 * 5 * 2  # speakers x scripts x versions; "._" file ignored
    by_rec = {}
    for r in c.recordings:
        by_rec.setdefault(r.recording, []).append(r)
    assert len(by_rec) == 20
    for rec_id, items in by_rec.items():
        assert {r.meta["version"] for r in items} == {"clean", "iphone_livingroom1"}
        spk, script = rec_id.split("_")
        assert all(r.speaker == spk and r.meta["script"] == script for r in items)
        assert len({r.item for r in items}) == 2
    f1 = [r for r in c.recordings if r.item == "f1_script3_iphone_livingroom1"][0]
    assert f1.recording == "f1_script3" and f1.seconds == pytest.approx(1.0, abs=0.01)
    # no roles.json: the study's DAPS roles (f1 is allowed, everyone else trains as not allowed)
    assert c.roles.allowed == DAPS_ALLOWED
    assert [c.roles.label_of(s) for s in c.speakers] == [1, 0, 0, 0]
    assert c.roles.role_of("m2") == "not_allowed_train"


def test_daps_versions_and_impostors(daps_root):
    c = load_corpus(daps_root, versions=["clean"], impostors=["m2"])
    assert len(c.recordings) == 20 and {r.meta["version"] for r in c.recordings} == {"clean"}
    assert c.roles.heldout_impostors == ("m2",)
    split = split_recordings(c.recordings, c.roles, seed=1)
    assert {split[r.recording] for r in c.recordings if r.speaker == "m2"} == {HELDOUT}
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(daps_root, versions=["ipad_office1"])
    with pytest.raises(CorpusError, match="--impostors: no speaker m9"):  # a typo must not train on m2
        load_corpus(daps_root, versions=["clean"], impostors="m2,m9")
    with pytest.raises(CorpusError, match="--allowed: no speaker zz"):
        load_corpus(daps_root, versions=["clean"], allowed=["zz"])


def test_folder_per_speaker_layout(tmp_path):
    write_wav(tmp_path / "alice" / "a1.wav", synth_voice("f1", 0.5))
    write_wav(tmp_path / "alice" / "a2.flac", synth_voice("f1", 0.5, seed=1))
    write_wav(tmp_path / "bob" / "chapter" / "b1.wav", synth_voice("m1", 0.5))
    (tmp_path / "bob" / "notes.txt").write_text("not audio")
    c = load_corpus(tmp_path, allowed=["alice"])
    assert c.layout == "folders"
    assert sorted((r.speaker, r.recording) for r in c.recordings) == [
        ("alice", "alice/a1"),
        ("alice", "alice/a2"),
        ("bob", "bob/b1"),
    ]
    assert c.roles.allowed == ("alice",) and c.roles.not_allowed_train == ("bob",)


def test_manifest_joins_rows_of_one_recording_in_order(tmp_path):
    for i, kw in enumerate(["open", "close", "yes"]):
        write_wav(tmp_path / kw / "s1_01.flac", synth_voice("f1", 1.0, seed=i))
        write_wav(tmp_path / kw / "s2_01.flac", synth_voice("m1", 1.0, seed=i))
    rows = [["path", "speaker", "recording", "keyword", "round", "seconds"]]
    for kw in ["open", "close", "yes"]:
        rows += [[f"{kw}/s1_01.flac", "s1", "s1_round01", kw, "01", "1.0"]]
        rows += [[f"{kw}/s2_01.flac", "s2", "s2_round01", kw, "01", "1.0"]]
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (tmp_path / "roles.json").write_text(json.dumps({"allowed": ["s1"], "heldout_impostors": ["s2"]}))
    c = load_corpus(tmp_path)
    assert c.layout == "manifest"
    rec = {r.recording: r for r in c.recordings}
    assert set(rec) == {"s1_round01", "s2_round01"}
    assert [p.parent.name for p in rec["s1_round01"].paths] == ["open", "close", "yes"]
    assert rec["s1_round01"].seconds == pytest.approx(3.0)
    assert rec["s1_round01"].meta["round"] == "01" and "keyword" not in rec["s1_round01"].meta


@pytest.mark.parametrize("roles, match", [
    ({"allowed": ["s1"], "heldout_impostors": ["s2x"]}, "heldout_impostors names 1 speaker"),
    ({"allowed": ["s9"]}, "allowed names 1 speaker"),
    ({}, "names no speaker"),
])
def test_a_roles_file_naming_unknown_speakers_or_nobody_is_refused(tmp_path, roles, match):
    """A typo in the held-out list would train on the speaker meant to be kept out."""
    for spk, voice in (("s1", "f1"), ("s2", "m1")):
        for i in range(3):
            write_wav(tmp_path / spk / f"{i}.wav", synth_voice(voice, 1.0, seed=i))
    (tmp_path / "roles.json").write_text(json.dumps({"allowed": ["s1"], "heldout_impostors": ["s2"]}))
    assert load_corpus(tmp_path).roles.heldout_impostors == ("s2",)
    (tmp_path / "roles.json").write_text(json.dumps(roles))
    with pytest.raises(CorpusError, match=match):
        load_corpus(tmp_path)
    if roles.get("heldout_impostors") == ["s2x"]:  # the command line's list replaces the file's
        assert load_corpus(tmp_path, impostors=["s2"]).roles.heldout_impostors == ("s2",)


def test_a_manifest_listing_a_missing_file_is_refused(tmp_path):
    write_wav(tmp_path / "a.wav", synth_voice("f1", 1.0))
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "speaker", "recording"], ["a.wav", "s1", "r1"], ["gone.wav", "s1", "r2"]])
    with pytest.raises(CorpusError, match=r"1 file\(s\) it lists are missing, e.g. .*gone.wav"):
        load_corpus(tmp_path)


def test_no_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="no corpus found"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "missing")


# --- roles -----------------------------------------------------------------------------------
def test_roles_overrides_and_unlisted_speakers(caplog):
    base = Roles(allowed=["a", "b"], not_allowed_train=["c"], heldout_impostors=["d", "e"])
    r = base.with_overrides(allowed="a,d")
    assert r.allowed == ("a", "d") and r.heldout_impostors == ("e",)
    assert set(r.not_allowed_train) == {"b", "c"}
    r = base.with_overrides(impostors=["c"])
    assert r.heldout_impostors == ("c",) and set(r.not_allowed_train) == {"d", "e"}
    r = base.with_overrides(impostors=["a", "d"])
    assert r.allowed == ("b",) and r.heldout_impostors == ("a", "d") and set(r.not_allowed_train) == {"c", "e"}
    with pytest.raises(CorpusError, match="both allowed and held-out"):
        base.with_overrides(allowed=["a"], impostors=["a"])
    with pytest.raises(CorpusError, match="both"):
        Roles(allowed=["a"], not_allowed_train=["a"])
    with caplog.at_level(logging.INFO, logger="voicegate.train.data.corpus"):
        resolved = base.resolve(["a", "b", "c", "d", "x"])
    assert resolved.role_of("x") == "not_allowed_train" and resolved.label_of("x") == 0
    assert "not_allowed_train: x" in caplog.text
    assert Roles.from_dict(resolved.to_dict()) == resolved


# --- splits ----------------------------------------------------------------------------------
def _recs(speaker, n):
    return [Recording((), speaker, f"{speaker}-{i}", f"{speaker}-{i}") for i in range(n)]


def test_split_is_60_20_20_per_speaker_and_seeded():
    recs = [r for s in range(20) for r in _recs(f"s{s}", 10)] + _recs("tiny3", 3) + _recs("odd7", 7)
    roles = Roles(allowed=["s0"])
    split = split_recordings(recs, roles, seed=0)
    for s in range(20):
        counts = Counter(split[f"s{s}-{i}"] for i in range(10))
        assert counts == {"train": 6, "val": 2, "test": 2}
    assert Counter(split[f"tiny3-{i}"] for i in range(3)) == {"train": 1, "val": 1, "test": 1}
    assert split_sizes(7) == (5, 1, 1) and split_sizes(4) == (2, 1, 1)
    assert split_recordings(recs, roles, seed=0) == split
    assert split_recordings(recs, roles, seed=1) != split
    # adding a speaker does not change anyone else's split
    assert {k: v for k, v in split_recordings(recs + _recs("new", 5), roles, seed=0).items() if k in split} == split


def test_speakers_with_few_recordings_are_assigned_at_random():
    recs = [r for s in range(600) for r in _recs(f"s{s}", 1 + s % 2)]  # 1 or 2 recordings each
    split = split_recordings(recs, Roles(), seed=3)
    frac = {k: v / len(split) for k, v in Counter(split.values()).items()}
    assert frac["train"] == pytest.approx(0.6, abs=0.05)
    assert frac["val"] == pytest.approx(0.2, abs=0.05)
    assert frac["test"] == pytest.approx(0.2, abs=0.05)


def test_heldout_impostors_only_in_heldout_and_leakage_count():
    recs = _recs("a", 5) + _recs("imp", 4) + _recs("one", 1)
    roles = Roles(allowed=["a"], heldout_impostors=["imp", "one"])
    split = split_recordings(recs, roles, seed=0)
    assert {split[r.recording] for r in recs if r.speaker in ("imp", "one")} == {HELDOUT}
    assert HELDOUT not in {split[r.recording] for r in recs if r.speaker == "a"}
    assert count_heldout_violations(((r.speaker, split[r.recording]) for r in recs), roles) == 0
    assert count_heldout_violations([("imp", "train"), ("a", "heldout"), ("a", "val")], roles) == 2
    assert count_leakage([("r1", "train"), ("r1", "train"), ("r2", "val"), ("r2", "test"), ("r3", "x")]) == 1


# --- augmentation ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["white", "pink", "brown", "file"])
@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_noise_is_mixed_at_the_requested_snr(tmp_path, kind, snr):
    rng = np.random.default_rng(0)
    speech = synth_voice("m2", 2.0)
    if kind == "file":
        write_wav(tmp_path / "hum.flac", (0.3 * np.sin(2 * np.pi * 60 * np.arange(SR) / SR)).astype(np.float32))
        aug = AUG.Augmenter(noises=AUG.load_noises(tmp_path))
        noise = aug.make_noise("hum.flac", speech.size, rng)  # 1 s file looped to 2 s
    else:
        noise = AUG.Augmenter().make_noise(kind, speech.size, rng)
    assert noise.shape == speech.shape
    mixed = AUG.mix_at_snr(speech, noise, snr)
    assert mixed.shape == speech.shape and np.all(np.isfinite(mixed))
    assert AUG.snr_db(speech, mixed - speech) == pytest.approx(snr, abs=0.5)


def test_pink_noise_falls_with_frequency():
    x = AUG.pink_noise(SR * 4, np.random.default_rng(1))
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / SR)
    low, high = spec[(f > 100) & (f < 200)].mean(), spec[(f > 3200) & (f < 6400)].mean()
    assert 10 * np.log10(low / high) > 10  # ~3 dB per octave over 4-5 octaves


def test_training_and_eval_use_disjoint_parts_of_each_noise_file(tmp_path):
    x = np.arange(SR * 10, dtype=np.float32)
    train, ev = AUG.noise_part(x, "train"), AUG.noise_part(x, "eval")
    assert train.size + ev.size == x.size and train[-1] < ev[0]
    assert train.size == pytest.approx(AUG.NOISE_TRAIN_SHARE * x.size, abs=1)
    write_wav(tmp_path / "n.flac", 0.1 * np.random.default_rng(0).standard_normal(SR * 2).astype(np.float32))
    assert AUG.load_noises(tmp_path)["n.flac"].size == int(round(AUG.NOISE_TRAIN_SHARE * SR * 2))
    assert AUG.load_noises(tmp_path, part="eval")["n.flac"].size == SR * 2 - int(round(AUG.NOISE_TRAIN_SHARE * SR * 2))


@pytest.mark.parametrize("kind", AUG.NONSPEECH_KINDS)
def test_nonspeech_clips_have_the_level_asked_for(kind):
    rng = np.random.default_rng(3)
    noises = {"tap.flac": 0.2 * np.random.default_rng(1).standard_normal(SR).astype(np.float32)}
    x, name = AUG.nonspeech_clip(kind, SR * 2, rng, noises, -30.0)
    assert x.shape == (SR * 2,) and x.dtype == np.float32 and np.all(np.isfinite(x))
    assert 10 * np.log10(AUG.power(x)) == pytest.approx(-30.0, abs=0.1)
    assert name == {"noise_file": "tap.flac"}.get(kind, kind)


def test_hum_is_mains_and_its_harmonics():
    x = AUG.hum(SR * 2, np.random.default_rng(0), mains_hz=50.0)
    spec = np.abs(np.fft.rfft(x))
    f = np.fft.rfftfreq(x.size, 1 / SR)
    assert f[np.argmax(spec)] in (50.0, 100.0, 150.0, 250.0, 350.0)
    assert spec[(f > 1000)].max() < 0.05 * spec.max()


def test_pitch_shift_moves_a_tone_and_keeps_length():
    x = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR).astype(np.float32)
    y = AUG.pitch_shift(x, 1.5)
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    seg = y[2000:-2000]
    peak = np.argmax(np.abs(np.fft.rfft(seg * np.hanning(seg.size)))) * SR / seg.size
    assert peak == pytest.approx(1000 * 2 ** (1.5 / 12), abs=8)


def test_augmenter_changes_audio_keeps_length_and_is_seeded(tmp_path):
    x = synth_voice("f2", 3.0)
    aug = AUG.Augmenter(pitch_prob=1.0, noise_prob=1.0, max_shift_seconds=0.0)
    y, params = aug(x, np.random.default_rng(5))
    assert y.shape == x.shape and np.all(np.isfinite(y))
    assert not np.allclose(x, y, atol=1e-3)
    assert 0.25 <= abs(params["pitch"]) <= 1.5 and 5 <= params["snr_db"] <= 20
    y2, params2 = aug(x, np.random.default_rng(5))
    assert params2 == params and np.array_equal(y, y2)
    # time shift: a crop on long audio, a rotation on audio shorter than a window
    assert AUG.time_shift(x, 800).size == x.size - 800
    short = x[:8000]
    assert np.array_equal(AUG.time_shift(short, 100), np.roll(short, -100))


def test_noise_folder_skips_bad_files(tmp_path, caplog):
    write_wav(tmp_path / "ok.flac", 0.1 * np.random.default_rng(0).standard_normal(SR).astype(np.float32))
    (tmp_path / "broken.flac").write_bytes(b"not audio at all")
    write_wav(tmp_path / "zeros.wav", np.zeros(SR, np.float32))
    with caplog.at_level(logging.WARNING):
        noises = AUG.load_noises(tmp_path)
    assert list(noises) == ["ok.flac"]
    assert "broken.flac" in caplog.text and "zeros.wav" in caplog.text
    corpus = tmp_path / "a" / "b" / "corpus"
    assert AUG.find_noise_dir(corpus, "none") is None
    corpus.mkdir(parents=True)
    (tmp_path / "a" / "noise").mkdir()  # a decoy two levels up: not <corpus>/../noise
    assert AUG.find_noise_dir(corpus) is None
    (tmp_path / "a" / "b" / "noise").mkdir()
    assert AUG.find_noise_dir(corpus) == (tmp_path / "a" / "b" / "noise").resolve()
