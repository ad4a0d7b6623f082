"""``python -m voicegate.device`` = the ``voicegate`` command."""

from .console import console_main

console_main()
