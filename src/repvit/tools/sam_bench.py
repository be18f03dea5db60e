"""Latency of RepViT-SAM beside the Segment Anything encoders pip packages provide, side by side.

The image encoders are timed by :func:`.bench.run_bench` (same protocol as ``repvit bench``: batch 1,
a fixed thread count for every runtime, each artifact checked against eager PyTorch, interleaved
rounds), each at its own input size; the prompt decoder (the same for all SAM encoders that keep
SAM's decoder) is then timed per prompt on the same runtimes, interleaved among themselves with the
same harness (a few milliseconds each: more runs per round). Every model has random weights:
latency does not depend on them, and nothing is downloaded.

Peers: SAM ViT-B (``segment-anything``), MobileSAM's encoder (TinyViT-5M at 1024 px with its last
downsampling at stride 1 and SAM's neck, built from timm's TinyViT: it reproduces MobileSAM's 38.8
GMACs, and its 6.07M parameters once the unused ImageNet head MobileSAM's module keeps is counted),
EfficientViT-SAM-L0 (``efficientsam``, at its native 512 px) and SAM 2.1 Hiera-T (``sam2``: trunk and
FPN neck, every level its mask decoder uses returned).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..export import FORMATS
from ..sam import create_sam, random_sam, sam_neck
from ..sam.export import DECODER_FORMATS, decoder_inputs, load_decoder, prompt_decoder, write_decoder
from ..sam.model import EMBED_DIM, PATCH
from ..utils import UserError, first_line, missing_extra, param, split_list
from .bench import RUNTIMES, run_bench
from .complexity import count_params
from .report import BenchReport, empty_row, fmt
from .targets import BenchTarget
from .timing import interleaved, summarize, torch_threads

__all__ = ["SAM_MODELS", "SAM_PAPER", "MobileSamEncoder", "sam_targets", "run_sam_bench", "sam_ratios", "sam_markdown"]

#: The paper's encoder latencies in ms (RepViT-SAM, arXiv 2312.05760, Table 1; Core ML, 1024 px):
#: iPhone 12 (MobileSAM and SAM ViT-B ran out of memory there) and MacBook M1 Pro.
SAM_PAPER = {
    "repvit_sam": {"iphone12_ms": 48.9, "m1pro_ms": 44.8},
    "mobilesam": {"iphone12_ms": None, "m1pro_ms": 482.2},
    "sam_vit_b": {"iphone12_ms": None, "m1pro_ms": 6249.5},
    "decoder": {"iphone12_ms": 11.6, "m1pro_ms": 11.8},
}
_PAPER_SOURCE = "RepViT-SAM (arXiv 2312.05760), Table 1: Core ML on iPhone 12 / MacBook M1 Pro"
# MobileSAM's code counts its unused ImageNet classifier (Linear 320 -> 1000; timm keeps the norm before it)
_MOBILESAM = {"params_m": 6.07, "head_params": 320 * 1000 + 1000, "gmacs": 38.8}
_FP32 = tuple(name for name, runtime in RUNTIMES.items() if not runtime.int8)  # the peers' runtimes


class MobileSamEncoder(nn.Module):
    """MobileSAM's image encoder from timm's TinyViT-5M: embed dims 64/128/160/320, depths 2/2/6/2,
    windows 7/7/14/7, the last downsampling at stride 1 (1024 px -> 64x64), SAM's neck to 256."""

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        self.trunk = timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=0, drop_path_rate=0.0)
        self.trunk.stages[-1].downsample.conv2.conv.stride = (1, 1)  # MobileSAM: no downsampling into 320 channels
        self.neck = sam_neck(self.trunk.num_features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.trunk.forward_features(x))


class _Sam2Encoder(nn.Module):
    """SAM 2's image encoder (trunk + FPN neck) returning the FPN levels it keeps, flattened and joined,
    so that no level the mask decoder uses is left out of an exported graph."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([f.flatten(1) for f in self.encoder(x)["backbone_fpn"]], dim=1)


def _repvit_sam(deploy: bool, img_size: int = 1024) -> nn.Module:
    return random_sam(img_size, deploy=deploy).image_encoder.eval()  # no zero branch a converter could drop


def _sam_vit_b(img_size: int = 1024) -> nn.Module:
    """SAM ViT-B's image encoder as ``segment_anything``'s ``build_sam_vit_b`` configures it."""
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(depth=12, embed_dim=768, img_size=img_size, mlp_ratio=4, num_heads=12, patch_size=16,
                           qkv_bias=True, use_rel_pos=True, global_attn_indexes=(2, 5, 8, 11), window_size=14,
                           out_chans=256, norm_layer=partial(nn.LayerNorm, eps=1e-6))


def _efficientvit_sam_l0() -> nn.Module:
    from efficientsam.models.efficientvit.sam import efficientvit_sam_l0

    return efficientvit_sam_l0().image_encoder


def _sam2_hiera_t() -> nn.Module:
    from sam2.build_sam import build_sam2

    return _Sam2Encoder(build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", mode="eval").image_encoder)


@dataclass(frozen=True)
class _SamModel:
    build: object  # (input size) -> the encoder, random weights
    package: str | None  # the module a peer needs, None for ours
    extra: str
    img_size: int = 1024
    family: str = "peer"
    structure: str = "deployed"
    int8: bool = False


#: Every encoder ``repvit sam bench`` knows, by name.
SAM_MODELS = {
    "repvit_sam": _SamModel(lambda size: _repvit_sam(True, size), "segment_anything", "sam", family="repvit",
                            int8=True),
    "repvit_sam@train": _SamModel(lambda size: _repvit_sam(False, size), "segment_anything", "sam", family="repvit",
                                  structure="train"),
    "mobilesam": _SamModel(lambda size: MobileSamEncoder(), None, ""),
    "efficientvit_sam_l0": _SamModel(lambda size: _efficientvit_sam_l0(), "efficientsam", "sam-peers", img_size=512),
    "sam2.1_hiera_t": _SamModel(lambda size: _sam2_hiera_t(), "sam2", "sam-peers"),
    "sam_vit_b": _SamModel(_sam_vit_b, "segment_anything", "sam"),
}


def sam_targets(models="all", img_size: int = 1024) -> list[BenchTarget]:
    """Bench targets for a comma-separated list of :data:`SAM_MODELS` names, or ``all``; ``img_size``
    replaces 1024 px (EfficientViT-SAM-L0 keeps half of it: its native 512)."""
    names = split_list(models)
    names = list(SAM_MODELS) if names == ["all"] else names
    unknown = [n for n in names if n not in SAM_MODELS]
    if unknown or not names:
        raise UserError(f"{param('models')}: unknown SAM encoder {', '.join(unknown) or '(none)'}; choose from "
                        f"{', '.join(SAM_MODELS)} or all")
    targets = []
    for name in names:
        spec = SAM_MODELS[name]
        missing = missing_extra([spec.package], spec.extra) if spec.package else None

        size = img_size * spec.img_size // 1024

        def build(spec=spec, missing=missing, size=size):
            if missing:
                raise UserError(missing)
            return spec.build(size).eval()

        paper = SAM_PAPER.get(name, {})  # the paper timed the deployed encoders
        targets.append(BenchTarget(name, spec.family, spec.structure, build, {
            "latency_ms": paper.get("iphone12_ms"), "source": _PAPER_SOURCE if paper else None},
            img_size=size, runtimes=None if spec.int8 else _FP32))
    return targets


def run_sam_bench(models="all", runtimes=("eager", "onnxruntime", "executorch"), *, threads: int = 1,
                  img_size: int = 1024, warmup: int = 1, rounds: int = 3, iters: int = 1, int8: bool = False,
                  decoder: bool = True, decoder_iters: int = 20, progress: bool = True) -> BenchReport:
    """Encoders (see the module docstring) on each runtime; with ``decoder``, SAM's prompt decoder per
    prompt (one point plus SAM's padding point) on the runtimes it exports to; ``int8`` adds
    RepViT-SAM's int8 encoder (ExecuTorch/XNNPACK and ONNX Runtime, random calibration: latency
    only; ``repvit sam export --int8`` measures its masks against fp32). ``img_size`` applies to
    the 1024-px encoders (smaller for quick checks); EfficientViT-SAM-L0 keeps half of it."""
    targets = sam_targets(models, img_size)
    report = run_bench(targets, runtimes, threads=threads, img_size=img_size, warmup=warmup, rounds=rounds,
                       iters=iters, int8=int8, progress=progress)
    for row in report.rows:
        paper = SAM_PAPER.get(row["model"], {})
        row["published_m1pro_ms"] = paper.get("m1pro_ms")
    mobilesam = next((r for r in report.rows if r["model"] == "mobilesam" and r["params_m"] and r["gmacs"]), None)
    if mobilesam and img_size == 1024:
        report.env["mobilesam_check"] = _mobilesam_check(mobilesam)
    if decoder:
        report.rows += _decoder_rows(report.env, [r for r in split_list(runtimes) if not RUNTIMES[r].int8], threads,
                                     img_size, warmup, rounds, decoder_iters)
    report.env["weights"] = "random (latency does not depend on them)"
    return report


def _mobilesam_check(row: dict) -> dict:
    """Does the timm-built encoder reproduce MobileSAM's published size and cost?"""
    params = row["params_m"] + _MOBILESAM["head_params"] / 1e6
    ok = abs(params - _MOBILESAM["params_m"]) < 0.01 and abs(row["gmacs"] - _MOBILESAM["gmacs"]) < 0.1
    return {"params_m_with_unused_head": round(params, 3), "gmacs": round(row["gmacs"], 2),
            "published": {"params_m": _MOBILESAM["params_m"], "gmacs": _MOBILESAM["gmacs"]}, "reproduced": ok}


def _decoder_rows(env: dict, runtimes: list[str], threads: int, img_size: int, warmup: int, rounds: int,
                  iters: int) -> list[dict]:
    """SAM's prompt decoder, per prompt, on each runtime it exports to: one interleaved run of
    ``rounds`` rounds of ``iters`` prompts per runtime."""
    sam = create_sam(None, img_size=img_size)
    decoder = prompt_decoder(sam)
    grid = img_size // PATCH
    embedding = torch.randn(1, EMBED_DIM, grid, grid, generator=torch.Generator().manual_seed(0))
    inputs = decoder_inputs(embedding, [[img_size * 0.5, img_size * 0.4], [0.0, 0.0]], [1, -1])
    with torch.no_grad():
        reference = decoder(*inputs)
    rows, runners = [], []
    target = BenchTarget("repvit_sam decoder", "repvit", "deployed", lambda: decoder, {
        "latency_ms": SAM_PAPER["decoder"]["iphone12_ms"], "source": _PAPER_SOURCE})
    base = {**empty_row(target, "", {"threads": threads, "batch": 1, "img_size": img_size}),
            "params_m": (count_params(sam.prompt_encoder) + count_params(sam.mask_decoder)) / 1e6,
            "gmacs": _decoder_gmacs(decoder, inputs), "published_m1pro_ms": SAM_PAPER["decoder"]["m1pro_ms"]}
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="repvit-sam-bench-") as tmp:
        for runtime in runtimes:
            fmt = RUNTIMES[runtime].format
            row = {**base, "runtime": runtime}
            rows.append(row)
            if fmt is not None and fmt not in DECODER_FORMATS:
                row.update(status="skipped", reason=f"the decoder exports to {', '.join(DECODER_FORMATS)}")
                continue
            if fmt is not None and FORMATS[fmt].missing():
                row.update(status="skipped", reason=FORMATS[fmt].missing())
                continue
            try:
                if fmt is None:
                    def run():
                        return decoder(*inputs)
                else:
                    path = Path(tmp) / f"decoder-{runtime}{FORMATS[fmt].suffix}"
                    with torch.no_grad():
                        write_decoder(fmt, decoder, inputs, path)
                    loaded = load_decoder(fmt, path, threads)

                    def run(loaded=loaded):
                        return loaded(*inputs)
                with torch.no_grad():
                    got = run()
                row["parity_max_abs_diff"] = max(float((torch.as_tensor(o) - r).abs().max())
                                                 for o, r in zip(got, reference))
            except Exception as err:
                row.update(status="export failed", reason=first_line(err, with_type=True))
                continue
            runners.append((row, run))
        with torch.inference_mode():
            samples = interleaved([(id(row), fn) for row, fn in runners], warmup=max(warmup, 3), rounds=rounds,
                                  iters=iters)
    for row, _ in runners:
        row.update(summarize(samples[id(row)]))
    env["decoder_prompt"] = "one point plus SAM's padding point (label -1)"
    return rows


def _decoder_gmacs(decoder: nn.Module, inputs: tuple) -> float | None:
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            decoder(*inputs)
        return counter.get_total_flops() / 2e9
    except Exception:  # informative only
        return None


def sam_ratios(report: BenchReport) -> dict:
    """The issue's performance ratios from one run: fused/unfused per runtime, ours against each peer
    per runtime, int8 against fp32, and the decoder per prompt as a share of the encoder."""
    def ms(model, runtime):
        row = report.row(model, runtime)
        return row["median_ms"] if row and row["status"] == "ok" and row["median_ms"] else None

    runtimes = list(dict.fromkeys(r["runtime"] for r in report.rows))
    ratios: dict = {"fused_speedup": {}, "speedup_over": {}, "int8_speedup": {}, "decoder_share_pct": {}}
    for runtime in runtimes:
        ours = ms("repvit_sam", runtime)
        if ours is None:
            continue
        if ms("repvit_sam@train", runtime):
            ratios["fused_speedup"][runtime] = ms("repvit_sam@train", runtime) / ours
        for peer in (m for m in SAM_MODELS if SAM_MODELS[m].family == "peer"):
            if ms(peer, runtime):
                ratios["speedup_over"].setdefault(peer, {})[runtime] = ms(peer, runtime) / ours
        if ms("repvit_sam decoder", runtime):
            ratios["decoder_share_pct"][runtime] = 100 * ms("repvit_sam decoder", runtime) / ours
    for fp32, int8 in (("executorch", "executorch_int8"), ("onnxruntime", "onnxruntime_int8")):
        if ms("repvit_sam", fp32) and ms("repvit_sam", int8):
            ratios["int8_speedup"][fp32] = ms("repvit_sam", fp32) / ms("repvit_sam", int8)
    return ratios


def sam_markdown(reports: list[BenchReport]) -> str:
    """One table: a line per model, median ms per runtime and thread count, beside the paper's."""
    columns = [(rt, rep) for rep in reports for rt in dict.fromkeys(r["runtime"] for r in rep.rows)]
    models = list(dict.fromkeys(r["model"] for rep in reports for r in rep.rows))
    head = ["model", "input px", "params M", "GMACs"] + [f"{rt} {rep.env['threads']}T ms" for rt, rep in columns]
    head += ["paper iPhone 12 ms", "paper M1 Pro ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        any_row = next(r for rep in reports for r in rep.rows if r["model"] == model)
        cells = [model, str(any_row["img_size"]), fmt(any_row["params_m"], ".2f"), fmt(any_row["gmacs"], ".1f")]
        for runtime, rep in columns:
            row = rep.row(model, runtime)
            cells.append("-" if row is None else fmt(row["median_ms"], ".0f") if row["status"] == "ok"
                         else row["status"])
        cells += [fmt(any_row.get("published_iphone12_ms"), ".1f"), fmt(any_row.get("published_m1pro_ms"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

