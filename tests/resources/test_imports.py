"""``import_pyarrow_dataset``: pyarrow.dataset without pandas at start-up, and pyarrow's pandas conversions
unchanged once pandas is imported (that the package imports no pandas is
tests/ml_assets/test_cli.py's). Each case runs in a fresh interpreter (this one has pandas already)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

# Conversions that depend on pyarrow knowing pandas: NaN -> null, categoricals -> dictionaries, tz-aware
# timestamps, frames both ways; and the pandas module still serves its source and resources. A find_spec
# probe comes first, as libraries probe for pandas before importing it.
PANDAS_ROUND_TRIP = """
import importlib.resources, importlib.util, math
seen["probe"] = importlib.util.find_spec("pandas") is not None  # a probe first, as libraries do: imports nothing
import pandas as pd
import pyarrow as pa
series = pd.Series([1.0, math.nan])
frame = pd.DataFrame({"x": series, "c": pd.Categorical(["a", "b"])})
seen["after"] = {
    "null_count": pa.array(series).null_count,
    "categorical": str(pa.array(pd.Categorical(["a", "b"])).type),
    "timestamp": str(pa.scalar(pd.Timestamp("2026-12-06", tz="UTC")).type),
    "from_pandas": str(pa.Table.from_pandas(frame).schema),
    "to_pandas": str(pa.table({"x": [1.0, None]}).to_pandas().x.isna().tolist()),
    "resources": importlib.resources.files("pandas").joinpath("__init__.py").is_file(),
    "source": "import" in (pd.__spec__.loader.get_source("pandas") or ""),
}
"""


def run_fresh(first: str) -> dict:
    script = f"import json, sys\nseen = {{}}\n{first}\n"
    script += 'seen["pandas_before"] = "pandas" in sys.modules\n'
    script += 'seen["dataset"] = pads.dataset(pa.table({"k": [1, 2]})).to_table().num_rows\n'
    script += textwrap.dedent(PANDAS_ROUND_TRIP) + "print(json.dumps(seen))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pyarrow_dataset_loads_without_pandas_and_pandas_conversions_are_unchanged():
    ours = run_fresh(
        "from ml_assets.resources.core.imports import import_pyarrow_dataset\npads = import_pyarrow_dataset()\nimport pyarrow as pa"
    )
    plain = run_fresh("import pyarrow.dataset as pads\nimport pyarrow as pa")

    assert ours["pandas_before"] is False
    assert plain["pandas_before"] is True  # what the helper avoids: pyarrow.dataset's own import loads pandas
    assert ours["dataset"] == plain["dataset"] == 2
    assert ours["after"] == plain["after"]
    assert ours["after"]["null_count"] == 1
    assert ours["after"]["categorical"].startswith("dictionary<")
    assert ours["after"]["resources"] is True
    assert ours["after"]["source"] is True


def test_with_pandas_already_imported_nothing_is_hidden():
    seen = run_fresh(
        "import pandas\nfrom ml_assets.resources.core.imports import import_pyarrow_dataset\n"
        "pads = import_pyarrow_dataset()\nimport pyarrow as pa\n"
        "seen['finders'] = [type(f).__name__ for f in sys.meta_path]"
    )
    assert seen["pandas_before"] is True
    assert not any("Pandas" in name for name in seen["finders"])
    assert seen["after"]["null_count"] == 1


def test_pandas_is_hidden_from_the_importing_thread_only():
    from ml_assets.resources.core.imports import _HidePandas

    hide = _HidePandas()
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(hide.find_spec("pandas")))
    thread.start()
    thread.join(timeout=30)
    assert elsewhere == [None]  # another thread's import goes on to the real finders
    with pytest.raises(ModuleNotFoundError, match=r"hidden while pyarrow\.dataset is imported"):
        hide.find_spec("pandas")
    assert hide.find_spec("polars") is None
