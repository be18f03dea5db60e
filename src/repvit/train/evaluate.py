"""Classification evaluation: top-1/top-5 over an ImageFolder split, sharded exactly under torchrun,
and the training structure beside its reparameterized copy on the same images."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import EVAL_CROP_PCT, DatasetError, ShardSampler, SkippingImageFolder, collate_skipping, eval_transform
from ..utils import topk_hits
from .process import ProcessContext, all_reduce_sum, seed_worker
from .step import autocast

__all__ = ["build_eval_loader", "evaluate", "evaluate_pair"]


def build_eval_loader(folder, img_size: int, crop_pct: float = EVAL_CROP_PCT, batch_size: int = 128,
                      workers: int = 0, ctx: ProcessContext | None = None) -> DataLoader:
    """The paper's evaluation transform over ``folder`` (class folders); this process's shard."""
    ctx = ctx or ProcessContext()
    dataset = SkippingImageFolder(str(folder), transform=eval_transform(img_size, crop_pct))
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
                      num_workers=workers, collate_fn=collate_skipping, pin_memory=ctx.device.type == "cuda",
                      worker_init_fn=seed_worker)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, ctx: ProcessContext | None = None,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict:
    """Top-1/top-5 (%) and cross-entropy over the loader, summed over all processes."""
    ctx = ctx or ProcessContext()
    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0, 0.0]  # loss sum, top-1 hits, top-5 hits, samples, unreadable
    for images, targets, bad in loader:
        totals[4] += len(bad)
        if images is None:
            continue
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, amp_dtype):
            logits = model(images).float()
        top1, top5 = topk_hits(logits, targets)
        totals[0] += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        totals[1:4] = [totals[1] + top1, totals[2] + top5, totals[3] + len(targets)]
    loss, top1, top5, n, skipped = all_reduce_sum(totals, ctx)
    if n == 0:
        raise DatasetError("no readable evaluation images")
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "n": int(n), "skipped": int(skipped)}


@torch.no_grad()
def evaluate_pair(model: nn.Module, deployed: nn.Module, loader: DataLoader, device=None) -> dict:
    """Top-1/top-5 of the training structure and its reparameterized copy on the same batches,
    with how often their predictions agree and their largest logit difference."""
    device = torch.device(device or "cpu")
    model.eval().to(device)
    deployed.eval().to(device)
    hits = {"train": [0, 0], "deployed": [0, 0]}
    agree, n, max_diff = 0, 0, 0.0
    for images, targets, _ in loader:
        if images is None:
            continue
        images, targets = images.to(device), targets.to(device)
        outputs = {"train": model(images).float(), "deployed": deployed(images).float()}
        for name, logits in outputs.items():
            hits[name] = [a + b for a, b in zip(hits[name], topk_hits(logits, targets))]
        agree += topk_hits(outputs["deployed"], outputs["train"].argmax(-1), (1,))[0]
        max_diff = max(max_diff, float((outputs["train"] - outputs["deployed"]).abs().max()))
        n += len(targets)
    if n == 0:
        raise DatasetError("no readable evaluation images")
    result = {name: {"top1": 100 * h[0] / n, "top5": 100 * h[1] / n} for name, h in hits.items()}
    return {**result, "n": n, "prediction_agreement": 100 * agree / n, "max_abs_logit_diff": max_diff}
