"""One real Dagster materialization of a partition per in-process runtime (PMML, H2O MOJO, pyfunc),
with the model registered in the session's MLflow registry and predictions checked against the
runtime's reference scorer."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.dev.demo import FEATURES, make_transactions, write_partitioned
from ml_assets.resources.registries.mlflow import FORMAT_TAG
from tests.conftest import DATES
from tests.resources.fixtures.make_h2o_mojos import training_frame

MOJOS = Path(__file__).parents[1] / "resources" / "fixtures" / "h2o"
PARTITIONS = dg.StaticPartitionsDefinition(DATES)


def register_file_model(tracking_uri: str, name: str, model_file: Path, flavor: str, signature: object) -> str:
    """Logs a folder holding ``model_file`` and an MLmodel naming ``flavor``; registers it; returns the version."""
    import tempfile

    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("ml-assets")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("ml-assets")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        (folder / model_file.name).write_bytes(model_file.read_bytes())
        meta = Model(signature=signature)
        meta.add_flavor(flavor, data=model_file.name)
        meta.save(str(folder / "MLmodel"))
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_artifacts(str(folder), artifact_path="model")
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={FORMAT_TAG: flavor}
    )
    return str(mv.version)


def materialize(
    models,
    name: str,
    model: str,
    input_dataset: Path,
    output: Path,
    options: dict,
    *,
    nulls: str = "pass",
    runtime: str | None = None,
) -> pa.Table:
    asset = build_scoring_asset(
        name=name,
        model=model,
        input_dataset=str(input_dataset),
        output_dataset=str(output),
        partitions_def=PARTITIONS,
        passthrough=["row_id"],
        chunk_rows=4_000,
        nulls=nulls,
    )
    resources = {
        "model_registry": ModelRegistryResource(kind="mlflow", uri=models.tracking_uri),
        "model_runtime": ModelRuntimeResource(runtime=runtime, options=options),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key=DATES[1], resources=resources, instance=instance)
    assert result.success
    (event,) = result.asset_materializations_for_node(name)
    assert event.metadata["model_name"].value == model.split("/")[1]
    return pq.read_table(output / f"date={DATES[1]}")


@pytest.fixture(scope="module")
def numeric_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo transactions with a row id and some missing amounts."""
    root = tmp_path_factory.mktemp("numeric") / "transactions"

    def day(d: str) -> pa.Table:
        table = make_transactions(10_000, seed=DATES.index(d) + 1).drop_columns(["transaction_id"])
        amounts = table["amount"].to_numpy().copy()
        mask = np.random.default_rng(0).random(len(amounts)) < 0.02
        table = table.set_column(table.schema.get_field_index("amount"), "amount", pa.array(amounts, mask=mask))
        return table.append_column("row_id", pa.array(np.arange(len(amounts), dtype=np.int64)))

    write_partitioned(day, root, DATES, row_group_rows=3_000)
    return root


@pytest.mark.slow
def test_pmml_partition(models, numeric_data, tmp_path):
    from mlflow.models import infer_signature
    from pypmml import Model
    from sklearn.ensemble import RandomForestClassifier
    from sklearn2pmml import sklearn2pmml
    from sklearn2pmml.pipeline import PMMLPipeline

    train = make_transactions(3_000, seed=0).to_pandas()
    pipeline = PMMLPipeline([("m", RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0))])
    pipeline.fit(train[FEATURES], train["is_fraud"])
    pmml = tmp_path / "fraud.pmml"
    sklearn2pmml(pipeline, str(pmml))
    register_file_model(models.tracking_uri, "fraud_pmml", pmml, "pmml", infer_signature(train[FEATURES]))

    out = materialize(
        models, "pmml_scores", "models:/fraud_pmml/1", numeric_data, tmp_path / "out", {"pmml": {"threads": 2}}
    )
    source = pq.read_table(numeric_data / f"date={DATES[1]}").to_pandas()
    assert out["row_id"].to_pylist() == source["row_id"].tolist()
    theirs = Model.fromFile(str(pmml)).predict(source[FEATURES])
    np.testing.assert_allclose(out["probability_1"].to_numpy(), theirs["probability(1)"].to_numpy(), rtol=1e-12)


@pytest.mark.slow
def test_h2o_mojo_partition(models, tmp_path):
    import h2o
    from mlflow.models import infer_signature

    from ml_assets.resources.runtimes.h2o import genmodel_jar

    features = ["x0", "x1", "x2", "x3", "color", "size"]
    data = tmp_path / "h2o_input"

    def day(d: str) -> pa.Table:
        df = training_frame(5_000, seed=DATES.index(d) + 20)[features].round(6)
        df["row_id"] = np.arange(len(df))
        return pa.Table.from_pandas(df, preserve_index=False)

    write_partitioned(day, data, DATES, row_group_rows=2_000)
    signature = infer_signature(training_frame(10, seed=1)[features])
    register_file_model(models.tracking_uri, "gbm_mojo", MOJOS / "binomial.zip", "h2o_mojo", signature)

    out = materialize(models, "mojo_scores", "models:/gbm_mojo/1", data, tmp_path / "out", {"h2o_mojo": {"threads": 2}})
    source = pq.read_table(data / f"date={DATES[1]}").to_pandas()
    theirs = h2o.mojo_predict_pandas(
        source[features], str(MOJOS / "binomial.zip"), genmodel_jar_path=str(genmodel_jar())
    )
    assert out["row_id"].to_pylist() == source["row_id"].tolist()
    np.testing.assert_array_equal(out["probability_1"].to_numpy(), theirs["p1"].to_numpy())
    assert out["label"].to_pylist() == theirs["predict"].astype(int).tolist()


@pytest.mark.slow
def test_pyfunc_partition(models, numeric_data, tmp_path):
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    train = make_transactions(3_000, seed=0).to_pandas()
    x = train[FEATURES].astype(np.float64)
    model = LogisticRegression(max_iter=500).fit(x, train["is_fraud"])
    mlflow.set_tracking_uri(models.tracking_uri)
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(x, model.predict(x)), registered_model_name="fraud_pyfunc"
        )

    data = tmp_path / "pyfunc_input"

    def day(d: str) -> pa.Table:
        table = make_transactions(8_000, seed=DATES.index(d) + 1).drop_columns(["transaction_id"])
        return table.append_column("row_id", pa.array(np.arange(table.num_rows, dtype=np.int64)))

    write_partitioned(day, data, DATES, row_group_rows=3_000)
    out = materialize(
        models,
        "pyfunc_scores",
        "models:/fraud_pyfunc/1",
        data,
        tmp_path / "out",
        {"pyfunc": {"isolation": "process", "workers": 2}},
        nulls="error",
        runtime="pyfunc",  # an sklearn model is scored natively by default (test_native_runtime.py)
    )
    source = pq.read_table(data / f"date={DATES[1]}").to_pandas()
    assert out["row_id"].to_pylist() == source["row_id"].tolist()
    expected = mlflow.pyfunc.load_model("models:/fraud_pyfunc/1").predict(source[FEATURES].astype(np.float64))
    np.testing.assert_array_equal(out["prediction"].to_numpy(), expected)
