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
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .reparam import reparameterize

__all__ = ["ExportFormat", "ExportResult", "FORMATS", "export", "export_onnx", "export_executorch",
           "export_coreml", "load_onnx", "load_executorch", "parity_tolerance", "ExportError"]

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


# ----------------------------------------------------------------------------------------------
# The export table and the driver
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    requires: tuple[str, ...]  # importable modules it needs
    description: str


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", ".onnx", ("onnx", "onnxscript", "onnxruntime"), "ONNX, checked in ONNX Runtime"),
        ExportFormat("executorch", ".pte", ("executorch",), "ExecuTorch + XNNPACK, checked in its runtime"),
        ExportFormat("coreml", ".mlpackage", ("coremltools",), "Core ML ML Program (.mlpackage)"),
    )
}


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
    names = [f.strip().lower() for item in ([formats] if isinstance(formats, str) else formats)
             for f in str(item).split(",") if f.strip()]
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
    from .quantize import INT8_FORMATS, evaluate_artifact, export_executorch_int8, export_onnx_int8

    if fmt.name not in INT8_FORMATS:
        return ExportResult(f"{fmt.name} int8", "unavailable", parity="not run",
                            detail=f"int8 is available for {', '.join(INT8_FORMATS)}")
    result, start = ExportResult(f"{fmt.name} int8", "ok", str(path)), time.perf_counter()
    try:
        exporter = export_onnx_int8 if fmt.name == "onnx" else export_executorch_int8
        result.detail = exporter(model, calibration[0], path, calibration)
    except Exception as err:
        return ExportResult(result.format, "export failed", parity="not run", detail=_first_line(err),
                            export_seconds=time.perf_counter() - start)
    result.export_seconds, result.size_mb = time.perf_counter() - start, _size_mb(path)
    try:  # real held-out images: random inputs say little about int8 accuracy
        run = load_onnx(path) if fmt.name == "onnx" else load_executorch(path)
        stats = evaluate_artifact(run, held_out, model)
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
                            detail=f"missing package {', '.join(missing)}: pip install 'repvit[export]'")
    if calibration is not None:
        return _export_int8(fmt, model, path, *calibration)
    start = time.perf_counter()
    try:
        if fmt.name == "onnx":
            result.detail = export_onnx(model, example, path, dynamic_batch=options.get("dynamic_batch", False))
            runner = lambda: load_onnx(path)  # noqa: E731
        elif fmt.name == "executorch":
            result.detail = export_executorch(model, example, path)
            runner = lambda: load_executorch(path)  # noqa: E731
        else:
            image_input = options.get("image_input", False)
            result.detail = export_coreml(model, example, path, image_input=image_input,
                                          precision=options.get("coreml_precision", "fp32"))
            runner = lambda: load_coreml(path, image_input)  # noqa: E731
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
        output = torch.from_numpy(np.asarray(runner()(x), dtype=np.float32)).reshape(reference.shape)
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
    return result


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
    if int8 and (calib is None or batch != 1):
        raise ExportError("--int8 needs --calib DATA (an ImageFolder root or 'digits': real images to calibrate "
                          "on) and --batch 1")
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
        from .quantize import calibration_images, held_out_images

        calibration = (calibration_images(calib, img_size, calib_images, crop_pct=crop_pct),
                       held_out_images(calib, img_size, crop_pct=crop_pct))
    results = []
    for fmt_name in names:
        fmt = FORMATS[fmt_name]
        path = out / f"{name}{'_int8' if int8 else ''}{fmt.suffix}"
        with torch.no_grad():
            result = _export_one(fmt, net, example, reference, path, options, tolerance, calibration)
        results.append(result)
        if result.status in ("ok", "parity failed"):
            _write_metadata(path, name, weights, result, example, image_input, fmt_name)
    return results


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("repvit", "torch", "onnx", "onnxruntime", "executorch", "coremltools"):
        with contextlib.suppress(PackageNotFoundError):
            found[pkg] = version(pkg)
    return found


def _write_metadata(path: Path, name: str, weights, result: ExportResult, example: torch.Tensor,
                    image_input: bool, fmt: str) -> None:
    image = fmt == "coreml" and image_input
    meta = {
        "model": name,
        "weights": None if weights is None else str(weights),
        "reparameterized": True,
        "input": {"name": INPUT_NAME, "shape": list(example.shape), "layout": "NCHW",
                  "dtype": "uint8 RGB image" if image else "float32"},
        "preprocessing": ("none: RGB pixels 0..255, normalisation built in" if image else
                          {"resize": "shorter side to img_size / 0.875, bicubic", "center_crop": example.shape[-1],
                           "mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD)}),
        "output": {"name": OUTPUT_NAME},
        "export": {k: v for k, v in asdict(result).items() if k != "path"},
        "versions": _versions(),
    }
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2))
