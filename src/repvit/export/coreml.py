"""Core ML: an ML Program ``.mlpackage`` (the route of the paper's iPhone 12 latencies), validated
with coremltools' spec loader; it executes only on macOS, so parity elsewhere is reported as skipped."""

from __future__ import annotations

import logging
import platform
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from ..utils import param
from .common import INPUT_NAME, OUTPUT_NAME, ExportError, ParitySkipped

__all__ = ["export_coreml", "load_coreml", "import_coremltools", "save_mlpackage", "require_macos", "NormalizedImageInput", "image_pixels", "parity_input"]


def import_coremltools():
    # Off macOS coremltools warns at import that its runtime is missing, and it warns about every
    # torch/scikit-learn release it has not been tested with; neither is actionable here.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools

    return coremltools


class NormalizedImageInput(nn.Module):
    """Takes RGB pixels in 0..255 and applies the ImageNet normalisation inside the model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1) * 255)

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def export_coreml(model: nn.Module, example: torch.Tensor, path: Path, *, image_input: bool = False,
                  precision: str = "fp32") -> str:
    """Write an ML Program ``.mlpackage`` and validate it with coremltools' spec loader."""
    ct = import_coremltools()

    if precision not in ("fp32", "fp16"):
        raise ExportError(f"{param('coreml_precision')} must be fp32 or fp16, got {precision!r}")
    if image_input:
        model = NormalizedImageInput(model).eval()
        inputs = [ct.ImageType(name=INPUT_NAME, shape=tuple(example.shape), color_layout=ct.colorlayout.RGB)]
    else:
        inputs = [ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape))]
    program = torch.export.export(model, (example,)).run_decompositions({})
    mlmodel = ct.convert(
        program, convert_to="mlprogram", inputs=inputs, outputs=[ct.TensorType(name=OUTPUT_NAME)],
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS16,
    )
    spec = save_mlpackage(mlmodel, path)
    if spec.WhichOneof("Type") != "mlProgram":
        raise ExportError(f"{path}: expected an ML Program, got {spec.WhichOneof('Type')}")
    got = ([i.name for i in spec.description.input], [o.name for o in spec.description.output])
    if got != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"{path}: unexpected inputs/outputs {got}")
    kind = "image input, normalisation built in" if image_input else "tensor input"
    return f"ML Program, spec v{spec.specificationVersion}, {precision}, {kind}"


def save_mlpackage(mlmodel, path: Path):
    """Write ``mlmodel`` to ``path`` (replacing it) and return its spec as coremltools reads it back:
    the validation available off macOS."""
    if path.exists():
        shutil.rmtree(path)
    mlmodel.save(str(path))
    return import_coremltools().utils.load_spec(str(path))


def require_macos() -> None:
    """Raise :class:`ParitySkipped` off macOS, where Core ML cannot execute a model."""
    if platform.system() != "Darwin":
        raise ParitySkipped("Core ML executes only on macOS; the package was validated with coremltools' spec loader")


def load_coreml(path: Path, image_input: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    require_macos()
    ct = import_coremltools()

    mlmodel = ct.models.MLModel(str(path))

    def run(x: torch.Tensor) -> np.ndarray:
        if image_input:
            if x.shape[0] != 1:
                raise ParitySkipped("Core ML image input takes one image at a time")
            pixels = x[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
            return mlmodel.predict({INPUT_NAME: Image.fromarray(pixels)})[OUTPUT_NAME]
        return mlmodel.predict({INPUT_NAME: x.numpy()})[OUTPUT_NAME]

    return run


def image_pixels(x: torch.Tensor) -> torch.Tensor:
    """RGB pixels 0..255 that normalise to ``x`` (up to rounding): the input of an image-input model."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1) * 255
    return (x * std + mean).clamp(0, 255).round()


def parity_input(model: nn.Module, example: torch.Tensor, options: dict):
    """What the parity check feeds the package and what PyTorch answers to it (None: ``model(example)``)."""
    if not options.get("image_input"):
        return example, None
    pixels = image_pixels(example)
    return pixels, NormalizedImageInput(model)(pixels)
