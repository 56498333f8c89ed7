"""One filesystem layer for every file orchard reads or writes itself (pyarrow.fs), driver and executors.

Spark reads and writes its datasets through Hadoop; everything else (image bytes on executors, run.json,
stats files, reports) goes through here. URIs: local paths, file:/..., s3://, s3a://, s3n:// (S3 through
pyarrow's S3 filesystem, AWS default credential chain), and whatever else pyarrow.fs understands.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from orchard.io.storage import StorageOptions

S3_SCHEMES = ("s3", "s3a", "s3n")


_scoped_storage: ContextVar[StorageOptions | None] = ContextVar("orchard_storage", default=None)


@contextmanager
def using_storage(storage: StorageOptions | None) -> Iterator[None]:
    """Inside the block, calls without an explicit `storage` use `storage` (None: the AWS environment).

    Scoped to the calling context (a run, a command, a request's thread): nothing outlives the block, so a
    notebook's next `verify()` does not quietly reuse the previous run's S3 endpoint.
    """
    token = _scoped_storage.set(storage)
    try:
        yield
    finally:
        _scoped_storage.reset(token)


def filesystem_and_path(uri: str, storage: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI or local path."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:  # len 1: a Windows drive letter
        path = uri[len("file:") :] if scheme == "file" else uri
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        return _local(), os.path.abspath(path)
    if scheme in S3_SCHEMES:
        storage = storage or _scoped_storage.get() or StorageOptions.from_env()
        return _s3(storage.endpoint, storage.region), parsed.netloc + parsed.path
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem, path


@lru_cache(maxsize=1)
def _local() -> pafs.LocalFileSystem:
    return pafs.LocalFileSystem()


# S3 through pyarrow: each request (HEAD, GET, PUT, LIST) is tried up to S3_REQUEST_ATTEMPTS times by the AWS
# SDK's standard retry strategy (jittered exponential backoff; 503 SlowDown, 5xx, resets and timeouts are
# retried). What still fails is retried again per file by io/reader.py (image reads), never recorded as a bad
# image. Slow responses are waited for (S3_REQUEST_TIMEOUT) rather than retried into more load.
S3_REQUEST_ATTEMPTS = 5
S3_CONNECT_TIMEOUT = 10.0  # seconds
S3_REQUEST_TIMEOUT = 60.0  # seconds without data on a socket


@lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_REQUEST_ATTEMPTS),
                    "connect_timeout": S3_CONNECT_TIMEOUT, "request_timeout": S3_REQUEST_TIMEOUT}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or endpoint
        kwargs["scheme"] = parsed.scheme or "https"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/' (keeps the scheme: `join("s3://b/out", "pca")` is `s3://b/out/pca`)."""
    return posixpath.join(base.rstrip("/"), *parts)


def is_local(uri: str) -> bool:
    """True for local paths and file: URIs."""
    scheme = urlparse(uri).scheme.lower()
    return scheme in ("", "file") or len(scheme) == 1


def read_bytes(uri: str, storage: StorageOptions | None = None) -> bytes:
    """The whole content of a file."""
    filesystem, path = filesystem_and_path(uri, storage)
    with filesystem.open_input_stream(path) as stream:
        return stream.readall()


def write_bytes(uri: str, data: bytes, storage: StorageOptions | None = None) -> None:
    """Write a whole file so that readers never see it half-written (temp + move, or one S3 PUT)."""
    filesystem, path = filesystem_and_path(uri, storage)
    parent = posixpath.dirname(path)
    filesystem.create_dir(parent, recursive=True)
    if isinstance(filesystem, pafs.LocalFileSystem):
        temp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        with filesystem.open_output_stream(temp) as stream:
            stream.write(data)
        filesystem.move(temp, path)
    else:
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)


def write_json(uri: str, payload: dict, storage: StorageOptions | None = None) -> None:
    """Write `payload` as indented, key-sorted JSON, whole (see `write_bytes`)."""
    write_bytes(uri, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode(), storage)


def read_json(uri: str, storage: StorageOptions | None = None) -> dict:
    """A JSON file's content."""
    return json.loads(read_bytes(uri, storage))


def write_parquet(uri: str, table: pa.Table, storage: StorageOptions | None = None) -> None:
    """A small Parquet file written whole by the driver (manifest, variance table)."""
    import pyarrow.parquet as pq  # here, not at import: it pulls in pandas, which `orchard predict` needs not

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes(uri, buffer.getvalue(), storage)


def read_columns(uri: str, columns: list[str] | None = None, storage: StorageOptions | None = None) -> pa.Table:
    """Columns of a Parquet file or dataset folder (Spark's hidden '.'/'_' files skipped)."""
    import pyarrow.dataset as pads  # see write_parquet

    filesystem, path = filesystem_and_path(uri, storage)
    return pads.dataset(path, filesystem=filesystem, format="parquet").to_table(columns=columns)


def exists(uri: str, storage: StorageOptions | None = None) -> bool:
    """True if a file or folder is there."""
    filesystem, path = filesystem_and_path(uri, storage)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str, storage: StorageOptions | None = None) -> bool:
    """True if a file (not a folder) is there."""
    filesystem, path = filesystem_and_path(uri, storage)
    return filesystem.get_file_info(path).type == pafs.FileType.File


def modified_us(uri: str, storage: StorageOptions | None = None) -> int | None:
    """A file's modification time in microseconds since the epoch, at millisecond precision as Hadoop
    lists it; None when it is gone or its file system cannot say."""
    try:
        filesystem, path = filesystem_and_path(uri, storage)
        info = filesystem.get_file_info(path)
    except (OSError, ValueError, pa.ArrowException):
        return None
    if info.type == pafs.FileType.NotFound or info.mtime_ns is None:
        return None
    return info.mtime_ns // 1_000_000 * 1000


def copy_tree(source: str, target: str, storage: StorageOptions | None = None) -> None:
    """Copy a folder, replacing what is at `target`."""
    filesystem, path = filesystem_and_path(source, storage)
    _, destination = filesystem_and_path(target, storage)
    remove_tree(target, storage)
    for source_file, target_file in _file_pairs(filesystem, path, destination):
        filesystem.create_dir(posixpath.dirname(target_file), recursive=True)
        filesystem.copy_file(source_file, target_file)


def _file_pairs(filesystem: pafs.FileSystem, path: str, destination: str) -> list[tuple[str, str]]:
    """(file under `path`, the same relative path under `destination`) for every file of a folder."""
    return [(info.path, posixpath.join(destination, posixpath.relpath(info.path, path)))
            for info in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
            if info.type == pafs.FileType.File]


def list_files(uri: str, storage: StorageOptions | None = None) -> list[str]:
    """Base names of the files directly under a folder (empty if it does not exist)."""
    filesystem, path = filesystem_and_path(uri, storage)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(posixpath.basename(info.path) for info in infos if info.type == pafs.FileType.File)


def is_nonempty_dir(uri: str, storage: StorageOptions | None = None) -> bool:
    """True for a folder with at least one entry."""
    filesystem, path = filesystem_and_path(uri, storage)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return False
    return bool(filesystem.get_file_info(pafs.FileSelector(path, recursive=False)))


def remove_tree(uri: str, storage: StorageOptions | None = None) -> None:
    """Delete a folder with everything under it, or a file; nothing there is fine."""
    filesystem, path = filesystem_and_path(uri, storage)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        filesystem.delete_dir(path)
    elif info.type == pafs.FileType.File:
        filesystem.delete_file(path)


def move_tree(source: str, target: str, storage: StorageOptions | None = None) -> None:
    """Move a folder to `target`, replacing what is there: one rename where the filesystem has one (local,
    HDFS: readers see the old folder, nothing, or the whole new one), else file by file (S3: copy + delete)."""
    filesystem, path = filesystem_and_path(source, storage)
    _, destination = filesystem_and_path(target, storage)
    remove_tree(target, storage)
    if not isinstance(filesystem, pafs.S3FileSystem):
        filesystem.create_dir(posixpath.dirname(destination), recursive=True)
        filesystem.move(path, destination)
        return
    for source_file, target_file in _file_pairs(filesystem, path, destination):
        filesystem.move(source_file, target_file)
    remove_tree(source, storage)


def tree_size(uri: str, storage: StorageOptions | None = None) -> int:
    """Total bytes of the files under a folder."""
    filesystem, path = filesystem_and_path(uri, storage)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return 0
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(info.size or 0 for info in infos if info.type == pafs.FileType.File)


def walk_files(uri: str, storage: StorageOptions | None = None) -> list[tuple[str, int, int | None]]:
    """(path inside the filesystem, size, modified_us) of every file under a folder, at any depth."""
    filesystem, path = filesystem_and_path(uri, storage)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return [(info.path, info.size, info.mtime_ns // 1000 if info.mtime_ns is not None else None)
            for info in infos if info.type == pafs.FileType.File]
