"""The per-user base folders of the XDG Base Directory spec, read one way everywhere.

``base("XDG_DATA_HOME")`` is ``$XDG_DATA_HOME`` when it is set to an absolute path, else
``~/.local/share``. The spec says a relative path in these variables is invalid and ignored:
taken as it is, it would make the profile store or the lockout state depend on the folder a
command happens to run in.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULTS = {"XDG_DATA_HOME": (".local", "share"), "XDG_STATE_HOME": (".local", "state"),
            "XDG_CACHE_HOME": (".cache",)}


def base(var: str) -> Path:
    """The folder ``var`` names (absolute paths only), else its default under the home folder."""
    value = os.environ.get(var)
    if value:
        path = Path(value)  # no ~ expansion (the spec has none): "~nosuchuser/x" is just relative
        if path.is_absolute():
            return path
        _warn_relative(var, value)
    return Path.home().joinpath(*DEFAULTS[var])


@functools.lru_cache(maxsize=None)
def _warn_relative(var: str, value: str) -> None:  # once per process and value
    log.warning("$%s=%s is not an absolute path: ignored (the XDG spec), using the default", var, value)
