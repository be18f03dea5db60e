"""Fault injection: SIGKILL a short training run at random instants, resume it each time, and check
that it ends exactly where an uninterrupted run ends, in a consistent run folder.

A tiny classification run (repvit_m0_6, 3 classes of generated 32-px images, batch 4, `repvit
train`) is first trained without interruption: the reference, whose wall time T (process start-up
included) sets the range of the kill instants. Then the same run is started in a fresh folder
(`--resume auto`) and killed with SIGKILL, resumed and killed again, ... until a process completes;
new rounds in new folders follow until ``--kills`` kills have landed (a kill lands when the process
was still running). Each start draws (fixed seed) either a delay uniform in [0, T), or, every
other start on average, an instant inside the checkpoint writes: the script watches the folder
for the n-th checkpoint temporary file this process creates (n = 1..3; an epoch writes
checkpoint-last, then for a new best checkpoint-best and the deployed best) and kills within
0.15 s of its appearance, during that write or between it and the next. Each
round's folder must then be consistent and equal to the reference:

- ``checkpoint-last.pth``, ``checkpoint-best.pth`` and ``model-best-deployed.safetensors`` hold
  tensors equal to the reference's, bit for bit;
- ``metrics.jsonl`` holds the reference's records (timings aside);
- the best files hold the best epoch that checkpoint-last.pth and metrics.jsonl record, and the
  deployed best reproduces the recorded best top-1 on the val images;
- no temporary file and no lock file remain.

It prints one line per kill (when, what the folder held, whether a write was cut, whether the next
start repaired the best files), then a summary; exit status 1 when any check fails.

Usage:  .venv/bin/python benchmarks/fault_injection.py [--kills 20] [--seed 0] [--epochs 4] [--work DIR]
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import repvit
from repvit.train import build_eval_loader, evaluate
from repvit.weights.files import read_safetensors

FILES = ("checkpoint-last.pth", "checkpoint-best.pth", "model-best-deployed.safetensors")
TIMINGS = ("images_per_s", "train_seconds")


def make_data(root: Path, per_class: int = 8, size: int = 32) -> Path:
    """Three classes of coloured noise (one colour each): learnable in a few epochs, yet not perfectly."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.full((size, size, 3), 90.0)
                pixels[..., c] = 150
                pixels = np.clip(pixels + rng.normal(0, 60, pixels.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def command(data: Path, output: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "repvit.cli", "train", "--config", "digits", "--model", "repvit_m0_6", "--data",
            str(data), "--output", str(output), "--img-size", "32", "--batch-size", "4", "--epochs", str(epochs),
            "--warmup-epochs", "0", "--resume", "auto"]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """The command in a new process, its messages into ``log`` (a file: a pipe nobody reads would fill)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as stderr:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env)


def kill_at_random(process: subprocess.Popen, folder: Path, span: float, rng: random.Random) -> str:
    """SIGKILL ``process`` at a random instant (see the module docstring); says when, or "" when it ended first."""
    if rng.random() < 0.5:
        delay = rng.uniform(0, span)
        try:
            process.wait(timeout=delay)
            return ""
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return f"at {delay:5.2f} s"
    def temporaries() -> set[str]:  # of checkpoints (not of recipe.yaml or metrics.jsonl)
        return {p.name for p in folder.iterdir() if p.name.endswith(".tmp") and (".pth." in p.name or
                ".safetensors." in p.name)} if folder.is_dir() else set()

    nth, left_over, seen = rng.randint(1, 3), temporaries(), set()  # left over: a killed writer's, removed at start
    while len(seen) < nth:
        if process.poll() is not None:
            return ""
        seen |= temporaries() - left_over
        time.sleep(0.001)
    delay = rng.uniform(0, 0.15)
    time.sleep(delay)
    if process.poll() is not None:
        return ""
    process.send_signal(signal.SIGKILL)
    process.wait()
    return f"{delay * 1000:3.0f} ms after checkpoint temporary file {nth} appeared"


def tensors(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    state = torch.load(path, weights_only=True)
    return {**{f"model.{k}": v for k, v in state["state_dict"].items()},
            **{f"optimizer.{k}": v for k, v in _flatten(state["optimizer"]["state"]).items()}}


def _flatten(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree} if isinstance(tree, torch.Tensor) else {}


def records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def problems(folder: Path, reference: Path, data: Path) -> list[str]:
    """Every way ``folder`` differs from the reference run or is inconsistent in itself."""
    found = [f"left behind: {p.name}" for p in folder.iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]
    for name in FILES:
        ours, theirs = tensors(folder / name), tensors(reference / name)
        differ = [k for k in theirs if k not in ours or not torch.equal(ours[k], theirs[k])]
        if differ or ours.keys() != theirs.keys():
            found.append(f"{name}: {len(differ)} tensors differ from the uninterrupted run's (e.g. {differ[:1]})")
    if records(folder) != records(reference):
        found.append("metrics.jsonl differs from the uninterrupted run's")
    last = torch.load(folder / FILES[0], weights_only=True)
    best = last["best"]
    if [r["epoch"] for r in records(folder)] != [h["epoch"] for h in last["history"]]:
        found.append("metrics.jsonl and checkpoint-last.pth hold different epochs")
    if max(r["val_top1"] for r in records(folder)) != best["top1"]:
        found.append("the recorded best is not the best of metrics.jsonl")
    if torch.load(folder / FILES[1], weights_only=True)["epoch"] + 1 != best["epoch"]:
        found.append("checkpoint-best.pth does not hold the best epoch")
    deployed = repvit.create_model("repvit_m0_6", weights=folder / FILES[2])
    metadata = read_safetensors(folder / FILES[2])[1]
    if int(metadata["epoch"]) != best["epoch"]:
        found.append("model-best-deployed.safetensors does not hold the best epoch")
    top1 = evaluate(deployed, build_eval_loader(data / "val", 32, 1.0, 64))["top1"]
    if abs(top1 - best["top1"]) > 1e-6:
        found.append(f"the deployed best scores {top1:.2f}, the run reports {best['top1']:.2f}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="repvit-faults-"))
    data = make_data(work / "data")
    began = time.perf_counter()
    reference = work / "reference"
    log = work / "process.log"
    process = start(command(data, reference, args.epochs), log)
    if process.wait() != 0:
        print(log.read_text())
        return 1
    span = time.perf_counter() - began
    print(f"reference run: {args.epochs} epochs in {span:.1f} s (kill instants drawn from [0, {span:.1f}) s)")

    rng, landed, rounds, failures = random.Random(args.seed), 0, 0, []
    cut_writes = repairs = 0
    while landed < args.kills:
        rounds += 1
        folder = work / f"round{rounds}"
        while True:
            process = start(command(data, folder, args.epochs), log)
            when = kill_at_random(process, folder, span, rng)
            err = log.read_text()
            repairs += "repaired" in err
            if process.returncode == 0:
                break
            if process.returncode != -signal.SIGKILL:
                failures.append(f"round {rounds}: exit {process.returncode}: {err.strip().splitlines()[-1:]}")
                break
            landed += 1
            held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            cut = [n for n in held if n.endswith(".tmp")]
            cut_writes += bool(cut)
            epoch = torch.load(folder / FILES[0], weights_only=True)["epoch"] + 1 if FILES[0] in held else 0
            print(f"kill {landed:2d} (round {rounds}) {when}: checkpoint-last at epoch {epoch}"
                  + (f", write cut: {', '.join(cut)}" if cut else ""))
        if process.returncode == 0:
            found = problems(folder, reference, data)
            failures += [f"round {rounds}: {p}" for p in found]
            print(f"round {rounds} completed: " + ("consistent, equal to the uninterrupted run" if not found else
                                                   "; ".join(found)))
    print(f"\n{landed} SIGKILLs in {rounds} round(s) (seed {args.seed}); {cut_writes} cut a write; "
          f"{repairs} resume(s) repaired the best files; {len(failures)} problem(s)")
    for failure in failures:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
