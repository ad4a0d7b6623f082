"""The Raspberry Pi 4 timing line, kept honest: what is estimated, what was measured, how to measure.

    python benchmarks/pi.py                     # the FLOP-based estimate + what to run on a Pi
    python benchmarks/pi.py REPORT.json ...     # + the figures measured in `voicegate doctor --bench` reports

The estimate comes from ``benchmarks/results.json`` (``python benchmarks/run.py``; the FLOP model
and its assumptions are in ``benchmarks/flops.py``): counted FLOPs at an assumed Pi 4 throughput,
never run on a Pi. A measured figure exists only where someone ran ``voicegate doctor --bench``
on the board and sent its timing report (JSON) back. The aarch64 smoke test
(``tests/test_aarch64.py``) runs in qemu user-mode emulation: it checks decisions, and its
latency (tens of seconds, an emulator's) says nothing about a Pi.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
HOW = ("on the Pi (installed as in the README's Pi section) run "
       "`voicegate doctor --bench --no-mic --json > report.json` and send report.json back; "
       "`python benchmarks/pi.py report.json` turns it into a MEASURED line")


def estimate_lines(results: Path = RESULTS) -> list[str]:
    try:
        models = json.loads(results.read_text())["pi4"]["models"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"  ESTIMATE: none ({results.name} has no pi4 section: {type(e).__name__}; "
                "run python benchmarks/run.py)"]
    parts = [f"{name} {m['pi4']['estimate_ms']:.0f} ms" for name, m in models.items()
             if isinstance(m, dict) and isinstance(m.get("pi4"), dict) and "estimate_ms" in m["pi4"]]
    return [f"  ESTIMATE (FLOP-based, not measured on a Pi): {', '.join(parts) or 'none'}",
            f"    from {results.name} (python benchmarks/run.py); assumptions: benchmarks/flops.py PI4_ASSUMPTION"]


def measured_line(report: dict, source: str) -> str:
    """One line from a ``voicegate doctor --bench`` report (or its ``--json`` output)."""
    r = report.get("bench", report)
    if r.get("voicegate_doctor_bench") != 1:
        raise ValueError(f"{source}: not a voicegate doctor --bench report")
    warm = r.get("warm_decision_ms") or {}
    board = r.get("board") or "an unnamed board"
    where = "MEASURED on a Pi" if "raspberry pi" in board.lower() else "MEASURED on another machine"
    return (f"  {where}: {board} ({r.get('machine')}, Python {r.get('python')}, onnxruntime "
            f"{r.get('onnxruntime')}, {r.get('threads')} thread(s)): warm decision median "
            f"{warm.get('median', float('nan')):.0f} ms (min {warm.get('min', float('nan')):.0f}, max "
            f"{warm.get('max', float('nan')):.0f}, n {warm.get('n')}; {r.get('what')}), model {r.get('model')} "
            f"{str(r.get('sha256'))[:12]}, budget {r.get('budget_s')} s  [{source}]")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="*", metavar="REPORT.json", help="voicegate doctor --bench reports")
    p.add_argument("--results", type=Path, default=RESULTS, help="benchmarks/run.py output (default %(default)s)")
    a = p.parse_args(argv)
    print("Raspberry Pi 4, warm decision (one utterance, 1 thread):")
    for line in estimate_lines(a.results):
        print(line)
    measured = []
    for path in a.reports:
        try:
            measured.append(measured_line(json.loads(Path(path).read_text()), Path(path).name))
        except (OSError, ValueError, TypeError) as e:
            print(f"pi.py: {path}: {e}", file=sys.stderr)
            return 2
    for line in measured or ["  MEASURED on a Pi: none reported yet"]:
        print(line)
    print(f"  to measure: {HOW}")
    print("  not a timing figure: the qemu emulation of tests/test_aarch64.py (decisions only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
