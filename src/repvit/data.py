"""Images, datasets and preprocessing: the paper's transforms, ImageFolder checks, the digits."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageNetInfo, create_transform
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

__all__ = ["EVAL_CROP_PCT", "eval_transform", "imagenet_class_names", "load_image", "DatasetError",
           "check_image_folder", "SkippingImageFolder", "collate_skipping", "train_transform",
           "make_digits_image_folder"]

#: The paper's evaluation crop: resize the shorter side to 256 (bicubic), center-crop 224.
#: (timm's pretrained cfg for these models uses 0.95 instead.)
EVAL_CROP_PCT = 0.875


def eval_transform(img_size: int = 224, crop_pct: float = EVAL_CROP_PCT):
    """PIL image -> normalised tensor, as the paper evaluates (resize, center crop, ImageNet mean/std)."""
    if img_size < 32:
        raise ValueError(f"img_size must be at least 32, got {img_size}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return create_transform(
        input_size=(3, img_size, img_size),
        is_training=False,
        interpolation="bicubic",
        crop_pct=crop_pct,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions, in label order (shipped with timm, no download)."""
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def load_image(path) -> Image.Image:
    """Open an image as RGB, or raise ``ValueError`` naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable image ({reason})") from None


# ----------------------------------------------------------------------------------------------
# ImageFolder datasets for training and evaluation
# ----------------------------------------------------------------------------------------------

class DatasetError(ValueError):
    """A dataset folder that cannot be used, with what was expected."""


def _class_dirs(split: Path) -> list[Path]:
    """The class folders of a split, sorted; hidden ones (.ipynb_checkpoints, .cache) are not classes."""
    return sorted(p for p in Path(split).iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_image(folder: Path) -> bool:
    return any(f.suffix.lower() in IMG_EXTENSIONS for f in folder.rglob("*"))  # stops at the first


def check_image_folder(root, splits=("train", "val")) -> list[str]:
    """Check an ImageFolder tree (``root/<split>/<class>/<image>``); return the class names.

    Raises :class:`DatasetError` with a one-line explanation for a missing or empty tree, a class
    folder without images, or class folders that differ between the splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root}: no such directory")
    found = {}
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            raise DatasetError(f"--data {root}: expected a '{split}' folder with one sub-folder per class "
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
            raise DatasetError(f"--data {root}: class folders differ between {first}/ and {split}/ "
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
    import torch

    good = [(image, target) for image, target, _ in batch if image is not None]
    bad = [path for image, _, path in batch if image is None]
    if not good:
        return None, None, bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


def _posterize_zero_bits_compat() -> None:
    """timm's RandAugment asks Posterize for 0 bits at the top magnitudes (timm 1.0.31); Pillow 13
    raises on that ("bits must be between or equal to 1 and 8") where older Pillow returned a
    black image. Restore the old result so an epoch cannot crash on one unlucky draw."""
    from timm.data import auto_augment

    original = auto_augment.posterize
    if getattr(original, "repvit_compat", False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)  # what keeping 0 bits means: every channel 0
        return original(img, bits_to_keep, **kwargs)

    posterize.repvit_compat = True
    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is original:
            auto_augment.NAME_TO_OP[name] = posterize
    auto_augment.posterize = posterize


def train_transform(recipe):
    """The training augmentation of a :class:`~repvit.recipe.TrainRecipe`, from timm."""
    if recipe.auto_augment:
        _posterize_zero_bits_compat()
    try:
        return create_transform(
            input_size=(3, recipe.img_size, recipe.img_size), is_training=True, scale=recipe.scale,
            ratio=recipe.ratio, hflip=recipe.hflip, color_jitter=recipe.color_jitter,
            auto_augment=recipe.auto_augment, interpolation=recipe.interpolation, re_prob=recipe.reprob,
            re_mode=recipe.remode, re_count=recipe.recount, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        )
    except (AssertionError, KeyError, ValueError) as err:  # timm asserts on unknown policies
        raise ValueError(f"--auto-augment {recipe.auto_augment!r}: not a timm augmentation policy such as "
                         f"rand-m9-mstd0.5-inc1 ({err or type(err).__name__})") from None


# ----------------------------------------------------------------------------------------------
# The embedded dataset of the quickstart
# ----------------------------------------------------------------------------------------------


def make_digits_image_folder(root, img_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write scikit-learn's 1797 handwritten digits (8x8, 10 classes) as an ImageFolder tree.

    Images are upscaled to ``img_size`` (bicubic) as RGB PNGs; the split is a fixed, stratified
    ``val_fraction`` per class. Idempotent: an existing complete tree is reused.
    """
    import numpy as np
    from sklearn.datasets import load_digits

    root = Path(root)
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == f"{img_size},{val_fraction},{seed}":
        return root
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = np.flatnonzero(digits.target == label)
        rng.shuffle(indices)
        n_val = int(round(len(indices) * val_fraction))
        for split, chosen in (("val", indices[:n_val]), ("train", indices[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                image = Image.fromarray(pixels, mode="L").resize((img_size, img_size), Image.BICUBIC)
                image.convert("RGB").save(folder / f"{i:04d}.png")
    marker.write_text(f"{img_size},{val_fraction},{seed}")
    return root
