"""Corpus preparation end to end: windows, index, split report, cache reuse, bad files, CLI."""

import argparse
import csv
import json
import logging

import numpy as np
import pytest

from synth import make_daps_corpus, synth_voice, write_wav
from voicegate.device import features as F
from voicegate.train.data import build as B
from voicegate.train.data import prepare as P
from voicegate.train.data.cache import INDEX_COLUMNS
from voicegate.train.data.corpus import CorpusError, Roles, load_corpus
from voicegate.train.data.splits import HELDOUT, count_heldout_violations, count_leakage, split_recordings

SR = 16000
NONSPEECH = 10  # pure non-speech windows in the module's prepared corpus
FIXTURE = {"aug_copies": 2, "nonspeech_windows": NONSPEECH}


def _cfg(corpus, cache, **kw):
    kw = {"aug_copies": 1, "nonspeech_windows": 0, "progress": False, **kw}
    return P.PrepareConfig(corpus=str(corpus), cache_dir=str(cache), **kw)


@pytest.fixture(scope="module")
def prepared(tiny_corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("prep") / "cache"
    return P.prepare_corpus(_cfg(tiny_corpus, cache, **FIXTURE))


def test_prepared_windows_shapes_labels_and_splits(prepared, tiny_corpus):
    pc = prepared
    n = len(pc)
    assert n > 0 and pc.images.shape == (n, 224, 224) and pc.images.dtype == np.float16
    assert isinstance(pc.images, np.memmap)
    img = np.asarray(pc.images, dtype=np.float32)
    assert img.min() >= 0.0 and img.max() <= 1.0 and np.isfinite(img).all()
    roles = Roles.from_file(tiny_corpus / "roles.json")
    idx = pc.index
    assert set(idx.split) == {"train", "val", "test", "heldout"}
    assert np.array_equal(pc.labels, np.array([roles.label_of(s) for s in idx.speaker]))
    assert set(idx.speaker[idx.split == HELDOUT]) == set(roles.heldout_impostors)
    assert not set(idx.speaker[np.isin(idx.split, ["train", "val", "test"])]) & set(roles.heldout_impostors)
    assert count_leakage(zip(idx.recording, idx.split)) == 0
    assert count_heldout_violations(zip(idx.speaker, idx.split), roles) == 0
    # augmented copies exist only in train, the same number for every class (issue 10)
    assert set(idx.split[idx.aug > 0]) == {"train"}
    assert set(idx.aug[(idx.split == "train") & (idx.label == 1)]) == {0, 1, 2}
    assert set(idx.aug[(idx.split == "train") & (idx.label == 0)]) == {0, 1, 2}
    assert len(pc.indices("train", aug=False)) < len(pc.indices("train"))
    assert set(idx.aug[pc.indices("train", aug=False)]) == {0}
    b = pc.batch(pc.indices("val")[:3])
    assert b.shape == (3, 1, 224, 224) and b.dtype == np.float32
    w = pc.class_weights("train")
    c = pc.class_counts("train")
    assert w[1] * c["allowed"] == pytest.approx(w[0] * c["not_allowed"], rel=1e-5)


def test_every_class_gets_the_same_copies_and_the_same_noise(prepared):
    """No shortcut from noise to "allowed": per training recording, as many augmented windows per
    clean window in both classes, and both classes drew from the same noise kinds."""
    import csv as _csv

    idx = prepared.index
    speech = (idx.split == "train") & (idx.role != "nonspeech")
    ratio = {}
    for label in (0, 1):
        m = speech & (idx.label == label)
        ratio[label] = (m & (idx.aug > 0)).sum() / (m & (idx.aug == 0)).sum()
    # a copy's time shift crops up to max_shift_seconds (0.5 s, one training hop) from the start of
    # its speech, so a copy can give a window fewer than the clean recording (this fixture's short
    # recordings: 1.77 per clean window): the ratio sits near, not at, the 2 copies per recording
    # counted exactly below
    assert ratio[0] == pytest.approx(ratio[1], rel=0.1) and 1.6 <= ratio[1] <= 2.2, ratio
    with open(prepared.root / "augmentations.csv") as f:
        rows = list(_csv.DictReader(f))
    label_of = dict(zip(idx.item, idx.label))
    copies = {0: {}, 1: {}}
    for r in rows:
        copies[int(label_of[r["item"]])][r["item"]] = copies[int(label_of[r["item"]])].get(r["item"], 0) + 1
    assert set(copies[0].values()) == set(copies[1].values()) == {2}


def test_pure_nonspeech_windows_are_not_allowed_train_windows(prepared):
    from voicegate.train.data.augment import NONSPEECH_KINDS

    idx = prepared.index
    m = idx.role == "nonspeech"
    assert int(m.sum()) == NONSPEECH == prepared.report["nonspeech"]["windows"]
    assert set(idx.split[m]) == {"train"} and set(idx.label[m]) == {0} and set(idx.aug[m]) == {0}
    names = {str(s).split(":", 1)[1] for s in idx.speaker[m]}
    assert {"white", "pink", "brown", "hum"} <= names and len(names) >= len(NONSPEECH_KINDS) - 1
    img = prepared.images[np.flatnonzero(m)].astype(np.float32)
    assert np.isfinite(img).all() and img.std() > 0.01  # rendered sound, not blank images
    assert "pure non-speech train windows (not allowed): 10" in (prepared.root / "report.md").read_text()


def test_legacy_per_class_copies_are_ignored_when_a_config_is_read():
    cfg = P.PrepareConfig.from_dict({"corpus": "x", "aug_copies_allowed": 4, "aug_copies_other": 1})
    assert cfg.aug_copies == P.PrepareConfig(corpus="x").aug_copies
    assert not hasattr(cfg, "aug_copies_allowed")


def test_report_counts_and_files(prepared):
    pc, r = prepared, prepared.report
    assert r["leakage_by_recording"] == 0 and r["heldout_violations"] == 0 and r["augmented_outside_train"] == 0
    assert r["skipped"] == []
    assert sum(s["windows_clean"] + s["windows_augmented"] for s in r["splits"].values()) == len(pc)
    assert r["augmented_copies"] == {"allowed": 2, "not_allowed": 2}
    assert r["splits"]["heldout"]["allowed_total"] == 0
    for spk, s in r["speakers"].items():
        assert 0 < s["seconds_trimmed"] <= s["seconds_raw"] == pytest.approx(20.0)  # 5 x 4 s
        n = sum(w["clean"] + w["augmented"] for w in s["windows"].values())
        assert n == int((pc.index.speaker == spk).sum())
    md = (pc.root / "report.md").read_text()
    assert "leakage by recording: 0" in md and "| f1 | allowed |" in md
    with open(pc.root / "index.csv") as f:
        assert next(csv.reader(f)) == list(INDEX_COLUMNS)
    meta = json.loads((pc.root / "meta.json").read_text())
    assert meta["feature_contract"] == F.feature_contract() and meta["n_windows"] == len(pc)


def test_clean_windows_are_the_device_featurizer(prepared, tiny_corpus):
    idx = prepared.index
    for split, hop in (("val", F.INFER_HOP_SECONDS), ("train", F.TRAIN_HOP_SECONDS)):
        rec = idx.recording[prepared.indices(split)[0]]
        rows = np.flatnonzero((idx.recording == rec) & (idx.aug == 0))
        spk = idx.speaker[rows[0]]
        expected = F.featurize(tiny_corpus / spk / f"{rec}.flac", hop_seconds=hop)
        assert expected.shape[0] == rows.size
        np.testing.assert_allclose(prepared.images[rows].astype(np.float32), expected, atol=1e-3)
        assert np.all(np.diff(idx.start_s[rows]) > 0)


def test_second_run_reuses_the_cache_and_a_change_rebuilds(prepared, tiny_corpus, caplog):
    mtime = (prepared.root / "images.npy").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="voicegate.train.data.prepare"):
        again = P.prepare_corpus(_cfg(tiny_corpus, prepared.root, **FIXTURE))
    assert again.reused and "reusing the prepared cache" in caplog.text
    assert (prepared.root / "images.npy").stat().st_mtime_ns == mtime
    assert np.array_equal(again.index.split, prepared.index.split)
    # other inputs in the same folder rebuild it (1 recording per speaker keeps it quick)
    other = prepared.root.parent / "other"
    first = P.prepare_corpus(_cfg(tiny_corpus, other, max_recordings_per_speaker=1))
    assert not first.reused and set(first.index.recording) == {f"{s}-000" for s in ("f1", "m1", "f2", "m2", "m3", "f3")}
    changed = P.prepare_corpus(_cfg(tiny_corpus, other, seed=7, max_recordings_per_speaker=1))
    assert not changed.reused and changed.meta["key"] != first.meta["key"]  # another seed: rebuilt
    assert P.prepare_corpus(_cfg(tiny_corpus, other, seed=7, max_recordings_per_speaker=1)).reused


def test_interrupted_run_leaves_no_cache(tiny_corpus, tmp_path, monkeypatch):
    calls = []

    def boom(x, hop):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(x, hop)

    real = B.render
    monkeypatch.setattr(B, "render", boom)
    with pytest.raises(KeyboardInterrupt):
        P.prepare_corpus(_cfg(tiny_corpus, tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary build folder is gone too
    monkeypatch.setattr(B, "render", real)
    pc = P.prepare_corpus(_cfg(tiny_corpus, tmp_path / "cache", max_recordings_per_speaker=1))
    assert not pc.reused and len(pc) > 0


def test_refuses_to_overwrite_a_foreign_folder(tiny_corpus, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(CorpusError, match="not a voicegate cache"):
        P.prepare_corpus(_cfg(tiny_corpus, tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_bad_files_are_reported_and_skipped(tmp_path, caplog):
    root = tmp_path / "corpus"
    good = {spk: [write_wav(root / spk / f"{spk}-{i}.wav", synth_voice(spk, 2.5, seed=i)) for i in range(3)]
            for spk in ("f1", "m1")}
    bad = root / "m1"
    (bad / "empty.wav").write_bytes(b"")
    full = (bad / "m1-0.wav").read_bytes()
    (bad / "truncated.wav").write_bytes(full[:30])  # cut inside the header
    (bad / "text.wav").write_bytes(b"this is not audio, just some bytes " * 20)
    write_wav(bad / "silence.wav", np.zeros(SR * 2, np.float32))
    with caplog.at_level(logging.WARNING, logger="voicegate.train.data.prepare"):
        pc = P.prepare_corpus(_cfg(root, tmp_path / "cache", allowed=["f1"], noise_dir=None))
    skipped = {s["file"]: s["reason"] for s in pc.report["skipped"]}
    assert set(skipped) == {"m1/empty.wav", "m1/truncated.wav", "m1/text.wav", "m1/silence.wav"}
    assert "empty" in skipped["m1/empty.wav"] and "no speech" in skipped["m1/silence.wav"]
    assert "not readable audio" in skipped["m1/text.wav"]
    for name in skipped:
        assert name in caplog.text
    assert set(pc.index.recording) == {f"{s}/{s}-{i}" for s in good for i in range(3)}
    assert "m1/text.wav" in (pc.root / "report.md").read_text()


def test_daps_corpus_prepares_with_versions_in_one_split(tmp_path):
    root = make_daps_corpus(tmp_path / "daps", speakers=("f1", "m1", "m2"), scripts=3, seconds=2.5)
    pc = P.prepare_corpus(_cfg(root, tmp_path / "cache", aug_copies=0, impostors=["m2"]))
    idx = pc.index
    assert pc.meta["layout"] == "daps"
    assert len(set(idx.item)) == 18 and len(set(idx.recording)) == 9
    for rec in set(idx.recording):
        m = idx.recording == rec
        assert len(set(idx.split[m])) == 1 and len(set(idx.item[m])) == 2
    assert set(idx.split[idx.speaker == "m2"]) == {HELDOUT}
    assert set(idx.label[idx.speaker == "f1"]) == {1}


def test_short_clips_of_one_recording_are_joined(tmp_path):
    rows = ["path,speaker,recording,keyword,seconds"]
    for spk in ("a", "b", "c"):
        for rnd in range(3):
            for kw in ("open", "close", "stop"):
                rel = f"{kw}/{spk}_{rnd}.flac"
                write_wav(tmp_path / rel, synth_voice(spk, 1.0, seed=rnd, pauses=False))
                rows.append(f"{rel},{spk},{spk}_r{rnd},{kw},1.0")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "roles.json").write_text(json.dumps({"allowed": ["a"], "not_allowed_train": ["b", "c"]}))
    pc = P.prepare_corpus(_cfg(tmp_path, tmp_path / "cache", aug_copies=0))
    assert pc.report["speakers"]["a"]["seconds_raw"] == pytest.approx(9.0)
    assert pc.report["speakers"]["a"]["recordings"] == 3
    val = pc.indices("val")
    # a joined 3 s round gives 2 windows at the 1 s decision hop; a lone 1 s clip would give 1
    assert all(int((pc.index.recording == r).sum()) == 2 for r in set(pc.index.recording[val]))


def test_cli_prepare_prints_a_summary_and_reuses(tiny_corpus, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    P.add_arguments(parser)
    argv = ["--corpus", str(tiny_corpus), "--cache", str(tmp_path / "c"), "--aug-copies", "0",
            "--max-per-speaker", "3", "--no-progress", "--seed", "2"]
    assert P.run(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "heldout" in out and "leakage by recording: 0" in out and "prepared in" in out
    assert P.run(parser.parse_args(argv)) == 0
    assert "(reused)" in capsys.readouterr().out
    assert P.run(parser.parse_args(["--corpus", str(tmp_path / "nope"), "--no-progress"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    bad = parser.parse_args(argv + ["--allowed", "f1", "--impostors", "f1"])
    assert P.run(bad) == 2 and "both allowed and held-out" in capsys.readouterr().err
    # speakers space or comma separated, as for train
    from voicegate.train.data.config import config_from_args

    spaced = config_from_args(parser.parse_args(argv + ["--allowed", "f1", "m1,f2", "--impostors", "m2"]))
    assert list(spaced.allowed) == ["f1", "m1", "f2"] and list(spaced.impostors) == ["m2"]


def test_prepare_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, voicegate.train.data.prepare; print(sorted(m for m in ('torch','librosa','tqdm','sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the real corpus -------------------------------------------------------------------------
@pytest.mark.shared
def test_librispeech_split_has_no_leakage_and_keeps_impostors_out(librispeech):
    c = load_corpus(librispeech)
    roles = Roles.from_file(librispeech / "roles.json")
    assert c.roles.allowed == roles.allowed and set(c.roles.heldout_impostors) == set(roles.heldout_impostors)
    split = split_recordings(c.recordings, c.roles, seed=0)
    with open(librispeech / "manifest.csv", newline="") as f:
        files = list(csv.DictReader(f))
    # every file of the manifest, through its recording, to exactly one split
    assert count_leakage((row["recording"], split[row["recording"]]) for row in files) == 0
    assert count_heldout_violations(((row["speaker"], split[row["recording"]]) for row in files), c.roles) == 0
    heldout_splits = {split[r["recording"]] for r in files if r["speaker"] in roles.heldout_impostors}
    assert heldout_splits == {HELDOUT}
    for spk in roles.allowed:  # core speakers: 10 utterances -> 6/2/2
        mine = [split[r.recording] for r in c.recordings if r.speaker == spk]
        assert sorted(mine) == sorted(["train"] * 6 + ["val"] * 2 + ["test"] * 2)


@pytest.mark.shared
def test_librispeech_prepares_a_few_real_recordings(librispeech, tmp_path):
    """Real speech through the whole pipeline: 3 core speakers (one per role), 3 utterances each."""
    roles = json.loads((librispeech / "roles.json").read_text())
    keep = {roles["allowed"][0], roles["not_allowed_train"][0], roles["heldout_impostors"][0]}
    with open(librispeech / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["speaker"] in keep]
    rows = [r for s in sorted(keep) for r in sorted((r for r in rows if r["speaker"] == s),
                                                       key=lambda r: float(r["seconds"]))[:3]]
    sub = tmp_path / "sub"
    sub.mkdir()
    with open(sub / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "speaker", "recording", "seconds"])
        w.writeheader()
        for r in rows:
            w.writerow({"path": str(librispeech / r["path"]), "speaker": r["speaker"],
                        "recording": r["recording"], "seconds": r["seconds"]})
    (sub / "roles.json").write_text(json.dumps({r: [s for s in v if s in keep] for r, v in roles.items()}))
    pc = P.prepare_corpus(_cfg(sub, tmp_path / "cache", aug_copies=1,
                               noise_dir=str(librispeech.parent / "noise")))
    idx = pc.index
    assert pc.report["leakage_by_recording"] == 0 == count_leakage(zip(idx.recording, idx.split))
    assert set(idx.split[idx.speaker == roles["heldout_impostors"][0]]) == {HELDOUT}
    assert not set(idx.split[idx.speaker != roles["heldout_impostors"][0]]) & {HELDOUT}
    assert pc.report["skipped"] == [] and len(pc) == pc.images.shape[0] > 9
    assert set(pc.meta["noise_kinds"]) >= {"boiler.flac", "washing_machine.flac", "white", "pink"}
