"""Does `repvit sam distill` teach the student its teacher? Teacher agreement per epoch, beside a
randomly initialised student's.

A fixed budget on generated data, runnable on a CPU: shape images (``repvit.data.shapes_scene``),
a small teacher (SAM's ViT image encoder class at two blocks of width 64, ``vit_tiny``, random
weights, fixed seed) with SAM's prompt encoder and mask decoder (random too), and the RepViT-SAM
student, all at a reduced input size. Teacher agreement is the mIoU between the decoder's masks
from the student's and from the teacher's embedding, for random point and box prompts on the
held-out images (``repvit.sam.distill``); the random student is the run's own initial model,
evaluated the same way before any step.

Usage:  .venv/bin/python benchmarks/sam_distill.py [--images 640] [--img-size 64] [--epochs 8] [--out benchmarks/results]
Writes sam_distill.json and sam_distill.md (the README's table) into --out.
"""

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from repvit.data import shapes_scene
from repvit.sam.distill import SamDistillRecipe, SamDistillTask, distill_sam
from repvit.sam.teacher import random_teacher
from repvit.train import ProcessContext


def random_student_agreement(recipe: SamDistillRecipe) -> dict:
    """The metrics of the student the run starts from (the loop seeds before building it)."""
    task = SamDistillTask()
    _, held_out, _ = task.datasets(recipe)
    torch.manual_seed(recipe.seed)
    student = task.build_model(recipe)
    loader = DataLoader(held_out, batch_size=1, collate_fn=task.collate)
    return task.evaluate(student, loader, ProcessContext(), recipe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="generated images (a tenth held out)")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        images = work / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            shapes_scene(rng, args.img_size, 4)[0].save(images / f"shapes{i:04d}.png")
        torch.save(random_teacher("vit_tiny", args.img_size, seed=0).state_dict(), work / "teacher.pth")
        recipe = SamDistillRecipe.load(None, data=str(images), teacher="vit_tiny", teacher_weights=str(work / "teacher.pth"),
                                       teacher_cache=str(work / "cache"), img_size=args.img_size, epochs=args.epochs,
                                       batch_size=args.batch_size, lr=args.lr, val_split=0.1, workers=2, device="cpu",
                                       log_interval=10, output=str(work / "run"))
        start = time.perf_counter()
        baseline = random_student_agreement(recipe)
        result = distill_sam(recipe)
        seconds = time.perf_counter() - start

    epochs = [{"epoch": r["epoch"], **{k[len("val_"):]: v for k, v in r.items() if k.startswith("val_")}}
              for r in result["history"] if "val_teacher_mIoU" in r]
    report = {"setup": {**vars(args), "teacher": "vit_tiny (random, seed 0)", "student": "RepViT-SAM encoder (random "
                        "init, seed 0)", "threads": torch.get_num_threads(), "seconds": round(seconds, 1)},
              "random_student": baseline, "epochs": epochs}
    (out / "sam_distill.json").write_text(json.dumps(report, indent=2))
    lines = [f"| epoch | teacher agreement, mIoU % (points / boxes) | random student | embedding MSE (random: "
             f"{baseline['embedding_mse']:.3f}) |", "|---|---|---|---|"]
    for e in epochs:
        lines.append(f"| {e['epoch']} | {e['teacher_mIoU']:.1f} ({e['point_mIoU']:.1f} / {e['box_mIoU']:.1f}) | "
                     f"{baseline['teacher_mIoU']:.1f} | {e['embedding_mse']:.3f} |")
    table = "\n".join(lines) + "\n"
    (out / "sam_distill.md").write_text(table)
    print(table)
    final = epochs[-1]["teacher_mIoU"]
    print(f"teacher agreement after {args.epochs} epochs: {final:.1f} mIoU vs {baseline['teacher_mIoU']:.1f} for the "
          f"random student ({final - baseline['teacher_mIoU']:+.1f} points); {seconds:.0f} s on "
          f"{torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
