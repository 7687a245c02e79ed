"""The Airflow provider of dagster-ml-assets (Airflow >= 3.0): the same scoring core as the Dagster layer.

- ``ModelRegistryHook`` and the ``ml_assets_registry`` connection type: registry + runtime settings
  -> ``ModelService``.
- ``ScorePartitionOperator``: score one partition (templated, mappable), lineage in the output.
- ``StalePartitionsOperator``: the partitions another model version scored, from the outputs' lineage.
- ``ModelPromotionSensor`` / ``ModelPromotionTrigger``: wait for an alias or stage to move.
- ``ModelPromotionEventTrigger``: for ``AssetWatcher``, so a promotion schedules the re-scoring DAG.

Airflow finds this provider through the ``apache_airflow_provider`` entry point
(``airflow providers list``). Names load on first use, so ``get_provider_info`` imports no Airflow.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ModelRegistryHook": "ml_assets.airflow.hooks",
    "ScorePartitionOperator": "ml_assets.airflow.operators",
    "StalePartitionsOperator": "ml_assets.airflow.operators",
    "ModelPromotionSensor": "ml_assets.airflow.sensors",
    "ModelPromotionTrigger": "ml_assets.airflow.triggers",
    "ModelPromotionEventTrigger": "ml_assets.airflow.triggers",
}

__all__ = [
    "ModelPromotionEventTrigger",
    "ModelPromotionSensor",
    "ModelPromotionTrigger",
    "ModelRegistryHook",
    "ScorePartitionOperator",
    "StalePartitionsOperator",
    "get_provider_info",
]

if TYPE_CHECKING:
    from ml_assets.airflow.hooks import ModelRegistryHook
    from ml_assets.airflow.operators import ScorePartitionOperator, StalePartitionsOperator
    from ml_assets.airflow.sensors import ModelPromotionSensor
    from ml_assets.airflow.triggers import ModelPromotionEventTrigger, ModelPromotionTrigger

DISTRIBUTION = "dagster-ml-assets"
_INTEGRATION = "ML model scoring (ml-assets)"


def get_provider_info() -> dict[str, Any]:
    """What ``airflow providers list`` shows and where Airflow finds the hook's connection type."""
    try:
        versions = [version(DISTRIBUTION)]
    except PackageNotFoundError:  # running from a source tree that was never installed
        versions = []
    return {
        "package-name": DISTRIBUTION,
        "name": "ML model scoring (dagster-ml-assets)",
        "description": "Score registered ML models (MLflow, file, HTTP registries; ONNX, PMML, H2O MOJO, "
        "pyfunc, remote runtimes) over partitioned Parquet, with lineage, and re-score on promotion.",
        "versions": versions,
        "integrations": [{"integration-name": _INTEGRATION, "tags": ["software"]}],
        "operators": [
            {"integration-name": _INTEGRATION, "python-modules": ["ml_assets.airflow.operators"]},
        ],
        "sensors": [{"integration-name": _INTEGRATION, "python-modules": ["ml_assets.airflow.sensors"]}],
        "hooks": [{"integration-name": _INTEGRATION, "python-modules": ["ml_assets.airflow.hooks"]}],
        "triggers": [{"integration-name": _INTEGRATION, "python-modules": ["ml_assets.airflow.triggers"]}],
        "connection-types": [
            {
                "hook-class-name": "ml_assets.airflow.hooks.ModelRegistryHook",
                "hook-name": "ML model registry (ml-assets)",
                "connection-type": "ml_assets_registry",
            }
        ],
    }


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'ml_assets.airflow' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
