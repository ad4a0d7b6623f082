"""`voicegate report uncertainty`: MC dropout (T = 2, 20, 50) against the deep ensemble.

MC dropout samples the head only: the trunk runs once per window (eval mode, BatchNorm frozen)
and the head's dropout mask is drawn T times, which is exactly what the exported MC model does.
The ensemble runs every member once (eval mode) on the same windows. Both give S samples of
p(allowed) per window; their mean is the prediction, their spread the uncertainty.

Windows: the closed-set ``--split`` (default test: unseen recordings of the training speakers)
and the held-out impostors (speakers never seen in training) for the open-set AUROCs.
"""

from __future__ import annotations

import argparse
import logging

from voicegate.device.options import NON_NEGATIVE_INT

log = logging.getLogger(__name__)

NEEDS_RUN = True
DEFAULT_T = (2, 20, 50)
SINGLE = "single"  # member 0 with dropout off: the deterministic baseline
CLASS_NAMES = ("not_allowed", "allowed")

# "comparable" = within these margins (absolute for rates and AUROCs, relative for NLL/Brier)
ABS_MARGIN = 0.01
REL_MARGIN = 0.10
REL_FLOOR = 0.005  # ... but never tighter than this (near zero a relative margin means nothing)
HIGHER_BETTER = ("accuracy", "f1_weighted", "error_auroc", "open_auroc_p", "open_auroc_unc")
LOWER_BETTER = ("ece", "nll", "brier", "aurc", "eer", "ms_per_window", "size_mb")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", choices=("val", "test"), help="closed-set split (default %(default)s)")
    p.add_argument("--T", dest="mc_samples", type=int, nargs="+", default=list(DEFAULT_T), help="MC dropout sample counts (default 2 20 50)")
    p.add_argument("--member", type=int, default=0, help="the ensemble member MC dropout samples (default %(default)s)")
    p.add_argument("--max-windows", type=NON_NEGATIVE_INT, default=3000, help="seeded subset of at most this many windows per split (default %(default)s; 0 = all)")
    p.add_argument("--bins", type=int, default=10, help="confidence bins for ECE (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=500, help="recording-level bootstrap resamples for the MC vs ensemble intervals (default %(default)s)")
    p.add_argument("--timing-batch", type=int, default=32, help="windows per batch when timing each method (default %(default)s)")


# --- sampling ----------------------------------------------------------------------------------
def trunk_features(model, images, rows, desc: str = ""):
    """(N, D) trunk outputs in eval mode, no gradients."""
    import torch

    from voicegate.train.reports.report import window_batches

    model.eval()
    with torch.no_grad():
        feats = [model.trunk(x) for x in window_batches(images, rows, desc=desc)]
    return torch.cat(feats) if feats else torch.zeros(0, model.feature_dim)


def head_probs(model, feats):
    """(N,) p(allowed) from the head in eval mode (dropout off)."""
    import torch

    model.eval()
    with torch.no_grad():
        return torch.softmax(model.head(feats), dim=1)[:, 1].numpy().astype(float)


def mc_head_samples(model, feats, T: int, generator, chunk: int = 512):
    """(T, N) p(allowed): the head with its dropout live, T masks per window, trunk not rerun.

    Dropout is applied as in ``nn.Dropout`` in train mode (keep with prob 1 - p, scale by
    1 / (1 - p)) with masks from ``generator``, so the draw is reproducible.
    """
    import numpy as np
    import torch

    drop, linear = model.head[0], model.head[1]
    p = float(drop.p)
    out = []
    with torch.no_grad():
        for s in range(0, feats.shape[0], chunk):
            f = feats[s : s + chunk]
            keep = (torch.rand((T, *f.shape), generator=generator) >= p).float() / (1.0 - p)
            logits = linear(f.unsqueeze(0) * keep)  # (T, n, 2)
            out.append(torch.softmax(logits, dim=-1)[..., 1].numpy())
    return np.concatenate(out, axis=1).astype(float) if out else np.zeros((T, 0))


def sample_methods(members, member: int, Ts, images, rows, seed: int, desc: str) -> dict:
    """{method: (S, N) p(allowed)} for single, MC-T for each T, and ensemble-K (K > 1)."""
    import numpy as np
    import torch

    feats = [trunk_features(m, images, rows, desc=f"{desc} member {i}") for i, (m, _) in enumerate(members)]
    model = members[member][0]
    out = {SINGLE: head_probs(model, feats[member])[None]}
    gen = torch.Generator().manual_seed(seed)
    for T in Ts:
        out[f"MC-{T}"] = mc_head_samples(model, feats[member], T, gen)
    if len(members) > 1:
        out[f"ensemble-{len(members)}"] = np.stack([head_probs(m, f) for (m, _), f in zip(members, feats)])
    return out


# --- cost --------------------------------------------------------------------------------------
def time_methods(members, member: int, Ts, x, repeats: int = 7) -> dict:
    """ms per window of each method on batch ``x`` (B, 1, 224, 224), on this CPU: the best of
    ``repeats`` runs after a warm-up (the least disturbed by other work on the machine)."""
    import time

    import numpy as np
    import torch

    model = members[member][0]
    gen = torch.Generator().manual_seed(0)

    def clock(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.min(times)) * 1000.0 / x.shape[0]

    with torch.no_grad():
        costs = {SINGLE: clock(lambda: model(x))}
        for T in Ts:
            costs[f"MC-{T}"] = clock(lambda T=T: mc_head_samples(model, model.trunk(x), T, gen))
        if len(members) > 1:
            costs[f"ensemble-{len(members)}"] = clock(lambda: [m(x) for m, _ in members])
    return costs


def model_sizes(members, member: int, Ts) -> dict:
    """fp32 parameter megabytes each method must hold (MC: one model; ensemble: all K)."""
    from voicegate.train.models.classifier import count_parameters

    mb = [count_parameters(m) * 4 / 1e6 for m, _ in members]
    sizes = {SINGLE: mb[member], **{f"MC-{T}": mb[member] for T in Ts}}
    if len(members) > 1:
        sizes[f"ensemble-{len(members)}"] = sum(mb)
    return sizes


# --- verdicts ----------------------------------------------------------------------------------
def table_rows(results: dict) -> dict:
    """{method: {metric: value}} with the table's metrics flattened (uncertainty = std; the
    single model has no spread, so its uncertainty is the predictive entropy)."""
    rows = {}
    for method, r in results.items():
        unc = _unc_name(method)
        o = r.get("open_set", {})
        rows[method] = {
            "accuracy": r["accuracy"],
            "f1_weighted": r["f1_weighted"],
            "ece": r["ece"],
            "nll": r["nll"],
            "brier": r["brier"],
            "error_auroc": r["error_auroc"][unc],
            "aurc": r["aurc"][unc],
            "open_auroc_p": o.get("auroc_p_allow"),
            "open_auroc_unc": (o.get("auroc_uncertainty") or {}).get(unc),
            "eer": o.get("eer"),
            "ms_per_window": r["ms_per_window"],
            "size_mb": r["size_mb"],
            "uncertainty": unc,
        }
    return rows


def winners(rows: dict, methods=None) -> dict:
    """{metric: [best methods]} over ``methods`` (ties within 1e-9 share the win)."""
    methods = list(methods or rows)
    out = {}
    for metric in (*HIGHER_BETTER, *LOWER_BETTER):
        vals = {m: rows[m][metric] for m in methods if rows[m][metric] is not None}
        if not vals:
            continue
        best = max(vals.values()) if metric in HIGHER_BETTER else min(vals.values())
        out[metric] = [m for m, v in vals.items() if abs(v - best) <= 1e-9]
    return out


def compare(mc: dict, ens: dict, boot: dict | None = None) -> dict:
    """Per metric: the ensemble's and MC's values, and what MC is: 'comparable' (within the
    margins), 'not distinguishable' (beyond the margin, but the recording-level bootstrap interval
    of the difference includes 0), 'better' or 'worse'."""
    boot = boot or {}
    out = {}
    for metric in (*HIGHER_BETTER, "ece", "nll", "brier", "aurc", "eer"):
        a, b = mc[metric], ens[metric]
        if a is None or b is None:
            continue
        margin = max(REL_MARGIN * abs(b), REL_FLOOR) if metric in ("nll", "brier", "aurc") else ABS_MARGIN
        sign = 1 if metric in HIGHER_BETTER else -1
        ci = boot.get(metric)
        if abs(a - b) <= margin:
            verdict = "comparable"
        elif ci and ci["resamples"] and ci["low"] <= 0 <= ci["high"]:
            verdict = "not distinguishable"
        else:
            verdict = "better" if sign * (a - b) > 0 else "worse"
        row = {"mc": a, "ensemble": b, "ensemble_minus_mc": b - a, "mc_is": verdict}
        if ci:
            row["ci95_ensemble_minus_mc"] = [ci["low"], ci["high"]]
        out[metric] = row
    return out


# --- the report --------------------------------------------------------------------------------
def make_report(args: argparse.Namespace):
    from voicegate.train.reports.uncertainty_plots import (plot_histograms, plot_reliability, plot_risk_coverage,
                                                           plot_triangles)
    import numpy as np
    from tqdm import tqdm

    from voicegate.train.eval.calibration import paired_bootstrap, sample_uncertainty, uncertainty_report
    from voicegate.train.reports.report import open_prepared, open_run, select_split, start_report, window_batches

    report = start_report(args, "uncertainty", "MC dropout against the deep ensemble")
    run_info, members = open_run(args)
    Ts = sorted(set(int(t) for t in args.mc_samples if t >= 1))
    if not Ts:
        raise ValueError("--T needs at least one sample count >= 1")
    corpus = open_prepared(args, run_info)
    split = args.split
    closed = select_split(corpus, split, args.max_windows, args.seed)
    heldout = select_split(corpus, "heldout", args.max_windows, args.seed)
    if not len(closed):
        raise ValueError(f"no {split} windows in the prepared corpus")

    steps = tqdm(total=4, desc="report uncertainty", unit="step")
    s_closed = sample_methods(members, args.member, Ts, corpus.images, closed.rows, args.seed, split)
    s_open = (
        sample_methods(members, args.member, Ts, corpus.images, heldout.rows, args.seed + 1, "heldout")
        if len(heldout)
        else None
    )
    steps.update()

    x = next(window_batches(corpus.images, closed.rows[: args.timing_batch]))
    costs = time_methods(members, args.member, Ts, x)
    sizes = model_sizes(members, args.member, Ts)
    steps.update()

    y = closed.labels
    panels = {}
    for method, s in s_closed.items():
        u = sample_uncertainty(s)
        uo = sample_uncertainty(s_open[method]) if s_open is not None else {"mean": np.zeros(0), "std": np.zeros(0)}
        panels[method] = {
            "y": y, "mean": u["mean"], "std": u["std"], "wrong": (u["mean"] >= 0.5) != (y == 1),
            "open_mean": uo["mean"], "open_std": uo["std"],
        }
    # two settings: the closed-set split (plus the open-set AUROCs), and the door: the split's windows
    # together with the held-out impostors' (labelled not allowed), which is what a gate meets
    door = f"{split} + heldout"
    settings = {split: (y, s_closed, closed.recordings, s_open)}
    if s_open is not None:
        settings[door] = (
            np.r_[y, np.zeros(len(heldout), dtype=int)],
            {m: np.concatenate([s_closed[m], s_open[m]], axis=1) for m in s_closed},
            np.r_[closed.recordings, heldout.recordings],
            None,
        )
    mc_names = [f"MC-{T}" for T in Ts]
    ens_name = f"ensemble-{len(members)}" if len(members) > 1 else None
    results = {}
    for name, (ys, samples, groups, open_samples) in settings.items():
        res = {}
        for method, sm in samples.items():
            r = uncertainty_report(ys, sm, n_bins=args.bins, open_samples=None if open_samples is None else open_samples[method])
            r["ms_per_window"], r["size_mb"] = costs[method], sizes[method]
            res[method] = r
        rows = table_rows(res)
        comparison = {}
        if ens_name:
            mc_u, ens_u = sample_uncertainty(samples[mc_names[-1]]), sample_uncertainty(samples[ens_name])
            boot = paired_bootstrap(ys, groups, (mc_u["mean"], mc_u["std"]), (ens_u["mean"], ens_u["std"]),
                                    n_boot=args.bootstrap, seed=args.seed, n_bins=args.bins)
            comparison = compare(rows[mc_names[-1]], rows[ens_name], boot)
        results[name] = {
            "n_windows": int(ys.size),
            "methods": res,
            "table": rows,
            "winners": winners(rows, [m for m in rows if m != SINGLE]),
            "mc_vs_ensemble": comparison,
        }
    steps.update()

    plot_triangles(report, {m: panels[m] for m in mc_names}, split, "triangles_mc.png",
                   "MC dropout: mean predicted probability of each class against its std (the study's triangles); red = misclassified.")
    if ens_name:
        plot_triangles(report, {mc_names[-1]: panels[mc_names[-1]], ens_name: panels[ens_name]}, split,
                       "triangles_ensemble_vs_mc.png", f"{ens_name} beside {mc_names[-1]}.")
    plot_histograms(report, {m: panels[m] for m in [*mc_names, *([ens_name] if ens_name else [])]}, split, "histograms.png")
    for i, (name, (ys, samples, _, _)) in enumerate(settings.items()):
        suffix = "" if i == 0 else "_door"
        plot_reliability(report, ys, {m: sample_uncertainty(sm)["mean"] for m, sm in samples.items()}, name, args.bins,
                         f"reliability{suffix}.png")
        plot_risk_coverage(report, ys, samples, name, f"risk_coverage{suffix}.png")
    steps.update()
    steps.close()

    write_summary(report, args, run_info, corpus, closed, heldout, results, mc_names[-1], ens_name)
    report.data.update({
        "run": str(args.run),
        "arch": run_info.get("arch"),
        "split": split,
        "n_windows": {split: len(closed), "heldout": len(heldout)},
        "threads": _threads(),
        "settings": results,
        # the closed-set split's numbers at the top level
        **{k: results[split][k] for k in ("methods", "table", "winners", "mc_vs_ensemble")},
    })
    return report


def _threads() -> int:
    import torch

    return torch.get_num_threads()


NAMES = {"accuracy": "accuracy", "f1_weighted": "weighted F1", "ece": "ECE", "nll": "NLL", "brier": "Brier",
         "error_auroc": "error AUROC", "aurc": "AURC", "open_auroc_p": "open-set AUROC of p(allowed)",
         "open_auroc_unc": "open-set AUROC of uncertainty", "eer": "open-set EER",
         "ms_per_window": "cost per window", "size_mb": "model size"}
TABLE = (("acc", "accuracy"), ("F1w", "f1_weighted"), ("ECE", "ece"), ("NLL", "nll"), ("Brier", "brier"),
         ("err-AUROC", "error_auroc"), ("AURC", "aurc"), ("open AUROC p", "open_auroc_p"),
         ("open AUROC unc", "open_auroc_unc"), ("open EER", "eer"), ("ms/window", "ms_per_window"), ("MB", "size_mb"))


def write_summary(report, args, run_info, corpus, closed, heldout, results, mc_name, ens_name) -> None:
    split = args.split
    n_allowed = int((closed.labels == 1).sum())
    total = {s: len(corpus.indices(s, aug=False)) for s in (split, "heldout")}
    subset = (f" (seeded subsets of at most {args.max_windows} windows)"
              if len(closed) < total[split] or len(heldout) < total["heldout"] else "")
    report.section(
        "Setup",
        f"Run `{args.run}` ({run_info.get('arch')}, {len(run_info.get('members', []))} member(s)). "
        f"Closed set: {len(closed)} clean windows of the **{split}** split ({n_allowed} allowed, "
        f"{len(closed) - n_allowed} not allowed); open set: {len(heldout)} windows of held-out impostors "
        f"(speakers never seen in training){subset}. Recordings are split whole, but a speaker's recordings "
        "can share one audiobook chapter (librispeech), so closed-set numbers are optimistic against new sessions.",
        f"MC-T = member {args.member}: trunk once, head dropout live, T masks. {SINGLE} = member "
        f"{args.member} with dropout off. Ensemble = mean of the members in eval mode. Prediction = "
        "mean p(allowed) >= 0.5. Uncertainty = std of p(allowed) over the samples (entropy of the mean "
        f"for {SINGLE}). ECE over {args.bins} top-label confidence bins; Brier = mean (p - y)^2; NLL in "
        f"nats. Cost = CPU time per window (best of 7 runs) in batches of {args.timing_batch} ({_threads()} torch "
        "thread(s)) on this machine; size = fp32 parameters held in memory.",
        "err-AUROC: uncertainty ranking misclassified windows above correct ones (n/a when nothing is "
        "misclassified). AURC: area under the risk-coverage curve (lower is better). open AUROC p: "
        f"p(allowed) separating allowed {split} windows from held-out impostor windows. open AUROC unc: "
        f"uncertainty flagging held-out impostor windows among all {split} windows (0.5 = chance). open EER: "
        "equal error rate of p(allowed), allowed vs held-out impostors.",
    )
    for name, res in results.items():
        keys = [(h, k) for h, k in TABLE if name == split or not k.startswith(("open_", "eer"))]
        heading = (f"Closed set: the {split} split" if name == split else
                   f"The door: {split} windows and held-out impostor windows together (impostors labelled not allowed)")
        report.section(f"{heading} ({res['n_windows']} windows)")
        report.table(["method", *[h for h, _ in keys]], [[m, *[r[k] for _, k in keys]] for m, r in res["table"].items()])
        if name == split:
            report.text("Accepted held-out impostor windows (p(allowed) >= 0.5) and the uncertainty of the least "
                        "uncertain of them (a low value is a confident false accept that no rejection threshold catches): "
                        + "; ".join(f"{m}: {r['open_set']['n_accepted']} of {r['open_set']['n_impostor']}, "
                                    f"min {_unc_name(m)} "
                                    f"{fmt_unc(r['open_set']['accepted_min_uncertainty'][_unc_name(m)])}"
                                    for m, r in res["methods"].items() if r.get("open_set")) + ".")
        report.text("Best (single excluded): " + "; ".join(f"{NAMES[k]}: {', '.join(v)}" for k, v in res["winners"].items()
                                                        if any(k == kk for _, kk in keys)) + ".")
        comparison = res["mc_vs_ensemble"]
        if not comparison:
            report.text("The run has one member, so there is no ensemble to compare against.")
            continue
        by = {v: [NAMES[k] for k, c in comparison.items() if c["mc_is"] == v]
              for v in ("comparable", "not distinguishable", "better", "worse")}
        verdict = (
            f"Here {mc_name} is **comparable** to {ens_name}: no quality metric is clearly worse"
            if not by["worse"]
            else f"Here {mc_name} is **not** comparable to {ens_name}: it is clearly worse on {', '.join(by['worse'])}"
        )
        report.text(
            verdict + f". Comparable = within {ABS_MARGIN} (rates, AUROCs, EER) or {int(REL_MARGIN * 100)} % "
            f"(at least {REL_FLOOR}; NLL, Brier, AURC); not distinguishable = beyond that, but the 95 % interval of the difference "
            f"from {args.bootstrap} paired bootstrap resamples of whole recordings includes 0 (metrics without an "
            "interval are judged by the margin alone).",
            "\n".join(f"- {v}: {', '.join(m) or 'nothing'}" for v, m in by.items()),
        )
        report.table(["metric", mc_name, ens_name, "ensemble − MC", "CI low", "CI high", "MC is"],
                     [[NAMES[k], c["mc"], c["ensemble"], c["ensemble_minus_mc"],
                       *(c.get("ci95_ensemble_minus_mc") or [None, None]), c["mc_is"]] for k, c in comparison.items()])
    if ens_name:
        rows = results[split]["table"]
        report.section(
            "Cost",
            f"{mc_name}: {fmt_ms(rows[mc_name]['ms_per_window'])}, {rows[mc_name]['size_mb']:.2f} MB of weights; "
            f"{ens_name}: {fmt_ms(rows[ens_name]['ms_per_window'])}, {rows[ens_name]['size_mb']:.2f} MB "
            f"({rows[ens_name]['ms_per_window'] / rows[mc_name]['ms_per_window']:.1f}x the time, "
            f"{rows[ens_name]['size_mb'] / rows[mc_name]['size_mb']:.0f}x the memory).",
        )


def _unc_name(method: str) -> str:
    return "entropy" if method == SINGLE else "std"


def fmt_unc(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def fmt_ms(ms: float) -> str:
    return f"{ms:.2f} ms/window"
