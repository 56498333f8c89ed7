"""The `orchard emr` configuration: one TOML file, read with tomllib into frozen dataclasses, validated at load.

Every mistake (an unknown key, a wrong type, a value out of range) is one `ConfigError` line naming the key,
the problem and the fix. `deploy/emr.example.toml` documents every key.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchard.config import REDACTED, REDACTION, credential_settings
from orchard.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

DEFAULT_PATH = "emr.toml"
DEFAULT_REGION = "eu-west-3"
# The newest EMR LTS release: Spark 4.1.1 (JDK 17), Python 3.11 and 3.13; released 8 September 2026 (LTS),
# standard support until 7 September 2029. emr-7.x (e.g. emr-7.13.0: Spark 3.5.6, Amazon Linux 2023 with
# python3.11 packages) stays accepted: set release_label = "emr-7.13.0" for Spark 3.5 or for `up --jupyter`.
DEFAULT_RELEASE = "emr-spark-8.1.0"
MARKETS = {"on_demand": "ON_DEMAND", "spot": "SPOT"}
RELEASE_PATTERN = re.compile(r"^emr-(?:(?P<major>\d+)|spark-(?P<spark>\d+))\.\d+\.\d+$")  # emr-7.x.y, emr-spark-8.x.y
# Spark in the releases orchard has been checked against (AWS release guide); other labels of a family are named
# by their Spark line only (every emr-7.x is Spark 3.5.x, every emr-spark-8.x Spark 4.x).
SPARK_VERSIONS = {"emr-7.13.0": "3.5.6", "emr-spark-8.0.0": "4.0.2", "emr-spark-8.1.0": "4.1.1"}
RELEASE_FIX = f"an emr-spark-8.x.y label (Spark 4; default {DEFAULT_RELEASE}) or emr-7.x.y (Spark 3.5, e.g. emr-7.13.0)"
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
INSTANCE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*\.[0-9]*[a-z]+$")
REGION_PATTERN = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
ROLE_ARN_PATTERN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_REQUIRED = object()


@dataclass(frozen=True)
class NodeGroup:
    """One EMR instance group: MASTER (always one, on demand), CORE or TASK."""

    role: str
    instance_type: str
    count: int
    market: str  # ON_DEMAND or SPOT
    ebs_gb: int


@dataclass(frozen=True)
class Estimate:
    """Assumptions behind the run-time estimate (see docs/aws.md for where the defaults come from)."""

    images: int | None = None
    images_per_second_per_vcpu: float | None = None  # None: measured for the core family (cloud/throughput.py)
    startup_minutes: float = 12.0
    fixed_minutes: float = 3.0
    spot_price_factor: float | None = None  # None: the price table's factor


@dataclass(frozen=True)
class PriceOverride:
    """A user's price for one instance type, replacing the shipped table's row."""

    ec2: float
    emr: float
    vcpu: int | None = None


@dataclass(frozen=True)
class ServerlessConfig:
    """EMR Serverless target: the job role and the packed Python environment (from `orchard package`)."""

    execution_role_arn: str
    archive: str
    release_label: str | None = None
    max_vcpu: int = 32
    max_memory_gb: int = 128
    architecture: str = "X86_64"
    timeout_minutes: int = 180


@dataclass(frozen=True)
class EmrConfig:
    """Everything `orchard emr` needs to plan, create, run and tear down one cluster."""

    bucket: str
    input: str
    output: str
    region: str = DEFAULT_REGION
    release_label: str = DEFAULT_RELEASE
    name: str = "orchard"
    prefix: str = "orchard"
    weights: str = "imagenet"
    run_args: tuple[str, ...] = ()
    idle_timeout_minutes: int = 30
    key_name: str | None = None
    subnet_id: str | None = None
    service_role: str = "EMR_DefaultRole"
    instance_profile: str = "EMR_EC2_DefaultRole"
    wheel: str | None = None
    master: NodeGroup = NodeGroup("MASTER", "m5.xlarge", 1, "ON_DEMAND", 32)
    core: NodeGroup = NodeGroup("CORE", "m5.2xlarge", 2, "ON_DEMAND", 64)
    task: NodeGroup | None = None
    estimate: Estimate = field(default_factory=Estimate)
    prices: dict[str, PriceOverride] = field(default_factory=dict)
    ebs_gb_month_price: float | None = None
    serverless: ServerlessConfig | None = None

    @property
    def groups(self) -> tuple[NodeGroup, ...]:
        """The instance groups that will be created (a task group only when it has instances)."""
        task = (self.task,) if self.task and self.task.count else ()
        return (self.master, self.core, *task)

    @property
    def base_uri(self) -> str:
        """s3://bucket/prefix: orchard's artifacts and logs live below it."""
        return f"s3://{self.bucket}/{self.prefix}"

    def run_uri(self, run_id: str) -> str:
        """Where one run's wheel, bootstrap script and driver are uploaded."""
        return f"{self.base_uri}/{run_id}"

    @property
    def log_uri(self) -> str:
        """The cluster's LogUri (EMR appends the cluster id)."""
        return f"{self.base_uri}/logs/"


def load_config(path: str | Path) -> EmrConfig:
    """Read and validate a TOML config file."""
    path = Path(path)
    if tomllib is None:
        raise ConfigError("orchard emr needs Python >= 3.11 (tomllib) to read its TOML config")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; copy deploy/emr.example.toml there and edit it, "
                          "or pass --config PATH")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return parse_config(data, str(path))


def parse_config(data: dict[str, Any], source: str = "config") -> EmrConfig:
    """Validate a parsed TOML mapping into an EmrConfig (one-line ConfigError on the first problem)."""
    top = _Table(data, source, "")
    bucket = top.take("bucket", str, check=lambda v: bool(BUCKET_PATTERN.match(v)),
                      fix="an S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens")
    region = top.take("region", str, DEFAULT_REGION, check=lambda v: bool(REGION_PATTERN.match(v)),
                      fix="an AWS region code such as eu-west-3")
    release = top.take("release_label", str, DEFAULT_RELEASE, check=_supported_release, fix=RELEASE_FIX)
    config = EmrConfig(
        bucket=bucket,
        region=region,
        release_label=release,
        input=top.take("input", str, check=_is_s3_uri, fix="an s3:// URI of the image collection"),
        output=top.take("output", str, check=_is_s3_uri, fix="an s3:// URI where results are written"),
        name=top.take("name", str, "orchard", check=lambda v: 0 < len(v) <= 200, fix="1 to 200 characters"),
        prefix=top.take("prefix", str, "orchard", check=lambda v: bool(v.strip("/")) and " " not in v,
                        fix="a key prefix inside the bucket without spaces, e.g. orchard").strip("/"),
        weights=top.take("weights", str, "imagenet", check=lambda v: v in ("imagenet", "random") or _is_s3_uri(v),
                         fix="'imagenet', 'random' or the s3:// URI of a Keras MobileNetV2 no-top .h5 file"),
        run_args=_without_credentials(
            tuple(top.take("run_args", list, [], check=lambda v: all(isinstance(a, str) for a in v),
                           fix="a list of strings, extra `orchard run` options, e.g. [\"--k\", \"50\"]")),
            source),
        idle_timeout_minutes=top.take("idle_timeout_minutes", int, 30, check=lambda v: 1 <= v <= 10080,
                                      fix="1 to 10080 minutes (EMR allows 60 s to 7 days)"),
        key_name=top.take("key_name", str, None),
        subnet_id=top.take("subnet_id", str, None, check=lambda v: v.startswith("subnet-"),
                           fix="a subnet id such as subnet-0abc..."),
        service_role=top.take("service_role", str, "EMR_DefaultRole"),
        instance_profile=top.take("instance_profile", str, "EMR_EC2_DefaultRole"),
        wheel=top.take("wheel", str, None, check=lambda v: v.endswith(".whl"),
                       fix="the path or s3:// URI of an orchard .whl (leave it out to build one)"),
        master=_group(top.table("master"), "MASTER", "m5.xlarge", 1, "on_demand", 32),
        core=_group(top.table("core"), "CORE", "m5.2xlarge", 2, "on_demand", 64),
        task=_group(top.table("task"), "TASK", "m5.2xlarge", 0, "spot", 64) if "task" in data else None,
        estimate=_estimate(top.table("estimate")),
        **_prices(top.table("prices")),
        serverless=_serverless(top.table("serverless")) if "serverless" in data else None,
    )
    top.finish()
    return config


def spark_generation(release_label: str) -> int:
    """Spark major version of a supported release label: 3 for emr-7.x.y, 4 for emr-spark-8.x.y."""
    if not _supported_release(release_label):
        raise ConfigError(f"release_label {release_label!r} is not a supported EMR release label; use {RELEASE_FIX}")
    return 4 if RELEASE_PATTERN.match(release_label).group("spark") else 3


def spark_version(release_label: str) -> str:
    """The Spark a release label runs: the exact version when known (4.1.1 for emr-spark-8.1.0), else its line."""
    return SPARK_VERSIONS.get(release_label) or ("4" if spark_generation(release_label) == 4 else "3.5")


def _supported_release(label: str) -> bool:
    match = RELEASE_PATTERN.match(label)
    if not match:
        return False
    return int(match.group("spark")) == 8 if match.group("spark") else int(match.group("major")) == 7


def _is_s3_uri(value: str) -> bool:
    return bool(re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", value))


def _group(table: _Table, role: str, instance_type: str, count: int, market: str, ebs_gb: int) -> NodeGroup:
    minimum = 1 if role in ("MASTER", "CORE") else 0
    instance = table.take("instance_type", str, instance_type, check=lambda v: bool(INSTANCE_PATTERN.match(v)),
                          fix="an EC2 instance type such as m5.2xlarge")
    number = table.take("count", int, count, check=lambda v: (v == 1) if role == "MASTER" else minimum <= v <= 500,
                        fix="exactly 1 (orchard creates single-master clusters)" if role == "MASTER"
                        else f"{minimum} to 500 instances")
    chosen = table.take("market", str, market, check=lambda v: v in MARKETS and (role != "MASTER" or v == "on_demand"),
                        fix="'on_demand' for the master; 'on_demand' or 'spot' for core and task nodes")
    volume = table.take("ebs_gb", int, ebs_gb, check=lambda v: 1 <= v <= 16384, fix="1 to 16384 GB (gp3)")
    table.finish()
    return NodeGroup(role, instance, number, MARKETS[chosen], volume)


def _estimate(table: _Table) -> Estimate:
    estimate = Estimate(
        images=table.take("images", int, None, check=lambda v: v > 0, fix="a positive number of images"),
        images_per_second_per_vcpu=table.take("images_per_second_per_vcpu", (int, float), None,
                                              check=lambda v: v > 0, fix="a positive number"),
        startup_minutes=float(table.take("startup_minutes", (int, float), 12.0, check=lambda v: v >= 0,
                                         fix="minutes from run_job_flow to a ready cluster, >= 0")),
        fixed_minutes=float(table.take("fixed_minutes", (int, float), 3.0, check=lambda v: v >= 0,
                                       fix="minutes of per-run fixed costs (submit, listing, PCA), >= 0")),
        spot_price_factor=table.take("spot_price_factor", (int, float), None, check=lambda v: 0 < v <= 1,
                                     fix="the spot price as a fraction of on-demand, in (0, 1]"),
    )
    table.finish()
    return estimate


def _prices(table: _Table) -> dict[str, Any]:
    ebs = table.take("ebs_gp3_gb_month", (int, float), None, check=lambda v: v >= 0, fix="USD per GB-month, >= 0")
    overrides = {}
    for instance_type in table.remaining():
        if not INSTANCE_PATTERN.match(instance_type):
            raise ConfigError(f"{table.source}: [prices] key {instance_type!r} is not an instance type; use "
                              '[prices."m5.2xlarge"] with ec2 = ..., emr = ... (USD per hour)')
        row = table.table(instance_type)
        overrides[instance_type] = PriceOverride(
            ec2=float(row.take("ec2", (int, float), check=lambda v: v >= 0, fix="EC2 USD per hour, >= 0")),
            emr=float(row.take("emr", (int, float), check=lambda v: v >= 0, fix="EMR uplift USD per hour, >= 0")),
            vcpu=row.take("vcpu", int, None, check=lambda v: v > 0, fix="the instance's vCPU count"),
        )
        row.finish()
    table.finish()
    return {"prices": overrides, "ebs_gb_month_price": None if ebs is None else float(ebs)}


def _serverless(table: _Table) -> ServerlessConfig:
    config = ServerlessConfig(
        execution_role_arn=table.take("execution_role_arn", str, check=lambda v: bool(ROLE_ARN_PATTERN.match(v)),
                                      fix="arn:aws:iam::ACCOUNT:role/NAME of the job role "
                                          "(deploy/iam/serverless-job-role-policy.json)"),
        archive=table.take("archive", str, check=lambda v: v.endswith((".tar.gz", ".tgz")),
                           fix="a local path or s3:// URI of the `orchard package` archive (.tar.gz)"),
        release_label=table.take("release_label", str, None, check=_supported_release, fix=RELEASE_FIX),
        max_vcpu=table.take("max_vcpu", int, 32, check=lambda v: 1 <= v <= 10000, fix="1 to 10000 vCPUs"),
        max_memory_gb=table.take("max_memory_gb", int, 128, check=lambda v: 1 <= v <= 100000, fix="GB, >= 1"),
        architecture=table.take("architecture", str, "X86_64", check=lambda v: v in ("X86_64", "ARM64"),
                                fix="X86_64 or ARM64, matching where the archive was built"),
        timeout_minutes=table.take("timeout_minutes", int, 180, check=lambda v: 5 <= v <= 1440,
                                   fix="5 to 1440 minutes"),
    )
    table.finish()
    return config


class _Table:
    """One TOML table being read: typed `take`, then `finish` refuses whatever key was not taken."""

    def __init__(self, data: Any, source: str, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {path or 'the file'} must be a table ([{path}])")
        self.data, self.source, self.path, self.taken = data, source, path, set()

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = _REQUIRED, check=None, fix: str = ""):
        self.taken.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self.source}: missing key {self._name(key)}; set it to {fix}")
            return default
        value = self.data[key]
        shown = REDACTED if _looks_secret(key, value) else repr(value)  # messages never print a credential
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            wanted = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{self.source}: {self._name(key)} = {shown} must be a {wanted}"
                              + (f"; use {fix}" if fix else ""))
        if check is not None and not check(value):
            raise ConfigError(f"{self.source}: {self._name(key)} = {shown} is not valid; use {fix}")
        return value

    def table(self, key: str) -> _Table:
        self.taken.add(key)
        return _Table(self.data.get(key, {}), self.source, self._name(key))

    def remaining(self) -> list[str]:
        return [key for key in self.data if key not in self.taken]

    def finish(self) -> None:
        for key in self.remaining():
            close = difflib.get_close_matches(key, sorted(self.taken), n=1)
            hint = f"did you mean {self._name(close[0])}?" if close else f"known keys: {', '.join(sorted(self.taken))}"
            raise ConfigError(f"{self.source}: unknown key {self._name(key)}; {hint} (see deploy/emr.example.toml)")


def _looks_secret(key: str, value: Any) -> bool:
    """A config value that must not appear in a message: by its key, or by what it holds."""
    return bool(REDACTION.search(key) or REDACTION.search(str(value)))


def _without_credentials(run_args: tuple[str, ...], source: str) -> tuple[str, ...]:
    """Refuse credentials in run_args: step arguments are readable by anyone who may describe the cluster,
    and are kept in its logs; the cluster reads S3 with its instance profile instead."""
    found = credential_settings(run_args)
    if found:
        raise ConfigError(f"{source}: run_args sets {', '.join(found)}, a credential: EMR step arguments are readable "
                          "by anyone who may describe the cluster; remove it (the cluster's instance_profile role "
                          "gives S3 access)")
    return run_args
