"""The Markdown tables of ``voicegate eval`` (eval.md)."""

from __future__ import annotations

from pathlib import Path

from voicegate.train.eval.protocol import IMPOSTOR_SETS
from voicegate.train.reports.report import markdown_table


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _ci(interval) -> str:
    return f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def markdown(result: dict) -> str:
    """Tables: closed set (windows / attempts / recordings) and verification per impostor set."""
    proto = result["protocol"]
    lines = [
        f"# voicegate eval: {Path(proto['corpus']).name}",
        "",
        f"Closed set: the {proto['closed_set_split']} recordings of the allowed and not-allowed training "
        f"speakers (split seed {proto['split_seed']}); open set: every recording of the held-out impostors. "
        f"Attempts: {proto['attempt']}.",
        "",
        markdown_table(["role", "speakers", "recordings", "attempts", "windows"],
                       [[role, c["speakers"], c["recordings"], c["attempts"], c["windows"]]
                        for role, c in result["counts"].items()], "lrrrr"),
    ]
    rows = []
    for name, m in result["models"].items():
        cs = m.get("closed_set")
        for level in ("windows", "attempts", "recordings") if cs else ():
            r = cs[level]
            rows.append([name, level, r["n"], _pct(r["accuracy"]), _pct(r["f1_weighted"]), _pct(r["f1_macro"]),
                         _pct(r["balanced_accuracy"]), r["confusion_matrix"]])
    lines += ["", "## Closed set (at the shipped accept threshold, %)", "",
              markdown_table(["model", "level", "n", "accuracy", "F1 weighted", "F1 macro", "balanced acc.",
                              "confusion [[TN, FP], [FN, TP]]"], rows, "llrrrrrl")]
    for key, what in IMPOSTOR_SETS.items():
        rows = []
        for name, m in result["models"].items():
            v = m["verification"].get(key)
            if not v:
                continue
            pa, pw, r = v["plain"]["attempts"], v["plain"]["windows"], v["rejecting"]
            rows.append([
                name, f"{v['n_genuine']} / {v['n_impostor']}", f"{m['thresholds']['accept']:.3f}",
                f"{_pct(pa['far'])} {_ci(pa['far_ci95'])}", f"{_pct(pa['frr'])} {_ci(pa['frr_ci95'])}",
                _pct(pa["eer"]), _pct(pw["eer"] if pw else None), f"{_pct(r['far'])} {_ci(r['far_ci95'])}",
                f"{_pct(r['frr'])} {_ci(r['frr_ci95'])}",
                f"{_pct(r['uncertain_share']['genuine'])} / {_pct(r['uncertain_share']['impostor'])}",
                _pct(r["far_after_retry"]), _pct(r["frr_after_retry"]), _pct(r["eer"]),
            ])
        lines += ["", f"## Verification: allowed vs {what} (per attempt, %)", "",
                  markdown_table(["model", "genuine / impostor attempts", "accept", "plain FAR", "plain FRR", "EER",
                                  "window EER", "policy FAR", "policy FRR", "UNCERTAIN (genuine / impostor)",
                                  "FAR after retry", "FRR after retry", "policy EER"], rows, "llrrrrrrrlrrr")]
    lines += ["", "plain: accept iff p(allowed) >= accept. policy: only GRANTED opens (UNCERTAIN counts as a "
              "reject). [low, high]: 95 % Wilson intervals. Retry: " + proto["retry"], ""]
    return "\n".join(lines)
