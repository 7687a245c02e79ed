"""Format detection from MLflow flavors, file extensions and content."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_assets.resources.core.errors import ModelLoadError
from ml_assets.resources.core.formats import detect_format

MOJO = Path(__file__).parent / "fixtures" / "h2o" / "binomial.zip"


def write_mlmodel(folder: Path, flavors: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(f"artifact_path: model\nflavors:\n{flavors}")
    return folder


@pytest.mark.parametrize(
    ("flavors", "expected"),
    [
        ("  onnx:\n    data: model.onnx\n  python_function:\n    loader_module: mlflow.onnx\n", "onnx"),
        ("  sklearn:\n    pickled_model: model.pkl\n  python_function:\n    loader_module: mlflow.sklearn\n", "pyfunc"),
        ("  pmml:\n    data: model.pmml\n", "pmml"),
        ("  h2o_mojo:\n    data: model.zip\n", "h2o_mojo"),
    ],
)
def test_from_mlflow_flavor(tmp_path, flavors, expected):
    assert detect_format(write_mlmodel(tmp_path / "m", flavors)) == expected


def test_flavor_without_python_function_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no python_function"):
        detect_format(write_mlmodel(tmp_path / "m", "  spark:\n    model_data: sparkml\n"))


def test_from_extension_and_content(tmp_path):
    pmml = tmp_path / "model.bin"
    pmml.write_text('<?xml version="1.0"?>\n<PMML xmlns="http://www.dmg.org/PMML-4_4" version="4.4"/>')
    assert detect_format(pmml) == "pmml"
    assert detect_format(MOJO) == "h2o_mojo"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "gbm.zip").write_bytes(MOJO.read_bytes())
    assert detect_format(folder) == "h2o_mojo"
    unknown = tmp_path / "weights.dat"
    unknown.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ModelLoadError, match="cannot tell"):
        detect_format(unknown)
    assert detect_format(unknown, override="onnx") == "onnx"
