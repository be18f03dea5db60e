"""Error text: one line a user can act on.

Library errors name parameters as the Python API does (``calib_images``), marked with
:func:`param`; the command line shows the marked names as its options (``--calib-images``, see
:func:`flag_text`) without the library knowing about flags. The mark is invisible in ``str(err)``.
"""

from __future__ import annotations

import re
import signal

__all__ = ["UserError", "Interrupted", "param", "first_line", "flag_text", "split_list"]

_MARK = "\ue000"  # brackets a parameter name inside a message (a private-use character: never real text)


def param(name: str) -> str:
    """``name`` marked as a parameter in an error message: the library shows it as it is, the command
    line as its option (``img_size`` -> ``--img-size``)."""
    return f"{_MARK}{name}{_MARK}"


class UserError(ValueError):
    """A problem the user can fix (a bad argument, file or folder), said in one line; parameter
    names in it are marked with :func:`param`."""

    def __str__(self) -> str:
        return super().__str__().replace(_MARK, "")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) that stopped a run cleanly; the message says what was kept and how to go on.
    A ``KeyboardInterrupt``, so code that handles Ctrl-C handles it; the command exits ``128 + signal``."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def flag_text(err: BaseException) -> str:
    """The error's first line, with the parameters it names written as command-line options."""
    text = first_line(err.args[0] if isinstance(err, UserError) and err.args else err, limit=None)
    return re.sub(f"{_MARK}([^{_MARK}]*){_MARK}", lambda m: "--" + m.group(1).replace("_", "-"), text)


def first_line(err: BaseException | str, *, with_type: bool = False, limit: int | None = 240) -> str:
    """The informative first line of an error (libraries often write paragraphs).

    An error re-raised by a DataLoader carries the worker's whole traceback in its text: its last
    line is the original message. ``with_type`` prefixes the exception's class name.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0][:limit] if lines else ""
    if isinstance(err, BaseException) and (with_type or not line):
        return f"{type(err).__name__}: {line}" if line else type(err).__name__
    return line


def split_list(values) -> list[str]:
    """``"a,b"``, ``["a", "b,c"]`` -> ``["a", "b", "c"]``: comma lists as users type them, blanks dropped."""
    items = [values] if isinstance(values, str) else list(values or ())
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]
