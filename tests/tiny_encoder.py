"""A tiny encoder-kind ONNX model for the enrolment, profile and scoring tests (built in ms).

The graph honours the encoder contract (TEAM.md / device/contract.py): input ``spectrogram``
float32 (batch, 1, 224, 224) -> output ``embeddings`` float32 (batch, S, D), every (b, s) row
L2-normalised. What it computes is a voice "fingerprint" crude enough to build by hand, but
real enough to tell the synthetic voices of ``tests/synth.py`` apart:

- the peak over time of each of the window's 224 frequency rows, minus its moving average
  across frequency, mean-removed: the tilt and overall level do not count, only the spectral
  detail (pitch harmonics, formants);
- a fixed random projection to D dimensions (seeded);
- an MC-dropout-like mask: one random (1, S, D) keep-mask per run, shared by every window of
  the batch (as the real MC encoder does), so the S samples differ a little and the scores
  they give have a spread;
- L2 normalisation of each (b, s) row.

``write_encoder_model`` writes it with a hand-made ``kind="encoder"`` contract (logistic
calibration on the cosine, thresholds on the calibrated probability) in its metadata and a
sha256 sidecar, as ``voicegate export`` does (without importing torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from voicegate.device.contract import EMBEDDINGS_NAME, INPUT_NAME, ModelContract
from voicegate.device.features import IMAGE_SIZE, feature_contract
from voicegate.device.policy import Thresholds

DIM = 64
SAMPLES = 8
DROP_P = 0.05
SMOOTH = 25  # frequency rows in the moving average that removes the spectral tilt
TOP_ROWS_IGNORED = 24  # the top 24 rows (above ~7.1 kHz) do not count: audio that went through
#                        another sample rate (PulseAudio at 44.1 kHz) has lost them
# cosine -> p. Measured on tests/synth.py voices (f1 f2 m1 m2 m3 f3 alice bob; enrolled from two
# 8 s recordings, tested on a 4 s one): same voice cos >= 0.92, other voices <= 0.77; midpoint 0.835.
CALIBRATION = {"type": "logistic", "a": 40.0, "b": -33.4}
THRESHOLDS = Thresholds(accept=0.7, uncertainty_limit=0.2, deny=0.3)


def projection(dim: int = DIM, seed: int = 0) -> np.ndarray:
    """(IMAGE_SIZE, dim) fixed random projection of the spectral shape (zero-mean columns)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((IMAGE_SIZE, dim)).astype(np.float32)
    w -= w.mean(axis=0, keepdims=True)
    w[:TOP_ROWS_IGNORED] = 0.0  # row 0 is the highest frequency: resamplers differ up there
    return (w / np.sqrt(IMAGE_SIZE)).astype(np.float32)


def build_graph(dim: int = DIM, samples: int = SAMPLES, drop_p: float = DROP_P, seed: int = 0,
                deterministic: bool = False) -> onnx.ModelProto:
    """The tiny encoder graph; ``deterministic`` replaces the random mask by ones."""
    w = numpy_helper.from_array(projection(dim, seed), "W")
    inits = [w, numpy_helper.from_array(np.asarray([1.0 / (1.0 - drop_p)], np.float32), "scale"),
             numpy_helper.from_array(np.full((1, 1, SMOOTH), 1.0 / SMOOTH, np.float32), "smooth")]
    nodes = [
        # time-average of each frequency row: (B, 1, 224, 224) -> (B, 224)
        helper.make_node("ReduceMax", [INPUT_NAME], ["spec"], axes=[3], keepdims=0),  # (B, 1, 224)
        # minus its moving average across frequency: the spectral tilt goes, harmonics and
        # formants stay
        helper.make_node("Conv", ["spec", "smooth"], ["tilt"], pads=[SMOOTH // 2, SMOOTH // 2]),
        helper.make_node("Sub", ["spec", "tilt"], ["detail3"]),
        helper.make_node("Flatten", ["detail3"], ["detail"], axis=1),  # (B, 224)
        helper.make_node("ReduceMean", ["detail"], ["detail_mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["detail", "detail_mean"], ["shape"]),
        helper.make_node("MatMul", ["shape", "W"], ["h"]),  # (B, D)
        helper.make_node("Unsqueeze", ["h", "axis1"], ["h3"]),  # (B, 1, D)
    ]
    inits.append(numpy_helper.from_array(np.asarray([1], np.int64), "axis1"))
    if deterministic:
        inits.append(numpy_helper.from_array(np.ones((1, samples, dim), np.float32), "mask"))
    else:
        inits.append(numpy_helper.from_array(np.asarray([drop_p], np.float32), "p"))
        nodes += [  # one keep-mask per run, shared by every window of the batch
            helper.make_node("RandomUniform", [], ["u"], shape=[1, samples, dim],
                             dtype=TensorProto.FLOAT),
            helper.make_node("Less", ["p", "u"], ["keep"]),
            helper.make_node("Cast", ["keep"], ["keep_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["keep_f", "scale"], ["mask"]),
        ]
    nodes += [
        helper.make_node("Mul", ["h3", "mask"], ["hs"]),  # (B, S, D)
        helper.make_node("ReduceL2", ["hs"], ["norm"], axes=[2], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["norm_safe"]),
        helper.make_node("Div", ["hs", "norm_safe"], [EMBEDDINGS_NAME]),
    ]
    inits.append(numpy_helper.from_array(np.asarray([1e-12], np.float32), "eps"))
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info(EMBEDDINGS_NAME, TensorProto.FLOAT, ["batch", samples, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_contract(samples: int = SAMPLES, dim: int = DIM, thresholds: Thresholds | None = None,
                  calibration: dict | None = None, features: dict | None = None) -> ModelContract:
    return ModelContract(
        features=features or feature_contract(),
        method="mc",
        samples=samples,
        thresholds=thresholds or THRESHOLDS,
        architecture="tiny-encoder",
        dropout_p=DROP_P,
        corpus={"name": "synthetic", "note": "hand-made for tests"},
        metrics={"validation": {"note": "hand-made for tests"}},
        created_at="2026-01-01T00:00:00Z",
        voicegate_version="test",
        kind="encoder",
        embedding_dim=dim,
        calibration=dict(calibration or CALIBRATION),
    )


def write_encoder_model(path: Path, samples: int = SAMPLES, dim: int = DIM, seed: int = 0,
                        deterministic: bool = False, **contract_kw) -> Path:
    """Write the tiny encoder to ``path`` with its contract, sidecar and manifest entry."""
    from voicegate.device.model_files import write_sidecar

    path = Path(path)
    proto = build_graph(dim, samples, seed=seed, deterministic=deterministic)
    onnx.helper.set_model_props(proto, make_contract(samples, dim, **contract_kw).to_metadata())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    write_sidecar(path)  # no torch here: export.onnx_export would import it (slow in every test)
    return path


if __name__ == "__main__":  # python tests/tiny_encoder.py OUT.onnx  (for benchmarks and demos)
    import sys

    print(write_encoder_model(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-encoder.onnx")))


class LoudnessVad:
    """A stand-in for the Silero VAD model, for tests/synth.py's generated voices.

    The synthetic voices are not speech to Silero; this marks every 512-sample frame within
    35 dB of the loudest as speech. Use it as ``SpeechDetector(model=LoudnessVad())``, never in
    the device path.
    """

    sha256 = "0" * 64
    path = Path("loudness-vad")

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        n = x.size // 512
        if n == 0:
            return np.zeros(0, np.float32)
        rms = np.sqrt(np.mean(x[: n * 512].reshape(n, 512).astype(np.float64) ** 2, axis=1))
        db = 20 * np.log10(np.maximum(rms, 1e-10))
        return (db > max(db.max() - 35.0, -60.0)).astype(np.float32)


def loudness_detector():
    """A SpeechDetector with the device's rule and :class:`LoudnessVad` as its model."""
    from voicegate.device.speech import SpeechDetector

    return SpeechDetector(model=LoudnessVad())


def synthetic_recordings(voice: str, seeds=(0, 1), seconds: float = 8.0) -> list:
    """Analysed enrolment recordings of a tests/synth.py voice (the device's speech detector)."""
    from synth import synth_voice

    from voicegate.device.enroll_checks import analyse

    return [analyse(f"{voice}-{s}.wav", synth_voice(voice, seconds, seed=s)) for s in seeds]


def synthetic_images(voice: str, seed: int = 9, seconds: float = 4.0) -> np.ndarray:
    """Spectrogram windows of a generated utterance (no speech detector: the whole signal)."""
    from synth import synth_voice

    from voicegate.device.features import frame_windows, spectrogram

    return spectrogram(frame_windows(synth_voice(voice, seconds, seed=seed)))


# --- pytest fixtures (import them into a test module: `from tiny_encoder import model, encoder`) --
try:
    import pytest
except ImportError:  # pragma: no cover - running this file as a script without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def model(tmp_path_factory):
        """A tiny encoder written with its contract and sidecar (one per test module)."""
        return write_encoder_model(tmp_path_factory.mktemp("enc") / "tiny-encoder.onnx")

    @pytest.fixture(scope="module")
    def encoder(model):
        from voicegate.device.encoder import Encoder

        return Encoder.load(model)
