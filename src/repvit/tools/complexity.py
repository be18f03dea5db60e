"""Parameter and MAC counts. MACs come from ``torch.utils.flop_counter`` (1 MAC = 2 FLOPs, counting
convolutions and matrix multiplies, as the paper's fvcore-style numbers do), run on the meta
device so that even the largest variant is counted instantly and without allocating memory."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..factory import create_model
from ..reparam import reparameterize

__all__ = ["count_params", "count_macs", "model_stats"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (the model is not modified)."""
    meta_model = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(1, in_chans, img_size, img_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(x)
    return counter.get_total_flops() // 2


def model_stats(name: str, img_size: int = 224) -> dict:
    """Train-structure (with the distillation head, as released) and deployed params, deployed MACs."""
    with torch.device("meta"):
        train = create_model(name, distillation=True)
        deployed = reparameterize(train)
    return {
        "params_train": count_params(train),
        "params_deployed": count_params(deployed),
        "macs": count_macs(deployed, img_size),
    }
