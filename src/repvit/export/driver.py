"""``export()``: reparameterize, write each requested format, reload it in its runtime, compare.

Every artifact is reloaded in its runtime and compared with the PyTorch output on the same input;
a JSON file of metadata (input, preprocessing, parity, versions) is written next to it. int8
artifacts are compared on held-out real images instead (random inputs say little about int8).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import EVAL_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, calibration_and_held_out
from ..factory import create_model
from ..models import get_variant
from ..reparam import reparameterize
from ..utils import first_line, package_versions, param
from .common import ExportError, ParitySkipped
from .formats import FORMATS, RUNTIME_PACKAGES, ExportFormat, check_formats
from .parity import INT8_MIN_COSINE, as_tensor, evaluate_artifact, parity_tolerance

__all__ = ["ExportResult", "export", "INT8_FORMATS"]


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


#: Formats with an int8 writer in the table -> the runtime that executes them.
INT8_FORMATS = {"executorch": "executorch", "onnx": "onnxruntime"}
assert set(INT8_FORMATS) == {name for name, fmt in FORMATS.items() if fmt.write_int8}


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
    crop_pct: float = EVAL_CROP_PCT,
) -> list[ExportResult]:
    """Reparameterize ``model`` (a registered name or a module) and export it to each format.

    ``int8`` quantizes after reparameterization, calibrating on ``calib_images`` real images from
    ``calib`` (an ImageFolder root or ``"digits"``), and compares with fp32 on held-out images.
    """
    names = check_formats(formats)
    _check_request(img_size, batch, dynamic_batch, int8, calib, calib_images)
    name, net = _deployed(model, weights)
    example = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = net(example)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(dynamic_batch=dynamic_batch, image_input=image_input, coreml_precision=coreml_precision)
    calibration = calibration_and_held_out(calib, img_size, calib_images, crop_pct=crop_pct) if int8 else None
    results = []
    for fmt in (FORMATS[n] for n in names):
        path = out / f"{name}{'_int8' if int8 else ''}{fmt.suffix}"
        with torch.no_grad():
            if int8:
                result = _export_int8(fmt, net, path, *calibration)
            else:
                result = _export_fp32(fmt, net, example, reference, path, options, tolerance)
        results.append(result)
        if result.status in ("ok", "parity failed"):
            _write_metadata(path, name, weights, result, example, fmt, image_input, crop_pct)
    return results


def _check_request(img_size, batch, dynamic_batch, int8, calib, calib_images) -> None:
    if img_size < 32 or batch < 1:
        raise ExportError(f"{param('img_size')} must be >= 32 and {param('batch')} >= 1, got {img_size} and {batch}")
    if int8 and (calib is None or batch != 1 or dynamic_batch):
        raise ExportError(f"{param('int8')} needs {param('calib')} DATA (an ImageFolder root or 'digits': real images "
                          f"to calibrate on), {param('batch')} 1 and no {param('dynamic_batch')}")
    if int8 and calib_images < 1:
        raise ExportError(f"{param('calib_images')} must be >= 1, got {calib_images}")


def _deployed(model, weights) -> tuple[str, nn.Module]:
    """The name and a deployed float32 copy of ``model`` (a registered name, or a module)."""
    if isinstance(model, str):
        get_variant(model)
        name, net = model, create_model(model, weights=weights, deploy=True)
    else:
        if weights is not None:
            raise ExportError(f"{param('weights')} applies to a model name; load the weights into the module first")
        name, net = getattr(model, "name", type(model).__name__.lower()), model
    return name, reparameterize(net).float()  # a new deployed copy, eval mode (a deployed input stays equal)


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _write_artifact(label: str, fmt: ExportFormat, path: Path, write) -> ExportResult:
    """One row for writing one artifact: unavailable (a missing extra), export failed, or ok."""
    missing = fmt.missing()
    if missing:
        return ExportResult(label, "unavailable", parity="not run", detail=missing)
    start = time.perf_counter()
    try:
        detail = write()
    except Exception as err:  # one row per format: a failing backend never hides the others
        return ExportResult(label, "export failed", parity="not run", detail=first_line(err, with_type=True),
                            export_seconds=time.perf_counter() - start)
    return ExportResult(label, "ok", str(path), size_mb=_size_mb(path), export_seconds=time.perf_counter() - start,
                        detail=detail)


def _export_fp32(fmt: ExportFormat, model: nn.Module, example: torch.Tensor, reference: torch.Tensor,
                 path: Path, options: dict, tolerance: float) -> ExportResult:
    result = _write_artifact(fmt.name, fmt, path, lambda: fmt.write(model, example, path, **options))
    if not result.ok:
        return result
    x, expected = fmt.parity_input(model, example, options) if fmt.parity_input else (example, None)
    expected = reference if expected is None else expected
    try:
        output = as_tensor(fmt.load(path, **options)(x), expected.shape)
    except ParitySkipped as why:
        result.parity = f"skipped: {why}"
        return result
    except Exception as err:
        result.status, result.parity = "parity failed", f"could not run: {first_line(err, with_type=True)}"
        return result
    result.max_abs_diff = float((output - expected).abs().max())
    limit = parity_tolerance(expected, tolerance)
    if result.max_abs_diff <= limit:
        result.parity = f"ok (max abs diff {result.max_abs_diff:.1e} <= {limit:.0e})"
    else:
        result.status, result.parity = "parity failed", f"max abs diff {result.max_abs_diff:.1e} > {limit:.0e}"
    if fmt.parity_note and result.ok:
        with contextlib.suppress(Exception):  # informative only
            result.parity += "; " + fmt.parity_note(path, x, expected)
    return result


def _export_int8(fmt: ExportFormat, model: nn.Module, path: Path, calibration: list[torch.Tensor],
                 held_out: list[torch.Tensor]) -> ExportResult:
    label = f"{fmt.name} int8"
    if fmt.write_int8 is None and not fmt.missing():
        return ExportResult(label, "unavailable", parity="not run",
                            detail=f"int8 is available for {', '.join(INT8_FORMATS)}")
    result = _write_artifact(label, fmt, path, lambda: fmt.write_int8(model, calibration[0], path, calibration))
    if not result.ok:
        return result
    try:  # real held-out images: random inputs say little about int8 accuracy
        stats = evaluate_artifact(fmt.load(path), ((x, None) for x in held_out), model)
    except Exception as err:
        result.status, result.parity = "parity failed", f"could not run: {first_line(err, with_type=True)}"
        return result
    result.max_abs_diff = stats["max_abs_diff"]
    result.parity = (f"top-1 agreement {stats['agreement']:.1f}%, cosine {stats['cosine']:.4f}, max abs diff "
                     f"{stats['max_abs_diff']:.2f} on {stats['images']} held-out images vs fp32")
    if stats["cosine"] < INT8_MIN_COSINE:
        result.status = "parity failed"
    return result


def _write_metadata(path: Path, name: str, weights, result: ExportResult, example: torch.Tensor,
                    fmt: ExportFormat, image_input: bool, crop_pct: float) -> None:
    image = image_input and "image_input" in fmt.options
    input_name, output_name = fmt.io_names
    shape = example.shape[1:] if fmt.layout == "CHW" else example.shape
    meta = {
        "model": name,
        "weights": None if weights is None else str(weights),
        "reparameterized": True,
        "input": {"name": input_name, "shape": list(shape), "layout": fmt.layout,
                  "dtype": "uint8 RGB image" if image else "float32"},
        "preprocessing": ("none: RGB pixels 0..255, normalisation built in" if image else
                          {"resize": f"shorter side to img_size / {crop_pct}, bicubic", "center_crop": example.shape[-1],
                           "mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD)}),
        "output": {"name": output_name},
        "export": {k: v for k, v in asdict(result).items() if k != "path"},
        "versions": package_versions(RUNTIME_PACKAGES),
    }
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2))
