"""Models in the asset graph: each watched model ref is an observable asset whose data version is the
model version it resolves to, upstream of the assets that score with it.

Dagster's own staleness then says which partitions a promotion left behind: a partition records the
model version it was scored with as the data version of its input, so once the model asset is
observed at another version, exactly the partitions scored with another version show "upstream data
version changed". The promotion sensor observes the model before it requests runs; the scoring asset
observes it too when it resolves a version Dagster has not seen yet; ``build_model_asset`` observes it
on demand (the UI's "Observe sources") or on a cron.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import dagster as dg

from ml_assets.resources.core.models import ModelRef, ModelVersion

__all__ = ["build_model_asset", "model_asset_key", "model_observation", "rescore_on_new_model_version"]

MODEL_NAME_TAG = "ml_assets/model_name"
MODEL_VERSION_TAG = "ml_assets/model_version"
# Dagster's own tags for the data version of an observation (what an ObserveResult records).
_DATA_VERSION_TAG = "dagster/data_version"
_USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def model_asset_key(ref: str) -> dg.AssetKey:
    """``models:/fraud@champion`` -> ``models/fraud/champion``; ``models:/fraud/Production`` ->
    ``models/fraud/Production``; a file or URL -> ``models/<file stem>``."""
    parsed = ModelRef.parse(ref)
    selector = parsed.alias or parsed.stage or parsed.version or ("latest" if parsed.latest else None)
    parts = ["models", parsed.name, *([selector] if selector else [])]
    return dg.AssetKey([_UNSAFE.sub("_", p) for p in parts])


def model_observation(key: dg.AssetKey, version: ModelVersion) -> dg.AssetObservation:
    """An observation of the model asset at ``version`` (its data version is the model version)."""
    return dg.AssetObservation(
        asset_key=key,
        metadata={k: dg.MetadataValue.text(v) for k, v in version.lineage().items()},
        tags={
            _DATA_VERSION_TAG: version.version,
            _USER_PROVIDED_TAG: "true",
            MODEL_NAME_TAG: version.name,
            MODEL_VERSION_TAG: version.version,
        },
    )


def observed_model_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str | None:
    """The data version of the model asset's latest observation, if it was ever observed."""
    records = instance.fetch_observations(key, limit=1).records
    if not records or records[0].asset_observation is None:
        return None
    return (records[0].asset_observation.tags or {}).get(_DATA_VERSION_TAG)


def build_model_asset(
    ref: str,
    *,
    registry_key: str = "model_registry",
    group_name: str | None = None,
    observe_cron: str | None = None,
) -> dg.SourceAsset:
    """The observable asset of ``ref``: observing it resolves the ref in the registry and records the
    version as its data version.

    Args:
        ref: e.g. ``models:/fraud@champion``; the key is ``model_asset_key(ref)``.
        registry_key: resource key of a ``ModelRegistryResource``.
        observe_cron: observe on this cron by Declarative Automation (e.g. ``*/5 * * * *``), so
            ``rescore_on_new_model_version`` sees a promotion without the sensor.
    """
    key = model_asset_key(ref)
    condition = None
    if observe_cron is not None:
        condition = dg.AutomationCondition.cron_tick_passed(observe_cron) & ~dg.AutomationCondition.in_progress()
    # observable_source_asset is marked beta; the warning is for us, not for the user's process.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=dg.BetaWarning)

        @dg.observable_source_asset(
            key=key,
            description=f"The model version {ref} resolves to; its data version is that version.",
            metadata={"model_ref": ref},
            group_name=group_name,
            required_resource_keys={registry_key},
            automation_condition=condition,
            tags={"dagster/kind/model": ""},
        )
        def _observe(context: dg.AssetExecutionContext) -> dg.ObserveResult:
            version: ModelVersion = getattr(context.resources, registry_key).resolve(ref)
            context.log.info(f"{ref} resolves to {version.describe()}")
            return dg.ObserveResult(
                data_version=dg.DataVersion(version.version),
                metadata={k: dg.MetadataValue.text(v) for k, v in version.lineage().items()},
                tags={MODEL_NAME_TAG: version.name, MODEL_VERSION_TAG: version.version},
            )

    return _observe


def rescore_on_new_model_version(model_keys: Sequence[dg.AssetKey]) -> dg.AutomationCondition:
    """Declarative Automation: re-score every materialized partition once one of ``model_keys`` is
    observed at another data version (a promotion or a rollback), one request per partition; a
    partition re-scored since then is not requested again.
    """
    models = dg.AssetSelection.assets(*model_keys)
    model_moved = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).allow(models)
    return (
        model_moved.since_last_handled()
        & ~dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.any_deps_in_progress()
    ).with_label("scored with a previous model version")
