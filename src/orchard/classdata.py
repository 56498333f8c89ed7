"""Class-data sharing (AppCDS) for the driver JVM orchard launches: Spark's classes load from an archive.

A local run spends seconds loading and verifying some 15,000 Spark classes before any work starts (session,
first query, first MLlib fit). The first session on a machine asks the JVM to dump the classes it loaded
into an archive when it exits (`-XX:ArchiveClassesAtExit`); later sessions map that archive
(`-XX:SharedArchiveFile`) and skip that work. Results are unchanged: only where class bytes come from
differs. An archive that does not match the JVM is ignored by the JVM itself. The archive (~170 MB) lives in
orchard's cache folder, keyed by the Java binary and the Spark jars; `ORCHARD_JVM_CDS=0` turns this off.
Only for JVMs orchard starts itself: under spark-submit the driver JVM is already running.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

DISABLE_ENV = "ORCHARD_JVM_CDS"
STALE_SECONDS = 600  # a partial archive older than this whose JVM is gone is discarded
QUIET = ["-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]


@dataclass(frozen=True)
class ClassData:
    """The JVM flags for one launch, and the partial archive that launch records (if it records one)."""

    options: list[str] = field(default_factory=list)
    recording: Path | None = None

    def started(self, spark) -> None:
        """Note which JVM writes the partial archive, so later runs know when it is complete."""
        if self.recording is not None:
            with contextlib.suppress(OSError):
                _owner(self.recording).write_text(str(_jvm_pid(spark)))


def plan(cache: Path, spark_home: Path) -> ClassData:
    """Map the archive if there is one, else record one (unless another JVM is recording it now)."""
    if os.environ.get(DISABLE_ENV, "1") == "0" or "PYSPARK_GATEWAY_PORT" in os.environ:
        return ClassData()
    java = _java_binary()
    if java is None:
        return ClassData()
    folder = cache / "jvm"
    archive = folder / f"spark-{_key(java, spark_home)}.jsa"
    try:
        recording = _settle_recordings(archive)
        if archive.is_file():
            return ClassData([f"-XX:SharedArchiveFile={archive}", *QUIET])
        if recording:
            return ClassData()
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only or shared cache only costs the speed-up, never the run
        return ClassData()
    part = _part(archive, os.getpid())
    return ClassData([f"-XX:ArchiveClassesAtExit={part}", *QUIET], part)


def state(java_options: str) -> str:
    """What the driver JVM was told: 'mapped' (uses the archive), 'recording' (writes it at exit) or 'off'."""
    if "-XX:SharedArchiveFile=" in java_options:
        return "mapped"
    return "recording" if "-XX:ArchiveClassesAtExit=" in java_options else "off"


def _jvm_pid(spark) -> int:
    return int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())


def _part(archive: Path, python_pid: int) -> Path:
    return archive.with_name(f"{archive.name}.{python_pid}.part")


def _owner(part: Path) -> Path:
    return part.with_name(part.name + ".jvm")


def _settle_recordings(archive: Path) -> bool:
    """Promote partial archives whose JVM has exited (its dump is complete); True if one is still being written."""
    busy = False
    for owner in archive.parent.glob(f"{archive.name}.*.part.jvm"):
        part = owner.with_name(owner.name[: -len(".jvm")])
        if _alive(int(owner.read_text() or 0)):
            busy = True
            continue
        if part.is_file() and part.stat().st_size > 0:
            part.replace(archive)
        part.unlink(missing_ok=True)
        owner.unlink(missing_ok=True)
    for part in archive.parent.glob(f"{archive.name}.*.part"):  # no owner: its session never started
        if not _owner(part).exists() and time.time() - part.stat().st_mtime > STALE_SECONDS:
            part.unlink(missing_ok=True)
    return busy


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited: its dump is done
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


def _java_binary() -> Path | None:
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else shutil.which("java")
    return Path(java).resolve() if java and Path(java).exists() else None


def _key(java: Path, spark_home: Path) -> str:
    """Changes whenever the JVM or the Spark jars change (the archive would then not match)."""
    jars = sorted((spark_home / "jars").glob("*.jar"))
    facts = [f"{java}:{java.stat().st_mtime_ns}", *(f"{jar.name}:{jar.stat().st_size}" for jar in jars)]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]
