"""Wait for a model promotion: a watched alias or stage moving to another version, rollbacks included."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from ml_assets.airflow.hooks import DEFAULT_CONN_ID, ModelRegistryHook
from ml_assets.airflow.triggers import CHECK_BUDGET_S, ModelPromotionTrigger
from ml_assets.promotion import PromotionCursor, PromotionWatch

if TYPE_CHECKING:
    from airflow.sdk import Context


class ModelPromotionSensor(BaseSensorOperator):
    """Succeeds when a ref of ``watch`` resolves to another version than it did when the sensor started
    (or than ``since`` says), and returns the promotions (ref, model name, version, previous version,
    URI, reason) as its XCom.

    Deferrable by default: the wait happens in the triggerer (``ModelPromotionTrigger``), which holds
    no worker slot. With ``deferrable=False`` it pokes in ``poke`` mode; ``reschedule`` mode is
    refused, because it would forget the versions it started from between pokes.

    Args:
        watch: refs with an alias or a stage, e.g. ``["models:/fraud@champion"]``.
        since: the version each ref is compared with, templated, e.g.
            ``{"models:/fraud@champion": "{{ ti.xcom_pull('score')['model_version'] }}"}``;
            a ref not named is compared with its version at the first poll.
        registry_conn_id: an ``ml_assets_registry`` connection.
        webhook_inbox: a folder ``ml-assets webhook serve`` writes MLflow alias events to; the
            trigger looks at it every few seconds, so a promotion is seen at once.
        deferrable: Airflow's own switch between the triggerer and a worker slot.
    """

    template_fields: Sequence[str] = ("watch", "since")
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        watch: str | Sequence[str],
        since: Mapping[str, str] | None = None,
        registry_conn_id: str = DEFAULT_CONN_ID,
        webhook_inbox: str | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.watch = [watch] if isinstance(watch, str) else list(watch)
        self.since = dict(since or {})
        self.registry_conn_id = registry_conn_id
        self.webhook_inbox = webhook_inbox
        self.deferrable = deferrable
        if not deferrable and self.mode == "reschedule":
            msg = f"{self.task_id}: ModelPromotionSensor keeps the versions it started from; use mode='poke'"
            raise ValueError(msg)
        self._cursor: PromotionCursor | None = None

    def _start_cursor(self) -> PromotionCursor:
        PromotionWatch(self.watch)  # refuses a ref without alias or stage before any wait
        return PromotionCursor(versions={ref: str(version) for ref, version in self.since.items()})

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        self.defer(
            trigger=ModelPromotionTrigger(
                watch=self.watch,
                cursor=self._start_cursor().encode(),
                registry_conn_id=self.registry_conn_id,
                poll_interval_s=self.poke_interval,
                webhook_inbox=self.webhook_inbox,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout is not None else None,
        )
        return None  # defer() raises; never reached

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        promotions = list(event.get("promotions") or [])
        for promotion in promotions:
            self.log.info(promotion["reason"])
        return promotions

    def poke(self, context: Context) -> PokeReturnValue:
        if self._cursor is None:
            self._cursor = self._start_cursor()
        watch = PromotionWatch(self.watch, poll_interval_s=0, webhook_inbox=self.webhook_inbox)
        with ModelRegistryHook(self.registry_conn_id).get_conn() as service:
            check = watch.check(service.resolve, self._cursor, budget_s=CHECK_BUDGET_S)
        for note in check.notes:
            self.log.info(note)
        if check.unavailable:
            self.log.warning("registry unavailable, will look again: %s", check.unavailable)
        self._cursor = check.cursor
        promotions = [p.to_dict() for p in check.promotions]
        for promotion in promotions:
            self.log.info(promotion["reason"])
        return PokeReturnValue(is_done=bool(promotions), xcom_value=promotions or None)
