"""Model-aware data quality, decided from what a scoring pass already knows. No Dagster here.

- signature: the input against the model's inputs (missing columns, incompatible types, nulls
  from the Parquet footers' statistics) before a row is read;
- prediction health: null/NaN rate, probabilities outside [0, 1] (beyond ``PROBABILITY_EPSILON``
  of float rounding), classes the model does not have, rows in = rows out, from the streaming summary;
- drift: PSI and KS between score histograms (this partition vs the previous partition, and vs
  the previous model version on the same partition);
- agreement: champion vs challenger on the same rows;
- row errors (``on_row_error="quarantine"``): warns when rows were quarantined within the budget
  (over it the run fails and the check with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from ml_assets.datasets import PartitionReader
from ml_assets.reconcile import NumericStrings, schema_problems
from ml_assets.resources.core.predictions import PROBABILITY, score_columns
from ml_assets.summary import PROBABILITY_EPSILON, Comparison, ScoreSummary

if TYPE_CHECKING:
    from ml_assets.quarantine import RowErrorReport
    from ml_assets.scoring import ScoringResult

Severity = Literal["warn", "error"]
_EPSILON = 1e-4  # keeps PSI finite where a bin is empty on one side


@dataclass(frozen=True)
class CheckOutcome:
    """What one check decided: ``metrics`` holds the numbers it decided on."""

    name: str
    passed: bool
    description: str
    severity: Severity = "error"
    metrics: dict[str, Any] = field(default_factory=dict)


def check_signature(
    reader: PartitionReader,
    inputs: pa.Schema,
    *,
    nulls: Literal["error", "pass"],
    numeric_strings: NumericStrings = "error",
) -> CheckOutcome:
    """Every file's footer against the model's inputs, with the rules scoring casts by
    (``ml_assets.reconcile``): what this refuses, scoring would refuse, and the other way round
    for everything decided by types; values that do not fit are found by scoring, row by row."""
    files = [(f.name, f.schema) for f in reader.files]
    problems = schema_problems(files, inputs, numeric_strings=numeric_strings)
    present = [f.name for f in inputs if f.name not in problems.missing_names]
    with_nulls = {name: n for name, n in reader.null_counts(present).items() if n}
    found = [f"missing: {problems.describe_missing()}"] if problems.missing else []
    found += [f"incompatible: {problems.describe_refused('the model')}"] if problems.refused else []
    if with_nulls and nulls == "error":
        found.append("unexpected nulls: " + ", ".join(f"{k} ({v:,})" for k, v in with_nulls.items()))
    return CheckOutcome(
        name="signature",
        passed=not found,
        description="; ".join(found)
        or f"all {len(inputs)} model inputs present with compatible types in all {len(files)} file(s)",
        metrics={
            "missing_columns": len(problems.missing),
            "incompatible_columns": len(problems.refused),
            "files": len(files),
            "files_with_problems": len({f for group in (*problems.missing.values(), *problems.refused.values())
                                        for f in group}),
            "null_values": sum(with_nulls.values()),
            "rows": reader.num_rows,
        },
    )  # fmt: skip


def check_prediction_health(
    summary: ScoreSummary,
    *,
    rows_in: int,
    rows_out: int,
    classes: Sequence[Any] | None = None,
    max_null_rate: float = 0.0,
) -> CheckOutcome:
    problems: list[str] = []
    metrics: dict[str, Any] = {"rows_in": rows_in, "rows_out": rows_out}
    if rows_in != rows_out:
        problems.append(f"{rows_out:,} rows out for {rows_in:,} in")
    for name, column in summary.columns.items():
        total = column.count + column.nulls + column.nans
        rate = (column.nulls + column.nans) / total if total else 0.0
        metrics[f"{name}.null_nan_rate"] = rate
        if rate > max_null_rate:
            problems.append(f"{name}: {rate:.2%} null/NaN (allowed {max_null_rate:.2%})")
        if name.startswith(PROBABILITY) and column.count:
            metrics[f"{name}.out_of_range"] = column.out_of_range
            if column.out_of_range:
                problems.append(
                    f"{name}: {column.out_of_range:,} of {column.count:,} values outside [0, 1] (tolerance "
                    f"{PROBABILITY_EPSILON:g}); min {column.minimum!r}, max {column.maximum!r}"
                )
    if classes is not None:
        known = {str(c) for c in classes}
        for name, counts in summary.value_counts.items():
            unknown = sorted(set(counts) - known)
            metrics[f"{name}.unknown_classes"] = len(unknown)
            if unknown:
                problems.append(f"{name}: classes {unknown[:5]} are not among the model's {sorted(known)[:10]}")
    return CheckOutcome(
        name="prediction_health",
        passed=not problems,
        description="; ".join(problems) or "no nulls/NaNs beyond the limit, values in range, every row scored",
        metrics=metrics,
    )


def psi(current: Sequence[float], reference: Sequence[float]) -> float:
    """Population stability index between two histograms over the same bins."""
    p = _shares(current)
    q = _shares(reference)
    return float(np.sum((p - q) * np.log(p / q)))


def ks(current: Sequence[float], reference: Sequence[float]) -> float:
    """Kolmogorov-Smirnov statistic at bin resolution: the largest gap between the two CDFs."""
    a = np.cumsum(current) / max(np.sum(current), 1)
    b = np.cumsum(reference) / max(np.sum(reference), 1)
    return float(np.max(np.abs(a - b)))


def _shares(counts: Sequence[float]) -> np.ndarray:
    shares = np.asarray(counts, dtype=np.float64) / max(float(np.sum(counts)), 1.0)
    shares = np.maximum(shares, _EPSILON)
    return shares / shares.sum()


def check_drift(
    current: Mapping[str, Sequence[int] | None],
    references: Mapping[str, Mapping[str, Sequence[int] | None]],
    *,
    psi_threshold: float = 0.2,
    ks_threshold: float = 0.1,
    severity: Severity = "warn",
) -> CheckOutcome:
    """``current``: score column -> histogram (one column for a binary classifier or a regressor,
    every class of a multiclass model); ``references``: label (e.g. 'previous partition 2026-11-01',
    'previous version 3') -> the same columns' histograms there."""
    scored = {c: h for c, h in current.items() if h is not None}
    if not scored:
        return CheckOutcome("score_drift", True, "no probability column with a histogram to compare", severity)
    several = len(scored) > 1
    metrics: dict[str, Any] = {"column": ", ".join(scored)}
    problems: list[str] = []
    compared: list[str] = []
    for label, histograms in references.items():
        key = label.split(" ")[1] if " " in label else label
        for column, histogram in scored.items():
            reference = histograms.get(column)
            if reference is None or len(reference) != len(histogram) or not sum(reference):
                continue
            p, k = psi(histogram, reference), ks(histogram, reference)
            prefix = f"{column}." if several else ""
            metrics[f"{prefix}psi_vs_{key}"], metrics[f"{prefix}ks_vs_{key}"] = p, k
            if label not in compared:
                compared.append(label)
            if p > psi_threshold or k > ks_threshold:
                problems.append(
                    f"{column} vs {label}: PSI {p:.3f} (limit {psi_threshold}), KS {k:.3f} (limit {ks_threshold})"
                )
    if not compared:
        return CheckOutcome(
            "score_drift", True, "nothing to compare with yet (first partition and version)", severity, metrics
        )
    description = "; ".join(problems) or f"{', '.join(scored)} stable vs {', '.join(compared)}"
    return CheckOutcome("score_drift", not problems, description, severity, metrics)


def check_agreement(
    comparison: Comparison,
    *,
    champion_histogram: Sequence[int] | None,
    challenger_histogram: Sequence[int] | None,
    min_agreement: float = 0.0,
    max_mean_abs_diff: float = 1.0,
    columns: Sequence[str] | None = None,
) -> CheckOutcome:
    """Champion vs challenger on the same rows; passes unless limits are set and crossed.
    ``columns``: the champion's score columns the score difference is averaged over (default: the
    comparison's own, ``score_columns`` of the champion)."""
    agreement = comparison.agreement
    diff = comparison.mean_abs_diff_of(list(columns)) if columns is not None else comparison.mean_abs_diff
    metrics: dict[str, Any] = {"rows": comparison.rows, "agreement": agreement, "mean_abs_diff": diff}
    if champion_histogram is not None and challenger_histogram is not None:
        metrics["psi"] = psi(challenger_histogram, champion_histogram)
        metrics["ks"] = ks(challenger_histogram, champion_histogram)
    problems = []
    if agreement is not None and agreement < min_agreement:
        problems.append(f"labels agree on {agreement:.2%} of rows (minimum {min_agreement:.2%})")
    if diff is not None and diff > max_mean_abs_diff:
        problems.append(f"mean absolute score difference {diff:.4f} (maximum {max_mean_abs_diff})")
    described = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if v is not None
    )
    return CheckOutcome("champion_challenger", not problems, "; ".join(problems) or described, "warn", metrics)


# -- one scoring pass, every check ----------------------------------------------------------


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of the checks run after a scoring pass.

    Args:
        max_null_rate: share of null/NaN predictions allowed per prediction column.
        psi_threshold / ks_threshold: drift limits of the score distribution against the previous
            partition and against the previous model version on the same partition.
        drift_severity: ``warn`` reports a drifting score; ``error`` makes it a failure.
        min_agreement / max_mean_abs_diff: champion vs challenger limits (defaults never fail).
        score_column: the prediction column drift and champion/challenger compare. Default: a
            binary classifier's positive class (the last class in the model's order, e.g.
            ``probability_1``), every ``probability_<class>`` of a multiclass model, a
            regressor's ``prediction``.
    """

    max_null_rate: float = 0.0
    psi_threshold: float = 0.2
    ks_threshold: float = 0.1
    drift_severity: Severity = "warn"
    min_agreement: float = 0.0
    max_mean_abs_diff: float = 1.0
    score_column: str | None = None


DEFAULT_CHECKS = CheckSettings()


@dataclass(frozen=True)
class DriftReference:
    """Score histograms of an earlier output to compare a new one with.

    ``kind`` says what it is: the same model on the ``previous_partition`` (``label`` is that
    partition's key), or a ``previous_version`` of the model on the same partition (``label`` is
    that version). ``histograms`` maps prediction column -> counts over ``summary.HISTOGRAM_BINS``
    bins of [0, 1], as ``ScoreSummary.as_dict()`` stores them.
    """

    kind: Literal["previous_partition", "previous_version"]
    label: str
    histograms: Mapping[str, Sequence[int]]

    @property
    def description(self) -> str:
        return f"{self.kind.replace('_', ' ')} {self.label}"

    @classmethod
    def from_summary(
        cls, kind: Literal["previous_partition", "previous_version"], label: str, summary: Mapping[str, Any] | None
    ) -> DriftReference:
        """From a stored ``ScoreSummary.as_dict()``; columns without a histogram are left out."""
        histograms = {
            column: list(stats["histogram"])
            for column, stats in (summary or {}).items()
            if isinstance(stats, Mapping) and isinstance(stats.get("histogram"), list)
        }
        return cls(kind, label, histograms)


def evaluate_checks(
    result: ScoringResult,
    *,
    settings: CheckSettings = DEFAULT_CHECKS,
    references: Sequence[DriftReference] = (),
    classes: Sequence[Any] | None = None,
) -> list[CheckOutcome]:
    """The checks of one scored partition, decided from what the pass collected (nothing is re-read).

    Returns, in order: ``signature`` (passed: the pass validated every chunk), ``prediction_health``,
    ``score_drift`` (against ``references``) and, when ``result`` has a challenger,
    ``champion_challenger``. Drift and comparisons look at the score columns of the predictions
    (``ml_assets.resources.core.predictions.score_columns``, or ``settings.score_column``): a binary
    classifier's positive class (the last class in model order), every class of a multiclass model,
    a regressor's ``prediction``; the same for every runtime, since all follow one contract.
    """
    rows = result.rows_in
    outcomes = [
        CheckOutcome(
            "signature",
            True,
            f"every model input present, castable and free of unexpected nulls ({rows:,} rows)",
            metrics={"rows": rows},
        ),
        check_prediction_health(
            result.summary,
            # Quarantined rows are accounted for in the errors dataset (and the row_errors check).
            rows_in=result.rows_in - (result.row_errors.rows if result.row_errors else 0),
            rows_out=result.rows_out,
            classes=classes,
            max_null_rate=settings.max_null_rate,
        ),
    ]
    chosen = settings.score_column
    columns = score_columns(result.prediction_schema, score_column=chosen) if result.prediction_schema else []
    current = {c: _histogram_of(result.summary, c) for c in columns}
    outcomes.append(
        check_drift(
            current,
            {ref.description: ref.histograms for ref in references},
            psi_threshold=settings.psi_threshold,
            ks_threshold=settings.ks_threshold,
            severity=settings.drift_severity,
        )
    )
    if result.challengers:
        contender = result.challengers[0]
        theirs = score_columns(contender.prediction_schema, score_column=chosen) if contender.prediction_schema else []
        single = len(columns) == 1 and len(theirs) == 1
        outcomes.append(
            check_agreement(
                result.comparisons[0],
                champion_histogram=_histogram_of(result.summary, columns[0]) if single else None,
                challenger_histogram=_histogram_of(contender.summary, theirs[0]) if single else None,
                min_agreement=settings.min_agreement,
                max_mean_abs_diff=settings.max_mean_abs_diff,
                columns=columns,
            )
        )
    if result.row_errors is not None:
        outcomes.append(check_row_errors(result.row_errors))
    return outcomes


def check_row_errors(report: RowErrorReport) -> CheckOutcome:
    """Passes when no row was quarantined; warns when some were, within the budget (over it the run failed)."""
    metrics = {
        "row_errors": report.rows,
        "row_error_rate": round(report.rate, 6),
        "row_errors_allowed": report.allowed,
        "errors_uri": report.uri,
    }
    if not report.rows:
        return CheckOutcome("row_errors", True, f"no row quarantined ({report.budget.describe()})", metrics=metrics)
    description = (
        f"{report.rows:,} of {report.rows_total:,} rows ({report.rate:.3%}) quarantined to {report.uri}, within the "
        f"budget ({report.budget.describe()}: {report.allowed:,} rows). Top: {'; '.join(report.top_reasons[:3])}"
    )
    return CheckOutcome("row_errors", False, description, severity="warn", metrics=metrics)


def budget_exceeded(message: str) -> CheckOutcome:
    """The row_errors outcome of a run that failed over its error budget."""
    return CheckOutcome("row_errors", False, message, severity="error")


def worst(outcomes: Sequence[CheckOutcome]) -> CheckOutcome:
    """One outcome for several partitions of one check: the first that failed, else the last."""
    return next((o for o in outcomes if not o.passed), outcomes[-1])


def _histogram_of(summary: ScoreSummary, column: str | None) -> list[int] | None:
    stats = summary.columns.get(column) if column else None
    return None if stats is None or stats.histogram is None else [int(c) for c in stats.histogram]
