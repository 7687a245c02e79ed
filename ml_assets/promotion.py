"""Seeing a model promotion (an alias or a stage moves, including a rollback), for any scheduler.

The Dagster promotion sensor and the Airflow triggers both ask ``PromotionWatch.check`` the same
question on every tick: which watched refs now resolve to another version than last time? The
answer and the new cursor are plain data; what to do about a promotion (run requests, a trigger
event) is the caller's business.

The registry is polled (``search_model_versions`` cannot filter by alias or stage); a webhook inbox,
when given, makes the next check look at once instead of waiting for the polling interval. The
registry stays the source of truth: an inbox event only says where to look.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

from ml_assets.datasets import LEGACY_TEMP_PREFIX, OUTPUT_FILE, ParquetDataset, read_lineage
from ml_assets.resources.core.errors import DatasetError, MlAssetsError, ModelNotFoundError, ModelRefError
from ml_assets.resources.core.models import ModelRef, ModelVersion
from ml_assets.webhooks import PromotionInbox

# Registry calls run here so a hung call cannot hold a check past its budget.
_resolver_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ml-assets-promotion")
# Stands for the partition key while a dataset's path is turned into a glob.
# Stands for "any partition" in a path built by ParquetDataset.partition_uri, then globbed as "*":
# a valid partition value (partition values cross the path validation), never a real one.
_KEY = "__ml_assets_any_partition__"


@dataclass
class PromotionCursor:
    """Per watched ref: the version last acted on and how many promotions were seen.

    The promotion count is part of every run key, so rolling back to a version scored before
    is a new promotion, while a repeated tick for the same promotion is not.
    """

    versions: dict[str, str] = field(default_factory=dict)
    promotions: dict[str, int] = field(default_factory=dict)
    last_poll: float = 0.0

    @classmethod
    def decode(cls, raw: str | None) -> PromotionCursor:
        """An undecodable cursor starts fresh: the next check records a baseline, no storm of runs."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(
                versions={str(k): str(v) for k, v in data["versions"].items()},
                promotions={str(k): int(v) for k, v in data.get("promotions", {}).items()},
                last_poll=float(data.get("last_poll", 0.0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Promotion:
    ref: str
    previous: str
    version: ModelVersion
    sequence: int

    @property
    def reason(self) -> str:
        return f"promotion: {self.ref} moved from version {self.previous} to {self.version.version}"

    def to_dict(self) -> dict[str, Any]:
        """A small JSON-able description: what a trigger event or a run's configuration carries."""
        return {
            "ref": self.ref,
            "model_name": self.version.name,
            "model_version": self.version.version,
            "previous_version": self.previous,
            "model_uri": self.version.uri,
            "sequence": self.sequence,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PromotionCheck:
    """The outcome of one check.

    ``skip_reason`` is set when the registry was not asked (no inbox event and no poll due) or did
    not answer in time; ``cursor`` is then the old one, so a promotion is picked up once it answers.
    """

    cursor: PromotionCursor
    promotions: tuple[Promotion, ...] = ()
    notes: tuple[str, ...] = ()
    skip_reason: str | None = None
    #: ``"<ref>: <error>"`` when the registry failed or timed out.
    unavailable: str | None = None


def watched_refs(watch: Sequence[str]) -> list[ModelRef]:
    """``watch`` parsed; a ref without an alias or a stage cannot be promoted and is refused."""
    refs = [ModelRef.parse(r) for r in watch]
    for ref in refs:
        if ref.alias is None and ref.stage is None:
            msg = f"{ref.raw!r} names no alias or stage; a promotion watch needs e.g. 'models:/fraud@champion'"
            raise ModelRefError(msg)
    if not refs:
        msg = "a promotion watch needs at least one ref, e.g. 'models:/fraud@champion'"
        raise ModelRefError(msg)
    return refs


class PromotionWatch:
    """Which watched refs moved since the cursor, within a time budget.

    Args:
        watch: refs with an alias or a stage, e.g. ``["models:/fraud@champion"]``.
        poll_interval_s: how often the registry is polled. With ``webhook_inbox``, checks may come
            every few seconds: they look at the inbox and poll the registry only at this interval.
        webhook_inbox: a folder an ``ml-assets webhook serve`` receiver writes verified MLflow
            alias events to.
    """

    def __init__(
        self, watch: Sequence[str], *, poll_interval_s: float = 60.0, webhook_inbox: str | None = None
    ) -> None:
        self.refs = watched_refs(watch)
        self.poll_interval_s = poll_interval_s
        self.inbox = PromotionInbox(webhook_inbox) if webhook_inbox else None

    def check(
        self,
        resolve: Callable[[str], ModelVersion],
        cursor: PromotionCursor,
        *,
        budget_s: float,
        now: float | None = None,
    ) -> PromotionCheck:
        """Resolve the refs that are due with ``resolve`` (a registry's or a ``ModelService``'s).

        A ref seen for the first time records a baseline and is no promotion, so a fresh or lost
        cursor never starts a storm of runs. A registry error or a timeout leaves the cursor as it was.
        """
        started = time.monotonic()
        nudged = self.inbox.take(self.refs) if self.inbox else set()
        now = time.time() if now is None else now
        # Without an inbox every check is a poll; with one, checks are frequent and polls keep their interval.
        poll_due = self.inbox is None or now - cursor.last_poll >= self.poll_interval_s
        to_check = [r for r in self.refs if poll_due or r.raw in nudged or r.raw not in cursor.versions]
        if not to_check:
            return PromotionCheck(cursor, skip_reason="no webhook event and the next registry poll is not due")
        new = PromotionCursor(dict(cursor.versions), dict(cursor.promotions), cursor.last_poll)
        promotions: list[Promotion] = []
        notes: list[str] = []
        for ref in to_check:
            try:
                version = _resolve_within(resolve, ref, budget_s - (time.monotonic() - started))
            except ModelNotFoundError as exc:
                notes.append(f"{ref.raw}: {exc}")
                continue
            except (MlAssetsError, FutureTimeout, OSError) as exc:
                unavailable = f"{ref.raw}: {'timed out' if isinstance(exc, FutureTimeout) else exc}"
                return PromotionCheck(
                    cursor, skip_reason=f"registry unavailable ({unavailable})", unavailable=unavailable
                )
            previous = new.versions.get(ref.raw)
            new.versions[ref.raw] = version.version
            if previous is None:
                notes.append(f"{ref.raw}: baseline recorded at version {version.version}")
            elif previous != version.version:
                new.promotions[ref.raw] = sequence = new.promotions.get(ref.raw, 0) + 1
                promotions.append(Promotion(ref.raw, previous, version, sequence))
        if poll_due:
            new.last_poll = now
        return PromotionCheck(new, tuple(promotions), tuple(notes))


def _resolve_within(resolve: Callable[[str], ModelVersion], ref: ModelRef, seconds: float) -> ModelVersion:
    if seconds <= 0:
        raise FutureTimeout
    return _resolver_pool.submit(resolve, ref.raw).result(timeout=seconds)


def output_file(output: ParquetDataset, partition: str) -> str:
    """Where a scoring run commits the file of ``partition`` (see ``AtomicPartitionWriter``)."""
    uri = output.partition_uri(partition)
    return uri if uri.endswith(".parquet") else f"{uri.rstrip('/')}/{OUTPUT_FILE}"


def scored_partitions(output: ParquetDataset) -> list[str]:
    """The partitions of a scoring output that hold a committed file, sorted.

    Hive layouts list ``<column>=<value>`` folders; path templates are globbed with the placeholder
    as ``*``. Temporary files of runs in flight are not committed outputs and never match.
    """
    import fsspec

    fs, pattern = fsspec.core.url_to_fs(output_file(output, _KEY), **dict(output.storage_options))
    head, _, tail = pattern.partition(_KEY)
    keys = []
    for path in fs.glob(f"{head}*{tail}"):
        key = path[len(head) : len(path) - len(tail)]
        if path.startswith(head) and path.endswith(tail) and "/" not in key and not key.startswith(LEGACY_TEMP_PREFIX):
            keys.append(key)
    return sorted(keys)


def stale_partitions(
    output: ParquetDataset, version: ModelVersion, *, partitions: Sequence[str] | None = None
) -> list[str]:
    """The scored partitions of ``output`` whose file another model version wrote, from the files' lineage.

    Needs no scheduler database: the model name and version are in each file's Parquet metadata.
    ``partitions`` limits the answer to those keys (default: every scored partition). A file without
    lineage was not written by this plugin and counts as stale: the current model has not scored it.
    """
    scored = scored_partitions(output)
    candidates = scored if partitions is None else [p for p in partitions if p in set(scored)]
    stale = []
    for partition in candidates:
        try:
            lineage = read_lineage(output_file(output, partition), output.storage_options)
        except DatasetError:
            stale.append(partition)
            continue
        if (lineage.get("model_name"), lineage.get("model_version")) != (version.name, version.version):
            stale.append(partition)
    return stale
