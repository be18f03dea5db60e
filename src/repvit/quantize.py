"""int8 post-training quantization of the deployed (reparameterized) model, checked against fp32.

* ExecuTorch: PT2E with the XNNPACK quantizer (per-channel symmetric int8 weights, int8
  activations), calibrated on real images, lowered to the XNNPACK delegate.
* ONNX Runtime: static quantization, QDQ format, per-channel int8 weights and uint8 activations
  (the combination ORT's x86 kernels are fastest with), calibrated on the same images.

RepVGG-style reparameterized models are known to be delicate to quantize (the fused depthwise
kernels mix branches of very different scales), so every int8 artifact is compared with the fp32
model on held-out real images: top-1 agreement, cosine similarity and largest logit difference.
:func:`quantize_eval` measures what the user cares about: top-1 of fp32 and int8, per runtime.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import IMG_EXTENSIONS, DatasetError, check_image_folder, eval_transform, load_image

__all__ = ["image_samples", "calibration_images", "quantize_xnnpack", "export_executorch_int8",
           "export_onnx_int8", "compare_outputs", "evaluate_artifact", "quantize_eval", "INT8_FORMATS"]

#: Formats with an int8 path -> the runtime that executes them.
INT8_FORMATS = {"executorch": "executorch", "onnx": "onnxruntime"}


def _resolve_source(source) -> Path:
    if str(source) == "digits":
        from .data import make_digits_image_folder

        return make_digits_image_folder(Path(tempfile.gettempdir()) / "repvit-digits")
    return Path(source)


def image_samples(source, split: str = "train", img_size: int = 224, count: int | None = 512,
                  crop_pct: float = 0.875, seed: int = 0, argument: str = "--calib"):
    """Up to ``count`` images (a fixed random subset; all when ``count`` is None) of one split.

    ``source``: an ImageFolder root (its ``split`` folder; the root itself when it is a plain
    class-folder tree) or ``"digits"``. Returns (images as normalised (1, 3, H, W) tensors, labels,
    class names). Unreadable files are skipped.
    """
    root = _resolve_source(source)
    folder = root / split if (root / split).is_dir() else root
    try:
        classes = check_image_folder(folder.parent, splits=(folder.name,))
    except DatasetError as err:
        raise DatasetError(str(err).replace("--data", argument, 1)) from None
    files, labels = [], []
    for index, name in enumerate(classes):
        for f in sorted((folder / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS:
                files.append(f)
                labels.append(index)
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    order = sorted(order[:count] if count else order)
    transform = eval_transform(img_size, crop_pct)
    images, kept = [], []
    for i in order:
        try:
            images.append(transform(load_image(files[i]))[None])
            kept.append(labels[i])
        except ValueError:  # unreadable files do not stop a calibration
            continue
    if not images:
        raise DatasetError(f"{argument} {source}: no readable images in {folder}")
    return images, kept, classes


def calibration_images(source, img_size: int = 224, count: int = 512, split: str = "train",
                       crop_pct: float = 0.875, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``count`` calibration images of ``source`` (see :func:`image_samples`)."""
    return image_samples(source, split, img_size, count, crop_pct, seed)[0]


def held_out_images(source, img_size: int = 224, count: int = 128, crop_pct: float = 0.875) -> list[torch.Tensor]:
    """Images to check an int8 artifact on: the ``val`` split when there is one (not calibrated on)."""
    root = _resolve_source(source)
    split = "val" if (root / "val").is_dir() else "train"
    return image_samples(root, split, img_size, count, crop_pct, seed=1)[0]


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

    quantizer = xnnpack_quantizer()
    captured = torch.export.export(model.eval(), (calibration[0],)).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return convert_pt2e(prepared)


def export_executorch_int8(model: nn.Module, example: torch.Tensor, path: Path,
                           calibration: list[torch.Tensor]) -> str:
    from .export import export_executorch

    detail = export_executorch(quantize_xnnpack(model, calibration), example, path)
    return f"int8 (PT2E, XNNPACK quantizer, per-channel), {len(calibration)} calibration images; {detail}"


def export_onnx_int8(model: nn.Module, example: torch.Tensor, path: Path, calibration: list[torch.Tensor]) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import INPUT_NAME, export_onnx

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


def evaluate_artifact(run, images: list[torch.Tensor], reference: nn.Module, labels: list[int] | None = None) -> dict:
    """How ``run`` (an artifact's runner, batch 1) does on real images, against ``reference``.

    Returns top-1 agreement with the reference, mean cosine similarity of the logits, the largest
    logit difference and, when ``labels`` are given, top-1 accuracy.
    """
    hits = agree = 0
    cosines, max_diff = [], 0.0
    with torch.no_grad():
        for i, x in enumerate(images):
            out = torch.from_numpy(np.asarray(run(x), dtype=np.float32)).reshape(1, -1)
            ref = reference(x).float().reshape(1, -1)
            agree += int(out.argmax() == ref.argmax())
            if labels is not None:
                hits += int(out.argmax() == labels[i])
            cosines.append(float(nn.functional.cosine_similarity(out, ref).item()))
            max_diff = max(max_diff, float((out - ref).abs().max()))
    stats = {"agreement": 100 * agree / len(images), "cosine": float(np.mean(cosines)),
             "max_abs_diff": max_diff, "images": len(images)}
    if labels is not None:
        stats["top1"] = 100 * hits / len(images)
    return stats


def compare_outputs(run, reference: nn.Module, images: list[torch.Tensor]) -> dict:
    """Kept for callers that only compare: :func:`evaluate_artifact` without labels."""
    return evaluate_artifact(run, images, reference)


def quantize_eval(model, data, *, weights=None, formats=("executorch", "onnx"), img_size: int = 224,
                  crop_pct: float = 0.875, calib_images: int = 512, val_images: int | None = None,
                  out_dir=None) -> dict:
    """Top-1 of fp32 and int8 on ``data``'s val split, side by side, in every runtime with an int8 path.

    Calibrates on ``calib_images`` images of the train split (the val split is never seen), exports
    each format twice (fp32 and int8, both from the reparameterized model) and evaluates both
    artifacts on the same val images. Returns ``{"model", "val_images", "pytorch": {...},
    "rows": [{"runtime", "precision", "top1", "agreement", "cosine", ...}]}``.
    """
    from .export import FORMATS, _missing, export_executorch, export_onnx, load_executorch, load_onnx
    from .models import create_model
    from .reparam import reparameterize

    unknown = [f for f in formats if f not in INT8_FORMATS]
    if unknown or not formats:
        raise ValueError(f"--formats: int8 is available for {', '.join(INT8_FORMATS)}, got {', '.join(unknown) or '(none)'}")
    checkpoint = None
    if isinstance(model, str):
        from .weights import read_checkpoint

        checkpoint = read_checkpoint(weights) if weights is not None else None
        name, net = model, create_model(model, weights=checkpoint)
    else:
        name, net = type(model).__name__, model
    net = reparameterize(net).eval()
    root = _resolve_source(data)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DatasetError(f"--data {data}: expected train/ and val/ folders (calibration on train, top-1 on val)")
    calibration = image_samples(root, "train", img_size, calib_images, crop_pct, argument="--data")[0]
    images, labels, classes = image_samples(root, "val", img_size, val_images, crop_pct, argument="--data")
    num_classes = getattr(net, "num_classes", None)
    if num_classes is not None and num_classes != len(classes):
        raise DatasetError(f"--data {data}: {len(classes)} classes, but the model has {num_classes} outputs "
                           "(pass --weights trained on this data)")
    if checkpoint is not None and checkpoint.class_names and checkpoint.class_names != classes:
        raise DatasetError(f"--data {data}: class folders {classes[:3]}... differ from the checkpoint's classes "
                           f"{checkpoint.class_names[:3]}...")
    ref_hits = 0
    with torch.no_grad():
        for x, y in zip(images, labels):
            ref_hits += int(net(x).argmax() == y)
    report = {"model": name, "weights": str(weights) if weights else None, "data": str(data),
              "val_images": len(images), "calib_images": len(calibration), "img_size": img_size,
              "pytorch": {"top1": 100 * ref_hits / len(images)}, "rows": []}
    example = images[0]
    exporters = {"executorch": (export_executorch, export_executorch_int8, load_executorch),
                 "onnx": (export_onnx, export_onnx_int8, load_onnx)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            runtime = INT8_FORMATS[fmt]
            export_fp32, export_int8, load = exporters[fmt]
            missing = _missing(FORMATS[fmt].requires)
            for precision in ("fp32", "int8"):
                row = {"runtime": runtime, "precision": precision}
                if missing:
                    report["rows"].append({**row, "status": f"unavailable: pip install 'repvit[export]' ({', '.join(missing)})"})
                    continue
                path = out / f"{name}{'_int8' if precision == 'int8' else ''}{FORMATS[fmt].suffix}"
                start = time.perf_counter()
                with torch.no_grad():
                    if precision == "fp32":
                        export_fp32(net, example, path)
                    else:
                        export_int8(net, example, path, calibration)
                row["export_seconds"] = time.perf_counter() - start
                row.update(status="ok", **evaluate_artifact(load(path), images, net, labels))
                report["rows"].append(row)
    return report


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
