"""Plots, drawn with matplotlib's object API (no pyplot state, no backend switching): the Pareto
plot of the benchmark, the roadmap's latencies, a run's training curves.

matplotlib is optional (``pip install 'repvit-toolkit[plots]'``): without it every plot function
raises a :class:`~repvit.utils.UserError` saying so in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..models import get_variant
from ..utils.extras import require_extra

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["require_plots", "new_figure", "save_figure", "plot_pareto", "plot_roadmap", "plot_training_curves", "plot_sam_latency"]


def require_plots() -> None:
    """The one-line error when matplotlib is missing: commands call it before a long run, not after."""
    require_extra(["matplotlib"], "plots")


def new_figure(**kwargs) -> Figure:
    """A matplotlib ``Figure`` (no pyplot state); a one-line error when matplotlib is not installed."""
    require_plots()
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig: Figure, path, dpi: int = 120) -> Path:
    """Lay ``fig`` out and write it to ``path`` (folders created)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_pareto(report, path) -> Path:
    """Measured latency (x) against published top-1 (y), one panel per runtime, RepViT highlighted."""
    runtimes = list(dict.fromkeys(r["runtime"] for r in report.rows if r["status"] == "ok"))
    if not runtimes:
        raise ValueError("nothing was measured successfully, so there is nothing to plot")
    fig = new_figure(figsize=(6.5 * len(runtimes), 5))
    axes = fig.subplots(1, len(runtimes), squeeze=False)
    for ax, runtime in zip(axes[0], runtimes):
        points = [r for r in report.rows if r["runtime"] == runtime and r["status"] == "ok"
                  and r["published_top1"] is not None and r["structure"] == "deployed"
                  and not r["model"].startswith("timm:repvit")]  # the parity twin of ours, not a peer
        ours = sorted((r for r in points if r["family"] == "repvit"), key=lambda r: r["median_ms"])
        v2 = [r for r in ours if get_variant(r["model"]).version == "v2"]
        v1 = [r for r in ours if r not in v2]
        peers = [r for r in points if r["family"] != "repvit"]
        ax.scatter([r["median_ms"] for r in peers], [r["published_top1"] for r in peers], c="tab:gray", label="peers")
        ax.plot([r["median_ms"] for r in v2], [r["published_top1"] for r in v2], "o-", c="tab:red", label="RepViT")
        if v1:
            ax.scatter([r["median_ms"] for r in v1], [r["published_top1"] for r in v1], facecolors="none",
                       edgecolors="tab:red", label="RepViT (first version)")
        for r in points:
            ax.annotate(r["model"].removeprefix("repvit_"), (r["median_ms"], r["published_top1"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"measured latency, ms ({runtime}, {report.env['threads']} thread(s), batch {report.env['batch']})")
        ax.set_ylabel("published ImageNet-1k top-1 %")
        ax.set_title(runtime)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"{report.env.get('cpu', '')}, {report.env.get('date', '')[:10]}", fontsize=9)
    return save_figure(fig, path, dpi=120)


def plot_roadmap(result: dict, path) -> Path:
    """Measured and paper latency over the steps (two axes), and top-1 when trained."""
    rows = result["rows"]
    x = list(range(len(rows)))
    fig = new_figure(figsize=(11, 4.8))
    ax = fig.subplots()
    ax.plot(x, [r["latency_ms"] for r in rows], "o-", c="tab:red",
            label=f"measured here ({result['runtime']}, {result['env']['threads']} thread)")
    ax.set_ylabel("measured latency, ms", color="tab:red")
    ax.set_xticks(x, [r["id"] for r in rows], rotation=35, ha="right")
    ax.grid(alpha=0.3)
    paper = ax.twinx()
    paper.plot(x, [r["paper_latency_ms"] for r in rows], "s--", c="tab:blue", label="paper (iPhone 12, Core ML)")
    paper.set_ylabel("paper latency, ms", color="tab:blue")
    lines = ax.get_legend_handles_labels()[0] + paper.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper center", bbox_to_anchor=(0.5, -0.3),
              ncol=2, fontsize=8, frameon=False)
    ax.set_title("Roadmap: MobileNetV3-L to RepViT-M0.9")
    return save_figure(fig, path, dpi=120)


def plot_training_curves(history: list[dict], path) -> Path:
    """Train and val loss, and val top-1, over the epochs of a run's history."""
    epochs = [h["epoch"] for h in history]
    fig = new_figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    left.plot(epochs, [h.get("val_loss") for h in history], "o-", label="val")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    left.grid(alpha=0.3)
    right.plot(epochs, [h.get("val_top1") for h in history], "o-", c="tab:red")
    right.set_xlabel("epoch")
    right.set_ylabel("val top-1 %")
    right.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110)


def plot_sam_latency(reports: list, path) -> Path:
    """SAM encoders' measured latency (log scale), one group of bars per runtime, one panel per thread
    count (one report each), with the prompt decoder's per-prompt time beside them."""
    fig = new_figure(figsize=(7 * len(reports), 5.4))
    axes = fig.subplots(1, len(reports), squeeze=False)
    everyone = list(dict.fromkeys(r["model"] for report in reports for r in report.rows))
    others = iter(("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:gray", "tab:olive", "tab:cyan"))
    colours = {m: "tab:red" if m == "repvit_sam" else "tab:orange" if m.startswith("repvit") else next(others, "black")
               for m in everyone}
    for ax, report in zip(axes[0], reports):
        ok = [r for r in report.rows if r["status"] == "ok" and r["median_ms"]]
        runtimes = list(dict.fromkeys(r["runtime"] for r in ok))
        models = list(dict.fromkeys(r["model"] for r in ok))
        width = 0.8 / max(len(models), 1)
        for i, model in enumerate(models):
            cells = {r["runtime"]: r for r in ok if r["model"] == model}
            xs = [j + i * width for j, rt in enumerate(runtimes) if rt in cells]
            ys = [cells[rt]["median_ms"] for rt in runtimes if rt in cells]
            sizes = {cells[rt]["img_size"] for rt in cells}
            label = model + (f" ({sizes.pop()} px)" if len(sizes) == 1 and "decoder" not in model else "")
            ax.bar(xs, ys, width, label=label, color=colours[model],
                   hatch="//" if model.endswith("@train") or "decoder" in model else None, edgecolor="white")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(runtimes))], runtimes, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("median latency, ms (log scale)")
        ax.set_title(f"{report.env['threads']} thread(s), batch 1")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4)
    env = reports[0].env
    fig.suptitle(f"Segment Anything encoders and RepViT-SAM's decoder per prompt: {env.get('cpu', '')}, "
                 f"{env.get('date', '')[:10]}, random weights", fontsize=9)
    return save_figure(fig, path, dpi=120)
