"""run.json as a typed, versioned record: written and read here only, with the redaction of secrets.

`RunRecord` is what a finished run says of itself: config, versions, engine, model, counts, shards, timings,
PCA, part checksums. `pipeline` builds it, `classify` adds its metrics, `verify`, `report` and `train` read
it. Older outputs stay readable: a run.json without `format_version` is format 1 (the same keys), and keys this
orchard does not know are kept in `extra` and written back unchanged, so a newer output survives `train`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from orchard.config import AWS_ACCESS_KEY_ID, REDACTED, REDACTION
from orchard.io import fs

FORMAT_VERSION = 2  # 1: the same content, before run.json carried its format
OPTIONAL = {"omit_when_none": True}  # a field written only when set (older records do not have it)


@dataclass
class Counts:
    """Every listed file accounted for: listed = ok + errors; what the listing skipped and why."""

    listed: int
    ok: int
    errors: int
    rows: int
    distinct_paths: int
    classes: int
    errors_by_stage: dict[str, int]
    found: int = 0
    skipped_cycle_paths: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelRecord:
    """The network that made the features: weights, precision, engine, and the sha256 of its ONNX graph."""

    weights: str
    description: str
    meaningful: bool
    onnx_sha256: str
    precision: str = "fp32"
    quantization: dict | None = None
    architecture: str = "MobileNetV2 1.0/224, top removed, global average pooling"
    feature_dim: int = 1280
    runtime: str = "onnxruntime"
    engine: str | None = field(default=None, metadata=OPTIONAL)  # "<engine> <version>" (format 1: absent)
    cpu: dict[str, bool] | None = field(default=None, metadata=OPTIONAL)  # the driver's CPU features
    weights_path: str | None = None
    weights_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """The content of run.json."""

    orchard_version: str
    finished_at: str
    fingerprint: str
    feature_fingerprint: str
    config: dict[str, Any]
    versions: dict[str, str]
    spark: dict[str, Any]
    model: ModelRecord
    counts: Counts
    shards: list[dict]
    timings: dict[str, Any]
    pca: dict[str, Any]
    status: str = "complete"
    storage: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    parts: dict[str, dict[str, str]] = field(default_factory=dict)
    resume: dict[str, Any] = field(default_factory=dict)
    incremental: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)  # only --incremental runs
    classifier: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)  # once `orchard train` ran
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """run.json's JSON object: known fields, then the kept unknown ones; OPTIONAL fields only when set."""
        return _flatten(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record from run.json's object, of this format or an older one."""
        values = dict(data)
        values.setdefault("format_version", 1)
        values["model"] = _typed(ModelRecord, values.get("model", {}))
        values["counts"] = _typed(Counts, values.get("counts", {}))
        return _typed(cls, values)


def write(uri: str, record: RunRecord) -> None:
    """Write `record` as run.json at `uri`, every credential-looking value redacted."""
    fs.write_json(uri, redact(record.to_dict()))


def read(uri: str) -> RunRecord:
    """The record in the run.json at `uri`."""
    return RunRecord.from_dict(fs.read_json(uri))


def redact(value: Any, name: str = "") -> Any:
    """`value` with each string under a credential-like key (Spark's redaction pattern), and each AWS access key
    id, replaced by REDACTED: the last guard before run.json, after the config's own redaction of its settings."""
    if isinstance(value, dict):
        return {key: redact(item, str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, name) for item in value]
    if isinstance(value, str):
        return REDACTED if value and REDACTION.search(name) else AWS_ACCESS_KEY_ID.sub(REDACTED, value)
    return value


def _typed(cls, data: dict[str, Any]):
    """`cls` from `data`: its fields by name, everything else in `extra`."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {key: value for key, value in data.items() if key in names}
    return cls(**known, extra={key: value for key, value in data.items() if key not in names})


def _flatten(record) -> dict[str, Any]:
    """A record as plain JSON values, its `extra` merged back in and None-valued optional entries left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name == "extra":
            continue
        if dataclasses.is_dataclass(value):
            value = _flatten(value)
        if value is None and f.metadata.get("omit_when_none"):
            continue
        out[f.name] = value
    return {**out, **record.extra}
