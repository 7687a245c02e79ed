"""Score each new partition as it lands."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg

REASON_TAG = "ml_assets/reason"


def input_partition_exists(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a partition folder or file is there, on local disk or any fsspec URL."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **dict(storage_options or {}))
    return bool(fs.exists(path))


def build_partition_schedule(
    *,
    name: str,
    target: dg.AssetKey | str | dg.AssetsDefinition,
    partitions_def: dg.TimeWindowPartitionsDefinition,
    input_partition_uri: Callable[[str], str],
    storage_options: Mapping[str, Any] | None = None,
    cron_schedule: str | None = None,
    execution_timezone: str | None = None,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """At each tick, score the newest complete partition, or skip saying its input is not there yet.

    Args:
        partitions_def: the scoring asset's time partitions (daily, hourly, ...).
        input_partition_uri: partition key -> where its input lives (e.g. a ``ParquetDataset``'s
            ``partition_uri``).
        cron_schedule: default: the partitions' own cadence (daily: midnight).
    """
    if isinstance(target, dg.AssetsDefinition):
        key = target.key
    else:
        key = dg.AssetKey.from_user_string(target) if isinstance(target, str) else target

    @dg.schedule(
        name=name,
        cron_schedule=cron_schedule or partitions_def.get_cron_schedule(),
        execution_timezone=execution_timezone or partitions_def.timezone,
        target=[key],
        default_status=default_status,
        description=f"Scores the newest partition of {key.to_user_string()} once its input has landed.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        complete = partitions_def.get_partition_keys(current_time=context.scheduled_execution_time)
        if not complete:
            return dg.SkipReason("no complete partition yet")
        partition = complete[-1]
        uri = input_partition_uri(partition)
        if not input_partition_exists(uri, storage_options):
            return dg.SkipReason(f"input partition {partition} is not there yet ({uri}); nothing scored")
        return dg.RunRequest(
            run_key=f"{name}:{partition}",
            partition_key=partition,
            tags={REASON_TAG: f"new partition {partition}"},
        )

    return _schedule
