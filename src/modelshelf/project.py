"""The project on disk: ``dvc.yaml`` (its artefacts and stage commands) and scaffolding."""

from __future__ import annotations

import difflib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from modelshelf.artefacts import atomic_output
from modelshelf.errors import ConfigError, GitError

DVC_YAML = "dvc.yaml"
TEMPLATE_FILES = ("dvc.yaml", "params.yaml")
GITIGNORE_LINES = ("/build/", "/.venv/", "__pycache__/")
DVCIGNORE_LINES = ("/.venv/", "__pycache__/")  # never data: DVC need not hash them
STAGES = ("prepare", "train", "evaluate", "gate", "serialise")
MODEL_PATH = "models/model.joblib"
_PLOTS = ("Confusion matrix", "ROC", "Precision-recall")
_REGRESSION_PLOTS = ("Predicted vs actual", "Residuals")
#: The plot entries of dvc.yaml that modelshelf writes, by task family (see :func:`_task_plots`).
_FAMILY_PLOTS = {"classification": _PLOTS, "regression": _REGRESSION_PLOTS}
# The comment line `shelf init` puts above the plots block, by task family.
_PLOTS_COMMENT = {
    "classification": "# Classification's plots (binary and multiclass); `shelf init` declares regression's instead.",
    "regression": "# Regression's plots: predicted vs actual, residuals.",
}
# Regression's plots, in place of the template's (classification's): no confusion matrix, no curves.
_REGRESSION_BLOCK = """plots:
  - Predicted vs actual:
      template: scatter
      x: actual
      y:
        metrics/plots/predictions.json: predicted
  - Residuals:
      template: scatter
      x: predicted
      y:
        metrics/plots/predictions.json: residual
"""
_VAR = re.compile(r"\$\{\s*([\w.]+)\s*\}")


def find_root(start: str | Path = ".") -> Path:
    """The nearest directory at or above ``start`` that holds ``dvc.yaml``."""
    here = Path(start).resolve()
    for cand in (here, *here.parents):
        if (cand / DVC_YAML).is_file():
            return cand
    if not any((cand / ".git").exists() for cand in (here, *here.parents)):  # outside any project
        raise GitError(str(here), "not a git repository (nor any parent): not in a modelshelf project",
                       "cd into the project, or `shelf init` one")
    raise ConfigError(str(here), "no dvc.yaml here or above", "run `shelf init` or cd into the project")


def read_dvc_yaml(root: Path) -> Mapping[str, Any]:
    import yaml

    path = root / DVC_YAML
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found", "run `shelf init`") from None
    except yaml.YAMLError:
        raise ConfigError(str(path), "not valid YAML", "fix its syntax") from None
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), "expected a mapping at the top", "see `shelf init`'s dvc.yaml")
    return data


def model_artifact(root: Path, model_path: str | None = None) -> tuple[str, str]:
    """``(name, path)`` of the ``type: model`` artefact in dvc.yaml (matching ``model_path``)."""
    arts = read_dvc_yaml(root).get("artifacts") or {}
    models = [(str(n), str(a.get("path"))) for n, a in arts.items()
              if isinstance(a, Mapping) and a.get("type") == "model"]
    if model_path is not None:
        want = Path(model_path).as_posix()
        models = [m for m in models if Path(m[1]).as_posix() == want]
    if len(models) != 1:
        what = f" with path {model_path}" if model_path else ""
        found = "none" if not models else "several"
        raise ConfigError(f"{root / DVC_YAML}: artifacts", f"{found} of type model{what}",
                          "declare exactly one: artifacts: {model: {path: models/model.joblib, type: model}}")
    return models[0]


def _variables(root: Path, dvc: Mapping[str, Any]) -> dict[str, Any]:
    import yaml

    scope: dict[str, Any] = {}
    params = root / "params.yaml"
    if params.is_file():
        scope.update(yaml.safe_load(params.read_text(encoding="utf-8")) or {})
    for entry in dvc.get("vars") or []:
        if isinstance(entry, Mapping):
            scope.update(entry)
    return scope


def _lookup(scope: Mapping[str, Any], dotted: str) -> Any:
    value: Any = scope
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _find_stage(root: Path, dvc: Mapping[str, Any], stage: str) -> tuple[str, Mapping[str, Any]]:
    """``(name, spec)`` of the stage named ``stage``, else of the one stage running ``shelf STAGE``."""
    stages = dvc.get("stages") or {}
    spec = stages.get(stage) if isinstance(stages, Mapping) else None
    if isinstance(spec, Mapping) and "cmd" in spec:
        return stage, spec
    runs = [(str(n), s) for n, s in stages.items() if _stage_runs(s, stage)] if isinstance(stages, Mapping) else []
    if len(runs) == 1:
        return runs[0]
    raise ConfigError(f"{root / DVC_YAML}: stages.{stage}", "stage not found" if not runs else
                      f"several stages run `shelf {stage}` ({', '.join(n for n, _ in runs)})",
                      f"add a '{stage}' stage or pass the paths as options")


def stage_options(root: Path, stage: str) -> dict[str, str]:
    """The ``--option value`` pairs of ``stage``'s command in dvc.yaml, variables resolved."""
    dvc = read_dvc_yaml(root)
    stage, spec = _find_stage(root, dvc, stage)
    scope = _variables(root, dvc)
    try:
        cmd = _VAR.sub(lambda m: str(_lookup(scope, m.group(1))), str(spec["cmd"]))
    except KeyError as exc:
        raise ConfigError(f"{root / DVC_YAML}: stages.{stage}.cmd", f"unknown variable ${{{exc.args[0]}}}",
                          "define it under vars:") from None
    words = shlex.split(cmd)
    return {w[2:]: words[i + 1] for i, w in enumerate(words[:-1])
            if w.startswith("--") and not words[i + 1].startswith("--")}


def stage_deps(root: Path, stage: str) -> tuple[str, list[str]]:
    """``(name, deps)``: the dvc.yaml name of ``stage`` and its dependencies, variables resolved,
    as root-relative POSIX paths."""
    dvc = read_dvc_yaml(root)
    name, spec = _find_stage(root, dvc, stage)
    scope = _variables(root, dvc)
    deps = []
    for dep in spec.get("deps") or []:
        text = str(next(iter(dep)) if isinstance(dep, Mapping) else dep)
        try:
            text = _VAR.sub(lambda m: str(_lookup(scope, m.group(1))), text)
        except KeyError:
            continue
        deps.append(Path(os.path.normpath(text)).as_posix())
    return name, deps


def candidate_dir(root: Path) -> Path | None:
    """The candidate directory the gate judges: the gate stage's ``--candidate`` in dvc.yaml,
    else the train stage's ``--out``; None for a hand-written pipeline with neither."""
    try:
        found = stage_options(root, "gate").get("candidate") or stage_options(root, "train").get("out")
    except ConfigError:
        return None
    return root / found if found else None


@dataclass(frozen=True)
class FileChange:
    """One file ``shelf init`` creates or extends: its text before (None: a new file) and after."""

    path: Path
    before: str | None
    after: str
    added: tuple[str, ...]  # what it adds, one item each: "stage prepare", "section data", "line /build/"
    generated: bool = False  # a generated file (the plots' page template): its diff is one line
    removed: tuple[str, ...] = ()  # what it takes out: "plot ROC" (the other task's, after a change of task)

    def diff(self, root: Path) -> str:
        """The change as a unified diff, paths relative to ``root``."""
        rel = self.path.relative_to(root).as_posix()
        if self.generated:
            return f"generated file {rel} ({len(self.after.encode('utf-8')):,} bytes)\n"
        old = [_eol(line) for line in _lines(self.before or "")]
        new = [_eol(line) for line in _lines(self.after)]
        head = "/dev/null" if self.before is None else f"a/{rel}"
        out = "".join(difflib.unified_diff(old, new, head, f"b/{rel}"))
        return out or f"new empty file {rel}\n"


@dataclass(frozen=True)
class InitResult:
    """What :func:`init` did (or, on a dry run, would do) in ``root``."""

    root: Path
    setup: tuple[str, ...]  # "git init", "dvc init": repositories created
    changes: tuple[FileChange, ...]
    dry_run: bool = False

    @property
    def nothing_to_add(self) -> bool:
        return not self.setup and not self.changes


def init(path: str | Path, *, force: bool = False, dry_run: bool = False, prefix: str = "") -> InitResult:
    """Set up modelshelf in ``path``, a new directory or an existing repository.

    Creates the git and DVC repositories if missing, then merges: modelshelf's stages
    (prepare, train, evaluate, gate, serialise), its ``paths`` variables, plots and model
    artefact go beside the project's own in dvc.yaml; its sections (data, train, gate,
    serialise, drift, release) beside the project's own keys in params.yaml; missing lines
    are appended to .gitignore and .dvcignore.  A missing file gets the template verbatim.
    Nothing of the project's is overwritten, reordered or re-formatted: modelshelf's text is
    inserted as blocks, so every byte of the project's own stays as it was.  What is already
    there is skipped, so a second run adds nothing.  The one exception is the plots: after a change
    of task (``data.task`` or the data source), modelshelf's plot entries of the other task are
    taken out and the current task's put in; a plot entry of the project's own is kept.

    Args:
        path: the project directory (created if missing).
        force: kept for compatibility; merging never overwrites, so it re-merges like a plain run.
        dry_run: compute the changes (see :meth:`FileChange.diff`) without writing anything.
        prefix: put before modelshelf's stage names (``ms_`` → ``ms_prepare`` …) when the
            project has stages of its own with those names.

    Returns:
        The repositories created and the files changed, each with what it added.

    Raises:
        ConfigError: a clash (a stage or key of the project's own under a name modelshelf
            needs, in another shape) or a file that cannot be read; nothing is written then.
        GitError: ``git init`` or ``dvc init`` failed.
    """
    del force  # merging never erases the project's own stages or keys
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError("--prefix", f"{prefix!r} is not a stage-name prefix",
                          "use letters, digits, '_' or '-', starting with a letter, e.g. ms_")
    root = Path(path).resolve()
    templates = resources.files("modelshelf") / "templates"
    tmpl = {name: templates.joinpath(name + ".template").read_text(encoding="utf-8") for name in TEMPLATE_FILES}
    params_before = _read(root / "params.yaml")
    user_params = _load(root / "params.yaml", params_before)
    family = _task_family(root, user_params)
    if family == "regression":
        tmpl["dvc.yaml"] = _regression_template(tmpl["dvc.yaml"])
    changes = [c for c in (_merge_dvc_yaml(root / DVC_YAML, tmpl["dvc.yaml"], prefix, user_params, family),
                           _merge_params(root / "params.yaml", params_before, user_params, tmpl["params.yaml"]))
               if c is not None]
    setup = tuple(step for step, missing in (("git init", not (root / ".git").exists()),
                                             ("dvc init", not (root / ".dvc").is_dir())) if missing)
    if not dry_run:
        root.mkdir(parents=True, exist_ok=True)
        if "git init" in setup:
            _run(["git", "init", "-q", "-b", "main"], root)
        if "dvc init" in setup:
            dvc = [sys.executable, "-m", "dvc"]
            _run([*dvc, "init", "-q"], root)
            _run([*dvc, "config", "core.analytics", "false"], root)
    changes += _plot_templates(root, fresh="dvc init" in setup)
    keep = root / "data" / "raw" / ".gitkeep"
    if not keep.exists():
        changes.append(FileChange(keep, None, "", ()))
    for name, wanted in ((".gitignore", GITIGNORE_LINES), (".dvcignore", DVCIGNORE_LINES)):
        change = _append_lines(root / name, wanted)
        if change is not None:
            changes.append(change)
    if not dry_run:
        for change in changes:
            with atomic_output(change.path, "wb") as fh:
                fh.write(change.after.encode("utf-8"))
    return InitResult(root, setup, tuple(changes), dry_run)


def stage_name(root: Path, stage: str) -> str:
    """The dvc.yaml name of modelshelf's stage ``stage`` (``ms_serialise`` after ``init --prefix ms_``)."""
    return _find_stage(root, read_dvc_yaml(root), stage)[0]


# --------------------------------------------------------------------------- merging


_PREFIX = re.compile(r"(?:[A-Za-z][\w-]*)?")
_HEADER = {
    DVC_YAML: "# modelshelf (added by `shelf init`): its variables, stages, plots and model artefact.\n",
    "params.yaml": "# modelshelf parameters (added by `shelf init`): validated on load (docs/pipeline.md).\n",
}
_STAGES_NOTE = "# modelshelf: prepare → train → evaluate → gate → serialise (added by `shelf init`)\n"


@dataclass
class _Block:
    """One top-level key of a YAML file: its line span and, for a mapping or list, its items."""

    key: str
    first: int  # the key's line
    last: int  # the last line of its content (comments at column 0 after it belong to the next key)
    node: Any
    items: list[tuple[str, int, int]]  # (name, first line, last line)
    indent: int  # the items' indentation (of their keys or dashes)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True) if "\r" not in text else re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def _eol(line: str) -> str:
    return line if line.endswith("\n") else line + "\n"


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ConfigError(path.name, f"not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(path.name, f"cannot be read ({exc.strerror})", "check its permissions") from None


def _load(path: Path, text: str | None) -> dict[str, Any]:
    import yaml

    if text is None:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(path.name, f"not valid YAML{line}", "fix its syntax, then run `shelf init` again") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path.name, f"expected a mapping at the top, got {type(data).__name__}",
                          "write it as 'key: value' lines")
    return data


def _blocks(path: Path, text: str) -> dict[str, _Block]:
    """The top-level keys of ``text`` (block style), each with its span and items."""
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise ConfigError(path.name, "its top level is not a block mapping", "write it as 'key: value' lines")
    lines = _lines(text)
    starts = [k.start_mark.line for k, _ in root.value]
    blocks: dict[str, _Block] = {}
    for i, (knode, vnode) in enumerate(root.value):
        end = starts[i + 1] if i + 1 < len(starts) else len(lines)
        last = _last_content(lines, knode.start_mark.line, end)
        items: list[tuple[str, int, int]] = []
        indent = 2
        children = vnode.value if isinstance(vnode, (yaml.MappingNode, yaml.SequenceNode)) else []
        if children:
            if vnode.flow_style:
                raise ConfigError(f"{path.name}: {knode.value}", "written in flow style ({...} or [...])",
                                  "write it as a block (one entry a line) and run `shelf init` again")
            firsts = [(c[0] if isinstance(vnode, yaml.MappingNode) else c).start_mark.line for c in children]
            indent = len(lines[firsts[0]]) - len(lines[firsts[0]].lstrip(" "))
            for j, child in enumerate(children):
                stop = firsts[j + 1] if j + 1 < len(firsts) else last + 1
                items.append((_item_name(child), firsts[j], _last_content(lines, firsts[j], stop)))
        blocks[str(knode.value)] = _Block(str(knode.value), knode.start_mark.line, last, vnode, items, indent)
    return blocks


def _item_name(child: Any) -> str:
    node = child[0] if isinstance(child, tuple) else child
    if hasattr(node, "value") and isinstance(node.value, list):  # a list item that is a mapping
        node = node.value[0][0] if node.value and isinstance(node.value[0], tuple) else node
    return str(node.value) if isinstance(node.value, str) else ""


def _last_content(lines: list[str], first: int, end: int) -> int:
    """The last line in ``[first, end)`` that is neither blank nor a comment at column 0."""
    last = first
    for n in range(first, end):
        if lines[n].strip() and not lines[n].startswith("#"):
            last = n
    return last


def _gap(body: list[str], tlines: list[str], first: int) -> list[str]:
    """A blank line before a template item that has one before it there (between items only)."""
    return ["\n"] if body and first > 0 and not tlines[first - 1].strip() else []


def _reindent(lines: list[str], base: int, indent: int, nl: str) -> list[str]:
    out = []
    for line in lines:
        body = line.rstrip("\r\n")
        out.append((" " * indent + body[base:] if body.strip() else "") + nl)
    return out


def _stage_runs(spec: Any, stage: str) -> bool:
    """True when the dvc.yaml stage ``spec`` runs ``shelf STAGE``."""
    cmd = spec.get("cmd") if isinstance(spec, Mapping) else None
    if isinstance(cmd, list):
        cmd = cmd[0] if cmd else None
    try:
        return isinstance(cmd, str) and shlex.split(cmd)[:2] == ["shelf", stage]
    except ValueError:
        return False


def _merge_dvc_yaml(path: Path, template: str, prefix: str, user_params: Mapping[str, Any],
                    family: str | None = None) -> FileChange | None:
    before = _read(path)
    if "paths" in user_params:
        raise ConfigError("params.yaml: paths", "your key clashes with modelshelf's dvc.yaml variable 'paths' "
                          "(DVC reads params.yaml as variables)", "rename your key")
    if before is None:
        text = re.sub(rf"^  ({'|'.join(STAGES)}):$", rf"  {prefix}\1:", template, flags=re.M) if prefix else template
        plots = _REGRESSION_PLOTS if _REGRESSION_PLOTS[0] in template else _PLOTS
        return FileChange(path, None, text, (*(f"stage {prefix}{s}" for s in STAGES),
                                             "variables paths", *(f"plot {p}" for p in plots), "artifact model"))
    original = before
    before, removed = _drop_stale_plots(path, before, family)
    user = _load(path, before)
    if "plots" in user and user["plots"] is None:  # every entry was the other task's: refilled below
        del user["plots"]
    blocks = _blocks(path, before)
    tlines = _lines(template)
    tblocks = _blocks(path, template)
    wanted = {
        "vars": [i for i in tblocks["vars"].items if not _has_paths(user.get("vars"), _template_paths(template))],
        "stages": [i for i in tblocks["stages"].items if not _has_stage(user.get("stages"), i[0], prefix)],
        "plots": [i for i in tblocks["plots"].items if i[0] not in _plot_names(user.get("plots"))],
        "artifacts": [i for i in tblocks["artifacts"].items if not _has_model(user.get("artifacts"))],
    }
    labels = {"vars": "variables {}", "stages": "stage " + prefix + "{}", "plots": "plot {}", "artifacts": "artifact {}"}
    added = tuple(labels[k].format(name) for k, items in wanted.items() for name, _, _ in items)
    if not added and not removed:
        return None
    nl = "\r\n" if "\r\n" in before else "\n"
    lines = _lines(before)
    inserts: list[tuple[int, list[str]]] = []
    appended: list[str] = []
    for key, items in wanted.items():
        if not items:
            continue
        tb = tblocks[key]
        body: list[str] = []
        for name, first, last in items:
            chunk = tlines[first:last + 1]
            if key == "stages" and prefix:
                chunk = [chunk[0].replace(f"{name}:", f"{prefix}{name}:", 1), *chunk[1:]]
            body += [*_gap(body, tlines, first), *chunk]
        if key not in blocks:
            appended += [f"{key}:{nl}", *_reindent(body, 0, 0, nl)]
            continue
        ub = blocks[key]
        note = [nl, *_reindent([_STAGES_NOTE], 0, ub.indent, nl)] if key == "stages" else []
        inserts.append((ub.last, note + _reindent(body, tb.indent, ub.indent, nl)))
    for at, new in sorted(inserts, reverse=True):
        if not lines[at].endswith("\n"):
            lines[at] += nl
        lines[at + 1:at + 1] = new
    if appended:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += nl
        lines += [nl, _HEADER[DVC_YAML].replace("\n", nl), *appended]
    after = "".join(lines)
    _check_kept(path, user, _load(path, after))
    return FileChange(path, original, after, added, removed=tuple(f"plot {name}" for name in removed))


def _plot_files(spec: Any) -> list[str]:
    """The data files a dvc.yaml plot definition reads (its ``x``/``y`` mappings' keys)."""
    files: list[str] = []
    if isinstance(spec, Mapping):
        for axis in ("x", "y"):
            if isinstance(spec.get(axis), Mapping):
                files += [str(f) for f in spec[axis]]
    return files


def _drop_stale_plots(path: Path, text: str, family: str | None) -> tuple[str, tuple[str, ...]]:
    """``text`` without modelshelf's plot entries of the other task family, and their names.

    An entry is modelshelf's when it has the name of one of modelshelf's plots and reads only
    files in the evaluate stage's ``--plots`` directory: a plot of the project's own (another
    name, or its own files) is never touched.  The comment line ``shelf init`` wrote above the
    block follows the task.  Nothing changes when the family is unknown.
    """
    if family not in _FAMILY_PLOTS:
        return text, ()
    stale = {name for fam, names in _FAMILY_PLOTS.items() if fam != family for name in names}
    blocks = _blocks(path, text)
    if "plots" not in blocks:
        return text, ()
    plots_dir = _evaluate_plots_dir(path.parent)
    entries = _load(path, text).get("plots")
    entries = entries if isinstance(entries, list) else []
    block = blocks["plots"]
    lines = _lines(text)
    drop: list[tuple[int, int]] = []
    removed: list[str] = []
    for i, (name, first, last) in enumerate(block.items):
        entry = entries[i] if i < len(entries) else None
        if name not in stale or not isinstance(entry, Mapping) or len(entry) != 1:
            continue
        files = _plot_files(entry.get(name))
        if not files or not all(_inside(f, plots_dir) for f in files):
            continue
        stop = last + 1
        if i + 1 < len(block.items) and all(not line.strip() for line in lines[stop:block.items[i + 1][1]]):
            stop = block.items[i + 1][1]  # the blank lines between it and the next entry go with it
        drop.append((first, stop))
        removed.append(name)
    if not drop:
        return text, ()
    for first, stop in reversed(drop):
        del lines[first:stop]
    at = block.first - 1
    if at >= 0 and lines[at].rstrip("\r\n") in _PLOTS_COMMENT.values():
        lines[at] = _PLOTS_COMMENT[family] + lines[at][len(lines[at].rstrip("\r\n")):]
    return "".join(lines), tuple(removed)


def _evaluate_plots_dir(root: Path) -> str:
    """The evaluate stage's ``--plots`` directory (root-relative, POSIX), else the template's."""
    try:
        found = stage_options(root, "evaluate").get("plots")
    except ConfigError:
        found = None
    return Path(os.path.normpath(found or "metrics/plots")).as_posix()


def _inside(file: str, directory: str) -> bool:
    rel = Path(os.path.normpath(file)).as_posix()
    return rel.startswith(directory.rstrip("/") + "/")


def _merge_params(path: Path, before: str | None, user: Mapping[str, Any], template: str) -> FileChange | None:
    from modelshelf.params import parse_params

    if before is None:
        return FileChange(path, None, template, tuple(f"section {s}" for s in _load(path, template)))
    tblocks = _blocks(path, template)
    tlines = _lines(template)
    wanted = []
    for name, block in tblocks.items():
        if name not in user:
            wanted.append(block)
            continue
        try:
            parse_params({name: user[name]}, path.name)
        except ConfigError as exc:
            raise ConfigError(f"{path.name}: {name}", f"your project's own '{name}:' key is not modelshelf's "
                              f"section ({exc.where.partition(': ')[2]}: {exc.problem})",
                              f"rename your key: modelshelf's parameters live under '{name}:'") from None
    if not wanted:
        return None
    nl = "\r\n" if "\r\n" in before else "\n"
    lines = _lines(before)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += nl
    lines += [nl] if lines else []
    lines.append(_HEADER["params.yaml"].replace("\n", nl))
    body: list[str] = []
    for block in wanted:
        body += [*_gap(body, tlines, block.first), *tlines[block.first:block.last + 1]]
    lines += _reindent(body, 0, 0, nl)
    after = "".join(lines)
    merged = _load(path, after)
    _check_kept(path, user, merged)
    parse_params(merged, path.name)  # a key of the project's that reads as a typo of a section fails here
    return FileChange(path, before, after, tuple(f"section {b.key}" for b in wanted))


def _check_kept(path: Path, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Every top-level value (and every entry of a mapping or list) of the project's reads as it did."""
    for key, value in before.items():
        new = after.get(key)
        if isinstance(value, Mapping):
            ok = isinstance(new, Mapping) and all(new.get(k) == v and k in new for k, v in value.items())
        elif isinstance(value, list):
            ok = isinstance(new, list) and new[:len(value)] == value
        else:
            ok = new == value
        if not ok:
            raise ConfigError(f"{path.name}: {key}", "modelshelf's entries cannot be inserted into its layout",
                              "add them by hand (see docs/adopting.md and `shelf init --dry-run` in an empty directory)")


def _template_paths(template: str) -> Mapping[str, Any]:
    for entry in _load(Path(DVC_YAML), template).get("vars") or []:
        if isinstance(entry, Mapping) and "paths" in entry:
            return entry["paths"]
    return {}


def _has_paths(user_vars: Any, ours: Mapping[str, Any]) -> bool:
    for entry in user_vars or []:
        if isinstance(entry, Mapping) and "paths" in entry:
            theirs = entry["paths"]
            missing = [k for k in ours if not (isinstance(theirs, Mapping) and k in theirs)]
            if missing:
                raise ConfigError(f"{DVC_YAML}: vars.paths", f"your variable 'paths' lacks modelshelf's "
                                  f"{', '.join(missing)}", "rename your variable, or add those keys to it")
            return True
    return False


def _has_stage(user_stages: Any, stage: str, prefix: str) -> bool:
    stages = user_stages if isinstance(user_stages, Mapping) else {}
    if any(_stage_runs(spec, stage) for spec in stages.values()):
        return True  # modelshelf's (perhaps edited, perhaps prefixed) is already there
    if f"{prefix}{stage}" in stages:
        hint = f"--prefix {prefix}x" if prefix else "--prefix ms_"
        raise ConfigError(f"{DVC_YAML}: stages.{prefix}{stage}", "your project has a stage of this name",
                          f"pass `shelf init {hint}` (modelshelf's stages become {prefix or 'ms_'}prepare, …) "
                          "or rename yours")
    return False


def _plot_names(user_plots: Any) -> set[str]:
    names: set[str] = set()
    for entry in user_plots or []:
        names.update(map(str, entry) if isinstance(entry, Mapping) else [str(entry)])
    return names


def _has_model(user_artifacts: Any) -> bool:
    for name, art in (user_artifacts or {}).items():
        if isinstance(art, Mapping) and art.get("type") == "model":
            if Path(str(art.get("path"))).as_posix() == MODEL_PATH:
                return True
            raise ConfigError(f"{DVC_YAML}: artifacts.{name}", "your project already declares a type: model "
                              f"artefact, and modelshelf's registry needs exactly one ({MODEL_PATH})",
                              "drop 'type: model' from yours, or point its path at " + MODEL_PATH)
        if name == "model":
            raise ConfigError(f"{DVC_YAML}: artifacts.model", "your project has an artefact of this name",
                              "rename yours: modelshelf registers its model as 'model'")
    return False


def _append_lines(path: Path, wanted: tuple[str, ...]) -> FileChange | None:
    before = _read(path)
    have = {line.strip() for line in (before or "").splitlines()}
    missing = [line for line in wanted if line not in have]
    if not missing:
        return None
    nl = "\r\n" if before and "\r\n" in before else "\n"
    text = before or ""
    if text and not text.endswith("\n"):
        text += nl
    return FileChange(path, before, text + "".join(m + nl for m in missing), tuple(f"line {m}" for m in missing))


def _task_family(root: Path, user_params: Mapping[str, Any]) -> str | None:
    """``regression`` or ``classification``, as params.yaml says now: an explicit ``data.task``,
    else the data source's target as the prepare stage would infer it, else (no readable data)
    the prepared schema's task; None when none of them tells.

    params.yaml comes before the prepared schema: after a change of task the schema is stale
    until the next ``dvc repro``, and ``shelf init`` is rerun precisely then.
    """
    import json

    data = user_params.get("data") if isinstance(user_params.get("data"), Mapping) else {}
    task = data.get("task", "auto") if isinstance(data, Mapping) else "auto"
    if task in ("regression", "classification"):
        return str(task)
    try:
        from modelshelf.params import parse_params
        from modelshelf.pipeline import data as datasets

        params = parse_params(dict(user_params)).data
        frame = datasets.load_source(params, root).frame
        return "regression" if datasets.infer_task(frame[params.target], params.task) == "regression" \
            else "classification"
    except Exception:  # noqa: BLE001 - no data yet (or none readable): the last prepared schema's
        pass
    try:
        schema = root / stage_options(root, "prepare").get("out", "data/prepared") / "schema.json"
        task = json.loads(schema.read_text(encoding="utf-8"))["task"]
    except (ConfigError, OSError, ValueError, KeyError, TypeError):
        return None
    if task in ("regression", "binary", "multiclass"):
        return "regression" if task == "regression" else "classification"
    return None


def _regression_template(template: str) -> str:
    """The dvc.yaml template with regression's plots in place of classification's."""
    start = template.index("\nplots:\n") + 1
    end = template.index("\nartifacts:", start)
    head = template[:start]
    if head.endswith(_PLOTS_COMMENT["classification"] + "\n"):  # the comment above names the other task
        head = head[:head.rstrip("\n").rfind("\n") + 1] + _PLOTS_COMMENT["regression"] + "\n"
    return head + _REGRESSION_BLOCK + template[end:]


def _plot_templates(root: Path, fresh: bool) -> list[FileChange]:
    """The offline page template and the curve template under .dvc/plots/, and DVC's
    ``plots.html_template`` pointing at the page (a line of .dvc/config)."""
    from modelshelf import charts

    dvc_dir = root / ".dvc"
    changes = []
    for rel, make, generated in ((charts.HTML_TEMPLATE, charts.dvc_html_template, True),
                                 (charts.CURVE_TEMPLATE_FILE, charts.curve_template, False)):
        path = dvc_dir / rel
        if not path.is_file():
            changes.append(FileChange(path, None, make(), (f"plots template {rel}",), generated))
    config = dvc_dir / "config"
    before = _read(config) if not fresh else None
    text = before if before is not None else ("[core]\n    analytics = false\n" if fresh else "")
    if not re.search(r"^\s*html_template\s*=", text, flags=re.M):
        nl = "\r\n" if "\r\n" in text else "\n"
        if text and not text.endswith("\n"):
            text += nl
        line = f"    html_template = {charts.HTML_TEMPLATE}{nl}"
        m = re.search(r"^\[\s*['\"]?plots['\"]?\s*\][^\n]*\n", text, flags=re.M)
        after = text[:m.end()] + line + text[m.end():] if m else f"{text}[plots]{nl}{line}"
        changes.append(FileChange(config, before, after, ("config plots.html_template",)))
    return changes


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GitError(cmd[0], "command not found", f"install {cmd[0]}") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise GitError(" ".join(cmd[:2]), lines[-1] if lines else "failed", "check the directory")
