"""Training recipes: one typed, documented source of defaults (the paper's ImageNet recipe).

Precedence: these defaults < a YAML file (``--config path.yaml`` or a packaged recipe name such as
``digits``) < command-line options. The resolved recipe is saved next to the checkpoints.

Every default is the official training setup (THU-MIG/RepViT main.py, paper section 3.1/4.1; see
the fact sheet's "Training recipe"). One deliberate difference: the learning-rate schedule is
stepped as in timm's train.py (epoch ``e`` trains at ``f(e)``), whereas the official script steps
after each epoch so that epoch ``e`` trains at ``f(e-1)`` (a one-epoch lag, visible in its logs).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from ..utils import UserError, first_line, param
from ..weights import atomic_write

__all__ = ["Recipe", "TrainRecipe", "load_recipe", "recipe_names", "RecipeError", "DEIT_REGNETY160_URL", "option",
           "PER_RUN_KEYS", "RESUME_HELP", "OVERWRITE_HELP"]

#: RegNetY-16GF teacher weights used by DeiT and RepViT (82.9% top-1).
DEIT_REGNETY160_URL = "https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth"


class RecipeError(UserError):
    """An unknown key, a value of the wrong type or out of range."""


def option(default, help: str, group: str, choices: tuple | None = None, check: str | None = None):
    """A recipe field: its default, its help text and option group, and an optional check:
    ``">0"``, ``">=0"`` or ``"0..1"``."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "check": check})


_opt = option
_CHECKS = {
    ">0": (lambda v: v > 0, "must be > 0"),
    ">=0": (lambda v: v >= 0, "must be >= 0"),
    "0..1": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
}


#: The run-folder options every training command shares (see :mod:`repvit.train.run_folder`).
RESUME_HELP = ("continue a run in its folder: a checkpoint path (or run folder), or 'auto' (OUTPUT/checkpoint-last.pth "
               "when there is one)")
OVERWRITE_HELP = ("replace the run OUTPUT holds (its checkpoints, metrics and logs are deleted first); without it a "
                  "new run refuses a folder that holds one")


@dataclass
class Recipe:
    """Shared machinery of the typed recipes: checking, loading YAML, saving."""

    def validate(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            setattr(self, f.name, value)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise RecipeError(f"{param(f.name)}: expected one of {', '.join(choices)}, got {value!r}")
            check = f.metadata.get("check")
            if check and value is not None and not _CHECKS[check][0](value):
                raise RecipeError(f"{param(f.name)} {_CHECKS[check][1]}, got {value}")
        self._check()
        return self

    def _check(self) -> None:
        """Rules across fields (subclasses)."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def save(self, path) -> Path:
        """The recipe as YAML, without the keys of one invocation (resume, overwrite, ...): loading it
        with ``--config`` starts the same run, never one that deletes or resumes another."""
        values = {k: v for k, v in self.to_dict().items() if k not in PER_RUN_KEYS}
        text = yaml.safe_dump(values, sort_keys=False)
        return atomic_write(path, lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, config=None, **overrides):
        """Defaults, updated by a YAML file or packaged recipe, then by ``overrides``; validated."""
        values = _read_yaml(config) if config else {}
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RecipeError(f"unknown recipe key {key!r}{hint}")
        return cls(**values).validate()


@dataclass
class TrainRecipe(Recipe):
    # ---- model
    model: str = _opt("repvit_m0_9", "model name (repvit models)", "model")
    num_classes: int | None = _opt(None, "classifier outputs; default: the number of class folders", "model")
    finetune: str | None = _opt(None, "initialise from a checkpoint (path, URL, registered name or "
                                      "hf-hub:ORG/REPO[:FILE]); the classifier is dropped when its classes differ",
                                "model")
    drop_rate: float = _opt(0.0, "dropout before the classifier", "model", check=">=0")
    qat: bool = _opt(False, "quantization-aware fine-tuning of the deployed model (int8, XNNPACK) from "
                            "finetune weights of these classes; writes model-best-int8.pte", "model")
    # ---- data
    data: str | None = _opt(None, "ImageFolder root with train/ and val/ (one folder per class)", "data")
    img_size: int = _opt(224, "training and evaluation resolution", "data", check=">0")
    batch_size: int = _opt(256, "images per process per step", "data", check=">0")
    workers: int = _opt(8, "data-loading worker processes per training process", "data", check=">=0")
    crop_pct: float = _opt(0.875, "evaluation: resize to img_size / crop_pct, then center-crop", "data")
    interpolation: str = _opt("bicubic", "resize interpolation", "data", ("bicubic", "bilinear"))
    # ---- schedule
    epochs: int = _opt(300, "training epochs (the paper also trains 450)", "schedule", check=">0")
    base_lr: float = _opt(1e-3, "learning rate per 512 images of global batch (lr = base_lr * batch / 512)", "schedule", check=">0")
    lr: float | None = _opt(None, "absolute learning rate; overrides base_lr scaling", "schedule")
    warmup_epochs: int = _opt(5, "linear warm-up epochs", "schedule", check=">=0")
    warmup_lr: float = _opt(1e-6, "learning rate at the start of warm-up", "schedule", check=">=0")
    min_lr: float = _opt(1e-5, "final learning rate of the cosine schedule", "schedule", check=">=0")
    sched_on_updates: bool = _opt(False, "step the schedule every update instead of every epoch", "schedule")
    # ---- optimizer
    opt: str = _opt("adamw", "timm optimizer name", "optimizer")
    weight_decay: float = _opt(0.025, "weight decay (not applied to biases and norm weights)", "optimizer", check=">=0")
    opt_eps: float = _opt(1e-8, "optimizer epsilon", "optimizer")
    clip_grad: float | None = _opt(0.02, "gradient clipping value (none: off)", "optimizer")
    clip_mode: str = _opt("agc", "clipping: agc (adaptive, excludes the classifier), norm or value",
                          "optimizer", ("agc", "norm", "value"))
    # ---- augmentation and regularisation
    auto_augment: str | None = _opt("rand-m9-mstd0.5-inc1", "timm auto-augment policy (none: off)", "augmentation")
    color_jitter: float = _opt(0.4, "colour jitter (timm ignores it when auto_augment is set)", "augmentation")
    hflip: float = _opt(0.5, "horizontal flip probability", "augmentation", check="0..1")
    scale: tuple[float, float] = _opt((0.08, 1.0), "RandomResizedCrop area range", "augmentation")
    ratio: tuple[float, float] = _opt((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range", "augmentation")
    reprob: float = _opt(0.25, "random-erasing probability", "augmentation", check="0..1")
    remode: str = _opt("pixel", "random-erasing fill", "augmentation", ("pixel", "rand", "const"))
    recount: int = _opt(1, "random-erasing count", "augmentation", check=">0")
    mixup: float = _opt(0.8, "mixup alpha (0: off)", "augmentation", check=">=0")
    cutmix: float = _opt(1.0, "cutmix alpha (0: off)", "augmentation", check=">=0")
    mixup_prob: float = _opt(1.0, "probability of mixup or cutmix per batch", "augmentation", check="0..1")
    mixup_switch_prob: float = _opt(0.5, "probability of cutmix instead of mixup", "augmentation", check="0..1")
    mixup_mode: str = _opt("batch", "mixup granularity", "augmentation", ("batch", "pair", "elem"))
    smoothing: float = _opt(0.1, "label smoothing", "augmentation", check="0..1")
    repeated_aug: bool = _opt(True, "repeated augmentation sampler (3 repeats, as DeiT)", "augmentation")
    # ---- EMA
    model_ema: bool = _opt(True, "keep an exponential moving average of the weights", "ema")
    model_ema_decay: float = _opt(0.99996, "EMA decay", "ema", check="0..1")
    ema_eval: bool = _opt(False, "also evaluate the EMA weights each epoch (the paper reports the raw model)", "ema")
    # ---- distillation
    distillation: str = _opt("hard", "none, soft or hard (DeiT-style, with a distillation head)", "distillation",
                             ("none", "soft", "hard"))
    teacher: str = _opt("regnety_160", "teacher: a timm or repvit model name", "distillation")
    teacher_weights: str | None = _opt(DEIT_REGNETY160_URL, "teacher checkpoint (path, URL, registered name or "
                                       "hf-hub:ORG/REPO[:FILE])", "distillation")
    distillation_alpha: float = _opt(0.5, "weight of the distillation term", "distillation", check="0..1")
    distillation_tau: float = _opt(1.0, "soft distillation temperature", "distillation")
    # ---- runtime
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N", "runtime")
    amp: str = _opt("auto", "mixed precision: auto (fp16 on CUDA, off on CPU), bf16, fp16 or off", "runtime",
                    ("auto", "bf16", "fp16", "off"))
    channels_last: bool = _opt(False, "channels-last memory format", "runtime")
    compile: bool = _opt(False, "torch.compile the model", "runtime")
    sync_bn: bool = _opt(False, "synchronised BatchNorm across processes (CUDA only)", "runtime")
    freeze_bn: bool = _opt(False, "BatchNorm uses and keeps its running statistics while training (for small "
                                  "per-process batches when fine-tuning)", "runtime")
    seed: int = _opt(0, "random seed (each process adds its rank for augmentation)", "runtime")
    # ---- output
    output: str = _opt("runs/train", "folder for checkpoints, recipe.yaml and metrics.jsonl", "output")
    resume: str | None = _opt(None, RESUME_HELP, "output")
    overwrite: bool = _opt(False, OVERWRITE_HELP, "output")
    stop_after_epochs: int | None = _opt(None, "stop this process after N epochs (resume later with --resume)", "output")
    eval_every: int = _opt(1, "evaluate every N epochs (and always after the last)", "output", check=">0")

    # ------------------------------------------------------------------------------------------
    def _check(self) -> None:
        if not 0 < self.crop_pct <= 1:
            raise RecipeError(f"{param('crop_pct')} must be in (0, 1], got {self.crop_pct}")
        if self.img_size < 32:
            raise RecipeError(f"{param('img_size')} must be >= 32 (the network's total stride), got {self.img_size}")
        if self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise RecipeError(f"{param('warmup_epochs')} ({self.warmup_epochs}) must be smaller than {param('epochs')} "
                              f"({self.epochs})")
        if self.batch_size < 2:
            raise RecipeError(f"{param('batch_size')} must be >= 2 (BatchNorm needs two samples per batch)")
        if self.mixup_active and self.batch_size % 2:
            raise RecipeError(f"{param('batch_size')} must be even with mixup/cutmix (it pairs images), "
                              f"got {self.batch_size}")
        if self.distillation_tau <= 0:
            raise RecipeError(f"{param('distillation_tau')} must be > 0, got {self.distillation_tau}")
        if self.num_classes is not None and self.num_classes < 1:
            raise RecipeError(f"{param('num_classes')} must be >= 1, got {self.num_classes}")

    @property
    def distilled(self) -> bool:
        """Whether the student trains a distillation head against a teacher."""
        return self.distillation != "none"

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


def _coerce(name: str, value, hint):
    """Check (and gently convert: int -> float, list -> tuple, "none" -> None) one value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = type(None) in args
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise RecipeError(f"{param(name)} cannot be empty")
    if optional:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            items = tuple(value) if isinstance(value, (list, tuple)) else tuple(str(value).replace(",", " ").split())
            if len(items) != len(args):
                raise ValueError
            return tuple(float(v) for v in items)
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, bool):  # YAML turns bare on/off/yes/no into booleans
            raise RecipeError(f"{name}: expected text, got {value!r} (in YAML, quote it: {name}: \"off\")")
        return str(value)
    except RecipeError:
        raise
    except (TypeError, ValueError):
        kind = getattr(hint, "__name__", str(hint))
        raise RecipeError(f"{param(name)}: expected {kind}, got {value!r}") from None


def recipe_names() -> list[str]:
    """The recipes shipped with the package (``--config NAME``)."""
    folder = resources.files("repvit").joinpath("recipes")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(config) -> dict:
    path = Path(str(config))
    if path.is_file():
        text = path.read_text()
    elif str(config) in recipe_names():
        text = resources.files("repvit").joinpath(f"recipes/{config}.yaml").read_text()
    else:
        raise RecipeError(f"{param('config')} {config}: no such file or packaged recipe "
                          f"(packaged: {', '.join(recipe_names())})")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{param('config')} {config}: not valid YAML ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{param('config')} {config}: expected a mapping of recipe keys, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


#: Keys that describe one invocation, not the recipe: a resumed run does not inherit them.
PER_RUN_KEYS = ("resume", "overwrite", "stop_after_epochs", "stop_after_iters")


def load_recipe(config=None, **overrides) -> TrainRecipe:
    """The classification training recipe: defaults < ``config`` (YAML path or packaged name) < overrides."""
    return TrainRecipe.load(config, **overrides)
