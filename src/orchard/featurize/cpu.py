"""The CPU's vector and matrix units, from /proc/cpuinfo (Linux): what reduced precisions can run at speed."""

from __future__ import annotations

from pathlib import Path

from orchard.errors import ConfigError

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")  # recorded in run.json
BF16_FEATURES = ("avx512_bf16", "amx_bf16")  # either one runs bf16 natively (AMX is the fast one)
CPUINFO = Path("/proc/cpuinfo")
REFUSAL_MARK = "orchard: unsupported CPU:"  # found in a failed Spark job's text (spark.explain_job_failure)


class UnsupportedCpu(RuntimeError):
    """An executor's CPU lacks the units a precision needs: its task fails with this one line."""


def _field(cpuinfo: Path, *names: str) -> str | None:
    """The first processor's value of the first of `names` in cpuinfo, or None (no file, or no such line)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    return next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith(names)), None)


def flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first processor's feature flags (empty where the kernel does not publish them)."""
    return frozenset((_field(cpuinfo, "flags", "Features") or "").split())


def features(cpuinfo: Path = CPUINFO) -> dict[str, bool]:
    """Each of FEATURES: present or not (run.json's `model.cpu`)."""
    present = flags(cpuinfo)
    return {name: name in present for name in FEATURES}


def model_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's marketing name, or 'unknown'."""
    return (_field(cpuinfo, "model name") or "unknown").strip()


def bf16_refusal(where: str, cpuinfo: Path = CPUINFO) -> str | None:
    """Why `--precision bf16` cannot run at speed on this CPU (one line naming the missing features and the
    fix), or None when it can. `where` names the machine: 'the driver', 'an executor'."""
    present = flags(cpuinfo)
    if any(name in present for name in BF16_FEATURES):
        return None
    return (f"--precision bf16 needs a CPU with {' or '.join(BF16_FEATURES)} (Intel Sapphire Rapids or newer, "
            f"AMD Zen 4 or newer), but {where}'s CPU ({model_name(cpuinfo)}) has neither: OpenVINO "
            "would fall back to slower f32; use --precision fp32 or int8")


def check_bf16(where: str = "the driver", cpuinfo: Path = CPUINFO) -> None:
    """Raise ConfigError when this CPU cannot run bf16 natively."""
    reason = bf16_refusal(where, cpuinfo)
    if reason is not None:
        raise ConfigError(reason)
