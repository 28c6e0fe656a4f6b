"""MkDocs hooks: the pages generated from the code at build time, so each has one source.

``errors.md``'s table comes from :func:`modelshelf.errors.exit_code_table`, and ``api.md``'s
reference from ``modelshelf.api``'s exports (each rendered by mkdocstrings from its docstring).
"""

from __future__ import annotations

from typing import Any

from modelshelf import api
from modelshelf.errors import exit_code_table

EXIT_CODES = "<!-- modelshelf: exit-code table -->"
API = "<!-- modelshelf: api reference -->"


def api_reference() -> str:
    """One mkdocstrings block per name of ``modelshelf.api.__all__``, in the module's order."""
    blocks = ["::: modelshelf.api.versions\n"]
    for name, target in api._EXPORTS.items():  # noqa: SLF001 - the API's own ordered map
        module, _, attribute = target.partition(":")
        alias = "" if name == attribute else f"`api.{name}` is `{module}.{attribute}`:\n\n"
        blocks.append(f"{alias}::: {module}.{attribute}\n")
    return "\n".join(blocks)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    return markdown.replace(EXIT_CODES, exit_code_table()).replace(API, api_reference())
