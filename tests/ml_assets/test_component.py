"""The ScoringPipelineComponent: scaffolded and loaded from YAML in a temporary project, then materialized."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import yaml
from dagster.components.testing import create_defs_folder_sandbox

from ml_assets.dagster.components import ScoringPipelineComponent
from ml_assets.datasets import read_lineage
from tests.conftest import DATES, codecs_of, component_defs, features_of


def test_scaffolded_yaml_loads():
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=ScoringPipelineComponent)
        written = yaml.safe_load((path / "defs.yaml").read_text())
    assert written["type"].endswith("ScoringPipelineComponent")
    assert written["attributes"]["model"] == "models:/my_model@champion"
    assert written["attributes"]["promotion_sensor"] == {"rescore": "stale"}


def test_pipeline_from_yaml_materializes_with_checks_sensor_and_schedule(models, transactions, tmp_path):
    attributes = {
        "name": "yaml_scores",
        "model": "models:/fraud@champion",
        "registry": {"kind": "mlflow", "uri": models.tracking_uri},
        "runtime": {"options": {"onnx": {"threads": 1}}},
        "input": {"uri": str(transactions), "partition_column": "date", "reader": "polars"},
        "output": {"uri": str(tmp_path / "scores"), "compression": "lz4"},
        "partitions": {"daily": {"start_date": DATES[0], "end_date": "2026-11-04"}},
        "passthrough": ["transaction_id"],
        "challenger": {"model": "models:/fraud@challenger", "output": {"uri": str(tmp_path / "challenger")}},
        "checks": {"drift_severity": "error", "min_agreement": 0.5},
        "schedule": {},
        "promotion_sensor": {"rescore": "latest", "latest_n": 2},
    }
    with component_defs(attributes) as (component, defs):
        assert isinstance(component, ScoringPipelineComponent)
        assert [s.name for s in defs.sensors] == ["yaml_scores_promotion"]
        assert [s.name for s in defs.schedules] == ["yaml_scores_schedule"]
        job = defs.resolve_implicit_global_asset_job_def()
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(instance=instance, partition_key=DATES[1])
    assert result.success
    readers = {
        e.asset_key.to_user_string(): e.materialization.metadata["reader"].value
        for e in result.get_asset_materialization_events()
    }
    assert readers["yaml_scores"] == "polars"  # asked for in the YAML; auto would take pyarrow for 20k rows
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        "signature": True,
        "prediction_health": True,
        "score_drift": True,
        "champion_challenger": True,
    }
    scored = pq.read_table(tmp_path / "scores" / f"date={DATES[1]}")
    source = pq.read_table(transactions / f"date={DATES[1]}")
    np.testing.assert_allclose(
        scored["probability_1"].to_numpy(), models.lr.predict_proba(features_of(source))[:, 1], atol=1e-5
    )
    challenger = str(tmp_path / "challenger" / f"date={DATES[1]}" / "part-0.parquet")
    assert read_lineage(challenger)["model_version"] == "2"
    # The output's codec as the YAML says; the challenger's output says none: zstd.
    assert codecs_of(tmp_path / "scores" / f"date={DATES[1]}" / "part-0.parquet")["probability_1"] == "LZ4"
    assert codecs_of(challenger)["probability_1"] == "ZSTD"


def test_demo_location_includes_the_yaml_pipeline(monkeypatch, tmp_path):
    import importlib
    import sys

    monkeypatch.setenv("ML_ASSETS_DEMO_ROOT", str(tmp_path))
    sys.modules.pop("ml_assets.dev.definitions", None)
    defs = importlib.import_module("ml_assets.dev.definitions").defs
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"fraud_scores", "fraud_shadow_scores", "fraud_shadow_scores_challenger"} <= keys
    assert (
        str(tmp_path)
        in defs.resolve_assets_def("fraud_shadow_scores")
        .specs_by_key[dg.AssetKey("fraud_shadow_scores")]
        .metadata["input_dataset"]
    )


def test_yaml_schema_is_generated_from_the_typed_fields():
    schema = ScoringPipelineComponent.model().model_json_schema()
    assert {"name", "model", "input", "output", "challenger", "promotion_sensor", "checks"} <= set(schema["properties"])
    assert set(schema["required"]) == {"name", "model", "input", "output"}
    # The schema names the codecs the writer knows (an editor offers them); templates may stand in for one.
    compression = schema["$defs"]["DatasetConfigModel"]["properties"]["compression"]
    assert {"enum": ["zstd", "lz4", "snappy", "none"], "type": "string"} in compression["anyOf"]
    assert compression["default"] == "zstd"


def test_dg_lists_the_component(tmp_path):
    import json
    import subprocess
    from pathlib import Path

    from tests.conftest import VENV_BIN

    done = subprocess.run(
        [str(Path(VENV_BIN) / "dg"), "list", "components", "--json"],
        capture_output=True, text=True, timeout=180, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    listed = {entry["key"] for entry in json.loads(done.stdout)["items"]}
    assert "ml_assets.dagster.components.ScoringPipelineComponent" in listed


def test_workspace_loads_with_dagsters_own_loader(tmp_path):
    """What `dagster dev -w workspace.yaml` does first: load and validate the code location."""
    import os
    import subprocess
    from pathlib import Path

    from tests.conftest import VENV_BIN

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ML_ASSETS_DEMO_ROOT": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    done = subprocess.run(
        [str(Path(VENV_BIN) / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True, text=True, timeout=180, check=False, cwd=root, env=env,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "All code locations passed validation" in done.stdout + done.stderr


def test_pyfunc_params_from_yaml(tmp_path):
    """``runtime: {options: {pyfunc: {params: {k: 3}}}}`` reaches predict, validated against the ParamSchema."""
    import mlflow.pyfunc
    import pyarrow as pa

    from ml_assets.dev.demo import write_partitioned
    from tests.resources.fixtures.scorecard import customers, register_scorecard, save_scorecard

    uri = register_scorecard(tmp_path / "registry")
    data = customers(800, seed=3)
    write_partitioned(lambda day: pa.Table.from_pandas(data, preserve_index=False), tmp_path / "in", [DATES[0]])
    attributes = {
        "name": "card_scores",
        "model": "models:/card/1",
        "registry": {"kind": "mlflow", "uri": uri},
        "runtime": {"options": {"pyfunc": {"params": {"k": 3}}}},
        "input": {"uri": str(tmp_path / "in"), "partition_column": "date"},
        "output": {"uri": str(tmp_path / "scores")},
        "partitions": {"static": [DATES[0]]},
    }
    with component_defs(attributes) as (_, defs):
        job = defs.resolve_implicit_global_asset_job_def()
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(instance=instance, partition_key=DATES[0])
    assert result.success
    scored = pq.read_table(tmp_path / "scores" / f"date={DATES[0]}").to_pandas()
    local = save_scorecard(tmp_path / "local")  # the same code, saved beside: MLflow's own predict
    theirs = mlflow.pyfunc.load_model(str(local)).predict(data, params={"k": 3})
    np.testing.assert_array_equal(scored["probability_churn"].to_numpy(), theirs["probability_churn"].to_numpy())
    assert scored["label"].tolist() == theirs["label"].tolist()
