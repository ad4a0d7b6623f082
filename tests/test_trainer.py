"""The training loop on a tiny in-memory corpus: learning, determinism, reproducibility, layout."""

import json
import sys

import numpy as np
import pytest
import torch
from fake_corpus import fake_corpus

from voicegate.train.models import fit
from voicegate.train.data.dataset import split_data
from voicegate.train.models.classifier import ModelConfig, build_model
from voicegate.train.models.trainer import AugmentConfig, TrainConfig, load_run, train_run

TINY = ModelConfig(arch="compact", widths=(4, 8, 8, 8), embed_dim=16, dropout=0.5)


@pytest.fixture(scope="module")
def corpus():
    return fake_corpus()


def tiny_train_config(**kw):
    base = dict(epochs=2, batch_size=16, lr=3e-3, patience=0, seed=0, device="cpu", threads=1)
    return TrainConfig(**{**base, **kw})


def eval_loss(model, corpus, data):
    loss_fn = torch.nn.CrossEntropyLoss(weight=fit.class_weights(data.labels))
    stats, _ = fit.evaluate_split(model, corpus.images, data, torch.device("cpu"), loss_fn)
    return stats["loss"]


def test_two_epochs_reduce_the_loss(corpus):
    torch.manual_seed(0)
    model = build_model(TINY)
    train = split_data(corpus, "train")
    before = eval_loss(model, corpus, train)
    loader = fit.make_loader(corpus.images, train, 16, shuffle=True, gen=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss(weight=fit.class_weights(train.labels))
    gen = torch.Generator().manual_seed(1)
    for epoch in range(2):
        fit.train_one_epoch(model, loader, opt, loss_fn, torch.device("cpu"), AugmentConfig(), gen, "test")
    assert eval_loss(model, corpus, train) < before


def test_evaluation_is_deterministic_and_keeps_the_mode(corpus):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="compact", widths=(4, 8, 8, 8), embed_dim=16, dropout=0.9))
    model.train()  # as it is in the middle of training: dropout on, BatchNorm updating
    loader = fit.make_loader(corpus.images, split_data(corpus, "val", aug=False), 8, shuffle=False)
    a = fit.predict_logits(model, loader, torch.device("cpu"))
    b = fit.predict_logits(model, loader, torch.device("cpu"))
    assert torch.equal(a, b)
    assert model.training  # restored
    # and the evaluation did not touch the BatchNorm running statistics
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.num_batches_tracked.item() == 0


def test_spec_augment_rolls_and_masks():
    x = torch.arange(224, dtype=torch.float32).expand(3, 1, 224, 224).contiguous() + 1.0
    aug = AugmentConfig(time_masks=1, time_mask_max=10, freq_masks=1, freq_mask_max=10)
    y = fit.spec_augment(x, aug, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    for b in range(3):
        row = y[b, 0].max(dim=0).values  # per time frame, ignoring frequency masks
        kept = row[row > 0]
        # a circular roll: consecutive surviving frames differ by 1 modulo 224
        diffs = torch.diff(kept) % 224
        assert ((diffs >= 1) & (diffs <= 11)).all()
    off = AugmentConfig(time_roll=False, time_masks=0, freq_masks=0)
    assert torch.equal(fit.spec_augment(x, off, torch.Generator()), x)


def test_class_weights_are_inverse_frequency():
    w = fit.class_weights(np.array([0, 0, 0, 1]))
    assert w.tolist() == pytest.approx([4 / 6, 4 / 2])
    with pytest.raises(ValueError, match="needs both classes"):
        fit.class_weights(np.array([0, 0]))


def test_train_run_layout_and_load(corpus, tmp_path):
    out = tmp_path / "run"
    tcfg = tiny_train_config(ensemble=2, save_every_epoch=True)
    ens = train_run(corpus, out, TINY, tcfg, data_config={"corpus": "fake"})
    info = json.loads((out / "run.json").read_text())
    assert info["members"] == ["member0", "member1"] and info["arch"] == "compact"
    assert info["data_config"] == {"corpus": "fake"}
    assert info["roles"]["allowed"] == ["a1", "a2"]
    for m in ("member0", "member1"):
        for name in ("best.pt", "last.pt", "history.json", "curves.png", "metrics.json",
                     "epochs/epoch000.pt", "epochs/epoch002.pt"):
            assert (out / m / name).is_file(), f"{m}/{name}"
        metrics = json.loads((out / m / "metrics.json").read_text())
        assert {"val", "test", "heldout"} <= set(metrics)
        assert set(metrics["test"]) == {"windows", "utterances", "per_speaker"}
    assert json.loads((out / "ensemble.json").read_text()) == ens
    assert [m["seed"] for m in ens["members"]] == [0, 1]
    members = load_run(out)
    assert len(members) == 2
    x = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        outs = [model(x) for model, _ in members]
    assert not torch.equal(outs[0], outs[1])  # different seeds, different members
    for model, ckpt in members:
        assert not model.training and ckpt["data_config"] == {"corpus": "fake"}


def test_training_is_reproducible_on_cpu(corpus, tmp_path):
    tcfg = tiny_train_config(epochs=1)
    runs = [train_run(corpus, tmp_path / f"r{i}", TINY, tcfg) for i in range(2)]
    (a, _), (b, _) = load_run(tmp_path / "r0")[0], load_run(tmp_path / "r1")[0]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert runs[0] == runs[1]


def test_cli_without_torch_says_what_to_install(monkeypatch):
    from voicegate.train.models import trainer

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(SystemExit, match=r"pip install 'voicegate\[train\]'"):
        trainer.run(None)


def test_cli_end_to_end_on_a_generated_corpus(tiny_corpus, tmp_path, capsys):
    from voicegate.device.cli import main

    out, cache = tmp_path / "runs" / "tiny", tmp_path / "cache"
    # prepared beforehand with a non-default option: training must reuse it as it is
    assert main(["prepare", "--corpus", str(tiny_corpus), "--cache", str(cache), "--aug-copies", "2", "--no-progress"]) == 0
    stamp = (cache / "images.npy").stat().st_mtime_ns
    argv = [
        "train", "--corpus", str(tiny_corpus), "--cache", str(cache), "--out", str(out),
        "--arch", "compact", "--widths", "4,8,8,8", "--embed-dim", "16", "--epochs", "1",
        "--ensemble", "2", "--batch-size", "32", "--device", "cpu", "--threads", "1",
    ]
    assert main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["members"] == ["member0", "member1"]
    assert info["model_config"]["widths"] == [4, 8, 8, 8]
    assert info["roles"]["allowed"] == ["f1", "m1"] and info["roles"]["heldout_impostors"] == ["f3", "m3"]
    assert info["data_config"]["cache_dir"] == str(cache)
    assert info["data_config"]["aug_copies"] == 2
    assert (cache / "images.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert (out / "ensemble.json").is_file() and (out / "member1" / "best.pt").is_file()
    assert "ensemble of 2 test:" in capsys.readouterr().out
    # the stored data config reopens the same prepared cache, without rebuilding it
    from voicegate.train.data.prepare import PrepareConfig, prepare_corpus

    _, ckpt = load_run(out)[0]
    assert prepare_corpus(PrepareConfig.from_dict(ckpt["data_config"])).reused


def test_a_corpus_with_no_allowed_speaker_is_one_line_and_exit_2(tmp_path, capsys):
    import soundfile as sf
    from synth import synth_voice

    from voicegate.device.cli import main

    root = tmp_path / "corpus"
    for spk, voice in (("s1", "f1"), ("s2", "m1"), ("s3", "f2")):
        (root / spk).mkdir(parents=True)
        for i in range(3):
            sf.write(root / spk / f"{i}.wav", synth_voice(voice, 3.0, seed=i), 16000)
    (root / "roles.json").write_text(json.dumps({"not_allowed_train": ["s1", "s2"], "heldout_impostors": ["s3"]}))
    rc = main(["train", "--corpus", str(root), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c"),
               "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("voicegate train: error: the training split holds one class only")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_an_unavailable_device_is_one_line_before_any_preparation(tmp_path, capsys):
    from voicegate.device.cli import main

    rc = main(["train", "--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"),
               "--cache", str(tmp_path / "c"), "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["voicegate train: error: --device cuda: CUDA is not available on this machine"]
    assert not (tmp_path / "c").exists() and not (tmp_path / "run").exists()


def test_sigterm_during_prepare_removes_the_half_written_cache(tiny_corpus, tmp_path):
    """A SIGTERM (systemd, a scheduler, `kill`) unwinds like Ctrl-C: the cache's temporary
    folder is removed, and the command ends in one line with exit 143."""
    import signal
    import subprocess
    import time

    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "voicegate.device", "prepare", "--corpus", str(tiny_corpus),
                             "--cache", str(cache), "--aug-copies", "8", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".cache.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "prepare finished before its temporary folder was seen"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "voicegate: terminated (SIGTERM)"
    assert not list(tmp_path.glob(".cache.tmp-*")) and not cache.exists()


def test_an_os_error_is_said_as_path_and_reason(tmp_path):
    from voicegate.train.commands import error_text

    missing = tmp_path / "nowhere" / "x"
    with pytest.raises(OSError) as e:
        missing.mkdir()
    assert error_text(e.value) == f"{missing}: No such file or directory"
    assert error_text(ValueError("bad\nvalue")) == "bad\\nvalue"
    assert error_text(RuntimeError()) == "RuntimeError"
