"""The README is generated where it can be and points only at what exists."""

from __future__ import annotations

import re
from pathlib import Path

from modelshelf.errors import ShelfError, exit_code_table

REPO = Path(__file__).resolve().parent.parent


def test_readme_carries_the_exit_code_table_generated_from_errors() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert exit_code_table() in readme, "regenerate the table: python -c 'from modelshelf.errors import exit_code_table; print(exit_code_table())'"
    codes = [int(c) for c in re.findall(r"^\| (\d+) \| ", exit_code_table(), re.M)]
    assert codes == sorted(set(codes)) and {0, 1} <= set(codes)
    assert all(cls.exit_code in codes for cls in ShelfError.__subclasses__())


def test_readme_links_point_at_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(((?!https?:)[^)#]+)\)", readme)
    assert links, "the README links to docs/"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_stays_a_first_read() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 180, f"README.md has {lines} lines; move details to docs/"
