"""Latency benchmark of RepViT and its peers, side by side, on the runtimes phones use.

Protocol: every model in its deployed (reparameterized) form unless asked otherwise; batch 1;
a fixed thread count for every runtime (ExecuTorch's XNNPACK threadpool included); each artifact
checked against eager PyTorch; then the interleaved rounds of :mod:`.timing` (warm-up, ``rounds``
rounds of ``iters`` timed runs per model, the order rotating each round). Reports median, p10/p90,
IQR and spread per model, with the machine and library versions. Latency numbers from shared
machines are only comparable within one run.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.progress import Progress
from torch import nn

from ..data import calibration_images
from ..export import FORMATS, export_executorch, load_executorch, set_executorch_threads
from ..utils import UserError, first_line, missing_extra, param, resolve_device, split_list
from .complexity import count_macs, count_params
from .report import BenchReport, empty_row
from .targets import BenchTarget, resolve_models
from .timing import interleaved, machine_info, summarize, torch_threads

__all__ = ["RUNTIMES", "INT8_TWINS", "Runtime", "run_bench", "run_throughput", "matmul_peak_gflops"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    name: str
    format: str | None  # the export format it runs (None: eager PyTorch)
    int8: bool = False

    def missing(self) -> str | None:
        """Why it cannot run here (a missing extra and how to install it), or None."""
        return FORMATS[self.format].missing() if self.format else None


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
#: What ``int8=True`` adds for each runtime that has an int8 path.
INT8_TWINS = {"onnxruntime": "onnxruntime_int8", "executorch": "executorch_int8"}


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
    runtimes = _check_runtimes(runtimes, int8)
    if min(threads, batch, rounds, iters) < 1 or warmup < 0 or img_size < 32:
        raise UserError(f"{param('threads')}, {param('batch')}, {param('rounds')} and {param('iters')} must be >= 1, "
                        f"{param('warmup')} >= 0, {param('img_size')} >= 32")
    if isinstance(models, list) and models and all(isinstance(m, BenchTarget) for m in models):
        targets = models
    else:
        targets = resolve_models(models, train_structure)
    env = {**machine_info(), "threads": threads, "batch": batch, "img_size": img_size, "warmup": warmup,
           "rounds": rounds, "iters_per_round": iters, "runtimes": list(runtimes)}
    calibration = _calibration(runtimes, calib, calib_images, batch, img_size, env)
    uses_executorch = any(RUNTIMES[r].format == "executorch" for r in runtimes)
    if peak:
        if uses_executorch and threads != 1:
            raise UserError(f"{param('peak')} measures single-thread GEMM with XNNPACK; run it with {param('threads')} 1")
        env["matmul_gflops_1thread"] = matmul_peak_gflops()
    example = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    common = {"threads": threads, "batch": batch, "img_size": img_size}
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="repvit-bench-") as tmp, \
            Progress(transient=True, disable=not progress) as bar:
        if uses_executorch and not RUNTIMES["executorch"].missing():
            set_executorch_threads(threads)  # before any program is loaded
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        task = bar.add_task("exporting", total=len(targets) * len(runtimes))
        rows, runners = [], []
        for target in targets:
            _prepare_target(target, runtimes, example, work, threads, calibration, common, rows, runners,
                            lambda label: bar.update(task, advance=1, description=label))
        task = bar.add_task("timing", total=rounds * len(runners))
        with torch.inference_mode():
            samples = interleaved([(id(row), fn) for row, fn in runners], warmup=warmup, rounds=rounds, iters=iters,
                                  on_round=lambda: bar.advance(task))
    for row, _ in runners:
        row.update(summarize(samples[id(row)]))
        if row["gmacs"]:
            row["gmacs_per_s"] = row["gmacs"] * batch / (row["median_ms"] / 1e3)
    return BenchReport(env, rows)


def _check_runtimes(runtimes, int8: bool = False) -> list[str]:
    names = split_list(runtimes)
    unknown = [r for r in names if r not in RUNTIMES]
    if unknown or not names:
        raise UserError(f"unknown runtime {', '.join(unknown) or '(none)'}; choose from {', '.join(RUNTIMES)}")
    if int8:
        names = [r for name in names for r in (name, INT8_TWINS.get(name)) if r]
    return list(dict.fromkeys(names))


def _calibration(runtimes, calib, calib_images, batch, img_size, env) -> list[torch.Tensor] | None:
    """The inputs int8 runtimes are calibrated on (recorded in ``env``), or None without int8."""
    if not any(RUNTIMES[r].int8 for r in runtimes):
        return None
    if calib is None:
        gen = torch.Generator().manual_seed(1)
        env["int8_calibration"] = "8 random inputs (latency only: accuracy needs real images)"
        return [torch.randn(batch, 3, img_size, img_size, generator=gen) for _ in range(8)]
    if batch != 1:
        raise UserError(f"{param('calib')} needs {param('batch')} 1 (the int8 programs are calibrated image by image)")
    calibration = calibration_images(calib, img_size, calib_images)
    env["int8_calibration"] = f"{len(calibration)} images of {calib}"
    return calibration


def _prepare_target(target: BenchTarget, runtimes, example, work: Path, threads: int, calibration, common: dict,
                    rows: list, runners: list, advance: Callable[[str], None]) -> None:
    """Build one model, export it to every runtime and check it there: a row per runtime, and a
    runner for each one that works."""
    macs = None
    runtimes = [r for r in runtimes if target.runtimes is None or r in target.runtimes]
    if target.img_size and target.img_size != example.shape[-1]:
        runtimes = [r for r in runtimes if not RUNTIMES[r].int8]  # its calibration inputs have the bench's size
        generator = torch.Generator().manual_seed(0)
        example = torch.randn(*example.shape[:2], target.img_size, target.img_size, generator=generator)
        common = {**common, "img_size": target.img_size}
    try:
        model = target.build()
        params = count_params(model) / 1e6
        try:
            macs = count_macs(model, example.shape[-1]) / 1e9
        except Exception:  # some peers cannot run on the meta device
            pass
        with torch.inference_mode():
            reference = model(example)
    except Exception as err:
        for runtime in runtimes:
            rows.append({**empty_row(target, runtime, common), "status": "build failed",
                         "reason": first_line(err, with_type=True)})
            advance(f"{target.name} on {runtime}")
        return
    for runtime in runtimes:
        advance(f"{target.name} on {runtime}")
        row = {**empty_row(target, runtime, common), "params_m": params, "gmacs": macs}
        rows.append(row)
        missing = RUNTIMES[runtime].missing()
        if missing:
            row.update(status="skipped", reason=missing)
            continue
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                fn = _runner(runtime, model, example, work, f"{target.name}-{runtime}", threads, calibration)
                diff = float((fn().float() - reference).abs().max())
            # relative to the logits' size: random-init peers can have logits ~1e15
            row.update(parity_max_abs_diff=diff, parity_rel_diff=diff / max(1.0, float(reference.abs().max())))
        except Exception as err:
            row.update(status="export failed", reason=first_line(err, with_type=True))
        else:
            runners.append((row, fn))
        row["prepare_s"] = time.perf_counter() - start


def _runner(runtime: str, model: nn.Module, example: torch.Tensor, workdir: Path, tag: str, threads: int,
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


def matmul_peak_gflops(n: int = 1024, repeats: int = 10, workdir=None) -> dict[str, float]:
    """Single-thread float32 ``n x n`` matrix multiply rate (GFLOP/s) per GEMM library here.

    torch (MKL/oneDNN), numpy (its BLAS, held to one thread by threadpoolctl: skipped with a warning
    without it) and XNNPACK (through ExecuTorch, when installed) often differ by 2x on the same core,
    so all are reported; the largest is the machine's measured peak.
    Call before anything sets ExecuTorch's threadpool to more than one thread.
    """
    flops = 2 * n**3
    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()

    def rate(fn) -> float:
        (seconds,) = interleaved([(0, fn)], warmup=3, rounds=1, iters=repeats).values()
        return flops / (summarize(seconds)["median_ms"] / 1e3) / 1e9

    with torch_threads(1):
        rates = {"torch": rate(lambda: a @ b)}
    missing = missing_extra(["threadpoolctl"], "bench")
    if missing:  # numpy's BLAS would use every core: no single-thread number without threadpoolctl
        log.warning("numpy's single-thread GEMM rate not measured: %s", missing)
    else:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            rates["numpy"] = rate(lambda: an @ bn)
    if not RUNTIMES["executorch"].missing():
        try:
            with tempfile.TemporaryDirectory() as tmp:
                set_executorch_threads(1)
                path = Path(workdir or tmp) / "matmul.pte"
                export_executorch(nn.Linear(n, n, bias=False).eval(), a, path)
                run = load_executorch(path)
                rates["xnnpack"] = rate(lambda: run(a))
        except Exception:  # informative only: the peak of the others stands
            pass
    rates["peak"] = max(rates.values())
    return rates


def run_throughput(models="repvit", *, device: str = "cuda", batch: int = 256, img_size: int = 224,
                   amp: bool = False, warmup: int = 5, seconds: float = 5.0, train_structure: bool = False,
                   progress: bool = True) -> BenchReport:
    """Images per second of eager PyTorch at a large batch (the paper's GPU throughput table)."""
    device = resolve_device(device)
    targets = resolve_models(models, train_structure)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    env = {**machine_info(), "device": str(device), "batch": batch, "img_size": img_size, "amp": amp,
           "seconds": seconds, "threads": torch.get_num_threads()}
    example = torch.randn(batch, 3, img_size, img_size, device=device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    rows = []
    for target in targets:
        row = {**empty_row(target, f"eager-{device.type}", {"threads": env["threads"], "batch": batch,
                                                            "img_size": img_size}), "throughput_ips": None, "amp": amp}
        rows.append(row)
        try:
            model = target.build().to(device)
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=amp):
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
            row.update(status="run failed", reason=first_line(err, with_type=True))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return BenchReport(env, rows)
