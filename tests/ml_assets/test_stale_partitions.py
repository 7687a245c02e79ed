"""Stale partitions from the outputs' lineage alone (what the Airflow task uses: no scheduler database)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.datasets import ParquetDataset
from ml_assets.promotion import output_file, scored_partitions, stale_partitions
from ml_assets.scoring import score_partition
from ml_assets.service import ModelService
from tests.conftest import DATES


@pytest.mark.parametrize("layout", ["hive", "folder template", "file template"])
def test_stale_partitions_are_those_another_version_wrote(models, transactions, tmp_path, layout):
    output = {
        "hive": ParquetDataset(str(tmp_path / "hive"), partition_column="date"),
        "folder template": ParquetDataset(str(tmp_path / "folders") + "/{date}/"),
        "file template": ParquetDataset((tmp_path / "files").as_uri() + "/{date}.parquet"),
    }[layout]
    source = ParquetDataset(str(transactions), partition_column="date")
    with ModelService.from_uri("mlflow", models.tracking_uri) as service:
        v1, v2 = service.resolve("models:/fraud/1"), service.resolve("models:/fraud/2")
        for day, version in zip(DATES[:2], (v1, v2), strict=True):
            score_partition(service.load(version), version, source, output, partition=day)
    # A partition written by something else (no lineage) and a run in flight (temporary name).
    foreign = Path(output_file(output, DATES[2]).removeprefix("file://"))
    foreign.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": [1]}), foreign)
    (foreign.parent / "_inprogress-0123456789ab-part-0.parquet").write_bytes(b"partial")

    assert scored_partitions(output) == DATES
    assert stale_partitions(output, v2) == [DATES[0], DATES[2]]
    assert stale_partitions(output, v1) == [DATES[1], DATES[2]]
    assert stale_partitions(output, v2, partitions=[DATES[1], DATES[2], "2027-01-01"]) == [DATES[2]]
