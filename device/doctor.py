"""``voicegate doctor``: is this machine ready to be a door? One line per check, then a verdict.

Checks, in order: Python and platform; the model file's sha256; onnxruntime imports and runs the
model *in a subprocess* (a crash such as "Illegal instruction" or a segfault is reported, not
fatal, see doctor_probe.py); the model's contract; the speech detector; the warm decision time
against the real-time budget; the profile
store (readable, 0600, made with this encoder); PortAudio and the input devices, with a 2 s level
check of the chosen microphone (silent, too quiet, clipping); free disk for the audit log.

Exit 0 (READY) only when no check failed; 1 (NOT READY) otherwise; 2 for a usage error. A check
that does not apply here (no profile store for a classifier model) or that was switched off
(``--no-mic``) prints ``skip`` with its reason and is never counted as passed.
``--bench`` repeats the decision and prints a timing report (JSON) to send back.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import shutil
import sys
from pathlib import Path

from .doctor_probe import (  # noqa: F401 - Check and the statuses are this module's API too
    FAIL, OK, REALTIME_BUDGET_S, SKIP, WARN, Check, first_line, probe_checks, run_probe,
)
from .options import default_threads

EXIT_READY, EXIT_NOT_READY = 0, 1

log = logging.getLogger(__name__)

MIN_PYTHON = (3, 10)
MIC_SECONDS = 2.0
CLIP_LEVEL = 0.999  # |sample| at or above this is full scale
MAX_CLIPPED_FRACTION = 1e-3  # more full-scale samples than this: the capture gain is too high
QUIET_MARGIN_DB = 20.0  # speech should reach this far above the gate's no-speech floor
MIN_FREE_BYTES = 64 * 1024 * 1024  # audit log: about 100,000 decisions at ~600 bytes each
def default_log() -> Path:
    """The README's Pi deployment's audit log: ``$XDG_STATE_HOME/voicegate/audit.jsonl``."""
    from .xdg import base

    return base("XDG_STATE_HOME") / "voicegate" / "audit.jsonl"
BENCH_REPEATS, CHECK_REPEATS = 20, 3


# --- Python, platform, model file ----------------------------------------------------------
def board_model() -> str:
    """'Raspberry Pi 4 Model B Rev 1.4' from the device tree, else the CPU's model name, else ''."""
    for path, key in (("/proc/device-tree/model", None), ("/proc/cpuinfo", "model name"),
                      ("/proc/cpuinfo", "Model")):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        if key is None:
            return text.strip("\x00\n ")
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return ""


def check_python(version=None, machine: str | None = None) -> Check:
    v = tuple(version or sys.version_info[:3])
    machine = machine or platform.machine()
    libc = " ".join(platform.libc_ver()).strip() or "libc ?"
    where = f"{platform.system()} {machine}, {libc}" + (f", {board_model()}" if board_model() else "")
    text = f"Python {'.'.join(map(str, v))} on {where}"
    if v[:2] < MIN_PYTHON:
        return Check("python", FAIL, f"{text}: voicegate needs Python >= {'.'.join(map(str, MIN_PYTHON))}")
    return Check("python", OK, text, {"python": ".".join(map(str, v)), "machine": machine})


def check_model_file(path: Path) -> tuple[Check, str | None]:
    from .contract import ModelError
    from .model_files import read_verified_model

    try:
        data, digest = read_verified_model(path)
    except ModelError as e:
        return Check("model sha256", FAIL, str(e)), None
    return Check("model sha256", OK, f"{path.name}: {digest[:12]}... matches ({len(data)} bytes)"), digest


# --- profiles ---------------------------------------------------------------------------------
def check_profiles(store_dir, kind: str | None, model: Path | None = None) -> Check:
    """The store's files are 0600 in a 0700 folder and load with this encoder (the door's model
    when it is an encoder, else ``$VOICEGATE_ENCODER`` / the shipped encoder). Anything the
    check did not foresee is a FAIL too: the doctor always reaches its verdict."""
    try:
        return _check_profiles(store_dir, kind, model)
    except Exception as e:  # noqa: BLE001 (a door would refuse what it cannot read)
        log.debug("profile check failed", exc_info=True)
        return Check("profiles", FAIL, f"cannot check the profiles ({type(e).__name__}: {first_line(e)})")


def _check_profiles(store_dir, kind: str | None, model: Path | None) -> Check:
    try:
        enc = importlib.import_module(".encoder", __package__)
        profiles = importlib.import_module(".profiles", __package__)
    except ImportError as e:
        return Check("profiles", SKIP, f"not checked: this build has no profile store ({first_line(e)})")
    from .contract import ModelError

    try:
        store = profiles.ProfileStore(store_dir)
    except ModelError as e:  # an empty --profiles / $VOICEGATE_PROFILES
        return Check("profiles", FAIL, str(e))
    names = store.names() if store.exists() else []
    if not names:
        status = FAIL if kind == "encoder" else SKIP
        why = "an encoder model needs enrolled people" if kind == "encoder" else "not needed by a classifier model"
        return Check("profiles", status, f"no one is enrolled in {store.root} ({why})")
    bad = [f"{p} is mode {p.stat().st_mode & 0o777:04o} (want 0600: chmod 600 {p})"
           for p in (store.path(n) for n in names) if p.stat().st_mode & 0o077]
    if store.root.stat().st_mode & 0o077:
        bad.insert(0, f"{store.root} is mode {store.root.stat().st_mode & 0o777:04o} (want 0700)")
    if bad:
        return Check("profiles", FAIL, "others can read the voice profiles: " + "; ".join(bad))
    try:
        sha, dim = enc.encoder_identity(model if kind == "encoder" and model else enc.resolve_encoder_path())
        store.load_all(encoder_sha256=sha, embedding_dim=dim)
    except ModelError as e:
        return Check("profiles", FAIL, first_line(e))
    return Check("profiles", OK, f"{len(names)} profile(s) in {store.root}, 0600, made with encoder {sha[:12]}...")


# --- audio ------------------------------------------------------------------------------------
def classify_level(x) -> tuple[str, str]:
    """(status, text) for a recording made while someone spoke: silent, too quiet, clipping."""
    import numpy as np

    from .audio import SILENCE_FLOOR_DBFS, dc_offset, dc_offset_problem, frame_rms_db

    x = np.asarray(x, dtype=np.float32).ravel()
    if x.size == 0 or not np.any(x):
        return FAIL, "silent: only zeros (muted, wrong device, or no microphone plugged in)"
    loudest = float(frame_rms_db(x).max())
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL))
    text = f"loudest 25 ms {loudest:.0f} dBFS, peak {20 * np.log10(float(np.abs(x).max())):.1f} dBFS"
    if clipped > MAX_CLIPPED_FRACTION:
        return FAIL, f"clipping: {clipped:.1%} of samples at full scale ({text}); lower the capture gain"
    if loudest < SILENCE_FLOOR_DBFS:
        return FAIL, f"too quiet: {text}, below the gate's no-speech floor {SILENCE_FLOOR_DBFS:g} dBFS"
    if loudest < SILENCE_FLOOR_DBFS + QUIET_MARGIN_DB:
        return WARN, f"quiet: {text}; speak closer or raise the capture gain"
    off_zero = dc_offset_problem(dc_offset(x))
    if off_zero:
        return WARN, f"{off_zero} ({text})"
    return OK, text


def check_audio(device, seconds: float = MIC_SECONDS, record: bool = True, say=None) -> list[Check]:
    from . import stream
    from .audio import SAMPLE_RATE

    try:
        sd = stream.import_sounddevice()
        devices = stream.list_input_devices()
    except stream.AudioDeviceError as e:
        return [Check("audio devices", FAIL, str(e)), Check("microphone", SKIP, "not checked: no audio devices")]
    if not devices:
        return [Check("audio devices", FAIL, "PortAudio found no input device (is a microphone plugged in?)"),
                Check("microphone", SKIP, "not checked: no input device")]
    names = ", ".join(f"{d['index']}:{d['name']}{'*' if d['default'] else ''}" for d in devices)
    out = [Check("audio devices", OK, f"{len(devices)} input device(s): {names}")]
    if not record:
        return out + [Check("microphone", SKIP, "level check switched off (--no-mic)")]
    dev = stream.parse_device(device)
    try:
        if say:
            say(f"speak now: recording {seconds:g} s from {'the default input' if dev is None else dev}...")
        x = sd.rec(int(seconds * SAMPLE_RATE), samplerate=SAMPLE_RATE, channels=1, dtype="float32", device=dev)
        sd.wait()
    except Exception as e:
        return out + [Check("microphone", FAIL, f"cannot record from {dev if dev is not None else 'the default input'} "
                                                f"at {SAMPLE_RATE} Hz mono ({first_line(e)})")]
    status, text = classify_level(x)
    return out + [Check("microphone", status, f"{seconds:g} s from {dev if dev is not None else 'default'}: {text}")]


def check_disk(log_path: Path | None) -> Check:
    """The audit log's folder is writable with room to spare (the lockout state lives beside it),
    and the log, if it exists, is a regular file (listen refuses a FIFO or a device). Anything the
    check did not foresee (a folder on the way that cannot be searched) is a FAIL too."""
    try:
        return _check_disk(log_path)
    except Exception as e:  # noqa: BLE001 (the doctor always reaches its verdict)
        return Check("audit log disk", FAIL, f"cannot check the audit log's folder ({type(e).__name__}: "
                                             f"{first_line(e)})")


def _check_disk(log_path: Path | None) -> Check:
    p = (default_log() if log_path is None else log_path).expanduser()
    if os.path.lexists(p) and not p.is_file():
        return Check("audit log disk", FAIL, f"{p} is not a regular file: listen refuses it (exit 7)")
    existing = next(d for d in [p, *p.parents] if d.exists())
    folder = existing if existing.is_dir() else existing.parent
    free = shutil.disk_usage(folder).free
    if not os.access(existing, os.W_OK):
        return Check("audit log disk", FAIL, f"{existing} is not writable by this user (log {p})")
    text = f"{free / 2**20:.0f} MiB free at {folder} (log {p})"
    if free < MIN_FREE_BYTES:
        return Check("audit log disk", FAIL, f"{text}: want at least {MIN_FREE_BYTES / 2**20:.0f} MiB")
    return Check("audit log disk", OK, text, {"free_bytes": free})


# --- the command --------------------------------------------------------------------------------
def verdict(checks: list[Check]) -> tuple[int, str]:
    failed = [c.name for c in checks if c.status == FAIL]
    skipped = [c.name for c in checks if c.status == SKIP]
    warned = [c.name for c in checks if c.status == WARN]
    tail = "".join(f"; {label}: {', '.join(v)}" for label, v in (("warnings", warned), ("skipped", skipped)) if v)
    if failed:
        return EXIT_NOT_READY, f"NOT READY: {len(failed)} check(s) failed: {', '.join(failed)}{tail}"
    return EXIT_READY, f"READY for a door: {len(checks) - len(skipped)} checks passed{tail}"


def bench_report(checks: list[Check], model: Path, threads: int) -> dict:
    by = {c.name: c.data for c in checks}
    dec = by.get("decision time") or {}
    ms = sorted(dec.get("ms", []))
    return {
        "voicegate_doctor_bench": 1, "board": board_model(), "machine": platform.machine(),
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "onnxruntime": by.get("onnxruntime", {}).get("onnxruntime"), "numpy": by.get("onnxruntime", {}).get("numpy"),
        "model": model.name, "sha256": dec.get("sha256"), "threads": threads, "what": dec.get("what"),
        "cold_ms": {k: (by.get(s) or {}).get("ms") for k, s in (("import", "onnxruntime"), ("load", "model contract"))},
        "warm_decision_ms": {"n": len(ms), "min": ms[0] if ms else None, "median": ms[len(ms) // 2] if ms else None,
                             "max": ms[-1] if ms else None, "all": dec.get("ms")},
        "featurize_ms_median": sorted(dec.get("featurize_ms") or [None])[len(dec.get("featurize_ms") or [0]) // 2],
        "budget_s": REALTIME_BUDGET_S,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("exit codes: 0 READY (every check passed or does not apply), 1 NOT READY, 2 usage error, "
                "10 --help printed")
    p.add_argument("--model", metavar="PATH",
                   help="the door's model (default: $VOICEGATE_MODEL, else $VOICEGATE_ENCODER, else the shipped "
                        "encoder, else classifier)")
    p.add_argument("--method", choices=("mc", "ensemble"),
                   help="which shipped model to check: the encoder of this method (the door's default), "
                        "or the study's classifier in a build without an encoder")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help=f"onnxruntime threads, as the door uses (default {default_threads()}, as listen's)")
    p.add_argument("--device", metavar="ID", help="input device to level-check: index or part of its name")
    p.add_argument("--no-mic", action="store_true", help="skip the 2 s microphone level check")
    p.add_argument("--profiles", metavar="DIR", help="profile store (default: $VOICEGATE_PROFILES, ...)")
    p.add_argument("--log", metavar="PATH",
                   help="the audit log the door will write, its lockout state beside it "
                        "(default $XDG_STATE_HOME/voicegate/audit.jsonl, ~/.local/state/...)")
    p.add_argument("--audio", metavar="WAV", help="utterance to time decisions on (default: the shipped example)")
    p.add_argument("--bench", action="store_true", help=f"time {BENCH_REPEATS} decisions and print a report to send back")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")


def door_model(model: str | None, method: str | None) -> Path:
    """The model a door would use (``identify``'s rule): ``--model`` > ``$VOICEGATE_MODEL`` > the
    shipped encoder of ``--method`` when this build has an encoder (the default of enroll-check
    and listen) > the shipped classifier (``--method`` picks which)."""
    from .model_files import named_model, resolve_model_path

    if named_model(model) is not None:
        return resolve_model_path(model, method)
    try:
        enc = importlib.import_module(".encoder", __package__)
    except ImportError:
        return resolve_model_path(None, method)
    return enc.resolve_encoder_path(None, method) if enc.build_has_encoder(method) else resolve_model_path(None, method)


def run(args: argparse.Namespace) -> int:
    from .model_files import models_dir

    if args.threads < 1:
        print("voicegate doctor: error: --threads must be >= 1", file=sys.stderr)
        return 2
    say = None if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    from .contract import ModelError

    try:
        model = door_model(args.model, args.method)
    except ModelError as e:  # an empty --model or $VOICEGATE_MODEL: a door would refuse to start
        print(f"voicegate doctor: NOT READY: {e}", file=sys.stderr)
        return EXIT_NOT_READY
    audio = Path(args.audio) if args.audio else models_dir() / "example.wav"
    checks = [check_python()]
    file_check, digest = check_model_file(model)
    checks.append(file_check)
    if say:
        for c in checks:
            print(c.line(), flush=True)
    n0 = len(checks)
    if digest:
        stages, failure = run_probe(model, audio, args.threads, BENCH_REPEATS if args.bench else CHECK_REPEATS)
        checks += probe_checks(stages, failure)
    else:
        checks += [Check(n, SKIP, "not checked: the model file failed its sha256 check")
                   for n in ("onnxruntime", "model contract", "speech detector", "decision time")]
    kind = next((c.data.get("kind") for c in checks if c.name == "model contract"), None)
    checks.append(check_profiles(args.profiles, kind, model))
    for c in checks[n0:]:
        if say:
            print(c.line(), flush=True)
    n0 = len(checks)
    checks += check_audio(args.device, record=not args.no_mic, say=say)
    checks.append(check_disk(Path(args.log) if args.log else None))
    code, text = verdict(checks)
    if args.json:
        print(json.dumps({"verdict": text, "exit_code": code,
                          "checks": [{"name": c.name, "status": c.status, "message": c.message} for c in checks],
                          **({"bench": bench_report(checks, model, args.threads)} if args.bench else {})}))
        return code
    for c in checks[n0:]:
        print(c.line(), flush=True)
    print(text)
    if args.bench:
        print("timing report (send this back):")
        print(json.dumps(bench_report(checks, model, args.threads), indent=1))
    return code


def main(argv=None) -> int:
    """``python -m voicegate.device.doctor`` (the same as ``voicegate doctor``)."""
    p = argparse.ArgumentParser(prog="voicegate doctor", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
