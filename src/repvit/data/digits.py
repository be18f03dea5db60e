"""The quickstart's embedded dataset: scikit-learn's handwritten digits as an ImageFolder tree.

scikit-learn is optional (``pip install 'repvit-toolkit[quickstart]'``): only writing the tree needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.extras import require_extra

__all__ = ["make_digits_image_folder"]


def make_digits_image_folder(root, img_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write scikit-learn's 1797 handwritten digits (8x8, 10 classes) as an ImageFolder tree.

    Images are upscaled to ``img_size`` (bicubic) as RGB PNGs; the split is a fixed, stratified
    ``val_fraction`` per class. Idempotent: an existing complete tree is reused (without scikit-learn).
    """
    root = Path(root)
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == f"{img_size},{val_fraction},{seed}":
        return root
    require_extra(["sklearn"], "quickstart")
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = np.flatnonzero(digits.target == label)
        rng.shuffle(indices)
        n_val = int(round(len(indices) * val_fraction))
        for split, chosen in (("val", indices[:n_val]), ("train", indices[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                image = Image.fromarray(pixels, mode="L").resize((img_size, img_size), Image.BICUBIC)
                image.convert("RGB").save(folder / f"{i:04d}.png")
    marker.write_text(f"{img_size},{val_fraction},{seed}")
    return root
