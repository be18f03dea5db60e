"""repvit: RepViT mobile CNN backbones - exact models, reparameterization, weights, tools.

Paper: Ao Wang, Hui Chen, Zijia Lin, Jungong Han, Guiguang Ding. "RepViT: Revisiting Mobile CNN
From ViT Perspective". CVPR 2024. arXiv:2307.09283.

    >>> import repvit
    >>> model = repvit.create_model("repvit_m0_9")        # training structure
    >>> deployed = repvit.reparameterize(model)           # new deployed copy, model untouched

The package is layered (each sub-package imports only from those below it): ``utils`` -> ``specs``,
``layers``, ``reparam`` -> ``models`` -> ``weights`` -> ``factory`` -> ``data`` -> ``export`` ->
``train`` -> ``dense`` -> ``tools`` -> ``cli``.
"""

from .factory import create_model
from .models import RepViT, RepViTFeatures, list_models
from .reparam import reparameterize
from .specs import RepViTSpec
from .train.pretrained import push_to_hub, save_pretrained
from .utils import __version__
from .weights import CheckpointError, default_weights, list_weights, load_weights, read_checkpoint, save_weights

__all__ = [
    "__version__",
    "RepViT",
    "RepViTFeatures",
    "RepViTSpec",
    "CheckpointError",
    "create_model",
    "list_models",
    "reparameterize",
    "load_weights",
    "save_weights",
    "save_pretrained",
    "push_to_hub",
    "read_checkpoint",
    "list_weights",
    "default_weights",
]
