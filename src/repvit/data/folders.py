"""ImageFolder trees for training and evaluation: checked up front, unreadable images skipped."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from ..utils import UserError, param

__all__ = ["DatasetError", "IMG_EXTENSIONS", "check_image_folder", "SkippingImageFolder", "collate_skipping",
           "batch_samples", "image_files"]


class DatasetError(UserError):
    """A dataset folder that cannot be used, with what was expected."""


def _class_dirs(split: Path) -> list[Path]:
    """The class folders of a split, sorted; hidden ones (.ipynb_checkpoints, .cache) are not classes."""
    return sorted(p for p in Path(split).iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_image(folder: Path) -> bool:
    return any(f.suffix.lower() in IMG_EXTENSIONS for f in folder.rglob("*"))  # stops at the first


def check_image_folder(root, splits=("train", "val"), argument: str = "data") -> list[str]:
    """Check an ImageFolder tree (``root/<split>/<class>/<image>``); return the class names.

    Raises :class:`DatasetError` with a one-line explanation for a missing or empty tree, a class
    folder without images, or class folders that differ between the splits; ``argument`` is the
    parameter the tree was given as (named in the message).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{param(argument)} {root}: no such directory")
    found = {}
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            raise DatasetError(f"{param(argument)} {root}: expected a '{split}' folder with one sub-folder per class "
                               f"({root}/{split}/<class>/<image>)")
        classes = _class_dirs(folder)
        if not classes:
            raise DatasetError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
        empty = [d.name for d in classes if not _has_image(d)]
        if empty:
            raise DatasetError(f"{folder}/{empty[0]}: no images (extensions {', '.join(IMG_EXTENSIONS)})"
                               + (f"; {len(empty) - 1} more empty class folders" if len(empty) > 1 else ""))
        found[split] = [d.name for d in classes]
    first, *others = splits
    for split in others:
        if found[split] != found[first]:
            only_a = sorted(set(found[first]) - set(found[split]))
            only_b = sorted(set(found[split]) - set(found[first]))
            raise DatasetError(f"{param(argument)} {root}: class folders differ between {first}/ and {split}/ "
                               f"(only in {first}: {only_a[:5] or '-'}; only in {split}: {only_b[:5] or '-'})")
    return found[first]


class SkippingImageFolder(ImageFolder):
    """ImageFolder whose unreadable images become ``(None, target, path)`` instead of an exception,
    so that a corrupt file costs one sample, not the epoch. See :func:`collate_skipping`.
    Hidden folders are not classes (the same rule as :func:`check_image_folder`)."""

    def find_classes(self, directory):
        classes = [d.name for d in _class_dirs(Path(directory))]
        return classes, {name: i for i, name in enumerate(classes)}

    def __getitem__(self, index):
        path, target = self.samples[index]
        try:
            image = default_loader(path)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            return None, target, path
        if self.transform is not None:
            image = self.transform(image)
        return image, target, None


def collate_skipping(batch):
    """Stack the readable samples; return ``(images | None, targets | None, unreadable_paths)``."""
    good = [(image, target) for image, target, _ in batch if image is not None]
    bad = [path for image, _, path in batch if image is None]
    if not good:
        return None, None, bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


def batch_samples(loader):
    """``(image (1, 3, H, W), label)`` pairs from batches of :func:`collate_skipping` (for programs
    that take one image at a time)."""
    for images, targets, _ in loader:
        if images is None:
            continue
        for image, target in zip(images, targets):
            yield image[None], int(target)


def image_files(paths) -> list[Path]:
    """The images to read: files as given, folders replaced by the images they hold (sorted)."""
    files = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
        if not found:
            raise UserError(f"{path}: a folder without images (looked for {', '.join(IMG_EXTENSIONS)})")
        files += found
    return files
