"""``python -m voicegate.device`` = the ``voicegate`` command."""

import sys

from .cli import main

sys.exit(main())
