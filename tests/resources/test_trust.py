"""Verified models: versions signed with OpenSSF model-signing as they are registered (our CLI),
verified before loading by key or certificate (offline), refused when unsigned, signed by another
key, signed outside the trusted chain, modified after signing or holding a dangerous pickle."""

from __future__ import annotations

import datetime
import json
import pickle
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ml_assets.cli import main
from ml_assets.dagster.assets import build_scoring_asset
from ml_assets.dagster.resources import ModelRegistryResource, ModelRuntimeResource
from ml_assets.datasets import read_lineage
from ml_assets.dev.demo import FEATURES, make_transactions, to_onnx_classifier
from ml_assets.resources.core.errors import ModelVerificationError
from ml_assets.resources.core.trust import TrustPolicy
from ml_assets.resources.registries.file import FileRegistry
from ml_assets.service import ModelService
from tests.conftest import DATES

DAY = DATES[0]


def _pem_private(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def _pem_public(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None, path: Path
) -> Path:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two signing keys; a CA with a code-signing leaf, and an unrelated CA."""
    root = tmp_path_factory.mktemp("pki")
    team, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca, leaf, rogue = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    return {
        "team_key": _pem_private(team, root / "team.pem"),
        "team_pub": _pem_public(team, root / "team.pub"),
        "other_key": _pem_private(other, root / "other.pem"),
        "other_pub": _pem_public(other, root / "other.pub"),
        "ca": _certificate("ml-assets test CA", ca, None, root / "ca.crt"),
        "leaf_key": _pem_private(leaf, root / "leaf.pem"),
        "leaf": _certificate("model signer", leaf, ("ml-assets test CA", ca), root / "leaf.crt"),
        "rogue_ca": _certificate("rogue CA", rogue, None, root / "rogue.crt"),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """A hive-partitioned day of transactions and a logistic regression exported to ONNX."""
    from sklearn.linear_model import LogisticRegression

    from ml_assets.dev.demo import write_partitioned

    root = tmp_path_factory.mktemp("trust")
    train = make_transactions(2_000, seed=0)
    x = np.column_stack([train[c].to_numpy() for c in FEATURES])
    lr = LogisticRegression(max_iter=300).fit(x, train["is_fraud"].to_numpy())
    onnx_file = root / "lr.onnx"
    onnx_file.write_bytes(to_onnx_classifier(lr, len(FEATURES)).SerializeToString())
    write_partitioned(lambda day: make_transactions(3_000, seed=1), root / "tx", [DAY])
    return root / "tx", onnx_file, lr


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _publish(registry: Path, model: Path, *sign: str) -> str:
    code, out = _cli("models", "publish", "fraud", model, "--registry", "file", "--registry-uri", registry,
                     "--inputs", ",".join(f"{c}:float" for c in FEATURES), *sign)  # fmt: skip
    assert code == 0, out
    return out


def _score(registry: Path, tx: Path, out: Path, ref: str, *trust: str) -> tuple[int, str]:
    return _cli("score", ref, tx, out, "--partition", f"date={DAY}", "--registry", "file", "--registry-uri", registry,
                "--quiet", "--option", "threads=1", *trust)  # fmt: skip


def test_a_version_signed_at_registration_is_verified_and_recorded_in_lineage(pki, data, tmp_path):
    tx, onnx_file, lr = data
    registry = tmp_path / "registry"
    _publish(registry, onnx_file, "--sign-key", pki["team_key"])
    assert (registry / "fraud" / "1" / "model.sig").is_file()
    code, out = _score(registry, tx, tmp_path / "scores", "models:/fraud/1", "--verify-model", f"key:{pki['team_pub']}")
    assert code == 0, out
    output = tmp_path / "scores" / f"date={DAY}" / "part-0.parquet"
    lineage = read_lineage(str(output))
    assert lineage["model_verified_signature"] == "key"
    assert lineage["model_signed_by"].startswith("key sha256:")
    expected = lr.predict_proba(np.column_stack([pq.read_table(tx)[c].to_numpy() for c in FEATURES]))[:, 1]
    np.testing.assert_allclose(pq.read_table(output)["probability_1"].to_numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("case", ["unsigned", "other_key"])
def test_unsigned_or_foreign_versions_are_refused_before_loading(pki, data, tmp_path, case):
    tx, onnx_file, _ = data
    registry = tmp_path / "registry"
    _publish(registry, onnx_file, *(["--sign-key", pki["other_key"]] if case == "other_key" else []))
    code, out = _score(registry, tx, tmp_path / "scores", "models:/fraud/1", "--verify-model", f"key:{pki['team_pub']}")
    assert code == 1
    assert "model 'fraud' version 1 is refused" in out
    assert ("unsigned" if case == "unsigned" else "signed by another key") in out
    assert "Traceback" not in out
    assert not (tmp_path / "scores").exists()


def test_a_file_modified_after_signing_is_refused(pki, data, tmp_path):
    """The cache keeps sizes, not hashes: a same-size edit of a cached model is caught by the signature."""
    _, onnx_file, _ = data
    registry = FileRegistry(tmp_path / "registry", cache_dir=tmp_path / "cache")
    _publish(tmp_path / "registry", onnx_file, "--sign-key", pki["team_key"])
    policy = TrustPolicy(signatures="key", public_key=str(pki["team_pub"]))
    service = ModelService(registry, trust=policy)
    version = service.resolve("models:/fraud/1")
    assert version.verification["verified_signature"] == "key"
    cached = registry.fetch(version) / "lr.onnx"
    content = bytearray(cached.read_bytes())
    content[-1] ^= 0xFF
    cached.write_bytes(bytes(content))
    with pytest.raises(ModelVerificationError, match=r"version 1 is refused .*modified after signing \(lr.onnx\)"):
        ModelService(registry, trust=policy).resolve("models:/fraud/1")
    # A file added beside the signed ones is not covered by the signature either.
    cached.write_bytes(onnx_file.read_bytes())
    (cached.parent / "extra.onnx").write_bytes(b"\x08\x01")
    with pytest.raises(ModelVerificationError, match="files the signature does not cover"):
        ModelService(registry, trust=policy).load(version)


def test_certificate_mode_trusts_the_chain_and_only_the_chain(pki, data, tmp_path):
    _, onnx_file, _ = data
    registry_root = tmp_path / "registry"
    _publish(
        registry_root,
        onnx_file,
        "--sign-key",
        pki["leaf_key"],
        "--sign-certificate",
        pki["leaf"],
        "--sign-chain",
        pki["ca"],
    )
    registry = FileRegistry(registry_root, cache_dir=tmp_path / "cache")
    trusted = ModelService(registry, trust=TrustPolicy(signatures="certificate", certificate_chain=(str(pki["ca"]),)))
    assert trusted.resolve("models:/fraud/1").verification["verified_signature"] == "certificate"
    rogue = ModelService(
        registry, trust=TrustPolicy(signatures="certificate", certificate_chain=(str(pki["rogue_ca"]),))
    )
    with pytest.raises(ModelVerificationError, match="version 1 is refused by the trust policy"):
        rogue.resolve("models:/fraud/1")


class _Exploit:
    def __reduce__(self):  # what a malicious pickle does on load
        import os

        return (os.system, ("echo owned",))


def test_pickle_scanning_refuses_dangerous_globals(pki, data, tmp_path):
    _, onnx_file, _ = data
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "lr.onnx").write_bytes(onnx_file.read_bytes())
    (folder / "preprocess.pkl").write_bytes(pickle.dumps({"scale": [1.0, 2.0], "columns": FEATURES}))
    registry = FileRegistry(tmp_path / "registry", cache_dir=tmp_path / "cache")
    registry.publish("clean", folder, format="onnx", model_file="lr.onnx")
    (folder / "preprocess.pkl").write_bytes(pickle.dumps(_Exploit()))
    registry.publish("evil", folder, format="onnx", model_file="lr.onnx")
    scanning = ModelService(registry, trust=TrustPolicy(pickles="scan"))
    assert "likely safe" in scanning.resolve("models:/clean/1").verification["pickle_scan"]
    with pytest.raises(ModelVerificationError, match=r"'evil' version 1 is refused .*'preprocess.pkl'"):
        scanning.resolve("models:/evil/1")


def test_the_dagster_resource_verifies_and_puts_the_result_in_materialization_metadata(pki, data, tmp_path):
    tx, onnx_file, _ = data
    _publish(tmp_path / "registry", onnx_file, "--sign-key", pki["team_key"])
    asset = build_scoring_asset(
        name="verified_scores", model="models:/fraud/1", input_dataset=str(tx), output_dataset=str(tmp_path / "out"),
        partitions_def=dg.StaticPartitionsDefinition([DAY]),
    )  # fmt: skip

    def resources(public_key: Path) -> dict[str, object]:
        trust = {"signatures": "key", "public_key": str(public_key)}
        registry = ModelRegistryResource(kind="file", uri=str(tmp_path / "registry"), trust=trust)
        return {"model_registry": registry, "model_runtime": ModelRuntimeResource(options={"onnx": {"threads": 1}})}

    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key=DAY, resources=resources(pki["team_pub"]), instance=instance)
        (event,) = result.asset_materializations_for_node("verified_scores")
        assert event.metadata["model_verified_signature"].value == "key"
        refused = dg.materialize(
            [asset], partition_key=DAY, resources=resources(pki["other_pub"]), instance=instance, raise_on_error=False
        )
    assert not refused.success
    failure = json.dumps([str(e.event_specific_data) for e in refused.all_events if e.is_failure])
    assert "signed by another key" in failure


def test_the_policy_refuses_incomplete_configuration(tmp_path):
    with pytest.raises(ValueError, match="needs public_key"):
        TrustPolicy(signatures="key")
    with pytest.raises(ValueError, match="is not a file"):
        TrustPolicy(signatures="key", public_key=str(tmp_path / "missing.pub"))
    with pytest.raises(ValueError, match="needs certificate_chain"):
        TrustPolicy.from_options({"signatures": "certificate"})
    assert TrustPolicy.from_options({"signatures": "off"}) is None
    code, out = _cli("score", "models:/x/1", tmp_path, tmp_path / "o", "--verify-model", "sha:abc")
    assert code == 2
    assert "expected key:PEM or certificate:PEM" in out


def test_the_component_yaml_carries_the_policy_and_refuses_a_foreign_signature(pki, data, tmp_path):
    from tests.conftest import component_defs

    tx, onnx_file, _ = data
    _publish(tmp_path / "registry", onnx_file, "--sign-key", pki["other_key"])
    attributes = {
        "name": "trusted_scores",
        "model": "models:/fraud/1",
        "registry": {"kind": "file", "uri": str(tmp_path / "registry"),
                     "trust": {"signatures": "key", "public_key": str(pki["team_pub"])}},
        "runtime": {"options": {"onnx": {"threads": 1}}},
        "input": {"uri": str(tx), "partition_column": "date"},
        "output": {"uri": str(tmp_path / "scores")},
        "partitions": {"static": [DAY]},
    }  # fmt: skip
    with component_defs(attributes) as (_, defs):
        registry = defs.resources["trusted_scores_model_registry"]
        assert registry.trust_policy == TrustPolicy(signatures="key", public_key=str(pki["team_pub"]))
        job = defs.resolve_implicit_global_asset_job_def()
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(instance=instance, partition_key=DAY, raise_on_error=False)
    assert not result.success
    failure = json.dumps([str(e.event_specific_data) for e in result.all_events if e.is_failure])
    assert "version 1 is refused by the trust policy: it is signed by another key" in failure
    assert not (tmp_path / "scores").exists()
