"""Typed, validated parameters read once from params.yaml.

Every problem names the file and the full key path, and suggests the intended
key for a typo, so a bad ``params.yaml`` is fixed in one edit.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from modelshelf.errors import ConfigError
from modelshelf.pipeline.metrics import CATALOGUE

TASKS = ("auto", "classification", "regression")
BUMPS = ("auto", "major", "minor", "patch")
REGRESSIONS = ("point", "significant")
NO_BASELINE = "none"
MISSING_TARGET = ("error", "drop")
FORMATS = ("auto", "csv", "parquet")


@dataclass(frozen=True)
class DataParams:
    source: str = "builtin:breast_cancer"
    target: str = "target"
    task: str = "auto"
    test_size: float = 0.2
    random_state: int = 42
    drop: tuple[str, ...] = ()          # columns ignored entirely
    id: str | None = None               # an ID column: never a feature, carried through predictions
    missing_target: str = "error"       # error | drop (rows without a target)
    sep: str = ","                      # CSV separator
    format: str = "auto"                # auto (by extension) | csv | parquet
    max_categories: int = 50            # more distinct strings than this: refused, not one-hot encoded


@dataclass(frozen=True)
class TrainParams:
    estimator: str = "sklearn.ensemble.RandomForestClassifier"
    hyperparams: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class GateParams:
    thresholds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    tolerance: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    default_tolerance: float = 0.0
    baseline: str = "main"
    regression: str = "point"      # point | significant (see pipeline/significance.py)
    confidence: float = 0.95       # family-wise, Bonferroni-corrected over the gated metrics
    resamples: int = 2000

    @property
    def first_of_line(self) -> bool:
        """``gate.baseline: none``: thresholds only, no baseline."""
        return self.baseline == NO_BASELINE

    def tolerance_for(self, metric: str) -> float:
        return self.tolerance.get(metric, self.default_tolerance)


@dataclass(frozen=True)
class SerialiseParams:
    compress: int = 3
    onnx: bool = True
    onnx_tolerance: float = 1e-4


@dataclass(frozen=True)
class TrustedIdentity:
    """A keyless (Sigstore) signer: the certificate's identity and its OIDC issuer."""

    identity: str
    issuer: str


@dataclass(frozen=True)
class TrustParams:
    """``release.trust``: who may sign releases (paths relative to params.yaml's directory).

    ``keys``: EC public keys (PEM); ``certificates``: CA certificates (PEM) that signing
    certificates must chain to; ``identities``: Sigstore identities; ``tag_signers``: an SSH
    ``allowed_signers`` file for ``git verify-tag``.
    """

    keys: tuple[str, ...] = ()
    certificates: tuple[str, ...] = ()
    identities: tuple[TrustedIdentity, ...] = ()
    tag_signers: str | None = None

    @property
    def empty(self) -> bool:
        """True when no signer of model files is trusted (``tag_signers`` does not count)."""
        return not (self.keys or self.certificates or self.identities)


@dataclass(frozen=True)
class ReleaseParams:
    bump: str = "auto"
    stages: tuple[str, ...] = ("dev", "staging", "prod")
    protected_stages: tuple[str, ...] = ("prod",)
    trust: TrustParams = TrustParams()
    # False, True (every use of every release) or the stages whose use requires a signature
    require_signature: bool | tuple[str, ...] = False


@dataclass(frozen=True)
class DriftParams:
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    p_value: float = 0.01
    missing_rate: float = 0.1       # the largest tolerated absolute change in a feature's share of missing values


@dataclass(frozen=True)
class Params:
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    gate: GateParams = GateParams()
    serialise: SerialiseParams = SerialiseParams()
    release: ReleaseParams = ReleaseParams()
    drift: DriftParams = DriftParams()


def suggest(word: str, choices: list[str] | tuple[str, ...], noun: str = "valid keys") -> str:
    """A did-you-mean remedy for ``word``, or a list of the valid choices (``noun: a, b``)."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:  # 'f1' for 'f1_macro': a prefix is as good a hint as a typo
        close = [c for c in choices if c.startswith(word + "_") or word.startswith(c + "_")][:1]
    if close:
        return f"did you mean '{close[0]}'?"
    if not choices:
        return "remove it"
    listed = sorted(choices)
    more = f", … ({len(listed) - 12} more)" if len(listed) > 12 else ""
    return f"{noun}: " + ", ".join(listed[:12]) + more


class _Reader:
    """Walks the raw YAML mapping, building messages with the file and key path."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, path: str, problem: str, remedy: str = "") -> ConfigError:
        return ConfigError(f"{self.file}: {path}" if path else self.file, problem, remedy)

    def mapping(self, raw: Any, path: str) -> Mapping[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self.fail(path, f"expected a mapping, got {type(raw).__name__}",
                            "write it as 'key: value' lines")
        return raw

    def section(self, raw: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        section = self.mapping(raw, path)
        for key in section:
            if key not in allowed:
                raise self.fail(f"{path}.{key}" if path else str(key), "unknown key",
                                suggest(str(key), allowed))
        return section

    def number(self, value: Any, path: str, *, low: float | None = None,
               high: float | None = None, integer: bool = False) -> Any:
        kind = "an integer" if integer else "a number"
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (isinstance(value, float) and math.isnan(value)):
            raise self.fail(path, f"expected {kind}, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(path, f"{value!r} is out of range", f"use a value in [{low}, {high}]")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {value!r}")
        return value

    def string(self, value: Any, path: str, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(path, f"'{value}' is not one of {', '.join(choices)}",
                            suggest(value, choices))
        return value

    def names(self, raw: Any, path: str) -> tuple[str, ...]:
        from modelshelf.tags import is_valid_name

        if not isinstance(raw, list):
            raise self.fail(path, f"expected a list of names, got {raw!r}", "write it as [dev, staging, prod]")
        for i, item in enumerate(raw):
            if not isinstance(item, str) or not is_valid_name(item):
                raise self.fail(f"{path}[{i}]", f"{item!r} is not a valid stage name",
                                "use letters, digits, '-', '_' or '/'")
        return tuple(raw)

    def repo_paths(self, raw: Any, path: str) -> tuple[str, ...]:
        """A list of relative paths that stay inside the project (they are also read from git)."""
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.fail(path, f"expected a list of file paths, got {raw!r}",
                            "write it as [keys/release.pub]")
        return tuple(self.repo_path(item, f"{path}[{i}]") for i, item in enumerate(raw))

    def repo_path(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        parts = PurePosixPath(text.replace("\\", "/")).parts
        if text.startswith(("/", "~")) or ".." in parts or (parts and ":" in parts[0]):
            raise self.fail(path, f"'{text}' is not a path inside the project",
                            "give it relative to params.yaml's directory and commit the file")
        return text

    def metric_map(self, raw: Any, path: str, check: Callable[[Any, str], float]) -> Mapping[str, float]:
        out: dict[str, float] = {}
        for name, value in self.mapping(raw, path).items():
            if name not in CATALOGUE:
                raise self.fail(f"{path}.{name}", "unknown metric", suggest(str(name), tuple(CATALOGUE)))
            out[name] = float(check(value, f"{path}.{name}"))
        return MappingProxyType(out)


SECTIONS = tuple(Params.__dataclass_fields__)


def _distance(a: str, b: str) -> int:
    """Edit distance with adjacent transpositions (``trian`` → ``train`` is one edit)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _own_sections(r: _Reader, raw: Any) -> Mapping[str, Any]:
    """modelshelf's sections of the top level; a project's own keys are left alone, except one
    that reads as a typo of a section: a mapping (or empty) under a name within one edit of it
    (two for names of five letters or more)."""
    top = r.mapping(raw, "")
    for key, value in top.items():
        name = str(key)
        if name in SECTIONS or not (value is None or isinstance(value, Mapping)):
            continue
        if any(_distance(name.lower(), s) <= (1 if len(s) < 5 else 2) for s in SECTIONS):
            raise r.fail(name, "unknown key", suggest(name, SECTIONS))
    return top


def parse_params(raw: Any, file: str = "params.yaml") -> Params:
    """Validate a raw params mapping into a frozen :class:`Params`.

    Only modelshelf's sections are read; other top-level keys (a project's own) are ignored.
    """
    r = _Reader(file)
    top = _own_sections(r, raw)

    d = r.section(top.get("data"), "data", tuple(DataParams.__dataclass_fields__))
    dd = DataParams()
    data = DataParams(
        source=r.string(d.get("source", dd.source), "data.source"),
        target=r.string(d.get("target", dd.target), "data.target"),
        task=r.string(d.get("task", dd.task), "data.task", TASKS),
        test_size=float(r.number(d.get("test_size", dd.test_size), "data.test_size", low=0.01, high=0.9)),
        random_state=r.number(d.get("random_state", dd.random_state), "data.random_state",
                              low=0, high=2**32 - 1, integer=True),
        drop=_columns(r, d.get("drop", []), "data.drop"),
        id=None if d.get("id") is None else r.string(d["id"], "data.id"),
        missing_target=r.string(d.get("missing_target", dd.missing_target), "data.missing_target",
                                MISSING_TARGET),
        sep=r.string(d.get("sep", dd.sep), "data.sep"),
        format=r.string(d.get("format", dd.format), "data.format", FORMATS),
        max_categories=r.number(d.get("max_categories", dd.max_categories), "data.max_categories",
                                low=2, high=10**6, integer=True),
    )
    _check_data(r, data)

    t = r.section(top.get("train"), "train", tuple(TrainParams.__dataclass_fields__))
    estimator = r.string(t.get("estimator", TrainParams.estimator), "train.estimator")
    hyper = r.mapping(t.get("hyperparams"), "train.hyperparams")
    train = TrainParams(estimator=estimator, hyperparams=MappingProxyType(dict(hyper)))

    g = r.section(top.get("gate"), "gate", ("thresholds", "tolerance", "baseline", "regression",
                                            "confidence", "resamples"))
    bounded = lambda v, p: r.number(v, p)  # noqa: E731
    nonneg = lambda v, p: r.number(v, p, low=0)  # noqa: E731
    raw_tol = g.get("tolerance", 0.0)
    if isinstance(raw_tol, Mapping):
        tolerance, default_tol = r.metric_map(raw_tol, "gate.tolerance", nonneg), 0.0
    else:
        tolerance, default_tol = MappingProxyType({}), float(nonneg(raw_tol, "gate.tolerance"))
    gate = GateParams(
        thresholds=r.metric_map(g.get("thresholds"), "gate.thresholds", bounded),
        tolerance=tolerance,
        default_tolerance=default_tol,
        baseline=r.string(g.get("baseline", GateParams.baseline), "gate.baseline"),
        regression=r.string(g.get("regression", GateParams.regression), "gate.regression", REGRESSIONS),
        confidence=float(r.number(g.get("confidence", GateParams.confidence), "gate.confidence",
                                  low=0.5, high=0.999)),
        resamples=r.number(g.get("resamples", GateParams.resamples), "gate.resamples",
                           low=100, high=100_000, integer=True),
    )

    s = r.section(top.get("serialise"), "serialise", tuple(SerialiseParams.__dataclass_fields__))
    ds = SerialiseParams()
    serialise = SerialiseParams(
        compress=r.number(s.get("compress", ds.compress), "serialise.compress", low=0, high=9, integer=True),
        onnx=r.boolean(s.get("onnx", ds.onnx), "serialise.onnx"),
        onnx_tolerance=float(r.number(s.get("onnx_tolerance", ds.onnx_tolerance), "serialise.onnx_tolerance",
                                      low=0)))

    rel = r.section(top.get("release"), "release", tuple(ReleaseParams.__dataclass_fields__))
    dr = ReleaseParams()
    stages = r.names(rel.get("stages", list(dr.stages)), "release.stages")
    protected = r.names(rel.get("protected_stages", list(dr.protected_stages)), "release.protected_stages")
    for i, stage in enumerate(protected):
        if stage not in stages:
            raise r.fail(f"release.protected_stages[{i}]", f"'{stage}' is not in release.stages",
                         suggest(stage, stages, "stages"))
    trust = _trust(r, rel.get("trust"))
    require = _require_signature(r, rel.get("require_signature", False), stages)
    if require and trust.empty:
        raise r.fail("release.require_signature", "a signature is required but release.trust lists no signer",
                     "add release.trust.keys (EC public keys, PEM), certificates or identities")
    release = ReleaseParams(bump=r.string(rel.get("bump", "auto"), "release.bump", BUMPS),
                            stages=stages, protected_stages=protected, trust=trust,
                            require_signature=require)
    dr_raw = r.section(top.get("drift"), "drift", tuple(DriftParams.__dataclass_fields__))
    dd = DriftParams()
    drift = DriftParams(
        psi_warn=float(r.number(dr_raw.get("psi_warn", dd.psi_warn), "drift.psi_warn", low=0)),
        psi_alert=float(r.number(dr_raw.get("psi_alert", dd.psi_alert), "drift.psi_alert", low=0)),
        p_value=float(r.number(dr_raw.get("p_value", dd.p_value), "drift.p_value", low=0, high=1)),
        missing_rate=float(r.number(dr_raw.get("missing_rate", dd.missing_rate), "drift.missing_rate",
                                    low=0, high=1)),
    )
    if drift.psi_alert < drift.psi_warn:
        raise r.fail("drift.psi_alert", f"{drift.psi_alert} is below drift.psi_warn {drift.psi_warn}",
                     "the alert level must be at least the warning level")
    return Params(data=data, train=train, gate=gate, serialise=serialise, release=release, drift=drift)


def _columns(r: _Reader, raw: Any, path: str) -> tuple[str, ...]:
    """A list of distinct column names (``data.drop``)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise r.fail(path, f"expected a list of column names, got {raw!r}", "write it as [col_a, col_b]")
    names = tuple(r.string(item, f"{path}[{i}]") for i, item in enumerate(raw))
    for i, name in enumerate(names):
        if name in names[:i]:
            raise r.fail(f"{path}[{i}]", f"'{name}' is listed twice", "list each column once")
    return names


def _check_data(r: _Reader, data: DataParams) -> None:
    """The ``data`` keys that must agree with each other."""
    if len(data.sep) != 1:
        raise r.fail("data.sep", f"{data.sep!r} is not a single character",
                     "use one character, e.g. ';' or \"\\t\" (a tab)")
    if data.target in data.drop:
        raise r.fail("data.drop", f"'{data.target}' is the target (data.target)", "remove it from data.drop")
    if data.id is not None and data.id == data.target:
        raise r.fail("data.id", f"'{data.id}' is the target (data.target)", "name the ID column, or remove data.id")
    if data.id is not None and data.id in data.drop:
        raise r.fail("data.drop", f"'{data.id}' is the ID column (data.id)",
                     "remove it from data.drop (an ID is never a feature already)")


def _trust(r: _Reader, raw: Any) -> TrustParams:
    """``release.trust``: keys, certificates, identities, tag_signers."""
    t = r.section(raw, "release.trust", tuple(TrustParams.__dataclass_fields__))
    raw_ids = t.get("identities")
    if raw_ids is not None and not isinstance(raw_ids, list):
        raise r.fail("release.trust.identities", f"expected a list, got {raw_ids!r}",
                     "write it as [{identity: you@example.com, issuer: https://accounts.google.com}]")
    identities = []
    for i, item in enumerate(raw_ids or []):
        where = f"release.trust.identities[{i}]"
        entry = r.section(item, where, ("identity", "issuer"))
        for key in ("identity", "issuer"):
            if key not in entry:
                raise r.fail(f"{where}.{key}", "missing", "give both identity and issuer")
        identities.append(TrustedIdentity(r.string(entry["identity"], f"{where}.identity"),
                                          r.string(entry["issuer"], f"{where}.issuer")))
    signers = t.get("tag_signers")
    return TrustParams(keys=r.repo_paths(t.get("keys"), "release.trust.keys"),
                       certificates=r.repo_paths(t.get("certificates"), "release.trust.certificates"),
                       identities=tuple(identities),
                       tag_signers=None if signers is None else r.repo_path(signers, "release.trust.tag_signers"))


def _require_signature(r: _Reader, raw: Any, stages: tuple[str, ...]) -> bool | tuple[str, ...]:
    """``release.require_signature``: true, false, or a list of stages from ``release.stages``."""
    if isinstance(raw, bool):
        return raw
    if not isinstance(raw, list):
        raise r.fail("release.require_signature", f"expected true, false or a list of stages, got {raw!r}",
                     "e.g. [prod] to require signed releases only where prod is concerned")
    listed = r.names(raw, "release.require_signature")
    for i, stage in enumerate(listed):
        if stage not in stages:
            raise r.fail(f"release.require_signature[{i}]", f"'{stage}' is not in release.stages",
                         suggest(stage, stages, "stages"))
    return listed


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; every problem is a :class:`ConfigError`."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found",
                          "run from the project root or pass --params") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start})", "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read ({exc.strerror})", "pass the params.yaml file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(str(path), f"not valid YAML{line}", "fix the syntax") from None
    return parse_params(raw, str(path))
