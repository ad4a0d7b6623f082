"""Running a whole process and measuring it (wall time, exit code, peak RSS), and a device-only
install in a fresh venv: shared by ``benchmarks/run.py`` and ``benchmarks/enroll.py``.
Nothing here asserts a figure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


# --- processes ----------------------------------------------------------------------------------
TIME_BIN = "/usr/bin/time"


def run_measured(cmd: list, env: dict | None = None, timeout: float = 600) -> dict:
    """Run ``cmd``; its wall time, exit code, stdout and peak RSS.

    Peak RSS comes from GNU time (``%M``) when present: it forks from a small process, so the
    figure is the command's own (``ru_maxrss`` of a child forked straight from this big process
    would report this process's size). Otherwise the child's VmHWM is polled.
    """
    env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="vg-run-") as tmp:
        rss_file = Path(tmp) / "rss"
        wrapped = [TIME_BIN, "-f", "%M", "-o", str(rss_file), *cmd] if Path(TIME_BIN).is_file() else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        peak_kb = 0
        if wrapped is cmd:
            from soak import _vm_hwm_kb  # the same VmHWM polling as the listen RSS figure

            while proc.poll() is None:
                peak_kb = max(peak_kb, _vm_hwm_kb(proc.pid))
                time.sleep(0.002)
        stdout, stderr = proc.communicate(timeout=timeout)
        wall = time.perf_counter() - t0
        if wrapped is not cmd and rss_file.is_file():
            words = rss_file.read_text().split()
            peak_kb = int(words[-1]) if words and words[-1].isdigit() else 0
    return {"wall_s": wall, "peak_rss_mb": round(peak_kb / 1024.0, 1), "exit_code": proc.returncode,
            "stdout": stdout, "stderr_tail": stderr[-300:]}


def voicegate_command(bindir: Path | None = None) -> list:
    """The installed ``voicegate`` console script beside the interpreter (else ``-m``)."""
    python = Path(sys.executable) if bindir is None else bindir / "python"
    script = python.with_name("voicegate")
    return [str(script)] if script.is_file() else [str(python), "-m", "voicegate.device"]


def cold_runs(cmd: list, runs: int, env: dict | None = None) -> dict:
    """One untimed run (warm file cache), then ``runs`` timed ones: medians of wall and RSS."""
    first = run_measured(cmd, env)
    results = [run_measured(cmd, env) for _ in range(runs)]
    walls = [r["wall_s"] for r in results]
    last = results[-1]
    out = {"wall_s_median": round(float(np.median(walls)), 3), "wall_s_min": round(min(walls), 3),
           "runs": runs, "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
           "exit_codes": sorted({r["exit_code"] for r in [first, *results]}),
           "decision": decision_fields(last["stdout"])}
    if any(r["exit_code"] not in (0, 1, 3) for r in results):
        out["stderr_tail"] = last["stderr_tail"]
    return out


def decision_fields(stdout: str) -> dict | str:
    """The decision a process printed as its last JSON line (a few fields), else its output tail."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        keys = ("decision", "p_allow", "uncertainty", "std", "windows", "latency_ms", "seconds_from_start")
        return {k: d[k] for k in keys if k in d}
    return stdout.strip()[-300:]


# --- device-only install ----------------------------------------------------------------------
def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def source_copy(dest: Path) -> Path:
    """The repo's tracked and untracked-not-ignored files, copied (pip builds in its source tree)."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def device_install(work: Path, wav: Path, model: Path, timeout: float = 1200) -> dict:
    """``python -m venv`` + ``pip install <repo>`` (no extras): size, torch absence, a cold decision."""
    venv, src = work / "device-venv", source_copy(work / "src")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=timeout)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", str(src)],
                         capture_output=True, text=True, timeout=timeout)
    if pip.returncode != 0:
        return {"error": "pip install failed", "stderr_tail": pip.stderr[-600:]}
    install_s = time.perf_counter() - t0
    site = next((venv / "lib").glob("python*/site-packages"))
    packages = {}
    for entry in site.iterdir():
        name = entry.name.split("-")[0].split(".")[0]
        size = tree_bytes(entry) if entry.is_dir() else entry.stat().st_size
        packages[name] = packages.get(name, 0) + size
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None "
         "for m in ('torch', 'librosa', 'sklearn', 'matplotlib', 'onnx', 'onnxruntime')}))"],
        capture_output=True, text=True)
    cold = cold_runs([*voicegate_command(venv / "bin"), "enroll-check", str(wav), "--model", str(model), "--json"], 3)
    top = sorted(packages.items(), key=lambda kv: -kv[1])[:8]
    return {
        "command": "python -m venv VENV && VENV/bin/pip install <repo>   (no [train] extra)",
        "site_packages_mb": round(tree_bytes(site) / 1e6, 1),
        "largest_mb": {k: round(v / 1e6, 1) for k, v in top},
        "importable": json.loads(probe.stdout) if probe.returncode == 0 else probe.stderr[-300:],
        "install_s": round(install_s, 1),
        "cold_enroll_check": cold,
    }
