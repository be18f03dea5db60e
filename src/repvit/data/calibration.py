"""Sets of real images for int8 calibration and checks: a fixed random subset of one split,
read lazily (ImageNet's val never sits in memory as tensors), calibration and check images disjoint."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch

from ..utils import param
from .digits import make_digits_image_folder
from .folders import IMG_EXTENSIONS, DatasetError, check_image_folder
from .transforms import eval_transform, load_image

__all__ = ["ImageSet", "image_set", "calibration_images", "calibration_and_held_out", "resolve_image_source",
           "shuffled"]


def resolve_image_source(source) -> Path:
    """An ImageFolder root, or the embedded digits for ``"digits"`` (a folder of that name wins)."""
    if str(source) == "digits" and not Path(source).is_dir():
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
              argument: str = "calib") -> ImageSet:
    """Every image of one split of ``source`` (an ImageFolder root, a class-folder tree, or ``"digits"``);
    ``argument`` is the parameter ``source`` was given as (named in errors)."""
    root = resolve_image_source(source)
    folder = _split_folder(root, split)
    classes = check_image_folder(folder.parent, splits=(folder.name,), argument=argument)
    files, labels = [], []
    for index, name in enumerate(classes):
        for f in sorted((folder / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS:
                files.append(f)
                labels.append(index)
    return ImageSet(files, labels, classes, img_size, crop_pct)


def _check_count(count: int) -> None:
    if count < 1:
        raise DatasetError(f"{param('calib_images')} must be >= 1, got {count}")


def shuffled(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def calibration_and_held_out(source, img_size: int = 224, count: int = 512, held_out: int = 128,
                             crop_pct: float = 0.875, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``count`` calibration images and up to ``held_out`` different images to check the result on.

    Calibration comes from ``train/`` and the check from ``val/`` when both exist; otherwise one
    split is divided so that no checked image was calibrated on.
    """
    _check_count(count)
    root = resolve_image_source(source)
    calib = image_set(root, "train", img_size, crop_pct)
    if (root / "train").is_dir() and (root / "val").is_dir():
        check = image_set(root, "val", img_size, crop_pct)
        return (calib.subset(shuffled(len(calib), seed)[:count]).tensors(),
                check.subset(shuffled(len(check), seed + 1)[:held_out]).tensors())
    order = shuffled(len(calib), seed)
    n_check = min(held_out, len(order) // 4)  # one split only: keep a quarter (at most) aside
    if n_check < 1 or len(order) - n_check < 1:
        raise DatasetError(f"{param('calib')} {source}: too few images ({len(order)}) to calibrate and check on "
                           "different ones")
    return (calib.subset(order[n_check:n_check + count]).tensors(), calib.subset(order[:n_check]).tensors())


def calibration_images(source, img_size: int = 224, count: int = 512, split: str = "train",
                       crop_pct: float = 0.875, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``count`` images (a fixed random subset) of one split of ``source``, as tensors."""
    _check_count(count)
    images = image_set(source, split, img_size, crop_pct)
    return images.subset(shuffled(len(images), seed)[:count]).tensors()
