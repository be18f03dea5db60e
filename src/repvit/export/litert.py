"""LiteRT (TFLite): a ``.tflite`` flatbuffer from Google's ``litert-torch`` converter, run in the
``ai-edge-litert`` interpreter with XNNPACK (Android's standard runtime). The input stays NCHW."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .common import as_args, captured_output

__all__ = ["export_litert", "load_litert"]


def export_litert(model: nn.Module, example, path: Path) -> str:
    """Write ``model`` as a ``.tflite`` flatbuffer with Google's ``litert-torch`` converter
    (``example``: one input tensor or a tuple of them; the shapes are fixed)."""
    with captured_output():
        import litert_torch

        litert_torch.convert(model, as_args(example)).export(str(path))
    return "LiteRT flatbuffer (litert-torch), NCHW input"


def load_litert(path: Path, threads: int | None = None, all_outputs: bool = False) -> Callable[..., np.ndarray]:
    """The LiteRT interpreter (XNNPACK delegate) for ``path`` as a function of its input tensor(s),
    returning the first output (``all_outputs``: the list of every output, in the model's order)."""
    with captured_output():
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
        interpreter.allocate_tensors()
    # the converter numbers inputs "args_<i>" and outputs "output_<i>"; the details are not always in that order
    inputs, outputs = (sorted(details, key=lambda d: [int(n) for n in re.findall(r"\d+", d["name"])])
                       for details in (interpreter.get_input_details(), interpreter.get_output_details()))

    def run(*xs: torch.Tensor):
        for detail, x in zip(inputs, xs):
            interpreter.set_tensor(detail["index"], x.numpy())
        interpreter.invoke()
        results = [interpreter.get_tensor(d["index"]) for d in outputs]
        return results if all_outputs else results[0]

    return run
