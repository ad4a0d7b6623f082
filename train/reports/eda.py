"""`voicegate report eda`: exploratory analysis of a speaker corpus (the study's EDA).

* recordings per speaker (bar chart);
* recording durations per speaker before and after speech selection (box plots), with the
  device's own speech detector (``device.speech.speech_only``, what preparation keeps);
* average intensity per frequency per speaker (log-frequency axis), from the prepared grayscale
  spectrogram windows (clean windows of every split), and a one-female / one-male comparison
  (genders from the manifest; without them, the highest- and lowest-pitched shown speakers);
* pYIN F0 (librosa) over a spectrogram, and the F0 distribution per speaker, on a few seconds of
  trimmed audio per speaker (``--f0-seconds``: pYIN is slow);
* mel spectrograms beside the linear ones the model sees.

Corpora with many speakers (librispeech has 261) show ``--max-speakers`` of them one by one
(every allowed speaker first, then those with the most recordings); the rest are grouped.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

NEEDS_RUN = False
ROLE_COLORS = {"allowed": "tab:green", "not_allowed_train": "tab:orange", "heldout_impostors": "tab:purple"}
F0_MIN, F0_MAX = 60.0, 400.0  # Hz: the adult speaking range searched by pYIN
PYIN_FRAME = 1024  # samples (64 ms at 16 kHz)
PYIN_HOP = 256  # samples (16 ms)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-speakers", type=int, default=12, help="speakers shown one by one (default %(default)s)")
    p.add_argument("--f0-seconds", type=float, default=6.0, help="seconds of trimmed audio per shown speaker for pYIN (default %(default)s)")


# --- data --------------------------------------------------------------------------------------
def recording_durations(corpus, cfg) -> list:
    """[{speaker, recording, role, seconds_raw, seconds_trimmed}] for every recording (the device's
    loader and trimmer; unreadable or silent recordings are left out with a log line)."""
    from tqdm import tqdm

    from voicegate.device.audio import SAMPLE_RATE, AudioError
    from voicegate.device.speech import speech_only

    from voicegate.train.data.build import load_recording

    rows, skipped = [], []
    for rec in tqdm(corpus.recordings, desc="load + trim", unit="rec"):
        x = load_recording(rec, cfg, corpus.root, skipped)
        if x is None:
            continue
        try:
            trimmed = speech_only(x).size / SAMPLE_RATE
        except AudioError:
            trimmed = 0.0
        rows.append({
            "speaker": rec.speaker, "recording": rec.item, "role": corpus.roles.role_of(rec.speaker),
            "seconds_raw": x.size / SAMPLE_RATE, "seconds_trimmed": trimmed,
        })
    return rows


def shown_speakers(corpus, max_speakers: int) -> list:
    """Every allowed speaker, then the others by recordings (most first), up to ``max_speakers``."""
    per = corpus.by_speaker()
    roles = corpus.roles
    order = sorted(per, key=lambda s: (roles.role_of(s) != "allowed", -len(per[s]), _natural(s)))
    allowed = [s for s in order if roles.role_of(s) == "allowed"]
    rest = [s for s in order if roles.role_of(s) != "allowed"]
    return (allowed + rest)[: max(max_speakers, len(allowed))]


def _natural(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def genders(corpus) -> dict:
    """{speaker: 'F'/'M'} from the corpus metadata (manifest column ``gender`` or ``sex``)."""
    out = {}
    for rec in corpus.recordings:
        g = str(rec.meta.get("gender", rec.meta.get("sex", ""))).strip().upper()[:1]
        if g in ("F", "M"):
            out[rec.speaker] = g
    return out


def intensity_profiles(prepared, desc: str = "intensity") -> tuple:
    """({speaker: mean intensity per image row (224,)}, {speaker: windows}) over the clean windows of
    every split (time-averaged per window, then averaged over the speaker's windows). The
    preparation's pure non-speech windows (role ``nonspeech``: noise, hum, tones) are nobody's
    voice and are left out."""
    import numpy as np
    from tqdm import tqdm

    from voicegate.train.data.build import NONSPEECH_ROLE

    idx = prepared.index
    rows = np.flatnonzero((idx.aug == 0) & (idx.role != NONSPEECH_ROLE))
    speakers = idx.speaker[rows]
    sums, counts = {}, {}
    step = 256
    for s in tqdm(range(0, rows.size, step), desc=desc, leave=False):
        chunk = np.asarray(prepared.images[rows[s : s + step]], dtype=np.float32).mean(axis=2)  # (b, 224)
        for spk in np.unique(speakers[s : s + step]):
            m = speakers[s : s + step] == spk
            sums[spk] = sums.get(spk, 0.0) + chunk[m].sum(axis=0)
            counts[spk] = counts.get(spk, 0) + int(m.sum())
    return {str(k): sums[k] / counts[k] for k in sums}, {str(k): counts[k] for k in counts}


def speaker_audio(corpus, cfg, speaker: str, seconds: float):
    """Up to ``seconds`` of trimmed audio of one speaker (recordings in order) and the recording
    ids used."""
    import numpy as np

    from voicegate.device.audio import SAMPLE_RATE, AudioError
    from voicegate.device.speech import speech_only

    from voicegate.train.data.build import load_recording

    parts, used, need = [], [], int(seconds * SAMPLE_RATE)
    for rec in corpus.by_speaker().get(speaker, []):
        x = load_recording(rec, cfg, corpus.root, [])
        if x is None:
            continue
        try:
            x = speech_only(x)
        except AudioError:
            continue
        parts.append(x[: need - sum(p.size for p in parts)])
        used.append(rec.item)
        if sum(p.size for p in parts) >= need:
            break
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), used


def pyin_f0(x):
    """(times s, f0 Hz with NaN where unvoiced) by librosa's pYIN."""
    import librosa
    import numpy as np

    from voicegate.device.audio import SAMPLE_RATE

    if x.size < PYIN_FRAME:
        return np.zeros(0), np.zeros(0)
    f0, _, _ = librosa.pyin(x, fmin=F0_MIN, fmax=F0_MAX, sr=SAMPLE_RATE, frame_length=PYIN_FRAME, hop_length=PYIN_HOP)
    return librosa.times_like(f0, sr=SAMPLE_RATE, hop_length=PYIN_HOP), f0


def centroid(profile, freqs) -> float:
    """Intensity-weighted mean frequency (Hz) of a per-row profile (0 dB floor = intensity 0)."""
    import numpy as np

    w = np.clip(np.asarray(profile, float), 0, None)
    return float((w * freqs).sum() / max(w.sum(), 1e-12))


# --- the report --------------------------------------------------------------------------------
def make_report(args: argparse.Namespace):
    from voicegate.train.reports.eda_plots import (plot_durations, plot_f0_distribution, plot_f0_overlay,
                                                   plot_intensity, plot_mel_vs_linear, plot_pair, plot_recordings)
    import numpy as np
    from tqdm import tqdm

    from voicegate.device.audio import SAMPLE_RATE
    from voicegate.device.features import WINDOW_SAMPLES

    from voicegate.train.data.corpus import load_corpus
    from voicegate.train.reports.report import frequency_axis, open_prepared, prepare_config, read_run_info, start_report

    report = start_report(args, "eda", "Exploratory data analysis")
    run_info = read_run_info(args.run) if args.run else None
    cfg = prepare_config(args, run_info)
    corpus = load_corpus(cfg.corpus, cfg.layout, cfg.versions, cfg.allowed, cfg.impostors)
    prepared = open_prepared(args, run_info)
    roles = corpus.roles
    per_speaker = corpus.by_speaker()
    shown = shown_speakers(corpus, args.max_speakers)
    split_of = dict(zip(prepared.index.item, prepared.index.split))

    durations = recording_durations(corpus, cfg)
    profiles, n_windows = intensity_profiles(prepared)
    freqs = frequency_axis()

    f0s, f0_used, audio = {}, {}, {}
    for s in tqdm(shown, desc="pYIN F0", unit="speaker"):
        x, used = speaker_audio(corpus, cfg, s, args.f0_seconds)
        audio[s], f0_used[s] = x, used
        f0s[s] = pyin_f0(x)[1] if x.size else np.zeros(0)

    steps = tqdm(total=6, desc="figures", unit="fig")
    plot_recordings(report, corpus, shown, per_speaker)
    steps.update()
    plot_durations(report, durations, shown, roles)
    steps.update()
    plot_intensity(report, freqs, profiles, shown, roles)
    steps.update()

    g = genders(corpus)
    pair, pair_labels, pair_note = gender_pair(shown, g, f0s, roles)
    if pair:
        plot_pair(report, freqs, profiles, f0s, pair, pair_labels)
    steps.update()

    f0_speaker = next((s for s in shown if audio[s].size >= 4 * PYIN_FRAME), None)
    if f0_speaker:
        x = audio[f0_speaker][: int(min(4.0, args.f0_seconds) * SAMPLE_RATE)]
        times, f0 = pyin_f0(x)
        plot_f0_overlay(report, x, f0_speaker, split_of.get(f0_used[f0_speaker][0], "?"), times, f0)
    plot_f0_distribution(report, f0s, shown, roles)
    steps.update()

    examples = []
    for s in pair or shown[:2]:
        x = audio[s]
        if x.size:
            x = np.resize(x, WINDOW_SAMPLES) if x.size < WINDOW_SAMPLES else x[:WINDOW_SAMPLES]
            examples.append((s, roles.role_of(s), split_of.get(f0_used[s][0], "?"), x.astype(np.float32)))
    if examples:
        plot_mel_vs_linear(report, examples)
    steps.update()
    steps.close()

    stats = speaker_stats(shown, per_speaker, durations, profiles, n_windows, f0s, g, roles, freqs)
    role_stats = role_summary(durations, roles, per_speaker)
    check = trimming_check(durations, prepared.report)
    write_summary(report, corpus, prepared, shown, stats, role_stats, pair, pair_labels, pair_note, check, args)
    report.data.update({
        "layout": corpus.layout,
        "n_speakers": len(per_speaker),
        "n_recordings": len(corpus.recordings),
        "roles": role_stats,
        "shown_speakers": shown,
        "speakers": stats,
        "pair": {"speakers": pair, "labels": pair_labels, "note": pair_note},
        "f0_seconds_per_speaker": args.f0_seconds,
        "trimming_check_vs_prepare": check,
        "frequencies_hz": freqs.round(2),
        "intensity_profiles": {s: profiles[s].round(5) for s in shown if s in profiles},
    })
    return report


def gender_pair(shown, g: dict, f0s: dict, roles) -> tuple:
    """(speakers, labels, note) for the two-speaker comparison: one female and one male (allowed
    ones first), or without gender metadata the highest- and lowest-pitched shown speakers."""

    import numpy as np

    f = [s for s in shown if g.get(s) == "F"]
    m = [s for s in shown if g.get(s) == "M"]
    if f and m:
        key = lambda s: roles.role_of(s) != "allowed"  # noqa: E731
        return [sorted(f, key=key)[0], sorted(m, key=key)[0]], ["F", "M"], "genders from the corpus metadata"
    med = {s: float(np.nanmedian(v)) for s, v in f0s.items() if np.isfinite(v).any()}
    if len(med) >= 2:
        hi, lo = max(med, key=med.get), min(med, key=med.get)
        return [hi, lo], ["highest F0", "lowest F0"], "no gender metadata: the highest- and lowest-pitched shown speakers"
    return [], [], "not enough voiced audio for a comparison"


def speaker_stats(shown, per_speaker, durations, profiles, n_windows, f0s, g, roles, freqs) -> dict:
    import numpy as np

    out = {}
    for s in shown:
        d = [r for r in durations if r["speaker"] == s]
        f0 = f0s.get(s, np.zeros(0))
        f0 = f0[np.isfinite(f0)]
        out[s] = {
            "role": roles.role_of(s),
            "gender": g.get(s),
            "recordings": len(per_speaker[s]),
            "seconds_raw": float(sum(r["seconds_raw"] for r in d)),
            "seconds_trimmed": float(sum(r["seconds_trimmed"] for r in d)),
            "clean_windows": n_windows.get(s, 0),
            "f0_median_hz": float(np.median(f0)) if f0.size else None,
            "f0_iqr_hz": float(np.subtract(*np.percentile(f0, [75, 25]))) if f0.size else None,
            "spectral_centroid_hz": centroid(profiles[s], freqs) if s in profiles else None,
        }
    return out


def role_summary(durations, roles, per_speaker) -> dict:
    out = {}
    for role in ROLE_COLORS:
        d = [r for r in durations if r["role"] == role]
        spk = [s for s in per_speaker if roles.role_of(s) == role]
        raw, trim = sum(r["seconds_raw"] for r in d), sum(r["seconds_trimmed"] for r in d)
        out[role] = {
            "speakers": len(spk),
            "recordings": sum(len(per_speaker[s]) for s in spk),
            "seconds_raw": raw,
            "seconds_trimmed": trim,
            "share_removed": (1 - trim / raw) if raw else None,
        }
    return out


def trimming_check(durations, prep_report: dict) -> dict:
    """Total trimmed seconds here against the prepare report's, per speaker (they use the same
    trimmer, so they should agree unless preparation capped or skipped something)."""
    here = {}
    for r in durations:
        here[r["speaker"]] = here.get(r["speaker"], 0.0) + r["seconds_trimmed"]
    theirs = {s: v.get("seconds_trimmed") for s, v in (prep_report or {}).get("speakers", {}).items()}
    common = [s for s in here if theirs.get(s) is not None]
    diffs = [abs(here[s] - theirs[s]) for s in common]
    return {"speakers_compared": len(common), "max_abs_diff_seconds": max(diffs) if diffs else None}


def write_summary(report, corpus, prepared, shown, stats, role_stats, pair, pair_labels, pair_note, check, args) -> None:
    report.section(
        "Corpus",
        f"`{corpus.root.name}` ({corpus.layout} layout): {len(corpus.speakers)} speakers, {len(corpus.recordings)} "
        f"recordings; {len(prepared.index)} prepared windows ({int((prepared.index.aug == 0).sum())} clean). "
        "Durations use the device's loader and silence trimmer; intensity profiles use the clean prepared "
        f"windows of every split; F0 uses pYIN on the first {args.f0_seconds:g} s of trimmed audio per shown speaker.",
    )
    report.table(
        ["role", "speakers", "recordings", "minutes before trimming", "minutes after", "share removed"],
        [[r, v["speakers"], v["recordings"], v["seconds_raw"] / 60, v["seconds_trimmed"] / 60, v["share_removed"]]
         for r, v in role_stats.items()],
    )
    report.section("Shown speakers")
    report.table(
        ["speaker", "role", "gender", "recordings", "s before", "s after", "clean windows", "median F0 Hz", "F0 IQR Hz", "spectral centroid Hz"],
        [[s, v["role"], v["gender"] or "?", v["recordings"], v["seconds_raw"], v["seconds_trimmed"], v["clean_windows"],
          v["f0_median_hz"], v["f0_iqr_hz"], v["spectral_centroid_hz"]] for s, v in stats.items()],
    )
    if pair:
        a, b = (stats[s] for s in pair)
        report.section(
            "Two-speaker comparison",
            f"{pair[0]} ({pair_labels[0]}) against {pair[1]} ({pair_labels[1]}), {pair_note}: median F0 "
            f"{_hz(a['f0_median_hz'])} vs {_hz(b['f0_median_hz'])}; spectral centroid {_hz(a['spectral_centroid_hz'])} "
            f"vs {_hz(b['spectral_centroid_hz'])}.",
        )
    report.text(
        f"Check: the trimmed seconds per speaker here against the prepare report: {check['speakers_compared']} speakers "
        f"compared, largest difference {_num(check['max_abs_diff_seconds'])} s."
    )


def _hz(x) -> str:
    return "n/a" if x is None else f"{x:.0f} Hz"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"
