"""Small generated datasets of coloured shapes, for tests, demos and the dense-task benchmark:
detection/instance segmentation in COCO format, and semantic segmentation in ADE20K's layout.
Each shape class has its own colour (with noise), so a model can learn them in minutes on a CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "shapes_scene", "make_shapes_coco", "make_shapes_segmentation"]

SHAPES = ("circle", "square", "triangle")
_COLOURS = {"circle": (220, 60, 60), "square": (60, 200, 80), "triangle": (70, 90, 230)}


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "circle":
        return [(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24)) for k in range(24)]
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]


def shapes_scene(rng: np.random.Generator, size: int, max_shapes: int):
    """An image with 1..max_shapes non-overlapping shapes; returns (image, [(kind, polygon)])."""
    background = rng.integers(90, 160, 3)
    pixels = np.clip(background + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    placed, shapes = [], []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            r = float(rng.uniform(size * 0.08, size * 0.2))
            cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
            if all(math.hypot(cx - x, cy - y) > r + q + 2 for x, y, q in placed):
                break
        else:
            continue
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in _COLOURS[kind])
        polygon = _polygon(kind, cx, cy, r)
        draw.polygon(polygon, fill=colour)
        placed.append((cx, cy, r))
        shapes.append((kind, polygon))
    return image, shapes


def make_shapes_coco(root, n_train: int = 48, n_val: int = 16, size: int = 128, max_shapes: int = 3,
                     seed: int = 0) -> Path:
    """COCO-format instance annotations (boxes, polygons) under ``root``:
    ``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/*.png``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, count in (("train2017", n_train), ("val2017", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, shapes = shapes_scene(rng, size, max_shapes)
            name = f"{i:05d}.png"
            image.save(root / split / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for kind, polygon in shapes:
                xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
                box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                mask = Image.new("L", (size, size))
                ImageDraw.Draw(mask).polygon(polygon, fill=1)
                annotations.append({"id": ann_id, "image_id": i + 1, "category_id": SHAPES.index(kind) + 1,
                                    "bbox": box, "area": float(np.asarray(mask).sum()), "iscrowd": 0,
                                    "segmentation": [[v for p in polygon for v in p]]})
                ann_id += 1
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def make_shapes_segmentation(root, n_train: int = 32, n_val: int = 8, size: int = 96, max_shapes: int = 3,
                             seed: int = 0) -> Path:
    """ADE20K-style pairs under ``root``: ``images/{training,validation}/*.jpg`` and label maps
    ``annotations/...*.png`` with 0 = unlabelled (a 2-pixel frame), 1 = background, 2.. = shapes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, shapes = shapes_scene(rng, size, max_shapes)
            label = Image.new("L", (size, size), 1)
            draw = ImageDraw.Draw(label)
            for kind, polygon in shapes:
                draw.polygon(polygon, fill=SHAPES.index(kind) + 2)
            array = np.array(label)
            array[:2, :] = array[-2:, :] = array[:, :2] = array[:, -2:] = 0
            image.save(root / "images" / split / f"{i:05d}.jpg", quality=95)
            Image.fromarray(array).save(root / "annotations" / split / f"{i:05d}.png")
    return root
