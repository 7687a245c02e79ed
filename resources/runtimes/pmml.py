"""PMML runtime: pypmml's own evaluator (pmml4s) in the process's JVM, fed columns instead of JSON.

Measured first (rf PMML of BENCHMARKS.md, 20k rows, one thread): ``pypmml.Model.predict(DataFrame)``
spends ~10 % of its time in ``DataFrame.to_json``, ~3 % in ``read_json`` and the rest in one py4j
call whose JVM side parses the JSON, evaluates and prints JSON; pmml4s's evaluator alone runs
~28k rows/s per core on that model (JFR: tree ``Node.eval`` ~38 %, per-segment output building
~27 %). So transfer fixes are worth ~2-3x and the rest must come from running the evaluator on
several threads, one model copy each (pmml4s models keep mutable scratch state).

Here the model is loaded with pypmml's jars (``pypmml/jars``) into the JVM shared through
``ml_assets.resources.runtimes._jvm``; a batch crosses as one ``double[]`` (numeric fields) plus dictionary codes
(string fields), and ``mlassets.PmmlBatchScorer`` builds the same ``Series`` pmml4s builds from
JSON and calls the same ``Model.predict`` per row, on ``threads`` Java threads.

That still leaves pmml4s's ~28k rows/s per core. For tree ensembles (the rf of BENCHMARKS.md
and most PMML that tools write) the ``compiled`` engine walks the trees flattened into arrays
(``ml_assets.resources.runtimes._pmml_trees``, ``mlassets.TreeEnsembleScorer``), after checking at load time that it
gives bit-identical outputs to pmml4s on rows placed on, beside and between every split value;
rows with missing values are still scored by pmml4s, which owns the missing-value strategies.

Inputs are the model's used fields (MiningSchema active fields, with DataDictionary types);
outputs are the model's output fields (the PMML ``Output`` element, else pmml4s's defaults
from the target), named by the prediction contract: ``probability(<class>)`` becomes
``probability_<class>`` in the order of the target's values, the predicted value ``label`` (derived
as the most probable class when the PMML has no predicted-value field) or ``prediction``.
Missing values (nulls, NaN) reach pmml4s as missing, as JSON ``null`` does.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml_assets.resources.core.errors import ModelLoadError, SchemaMismatchError, ScoringError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.predictions import (
    PREDICTION,
    Naming,
    OutputMap,
    check_naming,
    classifier_map,
    identity_map,
)
from ml_assets.resources.runtimes import _jvm
from ml_assets.resources.runtimes._common import empty_batch, find_model_file, resolve_parallelism

logger = logging.getLogger(__name__)
_HELPERS = ("RowSlices", "PmmlBatchScorer")
_NUMERIC = {
    "double": pa.float64(),
    "float": pa.float64(),
    "real": pa.float64(),
    "integer": pa.int64(),
    "long": pa.int64(),
    "int": pa.int64(),
}
_OUTPUT_TYPES = {"double": pa.float64(), "float": pa.float64(), "real": pa.float64(), "integer": pa.int64()}


def pmml_jars(configured: str | os.PathLike[str] | None = None) -> list[Path]:
    """pmml4s and its dependencies: the jars shipped in the pypmml wheel (or a configured folder)."""
    folder = configured or os.environ.get("ML_ASSETS_PMML_JARS_DIR") or os.environ.get("PYPMML_JARS_DIR")
    if not folder:
        spec = importlib.util.find_spec("pypmml")
        if spec is None or spec.origin is None:
            msg = "the PMML runtime needs pypmml's evaluator jars: pip install 'dagster-ml-assets[pmml]'"
            raise ModelLoadError(msg)
        folder = Path(spec.origin).parent / "jars"
    jars = sorted(Path(folder).glob("*.jar"))
    if not jars:
        msg = f"no jars found in {folder}; expected pmml4s and its dependencies"
        raise ModelLoadError(msg)
    return jars


class PmmlScorer:
    def __init__(
        self,
        version: ModelVersion,
        pmml_path: Path,
        *,
        threads: int,
        jars_dir: str | None,
        engine: Literal["auto", "pmml4s", "compiled"] = "auto",
        verify_rows: int = 4096,
        naming: Naming = "contract",
    ) -> None:
        self.version = version
        self.engine = "pmml4s"
        self._forest: Any = None
        self.concurrency = 1  # the JVM side spreads each batch over `threads` model copies
        self._lock = threading.Lock()
        self._buffers = _jvm.DirectArrays()
        scorer_class = _jvm.helper_class("PmmlBatchScorer", (*_HELPERS, "TreeEnsembleScorer"), pmml_jars(jars_dir))
        try:
            self._java = scorer_class(str(pmml_path), threads)
        except Exception as exc:
            reason = _jvm.java_error_message(exc)
            msg = f"{version.describe()}: pmml4s could not load {pmml_path.name}: {reason}"
            raise ModelLoadError(msg) from exc
        names = [str(n) for n in self._java.inputNames()]
        types = [str(t).lower() for t in self._java.inputTypes()]
        fields, kinds, slots = [], [], []
        n_numeric = n_string = 0
        for name, data_type in zip(names, types, strict=True):
            categorical = str(self._java.inputOpType(name)) == "categorical"
            if data_type in _NUMERIC and not (categorical and data_type not in ("integer", "long", "int")):
                fields.append(pa.field(name, pa.float64() if data_type in ("double", "float", "real") else pa.int64()))
                kinds.append(0)
                slots.append(n_numeric)
                n_numeric += 1
            else:
                fields.append(pa.field(name, pa.string()))
                kinds.append(1)
                slots.append(n_string)
                n_string += 1
        self.input_schema = pa.schema(fields)
        self._kinds, self._slots = kinds, slots
        self._n_numeric, self._n_string = n_numeric, n_string
        out_names = [str(n) for n in self._java.outputNames()]
        out_types = [str(t).lower() for t in self._java.outputTypes()]
        self._numeric_out = [t in _OUTPUT_TYPES for t in out_types]
        self._native_schema = pa.schema(
            [
                pa.field(name, pa.float64() if numeric else pa.string())
                for name, numeric in zip(out_names, self._numeric_out, strict=True)
            ]
        )
        self._jars = pmml_jars(jars_dir)
        if engine != "pmml4s":
            self._try_compiled(pmml_path, threads=threads, required=engine == "compiled", verify_rows=verify_rows)
        self._map = self._contract() if naming == "contract" else identity_map(self._native_schema)
        self.output_schema = self._map.schema
        self.output_note = self._map.note
        self.classes = list(self._map.classes) or None

    def _contract(self) -> OutputMap:
        """pmml4s's output fields by their feature: probability(<class>) -> probability_<class>,
        predictedValue -> label (classification) or prediction (regression); the rest keep their names."""
        model = self._java.model()
        features: dict[str, tuple[str, str | None]] = {}
        for output in model.outputFields():
            value = output.value()
            features[str(output.name())] = (str(output.feature()), str(value.get()) if value.isDefined() else None)
        predicted = [f for f in self._native_schema if features.get(f.name, ("",))[0] == "predictedValue"]
        if bool(model.isClassification()):
            classes = [str(c) for c in model.classes()]
            probabilities = {
                value: f
                for f in self._native_schema
                for feature, value in [features.get(f.name, ("", None))]
                if feature == "probability" and value is not None
            }
            label = predicted[0].name if predicted else None
            used = {label, *(f.name for f in probabilities.values())}
            others = [f for f in self._native_schema if f.name not in used]
            note = "classes from the PMML target's values" + ("" if label else "; label = the most probable class")
            return classifier_map(classes, probabilities=probabilities, label=label, others=others, note=note)
        if predicted:
            others = [(f.name, f) for f in self._native_schema if f.name != predicted[0].name]
            return OutputMap(((predicted[0].name, pa.field(PREDICTION, pa.float64())), *others), note="a regression")
        return identity_map(self._native_schema, note="no predicted value among the PMML outputs: their own names")

    def _try_compiled(self, pmml_path: Path, *, threads: int, required: bool, verify_rows: int) -> None:
        """Use the flattened tree evaluator when the PMML fits it and it agrees exactly with pmml4s."""
        from ml_assets.resources.runtimes._pmml_trees import Unsupported, flatten

        try:
            if any(kind != 0 for kind in self._kinds):
                raise Unsupported("string inputs")
            if not all(self._numeric_out):
                raise Unsupported("string outputs")
            forest = flatten(pmml_path, self.input_schema.names, self._native_schema.names)
        except Unsupported as exc:
            if required:
                msg = f"{self.version.describe()}: engine='compiled' cannot evaluate this PMML: {exc}"
                raise ModelLoadError(msg) from exc
            logger.info("%s: scored by pmml4s alone (%s)", self.version.describe(), exc)
            return
        jpype = _jvm.ensure_jvm()
        forest_class = _jvm.helper_class("TreeEnsembleScorer", (*_HELPERS, "TreeEnsembleScorer"), self._jars)
        self._forest = forest_class(
            jpype.JArray(jpype.JInt)(forest.field),
            jpype.JArray(jpype.JByte)(forest.op),
            jpype.JArray(jpype.JDouble)(forest.value),
            jpype.JArray(jpype.JInt)(forest.first_child),
            jpype.JArray(jpype.JInt)(forest.next_sibling),
            jpype.JArray(jpype.JInt)(forest.dist),
            jpype.JArray(jpype.JDouble)(forest.probs),
            jpype.JArray(jpype.JInt)(forest.roots),
            forest.n_classes,
            len(self._kinds),
            forest.average,
            threads,
        )
        self._forest_meta = forest
        sample = verification_batch(self.input_schema, forest, rows=verify_rows)
        ours, theirs = self._score_compiled(sample), self._score_pmml4s(sample)
        same = all(
            np.array_equal(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False), equal_nan=True)
            for a, b in zip(ours.columns, theirs.columns, strict=True)
        )
        if not same:
            self._forest.close()
            self._forest = None
            msg = f"{self.version.describe()}: the compiled tree evaluator disagrees with pmml4s on verification rows"
            if required:
                raise ModelLoadError(msg)
            warnings.warn(msg + "; scoring with pmml4s", stacklevel=3)
            return
        self.engine = "compiled"

    def _columns(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, list[str]]:
        n = batch.num_rows
        numeric = np.empty((self._n_numeric, n), dtype=np.float64)
        codes = np.empty((self._n_string, n), dtype=np.int32)
        dictionary: list[str] = []
        for j, kind in enumerate(self._kinds):
            column = batch.column(j)
            if kind == 0:
                # Integers travel as doubles: pmml4s converts every number with toDouble/toLong.
                numeric[self._slots[j]] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            else:
                encoded = pc.dictionary_encode(column.cast(pa.string()))
                offset = len(dictionary)
                dictionary.extend(encoded.dictionary.to_pylist())
                idx = encoded.indices.cast(pa.int32())
                codes[self._slots[j]] = pc.fill_null(pc.add(idx, offset), -1).to_numpy(zero_copy_only=False)
        return numeric, codes, dictionary

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        missing = [name for name in self.input_schema.names if batch.schema.get_field_index(name) < 0]
        if missing:
            msg = (
                f"{self.version.describe()}: the data lacks PMML input field(s) {missing}; "
                f"the model reads {self.input_schema.names}"
            )
            raise SchemaMismatchError(msg)
        batch = batch.select(self.input_schema.names)
        if batch.num_rows == 0:
            return empty_batch(self.output_schema)
        if self._forest is not None:
            return self._map.apply(self._score_compiled(batch))
        return self._map.apply(self._score_pmml4s(batch))

    def _score_compiled(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        with self._lock:
            # Java reads and writes these numpy buffers in place.
            numeric, in_buffer = self._buffers.get("in", (self._n_numeric, n))
            for j in range(self._n_numeric):
                numeric[j] = batch.column(j).cast(pa.float64()).to_numpy(zero_copy_only=False)
            probs, out_buffer = self._buffers.get("out", (n, self._forest_meta.n_classes))
            try:
                self._forest.score(in_buffer, out_buffer, n)
            except Exception as exc:
                reason = _jvm.java_error_message(exc)
                msg = f"{self.version.describe()}: the tree evaluator failed on a batch of {n} rows: {reason}"
                raise ScoringError(msg) from exc
            probs = probs.copy()  # the buffers are reused by the next call
        outputs = np.stack([probs[:, k] for k in self._forest_meta.output_class_index])
        # Rows with missing inputs (or a tree ending on a node with no true child) go to pmml4s.
        deferred = np.flatnonzero(np.isnan(probs).any(axis=1))
        if deferred.size:
            rest = self._score_pmml4s(batch.take(pa.array(deferred)))
            for k, column in enumerate(rest.columns):
                outputs[k, deferred] = column.to_numpy(zero_copy_only=False)
        arrays = [pa.array(outputs[k], mask=np.isnan(outputs[k])) for k in range(outputs.shape[0])]
        return pa.RecordBatch.from_arrays(arrays, schema=self._native_schema)

    def _score_pmml4s(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        numeric, codes, dictionary = self._columns(batch)
        jpype = _jvm.ensure_jvm()
        try:
            with self._lock:
                result = self._java.score(
                    n,
                    jpype.JArray(jpype.JInt)(self._kinds),
                    jpype.JArray(jpype.JInt)(self._slots),
                    jpype.JArray(jpype.JDouble)(numeric.ravel()),
                    jpype.JArray(jpype.JInt)(codes.ravel()),
                    jpype.JArray(jpype.JString)(dictionary),
                    jpype.JArray(jpype.JBoolean)(self._numeric_out),
                )
                numbers = np.asarray(memoryview(result[0]), dtype=np.float64)
                strings = result[1]
                texts = [None if s is None else str(s) for s in strings] if len(strings) else []
        except Exception as exc:
            reason = _jvm.java_error_message(exc)
            msg = f"{self.version.describe()}: pmml4s failed on a batch of {n} rows: {reason}"
            raise ScoringError(msg) from exc
        arrays = []
        num_k = str_k = 0
        for is_numeric in self._numeric_out:
            if is_numeric:
                values = numbers[num_k * n : (num_k + 1) * n]
                arrays.append(pa.array(values, mask=np.isnan(values)))
                num_k += 1
            else:
                arrays.append(pa.array(texts[str_k * n : (str_k + 1) * n], pa.string()))
                str_k += 1
        return pa.RecordBatch.from_arrays(arrays, schema=self._native_schema)

    def close(self) -> None:
        for attr in ("_java", "_forest"):
            java = getattr(self, attr, None)
            setattr(self, attr, None)
            if java is not None:
                java.close()
        if hasattr(self, "_buffers"):
            self._buffers.clear()


def verification_batch(schema: pa.Schema, forest: Any, *, rows: int, seed: int = 0) -> pa.RecordBatch:
    """Rows that sit on, just beside and between the trees' split values, for each input."""
    rng = np.random.default_rng(seed)
    columns = []
    for j, field in enumerate(schema):
        thresholds = forest.value[(forest.field == j) & (forest.op >= 2)]
        if thresholds.size == 0:
            thresholds = np.zeros(1)
        pick = rng.choice(thresholds, size=rows)
        mode = rng.integers(0, 6, size=rows)
        spread = float(np.std(thresholds)) or 1.0
        values = np.select(
            [mode == 0, mode == 1, mode == 2, mode == 3, mode == 4],
            [
                pick,
                np.nextafter(pick, np.inf),
                np.nextafter(pick, -np.inf),
                pick.astype(np.float32).astype(np.float64),
                pick + rng.normal(0, spread * 0.01, rows),
            ],
            rng.normal(float(np.mean(thresholds)), spread * 1.5, rows),
        )
        if pa.types.is_integer(field.type):
            values = np.round(values)
        columns.append(pa.array(values).cast(field.type, safe=False))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class PmmlRuntime:
    """Scores PMML files in-process with pmml4s, the evaluator pypmml wraps.

    Options: ``threads`` (JVM scoring threads; default the cores available); ``engine``:
    ``"pmml4s"`` evaluates every row with pmml4s (one model copy per thread), ``"compiled"``
    walks the PMML's trees flattened into arrays (tree ensembles only; rows with missing
    values still go to pmml4s) after checking on ``verify_rows`` rows placed on the split
    values that it agrees exactly with pmml4s, ``"auto"`` (default) uses ``"compiled"`` where
    the PMML fits it and the check passes, pmml4s otherwise; ``jars_dir`` (a folder of pmml4s
    jars instead of pypmml's); ``naming``: ``"contract"`` (default: ``label`` + ``probability_<class>``
    in the order of the target's values, or ``prediction``) or ``"native"`` (the PMML output field
    names, e.g. ``probability(1)``).
    """

    def __init__(
        self,
        *,
        threads: int | None = None,
        engine: Literal["auto", "pmml4s", "compiled"] = "auto",
        verify_rows: int = 4096,
        jars_dir: str | None = None,
        naming: Naming = "contract",
    ) -> None:
        self.naming = check_naming(naming)
        if engine not in ("auto", "pmml4s", "compiled"):
            msg = f"engine must be 'auto', 'pmml4s' or 'compiled', got {engine!r}"
            raise ValueError(msg)
        self.threads = resolve_parallelism(threads, what="threads")
        self.engine = engine
        self.verify_rows = verify_rows
        self.jars_dir = jars_dir

    def load(self, version: ModelVersion, path: Path) -> PmmlScorer:
        pmml = find_model_file(Path(path), (".pmml", ".xml"), version)
        return PmmlScorer(
            version,
            pmml,
            threads=self.threads,
            jars_dir=self.jars_dir,
            engine=self.engine,
            verify_rows=self.verify_rows,
            naming=self.naming,
        )


__all__ = ["PmmlRuntime", "PmmlScorer", "pmml_jars"]
