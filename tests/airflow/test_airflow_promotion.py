"""Promotion triggers driven to completion against a real MLflow registry while the test moves the alias,
and the deferrable sensor under ``airflow tasks test`` (trigger run in line by Airflow itself)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ml_assets.promotion import PromotionCursor

WATCH = ["models:/af@champion"]
POLL_S = 0.3
# Long enough for several polls: a trigger that should stay quiet has had every chance to fire.
QUIET_S = 3.0


def wait_until(condition, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s}s")
        time.sleep(0.05)


async def next_event(events, *, timeout_s: float = 30.0):
    return await asyncio.wait_for(anext(events), timeout_s)


def test_event_trigger_fires_per_promotion_rollback_included_and_remembers_across_restarts(
    airflow_db, connect, registry_uri, champion, tmp_path
):
    from ml_assets.airflow.triggers import ModelPromotionEventTrigger

    connect("ml_assets_default", registry_uri)
    state = tmp_path / "state" / "cursor.json"

    def trigger() -> ModelPromotionEventTrigger:
        return ModelPromotionEventTrigger(watch=WATCH, poll_interval_s=POLL_S, state_path=str(state))

    async def scenario() -> None:
        events = trigger().run()
        first = asyncio.ensure_future(next_event(events))
        # The first poll records a baseline and fires nothing; it is persisted at once.
        await asyncio.to_thread(wait_until, state.is_file, timeout_s=30, what="baseline")
        assert PromotionCursor.decode(state.read_text()).versions == {WATCH[0]: "1"}
        assert not first.done()
        champion("2")
        promoted = (await first).payload
        assert json.loads(json.dumps(promoted)) == promoted  # stored in the metadata database as JSON
        assert promoted["model_name"] == "af"
        assert (promoted["previous_version"], promoted["model_version"]) == ("1", "2")
        assert promoted["reason"] == "promotion: models:/af@champion moved from version 1 to 2"
        champion("1")  # a rollback is a promotion too
        rolled_back = (await next_event(events)).payload
        assert (rolled_back["previous_version"], rolled_back["model_version"], rolled_back["sequence"]) == ("2", "1", 2)
        await events.aclose()

        # Down while the alias moves: the restarted trigger reports that promotion once, and no other.
        champion("2")
        restarted = trigger().run()
        missed = (await next_event(restarted)).payload
        assert (missed["previous_version"], missed["model_version"], missed["sequence"]) == ("1", "2", 3)
        with pytest.raises(TimeoutError):
            await next_event(restarted, timeout_s=QUIET_S)
        await restarted.aclose()
        assert PromotionCursor.decode(state.read_text()).promotions == {WATCH[0]: 3}

    asyncio.run(scenario())


def test_event_trigger_serializes_without_its_cursor():
    """AssetWatcher identifies a trigger by its kwargs: they must not change while it runs."""
    from ml_assets.airflow.triggers import ModelPromotionEventTrigger

    trigger = ModelPromotionEventTrigger(watch=WATCH, poll_interval_s=30, webhook_inbox="/inbox")
    classpath, kwargs = trigger.serialize()
    assert classpath == "ml_assets.airflow.triggers.ModelPromotionEventTrigger"
    assert ModelPromotionEventTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert "cursor" not in kwargs


def test_sensor_trigger_completes_at_the_first_promotion_and_keeps_polling_through_an_outage(
    airflow_db, connect, registry_uri, champion
):
    from ml_assets.airflow.triggers import ModelPromotionTrigger

    connect("ml_assets_default", registry_uri)
    # The version the sensor compares with came from its start; the registry is already past it.
    since = PromotionCursor(versions={WATCH[0]: "1"}).encode()
    champion("2")

    async def scenario() -> None:
        events = ModelPromotionTrigger(watch=WATCH, cursor=since, poll_interval_s=POLL_S).run()
        event = await next_event(events)
        assert event.payload["status"] == "promoted"
        (promotion,) = event.payload["promotions"]
        assert (promotion["previous_version"], promotion["model_version"]) == ("1", "2")
        with pytest.raises(StopAsyncIteration):  # fired once, then done
            await anext(events)

    asyncio.run(scenario())

    connect(
        "ml_assets_default",
        f"http://127.0.0.1:{_closed_port()}",
        registry_options={"max_retries": 0, "request_timeout_s": 2},
    )

    async def outage() -> None:
        events = ModelPromotionTrigger(watch=WATCH, cursor=since, poll_interval_s=POLL_S).run()
        # A registry that does not answer is no promotion: the trigger keeps polling, it does not fire or fail.
        with pytest.raises(TimeoutError):
            await next_event(events, timeout_s=QUIET_S)
        await events.aclose()

    asyncio.run(outage())


def _closed_port() -> int:
    from ml_assets.dev.services import free_port

    return free_port()


SENSOR_DAG = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import dag

    from ml_assets.airflow.sensors import ModelPromotionSensor


    @dag(schedule=None, start_date=datetime(2026, 11, 1))
    def wait_for_promotion():
        ModelPromotionSensor(task_id="wait", watch="models:/af@champion", poke_interval=0.5, timeout=120)


    wait_for_promotion()
    """
)


@pytest.mark.slow
def test_deferrable_sensor_under_airflow_tasks_test(dags_folder, connect, registry_uri, champion, tmp_path):
    (dags_folder / "wait_for_promotion.py").write_text(SENSOR_DAG)
    connect("ml_assets_default", registry_uri)
    log = tmp_path / "task.log"
    airflow = str(Path(sys.executable).parent / "airflow")
    with log.open("w") as out:
        task = subprocess.Popen(
            [airflow, "tasks", "test", "wait_for_promotion", "wait", "2026-11-01"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: "baseline recorded at version 1" in log.read_text() or task.poll() is not None,
            timeout_s=120,
            what="baseline from the deferred sensor's trigger",
        )
        assert task.poll() is None, log.read_text()[-3000:]
        assert "Pausing task as DEFERRED" in log.read_text()
        champion("2")
        task.wait(timeout=120)
    finally:
        if task.poll() is None:
            task.kill()
            task.wait(timeout=30)
    text = log.read_text()
    assert task.returncode == 0, text[-3000:]
    assert "promotion: models:/af@champion moved from version 1 to 2" in text
    assert "new_state=success" in text


def test_sensor_refuses_reschedule_mode_and_refs_without_alias():
    from ml_assets.airflow.sensors import ModelPromotionSensor
    from ml_assets.resources.core.errors import ModelRefError

    with pytest.raises(ValueError, match="use mode='poke'"):
        ModelPromotionSensor(task_id="w", watch=WATCH, deferrable=False, mode="reschedule")
    sensor = ModelPromotionSensor(task_id="w2", watch="models:/af/1")
    with pytest.raises(ModelRefError, match="names no alias or stage"):
        sensor.execute({})


def test_webhook_inbox_makes_the_trigger_look_before_its_poll_is_due(
    airflow_db, connect, registry_uri, champion, tmp_path
):
    from ml_assets.airflow.triggers import ModelPromotionTrigger
    from ml_assets.webhooks import PromotionInbox

    connect("ml_assets_default", registry_uri)
    inbox = tmp_path / "inbox"
    # Polled just now, next poll in an hour: only a webhook event can make the trigger look.
    since = PromotionCursor(versions={WATCH[0]: "1"}, last_poll=time.time()).encode()
    champion("2")

    async def scenario() -> None:
        events = ModelPromotionTrigger(watch=WATCH, cursor=since, poll_interval_s=3600, webhook_inbox=str(inbox)).run()
        pending = asyncio.ensure_future(next_event(events, timeout_s=30))
        await asyncio.sleep(QUIET_S)
        assert not pending.done()
        PromotionInbox(inbox).put("af", "champion", "2", delivery_id="d-1")
        started = time.monotonic()
        (promotion,) = (await pending).payload["promotions"]
        assert promotion["model_version"] == "2"
        assert time.monotonic() - started < 10
        assert list(inbox.glob("*.json")) == []  # consumed

    asyncio.run(scenario())


POKING_DAG = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import dag

    from ml_assets.airflow.sensors import ModelPromotionSensor


    @dag(schedule=None, start_date=datetime(2026, 11, 1), params={"scored_with": "1"})
    def poke_for_promotion():
        ModelPromotionSensor(
            task_id="wait",
            watch="models:/af@champion",
            since={"models:/af@champion": "{{ params.scored_with }}"},
            deferrable=False,
            poke_interval=0.5,
            timeout=60,
        )


    poke_for_promotion()
    """
)


def test_poking_sensor_compares_with_the_templated_since(dags_folder, connect, registry_uri, champion):
    """The champion moved before the sensor started: ``since`` (e.g. the version that scored) still sees it."""
    import importlib.util

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    (dags_folder / "poke_for_promotion.py").write_text(POKING_DAG)
    connect("ml_assets_default", registry_uri)
    champion("2")
    spec = importlib.util.spec_from_file_location("poke_for_promotion", dags_folder / "poke_for_promotion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = module.poke_for_promotion().test()
    assert run.state == DagRunState.SUCCESS
    with create_session() as session:
        (row,) = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids="wait")).all()
        (promotion,) = XComModel.deserialize_value(row)
    assert (promotion["previous_version"], promotion["model_version"]) == ("1", "2")
