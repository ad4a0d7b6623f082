"""The split report of a prepared cache: windows per speaker and split, seconds before and after
trimming, class counts, skipped files and the leakage counts computed from the window index.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from voicegate.device.features import FEATURE_VERSION

from voicegate.train.data.cache import PreparedCorpus, WindowIndex
from voicegate.train.data.config import PrepareConfig
from voicegate.train.data.corpus import ROLE_NAMES, Corpus
from voicegate.train.data.splits import ALL_SPLITS, TRAIN, count_heldout_violations, count_leakage
from voicegate.train.reports.report import markdown_table

if TYPE_CHECKING:
    from voicegate.train.data.build import SpeakerStats


def build_report(
    corpus: Corpus,
    index: WindowIndex,
    stats: dict[str, SpeakerStats],
    skipped: list[dict],
    cfg: PrepareConfig,
    timing: dict,
) -> dict:
    roles = corpus.roles
    splits = {}
    for split in ALL_SPLITS:
        m = index.split == split
        clean = m & (index.aug == 0)
        splits[split] = {
            "windows_clean": int(clean.sum()),
            "windows_augmented": int((m & (index.aug > 0)).sum()),
            "allowed_clean": int((clean & (index.label == 1)).sum()),
            "not_allowed_clean": int((clean & (index.label == 0)).sum()),
            "allowed_total": int((m & (index.label == 1)).sum()),
            "not_allowed_total": int((m & (index.label == 0)).sum()),
            "recordings": int(len(set(index.recording[m]))),
            "speakers": int(len(set(index.speaker[m]))),
        }
    speakers = {
        spk: {
            "role": s.role,
            "label": s.label,
            "recordings": len(s.recordings),
            "items": s.items,
            "seconds_raw": round(s.seconds_raw, 2),
            "seconds_trimmed": round(s.seconds_trimmed, 2),
            "windows": s.windows,
        }
        for spk, s in sorted(stats.items(), key=lambda kv: (ROLE_NAMES.index(kv[1].role), kv[0]))
    }
    per_role = {}
    for role in ROLE_NAMES:
        members = [s for s in speakers.values() if s["role"] == role]
        per_role[role] = {
            "speakers": len(members),
            "seconds_raw": round(sum(s["seconds_raw"] for s in members), 1),
            "seconds_trimmed": round(sum(s["seconds_trimmed"] for s in members), 1),
        }
    return {
        "corpus": str(corpus.root),
        "layout": corpus.layout,
        "feature_version": FEATURE_VERSION,
        "n_windows": len(index),
        "hops_seconds": {"train": cfg.train_hop_seconds, "val/test/heldout": cfg.eval_hop_seconds},
        "augmented_copies": {"allowed": cfg.aug_copies, "not_allowed": cfg.aug_copies},
        "roles": {r: len(getattr(roles, r)) for r in ROLE_NAMES},
        "splits": splits,
        "per_role": per_role,
        "speakers": speakers,
        "skipped": skipped,
        "leakage_by_recording": count_leakage(zip(index.recording, index.split)),
        "heldout_violations": count_heldout_violations(zip(index.speaker, index.split), roles),
        "augmented_outside_train": int(((index.aug > 0) & (index.split != TRAIN)).sum()),
        "timing_seconds": {k: round(v, 2) for k, v in timing.items()},
    }


def split_table(report: dict) -> tuple[list[str], list[list]]:
    header = ["split", "windows (clean)", "windows (aug)", "allowed", "not allowed", "recordings", "speakers"]
    rows = [
        [
            split,
            s["windows_clean"],
            s["windows_augmented"],
            s["allowed_total"],
            s["not_allowed_total"],
            s["recordings"],
            s["speakers"],
        ]
        for split, s in report["splits"].items()
    ]
    return header, rows


def report_markdown(report: dict) -> str:
    lines = [
        f"# Split report: {Path(report['corpus']).name}",
        "",
        f"- corpus: `{report['corpus']}` ({report['layout']} layout), feature version `{report['feature_version']}`",
        f"- windows: {report['n_windows']}; hops: train {report['hops_seconds']['train']} s, "
        f"val/test/heldout {report['hops_seconds']['val/test/heldout']} s",
        f"- augmented copies per train recording: allowed {report['augmented_copies']['allowed']}, "
        f"not allowed {report['augmented_copies']['not_allowed']}",
        f"- **leakage by recording: {report['leakage_by_recording']}** (recording ids found in more than one "
        "split, computed from the window index)",
        f"- held-out violations: {report['heldout_violations']} (held-out impostor windows outside `heldout`, "
        "or others inside it); augmented windows outside train: "
        f"{report['augmented_outside_train']}",
        f"- pure non-speech train windows (not allowed): {(report.get('nonspeech') or {}).get('windows', 0)} "
        f"{(report.get('nonspeech') or {}).get('per_kind', {})}",
        f"- skipped files: {len(report['skipped'])}",
        "",
        "## Windows per split (allowed / not allowed include augmented copies)",
        "",
        markdown_table(*split_table(report)),
        "",
        "## Seconds per role, before and after trimming",
        "",
        markdown_table(
            ["role", "speakers", "seconds raw", "seconds trimmed"],
            [[r, v["speakers"], v["seconds_raw"], v["seconds_trimmed"]] for r, v in report["per_role"].items()],
        ),
        "",
        "## Per speaker (windows: clean+augmented)",
        "",
    ]

    def cell(s: dict, split: str) -> str:
        w = s["windows"].get(split)
        if not w:
            return "0"
        return f"{w['clean']}+{w['augmented']}" if w["augmented"] else str(w["clean"])

    rows = [
        [spk, s["role"], s["recordings"], s["seconds_raw"], s["seconds_trimmed"], *(cell(s, sp) for sp in ALL_SPLITS)]
        for spk, s in report["speakers"].items()
    ]
    lines.append(markdown_table(["speaker", "role", "recordings", "s raw", "s trimmed", *ALL_SPLITS], rows))
    lines += ["", "## Skipped files", ""]
    if report["skipped"]:
        lines.append(markdown_table(["file", "reason"], [[s["file"], s["reason"]] for s in report["skipped"]]))
    else:
        lines.append("none")
    lines += ["", "## Timing (seconds)", "", markdown_table(list(report["timing_seconds"]), [list(report["timing_seconds"].values())])]
    return "\n".join(lines) + "\n"


def summary(pc: PreparedCorpus) -> str:
    r = pc.report
    header, rows = split_table(r)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [fmt.format(*header), *(fmt.format(*row) for row in rows)]
    lines.append(
        f"leakage by recording: {r['leakage_by_recording']}   held-out violations: {r['heldout_violations']}   "
        f"skipped files: {len(r['skipped'])}"
    )
    state = "reused" if pc.reused else f"prepared in {r['timing_seconds']['total']:.1f} s"
    lines.append(f"cache: {pc.root} ({state}); report: {pc.root / 'report.md'}")
    return "\n".join(lines)
