"""Image classification with a RepViT checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import eval_transform, image_files, imagenet_class_names, load_image
from ..factory import create_model
from ..models import get_variant
from ..reparam import reparameterize
from ..utils import UserError, param, resolve_device
from ..weights import CheckpointError, default_weights, read_checkpoint

__all__ = ["Prediction", "predict"]


@dataclass
class Prediction:
    image: str
    classes: list[tuple[int, str, float]]  # (class index, class name, probability), best first


def predict(images, model: str = "repvit_m0_9", weights=None, topk: int = 5, img_size: int = 224,
            device: str = "cpu") -> list[Prediction]:
    """Top-k classes for each image, using the paper's eval transform and the deployed model.

    ``weights`` defaults to the model's recommended registered weights (downloaded once); a folder
    in ``images`` stands for the images it holds.
    """
    get_variant(model)
    if topk < 1:
        raise UserError(f"{param('topk')} must be >= 1, got {topk}")
    device = resolve_device(device)
    images = image_files(images)
    pictures = [load_image(p) for p in images]  # fail on a bad file before loading any weights
    if weights is None:
        weights = default_weights(model)
        if weights is None:
            raise CheckpointError(f"{model} has no registered weights; pass {param('weights')} PATH")
    checkpoint = read_checkpoint(weights)
    net = reparameterize(create_model(model, weights=checkpoint)).to(device)
    num_classes = net.num_classes
    if num_classes == 0:
        raise CheckpointError(f"{checkpoint.path}: has no classifier, so it cannot predict classes")
    names = checkpoint.class_names or (imagenet_class_names() if num_classes == 1000 else None)
    if names is not None and len(names) != num_classes:
        raise CheckpointError(f"{checkpoint.path}: stores {len(names)} class names for {num_classes} classes")
    names = names or [f"class {i}" for i in range(num_classes)]
    transform = eval_transform(img_size)
    with torch.inference_mode():  # in batches of 64: a folder may hold many images
        probs = torch.cat([net(torch.stack([transform(p) for p in pictures[i:i + 64]]).to(device)).float().softmax(-1)
                           for i in range(0, len(pictures), 64)])
    top = probs.topk(min(topk, num_classes), dim=-1)
    return [
        Prediction(str(path), [(int(i), names[int(i)], float(p)) for p, i in zip(values, indices)])
        for path, values, indices in zip(images, top.values, top.indices)
    ]
