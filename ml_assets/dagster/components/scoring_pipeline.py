"""A scoring pipeline declared in YAML: the scoring asset, its checks, a challenger, a schedule and a
promotion sensor. The typed fields below ARE the YAML schema; ``build_scoring_asset`` and the sensor
factories do the work, so Python and YAML users get the same thing.

```yaml
type: ml_assets.dagster.components.ScoringPipelineComponent
attributes:
  name: fraud_scores
  model: models:/fraud@champion
  registry: {kind: mlflow, uri: "{{ env.MLFLOW_TRACKING_URI }}"}
  input: {uri: s3://lake/transactions, partition_column: date}
  output: {uri: s3://lake/scores/fraud}
  partitions: {daily: {start_date: "2026-01-01"}}
  passthrough: [transaction_id]
  promotion_sensor: {rescore: stale}
```
"""

from __future__ import annotations

import textwrap
import warnings
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ml_assets import CheckSettings, build_scoring_asset
from ml_assets.dagster.models import build_model_asset, model_asset_key, rescore_on_new_model_version
from ml_assets.dagster.resources import (
    TRUST_DESCRIPTION,
    ModelRegistryResource,
    ModelRuntimeResource,
    RayEngineResource,
)
from ml_assets.datasets import OutputCompression, ParquetDataset, ReaderChoice
from ml_assets.resources.core.models import ModelRef
from ml_assets.sensors import build_model_promotion_sensor, build_partition_schedule


class DatasetConfig(dg.Resolvable, dg.Model):
    uri: str = Field(description="Local path or fsspec URL; a hive root or a template with one {placeholder}.")
    partition_column: str | None = Field(default="date", description="The hive key / template placeholder.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (e.g. s3fs).")
    reader: ReaderChoice = Field(
        default="auto", description="Parquet decoder when read as input (ParquetDataset.reader)."
    )
    compression: OutputCompression = Field(
        default="zstd", description="Codec of the files written when it is an output (ParquetDataset.compression)."
    )

    def dataset(self) -> ParquetDataset:
        return ParquetDataset(
            self.uri,
            partition_column=self.partition_column,
            storage_options=self.storage_options,
            reader=self.reader,
            compression=self.compression,
        )


class RegistryConfig(dg.Resolvable, dg.Model):
    kind: str = Field(default="mlflow", description="ml_assets.registries entry point: mlflow, file, http, ...")
    uri: str | None = Field(default=None, description="Tracking URI, folder or URL of the registry.")
    registry_uri: str | None = None
    cache_dir: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    trust: dict[str, Any] = Field(default_factory=dict, description=TRUST_DESCRIPTION)


class RuntimeConfig(dg.Resolvable, dg.Model):
    runtime: str | None = Field(default=None, description="Force a runtime; default: the model's format.")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Options per runtime name.")


class EngineConfig(dg.Resolvable, dg.Model):
    kind: Literal["local", "ray"] = Field(default="local", description="ray: score each partition on a Ray cluster.")
    address: str | None = Field(default=None, description="Ray cluster (auto, ray://head:10001); None: local Ray.")
    min_actors: int = 1
    max_actors: int = 2
    cpus_per_actor: float = 1.0


class DailyPartitionsConfig(dg.Resolvable, dg.Model):
    start_date: str
    end_date: str | None = None
    timezone: str | None = None


class PartitionsConfig(dg.Resolvable, dg.Model):
    daily: DailyPartitionsConfig | None = None
    static: list[str] | None = None

    def definition(self) -> dg.PartitionsDefinition:
        if (self.daily is None) == (self.static is None):
            msg = "partitions: give exactly one of 'daily' or 'static'"
            raise ValueError(msg)
        if self.daily is not None:
            d = self.daily
            return dg.DailyPartitionsDefinition(start_date=d.start_date, end_date=d.end_date, timezone=d.timezone)
        return dg.StaticPartitionsDefinition(list(self.static or []))


class ChecksConfig(dg.Resolvable, dg.Model):
    max_null_rate: float = 0.0
    psi_threshold: float = 0.2
    ks_threshold: float = 0.1
    drift_severity: Literal["warn", "error"] = "warn"
    min_agreement: float = 0.0
    max_mean_abs_diff: float = 1.0
    # Default: a binary classifier's last class (e.g. probability_1), every class of a multiclass model.
    score_column: str | None = None


# The YAML key is `model`. Pydantic warns that the field shadows Resolvable.model(), a classmethod;
# fields without defaults are not class attributes, so both keep working (the schema test covers it).
# The warning is silenced while these classes are created only, not for the user's process.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "model"', category=UserWarning)

    class ChallengerConfig(dg.Resolvable, dg.Model):
        model: str = Field(description="e.g. models:/fraud@challenger; scored in the same pass as the champion.")
        output: DatasetConfig
        name: str | None = Field(default=None, description="Asset name (default: <name>_challenger).")


class ScheduleConfig(dg.Resolvable, dg.Model):
    cron: str | None = Field(default=None, description="Default: the partitions' cadence (daily: midnight).")
    running: bool = False


class PromotionSensorConfig(dg.Resolvable, dg.Model):
    watch: list[str] | None = Field(default=None, description="Refs to watch; default: the model ref itself.")
    rescore: Literal["stale", "materialized", "latest", "window"] = "stale"
    latest_n: int = 7
    window: list[str] | None = Field(default=None, description="[first, last] partition keys for 'window'.")
    interval_seconds: int = 60
    webhook_inbox: str | None = None
    running: bool = False


class DeclarativeAutomationConfig(dg.Resolvable, dg.Model):
    observe_cron: str = Field(
        default="*/5 * * * *", description="How often Declarative Automation observes the model refs."
    )


class ScoringPipelineScaffolder(dg.Scaffolder):
    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(
            textwrap.dedent(f"""\
                type: {request.type_name}
                attributes:
                  name: scores
                  model: models:/my_model@champion
                  registry:
                    kind: mlflow
                    uri: "{{{{ env.MLFLOW_TRACKING_URI }}}}"
                  input:
                    uri: data/input
                    partition_column: date
                  output:
                    uri: data/scores
                  partitions:
                    daily:
                      start_date: "2026-01-01"
                  passthrough: [id]
                  checks:
                    drift_severity: warn
                  promotion_sensor:
                    rescore: stale
                """)
        )


# See ChallengerConfig for why.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "model"', category=UserWarning)

    @dg.scaffold_with(ScoringPipelineScaffolder)
    class ScoringPipelineComponent(dg.Component, dg.Resolvable, dg.Model):
        """Scores partitioned Parquet with a registered model: checks, challenger, schedule, re-scoring on promotion."""

        name: str = Field(description="Asset name.")
        model: str = Field(description="Model ref, e.g. models:/fraud@champion.")
        input: DatasetConfig
        output: DatasetConfig
        registry: RegistryConfig = Field(default_factory=RegistryConfig)
        runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
        partitions: PartitionsConfig | None = None
        chunk_rows: int | None = Field(
            default=None, description="Rows per chunk (default 65,536, fewer for wide inputs: see score_partition)."
        )
        passthrough: list[str] = Field(default_factory=list)
        nulls: Literal["error", "pass"] = "error"
        on_row_error: Literal["fail", "quarantine"] = Field(
            default="fail", description="quarantine: rows that cannot be scored go to <output root>_errors."
        )
        max_error_rate: float | None = Field(default=None, description="Error budget: at most this fraction of rows.")
        max_error_rows: int | None = Field(default=None, description="Error budget: at most this many rows.")
        numeric_strings: Literal["error", "parse"] = Field(
            default="error", description="parse: text columns feed numeric model inputs (see README, Schema rules)."
        )
        version_column: str | None = None
        checks: ChecksConfig | None = Field(default_factory=ChecksConfig, description="null: no asset checks.")
        challenger: ChallengerConfig | None = None
        schedule: ScheduleConfig | None = None
        promotion_sensor: PromotionSensorConfig | None = None
        group_name: str | None = None
        key_prefix: list[str] | None = None
        single_run_backfills: bool = Field(default=True, description="A backfill loads the model once for its range.")
        max_partitions_per_run: int | None = Field(
            default=None, description="Backfills as runs of at most this many partitions (BackfillPolicy.multi_run)."
        )
        pool: str | None = Field(default=None, description="Dagster concurrency pool limiting scoring steps at once.")
        engine: EngineConfig = Field(default_factory=EngineConfig, description="Where partitions are scored.")
        model_assets: Literal["observable", "external"] = Field(
            default="observable",
            description="observable: define the model refs' observable assets here; external: another "
            "pipeline of the code location defines them (two definitions of one key are an error).",
        )
        input_asset: str | None = Field(
            default=None, description="Asset key of the input dataset (default: datasets/<last folder of input.uri>)."
        )
        declarative_automation: DeclarativeAutomationConfig | None = Field(
            default=None,
            description="Re-score stale partitions by Declarative Automation (rescore_on_new_model_version); "
            "the model refs are observed on observe_cron.",
        )

        def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
            registry_key, runtime_key = f"{self.name}_model_registry", f"{self.name}_model_runtime"
            engine_key = f"{self.name}_ray_engine"
            partitions_def = self.partitions.definition() if self.partitions else None
            checks = None if self.checks is None else CheckSettings(**self.checks.model_dump())
            refs = [self.model, *([self.challenger.model] if self.challenger else [])]
            automation = self.declarative_automation
            condition = rescore_on_new_model_version([model_asset_key(r) for r in refs]) if automation else None
            asset = build_scoring_asset(
                name=self.name,
                model=self.model,
                input_dataset=self.input.dataset(),
                output_dataset=self.output.dataset(),
                partitions_def=partitions_def,
                partition_column=self.input.partition_column,
                chunk_rows=self.chunk_rows,
                passthrough=self.passthrough,
                nulls=self.nulls,
                numeric_strings=self.numeric_strings,
                version_column=self.version_column,
                checks=checks,
                challenger=self.challenger.model if self.challenger else None,
                challenger_output=self.challenger.output.dataset() if self.challenger else None,
                challenger_name=self.challenger.name if self.challenger else None,
                key_prefix=self.key_prefix,
                group_name=self.group_name,
                backfill_policy=self._backfill_policy(partitions_def),
                registry_key=registry_key,
                runtime_key=runtime_key,
                engine=self.engine.kind,
                engine_key=engine_key,
                pool=self.pool,
                input_asset=self.input_asset,
                automation_condition=condition,
                on_row_error=self.on_row_error,
                max_error_rate=self.max_error_rate,
                max_error_rows=self.max_error_rows,
            )
            model_assets = []
            if self.model_assets == "observable":
                cron = automation.observe_cron if automation else None
                model_assets = [
                    build_model_asset(r, registry_key=registry_key, group_name=self.group_name, observe_cron=cron)
                    for r in dict.fromkeys(refs)
                ]
            main_key = next(iter(asset.keys_by_output_name.values())) if asset.keys else None
            sensors, schedules = [], []
            if self.promotion_sensor is not None:
                config = self.promotion_sensor
                ref = ModelRef.parse(self.model)
                watch = config.watch or ([self.model] if ref.alias or ref.stage else [])
                if not watch:
                    msg = f"{self.name}: promotion_sensor needs 'watch' refs: {self.model} names no alias or stage"
                    raise ValueError(msg)
                sensors.append(
                    build_model_promotion_sensor(
                        name=f"{self.name}_promotion",
                        watch=watch,
                        target=[main_key],
                        rescore=config.rescore,
                        latest_n=config.latest_n,
                        window=(config.window[0], config.window[1]) if config.window else None,
                        registry_key=registry_key,
                        minimum_interval_seconds=config.interval_seconds,
                        webhook_inbox=config.webhook_inbox,
                        default_status=dg.DefaultSensorStatus.RUNNING
                        if config.running
                        else dg.DefaultSensorStatus.STOPPED,
                        outputs={main_key.to_user_string(): self.output.dataset()},
                    )
                )
            if self.schedule is not None:
                if not isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
                    msg = f"{self.name}: a schedule needs time partitions (partitions.daily)"
                    raise ValueError(msg)
                schedules.append(
                    build_partition_schedule(
                        name=f"{self.name}_schedule",
                        target=main_key,
                        partitions_def=partitions_def,
                        input_partition_uri=self.input.dataset().partition_uri,
                        storage_options=self.input.storage_options,
                        cron_schedule=self.schedule.cron,
                        default_status=dg.DefaultScheduleStatus.RUNNING
                        if self.schedule.running
                        else dg.DefaultScheduleStatus.STOPPED,
                    )
                )
            registry = self.registry
            return dg.Definitions(
                assets=[*model_assets, asset],
                sensors=sensors,
                schedules=schedules,
                resources={
                    registry_key: ModelRegistryResource(
                        kind=registry.kind,
                        uri=registry.uri,
                        registry_uri=registry.registry_uri,
                        cache_dir=registry.cache_dir,
                        options=registry.options,
                        trust=registry.trust,
                    ),
                    runtime_key: ModelRuntimeResource(runtime=self.runtime.runtime, options=self.runtime.options),
                    **({engine_key: self._ray_engine()} if self.engine.kind == "ray" else {}),
                },
            )

        def _backfill_policy(self, partitions_def: dg.PartitionsDefinition | None) -> dg.BackfillPolicy | None:
            if partitions_def is None:
                return None
            if self.max_partitions_per_run is not None:
                return dg.BackfillPolicy.multi_run(max_partitions_per_run=self.max_partitions_per_run)
            return dg.BackfillPolicy.single_run() if self.single_run_backfills else None

        def _ray_engine(self) -> RayEngineResource:
            e = self.engine
            return RayEngineResource(
                address=e.address, min_actors=e.min_actors, max_actors=e.max_actors, cpus_per_actor=e.cpus_per_actor
            )
