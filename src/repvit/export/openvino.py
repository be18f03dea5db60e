"""OpenVINO: ``<name>_openvino/model.{xml,bin}`` (fp32 weights), run with f32 inference precision set
explicitly (the default on CPUs with AMX/AVX512-BF16 is bf16), without OpenVINO's usage telemetry."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .common import INPUT_NAME, OUTPUT_NAME

__all__ = ["export_openvino", "load_openvino"]


def _import_openvino():
    """openvino without its usage telemetry.

    Importing openvino (and every conversion) otherwise sends events to Google Analytics unless the
    user opted out; exporting a model must not touch the network. Hiding ``openvino_telemetry``
    makes openvino fall back to its own no-op stub. A process that imported openvino already
    keeps its setting.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # None in sys.modules: ImportError on import
    import openvino

    return openvino


def export_openvino(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``path/model.{xml,bin}`` with fp32 weights (OpenVINO compresses to fp16 by default)."""
    ov = _import_openvino()

    with warnings.catch_warnings():  # it traces with torch.jit, which warns of its deprecation
        warnings.simplefilter("ignore", FutureWarning)
        converted = ov.convert_model(model, example_input=(example,))
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    converted.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    path.mkdir(parents=True, exist_ok=True)
    ov.save_model(converted, str(path / "model.xml"), compress_to_fp16=False)
    return "OpenVINO IR, fp32 weights"


def load_openvino(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], np.ndarray]:
    """OpenVINO's CPU plugin for ``path`` (a folder) with f32 inference precision."""
    ov = _import_openvino()

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}  # bf16 is the default on CPUs with AMX/AVX512-BF16
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(Path(path) / "model.xml")), "CPU", config)
    output = compiled.output(0)

    def run(x: torch.Tensor) -> np.ndarray:
        return compiled([x.numpy()])[output]

    return run
