"""What ``repvit bench`` measures: our variants (deployed or training structure), timm's RepViT and
the peer models, each with the published numbers it is plotted against."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import timm
from timm.utils.model import reparameterize_model
from torch import nn

from ..factory import create_model
from ..models import list_models
from ..utils import UserError, param, split_list
from .published import peer_names, published, published_peer, source_text

__all__ = ["BenchTarget", "resolve_models"]


@dataclass
class BenchTarget:
    name: str  # as shown: "repvit_m0_9", "repvit_m0_9@train", "timm:repvit_m0_9", "mobileone_s1"
    family: str  # "repvit" or "peer"
    structure: str  # "deployed" or "train"
    build: Callable[[], nn.Module] = field(repr=False)
    published: dict = field(default_factory=dict)
    img_size: int | None = None  # its own square input (None: the benchmark's)
    runtimes: tuple[str, ...] | None = None  # the only runtimes it is measured on (None: every one asked)


def _ours(name: str, structure: str) -> BenchTarget:
    paper = published(name)
    top1 = paper.get("top1", {})
    recipe = "dist_300e" if "dist_300e" in top1 else next(iter(top1), None)
    build = (lambda: create_model(name, deploy=True)) if structure == "deployed" else (lambda: create_model(name).eval())
    return BenchTarget(name + ("@train" if structure == "train" else ""), "repvit", structure, build, {
        "top1": top1.get(recipe), "recipe": recipe and recipe.split("_")[0], "latency_ms": paper.get("latency_ms"),
        "source": source_text(paper.get("source")),
    })


def _timm(name: str, structure: str) -> BenchTarget:
    arch = name.removeprefix("timm:")
    if arch not in timm.list_models():
        raise ValueError(f"unknown timm model {arch!r}")

    def build():
        model = timm.create_model(arch, pretrained=False).eval()
        if structure == "deployed":
            model = reparameterize_model(model)
        return model

    paper = published_peer(name)
    shown = name + ("@train" if structure == "train" else "")
    return BenchTarget(shown, "peer", structure, build, {
        "top1": paper.get("top1"), "recipe": paper.get("recipe"), "latency_ms": paper.get("latency_ms"),
        "source": source_text(paper.get("source")),
    })


def resolve_models(spec="all", train_structure: bool = False) -> list[BenchTarget]:
    """Targets for a comma-separated list of names, patterns and groups.

    Groups: ``all``, ``repvit`` (every variant), ``peers`` (the default peer list). Names: our
    variants (fnmatch patterns allowed), ``timm:NAME`` or any timm model name; ``NAME@train``
    measures the training structure. ``train_structure`` adds ``@train`` twins of every RepViT.
    """
    tokens = split_list(spec)
    if not tokens:
        raise UserError(f"{param('models')} is empty")
    targets: list[BenchTarget] = []
    for token in tokens:
        base, _, suffix = token.partition("@")
        if suffix not in ("", "train"):
            raise UserError(f"{param('models')} {token!r}: the only suffix is @train")
        structure = "train" if suffix else "deployed"
        ours = list_models() + list_models(roadmap=True)
        if base in ("all", "repvit", "peers"):
            names = (list_models() if base != "peers" else []) + (peer_names() if base != "repvit" else [])
        elif fnmatch.filter(ours, base):
            names = fnmatch.filter(ours, base)
        else:
            names = [base]
        for name in names:
            if name in ours:
                targets.append(_ours(name, structure))
            else:
                try:
                    targets.append(_timm(name, structure))
                except ValueError:
                    close = difflib.get_close_matches(name, list_models() + peer_names(), n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise UserError(f"{param('models')}: unknown model {name!r}.{hint} Use a RepViT name, a timm "
                                    "model name, timm:NAME, or the groups all, repvit, peers") from None
    if train_structure:
        targets += [_ours(t.name, "train") for t in targets if t.family == "repvit" and t.structure == "deployed"]
    unique = {t.name: t for t in targets}
    return list(unique.values())
