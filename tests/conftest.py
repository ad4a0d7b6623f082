"""Shared fixtures: where the real-speech corpus is, and tiny generated corpora."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from voicegate.train.data.fingerprint import shared_data_dir

sys.path.insert(0, str(Path(__file__).parent))  # for `import synth`

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()


def ci_required() -> bool:
    """Is a missing test environment a failure here? Yes under .ci/run (VOICEGATE_REQUIRE_SHARED=1,
    which also installs PulseAudio, qemu and the teacher), with CI=true, or VOICEGATE_REQUIRE_AARCH64=1."""
    return (os.environ.get("VOICEGATE_REQUIRE_SHARED") == "1" or os.environ.get("CI") == "true"
            or os.environ.get("VOICEGATE_REQUIRE_AARCH64") == "1")


def skip_or_fail(reason: str) -> None:
    """Skip a test whose environment is missing, or fail it where CI promised that environment."""
    if ci_required():
        pytest.fail(f"{reason} (CI installs this: a failure here, not a skip)")
    pytest.skip(reason)


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "manifest.csv").is_file():
        skip_or_fail(f"real-speech corpus not found at {path} (set VOICEGATE_SHARED_DATA)")
    return path


_HOUSEHOLDS: dict = {}


def demo_household_for(model: Path) -> Path:
    """The demo household (models/make_demo.py) enrolled with encoder ``model``, once per session
    (the shipped one in models/demo-profiles is tied to the default encoder)."""
    import subprocess
    import tempfile

    if model not in _HOUSEHOLDS:
        corpus = _shared("librispeech")
        out = Path(tempfile.mkdtemp(prefix="vg-demo-"))
        r = subprocess.run([sys.executable, str(REPO / "models" / "make_demo.py"), "--model", str(model),
                            "--corpus", str(corpus), "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        _HOUSEHOLDS[model] = out / "demo-profiles"
    return _HOUSEHOLDS[model]


@pytest.fixture(scope="session")
def librispeech() -> Path:
    """../shared/data/librispeech (skips without it; fails under VOICEGATE_REQUIRE_SHARED=1)."""
    return _shared("librispeech")


@pytest.fixture(scope="session")
def arabic_commands() -> Path:
    return _shared("arabic-commands")


@pytest.fixture(scope="session")
def noise_dir() -> Path:
    path = SHARED_DATA / "noise"
    if not any(path.glob("*.flac")):  # a missing or empty (half-synced) folder
        skip_or_fail(f"no shared noise recordings (*.flac) at {path} (set VOICEGATE_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def stream():
    """Four synthetic utterances with noise between them (listen_fakes.speech_stream)."""
    from listen_fakes import speech_stream

    return speech_stream(n_utterances=4)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A generated manifest corpus: 2 allowed, 2 not-allowed, 2 impostor synthetic voices."""
    from synth import make_manifest_corpus

    return make_manifest_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path_factory, monkeypatch):
    """Each test has its own $XDG_STATE_HOME and $XDG_DATA_HOME: listen keeps its lockout count
    in the first without --log, the per-user profile store lives in the second, and one test's
    denials or enrolments must not reach another test or this machine's user (subprocesses
    inherit both)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data")))
    for var in ("VOICEGATE_PROFILES", "VOICEGATE_MODEL", "VOICEGATE_ENCODER"):  # the caller's door is not the tests'
        monkeypatch.delenv(var, raising=False)
