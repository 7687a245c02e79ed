"""PMML runtime: pypmml's own evaluator (pmml4s) in the process's JVM, fed columns instead of JSON.

Measured first (rf PMML of BENCHMARKS.md, 20k rows, one thread): ``pypmml.Model.predict(DataFrame)``
spends ~10 % of its time in ``DataFrame.to_json``, ~3 % in ``read_json`` and the rest in one py4j
call whose JVM side parses the JSON, evaluates and prints JSON; pmml4s's evaluator alone runs
~28k rows/s per core on that model (JFR: tree ``Node.eval`` ~38 %, per-segment output building
~27 %). So transfer fixes are worth ~2-3x and the rest must come from running the evaluator on
several threads, one model copy each (pmml4s models keep mutable scratch state).

Here the model is loaded with pypmml's jars (``pypmml/jars``) into the JVM shared through
``resources._jvm``; a batch crosses as one ``double[]`` (numeric fields) plus dictionary codes
(string fields), and ``mlassets.PmmlBatchScorer`` builds the same ``Series`` pmml4s builds from
JSON and calls the same ``Model.predict`` per row, on ``threads`` Java threads.

Inputs are the model's used fields (MiningSchema active fields, with DataDictionary types);
outputs are the model's output fields (the PMML ``Output`` element, else pmml4s's defaults
from the target). Missing values (nulls, NaN) reach pmml4s as missing, as JSON ``null`` does.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from resources import _jvm
from resources._common import empty_batch, find_model_file, resolve_parallelism
from resources.errors import ModelLoadError, SchemaMismatchError, ScoringError
from resources.models import ModelVersion

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
    def __init__(self, version: ModelVersion, pmml_path: Path, *, threads: int, jars_dir: str | None) -> None:
        self.version = version
        self.concurrency = 1  # the JVM side spreads each batch over `threads` model copies
        self._lock = threading.Lock()
        scorer_class = _jvm.helper_class("PmmlBatchScorer", _HELPERS, pmml_jars(jars_dir))
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
        self._input_schema = pa.schema(fields)
        self._kinds, self._slots = kinds, slots
        self._n_numeric, self._n_string = n_numeric, n_string
        out_names = [str(n) for n in self._java.outputNames()]
        out_types = [str(t).lower() for t in self._java.outputTypes()]
        self._numeric_out = [t in _OUTPUT_TYPES for t in out_types]
        self._output_schema = pa.schema(
            [
                pa.field(name, pa.float64() if numeric else pa.string())
                for name, numeric in zip(out_names, self._numeric_out, strict=True)
            ]
        )

    @property
    def input_schema(self) -> pa.Schema:
        return self._input_schema

    @property
    def output_schema(self) -> pa.Schema:
        return self._output_schema

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
        missing = [name for name in self._input_schema.names if batch.schema.get_field_index(name) < 0]
        if missing:
            msg = (
                f"{self.version.describe()}: the data lacks PMML input field(s) {missing}; "
                f"the model reads {self._input_schema.names}"
            )
            raise SchemaMismatchError(msg)
        batch = batch.select(self._input_schema.names)
        n = batch.num_rows
        if n == 0:
            return empty_batch(self._output_schema)
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
        return pa.RecordBatch.from_arrays(arrays, schema=self._output_schema)

    def close(self) -> None:
        java, self._java = getattr(self, "_java", None), None
        if java is not None:
            java.close()


class PmmlRuntime:
    """Scores PMML files in-process with pmml4s, the evaluator pypmml wraps.

    Options: ``threads`` (JVM scoring threads, each with its own copy of the model; default
    the cores available), ``jars_dir`` (a folder of pmml4s jars instead of pypmml's).
    """

    def __init__(self, *, threads: int | None = None, jars_dir: str | None = None) -> None:
        self.threads = resolve_parallelism(threads, what="threads")
        self.jars_dir = jars_dir

    def load(self, version: ModelVersion, path: Path) -> PmmlScorer:
        pmml = find_model_file(Path(path), (".pmml", ".xml"), version)
        return PmmlScorer(version, pmml, threads=self.threads, jars_dir=self.jars_dir)


__all__ = ["PmmlRuntime", "PmmlScorer", "pmml_jars"]
