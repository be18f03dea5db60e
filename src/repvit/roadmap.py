"""Deprecated path (until the next release): moved to repvit.models.roadmap and repvit.tools.roadmap."""

from .models.roadmap import FINAL_VARIANT, STEPS, RoadmapStep, get_step
from .tools.plots import plot_roadmap
from .tools.roadmap import roadmap_report
from .utils.deprecation import warn_moved

__all__ = ["FINAL_VARIANT", "RoadmapStep", "STEPS", "get_step", "plot_roadmap", "roadmap_report"]

warn_moved("repvit.roadmap", "repvit.models.roadmap and repvit.tools.roadmap")
