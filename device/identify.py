"""Which gate decides for ``enroll-check`` and ``listen``: the classifier, or the encoder against
the enrolled profiles; and which profiles (the demo rule).

The model: ``--model`` > ``$VOICEGATE_MODEL`` decide by their contract's kind (a classifier
decides allowed/not as it always did; an encoder decides by name). With neither, ``--method``
picks a shipped classifier as before; otherwise the shipped encoder is used when this build has
one, else the shipped classifier.

The profiles (encoder only), **the demo rule**:

1. ``--profiles DIR`` or ``$VOICEGATE_PROFILES``: that store and nothing else. Empty or missing
   is an error (exit 5), never the demo household.
2. ``--demo``: the demo household shipped in ``models/demo-profiles`` (and nothing else).
3. Neither: the per-user store (``$XDG_DATA_HOME/voicegate/profiles``) once it exists, i.e. as
   soon as anyone has enrolled on this machine (even if all were removed since: then it is
   empty, an error). Only while no store has ever been created does a decision use the demo
   household, and it says so on stderr. So once a person has enrolled, or on a service started
   with ``--profiles``, the demo people can never open the door.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .contract import ModelError
from .profiles import PROFILES_ENV, ProfileStore

log = logging.getLogger(__name__)

DEMO_DIR_NAME = "demo-profiles"
MODEL_ENV = "VOICEGATE_MODEL"  # the same variable runtime.resolve_model_path reads


def demo_dir() -> Path:
    from .runtime import models_dir

    return models_dir() / DEMO_DIR_NAME


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    """``--profiles DIR`` / ``--demo`` (mutually exclusive)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--profiles", metavar="DIR",
                   help=f"decide against the profiles in DIR only (default: ${PROFILES_ENV}, else "
                        "$XDG_DATA_HOME/voicegate/profiles once someone has enrolled)")
    g.add_argument("--demo", action="store_true",
                   help=f"decide against the demo household shipped in models/{DEMO_DIR_NAME}")


def _asked_for_profiles(args) -> bool:
    return bool(getattr(args, "profiles", None) or getattr(args, "demo", False))


def profile_store(args) -> tuple[ProfileStore, bool]:
    """(the store to decide against, is it the demo household?) by the demo rule above."""
    if getattr(args, "demo", False):
        return ProfileStore(demo_dir()), True
    explicit = getattr(args, "profiles", None) or os.environ.get(PROFILES_ENV)
    if explicit:
        return ProfileStore(explicit), False
    personal = ProfileStore(None)
    if personal.exists() or not demo_dir().is_dir():
        return personal, False
    return ProfileStore(demo_dir()), True


def wants_encoder(args) -> bool:
    """Does this command line decide with an encoder (by name) rather than the classifier?"""
    from .encoder import model_kind, resolve_encoder_path

    named = getattr(args, "model", None) or os.environ.get(MODEL_ENV)
    if named:
        kind = model_kind(named)
        if kind != "encoder" and _asked_for_profiles(args):
            raise ModelError(f"{named}: is a {kind} model; --profiles/--demo need an encoder-kind model")
        return kind == "encoder"
    if _asked_for_profiles(args):
        return True
    if getattr(args, "method", None):  # --method picks a shipped classifier (mc | ensemble)
        return False
    return resolve_encoder_path().is_file()


def load_profile_gate(args, warmup: bool = False):
    """The encoder gate the command line names, with its profiles (ModelError, ProfileError...)."""
    from .encoder import Encoder
    from .scoring import ProfileGate

    named = getattr(args, "model", None) or os.environ.get(MODEL_ENV)
    encoder = Encoder.load(
        named, accept=getattr(args, "accept", None),
        uncertainty_limit=getattr(args, "uncertainty_limit", None), deny=getattr(args, "deny", None),
        threads=max(1, int(getattr(args, "threads", 1) or 1)),
        unsafe_thresholds=getattr(args, "unsafe_thresholds", False),
    )
    method = getattr(args, "method", None)
    if method is not None and method != encoder.method:
        raise ModelError(f"{encoder.path}: is a {encoder.method} encoder, but --method {method} was asked for")
    store, demo = profile_store(args)
    gate = ProfileGate(encoder, store)
    gate.demo = demo
    if demo and not getattr(args, "demo", False):
        print(f"voicegate: nobody is enrolled on this machine yet: deciding against the demo household "
              f"({', '.join(gate.names)}); enrol yourself with: voicegate enroll NAME FILE...",
              file=sys.stderr)
    if warmup:
        gate.warmup()
    return gate


def describe(d) -> tuple[str, str]:
    """(the decision word(s), a suffix with every profile's score) for a one-line report."""
    speaker = getattr(d, "speaker", None)
    head = f"{d.decision} as {speaker}" if speaker else d.decision
    scores = getattr(d, "scores", None)
    tail = ("  scores: " + " ".join(f"{k}={v:.3f}" for k, v in scores.items())) if scores else ""
    return head, tail
