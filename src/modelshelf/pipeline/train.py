"""Build the estimator named in params inside a preprocessing pipeline, and fit it."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelshelf.onnxcopy import MISSING_CATEGORY
from modelshelf.errors import ConfigError
from modelshelf.params import TrainParams, suggest

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

WHERE = "params.yaml: train.estimator"


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
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f["name"] for f in schema["features"] if f["kind"] == "numeric"]
    categorical = [f["name"] for f in schema["features"] if f["kind"] == "categorical"]
    estimator = make_estimator(params, schema["task"], random_state)
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
    pipeline = build_pipeline(params, schema, random_state)
    try:
        pipeline.fit(X, y)
    except (ValueError, TypeError) as exc:
        raise ConfigError("params.yaml: train", f"fitting failed: {str(exc).splitlines()[0]}",
                          "check train.hyperparams and the data") from None
    return pipeline


def json_safe_params(estimator: Any) -> dict[str, Any]:
    """``get_params(deep=False)`` with non-JSON values written as their repr."""
    out: dict[str, Any] = {}
    for key, value in sorted(estimator.get_params(deep=False).items()):
        out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return out
