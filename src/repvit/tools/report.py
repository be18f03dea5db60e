"""A benchmark's result: the environment and one row per (model, runtime), as JSON, CSV or markdown."""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .targets import BenchTarget

__all__ = ["BenchReport", "empty_row", "fmt"]


@dataclass
class BenchReport:
    env: dict
    rows: list[dict]

    def to_json(self, path) -> None:
        Path(path).write_text(json.dumps({"env": self.env, "rows": self.rows}, indent=2))

    def to_csv(self, target) -> None:
        """Write the rows as CSV to a path or an open text file."""
        with (open(target, "w", newline="") if isinstance(target, (str, Path)) else contextlib.nullcontext(target)) as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in self.rows for k in row)))
            writer.writeheader()
            writer.writerows(self.rows)

    @classmethod
    def from_json(cls, path) -> "BenchReport":
        data = json.loads(Path(path).read_text())
        return cls(data["env"], data["rows"])

    def to_markdown(self) -> str:
        """One line per model, median latency per runtime side by side, sorted by the last runtime."""
        runtimes = list(dict.fromkeys(r["runtime"] for r in self.rows))
        models = list(dict.fromkeys(r["model"] for r in self.rows))
        cells = {(r["model"], r["runtime"]): r for r in self.rows}

        def latency(model, runtime):
            row = cells.get((model, runtime))
            if row is None:
                return "-"
            return f"{row['median_ms']:.2f}" if row["status"] == "ok" else row["status"]

        def sort_key(model):
            row = cells.get((model, runtimes[-1]))
            return (row is None or row["status"] != "ok", row["median_ms"] if row and row["median_ms"] else 0)

        head = ["model", "params M", "GMACs"] + [f"{r} ms" for r in runtimes] + ["published top-1 %", "published iPhone 12 ms"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model in sorted(models, key=sort_key):
            any_row = next(r for r in self.rows if r["model"] == model)
            top1 = any_row["published_top1"]
            lines.append("| " + " | ".join(
                [model, fmt(any_row["params_m"], ".2f"), fmt(any_row["gmacs"], ".3f")]
                + [latency(model, r) for r in runtimes]
                + [fmt(top1, ".1f") + (f" ({any_row['published_recipe']})" if top1 and any_row["published_recipe"] else ""),
                   fmt(any_row["published_iphone12_ms"], ".1f")]) + " |")
        return "\n".join(lines) + "\n"

    def row(self, model: str, runtime: str) -> dict | None:
        return next((r for r in self.rows if r["model"] == model and r["runtime"] == runtime), None)


def fmt(value, spec: str = ".2f") -> str:
    """A number for a table, or "-" for None."""
    return "-" if value is None else format(value, spec)


def empty_row(target: BenchTarget, runtime: str, common: dict) -> dict:
    """A row with every field, nothing measured yet."""
    return {"model": target.name, "family": target.family, "structure": target.structure, "runtime": runtime,
            "status": "ok", "reason": "", **common, "median_ms": None, "p10_ms": None, "p90_ms": None,
            "iqr_ms": None, "mean_ms": None, "std_ms": None, "spread_pct": None, "n": 0, "params_m": None,
            "gmacs": None, "gmacs_per_s": None, "parity_max_abs_diff": None, "parity_rel_diff": None, "prepare_s": None,
            "published_top1": target.published.get("top1"), "published_recipe": target.published.get("recipe"),
            "published_iphone12_ms": target.published.get("latency_ms"),
            "published_source": target.published.get("source")}
