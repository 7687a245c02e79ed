"""Streaming prediction summaries, chunk by chunk, against numpy on the whole column at once."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from ml_assets.summary import COMPARED_RANGE, HISTOGRAM_BINS, ScoreSummary


def chunks_of(values: list, sizes: list[int], kind: pa.DataType) -> list[pa.Array]:
    out, start = [], 0
    for size in sizes:
        out.append(pa.array(values[start : start + size], type=kind))
        start += size
    assert start == len(values)
    return out


def reference_histogram(values: np.ndarray) -> list[int]:
    """Bin i holds [i/B, (i+1)/B); 1.0 and anything above go to the last bin, anything below 0 to the first."""
    bins = np.clip(np.floor(values.astype(np.float64) * HISTOGRAM_BINS), 0, HISTOGRAM_BINS - 1).astype(int)
    return np.bincount(bins, minlength=HISTOGRAM_BINS).tolist()


@pytest.mark.parametrize("kind", [pa.float32(), pa.float64()])
def test_probability_statistics_match_numpy_over_uneven_chunks(kind):
    rng = np.random.default_rng(7)
    numpy_type = kind.to_pandas_dtype()
    probabilities = rng.random(10_000).astype(numpy_type)
    # Edges and trouble: exactly 0 and 1, the float just below 1, out of range on both sides, NaN and nulls.
    below_one = np.nextafter(numpy_type(1), numpy_type(0))
    probabilities[:6] = [0.0, 1.0, below_one, -0.25, 1.5, np.nan]
    values: list = probabilities.tolist()
    values[10] = values[20] = None
    summary = ScoreSummary()
    for chunk in chunks_of(values, [1, 4999, 3000, 2000], kind):
        summary.update(pa.RecordBatch.from_arrays([chunk], names=["probability_1"]))
    stats = summary.as_dict()["probability_1"]

    kept = np.array([v for v in values if v is not None], dtype=numpy_type)
    finite = kept[np.isfinite(kept)]
    assert (stats["count"], stats["nulls"], stats["nans"]) == (len(finite), 2, 1)
    assert stats["mean"] == pytest.approx(finite.astype(np.float64).mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(finite.astype(np.float64).std(), rel=1e-6)
    assert (stats["min"], stats["max"]) == (-0.25, 1.5)
    assert stats["out_of_range"] == 2
    assert stats["histogram"] == reference_histogram(finite)
    assert sum(stats["histogram"]) == stats["count"]


def test_score_and_integer_prediction_statistics_without_histogram():
    rng = np.random.default_rng(3)
    scores = rng.normal(1e5, 250.0, 9000)  # a large mean beside a small spread: the variance must hold up
    counts = rng.integers(-40, 900, 9000)
    summary = ScoreSummary()
    for start in range(0, 9000, 4096):
        end = start + 4096
        summary.update(pa.RecordBatch.from_pydict({"prediction": scores[start:end], "prediction_n": counts[start:end]}))
    stats = summary.as_dict()
    assert stats["prediction"]["mean"] == pytest.approx(scores.mean(), rel=1e-12)
    assert stats["prediction"]["std"] == pytest.approx(scores.std(), rel=1e-9)
    assert "histogram" not in stats["prediction"]
    assert stats["prediction_n"]["mean"] == pytest.approx(counts.mean(), rel=1e-12)
    assert stats["prediction_n"]["std"] == pytest.approx(counts.std(), rel=1e-12)
    assert (stats["prediction_n"]["min"], stats["prediction_n"]["max"]) == (counts.min(), counts.max())


@pytest.mark.parametrize(
    ("labels", "kind"),
    [
        ([0, 1, 1, None, 1, 0, 0, 1] * 300, pa.int64()),  # binary, counted by comparisons
        ([-3, 12, 5, 5, None, -3] * 200, pa.int32()),  # a narrow range with gaps
        ([0, COMPARED_RANGE + 40, 7, 7, 900] * 100, pa.int64()),  # wider than COMPARED_RANGE: hashed
        (["cat", "dog", None, "dog", "emu"] * 100, pa.string()),
    ],
)
def test_label_value_counts_match_a_counter_over_chunks(labels, kind):
    summary = ScoreSummary()
    third = len(labels) // 3
    for chunk in chunks_of(labels, [third, third, len(labels) - 2 * third], kind):
        summary.update(pa.RecordBatch.from_arrays([chunk], names=["label"]))
    expected = Counter(str(v) for v in labels)
    assert summary.as_dict()["label"]["value_counts"] == dict(expected)


def test_a_chunk_of_only_nulls_and_nans_counts_them_and_nothing_else():
    summary = ScoreSummary()
    summary.update(pa.RecordBatch.from_pydict({"probability_1": pa.array([None, np.nan, None], pa.float32())}))
    stats = summary.as_dict()["probability_1"]
    assert (stats["count"], stats["nulls"], stats["nans"], stats["mean"], stats["min"]) == (0, 2, 1, None, None)
