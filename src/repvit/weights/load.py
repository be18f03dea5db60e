"""Loading weights into a model (strictly, with errors that say what the checkpoint is) and
saving them in this package's format.

A checkpoint that does not fit the model is an error naming the first mismatching tensor and the
variant the checkpoint looks like.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..models import RepViT, RepViTFeatures
from ..reparam import reparameterize
from .checkpoint import Checkpoint, read_checkpoint
from .convert import legacy_to_current
from .files import CheckpointError, atomic_write

__all__ = ["load_weights", "save_weights", "first_mismatch"]

log = logging.getLogger(__name__)


def _model_summary(model: nn.Module) -> str:
    traits = []
    if isinstance(model, RepViT):
        traits.append(f"num_classes={model.num_classes}")
        traits += ["distillation"] * model.distillation
    else:
        traits.append(f"features_only, out_indices={model.out_indices}")
    traits += ["reparameterized"] * model.deployed + ["legacy token mixer"] * model.spec.legacy
    return f"{model.name} ({', '.join(traits)})"


def _fill_batch_counters(expected: dict, state: dict) -> dict:
    """BatchNorm's ``num_batches_tracked`` is not needed for inference; many exports drop it."""
    missing = [k for k in expected if k.endswith("num_batches_tracked") and k not in state]
    return {**state, **{k: torch.zeros_like(expected[k]) for k in missing}} if missing else state


def first_mismatch(expected: dict, state: dict, what: str = "the checkpoint") -> str | None:
    """The first difference between two state dicts, in words (None when their keys and shapes agree);
    ``what`` names ``state``'s side."""
    for key, tensor in expected.items():
        if key not in state:
            return f"tensor {key!r} {tuple(tensor.shape)} is missing from {what}"
        if tuple(state[key].shape) != tuple(tensor.shape):
            return f"tensor {key!r} has shape {tuple(state[key].shape)} in {what}, the model expects {tuple(tensor.shape)}"
    extra = [k for k in state if k not in expected]
    if extra:
        return f"{what} has tensor {extra[0]!r} {tuple(state[extra[0]].shape)}, which the model does not"
    return None


def _stage_index(key: str) -> int:
    """The stage a backbone key belongs to (-1 for the stem and anything outside the stages)."""
    match = re.match(r"stages\.(\d+)\.", key)
    return int(match.group(1)) if match else -1


def _training_twin(model: nn.Module, checkpoint: Checkpoint) -> nn.Module:
    """An un-fused model of the same kind as the deployed ``model``, to load training weights into."""
    if isinstance(model, RepViTFeatures):
        return RepViTFeatures(model.spec, out_indices=model.out_indices, in_chans=model.in_chans, name=model.name)
    return RepViT(model.spec, num_classes=model.num_classes, distillation=checkpoint.distillation,
                  in_chans=model.in_chans, name=model.name)


def load_weights(model: nn.Module, source, *, sha256: str | None = None, ignore_head: bool = False) -> Checkpoint:
    """Load ``source`` into ``model`` (strictly: every tensor, or a clear error).

    ``source``: local path, ``https://`` URL, ``hf-hub:`` file, registered weight name or a :class:`Checkpoint`.
    Training checkpoints also load into reparameterized models (loaded unfused, then fused), a
    legacy (v1) token mixer converts exactly into the current form, and feature backbones ignore
    the classifier. ``ignore_head`` loads everything but the classifier (which keeps its current
    weights), for fine-tuning on other classes. Returns the :class:`Checkpoint` that was loaded.
    """
    if not isinstance(model, (RepViT, RepViTFeatures)):
        raise TypeError(f"load_weights expects a RepViT model from repvit.create_model, got {type(model).__name__}")
    checkpoint = read_checkpoint(source, sha256)
    state = checkpoint.state_dict
    if model.deployed and checkpoint.deployed is False:
        if ignore_head:
            raise CheckpointError("ignore_head applies to training-structure models; reparameterize after loading")
        twin = _training_twin(model, checkpoint)
        load_weights(twin, checkpoint)
        model.load_state_dict(reparameterize(twin).state_dict())
        return checkpoint
    if checkpoint.legacy and not model.spec.legacy and not model.deployed:
        state = legacy_to_current(state)
        log.info("%s: converted the legacy (v1) token mixer to the current form (exact in eval mode)", checkpoint.path)
    expected = model.state_dict()
    if isinstance(model, RepViTFeatures):  # a backbone takes what it needs from a classifier checkpoint
        state = {k: v for k, v in state.items() if not k.startswith("head.") and _stage_index(k) < len(model.stages)}
    if ignore_head:
        expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    state = _fill_batch_counters(expected, state)

    problem = first_mismatch(expected, state)
    if problem:
        hints = []
        if checkpoint.deployed is None:
            hints.append("its keys are not a RepViT layout this package knows (official, timm or repvit)")
        elif checkpoint.deployed and not model.deployed:
            hints.append("the checkpoint is reparameterized (deployed) and loads only into a deployed model; to "
                         "train or fine-tune, start from a training checkpoint such as checkpoint-best.pth")
        elif isinstance(model, RepViT) and checkpoint.distillation != model.distillation and not model.deployed:
            hints.append(f"build the model with distillation={checkpoint.distillation}")
        if isinstance(model, RepViT) and checkpoint.num_classes != model.num_classes:
            hints.append(f"the checkpoint has {checkpoint.num_classes} classes" if checkpoint.num_classes else
                         "the checkpoint has no classifier: use num_classes=0 or features_only=True")
        hint = f" Hint: {'; '.join(hints)}." if hints else ""
        raise CheckpointError(
            f"{checkpoint.path}: does not fit {_model_summary(model)}: {problem}. "
            f"The checkpoint looks like {checkpoint.describe()}.{hint}"
        )
    missing, _ = model.load_state_dict(state, strict=not ignore_head)
    assert all(k.startswith("head.") for k in missing)  # everything else was checked above
    return checkpoint


def save_weights(model: nn.Module, path, *, class_names: list[str] | None = None, metadata: dict | None = None,
                 state_dict: dict | None = None) -> Path:
    """Save ``model``'s weights in this package's format, atomically (temp file + rename).

    ``.safetensors`` (preferred) stores the tensors plus string metadata (model name, classes,
    whether it is reparameterized); ``.pt``/``.pth`` store ``{"model": state_dict, "repvit_metadata": ...}``.
    ``state_dict`` replaces ``model.state_dict()`` (the same tensors in another key layout, e.g. timm's).
    """
    path = Path(path)
    info = {
        "format": "repvit",
        "model": getattr(model, "name", type(model).__name__),
        "num_classes": str(getattr(model, "num_classes", "")),
        "deployed": str(bool(getattr(model, "deployed", False))),
    }
    if class_names is not None:
        if len(class_names) != getattr(model, "num_classes", len(class_names)):
            raise ValueError(f"class_names has {len(class_names)} names, the model has {model.num_classes} classes")
        info["class_names"] = json.dumps(list(class_names))
    info.update({k: str(v) for k, v in (metadata or {}).items()})
    # Contiguous clones: safetensors refuses shared or strided storage.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in (state_dict or model.state_dict()).items()}
    if path.suffix == ".safetensors":
        return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=info))
    return atomic_write(path, lambda tmp: torch.save({"model": state, "repvit_metadata": info}, tmp))
