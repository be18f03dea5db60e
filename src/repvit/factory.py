"""``create_model``: build a registered model by name and load its weights (any supported format).

It sits above both the models and the weights (timm's ``_factory`` split): the builder knows
nothing of checkpoints, and the checkpoint reader needs the builder.
"""

from __future__ import annotations

from torch import nn

from .models import RepViT, RepViTFeatures, get_variant
from .reparam import reparameterize
from .weights import load_weights, read_checkpoint

__all__ = ["create_model"]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    distillation: bool | None = None,
    weights=None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    deploy: bool | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    sha256: str | None = None,
) -> nn.Module:
    """Build a registered RepViT model, optionally loading weights.

    Args:
        name: a name from :func:`list_models`, e.g. ``"repvit_m0_9"``.
        num_classes: classifier outputs; ``None`` means the checkpoint's, or 1000 without weights.
        distillation: add the distillation head; ``None`` means "as the checkpoint has" (else no).
        weights: a local checkpoint path, an ``https://`` URL, a Hugging Face Hub file
            (``hf-hub:ORG/REPO[@REVISION][:FILENAME]``) or a registered weight name (see
            :func:`repvit.list_weights`). Official, timm and repvit checkpoints all load.
        features_only: return a :class:`RepViTFeatures` backbone giving the ``out_indices`` stages
            (default all four).
        deploy: build the reparameterized (inference) structure; ``None`` means "as the checkpoint"
            (a reparameterized checkpoint gives a deployed model), else the training structure.
        sha256: expected checksum of the ``weights`` file.

    Returns the model in eval mode when weights are loaded, else in train mode (like timm).
    """
    variant = get_variant(name)
    if features_only and (num_classes is not None or distillation is not None):
        raise ValueError("num_classes and distillation do not apply to features_only models")
    if out_indices is not None and not features_only:
        raise ValueError("out_indices applies only with features_only=True")
    checkpoint = None
    if weights is not None:
        checkpoint = read_checkpoint(weights, sha256=sha256)
        num_classes = checkpoint.num_classes if num_classes is None else num_classes
        distillation = checkpoint.distillation if distillation is None else distillation
        deploy = bool(checkpoint.deployed) if deploy is None else deploy
    num_classes = 1000 if num_classes is None else num_classes
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")

    if features_only:
        model: nn.Module = RepViTFeatures(variant.spec, out_indices=(0, 1, 2, 3) if out_indices is None else out_indices,
                                          in_chans=in_chans, name=name)
    else:
        model = RepViT(variant.spec, num_classes=num_classes, distillation=bool(distillation),
                       in_chans=in_chans, drop_rate=drop_rate, name=name)
    if deploy:
        model = reparameterize(model)
    if checkpoint is not None:
        load_weights(model, checkpoint)
        model.eval()
    return model
