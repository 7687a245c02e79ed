"""The Dagster resources: secrets from EnvVar reach only runtimes that take them; models load once per run."""

from __future__ import annotations

import dagster as dg
import pytest

from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.resources.core.errors import PluginNotFoundError
from ml_assets.service import runtime_options


def test_secrets_come_from_env_vars_and_reach_only_runtimes_that_accept_them(monkeypatch):
    monkeypatch.setenv("SCORING_TOKEN", "t0ps3cret")
    resource = ModelRuntimeResource(token=dg.EnvVar("SCORING_TOKEN"), options={"http": {"url": "http://127.0.0.1:9"}})
    with dg.build_resources(
        {"runtime": resource, "registry": ModelRegistryResource(kind="file", uri="/nonexistent")}
    ) as built:
        service = built.runtime.service(built.registry)
        secrets = service._secrets
        assert runtime_options("http", service.runtime_options["http"], secrets=secrets) == {
            "url": "http://127.0.0.1:9",
            "token": "t0ps3cret",
        }
        assert "token" not in runtime_options("onnx", {}, secrets=secrets)


def test_an_option_a_runtime_does_not_take_names_it_and_the_accepted_ones():
    with pytest.raises(PluginNotFoundError, match=r"the onnx runtime takes no option url; it takes: .*threads"):
        runtime_options("onnx", {"url": "http://127.0.0.1:9"})


def test_a_model_is_loaded_once_per_run(models):
    registry = ModelRegistryResource(uri=models.tracking_uri)
    service = ModelRuntimeResource().service(registry)
    version = registry.resolve("models:/fraud/1")
    first = service.load(version)
    assert service.load(version) is first
    assert service.load(registry.resolve("models:/fraud/2")) is not first
    service.close()
    assert service.load(version) is not first
