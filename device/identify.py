"""Which gate decides for ``enroll-check`` and ``listen``: the classifier, or the encoder against
the enrolled profiles; and which profiles (the demo rule).

The model: ``--model`` > ``$VOICEGATE_MODEL`` decide by their contract's kind (a classifier
decides allowed/not as it always did; an encoder decides by name). With neither, the shipped
encoder decides (``--method`` picks ``voicegate-encoder-mc`` or ``-ensemble``); the study's
classifiers decide only when named (``--model models/voicegate-compact-mc.onnx``) or in a build
that ships no encoder at all. ``--method`` alone never swaps the enrolled people for the
classifier's three baked-in readers.

The profiles (encoder only), **the demo rule**:

1. ``--profiles DIR`` or ``$VOICEGATE_PROFILES``: that store and nothing else. Empty or missing
   is an error (exit 5), never the demo household; so is an empty value (``--profiles ''``).
2. ``--demo``: the demo household shipped in ``models/demo-profiles`` (and nothing else).
3. Neither: the per-user store (``$XDG_DATA_HOME/voicegate/profiles``) once it exists, i.e. as
   soon as anyone has enrolled on this machine (even if all were removed since: then it is
   empty, an error). Anything at that path counts as a store, a file or a dangling link too (a
   store on a disk that is not mounted): it fails, it is not the demo household. Only while
   nothing has ever been created there does ``enroll-check`` use the demo household, and it
   says so on stderr. ``listen`` (the door) never does: without ``--demo`` it needs enrolled
   people. So once a person has enrolled, on a service started with ``--profiles``, and at every
   door, the demo people can never open the door.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .contract import ModelError
from .profiles import PROFILES_ENV, EmptyStoreError, OtherEncoderError, ProfileError, ProfileStore, default_dir

log = logging.getLogger(__name__)

DEMO_DIR_NAME = "demo-profiles"


def demo_dir() -> Path:
    from .model_files import models_dir

    return models_dir() / DEMO_DIR_NAME


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    """``--profiles DIR`` / ``--demo`` (mutually exclusive)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--profiles", metavar="DIR",
                   help=f"decide against the profiles in DIR only (default: ${PROFILES_ENV}, else "
                        "$XDG_DATA_HOME/voicegate/profiles once someone has enrolled)")
    g.add_argument("--demo", action="store_true",
                   help=f"decide against the demo household shipped in models/{DEMO_DIR_NAME}")


def anyone_enrolled_here() -> bool:
    """Has anyone enrolled on this machine: is there anything at the per-user store's path (the
    demo rule's test; a file or a dangling link counts, it is a store that fails)."""
    return os.path.lexists(default_dir())


def _store_named(args) -> bool:
    """Is a store named, by ``--profiles`` or ``$VOICEGATE_PROFILES`` (even empty: an error)?"""
    return getattr(args, "profiles", None) is not None or os.environ.get(PROFILES_ENV) is not None


def _asked_for_profiles(args) -> bool:
    return _store_named(args) or bool(getattr(args, "demo", False))


def demo_problem(args) -> str | None:
    """Why ``--demo`` cannot be used as given (None if it can): with ``$VOICEGATE_PROFILES`` set
    the command line names two households, and the one a service was set up with must not be
    swapped silently for the public demo voices (a usage error, exit 2)."""
    named = os.environ.get(PROFILES_ENV)
    if getattr(args, "demo", False) and named is not None:  # set, even empty: the service named a store
        return (f"--demo and ${PROFILES_ENV} ({named}) name two households: leave out --demo, "
                f"or unset {PROFILES_ENV}")
    return None


def profile_store(args, implicit_demo: bool = True) -> tuple[ProfileStore, bool]:
    """(the store to decide against, is it the demo household?) by the demo rule above.

    ``implicit_demo=False`` (``listen``): no demo household unless ``--demo`` asks for it.
    """
    if getattr(args, "demo", False):
        return ProfileStore(demo_dir()), True
    if _store_named(args):  # that store and nothing else (profiles.resolve_dir refuses an empty name)
        return ProfileStore(getattr(args, "profiles", None)), False
    personal = ProfileStore(None)  # no store is named: the per-user one
    if anyone_enrolled_here() or not demo_dir().is_dir():
        return personal, False  # a file or a dangling link there fails when loaded: no demo people
    if not implicit_demo:
        raise EmptyStoreError(f"nobody is enrolled on this machine ({personal.root} does not exist): "
                              "enrol with: voicegate enroll NAME FILE... (or pass --demo to try the demo household)")
    return ProfileStore(demo_dir()), True


def _method(args) -> str | None:
    return getattr(args, "method", None)


def wants_encoder(args) -> bool:
    """Does this command line decide with an encoder (by name) rather than the classifier?"""
    from .encoder import build_has_encoder, model_kind

    from .model_files import named_model

    named = named_model(getattr(args, "model", None))
    if named is not None:
        kind = model_kind(named)
        if kind != "encoder" and _asked_for_profiles(args):
            raise ModelError(f"{named}: is a {kind} model; --profiles/--demo need an encoder-kind model")
        return kind == "encoder"
    return _asked_for_profiles(args) or build_has_encoder(_method(args))


def load_profile_gate(args, warmup: bool = False, implicit_demo: bool = True, seed: int | None = None):
    """The encoder gate the command line names, with its profiles (ModelError, ProfileError...)."""
    from .encoder import Encoder, resolve_encoder_path
    from .scoring import ProfileGate

    method = _method(args)
    store, demo = profile_store(args, implicit_demo)  # a usage problem of the store first: no model load
    encoder = Encoder.load(
        resolve_encoder_path(getattr(args, "model", None), method), accept=getattr(args, "accept", None),
        uncertainty_limit=getattr(args, "uncertainty_limit", None), deny=getattr(args, "deny", None),
        threads=max(1, int(getattr(args, "threads", 1) or 1)),
        unsafe_thresholds=getattr(args, "unsafe_thresholds", False), seed=seed,
    )
    if method is not None and method != encoder.method:
        raise ModelError(f"{encoder.path}: is an {encoder.method} encoder, but --method {method} was asked for")
    try:
        gate = ProfileGate(encoder, store)
    except OtherEncoderError:
        if not demo:
            raise
        # the demo household is enrolled with the shipped MC encoder only: say that, rather than
        # advise re-enrolling the demo people into the user's own store
        raise ProfileError(f"the demo household (models/{DEMO_DIR_NAME}) is enrolled with the shipped MC "
                           f"encoder, not {encoder.path.name}: try it without --method/--model, or enrol "
                           f"people with this one (voicegate enroll NAME FILE... --model {encoder.path})") from None
    gate.demo = demo
    enrolled_here = anyone_enrolled_here()
    if demo and getattr(args, "demo", False) and (not implicit_demo or enrolled_here):
        print("voicegate: warning: --demo: the demo household's voices are public LibriSpeech recordings "
              "(anyone who plays one is let in)"
              + ("; the people enrolled on this machine are not consulted" if enrolled_here else ""),
              file=sys.stderr)
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
