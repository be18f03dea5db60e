"""RepViT model builder, variant specs and registry.

Every variant is one declarative :class:`RepViTSpec` (widths, blocks per stage, kernel, expansion,
SE placement, token-mixer form); :class:`RepViT` and :class:`RepViTFeatures` are built from a spec by
the same code. Depths follow the paper (and timm): blocks *after* each downsampling layer; every
downsampling layer also owns one RepViT block at the previous width.

Paper: Wang et al., "RepViT: Revisiting Mobile CNN From ViT Perspective", CVPR 2024, arXiv:2307.09283.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import ClassifierHead, Stage, Stem

__all__ = [
    "RepViTSpec",
    "Variant",
    "RepViT",
    "RepViTFeatures",
    "FeatureInfo",
    "register_variant",
    "get_variant",
    "list_models",
    "create_model",
    "MIN_INPUT_SIZE",
]

#: The network's total stride: smaller inputs would shrink to nothing before the last stage.
MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class RepViTSpec:
    """Everything that defines a RepViT architecture.

    widths: channels per stage; the stem ends at ``widths[0]`` (its first conv has half of it).
    depths: RepViT blocks per stage, after the stage's downsampling layer (paper convention).
    se: which of a stage's blocks get squeeze-excitation: ``"alternate"`` (1st, 3rd, 5th, ...:
        the paper's cross-block SE), ``"all"`` or ``"none"``. Downsampling layers never have SE.
    legacy: the first paper version's token mixer (BN on the 1x1 branch, none after the sum).
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernel_size: int = 3
    mlp_ratio: float = 2.0
    se: str = "alternate"
    legacy: bool = False

    def __post_init__(self):
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError(f"widths {self.widths} and depths {self.depths} must be non-empty and of equal length")
        if self.se not in ("alternate", "all", "none"):
            raise ValueError(f"se must be 'alternate', 'all' or 'none', got {self.se!r}")

    def se_flags(self, stage: int) -> list[bool]:
        depth = self.depths[stage]
        if self.se == "all":
            return [True] * depth
        if self.se == "none":
            return [False] * depth
        return [i % 2 == 0 for i in range(depth)]

    def strides(self) -> list[int]:
        return [Stem.stride * 2**i for i in range(len(self.widths))]


@dataclass(frozen=True)
class Variant:
    """A registered architecture: its name, spec and where it comes from."""

    name: str
    spec: RepViTSpec
    paper_name: str
    version: str  # "v1" (first arXiv version) or "v2" (CVPR 2024)
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())


_VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add a variant to the registry; a repeated name is an error, never a silent replacement."""
    if variant.name in _VARIANTS:
        raise ValueError(f"model {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models, optionally filtered by an fnmatch pattern (``"repvit_m1*"``)."""
    return sorted(n for n in _VARIANTS if fnmatch.fnmatch(n, pattern))


def get_variant(name: str) -> Variant:
    if name in _VARIANTS:
        return _VARIANTS[name]
    if "." in name and name.split(".", 1)[0] in _VARIANTS:
        arch = name.split(".", 1)[0]
        raise ValueError(
            f"{name!r} names a weight set, not a model; use create_model({arch!r}, weights={name!r})"
        )
    close = difflib.get_close_matches(name, list(_VARIANTS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")


# Widths/depths from the official configs (THU-MIG/RepViT model/repvit.py), paper depth convention.
_W48, _W64 = (48, 96, 192, 384), (64, 128, 256, 512)
for _v in (
    Variant("repvit_m0_6", RepViTSpec((40, 80, 160, 320), (1, 1, 8, 1)), "RepViT-M0.6", "v2",
            notes="added to the official release in Dec 2023; not in the paper's tables"),
    Variant("repvit_m0_9", RepViTSpec(_W48, (2, 2, 14, 2)), "RepViT-M0.9", "v2",
            notes="the end point of the paper's roadmap"),
    Variant("repvit_m1_0", RepViTSpec((56, 112, 224, 448), (2, 2, 14, 2)), "RepViT-M1.0", "v2"),
    Variant("repvit_m1_1", RepViTSpec(_W64, (2, 2, 12, 2)), "RepViT-M1.1", "v2"),
    Variant("repvit_m1_5", RepViTSpec(_W64, (4, 4, 24, 4)), "RepViT-M1.5", "v2"),
    Variant("repvit_m2_3", RepViTSpec((80, 160, 320, 640), (6, 6, 34, 2)), "RepViT-M2.3", "v2"),
    Variant("repvit_m1", RepViTSpec(_W48, (2, 2, 14, 2), legacy=True), "RepViT-M1", "v1",
            notes="first version; same architecture as M0.9 with the legacy token mixer"),
    Variant("repvit_m2", RepViTSpec(_W64, (2, 2, 12, 2), legacy=True), "RepViT-M2", "v1",
            notes="first version; same architecture as M1.1 with the legacy token mixer"),
    Variant("repvit_m3", RepViTSpec(_W64, (4, 4, 18, 2), legacy=True), "RepViT-M3", "v1",
            notes="first version; dropped in the CVPR version"),
):
    register_variant(_v)


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------


class FeatureInfo(list):
    """A list of ``{"num_chs", "reduction", "module"}`` dicts, one per returned feature map."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]


def _build_stages(spec: RepViTSpec, num_stages: int) -> nn.Sequential:
    stages, in_chs = [], spec.widths[0]
    for i in range(num_stages):
        stages.append(
            Stage(in_chs, spec.widths[i], spec.se_flags(i), downsample=i > 0,
                  mlp_ratio=spec.mlp_ratio, kernel_size=spec.kernel_size, legacy=spec.legacy)
        )
        in_chs = spec.widths[i]
    return nn.Sequential(*stages)


def _stage_info(spec: RepViTSpec) -> FeatureInfo:
    return FeatureInfo(
        dict(num_chs=w, reduction=s, module=f"stages.{i}")
        for i, (w, s) in enumerate(zip(spec.widths, spec.strides()))
    )


class _Backbone(nn.Module):
    """Shared input validation for the classifier and the feature extractor."""

    name: str
    in_chans: int

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are fixed by the example input; avoid TracerWarnings
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name} expects a tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{self.name} expects input of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[2] < MIN_INPUT_SIZE or x.shape[3] < MIN_INPUT_SIZE:
            raise ValueError(
                f"{self.name} needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (its total "
                f"stride), got {x.shape[2]}x{x.shape[3]}"
            )

    @property
    def deployed(self) -> bool:
        """True once reparameterized (no BatchNorm and no multi-branch blocks left)."""
        from .layers import Fusable

        return not any(isinstance(m, Fusable) for m in self.modules())


class RepViT(_Backbone):
    """RepViT image classifier: stem -> 4 stages -> global average pool -> (distilled) classifier."""

    def __init__(
        self,
        spec: RepViTSpec,
        *,
        num_classes: int = 1000,
        distillation: bool = False,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        name: str = "repvit",
    ):
        super().__init__()
        self.name, self.spec, self.in_chans = name, spec, in_chans
        self.num_classes = num_classes
        self.stem = Stem(in_chans, spec.widths[0])
        self.stages = _build_stages(spec, len(spec.widths))
        self.feature_info = _stage_info(spec)
        self.num_features = spec.widths[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = ClassifierHead(self.num_features, num_classes, distillation)

    @property
    def distillation(self) -> bool:
        return isinstance(self.head, ClassifierHead) and self.head.distillation

    def set_distilled_training(self, enable: bool = True) -> None:
        """In train mode, return ``(cls_logits, dist_logits)`` instead of their mean."""
        if not self.distillation:
            raise ValueError(f"{self.name} was built without a distillation head")
        self.head.distilled_training = enable

    def reset_classifier(self, num_classes: int, distillation: bool | None = None) -> None:
        """Replace the classifier (fresh weights), e.g. for fine-tuning on another label set."""
        distillation = self.distillation if distillation is None else distillation
        was_deployed = self.deployed
        self.num_classes = num_classes
        reference = next(self.parameters())  # keep the model's device and dtype
        self.head = ClassifierHead(self.num_features, num_classes, distillation).to(reference)
        if was_deployed:  # keep a deployed model deployed
            self.head = self.head.eval().fuse()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        x = self.head_drop(x.mean((2, 3)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self, x: torch.Tensor, indices: tuple[int, ...] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final feature map and the outputs of the stages in ``indices`` (all by default)."""
        indices = _check_indices(indices, len(self.stages), self.name)
        self._check_input(x)
        x, taken = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in indices:
                taken.append(x)
        return x, taken


class RepViTFeatures(_Backbone):
    """RepViT backbone returning the stage outputs in ``out_indices`` (strides 4, 8, 16, 32).

    Module names match :class:`RepViT`, so classification checkpoints load into it directly.
    """

    def __init__(
        self,
        spec: RepViTSpec,
        *,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        in_chans: int = 3,
        name: str = "repvit",
    ):
        super().__init__()
        self.out_indices = _check_indices(out_indices, len(spec.widths), name)
        self.name, self.spec, self.in_chans = name, spec, in_chans
        self.stem = Stem(in_chans, spec.widths[0])
        self.stages = _build_stages(spec, max(self.out_indices) + 1)
        info = _stage_info(spec)
        self.feature_info = FeatureInfo(info[i] for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        x, outs = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def _check_indices(indices, num_stages: int, name: str) -> tuple[int, ...]:
    if indices is None:
        return tuple(range(num_stages))
    try:
        indices = tuple(int(i) for i in indices)
    except (TypeError, ValueError):
        raise ValueError(f"out_indices must be a sequence of stage indices, got {indices!r}") from None
    if not indices or any(i < 0 or i >= num_stages for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(
            f"out_indices for {name} must be distinct stage indices in 0..{num_stages - 1}, got {indices}"
        )
    return tuple(sorted(indices))


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------


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
        weights: a local checkpoint path, an ``https://`` URL or a registered weight name
            (see :func:`repvit.list_weights`). Official, timm and repvit checkpoints all load.
        features_only: return a :class:`RepViTFeatures` backbone giving the ``out_indices`` stages
            (default all four).
        deploy: build the reparameterized (inference) structure; ``None`` means "as the checkpoint"
            (a reparameterized checkpoint gives a deployed model), else the training structure.
        sha256: expected checksum of a downloaded ``weights`` URL.

    Returns the model in eval mode when weights are loaded, else in train mode (like timm).
    """
    variant = get_variant(name)
    if features_only and (num_classes is not None or distillation is not None):
        raise ValueError("num_classes and distillation do not apply to features_only models")
    if out_indices is not None and not features_only:
        raise ValueError("out_indices applies only with features_only=True")
    checkpoint = None
    if weights is not None:
        from .weights import read_checkpoint  # weights imports this module

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
        from .reparam import reparameterize

        model = reparameterize(model)
    if checkpoint is not None:
        from .weights import load_weights

        load_weights(model, checkpoint)
        model.eval()
    return model
