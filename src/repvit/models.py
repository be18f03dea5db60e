"""RepViT model builder, variant registry and factory.

Every variant is one declarative :class:`~repvit.specs.RepViTSpec` (widths, blocks per stage,
kernel, expansion, SE placement, token-mixer form) that expands to a :class:`~repvit.specs.NetSpec`;
one builder turns any NetSpec into :class:`RepViT` or :class:`RepViTFeatures`, the variants as well
as every step of the paper's roadmap from MobileNetV3-L (:mod:`repvit.roadmap`). Depths follow the
paper (and timm): blocks *after* each downsampling layer; every downsampling layer also owns one
RepViT block at the previous width.

Paper: Wang et al., "RepViT: Revisiting Mobile CNN From ViT Perspective", CVPR 2024, arXiv:2307.09283.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import (
    ACTIVATIONS,
    ClassifierHead,
    ConvNormAct,
    Downsample,
    InvertedResidual,
    MobileNetV3Stem,
    RepViTBlock,
    Stage,
    Stem,
    TransitionBlock,
)
from .specs import BlockSpec, NetSpec, RepViTSpec, StageSpec

__all__ = [
    "RepViTSpec",
    "NetSpec",
    "build_block",
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
class Variant:
    """A registered architecture: its name, spec and where it comes from."""

    name: str
    spec: RepViTSpec | NetSpec
    paper_name: str
    version: str  # "v1" (first arXiv version), "v2" (CVPR 2024) or "roadmap"
    notes: str = ""

    @property
    def net(self) -> NetSpec:
        return self.spec.to_net() if isinstance(self.spec, RepViTSpec) else self.spec


_VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add a variant to the registry; a repeated name is an error, never a silent replacement."""
    if variant.name in _VARIANTS:
        raise ValueError(f"model {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def list_models(pattern: str = "*", roadmap: bool = False) -> list[str]:
    """Names of the RepViT variants, optionally filtered by an fnmatch pattern (``"repvit_m1*"``);
    ``roadmap=True`` lists the roadmap's intermediate models (:mod:`repvit.roadmap`) instead."""
    if roadmap:
        from . import roadmap as _registers_the_roadmap  # noqa: F401
    return sorted(n for n, v in _VARIANTS.items()
                  if fnmatch.fnmatch(n, pattern) and (v.version == "roadmap") == roadmap)


def get_variant(name: str) -> Variant:
    if name in _VARIANTS:
        return _VARIANTS[name]
    if "." in name and name.split(".", 1)[0] in _VARIANTS:
        arch = name.split(".", 1)[0]
        raise ValueError(
            f"{name!r} names a weight set, not a model; use create_model({arch!r}, weights={name!r})"
        )
    if name.startswith("roadmap_"):
        from . import roadmap  # noqa: F401  (registers the roadmap's models on first use)

        if name in _VARIANTS:
            return _VARIANTS[name]
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


def _act(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def build_block(spec: BlockSpec, in_chs: int) -> nn.Module:
    act = _act(spec.act)
    if spec.kind == "repvit":
        if spec.stride != 1 or in_chs != spec.out_chs:
            raise ValueError(f"a repvit block keeps resolution and width ({in_chs}->{spec.out_chs}, stride "
                             f"{spec.stride}); use a transition block")
        return RepViTBlock(in_chs, spec.ratio, spec.kernel_size, spec.se, act, spec.legacy)
    if spec.kind == "transition":
        return TransitionBlock(in_chs, spec.out_chs, spec.ratio, spec.kernel_size, spec.stride, spec.se, act)
    if spec.kind == "downsample":
        return Downsample(in_chs, spec.out_chs, spec.ratio, spec.kernel_size, act, spec.legacy)
    return InvertedResidual(in_chs, spec.out_chs, spec.ratio, spec.kernel_size, spec.stride, spec.se, act)


def _build_stem(net: NetSpec, in_chans: int) -> nn.Module:
    if net.stem.kind == "conv":
        return Stem(in_chans, net.stem.width, _act(net.stem.act))
    if net.stem.kind == "mobilenetv3":
        return MobileNetV3Stem(in_chans, net.stem.width, act_layer=_act(net.stem.act))
    raise ValueError(f"stem kind must be conv or mobilenetv3, got {net.stem.kind!r}")


def _build_stages(net: NetSpec, num_stages: int) -> nn.Sequential:
    stages, in_chs = [], net.stem.width
    for stage in net.stages[:num_stages]:
        down = None
        if stage.downsample is not None:
            down = build_block(stage.downsample, in_chs)
            in_chs = stage.downsample.out_chs
        blocks = []
        for block in stage.blocks:
            blocks.append(build_block(block, in_chs))
            in_chs = block.out_chs
        stages.append(Stage(down, blocks))
    return nn.Sequential(*stages)


def _stage_info(net: NetSpec) -> FeatureInfo:
    return FeatureInfo(
        dict(num_chs=w, reduction=s, module=f"stages.{i}")
        for i, (w, s) in enumerate(zip(net.widths, net.strides()))
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
        spec: RepViTSpec | NetSpec,
        *,
        num_classes: int = 1000,
        distillation: bool = False,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        name: str = "repvit",
    ):
        super().__init__()
        net = spec.to_net() if isinstance(spec, RepViTSpec) else spec
        self.name, self.spec, self.in_chans = name, spec, in_chans
        self.num_classes = num_classes
        self.stem = _build_stem(net, in_chans)
        self.stages = _build_stages(net, len(net.stages))
        self.feature_info = _stage_info(net)
        self.num_features = net.widths[-1]
        # RepViT pools the last feature map straight into its classifier; MobileNetV3's head has a
        # 1x1 conv before the pooling and a hidden linear layer after it (empty for RepViT).
        self.pre_pool, self.post_pool = nn.Identity(), nn.Identity()
        if net.head.kind == "mobilenetv3":
            conv_width, hidden = net.head.widths
            act = _act(net.head.act)
            self.pre_pool = ConvNormAct(self.num_features, conv_width, 1, act_layer=act)
            self.post_pool = nn.Sequential(nn.Linear(conv_width, hidden), act())
            self.num_features = hidden
        elif net.head.kind != "norm_linear":
            raise ValueError(f"head kind must be norm_linear or mobilenetv3, got {net.head.kind!r}")
        self.head_norm = net.head.kind == "norm_linear"
        self.head_drop = nn.Dropout(drop_rate)
        if self.head_norm:
            self.head = ClassifierHead(self.num_features, num_classes, distillation)
        elif distillation:
            raise ValueError(f"{name}: a MobileNetV3 head has no distillation head")
        else:
            self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

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
        if not self.head_norm:
            self.head = (nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()).to(reference)
            return
        self.head = ClassifierHead(self.num_features, num_classes, distillation).to(reference)
        if was_deployed:  # keep a deployed model deployed
            self.head = self.head.eval().fuse()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        x = self.head_drop(self.post_pool(self.pre_pool(x).mean((2, 3))))
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
        spec: RepViTSpec | NetSpec,
        *,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        in_chans: int = 3,
        name: str = "repvit",
    ):
        super().__init__()
        net = spec.to_net() if isinstance(spec, RepViTSpec) else spec
        self.out_indices = _check_indices(out_indices, len(net.stages), name)
        self.name, self.spec, self.in_chans = name, spec, in_chans
        self.stem = _build_stem(net, in_chans)
        self.stages = _build_stages(net, max(self.out_indices) + 1)
        info = _stage_info(net)
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
