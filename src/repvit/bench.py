"""Deprecated path (until the next release): moved to repvit.tools."""

from .tools import (
                    RUNTIMES,
                    BenchReport,
                    BenchTarget,
                    machine_info,
                    matmul_peak_gflops,
                    plot_pareto,
                    resolve_models,
                    run_bench,
                    run_throughput,
)
from .utils.deprecation import warn_moved

__all__ = ["BenchReport", "BenchTarget", "RUNTIMES", "machine_info", "matmul_peak_gflops", "plot_pareto",
           "resolve_models", "run_bench", "run_throughput"]

warn_moved("repvit.bench", "repvit.tools")
