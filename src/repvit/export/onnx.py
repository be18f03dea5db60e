"""ONNX: torch's dynamo exporter (opset 20 keeps GELU one op), run in ONNX Runtime; int8 by ONNX
Runtime's static quantization (QDQ, per-channel int8 weights, uint8 activations: the combination
its x86 kernels are fastest with)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .common import INPUT_NAME, OUTPUT_NAME

__all__ = ["export_onnx", "load_onnx", "export_onnx_int8"]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool = False,
                opset: int = 20) -> str:
    """Write ``model`` as ONNX with torch's dynamo exporter. Opset >= 20 keeps GELU one op."""
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                          external_data=False, **kwargs)
    return f"opset {opset}" + (", dynamic batch" if dynamic_batch else "")


def load_onnx(path: Path, threads: int | None = None, all_outputs: bool = False) -> Callable[..., np.ndarray]:
    """An ONNX Runtime CPU session for ``path`` as a function of its input tensor(s), returning the
    first output (``all_outputs``: the list of every output)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*xs: torch.Tensor):
        outputs = session.run(None, {name: x.numpy() for name, x in zip(names, xs)})
        return outputs if all_outputs else outputs[0]

    return run


def export_onnx_int8(model: nn.Module, example: torch.Tensor, path: Path, calibration: list[torch.Tensor]) -> str:
    """Write the int8 ONNX model of ``model``, calibrated on ``calibration`` (one image each)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x.numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        export_onnx(model, example, fp32)
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph clean-up, as ORT advises
        quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    return f"int8 (ORT static, QDQ, per-channel s8 weights, u8 activations), {len(calibration)} calibration images"
