"""int8 post-training quantization, judged by what the user cares about: top-1 of fp32 and int8,
side by side, in every runtime with an int8 path (``repvit quantize-eval``).

The writers live with their runtimes (:func:`.executorch.export_executorch_int8`: PT2E with the
XNNPACK quantizer; :func:`.onnx.export_onnx_int8`: ONNX Runtime static QDQ). RepVGG-style
reparameterized models are known to be delicate to quantize (the fused depthwise kernels mix
branches of very different scales), so every int8 artifact is measured on real held-out images.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..data import EVAL_CROP_PCT, DatasetError, ImageSet, calibration_images, image_set, resolve_image_source
from ..data.calibration import shuffled
from ..factory import create_model
from ..reparam import reparameterize
from ..utils import UserError, first_line, param, topk_hits
from ..weights import read_checkpoint
from .driver import INT8_FORMATS
from .formats import FORMATS, check_formats
from .parity import evaluate_artifact

__all__ = ["quantize_eval", "format_quantize_eval"]


def quantize_eval(model, data, *, weights=None, formats=("executorch", "onnx"), img_size: int = 224,
                  crop_pct: float = EVAL_CROP_PCT, calib_images: int = 512, val_images: int | None = None,
                  out_dir=None) -> dict:
    """Top-1 of fp32 and int8 on ``data``'s val split, side by side, in every runtime with an int8 path.

    Calibrates on ``calib_images`` images of the train split (the val split is never seen), exports
    each format twice (fp32 and int8, both from the reparameterized model) and evaluates both
    artifacts on the same val images. Returns ``{"model", "val_images", "pytorch": {...},
    "rows": [{"runtime", "precision", "top1", "agreement", "cosine", ...}]}``.
    """
    formats = _int8_formats(formats)
    if calib_images < 1 or (val_images is not None and val_images < 1):
        raise UserError(f"{param('calib_images')} and {param('val_images')} must be >= 1")
    checkpoint = read_checkpoint(weights) if isinstance(model, str) and weights is not None else None
    name = model if isinstance(model, str) else type(model).__name__
    net = reparameterize(create_model(model, weights=checkpoint) if isinstance(model, str) else model).eval()
    root = resolve_image_source(data)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DatasetError(f"{param('data')} {data}: expected train/ and val/ folders (calibration on train, top-1 on val)")
    calibration = calibration_images(root, img_size, calib_images, crop_pct=crop_pct)
    val = _val_set(root, data, net, checkpoint, img_size, crop_pct, val_images)
    val_images, pytorch_top1 = _pytorch_top1(net, val, data)
    report = {"model": name, "weights": str(weights) if weights else None, "data": str(data), "val_images": val_images,
              "calib_images": len(calibration), "img_size": img_size, "pytorch": {"top1": pytorch_top1}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            for precision in ("fp32", "int8"):
                path = out / f"{name}{'_int8' if precision == 'int8' else ''}{FORMATS[fmt].suffix}"
                report["rows"].append(_runtime_row(fmt, precision, net, calibration, val, path))
    return report


def _int8_formats(formats) -> list[str]:
    formats = check_formats(formats)
    unknown = [f for f in formats if f not in INT8_FORMATS]
    if unknown:
        raise UserError(f"{param('formats')}: int8 is available for {', '.join(INT8_FORMATS)}, got {', '.join(unknown)}")
    return formats


def _val_set(root: Path, data, net: nn.Module, checkpoint, img_size, crop_pct, val_images) -> ImageSet:
    """The val images, checked against the model's classes (a fixed random subset when asked)."""
    val = image_set(root, "val", img_size, crop_pct, argument="data")
    if val_images is not None:
        val = val.subset(shuffled(len(val), 1)[:val_images])
    num_classes = getattr(net, "num_classes", None)
    if num_classes is not None and num_classes != len(val.classes):
        raise DatasetError(f"{param('data')} {data}: {len(val.classes)} classes, but the model has {num_classes} outputs "
                           f"(pass {param('weights')} trained on this dataset)")
    if checkpoint is not None and checkpoint.class_names and checkpoint.class_names != val.classes:
        raise DatasetError(f"{param('data')} {data}: class folders {val.classes[:3]}... differ from the checkpoint's "
                           f"classes {checkpoint.class_names[:3]}...")
    return val


def _pytorch_top1(net: nn.Module, val: ImageSet, data) -> tuple[int, float]:
    hits = n = 0
    with torch.no_grad():
        for x, y in val:
            hits += topk_hits(net(x), torch.tensor([y]), (1,))[0]
            n += 1
    if n == 0:
        raise DatasetError(f"{param('data')} {data}: no readable images in val/")
    return n, 100 * hits / n


def _runtime_row(fmt: str, precision: str, net: nn.Module, calibration, val: ImageSet, path: Path) -> dict:
    """Export ``net`` in one format and precision and evaluate it on ``val``: one row, never a crash."""
    spec = FORMATS[fmt]
    row = {"runtime": INT8_FORMATS[fmt], "precision": precision}
    missing = spec.missing()
    if missing:
        return {**row, "status": f"unavailable: {missing}"}
    example, start = calibration[0], time.perf_counter()
    try:
        with torch.no_grad():
            if precision == "fp32":
                spec.write(net, example, path)
            else:
                spec.write_int8(net, example, path, calibration)
        row["export_seconds"] = time.perf_counter() - start
        return {**row, "status": "ok", **evaluate_artifact(spec.load(path), val, net)}
    except Exception as err:
        return {**row, "status": f"failed: {first_line(err, with_type=True)}"}


def format_quantize_eval(report: dict) -> str:
    """A markdown table of :func:`quantize_eval`'s report."""
    lines = [f"{report['model']} on {report['data']}: {report['val_images']} val images, "
             f"{report['calib_images']} calibration images (train split), {report['img_size']} px; "
             f"PyTorch fp32 top-1 {report['pytorch']['top1']:.2f}%", "",
             "| runtime | precision | top-1 % | agreement with PyTorch fp32 % | cosine | max abs logit diff |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['runtime']} | {r['precision']} | {r['status']} | | | |")
            continue
        lines.append(f"| {r['runtime']} | {r['precision']} | {r['top1']:.2f} | {r['agreement']:.2f} | "
                     f"{r['cosine']:.5f} | {r['max_abs_diff']:.3g} |")
    return "\n".join(lines)
