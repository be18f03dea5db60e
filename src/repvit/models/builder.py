"""The one builder: any :class:`~repvit.specs.NetSpec` -> :class:`RepViT` or :class:`RepViTFeatures`.

The RepViT variants and every step of the paper's roadmap from MobileNetV3-L are built here from
their specs. Depths follow the paper (and timm): blocks *after* each downsampling layer; every
downsampling layer also owns one RepViT block at the previous width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from ..layers import (
    ACTIVATIONS,
    ClassifierHead,
    ConvNormAct,
    Downsample,
    Fusable,
    InvertedResidual,
    MobileNetV3Stem,
    RepViTBlock,
    Stage,
    Stem,
    TransitionBlock,
)
from ..specs import BlockSpec, NetSpec, RepViTSpec, as_net

__all__ = ["build_block", "RepViT", "RepViTFeatures", "FeatureInfo", "MIN_INPUT_SIZE"]

#: The network's total stride: smaller inputs would shrink to nothing before the last stage.
MIN_INPUT_SIZE = 32


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
        return RepViTBlock(in_chs, spec.expansion, spec.kernel_size, spec.se, act, spec.legacy)
    if spec.kind == "transition":
        return TransitionBlock(in_chs, spec.out_chs, spec.expansion, spec.kernel_size, spec.stride, spec.se, act)
    if spec.kind == "downsample":
        return Downsample(in_chs, spec.out_chs, spec.expansion, spec.kernel_size, act, spec.legacy, spec.stride)
    return InvertedResidual(in_chs, spec.out_chs, spec.expansion, spec.kernel_size, spec.stride, spec.se, act)


def _build_stem(net: NetSpec, in_chans: int) -> nn.Module:
    if net.stem.kind == "conv":
        return Stem(in_chans, net.stem.width, _act(net.stem.act))
    if net.stem.kind == "mobilenetv3":
        return MobileNetV3Stem(in_chans, net.stem.width, act_layer=_act(net.stem.act))
    raise ValueError(f"stem kind must be conv or mobilenetv3, got {net.stem.kind!r}")


def _build_stages(net: NetSpec, num_stages: int) -> nn.Sequential:
    return nn.Sequential(*(Stage(down, blocks) for down, blocks in net.map_blocks(build_block, num_stages)))


def _stage_info(net: NetSpec) -> FeatureInfo:
    return FeatureInfo(
        dict(num_chs=w, reduction=s, module=f"stages.{i}")
        for i, (w, s) in enumerate(zip(net.widths, net.strides()))
    )


class _Backbone(nn.Module):
    """Shared input validation for the classifier and the feature extractor."""

    # Python-side introspection, not part of a scripted model.
    __jit_unused_properties__ = ["deployed"]

    # Set here rather than annotated on the class: TorchScript cannot read class annotations that
    # ``from __future__ import annotations`` turned into strings.
    def __init__(self, name: str, in_chans: int):
        super().__init__()
        self.name, self.in_chans = name, in_chans

    def _check_input(self, x: torch.Tensor) -> None:
        # Scripting: is_scripting() is a compile-time constant, so the rest is never compiled and
        # the scripted graph has no check (the messages below do not script).
        if torch.jit.is_scripting():
            return
        # Tracing (torch.jit.trace, torch.fx.symbolic_trace): the check stays out of the graph; the
        # example input fixes the shapes (and an fx Proxy is not a tensor to check).
        if torch.jit.is_tracing() or is_fx_symbolic_tracing():
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
        return not any(isinstance(m, Fusable) for m in self.modules())


class RepViT(_Backbone):
    """RepViT image classifier: stem -> 4 stages -> global average pool -> (distilled) classifier."""

    __jit_unused_properties__ = [*_Backbone.__jit_unused_properties__, "distillation"]

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
        super().__init__(name, in_chans)
        net = as_net(spec)
        self.spec = spec
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
    """RepViT backbone returning the stage outputs in ``out_indices`` (strides 4, 8, 16, 32 for the
    classification variants; 4, 8, 16, 16 for RepViT-SAM's encoder, see ``feature_info``).

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
        super().__init__(name, in_chans)
        net = as_net(spec)
        self.out_indices = _check_indices(out_indices, len(net.stages), name)
        self.spec = spec
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
