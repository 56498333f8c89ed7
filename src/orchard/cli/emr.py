"""`orchard emr ...`: argparse definitions and thin handlers over orchard.cloud.emr, serverless and doctor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchard.errors import OrchardError

DEFAULT_NOTEBOOK = "notebooks/walkthrough.ipynb"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `orchard emr` and its subcommands to the top-level subparsers."""
    emr = commands.add_parser(
        "emr", help="AWS EMR: plan (cost), up, run, status, logs, download, down, doctor, bucket",
        description="Run orchard on AWS EMR (or EMR Serverless) from a TOML config (deploy/emr.example.toml): "
                    "EU regions only unless --allow-non-eu-region, auto-termination always on, every resource "
                    "tagged orchard:run=RUN_ID, state in .orchard/emr-state.json. See docs/aws.md.")
    sub = emr.add_subparsers(dest="emr_command", required=True)

    def command(name: str, handler, help_text: str, config: bool = True) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(emr_handler=handler)
        if config:
            parser.add_argument("--config", "-c", default="emr.toml", help="TOML config (default: emr.toml)")
            parser.add_argument("--allow-non-eu-region", action="store_true",
                                help="allow a region outside the EU (GDPR: only if the data may be processed there)")
        return parser

    def waiting(parser: argparse.ArgumentParser, timeout_minutes: int) -> None:
        parser.add_argument("--no-wait", action="store_true", help="return once submitted")
        parser.add_argument("--timeout", type=float, default=timeout_minutes,
                            help=f"minutes to wait at most (default {timeout_minutes}); the work goes on after it")
        parser.add_argument("--poll", type=float, default=30, help="seconds between progress lines (default 30)")

    plan = command("plan", _plan, "print the cluster that would be created and its estimated cost (calls no AWS)")
    plan.add_argument("--images", type=int, help="image count for the run estimate (default: [estimate] images)")
    plan.add_argument("--terminate-after", action="store_true", help="plan `run --terminate-after`")
    plan.add_argument("--jupyter", action="store_true", help="plan `up --jupyter`")
    plan.add_argument("--json", action="store_true", help="print the run_job_flow request as JSON")

    up = command("up", _up, "create a cluster with orchard installed (bootstrap action), wait until it is ready")
    up.add_argument("--jupyter", action="store_true",
                    help="also run JupyterHub (notebooks persisted in the bucket) and print the SSH tunnel")
    up.add_argument("--notebook", default=DEFAULT_NOTEBOOK,
                    help=f"with --jupyter, notebook to put in JupyterHub when it exists (default {DEFAULT_NOTEBOOK})")
    waiting(up, 30)

    run = command("run", _run, "run orchard as a step on the current cluster (or a new one), wait, fetch logs "
                               "on failure")
    run.add_argument("--target", choices=("cluster", "serverless"), default="cluster",
                     help="EMR on EC2 (default) or EMR Serverless ([serverless] table in the config)")
    run.add_argument("--terminate-after", action="store_true",
                     help="terminate the cluster when the step ends (a new cluster ends by itself)")
    run.add_argument("--lines", type=int, default=40, help="log lines shown on failure (default 40)")
    waiting(run, 360)

    command("status", _status, "state of the current run's cluster (or serverless application) and steps",
            config=False)

    logs = command("logs", _logs, "print the tail of the step's logs (spark-submit and the YARN driver) from S3",
                   config=False)
    logs.add_argument("--step", help="step id (default: the last one)")
    logs.add_argument("--lines", type=int, default=40, help="lines per log file (default 40)")

    download = command("download", _download, "copy the run's output from S3 to a local folder and verify it",
                       config=False)
    download.add_argument("destination", nargs="?", help="local folder (default: results/RUN_ID)")
    download.add_argument("--source", help="s3:// output to copy (default: the run's output)")
    download.add_argument("--no-verify", action="store_true", help="skip `orchard verify` on the copy")

    down = command("down", _down, "terminate the current run's cluster (or delete its serverless application)",
                   config=False)
    down.add_argument("--all", action="store_true",
                      help="terminate every active orchard-tagged cluster in the region (others are left alone)")
    down.add_argument("--region", help="region for --all (default: the state's, else the config's)")
    down.add_argument("--config", "-c", default="emr.toml", help="config whose region --all uses without a state")

    doctor = command("doctor", _doctor, "check credentials, region, bucket, input, IAM roles and running clusters")
    doctor.add_argument("--max-age-hours", type=float, default=2.0,
                        help="flag active clusters older than this (default 2)")

    bucket = command("bucket", _bucket, "create a compliant bucket (EU, public access blocked, encrypted, TLS only, "
                                        "log lifecycle) or bring an existing one in line", config=False)
    bucket.add_argument("name", help="bucket name")
    bucket.add_argument("--region", default="eu-west-3", help="region (default eu-west-3)")
    bucket.add_argument("--allow-non-eu-region", action="store_true", help="allow a region outside the EU")
    bucket.add_argument("--prefix", default="orchard", help="orchard's prefix in the bucket (default orchard)")
    bucket.add_argument("--log-expiry-days", type=int, default=30,
                        help="delete PREFIX/logs/ objects after this many days; 0 keeps them (default 30)")
    bucket.add_argument("--kms-key", help="KMS key id or ARN for SSE-KMS (default: SSE-S3)")


def run_emr(args: argparse.Namespace) -> int:
    """Dispatch `orchard emr SUBCOMMAND`; AWS errors become one-line OrchardErrors."""
    try:
        return args.emr_handler(args)
    except Exception as error:
        if not type(error).__module__.startswith("botocore"):  # a plan never loads botocore to ask
            raise
        raise _aws_error(error) from None


def _aws_error(error: Exception) -> OrchardError:
    """The one-line error for a botocore exception."""
    from botocore.exceptions import ClientError, NoCredentialsError

    from orchard.cloud.emr import AwsError

    if isinstance(error, NoCredentialsError):
        return AwsError("no AWS credentials found; configure a profile (`aws configure --profile NAME`, then "
                        "AWS_PROFILE=NAME): orchard never takes keys as options")
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return AwsError(f"AWS refused {error.operation_name}: {details.get('Code')}: {details.get('Message')}")
    return AwsError(f"AWS call failed: {error}")


def connect(region: str):
    """The boto3 clients for a region (tests replace this to wrap clients)."""
    from orchard.cloud.emr import Aws

    return Aws(region)


def _config(args: argparse.Namespace):
    from orchard.cloud.emr import check_region, release_warning
    from orchard.cloud.emr_config import load_config

    config = load_config(args.config)
    check_region(config.region, args.allow_non_eu_region)
    warning = release_warning(config.release_label)
    if warning:
        print(warning, file=sys.stderr)
    return config


def _waiting(args: argparse.Namespace):
    from orchard.cloud.emr import Waiting

    return Waiting(timeout=args.timeout * 60, poll=args.poll)


def _plan(args: argparse.Namespace) -> int:
    from orchard import __version__
    from orchard.cloud import emr, throughput
    from orchard.cloud.emr_cost import compare_families, comparison_table, estimate

    config = _config(args)
    run_id = "RUN-ID"
    run_uri = config.run_uri(run_id)
    artifacts = emr.Artifacts(run_uri, f"{run_uri}/orchard-{__version__}-py3-none-any.whl")
    steps = [] if args.jupyter else [emr.spark_step(config, run_id, artifacts.driver_uri,
                                                    terminate_after=args.terminate_after)]
    request = emr.job_flow_request(config, run_id, artifacts, steps=steps, keep_alive=not args.terminate_after,
                                   jupyter=args.jupyter)
    if args.json:
        print(emr.describe_json(request))
        return 0
    print("\n".join(emr.request_summary(request)))
    cost = estimate(config, images=args.images)
    print(cost.table())
    print(comparison_table(compare_families(config, cost.prices), throughput.precision_of(config.run_args),
                           cost.prices.currency))
    return 0


def _up(args: argparse.Namespace) -> int:
    from orchard.cloud import emr
    from orchard.cloud.emr_cost import estimate

    config = _config(args)
    cost = estimate(config)
    aws = connect(config.region)
    previous = emr.RunState.load() if emr.STATE_FILE.is_file() else None
    if previous and previous.cluster_id and not previous.terminated and previous.region == config.region:
        current = aws.client("emr").describe_cluster(ClusterId=previous.cluster_id)["Cluster"]["Status"]["State"]
        if current in emr.ACTIVE_STATES:
            raise OrchardError(f"cluster {previous.cluster_id} of run {previous.run_id} is still {current}: use it "
                               "(`orchard emr run`) or end it (`orchard emr down`) before creating another")
    run_id = emr.new_run_id()
    artifacts = emr.upload_artifacts(aws, config, run_id)
    print(f"uploaded the orchard wheel, bootstrap and driver under {artifacts.run_uri}/")
    state, _ = emr.launch(aws, config, run_id, steps=[], keep_alive=True, jupyter=args.jupyter,
                          artifacts=artifacts, hourly=cost.hourly)
    print(f"created cluster {state.cluster_id} (run {run_id}) in {config.region}, ~{cost.hourly:.2f} "
          f"{cost.prices.currency}/h (estimate); idle timeout {config.idle_timeout_minutes} min")
    notebook = Path(args.notebook)
    if args.jupyter and notebook.is_file():
        print(f"notebook {notebook} -> {emr.upload_notebook(aws, config, notebook, run_id)}")
    if args.no_wait:
        print("not waiting: `orchard emr status` shows when it is ready")
        return 0
    cluster = emr.wait_for_cluster(aws, state.cluster_id, _waiting(args), print)
    print(f"ready: master {cluster.get('MasterPublicDnsName')}")
    if args.jupyter:
        print("\n".join(emr.jupyter_instructions(cluster.get("MasterPublicDnsName"), config.key_name)))
    print("next: `orchard emr run`, then `orchard emr download` and `orchard emr down`")
    return 0


def _run(args: argparse.Namespace) -> int:
    from orchard.cloud import emr
    from orchard.cloud.emr_cost import estimate

    config = _config(args)
    aws = connect(config.region)
    if args.target == "serverless":
        return _run_serverless(args, aws, config)
    state = emr.RunState.load() if emr.STATE_FILE.is_file() else None
    state, created = emr.submit(aws, config, state=state, terminate_after=args.terminate_after,
                                hourly=estimate(config).hourly, report=print)
    step_id = state.steps[-1]
    if args.no_wait:
        print(f"not waiting: `orchard emr status` / `orchard emr logs --step {step_id}`")
        return 0
    step = emr.wait_for_step(aws, state.cluster_id, step_id, config.output, _waiting(args), print)
    if step is None:
        print(f"step {step_id} still running after {args.timeout:g} min; it goes on (the cluster ends at its idle "
              "timeout): `orchard emr status` to follow it", file=sys.stderr)
        return 1
    if args.terminate_after and not created:
        aws.client("emr").terminate_job_flows(JobFlowIds=[state.cluster_id])
        state.terminated = True
        state.save()
        print(f"terminated cluster {state.cluster_id}")
    if step["Status"]["State"] == "COMPLETED":
        print(f"step {step_id} completed: results in {config.output}; `orchard emr download` copies them here")
        return 0
    failure = step["Status"].get("FailureDetails", {})
    print(f"step {step_id} {step['Status']['State']}: {failure.get('Reason', 'no reason given')}", file=sys.stderr)
    _print_logs(emr.step_logs(aws, state, step_id, args.lines, failure.get("LogFile")))
    return 1


def _run_serverless(args: argparse.Namespace, aws, config) -> int:
    from orchard.cloud import serverless

    state, _ = serverless.start(aws, config, print)
    if args.no_wait:
        return 0
    job = serverless.wait_for_job(aws, state.application_id, state.job_runs[-1], _waiting(args), print)
    if job is None:
        print(f"job run still running after {args.timeout:g} min: `orchard emr status` to follow it", file=sys.stderr)
        return 1
    if job["state"] == "SUCCESS":
        print(f"job run succeeded: results in {config.output}; `orchard emr download` copies them here")
        return 0
    print(f"job run {job['state']}: {job.get('stateDetails', '')}", file=sys.stderr)
    _print_logs(serverless.job_logs(aws, state, state.job_runs[-1], args.lines))
    return 1


def _status(args: argparse.Namespace) -> int:
    from orchard.cloud import emr

    state = emr.RunState.load()
    aws = connect(state.region)
    if state.target == "serverless":
        client = aws.client("emr-serverless")
        application = client.get_application(applicationId=state.application_id)["application"]
        print(f"run {state.run_id}: EMR Serverless application {state.application_id} in {state.region} "
              f"{application['state']}")
        for job_run_id in state.job_runs:
            job = client.get_job_run(applicationId=state.application_id, jobRunId=job_run_id)["jobRun"]
            print(f"  job run {job_run_id}: {job['state']}")
        return 0
    print("\n".join(emr.cluster_report(aws, state)))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from orchard.cloud import emr, serverless

    state = emr.RunState.load()
    aws = connect(state.region)
    if state.target == "serverless":
        found = serverless.job_logs(aws, state, args.step or state.job_runs[-1], args.lines)
    else:
        if not (args.step or state.steps):
            raise OrchardError("this run has no step yet: `orchard emr run` adds one")
        step_id = args.step or state.steps[-1]
        step = aws.client("emr").describe_step(ClusterId=state.cluster_id, StepId=step_id)["Step"]
        failure_log = step["Status"].get("FailureDetails", {}).get("LogFile")
        found = emr.step_logs(aws, state, step_id, args.lines, failure_log)
    _print_logs(found)
    return 0


def _print_logs(found: list[tuple[str, str]]) -> None:
    if not found:
        print("no logs in S3 yet: EMR copies them about every 5 minutes (and at termination); try again later")
    for uri, tail in found:
        print(f"==> {uri} <==\n{tail}")


def _download(args: argparse.Namespace) -> int:
    from orchard.cloud import emr

    state = emr.RunState.load()
    aws = connect(state.region)
    source = args.source or state.output
    destination = args.destination or f"results/{state.run_id}"
    count = emr.download(aws, source, destination)
    print(f"copied {count} files from {source} to {destination}")
    if args.no_verify:
        return 0
    from orchard.verify import verify

    findings = verify(destination)
    for finding in findings:
        if not finding.ok:
            print(finding.line())
    good = all(finding.ok for finding in findings)
    print(f"{destination}: {'verified' if good else 'NOT verified'}")
    return 0 if good else 1


def _down(args: argparse.Namespace) -> int:
    from orchard.cloud import emr, serverless
    from orchard.cloud.emr_config import load_config

    state = emr.RunState.load() if emr.STATE_FILE.is_file() else None
    if args.all:
        region = args.region or (state.region if state else load_config(args.config).region)
        ids = emr.terminate_orchard_clusters(connect(region).client("emr"))
        print(f"terminating {len(ids)} orchard cluster(s) in {region}: {', '.join(ids) or 'none'}")
        return 0
    if state is None:
        state = emr.RunState.load()  # raises the one-line "no state" error
    aws = connect(state.region)
    if state.target == "serverless":
        print(serverless.stop(aws, state, emr.Waiting(timeout=600, poll=5), print))
    else:
        aws.client("emr").terminate_job_flows(JobFlowIds=[state.cluster_id])
        print(f"terminating cluster {state.cluster_id} (run {state.run_id})")
    state.terminated = True
    state.save()
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from orchard.cloud.doctor import doctor
    from orchard.cloud.emr_config import load_config

    config = load_config(args.config)
    findings = doctor(connect(config.region), config, allow_non_eu=args.allow_non_eu_region,
                      max_age_hours=args.max_age_hours)
    for finding in findings:
        print(finding.line())
    failed = sum(not finding.ok for finding in findings)
    print("ready for orchard emr" if not failed else f"{failed} problem(s) to fix")
    return 0 if not failed else 1


def _bucket(args: argparse.Namespace) -> int:
    from orchard.cloud.doctor import create_bucket
    from orchard.cloud.emr import check_region, new_run_id

    check_region(args.region, args.allow_non_eu_region)
    for line in create_bucket(connect(args.region), args.name, run_id=new_run_id(), log_prefix=args.prefix.strip("/"),
                              log_expiry_days=args.log_expiry_days, kms_key=args.kms_key):
        print(line)
    return 0


COMMANDS = {"emr": run_emr}
