"""`voicegate listen`: the microphone source, the loop, faults and the audit log (the endpointer
and file sources: test_stream.py)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from listen_fakes import SR, FakeGate, FlakySource, GrantingGate, LossySource, speech_stream
from synth import write_wav

from voicegate.device import listen, listener as loop
from voicegate.device.audio import NoSpeechError
from voicegate.device.audit import AuditError, AuditLog, read_audit_log
from voicegate.device.contract import DECISION_EXIT, EXIT_STOPPED as STOPPED
from voicegate.device.stream import ArraySource, AudioDeviceError, MicrophoneSource


def decisions(records):
    return [r for r in records if r.get("type") == "decision"]


def stable(record):
    return {k: v for k, v in record.items() if k not in ("ts", "latency_ms", "decision_id")}


def listener(gate, sources, **kw):
    """A Listener over a list of sources (each reopen takes the next; an Exception raises)."""
    queue = list(sources)

    def open_source():
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    records = []
    return listen.Listener(gate, open_source, emit=records.append, **kw), records


def parse(*argv):
    return listen.build_parser().parse_args([str(a) for a in argv])


# --- the microphone source --------------------------------------------------------------------
def test_listen_decisions_are_chunk_size_invariant(stream):
    audio, _ = stream
    runs = []
    for chunk in (160, 1000, 4096):
        lst, records = listener(FakeGate(), [ArraySource(audio, chunk)])
        assert lst.run() == STOPPED
        runs.append([stable(r) for r in records])
    assert len(runs[0]) == 4
    assert runs[0] == runs[1] == runs[2]
    assert len({r["p_allow"] for r in runs[0]}) == 4  # the fake gate saw four different utterances


class FakeStream:
    """A stand-in for sounddevice.InputStream: a thread calls the callback with blocks."""

    def __init__(self, blocks, callback):
        self.blocks, self.callback, self.active = blocks, callback, False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for b in self.blocks:
            self.callback(b[:, None], len(b), None, None)
        self.active = False  # the device went away

    def start(self):
        self.active = True
        self._thread.start()

    def stop(self):
        self._thread.join(5)

    def close(self):
        pass


class FakeSounddevice:
    def __init__(self, blocks):
        self.blocks = blocks
        self.default = type("D", (), {"device": [1, 3]})()

    def query_devices(self, device=None, kind=None):
        devs = [
            {"index": 0, "name": "hdmi out", "max_input_channels": 0, "default_samplerate": 48000.0},
            {"index": 1, "name": "USB mic", "max_input_channels": 1, "default_samplerate": 16000.0},
            {"index": 2, "name": "array mic", "max_input_channels": 4, "default_samplerate": 48000.0},
        ]
        if kind is None:
            return devs
        if device in (None, 1, 2):
            return devs[1 if device is None else device]
        raise ValueError(f"No input device matching {device!r}")

    def InputStream(self, callback, **kw):
        assert kw["samplerate"] == SR and kw["channels"] == 1 and kw["dtype"] == "float32"
        return FakeStream(self.blocks, callback)


def test_microphone_source_reports_a_missing_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSounddevice([]))
    with pytest.raises(AudioDeviceError, match="no input device 'nope'"):
        MicrophoneSource(device="nope").open()


def test_microphone_source_overflow_drops_oldest_and_is_logged(monkeypatch, caplog):
    blocks = [np.full(1600, i, np.float32) for i in range(40)]
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSounddevice(blocks))
    src = MicrophoneSource(device="1", queue_seconds=1.0, stall_seconds=0.2)  # 10 chunks of room
    src.open()
    src._stream._thread.join(5)  # the consumer was "too slow": the callback filled the queue
    assert src.dropped == 30
    got = []
    with pytest.raises(AudioDeviceError, match="stopped"):
        for c in src:
            got.append(int(c[0]))
    assert got == list(range(30, 40))  # the newest audio survived

    monkeypatch.setitem(sys.modules, "sounddevice", FakeSounddevice(blocks))
    mic = MicrophoneSource(queue_seconds=1.0, stall_seconds=0.2).open()
    mic._stream._thread.join(5)
    lst, records = listener(FakeGate(), [mic])
    lst.exit_on_error = True
    with caplog.at_level(logging.WARNING):
        assert lst.run() == listen.EXIT_DEVICE
    assert "dropped 30 oldest chunk" in caplog.text
    assert lst.stats.dropped_chunks == 30


def test_missing_portaudio_is_one_line_exit_6(tmp_path, monkeypatch, capsys):
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])  # (not syspath_prepend: it needs a real pkg_resources)
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    assert listen.run(parse(), gate_factory=lambda a: FakeGate()) == listen.EXIT_DEVICE
    assert listen.run(parse("--list-devices")) == listen.EXIT_DEVICE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("PortAudio library not found" in e for e in err)
    assert "Traceback" not in "".join(err)


def test_list_devices_prints_inputs_only(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSounddevice([]))
    assert listen.run(parse("--list-devices")) == listen.EXIT_INFO  # information, not a decision: never 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "USB mic" in out[0] and out[0].startswith("*") and "array mic" in out[1]


# --- the loop ------------------------------------------------------------------------------------
def test_from_file_gives_one_decision_per_utterance(tmp_path, stream, capsys):
    audio, spans = stream
    wav = write_wav(tmp_path / "talk.wav", audio)
    log_path = tmp_path / "audit.jsonl"
    assert listen.run(parse("--from-file", wav, "--log", log_path), gate_factory=lambda a: FakeGate()) == STOPPED
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(spans)
    assert all(line.split()[1] in ("GRANTED", "DENIED", "UNCERTAIN") for line in lines)
    records = read_audit_log(log_path)
    assert len(records) == len(spans)
    for r, (a, b) in zip(records, spans):
        assert r["utt_start_s"] < b and r["utt_end_s"] > a  # each decision covers its utterance
        for key in ("ts", "decision", "p_allow", "uncertainty", "windows", "latency_ms", "model_sha256",
                    "utt_start_s", "utt_end_s", "reason", "dropped_chunks"):
            assert key in r

    # --json: one object per line, same decisions; --max-utterances stops early, and the exit
    # code is then the last decision's (0 only for GRANTED)
    for n in (1, 2, 3):
        args = parse("--from-file", wav, "--json", "--chunk-samples", 4096, "--max-utterances", n)
        code = listen.run(args, gate_factory=lambda a: FakeGate())
        objs = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert [stable(o) for o in objs] == [stable(r) for r in records[:n]]
        assert code == DECISION_EXIT[objs[-1]["decision"]], (n, code, objs[-1]["decision"])


class ScriptedGate(FakeGate):
    """Decides the utterances in the order given (then DENIED); NoSpeechError for "no speech"."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)

    def decide_audio(self, a, speech_probs=None):
        d = super().decide_audio(a)
        nxt = self.script.pop(0) if self.script else "DENIED"
        if nxt == "no speech":
            raise NoSpeechError("no speech found")
        d.decision = nxt
        return d


@pytest.mark.parametrize("script, n, code", [
    (["GRANTED", "DENIED"], 2, 1),  # the LAST decision counts, not any GRANTED one
    (["DENIED", "GRANTED"], 2, 0),
    (["UNCERTAIN", "GRANTED", "GRANTED"], 1, 3),
    (["no speech", "GRANTED"], 1, 0),  # a sound that was not speech is no decision: not counted
    (["GRANTED", "GRANTED", "GRANTED", "GRANTED"], 4, 0),  # the 4th is decided in the end-of-stream flush
    (["GRANTED", "GRANTED", "GRANTED", "GRANTED"], 5, STOPPED),  # never reached: no decision code
    (["GRANTED", "GRANTED", "GRANTED", "GRANTED"], None, STOPPED),  # the stream ended: never 0
])
def test_exit_0_only_for_a_granted_last_decision_at_max_utterances(stream, script, n, code):
    """`listen --max-utterances N && open` opens only when the N-th decision is GRANTED."""
    audio, spans = stream
    assert len(spans) == 4
    lst, records = listener(ScriptedGate(script), [ArraySource(audio, 1600)], max_utterances=n)
    assert lst.run() == code
    decided = [d for d in script if d != "no speech"]
    assert [r["decision"] for r in records] == decided[: n or None][: len(records)]
    assert len(records) == min(n or 4, 4 - script.count("no speech"))


def test_a_device_failure_at_the_limit_exits_with_that_denial(stream):
    """The utterance a failing device cuts short is DENIED and counts: no reopen, no extra decision."""
    audio, spans = stream
    mid_first = int((spans[0][0] + 0.6) * SR) // 1600
    sources = [FlakySource(audio, fail_after=mid_first, error=AudioDeviceError("unplugged")),
               FlakySource(audio, name="back")]
    lst, records = listener(GrantingGate(), sources, max_utterances=1, sleep=lambda s: None)
    assert lst.run() == 1
    assert [r["decision"] for r in records] == ["DENIED"] and "unplugged" in records[0]["reason"]
    assert lst.stats.reopens == 0


def test_gate_errors_fail_closed(stream, tmp_path, caplog):
    audio, _ = stream

    class BadGate(FakeGate):
        def decide_audio(self, a, speech_probs=None):
            self.calls += 1
            if self.calls == 1:
                raise NoSpeechError("no speech found")
            if self.calls == 2:
                raise RuntimeError("onnxruntime exploded")
            if self.calls == 3:
                return {"decision": "OPEN", "p_allow": 1.0}
            return super().decide_audio(a)

    audit = AuditLog(tmp_path / "audit.jsonl")
    lst, records = listener(BadGate(), [ArraySource(audio)], audit=audit)
    assert lst.run() == STOPPED
    audit.close()
    # no speech after all: no decision (nothing opens), only an event in the audit log
    assert [r["decision"] for r in records[:2]] == ["DENIED"] * 2
    assert "onnxruntime exploded" in records[0]["reason"]
    assert "invalid decision" in records[1]["reason"]
    assert len(records) == 3
    logged = read_audit_log(tmp_path / "audit.jsonl")
    assert logged[0]["type"] == "event" and logged[0]["event"] == "no_speech"
    assert "no speech found" in logged[0]["reason"] and decisions(logged) == records
    # denied without a score, still decisions: an id each (the audit log, the on-deny hook)
    ids = [r.get("decision_id") for r in records]
    assert all(ids) and len(set(ids)) == len(ids)
    # and a failing gate is one line in the log, not a traceback per utterance
    failed = [r for r in caplog.records if "the gate failed" in r.getMessage()]
    assert failed and not any(r.exc_info for r in failed if r.levelno > logging.DEBUG)


def test_exit_codes_for_model_audio_and_log_errors(tmp_path, stream, capsys):
    audio, _ = stream
    wav = write_wav(tmp_path / "talk.wav", audio)

    def no_model(args):
        raise RuntimeError("model not found: /nowhere.onnx")

    assert listen.run(parse("--from-file", wav), gate_factory=no_model) == listen.EXIT_MODEL
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEfmt ")
    assert listen.run(parse("--from-file", tmp_path / "bad.wav"), gate_factory=lambda a: FakeGate()) == 4
    blocked = tmp_path / "file"
    blocked.write_text("")
    args = parse("--from-file", wav, "--log", blocked / "audit.jsonl")
    assert listen.run(args, gate_factory=lambda a: FakeGate()) == listen.EXIT_AUDIT
    assert listen.run(parse("--loop", 3), gate_factory=lambda a: FakeGate()) == 2
    # an unset variable in a unit file (--log "$LOG"): a usage error, not a door without a log
    assert listen.run(parse("--from-file", wav, "--log", ""), gate_factory=lambda a: FakeGate()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(e.startswith("voicegate listen: error:") for e in err)
    assert "--log: empty path" in err[4]
    assert "model not found" in err[0] and "bad.wav" in err[1]


def test_a_full_audit_log_is_exit_7_with_one_line(tmp_path, stream, capsys, monkeypatch):
    import errno

    from voicegate.device import audit as audit_mod
    from voicegate.device.cli import main

    audio, _ = stream
    wav = write_wav(tmp_path / "talk.wav", audio)
    monkeypatch.setattr(listen, "default_gate_factory", lambda args: FakeGate())

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod.AuditLog, "_sync", full)  # the disk fills up at the first record
    assert main(["listen", "--from-file", str(wav), "--log", str(tmp_path / "audit.jsonl")]) == listen.EXIT_AUDIT == 7
    out, err = capsys.readouterr()
    assert out == ""  # nothing is printed that is not in the log
    assert err.count("\n") == 1 and err.startswith("voicegate listen: error: cannot write the audit log")


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_an_audit_log_that_is_no_regular_file_is_exit_7_at_once(kind, tmp_path, capsys, monkeypatch):
    """A FIFO hung listen forever in the open (a review); /dev/full put the lockout state in /dev."""
    from voicegate.device.cli import main

    monkeypatch.setattr(listen, "default_gate_factory", lambda args: FakeGate())
    if kind == "device":
        if not os.path.exists("/dev/full"):
            pytest.skip("needs /dev/full (Linux)")
        log_path = Path("/dev/full")
    else:
        log_path = tmp_path / "audit.jsonl"
        os.mkfifo(log_path) if kind == "fifo" else log_path.mkdir()
    assert main(["listen", "--from-file", str(tmp_path / "x.wav"), "--log", str(log_path)]) == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err, err
    assert not Path(str(log_path) + ".lockout.json").exists()


def test_listen_records_a_loosened_threshold_in_every_record_and_refuses_past_the_bound(tmp_path, stream,
                                                                                         capsys):
    from tiny_gate import write_gate_model

    from voicegate.device.cli import main

    audio, _ = stream
    wav = write_wav(tmp_path / "talk.wav", audio)
    model = write_gate_model(tmp_path / "tiny.onnx", "mc", samples=8)  # validated limit 0.1
    log_path = tmp_path / "audit.jsonl"
    argv = ["listen", "--from-file", str(wav), "--model", str(model), "--log", str(log_path)]
    assert main(argv + ["--uncertainty-limit", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad thresholds" in err and "--unsafe-thresholds" in err
    assert main(argv + ["--uncertainty-limit", "0.12", "--json"]) == STOPPED
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "thresholds looser than the model's" in err
    records = read_audit_log(log_path)
    assert len(decisions(records)) == 4
    assert all(r["thresholds_loosened"] == ["uncertainty_limit 0.1 -> 0.12"] for r in records)
    assert all(json.loads(line)["thresholds_loosened"] for line in out.strip().splitlines())


def test_audit_log_close_failure_is_an_audit_error(tmp_path):
    class FullFile:
        closed = False

        def close(self):
            self.closed = True
            raise OSError(28, "No space left on device")

    log_ = AuditLog(tmp_path / "a.jsonl")
    log_._f.close()
    log_._f = FullFile()
    with pytest.raises(AuditError, match="No space left"):
        log_.close()
    assert listen._close_audit(None, 0) == 0


def test_listen_help_is_not_exit_0(capsys):
    assert listen.main(["--help"]) == listen.EXIT_INFO != 0
    assert "exit codes:" in capsys.readouterr().out


def test_keyboard_interrupt_denies_in_progress_and_exits_8(tmp_path, stream):
    audio, spans = stream
    stop_at = int((spans[1][0] + 0.6) * SR) // 1600  # in the middle of the second utterance

    src = FlakySource(audio, fail_after=stop_at, error=KeyboardInterrupt())
    log_path = tmp_path / "audit.jsonl"
    code = listen.run(
        parse("--log", log_path), gate_factory=lambda a: FakeGate(), source_factory=lambda a: (lambda: src)
    )
    assert code == STOPPED and src.closed
    records = read_audit_log(log_path)
    assert [r["decision"] for r in records][-1] == "DENIED"
    assert len(records) == 2 and "stopped mid-utterance" in records[-1]["reason"]


# --- faults --------------------------------------------------------------------------------------
def test_device_failure_denies_in_progress_and_retries_with_backoff(stream, tmp_path):
    audio, spans = stream
    mid_second = int((spans[1][0] + 0.6) * SR) // 1600
    gone = AudioDeviceError("device unplugged")
    sources = [
        FlakySource(audio, fail_after=mid_second, error=gone),
        AudioDeviceError("no input device"),
        AudioDeviceError("no input device"),
        FlakySource(audio, fail_after=None, name="back"),
    ]
    sleeps = []
    audit = AuditLog(tmp_path / "audit.jsonl")
    lst, records = listener(FakeGate(), sources, audit=audit, sleep=sleeps.append)
    assert lst.run() == STOPPED
    audit.close()
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(records) == 1 + 1 + 4  # one decided, one denied mid-utterance, then all four again
    assert records[1]["decision"] == "DENIED" and "device unplugged" in records[1]["reason"]
    assert records[1]["utt_cut"] == "aborted"
    logged = read_audit_log(tmp_path / "audit.jsonl")
    assert decisions(logged) == records
    events = [r["event"] for r in logged if r["type"] == "event"]
    assert events == ["source_error", "source_reopened"]
    assert lst.stats.source_errors == 1 and lst.stats.reopens == 1


@pytest.mark.parametrize("kind,why", [("dropped", "1 chunk(s) dropped"), ("status_flags", "1 PortAudio status flag")])
def test_an_utterance_with_lost_audio_is_denied_and_says_why(stream, tmp_path, kind, why):
    audio, spans = stream
    mid_second = int((spans[1][0] + 0.6) * SR) // 1600
    gate = GrantingGate()
    audit = AuditLog(tmp_path / "audit.jsonl")
    lst, records = listener(gate, [LossySource(audio, at=mid_second, kind=kind)], audit=audit)
    assert lst.run() == STOPPED
    audit.close()
    assert [r["decision"] for r in records] == ["GRANTED", "DENIED", "GRANTED", "GRANTED"]
    assert [r["audio_lost"] for r in records] == [False, True, False, False]
    assert why in records[1]["reason"] and records[1]["p_allow"] is None
    assert gate.calls == 3  # the gapped audio never reached the gate
    assert lst.stats.audio_lost == 1
    assert read_audit_log(tmp_path / "audit.jsonl") == [dict(r) for r in records]


def test_audio_lost_in_a_pause_denies_nobody(stream):
    audio, spans = stream
    in_pause = int((spans[1][0] - 0.7) * SR) // 1600  # 0.7 s before the second voice starts
    lst, records = listener(GrantingGate(), [LossySource(audio, at=in_pause)])
    assert lst.run() == STOPPED
    assert [r["decision"] for r in records] == ["GRANTED"] * 4
    assert not any(r["audio_lost"] for r in records)


def test_a_portaudio_status_flag_from_the_microphone_denies_its_utterance(monkeypatch, stream):
    audio, spans = stream
    blocks = [audio[i:i + 1600] for i in range(0, audio.size - 1599, 1600)]
    flagged = int((spans[2][0] + 0.5) * SR) // 1600

    class FlaggingStream(FakeStream):
        def _run(self):
            for i, b in enumerate(self.blocks):
                self.callback(b[:, None], len(b), None, "input overflow" if i == flagged else None)
            self.active = False

    sd = FakeSounddevice(blocks)
    sd.InputStream = lambda callback, **kw: FlaggingStream(blocks, callback)
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    mic = MicrophoneSource(queue_seconds=60.0, stall_seconds=0.2).open()
    lst, records = listener(GrantingGate(), [mic], exit_on_error=True)
    assert lst.run() == listen.EXIT_DEVICE  # the fake stream ends: the device "stopped"
    assert mic.status_flags == 1
    third = [r for r in records if r["utt_start_s"] <= spans[2][0] + 0.5 <= r["utt_end_s"]]
    assert len(third) == 1 and third[0]["decision"] == "DENIED" and third[0]["audio_lost"]
    assert "PortAudio status flag" in third[0]["reason"]


def test_backoff_doubles_to_the_cap_and_resets_after_audio():
    delays = loop.Backoff().delays()
    assert [next(delays) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    audio, _ = speech_stream(n_utterances=1)
    err = AudioDeviceError("glitch")
    # fails, reopens (0.5), delivers audio, fails again: the back-off starts again at 0.5
    sources = [FlakySource(audio, fail_after=3, error=err), FlakySource(audio, fail_after=3, error=err),
               FlakySource(audio)]
    sleeps = []
    lst, _ = listener(FakeGate(), sources, sleep=sleeps.append)
    assert lst.run() == STOPPED and sleeps == [0.5, 0.5]


def test_exit_on_error_and_permanent_errors_stop(stream):
    audio, _ = stream
    for kw, err in (({"exit_on_error": True}, AudioDeviceError("gone")),
                    ({}, AudioDeviceError("no PortAudio", permanent=True))):
        sleeps = []
        lst, _ = listener(FakeGate(), [FlakySource(audio, fail_after=5, error=err)], sleep=sleeps.append, **kw)
        assert lst.run() == listen.EXIT_DEVICE and sleeps == []
    lst, _ = listener(FakeGate(), [FlakySource(audio, fail_after=5, error=AudioDeviceError("x"))]
                      + [AudioDeviceError("still gone")] * 3, sleep=lambda s: None, max_reopen_attempts=3)
    assert lst.run() == listen.EXIT_DEVICE


# --- audit log -----------------------------------------------------------------------------------
def test_audit_log_reader_skips_a_partial_last_line_and_writer_recovers(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log_:
        for i in range(3):
            log_.write({"type": "decision", "decision": "DENIED", "n": i, "p_allow": np.float32(0.25),
                        "uncertainty": float("nan")})
    with open(path, "ab") as f:
        f.write(b'{"type":"decision","decision":"GRA')  # a write cut by a crash
    records = read_audit_log(path)
    assert [r["n"] for r in records] == [0, 1, 2]
    assert records[0]["p_allow"] == 0.25 and records[0]["uncertainty"] is None
    with AuditLog(path) as log_:  # a restart: the next record goes on a fresh line
        log_.write({"type": "decision", "decision": "GRANTED", "n": 3})
    assert [r["n"] for r in read_audit_log(path)] == [0, 1, 2, 3]
    assert path.stat().st_mode & 0o777 == 0o600  # it names who came to the door: the owner's only
