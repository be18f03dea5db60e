"""Top-k counting, shared by every evaluation (PyTorch, exported runtimes, int8)."""

from __future__ import annotations

import torch

__all__ = ["topk_hits"]


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows of ``logits`` have their target among the top k classes, for each k.

    Top-1 is the argmax (a tie goes to the lowest class index, deterministically); top-k for k > 1
    is membership in ``topk``.
    """
    targets = targets.reshape(-1)
    counts = []
    for k in ks:
        if k == 1:
            counts.append(int((logits.argmax(dim=-1) == targets).sum()))
        else:
            top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
            counts.append(int((top == targets[:, None]).any(dim=-1).sum()))
    return counts
