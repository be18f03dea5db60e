"""Structural reparameterization: training structure -> deployed (inference) structure."""

from __future__ import annotations

import copy

from torch import nn

from .layers import Fusable

__all__ = ["reparameterize"]


def reparameterize(model: nn.Module) -> nn.Module:
    """Return a NEW deployed copy of ``model``, in eval mode; ``model`` itself is not modified.

    Every :class:`~repvit.layers.Fusable` submodule (Conv+BN, the multi-branch depthwise token
    mixer, BN+Linear heads, the two-headed classifier) is replaced by its fused plain module. The
    copy computes the same function as ``model.eval()``. Applying it to a deployed model returns an
    equal copy (idempotent). Works on classifiers, feature backbones and any module containing them.
    """
    deployed = copy.deepcopy(model).eval()  # never touch the caller's training graph
    if isinstance(deployed, Fusable):
        return deployed.fuse().eval()
    _fuse_children(deployed)
    return deployed


def _fuse_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Fusable):
            setattr(module, name, child.fuse().eval())
        else:
            _fuse_children(child)
