"""CLI commands of the export side (see voicegate.train.commands for how they are found)."""

from __future__ import annotations

from voicegate.train.commands import add_lazy_commands

COMMANDS = {"export": ("encoder_export", "export a trained run to ONNX (MC-dropout and ensemble; classifier or encoder)")}


def register(subparsers) -> None:
    add_lazy_commands(subparsers, "voicegate.export", COMMANDS)
