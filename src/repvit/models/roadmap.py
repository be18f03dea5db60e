"""The paper's roadmap: MobileNetV3-L turned into RepViT-M0.9, one design change at a time.

Each step is a real network (trainable, re-parameterisable, exportable) built by the same builder
as the RepViT variants, registered as ``roadmap_<id>`` (``repvit.create_model("roadmap_wider")``).
The specs are derived from one another: every step applies its change to the previous step's
:class:`~repvit.specs.NetSpec`, so the list reads as the paper does, and the last step *is*
RepViT-M0.9 (the same spec, hence the same modules and weights).

Where the paper leaves a detail open, the choice made here is stated in the step's ``change``:
MobileNetV3-L's stem is the 16-filter conv plus its first two blocks (as the paper counts it, up
to stride 4); convolutional blocks turn into RepViT blocks when they keep resolution and width, and
into transition blocks (depthwise conv, 1x1 conv, FFN: the official stride-2 block) otherwise; SE
stays where MobileNetV3 had it until the cross-block SE step.

Paper numbers (ImageNet-1k top-1 without distillation, iPhone 12 latency) are from the fact sheet
(arXiv 2307.09283v8, section 3); MobileNetV3-L's 75.2% is its own paper's. Measuring and training
the steps is :mod:`repvit.tools.roadmap` (``repvit roadmap``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..specs import BlockSpec, HeadSpec, NetSpec, StageSpec, StemSpec
from .registry import Variant, register_variant

__all__ = ["RoadmapStep", "STEPS", "get_step", "FINAL_VARIANT", "MOBILENETV3_LARGE"]


@dataclass(frozen=True)
class RoadmapStep:
    index: int
    id: str
    title: str
    change: str
    paper_top1: float | None  # % ImageNet-1k, 300 epochs, no distillation
    paper_latency_ms: float | None  # iPhone 12, Core ML
    spec: NetSpec

    @property
    def model(self) -> str:
        return f"roadmap_{self.id}"


# ----------------------------------------------------------------------------------------------
# Step 0: MobileNetV3-L as in its paper (Howard et al. 2019, Table 1; timm mobilenetv3_large_100)
# ----------------------------------------------------------------------------------------------


def _ir(out: int, k: int, e: float, se: bool, act: str, stride: int = 1) -> BlockSpec:
    return BlockSpec("inverted_residual", out, k, e, se, act, stride)


MOBILENETV3_LARGE = NetSpec(
    StemSpec("mobilenetv3", width=24, act="hard_swish"),  # conv 16 s2, separable 16, IR s2 16->24 (e4)
    (
        StageSpec((_ir(24, 3, 3, False, "relu"),)),
        StageSpec((_ir(40, 5, 3, True, "relu", 2), _ir(40, 5, 3, True, "relu"), _ir(40, 5, 3, True, "relu"))),
        StageSpec((_ir(80, 3, 6, False, "hard_swish", 2), _ir(80, 3, 2.5, False, "hard_swish"),
                   _ir(80, 3, 2.3, False, "hard_swish"), _ir(80, 3, 2.3, False, "hard_swish"),
                   _ir(112, 3, 6, True, "hard_swish"), _ir(112, 3, 6, True, "hard_swish"))),
        StageSpec((_ir(160, 5, 6, True, "hard_swish", 2), _ir(160, 5, 6, True, "hard_swish"),
                   _ir(160, 5, 6, True, "hard_swish"))),
    ),
    HeadSpec("mobilenetv3", (960, 1280), "hard_swish"),
)


# ----------------------------------------------------------------------------------------------
# The changes, each a function NetSpec -> NetSpec
# ----------------------------------------------------------------------------------------------


def _gelu_for_hard_swish(net: NetSpec) -> NetSpec:
    swap = lambda act: "gelu" if act == "hard_swish" else act  # noqa: E731
    net = net.replace_blocks(lambda b, _: dataclasses.replace(b, act=swap(b.act)))
    return dataclasses.replace(net, stem=dataclasses.replace(net.stem, act=swap(net.stem.act)),
                               head=dataclasses.replace(net.head, act=swap(net.head.act)))


def _repvit_block(block: BlockSpec, in_chs: int) -> BlockSpec:
    """A block in the RepViT form: token mixer then channel mixer (GELU, as the RepViT block)."""
    keeps_shape = block.stride == 1 and in_chs == block.out_chs
    kind = "repvit" if keeps_shape else "transition"
    return BlockSpec(kind, block.out_chs, block.kernel_size, block.expansion, block.se, "gelu", block.stride)


def _separate_mixers(net: NetSpec) -> NetSpec:
    return net.replace_blocks(lambda b, c: _repvit_block(b, c) if b.kind == "inverted_residual" else b)


def _expansion_2(net: NetSpec) -> NetSpec:
    return net.replace_blocks(lambda b, _: dataclasses.replace(b, expansion=2.0))


_WIDER = {24: 48, 40: 96, 80: 192, 112: 192, 160: 384}


def _wider(net: NetSpec) -> NetSpec:
    net = net.replace_blocks(lambda b, _: dataclasses.replace(b, out_chs=_WIDER[b.out_chs]))
    net = dataclasses.replace(net, stem=dataclasses.replace(net.stem, width=_WIDER[net.stem.width]))
    # 80 -> 112 was a width change; at 192 -> 192 the transition becomes a plain RepViT block
    return net.replace_blocks(lambda b, c: _repvit_block(b, c) if b.kind == "transition" else b)


def _conv_stem(net: NetSpec) -> NetSpec:
    return dataclasses.replace(net, stem=StemSpec("conv", net.stem.width, "gelu"))


def _deeper_downsampling(net: NetSpec) -> NetSpec:
    stages = []
    for stage in net.stages:
        first = stage.blocks[0] if stage.blocks else None
        if first is not None and first.kind == "transition" and first.stride == 2:
            down = BlockSpec("downsample", first.out_chs, first.kernel_size, first.expansion)
            stage = StageSpec(stage.blocks[1:], down)
        stages.append(stage)
    return dataclasses.replace(net, stages=tuple(stages))


def _simple_classifier(net: NetSpec) -> NetSpec:
    return dataclasses.replace(net, head=HeadSpec("norm_linear"))


def _resize_stage(stage: StageSpec, depth: int) -> StageSpec:
    """``depth`` blocks like the stage's own, keeping the share of SE blocks at the stage's end."""
    template = stage.blocks[-1]
    with_se = sum(b.se for b in stage.blocks)
    n_se = round(depth * with_se / len(stage.blocks))
    blocks = tuple(dataclasses.replace(template, se=i >= depth - n_se) for i in range(depth))
    return StageSpec(blocks, stage.downsample)


def _stage_ratio(net: NetSpec) -> NetSpec:
    depths = (2, 2, 14, 2)  # 1:1:7:1, deepened
    return dataclasses.replace(net, stages=tuple(_resize_stage(s, d) for s, d in zip(net.stages, depths)))


def _kernel_3(net: NetSpec) -> NetSpec:
    return net.replace_blocks(lambda b, _: dataclasses.replace(b, kernel_size=3))


def _cross_block_se(net: NetSpec) -> NetSpec:
    stages = tuple(StageSpec(tuple(dataclasses.replace(b, se=i % 2 == 0) for i, b in enumerate(s.blocks)),
                             s.downsample) for s in net.stages)
    return dataclasses.replace(net, stages=stages)


# (id, title, change, transform, paper top-1, paper latency ms)
_CHANGES = [
    ("recipe", "Align the training recipe",
     "hard-swish -> GELU (the paper's change for Core ML); the training recipe is the aligned one "
     "(AdamW, cosine, 300 epochs, no distillation)", _gelu_for_hard_swish, 71.5, 1.01),
    ("separate_mixers", "Separate token and channel mixers",
     "each inverted residual -> depthwise token mixer (+SE) then FFN channel mixer (same expansion); "
     "re-parameterisable depthwise where shape is kept, else a transition block", _separate_mixers, 68.3, 0.81),
    ("ratio2", "Expansion ratio 2", "every FFN hidden width = 2x its input", _expansion_2, None, 0.65),
    ("wider", "Wider", "stage widths 24/40/80+112/160 -> 48/96/192/384", _wider, 73.5, 0.89),
    ("conv_stem", "Early-convolution stem",
     "MobileNetV3 stem -> two stride-2 3x3 convs (24 then 48 filters)", _conv_stem, 73.9, 0.86),
    ("downsampling", "Deeper downsampling layers",
     "stride-2 block -> RepViT block + stride-2 depthwise + 1x1 conv + FFN (residual)", _deeper_downsampling, 75.4, 0.96),
    ("classifier", "Simple classifier",
     "1x1 conv (960) + pool + linear (1280) + linear -> pool + BatchNorm + linear", _simple_classifier, 74.8, 0.77),
    ("stage_ratio", "Stage ratio 2:2:14:2",
     "blocks per stage 1:2:5:2 -> 2:2:14:2 (ratio 1:1:7:1, deepened); SE kept at each stage's end in the "
     "same share", _stage_ratio, 76.9, 0.91),
    ("kernel3", "3x3 kernels only", "the remaining 5x5 depthwise convs -> 3x3", _kernel_3, 76.9, 0.89),
    ("cross_se", "Cross-block SE", "SE in the 1st, 3rd, 5th, ... block of every stage (= RepViT-M0.9)",
     _cross_block_se, 77.4, 0.87),
]


def _build_steps() -> list[RoadmapStep]:
    steps = [RoadmapStep(0, "mobilenetv3", "MobileNetV3-L", "the baseline, as in its paper (hard-swish, SE, 5x5 "
                         "kernels, expansion 2.3-6, its stem and classifier)", 75.2, 1.01, MOBILENETV3_LARGE)]
    for i, (step_id, title, change, transform, top1, latency) in enumerate(_CHANGES, 1):
        steps.append(RoadmapStep(i, step_id, title, change, top1, latency, transform(steps[-1].spec)))
    return steps


STEPS: list[RoadmapStep] = _build_steps()
for _step in STEPS:
    register_variant(Variant(_step.model, _step.spec, f"Roadmap {_step.index}: {_step.title}", "roadmap",
                             notes=_step.change))

#: The variant the roadmap ends at (asserted by the tests: same spec, modules and outputs).
FINAL_VARIANT = "repvit_m0_9"


def get_step(step: str | int) -> RoadmapStep:
    for s in STEPS:
        if step in (s.index, s.id, s.model):
            return s
    raise ValueError(f"unknown roadmap step {step!r}; steps: {', '.join(s.id for s in STEPS)}")
