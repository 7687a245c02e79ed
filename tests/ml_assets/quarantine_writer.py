"""A quarantine run as its own process, so a test can SIGKILL it at each point of its two commits.

Usage: python quarantine_writer.py SPEC_JSON. Scores partition ``date=<partition>`` of ``input`` with the
ONNX model at ``model`` into ``output`` with ``on_row_error="quarantine"``. At ``pause_at`` (``before-N`` /
``after-N``: before or after the N-th commit of the run; the errors' is the first) it creates ``marker``
and sleeps until killed. The test's own wrapper of ``AtomicPartitionWriter.commit`` finds the points.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

from ml_assets.datasets import AtomicPartitionWriter, ParquetDataset
from ml_assets.dev.demo import FEATURES
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.runtimes.onnx import OnnxRuntime
from ml_assets.scoring import score_partition


def main(spec: dict) -> None:
    def reached(point: str) -> None:
        if spec.get("pause_at") == point:
            Path(spec["marker"]).write_text(point)
            time.sleep(600)

    commit = AtomicPartitionWriter.commit
    numbers = itertools.count(1)

    def paused_commit(self: AtomicPartitionWriter) -> str:
        n = next(numbers)
        reached(f"before-{n}")
        uri = commit(self)
        reached(f"after-{n}")
        return uri

    AtomicPartitionWriter.commit = paused_commit  # type: ignore[method-assign]
    version = ModelVersion(name="fraud", version="1", format="onnx", artifact_uri="file:///m", registry="test")
    scorer = OnnxRuntime(features=FEATURES).load(version, Path(spec["model"]))
    score_partition(
        scorer,
        version,
        ParquetDataset(spec["input"], partition_column="date"),
        ParquetDataset(spec["output"], partition_column="date"),
        partition=spec["partition"],
        passthrough=["transaction_id"],
        on_row_error="quarantine",
        max_error_rows=100,
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
