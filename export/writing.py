"""Writing an exported model, for both kinds (classifier and encoder): the contract goes into
``metadata_props``, the bytes are written atomically with a ``NAME.onnx.sha256`` sidecar and an
entry in the folder's ``manifest.json``, and the file is read back through the device runtime,
which must accept it and read the same contract. Also the export's two errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from voicegate.train.data.fingerprint import absolute_paths

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """Export failed a check (parity, thresholds, round trip); the CLI exits 1."""


class ExportInputError(ExportError, ValueError):
    """The run, its data or the options cannot be exported as given (a corpus without
    validation windows, another featurizer's cache, a method that does not fit the runs); being
    a ValueError, the CLI exits 2 (``voicegate.train.commands.failure_exit``)."""


def output_paths(out: Path, methods: list[str]) -> dict[str, Path]:
    """``--out`` for one method; ``NAME-mc.onnx`` / ``NAME-ensemble.onnx`` for both."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportInputError(f"--out must name a .onnx file, got {out}")
    if len(methods) == 1:
        return {methods[0]: out}
    return {m: out.with_name(f"{out.stem}-{m}.onnx") for m in methods}


def update_manifest(model_path: Path, digest: str) -> Path:
    """Set ``{file name: sha256}`` in ``manifest.json`` beside the model (atomic write)."""
    from voicegate.device.model_files import MANIFEST_NAME

    manifest = model_path.with_name(MANIFEST_NAME)
    entries = {}
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text())
        except ValueError:
            log.warning("%s was not valid JSON; rewriting it", manifest)
    if not isinstance(entries, dict):
        entries = {}
    entries[model_path.name] = digest
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps(dict(sorted(entries.items())), indent=1) + "\n")
    os.replace(tmp, manifest)
    return manifest


def write_verified(proto, contract, path: Path, load) -> tuple[str, object]:
    """Refuse a contract holding machine paths, write the model, and load it back with the device's
    ``load`` (``Gate.load`` or ``Encoder.load``): the device must accept what was written and read
    the same contract. Returns ``(sha256, the loaded model)``."""
    leaked = absolute_paths(contract.to_dict())
    if leaked:
        raise ExportError(f"the {contract.kind} contract would carry this machine's paths: {'; '.join(leaked[:3])}")
    digest = write_model(proto, contract, path)
    loaded = load(path)
    if loaded.contract.to_dict() != contract.to_dict():
        raise ExportError(f"{path}: the contract did not survive the round trip")
    return digest, loaded


def write_model(proto, contract, path: Path) -> str:
    """Write the model with its contract, the sidecar and the manifest; return the sha256."""
    from voicegate.device.model_files import sha256_bytes, write_sidecar

    from .graphs import set_metadata

    set_metadata(proto, contract.to_metadata())
    data = proto.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    digest = sha256_bytes(data)
    side = write_sidecar(path, digest)
    manifest = update_manifest(path, digest)
    log.info("wrote %s (%.2f MB), %s, %s", path, len(data) / 1e6, side, manifest)
    return digest


def weights_digest(paths: list[Path]) -> str:
    """sha256 of one checkpoint file, or of the members' digests in order."""
    from voicegate.device.model_files import file_sha256

    digests = [file_sha256(p) for p in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()
