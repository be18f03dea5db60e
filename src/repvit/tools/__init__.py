"""Tools on top of the library: prediction, the latency benchmark (one timing harness), parameter
and MAC counts, published numbers, plots, the roadmap report, the quickstart and the RepViT-SAM benchmark."""

from .bench import INT8_TWINS, RUNTIMES, matmul_peak_gflops, run_bench, run_throughput
from .complexity import count_macs, count_params, model_stats
from .plots import plot_pareto, plot_roadmap, plot_sam_latency, plot_training_curves, save_figure
from .predict import Prediction, predict
from .published import peer_names, published, published_peer, source_text
from .quickstart import run_quickstart
from .report import BenchReport
from .roadmap import roadmap_markdown, roadmap_report
from .sam_bench import SAM_MODELS, run_sam_bench, sam_ratios
from .targets import BenchTarget, resolve_models
from .timing import interleaved, machine_info, summarize

__all__ = ["run_bench", "run_throughput", "matmul_peak_gflops", "RUNTIMES", "INT8_TWINS", "BenchReport", "BenchTarget",
           "resolve_models", "count_params", "count_macs", "model_stats", "plot_pareto", "plot_roadmap",
           "plot_training_curves", "save_figure", "Prediction", "predict", "published", "published_peer",
           "peer_names", "source_text", "run_quickstart", "roadmap_report", "roadmap_markdown", "interleaved",
           "summarize", "machine_info", "run_sam_bench", "sam_ratios", "SAM_MODELS", "plot_sam_latency"]
