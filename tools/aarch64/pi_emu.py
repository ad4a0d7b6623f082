"""A Raspberry Pi 4 in user-mode emulation, to run voicegate's device runtime on aarch64 binaries.

How it is built (everything cached under ``tools/aarch64/.cache``, git-ignored, or
``$VOICEGATE_AARCH64_CACHE``; a second run downloads nothing):

1. ``qemu-aarch64-static -cpu cortex-a72`` (Debian package qemu-user-static): one Pi 4 core.
2. A sysroot: Debian bookworm's arm64 ``python3.11`` and the libraries it and the wheels need
   (``apt-get download PKG:arm64``, then ``dpkg -x``; needs ``dpkg --add-architecture arm64``
   and ``apt-get update`` once, as .ci/run does). Bookworm = Raspberry Pi OS 12: Python 3.11,
   glibc 2.36.
3. The base install as aarch64 wheels: ``pip download --only-binary=:all: --platform
   manylinux_2_28_aarch64 ... --python-version 3.11`` then ``pip install --no-deps --target``:
   numpy, onnxruntime, soundfile (with its own libsndfile), sounddevice, cffi. No torch.
4. ``voicegate`` with only its ``device`` and ``models`` packages on ``PYTHONPATH``.

onnxruntime >= 1.28 segfaults at import under qemu-user: the emulator passes the host's
``/proc/cpuinfo`` (an x86 one) through to the ARM binary, and onnxruntime's CPU detection
crashes on it (1.27 only warns "Unknown CPU vendor"). A fake Pi 4 ``/proc/cpuinfo`` inside the
sysroot fixes it: qemu's ``-L`` prefix takes a path from the sysroot first when it exists
there (a fake ``/sys/devices/system/cpu`` alone does not help). See ``--no-fake-cpuinfo``.

    python tools/aarch64/pi_emu.py                      # example.wav, MC + ensemble, x86 vs emulated
    python tools/aarch64/pi_emu.py --ort 1.28.0 --no-fake-cpuinfo   # shows the crash
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_ENV = "VOICEGATE_AARCH64_CACHE"
ORT_ENV = "VOICEGATE_AARCH64_ORT"
QEMU = "qemu-aarch64-static"
CPU = "cortex-a72"  # the Raspberry Pi 4's core
PYTHON_VERSION = "3.11"  # Debian bookworm / Raspberry Pi OS 12
# The onnxruntime the smoke test runs. Verified under this emulation (fake /proc/cpuinfo): 1.22.0,
# 1.27.0, 1.28.0, 1.32.0; without the fake cpuinfo only <= 1.27 imports. Keep it in that range.
ORT_VERSION = "1.32.0"
DEBIAN_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1",
    "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libuuid1",
    "libcrypt1", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8",
)
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
BASE = ("numpy", "soundfile", "sounddevice")  # + onnxruntime; pinned to the host's versions
PI4_CPUINFO_CORE = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
                    "CPU revision\t: 3\n")
PI4_CPUINFO_TAIL = "\nHardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"

# Score tolerance, emulated vs x86. A deterministic model (the ensemble) may differ only by float
# rounding (different kernels, NEON vs AVX): SCORE_ATOL on p_allow and on the uncertainty, and the
# decisions must be equal. An MC model draws new dropout masks on every run, so on top of that its
# p_allow may differ by MC_SIGMAS standard errors of the difference of two S-sample means
# (std / sqrt(S) each), and its uncertainty (the std of S samples, often heavy-tailed: one mask in
# 50 can lift p by 1e-3 when the rest give 1e-6) by the larger of the two stds. An MC decision is
# compared only when the x86 scores are farther than that tolerance from every threshold; closer
# ("borderline") either decision is a correct draw, and only the scores are compared.
SCORE_ATOL = 1e-4
MC_SIGMAS = 5.0


class EmulationError(RuntimeError):
    """The emulation could not be built (no qemu, no arm64 packages, no network)."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO / "tools" / "aarch64" / ".cache")


def _run(cmd: list, cwd: Path | None = None, what: str = "") -> None:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
        raise EmulationError(f"{what or cmd[0]} failed (exit {p.returncode}): {tail}")


def qemu_path() -> str | None:
    return shutil.which(QEMU)


def sysroot(cache: Path, fake_cpuinfo: bool = True) -> Path:
    """Debian's arm64 python3.11 unpacked; with a fake Pi 4 /proc/cpuinfo when ``fake_cpuinfo``."""
    debs = cache / "debs"
    base = cache / "sysroot"
    if not (base / ".done").exists():
        debs.mkdir(parents=True, exist_ok=True)
        if not all(any(debs.glob(f"{p}_*_arm64.deb")) for p in DEBIAN_PACKAGES):
            _run(["apt-get", "download", "-q", *(f"{p}:arm64" for p in DEBIAN_PACKAGES)], cwd=debs,
                 what="apt-get download (needs: dpkg --add-architecture arm64 && apt-get update)")
        shutil.rmtree(base, ignore_errors=True)
        for deb in sorted(debs.glob("*_arm64.deb")):
            _run(["dpkg", "-x", deb, base], what=f"dpkg -x {deb.name}")
        (base / ".done").write_text("\n".join(sorted(d.name for d in debs.glob("*.deb"))) + "\n")
    if not fake_cpuinfo:
        return base
    fake = cache / "sysroot-pi4cpuinfo"
    if not (fake / ".done").exists():
        shutil.rmtree(fake, ignore_errors=True)
        _run(["cp", "-al", base, fake], what="cp -al sysroot")  # hard links: no second copy
        (fake / "proc").mkdir(exist_ok=True)
        cores = "\n".join(PI4_CPUINFO_CORE.format(i=i) for i in range(4))
        (fake / "proc" / "cpuinfo").write_text(cores + PI4_CPUINFO_TAIL)
        (fake / ".done").touch()
    return fake


def host_versions(ort_version: str) -> dict[str, str]:
    """The base install's packages, pinned to the versions this (x86) machine runs."""
    out = {}
    for name in BASE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    out["onnxruntime"] = ort_version
    return out


def site_packages(cache: Path, ort_version: str) -> Path:
    """The aarch64 wheels of the base install, unpacked into one folder for PYTHONPATH."""
    pins = host_versions(ort_version)
    key = "-".join(f"{k}{v}" for k, v in sorted(pins.items()))
    site = cache / f"site-{key}"
    if (site / ".done").exists():
        return site
    wheels = cache / "wheels"
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    reqs = [f"{k}=={v}" if v else k for k, v in pins.items()]
    common = ["--only-binary=:all:", *plat, "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "download", *common, "-d", wheels, *reqs], what="pip download (aarch64 wheels)")
    shutil.rmtree(site, ignore_errors=True)
    # --no-index --find-links: install exactly what was downloaded (and its dependencies, cffi ...)
    _run([*pip, "install", "--no-index", "--find-links", wheels, *common, "--target", site, *reqs],
         what="pip install --target (aarch64)")
    (site / ".done").write_text(json.dumps(pins) + "\n")
    return site


def stage(cache: Path) -> Path:
    """A folder holding ``voicegate`` with only the device runtime and the shipped models."""
    root = cache / "stage"
    pkg = root / "voicegate"
    pkg.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "voicegate" / "__init__.py", pkg / "__init__.py")
    for name, target in (("device", REPO / "device"), ("models", REPO / "models")):
        link = pkg / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return root


class Pi:
    """The emulated Pi: ``Pi.build()`` once, then ``pi.voicegate(args)`` runs the CLI on it."""

    def __init__(self, cache: Path, root: Path, site: Path, ort_version: str):
        self.cache, self.root, self.site, self.ort_version = cache, root, site, ort_version

    @classmethod
    def build(cls, ort_version: str | None = None, fake_cpuinfo: bool = True, cache: Path | None = None) -> "Pi":
        if qemu_path() is None:
            raise EmulationError(f"{QEMU} not found (apt-get install qemu-user-static)")
        cache = cache or cache_dir()
        ort_version = ort_version or os.environ.get(ORT_ENV) or ORT_VERSION
        return cls(cache, sysroot(cache, fake_cpuinfo), site_packages(cache, ort_version), ort_version)

    def python(self, args: list, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.cache),
               "PYTHONPATH": f"{stage(self.cache)}:{self.site}", "PYTHONNOUSERSITE": "1",
               "PYTHONPYCACHEPREFIX": str(self.cache / "pycache"), "PYTHONSAFEPATH": "1"}  # not the cwd
        cmd = [qemu_path(), "-cpu", CPU, "-L", self.root, self.root / "usr/bin/python3.11", *args]
        return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)

    def voicegate(self, args: list, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.python(["-m", "voicegate.device.cli", *map(str, args)], timeout=timeout)


def x86_voicegate(args: list, timeout: float = 600) -> subprocess.CompletedProcess:
    """The same command on this machine's Python and its (normal-range) onnxruntime."""
    return subprocess.run([sys.executable, "-m", "voicegate.device.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def decision_json(proc: subprocess.CompletedProcess, where: str) -> dict:
    """The one JSON object ``enroll-check --json`` prints (EmulationError if it printed none)."""
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
    raise EmulationError(f"{where}: no JSON decision (exit {proc.returncode}): {tail}")


def tolerance(x86: dict, emu: dict, key: str) -> float:
    """How far ``key`` may differ between the two runs (see SCORE_ATOL, MC_SIGMAS)."""
    if x86.get("method") != "mc":
        return SCORE_ATOL
    s = max(1, int(x86.get("samples") or 1))
    sx, se = float(x86.get("std") or 0.0), float(emu.get("std") or 0.0)
    if key == "p_allow":  # standard error of the difference of two means of S samples
        return SCORE_ATOL + MC_SIGMAS * math.sqrt((sx * sx + se * se) / s)
    return SCORE_ATOL + max(sx, se)


def borderline(x86: dict, emu: dict) -> bool:
    """Could an MC run's decision go either way, given the score tolerance? (Never for an ensemble.)"""
    if x86.get("method") != "mc" or x86.get("p_allow") is None:
        return False
    t = x86.get("thresholds") or {}
    tp, tu = tolerance(x86, emu, "p_allow"), tolerance(x86, emu, "uncertainty")
    scores = [v for k, v in (x86.get("scores") or {}).items() if k != x86.get("speaker")]  # runners-up
    near_p = [abs(float(x86["p_allow"]) - float(t[k])) <= tp for k in ("accept", "deny") if k in t]
    near_p += [abs(float(v) - float(t["accept"])) <= tp for v in scores if "accept" in t]
    near_u = "uncertainty_limit" in t and abs(float(x86["uncertainty"]) - float(t["uncertainty_limit"])) <= tu
    return any(near_p) or bool(near_u)


def compare(x86: dict, emu: dict) -> list[str]:
    """Every way the emulated decision differs from the x86 one ([] when they agree)."""
    bad = []
    keys = ("decision", "exit_code", "speaker") if not borderline(x86, emu) else ()
    for key in (*keys, "error", "method", "samples", "windows", "model_sha256"):
        if x86.get(key) != emu.get(key):
            bad.append(f"{key}: x86 {x86.get(key)!r}, aarch64 {emu.get(key)!r}")
    xs, es = x86.get("scores") or {}, emu.get("scores") or {}
    if set(xs) != set(es):
        bad.append(f"scores: x86 names {sorted(xs)}, aarch64 {sorted(es)}")
    for name in sorted(set(xs) & set(es)):  # every enrolled person's p, by name
        if not abs(float(xs[name]) - float(es[name])) <= tolerance(x86, emu, "p_allow"):
            bad.append(f"scores[{name}]: x86 {xs[name]}, aarch64 {es[name]}")
    for key in ("p_allow", "uncertainty"):
        a, b = x86.get(key), emu.get(key)
        if a is None and b is None:
            continue
        if a is None or b is None or not abs(float(a) - float(b)) <= tolerance(x86, emu, key):
            bad.append(f"{key}: x86 {a}, aarch64 {b} (tolerance {tolerance(x86, emu, key):.2g})")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="run enroll-check on an emulated Pi 4 and on x86; compare")
    p.add_argument("clips", nargs="*", default=[str(REPO / "models" / "example.wav")])
    p.add_argument("--ort", default=None, help=f"onnxruntime version in the emulation (default {ORT_VERSION})")
    p.add_argument("--no-fake-cpuinfo", action="store_true", help="let the ARM binary see the host's /proc/cpuinfo")
    p.add_argument("--method", action="append", choices=("mc", "ensemble"), help="default: both")
    a = p.parse_args(argv)
    pi = Pi.build(a.ort, fake_cpuinfo=not a.no_fake_cpuinfo)
    imp = pi.python(["-c", "import onnxruntime, numpy, platform; print(platform.machine(), "
                           "onnxruntime.__version__, numpy.__version__)"])
    print(f"import: exit {imp.returncode}: {imp.stdout.strip()} {imp.stderr.strip()[-200:]}")
    if imp.returncode != 0:
        return 1
    worst = 0
    for clip in a.clips:
        for method in a.method or ("mc", "ensemble"):
            args = ["enroll-check", clip, "--model", REPO / "models" / f"voicegate-compact-{method}.onnx", "--json"]
            x, e = decision_json(x86_voicegate(args), "x86"), decision_json(pi.voicegate(args), "aarch64")
            bad = compare(x, e)
            worst = max(worst, len(bad))
            bad += ["borderline: decision not compared"] if borderline(x, e) else []
            print(f"{Path(clip).name} {method}: x86 {x.get('decision')} p={x.get('p_allow')} | aarch64 "
                  f"{e.get('decision')} p={e.get('p_allow')} latency {e.get('latency_ms', 0):.0f} ms | "
                  + ("; ".join(bad) or "agree"))
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
