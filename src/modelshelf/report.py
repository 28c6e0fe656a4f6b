"""The pull-request report: one gate verdict on the workspace candidate against a base revision.

The verdict comes from :func:`modelshelf.pipeline.gate.judge`, the function the pipeline's gate stage
uses, so the report and the pipeline can never disagree.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshelf.card import parse_card, schema_changed
from modelshelf.errors import ConfigError
from modelshelf.pipeline.gate import COMMITTED, GateResult, judge
from modelshelf.params import load_params, parse_params
from modelshelf.tags import SemVer

MARKER = "<!-- modelshelf-report -->"
#: The plots the report draws (kinds of :data:`modelshelf.charts.TASK_PLOTS`), by task family:
#: one file each, ``KIND.png``.
PLOT_KINDS = {"classification": ("confusion", "roc"), "regression": ("fit", "residuals")}


@dataclass(frozen=True)
class PlotFile:
    """One PNG the report wrote: its kind (``confusion``, ``roc``, ``fit``, ``residuals``),
    title and path (under the directory given to :func:`build`, as given)."""

    kind: str
    title: str
    path: Path

    def link(self, relative_to: Path | None = None) -> str:
        """The path as markdown links it: as given, or relative to ``relative_to``, POSIX."""
        path = self.path if relative_to is None else Path(os.path.relpath(self.path, relative_to))
        return path.as_posix()


@dataclass(frozen=True)
class Report:
    base: str
    base_commit: str | None
    same_commit: bool
    gate: GateResult
    params_changed: dict[str, tuple[Any, Any]]
    version: str | None
    version_reason: str
    size: tuple[int | None, int | None]
    dataset: dict[str, tuple[Any, Any]]
    metrics_base: dict[str, float]
    plots: tuple[PlotFile, ...] = ()

    @property
    def passed(self) -> bool:
        return self.gate.passed

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base, "base_commit": self.base_commit, "same_commit": self.same_commit,
            "passed": self.passed, "gate": self.gate.to_json(),
            "params_changed": {k: {"old": a, "new": b} for k, a, b in _rows(self.params_changed)},
            "release": {"version": self.version, "reason": self.version_reason},
            "model_bytes": {"old": self.size[0], "new": self.size[1]},
            "dataset": {k: {"old": a, "new": b} for k, a, b in _rows(self.dataset)},
            "plots": [{"kind": f.kind, "title": f.title, "path": f.path.as_posix()} for f in self.plots],
        }

    def markdown(self, relative_to: Path | None = None) -> str:
        """The report as markdown, headed by the sticky-comment marker.

        The plots (if :func:`build` wrote any) are images linked by their paths as given, or
        relative to ``relative_to``: the directory the markdown is written in.
        """
        verdict = "✓ passes the gate" if self.passed else "✗ fails the gate"
        title = f"v{self.version}" if self.version else "candidate"
        base_label = f"{self.base} `{(self.base_commit or '')[:7]}`" if self.base_commit else self.base
        lines = [MARKER, f"### modelshelf: {title} {verdict}", ""]
        if self.same_commit:
            lines += [f"The candidate is the baseline's own commit ({base_label}): no change.", ""]
        lines += [f"| metric | baseline ({base_label}) | candidate | change | threshold | |",
                  "|---|---:|---:|---:|---:|:-:|"]
        for c in self.gate.checks:
            cmp = "≥" if c.higher_is_better else "≤"
            lines.append(f"| {c.metric} | {_num(c.baseline)} | {_num(c.value)} "
                         f"| {c.interval.text() if c.interval else _delta(c.value, c.baseline)} "
                         f"| {cmp} {_num(c.threshold)} | {'✓' if c.passed else '✗'} |")
        tested = [c.interval for c in self.gate.checks if c.interval is not None]
        if tested:
            lines += ["", f"_Change: candidate − baseline on the same held-out rows, with its paired "
                          f"{tested[0].method} interval at {tested[0].level:.4g} (Bonferroni over {len(tested)} "
                          f"metric{'s' if len(tested) > 1 else ''}); gate.regression: significant._"]
        failing = [f"{c.metric}: {'; '.join(c.reasons)}" for c in self.gate.checks if not c.passed]
        if failing:
            lines += ["", "**Gate failures:** " + " · ".join(failing)]
        b = self.gate.baseline
        if not b.found:
            lines += ["", f"_No baseline at {self.base} ({b.note}): thresholds only._"]
        elif b.rescored and b.rescore is not None:
            committed = ", ".join(f"{k} {_num(v)}" for k, v in (b.committed or {}).items()
                                  if k in {c.metric for c in self.gate.checks})
            lines += ["", f"**Baseline:** {b.rescore.label()}: {b.rescore.note}; "
                          f"committed at {self.base}: {committed}"]
        elif b.rescore is not None:
            lines += ["", f"**Baseline:** {COMMITTED} at {self.base}; not re-scored: {b.rescore.note}"]
        lines += ["", "**Params changed:** " + (", ".join(
            f"`{k}` {_val(a)} → {_val(b)}" for k, a, b in _rows(self.params_changed)) or "none")]
        lines.append(f"**Release on merge:** {'v' + self.version if self.version else 'none'} ({self.version_reason})")
        old, new = self.size
        lines.append(f"**Model size:** {_bytes(old)} → {_bytes(new)}{_pct(old, new)}")
        lines.append("**Dataset:** " + (", ".join(f"{k} {_val(a)} → {_val(b)}" for k, a, b in _rows(self.dataset))
                                        or "unchanged"))
        if self.plots:
            lines += ["", "**Candidate plots:**", "",
                      " ".join(f"![{f.title}]({_link_target(f.link(relative_to))})" for f in self.plots)]
        return "\n".join(lines) + "\n"

    def text(self, relative_to: Path | None = None) -> str:
        """:meth:`markdown` without the marker."""
        return self.markdown(relative_to).replace(MARKER + "\n", "")


def build(root: Path, base: str = "main", plots: Path | None = None) -> Report:
    """Judge the workspace candidate of the project at ``root`` against revision ``base``.

    With ``plots`` (a directory, created if missing), also render the candidate's plots from the
    evaluate stage's plot data to PNG there, one ``KIND.png`` each (:data:`PLOT_KINDS`): the
    confusion matrix and ROC of a classifier, predicted vs actual and the residuals of a
    regressor.  ``KIND.png`` files of the other task's kinds there are removed.

    Raises:
        ConfigError: no candidate metrics, or (with ``plots``) no plot data to draw.
    """
    from modelshelf.pipeline import baseline as baselines
    from modelshelf.project import candidate_dir, stage_options
    from modelshelf.registry.core import Workspace, open_registry

    ws = Workspace.open(root)
    params = load_params(ws.root / "params.yaml")
    options = stage_options(ws.root, "gate")
    metrics_rel = options["metrics"]
    metrics_path = ws.root / metrics_rel
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        raise ConfigError(metrics_rel, "no candidate metrics", "run `dvc repro` (or `dvc pull`) first") from None
    from modelshelf.pipeline.metrics import task_of

    task = task_of(k for k, v in metrics.items() if v is not None) or "binary"
    prepared = ws.root / options["prepared"] if "prepared" in options else None
    significant = params.gate.regression == "significant"
    baseline = baselines.read(ws.repo, base, ws.repo.relpath(metrics_path), root=ws.root, prepared=prepared,
                              bump=params.release.bump, outputs=significant)
    paired = (baselines.paired(baseline, candidate_dir(ws.root), prepared, params.data.random_state)
              if significant else None)
    result = judge(metrics, params.gate, task, baseline, paired)
    base_commit = baseline.commit
    same = base_commit is not None and base_commit == ws.repo.head() and not ws.repo.is_dirty()

    old_params = ws.repo.show(base_commit, ws.repo.relpath(ws.root / "params.yaml")) if base_commit else None
    params_changed = _params_diff(old_params, (ws.root / "params.yaml").read_text())
    card_path = ws.repo.root / ws.card
    card = parse_card(card_path.read_bytes(), ws.card) if card_path.is_file() else None
    raw_base_card = ws.repo.show(base_commit, ws.card) if base_commit else None
    base_card = parse_card(raw_base_card, f"{base}:{ws.card}") if raw_base_card else None

    if not result.passed:
        version, reason = None, "the gate fails"
    elif card is not None and card.get("metrics") != metrics:
        version, reason = None, "the card does not match the metrics: run `dvc repro` and commit"
    else:
        version, reason = _release_version(card, base_card, open_registry(ws).releases)
    size = (_model_bytes(base_card), _model_bytes(card))
    dataset = {}
    for key in ("rows", "sha256"):
        a = (base_card or {}).get("dataset", {}).get(key)
        b = (card or {}).get("dataset", {}).get(key)
        if a != b:
            dataset[key] = (a, b)
    drawn = write_plots(ws.root, task, plots) if plots is not None else ()
    return Report(base, base_commit, same, result, params_changed, version, reason, size, dataset,
                  dict(baseline.metrics or {}), drawn)


def write_plots(root: Path, task: str, out: Path) -> tuple[PlotFile, ...]:
    """Render the candidate's plots of ``task`` (:data:`PLOT_KINDS`) to ``out/KIND.png``, from the
    plot data the evaluate stage of the project at ``root`` wrote (its ``--plots`` directory).

    The Vega-Lite specs are :func:`modelshelf.charts.task_specs`' (those of ``dvc plots``' data).

    Raises:
        ConfigError: no plot data for the task (the pipeline has not run, or an older evaluate).
    """
    from modelshelf import artefacts, charts
    from modelshelf.project import stage_options

    family = "regression" if task == "regression" else "classification"
    try:
        data_rel = stage_options(root, "evaluate").get("plots") or "metrics/plots"
    except ConfigError:
        data_rel = "metrics/plots"
    rows: dict[str, list[dict[str, Any]]] = {}
    for _, stem, _ in charts.TASK_PLOTS[family]:
        try:
            found = json.loads((root / data_rel / f"{stem}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(found, list):
            rows[stem] = found
    specs = charts.task_specs(rows, task, PLOT_KINDS[family])
    if not specs:
        raise ConfigError(f"{data_rel}/", f"no plot data of the {task} candidate to draw",
                          "run `dvc repro` (or `dvc pull`) first")
    out.mkdir(parents=True, exist_ok=True)
    written: list[PlotFile] = []
    for kind, (title, spec) in specs.items():
        path = out / f"{kind}.png"
        png = charts.to_png(spec)
        with artefacts.atomic_output(path, "wb") as fh:
            fh.write(png)
        written.append(PlotFile(kind, title, path))
    for kind in {k for kinds in PLOT_KINDS.values() for k in kinds} - set(specs):
        (out / f"{kind}.png").unlink(missing_ok=True)  # another task's (or a run's without that data)
    return tuple(written)


def _link_target(path: str) -> str:
    """``path`` as a markdown link destination: percent-encoded (spaces, parentheses, …)."""
    from urllib.parse import quote

    return quote(path, safe="/")


def _release_version(card: dict[str, Any] | None, base_card: dict[str, Any] | None,
                     releases: tuple[Any, ...]) -> tuple[str | None, str]:
    if card is None:
        return None, "no model card in the workspace"
    if base_card and base_card.get("artefacts", {}).get("model", {}).get("sha256") == \
            card["artefacts"]["model"]["sha256"]:
        return None, "the model is unchanged"
    version = SemVer.parse(card["version"])
    why = str(card.get("version_bump", ""))
    highest = max((r.version for r in releases), default=None)
    if highest is not None and version <= highest:
        part = why.split(":")[0] if why.split(":")[0] in ("major", "minor", "patch") else "minor"
        return str(highest.bump(part)), f"{why}; v{version} is taken, the release job renumbers"
    if base_card is not None and schema_changed(base_card.get("input_schema"), card["input_schema"]):
        why += " (input schema changed against the base)" if "major" not in why else ""
    return str(version), why


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _params_diff(old_text: bytes | None, new_text: str) -> dict[str, tuple[Any, Any]]:
    import yaml

    old = _flatten(yaml.safe_load(old_text) or {}) if old_text else {}
    new_raw = yaml.safe_load(new_text) or {}
    parse_params(new_raw)  # a bad params.yaml fails here with its usual message
    new = _flatten(new_raw)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _model_bytes(card: dict[str, Any] | None) -> int | None:
    return (card or {}).get("artefacts", {}).get("model", {}).get("bytes")


def _rows(d: dict[str, tuple[Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [(k, a, b) for k, (a, b) in d.items()]


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _delta(new: float | None, old: float | None) -> str:
    if new is None or old is None:
        return "–"
    d = new - old
    return "no change" if abs(d) < 5e-5 else f"{d:+.4f}"


def _val(v: Any) -> str:
    if isinstance(v, str) and len(v) == 64:
        return f"`{v[:12]}…`"
    return "–" if v is None else f"`{v}`"


def _bytes(n: int | None) -> str:
    return "–" if n is None else f"{n:,} bytes"


def _pct(old: int | None, new: int | None) -> str:
    if not old or new is None:
        return ""
    return f" ({(new - old) / old:+.1%})"
