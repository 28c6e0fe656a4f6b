"""Build the estimator named in params inside a preprocessing pipeline, and fit it.

``train.estimator`` is a scikit-learn class (``sklearn.ensemble.RandomForestClassifier``) or a
factory in the user's code: ``src/mymodel.py:build`` (a file under the project root) or
``pkg.module:build`` (an importable module), called with ``train.hyperparams``.  A factory's
:class:`~sklearn.pipeline.Pipeline` is the user's end to end and gets the raw feature columns;
any other estimator it returns is wrapped in modelshelf's preprocessing, as a class would be.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import io
import pickle
import re
import sys
import types
from types import MappingProxyType
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from modelshelf.onnxcopy import MISSING_CATEGORY
from modelshelf.errors import ConfigError
from modelshelf.params import TrainParams, suggest

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

WHERE = "params.yaml: train.estimator"
FILE_MODULE_PREFIX = "_modelshelf_factory_"
PREPROCESSING_OWN = "modelshelf"   # candidate.json "preprocessing": modelshelf's ColumnTransformer
PREPROCESSING_USER = "user"        # the factory's Pipeline, given the raw feature columns


@dataclass(frozen=True)
class Factory:
    """A user's factory: its spec, the source file (project-relative when under the root) and
    that file's sha256, and the function itself."""

    spec: str
    file: str
    sha256: str
    function: Callable[..., Any]
    module: str

    def record(self) -> dict[str, str]:
        """What the candidate (and the card) records of it."""
        return {"spec": self.spec, "file": self.file, "sha256": self.sha256}


class Trained(NamedTuple):
    """A fitted pipeline, the factory that built it (or None) and the keyword arguments it was
    called with, and whose preprocessing the pipeline has."""

    pipeline: Any
    factory: Factory | None
    preprocessing: str
    arguments: Mapping[str, Any] = MappingProxyType({})


def is_factory(spec: str) -> bool:
    """Whether ``train.estimator`` names a factory (``file.py:function`` or ``module:function``)."""
    return ":" in spec


def resolve_factory(spec: str, root: Path) -> Factory:
    """Import the factory ``spec`` names: ``path/to/file.py:function`` relative to ``root``, or
    ``package.module:function``.

    Raises:
        ConfigError: a missing file, module or function, or a module that fails to import.
    """
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise ConfigError(WHERE, f"'{spec}' is not a factory spec",
                          "write it as src/mymodel.py:build or package.module:build")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = (root / target).resolve()
        if not path.is_file():
            raise ConfigError(WHERE, f"factory file '{target}' not found under {root}",
                              "give the file's path relative to the project root (params.yaml's directory)")
        try:
            shown = path.relative_to(root.resolve()).as_posix()
        except ValueError:
            raise ConfigError(WHERE, f"factory file '{target}' is outside the project",
                              "keep your training code inside the project, tracked by git") from None
        module_name = FILE_MODULE_PREFIX + re.sub(r"\W", "_", shown)
        module = _import_file(module_name, path, spec)
    else:
        module_name, shown = target, ""
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name is None or not target.startswith(exc.name):
                raise ConfigError(WHERE, f"importing '{target}' failed: {exc}", "fix the module's imports") from None
            raise ConfigError(WHERE, f"no module '{target}'",
                              "install the package, or name a file: src/mymodel.py:build") from None
        except Exception as exc:  # noqa: BLE001 - the user's module may raise anything on import
            raise ConfigError(WHERE, f"importing '{target}' raised {_describe(exc)}", "fix the module") from None
        path = Path(module.__file__) if getattr(module, "__file__", None) else None  # type: ignore[arg-type]
        if path is None or not path.is_file():
            raise ConfigError(WHERE, f"module '{target}' has no source file", "name a module with a .py file")
        try:
            shown = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            shown = str(path)
    function = getattr(module, name, None)
    if function is None:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ConfigError(WHERE, f"no function '{name}' in {shown or target}", suggest(name, tuple(public), "functions"))
    if not callable(function) or inspect.isclass(function):
        raise ConfigError(WHERE, f"'{name}' in {shown or target} is not a function",
                          "name a function that returns an estimator")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Factory(spec, shown, digest, function, module_name)


def _import_file(module_name: str, path: Path, spec: str) -> types.ModuleType:
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(WHERE, f"'{path.name}' cannot be imported", "name a .py file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # what the file defines must be findable while pickling it
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file may raise anything on import
        del sys.modules[module_name]
        raise ConfigError(WHERE, f"importing {path.name} raised {_describe(exc)}", f"fix {spec.rpartition(':')[0]}") from None
    return module


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def call_factory(factory: Factory, params: TrainParams, task: str, random_state: int) -> tuple[Any, dict[str, Any]]:
    """The estimator ``factory`` returns for ``train.hyperparams`` (and ``random_state``, when
    the factory takes it and the hyperparams do not set it), and the arguments it was given.

    Raises:
        ConfigError: unknown hyperparams, a factory that raises or returns no estimator, or one
            of the wrong kind for the task.
    """
    from sklearn.base import is_classifier, is_regressor

    kwargs: dict[str, Any] = dict(params.hyperparams)
    try:
        signature = inspect.signature(factory.function)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        accepted = [n for n, p in signature.parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if "random_state" in accepted and "random_state" not in kwargs:
            kwargs["random_state"] = random_state  # deterministic retraining
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            unknown = [k for k in kwargs if k not in accepted]
            if unknown and not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
                raise ConfigError(f"params.yaml: train.hyperparams.{unknown[0]}",
                                  f"not a parameter of {factory.spec}", suggest(unknown[0], tuple(accepted))) from None
            raise ConfigError("params.yaml: train.hyperparams", f"{factory.spec}: {exc}",
                              "give every parameter the factory requires") from None
    try:
        est = factory.function(**kwargs)
    except Exception as exc:  # noqa: BLE001 - user code: any failure is one line
        raise ConfigError(WHERE, f"{factory.spec} raised {_describe(exc)}", f"fix the factory in {factory.file}") from None
    if inspect.isclass(est):
        raise ConfigError(WHERE, f"{factory.spec} returned the class {est.__name__}, not an estimator",
                          f"return an instance: {est.__name__}(...)")
    if not all(callable(getattr(est, m, None)) for m in ("fit", "predict", "get_params")):
        raise ConfigError(WHERE, f"{factory.spec} returned {type(est).__name__}, not a scikit-learn estimator",
                          "return an estimator or a Pipeline (with fit, predict and get_params)")
    if task == "regression" and is_classifier(est):
        raise ConfigError(WHERE, f"{factory.spec} returned a classifier but the task is regression",
                          "return a regressor, or set data.task")
    if task != "regression" and is_regressor(est):
        raise ConfigError(WHERE, f"{factory.spec} returned a regressor but the task is {task} classification",
                          "return a classifier, or set data.task")
    return est, kwargs


def resolve_estimator(dotted: str) -> type:
    """The scikit-learn estimator class named by ``dotted`` (``sklearn.x.Y``)."""
    from sklearn.base import BaseEstimator

    module_name, _, attr = dotted.rpartition(".")
    if not dotted.startswith("sklearn.") or not module_name:
        raise ConfigError(WHERE, f"'{dotted}' is not a scikit-learn estimator",
                          "use a dotted path under sklearn., e.g. sklearn.ensemble.RandomForestClassifier")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(WHERE, f"no module '{module_name}' in scikit-learn",
                          "check the dotted path, e.g. sklearn.linear_model.LogisticRegression") from None
    cls = getattr(module, attr, None)
    if cls is None:
        public = [n for n in getattr(module, "__all__", dir(module)) if not n.startswith("_")]
        raise ConfigError(WHERE, f"'{attr}' not found in {module_name}", suggest(attr, tuple(public)))
    if not (inspect.isclass(cls) and issubclass(cls, BaseEstimator)):
        raise ConfigError(WHERE, f"'{dotted}' is not an estimator class",
                          "name a scikit-learn estimator class")
    return cls


def make_estimator(params: TrainParams, task: str, random_state: int) -> Any:
    """Instantiate the final estimator, checking hyperparameter names and task kind."""
    from sklearn.base import is_classifier, is_regressor

    cls = resolve_estimator(params.estimator)
    valid = tuple(cls().get_params(deep=False)) if _constructible(cls) else ()
    for key in params.hyperparams:
        if valid and key not in valid:
            raise ConfigError(f"params.yaml: train.hyperparams.{key}",
                              f"not a parameter of {cls.__name__}", suggest(key, valid))
    kwargs: dict[str, Any] = dict(params.hyperparams)
    if "random_state" in valid and "random_state" not in kwargs:
        kwargs["random_state"] = random_state  # deterministic retraining
    try:
        est = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError("params.yaml: train.hyperparams", str(exc).splitlines()[0],
                          f"check the values against {cls.__name__}'s documentation") from None
    if task == "regression" and not is_regressor(est):
        raise ConfigError(WHERE, f"{cls.__name__} is not a regressor but the task is regression",
                          "use a regressor, e.g. sklearn.ensemble.RandomForestRegressor")
    if task != "regression" and not is_classifier(est):
        raise ConfigError(WHERE, f"{cls.__name__} is not a classifier but the task is {task} classification",
                          "use a classifier, e.g. sklearn.ensemble.RandomForestClassifier")
    return est


def _constructible(cls: type) -> bool:
    try:
        cls()
    except TypeError:
        return False
    return True


def build_pipeline(params: TrainParams, schema: Mapping[str, Any], random_state: int) -> Pipeline:
    """Preprocessing for the schema's numeric and categorical columns, then the estimator."""
    return preprocessed(make_estimator(params, schema["task"], random_state), schema)


def preprocessed(estimator: Any, schema: Mapping[str, Any]) -> Pipeline:
    """modelshelf's preprocessing for the schema's columns, then ``estimator``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f["name"] for f in schema["features"] if f["kind"] == "numeric"]
    categorical = [f["name"] for f in schema["features"] if f["kind"] == "categorical"]
    branches = []
    if numeric:
        steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
        # Trees are scale-invariant, and scaling before them breaks ONNX parity: the graph
        # scales in float32, then compares with float32 thresholds, and labels can flip.
        if not _is_tree_model(estimator):
            steps.append(("scale", StandardScaler()))
        branches.append(("numeric", Pipeline(steps), numeric))
    if categorical:
        branches.append(("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]), categorical))
    pre = ColumnTransformer(branches, remainder="drop")
    return Pipeline([("preprocess", pre), ("model", estimator)])


def _is_tree_model(estimator: Any) -> bool:
    module = type(estimator).__module__
    return module.startswith(("sklearn.tree", "sklearn.ensemble._forest", "sklearn.ensemble._gb",
                              "sklearn.ensemble._hist_gradient_boosting", "sklearn.ensemble._iforest"))


def train(X: pd.DataFrame, y: pd.Series, params: TrainParams, schema: Mapping[str, Any],
          random_state: int) -> Pipeline:
    """Fit the pipeline for ``schema`` on ``(X, y)``."""
    return fit(X, y, params, schema, random_state, Path.cwd()).pipeline


def fit(X: pd.DataFrame, y: pd.Series, params: TrainParams, schema: Mapping[str, Any],
        random_state: int, root: Path) -> Trained:
    """Build the pipeline ``train.estimator`` names (a factory's file relative to ``root``) and
    fit it on ``(X, y)``.

    Raises:
        ConfigError: a bad estimator or factory, bad hyperparams, a failed fit, or a pipeline
            holding objects from a factory *file* (a released model could not be loaded).
    """
    from sklearn.pipeline import Pipeline

    factory = resolve_factory(params.estimator, root) if is_factory(params.estimator) else None
    arguments: dict[str, Any] = {}
    if factory is None:
        pipeline, preprocessing = build_pipeline(params, schema, random_state), PREPROCESSING_OWN
    else:
        est, arguments = call_factory(factory, params, schema["task"], random_state)
        if isinstance(est, Pipeline):
            pipeline, preprocessing = est, PREPROCESSING_USER
        else:
            pipeline, preprocessing = preprocessed(est, schema), PREPROCESSING_OWN
    try:
        pipeline.fit(X, y)
    except (ValueError, TypeError) as exc:
        raise ConfigError("params.yaml: train", f"fitting failed: {str(exc).splitlines()[0]}",
                          "check train.hyperparams and the data") from None
    except Exception as exc:  # noqa: BLE001 - a factory's own code may raise anything
        if factory is None:
            raise
        raise ConfigError(WHERE, f"fitting {factory.spec}'s estimator raised {_describe(exc)}",
                          f"fix the factory in {factory.file}") from None
    if factory is not None and factory.module.startswith(FILE_MODULE_PREFIX):
        _check_portable(pipeline, factory)
    return Trained(pipeline, factory, preprocessing, arguments)


class _Found(Exception):
    pass


class _Finder(pickle.Pickler):
    """Pickles into nothing, stopping at the first class or function from ``module``."""

    def __init__(self, module: str) -> None:
        super().__init__(_Discard(), protocol=pickle.HIGHEST_PROTOCOL)
        self.module = module

    def reducer_override(self, obj: Any) -> Any:
        owner = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        if getattr(owner, "__module__", None) == self.module:
            raise _Found(getattr(owner, "__qualname__", repr(owner)))
        return NotImplemented


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


def _check_portable(pipeline: Any, factory: Factory) -> None:
    """Refuse a pipeline that pickles a class or function defined in the factory's file: the
    model would load only where that file is importable under a name modelshelf made up."""
    try:
        _Finder(factory.module).dump(pipeline)
    except _Found as found:
        raise ConfigError(WHERE, f"the pipeline holds {found.args[0]}, defined in {factory.file}: "
                          "a released model could not be loaded without that file",
                          "build it from scikit-learn's classes, or move your classes into an installed "
                          "package and name it as package.module:build") from None


def json_safe_params(estimator: Any) -> dict[str, Any]:
    """``get_params(deep=False)`` with non-JSON values written as their repr."""
    out: dict[str, Any] = {}
    for key, value in sorted(estimator.get_params(deep=False).items()):
        out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return out
