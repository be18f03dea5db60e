"""The training loop shared by detection and segmentation (RepViT backbones for dense tasks).

A task (:mod:`.detection`, :mod:`.segmentation`) supplies the model, the datasets, the loss of a
batch, the evaluation and the learning-rate curve; this module runs the iteration-based loop
around them with the same process, optimizer-step and checkpoint layer as classification
(:mod:`repvit.train`): single process or torchrun (DDP, gloo/NCCL), AMP, a frozen-BN backbone (the
paper's setting), atomic checkpoints with exact resume, best-model tracking (also saved
reparameterized), ``metrics.jsonl``, in a run folder with the guarantees of
:mod:`repvit.train.run_folder` (locked, never silently replaced, consistent after a kill).

Exact resume: every sample's augmentation is drawn from a generator seeded by (seed, epoch,
index), the sampler order by (seed, epoch) and the global generators (proposal sampling, dropout)
by (seed, iteration), so resuming at iteration ``i`` replays the same steps, whichever worker loads
the batches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data import ResumeSampler, ShardSampler
from ..models import RepViTFeatures
from ..reparam import reparameterize
from ..train import ProcessContext, Recipe, option, read_run_checkpoint, setup_process
from ..train.checkpoint import BEST, LAST, run_command, write_metrics
from ..train.process import derive_seed, end_process, seed_everything, sync_buffers, wrap_ddp
from ..train.recipe import OVERWRITE_HELP, RESUME_HELP
from ..train.run_folder import RunFolder, best_files, open_run_folder, prepare_run, repair_best_files
from ..train.step import OptimizerStep, amp_dtype, autocast, finite_loss, freeze_batchnorm
from ..utils import UserError, param
from ..weights import atomic_save, first_mismatch

__all__ = ["DenseRecipe", "DenseTask", "train_dense", "freeze_backbone_norm", "read_dense_checkpoint",
           "restore_dense_model", "DEPLOYED_BEST"]

log = logging.getLogger(__name__)

DEPLOYED_BEST = "model-best-deployed.pth"
#: Recipe fields that may name local files or folders (made absolute in the run's recipe.yaml).
_PATH_KEYS = ("data", "weights", "train_ann", "train_images", "val_ann", "val_images", "teacher_weights")


@dataclass
class DenseRecipe(Recipe):
    """Options every dense task shares; the tasks add theirs and set their paper defaults."""

    model: str = option("repvit_m1_1", "backbone (a RepViT model name)", "model")
    weights: str | None = option(None, "backbone initialisation: a classification checkpoint (path, URL, "
                                       "hf-hub:ORG/REPO[:FILE] or registered name)", "model")
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
    resume: str | None = option(None, RESUME_HELP, "output")
    overwrite: bool = option(False, OVERWRITE_HELP, "output")
    stop_after_iters: int | None = option(None, "stop this process after N iterations (resume later)", "output")


class DenseTask(Protocol):
    name: str  # "segment", "detect" or "sam-distill": the checkpoint kind (see train.checkpoint.run_command)
    key_metric: str  # what "best" means, e.g. "mIoU" or "bbox_AP"
    # optional: products, the file names a task writes into the run folder besides the loop's own, and
    # finish(recipe, output): writes them, in the main process, once the last iteration is saved

    def build_model(self, recipe) -> nn.Module: ...
    def datasets(self, recipe) -> tuple: ...  # (train, val, class_names)
    def collate(self, batch): ...
    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict]: ...
    def evaluate(self, model: nn.Module, loader: DataLoader, ctx: ProcessContext, recipe) -> dict: ...
    def total_iters(self, recipe, iters_per_epoch: int) -> int: ...
    def lr_factor(self, recipe, it: int, total: int, iters_per_epoch: int) -> float: ...


def freeze_backbone_norm(model: nn.Module) -> None:
    """Put every BatchNorm of the model's RepViT backbone in eval mode (statistics frozen, affine
    parameters still trained), as the paper's detection and segmentation configs do."""
    for module in model.modules():
        if isinstance(module, RepViTFeatures):
            freeze_batchnorm(module)


def restore_dense_model(model: nn.Module, state: dict, deploy: bool = True) -> nn.Module:
    """Load a dense checkpoint's weights into ``model`` (built from its recipe), saved in either
    structure; returns the reparameterized model unless ``deploy=False`` (a training-structure copy)."""
    if state.get("deployed"):  # model-best-deployed.pth: the deployed structure only
        model = reparameterize(model)
        model.load_state_dict(state["state_dict"])
        return model
    model.load_state_dict(state["state_dict"])
    return reparameterize(model) if deploy else model.eval()


def read_dense_checkpoint(path, task: str) -> dict:
    """A checkpoint written by ``repvit <task> train`` (task: ``detect`` or ``segment``)."""
    return read_run_checkpoint(path, task)


@dataclass
class _DenseRun:
    """What one dense run holds between iterations."""

    task: DenseTask
    recipe: DenseRecipe
    ctx: ProcessContext
    train_set: object
    val_set: object
    class_names: list[str]
    sampler: DistributedSampler
    iters_per_epoch: int
    total: int
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: OptimizerStep
    amp_dtype: torch.dtype | None
    model: nn.Module | None = None
    it: int = 0
    best: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    folder: RunFolder | None = None

    @property
    def epoch(self) -> int:
        """The (1-based) epoch of the last iteration trained."""
        return (self.it - 1) // self.iters_per_epoch + 1

    @property
    def output(self) -> Path:
        return Path(self.recipe.output)

    def lr_factor(self, it: int) -> float:
        return self.task.lr_factor(self.recipe, it, self.total, self.iters_per_epoch)


def train_dense(task: DenseTask, recipe) -> dict:
    """Run ``task`` as ``recipe`` says; returns the best metrics and where things were written."""
    recipe = recipe.validate()
    if recipe.data is None:
        raise UserError(f"{param('data')} is required ({run_command(task.name)} --help shows the layout)")
    recipe, resume = prepare_run(recipe, tuple(k for k in _PATH_KEYS if hasattr(recipe, k)))
    ctx = setup_process(recipe.device)
    try:
        products = (DEPLOYED_BEST, *getattr(task, "products", ()))  # what else a task writes into the run folder
        with open_run_folder(recipe, resume, run_command(task.name), products, ctx) as run_folder:
            run = _setup(task, recipe, ctx, resume, run_folder)
            _train_iterations(run)
            finished = run.it == run.total
            if finished and ctx.is_main and hasattr(task, "finish"):  # the task's own files, from the finished run
                with run_folder.writing(run_folder.saved):
                    task.finish(recipe, run.output)
        if ctx.distributed:
            dist.barrier()
        return {"output": run.output, "iter": run.it, "total": run.total, "finished": finished, "best": run.best,
                "history": run.history, "class_names": run.class_names}
    finally:
        end_process(ctx)


def _setup(task: DenseTask, recipe: DenseRecipe, ctx: ProcessContext, resume: Path | None,
           folder: RunFolder) -> _DenseRun:
    train_set, val_set, class_names = task.datasets(recipe)
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=recipe.seed, drop_last=True)
    iters_per_epoch = len(sampler) // recipe.batch_size
    if iters_per_epoch == 0:
        raise UserError(f"{len(sampler)} training images per process is fewer than one batch of {recipe.batch_size}")
    torch.manual_seed(recipe.seed)
    model = task.build_model(recipe).to(ctx.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr,
                                  weight_decay=recipe.weight_decay)
    dtype = amp_dtype(recipe.amp, ctx.device)
    run = _DenseRun(task, recipe, ctx, train_set, val_set, class_names, sampler, iters_per_epoch,
                    task.total_iters(recipe, iters_per_epoch), model, optimizer, None,
                    OptimizerStep(optimizer, dtype, ctx.device, recipe.clip_grad or None, model.parameters()), dtype,
                    best={task.key_metric: -1.0, "iter": 0}, folder=folder)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, run.lr_factor)
    if resume is not None:
        _resume(run, resume)
    run.model = wrap_ddp(model, ctx)
    if ctx.is_main:
        recipe.save(run.output / "recipe.yaml")
        write_metrics(run.output, run.history, append=False)
        classes = f", {len(class_names)} classes" if class_names else ""  # (distillation has none)
        log.info("%s: %s backbone%s, %d train / %d val images, %d process(es) x batch %d, %d iterations (%d per "
                 "epoch), %s", task.name, recipe.model, classes, len(train_set), len(val_set), ctx.world_size,
                 recipe.batch_size, run.total, iters_per_epoch, ctx.device)
    return run


def _resume(run: _DenseRun, path: Path) -> None:
    recipe = run.recipe
    state = read_run_checkpoint(path, run.task.name, argument="resume")
    if state["model_name"] != recipe.model or state["num_classes"] != len(run.class_names):
        raise UserError(f"{param('resume')} {path}: the checkpoint is {state['model_name']} with "
                        f"{state['num_classes']} classes, this run {recipe.model} with {len(run.class_names)}")
    problem = first_mismatch(run.raw_model.state_dict(), state["state_dict"])
    if problem:  # e.g. another detector or head width than the checkpoint's
        raise UserError(f"{param('resume')} {path}: the checkpoint's model differs from this run's: {problem}")
    run.raw_model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.step.load_scaler_state(state.get("scaler"))
    run.it, run.best, run.history = state["iter"], state["best"], list(state["history"])
    run.scheduler.last_epoch = run.it  # the schedule is a function of the iteration only
    for group, base in zip(run.optimizer.param_groups, run.scheduler.base_lrs):
        group["lr"] = base * run.lr_factor(run.it)
    run.folder.saved = f"iteration {run.it} of {run.total}"
    if run.ctx.is_main:
        log.info("resumed %s: %d of %d iterations done", path, run.it, run.total)
        repair_best_files(run.output, _best_files(run), run.best["iter"], state, state["iter"], "iteration")


def _train_iterations(run: _DenseRun) -> None:
    recipe, ctx = run.recipe, run.ctx
    eval_interval = recipe.eval_interval or run.iters_per_epoch
    val_loader = DataLoader(run.val_set, batch_size=1, sampler=ShardSampler(len(run.val_set), ctx.rank, ctx.world_size),
                            num_workers=recipe.workers, collate_fn=run.task.collate)
    batches, run_iters, window = None, 0, _LossWindow()
    while run.it < run.total:
        if run.it % run.iters_per_epoch == 0 or batches is None:  # a new epoch, or the resumed one
            batches = _epoch_batches(run)
        batch = next(batches)
        # torchvision's proposal sampling and dropout draw from the global generator: seed it per
        # iteration so that a resumed run continues exactly
        seed_everything(derive_seed(recipe.seed, run.it, ctx.rank))
        window.add(_train_step(run, batch))
        run.it += 1
        run_iters += 1
        if run.it % recipe.log_interval == 0 or run.it == run.total:
            _log_window(run, window)
        stopping = recipe.stop_after_iters is not None and run_iters >= recipe.stop_after_iters
        if run.it % eval_interval == 0 or run.it == run.total or stopping:
            evaluated = run.it % eval_interval == 0 or run.it == run.total
            _save(run, is_best=_evaluate(run, val_loader) if evaluated else False)
            if stopping and run.it < run.total:
                if ctx.is_main:
                    log.info("stopped after %d iteration(s) as asked; continue with `%s`", run_iters,
                             run.folder.resume_command())
                return


def _epoch_batches(run: _DenseRun):
    """The batches of the current epoch, from the current iteration's position in it."""
    epoch = run.it // run.iters_per_epoch
    run.sampler.set_epoch(epoch)
    run.train_set.set_epoch(epoch)
    skip = (run.it - epoch * run.iters_per_epoch) * run.recipe.batch_size
    return iter(DataLoader(run.train_set, batch_size=run.recipe.batch_size,
                           sampler=ResumeSampler(run.sampler, skip) if skip else run.sampler,
                           num_workers=run.recipe.workers, collate_fn=run.task.collate, drop_last=True,
                           pin_memory=run.ctx.device.type == "cuda"))


def _train_step(run: _DenseRun, batch) -> dict:
    run.model.train()
    if run.recipe.norm_eval:
        freeze_backbone_norm(run.model)
    with autocast(run.ctx.device, run.amp_dtype):
        loss, parts = run.task.loss(run.model, batch, run.ctx.device)
    value = finite_loss(loss, f"iteration {run.it + 1}")
    run.step(loss)
    run.scheduler.step()
    return {"loss": value, **{k: float(v) for k, v in parts.items()}}


class _LossWindow:
    """Losses since the last log line, and how fast they came."""

    def __init__(self):
        self.records, self.start = [], time.perf_counter()

    def add(self, record: dict) -> None:
        self.records.append(record)

    def take(self) -> tuple[dict, int, float]:
        """(mean of each loss, steps, seconds) since the last call; starts a new window."""
        mean = {k: sum(r[k] for r in self.records) / len(self.records) for k in self.records[0]}
        taken = mean, len(self.records), time.perf_counter() - self.start
        self.records, self.start = [], time.perf_counter()
        return taken


def _log_window(run: _DenseRun, window: _LossWindow) -> None:
    mean, steps, seconds = window.take()  # every rank starts a new window; only rank 0 reports
    if not run.ctx.is_main:
        return
    record = {"iter": run.it, "epoch": run.epoch, "lr": run.optimizer.param_groups[0]["lr"],
              "images_per_s": steps * run.recipe.batch_size * run.ctx.world_size / seconds,
              **{f"train_{k}": v for k, v in mean.items()}}
    run.history.append(record)
    write_metrics(run.output, [record])
    log.info("iter %d/%d  loss %.4f  lr %.2e  %.1f img/s", run.it, run.total, mean["loss"], record["lr"],
             record["images_per_s"])


def _evaluate(run: _DenseRun, val_loader: DataLoader) -> bool:
    """Evaluate (sharded under torchrun), record and log; True for a new best."""
    sync_buffers(run.raw_model, run.ctx)
    metrics = run.task.evaluate(run.raw_model, val_loader, run.ctx, run.recipe)
    key = run.task.key_metric
    run.history.append({"iter": run.it, "epoch": run.epoch, **{f"val_{k}": v for k, v in metrics.items()}})
    is_best = metrics[key] > run.best[key]
    if is_best:
        run.best = {key: metrics[key], "iter": run.it, **metrics}
    if run.ctx.is_main:
        write_metrics(run.output, [run.history[-1]])
        log.info("iter %d  %s  (best %s %.2f @ %d)", run.it, "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                 if isinstance(v, float)), key, run.best[key], run.best["iter"])
    return is_best


def _save(run: _DenseRun, is_best: bool) -> None:
    """``checkpoint-last.pth``; for a new best then ``checkpoint-best.pth`` and the deployed model
    (in this order, whole: see :mod:`repvit.train.run_folder`)."""
    if run.ctx.is_main:
        state = {"format": f"repvit-{run.task.name}", "iter": run.it, "model_name": run.recipe.model,
                 "num_classes": len(run.class_names), "class_names": run.class_names, "recipe": run.recipe.to_dict(),
                 "state_dict": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "scaler": run.step.scaler_state(), "best": run.best, "history": run.history}
        with run.folder.writing(f"iteration {run.it} of {run.total}"):
            atomic_save(state, run.output / LAST)
            if is_best:
                atomic_save(state, run.output / BEST)
                _save_deployed(run, run.raw_model, state)


def _save_deployed(run: _DenseRun, model: nn.Module, state: dict) -> None:
    """``model`` (holding ``state``'s weights) reparameterized, as ``model-best-deployed.pth``."""
    deployed = reparameterize(model)
    atomic_save({**state, "state_dict": deployed.state_dict(), "deployed": True, "optimizer": None},
                run.output / DEPLOYED_BEST)


def _best_files(run: _DenseRun) -> list:
    """checkpoint-best.pth and the deployed best, each with the iteration it holds and its writer."""
    return best_files(run.output, run.raw_model, "iter",
                      deployed=(DEPLOYED_BEST, lambda model, state: _save_deployed(run, model, state)))
