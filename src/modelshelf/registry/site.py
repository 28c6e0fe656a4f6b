"""``shelf site``: the registry as one static page, built from the git tags and the cards.

Every release (date, commit, author, gate verdict, metrics, its card and its diff against the
one before), who holds each stage and since when, and one chart per metric across releases
with its thresholds and the stage changes marked; for the releases that hold a stage and the
latest, the drift of the project's current data (``data.source``) against the training profile
each recorded. The page needs no server and no network: Vega, Vega-Lite and vega-embed come
from ``vl-convert-python``'s bundle (:func:`modelshelf.charts.bundle`), written beside it.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelshelf import charts
from modelshelf.card import diff_cards
from modelshelf.errors import ConfigError, ShelfError
from modelshelf.registry.core import Registry, Release, Workspace, open_registry

if TYPE_CHECKING:
    from modelshelf.drift.profile import DriftResult

MARKER = ".modelshelf-site"   # in every directory this module writes, so a rebuild may replace it


@dataclass(frozen=True)
class Site:
    """What :func:`build` wrote."""

    index: Path
    releases: int
    charts: int
    drift: int = 0   # releases whose section shows a drift report (the others a note, or nothing)


@dataclass(frozen=True)
class Drift:
    """The drift shown in one release's section: a report of ``source`` against the release's
    training profile, or the one-line ``note`` saying why there is none."""

    version: str
    source: str
    result: DriftResult | None = None
    note: str | None = None


def build(start: str | Path = ".", out: str | Path = "build/registry", drift: bool = True) -> Site:
    """Write the registry's static page: ``out/index.html``, ``out/assets/``, ``out/cards/``.

    The directory is built beside ``out`` and renamed into place, so a reader sees the old
    site or the new one, never half of one; what a killed build left beside it (hidden
    directories holding the marker, of no live process) is removed by the next one.

    Args:
        start: a directory inside the project.
        out: the site's directory (relative to the current directory).
        drift: show, for each release holding a stage and the latest, the drift of the
            project's current data (``data.source``) against its training profile. A release
            with no profile, or data that cannot be read, gets a note instead.

    Returns:
        The :class:`Site`: the index page, the number of releases, of charts on it and of
        drift reports.

    Raises:
        ConfigError: ``out`` exists and is not a site this command wrote.
        GitError: not a git repository, or a clone without the model's tags.
    """
    out = Path(out).absolute()
    if out.exists() and not (out / MARKER).is_file():
        raise ConfigError(str(out), "exists and is not a site written by `shelf site`",
                          "choose another directory with -o, or remove it")
    reg = open_registry(Workspace.open(start))
    reports = drift_reports(reg, start) if drift else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-{os.getpid()}-", dir=out.parent))
    try:
        shown = _write(reg, stage, reports)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for leftover in stale(out):
        shutil.rmtree(leftover, ignore_errors=True)
    return Site(out / "index.html", len(reg.releases), shown,
                sum(1 for d in reports.values() if d.result is not None))


def stale(out: Path) -> list[Path]:
    """What killed builds of ``out`` left beside it: hidden ``.NAME.old-PID`` and staging
    ``.NAME.new-PID-*`` directories holding :data:`MARKER` whose process is gone (or is this one)."""
    found = []
    for entry in out.parent.iterdir():
        if not entry.name.startswith(f".{out.name}."):
            continue
        kind, _, rest = entry.name[len(out.name) + 2:].partition("-")
        if kind not in ("old", "new") or not entry.is_dir() or entry.is_symlink() or not (entry / MARKER).is_file():
            continue
        pid = rest.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            found.append(entry)
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def _write(reg: Registry, root: Path, reports: dict[str, Drift]) -> int:
    (root / MARKER).write_text("written by `shelf site`; rebuilt as a whole\n", encoding="utf-8")
    (root / "assets").mkdir()
    (root / "assets" / "vega.js").write_text(charts.bundle(), encoding="utf-8")
    (root / "cards").mkdir()
    for rel in reg.releases:
        if rel.card is not None:
            (root / "cards" / f"v{rel.version}.json").write_text(json.dumps(rel.card, indent=2, sort_keys=True),
                                                                 encoding="utf-8")
    specs = metric_specs(reg)
    (root / "index.html").write_text(page(reg, specs, reports), encoding="utf-8")
    return len(specs) + sum(1 for d in reports.values() if _overview(d) is not None)


def drift_reports(reg: Registry, start: str | Path = ".") -> dict[str, Drift]:
    """The drift of the project's ``data.source`` against the training profile of each release
    holding a stage and of the latest, by version (``"1.2.0"``); never raises for one release.

    Input features only: the predictions' drift needs each release's model (``shelf drift --model``).
    """
    from modelshelf.params import load_params
    from modelshelf.project import find_root

    wanted = [r for r in reg.releases if r.stages]
    live = [r for r in reg.releases if not r.deprecated]
    if live and not reg.deprecated and live[-1] not in wanted:
        wanted.append(live[-1])
    if not wanted:
        return {}
    try:
        root = find_root(start)
        source = load_params(root / "params.yaml").data.source
    except ShelfError as exc:
        return {str(r.version): Drift(str(r.version), "data.source", note=f"no data to compare: {exc}")
                for r in wanted}
    if source.startswith("builtin:"):
        note = f"data.source is {source}, built in: there is no new data to compare"
        return {str(r.version): Drift(str(r.version), source, note=note) for r in wanted}
    from modelshelf.drift.core import check

    reports = {}
    for rel in wanted:
        version = str(rel.version)
        try:
            result = check(start, root / source, f"v{version}", predictions=False).result
        except ShelfError as exc:   # paths relative to the project: the page is published
            reports[version] = Drift(version, source, note=f"no drift report: {_relative(exc, root)}")
        except Exception as exc:  # noqa: BLE001 - one release's drift must never fail the page
            reports[version] = Drift(version, source,
                                     note=f"no drift report: {type(exc).__name__}: {_relative(exc, root)}")
        else:
            reports[version] = Drift(version, source, result)
    return reports


def _relative(exc: Exception, root: Path) -> str:
    return str(exc).replace(f"{root}{os.sep}", "")


def _overview(d: Drift) -> dict[str, Any] | None:
    if d.result is None or d.result.schema_problems:
        return None
    from modelshelf.drift import charts as drift_charts

    return drift_charts.specs(d.result, d.version).get("overview")


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    return f"{value:.4g}"


def metric_specs(reg: Registry) -> list[dict[str, Any]]:
    """One Vega-Lite spec per metric: its value per release over time, the gate's threshold
    per release (dashed), and a rule at every stage change."""
    rows, thresholds = [], []
    for rel in reg.releases:
        card = rel.card or {}
        for metric, value in card.get("metrics", {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append({"metric": metric, "version": f"v{rel.version}", "date": _iso(rel.timestamp),
                             "value": value})
        for metric, check in card.get("gate", {}).get("checks", {}).items():
            if isinstance(check.get("threshold"), int | float):
                thresholds.append({"metric": metric, "date": _iso(rel.timestamp), "threshold": check["threshold"]})
    events = [{"date": _iso(a.timestamp), "event": f"{a.stage} {'→ v' + str(a.version) if a.version else 'unassigned'}",
               "stage": a.stage} for a in reg.assignments]
    specs = []
    for metric in sorted({r["metric"] for r in rows}):
        mine = [r for r in rows if r["metric"] == metric]
        layers: list[dict[str, Any]] = [{
            "data": {"values": mine},
            "mark": {"type": "line", "point": {"size": 60}},
            "encoding": {"x": {"field": "date", "type": "temporal", "title": None},
                         "y": {"field": "value", "type": "quantitative", "title": metric,
                               "scale": {"zero": False}},
                         "tooltip": [{"field": "version"}, {"field": "value", "format": ".4g"},
                                     {"field": "date", "type": "temporal"}]},
        }]
        limit = [t for t in thresholds if t["metric"] == metric]
        if limit:
            layers.append({"data": {"values": limit},
                           "mark": {"type": "line", "interpolate": "step-after", "strokeDash": [6, 4],
                                    "color": "#c0392b"},
                           "encoding": {"x": {"field": "date", "type": "temporal"},
                                        "y": {"field": "threshold", "type": "quantitative"},
                                        "tooltip": [{"field": "threshold", "format": ".4g"}]}})
        if events:
            layers.append({"data": {"values": events}, "mark": {"type": "rule", "opacity": 0.5},
                           "encoding": {"x": {"field": "date", "type": "temporal"},
                                        "color": {"field": "stage", "type": "nominal", "title": "stage change"},
                                        "tooltip": [{"field": "event"}, {"field": "date", "type": "temporal"}]}})
        specs.append({"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
                      "title": metric, "width": 560, "height": 160, "layer": layers})
    return specs


def _diff(old: Release | None, new: Release) -> str:
    if old is None or old.card is None or new.card is None:
        return "<p>first release</p>" if old is None else "<p>no card to compare</p>"
    changes = diff_cards(old.card, new.card)
    def names(card: dict[str, Any]) -> set[str]:
        return {f.get("name") for f in card.get("input_schema", {}).get("features", []) if isinstance(f, dict)}
    added, dropped = sorted(names(new.card) - names(old.card)), sorted(names(old.card) - names(new.card))
    rows = [(group, key, a, b) for group, items in changes.items() for key, (a, b) in items.items()]
    if not rows and not added and not dropped:
        return f"<p>no change from v{old.version}</p>"
    body = "".join(f"<tr><td>{html.escape(g)}</td><td>{html.escape(k)}</td><td>{html.escape(_num(a))}</td>"
                   f"<td>{html.escape(_num(b))}</td></tr>" for g, k, a, b in rows)
    extra = "".join(f"<p>{label}: {html.escape(', '.join(map(str, items)))}</p>"
                    for label, items in (("features added", added), ("features dropped", dropped)) if items)
    return (f"<table><tr><th></th><th>against v{old.version}</th><th>before</th><th>now</th></tr>{body}</table>"
            + extra)


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can end it early."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _drift_block(d: Drift, chart: int | None) -> str:
    """One release's drift: the verdict, a table per feature and the overview chart ``chart-N``."""
    e = html.escape
    head = f"<h4>drift of the current data ({e(d.source)})</h4>"
    if d.result is None:
        return f"{head}<p class=note>{e(d.note or 'no drift report')}</p>"
    r = d.result
    verdict = {"no drift": "passed", "drift": "failed"}.get(r.verdict, "failed")
    lines = [f"{head}<p>{e(str(r.rows))} rows against v{e(d.version)}'s training profile: "
             f"<span class='{verdict}'>{e(r.verdict)}</span></p>"]
    if r.schema_problems:
        lines.append("<ul>" + "".join(f"<li>{e(p)}</li>" for p in r.schema_problems) + "</ul>")
        return "".join(lines)
    rows = "".join(
        f"<tr><td>{e(f.name)}</td><td class=num>{'∞' if math.isinf(f.psi) else e(f'{f.psi:.3g}')}</td><td class=num>{e(f'{f.p_value:.2g}')}</td>"
        f"<td class=num>{e(f'{f.missing_ref:.1%} → {f.missing_new:.1%}')}</td>"
        f"<td class='level-{e(f.level)}'>{e(f.level)}</td></tr>"
        for f in sorted(r.features, key=lambda f: -f.psi))
    lines.append("<table class=drift><tr><th>feature</th><th>PSI</th><th>p-value</th>"
                 f"<th>missing (training → new)</th><th>level</th></tr>{rows}</table>")
    if chart is not None:
        lines.append(f"<div class=chart id='chart-{chart}'></div>")
    return "".join(lines)


def page(reg: Registry, specs: list[dict[str, Any]], drift: dict[str, Drift] | None = None) -> str:
    """The index page's HTML (every value from git or a card is escaped); ``drift`` by version
    (:func:`drift_reports`) puts a drift report in those releases' sections."""
    e = html.escape
    drift = drift or {}
    embedded = list(specs)   # chart-N draws embedded[N]: the metrics' charts, then the drift overviews
    name = e(reg.name)
    holders = "".join(f"<tr><td>{e(stage)}</td><td>{e(str(v))}</td></tr>" for stage, v in sorted(reg.holders.items()))
    history = "".join(
        f"<tr><td>{e(_when(a.timestamp))}</td><td>{e(a.stage)}</td>"
        f"<td>{e('v' + str(a.version)) if a.version else ('unassigned' if a.kind == 'unassign' else e(a.commit[:12]))}"
        f"</td><td><code>{e(a.tag)}</code></td></tr>"
        for a in reversed(reg.assignments))
    metrics = sorted({m for r in reg.releases for m in (r.card or {}).get("metrics", {})})
    rows, details = [], []
    for rel in sorted(reg.releases, key=lambda r: r.version, reverse=True):
        card = rel.card or {}
        passed = card.get("gate", {}).get("passed")
        verdict = "passed" if passed else ("failed" if passed is False else "unknown")
        flags = " ".join(filter(None, ["deprecated" if rel.deprecated else "", e(rel.problem or "")]))
        cells = "".join(f"<td class=num>{e(_num(card.get('metrics', {}).get(m)))}</td>" for m in metrics)
        rows.append(f"<tr id='v{e(str(rel.version))}'><td><a href='#card-v{e(str(rel.version))}'>v{e(str(rel.version))}</a>"
                    f"</td><td>{e(_when(rel.timestamp))}</td><td><code>{e(rel.commit[:12])}</code></td>"
                    f"<td>{e(rel.author)}</td><td class='{verdict}'>{verdict}</td>{cells}"
                    f"<td>{e(', '.join(rel.stages))}</td><td>{flags}</td></tr>")
    ascending = list(reg.releases)
    live = [r for r in ascending if not r.deprecated]
    latest = live[-1] if live and not reg.deprecated else None
    for i, rel in enumerate(ascending):
        previous = ascending[i - 1] if i else None
        version = e(str(rel.version))
        card = json.dumps(rel.card, indent=2, sort_keys=True) if rel.card is not None else "(no card)"
        shown = drift.get(str(rel.version))
        block = ""
        if shown is not None:
            overview = _overview(shown)
            if overview is not None:
                embedded.append(overview)
            block = _drift_block(shown, len(embedded) - 1 if overview is not None else None)
        labels = [*rel.stages, *(["latest"] if rel is latest else [])]
        held = f" ({e(', '.join(labels))})" if labels else ""
        details.append(f"<section id='release-v{version}'><h3>v{version}{held}</h3>{block}"
                       f"<details id='card-v{version}'><summary>v{version}: card and diff</summary>"
                       f"<h4>against the release before</h4>{_diff(previous, rel)}"
                       f"<h4>card</h4><p><a href='cards/v{version}.json'>cards/v{version}.json</a></p>"
                       f"<pre>{e(card)}</pre></details></section>")
    heads = "".join(f"<th>{e(m)}</th>" for m in metrics)
    divs = "".join(f"<div class=chart id='chart-{i}'></div>" for i in range(len(specs)))
    data = "".join(f"<script type='application/json' id='spec-{i}'>{_script_json(s)}</script>"
                   for i, s in enumerate(embedded))
    newest = _when(reg.last_event) if reg.last_event else "no events"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name}: model registry</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.passed {{ color: #1e7b34; }} .failed {{ color: #b3261e; font-weight: bold; }}
pre {{ background: #f6f8fa; padding: .8em; overflow: auto; max-height: 30em; }}
details {{ margin: .4em 0; }} summary {{ cursor: pointer; }}
.level-warn {{ color: #9a6b00; }} .level-drift {{ color: #b3261e; font-weight: bold; }} .note {{ color: #555; }}
</style></head>
<body>
<h1>{name}</h1>
<p>{len(reg.releases)} releases; newest event {e(newest)}; built from the git tags and the cards at each release's commit.</p>
<h2>Stages</h2>
<table><tr><th>stage</th><th>held by</th></tr>{holders or "<tr><td colspan=2>no stage assigned</td></tr>"}</table>
<h2>Releases</h2>
<table><tr><th>version</th><th>date</th><th>commit</th><th>author</th><th>gate</th>{heads}<th>stages</th><th></th></tr>
{"".join(rows) or "<tr><td>no release yet</td></tr>"}</table>
<h2>Metrics across releases</h2>
{divs or "<p>no metrics to chart</p>"}
<h2>Stage history</h2>
<table><tr><th>date</th><th>stage</th><th>version</th><th>tag</th></tr>{history or "<tr><td colspan=4>none</td></tr>"}</table>
<h2>Releases in detail</h2>
{"".join(details)}
{data}
<script src="assets/vega.js"></script>
<script>
for (const el of document.querySelectorAll("script[id^=spec-]")) {{
  const target = "#chart-" + el.id.slice(5);
  vegaEmbed(target, JSON.parse(el.textContent), {{renderer: "svg", actions: false}})
    .catch((err) => {{ console.error(err); document.querySelector(target).textContent = "chart failed: " + err; }});
}}
</script>
</body></html>
"""
