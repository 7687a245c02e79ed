"""The asset factory: a partitioned Dagster asset that scores one dataset partition per partition key,
with model-aware asset checks and, optionally, a challenger model scored in the same pass."""

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import dagster as dg
from dagster import AssetExecutionContext

# Not exported by name; an evaluation yielded by the op must point at its partition's materialization.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from ml_assets.checks import (
    DEFAULT_CHECKS,
    CheckOutcome,
    CheckSettings,
    DriftReference,
    budget_exceeded,
    check_signature,
    evaluate_checks,
)
from ml_assets.dagster.models import model_asset_key, model_observation, observed_model_version
from ml_assets.dagster.plots import score_histogram
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource, RayEngineResource
from ml_assets.datasets import ParquetDataset, PartitionReader
from ml_assets.openlineage import LineageRun, ScoringLineage, run_id_for
from ml_assets.quarantine import OnRowError, error_budget
from ml_assets.reconcile import NumericStrings
from ml_assets.resources.core.errors import ErrorBudgetExceededError, MlAssetsError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.predictions import score_columns
from ml_assets.scoring import Challenger, NullPolicy, Progress, ScoringResult, score_partition
from ml_assets.sensors.promotion import MODEL_NAME_TAG, MODEL_VERSION_TAG
from ml_assets.summary import ScoreSummary

_NO_PARTITION = "_"


def dataset_asset_key(dataset: ParquetDataset | str) -> dg.AssetKey:
    """The external asset standing for an input dataset: ``datasets/<last folder of its URI>``
    (``s3://lake/transactions`` -> ``datasets/transactions``; a template's placeholders are cut off)."""
    uri = dataset.uri if isinstance(dataset, ParquetDataset) else dataset
    head = uri.split("{", 1)[0].rstrip("/")
    name = head.rsplit("/", 1)[-1].removesuffix(".parquet") or "input"
    return dg.AssetKey(["datasets", re.sub(r"[^A-Za-z0-9_]", "_", name)])


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
    chunk_rows: int | None = None,
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
    input_asset: dg.AssetKey | str | None = None,
    automation_condition: dg.AutomationCondition | None = None,
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
        input_asset: the key of the input dataset in the graph (default ``dataset_asset_key``): an
            upstream external asset, so lineage shows what was scored. The model ref is upstream
            too, as ``model_asset_key(model)`` (see ``build_model_asset``); each partition records
            the model version as its input's data version, so Dagster marks partitions scored
            with another version stale.
        automation_condition: e.g. ``rescore_on_new_model_version([model_asset_key(model)])`` to
            re-score by Declarative Automation instead of (or beside) the promotion sensor.
        on_row_error / max_error_rate / max_error_rows: see ``score_partition``. With ``quarantine`` the
            materialization records the quarantined rows (count, rate, top reasons, errors location) and
            a ``row_errors`` check warns when there are some, and fails with the run over the budget.
    """
    quarantine = error_budget(on_row_error, max_error_rate=max_error_rate, max_error_rows=max_error_rows) is not None
    source = _as_dataset(input_dataset, partition_column)
    dest = _as_dataset(output_dataset, partition_column)
    prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix or [])
    main_key = dg.AssetKey([*prefix, name])
    model_key = model_asset_key(model)
    input_key = dg.AssetKey.from_user_string(input_asset) if isinstance(input_asset, str) else input_asset
    upstream = [*(deps or []), input_key or dataset_asset_key(source)]
    main_deps = [*upstream, model_key]
    specs = [_spec(main_key, model, source, dest, description, tags, group_name, main_deps, automation_condition)]
    challenger_key = None
    challenger_dest = None
    if challenger is not None:
        if challenger_output is None:
            msg = f"asset {name!r}: a challenger ({challenger}) needs challenger_output, where its scores go"
            raise ValueError(msg)
        challenger_dest = _as_dataset(challenger_output, partition_column)
        challenger_key = dg.AssetKey([*prefix, challenger_name or f"{name}_challenger"])
        specs.append(
            _spec(
                challenger_key,
                challenger,
                source,
                challenger_dest,
                None,
                tags,
                group_name,
                [*upstream, model_asset_key(challenger)],
                automation_condition,
            )
        )
    check_specs = []
    if checks is not None:
        # Partitioned like the asset, so each evaluation names its partition (the UI's per-partition
        # check status); Dagster marks partitioned check specs as a preview.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=dg.PreviewWarning)
            check_specs = [
                dg.AssetCheckSpec(
                    "signature",
                    asset=main_key,
                    blocking=True,
                    description="Input fits the model's inputs.",
                    partitions_def=partitions_def,
                ),
                dg.AssetCheckSpec(
                    "prediction_health",
                    asset=main_key,
                    description="No null/NaN or out-of-range scores.",
                    partitions_def=partitions_def,
                ),
                dg.AssetCheckSpec(
                    "score_drift",
                    asset=main_key,
                    description="PSI/KS vs previous partition and version.",
                    partitions_def=partitions_def,
                ),
            ]
            if quarantine:
                check_specs.append(
                    dg.AssetCheckSpec(
                        "row_errors",
                        asset=main_key,
                        description="Rows quarantined, within the budget.",
                        partitions_def=partitions_def,
                    )
                )
            if challenger_key is not None:
                check_specs.append(
                    dg.AssetCheckSpec(
                        "champion_challenger",
                        asset=challenger_key,
                        description="Agreement with champion.",
                        partitions_def=partitions_def,
                    )
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
            yield from _observe_model(context, model_key, version)
            scorer = service.load(version)
            contenders = []
            if challenger is not None and challenger_dest is not None:
                challenger_version = service.resolve(challenger)
                context.log.info(f"challenger {challenger} resolves to {challenger_version.describe()}")
                yield from _observe_model(context, model_asset_key(challenger), challenger_version)
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
                        if dg.AssetCheckKey(main_key, "signature") in context.selected_asset_check_keys:
                            yield _check_evaluation(context, main_key, outcome, partition, blocking=True)
                        where = source.describe(partition)
                        msg = f"{where}: the input does not fit {version.describe()}: {outcome.description}"
                        raise dg.Failure(description=msg, allow_retries=False)
            references = _reference_histograms(context, main_key, partitions_def, partitions, version.version)
            lineage = ScoringLineage(
                source,
                dest,
                version,
                input_schema=scorer.input_schema,
                output_schema=scorer.output_schema,
                extra_outputs=[challenger_dest] if challenger_dest is not None else (),
            )
            lineage_run = LineageRun.begin(main_key.to_user_string(), lineage, run_id=run_id_for(context.run_id))
            try:
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
            except BaseException as exc:
                lineage_run.fail(exc)
                raise
            rows = {dest.uri: sum(r.rows_out for r in results)}
            if challenger_dest is not None:
                rows[challenger_dest.uri] = rows[dest.uri]
            lineage_run.complete(rows)
        except ErrorBudgetExceededError as exc:
            if checks is not None and dg.AssetCheckKey(main_key, "row_errors") in context.selected_asset_check_keys:
                # The error names the partition over its budget; the run's partitions share the failure.
                for partition in partitions:
                    yield _check_evaluation(context, main_key, budget_exceeded(str(exc)), partition, blocking=False)
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        except MlAssetsError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        partitioned = partitions_def is not None
        references = _with_this_runs_partitions(context, partitions_def, references, results)
        yield _materialization(context, main_key, results, references, partitioned=partitioned, scorer=scorer)
        if challenger_key is not None:
            challenged = [r.challengers[0] for r in results]
            yield _materialization(
                context,
                challenger_key,
                challenged,
                {},
                partitioned=partitioned,
                champion=results,
                scorer=contenders[0].scorer,
            )
        if checks is not None:
            classes = getattr(scorer, "classes", None)
            selected = context.selected_asset_check_keys
            for r in results:
                outcomes = evaluate_checks(
                    r, settings=checks, references=references.get(r.partition, ()), classes=classes
                )
                for outcome in outcomes:
                    key = challenger_key if outcome.name == "champion_challenger" else main_key
                    assert key is not None
                    if dg.AssetCheckKey(key, outcome.name) in selected:
                        blocking = outcome.name == "signature"
                        yield _check_evaluation(context, key, outcome, r.partition, blocking=blocking)
            # The evaluations above carry the results; the check outputs only complete the step.
            for output_name, spec in context.assets_def.check_specs_by_output_name.items():
                if spec.key in selected:
                    yield dg.Output(None, output_name=output_name)

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
    automation_condition: dg.AutomationCondition | None,
) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=key,
        description=description or f"Scores {source.uri} with {model} into {dest.uri}.",
        # output_dataset/partition_column: the promotion sensor reads the committed outputs' lineage.
        metadata={
            "model_ref": model,
            "input_dataset": source.uri,
            "output_dataset": dest.uri,
            "partition_column": dest.partition_column or "",
        },
        tags=dict(tags or {}),
        kinds={"parquet", "python"},
        group_name=group_name,
        deps=deps,
        automation_condition=automation_condition,
    )


def _observe_model(context: AssetExecutionContext, key: dg.AssetKey, version: ModelVersion) -> Iterator[Any]:
    """Record the resolved version on the model asset when Dagster has not observed it yet.

    The step read its inputs' data versions when it started; it forgets the model's so that this
    run's partitions record the version they were really scored with (not a stale observation).
    """
    if observed_model_version(context.instance, key) == version.version:
        return
    yield model_observation(key, version)
    context.get_step_execution_context().wipe_input_asset_version_info(key)


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


def _partition_metadata(result: ScoringResult, reference: DriftReference | None) -> dict[str, Any]:
    """What one partition's materialization records beside the model lineage: its own counts, speed,
    output, score summary and histogram."""
    metadata = scoring_metadata(
        result.version,
        rows_in=result.rows_in,
        rows_out=result.rows_out,
        seconds=result.seconds,
        chunks=result.chunks,
        summaries={result.partition: result.summary},
    )
    metadata["output"] = dg.MetadataValue.path(result.output_uri)
    metadata["score_summary"] = dg.MetadataValue.md(result.summary.as_markdown())
    metadata["chunk_rows"] = dg.MetadataValue.int(result.chunk_rows)
    if result.reader:
        metadata["reader"] = dg.MetadataValue.text(result.reader)
    report = result.row_errors
    if report is not None:
        rate = report.rows / result.rows_in if result.rows_in else 0.0
        metadata["row_errors"] = dg.MetadataValue.int(report.rows)
        metadata["row_error_rate"] = dg.MetadataValue.float(round(rate, 6))
        metadata["row_error_budget"] = dg.MetadataValue.text(report.budget.describe())
        metadata["row_error_top_reasons"] = dg.MetadataValue.json(list(report.top_reasons)[:5])
        metadata["errors"] = dg.MetadataValue.path(report.uri)
    columns = score_columns(result.prediction_schema) if result.prediction_schema is not None else []
    summary = result.summary.as_dict()
    for column in columns:
        stats = summary.get(column)
        if not isinstance(stats, dict):
            continue
        # One score column (binary, regression): plain names; multiclass: one per class.
        suffix = "" if len(columns) == 1 else f"[{column}]"
        if stats.get("mean") is not None:
            metadata[f"score_mean{suffix}"] = dg.MetadataValue.float(round(float(stats["mean"]), 6))
        table = score_histogram(column, stats, reference)
        if table is not None:
            metadata[f"score_histogram{suffix}"] = table
    return metadata


def _materialization(
    context: AssetExecutionContext,
    key: dg.AssetKey,
    results: list[ScoringResult],
    references: Mapping[str | None, Sequence[DriftReference]],
    *,
    partitioned: bool,
    champion: list[ScoringResult] | None = None,
    scorer: Any = None,
) -> dg.MaterializeResult:
    """One materialization per partition, each with its own metadata, also for a ranged run: the
    run-wide result carries what is the same for all (the model's lineage), and each partition's
    counts, output and summary go to that partition only (``add_asset_metadata(partition_key=...)``)."""
    version = results[0].version
    shared: dict[str, Any] = {k: dg.MetadataValue.text(v) for k, v in version.lineage().items()}
    note = getattr(scorer, "output_note", "")
    if note:  # how the runtime's outputs map to the prediction contract (e.g. a documented fallback)
        shared["prediction_outputs"] = dg.MetadataValue.text(note)
    champions = champion or [None] * len(results)
    for result, champion_result in zip(results, champions, strict=True):
        found = references.get(result.partition, ())
        # The plot shows the previous version when there is one, else the previous partition.
        reference = next((r for r in found if r.kind == "previous_version"), found[0] if found else None)
        metadata = _partition_metadata(result, reference)
        if champion_result is not None:
            metadata.update(_comparison_metadata(champion_result))
        if partitioned:
            context.add_asset_metadata(metadata, asset_key=key, partition_key=result.partition)
        else:
            shared.update(metadata)
    return dg.MaterializeResult(
        asset_key=key,
        metadata=shared,
        data_version=dg.DataVersion(f"{version.name}/{version.version}"),
        tags={MODEL_NAME_TAG: version.name, MODEL_VERSION_TAG: version.version},
    )


def _comparison_metadata(champion: ScoringResult) -> dict[str, Any]:
    comparison = champion.comparisons[0]
    metadata: dict[str, Any] = {"champion_version": dg.MetadataValue.text(champion.version.version)}
    if comparison.agreement is not None:
        metadata["agreement_with_champion"] = dg.MetadataValue.float(comparison.agreement)
    if comparison.mean_abs_diff is not None:
        metadata["mean_abs_diff_from_champion"] = dg.MetadataValue.float(comparison.mean_abs_diff)
    return metadata


def _check_evaluation(
    context: AssetExecutionContext,
    key: dg.AssetKey,
    outcome: CheckOutcome,
    partition: str | None,
    *,
    blocking: bool,
) -> dg.AssetCheckEvaluation:
    """The evaluation of one check on one partition, naming it (also in a ranged run) and pointing at
    that partition's latest materialization."""
    metadata: dict[str, Any] = {"description": outcome.description}
    if partition is not None:
        metadata["partition"] = partition
    for name, value in outcome.metrics.items():
        if value is not None:
            metadata[name] = value if isinstance(value, (int, float, str)) else str(value)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]) if partition is not None else key, limit=1
    ).records
    target = None
    if records:
        target = AssetCheckEvaluationTargetMaterializationData(
            run_id=records[0].run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp
        )
    return dg.AssetCheckEvaluation(
        asset_key=key,
        check_name=outcome.name,
        passed=outcome.passed,
        metadata=metadata,
        target_materialization_data=target,
        severity=dg.AssetCheckSeverity.ERROR if outcome.severity == "error" else dg.AssetCheckSeverity.WARN,
        description=outcome.description,
        blocking=blocking,
        partition=partition,
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


def _with_this_runs_partitions(
    context: AssetExecutionContext,
    partitions_def: dg.PartitionsDefinition | None,
    references: dict[str | None, list[DriftReference]],
    results: list[ScoringResult],
) -> dict[str | None, list[DriftReference]]:
    """In a ranged run, a partition's previous partition is the one this run just scored, not what an
    earlier run stored for it."""
    if partitions_def is None or len(results) < 2:
        return references
    keys = partitions_def.get_partition_keys(dynamic_partitions_store=context.instance)
    order = {k: i for i, k in enumerate(keys)}
    scored = {r.partition: r for r in results}
    updated = dict(references)
    for result in results:
        index = order.get(result.partition or "")
        previous = keys[index - 1] if index else None
        if previous in scored:
            fresh = DriftReference.from_summary("previous_partition", previous, scored[previous].summary.as_dict())
            others = [r for r in references.get(result.partition, []) if r.kind != "previous_partition"]
            updated[result.partition] = [fresh, *others]
    return updated


def _stored_summary(materialization: dg.AssetMaterialization, partition: str | None) -> Any:
    """The partition's ``ScoreSummary.as_dict()`` from ``score_stats`` (kept per partition, for ranged runs)."""
    stats = materialization.metadata.get("score_stats")
    by_partition = stats.value if stats is not None and isinstance(stats.value, dict) else {}
    return by_partition.get(partition or _NO_PARTITION)
