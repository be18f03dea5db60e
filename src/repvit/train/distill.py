"""DeiT-style knowledge distillation, as RepViT is trained: a frozen teacher supervises the
student's distillation head.

* ``hard``: ``(1 - alpha) * base(cls, targets) + alpha * CE(dist, argmax teacher)`` (the paper's
  setting, alpha 0.5, with a RegNetY-16GF teacher);
* ``soft``: the second term is ``tau^2 * KL(softmax(teacher / tau) || softmax(dist / tau))``;
* ``none``: the base criterion only.

The teacher sees the same (augmented, mixed) images as the student, runs under ``no_grad`` in eval
mode and is never wrapped in DistributedDataParallel.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..factory import create_model
from ..models import list_models
from ..utils import UserError, param
from ..weights import first_mismatch, read_state_dict

__all__ = ["DistillationLoss", "build_teacher"]


class DistillationLoss(nn.Module):
    def __init__(self, base_criterion: nn.Module, teacher: nn.Module | None, mode: str = "hard",
                 alpha: float = 0.5, tau: float = 1.0):
        super().__init__()
        if mode not in ("none", "soft", "hard"):
            raise ValueError(f"distillation must be none, soft or hard, got {mode!r}")
        if mode != "none" and teacher is None:
            raise ValueError(f"{mode} distillation needs a teacher")
        self.base, self.teacher, self.mode, self.alpha, self.tau = base_criterion, teacher, mode, alpha, tau

    def forward(self, inputs: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        """``outputs`` is the student's ``(cls, dist)`` pair, or plain logits when mode is none."""
        if self.mode == "none":
            if isinstance(outputs, tuple):
                raise ValueError("the student returned two heads but distillation is none")
            return self.base(outputs, targets)
        if not isinstance(outputs, tuple):
            raise ValueError("distillation needs the student's (cls, dist) outputs: build it with "
                             "distillation=True and call set_distilled_training(True)")
        cls, dist = outputs
        with torch.no_grad():
            teacher_logits = self.teacher(inputs).float()
        if teacher_logits.shape[-1] != dist.shape[-1]:
            raise ValueError(f"the teacher predicts {teacher_logits.shape[-1]} classes, the student {dist.shape[-1]}")
        if self.mode == "hard":
            distill = F.cross_entropy(dist.float(), teacher_logits.argmax(dim=-1))
        else:
            t = self.tau
            distill = F.kl_div(F.log_softmax(dist.float() / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                               reduction="batchmean", log_target=True) * (t * t)
        return (1 - self.alpha) * self.base(cls, targets) + self.alpha * distill


def build_teacher(name: str, weights, num_classes: int, device) -> nn.Module:
    """A frozen, eval-mode teacher: a repvit model, or any timm model with a checkpoint."""
    if weights is None:
        raise UserError(f"distillation needs teacher weights: pass {param('teacher_weights')} (an untrained teacher "
                        f"teaches nothing), or {param('distillation')} none")
    if name in list_models():
        teacher = create_model(name, weights=weights, deploy=True)
    else:
        if name not in timm.list_models():
            raise UserError(f"{param('teacher')} {name!r}: not a repvit or timm model")
        state = read_state_dict(weights)
        # the checkpoint decides the class count (a mismatch with the data is reported below)
        classifier = timm.create_model(name, pretrained=False, num_classes=0).pretrained_cfg.get("classifier", "")
        key = f"{classifier[0] if isinstance(classifier, (list, tuple)) else classifier}.weight"
        classes = int(state[key].shape[0]) if key in state else num_classes
        teacher = timm.create_model(name, pretrained=False, num_classes=classes)
        problem = first_mismatch(teacher.state_dict(), state)
        if problem:
            raise UserError(f"{param('teacher_weights')} {weights}: does not fit timm's {name}: {problem}")
        teacher.load_state_dict(state)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    out_classes = getattr(teacher, "num_classes", None)
    if out_classes is not None and out_classes != num_classes:
        raise UserError(f"the teacher {name} predicts {out_classes} classes but the data has {num_classes}: use a "
                        f"teacher trained on these classes, or {param('distillation')} none")
    return teacher
