"""ncnn: ``<name>_ncnn/model.ncnn.{param,bin}`` through ``pnnx``, run in ncnn's Python binding, fp32
(the parity) and fp16 storage (ncnn's default on CPUs that support it; reported beside it)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .common import ExportError, captured_output

__all__ = ["export_ncnn", "load_ncnn", "fp16_note", "NCNN_FILES"]

NCNN_FILES = ("model.ncnn.param", "model.ncnn.bin")


def export_ncnn(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``path/model.ncnn.{param,bin}`` (fp32 weights) through pnnx; ncnn takes one image."""
    import pnnx

    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with captured_output() as log, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pnnx traces with torch.jit (deprecated)
            pnnx.export(model, str(work / "model.pt"), (example[:1],), fp16=False,
                        ncnnparam=str(work / NCNN_FILES[0]), ncnnbin=str(work / NCNN_FILES[1]))
        for name in NCNN_FILES:  # pnnx reports failures on its output, not with an exception
            if not (work / name).is_file():
                raise ExportError(f"pnnx wrote no {name}: {([line for line in log if line.strip()] or ['no output'])[-1]}")
            shutil.copy(work / name, path / name)
    return "ncnn param/bin via pnnx, fp32 weights, batch 1 (images run one at a time)"


def load_ncnn(path: Path, threads: int | None = None, fp16: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    """ncnn's Python binding for ``path`` (a folder); ``fp16`` turns on ncnn's fp16 storage/arithmetic."""
    import ncnn

    net = ncnn.Net()
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic"):
        setattr(net.opt, option, fp16)  # ncnn's default is fp16 wherever the CPU supports it
    net.opt.num_threads = threads or os.cpu_count()
    if net.load_param(str(Path(path) / NCNN_FILES[0])) or net.load_model(str(Path(path) / NCNN_FILES[1])):
        raise ExportError(f"{path}: ncnn could not load {NCNN_FILES[0]} / {NCNN_FILES[1]}")

    def run(x: torch.Tensor) -> np.ndarray:
        outputs = []
        for image in x:
            extractor = net.create_extractor()
            # ncnn.Mat wraps the array without copying or keeping it alive: hold the (possibly
            # converted) array in a variable and give ncnn its own copy
            pixels = np.ascontiguousarray(image.detach().float().numpy(), dtype=np.float32)
            mat = ncnn.Mat(pixels).clone()
            extractor.input("in0", mat)
            status, out = extractor.extract("out0")
            del pixels
            if status:
                raise ExportError(f"{path}: ncnn extract failed with status {status}")
            outputs.append(np.array(out, dtype=np.float32).reshape(-1))
        return np.stack(outputs)

    return run


def fp16_note(path: Path, x: torch.Tensor, reference: torch.Tensor) -> str:
    """How far ncnn's default fp16 storage (what it runs on CPUs with fp16 support) is from fp32."""
    output = torch.from_numpy(np.asarray(load_ncnn(path, fp16=True)(x), dtype=np.float32)).reshape(reference.shape)
    return f"fp16 storage (ncnn's default): max abs diff {float((output - reference).abs().max()):.1e}"
