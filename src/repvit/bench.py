"""Deprecated path (until the next release): re-exports the modules named below."""

from .utils.deprecation import reexport

__all__ = reexport(globals(), "repvit.bench", "repvit.tools.bench", "repvit.tools.plots", "repvit.tools.report",
                   "repvit.tools.targets", "repvit.tools.timing")
