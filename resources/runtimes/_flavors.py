"""The sklearn, xgboost and lightgbm flavors scored through their library's own predictor.

Self-contained on purpose (numpy, pyarrow and the flavor's library only; nothing of ml_assets):
the same code runs in this process and inside a model environment's worker, which loads this
file by path. Outputs follow the prediction contract: classifiers ``label`` (typed like the
classes) and ``probability_<class>`` in the model's class order, regressors ``prediction``,
multi-output regressors ``prediction_<k>``. Each column is what the flavor's own
``predict``/``predict_proba`` returns on the same rows, computed the way the library computes it.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import pyarrow as pa

NATIVE_FLAVORS = ("lightgbm", "xgboost", "sklearn")
# Below this many rows per thread, splitting a matrix costs more than it saves.
_MIN_SPLIT_ROWS = 4096


class NativeFlavorError(Exception):
    """The model is not one the native predictor can score (the caller names the model version)."""


class NativeUnsupported(NativeFlavorError):
    """A sound model of a native flavor that only pyfunc scores (by its structure, not a broken file)."""


def native_flavor(flavors: dict[str, Any]) -> str | None:
    """The flavor of an MLmodel's ``flavors`` the native predictor reads, if any."""
    return next((f for f in NATIVE_FLAVORS if f in flavors), None)


def to_matrix(batch: pa.RecordBatch, dtype: np.dtype, order: str = "C") -> np.ndarray:
    """A ``(rows, columns)`` matrix of ``batch``: each column read zero-copy from Arrow and written once
    into the matrix (a single column of the right type is not copied at all). ``order`` "F" is the
    layout of a pandas frame's values: what a linear model's BLAS call must see to sum in the same order."""
    columns = batch.columns
    if len(columns) == 1 and columns[0].type == pa.from_numpy_dtype(dtype) and columns[0].null_count == 0:
        return columns[0].to_numpy(zero_copy_only=True).reshape(-1, 1)
    matrix = np.empty((batch.num_rows, len(columns)), dtype=dtype, order=order)
    for j, column in enumerate(columns):
        matrix[:, j] = column.to_numpy(zero_copy_only=False)
    return matrix


def _label_type(classes: np.ndarray) -> pa.DataType:
    kind = classes.dtype.kind
    if kind in "iu":
        return pa.int64()
    if kind == "b":
        return pa.bool_()
    if kind == "f":
        return pa.float64()
    return pa.string()


def _class_suffix(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


class NativePredictor:
    """A loaded flavor model: ``predict(matrix)`` -> named numpy columns, fixed ``output_schema``."""

    def __init__(
        self,
        *,
        flavor: str,
        dtype: np.dtype,
        output_schema: pa.Schema,
        predict: Callable[[np.ndarray], dict[str, np.ndarray]],
        classes: list[Any] | None = None,
        feature_names: list[str] | None = None,
    ) -> None:
        self.flavor = flavor
        self.dtype = np.dtype(dtype)
        self.output_schema = output_schema
        self.classes = classes
        self.feature_names = feature_names
        self.concurrency = 1
        self.split = 1
        # Calls may run at once, each on one thread of the library (its predict releases the GIL): the
        # parallel work is then across calls (``concurrency``) or across a matrix's rows (``split``).
        self.thread_safe = True
        self.order = "C"
        self._predict = predict
        self._pool: ThreadPoolExecutor | None = None

    def predict(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        if self.split < 2 or len(matrix) < self.split * _MIN_SPLIT_ROWS:
            return self._predict(matrix)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.split, thread_name_prefix="ml-assets-native")
        # Rows are scored independently of each other: slices of one matrix give the same bits as the whole.
        parts = list(self._pool.map(self._predict, np.array_split(matrix, self.split)))
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        names = self.feature_names
        if names and names != batch.schema.names and set(names) <= set(batch.schema.names):
            batch = batch.select(names)  # the order the model was fitted in, where it knows its columns' names
        columns = self.predict(to_matrix(batch, self.dtype, self.order))
        arrays = [pa.array(columns[f.name]).cast(f.type) for f in self.output_schema]
        return pa.RecordBatch.from_arrays(arrays, schema=self.output_schema)


def _classifier(
    flavor: str,
    dtype: Any,
    classes: np.ndarray,
    proba: Callable[[np.ndarray], np.ndarray],
    label_index: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> NativePredictor:
    classes = np.asarray(classes)
    names = [f"probability_{_class_suffix(c)}" for c in classes]
    if len(set(names)) != len(names):
        msg = f"the class labels {classes.tolist()} do not give distinct probability column names"
        raise NativeUnsupported(msg)
    label_type = _label_type(classes)
    schema = pa.schema([pa.field("label", label_type), *(pa.field(n, pa.float64()) for n in names)])

    def predict(matrix: np.ndarray) -> dict[str, np.ndarray]:
        p = np.asarray(proba(matrix))
        out = {"label": classes.take(label_index(matrix, p), axis=0)}
        for k, name in enumerate(names):
            out[name] = p[:, k]
        return out

    return NativePredictor(
        flavor=flavor,
        dtype=dtype,
        output_schema=schema,
        predict=predict,
        classes=classes.tolist(),
    )


def _regressor(flavor: str, dtype: Any, outputs: int, values: Callable[[np.ndarray], np.ndarray]) -> NativePredictor:
    if outputs == 1:
        schema = pa.schema([pa.field("prediction", pa.float64())])

        def predict(matrix: np.ndarray) -> dict[str, np.ndarray]:
            return {"prediction": np.asarray(values(matrix)).reshape(-1)}

    else:
        schema = pa.schema([pa.field(f"prediction_{k}", pa.float64()) for k in range(outputs)])

        def predict(matrix: np.ndarray) -> dict[str, np.ndarray]:
            result = np.asarray(values(matrix))
            return {f"prediction_{k}": result[:, k] for k in range(outputs)}

    return NativePredictor(flavor=flavor, dtype=dtype, output_schema=schema, predict=predict)


def _argmax(_matrix: np.ndarray, proba: np.ndarray) -> np.ndarray:
    return np.argmax(proba, axis=1)


def _binary(column: np.ndarray) -> np.ndarray:
    """``[1 - p, p]``: how LGBMClassifier/XGBClassifier turn one probability into two."""
    return np.vstack((1.0 - column, column)).transpose()


_SERIALIZATIONS = ("skops", "cloudpickle", "pickle")
# What MLflow 3's flavor loaders assume when an MLmodel leaves a key out: (file key, serialization, class).
_DEFAULTS = {
    "sklearn": ("pickled_model", "pickle", None),
    "lightgbm": ("data", "cloudpickle", "lightgbm.basic.Booster"),
    "xgboost": ("data", None, "xgboost.core.Booster"),
}


def predictions_to_columns(prediction: Any, n: int) -> dict[str, Any]:
    """Named columns out of whatever a pyfunc model's ``predict`` returned (DataFrame, Series, dict, array or
    list), for ``n`` rows. Here because a model environment's worker needs it too."""
    import pandas as pd

    if isinstance(prediction, pd.DataFrame):
        return {str(c): prediction[c].to_numpy() for c in prediction.columns}
    if isinstance(prediction, pd.Series):
        return {str(prediction.name) if prediction.name is not None else "prediction": prediction.to_numpy()}
    if isinstance(prediction, dict):
        return {str(k): np.asarray(v) for k, v in prediction.items()}
    array = np.asarray(prediction)
    if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
        return {"prediction": array.reshape(n)}
    if array.ndim == 2:
        return {f"prediction_{k}": array[:, k] for k in range(array.shape[1])}
    msg = f"predict returned an array of shape {array.shape}; expected one or two dimensions"
    raise ValueError(msg)


def flavor_files(flavors: dict[str, Any], join: Callable[[str, str], str]) -> dict[str, Any]:
    """What ``load_native`` needs from an MLmodel's ``flavors``: the flavor, its model file, how that file
    was written (``serialization_format``, ``skops_trusted_types``, ``model_class``) and the logged code
    folder, with the keys and defaults of MLflow's own loaders. The MLmodel is not trusted: ``join(relative,
    what)`` turns each of its paths into one proven to lie inside the model folder (or raises).
    Plain JSON-able data: it is handed as is to a worker in a model environment."""
    flavor = native_flavor(flavors)
    if flavor is None:
        msg = f"flavors {sorted(flavors)} include none of {', '.join(NATIVE_FLAVORS)}"
        raise NativeUnsupported(msg)
    conf = flavors[flavor]
    if not isinstance(conf, dict):
        msg = f"the MLmodel's {flavor} flavor is not a mapping"
        raise NativeFlavorError(msg)
    key, serialization, model_class = _DEFAULTS[flavor]
    name = conf.get(key)
    serialization = conf.get("serialization_format") or serialization
    model_class = conf.get("model_class") or model_class
    trusted = conf.get("skops_trusted_types")
    code = conf.get("code")
    if not isinstance(name, str) or not name:
        msg = f"the MLmodel's {flavor} flavor names no model file ({key!r})"
        raise NativeFlavorError(msg)
    if not all(v is None or isinstance(v, str) for v in (serialization, model_class, code)) or not (
        trusted is None or (isinstance(trusted, list) and all(isinstance(t, str) for t in trusted))
    ):
        msg = f"the MLmodel's {flavor} flavor has a serialization_format, model_class, code or skops_trusted_types "
        msg += "that is not a string (a list of strings for skops_trusted_types)"
        raise NativeFlavorError(msg)
    return {
        "flavor": flavor,
        "name": name,
        "file": join(name, f"{flavor} model file"),
        "serialization_format": serialization,
        "skops_trusted_types": trusted,
        "model_class": model_class,
        "code": join(code, f"{flavor} code folder") if code else None,
    }


def load_native(
    spec: dict[str, Any],
    *,
    input_dtype: Any,
    threads: int,
    parallel: Literal["chunks", "split"] = "chunks",
    lean_imports: bool = False,
) -> NativePredictor:
    """The model ``spec`` (``flavor_files``) describes, loaded from its file by the flavor's library alone:
    MLflow is not imported (in a fresh model environment, importing it took most of a worker's start).

    ``input_dtype`` is the features' common type (float32 when every input is float32, else float64):
    the matrix is built in it, so the library reads the same values as from the flavor's DataFrame.
    ``threads`` are used as ``parallel`` says: ``chunks`` (the caller scores that many chunks at once:
    ``concurrency``) or ``split`` (the caller hands one chunk at a time, as a worker does: each matrix is
    split across the threads). Either way each library call runs on one thread, which measured as fast as
    the library's own threads on one big matrix, and faster on 64k-row chunks (no fork/join per call, and
    the matrix building and output columns run in parallel too). A model whose predict is not thread-safe
    gets the library's own threads instead.

    ``lean_imports``: for a process that holds this one model (a worker), a LightGBM or XGBoost Booster is
    loaded with its library imported without scikit-learn and pandas, which both import when present
    (most of their import time: scipy.stats) and a Booster does not use. Not in a process that may load
    other models: the library would stay imported without its scikit-learn estimators.
    """
    if lean_imports and spec["model_class"] == _BOOSTERS.get(spec["flavor"]) and spec["flavor"] not in sys.modules:
        with _not_importable("sklearn", "pandas"):
            importlib.import_module(spec["flavor"])
    predictor = _load(spec, input_dtype, threads)
    if predictor.thread_safe and threads > 1:
        if parallel == "chunks":
            predictor.concurrency = threads
        elif predictor.order == "C":  # row slices of a column-major matrix would reach BLAS strided
            predictor.split = threads
    return predictor


_BOOSTERS = {"lightgbm": "lightgbm.basic.Booster", "xgboost": "xgboost.core.Booster"}


@contextmanager
def _not_importable(*modules: str) -> Iterator[None]:
    """``import`` of ``modules`` raises ImportError meanwhile (a None in sys.modules), as if not installed."""
    blocked = [m for m in modules if m not in sys.modules]
    for module in blocked:
        sys.modules[module] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for module in blocked:
            if sys.modules.get(module, 0) is None:
                del sys.modules[module]


def _load(spec: dict[str, Any], input_dtype: Any, threads: int) -> NativePredictor:
    flavor, name = spec["flavor"], spec["name"]
    if not os.path.isfile(spec["file"]):
        msg = f"the {flavor} model file {name!r} is missing from the model folder"
        raise NativeFlavorError(msg)
    if spec["code"] and spec["code"] not in sys.path:
        sys.path.insert(0, spec["code"])  # as MLflow's loaders do: a pickled model may import its logged code
    loader = {"lightgbm": _lightgbm, "xgboost": _xgboost, "sklearn": _sklearn}[flavor]
    try:
        return loader(spec, input_dtype, threads)
    except (ModuleNotFoundError, NativeFlavorError):
        raise
    except Exception as exc:
        msg = f"cannot load the {flavor} model file {name!r}: {type(exc).__name__}: {exc}"
        raise NativeFlavorError(msg) from exc


def _deserialize(spec: dict[str, Any]) -> Any:
    """A scikit-learn-API model file, read as ``mlflow.sklearn`` reads it (skops with the types the model's
    MLmodel trusts, cloudpickle or pickle), and refused where MLflow's own switch refuses it."""
    fmt, name = spec["serialization_format"], spec["name"]
    if fmt not in _SERIALIZATIONS:
        msg = f"the model file {name!r} has serialization_format {fmt!r}; expected one of {', '.join(_SERIALIZATIONS)}"
        raise NativeFlavorError(msg)
    if os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true").strip().lower() in ("false", "0"):
        msg = f"MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false here: deserializing {name!r} ({fmt}) is disallowed"
        raise NativeFlavorError(msg)
    if fmt == "skops":
        import skops.io

        return skops.io.load(spec["file"], trusted=spec["skops_trusted_types"])
    with open(spec["file"], "rb") as f:
        if fmt == "pickle":
            return pickle.load(f)  # what the model's MLmodel says it is, as MLflow loads it
        import cloudpickle

        return cloudpickle.load(f)


def _lightgbm(spec: dict[str, Any], dtype: Any, threads: int) -> NativePredictor:
    import lightgbm as lgb

    if spec["model_class"] == "lightgbm.basic.Booster":
        booster = lgb.Booster(model_file=spec["file"])
        return _named(_lightgbm_booster(booster, dtype), booster.feature_name())
    model = _deserialize(spec)
    if not isinstance(model, lgb.LGBMModel):
        msg = f"the lightgbm model file {spec['name']!r} holds a {type(model).__name__}, not a LightGBM model"
        raise NativeFlavorError(msg)
    names = list(getattr(model, "feature_name_", []))
    if hasattr(model, "classes_"):
        proba = lambda x: model.predict_proba(x, num_threads=1)  # noqa: E731
        return _named(_classifier("lightgbm", dtype, model.classes_, proba, _argmax), names)
    return _named(_regressor("lightgbm", dtype, 1, lambda x: model.predict(x, num_threads=1)), names)


def _named(predictor: NativePredictor, names: list[str] | None) -> NativePredictor:
    predictor.feature_names = [str(n) for n in names] if names else None
    return predictor


def _lightgbm_booster(booster: Any, dtype: Any) -> NativePredictor:
    # One thread per call: LightGBM predicts under a shared lock, so calls run at once (see load_native).
    objective = str(booster.dump_model(num_iteration=1).get("objective", "")).split(" ")[0]
    if objective in ("binary", "cross_entropy"):
        classes = np.array([0, 1], dtype=np.int64)
        return _classifier("lightgbm", dtype, classes, lambda x: _binary(booster.predict(x, num_threads=1)), _argmax)
    if objective in ("multiclass", "multiclassova", "softmax", "ova"):
        classes = np.arange(booster.num_model_per_iteration(), dtype=np.int64)
        return _classifier("lightgbm", dtype, classes, lambda x: booster.predict(x, num_threads=1), _argmax)
    return _regressor("lightgbm", dtype, 1, lambda x: booster.predict(x, num_threads=1))


def _xgboost_class(name: Any) -> type:
    """The class an MLmodel's ``model_class`` names, if it is XGBoost's (MLflow imports whatever it names)."""
    import xgboost as xgb

    module, _, attribute = str(name).rpartition(".")
    found = None
    if module == "xgboost" or module.startswith("xgboost."):
        found = getattr(importlib.import_module(module), attribute, None)
    if not (isinstance(found, type) and issubclass(found, (xgb.Booster, xgb.XGBModel))):
        msg = f"the xgboost flavor's model_class {str(name)[:120]!r} is not an XGBoost Booster or model class"
        raise NativeFlavorError(msg)
    return found


def _xgboost(spec: dict[str, Any], dtype: Any, threads: int) -> NativePredictor:
    import xgboost as xgb

    model = _xgboost_class(spec["model_class"])()
    model.load_model(spec["file"])  # the format (json, ubj, deprecated binary) is told by the file, as in MLflow
    if not isinstance(model, xgb.XGBModel):
        return _named(_xgboost_booster(model, dtype, threads), model.feature_names)
    booster = model.get_booster()
    names = booster.feature_names
    classifier = hasattr(model, "classes_") and hasattr(model, "predict_proba")
    # What XGBModel.predict hands inplace_predict (its best_iteration, its missing value), given once here:
    # the estimator's own predict does that work again on every call, holding the GIL.
    try:
        iteration_range = (0, model.best_iteration + 1)
    except AttributeError:
        iteration_range = (0, 0)
    classes = np.asarray(model.classes_) if classifier else None
    try:
        fast = _xgboost_booster(
            booster, dtype, threads, iteration_range=iteration_range, missing=model.missing, classes=classes
        )
    except NativeFlavorError:  # classes_ that are not its objective's: left to the estimator
        fast = None
    if fast is not None and fast.thread_safe and (fast.classes is not None) == classifier:
        return _named(fast, names)
    # Not a tree booster (gblinear) or another objective: the estimator's own predict, on its own threads.
    model.set_params(n_jobs=threads)
    if classifier:
        predictor = _classifier("xgboost", dtype, np.asarray(model.classes_), model.predict_proba, _xgb_label)
    else:
        predictor = _regressor("xgboost", dtype, 1, model.predict)
    predictor.thread_safe = False
    return _named(predictor, names)


def _xgb_label(_x: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """XGBClassifier.predict: a binary model thresholds at 0.5, a multiclass one takes the argmax."""
    return (proba[:, 1] > 0.5).astype(np.int64) if proba.shape[1] == 2 else np.argmax(proba, axis=1)


def _xgboost_booster(
    booster: Any,
    dtype: Any,
    threads: int,
    *,
    iteration_range: tuple[int, int] = (0, 0),
    missing: float = np.nan,
    classes: np.ndarray | None = None,
) -> NativePredictor:
    """``classes``: an XGBClassifier's ``classes_`` (a Booster's are 0..k-1)."""
    config = json.loads(booster.save_config())
    # inplace_predict is thread-safe for tree boosters: one thread per call (see load_native)
    thread_safe = config["learner"]["gradient_booster"]["name"] in ("gbtree", "dart")
    booster.set_param({"nthread": 1 if thread_safe else threads})

    def inplace(x: np.ndarray) -> np.ndarray:
        return booster.inplace_predict(x, iteration_range=iteration_range, missing=missing)

    objective = config["learner"]["objective"]["name"]
    if objective in ("binary:logistic", "multi:softprob"):
        k = 2 if objective == "binary:logistic" else int(config["learner"]["learner_model_param"]["num_class"])
        classes = np.arange(k, dtype=np.int64) if classes is None else classes
        if len(classes) != k:
            msg = f"the model's classes {classes.tolist()[:20]} are not the {k} of its objective {objective}"
            raise NativeFlavorError(msg)
        if k == 2:
            predictor = _classifier("xgboost", dtype, classes, lambda x: _binary(inplace(x)), _xgb_label)
        else:
            predictor = _classifier("xgboost", dtype, classes, inplace, _argmax)
    else:  # regression and any other objective: what predict returns, as ``prediction``
        targets = int(config["learner"]["learner_model_param"].get("num_target", "1") or 1)
        predictor = _regressor("xgboost", dtype, targets, inplace)
    predictor.thread_safe = thread_safe
    return predictor


def _sklearn(spec: dict[str, Any], dtype: Any, threads: int) -> NativePredictor:
    from sklearn.base import is_classifier
    from sklearn.ensemble._forest import ForestClassifier, ForestRegressor
    from sklearn.tree._classes import BaseDecisionTree

    model = _deserialize(spec)
    # n_jobs stays the model's own: a forest summed by more threads differs in the last bits. The
    # core scores chunks in parallel instead (sklearn's predict releases the GIL).
    names = [str(n) for n in getattr(model, "feature_names_in_", [])] or None
    _forget_feature_names(model)
    # sklearn's trees compute in float32: the matrix is built in it, sparing sklearn a second copy.
    matrix_dtype = np.float32 if isinstance(model, (ForestClassifier, ForestRegressor, BaseDecisionTree)) else dtype
    if is_classifier(model) and hasattr(model, "predict_proba"):
        classes = np.asarray(model.classes_)
        if classes.ndim != 1:
            msg = "multi-output classifiers are not scored natively; use the pyfunc runtime"
            raise NativeUnsupported(msg)
        if isinstance(model, ForestClassifier):
            # ForestClassifier.predict is exactly classes_.take(argmax(predict_proba)): computed once.
            predictor = _classifier("sklearn", matrix_dtype, classes, model.predict_proba, _argmax)
        else:
            label_index = _own_label_index(model, classes)
            predictor = _classifier("sklearn", matrix_dtype, classes, model.predict_proba, label_index)
    else:
        outputs = int(getattr(model, "n_outputs_", 1) or 1)
        predictor = _regressor("sklearn", matrix_dtype, outputs, model.predict)
    predictor.feature_names = names
    # Trees read rows one by one; anything else may multiply the matrix: lay it out as the flavor's
    # DataFrame does (column-major), so BLAS sums in the same order and the results are the same bits.
    predictor.order = "C" if matrix_dtype == np.float32 else "F"
    return predictor


def _forget_feature_names(model: Any) -> None:
    """A matrix has no column names; its columns are put in the fitted order (``feature_names``), so
    this loaded copy drops the names it would check them against (and warn about on every chunk)."""
    from sklearn.compose import ColumnTransformer

    steps = [step for _, step in getattr(model, "steps", [])] or [model]
    if any(isinstance(step, ColumnTransformer) for step in steps):
        msg = "a ColumnTransformer selects its columns by name from a DataFrame; score it with the pyfunc runtime"
        raise NativeUnsupported(msg)
    for step in [model, *steps]:
        vars(step).pop("feature_names_in_", None)


def _own_label_index(model: Any, classes: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The index in ``classes`` of the model's own ``predict`` (for classifiers whose label is not the argmax)."""
    order = np.argsort(classes, kind="stable")

    def label_index(x: np.ndarray, _proba: np.ndarray) -> np.ndarray:
        labels = np.asarray(model.predict(x))
        return order[np.searchsorted(classes, labels, sorter=order)]

    return label_index
