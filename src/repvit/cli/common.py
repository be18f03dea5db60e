"""What every command group shares: the console, option builders, recipes from the command line,
logging to stderr."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path

from rich.console import Console

from ..train import PER_RUN_KEYS, locate_run, read_run_checkpoint
from ..utils import UserError, param

__all__ = ["EXAMPLES", "console", "add_parser", "add_device_argument", "add_recipe_arguments", "recipe_from_args",
           "is_main_process", "log_to_stderr"]

EXAMPLES = """examples:
  repvit models                      table of every variant (params, MACs, published numbers)
  repvit models --json               the same as JSON
  repvit predict cat.jpg --model repvit_m0_9 --weights repvit_m0_9.dist_450e
  repvit predict a.png b.png --model repvit_m1_1 --weights ./my_checkpoint.safetensors --topk 3
  repvit predict cat.jpg --model repvit_m0_9 --weights hf-hub:timm/repvit_m0_9.dist_450e_in1k
  repvit export repvit_m0_9 --format onnx executorch coreml --out exports/
  repvit export repvit_m0_9 --format litert ncnn openvino       Android/embedded runtimes, each checked
  repvit export repvit_m0_9 --weights runs/train/checkpoint-best.pth --format timm --out hub/m0_9   a folder plain timm loads
  repvit push-to-hub hub/m0_9 you/repvit-m0_9 --private       upload it to the Hugging Face Hub
  repvit export repvit_m0_9 --weights best.pth --format executorch --int8 --calib ./flowers   int8 (PT2E, XNNPACK)
  repvit quantize-eval repvit_m0_9 --weights best.pth --data ./flowers   top-1 of fp32 vs int8 per runtime
  repvit bench --models repvit_m0_9,timm:repvit_m0_9,mobilenetv3_large_100 --runtimes eager,executorch
  repvit bench --models repvit --train-structure --runtimes eager --json train_vs_deployed.json
  repvit bench --device cuda --batch 256 --amp        GPU throughput (images/s)
  repvit quickstart                  train on the embedded digits, reparameterize, export, report
  repvit train --data /data/imagenet --model repvit_m0_9          the paper's recipe (8 GPUs: torchrun)
  repvit train --data ./flowers --config digits --img-size 128 --distillation none --finetune repvit_m0_9.dist_450e
  repvit train --resume runs/train/checkpoint-last.pth            continue an interrupted run
  repvit val --model repvit_m0_9 --weights runs/train/checkpoint-best.pth --data ./flowers
  repvit roadmap --runtime executorch --plot roadmap.png     MobileNetV3-L -> RepViT, measured beside the paper
  repvit roadmap --train --epochs 10                         ... and trained on the embedded digits
  repvit sam predict photo.jpg --point 420,310 --multimask   RepViT-SAM: masks for a click (repvit sam --help)
"""


def console() -> Console:
    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=180)  # pipes and CI: don't squeeze tables


def add_parser(commands, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A command's parser, with the examples under its help."""
    return commands.add_parser(name, help=help, epilog=kwargs.pop("epilog", EXAMPLES),
                               formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def add_recipe_arguments(parser: argparse.ArgumentParser, recipe_cls, config_help: str) -> None:
    """One option per recipe field, grouped, documented from the recipe itself."""
    parser.add_argument("--config", default=None, metavar="YAML|NAME", help=config_help)
    groups = {}
    hints = typing.get_type_hints(recipe_cls)
    for f in fields(recipe_cls):
        group = groups.setdefault(f.metadata["group"], parser.add_argument_group(f.metadata["group"]))
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = f"--{f.name.replace('_', '-')}"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})")
        if hints[f.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hints[f.name]) is tuple:
            group.add_argument(flag, nargs=2, metavar=("LOW", "HIGH"), **kwargs)
        else:
            group.add_argument(flag, metavar=f.name.upper(), choices=f.metadata.get("choices"), **kwargs)


def recipe_from_args(args, recipe_cls, kind: str):
    """Defaults < --config < options; resuming without --config starts from the checkpoint's recipe.
    ``--resume PATH`` continues in PATH's folder: an ``--output`` naming another folder is an error."""
    overrides = {f.name: getattr(args, f.name) for f in fields(recipe_cls) if hasattr(args, f.name)}
    folder, resume = locate_run(overrides.get("output", recipe_cls.output), overrides.get("resume"))
    if overrides.get("resume") not in (None, "auto") and "output" in overrides \
            and Path(overrides["output"]).resolve() != folder.resolve():
        raise UserError(f"{param('resume')} {overrides['resume']} continues the run in its own folder {folder}, not "
                        f"{param('output')} {overrides['output']}: leave out {param('output')}, or copy the folder "
                        "there and resume from the copy")
    if args.config is None and resume is not None:
        saved = read_run_checkpoint(resume, kind, argument="resume")["recipe"]
        return recipe_cls.load(None, **{**{k: v for k, v in saved.items() if k not in PER_RUN_KEYS}, **overrides})
    return recipe_cls.load(args.config, **overrides)


def is_main_process() -> bool:
    """False in the torchrun processes other than rank 0 (they print no summary)."""
    return os.environ.get("RANK", "0") == "0"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def log_to_stderr() -> None:
    """This package's INFO messages (progress, downloads) on stderr; other libraries stay at WARNING."""
    logger = logging.getLogger("repvit")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        # Libraries log through the root logger (logging.info), which then configures itself with a
        # handler of its own: without this, every message would be printed twice.
        logger.propagate = False


