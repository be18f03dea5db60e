"""The ``repvit`` command: a thin layer over the library (each command calls one function)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from . import __version__
from .complexity import model_stats
from .models import create_model, get_variant, list_models
from .published import published
from .weights import default_weights, list_weights

EXAMPLES = """examples:
  repvit models                      table of every variant (params, MACs, published numbers)
  repvit models --json               the same as JSON
  repvit predict cat.jpg --model repvit_m0_9 --weights repvit_m0_9.dist_450e
  repvit predict a.png b.png --model repvit_m1_1 --weights ./my_checkpoint.safetensors --topk 3
  repvit export repvit_m0_9 --format onnx executorch coreml --out exports/
  repvit export repvit_m0_9 --format litert ncnn openvino       Android/embedded runtimes, each checked
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
                     coreml_precision=args.coreml_precision, int8=args.int8, calib=args.calib,
                     calib_images=args.calib_images, crop_pct=args.crop_pct)
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


def _recipe_from_args(args, recipe_cls, read_recipe):
    """Defaults < --config < options; resuming without --config starts from the checkpoint's recipe."""
    from .recipe import PER_RUN_KEYS

    overrides = {f.name: getattr(args, f.name) for f in fields(recipe_cls) if hasattr(args, f.name)}
    resume = overrides.get("resume")
    if resume == "auto":
        resume = Path(overrides.get("output", recipe_cls.output)) / "checkpoint-last.pth"
        resume = resume if resume.is_file() else None  # a first run with --resume auto starts fresh
    if args.config is None and resume is not None:
        saved = {k: v for k, v in read_recipe(resume).items() if k not in PER_RUN_KEYS}
        return recipe_cls.load(None, **{**saved, **overrides})
    return recipe_cls.load(args.config, **overrides)


def cmd_segment(args) -> int:
    from .segmentation import SegmentRecipe, SegmentationFolder, SegmentationTask, load_segmenter, predict_segmentation

    if args.action == "train":
        from .dense import read_dense_checkpoint
        from .segmentation import train_segmenter

        recipe = _recipe_from_args(args, SegmentRecipe, lambda p: read_dense_checkpoint(p, "segment")["recipe"])
        result = train_segmenter(recipe)
        if os.environ.get("RANK", "0") == "0":
            best = result["best"]
            print(f"best mIoU {best['mIoU']:.2f} (mAcc {best['mAcc']:.2f}, aAcc {best['aAcc']:.2f}) at iteration "
                  f"{best['iter']}; checkpoints in {result['output']}" if best["iter"] else
                  f"stopped at iteration {result['iter']} before any evaluation; checkpoints in {result['output']}")
        return 0
    if args.action == "val":
        from .engine import ProcessContext, resolve_device

        model, recipe, _ = load_segmenter(args.weights, deploy=not args.unfused)
        if args.test_mode:
            recipe.test_mode = args.test_mode
        if args.data:
            recipe.data = args.data
        ctx = ProcessContext(device=resolve_device(args.device))
        loader = torch.utils.data.DataLoader(SegmentationFolder(recipe.data, "validation", recipe, False),
                                             batch_size=1, num_workers=args.workers, collate_fn=SegmentationTask().collate)
        metrics = SegmentationTask(recipe.ignore_index).evaluate(model.to(ctx.device), loader, ctx, recipe)
        metrics.pop("per_class_IoU") if not args.json else None
        print(json.dumps(metrics, indent=2) if args.json else
              f"mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}  "
              f"({'training' if args.unfused else 'reparameterized'} structure, {recipe.test_mode} inference)")
        return 0
    if args.action == "predict":
        for path in predict_segmentation(args.weights, args.images, args.out, device=args.device):
            print(path)
        return 0
    from .export import export

    model, recipe, _ = load_segmenter(args.weights)
    model.name = f"{recipe.model}_semantic_fpn"
    results = export(model, args.format, img_size=args.img_size, out_dir=args.out)
    for r in results:
        print(f"{r.format}: {r.status}  {r.path or ''}  {r.parity}  {r.detail}")
    return 0 if all(r.ok for r in results) else 1


def cmd_detect(args) -> int:
    from .detection import CocoDataset, DetectionTask, DetectRecipe, load_detector, predict_detections

    if args.action == "train":
        from .dense import read_dense_checkpoint
        from .detection import train_detector

        recipe = _recipe_from_args(args, DetectRecipe, lambda p: read_dense_checkpoint(p, "detect")["recipe"])
        result = train_detector(recipe)
        if os.environ.get("RANK", "0") == "0":
            best = result["best"]
            print(f"best box AP {best['bbox_AP']:.2f}" + (f", mask AP {best['segm_AP']:.2f}" if "segm_AP" in best else "")
                  + f" at iteration {best['iter']}; checkpoints in {result['output']}" if best["iter"] else
                  f"stopped at iteration {result['iter']} before any evaluation; checkpoints in {result['output']}")
        return 0
    if args.action == "val":
        from .engine import ProcessContext, resolve_device

        model, recipe, names = load_detector(args.weights, deploy=not args.unfused)
        for key in ("data", "val_ann", "val_images"):
            if getattr(args, key):
                setattr(recipe, key, getattr(args, key))
        paths = recipe.paths()
        task = DetectionTask(recipe)
        task.val = CocoDataset(paths["val_images"], paths["val_ann"], False, task.masks, class_names=names)
        loader = torch.utils.data.DataLoader(task.val, batch_size=1, num_workers=args.workers, collate_fn=task.collate)
        ctx = ProcessContext(device=resolve_device(args.device))
        metrics = task.evaluate(model.to(ctx.device), loader, ctx, recipe)
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            for kind in ("bbox", "segm"):
                if f"{kind}_AP" in metrics:
                    print(f"{kind}: " + "  ".join(f"{k.split('_', 1)[1]} {_fmt(v)}" for k, v in metrics.items()
                                                  if k.startswith(kind)))
        return 0
    for path in predict_detections(args.weights, args.images, args.out, device=args.device, score_thresh=args.score):
        print(path)
    return 0


def cmd_train(args) -> int:
    from .engine import read_training_checkpoint, train
    from .recipe import TrainRecipe

    recipe = _recipe_from_args(args, TrainRecipe, lambda p: read_training_checkpoint(p)["recipe"])
    result = train(recipe)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, one summary line
        return 0
    files = [p.name for p in (result.checkpoint_last, result.checkpoint_best, result.deployed_best) if p.is_file()]
    print(f"best val top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}; checkpoints in {result.output} "
          f"({', '.join(files)})")
    return 0


def cmd_val(args) -> int:
    from .data import check_image_folder
    from .engine import build_eval_loader, evaluate_pair, resolve_device
    from .reparam import reparameterize
    from .weights import read_checkpoint

    root = Path(args.data)
    folder = root / "val" if (root / "val").is_dir() else root
    classes = check_image_folder(folder.parent, splits=(folder.name,))
    checkpoint = read_checkpoint(args.weights)
    model = create_model(args.model, weights=checkpoint)
    if getattr(model, "num_classes", len(classes)) != len(classes):
        raise ValueError(f"{folder}: {len(classes)} class folders, the checkpoint has {model.num_classes} classes")
    if checkpoint.class_names and checkpoint.class_names != classes:
        raise ValueError(f"{folder}: class folders {classes[:3]}... differ from the checkpoint's classes "
                         f"{checkpoint.class_names[:3]}...")
    device = resolve_device(args.device)  # one process evaluates every image (no torchrun sharding here)
    loader = build_eval_loader(folder, args.img_size, args.crop_pct, args.batch_size, args.workers)
    result = evaluate_pair(model, reparameterize(model), loader, device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"{args.model} on {folder} ({result['n']} images, resize {args.img_size / args.crop_pct:.0f}, "
                        f"crop {args.img_size})")
    for column in ("structure", "top-1 %", "top-5 %"):
        table.add_column(column, justify="left" if column == "structure" else "right")
    for name in ("train", "deployed"):
        label = "training" if name == "train" else "reparameterized"
        table.add_row(label, f"{result[name]['top1']:.2f}", f"{result[name]['top5']:.2f}")
    _console().print(table)
    print(f"predictions agree on {result['prediction_agreement']:.2f}% of the images; "
          f"largest logit difference {result['max_abs_logit_diff']:.1e}")
    return 0


def cmd_quantize_eval(args) -> int:
    from .quantize import format_quantize_eval, quantize_eval

    report = quantize_eval(args.model, args.data, weights=args.weights, formats=args.formats,
                           img_size=args.img_size, crop_pct=args.crop_pct, calib_images=args.calib_images,
                           val_images=args.val_images, out_dir=args.out)
    print(json.dumps(report, indent=2) if args.json else format_quantize_eval(report))
    return 0


def cmd_quickstart(args) -> int:
    from .quickstart import run_quickstart

    summary = run_quickstart(model=args.model, epochs=args.epochs, output=args.out,
                             formats=[f for f in args.formats.split(",") if f])
    print(f"\nval top-1: training structure {summary['train_structure']['top1']:.2f}%, reparameterized "
          f"{summary['deployed']['top1']:.2f}% ({summary['prediction_agreement']:.2f}% identical predictions)")
    for fmt, r in summary["runtimes"].items():
        if r["status"] == "ok":
            print(f"{fmt}: val top-1 {r['top1']:.2f}% in the runtime, {r['agreement']:.2f}% agreement with PyTorch")
        else:
            print(f"{fmt}: {r['status']}: {r['detail']}")
    print(f"report: {Path(args.out) / 'report.md'} ({summary['total_seconds']:.0f} s in total)")
    return 0


def cmd_roadmap(args) -> int:
    from .roadmap import plot_roadmap, roadmap_report

    steps = [s for s in args.steps.split(",") if s] if args.steps else None
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
        cells = [str(r["step"]), r["title"], _fmt(r["params_m"]), _fmt(r["gmacs"], ".3f"), _fmt(r["latency_ms"]),
                 _fmt(r["paper_latency_ms"]), direction, _fmt(r["paper_top1"], ".1f")]
        cells += [_fmt(r.get("top1"), ".2f")] if trained else []
        table.add_row(*cells)
    _console().print(table)
    if args.markdown:
        Path(args.markdown).write_text(roadmap_markdown(result))
    if args.plot:
        print(f"plot: {plot_roadmap(result, args.plot)}")
    return 0


def roadmap_markdown(result: dict) -> str:
    trained = "train" in result
    head = ["#", "step", "change", "params M", "GMACs", f"{result['runtime']} ms (here)", "iPhone 12 ms (paper)",
            "direction here / paper", "top-1 % (paper)"] + (["top-1 % (here)"] if trained else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        direction = "-" if "agrees" not in r else f"{r['measured_direction']} / {r['paper_direction']}" + (
            " (within noise)" if r["agrees"] is None else " (agrees)" if r["agrees"] else " (differs)")
        cells = [str(r["step"]), r["title"], r["change"], _fmt(r["params_m"]), _fmt(r["gmacs"], ".3f"),
                 _fmt(r["latency_ms"]), _fmt(r["paper_latency_ms"]), direction, _fmt(r["paper_top1"], ".1f")]
        cells += [_fmt(r.get("top1"), ".2f")] if trained else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _add_recipe_arguments(parser: argparse.ArgumentParser, recipe_cls=None, config_help: str | None = None) -> None:
    """One option per recipe field, grouped, documented from the recipe itself."""
    import typing

    from .recipe import TrainRecipe

    recipe_cls = recipe_cls or TrainRecipe
    parser.add_argument("--config", default=None, metavar="YAML|NAME",
                        help=config_help or "recipe file, or a packaged recipe: imagenet (the default values), digits")
    groups = {}
    hints = typing.get_type_hints(recipe_cls)
    for f in fields(recipe_cls):
        group = groups.setdefault(f.metadata["group"], parser.add_argument_group(f.metadata["group"]))
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})")
        if hints[f.name] is bool:
            group.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(hints[f.name]) is tuple:
            group.add_argument(f"--{f.name.replace('_', '-')}", nargs=2, metavar=("LOW", "HIGH"), **kwargs)
        else:
            group.add_argument(f"--{f.name.replace('_', '-')}", metavar=f.name.upper(),
                               choices=f.metadata.get("choices"), **kwargs)


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
                   help="onnx, executorch, coreml, litert (tflite), ncnn, openvino (several allowed; "
                        "default onnx executorch coreml)")
    p.add_argument("--weights", default=None, metavar="SRC", help="checkpoint path, URL or registered name")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default="exports", metavar="DIR", help="output folder (default exports/)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: variable batch dimension")
    p.add_argument("--image-input", action="store_true",
                   help="Core ML: take an RGB image (0..255) with the normalisation built in")
    p.add_argument("--coreml-precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--int8", action="store_true",
                   help="post-training int8 quantization (executorch: PT2E/XNNPACK, onnx: ORT static QDQ)")
    p.add_argument("--calib", default=None, metavar="DATA",
                   help="calibration images for --int8: an ImageFolder root (its train/ split) or 'digits'")
    p.add_argument("--calib-images", type=int, default=512, help="how many calibration images (default 512)")
    p.add_argument("--crop-pct", type=float, default=0.875,
                   help="--int8 calibration images: resize to img-size / crop-pct, then center-crop")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("quantize-eval", help="top-1 of fp32 vs int8 on a val set, per runtime",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--weights", required=True, metavar="SRC", help="checkpoint path, URL or registered name")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="ImageFolder root with train/ (calibration) and val/ (top-1), or 'digits'")
    p.add_argument("--formats", nargs="+", default=["executorch", "onnx"],
                   help="executorch, onnx (several allowed, or comma-separated; default both)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875, help="resize to img-size / crop-pct, then center-crop")
    p.add_argument("--calib-images", type=int, default=512, help="calibration images from train/ (default 512)")
    p.add_argument("--val-images", type=int, default=None, help="evaluate on a fixed random subset of val/ (default all)")
    p.add_argument("--out", default=None, metavar="DIR", help="keep the fp32 and int8 artifacts here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize_eval)

    p = commands.add_parser("bench", help="latency (or GPU throughput) of RepViT and peers, side by side",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    p = commands.add_parser("train", help="train or fine-tune on an ImageFolder dataset (torchrun for several GPUs)",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_recipe_arguments(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("val", help="top-1/top-5 of the training and the reparameterized structure",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True, metavar="SRC", help="checkpoint path, URL or registered name")
    p.add_argument("--data", required=True, metavar="PATH", help="folder with val/<class>/... (or the class folders)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875, help="resize to img-size / crop-pct, then center-crop")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_val)

    p = commands.add_parser("quickstart", help="the demo: train on the embedded digits, reparameterize, export, report",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="repvit_m0_9")
    p.add_argument("--epochs", type=int, default=None, help="default: the digits recipe's (12)")
    p.add_argument("--out", default="runs/quickstart", metavar="DIR")
    p.add_argument("--formats", default="onnx,executorch", help="export formats to check (comma-separated; empty: none)")
    p.set_defaults(func=cmd_quickstart)

    p = commands.add_parser("roadmap", help="every step from MobileNetV3-L to RepViT-M0.9: measured beside the paper",
                            epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    from .detection import DetectRecipe
    from .segmentation import SegmentRecipe

    for task, recipe_cls, func, layout in (
        ("segment", SegmentRecipe, cmd_segment, "ROOT/images/{training,validation}/*.jpg + ROOT/annotations/...*.png"),
        ("detect", DetectRecipe, cmd_detect, "ROOT/annotations/instances_{train,val}2017.json + ROOT/{train,val}2017/"),
    ):
        top = commands.add_parser(task, help=f"{'semantic segmentation (Semantic FPN)' if task == 'segment' else 'detection and instance segmentation (Mask R-CNN)'} on a RepViT backbone",
                                  epilog=f"data layout: {layout}")
        actions = top.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = actions.add_parser("train", help="train (torchrun for several GPUs); defaults are the paper's setup",
                               epilog=f"data layout: {layout}")
        _add_recipe_arguments(p, recipe_cls, "recipe file (YAML)")
        p.set_defaults(func=func)
        p = actions.add_parser("val", help="evaluate a trained checkpoint")
        p.add_argument("--weights", required=True, metavar="CKPT")
        p.add_argument("--data", default=None, help="dataset root (default: the one it was trained on)")
        if task == "detect":
            p.add_argument("--val-ann", default=None)
            p.add_argument("--val-images", default=None)
        else:
            p.add_argument("--test-mode", choices=("whole", "slide"), default=None)
        p.add_argument("--unfused", action="store_true", help="evaluate the training structure (default: reparameterized)")
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--device", default="auto")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        p = actions.add_parser("predict", help="draw the predictions onto images, saved as PNG")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.add_argument("--weights", required=True, metavar="CKPT")
        p.add_argument("--out", default=f"runs/{task}/predictions", metavar="DIR")
        p.add_argument("--device", default="cpu")
        if task == "detect":
            p.add_argument("--score", type=float, default=0.5, help="draw detections above this score")
        p.set_defaults(func=func)
        if task == "segment":
            p = actions.add_parser("export", help="export the reparameterized segmenter (ONNX, ...) with parity checks")
            p.add_argument("--weights", required=True, metavar="CKPT")
            p.add_argument("--format", nargs="+", default=["onnx"])
            p.add_argument("--img-size", type=int, default=512)
            p.add_argument("--out", default="exports", metavar="DIR")
            p.set_defaults(func=func)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _log_to_stderr() -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        return args.func(args)
    except (ValueError, OSError, FloatingPointError) as err:  # user-facing problems: one line, no stack trace
        print(f"repvit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The message itself, also when a DataLoader worker raised it (the main process re-raises it
    with the worker's whole traceback in the text)."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
