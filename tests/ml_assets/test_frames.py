"""Scoring Polars and Arrow frames with the core's pipeline: real ONNX models, compared with onnxruntime."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets import ModelService, ParquetDataset, iter_scored_batches, read_lineage, score_frame, score_partition
from ml_assets.dev.demo import FEATURES
from ml_assets.resources.core.errors import DatasetError, SchemaMismatchError
from ml_assets.service import LoadedModel
from tests.conftest import ROWS_PER_DAY, features_of

DAY = "2026-11-02"


class CountingScorer:
    """The real ONNX scorer, recording the size of every batch it is asked to score."""

    def __init__(self, scorer) -> None:
        self._scorer = scorer
        self.input_schema = scorer.input_schema
        self.output_schema = scorer.output_schema
        self.concurrency = getattr(scorer, "concurrency", 1)
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        with self._lock:
            self.sizes.append(batch.num_rows)
        return self._scorer.score(batch)

    def close(self) -> None:
        self._scorer.close()


@pytest.fixture(scope="module")
def service(models):
    with ModelService.from_uri("mlflow", models.tracking_uri) as opened:
        yield opened


@pytest.fixture(scope="module")
def champion(service) -> LoadedModel:
    return service.open("models:/fraud@champion")


@pytest.fixture
def counting(champion) -> tuple[LoadedModel, CountingScorer]:
    scorer = CountingScorer(champion.scorer)
    return LoadedModel(champion.version, scorer), scorer


@pytest.fixture(scope="module")
def day(transactions) -> pa.Table:
    return pq.read_table(transactions / f"date={DAY}")


@pytest.fixture(scope="module")
def reference(models, day) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probability of class 1) from onnxruntime itself on the same rows."""
    labels, probabilities = ort.InferenceSession(str(models.lr_onnx)).run(None, {"X": features_of(day)})
    return labels, probabilities[:, 1]


def test_polars_dataframe_in_polars_dataframe_out(champion, day, reference):
    # Features as Float64, as Polars users often have them: cast safely to the model's float32.
    df = pl.from_arrow(day).with_columns(pl.col(FEATURES).cast(pl.Float64))
    scored = score_frame(champion, df, chunk_rows=3_000, passthrough=["transaction_id"], version_column="model_version")
    assert isinstance(scored.frame, pl.DataFrame)
    assert scored.frame.columns == ["transaction_id", "label", "probability_0", "probability_1", "model_version"]
    assert (scored.rows, scored.chunks) == (ROWS_PER_DAY, 7)
    np.testing.assert_array_equal(scored.frame["transaction_id"].to_numpy(), day["transaction_id"].to_numpy())
    np.testing.assert_array_equal(scored.frame["label"].to_numpy(), reference[0])
    np.testing.assert_array_equal(scored.frame["probability_1"].to_numpy(), reference[1])
    assert scored.frame["model_version"].cast(pl.String).unique().to_list() == ["1"]
    assert scored.lineage()["model_uri"] == "models:/fraud/1"
    stats = scored.summary.as_dict()["probability_1"]
    assert stats["count"] == ROWS_PER_DAY
    assert stats["mean"] == pytest.approx(float(reference[1].mean()), rel=1e-6)
    assert sum(stats["histogram"]) == ROWS_PER_DAY
    assert scored.rows_per_second > 0


def test_lazyframe_is_streamed_in_bounded_chunks(counting, transactions, reference):
    model, scorer = counting
    lazy = pl.scan_parquet(transactions / "**/*.parquet", hive_partitioning=True).filter(
        pl.col("date") == dt.date(2026, 11, 2)
    )
    scored = score_frame(model, lazy, chunk_rows=4_096, passthrough=["transaction_id", "date"])
    assert isinstance(scored.frame, pl.DataFrame)
    # Every model call got one chunk of exactly chunk_rows rows but the last, never the whole frame.
    assert scorer.sizes == [4_096] * 4 + [ROWS_PER_DAY - 4 * 4_096]
    assert scored.chunks == 5
    assert scored.frame["date"].unique().to_list() == [dt.date(2026, 11, 2)]
    np.testing.assert_array_equal(scored.frame["probability_1"].to_numpy(), reference[1])


def test_stopping_early_stops_reading_and_scoring(counting, transactions):
    model, scorer = counting
    lazy = pl.scan_parquet(transactions / "**/*.parquet", hive_partitioning=True)  # 60,000 rows
    with iter_scored_batches(model, lazy, chunk_rows=1_000, queue_depth=1) as scored:
        first = next(scored)
    assert first.num_rows == 1_000
    assert scored.chunks == 1
    # One chunk handed over, one queued, one being prepared: not the 60 chunks of the frame.
    assert 1 <= len(scorer.sizes) <= 4


def test_arrow_table_in_arrow_table_out_with_lineage(champion, day, reference, tmp_path):
    scored = score_frame(champion, day, chunk_rows=8_000, passthrough=["transaction_id"])
    assert isinstance(scored.frame, pa.Table)
    assert scored.frame.column_names == ["transaction_id", "label", "probability_0", "probability_1"]
    np.testing.assert_array_equal(scored.frame["probability_1"].to_numpy(), reference[1])
    # The lineage rides in the schema metadata, so a plain Parquet write records it.
    pq.write_table(scored.frame, tmp_path / "scores.parquet")
    lineage = read_lineage(str(tmp_path / "scores.parquet"))
    assert (lineage["model_name"], lineage["model_version"]) == ("fraud", "1")


def test_record_batch_reader_small_batches_are_joined_into_chunks(counting, day, reference):
    model, scorer = counting
    reader = pa.RecordBatchReader.from_batches(day.schema, day.to_batches(max_chunksize=777))
    scored = score_frame(model, reader, chunk_rows=5_000, passthrough=["transaction_id"])
    assert isinstance(scored.frame, pa.Table)
    assert scorer.sizes == [5_000] * 4
    np.testing.assert_array_equal(scored.frame["transaction_id"].to_numpy(), day["transaction_id"].to_numpy())
    np.testing.assert_array_equal(scored.frame["probability_1"].to_numpy(), reference[1])


def test_iter_scored_batches_sinks_to_parquet(champion, transactions, tmp_path, reference):
    lazy = pl.scan_parquet(transactions / f"date={DAY}" / "*.parquet")
    path = tmp_path / "scores.parquet"
    scored = iter_scored_batches(champion, lazy, chunk_rows=6_000, passthrough=["transaction_id"])
    with scored, pq.ParquetWriter(path, scored.schema) as writer:
        for batch in scored:
            assert batch.num_rows <= 6_000
            writer.write_batch(batch)
    assert (scored.rows, scored.chunks) == (ROWS_PER_DAY, 4)
    np.testing.assert_array_equal(pq.read_table(path)["probability_1"].to_numpy(), reference[1])
    assert read_lineage(str(path))["model_version"] == "1"


def test_same_output_as_score_partition(champion, transactions, day, tmp_path):
    partition = score_partition(
        champion.scorer, champion.version,
        ParquetDataset(str(transactions), partition_column="date"),
        ParquetDataset(str(tmp_path / "out"), partition_column="date"),
        partition=DAY, chunk_rows=4_096, passthrough=["transaction_id"], version_column="model_version",
    )  # fmt: skip
    frame = score_frame(champion, day, chunk_rows=4_096, passthrough=["transaction_id"], version_column="model_version")
    written = pq.read_table(partition.output_uri)
    assert written.schema.remove_metadata() == frame.frame.schema.remove_metadata()
    assert written.replace_schema_metadata(None).equals(frame.frame.replace_schema_metadata(None))
    assert partition.summary.as_dict() == frame.summary.as_dict()
    assert read_lineage(partition.output_uri)["model_uri"] == frame.lineage()["model_uri"]


def test_nulls_name_the_chunk_rows_and_column(champion, day):
    values = day["device_score"].to_pylist()
    values[5_000] = None
    df = pl.from_arrow(day).with_columns(pl.Series("device_score", values, dtype=pl.Float32))
    with pytest.raises(
        SchemaMismatchError,
        match=r"^frame, chunk 2 \(rows 4096-6143\): column 'device_score' has 1 null\(s\), the first at row 5000; "
        r"the model expects no nulls",
    ):
        score_frame(champion, df, chunk_rows=2_048)
    # Asked for, nulls reach the model as missing values instead.
    assert score_frame(champion, df, chunk_rows=2_048, nulls="pass").rows == ROWS_PER_DAY


def test_value_that_cannot_be_cast_safely_names_chunk_and_column(champion, day):
    cents = np.round(day["amount"].to_numpy() * 100).astype(np.int64)
    cents[9_000] = 2**40 + 1
    lazy = pl.from_arrow(day).lazy().with_columns(pl.Series("amount", cents))
    with pytest.raises(SchemaMismatchError) as caught:
        score_frame(champion, lazy, chunk_rows=4_096, name="features")
    assert "features, chunk 2 (rows 8192-12287): column 'amount' (int64) cannot be cast safely to float" in str(
        caught.value
    )


def test_missing_and_uncastable_columns(champion, day):
    with pytest.raises(SchemaMismatchError, match=r"^frame: model 'fraud' version 1 needs column\(s\) merchant_risk"):
        score_frame(champion, pl.from_arrow(day).drop("merchant_risk"))
    with pytest.raises(
        SchemaMismatchError, match=r"column hour_of_day is list\[i64\]|column hour_of_day is large_list"
    ):
        score_frame(champion, pl.from_arrow(day).with_columns(pl.lit([1]).alias("hour_of_day")))
    with pytest.raises(SchemaMismatchError, match=r"passthrough column 'nope' is not in the data"):
        score_frame(champion, day, passthrough=["nope"])


def test_a_failing_query_names_the_chunk(champion, day):
    # Polars fails on the third chunk while streaming: a strict cast of a value that does not fit.
    risky = np.zeros(day.num_rows, dtype=np.int64)
    risky[9_000] = 1_000
    lazy = pl.from_arrow(day).lazy().with_columns(pl.Series("small", risky)).with_columns(pl.col("small").cast(pl.Int8))
    with pytest.raises(DatasetError, match=r"^frame: reading chunk \d+ \(from row \d+\) failed: .*"):
        score_frame(champion, lazy, chunk_rows=4_096, passthrough=["small"])
    with pytest.raises(DatasetError, match=r"^frame: the LazyFrame's query does not resolve: .*nope"):
        score_frame(champion, pl.from_arrow(day).lazy().select("nope"))


def test_what_is_not_a_frame(champion, day):
    with pytest.raises(TypeError, match=r"cannot score a builtins.dict; expected a polars.DataFrame, polars.LazyFrame"):
        score_frame(champion, {"amount": [1.0]})
    with pytest.raises(ValueError, match="chunk_rows must be an integer from 1 to 16,777,216, got 0"):
        score_frame(champion, day, chunk_rows=0)


def test_an_empty_frame_scores_to_an_empty_frame(champion, day):
    scored = score_frame(champion, pl.from_arrow(day).head(0), passthrough=["transaction_id"])
    assert scored.frame.columns == ["transaction_id", "label", "probability_0", "probability_1"]
    assert (scored.frame.height, scored.rows, scored.chunks) == (0, 0, 0)


def test_importing_the_frame_api_does_not_import_polars():
    code = (
        "import sys; from ml_assets import score_frame, iter_scored_batches, build_frame_scoring_asset;"
        "print([m for m in ('polars', 'onnxruntime', 'mlflow') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_wide_frames_get_fewer_rows_per_chunk(tmp_path, monkeypatch):
    """Unless asked, a frame's chunks hold at most CHUNK_BYTES of the columns read: measured on a table or
    DataFrame in memory, on the first batch of a LazyFrame or a reader (text has no size before it is read).
    Every kind and size of chunk scores like onnxruntime."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    import ml_assets.scoring as scoring
    from ml_assets.resources.core.models import ModelVersion
    from ml_assets.resources.runtimes.onnx import OnnxRuntime

    width, rows = 200, 3_000
    rng = np.random.default_rng(11)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    names = [f"f{k}" for k in range(width)]
    model = LogisticRegression(max_iter=300).fit(x, (x[:, 0] + x[:, 3] > 0).astype(np.int64))
    path = tmp_path / "wide.onnx"
    path.write_bytes(to_onnx(model, x[:1], target_opset=17, options={"zipmap": False}).SerializeToString())
    version = ModelVersion(name="wide", version="2", format="onnx", artifact_uri=f"file://{path}", registry="test")
    loaded = LoadedModel(version, OnnxRuntime(features=names).load(version, path))
    notes = [f"{i:06d} {'a longer note, ' * 13}" for i in range(rows)]  # 202 bytes each
    table = pa.table({n: x[:, k] for k, n in enumerate(names)} | {"id": np.arange(rows), "note": notes})
    _, probabilities = ort.InferenceSession(str(path)).run(None, {"X": x})
    monkeypatch.setattr(scoring, "CHUNK_BYTES", 1 << 20)

    read = [*names, "id", "note"]
    in_memory = {"arrow table": table, "polars DataFrame": pl.from_arrow(table)}
    streams = {"LazyFrame": pl.from_arrow(table).lazy(), "RecordBatchReader": pa.RecordBatchReader.from_batches(
        table.schema, table.to_batches(max_chunksize=500))}  # fmt: skip
    for kind, frame in (in_memory | streams).items():
        with iter_scored_batches(loaded, frame, passthrough=["id", "note"]) as scored:
            out = pa.Table.from_batches(list(scored))
        # A chunk of the frame is the budget (validity bitmaps aside; Polars' text has 8-byte offsets). The
        # streams' fixed-width columns alone would have allowed 1,296 rows.
        assert 0.95 * (1 << 20) <= table.select(read).slice(0, scored.chunk_rows).nbytes <= 1.05 * (1 << 20), kind
        assert scored.chunk_rows < (1 << 20) // (width * 4 + 8), kind
        assert scored.chunks == -(-rows // scored.chunk_rows), kind
        np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(rows), err_msg=kind)
        np.testing.assert_allclose(out["probability_1"].to_numpy(), probabilities[:, 1], rtol=0, atol=2 * 2**-23)

    asked = score_frame(loaded, table, chunk_rows=700)
    assert (asked.chunk_rows, asked.chunks) == (700, 5)
