"""The shipped artefacts in models/: every file the manifest lists is intact, every gate model in
it loads and never grants the example stranger (a classifier and the default encoder DENY it), and
the README's first commands give their documented answers on a fresh machine: the demo household's
allowed clip is GRANTED by name (exit 0) and the stranger is DENIED.

The models are found through models/manifest.json (so retrained, re-exported or newly added
models, classifier or encoder kind, are checked without editing this file). A manifest entry
without a voicegate contract (the vendored speech detector) is checked for integrity only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicegate.device.contract import EXIT_DENIED, EXIT_GRANTED, EXIT_UNCERTAIN, META_CONTRACT, ModelContract
from voicegate.device.runtime import make_session
from voicegate.device.model_files import file_sha256, sidecar_path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
EXAMPLE = "models/example.wav"  # a real stranger: LibriSpeech held-out impostor 367 (make_demo.py)
ALLOWED_CLIP = "models/example-librispeech-2414.flac"  # a demo-household member's test-split clip
ALLOWED_NAME = "librispeech-2414"
FIRST_COMMAND = f"voicegate enroll-check {ALLOWED_CLIP}"
SECOND_COMMAND = f"voicegate enroll-check {EXAMPLE}"


def manifest() -> dict:
    return json.loads((MODELS / "manifest.json").read_text())


def contract_of(path: Path) -> ModelContract | None:
    """The model's voicegate contract, or None for an ONNX file that carries none."""
    meta = make_session(str(path)).get_modelmeta().custom_metadata_map
    if META_CONTRACT not in meta:
        return None
    return ModelContract.from_metadata(meta)  # a malformed contract raises: never dropped unseen


def gate_models() -> list[str]:
    return sorted(name for name in manifest() if name.endswith(".onnx") and contract_of(MODELS / name))


def clean_env(tmp_path: Path) -> dict:
    """No model or profile chosen by the environment, and no personal profiles on this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEGATE_")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "share"))
    return env


def run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=clean_env(tmp_path), timeout=120)


def test_every_manifest_entry_is_intact():
    entries = manifest()
    assert entries, "models/manifest.json lists nothing"
    for name, digest in entries.items():
        path = MODELS / name
        assert path.is_file(), f"{name} is in the manifest but not in models/"
        assert file_sha256(path) == digest, f"{name}: sha256 differs from the manifest"
        side = sidecar_path(path)
        if side.is_file():
            assert side.read_text().split()[0] == digest, f"{side.name} disagrees with the manifest"


def test_there_are_shipped_gate_models_of_both_methods():
    methods = {contract_of(MODELS / name).method for name in gate_models()}
    assert methods >= {"mc", "ensemble"}, methods


def gate_model_params() -> list:
    """gate_models() as pytest params: an encoder other than the default is tried against the
    demo household enrolled with it from the shared corpus, so it is marked shared."""
    from voicegate.device.encoder import DEFAULT_ENCODER_NAME

    return [pytest.param(n, id=n, marks=pytest.mark.shared
                         if contract_of(MODELS / n).kind == "encoder" and n != DEFAULT_ENCODER_NAME else ())
            for n in gate_models()]


@pytest.mark.parametrize("name", gate_model_params())
def test_each_shipped_model_loads_and_never_grants_the_example(name, tmp_path):
    from voicegate.device.encoder import DEFAULT_ENCODER_NAME

    kind = contract_of(MODELS / name).kind
    if kind == "classifier":
        from voicegate.device.runtime import Gate

        gate = Gate.load(MODELS / name)  # verified, probed: its samples disagree
        assert gate.thresholds_loosened == []
    else:
        from voicegate.device.encoder import Encoder

        Encoder.load(MODELS / name)
    argv = [sys.executable, "-m", "voicegate.device", "enroll-check", EXAMPLE, "--model", f"models/{name}", "--json"]
    if kind == "encoder" and name == DEFAULT_ENCODER_NAME:
        argv.append("--demo")  # against the shipped demo household (made with the default encoder)
    elif kind == "encoder":  # the same household, enrolled with this encoder
        from conftest import demo_household_for

        argv += ["--profiles", str(demo_household_for(MODELS / name))]
    r = run(argv, tmp_path)
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["model_sha256"] == manifest()[name]
    if kind == "classifier" or name == DEFAULT_ENCODER_NAME:  # confident about the stranger
        assert r.returncode == EXIT_DENIED, f"{name}: exit {r.returncode}\n{r.stdout}{r.stderr}"
        assert d["decision"] == "DENIED" and d["exit_code"] == EXIT_DENIED
    else:  # another encoder against the household enrolled with it: never GRANTED
        assert r.returncode in (EXIT_DENIED, EXIT_UNCERTAIN), f"{name}: exit {r.returncode}\n{r.stdout}{r.stderr}"
        assert d["decision"] in ("DENIED", "UNCERTAIN") and d["exit_code"] == r.returncode


def _readme_command(tmp_path, command: str) -> subprocess.CompletedProcess:
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"^.*\b{re.escape(command)}\s*(#.*)?$", readme, re.M), f"README lacks: {command}"
    exe = shutil.which("voicegate")
    argv = [exe] if exe else [sys.executable, "-m", "voicegate.device"]
    return run(argv + command.split()[1:], tmp_path)


def test_the_readme_first_command_grants_the_demo_member_by_name(tmp_path):
    r = _readme_command(tmp_path, FIRST_COMMAND)  # enroll-check's masks are seeded: no retry needed
    assert r.returncode == EXIT_GRANTED, r.stdout + r.stderr
    assert r.stdout.startswith(f"GRANTED as {ALLOWED_NAME} "), r.stdout
    assert "demo household" in r.stderr  # a fresh machine says which profiles decided


def test_the_readme_second_command_denies_the_stranger(tmp_path):
    r = _readme_command(tmp_path, SECOND_COMMAND)
    assert r.returncode == EXIT_DENIED, r.stdout + r.stderr
    assert r.stdout.split()[0] == "DENIED", r.stdout


def test_the_readme_names_the_seed_baseline_as_the_benchmark_results_do():
    results = json.loads((REPO / "benchmarks" / "results.json").read_text())
    readme = (REPO / "README.md").read_text()
    for name in ("seed_torch", "seed_onnx_mc"):
        seed = results["models"][name]
        assert seed["untrained"] is True and "untrained (random weights)" in seed["source"], seed
        assert seed["source"].split(":")[0] in readme, seed["source"]
    assert "study model" not in readme  # the random-weight baseline is not the study's trained model
