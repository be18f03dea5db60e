"""A test-only model with the module layout of the official THU-MIG/RepViT code.

It exists to produce checkpoints in the official format (flat ``features.N`` list built from
``k, t, c, SE, HS, s`` config rows, ``Conv2d_BN`` as a Sequential of ``c``/``bn``, ``Residual.m``,
``classifier.classifier[_dist]``), and a fused form of them, without downloading anything.
Written from the published structure description; it is deliberately a different network
layout from ``repvit.models``, so a checkpoint only loads correctly if the key mapping is right.
"""

from __future__ import annotations

import torch
from timm.layers import SqueezeExcite
from torch import nn


class Conv2d_BN(nn.Sequential):
    def __init__(self, a, b, ks=1, stride=1, pad=0, groups=1, bn_weight_init=1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))
        nn.init.constant_(self.bn.weight, bn_weight_init)

    @torch.no_grad()
    def fuse(self):
        c, bn = self.c, self.bn
        s = bn.weight / (bn.running_var + bn.eps).sqrt()
        m = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups)
        m.weight.copy_(c.weight * s[:, None, None, None])
        m.bias.copy_(bn.bias - bn.running_mean * s)
        return m


class Residual(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return x + self.m(x)


class RepVGGDW(nn.Module):
    def __init__(self, ed, legacy=False):
        super().__init__()
        self.legacy = legacy
        self.conv = Conv2d_BN(ed, ed, 3, 1, 1, groups=ed)
        if legacy:
            self.conv1 = Conv2d_BN(ed, ed, 1, 1, 0, groups=ed)
        else:
            self.conv1 = nn.Conv2d(ed, ed, 1, 1, 0, groups=ed)
            self.bn = nn.BatchNorm2d(ed)

    def forward(self, x):
        y = self.conv(x) + self.conv1(x) + x
        return y if self.legacy else self.bn(y)

    @torch.no_grad()
    def fuse(self):
        conv = self.conv.fuse()
        conv1 = self.conv1.fuse() if self.legacy else self.conv1
        w = conv.weight + nn.functional.pad(conv1.weight, [1, 1, 1, 1])
        w[:, :, 1, 1] += 1.0
        b = conv.bias + conv1.bias
        if not self.legacy:
            s = self.bn.weight / (self.bn.running_var + self.bn.eps).sqrt()
            w = w * s[:, None, None, None]
            b = self.bn.bias + (b - self.bn.running_mean) * s
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        return conv


class Block(nn.Module):
    def __init__(self, inp, oup, stride, use_se, legacy):
        super().__init__()
        if stride == 2:
            self.token_mixer = nn.Sequential(
                Conv2d_BN(inp, inp, 3, 2, 1, groups=inp),
                SqueezeExcite(inp, 0.25) if use_se else nn.Identity(),
                Conv2d_BN(inp, oup, 1, 1, 0),
            )
        else:
            assert inp == oup
            self.token_mixer = nn.Sequential(
                RepVGGDW(inp, legacy), SqueezeExcite(inp, 0.25) if use_se else nn.Identity()
            )
        self.channel_mixer = Residual(nn.Sequential(
            Conv2d_BN(oup, 2 * oup), nn.GELU(), Conv2d_BN(2 * oup, oup, bn_weight_init=0.0)
        ))

    def forward(self, x):
        return self.channel_mixer(self.token_mixer(x))


class BN_Linear(nn.Sequential):
    def __init__(self, a, b):
        super().__init__()
        self.add_module("bn", nn.BatchNorm1d(a))
        self.add_module("l", nn.Linear(a, b))
        nn.init.normal_(self.l.weight, std=0.02)

    @torch.no_grad()
    def fuse(self):
        bn, l = self.bn, self.l
        s = bn.weight / (bn.running_var + bn.eps).sqrt()
        m = nn.Linear(l.in_features, l.out_features)
        m.weight.copy_(l.weight * s[None, :])
        m.bias.copy_(l.weight @ (bn.bias - bn.running_mean * s) + l.bias)
        return m


class Classfier(nn.Module):  # (sic) the official class name
    def __init__(self, dim, num_classes, distillation):
        super().__init__()
        self.distillation = distillation
        self.classifier = BN_Linear(dim, num_classes)
        if distillation:
            self.classifier_dist = BN_Linear(dim, num_classes)

    def forward(self, x):
        if self.distillation:
            return (self.classifier(x) + self.classifier_dist(x)) / 2
        return self.classifier(x)

    @torch.no_grad()
    def fuse(self):
        m = self.classifier.fuse()
        if self.distillation:
            d = self.classifier_dist.fuse()
            m.weight.copy_((m.weight + d.weight) / 2)
            m.bias.copy_((m.bias + d.bias) / 2)
        return m


class OfficialRepViT(nn.Module):
    def __init__(self, cfgs, num_classes=1000, distillation=False, legacy=False):
        super().__init__()
        c0 = cfgs[0][2]
        layers = [nn.Sequential(Conv2d_BN(3, c0 // 2, 3, 2, 1), nn.GELU(), Conv2d_BN(c0 // 2, c0, 3, 2, 1))]
        inp = c0
        for k, t, c, se, hs, s in cfgs:
            layers.append(Block(inp, c, s, bool(se), legacy))
            inp = c
        self.features = nn.ModuleList(layers)
        self.classifier = Classfier(inp, num_classes, distillation)

    def forward(self, x):
        for f in self.features:
            x = f(x)
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))

    def fused(self):
        """A fused copy, replacing fusable children as the official ``replace_batchnorm`` does."""
        import copy

        net = copy.deepcopy(self).eval()

        def walk(module):
            for name, child in module.named_children():
                if hasattr(child, "fuse"):
                    setattr(module, name, child.fuse())
                else:
                    walk(child)

        walk(net)
        return net


# Official config tables (k, t, c, use_se, use_hs, stride). The last stride-1 row before each
# stride-2 row is the block the paper counts as part of the downsampling layer; it never has SE.
M0_9_CFGS = [
    [3, 2, 48, 1, 0, 1], [3, 2, 48, 0, 0, 1], [3, 2, 48, 0, 0, 1],
    [3, 2, 96, 0, 0, 2],
    [3, 2, 96, 1, 0, 1], [3, 2, 96, 0, 0, 1], [3, 2, 96, 0, 0, 1],
    [3, 2, 192, 0, 1, 2],
    [3, 2, 192, 1, 1, 1], [3, 2, 192, 0, 1, 1], [3, 2, 192, 1, 1, 1], [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1], [3, 2, 192, 0, 1, 1], [3, 2, 192, 1, 1, 1], [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1], [3, 2, 192, 0, 1, 1], [3, 2, 192, 1, 1, 1], [3, 2, 192, 0, 1, 1],
    [3, 2, 192, 1, 1, 1], [3, 2, 192, 0, 1, 1], [3, 2, 192, 0, 1, 1],
    [3, 2, 384, 0, 1, 2],
    [3, 2, 384, 1, 1, 1], [3, 2, 384, 0, 1, 1],
]

M0_6_CFGS = [
    [3, 2, 40, 1, 0, 1], [3, 2, 40, 0, 0, 1],
    [3, 2, 80, 0, 0, 2],
    [3, 2, 80, 1, 0, 1], [3, 2, 80, 0, 0, 1],
    [3, 2, 160, 0, 1, 2],
    [3, 2, 160, 1, 1, 1], [3, 2, 160, 0, 1, 1], [3, 2, 160, 1, 1, 1], [3, 2, 160, 0, 1, 1],
    [3, 2, 160, 1, 1, 1], [3, 2, 160, 0, 1, 1], [3, 2, 160, 1, 1, 1], [3, 2, 160, 0, 1, 1],
    [3, 2, 160, 0, 1, 1],
    [3, 2, 320, 0, 1, 2],
    [3, 2, 320, 1, 1, 1],
]


def _rows(width, se_flags, hs):
    return [[3, 2, width, se, hs, 1] for se in se_flags]


# RepViT-SAM's encoder rows (official sam/repvit_sam/modeling/repvit.py): M2.3's block list, whose
# 320 -> 640 downsampling row the official block builds at stride 1 (``stride if inp != 320 else 1``).
SAM_CFGS = (_rows(80, [1, 0, 1, 0, 1, 0, 0], 0) + [[3, 2, 160, 0, 0, 2]] + _rows(160, [1, 0, 1, 0, 1, 0, 0], 0)
            + [[3, 2, 320, 0, 1, 2]] + _rows(320, [1, 0] * 17 + [0], 1) + [[3, 2, 640, 0, 1, 2]]
            + _rows(640, [1, 0], 1))


def official_sam_encoder_features() -> nn.ModuleList:
    """The official RepViT-SAM encoder's ``features`` rows (stem + 54 blocks), 640-wide at stride 16."""
    features = OfficialRepViT(SAM_CFGS, num_classes=1).features  # (the classifier is not used)
    for block in features[1:]:
        spatial = getattr(block, "token_mixer")[0]
        if isinstance(spatial, Conv2d_BN) and spatial.c.in_channels == 320 and spatial.c.stride == (2, 2):
            spatial.c.stride = (1, 1)
    return features


class LayerNorm2d(nn.Module):
    """Channel LayerNorm of an (N, C, H, W) map, as the official neck uses it."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels)), eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mean) / torch.sqrt(var + self.eps) + self.bias[:, None, None]


class OfficialSamEncoder(nn.Module):
    """The official RepViT-SAM image encoder's layout: ``features`` rows, then ``neck`` to 256."""

    def __init__(self):
        super().__init__()
        self.features = official_sam_encoder_features()
        self.neck = nn.Sequential(nn.Conv2d(640, 256, 1, bias=False), LayerNorm2d(256),
                                  nn.Conv2d(256, 256, 3, padding=1, bias=False), LayerNorm2d(256))

    def forward(self, x):
        for f in self.features:
            x = f(x)
        return self.neck(x)
