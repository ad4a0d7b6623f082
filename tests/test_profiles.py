"""The profile store: round trip, atomic 0600 writes, refusals, locking, and `voicegate profiles`."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import stat

import numpy as np
import pytest

from voicegate.device import profiles_cli
from voicegate.device.profiles import (
    PROFILES_ENV,
    EmptyStoreError,
    ProfileError,
    ProfileStore,
    Session,
    resolve_dir,
)

SHA_A, SHA_B = "a" * 64, "b" * 64
DIM = 16


def session(seed: int = 0, n: int = 6, seconds: float = 12.0) -> Session:
    e = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return Session(e / np.linalg.norm(e, axis=1, keepdims=True), seconds, [f"rec{seed}.wav"])


def test_round_trip_keeps_embeddings_dates_and_encoder(tmp_path):
    store = ProfileStore(tmp_path / "p")
    s = session(1)
    store.add_session("alice", SHA_A, DIM, s)
    prof = store.load("alice", SHA_A)
    assert prof.name == "alice" and prof.encoder_sha256 == SHA_A and prof.embedding_dim == DIM
    np.testing.assert_array_equal(prof.embeddings, s.embeddings)  # float32 round trip is exact
    assert prof.speech_seconds == pytest.approx(12.0)
    assert prof.sessions[0].date == s.date and prof.sessions[0].sources == ["rec1.wav"]
    c = prof.centroid()
    assert c.shape == (DIM,) and np.linalg.norm(c) == pytest.approx(1.0)


def test_files_are_0600_in_a_0700_directory_and_nothing_is_left_behind(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session())
    assert stat.S_IMODE(os.stat(store.path("alice")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert sorted(os.listdir(store.root)) == [".lock", "alice.json"]  # no temporary file


def test_a_failed_write_leaves_the_old_profile_intact(tmp_path, monkeypatch):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session(1))
    before = store.path("alice").read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ProfileError, match="cannot write"):
        store.add_session("alice", SHA_A, DIM, session(2))
    assert store.path("alice").read_bytes() == before
    assert sorted(os.listdir(store.root)) == [".lock", "alice.json"]


def test_enrolling_again_adds_a_session_unless_replace(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session(1, n=4, seconds=10))
    prof = store.add_session("alice", SHA_A, DIM, session(2, n=5, seconds=11))
    assert len(prof.sessions) == 2 and prof.embeddings.shape == (9, DIM)
    assert prof.speech_seconds == pytest.approx(21.0)
    prof = store.add_session("alice", SHA_A, DIM, session(3, n=3), replace=True)
    assert len(store.load("alice").sessions) == 1 and prof.embeddings.shape == (3, DIM)


def test_hand_edited_file_is_refused_by_its_checksum(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session())
    doc = json.loads(store.path("alice").read_text())
    doc["sessions"][0]["speech_seconds"] = 99.0  # valid JSON, plausible value: only the checksum knows
    store.path("alice").write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match="checksum mismatch"):
        store.load("alice")


@pytest.mark.parametrize("damage", [b"", b"{not json", b"[1, 2]", b"\xff\xfe\x00garbage"])
def test_corrupted_file_is_refused(tmp_path, damage):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session())
    store.path("alice").write_bytes(damage)
    with pytest.raises(ProfileError, match="alice"):
        store.load_all(SHA_A)  # one bad profile refuses the whole store (fail closed)


def test_truncated_file_is_refused(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session())
    data = store.path("alice").read_bytes()
    store.path("alice").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProfileError, match="unusable profile"):
        store.load("alice")


def test_profile_from_another_encoder_is_refused_with_re_enrol(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session())
    with pytest.raises(ProfileError, match="another encoder.*re-enrol alice"):
        store.load_all(SHA_B)
    with pytest.raises(ProfileError, match="re-enrol"):  # adding to it is refused too ...
        store.add_session("alice", SHA_B, DIM, session(2))
    prof = store.add_session("alice", SHA_B, DIM, session(2), replace=True)  # ... replacing is not
    assert prof.encoder_sha256 == SHA_B and len(prof.sessions) == 1


def test_a_file_renamed_by_hand_is_refused(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session())
    os.rename(store.path("alice"), store.root / "mallory.json")
    with pytest.raises(ProfileError, match="holds the profile of 'alice'"):
        store.load_all(SHA_A)


def test_empty_or_missing_store_is_an_error_not_an_open_door(tmp_path):
    with pytest.raises(EmptyStoreError, match="does not exist yet"):
        ProfileStore(tmp_path / "none").load_all(SHA_A)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyStoreError, match="holds no profiles"):
        ProfileStore(tmp_path / "empty").load_all(SHA_A)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65, "nul\x00", "sp ace"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ProfileError, match="invalid profile name"):
        ProfileStore(tmp_path).add_session(name, SHA_A, DIM, session())
    assert not any(tmp_path.rglob("*.json"))


def test_rename_and_remove(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session(1))
    store.add_session("bob", SHA_A, DIM, session(2))
    with pytest.raises(ProfileError, match="exists already"):
        store.rename("alice", "bob")
    store.rename("alice", "carol")
    assert store.names() == ["bob", "carol"] and store.load("carol").name == "carol"
    store.remove("bob")
    assert store.names() == ["carol"]
    with pytest.raises(ProfileError, match="no profile named 'bob'"):
        store.remove("bob")


def test_signature_changes_with_every_change(tmp_path):
    store = ProfileStore(tmp_path / "p")
    sigs = [store.signature()]
    store.add_session("alice", SHA_A, DIM, session(1))
    sigs.append(store.signature())
    store.add_session("alice", SHA_A, DIM, session(2))
    sigs.append(store.signature())
    store.rename("alice", "bob")
    sigs.append(store.signature())
    store.remove("bob")
    assert len(set(sigs)) == 4 and store.signature() == sigs[0]


def test_directory_from_flag_env_or_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(PROFILES_ENV, raising=False)
    assert resolve_dir() == tmp_path / "xdg" / "voicegate" / "profiles"
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path / "env"))
    assert resolve_dir() == tmp_path / "env"
    assert resolve_dir(tmp_path / "flag") == tmp_path / "flag"


def _enrol_many(root: str, worker: int, count: int) -> None:
    store = ProfileStore(root)
    for i in range(count):
        store.add_session("shared", SHA_A, DIM, session(100 * worker + i, n=2))


def _read_many(root: str, count: int, out) -> None:
    store = ProfileStore(root)
    seen = 0
    for _ in range(count):
        seen = max(seen, len(store.load_all(SHA_A)[0].sessions))  # raises on a half-written file
    out.put(seen)


def test_concurrent_enrol_and_read_lose_nothing_and_corrupt_nothing(tmp_path):
    root = str(tmp_path / "p")
    ProfileStore(root).add_session("shared", SHA_A, DIM, session(0, n=2))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_enrol_many, args=(root, w, 8)) for w in (1, 2, 3)]
    procs.append(ctx.Process(target=_read_many, args=(root, 60, out)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert out.get(timeout=5) >= 1
    prof = ProfileStore(root).load("shared", SHA_A)
    assert len(prof.sessions) == 1 + 3 * 8  # every read-modify-write kept the others' sessions


# --- voicegate profiles ------------------------------------------------------------------------
def cli(*argv: str) -> int:
    p = argparse.ArgumentParser()
    profiles_cli.add_arguments(p)
    return profiles_cli.run(p.parse_args(list(argv)))


def test_profiles_command(tmp_path, capsys, monkeypatch):
    root = str(tmp_path / "p")
    missing = str(tmp_path / "no-encoder.onnx")
    assert cli("--profiles", "", "list") == 5  # an empty store name is refused, never "the default"
    monkeypatch.setenv("VOICEGATE_PROFILES", "")
    assert cli("list") == 5  # as at the door (enroll-check, listen)
    monkeypatch.delenv("VOICEGATE_PROFILES")
    assert "is empty" in capsys.readouterr().err
    assert cli("--profiles", root, "list") == 5  # no store yet
    assert "does not exist (nobody enrolled yet" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert cli("--profiles", str(tmp_path / "afile"), "list") == 5  # a file where the store should be
    assert "is not a folder (a file, or a link to something missing" in capsys.readouterr().err
    assert cli("--profiles", root, "remove", "alice") == 5  # and a mistyped remove does not create one
    assert cli("--profiles", root, "rename", "alice", "bob") == 5
    assert not (tmp_path / "p").exists()
    store = ProfileStore(root)
    store.add_session("alice", SHA_A, DIM, session(1))
    store.add_session("bob", SHA_A, DIM, session(2))
    assert cli("--profiles", root, "--json", "--model", missing, "list") == 5  # a named encoder must exist
    capsys.readouterr()
    monkeypatch.setattr(profiles_cli, "_encoder_identity", lambda args: ("b" * 64, DIM))  # the door's encoder is another
    assert cli("--profiles", root, "list") == 5  # the door would refuse every decision: a health check sees it
    cap = capsys.readouterr()
    assert "made with another encoder" in cap.out and "re-enrol alice with" in cap.out and "refuses every decision" in cap.err
    monkeypatch.setattr(profiles_cli, "_encoder_identity", lambda args: (SHA_A, 2 * DIM))  # same sha, other size
    assert cli("--profiles", root, "list") == 5  # the door refuses these profiles: so does the health check
    assert "16-d embeddings, the encoder makes 32-d" in capsys.readouterr().out
    monkeypatch.setattr(profiles_cli, "_encoder_identity", lambda args: (SHA_A, DIM))  # the encoder they were made with
    assert cli("--profiles", root, "--json", "list") == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["profiles"]
    assert doc["door_ready"] is True and {r["status"] for r in rows} == {"ok"}
    assert [r["name"] for r in rows] == ["alice", "bob"]
    assert all(r["speech_seconds"] == 12.0 and r["sessions"] == 1 for r in rows)
    assert cli("list", "--json", "--profiles", root) == 0  # the options after the action work too
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["profiles"]] == ["alice", "bob"]
    assert cli("--profiles", str(tmp_path / "elsewhere"), "list", "--profiles", root) == 0  # the later one wins
    capsys.readouterr()
    assert cli("--profiles", root, "show", "alice") == 0
    out = capsys.readouterr().out
    assert "rec1.wav" in out and SHA_A in out
    assert cli("show", "alice", "--profiles", root) == 0
    assert cli("--profiles", root, "rename", "alice", "bob") == 2  # taken: a usage error, nothing changed
    assert "exists already" in capsys.readouterr().err and store.names() == ["alice", "bob"]
    assert cli("--profiles", root, "rename", "alice", "carol") == 0
    assert cli("--profiles", root, "remove", "bob") == 0
    assert store.names() == ["carol"]
    assert cli("--profiles", root, "remove", "bob") == 5
    assert "no profile named 'bob'" in capsys.readouterr().err
    assert cli("--profiles", root, "show", "../etc") == 2
    store.path("carol").write_text("{}")
    assert cli("--profiles", root, "list") == 5  # one corrupt profile locks the door for everyone
    cap = capsys.readouterr()
    assert "corrupt" in cap.out and "until carol is re-enrolled or removed" in cap.err


def _resigned(path, edit) -> None:
    """Edit a stored profile and recompute its checksum: the damage a checksum cannot see."""
    from voicegate.device.profile_format import checksum

    doc = json.loads(path.read_text())
    edit(doc)
    doc["checksum"] = checksum(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("edit, why", [
    (lambda d: d.update(embedding_dim=DIM // 2), "not unit-length rows of 8"),
    (lambda d: d["sessions"][0].update(embeddings=__import__("base64").b64encode(
        np.zeros((6, DIM), "<f4").tobytes()).decode()), "not unit-length"),
    (lambda d: d["sessions"][0].update(speech_seconds=float("nan")), "not a duration"),
    (lambda d: d["sessions"][0].update(speech_seconds=-5.0), "not a duration"),
    # the wrong JSON type for a field, checksum recomputed: refused, never an internal error
    (lambda d: d["sessions"][0].update(embeddings=None), "embeddings is NoneType, not text"),
    (lambda d: d.update(embedding_dim=str(d["embedding_dim"])), "embedding_dim is str, not a whole number"),
    (lambda d: d.update(embedding_dim=float(d["embedding_dim"])), "embedding_dim is float"),
    (lambda d: d.update(embedding_dim=True), "embedding_dim is bool"),
    (lambda d: d.update(format_version=True), "format version True"),
    (lambda d: d["sessions"][0].update(speech_seconds="12"), "speech_seconds is str"),
    (lambda d: d["sessions"][0].update(speech_seconds=True), "speech_seconds is bool"),
    (lambda d: d["sessions"][0].update(date=None), "date is NoneType"),
    (lambda d: d.update(created={"a": 1}), "created is dict"),
    (lambda d: d["sessions"][0].update(sources="abc"), "sources is str"),
    (lambda d: d["sessions"][0].update(sources=[1]), "sources are not file names"),
    (lambda d: d["sessions"][0].update(windows=99), "says 99 windows"),
    (lambda d: d.update(sessions={"0": d["sessions"][0]}), "sessions is dict"),
    (lambda d: d.update(sessions=[7]), "a session is not an object"),
    (lambda d: d.update(encoder_sha256="x" * 64), "not a sha256"),
    (lambda d: d.pop("updated"), "updated is missing"),
    (lambda d: d["sessions"][0].update(speech_seconds=10 ** 400), "too large"),
    (lambda d: d.update(speech_seconds="abc"), "speech_seconds is str"),  # the stored total too
])
def test_a_consistent_looking_but_degenerate_profile_is_refused(tmp_path, edit, why):
    """A wrong embedding_dim, all-zero embeddings or an impossible duration, checksum recomputed:
    the store refuses the profile (exit 5 at the door) instead of scoring with it."""
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session(1))
    _resigned(store.path("alice"), edit)
    with pytest.raises(ProfileError, match=why) as e:
        store.load("alice")
    assert "unusable profile" in str(e.value) and "\n" not in str(e.value)


def test_nesting_the_checksum_cannot_write_back_is_refused_in_one_line(tmp_path, monkeypatch):
    """json.loads can read a depth that json.dumps (the checksum) cannot write (a code review)."""
    from voicegate.device import profile_format

    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session(1))

    def too_deep(doc):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(profile_format, "checksum", too_deep)
    with pytest.raises(ProfileError, match="unusable profile \\(nested too deep\\)"):
        store.load("alice")


def test_a_deeply_nested_profile_file_is_refused_in_one_line(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session(1))
    store.path("alice").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProfileError, match="nested too deep"):
        store.load("alice")


def test_the_store_never_writes_what_it_would_refuse(tmp_path):
    store = ProfileStore(tmp_path / "p")
    with pytest.raises(ProfileError, match="not unit-length"):
        store.add_session("alice", SHA_A, DIM, Session(np.zeros((3, DIM), np.float32), 12.0))
    with pytest.raises(ProfileError, match=r"want \(n, 32\)"):
        store.add_session("alice", SHA_A, 2 * DIM, session(1))
    assert not store.path("alice").exists()


def test_a_profile_of_another_size_is_refused_for_the_encoder(tmp_path):
    store = ProfileStore(tmp_path / "p")
    store.add_session("alice", SHA_A, DIM, session(1))
    assert store.load_all(SHA_A, DIM)[0].name == "alice"
    with pytest.raises(ProfileError, match="16-d embeddings, the encoder makes 128-d"):
        store.load_all(SHA_A, 128)
