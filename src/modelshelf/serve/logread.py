"""The prediction log read back (``shelf canary report DIR``, ``shelf drift --from-log DIR``):
every record of its ``predictions-*.jsonl`` files with the file and line it came from, and
field checks whose refusal names them.

A line is skipped only when it is what a killed server, or a live one mid-write, leaves: the
last line of a file, with no newline yet, that does not parse and begins as a record does
(``{``). Any other line that is not a JSON object, and any record whose fields are missing or
of the wrong type, is refused as a :class:`DataError`: nothing the server wrote looks so, so it
was edited or damaged, and a report over the rest would silently leave it out.

Not imported by ``shelf serve`` (its start-up imports only :mod:`modelshelf.serve.predlog`).
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from modelshelf.errors import DataError
from modelshelf.serve.predlog import PREFIX, SUFFIX

if TYPE_CHECKING:
    from pathlib import Path

REMEDY = "fix or delete that line (`shelf serve` writes every record whole, so it was edited or damaged)"
# kind → (the Python types it accepts, how a refusal names it)
KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "text": ((str,), "a string"),
    "number": ((int, float), "a number"),
    "integer": ((int,), "an integer"),
    "object": ((dict,), "an object"),
    "list": ((list,), "a list"),
}


@dataclass(slots=True)
class Entry:
    """One record of the log and where it is (``file``, ``line`` from 1)."""

    record: dict[str, Any]
    file: str
    line: int

    @property
    def where(self) -> str:
        """``FILE:LINE``, as a refusal names it."""
        return f"{self.file}:{self.line}"

    def has(self, name: str) -> bool:
        """Whether the dotted field ``name`` (``shadow.response``) is present."""
        value: Any = self.record
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        return True

    def get(self, name: str, kind: str) -> Any:
        """The dotted field ``name``, checked to be of ``kind`` (a key of :data:`KINDS`; a
        ``number`` is also finite and not negative).

        Raises:
            DataError: the field (or an object on its way) is missing or of another type.
        """
        if "." not in name:  # the common case, kept quick: a log holds up to hundreds of MB
            if name not in self.record:
                self.refuse(f'field "{name}" is missing')
            value = self.record[name]
        else:
            value = self.record
            parts = name.split(".")
            for i, part in enumerate(parts):
                if part not in value:
                    self.refuse(f'field "{".".join(parts[:i + 1])}" is missing')
                value = value[part]
                if i < len(parts) - 1 and type(value) is not dict:
                    self.refuse(f'field "{".".join(parts[:i + 1])}" is {shown(value)}, not an object')
        self.check(name, value, kind)
        return value

    def check(self, name: str, value: Any, kind: str) -> None:
        """Refuse ``value`` (the field ``name``, or a part of it) unless it is of ``kind``."""
        types, label = KINDS[kind]
        if type(value) not in types:  # exact types, as orjson makes them: a bool is no number
            self.refuse(f'field "{name}" is {shown(value)}, not {label}')
        if kind == "number" and not 0 <= value < math.inf:  # NaN compares false too
            self.refuse(f'field "{name}" is {shown(value)}, below 0')

    def refuse(self, problem: str) -> NoReturn:
        """Raise the :class:`DataError` naming this record's file and line."""
        raise DataError(self.where, problem, REMEDY)


@dataclass(frozen=True)
class Log:
    """What :func:`read_log` found: the records, oldest file first, and the lines cut short."""

    directory: str
    entries: list[Entry]
    cut_short: int  # last lines a killed or still-writing server left half written
    files: int

    def skipped(self) -> str:
        """``, 1 line cut short skipped`` (or nothing), for a report's summary."""
        if not self.cut_short:
            return ""
        return f", {self.cut_short} line{'s' if self.cut_short != 1 else ''} cut short skipped"


def read_log(directory: str | Path) -> Log:
    """Every record in the log files of ``directory`` (``predictions-*.jsonl``, by name: oldest
    first); other files are ignored, and a file rotated away while it is read is passed over.

    Raises:
        DataError: ``directory`` is not a directory or holds no log file; a file cannot be read;
            a line is not a JSON object (except a half-written last one, which is skipped).
    """
    where = str(directory)
    if not os.path.isdir(where):
        problem = "not a directory" if os.path.exists(where) else "no such directory"
        raise DataError(where, problem, "give the DIR of `shelf serve --log-predictions DIR`")
    names = sorted(os.listdir(where))
    files = [n for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX)
             and os.path.isfile(os.path.join(where, n))]
    if not files:
        near = [n for n in names if n.startswith(PREFIX) and SUFFIX in n]
        found = f"; {near[0]} is not read: decompress or rename it to {PREFIX}*{SUFFIX}" if near else ""
        raise DataError(where, f"no prediction log records (no {PREFIX}*{SUFFIX} file){found}",
                        "serve with `--log-predictions DIR` and send some traffic first")
    entries: list[Entry] = []
    cut = 0
    collecting = gc.isenabled()
    gc.disable()  # JSON makes no cycles, and the collector's passes over millions of new dicts cost ×4
    try:
        for name in files:
            path = os.path.join(where, name)
            try:
                with open(path, "rb") as fh:
                    cut += _parse(fh, path, entries)
            except FileNotFoundError:  # rotated away by a live server since the listing
                continue
            except OSError as exc:
                raise DataError(path, f"cannot be read ({exc.strerror})", "check its permissions") from None
    finally:
        if collecting:
            gc.enable()
    return Log(where, entries, cut, len(files))


def _parse(lines: Iterable[bytes], path: str, out: list[Entry]) -> int:
    """Append the records of one file's ``lines`` to ``out``; return 1 if its last line was cut short."""
    for number, line in enumerate(lines, 1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if not line.strip():
                continue  # a blank line holds no record (an editor's)
            if not line.endswith(b"\n") and line.startswith(b"{"):  # only a file's last line lacks one
                return 1
            raise DataError(f"{path}:{number}", f"not JSON ({exc.msg} at column {exc.colno})", REMEDY) from None
        if type(record) is not dict:
            raise DataError(f"{path}:{number}", f"a JSON {_json_kind(record)}, not an object (a record)", REMEDY)
        out.append(Entry(record, path, number))
    return 0


def shown(value: Any, limit: int = 40) -> str:
    """``value`` as JSON for a refusal, cut at ``limit`` characters."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"
