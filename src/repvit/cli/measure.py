"""``repvit bench`` and ``repvit roadmap``: measured side by side, beside the published numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.table import Table

from ..tools import plot_pareto, plot_roadmap, roadmap_markdown, roadmap_report, run_bench, run_throughput
from ..tools.plots import require_plots
from ..tools.report import fmt
from ..utils import split_list
from .common import add_parser, console

__all__ = ["add_commands"]


def add_commands(commands) -> None:
    p = add_parser(commands, "bench", "latency (or GPU throughput) of RepViT and peers, side by side")
    p.add_argument("--models", default=None,
                   help="comma-separated RepViT names/patterns, timm names, timm:NAME, NAME@train, or the groups "
                        "all, repvit, peers (default: all; repvit with --device cuda)")
    p.add_argument("--runtimes", default="eager,onnxruntime,executorch",
                   help="comma-separated: eager, onnxruntime, executorch, litert, ncnn, openvino, onnxruntime_int8, "
                        "executorch_int8 (default eager,onnxruntime,executorch)")
    p.add_argument("--int8", action="store_true", help="add the int8 twin of each runtime that has one")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="int8 calibration images (ImageFolder root or 'digits'; default: random inputs, latency only)")
    p.add_argument("--calib-images", type=int, default=64)
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

    p = add_parser(commands, "roadmap", "every step from MobileNetV3-L to RepViT-M0.9: measured beside the paper")
    p.add_argument("--runtime", choices=("eager", "onnxruntime", "executorch"), default="executorch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--steps", default=None, help="comma-separated step ids (default: all)")
    p.add_argument("--train", nargs="?", const="digits", default=None, metavar="DATA",
                   help="also train every step with one recipe: an ImageFolder root, or the embedded digits")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per step (default: the recipe's)")
    p.add_argument("--config", default=None, help="training recipe (default: digits for the digits, else the paper's)")
    p.add_argument("--output", default="runs/roadmap", metavar="DIR", help="where trained steps are written")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_roadmap)


def cmd_bench(args) -> int:
    if args.plot:
        require_plots()
    throughput = args.throughput or args.device != "cpu"
    if throughput:
        report = run_throughput(args.models or "repvit", device=args.device, batch=args.batch or 256,
                                img_size=args.img_size, amp=args.amp, seconds=args.seconds,
                                train_structure=args.train_structure, progress=not args.quiet)
    else:
        report = run_bench(args.models or "all", args.runtimes, threads=args.threads, batch=args.batch or 1,
                           img_size=args.img_size, warmup=args.warmup, rounds=args.rounds, iters=args.iters,
                           train_structure=args.train_structure, peak=args.peak, int8=args.int8, calib=args.calib,
                           calib_images=args.calib_images, progress=not args.quiet)
    if args.json:
        report.to_json(args.json)
    if args.csv:
        report.to_csv(sys.stdout if args.csv == "-" else args.csv)
    if args.markdown:
        Path(args.markdown).write_text(report.to_markdown())
    env = report.env
    title = (f"{env['cpu']} ({env['cpu_count']} cores), batch {env['batch']}, {env['img_size']}px, "
             f"{env['threads']} thread(s); " + ", ".join(
                 f"{pkg} {env['versions'][pkg]}" for pkg in ("torch", "onnxruntime", "executorch", "ai-edge-litert",
                                                            "ncnn", "openvino") if pkg in env["versions"]))
    table = Table(title=title)
    columns = ["model", "runtime", "images/s" if throughput else "median ms", "p90 ms", "spread %", "params M",
               "GMACs", "GMAC/s", "published top-1", "published iPhone 12 ms", "parity (rel.)", "status"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "runtime", "status") else "right")
    order = {r: i for i, r in enumerate(dict.fromkeys(row["runtime"] for row in report.rows))}
    rows = sorted(report.rows, key=lambda r: (r["status"] != "ok", order[r["runtime"]], r["median_ms"] or 0))
    for r in rows:
        speed = fmt(r.get("throughput_ips"), ".0f") if throughput else fmt(r["median_ms"])
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        table.add_row(r["model"], r["runtime"], speed, fmt(r["p90_ms"]), fmt(r["spread_pct"], ".0f"),
                      fmt(r["params_m"]), fmt(r["gmacs"], ".3f"), fmt(r["gmacs_per_s"], ".0f"),
                      fmt(r["published_top1"], ".1f"), fmt(r["published_iphone12_ms"], ".1f"),
                      fmt(r["parity_rel_diff"], ".0e"), status)
    console().print(table)
    if "matmul_gflops_1thread" in env:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in env["matmul_gflops_1thread"].items())
        print(f"single-thread fp32 1024^3 matmul, GFLOP/s: {rates}")
    if args.plot:
        print(f"Pareto plot: {plot_pareto(report, args.plot)}")
    return 0


def cmd_roadmap(args) -> int:
    if args.plot:
        require_plots()
    steps = split_list(args.steps) or None
    result = roadmap_report(args.runtime, threads=args.threads, img_size=args.img_size, warmup=args.warmup,
                            rounds=args.rounds, iters=args.iters, steps=steps, train=args.train, epochs=args.epochs,
                            config=args.config, output=args.output, progress=not args.quiet)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    trained = "train" in result
    env = result["env"]
    table = Table(title=f"Roadmap MobileNetV3-L -> RepViT-M0.9: measured on {result['runtime']} ({env['cpu']}, "
                        f"{env['threads']} thread, batch 1, {env['img_size']}px) beside the paper (iPhone 12)")
    columns = ["#", "step", "params M", "GMACs", "measured ms", "paper ms", "direction here / paper", "paper top-1"]
    columns += ["top-1 here"] if trained else []
    for column in columns:
        table.add_column(column, justify="left" if column in ("step", "direction here / paper") else "right")
    for r in result["rows"]:
        direction = "-" if "agrees" not in r else (f"{r['measured_direction']} / {r['paper_direction']}"
                                                    + (" (noise)" if r["agrees"] is None else " ok" if r["agrees"] else " differs"))
        cells = [str(r["step"]), r["title"], fmt(r["params_m"]), fmt(r["gmacs"], ".3f"), fmt(r["latency_ms"]),
                 fmt(r["paper_latency_ms"]), direction, fmt(r["paper_top1"], ".1f")]
        cells += [fmt(r.get("top1"), ".2f")] if trained else []
        table.add_row(*cells)
    console().print(table)
    if args.markdown:
        Path(args.markdown).write_text(roadmap_markdown(result))
    if args.plot:
        print(f"plot: {plot_roadmap(result, args.plot)}")
    return 0
