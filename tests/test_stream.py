"""The listening side's audio before any decision: the endpointer (utterances out of a stream),
file sources and the microphone's chunk queue. The microphone source itself and the loop are in
test_listen.py."""

from __future__ import annotations

import numpy as np
import pytest
from listen_fakes import SR, noise, speech_stream
from synth import synth_voice, write_wav

from voicegate.device.audio import AudioError, load_audio
from voicegate.device.stream import ArraySource, ChunkQueue, Endpointer, FileSource, iter_file_16k


def endpoint(audio, chunk):
    ep = Endpointer()
    utts = []
    for c in ArraySource(audio, chunk):
        utts += ep.feed(c)
    return utts + ep.flush()


# --- endpointer ----------------------------------------------------------------------------------
def test_endpointer_finds_each_utterance_where_it_is(stream):
    audio, spans = stream
    utts = endpoint(audio, 1600)
    assert len(utts) == len(spans)
    for u, (a, b) in zip(utts, spans):
        assert a - 0.25 <= u.start_s <= a + 0.2, (u.start_s, a)
        assert b - 0.3 <= u.end_s <= b + 0.2, (u.end_s, b)
        assert u.cut == "silence"
        assert u.audio.size == u.end_sample - u.start_sample


def test_endpointer_is_chunk_size_invariant(stream):
    audio, _ = stream
    ref = endpoint(audio, 160)
    assert len(ref) == 4
    for chunk in (1000, 4096, 333, 1):
        utts = endpoint(audio, chunk)
        assert [(u.start_sample, u.end_sample, u.cut) for u in utts] == [
            (u.start_sample, u.end_sample, u.cut) for u in ref
        ]
        for u, r in zip(utts, ref):
            assert np.array_equal(u.audio, r.audio)


def test_endpointer_adapts_to_a_loud_noise_floor():
    quiet, spans = speech_stream(n_utterances=3, noise_level=0.001)
    loud, _ = speech_stream(n_utterances=3, noise_level=0.02)  # about -34 dBFS of noise
    assert len(endpoint(quiet, 1600)) == len(endpoint(loud, 1600)) == len(spans)
    assert endpoint(noise(20.0, 0.05), 1600) == []  # steady noise alone is never speech


def test_endpointer_cuts_long_speech_and_drops_clicks():
    t = np.arange(int(23.0 * SR)) / SR
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t), 0.05, 1.0).astype(np.float32)  # no long pauses
    long_voice = synth_voice("m1", 23.0, seed=3, pauses=False) * syllables
    utts = endpoint(np.concatenate([noise(1.0), long_voice, noise(1.0)]), 4096)
    assert [u.cut for u in utts][:2] == ["max_length", "max_length"]
    assert all(u.audio.size <= 10.0 * SR for u in utts)
    assert sum(u.audio.size for u in utts) >= 22.0 * SR
    click = np.concatenate([noise(1.0), 0.5 * np.ones(800, np.float32), noise(1.0)])  # 50 ms
    assert endpoint(click, 1000) == []


@pytest.mark.parametrize("first_s, pause_s, n", [(1.0, 0.7, 1), (2.5, 0.7, 2), (1.0, 1.4, 2)])
def test_a_short_phrase_waits_longer_for_the_rest_of_the_sentence(first_s, pause_s, n):
    """Under short_voiced (1.5 s) of speech the pause must last short_hangover (1 s), not 0.5 s."""
    first = synth_voice("f1", first_s, seed=4, pauses=False)
    rest = synth_voice("f1", 2.0, seed=5, pauses=False)
    audio = np.concatenate([noise(1.0), first, noise(pause_s), rest, noise(1.5)])
    utts = endpoint(audio, 1600)
    assert len(utts) == n, [(u.start_s, u.end_s, u.voiced_seconds) for u in utts]
    assert [u.cut for u in utts] == ["silence"] * n
    assert utts[-1].end_s >= 1.0 + first_s + pause_s + 1.8  # the rest of the sentence is kept


def test_abort_returns_the_utterance_in_progress(stream):
    audio, spans = stream
    ep = Endpointer()
    cut = int((spans[0][0] + 0.5) * SR)
    assert ep.feed(audio[:cut]) == []
    assert ep.in_speech
    utt = ep.abort()
    assert utt is not None and utt.cut == "aborted" and not ep.in_speech
    assert ep.abort() is None


# --- sources -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,channels,subtype", [(44_100, 2, "PCM_16"), (48_000, 1, "FLOAT"), (8_000, 1, "PCM_24")])
def test_file_source_streams_like_load_audio(tmp_path, rate, channels, subtype):
    x = synth_voice("f2", 3.0, seed=1, sr=rate)
    data = np.stack([x, np.zeros_like(x)], 1) if channels == 2 else x
    path = write_wav(tmp_path / "a.wav", data, sr=rate, subtype=subtype)
    whole = load_audio(path)
    streamed = np.concatenate(list(iter_file_16k(path, block_seconds=0.37)))
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    chunks = list(FileSource(path, chunk_samples=1000))
    assert all(c.size == 1000 for c in chunks[:-1])
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-6)


def test_file_source_rejects_bad_files_at_once(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 10)
    for bad in (tmp_path / "missing.wav", tmp_path / "junk.wav", tmp_path):
        with pytest.raises(AudioError):
            FileSource(bad)


def test_chunk_queue_drops_the_oldest_and_counts():
    q = ChunkQueue(3)
    for i in range(5):
        q.push(np.full(4, i, np.float32))
    assert q.dropped == 2 and len(q) == 3
    assert [int(q.pop(0.0)[0]) for _ in range(3)] == [2, 3, 4]
    assert q.pop(0.01) is None


@pytest.mark.shared
def test_endpointer_on_real_speech_never_straddles_a_pause(librispeech):
    import csv

    with open(librispeech / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:5]
    parts, spans, t = [], [], 0.0
    for row in rows:
        x = load_audio(librispeech / row["path"], max_seconds=12.0)
        parts += [np.zeros(SR, np.float32), x]
        spans.append((t + 1.0, t + 1.0 + x.size / SR))
        t += 1.0 + x.size / SR
    audio = np.concatenate(parts)
    audio = audio + noise(audio.size / SR, 0.003, seed=5)  # a steady room noise at about -50 dBFS
    utts = endpoint(audio, 1600)
    for a, b in spans:  # every recording is covered, and no utterance runs across a gap
        inside = [u for u in utts if u.start_s < b and u.end_s > a]
        assert inside, (a, b)
        assert all(a - 0.3 <= u.start_s and u.end_s <= b + 0.3 for u in inside), (a, b)
