"""The asset factory: a partitioned Dagster asset that scores one dataset partition per partition key."""

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext

from ml_assets.datasets import ParquetDataset
from ml_assets.scoring import DEFAULT_CHUNK_ROWS, NullPolicy, Progress, ScoringResult, score_partition
from resources.dagster_resources import ModelRegistryResource, ModelRuntimeResource
from resources.errors import MlAssetsError
from sensors.promotion import MODEL_NAME_TAG, MODEL_VERSION_TAG


def _as_dataset(value: ParquetDataset | str, partition_column: str | None) -> ParquetDataset:
    return value if isinstance(value, ParquetDataset) else ParquetDataset(value, partition_column=partition_column)


def build_scoring_asset(
    *,
    name: str,
    model: str,
    input_dataset: ParquetDataset | str,
    output_dataset: ParquetDataset | str,
    partitions_def: dg.PartitionsDefinition | None = None,
    partition_column: str | None = "date",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    passthrough: Sequence[str] = (),
    nulls: NullPolicy = "error",
    version_column: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    deps: Sequence[dg.AssetKey | str | dg.AssetsDefinition] | None = None,
    backfill_policy: dg.BackfillPolicy | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    registry_key: str = "model_registry",
    runtime_key: str = "model_runtime",
) -> dg.AssetsDefinition:
    """An asset whose materialization scores the input partition named by the partition key.

    Args:
        name: the asset name.
        model: a model ref, e.g. ``models:/fraud@champion``; resolved at every run, so a
            promotion changes what the next run scores with.
        input_dataset / output_dataset: a ``ParquetDataset`` or a URI (hive-partitioned by
            ``partition_column``, or a path template such as ``s3://b/scores/{date}.parquet``).
        partitions_def: e.g. ``DailyPartitionsDefinition(...)`` or ``StaticPartitionsDefinition``;
            each key is the value of ``partition_column``. None scores the whole dataset.
        chunk_rows / passthrough / nulls / version_column: see ``score_partition``.
        registry_key / runtime_key: resource keys of a ``ModelRegistryResource`` and a
            ``ModelRuntimeResource``.
    """
    source = _as_dataset(input_dataset, partition_column)
    dest = _as_dataset(output_dataset, partition_column)

    @dg.asset(
        name=name,
        key_prefix=key_prefix,
        group_name=group_name,
        deps=deps,
        partitions_def=partitions_def,
        backfill_policy=backfill_policy,
        description=description or f"Scores {source.uri} with {model} into {dest.uri}.",
        tags=dict(tags or {}),
        kinds={"parquet", "python"},
        metadata={"model_ref": model, "input_dataset": source.uri, "output_dataset": dest.uri},
        required_resource_keys={registry_key, runtime_key},
    )
    def _score(context: AssetExecutionContext) -> dg.MaterializeResult:
        registry: ModelRegistryResource = getattr(context.resources, registry_key)
        runtime: ModelRuntimeResource = getattr(context.resources, runtime_key)
        if partitions_def is None:
            partitions: list[str | None] = [None]
        elif context.has_partition_key_range:
            partitions = list(context.partition_keys)
        else:
            partitions = [context.partition_key]
        try:
            version = registry.resolve(model)
            context.log.info(f"{model} resolves to {version.describe()} ({version.format})")
            scorer = runtime.load(version, registry.fetch(version))
            results = [
                score_partition(
                    scorer,
                    version,
                    source,
                    dest,
                    partition=partition,
                    chunk_rows=chunk_rows,
                    passthrough=passthrough,
                    nulls=nulls,
                    version_column=version_column,
                    on_progress=_progress_logger(context, partition),
                    extra_metadata={"dagster_run_id": context.run_id, "asset": context.asset_key.to_user_string()},
                )
                for partition in partitions
            ]
        except MlAssetsError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        return dg.MaterializeResult(
            metadata=_metadata(results),
            data_version=dg.DataVersion(f"{version.name}/{version.version}"),
            tags={MODEL_NAME_TAG: version.name, MODEL_VERSION_TAG: version.version},
        )

    return _score


def _progress_logger(context: AssetExecutionContext, partition: str | None) -> Any:
    """Logs at every tenth of the partition, not every chunk."""
    state = {"next": 0.1}

    def log(progress: Progress) -> None:
        done = progress.rows_done / max(progress.rows_total, 1)
        if done >= state["next"]:
            state["next"] = (int(done * 10) + 1) / 10
            context.log.info(f"partition {partition}: {progress.rows_done:,}/{progress.rows_total:,} rows scored")

    return log


def _metadata(results: list[ScoringResult]) -> dict[str, Any]:
    first = results[0]
    rows_in = sum(r.rows_in for r in results)
    rows_out = sum(r.rows_out for r in results)
    seconds = sum(r.seconds for r in results)
    lineage = first.version.lineage()
    metadata: dict[str, Any] = {
        **{key: dg.MetadataValue.text(value) for key, value in lineage.items()},
        "rows_in": dg.MetadataValue.int(rows_in),
        "rows_out": dg.MetadataValue.int(rows_out),
        "dagster/row_count": dg.MetadataValue.int(rows_out),
        "seconds": dg.MetadataValue.float(round(seconds, 3)),
        "rows_per_second": dg.MetadataValue.float(round(rows_out / seconds if seconds else 0.0, 1)),
        "chunks": dg.MetadataValue.int(sum(r.chunks for r in results)),
    }
    if len(results) == 1:
        metadata["output"] = dg.MetadataValue.path(first.output_uri)
        metadata["score_summary"] = dg.MetadataValue.md(first.summary.as_markdown())
        metadata["score_stats"] = dg.MetadataValue.json(first.summary.as_dict())
    else:
        metadata["outputs"] = dg.MetadataValue.json({r.partition: r.output_uri for r in results})
        metadata["score_summary"] = dg.MetadataValue.md(
            "\n\n".join(f"**{r.partition}**\n\n{r.summary.as_markdown()}" for r in results)
        )
    return metadata
