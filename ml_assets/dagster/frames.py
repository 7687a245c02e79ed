"""The frame-scoring asset: scores an upstream asset's Polars (or Arrow) frame, loaded by its IO manager,
and returns the scored frame for this asset's IO manager to store. No Parquet paths of ours involved."""

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dagster as dg
from dagster import AssetExecutionContext

from ml_assets.dagster.assets import scoring_metadata
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.frames import ScoredFrame, score_frame
from ml_assets.resources.core.errors import MlAssetsError
from ml_assets.scoring import NullPolicy
from ml_assets.sensors.promotion import MODEL_NAME_TAG, MODEL_VERSION_TAG


def build_frame_scoring_asset(
    *,
    name: str,
    model: str,
    upstream: dg.AssetKey | str | Sequence[str] | dg.AssetsDefinition,
    load_as: Literal["DataFrame", "LazyFrame"] = "DataFrame",
    partitions_def: dg.PartitionsDefinition | None = None,
    chunk_rows: int | None = None,
    passthrough: Sequence[str] = (),
    nulls: NullPolicy = "error",
    version_column: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    io_manager_key: str = "io_manager",
    registry_key: str = "model_registry",
    runtime_key: str = "model_runtime",
) -> dg.AssetsDefinition:
    """An asset that scores the frame of ``upstream`` with ``model`` and returns the scored frame.

    The upstream frame comes from the upstream asset's IO manager, the scored frame goes to
    ``io_manager_key``'s: passthrough and prediction columns [and a version column], a
    ``polars.DataFrame`` for Polars input, a ``pyarrow.Table`` for Arrow input. The
    materialization carries the same model lineage, tags, row counts, speed and score summary
    as ``build_scoring_asset``'s, so the promotion sensor can re-score it.

    Example:
        ```python
        @dg.asset(partitions_def=daily)
        def transactions(context) -> pl.LazyFrame:  # a scan: stored as a query plan, read in chunks
            return pl.scan_parquet(f"s3://bucket/transactions/date={context.partition_key}/*.parquet")

        scores = build_frame_scoring_asset(
            name="fraud_scores", model="models:/fraud@champion", upstream=transactions,
            load_as="LazyFrame", passthrough=["transaction_id"], partitions_def=daily,
        )
        dg.Definitions(
            assets=[transactions, scores],
            resources={"io_manager": dg.FilesystemIOManager(base_dir="data"),
                       "model_registry": ModelRegistryResource(uri=...), "model_runtime": ModelRuntimeResource()},
        )
        ```

    Args:
        name: the asset name.
        model: a model ref, e.g. ``models:/fraud@champion``; resolved at every run.
        upstream: the asset whose frame is scored: its key or its definition.
        load_as: the type the input is declared as, which IO managers that pick by type (such as
            dagster-polars') follow. ``LazyFrame``: the input is a lazy query, streamed in chunks
            of ``chunk_rows``, so memory follows the chunk size instead of the input's size.
            ``DataFrame`` (in fact any frame ``score_frame`` takes) works with any IO manager.
        partitions_def: usually the upstream's; a run scores the upstream partition of its key.
        chunk_rows / passthrough / nulls / version_column: see ``score_frame``.
        io_manager_key: the IO manager that stores the scored frame.
        registry_key / runtime_key: resource keys of a ``ModelRegistryResource`` and a
            ``ModelRuntimeResource``.
    """
    upstream_key = _key_of(upstream, name)
    input_type: Any = dg.Any
    if load_as == "LazyFrame":
        import polars as pl

        input_type = pl.LazyFrame
    prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix or [])

    @dg.asset(
        name=name,
        key_prefix=prefix or None,
        ins={"frame": dg.AssetIn(key=upstream_key, dagster_type=input_type)},
        partitions_def=partitions_def,
        io_manager_key=io_manager_key,
        required_resource_keys={registry_key, runtime_key},
        group_name=group_name,
        description=description or f"Scores the frame of {upstream_key.to_user_string()} with {model}.",
        metadata={"model_ref": model, "input_asset": upstream_key.to_user_string()},
        tags=dict(tags or {}),
        kinds={"polars", "python"},
    )
    def _score(context: AssetExecutionContext, frame: Any) -> dg.MaterializeResult:
        registry: ModelRegistryResource = getattr(context.resources, registry_key)
        runtime: ModelRuntimeResource = getattr(context.resources, runtime_key)
        partition = context.partition_key if context.has_partition_key else None
        where = f"asset {upstream_key.to_user_string()}" + (f" (partition {partition})" if partition else "")
        try:
            loaded = runtime.service(registry).open(model)
            context.log.info(f"{model} resolves to {loaded.version.describe()} ({loaded.version.format})")
            scored = score_frame(
                loaded,
                frame,
                chunk_rows=chunk_rows,
                passthrough=passthrough,
                nulls=nulls,
                version_column=version_column,
                name=where,
            )
        except (MlAssetsError, TypeError) as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        context.log.info(f"{where}: {scored.rows:,} rows scored in {scored.seconds:.2f} s")
        version = scored.version
        return dg.MaterializeResult(
            value=scored.frame,  # handed to the IO manager
            metadata=_metadata(scored, partition),
            data_version=dg.DataVersion(f"{version.name}/{version.version}"),
            tags={MODEL_NAME_TAG: version.name, MODEL_VERSION_TAG: version.version},
        )

    return _score


def _key_of(upstream: dg.AssetKey | str | Sequence[str] | dg.AssetsDefinition, name: str) -> dg.AssetKey:
    if isinstance(upstream, dg.AssetsDefinition):
        keys = sorted(upstream.keys, key=lambda k: k.to_user_string())
        if len(keys) != 1:
            listed = ", ".join(k.to_user_string() for k in keys)
            msg = f"asset {name!r}: upstream defines {len(keys)} assets ({listed}); pass the key of the one to score"
            raise ValueError(msg)
        return keys[0]
    return dg.AssetKey.from_coercible(upstream)


def _metadata(scored: ScoredFrame[Any], partition: str | None) -> dict[str, Any]:
    """The Parquet scoring asset's materialization metadata, for a frame."""
    return {
        **scoring_metadata(
            scored.version,
            rows_in=scored.rows,
            rows_out=scored.rows,
            seconds=scored.seconds,
            chunks=scored.chunks,
            summaries={partition: scored.summary},
        ),
        "score_summary": dg.MetadataValue.md(scored.summary.as_markdown()),
    }
