"""dagster-ml-assets: score registered models over partitioned Parquet in Dagster."""
