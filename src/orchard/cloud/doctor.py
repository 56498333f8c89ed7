"""`orchard emr doctor`: is this account ready for orchard, and is anything left running? `orchard emr bucket`.

The doctor checks credentials (STS), the EU region, the bucket (exists, same region, Block Public Access,
default encryption), the input prefix, the IAM roles EMR needs, and every active cluster's age (the
forgotten-cluster check). The bucket command creates a bucket that passes those checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError, NoCredentialsError

from orchard.cloud.emr import TAG, Aws, AwsError, active_clusters, check_region, run_tag, split_s3
from orchard.cloud.emr_config import EmrConfig
from orchard.errors import ConfigError

ENCRYPTION = ("AES256", "aws:kms", "aws:kms:dsse")
PUBLIC_ACCESS_FLAGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


@dataclass(frozen=True)
class CheckResult:
    """One check's result: level ok, warn or fail, what was found, and the fix when it is not ok."""

    check: str
    level: str
    detail: str

    @property
    def ok(self) -> bool:
        """True unless the check failed (a warning is ok)."""
        return self.level != "fail"

    def line(self) -> str:
        """The printed line: [LEVEL] check: detail."""
        return f"[{self.level.upper():<4}] {self.check}: {self.detail}"


def doctor(aws: Aws, config: EmrConfig, *, allow_non_eu: bool = False, max_age_hours: float = 2.0,
           now: datetime | None = None) -> list[CheckResult]:
    """Every check, in order; stops after the credentials check when there are no usable credentials."""
    credentials = check_credentials(aws)
    if not credentials.ok:
        return [credentials]
    findings = [credentials, _region(config.region, allow_non_eu)]
    findings += check_bucket(aws, config.bucket, config.region)
    findings.append(check_input(aws, config.input))
    findings += check_roles(aws, config)
    findings += check_clusters(aws, max_age_hours, now or datetime.now(UTC))
    return findings


def check_credentials(aws: Aws) -> CheckResult:
    """Whose credentials the AWS chain finds (account and ARN are printed; keys never are)."""
    try:
        identity = aws.client("sts").get_caller_identity()
    except NoCredentialsError:
        return CheckResult("credentials", "fail", "no AWS credentials found; configure a profile (`aws configure "
                                              "--profile NAME`, then AWS_PROFILE=NAME): orchard takes no keys")
    except ClientError as error:
        return CheckResult("credentials", "fail", f"STS rejected the credentials ({_code(error)}); renew them")
    return CheckResult("credentials", "ok", f"account {identity['Account']} as {identity['Arn']}")


def _region(region: str, allow_non_eu: bool) -> CheckResult:
    try:
        check_region(region, allow_non_eu)
    except ConfigError as error:
        return CheckResult("region", "fail", str(error))
    return CheckResult("region", "ok" if region.startswith("eu-") else "warn", region)


def bucket_region(s3: Any, bucket: str) -> str:
    """The bucket's region (get_bucket_location's None means us-east-1, 'EU' means eu-west-1)."""
    location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)


def check_bucket(aws: Aws, bucket: str, region: str) -> list[CheckResult]:
    """Bucket exists, is in the cluster's region, blocks public access, encrypts by default."""
    s3 = aws.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        if _code(error) in ("404", "NoSuchBucket"):
            return [CheckResult("bucket", "fail", f"s3://{bucket} does not exist; create it with "
                                              f"`orchard emr bucket {bucket} --region {region}`")]
        return [CheckResult("bucket", "fail", f"s3://{bucket} is not accessible ({_code(error)}); it may belong to "
                                          "another account, or your policy lacks s3:ListBucket")]
    findings = [CheckResult("bucket", "ok", f"s3://{bucket} exists")]
    where = bucket_region(s3, bucket)
    findings.append(CheckResult("bucket region", "ok", where) if where == region else CheckResult(
        "bucket region", "fail", f"s3://{bucket} is in {where}, the cluster in {region}: use a bucket in {region} "
                                 "(cross-region reads are slower, cost transfer fees and move the data)"))
    try:
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        off = [flag for flag in PUBLIC_ACCESS_FLAGS if not block.get(flag)]
    except ClientError as error:
        if _code(error) != "NoSuchPublicAccessBlockConfiguration":
            raise
        off = list(PUBLIC_ACCESS_FLAGS)
    findings.append(CheckResult("public access", "ok", "Block Public Access on (all four settings)") if not off else
                    CheckResult("public access", "fail", f"Block Public Access off: {', '.join(off)}; turn it on with "
                                                     f"`orchard emr bucket {bucket} --region {where}`"))
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        algorithms = [rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for rule in rules]
    except ClientError as error:
        if _code(error) != "ServerSideEncryptionConfigurationNotFoundError":
            raise
        algorithms = []
    good = [algorithm for algorithm in algorithms if algorithm in ENCRYPTION]
    findings.append(CheckResult("encryption", "ok", f"default encryption {good[0]}") if good else
                    CheckResult("encryption", "fail", "no default encryption (SSE-S3 or KMS); turn it on with "
                                                  f"`orchard emr bucket {bucket} --region {where}`"))
    return findings


def check_input(aws: Aws, input_uri: str) -> CheckResult:
    """The input prefix holds at least one object."""
    bucket, key = split_s3(input_uri)
    prefix = key.rstrip("/") + "/" if key else ""
    try:
        listed = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as error:
        return CheckResult("input", "fail", f"cannot list {input_uri} ({_code(error)})")
    if listed.get("KeyCount", 0):
        return CheckResult("input", "ok", f"{input_uri} is not empty")
    return CheckResult("input", "fail", f"nothing under {input_uri}; upload the images first, e.g. `aws s3 sync "
                                    f"fruits-360/Training {input_uri}`")


def check_roles(aws: Aws, config: EmrConfig) -> list[CheckResult]:
    """The EMR service role, the EC2 instance profile (and the serverless job role when configured) exist."""
    iam = aws.client("iam")
    fix = "create them with `aws emr create-default-roles` or from deploy/ (docs/aws.md, step 2)"
    wanted = [("service role", config.service_role, iam.get_role, "RoleName"),
              ("instance profile", config.instance_profile, iam.get_instance_profile, "InstanceProfileName")]
    if config.serverless:
        wanted.append(("serverless job role", config.serverless.execution_role_arn.rsplit("/", 1)[-1],
                       iam.get_role, "RoleName"))
    findings = []
    for check, name, call, parameter in wanted:
        try:
            call(**{parameter: name})
            findings.append(CheckResult(check, "ok", name))
        except ClientError as error:
            problem = "does not exist" if _code(error) == "NoSuchEntity" else f"cannot be read ({_code(error)})"
            findings.append(CheckResult(check, "fail", f"{name} {problem}; {fix}"))
    return findings


def check_clusters(aws: Aws, max_age_hours: float, now: datetime) -> list[CheckResult]:
    """Every active cluster in the region with its age: older than max_age_hours is a warning."""
    clusters = active_clusters(aws.client("emr"))
    if not clusters:
        return [CheckResult("clusters", "ok", f"no active EMR cluster in {aws.region}")]
    findings = []
    for cluster in clusters:
        age = (now - cluster["Status"]["Timeline"]["CreationDateTime"]).total_seconds() / 3600
        owner = f"orchard run {run_tag(cluster)}" if run_tag(cluster) else "not created by orchard"
        detail = f"{cluster['Id']} {cluster['Name']} {cluster['Status']['State']} for {age:.1f} h ({owner})"
        if age > max_age_hours:
            detail += "; forgotten? `orchard emr down --all` ends orchard's clusters"
        findings.append(CheckResult("cluster", "warn" if age > max_age_hours else "ok", detail))
    return findings


def create_bucket(aws: Aws, bucket: str, *, run_id: str, log_prefix: str = "orchard", log_expiry_days: int = 30,
                  kms_key: str | None = None) -> list[str]:
    """Create (or bring into line) a bucket in aws.region: public access blocked, default encryption, TLS
    only, logs expired after log_expiry_days (0: kept). Returns one line per action."""
    s3 = aws.client("s3")
    done = []
    try:
        arguments: dict = {"Bucket": bucket}
        if aws.region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        s3.create_bucket(**arguments)
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": TAG, "Value": run_id}]})
        done.append(f"created s3://{bucket} in {aws.region}, tagged {TAG}={run_id}")
    except ClientError as error:
        if _code(error) == "BucketAlreadyExists":
            raise AwsError(f"bucket name {bucket} is taken by another AWS account; choose another name") from None
        if _code(error) != "BucketAlreadyOwnedByYou":
            raise
        where = bucket_region(s3, bucket)
        if where != aws.region:
            raise AwsError(f"s3://{bucket} already exists in {where}, not {aws.region}; pass --region {where} "
                           "or choose another name") from None
        done.append(f"s3://{bucket} already exists and is yours: applying the settings")
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={flag: True
                                                                              for flag in PUBLIC_ACCESS_FLAGS})
    done.append("Block Public Access on (all four settings)")
    default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key} if kms_key else {"SSEAlgorithm": "AES256"}
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": bool(kms_key)}]})
    done.append(f"default encryption {default['SSEAlgorithm']}")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
    done.append("bucket policy: TLS only")
    rules: list[dict] = [{"ID": "orchard-abort-incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
                          "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}]
    if log_expiry_days:
        rules.append({"ID": "orchard-expire-logs", "Status": "Enabled", "Filter": {"Prefix": f"{log_prefix}/logs/"},
                      "Expiration": {"Days": log_expiry_days}})
        done.append(f"lifecycle: s3://{bucket}/{log_prefix}/logs/ expires after {log_expiry_days} days")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    done.append("lifecycle: incomplete multipart uploads aborted after 7 days")
    return done


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "unknown"))
