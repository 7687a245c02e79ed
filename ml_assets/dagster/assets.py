"""The asset factory: a partitioned Dagster asset that scores one dataset partition per partition key,
with model-aware asset checks and, optionally, a challenger model scored in the same pass."""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import dagster as dg
from dagster import AssetExecutionContext

from ml_assets.checks import (
    DEFAULT_CHECKS,
    CheckOutcome,
    CheckSettings,
    DriftReference,
    budget_exceeded,
    check_signature,
    evaluate_checks,
    worst,
)
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource, RayEngineResource
from ml_assets.datasets import ParquetDataset, PartitionReader
from ml_assets.quarantine import OnRowError, error_budget
from ml_assets.reconcile import NumericStrings
from ml_assets.resources.core.errors import ErrorBudgetExceededError, MlAssetsError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.scoring import DEFAULT_CHUNK_ROWS, Challenger, NullPolicy, Progress, ScoringResult, score_partition
from ml_assets.sensors.promotion import MODEL_NAME_TAG, MODEL_VERSION_TAG
from ml_assets.summary import ScoreSummary

_NO_PARTITION = "_"


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
    numeric_strings: NumericStrings = "error",
    version_column: str | None = None,
    checks: CheckSettings | None = DEFAULT_CHECKS,
    challenger: str | None = None,
    challenger_output: ParquetDataset | str | None = None,
    challenger_name: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    deps: Sequence[dg.AssetKey | str | dg.AssetsDefinition] | None = None,
    backfill_policy: dg.BackfillPolicy | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    registry_key: str = "model_registry",
    runtime_key: str = "model_runtime",
    engine: Literal["local", "ray"] = "local",
    engine_key: str = "ray_engine",
    pool: str | None = None,
    on_row_error: OnRowError = "fail",
    max_error_rate: float | None = None,
    max_error_rows: int | None = None,
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
        chunk_rows / passthrough / nulls / numeric_strings / version_column: see ``score_partition``.
        checks: asset checks (signature, blocking; prediction health; score drift; and with a
            challenger, champion/challenger agreement) with their thresholds; None for none.
        challenger: a second ref (``models:/fraud@challenger``) scored in the same pass over the
            input into ``challenger_output``, as a second asset (``challenger_name``, default
            ``<name>_challenger``).
        registry_key / runtime_key: resource keys of a ``ModelRegistryResource`` and a
            ``ModelRuntimeResource``.
        engine: ``local`` scores in the run's process; ``ray`` scores each partition on the Ray
            cluster of the ``RayEngineResource`` under ``engine_key`` (the version stays pinned).
        pool: Dagster concurrency pool of the asset: with a pool limit on the instance, a backfill
            (e.g. ``BackfillPolicy.multi_run(max_partitions_per_run=N)``) never runs more than that
            many scoring steps at once, so it cannot overload a model server or a cluster.
        on_row_error / max_error_rate / max_error_rows: see ``score_partition``. With ``quarantine`` the
            materialization records the quarantined rows (count, rate, top reasons, errors location) and
            a ``row_errors`` check warns when there are some, and fails with the run over the budget.
    """
    quarantine = error_budget(on_row_error, max_error_rate=max_error_rate, max_error_rows=max_error_rows) is not None
    source = _as_dataset(input_dataset, partition_column)
    dest = _as_dataset(output_dataset, partition_column)
    prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix or [])
    main_key = dg.AssetKey([*prefix, name])
    specs = [_spec(main_key, model, source, dest, description, tags, group_name, deps)]
    challenger_key = None
    challenger_dest = None
    if challenger is not None:
        if challenger_output is None:
            msg = f"asset {name!r}: a challenger ({challenger}) needs challenger_output, where its scores go"
            raise ValueError(msg)
        challenger_dest = _as_dataset(challenger_output, partition_column)
        challenger_key = dg.AssetKey([*prefix, challenger_name or f"{name}_challenger"])
        specs.append(_spec(challenger_key, challenger, source, challenger_dest, None, tags, group_name, deps))
    check_specs = []
    if checks is not None:
        check_specs = [
            dg.AssetCheckSpec("signature", asset=main_key, blocking=True, description="Input fits the model's inputs."),
            dg.AssetCheckSpec("prediction_health", asset=main_key, description="No null/NaN or out-of-range scores."),
            dg.AssetCheckSpec("score_drift", asset=main_key, description="PSI/KS vs previous partition and version."),
        ]
        if quarantine:
            check_specs.append(
                dg.AssetCheckSpec("row_errors", asset=main_key, description="Rows quarantined, within the budget.")
            )
        if challenger_key is not None:
            check_specs.append(
                dg.AssetCheckSpec("champion_challenger", asset=challenger_key, description="Agreement with champion.")
            )

    @dg.multi_asset(
        name=name,
        specs=specs,
        check_specs=check_specs,
        partitions_def=partitions_def,
        backfill_policy=backfill_policy,
        required_resource_keys={registry_key, runtime_key, *([engine_key] if engine == "ray" else [])},
        pool=pool,
    )
    def _score(context: AssetExecutionContext) -> Iterator[Any]:
        registry: ModelRegistryResource = getattr(context.resources, registry_key)
        runtime: ModelRuntimeResource = getattr(context.resources, runtime_key)
        if partitions_def is None:
            partitions: list[str | None] = [None]
        elif context.has_partition_key_range:
            partitions = list(context.partition_keys)
        else:
            partitions = [context.partition_key]
        service = runtime.service(registry)
        ray_engine = None
        if engine == "ray":
            engine_resource: RayEngineResource = getattr(context.resources, engine_key)
            ray_engine = engine_resource.engine(registry, runtime)
        try:
            version = service.resolve(model)
            context.log.info(f"{model} resolves to {version.describe()} ({version.format})")
            scorer = service.load(version)
            contenders = []
            if challenger is not None and challenger_dest is not None:
                challenger_version = service.resolve(challenger)
                context.log.info(f"challenger {challenger} resolves to {challenger_version.describe()}")
                challenger_scorer = service.load(challenger_version)
                contenders.append(Challenger(challenger_scorer, challenger_version, challenger_dest))
            if checks is not None:
                # Blocking: every partition's input is checked before any output is written.
                for partition in partitions:
                    # Quarantine sets rows with nulls aside one by one: they do not block the partition.
                    outcome = check_signature(
                        PartitionReader(source, partition),
                        scorer.input_schema,
                        nulls="pass" if quarantine else nulls,
                        numeric_strings=numeric_strings,
                    )
                    if not outcome.passed:
                        yield _check_result(main_key, outcome, {"partition": partition})
                        where = source.describe(partition)
                        msg = f"{where}: the input does not fit {version.describe()}: {outcome.description}"
                        raise dg.Failure(description=msg, allow_retries=False)
            references = _reference_histograms(context, main_key, partitions_def, partitions, version.version)
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
                    numeric_strings=numeric_strings,
                    version_column=version_column,
                    challengers=contenders,
                    on_progress=_progress_logger(context, partition),
                    extra_metadata={"dagster_run_id": context.run_id, "asset": main_key.to_user_string()},
                    engine=ray_engine,
                    on_row_error=on_row_error,
                    max_error_rate=max_error_rate,
                    max_error_rows=max_error_rows,
                )
                for partition in partitions
            ]
        except ErrorBudgetExceededError as exc:
            if checks is not None:
                yield _check_result(main_key, budget_exceeded(str(exc)))
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        except MlAssetsError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        yield _materialization(main_key, results, scorer=scorer)
        if challenger_key is not None:
            challenged = [r.challengers[0] for r in results]
            yield _materialization(challenger_key, challenged, champion=results, scorer=contenders[0].scorer)
        if checks is not None:
            classes = getattr(scorer, "classes", None)
            per_partition = [
                evaluate_checks(r, settings=checks, references=references.get(r.partition, ()), classes=classes)
                for r in results
            ]
            for outcomes in zip(*per_partition, strict=True):
                key = challenger_key if outcomes[0].name == "champion_challenger" else main_key
                yield _check_result(key, worst(outcomes))

    return _score


def _spec(
    key: dg.AssetKey,
    model: str,
    source: ParquetDataset,
    dest: ParquetDataset,
    description: str | None,
    tags: Mapping[str, str] | None,
    group_name: str | None,
    deps: Sequence[Any] | None,
) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=key,
        description=description or f"Scores {source.uri} with {model} into {dest.uri}.",
        metadata={"model_ref": model, "input_dataset": source.uri, "output_dataset": dest.uri},
        tags=dict(tags or {}),
        kinds={"parquet", "python"},
        group_name=group_name,
        deps=deps,
    )


def _progress_logger(context: AssetExecutionContext, partition: str | None) -> Any:
    """Logs at every tenth of the partition, not every chunk."""
    state = {"next": 0.1}

    def log(progress: Progress) -> None:
        done = progress.rows_done / max(progress.rows_total, 1)
        if done >= state["next"]:
            state["next"] = (int(done * 10) + 1) / 10
            context.log.info(f"partition {partition}: {progress.rows_done:,}/{progress.rows_total:,} rows scored")

    return log


def scoring_metadata(
    version: ModelVersion,
    *,
    rows_in: int,
    rows_out: int,
    seconds: float,
    chunks: int,
    summaries: Mapping[str | None, ScoreSummary],
) -> dict[str, Any]:
    """What every scoring materialization records: the model's lineage, counts, speed, score stats."""
    return {
        **{k: dg.MetadataValue.text(v) for k, v in version.lineage().items()},
        "rows_in": dg.MetadataValue.int(rows_in),
        "rows_out": dg.MetadataValue.int(rows_out),
        "dagster/row_count": dg.MetadataValue.int(rows_out),
        "seconds": dg.MetadataValue.float(round(seconds, 3)),
        "rows_per_second": dg.MetadataValue.float(round(rows_out / seconds if seconds else 0.0, 1)),
        "chunks": dg.MetadataValue.int(chunks),
        # Per partition, so drift checks of later runs find this partition's histogram.
        "score_stats": dg.MetadataValue.json({p or _NO_PARTITION: s.as_dict() for p, s in summaries.items()}),
    }


def _materialization(
    key: dg.AssetKey, results: list[ScoringResult], champion: list[ScoringResult] | None = None, *, scorer: Any = None
) -> dg.MaterializeResult:
    first = results[0]
    version = first.version
    metadata = scoring_metadata(
        version,
        rows_in=sum(r.rows_in for r in results),
        rows_out=sum(r.rows_out for r in results),
        seconds=sum(r.seconds for r in results),
        chunks=sum(r.chunks for r in results),
        summaries={r.partition: r.summary for r in results},
    )
    note = getattr(scorer, "output_note", "")
    if note:  # how the runtime's outputs map to the prediction contract (e.g. a documented fallback)
        metadata["prediction_outputs"] = dg.MetadataValue.text(note)
    if first.reader:
        metadata["reader"] = dg.MetadataValue.text(first.reader)
    if len(results) == 1:
        metadata["output"] = dg.MetadataValue.path(first.output_uri)
        metadata["score_summary"] = dg.MetadataValue.md(first.summary.as_markdown())
    else:
        metadata["outputs"] = dg.MetadataValue.json({r.partition: r.output_uri for r in results})
        metadata["score_summary"] = dg.MetadataValue.md(
            "\n\n".join(f"**{r.partition}**\n\n{r.summary.as_markdown()}" for r in results)
        )
    reports = [r.row_errors for r in results if r.row_errors is not None]
    if reports:
        rows_in = sum(r.rows_in for r in results)
        quarantined = sum(r.rows for r in reports)
        metadata["row_errors"] = dg.MetadataValue.int(quarantined)
        metadata["row_error_rate"] = dg.MetadataValue.float(round(quarantined / rows_in if rows_in else 0.0, 6))
        metadata["row_error_budget"] = dg.MetadataValue.text(reports[0].budget.describe())
        metadata["row_error_top_reasons"] = dg.MetadataValue.json([r for rep in reports for r in rep.top_reasons][:5])
        if len(reports) == 1:
            metadata["errors"] = dg.MetadataValue.path(reports[0].uri)
        else:
            metadata["errors"] = dg.MetadataValue.json({r.partition: r.row_errors.uri for r in results if r.row_errors})
    if champion is not None:
        comparisons = [r.comparisons[0] for r in champion]
        metadata["champion_version"] = dg.MetadataValue.text(champion[0].version.version)
        agreement = [c.agreement for c in comparisons if c.agreement is not None]
        diffs = [c.mean_abs_diff for c in comparisons if c.mean_abs_diff is not None]
        if agreement:
            metadata["agreement_with_champion"] = dg.MetadataValue.float(min(agreement))
        if diffs:
            metadata["mean_abs_diff_from_champion"] = dg.MetadataValue.float(max(diffs))
    return dg.MaterializeResult(
        asset_key=key,
        metadata=metadata,
        data_version=dg.DataVersion(f"{version.name}/{version.version}"),
        tags={MODEL_NAME_TAG: version.name, MODEL_VERSION_TAG: version.version},
    )


def _check_result(
    key: dg.AssetKey, outcome: CheckOutcome, extra: Mapping[str, Any] | None = None
) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {"description": outcome.description}
    for name, value in {**outcome.metrics, **(extra or {})}.items():
        if value is not None:
            metadata[name] = value if isinstance(value, (int, float, str)) else str(value)
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=outcome.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR if outcome.severity == "error" else dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=outcome.description,
    )


def _reference_histograms(
    context: AssetExecutionContext,
    key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
    partitions: list[str | None],
    version: str,
) -> dict[str | None, list[DriftReference]]:
    """Per partition: the stored score summary of the previous partition and of the previous model version.

    Read before this run writes anything, from the materializations the asset already recorded.
    """
    instance = context.instance
    keys = partitions_def.get_partition_keys(dynamic_partitions_store=instance) if partitions_def else []
    references: dict[str | None, list[DriftReference]] = {}
    for partition in partitions:
        found: list[DriftReference] = []
        if partition is not None and partition in keys and keys.index(partition) > 0:
            previous = keys[keys.index(partition) - 1]
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[previous]), limit=1
            ).records
            if records:
                stats = _stored_summary(records[0].asset_materialization, previous)
                found.append(DriftReference.from_summary("previous_partition", previous, stats))
        filter_ = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]) if partition else key
        for record in instance.fetch_materializations(filter_, limit=20).records:
            materialization = record.asset_materialization
            other = (materialization.tags or {}).get(MODEL_VERSION_TAG)
            if other and other != version:
                stats = _stored_summary(materialization, partition)
                found.append(DriftReference.from_summary("previous_version", other, stats))
                break
        references[partition] = found
    return references


def _stored_summary(materialization: dg.AssetMaterialization, partition: str | None) -> Any:
    """The partition's ``ScoreSummary.as_dict()`` from ``score_stats`` (kept per partition, for ranged runs)."""
    stats = materialization.metadata.get("score_stats")
    by_partition = stats.value if stats is not None and isinstance(stats.value, dict) else {}
    return by_partition.get(partition or _NO_PARTITION)
