"""Deprecated path (until the next release): re-exports the modules named below."""

from .utils.deprecation import reexport

__all__ = reexport(globals(), "repvit.distill", "repvit.train.distill")
