"""Export to the runtimes phones use, always from the reparameterized model, always checked.

One table, :data:`FORMATS`, keyed by name. Each backend has an ``export_*`` function (model ->
file) and a ``load_*`` function (file -> callable running it), both importing their heavy
dependency inside, so a missing optional package only affects its own format.

* ``onnx``: torch's dynamo exporter (opset 20, native ``Gelu``), run in ONNX Runtime.
* ``executorch``: ``.pte`` with the XNNPACK delegate (the CPU backend of ExecuTorch on Android and
  iOS), run in ExecuTorch's Python runtime.
* ``coreml``: ``.mlpackage`` ML Program (the route of the paper's iPhone 12 latencies), checked
  with coremltools' spec loader; it can only be executed on macOS, elsewhere parity is reported
  as skipped.
* ``litert`` (alias ``tflite``): ``.tflite`` from the ``litert-torch`` converter, run in the
  ``ai-edge-litert`` interpreter with XNNPACK (Android's standard runtime). Input stays NCHW.
* ``ncnn``: ``<name>_ncnn/model.ncnn.{param,bin}`` through ``pnnx``, run in ncnn's Python binding,
  fp32 (the parity) and fp16 storage (ncnn's default on CPUs that support it; reported).
* ``openvino``: ``<name>_openvino/model.{xml,bin}`` (fp32 weights), run with f32 inference
  precision set explicitly (the default on some CPUs is bf16).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .reparam import reparameterize

__all__ = ["ExportFormat", "ExportResult", "FORMATS", "export", "export_onnx", "export_executorch",
           "export_coreml", "export_litert", "export_ncnn", "export_openvino", "load_onnx", "load_executorch",
           "load_litert", "load_ncnn", "load_openvino", "parity_tolerance", "ExportError"]

INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ExportError(ValueError):
    """A request that cannot be exported (unknown format, missing package, bad option)."""


class ParitySkipped(Exception):
    """The artifact cannot be executed on this machine (the reason is the message)."""


def parity_tolerance(reference: torch.Tensor, tolerance: float = 1e-4) -> float:
    """``tolerance`` on logits of magnitude ~1: scaled up for larger logits, never down."""
    return tolerance * max(1.0, float(reference.abs().max()))


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------


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


def load_onnx(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], np.ndarray]:
    """An ONNX Runtime CPU session for ``path`` as a function of a torch tensor."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: x.numpy()})[0]

    return run


# ----------------------------------------------------------------------------------------------
# ExecuTorch
# ----------------------------------------------------------------------------------------------

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


def export_executorch(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``model`` as an ExecuTorch program with the XNNPACK delegate; describe delegation."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model, (example,))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    detail = ""
    with contextlib.suppress(Exception):  # delegation statistics are informative only
        from executorch.devtools.backend_debug import get_delegation_info

        info = get_delegation_info(edge.exported_program().graph_module)
        total = info.num_delegated_nodes + info.num_non_delegated_nodes
        detail = f"{info.num_delegated_nodes}/{total} nodes delegated to XNNPACK"
    path.write_bytes(edge.to_executorch().buffer)
    return detail


def load_executorch(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """ExecuTorch's Python runtime for ``path`` as a function of a torch tensor."""
    global _ET_LOADED
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    _ET_LOADED = True

    def run(x: torch.Tensor) -> np.ndarray:
        return method.execute([x])[0].numpy()

    return run


# ----------------------------------------------------------------------------------------------
# Core ML
# ----------------------------------------------------------------------------------------------


def _import_coremltools():
    # Off macOS coremltools warns at import that its runtime is missing, and it warns about every
    # torch/scikit-learn release it has not been tested with; neither is actionable here.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools

    return coremltools


class _NormalizedImageInput(nn.Module):
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
    ct = _import_coremltools()

    if precision not in ("fp32", "fp16"):
        raise ExportError(f"--coreml-precision must be fp32 or fp16, got {precision!r}")
    if image_input:
        model = _NormalizedImageInput(model).eval()
        inputs = [ct.ImageType(name=INPUT_NAME, shape=tuple(example.shape), color_layout=ct.colorlayout.RGB)]
    else:
        inputs = [ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape))]
    program = torch.export.export(model, (example,)).run_decompositions({})
    mlmodel = ct.convert(
        program, convert_to="mlprogram", inputs=inputs, outputs=[ct.TensorType(name=OUTPUT_NAME)],
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS16,
    )
    if path.exists():
        shutil.rmtree(path)
    mlmodel.save(str(path))
    spec = ct.utils.load_spec(str(path))  # validation: the saved package parses as a Core ML model
    if spec.WhichOneof("Type") != "mlProgram":
        raise ExportError(f"{path}: expected an ML Program, got {spec.WhichOneof('Type')}")
    got = ([i.name for i in spec.description.input], [o.name for o in spec.description.output])
    if got != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"{path}: unexpected inputs/outputs {got}")
    kind = "image input, normalisation built in" if image_input else "tensor input"
    return f"ML Program, spec v{spec.specificationVersion}, {precision}, {kind}"


def load_coreml(path: Path, image_input: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    if platform.system() != "Darwin":
        raise ParitySkipped("Core ML executes only on macOS; the package was validated with coremltools' spec loader")
    from PIL import Image

    ct = _import_coremltools()

    mlmodel = ct.models.MLModel(str(path))

    def run(x: torch.Tensor) -> np.ndarray:
        if image_input:
            if x.shape[0] != 1:
                raise ParitySkipped("Core ML image input takes one image at a time")
            pixels = x[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
            return mlmodel.predict({INPUT_NAME: Image.fromarray(pixels)})[OUTPUT_NAME]
        return mlmodel.predict({INPUT_NAME: x.numpy()})[OUTPUT_NAME]

    return run


@contextlib.contextmanager
def _captured_output():
    """Send what native converters print (C++ and subprocesses included) to a buffer, not the terminal.

    Yields a list that holds the captured lines once the block ends.
    """
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            log.seek(0)
            lines.extend(log.read().decode(errors="replace").splitlines())


# ----------------------------------------------------------------------------------------------
# LiteRT (TFLite)
# ----------------------------------------------------------------------------------------------


def export_litert(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``model`` as a ``.tflite`` flatbuffer with Google's ``litert-torch`` converter."""
    with _captured_output():
        import litert_torch

        litert_torch.convert(model, (example,)).export(str(path))
    return "LiteRT flatbuffer (litert-torch), NCHW input"


def load_litert(path: Path, threads: int | None = None) -> Callable[[torch.Tensor], np.ndarray]:
    """The LiteRT interpreter (XNNPACK delegate) for ``path`` as a function of a torch tensor."""
    with _captured_output():
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
        interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x: torch.Tensor) -> np.ndarray:
        interpreter.set_tensor(inp["index"], x.numpy())
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run


# ----------------------------------------------------------------------------------------------
# ncnn
# ----------------------------------------------------------------------------------------------

NCNN_FILES = ("model.ncnn.param", "model.ncnn.bin")


def export_ncnn(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``path/model.ncnn.{param,bin}`` (fp32 weights) through pnnx; ncnn takes one image."""
    import pnnx

    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with _captured_output() as log, warnings.catch_warnings():
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


# ----------------------------------------------------------------------------------------------
# OpenVINO
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# The export table and the driver
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str  # appended to the model name: a file (".onnx") or a folder ("_ncnn")
    requires: tuple[str, ...]  # importable modules it needs
    extra: str  # the pip extra that installs them: pip install 'repvit[<extra>]'
    description: str
    write: Callable = field(repr=False)  # (model, example, path, **options) -> detail
    load: Callable = field(repr=False)  # (path, **options) -> run(x) -> ndarray
    io_names: tuple[str, str] = (INPUT_NAME, OUTPUT_NAME)
    write_int8: Callable | None = field(default=None, repr=False)  # (model, example, path, calibration) -> detail


def _write_onnx_int8(model, example, path, calibration):
    from .quantize import export_onnx_int8

    return export_onnx_int8(model, example, path, calibration)


def _write_executorch_int8(model, example, path, calibration):
    from .quantize import export_executorch_int8

    return export_executorch_int8(model, example, path, calibration)


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", ".onnx", ("onnx", "onnxscript", "onnxruntime"), "export", "ONNX, checked in ONNX Runtime",
                     lambda m, x, p, dynamic_batch=False, **_: export_onnx(m, x, p, dynamic_batch=dynamic_batch),
                     lambda p, threads=None, **_: load_onnx(p, threads), write_int8=_write_onnx_int8),
        ExportFormat("executorch", ".pte", ("executorch",), "export", "ExecuTorch + XNNPACK, checked in its runtime",
                     lambda m, x, p, **_: export_executorch(m, x, p), lambda p, **_: load_executorch(p),
                     write_int8=_write_executorch_int8),
        ExportFormat("coreml", ".mlpackage", ("coremltools",), "export", "Core ML ML Program (.mlpackage)",
                     lambda m, x, p, image_input=False, coreml_precision="fp32", **_: export_coreml(
                         m, x, p, image_input=image_input, precision=coreml_precision),
                     lambda p, image_input=False, **_: load_coreml(p, image_input)),
        ExportFormat("litert", ".tflite", ("litert_torch", "ai_edge_litert"), "litert",
                     "LiteRT/TFLite, checked in the LiteRT interpreter (XNNPACK)",
                     lambda m, x, p, **_: export_litert(m, x, p), lambda p, threads=None, **_: load_litert(p, threads),
                     ("args_0", "output_0")),
        ExportFormat("ncnn", "_ncnn", ("pnnx", "ncnn"), "ncnn", "ncnn via pnnx, checked in ncnn (fp32 and fp16)",
                     lambda m, x, p, **_: export_ncnn(m, x, p), lambda p, threads=None, **_: load_ncnn(p, threads), ("in0", "out0")),
        ExportFormat("openvino", "_openvino", ("openvino",), "openvino", "OpenVINO IR, checked in OpenVINO (f32)",
                     lambda m, x, p, **_: export_openvino(m, x, p), lambda p, threads=None, **_: load_openvino(p, threads)),
    )
}

#: Other names users type for a format.
FORMAT_ALIASES = {"tflite": "litert", "tfl": "litert", "ov": "openvino", "pte": "executorch", "mlpackage": "coreml"}


@dataclass
class ExportResult:
    format: str
    status: str  # "ok", "parity failed", "export failed" or "unavailable"
    path: str | None = None
    size_mb: float | None = None
    export_seconds: float | None = None
    max_abs_diff: float | None = None
    parity: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_formats(formats) -> list[str]:
    names = [FORMAT_ALIASES.get(f.strip().lower(), f.strip().lower())
             for item in ([formats] if isinstance(formats, str) else formats) for f in str(item).split(",") if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise ExportError(f"unknown export format {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:240]}" if lines else type(err).__name__


#: An int8 artifact passes when its outputs keep this mean cosine similarity to fp32 on real images.
INT8_MIN_COSINE = 0.98


def _export_int8(fmt: ExportFormat, model: nn.Module, path: Path, calibration: list[torch.Tensor],
                 held_out: list[torch.Tensor]) -> ExportResult:
    from .quantize import INT8_FORMATS, evaluate_artifact

    if fmt.write_int8 is None:
        return ExportResult(f"{fmt.name} int8", "unavailable", parity="not run",
                            detail=f"int8 is available for {', '.join(INT8_FORMATS)}")
    result, start = ExportResult(f"{fmt.name} int8", "ok", str(path)), time.perf_counter()
    try:
        result.detail = fmt.write_int8(model, calibration[0], path, calibration)
    except Exception as err:
        return ExportResult(result.format, "export failed", parity="not run", detail=_first_line(err),
                            export_seconds=time.perf_counter() - start)
    result.export_seconds, result.size_mb = time.perf_counter() - start, _size_mb(path)
    try:  # real held-out images: random inputs say little about int8 accuracy
        stats = evaluate_artifact(fmt.load(path), ((x, None) for x in held_out), model)
    except Exception as err:
        result.status, result.parity = "parity failed", f"could not run: {_first_line(err)}"
        return result
    result.max_abs_diff = stats["max_abs_diff"]
    result.parity = (f"top-1 agreement {stats['agreement']:.1f}%, cosine {stats['cosine']:.4f}, max abs diff "
                     f"{stats['max_abs_diff']:.2f} on {stats['images']} held-out images vs fp32")
    if stats["cosine"] < INT8_MIN_COSINE:
        result.status = "parity failed"
    return result


def _export_one(fmt: ExportFormat, model: nn.Module, example: torch.Tensor, reference: torch.Tensor,
                path: Path, options: dict, tolerance: float, calibration=None) -> ExportResult:
    result = ExportResult(fmt.name, "ok", str(path))
    missing = _missing(fmt.requires)
    if missing:
        return ExportResult(fmt.name, "unavailable", parity="not run",
                            detail=f"missing package {', '.join(missing)}: pip install 'repvit[{fmt.extra}]'")
    if calibration is not None:
        return _export_int8(fmt, model, path, *calibration)
    start = time.perf_counter()
    try:
        result.detail = fmt.write(model, example, path, **options)
    except Exception as err:  # one row per format: a failing backend never hides the others
        return ExportResult(fmt.name, "export failed", parity="not run", detail=_first_line(err),
                            export_seconds=time.perf_counter() - start)
    result.export_seconds = time.perf_counter() - start
    result.size_mb = _size_mb(path)
    try:
        x = example
        if fmt.name == "coreml" and options.get("image_input"):
            x = example.mul(torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1) * 255).add(
                torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1) * 255).clamp(0, 255).round()
            reference = model(_NormalizedImageInput(nn.Identity())(x))
        output = _as_tensor(fmt.load(path, **options)(x), reference)
    except ParitySkipped as why:
        result.parity = f"skipped: {why}"
        return result
    except Exception as err:
        result.status, result.parity = "parity failed", f"could not run: {_first_line(err)}"
        return result
    result.max_abs_diff = float((output - reference).abs().max())
    limit = parity_tolerance(reference, tolerance)
    if result.max_abs_diff <= limit:
        result.parity = f"ok (max abs diff {result.max_abs_diff:.1e} <= {limit:.0e})"
    else:
        result.status, result.parity = "parity failed", f"max abs diff {result.max_abs_diff:.1e} > {limit:.0e}"
    if fmt.name == "ncnn" and result.ok:  # what a default ncnn build runs on CPUs with fp16 support
        with contextlib.suppress(Exception):
            fp16 = float((_as_tensor(load_ncnn(path, fp16=True)(x), reference) - reference).abs().max())
            result.parity += f"; fp16 storage (ncnn's default): max abs diff {fp16:.1e}"
    return result


def _as_tensor(output, reference: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.asarray(output, dtype=np.float32)).reshape(reference.shape)


def export(
    model,
    formats=("onnx", "executorch", "coreml"),
    *,
    weights=None,
    img_size: int = 224,
    batch: int = 1,
    out_dir="exports",
    dynamic_batch: bool = False,
    image_input: bool = False,
    coreml_precision: str = "fp32",
    tolerance: float = 1e-4,
    seed: int = 0,
    int8: bool = False,
    calib=None,
    calib_images: int = 512,
    crop_pct: float = 0.875,
) -> list[ExportResult]:
    """Reparameterize ``model`` (a registered name or a module) and export it to each format.

    Every artifact is reloaded in its runtime and compared with the PyTorch output on the same
    input; a JSON file of metadata (input, preprocessing, parity, versions) is written next to it.
    ``int8`` quantizes after reparameterization, calibrating on ``calib_images`` real images from
    ``calib`` (an ImageFolder root or ``"digits"``), and compares with fp32 on those images.
    """
    from .models import create_model, get_variant

    names = check_formats(formats)
    if img_size < 32 or batch < 1:
        raise ExportError(f"--img-size must be >= 32 and --batch >= 1, got {img_size} and {batch}")
    if int8 and (calib is None or batch != 1 or dynamic_batch):
        raise ExportError("--int8 needs --calib DATA (an ImageFolder root or 'digits': real images to calibrate "
                          "on), --batch 1 and no --dynamic-batch")
    if int8 and calib_images < 1:
        raise ExportError(f"--calib-images must be >= 1, got {calib_images}")
    if isinstance(model, str):
        get_variant(model)
        name = model
        net = create_model(model, weights=weights, deploy=True)
    else:
        if weights is not None:
            raise ExportError("weights= applies to a model name; load weights into the module first")
        name = getattr(model, "name", type(model).__name__.lower())
        net = model
    net = reparameterize(net).float()  # a new deployed copy, eval mode (a deployed input stays equal)
    example = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = net(example)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(dynamic_batch=dynamic_batch, image_input=image_input, coreml_precision=coreml_precision)
    calibration = None
    if int8:
        from .quantize import calibration_and_held_out

        calibration = calibration_and_held_out(calib, img_size, calib_images, crop_pct=crop_pct)
    results = []
    for fmt_name in names:
        fmt = FORMATS[fmt_name]
        path = out / f"{name}{'_int8' if int8 else ''}{fmt.suffix}"
        with torch.no_grad():
            result = _export_one(fmt, net, example, reference, path, options, tolerance, calibration)
        results.append(result)
        if result.status in ("ok", "parity failed"):
            _write_metadata(path, name, weights, result, example, image_input, fmt_name, crop_pct)
    return results


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("repvit", "torch", "onnx", "onnxruntime", "executorch", "coremltools", "litert-torch",
                "ai-edge-litert", "pnnx", "ncnn", "openvino"):
        with contextlib.suppress(PackageNotFoundError):
            found[pkg] = version(pkg)
    return found


def _write_metadata(path: Path, name: str, weights, result: ExportResult, example: torch.Tensor,
                    image_input: bool, fmt: str, crop_pct: float = 0.875) -> None:
    image = fmt == "coreml" and image_input
    input_name, output_name = FORMATS[fmt].io_names
    meta = {
        "model": name,
        "weights": None if weights is None else str(weights),
        "reparameterized": True,
        "input": {"name": input_name, "shape": list(example.shape[1:] if fmt == "ncnn" else example.shape), "layout": "CHW" if fmt == "ncnn" else "NCHW",
                  "dtype": "uint8 RGB image" if image else "float32"},
        "preprocessing": ("none: RGB pixels 0..255, normalisation built in" if image else
                          {"resize": f"shorter side to img_size / {crop_pct}, bicubic", "center_crop": example.shape[-1],
                           "mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD)}),
        "output": {"name": output_name},
        "export": {k: v for k, v in asdict(result).items() if k != "path"},
        "versions": _versions(),
    }
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2))
