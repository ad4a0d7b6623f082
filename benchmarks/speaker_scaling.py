"""What is a training voice worth? The speaker-count ablation, as JSON and a Markdown table.

    python benchmarks/speaker_scaling.py runs/spk-25 runs/spk-50 runs/spk-100 \
        --eval speechocean762=out/spk/{run}/so762 --eval librispeech=out/spk/{run}/libri \
        --out benchmarks/speaker-scaling

Each run is a `voicegate train-encoder` run on the same cache with another `--speaker-fraction`
and the same number of optimiser steps (so the smaller runs see each voice more often, not less
data in all). For each run: the training speakers and windows, the validation figures of its last
epoch (the 33 validation speakers, eval mode, every pair) and, where ``--eval`` names a
`voicegate eval` output folder (``{run}`` is replaced by the run folder's name), the test EER and
FRR at FAR 1 % on that corpus's enrolment protocol (speakers never heard in training).

Then a power law EER = c * n^-k is fitted (least squares on log-log) to each series, and the
number of training speakers at which it would reach 2 % is given. That is an extrapolation from
three points, for scale only: it assumes the curve goes on as it went.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

TARGET_EER = 0.02


def run_row(run: Path, evals: dict) -> dict:
    train = json.loads((run / "train.json").read_text())
    last = train["history"][-1]
    cfg = train["train_config"]
    row = {
        "run": run.name,
        "speaker_fraction": cfg.get("speaker_fraction", 1.0),
        "training_speakers": train.get("trained_speakers", len(train["data"]["speakers"])),
        "training_windows": train.get("trained_windows", train["data"]["windows"]),
        "epochs": last["epoch"],
        "optimiser_steps": sum(h["windows"] for h in train["history"] if h["windows"]) // cfg["batch_size"],
        "seconds": train["seconds"],
        "final_train_accuracy": last["train_accuracy"],
        "validation": {k: {"eer": v["eer"], "frr_at_far_1pct": v["frr_at_far_1pct"],
                           "genuine": v["genuine"], "impostor": v["impostor"]} for k, v in last["val"].items()},
        "test": {},
    }
    for corpus, pattern in evals.items():
        path = Path(pattern.replace("{run}", run.name)) / "eval.json"
        if not path.is_file():
            continue
        clean = json.loads(path.read_text())["channels"]["clean"]
        row["test"][corpus] = {
            "eer": round(clean["eer"], 4),
            "eer_ci95": [round(x, 4) for x in clean["eer_ci95_speaker_bootstrap"]],
            "frr_at_far_1pct": round(clean["frr_at_far"]["1%"]["frr"], 4),
            "genuine_trials": clean["counts"]["genuine_trials"],
            "impostor_trials": clean["counts"]["impostor_trials"],
        }
    return row


def power_law(n: list, eer: list) -> dict | None:
    """EER = c * n^-k fitted on log-log; None with fewer than two points or a curve that does not fall."""
    n, e = np.asarray(n, float), np.asarray(eer, float)
    if n.size < 2 or (e <= 0).any():
        return None
    k, log_c = np.polyfit(np.log(n), np.log(e), 1)
    k = -k
    fit = {"k": round(float(k), 3), "c": round(float(np.exp(log_c)), 4)}
    fit["speakers_for_2pct"] = int(round((np.exp(log_c) / TARGET_EER) ** (1 / k))) if k > 0 else None
    return fit


def table(rows: list, fits: dict) -> str:
    series = sorted({s for r in rows for s in r["test"]})
    head = "| speakers | windows | epochs | steps | train acc | val EER % (all) | val FRR @ FAR 1 % |"
    head += "".join(f" {s} EER % [95 % CI] | {s} FRR @ FAR 1 % |" for s in series)
    lines = [head, "|" + "---|" * (7 + 2 * len(series))]
    for r in rows:
        v = r["validation"]["all"]
        line = (f"| {r['training_speakers']} | {r['training_windows']} | {r['epochs']} | {r['optimiser_steps']} | "
                f"{r['final_train_accuracy']:.2f} | {100 * v['eer']:.2f} | {100 * v['frr_at_far_1pct']:.1f} |")
        for s in series:
            t = r["test"].get(s)
            line += (f" {100 * t['eer']:.2f} [{100 * t['eer_ci95'][0]:.1f}, {100 * t['eer_ci95'][1]:.1f}] |"
                     f" {100 * t['frr_at_far_1pct']:.1f} |") if t else " | |"
        lines.append(line)
    lines.append("")
    for name, fit in fits.items():
        if fit:
            lines.append(f"- {name}: EER ~ {fit['c']:.3g} n^-{fit['k']:.2f}; 2 % at about "
                         f"{fit['speakers_for_2pct'] or 'never (the curve does not fall)'} training speakers")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--eval", action="append", default=[], metavar="CORPUS=FOLDER",
                   help="a voicegate eval output folder per run ({run} = the run folder's name); repeat")
    p.add_argument("--out", type=Path, default=Path("benchmarks/speaker-scaling"))
    args = p.parse_args(argv)
    evals = dict(e.split("=", 1) for e in args.eval)
    rows = sorted((run_row(r, evals) for r in args.runs), key=lambda r: r["training_speakers"])
    n = [r["training_speakers"] for r in rows]
    fits = {"validation (all pairs)": power_law(n, [r["validation"]["all"]["eer"] for r in rows])}
    for s in sorted({s for r in rows for s in r["test"]}):
        have = [r for r in rows if s in r["test"]]
        fits[f"test {s}"] = power_law([r["training_speakers"] for r in have], [r["test"][s]["eer"] for r in have])
    result = {"what": __doc__.split("\n")[0], "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "runs": rows, "power_law_fits": fits,
              "caveat": "one seed per point and three points: the fit gives a scale, not a forecast"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(result, indent=1))
    md = table(rows, fits)
    (args.out / "summary.md").write_text("# Training speakers against EER\n\n" + md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
