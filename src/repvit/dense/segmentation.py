"""Semantic segmentation: Semantic FPN on a RepViT backbone, ADE20K-style data, mIoU.

The paper's setup (Semantic FPN, MMSegmentation 0.30): FPN with 256 channels on the four stage
outputs, a head that brings every level to stride 4 with 3x3 conv (128) + BN + ReLU + 2x upsampling
steps, summed, dropout 0.1, 1x1 classifier; AdamW lr 2e-4, weight decay 1e-4, poly schedule (power
0.9, min lr 1e-6) over 40k iterations, 8 GPUs x 4 images; training crops of 512 from images
rescaled to (2048, 512) x [0.5, 2.0], flip, photometric distortion; test at (2048, 512), whole image.

Data layout (ADE20K's own): ``ROOT/images/{training,validation}/*.jpg`` and
``ROOT/annotations/{training,validation}/*.png`` (same file stems; label 0 = "other", ignored with
``reduce_zero_label``, 255 = ignore).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import Dataset
from torchvision.ops import FeaturePyramidNetwork
from torchvision.transforms import functional as TF

from ..data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, DatasetError, image_files, load_image
from ..factory import create_model
from ..layers import ConvNormAct
from ..train import option
from ..train.process import all_reduce_sum, sample_generator
from ..utils import param, resolve_device
from .loop import DenseRecipe, read_dense_checkpoint, restore_dense_model, train_dense

__all__ = ["SegmentRecipe", "SemanticFPN", "SegmentationFolder", "SegmentationTask", "build_segmenter",
           "segmentation_metrics", "load_segmenter", "predict_segmentation", "train_segmenter", "infer", "palette"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class SegmentRecipe(DenseRecipe):
    num_classes: int = option(150, "classes (ADE20K: 150, after dropping label 0)", "data", check=">0")
    reduce_zero_label: bool = option(True, "label 0 means 'other': ignore it and shift the rest down (ADE20K)", "data")
    ignore_index: int = option(255, "label value that is ignored", "data")
    crop_size: int = option(512, "training crop", "data", check=">0")
    scale: tuple[float, float] = option((2048, 512), "(long, short) size images are rescaled to fit", "data")
    ratio_range: tuple[float, float] = option((0.5, 2.0), "random rescaling range of the training scale", "data")
    flip: float = option(0.5, "horizontal flip probability", "data", check="0..1")
    photometric: bool = option(True, "photometric distortion (brightness, contrast, saturation, hue)", "data")
    test_mode: str = option("whole", "inference: the whole image, or sliding crop_size windows", "data",
                            ("whole", "slide"))
    slide_stride: int = option(341, "sliding-window stride", "data", check=">0")
    fpn_channels: int = option(256, "FPN width", "model", check=">0")
    head_channels: int = option(128, "segmentation head width", "model", check=">0")
    dropout: float = option(0.1, "dropout before the classifier", "model", check="0..1")
    max_iters: int = option(40000, "training iterations", "schedule", check=">0")
    poly_power: float = option(0.9, "poly learning-rate decay power", "schedule", check=">0")
    min_lr: float = option(1e-6, "learning rate at the end of the poly schedule", "schedule", check=">=0")
    batch_size: int = option(4, "images per process per step (the paper: 8 GPUs x 4)", "data", check=">0")
    weight_decay: float = option(1e-4, "AdamW weight decay", "optimizer", check=">=0")
    eval_interval: int = option(4000, "evaluate and checkpoint every N iterations", "output", check=">=0")
    output: str = option("runs/segment", "folder for checkpoints, recipe.yaml and metrics.jsonl", "output")


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


class SemanticFPN(nn.Module):
    """RepViT features -> FPN -> per-level heads to stride 4 -> sum -> classifier -> input size."""

    def __init__(self, backbone: nn.Module, num_classes: int, fpn_channels: int = 256, head_channels: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.fpn = FeaturePyramidNetwork(backbone.feature_info.channels(), fpn_channels)
        self.scale_heads = nn.ModuleList()
        for reduction in backbone.feature_info.reduction():
            steps = max(1, int(math.log2(reduction // 4)))
            layers: list[nn.Module] = []
            for k in range(steps):
                layers.append(ConvNormAct(fpn_channels if k == 0 else head_channels, head_channels, 3,
                                          act_layer=nn.ReLU))
                if reduction > 4:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.backbone(x))))
        out = None
        for head, feature in zip(self.scale_heads, features.values()):
            y = head(feature)
            if out is not None and y.shape[-2:] != out.shape[-2:]:  # odd input sizes
                y = F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        logits = self.classifier(self.dropout(out))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(recipe: SegmentRecipe) -> SemanticFPN:
    backbone = create_model(recipe.model, features_only=True, weights=recipe.weights)
    return SemanticFPN(backbone, recipe.num_classes, recipe.fpn_channels, recipe.head_channels, recipe.dropout)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _fit_scale(size: tuple[int, int], scale: tuple[float, float]) -> tuple[int, int]:
    """(w, h) rescaled, keeping the aspect ratio, to fit (long, short) as MMSegmentation does."""
    w, h = size
    factor = min(max(scale) / max(w, h), min(scale) / min(w, h))
    return max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5))


class SegmentationFolder(Dataset):
    """Image / label-map pairs of one split, checked when opened; augmentation per sample from
    :func:`repvit.train.process.sample_generator` (so resuming replays it exactly)."""

    def __init__(self, root, split: str, recipe: SegmentRecipe, train: bool):
        root = Path(root)
        images, labels = root / "images" / split, root / "annotations" / split
        for folder in (images, labels):
            if not folder.is_dir():
                raise DatasetError(f"{param('data')} {root}: expected {folder} (layout: ROOT/images/{split}/*.jpg and "
                                   f"ROOT/annotations/{split}/*.png)")
        self.samples = []
        for image in sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            label = labels / f"{image.stem}.png"
            if not label.is_file():
                raise DatasetError(f"{image}: no label map {label}")
            try:
                with Image.open(image) as a, Image.open(label) as b:
                    sizes = a.size, b.size
            except (OSError, UnidentifiedImageError) as err:
                raise DatasetError(f"{image} or {label}: not a readable image ({err})") from None
            if sizes[0] != sizes[1]:
                raise DatasetError(f"{label}: label size {sizes[1][0]}x{sizes[1][1]} differs from the image's "
                                   f"{sizes[0][0]}x{sizes[0][1]} ({image})")
            self.samples.append((image, label))
        if not self.samples:
            raise DatasetError(f"{images}: no images")
        self.recipe, self.train, self.epoch = recipe, train, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _labels(self, path: Path) -> np.ndarray:
        r = self.recipe
        label = np.array(Image.open(path), dtype=np.int64)
        if label.ndim != 2:
            raise DatasetError(f"{path}: expected a single-channel label map, got shape {label.shape}")
        if r.reduce_zero_label:
            label = np.where(label == 0, r.ignore_index, label - 1)
            label[label == r.ignore_index - 1] = r.ignore_index  # 255 stays ignored
        bad = label[(label != r.ignore_index) & ((label < 0) | (label >= r.num_classes))]
        if bad.size:
            raise DatasetError(f"{path}: class id {int(bad.flat[0]) + int(r.reduce_zero_label)} is out of range for "
                               f"{r.num_classes} classes" + (" (label 0 is ignored, 1..N are classes)"
                                                             if r.reduce_zero_label else ""))
        return label

    def __getitem__(self, index: int):
        image_path, label_path = self.samples[index]
        image = Image.open(image_path).convert("RGB")
        labels = self._labels(label_path)
        r = self.recipe
        if not self.train:
            image = image.resize(_fit_scale(image.size, r.scale), Image.BILINEAR)
            return _normalize(image), torch.from_numpy(labels), str(image_path)
        # MMSegmentation's order: rescale, random crop, flip, photometric, normalise, pad (label: ignore)
        g = sample_generator(r.seed, self.epoch, index)
        uniform = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g))  # noqa: E731
        ratio = uniform(*r.ratio_range)
        w, h = _fit_scale(image.size, (r.scale[0] * ratio, r.scale[1] * ratio))
        image = image.resize((w, h), Image.BILINEAR)
        labels = np.array(Image.fromarray(labels.astype(np.int32)).resize((w, h), Image.NEAREST), dtype=np.int64)
        crop = r.crop_size
        left = int(torch.randint(0, max(1, w - crop + 1), (), generator=g))
        top = int(torch.randint(0, max(1, h - crop + 1), (), generator=g))
        right, bottom = min(w, left + crop), min(h, top + crop)
        image, labels = image.crop((left, top, right, bottom)), labels[top:bottom, left:right]
        if uniform(0, 1) < r.flip:
            image, labels = TF.hflip(image), labels[:, ::-1]
        if r.photometric:
            image = _photometric(image, g, uniform)
        pixels = _normalize(image)
        padded = pixels.new_zeros((3, crop, crop))
        padded[:, : pixels.shape[1], : pixels.shape[2]] = pixels
        target = torch.full((crop, crop), r.ignore_index, dtype=torch.int64)
        target[: labels.shape[0], : labels.shape[1]] = torch.from_numpy(np.ascontiguousarray(labels))
        return padded, target, str(image_path)


def _photometric(image: Image.Image, g: torch.Generator, uniform) -> Image.Image:
    """MMSegmentation's PhotoMetricDistortion: each change with probability 1/2."""
    if uniform(0, 1) < 0.5:
        image = TF.adjust_brightness(image, 1 + uniform(-32, 32) / 255 * 2)
    if uniform(0, 1) < 0.5:
        image = TF.adjust_contrast(image, uniform(0.5, 1.5))
    if uniform(0, 1) < 0.5:
        image = TF.adjust_saturation(image, uniform(0.5, 1.5))
    if uniform(0, 1) < 0.5:
        image = TF.adjust_hue(image, uniform(-18, 18) / 360)
    return image


def _normalize(image: Image.Image) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(image), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


# ----------------------------------------------------------------------------------------------
# Inference and metrics
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def infer(model: nn.Module, image: torch.Tensor, recipe: SegmentRecipe, out_size: tuple[int, int]) -> torch.Tensor:
    """Class logits for one normalised image (1, 3, H, W), resized to ``out_size`` (h, w)."""
    if recipe.test_mode == "whole":
        logits = model(image)
    else:
        crop, stride = recipe.crop_size, recipe.slide_stride
        _, _, h, w = image.shape
        logits = image.new_zeros((1, recipe.num_classes, h, w))
        counts = image.new_zeros((1, 1, h, w))
        for top in sorted({*range(0, max(h - crop, 0) + 1, stride), max(h - crop, 0)}):
            for left in sorted({*range(0, max(w - crop, 0) + 1, stride), max(w - crop, 0)}):
                window = image[..., top:top + crop, left:left + crop]
                logits[..., top:top + crop, left:left + crop] += model(window)
                counts[..., top:top + crop, left:left + crop] += 1
        logits = logits / counts
    return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


def segmentation_metrics(confusion: torch.Tensor) -> dict:
    """mIoU (over classes in the ground truth or the prediction), mAcc (over classes in the
    ground truth) and aAcc, in %, from a (ground truth x prediction) confusion matrix."""
    confusion = confusion.double()
    tp = confusion.diag()
    gt, pred = confusion.sum(1), confusion.sum(0)
    union = gt + pred - tp
    seen, labelled = union > 0, gt > 0  # a class only predicted counts as IoU 0, as MMSegmentation
    iou, acc = tp / union, tp / gt
    return {"mIoU": 100 * float(iou[seen].mean()), "mAcc": 100 * float(acc[labelled].mean()),
            "aAcc": 100 * float(tp.sum() / confusion.sum()),
            "per_class_IoU": [None if not p else round(100 * float(v), 3) for v, p in zip(iou, seen)]}


class SegmentationTask:
    name, key_metric = "segment", "mIoU"

    def build_model(self, recipe):
        return build_segmenter(recipe)

    def datasets(self, recipe):
        root = Path(recipe.data)
        train, val = SegmentationFolder(root, "training", recipe, True), SegmentationFolder(root, "validation", recipe, False)
        return train, val, [str(i) for i in range(recipe.num_classes)]

    def collate(self, batch):
        images, labels, paths = zip(*batch)
        if all(i.shape == images[0].shape for i in images):
            return torch.stack(images), torch.stack(labels), list(paths)
        return list(images), list(labels), list(paths)

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index

    def loss(self, model, batch, device):
        images, labels, _ = batch
        logits = model(images.to(device))
        return F.cross_entropy(logits.float(), labels.to(device), ignore_index=self.ignore_index), {}

    def evaluate(self, model, loader, ctx, recipe):
        model.eval()
        k = recipe.num_classes
        confusion = torch.zeros(k * k, dtype=torch.float64)
        for images, labels, _ in loader:
            for image, label in zip(images if isinstance(images, list) else images.unbind(0),
                                    labels if isinstance(labels, list) else labels.unbind(0)):
                logits = infer(model, image[None].to(ctx.device), recipe, tuple(label.shape))
                pred = logits.argmax(1)[0].cpu()
                valid = label != recipe.ignore_index
                confusion += torch.bincount(label[valid] * k + pred[valid], minlength=k * k).double()
        confusion = torch.tensor(all_reduce_sum(confusion.tolist(), ctx), dtype=torch.float64).view(k, k)
        return segmentation_metrics(confusion)

    def total_iters(self, recipe, iters_per_epoch):
        return recipe.max_iters

    def lr_factor(self, recipe, it, total, iters_per_epoch):
        if it < recipe.warmup_iters:
            return recipe.warmup_ratio + (1 - recipe.warmup_ratio) * it / recipe.warmup_iters
        floor = recipe.min_lr / recipe.lr
        return (1 - floor) * (1 - it / total) ** recipe.poly_power + floor


def train_segmenter(recipe: SegmentRecipe) -> dict:
    return train_dense(SegmentationTask(recipe.ignore_index), recipe)


# ----------------------------------------------------------------------------------------------
# Loading trained models, predicting
# ----------------------------------------------------------------------------------------------


def load_segmenter(checkpoint, deploy: bool = True) -> tuple[SemanticFPN, SegmentRecipe, list[str]]:
    """A segmenter from a ``repvit segment train`` checkpoint (reparameterized unless deploy=False)."""
    state = read_dense_checkpoint(checkpoint, "segment")
    recipe = SegmentRecipe.load(None, **{**state["recipe"], "weights": None, "resume": None})
    model = build_segmenter(recipe)
    return restore_dense_model(model, state, deploy), recipe, state["class_names"]


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (deterministic, well spread)."""
    rng = np.random.default_rng(3)
    return rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)


def predict_segmentation(checkpoint, images, out_dir, device: str = "cpu", alpha: float = 0.5) -> list[Path]:
    """Colour-coded segmentations blended onto the images, saved as PNGs in ``out_dir``."""
    model, recipe, _ = load_segmenter(checkpoint)
    device = resolve_device(device)
    model.to(device)
    colours = palette(recipe.num_classes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in image_files(images):
        original = load_image(path)
        resized = original.resize(_fit_scale(original.size, recipe.scale), Image.BILINEAR)
        logits = infer(model, _normalize(resized)[None].to(device), recipe, (original.height, original.width))
        classes = logits.argmax(1)[0].cpu().numpy()
        overlay = Image.fromarray(colours[classes])
        blended = Image.blend(original, overlay, alpha)
        target = out_dir / f"{Path(path).stem}_segmentation.png"
        blended.save(target)
        written.append(target)
    return written
