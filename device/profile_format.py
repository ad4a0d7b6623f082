"""One enrolled person's profile file, ``NAME.json`` (JSON, mode 0600), and its checks. The
store that keeps these files is :mod:`.profiles`.

A profile holds:

- ``name``, ``created``, ``updated`` (UTC, ISO 8601);
- ``encoder_sha256`` and ``embedding_dim``: the encoder the embeddings came from. A profile
  made with another encoder is refused ("re-enrol NAME"): embeddings of two encoders are not
  comparable;
- ``sessions``: one per enrolment (``voicegate enroll`` on an existing name adds one unless
  ``--replace``), each with its date, speech seconds, sources (file names or ``mic``) and its
  per-window embeddings (mean over the encoder's S samples, L2-normalised; float32,
  little-endian, base64). The scoring uses their normalised mean (the centroid);
- ``checksum``: sha256 of the rest of the document in canonical JSON. A corrupted or
  hand-edited file is refused. (This detects damage and edits; it is no signature: whoever can
  write the directory can forge a profile, hence 0700/0600.)

Every problem is a :class:`ProfileError` (a ModelError: exit 5): no access, never a guess.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass, field

import numpy as np

from .contract import ModelError

FORMAT = "voicegate-profile"
FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ProfileError(ModelError):
    """A profile or the store cannot be used (missing, corrupt, other encoder, empty store)."""


class EmptyStoreError(ProfileError):
    """No one is enrolled: there is nobody to let in (never an open door)."""


class NameTakenError(ProfileError):
    """``rename`` onto a name that has a profile already: a usage error (exit 2), nothing changed."""


class OtherEncoderError(ProfileError):
    """The profile was made with another encoder (another sha256 or embedding size): re-enrol."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")



def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ProfileError(
            f"invalid profile name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _encode(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str, dim: int) -> np.ndarray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if dim < 1 or a.size == 0 or a.size % dim:
        raise ValueError(f"{a.size} values do not make rows of {dim}")
    return check_rows(a.reshape(-1, dim), dim)


UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed for a stored (float32, L2-normalised) window embedding


def check_rows(a: np.ndarray, dim: int) -> np.ndarray:
    """``a`` if it is (n >= 1, dim) finite unit-length rows (window embeddings), else ValueError.

    An all-zero or rescaled embedding, or rows cut at a wrong ``embedding_dim``, is refused: such
    a profile would score every voice as nobody (or as anybody) instead of failing closed."""
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != dim:
        raise ValueError(f"embeddings of shape {a.shape}, want (n, {dim})")
    if not np.all(np.isfinite(a)):
        raise ValueError("non-finite embedding values")
    norms = np.linalg.norm(a.astype(np.float64), axis=1)
    if np.any(np.abs(norms - 1.0) > UNIT_TOLERANCE):
        raise ValueError(f"embeddings are not unit-length rows of {dim} (norms "
                         f"{norms.min():.3g}-{norms.max():.3g}): a wrong embedding_dim, or edited values")
    return a


def check_seconds(value) -> float:
    v = float(value)
    if not (np.isfinite(v) and v >= 0.0):
        raise ValueError(f"speech_seconds {value!r} is not a duration")
    return v


def checksum(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Session:
    """One enrolment: the per-window embeddings (n, D) and where they came from."""

    embeddings: np.ndarray
    speech_seconds: float
    sources: list = field(default_factory=list)
    date: str = field(default_factory=utc_now)

    def to_dict(self) -> dict:
        return {"date": self.date, "speech_seconds": round(float(self.speech_seconds), 3),
                "sources": list(self.sources), "windows": int(self.embeddings.shape[0]),
                "embeddings": _encode(self.embeddings)}


@dataclass
class Profile:
    name: str
    encoder_sha256: str
    embedding_dim: int
    sessions: list = field(default_factory=list)
    created: str = field(default_factory=utc_now)
    updated: str = field(default_factory=utc_now)

    @property
    def speech_seconds(self) -> float:
        return float(sum(s.speech_seconds for s in self.sessions))

    @property
    def embeddings(self) -> np.ndarray:
        return np.concatenate([s.embeddings for s in self.sessions])

    def centroid(self) -> np.ndarray:
        """c = normalise(mean of the enrolment embeddings), (D,)."""
        return _normalise_rows(self.embeddings.astype(np.float64).mean(axis=0))

    def mismatch(self, encoder_sha256: str | None = None, embedding_dim: int | None = None) -> str | None:
        """Why the door cannot use this profile with that encoder (None if it can): made with
        another encoder (sha256), or embeddings of another size. The one check ``load``,
        ``add_session`` and ``voicegate profiles list`` share."""
        redo = f"re-enrol {self.name} with: voicegate enroll {self.name} --replace FILE..."
        if encoder_sha256 is not None and self.encoder_sha256 != encoder_sha256:
            return (f"profile {self.name!r} was made with another encoder (sha256 {self.encoder_sha256[:12]}..., "
                    f"this one is {encoder_sha256[:12]}...): {redo}")
        if embedding_dim is not None and self.embedding_dim != int(embedding_dim):
            return f"profile {self.name!r} holds {self.embedding_dim}-d embeddings, the encoder makes {int(embedding_dim)}-d: {redo}"
        return None

    def to_json(self) -> str:
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
               "encoder_sha256": self.encoder_sha256, "embedding_dim": int(self.embedding_dim),
               "created": self.created, "updated": self.updated,
               "speech_seconds": round(self.speech_seconds, 3),
               "sessions": [s.to_dict() for s in self.sessions]}
        doc["checksum"] = checksum(doc)
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "Profile":
        """The profile in ``text`` (ProfileError unless every field has its type and range: a
        re-checksummed file with ``embedding_dim: "128"`` or null embeddings is refused too)."""
        try:
            try:
                doc = json.loads(text)
            except RecursionError:
                raise ValueError("not a voicegate profile (nested too deep)") from None
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError("not a voicegate profile")
            version = doc.get("format_version")
            if type(version) is not int or version != FORMAT_VERSION:
                raise ValueError(f"format version {version!r}, this voicegate reads {FORMAT_VERSION}")
            if doc.get("checksum") != checksum(doc):
                raise ValueError("checksum mismatch: the file was corrupted or edited by hand")
            dim = _typed(doc, "embedding_dim", int)
            if dim < 1:
                raise ValueError(f"embedding_dim {dim} is not a size")
            sessions = [_session(s, dim) for s in _typed(doc, "sessions", list)]
            if not sessions:
                raise ValueError("no enrolment sessions")
            if "speech_seconds" in doc:  # the total is recomputed from the sessions; still a duration
                check_seconds(_typed(doc, "speech_seconds", float))
            sha = _typed(doc, "encoder_sha256", str)
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError("encoder_sha256 is not a sha256")
            return cls(check_name(_typed(doc, "name", str)), sha, dim, sessions,
                       _typed(doc, "created", str), _typed(doc, "updated", str))
        except ProfileError:
            raise
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:  # a 400-digit number;
            # nesting that json.loads just read but the checksum's json.dumps cannot write back
            why = "nested too deep" if isinstance(e, RecursionError) else e
            raise ProfileError(f"{where}: unusable profile ({why}); remove it or re-enrol") from None


_JSON_TYPES = {int: "a whole number", float: "a number", str: "text", list: "a list", dict: "an object"}


def _typed(doc, key: str, kind):
    """``doc[key]`` if it is a ``kind`` (a number is never a bool; an int counts as a float)."""
    if not isinstance(doc, dict) or key not in doc:
        raise ValueError(f"{key} is missing")
    v = doc[key]
    ok = (type(v) in (int, float)) if kind is float else (type(v) is kind)
    if not ok:
        raise ValueError(f"{key} is {type(v).__name__}, not {_JSON_TYPES[kind]}")
    return v


def _session(s, dim: int) -> Session:
    """One stored enrolment session, every field checked (see :meth:`Profile.from_json`)."""
    if not isinstance(s, dict):
        raise ValueError("a session is not an object")
    emb = _decode(_typed(s, "embeddings", str), dim)
    sources = _typed(s, "sources", list) if "sources" in s else []
    if not all(isinstance(x, str) for x in sources):
        raise ValueError("sources are not file names")
    if "windows" in s and _typed(s, "windows", int) != emb.shape[0]:
        raise ValueError(f"a session says {s['windows']} windows but holds {emb.shape[0]}")
    return Session(emb, check_seconds(_typed(s, "speech_seconds", float)), list(sources), _typed(s, "date", str))

