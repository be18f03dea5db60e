"""``repvit train``, ``repvit val`` and ``repvit quickstart``."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from ..data import check_image_folder
from ..factory import create_model
from ..reparam import reparameterize
from ..tools import run_quickstart
from ..train import ProcessContext, TrainRecipe, build_eval_loader, evaluate, evaluate_pair, train
from ..utils import UserError, resolve_device, split_list
from ..weights import read_checkpoint
from .common import add_device_argument, add_parser, add_recipe_arguments, console, is_main_process, recipe_from_args

__all__ = ["add_commands"]


def add_commands(commands) -> None:
    p = add_parser(commands, "train", "train or fine-tune on an ImageFolder dataset (torchrun for several GPUs)")
    add_recipe_arguments(p, TrainRecipe, "recipe file, or a packaged recipe: imagenet (the default values), digits")
    p.set_defaults(func=cmd_train)

    p = add_parser(commands, "val", "top-1/top-5 of the training and the deployed (reparameterized) structure")
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True, metavar="SRC",
                   help="checkpoint path, URL, registered name or hf-hub:ORG/REPO[:FILE]")
    p.add_argument("--data", required=True, metavar="PATH", help="folder with val/<class>/... (or the class folders)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875, help="resize to img-size / crop-pct, then center-crop")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=4)
    add_device_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_val)

    p = add_parser(commands, "quickstart", "the demo: train on the embedded digits, reparameterize, export, report")
    p.add_argument("--model", default="repvit_m0_9")
    p.add_argument("--epochs", type=int, default=None, help="default: the digits recipe's (12)")
    p.add_argument("--out", default="runs/quickstart", metavar="DIR")
    p.add_argument("--formats", default="onnx,executorch", help="export formats to check (comma-separated; empty: none)")
    p.set_defaults(func=cmd_quickstart)


def cmd_train(args) -> int:
    result = train(recipe_from_args(args, TrainRecipe, "train"))
    if not is_main_process():  # under torchrun, one summary line
        return 0
    files = [p.name for p in (result.checkpoint_last, result.checkpoint_best, result.deployed_best) if p.is_file()]
    print(f"best val top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}; checkpoints in {result.output} "
          f"({', '.join(files)})")
    return 0


def cmd_val(args) -> int:
    root = Path(args.data)
    folder = root / "val" if (root / "val").is_dir() else root
    classes = check_image_folder(folder.parent, splits=(folder.name,))
    checkpoint = read_checkpoint(args.weights)
    model = create_model(args.model, weights=checkpoint)
    if getattr(model, "num_classes", len(classes)) != len(classes):
        raise UserError(f"{folder}: {len(classes)} class folders, the checkpoint has {model.num_classes} classes")
    if checkpoint.class_names and checkpoint.class_names != classes:
        raise UserError(f"{folder}: class folders {classes[:3]}... differ from the checkpoint's classes "
                         f"{checkpoint.class_names[:3]}...")
    device = resolve_device(args.device)  # one process evaluates every image (no torchrun sharding here)
    loader = build_eval_loader(folder, args.img_size, args.crop_pct, args.batch_size, args.workers)
    if model.deployed:  # a reparameterized checkpoint: there is no training structure to compare
        metrics = evaluate(model.to(device), loader, ProcessContext(device=device))
        result = {"train": None, "deployed": {"top1": metrics["top1"], "top5": metrics["top5"]}, "n": metrics["n"]}
    else:
        result = evaluate_pair(model, reparameterize(model), loader, device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"{args.model} on {folder} ({result['n']} images, resize {args.img_size / args.crop_pct:.0f}, "
                        f"crop {args.img_size})")
    for column in ("structure", "top-1 %", "top-5 %"):
        table.add_column(column, justify="left" if column == "structure" else "right")
    for name in ("train", "deployed"):
        if result[name] is not None:
            label = "training" if name == "train" else "deployed (reparameterized)"
            table.add_row(label, f"{result[name]['top1']:.2f}", f"{result[name]['top5']:.2f}")
    console().print(table)
    if result["train"] is None:
        print(f"{args.weights} holds a deployed (reparameterized) model: there is no training structure to compare")
    else:
        print(f"predictions agree on {result['prediction_agreement']:.2f}% of the images; "
              f"largest logit difference {result['max_abs_logit_diff']:.1e}")
    return 0


def cmd_quickstart(args) -> int:
    summary = run_quickstart(model=args.model, epochs=args.epochs, output=args.out, formats=split_list(args.formats))
    print(f"\nval top-1: training structure {summary['train_structure']['top1']:.2f}%, reparameterized "
          f"{summary['deployed']['top1']:.2f}% ({summary['prediction_agreement']:.2f}% identical predictions)")
    for fmt, r in summary["runtimes"].items():
        if r["status"] == "ok":
            print(f"{fmt}: val top-1 {r['top1']:.2f}% in the runtime, {r['agreement']:.2f}% agreement with PyTorch")
        else:
            print(f"{fmt}: {r['status']}: {r['detail']}")
    print(f"report: {Path(args.out) / 'report.md'} ({summary['total_seconds']:.0f} s in total)")
    return 0
