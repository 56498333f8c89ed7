"""The CLI as a user meets it: help text, one-line errors, a real run in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchard.cli import build_parser


def orchard(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "orchard.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_run_help_documents_every_option():
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    help_text = run_parser.format_help()
    for action in run_parser._actions:
        for flag in action.option_strings:
            assert flag in help_text
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"


@pytest.mark.parametrize("args, message", [
    (["run", "x", "--output", "y", "--k", "3", "--variance", "0.9"], "not allowed with argument"),
    (["run", "x", "--output", "y", "--limit", "0"], "--limit must be at least 1"),
    (["run", "x", "--output", "y", "--variance", "1.5"], "--variance must be in (0, 1]"),
    (["run", "x", "--output", "y", "--conf", "novalue"], "--conf expects key=value"),
])
def test_user_mistakes_are_one_line_without_traceback(args, message):
    result = orchard(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("orchard")]) == 1


def test_missing_input_and_weights_are_one_line_errors(tmp_path):
    result = orchard("run", str(tmp_path / "absent"), "--output", str(tmp_path / "out"), "--weights", "random")
    assert result.returncode == 2, result.stderr
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "in" / "a").mkdir(parents=True)
    result = orchard("run", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--weights", str(tmp_path / "none.h5"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


def test_sample_then_run_prints_a_summary(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    made = orchard("sample", str(data), "--classes-count", "3", "--train-per-class", "6", "--test-per-class", "2")
    assert made.returncode == 0 and "wrote 24 images" in made.stdout
    result = orchard("run", str(data), "--output", str(out), "--weights", "random", "--k", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "images 24  classes 3  ok 24  errors 0" in result.stdout
    assert "WARNING: RANDOM weights" in result.stdout
    assert "featurising 24/24 images" in result.stderr  # progress
    assert json.loads((out / "run.json").read_text())["pca"]["k"] == 4
    again = orchard("run", str(data), "--output", str(out), "--weights", "random")
    assert again.returncode == 2 and "already holds a finished run" in again.stderr


def test_demo_without_imagenet_weights_says_features_are_not_meaningful(tmp_path):
    result = orchard("demo", "--directory", str(tmp_path / "sample"), "--output", str(tmp_path / "out"),
                     "--classes-count", "3", "--train-per-class", "5", "--test-per-class", "2", "--k", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DEMO WITH RANDOM WEIGHTS" in result.stderr and "NOT meaningful" in result.stderr
    assert "images 21  classes 3  ok 21  errors 0" in result.stdout
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["model"]["weights"] == "random"
