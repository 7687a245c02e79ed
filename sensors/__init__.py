"""Promotion sensors, partition schedules and backfill requests (built in a later issue)."""
