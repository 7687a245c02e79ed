"""The shipped example DAGs under ``dag.test()`` on a migrated Airflow database, against a real MLflow registry."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ml_assets.datasets import read_lineage
from tests.conftest import DATES, features_of

EXAMPLES = Path(__file__).parents[2] / "ml_assets" / "airflow" / "example_dags"


@pytest.fixture
def env(dags_folder, connect, registry_uri, champion, transactions, tmp_path):
    """The example DAGs in the DAGs folder, the default connection on the test registry (@champion on v1)."""
    for example in EXAMPLES.glob("example_*.py"):
        shutil.copy(example, dags_folder)
    connect("ml_assets_default", registry_uri)
    conf = {"model": "models:/af@champion", "input_dataset": str(transactions), "output_dataset": str(tmp_path / "out")}
    return {"champion": champion, "conf": conf, "out": tmp_path / "out", "transactions": transactions}


def run_dag(dag, *, conf: dict, day: str | None = None):
    from airflow.utils.state import DagRunState

    logical_date = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc) if day else None
    run = dag.test(logical_date=logical_date, run_conf=conf)
    assert run.state == DagRunState.SUCCESS, f"{dag.dag_id} ended {run.state}"
    return run


def xcoms(run, task_id: str) -> list:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id)).all()
        return [XComModel.deserialize_value(r) for r in sorted(rows, key=lambda r: r.map_index)]


def asset_events(run) -> list:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == run.run_id)).all()
        return sorted(((e.partition_key, dict(e.extra)) for e in events), key=lambda e: str(e[0]))


def scored_versions(out: Path) -> dict[str, str]:
    return {d: read_lineage(str(out / f"date={d}" / "part-0.parquet"))["model_version"] for d in DATES}


def test_daily_dag_scores_the_day_with_the_champion(env, models):
    from ml_assets.airflow.example_dags.example_score_daily import ml_assets_score_daily

    run = run_dag(ml_assets_score_daily(), conf=env["conf"], day=DATES[1])

    output = env["out"] / f"date={DATES[1]}" / "part-0.parquet"
    assert sorted(p.name for p in env["out"].iterdir()) == [f"date={DATES[1]}"]  # that day only, nothing half-written
    scores = pq.read_table(output)
    source = pq.read_table(env["transactions"] / f"date={DATES[1]}")
    assert scores.column("transaction_id").to_pylist() == source.column("transaction_id").to_pylist()
    expected = models.lr.predict_proba(features_of(source))[:, 1]
    np.testing.assert_allclose(scores.column("probability_1").to_numpy(), expected, atol=1e-5)
    lineage = read_lineage(str(output))
    assert (lineage["model_name"], lineage["model_version"], lineage["partition"]) == ("af", "1", DATES[1])
    assert lineage["airflow"]["dag_id"] == "ml_assets_score_daily"
    assert lineage["airflow"]["task_id"] == "score"
    (summary,) = xcoms(run, "score")
    assert summary["model_name"] == "af"
    assert summary["model_version"] == "1"
    assert summary["model_uri"] == "models:/af/1"
    assert summary["partition"] == DATES[1]
    assert summary["rows"] == source.num_rows
    assert summary["output"] == str(output)
    assert summary["seconds"] > 0
    assert summary["rows_per_second"] > 0
    assert summary["reader"].startswith("pyarrow: ")  # auto, and it says why: a small local partition
    assert set(summary) == {
        "model_name",
        "model_version",
        "model_uri",
        "partition",
        "rows",
        "seconds",
        "rows_per_second",
        "output",
        "reader",
    }
    ((partition_key, extra),) = asset_events(run)
    assert partition_key == DATES[1]
    assert extra["model_version"] == "1"
    assert extra["rows"] == source.num_rows


def test_a_retry_rewrites_the_partition_whole(env):
    """Running the same day again (a retry, a backfill) leaves one committed file with the same rows."""
    from ml_assets.airflow.example_dags.example_score_daily import ml_assets_score_daily

    output = env["out"] / f"date={DATES[0]}" / "part-0.parquet"
    run_dag(ml_assets_score_daily(), conf=env["conf"], day=DATES[0])
    first, first_inode = pq.read_table(output), output.stat().st_ino
    run_dag(ml_assets_score_daily(), conf=env["conf"], day=DATES[0])
    assert output.stat().st_ino != first_inode  # a new file was committed over the old one
    assert [p.name for p in output.parent.iterdir()] == ["part-0.parquet"]
    assert pq.read_table(output).equals(first)


def test_promotion_dag_rescores_only_stale_partitions_in_a_mapped_task(env, models):
    from ml_assets.airflow.example_dags.example_rescore_on_promotion import ml_assets_rescore_on_promotion
    from ml_assets.airflow.example_dags.example_score_daily import ml_assets_score_daily

    for day in DATES:
        run_dag(ml_assets_score_daily(), conf=env["conf"], day=day)
    env["champion"]("2")
    # One day already scored by v2 (as if by today's daily run): not stale.
    run_dag(ml_assets_score_daily(), conf=env["conf"], day=DATES[2])
    assert scored_versions(env["out"]) == {DATES[0]: "1", DATES[1]: "1", DATES[2]: "2"}

    rescore = ml_assets_rescore_on_promotion()
    run = run_dag(rescore, conf=env["conf"])

    assert xcoms(run, "stale_partitions") == [[DATES[0], DATES[1]]]
    assert [s["partition"] for s in xcoms(run, "rescore")] == [DATES[0], DATES[1]]
    assert scored_versions(env["out"]) == dict.fromkeys(DATES, "2")
    source = pq.read_table(env["transactions"] / f"date={DATES[0]}")
    scores = pq.read_table(env["out"] / f"date={DATES[0]}" / "part-0.parquet")
    expected = models.rf.predict_proba(features_of(source))[:, 1]
    np.testing.assert_allclose(scores.column("probability_1").to_numpy(), expected, atol=1e-5)
    assert [(k, e["model_version"]) for k, e in asset_events(run)] == [(DATES[0], "2"), (DATES[1], "2")]

    again = run_dag(rescore, conf=env["conf"])
    assert xcoms(again, "stale_partitions") == [[]]
    assert xcoms(again, "rescore") == []  # the mapped task expanded to nothing
