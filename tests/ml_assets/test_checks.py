"""Asset checks and champion/challenger through real Dagster materializations."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets import CheckSettings, build_scoring_asset
from ml_assets.checks import ks, psi
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.datasets import ParquetDataset, read_lineage
from ml_assets.dev.demo import FEATURES, make_transactions, register_onnx_model, to_onnx_classifier, write_partitioned
from ml_assets.resources.registries.mlflow import MlflowRegistry
from ml_assets.resources.runtimes.onnx import OnnxRuntime
from ml_assets.scoring import score_partition

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
DAILY = dg.StaticPartitionsDefinition(DAYS)


@pytest.fixture(scope="module")
def registry_uri(models, tmp_path_factory) -> str:
    """'checked' v1 = lr (@champion), v2 = rf (@challenger), v3 = a model that answers a constant."""
    import onnx
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("checks")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    constant = LogisticRegression().fit(models.train_x[:100], np.arange(100) % 2)
    constant.coef_[:] = 0.0
    constant.intercept_[:] = 1.5
    artifacts = (root / "a").as_uri()
    register_onnx_model(
        uri, "checked", onnx.load(str(models.lr_onnx)), FEATURES, artifact_location=artifacts, alias="champion"
    )
    register_onnx_model(
        uri, "checked", onnx.load(str(models.rf_onnx)), FEATURES, artifact_location=artifacts, alias="challenger"
    )
    register_onnx_model(
        uri,
        "checked",
        to_onnx_classifier(constant, len(FEATURES)),
        FEATURES,
        artifact_location=artifacts,
        alias="constant",
    )
    return uri


def resources(uri: str) -> dict:
    return {
        "model_registry": ModelRegistryResource(uri=uri),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }


def dataset(tmp_path: Path, tables: dict[str, pa.Table]) -> Path:
    root = tmp_path / "input"
    write_partitioned(lambda day: tables[day], root, list(tables))
    return root


def run(asset, partition: str, uri: str, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset], partition_key=partition, resources=resources(uri), instance=instance, raise_on_error=False
    )


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def scoring_asset(root: Path, out: Path, **kwargs) -> dg.AssetsDefinition:
    return build_scoring_asset(
        name="checked_scores", model=kwargs.pop("model", "models:/checked@champion"), input_dataset=str(root),
        output_dataset=str(out), partitions_def=DAILY, passthrough=["transaction_id"], **kwargs,
    )  # fmt: skip


def test_all_checks_pass_on_good_data(registry_uri, tmp_path):
    root = dataset(tmp_path, {d: make_transactions(4_000, seed=i + 1) for i, d in enumerate(DAYS[:2])})
    asset = scoring_asset(root, tmp_path / "out")
    with dg.instance_for_test() as instance:
        first, second = run(asset, DAYS[0], registry_uri, instance), run(asset, DAYS[1], registry_uri, instance)
    assert first.success
    assert second.success
    checks = checks_of(second)
    assert {name: c.passed for name, c in checks.items()} == {
        "signature": True,
        "prediction_health": True,
        "score_drift": True,
    }
    drift = checks["score_drift"].metadata
    assert drift["psi_vs_partition"].value < 0.2
    assert drift["ks_vs_partition"].value < 0.1
    assert "nothing to compare with yet" in checks_of(first)["score_drift"].metadata["description"].value


def test_dropped_column_blocks_the_output(registry_uri, tmp_path):
    table = make_transactions(4_000, seed=1).drop_columns(["device_score"])
    root = dataset(tmp_path, {DAYS[0]: table})
    asset = scoring_asset(root, tmp_path / "out")
    with dg.instance_for_test() as instance:
        result = run(asset, DAYS[0], registry_uri, instance)
    assert not result.success
    signature = checks_of(result)["signature"]
    assert not signature.passed
    assert signature.severity == dg.AssetCheckSeverity.ERROR
    assert "missing: device_score (float)" in signature.metadata["description"].value
    assert signature.metadata["missing_columns"].value == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.parquet"))


def test_unexpected_nulls_are_found_from_parquet_statistics(registry_uri, tmp_path):
    table = make_transactions(4_000, seed=1)
    values = table["amount"].to_pylist()
    for i in (5, 500, 3_999):
        values[i] = None
    table = table.set_column(table.schema.get_field_index("amount"), "amount", pa.array(values, pa.float32()))
    root = dataset(tmp_path, {DAYS[0]: table})
    with dg.instance_for_test() as instance:
        result = run(scoring_asset(root, tmp_path / "out"), DAYS[0], registry_uri, instance)
    signature = checks_of(result)["signature"]
    assert not signature.passed
    assert "unexpected nulls: amount (3)" in signature.metadata["description"].value


def test_nan_predictions_fail_prediction_health(registry_uri, tmp_path):
    table = make_transactions(4_000, seed=1)
    values = table["merchant_risk"].to_numpy().copy()
    values[:40] = np.nan  # NaN is a value, not a null: the model turns it into NaN scores
    table = table.set_column(table.schema.get_field_index("merchant_risk"), "merchant_risk", pa.array(values))
    root = dataset(tmp_path, {DAYS[0]: table})
    with dg.instance_for_test() as instance:
        result = run(scoring_asset(root, tmp_path / "out"), DAYS[0], registry_uri, instance)
    health = checks_of(result)["prediction_health"]
    assert not health.passed
    assert "probability_1: 1.00% null/NaN (allowed 0.00%)" in health.metadata["description"].value
    assert health.metadata["probability_1.null_nan_rate"].value == pytest.approx(0.01)
    allowed = scoring_asset(root, tmp_path / "out2", checks=CheckSettings(max_null_rate=0.02))
    with dg.instance_for_test() as instance:
        assert checks_of(run(allowed, DAYS[0], registry_uri, instance))["prediction_health"].passed


def test_shifted_features_fail_drift_against_the_previous_partition(registry_uri, tmp_path):
    shifted = make_transactions(4_000, seed=2)
    for name in ("merchant_risk", "device_score", "amount"):
        shifted = shifted.set_column(shifted.schema.get_field_index(name), name, pa.compute.add(shifted[name], 1.5))
    root = dataset(tmp_path, {DAYS[0]: make_transactions(4_000, seed=1), DAYS[1]: shifted})
    asset = scoring_asset(root, tmp_path / "out", checks=CheckSettings(drift_severity="error"))
    with dg.instance_for_test() as instance:
        run(asset, DAYS[0], registry_uri, instance)
        result = run(asset, DAYS[1], registry_uri, instance)
    drift = checks_of(result)["score_drift"]
    assert not drift.passed
    assert drift.severity == dg.AssetCheckSeverity.ERROR
    assert drift.metadata["psi_vs_partition"].value > 0.2
    assert f"vs previous partition {DAYS[0]}" in drift.metadata["description"].value
    # The numbers are the ones of the histograms stored with each materialization.
    out = [pq.read_table(tmp_path / "out" / f"date={d}")["probability_1"].to_numpy() for d in DAYS[:2]]
    hist = [np.histogram(o, bins=100, range=(0, 1))[0] for o in out]
    assert drift.metadata["psi_vs_partition"].value == pytest.approx(psi(hist[1], hist[0]), rel=0.05)
    assert drift.metadata["ks_vs_partition"].value == pytest.approx(ks(hist[1], hist[0]), abs=0.02)


def test_constant_model_fails_drift_against_the_previous_version(registry_uri, tmp_path):
    root = dataset(tmp_path, {DAYS[0]: make_transactions(4_000, seed=1)})
    client = mlflow.MlflowClient(registry_uri)
    client.set_registered_model_alias("checked", "live", "1")
    asset = scoring_asset(root, tmp_path / "out", model="models:/checked@live")
    try:
        with dg.instance_for_test() as instance:
            assert run(asset, DAYS[0], registry_uri, instance).success
            client.set_registered_model_alias("checked", "live", "3")
            result = run(asset, DAYS[0], registry_uri, instance)
    finally:
        client.delete_registered_model_alias("checked", "live")
    drift = checks_of(result)["score_drift"]
    assert not drift.passed
    assert drift.severity == dg.AssetCheckSeverity.WARN  # the default: shown, not fatal
    assert result.success
    assert drift.metadata["ks_vs_version"].value > 0.5
    assert "vs previous version 1" in drift.metadata["description"].value
    assert read_lineage(str(tmp_path / "out" / f"date={DAYS[0]}" / "part-0.parquet"))["model_version"] == "3"


def test_champion_and_challenger_in_one_pass_match_scoring_each_alone(registry_uri, tmp_path):
    table = make_transactions(6_000, seed=4)
    root = dataset(tmp_path, {DAYS[0]: table})
    asset = scoring_asset(
        root,
        tmp_path / "champion",
        challenger="models:/checked@challenger",
        challenger_output=str(tmp_path / "challenger"),
        checks=CheckSettings(min_agreement=0.5),
    )
    with dg.instance_for_test() as instance:
        result = run(asset, DAYS[0], registry_uri, instance)
    assert result.success
    champion_out = pq.read_table(tmp_path / "champion" / f"date={DAYS[0]}")
    challenger_out = pq.read_table(tmp_path / "challenger" / f"date={DAYS[0]}")

    registry = MlflowRegistry(registry_uri)
    for ref, combined in (("models:/checked@champion", champion_out), ("models:/checked@challenger", challenger_out)):
        version = registry.resolve(ref)
        alone = score_partition(
            OnnxRuntime(threads=1).load(version, registry.fetch(version)), version,
            ParquetDataset(str(root), "date"), ParquetDataset(str(tmp_path / f"alone-{version.version}"), "date"),
            partition=DAYS[0], passthrough=["transaction_id"],
        )  # fmt: skip
        assert pq.read_table(alone.output_uri).equals(combined)

    challenger_event = next(
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("checked_scores_challenger")
    )
    metadata = challenger_event.materialization.metadata
    assert metadata["model_version"].value == "2"
    assert metadata["champion_version"].value == "1"
    agreement = float(np.mean(champion_out["label"].to_numpy() == challenger_out["label"].to_numpy()))
    assert metadata["agreement_with_champion"].value == pytest.approx(agreement)
    mad = float(
        np.mean(
            np.abs(
                champion_out["probability_1"].to_numpy().astype(np.float64) - challenger_out["probability_1"].to_numpy()
            )
        )
    )
    assert metadata["mean_abs_diff_from_champion"].value == pytest.approx(mad, rel=1e-6)
    check = checks_of(result)["champion_challenger"]
    assert check.passed
    assert check.metadata["agreement"].value == pytest.approx(agreement)
    assert check.metadata["psi"].value >= 0


def test_challenger_needs_an_output():
    with pytest.raises(ValueError, match="needs challenger_output"):
        build_scoring_asset(
            name="x", model="models:/m@a", input_dataset="/in", output_dataset="/out", challenger="models:/m@b"
        )


def test_drift_statistics():
    same = [10, 20, 30, 40]
    assert psi(same, same) == pytest.approx(0.0)
    assert ks(same, same) == pytest.approx(0.0)
    assert psi([100, 0, 0, 0], [0, 0, 0, 100]) > 5
    assert ks([100, 0, 0, 0], [0, 0, 0, 100]) == pytest.approx(1.0)
    assert 0 < psi([25, 25, 25, 25], [30, 20, 30, 20]) < 0.1
