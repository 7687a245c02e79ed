"""Partitions whose files differ (several writers, widths, orders, encodings): each file is read with its
own schema and cast straight to the model's types; what cannot be cast is refused in every file alike,
naming the file, the column, both types and the first offending row. Real models (skl2onnx in double,
an MLflow pyfunc with long/integer/string/double columns), real files from pandas, Polars and DuckDB,
compared with the models' own predictions."""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml_assets.checks import check_signature
from ml_assets.datasets import ParquetDataset, PartitionReader, ReaderChoice
from ml_assets.reconcile import conversion
from ml_assets.resources.core.errors import CastError, DatasetError, SchemaMismatchError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.runtimes.onnx import OnnxRuntime
from ml_assets.scoring import Challenger, score_partition

DAY = "2026-11-01"
ROWS = 2_000

PYFUNC = textwrap.dedent(
    '''
    """A deterministic model over long, integer, string and double columns."""
    import mlflow
    from mlflow.pyfunc import PythonModel


    class Mixed(PythonModel):
        def predict(self, context, model_input, params=None):
            return (
                model_input["amount"] * 2.0
                + model_input["count"].astype("float64")
                + model_input["small"].astype("float64") * 0.5
                + model_input["kind"].str.len()
            )


    mlflow.models.set_model(Mixed())
    '''
)


def version(name: str, fmt: str) -> ModelVersion:
    return ModelVersion(name=name, version="1", format=fmt, artifact_uri=f"file:///{name}", registry="test")


@pytest.fixture(scope="module")
def double_lr(tmp_path_factory):
    """A logistic regression exported by skl2onnx in double: it takes float64 and equals sklearn to ~1e-16."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = np.column_stack([rng.gamma(2.0, 50.0, 4_000), rng.random(4_000)])
    y = (x[:, 0] / 100 + x[:, 1] + rng.normal(0, 0.3, 4_000) > 1.5).astype(int)
    model = LogisticRegression().fit(x, y)
    path = tmp_path_factory.mktemp("double") / "lr64.onnx"
    path.write_bytes(to_onnx(model, x[:1]).SerializeToString())  # ZipMap: the graph names the classes
    v = version("lr64", "onnx")
    scorer = OnnxRuntime(features=["amount", "ratio"]).load(v, path)
    assert scorer.input_schema.types == [pa.float64(), pa.float64()]
    assert scorer.output_schema.field("probability_1").type == pa.float64()
    return model, v, scorer


@pytest.fixture(scope="module")
def mixed_pyfunc(tmp_path_factory):
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from ml_assets.resources.runtimes.pyfunc import PyfuncRuntime

    root = tmp_path_factory.mktemp("pyfunc")
    (root / "mixed.py").write_text(PYFUNC)
    signature = ModelSignature(
        inputs=Schema(
            [
                ColSpec("long", "count"),
                ColSpec("integer", "small"),
                ColSpec("string", "kind"),
                ColSpec("double", "amount"),
            ]
        ),
        outputs=Schema([ColSpec("double")]),
    )
    path = root / "model"
    mlflow.pyfunc.save_model(str(path), python_model=str(root / "mixed.py"), signature=signature)
    v = version("mixed", "pyfunc")
    scorer = PyfuncRuntime().load(v, path)
    assert scorer.input_schema.types == [pa.int64(), pa.int32(), pa.string(), pa.float64()]
    yield mlflow.pyfunc.load_model(str(path)), v, scorer
    scorer.close()


def frame(seed: int, rows: int = ROWS, *, first_id: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(first_id, first_id + rows, dtype=np.int64),
            "amount": rng.gamma(2.0, 50.0, rows),
            "ratio": rng.random(rows),
            "count": rng.integers(0, 2**40, rows),  # above 2^31: needs int64
            "small": rng.integers(-1_000, 1_000, rows),
            "kind": rng.choice(["card", "transfer", "cash"], rows),
            "note": ["n/a"] * rows,
        }
    )


READERS = ["polars", "pyarrow"]


def hive(root: Path, reader: ReaderChoice = "auto") -> ParquetDataset:
    return ParquetDataset(str(root), partition_column="date", reader=reader)


def partition(tmp_path: Path) -> Path:
    folder = tmp_path / "in" / f"date={DAY}"
    folder.mkdir(parents=True)
    return folder


def model_inputs(df: pd.DataFrame) -> pd.DataFrame:
    """The rows as the pyfunc model declares them (what a correct reader hands it)."""
    return df.astype({"count": "int64", "small": "int32", "amount": "float64", "kind": "str"})[
        ["count", "small", "kind", "amount"]
    ]


@pytest.mark.parametrize("reader", READERS)
def test_one_partition_from_pandas_polars_and_duckdb(double_lr, mixed_pyfunc, tmp_path, reader):
    """Mixed widths (float32/float64, int16/int32/int64), orders, dictionary and large strings, extra
    columns: scored by both models in one pass, each equal to its own toolchain's predictions."""
    import duckdb
    import polars as pl

    lr, lr_version, lr_scorer = double_lr
    pyfunc, py_version, py_scorer = mixed_pyfunc
    folder = partition(tmp_path)
    # DuckDB writes the hive folder itself (COPY ... PARTITION_BY), in its own types: DOUBLE, BIGINT, VARCHAR.
    by_duckdb = frame(1, first_id=0)
    con = duckdb.connect()
    con.register("src", by_duckdb.assign(date=DAY))
    con.execute(
        f"COPY (SELECT date, kind, amount, ratio, count, CAST(small AS INTEGER) AS small, id FROM src) "
        f"TO '{tmp_path / 'in'}' (FORMAT parquet, PARTITION_BY (date), OVERWRITE_OR_IGNORE)"
    )
    con.close()
    # pandas: categorical kind (a dictionary column), float64, int64, the extra column, its own order.
    by_pandas = frame(2, first_id=ROWS)
    by_pandas.assign(kind=by_pandas["kind"].astype("category"))[
        ["note", "small", "count", "kind", "id", "ratio", "amount"]
    ].to_parquet(folder / "pandas.parquet", index=False)
    # Polars: float32 features, int32 id and count small enough, int16 small, a Categorical kind.
    by_polars = frame(3, first_id=2 * ROWS).assign(count=lambda d: d["count"] % 2**31)
    pl.from_pandas(by_polars).select(
        pl.col("amount").cast(pl.Float32),
        pl.col("ratio").cast(pl.Float32),
        pl.col("kind").cast(pl.Categorical),
        pl.col("small").cast(pl.Int16),
        pl.col("count").cast(pl.Int32),
        pl.col("id").cast(pl.Int32),
    ).write_parquet(folder / "polars.parquet")
    partition_reader = PartitionReader(hive(tmp_path / "in", reader), DAY)
    assert partition_reader.reader == reader
    assert len(partition_reader.files) == 3
    files = partition_reader.files
    assert len({str(f.schema.field("amount").type) for f in files}) == 2  # float in one, double in two
    assert any(pa.types.is_dictionary(f.schema.field("kind").type) for f in files)
    outcome = check_signature(partition_reader, py_scorer.input_schema, nulls="error")
    assert outcome.passed, outcome.description
    assert outcome.metrics["files"] == 3

    result = score_partition(
        lr_scorer,
        lr_version,
        hive(tmp_path / "in", reader),
        hive(tmp_path / "lr"),
        partition=DAY,
        chunk_rows=700,
        passthrough=["id"],
        challengers=[Challenger(py_scorer, py_version, hive(tmp_path / "py"))],
    )
    assert result.rows_out == 3 * ROWS
    assert result.reader.split(":")[0] == reader
    # What each writer stored, read back as the toolchains would see it (the float32 values stay float32).
    stored = pd.concat(
        [
            pq.read_table(f.path).to_pandas().astype({"kind": "str"}).astype({"amount": "float64", "ratio": "float64"})
            for f in files
        ]
    ).set_index("id")
    lr_out = pq.read_table(result.output_uri).to_pandas().set_index("id").loc[stored.index]
    assert lr_out.index.dtype == np.int64  # int32 (Polars) and int64 ids unify to int64
    expected = lr.predict_proba(stored[["amount", "ratio"]].to_numpy(np.float64))
    np.testing.assert_allclose(lr_out["probability_1"].to_numpy(), expected[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(lr_out["label"].to_numpy(), lr.predict(stored[["amount", "ratio"]].to_numpy()))
    # The check can fail: the float64 files narrowed to float32 would differ by far more than that.
    narrowed = lr.predict_proba(stored[["amount", "ratio"]].to_numpy(np.float32).astype(np.float64))[:, 1]
    assert np.abs(narrowed - expected[:, 1]).max() > 1e-9
    py_out = pq.read_table(result.challengers[0].output_uri).to_pandas().set_index("id").loc[stored.index]
    [prediction] = [c for c in py_out.columns if c not in ("date",)]
    reference = np.asarray(pyfunc.predict(model_inputs(stored.reset_index())))
    np.testing.assert_array_equal(py_out[prediction].to_numpy(), reference)


def write(folder: Path, name: str, table: pa.Table) -> None:
    pq.write_table(table, folder / name)


def two_files(tmp_path: Path, first: pa.Table, second: pa.Table) -> ParquetDataset:
    folder = partition(tmp_path)
    write(folder, "part-0.parquet", first)
    write(folder, "part-1.parquet", second)
    return hive(tmp_path / "in")


def lr_table(df: pd.DataFrame, width: pa.DataType) -> pa.Table:
    return pa.table({"id": df["id"], "amount": pa.array(df["amount"]).cast(width), "ratio": df["ratio"]})


@pytest.mark.parametrize("reader", READERS)
def test_a_float32_file_never_narrows_the_float64_file_after_it(double_lr, tmp_path, reader):
    lr, v, scorer = double_lr
    first, second = frame(4), frame(5, first_id=ROWS)
    source = replace(two_files(tmp_path, lr_table(first, pa.float32()), lr_table(second, pa.float64())), reader=reader)
    result = score_partition(scorer, v, source, hive(tmp_path / "out"), partition=DAY, passthrough=["id"])
    assert result.reader.split(":")[0] == reader
    out = pq.read_table(result.output_uri)
    x = np.concatenate(
        [
            np.column_stack([first["amount"].astype(np.float32).astype(np.float64), first["ratio"]]),
            np.column_stack([second["amount"], second["ratio"]]),
        ]
    )
    np.testing.assert_allclose(out["probability_1"].to_numpy(), lr.predict_proba(x)[:, 1], rtol=0, atol=1e-12)


def test_int32_then_int64_beyond_2_31_for_a_model_that_takes_long(mixed_pyfunc, tmp_path):
    pyfunc, v, scorer = mixed_pyfunc
    first, second = frame(6), frame(7, first_id=ROWS)
    first["count"] %= 2**31

    def table(df: pd.DataFrame, count: pa.DataType) -> pa.Table:
        t = pa.Table.from_pandas(df, preserve_index=False)
        return t.set_column(t.schema.get_field_index("count"), "count", t["count"].cast(count))

    source = two_files(tmp_path, table(first, pa.int32()), table(second, pa.int64()))
    result = score_partition(scorer, v, source, hive(tmp_path / "out"), partition=DAY, chunk_rows=512)
    out = pq.read_table(result.output_uri)
    reference = np.asarray(pyfunc.predict(model_inputs(pd.concat([first, second]))))
    np.testing.assert_array_equal(out.column(0).to_numpy(), reference)


@pytest.mark.parametrize("reader", READERS)
def test_int64_values_that_overflow_an_integer_input_name_file_column_types_and_row(mixed_pyfunc, tmp_path, reader):
    _, v, scorer = mixed_pyfunc
    first, second = frame(8), frame(9, first_id=ROWS)
    second.loc[1_234, "small"] = 2**31  # one past int32
    source = two_files(
        tmp_path, pa.Table.from_pandas(first, preserve_index=False), pa.Table.from_pandas(second, preserve_index=False)
    )
    source = replace(source, reader=reader)
    with pytest.raises(CastError) as caught:
        score_partition(scorer, v, source, hive(tmp_path / "out"), partition=DAY, chunk_rows=500)
    error = caught.value
    assert (error.file, error.column, error.file_row, error.row) == ("part-1.parquet", "small", 1_234, ROWS + 1_234)
    assert (error.found, error.expected) == ("int64", "int32")
    message = str(error)
    assert f"partition date={DAY}" in message
    assert "column 'small' (int64) cannot be cast safely to int32" in message
    assert f"row {ROWS + 1_234} (file part-1.parquet, its row 1234)" in message
    assert "2147483648" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))


def test_a_file_missing_a_column_is_named_and_is_not_a_null(double_lr, tmp_path):
    _, v, scorer = double_lr
    first, second = frame(10), frame(11, first_id=ROWS)
    source = two_files(tmp_path, lr_table(first, pa.float64()), lr_table(second, pa.float64()).drop_columns(["ratio"]))
    for nulls in ("error", "pass"):
        with pytest.raises(SchemaMismatchError) as caught:
            score_partition(scorer, v, source, hive(tmp_path / "out"), partition=DAY, nulls=nulls)
        message = str(caught.value)
        assert "needs column(s) ratio (double) that file part-1.parquet does not have; it has: id, amount" in message
        assert "null" not in message
    outcome = check_signature(PartitionReader(source, DAY), scorer.input_schema, nulls="pass")
    assert not outcome.passed
    assert "missing: ratio (double) that file part-1.parquet does not have" in outcome.description
    assert outcome.metrics["files_with_problems"] == 1


@pytest.mark.parametrize("text_file", [0, 1])
def test_numeric_strings_are_refused_in_every_file_alike_unless_parsed(double_lr, tmp_path, text_file):
    lr, v, scorer = double_lr
    first, second = frame(12), frame(13, first_id=ROWS)
    tables = [lr_table(first, pa.float64()), lr_table(second, pa.float64())]
    as_text = tables[text_file]
    tables[text_file] = as_text.set_column(1, "amount", pa.array([repr(a) for a in as_text["amount"].to_pylist()]))
    source = two_files(tmp_path, *tables)
    name = f"part-{text_file}.parquet"
    with pytest.raises(SchemaMismatchError) as caught:
        score_partition(scorer, v, source, hive(tmp_path / "out"), partition=DAY)
    assert "column amount is string, expected double (model 'lr64' version 1): text is not parsed as numbers " in str(
        caught.value
    )
    assert f"in file {name}" in str(caught.value)
    reader = PartitionReader(source, DAY)
    assert not check_signature(reader, scorer.input_schema, nulls="error").passed
    assert check_signature(reader, scorer.input_schema, nulls="error", numeric_strings="parse").passed
    # Asked for, the text is parsed: the same scores as the numbers themselves.
    result = score_partition(
        scorer, v, source, hive(tmp_path / "out"), partition=DAY, numeric_strings="parse", passthrough=["id"]
    )
    x = np.concatenate([np.column_stack([df["amount"], df["ratio"]]) for df in (first, second)])
    out = pq.read_table(result.output_uri)
    np.testing.assert_allclose(out["probability_1"].to_numpy(), lr.predict_proba(x)[:, 1], rtol=0, atol=1e-12)
    # Text that is not a number: named by file, column and row, whichever file it is in.
    bad = tables[text_file]["amount"].to_pylist()
    bad[777] = "abc"
    tables[text_file] = tables[text_file].set_column(1, "amount", pa.array(bad))
    write(source_folder := Path(source.uri) / f"date={DAY}", name, tables[text_file])
    assert source_folder.is_dir()
    with pytest.raises(CastError) as caught:
        score_partition(scorer, v, source, hive(tmp_path / "out2"), partition=DAY, numeric_strings="parse")
    assert (caught.value.file, caught.value.column, caught.value.file_row) == (name, "amount", 777)
    assert "'abc'" in str(caught.value)


def test_rules_for_widths_encodings_and_timestamps():
    """The table of the README, decided from the types (and, for checked ones, by each value)."""
    from ml_assets.reconcile import ValueRefused, cast

    def kind(found: pa.DataType, expected: pa.DataType, **kw: str) -> str:
        return conversion(found, expected, **kw).kind

    assert kind(pa.float32(), pa.float64()) == "silent"
    assert kind(pa.float64(), pa.float32()) == "checked"
    assert kind(pa.int32(), pa.int64()) == "silent"
    assert kind(pa.int64(), pa.int32()) == "checked"
    assert kind(pa.int32(), pa.float64()) == "silent"
    assert kind(pa.int64(), pa.float64()) == "checked"
    assert kind(pa.dictionary(pa.int32(), pa.large_string()), pa.string()) == "silent"
    assert kind(pa.string_view(), pa.string()) == "silent"
    assert kind(pa.null(), pa.float32()) == "silent"
    assert kind(pa.string(), pa.float64()) == "refused"
    assert kind(pa.string(), pa.float64(), numeric_strings="parse") == "checked"
    assert kind(pa.float64(), pa.string()) == "refused"
    assert kind(pa.timestamp("ns"), pa.timestamp("us")) == "checked"
    assert kind(pa.timestamp("us", "UTC"), pa.timestamp("us")) == "refused"
    assert kind(pa.list_(pa.int64()), pa.float32()) == "refused"
    # Narrowed to float32 because the model asks for it; a finite value beyond float32's range is refused.
    narrowed = cast(pa.array([1.1, 2.2]), conversion(pa.float64(), pa.float32()))
    assert narrowed.to_pylist() == pytest.approx([1.1, 2.2])
    with pytest.raises(ValueRefused) as caught:
        cast(pa.array([1.0, 2.0, 1e300]), conversion(pa.float64(), pa.float32()))
    assert caught.value.row == 2
    # Nanoseconds that a microsecond model would lose are refused, at their row.
    stamps = pa.array([1_000, 2_000, 3_001], pa.timestamp("ns"))
    with pytest.raises(ValueRefused) as caught:
        cast(stamps, conversion(stamps.type, pa.timestamp("us")))
    assert caught.value.row == 2
    assert cast(stamps.slice(0, 2), conversion(stamps.type, pa.timestamp("us"))).to_pylist()[1].microsecond == 2
    with pytest.raises(ValueRefused) as caught:
        cast(pa.array([0, 1, 2, 1]), conversion(pa.int64(), pa.bool_()))
    assert caught.value.row == 2


@pytest.mark.parametrize("reader", READERS)
def test_the_files_of_a_partition_are_its_data_files_in_path_order(double_lr, tmp_path, reader):
    """What writers leave beside their data (Spark's ``_SUCCESS`` and ``.crc`` files, a ``_temporary``
    attempt, a hidden staging folder, ``_metadata``) is never read; data files in sub-folders are, in
    path order, the same files pyarrow's own discovery finds."""
    import pyarrow.dataset as pads

    lr, v, scorer = double_lr
    folder = partition(tmp_path)
    parts = {"b/part-0.parquet": frame(20), "a.parquet": frame(21, first_id=ROWS), "c/d/e.parquet": frame(22)}
    for name, df in parts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write(folder, name, lr_table(df, pa.float64()))
    garbage = ["_SUCCESS", ".a.parquet.crc", "_temporary/0/part-9.parquet", ".staging/part-8.parquet", "_metadata"]
    for name in garbage:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"PAR1 not a file of this partition")
    source = hive(tmp_path / "in", reader)
    found = PartitionReader(source, DAY)
    assert [f.name for f in found.files] == ["a.parquet", "b/part-0.parquet", "c/d/e.parquet"]
    assert [f.path for f in found.files] == [f.path for f in pads.dataset(folder, format="parquet").get_fragments()]
    assert [f.first_row for f in found.files] == [0, ROWS, 2 * ROWS]
    result = score_partition(scorer, v, source, hive(tmp_path / "out"), partition=DAY, passthrough=["id"])
    out = pq.read_table(result.output_uri)
    ordered = [parts[name] for name in sorted(parts)]
    assert out["id"].to_pylist() == [i for df in ordered for i in df["id"]]
    x = np.concatenate([df[["amount", "ratio"]].to_numpy() for df in ordered])
    np.testing.assert_allclose(out["probability_1"].to_numpy(), lr.predict_proba(x)[:, 1], rtol=0, atol=1e-12)
    # A single file named directly is the whole partition, whatever lies beside it.
    single = PartitionReader(ParquetDataset(str(folder / "a.parquet"), reader=reader), None)
    assert [(f.name, f.num_rows) for f in single.files] == [("a.parquet", ROWS)]


# -- the decoder: Polars where it can serve, pyarrow where it cannot, and the result says which ----------


def test_auto_reads_a_small_local_partition_with_pyarrow_and_a_large_one_with_polars(double_lr, tmp_path, monkeypatch):
    """Below ``POLARS_MIN_BYTES`` decoded (rows times the width the schemas and footers tell) pyarrow reads a
    local partition before Polars would have started; from there Polars does. The same rows come out, and the
    result says who read and why."""
    import ml_assets.datasets as datasets

    lr, v, scorer = double_lr
    df = frame(30)
    write(partition(tmp_path), "part-0.parquet", lr_table(df, pa.float64()))
    small = score_partition(
        scorer, v, hive(tmp_path / "in"), hive(tmp_path / "small"), partition=DAY, passthrough=["id"]
    )
    size = ROWS * PartitionReader(hive(tmp_path / "in"), DAY).row_bytes(["id", "amount", "ratio"])
    assert size == ROWS * (8 + 8 + 8)  # int64 id, float64 features
    limit = datasets.POLARS_MIN_BYTES
    assert small.reader == (
        f"pyarrow: {size / 2**20:,.0f} MiB decoded, under {limit / 2**20:,.0f} MiB: pyarrow is done before Polars starts"
    )
    monkeypatch.setattr(datasets, "POLARS_MIN_BYTES", size)
    large = score_partition(
        scorer, v, hive(tmp_path / "in"), hive(tmp_path / "large"), partition=DAY, passthrough=["id"]
    )
    assert large.reader == "polars"
    assert PartitionReader(hive(tmp_path / "in", "polars"), DAY).reader == "polars"  # asked for: always
    out = pq.read_table(small.output_uri)
    assert out.equals(pq.read_table(large.output_uri))
    x = df[["amount", "ratio"]].to_numpy()
    np.testing.assert_allclose(out["probability_1"].to_numpy(), lr.predict_proba(x)[:, 1], rtol=0, atol=1e-12)


def test_polars_decodes_a_row_group_in_parallel_tasks_and_keeps_a_setting_of_the_users(tmp_path, monkeypatch):
    """Polars decodes a row group on one thread below 16.7M values; the reader sets its task size to about a
    million values (unless the user set one), so the 1.2M values of this one row group decode as two tasks
    of columns. The columns come back whole and in place: equal to pyarrow's read of the same file."""
    import ml_assets.datasets as datasets

    variable = "POLARS_PARQUET_DECODE_TARGET_VALUES_PER_THREAD"
    rng = np.random.default_rng(5)
    rows = 60_000
    table = pa.table({"id": np.arange(rows), **{f"f{i}": rng.random(rows, dtype=np.float32) for i in range(20)}})
    assert 20 * rows > datasets.POLARS_DECODE_VALUES_PER_TASK
    pq.write_table(table, partition(tmp_path) / "part-0.parquet", row_group_size=rows)
    columns = table.column_names[::-1]  # not the file's order either

    def read(reader: ReaderChoice) -> pa.Table:
        batches = PartitionReader(hive(tmp_path / "in", reader), DAY).batches(columns, 16_384)
        return pa.Table.from_batches([piece.batch for piece in batches])

    monkeypatch.setenv(variable, "")  # recorded, so that teardown restores what was there before
    monkeypatch.delenv(variable)
    by_polars = read("polars")
    assert os.environ[variable] == str(datasets.POLARS_DECODE_VALUES_PER_TASK)
    assert by_polars.equals(read("pyarrow"))
    assert by_polars.equals(table.select(columns))
    monkeypatch.setenv(variable, "5000")
    assert read("polars").equals(by_polars)
    assert os.environ[variable] == "5000"


def test_polars_reads_s3_through_the_datasets_storage_options(double_lr, s3_server, tmp_path):
    """A mixed partition on a real S3 server (moto): Polars reads it with the s3fs options translated; the
    output equals pyarrow's read of the same partition, row for row."""
    import s3fs

    lr, v, scorer = double_lr
    fs = s3fs.S3FileSystem(**s3_server, skip_instance_cache=True)
    bucket = f"mixed-{tmp_path.name.lower().replace('_', '-')[:40]}"
    fs.mkdir(bucket)
    first, second = frame(14), frame(15, first_id=ROWS)
    for name, table in (
        ("part-0.parquet", lr_table(first, pa.float32())),
        ("part-1.parquet", lr_table(second, pa.float64())),
    ):
        with fs.open(f"{bucket}/in/date={DAY}/{name}", "wb") as f:
            pq.write_table(table, f)
    outputs = {}
    for reader in ("auto", "pyarrow"):
        source = ParquetDataset(f"s3://{bucket}/in", partition_column="date", storage_options=s3_server, reader=reader)
        dest = ParquetDataset(f"s3://{bucket}/out-{reader}", partition_column="date", storage_options=s3_server)
        result = score_partition(scorer, v, source, dest, partition=DAY, passthrough=["id"], chunk_rows=900)
        assert result.reader == ("polars" if reader == "auto" else "pyarrow: asked for (reader='pyarrow')")
        with fs.open(result.output_uri.removeprefix("s3://"), "rb") as f:
            outputs[reader] = pq.read_table(f)
    assert outputs["auto"].equals(outputs["pyarrow"])
    x = np.concatenate(
        [
            np.column_stack([first["amount"].astype(np.float32).astype(np.float64), first["ratio"]]),
            np.column_stack([second["amount"], second["ratio"]]),
        ]
    )
    probabilities = outputs["auto"]["probability_1"].to_numpy()
    np.testing.assert_allclose(probabilities, lr.predict_proba(x)[:, 1], rtol=0, atol=1e-12)
    # An s3fs option Polars has no equivalent for: pyarrow reads, and says why; insisting on Polars fails.
    options = {**s3_server, "config_kwargs": {"read_timeout": 5}}
    auto = PartitionReader(ParquetDataset(f"s3://{bucket}/in", partition_column="date", storage_options=options), DAY)
    assert auto.reader_description == "pyarrow: the storage option 'config_kwargs' has no Polars equivalent"
    with pytest.raises(DatasetError, match=r"reader='polars' asked for, but the storage option 'config_kwargs'"):
        PartitionReader(
            ParquetDataset(f"s3://{bucket}/in", partition_column="date", storage_options=options, reader="polars"), DAY
        )


def test_without_polars_pyarrow_reads_and_says_so(double_lr, tmp_path, monkeypatch):
    _, v, scorer = double_lr
    source = two_files(tmp_path, lr_table(frame(16), pa.float32()), lr_table(frame(17, first_id=ROWS), pa.float64()))
    monkeypatch.setitem(sys.modules, "polars", None)  # as if not installed
    result = score_partition(scorer, v, source, hive(tmp_path / "out"), partition=DAY)
    assert result.reader == "pyarrow: polars is not installed (pip install 'dagster-ml-assets[polars]')"
    assert result.rows_out == 2 * ROWS
    with pytest.raises(DatasetError, match=r"reader='polars' asked for, but polars is not installed"):
        PartitionReader(replace(source, reader="polars"), DAY)
