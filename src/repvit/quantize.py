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
from .export import FORMATS

__all__ = ["ImageSet", "image_set", "calibration_images", "calibration_and_held_out", "quantize_xnnpack",
           "export_executorch_int8", "export_onnx_int8", "evaluate_artifact", "loader_samples", "quantize_eval",
           "INT8_FORMATS"]

#: Formats with an int8 path (``write_int8`` in the export table) -> the runtime that executes them.
INT8_FORMATS = {"executorch": "executorch", "onnx": "onnxruntime"}
assert set(INT8_FORMATS) == {name for name, fmt in FORMATS.items() if fmt.write_int8}


def _resolve_source(source) -> Path:
    if str(source) == "digits" and not Path(source).is_dir():  # a folder of that name wins
        from .data import make_digits_image_folder

        return make_digits_image_folder(Path(tempfile.gettempdir()) / "repvit-digits")
    return Path(source)


def _split_folder(root: Path, split: str) -> Path:
    """``root/split``; else the one split the root has; else the root itself (a class-folder tree)."""
    if (root / split).is_dir():
        return root / split
    present = [root / s for s in ("train", "val") if (root / s).is_dir()]
    return present[0] if present else root


class ImageSet:
    """Image files of one split with their labels, read (and transformed) only while iterated.

    Iterating yields ``(image as a normalised (1, 3, H, W) tensor, label)``; unreadable files are
    skipped. Large sets (ImageNet's val) never sit in memory as tensors.
    """

    def __init__(self, files: list[Path], labels: list[int], classes: list[str], img_size: int, crop_pct: float):
        self.files, self.labels, self.classes = files, labels, classes
        self.transform = eval_transform(img_size, crop_pct)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices) -> "ImageSet":
        chosen = sorted(indices)
        subset = ImageSet([self.files[i] for i in chosen], [self.labels[i] for i in chosen], self.classes, 32, 1.0)
        subset.transform = self.transform
        return subset

    def __iter__(self):
        for f, label in zip(self.files, self.labels):
            try:
                yield self.transform(load_image(f))[None], label
            except ValueError:  # unreadable files do not stop a calibration or an evaluation
                continue

    def tensors(self) -> list[torch.Tensor]:
        images = [x for x, _ in self]
        if not images:
            raise DatasetError(f"no readable images among {len(self)} files ({self.files[0].parent.parent if self.files else '-'})")
        return images


def image_set(source, split: str = "train", img_size: int = 224, crop_pct: float = 0.875,
              argument: str = "--calib") -> ImageSet:
    """Every image of one split of ``source`` (an ImageFolder root, a class-folder tree, or ``"digits"``)."""
    root = _resolve_source(source)
    folder = _split_folder(root, split)
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
    return ImageSet(files, labels, classes, img_size, crop_pct)


def _shuffled(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def calibration_and_held_out(source, img_size: int = 224, count: int = 512, held_out: int = 128,
                             crop_pct: float = 0.875, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``count`` calibration images and up to ``held_out`` different images to check the result on.

    Calibration comes from ``train/`` and the check from ``val/`` when both exist; otherwise one
    split is divided so that no checked image was calibrated on.
    """
    if count < 1:
        raise ValueError(f"--calib-images must be >= 1, got {count}")
    root = _resolve_source(source)
    calib = image_set(root, "train", img_size, crop_pct)
    if (root / "train").is_dir() and (root / "val").is_dir():
        check = image_set(root, "val", img_size, crop_pct)
        return (calib.subset(_shuffled(len(calib), seed)[:count]).tensors(),
                check.subset(_shuffled(len(check), seed + 1)[:held_out]).tensors())
    order = _shuffled(len(calib), seed)
    n_check = min(held_out, len(order) // 4)  # one split only: keep a quarter (at most) aside
    if n_check < 1 or len(order) - n_check < 1:
        raise DatasetError(f"--calib {source}: too few images ({len(order)}) to calibrate and check on different ones")
    return (calib.subset(order[n_check:n_check + count]).tensors(), calib.subset(order[:n_check]).tensors())


def calibration_images(source, img_size: int = 224, count: int = 512, split: str = "train",
                       crop_pct: float = 0.875, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``count`` images (a fixed random subset) of one split of ``source``, as tensors."""
    if count < 1:
        raise ValueError(f"--calib-images must be >= 1, got {count}")
    images = image_set(source, split, img_size, crop_pct)
    return images.subset(_shuffled(len(images), seed)[:count]).tensors()


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


def evaluate_artifact(run, samples, reference: nn.Module) -> dict:
    """How ``run`` (an artifact's runner, batch 1) does on real images, against ``reference``.

    ``samples``: an iterable of ``(image (1, 3, H, W), label or None)``, consumed once. Returns top-1
    agreement with the reference, mean cosine similarity of the logits, the largest logit
    difference and, when labels are given, top-1 accuracy.
    """
    hits = agree = n = labelled = 0
    cosine_sum, max_diff = 0.0, 0.0
    with torch.no_grad():
        for x, label in samples:
            out = torch.from_numpy(np.asarray(run(x), dtype=np.float32)).reshape(1, -1)
            ref = reference(x).float().reshape(1, -1)
            agree += int(out.argmax() == ref.argmax())
            if label is not None:
                labelled += 1
                hits += int(out.argmax() == label)
            cosine_sum += float(nn.functional.cosine_similarity(out, ref).item())
            max_diff = max(max_diff, float((out - ref).abs().max()))
            n += 1
    if n == 0:
        raise DatasetError("no readable images to evaluate on")
    stats = {"agreement": 100 * agree / n, "cosine": cosine_sum / n, "max_abs_diff": max_diff, "images": n}
    if labelled:
        stats["top1"] = 100 * hits / labelled
    return stats


def loader_samples(loader):
    """``(image (1, 3, H, W), label)`` pairs from a batched eval DataLoader (for batch-1 programs)."""
    for images, targets, _ in loader:
        for image, target in zip(images, targets):
            yield image[None], int(target)


def quantize_eval(model, data, *, weights=None, formats=("executorch", "onnx"), img_size: int = 224,
                  crop_pct: float = 0.875, calib_images: int = 512, val_images: int | None = None,
                  out_dir=None) -> dict:
    """Top-1 of fp32 and int8 on ``data``'s val split, side by side, in every runtime with an int8 path.

    Calibrates on ``calib_images`` images of the train split (the val split is never seen), exports
    each format twice (fp32 and int8, both from the reparameterized model) and evaluates both
    artifacts on the same val images. Returns ``{"model", "val_images", "pytorch": {...},
    "rows": [{"runtime", "precision", "top1", "agreement", "cosine", ...}]}``.
    """
    from .export import _first_line, _missing, check_formats
    from .models import create_model
    from .reparam import reparameterize

    formats = check_formats(formats)
    unknown = [f for f in formats if f not in INT8_FORMATS]
    if unknown:
        raise ValueError(f"--formats: int8 is available for {', '.join(INT8_FORMATS)}, got {', '.join(unknown)}")
    if calib_images < 1 or (val_images is not None and val_images < 1):
        raise ValueError("--calib-images and --val-images must be >= 1")
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
    calibration = calibration_images(root, img_size, calib_images, crop_pct=crop_pct)
    val = image_set(root, "val", img_size, crop_pct, argument="--data")
    if val_images is not None:
        val = val.subset(_shuffled(len(val), 1)[:val_images])
    num_classes = getattr(net, "num_classes", None)
    if num_classes is not None and num_classes != len(val.classes):
        raise DatasetError(f"--data {data}: {len(val.classes)} classes, but the model has {num_classes} outputs "
                           "(pass --weights trained on this data)")
    if checkpoint is not None and checkpoint.class_names and checkpoint.class_names != val.classes:
        raise DatasetError(f"--data {data}: class folders {val.classes[:3]}... differ from the checkpoint's classes "
                           f"{checkpoint.class_names[:3]}...")
    ref_hits = n = 0
    with torch.no_grad():
        for x, y in val:
            ref_hits += int(net(x).argmax() == y)
            n += 1
    if n == 0:
        raise DatasetError(f"--data {data}: no readable images in val/")
    report = {"model": name, "weights": str(weights) if weights else None, "data": str(data),
              "val_images": n, "calib_images": len(calibration), "img_size": img_size,
              "pytorch": {"top1": 100 * ref_hits / n}, "rows": []}
    example = calibration[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir) if out_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            runtime, spec = INT8_FORMATS[fmt], FORMATS[fmt]
            missing = _missing(spec.requires)
            for precision in ("fp32", "int8"):
                row = {"runtime": runtime, "precision": precision}
                report["rows"].append(row)
                if missing:
                    row["status"] = f"unavailable: pip install 'repvit[{spec.extra}]' ({', '.join(missing)})"
                    continue
                path = out / f"{name}{'_int8' if precision == 'int8' else ''}{spec.suffix}"
                start = time.perf_counter()
                try:  # one failing runtime is a row, not the end of the report
                    with torch.no_grad():
                        if precision == "fp32":
                            spec.write(net, example, path)
                        else:
                            spec.write_int8(net, example, path, calibration)
                    row["export_seconds"] = time.perf_counter() - start
                    row.update(status="ok", **evaluate_artifact(spec.load(path), val, net))
                except Exception as err:
                    row["status"] = f"failed: {_first_line(err)}"
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
