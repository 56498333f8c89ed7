"""`emr plan`'s throughput: measured per instance family and precision, side by side with its cost per image."""

from __future__ import annotations

import pytest

from orchard.cli import main
from orchard.cloud import emr_config, emr_cost, throughput

pytestmark = pytest.mark.pure

CONFIG = """
region = "eu-west-1"
bucket = "fruits-eu"
input = "s3://fruits-eu/Training"
output = "s3://fruits-eu/out"
weights = "random"
run_args = {run_args}
[master]
instance_type = "m7i.xlarge"
[core]
instance_type = "{core}"
count = 2
{estimate}
"""


def config_for(tmp_path, core: str = "m7i.2xlarge", run_args: str = "[]", estimate: str = "") -> emr_config.EmrConfig:
    path = tmp_path / "emr.toml"
    path.write_text(CONFIG.format(core=core, run_args=run_args, estimate=estimate))
    return emr_config.load_config(path)


def test_the_estimate_uses_the_core_familys_measured_throughput_at_the_runs_precision(tmp_path):
    fp32 = emr_cost.estimate(config_for(tmp_path), images=100_000)
    assert fp32.images_per_second_per_vcpu == throughput.FAMILIES["m7i"].per_vcpu["fp32"]
    assert fp32.compute_hours == pytest.approx(100_000 / (fp32.images_per_second_per_vcpu * 16) / 3600)
    assert "measured for m7i" in fp32.table() and "--precision fp32" in fp32.table()
    int8 = emr_cost.estimate(config_for(tmp_path, run_args='["--precision", "int8"]'), images=100_000)
    assert int8.images_per_second_per_vcpu == throughput.FAMILIES["m7i"].per_vcpu["int8"]
    assert int8.run_cost < fp32.run_cost


def test_an_unmeasured_family_says_its_figure_is_assumed_and_the_config_wins(tmp_path):
    m5 = emr_cost.estimate(config_for(tmp_path, core="m5.2xlarge"), images=67692)
    assert m5.images_per_second_per_vcpu == emr_cost.ASSUMED_PER_VCPU
    assert "ASSUMED 72 images/s per vCPU" in m5.table() and "m5.2xlarge" in m5.table()
    given = emr_cost.estimate(config_for(tmp_path, core="m5.2xlarge",
                                         estimate="[estimate]\nimages_per_second_per_vcpu = 50"), images=67692)
    assert given.images_per_second_per_vcpu == 50 and "in the config" in given.throughput_basis


def test_families_side_by_side_propose_the_cheapest_per_image_and_break_evens_for_the_rest(tmp_path):
    config = config_for(tmp_path, core="m5.2xlarge")
    prices = emr_cost.load_prices(config)
    rows = emr_cost.compare_families(config, prices)
    by_key = {(row.instance_type, row.precision): row for row in rows}
    m7i = by_key[("m7i.2xlarge", "fp32")]
    assert m7i.per_million == pytest.approx(m7i.hourly / (m7i.per_vcpu * 8 * 3600) * 1e6)
    assert by_key[("m7g.2xlarge", "fp32")].per_million is None  # never invented
    assert ("m7g.2xlarge", "bf16") not in by_key and ("m7i.2xlarge", "bf16") in by_key
    text = emr_cost.comparison_table(rows, "fp32", "USD")
    best = min((row for row in rows if row.precision == "fp32" and row.per_million), key=lambda r: r.per_million)
    assert f"proposed at --precision fp32: {best.instance_type}" in text
    m5 = by_key[("m5.2xlarge", "fp32")]
    needed = m5.hourly / (best.per_million / 1e6 * m5.vcpu * 3600)  # at that rate m5 costs what the best does
    assert f"needs {needed:.0f} img/s/vCPU to match {best.instance_type}" in text
    assert "cheapest of all:" in text and "--precision int8" in text


@pytest.mark.parametrize(("args", "precision"), [((), "fp32"), (("--k", "5", "--precision", "bf16"), "bf16"),
                                                 (("--precision=int8",), "int8")])
def test_precision_of_run_args(args, precision):
    assert throughput.precision_of(args) == precision


def test_plan_prints_the_comparison(tmp_path, capsys, monkeypatch):
    config_for(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["emr", "plan", "--images", "151736"]) == 0
    out = capsys.readouterr().out
    assert "run estimate for 151736 images" in out and "executor cost per 1M images by instance family" in out
    assert "m7g.2xlarge" in out and "proposed at --precision fp32" in out
