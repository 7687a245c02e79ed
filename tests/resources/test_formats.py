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
        ("  sklearn:\n    pickled_model: model.pkl\n  python_function:\n    loader_module: mlflow.sklearn\n", "native"),
        ("  xgboost:\n    data: model.ubj\n  python_function:\n    loader_module: mlflow.xgboost\n", "native"),
        ("  lightgbm:\n    data: model.lgb\n  python_function:\n    loader_module: mlflow.lightgbm\n", "native"),
        ("  python_function:\n    loader_module: mlflow.pyfunc.model\n", "pyfunc"),
        ("  pmml:\n    data: model.pmml\n", "pmml"),
        ("  h2o_mojo:\n    data: model.zip\n", "h2o_mojo"),
    ],
)
def test_from_mlflow_flavor(tmp_path, flavors, expected):
    assert detect_format(write_mlmodel(tmp_path / "m", flavors)) == expected


def test_a_tree_flavor_with_a_string_column_stays_pyfunc(tmp_path):
    """Only pyfunc hands a pipeline its string columns (as a DataFrame); numbers and booleans go native."""
    flavors = "  sklearn:\n    pickled_model: model.pkl\n  python_function:\n    loader_module: mlflow.sklearn\n"
    columns = '[{"type": "double", "name": "amount"}, {"type": "%s", "name": "country"}]'
    for kind, expected in (("string", "pyfunc"), ("boolean", "native"), ("long", "native")):
        folder = write_mlmodel(tmp_path / kind, flavors)
        (folder / "MLmodel").write_text(
            (folder / "MLmodel").read_text() + f"signature:\n  inputs: '{columns % kind}'\n"
        )
        assert detect_format(folder) == expected


def test_the_default_native_flavors_are_those_the_native_predictor_reads():
    from ml_assets.resources.core.formats import _TREE_FLAVORS
    from ml_assets.resources.runtimes._flavors import NATIVE_FLAVORS

    assert set(_TREE_FLAVORS) == set(NATIVE_FLAVORS)


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


def test_mlmodel_parsing_is_safe_and_reads_what_pyyaml_safe_load_reads(models):
    """libyaml's safe loader where PyYAML has it: the same data as ``yaml.safe_load`` for a real MLmodel,
    no Python objects built from tags, and {} for a document that is not a mapping."""
    import yaml

    from ml_assets.resources.core.formats import parse_mlmodel

    assert yaml.__with_libyaml__  # the wheel's libyaml, so the fast path is what runs here
    text = next(Path(models.root).rglob("MLmodel")).read_text()
    assert parse_mlmodel(text) == yaml.safe_load(text)
    assert parse_mlmodel(text)["flavors"]
    with pytest.raises(yaml.constructor.ConstructorError):
        parse_mlmodel('flavors: !!python/object/apply:os.system ["touch /tmp/pwned"]')
    assert parse_mlmodel("- onnx\n- pmml\n") == {}
    with pytest.raises(yaml.YAMLError):
        parse_mlmodel("flavors: {onnx: [")
