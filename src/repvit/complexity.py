"""Deprecated path (until the next release): moved to repvit.tools.complexity."""

from .tools.complexity import count_macs, count_params, model_stats
from .utils.deprecation import warn_moved

__all__ = ["count_macs", "count_params", "model_stats"]

warn_moved("repvit.complexity", "repvit.tools.complexity")
