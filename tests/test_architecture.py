"""The layering the README promises, checked on the code and in real processes:

- the scoring core and the runtimes import no Dagster and no Airflow (read from the source, so a
  lazy import inside a function counts too);
- ``import ml_assets`` and ``ml-assets score`` work in a process where Dagster cannot be imported;
- importing the Dagster layer, the demo location or building a registry changes neither
  ``os.environ`` nor the warnings filters;
- a user project with its own ``resources.py`` and ``sensors/`` loads beside ours.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest

from ml_assets.dev.demo import FEATURES
from tests.conftest import DATES, VENV_BIN, features_of

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("dagster", "dagster_pipes", "airflow", "dagster_dg_cli")
# The Dagster-free core: registries, runtimes, nouns, the scoring pipeline, checks, the model service.
CORE = [
    *sorted((ROOT / "resources").rglob("*.py")),
    *sorted(p for p in (ROOT / "ml_assets").glob("*.py") if p.name != "cli.py"),
]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_core_and_the_runtimes_import_no_orchestrator():
    assert len(CORE) > 20, "the contract must see the core's modules"
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & set(FRAMEWORKS)) for p in CORE}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_library_never_imports_the_demo_or_dev_services():
    """``ml_assets.dev`` (demo seeding, demo location, dev services) is reached only by the CLI's
    ``demo``/``services`` commands and by workspace.yaml, never by the library itself."""
    library = [
        p
        for p in [*ROOT.joinpath("ml_assets").rglob("*.py"), *ROOT.joinpath("resources").rglob("*.py"),
                  *ROOT.joinpath("sensors").rglob("*.py")]
        if "dev" not in p.relative_to(ROOT).parts and p.name != "cli.py"
    ]  # fmt: skip
    offenders = []
    for path in library:
        tree = ast.parse(path.read_text(), filename=str(path))
        modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        offenders += [f"{path.relative_to(ROOT)}: {m}" for m in modules if m.startswith("ml_assets.dev")]
    assert len(library) > 30
    assert offenders == []


def _run(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
    )


# Makes `import dagster` (and Airflow) fail in the child, as in an install without the [dagster] extra.
_NO_ORCHESTRATOR = """
import sys
for name in ("dagster", "airflow"):
    sys.modules[name] = None
"""


def test_import_ml_assets_needs_no_dagster():
    done = _run(
        _NO_ORCHESTRATOR
        + """
import ml_assets
from ml_assets import ModelService, ParquetDataset, evaluate_checks, score_partition
print(sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "mlflow", "h2o", "pypmml", "s3fs")))
try:
    ml_assets.build_scoring_asset
except ImportError as exc:
    print("dagster layer:", type(exc).__name__, exc)
"""
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "[]",
        "dagster layer: ImportError ml_assets.build_scoring_asset is part of the Dagster layer: "
        "pip install 'dagster-ml-assets[dagster]'",
    ]


def test_ml_assets_score_runs_without_dagster(models, transactions, tmp_path):
    out = tmp_path / "scores"
    done = _run(
        _NO_ORCHESTRATOR
        + """
from ml_assets.cli import main
main(sys.argv[1:])
""",
        "score", models.lr_onnx.as_uri(), str(transactions), str(out),
        "--partition", f"date={DATES[0]}", "--passthrough", "transaction_id", "--quiet",
        "--option", f"features={json.dumps(FEATURES)}",  # a direct ONNX file has no column signature
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pq.read_table(next((out / f"date={DATES[0]}").glob("*.parquet")))
    source = pq.read_table(transactions / f"date={DATES[0]}")
    session = ort.InferenceSession(str(models.lr_onnx), providers=["CPUExecutionProvider"])
    _, probabilities = session.run(None, {session.get_inputs()[0].name: features_of(source)})
    np.testing.assert_allclose(table["probability_1"].to_numpy(), probabilities[:, 1], rtol=1e-6)
    assert table["transaction_id"].to_pylist() == source["transaction_id"].to_pylist()


def test_importing_our_modules_leaves_the_environment_and_warnings_alone(models, tmp_path):
    done = _run(
        """
import os, sys, warnings
os.environ["ML_ASSETS_DEMO_ROOT"] = sys.argv[2]
import dagster, mlflow, onnxruntime  # third-party filters they add on import are theirs, not ours
from mlflow import MlflowClient
MlflowClient(sys.argv[1]).search_registered_models()
before_env, before_filters = dict(os.environ), list(warnings.filters)
import ml_assets.dagster.components, ml_assets.dev.definitions, ml_assets.sensors
from ml_assets.resources.registries.mlflow import MlflowRegistry
registry = MlflowRegistry("http://127.0.0.1:9", request_timeout_s=1, max_retries=0)
registry = MlflowRegistry(sys.argv[1])
registry.resolve("models:/fraud@champion")
changed = sorted(k for k in {*before_env, *os.environ} if before_env.get(k) != os.environ.get(k))
print(changed, warnings.filters == before_filters)
""",
        models.tracking_uri,
        str(tmp_path / "demo"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] True"


def test_a_user_project_with_its_own_resources_and_sensors_modules_loads(models, transactions, tmp_path):
    project = tmp_path / "user_project"
    (project / "sensors").mkdir(parents=True)
    (project / "resources.py").write_text("WAREHOUSE = 'the user own resources module'\n")
    (project / "sensors" / "__init__.py").write_text("NAME = 'the user own sensors package'\n")
    (project / "definitions.py").write_text(
        textwrap.dedent(f"""
        import dagster as dg
        import resources, sensors  # the project's own modules, found first on sys.path
        from ml_assets import ModelRegistryResource, ModelRuntimeResource, build_scoring_asset
        from ml_assets.sensors import build_model_promotion_sensor

        assert resources.WAREHOUSE and sensors.NAME
        scores = build_scoring_asset(
            name="scores",
            model="models:/fraud@champion",
            input_dataset={str(transactions)!r},
            output_dataset={str(tmp_path / "scores")!r},
            partitions_def=dg.StaticPartitionsDefinition({DATES!r}),
        )
        defs = dg.Definitions(
            assets=[scores],
            sensors=[build_model_promotion_sensor(name="p", watch=["models:/fraud@champion"], target=[scores])],
            resources={{
                "model_registry": ModelRegistryResource(uri={models.tracking_uri!r}),
                "model_runtime": ModelRuntimeResource(),
            }},
        )
        """)
    )
    validate = subprocess.run(
        [str(Path(VENV_BIN) / "dagster"), "definitions", "validate", "-f", "definitions.py"],
        capture_output=True, text=True, timeout=300, cwd=project, check=False,
    )  # fmt: skip
    assert validate.returncode == 0, validate.stdout + validate.stderr
    materialized = _run(
        """
import sys, json
sys.path.insert(0, ".")
import dagster as dg, resources
from definitions import defs
job = defs.resolve_implicit_global_asset_job_def()
result = job.execute_in_process(partition_key=sys.argv[1], instance=dg.DagsterInstance.ephemeral())
print(json.dumps([result.success, resources.__file__.endswith("user_project/resources.py")]))
""",
        DATES[0],
        cwd=project,
    )
    assert materialized.returncode == 0, materialized.stderr[-3000:]
    assert json.loads(materialized.stdout.strip().splitlines()[-1]) == [True, True]
    assert pq.read_table(tmp_path / "scores" / f"date={DATES[0]}").num_rows > 0


@pytest.mark.parametrize("name", ["ml_assets", "ml_assets.resources", "ml_assets.sensors"])
def test_no_top_level_resources_or_sensors_package_is_installed(name):
    """Our folders install under ml_assets.*, so `import resources` can only ever be the user's."""
    done = _run("import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]) is not None)", name)
    assert done.stdout.strip() == "True"
    for taken in ("resources", "sensors"):
        found = _run(f"import importlib.util; print(importlib.util.find_spec({taken!r}))", cwd=Path("/"))
        assert found.stdout.strip() == "None", f"a top-level {taken!r} package is installed: {found.stdout}"


def test_a_missing_optional_package_names_the_extra_that_installs_it(models):
    done = _run(
        """
import sys
sys.modules["onnxruntime"] = None
from ml_assets import MissingDependencyError, ModelService
try:
    ModelService.from_uri("mlflow", sys.argv[1]).open("models:/fraud@champion")
except MissingDependencyError as exc:
    print(exc)
""",
        models.tracking_uri,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "the onnx runtime (model 'fraud' version 1) needs the package 'onnxruntime': "
        "pip install 'dagster-ml-assets[onnx]'"
    )
