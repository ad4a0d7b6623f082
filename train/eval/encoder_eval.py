"""The encoder branch of ``voicegate eval``: the enrolment protocol per corpus and channel.

``voicegate eval ENCODER.onnx --corpus ../shared/data/speechocean762 --channels all --out DIR``
enrols the corpus's unseen speakers (:mod:`.enrolment`), runs every trial clean and through
every simulated channel, and writes ``DIR/eval.json``, ``DIR/eval.md`` and ``DIR/det.png``
(:mod:`.enrolment_report`). :func:`evaluate_corpus` is also what ``benchmarks/ge2e_peer.py``
calls with the GE2E teacher as the embedder, so both are scored on the same trials.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

from voicegate.device.options import NON_NEGATIVE_INT, POSITIVE_FLOAT

from .enrolment import CLEAN, ENROL_SECONDS, ProtocolConfig, ProtocolError

log = logging.getLogger(__name__)

PROTOCOL_TEXT = (
    "Enrolled: the corpus's allowed speakers (from their train-split recordings) and held-out "
    "impostors (from the first half of their recordings), none of them seen by the encoder, each "
    "from at most {enrol:g} s of speech (the device's speech detector selects it). Genuine trials: "
    "the speaker's other recordings, cut into {attempt:g} s attempts, against its own profile. "
    "Impostor trials: every other enrolled speaker's attempts, and every attempt of the "
    "single-recording held-out speakers (impostor-only), against each profile. No attempt comes "
    "from a recording its profile was enrolled from. With a channel, enrolment and attempts go "
    "through the same simulated channel (one door: the same room for the whole corpus, fresh "
    "noise per recording)."
)


def channel_names(spec: str) -> list[str]:
    """``clean``, ``all`` (clean + every channel of train.data.channel) or a comma list."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        from voicegate.train.data.channel import CHANNELS

        return [CLEAN, *CHANNELS]
    from voicegate.train.data.channel import CHANNELS

    unknown = [n for n in names if n != CLEAN and n not in CHANNELS]
    if unknown or not names:
        raise ValueError(f"unknown channel(s) {', '.join(unknown) or spec!r}: choose clean, all, "
                         f"or from {', '.join(CHANNELS)}")
    return names


HALVES_TEXT = (
    " Opt-in (--halves): each held-out speaker with a single recording also enrols, from the first "
    "half of that recording's speech, and attempts with its second half; those genuine trials share "
    "a recording session with their enrolment (easier than the strict protocol)."
)


def load_plans(corpus_root: Path, split_seed: int, split_fractions, contract=None, halves: bool = False):
    """(corpus, plans, unseen-check text) for one corpus."""
    from voicegate.train.data.corpus import load_corpus

    from .enrolment import check_unseen, plan_speakers, training_speakers

    corpus = load_corpus(corpus_root)
    plans = plan_speakers(corpus.recordings, corpus.roles, split_seed, split_fractions, halves)
    if not plans:
        raise ProtocolError(f"{corpus.root}: no allowed or held-out speakers to enrol")
    trained, lists = training_speakers(contract, corpus.root.name)
    return corpus, plans, check_unseen(plans, trained, lists)


def evaluate_corpus(embedder, corpus: str, channels: Sequence[str] = (CLEAN,), contract=None,
                    out: Optional[str] = None, model_info: Optional[dict] = None, split_seed: int = 0,
                    split_fractions=(0.6, 0.2, 0.2), enrol_seconds: float = ENROL_SECONDS,
                    attempt_seconds: float = 3.0, seed: int = 0, n_boot: int = 200, progress: bool = True,
                    channel_fn=None, peer: Optional[str] = None, halves: bool = False) -> dict:
    """Run the protocol on ``corpus`` for every channel; write eval.json / eval.md / det.png to ``out``.
    ``peer``: another run's eval.json (benchmarks/ge2e_peer.py) to set beside it, channel by channel."""
    from .enrolment import run_protocol
    from .enrolment_report import channel_report

    t0 = time.perf_counter()
    corpus_obj, plans, unseen = load_plans(Path(corpus), split_seed, split_fractions, contract, halves)
    result = {
        "model": model_info or {"name": getattr(embedder, "name", "embedder")},
        "protocol": {
            "corpus": str(corpus_obj.root), "corpus_name": corpus_obj.root.name,
            "description": PROTOCOL_TEXT.format(enrol=enrol_seconds, attempt=attempt_seconds)
            + (HALVES_TEXT if halves else ""), "halves": halves,
            "enrol_seconds": enrol_seconds, "attempt_seconds": attempt_seconds, "split_seed": split_seed,
            "split_fractions": list(split_fractions), "channel_seed": seed, "unseen_check": unseen,
            "speakers": {"enrolling": sum(p.enrolled for p in plans),
                         "impostor_only": sum(not p.enrolled for p in plans),
                         "from_halves": sum(p.halves for p in plans),
                         "by_role": {r: sum(p.role == r for p in plans) for r in ("allowed", "heldout_impostors")}},
        },
        "channels": {},
    }
    for i, ch in enumerate(channels):
        cfg = ProtocolConfig(corpus=str(corpus_obj.root), enrol_seconds=enrol_seconds, attempt_seconds=attempt_seconds,
                             split_seed=split_seed, split_fractions=tuple(split_fractions), channel=ch, seed=seed,
                             progress=progress)
        emb = run_protocol(plans, embedder, cfg, channel_fn)
        result["channels"][ch] = channel_report(emb, contract, n_boot, seed)
        r = result["channels"][ch]
        log.info("%s [%s]: EER %.2f %%, FRR@FAR1%% %.2f %% (%d genuine / %d impostor trials)", corpus_obj.root.name,
                 ch, 100 * r["eer"], 100 * r["frr_at_far"]["1%"]["frr"], r["counts"]["genuine_trials"],
                 r["counts"]["impostor_trials"])
        if peer and Path(peer).is_file():  # re-read: the peer may still be running
            from .enrolment_report import compare_with_peer

            result["peer_comparison"] = {**compare_with_peer(result, json.loads(Path(peer).read_text())),
                                         "file": str(peer)}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["complete"] = i == len(channels) - 1
        if out:  # after every channel, so a long run leaves its finished channels on disk
            write_outputs(result, Path(out))
    for r in result["channels"].values():
        r.pop("_curve", None)
    return result


def attach_peer(out: str, peer: str) -> dict:
    """Add (or refresh) the peer comparison of a finished run in ``out`` (eval.json, eval.md)."""
    from .enrolment_report import compare_with_peer, markdown

    d = Path(out)
    result = json.loads((d / "eval.json").read_text())
    result["peer_comparison"] = {**compare_with_peer(result, json.loads(Path(peer).read_text())), "file": str(peer)}
    (d / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    (d / "eval.md").write_text(markdown(result))
    return result


def write_outputs(result: dict, d: Path) -> None:
    """eval.json (without the DET scores), eval.md and det.png of the channels so far."""
    from .enrolment_report import det_plot, markdown

    d.mkdir(parents=True, exist_ok=True)
    result["files"] = {"json": str(d / "eval.json"), "markdown": str(d / "eval.md"),
                       "det": str(det_plot(result, d / "det.png"))}
    (d / "eval.md").write_text(markdown(result))
    plain = {**result, "channels": {k: {kk: vv for kk, vv in v.items() if kk != "_curve"}
                                    for k, v in result["channels"].items()}}
    (d / "eval.json").write_text(json.dumps(plain, indent=1) + "\n")


# --- the `voicegate eval` branch -------------------------------------------------------------
# the encoder-only options' defaults: what add_encoder_arguments sets, and what a classifier accepts
ENCODER_DEFAULTS = {"channels": CLEAN, "enrol_seconds": ENROL_SECONDS, "halves": False, "peer": None, "bootstrap": 200}


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """Options that only the encoder branch reads (a classifier model refuses them)."""
    p.add_argument("--channels", default=ENCODER_DEFAULTS["channels"],
                   help="encoder models: clean, all, or a comma list of train.data.channel names "
                        "(enrolment and attempts through the same channel; default %(default)s)")
    p.add_argument("--enrol-seconds", type=POSITIVE_FLOAT, default=ENCODER_DEFAULTS["enrol_seconds"],
                   help="encoder models: most speech a person enrols with (default %(default)s)")
    p.add_argument("--halves", action="store_true",
                   help="encoder models: single-recording held-out speakers enrol from the first half of "
                        "their speech and attempt with the second (weaker; off by default)")
    p.add_argument("--peer", metavar="EVAL_JSON",
                   help="encoder models: a peer's eval.json on the same corpus (benchmarks/ge2e_peer.py) to compare with")
    p.add_argument("--bootstrap", type=NON_NEGATIVE_INT, default=ENCODER_DEFAULTS["bootstrap"],
                   help="encoder models: speaker-bootstrap resamples for the EER interval (default %(default)s)")


def encoder_options_given(args: argparse.Namespace) -> list[str]:
    """The encoder-only options set away from their defaults (a classifier must refuse them)."""
    return ["--" + k.replace("_", "-") for k, v in ENCODER_DEFAULTS.items() if getattr(args, k, v) != v]


def is_encoder(path) -> bool:
    """Whether the ONNX model at ``path`` declares kind=encoder (False when it cannot be read:
    the classifier path then says why, in one line)."""
    from voicegate.device.contract import ModelContract

    try:
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return ModelContract.from_metadata(meta).kind == "encoder"
    except Exception:  # noqa: BLE001 - onnx raises its own types for unreadable files
        return False


def split_kinds(models: Sequence) -> tuple[list, list]:
    """(classifier model paths, encoder model paths), in the given order."""
    kinds = [is_encoder(m) for m in models]
    return [m for m, e in zip(models, kinds) if not e], [m for m, e in zip(models, kinds) if e]


def run(args: argparse.Namespace) -> int:
    """``voicegate eval`` for encoder models: one corpus, the chosen channels, one model."""
    import sys

    from voicegate.device.contract import ModelError
    from voicegate.train.commands import error_text, failure_exit
    from voicegate.train.data.corpus import CorpusError

    from .enrolment import OnnxEmbedder

    if len(args.models) != 1:
        print("voicegate eval: give one encoder model at a time", file=sys.stderr)
        return 2
    if not args.corpus:
        print("voicegate eval: an encoder model needs --corpus (a corpus folder, e.g. ../shared/data/librispeech)",
              file=sys.stderr)
        return 2
    try:
        channels = channel_names(args.channels)
    except ValueError as e:
        print(f"voicegate eval: {error_text(e)}", file=sys.stderr)
        return 2
    if args.peer and not Path(args.peer).is_file():
        print(f"voicegate eval: --peer {args.peer}: no such file (benchmarks/ge2e_peer.py writes it)", file=sys.stderr)
        return 2
    if args.peer:
        try:
            json.loads(Path(args.peer).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            print(f"voicegate eval: --peer {args.peer}: not a readable eval.json ({e})", file=sys.stderr)
            return 2
    try:
        embedder = OnnxEmbedder(args.models[0], threads=args.threads, seed=args.seed)
        c = embedder.contract
        info = {"name": embedder.name, "path": str(embedder.path), "sha256": embedder.sha256, "kind": c.kind,
                "method": c.method, "samples": c.samples, "embedding_dim": c.embedding_dim,
                "architecture": c.architecture, "thresholds": c.thresholds.to_dict(),
                "calibration": {k: v for k, v in c.calibration.items() if k != "cohort"}}  # not 90 kB of cohort
        result = evaluate_corpus(embedder, args.corpus, channels, c, args.out, info,
                                 enrol_seconds=args.enrol_seconds, attempt_seconds=args.attempt_seconds,
                                 seed=args.seed or 0, n_boot=args.bootstrap, progress=not args.no_progress,
                                 peer=args.peer, halves=args.halves)
    except (ProtocolError, ModelError, CorpusError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"voicegate eval: {error_text(e)}", file=sys.stderr)
        log.debug("encoder eval failed", exc_info=True)
        return failure_exit(e)
    from .enrolment_report import markdown

    print(json.dumps(result, indent=1) if args.json else markdown(result))
    return 0
