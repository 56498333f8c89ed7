"""`orchard emr`: config, cost, the exact EMR requests, doctor, bucket, down --all, serverless, logs, download.

Everything runs against a moto server on 127.0.0.1 (EMR, EMR Serverless, S3, STS, IAM) with fake credentials;
nothing here reaches AWS. moto does not implement Get/PutAutoTerminationPolicy and never finishes a step, so
those calls are answered from tests/recorded/ through botocore's Stubber on a real EMR client (see
RecordedEmr): the code under test runs its real path on those answers.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest
from botocore.stub import Stubber
from infra import AWS_ENV, moto_server

from orchard.cli import emr as emr_cli
from orchard.cli import main
from orchard.cloud import doctor, emr, emr_config, emr_cost, emr_driver, serverless
from orchard.errors import ConfigError
from orchard.io import fs
from orchard.sample import SampleSpec, make_sample

RECORDED = Path(__file__).parent / "recorded"
REPO = Path(__file__).resolve().parents[1]
SECRET = AWS_ENV["AWS_SECRET_ACCESS_KEY"]
BUCKET = "orchard-test-eu"
REGION = "eu-west-3"
RUN_ID = "20261122-100000-abcdef"
KERAS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
CONFIG = f"""
region = "{REGION}"
bucket = "{BUCKET}"
input = "s3://{BUCKET}/fruits/Training"
output = "s3://{BUCKET}/out/fruits"
weights = "s3://{BUCKET}/models/{KERAS_FILE}"
run_args = ["--k", "50"]
idle_timeout_minutes = 30
key_name = "orchard-key"
{{extra}}
[master]
instance_type = "m5.xlarge"
ebs_gb = 32

[core]
instance_type = "m5.2xlarge"
count = 2
market = "spot"
ebs_gb = 64

[task]
instance_type = "c5.2xlarge"
count = 1
market = "spot"
ebs_gb = 64

[estimate]
images = 67692
"""


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """A moto server for the module; fake credentials and its endpoint in the environment, restored after."""
    saved = dict(os.environ)
    folder = tmp_path_factory.mktemp("aws")
    with moto_server(folder / "moto.log") as url:
        os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=url, AWS_CONFIG_FILE=str(folder / "none"),
                          AWS_SHARED_CREDENTIALS_FILE=str(folder / "none"))
        os.environ.pop("AWS_PROFILE", None)
        try:
            yield url
        finally:
            os.environ.clear()
            os.environ.update(saved)


@pytest.fixture
def aws(endpoint, tmp_path, monkeypatch):
    """A freshly reset moto, the test's own folder as working directory (the state file goes there)."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    monkeypatch.chdir(tmp_path)
    return emr.Aws(REGION)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """orchard's real wheel, built once."""
    from orchard.cloud.package import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


class RecordedEmr:
    """A real EMR client where the loaded recorded operations are answered by botocore's Stubber (validated
    against the EMR model, expected parameters checked), everything else by moto."""

    def __init__(self, live) -> None:
        self.live = live
        self.recorded = boto3.client("emr", region_name=live.meta.region_name)
        self.stubber = Stubber(self.recorded)
        self.stubber.activate()
        self.operations: set[str] = set()

    def load(self, name: str, key: str | None = None, *, check_params: bool = True, **values: str) -> None:
        text = (RECORDED / f"{name}.json").read_text()
        for placeholder, value in values.items():
            text = text.replace("{" + placeholder + "}", value)
        calls = json.loads(text)
        for call in calls[key] if key else calls:
            self.operations.add(call["operation"])
            self.stubber.add_response(call["operation"], call["response"],
                                      call["expected_params"] if check_params else None)

    def __getattr__(self, name: str):
        return getattr(self.recorded if name in self.operations else self.live, name)


def write_config(folder: Path, extra: str = "", text: str = CONFIG) -> Path:
    path = folder / "emr.toml"
    path.write_text(text.replace("{extra}", extra))
    return path


def make_bucket(aws: emr.Aws, name: str = BUCKET) -> None:
    """A bucket made by `orchard emr bucket`, minus its TLS-only policy: moto serves plain HTTP on 127.0.0.1,
    which that policy (rightly) denies."""
    doctor.create_bucket(aws, name, run_id=RUN_ID)
    aws.client("s3").delete_bucket_policy(Bucket=name)


def put(uri: str, data: bytes, storage) -> None:
    fs.write_bytes(uri, data, storage)


def put_gzipped(uri: str, text: str) -> None:
    """A gzipped log file, stored as EMR stores it (raw bytes: orchard.io.fs would gzip a .gz path itself)."""
    bucket, key = emr.split_s3(uri)
    boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()))


def capture(client, event: str) -> list[dict]:
    """Parameters of every call of one operation, as botocore is about to send them."""
    seen: list[dict] = []
    client.meta.events.register(f"provide-client-params.{event}", lambda params, **_: seen.append(dict(params)))
    return seen


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["emr", *argv])
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    return code, out, err


def use_clients(monkeypatch, **clients) -> None:
    monkeypatch.setattr(emr_cli, "connect", lambda region: emr.Aws(region, clients=clients))


# --- config -------------------------------------------------------------------------------------------------------


@pytest.mark.pure
def test_example_config_loads_and_plans(capsys):
    config = emr_config.load_config(REPO / "deploy" / "emr.example.toml")
    assert (config.region, config.release_label, config.core.count, config.core.market) == (
        "eu-west-3", "emr-spark-8.1.0", 2, "ON_DEMAND")
    assert config.task is not None and config.groups == (config.master, config.core)  # count 0: no task group
    code, out, _ = cli(capsys, "plan", "-c", str(REPO / "deploy" / "emr.example.toml"))
    assert code == 0
    assert "total per hour (estimate)" in out and "run estimate for 67692 images" in out
    assert "--weights-from s3://my-orchard-eu/models/" in out


@pytest.mark.pure
@pytest.mark.parametrize(("change", "message"), [
    ("idle_timout_minutes = 5", "unknown key idle_timout_minutes; did you mean idle_timeout_minutes?"),
    ("[core]\nmarket = 'reserved'", "core.market = 'reserved' is not valid"),
    ("[master]\ncount = 3", "master.count = 3 is not valid; use exactly 1"),
    ("[master]\nmarket = 'spot'", "master.market = 'spot' is not valid"),
    ("release_label = 'emr-6.15.0'", "release_label = 'emr-6.15.0' is not valid"),
    ("release_label = 'emr-spark-8.1'", "release_label = 'emr-spark-8.1' is not valid; use an emr-spark-8.x.y label"),
    ("release_label = 'emr-8.1.0'", "release_label = 'emr-8.1.0' is not valid; use an emr-spark-8.x.y label"),
    ("[serverless]\nexecution_role_arn = 'arn:aws:iam::123456789012:role/r'\narchive = 'e.tar.gz'\n"
     "release_label = 'emr-spark-9.0.0'", "serverless.release_label = 'emr-spark-9.0.0' is not valid"),
    ("idle_timeout_minutes = '30'", "idle_timeout_minutes = '30' must be a int"),
    ("idle_timeout_minutes = 0", "idle_timeout_minutes = 0 is not valid; use 1 to 10080 minutes"),
    ("input = '/data/fruits'", "input = '/data/fruits' is not valid; use an s3:// URI"),
    ("[estimate]\nimages_per_second = 9", "unknown key estimate.images_per_second; did you mean "
                                          "estimate.images_per_second_per_vcpu?"),
    ("[prices.'m5.2xlarge']\nec2 = 0.4", "missing key prices.m5.2xlarge.emr"),
    ("[serverless]\narchive = 'env.tar.gz'", "missing key serverless.execution_role_arn"),
])
def test_config_mistakes_are_one_line_errors_naming_the_key(change, message):
    base = {"bucket": "b-eu", "input": "s3://b-eu/in", "output": "s3://b-eu/out"}
    import tomllib

    data = {**base, **tomllib.loads(change)}
    with pytest.raises(ConfigError) as raised:
        emr_config.parse_config(data, "emr.toml")
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert str(raised.value).startswith("emr.toml: ")


@pytest.mark.pure
def test_default_release_is_emr_spark_8_1_0():
    config = emr_config.parse_config({"bucket": "b-eu", "input": "s3://b-eu/in", "output": "s3://b-eu/out"})
    assert config.release_label == emr_config.DEFAULT_RELEASE == "emr-spark-8.1.0"
    assert (emr_config.spark_generation(config.release_label), emr_config.spark_version(config.release_label)) == (
        4, "4.1.1")
    request = emr.job_flow_request(config, RUN_ID, emr.Artifacts(config.run_uri(RUN_ID), "unused"))
    assert request["ReleaseLabel"] == "emr-spark-8.1.0"
    assert request["Applications"] == [{"Name": "Spark"}]  # emr-spark-8 releases have no Hadoop application
    with pytest.raises(ConfigError, match=r"--jupyter needs JupyterHub.*release_label = \"emr-7\.13\.0\"") as raised:
        emr.job_flow_request(config, RUN_ID, emr.Artifacts(config.run_uri(RUN_ID), "unused"), jupyter=True)
    assert "\n" not in str(raised.value)


@pytest.mark.e2e
def test_emr_7_labels_are_still_accepted(aws, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(emr, "installed_pyspark", lambda: "3.5.6")
    path = write_config(tmp_path, 'release_label = "emr-7.13.0"')
    config = emr_config.load_config(path)
    assert (emr_config.spark_generation(config.release_label), emr_config.spark_version(config.release_label)) == (
        3, "3.5.6")
    assert emr_config.spark_version("emr-7.2.0") == "3.5" and emr_config.spark_version("emr-spark-8.9.0") == "4"
    request = emr.job_flow_request(config, RUN_ID, emr.Artifacts(config.run_uri(RUN_ID), "unused"), jupyter=True)
    assert [app["Name"] for app in request["Applications"]] == ["Spark", "Hadoop", "JupyterHub", "Livy"]
    assert request["Configurations"][1]["Classification"] == "jupyter-s3-conf"
    cluster_id = aws.client("emr").run_job_flow(**request)["JobFlowId"]
    cluster = aws.client("emr").describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.13.0"
    assert [app["Name"] for app in cluster["Applications"]] == ["Spark", "Hadoop", "JupyterHub", "Livy"]
    code, out, err = cli(capsys, "plan", "-c", str(path), "--jupyter")
    assert code == 0 and "emr-7.13.0, applications Spark, Hadoop, JupyterHub, Livy" in out and err == ""


@pytest.mark.pure
def test_release_warning_when_the_local_pyspark_has_another_major_version(tmp_path, capsys, monkeypatch):
    warning = emr.release_warning("emr-spark-8.1.0", local_pyspark="3.5.6")
    assert warning is not None and "\n" not in warning
    assert "emr-spark-8.1.0 runs Spark 4.1.1 but the local pyspark is 3.5.6" in warning
    assert "pip install 'pyspark==4.1.*'" in warning
    warning = emr.release_warning("emr-7.13.0", local_pyspark="4.1.1")
    assert "emr-7.13.0 runs Spark 3.5.6 but the local pyspark is 4.1.1" in warning and "'pyspark==3.5.*'" in warning
    assert emr.release_warning("emr-spark-8.1.0", local_pyspark="4.0.1") is None  # same major: no warning
    assert emr.release_warning("emr-7.13.0", local_pyspark="3.5.3") is None
    monkeypatch.setattr(emr, "installed_pyspark", lambda: None)
    assert emr.release_warning("emr-7.13.0") is None  # nothing installed here to compare with

    path = write_config(tmp_path)  # the default release, emr-spark-8.1.0
    monkeypatch.setattr(emr, "installed_pyspark", lambda: "3.5.6")
    code, out, err = cli(capsys, "plan", "-c", str(path))
    assert code == 0 and "emr-spark-8.1.0, applications Spark" in out
    assert err.count("\n") == 1 and "runs Spark 4.1.1 but the local pyspark is 3.5.6" in err
    monkeypatch.setattr(emr, "installed_pyspark", lambda: "4.1.1")
    code, _, err = cli(capsys, "plan", "-c", str(path))
    assert code == 0 and err == ""


@pytest.mark.pure
def test_malformed_release_labels_are_one_line_errors(tmp_path, capsys):
    for label in ("emr-spark-8", "emr-7.13", "spark-4.1.1", "EMR-7.13.0"):
        with pytest.raises(ConfigError) as raised:
            emr_config.spark_generation(label)
        assert f"release_label {label!r} is not a supported EMR release label" in str(raised.value)
        assert "\n" not in str(raised.value)
    path = write_config(tmp_path, 'release_label = "emr-spark-8.1"')
    code, out, err = cli(capsys, "plan", "-c", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "release_label = 'emr-spark-8.1' is not valid; use an emr-spark-8.x.y label (Spark 4; default " \
           "emr-spark-8.1.0) or emr-7.x.y (Spark 3.5, e.g. emr-7.13.0)" in err


@pytest.mark.pure
def test_non_eu_regions_are_refused_unless_allowed(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"outside the EU.*GDPR.*--allow-non-eu-region"):
        emr.check_region("us-east-1")
    emr.check_region("us-east-1", allow_non_eu=True)
    emr.check_region("eu-north-1")
    path = write_config(tmp_path, text=CONFIG.replace(REGION, "us-east-1"))
    code, _, err = cli(capsys, "plan", "-c", str(path))
    assert code == 2 and err.count("\n") == 1 and "GDPR" in err
    code, _, err = cli(capsys, "plan", "-c", str(path), "--allow-non-eu-region")
    assert code == 2 and "price table has no region us-east-1" in err  # the bill must be known: add prices
    code, _, err = cli(capsys, "bucket", "some-bucket", "--region", "us-west-2")
    assert code == 2 and "GDPR" in err


# --- cost ---------------------------------------------------------------------------------------------------------


@pytest.mark.pure
def test_cost_arithmetic_from_the_price_table(tmp_path):
    text = CONFIG.replace(REGION, "eu-west-1").replace("count = 2", "count = 3")
    config = emr_config.load_config(write_config(tmp_path, text=text))
    cost = emr_cost.estimate(config)
    # eu-west-1 rows: m5.xlarge ec2 0.214 emr 0.048; m5.2xlarge 0.428 / 0.096; c5.2xlarge 0.384 / 0.096;
    # EBS gp3 0.088 per GB-month over 730 h; spot = 0.4 x EC2, EMR uplift in full.
    master = 0.214 + 0.048 + 32 * 0.088 / 730                 # 0.265857...
    core = 3 * (0.428 * 0.4 + 0.096 + 64 * 0.088 / 730)       # 3 x 0.274915... = 0.824745...
    task = 1 * (0.384 * 0.4 + 0.096 + 64 * 0.088 / 730)       # 0.257315...
    assert [round(g.hourly, 6) for g in cost.groups] == [round(master, 6), round(core, 6), round(task, 6)]
    assert cost.hourly == pytest.approx(1.347918, abs=1e-6)
    assert cost.executor_vcpus == 3 * 8 + 8
    compute = 67692 / (72.0 * 32) / 3600                      # 0.008161... h
    assert cost.compute_hours == pytest.approx(compute)
    assert cost.run_hours == pytest.approx(12 / 60 + 3 / 60 + compute)
    assert cost.run_cost == pytest.approx(1.347918 * 0.258161, abs=1e-5)
    assert cost.idle_cost == pytest.approx(1.347918 * 0.5, abs=1e-6)
    table = cost.table()
    assert "1.3479 USD" in table and "as of" in table and "(estimate)" in table

    overridden = write_config(tmp_path, text=text + '\n[prices]\nebs_gp3_gb_month = 0.0\n[prices."m5.2xlarge"]\n'
                                                    'ec2 = 1.0\nemr = 0.5\n').read_text()
    overridden = overridden.replace("images = 67692", "images = 67692\nspot_price_factor = 0.5")
    cost = emr_cost.estimate(emr_config.load_config(write_config(tmp_path, text=overridden)))
    assert cost.groups[1].hourly == pytest.approx(3 * (1.0 * 0.5 + 0.5))
    assert cost.groups[0].hourly == pytest.approx(0.214 + 0.048)
    assert "overridden in the config: m5.2xlarge, ebs_gp3_gb_month" in cost.table()
    with pytest.raises(ConfigError, match=r'no price for m5\.8xlarge.*\[prices\."m5\.8xlarge"\]'):
        emr_cost.estimate(emr_config.load_config(write_config(tmp_path, text=text.replace("c5.2xlarge",
                                                                                          "m5.8xlarge"))))


# --- the cluster request --------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_run_job_flow_request_is_exactly_what_the_config_says(aws, tmp_path):
    make_bucket(aws)
    config = emr_config.load_config(write_config(tmp_path))  # no `wheel`: orchard builds its own
    live = boto3.client("emr", region_name=REGION)
    sent = capture(live, "emr.RunJobFlow")
    signed: list[str] = []
    live.meta.events.register("before-sign.emr.RunJobFlow", lambda region_name, **_: signed.append(region_name))
    recorded = RecordedEmr(live)
    aws = emr.Aws(REGION, clients={"emr": recorded})
    artifacts = emr.upload_artifacts(aws, config, RUN_ID)
    base = f"s3://{BUCKET}/orchard/{RUN_ID}"
    assert artifacts.wheel_uri == f"{base}/orchard-0.1.0-py3-none-any.whl"
    step = emr.spark_step(config, RUN_ID, artifacts.driver_uri, terminate_after=True)
    recorded.load("auto_termination", "policy_missing", cluster_id="j-PLACEHOLDER", check_params=False)
    state, request = emr.launch(aws, config, RUN_ID, steps=[step], keep_alive=False, jupyter=False,
                                artifacts=artifacts, hourly=1.5)
    recorded.stubber.assert_no_pending_responses()  # the policy was read, found missing and put
    group = {"EbsConfiguration": {"EbsBlockDeviceConfigs": [{"VolumeSpecification": {"VolumeType": "gp3"},
                                                             "VolumesPerInstance": 1}], "EbsOptimized": True}}

    def instance_group(name, role, market, kind, count, size):
        entry = json.loads(json.dumps(group))
        entry["EbsConfiguration"]["EbsBlockDeviceConfigs"][0]["VolumeSpecification"]["SizeInGB"] = size
        return {"Name": name, "InstanceRole": role, "Market": market, "InstanceType": kind, "InstanceCount": count,
                **entry}

    expected = {
        "Name": f"orchard-{RUN_ID}",
        "ReleaseLabel": "emr-spark-8.1.0",  # the default: no release_label in the config
        "LogUri": f"s3://{BUCKET}/orchard/logs/",
        "Applications": [{"Name": "Spark"}],
        "Configurations": [
            {"Classification": "spark-env", "Properties": {}, "Configurations": [
                {"Classification": "export", "Properties": {"PYSPARK_PYTHON": "/opt/orchard/bin/python"}}]}],
        "Instances": {
            "InstanceGroups": [instance_group("master", "MASTER", "ON_DEMAND", "m5.xlarge", 1, 32),
                               instance_group("core", "CORE", "SPOT", "m5.2xlarge", 2, 64),
                               instance_group("task", "TASK", "SPOT", "c5.2xlarge", 1, 64)],
            "KeepJobFlowAliveWhenNoSteps": False,
            "TerminationProtected": False,
            "Ec2KeyName": "orchard-key",
        },
        "BootstrapActions": [{"Name": "install orchard",
                              "ScriptBootstrapAction": {"Path": f"{base}/bootstrap.sh", "Args": []}}],
        "Steps": [{"Name": f"orchard run {RUN_ID}", "ActionOnFailure": "TERMINATE_CLUSTER", "HadoopJarStep": {
            "Jar": "command-runner.jar", "Args": [
                "spark-submit", "--master", "yarn", "--deploy-mode", "cluster", "--name", f"orchard-{RUN_ID}",
                f"{base}/driver.py", "--weights-from", f"s3://{BUCKET}/models/{KERAS_FILE}",
                "run", f"s3://{BUCKET}/fruits/Training", "--output", f"s3://{BUCKET}/out/fruits",
                "--s3-region", REGION, "--k", "50"]}}],
        "AutoTerminationPolicy": {"IdleTimeout": 1800},
        "JobFlowRole": "EMR_EC2_DefaultRole",
        "ServiceRole": "EMR_DefaultRole",
        "VisibleToAllUsers": True,
        "Tags": [{"Key": "orchard:run", "Value": RUN_ID}, {"Key": "orchard:name", "Value": "orchard"}],
    }
    assert request == expected
    assert sent == [expected]  # what botocore sent is what was built
    assert signed == [REGION]  # and where it was sent (moto's server files every region under its default)

    cluster = live.describe_cluster(ClusterId=state.cluster_id)["Cluster"]  # moto's view of the request
    assert (cluster["ReleaseLabel"], cluster["LogUri"], cluster["AutoTerminate"]) == (
        "emr-spark-8.1.0", f"s3://{BUCKET}/orchard/logs/", True)
    assert {"Key": "orchard:run", "Value": RUN_ID} in cluster["Tags"]
    assert [app["Name"] for app in cluster["Applications"]] == ["Spark"]
    assert cluster["Configurations"][0]["Configurations"][0]["Properties"] == {
        "PYSPARK_PYTHON": "/opt/orchard/bin/python"}
    groups = live.list_instance_groups(ClusterId=state.cluster_id)["InstanceGroups"]
    assert sorted((g["InstanceGroupType"], g["Market"], g["InstanceType"], g["RequestedInstanceCount"])
                  for g in groups) == [("CORE", "SPOT", "m5.2xlarge", 2), ("MASTER", "ON_DEMAND", "m5.xlarge", 1),
                                       ("TASK", "SPOT", "c5.2xlarge", 1)]
    actions = live.list_bootstrap_actions(ClusterId=state.cluster_id)["BootstrapActions"]
    assert [a["ScriptPath"] for a in actions] == [f"{base}/bootstrap.sh"]
    steps = live.list_steps(ClusterId=state.cluster_id)["Steps"]
    assert [s["Id"] for s in steps] == state.steps and steps[0]["Config"]["Args"] == expected["Steps"][0][
        "HadoopJarStep"]["Args"]

    storage = aws.storage
    script = fs.read_bytes(f"{base}/bootstrap.sh", storage).decode()
    assert "sudo dnf install -y -q python3.11" in script and "python3.11 -m venv /opt/orchard" in script
    assert f"aws s3 cp {base}/orchard-0.1.0-py3-none-any.whl" in script and "pyspark" not in script
    assert "--no-deps /tmp/orchard-wheel/orchard-0.1.0-py3-none-any.whl" in script and "onnxruntime" in script
    assert fs.read_bytes(f"{base}/driver.py", storage).decode() == emr_driver.SCRIPT
    s3 = boto3.client("s3", region_name=REGION)
    for name in ("bootstrap.sh", "driver.py", "orchard-0.1.0-py3-none-any.whl"):
        tags = s3.get_object_tagging(Bucket=BUCKET, Key=f"orchard/{RUN_ID}/{name}")["TagSet"]
        assert tags == [{"Key": "orchard:run", "Value": RUN_ID}]
    saved = json.loads((tmp_path / ".orchard" / "emr-state.json").read_text())
    assert saved["cluster_id"] == state.cluster_id and saved["steps"] == state.steps and saved["region"] == REGION
    assert SECRET not in json.dumps(saved) and "AWS_" not in json.dumps(saved)


@pytest.mark.e2e
def test_auto_termination_is_checked_and_set_from_recorded_responses(aws):
    recorded = RecordedEmr(boto3.client("emr", region_name=REGION))
    recorded.load("auto_termination", "policy_in_place", cluster_id="j-1K48XXXXXXHCB")
    assert emr.ensure_auto_termination(recorded, "j-1K48XXXXXXHCB", 1800) is False
    recorded.load("auto_termination", "policy_missing", cluster_id="j-1K48XXXXXXHCB")
    assert emr.ensure_auto_termination(recorded, "j-1K48XXXXXXHCB", 1800) is True
    recorded.stubber.assert_no_pending_responses()


@pytest.mark.e2e
def test_waiting_for_a_step_is_bounded_and_counts_committed_shards(aws, tmp_path):
    make_bucket(aws)
    config = emr_config.load_config(write_config(tmp_path, f'wheel = "{tmp_path / "missing.whl"}"'))
    with pytest.raises(ConfigError, match=r"missing\.whl.*file not found"):
        emr.upload_artifacts(aws, config, RUN_ID)
    live = aws.client("emr")
    cluster_id = live.run_job_flow(**emr.job_flow_request(
        config, RUN_ID, emr.Artifacts(config.run_uri(RUN_ID), "unused"),
        steps=[emr.spark_step(config, RUN_ID, "s3://x/driver.py")]))["JobFlowId"]
    step_id = live.list_steps(ClusterId=cluster_id)["Steps"][0]["Id"]
    for shard in (0, 1):
        put(f"{config.output}/_work/stats/shard-{shard:05d}.json", b"{}", aws.storage)
    now = [0.0]
    lines: list[str] = []
    waiting = emr.Waiting(timeout=120, poll=30, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert emr.wait_for_step(aws, cluster_id, step_id, config.output, waiting, lines.append) is None  # moto: RUNNING
    assert lines == [f"[0:0{m}:{s}] step {step_id} RUNNING, 2 shard(s) committed"
                     for m, s in (("0", "00"), ("0", "30"), ("1", "00"), ("1", "30"), ("2", "00"))]


# --- CLI end to end -------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_cli_up_jupyter_status_run_download_down(aws, tmp_path, wheel, capsys, monkeypatch):
    make_bucket(aws)
    # JupyterHub exists on emr-7.x only (emr-spark-8 releases do not include it): up --jupyter needs such a label
    path = write_config(tmp_path, f'wheel = "{wheel}"\nrelease_label = "emr-7.13.0"')
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "walkthrough.ipynb").write_text('{"cells": []}')
    recorded = RecordedEmr(aws.client("emr"))
    use_clients(monkeypatch, emr=recorded)
    recorded.load("auto_termination", "policy_in_place", check_params=False)

    code, out, _ = cli(capsys, "up", "-c", str(path), "--jupyter", "--timeout", "1", "--poll", "0")
    assert code == 0
    state = emr.RunState.load()
    master = aws.client("emr").describe_cluster(ClusterId=state.cluster_id)["Cluster"]["MasterPublicDnsName"]
    assert f"ssh -i ~/.ssh/orchard-key.pem -N -L 9443:localhost:9443 hadoop@{master}" in out
    assert "https://localhost:9443" in out and f"cluster {state.cluster_id} WAITING" in out
    assert fs.read_bytes(f"s3://{BUCKET}/jupyter/jovyan/walkthrough.ipynb", aws.storage) == b'{"cells": []}'
    assert state.hourly_estimate == pytest.approx(emr_cost.estimate(emr_config.load_config(path)).hourly)
    code, _, err = cli(capsys, "up", "-c", str(path))
    assert code == 2 and f"cluster {state.cluster_id} of run {state.run_id} is still WAITING" in err

    recorded.load("auto_termination", "policy_in_place", cluster_id=state.cluster_id)
    code, out, _ = cli(capsys, "status")
    assert code == 0 and f"cluster {state.cluster_id} in {REGION} WAITING" in out
    assert "idle timeout 30 min" in out and "USD so far (estimate)" in out

    recorded.load("step_completed", check_params=False)
    code, out, _ = cli(capsys, "run", "-c", str(path), "--timeout", "1", "--poll", "0")
    assert code == 0
    state = emr.RunState.load()
    assert len(state.steps) == 1 and f"added step {state.steps[0]} to cluster {state.cluster_id}" in out
    assert [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")] == [
        f"step {state.steps[0]} {s}, 0 shard(s) committed" for s in ("PENDING", "RUNNING", "COMPLETED")]
    assert "completed: results in s3://orchard-test-eu/out/fruits" in out
    step = aws.client("emr").list_steps(ClusterId=state.cluster_id)["Steps"][0]
    assert step["Config"]["Args"][:6] == ["spark-submit", "--master", "yarn", "--deploy-mode", "cluster", "--name"]

    code, _, err = cli(capsys, "download", str(tmp_path / "results"))
    assert code == 2 and "does not exist (yet)" in err  # moto's step never wrote anything

    code, out, _ = cli(capsys, "down")
    assert code == 0 and f"terminating cluster {state.cluster_id}" in out
    assert aws.client("emr").describe_cluster(ClusterId=state.cluster_id)["Cluster"]["Status"]["State"] == "TERMINATED"
    assert emr.RunState.load().terminated
    recorded.stubber.assert_no_pending_responses()


@pytest.mark.e2e
def test_cli_run_creates_a_cluster_when_there_is_none_and_reports_a_failed_step(aws, tmp_path, wheel, capsys,
                                                                                 monkeypatch):
    make_bucket(aws)
    path = write_config(tmp_path, f'wheel = "{wheel}"')
    recorded = RecordedEmr(aws.client("emr"))
    use_clients(monkeypatch, emr=recorded)
    recorded.load("auto_termination", "policy_in_place", check_params=False)
    recorded.load("step_failed", check_params=False, bucket=BUCKET)
    code, out, err = cli(capsys, "run", "-c", str(path), "--terminate-after", "--timeout", "1", "--poll", "0")
    assert code == 1
    state = emr.RunState.load()
    cluster = aws.client("emr").describe_cluster(ClusterId=state.cluster_id)["Cluster"]
    assert cluster["AutoTerminate"] is True  # a new cluster with --terminate-after ends by itself
    assert f"created cluster {state.cluster_id}" in out and "FAILED: Unknown error." in err
    assert "no logs in S3 yet" in out  # EMR had not copied any

    # logs arrive: `orchard emr logs` reads the step's stderr (recorded failure points at it) and the driver's
    logs = f"s3://{BUCKET}/orchard/logs/{state.cluster_id}"
    application = "application_1763800000000_0001"
    step_stderr = f"INFO Client: Submitted application {application}\nException: {application} failed\n"
    driver_stderr = "Traceback (most recent call last):\norchard: error: input s3://... has no images\n"
    put_gzipped(f"{logs}/steps/{state.steps[0]}/stderr.gz", step_stderr)
    put_gzipped(f"{logs}/steps/{state.steps[0]}/controller.gz", "controller\n")
    put_gzipped(f"{logs}/containers/{application}/container_1763800000000_0001_01_000001/stderr.gz", driver_stderr)
    put_gzipped(f"{logs}/containers/{application}/container_1763800000000_0001_01_000002/stderr.gz", "executor\n")
    recorded.load("step_failed", cluster_id=state.cluster_id, step_id=state.steps[0], bucket=BUCKET)
    code, out, _ = cli(capsys, "logs", "--lines", "1")
    assert code == 0
    assert out.splitlines() == [
        f"==> {logs}/steps/{state.steps[0]}/stderr.gz <==", f"Exception: {application} failed",
        f"==> {logs}/containers/{application}/container_1763800000000_0001_01_000001/stderr.gz <==",
        "orchard: error: input s3://... has no images"]
    recorded.stubber.assert_no_pending_responses()


@pytest.mark.e2e
def test_down_all_terminates_only_orchard_clusters(aws, tmp_path, capsys):
    live = aws.client("emr")
    config = emr_config.load_config(write_config(tmp_path))
    artifacts = emr.Artifacts(config.run_uri(RUN_ID), "unused")
    ours = [live.run_job_flow(**emr.job_flow_request(config, run, artifacts))["JobFlowId"] for run in ("r1", "r2")]
    theirs = live.run_job_flow(Name="someone-else", ReleaseLabel="emr-7.13.0", Instances={
        "InstanceGroups": [{"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1}],
        "KeepJobFlowAliveWhenNoSteps": True}, JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole")["JobFlowId"]
    code, out, _ = cli(capsys, "down", "--all", "--region", REGION)
    assert code == 0 and "terminating 2 orchard cluster(s)" in out
    states = {cid: live.describe_cluster(ClusterId=cid)["Cluster"]["Status"]["State"] for cid in [*ours, theirs]}
    assert states == {ours[0]: "TERMINATED", ours[1]: "TERMINATED", theirs: "WAITING"}
    code, out, _ = cli(capsys, "down", "--all", "--region", REGION)
    assert "terminating 0 orchard cluster(s)" in out


# --- doctor and bucket ----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_doctor_finds_every_problem(aws, tmp_path):
    config = emr_config.load_config(write_config(tmp_path))
    s3 = aws.client("s3")
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    live = aws.client("emr")
    orchard_cluster = live.run_job_flow(**emr.job_flow_request(
        config, RUN_ID, emr.Artifacts(config.run_uri(RUN_ID), "unused")))["JobFlowId"]
    later = datetime.now(UTC) + timedelta(hours=5)
    findings = doctor.doctor(aws, config, now=later)
    by_check = {}
    for finding in findings:
        by_check.setdefault(finding.check, []).append(finding)
    assert by_check["credentials"][0].level == "ok" and "account 123456789012" in by_check["credentials"][0].detail
    assert by_check["region"][0].level == "ok"
    assert by_check["bucket"][0].level == "ok"
    assert by_check["bucket region"][0].level == "fail" and "is in eu-west-1, the cluster in eu-west-3" in by_check[
        "bucket region"][0].detail
    assert by_check["public access"][0].level == "fail"
    assert by_check["encryption"][0].level == "fail" and "no default encryption" in by_check["encryption"][0].detail
    assert by_check["input"][0].level == "fail" and "nothing under s3://orchard-test-eu/fruits/Training" in by_check[
        "input"][0].detail
    assert [f.level for f in by_check["service role"] + by_check["instance profile"]] == ["fail", "fail"]
    assert len(by_check["cluster"]) == 1 and by_check["cluster"][0].level == "warn"
    assert f"{orchard_cluster} orchard-{RUN_ID} WAITING for 5.0 h (orchard run {RUN_ID}); forgotten?" in by_check[
        "cluster"][0].detail

    s3.put_public_access_block(Bucket=BUCKET, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False, "RestrictPublicBuckets": True})
    finding = doctor.check_bucket(aws, BUCKET, REGION)[2]
    assert finding.level == "fail" and "Block Public Access off: BlockPublicPolicy;" in finding.detail
    assert doctor.check_bucket(aws, "no-such-bucket-eu", REGION)[0].detail.startswith(
        "s3://no-such-bucket-eu does not exist; create it with `orchard emr bucket no-such-bucket-eu")
    assert doctor.doctor(aws, emr_config.parse_config(
        {"bucket": BUCKET, "input": "s3://x-eu/i", "output": "s3://x-eu/o", "region": "us-east-1"}))[1].level == "fail"


@pytest.mark.e2e
def test_bucket_command_then_doctor_passes(aws, tmp_path, capsys):
    code, out, _ = cli(capsys, "bucket", BUCKET, "--region", REGION, "--log-expiry-days", "14")
    assert code == 0 and f"created s3://{BUCKET} in {REGION}" in out
    s3 = aws.client("s3")
    assert s3.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == REGION
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(doctor.PUBLIC_ACCESS_FLAGS, True)
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    policy = json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert rules["orchard-expire-logs"]["Expiration"] == {"Days": 14}
    assert rules["orchard-expire-logs"]["Filter"] == {"Prefix": "orchard/logs/"}
    assert s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"][0]["Key"] == "orchard:run"
    code, out, _ = cli(capsys, "bucket", BUCKET, "--region", REGION)
    assert code == 0 and "already exists and is yours" in out

    iam = aws.client("iam")
    for role in ("EMR_DefaultRole", "EMR_EC2_DefaultRole"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=(REPO / "deploy" / "iam" /
                                                                 "emr-ec2-role-trust.json").read_text())
    iam.create_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")
    s3.delete_bucket_policy(Bucket=BUCKET)  # TLS only: moto serves plain HTTP (the doctor does not need it)
    put(f"s3://{BUCKET}/fruits/Training/Apple/0.jpg", b"jpeg", aws.storage)
    code, out, _ = cli(capsys, "doctor", "-c", str(write_config(tmp_path)))
    assert code == 0 and out.splitlines()[-1] == "ready for orchard emr"
    assert "[OK  ] encryption: default encryption AES256" in out and "no active EMR cluster in eu-west-3" in out


@pytest.mark.pure
def test_deploy_policies_are_valid_and_scoped_to_the_bucket():
    folder = REPO / "deploy" / "iam"
    documents = {path.name: json.loads(path.read_text()) for path in folder.glob("*.json")}
    assert set(documents) == {"cli-user-policy.json", "emr-service-role-trust.json", "emr-service-role-passrole.json",
                              "emr-ec2-role-trust.json", "emr-ec2-role-policy.json",
                              "serverless-job-role-trust.json", "serverless-job-role-policy.json"}
    for name in ("emr-ec2-role-policy.json", "serverless-job-role-policy.json"):
        resources = [r for s in documents[name]["Statement"] for r in ([s["Resource"]] if isinstance(
            s["Resource"], str) else s["Resource"])]
        assert all("ORCHARD_BUCKET" in r or "elasticmapreduce" in r for r in resources)
        assert "*" not in {s["Action"] if isinstance(s["Action"], str) else "" for s in documents[name]["Statement"]}
    cli_policy = {s["Sid"]: s for s in documents["cli-user-policy.json"]["Statement"]}
    assert cli_policy["CreateOnlyTaggedClusters"]["Condition"] == {"Null": {"aws:RequestTag/orchard:run": "false"}}
    assert cli_policy["ChangeOnlyOrchardClusters"]["Condition"] == {"Null": {"aws:ResourceTag/orchard:run": "false"}}


# --- serverless -----------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_serverless_application_job_run_status_logs_down(aws, tmp_path, capsys, monkeypatch):
    make_bucket(aws)
    archive = tmp_path / "orchard-env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("bin/python")
        tar.addfile(info, io.BytesIO(b""))
    role = "arn:aws:iam::123456789012:role/orchard-serverless-job"
    table = f'\n[serverless]\nexecution_role_arn = "{role}"\narchive = "{archive}"\nmax_vcpu = 16\n'
    default = emr_config.load_config(write_config(tmp_path, text=CONFIG + table))
    assert serverless.application_request(default, RUN_ID)["releaseLabel"] == "emr-spark-8.1.0"  # the default
    # moto 5.2.5's create_application accepts only labels like emr-X.Y.0 (regex emr-[0-9]\.[0-9]{1,2}\.0) and
    # refuses emr-spark-8.1.0, so this run names emr-7.13.0 in [serverless] (the default is checked just above).
    path = write_config(tmp_path, text=CONFIG + table + 'release_label = "emr-7.13.0"\n')
    client = boto3.client("emr-serverless", region_name=REGION)
    created, started = capture(client, "emr-serverless.CreateApplication"), capture(client,
                                                                                    "emr-serverless.StartJobRun")
    use_clients(monkeypatch, **{"emr-serverless": client})
    code, out, _ = cli(capsys, "run", "-c", str(path), "--target", "serverless", "--timeout", "1", "--poll", "0")
    assert code == 0 and "job run succeeded" in out  # moto finishes job runs at once
    state = emr.RunState.load()
    run_id, base = state.run_id, f"s3://{BUCKET}/orchard/{state.run_id}"
    assert created == [{"name": f"orchard-{run_id}", "releaseLabel": "emr-7.13.0", "type": "SPARK",
                        "architecture": "X86_64", "maximumCapacity": {"cpu": "16 vCPU", "memory": "128 GB"},
                        "autoStartConfiguration": {"enabled": True},
                        "autoStopConfiguration": {"enabled": True, "idleTimeoutMinutes": 30},
                        "tags": {"orchard:run": run_id}}]
    python = "./environment/bin/python"
    assert started == [{
        "applicationId": state.application_id, "executionRoleArn": role, "name": f"orchard run {run_id}",
        "jobDriver": {"sparkSubmit": {
            "entryPoint": f"{base}/driver.py",
            "entryPointArguments": ["--weights-from", f"s3://{BUCKET}/models/{KERAS_FILE}", "run",
                                    f"s3://{BUCKET}/fruits/Training", "--output", f"s3://{BUCKET}/out/fruits",
                                    "--s3-region", REGION, "--k", "50"],
            "sparkSubmitParameters": f"--conf spark.archives={base}/orchard-env.tar.gz#environment "
                                     f"--conf spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON={python} "
                                     f"--conf spark.emr-serverless.driverEnv.PYSPARK_PYTHON={python} "
                                     f"--conf spark.executorEnv.PYSPARK_PYTHON={python}"}},
        "configurationOverrides": {"monitoringConfiguration": {"s3MonitoringConfiguration": {
            "logUri": f"s3://{BUCKET}/orchard/logs/serverless/"}}},
        "executionTimeoutMinutes": 180, "tags": {"orchard:run": run_id}}]
    uploaded = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=f"orchard/{run_id}/orchard-env"
                                                                                     ".tar.gz")["Body"].read()
    assert uploaded == archive.read_bytes()  # byte for byte (not re-compressed)

    code, out, _ = cli(capsys, "status")
    assert code == 0 and f"application {state.application_id} in {REGION} STARTED" in out
    assert f"job run {state.job_runs[0]}: SUCCESS" in out
    driver_logs = (f"s3://{BUCKET}/orchard/logs/serverless/applications/{state.application_id}/jobs/"
                   f"{state.job_runs[0]}/SPARK_DRIVER")
    put_gzipped(f"{driver_logs}/stderr.gz", "line 1\norchard: wrote 4 images\n")
    code, out, _ = cli(capsys, "logs", "--lines", "1")
    assert out.splitlines() == [f"==> {driver_logs}/stderr.gz <==", "orchard: wrote 4 images"]
    code, out, _ = cli(capsys, "down")
    assert code == 0 and f"stopped and deleted EMR Serverless application {state.application_id}" in out
    assert client.get_application(applicationId=state.application_id)["application"]["state"] == "TERMINATED"


# --- on the cluster: the driver, and results coming back -------------------------------------------------------------


@pytest.mark.pure
def test_the_uploaded_driver_script_hands_its_arguments_to_the_cli(tmp_path):
    """driver.py wires the CLI into emr_driver.main itself (emr_driver imports no CLI: no import circle)."""
    script = tmp_path / "driver.py"
    script.write_text(emr_driver.SCRIPT)
    done = subprocess.run([sys.executable, str(script), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: orchard run"), done.stderr[-2000:]
    done = subprocess.run([sys.executable, str(script), "run", "s3://b/in", "--output", "s3://b/out", "--k", "5000"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip() == "orchard: error: --k must be between 1 and the feature size 1280, got 5000"


@pytest.mark.e2e
def test_driver_fetches_weights_from_s3(aws, tmp_path, monkeypatch, capsys):
    make_bucket(aws)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    put(f"s3://{BUCKET}/models/{KERAS_FILE}", b"imagenet weights bytes", aws.storage)
    put(f"s3://{BUCKET}/models/mine.h5", b"my weights", aws.storage)
    assert emr_driver.fetch_weights(f"s3://{BUCKET}/models/{KERAS_FILE}", aws.storage) == "imagenet"
    assert (tmp_path / "keras" / "models" / KERAS_FILE).read_bytes() == b"imagenet weights bytes"
    mine = emr_driver.fetch_weights(f"s3://{BUCKET}/models/mine.h5", aws.storage)
    assert mine.endswith("/mine.h5") and Path(mine).read_bytes() == b"my weights"
    assert emr_driver.main(["--weights-from", f"s3://{BUCKET}/models/absent.h5", "run", "x", "--output", "y"],
                           main) == 2
    assert "cannot copy the weights file s3://orchard-test-eu/models/absent.h5" in capsys.readouterr().err


@pytest.mark.e2e
def test_driver_runs_orchard_and_download_verifies_the_results(aws, tmp_path, spark, capsys):
    make_bucket(aws)
    collection, out = tmp_path / "fruits", tmp_path / "out"
    make_sample(collection, SampleSpec(classes=3, train_per_class=6, test_per_class=2, seed=3))
    code = emr_driver.main(["run", str(collection), "--output", str(out), "--weights", "random", "--k", "4",
                            "--no-progress"], main)
    assert code == 0 and (out / "_SUCCESS").is_file()
    output = f"s3://{BUCKET}/out/fruits"
    target_fs, target_path = fs.filesystem_and_path(output, aws.storage)
    pafs.copy_files(str(out), target_path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target_fs)
    emr.RunState(run_id=RUN_ID, region=REGION, bucket=BUCKET, prefix="orchard", output=output,
                 created="2026-11-22T10:00:00+00:00", cluster_id="j-DONE").save()
    capsys.readouterr()
    code, out_text, _ = cli(capsys, "download")
    local = tmp_path / "results" / RUN_ID
    assert code == 0 and f"to results/{RUN_ID}" in out_text
    assert out_text.splitlines()[-1] == f"results/{RUN_ID}: verified"
    original = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == original
    assert (local / "run.json").read_bytes() == (out / "run.json").read_bytes()
    code, _, err = cli(capsys, "download")
    assert code == 2 and "already exists and is not empty" in err
