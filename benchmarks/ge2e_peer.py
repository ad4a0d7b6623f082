"""The GE2E teacher as a peer: resemblyzer's pretrained d-vector encoder on the enrolment trials.

    python benchmarks/ge2e_peer.py [--corpora speechocean762,librispeech] [--channels all]
                                   [--data ../shared/data] [--out benchmarks/ge2e-peer]

The same protocol as ``voicegate eval`` on an encoder (:mod:`voicegate.train.eval.enrolment`):
the same enrolled speakers, the same <= 30 s of enrolment speech, the same 3 s attempts, the same
trials and the same simulated channels, so the figures compare directly with the CNN encoder's.
Only the embedder differs: each enrolment utterance and each attempt (the speech the device's
detector selected) goes, volume-normalised, through resemblyzer's ``VoiceEncoder.embed_utterance``
(its own 1.6 s partials; 256-d, L2-normalised), via the training side's teacher wrapper
(train/models/teacher.py, which also handles webrtcvad's ``pkg_resources`` import). The profile
is the normalised mean of the enrolment utterances' embeddings, the score the cosine. The teacher
has no calibration and no thresholds, so only score figures (EER, FRR at FAR 1 % and 0.1 %,
minDCF) are given; it never fails an attempt the encoder's featurizer would reject.

Writes ``<out>/<corpus>/eval.{json,md}`` and ``det.png`` per corpus (every channel), and
``<out>/ge2e_peer.json`` and ``ge2e_peer.md``: one table, a row per corpus and channel, rebuilt
from every ``<out>/*/eval.json`` on disk (``--summary-only`` rebuilds it alone).
The teacher runs on the CPU with ``--threads`` torch threads (default 1). It is a training-side
tool: the teacher never reaches the device.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from voicegate.train.data.fingerprint import shared_data_dir

log = logging.getLogger("ge2e_peer")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = shared_data_dir()
DEFAULT_OUT = REPO / "benchmarks" / "ge2e-peer"


class GE2EEmbedder:
    """The protocol's embedder interface around the training side's teacher
    (:class:`voicegate.train.models.teacher.Teacher`): speech -> (1, 256) L2-normalised d-vector."""

    samples = 1
    name = "ge2e-resemblyzer"

    def __init__(self, threads: int = 1):
        from voicegate.train.models.teacher import Teacher

        self.teacher = Teacher(threads=max(1, threads))

    def embed(self, speech: np.ndarray) -> np.ndarray:
        e = np.asarray(self.teacher.embed_utterance(np.asarray(speech, np.float32)), np.float64)
        return (e / max(np.linalg.norm(e), 1e-12))[None, :]

    def enrol(self, speech: np.ndarray) -> np.ndarray:
        """One d-vector per enrolment utterance (the profile: their normalised mean)."""
        return self.embed(speech)


def summary_markdown(summary: dict) -> str:
    lines = ["# GE2E teacher (resemblyzer) as a peer on the enrolment trials", "",
             summary["note"], "",
             "| corpus | channel | profiles | genuine / impostor trials | EER % [speaker bootstrap] | "
             "FRR @ FAR 1 % [Wilson] | FRR @ FAR 0.1 % | minDCF (P_t 0.01) |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for row in summary["rows"]:
        ci = row["eer_ci95"]
        eer = f"{100 * row['eer']:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")
        f1 = row["frr_at_far_1"]
        f01 = f"{100 * row['frr_at_far_0.1']['frr']:.2f}" + ("" if row["frr_at_far_0.1"]["resolved"] else " (too few impostor trials)")
        lines.append(f"| {row['corpus']} | {row['channel']} | {row['profiles']} | {row['genuine_trials']} / "
                     f"{row['impostor_trials']} | {eer} | {100 * f1['frr']:.2f} [{100 * f1['frr_ci95'][0]:.2f}, "
                     f"{100 * f1['frr_ci95'][1]:.2f}] | {f01} | {row['min_dcf']:.3f} |")
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in summary.get("commands", [summary["command"]])), ""]
    return "\n".join(lines)


def rows_of(result: dict, tag: str) -> list:
    rows = []
    for ch, r in result["channels"].items():
        c = r["counts"]
        rows.append({"corpus": tag, "channel": ch, "profiles": c["profiles"],
                     "impostor_only_speakers": c["impostor_only_speakers"],
                     "genuine_trials": c["genuine_trials"], "impostor_trials": c["impostor_trials"],
                     "failed_attempts": c["failed_attempts"], "eer": r["eer"],
                     "eer_ci95": r["eer_ci95_speaker_bootstrap"], "frr_at_far_1": r["frr_at_far"]["1%"],
                     "frr_at_far_0.1": r["frr_at_far"]["0.1%"], "min_dcf": r["min_dcf"]["value"],
                     "trials_sha256": r.get("trials_sha256")})
    return rows


def write_summary(out: Path, command: str) -> dict:
    """ge2e_peer.json / .md from every ``<out>/<corpus>/eval.json`` on disk (so runs of single
    corpora, one after another or side by side, add up to one table)."""
    rows, channels, seconds, commands = [], [], 0.0, []
    for path in sorted(out.glob("*/eval.json")):
        result = json.loads(path.read_text())
        if result.get("model", {}).get("name") != GE2EEmbedder.name:
            continue
        rows += rows_of(result, path.parent.name + ("" if result.get("complete", True) else " (partial: not every channel ran)"))
        channels += [c for c in result["channels"] if c not in channels]
        seconds += result.get("seconds") or 0.0
        cmd = result["model"].get("command")
        if cmd and cmd not in commands:
            commands.append(cmd)
    summary = {
        "peer": PEER_INFO,
        "note": ("Enrolment protocol of `voicegate eval` (train/eval/enrolment.py): unseen speakers (allowed and "
                 "held-out roles of each corpus) enrolled from <= 30 s, 3 s attempts, every attempt against every "
                 "profile; a channel is applied to enrolment and attempts alike (one simulated door per corpus). "
                 "Score: cosine of resemblyzer d-vectors. Per-corpus details and DET plots beside this file."),
        "command": command, "commands": commands or [command], "channels": channels, "rows": rows, "seconds": round(seconds, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "ge2e_peer.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "ge2e_peer.md").write_text(summary_markdown(summary))
    return summary


PEER_INFO = {"name": GE2EEmbedder.name, "kind": "peer", "package": "resemblyzer", "embedding_dim": 256,
             "samples": 1, "note": "pretrained GE2E d-vector encoder (Apache-2.0)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the shared corpora (default %(default)s)")
    p.add_argument("--corpora", default="speechocean762,librispeech", help="comma list (default %(default)s)")
    p.add_argument("--channels", default="all", help="clean, all, or a comma list of channel names (default %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument("--bootstrap", type=int, default=200, help="speaker-bootstrap resamples (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="channel seed (default %(default)s)")
    p.add_argument("--halves", action="store_true",
                   help="single-recording held-out speakers enrol from the first half of their speech "
                        "(voicegate eval --halves); outputs go to <out>/<corpus>-halves")
    p.add_argument("--summary-only", action="store_true", help="only rebuild the summary table from <out>/*/eval.json")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python benchmarks/ge2e_peer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.summary_only:
        print(summary_markdown(write_summary(args.out, command)))
        return 0

    from voicegate.train.eval.encoder_eval import channel_names, evaluate_corpus

    embedder = GE2EEmbedder(args.threads)
    channels = channel_names(args.channels)
    for name in [c.strip() for c in args.corpora.split(",") if c.strip()]:
        corpus = args.data / name
        if not (corpus / "manifest.csv").is_file():
            print(f"ge2e_peer: corpus {corpus} not found", file=sys.stderr)
            return 1
        tag = name + ("-halves" if args.halves else "")
        evaluate_corpus(embedder, str(corpus), channels, None, str(args.out / tag), {**PEER_INFO, "command": command},
                        seed=args.seed, n_boot=args.bootstrap, progress=not args.no_progress, halves=args.halves)
        summary = write_summary(args.out, command)  # after every corpus
    print(summary_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
