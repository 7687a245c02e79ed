"""The streaming core on real Parquet with real ONNX models: results, lineage, bad input, atomicity."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.datasets import OUTPUT_FILE, ParquetDataset, read_lineage
from ml_assets.dev.demo import FEATURES
from ml_assets.resources.core.errors import DatasetError, SchemaMismatchError, ScoringError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.registries.mlflow import MlflowRegistry
from ml_assets.resources.runtimes.onnx import OnnxRuntime
from ml_assets.scoring import score_partition
from tests.conftest import ROWS_PER_DAY, features_of


@pytest.fixture(scope="module")
def champion(models):
    registry = MlflowRegistry(models.tracking_uri)
    version = registry.resolve("models:/fraud@champion")
    return version, OnnxRuntime().load(version, registry.fetch(version))


def hive(path: Path | str) -> ParquetDataset:
    return ParquetDataset(str(path), partition_column="date")


def copy_partition(transactions: Path, tmp_path: Path, day: str = "2026-11-01") -> Path:
    root = tmp_path / "in"
    shutil.copytree(transactions / f"date={day}", root / f"date={day}")
    return root


def test_scores_a_partition_like_onnxruntime(champion, models, transactions, tmp_path):
    version, scorer = champion
    result = score_partition(
        scorer, version, hive(transactions), hive(tmp_path / "out"), partition="2026-11-02",
        chunk_rows=3_000, passthrough=["transaction_id", "date"], version_column="model_version",
    )  # fmt: skip
    assert (result.rows_in, result.rows_out) == (ROWS_PER_DAY, ROWS_PER_DAY)
    assert result.chunks >= ROWS_PER_DAY // 3_000
    out = pq.read_table(result.output_uri)
    assert out.column_names == ["transaction_id", "date", "label", "probability_0", "probability_1", "model_version"]
    # A tensor holds no nulls: the predictions are required columns; passthrough keeps the source's nullability.
    written = pq.ParquetFile(result.output_uri).schema
    assert {written.column(i).name: written.column(i).max_definition_level for i in range(len(written))} == {
        "transaction_id": 1, "date": 1, "label": 0, "probability_0": 0, "probability_1": 0, "model_version": 1,
    }  # fmt: skip
    source = pq.read_table(transactions / "date=2026-11-02")
    np.testing.assert_array_equal(out["transaction_id"].to_numpy(), source["transaction_id"].to_numpy())
    session = ort.InferenceSession(str(models.lr_onnx))
    labels, probabilities = session.run(None, {"X": features_of(source)})
    # Two float32 ulps at 1: the graph rewritten for columns sums 200 products in the GEMM's order, not the kernel's.
    np.testing.assert_allclose(out["probability_1"].to_numpy(), probabilities[:, 1], rtol=0, atol=2 * 2**-23)
    np.testing.assert_array_equal(out["label"].to_numpy(), labels)
    assert set(out["date"].to_pylist()) == {"2026-11-02"}
    assert set(out["model_version"].to_pylist()) == {"1"}
    lineage = read_lineage(result.output_uri)
    assert (lineage["model_name"], lineage["model_version"], lineage["model_uri"]) == ("fraud", "1", "models:/fraud/1")
    assert lineage["partition"] == "2026-11-02"
    stats = result.summary.as_dict()["probability_1"]
    assert stats["count"] == ROWS_PER_DAY
    assert stats["mean"] == pytest.approx(float(probabilities[:, 1].mean()), rel=1e-5)
    assert sum(stats["histogram"]) == ROWS_PER_DAY


def test_chunk_size_does_not_change_the_output(champion, transactions, tmp_path):
    version, scorer = champion
    small = score_partition(
        scorer, version, hive(transactions), hive(tmp_path / "a"), partition="2026-11-01", chunk_rows=777
    )
    large = score_partition(
        scorer, version, hive(transactions), hive(tmp_path / "b"), partition="2026-11-01", chunk_rows=1 << 20
    )
    assert pq.read_table(small.output_uri).equals(pq.read_table(large.output_uri))


def test_parallel_scoring_keeps_order(models, transactions, tmp_path):
    registry = MlflowRegistry(models.tracking_uri)
    version = registry.resolve("models:/fraud@challenger")
    scorer = OnnxRuntime(parallel=3, threads=1).load(version, registry.fetch(version))
    result = score_partition(
        scorer, version, hive(transactions), hive(tmp_path / "o"), partition="2026-11-03",
        chunk_rows=1_000, passthrough=["transaction_id"],
    )  # fmt: skip
    out = pq.read_table(result.output_uri)
    source = pq.read_table(transactions / "date=2026-11-03")
    np.testing.assert_array_equal(out["transaction_id"].to_numpy(), source["transaction_id"].to_numpy())
    expected = models.rf.predict_proba(features_of(source))[:, 1]
    np.testing.assert_allclose(out["probability_1"].to_numpy(), expected, atol=1e-5)


def test_rerun_is_idempotent_and_replaces_atomically(champion, transactions, tmp_path):
    version, scorer = champion
    first = score_partition(scorer, version, hive(transactions), hive(tmp_path / "o"), partition="2026-11-01")
    before = pq.read_table(first.output_uri)
    second = score_partition(scorer, version, hive(transactions), hive(tmp_path / "o"), partition="2026-11-01")
    assert second.output_uri == first.output_uri
    assert pq.read_table(second.output_uri).equals(before)
    assert sorted(p.name for p in Path(first.output_uri).parent.iterdir()) == [OUTPUT_FILE]


def test_path_templates_for_input_and_output(champion, transactions, tmp_path):
    version, scorer = champion
    (tmp_path / "flat").mkdir()
    shutil.copy(transactions / "date=2026-11-01" / "part-0.parquet", tmp_path / "flat" / "tx-2026-11-01.parquet")
    source = ParquetDataset(str(tmp_path / "flat" / "tx-{day}.parquet"), partition_column="day")
    dest = ParquetDataset(str(tmp_path / "scores" / "{day}" / "fraud.parquet"), partition_column="day")
    result = score_partition(scorer, version, source, dest, partition="2026-11-01")
    assert result.output_uri == str(tmp_path / "scores" / "2026-11-01" / "fraud.parquet")
    assert pq.read_metadata(result.output_uri).num_rows == ROWS_PER_DAY


def test_s3_input_and_output_through_s3fs(champion, transactions, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["endpoint_url"]}, key="testing", secret="testing")
    fs.mkdir("lake")
    fs.put(str(transactions / "date=2026-11-01" / "part-0.parquet"), "lake/tx/date=2026-11-01/part-0.parquet")
    options = {"client_kwargs": {"endpoint_url": s3_server["endpoint_url"]}, "key": "testing", "secret": "testing"}
    version, scorer = champion
    result = score_partition(
        scorer, version,
        ParquetDataset("s3://lake/tx", partition_column="date", storage_options=options),
        ParquetDataset("s3://lake/scores", partition_column="date", storage_options=options),
        partition="2026-11-01", passthrough=["transaction_id"],
    )  # fmt: skip
    assert result.output_uri == "s3://lake/scores/date=2026-11-01/part-0.parquet"
    assert fs.ls("lake/scores/date=2026-11-01") == ["lake/scores/date=2026-11-01/part-0.parquet"]
    assert read_lineage(result.output_uri, options)["model_version"] == "1"
    with fs.open("lake/scores/date=2026-11-01/part-0.parquet") as f:
        assert pq.read_metadata(f).num_rows == ROWS_PER_DAY


# -- bad input: a clear error naming the partition, chunk, rows and column; nothing written ----------


def assert_nothing_written(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert files == [], f"left behind: {files}"


def rewrite(root: Path, change) -> None:
    file = next(root.rglob("*.parquet"))
    pq.write_table(change(pq.read_table(file)), file, row_group_size=4_096)


def test_missing_feature_column(champion, transactions, tmp_path):
    source = copy_partition(transactions, tmp_path)
    rewrite(source, lambda t: t.drop_columns(["merchant_risk"]))
    version, scorer = champion
    with pytest.raises(
        SchemaMismatchError, match=r"partition date=2026-11-01 .*needs column\(s\) merchant_risk \(float\)"
    ):
        score_partition(scorer, version, hive(source), hive(tmp_path / "out"), partition="2026-11-01")
    assert_nothing_written(tmp_path / "out")


def test_value_that_cannot_be_cast_safely(champion, transactions, tmp_path):
    source = copy_partition(transactions, tmp_path)

    def poison(t: pa.Table) -> pa.Table:
        """Amounts in cents as int64; one too large for float32 to hold exactly."""
        values = np.round(t["amount"].to_numpy() * 100).astype(np.int64)
        values[10_005] = 2**40 + 1
        return t.set_column(t.schema.get_field_index("amount"), "amount", pa.array(values))

    rewrite(source, poison)
    version, scorer = champion
    with pytest.raises(SchemaMismatchError) as caught:
        score_partition(scorer, version, hive(source), hive(tmp_path / "out"), partition="2026-11-01", chunk_rows=4_096)
    message = str(caught.value)
    assert "chunk 2 (rows 8192-12287)" in message
    assert "column 'amount' (int64) cannot be cast safely to float" in message
    assert_nothing_written(tmp_path / "out")


def test_type_that_cannot_be_cast_at_all(champion, transactions, tmp_path):
    source = copy_partition(transactions, tmp_path)
    rewrite(
        source,
        lambda t: t.set_column(t.schema.get_field_index("hour_of_day"), "hour_of_day", pa.array([[1]] * t.num_rows)),
    )
    version, scorer = champion
    with pytest.raises(
        SchemaMismatchError,
        match=r"column hour_of_day is list<element: int64>, expected float \(model 'fraud' version 1\)",
    ):
        score_partition(scorer, version, hive(source), hive(tmp_path / "out"), partition="2026-11-01")
    assert_nothing_written(tmp_path / "out")


def test_nulls_in_features(champion, transactions, tmp_path):
    source = copy_partition(transactions, tmp_path)

    def with_null(t: pa.Table) -> pa.Table:
        values = t["device_score"].to_pylist()
        values[15_000] = None
        return t.set_column(t.schema.get_field_index("device_score"), "device_score", pa.array(values, pa.float32()))

    rewrite(source, with_null)
    version, scorer = champion
    with pytest.raises(
        SchemaMismatchError,
        match=r"chunk 3 \(rows 12288-16383\): column 'device_score' has 1 null\(s\), the first at row 15000",
    ):
        score_partition(scorer, version, hive(source), hive(tmp_path / "out"), partition="2026-11-01", chunk_rows=4_096)
    assert_nothing_written(tmp_path / "out")
    # Asked for, nulls reach the model as missing values (NaN) instead.
    result = score_partition(
        scorer, version, hive(source), hive(tmp_path / "out"), partition="2026-11-01", nulls="pass"
    )
    assert result.rows_out == ROWS_PER_DAY


def test_empty_partition(champion, transactions, tmp_path):
    source = copy_partition(transactions, tmp_path)
    rewrite(source, lambda t: t.slice(0, 0))
    version, scorer = champion
    with pytest.raises(DatasetError, match=r"partition date=2026-11-01 .*is empty \(0 rows in 1 file\(s\)\)"):
        score_partition(scorer, version, hive(source), hive(tmp_path / "out"), partition="2026-11-01")
    assert_nothing_written(tmp_path / "out")


def test_missing_partition(champion, transactions, tmp_path):
    version, scorer = champion
    with pytest.raises(DatasetError, match=r"partition date=2030-01-01 .*not found"):
        score_partition(scorer, version, hive(transactions), hive(tmp_path / "out"), partition="2030-01-01")
    assert_nothing_written(tmp_path / "out")


def test_corrupt_parquet_file(champion, transactions, tmp_path):
    source = copy_partition(transactions, tmp_path)
    file = next(source.rglob("*.parquet"))
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] + b"garbage" + data[-100:])
    version, scorer = champion
    with pytest.raises(
        DatasetError, match=r"partition date=2026-11-01 .*(not readable Parquet|cannot open as Parquet).*part-0.parquet"
    ):
        score_partition(scorer, version, hive(source), hive(tmp_path / "out"), partition="2026-11-01")
    assert_nothing_written(tmp_path / "out")


def test_failure_keeps_the_previous_output(champion, transactions, tmp_path):
    version, scorer = champion
    good = score_partition(scorer, version, hive(transactions), hive(tmp_path / "out"), partition="2026-11-01")
    before = Path(good.output_uri).read_bytes()
    source = copy_partition(transactions, tmp_path)
    rewrite(source, lambda t: t.drop_columns(["amount"]).append_column("amount", pa.array(["x"] * t.num_rows)))
    with pytest.raises(SchemaMismatchError):
        score_partition(scorer, version, hive(source), hive(tmp_path / "out"), partition="2026-11-01")
    assert Path(good.output_uri).read_bytes() == before
    assert sorted(p.name for p in Path(good.output_uri).parent.iterdir()) == [OUTPUT_FILE]


class _BrokenScorer:
    """A model that answers the wrong number of rows on its third chunk."""

    concurrency = 1

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.input_schema, self.output_schema = inner.input_schema, inner.output_schema

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        self.calls += 1
        out = self.inner.score(batch)
        return out.slice(0, out.num_rows - 1) if self.calls == 3 else out

    def close(self) -> None:
        pass


def test_model_returning_wrong_row_count(champion, transactions, tmp_path):
    version, scorer = champion
    with pytest.raises(
        ScoringError, match=r"chunk 2 \(rows 4000-5999\): model 'fraud' version 1 returned 1999 rows for 2000"
    ):
        score_partition(
            _BrokenScorer(scorer),
            version,
            hive(transactions),
            hive(tmp_path / "out"),
            partition="2026-11-01",
            chunk_rows=2_000,
        )
    assert_nothing_written(tmp_path / "out")


def test_model_whose_inputs_do_not_match_the_data(models, transactions, tmp_path):
    from ml_assets.resources.core.models import ColumnSpec, Signature

    registry = MlflowRegistry(models.tracking_uri)
    base = registry.resolve("models:/fraud/1")
    renamed = Signature(inputs=tuple(ColumnSpec(f"feature_{i}", "float") for i in range(len(FEATURES))))
    version = ModelVersion(**{**base.__dict__, "signature": renamed})
    scorer = OnnxRuntime().load(version, registry.fetch(version))
    with pytest.raises(SchemaMismatchError, match=r"model 'fraud' version 1 needs column\(s\) feature_0 \(float\)"):
        score_partition(scorer, version, hive(transactions), hive(tmp_path / "out"), partition="2026-11-01")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("reader", ["pyarrow", "polars", "auto"])
def test_long_repeated_text_is_measured_and_read_a_chunk_at_a_time(
    champion, models, transactions, tmp_path, monkeypatch, reader
):
    """Long text repeated over many rows (user agents, URLs) is dictionary-encoded by pyarrow and Polars alike,
    and their footers count almost nothing of it: its decoded width is measured from the first rows, so chunks,
    pyarrow's reads (a row group at a time was the scanner's way) and the output's row groups hold the budget."""
    import polars as pl

    import ml_assets.datasets as datasets
    import ml_assets.scoring as scoring
    from ml_assets.datasets import AtomicPartitionWriter, PartitionReader, _uncompressed_bytes_per_row

    version, scorer = champion
    table = with_user_agents(transactions)
    day = tmp_path / "in" / "date=2026-11-01"
    day.mkdir(parents=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), day / "part-0.parquet")  # one row group, as pyarrow writes by default
    pl.from_arrow(table.slice(half)).write_parquet(day / "part-1.parquet")
    read = [*FEATURES, *AGENT_PASSTHROUGH]
    decoded = pq.read_table(day.parent / "date=2026-11-01", columns=read).nbytes / table.num_rows
    footer = pq.read_metadata(day / "part-0.parquet")
    assert sum(_uncompressed_bytes_per_row(footer, set(AGENT_PASSTHROUGH[1:])).values()) < 0.1 * 3 * 190

    budget = 1 << 20
    monkeypatch.setattr(datasets, "POLARS_MIN_BYTES", 0)  # auto would take Polars, but for the text
    monkeypatch.setattr(scoring, "CHUNK_BYTES", budget)
    monkeypatch.setattr(datasets, "READ_AHEAD_BYTES", budget)
    monkeypatch.setattr(AtomicPartitionWriter, "ROW_GROUP_BYTES", 2 * budget)
    streamed = []
    iter_batches = pq.ParquetFile.iter_batches
    monkeypatch.setattr(
        pq.ParquetFile, "iter_batches", lambda self, **kw: streamed.append(kw["batch_size"]) or iter_batches(self, **kw)
    )
    data = ParquetDataset(str(tmp_path / "in"), partition_column="date", reader=reader)
    assert PartitionReader(data, "2026-11-01").row_bytes(read) >= 0.95 * decoded
    assert streamed == [datasets.SAMPLE_ROWS]  # the first rows of the first file, once per reader
    streamed.clear()

    result = score_partition(
        scorer, version, data, hive(tmp_path / "out"), partition="2026-11-01", passthrough=AGENT_PASSTHROUGH
    )
    auto = "pyarrow: row groups decode to over 3x their size: read a chunk at a time"
    assert (
        result.reader == {"pyarrow": "pyarrow: asked for (reader='pyarrow')", "polars": "polars", "auto": auto}[reader]
    )
    assert 0.8 * budget <= result.chunk_rows * decoded <= 1.1 * budget
    # pyarrow decodes each file, one large row group, a chunk at a time; Polars reads with its own decoder.
    assert streamed == [datasets.SAMPLE_ROWS, *([result.chunk_rows] * 2 if reader != "polars" else [])]
    out = pq.ParquetFile(result.output_uri)
    groups = [out.read_row_group(g) for g in range(out.num_row_groups)]
    assert len(groups) > 2
    assert all(group.nbytes <= 2 * budget + result.chunk_rows * decoded for group in groups)
    assert_scored_like_onnxruntime(pq.read_table(result.output_uri), table, models)


AGENT_PASSTHROUGH = ["transaction_id", "agent_0", "agent_1", "agent_2"]


def with_user_agents(transactions: Path) -> pa.Table:
    """A day of the fraud features, its ids and three columns of ~190-byte user agents, 40 distinct."""
    source = pq.read_table(transactions / "date=2026-11-01")
    rng = np.random.default_rng(3)
    agents = [f"Mozilla/5.0 (X11; Linux x86_64) Chrome/{k}.0 Safari/537.36 " * 3 for k in range(40)]
    table = source.select(["transaction_id", *FEATURES])
    for name in AGENT_PASSTHROUGH[1:]:
        table = table.append_column(name, pa.array([agents[i] for i in rng.integers(0, 40, source.num_rows)]))
    return table


def assert_scored_like_onnxruntime(scored: pa.Table, table: pa.Table, models) -> None:
    """The output holds ``table``'s passthrough values (text as large_string, the type a Polars-written file
    gives it) and onnxruntime's predictions on the file as exported."""
    scored, expected = scored.sort_by("transaction_id"), table.sort_by("transaction_id")
    kept = scored.select(AGENT_PASSTHROUGH)
    assert kept.equals(expected.select(AGENT_PASSTHROUGH).cast(kept.schema))
    labels, probabilities = ort.InferenceSession(str(models.lr_onnx)).run(None, {"X": features_of(expected)})
    np.testing.assert_allclose(scored["probability_1"].to_numpy(), probabilities[:, 1], rtol=0, atol=2 * 2**-23)
    np.testing.assert_array_equal(scored["label"].to_numpy(), labels)


def test_a_corrupt_text_column_fails_when_measured_naming_the_file(champion, transactions, tmp_path):
    """The text's width is measured by decoding its first rows, before anything is written: a damaged dictionary
    page there fails the run naming partition and file, and leaves no output."""
    version, scorer = champion
    day = tmp_path / "in" / "date=2026-11-01"
    day.mkdir(parents=True)
    file = day / "part-0.parquet"
    pq.write_table(with_user_agents(transactions), file)
    column = pq.read_metadata(file).row_group(0).column(len(FEATURES) + 1)  # agent_0
    assert column.path_in_schema == "agent_0"
    assert column.has_dictionary_page
    data = bytearray(file.read_bytes())
    start = column.dictionary_page_offset
    data[start : start + 64] = b"\xff" * 64  # the page header: nothing past it can be read
    file.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"reading the first rows of file part-0.parquet failed: "):
        score_partition(
            scorer, version, hive(tmp_path / "in"), hive(tmp_path / "out"), partition="2026-11-01",
            passthrough=AGENT_PASSTHROUGH,
        )  # fmt: skip
    assert_nothing_written(tmp_path / "out")


def test_long_repeated_text_on_s3_is_measured_and_read_a_chunk_at_a_time(
    champion, models, transactions, s3_server, monkeypatch
):
    """The same over a real S3 server (moto, s3fs): the sample and the chunked reads go through the dataset's
    filesystem, and auto leaves the read to pyarrow."""
    import polars as pl
    import s3fs

    import ml_assets.datasets as datasets
    import ml_assets.scoring as scoring

    version, scorer = champion
    table = with_user_agents(transactions)
    fs = s3fs.S3FileSystem(**s3_server, skip_instance_cache=True)
    fs.mkdir("agents")
    half = table.num_rows // 2
    with fs.open("agents/in/date=2026-11-01/part-0.parquet", "wb") as f:
        pq.write_table(table.slice(0, half), f)
    with fs.open("agents/in/date=2026-11-01/part-1.parquet", "wb") as f:
        pl.from_arrow(table.slice(half)).write_parquet(f)
    monkeypatch.setattr(scoring, "CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(datasets, "READ_AHEAD_BYTES", 1 << 20)
    source = ParquetDataset("s3://agents/in", partition_column="date", storage_options=s3_server)
    dest = ParquetDataset("s3://agents/out", partition_column="date", storage_options=s3_server)
    result = score_partition(scorer, version, source, dest, partition="2026-11-01", passthrough=AGENT_PASSTHROUGH)
    assert result.reader == "pyarrow: row groups decode to over 3x their size: read a chunk at a time"
    decoded = table.select([*FEATURES, *AGENT_PASSTHROUGH]).nbytes / table.num_rows
    assert 0.8 * (1 << 20) <= result.chunk_rows * decoded <= 1.1 * (1 << 20)
    with fs.open(result.output_uri.removeprefix("s3://"), "rb") as f:
        assert_scored_like_onnxruntime(pq.read_table(f), table, models)


def test_wide_inputs_get_fewer_rows_per_chunk(champion, transactions, tmp_path, monkeypatch):
    """Unless asked for a number of rows, a chunk holds at most CHUNK_BYTES of the columns read: a real
    200-feature export gets fewer rows per chunk, sized from the widest of two files by two writers (its text
    column from the footer), and scores like onnxruntime; the narrow fraud model keeps 65,536 rows."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    import ml_assets.datasets as datasets
    import ml_assets.scoring as scoring
    from ml_assets.datasets import PartitionReader

    width, rows = 200, 3_000
    rng = np.random.default_rng(7)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    names = [f"f{k}" for k in range(width)]
    model = LogisticRegression(max_iter=300).fit(x, (x[:, 0] - x[:, 1] > 0).astype(np.int64))
    path = tmp_path / "wide.onnx"
    path.write_bytes(to_onnx(model, x[:1], target_opset=17, options={"zipmap": False}).SerializeToString())
    version = ModelVersion(name="wide", version="3", format="onnx", artifact_uri=f"file://{path}", registry="test")
    scorer = OnnxRuntime(features=names).load(version, path)
    day = tmp_path / "in" / "date=2026-11-01"
    day.mkdir(parents=True)
    half = rows // 2
    notes = (["short"] * half, [f"{i:06d} {'a longer note, ' * 13}" for i in range(half)])  # the second: 202 bytes
    for part, note in enumerate(notes):
        own = slice(part * half, (part + 1) * half)
        columns = {n: x[own, k] for k, n in enumerate(names)} | {"id": np.arange(rows)[own], "note": note}
        pq.write_table(pa.table(columns), day / f"part-{part}.parquet")
    monkeypatch.setattr(scoring, "CHUNK_BYTES", 1 << 20)

    result = score_partition(
        scorer, version, hive(tmp_path / "in"), hive(tmp_path / "out"), partition="2026-11-01",
        passthrough=["id", "note"],
    )  # fmt: skip
    # A chunk of the wider file, decoded, is the budget (give or take pyarrow's validity bitmaps, 1/8 byte
    # per column and row); the narrower file alone would allow more rows.
    read = [*names, "id", "note"]
    wider, narrower = (pq.read_table(day / f"part-{part}.parquet", columns=read) for part in (1, 0))
    assert 0.95 * (1 << 20) <= wider.slice(0, result.chunk_rows).nbytes <= 1.05 * (1 << 20)
    assert narrower.slice(0, result.chunk_rows + 20).nbytes <= 1 << 20
    assert result.chunks == 2 * -(-half // result.chunk_rows)
    out = pq.read_table(result.output_uri)
    source = pq.read_table(day.parent / "date=2026-11-01", columns=[*names, "id"]).sort_by("id")
    session = ort.InferenceSession(str(path))
    _, probabilities = session.run(None, {"X": np.column_stack([source[n].to_numpy() for n in names])})
    np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(rows))
    # Two float32 ulps at 1: the graph rewritten for columns sums 200 products in the GEMM's order, not the kernel's.
    np.testing.assert_allclose(out["probability_1"].to_numpy(), probabilities[:, 1], rtol=0, atol=2 * 2**-23)

    asked = score_partition(
        scorer, version, hive(tmp_path / "in"), hive(tmp_path / "out2"), partition="2026-11-01", chunk_rows=1_000
    )
    assert (asked.chunk_rows, asked.chunks) == (1_000, 4)
    # pyarrow decodes one chunk ahead where four would pass READ_AHEAD_BYTES, four otherwise.
    monkeypatch.setattr(datasets, "READ_AHEAD_BYTES", 1 << 20)
    wide = PartitionReader(hive(tmp_path / "in"), "2026-11-01")
    assert (wide.read_ahead(read, result.chunk_rows), wide.read_ahead(read, result.chunk_rows // 4)) == (1, 4)
    monkeypatch.undo()  # CHUNK_BYTES and READ_AHEAD_BYTES as shipped
    narrow_version, narrow = champion
    default = score_partition(narrow, narrow_version, hive(transactions), hive(tmp_path / "o3"), partition="2026-11-01")
    assert default.chunk_rows == scoring.DEFAULT_CHUNK_ROWS
    # A partition of many chunks gets larger ones (fewer Python steps per row); wide rows keep the byte cap.
    many = scoring.MANY_CHUNKS * scoring.LARGE_CHUNK_ROWS
    assert scoring.auto_chunk_rows(88, many - 1) == scoring.DEFAULT_CHUNK_ROWS
    assert scoring.auto_chunk_rows(88, many) == scoring.LARGE_CHUNK_ROWS
    assert scoring.auto_chunk_rows(4_000, many) == scoring.CHUNK_BYTES // 4_000
    narrow_reader = PartitionReader(hive(transactions), "2026-11-01")
    assert narrow_reader.read_ahead([*FEATURES, "transaction_id"], default.chunk_rows) == 4
