"""run.json as a typed record: round trip, outputs of the older format, unknown keys kept, secrets redacted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchard import record
from orchard.config import REDACTED

pytestmark = pytest.mark.pure

FORMAT_1 = Path(__file__).parent / "recorded" / "run-format-1.json"


def test_a_format_1_run_json_reads_as_a_typed_record_and_writes_back_unchanged(tmp_path):
    data = json.loads(FORMAT_1.read_text())
    assert "format_version" not in data
    info = record.RunRecord.from_dict(data)
    assert info.format_version == 1
    assert (info.counts.listed, info.counts.ok, info.counts.errors) == (24, 24, 0)
    assert info.model.meaningful is False and info.model.precision == "fp32" and info.pca["k"] >= 1
    assert info.counts.extra == {} and info.model.extra == {} and info.extra == {}  # every key is known
    written = tmp_path / "run.json"
    record.write(str(written), info)
    assert json.loads(written.read_text()) == {**data, "format_version": 1}


def test_unknown_keys_survive_a_rewrite_and_optional_entries_appear_only_when_set(tmp_path):
    data = json.loads(FORMAT_1.read_text())
    data["format_version"] = 3
    data["from_the_future"] = {"x": 1}
    data["model"]["accelerator"] = {"name": "npu"}
    data["counts"]["dropped"] = 0
    info = record.RunRecord.from_dict(data)
    assert info.extra == {"from_the_future": {"x": 1}} and info.model.extra == {"accelerator": {"name": "npu"}}
    assert "classifier" not in info.to_dict() and "incremental" not in info.to_dict()
    info.classifier = {"accuracy": 0.5}
    path = str(tmp_path / "run.json")
    record.write(path, info)
    again = record.read(path)
    assert again.to_dict() == {**data, "classifier": {"accuracy": 0.5}}
    assert again.counts.extra == {"dropped": 0} and again.format_version == 3


def test_write_redacts_credential_keys_and_aws_key_ids_wherever_they_are(tmp_path):
    info = record.RunRecord.from_dict(json.loads(FORMAT_1.read_text()))
    key_id = "AKIA" + "ABCDEFGHIJKLMNOP"
    info.config["spark"]["conf"] = {"spark.hadoop.fs.s3a.secret.key": "s3cr3t-value", "spark.app.name": "x"}
    info.extra["note"] = f"endpoint with {key_id} in it"
    info.shards[0]["password"] = "hunter22"
    path = tmp_path / "run.json"
    record.write(str(path), info)
    text = path.read_text()
    assert "s3cr3t-value" not in text and key_id not in text and "hunter22" not in text
    written = json.loads(text)
    assert written["config"]["spark"]["conf"] == {"spark.hadoop.fs.s3a.secret.key": REDACTED, "spark.app.name": "x"}
    assert written["note"] == f"endpoint with {REDACTED} in it" and written["shards"][0]["password"] == REDACTED
    assert written["counts"] == json.loads(FORMAT_1.read_text())["counts"]  # numbers pass untouched
