"""Locating a model and verifying its bytes: the shipped models' folder, the model someone named
(``--model`` > ``$VOICEGATE_MODEL`` > the shipped default; an empty name is refused), and the
sha256 check against ``NAME.onnx.sha256`` (``sha256sum`` format) or the folder's
``manifest.json`` that every model passes before onnxruntime sees it. Standard library only.

The sha256 is integrity, not authenticity: it catches a truncated or corrupted file, but whoever
can write the model can write its hash too (see the README's security notes).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .audio import PathLike
from .contract import ModelError

MODEL_ENV = "VOICEGATE_MODEL"
DEFAULT_METHOD = "mc"
DEFAULT_MODEL_NAMES = {
    "mc": "voicegate-compact-mc.onnx",
    "ensemble": "voicegate-compact-ensemble.onnx",
}
MANIFEST_NAME = "manifest.json"  # {file name: sha256} for the models in one folder
SIDECAR_SUFFIX = ".sha256"  # NAME.onnx.sha256 holds "HEX  NAME.onnx" (sha256sum format)
MAX_MODEL_BYTES = 512 * 1024 * 1024  # refuse anything larger than this as "not a gate model"


def models_dir() -> Path:
    """The folder of the shipped models (the ``voicegate.models`` package)."""
    try:
        import voicegate.models as shipped

        return Path(shipped.__file__).resolve().parent
    except ImportError:  # running from a source tree without the package mapping
        return Path(__file__).resolve().parents[1] / "models"


def named_model(model_path: PathLike | None = None, variables: tuple = (MODEL_ENV,)) -> Path | None:
    """The model someone named: ``model_path``, else the first of ``variables`` that is set;
    None when nobody named one (then the shipped default). An empty name is a ModelError, never
    "the default": ``VOICEGATE_MODEL=`` must not quietly put another model at the door."""
    if model_path is not None:
        if not str(model_path).strip():
            raise ModelError("--model is empty: name a model file")
        return Path(model_path)
    for var in variables:
        env = os.environ.get(var)
        if env is not None:
            if not env.strip():
                raise ModelError(f"${var} is set but empty: name a model file, or unset it for the shipped model")
            return Path(env)
    return None


def resolve_model_path(model_path: PathLike | None = None, method: str | None = None) -> Path:
    """``model_path`` > ``$VOICEGATE_MODEL`` > the shipped default for ``method`` (mc)."""
    named = named_model(model_path)
    if named is not None:
        return named
    m = method or DEFAULT_METHOD
    if m not in DEFAULT_MODEL_NAMES:
        raise ModelError(f"unknown method {m!r} (want mc|ensemble)")
    return models_dir() / DEFAULT_MODEL_NAMES[m]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(model_path: PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_sidecar(model_path: PathLike, digest: str | None = None) -> Path:
    """Write ``NAME.onnx.sha256`` in ``sha256sum`` format; return its path."""
    p = Path(model_path)
    digest = digest or file_sha256(p)
    out = sidecar_path(p)
    out.write_text(f"{digest}  {p.name}\n")
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        raise ModelError(f"{path}: cannot read it ({e.strerror or e})") from None


def expected_sha256(model_path: PathLike) -> tuple[str, str]:
    """(expected hex digest, where it came from) from the sidecar or the folder's manifest.

    If both exist they must agree. Raises ModelError when neither names the file.
    """
    p = Path(model_path)
    found: list[tuple[str, str]] = []
    side = sidecar_path(p)
    if side.is_file():
        words = _read_text(side).split()
        if not words or len(words[0]) != 64:
            raise ModelError(f"{side}: not a sha256 sidecar (want 'HEX  {p.name}')")
        found.append((words[0].lower(), str(side)))
    manifest = p.with_name(MANIFEST_NAME)
    if manifest.is_file():
        try:
            entries = json.loads(_read_text(manifest))
        except ValueError as e:
            raise ModelError(f"{manifest}: not valid JSON ({e})") from None
        if isinstance(entries, dict) and isinstance(entries.get(p.name), str):
            found.append((entries[p.name].lower(), str(manifest)))
    if not found:
        raise ModelError(
            f"{p}: no sha256 to verify it against (want {side.name} or an entry in "
            f"{MANIFEST_NAME}); make one with: sha256sum {p.name} > {side.name}"
        )
    digests = {d for d, _ in found}
    if len(digests) > 1:
        raise ModelError(f"{p}: its sidecar and {MANIFEST_NAME} disagree about its sha256")
    return found[0]


def read_verified_model(model_path: PathLike) -> tuple[bytes, str]:
    """The model's bytes and sha256, after checking them against the sidecar/manifest.

    The same bytes are hashed and then handed to onnxruntime, so nothing can change in between.
    """
    p = Path(model_path)
    if not p.exists():
        hint = f" (name one with --model or ${MODEL_ENV})" if p.parent == models_dir() else ""
        raise ModelError(f"{p}: model file not found{hint}")
    if not p.is_file():
        raise ModelError(f"{p}: not a model file")
    size = p.stat().st_size
    if size == 0:
        raise ModelError(f"{p}: empty model file (0 bytes)")
    if size > MAX_MODEL_BYTES:
        raise ModelError(f"{p}: {size} bytes is too large for a voicegate model")
    want, source = expected_sha256(p)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelError(f"{p}: cannot read the model ({e.strerror or e})") from None
    got = sha256_bytes(data)
    if got != want:
        raise ModelError(
            f"{p}: sha256 mismatch (file {got[:12]}..., expected {want[:12]}... from {source}): "
            "the model was modified or truncated; refusing it"
        )
    return data, got
