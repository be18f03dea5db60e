"""Deprecated path (until the next release): re-exports the modules named below."""

from .train.checkpoint import read_run_checkpoint
from .utils.deprecation import reexport

__all__ = reexport(globals(), "repvit.engine", "repvit.train.checkpoint", "repvit.train.classification",
                   "repvit.train.evaluate", "repvit.train.process", "repvit.train.qat", "repvit.data.samplers",
                   "repvit.utils.device")


def read_training_checkpoint(path) -> dict:
    """Deprecated: ``repvit.train.read_run_checkpoint(path, "train", "resume")``."""
    return read_run_checkpoint(path, "train", "resume")


__all__ += ["read_training_checkpoint"]
