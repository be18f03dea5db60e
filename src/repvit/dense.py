"""The training loop shared by detection and segmentation (RepViT backbones for dense tasks).

A task (:mod:`repvit.detection`, :mod:`repvit.segmentation`) supplies the model, the datasets,
the loss of a batch, the evaluation and the learning-rate curve; this module runs the
iteration-based loop around them: single process or torchrun (DDP, gloo/NCCL), AMP, a frozen-BN
backbone (the paper's setting), atomic checkpoints with exact resume, best-model tracking (also
saved reparameterized), ``metrics.jsonl``.

Exact resume: every sample's augmentation is drawn from a generator seeded by (seed, epoch,
index), the sampler order by (seed, epoch) and the global generator (proposal sampling, dropout)
by (seed, iteration), so resuming at iteration ``i`` replays the same steps, whichever worker loads
the batches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .engine import ProcessContext, ShardSampler, _all_reduce_sum, _atomic_save, setup_process, sync_buffers
from .recipe import Recipe, option

__all__ = ["DenseRecipe", "DenseTask", "train_dense", "freeze_backbone_norm", "read_dense_checkpoint",
           "sample_generator"]

log = logging.getLogger(__name__)


@dataclass
class DenseRecipe(Recipe):
    """Options every dense task shares; the tasks add theirs and set their paper defaults."""

    model: str = option("repvit_m1_1", "backbone (a RepViT model name)", "model")
    weights: str | None = option(None, "backbone initialisation: a classification checkpoint (path, URL or "
                                       "registered name)", "model")
    norm_eval: bool = option(True, "keep the backbone's BatchNorm statistics frozen (the paper's setting)", "model")
    data: str | None = option(None, "dataset root", "data")
    batch_size: int = option(2, "images per process per step", "data", check=">0")
    workers: int = option(4, "data-loading workers per process", "data", check=">=0")
    lr: float = option(2e-4, "AdamW learning rate", "optimizer", check=">0")
    weight_decay: float = option(0.05, "AdamW weight decay", "optimizer", check=">=0")
    clip_grad: float | None = option(None, "clip the gradient norm (none: off)", "optimizer")
    warmup_iters: int = option(0, "linear warm-up iterations", "schedule", check=">=0")
    warmup_ratio: float = option(1e-6, "learning-rate factor at the start of warm-up", "schedule", check="0..1")
    eval_interval: int = option(0, "evaluate and checkpoint every N iterations (0: every epoch)", "output", check=">=0")
    log_interval: int = option(50, "print the running loss every N iterations", "output", check=">0")
    device: str = option("auto", "auto, cpu, cuda or cuda:N", "runtime")
    amp: str = option("auto", "mixed precision: auto (fp16 on CUDA), bf16, fp16 or off", "runtime",
                      ("auto", "bf16", "fp16", "off"))
    seed: int = option(0, "random seed", "runtime")
    output: str = option("runs/dense", "folder for checkpoints, recipe.yaml and metrics.jsonl", "output")
    resume: str | None = option(None, "continue a run: a checkpoint path, or 'auto' (OUTPUT/checkpoint-last.pth)",
                                "output")
    stop_after_iters: int | None = option(None, "stop this process after N iterations (resume later)", "output")


class DenseTask(Protocol):
    name: str  # "segment" or "detect"
    key_metric: str  # what "best" means, e.g. "mIoU" or "bbox_AP"

    def build_model(self, recipe) -> nn.Module: ...
    def datasets(self, recipe) -> tuple: ...  # (train, val, class_names)
    def collate(self, batch): ...
    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict]: ...
    def evaluate(self, model: nn.Module, loader: DataLoader, ctx: ProcessContext, recipe) -> dict: ...
    def total_iters(self, recipe, iters_per_epoch: int) -> int: ...
    def lr_factor(self, recipe, it: int, total: int, iters_per_epoch: int) -> float: ...


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random generator of one sample's augmentation: depends on nothing else."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 100_003 + index) % 2**63)


def freeze_backbone_norm(model: nn.Module) -> None:
    """Put every BatchNorm of the model's RepViT backbone in eval mode (statistics frozen, affine
    parameters still trained), as the paper's detection and segmentation configs do."""
    from .models import RepViTFeatures

    for module in model.modules():
        if isinstance(module, RepViTFeatures):
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()



class _ResumeSampler(Sampler):
    """The epoch's order, from position ``skip`` on (resuming in the middle of an epoch)."""

    def __init__(self, sampler: DistributedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return len(self.sampler) - self.skip


def _amp_dtype(amp: str, device: torch.device):
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "off"
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def restore_dense_model(model: nn.Module, state: dict, deploy: bool = True) -> nn.Module:
    """Load a dense checkpoint's weights into ``model`` (built from its recipe), saved in either
    structure; returns the reparameterized model unless ``deploy=False`` (a training-structure copy)."""
    from .reparam import reparameterize

    if state.get("deployed"):  # model-best-deployed.pth: the fused structure only
        model = reparameterize(model)
        model.load_state_dict(state["state_dict"])
        return model
    model.load_state_dict(state["state_dict"])
    return reparameterize(model) if deploy else model.eval()


def read_dense_checkpoint(path, task: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or state.get("format") != f"repvit-{task}":
        raise ValueError(f"{path}: not a checkpoint of `repvit {task} train`")
    return state


def train_dense(task: DenseTask, recipe) -> dict:
    """Run ``task`` as ``recipe`` says; returns the best metrics and where things were written."""
    from .reparam import reparameterize

    recipe = recipe.validate()
    if recipe.data is None:
        raise ValueError(f"--data is required (repvit {task.name} train --help shows the layout)")
    ctx = setup_process(recipe.device)
    try:
        train_set, val_set, class_names = task.datasets(recipe)
        sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=recipe.seed, drop_last=True)
        iters_per_epoch = len(sampler) // recipe.batch_size
        if iters_per_epoch == 0:
            raise ValueError(f"{len(sampler)} training images per process is fewer than one batch of {recipe.batch_size}")
        total = task.total_iters(recipe, iters_per_epoch)
        eval_interval = recipe.eval_interval or iters_per_epoch
        val_loader = DataLoader(val_set, batch_size=1, sampler=ShardSampler(len(val_set), ctx.rank, ctx.world_size),
                                num_workers=recipe.workers, collate_fn=task.collate)

        torch.manual_seed(recipe.seed)
        model = task.build_model(recipe).to(ctx.device)
        raw_model = model
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr,
                                      weight_decay=recipe.weight_decay)
        lr_factor = lambda it: task.lr_factor(recipe, it, total, iters_per_epoch)  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        amp_dtype = _amp_dtype(recipe.amp, ctx.device)
        scaler = torch.amp.GradScaler(ctx.device.type) if amp_dtype == torch.float16 else None

        output = Path(recipe.output)
        start_it, best, history = 0, {task.key_metric: -1.0, "iter": 0}, []
        resume = output / "checkpoint-last.pth" if recipe.resume == "auto" else recipe.resume
        if resume and (recipe.resume != "auto" or Path(resume).is_file()):
            state = read_dense_checkpoint(resume, task.name)
            if state["model_name"] != recipe.model or state["num_classes"] != len(class_names):
                raise ValueError(f"--resume {resume}: the checkpoint is {state['model_name']} with "
                                 f"{state['num_classes']} classes, this run {recipe.model} with {len(class_names)}")
            try:
                raw_model.load_state_dict(state["state_dict"])
            except RuntimeError as err:  # e.g. another --detector or head width than the checkpoint's
                first = str(err).strip().splitlines()[0][:200]
                raise ValueError(f"--resume {resume}: the checkpoint's model differs from this run's ({first})") from None
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_it, best, history = state["iter"], state["best"], list(state["history"])
            scheduler.last_epoch = start_it  # the schedule is a function of the iteration only
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * lr_factor(start_it)
            if ctx.is_main:
                log.info("resumed %s at iteration %d", resume, start_it)
        if ctx.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        if ctx.is_main:
            output.mkdir(parents=True, exist_ok=True)
            recipe.save(output / "recipe.yaml")
            with open(output / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in history)
            log.info("%s: %s backbone, %d classes, %d train / %d val images, %d process(es) x batch %d, "
                     "%d iterations (%d per epoch), %s", task.name, recipe.model, len(class_names), len(train_set),
                     len(val_set), ctx.world_size, recipe.batch_size, total, iters_per_epoch, ctx.device)

        it, loader_iter, epoch, run_iters = start_it, None, -1, 0
        window, window_start = [], time.perf_counter()
        while it < total:
            if it // iters_per_epoch != epoch:  # a new epoch (or the resumed one, from its position)
                epoch = it // iters_per_epoch
                sampler.set_epoch(epoch)
                train_set.set_epoch(epoch)
                skip = (it - epoch * iters_per_epoch) * recipe.batch_size
                loader = DataLoader(train_set, batch_size=recipe.batch_size,
                                    sampler=_ResumeSampler(sampler, skip) if skip else sampler,
                                    num_workers=recipe.workers, collate_fn=task.collate, drop_last=True,
                                    pin_memory=ctx.device.type == "cuda")
                loader_iter = iter(loader)
            batch = next(loader_iter)
            # torchvision's proposal sampling and dropout draw from the global generator: seed it per
            # iteration so that a resumed run continues exactly
            torch.manual_seed((recipe.seed * 1_000_003 + it * 7919 + ctx.rank) % 2**63)
            model.train()
            if recipe.norm_eval:
                freeze_backbone_norm(model)
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, parts = task.loss(model, batch, ctx.device)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it + 1}: lower --lr or use --amp off")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if recipe.clip_grad:
                nn.utils.clip_grad_norm_(raw_model.parameters(), recipe.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            it += 1
            run_iters += 1
            window.append({"loss": loss.item(), **{k: float(v) for k, v in parts.items()}})
            if it % recipe.log_interval == 0 or it == total:
                if ctx.is_main:  # only rank 0 reports; every rank starts a new window
                    mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                    elapsed = time.perf_counter() - window_start
                    record = {"iter": it, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                              "images_per_s": len(window) * recipe.batch_size * ctx.world_size / elapsed,
                              **{f"train_{k}": v for k, v in mean.items()}}
                    history.append(record)
                    with open(output / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    log.info("iter %d/%d  loss %.4f  lr %.2e  %.1f img/s", it, total, mean["loss"], record["lr"],
                             record["images_per_s"])
                window, window_start = [], time.perf_counter()

            stopping = recipe.stop_after_iters is not None and run_iters >= recipe.stop_after_iters
            if it % eval_interval == 0 or it == total or stopping:
                metrics = {}
                if it % eval_interval == 0 or it == total:
                    sync_buffers(raw_model, ctx)
                    metrics = task.evaluate(raw_model, val_loader, ctx, recipe)
                    record = {"iter": it, "epoch": epoch + 1, **{f"val_{k}": v for k, v in metrics.items()}}
                    history.append(record)
                is_best = bool(metrics) and metrics[task.key_metric] > best[task.key_metric]
                if is_best:
                    best = {task.key_metric: metrics[task.key_metric], "iter": it, **metrics}
                if ctx.is_main:
                    if metrics:
                        with open(output / "metrics.jsonl", "a") as f:
                            f.write(json.dumps(history[-1]) + "\n")
                        log.info("iter %d  %s  (best %s %.2f @ %d)", it, "  ".join(f"{k} {v:.2f}" for k, v in
                                 metrics.items() if isinstance(v, float)), task.key_metric,
                                 best[task.key_metric], best["iter"])
                    state = {"format": f"repvit-{task.name}", "iter": it, "model_name": recipe.model,
                             "num_classes": len(class_names), "class_names": class_names,
                             "recipe": recipe.to_dict(), "state_dict": raw_model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                             "best": best, "history": history}
                    _atomic_save(state, output / "checkpoint-last.pth")
                    if is_best:
                        _atomic_save(state, output / "checkpoint-best.pth")
                        deployed = reparameterize(raw_model)
                        _atomic_save({**state, "state_dict": deployed.state_dict(), "deployed": True,
                                      "optimizer": None}, output / "model-best-deployed.pth")
                if stopping and it < total:
                    if ctx.is_main:
                        log.info("stopped after %d iteration(s) as asked; continue with --resume auto", run_iters)
                    break
        if ctx.distributed:
            dist.barrier()
        return {"output": output, "iter": it, "best": best, "history": history, "class_names": class_names}
    finally:
        if ctx.started_group:
            dist.destroy_process_group()


def all_gather_objects(obj, ctx: ProcessContext) -> list:
    """Every process's ``obj``, on every process (a list with one entry per rank)."""
    if not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


__all__ += ["all_gather_objects", "_all_reduce_sum"]
