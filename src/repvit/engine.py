"""Deprecated path (until the next release): moved to repvit.train."""

from .train import (
                    ProcessContext,
                    TrainResult,
                    build_eval_loader,
                    evaluate,
                    evaluate_pair,
                    read_run_checkpoint,
                    setup_process,
                    train,
)
from .utils import resolve_device
from .utils.deprecation import warn_moved

__all__ = ["ProcessContext", "TrainResult", "build_eval_loader", "evaluate", "evaluate_pair",
           "read_run_checkpoint", "resolve_device", "setup_process", "train"]

warn_moved("repvit.engine", "repvit.train")
