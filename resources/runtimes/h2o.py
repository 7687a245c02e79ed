"""H2O MOJO runtime: h2o-genmodel in a JVM started once per process, batches passed as doubles.

The obvious ways are slow: ``h2o.mojo_predict_pandas`` writes CSV and starts a java process per
call; an H2O cluster uploads and downloads frames. Here the MOJO is loaded once into the
process's JVM (see ``ml_assets.resources.runtimes._jvm``), enum columns are encoded into the MOJO's domain indexes
with Arrow compute, and a whole batch crosses into Java as one ``double[]``; Java threads run
``GenModel.score0`` row by row exactly as ``EasyPredictModelWrapper`` does, so predictions are
H2O's own. Output columns follow the prediction contract: ``label`` and ``probability_<level>``
in the order of the response domain (``prediction`` for a regression); ``naming="native"`` keeps
H2O's names: ``predict``, then ``p0``/``p1`` for integer-like labels or the label itself otherwise.

The genmodel classes come from the jar in the ``h2o`` wheel (``h2o/backend/bin/h2o.jar``), or
from ``genmodel_jar`` / ``ML_ASSETS_H2O_GENMODEL_JAR`` (e.g. a standalone ``h2o-genmodel.jar``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ml_assets.resources.core.errors import ModelLoadError, SchemaMismatchError, ScoringError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.predictions import Naming, check_naming, classifier_map, identity_map, regressor_map
from ml_assets.resources.runtimes import _jvm
from ml_assets.resources.runtimes._common import empty_batch, find_model_file, resolve_parallelism

logger = logging.getLogger(__name__)
_HELPERS = ("RowSlices", "MojoBatchScorer")
_CLASSIFIERS = {"Binomial", "Multinomial", "Ordinal"}
_INTEGER_LABEL = re.compile(r"^[+-]?\d{1,9}$")


def genmodel_jar(configured: str | os.PathLike[str] | None = None) -> Path:
    """The jar holding ``hex.genmodel``: configured, from the environment, or the h2o wheel's."""
    chosen = configured or os.environ.get("ML_ASSETS_H2O_GENMODEL_JAR")
    if chosen:
        return Path(chosen)
    spec = importlib.util.find_spec("h2o")
    if spec is None or spec.origin is None:
        msg = (
            "the H2O MOJO runtime needs h2o-genmodel: install the extra (pip install 'dagster-ml-assets[h2o]') "
            "or set ML_ASSETS_H2O_GENMODEL_JAR to an h2o-genmodel.jar"
        )
        raise ModelLoadError(msg)
    return Path(spec.origin).parent / "backend" / "bin" / "h2o.jar"


def probability_column_name(label: str) -> str:
    """H2O's naming: integer class labels 0, 1 become p0, p1; other labels keep their text."""
    return f"p{label}" if _INTEGER_LABEL.match(label) else label


class H2oMojoScorer:
    def __init__(
        self,
        version: ModelVersion,
        mojo_path: Path,
        *,
        threads: int,
        unseen_levels: Literal["missing", "error"],
        jar: Path,
        engine: Literal["auto", "genmodel", "compiled"] = "auto",
        verify_rows: int = 4096,
        naming: Naming = "contract",
    ) -> None:
        self.version = version
        self.unseen_levels = unseen_levels
        self.concurrency = 1  # one call at a time; the JVM side spreads each batch over `threads` threads
        self._lock = threading.Lock()
        self._buffers = _jvm.DirectArrays()
        scorer_class = _jvm.helper_class("MojoBatchScorer", _HELPERS, [jar])
        try:
            self._java = scorer_class(str(mojo_path), threads)
        except Exception as exc:
            reason = _jvm.java_error_message(exc)
            msg = f"{version.describe()}: h2o-genmodel could not load MOJO {mojo_path.name}: {reason}"
            raise ModelLoadError(msg) from exc
        self.category = str(self._java.category())
        if self.category not in _CLASSIFIERS | {"Regression"}:
            msg = (
                f"{version.describe()}: MOJO model category {self.category!r} is not supported; "
                f"supported: Binomial, Multinomial, Ordinal, Regression"
            )
            raise ModelLoadError(msg)
        self.engine = "genmodel"
        if engine != "genmodel":
            reason = self._java.compileTrees(verify_rows)
            if reason is not None:
                if engine == "compiled":
                    self.close()
                    msg = f"{version.describe()}: engine='compiled' cannot score this MOJO: {reason}"
                    raise ModelLoadError(msg)
                logger.info("%s: scored by GenModel.score0 (%s)", version.describe(), reason)
            else:
                self.engine = "compiled"
        self._preds = int(self._java.predsSize())
        names = [str(n) for n in self._java.featureNames()]
        self._domains: list[pa.Array | None] = []
        fields = []
        for i, name in enumerate(names):
            domain = self._java.domain(i)
            if domain is None:
                self._domains.append(None)
                fields.append(pa.field(name, pa.float64()))
            else:
                self._domains.append(pa.array([str(level) for level in domain], pa.string()))
                fields.append(pa.field(name, pa.string()))
        self.input_schema = pa.schema(fields)
        if self.category in _CLASSIFIERS:
            self._labels = pa.array([str(level) for level in self._java.responseDomain()], pa.string())
            out = [pa.field("predict", pa.string())]
            out += [pa.field(probability_column_name(label), pa.float64()) for label in self._labels.to_pylist()]
        else:
            self._labels = None
            out = [pa.field("predict", pa.float64())]
        self._native_schema = pa.schema(out)
        if naming == "native":
            self._map = identity_map(self._native_schema)
        elif self._labels is not None:
            domain = self._labels.to_pylist()
            probabilities = dict(zip(domain, out[1:], strict=True))
            self._map = classifier_map(
                domain, probabilities=probabilities, label="predict", note="classes from the MOJO's response domain"
            )
        else:
            self._map = regressor_map(out, note="a regression")
        self.output_schema = self._map.schema
        self.output_note = self._map.note
        self.classes = list(self._map.classes) or None

    def _encode(self, batch: pa.RecordBatch, matrix: np.ndarray) -> None:
        """Fills ``matrix`` (features x rows) with the batch as H2O reads it."""
        for j, (field, domain) in enumerate(zip(self.input_schema, self._domains, strict=True)):
            column = batch.column(j)
            if domain is None:
                matrix[j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
                continue
            codes = pc.index_in(column.cast(pa.string()), value_set=domain)
            if self.unseen_levels == "error":
                unseen = pc.and_(pc.is_null(codes), pc.is_valid(column))
                if pc.any(unseen).as_py():
                    examples = pc.unique(pc.filter(column, unseen)).to_pylist()[:5]
                    msg = (
                        f"{self.version.describe()}: column {field.name!r} has levels the MOJO never saw "
                        f"(e.g. {examples}); known levels: {domain.to_pylist()[:20]}"
                    )
                    raise SchemaMismatchError(msg)
            # Missing and unseen levels become NaN, as EasyPredictModelWrapper does with
            # convertUnknownCategoricalLevelsToNa (the setting PredictCsv uses).
            matrix[j] = codes.cast(pa.float64()).to_numpy(zero_copy_only=False)

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        if n == 0:
            return empty_batch(self.output_schema)
        return self._map.apply(self._score_native(batch))

    def _score_native(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        with self._lock:
            # Java reads and writes these numpy buffers in place (no copy through JNI arrays).
            matrix, in_buffer = self._buffers.get("in", (len(self._domains), n))
            self._encode(batch, matrix)
            preds, out_buffer = self._buffers.get("out", (n, self._preds))
            try:
                self._java.score(in_buffer, out_buffer, n)
            except Exception as exc:
                reason = _jvm.java_error_message(exc)
                msg = f"{self.version.describe()}: h2o-genmodel failed on a batch of {n} rows: {reason}"
                raise ScoringError(msg) from exc
            preds = preds.copy()  # the buffer is reused by the next call
        if self._labels is None:
            arrays = [pa.array(preds[:, 0])]
        else:
            label_index = pa.array(preds[:, 0].astype(np.int32))
            arrays = [self._labels.take(label_index)]
            arrays += [pa.array(np.ascontiguousarray(preds[:, k])) for k in range(1, self._preds)]
        return pa.RecordBatch.from_arrays(arrays, schema=self._native_schema)

    def close(self) -> None:
        java, self._java = getattr(self, "_java", None), None
        if java is not None:
            java.close()
        if hasattr(self, "_buffers"):
            self._buffers.clear()


class H2oMojoRuntime:
    """Scores H2O MOJO zips in-process.

    Options: ``threads`` (JVM scoring threads, each with its own copy of the model; default
    the cores available), ``unseen_levels`` (``"missing"``: score an unseen enum level as
    missing, as H2O does; ``"error"``: refuse the batch), ``genmodel_jar``; ``engine``:
    ``"genmodel"`` scores every row with ``GenModel.score0``, ``"compiled"`` walks the MOJO's
    trees flattened into arrays and finishes with the model's own ``unifyPreds`` (tree models
    with numeric splits only), used after it matched ``score0`` bit for bit on ``verify_rows``
    rows placed on, beside and between the split values (NaN included); ``"auto"`` (default)
    uses ``"compiled"`` where it applies and agrees, ``"genmodel"`` otherwise; ``naming``:
    ``"contract"`` (default: ``label`` typed like the response domain, int64 for ``0``/``1``, and
    ``probability_<level>`` in domain order; ``prediction`` for a regression) or ``"native"``
    (H2O's ``predict``, ``p0``/``p1`` or the level names).
    """

    def __init__(
        self,
        *,
        threads: int | None = None,
        unseen_levels: Literal["missing", "error"] = "missing",
        genmodel_jar: str | None = None,
        engine: Literal["auto", "genmodel", "compiled"] = "auto",
        verify_rows: int = 4096,
        naming: Naming = "contract",
    ) -> None:
        self.naming = check_naming(naming)
        if engine not in ("auto", "genmodel", "compiled"):
            msg = f"engine must be 'auto', 'genmodel' or 'compiled', got {engine!r}"
            raise ValueError(msg)
        self.engine = engine
        self.verify_rows = verify_rows
        if unseen_levels not in ("missing", "error"):
            msg = f"unseen_levels must be 'missing' or 'error', got {unseen_levels!r}"
            raise ValueError(msg)
        self.threads = resolve_parallelism(threads, what="threads")
        self.unseen_levels = unseen_levels
        self.genmodel_jar = genmodel_jar

    def load(self, version: ModelVersion, path: Path) -> H2oMojoScorer:
        mojo = find_model_file(Path(path), (".zip",), version)
        return H2oMojoScorer(
            version,
            mojo,
            threads=self.threads,
            unseen_levels=self.unseen_levels,
            jar=genmodel_jar(self.genmodel_jar),
            engine=self.engine,
            verify_rows=self.verify_rows,
            naming=self.naming,
        )


__all__ = ["H2oMojoRuntime", "H2oMojoScorer", "genmodel_jar", "probability_column_name"]
