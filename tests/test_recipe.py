"""The README's training recipe asks for what the shipped study needs (issue 14).

The DAPS recipe is read from the README and parsed with the commands' own argument parsers, so
a recipe that would train without held-out impostors (no open set), choose thresholds on other
utterances than the device decides, overwrite the shipped models' manifest, or write the audit
log into the virtual environment fails here.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks of the README section whose heading starts with ``section``."""
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", text[start : end if end > 0 else None], re.S)


def commands(block: str) -> dict[str, list[str]]:
    """{subcommand: argv} of the `voicegate ...` lines (continuations joined, comments dropped)."""
    joined = block.replace("\\\n", " ")
    out = {}
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) >= 2 and words[0].endswith("voicegate"):
            out[words[1]] = words[2:]
    return out


def parse(module, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def daps():
    (block,) = bash_blocks("Training on DAPS")
    return commands(block)


def test_daps_recipe_holds_impostors_out_in_prepare_and_train(daps):
    from voicegate.train.data import prepare
    from voicegate.train.models import trainer

    p = parse(prepare, daps["prepare"])
    t = parse(trainer, daps["train"])
    assert p.impostors, "prepare without --impostors: eval would have no open set"
    held_out = sum(p.impostors, [])  # prepare, like train, takes names space or comma separated
    assert sorted(sum(t.impostors, [])) == sorted(held_out)
    assert not set(held_out) & {"f1", "f7", "f8", "m3", "m6", "m8"}  # the study's allowed speakers


def test_daps_recipe_exports_for_3_s_utterances_outside_models(daps):
    from voicegate.export import onnx_export

    e = parse(onnx_export, daps["export"])
    assert e.utterance_windows == 2  # 3 s at the 1 s decision hop, as eval's attempts
    assert Path(e.out).parts[0] != "models", "--out models/... rewrites the tracked models/manifest.json"
    ev = daps["eval"]
    models = [a for a in ev if a.endswith(".onnx")]
    assert models and all(Path(m).parent == Path(e.out).parent for m in models)
    assert "--corpus" in ev  # the contract names the corpus, not its path


def test_pi_example_keeps_the_audit_log_outside_the_venv():
    block = next(b for b in bash_blocks("Deploying on a Raspberry Pi") if "listen --log" in b)
    venv = re.search(r"python3 -m venv (\S+)", block).group(1)
    log = re.search(r"listen --log (\S+)", block).group(1)
    assert not log.startswith(venv.rstrip("/") + "/"), f"audit log {log} inside the venv {venv}"
