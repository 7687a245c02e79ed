"""``ml_assets.sensors``: the Dagster promotion sensor and partition schedule (public names: ``ml_assets``)."""

from ml_assets.sensors.promotion import PromotionCursor, build_model_promotion_sensor
from ml_assets.sensors.schedules import build_partition_schedule

__all__ = ["PromotionCursor", "build_model_promotion_sensor", "build_partition_schedule"]
