"""Read image bytes on executors, many files at once (remote stores reward concurrency)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from orchard.io import fs
from orchard.preprocess import ImageError


def read_file(uri: str, max_bytes: int, storage: fs.StorageOptions | None = None) -> bytes:
    """The bytes of one file, or ImageError('read', reason) that says what went wrong."""
    try:
        filesystem, path = fs.resolve(uri, storage)
        with filesystem.open_input_file(path) as handle:
            size = handle.size()
            if size > max_bytes:
                raise ImageError("read", f"file is {size} bytes, above the {max_bytes}-byte limit (--max-bytes)")
            return handle.read()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("read", "file vanished between listing and reading") from None
    except PermissionError:
        raise ImageError("read", "permission denied") from None
    except IsADirectoryError:
        raise ImageError("read", "is a directory, not a file") from None
    except OSError as exc:
        raise ImageError("read", f"cannot read file: {exc}") from None


def read_many(uris: list[str], max_bytes: int, threads: int,
              storage: fs.StorageOptions | None = None) -> list[bytes | ImageError]:
    """Bytes or ImageError for each URI, in order."""
    def attempt(uri: str) -> bytes | ImageError:
        try:
            return read_file(uri, max_bytes, storage)
        except ImageError as error:
            return error

    if threads <= 1 or len(uris) <= 1:
        return [attempt(uri) for uri in uris]
    with ThreadPoolExecutor(max_workers=min(threads, len(uris))) as pool:
        return list(pool.map(attempt, uris))
