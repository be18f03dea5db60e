"""Images and preprocessing: the paper's evaluation transform, ImageNet-1k class names."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageNetInfo, create_transform

__all__ = ["EVAL_CROP_PCT", "eval_transform", "imagenet_class_names", "load_image"]

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
