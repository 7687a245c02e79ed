"""Score one partition on a Ray cluster: Ray Data actors read and score, this process writes and commits.

    driver: plan (casts, null policy, passthrough) and pinned ModelVersion, one work item per row group
      -> Ray Data: from_items(work) -> map_batches(_ScoringActor, ActorPoolStrategy(min, max))
           each actor builds its own ModelService from a ModelServiceConfig and loads the PINNED version
           (artifact cache, runtimes: the same path as everywhere), reads its row group from the same
           files, applies the same plan, scores
      -> results stream back in input order (preserve_order) to score_partition's writer thread
      -> AtomicPartitionWriter: the one commit protocol; lineage metadata, summaries, checks unchanged

Why not Ray's read_parquet/write_parquet: a row group as the unit of work gives every chunk its exact
row numbers (errors name them, as in one process), and leaves no separate read tasks to starve when the
actors hold every CPU (the small-cluster hang). ``write_parquet`` has overwrite races and leaves duplicate
files (ray issues 55043, 49741); streaming back to our writer keeps one commit protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ml_assets.datasets import FileBatch, ParquetDataset, PartitionReader, _filesystem
from ml_assets.resources.core.errors import MissingDependencyError, MlAssetsError, ScoringError
from ml_assets.resources.core.imports import import_pyarrow_dataset
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.trust import TrustPolicy
from ml_assets.resources.registries.direct import DirectFiles
from ml_assets.scoring import _Chunk, _conform, _Plan
from ml_assets.service import SECRET_OPTIONS, ModelService

pads = import_pyarrow_dataset()  # not `import pyarrow.dataset`: that imports pandas (resources/core/imports.py)

if TYPE_CHECKING:
    from ray.data import Dataset

#: Ray Data waits this long for the pool's first actors (model load included) before failing the run.
ACTOR_START_TIMEOUT_S = 600


class RayEngineError(MlAssetsError):
    """The Ray cluster cannot run the job as configured (too few CPUs for the pool, a failed job)."""


@dataclass(frozen=True)
class ModelServiceConfig:
    """What a remote process needs to build its own ``ModelService``: plain, picklable settings.

    Args:
        registry: ``ml_assets.registries`` entry point (mlflow, file, http); None for direct refs only.
        uri: the registry's location (tracking URI, folder or URL).
        registry_options: options of the registry (e.g. ``registry_uri``, ``storage_options``).
        cache_dir: each node's local artifact cache (default ``~/.cache/ml-assets``).
        storage_options: fsspec options for model files named by URL.
        runtime / runtime_options / secrets: as in ``ModelService``. A secret left out is taken from
            the building process's ``ML_ASSETS_TOKEN``/``_USERNAME``/``_PASSWORD``, as the CLI does,
            so a cluster can hold its own credentials instead of receiving them.
        trust: the trust policy; each actor verifies the files it fetched before loading them.
    """

    registry: str | None = None
    uri: str | None = None
    registry_options: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    runtime: str | None = None
    runtime_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    secrets: Mapping[str, str | None] = field(default_factory=dict, repr=False)
    trust: TrustPolicy | None = None

    def build(self) -> ModelService:
        secrets = {k: self.secrets.get(k) or os.environ.get(f"ML_ASSETS_{k.upper()}") for k in SECRET_OPTIONS}
        settings: dict[str, Any] = {
            "runtime": self.runtime,
            "runtime_options": self.runtime_options,
            "secrets": secrets,
            "trust": self.trust,
        }
        if self.registry is None:
            return ModelService(
                direct=DirectFiles(cache_dir=self.cache_dir, storage_options=self.storage_options), **settings
            )
        return ModelService.from_uri(
            self.registry,
            self.uri,
            cache_dir=self.cache_dir,
            registry_options=self.registry_options,
            storage_options=self.storage_options,
            **settings,
        )


@dataclass(frozen=True)
class _Work:
    """One row group: where it is, and where its rows and chunks fall in the partition."""

    file: str
    row_group: int
    first_row: int
    first_chunk: int
    file_row: int
    """The row group's first row within its file."""


@dataclass(frozen=True)
class RayEngine:
    """Reads and scores a partition on Ray actors; pass it as ``score_partition(..., engine=...)``.

    Args:
        models: how actors load the model (registry and runtime settings); the version itself is
            resolved once by the caller and pinned, so a promotion during the run changes nothing.
        address: the cluster to join (``auto``, ``ray://head:10001``); None starts a local Ray when
            none is running in this process. A Ray already initialised in this process is used as is.
        min_actors / max_actors: the actor pool's size; Ray Data grows it with the backlog.
        cpus_per_actor: CPUs each actor reserves; match the runtime's threads (e.g. onnx ``threads``).
        init_options: more ``ray.init`` arguments (``runtime_env``, ``num_cpus``, ...) when this engine starts Ray.
    """

    models: ModelServiceConfig = field(default_factory=ModelServiceConfig)
    address: str | None = None
    min_actors: int = 1
    max_actors: int = 2
    cpus_per_actor: float = 1.0
    init_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_actors <= self.max_actors:
            msg = f"RayEngine needs 1 <= min_actors <= max_actors, got {self.min_actors} and {self.max_actors}"
            raise ValueError(msg)
        if self.cpus_per_actor <= 0:
            msg = f"RayEngine needs cpus_per_actor > 0, got {self.cpus_per_actor}"
            raise ValueError(msg)

    def connect(self) -> None:
        """Join (or start) the cluster, and check it can hold the pool's first actors."""
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, **dict(self.init_options))
        cpus = ray.cluster_resources().get("CPU", 0.0)
        # Ray Data would wait for actors that can never start: fail now, saying why.
        if self.min_actors * self.cpus_per_actor > cpus:
            msg = (
                f"the Ray cluster has {cpus:g} CPU(s); {self.min_actors} actor(s) x {self.cpus_per_actor:g} CPU "
                f"cannot start: lower min_actors or cpus_per_actor"
            )
            raise RayEngineError(msg)

    def scored_chunks(
        self, reader: PartitionReader, plans: Sequence[_Plan], chunk_rows: int
    ) -> Iterator[tuple[_Chunk, list[pa.RecordBatch]]]:
        """Each chunk of the partition with every plan's predictions, in input order."""
        self.connect()
        dataset = self._dataset(reader, plans, chunk_rows)
        ray = _import_ray()
        index, first_row = 0, 0
        try:
            for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                for batch in block.to_batches():
                    yield _split(batch, plans, index, first_row)
                    index, first_row = index + 1, first_row + batch.num_rows
        except ray.exceptions.RayError as exc:
            raise _unwrap(exc, reader) from exc

    def _dataset(self, reader: PartitionReader, plans: Sequence[_Plan], chunk_rows: int) -> Dataset:
        ray = _import_ray()
        work, first_row, first_chunk = [], 0, 0
        for file, row_group, rows, file_row in reader.row_groups():
            work.append({"work": _Work(file, row_group, first_row, first_chunk, file_row)})
            first_row += rows
            first_chunk += -(-rows // chunk_rows)
        dataset = ray.data.from_items(work, override_num_blocks=max(len(work), 1))
        context = dataset.context
        context.execution_options.preserve_order = True  # output order is input order, row for row
        context.raise_original_map_exception = True  # our error, naming the chunk, reaches the driver
        context.enable_progress_bars = False
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        return dataset.map_batches(
            _ScoringActor,
            fn_constructor_kwargs={
                "models": self.models,
                "versions": [plan.version for plan in plans],
                "plans": list(plans),
                "source": reader.dataset,
                "partition": reader.partition,
                "chunk_rows": chunk_rows,
            },
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=self.min_actors, max_size=self.max_actors),
            num_cpus=self.cpus_per_actor,
        )


class _ScoringActor:
    """One Ray actor: loads the pinned versions once, then reads and scores row groups."""

    def __init__(
        self,
        *,
        models: ModelServiceConfig,
        versions: list[ModelVersion],
        plans: list[_Plan],
        source: ParquetDataset,
        partition: str | None,
        chunk_rows: int,
    ) -> None:
        self.service = models.build()
        self.scorers = [self.service.load(version) for version in versions]
        self.plans = plans
        self.chunk_rows = chunk_rows
        self.columns = list(dict.fromkeys(c for plan in plans for c in plan.read_columns))
        self.filesystem, _ = _filesystem(source.partition_uri(partition), source.storage_options)
        self.format = pads.ParquetFileFormat()

    def __call__(self, batch: pa.Table) -> pa.Table:
        outputs = [self._score(work) for work in batch.column("work").to_pylist()]
        return pa.concat_tables(outputs)

    def _score(self, work: _Work) -> pa.Table:
        fragment = self.format.make_fragment(work.file, filesystem=self.filesystem, row_groups=[work.row_group])
        # The file's own schema: each plan casts from its types (never another file's) to the model's.
        present = set(fragment.physical_schema.names)
        batches = fragment.to_batches(
            columns=[c for c in self.columns if c in present],
            batch_size=self.chunk_rows,
            use_threads=False,
            fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False),
        )
        index, first_row, file_row, chunks = work.first_chunk, work.first_row, work.file_row, []
        for batch in batches:
            if not batch.num_rows:
                continue
            piece = FileBatch(batch, work.file, file_row)
            chunk = _Chunk(index, first_row, batch.num_rows, self.plans[0].passthrough_batch(piece, index, first_row))
            columns = {
                f"p/{name}": column
                for name, column in zip(chunk.passthrough.schema.names, chunk.passthrough.columns, strict=True)
            }
            for lane, (plan, scorer) in enumerate(zip(self.plans, self.scorers, strict=True)):
                predictions = self._predict(plan, scorer, chunk, plan.features(piece, index, first_row))
                columns.update({f"{lane}/{name}": predictions.column(name) for name in predictions.schema.names})
            chunks.append(pa.RecordBatch.from_pydict(columns))
            index, first_row, file_row = index + 1, first_row + batch.num_rows, file_row + batch.num_rows
        return pa.Table.from_batches(chunks)

    @staticmethod
    def _predict(plan: _Plan, scorer: Any, chunk: _Chunk, features: pa.RecordBatch) -> pa.RecordBatch:
        where = f"{plan.where}, chunk {chunk.index} ({chunk.rows})"
        try:
            predictions = scorer.score(features)
        except MlAssetsError as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        except Exception as exc:  # a runtime's own error type: keep it, name the chunk
            msg = f"{where}: {plan.version.describe()} failed on Ray actor pid {os.getpid()}: {exc}"
            raise ScoringError(msg) from exc
        if predictions.schema != scorer.output_schema:
            predictions = _conform(predictions, scorer.output_schema, plan, chunk)
        return predictions


def _split(
    batch: pa.RecordBatch, plans: Sequence[_Plan], index: int, first_row: int
) -> tuple[_Chunk, list[pa.RecordBatch]]:
    """An actor's combined batch back into the chunk's passthrough and each plan's predictions."""
    main = plans[0]
    passthrough = pa.RecordBatch.from_arrays(
        [batch.column(f"p/{name}") for name in main.passthrough_schema.names], schema=main.passthrough_schema
    )
    predictions = []
    for lane in range(len(plans)):
        prefix = f"{lane}/"
        own = [n for n in batch.schema.names if n.startswith(prefix)]
        columns = [batch.column(n) for n in own]
        predictions.append(pa.RecordBatch.from_arrays(columns, names=[n.removeprefix(prefix) for n in own]))
    return _Chunk(index, first_row, batch.num_rows, passthrough), predictions


def _unwrap(exc: BaseException, reader: PartitionReader) -> MlAssetsError:
    """Ray's wrapper off an actor's error: the driver raises the same error one process would."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, MlAssetsError):
            # Ray appends its retry advice on new lines; our messages are one line.
            return type(cause)(str(cause).split("\n", 1)[0])
        cause = getattr(cause, "cause", None) or cause.__cause__
    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    msg = f"{reader.where}: the Ray job failed: {type(exc).__name__}: {first}"
    return RayEngineError(msg)


def _import_ray() -> Any:
    # Ray's C++ core installs a SIGSEGV handler that kills the process; the JVM (H2O, PMML runtimes)
    # raises and handles SIGSEGV on purpose, so a driver or actor with both would die. Read at import,
    # and inherited by the workers of a local Ray this process starts.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as exc:
        msg = "the Ray engine needs the package 'ray' (Ray Data): pip install 'dagster-ml-assets[ray]'"
        raise MissingDependencyError(msg) from exc
    return ray
