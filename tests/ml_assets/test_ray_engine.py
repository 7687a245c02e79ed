"""The Ray engine on a local 2-CPU Ray: the same output as one process, row for row; a failing or killed
actor leaves no half output; a promotion during the run does not change the pinned version."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ml_assets.datasets import OUTPUT_FILE, ParquetDataset, read_lineage
from ml_assets.dev.demo import FEATURES, make_transactions, register_onnx_model, to_onnx_classifier
from ml_assets.resources.core.errors import SchemaMismatchError
from ml_assets.resources.registries.mlflow import MlflowRegistry
from ml_assets.scoring import Challenger, score_partition
from ml_assets.service import ModelService

pytestmark = pytest.mark.slow

DAY = "2026-11-02"
ACTOR_TITLE = "_ScoringActor"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    """One local Ray for the module: 2 CPUs, no dashboard, loopback only; shut down at the end."""
    # Read by Ray at import: with it, the node's address is 127.0.0.1, not the machine's interface.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # As the engine sets it before importing Ray: no Ray SIGSEGV handler to kill the JVM's own traps.
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
    pytest.importorskip("ray.data")
    from ml_assets.ray_engine import _import_ray

    ray = _import_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def engine_for(tracking_uri: str, **kwargs: object):
    from ml_assets.ray_engine import ModelServiceConfig, RayEngine

    return RayEngine(models=ModelServiceConfig("mlflow", tracking_uri), **kwargs)


def hive(path: Path | str) -> ParquetDataset:
    return ParquetDataset(str(path), partition_column="date")


def test_ray_output_equals_one_process_row_for_row(ray_cluster, models, transactions, tmp_path):
    """Champion and challenger in one pass, both actors busy: files, lineage and summaries as in one process."""
    with ModelService.from_uri("mlflow", models.tracking_uri) as service:
        champion, challenger = service.open("models:/fraud@champion"), service.open("models:/fraud@challenger")
        outputs = {}
        for name, engine in [("local", None), ("ray", engine_for(models.tracking_uri, max_actors=2))]:
            # Ray's actors decode row groups with pyarrow: the local run too, so the chunks (and their count) match.
            source = ParquetDataset(str(transactions), partition_column="date", reader="pyarrow")
            outputs[name] = score_partition(
                champion.scorer, champion.version, source, hive(tmp_path / name), partition=DAY,
                chunk_rows=3_000, passthrough=["transaction_id", "date"], version_column="model_version",
                challengers=[Challenger(challenger.scorer, challenger.version, hive(tmp_path / f"{name}_challenger"))],
                engine=engine,
            )  # fmt: skip
    local, ray_result = outputs["local"], outputs["ray"]
    for a, b in [(local, ray_result), (local.challengers[0], ray_result.challengers[0])]:
        assert pq.read_table(b.output_uri).equals(pq.read_table(a.output_uri))
        assert (b.rows_in, b.rows_out, b.chunks) == (a.rows_in, a.rows_out, a.chunks)
        assert b.summary.as_dict() == a.summary.as_dict()
        assert read_lineage(b.output_uri) == read_lineage(a.output_uri)
    assert ray_result.comparisons[0].agreement == local.comparisons[0].agreement
    assert read_lineage(ray_result.output_uri)["model_version"] == "1"
    assert not [p for p in (tmp_path / "ray").rglob("*") if p.name.startswith("_inprogress")]


def test_a_failing_chunk_leaves_the_previous_output(ray_cluster, models, transactions, tmp_path):
    """A null in row 17,000 (third row group): the actor raises; the driver names the row; nothing changes."""
    source = tmp_path / "in" / f"date={DAY}"
    source.mkdir(parents=True)
    table = pq.read_table(transactions / f"date={DAY}" / "part-0.parquet")
    risk = table["merchant_risk"].to_pylist()
    risk[17_000] = None
    pq.write_table(table.set_column(table.schema.get_field_index("merchant_risk"), "merchant_risk", pa.array(risk, pa.float32())),
                   source / "part-0.parquet", row_group_size=8_192)  # fmt: skip
    with ModelService.from_uri("mlflow", models.tracking_uri) as service:
        model = service.open("models:/fraud@champion")
        kept = score_partition(model.scorer, model.version, hive(transactions), hive(tmp_path / "out"), partition=DAY)
        before = Path(kept.output_uri).read_bytes()
        with pytest.raises(SchemaMismatchError) as failure:
            score_partition(
                model.scorer, model.version, hive(tmp_path / "in"), hive(tmp_path / "out"), partition=DAY,
                chunk_rows=4_096, engine=engine_for(models.tracking_uri),
            )  # fmt: skip
    message = str(failure.value)
    assert f"partition date={DAY}" in message
    assert "chunk 4 (rows 16384-19999)" in message  # numbered as one process numbers them
    assert "column 'merchant_risk' has 1 null(s), the first at row 17000" in message
    assert Path(kept.output_uri).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out" / f"date={DAY}").iterdir()) == [OUTPUT_FILE]


@pytest.fixture(scope="module")
def pinned_model(models, tmp_path_factory) -> tuple[str, str]:
    """``ray_pinned`` v1 (random forest) @champion, v2 (logistic regression): a promotion changes the scores."""
    artifacts = tmp_path_factory.mktemp("ray_artifacts").as_uri()
    register_onnx_model(
        models.tracking_uri, "ray_pinned", to_onnx_classifier(models.rf, len(FEATURES)), FEATURES,
        artifact_location=artifacts, alias="champion",
    )  # fmt: skip
    register_onnx_model(
        models.tracking_uri, "ray_pinned", to_onnx_classifier(models.lr, len(FEATURES)), FEATURES,
        artifact_location=artifacts,
    )  # fmt: skip
    return models.tracking_uri, "models:/ray_pinned@champion"


def _kill_first_actor_after(promote: Callable[[], object], deadline_s: float, killed: list[int]) -> None:
    """Promote v2, then SIGKILL the first scoring actor process to appear (bounded in time). Only this
    process's own Ray (its raylet and workers are its descendants): never another test run's actors."""
    promote()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and not killed:
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if ACTOR_TITLE in " ".join(process.cmdline()):
                    process.kill()
                    killed.append(process.pid)
                    return
        time.sleep(0.01)


def test_pinned_version_survives_a_promotion_and_a_killed_actor(ray_cluster, models, pinned_model, tmp_path):
    """The version is resolved once; v2 is promoted and an actor killed mid-run: Ray restarts the actor,
    which loads the pinned v1 again, and the committed output is v1's, equal to one process's, row for row."""
    tracking_uri, ref = pinned_model
    source = tmp_path / "in"
    table = make_transactions(30_000, seed=7)
    (source / f"date={DAY}").mkdir(parents=True)
    pq.write_table(table, source / f"date={DAY}" / "part-0.parquet", row_group_size=1_000)
    registry = MlflowRegistry(tracking_uri)
    with ModelService.from_uri("mlflow", tracking_uri) as service:
        model = service.open(ref)
        assert model.version.version == "1"
        reference = score_partition(
            model.scorer, model.version, hive(source), hive(tmp_path / "local"), partition=DAY,
            chunk_rows=500, version_column="model_version",
        )  # fmt: skip
        killed: list[int] = []
        killer = threading.Thread(
            target=_kill_first_actor_after,
            args=(lambda: registry.promote("ray_pinned", "2", alias="champion"), 60.0, killed),
        )
        killer.start()
        try:
            result = score_partition(
                model.scorer, model.version, hive(source), hive(tmp_path / "ray"), partition=DAY,
                chunk_rows=500, version_column="model_version", engine=engine_for(tracking_uri, max_actors=2),
            )  # fmt: skip
        finally:
            killer.join(timeout=70)
    assert registry.resolve(ref).version == "2"  # the promotion happened during the run
    assert killed, "no scoring actor process was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    out = pq.read_table(result.output_uri)
    assert out.equals(pq.read_table(reference.output_uri))
    assert pc.unique(out["model_version"]).to_pylist() == ["1"]
    assert read_lineage(result.output_uri)["model_version"] == "1"
    session = ort.InferenceSession(to_onnx_classifier(models.rf, len(FEATURES)).SerializeToString())
    x = np.column_stack([table[c].to_numpy() for c in FEATURES]).astype(np.float32)
    # v1 is the forest (v2 the regression): last-bit differences only, from onnxruntime's batch sizes.
    np.testing.assert_allclose(out["probability_1"].to_numpy(), session.run(None, {"X": x})[1][:, 1], atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "ray" / f"date={DAY}").iterdir()) == [OUTPUT_FILE]


def test_too_few_cpus_for_the_pool_fails_at_once(ray_cluster, models, transactions, tmp_path):
    """Actors that could never start would hang Ray Data; the engine says so before scheduling anything."""
    from ml_assets.ray_engine import RayEngineError

    with ModelService.from_uri("mlflow", models.tracking_uri) as service:
        model = service.open("models:/fraud@champion")
        with pytest.raises(RayEngineError, match=r"has 2 CPU\(s\); 3 actor\(s\) x 1 CPU cannot start"):
            score_partition(
                model.scorer, model.version, hive(transactions), hive(tmp_path / "out"), partition=DAY,
                engine=engine_for(models.tracking_uri, min_actors=3, max_actors=3),
            )  # fmt: skip
    assert not (tmp_path / "out" / f"date={DAY}").exists() or not list((tmp_path / "out" / f"date={DAY}").iterdir())


def test_yaml_pipeline_on_ray_backfills_in_runs_of_two_within_a_pool(ray_cluster, models, transactions, tmp_path):
    """``engine: ray`` in YAML; ``max_partitions_per_run: 2`` and ``pool``: a backfill's run scores its two
    partitions on Ray, with checks, as a local run would; the pool is registered with the instance's limit."""

    import dagster as dg

    from ml_assets.dagster.resources import RayEngineResource
    from tests.conftest import DATES, component_defs, features_of

    attributes = {
        "name": "ray_scores",
        "model": "models:/fraud@champion",
        "registry": {"kind": "mlflow", "uri": models.tracking_uri},
        "runtime": {"options": {"onnx": {"threads": 1}}},
        "input": {"uri": str(transactions), "partition_column": "date"},
        "output": {"uri": str(tmp_path / "scores")},
        "partitions": {"daily": {"start_date": DATES[0], "end_date": "2026-11-04"}},
        "passthrough": ["transaction_id"],
        "engine": {"kind": "ray", "min_actors": 1, "max_actors": 2},
        "max_partitions_per_run": 2,
        "pool": "fraud_model_server",
    }
    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    with component_defs(attributes) as (_, defs):
        asset = defs.resolve_assets_def("ray_scores")
        assert asset.backfill_policy == dg.BackfillPolicy.multi_run(max_partitions_per_run=2)
        assert asset.op.pool == "fraud_model_server"
        assert isinstance(defs.resources["ray_scores_ray_engine"], RayEngineResource)
        job = defs.resolve_implicit_global_asset_job_def()
        with dg.instance_for_test(overrides=overrides) as instance:
            # The run a multi_run(2) backfill launches first: a range of two partitions.
            result = job.execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": DATES[0],
                    "dagster/asset_partition_range_end": DATES[1],
                },
            )
            pool = instance.event_log_storage.get_concurrency_info("fraud_model_server")
    assert result.success
    assert pool.slot_count == 1
    assert sorted(e.partition for e in result.asset_materializations_for_node("ray_scores")) == DATES[:2]
    assert all(e.passed for e in result.get_asset_check_evaluations())
    for day in DATES[:2]:
        scored = pq.read_table(tmp_path / "scores" / f"date={day}")
        source = pq.read_table(transactions / f"date={day}")
        assert scored["transaction_id"].equals(source["transaction_id"])
        np.testing.assert_allclose(
            scored["probability_1"].to_numpy(), models.lr.predict_proba(features_of(source))[:, 1], atol=1e-5
        )
        assert read_lineage(str(tmp_path / "scores" / f"date={day}" / OUTPUT_FILE))["model_version"] == "1"
    assert not (tmp_path / "scores" / f"date={DATES[2]}").exists()


def test_cli_engine_ray_writes_what_the_local_cli_writes(ray_cluster, models, transactions, tmp_path):
    from click.testing import CliRunner

    from ml_assets.cli import main

    outputs = {}
    for engine in ["local", "ray"]:
        done = CliRunner().invoke(
            main,
            [
                "score", "models:/fraud@champion", str(transactions), str(tmp_path / engine), "--partition", f"date={DAY}",
                "--passthrough", "transaction_id", "--registry-uri", models.tracking_uri, "--option", "threads=1",
                "--chunk-rows", "5000", "--quiet", "--engine", engine, "--actors", "1,2",
            ],
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        outputs[engine] = tmp_path / engine / f"date={DAY}" / OUTPUT_FILE
    assert pq.read_table(outputs["ray"]).equals(pq.read_table(outputs["local"]))
    refused = CliRunner().invoke(
        main, ["score", "models:/fraud@champion", str(transactions), str(tmp_path / "x"), "--engine", "ray", "--actors", "3,1",
               "--registry-uri", models.tracking_uri, "--partition", f"date={DAY}"],
    )  # fmt: skip
    assert refused.exit_code == 2
    assert "1 <= min_actors <= max_actors, got 3 and 1" in refused.output


def test_actors_read_s3_through_the_datasets_storage_options(ray_cluster, models, transactions, s3_server, tmp_path):
    """Input on S3 (moto on loopback): each actor opens the same files with the dataset's fsspec options."""
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_server["endpoint_url"]}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("raylake")
    fs.put(str(transactions / f"date={DAY}" / "part-0.parquet"), f"raylake/tx/date={DAY}/part-0.parquet")
    source = ParquetDataset("s3://raylake/tx", partition_column="date", storage_options=options)
    with ModelService.from_uri("mlflow", models.tracking_uri) as service:
        model = service.open("models:/fraud@champion")
        local = score_partition(
            model.scorer, model.version, hive(transactions), hive(tmp_path / "local"), partition=DAY,
            passthrough=["transaction_id"],
        )  # fmt: skip
        remote = score_partition(
            model.scorer, model.version, source, hive(tmp_path / "ray"), partition=DAY,
            passthrough=["transaction_id"], engine=engine_for(models.tracking_uri),
        )  # fmt: skip
    assert pq.read_table(remote.output_uri).equals(pq.read_table(local.output_uri))
    assert read_lineage(remote.output_uri)["input"] == f"partition date={DAY} (s3://raylake/tx/date={DAY})"


def test_an_actor_takes_a_secret_it_was_not_given_from_its_environment(monkeypatch):
    """Credentials can live on the cluster's nodes instead of travelling with the job."""
    from ml_assets.ray_engine import ModelServiceConfig

    monkeypatch.setenv("ML_ASSETS_TOKEN", "node-token")
    monkeypatch.delenv("ML_ASSETS_PASSWORD", raising=False)
    given = ModelServiceConfig(secrets={"username": "job-user"}).build()
    assert given._secrets == {"token": "node-token", "username": "job-user", "password": None}


def test_an_h2o_mojo_scores_on_ray_actors_like_in_one_process(ray_cluster, models, tmp_path):
    """A JVM runtime in the driver and in every actor: the same rows as one process (Ray's SIGSEGV
    handler, which would kill the JVM, is off)."""
    from mlflow.models import infer_signature

    from tests.ml_assets.test_inprocess_assets import MOJOS, register_file_model
    from tests.resources.fixtures.make_h2o_mojos import training_frame

    features = ["x0", "x1", "x2", "x3", "color", "size"]
    frame = training_frame(12_000, seed=31)[features].round(6)
    frame["row_id"] = np.arange(len(frame))
    (tmp_path / "in" / f"date={DAY}").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in" / f"date={DAY}" / "part-0.parquet",
        row_group_size=2_000,
    )  # fmt: skip
    signature = infer_signature(training_frame(10, seed=1)[features])
    version = register_file_model(models.tracking_uri, "gbm_mojo_ray", MOJOS / "binomial.zip", "h2o_mojo", signature)
    with ModelService.from_uri("mlflow", models.tracking_uri) as service:
        model = service.open(f"models:/gbm_mojo_ray/{version}")
        outputs = [
            score_partition(
                model.scorer,
                model.version,
                hive(tmp_path / "in"),
                hive(tmp_path / name),
                partition=DAY,
                passthrough=["row_id"],
                chunk_rows=1_500,
                nulls="pass",
                engine=engine,
            )
            for name, engine in [("local", None), ("ray", engine_for(models.tracking_uri, max_actors=2))]
        ]
    local, ray_result = (pq.read_table(r.output_uri) for r in outputs)
    assert ray_result.equals(local)
    assert local.num_rows == 12_000
