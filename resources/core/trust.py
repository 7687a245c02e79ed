"""Verified models: a version's files are checked against an OpenSSF model-signing signature, and
optionally its pickles scanned, before any runtime loads them.

A team signs a version when it registers it (``ml-assets models publish ... --sign-key KEY`` or
``ml-assets models sign FOLDER --key KEY`` before logging it to MLflow): the signature is the file
``model.sig`` among the model's files, a Sigstore bundle over every other file's SHA-256. Scoring
with a ``TrustPolicy`` refuses a version that is unsigned, signed by another key (or a certificate
outside the trusted chain), modified after signing, or holding files the signature does not cover;
with ``pickles="scan"`` also one whose pickle files call dangerous globals (fickling). Key and
certificate modes work offline; keyless Sigstore needs the network and is not offered.

``model-signing`` and ``fickling`` are the ``trust`` extra, imported only when a policy asks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ml_assets.resources.core.errors import MissingDependencyError, ModelVerificationError
from ml_assets.resources.core.models import ModelVersion

SIGNATURE_FILE = "model.sig"
# Never part of what is signed: the signature itself and the cache's own manifest.
_UNSIGNED = (SIGNATURE_FILE, ".ml-assets-manifest.json")
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".dill", ".cloudpickle"})

Signatures = Literal["off", "key", "certificate"]
Pickles = Literal["off", "scan"]


@dataclass(frozen=True)
class TrustPolicy:
    """What a version must prove before it is loaded.

    Args:
        signatures: ``key``: signed with the private key of ``public_key``; ``certificate``: signed
            with a certificate that chains to one of ``certificate_chain``; ``off``: not checked.
        public_key: PEM file of the trusted public key (elliptic curve), for ``key``.
        certificate_chain: PEM files of the trusted CA certificates, for ``certificate``.
        pickles: ``scan``: refuse pickle files (``.pkl``, ``.joblib``, ...) that call globals
            fickling does not rate as likely safe; ``off``: not scanned.
    """

    signatures: Signatures = "off"
    public_key: str | None = None
    certificate_chain: tuple[str, ...] = ()
    pickles: Pickles = "off"

    def __post_init__(self) -> None:
        if self.signatures not in ("off", "key", "certificate") or self.pickles not in ("off", "scan"):
            msg = (
                "trust policy: signatures is off|key|certificate and pickles off|scan; "
                f"got {self.signatures!r}, {self.pickles!r}"
            )
            raise ValueError(msg)
        if self.signatures == "key" and not self.public_key:
            msg = "trust policy: signatures='key' needs public_key (a PEM file)"
            raise ValueError(msg)
        if self.signatures == "certificate" and not self.certificate_chain:
            msg = "trust policy: signatures='certificate' needs certificate_chain (PEM files of the trusted CAs)"
            raise ValueError(msg)
        for file in (self.public_key, *self.certificate_chain):
            if file and not Path(file).expanduser().is_file():
                msg = f"trust policy: {file} is not a file"
                raise ValueError(msg)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> TrustPolicy | None:
        """A policy from configuration (Dagster resource, Component YAML, Airflow connection extra,
        CLI); None when it asks for nothing."""
        if not options:
            return None
        chain = options.get("certificate_chain") or ()
        policy = cls(
            signatures=options.get("signatures") or "off",
            public_key=options.get("public_key") or None,
            certificate_chain=(chain,) if isinstance(chain, str) else tuple(chain),
            pickles=options.get("pickles") or "off",
        )
        return policy if policy.active else None

    @property
    def active(self) -> bool:
        return self.signatures != "off" or self.pickles != "off"

    def verify(self, version: ModelVersion, path: Path) -> dict[str, str]:
        """Facts for lineage and metadata (``verified_signature``, ``signed_by``, ``pickle_scan``),
        once ``version``'s files at ``path`` pass; else ModelVerificationError naming the version and
        what failed."""
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        facts: dict[str, str] = {}
        if self.signatures != "off":
            facts.update(self._check_signature(version, folder))
        if self.pickles == "scan":
            facts.update(_scan_pickles(version, folder))
        return facts

    def _check_signature(self, version: ModelVersion, folder: Path) -> dict[str, str]:
        signature = folder / SIGNATURE_FILE
        if not signature.is_file():
            msg = (
                f"{version.describe()} is refused: it is unsigned (no {SIGNATURE_FILE} among its files) and the "
                f"trust policy requires a {self.signatures} signature; sign it with `ml-assets models sign`"
            )
            raise ModelVerificationError(msg)
        _, verifying, hashing = _model_signing()
        config = verifying.Config().set_hashing_config(hashing.Config().set_ignored_paths(paths=_UNSIGNED))
        if self.signatures == "key":
            config = config.use_elliptic_key_verifier(public_key=Path(str(self.public_key)).expanduser())
            trusted = f"key {_fingerprint(Path(str(self.public_key)).expanduser())}"
        else:
            chain = [Path(c).expanduser() for c in self.certificate_chain]
            config = config.use_certificate_verifier(certificate_chain=chain)
            trusted = "certificate chain " + ",".join(_fingerprint(c) for c in chain)
        try:
            config.verify(folder, signature)
        except _signing_errors() as exc:
            msg = f"{version.describe()} is refused by the trust policy: {_reason(exc)} (trusted: {trusted})"
            raise ModelVerificationError(msg) from None
        return {
            "verified_signature": self.signatures,
            "signed_by": trusted,
            "signature_sha256": hashlib.sha256(signature.read_bytes()).hexdigest(),
        }


def sign_model(
    folder: str | Path,
    *,
    private_key: str | Path,
    certificate: str | Path | None = None,
    certificate_chain: Sequence[str | Path] = (),
    password: str | None = None,
) -> Path:
    """Writes ``folder/model.sig``: a signature over every other file of the model in ``folder``
    (with an EC private key, or a private key and its signing certificate). Returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"cannot sign {folder}: sign the folder that holds the model's files"
        raise ModelVerificationError(msg)
    signing, _, hashing = _model_signing()
    config = signing.Config().set_hashing_config(hashing.Config().set_ignored_paths(paths=_UNSIGNED))
    if certificate is None:
        config = config.use_elliptic_key_signer(private_key=Path(private_key), password=password)
    elif not certificate_chain:
        msg = f"cannot sign {folder} with certificate {certificate}: give its chain (the issuing CA certificates)"
        raise ModelVerificationError(msg)
    else:
        config = config.use_certificate_signer(
            private_key=Path(private_key),
            signing_certificate=Path(certificate),
            certificate_chain=[Path(c) for c in certificate_chain],
        )
    target = folder / SIGNATURE_FILE
    try:
        config.sign(folder, target)
    except _signing_errors() as exc:  # key files that do not parse, a wrong password, symlinks in the folder
        msg = f"cannot sign {folder}: {type(exc).__name__}: {str(exc)[:300]}"
        raise ModelVerificationError(msg) from None
    return target


def _scan_pickles(version: ModelVersion, folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if not files:
        return {"pickle_scan": "no pickle files"}
    try:
        import fickling
    except ModuleNotFoundError as exc:
        msg = "pickle scanning needs fickling: pip install 'dagster-ml-assets[trust]'"
        raise MissingDependencyError(msg) from exc
    for file in files:
        result = fickling.scan_file(str(file), graceful=True)
        if not result.is_safe or result.errors:
            rel = file.relative_to(folder).as_posix()
            found = "; ".join(str(r)[:160] for r in result.results if str(r)) or "; ".join(result.errors)[:300]
            msg = (
                f"{version.describe()} is refused by the trust policy: pickle file {rel!r} is rated "
                f"{result.severity.name} by fickling ({found or 'unsafe globals'})"
            )
            raise ModelVerificationError(msg)
    return {"pickle_scan": f"{len(files)} pickle file(s) likely safe (fickling)"}


def _model_signing() -> tuple[Any, Any, Any]:
    try:
        from model_signing import hashing, signing, verifying
    except ModuleNotFoundError as exc:
        msg = f"verified models need model-signing ({exc.name} is missing): pip install 'dagster-ml-assets[trust]'"
        raise MissingDependencyError(msg) from exc
    return signing, verifying, hashing


def _signing_errors() -> tuple[type[BaseException], ...]:
    """What model-signing raises for a bad signature or key: ValueError (mismatches, JSON, bundle
    validation), cryptography's InvalidSignature, OpenSSL's chain errors, lookups in a malformed bundle."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from OpenSSL.crypto import X509StoreContextError

    return (ValueError, TypeError, KeyError, OSError, InvalidSignature, UnsupportedAlgorithm, X509StoreContextError)


def _fingerprint(pem: Path) -> str:
    return "sha256:" + hashlib.sha256(pem.read_bytes()).hexdigest()[:16]


_DIGEST = re.compile(r"Expected 'Digest\(.*?\)', Actual 'Digest\(.*?\)'")


def _reason(exc: Exception) -> str:
    """What failed, in words: another key, files changed, files added or missing, a bad signature."""
    text = str(exc)
    if "Key mismatch" in text or "public key" in text.lower():
        return "it is signed by another key"
    if "Hash mismatch" in text:
        changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)", text)
        return f"modified after signing ({', '.join(changed[:5])})"
    if "Extra files" in text:
        return "it holds files the signature does not cover: " + text.split(":", 2)[-1].strip(" ']\"[")[:200]
    if "Missing files" in text:
        return "files the signature covers are missing: " + text.split(":", 2)[-1].strip(" ']\"[")[:200]
    if type(exc).__name__ == "X509StoreContextError" or "certificate" in text.lower():
        return f"its certificate does not chain to the trusted ones ({_DIGEST.sub('', text)[:200]})"
    return f"its signature does not verify ({type(exc).__name__}: {_DIGEST.sub('', text)[:200]})"


__all__ = ["SIGNATURE_FILE", "TrustPolicy", "sign_model"]
