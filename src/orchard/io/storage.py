"""Where S3 is: the endpoint and region orchard's own reads and writes use (no pyarrow here, so the config and
cheap commands can name it without loading the data stack)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class StorageOptions:
    """S3 endpoint/region overrides (for S3-compatible servers); credentials always come from the AWS chain."""

    endpoint: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls) -> StorageOptions:
        """Endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, region from AWS_REGION or AWS_DEFAULT_REGION."""
        return cls(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
                   os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
