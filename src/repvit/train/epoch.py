"""One epoch of classification training, its evaluation, checkpoint and log line.

:class:`ClassificationRun` holds what a run keeps between epochs; :mod:`.classification` builds it
and calls these functions once per epoch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.data import Mixup
from timm.data.distributed_sampler import RepeatAugSampler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..reparam import reparameterize
from ..utils import UserError, param
from ..weights import CheckpointError, atomic_save, save_weights
from ..weights.files import read_safetensors
from .checkpoint import BEST, LAST, rng_state, write_metrics
from .evaluate import evaluate
from .process import ProcessContext, all_agree, all_reduce_sum, derive_seed, seed_everything, sync_buffers
from .recipe import TrainRecipe
from .run_folder import RunFolder
from .step import OptimizerStep, autocast, finite_loss, freeze_batchnorm

__all__ = ["ClassificationRun", "train_one_epoch", "evaluate_epoch", "save_last", "save_best", "save_deployed",
           "deployed_epoch", "log_epoch", "tensorboard", "DEPLOYED_BEST"]

log = logging.getLogger(__name__)

DEPLOYED_BEST = "model-best-deployed.safetensors"


@dataclass
class ClassificationRun:
    """What one training run holds between epochs."""

    recipe: TrainRecipe
    ctx: ProcessContext
    class_names: list[str]
    train_loader: DataLoader
    sampler: DistributedSampler | RepeatAugSampler
    val_loader: DataLoader
    raw_model: nn.Module  # what is saved, averaged and evaluated: never the DDP or compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    step: OptimizerStep
    amp_dtype: torch.dtype | None
    criterion: nn.Module
    ema: ModelEmaV3 | None = None
    mixup: Mixup | None = None
    model: nn.Module | None = None  # what runs the forward pass (wrapped for DDP / compile)
    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": -1})
    history: list[dict] = field(default_factory=list)
    folder: RunFolder | None = None

    @property
    def output(self) -> Path:
        return Path(self.recipe.output)

    @property
    def updates_per_epoch(self) -> int:
        return len(self.train_loader)


def train_one_epoch(run: ClassificationRun, epoch: int) -> tuple[dict, list[str]]:
    """One pass over the training set; returns the epoch's record and a few unreadable files."""
    recipe, ctx = run.recipe, run.ctx
    seed_everything(derive_seed(recipe.seed, epoch, ctx.rank))
    run.sampler.set_epoch(epoch)
    run.scheduler.step(epoch)  # learning rate of this epoch (per-update mode: its first update)
    run.scheduler.step_update(epoch * run.updates_per_epoch)
    run.model.train()
    if recipe.freeze_bn:
        freeze_batchnorm(run.model)
    loss_sum, seen, unreadable, examples, start = 0.0, 0, 0, [], time.perf_counter()
    with _progress(ctx.is_main) as bar:
        task = bar.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=run.updates_per_epoch, info="")
        for step, (images, targets, bad) in enumerate(run.train_loader):
            unreadable += len(bad)
            examples = (examples + bad)[:3]
            if images is not None and run.mixup is not None and len(images) % 2:
                images, targets = images[:-1], targets[:-1]  # mixup pairs images: keep it even
            # BatchNorm needs >= 2 images; every process skips together, or DDP would hang
            if not all_agree(images is not None and len(images) >= 2, ctx):
                bar.advance(task)
                continue
            loss = _train_step(run, images, targets, f"epoch {epoch + 1}, step {step + 1}")
            update = epoch * run.updates_per_epoch + step + 1
            run.scheduler.step_update(update)
            if run.ema is not None:
                run.ema.update(run.raw_model, step=update)
            loss_sum += loss * len(images)
            seen += len(images)
            bar.update(task, advance=1, info=f"{seen * ctx.world_size / (time.perf_counter() - start):.0f} img/s  "
                       f"loss {loss_sum / seen:.4f}  lr {run.optimizer.param_groups[0]['lr']:.2e}")
    train_time = time.perf_counter() - start
    loss_sum, seen, unreadable = all_reduce_sum([loss_sum, float(seen), float(unreadable)], ctx)
    if seen == 0:  # nothing trained: stop before a checkpoint claims otherwise
        example = f" (e.g. {examples[0]})" if examples else ""
        raise UserError(f"{param('data')} {Path(recipe.data) / 'train'}: no training image could be used in epoch "
                        f"{epoch + 1}: {int(unreadable)} unreadable{example}; check the files (PIL must open them)")
    return {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "lr": run.optimizer.param_groups[0]["lr"],
            "images_per_s": seen / train_time, "train_seconds": train_time,
            "unreadable_train_images": int(unreadable)}, examples


def _train_step(run: ClassificationRun, images: torch.Tensor, targets: torch.Tensor, where: str) -> float:
    ctx = run.ctx
    images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
    if run.recipe.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if run.mixup is not None:
        images, targets = run.mixup(images, targets)
    with autocast(ctx.device, run.amp_dtype):
        loss = run.criterion(images, run.model(images), targets)
    value = finite_loss(loss, where)
    run.step(loss)
    return value


def evaluate_epoch(run: ClassificationRun, epoch: int, record: dict) -> bool:
    """Evaluate when the recipe says so (always after the last epoch); True for a new best."""
    recipe, ctx = run.recipe, run.ctx
    if (epoch + 1) % recipe.eval_every and epoch + 1 != recipe.epochs:
        return False
    # the unwrapped model: no DDP collectives in evaluation (a rank may get no batch)
    sync_buffers(run.raw_model, ctx)
    metrics = evaluate(run.raw_model, run.val_loader, ctx, run.amp_dtype, recipe.channels_last)
    record.update({f"val_{k}": v for k, v in metrics.items() if k != "skipped"},
                  unreadable_val_images=metrics["skipped"])
    if run.ema is not None and recipe.ema_eval:
        ema_metrics = evaluate(run.ema.module, run.val_loader, ctx, run.amp_dtype, recipe.channels_last)
        record.update(ema_val_top1=ema_metrics["top1"], ema_val_top5=ema_metrics["top5"])
    if metrics["top1"] <= run.best["top1"]:
        return False
    run.best = {"top1": metrics["top1"], "epoch": epoch + 1}
    return True


def save_last(run: ClassificationRun, epoch: int) -> dict:
    """Write ``checkpoint-last.pth``; returns what it holds (for :func:`save_best`)."""
    recipe = run.recipe
    state = {
        "format": "repvit-train", "epoch": epoch, "model": recipe.model, "num_classes": len(run.class_names),
        "distillation": recipe.distilled, "qat": recipe.qat, "class_names": run.class_names, "recipe": recipe.to_dict(),
        "state_dict": run.raw_model.state_dict(), "ema": run.ema.module.state_dict() if run.ema else None,
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.step.scaler_state(), "best": run.best, "history": run.history, "rng": rng_state(),
    }
    if not recipe.qat:  # lets read_checkpoint/load_weights/predict use this file directly
        state["repvit_metadata"] = {"model": recipe.model, "class_names": json.dumps(run.class_names)}
    atomic_save(state, run.output / LAST)
    return state


def save_best(run: ClassificationRun, state: dict) -> None:
    """``checkpoint-best.pth`` and the deployed weights of a new best epoch (``state``: its checkpoint)."""
    atomic_save(state, run.output / BEST)
    if not run.recipe.qat:
        save_deployed(run, run.raw_model, state)


def save_deployed(run: ClassificationRun, model: nn.Module, state: dict) -> None:
    """``model`` (holding ``state``'s weights) reparameterized, with the epoch and top-1 of ``state``'s best."""
    save_weights(reparameterize(model), run.output / DEPLOYED_BEST, class_names=run.class_names,
                 metadata={"epoch": state["best"]["epoch"], "val_top1": state["best"]["top1"]})


def deployed_epoch(path: Path) -> int | None:
    """The epoch a deployed best file holds (None: missing or unreadable)."""
    try:
        return int(read_safetensors(path)[1]["epoch"]) if path.is_file() else None
    except (CheckpointError, KeyError, ValueError):
        return None


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                    disable=not (enabled and Console().is_terminal), transient=True)


def tensorboard(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: pip install tensorboard
        return None
    return SummaryWriter(str(output / "tensorboard"))


def log_epoch(run: ClassificationRun, record: dict, writer, unreadable_examples: list[str]) -> None:
    write_metrics(run.output, [record])
    parts = [f"epoch {record['epoch']}/{run.recipe.epochs}", f"train loss {record['train_loss']:.4f}",
             f"lr {record['lr']:.2e}", f"{record['images_per_s']:.0f} img/s"]
    if "val_top1" in record:
        parts += [f"val top-1 {record['val_top1']:.2f}", f"top-5 {record['val_top5']:.2f}",
                  f"(best {run.best['top1']:.2f} @ {run.best['epoch']})"]
    if "ema_val_top1" in record:
        parts.append(f"EMA top-1 {record['ema_val_top1']:.2f}")
    if record.get("unreadable_val_images"):
        parts.append(f"{record['unreadable_val_images']} unreadable val image(s) skipped")
    if record["unreadable_train_images"]:
        example = f", e.g. {unreadable_examples[0]}" if unreadable_examples else ""
        parts.append(f"{record['unreadable_train_images']} unreadable image(s) skipped{example}")
    log.info("  ".join(parts))
    if writer is not None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["epoch"])
