"""One optimizer update, the same in both training loops: autocast dtype, scaled backward (fp16),
gradient clipping, optimizer step, and the check that the loss is still a number."""

from __future__ import annotations

import math

import torch
from timm.utils import dispatch_clip_grad
from torch import nn

from ..utils import UserError, param

__all__ = ["amp_dtype", "autocast", "OptimizerStep", "finite_loss", "LossNotFinite", "freeze_batchnorm"]

_AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (``auto``: fp16 on CUDA, none on CPU), or None."""
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "off"
    return _AMP[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class OptimizerStep:
    """Backward, clipping and the optimizer step of one update.

    Under fp16 a GradScaler scales the loss and unscales the gradients before clipping. ``clip``
    (a value, or None for no clipping) applies to ``clip_params`` with timm's ``dispatch_clip_grad``
    (``agc``, ``norm`` or ``value``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, dtype: torch.dtype | None, device: torch.device,
                 clip: float | None = None, clip_params=(), clip_mode: str = "norm"):
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.clip, self.clip_params, self.clip_mode = clip, list(clip_params), clip_mode

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip is not None:
            dispatch_clip_grad(self.clip_params, self.clip, mode=self.clip_mode)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def scaler_state(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_scaler_state(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class LossNotFinite(UserError, FloatingPointError):
    """The loss became inf or nan: training cannot continue from here."""


def finite_loss(loss: torch.Tensor, where: str) -> float:
    """The loss as a float; :class:`LossNotFinite` (a FloatingPointError) saying where when it is not finite."""
    value = loss.item()
    if not math.isfinite(value):
        raise LossNotFinite(f"loss is {value} at {where}: lower the learning rate ({param('lr')}), or try "
                            f"{param('amp')} off")
    return value


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers normalise with their running statistics and leave them unchanged (eval
    mode); their affine parameters still train."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
