"""The classification training loop: ``repvit train``, ``repvit quickstart`` and torchrun.

Reads top to bottom: :func:`train` -> setup (data; model from scratch, fine-tuned or resumed;
optimisation; wrappers; the run folder) -> per epoch :func:`train_one_epoch`, evaluation,
checkpoint, log. timm provides the augmentation, mixup, losses, optimizer, scheduler, EMA and
gradient clipping; the update itself is :class:`~repvit.train.step.OptimizerStep` (shared with the
dense loop) and distillation is :mod:`repvit.train.distill`.

The run folder (:mod:`.run_folder`) is locked while the run writes it, refused to a new run when it
holds one (unless ``overwrite``), and written so that a run killed at any instant resumes into a
consistent folder (``resume=PATH`` continues in PATH's folder).

Exact resume: every epoch re-seeds all random generators from (seed, epoch, rank) and the sampler
from (seed, epoch), so an interrupted and resumed run replays the same batches and augmentations
as an uninterrupted one (the RNG states are also stored in the checkpoint, for inspection).

``qat`` trains the fake-quantized, deployed graph of :mod:`repvit.train.qat` instead of the
training structure (no distillation, EMA, AMP or compile: a short int8 fine-tune), and converts
the best checkpoint to an int8 ExecuTorch program at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data import SkippingImageFolder, check_image_folder, collate_skipping, train_transform
from ..factory import create_model
from ..utils import UserError, first_line, param
from ..weights import load_weights, read_checkpoint
from .checkpoint import BEST, LAST, read_run_checkpoint, write_metrics
from .distill import DistillationLoss, build_teacher
from .epoch import (
    DEPLOYED_BEST,
    ClassificationRun,
    deployed_epoch,
    evaluate_epoch,
    log_epoch,
    save_best,
    save_deployed,
    save_last,
    tensorboard,
    train_one_epoch,
)
from .evaluate import build_eval_loader
from .process import ProcessContext, end_process, seed_worker, setup_process, wrap_ddp
from .qat import QAT_NEEDS_FINETUNE, QAT_OFF, export_qat_best, qat_model
from .recipe import PER_RUN_KEYS, TrainRecipe
from .run_folder import RunFolder, best_files, open_run_folder, prepare_run, repair_best_files
from .step import OptimizerStep, amp_dtype

__all__ = ["train", "TrainResult", "PRODUCTS"]

log = logging.getLogger(__name__)

#: What a classification run writes besides its checkpoints, metrics.jsonl and recipe.yaml.
PRODUCTS = (DEPLOYED_BEST, "model-best-int8.pte", "int8.json", "tensorboard")


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


def train(recipe: TrainRecipe) -> TrainResult:
    """Train (or fine-tune, or resume) as ``recipe`` says; see the module docstring."""
    recipe, qat_changes = _checked(recipe)
    recipe, resume = prepare_run(recipe, ("data", "finetune", "teacher_weights"))
    ctx = setup_process(recipe.device)
    try:
        with open_run_folder(recipe, resume, "repvit train", PRODUCTS, ctx) as run_folder:
            run = _setup(recipe, ctx, qat_changes, resume, run_folder)
            return _train_epochs(run)
    finally:
        end_process(ctx)


def _checked(recipe: TrainRecipe) -> tuple[TrainRecipe, dict]:
    """The validated recipe, and what ``qat`` turned off in it."""
    recipe = recipe.validate()
    if recipe.data is None:
        raise UserError(f"{param('data')} is required: an ImageFolder root with train/ and val/ (or run repvit quickstart)")
    if not recipe.qat:
        return recipe, {}
    if not recipe.finetune and not recipe.resume:
        raise UserError(QAT_NEEDS_FINETUNE)
    changes = {k: v for k, v in QAT_OFF.items() if getattr(recipe, k) != v}
    return replace(recipe, **changes), changes


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------


def _setup(recipe: TrainRecipe, ctx: ProcessContext, qat_changes: dict, resume: Path | None,
           folder: RunFolder) -> ClassificationRun:
    root = Path(recipe.data)
    class_names = check_image_folder(root)
    if (recipe.num_classes or len(class_names)) != len(class_names):
        raise UserError(f"{param('num_classes')} {recipe.num_classes} does not match the {len(class_names)} class "
                        f"folders in {root}")
    train_loader, sampler = _train_loader(recipe, root, ctx)
    val_loader = build_eval_loader(root / "val", recipe.img_size, recipe.crop_pct, recipe.batch_size,
                                   recipe.workers, ctx)
    raw_model = _model(recipe, ctx, class_names, resume)
    if recipe.qat and ctx.is_main and qat_changes:
        log.info("qat turns off: %s", ", ".join(f"{k} -> {v!r}" for k, v in qat_changes.items()))
    lr = recipe.lr if recipe.lr is not None else recipe.base_lr * recipe.batch_size * ctx.world_size / 512
    optimizer = create_optimizer_v2(raw_model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay,
                                    eps=recipe.opt_eps)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
        warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr, step_on_epochs=not recipe.sched_on_updates,
        updates_per_epoch=len(train_loader),
    )
    dtype = amp_dtype(recipe.amp, ctx.device)
    clip_params = [p for n, p in raw_model.named_parameters()  # AGC skips the classifier
                   if not (recipe.clip_mode == "agc" and n.startswith(("head.", "graph.head")))]
    teacher = build_teacher(recipe.teacher, recipe.teacher_weights, len(class_names), ctx.device) \
        if recipe.distilled else None
    run = ClassificationRun(
        recipe, ctx, class_names, train_loader, sampler, val_loader, raw_model, optimizer, scheduler,
        step=OptimizerStep(optimizer, dtype, ctx.device, recipe.clip_grad, clip_params, recipe.clip_mode),
        amp_dtype=dtype, criterion=_criterion(recipe, teacher), mixup=_mixup(recipe, len(class_names)),
        ema=ModelEmaV3(raw_model, decay=recipe.model_ema_decay) if recipe.model_ema else None, folder=folder)
    if resume is not None:
        _resume(run, resume)
    run.model = _wrapped(run)
    _start_output(run, root, lr)
    return run


def _train_loader(recipe: TrainRecipe, root: Path, ctx: ProcessContext):
    dataset = SkippingImageFolder(str(root / "train"), transform=train_transform(recipe))
    if recipe.repeated_aug:
        sampler = RepeatAugSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True)
    else:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=recipe.seed, drop_last=True)
    if len(sampler) < recipe.batch_size:
        raise UserError(f"{root / 'train'}: {len(sampler)} images per process is fewer than one batch of "
                        f"{recipe.batch_size}; lower {param('batch_size')}")
    loader = DataLoader(dataset, batch_size=recipe.batch_size, sampler=sampler, num_workers=recipe.workers,
                        collate_fn=collate_skipping, pin_memory=ctx.device.type == "cuda", drop_last=True,
                        worker_init_fn=seed_worker)
    return loader, sampler


def _model(recipe: TrainRecipe, ctx: ProcessContext, class_names: list[str], resume: Path | None) -> nn.Module:
    """From scratch, fine-tuned from a checkpoint, or the shape a resumed checkpoint loads into."""
    num_classes, distill = len(class_names), recipe.distilled
    torch.manual_seed(recipe.seed)  # identical initial weights on every process
    if recipe.qat:
        model = qat_model(recipe, num_classes, class_names, resume)
    else:
        model = create_model(recipe.model, num_classes=num_classes, distillation=distill, drop_rate=recipe.drop_rate)
    if recipe.finetune and resume is None and not recipe.qat:
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
    return model


def _criterion(recipe: TrainRecipe, teacher: nn.Module | None) -> nn.Module:
    if recipe.mixup_active:
        base = SoftTargetCrossEntropy()  # label smoothing is folded into the mixed targets
    elif recipe.smoothing > 0:
        base = LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return DistillationLoss(base, teacher, recipe.distillation, recipe.distillation_alpha, recipe.distillation_tau)


def _mixup(recipe: TrainRecipe, num_classes: int) -> Mixup | None:
    if not recipe.mixup_active:
        return None
    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                 switch_prob=recipe.mixup_switch_prob, mode=recipe.mixup_mode, label_smoothing=recipe.smoothing,
                 num_classes=num_classes)


def _resume(run: ClassificationRun, path: Path) -> None:
    """Weights, optimizer, EMA, scaler and history from ``path``. The scheduler is not restored: it is
    a pure function of the step, rebuilt from this recipe, so a resumed run may extend its epochs."""
    recipe = run.recipe
    state = read_run_checkpoint(path, "train", argument="resume")
    this_run = {"model": recipe.model, "num_classes": len(run.class_names), "distillation": recipe.distilled,
                "qat": recipe.qat}
    for key, value in this_run.items():
        if state.get(key, False) != value:
            raise UserError(f"{param('resume')} {path}: the checkpoint has {key}={state.get(key, False)!r}, "
                            f"this run {value!r}")
    run.raw_model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    for group in run.optimizer.param_groups:  # the recipe's weight decay, not the checkpoint's
        if group["weight_decay"] > 0:
            group["weight_decay"] = recipe.weight_decay
    if run.ema is not None:
        if state.get("ema") is not None:
            run.ema.module.load_state_dict(state["ema"])
        else:
            run.ema.set(run.raw_model)  # EMA newly enabled: start it from the resumed weights
    run.step.load_scaler_state(state.get("scaler"))
    run.start_epoch, run.best, run.history = state["epoch"] + 1, state["best"], list(state["history"])
    run.folder.saved = f"epoch {run.start_epoch} of {recipe.epochs}"
    if run.ctx.is_main:
        changed = {k: (state["recipe"].get(k), v) for k, v in recipe.to_dict().items()
                   if k not in PER_RUN_KEYS and state["recipe"].get(k) != v}
        best = f"best top-1 {run.best['top1']:.2f} at epoch {run.best['epoch']}" if run.best["epoch"] > 0 else \
            "not evaluated yet"
        log.info("resumed %s: %d of %d epochs done (%s)%s", path, run.start_epoch, recipe.epochs, best,
                 "; changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()) if changed else "")
        repair_best_files(run.output, _best_files(run), run.best["epoch"], state, state["epoch"] + 1, "epoch")


def _best_files(run: ClassificationRun) -> list:
    """checkpoint-best.pth and the deployed best (none for QAT), each with the epoch it holds and its writer."""
    deployed = None if run.recipe.qat else (DEPLOYED_BEST, lambda model, state: save_deployed(run, model, state))
    return best_files(run.output, run.raw_model, "epoch", 1, deployed, deployed_epoch)


def _wrapped(run: ClassificationRun) -> nn.Module:
    """SyncBatchNorm, DDP and torch.compile around the raw model, as the recipe asks."""
    recipe, ctx, model = run.recipe, run.ctx, run.raw_model
    if recipe.sync_bn and ctx.distributed:
        if ctx.device.type != "cuda":
            raise UserError(f"{param('sync_bn')} needs CUDA (PyTorch's SyncBatchNorm does not run on CPU)")
        model = run.raw_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = wrap_ddp(model, ctx)
    if recipe.compile:  # after DDP, so gradient communication can overlap the backward pass
        model = torch.compile(model)
    if recipe.repeated_aug and not ctx.distributed and ctx.is_main:
        log.warning("repeated augmentation with one process puts 3 augmentations of each image in the same "
                    "batch (as the official code does); on one GPU or CPU consider --no-repeated-aug")
    return model


def _start_output(run: ClassificationRun, root: Path, lr: float) -> None:
    """The run folder: the resolved recipe, and a log holding exactly the epochs of the checkpoint we start from."""
    recipe, ctx = run.recipe, run.ctx
    if not ctx.is_main:
        return
    recipe.save(run.output / "recipe.yaml")
    write_metrics(run.output, run.history, append=False)
    log.info("training %s on %s: %d classes, %d train images, %d val images, %d process(es) x batch %d, "
             "lr %.2e, %s", recipe.model, root, len(run.class_names), len(run.train_loader.dataset),
             len(run.val_loader.dataset), ctx.world_size, recipe.batch_size, lr,
             f"{ctx.device}" + (f", amp {run.amp_dtype}" if run.amp_dtype else ""))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _train_epochs(run: ClassificationRun) -> TrainResult:
    recipe, ctx, output = run.recipe, run.ctx, run.output
    writer = tensorboard(output) if ctx.is_main else None
    epochs_run, epoch = 0, run.start_epoch - 1
    for epoch in range(run.start_epoch, recipe.epochs):
        record, unreadable_examples = train_one_epoch(run, epoch)
        is_best = evaluate_epoch(run, epoch, record)
        run.history.append(record)
        if ctx.is_main:
            # in this order (resume repairs a kill between them), and whole: Ctrl-C waits for the end
            with run.folder.writing(f"epoch {epoch + 1} of {recipe.epochs}"):
                state = save_last(run, epoch)
                log_epoch(run, record, writer, unreadable_examples)  # after the checkpoint it describes
                if is_best:
                    save_best(run, state)
        epochs_run += 1
        if recipe.stop_after_epochs and epochs_run >= recipe.stop_after_epochs and epoch + 1 < recipe.epochs:
            if ctx.is_main:
                log.info("stopped after %d epoch(s) as asked; continue with `%s`", epochs_run,
                         run.folder.resume_command())
            break
    if writer is not None:
        writer.close()
    deployed_best = output / DEPLOYED_BEST
    if recipe.qat:  # written only when the schedule completes (not after stop_after_epochs)
        deployed_best = output / "model-best-int8.pte"
        if ctx.is_main and (output / BEST).is_file() and epoch + 1 == recipe.epochs:
            _export_int8_best(run)
    if ctx.distributed:
        dist.barrier()
    return TrainResult(output, run.best["top1"], run.best["epoch"], epoch + 1, run.history, run.class_names,
                       output / LAST, output / BEST, deployed_best)


def _export_int8_best(run: ClassificationRun) -> None:
    """After the last QAT epoch only: converting and lowering takes ~1 min for M0.9."""
    try:
        export_qat_best(run.recipe, len(run.class_names), run.output / BEST, run.output)
    except Exception as err:  # the trained checkpoints are safe; say what failed, in one line
        log.error("could not convert %s to an int8 ExecuTorch program: %s", run.output / BEST,
                  first_line(err, with_type=True))


