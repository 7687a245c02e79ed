"""``ml-assets``: score from the shell with the same core the Dagster asset uses; seed the demo."""

from __future__ import annotations

import sys
from typing import Any

import click

from resources.errors import MlAssetsError


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


@click.group()
def main() -> None:
    """Score registered ML models over partitioned Parquet datasets."""


@main.command()
@click.argument("model_ref")
@click.argument("input_uri")
@click.argument("output_uri")
@click.option("--partition", "partition", metavar="KEY=VALUE", help="Score one hive partition, e.g. date=2026-11-01.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=65_536, show_default=True)
@click.option("--passthrough", metavar="COL,...", help="Input columns copied to the output.")
@click.option("--registry", "registry_kind", default="mlflow", show_default=True, help="Registry name.")
@click.option("--registry-uri", help="Registry location, e.g. sqlite:///mlflow.db (default: MLFLOW_TRACKING_URI).")
@click.option("--runtime", help="Force a runtime (default: from the model's format).")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads per model instance.")
@click.option("--features", metavar="COL,...", help="Feature columns when the registry records no signature.")
@click.option("--outputs", metavar="COL,...", help="Prediction columns to keep (default: all).")
@click.option("--nulls", type=click.Choice(["error", "pass"]), default="error", show_default=True)
@click.option("--version-column", help="Add a column holding the model version.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score(
    model_ref: str,
    input_uri: str,
    output_uri: str,
    partition: str | None,
    chunk_rows: int,
    passthrough: str | None,
    registry_kind: str,
    registry_uri: str | None,
    runtime: str | None,
    threads: int | None,
    features: str | None,
    outputs: str | None,
    nulls: str,
    version_column: str | None,
    quiet: bool,
) -> None:
    """Score INPUT_URI (a Parquet dataset) with MODEL_REF and write OUTPUT_URI."""
    from tqdm import tqdm

    from ml_assets.datasets import ParquetDataset
    from ml_assets.scoring import score_partition
    from resources.plugins import create_registry, create_runtime

    column, value = None, None
    if partition:
        column, sep, value = partition.partition("=")
        if not sep or not column or not value:
            raise click.BadParameter(f"expected KEY=VALUE, got {partition!r}", param_hint="--partition")
    options: dict[str, Any] = {}
    if threads:
        options["threads"] = threads
    if features:
        options["features"] = _split(features)
    if outputs:
        options["outputs"] = _split(outputs)
    try:
        registry = create_registry(registry_kind, registry_uri)
        version = registry.resolve(model_ref)
        click.echo(f"{model_ref} -> {version.describe()} ({version.format}, {version.uri})", err=True)
        scorer = create_runtime(runtime or version.format, **options).load(version, registry.fetch(version))
        with tqdm(total=0, unit="row", unit_scale=True, disable=quiet, file=sys.stderr) as bar:

            def show(progress: Any) -> None:
                bar.total = progress.rows_total
                bar.update(progress.rows_done - bar.n)

            result = score_partition(
                scorer,
                version,
                ParquetDataset(input_uri, partition_column=column),
                ParquetDataset(output_uri, partition_column=column),
                partition=value,
                chunk_rows=chunk_rows,
                passthrough=_split(passthrough),
                nulls=nulls,  # type: ignore[arg-type]
                version_column=version_column,
                on_progress=show,
            )
        scorer.close()
    except MlAssetsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"model {version.name} version {version.version} ({version.uri})\n"
        f"rows: {result.rows_out:,}\nseconds: {result.seconds:.2f}\n"
        f"rows/s: {result.rows_per_second:,.0f}\noutput: {result.output_uri}"
    )


@main.command()
@click.option("--root", type=click.Path(file_okay=False), help="Where to put the demo (default: ./.demo).")
@click.option("--days", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--rows-per-day", type=click.IntRange(min=1), default=1_000_000, show_default=True)
def demo(root: str | None, days: int, rows_per_day: int) -> None:
    """Seed the embedded demo: a SQLite MLflow registry with an ONNX model and daily Parquet data."""
    from pathlib import Path

    from ml_assets.demo import demo_dates, seed_demo

    paths = seed_demo(Path(root).resolve() if root else None, days=days, rows_per_day=rows_per_day, log=click.echo)
    click.echo(
        f"demo ready in {paths.root}\n"
        f"  registry: {paths.tracking_uri}\n  data: {paths.transactions} (dates {', '.join(demo_dates(days))})\n"
        f"score a day:\n  ml-assets score models:/fraud@champion {paths.transactions} {paths.scores} "
        f"--partition date={demo_dates(days)[0]} --passthrough transaction_id,customer_id "
        f"--registry-uri {paths.tracking_uri}"
    )


if __name__ == "__main__":
    main()
