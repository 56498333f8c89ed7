"""S3A settings for Spark: the s3a configuration that matches orchard's own filesystem layer (io/fs.py).

Credentials always come from the standard AWS chain (environment, profile, instance role) on both sides;
orchard never takes keys as options, so none can end up in run.json or on the terminal. Endpoint and
region overrides (for S3-compatible servers) are given once and reach both Spark and pyarrow.

On EMR, `s3://` is EMRFS and the distribution's own jars are used. Elsewhere `s3://` is mapped to the
S3A filesystem, which needs `hadoop-aws` and the matching AWS SDK bundle on the classpath: a Hadoop
distribution ships them; with pip pyspark pass them with `--conf spark.jars=hadoop-aws.jar,sdk-bundle.jar`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from orchard.io.fs import S3_SCHEMES, StorageOptions

EMR_MARKER = Path("/mnt/var/lib/info/job-flow.json")
# Hadoop 3.4 (Spark 4) writes these s3a durations with units ("60s", "24h"); older hadoop-aws jars (3.3.x,
# e.g. the ones pip users add to Spark 3.5) read them as plain numbers and fail. The same defaults as plain
# numbers, in the units both versions assume, work with either jar.
S3A_PLAIN_DURATIONS = {
    "spark.hadoop.fs.s3a.connection.establish.timeout": "30000",  # ms
    "spark.hadoop.fs.s3a.connection.timeout": "200000",  # ms
    "spark.hadoop.fs.s3a.threads.keepalivetime": "60",  # s
    "spark.hadoop.fs.s3a.multipart.purge.age": "86400",  # s
}
# S3A's retries, set on purpose (the defaults differ between hadoop-aws versions; 3.3 and 3.4 read these keys
# alike: counts as integers, intervals as durations). The AWS SDK tries each request up to attempts.maximum
# times; what still fails, S3A retries with exponential backoff from its interval: throttling (503 SlowDown)
# up to retry.throttle.limit times, other passing errors (resets, timeouts, 5xx) up to retry.limit times.
S3A_RETRIES = {
    "spark.hadoop.fs.s3a.attempts.maximum": "5",
    "spark.hadoop.fs.s3a.retry.limit": "7",
    "spark.hadoop.fs.s3a.retry.interval": "500ms",
    "spark.hadoop.fs.s3a.retry.throttle.limit": "20",
    "spark.hadoop.fs.s3a.retry.throttle.interval": "1000ms",
}


def uses_s3(*uris: str) -> bool:
    """True if any of the URIs is on S3 (s3, s3a or s3n)."""
    return any(urlparse(uri).scheme.lower() in S3_SCHEMES for uri in uris)


def on_emr() -> bool:
    """True on an EMR node, where EMRFS serves s3:// and orchard must not reconfigure it."""
    return EMR_MARKER.exists()


def spark_conf(storage: StorageOptions, *uris: str) -> dict[str, str]:
    """Spark settings for reading/writing `uris` on S3 with `storage`'s endpoint and region."""
    if not uses_s3(*uris):
        return {}
    conf: dict[str, str] = {}
    if not on_emr():
        conf["spark.hadoop.fs.s3.impl"] = "org.apache.hadoop.fs.s3a.S3AFileSystem"
        conf.update(S3A_PLAIN_DURATIONS)
        conf.update(S3A_RETRIES)
    if storage.endpoint:
        parsed = urlparse(storage.endpoint if "://" in storage.endpoint else f"https://{storage.endpoint}")
        conf["spark.hadoop.fs.s3a.endpoint"] = f"{parsed.scheme}://{parsed.netloc}"
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(parsed.scheme == "https").lower()
    if storage.region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = storage.region
    return conf
