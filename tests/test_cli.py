"""The CLI as a user meets it: help text, one-line errors, a real run in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import orchard

from orchard.cli import build_parser


@pytest.mark.pure
def test_run_help_documents_every_option():
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    help_text = run_parser.format_help()
    for action in run_parser._actions:
        for flag in action.option_strings:
            assert flag in help_text
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"


@pytest.mark.pure
@pytest.mark.parametrize("args, message", [
    (["run", "x", "--output", "y", "--k", "3", "--variance", "0.9"], "not allowed with argument"),
    (["run", "x", "--output", "y", "--limit", "0"], "--limit must be at least 1"),
    (["run", "x", "--output", "y", "--variance", "1.5"], "--variance must be in (0, 1]"),
    (["run", "x", "--output", "y", "--conf", "novalue"], "--conf expects key=value"),
    (["run", "x", "--output", "y", "--k", "5000"], "--k must be between 1 and the feature size 1280, got 5000"),
])
def test_user_mistakes_are_one_line_without_traceback(args, message):
    result = orchard(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("orchard")]) == 1


@pytest.mark.pure
def test_engine_mistakes_are_one_line_errors_naming_the_fix(tmp_path):
    """A Connect server that is not there (named, without waiting for retries), and a --master that is not one."""
    from infra import free_port

    (tmp_path / "in" / "a").mkdir(parents=True)
    port = free_port()  # nothing listens there
    result = orchard("run", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", "random",
                     "--remote", f"sc://127.0.0.1:{port}/;token=secret-never-printed")
    assert result.returncode == 2, result.stderr
    assert f"cannot reach the Spark Connect server at sc://127.0.0.1:{port}" in result.stderr
    assert "secret-never-printed" not in result.stderr and "Traceback" not in result.stderr
    result = orchard("run", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--master", "local[two]")
    assert result.returncode == 2 and "--master local[two] is not a Spark master URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written for a mistake


@pytest.mark.spark
def test_folder_mistakes_are_one_line_errors(tmp_path):
    """A folder with no image orchard reads (empty, or only videos and notes) and an --output that is a file."""
    empty, videos = tmp_path / "empty", tmp_path / "videos" / "Training" / "Apple"
    empty.mkdir()
    videos.mkdir(parents=True)
    (videos / "IMG_0001.MOV").write_bytes(b"\0\0\0\x18ftypqt  ")
    (videos / "notes.txt").write_text("picked on Tuesday")
    for folder, skipped in ((empty, ""), (tmp_path / "videos", " (skipped 2 files: ")):
        result = orchard("run", str(folder), "--output", str(tmp_path / "out"), "--weights", "random")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "no images (jpg, jpeg, png" in result.stderr and "Traceback" not in result.stderr
        assert skipped in result.stderr and "heic" in result.stderr
    assert "not an image format orchard reads (.mov): 1" in result.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    (tmp_path / "a-file").write_text("keep me")
    result = orchard("run", str(tmp_path / "videos"), "--output", str(tmp_path / "a-file"), "--weights", "random")
    assert result.returncode == 2 and "is a file: give a folder" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "a-file").read_text() == "keep me"
    for output, message in ((tmp_path / "a-file" / "out", "a-file is a file; give a folder path"),
                            (Path("/sys/orchard-test-output"), "cannot be written (")):  # refused even to root
        result = orchard("run", str(tmp_path / "videos"), "--output", str(output), "--weights", "random")
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.pure
def test_an_unsupported_pyspark_is_named_with_the_install_line(monkeypatch):
    import pyspark

    from orchard.errors import ConfigError
    from orchard.spark import _builder

    monkeypatch.setattr(pyspark, "__version__", "3.4.1")
    with pytest.raises(ConfigError, match=r"pyspark 3\.4\.1 is not supported: install 3\.5\.x or 4\.x"):
        _builder(connect=False)
    monkeypatch.setattr(pyspark, "__version__", "3.5.9")
    with pytest.raises(ConfigError, match=re.escape("Spark Connect needs pyspark 4.x, this is 3.5.9")):
        _builder(connect=True)


@pytest.mark.spark
def test_missing_input_and_weights_are_one_line_errors(tmp_path):
    result = orchard("run", str(tmp_path / "absent"), "--output", str(tmp_path / "out"), "--weights", "random")
    assert result.returncode == 2, result.stderr
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "in" / "a").mkdir(parents=True)
    result = orchard("run", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--weights", str(tmp_path / "none.h5"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.spark
def test_sample_then_run_prints_a_summary(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    made = orchard("sample", str(data), "--classes-count", "3", "--train-per-class", "6", "--test-per-class", "2")
    assert made.returncode == 0 and "wrote 24 images" in made.stdout
    result = orchard("run", str(data), "--output", str(out), "--weights", "random", "--k", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "images 24  classes 3  ok 24  errors 0" in result.stdout
    assert "WARNING: RANDOM weights" in result.stdout
    assert "featurised 24/24 images (100.0%)" in result.stderr  # progress, its final line
    assert json.loads((out / "run.json").read_text())["pca"]["k"] == 4
    again = orchard("run", str(data), "--output", str(out), "--weights", "random")
    assert again.returncode == 2 and "already holds a finished run" in again.stderr


@pytest.mark.spark
def test_credentials_in_spark_settings_are_written_nowhere(tmp_path):
    """Sentinel secrets in --conf (by key, and by a value that looks like a token) and in the environment never
    reach run.json, the report, the classifier, an EMR plan, any other file written or the terminal; other
    settings are kept."""
    data, out, home = tmp_path / "data", tmp_path / "out", tmp_path / "home"
    assert orchard("sample", str(data), "--classes-count", "2", "--train-per-class", "4",
                   "--test-per-class", "2").returncode == 0
    sentinels = ["sentinel-s3a-secret-1", "sentinel-password-2", "sentinel-token-value-3", "sentinel-env-key-4",
                 "sentinel-session-token-5", "AKIASENTINEL0000006X"]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "AWS_SECRET_ACCESS_KEY": sentinels[3], "AWS_SESSION_TOKEN": sentinels[4], "AWS_ACCESS_KEY_ID": sentinels[5]}
    secret_conf = ["--conf", f"spark.hadoop.fs.s3a.secret.key={sentinels[0]}",
                   "--conf", f"spark.orchard.test.password={sentinels[1]}",
                   "--conf", f"spark.orchard.test.header=Bearer token {sentinels[2]}"]

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchard.cli", *args], capture_output=True, text=True,
                              timeout=300, env=env, cwd=home)

    home.mkdir()
    run = command("run", str(data), "--output", str(out), "--weights", "random", "--k", "2", *secret_conf,
                  "--conf", "spark.sql.shuffle.partitions=4")
    assert run.returncode == 0, run.stderr[-2000:]
    report = command("report", str(out))
    assert report.returncode == 0, report.stderr[-2000:]
    train = command("train", str(out), *secret_conf)
    assert train.returncode == 0, train.stderr[-2000:]
    mistake = command("run", str(data), "--output", str(out), *secret_conf)  # refused: a finished run is there
    assert mistake.returncode == 2 and "already holds a finished run" in mistake.stderr
    example = (Path(__file__).parent.parent / "deploy" / "emr.example.toml").read_text()
    (home / "emr.toml").write_text(example)
    plan = command("emr", "plan", "-c", "emr.toml", "--json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    original = next(line for line in example.splitlines() if line.startswith("run_args ="))
    leaky = tmp_path / "leaky.toml"  # the test's own file, outside the scanned folders
    leaky.write_text(example.replace(original, "run_args = " + json.dumps(["--k", "4", *secret_conf[:2]])))
    refused = command("emr", "plan", "-c", str(leaky))
    assert refused.returncode == 2 and "run_args sets spark.hadoop.fs.s3a.secret.key, a credential" in refused.stderr

    written = [path for folder in (out, home) for path in folder.rglob("*") if path.is_file()]
    assert any(path.name == "index.html" for path in written) and any(p.parent.name == "classifier" for p in written)
    printed = "".join(done.stdout + done.stderr for done in (run, report, train, mistake, plan, refused))
    assert "Traceback" not in printed
    for sentinel in sentinels:
        assert sentinel not in printed, sentinel
        assert not [path for path in written if sentinel.encode() in path.read_bytes()], sentinel
    conf = json.loads((out / "run.json").read_text())["config"]["spark"]["conf"]
    assert conf["spark.hadoop.fs.s3a.secret.key"] == conf["spark.orchard.test.header"] == "*********(redacted)"
    assert conf["spark.sql.shuffle.partitions"] == "4"


@pytest.mark.pure
def test_error_messages_lose_every_credential_value():
    from orchard.config import REDACTED, credential_settings, scrub, secret_values

    args = ["run", "x", "--conf", "spark.hadoop.fs.s3a.secret.key=abcd1", "--conf=spark.a.password=efgh2",
            "--remote", "sc://h:1/;token=ijkl3", "--conf", "spark.sql.shuffle.partitions=4"]
    secrets = secret_values(args, {"AWS_SESSION_TOKEN": "mnop4", "HOME": "/root"})
    assert sorted(secrets) == ["abcd1", "efgh2", "ijkl3", "mnop4"]
    message = scrub("abcd1 efgh2 ijkl3 mnop4 AKIAIOSFODNN7EXAMPLE partitions 4 /root", secrets)
    assert message == " ".join([REDACTED] * 5) + " partitions 4 /root"
    assert credential_settings(args) == ["spark.hadoop.fs.s3a.secret.key", "spark.a.password", "--remote parameters"]


@pytest.mark.pure
def test_a_connect_url_keeps_its_address_and_loses_its_token():
    from orchard.config import REDACTED, redact_url

    assert redact_url("sc://host:15002/;token=abc;use_ssl=true") == f"sc://host:15002/;token={REDACTED};use_ssl={REDACTED}"
    assert redact_url("sc://host:15002") == "sc://host:15002"


@pytest.mark.spark
def test_demo_without_imagenet_weights_says_features_are_not_meaningful(tmp_path):
    result = orchard("demo", "--directory", str(tmp_path / "sample"), "--output", str(tmp_path / "out"),
                     "--classes-count", "3", "--train-per-class", "5", "--test-per-class", "2", "--k", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DEMO WITH RANDOM WEIGHTS" in result.stderr and "NOT meaningful" in result.stderr
    assert "images 21  classes 3  ok 21  errors 0" in result.stdout
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["model"]["weights"] == "random"


@pytest.mark.spark
def test_hidden_names_heic_photos_and_other_files_are_all_accounted_for(tmp_path):
    """_DSC camera names and HEIC photos are featurised; .DS_Store, notes and the run's own output (inside the
    input, rerun with --overwrite) are skipped, counted by reason and listed in skipped/paths.csv."""
    from conftest import textured
    from test_preprocess import heic_bytes

    data, out = tmp_path / "data", tmp_path / "data" / "out"
    made = orchard("sample", str(data), "--classes-count", "2", "--train-per-class", "3", "--test-per-class", "1")
    assert made.returncode == 0, made.stderr
    apple = next(p for p in (data / "Training").iterdir() if p.is_dir())
    first = sorted(apple.glob("*.jpg"))[0]
    (apple / "_DSC0001.jpg").write_bytes(first.read_bytes())
    (apple / "IMG_0002.HEIC").write_bytes(heic_bytes(textured(100, 100, seed=3)))
    (apple / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (apple / "notes.txt").write_text("picked on Tuesday")
    for attempt in range(2):  # the second run meets the first one's output inside its input
        result = orchard("run", str(data), "--output", str(out), "--weights", "random", "--k", "3",
                         *(["--overwrite"] if attempt else []))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "images 10  classes 2  ok 10  errors 0" in result.stdout
        info = json.loads((out / "run.json").read_text())
        by_reason = info["counts"]["skipped_by_reason"]
        assert by_reason["hidden (a name starting with '.')"] == 1
        assert by_reason["not an image format orchard reads (.txt)"] == 1
        assert ("WARNING: an orchard output lies inside the input" in result.stdout) == (attempt == 1)
    inside = f"inside the orchard output file:{out}"
    assert by_reason[inside] >= 10  # run.json, _SUCCESS, the datasets' parts...
    assert info["counts"]["skipped"] == sum(by_reason.values())
    assert f"skipped {info['counts']['skipped']} files" in result.stdout and "skipped/paths.csv" in result.stdout
    listed = (out / "skipped" / "paths.csv").read_text().splitlines()
    assert listed[0] == "path,reason" and len(listed) == 1 + info["counts"]["skipped"]
    assert any(line.endswith("/notes.txt,not an image format orchard reads (.txt)") for line in listed)


@pytest.mark.pure
def test_storage_that_keeps_failing_on_the_driver_is_one_line(monkeypatch, capsys):
    """A read on the driver (int8 calibration samples images there) that fails after every retry: one line,
    exit 2, the way to resume; never a traceback."""
    from orchard import cli
    from orchard.errors import TRANSIENT_MARK, TransientReadError

    def throttled(args):
        raise TransientReadError(f"{TRANSIENT_MARK} reading s3://b/in/1.jpg failed 4 times (503 SlowDown)",
                                 "s3://b/in/1.jpg", 4)

    monkeypatch.setitem(cli.COMMANDS, "run", throttled)
    assert cli.main(["run", "s3://b/in", "--output", "s3://b/out"]) == 2
    assert capsys.readouterr().err == (f"orchard: error: {TRANSIENT_MARK} reading s3://b/in/1.jpg failed 4 times "
                                       "(503 SlowDown); rerun the same command to resume\n")


# What a cold start of a cheap command must not pay for: the inference stack, Spark, the data libraries, AWS.
INFERENCE = ("onnxruntime", "onnx", "cv2", "simplejpeg", "PIL", "pillow_heif", "matplotlib", "fastapi", "uvicorn")
DATA_AND_SPARK = ("pandas", "pyspark", "py4j", "boto3")
EVERYTHING_HEAVY = (*INFERENCE, *DATA_AND_SPARK, "pyarrow", "numpy", "botocore")
IMPORTS_AFTER = """
import json, sys
from orchard.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


@pytest.mark.pure
@pytest.mark.parametrize(("args", "shows", "heavy"), [
    (["--help"], "usage: orchard", EVERYTHING_HEAVY),
    (["train", "--help"], "--features {pca,raw}", EVERYTHING_HEAVY),
    (["run", "--help"], "--precision", EVERYTHING_HEAVY),
    (["emr", "plan", "--help"], "usage: orchard emr plan", EVERYTHING_HEAVY),
    (["emr", "plan", "-c", str(Path(__file__).parent.parent / "deploy" / "emr.example.toml")],
     "total per hour (estimate)", EVERYTHING_HEAVY),
])
def test_cheap_commands_import_no_heavy_module(args, shows, heavy):
    """The modules loaded once the command has run (sys.modules in a fresh interpreter)."""
    done = subprocess.run([sys.executable, "-c", IMPORTS_AFTER, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"})
    *printed, last = done.stdout.splitlines()
    report = json.loads(last)
    assert report["code"] in (0, None) and shows in "\n".join(printed), done.stderr[-2000:]
    assert sorted(set(report["modules"]) & set(heavy)) == []


@pytest.mark.pure
def test_the_spark_submit_line_names_a_script_that_runs_orchard(tmp_path):
    """`orchard package` prints a spark-submit line whose script is the installed CLI (cloud/ finds it without
    importing the CLI above it); that script runs `orchard` as a plain file, as spark-submit runs it."""
    import shlex

    from orchard import __version__
    from orchard.cloud.package import submit_command

    parts = shlex.split(submit_command(tmp_path / "env.tar.gz", "yarn", ["s3://b/in", "--output", "s3://b/out"]))
    script = Path(parts[parts.index("run") - 1])
    assert script.name == "__main__.py" and script.parent.name == "cli" and script.is_file()
    done = subprocess.run([sys.executable, str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"orchard {__version__}"), done.stderr[-2000:]
