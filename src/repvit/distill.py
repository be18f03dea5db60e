"""Deprecated path (until the next release): moved to repvit.train.distill."""

from .train.distill import DistillationLoss, build_teacher
from .utils.deprecation import warn_moved

__all__ = ["DistillationLoss", "build_teacher"]

warn_moved("repvit.distill", "repvit.train.distill")
