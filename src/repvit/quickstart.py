"""Deprecated path (until the next release): moved to repvit.tools.quickstart."""

from .tools.quickstart import run_quickstart
from .utils.deprecation import warn_moved

__all__ = ["run_quickstart"]

warn_moved("repvit.quickstart", "repvit.tools.quickstart")
