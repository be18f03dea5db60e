"""Comparing an exported artifact with PyTorch: on one input (fp32 parity), or on real images
(int8: top-1 agreement, cosine similarity, largest logit difference, and top-1 when labelled)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import DatasetError
from ..utils import topk_hits

__all__ = ["parity_tolerance", "as_tensor", "evaluate_artifact", "INT8_MIN_COSINE"]

#: An int8 artifact passes when its outputs keep this mean cosine similarity to fp32 on real images.
INT8_MIN_COSINE = 0.98


def parity_tolerance(reference: torch.Tensor, tolerance: float = 1e-4) -> float:
    """``tolerance`` on logits of magnitude ~1: scaled up for larger logits, never down."""
    return tolerance * max(1.0, float(reference.abs().max()))


def as_tensor(output, shape) -> torch.Tensor:
    """A runtime's output (array-like) as a float32 tensor of ``shape``."""
    return torch.from_numpy(np.asarray(output, dtype=np.float32)).reshape(shape)


def evaluate_artifact(run, samples, reference: nn.Module) -> dict:
    """How ``run`` (an artifact's runner, batch 1) does on real images, against ``reference``.

    ``samples``: an iterable of ``(image (1, 3, H, W), label or None)``, consumed once. Returns top-1
    agreement with the reference, mean cosine similarity of the logits, the largest logit
    difference and, when labels are given, top-1 accuracy.
    """
    hits = agree = n = labelled = 0
    cosine_sum, max_diff = 0.0, 0.0
    with torch.no_grad():
        for x, label in samples:
            ref = reference(x).float().reshape(1, -1)
            out = as_tensor(run(x), ref.shape)
            agree += topk_hits(out, ref.argmax(-1), (1,))[0]
            if label is not None:
                labelled += 1
                hits += topk_hits(out, torch.tensor([label]), (1,))[0]
            cosine_sum += float(nn.functional.cosine_similarity(out, ref).item())
            max_diff = max(max_diff, float((out - ref).abs().max()))
            n += 1
    if n == 0:
        raise DatasetError("no readable images to evaluate on")
    stats = {"agreement": 100 * agree / n, "cosine": cosine_sum / n, "max_abs_diff": max_diff, "images": n}
    if labelled:
        stats["top1"] = 100 * hits / labelled
    return stats
