"""The ``repvit`` command: a thin layer over the library (each command calls one function)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rich.console import Console
from rich.table import Table

from . import __version__
from .complexity import model_stats
from .models import get_variant, list_models
from .published import published
from .weights import default_weights, list_weights

EXAMPLES = """examples:
  repvit models                      table of every variant (params, MACs, published numbers)
  repvit models --json               the same as JSON
  repvit predict cat.jpg --model repvit_m0_9 --weights repvit_m0_9.dist_450e
  repvit predict a.png b.png --model repvit_m1_1 --weights ./my_checkpoint.safetensors --topk 3
"""


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=180)  # pipes and CI: don't squeeze tables


def _models_rows(pattern: str, img_size: int) -> list[dict]:
    rows = []
    for name in list_models(pattern):
        variant = get_variant(name)
        stats = model_stats(name, img_size)
        paper = published(name)
        rows.append({
            "model": name,
            "paper_name": variant.paper_name,
            "version": variant.version,
            "widths": list(variant.spec.widths),
            "depths": list(variant.spec.depths),
            "params_train": stats["params_train"],
            "params_deployed": stats["params_deployed"],
            "macs": stats["macs"],
            "img_size": img_size,
            "published": {k: paper[k] for k in ("top1", "latency_ms", "params_m", "gmacs", "source") if k in paper},
            "weights": list_weights(f"{name}.*"),
            "default_weights": default_weights(name),
        })
    return rows


def cmd_models(args) -> int:
    rows = _models_rows(args.filter, args.img_size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"RepViT models (params and MACs counted here at {args.img_size}x{args.img_size}; "
                        "top-1 and latency as published)")
    for column, justify in (("model", "left"), ("paper name", "left"), ("params train M", "right"),
                            ("params deployed M", "right"), ("GMACs", "right"),
                            ("top-1 % 300e / 450e (published)", "right"), ("iPhone 12 ms (published)", "right"),
                            ("weights", "left")):
        table.add_column(column, justify=justify)
    for r in rows:
        top1 = r["published"].get("top1", {})
        acc = " / ".join(f"{top1[k]:.1f}" if k in top1 else "-" for k in ("dist_300e", "dist_450e"))
        latency = r["published"].get("latency_ms")
        table.add_row(
            r["model"], f"{r['paper_name']} ({r['version']})", f"{r['params_train'] / 1e6:.3f}",
            f"{r['params_deployed'] / 1e6:.3f}", f"{r['macs'] / 1e9:.3f}", acc,
            "-" if latency is None else f"{latency:.1f}", ", ".join(w.split(".", 1)[1] for w in r["weights"]),
        )
    _console().print(table)
    print("params train = training structure with the distillation head, as released; "
          "deployed = after repvit.reparameterize.")
    return 0


def cmd_predict(args) -> int:
    from .predict import predict

    results = predict(args.images, model=args.model, weights=args.weights, topk=args.topk,
                      img_size=args.img_size, device=args.device)
    if args.json:
        print(json.dumps([{"image": r.image, "top": [{"index": i, "name": n, "prob": p} for i, n, p in r.classes]}
                          for r in results], indent=2))
        return 0
    console = _console()
    for r in results:
        table = Table(title=r.image)
        table.add_column("rank", justify="right")
        table.add_column("class", justify="right")
        table.add_column("name")
        table.add_column("prob", justify="right")
        for rank, (index, name, prob) in enumerate(r.classes, 1):
            table.add_row(str(rank), str(index), name, f"{prob:.4f}")
        console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repvit", description="RepViT models: build, reparameterize, load weights, predict.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"repvit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("models", help="table of every variant", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--filter", default="*", metavar="PATTERN", help="fnmatch pattern, e.g. 'repvit_m1*'")
    p.add_argument("--img-size", type=int, default=224, help="input size for the MAC count (default 224)")
    p.set_defaults(func=cmd_models)

    p = commands.add_parser("predict", help="classify images", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default="repvit_m0_9", help="model name (default repvit_m0_9)")
    p.add_argument("--weights", default=None, metavar="SRC",
                   help="checkpoint path, https:// URL or registered name (default: the model's recommended weights)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # user-facing problems: one line, no stack trace
        print(f"repvit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
