"""io.fs: the storage a call without an explicit one uses is scoped to the block that set it."""

from __future__ import annotations

import pytest

from orchard.io import fs
from orchard.io.storage import StorageOptions

pytestmark = pytest.mark.pure


def test_scoped_storage_ends_with_its_block_and_explicit_storage_wins(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)

    def region(storage: StorageOptions | None = None) -> str:
        filesystem, path = fs.filesystem_and_path("s3://bucket/out/run.json", storage)
        assert path == "bucket/out/run.json"
        return filesystem.region

    assert region() == "eu-west-1"  # the AWS environment
    with fs.using_storage(StorageOptions(region="eu-north-1")):
        assert region() == "eu-north-1"
        assert region(StorageOptions(region="eu-central-1")) == "eu-central-1"
        with fs.using_storage(None):  # a nested command without options: the environment again
            assert region() == "eu-west-1"
        assert region() == "eu-north-1"
    assert region() == "eu-west-1"  # what a notebook's next verify() sees after a run on another endpoint
    with pytest.raises(RuntimeError), fs.using_storage(StorageOptions(region="eu-north-1")):
        raise RuntimeError("a failed run")
    assert region() == "eu-west-1"
