"""``repvit roadmap``: every step from MobileNetV3-L to RepViT-M0.9, measured here beside the paper
(params, MACs, latency on one runtime, the direction of each change), optionally trained.

The steps themselves are specs in :mod:`repvit.models.roadmap`.
"""

from __future__ import annotations

from pathlib import Path

from ..data import make_digits_image_folder
from ..factory import create_model
from ..models.roadmap import STEPS, get_step
from ..train import load_recipe, train
from ..train.run_folder import holds_run_of
from .bench import run_bench
from .complexity import count_macs, count_params
from .report import fmt

__all__ = ["roadmap_report", "roadmap_markdown"]


def _direction(prev: float | None, cur: float | None, flat_tolerance: float = 0.03) -> str:
    if prev is None or cur is None:
        return "-"
    change = (cur - prev) / prev
    if abs(change) <= flat_tolerance:
        return "flat"
    return "up" if change > 0 else "down"


def roadmap_report(runtime: str = "executorch", *, threads: int = 1, img_size: int = 224, warmup: int = 10,
                   rounds: int = 10, iters: int = 10, steps=None, train=None, epochs: int | None = None,
                   config: str | None = None, output="runs/roadmap", progress: bool = True) -> dict:
    """Params, MACs and measured latency of every step beside the paper's numbers; with ``train``
    (an ImageFolder root or ``"digits"``) also each step's top-1 after training with one recipe."""
    chosen = [get_step(s) for s in steps] if steps else STEPS
    report = run_bench([s.model for s in chosen], [runtime], threads=threads, img_size=img_size, warmup=warmup,
                       rounds=rounds, iters=iters, progress=progress)
    rows, previous = [], None
    for step in chosen:
        bench_row = report.row(step.model, runtime)
        deployed = create_model(step.model, deploy=True)
        row = {
            "step": step.index, "id": step.id, "model": step.model, "title": step.title, "change": step.change,
            "params_m": count_params(deployed) / 1e6, "gmacs": count_macs(deployed, img_size) / 1e9,
            "latency_ms": bench_row["median_ms"], "latency_p90_ms": bench_row["p90_ms"],
            "status": bench_row["status"], "paper_latency_ms": step.paper_latency_ms, "paper_top1": step.paper_top1,
        }
        if previous is not None:
            measured = _direction(previous["latency_ms"], row["latency_ms"])
            paper = _direction(previous["paper_latency_ms"], row["paper_latency_ms"], 0.0)
            # None: a change within the measurement's noise here (3%) cannot be called either way
            agrees = None if "-" in (measured, paper) or (measured == "flat" and paper != "flat") else measured == paper
            row.update(measured_direction=measured, paper_direction=paper, agrees=agrees)
        rows.append(row)
        previous = row
    result = {"env": report.env, "runtime": runtime, "rows": rows}
    if train is not None:
        _train_steps(result, chosen, train, epochs, config, Path(output))
    return result


def _train_steps(result: dict, steps, data, epochs, config, output: Path) -> None:
    if data == "digits":
        data, config = make_digits_image_folder(output / "digits"), config or "digits"
    overrides = {"epochs": epochs} if epochs else {}
    for row, step in zip(result["rows"], steps):
        # the roadmap's accuracies are without distillation (paper, section 3)
        folder = output / step.id  # a rerun replaces its own earlier run, never another one
        recipe = load_recipe(config, model=step.model, data=str(data), output=str(folder), distillation="none",
                             teacher_weights=None, **overrides,
                             overwrite=holds_run_of(folder, model=step.model, data=str(Path(data).resolve())))
        trained = train(recipe)
        row.update(top1=trained.best_top1, top1_epoch=trained.best_epoch, train_epochs=recipe.epochs)
    result["train"] = {"data": str(data), "config": config, "epochs": epochs}


def roadmap_markdown(result: dict) -> str:
    """The report as a markdown table (the README's)."""
    trained = "train" in result
    head = ["#", "step", "change", "params M", "GMACs", f"{result['runtime']} ms (here)", "iPhone 12 ms (paper)",
            "direction here / paper", "top-1 % (paper)"] + (["top-1 % (here)"] if trained else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        direction = "-" if "agrees" not in r else f"{r['measured_direction']} / {r['paper_direction']}" + (
            " (within noise)" if r["agrees"] is None else " (agrees)" if r["agrees"] else " (differs)")
        cells = [str(r["step"]), r["title"], r["change"], fmt(r["params_m"]), fmt(r["gmacs"], ".3f"),
                 fmt(r["latency_ms"]), fmt(r["paper_latency_ms"]), direction, fmt(r["paper_top1"], ".1f")]
        cells += [fmt(r.get("top1"), ".2f")] if trained else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
