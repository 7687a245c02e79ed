"""Airflow's own OpenLineage provider reports a scoring task: `airflow tasks test` with the provider's
HTTP transport pointed at a loopback receiver; the events carry the operator's datasets and the model
version (the mlModel facet) and validate against the OpenLineage JSON schema."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from tests.conftest import DATES, ROWS_PER_DAY, VENV_BIN
from tests.openlineage_receiver import Receiver, validate

# Not imported from tests/airflow/conftest.py: importing it again would give Airflow a second home.
AIRFLOW = str(Path(VENV_BIN) / "airflow")

SCORE_DAG = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import dag

    from ml_assets.airflow.operators import ScorePartitionOperator


    @dag(schedule=None, start_date=datetime(2026, 11, 1))
    def ol_score():
        ScorePartitionOperator(
            task_id="score",
            model="models:/fraud@champion",
            input_dataset="{input}",
            output_dataset="{output}",
            partition="{{{{ ds }}}}",
            registry_conn_id="ol_registry",
        )


    ol_score()
    """
)


def test_the_openlineage_provider_reports_the_model_version(dags_folder, connect, models, transactions, tmp_path):
    receiver = Receiver()
    receiver.thread.start()
    try:
        output = tmp_path / "scores"
        (dags_folder / "ol_score.py").write_text(SCORE_DAG.format(input=transactions, output=output))
        connect("ol_registry", models.tracking_uri)
        transport = {"type": "http", "url": receiver.url, "endpoint": "api/v1/lineage"}
        env = {
            **os.environ,
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "airflow-tests",
            # A loaded CI machine parses a DAG importing pyarrow and MLflow's client slowly.
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "240",
        }
        done = subprocess.run(
            [AIRFLOW, "tasks", "test", "ol_score", "score", DATES[0]],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        events = [e for e in receiver.wait_for(2) if e.get("job", {}).get("name") == "ol_score.score"]
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    by_type = {e["eventType"]: e for e in events}
    assert set(by_type) >= {"START", "COMPLETE"}, [e.get("eventType") for e in events]
    for event in events:
        validate(event)
    start, complete = by_type["START"], by_type["COMPLETE"]
    assert [(d["namespace"], d["name"]) for d in start["outputs"]] == [("file", str(output))]
    inputs = [(d["namespace"], d["name"]) for d in complete["inputs"]]
    assert inputs[0] == ("file", str(transactions))
    assert inputs[1][1] == "models/fraud/1"
    model = complete["run"]["facets"]["mlModel"]
    assert (model["name"], model["version"], model["uri"], model["format"]) == ("fraud", "1", "models:/fraud/1", "onnx")
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == ROWS_PER_DAY
