"""The onnxruntime part of ``voicegate doctor``, in a child process so that a crash is reported.

:func:`probe` runs in the child (``python -c PROBE_CODE``): it imports onnxruntime, loads and
runs the model, loads the speech detector and times warm decisions, printing one JSON object per
stage. :func:`run_probe` starts it and reads the stages back; :func:`probe_checks` turns them
into the doctor's lines. A signal (SIGILL from an onnxruntime build this CPU cannot run, SIGSEGV)
is reported with the stage it happened in. Also here: :class:`Check`, one line of the doctor.
"""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
# onnxruntime releases known to break a Raspberry Pi 4 (onnxruntime issues #23957, #24112).
KNOWN_BAD_ORT = {"1.21.0": "dies with 'Illegal instruction' at import on a Raspberry Pi 4 (fixed in 1.22)"}
REALTIME_BUDGET_S = 3.0  # a decision must take less than the 3 s utterance it decides on
PROBE_TIMEOUT_S = 300.0  # the onnxruntime subprocess (a slow board + a cold disk)


@dataclass
class Check:
    """One line of the doctor: a check's name, status, message, and what it measured (data)."""

    name: str
    status: str  # ok | warn | FAIL | skip
    message: str
    data: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"[{self.status:>4}] {self.name:<18} {self.message}"


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def probe(model: str, audio: str, threads: int, repeats: int, emit) -> None:
    """Runs in the child: import onnxruntime, load and run the model, time warm decisions.

    ``emit(dict)`` gets {"stage": S, "begin": True} before each stage and the stage's result
    after it, so a crash names the stage it happened in.
    """
    emit({"stage": "import", "begin": True})
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort

    emit({"stage": "import", "ok": True, "onnxruntime": ort.__version__, "numpy": np.__version__,
          "ms": (time.perf_counter() - t0) * 1e3})
    from .contract import ModelContract
    from .features import IMAGE_SIZE, INFER_HOP_SECONDS, feature_contract, featurize
    from .runtime import make_session
    from .model_files import read_verified_model

    emit({"stage": "load", "begin": True})
    t0 = time.perf_counter()
    data, digest = read_verified_model(model)
    session = make_session(data, threads)
    contract = ModelContract.from_metadata(session.get_modelmeta().custom_metadata_map)
    contract.check_features(feature_contract())
    emit({"stage": "load", "ok": True, "ms": (time.perf_counter() - t0) * 1e3, "kind": contract.kind,
          "method": contract.method, "samples": contract.samples,
          "feature_version": contract.features.get("feature_version"),
          "outputs": [o.name for o in session.get_outputs()], "thresholds": contract.thresholds.to_dict()})
    emit({"stage": "run", "begin": True})
    name = session.get_inputs()[0].name
    t0 = time.perf_counter()
    (out, *_) = session.run(None, {name: np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)})
    emit({"stage": "run", "ok": True, "ms": (time.perf_counter() - t0) * 1e3, "shape": list(out.shape)})
    emit({"stage": "speech", "begin": True})
    t0 = time.perf_counter()
    try:
        speech = importlib.import_module(".speech", __package__)
    except ImportError:  # a build without a speech detector: the energy trimmer decides
        speech = None
    name_vad = speech.default_detector() and speech.VAD_MODEL_NAME if speech else None
    emit({"stage": "speech", "ok": True, "ms": (time.perf_counter() - t0) * 1e3, "detector": name_vad})
    emit({"stage": "decision", "begin": True})
    from .runtime import Gate

    decide = Gate.load(model, threads=threads).decide_file if contract.kind == "classifier" else None
    ms, feat_ms, result = [], [], None
    if decide is not None:
        decide(audio)  # warm-up: the first decision builds caches (the speech detector, ...)
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        if decide is not None:
            result = decide(audio).to_dict()
        else:  # an encoder: featurize + the embedding run (scoring against profiles is tiny)
            images = featurize(Path(audio), hop_seconds=INFER_HOP_SECONDS)
            session.run(None, {name: images[:, None].astype(np.float32)})
        ms.append((time.perf_counter() - t0) * 1e3)
        t1 = time.perf_counter()
        featurize(Path(audio), hop_seconds=INFER_HOP_SECONDS)
        feat_ms.append((time.perf_counter() - t1) * 1e3)
    emit({"stage": "decision", "ok": True, "ms": ms, "featurize_ms": feat_ms, "sha256": digest,
          "what": "featurize + model + policy" if decide else "featurize + encoder (no scoring)",
          "decision": (result or {}).get("decision"), "p_allow": (result or {}).get("p_allow")})


def probe_main(argv: list[str]) -> int:
    """The child's entry point: one JSON object per line on stdout."""
    opts = json.loads(argv[0])

    def emit(d: dict) -> None:
        print(json.dumps(d), flush=True)

    try:
        probe(opts["model"], opts["audio"], opts["threads"], opts["repeats"], emit)
    except Exception as e:
        emit({"error": f"{type(e).__name__}: {first_line(e)}"})
        return 1
    return 0


PROBE_CODE = "import sys; from voicegate.device.doctor_probe import probe_main; sys.exit(probe_main(sys.argv[1:]))"


def run_probe(model: Path, audio: Path, threads: int, repeats: int,
              timeout: float = PROBE_TIMEOUT_S) -> tuple[dict, str | None]:
    """({stage: result}, failure or None) from a child process running :func:`probe`."""
    cmd = [sys.executable, "-c", PROBE_CODE,
           json.dumps({"model": str(model), "audio": str(audio), "threads": threads, "repeats": repeats})]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}, f"the onnxruntime subprocess did not finish within {timeout:g} s"
    stages, current, error = {}, None, None
    for line in proc.stdout.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("begin"):
            current = d["stage"]
        elif "error" in d:
            error = d["error"]
        elif "stage" in d:
            stages[d["stage"]] = d
            current = None
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        return stages, f"crashed with {sig} during {current or 'start-up'} (in a subprocess)"
    if error or proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return stages, f"failed during {current or 'start-up'}: {error or tail or f'exit {proc.returncode}'}"
    return stages, None


def probe_checks(stages: dict, failure: str | None, budget_s: float | None = None) -> list[Check]:
    budget_s = REALTIME_BUDGET_S if budget_s is None else budget_s
    imp, load, run, dec = (stages.get(s) for s in ("import", "load", "run", "decision"))
    out = []
    if imp and run:
        ver = imp["onnxruntime"]
        bad = KNOWN_BAD_ORT.get(ver)
        msg = f"onnxruntime {ver} (numpy {imp['numpy']}) imports and runs the model: output {run['shape']}"
        out.append(Check("onnxruntime", FAIL if bad else OK,
                         f"onnxruntime {ver} {bad}; pip install 'onnxruntime!={ver}'" if bad else msg, imp))
    else:
        ver = f" {imp['onnxruntime']}" if imp else ""
        out.append(Check("onnxruntime", FAIL, f"onnxruntime{ver} {failure or 'did not run'}"))
    if load:
        out.append(Check("model contract", OK,
                         f"{load['kind']} {load['method']} S={load['samples']}, features "
                         f"{load['feature_version']} match this featurizer, outputs {load['outputs']}", load))
    elif imp:
        out.append(Check("model contract", FAIL, failure or "not loaded"))
    else:
        out.append(Check("model contract", SKIP, "not checked: onnxruntime did not import"))
    vad = stages.get("speech")
    if vad:
        out.append(Check("speech detector", OK, f"{vad['detector'] or 'none in this build'} loaded "
                                                f"(sha256 checked) in {vad['ms']:.0f} ms", vad))
    else:
        out.append(Check("speech detector", FAIL if run else SKIP,
                         (failure or "not loaded") if run else "not checked: the model did not run"))
    if dec:
        ms = sorted(dec["ms"])
        med = ms[len(ms) // 2] / 1e3
        text = (f"warm decision {med * 1e3:.0f} ms median of {len(ms)} ({dec['what']}), "
                f"budget {budget_s:g} s")
        out.append(Check("decision time", OK if med < budget_s else FAIL,
                         text if med < budget_s else text + ": too slow for a door", dec))
    else:
        out.append(Check("decision time", SKIP if not load else FAIL,
                         "not measured: the model did not load" if not load else (failure or "not measured")))
    return out
