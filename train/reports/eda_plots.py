"""The figures of `voicegate report eda` (see :mod:`voicegate.train.reports.eda`)."""

from __future__ import annotations

from voicegate.train.reports.eda import F0_MAX, F0_MIN, PYIN_FRAME, PYIN_HOP, ROLE_COLORS


def _role_patches(roles_present):
    from matplotlib.patches import Patch

    return [Patch(color=ROLE_COLORS[r], label=r) for r in ROLE_COLORS if r in roles_present]


def plot_recordings(report, corpus, shown, per_speaker) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    roles = corpus.roles
    counts = [len(per_speaker[s]) for s in shown]
    others = [s for s in per_speaker if s not in shown]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(shown) + 2), 3.8))
    ax.bar(range(len(shown)), counts, color=[ROLE_COLORS[roles.role_of(s)] for s in shown])
    ax.set_xticks(range(len(shown)), shown, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("recordings")
    extra = ""
    if others:
        oc = np.array([len(per_speaker[s]) for s in others])
        extra = f"; + {len(others)} more speakers with {oc.sum()} recordings (median {np.median(oc):.0f} each)"
    ax.set_title(report.fig_title(f"Recordings per speaker{extra}", "all splits"), fontsize=9)
    ax.legend(handles=_role_patches({roles.role_of(s) for s in shown}), fontsize=7)
    report.save(fig, "recordings_per_speaker.png", "Recordings per speaker (colour = role).")


def plot_durations(report, durations, shown, roles) -> None:
    import matplotlib.pyplot as plt

    groups = [(s, [d for d in durations if d["speaker"] == s]) for s in shown]
    rest = [d for d in durations if d["speaker"] not in set(shown)]
    if rest:
        groups.append((f"other {len({d['speaker'] for d in rest})}", rest))
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(groups) + 2), 4))
    pos_raw = [3 * i for i in range(len(groups))]
    pos_trim = [p + 1 for p in pos_raw]
    b1 = ax.boxplot([[d["seconds_raw"] for d in g] or [0] for _, g in groups], positions=pos_raw, widths=0.8, patch_artist=True)
    b2 = ax.boxplot([[d["seconds_trimmed"] for d in g] or [0] for _, g in groups], positions=pos_trim, widths=0.8, patch_artist=True)
    for box in b1["boxes"]:
        box.set_facecolor("lightgrey")
    for (name, _), box in zip(groups, b2["boxes"]):
        box.set_facecolor(ROLE_COLORS.get(roles.role_of(name), "tab:grey") if name in shown else "tab:grey")
    ax.set_xticks([p + 0.5 for p in pos_raw], [n for n, _ in groups], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("seconds per recording")
    ax.legend([b1["boxes"][0], b2["boxes"][0]], ["before trimming", "after trimming"], fontsize=7)
    ax.set_title(report.fig_title("Recording durations before and after silence trimming", "all splits"), fontsize=9)
    report.save(fig, "durations.png", "Durations per recording before (grey) and after (colour) silence trimming.")


def plot_intensity(report, freqs, profiles, shown, roles) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    keep = freqs > 0
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for s in shown:
        if s in profiles:
            role = roles.role_of(s)
            axes[0].plot(freqs[keep], profiles[s][keep], lw=1, color=ROLE_COLORS[role],
                         ls="-" if role == "allowed" else "--", label=s)
    axes[0].set_title(report.fig_title("Average intensity per frequency, per speaker", "all splits (clean windows)"), fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    for role, color in ROLE_COLORS.items():
        members = [profiles[s] for s in profiles if roles.role_of(s) == role]
        if members:
            axes[1].plot(freqs[keep], np.mean(members, axis=0)[keep], color=color, lw=2, label=f"{role} ({len(members)} speakers)")
    axes[1].set_title(report.fig_title("Average intensity per frequency, per role", "all splits (clean windows)"), fontsize=9)
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("frequency (Hz, log)")
        ax.set_ylabel("mean pixel intensity (0 = -80 dB, 1 = window max)")
    fig.tight_layout()
    report.save(fig, "intensity_per_frequency.png", "Average spectrogram intensity per frequency (log axis).")


def plot_pair(report, freqs, profiles, f0s, pair, labels) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    keep = freqs > 0
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for s, lab, color in zip(pair, labels, ("tab:red", "tab:blue")):
        axes[0].plot(freqs[keep], profiles[s][keep], color=color, label=f"{s} ({lab})")
        f0 = f0s.get(s, np.zeros(0))
        f0 = f0[np.isfinite(f0)]
        if f0.size:
            axes[1].hist(f0, bins=np.linspace(F0_MIN, F0_MAX, 41), alpha=0.5, color=color, label=f"{s} ({lab}), median {np.median(f0):.0f} Hz")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("frequency (Hz, log)")
    axes[0].set_ylabel("mean intensity")
    axes[0].set_title(report.fig_title(f"Intensity per frequency: {pair[0]} vs {pair[1]}", "all splits"), fontsize=9)
    axes[1].set_xlabel("F0 (Hz)")
    axes[1].set_ylabel("voiced frames")
    axes[1].set_title(report.fig_title("pYIN F0 distribution", "first recordings"), fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    report.save(fig, "female_vs_male.png", f"Two-speaker comparison: {pair[0]} ({labels[0]}) and {pair[1]} ({labels[1]}).")


def plot_f0_overlay(report, x, speaker, split, times, f0) -> None:
    import librosa
    import matplotlib.pyplot as plt
    import numpy as np

    from voicegate.device.audio import SAMPLE_RATE

    S = librosa.amplitude_to_db(np.abs(librosa.stft(x, n_fft=PYIN_FRAME, hop_length=PYIN_HOP)), ref=np.max, top_db=80)
    fig, ax = plt.subplots(figsize=(10, 4))
    t_max = x.size / SAMPLE_RATE
    ax.imshow(S, origin="lower", aspect="auto", cmap="magma", extent=(0, t_max, 0, SAMPLE_RATE / 2))
    ax.plot(times, f0, color="cyan", lw=2, label="pYIN F0")
    ax.plot(times, 2 * f0, color="cyan", lw=0.8, ls=":", label="2 x F0")
    ax.set_ylim(0, 2000)
    ax.set_xlabel("seconds (trimmed audio)")
    ax.set_ylabel("Hz")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(report.fig_title(f"pYIN F0 over the spectrogram, speaker {speaker}", split), fontsize=9)
    report.save(fig, "f0_overlay.png", f"pYIN F0 of speaker {speaker} over its spectrogram (0-2 kHz).")


def plot_f0_distribution(report, f0s, shown, roles) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    data = [(s, f0s[s][np.isfinite(f0s[s])]) for s in shown if s in f0s]
    data = [(s, f) for s, f in data if f.size]
    if not data:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(data) + 2), 4))
    parts = ax.violinplot([f for _, f in data], showmedians=True)
    for body, (s, _) in zip(parts["bodies"], data):
        body.set_facecolor(ROLE_COLORS[roles.role_of(s)])
    ax.set_xticks(range(1, len(data) + 1), [s for s, _ in data], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("F0 (Hz)")
    ax.set_title(report.fig_title("pYIN F0 distribution per speaker", "first recordings, all splits"), fontsize=9)
    ax.legend(handles=_role_patches({roles.role_of(s) for s, _ in data}), fontsize=7)
    report.save(fig, "f0_per_speaker.png", "F0 distribution per speaker (voiced frames of the first seconds of trimmed audio).")


def plot_mel_vs_linear(report, examples) -> None:
    """examples: [(speaker, role, split, 2 s of audio)]."""
    import librosa
    import matplotlib.pyplot as plt
    import numpy as np

    from voicegate.device.audio import SAMPLE_RATE
    from voicegate.device.features import STFT_HOP, spectrogram

    fig, axes = plt.subplots(len(examples), 2, figsize=(10, 3.6 * len(examples)), squeeze=False)
    for r, (spk, role, split, x) in enumerate(examples):
        lin = spectrogram(x)
        mel = librosa.feature.melspectrogram(y=x, sr=SAMPLE_RATE, n_fft=512, hop_length=STFT_HOP, n_mels=128, fmax=SAMPLE_RATE / 2)
        mel = librosa.power_to_db(mel, ref=np.max, top_db=80)
        axes[r, 0].imshow(lin, cmap="gray", aspect="auto", extent=(0, 2, 0, SAMPLE_RATE / 2000))
        axes[r, 0].set_ylabel("kHz (linear)")
        axes[r, 0].set_title(report.fig_title(f"Linear STFT image (the model input), {spk} ({role})", split), fontsize=8)
        axes[r, 1].imshow(mel, origin="lower", cmap="gray", aspect="auto", extent=(0, 2, 0, mel.shape[0]))
        mel_hz = librosa.mel_frequencies(n_mels=mel.shape[0], fmax=SAMPLE_RATE / 2)
        ticks = [int(np.abs(mel_hz - f).argmin()) for f in (250, 500, 1000, 2000, 4000, 8000)]
        axes[r, 1].set_yticks(ticks, [f"{mel_hz[t] / 1000:.2g}" for t in ticks])
        axes[r, 1].set_ylabel("kHz (mel scale)")
        axes[r, 1].set_title(report.fig_title(f"Mel spectrogram (128 bands), {spk} ({role})", split), fontsize=8)
        for ax in axes[r]:
            ax.set_xlabel("seconds")
    fig.tight_layout()
    report.save(fig, "mel_vs_linear.png", "The same 2 s windows as the linear STFT image the model sees and as a mel spectrogram.")
