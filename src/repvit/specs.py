"""Declarative architecture specs: what a network is, separate from the code that builds it.

A :class:`NetSpec` (stem, stages of blocks, head) describes any network of the family, from
MobileNetV3-L through every step of the paper's roadmap to the RepViT variants; :mod:`repvit.models`
builds all of them with one builder. A RepViT variant is written compactly as a :class:`RepViTSpec`
(widths, depths, kernel, expansion, SE placement, token-mixer form) and expands to a NetSpec.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from .utils.deprecation import renamed_keyword

__all__ = ["BlockSpec", "StageSpec", "StemSpec", "HeadSpec", "NetSpec", "RepViTSpec", "BLOCK_KINDS", "as_net"]

#: repvit: re-parameterisable depthwise token mixer (+SE) and FFN, stride 1, same width;
#: transition: strided depthwise conv (+SE), 1x1 conv to a new width, FFN;
#: downsample: the paper's deeper downsampling layer (a repvit block, then a strided transition:
#:   stride 2, or 1 where a network keeps the resolution, as RepViT-SAM's last stage);
#: inverted_residual: MobileNetV3's block (expand, depthwise, SE, project).
BLOCK_KINDS = ("repvit", "transition", "downsample", "inverted_residual")


@renamed_keyword("ratio", "expansion", attribute=True)
@dataclass(frozen=True)
class BlockSpec:
    kind: str
    out_chs: int
    kernel_size: int = 3
    expansion: float = 2.0  # hidden width / width: of the FFN, or of the inverted residual
    se: bool = False
    act: str = "gelu"
    stride: int | None = None  # None: the kind's own (2 for a downsample layer, else 1)
    legacy: bool = False  # repvit blocks: the first paper version's token mixer

    def __post_init__(self):
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"block kind must be one of {', '.join(BLOCK_KINDS)}, got {self.kind!r}")
        if self.stride is None:
            object.__setattr__(self, "stride", 2 if self.kind == "downsample" else 1)
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")


@dataclass(frozen=True)
class StageSpec:
    """Blocks at one resolution. ``downsample`` (a ``downsample`` block) opens the stage; without
    it a stage downsamples with a stride-2 first block, or not at all (the first stage)."""

    blocks: tuple[BlockSpec, ...]
    downsample: BlockSpec | None = None

    @property
    def width(self) -> int:
        return (self.blocks or (self.downsample,))[-1].out_chs


@dataclass(frozen=True)
class StemSpec:
    """``conv``: two stride-2 3x3 convs (``width`` // 2, then ``width``), as RepViT; ``mobilenetv3``:
    MobileNetV3-L's conv (16) + depthwise-separable + inverted residual, ending at ``width``."""

    kind: str = "conv"
    width: int = 48
    act: str = "gelu"


@dataclass(frozen=True)
class HeadSpec:
    """``norm_linear``: average pool -> BatchNorm -> Linear (RepViT; optional distillation head);
    ``mobilenetv3``: 1x1 conv (``widths[0]``) -> pool -> linear (``widths[1]``) -> Linear."""

    kind: str = "norm_linear"
    widths: tuple[int, ...] = ()
    act: str = "gelu"


@dataclass(frozen=True)
class NetSpec:
    stem: StemSpec
    stages: tuple[StageSpec, ...]
    head: HeadSpec = field(default_factory=HeadSpec)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(stage.width for stage in self.stages)

    @property
    def legacy(self) -> bool:
        return any(b.legacy for s in self.stages for b in s.blocks + ((s.downsample,) if s.downsample else ()))

    def map_blocks(self, fn: Callable[[BlockSpec, int], Any], num_stages: int | None = None) -> list[tuple[Any, list]]:
        """``fn(block, input width)`` for every block in order, downsampling layers included; returns
        ``[(result for the stage's downsample or None, [results for its blocks]), ...]`` per stage."""
        stages, in_chs = [], self.stem.width
        for stage in self.stages[:num_stages]:
            down = None
            if stage.downsample is not None:
                down, in_chs = fn(stage.downsample, in_chs), stage.downsample.out_chs
            blocks = []
            for block in stage.blocks:
                blocks.append(fn(block, in_chs))
                in_chs = block.out_chs
            stages.append((down, blocks))
        return stages

    def replace_blocks(self, fn: Callable[[BlockSpec, int], BlockSpec]) -> "NetSpec":
        """A copy with every block replaced by ``fn(block, input width)``."""
        stages = tuple(StageSpec(tuple(blocks), down) for down, blocks in self.map_blocks(fn))
        return dataclasses.replace(self, stages=stages)

    def strides(self) -> list[int]:
        """Each stage's output stride (every stem in the family has stride 4)."""
        out, stride = [], 4
        for stage in self.stages:
            for block in ((stage.downsample,) if stage.downsample else ()) + stage.blocks:
                stride *= block.stride
            out.append(stride)
        return out


@renamed_keyword("mlp_ratio", "expansion", attribute=True)
@dataclass(frozen=True)
class RepViTSpec:
    """A RepViT variant.

    widths: channels per stage; the stem ends at ``widths[0]`` (its first conv has half of it).
    depths: RepViT blocks per stage, after the stage's downsampling layer (paper convention).
    expansion: the FFN's hidden width / width (the paper's expansion ratio, 2).
    se: which of a stage's blocks get squeeze-excitation: ``"alternate"`` (1st, 3rd, 5th, ...:
        the paper's cross-block SE), ``"all"`` or ``"none"``. Downsampling layers never have SE.
    legacy: the first paper version's token mixer (BN on the 1x1 branch, none after the sum).
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernel_size: int = 3
    expansion: float = 2.0
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

    def to_net(self) -> NetSpec:
        stages = []
        for i, width in enumerate(self.widths):
            down = None if i == 0 else BlockSpec("downsample", width, self.kernel_size, self.expansion,
                                                 legacy=self.legacy)
            blocks = tuple(BlockSpec("repvit", width, self.kernel_size, self.expansion, se, legacy=self.legacy)
                           for se in self.se_flags(i))
            stages.append(StageSpec(blocks, down))
        return NetSpec(StemSpec("conv", self.widths[0]), tuple(stages), HeadSpec("norm_linear"))


def as_net(spec: RepViTSpec | NetSpec) -> NetSpec:
    """The NetSpec of a variant's spec (a RepViTSpec expands to one)."""
    return spec.to_net() if isinstance(spec, RepViTSpec) else spec
