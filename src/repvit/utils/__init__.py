"""Helpers every layer may use (they import nothing from repvit): the one-line error text, comma
lists, optional extras, device resolution, top-k counting, the package version."""

from .device import resolve_device
from .errors import Interrupted, UserError, first_line, flag_text, param, split_list
from .extras import missing_extra, missing_modules
from .metrics import topk_hits
from .version import __version__, package_versions

__all__ = ["UserError", "Interrupted", "param", "first_line", "flag_text", "split_list", "missing_modules",
           "missing_extra", "resolve_device", "topk_hits", "__version__", "package_versions"]
