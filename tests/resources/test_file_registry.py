"""The file registry on a local folder and on a real S3-compatible server (moto), through Dagster."""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ml_assets.cli import main as cli
from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.datasets import ParquetDataset, read_lineage
from ml_assets.resources.core.cache import MANIFEST as CACHE_MANIFEST
from ml_assets.resources.core.cache import tree_checksum
from ml_assets.resources.core.errors import ArtifactError, ModelNotFoundError, ModelRefError, RegistryUnavailableError
from ml_assets.resources.core.plugins import create_registry
from ml_assets.resources.registries.file import FileRegistry
from tests.conftest import DATES, features_of
from tests.resources.conftest import SIGNATURE, seed_file_registry


@pytest.mark.parametrize(
    ("ref", "version", "algo"),
    [
        ("models:/fraud@champion", "1", "lr"),
        ("models:/fraud@challenger", "2", "rf"),
        ("models:/fraud/Production", "1", "lr"),
        ("models:/fraud/staging", "2", "rf"),
        ("models:/fraud/1", "1", "lr"),
        ("models:/fraud/latest", "2", "rf"),
        ("fraud@champion", "1", "lr"),
    ],
)
def test_resolves_every_ref_form(file_registry_root, ref, version, algo):
    resolved = FileRegistry(file_registry_root).resolve(ref)
    assert (resolved.name, resolved.version, resolved.format) == ("fraud", version, "onnx")
    assert resolved.tags == {"algo": algo}
    assert resolved.ref == ref
    assert resolved.registry == f"file:{file_registry_root}"
    assert resolved.signature.input_names[:2] == ["amount", "hour_of_day"]
    assert resolved.checksum.startswith("sha256:")
    assert resolved.created_at is not None


def test_found_through_entry_point_and_half_written_versions_are_invisible(file_registry_root):
    registry = create_registry("file", str(file_registry_root))
    assert isinstance(registry, FileRegistry)
    assert registry.list_models() == ["fraud"]
    versions = registry.list_versions("fraud")
    assert [(v.version, v.aliases, v.stage) for v in versions] == [
        ("1", ("champion",), "Production"),
        ("2", ("challenger",), "Staging"),
    ]
    assert (file_registry_root / "fraud" / "3").is_dir()  # there, but without a manifest
    assert (file_registry_root / "fraud" / "4" / "manifest.json").is_file()  # cut off mid-write


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("models:/fraud@nope", r"no alias 'nope'.*aliases: challenger, champion; stages: Production, Staging"),
        ("models:/fraud/Archived", r"no version in stage 'Archived'.*stages: Production, Staging"),
        ("models:/fraud/3", r"no version 3 .*versions: 1, 2$"),
        ("models:/frau@champion", r"no model named 'frau' in file registry .*models: fraud"),
    ],
)
def test_unknown_things_name_the_registry_and_what_exists(file_registry_root, ref, expected):
    with pytest.raises(ModelNotFoundError, match=expected) as caught:
        FileRegistry(file_registry_root).resolve(ref)
    assert str(file_registry_root) in str(caught.value)


@pytest.mark.parametrize("name", ["..", "a..b", "../etc", "/etc", "a/b", "a\\b", ".hidden", ""])
def test_unsafe_names_are_rejected(writable_registry, models, name):
    with pytest.raises(ModelRefError):
        writable_registry.publish(name, models.lr_onnx)
    with pytest.raises(ModelRefError):
        writable_registry.list_versions(name)
    with pytest.raises(ModelRefError):
        writable_registry.promote("fraud", "1", alias=name or "..")


def test_missing_root_is_an_outage_not_a_missing_model(tmp_path):
    registry = FileRegistry(tmp_path / "not-mounted")
    with pytest.raises(RegistryUnavailableError, match=r"root folder does not exist"):
        registry.resolve("models:/fraud@champion")


def test_promotion_moves_alias_and_archives_the_previous_stage_holder(writable_registry):
    registry = writable_registry
    registry.promote("fraud", "2", alias="champion", stage="Production")
    assert registry.resolve("models:/fraud@champion").version == "2"
    assert registry.resolve("models:/fraud/Production").version == "2"
    by_version = {v.version: v for v in registry.list_versions("fraud")}
    assert by_version["1"].stage == "Archived"
    assert by_version["2"].aliases == ("challenger", "champion")
    model_json = Path(registry.root) / "fraud" / "model.json"
    state = json.loads(model_json.read_text())
    assert state["aliases"] == {"challenger": "2", "champion": "2"}
    assert state["revision"] == 3
    assert not [p for p in model_json.parent.iterdir() if p.name.startswith(".tmp-")]
    registry.promote("fraud", "1", stage="None")
    assert registry.resolve("models:/fraud/1").stage is None
    with pytest.raises(ModelNotFoundError, match=r"no version 9 .*versions: 1, 2"):
        registry.promote("fraud", "9", alias="champion")


def test_concurrent_promotions_lose_no_update(writable_registry):
    aliases = [f"a{i}" for i in range(8)]
    threads = [
        threading.Thread(target=FileRegistry(writable_registry.root).promote, args=("fraud", "1"), kwargs={"alias": a})
        for a in aliases
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(aliases) <= set(writable_registry.resolve("models:/fraud/1").aliases)


def test_fetch_caches_verifies_and_refetches_a_corrupt_copy(file_registry_root, tmp_path):
    registry = FileRegistry(file_registry_root, cache_dir=tmp_path)
    version = registry.resolve("models:/fraud@champion")
    path = registry.fetch(version)
    assert sorted(p.name for p in path.iterdir()) == [CACHE_MANIFEST, "lr.onnx"]
    assert tree_checksum(path / "lr.onnx") == version.checksum
    assert registry.fetch(version) == path
    original = (path / "lr.onnx").read_bytes()
    (path / "lr.onnx").write_bytes(original[:100])
    assert (registry.fetch(version) / "lr.onnx").read_bytes() == original


def test_a_corrupt_published_file_is_refused_and_nothing_is_cached(writable_registry, tmp_path):
    model_file = Path(writable_registry.root) / "fraud" / "2" / "rf.onnx"
    data = bytearray(model_file.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    model_file.write_bytes(bytes(data))
    registry = FileRegistry(writable_registry.root, cache_dir=tmp_path / "cache")
    version = registry.resolve("models:/fraud/2")
    with pytest.raises(ArtifactError, match=r"model 'fraud' version 2: file 'rf.onnx' does not match the sha256"):
        registry.fetch(version)
    assert not registry.cache.path_for(version).exists()


def test_a_republished_version_is_not_served_from_a_stale_cache(writable_registry, models, tmp_path):
    registry = FileRegistry(writable_registry.root, cache_dir=tmp_path / "cache")
    first = registry.fetch(registry.resolve("models:/fraud/2"))
    assert (first / "rf.onnx").is_file()
    import shutil

    shutil.rmtree(Path(writable_registry.root) / "fraud" / "2")
    FileRegistry(writable_registry.root).publish("fraud", models.lr_onnx, version="2", signature=SIGNATURE)
    again = FileRegistry(writable_registry.root, cache_dir=tmp_path / "cache")
    path = again.fetch(again.resolve("models:/fraud/2"))
    assert sorted(p.name for p in path.iterdir()) == [CACHE_MANIFEST, "lr.onnx"]


def test_publish_a_folder_and_detect_its_format(writable_registry, models, tmp_path):
    folder = tmp_path / "exported"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(models.lr_onnx.read_bytes())
    (folder / "sub" / "notes.txt").write_text("trained on 5k rows")
    published = writable_registry.publish("fraud_folder", folder, tags={"team": "risk"})
    assert (published.version, published.format, published.tags) == ("1", "onnx", {"team": "risk"})
    assert published.checksum == tree_checksum(folder)
    path = writable_registry.fetch(published)
    assert (path / "sub" / "notes.txt").read_text() == "trained on 5k rows"
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactError, match="reserved"):
        writable_registry.publish("fraud_folder", folder)


def _fetch_in_process(root: str, cache_dir: str, queue: multiprocessing.Queue) -> None:
    registry = FileRegistry(root, cache_dir=cache_dir)
    queue.put(str(registry.fetch(registry.resolve("models:/fraud/2"))))


def test_concurrent_fetches_from_several_processes_agree(file_registry_root, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_fetch_in_process, args=(str(file_registry_root), str(tmp_path), queue)) for _ in range(3)
    ]
    for w in workers:
        w.start()
    paths = {queue.get(timeout=120) for _ in workers}
    for w in workers:
        w.join(timeout=60)
    assert len(paths) == 1
    assert not [p for p in Path(paths.pop()).parent.iterdir() if p.name.startswith(".tmp-")]


def test_cli_lists_promotes_and_publishes(writable_registry, models):
    runner = CliRunner()
    where = ["--registry", "file", "--registry-uri", writable_registry.root]
    listed = runner.invoke(cli, ["models", "list", *where])
    assert (listed.exit_code, listed.output) == (0, "fraud\n")
    versions = runner.invoke(cli, ["models", "versions", "fraud", *where])
    assert versions.exit_code == 0
    rows = [line.split("\t")[:4] for line in versions.output.splitlines()]
    assert rows == [
        ["version", "format", "aliases", "stage"],
        ["1", "onnx", "champion", "Production"],
        ["2", "onnx", "challenger", "Staging"],
    ]
    promoted = runner.invoke(cli, ["models", "promote", "fraud", "2", "--alias", "champion", *where])
    assert promoted.exit_code == 0, promoted.output
    assert writable_registry.resolve("models:/fraud@champion").version == "2"
    published = runner.invoke(
        cli,
        ["models", "publish", "fraud", str(models.lr_onnx), "--inputs", "amount:float,hour_of_day:float",
         "--tag", "algo=lr", "--alias", "shadow", *where],
    )  # fmt: skip
    assert published.exit_code == 0, published.output
    shadow = writable_registry.resolve("models:/fraud@shadow")
    # 3 and 4 are taken by half-written folders: a number is never reused
    assert (shadow.version, shadow.signature.input_names, shadow.tags) == (
        "5",
        ["amount", "hour_of_day"],
        {"algo": "lr"},
    )
    failed = runner.invoke(cli, ["models", "promote", "fraud", "7", "--stage", "Production", *where])
    assert failed.exit_code == 1
    assert "has no version 7" in failed.output
    assert "versions: 1, 2, 5" in failed.output


def test_cli_promotes_in_mlflow(models, tmp_path):
    import shutil

    shutil.copy(models.root / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["models", "promote", "fraud", "2", "--alias", "champion", "--stage", "Production", "--registry-uri", uri]
    )
    assert result.exit_code == 0, result.output
    registry = create_registry("mlflow", uri)
    assert registry.resolve("models:/fraud@champion").version == "2"
    assert registry.resolve("models:/fraud/Production").version == "2"
    assert registry.resolve("models:/fraud/1").stage == "Archived"
    listed = runner.invoke(cli, ["models", "versions", "fraud", "--registry-uri", uri])
    assert "2\tonnx\tchallenger,champion\tProduction" in listed.output


DAILY = dg.DailyPartitionsDefinition(start_date=DATES[0], end_date="2026-11-04")


def test_materializes_a_partition_with_a_model_from_the_file_registry(
    models, transactions, file_registry_root, tmp_path
):
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@challenger",
        input_dataset=str(transactions),
        output_dataset=str(tmp_path / "scores"),
        partitions_def=DAILY,
    )
    resources = {
        "model_registry": ModelRegistryResource(
            kind="file", uri=str(file_registry_root), cache_dir=str(tmp_path / "c")
        ),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key=DATES[1], resources=resources, instance=instance)
    (event,) = result.asset_materializations_for_node("fraud_scores")
    meta = {k: v.value for k, v in event.metadata.items()}
    assert (meta["model_version"], meta["registry"]) == ("2", f"file:{file_registry_root}")
    assert meta["model_aliases"] == "challenger"
    output = tmp_path / "scores" / f"date={DATES[1]}" / "part-0.parquet"
    expected = models.rf.predict_proba(features_of(pq.read_table(transactions / f"date={DATES[1]}")))[:, 1]
    np.testing.assert_allclose(pq.read_table(output)["probability_1"].to_numpy(), expected, atol=1e-5)


def test_s3_registry_and_s3_data_through_dagster(models, transactions, s3_server, tmp_path):
    """Registry, input partitions and output all on the S3 server: the output is committed whole."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=s3_server["key"], secret=s3_server["secret"], client_kwargs={"endpoint_url": s3_server["endpoint_url"]}
    )
    bucket = f"ml-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    for day in DATES[:2]:
        fs.put_file(str(transactions / f"date={day}" / "part-0.parquet"), f"{bucket}/data/date={day}/part-0.parquet")
    registry = seed_file_registry(f"s3://{bucket}/registry", models, **s3_server)
    assert registry.list_models() == ["fraud"]
    assert [v.version for v in registry.list_versions("fraud")] == ["1", "2"]  # v3/v4 half-written on S3 too
    registry.promote("fraud", "2", alias="champion")
    assert json.loads(fs.cat_file(f"{bucket}/registry/fraud/model.json"))["aliases"]["champion"] == "2"
    opts = dict(s3_server)
    asset = build_scoring_asset(
        name="fraud_scores",
        model="models:/fraud@champion",
        input_dataset=ParquetDataset(f"s3://{bucket}/data", partition_column="date", storage_options=opts),
        output_dataset=ParquetDataset(f"s3://{bucket}/scores", partition_column="date", storage_options=opts),
        partitions_def=DAILY,
        passthrough=["transaction_id"],
    )
    resources = {
        "model_registry": ModelRegistryResource(
            kind="file", uri=f"s3://{bucket}/registry", cache_dir=str(tmp_path), options={"storage_options": opts}
        ),
        "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}}),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key=DATES[0], resources=resources, instance=instance)
    (event,) = result.asset_materializations_for_node("fraud_scores")
    output = f"s3://{bucket}/scores/date={DATES[0]}/part-0.parquet"
    assert event.metadata["output"].value == output
    assert event.metadata["model_version"].value == "2"
    fs.invalidate_cache()
    assert fs.ls(f"{bucket}/scores/date={DATES[0]}") == [output.removeprefix("s3://")]  # no temporary object left
    with fs.open(output, "rb") as f:
        scored = pq.read_table(f)
    source = pq.read_table(transactions / f"date={DATES[0]}")
    assert scored["transaction_id"].equals(source["transaction_id"])
    np.testing.assert_allclose(
        scored["probability_1"].to_numpy(), models.rf.predict_proba(features_of(source))[:, 1], atol=1e-5
    )
    assert read_lineage(output, opts)["model_version"] == "2"
    assert s3_server["secret"] not in json.dumps({k: str(v.value) for k, v in event.metadata.items()})
