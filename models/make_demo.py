"""Build the shipped demo household: ``models/demo-profiles/`` and ``models/example-<name>.flac``.

    python models/make_demo.py [--corpus ../shared/data/librispeech] [--model ENCODER.onnx]
                               [--out models] [--clip-speaker 2414] [--clip-seconds 5]

Rebuild it whenever the encoder changes: a profile names the sha256 of the encoder it was made
with, and the device refuses profiles of another encoder.

* One profile per **allowed** speaker of the corpus's default roles (LibriSpeech: 1998, 3331,
  2414), named ``librispeech-<id>``, enrolled from that speaker's **train-split** recordings
  (split by recording, seed 0, as training and evaluation split them) with the device's own
  enrolment (``voicegate.device.enroll``: speech detector, checks, encoder).
* The example clip: the first ``--clip-seconds`` of each **test-split** recording of
  ``--clip-speaker`` (never used for enrolment) is decided against the demo household; the first
  one GRANTED as that speaker is written to ``example-librispeech-<id>.flac``. How many of the
  speaker's test clips were granted is printed and written to ``demo-household.json``, so the
  choice is not hidden.
* The stranger: the first ``--clip-seconds`` of every recording of the ``--strangers``
  (LibriSpeech's two test-other **held-out impostors**, 367 (F) and 3005 (M): never seen by the
  encoder, nobody in the household) are decided the same way; the first one DENIED (in speaker,
  then recording order) is written to ``models/example.wav``, and the count of DENIED,
  UNCERTAIN and GRANTED among them goes to ``demo-household.json``.
  ``models/example-espeak.wav`` (espeak-ng, nobody's voice) is decided too.

Needs the training extra (it reads the corpus with voicegate.train) and the shared corpus.
LibriSpeech is CC BY 4.0 (Panayotov et al., 2015); see models/README.md for the attribution.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from voicegate.train.data.fingerprint import shared_data_dir

HERE = Path(__file__).resolve().parent
log = logging.getLogger("make_demo")

DEMO_DIR = "demo-profiles"
NAME_PREFIX = "librispeech-"
BUILD_REPORT = "demo-household.json"  # beside demo-profiles/ (a .json inside would read as a profile)
LICENSE_NAME = "demo-household.LICENSE"
LICENSE_TEXT = """\
The demo household (demo-profiles/*.json: voice embeddings), {clip}
(the first {seconds:.0f} s of LibriSpeech test-other {recording}) and example.wav (the first
{stranger_seconds:.0f} s of LibriSpeech test-other {stranger}, a stranger to the household) are
derived from:

LibriSpeech (c) 2014 by Vassil Panayotov

LibriSpeech ASR corpus is licensed under a
Creative Commons Attribution 4.0 International License.

See <http://creativecommons.org/licenses/by/4.0/>.

V. Panayotov, G. Chen, D. Povey and S. Khudanpur, "LibriSpeech: an ASR corpus based on public
domain audio books", ICASSP 2015. The recordings are LibriVox readings of public-domain books.
Changes: the clips are cut to their first seconds and written as 16-bit FLAC / WAV; the profiles
hold embeddings computed from speakers {speakers}'s train-split recordings (models/make_demo.py).
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(shared_data_dir() / "librispeech"),
                    help="the librispeech corpus (default: $VOICEGATE_SHARED_DATA/librispeech, else ../shared/data)")
    ap.add_argument("--model", help="encoder (default: $VOICEGATE_ENCODER, else models/voicegate-encoder-mc.onnx)")
    ap.add_argument("--out", default=str(HERE), help="where demo-profiles/ and the clip go (default: models/)")
    ap.add_argument("--clip-speaker", default="2414")
    ap.add_argument("--clip-seconds", type=float, default=5.0)
    ap.add_argument("--strangers", default="367,3005",
                    help="held-out impostors whose clips are candidates for models/example.wav")
    ap.add_argument("--force", action="store_true", help="enrol despite enrolment warnings")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from voicegate.device.audio import load_audio
    from voicegate.device.encoder import Encoder
    from voicegate.device.enroll import EnrolmentRefused, enrol, read_recording
    from voicegate.device.profiles import ProfileStore
    from voicegate.device.scoring import ProfileGate
    from voicegate.train.data.corpus import load_corpus
    from voicegate.train.data.splits import TEST, TRAIN, split_recordings

    encoder = Encoder.load(args.model)
    corpus = load_corpus(args.corpus)
    splits = split_recordings(corpus.recordings, corpus.roles, seed=0)
    allowed = sorted(corpus.roles.allowed)
    out = Path(args.out)
    build = {"corpus": str(Path(args.corpus).name), "encoder": encoder.path.name, "encoder_sha256": encoder.sha256,
             "split": "by recording, seed 0", "profiles": {}, "clips": {}}
    tmp = Path(tempfile.mkdtemp(prefix=".demo-profiles.", dir=out))
    try:
        store = ProfileStore(tmp)
        for spk in allowed:
            recs = [r for r in corpus.recordings if r.speaker == spk and splits[r.recording] == TRAIN]
            files = [str(p) for r in sorted(recs, key=lambda r: r.item) for p in r.paths]
            try:
                prof, sess, warnings = enrol(encoder, store, NAME_PREFIX + spk, [read_recording(f) for f in files],
                                             force=args.force, sources=[Path(f).name for f in files])
            except EnrolmentRefused as e:
                print(f"make_demo: {spk}: " + "; ".join(map(str, e.problems)), file=sys.stderr)
                return 1
            build["profiles"][prof.name] = {"recordings": len(files), "speech_seconds": round(sess.speech_seconds, 1),
                                            "warnings": [str(w) for w in warnings]}
            print(f"enrolled {prof.name}: {len(files)} train-split recordings, {sess.speech_seconds:.1f} s of speech")
        gate = ProfileGate(encoder, store)
        name = NAME_PREFIX + args.clip_speaker
        tests = sorted((r for r in corpus.recordings if r.speaker == args.clip_speaker and splits[r.recording] == TEST),
                       key=lambda r: r.item)
        chosen, results = None, []
        for r in tests:
            clip = load_audio(r.path, max_seconds=args.clip_seconds)
            d = gate.decide_audio(clip)
            results.append({"recording": r.recording, "decision": d.decision, "speaker": d.speaker,
                            "scores": d.scores})
            print(f"test clip {r.recording} ({clip.size / 16000:.1f} s): {d.decision} {d.speaker or ''} {d.scores}")
            if chosen is None and d.speaker == name:
                chosen = (r, clip)
        build["clips"]["test_split_candidates"] = results
        build["clips"]["granted"] = f"{sum(x['speaker'] == name for x in results)} of {len(results)}"
        strangers = [s.strip() for s in args.strangers.split(",") if s.strip()]
        if any(s not in corpus.roles.heldout_impostors for s in strangers):
            print("make_demo: --strangers must be held-out impostors of the corpus", file=sys.stderr)
            return 1
        stranger, stranger_results = None, []
        for spk in strangers:
            for r in sorted((r for r in corpus.recordings if r.speaker == spk), key=lambda r: r.item):
                clip = load_audio(r.path, max_seconds=args.clip_seconds)
                d = gate.decide_audio(clip)
                stranger_results.append({"recording": r.recording, "decision": d.decision, "p_allow": round(d.p_allow, 4),
                                         "uncertainty": round(d.uncertainty, 4), "candidate": d.candidate})
                print(f"stranger clip {r.recording} ({clip.size / 16000:.1f} s): {d.decision} p {d.p_allow:.3f}")
                if stranger is None and d.decision == "DENIED":
                    stranger = (r, clip)
        build["clips"]["stranger_candidates"] = stranger_results
        build["clips"]["stranger_decisions"] = {k: sum(x["decision"] == k for x in stranger_results)
                                                for k in ("DENIED", "UNCERTAIN", "GRANTED")}
        synthetic = gate.decide_file(HERE / "example-espeak.wav")
        build["clips"]["example-espeak.wav"] = {"decision": synthetic.decision, "scores": synthetic.scores}
        print(f"models/example-espeak.wav (espeak-ng): {synthetic.decision} {synthetic.scores}")
        if stranger is None:
            print("make_demo: no stranger clip is DENIED; no models/example.wav", file=sys.stderr)
            return 1
        if chosen is None:
            print(f"make_demo: no test-split clip of {args.clip_speaker} is GRANTED as {name}; no example clip",
                  file=sys.stderr)
            return 1
        rec, clip = chosen
        clip_path = out / f"example-{name}.flac"
        sf.write(clip_path, np.asarray(clip, np.float32), 16000, subtype="PCM_16")
        build["clips"]["example"] = {"file": clip_path.name, "from": rec.recording, "seconds": clip.size / 16000}
        srec, sclip = stranger
        sf.write(out / "example.wav", np.asarray(sclip, np.float32), 16000, subtype="PCM_16")
        build["clips"]["stranger"] = {"file": "example.wav", "from": srec.recording, "speaker": srec.speaker,
                                      "seconds": sclip.size / 16000}
        final = out / DEMO_DIR
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        (final / ".lock").unlink(missing_ok=True)
        for p in final.iterdir():
            p.chmod(0o644)  # shipped read-only data (the store itself needs no 0600 here)
        final.chmod(0o755)
        (out / BUILD_REPORT).write_text(json.dumps(build, indent=1) + "\n")
        (out / LICENSE_NAME).write_text(LICENSE_TEXT.format(
            clip=clip_path.name, seconds=clip.size / 16000, recording=rec.recording,
            speakers=", ".join(allowed), stranger=srec.recording, stranger_seconds=sclip.size / 16000))
        print(f"wrote {final}/ ({', '.join(sorted(build['profiles']))}) and {clip_path} "
              f"(from {rec.recording}; {build['clips']['granted']} test clips granted); models/example.wav "
              f"from {srec.recording} (stranger clips: {build['clips']['stranger_decisions']})")
        return 0
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
