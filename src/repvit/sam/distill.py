"""``repvit sam distill``: RepViT-SAM's encoder distilled from a SAM ViT encoder (MobileSAM's
decoupled distillation, which RepViT-SAM follows: 8 epochs on 1% of SA-1B in the paper).

The student (:class:`~repvit.sam.model.RepViTSamEncoder`, optionally initialised from ImageNet
RepViT-M2.3 weights) learns to reproduce the teacher's image embedding, MSE loss; the teacher's
prompt encoder and mask decoder are kept unchanged and written with the student as one SAM
checkpoint. Teacher embeddings come from :mod:`.teacher`'s cache (computed once per image).

It is a task of the dense training loop (:func:`repvit.dense.loop.train_dense`): the same process
setup (torchrun, DDP), optimizer step (AMP on CUDA), atomic checkpoints with exact resume and run
folder as classification, detection and segmentation; no second loop. Every evaluation (each epoch
by default) on held-out images records the embedding MSE and the *teacher agreement*: the mIoU
between the masks the decoder gives from the student's and from the teacher's embedding, for
random single-point and box prompts (fixed per image, so epochs and runs compare).

Written into the run folder besides the loop's files: ``repvit_sam.pt`` (the best student with the
teacher's prompt encoder and mask decoder, in the released checkpoint's layout: it loads in
:func:`~repvit.sam.create_sam` and in the official code) and ``repvit_sam_fused.safetensors`` (the
same, reparameterized). Our defaults where MobileSAM publishes none: AdamW, learning rate 1e-3,
weight decay 0.05, cosine schedule to 1e-6, batch 8 per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import load_image
from ..dense.loop import DenseRecipe, train_dense
from ..reparam import reparameterize
from ..train import option, read_run_checkpoint
from ..train.checkpoint import BEST, LAST
from ..train.process import all_reduce_sum, sample_generator
from ..utils import UserError, param, resolve_device
from ..weights import atomic_save, load_weights
from .export import mask_iou
from .model import RepViTSamEncoder, assemble_sam, check_img_size, official_sam_state, sam_input, save_sam
from .teacher import TEACHERS, TeacherCache, list_images, teacher_cache

__all__ = ["SamDistillRecipe", "SamDistillTask", "distill_sam", "teacher_agreement", "agreement_prompts",
           "image_key", "prompt_masks", "held_out_split", "OFFICIAL_FILE", "FUSED_FILE"]

log = logging.getLogger(__name__)

OFFICIAL_FILE = "repvit_sam.pt"
FUSED_FILE = "repvit_sam_fused.safetensors"


@dataclass
class SamDistillRecipe(DenseRecipe):
    model: str = option("repvit_sam", "the student: RepViT-SAM's image encoder", "model", ("repvit_sam",))
    weights: str | None = option(None, "student initialisation (also --init): ImageNet RepViT-M2.3 weights, a path, "
                                       "URL, hf-hub:ORG/REPO[:FILE] or registered name such as "
                                       "repvit_m2_3.dist_450e", "model")
    norm_eval: bool = option(False, "keep the student's BatchNorm statistics frozen", "model")
    data: str | None = option(None, "folder of training images (also --images); a share is held out for evaluation",
                              "data")
    img_size: int = option(1024, "square input of teacher and student (1024 as released; smaller for quick "
                                 "experiments: a multiple of 16)", "data", check=">0")
    val_split: float = option(0.02, "share of the images held out for evaluation (at least 1, at most val_max)", "data",
                              check="0..1")
    val_max: int = option(200, "most held-out images", "data", check=">0")
    teacher: str = option("vit_h", "the teacher: SAM's ViT image encoder (vit_tiny: 2 blocks, for tests)", "teacher",
                          tuple(TEACHERS))
    teacher_weights: str | None = option(None, "the teacher's SAM checkpoint: path, URL or hf-hub:ORG/REPO:FILE "
                                               "(none: Meta's release of the teacher, downloaded once)", "teacher")
    teacher_cache: str | None = option(None, "folder of cached teacher embeddings, shared by runs (none: "
                                             "~/.cache/repvit/sam-teacher)", "teacher")
    shard_size: int = option(64, "images per cache shard", "teacher", check=">0")
    teacher_batch: int = option(4, "images per teacher forward pass while caching", "teacher", check=">0")
    agreement_prompts: int = option(4, "random point prompts and as many box prompts per held-out image", "output",
                                    check=">0")
    epochs: int = option(8, "training epochs (the paper: 8, on a hundredth of SA-1B)", "schedule", check=">0")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine schedule", "schedule", check=">=0")
    batch_size: int = option(8, "images per process per step", "data", check=">0")
    lr: float = option(1e-3, "AdamW learning rate", "optimizer", check=">0")
    weight_decay: float = option(0.05, "AdamW weight decay", "optimizer", check=">=0")
    output: str = option("runs/sam-distill", "folder for checkpoints, recipe.yaml, metrics.jsonl and repvit_sam.pt",
                         "output")

    def _check(self) -> None:
        check_img_size(self.img_size)


def held_out_split(files: list[Path], share: float, most: int) -> tuple[list[int], list[int]]:
    """(training, held-out) indices: the held-out images are those whose names hash lowest, so the
    split does not depend on the order or the number of the other images."""
    count = min(most, max(1, round(share * len(files))))
    if count >= len(files):
        raise UserError(f"{param('data')}: {len(files)} image(s) leave none for training after holding out {count}")
    ranked = sorted(range(len(files)), key=lambda i: hashlib.sha256(files[i].name.encode()).hexdigest())
    held = set(ranked[:count])
    return [i for i in range(len(files)) if i not in held], sorted(held)


class DistillImages(Dataset):
    """(SAM input, teacher embedding fp32, (h, w) of the image inside the input, index) per image."""

    def __init__(self, cache: TeacherCache, indices: list[int], img_size: int):
        self.cache, self.indices, self.img_size = cache, indices, img_size

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """No augmentation: the student sees the pixels the teacher saw."""

    def __getitem__(self, i: int):
        index = self.indices[i]
        pixels, size = sam_input(np.asarray(load_image(self.cache.files[index])), self.img_size)
        return pixels, self.cache.embedding(index).float(), size, index


def image_key(path: Path) -> int:
    """A number that names an image by its file name (the same in every run, whatever the other images)."""
    return int(hashlib.sha256(Path(path).name.encode()).hexdigest()[:8], 16)


def agreement_prompts(key: int, size: tuple[int, int], count: int, seed: int = 0):
    """``count`` points (x, y) and ``count`` boxes (x0, y0, x1, y1) inside an image of (height,
    width) ``size`` (input pixels), the same for a given image ``key`` (:func:`image_key`) every time."""
    g = sample_generator(seed, 0, key)
    h, w = size
    scale = torch.tensor([w, h], dtype=torch.float32)
    points = torch.rand(count, 2, generator=g) * scale
    corners = torch.rand(count, 2, 2, generator=g) * scale
    low, high = corners.min(1).values, corners.max(1).values
    high = torch.maximum(high, torch.minimum(low + 8, scale))  # at least 8 px wide and high where room
    return points, torch.cat([low, high], 1)


@torch.no_grad()
def prompt_masks(sam: nn.Module, embedding: torch.Tensor, size: tuple[int, int], points=None, boxes=None):
    """The masks (K, h, w) bool for K single-point (foreground) or K box prompts on one image
    ``embedding`` (256, g, g), cropped to the image's ``size`` in the input. A single point is
    ambiguous: of SAM's three candidates the one with the highest predicted IoU is kept (SAM's
    advice, and what a click in ``repvit sam app`` shows); a box gives one mask."""
    encoder, device = sam.prompt_encoder, embedding.device
    if points is not None:
        labels = torch.ones(len(points), 1, dtype=torch.int64, device=device)
        sparse, dense = encoder(points=(points[:, None].to(device), labels), boxes=None, masks=None)
    else:
        sparse, dense = encoder(points=None, boxes=boxes.to(device), masks=None)
    low, scores = sam.mask_decoder(image_embeddings=embedding[None], image_pe=encoder.get_dense_pe(),
                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                   multimask_output=points is not None)
    low = low[torch.arange(len(low)), scores.argmax(1)]  # the best candidate (the only one for a box)
    side = encoder.input_image_size[0]
    h, w = size
    return F.interpolate(low[:, None], (side, side), mode="bilinear", align_corners=False)[:, 0, :h, :w] > 0


def teacher_agreement(sam: nn.Module, student: torch.Tensor, teacher: torch.Tensor, size: tuple[int, int],
                      points: torch.Tensor, boxes: torch.Tensor) -> dict[str, list[float]]:
    """IoU of the student's and the teacher's mask per prompt, for one image's two embeddings."""
    result = {}
    for kind, prompts in (("point", {"points": points}), ("box", {"boxes": boxes})):
        ours, theirs = prompt_masks(sam, student, size, **prompts), prompt_masks(sam, teacher, size, **prompts)
        result[kind] = [mask_iou(a, b) for a, b in zip(ours, theirs)]
    return result


class SamDistillTask:
    """The distillation as a task of the dense loop (see :class:`repvit.dense.loop.DenseTask`)."""

    name, key_metric = "sam-distill", "teacher_mIoU"
    products = (OFFICIAL_FILE, FUSED_FILE)

    def __init__(self):
        self.cache: TeacherCache | None = None
        self._decoder: nn.Module | None = None

    def datasets(self, recipe: SamDistillRecipe):
        held_out_split(list_images(recipe.data), recipe.val_split, recipe.val_max)  # before hours of teacher
        device = resolve_device(recipe.device)
        if device.type == "cuda":  # this process's GPU (setup_process made it current), as the teacher's device
            device = torch.device("cuda", torch.cuda.current_device())
        self.cache = teacher_cache(recipe.data, recipe.teacher, recipe.teacher_weights, recipe.img_size,
                                   recipe.teacher_cache, recipe.shard_size, recipe.teacher_batch, device)
        train, held = held_out_split(self.cache.files, recipe.val_split, recipe.val_max)
        return (DistillImages(self.cache, train, recipe.img_size), DistillImages(self.cache, held, recipe.img_size),
                [])

    def build_model(self, recipe: SamDistillRecipe) -> nn.Module:
        student = RepViTSamEncoder(img_size=recipe.img_size)
        if recipe.weights:
            load_weights(student.body, recipe.weights)  # the classifier's stages; the neck starts from scratch
        return student

    def decoder(self, img_size: int, device: torch.device) -> nn.Module:
        """The teacher's prompt encoder and mask decoder (a SAM whose encoder is unused)."""
        if self._decoder is None:
            sam = assemble_sam(nn.Identity(), img_size)
            sam.load_state_dict(self.cache.decoder_state())
            self._decoder = sam.eval()
        return self._decoder.to(device)

    @staticmethod
    def collate(batch):  # (static: DataLoader workers need not pickle the task)
        pixels, embeddings, sizes, indices = zip(*batch)
        return torch.stack(pixels), torch.stack(embeddings), list(sizes), list(indices)

    def loss(self, model, batch, device):
        pixels, embeddings = batch[0].to(device), batch[1].to(device)
        return F.mse_loss(model(pixels).float(), embeddings), {}

    @torch.no_grad()
    def evaluate(self, model, loader, ctx, recipe) -> dict:
        model.eval()
        sam = self.decoder(recipe.img_size, ctx.device)
        squared, elements, ious = 0.0, 0, {"point": [], "box": []}
        for pixels, embeddings, sizes, indices in loader:
            students, teachers = model(pixels.to(ctx.device)).float(), embeddings.to(ctx.device)
            squared += float((students - teachers).pow(2).sum())
            elements += teachers.numel()
            for student, teacher, size, index in zip(students, teachers, sizes, indices):
                points, boxes = agreement_prompts(image_key(self.cache.files[index]), size, recipe.agreement_prompts)
                for kind, values in teacher_agreement(sam, student, teacher, size, points, boxes).items():
                    ious[kind] += values
        totals = all_reduce_sum([squared, elements, sum(ious["point"]), len(ious["point"]), sum(ious["box"]),
                                 len(ious["box"])], ctx)
        point, box = totals[2] / max(totals[3], 1), totals[4] / max(totals[5], 1)
        return {"teacher_mIoU": 100 * (totals[2] + totals[4]) / max(totals[3] + totals[5], 1),
                "point_mIoU": 100 * point, "box_mIoU": 100 * box, "embedding_mse": totals[0] / max(totals[1], 1)}

    def total_iters(self, recipe, iters_per_epoch: int) -> int:
        return recipe.epochs * iters_per_epoch

    def lr_factor(self, recipe, it: int, total: int, iters_per_epoch: int) -> float:
        """Linear warm-up, then cosine from 1 to ``min_lr / lr``."""
        if it < recipe.warmup_iters:
            return recipe.warmup_ratio + (1 - recipe.warmup_ratio) * it / recipe.warmup_iters
        progress = (it - recipe.warmup_iters) / max(1, total - recipe.warmup_iters)
        floor = recipe.min_lr / recipe.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def finish(self, recipe: SamDistillRecipe, output: Path) -> dict[str, Path]:
        """The run's best student with the teacher's decoder, into ``output``: official layout, and fused."""
        source = output / BEST if (output / BEST).is_file() else output / LAST
        student = RepViTSamEncoder(img_size=recipe.img_size)
        student.load_state_dict(read_run_checkpoint(source, self.name)["state_dict"])
        sam = assemble_sam(student, recipe.img_size)
        sam.load_state_dict({**sam.state_dict(), **self.cache.decoder_state()})
        official = atomic_save(official_sam_state(sam), output / OFFICIAL_FILE)
        fused = save_sam(reparameterize(sam), output / FUSED_FILE)
        log.info("RepViT-SAM from %s with the %s teacher's prompt encoder and mask decoder: %s (official layout), "
                 "%s (fused)", source.name, recipe.teacher, official, fused)
        return {"official": official, "fused": fused, "from": source}


def distill_sam(recipe: SamDistillRecipe) -> dict:
    """Run the distillation ``recipe`` describes; returns the loop's result (with ``products``, the
    files :meth:`SamDistillTask.finish` wrote, once the run is finished)."""
    if recipe.teacher_cache:  # absolute even before it exists: a resumed run must find it from anywhere
        recipe = dataclasses.replace(recipe, teacher_cache=str(Path(recipe.teacher_cache).resolve()))
    result = train_dense(SamDistillTask(), recipe)
    output = Path(result["output"])
    result["products"] = {"official": output / OFFICIAL_FILE, "fused": output / FUSED_FILE} if result["finished"] \
        else {}
    return result
