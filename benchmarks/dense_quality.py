"""Dense tasks learn for real: train on generated shapes long enough on a CPU to reach box/mask AP
and mIoU far above chance, and measure what reparameterization buys a dense backbone at 512x512.

1. Semantic FPN on RepViT (`repvit segment train`) on coloured shapes in ADE20K's layout
   (background + 3 shape classes; chance mIoU ~ 25%).
2. Mask R-CNN on RepViT + FPN (`repvit detect train`) on the same kind of scenes in COCO format
   (3 classes; chance AP ~ 0).
3. Backbone latency at 512x512 (the paper's dense-task latency input), training structure vs
   reparameterized, eager PyTorch, interleaved in one run.

Usage:  .venv/bin/python benchmarks/dense_quality.py [--model repvit_m0_9] [--out runs/dense_quality]
        [--seg-iters 400] [--det-epochs 12] [--tasks segment,detect]
Prints a markdown summary and writes it to OUT/summary.md (the README quotes it).
"""

import argparse
import json
import logging
import time
from pathlib import Path

import torch

import repvit
from repvit.data import make_shapes_coco, make_shapes_segmentation
from repvit.dense import DetectRecipe, SegmentRecipe, train_detector, train_segmenter
from repvit.tools import interleaved, summarize


def backbone_latency(model_name: str, size: int = 512, rounds: int = 10, iters: int = 3) -> dict:
    """Median ms of the training-structure and the deployed backbone, timed interleaved."""
    train = repvit.create_model(model_name, features_only=True).eval()
    fused = repvit.reparameterize(train)
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        samples = interleaved([("train", lambda: train(x)), ("fused", lambda: fused(x))], warmup=1, rounds=rounds,
                              iters=iters)
    return {name: summarize(times)["median_ms"] for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="repvit_m0_9")
    parser.add_argument("--out", default="runs/dense_quality")
    parser.add_argument("--seg-iters", type=int, default=400)
    parser.add_argument("--det-epochs", type=int, default=12)
    parser.add_argument("--tasks", default="segment,detect", help="which to train: segment, detect (or none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    lines = [f"Backbone {args.model}, {torch.get_num_threads()} threads, torch {torch.__version__}", ""]
    tasks = {t.strip() for t in args.tasks.split(",")}
    if "segment" in tasks:
        start = time.perf_counter()
        seg_data = make_shapes_segmentation(out / "seg_data", n_train=160, n_val=40, size=128)
        seg = train_segmenter(SegmentRecipe.load(
            None, model=args.model, data=str(seg_data), num_classes=4, crop_size=128, scale=(160, 128),
            ratio_range=(0.75, 1.25), batch_size=8, workers=2, lr=1e-3, max_iters=args.seg_iters,
            eval_interval=args.seg_iters // 4, log_interval=50, output=str(out / "segment")))
        seg_time = time.perf_counter() - start
        best = seg["best"]
        lines.append(f"Semantic FPN, {args.seg_iters} iterations x 8 images (128 px crops) in {seg_time / 60:.1f} min: "
                     f"mIoU {best['mIoU']:.1f}, mAcc {best['mAcc']:.1f}, aAcc {best['aAcc']:.1f} "
                     f"(per class IoU {best['per_class_IoU']}; chance mIoU ~25)")
    if "detect" in tasks:
        start = time.perf_counter()
        det_data = make_shapes_coco(out / "det_data", n_train=160, n_val=40, size=128)
        det = train_detector(DetectRecipe.load(
            None, model=args.model, data=str(det_data), min_size=128, max_size=128, batch_size=4, workers=2,
            lr=3e-4, epochs=args.det_epochs, lr_steps=(args.det_epochs * 2 // 3, args.det_epochs * 11 // 12),
            warmup_iters=50, rpn_proposals=300, roi_samples=128, log_interval=20, output=str(out / "detect")))
        det_time = time.perf_counter() - start
        best = det["best"]
        lines.append(f"Mask R-CNN, {args.det_epochs} epochs x 160 images (128 px) in {det_time / 60:.1f} min: box AP "
                     f"{best['bbox_AP']:.1f} (AP50 {best['bbox_AP50']:.1f}), mask AP {best['segm_AP']:.1f} "
                     f"(AP50 {best['segm_AP50']:.1f}); chance ~0")
    latency = backbone_latency(args.model)
    lines.append(f"Backbone at 512x512, eager, batch 1: training structure {latency['train']:.1f} ms, "
                 f"reparameterized {latency['fused']:.1f} ms ({latency['train'] / latency['fused']:.2f}x)")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps({"latency_ms": latency}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
