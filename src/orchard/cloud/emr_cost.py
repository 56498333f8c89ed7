"""What an EMR cluster costs: the dated price table shipped with orchard, the user's overrides, the arithmetic.

Per instance and hour: EC2 on-demand (times the spot factor for spot groups) + the EMR uplift (charged in full
on spot) + its EBS gp3 volume (GB-month price / 730 hours). A run is estimated as startup + fixed costs +
images / (images per second per executor vCPU x executor vCPUs), the throughput measured for the core nodes'
instance family at the run's precision (`cloud/throughput.py`) unless the config sets one; every number is an
estimate and is printed as one. `compare_families` sets the cost per image of other families beside it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources

from orchard.cloud import throughput
from orchard.cloud.emr_config import EmrConfig, NodeGroup
from orchard.errors import ConfigError

HOURS_PER_MONTH = 730  # AWS' convention for GB-month prices
ASSUMED_PER_VCPU = 72.0  # images/s per vCPU for a family orchard has no measurement of (see docs/aws.md)


@dataclass(frozen=True)
class InstancePrice:
    """USD per hour of one instance: EC2 on-demand and the EMR uplift; vCPUs for the throughput estimate."""

    ec2: float
    emr: float
    vcpu: int


@dataclass(frozen=True)
class PriceTable:
    """Prices for one region: the shipped table merged with the config's [prices] overrides."""

    region: str
    currency: str
    as_of: str
    spot_price_factor: float
    ebs_gb_month: float
    instances: dict[str, InstancePrice]
    overridden: tuple[str, ...] = ()

    def price(self, instance_type: str) -> InstancePrice:
        """The price of one instance type, or a ConfigError saying how to add it."""
        if instance_type not in self.instances:
            raise ConfigError(f"no price for {instance_type} in {self.region} in orchard's table (as of "
                              f"{self.as_of}); add [prices.\"{instance_type}\"] ec2 = ..., emr = ..., vcpu = ... "
                              "to the config (USD per hour, from https://aws.amazon.com/emr/pricing/)")
        return self.instances[instance_type]


@dataclass(frozen=True)
class GroupCost:
    """Hourly cost of one instance group (all its instances)."""

    group: NodeGroup
    ec2: float  # per instance, spot factor applied
    emr: float
    ebs: float
    vcpu: int

    @property
    def hourly(self) -> float:
        """USD per hour of the whole group."""
        return (self.ec2 + self.emr + self.ebs) * self.group.count


@dataclass(frozen=True)
class CostEstimate:
    """The cluster's hourly cost and, when the image count is known, the run's."""

    prices: PriceTable
    groups: tuple[GroupCost, ...]
    images: int | None
    images_per_second_per_vcpu: float
    throughput_basis: str  # where images_per_second_per_vcpu comes from
    startup_hours: float
    fixed_hours: float
    idle_hours: float

    @property
    def hourly(self) -> float:
        """USD per hour of the whole cluster."""
        return sum(group.hourly for group in self.groups)

    @property
    def executor_vcpus(self) -> int:
        """vCPUs of core and task nodes (where YARN runs the executors)."""
        return sum(g.vcpu * g.group.count for g in self.groups if g.group.role != "MASTER")

    @property
    def compute_hours(self) -> float | None:
        """Hours of featurisation for the images at the assumed throughput (None without an image count)."""
        if self.images is None:
            return None
        return self.images / (self.images_per_second_per_vcpu * self.executor_vcpus) / 3600

    @property
    def run_hours(self) -> float | None:
        """Cluster hours of `orchard emr run --terminate-after`: startup + fixed + compute."""
        compute = self.compute_hours
        return None if compute is None else self.startup_hours + self.fixed_hours + compute

    @property
    def run_cost(self) -> float | None:
        """Estimated cost of `orchard emr run --terminate-after` (None without an image count)."""
        hours = self.run_hours
        return None if hours is None else hours * self.hourly

    @property
    def idle_cost(self) -> float:
        """What the cluster costs if it is left idle until the idle timeout ends it."""
        return self.idle_hours * self.hourly

    def table(self) -> str:
        """A printable table: one row per group, the hourly total and the run estimate."""
        money = self.prices.currency
        lines = [f"{'role':<7} {'instance':<12} {'count':>5} {'market':<9} {'vCPU':>5} {'EC2/h':>8} {'EMR/h':>8} "
                 f"{'EBS/h':>8} {'group/h':>9}"]
        for g in self.groups:
            lines.append(f"{g.group.role:<7} {g.group.instance_type:<12} {g.group.count:>5} {g.group.market:<9} "
                         f"{g.vcpu * g.group.count:>5} {g.ec2:>8.4f} {g.emr:>8.4f} {g.ebs:>8.4f} {g.hourly:>9.4f}")
        lines.append(f"{'total per hour (estimate)':<66} {self.hourly:>9.4f} {money}")
        source = f"prices: orchard's table for {self.prices.region} as of {self.prices.as_of}"
        if self.prices.overridden:
            source += f", overridden in the config: {', '.join(self.prices.overridden)}"
        lines.append(source + f"; spot = {self.prices.spot_price_factor:g} x on-demand EC2 (an estimate)")
        if self.images is None:
            lines.append("run estimate: set [estimate] images = N in the config (or --images N)")
            return "\n".join(lines)
        lines.append(
            f"run estimate for {self.images} images: startup {self.startup_hours * 60:.0f} min + fixed "
            f"{self.fixed_hours * 60:.0f} min + compute {self.compute_hours * 60:.1f} min "
            f"({self.images_per_second_per_vcpu:g} images/s per vCPU x {self.executor_vcpus} executor vCPUs) = "
            f"{self.run_hours:.2f} h -> {self.run_cost:.2f} {money} with --terminate-after")
        lines.append(f"throughput: {self.throughput_basis}")
        lines.append(f"left idle afterwards, the cluster ends at the {self.idle_hours * 60:.0f}-min idle timeout: "
                     f"+{self.idle_cost:.2f} {money} (total {self.run_cost + self.idle_cost:.2f} {money})")
        return "\n".join(lines)


def load_prices(config: EmrConfig) -> PriceTable:
    """The shipped table for the config's region, with the config's overrides applied."""
    table = json.loads(resources.files("orchard.cloud").joinpath("prices.json").read_text())
    region = table["regions"].get(config.region)
    if region is None and not (config.prices and config.ebs_gb_month_price is not None):
        raise ConfigError(f"orchard's price table has no region {config.region} (it has "
                          f"{', '.join(sorted(table['regions']))}); add [prices] ebs_gp3_gb_month = ... and "
                          "[prices.\"TYPE\"] ec2 = ..., emr = ..., vcpu = ... for every instance type")
    region = region or {"instances": {}, "ebs_gp3_gb_month": config.ebs_gb_month_price}
    instances = {name: InstancePrice(row["ec2"], row["emr"], row["vcpu"]) for name, row in region["instances"].items()}
    for name, override in config.prices.items():
        vcpu = override.vcpu or (instances[name].vcpu if name in instances else None)
        if vcpu is None:
            raise ConfigError(f"[prices.\"{name}\"] needs vcpu = N: {name} is not in orchard's table")
        instances[name] = InstancePrice(override.ec2, override.emr, vcpu)
    overridden = tuple(sorted(config.prices)) + (("ebs_gp3_gb_month",) if config.ebs_gb_month_price is not None else ())
    return PriceTable(
        region=config.region, currency=table["currency"], as_of=table["as_of"],
        spot_price_factor=config.estimate.spot_price_factor or table["spot_price_factor"],
        ebs_gb_month=config.ebs_gb_month_price if config.ebs_gb_month_price is not None else region["ebs_gp3_gb_month"],
        instances=instances, overridden=overridden,
    )


def estimate(config: EmrConfig, prices: PriceTable | None = None, images: int | None = None) -> CostEstimate:
    """Hourly and per-run cost of the config's cluster; `images` overrides [estimate] images."""
    prices = prices or load_prices(config)
    per_vcpu, basis = executor_throughput(config)
    return CostEstimate(
        prices=prices, groups=tuple(group_cost(group, prices) for group in config.groups),
        images=images or config.estimate.images,
        images_per_second_per_vcpu=per_vcpu, throughput_basis=basis,
        startup_hours=config.estimate.startup_minutes / 60, fixed_hours=config.estimate.fixed_minutes / 60,
        idle_hours=config.idle_timeout_minutes / 60,
    )


def group_cost(group: NodeGroup, prices: PriceTable) -> GroupCost:
    """What one instance group costs per hour: EC2 (spot factor applied), EMR uplift, its EBS volumes."""
    price = prices.price(group.instance_type)
    factor = prices.spot_price_factor if group.market == "SPOT" else 1.0
    return GroupCost(group, price.ec2 * factor, price.emr, group.ebs_gb * prices.ebs_gb_month / HOURS_PER_MONTH,
                     price.vcpu)


def executor_throughput(config: EmrConfig) -> tuple[float, str]:
    """Images/s per executor vCPU for the estimate and where it comes from: the config, a measurement, or 72."""
    if config.estimate.images_per_second_per_vcpu is not None:
        return config.estimate.images_per_second_per_vcpu, "[estimate] images_per_second_per_vcpu in the config"
    instance = config.core.instance_type
    precision = throughput.precision_of(config.run_args)
    measured = throughput.measured(instance, precision)
    if measured is not None:
        family = throughput.FAMILIES[throughput.family_of(instance)]
        return measured, (f"measured for {family.name} ({family.cpu}) at --precision {precision} "
                          "(how: orchard.cloud.throughput)")
    return ASSUMED_PER_VCPU, (f"ASSUMED {ASSUMED_PER_VCPU:g} images/s per vCPU: orchard has no measurement of "
                              f"{instance} at --precision {precision}; set [estimate] images_per_second_per_vcpu")


@dataclass(frozen=True)
class FamilyCost:
    """What one million images of featurising cost on one instance type at one precision."""

    instance_type: str
    cpu: str
    precision: str
    per_vcpu: float | None  # None: not measured
    per_million: float | None  # executor cost per 1M images, None when not measured
    hourly: float  # one instance, EC2 (market applied) + EMR + EBS
    vcpu: int


def compare_families(config: EmrConfig, prices: PriceTable) -> list[FamilyCost]:
    """The core group's size in each compared family, at every precision it runs: cost per million images."""
    rows = []
    for name in throughput.COMPARED:
        instance_type = f"{name}.{throughput.size_of(config.core.instance_type)}"
        if instance_type not in prices.instances:
            continue
        one = group_cost(dataclasses.replace(config.core, instance_type=instance_type, count=1), prices)
        family = throughput.FAMILIES[name]
        for precision in family.precisions:
            per_vcpu = family.measured(precision)
            per_million = None if per_vcpu is None else one.hourly / (per_vcpu * one.vcpu * 3600) * 1e6
            rows.append(FamilyCost(instance_type, family.cpu, precision, per_vcpu, per_million, one.hourly, one.vcpu))
    return rows


def comparison_table(rows: list[FamilyCost], precision: str, currency: str) -> str:
    """Families side by side, the cheapest measured per image at `precision` proposed, break-evens for the rest."""
    measured = [row for row in rows if row.per_million is not None]
    best = min((row for row in measured if row.precision == precision), key=lambda row: row.per_million,
               default=None)
    lines = [f"executor cost per 1M images by instance family (compute only, {currency}; estimates):",
             f"  {'instance':<12} {'precision':<9} {'img/s/vCPU':>10} {'per 1M':>8}  CPU"]
    for row in rows:
        if row.per_million is not None:
            figures = f"{row.per_vcpu:>10g} {row.per_million:>8.3f}"
        elif best is not None and row.precision == precision:
            needed = row.hourly / (best.per_million / 1e6 * row.vcpu * 3600)
            figures = f"{'-':>10} {'-':>8}  not measured: needs {needed:.0f} img/s/vCPU to match {best.instance_type};"
        else:
            figures = f"{'-':>10} {'-':>8}  not measured;"
        lines.append(f"  {row.instance_type:<12} {row.precision:<9} {figures}  {row.cpu}")
    if best is not None:
        lines.append(f"proposed at --precision {precision}: {best.instance_type} ({best.per_million:.3f} {currency} "
                     "per 1M images)")
    cheapest = min(measured, key=lambda row: row.per_million, default=None)
    if cheapest is not None and cheapest is not best:
        lines.append(f"cheapest of all: {cheapest.instance_type} with --precision {cheapest.precision} "
                     f"({cheapest.per_million:.3f} {currency} per 1M images; reduced precision changes the features "
                     "a little: run.json records its cosine to fp32)")
    return "\n".join(lines)
