"""OpenLineage run events for a scoring run: the model version, the dataset it scored and the predictions
it produced, linked in one job run. No orchestrator here.

The same facts serve three emitters: the Dagster asset and ``ml-assets score`` send START and
COMPLETE/FAIL through ``openlineage-python`` when a transport is configured the library's standard
way (``OPENLINEAGE_URL``, ``OPENLINEAGE_CONFIG``, ``openlineage.yml``, ``OPENLINEAGE__TRANSPORT__*``),
and the Airflow operators hand the same datasets and facets to Airflow's OpenLineage provider.

What is emitted (extra: ``openlineage``):

- inputs: the input dataset (with the columns the model reads as its schema facet) and the model
  version itself, as a dataset in the registry's namespace (``models/fraud/2``), so lineage graphs
  draw model -> scoring job -> predictions;
- outputs: the output dataset (its columns; on COMPLETE the rows written as outputStatistics);
- the run facet ``mlModel`` (``MlModelRunFacet``: name, version, registry, URI, format, ref), whose
  JSON schema ships in ``ml_assets/schemas/MlModelRunFacet.json``.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from ml_assets.datasets import ParquetDataset
from ml_assets.resources.core.errors import MissingDependencyError
from ml_assets.resources.core.models import ModelVersion

PRODUCER = "https://pypi.org/project/dagster-ml-assets/0.1.0"
FACET_SCHEMA_URL = "https://pypi.org/project/dagster-ml-assets/0.1.0/MlModelRunFacet.json#/$defs/MlModelRunFacet"
MODEL_FACET = "mlModel"
DEFAULT_NAMESPACE = "ml-assets"


def facet_schema() -> dict[str, Any]:
    """The JSON schema of the ``mlModel`` run facet, as shipped in the package."""
    import json

    return json.loads(resources.files("ml_assets").joinpath("schemas/MlModelRunFacet.json").read_text())


def transport_configured() -> bool:
    """Whether ``openlineage-python`` would find a transport (and is not disabled): without one it would
    print every event to the console, which is no place for them."""
    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OPENLINEAGE_URL") or os.environ.get("OPENLINEAGE_CONFIG"):
        return True
    if any(k.startswith("OPENLINEAGE__TRANSPORT") for k in os.environ):
        return True
    return any(p.is_file() for p in (Path.cwd() / "openlineage.yml", Path.home() / ".openlineage/openlineage.yml"))


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage's naming for a path: ``s3://bucket/a/b`` -> (``s3://bucket``, ``a/b``); a local path
    -> (``file``, its absolute path)."""
    parts = urlsplit(uri)
    if parts.scheme and parts.scheme != "file" and len(parts.scheme) > 1:
        return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")
    path = parts.path if parts.scheme == "file" else uri
    return "file", str(Path(path).absolute())


def model_dataset_name(version: ModelVersion) -> tuple[str, str]:
    """The model version as a dataset: the registry is the namespace, ``models/<name>/<version>`` the name."""
    return version.registry or "ml-assets", f"models/{version.name}/{version.version}"


def _schema_facet(schema: pa.Schema | None) -> dict[str, Any]:
    from openlineage.client.facet_v2 import schema_dataset

    if schema is None:
        return {}
    fields = [schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in schema]
    return {"schema": schema_dataset.SchemaDatasetFacet(fields=fields, producer=PRODUCER)}


@functools.cache
def _model_facet_class() -> type:
    import attr
    from openlineage.client.generated.base import RunFacet

    @attr.define
    class MlModelRunFacet(RunFacet):
        """The registered model version a scoring run used."""

        name: str
        version: str
        registry: str
        uri: str
        format: str
        ref: str | None = attr.field(default=None)
        runId: str | None = attr.field(default=None)  # OpenLineage's camelCase

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_URL

    return MlModelRunFacet


def model_facet(version: ModelVersion) -> Any:
    """The ``mlModel`` run facet of ``version``."""
    return _model_facet_class()(
        name=version.name,
        version=version.version,
        registry=version.registry or "",
        uri=version.uri,
        format=version.format,
        ref=version.ref,
        runId=version.run_id,
        producer=PRODUCER,
    )


@dataclass
class ScoringLineage:
    """The datasets and facets of one scoring run; events and Airflow ``OperatorLineage`` from one place.

    Args:
        source / dest: the input and output datasets (their roots name the datasets).
        version: the model version, once resolved (START of an Airflow task knows only the ref).
        input_schema / output_schema: the columns the model reads and the output's columns.
    """

    source: ParquetDataset
    dest: ParquetDataset
    version: ModelVersion | None = None
    input_schema: pa.Schema | None = None
    output_schema: pa.Schema | None = None
    extra_outputs: Sequence[ParquetDataset] = field(default_factory=tuple)

    def inputs(self) -> list[Any]:
        from openlineage.client.event_v2 import InputDataset

        namespace, name = dataset_name(self.source.root)
        found = [InputDataset(namespace=namespace, name=name, facets=_schema_facet(self.input_schema))]
        if self.version is not None:
            namespace, name = model_dataset_name(self.version)
            found.append(InputDataset(namespace=namespace, name=name))
        return found

    def outputs(self, rows: Mapping[str, int] | None = None) -> list[Any]:
        from openlineage.client.event_v2 import OutputDataset
        from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

        found = []
        for dataset in [self.dest, *self.extra_outputs]:
            namespace, name = dataset_name(dataset.root)
            output_facets = {}
            if rows is not None and dataset.uri in rows:
                output_facets["outputStatistics"] = stats.OutputStatisticsOutputDatasetFacet(
                    rowCount=rows[dataset.uri], producer=PRODUCER
                )
            facets = _schema_facet(self.output_schema) if dataset is self.dest else {}
            found.append(OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=output_facets))
        return found

    def run_facets(self, error: BaseException | None = None) -> dict[str, Any]:
        facets: dict[str, Any] = {}
        if self.version is not None:
            facets[MODEL_FACET] = model_facet(self.version)
        if error is not None:
            from openlineage.client.facet_v2 import error_message_run

            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=str(error), programmingLanguage="python", producer=PRODUCER
            )
        return facets


class LineageEmitter:
    """Sends the START and COMPLETE/FAIL events of scoring runs through ``openlineage-python``.

    ``LineageEmitter.from_environment()`` is None when no transport is configured, so callers emit
    nothing and import nothing then. An emit that fails is logged by the client and never fails the
    run: lineage is reporting, not part of the commit.
    """

    def __init__(self, client: Any, *, namespace: str | None = None) -> None:
        self.client = client
        self.namespace = namespace or os.environ.get("OPENLINEAGE_NAMESPACE") or DEFAULT_NAMESPACE

    @classmethod
    def from_environment(cls) -> LineageEmitter | None:
        if not transport_configured():
            return None
        try:
            from openlineage.client import OpenLineageClient
        except ImportError as exc:
            msg = (
                "OpenLineage is configured (OPENLINEAGE_* or openlineage.yml) but openlineage-python is not "
                "installed: pip install 'dagster-ml-assets[openlineage]'"
            )
            raise MissingDependencyError(msg) from exc
        return cls(OpenLineageClient())

    def start(self, job: str, lineage: ScoringLineage, *, run_id: str | None = None) -> str:
        """Emit START; returns the OpenLineage run id the later event must carry."""
        run_id = run_id or str(uuid.uuid4())
        self._emit("START", job, run_id, lineage.inputs(), lineage.outputs(), lineage.run_facets())
        return run_id

    def complete(self, job: str, run_id: str, lineage: ScoringLineage, rows: Mapping[str, int]) -> None:
        self._emit("COMPLETE", job, run_id, lineage.inputs(), lineage.outputs(rows), lineage.run_facets())

    def fail(self, job: str, run_id: str, lineage: ScoringLineage, error: BaseException) -> None:
        self._emit("FAIL", job, run_id, lineage.inputs(), lineage.outputs(), lineage.run_facets(error))

    def _emit(
        self, state: str, job: str, run_id: str, inputs: list[Any], outputs: list[Any], facets: dict[str, Any]
    ) -> None:
        from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
        from openlineage.client.facet_v2 import job_type_job

        job_facets = {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="ML_ASSETS", jobType="SCORING", producer=PRODUCER
            )
        }
        event = RunEvent(
            eventType=RunState[state],
            eventTime=datetime.now(timezone.utc).isoformat(),
            run=Run(runId=run_id, facets=facets),
            job=Job(namespace=self.namespace, name=job, facets=job_facets),
            inputs=inputs,
            outputs=outputs,
            producer=PRODUCER,
        )
        self.client.emit(event)


class LineageRun:
    """One scoring run's events: ``begin`` emits START (when a transport is configured), then exactly one
    of ``complete`` or ``fail``. Without a transport every call does nothing."""

    def __init__(self, emitter: LineageEmitter | None, job: str, lineage: ScoringLineage, run_id: str) -> None:
        self.emitter, self.job, self.lineage, self.run_id = emitter, job, lineage, run_id

    @classmethod
    def begin(cls, job: str, lineage: ScoringLineage, *, run_id: str | None = None) -> LineageRun:
        emitter = LineageEmitter.from_environment()
        run = cls(emitter, job, lineage, run_id or str(uuid.uuid4()))
        if emitter is not None:
            emitter.start(job, lineage, run_id=run.run_id)
        return run

    def complete(self, rows: Mapping[str, int]) -> None:
        if self.emitter is not None:
            self.emitter.complete(self.job, self.run_id, self.lineage, rows)

    def fail(self, error: BaseException) -> None:
        if self.emitter is not None:
            self.emitter.fail(self.job, self.run_id, self.lineage, error)


def run_id_for(text: str) -> str:
    """A stable OpenLineage run id (a UUID) for an orchestrator's own run id, which may not be one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ml-assets:{text}"))


__all__ = [
    "FACET_SCHEMA_URL",
    "MODEL_FACET",
    "LineageEmitter",
    "LineageRun",
    "ScoringLineage",
    "dataset_name",
    "facet_schema",
    "model_facet",
    "run_id_for",
    "transport_configured",
]
