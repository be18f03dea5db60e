"""The ``repvit`` command: a thin layer over the library (each command calls one function)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

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
  repvit export repvit_m0_9 --format onnx executorch coreml --out exports/
  repvit bench --models repvit_m0_9,timm:repvit_m0_9,mobilenetv3_large_100 --runtimes eager,executorch
  repvit bench --models repvit --train-structure --runtimes eager --json train_vs_deployed.json
  repvit bench --device cuda --batch 256 --amp        GPU throughput (images/s)
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


def cmd_export(args) -> int:
    from .export import export

    results = export(args.model, args.format, weights=args.weights, img_size=args.img_size, batch=args.batch,
                     out_dir=args.out, dynamic_batch=args.dynamic_batch, image_input=args.image_input,
                     coreml_precision=args.coreml_precision)
    if args.json:
        print(json.dumps([vars(r) for r in results], indent=2))
    else:
        table = Table(title=f"{args.model}: reparameterized, exported, reloaded and compared with PyTorch")
        for column in ("format", "status", "file", "size MB", "export s", "parity", "detail"):
            table.add_column(column, justify="right" if column in ("size MB", "export s") else "left")
        for r in results:
            table.add_row(r.format, r.status, r.path or "-", "-" if r.size_mb is None else f"{r.size_mb:.1f}",
                          "-" if r.export_seconds is None else f"{r.export_seconds:.1f}", r.parity, r.detail)
        _console().print(table)
    return 0 if all(r.ok for r in results) else 1


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def cmd_bench(args) -> int:
    from .bench import plot_pareto, run_bench, run_throughput

    throughput = args.throughput or args.device != "cpu"
    if throughput:
        report = run_throughput(args.models or "repvit", device=args.device, batch=args.batch or 256,
                                img_size=args.img_size, amp=args.amp, seconds=args.seconds,
                                train_structure=args.train_structure, progress=not args.quiet)
    else:
        report = run_bench(args.models or "all", args.runtimes, threads=args.threads, batch=args.batch or 1,
                           img_size=args.img_size, warmup=args.warmup, rounds=args.rounds, iters=args.iters,
                           train_structure=args.train_structure, peak=args.peak, progress=not args.quiet)
    if args.json:
        report.to_json(args.json)
    if args.csv:
        report.to_csv(sys.stdout if args.csv == "-" else args.csv)
    if args.markdown:
        Path(args.markdown).write_text(report.to_markdown())
    env = report.env
    title = (f"{env['cpu']} ({env['cpu_count']} cores), batch {env['batch']}, {env['img_size']}px, "
             f"{env['threads']} thread(s); torch {env['versions'].get('torch')}, onnxruntime "
             f"{env['versions'].get('onnxruntime', '-')}, executorch {env['versions'].get('executorch', '-')}")
    table = Table(title=title)
    columns = ["model", "runtime", "images/s" if throughput else "median ms", "p90 ms", "spread %", "params M",
               "GMACs", "GMAC/s", "published top-1", "published iPhone 12 ms", "parity (rel.)", "status"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "runtime", "status") else "right")
    order = {r: i for i, r in enumerate(dict.fromkeys(row["runtime"] for row in report.rows))}
    rows = sorted(report.rows, key=lambda r: (r["status"] != "ok", order[r["runtime"]], r["median_ms"] or 0))
    for r in rows:
        speed = _fmt(r.get("throughput_ips"), ".0f") if throughput else _fmt(r["median_ms"])
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        table.add_row(r["model"], r["runtime"], speed, _fmt(r["p90_ms"]), _fmt(r["spread_pct"], ".0f"),
                      _fmt(r["params_m"]), _fmt(r["gmacs"], ".3f"), _fmt(r["gmacs_per_s"], ".0f"),
                      _fmt(r["published_top1"], ".1f"), _fmt(r["published_iphone12_ms"], ".1f"),
                      _fmt(r["parity_rel_diff"], ".0e"), status)
    _console().print(table)
    if "matmul_gflops_1thread" in env:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in env["matmul_gflops_1thread"].items())
        print(f"single-thread fp32 1024^3 matmul, GFLOP/s: {rates}")
    if args.plot:
        print(f"Pareto plot: {plot_pareto(report, args.plot)}")
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

    p = commands.add_parser("export", help="export the reparameterized model and check parity", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", nargs="+", default=["onnx", "executorch", "coreml"],
                   help="onnx, executorch, coreml (several allowed; default all three)")
    p.add_argument("--weights", default=None, metavar="SRC", help="checkpoint path, URL or registered name")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default="exports", metavar="DIR", help="output folder (default exports/)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: variable batch dimension")
    p.add_argument("--image-input", action="store_true",
                   help="Core ML: take an RGB image (0..255) with the normalisation built in")
    p.add_argument("--coreml-precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("bench", help="latency (or GPU throughput) of RepViT and peers, side by side",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None,
                   help="comma-separated RepViT names/patterns, timm names, timm:NAME, NAME@train, or the groups "
                        "all, repvit, peers (default: all; repvit with --device cuda)")
    p.add_argument("--runtimes", default="eager,onnxruntime,executorch", help="comma-separated: eager, onnxruntime, executorch")
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1)")
    p.add_argument("--batch", type=int, default=None, help="default 1 (256 for throughput)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds over all models")
    p.add_argument("--iters", type=int, default=10, help="timed runs per model per round")
    p.add_argument("--train-structure", action="store_true", help="also measure each RepViT before reparameterization")
    p.add_argument("--peak", action="store_true", help="also measure single-thread fp32 matmul GFLOP/s (needs --threads 1)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for throughput at a large batch")
    p.add_argument("--throughput", action="store_true", help="images/s at --batch (implied by --device cuda)")
    p.add_argument("--amp", action="store_true", help="throughput with autocast (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--seconds", type=float, default=5.0, help="throughput: timed seconds per model")
    p.add_argument("--json", metavar="PATH", help="write the environment and every row as JSON")
    p.add_argument("--csv", nargs="?", const="-", metavar="PATH", help="write the rows as CSV (stdout without PATH)")
    p.add_argument("--plot", metavar="PNG", help="Pareto plot: measured latency vs published top-1")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown table, runtimes side by side")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
    return parser


def _log_to_stderr() -> None:
    """This package's INFO messages (downloads, conversions) on stderr; other libraries stay at WARNING."""
    logger = logging.getLogger("repvit")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # user-facing problems: one line, no stack trace
        print(f"repvit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
