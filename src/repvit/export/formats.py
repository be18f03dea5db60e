"""The export table, keyed by name: one row per runtime, naming its backend's functions.

Each backend module (:mod:`.onnx`, :mod:`.executorch`, :mod:`.coreml`, :mod:`.litert`, :mod:`.ncnn`,
:mod:`.openvino`) owns its export, its loader and, where there is one, its int8 writer; every
backend imports its heavy dependency inside those functions, so a missing optional package only
affects its own row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..utils import missing_extra, split_list
from . import coreml, executorch, litert, ncnn, onnx, openvino
from .common import INPUT_NAME, OUTPUT_NAME, ExportError

__all__ = ["ExportFormat", "FORMATS", "FORMAT_ALIASES", "RUNTIME_PACKAGES", "check_formats"]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str  # appended to the model name: a file (".onnx") or a folder ("_ncnn")
    requires: tuple[str, ...]  # importable modules it needs
    extra: str  # the pip extra that installs them: pip install 'repvit-toolkit[<extra>]'
    description: str
    writer: Callable = field(repr=False)  # (model, example, path, **options) -> detail
    loader: Callable = field(repr=False)  # (path, **options) -> run(x) -> ndarray
    options: tuple[str, ...] = ()  # the export options it takes (the others do not apply to it)
    load_options: tuple[str, ...] = ("threads",)
    io_names: tuple[str, str] = (INPUT_NAME, OUTPUT_NAME)
    layout: str = "NCHW"  # of one input: "CHW" for runtimes that take one image at a time
    write_int8: Callable | None = field(default=None, repr=False)  # (model, example, path, calibration) -> detail
    parity_input: Callable | None = field(default=None, repr=False)  # (model, x, **options) -> (x, reference)
    parity_note: Callable | None = field(default=None, repr=False)  # (path, x, reference) -> extra parity text

    def missing(self) -> str | None:
        """Why this format cannot run here (``missing package ...: pip install ...``), or None."""
        return missing_extra(self.requires, self.extra)

    def write(self, model, example, path, **options) -> str:
        """Export ``model`` to ``path``; options that do not apply to this format are ignored."""
        return self.writer(model, example, path, **{k: v for k, v in options.items() if k in self.options})

    def load(self, path, **options) -> Callable:
        """A function running the artifact at ``path`` on a torch tensor (options as in :meth:`write`)."""
        return self.loader(path, **{k: v for k, v in options.items() if k in self.load_options})


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", ("onnx", "onnxscript", "onnxruntime"), "export", "ONNX, checked in ONNX Runtime",
                 onnx.export_onnx, onnx.load_onnx, options=("dynamic_batch",), write_int8=onnx.export_onnx_int8),
    ExportFormat("executorch", ".pte", ("executorch",), "export", "ExecuTorch + XNNPACK, checked in its runtime",
                 executorch.export_executorch, executorch.load_executorch, load_options=(),
                 write_int8=executorch.export_executorch_int8),
    ExportFormat("coreml", ".mlpackage", ("coremltools",), "export", "Core ML ML Program (.mlpackage)",
                 lambda m, x, p, image_input=False, coreml_precision="fp32": coreml.export_coreml(
                     m, x, p, image_input=image_input, precision=coreml_precision),
                 coreml.load_coreml, options=("image_input", "coreml_precision"), load_options=("image_input",),
                 parity_input=coreml.parity_input),
    ExportFormat("litert", ".tflite", ("litert_torch", "ai_edge_litert"), "litert",
                 "LiteRT/TFLite, checked in the LiteRT interpreter (XNNPACK)", litert.export_litert,
                 litert.load_litert, io_names=("args_0", "output_0")),
    ExportFormat("ncnn", "_ncnn", ("pnnx", "ncnn"), "ncnn", "ncnn via pnnx, checked in ncnn (fp32 and fp16)",
                 ncnn.export_ncnn, ncnn.load_ncnn, io_names=("in0", "out0"), layout="CHW",
                 parity_note=ncnn.fp16_note),
    ExportFormat("openvino", "_openvino", ("openvino",), "openvino", "OpenVINO IR, checked in OpenVINO (f32)",
                 openvino.export_openvino, openvino.load_openvino),
)}

#: Other names users type for a format.
FORMAT_ALIASES = {"tflite": "litert", "tfl": "litert", "ov": "openvino", "pte": "executorch", "mlpackage": "coreml"}

#: The packages whose versions an artifact's metadata (and a benchmark) records.
RUNTIME_PACKAGES = ("repvit", "torch", "onnx", "onnxruntime", "executorch", "coremltools", "litert-torch",
                    "ai-edge-litert", "pnnx", "ncnn", "openvino")


def check_formats(formats) -> list[str]:
    """Format names (aliases resolved, duplicates dropped) from a name, a comma list or a list."""
    names = [FORMAT_ALIASES.get(f.lower(), f.lower()) for f in split_list(formats)]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ExportError(f"unknown export format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))
