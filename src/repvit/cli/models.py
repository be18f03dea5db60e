"""``repvit models`` and ``repvit predict``."""

from __future__ import annotations

import json

from rich.table import Table

from ..models import get_variant, list_models
from ..tools import model_stats, predict, published
from ..weights import default_weights, list_weights
from .common import add_device_argument, add_parser, console

__all__ = ["add_commands"]


def add_commands(commands) -> None:
    p = add_parser(commands, "models", "table of every variant")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--filter", default="*", metavar="PATTERN", help="fnmatch pattern, e.g. 'repvit_m1*'")
    p.add_argument("--img-size", type=int, default=224, help="input size for the MAC count (default 224)")
    p.set_defaults(func=cmd_models)

    p = add_parser(commands, "predict", "classify images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default="repvit_m0_9", help="model name (default repvit_m0_9)")
    p.add_argument("--weights", default=None, metavar="SRC",
                   help="checkpoint path, https:// URL, registered name or hf-hub:ORG/REPO[:FILE] "
                        "(default: the model's recommended weights)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--img-size", type=int, default=224)
    add_device_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)


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
    console().print(table)
    print("params train = training structure with the distillation head, as released; "
          "deployed = after repvit.reparameterize.")
    return 0


def cmd_predict(args) -> int:
    results = predict(args.images, model=args.model, weights=args.weights, topk=args.topk,
                      img_size=args.img_size, device=args.device)
    if args.json:
        print(json.dumps([{"image": r.image, "top": [{"index": i, "name": n, "prob": p} for i, n, p in r.classes]}
                          for r in results], indent=2))
        return 0
    terminal = console()
    for r in results:
        table = Table(title=r.image)
        table.add_column("rank", justify="right")
        table.add_column("class", justify="right")
        table.add_column("name")
        table.add_column("prob", justify="right")
        for rank, (index, name, prob) in enumerate(r.classes, 1):
            table.add_row(str(rank), str(index), name, f"{prob:.4f}")
        terminal.print(table)
    return 0
