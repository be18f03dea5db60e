"""The training engine: one loop for ``repvit train``, ``repvit quickstart`` and torchrun.

Reads top to bottom: process setup -> data -> model (scratch, fine-tune or resume) -> optimizer,
schedule, EMA, AMP, DDP -> the epoch loop (train, evaluate, log, checkpoint). timm provides the
augmentation, mixup, losses, optimizer, scheduler, EMA and gradient clipping; distillation is ours
(:mod:`repvit.distill`).

Exact resume: every epoch re-seeds all random generators from (seed, epoch, rank) and the sampler
from (seed, epoch), so an interrupted and resumed run replays the same batches and augmentations
as an uninterrupted one (the RNG states are also stored in the checkpoint, for inspection).
Checkpoints are written atomically (temporary file, then rename).

``--qat`` trains the fake-quantized, reparameterized graph of :mod:`repvit.qat` instead of the
training structure (no distillation, EMA, AMP or compile: a short int8 fine-tune), and converts
the best checkpoint to an int8 ExecuTorch program at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .data import SkippingImageFolder, check_image_folder, collate_skipping, eval_transform, train_transform
from .recipe import PER_RUN_KEYS, TrainRecipe

__all__ = ["train", "evaluate", "evaluate_pair", "TrainResult", "ProcessContext", "setup_process", "resolve_device",
           "build_eval_loader", "read_training_checkpoint"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Processes and devices
# ----------------------------------------------------------------------------------------------


@dataclass
class ProcessContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: expected cpu, cuda or cuda:N (or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def setup_process(device: str = "auto") -> ProcessContext:
    """Pick the device; join the process group when launched by torchrun (RANK/WORLD_SIZE set)."""
    dev = resolve_device(device)
    ctx = ProcessContext(device=dev)
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        ctx.rank, ctx.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        ctx.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.type == "cuda":
            ctx.device = torch.device("cuda", ctx.local_rank)
            torch.cuda.set_device(ctx.device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            ctx.started_group = True
    return ctx


def _all_reduce_sum(values: list[float], ctx: ProcessContext) -> list[float]:
    if not ctx.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def sync_buffers(model: nn.Module, ctx: ProcessContext) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), so that a sharded
    evaluation measures exactly the model that rank 0 saves: each DDP process updates its own
    statistics from its own batches during training."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """All generators from (seed, epoch, rank): the replay that makes resume exact."""
    value = (seed * 1_000_003 + epoch * 10_007 + rank * 101) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch and random in each worker; timm's transforms also draw from numpy.
    np.random.seed(torch.initial_seed() % 2**32)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


class ShardSampler(Sampler):
    """Evaluation sharding without padding: rank r takes samples r, r+W, r+2W, ... (exact metrics)."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def build_eval_loader(folder, img_size: int, crop_pct: float, batch_size: int, workers: int,
                      ctx: ProcessContext | None = None) -> DataLoader:
    ctx = ctx or ProcessContext()
    dataset = SkippingImageFolder(str(folder), transform=eval_transform(img_size, crop_pct))
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
                      num_workers=workers, collate_fn=collate_skipping, pin_memory=ctx.device.type == "cuda",
                      worker_init_fn=_seed_worker)


def _build_train_loader(recipe: TrainRecipe, root: Path, ctx: ProcessContext):
    dataset = SkippingImageFolder(str(root / "train"), transform=train_transform(recipe))
    if recipe.repeated_aug:
        from timm.data.distributed_sampler import RepeatAugSampler

        sampler = RepeatAugSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True)
    else:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=recipe.seed, drop_last=True)
    if len(sampler) < recipe.batch_size:
        raise ValueError(f"{root / 'train'}: {len(sampler)} images per process is fewer than one batch of "
                         f"{recipe.batch_size}; lower --batch-size")
    loader = DataLoader(dataset, batch_size=recipe.batch_size, sampler=sampler, num_workers=recipe.workers,
                        collate_fn=collate_skipping, pin_memory=ctx.device.type == "cuda", drop_last=True,
                        worker_init_fn=_seed_worker)
    return loader, sampler


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, ctx: ProcessContext | None = None,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict:
    """Top-1/top-5 (%) and cross-entropy over the loader, summed over all processes."""
    ctx = ctx or ProcessContext()
    model.eval()
    totals = [0.0, 0.0, 0.0, 0.0]  # loss sum, top-1 hits, top-5 hits, samples
    skipped = 0
    for images, targets, bad in loader:
        skipped += len(bad)
        if images is None:
            continue
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images).float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == targets[:, None]
        totals[0] += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        totals[1] += float(hits[:, 0].sum())
        totals[2] += float(hits.any(dim=-1).sum())
        totals[3] += len(targets)
    loss, top1, top5, n = _all_reduce_sum(totals, ctx)
    (skipped,) = _all_reduce_sum([float(skipped)], ctx)
    if n == 0:
        raise ValueError("no readable evaluation images")
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
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == targets[:, None]
            hits[name][0] += int(top[:, 0].sum())
            hits[name][1] += int(top.any(dim=-1).sum())
        agree += int((outputs["train"].argmax(-1) == outputs["deployed"].argmax(-1)).sum())
        max_diff = max(max_diff, float((outputs["train"] - outputs["deployed"]).abs().max()))
        n += len(targets)
    if n == 0:
        raise ValueError("no readable evaluation images")
    result = {name: {"top1": 100 * h[0] / n, "top5": 100 * h[1] / n} for name, h in hits.items()}
    return {**result, "n": n, "prediction_agreement": 100 * agree / n, "max_abs_logit_diff": max_diff}


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def read_training_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--resume {path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"--resume {path}: not a readable training checkpoint ({str(err).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or state.get("format") != "repvit-train":
        raise ValueError(f"--resume {path}: not a repvit training checkpoint (those are written by repvit train)")
    return state


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    output: Path
    best_top1: float
    best_epoch: int
    last_epoch: int
    history: list[dict]
    class_names: list[str]
    checkpoint_last: Path
    checkpoint_best: Path
    deployed_best: Path


def _amp_dtype(recipe: TrainRecipe, device: torch.device) -> torch.dtype | None:
    amp = recipe.amp
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "off"
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _criterion(recipe: TrainRecipe, teacher):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    from .distill import DistillationLoss

    if recipe.mixup_active:
        base = SoftTargetCrossEntropy()  # label smoothing is folded into the mixed targets
    elif recipe.smoothing > 0:
        base = LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return DistillationLoss(base, teacher, recipe.distillation, recipe.distillation_alpha, recipe.distillation_tau)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                    disable=not (enabled and Console().is_terminal), transient=True)


def train(recipe: TrainRecipe) -> TrainResult:
    """Train (or fine-tune, or resume) as ``recipe`` says; see the module docstring."""
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad

    from .models import create_model
    from .reparam import reparameterize
    from .weights import load_weights, read_checkpoint, save_weights

    recipe = recipe.validate()
    if recipe.data is None:
        raise ValueError("--data is required: an ImageFolder root with train/ and val/ (or run repvit quickstart)")
    qat_changes = {}
    if recipe.qat:
        if not recipe.finetune and not recipe.resume:
            raise ValueError("--qat fine-tunes a trained model: give --finetune SRC (a checkpoint of these classes)")
        qat_changes = {k: v for k, v in QAT_OFF.items() if getattr(recipe, k) != v}
        recipe = replace(recipe, **qat_changes)
    ctx = setup_process(recipe.device)
    try:
        # ---- data
        root = Path(recipe.data)
        class_names = check_image_folder(root)
        num_classes = recipe.num_classes or len(class_names)
        if num_classes != len(class_names):
            raise ValueError(f"--num-classes {num_classes} does not match the {len(class_names)} class folders in {root}")
        train_loader, sampler = _build_train_loader(recipe, root, ctx)
        val_loader = build_eval_loader(root / "val", recipe.img_size, recipe.crop_pct, recipe.batch_size,
                                       recipe.workers, ctx)
        global_batch = recipe.batch_size * ctx.world_size
        lr = recipe.lr if recipe.lr is not None else recipe.base_lr * global_batch / 512

        # ---- model: from scratch, fine-tuned from a checkpoint, or resumed below
        output = Path(recipe.output)
        resume_path = _resume_path(recipe)
        torch.manual_seed(recipe.seed)  # identical initial weights on every process
        distill = recipe.distillation != "none"
        if recipe.qat:
            model = _qat_model(recipe, num_classes, class_names, resume_path)
            if ctx.is_main and qat_changes:
                log.info("--qat: %s", ", ".join(f"{k} -> {v!r}" for k, v in qat_changes.items()))
        else:
            model = create_model(recipe.model, num_classes=num_classes, distillation=distill,
                                 drop_rate=recipe.drop_rate)
        if recipe.finetune and resume_path is None and not recipe.qat:
            source = read_checkpoint(recipe.finetune)
            same_head = source.num_classes == num_classes and source.distillation == distill
            load_weights(model, source, ignore_head=not same_head)
            if not same_head and ctx.is_main:
                log.info("fine-tuning from %s: dropped its classifier (%d classes%s); the new %d-class "
                         "classifier starts from scratch", source.path, source.num_classes,
                         ", distillation head" * source.distillation, num_classes)
        if distill:
            model.set_distilled_training(True)
        model.to(ctx.device)
        if recipe.channels_last:
            model.to(memory_format=torch.channels_last)
        raw_model = model  # what is saved and averaged: never the DDP or compiled wrapper
        teacher = None
        if distill:
            from .distill import build_teacher

            teacher = build_teacher(recipe.teacher, recipe.teacher_weights, num_classes, ctx.device)

        # ---- optimisation
        optimizer = create_optimizer_v2(raw_model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay,
                                        eps=recipe.opt_eps)
        updates_per_epoch = len(train_loader)
        scheduler, _ = create_scheduler_v2(
            optimizer, sched="cosine", num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
            warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr, step_on_epochs=not recipe.sched_on_updates,
            updates_per_epoch=updates_per_epoch,
        )
        amp_dtype = _amp_dtype(recipe, ctx.device)
        scaler = torch.amp.GradScaler(ctx.device.type) if amp_dtype == torch.float16 else None
        ema = ModelEmaV3(raw_model, decay=recipe.model_ema_decay) if recipe.model_ema else None
        clip_params = [p for n, p in raw_model.named_parameters()
                       if not (recipe.clip_mode == "agc" and n.startswith(("head.", "graph.head")))]  # AGC skips the classifier
        mixup = None
        if recipe.mixup_active:
            mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                          switch_prob=recipe.mixup_switch_prob, mode=recipe.mixup_mode,
                          label_smoothing=recipe.smoothing, num_classes=num_classes)
        criterion = _criterion(recipe, teacher)

        # ---- resume
        start_epoch, best, history = 0, {"top1": -1.0, "epoch": -1}, []
        if resume_path is not None:
            state = read_training_checkpoint(resume_path)
            this_run = {"model": recipe.model, "num_classes": num_classes, "distillation": distill, "qat": recipe.qat}
            for key, value in this_run.items():
                if state.get(key, False) != value:
                    raise ValueError(f"--resume {resume_path}: the checkpoint has {key}={state.get(key, False)!r}, "
                                     f"this run {value!r}")
            raw_model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:  # the recipe's weight decay, not the checkpoint's
                if group["weight_decay"] > 0:
                    group["weight_decay"] = recipe.weight_decay
            # The scheduler is not restored: it is a pure function of the step, rebuilt from this
            # recipe, so a resumed run may extend --epochs and the schedule follows.
            if ema is not None:
                if state.get("ema") is not None:
                    ema.module.load_state_dict(state["ema"])
                else:
                    ema.set(raw_model)  # EMA newly enabled: start it from the resumed weights
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_epoch, best, history = state["epoch"] + 1, state["best"], list(state["history"])
            if ctx.is_main:
                changed = {k: (state["recipe"].get(k), v) for k, v in recipe.to_dict().items()
                           if k not in PER_RUN_KEYS and state["recipe"].get(k) != v}
                log.info("resumed %s at epoch %d (best top-1 %.2f at epoch %d)%s", resume_path, start_epoch,
                         best["top1"], best["epoch"],
                         "; changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()) if changed else "")

        # ---- wrappers
        if recipe.sync_bn and ctx.distributed:
            if ctx.device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            raw_model = model
        if ctx.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        if recipe.compile:  # after DDP, so gradient communication can overlap the backward pass
            model = torch.compile(model)
        if recipe.repeated_aug and not ctx.distributed and ctx.is_main:
            log.warning("repeated augmentation with one process puts 3 augmentations of each image in the same "
                        "batch (as the official code does); on one GPU or CPU consider --no-repeated-aug")

        if ctx.is_main:
            output.mkdir(parents=True, exist_ok=True)
            recipe.save(output / "recipe.yaml")
            # the log holds exactly the epochs of the checkpoint we start from
            with open(output / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in history)
            log.info("training %s on %s: %d classes, %d train images, %d val images, %d process(es) x batch %d, "
                     "lr %.2e, %s", recipe.model, root, num_classes, len(train_loader.dataset),
                     len(val_loader.dataset), ctx.world_size, recipe.batch_size, lr,
                     f"{ctx.device}" + (f", amp {amp_dtype}" if amp_dtype else ""))
        writer = _tensorboard(output) if ctx.is_main else None

        # ---- the loop
        last_path, best_path, deployed_path = output / "checkpoint-last.pth", output / "checkpoint-best.pth", \
            output / "model-best-deployed.safetensors"
        epochs_run, epoch = 0, start_epoch - 1
        for epoch in range(start_epoch, recipe.epochs):
            _seed_epoch(recipe.seed, epoch, ctx.rank)
            sampler.set_epoch(epoch)
            scheduler.step(epoch)  # learning rate of this epoch (per-update mode: its first update)
            scheduler.step_update(epoch * updates_per_epoch)
            model.train()
            if recipe.freeze_bn:
                for m in model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()  # normalise with the running statistics and leave them unchanged
            loss_sum, seen, start = 0.0, 0, time.perf_counter()
            with _progress(ctx.is_main) as bar:
                task = bar.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=updates_per_epoch, info="")
                unreadable, examples = 0, []
                for step, (images, targets, bad) in enumerate(train_loader):
                    unreadable += len(bad)
                    examples = (examples + bad)[:3]
                    if images is not None and mixup is not None and len(images) % 2:
                        images, targets = images[:-1], targets[:-1]  # mixup pairs images: keep it even
                    if not _all_usable(images, ctx):  # every process skips together, or DDP would hang
                        bar.advance(task)
                        continue
                    images = images.to(ctx.device, non_blocking=True)
                    targets = targets.to(ctx.device, non_blocking=True)
                    if recipe.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    if mixup is not None:
                        images, targets = mixup(images, targets)
                    with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        outputs = model(images)
                        loss = criterion(images, outputs, targets)
                    if not math.isfinite(loss.item()):
                        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: "
                                                 "lower the learning rate, or try --amp off")
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    if recipe.clip_grad is not None:
                        dispatch_clip_grad(clip_params, recipe.clip_grad, mode=recipe.clip_mode)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step_update(epoch * updates_per_epoch + step + 1)
                    if ema is not None:
                        ema.update(raw_model, step=epoch * updates_per_epoch + step + 1)
                    loss_sum += loss.item() * len(images)
                    seen += len(images)
                    elapsed = time.perf_counter() - start
                    bar.update(task, advance=1, info=f"{seen * ctx.world_size / elapsed:.0f} img/s  "
                               f"loss {loss_sum / seen:.4f}  lr {optimizer.param_groups[0]['lr']:.2e}")
            train_time = time.perf_counter() - start
            loss_sum, seen, unreadable = _all_reduce_sum([loss_sum, float(seen), float(unreadable)], ctx)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                      "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / train_time,
                      "train_seconds": train_time, "unreadable_train_images": int(unreadable)}

            last = epoch + 1 == recipe.epochs
            if (epoch + 1) % recipe.eval_every == 0 or last:
                # the unwrapped model: no DDP collectives in evaluation (a rank may get no batch)
                sync_buffers(raw_model, ctx)
                metrics = evaluate(raw_model, val_loader, ctx, amp_dtype, recipe.channels_last)
                record.update({f"val_{k}": v for k, v in metrics.items() if k != "skipped"},
                              unreadable_val_images=metrics["skipped"])
                if ema is not None and recipe.ema_eval:
                    ema_metrics = evaluate(ema.module, val_loader, ctx, amp_dtype, recipe.channels_last)
                    record.update(ema_val_top1=ema_metrics["top1"], ema_val_top5=ema_metrics["top5"])
                is_best = metrics["top1"] > best["top1"]
                if is_best:
                    best = {"top1": metrics["top1"], "epoch": epoch + 1}
            else:
                is_best = False
            history.append(record)

            if ctx.is_main:
                state = {
                    "format": "repvit-train", "epoch": epoch, "model": recipe.model, "num_classes": num_classes,
                    "distillation": distill, "qat": recipe.qat, "class_names": class_names, "recipe": recipe.to_dict(),
                    "state_dict": raw_model.state_dict(), "ema": ema.module.state_dict() if ema else None,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler else None, "best": best, "history": history,
                    "rng": _rng_state(),
                }
                if not recipe.qat:  # lets read_checkpoint/load_weights/predict use this file directly
                    state["repvit_metadata"] = {"model": recipe.model, "class_names": json.dumps(class_names)}
                _atomic_save(state, last_path)
                _log_epoch(record, best, recipe.epochs, output, writer, examples)  # after the checkpoint
                if is_best:
                    _atomic_save(state, best_path)
                    if not recipe.qat:
                        save_weights(reparameterize(raw_model), deployed_path, class_names=class_names,
                                     metadata={"epoch": epoch + 1, "val_top1": best["top1"]})
            epochs_run += 1
            if recipe.stop_after_epochs and epochs_run >= recipe.stop_after_epochs and not last:
                if ctx.is_main:
                    log.info("stopped after %d epoch(s) as asked; continue with --resume %s", epochs_run, last_path)
                break
        if writer is not None:
            writer.close()
        if recipe.qat and ctx.is_main and best_path.is_file() and epoch + 1 == recipe.epochs:
            # after the last epoch only: converting and lowering takes ~1 min for M0.9
            try:
                _export_qat_best(recipe, num_classes, best_path, output)
            except Exception as err:  # the trained checkpoints are safe; say what failed, in one line
                log.error("could not convert %s to an int8 ExecuTorch program: %s: %s", best_path,
                          type(err).__name__, str(err).strip().splitlines()[0][:240] if str(err).strip() else "")
        if ctx.distributed:
            dist.barrier()
        if recipe.qat:  # written only when the schedule completes (not after --stop-after-epochs)
            deployed_path = output / "model-best-int8.pte"
        return TrainResult(output, best["top1"], best["epoch"], epoch + 1, history, class_names,
                           last_path, best_path, deployed_path)
    finally:
        if ctx.started_group:
            dist.destroy_process_group()


#: What --qat turns off: a short fine-tune of the fused int8 graph (one classifier, no BatchNorm).
QAT_OFF = {"distillation": "none", "model_ema": False, "amp": "off", "channels_last": False, "compile": False,
           "freeze_bn": False, "sync_bn": False, "drop_rate": 0.0}


def _qat_model(recipe: TrainRecipe, num_classes: int, class_names: list[str], resume_path: Path | None) -> nn.Module:
    """The fake-quantized graph to fine-tune: from --finetune weights, or the shape to resume into."""
    from .models import create_model
    from .qat import prepare_qat
    from .weights import read_checkpoint

    if resume_path is not None:  # the checkpoint's weights are loaded into the prepared graph later
        return prepare_qat(create_model(recipe.model, num_classes=num_classes), recipe.img_size)
    if not recipe.finetune:
        raise ValueError("--qat fine-tunes a trained model: give --finetune SRC (a checkpoint of these classes)")
    source = read_checkpoint(recipe.finetune)
    if source.num_classes is not None and source.num_classes != num_classes:
        raise ValueError(f"--qat fine-tunes a model of these classes: --finetune {recipe.finetune} has "
                         f"{source.num_classes} classes, --data {num_classes} (train it first without --qat)")
    if source.class_names and source.class_names != class_names:
        raise ValueError(f"--qat: the class folders of --data ({', '.join(class_names[:3])}, ...) differ from "
                         f"--finetune {recipe.finetune}'s classes ({', '.join(source.class_names[:3])}, ...)")
    return prepare_qat(create_model(recipe.model, weights=source), recipe.img_size)


def _export_qat_best(recipe: TrainRecipe, num_classes: int, best_path: Path, output: Path) -> None:
    """Convert the best QAT checkpoint to an int8 ExecuTorch program; log its top-1 in ExecuTorch.

    Evaluated on every val image by this (main) process: the training's val loader may be sharded.
    """
    from .export import export_executorch, load_executorch
    from .models import create_model
    from .qat import convert_qat, prepare_qat
    from .quantize import evaluate_artifact, loader_samples

    state = read_training_checkpoint(best_path)["state_dict"]

    def best():
        model = prepare_qat(create_model(recipe.model, num_classes=num_classes), recipe.img_size)
        model.load_state_dict(state)
        return model

    loader = build_eval_loader(Path(recipe.data) / "val", recipe.img_size, recipe.crop_pct, recipe.batch_size,
                               recipe.workers)
    path = output / "model-best-int8.pte"
    example = torch.zeros(1, 3, recipe.img_size, recipe.img_size)
    with torch.no_grad():
        export_executorch(convert_qat(best()), example, path)
        stats = evaluate_artifact(load_executorch(path), loader_samples(loader), best().eval())
    (output / "int8.json").write_text(json.dumps({"path": str(path), **stats}, indent=2))
    log.info("int8 ExecuTorch program %s: val top-1 %.2f (%d images), %.2f%% agreement with the fake-quantized "
             "model", path, stats["top1"], stats["images"], stats["agreement"])


def _resume_path(recipe: TrainRecipe) -> Path | None:
    """The checkpoint to resume from: an explicit path, or OUTPUT/checkpoint-last.pth for 'auto'
    when it exists (a first run with --resume auto starts fresh)."""
    if recipe.resume is None:
        return None
    if recipe.resume == "auto":
        path = Path(recipe.output) / "checkpoint-last.pth"
        return path if path.is_file() else None
    return Path(recipe.resume)


def _all_usable(images, ctx: ProcessContext) -> bool:
    """A step needs >= 2 images (BatchNorm) on every process; under DDP all decide together."""
    usable = images is not None and len(images) >= 2
    if not ctx.distributed:
        return usable
    flag = torch.tensor([int(usable)], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _tensorboard(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: pip install tensorboard
        return None
    return SummaryWriter(str(output / "tensorboard"))


def _log_epoch(record: dict, best: dict, epochs: int, output: Path, writer, unreadable_examples: list) -> None:
    with open(output / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    parts = [f"epoch {record['epoch']}/{epochs}", f"train loss {record['train_loss']:.4f}", f"lr {record['lr']:.2e}",
             f"{record['images_per_s']:.0f} img/s"]
    if "val_top1" in record:
        parts += [f"val top-1 {record['val_top1']:.2f}", f"top-5 {record['val_top5']:.2f}",
                  f"(best {best['top1']:.2f} @ {best['epoch']})"]
    if "ema_val_top1" in record:
        parts.append(f"EMA top-1 {record['ema_val_top1']:.2f}")
    if record["unreadable_train_images"]:
        example = f", e.g. {unreadable_examples[0]}" if unreadable_examples else ""
        parts.append(f"{record['unreadable_train_images']} unreadable image(s) skipped{example}")
    log.info("  ".join(parts))
    if writer is not None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key, value, record["epoch"])
