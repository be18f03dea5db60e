"""LiteRT (TFLite): a ``.tflite`` flatbuffer from Google's ``litert-torch`` converter, run in the
``ai-edge-litert`` interpreter with XNNPACK (Android's standard runtime). The input stays NCHW."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .common import captured_output

__all__ = ["export_litert", "load_litert"]


def export_litert(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``model`` as a ``.tflite`` flatbuffer with Google's ``litert-torch`` converter."""
    with captured_output():
        import litert_torch

        litert_torch.convert(model, (example,)).export(str(path))
    return "LiteRT flatbuffer (litert-torch), NCHW input"


def load_litert(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], np.ndarray]:
    """The LiteRT interpreter (XNNPACK delegate) for ``path`` as a function of a torch tensor."""
    with captured_output():
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
        interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x: torch.Tensor) -> np.ndarray:
        interpreter.set_tensor(inp["index"], x.numpy())
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run
