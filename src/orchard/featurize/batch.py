"""One batch of paths -> one row each: features or an error with its stage. Never raises per image."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from orchard import schema
from orchard.featurize.runtime import embed
from orchard.io import fs
from orchard.io.reader import read_all
from orchard.preprocess import ImageError, Limits, prepare

RESULT_COLUMNS = [*schema.RESULT.names, *schema.COUNTS.names]  # per path; spark.py adds the SECONDS


@dataclass(frozen=True)
class WorkerSettings:
    """What a Python worker needs besides the model; small and picklable."""

    threads: int = 1
    batch_size: int = 8  # images per inference call (--batch-size), not an Arrow batch
    io_threads: int = 8
    limits: Limits = field(default_factory=Limits)
    storage: fs.StorageOptions = field(default_factory=fs.StorageOptions)
    precision: str = "fp32"  # picks the engine (runtime.ENGINES)


@dataclass
class StageSeconds:
    """Seconds spent per stage inside workers (summed over workers, so they can exceed wall time)."""

    read: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0

    def per_row(self, rows: int) -> dict[str, float]:
        """The schema.SECONDS columns of `rows` rows that shared these seconds (their sum is the total)."""
        share = 1.0 / max(rows, 1)
        return {name: getattr(self, name.removeprefix("seconds_")) * share for name in schema.SECONDS.names}


def prepare_paths(paths: list[str], settings: WorkerSettings, seconds: StageSeconds | None = None
                  ) -> tuple[dict[str, list], list[np.ndarray], list[int]]:
    """Read and decode `paths`: (result columns with errors filled in, tensors, positions of the tensors)."""
    seconds = seconds if seconds is not None else StageSeconds()
    started = time.perf_counter()
    blobs, retries = read_all(paths, settings.limits.max_bytes, settings.io_threads, settings.storage)
    read_at = time.perf_counter()
    seconds.read += read_at - started

    rows = {name: [None] * len(paths) for name in RESULT_COLUMNS}
    rows["read_retries"] = retries
    tensors, ok_positions = [], []
    for position, blob in enumerate(blobs):
        if isinstance(blob, ImageError):
            rows["stage"][position], rows["error"][position] = blob.stage, blob.reason
            continue
        rows["bytes"][position] = len(blob)
        rows["sha256"][position] = hashlib.sha256(blob).hexdigest()
        try:
            prepared = prepare(blob, settings.limits)
        except ImageError as error:
            rows["stage"][position], rows["error"][position] = error.stage, error.reason
            continue
        except Exception as exc:  # a decoder bug must cost one image, not the run
            rows["stage"][position], rows["error"][position] = "decode", f"{type(exc).__name__}: {exc}"
            continue
        rows["width"][position], rows["height"][position] = prepared.width, prepared.height
        tensors.append(prepared.tensor)
        ok_positions.append(position)
    seconds.preprocess += time.perf_counter() - read_at
    return rows, tensors, ok_positions


def featurize_paths(session, paths: list[str], settings: WorkerSettings,
                    seconds: StageSeconds | None = None) -> pd.DataFrame:
    """Read, decode, resize and embed `paths`; one output row per path, in order."""
    seconds = seconds if seconds is not None else StageSeconds()
    rows, tensors, ok_positions = prepare_paths(paths, settings, seconds)
    started = time.perf_counter()
    if tensors:
        features = embed(session, np.stack(tensors), settings.batch_size)
        for position, vector in zip(ok_positions, features, strict=True):
            rows["features"][position] = vector
    seconds.inference += time.perf_counter() - started

    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for name in ("width", "height", "bytes"):
        frame[name] = frame[name].astype("Int64")
    frame["read_retries"] = frame["read_retries"].astype("int32")
    return frame
