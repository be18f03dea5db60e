"""Training: the typed recipe, processes and devices, the shared optimizer step and run folder, the
classification loop, distillation and quantization-aware fine-tuning.

:mod:`.process` (torchrun, collectives, seeding), :mod:`.step` (autocast, scaled backward,
clipping, optimizer step), :mod:`.checkpoint` (run checkpoints, ``metrics.jsonl``) and
:mod:`.run_folder` (the locked, consistent run folder; resume in place; interrupts) serve both
loops: the epoch-based classification loop here (:mod:`.classification`) and the iteration-based
dense loop (:mod:`repvit.dense.loop`).
"""

from .checkpoint import locate_run, read_run_checkpoint, resume_path
from .classification import TrainResult, train, train_one_epoch
from .distill import DistillationLoss, build_teacher
from .evaluate import build_eval_loader, evaluate, evaluate_pair
from .process import ProcessContext, setup_process
from .qat import QATModel, convert_qat, prepare_qat
from .recipe import PER_RUN_KEYS, Recipe, RecipeError, TrainRecipe, load_recipe, option, recipe_names
from .run_folder import RunFolderError
from .step import OptimizerStep

__all__ = ["train", "train_one_epoch", "TrainResult", "TrainRecipe", "Recipe", "RecipeError", "load_recipe",
           "recipe_names", "option", "PER_RUN_KEYS", "evaluate", "evaluate_pair", "build_eval_loader",
           "ProcessContext", "setup_process", "OptimizerStep", "DistillationLoss", "build_teacher", "QATModel",
           "prepare_qat", "convert_qat", "read_run_checkpoint", "resume_path", "locate_run", "RunFolderError"]
