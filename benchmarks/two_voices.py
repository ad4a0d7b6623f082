"""Does enrolment refuse two voices in one profile, and how often does it warn one person?

``voicegate enroll`` refuses speech that is not all one voice (``device/enroll_checks.py``,
``disagreement_problems``): a stretch of about 6 s against the rest of the speech, else the
speech split into its two most different groups, each scored against the other. This benchmark
measures both checks, with the shipped encoder, on speakers it never heard (the allowed and
held-out speakers of ``speechocean762`` and ``librispeech`` with at least 40 s of speech):

* ``one_person``: each speaker enrolled from about 30 s of their recordings, clean and through
  each same-microphone channel of ``voicegate eval`` (one simulated door per channel); a warning
  here is a false refusal (``--force`` would override it);
* ``two_people``: random pairs of those speakers, about 15 s + 15 s and 20 s + 10 s of speech,
  clean; a warning here is a refusal, as it should be.

Only the voice-agreement checks are counted (not the noise or clipping warnings a degraded
channel also gives). One JSON file::

    python benchmarks/two_voices.py --out benchmarks/two-voices.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from voicegate.device import enroll_checks
from voicegate.device.audio import load_audio
from voicegate.device.encoder import Encoder
from voicegate.train.data.fingerprint import shared_data_dir

CORPORA = ("speechocean762", "librispeech")
CHANNELS = ("clean", "telephone", "cheap_mic", "noisy_room", "far_field")
MIXES = {"15+15": (15.0, 15.0), "20+10": (20.0, 10.0)}


def test_speakers(root: Path, min_seconds: float = 40.0) -> dict:
    """{speaker: recordings in recording order} for the allowed and held-out speakers (the people
    ``voicegate eval`` enrols: the encoder never trained on them) with at least ``min_seconds``."""
    from voicegate.train.data.corpus import load_corpus

    corpus = load_corpus(root)
    unseen = set(corpus.roles.allowed) | set(corpus.roles.heldout_impostors)
    return {s: sorted(v, key=lambda r: r.recording) for s, v in sorted(corpus.by_speaker().items())
            if s in unseen and sum(r.seconds or 0.0 for r in v) >= min_seconds}


def first_speech(recs: list, seconds: float) -> list:
    """The first recordings that hold ``seconds`` of detected speech."""
    out, total = [], 0.0
    for rec in recs:
        out.append(rec)
        total += rec.speech_seconds
        if total >= seconds:
            break
    return out


def disagrees(encoder, recs: list) -> tuple[bool, bool]:
    """(the stretch-against-the-rest check warns, either check warns: what enrol does)."""
    samples, embs, stretches = enroll_checks.embed_recordings(encoder, recs)
    stretch = bool(enroll_checks.agreement_problems(embs, stretches, encoder, samples))
    return stretch, stretch or bool(enroll_checks.split_problems(embs, stretches, encoder, samples))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(shared_data_dir()), help="folder of the shared corpora")
    ap.add_argument("--model", help="encoder (default: the shipped one)")
    ap.add_argument("--pairs", type=int, default=80, help="two-people pairs per corpus (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="the JSON file to write")
    args = ap.parse_args(argv)

    from voicegate.train.eval.enrolment import default_channel_fn

    encoder = Encoder.load(args.model, threads=2)
    one = {c: {"enrolments": 0, "warned": 0, "warned_by_the_stretch_check_alone": 0, "warned_speakers": []}
           for c in CHANNELS}
    two = {m: {"enrolments": 0, "refused": 0, "refused_by_the_stretch_check_alone": 0} for m in MIXES}
    speakers_used = {}
    for corpus in CORPORA:
        root = Path(args.data) / corpus
        if not (root / "manifest.csv").is_file():
            print(f"two_voices: no corpus at {root}", file=sys.stderr)
            return 1
        channel = default_channel_fn(str(root))
        speakers = test_speakers(root)
        speakers_used[corpus] = len(speakers)
        recs = {}
        for k, (spk, rows) in enumerate(speakers.items()):
            analysed = [enroll_checks.analyse(r.item, np.concatenate([load_audio(str(p)) for p in r.paths])) for r in rows]
            recs[spk] = first_speech([r for r in analysed if r.intervals], 30.0)
            for name in CHANNELS:
                through = recs[spk] if name == "clean" else [
                    enroll_checks.analyse(r.label, channel(r.audio, name, seed=1000 * k + i))
                    for i, r in enumerate(recs[spk])]
                one[name]["enrolments"] += 1
                stretch, warned = disagrees(encoder, through)
                one[name]["warned_by_the_stretch_check_alone"] += stretch
                if warned:
                    one[name]["warned"] += 1
                    one[name]["warned_speakers"].append(f"{corpus}/{spk}")
            print(f"{corpus} {spk}: one person done", flush=True)
        pairs = [(a, b) for i, a in enumerate(speakers) for b in list(speakers)[i + 1:]]
        random.Random(args.seed).shuffle(pairs)
        for a, b in pairs[: args.pairs]:
            for mix, (sa, sb) in MIXES.items():
                two[mix]["enrolments"] += 1
                stretch, refused = disagrees(encoder, first_speech(recs[a], sa) + first_speech(recs[b], sb))
                two[mix]["refused_by_the_stretch_check_alone"] += stretch
                two[mix]["refused"] += refused
        print(f"{corpus}: {min(len(pairs), args.pairs)} pairs done", flush=True)
    result = {
        "benchmark": "two voices in one enrolment",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoder": {"path": encoder.path.name, "sha256": encoder.sha256},
        "speakers": {"never heard by the encoder": speakers_used, "min_seconds": 40.0},
        "enrol_seconds": 30.0,
        "one_person": one,
        "two_people": two,
        "checks": "device.enroll_checks.disagreement_problems (voice agreement only); the stretch check "
                  "alone is agreement_problems, what enrol used before the two-group split",
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, r in one.items():
        print(f"one person, {name}: warned {r['warned']} of {r['enrolments']} "
              f"({r['warned_by_the_stretch_check_alone']} by the stretch check alone)")
    for mix, r in two.items():
        print(f"two people, {mix} s: refused {r['refused']} of {r['enrolments']} "
              f"({r['refused_by_the_stretch_check_alone']} by the stretch check alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
