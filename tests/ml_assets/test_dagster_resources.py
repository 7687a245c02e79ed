"""The Dagster resources: secrets from EnvVar reach only runtimes that take them; models load once."""

from __future__ import annotations

import dagster as dg

from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource


def test_secrets_come_from_env_vars_and_reach_only_runtimes_that_accept_them(monkeypatch):
    monkeypatch.setenv("SCORING_TOKEN", "t0ps3cret")
    resource = ModelRuntimeResource(token=dg.EnvVar("SCORING_TOKEN"), options={"http": {"url": "http://127.0.0.1:9"}})
    with dg.build_resources({"runtime": resource}) as built:
        runtime = built.runtime
        assert runtime.runtime_options("http") == {"url": "http://127.0.0.1:9", "token": "t0ps3cret"}
        assert "token" not in runtime.runtime_options("onnx")


def test_a_model_is_loaded_once_per_process(models):
    registry = ModelRegistryResource(uri=models.tracking_uri)
    runtime = ModelRuntimeResource()
    version = registry.resolve("models:/fraud/1")
    first = runtime.load(version, registry.fetch(version))
    assert runtime.load(version, registry.fetch(version)) is first
    other = registry.resolve("models:/fraud/2")
    assert runtime.load(other, registry.fetch(other)) is not first
