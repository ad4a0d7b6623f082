"""A short soak of `voicegate listen` (the long one is benchmarks/soak.py) and a kill -9 test.

The soak loops a synthetic speech stream through the real streaming path (source ->
endpointer -> gate -> audit log) with a fast fake gate, and checks that every decision is in
the audit log and that resident memory stays flat. The kill test SIGKILLs a listening process
mid-run and checks that the audit log it leaves is readable up to its last complete line.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from listen_fakes import FakeGate, speech_stream
from synth import write_wav

from voicegate.device import listen
from voicegate.device.audit import AuditLog, read_audit_log
from voicegate.device.stream import ArraySource

TESTS = Path(__file__).parent
FAKE_CLI = str(TESTS / "listen_fakes.py")
UTTERANCES_PER_LOOP = 4
LOOPS = 250  # 1000 decisions, about 53 minutes of audio
RSS_GROWTH_LIMIT_MB = 50.0  # generous: a leak of ~0.2 MB per decision would still show


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_short_soak_every_decision_logged_and_rss_flat(tmp_path, record_property):
    audio, spans = speech_stream(n_utterances=UTTERANCES_PER_LOOP)
    assert len(spans) == UTTERANCES_PER_LOOP
    log_path = tmp_path / "audit.jsonl"
    emitted = []
    with AuditLog(log_path) as audit:
        # warm-up: first allocations (numpy, logging, json) are not a leak
        warm = listen.Listener(FakeGate(), lambda: ArraySource(audio, loops=2), audit=audit)
        assert warm.run() == listen.EXIT_STOPPED
        rss_start = rss_mb()
        t0 = time.perf_counter()
        soak = listen.Listener(
            FakeGate(), lambda: ArraySource(audio, chunk_samples=1024, loops=LOOPS), audit=audit, emit=emitted.append
        )
        assert soak.run() == listen.EXIT_STOPPED
        duration = time.perf_counter() - t0
        rss_end = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    n = UTTERANCES_PER_LOOP * LOOPS
    figures = {
        "decisions": len(emitted),
        "audio_s": round(audio.size / 16000 * LOOPS, 1),
        "duration_s": round(duration, 2),
        "decisions_per_s": round(len(emitted) / duration, 1),
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_peak_mb": round(peak, 1),
    }
    print("short soak:", json.dumps(figures))
    for k, v in figures.items():
        record_property(k, v)

    assert len(emitted) == n and soak.stats.decisions == n
    logged = [r for r in read_audit_log(log_path) if r["type"] == "decision"]
    assert len(logged) == 2 * UTTERANCES_PER_LOOP + n
    assert logged[-n:] == emitted  # every decision, in order, exactly as emitted
    assert all(r["dropped_chunks"] == 0 for r in emitted)
    starts = [r["utt_start_s"] for r in emitted]
    assert starts == sorted(starts)  # stream time runs on across loops
    assert rss_end - rss_start < RSS_GROWTH_LIMIT_MB, figures


def test_audit_log_survives_kill_9(tmp_path):
    audio, _ = speech_stream(n_utterances=UTTERANCES_PER_LOOP)
    wav = write_wav(tmp_path / "talk.wav", audio)
    log_path = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, FAKE_CLI, "--fake-delay", "0.001", "--from-file", str(wav), "--loop", "0",
         "--json", "--log", str(log_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if log_path.exists() and log_path.read_bytes().count(b"\n") >= 60:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    raw = log_path.read_bytes()
    complete = raw.count(b"\n")
    records = read_audit_log(log_path)
    assert len(records) == complete >= 60  # every complete line, and only a partial tail skipped
    assert all(r["type"] == "decision" and r["decision"] in listen.DECISIONS for r in records)
    printed = [json.loads(line) for line in out.decode().splitlines() if line.endswith("}")]
    assert printed and all(p in records for p in printed)  # logged before it was printed

    # the worst case of a kill mid-write: the last line cut anywhere
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    for cut in (last_start + 1, (last_start + len(raw)) // 2, len(raw) - 1):
        log_path.write_bytes(raw[:cut])
        assert read_audit_log(log_path) == records[:-1]
    # a restart after a cut line appends on a fresh line (the last cut lost only the newline,
    # so ending that line restores the whole record)
    with AuditLog(log_path) as audit:
        audit.write({"type": "event", "event": "restarted"})
    after = read_audit_log(log_path)
    assert after[:-1] == records and after[-1]["event"] == "restarted"
    log_path.write_bytes(raw[: last_start + 5])
    with AuditLog(log_path) as audit:
        audit.write({"type": "event", "event": "restarted"})
    after = read_audit_log(log_path)  # the broken line is skipped, the new record kept
    assert after[:-1] == records[:-1] and after[-1]["event"] == "restarted"
