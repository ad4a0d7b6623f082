"""``python -m voicegate.device`` = the ``voicegate`` command."""

from .cli import console_main

console_main()
