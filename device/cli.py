"""The ``voicegate`` command.

Device commands are registered in :data:`DEVICE_COMMANDS` as ``name -> (help, module)``; the
module (``"package.module"``, or ``"package.module:object"``) provides ``add_arguments(parser)``
and ``run(args) -> int`` and is imported only when its command runs, so ``voicegate --help``
and a decision never import the others. A registered module that is not in this build gives a
one-line "not available in this build" and exit 2. Other command groups (``prepare``, ``train``,
``eval``, ``report``, ``export``) come from the ``voicegate.commands`` entry points, which are
only looked up when the command is not a device command (or for ``--help``), so a decision on
the device never scans them.

Exit 0 means GRANTED (``enroll-check``) and nothing else: ``--help`` and ``--version`` exit
:data:`~voicegate.device.contract.EXIT_INFO`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from typing import Sequence

from .console import first_command
from .contract import EXIT_AUDIO, EXIT_CODES_HELP, EXIT_INFO, EXIT_MODEL, EXIT_USAGE
from .options import ONE_DECISION_SEED, add_model_arguments, load_gate, one_line, quiet_stderr, write_line

log = logging.getLogger(__name__)

PLUGIN_GROUP = "voicegate.commands"
TRAIN_EXTRA_MESSAGE = "this command needs the training extra: pip install 'voicegate[train]'"
NOT_AVAILABLE_MESSAGE = "not available in this build"
HEAVY_MODULES = ("torch", "torchvision", "torchaudio", "librosa", "sklearn", "matplotlib", "onnx", "tqdm")


def _enroll_check_arguments(p: argparse.ArgumentParser) -> None:
    from .identify import add_profile_arguments

    p.add_argument("file", metavar="FILE", help="an audio file holding one utterance")
    add_model_arguments(p)
    add_profile_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a line")


def _fail(args: argparse.Namespace, code: int, kind: str, message: str) -> int:
    print(f"voicegate: {kind}: {one_line(message)}", file=sys.stderr)
    if getattr(args, "json", False):
        import json

        write_line(json.dumps({"decision": None, "error": kind, "reason": message, "exit_code": code}))
    return code


def cmd_enroll_check(args: argparse.Namespace) -> int:
    """Decide on one file. Fails closed: every error is a non-zero exit, never GRANTED."""
    try:
        from .audio import AudioError
        from .contract import ModelError
        from .policy import ThresholdError
        from .profiles import ProfileError
    except Exception as e:  # a broken install (e.g. onnxruntime missing)
        return _fail(args, EXIT_MODEL, "runtime unavailable", f"{type(e).__name__}: {e}")
    from .identify import demo_problem  # local: identify imports the profile store (numpy)

    problem = demo_problem(args)
    if problem:
        return _fail(args, EXIT_USAGE, "usage", problem)
    if not args.file.strip():  # Path("") is ".": the message would be about a folder
        return _fail(args, EXIT_AUDIO, "unusable audio", f"{args.file!r}: empty file name")
    try:
        gate = load_gate(args, seed=ONE_DECISION_SEED)  # the same recording, the same decision
        d = gate.decide_file(args.file)
    except ThresholdError as e:
        return _fail(args, EXIT_USAGE, "bad thresholds", str(e))
    except AudioError as e:
        return _fail(args, EXIT_AUDIO, "unusable audio", str(e))
    except ProfileError as e:  # no one enrolled, a corrupt profile, one from another encoder
        return _fail(args, EXIT_MODEL, "profiles", str(e))
    except ModelError as e:
        return _fail(args, EXIT_MODEL, "model error", str(e))
    except Exception as e:  # anything else: internal error, still no access
        log.debug("internal error", exc_info=True)
        return _fail(args, EXIT_MODEL, "internal error", f"{type(e).__name__}: {e}")
    if args.json:
        import json

        line = json.dumps(d.to_dict())
    else:
        from .identify import describe

        head, scores = describe(d)  # "GRANTED as NAME", every profile's score (encoder kind)
        line = (f"{head}  p_allow={d.p_allow:.3f}  uncertainty={d.uncertainty:.3f} "
                f"({d.uncertainty_measure})  windows={d.windows}  method={d.method}  "
                f"latency={d.latency_ms:.1f} ms" + ("  thresholds=LOOSENED" if d.thresholds_loosened else "")
                + scores)
    if not write_line(line):  # the decision was not said: never exit 0 on it
        print(f"voicegate: output: cannot write the {d.decision} decision to stdout: exit {EXIT_MODEL}",
              file=sys.stderr)
        return EXIT_MODEL
    return d.exit_code


class EnrollCheck:
    """The built-in ``enroll-check`` command, in the shape of a registered command module."""

    add_arguments = staticmethod(_enroll_check_arguments)
    run = staticmethod(cmd_enroll_check)


# name -> (help, "package.module[:object]" providing add_arguments(parser) and run(args) -> int).
# A command is imported only when it runs; add one with one line here.
DEVICE_COMMANDS: dict[str, tuple[str, str]] = {
    "enroll-check": ("decide on one audio file: GRANTED / DENIED / UNCERTAIN",
                     "voicegate.device.cli:EnrollCheck"),
    "listen": ("listen on the microphone and decide on every utterance", "voicegate.device.listen"),
    "doctor": ("check that this device is ready: audio, model, audit log", "voicegate.device.doctor"),
    "enroll": ("enrol a person's voice on this device", "voicegate.device.enroll"),
    "profiles": ("list or remove the enrolled voice profiles", "voicegate.device.profiles_cli"),
}


class CommandUnavailable(LookupError):
    """A registered command whose module is not part of this build."""


def load_command(name: str):
    """The object (module) behind a device command; CommandUnavailable if it is not built in."""
    target = DEVICE_COMMANDS[name][1]
    module_name, _, attr = target.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:  # a parent package is missing
        spec = None
    if spec is None:
        raise CommandUnavailable(f"{name}: {NOT_AVAILABLE_MESSAGE}")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def _load_plugins(subparsers) -> list[tuple[str, BaseException]]:
    """Register the ``voicegate.commands`` groups; return (name, error) for those that failed."""
    from importlib.metadata import entry_points

    failed = []
    try:
        eps = entry_points(group=PLUGIN_GROUP)
    except TypeError:  # Python < 3.10
        eps = entry_points().get(PLUGIN_GROUP, [])
    for ep in eps:
        try:
            ep.load()(subparsers)
        except Exception as e:
            log.debug("command group %s failed to load: %s", ep.name, e, exc_info=True)
            failed.append((ep.name, e))
    return failed


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the command, the problem, where the
    usage is) and exit 2, not the usage block: every error of voicegate is one line. Its
    sub-commands' parsers are of this class too (argparse makes them of the parent's type)."""

    json_errors = False  # main() sets it for a --json command line: the error is a JSON object too

    def error(self, message: str):
        self._usage_exit(self.prog, message)

    def _usage_exit(self, prog: str, message: str):
        if OneLineParser.json_errors:  # a --json caller reads stdout: say it there too, as _fail does
            import json

            write_line(json.dumps({"decision": None, "error": "usage", "reason": message, "exit_code": EXIT_USAGE}))
        self.exit(EXIT_USAGE, f"{prog}: error: {one_line(message)} (see {prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option is reported by the command it was given to."""
        ns, extras = self.parse_known_args(args, namespace)
        dest = getattr(ns, "intermixed_positionals", None)  # a command's trailing FILE... list
        if extras and dest:
            # `enroll alice --profiles hh a.flac b.flac`: argparse has closed FILE... at the option;
            # after `--` every word is a FILE, also one that starts with "-"
            cut = extras.index("--") if "--" in extras else len(extras)
            words, after = extras[:cut], extras[cut + 1:]
            if not any(x.startswith("-") for x in words):
                setattr(ns, dest, list(getattr(ns, dest) or []) + words + after)
                extras = []
        if extras:
            command = getattr(ns, "command", None)
            self._usage_exit(f"{self.prog} {command}" if command else self.prog,
                             f"unrecognized arguments: {' '.join(extras)}")
        return ns


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, list[str], list]:
    """(parser, command names, failed plugin groups) for this command line.

    Only the command being run is imported (CommandUnavailable if its module is not built in).
    """
    parser = OneLineParser(
        prog="voicegate",
        description="Edge voice gate: is this voice an allowed person's? (GRANTED / DENIED / UNCERTAIN)",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO); also after the command")
    parser.add_argument("--debug", action="store_true", help="log everything (DEBUG); also after the command")
    parser.add_argument("--version", action="store_true",
                        help=f"print the version and exit ({EXIT_INFO}, never 0)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = first_command(argv)
    for name, (help_text, _) in DEVICE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == first:
            command = load_command(name)
            command.add_arguments(p)
            p.set_defaults(func=command.run)
    failed = [] if first in DEVICE_COMMANDS else _load_plugins(sub)
    return parser, list(sub.choices), failed


def configure_logging(verbose: bool = False, debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _missing_heavy(e: BaseException) -> bool:
    name = getattr(e, "name", None) or ""
    return isinstance(e, ImportError) and name.split(".")[0] in HEAVY_MODULES


def help_request(argv: list) -> list:
    """The command words of ``argv`` (up to its first option after them) plus ``--help``: so
    ``train --epochs abc -h`` prints train's help (exit 10) instead of failing on ``abc``."""
    words: list = []
    for a in argv:
        if a.startswith("-"):
            if words:
                break
            continue  # global options before the command
        words.append(a)
    return words + ["--help"]


GLOBAL_FLAGS = ("-v", "--verbose", "--debug")


def hoist_global_flags(argv: list) -> list:
    """``voicegate eval ... -v`` as ``voicegate -v eval ...``: the logging flags belong to the
    top-level parser but may stand anywhere before a ``--``."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:] if flags else argv


def main(argv: Sequence[str] | None = None) -> int:
    with quiet_stderr():  # a stderr line that cannot be written changes no exit code
        return _main(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    before = argv[: argv.index("--") if "--" in argv else len(argv)]
    if "-h" in before or "--help" in before:  # help wherever it stands, even after a bad value
        argv = help_request(before)
    if "--version" in before:
        from voicegate import __version__  # on every command, before any parsing: exit 10, never 0

        print(f"voicegate {__version__}")
        return EXIT_INFO
    argv = hoist_global_flags(argv)
    OneLineParser.json_errors = "--json" in before
    first = first_command(argv)
    try:
        parser, commands, failed = build_parser(argv)
    except CommandUnavailable as e:
        print(f"voicegate: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as e:  # e.g. the listen module could not be imported
        print(f"voicegate: {first}: unavailable ({e})", file=sys.stderr)
        return EXIT_MODEL
    if first is not None and first not in commands and failed:
        if any(_missing_heavy(e) for _, e in failed):
            print(f"voicegate: {first}: {TRAIN_EXTRA_MESSAGE}", file=sys.stderr)
        else:
            why = "; ".join(f"{name}: {type(e).__name__}: {e}" for name, e in failed)
            print(f"voicegate: {first}: unknown command (command groups failed to load: {why})",
                  file=sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0: never returned, it means GRANTED) or a usage error (2)
        if e.code in (0, None):
            return EXIT_INFO
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    configure_logging(args.verbose, args.debug)
    from .runtime import tune_allocator

    tune_allocator()  # faster decisions: see its docstring
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("voicegate: interrupted", file=sys.stderr)
        return 130
    except ImportError as e:
        if _missing_heavy(e):
            print(f"voicegate: {args.command}: {TRAIN_EXTRA_MESSAGE}", file=sys.stderr)
            return EXIT_USAGE
        log.debug("import failed", exc_info=True)
        print(f"voicegate: {args.command}: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return EXIT_MODEL if args.command in DEVICE_COMMANDS else 1
    except Exception as e:
        log.debug("command failed", exc_info=True)
        print(f"voicegate: {args.command}: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return EXIT_MODEL if args.command in DEVICE_COMMANDS else 1


FAST_EXIT_COMMANDS = ("enroll-check",)


def console_main() -> None:
    """The ``voicegate`` console script (and ``python -m voicegate.device``): :func:`main`, exit.

    After ``enroll-check`` the process leaves with ``os._exit`` once its streams are flushed and
    logging is shut down. Tearing the interpreter down (numpy, onnxruntime and their thread
    pools, the heap) takes 100 to 150 ms on this machine, a quarter of a cold ``enroll-check``,
    and nothing is left to finish by then: the decision is printed and the command holds no
    open file. Every other command exits normally.
    """
    argv = sys.argv[1:]
    code = main(argv)  # a Ctrl-C while the parser or a command module imports: console.py says it
    if first_command(argv) not in FAST_EXIT_COMMANDS:
        sys.exit(code)
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except Exception:  # a closed pipe: the decision may not have reached the caller
        code = code or EXIT_MODEL  # never 0 (GRANTED) when it may not have been said
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except Exception:  # noqa: BLE001 (a lost diagnostic changes no exit code)
        pass
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
