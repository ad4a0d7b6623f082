"""Enrolment and decision-by-name speed and memory (issue 12), as JSON.

    python benchmarks/enroll.py [--model ENCODER.onnx] [--out benchmarks/enroll.json] [--smoke]

On this machine, with the CLI's default onnxruntime threads (``--threads``; 2 on a 2-core
machine, ``device.options.default_threads``), and the decisions again with 1 thread:

* ``enrol_30s``: the time to enrol 30 s of speech already in memory (speech detector, quality
  checks, spectrograms, encoder, profile write), best and median of ``--repeats``; target < 1 s.
* ``decision``: warm decision time for one 3 s utterance against 1, 10 and 100 profiles: the
  whole decision from raw audio (speech detector + spectrogram + encoder + scoring + policy;
  what ``enroll-check`` does), the decision ``listen`` makes at the end of an utterance (the
  same, starting from the detector's frame probabilities, which its endpointer computed while
  the person spoke) and the scoring part alone (embeddings -> scores for every profile ->
  decision); target < 10 ms for 10 profiles, which the JSON compares with all three.
* ``cold_enroll_check``: the README's main job as a whole process, ``voicegate enroll-check
  models/example.wav --demo`` (the shipped default encoder against the shipped demo household):
  wall time from exec to exit, median and best of ``--cold-runs`` after one untimed run, and
  peak RSS; the brief's target is under 0.5 s.
* ``listen_rss_10_profiles``: peak RSS of a ``voicegate listen --from-file`` process deciding
  against 10 profiles (its VmHWM, polled); target < 150 MB.

The encoder: ``--model``, else the shipped ``models/voicegate-encoder-mc.onnx``, else the tiny
test encoder (``tests/tiny_encoder.py``, needs onnx): the JSON names it, and with the tiny one
the timings are of a much smaller network than the real one. The speech: the shared LibriSpeech
corpus's speaker 1998 (test-other) when ``../shared/data`` is there, else generated audio.
Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from voicegate.device.contract import EXIT_STOPPED
from voicegate.train.data.fingerprint import shared_data_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

SHARED = shared_data_dir()
TARGETS = {"enrol_30s_s": 1.0, "decision_10_profiles_ms": 10.0, "listen_rss_mb": 150.0,
           "cold_enroll_check_s": 0.5}


def encoder_path(arg: str | None, tmp: Path) -> tuple[Path, str]:
    from voicegate.device.encoder import resolve_encoder_path

    if arg:
        return Path(arg), "named"
    shipped = resolve_encoder_path()
    if shipped.is_file():
        return shipped, "shipped"
    from tiny_encoder import write_encoder_model

    return write_encoder_model(tmp / "tiny-encoder.onnx"), "tiny test encoder (NOT the real network)"


def speech_audio(seconds: float) -> tuple[np.ndarray, str]:
    """About ``seconds`` of speech (detector-measured) at 16 kHz, and where it came from."""
    from voicegate.device.speech import select_speech

    files = sorted((SHARED / "librispeech" / "test-other" / "1998").glob("*.flac"))
    if files:
        parts, got = [], 0.0
        for f in files:
            x, sr = sf.read(f, dtype="float32")
            assert sr == 16000
            parts.append(x)
            got += select_speech(x).speech_seconds
            if got >= seconds:
                break
        return np.concatenate(parts), f"librispeech 1998 test-other, {len(parts)} files"
    from synth import synth_voice

    return synth_voice("f1", seconds * 1.3, seed=0), "generated (tests/synth.py f1)"


def timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "median_s": statistics.median(times), "repeats": repeats}


def bench_enrol(encoder, audio: np.ndarray, tmp: Path, repeats: int) -> dict:
    from voicegate.device.enroll import enrol
    from voicegate.device.enroll_checks import analyse
    from voicegate.device.profiles import ProfileStore

    store = ProfileStore(tmp / "enrol-bench")
    info = {}

    def once():
        rec = analyse("bench", audio)
        _, sess, _ = enrol(encoder, store, "bench", [rec], replace=True, force=True)
        info.update(speech_seconds=sess.speech_seconds, windows=int(sess.embeddings.shape[0]))

    once()  # warm: the speech detector and the encoder are loaded
    return {**timed(once, repeats), **info}


def make_store(encoder, root: Path, n: int, base: np.ndarray) -> "object":
    """n profiles: the real voice's embeddings plus per-profile noise (distinct centroids)."""
    from voicegate.device.profiles import ProfileStore, Session

    store = ProfileStore(root)
    rng = np.random.default_rng(n)
    for i in range(n):
        e = base + 0.5 * rng.standard_normal(base.shape).astype(np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        store.add_session(f"person{i:03d}", encoder.sha256, encoder.dim, Session(e, 30.0, ["bench"]))
    return store


def bench_decisions(encoder, audio: np.ndarray, tmp: Path, repeats: int) -> dict:
    from voicegate.device.features import INFER_HOP_SECONDS, featurize, frame_windows, spectrogram
    from voicegate.device.scoring import ProfileGate, decide_by_name, window_embeddings
    from voicegate.device.speech import default_detector

    utt = audio[: 3 * 16000]
    base = window_embeddings(encoder.embed_speech(audio[: 20 * 16000]))
    emb = encoder.embed(featurize(utt, hop_seconds=INFER_HOP_SECONDS))
    out = {}
    for n in (1, 10, 100):
        gate = ProfileGate(encoder, make_store(encoder, tmp / f"p{n}", n, base))
        gate.decide_audio(utt)  # warm
        whole = timed(lambda: gate.decide_audio(utt), repeats)
        # listen: the endpointer has already run the detector on every frame while the person
        # spoke, so the decision after the end of speech starts from its probabilities
        probs = gate.detector.probabilities(utt) if gate.detector else default_detector().probabilities(utt)
        after = timed(lambda: gate.decide_audio(utt, speech_probs=probs), repeats)

        def scoring():
            s = encoder.score(emb, gate._names, gate._centroids)
            decide_by_name(s, encoder.thresholds, encoder.measure)

        part = timed(scoring, repeats * 5)
        # where the whole decision's time goes (each stage alone, on the same 3 s attempt)
        detector = gate.detector or default_detector()
        vad = timed(lambda: detector.probabilities(utt), repeats)
        speech = detector.select(utt, probs).audio
        render = timed(lambda: spectrogram(frame_windows(speech, INFER_HOP_SECONDS)), repeats)
        images = spectrogram(frame_windows(speech, INFER_HOP_SECONDS))
        embed = timed(lambda: encoder.embed(images), repeats)
        reload = timed(gate.store.signature, repeats)  # the per-decision check for a changed store
        out[str(n)] = {"whole_decision_ms": round(whole["median_s"] * 1e3, 2),
                       "whole_decision_best_ms": round(whole["best_s"] * 1e3, 2),
                       "listen_decision_after_endpoint_ms": round(after["median_s"] * 1e3, 2),
                       "scoring_ms": round(part["median_s"] * 1e3, 3),
                       "parts_ms": {"speech_detector": round(vad["median_s"] * 1e3, 2),
                                    "spectrograms": round(render["median_s"] * 1e3, 2),
                                    "embeddings": round(embed["median_s"] * 1e3, 2),
                                    "windows": int(images.shape[0])},
                       "store_change_check_ms": round(reload["median_s"] * 1e3, 3)}
    return out


def bench_listen_rss(model: Path, audio: np.ndarray, tmp: Path, encoder, threads: int) -> dict:
    """Peak RSS of `voicegate listen --from-file` against 10 profiles (the first child we wait for)."""
    from voicegate.device.scoring import window_embeddings

    store = make_store(encoder, tmp / "rss10", 10, window_embeddings(encoder.embed_speech(audio[: 20 * 16000])))
    wav = tmp / "door.wav"
    sf.write(wav, audio[: 30 * 16000], 16000)
    cmd = [sys.executable, "-m", "voicegate.device.cli", "listen", "--from-file", str(wav),
           "--profiles", str(store.root), "--model", str(model), "--json", "--lockout-after", "0",
           "--threads", str(threads)]
    # VmHWM of the child's own image, polled from /proc (ru_maxrss of a forked child would count
    # this benchmark's memory from before the exec)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_kb = 0
    while proc.poll() is None:
        peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
        time.sleep(0.02)
    out, err = proc.communicate()
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "exit_code": proc.returncode, "decisions": len(lines),
            "how": "VmHWM of the listen process polled every 20 ms", "profiles": 10,
            "utterance_max_s": 10, "stderr_tail": err[-300:]}


def bench_cold(model: Path | None, threads: int, runs: int) -> dict:
    """``voicegate enroll-check models/example.wav --demo`` as a whole process (see the docstring)."""
    from processes import cold_runs, voicegate_command  # the same process timing as benchmarks/run.py

    if model is not None:  # the demo household is the default encoder's; another one has none
        return {"skipped": "--model names another encoder than the shipped default"}
    cmd = [*voicegate_command(), "enroll-check", str(REPO / "models" / "example.wav"), "--demo",
           "--json", "--threads", str(threads)]
    out = cold_runs(cmd, runs)
    out["command"] = "voicegate enroll-check models/example.wav --demo --json"
    out["interpreter"] = cmd[0]
    return out


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="encoder (default: the shipped one, else the tiny test encoder)")
    ap.add_argument("--out", help="write the JSON here (default: stdout only)")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--threads", type=int, help="onnxruntime threads (default: the CLI's default)")
    ap.add_argument("--cold-runs", type=int, default=15, help="timed cold enroll-check processes")
    ap.add_argument("--smoke", action="store_true", help="one repeat, 12 s of speech: checks it runs")
    args = ap.parse_args(argv)
    from voicegate.device.encoder import Encoder
    from voicegate.device.options import default_threads
    from voicegate.device.runtime import tune_allocator

    allocator_tuned = tune_allocator()  # as the CLI does at start (enroll, enroll-check, listen)
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory(prefix="vg-enrol-bench-") as d:
        tmp = Path(d)
        model, which = encoder_path(args.model, tmp)
        threads = args.threads or default_threads()
        encoder = Encoder.load(model, threads=threads)
        audio, source = speech_audio(12.0 if args.smoke else 30.0)
        result = {
            "benchmark": "enrol", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
            "encoder": {"path": str(model), "which": which, "sha256": encoder.sha256,
                        "method": encoder.method, "samples": encoder.samples, "dim": encoder.dim},
            "speech": source, "smoke": args.smoke, "threads": threads, "targets": TARGETS,
            "allocator_tuned": allocator_tuned,
            "enrol_30s": bench_enrol(encoder, audio, tmp, repeats),
            "decision": bench_decisions(encoder, audio, tmp, repeats),
            "decision_1_thread": (bench_decisions(Encoder.load(model, threads=1), audio, tmp / "1-thread", repeats)
                                  if threads != 1 else "same as decision"),
            "listen_rss_10_profiles": bench_listen_rss(model, audio, tmp, encoder, threads),
            "cold_enroll_check": bench_cold(Path(args.model) if args.model else None, threads,
                                            1 if args.smoke else args.cold_runs),
        }
    d10, rss10 = result["decision"]["10"], result["listen_rss_10_profiles"]
    result["met"] = {
        "enrol_30s": result["enrol_30s"]["median_s"] < TARGETS["enrol_30s_s"],
        "decision_10_profiles_whole": d10["whole_decision_ms"] < TARGETS["decision_10_profiles_ms"],
        "decision_10_profiles_listen_after_endpoint": (
            d10["listen_decision_after_endpoint_ms"] < TARGETS["decision_10_profiles_ms"]),
        "decision_10_profiles_scoring": d10["scoring_ms"] < TARGETS["decision_10_profiles_ms"],
        # a listen that failed (anything but 8, the end of the file, or no decision) measured nothing
        "listen_rss": (rss10["exit_code"] == EXIT_STOPPED and rss10["decisions"] > 0
                       and rss10["peak_rss_mb"] < TARGETS["listen_rss_mb"]),
        "cold_enroll_check": (result["cold_enroll_check"]["wall_s_median"] < TARGETS["cold_enroll_check_s"]
                              if "wall_s_median" in result["cold_enroll_check"] else None),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
