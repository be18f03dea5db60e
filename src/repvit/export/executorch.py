"""ExecuTorch: a ``.pte`` program with the XNNPACK delegate (ExecuTorch's CPU backend on Android
and iOS), run in ExecuTorch's Python runtime; int8 by PT2E with the XNNPACK quantizer
(per-channel symmetric int8 weights, int8 activations), calibrated on real images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .common import ExportError, as_args

__all__ = ["export_executorch", "load_executorch", "export_executorch_int8", "set_executorch_threads",
           "xnnpack_quantizer", "quantize_xnnpack"]

_ET_THREADS: int | None = None  # XNNPACK threadpool size set in this process (None: default)
_ET_LOADED = False  # a method was loaded: resizing the threadpool afterwards can crash


def set_executorch_threads(threads: int) -> None:
    """Size ExecuTorch's XNNPACK threadpool; only possible before the first method is loaded."""
    global _ET_THREADS
    if threads == _ET_THREADS:
        return
    if _ET_LOADED:
        raise ExportError(
            f"cannot change ExecuTorch's threadpool to {threads} threads after a program was loaded "
            "in this process (ExecuTorch may crash); run the benchmark in a fresh process"
        )
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    _ET_THREADS = threads


def export_executorch(model: nn.Module, example, path: Path, *, dynamic_shapes=None, per_op: bool = False) -> str:
    """Write ``model`` as an ExecuTorch program with the XNNPACK delegate; describe delegation.

    ``example``: one input tensor or a tuple of them; ``dynamic_shapes`` as ``torch.export.export``
    takes it. ``per_op``: delegate operator by operator (XNNPACK's per-op mode), for graphs whose
    whole-graph partition would contain a cycle (SAM's prompt decoder).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model, as_args(example), dynamic_shapes=dynamic_shapes)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner(per_op_mode=per_op)])
    detail = ""
    with contextlib.suppress(Exception):  # delegation statistics are informative only
        from executorch.devtools.backend_debug import get_delegation_info

        info = get_delegation_info(edge.exported_program().graph_module)
        total = info.num_delegated_nodes + info.num_non_delegated_nodes
        detail = f"{info.num_delegated_nodes}/{total} nodes delegated to XNNPACK"
    path.write_bytes(edge.to_executorch().buffer)
    return detail


def load_executorch(path: Path, all_outputs: bool = False) -> Callable[..., np.ndarray]:
    """ExecuTorch's Python runtime for ``path`` as a function of its input tensor(s), returning the
    first output (``all_outputs``: the list of every output)."""
    global _ET_LOADED
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    _ET_LOADED = True

    def run(*inputs: torch.Tensor):
        outputs = [o.numpy() for o in method.execute(list(inputs))]
        return outputs if all_outputs else outputs[0]

    return run


def xnnpack_quantizer(qat: bool = False):
    """ExecuTorch's XNNPACK quantizer: per-channel symmetric int8 weights, int8 activations."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


def quantize_xnnpack(model: nn.Module, calibration: list[torch.Tensor]) -> nn.Module:
    """The PT2E int8 model of ``model`` for the XNNPACK backend, calibrated on ``calibration``."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    captured = torch.export.export(model.eval(), (calibration[0],)).module()
    prepared = prepare_pt2e(captured, xnnpack_quantizer())
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return convert_pt2e(prepared)


def export_executorch_int8(model: nn.Module, example: torch.Tensor, path: Path,
                           calibration: list[torch.Tensor]) -> str:
    """Write the int8 ExecuTorch program of ``model``, calibrated on ``calibration``."""
    detail = export_executorch(quantize_xnnpack(model, calibration), example, path)
    return f"int8 (PT2E, XNNPACK quantizer, per-channel), {len(calibration)} calibration images; {detail}"
