"""One typed configuration object for a run, validated once at the edge (CLI or API)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchard.errors import ConfigError
from orchard.featurize.contract import FEATURE_DIM

if TYPE_CHECKING:  # io.fs loads pyarrow: imported when a config is made, not when `orchard --help` parses
    from orchard.io.fs import StorageOptions

# Spark's own default spark.redaction.regex: a setting whose key or value matches is a credential.
REDACTION = re.compile(r"(?i)secret|password|token|access[.]key")
REDACTED = "*********(redacted)"
ALGORITHMS = ("logistic",)  # what the predictor can replay with NumPy, so what `orchard train` offers
FEATURE_SPACES = ("pca", "raw")  # the classifier's input: the run's PCA vectors or the 1280-D features
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff", "gif", "heic", "heif")
PRECISIONS = ("fp32", "int8", "bf16")  # engines: featurize/runtime.ENGINES
MASTER_URL = re.compile(r"local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|spark://\S+|yarn|k8s://\S+"
                        r"|mesos://\S+")


@dataclass(frozen=True)
class SparkOptions:
    """Where and how Spark runs; nothing here changes the results."""

    master: str | None = None  # None: spark-submit's --master, else spark-defaults.conf, else $MASTER, else local[*]
    conf: dict[str, str] = field(default_factory=dict)
    app_name: str = "orchard"
    remote: str | None = None  # a Spark Connect URL (sc://host:15002) or local[N]; None: SPARK_REMOTE or classic

    def __post_init__(self) -> None:
        if self.master is not None and not MASTER_URL.fullmatch(self.master):
            raise ConfigError(f"--master {self.master} is not a Spark master URL: use local[N], local[*], "
                              "spark://host:7077, yarn or k8s://https://host:443")
        if self.remote is not None and not (self.remote.startswith("sc://") or MASTER_URL.fullmatch(self.remote)):
            raise ConfigError(f"--remote {self.remote} is not a Spark Connect URL: use sc://host:15002 "
                              "(or local[N] for a server in this process)")


def _storage_from_env() -> StorageOptions:
    """S3 endpoint and region from the AWS environment (the default of `RunConfig.storage`)."""
    from orchard.io.fs import StorageOptions

    return StorageOptions.from_env()


# Which fingerprint a RunConfig field is part of (its `metadata`): a resumed run must match both, and versions
# of a store may share rows only when the features one matches.
RUN = {"fingerprint": "run"}  # changes which images the run covers
FEATURES = {"fingerprint": "features"}  # changes one image's features


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Fields that change results are part of the fingerprint (their metadata)."""

    input: str = field(metadata=RUN)
    output: str
    # selection
    classes: tuple[str, ...] = field(default=(), metadata=RUN)
    splits: tuple[str, ...] = field(default=(), metadata=RUN)
    limit: int | None = field(default=None, metadata=RUN)
    # model
    weights: str = field(default="imagenet", metadata=FEATURES)  # "imagenet", "random" or a Keras .h5 file
    seed: int = field(default=0, metadata=FEATURES)
    # "int8": static QDQ calibrated on the input; "bf16": AMX / AVX512-BF16 CPUs
    precision: str = field(default="fp32", metadata=FEATURES)
    # preprocessing guards
    max_pixels: int = field(default=64_000_000, metadata=FEATURES)
    max_bytes: int = field(default=50_000_000, metadata=FEATURES)
    # reduction
    k: int | None = None
    variance: float | None = None
    standardize: bool = False
    # outputs
    csv: bool = False
    overwrite: bool = False
    # write a new version of a store, featurising only new/changed images
    incremental: bool = field(default=False, metadata=RUN)
    # incremental: fit PCA again instead of reusing the previous version's model
    refit_pca: bool = field(default=False, metadata=RUN)
    # execution (does not change results)
    batch_size: int = 8
    threads: int | None = None  # ONNX Runtime intra-op threads per Python worker; None: spark.task.cpus
    shard_size: int = 4096
    images_per_task: int = 1024
    io_threads: int = 8
    progress: bool = True
    spark: SparkOptions = field(default_factory=SparkOptions)
    storage: StorageOptions = field(default_factory=_storage_from_env)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def random_weights(self) -> bool:
        """True when the run uses seeded random weights (features not meaningful)."""
        return self.weights == "random"

    def fingerprint(self) -> str:
        """A hash of the fields that change results; a resumed run must have the same one."""
        return _digest(self._fields_of(RUN), self.feature_fingerprint())

    def feature_fingerprint(self) -> str:
        """A hash of the fields that change one image's features; versions can share rows only if equal."""
        return _digest(self._fields_of(FEATURES))

    def _fields_of(self, fingerprint: dict) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata == fingerprint}

    def to_dict(self) -> dict:
        """Every field as plain JSON-friendly values (run.json's `config`), credentials redacted: Spark settings
        whose key or value looks like one, and the parameters (e.g. a token) of a Connect URL."""
        values = dataclasses.asdict(self)
        values["spark"]["conf"] = redact_settings(self.spark.conf)
        if self.spark.remote:
            values["spark"]["remote"] = redact_url(self.spark.remote)
        return values


def redact_settings(settings: dict[str, str]) -> dict[str, str]:
    """The settings with every value whose key or value matches REDACTION replaced by REDACTED (as Spark does)."""
    return {key: REDACTED if REDACTION.search(key) or REDACTION.search(value) else value
            for key, value in settings.items()}


def redact_url(url: str) -> str:
    """A Spark Connect URL without the values of its parameters (sc://host:15002/;token=... -> ;token=REDACTED)."""
    address, separator, parameters = url.partition("/;")
    if not separator:
        return url
    names = [parameter.partition("=")[0] for parameter in parameters.split(";") if parameter]
    return address + "/;" + ";".join(f"{name}={REDACTED}" for name in names)


# Credentials orchard may meet outside --conf: the AWS SDK's environment variables.
SECRET_ENVIRONMENT = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID",
                      "SPARK_CONNECT_AUTHENTICATE_TOKEN")
AWS_ACCESS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")


def _credentials_in(args: list[str] | tuple[str, ...]):
    """(name, values) of each credential in command-line arguments: a `--conf KEY=VALUE` whose key or value
    matches REDACTION, and a Spark Connect URL with parameters (`--remote sc://host/;token=...`)."""
    for flag, value in zip(args, [*args[1:], ""][:len(args)], strict=True):
        if flag.startswith("--conf="):
            flag, value = "--conf", flag[len("--conf="):]
        key, equals, setting = value.partition("=")
        if flag == "--conf" and equals and (REDACTION.search(key) or REDACTION.search(setting)):
            yield key, [setting]
        elif flag == "--remote" and "/;" in value:
            parameters = value.partition("/;")[2].split(";")
            yield "--remote parameters", [part.partition("=")[2] for part in parameters if "=" in part]


def credential_settings(args: list[str] | tuple[str, ...]) -> list[str]:
    """Names of the credentials in command-line arguments (see `_credentials_in`)."""
    return [name for name, _ in _credentials_in(args)]


def secret_values(args: list[str] | tuple[str, ...], environment: dict[str, str]) -> list[str]:
    """Every credential value in the arguments and the environment: what terminal output must never show."""
    values = [environment[name] for name in SECRET_ENVIRONMENT if environment.get(name)]
    values += [value for _, found in _credentials_in(args) for value in found]
    return [value for value in values if len(value) >= 4]  # shorter ones would blank ordinary words


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with each secret value, and anything shaped like an AWS access key id, replaced by REDACTED."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return AWS_ACCESS_KEY_ID.sub(REDACTED, text)


def _digest(*values) -> str:
    payload = json.dumps(values, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def validate(config: RunConfig) -> None:
    """Raise ConfigError with a one-line message for the first invalid field."""
    if not config.input:
        raise ConfigError("input: give the folder or URI of the image collection")
    if not config.output:
        raise ConfigError("--output: give the folder or URI to write results to")
    if config.limit is not None and config.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {config.limit}")
    if config.k is not None and config.variance is not None:
        raise ConfigError("--k and --variance are exclusive: give one of them")
    if config.k is not None and not 1 <= config.k <= FEATURE_DIM:
        raise ConfigError(f"--k must be between 1 and the feature size {FEATURE_DIM}, got {config.k}")
    if config.variance is not None and not 0.0 < config.variance <= 1.0:
        raise ConfigError(f"--variance must be in (0, 1], got {config.variance}")
    for name in ("batch_size", "shard_size", "images_per_task", "io_threads", "max_pixels", "max_bytes"):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.threads is not None and config.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {config.threads}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}")
    if config.weights.strip() == "":
        raise ConfigError("--weights: give 'imagenet', 'random' or the path of a Keras .h5 weights file")
    if config.incremental and config.overwrite:
        raise ConfigError("--incremental adds a version and never replaces one: drop --overwrite")
    if config.refit_pca and not config.incremental:
        raise ConfigError("--refit-pca only applies to --incremental runs (a full run always fits PCA)")
    if config.incremental and config.precision != "fp32":
        raise ConfigError(f"--incremental needs --precision fp32: {config.precision} features differ from fp32's "
                          "(int8 calibration depends on the whole input), so versions could not share rows")
    if _same_location(config.input, config.output):
        raise ConfigError("--output must not be the input folder: choose another folder")


def effective_k_rule(config: RunConfig) -> tuple[str, float]:
    """How many components to keep: ('k', K) or ('variance', share). Default: 95% of variance."""
    if config.k is not None:
        return "k", float(config.k)
    return "variance", config.variance if config.variance is not None else 0.95


def parse_conf_pairs(pairs: list[str]) -> dict[str, str]:
    """Turn ['k=v', ...] from --conf into a dict, rejecting malformed entries."""
    conf: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--conf expects key=value, got {pair!r}")
        conf[key.strip()] = value.strip()
    return conf


def _same_location(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
