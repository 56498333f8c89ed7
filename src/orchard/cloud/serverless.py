"""EMR Serverless as a target: one application per run, one job run with the packed environment.

No bootstrap actions exist on EMR Serverless, so orchard's Python comes from the `orchard package` archive
(built on Amazon Linux 2023 with the application's Python: emr-spark-8.x.y, the default release, has 3.11 and
3.13; emr-7.x.y labels work too), shipped with `spark.archives=...#environment`;
driver and executors use `./environment/bin/python`. The application stops itself after the idle timeout.
Logs land under `s3://BUCKET/PREFIX/logs/serverless/applications/APP/jobs/JOB/SPARK_DRIVER/`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.fs as pafs

from orchard.cloud.emr import (
    TAG,
    Aws,
    RunState,
    Waiting,
    driver_arguments,
    new_run_id,
    read_log,
    tag_object,
    upload_driver,
    wait_until,
)
from orchard.cloud.emr_config import EmrConfig, ServerlessConfig
from orchard.errors import ConfigError
from orchard.io import fs

FINAL_STATES = ("SUCCESS", "FAILED", "CANCELLED")
PYTHON = "./environment/bin/python"


def settings(config: EmrConfig) -> ServerlessConfig:
    """The config's [serverless] table, or a one-line error saying what to add."""
    if config.serverless is None:
        raise ConfigError("--target serverless needs a [serverless] table in the config with execution_role_arn "
                          "and archive (see deploy/emr.example.toml)")
    return config.serverless


def log_uri(config: EmrConfig) -> str:
    """Where EMR Serverless writes the job logs."""
    return f"{config.log_uri}serverless/"


def application_request(config: EmrConfig, run_id: str) -> dict:
    """The create_application request: Spark, capped capacity, auto start/stop, tagged."""
    serverless = settings(config)
    return {
        "name": f"{config.name}-{run_id}",
        "releaseLabel": serverless.release_label or config.release_label,
        "type": "SPARK",
        "architecture": serverless.architecture,
        "maximumCapacity": {"cpu": f"{serverless.max_vcpu} vCPU", "memory": f"{serverless.max_memory_gb} GB"},
        "autoStartConfiguration": {"enabled": True},
        "autoStopConfiguration": {"enabled": True, "idleTimeoutMinutes": config.idle_timeout_minutes},
        "tags": {TAG: run_id},
    }


def job_run_request(config: EmrConfig, run_id: str, application_id: str, archive_uri: str, driver: str) -> dict:
    """The start_job_run request: the driver script with `orchard run` arguments and the archived environment."""
    serverless = settings(config)
    parameters = [f"spark.archives={archive_uri}#environment",
                  f"spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON={PYTHON}",
                  f"spark.emr-serverless.driverEnv.PYSPARK_PYTHON={PYTHON}",
                  f"spark.executorEnv.PYSPARK_PYTHON={PYTHON}"]
    return {
        "applicationId": application_id,
        "executionRoleArn": serverless.execution_role_arn,
        "name": f"orchard run {run_id}",
        "jobDriver": {"sparkSubmit": {"entryPoint": driver, "entryPointArguments": driver_arguments(config),
                                      "sparkSubmitParameters": " ".join(f"--conf {p}" for p in parameters)}},
        "configurationOverrides": {"monitoringConfiguration": {
            "s3MonitoringConfiguration": {"logUri": log_uri(config)}}},
        "executionTimeoutMinutes": serverless.timeout_minutes,
        "tags": {TAG: run_id},
    }


def upload_archive(aws: Aws, config: EmrConfig, run_id: str) -> str:
    """The archive's S3 URI: uploaded under the run's prefix when the config names a local file."""
    archive = settings(config).archive
    if archive.startswith("s3://"):
        return archive
    local = Path(archive)
    if not local.is_file():
        raise ConfigError(f"serverless.archive = {archive!r}: file not found; build it with `orchard package -o "
                          f"{archive}` on Amazon Linux 2023 (see docs/aws.md)")
    uri = f"{config.run_uri(run_id)}/{local.name}"
    source_fs, source_path = fs.filesystem_and_path(str(local.absolute()))
    target_fs, target_path = fs.filesystem_and_path(uri, aws.storage)
    pafs.copy_files(source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs)
    tag_object(aws, uri, run_id)
    return uri


def start(aws: Aws, config: EmrConfig, report: Callable[[str], None]) -> tuple[RunState, dict]:
    """Create the application and start the job run; saves the state. Returns (state, job run request)."""
    client = aws.client("emr-serverless")
    run_id = new_run_id()
    archive_uri = upload_archive(aws, config, run_id)
    driver = upload_driver(aws, config.run_uri(run_id), run_id)
    application_id = client.create_application(**application_request(config, run_id))["applicationId"]
    request = job_run_request(config, run_id, application_id, archive_uri, driver)
    job_run_id = client.start_job_run(**request)["jobRunId"]
    state = RunState(run_id=run_id, region=config.region, bucket=config.bucket, prefix=config.prefix,
                     output=config.output, created=datetime.now(UTC).isoformat(timespec="seconds"),
                     target="serverless", application_id=application_id, job_runs=[job_run_id])
    state.save()
    report(f"created EMR Serverless application {application_id} (run {run_id}), job run {job_run_id}")
    return state, request


def wait_for_job(aws: Aws, application_id: str, job_run_id: str, waiting: Waiting,
                 report: Callable[[str], None]) -> dict | None:
    """Wait for the job run to end; returns it, or None when the timeout came first (it keeps running)."""
    client = aws.client("emr-serverless")
    seen: dict = {}

    def probe() -> tuple[bool, str]:
        seen.update(client.get_job_run(applicationId=application_id, jobRunId=job_run_id)["jobRun"])
        details = f" ({seen['stateDetails']})" if seen.get("stateDetails") else ""
        return seen["state"] in FINAL_STATES, f"job run {job_run_id} {seen['state']}{details}"

    return seen if wait_until(probe, waiting, report) else None


def job_logs(aws: Aws, state: RunState, job_run_id: str, lines: int = 40) -> list[tuple[str, str]]:
    """(uri, tail) of the job's driver stderr and stdout, when EMR Serverless has written them."""
    base = f"{state.log_uri}serverless/applications/{state.application_id}/jobs/{job_run_id}/SPARK_DRIVER"
    names = fs.list_files(base, aws.storage)
    return [(fs.join(base, name), read_log(aws, fs.join(base, name), lines)) for name in names
            if name.startswith(("stderr", "stdout"))]


def stop(aws: Aws, state: RunState, waiting: Waiting, report: Callable[[str], None]) -> str:
    """Stop the run's application, wait until it has stopped (bounded), delete it; returns what was done."""
    client = aws.client("emr-serverless")
    application_id = state.application_id

    def stopped() -> tuple[bool, str]:
        current = client.get_application(applicationId=application_id)["application"]["state"]
        return current in ("CREATED", "STOPPED", "TERMINATED"), f"application {application_id} {current}"

    if client.get_application(applicationId=application_id)["application"]["state"] in ("STARTING", "STARTED"):
        client.stop_application(applicationId=application_id)
    if not wait_until(stopped, waiting, report):
        return f"application {application_id} is still stopping; run `orchard emr down` again to delete it"
    client.delete_application(applicationId=application_id)
    return f"stopped and deleted EMR Serverless application {application_id}"
