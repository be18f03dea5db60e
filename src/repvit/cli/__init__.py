"""The ``repvit`` command: a thin layer over the library (each command calls one function).

One module per command group builds its parsers and handlers: :mod:`.models` (models, predict),
:mod:`.deploy` (export, quantize-eval, push-to-hub), :mod:`.measure` (bench, roadmap), :mod:`.training` (train,
val, quickstart), :mod:`.dense` (detect, segment), :mod:`.sam` (sam predict, auto, export, bench, distill, app). Nothing in
the package imports this one.
"""

from __future__ import annotations

import argparse
import sys

from ..utils import Interrupted, __version__, flag_text
from ..utils.deprecation import forward_moved
from . import dense, deploy, measure, models, sam, training
from .common import EXAMPLES, log_to_stderr

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repvit", description="RepViT models: build, reparameterize, load weights, predict.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"repvit {__version__} (repvit-toolkit)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (models, deploy, measure, training, dense, sam):
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError) as err:  # user-facing problems: one line, no stack trace
        print(f"repvit {args.command}: error: {flag_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: a training run says what it kept and how to resume
        print(f"repvit {args.command}: {flag_text(err) if str(err) else 'stopped by Ctrl-C'}", file=sys.stderr)
        return err.exit_code if isinstance(err, Interrupted) else 130


#: Names this module had when the CLI was one module (deprecated, one release).
__getattr__ = forward_moved(__name__, {
    "roadmap_markdown": "repvit.tools.roadmap", "cmd_models": "repvit.cli.models", "cmd_predict": "repvit.cli.models",
    "cmd_export": "repvit.cli.deploy", "cmd_quantize_eval": "repvit.cli.deploy", "cmd_bench": "repvit.cli.measure",
    "cmd_roadmap": "repvit.cli.measure", "cmd_train": "repvit.cli.training", "cmd_val": "repvit.cli.training",
    "cmd_quickstart": "repvit.cli.training"})
