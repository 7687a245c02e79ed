"""on_row_error="quarantine": bad rows set aside in an errors dataset beside the output, the rest scored as
usual, against the real runtimes (ONNX, an MLflow pyfunc model that raises, a remote server answering 400)
and read back with pyarrow, Polars and DuckDB."""

from __future__ import annotations

import io
import json
import shutil
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import onnxruntime as ort
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ml_assets.datasets import ParquetDataset, read_lineage
from ml_assets.dev.demo import make_transactions
from ml_assets.quarantine import ErrorBudget, errors_dataset
from ml_assets.resources.core.errors import ErrorBudgetExceededError, ScoringError
from ml_assets.resources.core.models import ColumnSpec, ModelVersion, Signature
from ml_assets.resources.registries.mlflow import MlflowRegistry
from ml_assets.resources.runtimes.http import HttpRuntime
from ml_assets.resources.runtimes.onnx import OnnxRuntime
from ml_assets.resources.runtimes.pyfunc import PyfuncRuntime
from ml_assets.scoring import score_partition
from tests.conftest import features_of, run_writer_script

DAY = "2026-11-01"
ROWS = 6_000


def hive(path: Path | str) -> ParquetDataset:
    return ParquetDataset(str(path), partition_column="date")


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture(scope="module")
def champion(models):
    registry = MlflowRegistry(models.tracking_uri)
    version = registry.resolve("models:/fraud@champion")
    return version, OnnxRuntime().load(version, registry.fetch(version))


def poisoned_transactions(root: Path, *, nulls: dict[int, str], uncastable: list[int]) -> pa.Table:
    """Two files of one partition; ``nulls`` (row -> feature) are null, ``uncastable`` rows hold a
    ``txn_count_24h`` (int64 in the file) too large for the model's float32 without loss."""
    table = make_transactions(ROWS, seed=7)
    for name in set(nulls.values()):
        values = table[name].to_numpy().copy()
        mask = np.zeros(ROWS, dtype=bool)
        mask[[row for row, column in nulls.items() if column == name]] = True
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, mask=mask))
    counts = np.rint(np.abs(table["txn_count_24h"].to_numpy(zero_copy_only=False)) * 10).astype(np.int64)
    counts[uncastable] = 2**40 + 1
    table = table.set_column(table.schema.get_field_index("txn_count_24h"), "txn_count_24h", pa.array(counts))
    folder = root / f"date={DAY}"
    folder.mkdir(parents=True)
    pq.write_table(table.slice(0, ROWS // 2), folder / "a.parquet", row_group_size=1_000)
    pq.write_table(table.slice(ROWS // 2), folder / "b.parquet", row_group_size=1_000)
    return table


def read_everywhere(root: Path) -> dict[str, pa.Table]:
    """The dataset under ``root`` as pyarrow, Polars and DuckDB read it, sorted by transaction id."""
    tables = {
        "pyarrow": pq.read_table(root, partitioning="hive"),
        "polars": pl.scan_parquet(f"{root}/**/*.parquet").collect().to_arrow(),
        "duckdb": duckdb.sql(f"select * from read_parquet('{root}/**/*.parquet')").to_arrow_table(),
    }
    return {name: t.sort_by("transaction_id") for name, t in tables.items()}


def test_nulls_and_uncastable_values_are_quarantined_and_the_rest_scored_like_onnxruntime(champion, models, tmp_path):
    version, scorer = champion
    nulls = {5: "amount", 1_234: "device_score", 3_001: "amount", 4_999: "velocity_1h"}
    uncastable = [7, 1_234, 5_500]  # 1_234 also has a null; only its first problem is recorded
    table = poisoned_transactions(tmp_path / "in", nulls=nulls, uncastable=uncastable)
    out = tmp_path / "scores"
    result = score_partition(
        scorer, version, hive(tmp_path / "in"), hive(out), partition=DAY, chunk_rows=700,
        passthrough=["transaction_id"], on_row_error="quarantine", max_error_rows=10,
    )  # fmt: skip
    bad = sorted({*nulls, *uncastable})
    assert (result.rows_in, result.rows_out) == (ROWS, ROWS - len(bad))
    report = result.row_errors
    assert report is not None
    assert (report.rows, report.allowed, report.rate) == (len(bad), 10, len(bad) / ROWS)
    assert report.by_stage == {"null": 3, "cast": 3}
    assert report.uri == str(tmp_path / f"scores_errors/date={DAY}/part-0.parquet")

    # Good rows: exactly what onnxruntime gives for them, in input order.
    good = np.setdiff1d(np.arange(ROWS), bad)
    scored = pq.read_table(result.output_uri)
    np.testing.assert_array_equal(scored["transaction_id"].to_numpy(), table["transaction_id"].to_numpy()[good])
    kept = table.take(pa.array(good))
    kept = kept.set_column(
        kept.schema.get_field_index("txn_count_24h"), "txn_count_24h", kept["txn_count_24h"].cast(pa.float32())
    )
    labels, probabilities = ort.InferenceSession(str(models.lr_onnx)).run(None, {"X": features_of(kept)})
    np.testing.assert_array_equal(scored["probability_1"].to_numpy(), probabilities[:, 1])
    np.testing.assert_array_equal(scored["label"].to_numpy(), labels)

    # The errors: one row per bad row, with its key, file, row in the file, stage, column and message.
    ids = table["transaction_id"].to_numpy()
    # A row's first problem in the model's feature order: txn_count_24h comes before device_score.
    first_problem = {**{row: ("null", column) for row, column in nulls.items()}}
    first_problem.update(dict.fromkeys(uncastable, ("cast", "txn_count_24h")))
    for reader, errors in read_everywhere(tmp_path / "scores_errors").items():
        assert errors["transaction_id"].to_pylist() == [int(ids[row]) for row in bad], reader
        files = [Path(f).name for f in errors["source_file"].to_pylist()]
        assert files == ["a.parquet" if row < ROWS // 2 else "b.parquet" for row in bad], reader
        assert errors["source_row"].to_pylist() == [row % (ROWS // 2) for row in bad], reader
        stages = list(zip(errors["error_stage"].to_pylist(), errors["error_column"].to_pylist(), strict=True))
        assert stages == [first_problem[row] for row in bad], reader
        messages = errors["error_message"].to_pylist()
        assert "null in feature 'amount'" in messages[0], reader
        assert "does not cast safely to float" in messages[1], reader
        assert "1099511627777" in messages[1], reader
    # Same lineage as the output, paired by one commit id; readers of the output are not shown the errors.
    output_lineage, errors_lineage = read_lineage(result.output_uri), read_lineage(report.uri)
    assert output_lineage["commit_id"] == errors_lineage["commit_id"]
    assert output_lineage["errors_uri"] == report.uri
    assert errors_lineage["model_version"] == output_lineage["model_version"] == version.version
    assert len(pl.scan_parquet(f"{out}/**/*.parquet").collect()) == ROWS - len(bad)


def test_nulls_pass_keeps_its_meaning_under_quarantine(champion, tmp_path):
    version, scorer = champion
    poisoned_transactions(tmp_path / "in", nulls={10: "amount", 20: "amount"}, uncastable=[])
    plain = score_partition(
        scorer, version, hive(tmp_path / "in"), hive(tmp_path / "a"), partition=DAY, nulls="pass",
        passthrough=["transaction_id"],
    )  # fmt: skip
    quarantined = score_partition(
        scorer, version, hive(tmp_path / "in"), hive(tmp_path / "b"), partition=DAY, nulls="pass",
        passthrough=["transaction_id"], on_row_error="quarantine", max_error_rows=0,
    )  # fmt: skip
    expected, found = pq.read_table(plain.output_uri).to_pandas(), pq.read_table(quarantined.output_uri).to_pandas()
    assert expected["probability_1"].isna().sum() == 2  # the nulls reached the model, as without quarantine
    assert found.equals(expected)
    assert quarantined.row_errors is not None
    assert quarantined.row_errors.rows == 0
    assert pq.read_table(quarantined.row_errors.uri).num_rows == 0  # committed empty: no stale errors survive


def test_the_budget_edge_and_over_it_nothing_is_visible(champion, tmp_path):
    version, scorer = champion
    nulls = dict.fromkeys((3, 300, 3000, 5999), "amount")
    poisoned_transactions(tmp_path / "in", nulls=nulls, uncastable=[])
    out = tmp_path / "scores"

    def run(**budget: Any) -> Any:
        return score_partition(
            scorer, version, hive(tmp_path / "in"), hive(out), partition=DAY, chunk_rows=512,
            passthrough=["transaction_id"], on_row_error="quarantine", **budget,
        )  # fmt: skip

    for budget in (
        {"max_error_rows": 3},
        {"max_error_rate": 3 / ROWS},
        {"max_error_rows": 100, "max_error_rate": 0.0005},
    ):
        with pytest.raises(ErrorBudgetExceededError, match=r"4 or more of 6000 rows cannot be scored") as failed:
            run(**budget)
        assert "nothing was committed" in str(failed.value)
        assert "null 'amount'" in str(failed.value)
        assert files_under(out) == []
        assert files_under(tmp_path / "scores_errors") == []
    assert run(max_error_rows=4).row_errors.rows == 4
    assert run(max_error_rate=4 / ROWS).row_errors.rows == 4
    assert pq.read_table(out).num_rows == ROWS - 4


def test_a_partition_entirely_bad(champion, tmp_path):
    version, scorer = champion
    poisoned_transactions(tmp_path / "in", nulls=dict.fromkeys(range(ROWS), "amount"), uncastable=[])
    dest = hive(tmp_path / "scores")
    with pytest.raises(ErrorBudgetExceededError):
        score_partition(
            scorer, version, hive(tmp_path / "in"), dest, partition=DAY, on_row_error="quarantine", max_error_rate=0.5
        )
    assert files_under(tmp_path / "scores") == []
    assert files_under(tmp_path / "scores_errors") == []
    # A budget of every row: the output is committed empty, the errors hold the partition.
    result = score_partition(
        scorer, version, hive(tmp_path / "in"), dest, partition=DAY, passthrough=["transaction_id"],
        on_row_error="quarantine", max_error_rate=1.0,
    )  # fmt: skip
    assert result.rows_out == 0
    assert pq.read_table(result.output_uri).num_rows == 0
    assert pq.read_table(result.row_errors.uri).num_rows == ROWS


def test_fail_mode_and_budget_arguments():
    with pytest.raises(ValueError, match="needs an error budget"):
        ErrorBudget()
    with pytest.raises(ValueError, match="0 to 1"):
        ErrorBudget(max_error_rate=5)
    assert ErrorBudget(max_error_rate=0.07).allowed(100) == 7
    assert ErrorBudget(max_error_rate=0.5, max_error_rows=10).allowed(100) == 10
    assert (
        errors_dataset(ParquetDataset("s3://b/x/scores/{date}.parquet")).uri == "s3://b/x/scores_errors/{date}.parquet"
    )
    # The rows set aside are written with the codec their scores are.
    assert errors_dataset(ParquetDataset("s3://b/x/scores", compression="none")).compression == "none"


# -- a pyfunc model that raises on some rows ------------------------------------------------------

RAISING = textwrap.dedent(
    '''
    """amount * 2 + age; raises on any batch holding amount == -13 (a poisoned row)."""
    import mlflow
    from mlflow.pyfunc import PythonModel


    class Picky(PythonModel):
        def predict(self, context, model_input, params=None):
            if (model_input["amount"] == -13).any():
                raise ValueError("amount -13 is not a valid amount")
            return model_input["amount"] * 2.0 + model_input["age"]


    mlflow.models.set_model(Picky())
    '''
)


@pytest.fixture(scope="module")
def raising_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    root = tmp_path_factory.mktemp("picky")
    (root / "picky.py").write_text(RAISING)
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "amount"), ColSpec("double", "age")]), outputs=Schema([ColSpec("double")])
    )
    mlflow.pyfunc.save_model(str(root / "model"), python_model=str(root / "picky.py"), signature=signature)
    return root / "model"


class Counting:
    """A scorer that counts the calls the core makes (the runtime's own scorer does the work)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer, self.calls = scorer, 0
        self.input_schema, self.output_schema = scorer.input_schema, scorer.output_schema
        self.concurrency = getattr(scorer, "concurrency", 1)
        self._lock = threading.Lock()

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        with self._lock:
            self.calls += 1
        return self.scorer.score(batch)


def numeric_partition(root: Path, rows: int, poisoned: list[int], column: str = "amount") -> pa.Table:
    rng = np.random.default_rng(3)
    amount = rng.gamma(2.0, 50.0, rows)
    amount[poisoned] = -13.0
    table = pa.table({"id": np.arange(rows), "amount": amount, "age": rng.integers(18, 90, rows).astype(np.float64)})
    if column != "amount":
        table = table.rename_columns(["id", column, "age"])
    (root / f"date={DAY}").mkdir(parents=True)
    pq.write_table(table, root / f"date={DAY}" / "part.parquet")
    return table


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_a_pyfunc_model_that_raises_on_some_rows(raising_model, tmp_path, isolation):
    import mlflow.pyfunc

    rows, poisoned, chunk = 4_000, [17, 2_048, 2_049, 3_999], 1_000
    table = numeric_partition(tmp_path / "in", rows, poisoned)
    version = ModelVersion(name="picky", version="2", format="pyfunc", artifact_uri="file:///picky", registry="test")
    scorer = Counting(PyfuncRuntime(isolation=isolation, workers=1).load(version, raising_model))
    try:
        result = score_partition(
            scorer, version, hive(tmp_path / "in"), hive(tmp_path / "out"), partition=DAY, chunk_rows=chunk,
            passthrough=["id"], on_row_error="quarantine", max_error_rows=4,
        )  # fmt: skip
    finally:
        scorer.scorer.close()
    good = np.setdiff1d(np.arange(rows), poisoned)
    scored = pq.read_table(result.output_uri)
    np.testing.assert_array_equal(scored["id"].to_numpy(), good)
    expected = np.asarray(
        mlflow.pyfunc.load_model(str(raising_model)).predict(table.take(good).to_pandas()[["amount", "age"]])
    )
    np.testing.assert_allclose(scored[scorer.output_schema.names[0]].to_numpy(), expected.ravel())
    errors = pq.read_table(result.row_errors.uri)
    assert errors["id"].to_pylist() == poisoned
    assert set(errors["error_stage"].to_pylist()) == {"model"}
    assert set(errors["error_column"].to_pylist()) == {None}
    assert all("amount -13 is not a valid amount" in m for m in errors["error_message"].to_pylist())
    # Bisection, not row by row: 4 clean chunks once each; each poisoned chunk about 2 log2(chunk) calls per bad row.
    assert scorer.calls <= 4 + 3 * 2 * 2 * int(np.ceil(np.log2(chunk))), scorer.calls
    assert scorer.calls < rows // 10


def test_a_broken_model_fails_over_the_budget_in_few_calls(raising_model, tmp_path):
    rows = 2_000
    numeric_partition(tmp_path / "in", rows, poisoned=list(range(rows)))
    version = ModelVersion(name="picky", version="2", format="pyfunc", artifact_uri="file:///picky", registry="test")
    scorer = Counting(PyfuncRuntime().load(version, raising_model))
    with pytest.raises(ErrorBudgetExceededError, match="more than 5 row"):
        score_partition(
            scorer, version, hive(tmp_path / "in"), hive(tmp_path / "out"), partition=DAY, chunk_rows=rows,
            on_row_error="quarantine", max_error_rows=5,
        )  # fmt: skip
    assert scorer.calls <= 2 * 6 * (int(np.log2(rows)) + 1)
    assert files_under(tmp_path / "out") == []
    assert files_under(tmp_path / "out_errors") == []


# -- a remote server that answers 400 to any request holding a poisoned row ---------------------


class _Picky(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        server = self.server.owner  # type: ignore[attr-defined]
        table = pacsv.read_csv(io.BytesIO(self.rfile.read(int(self.headers["Content-Length"]))))
        a, b = (table.column(n).to_numpy().astype(np.float64) for n in ("a", "b"))
        with server.lock:
            server.requests += 1
        if (a == -13).any():
            status, body = 400, json.dumps({"error_code": "BAD_REQUEST", "message": "a = -13 is out of range"})
        elif server.status != 200:
            status, body = server.status, json.dumps({"message": "down"})
        else:
            status, body = 200, json.dumps({"predictions": (a + 2 * b).tolist()})
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class PickyServer:
    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Picky)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.requests, self.status, self.lock = 0, 200, threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def picky_server() -> Iterator[PickyServer]:
    server = PickyServer()
    try:
        yield server
    finally:
        server.close()


REMOTE = ModelVersion(
    name="toy", version="3", format="remote", artifact_uri="http://127.0.0.1/", registry="test",
    signature=Signature(inputs=(ColumnSpec("a", "double"), ColumnSpec("b", "double"))),
)  # fmt: skip
REMOTE_OPTIONS = {"payload": "csv", "batch_rows": 500, "min_batch_rows": 100, "max_batch_rows": 500,
                  "max_attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02, "retry_deadline": 5.0}  # fmt: skip


def test_a_remote_server_answering_400_to_poisoned_rows(picky_server, tmp_path):
    rows, poisoned = 5_000, [0, 1_999, 4_321]
    table = numeric_partition(tmp_path / "in", rows, poisoned, column="a").rename_columns(["id", "a", "b"])
    pq.write_table(table, tmp_path / "in" / f"date={DAY}" / "part.parquet")
    runtime = HttpRuntime(url=picky_server.url, **REMOTE_OPTIONS)
    with runtime.load(REMOTE) as scorer:
        picky_server.requests = 0
        result = score_partition(
            scorer, REMOTE, hive(tmp_path / "in"), hive(tmp_path / "out"), partition=DAY, chunk_rows=2_500,
            passthrough=["id"], on_row_error="quarantine", max_error_rate=0.001,
        )  # fmt: skip
    good = np.setdiff1d(np.arange(rows), poisoned)
    scored = pq.read_table(result.output_uri)
    np.testing.assert_array_equal(scored["id"].to_numpy(), good)
    a, b = table["a"].to_numpy()[good], table["b"].to_numpy()[good]
    np.testing.assert_allclose(scored["prediction"].to_numpy(), a + 2 * b)
    errors = pq.read_table(result.row_errors.uri)
    assert errors["id"].to_pylist() == poisoned
    assert set(errors["error_stage"].to_pylist()) == {"remote"}
    assert all("answered 400" in m and "a = -13 is out of range" in m for m in errors["error_message"].to_pylist())
    # 10 requests for a clean pass; bisection adds at most ~2 log2(2500) per poisoned row.
    assert picky_server.requests <= 10 + 3 * 2 * 2 * 12, picky_server.requests


def test_a_remote_server_down_is_not_quarantined(picky_server, tmp_path):
    numeric_partition(tmp_path / "in", 1_000, [], column="a")
    table = pq.read_table(tmp_path / "in" / f"date={DAY}" / "part.parquet").rename_columns(["id", "a", "b"])
    pq.write_table(table, tmp_path / "in" / f"date={DAY}" / "part.parquet")
    with HttpRuntime(url=picky_server.url, **REMOTE_OPTIONS).load(REMOTE) as scorer:
        picky_server.status = 503
        with pytest.raises(ScoringError, match="503") as failed:
            score_partition(
                scorer, REMOTE, hive(tmp_path / "in"), hive(tmp_path / "out"), partition=DAY,
                on_row_error="quarantine", max_error_rate=1.0,
            )  # fmt: skip
    assert not isinstance(failed.value, ErrorBudgetExceededError)
    assert files_under(tmp_path / "out") == []
    assert files_under(tmp_path / "out_errors") == []


# -- SIGKILL at each point of the two commits ------------------------------------------------------

QUARANTINE_WRITER = Path(__file__).with_name("quarantine_writer.py")


def run_quarantine_writer(spec: dict, *, pause_at: str | None, tmp_path: Path) -> None:
    run_writer_script(QUARANTINE_WRITER, spec, pause_at=pause_at, tmp_path=tmp_path)


def readers_of(root: Path) -> dict[str, Any]:
    """pyarrow datasets, Polars (folder and glob) and DuckDB (glob): the transaction ids each sees."""

    def ids(read: Any) -> list[int] | None:
        try:
            table = read()
        except Exception:  # noqa: BLE001 -- each reader has its own "no files found" error
            return None
        return sorted(table.column("transaction_id").to_pylist()) if table.num_rows or table.num_columns else None

    return {
        "pyarrow.dataset": ids(lambda: pads.dataset(root, partitioning="hive").to_table()),
        "polars directory": ids(lambda: pl.scan_parquet(f"{root}/").collect().to_arrow()),
        "polars glob": ids(lambda: pl.scan_parquet(f"{root}/**/*.parquet").collect().to_arrow()),
        "duckdb glob": ids(lambda: duckdb.sql(f"select * from read_parquet('{root}/**/*.parquet')").to_arrow_table()),
    }


@pytest.mark.slow
def test_killed_at_each_commit_point_no_reader_sees_a_new_output_without_its_errors(models, tmp_path):
    source, out = tmp_path / "in", tmp_path / "scores"
    spec = {"input": str(source), "output": str(out), "partition": DAY, "model": str(models.lr_onnx)}

    def write_input(poisoned: list[int]) -> tuple[set[int], set[int]]:
        """The input of one run: its poisoned rows; returns (ids the output holds, ids the errors hold)."""
        shutil.rmtree(source, ignore_errors=True)
        table = poisoned_transactions(source, nulls=dict.fromkeys(poisoned, "amount"), uncastable=[])
        ids = table["transaction_id"].to_numpy()
        bad = {int(ids[row]) for row in poisoned}
        return {int(i) for i in ids} - bad, bad

    def seen() -> list[tuple[str, frozenset[int] | None, frozenset[int] | None]]:
        outputs, errors = readers_of(out), readers_of(tmp_path / "scores_errors")
        return [
            (name, None if outputs[name] is None else frozenset(outputs[name]),
             None if errors[name] is None else frozenset(errors[name]))
            for name in outputs
        ]  # fmt: skip

    old_output, old_errors = write_input([1, 2, 3])
    run_quarantine_writer(spec, pause_at=None, tmp_path=tmp_path)
    assert all((o, e) == (old_output, old_errors) for _, o, e in seen())
    new_output, new_errors = write_input([10, 20, 30, 40])
    assert new_output != old_output
    # Killed before the errors' commit; between the two commits; after both.
    expected = {
        "before-1": (old_output, old_errors),
        "after-1": (old_output, new_errors),
        "after-2": (new_output, new_errors),
    }
    for point, (output, errors) in expected.items():
        run_quarantine_writer(spec, pause_at=point, tmp_path=tmp_path)
        for name, seen_output, seen_errors in seen():
            assert (seen_output, seen_errors) == (output, errors), f"{name} after a kill at {point}"
            # The invariant the README states: a new output is never visible without its errors.
            assert seen_output != new_output or seen_errors == new_errors, name
    # The last run swept what the killed ones left in both staging folders.
    assert files_under(tmp_path / ".scores.ml-assets-staging") == []
    assert files_under(tmp_path / ".scores_errors.ml-assets-staging") == []
