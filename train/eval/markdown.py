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
    lines += nonspeech_lines(result)
    lines += ["", "plain: accept iff p(allowed) >= accept. policy: only GRANTED opens (UNCERTAIN counts as a "
              "reject). [low, high]: 95 % Wilson intervals. Retry: " + proto["retry"], ""]
    return "\n".join(lines)


def nonspeech_lines(result: dict) -> list[str]:
    """The non-speech false-accept table, next to the held-out impostors' policy FAR."""
    ns = result.get("nonspeech")
    if not ns:
        return []
    proto = ns["protocol"]
    rows = []
    for name, r in ns["models"].items():
        v = result["models"][name]["verification"].get("heldout_impostors")
        imp = f"{_pct(v['rejecting']['far'])} {_ci(v['rejecting']['far_ci95'])}" if v else "n/a"
        dev, mod = r["device"], r["model_only"]
        rows.append([name, r["n"], imp, f"{dev['far']['k']} = {_pct(dev['far']['rate'])} {_ci(dev['far']['ci95'])}",
                     f"{_pct(dev['no_speech'] / r['n'])}", f"{mod['far']['k']} = {_pct(mod['far']['rate'])} "
                     f"{_ci(mod['far']['ci95'])}", mod["above_accept"], f"{mod['p_allow_mean']:.3f} / "
                     f"{mod['p_allow_p95']:.3f} / {mod['p_allow_max']:.3f}"])
    return ["", f"## Non-speech false accepts ({proto['attempts']} attempts of {proto['attempt_seconds']:g} s)", "",
            f"Shared noise files ({proto['noise_part']}) at {proto['levels_dbfs']} dBFS, generated white / pink / "
            f"brown noise and 50 / 60 Hz hum at the same levels, near-silence with hum at {proto['silence_hum_dbfs']} "
            "dBFS. Device path: the speech detector, then the policy; model only: every window of the raw clip "
            "straight into the model (no detector).", "",
            markdown_table(["model", "non-speech attempts", "impostor policy FAR (held out)",
                            "non-speech GRANTED (device path)", "no speech found", "GRANTED, model only",
                            "p >= accept, model only", "p(allowed) mean / p95 / max, model only"],
                           rows, "lrrrrrrr")]
