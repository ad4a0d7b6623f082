"""Long soak of `voicegate listen`: thousands of decisions, RSS over time, and peak RSS on a 60 s file.

    python benchmarks/soak.py --decisions 3000 --out soak.json
    python benchmarks/soak.py --decisions 300 --rss-60s --out soak.json

The soak runs the real listen loop in this process (looping synthetic speech -> endpointer ->
gate -> fsync'd audit log), faster than real time, and records RSS every 100 decisions.

Which gate: ``--model PATH``; else the shipped model if one is in models/; else, with
``--untrained-compact``, a full-size CompactCNN with random weights exported the way
``voicegate export`` does (in a subprocess, so torch never enters this process): memory and
latency are realistic, its decisions are meaningless; else a fast fake gate (loop overhead only).
The JSON says which one ran.

``--rss-60s`` also runs ``voicegate listen --from-file`` on a generated 60 s file in a child
process and reports its peak RSS (the target on a Pi is < 150 MB with a real model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from listen_fakes import FakeGate, speech_stream  # noqa: E402

from voicegate.device import listen  # noqa: E402
from voicegate.device.audit import AuditLog, read_audit_log  # noqa: E402
from voicegate.device.stream import ArraySource  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_untrained_compact(path: Path, samples: int = 50) -> None:
    """Export a default-size CompactCNN with random weights as an MC model (needs torch)."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_gate import make_contract

    from voicegate.export import graphs
    from voicegate.export.writing import write_model
    from voicegate.train.models.classifier import ModelConfig, build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="compact")).eval()
    contract = make_contract("mc", samples)
    contract.architecture = "compact (untrained, benchmark only)"
    write_model(graphs.export_mc(model, samples), contract, Path(path))


def pick_model(args, workdir: Path) -> tuple[str, str | None]:
    """(kind, path): 'path', 'shipped', 'untrained-compact' or 'fake'."""
    if args.fake:
        return "fake", None
    if args.model:
        return "path", args.model
    from voicegate.device.model_files import resolve_model_path

    shipped = resolve_model_path(None, args.method)
    if shipped.is_file():
        return "shipped", str(shipped)
    if args.untrained_compact:
        path = workdir / "untrained-compact-mc.onnx"
        subprocess.run(
            [sys.executable, __file__, "--make-untrained-model", str(path)], check=True, timeout=600
        )
        return "untrained-compact", str(path)
    print(f"no model at {shipped}: using the fake gate (loop overhead only)", file=sys.stderr)
    return "fake", None


def load_gate(kind: str, path: str | None, threads: int):
    if kind == "fake":
        return FakeGate()
    from voicegate.device.runtime import Gate

    gate = Gate.load(path, threads=threads)
    gate.warmup()
    return gate


def soak(gate, decisions: int, workdir: Path, chunk: int) -> dict:
    audio, spans = speech_stream(n_utterances=6, seed=7)
    log_path = workdir / "soak-audit.jsonl"
    series = []
    emitted = 0

    def emit(record):
        nonlocal emitted
        emitted += 1
        if emitted % 100 == 0:
            series.append([emitted, round(rss_mb(), 1)])

    rss_start = rss_mb()
    t0 = time.perf_counter()
    with AuditLog(log_path) as audit:
        lst = listen.Listener(
            gate, lambda: ArraySource(audio, chunk_samples=chunk, loops=0), audit=audit, emit=emit,
            max_utterances=decisions,
        )
        code = lst.run()
    duration = time.perf_counter() - t0
    rss_end = rss_mb()
    logged = sum(1 for r in read_audit_log(log_path) if r.get("type") == "decision")
    audio_s = lst.endpointer.position_s
    return {
        "exit_code": code,
        "decisions": lst.stats.decisions,
        "decisions_in_audit_log": logged,
        "counts": lst.stats.counts,
        "dropped_chunks": lst.stats.dropped_chunks,
        "audio_seconds": round(audio_s, 1),
        "duration_s": round(duration, 2),
        "decisions_per_s": round(lst.stats.decisions / duration, 2),
        "realtime_factor": round(audio_s / duration, 1),
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_peak_mb": round(peak_rss_mb(), 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_series": series,  # [decisions so far, RSS MB]
    }


def rss_60s(kind: str, path: str | None, workdir: Path, threads: int) -> dict:
    """Peak RSS of a child `voicegate listen --from-file` on a generated 60 s file."""
    from synth import write_wav

    audio, spans = speech_stream(n_utterances=20, gap=1.4, seconds=1.5, seed=11)
    audio = audio[: 60 * 16000]
    wav = write_wav(workdir / "talk-60s.wav", np.pad(audio, (0, max(0, 60 * 16000 - audio.size))))
    if kind == "fake":
        cmd = [sys.executable, str(REPO / "tests" / "listen_fakes.py")]
    else:
        cmd = [sys.executable, "-m", "voicegate.device.cli", "listen", "--model", path, "--threads", str(threads)]
        from voicegate.device.encoder import model_kind

        if model_kind(path) == "encoder":  # a door decides against enrolled people: the demo household here
            cmd.append("--demo")
    cmd += ["--from-file", str(wav), "--json", "--log", str(workdir / "rss60-audit.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    out_path, err_path = workdir / "rss60.out", workdir / "rss60.err"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        peak_kb = 0
        # VmHWM of the child's own address space (ru_maxrss from wait4 would include this
        # process's memory at fork time); polled, as it is gone once the child exits
        while proc.poll() is None:
            peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
            time.sleep(0.005)
    wall = time.perf_counter() - t0
    lines = out_path.read_text().splitlines()
    decisions = [json.loads(line) for line in lines if line.startswith("{")]
    return {
        "file_seconds": 60.0,
        "exit_code": proc.returncode,
        "decisions": len(decisions),
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak_kb / 1024.0, 1),
        "stderr_tail": err_path.read_text()[-300:],
    }


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decisions", type=int, default=3000)
    p.add_argument("--model", help="ONNX model to soak with")
    p.add_argument("--method", choices=("mc", "ensemble"), default="mc", help="shipped model to use")
    p.add_argument("--untrained-compact", action="store_true",
                   help="without a shipped model: export a random-weight CompactCNN (needs torch)")
    p.add_argument("--fake", action="store_true", help="use the fake gate even if a model exists")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-samples", type=int, default=1600)
    p.add_argument("--rss-60s", action="store_true", help="also measure listen --from-file on 60 s")
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    p.add_argument("--make-untrained-model", metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make_untrained_model:
        make_untrained_compact(Path(args.make_untrained_model))
        return 0

    with tempfile.TemporaryDirectory(prefix="voicegate-soak-") as tmp:
        workdir = Path(tmp)
        kind, path = pick_model(args, workdir)
        gate = load_gate(kind, path, args.threads)
        result = {
            "benchmark": "listen soak",
            "gate": {"kind": kind, "path": path, "sha256": getattr(gate, "sha256", None),
                     "method": getattr(gate, "method", None), "samples": getattr(gate, "samples", None)},
            "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                        "threads": args.threads},
            "soak": soak(gate, args.decisions, workdir, args.chunk_samples),
        }
        if args.rss_60s:
            result["listen_from_file_60s"] = rss_60s(kind, path, workdir, args.threads)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
