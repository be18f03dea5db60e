"""Preprocessing: the paper's evaluation transform, timm's training augmentation, reading images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageNetInfo, auto_augment, create_transform

from ..utils import UserError, first_line, param

__all__ = ["EVAL_CROP_PCT", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "eval_transform", "train_transform",
           "imagenet_class_names", "load_image"]

#: The paper's evaluation crop: resize the shorter side to 256 (bicubic), center-crop 224.
#: (timm's pretrained cfg for these models uses 0.95 instead.)
EVAL_CROP_PCT = 0.875


def eval_transform(img_size: int = 224, crop_pct: float = EVAL_CROP_PCT):
    """PIL image -> normalised tensor, as the paper evaluates (resize, center crop, ImageNet mean/std)."""
    if img_size < 32:
        raise UserError(f"{param('img_size')} must be at least 32, got {img_size}")
    if not 0 < crop_pct <= 1:
        raise UserError(f"{param('crop_pct')} must be in (0, 1], got {crop_pct}")
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
    if path.is_dir():
        raise UserError(f"{path}: a folder, not an image file")
    if not path.is_file():
        raise UserError(f"{path}: no such image file or folder")
    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")  # as shown by viewers (phone photos)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise UserError(f"{path}: not a readable image ({first_line(err)})") from None


def _posterize_zero_bits_compat() -> None:
    """timm's RandAugment asks Posterize for 0 bits at the top magnitudes (timm 1.0.31); Pillow 13
    raises on that ("bits must be between or equal to 1 and 8") where older Pillow returned a
    black image. Restore the old result so an epoch cannot crash on one unlucky draw."""
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
    """The training augmentation of a :class:`~repvit.train.recipe.TrainRecipe`, from timm."""
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
        raise UserError(f"{param('auto_augment')} {recipe.auto_augment!r}: not a timm augmentation policy such as "
                        f"rand-m9-mstd0.5-inc1 ({err or type(err).__name__})") from None
