"""The ``ml-assets`` command as a user runs it: a subprocess. Includes the kill-mid-write test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from ml_assets.datasets import STAGED_SUFFIX, read_lineage
from ml_assets.dev.demo import make_transactions, write_partitioned
from tests.conftest import DATES, ROWS_PER_DAY, VENV_BIN, codecs_of, features_of

CLI = str(Path(VENV_BIN) / "ml-assets")


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_score_a_partition(models, transactions, tmp_path):
    out = tmp_path / "scores"
    done = run_cli(
        "score", "models:/fraud@champion", str(transactions), str(out),
        "--partition", "date=2026-11-03", "--passthrough", "transaction_id,customer_id",
        "--chunk-rows", "4096", "--registry-uri", models.tracking_uri, "--reader", "polars", "--compression", "snappy",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "model fraud version 1 (models:/fraud/1)" in done.stdout
    assert f"rows: {ROWS_PER_DAY:,}" in done.stdout
    assert "rows/s:" in done.stdout
    assert "reader: polars\n" in done.stdout  # asked for; auto would take pyarrow for a partition this small
    file = out / "date=2026-11-03" / "part-0.parquet"
    assert f"output: {file}" in done.stdout
    table = pq.read_table(file)
    source = pq.read_table(transactions / "date=2026-11-03")
    np.testing.assert_allclose(
        table["probability_1"].to_numpy(), models.lr.predict_proba(features_of(source))[:, 1], atol=1e-5
    )
    assert table.column_names[:2] == ["transaction_id", "customer_id"]
    codecs = codecs_of(file)
    assert codecs["probability_1"] == "SNAPPY"  # asked for
    assert codecs["transaction_id"] == "UNCOMPRESSED"  # an integer: delta-packed whatever the codec


def test_errors_are_one_clear_line(models, transactions, tmp_path):
    done = run_cli(
        "score", "models:/fraud@gone", str(transactions), str(tmp_path / "o"), "--registry-uri", models.tracking_uri
    )
    assert done.returncode == 1
    assert "Error: model 'fraud'" in done.stderr
    assert "no alias 'gone'" in done.stderr
    assert "Traceback" not in done.stderr
    bad = run_cli(
        "score", "models:/fraud@champion", str(transactions), str(tmp_path / "o"), "--partition", "2026-11-01"
    )
    assert bad.returncode == 2
    assert "expected KEY=VALUE" in bad.stderr
    codec = run_cli("score", "models:/fraud@champion", str(transactions), str(tmp_path / "o"), "--compression", "gzip")
    assert codec.returncode == 2
    assert "'gzip' is not one of 'zstd', 'lz4', 'snappy', 'none'" in codec.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_killed_mid_write_leaves_nothing_at_the_final_path(models, tmp_path):
    """SIGKILL while the output is half written: the final path keeps its previous content (or stays absent)."""
    data = tmp_path / "big"
    write_partitioned(lambda day: make_transactions(1_500_000, seed=5), data, ["2026-11-05"])
    out = tmp_path / "scores"
    folder = out / "date=2026-11-05"
    staging = tmp_path / ".scores.ml-assets-staging" / "date=2026-11-05"
    args = [
        "score", "models:/fraud@challenger", str(data), str(out), "--partition", "date=2026-11-05",
        "--chunk-rows", "2000", "--registry-uri", models.tracking_uri, "--quiet",
    ]  # fmt: skip

    def kill_when_half_written() -> None:
        process = subprocess.Popen([CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                temps = list(staging.glob(f"*{STAGED_SUFFIX}")) if staging.exists() else []
                if temps and temps[0].stat().st_size > 1_000_000:  # at least one row group written
                    break
                assert process.poll() is None, "the scoring finished before it could be killed; make the data larger"
                time.sleep(0.02)
            else:
                pytest.fail("no partial output appeared within 120s")
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    kill_when_half_written()
    assert not (folder / "part-0.parquet").exists()

    # A previous output survives a killed re-run untouched.
    done = run_cli(*args, timeout=600)
    assert done.returncode == 0, done.stderr
    before = (folder / "part-0.parquet").read_bytes()
    kill_when_half_written()
    assert (folder / "part-0.parquet").read_bytes() == before
    assert read_lineage(str(folder / "part-0.parquet"))["model_version"] == "2"
    # The killed run's file is outside the dataset: every reader sees exactly the committed output.
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet"]
    assert pq.read_table(folder).num_rows == 1_500_000
    assert pl.scan_parquet(f"{out}/**/*.parquet").select(pl.len()).collect().item() == 1_500_000


def test_importing_the_package_loads_no_heavy_dependency():
    code = (
        "import sys, ml_assets.dagster.assets, ml_assets.scoring, ml_assets.cli, resources, ml_assets.dagster.resources, sensors,"
        " ml_assets.ray_engine, ml_assets.datasets, ml_assets.quarantine, ml_assets.summary,"
        " ml_assets.resources.runtimes.onnx, ml_assets.resources.registries.mlflow_lookup;"
        # pandas too: `import pyarrow.dataset` would bring it (resources/core/imports.py)
        "heavy = [m for m in ('mlflow', 'onnxruntime', 'onnx', 's3fs', 'sklearn', 'pypmml', 'h2o', 'ray', 'pandas')"
        " if m in sys.modules];"
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["score", "--chunk-rows", "0"], 2)])
def test_the_console_script_keeps_the_exit_code_and_skips_the_last_collection(args, code):
    """``ml-assets`` is ``run``: the command's own exit code, and the heap frozen before the interpreter's
    exit (so its final garbage collection has nothing to walk)."""
    probe = (
        "import atexit, gc, sys;"
        "atexit.register(lambda: print('frozen:', gc.get_freeze_count() > 0));"
        "from ml_assets.cli import run; sys.argv = ['ml-assets', *sys.argv[1:]]; run()"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == code, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "frozen: True"
    script = Path(CLI).read_text()
    assert "from ml_assets.cli import run" in script  # the installed entry point is ``run``, not ``main``


def test_the_reader_and_compression_choices_are_the_datasets_own():
    """``--reader`` and ``--compression`` list ml_assets.datasets' choices without importing it."""
    from typing import get_args

    from ml_assets import cli, datasets

    choices = {p.name: tuple(p.type.choices) for p in cli.score.params if p.name in ("reader", "compression")}
    assert choices == {
        "reader": get_args(datasets.ReaderChoice),
        "compression": get_args(datasets.OutputCompression),
    }


def test_the_chunk_rows_option_spells_out_the_scoring_constants():
    """``--chunk-rows`` states the core's chunk sizes without importing it: they must stay the same numbers."""
    from ml_assets import cli, scoring

    option = next(p for p in cli.score.params if p.name == "chunk_rows")
    assert option.type.max == scoring.MAX_CHUNK_ROWS
    many_rows = scoring.MANY_CHUNKS * scoring.LARGE_CHUNK_ROWS / 1e6
    for stated in (
        f"{scoring.DEFAULT_CHUNK_ROWS:,}",
        f"{scoring.LARGE_CHUNK_ROWS:,} from ~{many_rows:.1f}M rows",
        f"{scoring.CHUNK_BYTES // 2**20} MiB",
    ):
        assert stated in option.help


@pytest.mark.parametrize(("told", "threads"), [(None, 1), ("2", 2)])
def test_the_console_script_loads_openblas_with_one_thread_unless_told(told, threads):
    """numpy's OpenBLAS starts a thread per core that spins on load: ``run`` loads it with one, and the
    user's own ``OPENBLAS_NUM_THREADS`` wins."""
    probe = (
        "import sys\nfrom ml_assets.cli import run\nsys.argv = ['ml-assets', '--help']\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        "import numpy\nfrom threadpoolctl import threadpool_info\n"
        "print([p['num_threads'] for p in threadpool_info() if p['internal_api'] == 'openblas'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if told is not None:
        env["OPENBLAS_NUM_THREADS"] = told
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == f"[{threads}]"


def test_collections_pause_for_start_up_only(models, transactions, tmp_path):
    """``run`` turns garbage collection off for start-up: back on (start-up's objects frozen) when scoring
    starts, and from the start of every other command, which may serve for days."""
    probe = (
        "import gc, sys\n"
        "import ml_assets.cli as cli, ml_assets.scoring as scoring\n"
        "seen = {'at_import': gc.isenabled()}\n"
        "score_partition, open_registry = scoring.score_partition, cli._open_registry\n"
        "def spy(name, fn):\n"
        "    def wrapped(*a, **k):\n"
        "        seen[name] = (gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "        return fn(*a, **k)\n"
        "    return wrapped\n"
        "scoring.score_partition = spy('scoring', score_partition)\n"
        "cli._open_registry = spy('models list', open_registry)\n"
        "import atexit; atexit.register(lambda: print(seen))\n"
        "sys.argv = ['ml-assets', *sys.argv[1:]]; cli.run()\n"
    )
    score = subprocess.run(
        [sys.executable, "-c", probe, "score", "models:/fraud@champion", str(transactions), str(tmp_path / "o"),
         "--partition", f"date={DATES[0]}", "--registry-uri", models.tracking_uri, "--quiet"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert score.returncode == 0, score.stderr
    assert score.stdout.strip().splitlines()[-1] == "{'at_import': True, 'scoring': (True, True)}"
    listing = subprocess.run(
        [sys.executable, "-c", probe, "models", "list", "--registry-uri", models.tracking_uri],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip().splitlines()[-1] == "{'at_import': True, 'models list': (True, True)}"


def test_the_progress_bar_follows_the_rows_and_quiet_draws_none(capsys):
    from types import SimpleNamespace

    from ml_assets.cli import _progress_bar

    with _progress_bar(True) as show:
        assert show is None
    with _progress_bar(False) as show:
        time.sleep(0.35)  # the bar waits 0.3 s before it first draws
        show(SimpleNamespace(rows_total=2000, rows_done=500))
        show(SimpleNamespace(rows_total=2000, rows_done=2000))
    drawn = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("100%" in line and "2.00k/2.00k" in line for line in drawn), drawn


def test_an_option_the_runtime_does_not_take_is_a_usage_error(models, transactions, tmp_path):
    done = run_cli(
        "score", "models:/fraud@champion", str(transactions), str(tmp_path / "o"), "--partition", f"date={DATES[0]}",
        "--registry-uri", models.tracking_uri, "--runtime", "http", "--threads", "2",
    )  # fmt: skip
    assert done.returncode == 2
    assert "the http runtime takes no option threads; it takes:" in done.stderr
    assert not (tmp_path / "o").exists()
