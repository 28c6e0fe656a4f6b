"""The README is generated where it can be and points only at what exists."""

from __future__ import annotations

import re
from pathlib import Path

from modelshelf.errors import ShelfError, exit_code_table

REPO = Path(__file__).resolve().parent.parent


def test_the_exit_code_table_has_one_source() -> None:
    """errors.py alone: docs/errors.md holds the placeholder the site fills, and no page
    (README included) carries a copy that could drift from it."""
    codes = [int(c) for c in re.findall(r"^\| (\d+) \| ", exit_code_table(), re.M)]
    assert codes == sorted(set(codes)) and {0, 1} <= set(codes)
    assert all(cls.exit_code in codes for cls in ShelfError.__subclasses__())
    assert "<!-- modelshelf: exit-code table -->" in (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    row = exit_code_table().splitlines()[-1]
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        assert row not in page.read_text(encoding="utf-8"), f"{page.name} copies the exit-code table"
    assert "(docs/errors.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_links_point_at_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?!https?:)[^)#]+)\)", readme)
    assert links, "the README links to docs/"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_stays_a_first_read() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 150, f"README.md has {lines} lines; move details to docs/"


def test_the_docs_build_strict_with_the_generated_reference_and_exit_codes(tmp_path: Path) -> None:
    """mkdocs --strict fails on a broken link, a page left out of the nav or a docstring
    reference mkdocstrings cannot resolve; the built pages carry what docs/hooks.py generates."""
    import os
    import subprocess
    import sys

    from modelshelf import api

    site = tmp_path / "site"
    done = subprocess.run([str(Path(sys.executable).with_name("mkdocs")), "build", "--strict", "-q", "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (site / "api.html").read_text(encoding="utf-8")
    for name in api.__all__:
        module, _, attribute = api._EXPORTS.get(name, f"modelshelf.api:{name}").partition(":")
        assert f'id="{module}.{attribute}"' in reference, f"api.{name} is missing from the built reference"
    errors = (site / "errors.html").read_text(encoding="utf-8")
    for cls in ShelfError.__subclasses__():
        assert f"<code>{cls.__name__}</code>" in errors and f"<td>{cls.exit_code}</td>" in errors, cls
    assert "<!-- modelshelf:" not in reference + errors  # every placeholder filled


def test_every_docs_page_is_in_the_nav() -> None:
    import yaml

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    listed = {page for entry in nav for page in entry.values()}
    assert listed == {p.name for p in (REPO / "docs").glob("*.md")}


def test_every_public_api_name_resolves_and_is_documented() -> None:
    import inspect

    from modelshelf import api

    for name in api.__all__:
        obj = getattr(api, name)
        assert callable(obj), name
        doc = inspect.getdoc(obj) or ""
        assert doc and not doc.startswith(("Base class", "Common base")), f"api.{name} has no docstring"
    assert sorted(dir(api)) == sorted(set(dir(api)))
    try:
        api.nonexistent  # noqa: B018
    except AttributeError as exc:
        assert "nonexistent" in str(exc)
    else:
        raise AssertionError("api.nonexistent resolved")


def test_importing_the_api_imports_nothing_heavy() -> None:
    """``shelf`` imports ``modelshelf.api`` for every command: it must stay a table of names."""
    import subprocess
    import sys

    code = ("import sys, modelshelf.api; heavy = ('sklearn', 'pandas', 'numpy', 'dvc', 'yaml', 'pathlib', "
            "'modelshelf.registry', 'modelshelf.pipeline', 'modelshelf.serve'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_cli_calls_the_public_api() -> None:
    """Every command group reaches the library through ``modelshelf.api``."""
    for group in ("registry", "provenance", "serving", "pipeline"):
        text = (REPO / "src" / "modelshelf" / "commands" / f"{group}.py").read_text(encoding="utf-8")
        assert "from modelshelf import api" in text, group
        for internal in ("registry.release import", "registry.promotion import", "registry.restore import",
                         "registry.gc import", "registry.bom import", "registry.environment import",
                         "drift import check", "serve.batch import", "pipeline.stages import",
                         "report import build", "registry.audit import", "project import init",
                         "model import verify", "import open_registry"):
            assert internal not in text, f"commands/{group}.py imports {internal!r} instead of using modelshelf.api"
