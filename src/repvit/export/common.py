"""What every export backend shares: the I/O names, the errors, capturing what native converters print."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from ..utils import UserError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "ExportError", "ParitySkipped", "captured_output", "as_args"]

INPUT_NAME, OUTPUT_NAME = "image", "logits"


def as_args(example) -> tuple:
    """A model's example inputs as a tuple: one tensor, or a tuple/list of them (several inputs)."""
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


class ExportError(UserError):
    """A request that cannot be exported (unknown format, missing package, bad option)."""


class ParitySkipped(Exception):
    """The artifact cannot be executed on this machine (the reason is the message)."""


@contextlib.contextmanager
def captured_output():
    """Send what native converters print (C++ and subprocesses included) to a buffer, not the terminal.

    Yields a list that holds the captured lines once the block ends.
    """
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            log.seek(0)
            lines.extend(log.read().decode(errors="replace").splitlines())
