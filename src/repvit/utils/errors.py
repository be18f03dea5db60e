"""Error text: one line a user can act on.

Library errors name arguments as the Python API does (``calib_images``); a :class:`UserError` lists
those names, so the command line can show them as its options (``--calib-images``, see
:func:`flag_text`) without the library knowing about flags.
"""

from __future__ import annotations

import re

__all__ = ["UserError", "first_line", "flag_text", "split_list"]


class UserError(ValueError):
    """A problem the user can fix (a bad argument, file or folder), said in one line.

    ``arguments``: the parameter names the message mentions, in the library's spelling.
    """

    def __init__(self, message: str, *, arguments: tuple[str, ...] | list[str] = ()):
        super().__init__(message)
        self.arguments = tuple(arguments)


def flag_text(err: BaseException) -> str:
    """The error's first line with the arguments it names written as command-line options."""
    text = first_line(err, limit=None)
    for name in getattr(err, "arguments", ()):  # a word of its own, not part of a path or another name
        text = re.sub(rf"(?<![\w./\\-]){re.escape(name)}(?![\w/\\-])", "--" + name.replace("_", "-"), text)
    return text


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
