"""Top-k counting, shared by every evaluation (PyTorch, exported runtimes, int8)."""

from __future__ import annotations

import torch

__all__ = ["topk_hits"]


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows of ``logits`` have their target among the top k classes, for each k."""
    k_max = min(max(ks), logits.shape[-1])
    hits = logits.topk(k_max, dim=-1).indices == targets.reshape(-1, 1)
    return [int(hits[:, :k].any(dim=-1).sum()) for k in ks]
