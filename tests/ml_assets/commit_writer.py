"""A writer run as its own process, so a test can SIGKILL it at a chosen point of the commit protocol.

Usage: python commit_writer.py SPEC_JSON. It writes ``rows`` rows whose ``score`` is ``value`` into
partition ``date=<partition>`` of ``uri`` and, at the point named by ``pause_at`` (opened, mid, written),
creates ``marker`` and sleeps until killed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ml_assets.datasets import AtomicPartitionWriter, ParquetDataset

PADDING = 3
SCHEMA = pa.schema([("id", pa.int64()), ("score", pa.float64()), *((f"pad{i}", pa.float64()) for i in range(PADDING))])


def batches(rows: int, value: float, per_batch: int = 50_000):
    rng = np.random.default_rng(0)
    for start in range(0, rows, per_batch):
        n = min(per_batch, rows - start)
        # incompressible padding (random bits: uniform doubles share their exponent bytes, which
        # byte-stream-split + zstd compress), so a few hundred thousand rows fill several multipart parts
        yield pa.record_batch(
            [pa.array(np.arange(start, start + n)), pa.array(np.full(n, value))]
            + [pa.array(np.frombuffer(rng.bytes(8 * n), dtype=np.float64)) for _ in range(PADDING)],
            schema=SCHEMA,
        )


def main(spec: dict) -> None:
    def reached(point: str) -> None:
        if spec.get("pause_at") == point:
            writer._flush()  # what was handed to the encoding thread is out before the kill
            Path(spec["marker"]).write_text(point)
            time.sleep(600)

    dataset = ParquetDataset(spec["uri"], partition_column="date", storage_options=spec.get("storage_options") or {})
    writer = AtomicPartitionWriter(dataset, spec["partition"], SCHEMA, {"value": spec["value"]})
    writer.ROW_GROUP_ROWS = 50_000  # flush often: the mid-write kill finds row groups (and parts) already out
    reached("opened")
    total = spec["rows"]
    for batch in batches(total, spec["value"]):
        writer.write(batch)
        if writer.rows >= total // 2:
            reached("mid")
    writer._flush()
    reached("written")
    writer.commit()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
