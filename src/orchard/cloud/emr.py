"""AWS EMR control plane over boto3: build the cluster request, create it, run orchard on it, watch, clean up.

One run = one run id (`orchard:run` tag on every cluster, object and application it creates). Its artifacts
(the orchard wheel, the bootstrap script that installs it in a Python 3.11 venv on every node, the step's
driver script) go to `s3://BUCKET/PREFIX/RUN_ID/`, the cluster's logs to `s3://BUCKET/PREFIX/logs/`. The
step is `spark-submit --deploy-mode cluster` through `command-runner.jar`. Both release families work the same
way, emr-spark-8.x.y (Spark 4, the default) and emr-7.x.y (Spark 3.5): pyspark always comes from the cluster's
Spark, never from pip. Auto-termination (idle timeout) is always set and checked after creation. What
`orchard emr` created is remembered in `.orchard/emr-state.json` (ids, region, never credentials).
Credentials come only from the AWS chain.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchard.cloud.emr_config import EmrConfig, NodeGroup, spark_generation, spark_version
from orchard.cloud.emr_driver import SCRIPT as DRIVER_SCRIPT
from orchard.errors import ConfigError, OrchardError
from orchard.io.storage import StorageOptions

TAG = "orchard:run"
ACTIVE_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
ENDED_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
STEP_FINAL_STATES = ("COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED")
VENV = "/opt/orchard"
STATE_FILE = Path(".orchard") / "emr-state.json"
JUPYTER_PORT = 9443
JUPYTER_USER = "jovyan"  # JupyterHub's default user on EMR


class AwsError(OrchardError):
    """An AWS call failed in a way the user can act on (permissions, missing resources, a failed step)."""


def check_region(region: str, allow_non_eu: bool = False) -> None:
    """Refuse regions outside the EU unless explicitly allowed (images may hold personal data: GDPR)."""
    if region.startswith("eu-") or allow_non_eu:
        return
    raise ConfigError(f"region {region} is outside the EU: orchard keeps images, features and logs in eu-* regions "
                      "because images can hold personal data (GDPR transfers); pick an eu-* region, or pass "
                      "--allow-non-eu-region if your data may lawfully be processed there")


def installed_pyspark() -> str | None:
    """The version of the pyspark installed here (None when there is none)."""
    from importlib import metadata

    try:
        return metadata.version("pyspark")
    except metadata.PackageNotFoundError:
        return None


def release_warning(release_label: str, local_pyspark: str | None = None) -> str | None:
    """One warning line when the cluster's Spark major version differs from the local pyspark's, else None.

    `local_pyspark` defaults to the installed pyspark's version. The step's driver runs on the cluster with the
    cluster's Spark either way; what must match is a notebook or Spark Connect client here talking to it.
    """
    local = local_pyspark or installed_pyspark()
    if local is None:
        return None
    cluster = spark_version(release_label)
    local_major = re.match(r"\d+", local)
    if local_major is None or int(local_major.group()) == spark_generation(release_label):
        return None
    line = ".".join(cluster.split(".")[:2])
    return (f"warning: {release_label} runs Spark {cluster} but the local pyspark is {local}: `orchard emr run` is "
            f"unaffected (the driver runs on the cluster), but a notebook or Spark Connect client here talking to "
            f"it needs pyspark {line}.x (pip install 'pyspark=={line}.*')")


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC time plus 6 random hex digits."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class Aws:
    """boto3 clients for one region; credentials only from the standard AWS chain, never options or output."""

    def __init__(self, region: str, session: Any = None, clients: dict[str, Any] | None = None) -> None:
        import boto3

        self.region = region
        self._session = session or boto3.session.Session(region_name=region)
        self._clients: dict[str, Any] = dict(clients or {})

    def client(self, service: str) -> Any:
        """A (cached) boto3 client for `service` in this region."""
        if service not in self._clients:
            self._clients[service] = self._session.client(service, region_name=self.region)
        return self._clients[service]

    @property
    def storage(self) -> StorageOptions:
        """orchard.io.fs settings for this region (the endpoint still follows $AWS_ENDPOINT_URL)."""
        return StorageOptions(endpoint=StorageOptions.from_env().endpoint, region=self.region)


@dataclass(frozen=True)
class Waiting:
    """How long and how often to poll; tests pass a fake clock and sleep."""

    timeout: float = 6 * 3600
    poll: float = 30
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def wait_until(probe: Callable[[], tuple[bool, str]], waiting: Waiting, report: Callable[[str], None]) -> bool:
    """Call `probe` every `poll` seconds, reporting its line, until it says done (True) or time runs out (False)."""
    start = waiting.clock()
    while True:
        done, line = probe()
        elapsed = waiting.clock() - start
        report(f"[{_duration(elapsed)}] {line}")
        if done:
            return True
        if elapsed + waiting.poll > waiting.timeout:
            return False
        waiting.sleep(waiting.poll)


@dataclass(frozen=True)
class Artifacts:
    """What one run uploads under s3://BUCKET/PREFIX/RUN_ID/."""

    run_uri: str
    wheel_uri: str

    @property
    def bootstrap_uri(self) -> str:
        """The bootstrap action script."""
        return f"{self.run_uri}/bootstrap.sh"

    @property
    def driver_uri(self) -> str:
        """The step's driver script."""
        return driver_uri(self.run_uri)


def driver_uri(run_uri: str) -> str:
    """Where a run's driver script lives."""
    return f"{run_uri}/driver.py"


def upload_driver(aws: Aws, run_uri: str, run_id: str) -> str:
    """Upload the driver script under run_uri (tagged); returns its URI."""
    from orchard.io import fs

    uri = driver_uri(run_uri)
    fs.write_bytes(uri, DRIVER_SCRIPT.encode(), aws.storage)
    tag_object(aws, uri, run_id)
    return uri


def bootstrap_script(wheel_uri: str, requirements: list[str]) -> str:
    """The bootstrap action: Python 3.11 (Amazon Linux 2023 packages), a venv in /opt/orchard, orchard in it.

    The same script serves both release families: emr-7.x nodes get python3.11 from dnf, emr-spark-8.x nodes
    ship Python 3.11 (and 3.13) already, so dnf finds it installed. `requirements` must leave pyspark out
    (package.runtime_requirements does) and the wheel goes in with --no-deps, so pip never installs a pyspark
    from PyPI over the cluster's own: Spark puts its pyspark (3.5.x or 4.x) on the Python path of the driver
    and the executors.
    """
    wheel = posixpath.basename(wheel_uri)
    pip = f"sudo {VENV}/bin/python -m pip install -q"
    return "\n".join([
        "#!/bin/bash",
        "# orchard bootstrap action (generated by `orchard emr`): runs on every node before Spark starts.",
        "set -euxo pipefail",
        "sudo dnf install -y -q python3.11 python3.11-pip",
        f"sudo python3.11 -m venv {VENV}",
        f"{pip} --upgrade pip",
        f"{pip} {shlex.join(requirements)}",
        f"aws s3 cp {shlex.quote(wheel_uri)} /tmp/orchard-wheel/{shlex.quote(wheel)}",
        f"{pip} --no-deps /tmp/orchard-wheel/{shlex.quote(wheel)}",
        f"{VENV}/bin/python -c 'import orchard, onnxruntime; print(\"orchard\", orchard.__version__)'",
        "",
    ])


def upload_artifacts(aws: Aws, config: EmrConfig, run_id: str) -> Artifacts:
    """Build (or take the configured) orchard wheel and upload it with the bootstrap and driver scripts."""
    from orchard.cloud.package import build_wheel, runtime_requirements
    from orchard.io import fs

    run_uri = config.run_uri(run_id)
    storage = aws.storage
    with tempfile.TemporaryDirectory(prefix="orchard-emr-") as work:
        if config.wheel and config.wheel.startswith("s3://"):
            wheel_uri = config.wheel
        else:
            wheel = Path(config.wheel) if config.wheel else build_wheel(Path(work))
            if not wheel.is_file():
                raise ConfigError(f"wheel = {config.wheel!r}: file not found; build one with `python -m pip wheel "
                                  "--no-deps -w dist .` or leave `wheel` out to build it automatically")
            wheel_uri = f"{run_uri}/{wheel.name}"
            fs.write_bytes(wheel_uri, fs.read_bytes(str(wheel)), storage)
    artifacts = Artifacts(run_uri, wheel_uri)
    fs.write_bytes(artifacts.bootstrap_uri, bootstrap_script(wheel_uri, runtime_requirements()).encode(), storage)
    upload_driver(aws, run_uri, run_id)
    for uri in [artifacts.bootstrap_uri] + ([] if wheel_uri == config.wheel else [wheel_uri]):
        tag_object(aws, uri, run_id)
    return artifacts


def tag_object(aws: Aws, uri: str, run_id: str) -> None:
    """Tag one S3 object orchard:run=RUN_ID."""
    bucket, key = split_s3(uri)
    aws.client("s3").put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": TAG, "Value": run_id}]})


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"{uri} is not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def instance_group(group: NodeGroup) -> dict:
    """One InstanceGroups entry of run_job_flow."""
    return {
        "Name": group.role.lower(),
        "InstanceRole": group.role,
        "Market": group.market,
        "InstanceType": group.instance_type,
        "InstanceCount": group.count,
        "EbsConfiguration": {
            "EbsBlockDeviceConfigs": [{"VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": group.ebs_gb},
                                       "VolumesPerInstance": 1}],
            "EbsOptimized": True,
        },
    }


def applications(release_label: str, jupyter: bool = False) -> list[str]:
    """The EMR applications to install. emr-7.x lists Hadoop (YARN, HDFS) and offers JupyterHub; emr-spark-8.x
    releases offer Spark (on YARN), Livy and JupyterEnterpriseGateway, but neither Hadoop nor JupyterHub."""
    if spark_generation(release_label) == 3:
        return ["Spark", "Hadoop", *(["JupyterHub", "Livy"] if jupyter else [])]
    if jupyter:
        raise ConfigError(f"--jupyter needs JupyterHub, which {release_label} (like every emr-spark-8 release) does "
                          'not include; set release_label = "emr-7.13.0" (Spark 3.5.6) in the config for up --jupyter')
    return ["Spark"]


def configurations(config: EmrConfig, jupyter: bool = False) -> list[dict]:
    """Configuration classifications: Spark's Python is the bootstrap venv; JupyterHub notebooks persist in S3."""
    result = [{"Classification": "spark-env", "Properties": {}, "Configurations": [
        {"Classification": "export", "Properties": {"PYSPARK_PYTHON": f"{VENV}/bin/python"}}]}]
    if jupyter:
        result.append({"Classification": "jupyter-s3-conf",
                       "Properties": {"s3.persistence.enabled": "true", "s3.persistence.bucket": config.bucket}})
    return result


def driver_arguments(config: EmrConfig) -> list[str]:
    """Arguments of the driver script: [--weights-from S3_URI] run INPUT --output OUT ... (see emr_driver)."""
    weights = ["--weights-from", config.weights] if config.weights.startswith("s3://") else []
    run = ["run", config.input, "--output", config.output, "--s3-region", config.region]
    if not weights:
        run += ["--weights", config.weights]
    return [*weights, *run, *config.run_args]


def spark_step(config: EmrConfig, run_id: str, driver_uri: str, *, terminate_after: bool = False) -> dict:
    """The command-runner.jar step: spark-submit in cluster mode of the driver script, then `orchard run`."""
    return {
        "Name": f"orchard run {run_id}",
        "ActionOnFailure": "TERMINATE_CLUSTER" if terminate_after else "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": [
            "spark-submit", "--master", "yarn", "--deploy-mode", "cluster", "--name", f"orchard-{run_id}",
            driver_uri, *driver_arguments(config)]},
    }


def job_flow_request(config: EmrConfig, run_id: str, artifacts: Artifacts, *, steps: list[dict] | None = None,
                     keep_alive: bool = True, jupyter: bool = False) -> dict:
    """The complete run_job_flow request for the config (pure: nothing is called)."""
    names = applications(config.release_label, jupyter)
    instances: dict[str, Any] = {
        "InstanceGroups": [instance_group(group) for group in config.groups],
        "KeepJobFlowAliveWhenNoSteps": keep_alive,
        "TerminationProtected": False,
    }
    if config.key_name:
        instances["Ec2KeyName"] = config.key_name
    if config.subnet_id:
        instances["Ec2SubnetId"] = config.subnet_id
    return {
        "Name": f"{config.name}-{run_id}",
        "ReleaseLabel": config.release_label,
        "LogUri": config.log_uri,
        "Applications": [{"Name": name} for name in names],
        "Configurations": configurations(config, jupyter),
        "Instances": instances,
        "BootstrapActions": [{"Name": "install orchard",
                              "ScriptBootstrapAction": {"Path": artifacts.bootstrap_uri, "Args": []}}],
        "Steps": list(steps or []),
        "AutoTerminationPolicy": {"IdleTimeout": config.idle_timeout_minutes * 60},
        "JobFlowRole": config.instance_profile,
        "ServiceRole": config.service_role,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": TAG, "Value": run_id}, {"Key": "orchard:name", "Value": config.name}],
    }


def ensure_auto_termination(emr: Any, cluster_id: str, idle_seconds: int) -> bool:
    """Check the cluster's idle timeout is `idle_seconds`; set it if not. True when it had to be set."""
    policy = emr.get_auto_termination_policy(ClusterId=cluster_id).get("AutoTerminationPolicy") or {}
    if policy.get("IdleTimeout") == idle_seconds:
        return False
    emr.put_auto_termination_policy(ClusterId=cluster_id, AutoTerminationPolicy={"IdleTimeout": idle_seconds})
    return True


@dataclass
class RunState:
    """What `orchard emr` created for the current folder's run (ids and places, never credentials)."""

    run_id: str
    region: str
    bucket: str
    prefix: str
    output: str
    created: str
    target: str = "cluster"  # or "serverless"
    cluster_id: str | None = None
    steps: list[str] = field(default_factory=list)
    application_id: str | None = None
    job_runs: list[str] = field(default_factory=list)
    hourly_estimate: float | None = None
    currency: str = "USD"
    terminated: bool = False

    @property
    def log_uri(self) -> str:
        """The cluster's LogUri (EMR adds the cluster id below it)."""
        return f"s3://{self.bucket}/{self.prefix}/logs/"

    def save(self, path: Path = STATE_FILE) -> None:
        """Write the state file (atomically)."""
        from orchard.io import fs

        fs.write_json(str(path.absolute()), asdict(self))

    @classmethod
    def load(cls, path: Path = STATE_FILE) -> RunState:
        """Read the state file, or a one-line error saying how to create one."""
        from orchard.io import fs

        if not path.is_file():
            raise ConfigError(f"no {path} here: run `orchard emr up` or `orchard emr run` first, from this folder "
                              "(the state is kept per folder)")
        data = fs.read_json(str(path.absolute()))
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


def launch(aws: Aws, config: EmrConfig, run_id: str, *, steps: list[dict], keep_alive: bool, jupyter: bool,
           artifacts: Artifacts, hourly: float | None = None) -> tuple[RunState, dict]:
    """Create the cluster (auto-termination checked) and save the state; returns (state, request sent)."""
    emr = aws.client("emr")
    request = job_flow_request(config, run_id, artifacts, steps=steps, keep_alive=keep_alive, jupyter=jupyter)
    response = emr.run_job_flow(**request)
    cluster_id = response["JobFlowId"]
    ensure_auto_termination(emr, cluster_id, config.idle_timeout_minutes * 60)
    step_ids = [step["Id"] for step in emr.list_steps(ClusterId=cluster_id)["Steps"]][::-1] if steps else []
    state = RunState(run_id=run_id, region=config.region, bucket=config.bucket, prefix=config.prefix,
                     output=config.output, created=datetime.now(UTC).isoformat(timespec="seconds"),
                     cluster_id=cluster_id, steps=step_ids, hourly_estimate=hourly)
    state.save()
    return state, request


def wait_for_cluster(aws: Aws, cluster_id: str, waiting: Waiting, report: Callable[[str], None]) -> dict:
    """Wait until the cluster can take steps (WAITING or RUNNING); raises AwsError if it ended or timed out."""
    emr = aws.client("emr")
    seen: dict = {}

    def probe() -> tuple[bool, str]:
        seen.update(emr.describe_cluster(ClusterId=cluster_id)["Cluster"])
        status = seen["Status"]
        if status["State"] in ENDED_STATES:
            reason = status.get("StateChangeReason", {}).get("Message") or "no reason given"
            raise AwsError(f"cluster {cluster_id} is {status['State']}: {reason}")
        return status["State"] in ("WAITING", "RUNNING"), f"cluster {cluster_id} {status['State']}"

    if not wait_until(probe, waiting, report):
        raise AwsError(f"cluster {cluster_id} not ready after {_duration(waiting.timeout)}; it keeps starting: "
                       "`orchard emr status` to look again, `orchard emr down` to stop it")
    return seen


def wait_for_step(aws: Aws, cluster_id: str, step_id: str, output: str, waiting: Waiting,
                  report: Callable[[str], None]) -> dict | None:
    """Wait for a step to end, reporting its state and the shards committed under the output.

    Returns the step (any final state), or None when the timeout came first (the step keeps running).
    """
    from orchard.io import fs
    from orchard.output import Layout

    emr = aws.client("emr")
    stats = Layout(output).stats
    seen: dict = {}

    def probe() -> tuple[bool, str]:
        seen.update(emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"])
        state = seen["Status"]["State"]
        shards = 0 if state == "PENDING" else len(fs.list_files(stats, aws.storage))
        return state in STEP_FINAL_STATES, f"step {step_id} {state}, {shards} shard(s) committed"

    return seen if wait_until(probe, waiting, report) else None


def submit(aws: Aws, config: EmrConfig, *, state: RunState | None, terminate_after: bool,
           hourly: float | None, report: Callable[[str], None]) -> tuple[RunState, bool]:
    """Add the orchard step to the current live cluster, or create a cluster with it.

    Returns (state, created) where created says a new cluster was made.
    """
    emr = aws.client("emr")
    if state and state.cluster_id and state.region == config.region and not state.terminated:
        current = emr.describe_cluster(ClusterId=state.cluster_id)["Cluster"]["Status"]["State"]
        if current in ACTIVE_STATES:
            step = spark_step(config, state.run_id, driver_uri(f"s3://{state.bucket}/{state.prefix}/{state.run_id}"))
            step_id = emr.add_job_flow_steps(JobFlowId=state.cluster_id, Steps=[step])["StepIds"][0]
            state.steps.append(step_id)
            state.output = config.output
            state.save()
            report(f"added step {step_id} to cluster {state.cluster_id} ({current})")
            return state, False
    run_id = new_run_id()
    artifacts = upload_artifacts(aws, config, run_id)
    step = spark_step(config, run_id, artifacts.driver_uri, terminate_after=terminate_after)
    new_state, _ = launch(aws, config, run_id, steps=[step], keep_alive=not terminate_after, jupyter=False,
                          artifacts=artifacts, hourly=hourly)
    report(f"created cluster {new_state.cluster_id} (run {run_id}) with step {new_state.steps[-1]}")
    return new_state, True


def log_files(aws: Aws, state: RunState) -> list[str]:
    """Every log file EMR has copied to S3 for the state's cluster so far."""
    import pyarrow.fs as pafs

    from orchard.io import fs

    filesystem, path = fs.filesystem_and_path(f"{state.log_uri}{state.cluster_id}", aws.storage)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(f"s3://{info.path}" for info in infos if info.type == pafs.FileType.File)


def read_log(aws: Aws, uri: str, lines: int) -> str:
    """The last `lines` lines of a log file (fs.read_bytes un-gzips `.gz` files, as EMR writes them)."""
    from orchard.io import fs

    text = fs.read_bytes(uri, aws.storage).decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def step_logs(aws: Aws, state: RunState, step_id: str, lines: int = 40,
              failure_log: str | None = None) -> list[tuple[str, str]]:
    """(uri, tail) of the step's stderr (spark-submit) and of the driver containers of the YARN apps it started."""
    files = log_files(aws, state)
    step_prefix = f"{state.log_uri}{state.cluster_id}/steps/{step_id}/"
    wanted = [uri for uri in files if uri.startswith(step_prefix) and posixpath.basename(uri).startswith("stderr")]
    if failure_log and failure_log not in wanted and failure_log in files:
        wanted.insert(0, failure_log)
    result = [(uri, read_log(aws, uri, lines)) for uri in wanted]
    applications = set()
    for uri in wanted:
        applications.update(re.findall(r"application_\d+_\d+", read_log(aws, uri, 10_000)))
    for application in sorted(applications):
        pattern = re.compile(rf"/containers/{application}/container_[\w]+_000001/stderr(\.gz)?$")
        result += [(uri, read_log(aws, uri, lines)) for uri in files if pattern.search(uri)]
    return result


def download(aws: Aws, source: str, destination: str) -> int:
    """Copy a finished output from S3 to a local folder; returns the number of files copied."""
    import pyarrow.fs as pafs

    from orchard.io import fs

    source_fs, source_path = fs.filesystem_and_path(source, aws.storage)
    if source_fs.get_file_info(source_path).type != pafs.FileType.Directory:
        raise AwsError(f"{source} does not exist (yet): `orchard emr status` shows whether the run has finished")
    if fs.is_nonempty_dir(destination):
        raise ConfigError(f"{destination} already exists and is not empty; pass another folder or remove it")
    target_fs, target_path = fs.filesystem_and_path(destination)
    pafs.copy_files(source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs)
    infos = target_fs.get_file_info(pafs.FileSelector(target_path, recursive=True))
    return sum(info.type == pafs.FileType.File for info in infos)


def active_clusters(emr: Any) -> list[dict]:
    """Every active cluster in the region, described (with tags and timeline)."""
    clusters = []
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=list(ACTIVE_STATES)):
        clusters += [emr.describe_cluster(ClusterId=item["Id"])["Cluster"] for item in page["Clusters"]]
    return clusters


def run_tag(cluster: dict) -> str | None:
    """The cluster's orchard:run tag, or None when orchard did not create it."""
    return next((tag["Value"] for tag in cluster.get("Tags", []) if tag["Key"] == TAG), None)


def terminate_orchard_clusters(emr: Any) -> list[str]:
    """Terminate every active orchard-tagged cluster in the region (others are left alone); returns their ids."""
    ids = [cluster["Id"] for cluster in active_clusters(emr) if run_tag(cluster)]
    if ids:
        emr.terminate_job_flows(JobFlowIds=ids)
    return ids


def cluster_report(aws: Aws, state: RunState, now: datetime | None = None) -> list[str]:
    """Status lines: cluster state, age, running cost estimate, idle timeout, master, steps."""
    emr = aws.client("emr")
    cluster = emr.describe_cluster(ClusterId=state.cluster_id)["Cluster"]
    status = cluster["Status"]
    created = status["Timeline"]["CreationDateTime"]
    ended = status["Timeline"].get("EndDateTime")
    hours = ((ended or now or datetime.now(UTC)) - created).total_seconds() / 3600
    line = f"run {state.run_id}: cluster {state.cluster_id} in {state.region} {status['State']}, up {hours:.2f} h"
    if state.hourly_estimate is not None:
        line += f", ~{hours * state.hourly_estimate:.2f} {state.currency} so far (estimate)"
    lines = [line]
    if status["State"] in ACTIVE_STATES:
        policy = emr.get_auto_termination_policy(ClusterId=state.cluster_id).get("AutoTerminationPolicy")
        idle = f"idle timeout {policy['IdleTimeout'] // 60} min" if policy else "NO idle timeout: `orchard emr down`"
        lines.append(f"  master {cluster.get('MasterPublicDnsName') or '(not yet)'}; {idle}")
    for step in emr.list_steps(ClusterId=state.cluster_id)["Steps"][::-1]:
        reason = step["Status"].get("FailureDetails", {}).get("Reason")
        suffix = f" ({reason})" if reason else ""
        lines.append(f"  step {step['Id']} {step['Name']}: {step['Status']['State']}{suffix}")
    return lines


def jupyter_instructions(master_dns: str, key_name: str | None) -> list[str]:
    """The SSH tunnel and the URL of JupyterHub on the master node."""
    key = f"~/.ssh/{key_name}.pem" if key_name else "YOUR_KEY.pem"
    return [f"JupyterHub: ssh -i {key} -N -L {JUPYTER_PORT}:localhost:{JUPYTER_PORT} hadoop@{master_dns}",
            f"then open https://localhost:{JUPYTER_PORT} (user {JUPYTER_USER}; see docs/aws.md for the password)"]


def upload_notebook(aws: Aws, config: EmrConfig, notebook: Path, run_id: str) -> str:
    """Put a notebook where JupyterHub's S3 persistence shows it to the default user; returns its URI."""
    from orchard.io import fs

    uri = f"s3://{config.bucket}/jupyter/{JUPYTER_USER}/{notebook.name}"
    fs.write_bytes(uri, fs.read_bytes(str(notebook.absolute())), aws.storage)
    tag_object(aws, uri, run_id)
    return uri


def request_summary(request: dict) -> list[str]:
    """Human-readable lines for a run_job_flow request (what `plan` shows before the cost table)."""
    instances = request["Instances"]
    lines = [f"cluster {request['Name']}: {request['ReleaseLabel']}, applications "
             f"{', '.join(app['Name'] for app in request['Applications'])}",
             f"  logs {request['LogUri']}; idle timeout {request['AutoTerminationPolicy']['IdleTimeout'] // 60} min; "
             f"keep alive without steps: {instances['KeepJobFlowAliveWhenNoSteps']}",
             f"  roles: service {request['ServiceRole']}, instance profile {request['JobFlowRole']}; tags "
             + ", ".join(f"{tag['Key']}={tag['Value']}" for tag in request["Tags"]),
             f"  bootstrap {request['BootstrapActions'][0]['ScriptBootstrapAction']['Path']}"]
    lines += [f"  step: {shlex.join(step['HadoopJarStep']['Args'])}" for step in request["Steps"]]
    return lines


def describe_json(value: Any) -> str:
    """JSON for printing AWS responses and requests (datetimes as ISO strings)."""
    return json.dumps(value, indent=2, default=str)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
