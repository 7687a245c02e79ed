"""Direct refs: a model file named by URL, versioned by its content, scored without a registry."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq

from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.datasets import read_lineage
from ml_assets.dev.demo import FEATURES
from ml_assets.resources.registries.direct import DirectFiles
from tests.conftest import DATES, VENV_BIN, features_of


def content_version(path: Path) -> str:
    return "sha256-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_cli_scores_a_local_model_file(models, transactions, tmp_path):
    done = subprocess.run(
        [
            str(Path(VENV_BIN) / "ml-assets"), "score", models.lr_onnx.as_uri(), str(transactions), str(tmp_path / "out"),
            "--partition", f"date={DATES[0]}", "--features", ",".join(FEATURES), "--quiet",
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    version = content_version(models.lr_onnx)
    assert f"model lr version {version} ({models.lr_onnx.as_uri()})" in done.stdout
    out = tmp_path / "out" / f"date={DATES[0]}" / "part-0.parquet"
    expected = models.lr.predict_proba(features_of(pq.read_table(transactions / f"date={DATES[0]}")))[:, 1]
    np.testing.assert_allclose(pq.read_table(out)["probability_1"].to_numpy(), expected, atol=1e-5)
    assert read_lineage(str(out))["model_uri"] == models.lr_onnx.as_uri()


def test_same_content_on_s3_is_the_same_version_and_a_change_is_a_new_one(models, s3_server, tmp_path):
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_server["endpoint_url"]}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("models")
    fs.put(str(models.rf_onnx), "models/fraud.onnx")
    direct = DirectFiles(cache_dir=tmp_path / "cache", storage_options=options)
    version = direct.resolve("s3://models/fraud.onnx")
    assert (version.name, version.format, version.version) == ("fraud", "onnx", content_version(models.rf_onnx))
    assert direct.fetch(version).read_bytes() == models.rf_onnx.read_bytes()
    fs.put(str(models.lr_onnx), "models/fraud.onnx")
    assert direct.resolve("s3://models/fraud.onnx").version == content_version(models.lr_onnx)


def test_a_direct_ref_in_a_scoring_asset(models, transactions, tmp_path):
    model_file = tmp_path / "fraud.onnx"
    shutil.copy(models.lr_onnx, model_file)
    asset = build_scoring_asset(
        name="direct_scores", model=str(model_file), input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"), partitions_def=dg.StaticPartitionsDefinition(DATES),
    )  # fmt: skip
    resources = {
        "model_registry": ModelRegistryResource(cache_dir=str(tmp_path / "cache")),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"features": FEATURES}}),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key=DATES[2], resources=resources, instance=instance)
    metadata = result.asset_materializations_for_node("direct_scores")[0].metadata
    assert metadata["model_version"].value == content_version(models.lr_onnx)
    assert metadata["model_uri"].value == str(model_file)
