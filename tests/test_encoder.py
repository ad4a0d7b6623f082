"""The speaker encoder: model, loss, scoring helpers, ONNX export (MC samples, parity), calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voicegate.train.models.encoder import (
    AAMSoftmax,
    EncoderConfig,
    EncoderTraining,
    SpeakerEncoder,
    distill_loss,
    eer,
    frr_at_far,
    load_encoder,
    save_encoder,
    trials,
)

TINY = {"widths": (4, 8, 8, 16), "trunk_dim": 16, "embedding_dim": 8, "dropout": 0.3}


def tiny_encoder(seed: int = 0, n_speakers: int = 5) -> SpeakerEncoder:
    torch.manual_seed(seed)
    return SpeakerEncoder(EncoderConfig(n_speakers=n_speakers, **TINY)).eval()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 224, 224), dtype=np.float32)


def test_embeddings_are_l2_normalised_and_dropout_only_in_the_head():
    enc = tiny_encoder()
    x = torch.from_numpy(images(3))[:, None]
    with torch.no_grad():
        e = enc(x)
    assert e.shape == (3, 8)
    np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, atol=1e-5)
    dropouts = [m for m in enc.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [enc.head[0]]


def test_aam_margin_raises_the_loss_and_distillation_is_zero_on_the_target():
    torch.manual_seed(0)
    aam = AAMSoftmax(8, 4, margin=0.3, scale=30.0)
    emb = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    y = torch.randint(0, 4, (16,))
    with torch.no_grad():
        with_margin, cos = aam(emb, y)
        without, _ = aam(emb, y, margin=0.0)
    assert cos.shape == (16, 4)
    assert float(with_margin) > float(without) > 0
    t = torch.randn(5, 6)
    assert float(distill_loss(t * 3.0, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(-t, t)) == pytest.approx(2.0, abs=1e-6)


def test_checkpoint_rebuilds_the_same_encoder(tmp_path):
    training = EncoderTraining(EncoderConfig(n_speakers=5, teacher_dim=6, **TINY))
    path = save_encoder(tmp_path / "c.pt", training, {"note": "x"})
    enc, ckpt = load_encoder(path)
    assert ckpt["note"] == "x" and ckpt["encoder_config"]["embedding_dim"] == 8
    x = torch.from_numpy(images(2))[:, None]
    with torch.no_grad():
        np.testing.assert_allclose(enc(x).numpy(), training.encoder.eval()(x).numpy(), atol=1e-6)


def test_trials_pair_every_attempt_with_every_profile_and_never_itself():
    rng = np.random.default_rng(0)
    enrol = [rng.normal(size=(4, 3, 8)) for _ in range(3)]
    attempts = [(0, rng.normal(size=(2, 3, 8))), (2, rng.normal(size=(2, 3, 8)))]
    t = trials(enrol, attempts)
    assert t["cos"].shape == (6, 3)  # 2 attempts x 3 profiles, S = 3
    assert t["genuine"].sum() == 2
    assert np.all(t["genuine"] == (t["profile"] == t["speaker"]))


def test_eer_and_frr_at_far_on_known_distributions():
    rng = np.random.default_rng(1)
    g, i = rng.normal(1, 1, 4000), rng.normal(-1, 1, 20000)
    e, _ = eer(g, i)
    assert e == pytest.approx(0.1587, abs=0.01)  # Phi(-1)
    frr, thr = frr_at_far(g, i, 0.01)
    assert np.mean(i >= thr) <= 0.01
    assert frr == pytest.approx(0.63, abs=0.03)  # Phi(2.326 - 1 - 1)... = Phi(0.326)


def test_calibration_is_monotone_and_rejects_a_non_separating_encoder():
    from voicegate.device.scoring import calibrate
    from voicegate.export.encoder_export import fit_calibration

    rng = np.random.default_rng(2)
    cal = fit_calibration(rng.normal(0.7, 0.1, 300), rng.normal(0.2, 0.15, 3000))
    assert cal["type"] == "logistic" and cal["a"] > 0
    grid = np.linspace(-1, 1, 201)
    p = calibrate(grid, (cal["a"], cal["b"]))
    assert np.all(np.diff(p) > 0)
    # class-balanced: p = 0.5 lies between the two means
    assert 0.2 < -cal["b"] / cal["a"] < 0.7
    with pytest.raises(ValueError):
        fit_calibration(rng.normal(0.2, 0.1, 300), rng.normal(0.7, 0.1, 3000))


def test_mc_graph_varies_under_default_ort_options_and_matches_torch():
    import onnxruntime as ort

    from voicegate.device.contract import EMBEDDINGS_NAME, INPUT_NAME
    from voicegate.export.encoder_export import check_parity, export_encoder_mc
    from voicegate.export.graphs import with_dropout_p

    enc = tiny_encoder(3)
    proto = export_encoder_mc(enc, samples=6)
    assert [o.name for o in proto.graph.output] == [EMBEDDINGS_NAME]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])  # default options
    x = images(3, seed=4)[:, None]
    a = sess.run(None, {INPUT_NAME: x})[0]
    b = sess.run(None, {INPUT_NAME: x})[0]
    assert a.shape == (3, 6, 8)
    np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(a, b)  # fresh masks every run
    # samples differ within one run (any two of the 6 may agree by chance: two masks equal on the
    # ~10 features a tiny trunk activates happen about once in 250 runs)
    assert np.abs(a - a[:, :1]).max() > 1e-4
    off = ort.InferenceSession(with_dropout_p(proto, 0.0).SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = enc(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(off.run(None, {INPUT_NAME: x})[0], np.repeat(ref[:, None], 6, 1), atol=1e-5)
    report = check_parity(proto, enc, x[:, 0], samples=6)
    assert report["max_abs_dropout_off"] < 1e-4 and report["onnx_sample_cos_std_max"] > 0



def test_ensemble_graph_gives_each_member_its_own_block_and_matches_torch():
    """K members -> (B, K, K*D): member k's embedding in block k, zeros elsewhere; the device's
    scoring rule then gives sample k member k's cosine with the profile, on one shared scale."""
    import onnxruntime as ort

    from voicegate.device.contract import INPUT_NAME
    from voicegate.device.scoring import centroid, sample_embeddings, window_embeddings
    from voicegate.export.encoder_ensemble import check_ensemble_parity, export_encoder_ensemble
    from voicegate.export.encoder_export import _run, _session

    members = [tiny_encoder(s) for s in (1, 2, 3)]
    proto = export_encoder_ensemble(members)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = images(4, seed=5)[:, None]
    out = sess.run(None, {INPUT_NAME: x})[0]
    assert out.shape == (4, 3, 24)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, sess.run(None, {INPUT_NAME: x})[0])  # deterministic
    for k, enc in enumerate(members):
        with torch.no_grad():
            ref = enc(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out[:, k, 8 * k : 8 * k + 8], ref, atol=1e-5)
        assert np.abs(np.delete(out[:, k], np.s_[8 * k : 8 * k + 8], axis=1)).max() == 0.0
    assert check_ensemble_parity(proto, members, x[:, 0], _session, _run)["max_abs_vs_torch"] < 1e-4
    # the profile is every member's mean in its own block; sample k scores member k's agreement
    prof = centroid(window_embeddings(out[:2]))
    e = sample_embeddings(out[2:])
    cos = e @ prof
    for k, enc in enumerate(members):
        with torch.no_grad():
            m = enc(torch.from_numpy(x)).numpy()
        member_mean = m[:2].mean(0)
        blocks = [out[:2, j, 8 * j : 8 * j + 8].mean(0) for j in range(3)]
        scale = np.sqrt(sum(float(b @ b) for b in blocks))
        e_k = m[2:].mean(0) / np.linalg.norm(m[2:].mean(0))
        assert abs(cos[k] - e_k @ member_mean / scale) < 1e-5
    with pytest.raises(ValueError):
        export_encoder_ensemble(members[:1])


def test_wccn_whitens_the_within_speaker_spread_and_runs_in_the_mc_graph():
    from voicegate.export.backend import fit_wccn, with_wccn
    from voicegate.export.encoder_export import check_parity, export_encoder_mc

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 8))
    y = np.repeat(np.arange(20), 30)
    noise = rng.standard_normal((600, 8)) * np.array([3.0, 0.1, 1, 1, 1, 1, 1, 1])  # one loud nuisance axis
    x = centres[y] + noise
    w = fit_wccn(x, y)
    within = (x - centres[y]) @ w["transform"]
    cov = within.T @ within / len(x)
    assert np.abs(cov - np.eye(8)).max() < 0.15  # the within-speaker covariance becomes ~ identity
    enc = with_wccn(tiny_encoder(2), w)
    proto = export_encoder_mc(enc, samples=4)
    report = check_parity(proto, enc, images(3, seed=6), samples=4)
    assert report["max_abs_dropout_off"] < 1e-4 and report["max_norm_error"] < 1e-4
