"""voicegate's speed, memory and size figures, in one command (issue 6).

    python benchmarks/run.py [--smoke] [--out benchmarks/results.json] [--venv | --no-venv]

What it measures, on this machine, with 1 thread everywhere (``--threads``):

* **Warm decision latency** for one 3 s utterance (audio in -> decision out: featurize, model,
  policy), medians and p95 over repeats measured in one process, interleaved, and each
  variant's speed-up over the seed way:
  (a) ``seed_torch``: the seed way, the study's ``SpectrogramCNN`` in torch, the whole network
      run T = 50 times with dropout on (the study's ``mc_dropout_predictions``, see seed_way.py);
  (b) ``seed_onnx_mc``: the same architecture exported as an MC model (trunk once, T masks in
      the graph) and run by the device ``Gate``;
  (c) ``compact_onnx_mc``: the compact MC model (T = 50);
  (d) ``compact_onnx_ensemble``: the compact deep ensemble (K = 5).
* **Cold start**: the wall time of whole processes (from exec to the printed decision) of
  ``voicegate enroll-check`` with the compact MC model, and of ``seed_way.py`` (import torch,
  load the seed weights, featurize, T full passes); medians over ``--cold-runs`` after one
  untimed run (so the OS file cache is warm for both), with each process's peak RSS.
* **Peak RSS** of ``voicegate listen --from-file`` on a 60 s file (benchmarks/soak.py's
  ``rss_60s``), and of the processes above.
* **Sizes** of the models on disk, and of a **device-only install** (a fresh venv with
  ``pip install <repo>``, no ``[train]`` extra): its site-packages, whether torch is in it, and a
  cold enroll-check from it (``--venv``; default on, off with ``--smoke``).
* **FLOPs and a Raspberry Pi 4 estimate**: conv/GEMM FLOPs counted on each ONNX graph, per-op
  kernel time from onnxruntime's profiler, and the estimate described in flops.py.

Models: the shipped ``models/voicegate-compact-{mc,ensemble}.onnx`` when present (or
``--compact-mc`` / ``--compact-ensemble``); otherwise randomly initialised models of the real
sizes are exported to a temporary folder (the JSON says so: their speed and size are real,
their decisions meaningless). The seed model is random unless ``--seed-run RUN`` names a
trained seed run (its 206 MB export is too large to ship). ``--smoke`` uses tiny models, one
repeat and no venv: it checks that the benchmark works, its numbers mean nothing.

Nothing here asserts a timing; the JSON records the targets and whether they were met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from processes import cold_runs, device_install, run_measured, voicegate_command  # noqa: E402,F401
from flops import PI4_ASSUMPTION, PI4_GFLOPS, PI4_OTHER_SLOWDOWN, graph_flops, pi4_estimate, profile_ops  # noqa: E402

from voicegate.device.contract import EXIT_STOPPED  # noqa: E402

UTTERANCE_SECONDS = 3.0
TARGETS = {
    "warm_mc50_speedup_vs_seed_min": 20.0,  # compact MC-50 at least 20x faster than the seed way
    "compact_warm_ms_max": 10.0,  # compact model under 10 ms per utterance here
    "cold_enroll_check_s_max": 0.5,
    "listen_peak_rss_mb_max": 150.0,
}
SMOKE_SEED = {"widths": (4, 8, 8), "embed_dim": 16}
SMOKE_COMPACT = {"widths": (4, 4, 4, 4), "embed_dim": 8}
VARIANTS = ("seed_torch", "seed_onnx_mc", "compact_onnx_mc", "compact_onnx_ensemble")


# --- models -----------------------------------------------------------------------------------
def untrained_contract(method: str, samples: int, arch: str):
    from voicegate.device.contract import ModelContract
    from voicegate.device.features import feature_contract
    from voicegate.device.policy import Thresholds

    return ModelContract(
        features=feature_contract(), method=method, samples=samples,
        thresholds=Thresholds(accept=0.5, uncertainty_limit=0.1, deny=0.3), architecture=arch,
        metrics={"note": "UNTRAINED: random weights, exported by benchmarks/run.py for speed and size only"},
        voicegate_version="benchmark",
    )


def untrained(model):
    """A random-weight model whose last layer is scaled down, so its p(allowed) stays off 0 and 1:
    saturated outputs make every MC sample identical on the runtime's probe, which then (rightly)
    refuses the model, and the listen run would measure nothing (seen in CI, 2026-12-03)."""
    import torch

    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.05)
        if last.bias is not None:
            last.bias.zero_()
    return model


def export_mc(model, samples: int, path: Path, arch: str) -> Path:
    from voicegate.export import graphs
    from voicegate.export.writing import write_model

    write_model(graphs.export_mc(model.eval(), samples), untrained_contract("mc", samples, arch), path)
    return path


def export_ensemble(models: list, path: Path, arch: str) -> Path:
    from voicegate.export import graphs
    from voicegate.export.writing import write_model

    write_model(graphs.export_ensemble([m.eval() for m in models]),
                untrained_contract("ensemble", len(models), arch), path)
    return path


def seed_model(args):
    """(the seed SpectrogramCNN, where it came from): a trained run's member 0, or random weights."""
    import torch

    from seed_way import build_seed

    if args.seed_run:
        from voicegate.train.models.trainer import load_run

        model, ckpt = load_run(args.seed_run)[0]
        if ckpt.get("model_config", {}).get("arch") != "seed":
            raise SystemExit(f"--seed-run {args.seed_run}: not a seed-architecture run")
        return model, f"trained run {args.seed_run}"
    torch.manual_seed(0)
    cfg = SMOKE_SEED if args.smoke else {}
    return build_seed(cfg.get("widths"), cfg.get("embed_dim")), "the study's seed architecture, untrained (random weights): speed and size only"


def setup_models(args, work: Path) -> dict:
    """Every model the benchmark measures: {name: {path, source, untrained, ...}} + the torch seed."""
    import torch

    from voicegate.device.model_files import resolve_model_path
    from voicegate.train.models.classifier import ModelConfig, build_model

    torch.manual_seed(0)
    out: dict = {}
    model, source = seed_model(args)
    weights = work / "seed_state_dict.pt"
    torch.save(model.state_dict(), weights)
    out["seed_torch"] = {"model": model, "weights": weights, "source": source,
                         "untrained": args.seed_run is None, "size_bytes": weights.stat().st_size}
    seed_path = export_mc(model, args.samples, work / "seed-mc.onnx", "seed")
    out["seed_onnx_mc"] = {"path": seed_path, "source": source, "untrained": args.seed_run is None}

    compact_cfg = ModelConfig(arch="compact", **(SMOKE_COMPACT if args.smoke else {}))
    for name, method, given in (("compact_onnx_mc", "mc", args.compact_mc),
                                ("compact_onnx_ensemble", "ensemble", args.compact_ensemble)):
        shipped = resolve_model_path(None, method)
        if given:
            out[name] = {"path": Path(given), "source": f"given: {given}", "untrained": False}
        elif shipped.is_file() and not args.smoke:
            out[name] = {"path": shipped, "source": "shipped", "untrained": False}
        else:
            path = work / f"compact-{method}.onnx"
            if method == "mc":
                export_mc(untrained(build_model(compact_cfg)), args.samples, path, "compact")
            else:
                export_ensemble([untrained(build_model(compact_cfg)) for _ in range(args.members)], path, "compact")
            out[name] = {"path": path, "untrained": True,
                         "source": "the compact architecture, untrained (random weights): speed and size only"}
    for name in VARIANTS[1:]:
        out[name]["size_bytes"] = Path(out[name]["path"]).stat().st_size
    return out


# --- audio ------------------------------------------------------------------------------------
def utterance(seconds: float) -> np.ndarray:
    """``seconds`` of the shipped example's speech (trimmed, tiled if needed): a door attempt."""
    from voicegate.device.audio import SAMPLE_RATE, load_audio, trim_silence

    speech = trim_silence(load_audio(REPO / "models" / "example.wav"))
    n = int(round(seconds * SAMPLE_RATE))
    return np.tile(speech, int(np.ceil(n / speech.size)))[:n].astype(np.float32)


# --- warm latency -------------------------------------------------------------------------------
def gate_decider(gate, audio):
    """One device decision, split into featurize and model(+policy) time (= Gate.decide_audio)."""
    from voicegate.device.features import INFER_HOP_SECONDS, featurize

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        images = featurize(audio, hop_seconds=INFER_HOP_SECONDS)
        t1 = time.perf_counter()
        gate.decide_samples(gate.predict(images), started=t0)
        t2 = time.perf_counter()
        return (t2 - t0) * 1e3, (t1 - t0) * 1e3

    return once


def seed_decider(model, audio, samples: int):
    from seed_way import DEFAULT_THRESHOLDS, seed_decision

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        r = seed_decision(model, audio, samples, DEFAULT_THRESHOLDS)
        return (time.perf_counter() - t0) * 1e3, r["featurize_ms"]

    return once


def summarize_ms(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"median": round(float(np.median(v)), 3), "p95": round(float(np.percentile(v, 95)), 3),
            "min": round(float(v.min()), 3), "n": int(v.size)}


def warm_latency(deciders: dict, repeats: dict, warmup: int = 2) -> dict:
    """Interleaved timing: round i runs every variant that still has repeats left."""
    for once in deciders.values():
        for _ in range(warmup):
            once()
    total = {k: [] for k in deciders}
    feat = {k: [] for k in deciders}
    for i in range(max(repeats.values())):
        for name, once in deciders.items():
            if i < repeats[name]:
                t, f = once()
                total[name].append(t)
                feat[name].append(f)
    out = {}
    for name in deciders:
        out[name] = {"decision_ms": summarize_ms(total[name]),
                     "featurize_ms_median": round(float(np.median(feat[name])), 3),
                     "model_ms_median": round(float(np.median(np.subtract(total[name], feat[name]))), 3)}
    seed = out.get("seed_torch", {}).get("decision_ms", {}).get("median")
    for name, r in out.items():
        r["speedup_vs_seed_median"] = round(seed / r["decision_ms"]["median"], 1) if seed else None
    return out


def cold_start(models: dict, wav: Path, args) -> dict:
    env = {"OMP_NUM_THREADS": str(args.threads)}
    enroll = [*voicegate_command(), "enroll-check", str(wav), "--model", str(models["compact_onnx_mc"]["path"]),
              "--threads", str(args.threads), "--json"]
    seed = [sys.executable, str(HERE / "seed_way.py"), str(wav), "--weights", str(models["seed_torch"]["weights"]),
            "--samples", str(args.samples), "--threads", str(args.threads)]
    if args.smoke:
        seed += ["--widths", *map(str, SMOKE_SEED["widths"]), "--embed-dim", str(SMOKE_SEED["embed_dim"])]
    out = {"enroll_check_compact_mc": cold_runs(enroll, args.cold_runs, env),
           "seed_way_script": cold_runs(seed, args.cold_runs, env)}
    out["enroll_check_compact_mc"]["command"] = "voicegate enroll-check FILE --model COMPACT_MC --json"
    out["seed_way_script"]["command"] = "python benchmarks/seed_way.py FILE --weights SEED.pt --samples T"
    a, b = out["seed_way_script"]["wall_s_median"], out["enroll_check_compact_mc"]["wall_s_median"]
    out["speedup_vs_seed_median"] = round(a / b, 1) if b else None
    return out


def listen_rss(models: dict, work: Path, threads: int) -> dict:
    """Peak RSS of ``voicegate listen --from-file`` on a 60 s file, via benchmarks/soak.py."""
    try:
        from soak import rss_60s
    except ImportError as e:  # soak.py is another benchmark's; report rather than fail
        return {"skipped": f"benchmarks/soak.py unavailable ({e})"}
    return rss_60s("path", str(models["compact_onnx_mc"]["path"]), work, threads)


# --- FLOPs and the Pi 4 estimate ----------------------------------------------------------------
def flops_and_pi(models: dict, warm: dict, images: np.ndarray, args) -> dict:
    from voicegate.train.models.classifier import count_macs

    out = {"assumption": PI4_ASSUMPTION, "pi4_gflops": args.pi_gflops, "other_slowdown": args.pi_slowdown,
           "method": ("estimate = counted conv/GEMM FLOPs / assumed Pi 4 GFLOP/s + (warm decision time "
                      "measured here, 1 thread, minus its conv/GEMM kernel time from onnxruntime's profiler) "
                      "x assumed slowdown of everything else. For the torch seed way the whole model time "
                      "counts as conv/GEMM and the featurizer as the rest."),
           "models": {}}
    n = len(images)
    for name in VARIANTS[1:]:
        f = graph_flops(models[name]["path"], n)
        prof = profile_ops(models[name]["path"], images, runs=args.profile_runs, threads=args.threads)
        measured = warm[name]["decision_ms"]["median"]
        out["models"][name] = {"flops": f, "profile": prof, "pi4": pi4_estimate(
            f["total"], prof["conv_gemm_ms"], measured, args.pi_gflops, args.pi_slowdown)}
    model = models["seed_torch"]["model"]
    flops = 2 * count_macs(model) * n * args.samples
    seed_model_ms = warm["seed_torch"]["model_ms_median"]
    out["models"]["seed_torch"] = {
        "flops": {"total": int(flops), "note": f"2 x MACs per window x {n} windows x T={args.samples} full passes"},
        "pi4": pi4_estimate(flops, seed_model_ms, warm["seed_torch"]["decision_ms"]["median"], args.pi_gflops,
                            args.pi_slowdown),
    }
    return out


# --- report ---------------------------------------------------------------------------------------
def targets(result: dict) -> dict:
    w = result["warm"]
    t = {"targets": TARGETS}
    t["warm_mc50_speedup_vs_seed"] = w["compact_onnx_mc"]["speedup_vs_seed_median"]
    t["warm_mc50_speedup_met"] = bool(t["warm_mc50_speedup_vs_seed"] and
                                      t["warm_mc50_speedup_vs_seed"] >= TARGETS["warm_mc50_speedup_vs_seed_min"])
    t["compact_warm_ms"] = w["compact_onnx_mc"]["decision_ms"]["median"]
    t["compact_warm_met"] = t["compact_warm_ms"] < TARGETS["compact_warm_ms_max"]
    t["compact_model_ms"] = w["compact_onnx_mc"]["model_ms_median"]  # without the featurizer
    t["compact_model_met"] = t["compact_model_ms"] < TARGETS["compact_warm_ms_max"]
    cold = result.get("cold", {}).get("enroll_check_compact_mc", {}).get("wall_s_median")
    t["cold_enroll_check_s"] = cold
    t["cold_enroll_check_met"] = None if cold is None else cold < TARGETS["cold_enroll_check_s_max"]
    run60 = result.get("rss", {}).get("listen_from_file_60s", {})
    rss = run60.get("peak_rss_mb")
    t["listen_peak_rss_mb"] = rss
    ok = run60.get("exit_code") == EXIT_STOPPED  # else the listen run failed and measured nothing
    t["listen_peak_rss_met"] = None if rss is None else (ok and rss < TARGETS["listen_peak_rss_mb_max"])
    inst = result.get("device_install", {})
    t["device_install_has_torch"] = (inst.get("importable") or {}).get("torch") if isinstance(inst.get("importable"), dict) else None
    return t


def table(result: dict) -> str:
    lines = [f"{'variant':<24}{'median ms':>11}{'p95 ms':>10}{'model ms':>10}{'speed-up':>10}{'size MB':>10}"
             f"{'Pi4 est ms':>12}"]
    pi = result.get("pi4", {}).get("models", {})
    for name in VARIANTS:
        w = result["warm"][name]
        size = result["models"][name]["size_bytes"] / 1e6
        est = pi.get(name, {}).get("pi4", {}).get("estimate_ms")
        lines.append(f"{name:<24}{w['decision_ms']['median']:>11.2f}{w['decision_ms']['p95']:>10.2f}"
                     f"{w['model_ms_median']:>10.2f}"
                     f"{(w['speedup_vs_seed_median'] or 0):>9.1f}x{size:>10.2f}{(est or float('nan')):>12.1f}")
    c = result.get("cold")
    if c:
        e, s = c["enroll_check_compact_mc"], c["seed_way_script"]
        lines.append(f"cold enroll-check (compact MC): {e['wall_s_median']:.3f} s, peak RSS {e['peak_rss_mb']:.0f} MB; "
                     f"seed-way script: {s['wall_s_median']:.3f} s, peak RSS {s['peak_rss_mb']:.0f} MB")
    r = result.get("rss", {}).get("listen_from_file_60s", {})
    if "peak_rss_mb" in r:
        lines.append(f"listen --from-file 60 s: peak RSS {r['peak_rss_mb']:.0f} MB, {r.get('decisions')} decisions")
    d = result.get("device_install", {})
    if "site_packages_mb" in d:
        lines.append(f"device-only venv: site-packages {d['site_packages_mb']:.0f} MB, torch importable: "
                     f"{d['importable'].get('torch') if isinstance(d['importable'], dict) else '?'}")
    if result["untrained_models"]:
        lines.append("NOTE: untrained models (random weights) in: " + ", ".join(result["untrained_models"]))
    if result["smoke"]:
        lines.append("SMOKE RUN: tiny models, one repeat; these numbers mean nothing")
    return "\n".join(lines)


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


# --- main -----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models, one repeat, no venv (checks it works)")
    p.add_argument("--out", help="JSON output (default benchmarks/results.json, smoke: results-smoke.json)")
    p.add_argument("--threads", type=int, default=1, help="threads for torch and onnxruntime (default 1)")
    p.add_argument("--samples", type=int, help="T MC samples (default 50; smoke 8)")
    p.add_argument("--members", type=int, help="K ensemble members of an untrained ensemble (default 5; smoke 2)")
    p.add_argument("--repeats", type=int, help="warm decisions per ONNX variant (default 50; smoke 1)")
    p.add_argument("--seed-repeats", type=int, help="warm decisions of the seed way (default 10; smoke 1)")
    p.add_argument("--cold-runs", type=int, help="timed cold processes each (default 5; smoke 1)")
    p.add_argument("--profile-runs", type=int, help="profiled runs per ONNX model (default 20; smoke 1)")
    p.add_argument("--seconds", type=float, default=UTTERANCE_SECONDS, help="utterance length (default 3)")
    p.add_argument("--seed-run", help="a trained seed-architecture run (default: random seed weights)")
    p.add_argument("--compact-mc", help="compact MC model (default: the shipped one, else untrained)")
    p.add_argument("--compact-ensemble", help="compact ensemble model (default: the shipped one, else untrained)")
    p.add_argument("--pi-gflops", type=float, default=PI4_GFLOPS,
                   help="assumed Pi 4 conv/GEMM GFLOP/s on one core (default %(default)s)")
    p.add_argument("--pi-slowdown", type=float, default=PI4_OTHER_SLOWDOWN,
                   help="assumed Pi 4 slowdown of everything but conv/GEMM (default %(default)s)")
    venv = p.add_mutually_exclusive_group()
    venv.add_argument("--venv", dest="venv", action="store_true", default=None,
                      help="measure a device-only venv install (default on; needs PyPI access)")
    venv.add_argument("--no-venv", dest="venv", action="store_false", help="skip the venv install")
    p.add_argument("--no-listen", action="store_true", help="skip the listen --from-file RSS run")
    p.add_argument("--keep", metavar="DIR", help="keep the work folder (exported models) here")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {"samples": (8, 50), "members": (2, 5), "repeats": (1, 50), "seed_repeats": (1, 10),
                "cold_runs": (1, 5), "profile_runs": (1, 20)}
    for k, (small, full) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, small if smoke else full)
    if args.venv is None:
        args.venv = not smoke
    if args.out is None:
        args.out = str(HERE / ("results-smoke.json" if smoke else "results.json"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from voicegate.device.runtime import Gate

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        print(f"exporting / loading models in {work} ...", file=sys.stderr)
        models = setup_models(args, work)
        audio = utterance(args.seconds)
        import soundfile as sf

        wav = work / "utterance.wav"
        sf.write(str(wav), audio, 16000, subtype="PCM_16")
        gates = {name: Gate.load(models[name]["path"], threads=args.threads) for name in VARIANTS[1:]}
        deciders = {"seed_torch": seed_decider(models["seed_torch"]["model"], audio, args.samples)}
        deciders.update({name: gate_decider(g, audio) for name, g in gates.items()})
        repeats = {name: args.repeats for name in deciders}
        repeats["seed_torch"] = args.seed_repeats
        print("warm latency ...", file=sys.stderr)
        warm = warm_latency(deciders, repeats, warmup=1 if args.smoke else 2)
        from voicegate.device.features import INFER_HOP_SECONDS, featurize

        images = featurize(audio, hop_seconds=INFER_HOP_SECONDS)
        result = {
            "benchmark": "voicegate: warm and cold decision latency, memory and sizes",
            "command": "python benchmarks/run.py" + (" --smoke" if args.smoke else ""),
            "smoke": args.smoke,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine(),
            "settings": {"threads": args.threads, "samples_T": args.samples, "utterance_seconds": args.seconds,
                         "windows_per_utterance": int(len(images)), "repeats": repeats,
                         "cold_runs": args.cold_runs, "audio": "models/example.wav speech, trimmed and tiled"},
            "models": {name: {k: (str(v) if isinstance(v, Path) else v) for k, v in m.items() if k != "model"}
                       for name, m in models.items()},
            "untrained_models": [n for n, m in models.items() if m["untrained"]],
            "warm": warm,
        }
        for name, g in gates.items():
            result["models"][name].update(method=g.method, samples=g.samples, architecture=g.contract.architecture,
                                          sha256=g.sha256)
        del gates, deciders
        print("FLOPs and per-op profile ...", file=sys.stderr)
        result["pi4"] = flops_and_pi(models, warm, images, args)
        print("cold start ...", file=sys.stderr)
        result["cold"] = cold_start(models, wav, args)
        result["rss"] = {"enroll_check_peak_mb": result["cold"]["enroll_check_compact_mc"]["peak_rss_mb"],
                         "seed_way_script_peak_mb": result["cold"]["seed_way_script"]["peak_rss_mb"]}
        if not args.no_listen:
            print("listen --from-file 60 s ...", file=sys.stderr)
            result["rss"]["listen_from_file_60s"] = listen_rss(models, work, args.threads)
        if args.venv:
            print("device-only venv install (slow) ...", file=sys.stderr)
            result["device_install"] = device_install(work, wav, Path(models["compact_onnx_mc"]["path"]))
        else:
            result["device_install"] = {"skipped": "run without --no-venv/--smoke to measure it"}
        result["summary"] = targets(result)
        result["seconds"] = round(time.perf_counter() - t_start, 1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
