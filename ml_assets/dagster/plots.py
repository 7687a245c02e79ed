"""The score histogram of a partition as a Dagster table: rows per score bin with a bar, and the same
bins of the drift reference (previous model version, else previous partition) beside it.

A table, not markdown: the UI renders ``TableMetadataValue`` as a real table, while markdown images
must be http(s) URLs (its sanitizer drops data: URIs) and markdown collapses the spaces a text
sparkline needs. Bars are runs of one full-block character, so nothing depends on whitespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import numpy as np

from ml_assets.checks import DriftReference

BINS = 10
BAR_WIDTH = 40
_BLOCK = "█"


def _bars(share: float, top: float) -> str:
    if share <= 0 or top <= 0:
        return ""
    return _BLOCK * max(1, round(BAR_WIDTH * share / top))


def _shares(histogram: Sequence[int] | None) -> np.ndarray | None:
    if histogram is None or len(histogram) % BINS:
        return None
    counts = np.asarray(histogram, dtype=np.float64).reshape(BINS, -1).sum(axis=1)
    total = counts.sum()
    return counts / total if total else None


def score_histogram(
    column: str, stats: Mapping[str, Any], reference: DriftReference | None = None
) -> dg.TableMetadataValue | None:
    """Rows per bin of ``column`` over [0, 1] (``stats`` is that column's ``ColumnSummary.as_dict()``)."""
    histogram = stats.get("histogram")
    shares = _shares(histogram)
    if shares is None:
        return None
    counts = np.asarray(histogram).reshape(BINS, -1).sum(axis=1)
    previous = _shares(reference.histograms.get(column)) if reference is not None else None
    top = max(shares.max(), previous.max() if previous is not None else 0.0)
    columns = [
        dg.TableColumn("bin", "string", description=f"{column} in [low, high)"),
        dg.TableColumn("rows", "int"),
        dg.TableColumn("share_pct", "float", description="this partition, this model version"),
        dg.TableColumn("bar", "string"),
    ]
    if previous is not None and reference is not None:
        columns += [
            dg.TableColumn("reference_pct", "float", description=reference.description),
            dg.TableColumn("reference_bar", "string", description=reference.description),
        ]
    records = []
    for i in range(BINS):
        row: dict[str, Any] = {
            "bin": f"{i / BINS:.1f}-{(i + 1) / BINS:.1f}",
            "rows": int(counts[i]),
            "share_pct": round(100 * float(shares[i]), 2),
            "bar": _bars(float(shares[i]), top),
        }
        if previous is not None:
            row["reference_pct"] = round(100 * float(previous[i]), 2)
            row["reference_bar"] = _bars(float(previous[i]), top)
        records.append(dg.TableRecord(row))
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=columns))
