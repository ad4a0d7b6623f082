"""The contract between an exported ONNX model and the device runtime.

An exported model carries, in its ONNX ``metadata_props``, everything the device needs to use it
correctly: the feature constants its spectrograms were rendered with, the labels, how its
output samples were made (MC dropout or a deep ensemble), the decision thresholds chosen on the
validation split, where it was trained, and its metrics at export. The runtime refuses a model
whose feature contract differs from the featurizer it is about to use.

The whole contract is stored as JSON under :data:`META_CONTRACT`; a few flat keys repeat the
fields a human (or ``onnx`` tooling) most often wants to see without parsing JSON.

The graph itself: input :data:`INPUT_NAME`, float32 (batch, 1, 224, 224) in [0, 1]; output
:data:`OUTPUT_NAME`, float32 (batch, S): per-sample p(allowed), with S = the T MC-dropout
samples or the K ensemble members. For MC models the T dropout masks are shared by every
window of one batch, so column s is one sampled network for the whole utterance.

No onnx or torch here: the device reads the metadata through onnxruntime, export writes it with
onnx.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .policy import DENIED, GRANTED, UNCERTAIN, UNCERTAINTY_MEASURES, Thresholds

# --- graph interface -----------------------------------------------------------------------
INPUT_NAME = "spectrogram"  # float32 (batch, 1, IMAGE_SIZE, IMAGE_SIZE), values in [0, 1]
OUTPUT_NAME = "p_allow"  # float32 (batch, S): p(allowed) per MC sample / ensemble member
EMBEDDINGS_NAME = "embeddings"  # encoder kind: float32 (batch, S, D), each (b, s) row L2-normalised
KINDS = ("classifier", "encoder")  # classifier: the study's allowed/not-allowed CNN; encoder: voices
LABELS = ("not_allowed", "allowed")  # class index -> name; index 1 is "allowed"
METHODS = ("mc", "ensemble")
CONTRACT_VERSION = 1

# --- metadata_props keys -------------------------------------------------------------------
META_CONTRACT = "voicegate.contract"  # the whole ModelContract as JSON
META_CONTRACT_VERSION = "voicegate.contract_version"
META_FEATURE_VERSION = "voicegate.feature_version"
META_SAMPLE_RATE = "voicegate.sample_rate"
META_METHOD = "voicegate.method"
META_SAMPLES = "voicegate.samples"
META_VERSION = "voicegate.version"

# --- exit codes (the CLI and `listen` share them) ------------------------------------------
EXIT_GRANTED = 0  # GRANTED, and nothing else (listen: its last decision, at --max-utterances)
EXIT_DENIED = 1
EXIT_USAGE = 2
EXIT_UNCERTAIN = 3
EXIT_AUDIO = 4  # the input audio cannot be used (unreadable, no speech, ...)
EXIT_MODEL = 5  # the model is missing, invalid, modified or mismatched (also internal errors)
EXIT_DEVICE = 6  # listen: the audio device is unavailable (no PortAudio, no input device, or it
#                  failed and --exit-on-error was given)
EXIT_AUDIT = 7  # listen: the audit log cannot be opened or written
EXIT_STOPPED = 8  # listen: stopped (Ctrl-C, SIGTERM, end of --from-file): the code carries no decision
EXIT_INFO = 10  # --help or --version was printed: nothing was decided (never 0, which opens)

DECISION_EXIT = {GRANTED: EXIT_GRANTED, DENIED: EXIT_DENIED, UNCERTAIN: EXIT_UNCERTAIN}

# code -> meaning, for the --help epilogs (built from the constants above, never retyped)
EXIT_MEANINGS = {
    EXIT_GRANTED: "GRANTED    the voice is an allowed person's, with low uncertainty",
    EXIT_DENIED: "DENIED     the voice is not an allowed person's (confidently)",
    EXIT_UNCERTAIN: "UNCERTAIN  the model is unsure: please repeat",
    EXIT_USAGE: "usage error (bad command line, or thresholds refused)",
    EXIT_AUDIO: "the input audio cannot be used (unreadable, empty, no speech found); the reason is printed",
    EXIT_MODEL: "the model is missing, invalid, modified (sha256 mismatch) or mismatched (feature version);\n"
                "     or nobody is enrolled, or a profile is unreadable, tampered with or from another encoder;\n"
                "     or an internal error, or the decision could not be written to stdout",
    EXIT_DEVICE: "the audio device is unavailable: PortAudio missing, no input device, or the device\n"
                 "     failed with --exit-on-error (without it, listen retries with back-off)",
    EXIT_AUDIT: "the audit log cannot be opened or written",
    EXIT_STOPPED: "stopped (Ctrl-C, SIGTERM, end of --from-file) before --max-utterances: the exit\n"
                  "     code carries no decision (each decision was a printed line)",
    EXIT_INFO: "help or version printed: nothing was decided",
}
ENROLL_CHECK_EXITS = (EXIT_GRANTED, EXIT_DENIED, EXIT_UNCERTAIN, EXIT_USAGE, EXIT_AUDIO, EXIT_MODEL,
                      EXIT_INFO)
LISTEN_EXITS = (EXIT_GRANTED, EXIT_DENIED, EXIT_UNCERTAIN, EXIT_USAGE, EXIT_AUDIO, EXIT_MODEL,
                EXIT_DEVICE, EXIT_AUDIT, EXIT_STOPPED, EXIT_INFO)


def exit_codes_help(codes=ENROLL_CHECK_EXITS, overrides: Mapping[int, str] | None = None,
                    footer: str = "Anything but 0 means no access (fail closed).") -> str:
    """The 'exit codes:' block of a --help epilog, from :data:`EXIT_MEANINGS`."""
    meanings = {**EXIT_MEANINGS, **(overrides or {})}
    lines = ["exit codes:", *(f"  {code:<2} {meanings[code]}" for code in codes)]
    return "\n".join(lines + [footer])


EXIT_CODES_HELP = exit_codes_help()
LISTEN_EXIT_CODES_HELP = exit_codes_help(
    LISTEN_EXITS,
    {EXIT_GRANTED: "GRANTED    --max-utterances reached and the last decision was GRANTED",
     EXIT_DENIED: "DENIED     --max-utterances reached and the last decision was DENIED",
     EXIT_UNCERTAIN: "UNCERTAIN  --max-utterances reached and the last decision was UNCERTAIN",
     EXIT_AUDIO: "the --from-file audio cannot be used (the reason is printed)",
     EXIT_INFO: "help or the device list printed: nothing was decided"},
    "Each decision is a printed line; only --max-utterances turns the last one into the exit\n"
    "code. Anything but 0 means no access (fail closed).",
)

# Feature-contract fields whose mismatch makes a model unusable with this featurizer.
CRITICAL_FEATURE_KEYS = ("feature_version", "sample_rate", "image_size")


class ModelError(RuntimeError):
    """The model cannot be used: missing, unreadable, modified or mismatched (exit code 5)."""


@dataclass
class ModelContract:
    """Everything an exported model promises the runtime (stored in its ONNX metadata)."""

    features: dict  # voicegate.device.features.feature_contract() at export time
    method: str  # "mc" or "ensemble"
    samples: int  # T MC samples or K ensemble members (= the output's second dimension)
    thresholds: Thresholds
    uncertainty_measure: str = "std"  # which measure the uncertainty limit applies to
    labels: list = field(default_factory=lambda: list(LABELS))
    architecture: str = ""  # e.g. "compact" or "seed"
    dropout_p: float | None = None  # MC only: the head's dropout rate
    corpus: dict = field(default_factory=dict)  # name, manifest, roles (allowed, ...)
    metrics: dict = field(default_factory=dict)  # validation figures at export, training figures
    weights_sha256: str = ""  # sha256 of the torch weights the graph was made from
    created_at: str = ""  # ISO 8601 UTC
    voicegate_version: str = ""
    contract_version: int = CONTRACT_VERSION
    extra: dict = field(default_factory=dict)
    # -- encoder kind (a speaker encoder; profiles are enrolled on the device) ----------------
    kind: str = "classifier"  # "classifier" (output OUTPUT_NAME) or "encoder" (EMBEDDINGS_NAME)
    embedding_dim: int = 0  # encoder: D, the embedding size
    # encoder: cosine -> probability, {"type": "logistic", "a": A, "b": B}: p = 1/(1+exp(-(A*cos+B)));
    # the thresholds then apply to that probability exactly as for a classifier's p(allowed)
    calibration: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, Mapping):
            self.thresholds = Thresholds.from_dict(self.thresholds)
        if self.kind not in KINDS:
            raise ModelError(f"model contract: unknown kind {self.kind!r} (want {'|'.join(KINDS)})")
        if self.method not in METHODS:
            raise ModelError(f"model contract: unknown method {self.method!r} (want mc|ensemble)")
        if self.uncertainty_measure not in UNCERTAINTY_MEASURES:
            raise ModelError(
                f"model contract: unknown uncertainty measure {self.uncertainty_measure!r}"
            )
        self.samples = int(self.samples)
        if self.samples < 1:
            raise ModelError(f"model contract: samples must be >= 1, got {self.samples}")

    # -- dict / metadata round trips --------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = self.thresholds.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelContract":
        known = {f.name for f in fields(cls)}
        missing = {"features", "method", "samples", "thresholds"} - set(d)
        if missing:
            raise ModelError(f"model contract: missing fields {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_metadata(self) -> dict[str, str]:
        """The ONNX ``metadata_props`` entries (all strings)."""
        return {
            META_CONTRACT: json.dumps(self.to_dict(), sort_keys=True),
            META_CONTRACT_VERSION: str(self.contract_version),
            META_FEATURE_VERSION: str(self.features.get("feature_version", "")),
            META_SAMPLE_RATE: str(self.features.get("sample_rate", "")),
            META_METHOD: self.method,
            META_SAMPLES: str(self.samples),
            META_VERSION: self.voicegate_version,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> "ModelContract":
        """Read a contract from ONNX metadata (raises ModelError when absent or malformed)."""
        raw = meta.get(META_CONTRACT)
        if not raw:
            raise ModelError("the model carries no voicegate contract (was it made by voicegate export?)")
        try:
            d = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ModelError("the model's voicegate contract is not valid JSON "
                             f"({e if isinstance(e, ValueError) else 'nested too deep'})") from None
        if not isinstance(d, dict):
            raise ModelError("the model's voicegate contract is not a JSON object")
        try:
            return cls.from_dict(d)
        except ModelError:
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise ModelError(f"the model's voicegate contract is malformed ({e})") from None

    # -- checks -------------------------------------------------------------------------------
    def check_features(self, current: Mapping[str, Any]) -> None:
        """Refuse a model made for another featurizer (feature version, sample rate, size)."""
        for key in CRITICAL_FEATURE_KEYS:
            want, have = self.features.get(key), current.get(key)
            if want != have:
                raise ModelError(
                    f"model/featurizer mismatch: the model expects {key}={want!r} but this "
                    f"voicegate renders {key}={have!r}; re-export the model with this version"
                )
        other = sorted(
            k
            for k in current
            if k not in CRITICAL_FEATURE_KEYS and k in self.features and self.features[k] != current[k]
        )
        if other:
            raise ModelError(
                "model/featurizer mismatch in "
                + ", ".join(f"{k} (model {self.features.get(k)!r}, here {current[k]!r})" for k in other)
                + " although the feature version is the same; re-export the model"
            )
