"""RepViT models: the registry, the one builder, the variants and the roadmap's steps.

Importing this package registers every model: the RepViT variants (:mod:`.variants`) and the
paper's roadmap from MobileNetV3-L (:mod:`.roadmap`), all built by :mod:`.builder` from specs.
:func:`repvit.create_model` (in :mod:`repvit.factory`, above the weights) builds them by name.

Paper: Wang et al., "RepViT: Revisiting Mobile CNN From ViT Perspective", CVPR 2024, arXiv:2307.09283.
"""

from ..specs import NetSpec, RepViTSpec
from ..utils.deprecation import forward_moved
from . import roadmap, variants  # noqa: F401  (register the models)
from .builder import MIN_INPUT_SIZE, FeatureInfo, RepViT, RepViTFeatures, build_block
from .registry import Variant, get_variant, list_models, register_variant

__all__ = ["RepViTSpec", "NetSpec", "build_block", "Variant", "RepViT", "RepViTFeatures", "FeatureInfo",
           "register_variant", "get_variant", "list_models", "MIN_INPUT_SIZE"]

#: Names this module had before the factory moved above the weights (deprecated, one release).
__getattr__ = forward_moved(__name__, {"create_model": "repvit.factory"})
