"""What the file and HTTP registries share: name rules, signatures in JSON, version manifests,
picking the version a ref names, and the error that lists what is there."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ml_assets.resources.core.errors import ModelNotFoundError, ModelRefError
from ml_assets.resources.core.models import ColumnSpec, ModelRef, ModelVersion, Signature
from ml_assets.resources.core.paths import check_relative

FORMAT_VERSION = 1
ARCHIVED = "Archived"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def validate_name(name: str, *, what: str = "model name") -> str:
    """A name that is safe as one path segment: no separators, no ``..``, not absolute."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name or len(name) > 200:
        msg = (
            f"invalid {what} {name!r}: use letters, digits, '_', '-' and '.', starting with a letter "
            "or digit, without '..', '/' or '\\'"
        )
        raise ModelRefError(msg)
    return name


def validate_version(version: str) -> str:
    version = str(version)
    if not version.isdigit() or int(version) < 1 or version != str(int(version)):
        msg = f"invalid version {version!r}: versions are positive integers without leading zeros"
        raise ModelRefError(msg)
    return version


def signature_to_json(signature: Signature | None) -> dict[str, Any] | None:
    if signature is None:
        return None

    def columns(specs: Sequence[ColumnSpec]) -> list[dict[str, Any]]:
        return [{"name": c.name, "type": c.type, "required": c.required} for c in specs]

    return {"inputs": columns(signature.inputs), "outputs": columns(signature.outputs)}


def signature_from_json(data: Any) -> Signature | None:
    """A Signature from the manifest's JSON; also accepts ``{"inputs": {"col": "type"}}`` shorthand."""
    if not data:
        return None

    def columns(value: Any) -> tuple[ColumnSpec, ...]:
        if isinstance(value, Mapping):
            return tuple(ColumnSpec(str(k), str(v)) for k, v in value.items())
        return tuple(
            ColumnSpec(str(c["name"]), str(c.get("type", "double")), bool(c.get("required", True))) for c in value or ()
        )

    return Signature(inputs=columns(data.get("inputs")), outputs=columns(data.get("outputs")))


def as_signature(value: Signature | Mapping[str, Any] | Any | None) -> Signature | None:
    """Signature, manifest-style mapping, or a ``pyarrow.Schema`` of the inputs."""
    if value is None or isinstance(value, Signature):
        return value
    if isinstance(value, Mapping):
        return signature_from_json(value)
    if hasattr(value, "names") and hasattr(value, "types"):  # pyarrow.Schema
        return Signature(inputs=tuple(ColumnSpec(f.name, str(f.type)) for f in value))
    msg = f"signature must be a Signature, a mapping or a pyarrow.Schema, got {type(value).__name__}"
    raise TypeError(msg)


def stage_matches(recorded: str | None, asked: str) -> bool:
    return recorded is not None and recorded.lower() == asked.lower()


def not_found_message(
    where: str, ref: ModelRef, *, models: Sequence[str] | None, aliases: Mapping[str, str], versions: Sequence[str],
    stages: Mapping[str, str],
) -> str:  # fmt: skip
    """What was asked, and what exists: the models, or the model's aliases, stages and versions."""
    if models is not None:
        return f"no model named {ref.name!r} in {where} (asked: {ref.raw!r}); models: {', '.join(models) or 'none'}"
    if ref.alias is not None:
        what = f"alias {ref.alias!r}"
    elif ref.stage is not None:
        what = f"version in stage {ref.stage!r}"
    elif ref.version is not None:
        what = f"version {ref.version}"
    else:
        what = "versions"
    known_stages = ", ".join(sorted({s for s in stages.values() if s})) or "none"
    return (
        f"model {ref.name!r} in {where} has no {what} (asked: {ref.raw!r}); "
        f"aliases: {', '.join(sorted(aliases)) or 'none'}; stages: {known_stages}; "
        f"versions: {', '.join(versions) or 'none'}"
    )


def pick_version(
    where: str, ref: ModelRef, versions: Sequence[str], aliases: Mapping[str, str], stages: Mapping[str, str]
) -> str:
    """The version a ref names, among the visible ``versions`` (sorted ascending)."""

    def missing() -> ModelNotFoundError:
        return ModelNotFoundError(
            not_found_message(where, ref, models=None, aliases=aliases, versions=versions, stages=stages)
        )

    if ref.alias is not None:
        target = aliases.get(ref.alias)
        if target is None:
            raise missing()
        if target not in versions:
            msg = (
                f"alias {ref.alias!r} of model {ref.name!r} in {where} points to version {target}, which is not "
                f"(or not completely) published (asked: {ref.raw!r}); versions: {', '.join(versions) or 'none'}"
            )
            raise ModelNotFoundError(msg)
        return target
    if ref.version is not None:
        if ref.version not in versions:
            raise missing()
        return ref.version
    if ref.latest:
        if not versions:
            raise missing()
        return versions[-1]
    in_stage = [v for v in versions if stage_matches(stages.get(v), ref.stage or "")]
    if not in_stage:
        raise missing()
    return in_stage[-1]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def version_from_manifest(
    manifest: Mapping[str, Any], *, artifact_uri: str, registry: str, ref: str, aliases: Mapping[str, str],
    stages: Mapping[str, str],
) -> ModelVersion:  # fmt: skip
    version = str(manifest["version"])
    extra = {}
    if manifest.get("model_file"):
        extra["model_file"] = str(manifest["model_file"])
    return ModelVersion(
        name=str(manifest["name"]),
        version=version,
        format=str(manifest["format"]),
        artifact_uri=artifact_uri,
        registry=registry,
        ref=ref,
        signature=signature_from_json(manifest.get("signature")),
        aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
        stage=stages.get(version) or None,
        created_at=_parse_time(manifest.get("created_at")),
        checksum=manifest.get("checksum") or None,
        tags={str(k): str(v) for k, v in (manifest.get("tags") or {}).items()},
        extra=extra,
    )


def is_complete_manifest(data: Any, name: str, version: str) -> bool:
    """A manifest every field of which a reader needs is present and consistent with its folder."""
    if not isinstance(data, dict):
        return False
    files = data.get("files")
    return (
        str(data.get("name")) == name
        and str(data.get("version")) == version
        and isinstance(data.get("format"), str)
        and isinstance(files, list)
        and bool(files)
        and all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in files)
    )


def safe_relative_path(rel: str) -> str:
    """A manifest's file path, refused if it could escape the version folder."""
    return check_relative(rel, what="file path in a model manifest")
