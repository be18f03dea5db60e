"""The quickstart (``make demo``): train, reparameterize, export and check, on embedded data.

No data and no download: scikit-learn's handwritten digits become an ImageFolder tree, a RepViT is
trained from scratch with the same engine as ``repvit train`` (the ``digits`` recipe), the best
checkpoint is reparameterized (both structures evaluated on the same images), exported to ONNX and
ExecuTorch and evaluated again inside those runtimes. Everything lands in ``runs/quickstart``,
with ``report.md`` and a plot of the training curves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data import batch_samples, make_digits_image_folder
from ..export import FORMATS, evaluate_artifact, export
from ..factory import create_model
from ..reparam import reparameterize
from ..train import build_eval_loader, evaluate_pair, load_recipe, train
from ..train.run_folder import holds_run_of
from ..utils.extras import require_extra
from .plots import plot_training_curves
from .timing import machine_info

__all__ = ["run_quickstart"]


def _runtime_accuracy(run, loader, reference: torch.nn.Module) -> dict:
    """Top-1 of an exported artifact on the val images, and its agreement with PyTorch."""
    stats = evaluate_artifact(run, batch_samples(loader), reference)  # exported programs take batch 1
    return {"top1": stats["top1"], "agreement": stats["agreement"], "max_abs_logit_diff": stats["max_abs_diff"],
            "n": stats["images"]}


def run_quickstart(model: str = "repvit_m0_9", epochs: int | None = None, output="runs/quickstart",
                   formats=("onnx", "executorch"), seed: int = 0) -> dict:
    """Run the whole quickstart; returns the numbers that ``report.md`` shows."""
    require_extra(["sklearn", "matplotlib"], "quickstart")  # the digits and the curves: say so before training
    start = time.perf_counter()
    output = Path(output)
    data = make_digits_image_folder(output / "data")
    overrides = {"epochs": epochs} if epochs else {}
    # a rerun replaces its own earlier run, never another run that happens to be there
    recipe = load_recipe("digits", model=model, data=str(data), output=str(output / "train"), seed=seed,
                         overwrite=holds_run_of(output / "train", data=str(data.resolve())), **overrides)
    result = train(recipe)
    train_seconds = time.perf_counter() - start

    # Both structures on the same validation images.
    trained = create_model(model, weights=result.checkpoint_best)
    deployed = reparameterize(trained)
    loader = build_eval_loader(data / "val", recipe.img_size, recipe.crop_pct, 128, 0)
    pair = evaluate_pair(trained, deployed, loader)

    # Export, then evaluate inside each runtime.
    exported = export(deployed, list(formats), img_size=recipe.img_size, out_dir=output / "export") if formats else []
    runtimes = {}
    for r in exported:
        if r.status != "ok":
            runtimes[r.format] = {"status": r.status, "detail": r.detail or r.parity}
            continue
        run = FORMATS[r.format].load(Path(r.path))
        runtimes[r.format] = {"status": "ok", "size_mb": r.size_mb, "parity": r.parity,
                              **_runtime_accuracy(run, loader, deployed)}
    summary = {
        "model": model, "epochs": recipe.epochs, "best_epoch": result.best_epoch, "train_seconds": train_seconds,
        "train_structure": pair["train"], "deployed": pair["deployed"], "val_images": pair["n"],
        "prediction_agreement": pair["prediction_agreement"], "max_abs_logit_diff": pair["max_abs_logit_diff"],
        "runtimes": runtimes, "history": result.history, "total_seconds": time.perf_counter() - start,
        "machine": f"{machine_info()['cpu']}, {torch.get_num_threads()} threads",
        "checkpoint": str(result.checkpoint_best), "deployed_weights": str(result.deployed_best),
    }
    plot_training_curves(result.history, output / "curves.png")
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    (output / "report.md").write_text(_report(summary, recipe))
    return summary


def _report(s: dict, recipe) -> str:
    lines = [
        f"# Quickstart report: {s['model']} on the digits",
        "",
        f"Trained from scratch for {s['epochs']} epochs on scikit-learn's handwritten digits "
        f"(8x8 upscaled to {recipe.img_size} px, 10 classes, {s['val_images']} validation images), "
        f"recipe `digits`, in {s['train_seconds']:.0f} s on {s['machine']}; best epoch {s['best_epoch']}.",
        "",
        "| structure | val top-1 % | val top-5 % |",
        "|---|---|---|",
        f"| training (multi-branch, BatchNorm) | {s['train_structure']['top1']:.2f} | {s['train_structure']['top5']:.2f} |",
        f"| reparameterized (deployed) | {s['deployed']['top1']:.2f} | {s['deployed']['top5']:.2f} |",
        "",
        f"The two structures agree on {s['prediction_agreement']:.2f}% of the predictions; the largest "
        f"logit difference is {s['max_abs_logit_diff']:.1e}.",
        "",
        "| exported format | status | size MB | parity on a random input | val top-1 % in the runtime | "
        "agreement with PyTorch % | max logit diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt, r in s["runtimes"].items():
        if r["status"] != "ok":
            lines.append(f"| {fmt} | {r['status']}: {r['detail']} | | | | | |")
            continue
        lines.append(f"| {fmt} | ok | {r['size_mb']:.1f} | {r['parity']} | {r['top1']:.2f} | {r['agreement']:.2f} | "
                     f"{r['max_abs_logit_diff']:.1e} |")
    lines += ["", "![training curves](curves.png)", "",
              "| epoch | train loss | val loss | val top-1 % | lr | images/s |", "|---|---|---|---|---|---|"]
    for h in s["history"]:
        lines.append(f"| {h['epoch']} | {h['train_loss']:.4f} | {h.get('val_loss', float('nan')):.4f} | "
                     f"{h.get('val_top1', float('nan')):.2f} | {h['lr']:.2e} | {h['images_per_s']:.0f} |")
    lines += ["", f"Checkpoint: `{s['checkpoint']}`; deployed weights: `{s['deployed_weights']}`.",
              f"Total time {s['total_seconds']:.0f} s. Reproduce with `repvit quickstart --model {s['model']}`.", ""]
    return "\n".join(lines)
