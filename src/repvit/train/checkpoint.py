"""The run folder both loops write: checkpoints (atomic), ``metrics.jsonl``, ``recipe.yaml``, and
finding the checkpoint to resume from.

A run checkpoint is a dict with ``format`` = ``repvit-<kind>`` (``train``, ``detect``, ``segment``),
read back only through :func:`read_run_checkpoint`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..utils import param
from ..weights import CheckpointError, atomic_write, load_torch_file
from ..weights.download import is_remote, resolve_source
from ..weights.files import append_text

__all__ = ["LAST", "BEST", "locate_run", "resume_path", "read_run_checkpoint", "write_metrics", "rng_state"]

LAST, BEST = "checkpoint-last.pth", "checkpoint-best.pth"

def locate_run(output, resume) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from. ``resume``: None (a new run in ``output``),
    ``"auto"`` (``output``'s checkpoint-last.pth when there is one) or a checkpoint (or run folder)
    path, whose folder is the run folder, whatever ``output`` says."""
    if resume is None:
        return Path(output), None
    if resume == "auto":
        last = Path(output) / LAST
        return Path(output), last if last.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise CheckpointError(f"{param('resume')} {resume}: no such checkpoint")
    return path.parent, path


def resume_path(resume: str | None, output) -> Path | None:
    """The checkpoint to resume from (see :func:`locate_run`, which also gives the run folder)."""
    return locate_run(output, resume)[1]


#: The command that writes each kind of run checkpoint, where it is not ``repvit <kind> train``.
_COMMANDS = {"train": "repvit train", "sam-distill": "repvit sam distill"}


def run_command(kind: str) -> str:
    """The command line that trains runs of ``kind`` (as checkpoints name it: "train", "segment", ...)."""
    return _COMMANDS.get(kind, f"repvit {kind} train")


def read_run_checkpoint(path, kind: str, argument: str | None = None) -> dict:
    """A checkpoint written by ``repvit <kind> train`` (a path, URL or Hub file); ``argument`` names the
    parameter it came from."""
    label = f"{param(argument)} {path}" if argument else str(path)
    if is_remote(path):
        path = resolve_source(path)
    state = load_torch_file(path, label=label)
    if not isinstance(state, dict) or state.get("format") != f"repvit-{kind}":
        raise CheckpointError(f"{label}: not a checkpoint of `{run_command(kind)}`")
    return state


def write_metrics(output: Path, records: list[dict], append: bool = True) -> None:
    """Records as lines of ``metrics.jsonl``; ``append=False`` starts the file over with them (atomically:
    resume rewrites the log of a killed run to exactly the epochs of its checkpoint)."""
    lines = "".join(json.dumps(record) + "\n" for record in records)
    if append:
        append_text(Path(output) / "metrics.jsonl", lines)
    else:
        atomic_write(Path(output) / "metrics.jsonl", lambda tmp: tmp.write_text(lines))


def rng_state() -> dict:
    """Every generator's state (stored in checkpoints for inspection: resume re-seeds instead)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
