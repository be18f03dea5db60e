"""Prompted and automatic segmentation with RepViT-SAM, through ``segment_anything``'s
``SamPredictor`` (the image embedding is computed once per image, then each prompt costs only the
decoder) and ``SamAutomaticMaskGenerator``; results written as mask PNGs, an overlay and JSON.

Prompts are in the pixels of the original image: points ``(x, y)`` with label 1 (foreground) or 0
(background), a box ``(x0, y0, x1, y1)``. Masks are stored in the JSON as uncompressed COCO RLE
(``{"size": [h, w], "counts": [...]}``, column-major runs starting with background), as SAM's
tools write them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import load_image
from ..dense.segmentation import palette
from ..utils import UserError, param, resolve_device
from .model import create_sam

__all__ = ["Prompt", "parse_point", "parse_box", "segment_prompted", "segment_everything", "predict_sam", "auto_sam"]


@dataclass
class Prompt:
    """Points ``(x, y)`` with labels (1 foreground, 0 background) and an optional box, in image pixels."""

    points: list[tuple[float, float]]
    labels: list[int]
    box: tuple[float, float, float, float] | None = None

    def check(self, width: int, height: int) -> None:
        """One-line errors for prompts SAM cannot use on a ``width`` x ``height`` image."""
        if not self.points and self.box is None:
            raise UserError(f"give at least one {param('point')} X,Y or a {param('box')} X0,Y0,X1,Y1 (or let "
                            "`repvit sam auto` find every object)")
        for x, y in self.points:
            if not (0 <= x < width and 0 <= y < height):
                raise UserError(f"{param('point')} {x:g},{y:g} lies outside the {width}x{height} image")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise UserError(f"{param('box')} {x0:g},{y0:g},{x1:g},{y1:g}: expected 0 <= X0 < X1 <= {width} and "
                                f"0 <= Y0 < Y1 <= {height} (the image is {width}x{height})")


def _numbers(text: str, name: str, counts: tuple[int, ...], form: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise UserError(f"{param(name)} {text!r}: expected {form}")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``"X,Y"`` (foreground) or ``"X,Y,LABEL"`` (LABEL 1 foreground, 0 background)."""
    form = "X,Y or X,Y,LABEL with LABEL 1 (foreground) or 0 (background)"
    values = _numbers(text, "point", (2, 3), form)
    label = values[2] if len(values) == 3 else 1
    if label not in (0, 1):
        raise UserError(f"{param('point')} {text!r}: expected {form}")
    return values[0], values[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"X0,Y0,X1,Y1"``: the top-left and bottom-right corners."""
    return tuple(_numbers(text, "box", (4,), "X0,Y0,X1,Y1 (top-left and bottom-right corners)"))


def segment_prompted(sam, image: np.ndarray, prompt: Prompt, multimask: bool = False) -> dict:
    """Masks (K, H, W) bool, their predicted IoU scores (K,), best first, for one prompt. A single
    point is ambiguous: SAM's three candidates are computed and, without ``multimask``, the best kept
    (SAM's own advice)."""
    from segment_anything import SamPredictor

    prompt.check(image.shape[1], image.shape[0])
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=np.array(prompt.points, dtype=np.float32) if prompt.points else None,
        point_labels=np.array(prompt.labels) if prompt.points else None,
        box=np.array(prompt.box, dtype=np.float32) if prompt.box is not None else None,
        multimask_output=multimask or (len(prompt.points) == 1 and prompt.box is None))
    order = np.argsort(-scores)[: None if multimask else 1]
    return {"masks": masks[order], "scores": scores[order]}


def segment_everything(sam, image: np.ndarray, points_per_side: int = 32, pred_iou_thresh: float = 0.88,
                       stability_score_thresh: float = 0.95) -> list[dict]:
    """Every mask SAM's automatic generator keeps (a grid of point prompts; masks below the predicted-IoU
    or stability thresholds dropped, duplicates removed), largest first."""
    from segment_anything import SamAutomaticMaskGenerator

    if points_per_side < 1:
        raise UserError(f"{param('points_per_side')} must be >= 1, got {points_per_side}")
    generator = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                                          stability_score_thresh=stability_score_thresh)
    return sorted(generator.generate(image), key=lambda m: -m["area"])


def predict_sam(image_path, prompt: Prompt, out_dir, weights="repvit_sam", multimask: bool = False,
                device: str = "cpu", img_size: int = 1024) -> dict:
    """Segment ``image_path`` for ``prompt``; writes ``<stem>_mask<i>.png``, ``<stem>_overlay.png`` and
    ``<stem>_masks.json`` into ``out_dir``; returns what the JSON holds."""
    image = np.asarray(load_image(image_path))
    prompt.check(image.shape[1], image.shape[0])  # before loading any weights
    sam = create_sam(weights, img_size=img_size, deploy=True).to(resolve_device(device))
    result = segment_prompted(sam, image, prompt, multimask)
    extra = {"prompt": {"points": prompt.points, "labels": prompt.labels, "box": prompt.box}}
    return _write(image_path, image, list(result["masks"]), [{"score": float(s)} for s in result["scores"]],
                  Path(out_dir), extra)


def auto_sam(image_path, out_dir, weights="repvit_sam", device: str = "cpu", img_size: int = 1024,
             points_per_side: int = 32, pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95) -> dict:
    """Every object of ``image_path`` (SAM's automatic mask generator); files as :func:`predict_sam`."""
    image = np.asarray(load_image(image_path))
    sam = create_sam(weights, img_size=img_size, deploy=True).to(resolve_device(device))
    found = segment_everything(sam, image, points_per_side, pred_iou_thresh, stability_score_thresh)
    info = [{"score": float(m["predicted_iou"]), "stability_score": float(m["stability_score"]),
             "point": [float(v) for v in m["point_coords"][0]]} for m in found]
    return _write(image_path, image, [m["segmentation"] for m in found], info, Path(out_dir),
                  {"points_per_side": points_per_side})


def _write(image_path, image: np.ndarray, masks: list[np.ndarray], info: list[dict], out_dir: Path,
           extra: dict) -> dict:
    from segment_anything.utils.amg import mask_to_rle_pytorch

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(image_path).stem
    colours = palette(max(len(masks), 1))
    overlay = image.astype(np.float32)
    records = []
    for i, (mask, details) in enumerate(zip(masks, info)):
        mask = np.asarray(mask, dtype=bool)
        name = f"{stem}_mask{i}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / name)
        overlay[mask] = 0.5 * overlay[mask] + 0.5 * colours[i]
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if len(xs) else None  # inclusive, as SAM
        rle = mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]
        records.append({"file": name, **details, "area": int(mask.sum()), "box_xyxy": box, "rle": rle})
    Image.fromarray(overlay.astype(np.uint8)).save(out_dir / f"{stem}_overlay.png")
    summary = {"image": str(image_path), "size": [int(image.shape[0]), int(image.shape[1])], **extra,
               "masks": records}
    (out_dir / f"{stem}_masks.json").write_text(json.dumps(summary))
    return {**summary, "overlay": str(out_dir / f"{stem}_overlay.png"), "json": str(out_dir / f"{stem}_masks.json")}
