"""Score one partition with a registered model; find the partitions a promotion left stale."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from ml_assets.airflow.hooks import DEFAULT_CONN_ID, ModelRegistryHook
from ml_assets.datasets import OutputCompression, ParquetDataset, ReaderChoice
from ml_assets.openlineage import ScoringLineage
from ml_assets.promotion import stale_partitions
from ml_assets.quarantine import OnRowError, error_budget
from ml_assets.reconcile import NumericStrings
from ml_assets.scoring import NullPolicy, Progress, score_partition

if TYPE_CHECKING:
    from airflow.sdk import Context

# A log line per this many seconds at most: a partition of 100M rows must not flood the task log.
_PROGRESS_EVERY_S = 30.0


class ScorePartitionOperator(BaseOperator):
    """Score one partition of a Parquet dataset with a registered model and commit the output atomically.

    The ref is resolved when the task runs (``models:/fraud@champion`` scores with whatever version
    holds the alias then); the version used is written into the output file's metadata, pushed to
    XCom and put in the ``extra`` of the asset events on the task's outlets. A retry rewrites the
    same partition: readers see the old output or the new one, never half of one.

    Args:
        model: a model ref (``models:/fraud@champion``, ``models:/fraud/7``, ``file:///m.onnx``).
        input_dataset / output_dataset: a Parquet dataset root (hive-partitioned by
            ``partition_column``) or a path template (``s3://b/scores/{date}/``).
        partition: the partition key, templated (``"{{ ds }}"``); None scores the whole dataset.
            Map over keys with ``.partial(...).expand(partition=[...])``.
        partition_column: the hive key (``date``); for templates, the placeholder's name.
        passthrough: input columns copied to the output next to the predictions.
        runtime / runtime_options: force a runtime; options for the resolved runtime, e.g.
            ``{"threads": 2}`` (the connection's per-runtime options are the defaults).
        registry_conn_id: an ``ml_assets_registry`` connection.
        storage_options: fsspec options for both datasets (e.g. an S3 endpoint).
        reader: the input's Parquet decoder, ``auto`` (default), ``polars`` or ``pyarrow``
            (``ParquetDataset.reader``); the XCom's ``reader`` says which one read and why.
        compression: the output's codec, ``zstd`` (default), ``lz4``, ``snappy`` or ``none``
            (``ParquetDataset.compression``).
        on_row_error / max_error_rate / max_error_rows: ``quarantine`` sets rows that cannot be scored
            aside in ``<output root>_errors`` within the budget (see ``score_partition``); the XCom and
            the asset events then carry the count, rate, top reasons and the errors location.

    OpenLineage: with ``apache-airflow-providers-openlineage`` installed and configured, the task's
    events carry the input dataset and the model version as inputs, the output dataset (rows written
    on COMPLETE) and the ``mlModel`` run facet (name, version, registry, URI, format): see
    ``get_openlineage_facets_on_start/complete/failure``.
    """

    template_fields: Sequence[str] = ("model", "input_dataset", "output_dataset", "partition")
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        model: str,
        input_dataset: str,
        output_dataset: str,
        partition: str | None = None,
        partition_column: str | None = "date",
        passthrough: Sequence[str] = (),
        runtime: str | None = None,
        runtime_options: Mapping[str, Any] | None = None,
        chunk_rows: int | None = None,
        nulls: NullPolicy = "error",
        numeric_strings: NumericStrings = "error",
        version_column: str | None = None,
        registry_conn_id: str = DEFAULT_CONN_ID,
        storage_options: Mapping[str, Any] | None = None,
        reader: ReaderChoice = "auto",
        compression: OutputCompression = "zstd",
        on_row_error: OnRowError = "fail",
        max_error_rate: float | None = None,
        max_error_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        error_budget(on_row_error, max_error_rate=max_error_rate, max_error_rows=max_error_rows)  # fails the parse
        self.on_row_error = on_row_error
        self.max_error_rate = max_error_rate
        self.max_error_rows = max_error_rows
        self.model = model
        self.input_dataset = input_dataset
        self.output_dataset = output_dataset
        self.partition = partition
        self.partition_column = partition_column
        self.passthrough = list(passthrough)
        self.runtime = runtime
        self.runtime_options = dict(runtime_options or {})
        self.chunk_rows = chunk_rows
        self.nulls = nulls
        self.numeric_strings = numeric_strings
        self.version_column = version_column
        self.registry_conn_id = registry_conn_id
        self.storage_options = dict(storage_options or {})
        self.reader = reader
        self.compression = compression
        self._datasets()  # a codec that is not one fails the parse, not the run
        # What the OpenLineage methods report: filled in as the task learns it (the version, the rows).
        self._lineage: ScoringLineage | None = None
        self._rows: dict[str, int] | None = None

    def _datasets(self) -> tuple[ParquetDataset, ParquetDataset]:
        storage = self.storage_options
        source = ParquetDataset(
            self.input_dataset, partition_column=self.partition_column, storage_options=storage, reader=self.reader
        )
        dest = ParquetDataset(
            self.output_dataset,
            partition_column=self.partition_column,
            storage_options=storage,
            compression=self.compression,
        )
        return source, dest

    def execute(self, context: Context) -> dict[str, Any]:
        partition = self.partition or None
        source, dest = self._datasets()
        with ModelRegistryHook(self.registry_conn_id).get_conn() as service:
            if self.runtime:
                service.runtime = self.runtime
            version = service.resolve(self.model)
            self.log.info("%s -> %s (%s, %s)", self.model, version.describe(), version.format, version.uri)
            self._lineage = ScoringLineage(source, dest, version)
            if self.runtime_options:
                name = service.runtime_for(version)
                service.runtime_options[name] = {**service.runtime_options.get(name, {}), **self.runtime_options}
            scorer = service.load(version)
            self._lineage = ScoringLineage(
                source, dest, version, input_schema=scorer.input_schema, output_schema=scorer.output_schema
            )
            result = score_partition(
                scorer,
                version,
                source,
                dest,
                partition=partition,
                chunk_rows=self.chunk_rows,
                passthrough=self.passthrough,
                nulls=self.nulls,
                numeric_strings=self.numeric_strings,
                version_column=self.version_column,
                on_progress=self._progress_logger(),
                extra_metadata={"airflow": _run_facts(context)},
                on_row_error=self.on_row_error,
                max_error_rate=self.max_error_rate,
                max_error_rows=self.max_error_rows,
            )
        summary = {
            "model_name": version.name,
            "model_version": version.version,
            "model_uri": version.uri,
            "partition": partition,
            "rows": result.rows_out,
            "seconds": round(result.seconds, 3),
            "rows_per_second": round(result.rows_per_second, 1),
            "output": result.output_uri,
            "reader": result.reader,
            **(result.row_errors.metadata() if result.row_errors else {}),
        }
        self._rows = {dest.uri: result.rows_out}
        self.log.info(
            "scored %s rows of %s in %.2f s (%.0f rows/s) -> %s",
            f"{result.rows_out:,}",
            source.describe(partition),
            result.seconds,
            result.rows_per_second,
            result.output_uri,
        )
        for outlet in self.outlets:
            event = context["outlet_events"][outlet]
            event.extra.update(summary)
            # Partitioned asset events exist from Airflow 3.2 on; older versions keep the key in extra.
            if partition is not None and hasattr(event, "add_partitions"):
                event.add_partitions(partition)
        return summary

    def get_openlineage_facets_on_start(self) -> Any:
        """Before the run: the datasets (the ref is not resolved yet, so no model facet)."""
        source, dest = self._datasets()
        return _operator_lineage(ScoringLineage(source, dest))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The datasets, the model version as an input and the ``mlModel`` facet, the rows written."""
        source, dest = self._datasets()
        return _operator_lineage(self._lineage or ScoringLineage(source, dest), rows=self._rows)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """As far as the task got: the model version when it was resolved before the failure."""
        source, dest = self._datasets()
        return _operator_lineage(self._lineage or ScoringLineage(source, dest))

    def _progress_logger(self) -> Any:
        last = [time.monotonic()]

        def log_progress(progress: Progress) -> None:
            if time.monotonic() - last[0] >= _PROGRESS_EVERY_S:
                last[0] = time.monotonic()
                self.log.info("chunk %d: %s of %s rows", progress.chunks, progress.rows_done, progress.rows_total)

        return log_progress


class StalePartitionsOperator(BaseOperator):
    """The scored partitions of ``output_dataset`` that another version than ``model``'s current one wrote.

    Reads the lineage each output file carries (tasks have no database access in Airflow 3), so it
    answers the same whoever scored the partitions. Returns the keys, sorted: feed them to a mapped
    ``ScorePartitionOperator`` with ``.expand(partition=stale.output)``; no key means nothing to do.

    Args:
        model: the watched ref (``models:/fraud@champion``), resolved when the task runs.
        output_dataset / partition_column / storage_options: the scoring task's output.
        partitions: limit the answer to these keys (templated; default: every scored partition).
    """

    template_fields: Sequence[str] = ("model", "output_dataset", "partitions")
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        model: str,
        output_dataset: str,
        partition_column: str | None = "date",
        partitions: Sequence[str] | None = None,
        registry_conn_id: str = DEFAULT_CONN_ID,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.output_dataset = output_dataset
        self.partition_column = partition_column
        self.partitions = partitions
        self.registry_conn_id = registry_conn_id
        self.storage_options = dict(storage_options or {})

    def execute(self, context: Context) -> list[str]:
        output = ParquetDataset(
            self.output_dataset, partition_column=self.partition_column, storage_options=self.storage_options
        )
        with ModelRegistryHook(self.registry_conn_id).get_conn() as service:
            version = service.resolve(self.model)
        stale = stale_partitions(output, version, partitions=self.partitions)
        self.log.info(
            "%s is %s; %d partition(s) of %s scored by another version: %s",
            self.model,
            version.describe(),
            len(stale),
            self.output_dataset,
            ", ".join(stale) or "none",
        )
        return stale


def _operator_lineage(lineage: ScoringLineage, rows: Mapping[str, int] | None = None) -> Any:
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(inputs=lineage.inputs(), outputs=lineage.outputs(rows), run_facets=lineage.run_facets())


def _run_facts(context: Context) -> dict[str, Any]:
    """Which Airflow task instance wrote the file, next to the model lineage in its metadata."""
    ti = context["ti"]
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
    }
