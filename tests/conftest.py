"""Shared fixtures: where the real-speech corpus is, and tiny generated corpora."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `import synth`

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VOICEGATE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "manifest.csv").is_file():
        reason = f"real-speech corpus not found at {path} (set VOICEGATE_SHARED_DATA)"
        if os.environ.get("VOICEGATE_REQUIRE_SHARED") == "1":
            pytest.fail(reason + "; VOICEGATE_REQUIRE_SHARED=1 makes this a failure")
        pytest.skip(reason)
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
    if not path.is_dir():
        _shared("noise")  # skip/fail with the standard message
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A generated manifest corpus: 2 allowed, 2 not-allowed, 2 impostor synthetic voices."""
    from synth import make_manifest_corpus

    return make_manifest_corpus(tmp_path_factory.mktemp("tiny_corpus"))
