"""Building blocks of RepViT, each in its training form with a ``fuse()`` to its inference form.

Every fusable module derives from :class:`Fusable`: ``fuse()`` returns a *new* plain module that
computes the same function in eval mode, built from pure ``(weight, bias)`` arithmetic
(:func:`fold_batchnorm`, :func:`fold_batchnorm_before_linear`). The training module is never
modified. :func:`repvit.reparameterize` walks a model and swaps each ``Fusable`` for its fused form.

Paper: Wang et al., "RepViT: Revisiting Mobile CNN From ViT Perspective", CVPR 2024, arXiv:2307.09283.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import SqueezeExcite, make_divisible, trunc_normal_
from torch import nn

from .utils.deprecation import renamed_keyword

__all__ = [
    "ACTIVATIONS",
    "Fusable",
    "fold_batchnorm",
    "fold_batchnorm_before_linear",
    "ConvNorm",
    "NormLinear",
    "RepDepthwiseConv",
    "ConvNormAct",
    "ChannelMixer",
    "RepViTBlock",
    "TransitionBlock",
    "InvertedResidual",
    "DepthwiseSeparable",
    "Stem",
    "MobileNetV3Stem",
    "Downsample",
    "Stage",
    "ClassifierHead",
    "SqueezeExcite",
]


#: Activations by name, as specs refer to them.
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "hard_swish": nn.Hardswish}


def hidden_width(channels: int, expansion: float) -> int:
    """Expanded width: ``channels * expansion`` rounded to a multiple of 8 (as the official and timm code)."""
    return make_divisible(channels * expansion, 8)


class Fusable(nn.Module):
    """A module with a training structure that folds into a simpler inference structure."""

    def fuse(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Pure fusion arithmetic
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm that *follows* a conv/linear ``(weight, bias)`` into it."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    if bias is None:
        bias = torch.zeros_like(bn.running_mean)
    fused_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    fused_bias = bn.bias + (bias - bn.running_mean) * scale
    return fused_weight, fused_bias


@torch.no_grad()
def fold_batchnorm_before_linear(
    bn: nn.BatchNorm1d, linear: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm1d that *precedes* a Linear layer into the Linear."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    weight = linear.weight * scale[None, :]
    bias = linear.weight @ shift
    if linear.bias is not None:
        bias = bias + linear.bias
    return weight, bias


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased Conv2d with ``conv``'s geometry holding the given tensors (dtype/device kept)."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        device=weight.device,
        dtype=weight.dtype,
    )
    fused.weight.copy_(weight)
    fused.bias.copy_(bias)
    return fused


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class ConvNorm(Fusable):
    """Bias-free Conv2d followed by BatchNorm2d; fuses to one biased Conv2d."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 bn_weight_init: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        return _conv_like(self.conv, *fold_batchnorm(self.conv.weight, None, self.bn))


class ConvNormAct(nn.Sequential):
    """ConvNorm followed by an activation (fuses to Conv2d + activation)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.add_module("conv", ConvNorm(in_chs, out_chs, kernel_size, stride, groups))
        self.add_module("act", act_layer())


class NormLinear(Fusable):
    """BatchNorm1d followed by Linear (the paper's classifier head); fuses to one Linear."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.02):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.linear = nn.Linear(in_features, out_features)
        trunc_normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x))

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        weight, bias = fold_batchnorm_before_linear(self.bn, self.linear)
        fused = nn.Linear(
            weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype
        )
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        return fused


class RepDepthwiseConv(Fusable):
    """The RepViT token mixer: a RepVGG-style multi-branch depthwise conv.

    Training form (current, "v2"):  ``BN( BN(DWk(x)) + DW1(x) + x )`` where DW1 has a bias.
    Training form (legacy, "v1"):   ``BN(DWk(x)) + BN(DW1(x)) + x`` with no BatchNorm after the sum.
    Both fuse into one ``k x k`` depthwise conv with bias: the 1x1 kernel and the identity are
    zero-padded to ``k x k`` and summed with the folded ``k x k`` kernel.
    """

    def __init__(self, channels: int, kernel_size: int = 3, legacy: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.legacy = legacy
        self.conv3x3 = ConvNorm(channels, channels, kernel_size, groups=channels)
        if legacy:
            self.conv1x1 = ConvNorm(channels, channels, 1, groups=channels)
            self.bn = nn.Identity()
        else:
            self.conv1x1 = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
            self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv3x3(x) + self.conv1x1(x) + x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        main = self.conv3x3.conv
        weight, bias = fold_batchnorm(main.weight, None, self.conv3x3.bn)
        if self.legacy:
            w1, b1 = fold_batchnorm(self.conv1x1.conv.weight, None, self.conv1x1.bn)
        else:
            w1, b1 = self.conv1x1.weight, self.conv1x1.bias
        pad = main.kernel_size[0] // 2
        identity = torch.zeros_like(weight)
        identity[:, :, pad, pad] = 1.0  # depthwise: one input channel per output channel
        weight = weight + F.pad(w1, [pad, pad, pad, pad]) + identity
        bias = bias + b1
        if not self.legacy:
            weight, bias = fold_batchnorm(weight, bias, self.bn)
        return _conv_like(main, weight, bias)


class ChannelMixer(nn.Module):
    """The FFN: 1x1 expand -> GELU -> 1x1 project. The last BN starts at zero so the residual
    branch starts as identity (the paper's zero-init of the residual)."""

    def __init__(self, channels: int, hidden: int, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.expand = ConvNorm(channels, hidden, 1)
        self.act = act_layer()
        self.project = ConvNorm(hidden, channels, 1, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.act(self.expand(x)))


@renamed_keyword("mlp_ratio", "expansion")
class RepViTBlock(nn.Module):
    """Token mixer (re-parameterisable DW conv) -> optional SE -> channel mixer with residual."""

    def __init__(
        self,
        channels: int,
        expansion: float = 2.0,
        kernel_size: int = 3,
        use_se: bool = False,
        act_layer: type[nn.Module] = nn.GELU,
        legacy: bool = False,
    ):
        super().__init__()
        self.token_mixer = RepDepthwiseConv(channels, kernel_size, legacy)
        self.se = SqueezeExcite(channels, rd_ratio=0.25) if use_se else nn.Identity()
        self.channel_mixer = ChannelMixer(channels, hidden_width(channels, expansion), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.token_mixer(x))
        return x + self.channel_mixer(x)


class Stem(nn.Module):
    """Early-convolution stem: two stride-2 3x3 convs (output stride 4), GELU in between."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs // 2, 3, stride=2)
        self.act = act_layer()
        self.conv2 = ConvNorm(out_chs // 2, out_chs, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


@renamed_keyword("mlp_ratio", "expansion")
class TransitionBlock(nn.Module):
    """A RepViT block that changes resolution or width: a (strided) depthwise conv, optional SE, a
    1x1 conv to the new width, and an FFN with residual at the new width (no re-parameterisable
    branches: the official code's stride-2 block)."""

    def __init__(self, in_chs: int, out_chs: int, expansion: float = 2.0, kernel_size: int = 3, stride: int = 2,
                 use_se: bool = False, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.spatial = ConvNorm(in_chs, in_chs, kernel_size, stride=stride, groups=in_chs)
        self.se = SqueezeExcite(in_chs, rd_ratio=0.25) if use_se else nn.Identity()
        self.channel = ConvNorm(in_chs, out_chs, 1)
        self.ffn = ChannelMixer(out_chs, hidden_width(out_chs, expansion), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._transition(x)

    def _transition(self, x: torch.Tensor) -> torch.Tensor:
        # A named method rather than super().forward() in Downsample: TorchScript has no super().
        x = self.channel(self.se(self.spatial(x)))
        return x + self.ffn(x)


@renamed_keyword("mlp_ratio", "expansion")
class Downsample(TransitionBlock):
    """The paper's deeper, separate downsampling layer.

    A RepViT block at the input width (no SE), then a transition: depthwise conv (stride 2, or
    ``stride``), 1x1 conv that changes the width, and an FFN with residual at the output width.
    """

    def __init__(self, in_chs: int, out_chs: int, expansion: float = 2.0, kernel_size: int = 3,
                 act_layer: type[nn.Module] = nn.GELU, legacy: bool = False, stride: int = 2):
        super().__init__(in_chs, out_chs, expansion, kernel_size, stride=stride, use_se=False, act_layer=act_layer)
        self.pre_block = RepViTBlock(in_chs, expansion, kernel_size, False, act_layer, legacy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._transition(self.pre_block(x))


class InvertedResidual(nn.Module):
    """MobileNetV3's block: 1x1 expand -> kxk depthwise (stride) -> SE -> 1x1 project, residual
    when shape allows. SE as in MobileNetV3: on the expanded width, reduced to a quarter (rounded
    to 8), ReLU inside, hard-sigmoid gate."""

    def __init__(self, in_chs: int, out_chs: int, expansion: float, kernel_size: int = 3, stride: int = 1,
                 use_se: bool = False, act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        mid = hidden_width(in_chs, expansion)
        self.has_residual = stride == 1 and in_chs == out_chs
        self.expand = ConvNormAct(in_chs, mid, 1, act_layer=act_layer)
        self.depthwise = ConvNormAct(mid, mid, kernel_size, stride, groups=mid, act_layer=act_layer)
        self.se = SqueezeExcite(mid, rd_channels=make_divisible(mid * 0.25, 8), gate_layer="hard_sigmoid") \
            if use_se else nn.Identity()
        self.project = ConvNorm(mid, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.has_residual else y


class DepthwiseSeparable(nn.Module):
    """kxk depthwise conv -> activation -> 1x1 conv, with residual (MobileNetV3's first block)."""

    def __init__(self, channels: int, kernel_size: int = 3, act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.depthwise = ConvNormAct(channels, channels, kernel_size, groups=channels, act_layer=act_layer)
        self.pointwise = ConvNorm(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.depthwise(x))


class MobileNetV3Stem(nn.Module):
    """MobileNetV3-L's stride-4 stem as the RepViT paper counts it: a 3x3 stride-2 conv (16 filters,
    hard-swish), a depthwise-separable block and a stride-2 inverted residual (expansion 4), ReLU."""

    def __init__(self, in_chs: int, out_chs: int, width: int = 16, act_layer: type[nn.Module] = nn.Hardswish):
        super().__init__()
        self.conv = ConvNormAct(in_chs, width, 3, stride=2, act_layer=act_layer)
        self.separable = DepthwiseSeparable(width, 3, nn.ReLU)
        self.bottleneck = InvertedResidual(width, out_chs, 4, 3, stride=2, act_layer=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.separable(self.conv(x)))


class Stage(nn.Module):
    """An optional downsampling layer followed by blocks (all built by :mod:`repvit.models.builder`)."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ClassifierHead(Fusable):
    """BN + Linear classifier, optionally with the DeiT-style distillation head.

    Eval (and training unless ``distilled_training`` is set) returns the mean of both heads, as in
    the paper; with ``distilled_training`` in train mode it returns ``(cls, dist)`` for the
    distillation loss. Fuses to a single Linear holding the averaged heads.

    Under TorchScript the head always returns one tensor (a compiled method has one return type,
    and deployment wants the mean): a scripted head in train mode with ``distilled_training`` set
    raises instead of silently averaging; distillation training runs eagerly.
    """

    # Fixed at construction; as a TorchScript constant it prunes the missing ``head_dist`` branch.
    __constants__ = ["distillation"]

    def __init__(self, in_features: int, num_classes: int, distillation: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.distillation = distillation
        self.distilled_training = False
        self.head = NormLinear(in_features, num_classes) if num_classes > 0 else nn.Identity()
        if distillation:
            self.head_dist = NormLinear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor):
        if not self.distillation:
            return self.head(x)
        cls, dist = self.head(x), self.head_dist(x)
        if self.training and self.distilled_training:
            if torch.jit.is_scripting():  # compile-time constant: the tuple below is never compiled
                raise RuntimeError("distilled training (two outputs) runs only eagerly; call eval() on "
                                   "the scripted model or set its head's distilled_training to False")
            return cls, dist
        return (cls + dist) / 2

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        if self.num_classes == 0:
            return nn.Identity()
        fused = self.head.fuse()
        if self.distillation:
            other = self.head_dist.fuse()
            fused.weight.copy_((fused.weight + other.weight) / 2)
            fused.bias.copy_((fused.bias + other.bias) / 2)
        return fused
