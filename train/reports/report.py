"""`voicegate report {eda,uncertainty,interpret,params}`: the study's analyses as commands.

Every command reads a corpus (and its prepared window cache), optionally a training run, and
writes PNG figures plus ``summary.md`` and ``summary.json`` into ``--out``. Every figure title
names the corpus and the split it shows.

This module is imported to build ``--help``, so nothing heavy (torch, librosa, sklearn,
matplotlib) is imported at module top, here or in the four report modules it registers.
The shared plumbing of the four commands lives here: arguments, opening the corpus and the run,
window selection, figure saving and the summary writer.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from voicegate.device.audit import jsonable  # the one jsonable (issue 14)
from voicegate.train.data.roles import ROLE_NAMES

log = logging.getLogger(__name__)

# report name -> (module under voicegate.train.reports, one-line help)
REPORTS = {
    "eda": ("eda", "exploratory data analysis: recordings, durations, spectra, F0, mel vs linear"),
    "uncertainty": ("uncertainty", "MC dropout (T = 2, 20, 50) against the deep ensemble: calibration, errors, open set, cost"),
    "interpret": ("interpret", "conv1 filters, feature maps, Grad-CAM and saliency per frequency band"),
    "params": ("params", "parameter space: distance from init, re-initialisation and re-randomisation robustness"),
}

SPLIT_NAMES = ("train", "val", "test", "heldout")


# --- CLI ---------------------------------------------------------------------------------------
def add_common_arguments(p: argparse.ArgumentParser, needs_run: bool) -> None:
    p.add_argument("--corpus", required=True, help="corpus folder (manifest + roles.json, DAPS, or a folder per speaker)")
    p.add_argument("--cache", help="prepared-window cache (default: the run's, else voicegate prepare's default)")
    p.add_argument("--run", required=needs_run, help="training run folder (runs/NAME)" + ("" if needs_run else "; optional"))
    p.add_argument("--out", required=True, help="folder for the figures, summary.md and summary.json")
    p.add_argument("--seed", type=int, default=0, help="seed for window subsets and sampling (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report_name", metavar="NAME", required=True)
    for name, (module, help_text) in REPORTS.items():
        mod = importlib.import_module(f"voicegate.train.reports.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common_arguments(p, needs_run=getattr(mod, "NEEDS_RUN", True))
        mod.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("voicegate report needs the training extra: pip install 'voicegate[train]'")
    module, _ = REPORTS[args.report_name]
    mod = importlib.import_module(f"voicegate.train.reports.{module}")
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    t0 = time.perf_counter()
    try:
        report = mod.make_report(args)
    except Exception as e:  # one line; 2 for a corpus, run or option that cannot be used, 5 a bad model, else 1
        from voicegate.train.commands import error_text, failure_exit

        print(f"voicegate report {args.report_name}: {error_text(e)}", file=sys.stderr)
        log.debug("report failed", exc_info=True)
        return failure_exit(e)
    path = report.write()
    print(f"{args.report_name} report: {len(report.figures)} figures and {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


# --- the report writer -------------------------------------------------------------------------
@dataclass
class Report:
    """Figures, Markdown and numbers of one report, written into ``out``."""

    name: str
    corpus: str  # corpus name shown in every title
    out: Path
    title: str = ""
    figures: list = field(default_factory=list)  # file names written so far
    lines: list = field(default_factory=list)  # Markdown body
    figure_lines: list = field(default_factory=list)  # Markdown of the figures (written last)
    data: dict = field(default_factory=dict)  # summary.json

    def __post_init__(self):
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def fig_title(self, what: str, split: str) -> str:
        return f"{what} — {self.corpus}, {split}"

    def save(self, fig, filename: str, caption: str = "") -> Path:
        """Save a matplotlib figure as PNG, close it, and link it from the summary."""
        import matplotlib.pyplot as plt

        path = self.out / filename
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(filename)
        self.figure_lines += [f"![{filename}]({filename})", ""]
        if caption:
            self.figure_lines += [f"*{caption}*", ""]
        return path

    def section(self, heading: str, *paragraphs: str) -> None:
        self.lines.append(f"## {heading}")
        self.lines.append("")
        for para in paragraphs:
            self.lines.append(para)
            self.lines.append("")

    def text(self, *paragraphs: str) -> None:
        for para in paragraphs:
            self.lines.append(para)
            self.lines.append("")

    def table(self, headers: list, rows: list) -> None:
        self.lines.append(markdown_table(headers, rows))
        self.lines.append("")

    def write(self) -> Path:
        head = [f"# {self.title or self.name} — {self.corpus}", ""]
        figures = ["## Figures", "", *self.figure_lines] if self.figure_lines else []
        (self.out / "summary.md").write_text("\n".join(head + self.lines + figures).rstrip() + "\n")
        payload = {"report": self.name, "corpus": self.corpus, "figures": list(self.figures), **self.data}
        (self.out / "summary.json").write_text(json.dumps(jsonable(payload), indent=1, allow_nan=False))
        return self.out / "summary.md"


def fmt(x, digits: int = 3) -> str:
    """A table cell: numbers rounded, None as 'n/a'."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(headers: list, rows: list, align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column, ``r`` = right-aligned (default left)."""
    rule = ["---:" if align[i : i + 1] == "r" else "---" for i in range(len(headers))]
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join(rule) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(c) for c in r) + " |")
    return "\n".join(out)


def corpus_name(path) -> str:
    return Path(path).expanduser().resolve().name


def start_report(args: argparse.Namespace, name: str, title: str) -> Report:
    return Report(name=name, corpus=corpus_name(args.corpus), out=Path(args.out), title=title)


# --- corpus, cache and run ---------------------------------------------------------------------
def read_run_info(run_dir) -> dict:
    from voicegate.train.models.trainer import no_run_message

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(no_run_message(run_dir))
    return json.loads(path.read_text())


def prepare_config(args: argparse.Namespace, run_info: Optional[dict] = None):
    """The PrepareConfig of ``--corpus``: the run's data config (so roles and splits match what the
    run was trained on) with ``--corpus``/``--cache`` on top."""
    from voicegate.train.data.prepare import PrepareConfig

    cfg = dict((run_info or {}).get("data_config") or {})
    cfg["corpus"] = str(args.corpus)
    if args.cache:
        cfg["cache_dir"] = str(args.cache)
    elif cfg.get("cache_dir") and not Path(cfg["cache_dir"]).is_dir():
        cfg.pop("cache_dir")  # the run was prepared elsewhere: use the default location
    return PrepareConfig.from_dict(cfg)


def open_prepared(args: argparse.Namespace, run_info: Optional[dict] = None):
    """The prepared window cache of ``--corpus``.

    An existing ``--cache`` is opened as it is, never rebuilt (an analysis must not overwrite the
    windows a run was trained on); it must come from ``--corpus``, and roles that differ from the
    run's are logged. Otherwise the corpus is prepared (reusing a matching cache).
    """
    from voicegate.train.data.cache import PreparedCorpus
    from voicegate.train.data.prepare import prepare_corpus

    cfg = prepare_config(args, run_info)
    if args.cache and (Path(args.cache) / "meta.json").is_file():
        pc = PreparedCorpus.open(args.cache)
        theirs = Path(str(pc.meta.get("corpus", ""))).expanduser().resolve()
        if theirs != Path(cfg.corpus).expanduser().resolve():
            raise ValueError(f"--cache {args.cache} holds windows of {theirs}, not of --corpus {cfg.corpus}")
        run_roles = (run_info or {}).get("roles")
        def speakers_by_role(roles: dict) -> dict:  # the three roles; a run also lists its non-speech sources
            return {r: sorted(v) for r, v in roles.items() if v and r in ROLE_NAMES}

        if run_roles and speakers_by_role(pc.meta.get("roles", {})) != speakers_by_role(run_roles):
            log.warning("the roles in %s differ from the run's roles", args.cache)
        return pc
    return prepare_corpus(cfg)


def load_members(run_dir) -> list:
    """[(model in eval mode, checkpoint), ...] of every member of the run."""
    from voicegate.train.models.trainer import load_run

    return load_run(run_dir)


def open_run(args: argparse.Namespace) -> tuple:
    """(run.json, [(model, checkpoint), ...]) of ``--run``, checking ``--member`` against it."""
    run_info = read_run_info(args.run)
    members = load_members(args.run)
    if not 0 <= getattr(args, "member", 0) < len(members):
        raise ValueError(f"--member {args.member}: the run has {len(members)} member(s)")
    return run_info, members


def select_split(corpus, split: str, max_windows: Optional[int], seed: int):
    """Clean (un-augmented) windows of one split as a SplitData, subsampled (seeded) to
    ``max_windows`` when given."""
    from voicegate.train.data.dataset import split_data

    data = split_data(corpus, split, aug=False)
    if max_windows and len(data) > max_windows:
        data = data.subset(int(max_windows), seed)
    return data


def window_batches(images, rows, batch_size: int = 64, desc: str = ""):
    """Yield float32 torch tensors (B, 1, 224, 224) of ``images[rows]``, with a progress bar."""
    import numpy as np
    import torch
    from tqdm import tqdm

    rows = np.asarray(rows)
    for start in tqdm(range(0, rows.size, batch_size), desc=desc, leave=False, disable=not desc):
        chunk = np.asarray(images[np.sort(rows[start : start + batch_size])], dtype=np.float32)
        # keep the caller's order (sorted reads are faster on a memmap)
        order = np.argsort(np.argsort(rows[start : start + batch_size]))
        yield torch.from_numpy(chunk[order]).unsqueeze(1)


def frequency_axis(n_bins: int = 224):
    """Centre frequency (Hz) of each image row, row 0 = the highest bin (image convention)."""
    import numpy as np

    from voicegate.device.audio import SAMPLE_RATE
    from voicegate.device.features import N_FFT

    return (np.arange(n_bins)[::-1] * SAMPLE_RATE / N_FFT).astype(float)


FREQUENCY_BANDS = ((0, 250), (250, 500), (500, 1000), (1000, 2000), (2000, 4000), (4000, 8001))


def band_density(profile, freqs) -> dict:
    """Mean of a non-negative per-row profile in each of FREQUENCY_BANDS relative to its mean over
    all rows: 1 = as much as a uniform profile would give the band, whatever the band's width
    (None for every band when the profile is all zero)."""
    import numpy as np

    profile = np.clip(np.asarray(profile, dtype=float), 0, None)
    overall = profile.mean()
    return {
        f"{lo}-{min(hi, 8000)} Hz": float(profile[(freqs >= lo) & (freqs < hi)].mean() / overall) if overall > 0 else None
        for lo, hi in FREQUENCY_BANDS
    }


def band_shares(profile, freqs) -> dict:
    """Share of a non-negative per-row profile in each of FREQUENCY_BANDS (sums to 1; None for
    every band when the profile is all zero, e.g. a Grad-CAM with no positive evidence)."""
    import numpy as np

    profile = np.clip(np.asarray(profile, dtype=float), 0, None)
    total = profile.sum()
    return {
        f"{lo}-{min(hi, 8000)} Hz": float(profile[(freqs >= lo) & (freqs < hi)].sum() / total) if total > 0 else None
        for lo, hi in FREQUENCY_BANDS
    }
