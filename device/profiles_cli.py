"""``voicegate profiles list | show NAME | remove NAME | rename OLD NEW``: the enrolled people.

``list`` names every profile with its speech seconds, sessions, last update and status: ``ok``,
or why the door would refuse it (``other encoder: re-enrol``, ``corrupt``). The status is
checked against the encoder ``--model`` names (default: ``$VOICEGATE_ENCODER``, else the
shipped encoder); without a usable encoder only the file checks are made.

Exit codes: 0 done, 2 usage, 5 a profile or the store cannot be used (``show``/``remove``/
``rename`` of a missing or broken profile), or no profile store exists for ``list``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .contract import EXIT_INFO, EXIT_MODEL, EXIT_USAGE, ModelError
from .profiles import NOT_A_FOLDER, NameTakenError, ProfileError, ProfileStore, check_name

log = logging.getLogger(__name__)

EXIT_CODES_HELP = f"""\
exit codes:
  0  done (list: every profile is usable by the door)
  {EXIT_USAGE}  usage error (bad command line, bad name, rename onto a name that is taken)
  {EXIT_MODEL}  the profile (or the store) is missing, corrupt, made with another encoder, or cannot
     be written (list: the door would refuse, or nobody is enrolled)
  {EXIT_INFO} --help was printed: nothing was done"""


def _common(parser: argparse.ArgumentParser, default=None) -> None:
    parser.add_argument("--profiles", metavar="DIR", default=default,
                        help="the profile store (default: $VOICEGATE_PROFILES, else "
                             "$XDG_DATA_HOME/voicegate/profiles)")
    parser.add_argument("--model", metavar="PATH", default=default, help="encoder to check the profiles against")
    parser.add_argument("--json", action="store_true", default=default if default is not None else False,
                        help="print JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_CODES_HELP
    _common(parser)
    # the same options after the action too (`profiles list --profiles DIR`); SUPPRESS keeps a
    # value given before the action when it is not repeated after it
    after = argparse.ArgumentParser(add_help=False)
    _common(after, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="the enrolled people", parents=[after])
    p = sub.add_parser("show", help="one profile in detail", parents=[after])
    p.add_argument("name", metavar="NAME")
    p = sub.add_parser("remove", help="delete a profile", parents=[after])
    p.add_argument("name", metavar="NAME")
    p = sub.add_parser("rename", help="rename a profile", parents=[after])
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")


def _encoder_identity(args) -> tuple[str, int] | None:
    """(sha256, embedding size) of the encoder profiles are checked against, or None if there is none."""
    from .encoder import ENCODER_ENV, MODEL_ENV, encoder_identity, shipped_encoder
    from .model_files import named_model

    named = named_model(args.model, (MODEL_ENV, ENCODER_ENV))  # an empty name is a ModelError
    if named is not None:  # the encoder the door was told to use must be there
        return encoder_identity(named)
    try:
        return encoder_identity(shipped_encoder())
    except ModelError as e:
        log.info("no encoder to check profiles against: %s", e)
        return None


def _summary(store: ProfileStore, name: str, encoder: tuple[str, int] | None) -> dict:
    row = {"name": name, "path": str(store.path(name))}
    try:
        prof = store.load(name)
    except ProfileError as e:
        return {**row, "status": "corrupt", "error": str(e)}
    row.update(speech_seconds=round(prof.speech_seconds, 1), sessions=len(prof.sessions),
               windows=int(prof.embeddings.shape[0]), created=prof.created, updated=prof.updated,
               encoder_sha256=prof.encoder_sha256)
    if encoder is None:
        row["status"] = "unchecked (no encoder)"
        return row
    row["status"] = prof.mismatch(*encoder) or "ok"  # the door's own check (ProfileStore.load)
    return row


def _list(args, store: ProfileStore) -> int:
    if not store.exists():
        why = (NOT_A_FOLDER if os.path.lexists(store.root)
               else "does not exist (nobody enrolled yet; voicegate enroll NAME FILE...)")
        print(f"voicegate profiles: the profile store {store.root} {why}", file=sys.stderr)
        if args.json:
            print(json.dumps({"store": str(store.root), "profiles": []}))
        return EXIT_MODEL
    encoder = _encoder_identity(args)
    rows = [_summary(store, n, encoder) for n in store.names()]
    # one unusable profile refuses the whole store at the door: a health check must see it
    unusable = [r["name"] for r in rows if r["status"] != "ok" and not r["status"].startswith("unchecked")]
    code = EXIT_MODEL if unusable or not rows else 0
    if args.json:
        print(json.dumps({"store": str(store.root), "profiles": rows, "door_ready": code == 0}))
        return code
    print(f"{len(rows)} profile(s) in {store.root}")
    for r in rows:
        if "speech_seconds" in r:
            print(f"  {r['name']:<20} {r['speech_seconds']:>6.1f} s  {r['sessions']} session(s)  "
                  f"updated {r['updated']}  {r['status']}")
        else:
            print(f"  {r['name']:<20} {r['status']}: {r['error']}")
    if unusable:
        print(f"voicegate profiles: the door refuses every decision until {', '.join(unusable)} "
              "is re-enrolled or removed", file=sys.stderr)
    elif not rows:
        print("voicegate profiles: nobody is enrolled: the door lets no one in", file=sys.stderr)
    return code


def _show(args, store: ProfileStore) -> int:
    prof = store.load(args.name)
    row = _summary(store, prof.name, _encoder_identity(args))
    row["sessions"] = [{k: v for k, v in s.to_dict().items() if k != "embeddings"} for s in prof.sessions]
    row["embedding_dim"] = prof.embedding_dim
    if args.json:
        print(json.dumps(row))
        return 0
    for key in ("name", "path", "status", "speech_seconds", "windows", "embedding_dim", "created",
                "updated", "encoder_sha256"):
        print(f"{key:>15}: {row[key]}")
    for i, s in enumerate(row["sessions"], 1):
        print(f"{'session ' + str(i):>15}: {s['date']}  {s['speech_seconds']:.1f} s  "
              f"{s['windows']} windows  from {', '.join(map(str, s['sources'])) or '-'}")
    return 0


def run(args: argparse.Namespace) -> int:
    """The ``profiles`` command."""
    try:
        store = ProfileStore(args.profiles)
    except ProfileError as e:  # an empty --profiles or $VOICEGATE_PROFILES: exit 5, as at the door
        print(f"voicegate profiles: {e}", file=sys.stderr)
        return EXIT_MODEL
    action = getattr(args, "action", None)
    if action is None:
        print("voicegate profiles: say list, show NAME, remove NAME or rename OLD NEW", file=sys.stderr)
        return EXIT_USAGE
    try:
        for attr in ("name", "old", "new"):
            if hasattr(args, attr):
                check_name(getattr(args, attr))
    except ProfileError as e:
        print(f"voicegate profiles: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if action == "list":
            return _list(args, store)
        if action == "show":
            return _show(args, store)
        if action == "remove":
            store.remove(args.name)
            print(f"removed {args.name} from {store.root}")
            return 0
        store.rename(args.old, args.new)
        print(f"renamed {args.old} to {args.new} in {store.root}")
        return 0
    except NameTakenError as e:
        print(f"voicegate profiles: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModelError as e:
        print(f"voicegate profiles: {e}", file=sys.stderr)
        return EXIT_MODEL
