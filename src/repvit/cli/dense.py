"""``repvit detect train|val|predict`` and ``repvit segment train|val|predict|export``."""

from __future__ import annotations

import argparse
import json

from torch.utils.data import DataLoader

from ..dense import (
    CocoDataset,
    DetectionTask,
    DetectRecipe,
    SegmentationFolder,
    SegmentationTask,
    SegmentRecipe,
    load_detector,
    load_segmenter,
    predict_detections,
    predict_segmentation,
    train_detector,
    train_segmenter,
)
from ..export import export
from ..tools.report import fmt
from ..train import ProcessContext
from ..utils import resolve_device
from .common import add_device_argument, add_recipe_arguments, is_main_process, recipe_from_args

__all__ = ["add_commands"]

_CHECKPOINT_HELP = "a checkpoint of this task's train command: path, https:// URL or hf-hub:ORG/REPO:FILE"

_LAYOUTS = {"segment": "ROOT/images/{training,validation}/*.jpg + ROOT/annotations/...*.png",
            "detect": "ROOT/annotations/instances_{train,val}2017.json + ROOT/{train,val}2017/"}
_HELP = {"segment": "semantic segmentation (Semantic FPN) on a RepViT backbone",
         "detect": "detection and instance segmentation (Mask R-CNN) on a RepViT backbone"}


def add_commands(commands) -> None:
    for task, recipe_cls in (("segment", SegmentRecipe), ("detect", DetectRecipe)):
        epilog = f"data layout: {_LAYOUTS[task]}"
        actions = commands.add_parser(task, help=_HELP[task], epilog=epilog).add_subparsers(
            dest="action", metavar="ACTION", required=True)
        p = actions.add_parser("train", help="train (torchrun for several GPUs); defaults are the paper's setup",
                               epilog=epilog)
        add_recipe_arguments(p, recipe_cls, "recipe file (YAML)")
        p.set_defaults(func=_ACTIONS[task, "train"])
        _add_val_parser(actions, task)
        p = actions.add_parser("predict", help="draw the predictions onto images, saved as PNG")
        p.add_argument("images", nargs="+", metavar="IMAGE")
        p.add_argument("--weights", required=True, metavar="CKPT", help=_CHECKPOINT_HELP)
        p.add_argument("--out", default=f"runs/{task}/predictions", metavar="DIR")
        add_device_argument(p)
        if task == "detect":
            p.add_argument("--score", type=float, default=0.5, help="draw detections above this score")
        p.set_defaults(func=_ACTIONS[task, "predict"])
        if task == "segment":
            p = actions.add_parser("export", help="export the deployed segmenter (ONNX, ...) with parity checks")
            p.add_argument("--weights", required=True, metavar="CKPT", help=_CHECKPOINT_HELP)
            p.add_argument("--format", nargs="+", default=["onnx"])
            p.add_argument("--img-size", type=int, default=512)
            p.add_argument("--out", default="exports", metavar="DIR")
            p.set_defaults(func=cmd_segment_export)


def _add_val_parser(actions, task: str) -> None:
    p = actions.add_parser("val", help="evaluate a trained checkpoint")
    p.add_argument("--weights", required=True, metavar="CKPT", help=_CHECKPOINT_HELP)
    p.add_argument("--data", default=None, help="dataset root (default: the one it was trained on)")
    if task == "detect":
        p.add_argument("--val-ann", default=None)
        p.add_argument("--val-images", default=None)
    else:
        p.add_argument("--test-mode", choices=("whole", "slide"), default=None)
    p.add_argument("--train-structure", action="store_true",
                   help="evaluate the training structure (default: the deployed, reparameterized one)")
    p.add_argument("--unfused", dest="train_structure", action="store_true", help=argparse.SUPPRESS)  # deprecated
    p.add_argument("--workers", type=int, default=2)
    add_device_argument(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_ACTIONS[task, "val"])


def _summary(result: dict, best_text: str) -> None:
    if is_main_process():
        print(f"{best_text} at iteration {result['best']['iter']}; checkpoints in {result['output']}"
              if result["best"]["iter"] else
              f"stopped at iteration {result['iter']} before any evaluation; checkpoints in {result['output']}")


def cmd_segment_train(args) -> int:
    result = train_segmenter(recipe_from_args(args, SegmentRecipe, "segment"))
    best = result["best"]
    _summary(result, f"best mIoU {best.get('mIoU', 0):.2f} (mAcc {best.get('mAcc', 0):.2f}, "
                     f"aAcc {best.get('aAcc', 0):.2f})")
    return 0


def cmd_segment_val(args) -> int:
    model, recipe, _ = load_segmenter(args.weights, deploy=not args.train_structure)
    if args.test_mode:
        recipe.test_mode = args.test_mode
    if args.data:
        recipe.data = args.data
    ctx = ProcessContext(device=resolve_device(args.device))
    task = SegmentationTask(recipe.ignore_index)
    loader = DataLoader(SegmentationFolder(recipe.data, "validation", recipe, False), batch_size=1,
                        num_workers=args.workers, collate_fn=task.collate)
    metrics = task.evaluate(model.to(ctx.device), loader, ctx, recipe)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}  aAcc {metrics['aAcc']:.2f}  "
          f"({'training' if args.train_structure else 'deployed'} structure, {recipe.test_mode} inference)")
    return 0


def cmd_segment_predict(args) -> int:
    for path in predict_segmentation(args.weights, args.images, args.out, device=args.device):
        print(path)
    return 0


def cmd_segment_export(args) -> int:
    model, recipe, _ = load_segmenter(args.weights)
    model.name = f"{recipe.model}_semantic_fpn"
    results = export(model, args.format, img_size=args.img_size, out_dir=args.out)
    for r in results:
        print(f"{r.format}: {r.status}  {r.path or ''}  {r.parity}  {r.detail}")
    return 0 if all(r.ok for r in results) else 1


def cmd_detect_train(args) -> int:
    result = train_detector(recipe_from_args(args, DetectRecipe, "detect"))
    best = result["best"]
    _summary(result, f"best box AP {best.get('bbox_AP', 0):.2f}"
                     + (f", mask AP {best['segm_AP']:.2f}" if "segm_AP" in best else ""))
    return 0


def cmd_detect_val(args) -> int:
    model, recipe, names = load_detector(args.weights, deploy=not args.train_structure)
    for key in ("data", "val_ann", "val_images"):
        if getattr(args, key):
            setattr(recipe, key, getattr(args, key))
    paths = recipe.paths()
    task = DetectionTask(recipe)
    task.val = CocoDataset(paths["val_images"], paths["val_ann"], False, task.masks, class_names=names)
    loader = DataLoader(task.val, batch_size=1, num_workers=args.workers, collate_fn=task.collate)
    ctx = ProcessContext(device=resolve_device(args.device))
    metrics = task.evaluate(model.to(ctx.device), loader, ctx, recipe)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    for kind in ("bbox", "segm"):
        if f"{kind}_AP" in metrics:
            print(f"{kind}: " + "  ".join(f"{k.split('_', 1)[1]} {fmt(v)}" for k, v in metrics.items()
                                          if k.startswith(kind)))
    return 0


def cmd_detect_predict(args) -> int:
    for path in predict_detections(args.weights, args.images, args.out, device=args.device, score_thresh=args.score):
        print(path)
    return 0


_ACTIONS = {("segment", "train"): cmd_segment_train, ("segment", "val"): cmd_segment_val,
            ("segment", "predict"): cmd_segment_predict, ("detect", "train"): cmd_detect_train,
            ("detect", "val"): cmd_detect_val, ("detect", "predict"): cmd_detect_predict}
