"""Read image bytes on executors, many files at once (remote stores reward concurrency).

Only permanent causes become image errors (a `read` row in errors/): not found, permission denied, a folder,
above --max-bytes. Everything else is treated as passing (S3's 503 SlowDown, reset connections, timeouts:
what is left once pyarrow's own attempts, io/fs.S3_REQUEST_ATTEMPTS per request, are spent) and retried with
jittered exponential backoff; if it persists, TransientReadError fails the Spark task (Spark retries it), so
that throttling never records a healthy image as a bad one. Each row counts the retries its read took.
"""

from __future__ import annotations

import errno
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from orchard.errors import TRANSIENT_MARK, TransientReadError
from orchard.io import fs
from orchard.preprocess import ImageError

VANISHED = "file vanished between listing and reading"
DENIED = "permission denied"
# pyarrow's S3 errors carry no errno: the AWS error names (and the HTTP status) in the text say what it was.
PERMANENT_TEXT = (
    ("ACCESS_DENIED", DENIED), ("AccessDenied", DENIED), ("HTTP status 403", DENIED),
    ("NO_SUCH_KEY", VANISHED), ("NoSuchKey", VANISHED), ("HTTP status 404", VANISHED),
    ("NO_SUCH_BUCKET", "its bucket does not exist"), ("NoSuchBucket", "its bucket does not exist"),
    ("INVALID_OBJECT_STATE", "archived object (storage class Glacier/Deep Archive): restore it first"),
    ("InvalidObjectState", "archived object (storage class Glacier/Deep Archive): restore it first"),
)
PERMANENT_ERRNOS = {errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL, errno.ENXIO, errno.ENODEV, errno.EFBIG}


@dataclass(frozen=True)
class RetryPolicy:
    """orchard's attempts per file (each one after pyarrow's own per request), with full-jitter exponential
    backoff: before retry n (from 0) a uniform wait in [0, min(cap, base * 2**n)] seconds."""

    attempts: int = 4
    base: float = 0.5
    cap: float = 8.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0-based): full jitter under a doubling, capped bound."""
        return random.uniform(0.0, min(self.cap, self.base * 2**retry))


DEFAULT_POLICY = RetryPolicy()


def permanent_reason(exc: OSError) -> str | None:
    """Why a read failed for good (an image error), or None when the cause may pass (retry it)."""
    if isinstance(exc, FileNotFoundError):
        return VANISHED
    if isinstance(exc, PermissionError):
        return DENIED
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, NotADirectoryError):
        return "a folder on its path is a file"
    if exc.errno in PERMANENT_ERRNOS:
        return f"cannot read file: {exc}"
    text = str(exc)
    return next((reason for mark, reason in PERMANENT_TEXT if mark in text), None)


def _read_once(uri: str, max_bytes: int, storage: fs.StorageOptions | None) -> bytes:
    filesystem, path = fs.filesystem_and_path(uri, storage)
    with filesystem.open_input_file(path) as handle:
        size = handle.size()
        if size > max_bytes:
            raise ImageError("read", f"file is {size} bytes, above the {max_bytes}-byte limit (--max-bytes)")
        return handle.read()


def read_counted(uri: str, max_bytes: int, storage: fs.StorageOptions | None = None,
                 policy: RetryPolicy = DEFAULT_POLICY) -> tuple[bytes | ImageError, int]:
    """(the bytes of one file, or the ImageError that says why it cannot be read; how many retries it took).

    Raises TransientReadError when every one of `policy.attempts` failed for a cause that may pass.
    """
    last: OSError | None = None
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(policy.delay(attempt - 1))
        try:
            return _read_once(uri, max_bytes, storage), attempt
        except ImageError as error:
            return error, attempt
        except OSError as exc:
            reason = permanent_reason(exc)
            if reason is not None:
                return ImageError("read", reason), attempt
            last = exc
    raise TransientReadError(f"{TRANSIENT_MARK} reading {uri} failed {policy.attempts} times (the last: {last}); "
                             "the storage is throttling or unreachable: rerun later to resume", uri, policy.attempts)


def read_file(uri: str, max_bytes: int, storage: fs.StorageOptions | None = None,
              policy: RetryPolicy = DEFAULT_POLICY) -> bytes:
    """The bytes of one file, or ImageError('read', reason) for a permanent cause; TransientReadError when
    a passing one (throttling, resets) outlasts every retry."""
    result, _ = read_counted(uri, max_bytes, storage, policy)
    if isinstance(result, ImageError):
        raise result
    return result


def read_all(uris: list[str], max_bytes: int, threads: int, storage: fs.StorageOptions | None = None,
             policy: RetryPolicy = DEFAULT_POLICY) -> tuple[list[bytes | ImageError], list[int]]:
    """(bytes or ImageError for each URI, the retries of each read), in order; TransientReadError if any
    read kept failing."""
    def attempt(uri: str) -> tuple[bytes | ImageError, int]:
        return read_counted(uri, max_bytes, storage, policy)

    if threads <= 1 or len(uris) <= 1:
        results = [attempt(uri) for uri in uris]
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(uris))) as pool:
            results = list(pool.map(attempt, uris))
    return [blob for blob, _ in results], [retries for _, retries in results]


def read_many(uris: list[str], max_bytes: int, threads: int, storage: fs.StorageOptions | None = None,
              policy: RetryPolicy = DEFAULT_POLICY) -> list[bytes | ImageError]:
    """Bytes or ImageError for each URI, in order (see read_all)."""
    return read_all(uris, max_bytes, threads, storage, policy)[0]
