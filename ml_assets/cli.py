"""``ml-assets``: score from the shell with the same core the Dagster asset uses; seed the demo."""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ml_assets.resources.core.errors import MissingDependencyError, MlAssetsError, PluginNotFoundError
from ml_assets.resources.core.signals import Interrupted, interrupt_on_signals
from ml_assets.service import SECRET_OPTIONS


def _key_values(items: tuple[str, ...], param_hint: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values that parse as JSON are decoded (numbers, lists, objects)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=param_hint)
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


class _Commands(click.Group):
    """Every command runs with SIGTERM handled like Ctrl-C: children stopped, temporary files removed,
    exit code 128 + the signal's number."""

    def invoke(self, ctx: click.Context) -> Any:
        with interrupt_on_signals():
            try:
                return super().invoke(ctx)
            except Interrupted as exc:
                click.echo(f"{exc}; stopped cleanly", err=True)
                ctx.exit(exc.exit_code)


@click.group(cls=_Commands)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Score registered ML models over partitioned Parquet datasets."""
    if ctx.invoked_subcommand != "score":
        _start_up_over()  # score says when: after the model is loaded


def _start_up_over() -> None:
    """Collections resume (``run`` stops them during start-up), and never again walk what start-up made:
    the imported modules and the loaded model live until exit. A no-op where collections ran all along
    (``main`` called from Python, as tests do)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


@main.command()
@click.argument("model_ref")
@click.argument("input_uri")
@click.argument("output_uri")
@click.option("--partition", "partition", metavar="KEY=VALUE", help="Score one hive partition, e.g. date=2026-11-01.")
# ml_assets.scoring's chunk sizes (DEFAULT_CHUNK_ROWS, LARGE_CHUNK_ROWS, MANY_CHUNKS, CHUNK_BYTES, MAX_CHUNK_ROWS),
# spelled out because importing it costs start-up; a test holds them equal.
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1, max=16_777_216),
    help=(
        "Rows per chunk [default: 65,536 (131,072 from ~8.4M rows), fewer for wide inputs: at most 64 MiB of "
        "input columns per chunk]."
    ),
)
@click.option("--passthrough", metavar="COL,...", help="Input columns copied to the output.")
# ml_assets.datasets' ReaderChoice and OutputCompression, spelled out for the same reason; a test holds them equal.
@click.option(
    "--reader",
    type=click.Choice(["auto", "polars", "pyarrow"]),
    default="auto",
    show_default=True,
    help="Parquet decoder of the input (auto: Polars where it can serve and the partition is large; README).",
)
@click.option(
    "--compression",
    type=click.Choice(["zstd", "lz4", "snappy", "none"]),
    default="zstd",
    show_default=True,
    help="Codec of the output's columns (integers stay uncompressed): zstd at level -1, or fewer CPU seconds "
    "for more bytes (docs/outputs.md).",
)
@click.option("--registry", "registry_kind", default="mlflow", show_default=True, help="Registry name.")
@click.option("--registry-uri", help="Registry location, e.g. sqlite:///mlflow.db (default: MLFLOW_TRACKING_URI).")
@click.option("--runtime", help="Force a runtime (default: from the model's format).")
@click.option(
    "--option",
    "runtime_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Runtime option (repeatable); JSON values are decoded, e.g. url=http://127.0.0.1:5001 or max_in_flight=4.",
)
@click.option(
    "--registry-option", "registry_options", multiple=True, metavar="KEY=VALUE", help="Registry option (repeatable)."
)
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads per model instance.")
@click.option("--features", metavar="COL,...", help="Feature columns when the registry records no signature.")
@click.option("--outputs", metavar="COL,...", help="Prediction columns to keep (default: all).")
@click.option("--nulls", type=click.Choice(["error", "pass"]), default="error", show_default=True)
@click.option(
    "--numeric-strings",
    type=click.Choice(["error", "parse"]),
    default="error",
    show_default=True,
    help="parse: text columns feed numeric model inputs (text that is not a number is an error naming its row).",
)
@click.option("--version-column", help="Add a column holding the model version.")
@click.option(
    "--on-row-error",
    type=click.Choice(["fail", "quarantine"]),
    default="fail",
    show_default=True,
    help="quarantine: rows that cannot be scored go to <output root>_errors (committed first), within the budget.",
)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), help="Error budget: at most this fraction of rows.")
@click.option("--max-error-rows", type=click.IntRange(min=0), help="Error budget: at most this many rows.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: read and score on Ray actors (extra: ray); the output is still committed here, atomically.",
)
@click.option("--ray-address", help="Ray cluster to join (auto, ray://head:10001); default: start a local Ray.")
@click.option("--actors", default="1,2", show_default=True, metavar="MIN,MAX", help="Ray actor pool size.")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option(
    "--verify-model", metavar="key:PEM | certificate:PEM[,PEM]",
    help="Refuse the model unless its files carry a model-signing signature (model.sig) by this public key, "
    "or by a certificate chaining to these CA certificates (extra: trust).",
)  # fmt: skip
@click.option(
    "--scan-pickles", is_flag=True, help="Refuse pickle files (.pkl, .joblib, ...) that call dangerous globals."
)
@click.option(
    "--pipes",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Report the materialization to Dagster Pipes (auto: when launched by a Pipes client). "
    "Under Pipes, --partition KEY (no value) takes the run's partition key.",
)
def score(pipes: str, partition: str | None, engine: str, **params: Any) -> None:
    """Score INPUT_URI (a Parquet dataset) with MODEL_REF and write OUTPUT_URI."""
    with _pipes_session(pipes) as session:
        if session is not None:
            partition = _pipes_partition(partition, session)
        result = _score(partition=partition, engine=engine, **params)
        version = result.version
        click.echo(
            f"model {version.name} version {version.version} ({version.uri})\n"
            f"rows: {result.rows_out:,}\nseconds: {result.seconds:.2f}\n"
            f"rows/s: {result.rows_per_second:,.0f}\nreader: {result.reader}\noutput: {result.output_uri}"
        )
        errors = result.row_errors
        if errors is not None:
            click.echo(
                f"row errors: {errors.rows:,} ({errors.rate:.3%}, {errors.budget.describe()})\nerrors: {errors.uri}"
            )
            for reason in errors.top_reasons:
                click.echo(f"  {reason}")
        if session is not None:
            session.report_asset_materialization(
                metadata={
                    **{k: {"raw_value": v, "type": "text"} for k, v in version.lineage().items() if v is not None},
                    "rows_in": {"raw_value": result.rows_in, "type": "int"},
                    "rows_out": {"raw_value": result.rows_out, "type": "int"},
                    "dagster/row_count": {"raw_value": result.rows_out, "type": "int"},
                    "seconds": {"raw_value": round(result.seconds, 3), "type": "float"},
                    "rows_per_second": {"raw_value": round(result.rows_per_second, 1), "type": "float"},
                    "chunks": {"raw_value": result.chunks, "type": "int"},
                    "chunk_rows": {"raw_value": result.chunk_rows, "type": "int"},
                    "output": {"raw_value": result.output_uri, "type": "path"},
                    "engine": {"raw_value": engine, "type": "text"},
                    **_row_error_metadata(result),
                },
                data_version=f"{version.name}/{version.version}",
            )


def _row_error_metadata(result: Any) -> dict[str, Any]:
    """The quarantine's numbers as Pipes metadata (none without quarantine)."""
    if result.row_errors is None:
        return {}
    values = result.row_errors.metadata()
    kinds = {"row_errors": "int", "row_errors_allowed": "int", "row_error_rate": "float", "errors_uri": "path"}
    return {
        k: {"raw_value": v, "type": kinds.get(k, "json" if isinstance(v, (list, dict)) else "text")}
        for k, v in values.items()
    }


def _pipes_session(mode: str) -> Any:
    """``open_dagster_pipes()`` when launched by a Pipes client (or ``--pipes on``); else no session."""
    import contextlib

    if mode == "off" or (mode == "auto" and "DAGSTER_PIPES_CONTEXT" not in os.environ):
        return contextlib.nullcontext(None)
    try:
        from dagster_pipes import open_dagster_pipes
    except ModuleNotFoundError as exc:
        msg = "reporting to Dagster Pipes needs the package 'dagster-pipes': pip install 'dagster-ml-assets[pipes]'"
        raise MissingDependencyError(msg) from exc
    return open_dagster_pipes()


def _pipes_partition(partition: str | None, session: Any) -> str | None:
    if partition is None or "=" in partition:
        return partition
    key = session.partition_key if session.is_partition_step else None
    if key is None:
        raise click.BadParameter(
            f"{partition!r} takes the run's partition key, and this run has none", param_hint="--partition"
        )
    return f"{partition}={key}"


def _score(
    *,
    model_ref: str,
    input_uri: str,
    output_uri: str,
    partition: str | None,
    chunk_rows: int | None,
    passthrough: str | None,
    reader: str,
    compression: str,
    registry_kind: str,
    registry_uri: str | None,
    runtime: str | None,
    runtime_options: tuple[str, ...],
    registry_options: tuple[str, ...],
    threads: int | None,
    features: str | None,
    outputs: str | None,
    nulls: str,
    numeric_strings: str,
    version_column: str | None,
    on_row_error: str,
    max_error_rate: float | None,
    max_error_rows: int | None,
    quiet: bool,
    engine: str,
    ray_address: str | None,
    actors: str,
    cpus_per_actor: float,
    verify_model: str | None,
    scan_pickles: bool,
) -> Any:
    from ml_assets.datasets import ParquetDataset
    from ml_assets.quarantine import error_budget
    from ml_assets.scoring import score_partition
    from ml_assets.service import ModelService

    try:
        error_budget(on_row_error, max_error_rate=max_error_rate, max_error_rows=max_error_rows)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if on_row_error == "quarantine" and engine == "ray":
        raise click.UsageError(
            "--on-row-error quarantine scores in this process; it does not combine with --engine ray"
        )

    column, value = None, None
    if partition:
        column, sep, value = partition.partition("=")
        if not sep or not column or not value:
            raise click.BadParameter(f"expected KEY=VALUE, got {partition!r}", param_hint="--partition")
    options = _key_values(runtime_options, "--option")
    if threads:
        options["threads"] = threads
    if features:
        options["features"] = _split(features)
    if outputs:
        options["outputs"] = _split(outputs)
    secrets = {k: os.environ.get(f"ML_ASSETS_{k.upper()}") for k in SECRET_OPTIONS}
    parsed_registry_options = _key_values(registry_options, "--registry-option")
    trust = _trust_policy(verify_model, scan_pickles)
    try:
        service = ModelService.from_uri(
            registry_kind, registry_uri, registry_options=parsed_registry_options, runtime=runtime, secrets=secrets,
            trust=trust,
        )  # fmt: skip
        version = service.resolve(model_ref)
        click.echo(f"{model_ref} -> {version.describe()} ({version.format}, {version.uri})", err=True)
        service.runtime_options[service.runtime_for(version)] = options
        ray_engine = None
        if engine == "ray":
            from ml_assets.ray_engine import ModelServiceConfig, RayEngine

            models = ModelServiceConfig(
                registry=registry_kind,
                uri=registry_uri,
                registry_options=parsed_registry_options,
                runtime=runtime,
                runtime_options=service.runtime_options,
                secrets=secrets,
                trust=trust,
            )
            low, _, high = actors.partition(",")
            try:
                ray_engine = RayEngine(
                    models=models,
                    address=ray_address,
                    min_actors=int(low),
                    max_actors=int(high or low),
                    cpus_per_actor=cpus_per_actor,
                )
            except ValueError as exc:
                raise click.BadParameter(
                    f"expected MIN,MAX or N actors, got {actors!r}: {exc}", param_hint="--actors"
                ) from None
        with service:
            scorer = service.load(version)
            source = ParquetDataset(input_uri, partition_column=column, reader=reader)
            dest = ParquetDataset(output_uri, partition_column=column, compression=compression)
            # OpenLineage START/COMPLETE/FAIL, only when a transport is configured (OPENLINEAGE_URL, ...).
            from ml_assets.openlineage import LineageRun, ScoringLineage

            lineage = ScoringLineage(
                source, dest, version, input_schema=scorer.input_schema, output_schema=scorer.output_schema
            )
            lineage_run = LineageRun.begin(f"ml-assets.score.{version.name}", lineage)
            with _progress_bar(quiet) as show:
                _start_up_over()
                try:
                    result = score_partition(
                        scorer,
                        version,
                        source,
                        dest,
                        partition=value,
                        chunk_rows=chunk_rows,
                        passthrough=_split(passthrough),
                        nulls=nulls,  # type: ignore[arg-type]
                        numeric_strings=numeric_strings,  # type: ignore[arg-type]
                        version_column=version_column,
                        on_progress=show,
                        engine=ray_engine,
                        on_row_error=on_row_error,  # type: ignore[arg-type]
                        max_error_rate=max_error_rate,
                        max_error_rows=max_error_rows,
                    )
                except BaseException as exc:
                    lineage_run.fail(exc)
                    raise
                lineage_run.complete({dest.uri: result.rows_out})
    except PluginNotFoundError as exc:
        raise click.UsageError(str(exc)) from exc
    except MlAssetsError as exc:
        raise click.ClickException(str(exc)) from exc
    return result


@contextmanager
def _progress_bar(quiet: bool) -> Iterator[Callable[[Any], None] | None]:
    """A progress callback that draws a bar on stderr; None when quiet (and tqdm is not imported: ~10 ms)."""
    if quiet:
        yield None
        return
    from tqdm import tqdm

    # delay: no empty bar before the first chunk tells the total
    with tqdm(total=0, unit="row", unit_scale=True, file=sys.stderr, delay=0.3) as bar:

        def show(progress: Any) -> None:
            bar.total = progress.rows_total
            bar.update(progress.rows_done - bar.n)

        yield show


def _trust_policy(verify_model: str | None, scan_pickles: bool) -> Any:
    from ml_assets.resources.core.trust import TrustPolicy

    options: dict[str, Any] = {"pickles": "scan" if scan_pickles else "off"}
    if verify_model:
        mode, _, files = verify_model.partition(":")
        if mode not in ("key", "certificate") or not files:
            raise click.BadParameter(
                f"expected key:PEM or certificate:PEM[,PEM], got {verify_model!r}", param_hint="--verify-model"
            )
        options["signatures"] = mode
        options["public_key" if mode == "key" else "certificate_chain"] = files if mode == "key" else _split(files)
    try:
        return TrustPolicy.from_options(options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--verify-model") from None


@main.command()
@click.option("--root", type=click.Path(file_okay=False), help="Where to put the demo (default: ./.demo).")
@click.option("--days", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--rows-per-day", type=click.IntRange(min=1), default=1_000_000, show_default=True)
def demo(root: str | None, days: int, rows_per_day: int) -> None:
    """Seed the embedded demo: a SQLite MLflow registry with an ONNX model and daily Parquet data."""
    from pathlib import Path

    from ml_assets.dev.demo import demo_dates, seed_demo

    paths = seed_demo(Path(root).resolve() if root else None, days=days, rows_per_day=rows_per_day, log=click.echo)
    click.echo(
        f"demo ready in {paths.root}\n"
        f"  registry: {paths.tracking_uri}\n  data: {paths.transactions} (dates {', '.join(demo_dates(days))})\n"
        f"score a day:\n  ml-assets score models:/fraud@champion {paths.transactions} {paths.scores} "
        f"--partition date={demo_dates(days)[0]} --passthrough transaction_id,customer_id "
        f"--registry-uri {paths.tracking_uri}"
    )


# -- models: list, inspect and promote in any registry -------------------------------------------


def _registry_options(fn: Any) -> Any:
    fn = click.option(
        "--option",
        "registry_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Registry option (repeatable); JSON values are decoded, e.g. token_env=TOKEN or "
        'storage_options=\'{"endpoint_url": "http://127.0.0.1:9000"}\'.',
    )(fn)
    fn = click.option(
        "--registry-uri",
        help="Registry location: MLflow tracking URI, registry folder/URL, or HTTP index URL.",
    )(fn)
    return click.option("--registry", "registry_kind", default="mlflow", show_default=True, help="Registry name.")(fn)


def _signing_options(fn: Any) -> Any:
    fn = click.option("--sign-chain", multiple=True, type=click.Path(exists=True, dir_okay=False),
                      help="Certificates between the signing certificate and the root (repeatable).")(fn)  # fmt: skip
    fn = click.option("--sign-certificate", type=click.Path(exists=True, dir_okay=False),
                      help="Sign with this certificate (and --sign-key, its private key).")(fn)  # fmt: skip
    return click.option("--sign-key", type=click.Path(exists=True, dir_okay=False),
                        help="Sign with this EC private key (PEM): writes model.sig among the files.")(fn)  # fmt: skip


def _open_registry(kind: str, uri: str | None, raw_options: tuple[str, ...]) -> Any:
    from ml_assets.resources.core.plugins import create_registry

    return create_registry(kind, uri, **_key_values(raw_options, "--option"))


def _version_line(v: Any) -> str:
    created = v.created_at.isoformat(timespec="seconds") if v.created_at else "-"
    return "\t".join([v.version, v.format, ",".join(v.aliases) or "-", v.stage or "-", created, v.checksum or "-"])


@main.group()
def models() -> None:
    """List, inspect and promote models in any registry (mlflow, file, http, ...)."""


@models.command("list")
@_registry_options
def models_list(registry_kind: str, registry_uri: str | None, registry_options: tuple[str, ...]) -> None:
    """The registry's model names, one per line."""
    try:
        for name in _open_registry(registry_kind, registry_uri, registry_options).list_models():
            click.echo(name)
    except MlAssetsError as exc:
        raise click.ClickException(str(exc)) from exc


@models.command("versions")
@click.argument("name")
@_registry_options
def models_versions(name: str, registry_kind: str, registry_uri: str | None, registry_options: tuple[str, ...]) -> None:
    """NAME's versions: version, format, aliases, stage, created, checksum (tab-separated)."""
    try:
        versions = _open_registry(registry_kind, registry_uri, registry_options).list_versions(name)
    except MlAssetsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("version\tformat\taliases\tstage\tcreated\tchecksum")
    for version in versions:
        click.echo(_version_line(version))


@models.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", help="Point this alias at VERSION.")
@click.option("--stage", help="Move VERSION into this stage (the previous holder is archived).")
@_registry_options
def models_promote(
    name: str,
    version: str,
    alias: str | None,
    stage: str | None,
    registry_kind: str,
    registry_uri: str | None,
    registry_options: tuple[str, ...],
) -> None:
    """Move an alias and/or a stage to VERSION of NAME; promotion sensors pick it up."""
    if alias is None and stage is None:
        raise click.UsageError("give --alias, --stage or both")
    try:
        registry = _open_registry(registry_kind, registry_uri, registry_options)
        if not hasattr(registry, "promote"):
            raise click.ClickException(f"the {registry_kind!r} registry cannot promote models")
        promoted = registry.promote(name, version, alias=alias, stage=stage)
    except MlAssetsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(_version_line(promoted))


@models.command("publish")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True))
@click.option("--format", "model_format", help="Model format (default: detected from the files).")
@click.option("--inputs", metavar="COL:TYPE,...", help="Input signature, e.g. amount:float,hour:int32.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Free-form tag (repeatable).")
@click.option("--alias", help="Point this alias at the new version.")
@click.option("--stage", help="Move the new version into this stage.")
@click.option(
    "--follow-symlinks", is_flag=True,
    help="Copy what symbolic links in PATH point to (refused by default: a link may point anywhere).",
)  # fmt: skip
@_signing_options
@_registry_options
def models_publish(
    name: str,
    path: str,
    model_format: str | None,
    inputs: str | None,
    tags: tuple[str, ...],
    alias: str | None,
    stage: str | None,
    follow_symlinks: bool,
    sign_key: str | None,
    sign_certificate: str | None,
    sign_chain: tuple[str, ...],
    registry_kind: str,
    registry_uri: str | None,
    registry_options: tuple[str, ...],
) -> None:
    """Publish PATH (a model file or folder) as a new version of NAME in a file registry; with
    --sign-key, signed (model.sig, OpenSSF model-signing) as it is registered."""
    import tempfile
    from pathlib import Path

    signature = None
    if inputs:
        pairs = [item.partition(":") for item in _split(inputs)]
        signature = {"inputs": [{"name": c, "type": t or "double"} for c, _, t in pairs]}
    try:
        registry = _open_registry(registry_kind, registry_uri, registry_options)
        if not hasattr(registry, "publish"):
            raise click.ClickException(f"the {registry_kind!r} registry does not publish models; use its own tools")
        symlinks = "copy_content" if follow_symlinks else "refuse"
        with tempfile.TemporaryDirectory(prefix="ml-assets-sign-") as staging:
            source, model_file = Path(path), None
            if sign_key:
                source, model_file = _signed_copy(
                    Path(path), Path(staging), key=sign_key, certificate=sign_certificate, chain=sign_chain,
                    symlinks=symlinks,
                )  # fmt: skip
            published = registry.publish(
                name, source, format=model_format, signature=signature, tags=dict(t.partition("=")[::2] for t in tags),
                symlinks=symlinks, model_file=model_file,
            )  # fmt: skip
        if alias or stage:
            published = registry.promote(name, published.version, alias=alias, stage=stage)
    except MlAssetsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(_version_line(published))


def _signed_copy(
    source: Any, staging: Any, *, key: str, certificate: str | None, chain: tuple[str, ...], symlinks: str
) -> tuple[Any, str | None]:
    """A copy of ``source`` in ``staging``, signed; and the model file's name when ``source`` is one file."""
    import shutil

    from ml_assets.resources.core.trust import sign_model

    folder = staging / "model"
    if source.is_symlink() and symlinks == "refuse":
        raise click.ClickException(f"cannot publish {source}: it is a symbolic link; pass --follow-symlinks")
    if source.is_dir():
        links = [p for p in source.rglob("*") if p.is_symlink()]
        if links and symlinks == "refuse":
            raise click.ClickException(
                f"cannot publish {source}: {links[0]} is a symbolic link; pass --follow-symlinks"
            )
        shutil.copytree(source, folder, symlinks=False)
        model_file = None
    else:
        folder.mkdir()
        shutil.copyfile(source, folder / source.name)
        model_file = source.name
    sign_model(folder, private_key=key, certificate=certificate, certificate_chain=chain)
    return folder, model_file


@models.command("sign")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="EC private key (PEM).")
@click.option("--certificate", type=click.Path(exists=True, dir_okay=False), help="Signing certificate (PEM).")
@click.option("--chain", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Chain certificates.")
def models_sign(folder: str, key: str, certificate: str | None, chain: tuple[str, ...]) -> None:
    """Sign the model in FOLDER (writes FOLDER/model.sig), e.g. before logging it to MLflow."""
    from ml_assets.resources.core.trust import sign_model

    try:
        written = sign_model(folder, private_key=key, certificate=certificate, certificate_chain=chain)
    except MlAssetsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"signed: {written}")


@main.group()
def registry() -> None:
    """Run a registry."""


@registry.command("serve")
@click.argument("root")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True)
@click.option("--token-env", metavar="VAR", help="Require the bearer token held by this environment variable.")
def registry_serve(root: str, host: str, port: int, token_env: str | None) -> None:
    """Serve the file registry at ROOT read-only over HTTP, for the 'http' registry."""
    import os

    from ml_assets.resources.registries.file import FileRegistry
    from ml_assets.resources.registries.server import RegistryServer

    token = None
    if token_env:
        if token_env not in os.environ:
            raise click.BadParameter(f"environment variable {token_env!r} is not set", param_hint="--token-env")
        token = os.environ[token_env]
    server = RegistryServer(FileRegistry(root), host=host, port=port, token=token)
    click.echo(f"serving {server.registry.location} at {server.url}index.json", err=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


@main.group()
def services() -> None:
    """The full MLflow environment on loopback (see ml_assets/services.py)."""


@services.command("up")
@click.option("--workdir", type=click.Path(file_okay=False), default=".services", show_default=True)
@click.option("--mlflow-port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--s3-port", type=click.IntRange(1, 65535), default=9000, show_default=True)
@click.option("--bucket", default="mlflow", show_default=True)
@click.option("--database", help="Database name (default: a fresh ml_assets_<random>); recreated empty, kept after.")
def services_up(workdir: str, mlflow_port: int, s3_port: int, bucket: str, database: str | None) -> None:
    """mlflow server (PostgreSQL backend, s3:// artifacts) and an S3 server (moto), until Ctrl-C or SIGTERM."""
    import time
    from pathlib import Path

    from ml_assets.dev.services import running_services

    try:
        with running_services(
            workdir=Path(workdir).resolve(), mlflow_port=mlflow_port, s3_port=s3_port, bucket=bucket,
            database=database, keep_database=True,
        ) as env:  # fmt: skip
            click.echo(
                f"mlflow server {env.tracking_uri} (backend: PostgreSQL database {env.database}); "
                f"artifacts {env.artifact_root} on {env.s3_endpoint_url}\n"
                f"export MLFLOW_TRACKING_URI={env.tracking_uri}\n"
                f"export MLFLOW_S3_ENDPOINT_URL={env.s3_endpoint_url}\n"
                "# and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as in this shell (moto accepts any)\n"
                "Ctrl-C (or SIGTERM) stops everything."
            )
            while True:
                time.sleep(1)
    except MlAssetsError as exc:
        raise click.ClickException(str(exc)) from exc


@main.group()
def webhook() -> None:
    """Receive MLflow webhooks so promotion sensors react in seconds."""


@webhook.command("serve")
@click.option("--inbox", required=True, type=click.Path(file_okay=False), help="The sensor's webhook_inbox folder.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8787, show_default=True)
@click.option(
    "--secret-env", default="MLFLOW_WEBHOOK_SECRET", show_default=True, help="Variable holding the webhook's secret."
)
@click.option(
    "--header-timeout", type=click.FloatRange(min=0.1, max=600), default=10.0, show_default=True,
    help="Seconds a connection may take to send a complete request head; idle ones are closed.",
)  # fmt: skip
@click.option(
    "--body-timeout", type=click.FloatRange(min=0.1, max=600), default=10.0, show_default=True,
    help="Seconds a request may take to send its body (408 after).",
)  # fmt: skip
def webhook_serve(
    inbox: str, host: str, port: int, secret_env: str, header_timeout: float, body_timeout: float
) -> None:
    """Verify MLflow's HMAC-signed model_version_alias events and hand them to the promotion sensor."""
    import logging
    import os

    from ml_assets.webhooks import serve

    secret = os.environ.get(secret_env, "")
    if not secret:
        raise click.ClickException(f"set {secret_env} to the secret the MLflow webhook was created with")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = serve(inbox, secret, host=host, port=port, header_timeout_s=header_timeout, body_timeout_s=body_timeout)
    click.echo(f"receiving MLflow webhooks on http://{host}:{port}/ into {inbox}; Ctrl-C (or SIGTERM) stops")
    server.serve_forever()


def run() -> None:
    """The ``ml-assets`` console script: ``main`` with no garbage collection during start-up, then an exit
    that skips the interpreter's last collection. Start-up (imports, the registry, the model) makes some
    hundred thousand objects that live until exit, and the collections they set off walk them all to find
    next to nothing to free: ~0.09 CPU-s of a ~0.5 s start-up; ``_start_up_over`` turns collections back on.
    The last collection walks everything to free memory the exiting process gives back anyway: 0.15 s.
    Outputs are committed and files closed before ``main`` returns; nothing waits on that collection.

    numpy's OpenBLAS is loaded with one thread unless ``OPENBLAS_NUM_THREADS`` says otherwise: on load it
    starts a thread per core that spins ~0.1 s before it sleeps (0.1 CPU-s of a ~0.5 s start-up, on the
    other core), and nothing here needs them: chunks are scored in parallel, one thread each, and the
    model runtimes have threads of their own. Workers started from here inherit it, as parallel lanes."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    gc.disable()
    try:
        main()
    finally:
        gc.freeze()  # frozen objects are outside every collection, the one at exit included


if __name__ == "__main__":
    run()
