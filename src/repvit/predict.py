"""Deprecated path (until the next release): moved to repvit.tools.predict."""

from .tools.predict import Prediction, predict
from .utils.deprecation import warn_moved

__all__ = ["Prediction", "predict"]

warn_moved("repvit.predict", "repvit.tools.predict")
