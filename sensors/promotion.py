"""Re-score when a model version is promoted (an alias or a stage moves, including a rollback).

The sensor polls the registry (``search_model_versions`` cannot filter by alias or stage) and,
optionally, a webhook inbox so a promotion is seen within seconds instead of a polling interval.
The registry stays the source of truth: a webhook event only makes the next tick look now.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import dagster as dg

from ml_assets.dagster.models import MODEL_NAME_TAG, MODEL_VERSION_TAG, model_asset_key, model_observation
from ml_assets.datasets import ParquetDataset
from ml_assets.promotion import Promotion, PromotionCursor, PromotionWatch, stale_partitions
from ml_assets.resources.core.models import ModelVersion

__all__ = ["MODEL_NAME_TAG", "MODEL_VERSION_TAG", "REASON_TAG", "PromotionCursor", "build_model_promotion_sensor"]

RescoreScope = Literal["stale", "materialized", "latest", "window"]
# MODEL_NAME_TAG / MODEL_VERSION_TAG are on every scoring materialization and run, so the sensor finds
# which version produced which partition.
REASON_TAG = "ml_assets/reason"
# Dagster gives a sensor tick 60 s by default; leave room to build and return the result.
DEFAULT_TICK_BUDGET_S = 40.0
_PAGE = 1_000


def build_model_promotion_sensor(
    *,
    name: str,
    watch: Sequence[str],
    target: Sequence[dg.AssetKey | str | dg.AssetsDefinition],
    rescore: RescoreScope = "stale",
    latest_n: int = 7,
    window: tuple[str, str] | None = None,
    registry_key: str = "model_registry",
    minimum_interval_seconds: int = 60,
    webhook_inbox: str | None = None,
    tick_budget_s: float = DEFAULT_TICK_BUDGET_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    outputs: dict[str, ParquetDataset] | None = None,
) -> dg.SensorDefinition:
    """A sensor that requests re-scoring of ``target`` when a watched alias or stage moves.

    Args:
        watch: refs with an alias or a stage, e.g. ``["models:/fraud@champion"]``.
        target: the scoring assets to re-materialize.
        rescore: which partitions: ``stale`` (those whose latest materialization used another
            version, or whose committed output file names another version in its lineage: scores
            written by ``ml-assets score`` or before the Dagster instance existed count too),
            ``materialized`` (all materialized), ``latest`` (the last ``latest_n``
            partition keys), ``window`` (keys from ``window[0]`` to ``window[1]``, inclusive).
        registry_key: resource key of a ``ModelRegistryResource``.
        minimum_interval_seconds: how often the registry is polled. With ``webhook_inbox``,
            ticks come every few seconds and look at the inbox; the registry is still polled at
            this interval as a safety net.
        webhook_inbox: a folder an ``ml-assets webhook serve`` receiver writes verified MLflow
            ``model_version_alias.created`` events to.
        tick_budget_s: a tick that cannot finish its registry calls in this time skips.
        outputs: per target asset key (``"fraud_scores"``), the output dataset whose files'
            lineage ``stale`` reads; default: the ``output_dataset`` recorded on the asset by
            ``build_scoring_asset`` (no storage options: give them here for object stores).

    Each tick that sees a promotion also records an observation of the model asset
    (``model_asset_key``) at the new version before it requests runs, so Dagster's staleness and the
    partitions the runs record agree.
    """
    promotion_watch = PromotionWatch(watch, poll_interval_s=minimum_interval_seconds, webhook_inbox=webhook_inbox)
    if rescore == "window" and window is None:
        msg = "rescore='window' needs window=(first_partition_key, last_partition_key)"
        raise ValueError(msg)
    target_keys = [_asset_key(t) for t in target]
    interval = min(minimum_interval_seconds, 5) if webhook_inbox else minimum_interval_seconds

    @dg.sensor(
        name=name,
        minimum_interval_seconds=interval,
        asset_selection=target_keys,
        required_resource_keys={registry_key},
        default_status=default_status,
        description=f"Re-scores {', '.join(k.to_user_string() for k in target_keys)} when {', '.join(watch)} moves.",
    )
    def _sensor(context: dg.SensorEvaluationContext, **_resources: Any) -> dg.SensorResult:
        # The daemon hands resources over on the context; calling the sensor directly (tests, the
        # UI's "test sensor") also passes them as keyword arguments, taken and ignored here.
        registry = getattr(context.resources, registry_key)
        check = promotion_watch.check(registry.resolve, PromotionCursor.decode(context.cursor), budget_s=tick_budget_s)
        if check.unavailable is not None:
            # No new cursor: the promotion is picked up once the registry answers.
            return dg.SensorResult(skip_reason=f"registry unavailable, nothing requested ({check.unavailable})")
        if check.skip_reason is not None:
            return dg.SensorResult(skip_reason=check.skip_reason)
        promotions, notes, cursor = check.promotions, list(check.notes), check.cursor
        requests = [
            request
            for promotion in promotions
            for key in target_keys
            for request in _run_requests(context, name, key, promotion, rescore, latest_n, window, outputs)
        ]
        for promotion in promotions:
            context.log.info(promotion.reason)
        observations = [model_observation(model_asset_key(p.ref), p.version) for p in promotions]
        if not requests:
            notes.extend(f"{p.reason}; no partition of the targets needs re-scoring" for p in promotions)
            return dg.SensorResult(
                skip_reason="; ".join(notes) or "no promotion", cursor=cursor.encode(), asset_events=observations
            )
        return dg.SensorResult(run_requests=requests, cursor=cursor.encode(), asset_events=observations)

    return _sensor


def _asset_key(target: dg.AssetKey | str | dg.AssetsDefinition) -> dg.AssetKey:
    if isinstance(target, dg.AssetsDefinition):
        return target.key
    return target if isinstance(target, dg.AssetKey) else dg.AssetKey.from_user_string(target)


def _run_requests(
    context: dg.SensorEvaluationContext,
    sensor_name: str,
    key: dg.AssetKey,
    promotion: Promotion,
    rescore: RescoreScope,
    latest_n: int,
    window: tuple[str, str] | None,
    outputs: dict[str, ParquetDataset] | None,
) -> list[dg.RunRequest]:
    version = promotion.version
    tags = {MODEL_NAME_TAG: version.name, MODEL_VERSION_TAG: version.version, REASON_TAG: promotion.reason}
    base_key = f"{sensor_name}:{promotion.ref}:{promotion.sequence}:{version.version}:{key.to_user_string()}"
    assets_def = context.repository_def.assets_defs_by_key[key] if context.repository_def else None
    partitions_def = assets_def.partitions_def if assets_def else None
    if partitions_def is None:
        if rescore == "stale" and _latest_versions(context.instance, key).get(None) == version.version:
            return []
        return [dg.RunRequest(run_key=base_key, asset_selection=[key], tags=tags)]
    output = (outputs or {}).get(key.to_user_string()) or _recorded_output(assets_def, key)
    keys = _partitions(context, key, partitions_def, version, rescore, latest_n, window, output)
    single_run = assets_def is not None and assets_def.backfill_policy == dg.BackfillPolicy.single_run()
    if single_run:
        # One run per contiguous range: one unit in the UI, the model loaded once per range.
        return [
            dg.RunRequest(
                run_key=f"{base_key}:{first}...{last}",
                asset_selection=[key],
                partition_key_range=dg.PartitionKeyRange(first, last),
                tags={**tags, "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
            )
            for first, last in _contiguous_ranges(keys, partitions_def, context)
        ]
    return [
        dg.RunRequest(run_key=f"{base_key}:{pk}", asset_selection=[key], partition_key=pk, tags=tags) for pk in keys
    ]


def _partitions(
    context: dg.SensorEvaluationContext,
    key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition,
    version: ModelVersion,
    rescore: RescoreScope,
    latest_n: int,
    window: tuple[str, str] | None,
    output: ParquetDataset | None,
) -> list[str]:
    all_keys = partitions_def.get_partition_keys(dynamic_partitions_store=context.instance)
    if rescore == "latest":
        return all_keys[-latest_n:]
    if rescore == "window":
        assert window is not None
        return _between(all_keys, window)
    materialized = context.instance.get_materialized_partitions(key)
    if rescore == "materialized":
        return [k for k in all_keys if k in materialized]
    latest = _latest_versions(context.instance, key, expected=len(materialized))
    stale = {k for k in materialized if latest.get(k) != version.version}
    if output is not None:
        # The files say which version wrote them: what `ml-assets score`, another Dagster instance or
        # a run before this instance existed committed is seen too. A partition this instance scored
        # with the new version since then is not stale, whatever an older file said.
        fresh = {k for k in materialized if latest.get(k) == version.version}
        stale |= {k for k in stale_partitions(output, version, partitions=all_keys) if k not in fresh}
    return [k for k in all_keys if k in stale]


def _recorded_output(assets_def: dg.AssetsDefinition | None, key: dg.AssetKey) -> ParquetDataset | None:
    """The output dataset ``build_scoring_asset`` recorded on the asset (local paths and URLs whose
    credentials come from the environment)."""
    metadata = assets_def.metadata_by_key.get(key, {}) if assets_def is not None else {}
    uri = getattr(metadata.get("output_dataset"), "value", metadata.get("output_dataset"))
    if not isinstance(uri, str):
        return None
    column = getattr(metadata.get("partition_column"), "value", metadata.get("partition_column"))
    return ParquetDataset(uri, partition_column=column if isinstance(column, str) and column else None)


def _latest_versions(instance: dg.DagsterInstance, key: dg.AssetKey, expected: int = 1) -> dict[str | None, str | None]:
    """The model version tag of each partition's latest materialization (newest records first)."""
    latest: dict[str | None, str | None] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(key, limit=_PAGE, cursor=cursor)
        for record in page.records:
            materialization = record.asset_materialization
            if materialization is not None and materialization.partition not in latest:
                latest[materialization.partition] = (materialization.tags or {}).get(MODEL_VERSION_TAG)
        if not page.has_more or len(latest) >= expected:
            return latest
        cursor = page.cursor


def _between(keys: list[str], window: tuple[str, str]) -> list[str]:
    """Keys from window[0] to window[1] in the partitions' own order; a bound not among them is an error."""
    missing = [k for k in window if k not in keys]
    if missing:
        msg = f"window bound(s) {missing} are not partition keys (first: {keys[0]!r}, last: {keys[-1]!r})"
        raise ValueError(msg)
    first, last = keys.index(window[0]), keys.index(window[1])
    return keys[first : last + 1]


def _contiguous_ranges(
    keys: list[str], partitions_def: dg.PartitionsDefinition, context: dg.SensorEvaluationContext
) -> list[tuple[str, str]]:
    order = {k: i for i, k in enumerate(partitions_def.get_partition_keys(dynamic_partitions_store=context.instance))}
    ranges: list[tuple[str, str]] = []
    for k in sorted(keys, key=order.__getitem__):
        if ranges and order[k] == order[ranges[-1][1]] + 1:
            ranges[-1] = (ranges[-1][0], k)
        else:
            ranges.append((k, k))
    return ranges
