"""notebooks/walkthrough.ipynb, executed headless on a small generated sample, and stored without outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
KERNEL = "orchard-venv"
CELL_TIMEOUT_S = 300


def kernel_spec_dir(root: Path) -> Path:
    """A Jupyter data folder whose one kernel runs this interpreter (the project's venv)."""
    folder = root / "kernels" / KERNEL
    folder.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "orchard (venv)", "language": "python"}
    (folder / "kernel.json").write_text(json.dumps(spec))
    return root


def text_of(cell) -> str:
    """Everything a code cell printed or displayed as text."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


@pytest.fixture(scope="module")
def executed(tmp_path_factory, connect_url):
    """The notebook run top to bottom in a fresh kernel; the test fails on the first failing cell."""
    root = tmp_path_factory.mktemp("notebook")
    work = root / "work"
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}  # keep the inline backend
    env.update({
        "ORCHARD_NOTEBOOK_DIR": str(work), "ORCHARD_WEIGHTS": "random",
        "MASTER": "local[2]",  # what a cluster's spark-defaults.conf does, through the same session factory
        "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
        "JUPYTER_PATH": str(kernel_spec_dir(root / "jupyter")),
    })
    if connect_url:  # the notebook on the suite's Spark Connect server, as a user sets it up
        env.pop("MASTER")
        env["SPARK_REMOTE"] = connect_url
    env.pop("ORCHARD_NOTEBOOK_INPUT", None)
    env.pop("ORCHARD_NOTEBOOK_OUTPUT", None)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]  # where the client looks the kernel up
    try:
        client = NotebookClient(notebook, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                                resources={"metadata": {"path": str(root)}})
        client.execute(env=env)
    finally:
        if previous is None:
            os.environ.pop("JUPYTER_PATH")
        else:
            os.environ["JUPYTER_PATH"] = previous
    return notebook, work, connect_url


@pytest.mark.e2e
def test_walkthrough_runs_and_shows_the_run(executed):
    notebook, work, connect_url = executed
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    printed = "\n".join(text_of(cell) for cell in code)

    generated = sorted((work / "fruits").rglob("*.jpg"))
    info = json.loads((work / "out" / "run.json").read_text())
    assert (work / "out" / "_SUCCESS").exists()
    assert info["counts"]["listed"] == info["counts"]["ok"] == len(generated) > 0
    if connect_url:
        assert info["spark"]["engine"] == "connect" and info["spark"]["remote"] == connect_url
    else:
        assert info["spark"]["engine"] == "classic" and info["spark"]["master"] == "local[2]"
    assert f"generated {len(generated)} images" in printed
    assert f"images {len(generated)}  classes {info['counts']['classes']}  ok {len(generated)}  errors 0" in printed
    assert f"listed {len(generated)}: ok {len(generated)}, errors 0; PCA k={info['pca']['k']}" in printed
    assert "WARNING: ORCHARD_WEIGHTS=random: the features are NOT meaningful" in printed


@pytest.mark.e2e
def test_walkthrough_draws_its_figures_inline(executed):
    notebook, _, _ = executed
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= 4  # sample images, explained variance, PCA scatter, new images on the scatter


@pytest.mark.e2e
def test_walkthrough_projects_new_images_with_the_saved_model(executed):
    notebook, _, _ = executed
    printed = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "saved model reproduces pca/ for 5 rows" in printed
    assert "new images are nearest to their own class centre" in printed


@pytest.mark.e2e
def test_walkthrough_trains_and_uses_the_classifier(executed):
    notebook, work, _ = executed
    printed = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    metrics = json.loads((work / "out" / "classifier" / "metrics.json").read_text())
    assert json.loads((work / "out" / "run.json").read_text())["classifier"] == metrics
    assert f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}" in printed
    assert "new images classified as their own class" in printed


@pytest.mark.pure
def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    verify = subprocess.run([Path(sys.executable).with_name("nbstripout"), "--verify", NOTEBOOK],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
