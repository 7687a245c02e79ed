"""MLflow models of the ``sklearn``, ``xgboost`` and ``lightgbm`` flavors, scored by their library's own predictor.

No pandas and no per-chunk signature enforcement: each chunk (already cast to the signature's
types by the scoring core's plan, once per partition) becomes one row-major numpy matrix read
zero-copy from Arrow, handed to ``predict_proba`` / ``predict(..., num_threads=...)`` /
``inplace_predict``. Outputs follow the prediction contract (``label``, ``probability_<class>``,
``prediction``) and equal the flavor's own ``predict``/``predict_proba`` on the same rows.

With ``env_manager="uv"`` (or ``"virtualenv"``, or a prebuilt ``env_path``) the same predictor
runs in worker processes inside the model's own environment, so this process needs none of the
flavor's libraries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ml_assets.resources.core.envs import ENV_MANAGERS, EnvManager, IndexSettings, model_environment
from ml_assets.resources.core.errors import ModelLoadError, NativeUnsupportedError, ScoringError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.paths import safe_join
from ml_assets.resources.runtimes._common import available_cores, empty_batch
from ml_assets.resources.runtimes.pyfunc import PyfuncScorer, _signature_schemas, mlflow_model_folder


def _input_dtype(schema: pa.Schema) -> str:
    return "float32" if all(pa.types.is_float32(f.type) for f in schema) else "float64"


def native_files(version: ModelVersion, model_dir: Path) -> dict[str, Any]:
    """The flavor, model file and serialization the model's MLmodel records (``_flavors.flavor_files``),
    each path in it proven to lie inside ``model_dir``: the MLmodel came with the model, not from us."""
    from ml_assets.resources.core.formats import parse_mlmodel
    from ml_assets.resources.runtimes._flavors import NativeFlavorError, NativeUnsupported, flavor_files

    try:
        flavors = parse_mlmodel((model_dir / "MLmodel").read_text()).get("flavors") or {}
    except Exception as exc:
        msg = f"{version.describe()}: cannot read MLmodel in {model_dir}: {exc}"
        raise ModelLoadError(msg) from exc
    if not isinstance(flavors, dict):
        msg = f"{version.describe()}: the MLmodel in {model_dir} has no flavors mapping"
        raise ModelLoadError(msg)

    def join(relative: str, what: str) -> str:
        return safe_join(str(model_dir), relative, what=f"{what} in the MLmodel of {version.describe()}")

    try:
        return flavor_files(flavors, join)
    except NativeFlavorError as exc:
        msg = f"{version.describe()}: {exc}"
        raise (NativeUnsupportedError if isinstance(exc, NativeUnsupported) else ModelLoadError)(msg) from exc


class NativeScorer:
    """A flavor model loaded in this process; the library's own threads (trees of xgboost, lightgbm)
    or the core's concurrent chunks (sklearn, whose predict releases the GIL) do the parallel work."""

    def __init__(self, version: ModelVersion, model_dir: Path, *, threads: int) -> None:
        from ml_assets.resources.runtimes._flavors import NativeFlavorError, NativeUnsupported, load_native

        files = native_files(version, model_dir)
        self.version = version
        self.input_schema, _, _ = _signature_schemas(model_dir, version)
        bad = [f"{f.name} ({f.type})" for f in self.input_schema if not _numeric(f.type)]
        if bad:
            msg = f"{version.describe()}: the native runtime takes numeric features only; not {', '.join(bad)}"
            raise NativeUnsupportedError(msg)
        try:
            self._predictor = load_native(files, input_dtype=np.dtype(_input_dtype(self.input_schema)), threads=threads)
        except ModuleNotFoundError as exc:
            msg = (
                f"{version.describe()}: its flavor needs the package {exc.name!r}, not installed here; "
                "score it in the model's own environment with env_manager='uv'"
            )
            raise ModelLoadError(msg) from exc
        except NativeFlavorError as exc:
            msg = f"{version.describe()}: {exc}"
            raise (NativeUnsupportedError if isinstance(exc, NativeUnsupported) else ModelLoadError)(msg) from exc
        self.output_schema = self._predictor.output_schema
        self.classes = self._predictor.classes
        self.concurrency = self._predictor.concurrency

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        n = batch.num_rows
        if n == 0:
            return empty_batch(self.output_schema)
        try:
            scored = self._predictor.score(batch)
        except Exception as exc:
            msg = f"{self.version.describe()}: {self._predictor.flavor} predict failed on a batch of {n} rows: {exc}"
            raise ScoringError(msg) from exc
        if scored.num_rows != n:
            msg = f"{self.version.describe()}: predict returned {scored.num_rows} rows for a batch of {n}"
            raise ScoringError(msg)
        return scored

    def close(self) -> None:
        self._predictor = None  # type: ignore[assignment]


def _numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type)


class NativeRuntime:
    """Scores MLflow ``sklearn``/``xgboost``/``lightgbm`` models through the library's own predictor.

    Options: ``threads`` (the library's threads per worker; default the cores available),
    ``env_manager`` ("local": this process's packages; "uv"/"virtualenv": the model's own
    environment, built once per machine), ``env_path`` (a prebuilt environment), ``env_dir``,
    ``index_url`` / ``extra_index_urls`` / ``find_links``; in an environment: ``workers``
    (processes, default 1), ``batch_timeout_s``, ``load_timeout_s``, ``on_worker_failure``,
    ``max_retries``.
    """

    def __init__(
        self,
        *,
        threads: int | None = None,
        env_manager: EnvManager = "local",
        env_path: str | None = None,
        env_dir: str | None = None,
        index_url: str | None = None,
        extra_index_urls: str | Sequence[str] = (),
        find_links: str | Sequence[str] = (),
        workers: int = 1,
        on_worker_failure: Literal["fail", "retry"] = "fail",
        max_retries: int = 1,
        batch_timeout_s: float = 600.0,
        load_timeout_s: float = 300.0,
    ) -> None:
        if env_manager not in ENV_MANAGERS:
            msg = f"env_manager must be one of {', '.join(ENV_MANAGERS)}, got {env_manager!r}"
            raise ValueError(msg)
        if (threads is not None and threads < 1) or workers < 1 or max_retries < 0:
            msg = "threads and workers must be >= 1 and max_retries >= 0"
            raise ValueError(msg)
        self.threads = threads or available_cores()
        self.env_manager = env_manager
        self.env_path = env_path
        self.env_dir = env_dir
        self.index = IndexSettings.of(index_url, extra_index_urls, find_links)
        self.workers = workers
        self.on_worker_failure = on_worker_failure
        self.max_retries = max_retries
        self.batch_timeout_s = batch_timeout_s
        self.load_timeout_s = load_timeout_s

    def load(self, version: ModelVersion, path: Path) -> Any:
        model_dir = mlflow_model_folder(version, path)
        environment = model_environment(
            model_dir,
            what=version.describe(),
            env_manager=self.env_manager,
            env_path=self.env_path,
            env_dir=self.env_dir,
            index=self.index,
        )
        if environment is None:
            return NativeScorer(version, model_dir, threads=self.threads)
        return PyfuncScorer(
            version,
            model_dir,
            isolation="process",
            workers=self.workers,
            threads=1,
            on_worker_failure=self.on_worker_failure,
            max_retries=self.max_retries,
            batch_timeout_s=self.batch_timeout_s,
            load_timeout_s=self.load_timeout_s,
            environment=environment,
            predictor="native",
            native_files=native_files(version, model_dir),
            worker_threads=self.threads,
        )


__all__ = ["NativeRuntime", "NativeScorer"]
