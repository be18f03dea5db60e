"""MkDocs hook: the docstrings use Sphinx roles (:class:`X`, :func:`~a.b.c`); show them as code.

mkdocstrings renders ``:class:`RepViT``` as ``:class:<code>RepViT</code>``. This keeps the code span
and drops the role (with Sphinx's ``~``: only the last dotted part), so the API page reads as the
docstring means. Cross-linking them would need every target documented; plain code needs nothing.
"""

import re

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):<code>(~?)([^<]+)</code>")


def _code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_code, html)
