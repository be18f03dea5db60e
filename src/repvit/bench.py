"""Latency benchmark of RepViT and its peers, side by side, on the runtimes phones use.

Protocol: every model in its deployed (reparameterized) form unless asked otherwise; batch 1;
a fixed thread count for every runtime (ExecuTorch's XNNPACK threadpool included); each artifact
checked against eager PyTorch; warm-up; then ``rounds`` interleaved rounds of ``iters`` timed
runs per model, the order rotating each round so that machine drift favours no model. Reports
median, p10/p90, IQR and spread per model, with the machine and library versions.
Latency numbers from shared machines are only comparable within one run.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import difflib
import fnmatch
import json
import os
import platform
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .complexity import count_macs, count_params
from .export import FORMATS, _first_line, _missing, _versions, export_executorch, load_executorch, set_executorch_threads
from .models import create_model, get_variant, list_models
from .published import peer_names, published, published_peer, source_text

__all__ = ["RUNTIMES", "BenchTarget", "BenchReport", "resolve_models", "run_bench", "run_throughput",
           "matmul_peak_gflops", "plot_pareto", "machine_info"]

@dataclass(frozen=True)
class Runtime:
    name: str
    format: str | None  # the export format it runs (None: eager PyTorch)
    int8: bool = False

    @property
    def requires(self) -> tuple[str, ...]:
        return FORMATS[self.format].requires if self.format else ()


RUNTIMES = {r.name: r for r in (
    Runtime("eager", None),
    Runtime("onnxruntime", "onnx"),
    Runtime("executorch", "executorch"),
    Runtime("litert", "litert"),
    Runtime("ncnn", "ncnn"),
    Runtime("openvino", "openvino"),
    Runtime("onnxruntime_int8", "onnx", int8=True),
    Runtime("executorch_int8", "executorch", int8=True),
)}
#: What ``--int8`` adds for each runtime that has an int8 path.
INT8_TWINS = {"onnxruntime": "onnxruntime_int8", "executorch": "executorch_int8"}


# ----------------------------------------------------------------------------------------------
# What to measure
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchTarget:
    name: str  # as shown: "repvit_m0_9", "repvit_m0_9@train", "timm:repvit_m0_9", "mobileone_s1"
    family: str  # "repvit" or "peer"
    structure: str  # "deployed" or "train"
    build: Callable[[], nn.Module] = field(repr=False)
    published: dict = field(default_factory=dict)


def _ours(name: str, structure: str) -> BenchTarget:
    paper = published(name)
    top1 = paper.get("top1", {})
    recipe = "dist_300e" if "dist_300e" in top1 else next(iter(top1), None)
    build = (lambda: create_model(name, deploy=True)) if structure == "deployed" else (lambda: create_model(name).eval())
    return BenchTarget(name + ("@train" if structure == "train" else ""), "repvit", structure, build, {
        "top1": top1.get(recipe), "recipe": recipe and recipe.split("_")[0], "latency_ms": paper.get("latency_ms"),
        "source": source_text(paper.get("source")),
    })


def _timm(name: str, structure: str) -> BenchTarget:
    import timm

    arch = name.removeprefix("timm:")
    if arch not in timm.list_models():
        raise ValueError(f"unknown timm model {arch!r}")

    def build():
        model = timm.create_model(arch, pretrained=False).eval()
        if structure == "deployed":
            from timm.utils.model import reparameterize_model

            model = reparameterize_model(model)
        return model

    paper = published_peer(name)
    shown = name + ("@train" if structure == "train" else "")
    return BenchTarget(shown, "peer", structure, build, {
        "top1": paper.get("top1"), "recipe": paper.get("recipe"), "latency_ms": paper.get("latency_ms"),
        "source": source_text(paper.get("source")),
    })


def resolve_models(spec="all", train_structure: bool = False) -> list[BenchTarget]:
    """Targets for a comma-separated list of names, patterns and groups.

    Groups: ``all``, ``repvit`` (every variant), ``peers`` (the default peer list). Names: our
    variants (fnmatch patterns allowed), ``timm:NAME`` or any timm model name; ``NAME@train``
    measures the training structure. ``train_structure`` adds ``@train`` twins of every RepViT.
    """
    tokens = [t.strip() for item in ([spec] if isinstance(spec, str) else spec) for t in str(item).split(",") if t.strip()]
    if not tokens:
        raise ValueError("--models is empty")
    targets: list[BenchTarget] = []
    for token in tokens:
        base, _, suffix = token.partition("@")
        if suffix not in ("", "train"):
            raise ValueError(f"--models {token!r}: the only suffix is @train")
        structure = "train" if suffix else "deployed"
        ours = list_models() + list_models(roadmap=True)
        if base in ("all", "repvit", "peers"):
            names = (list_models() if base != "peers" else []) + (peer_names() if base != "repvit" else [])
        elif fnmatch.filter(ours, base):
            names = fnmatch.filter(ours, base)
        else:
            names = [base]
        for name in names:
            if name in ours:
                targets.append(_ours(name, structure))
            else:
                try:
                    targets.append(_timm(name, structure))
                except ValueError:
                    close = difflib.get_close_matches(name, list_models() + peer_names(), n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise ValueError(f"--models: unknown model {name!r}.{hint} Use a RepViT name, a timm "
                                     "model name, timm:NAME, or the groups all, repvit, peers") from None
    if train_structure:
        targets += [_ours(t.name, "train") for t in targets if t.family == "repvit" and t.structure == "deployed"]
    unique = {t.name: t for t in targets}
    return list(unique.values())


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = match.group(1).strip() if match else cpu
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": _versions()}
    with contextlib.suppress(Exception):
        import timm

        info["versions"]["timm"] = timm.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _median_seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(n: int = 1024, repeats: int = 10, workdir=None) -> dict[str, float]:
    """Single-thread float32 ``n x n`` matrix multiply rate (GFLOP/s) per GEMM library here.

    torch (MKL/oneDNN), numpy (its BLAS) and XNNPACK (through ExecuTorch, when installed) often
    differ by 2x on the same core, so all are reported; the largest is the machine's measured peak.
    Call before anything sets ExecuTorch's threadpool to more than one thread.
    """
    import numpy as np

    flops = 2 * n**3
    rates = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates["torch"] = flops / _median_seconds(lambda: a @ b, repeats) / 1e9
    finally:
        torch.set_num_threads(previous)
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_limits

        an, bn = a.numpy(), b.numpy()
        with threadpool_limits(1):
            rates["numpy"] = flops / _median_seconds(lambda: an @ bn, repeats) / 1e9
    if not _missing(RUNTIMES["executorch"].requires):
        with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as tmp:
            set_executorch_threads(1)
            path = Path(workdir or tmp) / "matmul.pte"
            export_executorch(nn.Linear(n, n, bias=False).eval(), a, path)
            run = load_executorch(path)
            rates["xnnpack"] = flops / _median_seconds(lambda: run(a), repeats) / 1e9
    rates["peak"] = max(rates.values())
    return rates


def _summary(samples: list[float]) -> dict:
    ms = sorted(s * 1e3 for s in samples)
    # 5% steps: q[1]=p10, q[4]=p25, q[14]=p75, q[17]=p90
    q = statistics.quantiles(ms, n=20, method="inclusive") if len(ms) > 1 else ms * 19
    median = statistics.median(ms)
    return {"median_ms": median, "p10_ms": q[1], "p90_ms": q[17], "iqr_ms": q[14] - q[4],
            "mean_ms": statistics.fmean(ms), "std_ms": statistics.pstdev(ms),
            "spread_pct": 100 * (q[17] - q[1]) / median, "n": len(ms)}


def _prepare(runtime: str, model: nn.Module, example: torch.Tensor, workdir: Path, tag: str, threads: int,
             calibration: list[torch.Tensor] | None = None) -> Callable[[], torch.Tensor]:
    spec = RUNTIMES[runtime]
    if spec.format is None:
        return lambda: model(example)
    fmt = FORMATS[spec.format]
    path = workdir / (re.sub(r"[^\w.-]", "_", tag) + fmt.suffix)
    if spec.int8:
        fmt.write_int8(model, example, path, calibration or [example])
    else:
        fmt.write(model, example, path)
    run = fmt.load(path, threads=threads)
    return lambda: torch.from_numpy(run(example))


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
                [model, _fmt(any_row["params_m"], ".2f"), _fmt(any_row["gmacs"], ".3f")]
                + [latency(model, r) for r in runtimes]
                + [_fmt(top1, ".1f") + (f" ({any_row['published_recipe']})" if top1 and any_row["published_recipe"] else ""),
                   _fmt(any_row["published_iphone12_ms"], ".1f")]) + " |")
        return "\n".join(lines) + "\n"

    def row(self, model: str, runtime: str) -> dict | None:
        return next((r for r in self.rows if r["model"] == model and r["runtime"] == runtime), None)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row(target: BenchTarget, runtime: str, common: dict) -> dict:
    return {"model": target.name, "family": target.family, "structure": target.structure, "runtime": runtime,
            "status": "ok", "reason": "", **common, "median_ms": None, "p10_ms": None, "p90_ms": None,
            "iqr_ms": None, "mean_ms": None, "std_ms": None, "spread_pct": None, "n": 0, "params_m": None,
            "gmacs": None, "gmacs_per_s": None, "parity_max_abs_diff": None, "parity_rel_diff": None, "prepare_s": None,
            "published_top1": target.published.get("top1"), "published_recipe": target.published.get("recipe"),
            "published_iphone12_ms": target.published.get("latency_ms"),
            "published_source": target.published.get("source")}


def run_bench(
    models="all",
    runtimes=("eager", "onnxruntime", "executorch"),
    *,
    threads: int = 1,
    batch: int = 1,
    img_size: int = 224,
    warmup: int = 10,
    rounds: int = 10,
    iters: int = 10,
    train_structure: bool = False,
    peak: bool = False,
    int8: bool = False,
    calib=None,
    calib_images: int = 64,
    workdir=None,
    progress: bool = True,
) -> BenchReport:
    """Measure every (model, runtime) pair; see the module docstring for the protocol.

    ``int8`` adds the int8 twin of every runtime that has one (``executorch_int8``,
    ``onnxruntime_int8``). int8 models are calibrated on ``calib_images`` images of ``calib`` (an
    ImageFolder root or ``"digits"``), or on random inputs when ``calib`` is None: enough for a
    latency (the kernels are the same), meaningless for accuracy (see ``repvit quantize-eval``).
    """
    from rich.progress import Progress

    runtimes = _check_runtimes(runtimes)
    if int8:
        runtimes = list(dict.fromkeys(r for name in runtimes for r in (name, INT8_TWINS.get(name)) if r))
    if min(threads, batch, rounds, iters) < 1 or warmup < 0 or img_size < 32:
        raise ValueError("--threads, --batch, --rounds and --iters must be >= 1, --warmup >= 0, --img-size >= 32")
    if isinstance(models, list) and models and all(isinstance(m, BenchTarget) for m in models):
        targets = models
    else:
        targets = resolve_models(models, train_structure)
    env = {**machine_info(), "threads": threads, "batch": batch, "img_size": img_size, "warmup": warmup,
           "rounds": rounds, "iters_per_round": iters, "runtimes": list(runtimes)}
    calibration = None
    if any(RUNTIMES[r].int8 for r in runtimes):
        if calib is not None:
            if batch != 1:
                raise ValueError("--calib needs --batch 1 (the int8 programs are calibrated image by image)")
            from .quantize import calibration_images

            calibration = calibration_images(calib, img_size, calib_images)
            env["int8_calibration"] = f"{len(calibration)} images of {calib}"
        else:
            gen = torch.Generator().manual_seed(1)
            calibration = [torch.randn(batch, 3, img_size, img_size, generator=gen) for _ in range(8)]
            env["int8_calibration"] = "8 random inputs (latency only: accuracy needs real images)"
    if peak:
        if any(RUNTIMES[r].format == "executorch" for r in runtimes) and threads != 1:
            raise ValueError("--peak measures single-thread GEMM with XNNPACK; run it with --threads 1")
        env["matmul_gflops_1thread"] = matmul_peak_gflops()
    common = {"threads": threads, "batch": batch, "img_size": img_size}
    example = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="repvit-bench-") if workdir is None else None
    work = Path(workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    rows, runners = [], []
    try:
        if any(RUNTIMES[r].format == "executorch" for r in runtimes) and not _missing(FORMATS["executorch"].requires):
            set_executorch_threads(threads)  # before any program is loaded
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("exporting", total=len(targets) * len(runtimes))
            for target in targets:
                macs = None
                try:
                    model = target.build()
                    params = count_params(model) / 1e6
                    with contextlib.suppress(Exception):  # some peers cannot run on the meta device
                        macs = count_macs(model, img_size) / 1e9
                    with torch.inference_mode():
                        reference = model(example)
                except Exception as err:
                    for runtime in runtimes:
                        rows.append({**_row(target, runtime, common), "status": "build failed", "reason": _first_line(err)})
                        bar.advance(task)
                    continue
                for runtime in runtimes:
                    bar.update(task, description=f"{target.name} on {runtime}")
                    row = {**_row(target, runtime, common), "params_m": params, "gmacs": macs}
                    rows.append(row)
                    missing = _missing(RUNTIMES[runtime].requires)
                    if missing:
                        extra = FORMATS[RUNTIMES[runtime].format].extra
                        row.update(status="skipped", reason=f"missing package {', '.join(missing)}: "
                                                            f"pip install 'repvit[{extra}]'")
                        bar.advance(task)
                        continue
                    start = time.perf_counter()
                    try:
                        with torch.inference_mode():
                            fn = _prepare(runtime, model, example, work, f"{target.name}-{runtime}", threads,
                                          calibration)
                            diff = float((fn().float() - reference).abs().max())
                            # relative to the logits' size: random-init peers can have logits ~1e15
                            row["parity_max_abs_diff"] = diff
                            row["parity_rel_diff"] = diff / max(1.0, float(reference.abs().max()))
                    except Exception as err:
                        row.update(status="export failed", reason=_first_line(err))
                    else:
                        runners.append((row, fn))
                    row["prepare_s"] = time.perf_counter() - start
                    bar.advance(task)

            samples = {id(row): [] for row, _ in runners}
            task = bar.add_task("timing", total=rounds * len(runners))
            with torch.inference_mode():
                for row, fn in runners:
                    for _ in range(warmup):
                        fn()
                for r in range(rounds):
                    order = runners[r % len(runners):] + runners[: r % len(runners)] if runners else []
                    if r % 2:
                        order = order[::-1]  # rotate and alternate direction: no fixed neighbours
                    for row, fn in order:
                        for _ in range(iters):
                            start = time.perf_counter()
                            fn()
                            samples[id(row)].append(time.perf_counter() - start)
                        bar.advance(task)
        for row, _ in runners:
            row.update(_summary(samples[id(row)]))
            if row["gmacs"]:
                row["gmacs_per_s"] = row["gmacs"] * batch / (row["median_ms"] / 1e3)
    finally:
        torch.set_num_threads(previous_threads)
        if tmp is not None:
            tmp.cleanup()
    return BenchReport(env, rows)


def _check_runtimes(runtimes) -> list[str]:
    names = [r.strip() for item in ([runtimes] if isinstance(runtimes, str) else runtimes)
             for r in str(item).split(",") if r.strip()]
    unknown = [r for r in names if r not in RUNTIMES]
    if unknown or not names:
        raise ValueError(f"unknown runtime {', '.join(unknown) or '(none)'}; choose from {', '.join(RUNTIMES)}")
    return list(dict.fromkeys(names))


def run_throughput(models="repvit", *, device: str = "cuda", batch: int = 256, img_size: int = 224,
                   amp: bool = False, warmup: int = 5, seconds: float = 5.0, train_structure: bool = False,
                   progress: bool = True) -> BenchReport:
    """Images per second of eager PyTorch at a large batch (the paper's GPU throughput table)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine; use --device cpu")
    targets = resolve_models(models, train_structure)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    env = {**machine_info(), "device": str(device), "batch": batch, "img_size": img_size, "amp": amp,
           "seconds": seconds, "threads": torch.get_num_threads()}
    example = torch.randn(batch, 3, img_size, img_size, device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)) \
        if amp else contextlib.nullcontext
    rows = []
    for target in targets:
        row = {**_row(target, f"eager-{device.type}", {"threads": env["threads"], "batch": batch, "img_size": img_size}),
               "throughput_ips": None, "amp": amp}
        rows.append(row)
        try:
            model = target.build().to(device)
            with torch.inference_mode(), autocast():
                for _ in range(warmup):
                    model(example)
                sync()
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds or done == 0:
                    model(example)
                    done += 1
                sync()
                elapsed = time.perf_counter() - start
            row.update(throughput_ips=done * batch / elapsed, n=done, median_ms=elapsed / done * 1e3)
        except Exception as err:
            row.update(status="run failed", reason=_first_line(err))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return BenchReport(env, rows)


# ----------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------


def plot_pareto(report: BenchReport, path) -> Path:
    """Measured latency (x) against published top-1 (y), one panel per runtime, RepViT highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runtimes = list(dict.fromkeys(r["runtime"] for r in report.rows if r["status"] == "ok"))
    if not runtimes:
        raise ValueError("nothing was measured successfully, so there is nothing to plot")
    fig, axes = plt.subplots(1, len(runtimes), figsize=(6.5 * len(runtimes), 5), squeeze=False)
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
