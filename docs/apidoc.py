"""Write docs/api.md, the reference of ``modelshelf.api``, from its docstrings.

    .venv/bin/python docs/apidoc.py          # or `make docs`; tests/test_docs.py checks it is current
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from modelshelf import api

HEADER = """# `modelshelf.api` reference

Generated from the docstrings by `docs/apidoc.py` (`make docs`); do not edit by hand.
The `shelf` command calls these functions; each raises a subclass of `ShelfError`, whose exit
code the README's table lists.

"""


def entry(name: str) -> str:
    """One function's or class's section: its signature and its whole docstring."""
    obj = getattr(api, name)
    doc = inspect.cleandoc(obj.__doc__ or "(no docstring)")
    if inspect.isclass(obj):
        code = getattr(obj, "exit_code", None)
        title = f"### `{name}`" + (f" (exit code {code})" if code is not None else "")
        return f"{title}\n\n{doc}\n"
    signature = _signature(obj)
    where = f"{obj.__module__}.{obj.__qualname__}"
    return f"### `{name}{signature}`\n\n`{where}`\n\n{doc}\n"


def _signature(obj: object) -> str:
    """``(start: str | Path = '.', *, push: bool = False) -> Released``: annotations as written
    (they are strings under ``from __future__ import annotations``), defaults as their repr."""
    sig = inspect.signature(obj)  # type: ignore[arg-type]
    parts, star = [], False
    for param in sig.parameters.values():
        if param.kind is param.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = param.name
        if param.annotation is not param.empty:
            text += f": {param.annotation}"
        if param.default is not param.empty:
            text += f" = {param.default!r}"
        parts.append(text)
    returns = f" -> {sig.return_annotation}" if sig.return_annotation is not sig.empty else ""
    return f"({', '.join(parts)}){returns}"


def render() -> str:
    """The whole reference."""
    functions = [n for n in api.__all__ if not inspect.isclass(getattr(api, n))]
    classes = [n for n in api.__all__ if inspect.isclass(getattr(api, n))]
    parts = [HEADER, inspect.cleandoc(api.__doc__ or ""), "\n\n## Functions\n\n"]
    parts += [entry(n) + "\n" for n in functions]
    parts += ["## Errors\n\n", *(entry(n) + "\n" for n in classes)]
    return "".join(parts).rstrip() + "\n"


def main() -> int:
    target = Path(__file__).with_name("api.md")
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
