"""CLI commands of the training side, registered into the `voicegate` command.

The device CLI finds this through the ``voicegate.commands`` entry point, so the device
runtime never imports training code. Nothing heavy is imported here: each command's module
is imported only when that command runs, and a missing ``[train]`` extra gives a one-line
error that says what to install.
"""

from __future__ import annotations

import argparse
import importlib

# command name -> (module under voicegate.train, one-line help)
COMMANDS = {
    "prepare": ("data.prepare", "cut a speaker corpus into cached, leak-free spectrogram windows"),
    "train": ("models.trainer", "train a seed or compact CNN (or a deep ensemble of them)"),
    "train-encoder": ("models.fit_encoder", "train the compact CNN as a speaker encoder on every corpus's training speakers"),
    "eval": ("eval.evaluate", "closed-set and open-set security figures for an exported model"),
    "report": ("reports.report", "the study's analyses: eda, uncertainty, interpret, params"),
}


def lazy_command(package: str, module: str):
    """A `func(args) -> int` that imports `package.module` and calls its `run(args)`."""

    def func(args: argparse.Namespace) -> int:
        mod = importlib.import_module(f"{package}.{module}")
        return mod.run(args)

    return func


def add_lazy_commands(subparsers, package: str, commands: dict) -> None:
    for name, (module, help_text) in commands.items():
        mod = importlib.import_module(f"{package}.{module}")
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(func=lazy_command(package, module))


def register(subparsers) -> None:
    add_lazy_commands(subparsers, "voicegate.train", COMMANDS)
