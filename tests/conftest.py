import os
import shutil

import pytest
import torch
from torch import nn

# Under pytest-xdist each worker gets one core: avoid oversubscribing the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_hub_network(tmp_path_factory, monkeypatch):
    """Tests never touch the network: huggingface_hub is offline, with an empty cache of the session's
    (a registered name whose GitHub download a test makes fail would otherwise try timm's Hub copy)."""
    from hub_cache import offline_hub

    offline_hub(monkeypatch, tmp_path_factory.getbasetemp() / "hf-hub-cache")


TIMM_VARIANTS = ["repvit_m0_9", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5", "repvit_m2_3",
                 "repvit_m1", "repvit_m2", "repvit_m3"]


@torch.no_grad()
def settle_batchnorm(model: nn.Module, img_size: int = 64, batches: int = 3, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    Linear weights get unit-scale logits. Affine parameters are randomised (including the zero-initialised residual BNs, so every branch
    contributes), then a few train-mode batches set realistic running statistics. Returns the model
    in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Linear):  # logits of magnitude ~1, not the tiny ones of a fresh head
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.6 + 0.4)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            m.momentum = None  # cumulative average over the settling batches
            m.reset_running_stats()
    model.train()
    for _ in range(batches):
        model(torch.randn(4, 3, img_size, img_size, generator=gen))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return model.eval()


def scale_of(logits: torch.Tensor) -> float:
    """The tolerance scale: 1e-4 is required "on logits of magnitude ~1"."""
    return max(1.0, float(logits.abs().max()))


@pytest.fixture
def image_batch():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """scikit-learn's digits as an ImageFolder tree (32 px), written once per test process."""
    from repvit.data import make_digits_image_folder

    return make_digits_image_folder(tmp_path_factory.mktemp("digits"))


def sample_image_tree(source, root, per_class: dict):
    """A copy of the ImageFolder tree ``source`` with the first ``per_class[split]`` images of each class
    (``None``: all of them) in each split named."""
    for split, count in per_class.items():
        for folder in sorted((source / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.glob("*.png"))[:count]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root


@pytest.fixture(scope="session")
def digits_subset(digits_root, tmp_path_factory):
    """The digits with a quarter of the training images (35 per class: 350) and the whole val split (359),
    for tests of what a run does (sharding, resume, QAT's int8 program) rather than how far it learns."""
    return sample_image_tree(digits_root, tmp_path_factory.mktemp("digits_subset"), {"train": 35, "val": None})


def make_image_tree(root, classes=("cat", "dog", "owl"), per_class=6, splits=("train", "val"), size=40):
    """A small ImageFolder tree of coloured noise, one colour per class (learnable, tiny)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.zeros((size, size, 3)) + 60
                base[..., c % 3] = 200
                pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root

