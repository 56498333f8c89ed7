"""Featurising throughput per executor vCPU by EC2 instance family and precision: what `emr plan` estimates from.

A 2-vCPU VM is one physical core with its two hyperthreads, as an EC2 vCPU pair is, so the images/s of
`benchmarks/bench.py` on such a machine, divided by 2, is the per-vCPU figure. Only the CPUs orchard was
measured on have numbers; every other family says "not measured", and `emr plan` shows the throughput it would
need to match the cheapest measured one instead of inventing a figure.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "int8", "bf16")


@dataclass(frozen=True)
class Family:
    """An instance family's CPU, the precisions it runs at full speed, and measured images/s per vCPU."""

    name: str
    cpu: str
    precisions: tuple[str, ...]
    per_vcpu: dict[str, float]  # precision -> images/s per vCPU; absent: not measured
    basis: str  # where the numbers come from

    def measured(self, precision: str) -> float | None:
        """Images/s per vCPU at `precision`, or None when not measured on this family's CPU."""
        return self.per_vcpu.get(precision)


_SAPPHIRE_RAPIDS = (
    "Intel Sapphire Rapids (AMX) 2 vCPU, 2026-12-04: bench.py's featurise stage at 151,736 images (fp32 on ONNX "
    "Runtime 238.6, int8 on OpenVINO 627.3, bf16 on OpenVINO 433.8 images/s)")
_ZEN3 = ("AMD EPYC with AVX2 only (taken as m6a's Zen 3) 2 vCPU, 2026-12-04: bench.py's featurise stage at 10,000 "
         "images (fp32 152.6, int8 on OpenVINO 193.9 images/s)")

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("m7i", "Intel Sapphire Rapids (AVX-512, AMX)", PRECISIONS,
           {"fp32": 119.3, "int8": 313.7, "bf16": 216.9}, _SAPPHIRE_RAPIDS),
    Family("c7i", "Intel Sapphire Rapids (AVX-512, AMX)", PRECISIONS,
           {"fp32": 119.3, "int8": 313.7, "bf16": 216.9}, _SAPPHIRE_RAPIDS),
    Family("m6a", "AMD EPYC Zen 3 (AVX2)", ("fp32", "int8"), {"fp32": 76.0, "int8": 97.0}, _ZEN3),
    Family("m6i", "Intel Ice Lake (AVX-512 VNNI, no bf16)", ("fp32", "int8"), {}, "not measured"),
    Family("c6i", "Intel Ice Lake (AVX-512 VNNI, no bf16)", ("fp32", "int8"), {}, "not measured"),
    Family("m5", "Intel Skylake/Cascade Lake (AVX-512)", ("fp32", "int8"), {}, "not measured"),
    Family("c5", "Intel Skylake/Cascade Lake (AVX-512)", ("fp32", "int8"), {}, "not measured"),
    Family("r5", "Intel Skylake/Cascade Lake (AVX-512)", ("fp32", "int8"), {}, "not measured"),
    Family("m7g", "AWS Graviton3 (Arm Neoverse V1)", ("fp32", "int8"), {}, "not measured"),
)}
COMPARED = ("m7i", "c7i", "m6a", "m6i", "m5", "m7g")  # the families `emr plan` sets side by side


def family_of(instance_type: str) -> str:
    """'m7i.2xlarge' -> 'm7i'."""
    return instance_type.split(".", 1)[0]


def size_of(instance_type: str) -> str:
    """'m7i.2xlarge' -> '2xlarge'."""
    return instance_type.split(".", 1)[1]


def precision_of(run_args: tuple[str, ...]) -> str:
    """The `--precision` a config's run_args ask for (`--precision X` or `--precision=X`), fp32 by default."""
    for index, arg in enumerate(run_args):
        if arg == "--precision" and index + 1 < len(run_args):
            return run_args[index + 1]
        if arg.startswith("--precision="):
            return arg.split("=", 1)[1]
    return "fp32"


def measured(instance_type: str, precision: str) -> float | None:
    """Images/s per vCPU of `instance_type`'s family at `precision`, or None when orchard has no measurement."""
    family = FAMILIES.get(family_of(instance_type))
    return family.measured(precision) if family else None
