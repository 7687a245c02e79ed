"""Promotion sensors, partition schedules and the MLflow webhook receiver."""

from ml_assets.sensors.promotion import PromotionCursor, build_model_promotion_sensor
from ml_assets.sensors.schedules import build_partition_schedule

__all__ = ["PromotionCursor", "build_model_promotion_sensor", "build_partition_schedule"]
