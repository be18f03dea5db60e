"""Deprecated path (until the next release): moved to repvit.train.qat."""

from .train.qat import QATModel, convert_qat, prepare_qat
from .utils.deprecation import warn_moved

__all__ = ["QATModel", "convert_qat", "prepare_qat"]

warn_moved("repvit.qat", "repvit.train.qat")
