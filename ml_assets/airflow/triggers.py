"""Triggers that fire when a watched alias or stage moves to another model version (rollbacks included).

- ``ModelPromotionTrigger``: for the deferrable ``ModelPromotionSensor``; fires once, at the first
  promotion after the cursor it was given.
- ``ModelPromotionEventTrigger``: for ``AssetWatcher``, so a promotion starts the DAGs scheduled on
  an asset; fires once per promotion, forever. It persists the versions it saw (Airflow's asset
  state store where the triggerer offers one, else ``state_path``), so a restarted triggerer fires
  for a promotion it missed while down and never for promotions it already reported.

Both run the same ``ml_assets.promotion.PromotionWatch`` as the Dagster sensor. Registry calls are
synchronous and run in a worker thread, within a time budget, so the triggerer's loop never blocks.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from ml_assets.airflow.hooks import DEFAULT_CONN_ID, ModelRegistryHook
from ml_assets.promotion import PromotionCheck, PromotionCursor, PromotionWatch
from ml_assets.service import ModelService

#: Key of the cursor in Airflow's asset state store.
STATE_KEY = "ml_assets.promotion_cursor"
# With a webhook inbox, how often the inbox is looked at; the registry keeps its own interval.
INBOX_INTERVAL_S = 2.0
# A hung registry call gives up after this long and counts as an outage: polled again next time.
CHECK_BUDGET_S = 30.0


class _PromotionPolling:
    """What both triggers share: the watch, the service, one check in a worker thread."""

    watch: list[str]
    registry_conn_id: str
    poll_interval_s: float
    webhook_inbox: str | None
    log: Any

    def _setup(self) -> None:
        self._watch = PromotionWatch(self.watch, poll_interval_s=self.poll_interval_s, webhook_inbox=self.webhook_inbox)
        self._service: ModelService | None = None

    @property
    def _sleep_s(self) -> float:
        return min(self.poll_interval_s, INBOX_INTERVAL_S) if self.webhook_inbox else self.poll_interval_s

    async def _check(self, cursor: PromotionCursor) -> PromotionCheck:
        if self._service is None:
            self._service = await ModelRegistryHook(self.registry_conn_id).aget_conn()
        # Registry clients block: the check runs in a thread so the triggerer's loop never waits on it.
        check = await asyncio.to_thread(self._watch.check, self._service.resolve, cursor, budget_s=CHECK_BUDGET_S)
        for note in check.notes:
            self.log.info(note)
        if check.unavailable:
            self.log.warning("registry unavailable, will look again: %s", check.unavailable)
        return check

    def _close(self) -> None:
        if self._service is not None:
            self._service.close()
            self._service = None


class ModelPromotionTrigger(_PromotionPolling, BaseTrigger):
    """Fires once, when a ref of ``watch`` resolves to another version than in ``cursor``.

    Args:
        watch: refs with an alias or a stage, e.g. ``["models:/fraud@champion"]``.
        cursor: an encoded ``PromotionCursor`` holding the versions to compare with; a ref
            missing from it is recorded as a baseline on the first poll.
        registry_conn_id: an ``ml_assets_registry`` connection.
        poll_interval_s: how often the registry is polled.
        webhook_inbox: a folder ``ml-assets webhook serve`` writes MLflow alias events to; looked
            at every few seconds so a promotion is seen at once.
    """

    def __init__(
        self,
        *,
        watch: Sequence[str],
        cursor: str | None = None,
        registry_conn_id: str = DEFAULT_CONN_ID,
        poll_interval_s: float = 60.0,
        webhook_inbox: str | None = None,
    ) -> None:
        super().__init__()
        self.watch = list(watch)
        self.cursor = cursor
        self.registry_conn_id = registry_conn_id
        self.poll_interval_s = poll_interval_s
        self.webhook_inbox = webhook_inbox
        self._setup()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "watch": self.watch,
                "cursor": self.cursor,
                "registry_conn_id": self.registry_conn_id,
                "poll_interval_s": self.poll_interval_s,
                "webhook_inbox": self.webhook_inbox,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        cursor = PromotionCursor.decode(self.cursor)
        try:
            while True:
                check = await self._check(cursor)
                if check.promotions:
                    yield TriggerEvent(
                        {
                            "status": "promoted",
                            "promotions": [p.to_dict() for p in check.promotions],
                            "cursor": check.cursor.encode(),
                        }
                    )
                    return
                cursor = check.cursor
                await asyncio.sleep(self._sleep_s)
        finally:
            self._close()


class ModelPromotionEventTrigger(_PromotionPolling, BaseEventTrigger):
    """Fires an event per promotion of a ref of ``watch``; for ``AssetWatcher``.

    Each event's payload is ``Promotion.to_dict()``: ref, model name, new and previous version,
    model URI, a promotion sequence number and a reason. The first poll records a baseline and
    fires nothing.

    Args:
        watch / registry_conn_id / poll_interval_s / webhook_inbox: as ``ModelPromotionTrigger``.
        state_path: a JSON file that keeps the cursor across triggerer restarts where Airflow
            offers no asset state store (before 3.3). Local to the triggerer; put it on a volume.

    Example:
        ```python
        promoted = Asset(
            "fraud_champion",
            watchers=[AssetWatcher(name="fraud_champion", trigger=ModelPromotionEventTrigger(
                watch=["models:/fraud@champion"]))],
        )
        ```
    """

    def __init__(
        self,
        *,
        watch: Sequence[str],
        registry_conn_id: str = DEFAULT_CONN_ID,
        poll_interval_s: float = 60.0,
        webhook_inbox: str | None = None,
        state_path: str | None = None,
    ) -> None:
        super().__init__()
        self.watch = list(watch)
        self.registry_conn_id = registry_conn_id
        self.poll_interval_s = poll_interval_s
        self.webhook_inbox = webhook_inbox
        self.state_path = state_path
        self._setup()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # No cursor in here: the kwargs identify the watcher, so they must not change as it runs.
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "watch": self.watch,
                "registry_conn_id": self.registry_conn_id,
                "poll_interval_s": self.poll_interval_s,
                "webhook_inbox": self.webhook_inbox,
                "state_path": self.state_path,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        saved = await self._load_cursor()
        # What was handed over so far: a baseline at once, a promotion with its event.
        delivered = _copy(saved)
        try:
            while True:
                check = await self._check(delivered)
                for ref, version in check.cursor.versions.items():
                    delivered.versions.setdefault(ref, version)
                delivered.last_poll = check.cursor.last_poll
                for promotion in check.promotions:
                    self.log.info(promotion.reason)
                    # Recorded as the event is yielded: if the generator is closed at the yield, the
                    # consumer already holds the event.
                    delivered.versions[promotion.ref] = promotion.version.version
                    delivered.promotions[promotion.ref] = promotion.sequence
                    yield TriggerEvent(promotion.to_dict())
                saved = await self._save_if_changed(delivered, saved)
                await asyncio.sleep(self._sleep_s)
        finally:
            # Closed (triggerer stopping, watcher removed) right after an event: that event was
            # handed over, so it is recorded; a hard kill before this repeats it once, never loses it.
            await self._save_if_changed(delivered, saved)
            self._close()

    async def _save_if_changed(self, cursor: PromotionCursor, saved: PromotionCursor) -> PromotionCursor:
        # Poll times are not worth a write; versions and promotion counts are.
        if (cursor.versions, cursor.promotions) == (saved.versions, saved.promotions):
            return saved
        await self._save_cursor(cursor)
        return _copy(cursor)

    async def _load_cursor(self) -> PromotionCursor:
        store = getattr(self, "asset_state_store", None)  # injected by the triggerer from Airflow 3.3 on
        if store is not None:
            raw = await store.aget(STATE_KEY)
            if raw:
                return PromotionCursor.decode(str(raw))
        if self.state_path and Path(self.state_path).is_file():
            return PromotionCursor.decode(await asyncio.to_thread(Path(self.state_path).read_text))
        return PromotionCursor()

    async def _save_cursor(self, cursor: PromotionCursor) -> None:
        store = getattr(self, "asset_state_store", None)
        if store is not None:
            await store.aset(STATE_KEY, cursor.encode())
        if self.state_path:
            await asyncio.to_thread(_write_atomically, Path(self.state_path), cursor.encode())


def _copy(cursor: PromotionCursor) -> PromotionCursor:
    return PromotionCursor(dict(cursor.versions), dict(cursor.promotions), cursor.last_poll)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


__all__ = ["STATE_KEY", "ModelPromotionEventTrigger", "ModelPromotionTrigger"]
