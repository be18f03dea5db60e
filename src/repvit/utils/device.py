"""Device resolution: one rule for every command (``auto`` means CUDA when there is one)."""

from __future__ import annotations

import torch

from .errors import UserError, param

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"{param('device')} {device!r}: expected cpu, cuda or cuda:N (or auto)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{param('device')} {device}: CUDA is not available on this machine; use {param('device')} cpu")
    return resolved
