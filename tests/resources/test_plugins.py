"""Finding registries and runtimes by name: the built-in table matches pyproject.toml, and another
distribution's plugin is found through its entry points (a real dist-info on the path, in a fresh process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ml_assets.resources.core.plugins import BUILT_IN, REGISTRY_GROUP, RUNTIME_GROUP

ROOT = Path(__file__).resolve().parents[2]


def test_the_built_in_table_is_what_pyproject_and_the_installed_metadata_register():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    for group in (REGISTRY_GROUP, RUNTIME_GROUP):
        assert BUILT_IN[group] == declared[group]
        installed = {ep.name: ep.value for ep in entry_points(group=group) if ep.dist.name == "dagster-ml-assets"}
        assert installed == BUILT_IN[group]


def test_another_distributions_runtime_is_found_and_cannot_take_a_built_in_name(tmp_path):
    package = tmp_path / "acme_scoring"
    package.mkdir()
    (package / "__init__.py").write_text(
        "class AcmeRuntime:\n    def __init__(self, **options):\n        self.options = options\n"
        "class FakeOnnx:\n    pass\n"
    )
    info = tmp_path / "acme_scoring-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-scoring\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[ml_assets.runtimes]\nacme = acme_scoring:AcmeRuntime\nonnx = acme_scoring:FakeOnnx\n"
    )
    probe = textwrap.dedent(
        """
        import sys
        from ml_assets.resources.core.errors import PluginNotFoundError
        from ml_assets.resources.core.plugins import available, create_runtime, load_plugin
        runtime = create_runtime("acme", threads=3)
        print(type(runtime).__module__, runtime.options)
        print(load_plugin("ml_assets.runtimes", "onnx").__module__)
        try:
            load_plugin("ml_assets.runtimes", "nope")
        except PluginNotFoundError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "acme_scoring {'threads': 3}"
    assert lines[1] == "ml_assets.resources.runtimes.onnx"  # the built-in, not the other package's
    assert lines[2] == "no runtime named 'nope'; known: acme, h2o_mojo, http, native, onnx, pmml, pyfunc"
